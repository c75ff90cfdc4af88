//! A durable FIFO queue on the spool, for embedders: entries pushed are on
//! disk when the push returns, read back in order after any crash, and
//! leave the queue only when acknowledged or when its byte cap drops them
//! (counted).
//!
//! [`DurableQueue<T>`] holds values of any `Serialize + DeserializeOwned`
//! type (postcard-encoded); [`ByteQueue`] holds byte entries, each with a
//! caller-chosen *weight* (for example the samples an entry carries) that
//! the queue sums up for what is pending and what was dropped.
//!
//! # Guarantees
//!
//! * **Durable pushes.** Under [`FsyncPolicy::EveryBatch`] (the default)
//!   a push returns only after its entries are fsynced. With
//!   [`FsyncPolicy::Interval`] the caller drives [`ByteQueue::sync`];
//!   entries then survive a crash of the process but not a power cut
//!   before the sync.
//! * **Order.** Entries are read in push order, each at a *position*
//!   (consecutive, starting at 1, never reused). Reading does not remove
//!   anything: [`ByteQueue::ack`] removes every entry up to a position, and
//!   [`ByteQueue::rewind`] reads again from the oldest unacknowledged one.
//!   An acknowledgement is durable when `ack` returns; an entry read but
//!   not acknowledged before a crash is read again after it (at least
//!   once).
//! * **Bounded disk.** The queue never holds more than
//!   [`SpoolConfig::max_bytes`] (nor more than its filesystem has room
//!   for). When a push needs room, the oldest entries are dropped; the push
//!   reports them ([`Pushed::dropped`]) and [`QueueStats::dropped`] counts
//!   them.
//! * **Bounded memory.** 16 bytes per queued entry (its position and
//!   weight), one per producer, and one read-ahead buffer of about 4 MiB
//!   (or one entry, if larger).
//! * **Crash recovery.** Underneath is the spool a [`Sender`](crate::Sender)
//!   keeps its records in: CRC-checked records, torn writes cut, corrupt
//!   regions cut out, nothing panics. What opening found is reported in a
//!   [`QueueRecovery`].
//! * **Idempotent producers.** A push tagged with a [`Producer`] — a key
//!   (such as a link sender's identity), its stream id and the last source
//!   sequence the push completes — is ignored if that producer already
//!   queued that far on that stream. So a source that may hand the same
//!   batch over twice (the link, after a receiver crash between applying a
//!   batch and persisting its position) queues it once. The marks survive
//!   crashes, acknowledgement and the cap: the last entry of a push carries
//!   its mark while queued, and a small marks file (`producers.marks`,
//!   replaced atomically) keeps the marks before entries are forgotten.
//!   A push that fails part-way raises no mark: pushed again, its first
//!   entries may be queued twice — a duplicate, never a loss.
//! * **Exclusive use.** One process at a time: the directory is locked.
//!
//! # Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use telemetry_link::{
//!     queue::{DurableQueue, Producer, Pushed},
//!     SpoolConfig,
//! };
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Job {
//!     id: u32,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (mut queue, _recovery) = DurableQueue::<Job>::open(dir.path(), SpoolConfig::default())?;
//!
//! // A delivery of source records 1..=2 from the sender "edge-1".
//! let from = |last_seq| Producer { key: "edge-1", stream_id: 7, last_seq };
//! queue.push_from(from(2), &[Job { id: 1 }, Job { id: 2 }])?;
//! // The same delivery again (say, after a crash upstream): ignored.
//! assert_eq!(queue.push_from(from(2), &[Job { id: 1 }, Job { id: 2 }])?, Pushed::AlreadyQueued);
//!
//! // Read in order without removing; acknowledge what was handled.
//! let (position, job) = queue.read_next()?.expect("queued");
//! assert_eq!(job, Job { id: 1 });
//! queue.ack(position)?;
//!
//! // After a restart the unacknowledged entry and the marks are still there.
//! drop(queue);
//! let (mut queue, recovery) = DurableQueue::<Job>::open(dir.path(), SpoolConfig::default())?;
//! assert_eq!(recovery.entries, 1);
//! assert_eq!(queue.read_next()?.map(|(_, job)| job), Some(Job { id: 2 }));
//! assert_eq!(queue.already_queued("edge-1", 7, 1), 2);
//! # Ok(()) }
//! ```

mod bytes;
mod envelope;
mod marks;
mod typed;

use std::{io, path::PathBuf};

use thiserror::Error;

pub use bytes::ByteQueue;
pub use marks::ProducerMark;
pub use typed::DurableQueue;

use crate::spool::{RecoveryReport, SpoolError};
#[cfg(doc)]
use crate::{FsyncPolicy, SpoolConfig};

/// A byte entry to push, with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<B> {
    /// The entry's bytes.
    pub bytes: B,
    /// What it counts for in [`QueueStats::weight`] and [`Dropped::weight`].
    pub weight: u64,
}

impl<B> Entry<B> {
    /// An entry of weight 1.
    pub fn new(bytes: B) -> Self {
        Self { bytes, weight: 1 }
    }

    /// An entry of the given weight.
    pub fn weighted(bytes: B, weight: u64) -> Self {
        Self { bytes, weight }
    }
}

/// Who a push comes from, for idempotent producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer<'a> {
    /// The producer (for example a link sender's identity); at most 255
    /// bytes.
    pub key: &'a str,
    /// The producer's stream: marks of another stream do not apply.
    pub stream_id: u128,
    /// The last source sequence this push completes.
    pub last_seq: u64,
}

/// Entries dropped by the cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many.
    pub entries: u64,
    /// Their total weight.
    pub weight: u64,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The entries are queued at positions `first..=last` (none when
    /// `last < first`); `dropped` were dropped to make room.
    Queued {
        /// Position of the first entry.
        first: u64,
        /// Position of the last entry.
        last: u64,
        /// Older entries dropped by the cap.
        dropped: Dropped,
    },
    /// The producer had queued its stream this far already: nothing was
    /// written.
    AlreadyQueued,
}

impl Pushed {
    /// Entries the push dropped to make room.
    pub fn dropped(&self) -> Dropped {
        match self {
            Pushed::Queued { dropped, .. } => *dropped,
            Pushed::AlreadyQueued => Dropped::default(),
        }
    }
}

/// An entry read from a [`ByteQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedEntry<'a> {
    /// Its position (acknowledge up to it once handled).
    pub position: u64,
    /// Its weight.
    pub weight: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// A snapshot of a queue's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries not yet acknowledged.
    pub entries: u64,
    /// Their total weight.
    pub weight: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The cap in force (the configured one, or less on a smaller
    /// filesystem).
    pub cap_bytes: u64,
    /// Position of the newest entry (0: none yet).
    pub last_position: u64,
    /// Highest acknowledged position.
    pub acked_position: u64,
    /// Entries dropped by the cap (or lost to disk corruption) since open.
    pub dropped: Dropped,
    /// Entries skipped since open because they were not written by a
    /// queue (no valid envelope).
    pub undecodable: u64,
}

/// What opening a queue found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRecovery {
    /// The spool's recovery.
    pub spool: RecoveryReport,
    /// The marks file was damaged; marks come from queued entries only.
    pub marks_rebuilt: bool,
    /// Unacknowledged entries found.
    pub entries: u64,
    /// Entries without a valid envelope (kept in place, skipped on read).
    pub undecodable: u64,
}

impl QueueRecovery {
    /// Whether opening found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.spool.is_clean() && !self.marks_rebuilt && self.undecodable == 0
    }
}

/// A queue failure.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The spool underneath failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Reading or replacing the marks file failed.
    #[error("queue marks file {}: {source}", path.display())]
    Marks {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A producer key above the limit.
    #[error("producer key of {len} bytes exceeds the maximum of {max} bytes")]
    ProducerKey {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An entry or the marks could not be encoded.
    #[error("encoding for the queue: {0}")]
    Encode(postcard::Error),
    /// An entry does not decode as the queue's type (the read moved past
    /// it).
    #[error("queue entry at position {position} does not decode: {source}")]
    Decode {
        /// Its position.
        position: u64,
        /// Why.
        source: postcard::Error,
    },
}

#[cfg(test)]
mod tests;
