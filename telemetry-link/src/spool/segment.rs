//! Segment files and their life cycle: the in-memory index entry of a
//! segment, creating a segment file, rolling to a new active segment and
//! deleting segments whose records are all acknowledged.
//!
//! A spool always has at least one segment, the last one, which is the
//! active one appends go to. A new segment file exists (header written and,
//! unless fsync is off, synced with its directory) before anything is
//! removed, so a failure part-way leaves the spool as it was.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    error::io_err,
    format::{SegmentHeader, SEGMENT_HEADER_LEN},
    sync::SEGMENT_CREATE_SYNCS,
    FsyncPolicy, Spool, SpoolError,
};
use crate::fsutil::sync_dir;

/// File name extension of segment files.
pub(super) const SEGMENT_EXT: &str = "seg";

/// One segment file in the index.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// Sequence of its first record (from its header).
    pub(super) base: u64,
    /// Last record's sequence; `base - 1` when empty.
    pub(super) last: u64,
    /// Bytes of the file that hold its header and valid records.
    pub(super) bytes: u64,
    /// The file.
    pub(super) path: PathBuf,
}

impl Segment {
    /// A segment holding only its header.
    pub(super) fn empty(base: u64, path: PathBuf) -> Self {
        Segment {
            base,
            last: base - 1,
            bytes: SEGMENT_HEADER_LEN as u64,
            path,
        }
    }

    /// Whether it holds no record.
    pub(super) fn is_empty(&self) -> bool {
        self.last < self.base
    }

    /// Records in `from..=to` held by this segment.
    pub(super) fn count_in(&self, from: u64, to: u64) -> u64 {
        let a = from.max(self.base);
        let b = to.min(self.last);
        if b >= a {
            b - a + 1
        } else {
            0
        }
    }
}

/// The file name of the segment starting at `base`.
pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

/// Creates a segment file holding only its header (removed again on failure).
pub(super) fn create_segment_file(
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

impl Spool {
    pub(super) fn active_segment(&self) -> &Segment {
        match self.segments.back() {
            Some(s) => s,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    pub(super) fn active_segment_mut(&mut self) -> &mut Segment {
        match self.segments.back_mut() {
            Some(s) => s,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    /// Closes the active segment and starts a new one at `next_seq`. The
    /// new file exists before anything is removed, so a failure (disk full)
    /// leaves the spool as it was.
    pub(super) fn roll(&mut self) -> Result<(), SpoolError> {
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
        if self.cfg.fsync != FsyncPolicy::Never {
            self.count_syncs(SEGMENT_CREATE_SYNCS);
        }
        let f = create_segment_file(&path, self.stream_id, base, self.cfg.fsync)
            .map_err(io_err(&path))?;
        self.active = Arc::new(f);
        self.mark_synced();
        self.segments.push_back(Segment::empty(base, path));
        Ok(())
    }

    /// Deletes closed segments that hold only acknowledged records.
    pub(super) fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if !(front.is_empty() || front.last <= self.acked) {
                break;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            self.forget_reader_of(seg.base);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_in_a_range() {
        let s = Segment {
            base: 10,
            last: 19,
            bytes: 0,
            path: PathBuf::new(),
        };
        assert_eq!(s.count_in(1, 100), 10);
        assert_eq!(s.count_in(15, 16), 2);
        assert_eq!(s.count_in(20, 30), 0);
        assert_eq!(s.count_in(1, 9), 0);
        let e = Segment::empty(7, PathBuf::new());
        assert!(e.is_empty() && e.count_in(0, u64::MAX) == 0);
    }

    #[test]
    fn creates_a_header_only_file_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = segment_path(d.path(), 5);
        create_segment_file(&p, 1, 5, FsyncPolicy::EveryBatch).unwrap();
        assert_eq!(
            fs::read(&p).unwrap(),
            SegmentHeader {
                stream_id: 1,
                base_seq: 5
            }
            .encode()
        );
        let missing = d.path().join("no-such-dir").join("x.seg");
        assert!(create_segment_file(&missing, 1, 5, FsyncPolicy::Never).is_err());
        assert!(!missing.exists());
    }
}
