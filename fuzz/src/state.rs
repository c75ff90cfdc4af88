//! `state_journal` harness: recovery of arbitrary receiver state
//! directories (the positions journal, its snapshot, per-stream files of
//! the older layout).
//!
//! Input layout: sections `kind:u8 len:u16-le data[len]` (a short last
//! section takes what is left; a later section of a kind replaces an
//! earlier one).
//!
//! | kind | file | flag bits |
//! |------|------|-----------|
//! | `0x00..=0x3f` | `positions.snapshot` | 0 repair the header, 1 repair every record's CRC, 2 repair the closing CRC |
//! | `0x40..=0x7f` | `positions.journal` | 0 repair the header, 1 repair every record's CRC |
//! | `0x80..=0xbf` | a per-stream file of the older layout, named by `data[0]` (`sender-l<0-3>[@r].state`) | 0 repair its CRC |
//! | `0xc0..=0xff` | a stray file (`*.tmp`, a bad stream name, another name) by `data[0]` | |
//!
//! The repair bits let byte-level mutations get past the checksums.
//!
//! Checks:
//! * `state_format::recover` never panics; its heap stays under
//!   `64 × input + 64 KiB`;
//! * every position it yields is one a **complete** record holds (a
//!   CRC-valid record in the snapshot, in the journal before its first torn
//!   record, or a valid file of the older layout), found by a reference
//!   parser written here;
//! * it agrees with a reference model of the recovery rules (generations,
//!   the fold), both in success and in failure;
//! * opening the directory as a receiver does (recovery, migration,
//!   compaction) yields the same positions or fails the same way; reopening
//!   yields them again and leaves no file of the older layout that was
//!   valid.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use telemetry_link::internals::{
    open_receiver_state, parse_legacy_state_file,
    state_format::{self, HEADER_LEN, JOURNAL_MAGIC, SNAPSHOT_MAGIC},
    StreamCursor, StreamKey,
};

use crate::alloc::Measure;

/// Section kinds and their flags.
pub mod kind {
    /// The snapshot.
    pub const SNAPSHOT: u8 = 0x00;
    /// The journal.
    pub const JOURNAL: u8 = 0x40;
    /// A per-stream file of the older layout.
    pub const LEGACY: u8 = 0x80;
    /// A stray file.
    pub const STRAY: u8 = 0xc0;
    /// Repair the header (snapshot, journal) or the CRC (older layout).
    pub const FIX_HEADER: u8 = 0x01;
    /// Repair every record's CRC.
    pub const FIX_RECORDS: u8 = 0x02;
    /// Repair the snapshot's closing CRC.
    pub const FIX_CLOSING: u8 = 0x04;
}

/// The files an input describes.
#[derive(Debug, Default)]
struct Files {
    snapshot: Option<Vec<u8>>,
    journal: Option<Vec<u8>>,
    legacy: BTreeMap<String, Vec<u8>>,
    stray: BTreeMap<String, Vec<u8>>,
}

fn sections(data: &[u8]) -> Files {
    let mut files = Files::default();
    let mut at = 0;
    while at < data.len() {
        let k = data[at];
        let len = data
            .get(at + 1..at + 3)
            .map_or(0, |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
        let start = (at + 3).min(data.len());
        let end = (start + len).min(data.len());
        let mut body = data[start..end].to_vec();
        at = end.max(at + 1);
        match k & 0xc0 {
            kind::SNAPSHOT => {
                repair(&mut body, k, SNAPSHOT_MAGIC, 4);
                files.snapshot = Some(body);
            }
            kind::JOURNAL => {
                repair(&mut body, k, JOURNAL_MAGIC, 0);
                files.journal = Some(body);
            }
            kind::LEGACY => {
                let Some((&pick, rest)) = body.split_first() else {
                    continue;
                };
                let mut rest = rest.to_vec();
                if k & kind::FIX_HEADER != 0 && rest.len() >= 4 {
                    let n = rest.len() - 4;
                    let crc = crc32c::crc32c(&rest[..n]);
                    rest[n..].copy_from_slice(&crc.to_le_bytes());
                }
                let replica = if pick & 4 != 0 { "@r" } else { "" };
                files
                    .legacy
                    .insert(format!("sender-l{}{replica}.state", pick % 4), rest);
            }
            _ => {
                let pick = body.first().copied().unwrap_or(0);
                let name = match pick % 4 {
                    0 => "positions.snapshot.tmp",
                    1 => "positions.journal.tmp",
                    2 => "sender-x@.state",
                    _ => "reset.key",
                };
                files.stray.insert(name.to_owned(), body);
            }
        }
    }
    files
}

/// Applies a section's repair flags to a snapshot or journal.
fn repair(body: &mut [u8], k: u8, magic: [u8; 8], closing: usize) {
    if body.len() < HEADER_LEN + closing {
        return;
    }
    if k & kind::FIX_HEADER != 0 {
        body[..8].copy_from_slice(&magic);
        let crc = crc32c::crc32c(&body[..16]);
        body[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    let end = body.len() - closing;
    if k & kind::FIX_RECORDS != 0 {
        let mut at = HEADER_LEN;
        while at + 6 <= end {
            let len = usize::from(u16::from_le_bytes([body[at], body[at + 1]]));
            if at + 6 + len > end {
                break;
            }
            let crc = crc32c::crc32c(&body[at + 6..at + 6 + len]);
            body[at + 2..at + 6].copy_from_slice(&crc.to_le_bytes());
            at += 6 + len;
        }
    }
    if closing > 0 && k & kind::FIX_CLOSING != 0 {
        let crc = crc32c::crc32c(&body[..end]);
        body[end..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Serialises one section (for seeds).
pub fn section(k: u8, data: &[u8], out: &mut Vec<u8>) {
    let len = data.len().min(usize::from(u16::MAX));
    out.push(k);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&data[..len]);
}

type Position = (StreamKey, StreamCursor);

/// The reference record parser: the format of `state_format`'s docs,
/// written again.
fn ref_record(b: &[u8]) -> Option<(Position, usize)> {
    let len = usize::from(u16::from_le_bytes([*b.first()?, *b.get(1)?]));
    let body = b.get(6..6 + len)?;
    if len > 218 || crc32c::crc32c(body).to_le_bytes() != b[2..6] {
        return None;
    }
    let name_ok = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    };
    let id_len = usize::from(*body.first()?);
    let id = body.get(1..1 + id_len)?;
    let rep_len = usize::from(*body.get(1 + id_len)?);
    let rep = body.get(2 + id_len..2 + id_len + rep_len)?;
    let nums = body.get(2 + id_len + rep_len..)?;
    if id.is_empty()
        || id_len > 128
        || rep_len > 64
        || !name_ok(id)
        || !name_ok(rep)
        || nums.len() != 24
    {
        return None;
    }
    let stream_id = u128::from_le_bytes(nums[..16].try_into().ok()?);
    let applied = u64::from_le_bytes(nums[16..].try_into().ok()?);
    let key = StreamKey::new(
        std::str::from_utf8(id).ok()?,
        std::str::from_utf8(rep).ok()?,
    );
    Some(((key, StreamCursor::new(stream_id, applied)), 6 + len))
}

fn ref_header(b: &[u8], magic: [u8; 8]) -> Option<u64> {
    let h = b.get(..20)?;
    (h[..8] == magic && crc32c::crc32c(&h[..16]).to_le_bytes() == h[16..20])
        .then(|| u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()))
}

fn ref_snapshot(b: &[u8]) -> Option<(u64, Vec<Position>)> {
    let generation = ref_header(b, SNAPSHOT_MAGIC)?;
    let end = b.len().checked_sub(4).filter(|&e| e >= 20)?;
    if crc32c::crc32c(&b[..end]).to_le_bytes() != b[end..] {
        return None;
    }
    let (mut at, mut out) = (20, Vec::new());
    while at < end {
        let (p, len) = ref_record(&b[at..end])?;
        out.push(p);
        at += len;
    }
    Some((generation, out))
}

fn ref_journal(b: &[u8]) -> Option<(u64, Vec<Position>)> {
    let generation = ref_header(b, JOURNAL_MAGIC)?;
    let (mut at, mut out) = (20, Vec::new());
    while let Some((p, len)) = ref_record(&b[at..]) {
        out.push(p);
        at += len;
    }
    Some((generation, out))
}

fn ref_fold(into: &mut HashMap<StreamKey, StreamCursor>, records: &[Position]) {
    for (k, c) in records {
        let keep = into
            .get(k)
            .is_some_and(|h| h.stream_id() == c.stream_id() && h.applied() >= c.applied());
        if !keep {
            into.insert(k.clone(), *c);
        }
    }
}

/// The reference model of recovery: `None` where it must fail.
fn ref_recover(legacy: &[Position], files: &Files) -> Option<HashMap<StreamKey, StreamCursor>> {
    let mut out = HashMap::new();
    ref_fold(&mut out, legacy);
    let mut snapshot_gen = 0;
    if let Some(s) = &files.snapshot {
        let (g, records) = ref_snapshot(s)?;
        ref_fold(&mut out, &records);
        snapshot_gen = g;
    }
    if let Some(j) = &files.journal {
        let (g, records) = ref_journal(j)?;
        if g > snapshot_gen {
            return None;
        }
        if g == snapshot_gen {
            ref_fold(&mut out, &records);
        }
    }
    Some(out)
}

fn sorted(m: HashMap<StreamKey, StreamCursor>) -> Vec<Position> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs every check on one input.
pub fn run(data: &[u8]) {
    let files = sections(data);
    let legacy: Vec<Position> = files
        .legacy
        .iter()
        .filter_map(|(name, bytes)| parse_legacy_state_file(name, bytes))
        .collect();
    let measure = Measure::start();
    let got = state_format::recover(
        legacy.iter().cloned(),
        files.snapshot.as_deref(),
        files.journal.as_deref(),
    );
    let peak = measure.peak();
    assert!(
        peak <= 64 * data.len() + (64 << 10),
        "recovery peaked at {peak} bytes for {} input bytes",
        data.len()
    );
    let want = ref_recover(&legacy, &files);
    let got = match (got, want) {
        (Ok(r), Some(w)) => {
            let got = sorted(r.positions);
            assert_eq!(got, sorted(w), "recovery differs from the reference model");
            Some(got)
        }
        (Err(_), None) => None,
        (Ok(r), None) => panic!("recovered {r:?} where the reference model fails"),
        (Err(e), Some(w)) => panic!("failed with {e:?} where the reference model recovers {w:?}"),
    };
    if let Some(positions) = &got {
        let witnesses = witnesses(&legacy, &files);
        for p in positions {
            assert!(
                witnesses.contains(&flat(p)),
                "{p:?} is in no complete record"
            );
        }
    }
    check_directory(&files, got.as_deref());
}

/// A position as a hashable value.
fn flat((key, cursor): &Position) -> (StreamKey, u128, u64) {
    (key.clone(), cursor.stream_id(), cursor.applied())
}

/// Every position a complete record in the inputs holds.
fn witnesses(legacy: &[Position], files: &Files) -> HashSet<(StreamKey, u128, u64)> {
    let mut all: HashSet<_> = legacy.iter().map(flat).collect();
    if let Some((_, records)) = files.snapshot.as_deref().and_then(ref_snapshot) {
        all.extend(records.iter().map(flat));
    }
    if let Some((_, records)) = files.journal.as_deref().and_then(ref_journal) {
        all.extend(records.iter().map(flat));
    }
    all
}

/// Opens the files as a receiver's state directory: the same positions as
/// the format's recovery (or the same failure), twice.
fn check_directory(files: &Files, want: Option<&[Position]>) {
    let dir = scratch();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    let write = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).expect("write input");
    if let Some(s) = &files.snapshot {
        write("positions.snapshot", s);
    }
    if let Some(j) = &files.journal {
        write("positions.journal", j);
    }
    for (name, bytes) in files.legacy.iter().chain(&files.stray) {
        write(name, bytes);
    }
    let opened = open_receiver_state(&dir);
    match (opened, want) {
        (Ok(got), Some(want)) => {
            assert_eq!(got, want, "opening the directory differs from recovery");
            let again = open_receiver_state(&dir).expect("reopen");
            assert_eq!(again, want, "a reopen changed the positions");
            for (name, bytes) in &files.legacy {
                let left = dir.join(name).exists();
                let valid = parse_legacy_state_file(name, bytes).is_some();
                assert!(!(left && valid), "{name} was not migrated");
            }
        }
        (Err(_), None) => {}
        (Ok(got), None) => panic!("the directory opened with {got:?} where recovery fails"),
        (Err(e), Some(_)) => panic!("the directory failed to open: {e}"),
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A scratch directory per process and thread, on tmpfs when available.
fn scratch() -> PathBuf {
    let base = std::env::var_os("TL_FUZZ_TMP")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new("/dev/shm")
                .is_dir()
                .then(|| PathBuf::from("/dev/shm"))
        })
        .unwrap_or_else(std::env::temp_dir);
    let t = format!("{:?}", std::thread::current().id());
    let t: String = t.chars().filter(char::is_ascii_digit).collect();
    base.join(format!("tl-fuzz-state-{}-t{t}", std::process::id()))
}
