//! Exposition cost at ~100,000 series: how long `/metrics` takes to render
//! and how much memory the receiver's store needs.
//!
//! What it measures: a [`ClusterStore`] holding 2 clusters × 3,500 pods (2
//! containers each, with CPU and memory requests and usage) in 50 namespaces,
//! 100 HPAs per cluster with scale events, and 100 synthetic sample series
//! per cluster — built through the same `apply_at` path the receiver uses.
//! It prints the machine, the number of series actually rendered, the apply
//! time, render times (min / median / p99 over repeated renders into one
//! reused buffer) for the Prometheus and OpenMetrics formats, the
//! process RSS (VmRSS / VmHWM from `/proc/self/status`) after populating and
//! after rendering, and then the ingestion path of the same records with
//! and without remote write's samples (median of 5 passes).
//!
//! Targets: render ≤ 50 ms, RSS ≤ 200 MB. The process exits with status 1
//! when a target is missed, so a regression is visible.
//!
//! Run in release: `cargo bench -p telemetry-receiver --bench exposition`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use telemetry_link::{Sample, SeriesKey};
use telemetry_receiver::{
    remote_write::convert::SeriesTracker,
    store::{ClusterStore, StoreConfig},
};
use telemetry_runtime::exposition::Format;
use telemetry_schema::{
    ClusterRecord, ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, ObjectKind, PodInfo,
    PodPhase, PodUsage, ScaleEvent,
};

const CLUSTERS: usize = 2;
const PODS_PER_CLUSTER: usize = 3_500;
const NAMESPACES: usize = 50;
const HPAS_PER_CLUSTER: usize = 100;
const SAMPLE_SERIES_PER_CLUSTER: usize = 100;
const RENDERS: usize = 200;
const RENDER_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_KIB: u64 = 200 * 1000;

/// A UUID-shaped string derived from `n`.
fn uid(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
    let x = format!("{h:016x}{:016x}", h.rotate_left(17) ^ n);
    format!(
        "{}-{}-4{}-a{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

/// Pod `p` of `cluster` and its usage.
fn pod_records(cluster: usize, p: usize) -> (ClusterRecord, ClusterRecord) {
    let namespace = format!("team-{:02}", p % NAMESPACES);
    let deployment = format!("service-{:03}", (p / NAMESPACES) % HPAS_PER_CLUSTER);
    let replica_set = format!("{deployment}-7d{:08x}", p % 97);
    let name = format!("{replica_set}-{:05x}", p * 7919 % 0xFFFFF);
    let phase = match p % 20 {
        0 => PodPhase::Pending,
        1 => PodPhase::Failed,
        _ => PodPhase::Running,
    };
    let container = |name: &str, cpu: f64, memory: f64| ContainerRequests {
        name: name.into(),
        cpu_cores: Some(cpu),
        memory_bytes: Some(memory),
        cpu_limit_cores: None,
        memory_limit_bytes: None,
    };
    let pod = ClusterRecord::PodUpsert(PodInfo {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid((cluster * PODS_PER_CLUSTER + p) as u64),
        node: format!("node-{:03}", p % 120),
        pod_ip: format!("10.{}.{}.{}", cluster, p / 250, p % 250 + 2),
        phase,
        created_by_kind: "ReplicaSet".into(),
        created_by_name: replica_set,
        containers: vec![
            container("app", 0.25, 268_435_456.0),
            container("istio-proxy", 0.1, 134_217_728.0),
        ],
    });
    let usage = ClusterRecord::PodUsage(PodUsage {
        namespace,
        pod: name,
        timestamp_ms: 1_700_000_000_000,
        containers: vec![
            ContainerUsage {
                name: "app".into(),
                cpu_cores: 0.013 * (p % 37) as f64 + 0.001,
                memory_bytes: (30_000_000 + p * 4096) as f64,
            },
            ContainerUsage {
                name: "istio-proxy".into(),
                cpu_cores: 0.0021 * (p % 11) as f64 + 0.0005,
                memory_bytes: (45_000_000 + p * 512) as f64,
            },
        ],
    });
    (pod, usage)
}

/// HPA `h` and one scale event of it.
fn hpa_records(h: usize) -> (ClusterRecord, ClusterRecord) {
    let hpa = ClusterRecord::HpaUpsert(HpaInfo {
        namespace: format!("team-{:02}", h % NAMESPACES),
        name: format!("service-{h:03}"),
        min_replicas: 2,
        max_replicas: 20,
        current_replicas: 3 + (h % 5) as i32,
        desired_replicas: 3 + (h % 5) as i32,
        targets: vec![HpaTarget {
            metric_name: "cpu".into(),
            target_type: "utilization".into(),
            value: 70.0,
        }],
    });
    let event = ClusterRecord::ScaleEvent(ScaleEvent {
        namespace: format!("team-{:02}", h % NAMESPACES),
        hpa: format!("service-{h:03}"),
        old_replicas: 2,
        new_replicas: 3 + (h % 5) as i32,
        reason: "cpu resource utilization (percentage of request) above target".into(),
        timestamp_ms: 1_700_000_000_000,
        key: format!("{}/1", uid(h as u64)),
    });
    (hpa, event)
}

/// One cluster's records: a snapshot of its pods and HPAs, then usage,
/// scale events and synthetic samples.
fn cluster_records(cluster: usize) -> Vec<ClusterRecord> {
    let mut records = vec![ClusterRecord::SnapshotBegin {
        id: 1,
        kinds: vec![ObjectKind::Pod, ObjectKind::Hpa],
    }];
    let (pods, usage): (Vec<_>, Vec<_>) = (0..PODS_PER_CLUSTER)
        .map(|p| pod_records(cluster, p))
        .unzip();
    let (hpas, events): (Vec<_>, Vec<_>) = (0..HPAS_PER_CLUSTER).map(hpa_records).unzip();
    records.extend(pods);
    records.extend(hpas);
    records.push(ClusterRecord::SnapshotEnd { id: 1 });
    records.extend(usage);
    records.extend(events);
    for s in 0..SAMPLE_SERIES_PER_CLUSTER {
        if let Ok(key) = SeriesKey::new("telemetry_synthetic_value", [("series", s.to_string())]) {
            records.push(ClusterRecord::Sample(Sample::new(
                Arc::new(key),
                1_700_000_000_000,
                s as f64,
            )));
        }
    }
    records
}

/// `(VmRSS, VmHWM)` in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn print_memory(when: &str) -> u64 {
    let (rss, hwm) = memory_kib();
    println!(
        "memory {when:<24} VmRSS {:>7.1} MB   VmHWM {:>7.1} MB",
        rss as f64 / 1000.0,
        hwm as f64 / 1000.0
    );
    hwm
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Renders per format: `RENDERS`, or `EXPOSITION_RENDERS` (e.g. 1 under
/// `valgrind --tool=callgrind`).
fn renders() -> usize {
    std::env::var("EXPOSITION_RENDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(RENDERS)
        .max(1)
}

/// Renders [`renders`] times into one reused buffer; returns (min, median, p99, bytes).
fn measure(
    store: &ClusterStore,
    format: Format,
    out: &mut String,
) -> (Duration, Duration, Duration, usize) {
    for _ in 0..3 {
        store.render_page(format, &[], out);
    }
    let mut times: Vec<Duration> = (0..renders())
        .map(|_| {
            let start = Instant::now();
            store.render_page(format, &[], out);
            start.elapsed()
        })
        .collect();
    times.sort();
    let p99 = times[(times.len() * 99).div_ceil(100) - 1];
    (times[0], times[times.len() / 2], p99, out.len())
}

/// Median of `values`.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The ingestion path of each cluster's records, median of 5 passes, on
/// fresh state (first) and again on the state the first left (steady
/// state): the store alone (`/metrics` only), the store keeping the
/// timeline and returning the remote-write samples (the receiver with
/// `--remote-write`: one interpretation for both), and remote write's
/// interpretation alone ([`SeriesTracker`]).
fn delivery_path(now: Instant) {
    let mut rows: Vec<[Duration; 6]> = Vec::new();
    let mut samples = 0;
    for _ in 0..5 {
        let mut store = ClusterStore::new(large_cluster_config());
        let mut both = ClusterStore::new(large_cluster_config());
        both.keep_timeline();
        let mut tracker = SeriesTracker::new();
        let mut row = [Duration::ZERO; 6];
        samples = 0;
        for cluster in 0..CLUSTERS {
            let name = format!("cluster-{cluster}.example.com");
            for pass in 0..2 {
                let records = cluster_records(cluster);
                let start = Instant::now();
                store.apply_at(&name, records.clone(), now);
                row[pass] += start.elapsed();
                let start = Instant::now();
                let first_seq = 1 + (pass * records.len()) as u64;
                samples += both
                    .apply_delivery_at(&name, 1, first_seq, records.clone(), now)
                    .samples
                    .len();
                row[2 + pass] += start.elapsed();
                let start = Instant::now();
                tracker.convert_records(&name, &records, 1_700_000_000_000);
                row[4 + pass] += start.elapsed();
            }
        }
        rows.push(row);
    }
    let m = |i: usize| millis(median(rows.iter().map(|r| r[i]).collect()));
    for (pass, label) in [(0, "first"), (1, "again")] {
        println!(
            "delivery path, {label}: store {:.1} ms; store + remote-write samples {:.1} ms; remote write alone {:.1} ms",
            m(pass),
            m(2 + pass),
            m(4 + pass),
        );
    }
    println!("remote-write samples per pass: {samples}");
}

/// A receiver sized for clusters this large (`--budget-objects 100000`):
/// the default object budget (10,000 units) would refuse most of the pods.
fn large_cluster_config() -> StoreConfig {
    let mut config = StoreConfig::default();
    config.limits.max_objects = 100_000;
    config
}

fn main() {
    println!("machine: {}", telemetry_test_support::machine());
    print_memory("at start");

    let mut store = ClusterStore::new(large_cluster_config());
    let now = Instant::now();
    let mut apply_time = Duration::ZERO;
    let mut record_count = 0;
    for cluster in 0..CLUSTERS {
        let name = format!("cluster-{cluster}.example.com");
        let records = cluster_records(cluster);
        record_count += records.len();
        store.sender_connected(&name, now);
        let start = Instant::now();
        store.apply_at(&name, records, now);
        apply_time += start.elapsed();
    }
    println!(
        "applied {record_count} records in {:.1} ms ({:.0} ns/record)",
        millis(apply_time),
        apply_time.as_nanos() as f64 / record_count as f64
    );
    let populated_hwm = print_memory("after populating");

    let mut out = String::new();
    store.render_page(Format::Prometheus, &[], &mut out);
    let rendered_series = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "series rendered: {rendered_series} (store counts {}), page {:.1} MB",
        store.series_count(),
        out.len() as f64 / 1e6
    );

    let mut worst = Duration::ZERO;
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let (min, median, p99, bytes) = measure(&store, format, &mut out);
        worst = worst.max(p99);
        println!(
            "render {:<11} over {} runs: min {:>6.2} ms  median {:>6.2} ms  p99 {:>6.2} ms  ({:.1} MB)",
            format!("{format:?}"),
            renders(),
            millis(min),
            millis(median),
            millis(p99),
            bytes as f64 / 1e6
        );
    }
    let final_hwm = print_memory("after rendering").max(populated_hwm);
    delivery_path(now);

    let render_ok = worst <= RENDER_TARGET;
    let memory_ok = final_hwm <= RSS_TARGET_KIB;
    println!(
        "targets: render p99 {:.2} ms <= {} ms: {}; peak RSS {:.1} MB <= {} MB: {}",
        millis(worst),
        RENDER_TARGET.as_millis(),
        if render_ok { "ok" } else { "MISSED" },
        final_hwm as f64 / 1000.0,
        RSS_TARGET_KIB / 1000,
        if memory_ok { "ok" } else { "MISSED" }
    );
    if !(render_ok && memory_ok) {
        std::process::exit(1);
    }
}
