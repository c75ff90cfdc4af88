//! The receiver's status page (`GET /`): what a person opening the
//! receiver wants to know first — is it up, who is sending, are records
//! arriving, lost or refused, when do certificates expire, is remote
//! write keeping up.
//!
//! What it owns: the page's contents, from data the receiver already has —
//! the store's sender links ([`SenderLink`]), the link's and remote write's
//! gathered metric families, remote write's last errors, and a few facts of
//! the process. Rendering is [`telemetry_runtime::html`]'s, so every value
//! (sender identities, error messages) is escaped.
//!
//! What it guarantees: one row per sender the store or the link knows, in
//! cluster order; a value the receiver does not have yet reads `—`.
//! "Last seen" is the time since the sender's last connect, disconnect or
//! delivery; the receiver cannot know how far behind a sender is in
//! records (only the sender knows its newest sequence number), so that age
//! is the lag shown here.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use prometheus::proto::MetricFamily;
use telemetry_runtime::{
    html::{Cell, Page, Tone},
    status::{expiry_cell, human_bytes, human_duration, Families},
};

use crate::{remote_write::LastError, store::SenderLink};

/// Everything the page shows, collected at one moment.
#[derive(Debug)]
pub struct ReceiverStatus<'a> {
    /// The receiver's version.
    pub version: &'static str,
    /// Time since start.
    pub uptime: Duration,
    /// The QUIC address.
    pub quic: SocketAddr,
    /// End of validity of the receiver's own certificate (Unix seconds), if known.
    pub certificate_not_after: Option<i64>,
    /// Readiness.
    pub ready: Result<(), String>,
    /// The store's senders.
    pub links: Vec<SenderLink>,
    /// The registry's families (link, remote write, endpoint).
    pub families: &'a [MetricFamily],
    /// Remote-write endpoints and their last errors.
    pub remote_write: Vec<(String, Option<LastError>)>,
    /// Now, Unix seconds.
    pub now_unix: i64,
}

/// The link's per-sender families.
const RECEIVED: &str = "telemetry_link_records_received_total";
const LOST: &str = "telemetry_link_records_lost_total";
const REJECTED: &str = "telemetry_link_records_rejected_total";
const DUPLICATES: &str = "telemetry_link_duplicates_dropped_total";
const APPLIED_SEQ: &str = "telemetry_link_applied_seq";
const CERT_EXPIRY: &str = "telemetry_link_sender_certificate_expiry_timestamp_seconds";

fn dash() -> Cell<'static> {
    Cell::text("—").tone(Tone::Muted)
}

fn count(value: Option<f64>) -> Cell<'static> {
    value.map_or_else(dash, |v| Cell::count(v.max(0.0) as u64))
}

/// The applied sequence of a sender's stream, or of each replica's stream
/// (`replica: seq`, one per replica) when it runs several.
fn applied_cell(by_replica: &std::collections::BTreeMap<String, f64>) -> Cell<'static> {
    match by_replica.len() {
        0 => dash(),
        1 => count(by_replica.values().next().copied()),
        _ => Cell::text(
            by_replica
                .iter()
                .map(|(replica, seq)| format!("{replica}: {}", seq.max(0.0) as u64))
                .collect::<Vec<_>>()
                .join(" · "),
        ),
    }
}

/// A count that should stay 0: amber (or red with `bad`) above it.
fn alarm(value: Option<f64>, bad: bool) -> Cell<'static> {
    match value {
        Some(v) if v > 0.0 => count(value).tone(if bad { Tone::Bad } else { Tone::Warn }),
        _ => count(value),
    }
}

fn age(now_unix: i64, then_unix: f64) -> Cell<'static> {
    if then_unix <= 0.0 {
        return dash();
    }
    let seconds = (now_unix as f64 - then_unix).max(0.0) as u64;
    Cell::text(format!(
        "{} ago",
        human_duration(Duration::from_secs(seconds))
    ))
}

impl ReceiverStatus<'_> {
    /// Writes the page into `out` (cleared first).
    pub fn render(&self, out: &mut String) {
        let connected = self.links.iter().filter(|l| l.connections > 0).count();
        let subtitle = format!(
            "version {} · up {} · QUIC {}",
            self.version,
            human_duration(self.uptime),
            self.quic
        );
        let mut page = Page::begin(out, "telemetry-receiver", &subtitle, Some(15));
        let ready = match &self.ready {
            Ok(()) => Cell::text("ready").tone(Tone::Good),
            Err(reason) => Cell::text(format!("not ready: {reason}")).tone(Tone::Bad),
        };
        let certificate = self
            .certificate_not_after
            .map_or_else(dash, |t| expiry_cell(t, self.now_unix));
        page.facts(&[
            ("Status", ready),
            (
                "Senders connected",
                Cell::text(format!("{connected} of {}", self.senders().len())),
            ),
            ("QUIC address", Cell::text(self.quic.to_string())),
            ("Certificate expires", certificate),
            ("Uptime", Cell::text(human_duration(self.uptime))),
            ("Version", Cell::text(self.version)),
        ]);
        page.section("Senders");
        self.senders_table(&mut page);
        page.note("Last seen: time since the sender's last connect, disconnect or delivery. Lost: records the sender dropped before any receiver acknowledged them. Refused: records that could not be applied.");
        if !self.remote_write.is_empty() {
            page.section("Remote write");
            self.remote_write_table(&mut page);
        }
        page.footer(
            "telemetry-receiver",
            &[
                ("/metrics", "metrics"),
                ("/readyz", "readiness"),
                ("/healthz", "health"),
            ],
        );
        page.end();
    }

    /// Every sender the store or the link knows, with its link if the store has one.
    fn senders(&self) -> BTreeMap<String, Option<&SenderLink>> {
        let mut senders: BTreeMap<String, Option<&SenderLink>> = Families(self.families)
            .label_values(RECEIVED, "sender")
            .into_iter()
            .map(|s| (s, None))
            .collect();
        for link in &self.links {
            senders.insert(link.cluster.clone(), Some(link));
        }
        senders
    }

    fn senders_table(&self, page: &mut Page<'_>) {
        let families = Families(self.families);
        let mut table = page.table(&[
            "Cluster",
            "Link",
            "Last seen",
            "Applied seq",
            "Received",
            "Lost",
            "Refused",
            "Duplicates",
            "Certificate expires",
        ]);
        let senders = self.senders();
        if senders.is_empty() {
            table.empty("No sender has connected yet.");
        }
        for (sender, link) in senders {
            let labels = [("sender", sender.as_str())];
            let state = match link {
                Some(l) if l.connections > 1 => {
                    Cell::text(format!("connected ({} connections)", l.connections))
                        .tone(Tone::Good)
                }
                Some(l) if l.connections == 1 => Cell::text("connected").tone(Tone::Good),
                Some(l) if !l.up => Cell::text("gone (past its TTL)").tone(Tone::Bad),
                Some(l) => match l.disconnected_for {
                    Some(d) => Cell::text(format!("disconnected {}", human_duration(d))),
                    None => Cell::text("sending"),
                }
                .tone(Tone::Warn),
                None => Cell::text("unknown").tone(Tone::Muted),
            };
            let seen = link.map_or_else(dash, |l| age(self.now_unix, l.last_seen_unix));
            let refused = families.sum(REJECTED, &labels);
            let mut refused_cell = alarm(refused, false);
            let reasons: Vec<String> = families
                .by_label(REJECTED, "reason", &labels)
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(reason, v)| format!("{reason}: {v}"))
                .collect();
            if !reasons.is_empty() {
                refused_cell = refused_cell.hint(reasons.join(", "));
            }
            let certificate = families
                .value(CERT_EXPIRY, &labels)
                .map_or_else(dash, |t| expiry_cell(t as i64, self.now_unix));
            table.row(&[
                Cell::text(sender.clone()),
                state,
                seen,
                applied_cell(&families.by_label(APPLIED_SEQ, "replica", &labels)),
                count(families.value(RECEIVED, &labels)),
                alarm(families.value(LOST, &labels), true),
                refused_cell,
                count(families.value(DUPLICATES, &labels)),
                certificate,
            ]);
        }
    }

    fn remote_write_table(&self, page: &mut Page<'_>) {
        let families = Families(self.families);
        let mut table = page.table(&[
            "Endpoint",
            "Pending samples",
            "Queue",
            "Sent",
            "Failed",
            "Retried",
            "Dropped",
            "Last error",
        ]);
        for (endpoint, last_error) in &self.remote_write {
            let labels = [("endpoint", endpoint.as_str())];
            let value = |name: &str| families.value(name, &labels);
            let queue = value("telemetry_remote_write_queue_bytes")
                .map_or_else(dash, |b| Cell::num(human_bytes(b.max(0.0) as u64)));
            let error = match last_error {
                None => Cell::text("none").tone(Tone::Muted),
                Some(e) => {
                    let seconds = (self.now_unix - e.unix_ms.div_euclid(1000)).max(0) as u64;
                    Cell::text(format!(
                        "{} ago: {}",
                        human_duration(Duration::from_secs(seconds)),
                        e.message
                    ))
                    .tone(Tone::Warn)
                }
            };
            table.row(&[
                Cell::text(endpoint.clone()),
                count(value("telemetry_remote_write_samples_pending")),
                queue,
                count(value("telemetry_remote_write_samples_sent_total")),
                alarm(value("telemetry_remote_write_samples_failed_total"), true),
                count(value("telemetry_remote_write_samples_retried_total")),
                alarm(value("telemetry_remote_write_samples_dropped_total"), true),
                error,
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use telemetry_link::metrics::ReceiverMetrics;

    use super::*;
    use crate::store::{ClusterStore, StoreConfig};

    #[test]
    fn the_page_shows_each_sender_and_escapes_what_came_from_the_network() {
        let registry = prometheus::Registry::new();
        let link = ReceiverMetrics::register(&registry).unwrap();
        let evil = "<b>evil</b>";
        for sender in ["lab", evil] {
            link.init_sender(sender);
        }
        link.records_received
            .with_label_values(&["lab"])
            .inc_by(1234);
        link.records_lost.with_label_values(&["lab"]).inc_by(2);
        link.applied_seq.with_label_values(&["lab", ""]).set(1234);
        link.sender_certificate_expiry
            .with_label_values(&["lab"])
            .set(1_800_000_000);
        let t0 = Instant::now();
        let mut store = ClusterStore::new(StoreConfig::with_sender_ttl(Duration::from_secs(60)));
        store.sender_connected("lab", t0);
        store.sender_connected(evil, t0);
        store.sender_disconnected(evil, t0 + Duration::from_secs(5));
        let families = registry.gather();
        let now_unix = telemetry_runtime::status::unix_now();
        let status = ReceiverStatus {
            version: "9.9.9",
            uptime: Duration::from_secs(3700),
            quic: "127.0.0.1:4433".parse().unwrap(),
            certificate_not_after: Some(now_unix + 3 * 86_400),
            ready: Ok(()),
            links: store.sender_links(t0 + Duration::from_secs(35)),
            families: &families,
            remote_write: vec![(
                "http://prom:9090/api/v1/write".into(),
                Some(LastError {
                    unix_ms: (now_unix - 30) * 1000,
                    message: "retrying: 503 <html>".into(),
                }),
            )],
            now_unix,
        };
        let mut out = String::new();
        status.render(&mut out);
        assert!(!out.contains("<b>evil"), "escaped: {out}");
        assert!(out.contains("&lt;b&gt;evil&lt;/b&gt;"));
        assert!(out.contains("1 of 2"), "connected senders");
        let lab_row = out
            .split("<tr>")
            .find(|row| row.contains("<td>lab</td>"))
            .unwrap_or_else(|| panic!("no row for lab: {out}"));
        assert!(
            lab_row.contains("<td class=\"good\">connected</td>"),
            "{lab_row}"
        );
        assert!(lab_row.contains("1\u{2009}234"), "{lab_row}");
        assert!(
            lab_row.contains("<td class=\"num bad\">2</td>"),
            "lost: {lab_row}"
        );
        assert!(lab_row.contains("2027-01-15"), "certificate: {lab_row}");
        assert!(out.contains("disconnected 30s"), "{out}");
        assert!(out.contains("retrying: 503 &lt;html&gt;"));
        assert!(out.contains("up 1h 1m"));
    }

    #[test]
    fn no_sender_yet_and_not_ready() {
        let status = ReceiverStatus {
            version: "1",
            uptime: Duration::ZERO,
            quic: "[::]:4433".parse().unwrap(),
            certificate_not_after: None,
            ready: Err("loading state".into()),
            links: Vec::new(),
            families: &[],
            remote_write: Vec::new(),
            now_unix: 0,
        };
        let mut out = String::new();
        status.render(&mut out);
        assert!(out.contains("No sender has connected yet."));
        assert!(out.contains("not ready: loading state"));
        assert!(!out.contains("Remote write"));
    }
}
