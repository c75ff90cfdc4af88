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
//!   the process but not a power cut within the interval. Shared between
//!   threads, a [`SharedSpool`] gives the same promise to every submitted
//!   batch while batches submitted close together share one fsync (group
//!   commit, see [`commit`]).
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

//!
//! # Parts
//!
//! * [`format`]: the byte layout of segment files (no IO).
//! * [`ranges`]: sets of sequence ranges (dropped, uncertain).
//! * `recovery`: [`Spool::open`] as named steps; `scan`: recovery's
//!   byte-level scan of a segment; `meta`: the metadata file.
//! * `segment`: segment files and their life cycle; `capacity`: the cap
//!   and the filesystem's free space; `loss`: loss accounting.
//! * `append` and `read`: writing and reading records; `sync`: fsyncs
//!   that may run outside the spool's lock, and the count of every fsync.
//! * [`commit`]: the spool shared between threads, with group commit.

pub(crate) mod commit;
pub mod format;
pub mod ranges;

mod append;
mod capacity;
mod config;
mod error;
mod loss;
mod meta;
mod read;
mod recovery;
mod scan;
mod segment;
mod sync;

use std::{
    collections::VecDeque,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

pub(crate) use crate::proto::seq::MAX_SEQ;
pub use append::Appended;
pub(crate) use commit::{SharedSpool, Submission};
pub use config::{FsyncPolicy, SpoolConfig};
pub use error::SpoolError;
pub use read::{Cursor, ReadBuf, ReadOutcome};
pub use recovery::RecoveryReport;
pub(crate) use sync::SyncTicket;

use ranges::RangeSet;
use segment::Segment;

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
    /// fsync and fdatasync calls this spool made since it was opened (its
    /// recovery's included), whatever the [`FsyncPolicy`].
    pub syncs: u64,
}

/// The spool. Not thread-safe by itself; wrap it in a mutex to share.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    segment_bytes: u64,
    stream_id: u128,
    segments: VecDeque<Segment>,
    /// The active segment's file, shared with [`SyncTicket`]s so that an
    /// fsync can run without the spool's lock.
    active: Arc<File>,
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
    /// Record bytes written since the spool was opened (never decreases):
    /// the position fsyncs are measured against.
    appended_bytes: u64,
    /// `appended_bytes` as far as an fsync has covered it.
    synced_bytes: u64,
    /// fsync and fdatasync calls so far.
    syncs: u64,
    write_buf: Vec<u8>,
    read_scratch: Vec<u8>,
    /// The cap in force: the configured one, or less when the filesystem
    /// has less room (re-read at most once a second).
    effective_cap: u64,
    cap_checked: Option<Instant>,
    _lock: File,
}

impl Spool {
    /// The spool's stream id (random, fixed for the spool's lifetime).
    pub fn stream_id(&self) -> u128 {
        self.stream_id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // read through `internals`
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
            syncs: self.syncs,
        }
    }

    fn unacked_records(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.count_in(self.acked + 1, u64::MAX))
            .sum()
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
}

#[cfg(test)]
mod tests;
