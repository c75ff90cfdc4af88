//! Making appended data durable, and counting every fsync the spool makes.
//!
//! Appends advance a byte position (`appended_bytes`, since the spool was
//! opened); an fsync of the active segment covers everything appended before
//! it started and advances `synced_bytes` to that point. Older segments are
//! synced when they are closed ([`Spool::roll`]), so only the active segment
//! ever holds unsynced data.
//!
//! [`Spool::sync`] fsyncs under the caller's `&mut`. A [`SyncTicket`] lets
//! the fsync run without the spool's lock instead: take it with
//! [`Spool::sync_ticket`] (it remembers the file and the position), call
//! [`SyncTicket::sync`] with the lock released, and hand the outcome back
//! with [`Spool::finish_sync`]. Appends made meanwhile are not covered by
//! it; a segment closed meanwhile was synced by the roll.

use std::{fs::File, io, path::PathBuf, sync::Arc};

use super::{error::io_err, Spool, SpoolError};

/// fsyncs made when a segment file is created: the file, then its directory.
pub(super) const SEGMENT_CREATE_SYNCS: u64 = 2;
/// fsyncs made by an atomic file replacement (metadata): the temporary
/// file, then the directory.
pub(super) const WRITE_ATOMIC_SYNCS: u64 = 2;

/// An fsync of the active segment, to run without the spool's lock.
#[derive(Debug)]
pub(crate) struct SyncTicket {
    file: Arc<File>,
    path: PathBuf,
    upto: u64,
}

impl SyncTicket {
    /// fdatasyncs the segment. Call without holding the spool's lock; hand
    /// the outcome to [`Spool::finish_sync`].
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Spool {
    /// fsyncs appended data (what [`FsyncPolicy::Interval`](super::FsyncPolicy::Interval)
    /// callers call on their timer). Cheap when nothing is pending.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.needs_sync() {
            self.syncs += 1;
            self.active
                .sync_data()
                .map_err(io_err(&self.active_segment().path))?;
            self.synced_bytes = self.appended_bytes;
        }
        Ok(())
    }

    /// Whether appended data awaits an fsync.
    pub fn needs_sync(&self) -> bool {
        self.synced_bytes < self.appended_bytes
    }

    /// A ticket to fsync what was appended so far without the spool's
    /// lock; `None` when everything is synced already.
    pub(crate) fn sync_ticket(&self) -> Option<SyncTicket> {
        self.needs_sync().then(|| SyncTicket {
            file: self.active.clone(),
            path: self.active_segment().path.clone(),
            upto: self.appended_bytes,
        })
    }

    /// Takes the outcome of [`SyncTicket::sync`]: on success, what the
    /// ticket covered is durable.
    pub(crate) fn finish_sync(
        &mut self,
        ticket: SyncTicket,
        outcome: io::Result<()>,
    ) -> Result<(), SpoolError> {
        self.syncs += 1;
        outcome.map_err(io_err(&ticket.path))?;
        self.synced_bytes = self.synced_bytes.max(ticket.upto);
        Ok(())
    }

    /// Counts fsyncs made by file operations outside this module.
    pub(super) fn count_syncs(&mut self, n: u64) {
        self.syncs += n;
    }

    /// Record bytes appended since the spool was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Notes that everything appended so far is covered: the active
    /// segment is new (the old one was synced when it was closed, unless
    /// fsync is off).
    pub(super) fn mark_synced(&mut self) {
        self.synced_bytes = self.appended_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::test_cfg, FsyncPolicy};
    use super::*;

    #[test]
    fn a_ticket_covers_what_was_appended_before_it_and_counts_its_sync() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), test_cfg(FsyncPolicy::Never)).unwrap();
        let opened = s.stats().syncs;
        assert!(s.sync_ticket().is_none(), "nothing to sync");
        s.append(&[b"one"]).unwrap();
        let ticket = s.sync_ticket().unwrap();
        s.append(&[b"two"]).unwrap();
        let outcome = ticket.sync();
        s.finish_sync(ticket, outcome).unwrap();
        assert_eq!(s.stats().syncs, opened + 1);
        assert!(s.needs_sync(), "the second append came after the ticket");
        s.sync().unwrap();
        assert!(!s.needs_sync());
        assert_eq!(s.stats().syncs, opened + 2);
        s.sync().unwrap();
        assert_eq!(s.stats().syncs, opened + 2, "nothing pending: no fsync");
    }

    #[test]
    fn a_failed_sync_covers_nothing_and_says_where() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), test_cfg(FsyncPolicy::Never)).unwrap();
        s.append(&[b"one"]).unwrap();
        let ticket = s.sync_ticket().unwrap();
        let err = s
            .finish_sync(ticket, Err(io::Error::from_raw_os_error(5)))
            .unwrap_err();
        assert!(
            matches!(err, SpoolError::Io { ref path, .. } if path.extension().is_some_and(|e| e == "seg"))
        );
        assert!(s.needs_sync());
    }

    #[test]
    fn every_policy_counts_its_syncs() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), test_cfg(FsyncPolicy::EveryBatch)).unwrap();
        // Opening a new spool: the directory, the first segment (file and
        // directory) and the metadata (file and directory).
        assert_eq!(
            s.stats().syncs,
            1 + SEGMENT_CREATE_SYNCS + WRITE_ATOMIC_SYNCS
        );
        let opened = s.stats().syncs;
        s.append(&[b"a"]).unwrap();
        s.append(&[b"b"]).unwrap();
        assert_eq!(s.stats().syncs, opened + 2, "one fdatasync per append");
        drop(s);
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), test_cfg(FsyncPolicy::Never)).unwrap();
        let opened = s.stats().syncs;
        s.append(&[b"a"]).unwrap();
        assert_eq!(s.stats().syncs, opened, "never: no fsync on append");
        s.checkpoint().unwrap();
        assert_eq!(
            s.stats().syncs,
            opened + 1 + WRITE_ATOMIC_SYNCS,
            "a checkpoint syncs the data and writes the metadata"
        );
    }
}
