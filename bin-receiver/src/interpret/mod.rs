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
//! limits and budgets in [`budget`].
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
//! reserved, over the budget) is neither shown nor forwarded.
//!
//! # Refusals
//!
//! Every record is applied or refused, and a refused one changes nothing:
//! object state of an older leadership epoch is `fenced` (below); a record
//! keeping a string longer than a Kubernetes name, or a sample of a bad
//! or reserved name, is `invalid`; a sample beyond the label limits is
//! `label_limit`; a record that would take the cluster beyond its budget
//! (sample series, object units: [`budget`]) is `budget`. Objects already
//! admitted keep updating and deletes always apply, so a sender over its
//! budget keeps what it has. A snapshot applies in its order: its
//! objects already admitted are updated, new ones are admitted while they
//! fit — counting the objects the snapshot has not listed yet, which may
//! still come — and the rest are refused; its end removes the objects it
//! did not list, which frees their room for the next upserts. The counts
//! go back to the link ([`ClusterModel::apply_delivery`]), which settles
//! and reports them.
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

pub mod budget;
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

use telemetry_link::{RefusedCounts, RefusedReason};
use telemetry_schema::ClusterRecord;

use self::{
    facts::{Facts, Labels, NoFacts, Out, Series},
    hpa::HpaState,
    pod::PodState,
    scale::ScaleKeys,
    streams::{Epochs, StreamState, Streams},
    view::View,
};
pub use budget::Limits;
pub(crate) use samples::SampleTable;

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
    /// Applied to the current view, but for the records refused (by
    /// reason).
    Applied(RefusedCounts),
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

    /// `(budget, used, limit)` of each budget, in a fixed order: sample
    /// series, their bytes, the object units of the current view (of the
    /// timeline when there is no current view).
    pub(crate) fn budgets(&self, limits: &Limits) -> [(&'static str, usize, usize); 3] {
        let units = self
            .current
            .as_ref()
            .or(self.timeline.as_ref())
            .map_or(0, View::units);
        [
            (
                "sample_series",
                self.samples.len(),
                limits.max_sample_series,
            ),
            (
                "sample_bytes",
                self.samples.bytes(),
                limits.max_sample_bytes,
            ),
            ("objects", units, limits.max_objects),
        ]
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
    /// history. Timeline facts go to `facts`. Returns the records refused,
    /// by reason (see the module docs).
    pub(crate) fn apply_delivery<F: Facts>(
        &mut self,
        cluster: &str,
        (stream_id, first_seq): (u128, u64),
        records: Vec<ClusterRecord>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) -> RefusedCounts {
        if records.is_empty() {
            return RefusedCounts::NONE;
        }
        let last_seq = first_seq.saturating_add(records.len() as u64 - 1);
        let mut stream = self.streams.get(stream_id);
        let covers = stream.present.unwrap_or(0);
        stream.applied = Some(last_seq);
        let lanes = records.into_iter().enumerate().map(|(i, record)| {
            let history = first_seq.saturating_add(i as u64) <= covers;
            (record, if history { Lane::History } else { Lane::News })
        });
        let refused = self.apply(cluster, &mut stream, lanes, now_ms, limits, facts);
        self.streams.put(stream_id, stream);
        refused
    }

    /// Applies records that are news (no sequence numbers, no present);
    /// returns the records refused, by reason.
    pub(crate) fn apply_news<F: Facts>(
        &mut self,
        cluster: &str,
        records: impl IntoIterator<Item = ClusterRecord>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) -> RefusedCounts {
        let lanes = records.into_iter().map(|record| (record, Lane::News));
        let mut news = self.news;
        let refused = self.apply(cluster, &mut news, lanes, now_ms, limits, facts);
        self.news = news;
        refused
    }

    /// Applies a sender's present state (its current view, ahead of its
    /// backlog) to the current view, unless records of its stream newer
    /// than it were applied already (stale) or it is stamped with an epoch
    /// older than the cluster's (fenced); records of an applied present
    /// can be refused one by one like a delivery's.
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
        let refused = self.apply(cluster, &mut own, lanes, 0, limits, &mut NoFacts);
        PresentOutcome::Applied(refused)
    }

    /// Applies `records` that follow `stream`'s position; returns the
    /// records refused, by reason.
    fn apply<F: Facts>(
        &mut self,
        cluster: &str,
        stream: &mut StreamState,
        records: impl Iterator<Item = (ClusterRecord, Lane)>,
        now_ms: i64,
        limits: &Limits,
        facts: &mut F,
    ) -> RefusedCounts {
        let mut out = Out { cluster, facts };
        let mut refused = RefusedCounts::NONE;
        for (index, (record, lane)) in records.enumerate() {
            out.facts.record(index);
            if let Err(reason) = self.apply_one(stream, record, lane, now_ms, limits, &mut out) {
                refused.add(reason, 1);
            }
        }
        let at_ms = stream.observed_ms.unwrap_or(now_ms);
        if let Some(timeline) = &mut self.timeline {
            timeline.finish(&mut out, at_ms);
        }
        refused
    }

    /// Applies one record of `stream` to the views its lane reaches, or
    /// refuses it (changing nothing) for a reason.
    fn apply_one<F: Facts>(
        &mut self,
        stream: &mut StreamState,
        record: ClusterRecord,
        lane: Lane,
        now_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) -> Result<(), RefusedReason> {
        let fenced = self.epochs.fences(stream.epoch);
        match record {
            ClusterRecord::ObservedAt { unix_ms } => {
                if lane != Lane::Present {
                    stream.observed_ms = Some(unix_ms);
                }
                Ok(())
            }
            // A present's epoch was judged before it was applied.
            ClusterRecord::LeaderEpoch { epoch } => {
                if lane != Lane::Present {
                    stream.epoch = Some(epoch);
                    self.epochs.see(out.cluster, epoch);
                }
                Ok(())
            }
            ClusterRecord::PodUsage(_)
            | ClusterRecord::ScaleEvent(_)
            | ClusterRecord::Sample(_) => {
                let lane = if fenced { Lane::History } else { lane };
                self.apply_measurement(record, lane, limits, out)
            }
            _ if fenced => Err(RefusedReason::Fenced),
            _ => {
                let at_ms = stream.observed_ms.unwrap_or(now_ms);
                self.apply_object(record, lane, at_ms, limits, out)
            }
        }
    }

    /// Snapshots, upserts and deletes observed at `at_ms`: the current view
    /// unless `lane` is history, the timeline unless it is the present.
    /// An upsert keeping a string too long is invalid; one that does not
    /// fit the budget of a view it reaches is refused in all of them.
    // One short arm per object record kind, each the same three steps
    // (validate, admit, apply to both views): splitting it would scatter them.
    #[allow(clippy::too_many_lines)]
    fn apply_object<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        at_ms: i64,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) -> Result<(), RefusedReason> {
        let mut quiet = Out {
            cluster: out.cluster,
            facts: &mut NoFacts,
        };
        let current = self.current.as_mut().filter(|_| lane != Lane::History);
        let timeline = self.timeline.as_mut().filter(|_| lane != Lane::Present);
        let fits = |admits: &dyn Fn(&View) -> bool| {
            current.as_deref().is_none_or(admits) && timeline.as_deref().is_none_or(admits)
        };
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
            ClusterRecord::PodUpsert(mut pod) => {
                if !budget::pod_valid(&pod) {
                    return Err(RefusedReason::Invalid);
                }
                let key = (pod.namespace.as_str(), pod.name.as_str());
                if !fits(&|v| v.admits_pod(key, pod.containers.len(), limits)) {
                    return Err(RefusedReason::Budget);
                }
                if current.is_none() && timeline.is_none() {
                    return Ok(());
                }
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
            ClusterRecord::HpaUpsert(hpa) => {
                if !budget::hpa_valid(&hpa) {
                    return Err(RefusedReason::Invalid);
                }
                let key = (hpa.namespace.as_str(), hpa.name.as_str());
                if !fits(&|v| v.admits_hpa(key, hpa.targets.len(), limits)) {
                    return Err(RefusedReason::Budget);
                }
                if current.is_none() && timeline.is_none() {
                    return Ok(());
                }
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
        Ok(())
    }

    /// Usage, scale events and samples: the current view from every lane
    /// (history only moves it forward; a pod's usage never moves back to an
    /// older measurement, whichever stream — replica — sent it), the
    /// timeline unless `lane` is the present. Refused like objects (usage
    /// of an unknown pod and scale events of an unknown HPA take room) or
    /// by the sample table's rules.
    fn apply_measurement<F: Facts>(
        &mut self,
        record: ClusterRecord,
        lane: Lane,
        limits: &Limits,
        out: &mut Out<'_, F>,
    ) -> Result<(), RefusedReason> {
        let history = lane == Lane::History;
        let mut quiet = Out {
            cluster: out.cluster,
            facts: &mut NoFacts,
        };
        let current = self.current.as_mut();
        let timeline = self.timeline.as_mut().filter(|_| lane != Lane::Present);
        match record {
            ClusterRecord::PodUsage(usage) => {
                if !budget::usage_valid(&usage) {
                    return Err(RefusedReason::Invalid);
                }
                let (namespace, pod) = (usage.namespace.as_str(), usage.pod.as_str());
                let current = current.filter(|v| {
                    v.usage_ms(namespace, pod)
                        .is_none_or(|t| usage.timestamp_ms >= t)
                });
                let fits = current
                    .as_deref()
                    .is_none_or(|v| v.admits_usage(&usage, history, limits))
                    && timeline
                        .as_deref()
                        .is_none_or(|v| v.admits_usage(&usage, false, limits));
                if !fits {
                    return Err(RefusedReason::Budget);
                }
                if let Some(view) = current {
                    view.pod_usage(&usage, history, &mut quiet);
                }
                if let Some(view) = timeline {
                    view.pod_usage(&usage, false, out);
                }
            }
            ClusterRecord::ScaleEvent(event) => {
                if !budget::scale_valid(&event) {
                    return Err(RefusedReason::Invalid);
                }
                let key = (event.namespace.as_str(), event.hpa.as_str());
                let fits = current
                    .as_deref()
                    .is_none_or(|v| v.admits_scale(key, limits))
                    && timeline
                        .as_deref()
                        .is_none_or(|v| v.admits_scale(key, limits));
                if !fits && !self.scale_keys.is_known(&event) {
                    return Err(RefusedReason::Budget);
                }
                let keys = limits.scale_event_keys;
                let Some(direction) = self.scale_keys.first_sighting(&event, keys) else {
                    return Ok(());
                };
                if let Some(view) = current {
                    view.count_scale(&event, direction, &mut quiet);
                }
                if let Some(view) = timeline {
                    view.count_scale(&event, direction, out);
                }
            }
            ClusterRecord::Sample(sample) => {
                self.samples
                    .apply(out.cluster, &sample, history, limits)
                    .map_err(|refusal| refusal.reason())?;
                if timeline.is_some() && F::WANTED {
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
        Ok(())
    }
}
