//! The receiver's `/metrics` state: each sender's clusters as the record
//! interpretation sees them now ([`crate::interpret`], the *current*
//! view), the sender's connection state, and the page that exposes them.
//!
//! What it owns: per cluster (the sender's certificate identity) the
//! interpretation's model, the sender's link state and last sight, and the
//! page (`render`; families, names and label orders in
//! `crate::interpret::families`). With [`ClusterStore::keep_timeline`]
//! the models also keep the timeline, and applying a delivery returns its
//! remote-write samples, so each delivery is interpreted once for both
//! consumers.
//!
//! What it guarantees:
//! - Records are applied in order, by the rules of [`crate::interpret`]:
//!   the present comes first ([`ClusterStore::present_at`]) and the
//!   backlog it covers never moves `/metrics` back. A cluster's sender may
//!   run as several replicas, each its own stream: presents, history and
//!   observation times are per stream, and object state of an older
//!   leadership epoch is refused and counted ([`Delivered::refused`],
//!   [`PresentOutcome::Fenced`]).
//! - Each cluster keeps within its budgets (sample series, object units:
//!   [`crate::interpret::budget`]); what does not fit is refused and
//!   counted by reason ([`Delivered::refused`], [`PresentOutcome::Applied`]).
//! - `telemetry_link_sender_up{cluster}` is 1 while the sender is connected or
//!   has been disconnected for at most `sender_ttl`; [`ClusterStore::expire`]
//!   removes every series of a cluster disconnected for longer and turns it
//!   to 0. The cluster's `up` and `last_seen` series are kept forever (one
//!   pair per sender identity ever seen).
//! - A connection count is kept per cluster, so a new connection accepted
//!   before the old one's close is processed keeps the cluster connected.
//! - Rendering takes `&self`, writes into a caller-owned `String` (reuse it
//!   between scrapes to avoid re-growing it) and is deterministic.
//!
//! Time: the store takes `now` as a monotonic [`Instant`] and turns it into
//! Unix time through an anchor taken at construction, so tests control time.
//! Call [`ClusterStore::expire`] (or [`ClusterStore::scrape`], which does it)
//! before rendering.

mod render;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use prometheus::proto::MetricFamily;
use telemetry_link::RefusedCounts;
use telemetry_runtime::exposition::{self, push_label, Format};
use telemetry_schema::ClusterRecord;

pub use crate::interpret::PresentOutcome;
use crate::{
    interpret::{facts::NoFacts, families::FAMILIES, ClusterModel, Limits},
    remote_write::convert::Converted,
};

/// What applying a delivery did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The delivery's remote-write samples (none unless the store keeps the
    /// timeline).
    pub converted: Converted,
    /// Records refused, by reason (not applied: over a budget, invalid,
    /// object state of an older leadership epoch than the cluster's).
    pub refused: RefusedCounts,
}

/// Limits and timings of a [`ClusterStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long a disconnected sender's series are kept.
    pub sender_ttl: Duration,
    /// The interpretation's limits, per cluster.
    pub limits: Limits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sender_ttl: Duration::from_secs(300),
            limits: Limits::default(),
        }
    }
}

impl StoreConfig {
    /// The defaults with `sender_ttl`.
    pub fn with_sender_ttl(sender_ttl: Duration) -> Self {
        Self {
            sender_ttl,
            ..Self::default()
        }
    }
}

/// A sender's link, as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// This many connections are open (0 when the cluster was first seen
    /// through records rather than a connect).
    Connected { connections: u32 },
    /// No connection since `since`.
    Disconnected { since: Instant },
    /// Disconnected beyond the TTL: series removed, `up` is 0.
    Expired,
}

/// Everything known about one cluster.
#[derive(Debug)]
struct ClusterState {
    /// `cluster="…"`, escaped.
    cluster_label: String,
    link: LinkState,
    last_seen_unix: f64,
    model: ClusterModel,
}

impl ClusterState {
    fn new(cluster: &str, link: LinkState, timeline: bool) -> Self {
        let mut cluster_label = String::with_capacity(cluster.len() + 10);
        push_label(&mut cluster_label, "cluster", cluster);
        Self {
            cluster_label,
            link,
            last_seen_unix: 0.0,
            model: ClusterModel::new(true, timeline),
        }
    }
}

/// One sender's link, for the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderLink {
    /// The cluster (the sender's certificate identity).
    pub cluster: String,
    /// Open connections (0 when disconnected or first seen through records).
    pub connections: u32,
    /// Connected, or disconnected within the TTL.
    pub up: bool,
    /// How long it has been disconnected (`None` while connected; for an
    /// expired sender, unknown).
    pub disconnected_for: Option<Duration>,
    /// Unix seconds of the last connect, disconnect or delivery.
    pub last_seen_unix: f64,
}

/// Maps monotonic instants to Unix time.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    anchor: Instant,
    anchor_unix_ms: i64,
}

impl WallClock {
    fn now() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_unix_ms: telemetry_link::unix_ms(),
        }
    }

    /// Milliseconds between the anchor and `at` (negative before it).
    fn offset_ms(&self, at: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match at.checked_duration_since(self.anchor) {
            Some(after) => ms(after),
            None => -ms(self.anchor.duration_since(at)),
        }
    }

    fn unix_ms(&self, at: Instant) -> i64 {
        self.anchor_unix_ms.saturating_add(self.offset_ms(at))
    }

    fn unix_seconds(&self, at: Instant) -> f64 {
        let after = match at.checked_duration_since(self.anchor) {
            Some(after) => after.as_secs_f64(),
            None => -self.anchor.duration_since(at).as_secs_f64(),
        };
        self.anchor_unix_ms as f64 / 1000.0 + after
    }
}

/// The metric state of every cluster. See the module documentation.
#[derive(Debug)]
pub struct ClusterStore {
    config: StoreConfig,
    clusters: BTreeMap<String, ClusterState>,
    clock: WallClock,
    /// Whether the models keep the timeline (for remote write).
    timeline: bool,
    /// `,phase="…"` of every pod phase, for rendering.
    phase_labels: [String; 5],
    /// Counts the calls that may have changed what is rendered.
    revision: u64,
}

impl ClusterStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            clusters: BTreeMap::new(),
            clock: WallClock::now(),
            timeline: false,
            phase_labels: render::phase_labels(),
            revision: 0,
        }
    }

    /// A number that changes whenever the store may have changed: every
    /// apply, delivery, present, connect, disconnect and expiry adds one.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn changed(&mut self) {
        self.revision = self.revision.wrapping_add(1);
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// From now on also keeps every cluster's timeline, so that
    /// [`ClusterStore::apply_delivery_at`] returns the delivery's
    /// remote-write samples.
    pub fn keep_timeline(&mut self) {
        self.timeline = true;
        for state in self.clusters.values_mut() {
            state.model.keep_timeline();
        }
    }

    /// The clusters known (including expired ones), in order.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters.keys().map(String::as_str)
    }

    /// True while `cluster` is connected or disconnected within the TTL (as of
    /// the last [`ClusterStore::expire`]); `None` for an unknown cluster.
    pub fn sender_up(&self, cluster: &str) -> Option<bool> {
        self.clusters
            .get(cluster)
            .map(|state| !matches!(state.link, LinkState::Expired))
    }

    /// Every sender's link at `now`, in cluster order (as of the last
    /// [`ClusterStore::expire`]).
    pub fn sender_links(&self, now: Instant) -> Vec<SenderLink> {
        self.clusters
            .iter()
            .map(|(cluster, state)| {
                let (connections, up, disconnected_for) = match state.link {
                    LinkState::Connected { connections } => (connections, true, None),
                    LinkState::Disconnected { since } => {
                        (0, true, Some(now.saturating_duration_since(since)))
                    }
                    LinkState::Expired => (0, false, None),
                };
                SenderLink {
                    cluster: cluster.clone(),
                    connections,
                    up,
                    disconnected_for,
                    last_seen_unix: state.last_seen_unix,
                }
            })
            .collect()
    }

    fn cluster_mut(&mut self, cluster: &str, link_if_new: LinkState) -> &mut ClusterState {
        if !self.clusters.contains_key(cluster) {
            tracing::info!(cluster, "first contact with a cluster");
        }
        let timeline = self.timeline;
        self.clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| ClusterState::new(cluster, link_if_new, timeline))
    }

    /// The cluster that sent records at `now`: created connected when new;
    /// an expired one starts its TTL again (a connect should have come
    /// first).
    fn sending(&mut self, cluster: &str, now: Instant) -> &mut ClusterState {
        let last_seen = self.clock.unix_seconds(now);
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        if state.link == LinkState::Expired {
            tracing::debug!(cluster, "records for an expired cluster without a connect");
            state.link = LinkState::Disconnected { since: now };
        }
        state.last_seen_unix = last_seen;
        state
    }

    /// Applies `records` from `cluster`'s sender, in order, now; returns
    /// the records refused, by reason.
    pub fn apply(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = ClusterRecord>,
    ) -> RefusedCounts {
        self.apply_at(cluster, records, Instant::now())
    }

    /// Applies `records` from `cluster`'s sender, in order, at `now`, as
    /// news (none of them is history). A cluster first seen here counts as
    /// connected; records for an expired cluster start its TTL again (a
    /// connect should have come first). Returns the records refused, by
    /// reason.
    pub fn apply_at(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = ClusterRecord>,
        now: Instant,
    ) -> RefusedCounts {
        self.changed();
        let now_ms = self.clock.unix_ms(now);
        let limits = self.config.limits;
        let state = self.sending(cluster, now);
        state
            .model
            .apply_news(cluster, records, now_ms, &limits, &mut NoFacts)
    }

    /// Applies a delivery: `records` are sequence numbers `first_seq..` of
    /// `cluster`'s stream `stream_id`. Those the stream's last present
    /// covers are history (see [`crate::interpret`]). Returns the
    /// delivery's remote-write samples when the store keeps the timeline
    /// ([`ClusterStore::keep_timeline`]; none otherwise) and the records
    /// refused, by reason; object state without an observation time is
    /// stamped `now`.
    pub fn deliver_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        first_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) -> Delivered {
        let mut delivered = Delivered::default();
        if records.is_empty() {
            return delivered;
        }
        self.changed();
        let now_ms = self.clock.unix_ms(now);
        let limits = self.config.limits;
        let timeline = self.timeline;
        let model = &mut self.sending(cluster, now).model;
        let position = (stream_id, first_seq);
        let converted = &mut delivered.converted;
        delivered.refused = if timeline {
            model.apply_delivery(cluster, position, records, now_ms, &limits, converted)
        } else {
            model.apply_delivery(cluster, position, records, now_ms, &limits, &mut NoFacts)
        };
        delivered
    }

    /// [`ClusterStore::deliver_at`], returning only the remote-write
    /// samples.
    pub fn apply_delivery_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        first_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) -> Converted {
        self.deliver_at(cluster, stream_id, first_seq, records, now)
            .converted
    }

    /// Applies a sender's present state (its current view, ahead of its
    /// backlog), unless records of its stream newer than it were applied
    /// already, or it comes from an older leadership epoch than the
    /// cluster's; records of an applied present may be refused one by one
    /// (over a budget, invalid).
    pub fn present_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        covers_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) -> PresentOutcome {
        self.changed();
        let limits = self.config.limits;
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        let outcome = state
            .model
            .apply_present(cluster, (stream_id, covers_seq), records, &limits);
        if matches!(outcome, PresentOutcome::Applied(_)) {
            self.sending(cluster, now);
        }
        outcome
    }

    /// [`ClusterStore::present_at`]; true if the present was applied.
    pub fn apply_present_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        covers_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) -> bool {
        matches!(
            self.present_at(cluster, stream_id, covers_seq, records, now),
            PresentOutcome::Applied(_)
        )
    }

    /// `cluster`'s sender connected at `now`.
    pub fn sender_connected(&mut self, cluster: &str, now: Instant) {
        self.changed();
        let last_seen = self.clock.unix_seconds(now);
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        state.link = match state.link {
            LinkState::Connected { connections } => LinkState::Connected {
                connections: connections.saturating_add(1),
            },
            LinkState::Disconnected { .. } | LinkState::Expired => {
                LinkState::Connected { connections: 1 }
            }
        };
        state.last_seen_unix = last_seen;
        tracing::debug!(cluster, link = ?state.link, "sender connected");
    }

    /// One of `cluster`'s connections closed at `now`. When none is left the
    /// TTL starts.
    pub fn sender_disconnected(&mut self, cluster: &str, now: Instant) {
        self.changed();
        let last_seen = self.clock.unix_seconds(now);
        let Some(state) = self.clusters.get_mut(cluster) else {
            tracing::debug!(cluster, "disconnect of a cluster never seen; ignored");
            return;
        };
        state.last_seen_unix = last_seen;
        state.link = match state.link {
            LinkState::Connected { connections } if connections > 1 => LinkState::Connected {
                connections: connections - 1,
            },
            LinkState::Connected { .. } => LinkState::Disconnected { since: now },
            other => other,
        };
        tracing::debug!(cluster, link = ?state.link, "sender disconnected");
    }

    /// Removes the series of every cluster disconnected for longer than the
    /// TTL at `now` (their `up` turns 0). Returns how many expired now.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.config.sender_ttl;
        let mut expired = 0;
        for (cluster, state) in &mut self.clusters {
            if let LinkState::Disconnected { since } = state.link {
                if now.saturating_duration_since(since) > ttl {
                    tracing::info!(cluster = %cluster, ttl = ?ttl, "sender gone beyond its TTL; removing its series");
                    state.model.forget_current();
                    state.link = LinkState::Expired;
                    expired += 1;
                }
            }
        }
        if expired > 0 {
            self.changed();
        }
        expired
    }

    /// A whole page into `out` (cleared first): the store's families, then
    /// `registry_families` (e.g. the link library's
    /// `prometheus::Registry::gather()`), then `# EOF` for OpenMetrics.
    /// Registry families whose names clash with the store's are skipped with
    /// a warning, so the page never declares a family twice.
    pub fn render_page(
        &self,
        format: Format,
        registry_families: &[MetricFamily],
        out: &mut String,
    ) {
        out.clear();
        self.render(format, out);
        let clash = |family: &MetricFamily| FAMILIES.iter().any(|own| own.name == family.name());
        if registry_families.iter().any(clash) {
            let kept: Vec<MetricFamily> = registry_families
                .iter()
                .filter(|family| {
                    let clashes = clash(family);
                    if clashes {
                        tracing::warn!(
                            family = family.name(),
                            "registry family clashes with a store family; skipped"
                        );
                    }
                    !clashes
                })
                .cloned()
                .collect();
            exposition::render_metric_families(out, format, &kept);
        } else {
            exposition::render_metric_families(out, format, registry_families);
        }
        exposition::finish(out, format);
    }

    /// What a `/metrics` handler does: [`ClusterStore::expire`] at `now`, then
    /// [`ClusterStore::render_page`].
    pub fn scrape(
        &mut self,
        now: Instant,
        format: Format,
        registry_families: &[MetricFamily],
        out: &mut String,
    ) {
        self.expire(now);
        self.render_page(format, registry_families, out);
    }
}

#[cfg(test)]
mod tests;
