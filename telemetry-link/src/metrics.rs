//! The link's own Prometheus metrics, registered in a registry the
//! application owns and exposes.
//!
//! Most are updated as things happen. The sender's UDP counters are read
//! from its QUIC connections when the registry is gathered (`UdpTracker`),
//! so an idle link costs nothing to keep them exact.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

fn counter(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Receiver-side metrics.
#[derive(Debug, Clone)]
pub struct ReceiverMetrics {
    /// Senders with an established session.
    pub senders_connected: IntGauge,
    /// Records applied (handed to the handler and acknowledged), per sender.
    pub records_received: IntCounterVec,
    /// Records that arrived again after being applied, dropped, per sender.
    pub duplicates_dropped: IntCounterVec,
    /// Records a sender announced as lost (dropped unacknowledged), per sender.
    pub records_lost: IntCounterVec,
    /// Records that did not decode as the payload type and were skipped.
    pub records_rejected: IntCounterVec,
    /// Highest applied sequence, as persisted, per sender.
    pub applied_seq: IntGaugeVec,
    /// Connections refused before or during the hello, by reason.
    pub handshake_failures: IntCounterVec,
    /// Established sessions closed for a protocol error, by reason.
    pub protocol_errors: IntCounterVec,
    /// Datagrams that cannot be QUIC for this endpoint, by reason.
    pub invalid_datagrams: IntCounterVec,
    /// Senders that started a new stream (their spool was recreated).
    pub stream_resets: IntCounterVec,
    /// Certificate reloads, by result.
    pub tls_reloads: IntCounterVec,
    /// Present states received, by sender and result.
    pub presents: IntCounterVec,
}

/// Handshake refusal reasons exported at 0 from the start, so that
/// `rate()`/`increase()` see the first refusal and alert rules find the
/// series (others appear when they first happen).
pub const HANDSHAKE_FAILURE_REASONS: [&str; 8] = [
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "not_allowed",
    "bad_hello",
    "unsupported_version",
    "handshake_timeout",
];

impl ReceiverMetrics {
    /// Exports a sender's counters at 0 when it first connects, so the
    /// first duplicate or loss shows up in `increase()`.
    pub fn init_sender(&self, sender: &str) {
        for counter in [
            &self.records_received,
            &self.duplicates_dropped,
            &self.records_lost,
            &self.records_rejected,
        ] {
            counter.with_label_values(&[sender]);
        }
    }

    /// Creates and registers the metrics.
    pub fn register(reg: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::register_families(reg)?;
        for reason in HANDSHAKE_FAILURE_REASONS {
            metrics.handshake_failures.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    fn register_families(reg: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            senders_connected: gauge(reg, "telemetry_link_senders_connected", "Senders with an established link session.")?,
            records_received: counter_vec(
                reg,
                "telemetry_link_records_received_total",
                "Records received and applied (handed to the handler, persisted and acknowledged); duplicates excluded.",
                &["sender"],
            )?,
            duplicates_dropped: counter_vec(
                reg,
                "telemetry_link_duplicates_dropped_total",
                "Records received again after they were applied; dropped without reaching the handler.",
                &["sender"],
            )?,
            records_lost: counter_vec(
                reg,
                "telemetry_link_records_lost_total",
                "Records the sender announced as lost (dropped from its spool before any receiver acknowledged them).",
                &["sender"],
            )?,
            records_rejected: counter_vec(
                reg,
                "telemetry_link_records_rejected_total",
                "Records that did not decode as the application's payload type and were skipped.",
                &["sender"],
            )?,
            applied_seq: gauge_vec(
                reg,
                "telemetry_link_applied_seq",
                "Highest sequence number applied and persisted for the sender's current stream.",
                &["sender"],
            )?,
            handshake_failures: counter_vec(
                reg,
                "telemetry_link_handshake_failures_total",
                "Connections refused during the TLS handshake or the link hello, by reason.",
                &["reason"],
            )?,
            protocol_errors: counter_vec(
                reg,
                "telemetry_link_protocol_errors_total",
                "Established sessions closed because the peer broke the protocol, by reason.",
                &["reason"],
            )?,
            invalid_datagrams: counter_vec(
                reg,
                "telemetry_link_invalid_datagrams_total",
                "UDP datagrams that cannot be QUIC packets for this endpoint, by reason.",
                &["reason"],
            )?,
            presents: counter_vec(
                reg,
                "telemetry_link_presents_total",
                "Present states received per sender, by result: applied, refused (malformed or too large), abandoned (the sender replaced or the connection dropped it), handler_error.",
                &["sender", "result"],
            )?,
            stream_resets: counter_vec(
                reg,
                "telemetry_link_stream_resets_total",
                "Times a sender arrived with a new stream id (its spool was recreated) and was restarted at sequence 0.",
                &["sender"],
            )?,
            tls_reloads: counter_vec(
                reg,
                "telemetry_link_tls_reloads_total",
                "Certificate/key/CA reloads, by result (ok or error).",
                &["result"],
            )?,
        })
    }
}

/// Sender-side metrics.
#[derive(Debug, Clone)]
pub struct SenderMetrics {
    /// Records appended to the spool.
    pub records_enqueued: IntCounter,
    /// Records acknowledged by a receiver.
    pub records_acked: IntCounter,
    /// Records dropped unacknowledged (spool full or corrupt).
    pub records_dropped: IntCounter,
    /// Highest sequence assigned.
    pub last_seq: IntGauge,
    /// Highest sequence acknowledged.
    pub acked_seq: IntGauge,
    /// Records in the spool awaiting acknowledgement.
    pub spool_records: IntGauge,
    /// Bytes the spool uses on disk.
    pub spool_bytes: IntGauge,
    /// Bytes the spool may use before dropping its oldest records.
    pub spool_capacity_bytes: IntGauge,
    /// 1 while a session with a receiver is established.
    pub connected: IntGauge,
    /// Sessions established after the first one.
    pub reconnects: IntCounter,
    /// Failed connection attempts, by reason.
    pub connect_failures: IntCounterVec,
    /// Batch bytes written to the link (frames, before QUIC overhead).
    pub bytes_sent: IntCounter,
    /// Certificate reloads, by result.
    pub tls_reloads: IntCounterVec,
    /// Present states sent completely.
    pub presents_sent: IntCounter,
    /// fsync and fdatasync calls of the spool (every policy).
    pub spool_syncs: IntCounter,
    /// The QUIC connections whose UDP datagrams and bytes are counted.
    pub(crate) udp: UdpTracker,
}

impl SenderMetrics {
    /// Creates and registers the metrics.
    pub fn register(reg: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            records_enqueued: counter(reg, "telemetry_sender_records_enqueued_total", "Records appended to the sender's spool.")?,
            records_acked: counter(reg, "telemetry_sender_records_acked_total", "Records acknowledged by a receiver and removed from the spool.")?,
            records_dropped: counter(
                reg,
                "telemetry_sender_records_dropped_total",
                "Records dropped from the spool before any receiver acknowledged them (spool full, disk full or corruption); counted over the spool's lifetime.",
            )?,
            last_seq: gauge(reg, "telemetry_sender_last_seq", "Highest sequence number assigned (survives restarts).")?,
            acked_seq: gauge(reg, "telemetry_sender_acked_seq", "Highest sequence number acknowledged by a receiver.")?,
            spool_records: gauge(reg, "telemetry_sender_spool_records", "Records in the spool awaiting acknowledgement.")?,
            spool_bytes: gauge(reg, "telemetry_sender_spool_bytes", "Bytes the spool occupies on disk.")?,
            spool_capacity_bytes: gauge(
                reg,
                "telemetry_sender_spool_capacity_bytes",
                "Bytes the spool may occupy before it drops its oldest records (the configured cap, or less when its filesystem has less room).",
            )?,
            connected: gauge(reg, "telemetry_sender_connected", "1 while a link session with a receiver is established.")?,
            reconnects: counter(reg, "telemetry_sender_reconnects_total", "Link sessions established after the first one.")?,
            connect_failures: counter_vec(
                reg,
                "telemetry_sender_connect_failures_total",
                "Failed attempts to establish a link session, by reason.",
                &["reason"],
            )?,
            bytes_sent: counter(reg, "telemetry_sender_bytes_sent_total", "Bytes of link frames written (before QUIC and UDP overhead).")?,
            presents_sent: counter(
                reg,
                "telemetry_sender_presents_sent_total",
                "Present states (the current view, sent ahead of the backlog) sent completely to a receiver.",
            )?,
            tls_reloads: counter_vec(
                reg,
                "telemetry_sender_tls_reloads_total",
                "Certificate/key/CA reloads, by result (ok or error).",
                &["result"],
            )?,
            spool_syncs: counter(
                reg,
                "telemetry_sender_spool_syncs_total",
                "fsync and fdatasync calls the spool made (appends, segment files, metadata), whatever the fsync policy.",
            )?,
            udp: UdpTracker::register(reg)?,
        })
    }

    /// UDP datagrams and bytes the sender's QUIC connections sent so far,
    /// as quinn counts them (`telemetry_sender_udp_*_sent_total`).
    pub fn udp_sent(&self) -> UdpSent {
        self.udp.totals()
    }
}

/// UDP traffic sent, as QUIC reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpSent {
    /// Datagrams.
    pub datagrams: u64,
    /// Bytes inside them (UDP payload).
    pub bytes: u64,
}

impl UdpSent {
    fn of(conn: &quinn::Connection) -> Self {
        let tx = conn.stats().udp_tx;
        Self {
            datagrams: tx.datagrams,
            bytes: tx.bytes,
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            datagrams: self.datagrams + other.datagrams,
            bytes: self.bytes + other.bytes,
        }
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// What connections no longer tracked sent.
    ended: UdpSent,
    live: HashMap<u64, quinn::Connection>,
    next_id: u64,
}

/// The sender's QUIC connections, for `telemetry_sender_udp_datagrams_sent_total`
/// and `telemetry_sender_udp_bytes_sent_total`: each connection is counted
/// from its handshake until its [`TrackedConnection`] is dropped, when its
/// final figures are added to the total; the counters are brought up to date
/// when the registry is gathered. Handshakes that never complete leave no
/// connection to read and are not counted.
#[derive(Debug, Clone)]
pub(crate) struct UdpTracker {
    tracked: Arc<Mutex<Tracked>>,
    datagrams: IntCounter,
    bytes: IntCounter,
}

impl UdpTracker {
    fn register(reg: &Registry) -> prometheus::Result<Self> {
        let tracker = Self {
            tracked: Arc::default(),
            datagrams: IntCounter::with_opts(Opts::new(
                "telemetry_sender_udp_datagrams_sent_total",
                "UDP datagrams the sender's QUIC connections sent (handshakes, records, acks, keep-alives), as QUIC counts them.",
            ))?,
            bytes: IntCounter::with_opts(Opts::new(
                "telemetry_sender_udp_bytes_sent_total",
                "UDP payload bytes the sender's QUIC connections sent, as QUIC counts them.",
            ))?,
        };
        reg.register(Box::new(tracker.clone()))?;
        Ok(tracker)
    }

    fn lock(&self) -> MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `conn`'s traffic until the returned guard is dropped.
    pub(crate) fn track(&self, conn: &quinn::Connection) -> TrackedConnection {
        let mut t = self.lock();
        let id = t.next_id;
        t.next_id += 1;
        t.live.insert(id, conn.clone());
        TrackedConnection {
            tracker: self.clone(),
            id,
        }
    }

    fn totals(&self) -> UdpSent {
        let t = self.lock();
        t.live.values().map(UdpSent::of).fold(t.ended, UdpSent::add)
    }
}

impl Collector for UdpTracker {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.datagrams.desc();
        d.extend(self.bytes.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Under the lock, so that concurrent gathers add each delta once.
        let t = self.lock();
        let now = t.live.values().map(UdpSent::of).fold(t.ended, UdpSent::add);
        for (counter, total) in [(&self.datagrams, now.datagrams), (&self.bytes, now.bytes)] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        drop(t);
        let mut families = self.datagrams.collect();
        families.extend(self.bytes.collect());
        families
    }
}

/// A connection counted by a [`UdpTracker`]; dropping it adds the
/// connection's final figures to the total (and releases the connection).
#[derive(Debug)]
pub(crate) struct TrackedConnection {
    tracker: UdpTracker,
    id: u64,
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        let mut t = self.tracker.lock();
        if let Some(conn) = t.live.remove(&self.id) {
            t.ended = t.ended.add(UdpSent::of(&conn));
        }
    }
}
