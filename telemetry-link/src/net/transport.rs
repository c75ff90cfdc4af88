//! QUIC transport settings shared by both ends, and their quinn form.
//!
//! # Keep-alive and idle timeout
//!
//! An established link with nothing to send costs what its keep-alives
//! cost. Only the sender sends them: quinn sends a PING when nothing was
//! sent or received for `keep_alive`, and the receiver's ACK of it keeps
//! both ends' idle timers fresh — one datagram each way per `keep_alive`.
//! (Were both ends to ping, their timers, reset by the same packets, would
//! fire together and double that.) The idle timeout is how long a dead peer
//! (killed, partitioned, powered off) goes unnoticed: a receiver that stops
//! answering is given up after `idle_timeout` and the sender reconnects or
//! fails over; a receiver drops a silent sender's connection just as late.
//!
//! The defaults, 2 s and 6 s, cut the idle traffic of both ends pinging
//! every second by two thirds — measured on loopback over 30 s idle, the
//! sender sent 0.5 datagrams/s (1.6/s with 1 s keep-alives on both ends)
//! and its threads woke 11 times a second (46 with them) — while noticing a
//! dead peer within 6 s (1 s later than a 5 s timeout would). Three
//! keep-alives fit in one idle timeout, and each lost PING is also
//! retransmitted by QUIC's loss recovery, so a link losing a fifth of its
//! packets each way is not torn down for want of keep-alives. (The
//! reliability suite expects a partition noticed within 20 s and a failover
//! within 30 s.)
//!
//! Per connection, quinn allocates as data arrives, not up front: the
//! windows below bound what a peer may have buffered (unread) on this end,
//! they are not reserved. An idle connection costs its state (a few KiB)
//! and its timers; the receiver sends no keep-alives of its own by default
//! ([`TransportTuning::receiver_keep_alive`]), so an idle link wakes it only
//! for the sender's keep-alives.

use std::{sync::Arc, time::Duration};

/// QUIC transport settings shared by both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportTuning {
    /// Keep-alive interval of the sender: traffic every so often even when
    /// idle, so that a dead peer is noticed by the idle timeout (the
    /// receiver sends none of its own; see the module documentation).
    pub keep_alive: Duration,
    /// The receiver's own keep-alive interval; `None` (the default): it
    /// sends none. The sender's keep-alives, which the receiver
    /// acknowledges, keep both ends' idle timers fresh and any NAT mapping
    /// open, so a second set of pings from the receiver would only double
    /// the wake-ups of every idle link.
    pub receiver_keep_alive: Option<Duration>,
    /// Idle timeout: a connection with no packets from the peer for this
    /// long is considered dead.
    pub idle_timeout: Duration,
    /// Flow-control window per stream.
    pub stream_window: u32,
    /// Flow-control window per connection.
    pub connection_window: u32,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(2),
            receiver_keep_alive: None,
            idle_timeout: Duration::from_secs(6),
            stream_window: 8 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
        }
    }
}

impl TransportTuning {
    pub(crate) fn build(&self, accept_streams: bool) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        // `accept_streams`: this is the receiver's configuration.
        t.keep_alive_interval(if accept_streams {
            self.receiver_keep_alive
        } else {
            Some(self.keep_alive)
        });
        // Unreliable datagrams are not used: no buffer for them.
        t.datagram_receive_buffer_size(None);
        // The idle timeout is at most 2^62 ms; clamp instead of failing.
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(u32::MAX)));
        t.max_idle_timeout(Some(idle));
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window));
        t.receive_window(quinn::VarInt::from_u32(self.connection_window));
        // Unacknowledged data buffered for sending, over all streams. The
        // backlog alone may buffer up to its window (16 MiB by default); the
        // headroom above it lets a present state through while a slow
        // receiver holds the backlog. What is buffered is bounded by what
        // the sender writes, not by this number.
        t.send_window(4 * u64::from(self.connection_window));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(u32::from(accept_streams)));
        // The receiver takes present states on unidirectional streams, one
        // at a time (two, so a new one can open while an abandoned one is
        // being discarded); the sender accepts none.
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(if accept_streams { 2 } else { 0 }));
        Arc::new(t)
    }
}
