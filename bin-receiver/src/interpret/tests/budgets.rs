//! Budgets per cluster and refusals: what does not fit or is invalid is
//! refused (changing nothing, counted by reason), admitted objects keep
//! updating, deletes and snapshot ends free room, a snapshot over the
//! budget applies what fits in its order — on `/metrics` and in remote
//! write alike.

use telemetry_link::{RefusedCounts, RefusedReason};

use super::*;
use crate::{
    interpret::budget::{MAX_LABEL_BYTES, MAX_NAME_BYTES},
    store::PresentOutcome,
};

fn with_objects(max_objects: usize) -> Both {
    Both::new(Limits {
        max_objects,
        ..Limits::default()
    })
}

/// The pods `/metrics` shows, by name.
fn pods(both: &Both) -> Vec<String> {
    both.page()
        .into_iter()
        .filter(|(labels, _)| labels[0].1 == families::POD_INFO.name)
        .filter_map(|(labels, _)| {
            labels
                .iter()
                .find(|(k, _)| k == "pod")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

fn refused(both: &Both, reason: RefusedReason) -> u64 {
    both.refused.get(reason)
}

fn used_objects(both: &Both) -> f64 {
    let mut out = String::new();
    both.store.render(Format::Prometheus, &mut out);
    out.lines()
        .find(|l| {
            l.starts_with(families::SENDER_BUDGET_USED.name) && l.contains(r#"budget="objects""#)
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(-1.0)
}

fn with_containers(name: &str, containers: usize) -> ClusterRecord {
    let mut p = pod(name, PodPhase::Running, "n1");
    let template = p.containers[0].clone();
    p.containers = (0..containers)
        .map(|i| ContainerRequests {
            name: format!("c{i}"),
            ..template.clone()
        })
        .collect();
    ClusterRecord::PodUpsert(p)
}

#[test]
fn objects_beyond_the_budget_are_refused_and_admitted_ones_keep_updating() {
    // A pod of one container and an HPA of one target are 2 units each.
    let mut both = with_objects(6);
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Pending, "")),
        ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("c", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("d", PodPhase::Running, "n1")),
        usage("unknown", 1_000, 0.1),
        hpa("api", 1),
        scale("unknown-hpa", 1, 2, "e1"),
    ]);
    assert_eq!(refused(&both, RefusedReason::Budget), 4);
    assert_eq!(both.refused.total(), 4);
    assert_eq!(pods(&both), ["a", "b", "c"]);
    assert_eq!(used_objects(&both), 6.0);
    both.assert_same("at the budget");

    // Admitted objects keep updating; growing one beyond the budget does not.
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n2")),
        usage("a", 2_000, 0.3),
        with_containers("b", 2),
    ]);
    assert_eq!(refused(&both, RefusedReason::Budget), 1, "b would grow");
    assert_eq!(both.refused.total(), 1);
    both.assert_same("updates");
    let containers: Vec<String> = both
        .page()
        .into_iter()
        .filter(|(labels, _)| labels[0].1 == families::POD_CONTAINER_RESOURCE_REQUESTS.name)
        .filter(|(labels, _)| labels.iter().any(|(k, v)| k == "pod" && v == "b"))
        .filter_map(|(labels, _)| labels.iter().find(|(k, _)| k == "container").cloned())
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        containers,
        ["app", "app"],
        "b keeps its state (cpu, memory)"
    );

    // A delete frees room for a new object.
    both.deliver(vec![
        delete_pod("c"),
        hpa("api", 2),
        scale("api", 1, 2, "e1"),
    ]);
    assert!(both.refused.is_empty(), "{:?}", both.refused);
    assert_eq!(used_objects(&both), 6.0);
    both.assert_same("after a delete");
}

#[test]
fn a_snapshot_over_the_budget_updates_what_is_admitted_and_admits_new_objects_in_order() {
    let mut both = with_objects(6);
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("c", PodPhase::Running, "n1")),
    ]);
    // The relist lists a (admitted) and d, e (new): b and c still hold
    // their room until the end, which removes them.
    both.deliver(snapshot(
        1,
        &[ObjectKind::Pod],
        vec![
            ClusterRecord::PodUpsert(pod("d", PodPhase::Running, "n1")),
            ClusterRecord::PodUpsert(pod("a", PodPhase::Succeeded, "n1")),
            ClusterRecord::PodUpsert(pod("e", PodPhase::Running, "n1")),
        ],
    ));
    assert_eq!(refused(&both, RefusedReason::Budget), 2, "d and e");
    assert_eq!(pods(&both), ["a"]);
    assert_eq!(phase_of(&both, "a"), "Succeeded");
    both.assert_same("after the snapshot");
    // The room the end freed takes the next upserts.
    both.deliver(vec![
        ClusterRecord::PodUpsert(pod("d", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("e", PodPhase::Running, "n1")),
    ]);
    assert!(both.refused.is_empty());
    assert_eq!(pods(&both), ["a", "d", "e"]);
    both.assert_same("after the next upserts");

    // With room, the same relist applies whole, in its order, until full.
    let mut roomy = with_objects(8);
    roomy.deliver(vec![
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
    ]);
    roomy.deliver(snapshot(
        2,
        &[ObjectKind::Pod],
        vec![
            ClusterRecord::PodUpsert(pod("c", PodPhase::Running, "n1")),
            ClusterRecord::PodUpsert(pod("d", PodPhase::Running, "n1")),
            ClusterRecord::PodUpsert(pod("e", PodPhase::Running, "n1")),
        ],
    ));
    assert_eq!(refused(&roomy, RefusedReason::Budget), 1, "e, the last");
    assert_eq!(pods(&roomy), ["c", "d"]);
    roomy.assert_same("a relist of new objects");
}

fn phase_of(both: &Both, name: &str) -> String {
    both.page()
        .into_iter()
        .find_map(|(labels, value)| {
            let is = labels[0].1 == families::POD_STATUS_PHASE.name
                && labels.iter().any(|(k, v)| k == "pod" && v == name);
            (is && value == 1.0).then(|| {
                labels
                    .iter()
                    .find(|(k, _)| k == "phase")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
        })
        .unwrap_or_default()
}

#[test]
fn sample_series_beyond_the_count_the_bytes_or_the_label_limits_are_refused() {
    let mut both = Both::new(Limits {
        max_sample_series: 2,
        max_labels_per_series: 1,
        ..Limits::default()
    });
    let two_labels = SeriesKey::new("job_value", [("a", "1"), ("b", "2")]).expect("a key");
    both.deliver(vec![
        sample("job_value", "0", 1, 1.0),
        sample("job_value", "1", 1, 2.0),
        sample("job_value", "2", 1, 3.0),
        sample("job_value", "0", 2, 4.0),
        ClusterRecord::Sample(Sample::new(Arc::new(two_labels), 1, 5.0)),
        sample("bad-name", "0", 1, 6.0),
    ]);
    assert_eq!(refused(&both, RefusedReason::Budget), 1);
    assert_eq!(refused(&both, RefusedReason::LabelLimit), 1);
    assert_eq!(refused(&both, RefusedReason::Invalid), 1);
    assert_eq!(both.refused.total(), 3);
    both.assert_same("two series held");

    // Bytes: each synthetic-like series is charged its encoding and labels.
    let key = SeriesKey::new("job_value", [("series", "0")]).expect("a key");
    let cost = crate::interpret::budget::sample_cost(&key, r#",series="0""#.len());
    let mut bytes = Both::new(Limits {
        max_sample_bytes: 2 * cost,
        ..Limits::default()
    });
    bytes.deliver(vec![
        sample("job_value", "0", 1, 1.0),
        sample("job_value", "1", 1, 1.0),
        sample("job_value", "2", 1, 1.0),
    ]);
    assert_eq!(refused(&bytes, RefusedReason::Budget), 1);
    bytes.assert_same("two series' bytes held");
}

#[test]
fn records_keeping_strings_longer_than_a_kubernetes_name_are_invalid() {
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let mut both = with_objects(100);
    let mut long_node = pod("a", PodPhase::Running, &long);
    long_node.node = long.clone();
    let mut long_container = pod("b", PodPhase::Running, "n1");
    long_container.containers[0].name = "c".repeat(MAX_LABEL_BYTES + 1);
    let ClusterRecord::HpaUpsert(mut long_target) = hpa("api", 1) else {
        unreachable!("hpa() makes an upsert")
    };
    long_target.targets[0].metric_name = long.clone();
    both.deliver(vec![
        ClusterRecord::PodUpsert(long_node),
        ClusterRecord::PodUpsert(long_container),
        ClusterRecord::HpaUpsert(long_target),
        scale("api", 1, 2, &long),
        usage(&long, 1_000, 0.1),
        ClusterRecord::PodUpsert(pod("ok", PodPhase::Running, "n1")),
    ]);
    assert_eq!(refused(&both, RefusedReason::Invalid), 5);
    assert_eq!(both.refused.total(), 5);
    assert_eq!(pods(&both), ["ok"]);
    both.assert_same("only the valid pod");
}

#[test]
fn a_present_over_the_budget_applies_what_fits_and_counts_the_rest() {
    let mut both = with_objects(4);
    let outcome = both.store.present_at(
        CLUSTER,
        STREAM,
        0,
        vec![
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
            ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n1")),
            ClusterRecord::PodUpsert(pod("c", PodPhase::Running, "n1")),
            sample("bad-name", "0", 1, 1.0),
        ],
        both.now,
    );
    let mut want = RefusedCounts::of(RefusedReason::Budget, 1);
    want.add(RefusedReason::Invalid, 1);
    assert_eq!(outcome, PresentOutcome::Applied(want));
    assert_eq!(pods(&both), ["a", "b"]);
}
