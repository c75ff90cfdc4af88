//! Receiver-side sequence state for one sender: what is applied, what is a
//! duplicate, what is a gap. No IO: the receiver's session machine
//! (`session::receiver`) asks for the cursor to be persisted after every
//! step that moves it.
//!
//! Invariants:
//! * `applied` only grows within a stream (a given `stream_id`).
//! * A record reaches the handler only if its sequence is exactly
//!   `applied + 1` at that moment; lower sequences are duplicates and are
//!   dropped and counted; higher ones without a [`Skip`] are a protocol error
//!   ([`SeqError::Gap`]), never silently accepted.
//! * A [`Skip`] moves `applied` forward over records the sender no longer
//!   has; only its `lost` part (dropped unacknowledged) counts as lost.

use thiserror::Error;

use crate::proto::{message::Skip, seq::MAX_SEQ};

/// A sequence-number protocol violation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SeqError {
    /// A batch or skip starts after the next expected sequence.
    #[error("sequence gap: expected {expected}, got {got}")]
    Gap {
        /// The next sequence the receiver can apply.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// A batch with no records.
    #[error("empty batch")]
    EmptyBatch,
    /// Sequence arithmetic would overflow.
    #[error("sequence overflow")]
    Overflow,
    /// A skip whose range or lost count is inconsistent.
    #[error("invalid skip {from}..={to} lost {lost}")]
    BadSkip {
        /// First skipped.
        from: u64,
        /// Last skipped.
        to: u64,
        /// Claimed lost.
        lost: u64,
    },
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Leading records already applied: drop and count them.
    pub duplicates: u32,
    /// Records after those: hand them to the handler, then [`StreamCursor::commit`]
    /// the batch's last sequence.
    pub fresh: u32,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
}

/// What a skip changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkipOutcome {
    /// Sequences newly skipped over.
    pub skipped: u64,
    /// Of those, how many count as lost.
    pub lost: u64,
}

/// One sender stream's applied position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    stream_id: u128,
    applied: u64,
}

impl StreamCursor {
    /// A cursor for `stream_id` with everything up to `applied` done.
    pub fn new(stream_id: u128, applied: u64) -> Self {
        Self { stream_id, applied }
    }

    /// The cursor to use for a hello announcing `stream_id`: the stored one
    /// if it is the same stream, else a fresh stream starting at 0. The bool
    /// says whether the stream is new to this receiver while an older stream
    /// of the same sender was known (its spool was recreated).
    pub fn for_hello(stored: Option<StreamCursor>, stream_id: u128) -> (StreamCursor, bool) {
        match stored {
            Some(c) if c.stream_id == stream_id => (c, false),
            Some(_) => (StreamCursor::new(stream_id, 0), true),
            None => (StreamCursor::new(stream_id, 0), false),
        }
    }

    /// The stream this cursor belongs to.
    pub fn stream_id(&self) -> u128 {
        self.stream_id
    }

    /// Highest applied sequence (0: none).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Classifies a batch of `count` records starting at `first_seq`.
    pub fn plan_batch(&self, first_seq: u64, count: u32) -> Result<BatchPlan, SeqError> {
        if count == 0 {
            return Err(SeqError::EmptyBatch);
        }
        let last_seq = first_seq
            .checked_add(u64::from(count) - 1)
            .filter(|&l| l <= MAX_SEQ)
            .ok_or(SeqError::Overflow)?;
        let expected = self.applied.checked_add(1).ok_or(SeqError::Overflow)?;
        if first_seq > expected {
            return Err(SeqError::Gap {
                expected,
                got: first_seq,
            });
        }
        if last_seq <= self.applied {
            return Ok(BatchPlan {
                duplicates: count,
                fresh: 0,
                last_seq,
            });
        }
        // first_seq <= expected <= last_seq, so this fits in u32.
        let duplicates = (expected - first_seq) as u32;
        Ok(BatchPlan {
            duplicates,
            fresh: count - duplicates,
            last_seq,
        })
    }

    /// Records that everything up to `last_seq` is applied.
    pub fn commit(&mut self, last_seq: u64) {
        self.applied = self.applied.max(last_seq);
    }

    /// Applies a skip; returns what it changed.
    pub fn apply_skip(&mut self, skip: &Skip) -> Result<SkipOutcome, SeqError> {
        let Skip { from, to, lost } = *skip;
        let bad = SeqError::BadSkip { from, to, lost };
        if from == 0 || to < from || to > MAX_SEQ || lost > to - from + 1 {
            return Err(bad);
        }
        let expected = self.applied.checked_add(1).ok_or(SeqError::Overflow)?;
        if from > expected {
            return Err(SeqError::Gap {
                expected,
                got: from,
            });
        }
        if to <= self.applied {
            return Ok(SkipOutcome::default());
        }
        let skipped = to - self.applied;
        self.applied = to;
        // Only part of the range may be new; never count more lost records
        // than were newly skipped.
        Ok(SkipOutcome {
            skipped,
            lost: lost.min(skipped),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_duplicate_partial_and_gap() {
        let c = StreamCursor::new(1, 10);
        assert_eq!(
            c.plan_batch(11, 5).unwrap(),
            BatchPlan {
                duplicates: 0,
                fresh: 5,
                last_seq: 15
            }
        );
        assert_eq!(
            c.plan_batch(1, 10).unwrap(),
            BatchPlan {
                duplicates: 10,
                fresh: 0,
                last_seq: 10
            }
        );
        assert_eq!(
            c.plan_batch(8, 5).unwrap(),
            BatchPlan {
                duplicates: 3,
                fresh: 2,
                last_seq: 12
            }
        );
        assert_eq!(
            c.plan_batch(12, 1),
            Err(SeqError::Gap {
                expected: 11,
                got: 12
            })
        );
        assert_eq!(c.plan_batch(11, 0), Err(SeqError::EmptyBatch));
        assert_eq!(c.plan_batch(u64::MAX, 2), Err(SeqError::Overflow));
    }

    #[test]
    fn skips_count_only_new_lost_records() {
        let mut c = StreamCursor::new(1, 10);
        assert_eq!(
            c.apply_skip(&Skip {
                from: 11,
                to: 20,
                lost: 4
            })
            .unwrap(),
            SkipOutcome {
                skipped: 10,
                lost: 4
            }
        );
        assert_eq!(c.applied(), 20);
        // replayed skip: nothing new
        assert_eq!(
            c.apply_skip(&Skip {
                from: 11,
                to: 20,
                lost: 4
            })
            .unwrap(),
            SkipOutcome::default()
        );
        // overlapping skip: lost capped at what is new
        assert_eq!(
            c.apply_skip(&Skip {
                from: 15,
                to: 22,
                lost: 8
            })
            .unwrap(),
            SkipOutcome {
                skipped: 2,
                lost: 2
            }
        );
        assert!(c
            .apply_skip(&Skip {
                from: 30,
                to: 31,
                lost: 0
            })
            .is_err());
        assert!(c
            .apply_skip(&Skip {
                from: 23,
                to: 22,
                lost: 0
            })
            .is_err());
        assert!(c
            .apply_skip(&Skip {
                from: 23,
                to: 24,
                lost: 3
            })
            .is_err());
    }

    #[test]
    fn new_stream_id_restarts_at_zero() {
        let stored = Some(StreamCursor::new(7, 100));
        assert_eq!(StreamCursor::for_hello(stored, 7).0.applied(), 100);
        let (c, reset) = StreamCursor::for_hello(stored, 8);
        assert_eq!((c.applied(), c.stream_id(), reset), (0, 8, true));
        assert!(!StreamCursor::for_hello(None, 8).1);
    }

    /// Model test: a sender that resends arbitrary overlapping windows
    /// (retransmits after reconnects) and skips; the cursor must deliver each
    /// sequence at most once, in order, and never skip one silently.
    #[derive(Debug, Clone)]
    enum Op {
        Resend { back: u64, len: u32 },
        Fresh { len: u32 },
        Skip { len: u64, lost: u64 },
        Jump { ahead: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..20, 1u32..20).prop_map(|(back, len)| Op::Resend { back, len }),
            (1u32..20).prop_map(|len| Op::Fresh { len }),
            (1u64..10, 0u64..12).prop_map(|(len, lost)| Op::Skip { len, lost }),
            (2u64..5).prop_map(|ahead| Op::Jump { ahead }),
        ]
    }

    proptest! {
        #[test]
        fn every_sequence_delivered_at_most_once_in_order(ops in proptest::collection::vec(op(), 1..60)) {
            let mut c = StreamCursor::new(1, 0);
            let mut delivered: Vec<u64> = Vec::new();
            let mut skipped_total = 0u64;
            let mut lost_total = 0u64;
            let mut dup_total = 0u64;
            let mut sent_total = 0u64;
            for op in ops {
                let expected = c.applied() + 1;
                let send = match op {
                    Op::Resend { back, len } => Some((expected.saturating_sub(back).max(1), len)),
                    Op::Fresh { len } => Some((expected, len)),
                    _ => None,
                };
                if let Some((first, len)) = send {
                    let plan = c.plan_batch(first, len).unwrap();
                    dup_total += u64::from(plan.duplicates);
                    sent_total += u64::from(len);
                    delivered.extend(first + u64::from(plan.duplicates)..=plan.last_seq);
                    if plan.fresh > 0 {
                        c.commit(plan.last_seq);
                    }
                    continue;
                }
                match op {
                    Op::Skip { len, lost } => {
                        let s = Skip { from: expected, to: expected + len - 1, lost };
                        match c.apply_skip(&s) {
                            Ok(o) => {
                                skipped_total += o.skipped;
                                lost_total += o.lost;
                                prop_assert!(o.lost <= o.skipped);
                            }
                            Err(_) => prop_assert!(lost > len),
                        }
                    }
                    Op::Jump { ahead } => {
                        let res = c.plan_batch(expected + ahead - 1, 1);
                        prop_assert!(
                            matches!(res, Err(SeqError::Gap { .. })),
                            "a gap of {} was not refused", ahead - 1
                        );
                    }
                    Op::Resend { .. } | Op::Fresh { .. } => unreachable!(),
                }
            }
            // strictly increasing, no duplicates
            prop_assert!(delivered.windows(2).all(|w| w[0] < w[1]));
            // everything up to applied is either delivered or skipped, exactly
            prop_assert_eq!(delivered.len() as u64 + skipped_total, c.applied());
            prop_assert!(lost_total <= skipped_total);
            // every record sent was either delivered or counted as a duplicate
            prop_assert_eq!(dup_total + delivered.len() as u64, sent_total);
        }
    }
}
