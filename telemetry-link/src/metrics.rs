//! The link's own Prometheus metrics, registered in a registry the
//! application owns and exposes.
//!
//! Label cardinality is bounded by what connects: `sender` by the
//! identities the CA signed (and the allow list admits), `replica` by the
//! replicas of those (only `telemetry_link_applied_seq`, the one
//! per-stream position, carries it; counters add up per sender), `reason`
//! by closed sets.
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

use crate::proto::refused::RefusedReason;

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
    /// Records refused (settled without being applied), per sender and
    /// reason.
    pub records_rejected: IntCounterVec,
    /// Highest applied sequence, as persisted, per sender and replica.
    pub applied_seq: IntGaugeVec,
    /// Connections refused before or during the hello, by reason.
    pub handshake_failures: IntCounterVec,
    /// Admission: Retries, handshakes in progress, revoked sessions.
    pub admission: AdmissionMetrics,
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
    /// Records of presents the handler refused, per sender and reason (also
    /// counted in `records_rejected`).
    pub present_records_rejected: IntCounterVec,
    /// End of validity of each sender's certificate, as of its last handshake.
    pub sender_certificate_expiry: IntGaugeVec,
    /// fsync and fdatasync calls of the receiver's state (journal appends,
    /// compactions, directory syncs).
    pub state_syncs: IntCounter,
    /// UDP datagrams sent to each sender, as QUIC counts them.
    pub udp_datagrams_sent: IntCounterVec,
    /// UDP payload bytes sent to each sender, as QUIC counts them.
    pub udp_bytes_sent: IntCounterVec,
}

/// Every handshake refusal reason, exported at 0 from the start so that
/// `rate()`/`increase()` see the first refusal and alert rules find the
/// series. Certificates: `no_certificate` … `bad_crl`; the TLS and QUIC
/// handshake: `alpn_mismatch` … `reset`; who the peer is: `bad_identity`,
/// `not_allowed`; admission: `busy`, `handshake_limit`, `address_limit`;
/// the hello: `no_hello` … `frame_too_large`.
pub const HANDSHAKE_FAILURE_REASONS: [&str; 30] = [
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "unknown_revocation",
    "bad_eku",
    "bad_signature",
    "bad_certificate",
    "bad_crl",
    "alpn_mismatch",
    "tls_version",
    "tls_error",
    "transport_error",
    "peer_rejected_certificate",
    "peer_closed",
    "handshake_timeout",
    "quic_version",
    "reset",
    "bad_identity",
    "not_allowed",
    "busy",
    "handshake_limit",
    "address_limit",
    "no_hello",
    "hello_timeout",
    "bad_hello",
    "bad_replica",
    "unsupported_version",
    "frame_too_large",
];

impl ReceiverMetrics {
    /// Exports a sender's counters at 0 when it first connects (refusals
    /// for every known reason), so the first duplicate, loss or refusal
    /// shows up in `increase()`.
    pub fn init_sender(&self, sender: &str) {
        for counter in [
            &self.records_received,
            &self.duplicates_dropped,
            &self.records_lost,
            &self.udp_datagrams_sent,
            &self.udp_bytes_sent,
        ] {
            counter.with_label_values(&[sender]);
        }
        for reason in RefusedReason::ALL {
            self.records_rejected
                .with_label_values(&[sender, reason.as_str()]);
            self.present_records_rejected
                .with_label_values(&[sender, reason.as_str()]);
        }
    }

    /// Records the end of validity of `sender`'s certificate (DER, as
    /// presented in its handshake); a certificate that does not parse leaves
    /// the gauge as it was.
    pub fn observe_sender_certificate(&self, sender: &str, cert_der: Option<&[u8]>) {
        use x509_parser::prelude::FromDer;
        let parsed =
            cert_der.and_then(|der| x509_parser::certificate::X509Certificate::from_der(der).ok());
        if let Some((_, cert)) = parsed {
            self.sender_certificate_expiry
                .with_label_values(&[sender])
                .set(cert.validity().not_after.timestamp());
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

    // One registration per metric family, in the order of the struct's
    // fields: a flat list, longer than 80 lines, with nothing to split.
    #[allow(clippy::too_many_lines)]
    fn register_families(reg: &Registry) -> prometheus::Result<Self> {
        let (udp_datagrams_sent, udp_bytes_sent) = Self::register_udp(reg)?;
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
                "Records refused, by reason: settled (acknowledged, never delivered again) without being applied. undecodable: not the application's payload type; series_limit, label_limit: the link's interning budget or label limits; budget, invalid, fenced, other: refused by the application. Includes records of presents (telemetry_link_present_records_rejected_total), which are not sequenced and not reported to the sender.",
                &["sender", "reason"],
            )?,
            applied_seq: gauge_vec(
                reg,
                "telemetry_link_applied_seq",
                "Highest sequence number applied and persisted for the current stream of the sender's replica (replica empty: the default one).",
                &["sender", "replica"],
            )?,
            handshake_failures: counter_vec(
                reg,
                "telemetry_link_handshake_failures_total",
                "Connections refused during the TLS handshake or the link hello, by reason.",
                &["reason"],
            )?,
            admission: AdmissionMetrics::register(reg)?,
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
                "Present states received per sender, by result: applied, partly_refused (the application refused some of its records), handler_refused (the application refused every record), refused (malformed or too large), abandoned (the sender replaced or the connection dropped it), handler_error.",
                &["sender", "result"],
            )?,
            present_records_rejected: counter_vec(
                reg,
                "telemetry_link_present_records_rejected_total",
                "Records of present states the application refused, by reason (budget, invalid, fenced, ...); a part of telemetry_link_records_rejected_total. Presents are not sequenced: the sender is not told.",
                &["sender", "reason"],
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
            sender_certificate_expiry: gauge_vec(
                reg,
                "telemetry_link_sender_certificate_expiry_timestamp_seconds",
                "End of validity (Unix seconds) of each sender's client certificate, as presented in its last handshake.",
                &["sender"],
            )?,
            state_syncs: counter(
                reg,
                "telemetry_link_state_syncs_total",
                "fsync and fdatasync calls made to keep the senders' applied positions durable (journal group commits, compactions, directory syncs).",
            )?,
            udp_datagrams_sent,
            udp_bytes_sent,
        })
    }
}

impl ReceiverMetrics {
    fn register_udp(reg: &Registry) -> prometheus::Result<(IntCounterVec, IntCounterVec)> {
        let when = "as QUIC counts them (updated at each acknowledgement and when a session ends)";
        Ok((
            counter_vec(
                reg,
                "telemetry_link_udp_datagrams_sent_total",
                &format!("UDP datagrams sent on the sender's connections, {when}."),
                &["sender"],
            )?,
            counter_vec(
                reg,
                "telemetry_link_udp_bytes_sent_total",
                &format!("UDP payload bytes sent on the sender's connections, {when}."),
                &["sender"],
            )?,
        ))
    }
}

/// The receiver's admission metrics (besides the refusals, which are
/// `telemetry_link_handshake_failures_total`).
#[derive(Debug, Clone)]
pub struct AdmissionMetrics {
    /// Handshakes asked to prove their address with a QUIC Retry.
    pub retries: IntCounter,
    /// Handshakes in progress (not yet authenticated).
    pub pending: IntGauge,
    /// Established sessions closed because a reloaded CRL revokes the
    /// sender's certificate.
    pub sessions_revoked: IntCounter,
}

impl AdmissionMetrics {
    fn register(reg: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            retries: counter(
                reg,
                "telemetry_link_handshake_retries_total",
                "Handshakes asked to prove their address with a QUIC Retry first (the receiver is under handshake pressure: half its pending-handshake budget in use).",
            )?,
            pending: gauge(
                reg,
                "telemetry_link_handshakes_pending",
                "Handshakes in progress: admitted, the peer's certificate not yet verified.",
            )?,
            sessions_revoked: counter(
                reg,
                "telemetry_link_sessions_revoked_total",
                "Established sessions closed because a reloaded CRL revokes the sender's certificate.",
            )?,
        })
    }
}

/// Sender-side metrics.
#[derive(Debug, Clone)]
pub struct SenderMetrics {
    /// Records appended to the spool.
    pub records_enqueued: IntCounter,
    /// Records acknowledged by a receiver (applied or refused).
    pub records_acked: IntCounter,
    /// Records a receiver refused, by reason (among the acknowledged).
    pub records_refused: IntCounterVec,
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
    /// Creates and registers the metrics; refusals are exported at 0 for
    /// every known reason.
    pub fn register(reg: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::register_families(reg)?;
        for reason in RefusedReason::ALL {
            metrics
                .records_refused
                .with_label_values(&[reason.as_str()]);
        }
        Ok(metrics)
    }

    fn register_families(reg: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            records_enqueued: counter(reg, "telemetry_sender_records_enqueued_total", "Records appended to the sender's spool.")?,
            records_acked: counter(reg, "telemetry_sender_records_acked_total", "Records acknowledged by a receiver (applied or refused) and removed from the spool.")?,
            records_refused: counter_vec(
                reg,
                "telemetry_sender_records_refused_total",
                "Records a receiver refused, by reason (settled: removed from the spool with the acknowledgement, never sent again; included in telemetry_sender_records_acked_total).",
                &["reason"],
            )?,
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
