//! Handshake failures in the log at a bounded rate, without IO: the first
//! failure of each (reason, subject) — the subject being the source
//! address, or the identity when the certificate named one — is logged in
//! full; later ones are only counted and summed up once per interval, one
//! line for all reasons (the caller sets the interval by how often it asks
//! for [`FailureLog::summary`]). The metric
//! (`telemetry_link_handshake_failures_total`) counts every failure; this
//! only decides what reaches the log.
//!
//! Memory is bounded: at most [`MAX_SUBJECTS`] (reason, subject) pairs are
//! remembered (failures of further pairs go to the summary only), and the
//! pairs are forgotten every [`FORGET_AFTER`], so a failure that persists
//! is logged in full again once an hour.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Pairs remembered at most.
pub(super) const MAX_SUBJECTS: usize = 1024;

/// How long a pair stays remembered.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Who failed: where from, or who by certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Subject {
    /// The remote address (without port).
    Address(IpAddr),
    /// The identity of a verified certificate.
    Identity(String),
}

/// The failures not logged in full during one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    /// Failures in all.
    pub(super) total: u64,
    /// By reason, in name order.
    pub(super) by_reason: Vec<(&'static str, u64)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (reason, count)) in self.by_reason.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{reason}={count}")?;
        }
        Ok(())
    }
}

/// The rate limiter of handshake-failure log lines.
#[derive(Debug)]
pub(super) struct FailureLog {
    seen: HashSet<(&'static str, Subject)>,
    forget_at: Instant,
    quiet: BTreeMap<&'static str, u64>,
}

impl FailureLog {
    /// An empty log.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            seen: HashSet::new(),
            forget_at: now + FORGET_AFTER,
            quiet: BTreeMap::new(),
        }
    }

    /// Notes a failure; `true` when it is to be logged in full now.
    pub(super) fn note(&mut self, reason: &'static str, subject: Subject, now: Instant) -> bool {
        if now >= self.forget_at {
            self.seen.clear();
            self.forget_at = now + FORGET_AFTER;
        }
        let key = (reason, subject);
        if !self.seen.contains(&key) && self.seen.len() < MAX_SUBJECTS {
            self.seen.insert(key);
            return true;
        }
        *self.quiet.entry(reason).or_default() += 1;
        false
    }

    /// The failures not logged in full since the last summary, if any.
    pub(super) fn summary(&mut self) -> Option<Summary> {
        if self.quiet.is_empty() {
            return None;
        }
        let by_reason: Vec<(&'static str, u64)> =
            std::mem::take(&mut self.quiet).into_iter().collect();
        Some(Summary {
            total: by_reason.iter().map(|(_, n)| n).sum(),
            by_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> Subject {
        Subject::Address(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_first_failure_per_reason_and_subject_is_logged_then_summed_up() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(t0);
        assert!(log.note("unknown_ca", addr(1), t0));
        assert!(!log.note("unknown_ca", addr(1), t0));
        assert!(log.note("expired", addr(1), t0), "another reason");
        assert!(log.note("unknown_ca", addr(2), t0), "another address");
        assert!(log.note("not_allowed", Subject::Identity("x".into()), t0));
        for _ in 0..40 {
            assert!(!log.note("unknown_ca", addr(1), t0 + Duration::from_secs(1)));
        }
        assert!(!log.note("expired", addr(1), t0));
        let s = log.summary().unwrap();
        assert_eq!(s.total, 42);
        assert_eq!(s.to_string(), "expired=1 unknown_ca=41");
        assert_eq!(log.summary(), None, "nothing new");
    }

    #[test]
    fn memory_is_bounded_and_pairs_are_forgotten_after_an_hour() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(t0);
        for i in 0..MAX_SUBJECTS as u32 + 50 {
            let logged = log.note(
                "no_certificate",
                Subject::Address(IpAddr::from(i.to_be_bytes())),
                t0,
            );
            assert_eq!(logged, (i as usize) < MAX_SUBJECTS);
        }
        assert_eq!(log.seen.len(), MAX_SUBJECTS);
        let s = log.summary().unwrap();
        assert_eq!(s.total, 50);
        assert!(log.note(
            "no_certificate",
            Subject::Address(IpAddr::from(0u32.to_be_bytes())),
            t0 + FORGET_AFTER
        ));
        assert_eq!(log.seen.len(), 1);
    }
}
