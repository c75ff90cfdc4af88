//! Sender-side flow control for one session: which sequence goes out
//! next, what is in flight, what the receiver has acknowledged. No IO.
//!
//! The window starts at the receiver's `applied_seq` from the welcome.
//! Batches must be sent in order starting at [`SendWindow::next_seq`]; acks
//! are cumulative and must never go backwards or beyond what was sent.
//! In-flight data is bounded both in batches and in bytes, so a slow receiver
//! throttles the reader instead of the sender buffering without limit.

use std::collections::VecDeque;

use thiserror::Error;

/// Limits on unacknowledged data per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Most batches in flight.
    pub max_batches: usize,
    /// Most encoded bytes in flight.
    pub max_bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            max_batches: 64,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// An acknowledgement that cannot be right.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub(crate) enum AckError {
    /// Lower than an earlier ack.
    #[error("ack went backwards: {got} after {acked}")]
    Backwards {
        /// Highest earlier ack.
        acked: u64,
        /// The new ack.
        got: u64,
    },
    /// Acknowledges a sequence that was never sent.
    #[error("ack {got} beyond last sent {sent}")]
    Unsent {
        /// Highest sequence sent.
        sent: u64,
        /// The ack.
        got: u64,
    },
}

/// What is out on one connection.
#[derive(Debug, Clone)]
pub(crate) struct SendWindow {
    next_seq: u64,
    acked: u64,
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    limits: WindowLimits,
}

impl SendWindow {
    /// A window resuming after `applied_seq` (from the welcome).
    pub(crate) fn new(applied_seq: u64, limits: WindowLimits) -> Self {
        Self {
            next_seq: applied_seq + 1,
            acked: applied_seq,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            limits,
        }
    }

    /// The next sequence to send.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest acknowledged sequence.
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// The highest sequence sent.
    pub(crate) fn last_sent(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether another batch may go out.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.len() < self.limits.max_batches
            && self.in_flight_bytes < self.limits.max_bytes
    }

    /// Whether everything sent is acknowledged.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Records that sequences `next_seq..=last_seq` went out (as a batch or a
    /// skip) in `bytes` bytes.
    pub(crate) fn on_sent(&mut self, last_seq: u64, bytes: usize) {
        debug_assert!(last_seq >= self.next_seq);
        self.next_seq = last_seq + 1;
        self.in_flight.push_back((last_seq, bytes));
        self.in_flight_bytes += bytes;
    }

    /// Processes a cumulative ack; returns how many sequences it newly covers.
    pub(crate) fn on_ack(&mut self, applied_seq: u64) -> Result<u64, AckError> {
        if applied_seq < self.acked {
            return Err(AckError::Backwards {
                acked: self.acked,
                got: applied_seq,
            });
        }
        if applied_seq >= self.next_seq {
            return Err(AckError::Unsent {
                sent: self.next_seq - 1,
                got: applied_seq,
            });
        }
        let newly = applied_seq - self.acked;
        self.acked = applied_seq;
        while let Some(&(last, bytes)) = self.in_flight.front() {
            if last > applied_seq {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes -= bytes;
        }
        Ok(newly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fills_and_drains() {
        let mut w = SendWindow::new(
            10,
            WindowLimits {
                max_batches: 2,
                max_bytes: 1000,
            },
        );
        assert_eq!(w.next_seq(), 11);
        assert!(w.has_room() && w.is_idle());
        w.on_sent(15, 100);
        w.on_sent(20, 100);
        assert!(!w.has_room());
        assert_eq!(w.on_ack(13), Ok(3));
        assert!(!w.has_room(), "partially acked batch still in flight");
        assert_eq!(w.on_ack(15), Ok(2));
        assert!(w.has_room());
        assert_eq!(w.on_ack(20), Ok(5));
        assert!(w.is_idle());
    }

    #[test]
    fn byte_limit_applies() {
        let mut w = SendWindow::new(
            0,
            WindowLimits {
                max_batches: 10,
                max_bytes: 150,
            },
        );
        w.on_sent(1, 100);
        assert!(w.has_room());
        w.on_sent(2, 100);
        assert!(!w.has_room());
    }

    #[test]
    fn bad_acks_are_errors() {
        let mut w = SendWindow::new(5, WindowLimits::default());
        w.on_sent(9, 10);
        assert_eq!(w.on_ack(10), Err(AckError::Unsent { sent: 9, got: 10 }));
        assert_eq!(w.on_ack(7), Ok(2));
        assert_eq!(w.on_ack(6), Err(AckError::Backwards { acked: 7, got: 6 }));
        assert_eq!(w.on_ack(7), Ok(0));
    }
}
