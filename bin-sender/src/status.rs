//! The sender's status page (`GET /`) and the exporter of its operations
//! endpoint: is the link up and to which receiver, how full is the spool,
//! what was dropped or refused, is the source ready, when does the
//! certificate expire.
//!
//! What it owns: the page's contents, from data the sender already has —
//! the link's status and spool statistics, the gathered metric families,
//! the source's readiness — rendered with [`telemetry_runtime::html`] (every
//! value escaped: error messages come from the network). A value the
//! sender does not have reads `—`.

use std::time::{Duration, Instant};

use prometheus::proto::MetricFamily;
use telemetry_link::{LinkStatus, Sender, SpoolStats};
use telemetry_runtime::{
    exposition::Format,
    html::{Cell, Page, Tone},
    http::Exporter,
    status::{certificate_not_after, expiry_cell, human_bytes, human_duration, unix_now, Families},
};
use telemetry_schema::ClusterRecord;
use tokio::sync::watch;

use crate::config::Settings;

/// Everything the page shows, collected at one moment.
#[derive(Debug)]
pub struct SenderStatus<'a> {
    /// The sender's version.
    pub version: &'static str,
    /// Time since start.
    pub uptime: Duration,
    /// The source (`kube`, `simulated`, `synthetic`).
    pub source: String,
    /// Whether the source finished its first full listing.
    pub source_ready: bool,
    /// Receivers in failover order.
    pub receivers: &'a [String],
    /// The link's state.
    pub link: LinkStatus,
    /// The spool's statistics.
    pub spool: SpoolStats,
    /// The registry's families.
    pub families: &'a [MetricFamily],
    /// End of validity of the sender's certificate (Unix seconds), if known.
    pub certificate_not_after: Option<i64>,
    /// Leadership among replicas of this sender, where leader election
    /// runs (`None`: not configured, nothing shown).
    pub leadership: Option<String>,
    /// Now, Unix seconds.
    pub now_unix: i64,
}

fn dash() -> Cell<'static> {
    Cell::text("—").tone(Tone::Muted)
}

impl SenderStatus<'_> {
    /// Writes the page into `out` (cleared first).
    pub fn render(&self, out: &mut String) {
        let subtitle = format!(
            "version {} · up {} · source {}",
            self.version,
            human_duration(self.uptime),
            self.source
        );
        let mut page = Page::begin(out, "telemetry-sender", &subtitle, Some(15));
        page.facts(&self.overview());
        page.section("Spool");
        page.facts(&self.spool_facts());
        page.note("The spool holds every record until a receiver acknowledged it. When it reaches its cap the oldest records are dropped and the receiver counts them as lost.");
        page.section("Link");
        page.facts(&self.link_facts());
        let failures = Families(self.families).by_label(
            "telemetry_sender_connect_failures_total",
            "reason",
            &[],
        );
        if failures.values().any(|v| *v > 0.0) {
            let mut table = page.table(&["Connect failures by reason", "Count"]);
            for (reason, n) in failures.into_iter().filter(|(_, n)| *n > 0.0) {
                table.row(&[Cell::text(reason), Cell::count(n as u64)]);
            }
        }
        page.footer(
            "telemetry-sender",
            &[
                ("/metrics", "metrics"),
                ("/readyz", "readiness"),
                ("/healthz", "health"),
            ],
        );
        page.end();
    }

    fn overview(&self) -> Vec<(&'static str, Cell<'_>)> {
        let link = match (&self.link.connected, &self.link.receiver) {
            (true, Some(receiver)) => {
                Cell::text(format!("connected to {receiver}")).tone(Tone::Good)
            }
            (true, None) => Cell::text("connected").tone(Tone::Good),
            (false, _) => Cell::text("not connected").tone(Tone::Bad),
        };
        let error = match &self.link.last_error {
            Some(e) => Cell::text(e.as_str()).tone(Tone::Warn),
            None => Cell::text("none").tone(Tone::Muted),
        };
        let source = if self.source_ready {
            Cell::text(format!("{}: ready", self.source)).tone(Tone::Good)
        } else {
            Cell::text(format!(
                "{}: waiting for its first full listing",
                self.source
            ))
            .tone(Tone::Warn)
        };
        let certificate = self
            .certificate_not_after
            .map_or_else(dash, |t| expiry_cell(t, self.now_unix));
        let mut facts = vec![
            ("Link", link),
            ("Last connection error", error),
            ("Source", source),
            (
                "Receivers (failover order)",
                Cell::text(self.receivers.join(", ")),
            ),
            ("Certificate expires", certificate),
            ("Uptime", Cell::text(human_duration(self.uptime))),
        ];
        if let Some(leadership) = &self.leadership {
            facts.push(("Leadership", Cell::text(leadership.as_str())));
        }
        facts
    }

    fn spool_facts(&self) -> Vec<(&'static str, Cell<'_>)> {
        let spool = &self.spool;
        let used = if spool.cap_bytes > 0 {
            spool.bytes as f64 / spool.cap_bytes as f64
        } else {
            0.0
        };
        let tone = if used >= 0.95 {
            Tone::Bad
        } else if used >= 0.8 {
            Tone::Warn
        } else {
            Tone::Good
        };
        let families = Families(self.families);
        let refused = families
            .sum("telemetry_sender_records_refused_total", &[])
            .map_or_else(dash, |v| {
                Cell::count(v as u64).tone(if v > 0.0 { Tone::Warn } else { Tone::Neutral })
            });
        let dropped = Cell::count(spool.dropped_total).tone(if spool.dropped_total > 0 {
            Tone::Bad
        } else {
            Tone::Neutral
        });
        vec![
            ("Records waiting for an ack", Cell::count(spool.records)),
            (
                "On disk",
                Cell::text(format!(
                    "{} of {} ({:.1} %)",
                    human_bytes(spool.bytes),
                    human_bytes(spool.cap_bytes),
                    used * 100.0
                ))
                .tone(tone),
            ),
            ("Last sequence", Cell::count(spool.last_seq)),
            ("Acknowledged sequence", Cell::count(spool.acked_seq)),
            ("Dropped (spool full or damaged)", dropped),
            ("Refused by the receiver", refused),
        ]
    }

    fn link_facts(&self) -> Vec<(&'static str, Cell<'_>)> {
        let families = Families(self.families);
        // Families the link registers: absent only while no series has a value.
        let count =
            |name: &str| Cell::count(families.sum(name, &[]).unwrap_or(0.0).max(0.0) as u64);
        let bytes = Cell::text(human_bytes(
            families
                .value("telemetry_sender_bytes_sent_total", &[])
                .unwrap_or(0.0)
                .max(0.0) as u64,
        ));
        vec![
            (
                "Records enqueued",
                count("telemetry_sender_records_enqueued_total"),
            ),
            (
                "Records acknowledged",
                count("telemetry_sender_records_acked_total"),
            ),
            ("Reconnects", count("telemetry_sender_reconnects_total")),
            (
                "Connect failures",
                count("telemetry_sender_connect_failures_total"),
            ),
            ("Sent", bytes),
            (
                "Present states sent",
                count("telemetry_sender_presents_sent_total"),
            ),
        ]
    }
}

/// What the sender's endpoint serves: `/metrics` from the registry,
/// `/readyz` from the source, `/` from the link and the registry.
pub struct SenderExporter {
    registry: prometheus::Registry,
    sender: Sender<ClusterRecord>,
    source_ready: watch::Receiver<bool>,
    started: Instant,
    settings: Settings,
}

impl std::fmt::Debug for SenderExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderExporter").finish_non_exhaustive()
    }
}

impl SenderExporter {
    /// Serves `registry`, `sender`'s state and the source's readiness.
    pub fn new(
        registry: prometheus::Registry,
        sender: Sender<ClusterRecord>,
        source_ready: watch::Receiver<bool>,
        settings: Settings,
    ) -> Self {
        Self {
            registry,
            sender,
            source_ready,
            started: Instant::now(),
            settings,
        }
    }
}

impl Exporter for SenderExporter {
    fn render(&self, format: Format, out: &mut String) {
        out.clear();
        telemetry_runtime::exposition::render_metric_families(out, format, &self.registry.gather());
        telemetry_runtime::exposition::finish(out, format);
    }

    fn render_status(&self, out: &mut String) {
        let families = self.registry.gather();
        let link = self.sender.status().borrow().clone();
        SenderStatus {
            version: env!("CARGO_PKG_VERSION"),
            uptime: self.started.elapsed(),
            source: format!("{:?}", self.settings.source).to_lowercase(),
            source_ready: *self.source_ready.borrow(),
            receivers: &self.settings.receivers,
            link,
            spool: self.sender.stats(),
            families: &families,
            certificate_not_after: certificate_not_after(&self.settings.tls.cert).ok(),
            leadership: None,
            now_unix: unix_now(),
        }
        .render(out);
    }

    fn ready(&self) -> Result<(), String> {
        if *self.source_ready.borrow() {
            Ok(())
        } else {
            Err("waiting for the source's first full listing".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_link_spool_and_escaped_errors() {
        let registry = prometheus::Registry::new();
        let metrics = telemetry_link::metrics::SenderMetrics::register(&registry).unwrap();
        metrics.reconnects.inc_by(3);
        metrics
            .connect_failures
            .with_label_values(&["timeout"])
            .inc_by(2);
        let families = registry.gather();
        let receivers = vec!["rx.example:4433".to_owned()];
        let status = SenderStatus {
            version: "9.9.9",
            uptime: Duration::from_secs(65),
            source: "simulated".into(),
            source_ready: true,
            receivers: &receivers,
            link: LinkStatus {
                connected: false,
                receiver: None,
                last_error: Some("handshake: <alert> unknown_ca".into()),
            },
            spool: SpoolStats {
                records: 1500,
                bytes: 900 << 20,
                last_seq: 4000,
                acked_seq: 2500,
                dropped_total: 7,
                uncertain: 0,
                segments: 3,
                cap_bytes: 1 << 30,
                syncs: 0,
            },
            families: &families,
            certificate_not_after: None,
            leadership: None,
            now_unix: 0,
        };
        let mut out = String::new();
        status.render(&mut out);
        assert!(out.contains("handshake: &lt;alert&gt; unknown_ca"), "{out}");
        assert!(out.contains("<dd class=\"bad\">not connected</dd>"));
        assert!(out.contains("900.0 MiB of 1.0 GiB (87.9 %)"));
        assert!(
            out.contains("<dd class=\"warn\">900.0 MiB"),
            "amber above 80 %"
        );
        assert!(out.contains("1\u{2009}500"));
        assert!(out.contains("<dd class=\"num bad\">7</dd>"), "dropped");
        assert!(out.contains("<td>timeout</td><td class=\"num\">2</td>"));
        assert!(!out.contains("Leadership"));
    }
}
