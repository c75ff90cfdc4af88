//! Opening a spool: recovery from whatever a crash (or a damaged disk) left
//! in the directory, as a sequence of named steps.
//!
//! 1. [`lock_dir`]: one process at a time.
//! 2. [`read_meta`](super::meta::read_meta): the metadata, or none.
//! 3. [`list_segments`]: the segment files (leftover temp files removed).
//! 4. [`order_by_header`]: segments are ordered by their checksummed
//!    headers; a file whose header is unusable or from another stream is
//!    quarantined (renamed `*.corrupt`).
//! 5. [`SegmentLoader`]: each segment is scanned
//!    ([`scan_segment`](super::scan::scan_segment)); torn tails are cut, a
//!    corrupt middle is cut out with the records after it moved to their
//!    own file, a misnamed file gets its proper name, and files overlapping
//!    what is loaded are quarantined. The result is the segment index.
//! 6. [`next_sequence`]: never reuse a sequence a valid record carried.
//! 7. [`account_quarantined`]: what quarantined files held and no loaded
//!    segment holds is lost (unless acknowledged already).
//! 8. [`segment_bytes_for_disk`], [`remove_acked_segments`],
//!    [`open_active_segment`]: size segments for the filesystem, delete
//!    fully acknowledged ones, reuse or create the active segment.
//! 9. [`Spool::finish_open`]: the losses go through the same accounting as
//!    the cap's drops, and the repaired metadata is written.
//!
//! Nothing here panics on any file contents, and every repair is reported
//! in the [`RecoveryReport`].

use std::{
    collections::{HashSet, VecDeque},
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    capacity::segment_bytes_for_disk,
    error::io_err,
    format::{SegmentHeader, SEGMENT_HEADER_LEN},
    meta::{read_meta, Meta},
    ranges::RangeSet,
    scan::{gaps_between, scan_segment, Piece},
    segment::{create_segment_file, segment_path, Segment, SEGMENT_EXT},
    sync::{SEGMENT_CREATE_SYNCS, WRITE_ATOMIC_SYNCS},
    FsyncPolicy, Spool, SpoolConfig, SpoolError, MAX_SEQ,
};
use crate::fsutil::{sync_dir, write_atomic};

const LOCK_FILE: &str = "LOCK";

/// Segment files with a base sequence (from their names or headers).
type SegmentFiles = Vec<(u64, PathBuf)>;

/// What opening a spool found and repaired (reported by
/// [`Sender::start`](crate::Sender::start) and in a
/// [`QueueRecovery`](crate::queue::QueueRecovery)).
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

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from whatever a
    /// crash left behind.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: SpoolConfig,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = lock_dir(&dir)?;
        let mut report = RecoveryReport::default();
        let meta = read_meta(&dir, &mut report)?;
        let files = list_segments(&dir)?;
        if meta.is_none() && !files.is_empty() {
            report.meta_rebuilt = true;
        }
        report.created = meta.is_none() && files.is_empty();

        let mut stream_id = meta.as_ref().map(|m| m.stream_id);
        let (ordered, mut quarantined) = order_by_header(files, &mut stream_id, &mut report)?;
        let mut loader = SegmentLoader::new(&dir, cfg.max_record_bytes);
        for (base, path) in ordered {
            loader.load(base, path, &mut report, &mut quarantined)?;
        }
        let mut segments = loader.segments;
        let mut syncs = loader.syncs + 1;
        sync_dir(&dir).map_err(io_err(&dir))?;

        let stream_id = stream_id.unwrap_or_else(rand::random::<u128>);
        let next_seq = next_sequence(&segments, meta.as_ref(), &quarantined);
        let acked = meta.as_ref().map_or(0, |m| m.acked).min(next_seq - 1);
        let meta_dropped =
            RangeSet::from_ranges(meta.as_ref().map(|m| m.dropped.clone()).unwrap_or_default());
        let known = Known {
            next_seq,
            acked,
            meta_dropped: &meta_dropped,
        };
        account_quarantined(quarantined, &segments, &known, &mut report);
        let existing: u64 = segments.iter().map(|s| s.bytes).sum();
        let segment_bytes = segment_bytes_for_disk(&dir, existing, &cfg);
        remove_acked_segments(&mut segments, acked)?;
        let (active, created) =
            open_active_segment(&dir, &mut segments, next_seq, stream_id, cfg.fsync)?;
        if created && cfg.fsync != FsyncPolicy::Never {
            syncs += SEGMENT_CREATE_SYNCS;
        }

        let mut spool = Spool {
            active: Arc::new(active),
            segment_bytes,
            stream_id,
            segments,
            reader: None,
            next_seq,
            acked,
            dropped: RangeSet::new(),
            uncertain: RangeSet::from_ranges(
                meta.as_ref()
                    .map(|m| m.uncertain.clone())
                    .unwrap_or_default(),
            ),
            // The previous process may have sent anything it held.
            sent_hwm: next_seq - 1,
            dropped_total: meta.as_ref().map_or(0, |m| m.dropped_total),
            total_bytes: 0,
            appended_bytes: 0,
            synced_bytes: 0,
            syncs,
            write_buf: Vec::new(),
            read_scratch: Vec::new(),
            effective_cap: 0,
            cap_checked: None,
            _lock: lock,
            dir,
            cfg,
        };
        spool.finish_open(meta_dropped, &mut report)?;
        Ok((spool, report))
    }

    /// Last recovery step: ranges dropped earlier (from the metadata) stay
    /// dropped; what this recovery lost goes through the same accounting as
    /// the cap's drops. Sets the cap, writes the repaired metadata and
    /// completes the report.
    fn finish_open(
        &mut self,
        meta_dropped: RangeSet,
        report: &mut RecoveryReport,
    ) -> Result<(), SpoolError> {
        self.total_bytes = self.segments.iter().map(|s| s.bytes).sum();
        self.dropped = meta_dropped;
        for &(from, to) in &report.lost_ranges {
            self.mark_dropped(from, to);
        }
        self.refresh_cap(true);
        self.write_meta()?;
        report.segments = self.segments.len();
        report.records = self.unacked_records();
        Ok(())
    }
}

/// Step 1: creates `dir` if needed and locks it for this process (the
/// lock lives as long as the returned file).
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
    }
}

/// Step 3: the segment files in `dir` with the sequence their names give,
/// sorted; leftover temporary files are removed.
fn list_segments(dir: &Path) -> Result<SegmentFiles, SpoolError> {
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
    out.sort();
    Ok(out)
}

/// A segment file set aside at open, and what it held.
#[derive(Debug, PartialEq, Eq)]
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

/// Moves an unusable segment file aside as `*.corrupt`.
fn quarantine(path: &Path) -> Result<PathBuf, SpoolError> {
    let mut to = path.as_os_str().to_os_string();
    to.push(".corrupt");
    let to = PathBuf::from(to);
    fs::rename(path, &to).map_err(io_err(path))?;
    tracing::error!(file = %path.display(), moved_to = %to.display(), "unreadable spool segment moved aside");
    Ok(to)
}

/// Step 4: orders the segment files by their headers' base sequences. The
/// file name is only a hint. A file whose header is unusable, or belongs to
/// another stream than `stream_id` (the first valid header sets it when the
/// metadata did not), is quarantined.
fn order_by_header(
    files: SegmentFiles,
    stream_id: &mut Option<u128>,
    report: &mut RecoveryReport,
) -> Result<(SegmentFiles, Vec<Quarantined>), SpoolError> {
    let mut ordered = Vec::new();
    let mut quarantined = Vec::new();
    for (name_base, path) in files {
        let header = read_header(&path)?.filter(|h| (1..=MAX_SEQ).contains(&h.base_seq));
        let header = match (header, *stream_id) {
            (Some(h), None) => {
                *stream_id = Some(h.stream_id);
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
    Ok((ordered, quarantined))
}

/// Step 5: loads ordered segment files into the segment index, repairing
/// them on disk.
struct SegmentLoader<'a> {
    dir: &'a Path,
    max_record: usize,
    /// The index built so far, in sequence order.
    segments: VecDeque<Segment>,
    /// Files this recovery wrote (pieces split off a damaged segment);
    /// they are in the index already.
    written: HashSet<PathBuf>,
    /// fsyncs made by the repairs.
    syncs: u64,
}

impl<'a> SegmentLoader<'a> {
    fn new(dir: &'a Path, max_record: usize) -> Self {
        Self {
            dir,
            max_record,
            segments: VecDeque::new(),
            written: HashSet::new(),
            syncs: 0,
        }
    }

    /// Loads the segment file at `path` whose header said `base`.
    fn load(
        &mut self,
        base: u64,
        mut path: PathBuf,
        report: &mut RecoveryReport,
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<(), SpoolError> {
        if self.written.contains(&path) {
            return Ok(());
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let Ok(header) = SegmentHeader::decode(&bytes) else {
            report.quarantined.push(quarantine(&path)?);
            quarantined.push(Quarantined::Unreadable { name_base: base });
            return Ok(());
        };
        // Records overlapping those already loaded cannot come from this
        // spool's own writes: set them aside rather than guess.
        let overlaps = self
            .segments
            .back()
            .is_some_and(|prev| header.base_seq <= prev.last);
        let proper = segment_path(self.dir, header.base_seq);
        if overlaps || (proper != path && proper.exists()) {
            let pieces = scan_segment(
                &bytes,
                header.base_seq,
                self.max_record,
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
            return Ok(());
        }
        if proper != path {
            fs::rename(&path, &proper).map_err(io_err(&path))?;
            tracing::warn!(from = %path.display(), to = %proper.display(), "misnamed spool segment renamed");
            path = proper;
        }
        let pieces = scan_segment(&bytes, header.base_seq, self.max_record, report);
        self.keep_pieces(&path, &bytes, header.stream_id, &pieces)?;
        report.lost_ranges.extend(gaps_between(&pieces));
        Ok(())
    }

    /// Keeps the pieces that hold records, each in the file named by its
    /// first sequence (an empty segment stays as it is), and adds them to
    /// the index. Only after the other pieces are safely in their own files
    /// is the original cut down to its first piece, or removed.
    fn keep_pieces(
        &mut self,
        path: &Path,
        bytes: &[u8],
        stream_id: u128,
        pieces: &[Piece],
    ) -> Result<(), SpoolError> {
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
            let target = segment_path(self.dir, piece.base);
            if i > 0 {
                if target != path && target.exists() && !self.written.contains(&target) {
                    // Another segment file owns these sequences; it is
                    // loaded on its own.
                    continue;
                }
                self.write_piece(&target, bytes, stream_id, piece)?;
                original_used |= target == path;
            }
            let len = if i == 0 {
                piece.end as u64
            } else {
                (SEGMENT_HEADER_LEN + piece.end - piece.start) as u64
            };
            self.segments.push_back(Segment {
                base: piece.base,
                last: piece.base + piece.records - 1,
                bytes: len,
                path: target,
            });
        }
        if first_kept {
            if pieces[0].end < bytes.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(pieces[0].end as u64).map_err(io_err(path))?;
                self.syncs += 1;
                f.sync_all().map_err(io_err(path))?;
            }
        } else if !original_used {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Writes one piece of a segment into its own segment file (atomically).
    fn write_piece(
        &mut self,
        target: &Path,
        bytes: &[u8],
        stream_id: u128,
        piece: &Piece,
    ) -> Result<(), SpoolError> {
        let mut out = SegmentHeader {
            stream_id,
            base_seq: piece.base,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(&bytes[piece.start..piece.end]);
        self.syncs += WRITE_ATOMIC_SYNCS;
        write_atomic(target, &out).map_err(io_err(target))?;
        self.written.insert(target.to_path_buf());
        Ok(())
    }
}

/// Step 6: the next sequence to assign: after the last loaded record, at
/// least the metadata's floor, and past every sequence a valid record in a
/// quarantined file carried (it may have reached a receiver).
fn next_sequence(
    segments: &VecDeque<Segment>,
    meta: Option<&Meta>,
    quarantined: &[Quarantined],
) -> u64 {
    let floor = meta.map_or(1, |m| m.next_seq_floor).max(1);
    let quarantined_max = quarantined
        .iter()
        .filter_map(|q| match q {
            Quarantined::Records(r) => r.iter().map(|&(_, b)| b).max(),
            Quarantined::Unreadable { .. } => None,
        })
        .max()
        .unwrap_or(0);
    segments
        .back()
        .map_or(1, |s| (s.last + 1).max(s.base))
        .max(floor)
        .max(quarantined_max + 1)
}

/// What recovery knows of the stream once the segments are loaded.
struct Known<'a> {
    next_seq: u64,
    acked: u64,
    /// Ranges the metadata recorded as dropped already.
    meta_dropped: &'a RangeSet,
}

/// Step 7: what a quarantined file held, and no loaded segment holds, is
/// lost (unless it was acknowledged, or recorded as dropped, already):
/// added to `report.lost_ranges`. An unreadable file is taken to have held
/// the sequences from its name's up to the next segment.
fn account_quarantined(
    quarantined: Vec<Quarantined>,
    segments: &VecDeque<Segment>,
    known: &Known<'_>,
    report: &mut RecoveryReport,
) {
    let present: Vec<(u64, u64)> = segments
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| (s.base, s.last))
        .collect();
    for q in quarantined {
        let ranges = match q {
            Quarantined::Records(r) => r,
            Quarantined::Unreadable { name_base } if (1..=MAX_SEQ).contains(&name_base) => {
                let end = segments
                    .iter()
                    .map(|s| s.base)
                    .find(|&b| b > name_base)
                    .unwrap_or(known.next_seq);
                vec![(name_base, end.saturating_sub(1))]
            }
            Quarantined::Unreadable { .. } => Vec::new(),
        };
        for (a, b) in ranges {
            for (from, to) in missing_ranges(a.max(known.acked + 1), b, &present) {
                if known.meta_dropped.count_in(from, to) < to - from + 1 {
                    report.lost_ranges.push((from, to));
                }
            }
        }
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

/// Step 8b: deletes closed segments that hold nothing unacknowledged.
fn remove_acked_segments(segments: &mut VecDeque<Segment>, acked: u64) -> Result<(), SpoolError> {
    while segments.len() > 1 && (segments[0].is_empty() || segments[0].last <= acked) {
        if let Some(seg) = segments.pop_front() {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
    }
    Ok(())
}

/// Step 8c: the active segment: the last loaded one if appends continue
/// right after it, otherwise a new segment at `next_seq` (an empty last
/// segment at another base is removed first). Returns its file and whether
/// it was created.
fn open_active_segment(
    dir: &Path,
    segments: &mut VecDeque<Segment>,
    next_seq: u64,
    stream_id: u128,
    fsync: FsyncPolicy,
) -> Result<(File, bool), SpoolError> {
    let reusable = segments.back().is_some_and(|l| {
        (l.is_empty() && l.base == next_seq) || (!l.is_empty() && l.last + 1 == next_seq)
    });
    if reusable {
        let p = segments.back().map(|l| l.path.clone()).unwrap_or_default();
        let file = OpenOptions::new().append(true).open(&p);
        return Ok((file.map_err(io_err(&p))?, false));
    }
    if let Some(l) = segments.back() {
        if l.is_empty() {
            fs::remove_file(&l.path).map_err(io_err(&l.path))?;
            segments.pop_back();
        }
    }
    let path = segment_path(dir, next_seq);
    let file = create_segment_file(&path, stream_id, next_seq, fsync).map_err(io_err(&path))?;
    segments.push_back(Segment::empty(next_seq, path));
    Ok((file, true))
}

#[cfg(test)]
mod tests;
