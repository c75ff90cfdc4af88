//! What a sender's [`ClusterRecord`]s mean: the one interpretation of
//! records behind both `/metrics` and remote write.
//!
//! What it owns, per cluster (`ClusterModel`): pods (info, phase,
//! requests, limits, usage), HPAs (replicas, targets, scale-event
//! counters), running pods per namespace, open snapshots, the scale-event
//! keys already counted, the generic sample series, the sender's last
//! [`ClusterRecord::ObservedAt`], and where its present stands. Family names
//! and label orders are in `families`; the limits in [`Limits`].
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
//!   older than records already applied is ignored.
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

pub(crate) mod facts;
pub(crate) mod families;
pub(crate) mod hpa;
pub(crate) mod pod;
mod samples;
mod scale;
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
    /// per cluster: the sender itself reports each occurrence once (its
    /// seen set survives restarts); the receiver only has to recognise a
    /// batch the link hands over again after a receiver crash, or a relist
    /// by a sender that lost its state. 4,096 keys (≈ 0.5 MB) cover hours
    /// of rescales of a busy cluster, and the bound holds however many
    /// HPAs there are.
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

/// Everything the interpretation knows about one cluster.
#[derive(Debug)]
pub(crate) struct ClusterModel {
    current: Option<View>,
    timeline: Option<View>,
    samples: SampleTable,
    scale_keys: ScaleKeys,
    /// The last `ObservedAt` of the sender's deliveries.
    observed_ms: Option<i64>,
    /// Stream and sequence of the last present applied.
    present: Option<(u128, u64)>,
    /// Stream and highest sequence applied from deliveries.
    applied: Option<(u128, u64)>,
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
            observed_ms: None,
            present: None,
            applied: None,
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
    /// `cluster`'s stream `stream_id`; those the last present covers are
    /// history. Timeline facts go to `facts`.
    pub(crate) fn apply_delivery<F: Facts>(
        &mut self,
        cluster: &str,
        (stream_id, first_seq): (u128, u64),
        records: Vec<ClusterRecord>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) {
        if records.is_empty() {
            return;
        }
        let last_seq = first_seq.saturating_add(records.len() as u64 - 1);
        let covers = match self.present {
            Some((stream, covers)) if stream == stream_id => covers,
            _ => 0,
        };
        self.applied = Some((stream_id, last_seq));
        let lanes = records.into_iter().enumerate().map(|(i, record)| {
            let history = first_seq.saturating_add(i as u64) <= covers;
            (record, if history { Lane::History } else { Lane::News })
        });
        self.apply(cluster, lanes, now_ms, limits, facts);
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
        self.apply(cluster, lanes, now_ms, limits, facts);
    }

    /// Applies a sender's present state (its current view, ahead of its
    /// backlog) to the current view, unless records newer than it were
    /// applied already. Returns whether it was applied.
    pub(crate) fn apply_present(
        &mut self,
        cluster: &str,
        (stream_id, covers_seq): (u128, u64),
        records: Vec<ClusterRecord>,
        limits: &Limits,
    ) -> bool {
        let stale = |seen: Option<(u128, u64)>| {
            seen.is_some_and(|(stream, seq)| stream == stream_id && seq > covers_seq)
        };
        if stale(self.applied) || stale(self.present) {
            tracing::debug!(
                cluster,
                covers_seq,
                "present older than what is applied; ignored"
            );
            return false;
        }
        self.present = Some((stream_id, covers_seq));
        let lanes = records.into_iter().map(|record| (record, Lane::Present));
        self.apply(cluster, lanes, 0, limits, &mut NoFacts);
        true
    }

    fn apply<F: Facts>(
        &mut self,
        cluster: &str,
        records: impl Iterator<Item = (ClusterRecord, Lane)>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) {
        let mut out = Out { cluster, facts };
        for (index, (record, lane)) in records.enumerate() {
            out.facts.record(index);
            self.apply_one(record, lane, now_ms, limits, &mut out);
        }
        let at_ms = self.observed_ms.unwrap_or(now_ms);
        if let Some(timeline) = &mut self.timeline {
            timeline.finish(&mut out, at_ms);
        }
    }

    /// Applies one record to the views its lane reaches.
    fn apply_one<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        now_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) {
        match record {
            ClusterRecord::ObservedAt { unix_ms } => {
                if lane != Lane::Present {
                    self.observed_ms = Some(unix_ms);
                }
            }
            ClusterRecord::PodUsage(_)
            | ClusterRecord::ScaleEvent(_)
            | ClusterRecord::Sample(_) => {
                self.apply_measurement(record, lane, limits, out);
            }
            _ => self.apply_object(record, lane, now_ms, limits, out),
        }
    }

    /// Snapshots, upserts and deletes: the current view unless `lane` is
    /// history, the timeline unless it is the present.
    fn apply_object<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        now_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) {
        let at_ms = self.observed_ms.unwrap_or(now_ms);
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
    /// (history only moves it forward), the timeline unless `lane` is the
    /// present.
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
