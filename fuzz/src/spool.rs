//! `spool_reader` harness: recovery of arbitrary spool directories.
//!
//! Input layout: 4 configuration bytes, then sections `kind:u8 len:u16-le
//! data[len]` (a short last section takes what is left).
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | bits 0-2 `max_record_bytes`, bits 3-4 `segment_bytes`, bits 5-6 `max_bytes` (tables below), bit 7 fsync every batch |
//! | 1 | reads: bits 0-3 `max_records - 1`, bits 4-7 `max_bytes` ([`READ_BYTES`]) |
//! | 2 | how far past the acknowledged position to ack |
//! | 3 | reserved |
//!
//! Section kinds:
//! * `0x00..=0x3f` a segment file. Bits 0-1 name it: 0 after its header's
//!   base sequence (20 digits, as the spool does), 1 after its position
//!   (`10 * index + 1`), 2 after its header's base without padding (`7.seg`),
//!   3 after the header's base plus one (a misnamed file). Bit 2 repairs the
//!   header (magic and CRC); bit 3 renumbers the records consecutively from
//!   the header's base; bit 4 recomputes every record's CRC. Bits 2-4 let
//!   byte-level mutations get past the checksums.
//! * `0x40..=0x7f` the meta file; bit 0 appends the CRC32C of the data.
//! * `0x80..=0xbf` a payload to append after recovery.
//! * `0xc0..=0xff` a stray file (`*.tmp`, `*.corrupt`, a name that is not a
//!   sequence).
//!
//! After writing the files into a fresh directory (on tmpfs when there is
//! one) the harness checks:
//! * `Spool::open` does not panic or fail; the report agrees with `stats()`
//!   and with the files left on disk (segment count, bytes), lost ranges lie
//!   below the next sequence, quarantined files exist as `*.corrupt`;
//! * reading from 1 with the fuzzed read sizes covers `1..=last_seq` exactly
//!   with records and gaps, sequences strictly increase, each outcome obeys
//!   the count/byte limits, every record returned is byte for byte a record
//!   with a valid CRC present in the input files, and no record is cut as
//!   corrupt after a fresh recovery; reading from the acknowledged position
//!   yields exactly `stats().records` records;
//! * recovery is idempotent: reopening finds nothing to repair and the same
//!   records;
//! * appending assigns the next sequences, and the appended payloads read
//!   back exactly; acknowledging moves the position as documented; a final
//!   reopen is clean and still holds the same unacknowledged records;
//! * the heap stays proportional to the input.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use telemetry_link::{
    internals::{
        format::{
            parse_record, record_crc, resync, Parsed, SegmentHeader, SEGMENT_HEADER_LEN,
            SEGMENT_MAGIC,
        },
        Cursor, ReadBuf, ReadOutcome, Spool, MAX_SEQ,
    },
    FsyncPolicy, RecoveryReport, SpoolConfig, SpoolError, SpoolStats,
};

use crate::alloc::Measure;

/// Number of configuration bytes.
pub const CONFIG_LEN: usize = 4;
/// `max_record_bytes` choices.
pub const MAX_RECORD: [usize; 8] = [0, 1, 8, 32, 64, 256, 4096, 256 * 1024];
/// `segment_bytes` choices.
pub const SEGMENT_BYTES: [Option<u64>; 4] = [None, Some(64), Some(300), Some(4096)];
/// `max_bytes` choices.
pub const MAX_BYTES: [u64; 4] = [2048, 16 * 1024, 1 << 20, 1 << 30];
/// Read budget choices.
pub const READ_BYTES: [usize; 16] = [
    0,
    1,
    2,
    8,
    16,
    17,
    32,
    64,
    100,
    128,
    256,
    512,
    1000,
    4096,
    65536,
    usize::MAX,
];

/// Section kinds (for seeds).
pub mod kind {
    /// Segment named after its header's base.
    pub const SEG: u8 = 0x00;
    /// Flag: repair magic and header CRC.
    pub const FIX_HEADER: u8 = 0x04;
    /// Flag: renumber records from the base.
    pub const RENUMBER: u8 = 0x08;
    /// Flag: recompute record CRCs.
    pub const FIX_CRC: u8 = 0x10;
    /// Meta file, data taken as is.
    pub const META_RAW: u8 = 0x40;
    /// Meta file, CRC appended.
    pub const META_FIX: u8 = 0x41;
    /// A payload to append.
    pub const APPEND: u8 = 0x80;
    /// A stray file.
    pub const STRAY: u8 = 0xc0;
}

/// Serialises one section (for seeds).
pub fn section(kind: u8, data: &[u8], out: &mut Vec<u8>) {
    let len = data.len().min(u16::MAX as usize);
    out.push(kind);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&data[..len]);
}

/// A scratch directory per process, on tmpfs when available.
fn scratch() -> PathBuf {
    use std::sync::OnceLock;
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = std::env::var_os("TL_FUZZ_TMP")
            .map(PathBuf::from)
            .or_else(|| {
                Path::new("/dev/shm")
                    .is_dir()
                    .then(|| PathBuf::from("/dev/shm"))
            })
            .unwrap_or_else(std::env::temp_dir);
        base.join(format!("tl-fuzz-spool-{}", std::process::id()))
    });
    // One directory per thread: property tests run in parallel.
    let t = format!("{:?}", std::thread::current().id());
    let t: String = t.chars().filter(char::is_ascii_digit).collect();
    root.join(format!("t{t}"))
}

fn u32le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn u64le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Applies the repair flags of a segment section.
fn fix_segment(kind: u8, data: &mut [u8]) {
    if data.len() < SEGMENT_HEADER_LEN {
        return;
    }
    if kind & kind::FIX_HEADER != 0 {
        data[..8].copy_from_slice(&SEGMENT_MAGIC);
        let crc = crc32c::crc32c(&data[..32]);
        data[32..36].copy_from_slice(&crc.to_le_bytes());
    }
    if kind & (kind::RENUMBER | kind::FIX_CRC) == 0 {
        return;
    }
    let mut expected = u64le(&data[24..32]);
    let mut off = SEGMENT_HEADER_LEN;
    while off + 16 <= data.len() {
        let len = u32le(&data[off..]) as usize;
        if data.len() - off - 16 < len {
            break;
        }
        if kind & kind::RENUMBER != 0 {
            data[off + 8..off + 16].copy_from_slice(&expected.to_le_bytes());
        }
        let seq = u64le(&data[off + 8..]);
        if kind & kind::FIX_CRC != 0 {
            let crc = record_crc(seq, &data[off + 16..off + 16 + len]);
            data[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        }
        expected = seq.wrapping_add(1);
        off += 16 + len;
    }
}

/// Every (sequence, payload) with a valid CRC anywhere in `bytes`.
fn valid_records(bytes: &[u8], into: &mut HashSet<(u64, Vec<u8>)>) {
    let mut off = 0;
    while off + 16 <= bytes.len() {
        let len = u32le(&bytes[off..]) as usize;
        if bytes.len() - off - 16 >= len {
            let seq = u64le(&bytes[off + 8..]);
            let payload = &bytes[off + 16..off + 16 + len];
            if record_crc(seq, payload) == u32le(&bytes[off + 4..]) {
                into.insert((seq, payload.to_vec()));
            }
        }
        off += 1;
    }
}

/// Whether recovery of these files would hit the known piece-name
/// collision (F3): a corrupt region cut out of a segment yields a piece whose
/// file name (its base sequence) is already taken, by the segment itself or
/// by another segment file. Mirrors `scan_segment` with the public parsers;
/// it may over-approximate, never under.
fn hits_piece_name_collision(files: &[(String, Vec<u8>)], max_record: usize) -> bool {
    let mut taken: HashSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for (name, bytes) in files {
        if !name.ends_with(".seg") {
            continue;
        }
        let Ok(h) = SegmentHeader::decode(bytes) else {
            continue;
        };
        let mut off = SEGMENT_HEADER_LEN;
        let mut expected = h.base_seq;
        while off < bytes.len() {
            match parse_record(&bytes[off..], max_record, expected) {
                Parsed::Record { size, .. } => {
                    off += size;
                    expected = expected.wrapping_add(1);
                }
                Parsed::Incomplete { .. } => break,
                Parsed::Corrupt(_) => {
                    match resync(&bytes[off..], max_record, expected.wrapping_sub(1)) {
                        Some((skip, seq)) => {
                            if !taken.insert(format!("{seq:020}.seg")) {
                                return true;
                            }
                            off += skip;
                            expected = seq;
                        }
                        None => break,
                    }
                }
            }
        }
    }
    false
}

/// Whether a segment header puts sequences within reach of `u64::MAX`
/// (known bug F4: recovery overflows there).
fn near_sequence_end(files: &[(String, Vec<u8>)]) -> bool {
    files.iter().any(|(name, bytes)| {
        name.ends_with(".seg")
            && SegmentHeader::decode(bytes).is_ok_and(|h| h.base_seq > u64::MAX - (1 << 32))
    })
}

/// Whether a segment file with a valid header is named after another
/// sequence than its header's base (known bug F5: a later recovery may
/// delete it as a "leftover copy").
fn misnamed_segment(files: &[(String, Vec<u8>)]) -> bool {
    files.iter().any(|(name, bytes)| {
        let Some(stem) = name.strip_suffix(".seg") else {
            return false;
        };
        let Ok(named) = stem.parse::<u64>() else {
            return false;
        };
        SegmentHeader::decode(bytes).is_ok_and(|h| h.base_seq != named)
    })
}

/// The parsed input.
struct Input {
    cfg: SpoolConfig,
    max_records: usize,
    read_bytes: usize,
    ack_delta: u64,
    files: Vec<(String, Vec<u8>)>,
    appends: Vec<Vec<u8>>,
}

fn parse(data: &[u8]) -> Option<Input> {
    if data.len() < CONFIG_LEN {
        return None;
    }
    let c = &data[..CONFIG_LEN];
    let cfg = SpoolConfig {
        max_record_bytes: MAX_RECORD[usize::from(c[0] & 7)],
        segment_bytes: SEGMENT_BYTES[usize::from((c[0] >> 3) & 3)],
        max_bytes: MAX_BYTES[usize::from((c[0] >> 5) & 3)],
        fsync: if c[0] & 0x80 != 0 {
            FsyncPolicy::EveryBatch
        } else {
            FsyncPolicy::Never
        },
    };
    let mut rest = &data[CONFIG_LEN..];
    let mut files = Vec::new();
    let mut appends = Vec::new();
    let mut seg_index = 0u64;
    while !rest.is_empty() && files.len() + appends.len() < 12 {
        let k = rest[0];
        let len = match rest.get(1..3) {
            Some(l) => usize::from(u16::from_le_bytes([l[0], l[1]])),
            None => rest.len(),
        };
        let body_start = 3.min(rest.len());
        let len = len.min(rest.len() - body_start);
        let mut body = rest[body_start..body_start + len].to_vec();
        rest = &rest[body_start + len..];
        match k {
            0x00..=0x3f => {
                fix_segment(k, &mut body);
                let header_base = (body.len() >= 32).then(|| u64le(&body[24..32]));
                let name = match (k & 3, header_base) {
                    (0, Some(b)) => format!("{b:020}.seg"),
                    (2, Some(b)) => format!("{b}.seg"),
                    (3, Some(b)) => format!("{:020}.seg", b.wrapping_add(1)),
                    _ => format!("{:020}.seg", 10 * seg_index + 1),
                };
                seg_index += 1;
                files.push((name, body));
            }
            0x40..=0x7f => {
                if k & 1 != 0 {
                    let crc = crc32c::crc32c(&body);
                    body.extend_from_slice(&crc.to_le_bytes());
                }
                files.push(("spool.meta".to_string(), body));
            }
            0x80..=0xbf => appends.push(body),
            _ => {
                let name = match k & 3 {
                    0 => "00000000000000000001.seg.tmp",
                    1 => "spool.meta.tmp",
                    2 => "00000000000000000001.seg.corrupt",
                    _ => "junk.seg",
                };
                files.push((name.to_string(), body));
            }
        }
    }
    Some(Input {
        cfg,
        max_records: usize::from(data[1] & 0x0f) + 1,
        read_bytes: READ_BYTES[usize::from(data[1] >> 4)],
        ack_delta: u64::from(data[2]),
        files,
        appends,
    })
}

/// What a full read found.
#[derive(Debug, Default, PartialEq, Eq)]
struct ReadAll {
    records: BTreeMap<u64, Vec<u8>>,
    gaps: Vec<(u64, u64, u64)>,
}

/// Reads from `from` to the end, checking every outcome.
fn read_all(s: &mut Spool, from: u64, max_records: usize, max_bytes: usize) -> ReadAll {
    let mut cur: Cursor = s.cursor(from);
    let mut buf = ReadBuf::new();
    let mut all = ReadAll::default();
    let mut stalls = 0;
    let mut prev_seq = 0u64;
    let mut steps = 0u64;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "read does not terminate");
        let at = cur.next_seq();
        let res = s
            .read(&mut cur, max_records, max_bytes, &mut buf)
            .unwrap_or_else(|e| panic!("read at {at} failed: {e}"));
        match res {
            ReadOutcome::Records { first_seq, count } => {
                stalls = 0;
                assert_eq!(first_seq, at, "records do not start at the cursor");
                assert!(
                    count >= 1 && count <= max_records,
                    "count {count} (max {max_records})"
                );
                assert_eq!(count, buf.len());
                assert!(
                    count == 1 || buf.bytes() <= max_bytes,
                    "{} bytes read over a {max_bytes}-byte budget",
                    buf.bytes()
                );
                assert_eq!(
                    cur.next_seq(),
                    at + count as u64,
                    "cursor did not advance by count"
                );
                for (i, p) in buf.iter().enumerate() {
                    let seq = at + i as u64;
                    assert!(
                        seq > prev_seq || seq == from,
                        "sequence {seq} after {prev_seq}"
                    );
                    prev_seq = seq;
                    all.records.insert(seq, p.to_vec());
                }
            }
            ReadOutcome::Gap {
                from: a,
                to: b,
                lost,
            } => {
                stalls = 0;
                assert_eq!(a, at, "gap does not start at the cursor");
                assert!(b >= a, "empty gap {a}..={b}");
                assert!(lost <= b - a + 1, "gap {a}..={b} loses {lost}");
                assert_eq!(
                    cur.next_seq(),
                    b.wrapping_add(1),
                    "cursor not after the gap"
                );
                prev_seq = b;
                all.gaps.push((a, b, lost));
            }
            ReadOutcome::Empty => {
                if at > s.last_seq() {
                    return all;
                }
                // Allowed once right after a corrupt record was cut out.
                stalls += 1;
                assert!(
                    stalls < 2,
                    "read returns Empty at {at} though last_seq is {}",
                    s.last_seq()
                );
            }
        }
    }
}

/// `.seg` files the spool would list, and their total size.
fn segments_on_disk(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dir entry");
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.parse::<u64>().is_ok() {
                n += 1;
                bytes += e.metadata().expect("metadata").len();
            }
        }
    }
    (n, bytes)
}

fn debug_listing(what: &str, dir: &Path) {
    if std::env::var_os("TL_FUZZ_DEBUG").is_none() {
        return;
    }
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    eprintln!("{what}: {v:?}");
    for (name, _) in &v {
        let Some(n) = name.to_str() else { continue };
        if !n.ends_with(".seg") {
            continue;
        }
        let Ok(bytes) = fs::read(dir.join(n)) else {
            continue;
        };
        let Ok(h) = SegmentHeader::decode(&bytes) else {
            eprintln!("  {n}: bad header");
            continue;
        };
        let mut seqs = Vec::new();
        let mut off = SEGMENT_HEADER_LEN;
        while off + 16 <= bytes.len() {
            let len = u32le(&bytes[off..]) as usize;
            if bytes.len() - off - 16 < len {
                break;
            }
            let seq = u64le(&bytes[off + 8..]);
            let ok = record_crc(seq, &bytes[off + 16..off + 16 + len]) == u32le(&bytes[off + 4..]);
            seqs.push(format!("{seq}{}", if ok { "" } else { "!crc" }));
            off += 16 + len;
        }
        eprintln!(
            "  {n}: stream {:x} base {} records [{}] tail {}",
            h.stream_id,
            h.base_seq,
            seqs.join(","),
            bytes.len() - off
        );
    }
}

fn check_report(s: &Spool, rep: &RecoveryReport, dir: &Path) {
    if std::env::var_os("TL_FUZZ_DEBUG").is_some() {
        debug_listing("after open", dir);
        eprintln!("report: {rep:?}\nstats: {:?}", s.stats());
    }
    let st = s.stats();
    assert_eq!(rep.segments, st.segments, "report.segments vs stats");
    assert_eq!(rep.records, st.records, "report.records vs stats");
    check_disk(s, dir);
    assert!(
        st.acked_seq <= st.last_seq,
        "acked {} above last {}",
        st.acked_seq,
        st.last_seq
    );
    for &(a, b) in &rep.lost_ranges {
        assert!(a <= b, "lost range {a}..={b}");
        assert!(
            b <= st.last_seq,
            "lost range {a}..={b} beyond last_seq {}",
            st.last_seq
        );
    }
    for q in &rep.quarantined {
        assert!(q.to_string_lossy().ends_with(".corrupt"), "{q:?}");
        assert!(q.exists(), "quarantined file {q:?} missing");
    }
}

fn check_disk(s: &Spool, dir: &Path) {
    let st = s.stats();
    let (n, bytes) = segments_on_disk(dir);
    assert_eq!(n, st.segments, "segment files on disk vs stats().segments");
    assert_eq!(bytes, st.bytes, "bytes on disk vs stats().bytes");
}

fn open(dir: &Path, cfg: &SpoolConfig) -> (Spool, RecoveryReport) {
    match Spool::open(dir, cfg.clone()) {
        Ok(r) => r,
        Err(e) => panic!("Spool::open failed: {e}"),
    }
}

/// Runs the harness on one input (known-bug checks per [`crate::strict`]).
pub fn run(data: &[u8]) {
    run_with(data, crate::strict())
}

/// Runs the harness; `known_bugs` enables the checks for reported open bugs.
pub fn run_with(data: &[u8], known_bugs: bool) {
    let Some(input) = parse(data) else { return };
    let dir = scratch();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&input, &dir, data.len(), known_bugs)
    }));
    let _ = fs::remove_dir_all(&dir);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn check(input: &Input, dir: &Path, input_len: usize, known_bugs: bool) {
    if !known_bugs && near_sequence_end(&input.files) {
        // KNOWN BUG (fuzz/README.md, "Findings", F4).
        return;
    }
    if !known_bugs && hits_piece_name_collision(&input.files, input.cfg.max_record_bytes) {
        // KNOWN BUG (fuzz/README.md, "Findings", F3).
        return;
    }
    let mut universe = HashSet::new();
    let mut seg_inputs = 0;
    for (name, bytes) in &input.files {
        fs::write(dir.join(name), bytes).expect("write input file");
        if name.ends_with(".seg") {
            valid_records(bytes, &mut universe);
            seg_inputs += 1;
        }
    }
    debug_listing("input", dir);
    let had_meta = input.files.iter().any(|(n, _)| n == "spool.meta");
    let cfg = &input.cfg;
    let (mut mr, mut rb) = (input.max_records, input.read_bytes);
    if !known_bugs && rb > usize::MAX - 32 {
        // KNOWN BUG (fuzz/README.md, "Findings", F2): a byte budget within 32
        // of `usize::MAX` overflows in `Spool::read` and valid records are cut
        // as corrupt. Half of it is just as unbounded.
        rb = usize::MAX / 2;
    }
    if !known_bugs && rb < usize::MAX / 2 {
        // KNOWN BUG (fuzz/README.md, "Findings", F1): `Spool::read` spins
        // forever when a record does not fit the rest of a byte budget after
        // at least one record was read. One record per read avoids that state.
        mr = 1;
    }

    // Recovery and a first full read, measured.
    let measure = Measure::start();
    let (mut s, rep) = open(dir, cfg);
    check_report(&s, &rep, dir);
    let st = s.stats();
    let first = read_all(&mut s, 1, mr, rb);
    let peak = measure.peak();
    let bound = 32 * input_len + 512 * 1024;
    assert!(
        peak <= bound,
        "peak heap {peak} bytes for a {input_len}-byte input (bound {bound})"
    );

    let covered = first.records.len() as u128
        + first
            .gaps
            .iter()
            .map(|g| u128::from(g.1 - g.0) + 1)
            .sum::<u128>();
    assert_eq!(
        covered,
        u128::from(st.last_seq),
        "records + gaps do not cover 1..=last_seq"
    );
    for (seq, p) in &first.records {
        assert!(
            p.len() <= cfg.max_record_bytes,
            "record {seq} above max_record_bytes"
        );
        assert!(
            universe.contains(&(*seq, p.clone())),
            "record {seq} ({} bytes) was never stored",
            p.len()
        );
    }
    let settled = |x: &SpoolStats| x.dropped_total + x.uncertain;
    assert_eq!(
        settled(&s.stats()),
        settled(&st),
        "a freshly recovered spool cut records on read"
    );
    if !had_meta {
        // What recovery lost may have been sent before the crash: it is
        // "uncertain" until a receiver's position settles it.
        let lost: u128 = first.gaps.iter().map(|g| u128::from(g.2)).sum();
        assert!(
            lost <= u128::from(settled(&st)),
            "gaps lose {lost} > dropped {} + uncertain {}",
            st.dropped_total,
            st.uncertain
        );
    }
    if seg_inputs == 0 && !had_meta {
        assert_eq!((st.last_seq, st.records), (0, 0));
    }
    let unacked = read_all(&mut s, st.acked_seq.saturating_add(1), mr, rb);
    assert_eq!(
        unacked.records.len() as u64,
        st.records,
        "unacked records read vs stats().records"
    );
    check_disk(&s, dir);

    if !known_bugs && misnamed_segment(&input.files) {
        // KNOWN BUG (fuzz/README.md, "Findings", F5): the next recovery may
        // delete a misnamed segment; the checks below would all report it.
        return;
    }

    // Recovery is idempotent.
    let id = s.stream_id();
    drop(s);
    let (mut s, rep2) = open(dir, cfg);
    assert!(
        rep2.is_clean(),
        "second recovery repaired something: {rep2:?}"
    );
    check_report(&s, &rep2, dir);
    assert_eq!(s.stream_id(), id);
    assert_eq!(s.stats().last_seq, st.last_seq);
    assert_eq!(s.stats().acked_seq, st.acked_seq);
    assert_eq!(s.stats().records, st.records);
    // Acknowledged records may be deleted at any time (fully acknowledged
    // closed segments go at the next open): compare the unacknowledged ones.
    let again = read_all(&mut s, 1, mr, rb);
    let unacked_only = |r: &ReadAll| {
        r.records
            .range(st.acked_seq.saturating_add(1)..)
            .map(|(k, v)| (*k, v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        unacked_only(&again),
        unacked_only(&first),
        "unacknowledged records changed across a clean reopen"
    );

    // Append.
    let before = s.stats();
    let payloads: Vec<&[u8]> = input.appends.iter().map(Vec::as_slice).collect();
    let mut appended: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // F4 (fixed): near the end of the sequence space (MAX_SEQ = 2^62) an
    // append must be refused cleanly, never wrap.
    let exhausted = (before.last_seq + 1).saturating_add(payloads.len() as u64) > MAX_SEQ;
    if !payloads.is_empty() {
        match s.append(&payloads) {
            Ok(a) => {
                assert_eq!(
                    u128::from(a.first_seq),
                    u128::from(before.last_seq) + 1,
                    "append does not continue the sequence"
                );
                assert_eq!(
                    u128::from(a.last_seq) + 1,
                    u128::from(a.first_seq) + payloads.len() as u128,
                    "append's last_seq"
                );
                assert_eq!(s.last_seq(), a.last_seq);
                assert!(first.records.keys().all(|&q| q < a.first_seq));
                for (i, p) in payloads.iter().enumerate() {
                    appended.insert(a.first_seq + i as u64, p.to_vec());
                }
                let back = read_all(&mut s, a.first_seq, mr, rb);
                assert!(
                    back.gaps.is_empty(),
                    "gap inside a fresh append: {:?}",
                    back.gaps
                );
                assert_eq!(
                    back.records, appended,
                    "appended records read back differently"
                );
            }
            Err(SpoolError::RecordTooLarge { size, max }) => {
                assert!(size > max && max == cfg.max_record_bytes);
                assert_eq!(
                    s.stats().last_seq,
                    before.last_seq,
                    "a refused append assigned sequences"
                );
            }
            Err(SpoolError::BatchTooLarge { .. }) => {
                assert_eq!(
                    s.stats().last_seq,
                    before.last_seq,
                    "a refused append assigned sequences"
                );
            }
            Err(SpoolError::SequenceExhausted) => {
                assert!(
                    exhausted,
                    "append refused as exhausted at last_seq {}",
                    before.last_seq
                );
                assert_eq!(
                    s.stats().last_seq,
                    before.last_seq,
                    "a refused append assigned sequences"
                );
            }
            Err(e) => panic!("append failed: {e}"),
        }
        check_disk(&s, dir);
    }

    // Acknowledge.
    let st = s.stats();
    let target = st.acked_seq.saturating_add(input.ack_delta);
    let newly = s.ack(target).unwrap_or_else(|e| panic!("ack failed: {e}"));
    let st2 = s.stats();
    assert_eq!(
        st2.acked_seq,
        target.min(st.last_seq).max(st.acked_seq),
        "ack position"
    );
    assert_eq!(
        u128::from(st2.records) + u128::from(newly),
        u128::from(st.records),
        "ack count vs records"
    );
    check_disk(&s, dir);
    let after_ack = read_all(&mut s, st2.acked_seq.saturating_add(1), mr, rb);
    assert_eq!(after_ack.records.len() as u64, st2.records);
    for (seq, p) in &after_ack.records {
        if let Some(a) = appended.get(seq) {
            assert_eq!(a, p, "appended record {seq} changed");
        } else {
            assert_eq!(first.records.get(seq), Some(p), "record {seq} changed");
        }
    }
    s.checkpoint()
        .unwrap_or_else(|e| panic!("checkpoint failed: {e}"));

    // Final reopen: clean, same unacknowledged records.
    drop(s);
    let (mut s, rep3) = open(dir, cfg);
    assert!(
        rep3.is_clean(),
        "reopen after append/ack repaired something: {rep3:?}"
    );
    check_report(&s, &rep3, dir);
    assert_eq!(s.stats().last_seq, st2.last_seq);
    assert_eq!(s.stats().acked_seq, st2.acked_seq);
    let last = read_all(&mut s, st2.acked_seq.saturating_add(1), mr, rb);
    assert_eq!(
        last.records, after_ack.records,
        "records changed across the final reopen"
    );
}
