//! The durable queue of one remote_write endpoint: a link spool (append-only
//! CRC-checked segments, byte cap, torn-tail recovery) whose records are
//! postcard-encoded [`QueueEntry`]s, plus the per-sender high-water mark
//! that keeps a batch the link hands over twice from being queued twice.
//!
//! What it guarantees:
//! - [`EndpointQueue::push`] returns after the entries are fsynced: the
//!   receiver acknowledges a batch to its sender only after that, so an
//!   acked sample survives a receiver crash.
//! - A delivery whose records (by sender, stream and sequence) were already
//!   queued — the one redelivery the link allows, after a receiver crash
//!   between handling a batch and persisting its position — is not queued
//!   again. The mark is the larger of what the queue still holds (scanned at
//!   open) and what was sent (a state file per sender, saved before the
//!   queue forgets sent entries).
//! - Memory stays bounded by the queue's entry count (16 bytes per entry),
//!   never by its samples.
//! - When the byte cap is reached the oldest entries are dropped; their
//!   samples are counted as dropped.

use std::{collections::HashMap, collections::VecDeque, path::Path};

use telemetry_link::{
    receiver_state::{StateError, StateStore},
    session::dedup::StreamCursor,
    spool::{Cursor, ReadBuf, ReadOutcome, Spool, SpoolConfig, SpoolError},
};

use super::convert::RwSample;

/// Samples per queue entry (a larger delivery becomes several entries).
pub const SAMPLES_PER_ENTRY: usize = 2000;

/// One queued run of samples, from one delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueEntry {
    /// Sender identity.
    pub sender: String,
    /// The sender's stream.
    pub stream_id: u128,
    /// Highest link sequence whose samples this entry completes.
    pub last_seq: u64,
    /// The samples.
    pub samples: Vec<RwSample>,
}

/// [`QueueEntry`] borrowing its samples, for encoding without a copy (the
/// same postcard layout).
#[derive(serde::Serialize)]
struct QueueEntryRef<'a> {
    sender: &'a str,
    stream_id: u128,
    last_seq: u64,
    samples: &'a [RwSample],
}

/// A queue failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The sent-position state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// An entry could not be encoded.
    #[error("encoding a queue entry: {0}")]
    Encode(#[from] postcard::Error),
}

/// Entries read for one request.
#[derive(Debug, Default)]
pub struct Batch {
    /// The samples of the entries, in queue order.
    pub samples: Vec<RwSample>,
    /// Queue sequence of the last entry read (ack up to it once sent).
    pub last_entry: u64,
    /// Per sender: the stream and highest link sequence it completes.
    pub marks: HashMap<String, (u128, u64)>,
    /// Entries that could not be decoded (corrupt), skipped.
    pub undecodable: u64,
}

/// One endpoint's queue.
#[derive(Debug)]
pub struct EndpointQueue {
    spool: Spool,
    sent: StateStore,
    cursor: Cursor,
    buf: ReadBuf,
    /// Highest queued (stream, seq) per sender.
    marks: HashMap<String, (u128, u64)>,
    /// (queue seq, samples) of every unacknowledged entry.
    entries: VecDeque<(u64, u64)>,
    pending_samples: u64,
}

impl EndpointQueue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, QueueError> {
        let (spool, report) = Spool::open(dir.join("spool"), cfg)?;
        if !report.is_clean() {
            tracing::warn!(dir = %dir.display(), ?report, "remote_write queue recovered from a crash");
        }
        let sent = StateStore::open(dir.join("sent"))?;
        let mut marks: HashMap<String, (u128, u64)> = sent
            .list()
            .into_iter()
            .map(|(sender, cur)| (sender, (cur.stream_id(), cur.applied())))
            .collect();
        let mut queue = Self {
            cursor: spool.cursor(spool.acked_seq() + 1),
            spool,
            sent,
            buf: ReadBuf::new(),
            marks: HashMap::new(),
            entries: VecDeque::new(),
            pending_samples: 0,
        };
        // Scan what is still queued: its marks and sample counts.
        let mut scan = queue.cursor;
        loop {
            match queue.spool.read(&mut scan, 256, 4 << 20, &mut queue.buf)? {
                ReadOutcome::Empty => break,
                ReadOutcome::Gap { .. } => continue,
                ReadOutcome::Records { first_seq, .. } => {
                    for (i, payload) in queue.buf.iter().enumerate() {
                        let Ok(entry) = postcard::from_bytes::<QueueEntry>(payload) else {
                            queue.entries.push_back((first_seq + i as u64, 0));
                            continue;
                        };
                        raise(&mut marks, &entry.sender, entry.stream_id, entry.last_seq);
                        let n = entry.samples.len() as u64;
                        queue.entries.push_back((first_seq + i as u64, n));
                        queue.pending_samples += n;
                    }
                }
            }
        }
        queue.marks = marks;
        Ok(queue)
    }

    /// How many of a delivery's records (`first_seq` on) are already queued.
    pub fn already_queued(&self, sender: &str, stream_id: u128, first_seq: u64) -> u64 {
        match self.marks.get(sender) {
            Some(&(stream, seq)) if stream == stream_id && seq >= first_seq => seq - first_seq + 1,
            _ => 0,
        }
    }

    /// Queues `samples` (which complete `sender`'s records up to `last_seq`)
    /// and fsyncs. Returns the samples dropped to make room.
    pub fn push(
        &mut self,
        sender: &str,
        stream_id: u128,
        last_seq: u64,
        samples: &[RwSample],
    ) -> Result<u64, QueueError> {
        let chunks: Vec<&[RwSample]> = if samples.is_empty() {
            vec![&[]]
        } else {
            samples.chunks(SAMPLES_PER_ENTRY).collect()
        };
        let mut payloads = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            payloads.push(postcard::to_stdvec(&QueueEntryRef {
                sender,
                stream_id,
                last_seq,
                samples: chunk,
            })?);
        }
        let appended = self.spool.append(&payloads)?;
        self.spool.sync()?;
        let first = appended.first_seq;
        for (i, chunk) in chunks.iter().enumerate() {
            self.entries
                .push_back((first + i as u64, chunk.len() as u64));
            self.pending_samples += chunk.len() as u64;
        }
        raise(&mut self.marks, sender, stream_id, last_seq);
        Ok(self.forget_dropped())
    }

    /// Reads whole entries, up to `max_samples` samples (a single larger
    /// entry is read alone).
    pub fn next_batch(&mut self, max_samples: usize) -> Result<Option<Batch>, QueueError> {
        let mut batch = Batch::default();
        loop {
            let want = if batch.samples.is_empty() { 64 } else { 16 };
            match self
                .spool
                .read(&mut self.cursor, want, 4 << 20, &mut self.buf)?
            {
                ReadOutcome::Empty => break,
                ReadOutcome::Gap { .. } => continue,
                ReadOutcome::Records { first_seq, count } => {
                    let mut taken = 0;
                    let mut full = false;
                    for payload in self.buf.iter() {
                        match postcard::from_bytes::<QueueEntry>(payload) {
                            Ok(entry) => {
                                let n = batch.samples.len() + entry.samples.len();
                                if batch.last_entry > 0 && n > max_samples {
                                    full = true;
                                    break;
                                }
                                raise(
                                    &mut batch.marks,
                                    &entry.sender,
                                    entry.stream_id,
                                    entry.last_seq,
                                );
                                batch.samples.extend(entry.samples);
                            }
                            Err(_) => batch.undecodable += 1,
                        }
                        taken += 1;
                        batch.last_entry = first_seq + taken as u64 - 1;
                    }
                    if taken < count {
                        // Re-read the rest next time.
                        self.cursor = self.spool.cursor(first_seq + taken as u64);
                    }
                    if full || batch.samples.len() >= max_samples {
                        break;
                    }
                }
            }
        }
        Ok((batch.last_entry > 0).then_some(batch))
    }

    /// Marks a batch as done (sent, or refused for good): saves the senders'
    /// sent positions, then lets the queue forget its entries. Returns the
    /// samples dropped by the cap meanwhile.
    pub fn done(&mut self, batch: &Batch) -> Result<u64, QueueError> {
        for (sender, &(stream, seq)) in &batch.marks {
            self.sent.save(sender, &StreamCursor::new(stream, seq))?;
        }
        self.spool.ack(batch.last_entry)?;
        while self
            .entries
            .front()
            .is_some_and(|(seq, _)| *seq <= batch.last_entry)
        {
            if let Some((_, n)) = self.entries.pop_front() {
                self.pending_samples -= n;
            }
        }
        Ok(self.forget_dropped())
    }

    /// Rewinds to the first unacknowledged entry (a batch to send again).
    pub fn rewind(&mut self) {
        self.cursor = self.spool.cursor(self.spool.acked_seq() + 1);
    }

    /// Samples queued and not yet sent.
    pub fn pending_samples(&self) -> u64 {
        self.pending_samples
    }

    /// Bytes the queue uses on disk.
    pub fn bytes(&self) -> u64 {
        self.spool.stats().bytes
    }

    /// Entries the spool dropped (its cap) leave the front of `entries`.
    fn forget_dropped(&mut self) -> u64 {
        let oldest_kept = self.spool.oldest_unacked_seq();
        let mut dropped = 0;
        while self
            .entries
            .front()
            .is_some_and(|(seq, _)| *seq < oldest_kept)
        {
            if let Some((_, n)) = self.entries.pop_front() {
                dropped += n;
                self.pending_samples -= n;
            }
        }
        if self.cursor.next_seq() < oldest_kept {
            self.cursor = self.spool.cursor(oldest_kept);
        }
        dropped
    }
}

fn raise(marks: &mut HashMap<String, (u128, u64)>, sender: &str, stream: u128, seq: u64) {
    match marks.get_mut(sender) {
        Some(mark) if mark.0 == stream => mark.1 = mark.1.max(seq),
        Some(mark) => *mark = (stream, seq),
        None => {
            marks.insert(sender.to_owned(), (stream, seq));
        }
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
        assert_eq!(b.samples.len(), 3);
        q.done(&b).unwrap();
        let b = q.next_batch(10_000).unwrap().unwrap();
        assert_eq!(b.samples.len(), SAMPLES_PER_ENTRY + 5);
        assert_eq!(b.marks["a"], (1, 20));
        q.done(&b).unwrap();
        assert!(q.next_batch(10).unwrap().is_none());
        assert_eq!(q.pending_samples(), 0);
        drop(q);

        // Sent and forgotten by the queue: the mark comes from the state file.
        let q = EndpointQueue::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(q.already_queued("a", 1, 15), 6);
    }

    #[test]
    fn the_borrowed_encoding_decodes_as_an_entry() {
        let samples = samples(3, 7);
        let bytes = postcard::to_stdvec(&QueueEntryRef {
            sender: "a",
            stream_id: 9,
            last_seq: 4,
            samples: &samples,
        })
        .unwrap();
        let entry: QueueEntry = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            entry,
            QueueEntry {
                sender: "a".into(),
                stream_id: 9,
                last_seq: 4,
                samples,
            }
        );
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
