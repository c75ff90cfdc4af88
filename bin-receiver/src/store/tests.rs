//! Tests of the cluster store: record semantics, sender lifetime, and the
//! rendered page (checked with promtool when it is installed).

use std::{sync::Arc, time::Duration};

use telemetry_link::{RefusedReason, Sample, SeriesKey};
use telemetry_schema::{
    ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, ObjectKind, ObjectRef, PodInfo,
    PodPhase, PodUsage, ScaleEvent,
};

use super::*;
use crate::interpret::Limits;
use telemetry_sources::simulated::{SimulatedClusterConfig, Simulation};
use telemetry_test_support::prom::{check_openmetrics_structure, promtool_check};

fn pod(namespace: &str, name: &str, phase: PodPhase) -> PodInfo {
    PodInfo {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node: if phase == PodPhase::Pending {
            String::new()
        } else {
            "node-a".into()
        },
        pod_ip: if phase == PodPhase::Pending {
            String::new()
        } else {
            "10.0.0.7".into()
        },
        phase,
        created_by_kind: "ReplicaSet".into(),
        created_by_name: "web-5d9f".into(),
        containers: vec![
            ContainerRequests {
                name: "app".into(),
                cpu_cores: Some(0.25),
                memory_bytes: Some(134_217_728.0),
                cpu_limit_cores: Some(0.5),
                memory_limit_bytes: Some(268_435_456.0),
            },
            ContainerRequests {
                name: "sidecar".into(),
                cpu_cores: Some(0.01),
                memory_bytes: None,
                cpu_limit_cores: None,
                memory_limit_bytes: None,
            },
        ],
    }
}

fn usage(namespace: &str, name: &str, cpu: f64, memory: f64) -> PodUsage {
    PodUsage {
        namespace: namespace.into(),
        pod: name.into(),
        timestamp_ms: 0,
        containers: vec![ContainerUsage {
            name: "app".into(),
            cpu_cores: cpu,
            memory_bytes: memory,
        }],
    }
}

fn hpa(namespace: &str, name: &str, current: i32) -> HpaInfo {
    HpaInfo {
        namespace: namespace.into(),
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
    }
}

fn scale(namespace: &str, hpa: &str, old: i32, new: i32, key: &str) -> ScaleEvent {
    ScaleEvent {
        namespace: namespace.into(),
        hpa: hpa.into(),
        old_replicas: old,
        new_replicas: new,
        reason: "cpu resource utilization (percentage of request) above target".into(),
        timestamp_ms: 0,
        key: key.into(),
    }
}

fn object(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> ClusterRecord {
    let key = SeriesKey::new(
        name,
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    ClusterRecord::Sample(Sample::new(Arc::new(key), 0, value))
}

fn store() -> ClusterStore {
    ClusterStore::new(StoreConfig::with_sender_ttl(Duration::from_secs(60)))
}

fn page(store: &ClusterStore) -> String {
    render_prometheus(store)
}

fn render_prometheus(store: &ClusterStore) -> String {
    let mut out = String::new();
    store.render(Format::Prometheus, &mut out);
    out
}

/// The sample lines of `family` (exact name match).
fn lines<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(family))
        .collect()
}

fn sample_lines(page: &str) -> usize {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .count()
}

fn assert_promtool_clean(text: &str) {
    if let Some(result) = promtool_check(text) {
        result.unwrap_or_else(|report| panic!("{report}\n--- page ---\n{text}"));
    }
}

#[test]
fn a_pod_renders_info_phase_requests_and_namespace_count_with_exact_labels() {
    let mut store = store();
    store.apply(
        "prod",
        [ClusterRecord::PodUpsert(pod(
            "web",
            "web-1",
            PodPhase::Running,
        ))],
    );
    let page = page(&store);
    assert_eq!(
        lines(&page, "kube_pod_info"),
        vec![
            r#"kube_pod_info{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",node="node-a",pod_ip="10.0.0.7",created_by_kind="ReplicaSet",created_by_name="web-5d9f"} 1"#
        ]
    );
    assert_eq!(
        lines(&page, "kube_pod_status_phase"),
        vec![
            r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",phase="Pending"} 0"#,
            r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",phase="Running"} 1"#,
            r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",phase="Succeeded"} 0"#,
            r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",phase="Failed"} 0"#,
            r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="web-1",uid="uid-web-1",phase="Unknown"} 0"#,
        ]
    );
    assert_eq!(
        lines(&page, "kube_pod_container_resource_requests"),
        vec![
            r#"kube_pod_container_resource_requests{cluster="prod",namespace="web",pod="web-1",container="app",resource="cpu",unit="core"} 0.25"#,
            r#"kube_pod_container_resource_requests{cluster="prod",namespace="web",pod="web-1",container="app",resource="memory",unit="byte"} 134217728"#,
            r#"kube_pod_container_resource_requests{cluster="prod",namespace="web",pod="web-1",container="sidecar",resource="cpu",unit="core"} 0.01"#,
        ]
    );
    assert_eq!(
        lines(&page, "kube_pod_container_resource_limits"),
        vec![
            r#"kube_pod_container_resource_limits{cluster="prod",namespace="web",pod="web-1",container="app",resource="cpu",unit="core"} 0.5"#,
            r#"kube_pod_container_resource_limits{cluster="prod",namespace="web",pod="web-1",container="app",resource="memory",unit="byte"} 268435456"#,
        ]
    );
    assert_eq!(
        lines(&page, "kube_namespace_pods_running"),
        vec![r#"kube_namespace_pods_running{cluster="prod",namespace="web"} 1"#]
    );
    assert_eq!(
        lines(&page, "telemetry_link_sender_up"),
        vec![r#"telemetry_link_sender_up{cluster="prod"} 1"#]
    );
    for family in FAMILIES {
        assert!(
            page.contains(&format!("# HELP {} ", family.name)),
            "{}",
            family.name
        );
        assert!(
            page.contains(&format!("# TYPE {} ", family.name)),
            "{}",
            family.name
        );
    }
}

#[test]
fn an_upsert_replaces_the_pod_state_without_leaving_stale_series() {
    let mut store = store();
    store.apply(
        "c",
        [ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Pending))],
    );
    let pending = page(&store);
    assert!(lines(&pending, "kube_pod_info")[0].contains(r#"node="",pod_ip="""#));
    assert_eq!(
        lines(&pending, "kube_namespace_pods_running"),
        vec![r#"kube_namespace_pods_running{cluster="c",namespace="ns"} 0"#],
        "known pods, none running: 0"
    );
    store.apply(
        "c",
        [
            ClusterRecord::PodUsage(usage("ns", "p", 0.1, 1e6)),
            ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Running)),
        ],
    );
    let running = page(&store);
    assert_eq!(lines(&running, "kube_pod_info").len(), 1);
    assert!(lines(&running, "kube_pod_info")[0].contains(r#"node="node-a",pod_ip="10.0.0.7""#));
    assert!(running.contains(r#"phase="Running"} 1"#));
    assert!(running.contains(r#"phase="Pending"} 0"#));
    assert_eq!(
        lines(&running, "kube_pod_container_cpu_usage_cores"),
        vec![
            r#"kube_pod_container_cpu_usage_cores{cluster="c",namespace="ns",pod="p",container="app"} 0.1"#
        ],
        "usage survives the pod's upsert"
    );
    assert_eq!(
        lines(&running, "kube_pod_container_memory_working_set_bytes"),
        vec![
            r#"kube_pod_container_memory_working_set_bytes{cluster="c",namespace="ns",pod="p",container="app"} 1000000"#
        ]
    );
}

#[test]
fn a_pod_delete_removes_every_series_of_the_pod_at_once() {
    let mut store = store();
    store.apply(
        "c",
        [
            ClusterRecord::PodUpsert(pod("ns", "a", PodPhase::Running)),
            ClusterRecord::PodUpsert(pod("ns", "b", PodPhase::Running)),
            ClusterRecord::PodUsage(usage("ns", "a", 0.3, 2e7)),
            ClusterRecord::PodUsage(usage("ns", "b", 0.2, 3e7)),
        ],
    );
    store.apply("c", [ClusterRecord::PodDelete(object("ns", "a"))]);
    let page = page(&store);
    assert!(!page.contains(r#"pod="a""#), "{page}");
    assert_eq!(lines(&page, "kube_pod_info").len(), 1);
    assert_eq!(lines(&page, "kube_pod_container_cpu_usage_cores").len(), 1);
    assert!(page.contains(r#"kube_namespace_pods_running{cluster="c",namespace="ns"} 1"#));
    store.apply("c", [ClusterRecord::PodDelete(object("ns", "b"))]);
    let empty = render_prometheus(&store);
    assert!(
        lines(&empty, "kube_namespace_pods_running").is_empty(),
        "no known pods: no namespace line"
    );
    assert_eq!(
        store.series_count(),
        8,
        "only the sender's up, last-seen and budgets remain"
    );
    assert!(
        empty.contains(r#"telemetry_receiver_sender_budget_used{cluster="c",budget="objects"} 0"#)
    );
}

#[test]
fn usage_of_an_unknown_pod_waits_for_the_pod_and_is_dropped_when_it_never_comes() {
    let mut store = store();
    store.apply(
        "c",
        [ClusterRecord::PodUsage(usage("ns", "early", 0.4, 5e7))],
    );
    assert!(lines(&page(&store), "kube_pod_container_cpu_usage_cores").is_empty());
    store.apply(
        "c",
        [ClusterRecord::PodUpsert(pod(
            "ns",
            "early",
            PodPhase::Running,
        ))],
    );
    assert_eq!(
        lines(&page(&store), "kube_pod_container_cpu_usage_cores").len(),
        1
    );

    store.apply(
        "c",
        [ClusterRecord::PodUsage(usage("ns", "ghost", 0.4, 5e7))],
    );
    store.apply(
        "c",
        [
            ClusterRecord::SnapshotBegin {
                id: 1,
                kinds: vec![ObjectKind::Pod],
            },
            ClusterRecord::PodUpsert(pod("ns", "early", PodPhase::Running)),
            ClusterRecord::SnapshotEnd { id: 1 },
            ClusterRecord::PodUpsert(pod("ns", "ghost", PodPhase::Running)),
        ],
    );
    let page = page(&store);
    assert!(
        lines(&page, "kube_pod_container_cpu_usage_cores")
            .iter()
            .all(|line| !line.contains("ghost")),
        "the ghost's usage went with the snapshot: {page}"
    );
    assert_eq!(lines(&page, "kube_pod_info").len(), 2);
}

#[test]
fn a_snapshot_replaces_its_kinds_and_keeps_counters_of_surviving_hpas() {
    let mut store = store();
    store.apply(
        "c",
        [
            ClusterRecord::PodUpsert(pod("ns", "stays", PodPhase::Running)),
            ClusterRecord::PodUpsert(pod("ns", "goes", PodPhase::Running)),
            ClusterRecord::PodUsage(usage("ns", "goes", 0.1, 1e7)),
            ClusterRecord::HpaUpsert(hpa("ns", "kept", 2)),
            ClusterRecord::HpaUpsert(hpa("ns", "dropped", 3)),
            ClusterRecord::ScaleEvent(scale("ns", "kept", 1, 2, "k1")),
            ClusterRecord::ScaleEvent(scale("ns", "dropped", 1, 3, "k2")),
        ],
    );
    store.apply(
        "c",
        [
            ClusterRecord::SnapshotBegin {
                id: 7,
                kinds: vec![ObjectKind::Pod, ObjectKind::Hpa],
            },
            ClusterRecord::PodUpsert(pod("ns", "stays", PodPhase::Running)),
            ClusterRecord::PodUpsert(pod("ns", "new", PodPhase::Pending)),
            ClusterRecord::HpaUpsert(hpa("ns", "kept", 2)),
        ],
    );
    let during = page(&store);
    assert!(
        during.contains(r#"pod="goes""#),
        "nothing disappears before the end"
    );
    store.apply("c", [ClusterRecord::SnapshotEnd { id: 7 }]);
    let after = page(&store);
    assert!(!after.contains(r#"pod="goes""#), "{after}");
    assert!(after.contains(r#"pod="stays""#));
    assert!(after.contains(r#"pod="new""#));
    assert!(!after.contains(r#"horizontalpodautoscaler="dropped""#));
    assert_eq!(
        lines(&after, "kube_horizontalpodautoscaler_scale_events_total"),
        vec![
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="c",namespace="ns",horizontalpodautoscaler="kept",direction="up"} 1"#,
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="c",namespace="ns",horizontalpodautoscaler="kept",direction="down"} 0"#,
        ]
    );
}

#[test]
fn a_snapshot_of_one_kind_leaves_the_other_alone_and_overlapping_snapshots_work() {
    let mut store = store();
    store.apply(
        "c",
        [
            ClusterRecord::PodUpsert(pod("ns", "old-pod", PodPhase::Running)),
            ClusterRecord::HpaUpsert(hpa("ns", "old-hpa", 1)),
        ],
    );
    store.apply(
        "c",
        [
            ClusterRecord::SnapshotBegin {
                id: 1,
                kinds: vec![ObjectKind::Pod],
            },
            ClusterRecord::SnapshotBegin {
                id: 2,
                kinds: vec![ObjectKind::Hpa],
            },
            ClusterRecord::PodUpsert(pod("ns", "new-pod", PodPhase::Running)),
            ClusterRecord::SnapshotEnd { id: 1 },
        ],
    );
    let middle = page(&store);
    assert!(!middle.contains("old-pod"));
    assert!(middle.contains("new-pod"));
    assert!(middle.contains("old-hpa"), "the HPA snapshot is still open");
    store.apply(
        "c",
        [
            ClusterRecord::HpaUpsert(hpa("ns", "new-hpa", 1)),
            ClusterRecord::SnapshotEnd { id: 2 },
        ],
    );
    let end = page(&store);
    assert!(!end.contains("old-hpa"));
    assert!(end.contains("new-hpa"));
    assert!(
        end.contains("new-pod"),
        "the HPA snapshot does not touch pods"
    );
}

#[test]
fn an_end_without_its_begin_is_ignored() {
    let t0 = Instant::now();
    let mut store = store();
    store.apply_at(
        "c",
        [ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Running))],
        t0,
    );
    let before = page(&store);
    store.apply_at("c", [ClusterRecord::SnapshotEnd { id: 99 }], t0);
    assert_eq!(page(&store), before);
    // An end closes its snapshot: a second end with the same id is unmatched.
    store.apply(
        "c",
        [
            ClusterRecord::SnapshotBegin {
                id: 3,
                kinds: vec![ObjectKind::Pod],
            },
            ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Running)),
            ClusterRecord::SnapshotEnd { id: 3 },
            ClusterRecord::PodUpsert(pod("ns", "q", PodPhase::Running)),
            ClusterRecord::SnapshotEnd { id: 3 },
        ],
    );
    assert!(page(&store).contains(r#"pod="q""#));
}

#[test]
fn scale_events_count_by_direction_once_per_key_with_bounded_memory() {
    let mut store = ClusterStore::new(StoreConfig {
        limits: Limits {
            scale_event_keys: 2,
            ..Limits::default()
        },
        ..StoreConfig::default()
    });
    store.apply("c", [ClusterRecord::HpaUpsert(hpa("ns", "h", 1))]);
    let fresh = page(&store);
    assert_eq!(
        lines(&fresh, "kube_horizontalpodautoscaler_scale_events_total"),
        vec![
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="c",namespace="ns",horizontalpodautoscaler="h",direction="up"} 0"#,
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="c",namespace="ns",horizontalpodautoscaler="h",direction="down"} 0"#,
        ],
        "both directions exist at 0 once the HPA exists"
    );
    store.apply(
        "c",
        [
            ClusterRecord::ScaleEvent(scale("ns", "h", 1, 4, "a")),
            ClusterRecord::ScaleEvent(scale("ns", "h", 1, 4, "a")),
            ClusterRecord::ScaleEvent(scale("ns", "h", 4, 2, "b")),
            ClusterRecord::ScaleEvent(scale("ns", "h", 2, 2, "same-size")),
            ClusterRecord::ScaleEvent(scale("ns", "h", 4, 2, "b")),
            ClusterRecord::ScaleEvent(scale("ns", "h", 2, 3, "c")),
        ],
    );
    let counted = page(&store);
    assert!(
        counted.contains(r#"horizontalpodautoscaler="h",direction="up"} 2"#),
        "{counted}"
    );
    assert!(counted.contains(r#"horizontalpodautoscaler="h",direction="down"} 1"#));
    // Only the last 2 counted keys are remembered: "a" has been forgotten.
    store.apply(
        "c",
        [ClusterRecord::ScaleEvent(scale("ns", "h", 1, 4, "a"))],
    );
    assert!(page(&store).contains(r#"horizontalpodautoscaler="h",direction="up"} 3"#));

    store.apply("c", [ClusterRecord::HpaDelete(object("ns", "h"))]);
    let deleted = page(&store);
    assert!(lines(&deleted, "kube_horizontalpodautoscaler_scale_events_total").is_empty());
    assert!(lines(&deleted, "kube_horizontalpodautoscaler_spec_min_replicas").is_empty());
    store.apply("c", [ClusterRecord::HpaUpsert(hpa("ns", "h", 1))]);
    assert!(
        page(&store).contains(r#"horizontalpodautoscaler="h",direction="up"} 0"#),
        "a re-created HPA starts from 0"
    );
}

#[test]
fn a_scale_event_before_its_hpa_shows_once_the_hpa_exists() {
    let mut store = store();
    store.apply(
        "c",
        [ClusterRecord::ScaleEvent(scale("ns", "late", 1, 3, "k"))],
    );
    assert!(lines(
        &page(&store),
        "kube_horizontalpodautoscaler_scale_events_total"
    )
    .is_empty());
    store.apply("c", [ClusterRecord::HpaUpsert(hpa("ns", "late", 3))]);
    let page = page(&store);
    assert!(page.contains(r#"horizontalpodautoscaler="late",direction="up"} 1"#));
    assert_eq!(
        lines(&page, "kube_horizontalpodautoscaler_spec_target_metric"),
        vec![
            r#"kube_horizontalpodautoscaler_spec_target_metric{cluster="c",namespace="ns",horizontalpodautoscaler="late",metric_name="cpu",metric_target_type="utilization"} 50"#
        ]
    );
    assert_eq!(
        lines(
            &page,
            "kube_horizontalpodautoscaler_status_current_replicas"
        ),
        vec![
            r#"kube_horizontalpodautoscaler_status_current_replicas{cluster="c",namespace="ns",horizontalpodautoscaler="late"} 3"#
        ]
    );
    assert!(page.contains(r#"kube_horizontalpodautoscaler_spec_max_replicas{cluster="c",namespace="ns",horizontalpodautoscaler="late"} 8"#));
    assert!(page.contains(r#"kube_horizontalpodautoscaler_spec_min_replicas{cluster="c",namespace="ns",horizontalpodautoscaler="late"} 1"#));
    assert!(page.contains(r#"kube_horizontalpodautoscaler_status_desired_replicas{cluster="c",namespace="ns",horizontalpodautoscaler="late"} 3"#));
}

#[test]
fn samples_become_gauges_with_the_cluster_label_first_and_last_value_winning() {
    let mut store = store();
    store.apply(
        "east",
        [
            sample("telemetry_synthetic_value", &[("series", "0")], 1.0),
            sample("telemetry_synthetic_value", &[("series", "1")], 2.0),
            sample("telemetry_synthetic_value", &[("series", "0")], 3.0),
            sample(
                "app_queue_depth",
                &[("cluster", "spoofed"), ("queue", "a")],
                7.0,
            ),
        ],
    );
    store.apply(
        "west",
        [sample("telemetry_synthetic_value", &[("series", "0")], 9.0)],
    );
    let page = page(&store);
    assert_eq!(
        lines(&page, "telemetry_synthetic_value"),
        vec![
            r#"telemetry_synthetic_value{cluster="east",series="0"} 3"#,
            r#"telemetry_synthetic_value{cluster="east",series="1"} 2"#,
            r#"telemetry_synthetic_value{cluster="west",series="0"} 9"#,
        ]
    );
    assert_eq!(
        lines(&page, "app_queue_depth"),
        vec![r#"app_queue_depth{cluster="east",queue="a"} 7"#]
    );
    assert_eq!(
        page.matches("# TYPE telemetry_synthetic_value gauge")
            .count(),
        1
    );
}

#[test]
fn invalid_reserved_and_excess_sample_series_are_refused() {
    let mut store = ClusterStore::new(StoreConfig {
        limits: Limits {
            max_sample_series: 2,
            ..Limits::default()
        },
        ..StoreConfig::default()
    });
    let refused = store.apply(
        "c",
        [
            sample("bad-name", &[], 1.0),
            sample("ok_metric", &[("bad-label", "x")], 1.0),
            sample("ok_metric", &[("__reserved", "x")], 1.0),
            sample("kube_pod_info", &[("x", "y")], 1.0),
            sample("kube_horizontalpodautoscaler_scale_events", &[], 1.0),
            sample("telemetry_link_frames_total", &[], 1.0),
            sample("telemetry_receiver_anything", &[], 1.0),
            sample("first", &[], 1.0),
            sample("second", &[], 2.0),
            sample("third", &[], 3.0),
            sample("first", &[], 4.0),
        ],
    );
    assert_eq!(refused.get(RefusedReason::Invalid), 7);
    assert_eq!(refused.get(RefusedReason::Budget), 1, "third");
    assert_eq!(refused.total(), 8);
    let page = page(&store);
    assert_eq!(lines(&page, "first"), vec![r#"first{cluster="c"} 4"#]);
    assert_eq!(lines(&page, "second"), vec![r#"second{cluster="c"} 2"#]);
    assert!(lines(&page, "third").is_empty(), "over the series limit");
    assert!(!page.contains("bad"));
    assert!(!page.contains("__reserved"));
    assert!(lines(&page, "kube_pod_info").is_empty());
    assert!(!page.contains("telemetry_link_frames_total"));
    assert!(!page.contains("telemetry_receiver_anything"));
}

#[test]
fn a_sender_stays_up_within_the_ttl_and_expires_beyond_it() {
    let t0 = Instant::now();
    let mut store = store();
    store.sender_connected("c", t0);
    store.apply_at(
        "c",
        [
            ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Running)),
            sample("telemetry_synthetic_value", &[("series", "0")], 1.0),
        ],
        t0,
    );
    store.sender_disconnected("c", t0 + Duration::from_secs(10));
    assert_eq!(
        store.expire(t0 + Duration::from_secs(70)),
        0,
        "exactly the TTL is still within it"
    );
    let within = page(&store);
    assert!(within.contains(r#"telemetry_link_sender_up{cluster="c"} 1"#));
    assert!(within.contains(r#"pod="p""#));
    assert_eq!(store.sender_up("c"), Some(true));

    assert_eq!(store.expire(t0 + Duration::from_secs(71)), 1);
    let expired = page(&store);
    assert!(expired.contains(r#"telemetry_link_sender_up{cluster="c"} 0"#));
    assert_eq!(store.sender_up("c"), Some(false));
    assert_eq!(
        sample_lines(&expired),
        8,
        "only up, last-seen and budgets remain: {expired}"
    );
    assert!(expired
        .contains(r#"telemetry_receiver_sender_budget_used{cluster="c",budget="objects"} 0"#));
    assert_eq!(
        store.expire(t0 + Duration::from_secs(500)),
        0,
        "expires once"
    );

    store.sender_connected("c", t0 + Duration::from_secs(600));
    assert!(page(&store).contains(r#"telemetry_link_sender_up{cluster="c"} 1"#));
}

#[test]
fn an_overlapping_reconnect_keeps_the_sender_connected() {
    let t0 = Instant::now();
    let mut store = store();
    store.sender_connected("c", t0);
    store.sender_connected("c", t0 + Duration::from_secs(1));
    store.sender_disconnected("c", t0 + Duration::from_secs(2));
    assert_eq!(store.expire(t0 + Duration::from_secs(1_000)), 0);
    store.sender_disconnected("c", t0 + Duration::from_secs(1_000));
    assert_eq!(store.expire(t0 + Duration::from_secs(1_061)), 1);
    store.sender_disconnected("unknown", t0);
    assert_eq!(store.clusters().collect::<Vec<_>>(), vec!["c"]);
}

#[test]
fn last_seen_follows_connects_disconnects_and_records() {
    let t0 = Instant::now();
    let mut store = store();
    let base = store.clock.unix_seconds(t0);
    let last_seen = |store: &ClusterStore| -> f64 {
        let page = page(store);
        let line = lines(
            &page,
            "telemetry_receiver_sender_last_seen_timestamp_seconds",
        )[0]
        .to_string();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    store.sender_connected("c", t0);
    assert!((last_seen(&store) - base).abs() < 1e-3);
    store.apply_at("c", [], t0 + Duration::from_secs(5));
    assert!((last_seen(&store) - (base + 5.0)).abs() < 1e-3);
    store.sender_disconnected("c", t0 + Duration::from_secs(8));
    assert!((last_seen(&store) - (base + 8.0)).abs() < 1e-3);
    assert!(base > 1.6e9, "unix seconds");
}

/// A store with every kind of series, including awkward label values.
fn rich_store() -> ClusterStore {
    let mut store = store();
    let t0 = Instant::now();
    store.sender_connected("prod \"eu\"\\1", t0);
    store.apply_at(
        "prod \"eu\"\\1",
        [
            ClusterRecord::SnapshotBegin {
                id: 1,
                kinds: vec![ObjectKind::Pod, ObjectKind::Hpa],
            },
            ClusterRecord::PodUpsert(pod("web", "web-1", PodPhase::Running)),
            ClusterRecord::PodUpsert(pod("web", "web-2", PodPhase::Pending)),
            ClusterRecord::PodUpsert(pod("batch", "job-1", PodPhase::Succeeded)),
            ClusterRecord::HpaUpsert(hpa("web", "web", 2)),
            ClusterRecord::SnapshotEnd { id: 1 },
            ClusterRecord::PodUsage(usage("web", "web-1", 0.123456, 31_457_280.0)),
            ClusterRecord::ScaleEvent(scale("web", "web", 1, 2, "e1/1")),
            sample(
                "telemetry_synthetic_value",
                &[("series", "line\nbreak")],
                42.0,
            ),
            sample("app_temperature_celsius", &[], f64::NAN),
            sample("app_limit", &[("kind", "upper")], f64::INFINITY),
        ],
        t0,
    );
    store.sender_connected("gone", t0);
    store.apply_at(
        "gone",
        [ClusterRecord::PodUpsert(pod("x", "y", PodPhase::Failed))],
        t0,
    );
    store.sender_disconnected("gone", t0);
    store.expire(t0 + Duration::from_secs(3600));
    store
}

#[test]
fn the_prometheus_page_passes_promtool_and_renders_deterministically() {
    let store = rich_store();
    let mut out = String::new();
    store.render_page(Format::Prometheus, &[], &mut out);
    assert!(out.contains(r#"cluster="prod \"eu\"\\1""#), "{out}");
    assert!(out.contains(r#"series="line\nbreak""#));
    assert!(out.contains("app_temperature_celsius{cluster=\"prod \\\"eu\\\"\\\\1\"} NaN\n"));
    assert!(out.contains("} +Inf\n"));
    assert!(!out.contains("# EOF"));
    assert_eq!(sample_lines(&out), store.series_count());
    let mut again = String::with_capacity(out.len());
    store.render_page(Format::Prometheus, &[], &mut again);
    assert_eq!(again, out);
    assert_promtool_clean(&out);
}

#[test]
fn the_openmetrics_page_is_well_formed_and_includes_registry_families() {
    let store = rich_store();
    let registry = prometheus::Registry::new();
    let frames = prometheus::IntCounter::new("telemetry_link_frames_total", "Frames.").unwrap();
    frames.inc_by(5);
    registry.register(Box::new(frames)).unwrap();
    let clashing =
        prometheus::IntGauge::new("telemetry_link_sender_up", "clashes with the store").unwrap();
    registry.register(Box::new(clashing)).unwrap();
    let families = registry.gather();

    let mut out = String::from("stale content from the previous scrape");
    store.render_page(Format::OpenMetrics, &families, &mut out);
    assert!(!out.starts_with("stale"));
    assert!(out.contains("# TYPE kube_horizontalpodautoscaler_scale_events counter\n"));
    assert!(out.contains(r#"kube_horizontalpodautoscaler_scale_events_total{cluster="prod \"eu\"\\1",namespace="web",horizontalpodautoscaler="web",direction="up"} 1"#));
    assert!(out.contains("# TYPE telemetry_link_frames counter\ntelemetry_link_frames_total 5\n"));
    assert_eq!(
        out.matches("# TYPE telemetry_link_sender_up ").count(),
        1,
        "the clash is skipped"
    );
    assert!(out.ends_with("# EOF\n"));
    check_openmetrics_structure(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));

    let mut prometheus_page = String::new();
    store.render_page(Format::Prometheus, &families, &mut prometheus_page);
    assert!(prometheus_page
        .contains("# TYPE telemetry_link_frames_total counter\ntelemetry_link_frames_total 5\n"));
    assert_promtool_clean(&prometheus_page);
}

#[test]
fn scrape_expires_before_rendering() {
    let t0 = Instant::now();
    let mut store = store();
    store.sender_connected("c", t0);
    store.apply_at(
        "c",
        [ClusterRecord::PodUpsert(pod("ns", "p", PodPhase::Running))],
        t0,
    );
    store.sender_disconnected("c", t0);
    let mut out = String::new();
    store.scrape(
        t0 + Duration::from_secs(61),
        Format::Prometheus,
        &[],
        &mut out,
    );
    assert!(!out.contains(r#"pod="p""#));
    assert!(out.contains(r#"telemetry_link_sender_up{cluster="c"} 0"#));
}

#[test]
fn the_simulated_cluster_feeds_a_consistent_store() {
    let config = SimulatedClusterConfig {
        seed: 4,
        failure_probability: 0.05,
        ..SimulatedClusterConfig::default()
    };
    let mut simulation = Simulation::new(config, 1_700_000_000_000);
    let t0 = Instant::now();
    let mut store = store();
    store.apply_at("sim", simulation.snapshot(), t0);
    let mut events = (0u64, 0u64);
    for step in 0..120 {
        let records = simulation.step();
        for record in &records {
            if let ClusterRecord::ScaleEvent(e) = record {
                match e.direction() {
                    "up" => events.0 += 1,
                    _ => events.1 += 1,
                }
            }
        }
        store.apply_at("sim", records, t0);
        if step == 70 {
            // A reconnect snapshot changes nothing.
            let before = page(&store);
            store.apply_at("sim", simulation.snapshot(), t0);
            assert_eq!(page(&store), before);
        }
    }
    let page = page(&store);
    let running = page
        .lines()
        .filter(|l| l.starts_with("kube_pod_status_phase{") && l.contains(r#"phase="Running"} 1"#))
        .count();
    let pods_running_line =
        format!(r#"kube_namespace_pods_running{{cluster="sim",namespace="demo"}} {running}"#);
    assert!(
        page.contains(&pods_running_line),
        "{pods_running_line}\n{page}"
    );
    let current = format!(
        r#"kube_horizontalpodautoscaler_status_current_replicas{{cluster="sim",namespace="demo",horizontalpodautoscaler="php-apache"}} {}"#,
        simulation.replicas()
    );
    assert!(page.contains(&current));
    assert!(events.0 > 0 && events.1 > 0);
    assert!(page.contains(&format!(r#"direction="up"}} {}"#, events.0)));
    assert!(page.contains(&format!(r#"direction="down"}} {}"#, events.1)));
    let usage_lines = lines(&page, "kube_pod_container_cpu_usage_cores");
    for line in page
        .lines()
        .filter(|l| l.starts_with("kube_pod_status_phase{") && l.contains(r#"phase="Running"} 1"#))
    {
        let pod_label = line
            .split(',')
            .find(|part| part.starts_with("pod="))
            .unwrap();
        assert!(
            usage_lines.iter().any(|u| u.contains(pod_label)),
            "running pod {pod_label} has usage"
        );
    }
    assert_promtool_clean(&page);
}

fn timed(name: &str, series: &str, timestamp_ms: i64, value: f64) -> ClusterRecord {
    let key = SeriesKey::new(name, [("series", series)]).unwrap();
    ClusterRecord::Sample(Sample::new(Arc::new(key), timestamp_ms, value))
}

fn timed_usage(name: &str, timestamp_ms: i64, cpu: f64) -> ClusterRecord {
    let mut u = usage("web", name, cpu, 1.0);
    u.timestamp_ms = timestamp_ms;
    ClusterRecord::PodUsage(u)
}

#[test]
fn the_present_comes_first_and_the_backlog_never_moves_it_back() {
    let mut s = store();
    let now = Instant::now();
    // The present: pod a Running, 0.5 cores at t=900, the sample at 50.
    let present = vec![
        ClusterRecord::SnapshotBegin {
            id: 9,
            kinds: vec![ObjectKind::Pod, ObjectKind::Hpa],
        },
        ClusterRecord::PodUpsert(pod("web", "a", PodPhase::Running)),
        ClusterRecord::HpaUpsert(hpa("web", "api", 3)),
        ClusterRecord::SnapshotEnd { id: 9 },
        timed_usage("a", 900, 0.5),
        timed("x", "0", 1000, 50.0),
    ];
    assert!(s.apply_present_at("prod", 7, 100, present, now));
    // The backlog (sequence 1..=6, all covered): older states, a pod that
    // was deleted before the present, older and newer samples.
    s.apply_delivery_at(
        "prod",
        7,
        1,
        vec![
            ClusterRecord::PodUpsert(pod("web", "a", PodPhase::Pending)),
            ClusterRecord::PodUpsert(pod("web", "gone", PodPhase::Running)),
            timed("x", "0", 500, 10.0),
            timed_usage("a", 800, 0.1),
            ClusterRecord::ScaleEvent(scale("web", "api", 1, 3, "e1")),
            ClusterRecord::HpaUpsert(hpa("web", "api", 1)),
        ],
        now,
    );
    let p = page(&s);
    assert!(p.contains(r#"kube_pod_status_phase{cluster="prod",namespace="web",pod="a",uid="uid-a",phase="Running"} 1"#), "{p}");
    assert!(
        !p.contains(r#"pod="gone""#),
        "a pod from history does not come back"
    );
    assert_eq!(lines(&p, "x"), vec![r#"x{cluster="prod",series="0"} 50"#]);
    assert_eq!(
        lines(&p, "kube_pod_container_cpu_usage_cores"),
        vec![
            r#"kube_pod_container_cpu_usage_cores{cluster="prod",namespace="web",pod="a",container="app"} 0.5"#
        ]
    );
    assert_eq!(
        lines(&p, "kube_horizontalpodautoscaler_status_current_replicas"),
        vec![
            r#"kube_horizontalpodautoscaler_status_current_replicas{cluster="prod",namespace="web",horizontalpodautoscaler="api"} 3"#
        ]
    );
    assert_eq!(
        lines(&p, "kube_horizontalpodautoscaler_scale_events_total"),
        vec![
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="prod",namespace="web",horizontalpodautoscaler="api",direction="up"} 1"#,
            r#"kube_horizontalpodautoscaler_scale_events_total{cluster="prod",namespace="web",horizontalpodautoscaler="api",direction="down"} 0"#,
        ],
        "scale events from history still count"
    );

    // Covered history newer than the present's values still moves forward.
    s.apply_delivery_at(
        "prod",
        7,
        7,
        vec![timed("x", "0", 1500, 60.0), timed_usage("a", 950, 0.7)],
        now,
    );
    let p = page(&s);
    assert_eq!(lines(&p, "x"), vec![r#"x{cluster="prod",series="0"} 60"#]);
    assert!(p.contains(r#"pod="a",container="app"} 0.7"#));

    // After covers_seq, records are news again.
    s.apply_delivery_at(
        "prod",
        7,
        101,
        vec![ClusterRecord::PodUpsert(pod("web", "a", PodPhase::Failed))],
        now,
    );
    assert!(page(&s).contains(r#"pod="a",uid="uid-a",phase="Failed"} 1"#));
}

#[test]
fn a_present_older_than_what_is_applied_is_ignored_and_another_stream_is_news() {
    let mut s = store();
    let now = Instant::now();
    s.apply_delivery_at(
        "prod",
        7,
        1,
        (1..=200).map(|i| timed("x", "0", i, i as f64)).collect(),
        now,
    );
    assert!(!s.apply_present_at("prod", 7, 150, vec![timed("x", "0", 150, 150.0)], now));
    assert_eq!(
        lines(&page(&s), "x"),
        vec![r#"x{cluster="prod",series="0"} 200"#]
    );
    // A present of the current position is fine.
    assert!(s.apply_present_at("prod", 7, 200, vec![timed("x", "0", 300, 300.0)], now));
    // A new stream (the sender's spool was recreated): nothing is covered.
    s.apply_delivery_at("prod", 8, 1, vec![timed("x", "0", 5, 5.0)], now);
    assert_eq!(
        lines(&page(&s), "x"),
        vec![r#"x{cluster="prod",series="0"} 5"#]
    );
}

#[test]
fn every_change_of_what_is_rendered_moves_the_revision_and_rendering_does_not() {
    let mut store = ClusterStore::new(StoreConfig::with_sender_ttl(Duration::from_millis(1)));
    let t0 = Instant::now();
    let mut seen = vec![store.revision()];
    let mut moved = |store: &ClusterStore, what: &str| {
        let now = store.revision();
        assert!(!seen.contains(&now), "{what} did not move the revision");
        seen.push(now);
    };
    store.sender_connected("c1", t0);
    moved(&store, "connect");
    store.apply_at("c1", [sample("m", &[], 1.0)], t0);
    moved(&store, "apply");
    store.deliver_at("c1", 7, 0, vec![sample("m", &[], 2.0)], t0);
    moved(&store, "delivery");
    store.present_at("c1", 7, 5, vec![sample("m", &[], 3.0)], t0);
    moved(&store, "present");
    store.sender_disconnected("c1", t0);
    moved(&store, "disconnect");
    let before = store.revision();
    page(&store);
    assert_eq!(store.revision(), before, "rendering changes nothing");
    assert_eq!(store.expire(t0 + Duration::from_millis(50)), 1);
    moved(&store, "expiry");
    let before = store.revision();
    assert_eq!(store.expire(t0 + Duration::from_millis(100)), 0);
    assert_eq!(store.revision(), before, "an expiry that removes nothing");
}
