//! The durable on-disk spool: an append-only log of records waiting for a
//! receiver's acknowledgement.
//!
//! # Guarantees
//!
//! * **Ordering and numbering.** Every appended record gets the next
//!   sequence number of this spool's *stream* (a random 128-bit id created
//!   with the spool). Sequences start at 1, never repeat within a stream and
//!   are consecutive inside a segment file.
//! * **Durability.** With [`FsyncPolicy::EveryBatch`] (the default) an
//!   [`append`](Spool::append) returns only after the data is fsynced: a
//!   record the caller was told about survives power loss. With
//!   [`FsyncPolicy::Interval`] or [`FsyncPolicy::Never`] the data is in the
//!   kernel when `append` returns, so it survives a crash or `kill -9` of
//!   the process but not a power cut within the interval.
//! * **Crash recovery.** [`Spool::open`] checks every record's CRC32C,
//!   length and sequence. A torn tail (an interrupted write) is truncated; a
//!   corrupt region in the middle is cut out and the records after it are
//!   kept; a segment with a damaged header is moved aside as `*.corrupt`.
//!   All of it is reported in a [`RecoveryReport`]; nothing panics. Sequences
//!   known to be lost are recorded as dropped so receivers learn of the gap.
//! * **Bounded size.** The spool never holds more than
//!   [`SpoolConfig::max_bytes`] (nor more than its filesystem has room for).
//!   When an append needs room — or the disk is full — whole segments are
//!   dropped, oldest first, and their unacknowledged records are remembered as
//!   dropped (see [`ranges`]). Records never handed to a connection are
//!   counted as lost at once; records that had been sent may have been
//!   applied by a receiver whose acknowledgement was lost, so they stay
//!   *uncertain* until the next session's applied position settles them
//!   ([`Spool::settle_uncertain`]): the sender's count of dropped records
//!   then equals what the receiver is told it lost.
//! * **Bounded memory.** Memory is O(number of segments) plus one read and
//!   one write buffer; records are read back from the files, never kept.
//! * **Exclusive use.** One process at a time: the directory is locked.
//!
//! Records are removed only by [`Spool::ack`] (the receiver applied them) or
//! by the size cap.

pub mod format;
pub mod ranges;

use std::{
    collections::{HashSet, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{sync_dir, write_atomic};
pub use crate::proto::seq::MAX_SEQ;
use format::{
    parse_record, resync, Corruption, Parsed, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use ranges::RangeSet;

const META_FILE: &str = "spool.meta";

const LOCK_FILE: &str = "LOCK";
const SEGMENT_EXT: &str = "seg";
const META_VERSION: u32 = 2;

/// When appended data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every `append` returns (default).
    EveryBatch,
    /// At most this long after an append (the caller drives [`Spool::sync`]).
    Interval(Duration),
    /// Never explicitly; the kernel writes back when it likes.
    Never,
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Cap on the spool's total size on disk.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    /// `None`: `max_bytes / 16`, clamped to 256 KiB ..= 8 MiB.
    pub segment_bytes: Option<u64>,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Largest record payload accepted.
    pub max_record_bytes: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            segment_bytes: None,
            fsync: FsyncPolicy::EveryBatch,
            max_record_bytes: 256 * 1024,
        }
    }
}

impl SpoolConfig {
    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .unwrap_or_else(|| (self.max_bytes / 16).clamp(256 * 1024, 8 * 1024 * 1024))
            .max((SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1) as u64)
    }
}

/// A spool failure.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Some records of an append were written, then the disk failed.
    #[error("only {accepted} records (from sequence {first_seq}) were spooled before an I/O error on {path}: {source}")]
    PartialAppend {
        /// Records written.
        accepted: u64,
        /// Sequence of the first of them.
        first_seq: u64,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// One record above [`SpoolConfig::max_record_bytes`].
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// An append larger than half the cap.
    #[error("a batch of {size} bytes cannot fit a spool capped at {cap} bytes")]
    BatchTooLarge {
        /// Batch size on disk.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Another process uses the directory.
    #[error("spool directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The stream reached [`MAX_SEQ`].
    #[error("sequence numbers exhausted (2^62); start a new spool")]
    SequenceExhausted,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The spool was created (no previous state).
    pub created: bool,
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Unacknowledged records found.
    pub records: u64,
    /// Bytes of incomplete records cut from segment ends (interrupted writes).
    pub torn_tail_bytes: u64,
    /// Bytes of corrupt data cut out.
    pub corrupt_bytes: u64,
    /// Sequence ranges known to be lost to corruption.
    pub lost_ranges: Vec<(u64, u64)>,
    /// Unreadable segment files moved aside (renamed `*.corrupt`).
    pub quarantined: Vec<PathBuf>,
    /// The metadata file was missing or damaged and was rebuilt.
    pub meta_rebuilt: bool,
}

impl RecoveryReport {
    /// Whether recovery found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.torn_tail_bytes == 0
            && self.corrupt_bytes == 0
            && self.quarantined.is_empty()
            && !self.meta_rebuilt
    }
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of the first appended record.
    pub first_seq: u64,
    /// Sequence of the last appended record.
    pub last_seq: u64,
    /// Unacknowledged records dropped to make room.
    pub dropped: u64,
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records not yet acknowledged.
    pub records: u64,
    /// Bytes on disk (all segment files).
    pub bytes: u64,
    /// Highest sequence assigned so far (0: none).
    pub last_seq: u64,
    /// Highest acknowledged sequence.
    pub acked_seq: u64,
    /// Records dropped by the cap or lost to corruption, over the stream's
    /// life, that no receiver applied.
    pub dropped_total: u64,
    /// Dropped records that had been sent before and whose fate the next
    /// session settles (applied by the receiver, or lost).
    pub uncertain: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes the spool may use before it drops its oldest records: the
    /// configured cap, lowered to what its filesystem has room for.
    pub cap_bytes: u64,
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `count` consecutive records from `first_seq` are in the buffer.
    Records {
        /// First record's sequence.
        first_seq: u64,
        /// How many.
        count: usize,
    },
    /// Sequences `from..=to` are not in the spool; `lost` of them were
    /// dropped unacknowledged (the rest were acknowledged earlier).
    Gap {
        /// First missing sequence.
        from: u64,
        /// Last missing sequence.
        to: u64,
        /// How many were dropped without acknowledgement.
        lost: u64,
    },
    /// Nothing to read yet.
    Empty,
}

/// Records read back from the spool: envelopes stored end to end.
#[derive(Debug, Default)]
pub struct ReadBuf {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl ReadBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    fn push(&mut self, payload: &[u8]) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The records' payloads in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.data[start..end];
            start = end;
            s
        })
    }
}

/// Where a reader is: the next sequence to hand out and, when known, the
/// byte offset of that record in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    next_seq: u64,
    seg_base: u64,
    offset: u64,
}

impl Cursor {
    /// The next sequence this cursor will read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    /// Last record's sequence; `base - 1` when empty.
    last: u64,
    bytes: u64,
    path: PathBuf,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last < self.base
    }

    /// Records in `from..=to` held by this segment.
    fn count_in(&self, from: u64, to: u64) -> u64 {
        let a = from.max(self.base);
        let b = to.min(self.last);
        if b >= a {
            b - a + 1
        } else {
            0
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    stream_id: u128,
    acked: u64,
    next_seq_floor: u64,
    dropped_total: u64,
    dropped: Vec<(u64, u64)>,
    uncertain: Vec<(u64, u64)>,
}

/// The spool. Not thread-safe by itself; wrap it in a mutex to share.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    segment_bytes: u64,
    stream_id: u128,
    segments: VecDeque<Segment>,
    active: File,
    reader: Option<(u64, File)>,
    next_seq: u64,
    acked: u64,
    dropped: RangeSet,
    /// Dropped records that had been handed to a receiver before: a
    /// receiver may have applied them. Settled by the next session's applied
    /// position ([`Spool::settle_uncertain`]).
    uncertain: RangeSet,
    /// Highest sequence handed to a connection (everything present at open
    /// counts as possibly sent by the previous process).
    sent_hwm: u64,
    dropped_total: u64,
    total_bytes: u64,
    unsynced: bool,
    write_buf: Vec<u8>,
    read_scratch: Vec<u8>,
    /// The cap in force: the configured one, or less when the filesystem
    /// has less room (re-read at most once a second).
    effective_cap: u64,
    cap_checked: Option<std::time::Instant>,
    _lock: File,
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
#[allow(unsafe_code)] // statvfs through libc; each block carries its SAFETY argument.
fn fs_available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right size; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(avail.saturating_mul(frsize))
}

/// Room kept free on the filesystem for metadata and other small files.
const FS_RESERVE: u64 = 64 * 1024;

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc_enospc()) || e.kind() == io::ErrorKind::StorageFull
}

const fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux and the BSDs
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from whatever a
    /// crash left behind.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: SpoolConfig,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let mut report = RecoveryReport::default();
        let meta_path = dir.join(META_FILE);
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => {
                let m = decode_meta(&bytes);
                report.meta_rebuilt = m.is_none();
                m
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&meta_path)(e)),
        };

        let mut stream_id = meta.as_ref().map(|m| m.stream_id);
        let meta_dropped =
            RangeSet::from_ranges(meta.as_ref().map(|m| m.dropped.clone()).unwrap_or_default());
        let max_record = cfg.max_record_bytes;

        let mut files = list_segments(&dir)?;
        files.sort();
        if meta.is_none() && !files.is_empty() {
            report.meta_rebuilt = true;
        }
        report.created = meta.is_none() && files.is_empty();

        // Segments are ordered by their checksummed headers; the file name is
        // only a hint. A file whose header is unusable or belongs to another
        // stream is set aside; a misnamed one gets its proper name back.
        let mut ordered: Vec<(u64, PathBuf)> = Vec::new();
        let mut quarantined: Vec<Quarantined> = Vec::new();
        for (name_base, path) in files {
            let header = read_header(&path)?.filter(|h| (1..=MAX_SEQ).contains(&h.base_seq));
            let header = match (header, stream_id) {
                (Some(h), None) => {
                    stream_id = Some(h.stream_id);
                    Some(h)
                }
                (Some(h), Some(s)) if h.stream_id == s => Some(h),
                _ => None,
            };
            match header {
                Some(h) => ordered.push((h.base_seq, path)),
                None => {
                    report.quarantined.push(quarantine(&path)?);
                    quarantined.push(Quarantined::Unreadable { name_base });
                }
            }
        }
        ordered.sort();

        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut created_here: HashSet<PathBuf> = HashSet::new();
        for (base, mut path) in ordered {
            if created_here.contains(&path) {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let Ok(header) = SegmentHeader::decode(&bytes) else {
                report.quarantined.push(quarantine(&path)?);
                quarantined.push(Quarantined::Unreadable { name_base: base });
                continue;
            };
            // Records overlapping those already loaded cannot come from this
            // spool's own writes: set them aside rather than guess.
            let overlaps = segments
                .back()
                .is_some_and(|prev| header.base_seq <= prev.last);
            let proper = segment_path(&dir, header.base_seq);
            if overlaps || (proper != path && proper.exists()) {
                let pieces = scan_segment(
                    &bytes,
                    header.base_seq,
                    max_record,
                    &mut RecoveryReport::default(),
                );
                report.quarantined.push(quarantine(&path)?);
                quarantined.push(Quarantined::Records(
                    pieces
                        .iter()
                        .filter(|p| p.records > 0)
                        .map(|p| (p.base, p.base + p.records - 1))
                        .collect(),
                ));
                continue;
            }
            if proper != path {
                fs::rename(&path, &proper).map_err(io_err(&path))?;
                tracing::warn!(from = %path.display(), to = %proper.display(), "misnamed spool segment renamed");
                path = proper;
            }
            let pieces = scan_segment(&bytes, header.base_seq, max_record, &mut report);
            // Keep the pieces that hold records, each in the file named by
            // its first sequence; an empty spool segment stays as it is.
            let first_kept = pieces[0].records > 0 || pieces.iter().all(|p| p.records == 0);
            let mut original_used = first_kept;
            for (i, piece) in pieces.iter().enumerate() {
                let keep = if i == 0 {
                    first_kept
                } else {
                    piece.records > 0
                };
                if !keep {
                    continue;
                }
                let target = segment_path(&dir, piece.base);
                if i > 0 {
                    if target != path && target.exists() && !created_here.contains(&target) {
                        // Another segment file owns these sequences; it is
                        // loaded on its own.
                        continue;
                    }
                    let mut out = SegmentHeader {
                        stream_id: header.stream_id,
                        base_seq: piece.base,
                    }
                    .encode()
                    .to_vec();
                    out.extend_from_slice(&bytes[piece.start..piece.end]);
                    write_atomic(&target, &out).map_err(io_err(&target))?;
                    created_here.insert(target.clone());
                    original_used |= target == path;
                }
                let len = if i == 0 {
                    piece.end as u64
                } else {
                    (SEGMENT_HEADER_LEN + piece.end - piece.start) as u64
                };
                segments.push_back(Segment {
                    base: piece.base,
                    last: piece.base + piece.records - 1,
                    bytes: len,
                    path: target,
                });
            }
            // Only after the other pieces are safely in their own files: cut
            // the original down to its first piece, or remove it.
            if first_kept {
                if pieces[0].end < bytes.len() {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(pieces[0].end as u64).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                }
            } else if !original_used {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
            for w in pieces.windows(2) {
                let (from, to) = (w[0].base + w[0].records, w[1].base - 1);
                if to >= from {
                    report.lost_ranges.push((from, to));
                }
            }
        }
        sync_dir(&dir).map_err(io_err(&dir))?;

        let stream_id = stream_id.unwrap_or_else(rand::random::<u128>);
        let floor = meta.as_ref().map_or(1, |m| m.next_seq_floor).max(1);
        // Never reuse a sequence a valid record carried, even one in a
        // quarantined file: it may have reached a receiver.
        let quarantined_max = quarantined
            .iter()
            .filter_map(|q| match q {
                Quarantined::Records(r) => r.iter().map(|&(_, b)| b).max(),
                Quarantined::Unreadable { .. } => None,
            })
            .max()
            .unwrap_or(0);
        let next_seq = segments
            .back()
            .map_or(1, |s| (s.last + 1).max(s.base))
            .max(floor)
            .max(quarantined_max + 1);
        let acked = meta.as_ref().map_or(0, |m| m.acked).min(next_seq - 1);
        // What a quarantined segment held, and no loaded segment holds, is
        // lost (unless it was acknowledged already).
        let present: Vec<(u64, u64)> = segments
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| (s.base, s.last))
            .collect();
        for q in quarantined {
            let ranges = match q {
                Quarantined::Records(r) => r,
                // Unreadable: from the name's sequence up to the next segment.
                Quarantined::Unreadable { name_base } if (1..=MAX_SEQ).contains(&name_base) => {
                    let end = segments
                        .iter()
                        .map(|s| s.base)
                        .find(|&b| b > name_base)
                        .unwrap_or(next_seq);
                    vec![(name_base, end.saturating_sub(1))]
                }
                Quarantined::Unreadable { .. } => Vec::new(),
            };
            for (a, b) in ranges {
                for (from, to) in missing_ranges(a.max(acked + 1), b, &present) {
                    if meta_dropped.count_in(from, to) < to - from + 1 {
                        report.lost_ranges.push((from, to));
                    }
                }
            }
        }
        // On a small filesystem, segments must be small enough that dropping
        // one frees useful room.
        let existing: u64 = segments.iter().map(|s| s.bytes).sum();
        let disk_room = fs_available(&dir).map(|a| (a + existing).saturating_sub(FS_RESERVE));
        let segment_bytes = match disk_room {
            Some(room) if room < cfg.max_bytes => cfg
                .effective_segment_bytes()
                .min((room / 16).max(16 * 1024)),
            _ => cfg.effective_segment_bytes(),
        };

        // Fully acknowledged closed segments are of no further use.
        while segments.len() > 1 && (segments[0].is_empty() || segments[0].last <= acked) {
            if let Some(seg) = segments.pop_front() {
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
        }
        let reusable = segments.back().is_some_and(|l| {
            (l.is_empty() && l.base == next_seq) || (!l.is_empty() && l.last + 1 == next_seq)
        });
        let active = if reusable {
            let p = segments.back().map(|l| l.path.clone()).unwrap_or_default();
            OpenOptions::new()
                .append(true)
                .open(&p)
                .map_err(io_err(&p))?
        } else {
            if let Some(l) = segments.back() {
                if l.is_empty() {
                    fs::remove_file(&l.path).map_err(io_err(&l.path))?;
                    segments.pop_back();
                }
            }
            let path = segment_path(&dir, next_seq);
            let f = create_segment_file(&path, stream_id, next_seq, cfg.fsync)
                .map_err(io_err(&path))?;
            segments.push_back(Segment {
                base: next_seq,
                last: next_seq - 1,
                bytes: SEGMENT_HEADER_LEN as u64,
                path,
            });
            f
        };
        let dropped_total = meta.as_ref().map_or(0, |m| m.dropped_total);
        let uncertain = RangeSet::from_ranges(
            meta.as_ref()
                .map(|m| m.uncertain.clone())
                .unwrap_or_default(),
        );
        let mut spool = Spool {
            active,
            dir,
            cfg,
            segment_bytes,
            stream_id,
            segments,
            reader: None,
            next_seq,
            acked,
            dropped: RangeSet::new(),
            uncertain,
            // The previous process may have sent anything it held.
            sent_hwm: next_seq - 1,
            dropped_total,
            total_bytes: 0,
            unsynced: false,
            write_buf: Vec::new(),
            read_scratch: Vec::new(),
            effective_cap: 0,
            cap_checked: None,
            _lock: lock,
        };
        spool.total_bytes = spool.segments.iter().map(|s| s.bytes).sum();
        // Ranges dropped earlier (from the metadata) stay dropped; what this
        // recovery lost goes through the same accounting as the cap's drops.
        spool.dropped = meta_dropped;
        for &(from, to) in &report.lost_ranges {
            spool.mark_dropped(from, to);
        }
        spool.refresh_cap(true);
        spool.write_meta()?;
        report.segments = spool.segments.len();
        report.records = spool.unacked_records();
        Ok((spool, report))
    }

    /// The spool's stream id (random, fixed for the spool's lifetime).
    pub fn stream_id(&self) -> u128 {
        self.stream_id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Highest sequence assigned (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Highest acknowledged sequence.
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.unacked_records(),
            bytes: self.total_bytes,
            last_seq: self.next_seq - 1,
            acked_seq: self.acked,
            dropped_total: self.dropped_total,
            uncertain: self.uncertain.count_in(0, u64::MAX),
            segments: self.segments.len(),
            cap_bytes: self.effective_cap,
        }
    }

    /// How many sequences in `from..=to` were dropped unacknowledged.
    pub fn lost_in(&self, from: u64, to: u64) -> u64 {
        self.dropped.count_in(from, to)
    }

    /// The size cap in force (the configured cap, or less if the filesystem
    /// is smaller).
    pub fn effective_cap(&self) -> u64 {
        self.effective_cap
    }

    fn refresh_cap(&mut self, force: bool) {
        let now = std::time::Instant::now();
        if !force
            && self
                .cap_checked
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.cap_checked = Some(now);
        self.effective_cap = match fs_available(&self.dir) {
            Some(avail) => self
                .cfg
                .max_bytes
                .min((self.total_bytes + avail).saturating_sub(FS_RESERVE)),
            None => self.cfg.max_bytes,
        };
    }

    fn unacked_records(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.count_in(self.acked + 1, u64::MAX))
            .sum()
    }

    /// Appends records (their payloads); returns their sequence numbers.
    ///
    /// The whole batch is checked before anything is written. To make room
    /// the oldest segments may be dropped (reported in [`Appended::dropped`]).
    pub fn append<B: AsRef<[u8]>>(&mut self, payloads: &[B]) -> Result<Appended, SpoolError> {
        let first_seq = self.next_seq;
        if payloads.is_empty() {
            return Ok(Appended {
                first_seq,
                last_seq: first_seq - 1,
                dropped: 0,
            });
        }
        if first_seq.saturating_add(payloads.len() as u64) > MAX_SEQ {
            return Err(SpoolError::SequenceExhausted);
        }
        let mut size = 0u64;
        for p in payloads {
            let len = p.as_ref().len();
            if len > self.cfg.max_record_bytes {
                return Err(SpoolError::RecordTooLarge {
                    size: len,
                    max: self.cfg.max_record_bytes,
                });
            }
            size += (RECORD_HEADER_LEN + len) as u64;
        }
        if size + 2 * SEGMENT_HEADER_LEN as u64 > self.cfg.max_bytes / 2 {
            return Err(SpoolError::BatchTooLarge {
                size,
                cap: self.cfg.max_bytes,
            });
        }
        // Room for the records plus the headers of segments this append may open.
        let needed = size + (size / self.segment_bytes + 2) * SEGMENT_HEADER_LEN as u64;
        let mut dropped = 0;
        self.refresh_cap(false);
        while self.total_bytes + needed > self.effective_cap {
            match self.drop_oldest()? {
                Some(n) => dropped += n,
                None => break,
            }
        }

        let mut i = 0;
        while i < payloads.len() {
            let chunk_first = self.next_seq;
            let active_bytes = self.active_segment().bytes;
            let active_has_records = !self.active_segment().is_empty();
            let mut seg_bytes = active_bytes;
            let mut seq = chunk_first;
            self.write_buf.clear();
            let mut j = i;
            while j < payloads.len() {
                let p = payloads[j].as_ref();
                let rec = (RECORD_HEADER_LEN + p.len()) as u64;
                if (active_has_records || j > i) && seg_bytes + rec > self.segment_bytes {
                    break;
                }
                format::encode_record(seq, p, &mut self.write_buf);
                seg_bytes += rec;
                seq += 1;
                j += 1;
            }
            if j == i {
                self.roll_making_room(&mut dropped)?;
                continue;
            }
            match self.write_chunk(seq - 1, &mut dropped) {
                Ok(()) => {}
                Err(SpoolError::Io { path, source }) if i > 0 => {
                    return Err(SpoolError::PartialAppend {
                        accepted: (chunk_first - first_seq),
                        first_seq,
                        path,
                        source,
                    })
                }
                Err(e) => return Err(e),
            }
            i = j;
        }
        if self.cfg.fsync == FsyncPolicy::EveryBatch {
            self.sync()?;
        }
        Ok(Appended {
            first_seq,
            last_seq: self.next_seq - 1,
            dropped,
        })
    }

    /// Writes `write_buf` (records up to `last_seq`) to the active segment,
    /// dropping old segments while the disk is full.
    fn write_chunk(&mut self, last_seq: u64, dropped: &mut u64) -> Result<(), SpoolError> {
        loop {
            let before = self.active_segment().bytes;
            match self.active.write_all(&self.write_buf) {
                Ok(()) => {
                    let len = self.write_buf.len() as u64;
                    let seg = self.active_segment_mut();
                    seg.bytes += len;
                    seg.last = last_seq;
                    self.total_bytes += len;
                    self.next_seq = last_seq + 1;
                    self.unsynced = true;
                    return Ok(());
                }
                Err(e) => {
                    let path = self.active_segment().path.clone();
                    // Remove whatever part of the chunk reached the file.
                    self.active.set_len(before).map_err(io_err(&path))?;
                    if is_no_space(&e) && self.segments.len() > 1 {
                        self.refresh_cap(true);
                        if let Some(n) = self.drop_oldest()? {
                            *dropped += n;
                            continue;
                        }
                    }
                    return Err(SpoolError::Io { path, source: e });
                }
            }
        }
    }

    /// Fsyncs appended data (what [`FsyncPolicy::Interval`] callers call
    /// on their timer). Cheap when nothing is pending.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            self.active
                .sync_data()
                .map_err(io_err(&self.active_segment().path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether appended data awaits an fsync.
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Marks everything up to `seq` acknowledged; deletes segments that hold
    /// only acknowledged records. Returns how many records it newly covers.
    pub fn ack(&mut self, seq: u64) -> Result<u64, SpoolError> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return Ok(0);
        }
        let newly: u64 = self
            .segments
            .iter()
            .map(|s| s.count_in(self.acked + 1, seq))
            .sum();
        self.acked = seq;
        let before = self.segments.len();
        let active = self.active_segment();
        if !active.is_empty() && active.last <= self.acked && active.bytes >= self.segment_bytes / 4
        {
            // Reclaim the space of a fully acknowledged active segment.
            self.roll()?;
        }
        self.delete_acked_segments()?;
        if self.segments.len() != before {
            self.write_meta()?;
        }
        Ok(newly)
    }

    /// Makes sure the next assigned sequence is at least `seq`. Used when a
    /// receiver reports more applied than this spool has assigned (the
    /// spool lost its tail in a power cut): reusing those numbers would make
    /// the receiver drop new records as duplicates.
    pub fn advance_next_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq > MAX_SEQ {
            return Err(SpoolError::SequenceExhausted);
        }
        if seq <= self.next_seq {
            return Ok(());
        }
        self.next_seq = seq;
        self.roll()?;
        self.write_meta()
    }

    /// Persists the acknowledged position (also done when segments are
    /// deleted). Call on shutdown.
    pub fn checkpoint(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.write_meta()
    }

    /// The oldest sequence still held and not acknowledged (`last_seq + 1`
    /// when there is none): everything before it was acknowledged or
    /// dropped.
    pub fn oldest_unacked_seq(&self) -> u64 {
        let first_held = self
            .segments
            .iter()
            .find(|s| !s.is_empty() && s.last > self.acked)
            .map_or(self.next_seq, |s| s.base);
        first_held.max(self.acked + 1)
    }

    /// A cursor that will read from `seq` on.
    pub fn cursor(&self, seq: u64) -> Cursor {
        Cursor {
            next_seq: seq.max(1),
            seg_base: 0,
            offset: 0,
        }
    }

    /// Reads up to `max_records` consecutive records (and about `max_bytes`
    /// of payload; a single larger record is still returned alone) at the
    /// cursor, or reports the gap in front of it.
    pub fn read(
        &mut self,
        cur: &mut Cursor,
        max_records: usize,
        max_bytes: usize,
        out: &mut ReadBuf,
    ) -> Result<ReadOutcome, SpoolError> {
        out.clear();
        if cur.next_seq >= self.next_seq || max_records == 0 {
            return Ok(ReadOutcome::Empty);
        }
        let Some(idx) = self
            .segments
            .iter()
            .position(|s| !s.is_empty() && s.last >= cur.next_seq)
        else {
            return Ok(self.gap(cur, self.next_seq - 1));
        };
        let seg = self.segments[idx].clone();
        if seg.base > cur.next_seq {
            return Ok(self.gap(cur, seg.base - 1));
        }
        if cur.seg_base != seg.base
            || cur.offset < SEGMENT_HEADER_LEN as u64
            || cur.offset >= seg.bytes
        {
            cur.offset = self.seek(&seg, cur.next_seq)?;
            cur.seg_base = seg.base;
        }
        let first_seq = cur.next_seq;
        let mut count = 0;
        // Set when the next record would exceed the byte budget: the batch
        // is complete (the record starts the next one).
        let mut full = false;
        while !full && count < max_records && cur.next_seq <= seg.last {
            if count > 0 && out.bytes() >= max_bytes {
                break;
            }
            let avail = seg.bytes.saturating_sub(cur.offset) as usize;
            let budget_left = max_bytes.saturating_sub(out.bytes());
            let want = avail.min(
                budget_left
                    .max(RECORD_HEADER_LEN)
                    .saturating_add(RECORD_HEADER_LEN),
            );
            self.fill_scratch(&seg, cur.offset, want)?;
            let mut pos = 0;
            let mut progressed = false;
            while count < max_records {
                match parse_record(
                    &self.read_scratch[pos..],
                    self.cfg.max_record_bytes,
                    cur.next_seq,
                ) {
                    Parsed::Record { payload, size, .. } => {
                        if count > 0 && out.bytes().saturating_add(payload.len()) > max_bytes {
                            full = true;
                            break;
                        }
                        out.push(payload);
                        pos += size;
                        cur.next_seq += 1;
                        count += 1;
                        progressed = true;
                        if cur.next_seq > seg.last {
                            break;
                        }
                    }
                    Parsed::Incomplete { needed: Some(n) }
                        if !progressed && n <= avail && n > want =>
                    {
                        // One record larger than the read: fetch it whole.
                        self.fill_scratch(&seg, cur.offset, n)?;
                    }
                    // The rest of the chunk is a partial record: read on.
                    Parsed::Incomplete { .. } if progressed => break,
                    Parsed::Incomplete { .. } => {
                        // The segment claims this record is complete but it
                        // runs past the written end: the file changed under us.
                        cur.offset += pos as u64;
                        self.cut_corrupt(idx, cur.offset, cur.next_seq, Corruption::PastEnd)?;
                        return Ok(records_or_empty(first_seq, count));
                    }
                    Parsed::Corrupt(why) => {
                        cur.offset += pos as u64;
                        self.cut_corrupt(idx, cur.offset, cur.next_seq, why)?;
                        return Ok(records_or_empty(first_seq, count));
                    }
                }
            }
            cur.offset += pos as u64;
        }
        Ok(records_or_empty(first_seq, count))
    }

    fn gap(&self, cur: &mut Cursor, to: u64) -> ReadOutcome {
        let from = cur.next_seq;
        cur.next_seq = to + 1;
        cur.offset = 0;
        ReadOutcome::Gap {
            from,
            to,
            lost: self.dropped.count_in(from, to),
        }
    }

    fn read_handle(&mut self, seg: &Segment) -> Result<&File, SpoolError> {
        if self.reader.as_ref().map(|(b, _)| *b) != Some(seg.base) {
            let f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            self.reader = Some((seg.base, f));
        }
        match &self.reader {
            Some((_, f)) => Ok(f),
            None => unreachable!("reader was just set"),
        }
    }

    fn fill_scratch(&mut self, seg: &Segment, offset: u64, len: usize) -> Result<(), SpoolError> {
        let mut scratch = std::mem::take(&mut self.read_scratch);
        scratch.resize(len, 0);
        let res = self.read_handle(seg).and_then(|f| {
            f.read_exact_at(&mut scratch, offset)
                .map_err(io_err(&seg.path))
        });
        self.read_scratch = scratch;
        res
    }

    /// Byte offset of record `seq` in `seg`, walking record headers.
    fn seek(&mut self, seg: &Segment, seq: u64) -> Result<u64, SpoolError> {
        let mut off = SEGMENT_HEADER_LEN as u64;
        let mut at = seg.base;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        while at < seq && off < seg.bytes {
            let f = self.read_handle(seg)?;
            f.read_exact_at(&mut hdr, off).map_err(io_err(&seg.path))?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64;
            off += RECORD_HEADER_LEN as u64 + len;
            at += 1;
        }
        Ok(off)
    }

    /// A record that was valid when written is now corrupt (the disk changed
    /// it): drop it and everything after it in the segment, loudly.
    fn cut_corrupt(
        &mut self,
        idx: usize,
        offset: u64,
        seq: u64,
        why: Corruption,
    ) -> Result<(), SpoolError> {
        let seg = self.segments[idx].clone();
        tracing::error!(
            segment = %seg.path.display(), offset, seq, last = seg.last, error = %why,
            "spool record corrupted on disk; dropping the rest of the segment"
        );
        let lost_from = seq.max(self.acked + 1);
        if seg.last >= lost_from {
            self.mark_dropped(lost_from, seg.last);
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        f.set_len(offset).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.bytes - offset;
        let s = &mut self.segments[idx];
        s.bytes = offset;
        s.last = seq - 1;
        self.reader = None;
        if idx == self.segments.len() - 1 {
            // Keep sequences consecutive inside a segment.
            self.roll()?;
        }
        self.write_meta()
    }

    fn active_segment(&self) -> &Segment {
        match self.segments.back() {
            Some(s) => s,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        match self.segments.back_mut() {
            Some(s) => s,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    /// [`Spool::roll`], dropping the oldest closed segments while the disk
    /// is too full to create the new one.
    fn roll_making_room(&mut self, dropped: &mut u64) -> Result<(), SpoolError> {
        loop {
            match self.roll() {
                Err(SpoolError::Io { source, .. })
                    if is_no_space(&source) && self.segments.len() > 1 =>
                {
                    self.refresh_cap(true);
                    match self.drop_oldest()? {
                        Some(n) => *dropped += n,
                        None => {
                            return Err(SpoolError::Io {
                                path: self.dir.clone(),
                                source,
                            })
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Closes the active segment and starts a new one at `next_seq`. The
    /// new file exists before anything is removed, so a failure (disk full)
    /// leaves the spool as it was.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.cfg.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let old = self.active_segment().clone();
        if old.is_empty() && old.base == self.next_seq {
            return Ok(());
        }
        self.create_segment(self.next_seq)?;
        self.total_bytes += SEGMENT_HEADER_LEN as u64;
        if old.is_empty() {
            // An empty segment left behind by a sequence jump: remove it.
            let idx = self.segments.len() - 2;
            self.segments.remove(idx);
            self.total_bytes -= old.bytes;
            fs::remove_file(&old.path).map_err(io_err(&old.path))?;
        }
        Ok(())
    }

    fn create_segment(&mut self, base: u64) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, base);
        let f = create_segment_file(&path, self.stream_id, base, self.cfg.fsync)
            .map_err(io_err(&path))?;
        self.active = f;
        self.unsynced = false;
        self.segments.push_back(Segment {
            base,
            last: base - 1,
            bytes: SEGMENT_HEADER_LEN as u64,
            path,
        });
        Ok(())
    }

    /// Drops the oldest segment; returns the unacknowledged records it held,
    /// or `None` if there is nothing to drop.
    fn drop_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        if self.segments.len() == 1 {
            if self.active_segment().is_empty() {
                return Ok(None);
            }
            self.roll()?;
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(None);
        };
        let from = seg.base.max(self.acked + 1);
        let n = seg.count_in(from, u64::MAX);
        let mut certain = 0;
        if n > 0 {
            certain = self.mark_dropped(from, seg.last);
            tracing::warn!(
                first = from,
                last = seg.last,
                records = n,
                "spool full: dropped oldest records"
            );
        }
        if self.reader.as_ref().is_some_and(|(b, _)| *b == seg.base) {
            self.reader = None;
        }
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.bytes;
        self.write_meta()?;
        Ok(Some(certain))
    }

    /// Records `from..=to` as dropped. Those never handed to a connection are
    /// lost for sure and counted now (returned); those that were sent may
    /// have been applied, and wait for [`Spool::settle_uncertain`].
    fn mark_dropped(&mut self, from: u64, to: u64) -> u64 {
        if to < from {
            return 0;
        }
        self.dropped.insert(from, to);
        let sent_to = to.min(self.sent_hwm);
        if from <= sent_to {
            self.uncertain.insert(from, sent_to);
        }
        let certain_from = from.max(self.sent_hwm.saturating_add(1));
        let certain = if certain_from <= to {
            to - certain_from + 1
        } else {
            0
        };
        self.dropped_total += certain;
        certain
    }

    /// Notes that sequences up to `seq` were handed to a connection.
    pub fn mark_sent(&mut self, seq: u64) {
        self.sent_hwm = self.sent_hwm.max(seq);
    }

    /// A receiver acknowledged up to `acked` during a session: dropped
    /// records at or below it were delivered after all.
    pub fn settle_delivered(&mut self, acked: u64) -> Result<(), SpoolError> {
        if self.uncertain.is_empty() {
            return Ok(());
        }
        let delivered = self.uncertain.intersect(0, acked);
        if delivered.is_empty() {
            return Ok(());
        }
        for (a, b) in delivered {
            self.dropped.remove(a, b);
            self.uncertain.remove(a, b);
        }
        self.write_meta()
    }

    /// A session starts and the receiver has applied up to `applied`: every
    /// uncertain dropped record is settled — delivered if at or below it,
    /// lost (and counted) otherwise. Returns how many were lost.
    pub fn settle_uncertain(&mut self, applied: u64) -> Result<u64, SpoolError> {
        if self.uncertain.is_empty() {
            return Ok(0);
        }
        for (a, b) in self.uncertain.intersect(0, applied) {
            self.dropped.remove(a, b);
        }
        let lost = self.uncertain.count_in(applied.saturating_add(1), u64::MAX);
        self.dropped_total += lost;
        self.uncertain = RangeSet::new();
        self.write_meta()?;
        Ok(lost)
    }

    fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if !(front.is_empty() || front.last <= self.acked) {
                break;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            if self.reader.as_ref().is_some_and(|(b, _)| *b == seg.base) {
                self.reader = None;
            }
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
        }
        Ok(())
    }

    fn write_meta(&mut self) -> Result<(), SpoolError> {
        let meta = Meta {
            version: META_VERSION,
            stream_id: self.stream_id,
            acked: self.acked,
            next_seq_floor: self.next_seq,
            dropped_total: self.dropped_total,
            dropped: self.dropped.ranges().to_vec(),
            uncertain: self.uncertain.ranges().to_vec(),
        };
        let path = self.dir.join(META_FILE);
        write_atomic(&path, &encode_meta(&meta)).map_err(io_err(&path))
    }
}

/// Creates a segment file holding only its header (removed again on failure).
fn create_segment_file(
    path: &Path,
    stream_id: u128,
    base: u64,
    fsync: FsyncPolicy,
) -> io::Result<File> {
    let res = (|| {
        let mut f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        f.write_all(
            &SegmentHeader {
                stream_id,
                base_seq: base,
            }
            .encode(),
        )?;
        if fsync != FsyncPolicy::Never {
            f.sync_all()?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        Ok(f)
    })();
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut v = postcard::to_allocvec(meta).unwrap_or_default();
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn decode_meta(bytes: &[u8]) -> Option<Meta> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let m: Meta = postcard::from_bytes(body).ok()?;
    (m.version == META_VERSION && m.next_seq_floor <= MAX_SEQ + 1 && m.acked <= MAX_SEQ)
        .then_some(m)
}

fn records_or_empty(first_seq: u64, count: usize) -> ReadOutcome {
    if count > 0 {
        ReadOutcome::Records { first_seq, count }
    } else {
        ReadOutcome::Empty
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXT}")) {
            if let Ok(base) = stem.parse::<u64>() {
                out.push((base, path));
            }
        }
    }
    Ok(out)
}

/// A segment file set aside at open, and what it held.
enum Quarantined {
    /// No usable header: only its name hints at its first sequence.
    Unreadable { name_base: u64 },
    /// Valid records that could not be loaded (overlap or name clash).
    Records(Vec<(u64, u64)>),
}

/// Reads and checks the header at the start of a segment file.
fn read_header(path: &Path) -> Result<Option<SegmentHeader>, SpoolError> {
    use std::io::Read;
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let mut f = File::open(path).map_err(io_err(path))?;
    match f.read_exact(&mut buf) {
        Ok(()) => Ok(SegmentHeader::decode(&buf).ok()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The parts of `from..=to` not covered by the sorted, disjoint `present`.
fn missing_ranges(from: u64, to: u64, present: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = from;
    for &(a, b) in present {
        if next > to {
            break;
        }
        if b < next {
            continue;
        }
        if a > next {
            out.push((next, (a - 1).min(to)));
        }
        next = next.max(b.saturating_add(1));
    }
    if next <= to {
        out.push((next, to));
    }
    out
}

fn quarantine(path: &Path) -> Result<PathBuf, SpoolError> {
    let mut to = path.as_os_str().to_os_string();
    to.push(".corrupt");
    let to = PathBuf::from(to);
    fs::rename(path, &to).map_err(io_err(path))?;
    tracing::error!(file = %path.display(), moved_to = %to.display(), "unreadable spool segment moved aside");
    Ok(to)
}

/// A run of consecutive valid records inside a segment file's bytes.
#[derive(Debug)]
struct Piece {
    base: u64,
    records: u64,
    start: usize,
    end: usize,
}

/// Splits a segment's bytes into runs of valid records, cutting out torn
/// tails and corrupt regions (counted in `report`).
fn scan_segment(
    bytes: &[u8],
    base: u64,
    max_record: usize,
    report: &mut RecoveryReport,
) -> Vec<Piece> {
    let mut pieces = vec![Piece {
        base,
        records: 0,
        start: SEGMENT_HEADER_LEN,
        end: SEGMENT_HEADER_LEN,
    }];
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = base;
    while off < bytes.len() {
        if expected > MAX_SEQ {
            // No spool writes sequences beyond MAX_SEQ: the rest is not ours.
            report.corrupt_bytes += (bytes.len() - off) as u64;
            break;
        }
        match parse_record(&bytes[off..], max_record, expected) {
            Parsed::Record { size, .. } => {
                off += size;
                expected += 1;
                if let Some(p) = pieces.last_mut() {
                    p.records += 1;
                    p.end = off;
                }
            }
            Parsed::Incomplete { .. } => {
                report.torn_tail_bytes += (bytes.len() - off) as u64;
                break;
            }
            Parsed::Corrupt(why) => match resync(&bytes[off..], max_record, expected - 1) {
                Some((skip, seq)) => {
                    tracing::error!(offset = off, bytes = skip, error = %why, "corrupt region in spool segment cut out");
                    report.corrupt_bytes += skip as u64;
                    off += skip;
                    expected = seq;
                    pieces.push(Piece {
                        base: seq,
                        records: 0,
                        start: off,
                        end: off,
                    });
                }
                None => {
                    tracing::error!(offset = off, bytes = bytes.len() - off, error = %why, "corrupt spool segment tail truncated");
                    report.corrupt_bytes += (bytes.len() - off) as u64;
                    break;
                }
            },
        }
    }
    pieces
}

#[cfg(test)]
mod tests;
