//! Appending: numbering records, checking a batch before anything is
//! written, making room under the cap, writing into the active segment
//! (rolling to new segments as they fill) and fsyncing per the policy
//! (or leaving that to the caller: [`Spool::append_unsynced`]).
//!
//! A batch is checked whole first: a record above the maximum, a batch
//! above half the cap or an exhausted sequence space writes nothing. If the
//! disk fails part-way, the records already written stay and the error says
//! how many ([`SpoolError::PartialAppend`]); the failed chunk is cut off
//! again so the segment ends on a whole record.

use std::io::Write;

use super::{
    capacity::is_no_space,
    error::io_err,
    format::{self, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN},
    FsyncPolicy, Spool, SpoolError, MAX_SEQ,
};

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

impl Spool {
    /// Appends records (their payloads); returns their sequence numbers.
    /// Under [`FsyncPolicy::EveryBatch`] the records are fsynced before it
    /// returns.
    ///
    /// The whole batch is checked before anything is written. To make room
    /// the oldest segments may be dropped (reported in [`Appended::dropped`]).
    pub fn append<B: AsRef<[u8]>>(&mut self, payloads: &[B]) -> Result<Appended, SpoolError> {
        let appended = self.append_unsynced(payloads)?;
        if self.cfg.fsync == FsyncPolicy::EveryBatch {
            self.sync()?;
        }
        Ok(appended)
    }

    /// [`Spool::append`] without the fsync, whatever the policy: the caller
    /// makes the records durable ([`Spool::sync`], or a
    /// [`SyncTicket`](super::SyncTicket) as group commit does).
    pub fn append_unsynced<B: AsRef<[u8]>>(
        &mut self,
        payloads: &[B],
    ) -> Result<Appended, SpoolError> {
        let first_seq = self.next_seq;
        if payloads.is_empty() {
            return Ok(Appended {
                first_seq,
                last_seq: first_seq - 1,
                dropped: 0,
            });
        }
        let size = self.check_batch(payloads)?;
        let mut dropped = self.make_room(size)?;
        self.write_batch(payloads, &mut dropped)?;
        Ok(Appended {
            first_seq,
            last_seq: self.next_seq - 1,
            dropped,
        })
    }

    /// Checks a batch against the sequence space, the record maximum and
    /// the cap; returns its size on disk.
    fn check_batch<B: AsRef<[u8]>>(&self, payloads: &[B]) -> Result<u64, SpoolError> {
        if self.next_seq.saturating_add(payloads.len() as u64) > MAX_SEQ {
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
        Ok(size)
    }

    /// Drops the oldest segments until `size` bytes of records fit under
    /// the cap; returns the records lost for sure.
    fn make_room(&mut self, size: u64) -> Result<u64, SpoolError> {
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
        Ok(dropped)
    }

    /// Writes the records in chunks, one per segment, rolling to a new
    /// segment when the active one is full.
    fn write_batch<B: AsRef<[u8]>>(
        &mut self,
        payloads: &[B],
        dropped: &mut u64,
    ) -> Result<(), SpoolError> {
        let first_seq = self.next_seq;
        let mut i = 0;
        while i < payloads.len() {
            let chunk_first = self.next_seq;
            let j = self.encode_chunk(&payloads[i..]) + i;
            if j == i {
                self.roll_making_room(dropped)?;
                continue;
            }
            match self.write_chunk(chunk_first + (j - i) as u64 - 1, dropped) {
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
        Ok(())
    }

    /// Encodes into `write_buf` as many of `payloads` as the active segment
    /// takes (at least one if it holds no record yet); returns how many.
    fn encode_chunk<B: AsRef<[u8]>>(&mut self, payloads: &[B]) -> usize {
        let active_has_records = !self.active_segment().is_empty();
        let mut seg_bytes = self.active_segment().bytes;
        self.write_buf.clear();
        for (i, (seq, p)) in (self.next_seq..).zip(payloads).enumerate() {
            let p = p.as_ref();
            let rec = (RECORD_HEADER_LEN + p.len()) as u64;
            if (active_has_records || i > 0) && seg_bytes + rec > self.segment_bytes {
                return i;
            }
            format::encode_record(seq, p, &mut self.write_buf);
            seg_bytes += rec;
        }
        payloads.len()
    }

    /// Writes `write_buf` (records up to `last_seq`) to the active segment,
    /// dropping old segments while the disk is full.
    fn write_chunk(&mut self, last_seq: u64, dropped: &mut u64) -> Result<(), SpoolError> {
        loop {
            let before = self.active_segment().bytes;
            match (&*self.active).write_all(&self.write_buf) {
                Ok(()) => {
                    let len = self.write_buf.len() as u64;
                    let seg = self.active_segment_mut();
                    seg.bytes += len;
                    seg.last = last_seq;
                    self.total_bytes += len;
                    self.appended_bytes += len;
                    self.next_seq = last_seq + 1;
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
}
