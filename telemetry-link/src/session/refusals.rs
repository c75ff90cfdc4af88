//! Refused records between the two ends, without IO: the sender's
//! [`PendingRefusals`] (a report waits for the ack that settles it) and the
//! [`RefusalLog`] both ends use to log refusals at a bounded rate.
//!
//! A receiver sends a [`Refused`] report right before the ack that covers
//! it. The sender counts the report only once that ack arrives: the ack
//! means the receiver's position — and so its verdict — is durable, so a
//! receiver that crashes in between and refuses the records again after its
//! restart is not counted twice. A report the sender never sees acknowledged
//! (the connection dropped between the receiver persisting and the sender
//! reading the ack) is not counted by the sender; the receiver's count is
//! the authority.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::proto::{
    message::Refused,
    refused::{RefusedCounts, RefusedReason},
};

/// A refusal report that cannot be right.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub(crate) enum ReportError {
    /// Covers nothing new: at or below what is acknowledged or already
    /// reported.
    #[error("refusal report through {through} is not past {past}")]
    Stale {
        /// The report's position.
        through: u64,
        /// The acknowledged or reported position it must pass.
        past: u64,
    },
    /// Covers sequences never sent.
    #[error("refusal report through {through} beyond last sent {sent}")]
    Unsent {
        /// The report's position.
        through: u64,
        /// Highest sequence sent.
        sent: u64,
    },
    /// Refuses more records than the sequences it covers.
    #[error("refusal report of {refused} records covers only {covered} sequences")]
    TooMany {
        /// Records refused (with earlier unsettled reports).
        refused: u64,
        /// Sequences after the last ack up to the report's position.
        covered: u64,
    },
}

/// Sender side: reports received and not yet settled by an ack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PendingRefusals {
    /// Position of the newest report (0: none pending).
    through: u64,
    counts: RefusedCounts,
}

impl PendingRefusals {
    /// Takes a report arriving when `acked` is the highest ack and
    /// `last_sent` the highest sequence sent.
    pub(crate) fn on_report(
        &mut self,
        report: &Refused,
        acked: u64,
        last_sent: u64,
    ) -> Result<(), ReportError> {
        let past = acked.max(self.through);
        if report.through_seq <= past {
            return Err(ReportError::Stale {
                through: report.through_seq,
                past,
            });
        }
        if report.through_seq > last_sent {
            return Err(ReportError::Unsent {
                through: report.through_seq,
                sent: last_sent,
            });
        }
        let mut counts = self.counts;
        counts.merge(&report.counts);
        let covered = report.through_seq - acked;
        if counts.total() > covered {
            return Err(ReportError::TooMany {
                refused: counts.total(),
                covered,
            });
        }
        *self = Self {
            through: report.through_seq,
            counts,
        };
        Ok(())
    }

    /// An ack up to `acked` arrived: the refusals it settles, if any.
    pub(crate) fn on_ack(&mut self, acked: u64) -> Option<RefusedCounts> {
        if self.through == 0 || acked < self.through {
            return None;
        }
        Some(std::mem::take(self).counts)
    }
}

/// One line for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogLine {
    /// The first refusal for a reason: `n` records.
    First(RefusedReason, u64),
    /// Refusals since the previous line, which was `over` ago.
    Summary {
        /// The refusals.
        counts: RefusedCounts,
        /// Time since the previous line.
        over: Duration,
    },
}

/// Logs refusals at a bounded rate: the first one of each reason at once,
/// then at most one summary per `every`. Summaries are written when
/// refusals are noted (or flushed), so quiet periods cost nothing.
#[derive(Debug, Clone)]
pub(crate) struct RefusalLog {
    every: Duration,
    seen: [bool; RefusedReason::ALL.len()],
    since: RefusedCounts,
    last_line: Option<Instant>,
}

impl RefusalLog {
    /// A log writing at most one summary per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            seen: [false; RefusedReason::ALL.len()],
            since: RefusedCounts::NONE,
            last_line: None,
        }
    }

    /// Notes refusals at `now`; returns what to log (at most one line per
    /// reason and one summary).
    pub(crate) fn note(&mut self, counts: &RefusedCounts, now: Instant) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for (reason, n) in counts.iter() {
            let seen = &mut self.seen[usize::from(reason.code())];
            if *seen {
                self.since.add(reason, n);
            } else {
                *seen = true;
                lines.push(LogLine::First(reason, n));
            }
        }
        if !lines.is_empty() && self.last_line.is_none() {
            self.last_line = Some(now);
        }
        if let Some(summary) = self.summary(now, false) {
            lines.push(summary);
        }
        lines
    }

    /// A summary of what was not logged yet, whatever the time (e.g. when a
    /// session ends).
    pub(crate) fn flush(&mut self, now: Instant) -> Option<LogLine> {
        self.summary(now, true)
    }

    fn summary(&mut self, now: Instant, force: bool) -> Option<LogLine> {
        if self.since.is_empty() {
            return None;
        }
        let last = *self.last_line.get_or_insert(now);
        let over = now.saturating_duration_since(last);
        if !force && over < self.every {
            return None;
        }
        self.last_line = Some(now);
        Some(LogLine::Summary {
            counts: std::mem::take(&mut self.since),
            over,
        })
    }
}

/// `reason=n` pairs for a log line.
pub(crate) fn describe(counts: &RefusedCounts) -> String {
    counts
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(through_seq: u64, reason: RefusedReason, n: u64) -> Refused {
        Refused {
            through_seq,
            counts: RefusedCounts::of(reason, n),
        }
    }

    #[test]
    fn a_report_is_settled_by_the_ack_that_covers_it() {
        let mut p = PendingRefusals::default();
        p.on_report(&report(10, RefusedReason::Budget, 2), 5, 20)
            .unwrap();
        assert_eq!(p.on_ack(9), None);
        assert_eq!(
            p.on_ack(10),
            Some(RefusedCounts::of(RefusedReason::Budget, 2))
        );
        assert_eq!(p.on_ack(12), None, "settled once");
    }

    #[test]
    fn unsettled_reports_add_up() {
        let mut p = PendingRefusals::default();
        p.on_report(&report(7, RefusedReason::Budget, 1), 5, 20)
            .unwrap();
        p.on_report(&report(9, RefusedReason::Invalid, 2), 5, 20)
            .unwrap();
        let mut want = RefusedCounts::of(RefusedReason::Budget, 1);
        want.add(RefusedReason::Invalid, 2);
        assert_eq!(p.on_ack(9), Some(want));
    }

    #[test]
    fn impossible_reports_are_errors() {
        let mut p = PendingRefusals::default();
        let r = RefusedReason::Other;
        assert_eq!(
            p.on_report(&report(5, r, 0), 5, 20),
            Err(ReportError::Stale {
                through: 5,
                past: 5
            })
        );
        assert_eq!(
            p.on_report(&report(21, r, 1), 5, 20),
            Err(ReportError::Unsent {
                through: 21,
                sent: 20
            })
        );
        assert_eq!(
            p.on_report(&report(7, r, 3), 5, 20),
            Err(ReportError::TooMany {
                refused: 3,
                covered: 2
            })
        );
        p.on_report(&report(8, r, 3), 5, 20).unwrap();
        assert!(matches!(
            p.on_report(&report(8, r, 0), 5, 20),
            Err(ReportError::Stale { past: 8, .. })
        ));
        // Counted with the unsettled report before it.
        assert_eq!(
            p.on_report(&report(9, r, 2), 5, 20),
            Err(ReportError::TooMany {
                refused: 5,
                covered: 4
            })
        );
        // A refused report changes nothing.
        p.on_report(&report(9, r, 1), 5, 20).unwrap();
        assert_eq!(p.on_ack(9), Some(RefusedCounts::of(r, 4)));
    }

    #[test]
    fn the_log_writes_each_reason_once_then_summaries_per_interval() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut log = RefusalLog::new(Duration::from_secs(60));
        let budget = RefusedCounts::of(RefusedReason::Budget, 3);
        assert_eq!(
            log.note(&budget, t0),
            vec![LogLine::First(RefusedReason::Budget, 3)]
        );
        assert_eq!(log.note(&budget, at(10)), vec![]);
        let mut both = budget;
        both.add(RefusedReason::Invalid, 1);
        assert_eq!(
            log.note(&both, at(30)),
            vec![LogLine::First(RefusedReason::Invalid, 1)]
        );
        assert_eq!(
            log.note(&both, at(61)),
            vec![LogLine::Summary {
                counts: {
                    let mut c = RefusedCounts::of(RefusedReason::Budget, 9);
                    c.add(RefusedReason::Invalid, 1);
                    c
                },
                over: Duration::from_secs(61)
            }]
        );
        assert_eq!(log.note(&budget, at(70)), vec![]);
        assert_eq!(
            log.flush(at(80)),
            Some(LogLine::Summary {
                counts: budget,
                over: Duration::from_secs(19)
            })
        );
        assert_eq!(log.flush(at(90)), None);
        assert_eq!(describe(&both), "budget=3 invalid=1");
    }
}
