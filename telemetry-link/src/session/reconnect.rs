//! What the link does between sessions: which receiver address to try,
//! how long to wait before the next attempt, when to give up for a stop.
//! No IO and no clock of its own: every decision takes `now` and returns a
//! deadline, and the caller sleeps until it.
//!
//! * [`Backoff`]: exponential backoff with jitter and a cap.
//! * [`Failover`]: the order in which receiver addresses are tried.
//! * [`Reconnect`]: both together, as the link's reconnect policy: the very
//!   first attempt waits a random part of the initial delay; after a lost
//!   session the same receiver is tried again (it may just have restarted);
//!   after a failed connection attempt the next one is; every failure waits
//!   for the backoff, every established session resets it.
//!
//! Many senders that start, or lose their receiver, at the same moment
//! spread their attempts: the first one over `[0, initial]`, each retry
//! over the upper half of its backoff.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng};

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
pub(crate) struct Failover {
    count: usize,
    current: usize,
}

impl Failover {
    /// Rotation over `count` addresses (at least one).
    pub(crate) fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            current: 0,
        }
    }

    /// Index of the address to try now.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// Moves to the next address after a failure.
    pub(crate) fn advance(&mut self) {
        self.current = (self.current + 1) % self.count;
    }

    /// Whether the current address is not the preferred one (so the sender
    /// should probe the preferred one now and then and fail back).
    pub(crate) fn is_failed_over(&self) -> bool {
        self.current != 0
    }

    /// Returns to the preferred address.
    pub(crate) fn fail_back(&mut self) {
        self.current = 0;
    }
}

/// The link's reconnect policy over a list of receiver addresses.
#[derive(Debug)]
pub(crate) struct Reconnect {
    backoff: Backoff,
    failover: Failover,
    rng: StdRng,
    sessions: u64,
}

impl Reconnect {
    /// A policy over `receivers` addresses, waiting `initial` up to `cap`
    /// between failed attempts; `rng` draws the jitter.
    pub(crate) fn new(receivers: usize, initial: Duration, cap: Duration, rng: StdRng) -> Self {
        Self {
            backoff: Backoff::new(initial, cap),
            failover: Failover::new(receivers),
            rng,
            sessions: 0,
        }
    }

    /// When to make the link's first attempt: a uniformly random point of
    /// `[now, now + initial]`, so that a fleet of senders started together
    /// (a rollout, power back) does not reach the receiver in one burst.
    pub(crate) fn first_attempt(&mut self, now: Instant) -> Instant {
        let initial = self.backoff.initial.as_nanos() as u64;
        now + Duration::from_nanos(self.rng.random_range(0..=initial))
    }

    /// Index of the receiver address to connect to next.
    pub(crate) fn target(&self) -> usize {
        self.failover.current()
    }

    /// Whether the target is not the preferred (first) receiver, so a
    /// session with it should fail back to the preferred one when it can.
    pub(crate) fn is_failed_over(&self) -> bool {
        self.failover.is_failed_over()
    }

    /// A session was established; returns whether it is a reconnection
    /// (not the link's first session).
    pub(crate) fn on_connected(&mut self) -> bool {
        self.backoff.reset();
        self.sessions += 1;
        self.sessions > 1
    }

    /// An established session was lost: the same receiver is tried again
    /// (it may just have restarted) at the returned deadline.
    pub(crate) fn on_session_lost(&mut self, now: Instant) -> Instant {
        now + self.backoff.next_delay(&mut self.rng)
    }

    /// A connection attempt failed: the next receiver is tried at the
    /// returned deadline.
    pub(crate) fn on_connect_failed(&mut self, now: Instant) -> Instant {
        self.failover.advance();
        now + self.backoff.next_delay(&mut self.rng)
    }

    /// The session switched to the preferred receiver.
    pub(crate) fn on_failed_back(&mut self) {
        self.failover.fail_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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

    /// How many of `times` (offsets from a common start) fall in the
    /// busiest `bucket`.
    fn busiest(times: &[Duration], bucket: Duration) -> usize {
        let mut counts = std::collections::HashMap::new();
        for t in times {
            *counts.entry(t.as_nanos() / bucket.as_nanos()).or_insert(0) += 1;
        }
        counts.into_values().max().unwrap_or(0)
    }

    #[test]
    fn a_thousand_senders_starting_or_losing_their_receiver_together_spread_out() {
        let now = Instant::now();
        let initial = Duration::from_millis(100);
        let fleet = |seed_base: u64| {
            (0..1000u64).map(move |i| {
                Reconnect::new(
                    1,
                    initial,
                    Duration::from_secs(2),
                    StdRng::seed_from_u64(seed_base + i),
                )
            })
        };
        // Started together: first attempts over [0, 100 ms].
        let first: Vec<Duration> = fleet(0).map(|mut r| r.first_attempt(now) - now).collect();
        assert!(first.iter().all(|d| *d <= initial));
        assert!(first.iter().any(|d| *d < Duration::from_millis(5)));
        assert!(first.iter().any(|d| *d > Duration::from_millis(95)));
        assert!(
            busiest(&first, Duration::from_millis(1)) <= 30,
            "about 10 per millisecond expected"
        );
        // Their receiver restarted: every sender's session is lost at once,
        // the retries spread over [50, 100] ms.
        let retry: Vec<Duration> = fleet(5000)
            .map(|mut r| {
                r.on_connected();
                r.on_session_lost(now) - now
            })
            .collect();
        assert!(retry.iter().all(|d| *d >= initial / 2 && *d <= initial));
        assert!(
            busiest(&retry, Duration::from_millis(1)) <= 50,
            "about 20 per millisecond expected"
        );
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

    #[test]
    fn a_lost_session_retries_the_same_receiver_a_failed_connect_the_next() {
        let now = Instant::now();
        let mut r = Reconnect::new(
            2,
            Duration::from_millis(100),
            Duration::from_secs(2),
            StdRng::seed_from_u64(3),
        );
        assert_eq!(r.target(), 0);
        assert!(!r.on_connected(), "the first session is not a reconnection");
        let at = r.on_session_lost(now);
        assert!(at > now && at <= now + Duration::from_millis(100));
        assert_eq!(r.target(), 0, "a lost session retries the same receiver");
        let at = r.on_connect_failed(now);
        assert!(at >= now + Duration::from_millis(100) && at <= now + Duration::from_millis(200));
        assert_eq!(r.target(), 1);
        assert!(r.is_failed_over());
        assert!(r.on_connected());
        assert!(
            r.on_session_lost(now) <= now + Duration::from_millis(100),
            "an established session resets the backoff"
        );
        r.on_failed_back();
        assert_eq!(r.target(), 0);
        assert!(!r.is_failed_over());
    }
}
