//! Remote write's side of the record interpretation: the timeline's
//! series-level facts (`crate::interpret::facts`) become timestamped
//! samples, with the same metric names and labels as `/metrics`.
//!
//! What it owns (no I/O): the sample type the queues hold ([`RwSample`]),
//! the label sets remote write sends, and [`Converted`], the samples of one
//! delivery with the index where each record's samples start.
//!
//! What it guarantees:
//! - Every fact becomes one sample: a value, or Prometheus' staleness
//!   marker ([`STALE_NAN`]) for a series that disappeared, as Prometheus
//!   itself writes when a scraped series disappears. What the facts are —
//!   timestamps, staleness, counting scale events once, refusing sample
//!   series — is the interpretation's ([`crate::interpret`]).
//! - Labels are sorted by name with `__name__` first; `cluster` is the
//!   sender's certificate identity, never what a sample says.
//! - [`SeriesTracker`] runs the interpretation for remote write alone
//!   (its own timeline per cluster), for callers without a `/metrics`
//!   store; the receiver takes its samples from the store's timeline
//!   instead ([`crate::store::ClusterStore::apply_delivery_at`]).

use std::collections::HashMap;

use telemetry_schema::ClusterRecord;

use crate::interpret::{
    facts::{self, Facts, Series},
    ClusterModel, Limits,
};

/// Prometheus' staleness marker (`value.StaleNaN`).
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// Label pairs of one series, sorted by name, `__name__` first.
pub type Labels = Vec<(String, String)>;

/// One sample for remote_write.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RwSample {
    /// The series.
    pub labels: Labels,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The value ([`STALE_NAN`] marks the end of a series).
    pub value: f64,
}

impl RwSample {
    /// True for a staleness marker.
    pub fn is_stale(&self) -> bool {
        self.value.to_bits() == STALE_NAN.to_bits()
    }
}

/// The label set of `series`: `__name__`, then `cluster` and the rest
/// sorted by name (a sample's own `cluster` label is dropped).
fn labels(series: &Series<'_>) -> Labels {
    let mut labels: Labels = Vec::with_capacity(8);
    labels.push(("__name__".to_owned(), series.name.to_owned()));
    labels.push(("cluster".to_owned(), series.cluster.to_owned()));
    match series.labels {
        facts::Labels::Fixed(pairs) => {
            labels.extend(
                pairs
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
            );
        }
        facts::Labels::Sample(key) => {
            labels.extend(
                key.labels()
                    .iter()
                    .filter(|(name, _)| name != "cluster")
                    .cloned(),
            );
        }
    }
    labels[1..].sort_unstable_by(|a, b| a.0.cmp(&b.0));
    labels
}

/// Samples of a run of records.
#[derive(Debug, Default)]
pub struct Converted {
    /// In record order; the running-pod counts of the namespaces the run
    /// touched come last.
    pub samples: Vec<RwSample>,
    /// `starts[i]`: index of record `i`'s first sample.
    pub starts: Vec<usize>,
}

impl Converted {
    /// The samples of records `first..` (and the namespace counts).
    pub fn from_record(&self, first: usize) -> &[RwSample] {
        let start = self
            .starts
            .get(first)
            .copied()
            .unwrap_or(self.samples.len());
        &self.samples[start..]
    }
}

impl Facts for Converted {
    fn record(&mut self, index: usize) {
        debug_assert_eq!(index, self.starts.len());
        self.starts.push(self.samples.len());
    }

    fn value(&mut self, series: Series<'_>, timestamp_ms: i64, value: f64) {
        self.samples.push(RwSample {
            labels: labels(&series),
            timestamp_ms,
            value,
        });
    }

    fn stale(&mut self, series: Series<'_>, timestamp_ms: i64) {
        self.value(series, timestamp_ms, STALE_NAN);
    }
}

/// The interpretation for remote write alone: one timeline per cluster.
#[derive(Debug, Default)]
pub struct SeriesTracker {
    clusters: HashMap<String, ClusterModel>,
    limits: Limits,
}

impl SeriesTracker {
    /// A tracker that knows no series yet, with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples for `records` from `cluster`, in record order.
    pub fn convert(
        &mut self,
        cluster: &str,
        records: &[ClusterRecord],
        now_ms: i64,
    ) -> Vec<RwSample> {
        self.convert_records(cluster, records, now_ms).samples
    }

    /// [`SeriesTracker::convert`], also telling where each record's samples
    /// start. `now_ms` stamps object state until the sender's first
    /// [`ClusterRecord::ObservedAt`].
    pub fn convert_records(
        &mut self,
        cluster: &str,
        records: &[ClusterRecord],
        now_ms: i64,
    ) -> Converted {
        if !self.clusters.contains_key(cluster) {
            self.clusters
                .insert(cluster.to_owned(), ClusterModel::new(false, true));
        }
        let mut converted = Converted::default();
        if let Some(model) = self.clusters.get_mut(cluster) {
            let records = records.iter().cloned();
            model.apply_news(cluster, records, now_ms, &self.limits, &mut converted);
        }
        converted
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use telemetry_link::{Sample, SeriesKey};
    use telemetry_schema::{
        ContainerRequests, ContainerUsage, ObjectKind, ObjectRef, PodInfo, PodPhase, PodUsage,
        ScaleEvent,
    };

    use super::*;

    /// The sorted label set of `name{pairs}`.
    fn series(name: &str, pairs: &[(&str, &str)]) -> Labels {
        let mut labels: Labels = vec![("__name__".to_owned(), name.to_owned())];
        let mut rest: Labels = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        rest.sort();
        labels.extend(rest);
        labels
    }

    fn pod(name: &str, phase: PodPhase, node: &str) -> PodInfo {
        PodInfo {
            namespace: "web".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: node.into(),
            pod_ip: String::new(),
            phase,
            created_by_kind: String::new(),
            created_by_name: String::new(),
            containers: vec![ContainerRequests {
                name: "app".into(),
                cpu_cores: Some(0.25),
                memory_bytes: None,
                cpu_limit_cores: Some(1.0),
                memory_limit_bytes: None,
            }],
        }
    }

    fn name_of(s: &RwSample) -> &str {
        &s.labels[0].1
    }

    fn label<'a>(s: &'a RwSample, name: &str) -> Option<&'a str> {
        s.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn pod_upsert_gives_every_store_series_with_sorted_labels() {
        let mut t = SeriesTracker::new();
        let out = t.convert(
            "prod",
            &[ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
            1000,
        );
        let names: Vec<&str> = out.iter().map(name_of).collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "kube_pod_status_phase")
                .count(),
            5
        );
        assert!(names.contains(&"kube_pod_info"));
        assert!(names.contains(&"kube_pod_container_resource_requests"));
        assert!(names.contains(&"kube_pod_container_resource_limits"));
        let running = out
            .iter()
            .find(|s| name_of(s) == "kube_namespace_pods_running")
            .unwrap();
        assert_eq!(running.value, 1.0);
        for s in &out {
            assert_eq!(s.timestamp_ms, 1000);
            assert_eq!(label(s, "cluster"), Some("prod"));
            let keys: Vec<&String> = s.labels[1..].iter().map(|(k, _)| k).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
        }
        let phase = |p: &str| {
            out.iter()
                .find(|s| name_of(s) == "kube_pod_status_phase" && label(s, "phase") == Some(p))
                .unwrap()
                .value
        };
        assert_eq!((phase("Running"), phase("Pending")), (1.0, 0.0));
    }

    #[test]
    fn changed_labels_and_deletes_become_staleness_markers() {
        let mut t = SeriesTracker::new();
        t.convert(
            "prod",
            &[ClusterRecord::PodUpsert(pod("a", PodPhase::Pending, ""))],
            1000,
        );
        // Scheduled: kube_pod_info gets a new node label; the old series goes stale.
        let out = t.convert(
            "prod",
            &[ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
            2000,
        );
        let stale: Vec<_> = out.iter().filter(|s| s.is_stale()).collect();
        assert_eq!(stale.len(), 1);
        assert_eq!(name_of(stale[0]), "kube_pod_info");
        assert_eq!(label(stale[0], "node"), Some(""));
        let usage = PodUsage {
            namespace: "web".into(),
            pod: "a".into(),
            timestamp_ms: 2500,
            containers: vec![ContainerUsage {
                name: "app".into(),
                cpu_cores: 0.1,
                memory_bytes: 5.0,
            }],
        };
        let out = t.convert("prod", &[ClusterRecord::PodUsage(usage)], 9999);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|s| s.timestamp_ms == 2500),
            "usage keeps metrics-server's time"
        );
        let out = t.convert(
            "prod",
            &[ClusterRecord::PodDelete(ObjectRef {
                namespace: "web".into(),
                name: "a".into(),
            })],
            3000,
        );
        // info + 5 phases + request + limit + 2 usage + the namespace's running count.
        assert_eq!(out.iter().filter(|s| s.is_stale()).count(), 11, "{out:#?}");
        assert!(out.iter().all(|s| s.timestamp_ms == 3000));
    }

    #[test]
    fn object_state_takes_the_observed_time_of_its_batch() {
        let mut t = SeriesTracker::new();
        let out = t.convert(
            "prod",
            &[ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
            9000,
        );
        assert!(
            out.iter().all(|s| s.timestamp_ms == 9000),
            "no observation time yet: apply time"
        );
        let out = t.convert(
            "prod",
            &[
                ClusterRecord::ObservedAt { unix_ms: 1234 },
                ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1")),
            ],
            9999,
        );
        assert!(!out.is_empty());
        assert!(out.iter().all(|s| s.timestamp_ms == 1234), "{out:#?}");
        // It holds for the sender's next records too, until the next one.
        let out = t.convert(
            "prod",
            &[ClusterRecord::PodDelete(ObjectRef {
                namespace: "web".into(),
                name: "a".into(),
            })],
            20_000,
        );
        assert!(out.iter().all(|s| s.timestamp_ms == 1234 && s.is_stale()));
        // Another sender's clock is its own.
        let out = t.convert(
            "other",
            &[ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1"))],
            777,
        );
        assert!(out.iter().all(|s| s.timestamp_ms == 777));
    }

    #[test]
    fn samples_from_a_record_on_keep_the_namespace_counts() {
        let mut t = SeriesTracker::new();
        let key = Arc::new(SeriesKey::new("m", [("s", "0")]).unwrap());
        let records = [
            ClusterRecord::Sample(Sample::new(key.clone(), 1, 1.0)),
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
            ClusterRecord::Sample(Sample::new(key, 2, 2.0)),
        ];
        let c = t.convert_records("prod", &records, 0);
        assert_eq!(c.starts.len(), 3);
        assert_eq!(c.from_record(0).len(), c.samples.len());
        let tail = c.from_record(2);
        assert_eq!(tail.len(), 2, "the last sample and the namespace count");
        assert_eq!((tail[0].timestamp_ms, tail[0].value), (2, 2.0));
        assert_eq!(name_of(&tail[1]), "kube_namespace_pods_running");
        assert!(c.from_record(3).is_empty());
    }

    #[test]
    fn snapshot_end_stales_objects_it_did_not_list() {
        let mut t = SeriesTracker::new();
        t.convert(
            "prod",
            &[
                ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
                ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
            ],
            1000,
        );
        let out = t.convert(
            "prod",
            &[
                ClusterRecord::SnapshotBegin {
                    id: 7,
                    kinds: vec![ObjectKind::Pod],
                },
                ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
                ClusterRecord::SnapshotEnd { id: 7 },
            ],
            2000,
        );
        let stale: Vec<_> = out.iter().filter(|s| s.is_stale()).collect();
        assert!(!stale.is_empty());
        assert!(stale.iter().all(|s| label(s, "pod") == Some("b")));
        let running = out
            .iter()
            .find(|s| name_of(s) == "kube_namespace_pods_running")
            .unwrap();
        assert_eq!(running.value, 1.0);
    }

    #[test]
    fn scale_events_count_once_per_key_and_samples_keep_their_time() {
        let mut t = SeriesTracker::new();
        let event = |key: &str, old, new| {
            ClusterRecord::ScaleEvent(ScaleEvent {
                namespace: "web".into(),
                hpa: "api".into(),
                old_replicas: old,
                new_replicas: new,
                reason: String::new(),
                timestamp_ms: 42,
                key: key.into(),
            })
        };
        let out = t.convert(
            "prod",
            &[
                event("e1", 1, 5),
                event("e1", 1, 5),
                event("e2", 5, 9),
                event("e3", 2, 2),
            ],
            0,
        );
        let values: Vec<f64> = out.iter().map(|s| s.value).collect();
        assert_eq!(values, vec![1.0, 2.0]);
        assert!(out
            .iter()
            .all(|s| s.timestamp_ms == 42 && label(s, "direction") == Some("up")));

        let key = Arc::new(SeriesKey::new("my_metric", [("cluster", "liar"), ("x", "1")]).unwrap());
        let out = t.convert(
            "prod",
            &[ClusterRecord::Sample(Sample::new(key, 777, 3.5))],
            0,
        );
        assert_eq!(out[0].timestamp_ms, 777);
        assert_eq!(
            out[0].labels,
            series("my_metric", &[("cluster", "prod"), ("x", "1")])
        );
    }
}
