//! Turning applied [`ClusterRecord`]s into timestamped samples for
//! remote_write, with the same metric names and labels as `/metrics`.
//!
//! What it owns (no I/O): per cluster, the series each pod and HPA last
//! produced, so that a change, a delete or the end of a snapshot that no
//! longer lists an object turns the series that disappeared into Prometheus
//! staleness markers; the running-pod count per namespace; the scale-event
//! counters.
//!
//! What it guarantees:
//! - Samples keep the time the sender measured them where the record has
//!   one (`Sample`, `PodUsage`, `ScaleEvent`); object state (upserts,
//!   deletes, snapshots) takes the time of the last
//!   [`ClusterRecord::ObservedAt`] of its sender (the sender's sink puts one
//!   in front of every batch with object state), or the `now_ms` the caller
//!   passes when none was seen yet (the first records after a receiver
//!   restart that resumed in the middle of a batch).
//! - A series that an object had and no longer has gets one sample with the
//!   staleness-marker NaN ([`STALE_NAN`]), as Prometheus itself writes when a
//!   scraped series disappears.
//! - Scale events are counted once per event key (the last
//!   [`SCALE_EVENT_KEYS`] keys per cluster are remembered) and only when the
//!   size changed, like the `/metrics` counter.
//! - Labels are sorted by name with `__name__` first; `cluster` is the
//!   sender's certificate identity, never what a sample says. Family names
//!   are the `/metrics` renderer's ([`crate::store::render`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use telemetry_schema::{ClusterRecord, HpaInfo, ObjectKind, ObjectRef, PodInfo, PodPhase};

use crate::store::render::{
    HPA_SCALE_EVENTS, HPA_SPEC_MAX_REPLICAS, HPA_SPEC_MIN_REPLICAS, HPA_SPEC_TARGET_METRIC,
    HPA_STATUS_CURRENT_REPLICAS, HPA_STATUS_DESIRED_REPLICAS, NAMESPACE_PODS_RUNNING,
    POD_CONTAINER_CPU_USAGE, POD_CONTAINER_MEMORY_WORKING_SET, POD_CONTAINER_RESOURCE_LIMITS,
    POD_CONTAINER_RESOURCE_REQUESTS, POD_INFO, POD_STATUS_PHASE,
};

/// Prometheus' staleness marker (`value.StaleNaN`).
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);
/// Scale-event keys remembered per cluster to count each event once.
pub const SCALE_EVENT_KEYS: usize = 4096;
/// Snapshots kept open at once per cluster (the oldest is forgotten).
const MAX_OPEN_SNAPSHOTS: usize = 16;

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

/// Builds a sorted label set for `name` from `pairs`.
fn series(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut labels: Labels = Vec::with_capacity(pairs.len() + 1);
    labels.push(("__name__".to_owned(), name.to_owned()));
    let mut rest: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    rest.sort();
    labels.extend(rest);
    labels
}

#[derive(Debug, Default)]
struct ObjectSeries {
    /// Series of the object's state (info, phase, requests, ...).
    state: HashSet<Labels>,
    /// Usage series (pods only), replaced by each usage record.
    usage: HashSet<Labels>,
    /// Logical clock of the last upsert.
    tick: u64,
    /// The pod's namespace counts as one running pod.
    running: bool,
}

#[derive(Debug, Default)]
struct ClusterSeries {
    objects: HashMap<(ObjectKind, String, String), ObjectSeries>,
    clock: u64,
    snapshots: VecDeque<(u64, Vec<ObjectKind>, u64)>,
    running: BTreeMap<String, i64>,
    scale_counts: HashMap<(String, String, &'static str), u64>,
    scale_keys: HashSet<String>,
    scale_key_order: VecDeque<String>,
    /// The sender's last `ObservedAt`.
    observed_ms: Option<i64>,
    /// Pod entries per namespace (a namespace without any loses its
    /// running-pods series).
    pods: HashMap<String, usize>,
}

/// Converts records into remote_write samples; one per receiver.
#[derive(Debug, Default)]
pub struct SeriesTracker {
    clusters: HashMap<String, ClusterSeries>,
}

impl SeriesTracker {
    /// A tracker that knows no series yet.
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
    /// start.
    pub fn convert_records(
        &mut self,
        cluster: &str,
        records: &[ClusterRecord],
        now_ms: i64,
    ) -> Converted {
        if !self.clusters.contains_key(cluster) {
            self.clusters
                .insert(cluster.to_owned(), ClusterSeries::default());
        }
        let Some(state) = self.clusters.get_mut(cluster) else {
            return Converted::default();
        };
        let mut out = Vec::new();
        let mut starts = Vec::with_capacity(records.len());
        let mut touched_namespaces = BTreeSet::new();
        for record in records {
            starts.push(out.len());
            let now_ms = state.observed_ms.unwrap_or(now_ms);
            match record {
                ClusterRecord::ObservedAt { unix_ms } => state.observed_ms = Some(*unix_ms),
                ClusterRecord::SnapshotBegin { id, kinds } => {
                    if state.snapshots.len() >= MAX_OPEN_SNAPSHOTS {
                        state.snapshots.pop_front();
                    }
                    state.snapshots.push_back((*id, kinds.clone(), state.clock));
                }
                ClusterRecord::SnapshotEnd { id } => {
                    let Some(pos) = state.snapshots.iter().position(|(open, _, _)| open == id)
                    else {
                        continue;
                    };
                    let Some((_, kinds, began)) = state.snapshots.remove(pos) else {
                        continue;
                    };
                    let gone: Vec<_> = state
                        .objects
                        .iter()
                        .filter(|((kind, _, _), obj)| kinds.contains(kind) && obj.tick <= began)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in gone {
                        touched_namespaces.insert(key.1.clone());
                        state.remove(&key, now_ms, &mut out);
                    }
                }
                ClusterRecord::PodUpsert(pod) => {
                    touched_namespaces.insert(pod.namespace.clone());
                    state.upsert(
                        (ObjectKind::Pod, pod.namespace.clone(), pod.name.clone()),
                        pod_series(cluster, pod),
                        pod.phase == PodPhase::Running,
                        now_ms,
                        &mut out,
                    );
                }
                ClusterRecord::HpaUpsert(hpa) => state.upsert(
                    (ObjectKind::Hpa, hpa.namespace.clone(), hpa.name.clone()),
                    hpa_series(cluster, hpa),
                    false,
                    now_ms,
                    &mut out,
                ),
                ClusterRecord::PodDelete(ObjectRef { namespace, name }) => {
                    touched_namespaces.insert(namespace.clone());
                    state.remove(
                        &(ObjectKind::Pod, namespace.clone(), name.clone()),
                        now_ms,
                        &mut out,
                    );
                }
                ClusterRecord::HpaDelete(ObjectRef { namespace, name }) => {
                    state.remove(
                        &(ObjectKind::Hpa, namespace.clone(), name.clone()),
                        now_ms,
                        &mut out,
                    );
                }
                ClusterRecord::PodUsage(usage) => {
                    let key = (ObjectKind::Pod, usage.namespace.clone(), usage.pod.clone());
                    let mut now_usage = HashSet::new();
                    for c in &usage.containers {
                        let base = [
                            ("cluster", cluster),
                            ("namespace", usage.namespace.as_str()),
                            ("pod", usage.pod.as_str()),
                            ("container", c.name.as_str()),
                        ];
                        for (name, value) in [
                            (POD_CONTAINER_CPU_USAGE.name, c.cpu_cores),
                            (POD_CONTAINER_MEMORY_WORKING_SET.name, c.memory_bytes),
                        ] {
                            let labels = series(name, &base);
                            now_usage.insert(labels.clone());
                            out.push(RwSample {
                                labels,
                                timestamp_ms: usage.timestamp_ms,
                                value,
                            });
                        }
                    }
                    let obj = state.object(key);
                    for gone in obj.usage.difference(&now_usage) {
                        out.push(stale(gone.clone(), usage.timestamp_ms));
                    }
                    obj.usage = now_usage;
                }
                ClusterRecord::ScaleEvent(event) => {
                    if event.old_replicas == event.new_replicas
                        || !state.scale_key_is_new(&event.key)
                    {
                        continue;
                    }
                    let direction = event.direction();
                    let count = state
                        .scale_counts
                        .entry((event.namespace.clone(), event.hpa.clone(), direction))
                        .or_insert(0);
                    *count += 1;
                    out.push(RwSample {
                        labels: series(
                            HPA_SCALE_EVENTS.name,
                            &[
                                ("cluster", cluster),
                                ("namespace", &event.namespace),
                                ("horizontalpodautoscaler", &event.hpa),
                                ("direction", direction),
                            ],
                        ),
                        timestamp_ms: event.timestamp_ms,
                        value: *count as f64,
                    });
                }
                ClusterRecord::Sample(sample) => {
                    let mut pairs: Vec<(&str, &str)> = vec![("cluster", cluster)];
                    pairs.extend(
                        sample
                            .series
                            .labels()
                            .iter()
                            .filter(|(k, _)| k != "cluster")
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    );
                    out.push(RwSample {
                        labels: series(sample.series.name(), &pairs),
                        timestamp_ms: sample.timestamp_ms,
                        value: sample.value,
                    });
                }
            }
        }
        let now_ms = state.observed_ms.unwrap_or(now_ms);
        for namespace in touched_namespaces {
            let running = state.running.get(&namespace).copied().unwrap_or(0);
            let labels = series(
                NAMESPACE_PODS_RUNNING.name,
                &[("cluster", cluster), ("namespace", &namespace)],
            );
            let value = if running > 0 || state.pods.contains_key(&namespace) {
                running as f64
            } else {
                state.running.remove(&namespace);
                STALE_NAN
            };
            out.push(RwSample {
                labels,
                timestamp_ms: now_ms,
                value,
            });
        }
        Converted {
            samples: out,
            starts,
        }
    }
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

fn stale(labels: Labels, timestamp_ms: i64) -> RwSample {
    RwSample {
        labels,
        timestamp_ms,
        value: STALE_NAN,
    }
}

impl ClusterSeries {
    fn upsert(
        &mut self,
        key: (ObjectKind, String, String),
        samples: Vec<(Labels, f64)>,
        running: bool,
        now_ms: i64,
        out: &mut Vec<RwSample>,
    ) {
        self.clock += 1;
        let tick = self.clock;
        let namespace = key.1.clone();
        let obj = self.object(key);
        let now: HashSet<Labels> = samples.iter().map(|(l, _)| l.clone()).collect();
        for gone in obj.state.difference(&now) {
            out.push(stale(gone.clone(), now_ms));
        }
        obj.state = now;
        obj.tick = tick;
        if obj.running != running {
            obj.running = running;
            *self.running.entry(namespace).or_insert(0) += if running { 1 } else { -1 };
        }
        out.extend(samples.into_iter().map(|(labels, value)| RwSample {
            labels,
            timestamp_ms: now_ms,
            value,
        }));
    }

    fn remove(&mut self, key: &(ObjectKind, String, String), now_ms: i64, out: &mut Vec<RwSample>) {
        let Some(obj) = self.objects.remove(key) else {
            return;
        };
        out.extend(
            obj.state
                .into_iter()
                .chain(obj.usage)
                .map(|l| stale(l, now_ms)),
        );
        if obj.running {
            *self.running.entry(key.1.clone()).or_insert(0) -= 1;
        }
        if key.0 == ObjectKind::Pod {
            if let Some(n) = self.pods.get_mut(&key.1) {
                *n -= 1;
                if *n == 0 {
                    self.pods.remove(&key.1);
                }
            }
        }
    }

    /// The object's entry, created (and counted) when new.
    fn object(&mut self, key: (ObjectKind, String, String)) -> &mut ObjectSeries {
        if key.0 == ObjectKind::Pod && !self.objects.contains_key(&key) {
            *self.pods.entry(key.1.clone()).or_insert(0) += 1;
        }
        self.objects.entry(key).or_default()
    }

    fn scale_key_is_new(&mut self, key: &str) -> bool {
        if key.is_empty() {
            return true;
        }
        if !self.scale_keys.insert(key.to_owned()) {
            return false;
        }
        self.scale_key_order.push_back(key.to_owned());
        if self.scale_key_order.len() > SCALE_EVENT_KEYS {
            if let Some(old) = self.scale_key_order.pop_front() {
                self.scale_keys.remove(&old);
            }
        }
        true
    }
}

fn pod_series(cluster: &str, pod: &PodInfo) -> Vec<(Labels, f64)> {
    let ns = pod.namespace.as_str();
    let name = pod.name.as_str();
    let mut out = vec![(
        series(
            POD_INFO.name,
            &[
                ("cluster", cluster),
                ("namespace", ns),
                ("pod", name),
                ("uid", &pod.uid),
                ("node", &pod.node),
                ("pod_ip", &pod.pod_ip),
                ("created_by_kind", &pod.created_by_kind),
                ("created_by_name", &pod.created_by_name),
            ],
        ),
        1.0,
    )];
    for phase in PodPhase::ALL {
        out.push((
            series(
                POD_STATUS_PHASE.name,
                &[
                    ("cluster", cluster),
                    ("namespace", ns),
                    ("pod", name),
                    ("uid", &pod.uid),
                    ("phase", phase.as_str()),
                ],
            ),
            if phase == pod.phase { 1.0 } else { 0.0 },
        ));
    }
    for c in &pod.containers {
        for (metric, resource, unit, value) in [
            (
                POD_CONTAINER_RESOURCE_REQUESTS.name,
                "cpu",
                "core",
                c.cpu_cores,
            ),
            (
                POD_CONTAINER_RESOURCE_REQUESTS.name,
                "memory",
                "byte",
                c.memory_bytes,
            ),
            (
                POD_CONTAINER_RESOURCE_LIMITS.name,
                "cpu",
                "core",
                c.cpu_limit_cores,
            ),
            (
                POD_CONTAINER_RESOURCE_LIMITS.name,
                "memory",
                "byte",
                c.memory_limit_bytes,
            ),
        ] {
            let Some(value) = value else { continue };
            out.push((
                series(
                    metric,
                    &[
                        ("cluster", cluster),
                        ("namespace", ns),
                        ("pod", name),
                        ("container", &c.name),
                        ("resource", resource),
                        ("unit", unit),
                    ],
                ),
                value,
            ));
        }
    }
    dedup_last_wins(out)
}

fn hpa_series(cluster: &str, hpa: &HpaInfo) -> Vec<(Labels, f64)> {
    let base = [
        ("cluster", cluster),
        ("namespace", hpa.namespace.as_str()),
        ("horizontalpodautoscaler", hpa.name.as_str()),
    ];
    let mut out: Vec<(Labels, f64)> = [
        (HPA_SPEC_MIN_REPLICAS.name, hpa.min_replicas),
        (HPA_SPEC_MAX_REPLICAS.name, hpa.max_replicas),
        (HPA_STATUS_CURRENT_REPLICAS.name, hpa.current_replicas),
        (HPA_STATUS_DESIRED_REPLICAS.name, hpa.desired_replicas),
    ]
    .into_iter()
    .map(|(name, v)| (series(name, &base), f64::from(v)))
    .collect();
    for t in &hpa.targets {
        let mut pairs = base.to_vec();
        pairs.push(("metric_name", &t.metric_name));
        pairs.push(("metric_target_type", &t.target_type));
        out.push((series(HPA_SPEC_TARGET_METRIC.name, &pairs), t.value));
    }
    dedup_last_wins(out)
}

/// One sample per series (a container listed twice keeps its last values).
fn dedup_last_wins(samples: Vec<(Labels, f64)>) -> Vec<(Labels, f64)> {
    let mut seen = HashSet::new();
    let mut out: Vec<(Labels, f64)> = samples
        .into_iter()
        .rev()
        .filter(|(l, _)| seen.insert(l.clone()))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use telemetry_link::{Sample, SeriesKey};
    use telemetry_schema::{ContainerRequests, ContainerUsage, PodUsage, ScaleEvent};

    use super::*;

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
