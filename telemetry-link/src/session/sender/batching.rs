//! When a sender session sends what is spooled: a batch leaves when it is
//! full (by records or by payload bytes) or once the *linger* since its
//! first record has passed; it leaves at once when the application asked
//! for a flush covering it, while stopping, and for the backlog found when
//! the session started. And which appends should wake the session while it
//! lingers ([`WakeOn`]), so it wakes for the first record of a batch and
//! for a full batch, not for every append in between.
//!
//! No IO and no clock: the session passes `now` and what it sees unsent.

use std::time::{Duration, Instant};

/// Which appends should wake a waiting session: one that brings the
/// spool's last sequence to `last_seq`, or its appended bytes to
/// `appended_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WakeOn {
    /// Wake once the spool's last sequence is at least this.
    pub(crate) last_seq: u64,
    /// Wake once the spool's appended bytes are at least this.
    pub(crate) appended_bytes: u64,
}

impl WakeOn {
    /// No append wakes the session.
    pub(crate) const NEVER: WakeOn = WakeOn {
        last_seq: u64::MAX,
        appended_bytes: u64::MAX,
    };

    /// Whether a spool at `last_seq` with `appended_bytes` meets it.
    pub(crate) fn is_met(&self, last_seq: u64, appended_bytes: u64) -> bool {
        last_seq >= self.last_seq || appended_bytes >= self.appended_bytes
    }
}

/// What waits to be sent, as seen at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unsent {
    /// The next sequence to send.
    pub(super) next_seq: u64,
    /// Records from `next_seq` to the spool's end.
    pub(super) records: u64,
    /// Their payload bytes.
    pub(super) bytes: u64,
    /// The spool's appended bytes (see [`WakeOn`]).
    pub(super) appended_bytes: u64,
}

/// The linger, flush and fullness rules of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Batching {
    linger: Duration,
    max_records: u64,
    budget: u64,
    /// When the oldest unsent record seen must leave; `None` while
    /// nothing is unsent.
    due_at: Option<Instant>,
    /// Records up to this sequence go out at once.
    flush_upto: u64,
}

impl Batching {
    /// Rules for batches of at most `max_records` records and `budget`
    /// payload bytes. Records unsent at the start (`backlog`) are due at
    /// once: they waited already.
    pub(super) fn new(
        linger: Duration,
        max_records: usize,
        budget: usize,
        now: Instant,
        backlog: bool,
    ) -> Self {
        Self {
            linger,
            max_records: max_records as u64,
            budget: budget as u64,
            due_at: backlog.then_some(now),
            flush_upto: 0,
        }
    }

    /// Notes what is unsent at `now`: the first record of a new batch
    /// starts its linger.
    pub(super) fn observe(&mut self, now: Instant, unsent: &Unsent) {
        if unsent.records == 0 {
            self.due_at = None;
        } else if self.due_at.is_none() {
            self.due_at = Some(now + self.linger);
        }
    }

    /// Everything up to `upto` is to be sent at once.
    pub(super) fn flush(&mut self, upto: u64) {
        self.flush_upto = self.flush_upto.max(upto);
    }

    /// Whether the unsent records should go now (`urgent`: stopping).
    pub(super) fn is_due(&self, now: Instant, unsent: &Unsent, urgent: bool) -> bool {
        unsent.records > 0
            && (urgent
                || self.flush_upto >= unsent.next_seq
                || self.is_full(unsent)
                || self.due_at.is_some_and(|at| now >= at))
    }

    fn is_full(&self, unsent: &Unsent) -> bool {
        unsent.records >= self.max_records || unsent.bytes >= self.budget
    }

    /// When lingering records must leave, if any are unsent.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.due_at
    }

    /// The appends that should wake a session waiting with `unsent`
    /// records not yet due: the first record (it starts a linger), or
    /// enough to fill a batch.
    pub(super) fn wake_on(&self, unsent: &Unsent) -> WakeOn {
        if unsent.records == 0 {
            return WakeOn {
                last_seq: unsent.next_seq,
                appended_bytes: u64::MAX,
            };
        }
        WakeOn {
            last_seq: (unsent.next_seq + self.max_records).saturating_sub(1),
            appended_bytes: unsent
                .appended_bytes
                .saturating_add(self.budget.saturating_sub(unsent.bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(500);

    fn unsent(next_seq: u64, records: u64, bytes: u64) -> Unsent {
        Unsent {
            next_seq,
            records,
            bytes,
            appended_bytes: 1000 + bytes,
        }
    }

    #[test]
    fn a_batch_lingers_from_its_first_record_until_full_or_due() {
        let t0 = Instant::now();
        let mut b = Batching::new(LINGER, 10, 1000, t0, false);
        let none = unsent(1, 0, 0);
        b.observe(t0, &none);
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due(t0, &none, true), "nothing to send");
        assert_eq!(
            b.wake_on(&none),
            WakeOn {
                last_seq: 1,
                appended_bytes: u64::MAX
            },
            "the first record wakes the session"
        );
        let t1 = t0 + Duration::from_millis(100);
        let three = unsent(1, 3, 30);
        b.observe(t1, &three);
        assert_eq!(b.deadline(), Some(t1 + LINGER));
        assert!(!b.is_due(t1, &three, false));
        assert_eq!(
            b.wake_on(&three),
            WakeOn {
                last_seq: 10,
                appended_bytes: 1030 + 970
            },
            "wake for a full batch"
        );
        let later = unsent(1, 5, 50);
        b.observe(t1 + LINGER / 2, &later);
        assert_eq!(b.deadline(), Some(t1 + LINGER), "from the first record");
        assert!(!b.is_due(t1 + LINGER - Duration::from_nanos(1), &later, false));
        assert!(b.is_due(t1 + LINGER, &later, false));
        assert!(b.is_due(t1, &unsent(1, 10, 50), false), "full by records");
        assert!(b.is_due(t1, &unsent(1, 4, 1000), false), "full by bytes");
        assert!(b.is_due(t1, &later, true), "stopping sends at once");
        b.observe(t1 + LINGER, &unsent(6, 0, 0));
        assert_eq!(b.deadline(), None, "all sent: the next record starts anew");
    }

    #[test]
    fn a_flush_sends_at_once_what_it_covers() {
        let t0 = Instant::now();
        let mut b = Batching::new(LINGER, 10, 1000, t0, false);
        let two = unsent(4, 2, 20);
        b.observe(t0, &two);
        b.flush(5);
        assert!(b.is_due(t0, &two, false));
        let after = unsent(6, 1, 10);
        assert!(
            !b.is_due(t0, &after, false),
            "records after the flush linger"
        );
    }

    #[test]
    fn the_backlog_at_the_start_is_due_at_once_and_linger_zero_never_waits() {
        let t0 = Instant::now();
        let mut b = Batching::new(LINGER, 10, 1000, t0, true);
        let backlog = unsent(1, 3, 30);
        b.observe(t0, &backlog);
        assert!(b.is_due(t0, &backlog, false));
        let mut z = Batching::new(Duration::ZERO, 10, 1000, t0, false);
        z.observe(t0, &backlog);
        assert!(z.is_due(t0, &backlog, false));
    }

    #[test]
    fn wake_thresholds_are_met_by_either_bound() {
        let w = WakeOn {
            last_seq: 10,
            appended_bytes: 500,
        };
        assert!(!w.is_met(9, 499));
        assert!(w.is_met(10, 0));
        assert!(w.is_met(0, 500));
        assert!(!WakeOn::NEVER.is_met(u64::MAX - 1, u64::MAX - 1));
    }
}
