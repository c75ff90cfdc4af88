//! Loss accounting: which sequences the spool dropped without a receiver
//! acknowledging them, and which of those count as lost.
//!
//! A dropped record that was never handed to a connection is lost for sure
//! and counted at once ([`SpoolStats::dropped_total`](super::SpoolStats)).
//! One that had been sent may have been applied by a receiver whose
//! acknowledgement did not arrive: it stays *uncertain* until the next
//! session's applied position settles it ([`Spool::settle_uncertain`]), or
//! an acknowledgement during a session shows it delivered
//! ([`Spool::settle_delivered`]). So the sender's count of dropped records
//! equals what receivers are told they lost.

use super::{ranges::RangeSet, Spool, SpoolError};

impl Spool {
    /// Records `from..=to` as dropped. Those never handed to a connection are
    /// lost for sure and counted now (returned); those that were sent may
    /// have been applied, and wait for [`Spool::settle_uncertain`].
    pub(super) fn mark_dropped(&mut self, from: u64, to: u64) -> u64 {
        if to < from {
            return 0;
        }
        self.dropped.insert(from, to);
        let sent_to = to.min(self.sent_hwm);
        if from <= sent_to {
            self.uncertain.insert(from, sent_to);
        }
        let certain_from = from.max(self.sent_hwm.saturating_add(1));
        let certain = if certain_from <= to {
            to - certain_from + 1
        } else {
            0
        };
        self.dropped_total += certain;
        certain
    }

    /// Notes that sequences up to `seq` were handed to a connection.
    pub fn mark_sent(&mut self, seq: u64) {
        self.sent_hwm = self.sent_hwm.max(seq);
    }

    /// A receiver acknowledged up to `acked` during a session: dropped
    /// records at or below it were delivered after all.
    pub fn settle_delivered(&mut self, acked: u64) -> Result<(), SpoolError> {
        if self.uncertain.is_empty() {
            return Ok(());
        }
        let delivered = self.uncertain.intersect(0, acked);
        if delivered.is_empty() {
            return Ok(());
        }
        for (a, b) in delivered {
            self.dropped.remove(a, b);
            self.uncertain.remove(a, b);
        }
        self.write_meta()
    }

    /// A session starts and the receiver has applied up to `applied`: every
    /// uncertain dropped record is settled — delivered if at or below it,
    /// lost (and counted) otherwise. Returns how many were lost.
    pub fn settle_uncertain(&mut self, applied: u64) -> Result<u64, SpoolError> {
        if self.uncertain.is_empty() {
            return Ok(0);
        }
        for (a, b) in self.uncertain.intersect(0, applied) {
            self.dropped.remove(a, b);
        }
        let lost = self.uncertain.count_in(applied.saturating_add(1), u64::MAX);
        self.dropped_total += lost;
        self.uncertain = RangeSet::new();
        self.write_meta()?;
        Ok(lost)
    }

    /// How many sequences in `from..=to` were dropped unacknowledged.
    pub fn lost_in(&self, from: u64, to: u64) -> u64 {
        self.dropped.count_in(from, to)
    }
}
