//! Who may start a handshake, and who may hold a session: the receiver's
//! admission decisions as a state machine without IO (counts and the
//! current time in, a decision out), so every rule is unit-tested.
//!
//! Two budgets that never mix:
//!
//! * **Pending handshakes** (`max_pending_handshakes`): a connection counts
//!   from its first packet until its TLS handshake ends — the peer's
//!   certificate verified, or the handshake failed or timed out — whether
//!   its address was validated by a QUIC Retry or not. A full budget
//!   refuses new handshakes (`handshake_limit`); it never touches
//!   established sessions.
//! * **Sessions** (`max_connections`): authenticated peers only. A
//!   connection arriving while they are all taken is refused (`busy`)
//!   before it costs a handshake, and one that authenticates while they
//!   are all taken is closed as `busy`.
//!
//! **Pressure**: once half the pending budget is in use, a handshake from
//! an address that is not validated yet is first asked for a QUIC Retry
//! (a stateless round trip that proves the address is real), and a
//! validated one is refused when its source already has
//! `max_pending_per_address` handshakes pending (`address_limit`). A source
//! is one IPv4 address or one IPv6 /64 (one host's share of addresses).
//! Below half the budget there is no per-address limit: a reconnect storm
//! of every sender behind one address — a NAT, or a benchmark on
//! 127.0.0.1 — is admitted as fast as it arrives. A source whose sender
//! completed an authenticated session within the last
//! [`TRUST_FOR`] is trusted: under pressure it may hold up to half the
//! pending budget instead, so legitimate senders behind a NAT reconnect
//! while a flood from elsewhere is going on, and an attacker sharing their
//! address still leaves the other half to everyone else.
//!
//! Memory is bounded: pending counts by source exist only for sources with
//! a pending handshake (at most `max_pending_handshakes`), and at most
//! [`MAX_TRUSTED_SOURCES`] trusted sources are kept (the oldest goes first).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// How long a source stays trusted after a session of it was established.
pub(super) const TRUST_FOR: Duration = Duration::from_secs(600);

/// Trusted sources remembered at most.
pub(super) const MAX_TRUSTED_SOURCES: usize = 4096;

/// Where a handshake comes from, for the per-address limit: an IPv4
/// address, or the /64 prefix of an IPv6 address (IPv4-mapped IPv6
/// addresses count as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(IpAddr);

impl Source {
    /// The source of a remote address.
    pub(super) fn of(addr: SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(prefix.into()))
            }
            v4 => Source(v4),
        }
    }
}

/// The limits the gate enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct GateLimits {
    /// Authenticated sessions at most.
    pub(super) max_sessions: usize,
    /// Handshakes in progress at most.
    pub(super) max_pending: usize,
    /// Handshakes in progress per untrusted source, under pressure.
    pub(super) max_pending_per_source: usize,
}

/// A connection attempt as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// Where it comes from.
    pub(super) source: Source,
    /// Its address was validated (a Retry token).
    pub(super) validated: bool,
    /// A Retry may still be asked for.
    pub(super) may_retry: bool,
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Start the handshake (counted as pending).
    Admit,
    /// Ask the client to prove its address with a QUIC Retry.
    Retry,
    /// Refuse it.
    Refuse(Refusal),
}

/// Why a connection was refused before or right after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every session slot is taken.
    Busy,
    /// The pending-handshake budget is used up.
    HandshakeLimit,
    /// The source has too many handshakes pending (under pressure).
    AddressLimit,
}

impl Refusal {
    /// The `reason` label of `telemetry_link_handshake_failures_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::AddressLimit => "address_limit",
        }
    }
}

/// The admission state: counts of pending handshakes and sessions, and
/// the sources trusted by a recent session.
#[derive(Debug)]
pub(super) struct Gate {
    limits: GateLimits,
    pending: usize,
    pending_by_source: HashMap<Source, usize>,
    sessions: usize,
    trusted: HashMap<Source, Instant>,
}

impl Gate {
    /// An empty gate.
    pub(super) fn new(limits: GateLimits) -> Self {
        Self {
            limits,
            pending: 0,
            pending_by_source: HashMap::new(),
            sessions: 0,
            trusted: HashMap::new(),
        }
    }

    /// Handshakes in progress.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Authenticated sessions.
    #[cfg(test)]
    pub(super) fn sessions(&self) -> usize {
        self.sessions
    }

    /// Whether half the pending budget is in use.
    fn under_pressure(&self) -> bool {
        self.pending.saturating_mul(2) >= self.limits.max_pending
    }

    fn is_trusted(&self, source: Source, now: Instant) -> bool {
        self.trusted
            .get(&source)
            .is_some_and(|since| now.saturating_duration_since(*since) < TRUST_FOR)
    }

    /// Decides on a connection attempt; an admitted one counts as pending
    /// until [`Gate::handshake_over`].
    pub(super) fn arrive(&mut self, a: Arrival, now: Instant) -> Decision {
        if self.sessions >= self.limits.max_sessions {
            return Decision::Refuse(Refusal::Busy);
        }
        let pressure = self.under_pressure();
        if pressure && !a.validated && a.may_retry {
            return Decision::Retry;
        }
        if self.pending >= self.limits.max_pending {
            return Decision::Refuse(Refusal::HandshakeLimit);
        }
        let of_source = self.pending_by_source.get(&a.source).copied().unwrap_or(0);
        if pressure {
            let limit = if self.is_trusted(a.source, now) {
                self.limits.max_pending / 2
            } else {
                self.limits.max_pending_per_source
            };
            if of_source >= limit {
                return Decision::Refuse(Refusal::AddressLimit);
            }
        }
        self.pending += 1;
        self.pending_by_source.insert(a.source, of_source + 1);
        Decision::Admit
    }

    /// An admitted handshake ended (authenticated or not).
    pub(super) fn handshake_over(&mut self, source: Source) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(n) = self.pending_by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.pending_by_source.remove(&source);
            }
        }
    }

    /// An authenticated, allowed peer asks for a session; `Err(Busy)` when
    /// every slot is taken. The source is trusted from now on.
    pub(super) fn open_session(&mut self, source: Source, now: Instant) -> Result<(), Refusal> {
        if self.sessions >= self.limits.max_sessions {
            return Err(Refusal::Busy);
        }
        self.sessions += 1;
        self.trust(source, now);
        Ok(())
    }

    /// A session ended.
    pub(super) fn close_session(&mut self) {
        self.sessions = self.sessions.saturating_sub(1);
    }

    fn trust(&mut self, source: Source, now: Instant) {
        if self.trusted.len() >= MAX_TRUSTED_SOURCES && !self.trusted.contains_key(&source) {
            self.trusted
                .retain(|_, since| now.saturating_duration_since(*since) < TRUST_FOR);
            if self.trusted.len() >= MAX_TRUSTED_SOURCES {
                if let Some(oldest) = self
                    .trusted
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(s, _)| *s)
                {
                    self.trusted.remove(&oldest);
                }
            }
        }
        self.trusted.insert(source, now);
    }
}

#[cfg(test)]
mod tests;
