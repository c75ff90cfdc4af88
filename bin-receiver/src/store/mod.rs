//! The receiver's record → metric state: what each sender has told us about
//! its cluster, ready to be rendered as a `/metrics` page.
//!
//! What it owns: per cluster (the sender's certificate identity) the pods,
//! HPAs and generic samples built from [`ClusterRecord`]s, the sender's
//! connection state, and the page that exposes them
//! ([`render::STORE_FAMILIES`] lists the families, names and label orders).
//!
//! What it guarantees:
//! - Records are applied in order; upserts replace an object's state, deletes
//!   remove all of an object's series at once, and a snapshot replaces the
//!   cluster's state for its kinds at its end (details in `store/objects.rs`).
//! - The present comes first: a sender's present state
//!   ([`ClusterStore::apply_present_at`]) is applied as it arrives, ahead of
//!   its backlog. Records of the same stream up to the present's
//!   `covers_seq` that arrive afterwards are history: they do not change
//!   object state (pods, HPAs, snapshots), a sample or a pod's usage only
//!   replaces an older measurement, and scale events still count (each
//!   once). So `/metrics` shows the present within a round trip of the
//!   reconnect and never moves back while the backlog drains. A present
//!   older than records already applied is ignored.
//! - Generic samples become gauges named by the sample's metric with its
//!   labels plus `cluster` (overriding a `cluster` label sent by the sender);
//!   the last value wins (details in `store/samples.rs`).
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

mod objects;
pub mod render;
mod samples;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::proto::MetricFamily;
use telemetry_schema::ClusterRecord;

pub use samples::SampleRefusal;

use objects::{ClusterObjects, ObjectLimits};
use samples::ClusterSamples;
use telemetry_runtime::exposition::{self, push_label, Format};

/// Limits and timings of a [`ClusterStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long a disconnected sender's series are kept.
    pub sender_ttl: Duration,
    /// Scale-event keys remembered per HPA for de-duplication.
    pub scale_event_keys_per_hpa: usize,
    /// Snapshots that may be open at once per cluster.
    pub max_open_snapshots: usize,
    /// Generic sample series kept per cluster.
    pub max_sample_series_per_cluster: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sender_ttl: Duration::from_secs(300),
            scale_event_keys_per_hpa: 256,
            max_open_snapshots: 8,
            max_sample_series_per_cluster: 100_000,
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
    objects: ClusterObjects,
    samples: ClusterSamples,
    /// Stream and sequence of the last present applied.
    present: Option<(u128, u64)>,
    /// Stream and highest sequence applied from deliveries.
    applied: Option<(u128, u64)>,
}

impl ClusterState {
    fn new(cluster: &str, link: LinkState) -> Self {
        let mut cluster_label = String::with_capacity(cluster.len() + 10);
        push_label(&mut cluster_label, "cluster", cluster);
        Self {
            cluster_label,
            link,
            last_seen_unix: 0.0,
            objects: ClusterObjects::default(),
            samples: ClusterSamples::default(),
            present: None,
            applied: None,
        }
    }
}

/// Maps monotonic instants to Unix time.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    anchor: Instant,
    anchor_unix_seconds: f64,
}

impl WallClock {
    fn now() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_unix_seconds: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    fn unix_seconds(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.anchor) {
            Some(after) => self.anchor_unix_seconds + after.as_secs_f64(),
            None => self.anchor_unix_seconds - self.anchor.duration_since(at).as_secs_f64(),
        }
    }
}

/// The metric state of every cluster. See the module documentation.
#[derive(Debug)]
pub struct ClusterStore {
    config: StoreConfig,
    clusters: BTreeMap<String, ClusterState>,
    clock: WallClock,
}

impl ClusterStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            clusters: BTreeMap::new(),
            clock: WallClock::now(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
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

    fn cluster_mut(&mut self, cluster: &str, link_if_new: LinkState) -> &mut ClusterState {
        if !self.clusters.contains_key(cluster) {
            tracing::info!(cluster, "first contact with a cluster");
        }
        self.clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| ClusterState::new(cluster, link_if_new))
    }

    /// Applies `records` from `cluster`'s sender, in order, now.
    pub fn apply(&mut self, cluster: &str, records: impl IntoIterator<Item = ClusterRecord>) {
        self.apply_at(cluster, records, Instant::now());
    }

    /// Applies `records` from `cluster`'s sender, in order, at `now`, as
    /// news (none of them is history). A cluster first seen here counts as
    /// connected; records for an expired cluster start its TTL again (a
    /// connect should have come first).
    pub fn apply_at(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = ClusterRecord>,
        now: Instant,
    ) {
        self.apply_records(cluster, records.into_iter().map(|r| (r, false)), now);
    }

    /// Applies a delivery: `records` are sequence numbers `first_seq..` of
    /// `cluster`'s stream `stream_id`. Those the last present covers are
    /// history (see the module documentation).
    pub fn apply_delivery_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        first_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) {
        if records.is_empty() {
            return;
        }
        let last_seq = first_seq + records.len() as u64 - 1;
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        let covers = match state.present {
            Some((stream, covers)) if stream == stream_id => covers,
            _ => 0,
        };
        state.applied = Some((stream_id, last_seq));
        let tagged = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, first_seq + i as u64 <= covers));
        self.apply_records(cluster, tagged, now);
    }

    /// Applies a sender's present state (its current view, ahead of its
    /// backlog), unless records newer than it were applied already.
    /// Returns whether it was applied.
    pub fn apply_present_at(
        &mut self,
        cluster: &str,
        stream_id: u128,
        covers_seq: u64,
        records: Vec<ClusterRecord>,
        now: Instant,
    ) -> bool {
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        let stale = |seen: Option<(u128, u64)>| {
            seen.is_some_and(|(stream, seq)| stream == stream_id && seq > covers_seq)
        };
        if stale(state.applied) || stale(state.present) {
            tracing::debug!(
                cluster,
                covers_seq,
                "present older than what is applied; ignored"
            );
            return false;
        }
        state.present = Some((stream_id, covers_seq));
        self.apply_records(cluster, records.into_iter().map(|r| (r, false)), now);
        true
    }

    /// Applies `(record, history)` pairs in order.
    fn apply_records(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = (ClusterRecord, bool)>,
        now: Instant,
    ) {
        let limits = ObjectLimits {
            scale_event_keys: self.config.scale_event_keys_per_hpa,
            max_open_snapshots: self.config.max_open_snapshots,
        };
        let max_series = self.config.max_sample_series_per_cluster;
        let last_seen = self.clock.unix_seconds(now);
        let state = self.cluster_mut(cluster, LinkState::Connected { connections: 0 });
        if state.link == LinkState::Expired {
            tracing::debug!(cluster, "records for an expired cluster without a connect");
            state.link = LinkState::Disconnected { since: now };
        }
        state.last_seen_unix = last_seen;
        for (record, history) in records {
            match &record {
                // Object state from history is older than the present.
                ClusterRecord::SnapshotBegin { .. }
                | ClusterRecord::SnapshotEnd { .. }
                | ClusterRecord::PodUpsert(_)
                | ClusterRecord::PodDelete(_)
                | ClusterRecord::HpaUpsert(_)
                | ClusterRecord::HpaDelete(_)
                    if history => {}
                ClusterRecord::ObservedAt { .. } => {}
                ClusterRecord::SnapshotBegin { id, kinds } => {
                    state.objects.snapshot_begin(cluster, *id, kinds, limits)
                }
                ClusterRecord::SnapshotEnd { id } => state.objects.snapshot_end(cluster, *id),
                ClusterRecord::PodUpsert(pod) => state.objects.upsert_pod(pod),
                ClusterRecord::PodDelete(pod) => state.objects.delete_pod(pod),
                ClusterRecord::PodUsage(usage) => state.objects.pod_usage(usage, history),
                ClusterRecord::HpaUpsert(hpa) => state.objects.upsert_hpa(hpa),
                ClusterRecord::HpaDelete(hpa) => state.objects.delete_hpa(hpa),
                ClusterRecord::ScaleEvent(event) => state.objects.scale_event(event, limits),
                ClusterRecord::Sample(sample) => state.samples.apply(
                    cluster,
                    sample,
                    history,
                    max_series,
                    render::is_store_family_name,
                ),
            }
        }
    }

    /// `cluster`'s sender connected at `now`.
    pub fn sender_connected(&mut self, cluster: &str, now: Instant) {
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
                    state.objects.clear();
                    state.samples.clear();
                    state.link = LinkState::Expired;
                    expired += 1;
                }
            }
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
        let clash = |family: &MetricFamily| {
            render::STORE_FAMILIES
                .iter()
                .any(|own| own.name == family.name())
        };
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
