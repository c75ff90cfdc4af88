//! The durable queue of one remote_write endpoint: a
//! [`telemetry_link::queue::ByteQueue`] whose entries are runs of up to
//! [`SAMPLES_PER_ENTRY`] samples (postcard), each weighing its sample
//! count, pushed with the delivery's sender as the producer.
//!
//! What it guarantees (the library queue does the work):
//! - [`EndpointQueue::push`] returns after the entries are fsynced: the
//!   receiver acknowledges a batch to its sender only after that, so an
//!   acked sample survives a receiver crash.
//! - A delivery whose records (by sender, stream and sequence) were already
//!   queued — the one redelivery the link allows, after a receiver crash
//!   between handling a batch and persisting its position — is not queued
//!   again: the queue keeps each sender's mark, across restarts and after
//!   the entries are sent.
//! - Memory stays bounded by the queue's entry count (16 bytes per entry),
//!   never by its samples.
//! - When the byte cap is reached the oldest entries are dropped; their
//!   samples are counted as dropped.
//!
//! On disk: `<endpoint dir>/queue/` (spool segments, its metadata, the
//! producers' marks file).

use std::path::Path;

use telemetry_link::{
    queue::{ByteQueue, Entry, Producer, QueueError as LinkQueueError},
    SpoolConfig,
};

use super::convert::RwSample;

/// Samples per queue entry (a larger delivery becomes several entries).
pub const SAMPLES_PER_ENTRY: usize = 2000;

/// A queue failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The durable queue failed.
    #[error(transparent)]
    Queue(#[from] LinkQueueError),
    /// Samples could not be encoded.
    #[error("encoding queued samples: {0}")]
    Encode(#[from] postcard::Error),
    /// The queue's directory could not be created.
    #[error("creating the queue directory {}: {source}", dir.display())]
    Create {
        /// The directory.
        dir: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The queue could not be moved from the directory earlier releases
    /// named after the whole URL (that name is not shown: it may hold a
    /// secret).
    #[error("moving the queue from its old directory to {}: {source}", to.display())]
    Move {
        /// The new directory.
        to: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Entries read for one request.
#[derive(Debug, Default)]
pub struct Batch {
    /// The samples of the entries, in queue order.
    pub samples: Vec<RwSample>,
    /// Queue position of the last entry read (acknowledge up to it once
    /// sent); 0 when nothing was read.
    pub last_entry: u64,
    /// Entries that could not be decoded (corrupt), skipped.
    pub undecodable: u64,
}

/// One endpoint's queue.
#[derive(Debug)]
pub struct EndpointQueue {
    queue: ByteQueue,
}

impl EndpointQueue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, QueueError> {
        let files = dir.join("queue");
        // Private (0700, like the state directory) before the queue's files
        // are made in it.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&files)
            .map_err(|source| QueueError::Create {
                dir: files.clone(),
                source,
            })?;
        let (queue, recovery) = ByteQueue::open(files, cfg)?;
        if !recovery.is_clean() {
            tracing::warn!(dir = %dir.display(), ?recovery, "remote_write queue recovered from a crash");
        }
        Ok(Self { queue })
    }

    /// How many of a delivery's records (`first_seq` on) are already queued.
    pub fn already_queued(&self, sender: &str, stream_id: u128, first_seq: u64) -> u64 {
        self.queue.already_queued(sender, stream_id, first_seq)
    }

    /// Queues `samples` (which complete `sender`'s records up to `last_seq`)
    /// durably. Returns the samples dropped to make room.
    pub fn push(
        &mut self,
        sender: &str,
        stream_id: u128,
        last_seq: u64,
        samples: &[RwSample],
    ) -> Result<u64, QueueError> {
        let entries = samples
            .chunks(SAMPLES_PER_ENTRY)
            .map(|chunk| {
                Ok(Entry::weighted(
                    postcard::to_stdvec(chunk)?,
                    chunk.len() as u64,
                ))
            })
            .collect::<Result<Vec<_>, QueueError>>()?;
        let producer = Producer {
            key: sender,
            stream_id,
            last_seq,
        };
        Ok(self.queue.push_from(producer, &entries)?.dropped().weight)
    }

    /// Reads whole entries, up to `max_samples` samples (a single larger
    /// entry is read alone).
    pub fn next_batch(&mut self, max_samples: usize) -> Result<Option<Batch>, QueueError> {
        let mut batch = Batch::default();
        while let Some(entry) = self.queue.peek()? {
            let position = entry.position;
            match postcard::from_bytes::<Vec<RwSample>>(entry.bytes) {
                Ok(samples) => {
                    if batch.last_entry > 0 && batch.samples.len() + samples.len() > max_samples {
                        break;
                    }
                    batch.samples.extend(samples);
                }
                Err(e) => {
                    tracing::error!(position, error = %e, "undecodable remote-write queue entry skipped");
                    batch.undecodable += 1;
                }
            }
            self.queue.advance();
            batch.last_entry = position;
            if batch.samples.len() >= max_samples {
                break;
            }
        }
        Ok((batch.last_entry > 0).then_some(batch))
    }

    /// Marks a batch as done (sent, or refused for good): its entries leave
    /// the queue, their senders' marks stay.
    pub fn done(&mut self, batch: &Batch) -> Result<(), QueueError> {
        self.queue.ack(batch.last_entry)?;
        Ok(())
    }

    /// Rewinds to the first unacknowledged entry (a batch to send again).
    pub fn rewind(&mut self) {
        self.queue.rewind();
    }

    /// Samples queued and not yet sent.
    pub fn pending_samples(&self) -> u64 {
        self.queue.stats().weight
    }

    /// Bytes the queue uses on disk.
    pub fn bytes(&self) -> u64 {
        self.queue.stats().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize, t0: i64) -> Vec<RwSample> {
        (0..n)
            .map(|i| RwSample {
                labels: vec![("__name__".into(), "m".into()), ("i".into(), i.to_string())],
                timestamp_ms: t0,
                value: i as f64,
            })
            .collect()
    }

    #[test]
    fn survives_reopen_and_refuses_a_redelivered_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(q.already_queued("a", 1, 1), 0);
        q.push("a", 1, 10, &samples(3, 0)).unwrap();
        q.push("a", 1, 20, &samples(SAMPLES_PER_ENTRY + 5, 1))
            .unwrap();
        assert_eq!(q.pending_samples(), 3 + SAMPLES_PER_ENTRY as u64 + 5);
        drop(q);

        let mut q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(q.pending_samples(), 3 + SAMPLES_PER_ENTRY as u64 + 5);
        assert_eq!(
            q.already_queued("a", 1, 11),
            10,
            "records 11..=20 are queued"
        );
        assert_eq!(q.already_queued("a", 1, 21), 0);
        assert_eq!(q.already_queued("a", 2, 1), 0, "a new stream starts over");

        let b = q.next_batch(10).unwrap().unwrap();
        assert_eq!(b.samples, samples(3, 0));
        q.done(&b).unwrap();
        let b = q.next_batch(10_000).unwrap().unwrap();
        assert_eq!(b.samples, samples(SAMPLES_PER_ENTRY + 5, 1));
        q.done(&b).unwrap();
        assert!(q.next_batch(10).unwrap().is_none());
        assert_eq!(q.pending_samples(), 0);
        drop(q);

        // Sent and forgotten by the queue: the mark outlives the entries.
        let q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(q.already_queued("a", 1, 15), 6);
    }

    #[test]
    fn a_delivery_without_samples_is_still_marked_queued() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        q.push("a", 1, 4, &[]).unwrap();
        assert!(q.next_batch(10).unwrap().is_none());
        drop(q);
        let q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(q.already_queued("a", 1, 1), 4);
    }

    #[test]
    fn rewind_sends_the_same_batch_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        q.push("a", 1, 1, &samples(4, 0)).unwrap();
        let first = q.next_batch(100).unwrap().unwrap();
        assert!(q.next_batch(100).unwrap().is_none());
        q.rewind();
        let again = q.next_batch(100).unwrap().unwrap();
        assert_eq!(first.samples, again.samples);
    }

    #[test]
    fn a_batch_takes_whole_entries_up_to_the_sample_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        for i in 0..3 {
            q.push("a", 1, i + 1, &samples(4, i as i64)).unwrap();
        }
        let b = q.next_batch(9).unwrap().unwrap();
        assert_eq!((b.samples.len(), b.last_entry), (8, 2));
        let b = q.next_batch(9).unwrap().unwrap();
        assert_eq!((b.samples.len(), b.last_entry), (4, 3));
        assert_eq!(b.samples, samples(4, 2));
    }

    #[test]
    fn the_cap_drops_the_oldest_entries_and_counts_their_samples() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            max_bytes: 64 * 1024,
            segment_bytes: Some(8 * 1024),
            ..SpoolConfig::default()
        };
        let mut q = EndpointQueue::open(dir.path(), cfg).unwrap();
        let mut dropped = 0;
        for i in 0..200 {
            dropped += q.push("a", 1, i + 1, &samples(20, i as i64)).unwrap();
        }
        assert!(dropped > 0);
        assert_eq!(dropped % 20, 0);
        assert_eq!(q.pending_samples() + dropped, 200 * 20);
        assert!(q.bytes() <= 64 * 1024);
        let b = q.next_batch(1_000_000).unwrap().unwrap();
        assert_eq!(b.samples.len() as u64, q.pending_samples());
    }
}
