//! Tests of the semantics both consumers share: the same records give the
//! same series on `/metrics` (the store's page) and in remote write (the
//! latest sample of every series the timeline wrote and did not mark
//! stale), through the store the receiver runs (`keep_timeline`), and the
//! limits hold for both. Leadership epochs and several streams per
//! cluster: `epochs`; budgets and refusals: `budgets`.

mod budgets;
mod epochs;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use telemetry_link::{Sample, SeriesKey};
use telemetry_runtime::exposition::Format;
use telemetry_schema::{
    ClusterRecord, ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, ObjectKind, ObjectRef,
    PodInfo, PodPhase, PodUsage, ScaleEvent,
};
use telemetry_sources::simulated::{SimulatedClusterConfig, Simulation};

use super::{families, Limits};
use crate::{
    remote_write::convert::Labels,
    store::{ClusterStore, StoreConfig},
};

const CLUSTER: &str = "prod";
const STREAM: u128 = 7;

/// The receiver's store with the timeline kept, fed deliveries of one
/// stream, and what remote write was told.
struct Both {
    store: ClusterStore,
    /// Latest remote-write value of every live series (removed when stale).
    written: BTreeMap<Labels, f64>,
    /// Sequence of the last record delivered.
    seq: u64,
    /// What the last delivery refused.
    refused: telemetry_link::RefusedCounts,
    now: Instant,
}

impl Both {
    fn new(limits: Limits) -> Self {
        let mut store = ClusterStore::new(StoreConfig {
            limits,
            ..StoreConfig::default()
        });
        store.keep_timeline();
        Self {
            store,
            written: BTreeMap::new(),
            seq: 0,
            refused: telemetry_link::RefusedCounts::NONE,
            now: Instant::now(),
        }
    }

    /// Delivers `records` as the next sequence numbers.
    fn deliver(&mut self, records: Vec<ClusterRecord>) {
        let first = self.seq + 1;
        self.seq += records.len() as u64;
        self.deliver_at(first, records);
    }

    /// Delivers `records` as sequence numbers `first..`.
    fn deliver_at(&mut self, first: u64, records: Vec<ClusterRecord>) {
        self.deliver_on(STREAM, first, records);
    }

    /// Delivers `records` as sequence numbers `first..` of `stream`;
    /// returns how many were refused as fenced.
    fn deliver_on(&mut self, stream: u128, first: u64, records: Vec<ClusterRecord>) -> u64 {
        let count = records.len();
        let delivered = self
            .store
            .deliver_at(CLUSTER, stream, first, records, self.now);
        let converted = delivered.converted;
        assert_eq!(converted.starts.len(), count, "one start per record");
        for sample in converted.samples {
            if sample.is_stale() {
                self.written.remove(&sample.labels);
            } else {
                self.written.insert(sample.labels, sample.value);
            }
        }
        self.refused = delivered.refused;
        delivered.refused.get(telemetry_link::RefusedReason::Fenced)
    }

    /// The series on `/metrics` that remote write also carries: all but
    /// the sender's own families and scale-event directions never counted
    /// (`/metrics` shows them at 0; remote write writes a counter when it
    /// counts).
    fn page(&self) -> BTreeMap<Labels, f64> {
        let mut out = String::new();
        self.store.render(Format::Prometheus, &mut out);
        out.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(parse_line)
            .filter(|(labels, value)| {
                let name = labels[0].1.as_str();
                name != families::SENDER_UP.name
                    && name != families::SENDER_LAST_SEEN.name
                    && name != families::SENDER_BUDGET_USED.name
                    && name != families::SENDER_BUDGET_LIMIT.name
                    && !(name == families::HPA_SCALE_EVENTS.name && *value == 0.0)
            })
            .collect()
    }

    fn assert_same(&self, when: &str) {
        let page = self.page();
        assert!(!page.is_empty(), "{when}: an empty page proves nothing");
        if page != self.written {
            let only_page: Vec<_> = page
                .iter()
                .filter(|(k, v)| self.written.get(*k) != Some(v))
                .collect();
            let only_written: Vec<_> = self
                .written
                .iter()
                .filter(|(k, v)| page.get(*k) != Some(v))
                .collect();
            panic!(
                "{when}: /metrics and remote write differ\n/metrics only: {only_page:#?}\nremote write only: {only_written:#?}"
            );
        }
    }
}

/// `name{labels} value` of the text format → (sorted labels with
/// `__name__` first, value).
fn parse_line(line: &str) -> (Labels, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a value");
    let (name, rest) = series.split_once('{').expect("labels");
    let mut labels: Labels = vec![("__name__".to_owned(), name.to_owned())];
    let mut chars = rest.strip_suffix('}').expect("closing brace").chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
    }
    labels[1..].sort();
    (labels, value.parse().expect("a number"))
}

fn pod(name: &str, phase: PodPhase, node: &str) -> PodInfo {
    PodInfo {
        namespace: "web".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node: node.into(),
        pod_ip: String::new(),
        phase,
        created_by_kind: "ReplicaSet".into(),
        created_by_name: "web-1".into(),
        containers: vec![ContainerRequests {
            name: "app".into(),
            cpu_cores: Some(0.25),
            memory_bytes: Some(1e8),
            cpu_limit_cores: Some(1.0),
            memory_limit_bytes: None,
        }],
    }
}

fn usage(name: &str, timestamp_ms: i64, cpu: f64) -> ClusterRecord {
    ClusterRecord::PodUsage(PodUsage {
        namespace: "web".into(),
        pod: name.into(),
        timestamp_ms,
        containers: vec![ContainerUsage {
            name: "app".into(),
            cpu_cores: cpu,
            memory_bytes: 5e7,
        }],
    })
}

fn hpa(name: &str, current: i32) -> ClusterRecord {
    ClusterRecord::HpaUpsert(HpaInfo {
        namespace: "web".into(),
        name: name.into(),
        min_replicas: 1,
        max_replicas: 8,
        current_replicas: current,
        desired_replicas: current,
        targets: vec![HpaTarget {
            metric_name: "cpu".into(),
            target_type: "utilization".into(),
            value: 50.0,
        }],
    })
}

fn scale(hpa: &str, old: i32, new: i32, key: &str) -> ClusterRecord {
    ClusterRecord::ScaleEvent(ScaleEvent {
        namespace: "web".into(),
        hpa: hpa.into(),
        old_replicas: old,
        new_replicas: new,
        reason: String::new(),
        timestamp_ms: 1_000,
        key: key.into(),
    })
}

fn sample(name: &str, series: &str, timestamp_ms: i64, value: f64) -> ClusterRecord {
    let key = SeriesKey::new(name, [("series", series)]).expect("a valid key");
    ClusterRecord::Sample(Sample::new(Arc::new(key), timestamp_ms, value))
}

fn delete_pod(name: &str) -> ClusterRecord {
    ClusterRecord::PodDelete(ObjectRef {
        namespace: "web".into(),
        name: name.into(),
    })
}

fn snapshot(id: u64, kinds: &[ObjectKind], objects: Vec<ClusterRecord>) -> Vec<ClusterRecord> {
    let mut records = vec![ClusterRecord::SnapshotBegin {
        id,
        kinds: kinds.to_vec(),
    }];
    records.extend(objects);
    records.push(ClusterRecord::SnapshotEnd { id });
    records
}

#[test]
fn changes_deletes_and_a_snapshot_that_drops_objects_give_the_same_series() {
    let mut both = Both::new(Limits::default());
    both.deliver(vec![
        ClusterRecord::ObservedAt { unix_ms: 1_000 },
        ClusterRecord::PodUpsert(pod("a", PodPhase::Pending, "")),
        ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("c", PodPhase::Running, "n2")),
        hpa("api", 2),
        hpa("old", 1),
        usage("b", 1_100, 0.1),
        usage("c", 1_100, 0.2),
        scale("api", 1, 2, "e1"),
        scale("old", 2, 1, "e2"),
        sample("job_value", "0", 1_000, 1.0),
    ]);
    both.assert_same("after the first batch");
    both.deliver(vec![
        ClusterRecord::ObservedAt { unix_ms: 2_000 },
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        delete_pod("b"),
        scale("api", 1, 2, "e1"),
        scale("api", 2, 4, "e3"),
        sample("job_value", "0", 2_000, 2.0),
    ]);
    both.assert_same("after a scheduling, a delete and a repeated event");
    let mut relist = snapshot(
        1,
        &[ObjectKind::Pod, ObjectKind::Hpa],
        vec![
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
            hpa("api", 4),
        ],
    );
    relist.insert(0, ClusterRecord::ObservedAt { unix_ms: 3_000 });
    both.deliver(relist);
    both.assert_same("after a snapshot that drops pod c (with usage) and HPA old (counted)");
    both.deliver(vec![
        ClusterRecord::ObservedAt { unix_ms: 4_000 },
        delete_pod("a"),
        ClusterRecord::PodUpsert(pod("d", PodPhase::Failed, "n1")),
    ]);
    both.assert_same("after the namespace's running count dropped to 0");
}

#[test]
fn a_present_then_its_older_history_ends_with_the_same_series() {
    let mut both = Both::new(Limits::default());
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("gone", PodPhase::Running, "n1")),
        hpa("api", 1),
        sample("job_value", "0", 100, 1.0),
    ]);
    both.assert_same("before the outage");
    // During the outage the sender spools 5..=11; then it sends its
    // present (covering 11) ahead of that backlog.
    let backlog = vec![
        ClusterRecord::ObservedAt { unix_ms: 500 },
        ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1")),
        delete_pod("gone"),
        scale("api", 1, 3, "e1"),
        hpa("api", 3),
        usage("a", 600, 0.7),
        sample("job_value", "0", 700, 7.0),
    ];
    let mut present = snapshot(
        1,
        &[ObjectKind::Pod, ObjectKind::Hpa],
        vec![
            ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1")),
            hpa("api", 3),
        ],
    );
    present.extend([usage("a", 600, 0.7), sample("job_value", "0", 700, 7.0)]);
    let covers = both.seq + backlog.len() as u64;
    assert!(both
        .store
        .apply_present_at(CLUSTER, STREAM, covers, present, both.now));
    assert!(
        both.written
            .keys()
            .any(|labels| labels.iter().any(|(_, v)| v == "gone")),
        "the present does not reach remote write"
    );
    let first = both.seq + 1;
    both.seq = covers;
    both.deliver_at(first, backlog);
    both.assert_same("after the history the present covered");
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Succeeded, "n1")),
        scale("api", 3, 1, "e2"),
    ]);
    both.assert_same("after news");
}

#[test]
fn a_simulated_cluster_gives_the_same_series_through_lost_records_and_presents() {
    let config = SimulatedClusterConfig {
        failure_probability: 0.05,
        ..SimulatedClusterConfig::default()
    };
    let mut simulation = Simulation::new(config, 1_700_000_000_000);
    let mut both = Both::new(Limits::default());
    both.deliver(simulation.snapshot());
    let mut backlog: Vec<(u64, Vec<ClusterRecord>)> = Vec::new();
    for tick in 0..300 {
        let records = simulation.step();
        match tick % 50 {
            // Lost records (a watch gap): the relist that follows repairs both.
            10..=14 => continue,
            15 => {
                both.deliver(records);
                both.deliver(simulation.snapshot());
            }
            // An outage: the sender spools, then sends its present ahead
            // of the backlog.
            30..=39 => {
                let first = both.seq + 1;
                both.seq += records.len() as u64;
                backlog.push((first, records));
                if tick % 50 != 39 {
                    continue;
                }
                let present = simulation.snapshot();
                let applied = both
                    .store
                    .apply_present_at(CLUSTER, STREAM, both.seq, present, both.now);
                assert!(applied);
                for (first, records) in backlog.drain(..) {
                    both.deliver_at(first, records);
                }
            }
            _ => both.deliver(records),
        }
        both.assert_same(&format!("tick {tick}"));
    }
}

#[test]
fn measurements_of_objects_not_upserted_yet_are_forwarded_at_once_and_shown_later() {
    let mut both = Both::new(Limits::default());
    both.deliver(vec![usage("early", 1_000, 0.3), scale("late", 1, 2, "e1")]);
    assert_eq!(both.written.len(), 3, "cpu, memory and the counter");
    assert!(both.page().is_empty(), "/metrics waits for the objects");
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("early", PodPhase::Running, "n1")),
        hpa("late", 2),
    ]);
    both.assert_same("once both objects exist");
}

#[test]
fn the_limits_hold_for_both_consumers() {
    let mut both = Both::new(Limits {
        max_open_snapshots: 1,
        scale_event_keys: 1,
        max_sample_series: 1,
        ..Limits::default()
    });
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        hpa("api", 1),
        sample("first", "0", 1, 1.0),
        sample("second", "0", 1, 2.0),
        sample("kube_pod_info", "0", 1, 3.0),
        sample("bad-name", "0", 1, 4.0),
        scale("api", 1, 2, "e1"),
        scale("api", 2, 3, "e2"),
        scale("api", 1, 2, "e1"),
    ]);
    both.assert_same("one sample series, refused names, a window of one key");
    let names: Vec<&str> = both.written.keys().map(|l| l[0].1.as_str()).collect();
    assert!(names.contains(&"first") && !names.contains(&"second"));
    let up = both
        .page()
        .into_iter()
        .find(|(labels, _)| labels[0].1 == families::HPA_SCALE_EVENTS.name)
        .map(|(_, value)| value);
    assert_eq!(up, Some(3.0), "e1 forgotten after e2, so counted again");
    // A second open snapshot forgets the first: its end removes nothing.
    let mut records = vec![ClusterRecord::SnapshotBegin {
        id: 1,
        kinds: vec![ObjectKind::Pod],
    }];
    records.extend(snapshot(2, &[ObjectKind::Hpa], vec![hpa("api", 3)]));
    records.push(ClusterRecord::SnapshotEnd { id: 1 });
    both.deliver(records);
    both.assert_same("after an end whose begin was forgotten");
    assert!(both.page().keys().any(|l| l.iter().any(|(_, v)| v == "a")));
}
