//! What a sender's [`ClusterRecord`]s mean: the one interpretation of
//! records behind both `/metrics` and remote write.
//!
//! What it owns, per cluster (`ClusterModel`): pods (info, phase,
//! requests, limits, usage), HPAs (replicas, targets, scale-event
//! counters), running pods per namespace, open snapshots, the scale-event
//! keys already counted, the generic sample series, and per sender stream
//! (one per replica) its last [`ClusterRecord::ObservedAt`], its leadership
//! epoch and where its present stands (`streams`), with the cluster's
//! highest epoch. Family names and label orders are in `families`; the
//! limits in [`Limits`].
//!
//! # Two views of one cluster
//!
//! `/metrics` shows the *present*; remote write forwards *history*, every
//! change with its time. So each cluster has up to two object views, built
//! by the same rules (`view`) from the same records:
//! - the **current** view, which `/metrics` renders: deliveries and
//!   presents. A sender's present state (`ClusterModel::apply_present`)
//!   applies as it arrives, ahead of its backlog. Records of the same
//!   stream up to the present's `covers_seq` that arrive afterwards are
//!   *history*: they do not change object state (upserts, deletes,
//!   snapshots), a sample or a pod's usage only replaces an older
//!   measurement, and scale events still count (each once). A present
//!   older than records of its stream already applied is ignored.
//! - the **timeline**, kept only for remote write: deliveries in sequence
//!   order, every record applied (history included, presents never). Its
//!   changes are reported as series-level facts (`facts`): an object's
//!   series at the time the sender observed it (the last `ObservedAt` of
//!   its deliveries, else the caller's `now_ms`), measurements (usage,
//!   scale events, samples) at their own time, and a staleness fact for
//!   every series that disappears.
//!
//! Both views hold the same immutable object states (shared, built once
//! per upsert), so they cost one copy of an object while they agree —
//! always, except between a present and the end of the backlog it covers.
//! A cluster's scale-event keys and sample series are shared by the views:
//! an event counts once in both; a sample series refused (invalid,
//! reserved, over the cap) is neither shown nor forwarded.
//!
//! # Rules common to both views
//! Upserts replace an object's state, deletes remove all of an object's
//! series at once, a snapshot replaces the state of its kinds at its end,
//! and scale events count once per key (`view`, `scale`); generic
//! samples become gauges named by the sample's metric with its labels plus
//! `cluster`, overriding a `cluster` label sent by the sender (`samples`).
//! Usage of a pod and scale events of an HPA not upserted yet are kept:
//! `/metrics` shows them once the object is upserted, remote write
//! forwards them as they arrive (they carry their own time). `/metrics`
//! shows both directions of a known HPA's counter, 0 included; remote
//! write writes a direction when it counts. A sender gone beyond its TTL
//! loses its current view and samples (`ClusterModel::forget_current`);
//! its timeline stays.
//!
//! # Leadership epochs
//!
//! Replicas of a leader-elected sender stamp their object state and
//! presents with the epoch of their term ([`ClusterRecord::LeaderEpoch`]).
//! Object state and presents of an epoch older than the cluster's highest
//! are not applied to either view and are counted as fenced (the handler
//! refuses them with `fenced`); measurements of an older epoch are history.
//! See `streams`.

pub(crate) mod facts;
pub(crate) mod families;
pub(crate) mod hpa;
pub(crate) mod pod;
mod samples;
mod scale;
mod streams;
#[cfg(test)]
mod tests;
pub(crate) mod view;

use std::sync::Arc;

use telemetry_schema::ClusterRecord;

use self::{
    facts::{Facts, Labels, NoFacts, Out, Series},
    hpa::HpaState,
    pod::PodState,
    scale::ScaleKeys,
    streams::{Epochs, StreamState, Streams},
    view::View,
};
pub(crate) use samples::SampleTable;

/// The limits of the interpretation, per cluster: one set for `/metrics`
/// and remote write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Snapshots that may be open at once; beyond it the oldest is
    /// forgotten (its end is then ignored, so objects it would have
    /// removed stay until the next snapshot). Default 16: a sender keeps
    /// one relist per kind open (pods, HPAs) plus one in its present, and
    /// an open snapshot costs a few bytes; 16 leaves room for relists that
    /// overlap after watch restarts.
    pub max_open_snapshots: usize,
    /// Scale-event keys remembered to count each event once. Default 4,096
    /// per cluster: a sender replica reports each occurrence once (its
    /// seen set survives restarts); the receiver has to recognise a batch
    /// the link hands over again after a receiver crash, a relist by a
    /// sender that lost its state, and, with leader-elected replicas, an
    /// occurrence both the old and the new leader shipped. A new leader
    /// ships what it saw standing by, which is at most the Events the API
    /// server keeps (one event TTL, an hour by default), so counting is
    /// exact while a cluster has fewer rescales than this per event TTL
    /// (plus the time an old leader's backlog takes to arrive). 4,096 keys
    /// (≈ 0.5 MB) cover hours of rescales of a busy cluster, and the bound
    /// holds however many HPAs there are. The keys live in memory: a
    /// receiver restart forgets them.
    pub scale_event_keys: usize,
    /// Generic sample series kept; new series beyond it are refused (not
    /// shown, not forwarded). Default 100,000, which a `/metrics` page
    /// renders well within its budget (see the `exposition` bench).
    pub max_sample_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_open_snapshots: 16,
            scale_event_keys: 4096,
            max_sample_series: 100_000,
        }
    }
}

/// How a record reaches the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Newer than the sender's last present (or no present): both views.
    News,
    /// Covered by the present: the timeline; the current view only for
    /// newer measurements and scale events.
    History,
    /// The present itself: the current view only.
    Present,
}

/// What became of a present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentOutcome {
    /// Applied to the current view.
    Applied,
    /// Older than records of its stream already applied: ignored.
    Stale,
    /// From an older leadership epoch than the cluster's: refused.
    Fenced {
        /// The present's epoch.
        epoch: u64,
    },
}

/// Everything the interpretation knows about one cluster.
#[derive(Debug)]
pub(crate) struct ClusterModel {
    current: Option<View>,
    timeline: Option<View>,
    samples: SampleTable,
    scale_keys: ScaleKeys,
    /// Where each sender stream stands.
    streams: Streams,
    /// Records applied without a stream (`apply_news`).
    news: StreamState,
    /// The highest leadership epoch.
    epochs: Epochs,
}

impl ClusterModel {
    /// A model keeping the current view when `current`, the timeline when
    /// `timeline`.
    pub(crate) fn new(current: bool, timeline: bool) -> Self {
        Self {
            current: current.then(|| View::new(true)),
            timeline: timeline.then(|| View::new(!current)),
            samples: SampleTable::default(),
            scale_keys: ScaleKeys::default(),
            streams: Streams::default(),
            news: StreamState::default(),
            epochs: Epochs::default(),
        }
    }

    /// Starts keeping the timeline (empty) if it is not kept yet.
    pub(crate) fn keep_timeline(&mut self) {
        let logs = self.current.is_none();
        self.timeline.get_or_insert_with(|| View::new(logs));
    }

    /// The current view (what `/metrics` shows), if kept.
    pub(crate) fn current(&self) -> Option<&View> {
        self.current.as_ref()
    }

    /// The generic sample series.
    pub(crate) fn samples(&self) -> &SampleTable {
        &self.samples
    }

    /// Forgets the current view's objects and the samples (the sender is
    /// gone); the timeline is kept, so remote write still knows which
    /// series it wrote when the sender comes back.
    pub(crate) fn forget_current(&mut self) {
        if let Some(current) = &mut self.current {
            current.clear();
        }
        self.samples.clear();
    }

    /// Applies a delivery: `records` are sequence numbers `first_seq..` of
    /// `cluster`'s stream `stream_id`; those its last present covers are
    /// history. Timeline facts go to `facts`. Returns how many records were
    /// refused as fenced (object state of an older leadership epoch).
    pub(crate) fn apply_delivery<F: Facts>(
        &mut self,
        cluster: &str,
        (stream_id, first_seq): (u128, u64),
        records: Vec<ClusterRecord>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) -> u64 {
        if records.is_empty() {
            return 0;
        }
        let last_seq = first_seq.saturating_add(records.len() as u64 - 1);
        let mut stream = self.streams.get(stream_id);
        let covers = stream.present.unwrap_or(0);
        stream.applied = Some(last_seq);
        let lanes = records.into_iter().enumerate().map(|(i, record)| {
            let history = first_seq.saturating_add(i as u64) <= covers;
            (record, if history { Lane::History } else { Lane::News })
        });
        let fenced = self.apply(cluster, &mut stream, lanes, now_ms, limits, facts);
        self.streams.put(stream_id, stream);
        fenced
    }

    /// Applies records that are news (no sequence numbers, no present).
    pub(crate) fn apply_news<F: Facts>(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = ClusterRecord>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) {
        let lanes = records.into_iter().map(|record| (record, Lane::News));
        let mut news = self.news;
        self.apply(cluster, &mut news, lanes, now_ms, limits, facts);
        self.news = news;
    }

    /// Applies a sender's present state (its current view, ahead of its
    /// backlog) to the current view, unless records of its stream newer
    /// than it were applied already (stale) or it is stamped with an epoch
    /// older than the cluster's (fenced).
    pub(crate) fn apply_present(
        &mut self,
        cluster: &str,
        (stream_id, covers_seq): (u128, u64),
        records: Vec<ClusterRecord>,
        limits: &Limits,
    ) -> PresentOutcome {
        let mut stream = self.streams.get(stream_id);
        let newer = |seq: Option<u64>| seq.is_some_and(|seq| seq > covers_seq);
        if newer(stream.applied) || newer(stream.present) {
            tracing::debug!(
                cluster,
                covers_seq,
                "present older than what is applied; ignored"
            );
            return PresentOutcome::Stale;
        }
        let epoch = records.iter().find_map(|r| match r {
            ClusterRecord::LeaderEpoch { epoch } => Some(*epoch),
            _ => None,
        });
        if let Some(epoch) = epoch {
            if self.epochs.fences(Some(epoch)) {
                return PresentOutcome::Fenced { epoch };
            }
            self.epochs.see(cluster, epoch);
        }
        stream.present = Some(covers_seq);
        self.streams.put(stream_id, stream);
        let lanes = records.into_iter().map(|record| (record, Lane::Present));
        let mut own = StreamState::default();
        self.apply(cluster, &mut own, lanes, 0, limits, &mut NoFacts);
        PresentOutcome::Applied
    }

    /// Applies `records` that follow `stream`'s position; returns how many
    /// were refused as fenced.
    fn apply<F: Facts>(
        &mut self,
        cluster: &str,
        stream: &mut StreamState,
        records: impl Iterator<Item = (ClusterRecord, Lane)>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) -> u64 {
        let mut out = Out { cluster, facts };
        let mut fenced = 0;
        for (index, (record, lane)) in records.enumerate() {
            out.facts.record(index);
            if !self.apply_one(stream, record, lane, now_ms, limits, &mut out) {
                fenced += 1;
            }
        }
        let at_ms = stream.observed_ms.unwrap_or(now_ms);
        if let Some(timeline) = &mut self.timeline {
            timeline.finish(&mut out, at_ms);
        }
        fenced
    }

    /// Applies one record of `stream` to the views its lane reaches;
    /// false if it is object state of an older epoch (fenced, not applied).
    fn apply_one<F: Facts>(
        &mut self,
        stream: &mut StreamState,
        record: ClusterRecord,
        lane: Lane,
        now_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) -> bool {
        let fenced = self.epochs.fences(stream.epoch);
        match record {
            ClusterRecord::ObservedAt { unix_ms } => {
                if lane != Lane::Present {
                    stream.observed_ms = Some(unix_ms);
                }
            }
            // A present's epoch was judged before it was applied.
            ClusterRecord::LeaderEpoch { epoch } => {
                if lane != Lane::Present {
                    stream.epoch = Some(epoch);
                    self.epochs.see(out.cluster, epoch);
                }
            }
            ClusterRecord::PodUsage(_)
            | ClusterRecord::ScaleEvent(_)
            | ClusterRecord::Sample(_) => {
                let lane = if fenced { Lane::History } else { lane };
                self.apply_measurement(record, lane, limits, out);
            }
            _ if fenced => return false,
            _ => {
                let at_ms = stream.observed_ms.unwrap_or(now_ms);
                self.apply_object(record, lane, at_ms, limits, out);
            }
        }
        true
    }

    /// Snapshots, upserts and deletes observed at `at_ms`: the current view
    /// unless `lane` is history, the timeline unless it is the present.
    fn apply_object<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        at_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) {
        let mut quiet = Out {
            cluster: out.cluster,
            facts: &mut NoFacts,
        };
        let current = self.current.as_mut().filter(|_| lane != Lane::History);
        let timeline = self.timeline.as_mut().filter(|_| lane != Lane::Present);
        // Raw values are for remote write's label sets: only the timeline's.
        let keep_raw = timeline.is_some();
        match record {
            ClusterRecord::SnapshotBegin { id, kinds } => {
                for view in [current, timeline].into_iter().flatten() {
                    view.snapshot_begin(out.cluster, id, &kinds, limits.max_open_snapshots);
                }
            }
            ClusterRecord::SnapshotEnd { id } => {
                if let Some(view) = current {
                    view.snapshot_end(id, &mut quiet, at_ms);
                }
                if let Some(view) = timeline {
                    view.snapshot_end(id, out, at_ms);
                }
            }
            ClusterRecord::PodUpsert(mut pod) if current.is_some() || timeline.is_some() => {
                let namespace = std::mem::take(&mut pod.namespace);
                let name = std::mem::take(&mut pod.name);
                let key = (namespace.as_str(), name.as_str());
                let state = Arc::new(PodState::new(key.0, key.1, pod, keep_raw));
                if let Some(view) = current {
                    view.upsert_pod(key, state.clone(), &mut quiet, at_ms);
                }
                if let Some(view) = timeline {
                    view.upsert_pod(key, state, out, at_ms);
                }
            }
            ClusterRecord::PodDelete(pod) => {
                if let Some(view) = current {
                    view.delete_pod(&pod.namespace, &pod.name, &mut quiet, at_ms);
                }
                if let Some(view) = timeline {
                    view.delete_pod(&pod.namespace, &pod.name, out, at_ms);
                }
            }
            ClusterRecord::HpaUpsert(hpa) if current.is_some() || timeline.is_some() => {
                let state = Arc::new(HpaState::new(hpa));
                if let Some(view) = current {
                    view.upsert_hpa(state.clone(), &mut quiet, at_ms);
                }
                if let Some(view) = timeline {
                    view.upsert_hpa(state, out, at_ms);
                }
            }
            ClusterRecord::HpaDelete(hpa) => {
                if let Some(view) = current {
                    view.delete_hpa(&hpa.namespace, &hpa.name, &mut quiet, at_ms);
                }
                if let Some(view) = timeline {
                    view.delete_hpa(&hpa.namespace, &hpa.name, out, at_ms);
                }
            }
            _ => {}
        }
    }

    /// Usage, scale events and samples: the current view from every lane
    /// (history only moves it forward; a pod's usage never moves back to an
    /// older measurement, whichever stream — replica — sent it), the
    /// timeline unless `lane` is the present.
    fn apply_measurement<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) {
        let history = lane == Lane::History;
        let mut quiet = Out {
            cluster: out.cluster,
            facts: &mut NoFacts,
        };
        let current = self.current.as_mut();
        let timeline = self.timeline.as_mut().filter(|_| lane != Lane::Present);
        match record {
            ClusterRecord::PodUsage(usage) => {
                let (namespace, pod) = (usage.namespace.as_str(), usage.pod.as_str());
                let current = current.filter(|v| {
                    v.usage_ms(namespace, pod)
                        .is_none_or(|t| usage.timestamp_ms >= t)
                });
                if let Some(view) = current {
                    view.pod_usage(&usage, history, &mut quiet);
                }
                if let Some(view) = timeline {
                    view.pod_usage(&usage, false, out);
                }
            }
            ClusterRecord::ScaleEvent(event) => {
                let keys = limits.scale_event_keys;
                let Some(direction) = self.scale_keys.first_sighting(&event, keys) else {
                    return;
                };
                if let Some(view) = current {
                    view.count_scale(&event, direction, &mut quiet);
                }
                if let Some(view) = timeline {
                    view.count_scale(&event, direction, out);
                }
            }
            ClusterRecord::Sample(sample) => {
                let max = limits.max_sample_series;
                let held = self.samples.apply(out.cluster, &sample, history, max);
                if held && timeline.is_some() && F::WANTED {
                    let series = Series {
                        name: sample.series.name(),
                        cluster: out.cluster,
                        labels: Labels::Sample(&sample.series),
                    };
                    out.facts.value(series, sample.timestamp_ms, sample.value);
                }
            }
            _ => {}
        }
    }
}
