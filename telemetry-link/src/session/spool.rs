//! The part of the spool a sender session uses, as a trait: the session
//! machine reads, acknowledges and settles records only through it, so it
//! never touches files itself and its tests run on an in-memory spool.
//!
//! [`Spool`] implements it by delegation; the methods mean exactly what the
//! spool's methods of the same names mean.

use crate::spool::{Cursor, ReadBuf, ReadOutcome, Spool, SpoolError};

/// What a sender session needs from its spool.
pub(crate) trait SessionSpool {
    /// A read position.
    type Cursor: std::fmt::Debug;
    /// Records read back, held between a read and their encoding.
    type Records: Default + std::fmt::Debug;

    /// Highest sequence assigned (0: none yet).
    fn last_seq(&self) -> u64;
    /// Highest acknowledged sequence.
    fn acked_seq(&self) -> u64;
    /// Records not yet acknowledged.
    fn unacked(&self) -> u64;
    /// How many sequences in `from..=to` were dropped unacknowledged.
    fn lost_in(&self, from: u64, to: u64) -> u64;
    /// Makes sure the next assigned sequence is at least `seq`.
    fn advance_next_seq(&mut self, seq: u64) -> Result<(), SpoolError>;
    /// Marks everything up to `seq` acknowledged; returns how many records
    /// that newly covers.
    fn ack(&mut self, seq: u64) -> Result<u64, SpoolError>;
    /// At a session's start: settles records dropped after they were sent
    /// by the receiver's applied position; returns how many were lost.
    fn settle_uncertain(&mut self, applied: u64) -> Result<u64, SpoolError>;
    /// During a session: dropped records at or below `acked` were delivered.
    fn settle_delivered(&mut self, acked: u64) -> Result<(), SpoolError>;
    /// A cursor that reads from `seq` on.
    fn cursor(&self, seq: u64) -> Self::Cursor;
    /// Reads up to `max_records` consecutive records (about `max_bytes` of
    /// payload) at the cursor into `out`, or reports the gap in front of it.
    fn read(
        &mut self,
        cursor: &mut Self::Cursor,
        max_records: usize,
        max_bytes: usize,
        out: &mut Self::Records,
    ) -> Result<ReadOutcome, SpoolError>;
    /// The record envelopes of the last read, in order.
    fn records(out: &Self::Records) -> impl Iterator<Item = &[u8]>;
    /// Notes that sequences up to `seq` were handed to a connection.
    fn mark_sent(&mut self, seq: u64);
    /// Payload bytes of the records from `cursor` on (an overestimate is
    /// allowed: it only makes a batch leave sooner).
    fn unsent_bytes(&self, cursor: &Self::Cursor) -> u64;
    /// Bytes appended so far (never decreases); a measure for waking on
    /// appends.
    fn appended_bytes(&self) -> u64;
}

impl SessionSpool for Spool {
    type Cursor = Cursor;
    type Records = ReadBuf;

    fn last_seq(&self) -> u64 {
        Spool::last_seq(self)
    }

    fn acked_seq(&self) -> u64 {
        Spool::acked_seq(self)
    }

    fn unacked(&self) -> u64 {
        self.stats().records
    }

    fn lost_in(&self, from: u64, to: u64) -> u64 {
        Spool::lost_in(self, from, to)
    }

    fn advance_next_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        Spool::advance_next_seq(self, seq)
    }

    fn ack(&mut self, seq: u64) -> Result<u64, SpoolError> {
        Spool::ack(self, seq)
    }

    fn settle_uncertain(&mut self, applied: u64) -> Result<u64, SpoolError> {
        Spool::settle_uncertain(self, applied)
    }

    fn settle_delivered(&mut self, acked: u64) -> Result<(), SpoolError> {
        Spool::settle_delivered(self, acked)
    }

    fn cursor(&self, seq: u64) -> Cursor {
        Spool::cursor(self, seq)
    }

    fn read(
        &mut self,
        cursor: &mut Cursor,
        max_records: usize,
        max_bytes: usize,
        out: &mut ReadBuf,
    ) -> Result<ReadOutcome, SpoolError> {
        Spool::read(self, cursor, max_records, max_bytes, out)
    }

    fn records(out: &ReadBuf) -> impl Iterator<Item = &[u8]> {
        out.iter()
    }

    fn mark_sent(&mut self, seq: u64) {
        Spool::mark_sent(self, seq);
    }

    fn unsent_bytes(&self, cursor: &Cursor) -> u64 {
        Spool::unsent_bytes(self, cursor)
    }

    fn appended_bytes(&self) -> u64 {
        Spool::appended_bytes(self)
    }
}
