//! Reconnect pacing: exponential backoff with jitter and a cap, plus the
//! order in which receiver addresses are tried. No IO, no clock; the caller
//! sleeps for what [`Backoff::next_delay`] returns.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": the n-th delay is uniformly
/// drawn from `[d/2, d]` where `d = min(cap, initial * 2^n)`. Half of every
/// delay is random, so many senders restarted together do not reconnect in
/// lockstep, and no delay ever exceeds `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and never waiting longer than `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial: initial.min(cap),
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the base.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let jitter_ns = rng.random_range(0..=(d - half).as_nanos() as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// Back to the initial delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Failover order over a list of receiver addresses: the preferred one is
/// the first; after a failure the next one is tried, wrapping around.
#[derive(Debug, Clone)]
pub struct Failover {
    count: usize,
    current: usize,
}

impl Failover {
    /// Rotation over `count` addresses (at least one).
    pub fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            current: 0,
        }
    }

    /// Index of the address to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Moves to the next address after a failure.
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.count;
    }

    /// Whether the current address is not the preferred one (so the sender
    /// should probe the preferred one now and then and fail back).
    pub fn is_failed_over(&self) -> bool {
        self.current != 0
    }

    /// Returns to the preferred address.
    pub fn fail_back(&mut self) {
        self.current = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn delays_grow_with_jitter_and_stay_capped() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut prev_max = Duration::ZERO;
        for n in 0..20 {
            let d = b.next_delay(&mut rng);
            let base =
                (Duration::from_millis(100) * 2u32.pow(n.min(10))).min(Duration::from_secs(2));
            assert!(d >= base / 2 && d <= base, "attempt {n}: {d:?} vs {base:?}");
            assert!(d <= Duration::from_secs(2));
            prev_max = prev_max.max(d);
        }
        assert!(prev_max > Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(2)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 40);
    }

    #[test]
    fn failover_rotates_and_fails_back() {
        let mut f = Failover::new(3);
        assert!(!f.is_failed_over());
        f.advance();
        f.advance();
        assert_eq!(f.current(), 2);
        f.advance();
        assert_eq!(f.current(), 0);
        f.advance();
        assert!(f.is_failed_over());
        f.fail_back();
        assert_eq!(f.current(), 0);
    }
}
