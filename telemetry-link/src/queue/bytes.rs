//! [`ByteQueue`]: the durable FIFO of byte entries on a spool, with
//! weights, a read position, acknowledgement and producer marks.

use std::{collections::VecDeque, path::Path};

use super::{
    envelope::{self, Header, MarkRef, MAX_ENVELOPE_BYTES, MAX_KEY_BYTES},
    marks::{read_marks, write_marks, Marks, ProducerMark},
    Dropped, Entry, Producer, Pushed, QueueError, QueueRecovery, QueueStats, QueuedEntry,
};
use crate::spool::{Cursor, ReadBuf, ReadOutcome, Spool, SpoolConfig, SpoolError};

/// Entries read from the spool at a time.
const READ_ENTRIES: usize = 256;
/// Payload bytes read from the spool at a time (a larger entry is read
/// alone).
const READ_BYTES: usize = 4 << 20;

/// A durable FIFO of byte entries; see the [module documentation](super).
#[derive(Debug)]
pub struct ByteQueue {
    spool: Spool,
    /// Largest entry accepted (the spool's records are larger by the
    /// envelope).
    max_entry_bytes: usize,
    marks: Marks,
    /// Marks changed since the marks file was written.
    marks_dirty: bool,
    /// (position, weight) of every unacknowledged entry, oldest first.
    index: VecDeque<(u64, u64)>,
    weight: u64,
    dropped: Dropped,
    undecodable: u64,
    /// Where the spool reads next: always `buf_first + buf.len()`.
    cursor: Cursor,
    /// Entries read ahead: `buf[next..]` are not yet handed out; entry `i`
    /// is at position `buf_first + i`.
    buf: ReadBuf,
    buf_first: u64,
    next: usize,
    /// The header of `buf[next]` once [`ByteQueue::peek`] checked it:
    /// (weight, offset of the payload).
    peeked: Option<(u64, usize)>,
}

impl ByteQueue {
    /// Opens (or creates) the queue in `dir`, recovering the spool, the
    /// entries' index and the producers' marks.
    ///
    /// `cfg.max_record_bytes` bounds an entry's bytes (the queue adds room
    /// for its envelope); `cfg.max_bytes` is the queue's cap on disk.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: SpoolConfig,
    ) -> Result<(Self, QueueRecovery), QueueError> {
        let dir = dir.as_ref();
        let spool_cfg = SpoolConfig {
            max_record_bytes: cfg.max_record_bytes.saturating_add(MAX_ENVELOPE_BYTES),
            ..cfg
        };
        let (spool, spool_report) = Spool::open(dir, spool_cfg)?;
        let (marks, marks_rebuilt) = read_marks(dir)?;
        let cursor = spool.cursor(spool.acked_seq() + 1);
        let mut queue = Self {
            spool,
            max_entry_bytes: cfg.max_record_bytes,
            marks,
            marks_dirty: false,
            index: VecDeque::new(),
            weight: 0,
            dropped: Dropped::default(),
            undecodable: 0,
            cursor,
            buf: ReadBuf::new(),
            buf_first: cursor.next_seq(),
            next: 0,
            peeked: None,
        };
        queue.scan()?;
        let recovery = QueueRecovery {
            spool: spool_report,
            marks_rebuilt,
            entries: queue.index.len() as u64,
            undecodable: queue.undecodable,
        };
        Ok((queue, recovery))
    }

    /// Reads every queued entry's envelope: the index and the marks.
    fn scan(&mut self) -> Result<(), QueueError> {
        let mut cursor = self.cursor;
        loop {
            match self
                .spool
                .read(&mut cursor, READ_ENTRIES, READ_BYTES, &mut self.buf)?
            {
                ReadOutcome::Empty => break,
                ReadOutcome::Gap { .. } => continue,
                ReadOutcome::Records { first_seq, .. } => {
                    for (i, record) in self.buf.iter().enumerate() {
                        let position = first_seq + i as u64;
                        let Some((header, _)) = envelope::decode(record) else {
                            self.undecodable += 1;
                            self.index.push_back((position, 0));
                            continue;
                        };
                        if let Some(m) = header.mark {
                            // A mark the file lacks must reach it before
                            // this entry is forgotten.
                            self.marks_dirty |= self.marks.raise(m.key, m.stream_id, m.seq);
                        }
                        self.index.push_back((position, header.weight));
                        self.weight = self.weight.saturating_add(header.weight);
                    }
                }
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Queues `entries` in order. Durable on return under
    /// [`FsyncPolicy::EveryBatch`](crate::FsyncPolicy::EveryBatch); to make
    /// room the oldest entries may be dropped (reported in the result).
    pub fn push<B: AsRef<[u8]>>(&mut self, entries: &[Entry<B>]) -> Result<Pushed, QueueError> {
        self.append(entries, None)
    }

    /// Queues `entries` for `producer`: ignored
    /// ([`Pushed::AlreadyQueued`]) if the producer has queued its stream up
    /// to `producer.last_seq` already; otherwise as [`ByteQueue::push`],
    /// and the producer's mark rises to `last_seq`. A push with no entries
    /// only records the mark (durably).
    pub fn push_from<B: AsRef<[u8]>>(
        &mut self,
        producer: Producer<'_>,
        entries: &[Entry<B>],
    ) -> Result<Pushed, QueueError> {
        if producer.key.len() > MAX_KEY_BYTES {
            return Err(QueueError::ProducerKey {
                len: producer.key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        if self.already_queued(producer.key, producer.stream_id, producer.last_seq) > 0 {
            return Ok(Pushed::AlreadyQueued);
        }
        if entries.is_empty() {
            self.spool.sync()?;
            let mut marks = self.marks.clone();
            marks.raise(producer.key, producer.stream_id, producer.last_seq);
            write_marks(self.spool.dir(), &marks)?;
            self.marks = marks;
            self.marks_dirty = false;
            let next = self.spool.last_seq() + 1;
            return Ok(Pushed::Queued {
                first: next,
                last: next - 1,
                dropped: Dropped::default(),
            });
        }
        self.append(entries, Some(producer))
    }

    /// Envelopes and appends entries; the last one carries `producer`'s
    /// mark.
    fn append<B: AsRef<[u8]>>(
        &mut self,
        entries: &[Entry<B>],
        producer: Option<Producer<'_>>,
    ) -> Result<Pushed, QueueError> {
        if let Some(e) = entries
            .iter()
            .find(|e| e.bytes.as_ref().len() > self.max_entry_bytes)
        {
            return Err(QueueError::Spool(SpoolError::RecordTooLarge {
                size: e.bytes.as_ref().len(),
                max: self.max_entry_bytes,
            }));
        }
        let mut encoded = vec![Vec::new(); entries.len()];
        for (i, (entry, out)) in entries.iter().zip(encoded.iter_mut()).enumerate() {
            let header = Header {
                weight: entry.weight,
                mark: producer
                    .filter(|_| i + 1 == entries.len())
                    .map(|p| MarkRef {
                        key: p.key,
                        stream_id: p.stream_id,
                        seq: p.last_seq,
                    }),
            };
            envelope::encode(&header, entry.bytes.as_ref(), out).map_err(QueueError::Encode)?;
        }
        let appended = self.spool.append(&encoded);
        let (first, written) = match &appended {
            Ok(a) => (a.first_seq, entries.len()),
            Err(SpoolError::PartialAppend {
                first_seq,
                accepted,
                ..
            }) => (*first_seq, usize::try_from(*accepted).unwrap_or(0)),
            Err(_) => (0, 0),
        };
        for (i, entry) in entries.iter().take(written).enumerate() {
            self.index.push_back((first + i as u64, entry.weight));
            self.weight = self.weight.saturating_add(entry.weight);
        }
        let dropped = self.forget_dropped();
        let appended = appended?;
        if let Some(p) = producer {
            self.marks_dirty |= self.marks.raise(p.key, p.stream_id, p.last_seq);
        }
        if dropped.entries > 0 && self.marks_dirty {
            // The dropped entries' marks live on in the file.
            self.save_marks()?;
        }
        Ok(Pushed::Queued {
            first: appended.first_seq,
            last: appended.last_seq,
            dropped,
        })
    }

    /// Removes the entries the spool dropped (its cap) from the index and
    /// the read-ahead; returns them.
    fn forget_dropped(&mut self) -> Dropped {
        let oldest = self.spool.oldest_unacked_seq();
        let mut dropped = Dropped::default();
        while self.index.front().is_some_and(|&(pos, _)| pos < oldest) {
            if let Some((_, w)) = self.index.pop_front() {
                dropped.entries += 1;
                dropped.weight = dropped.weight.saturating_add(w);
                self.weight = self.weight.saturating_sub(w);
            }
        }
        if dropped.entries > 0 {
            tracing::warn!(
                entries = dropped.entries,
                weight = dropped.weight,
                "queue full: dropped its oldest entries"
            );
        }
        self.dropped.entries += dropped.entries;
        self.dropped.weight = self.dropped.weight.saturating_add(dropped.weight);
        self.skip_to(oldest);
        dropped
    }

    /// Writes the marks file (after syncing the spool, so that it never
    /// claims entries a power cut could take back).
    fn save_marks(&mut self) -> Result<(), QueueError> {
        self.spool.sync()?;
        write_marks(self.spool.dir(), &self.marks)?;
        self.marks_dirty = false;
        Ok(())
    }

    /// The next unread entry, without moving past it. Entries whose
    /// envelope does not decode are skipped (and counted in
    /// [`QueueStats::undecodable`]).
    pub fn peek(&mut self) -> Result<Option<QueuedEntry<'_>>, QueueError> {
        if !self.fill()? {
            return Ok(None);
        }
        let (Some((weight, offset)), Some(record)) = (self.peeked, self.buf.get(self.next)) else {
            return Ok(None);
        };
        Ok(record.get(offset..).map(|bytes| QueuedEntry {
            position: self.buf_first + self.next as u64,
            weight,
            bytes,
        }))
    }

    /// Makes `buf[next]` a decodable entry, reading ahead as needed;
    /// `false` when there is none.
    fn fill(&mut self) -> Result<bool, QueueError> {
        loop {
            if let Some(record) = self.buf.get(self.next) {
                if self.peeked.is_some() {
                    return Ok(true);
                }
                match envelope::decode(record) {
                    Some((header, payload)) => {
                        self.peeked = Some((header.weight, record.len() - payload.len()));
                        return Ok(true);
                    }
                    None => {
                        let position = self.buf_first + self.next as u64;
                        tracing::warn!(position, "queue entry without a valid envelope skipped");
                        self.undecodable += 1;
                        self.next += 1;
                        continue;
                    }
                }
            }
            match self
                .spool
                .read(&mut self.cursor, READ_ENTRIES, READ_BYTES, &mut self.buf)?
            {
                ReadOutcome::Records { first_seq, .. } => {
                    self.buf_first = first_seq;
                    self.next = 0;
                }
                ReadOutcome::Gap { from, to, .. } => {
                    self.restart_buf();
                    self.forget_lost(from, to);
                }
                ReadOutcome::Empty => {
                    self.restart_buf();
                    return Ok(false);
                }
            }
        }
    }

    /// Entries `from..=to` are gone from the spool (cut as corrupt after
    /// they were written): they leave the index, counted as dropped.
    fn forget_lost(&mut self, from: u64, to: u64) {
        let start = self.index.partition_point(|&(pos, _)| pos < from);
        let end = self.index.partition_point(|&(pos, _)| pos <= to);
        for (_, w) in self.index.drain(start..end) {
            self.dropped.entries += 1;
            self.dropped.weight = self.dropped.weight.saturating_add(w);
            self.weight = self.weight.saturating_sub(w);
        }
    }

    /// Moves the read position past the entry [`ByteQueue::peek`] returned
    /// (nothing if it returned none).
    pub fn advance(&mut self) {
        if self.peeked.take().is_some() {
            self.next += 1;
        }
    }

    /// The position of the next entry [`ByteQueue::peek`] looks at.
    pub fn read_position(&self) -> u64 {
        if self.next < self.buf.len() {
            self.buf_first + self.next as u64
        } else {
            self.cursor.next_seq()
        }
    }

    /// Moves the read position back to the oldest unacknowledged entry.
    pub fn rewind(&mut self) {
        self.seek(self.spool.acked_seq() + 1);
    }

    /// Moves the read position forward to `position` if it is behind it.
    fn skip_to(&mut self, position: u64) {
        let at = self.read_position();
        if position <= at {
            return;
        }
        // Where the cursor reads next: the read-ahead ends there.
        let ahead = self.buf_first + self.buf.len() as u64;
        if position < ahead {
            self.next = (position - self.buf_first) as usize;
            self.peeked = None;
        } else {
            self.seek(position);
        }
    }

    /// Moves the read position to `position`, dropping the read-ahead.
    fn seek(&mut self, position: u64) {
        self.cursor = self.spool.cursor(position);
        self.buf.clear();
        self.restart_buf();
    }

    /// After a read that left the buffer empty: it starts at the cursor
    /// (so `buf_first + buf.len()` is always where the cursor reads next).
    fn restart_buf(&mut self) {
        self.buf_first = self.cursor.next_seq();
        self.next = 0;
        self.peeked = None;
    }

    /// Acknowledges every entry up to `position`: they leave the queue,
    /// durably when this returns. Returns how many entries that newly
    /// covers. Each call writes the queue's metadata (an fsync and an
    /// atomic rename): acknowledge batches, not single entries, when
    /// entries are small.
    ///
    /// The marks file is written first, so producers' marks outlive their
    /// entries.
    pub fn ack(&mut self, position: u64) -> Result<u64, QueueError> {
        let position = position.min(self.spool.last_seq());
        if position <= self.spool.acked_seq() {
            return Ok(0);
        }
        if self.marks_dirty {
            self.save_marks()?;
        }
        self.spool.ack(position)?;
        self.spool.checkpoint()?;
        let mut newly = 0;
        while self.index.front().is_some_and(|&(pos, _)| pos <= position) {
            if let Some((_, w)) = self.index.pop_front() {
                newly += 1;
                self.weight = self.weight.saturating_sub(w);
            }
        }
        self.skip_to(position + 1);
        Ok(newly)
    }

    /// Fsyncs pushed entries (for [`FsyncPolicy::Interval`](crate::FsyncPolicy::Interval)
    /// callers, on their timer). Cheap when nothing is pending.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        Ok(self.spool.sync()?)
    }

    /// Whether pushed entries await an fsync.
    pub fn needs_sync(&self) -> bool {
        self.spool.needs_sync()
    }

    /// Syncs pushed entries and writes the marks if they changed. Call on
    /// shutdown.
    pub fn checkpoint(&mut self) -> Result<(), QueueError> {
        if self.marks_dirty {
            self.save_marks()?;
        }
        Ok(self.spool.checkpoint()?)
    }

    /// The mark of producer `key`.
    pub fn mark(&self, key: &str) -> Option<ProducerMark> {
        self.marks.get(key)
    }

    /// How many source sequences from `first_seq` on producer `key` has
    /// queued on `stream_id` (a redelivery may skip that many).
    pub fn already_queued(&self, key: &str, stream_id: u128, first_seq: u64) -> u64 {
        self.marks.already_queued(key, stream_id, first_seq)
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        let spool = self.spool.stats();
        QueueStats {
            entries: self.index.len() as u64,
            weight: self.weight,
            bytes: spool.bytes,
            cap_bytes: spool.cap_bytes,
            last_position: spool.last_seq,
            acked_position: spool.acked_seq,
            dropped: self.dropped,
            undecodable: self.undecodable,
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        self.spool.dir()
    }
}
