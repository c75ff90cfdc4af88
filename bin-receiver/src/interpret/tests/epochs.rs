//! Several streams per cluster (a sender's replicas) and leadership
//! epochs: fencing of object state and presents, measurements of an older
//! epoch as history, presents and history per stream — on `/metrics` and
//! in remote write alike.

use super::*;
use crate::store::PresentOutcome;

/// Replica a's and replica b's streams.
const A: u128 = 1;
const B: u128 = 2;

fn epoch(epoch: u64) -> ClusterRecord {
    ClusterRecord::LeaderEpoch { epoch }
}

fn phase(both: &Both, name: &str) -> Option<String> {
    both.page().into_iter().find_map(|(labels, value)| {
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
}

fn value_of(both: &Both, family: &str) -> Vec<f64> {
    both.page()
        .into_iter()
        .filter(|(labels, _)| labels[0].1 == family)
        .map(|(_, value)| value)
        .collect()
}

#[test]
fn object_state_of_an_older_epoch_is_refused_and_its_measurements_are_history() {
    let mut both = Both::new(Limits::default());
    let term_1 = vec![
        ClusterRecord::ObservedAt { unix_ms: 1_000 },
        epoch(1),
        ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
        hpa("api", 2),
        usage("a", 1_000, 0.1),
    ];
    assert_eq!(both.deliver_on(A, 1, term_1), 0);
    both.assert_same("term 1 from replica a");
    // Replica b takes over with a snapshot of term 2.
    let mut takeover = vec![ClusterRecord::ObservedAt { unix_ms: 2_000 }, epoch(2)];
    takeover.extend(snapshot(
        7,
        &[ObjectKind::Pod, ObjectKind::Hpa],
        vec![
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n2")),
            hpa("api", 3),
        ],
    ));
    takeover.push(scale("api", 2, 3, "e1"));
    assert_eq!(both.deliver_on(B, 1, takeover), 0);
    both.assert_same("term 2 from replica b");
    // Replica a's backlog of term 1 arrives late: its state is refused,
    // its measurements only move series forward, its rescale counts once.
    let late = vec![
        ClusterRecord::ObservedAt { unix_ms: 1_500 },
        epoch(1),
        ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1")),
        delete_pod("a"),
        hpa("api", 1),
        usage("a", 900, 0.05),
        scale("api", 2, 3, "e1"),
        usage("a", 2_500, 0.9),
    ];
    assert_eq!(
        both.deliver_on(A, 6, late),
        3,
        "upsert, delete and HPA refused"
    );
    both.assert_same("after the old term's backlog");
    assert_eq!(phase(&both, "a").as_deref(), Some("Running"));
    assert_eq!(
        value_of(&both, families::HPA_STATUS_CURRENT_REPLICAS.name),
        vec![3.0]
    );
    assert_eq!(
        value_of(&both, families::POD_CONTAINER_CPU_USAGE.name),
        vec![0.9]
    );
    let counted: f64 = value_of(&both, families::HPA_SCALE_EVENTS.name)
        .iter()
        .sum();
    assert_eq!(counted, 1.0, "one rescale, sent by both replicas");
    // A later batch of replica a without a marker keeps its old epoch.
    let fenced = both.deliver_on(A, 14, vec![delete_pod("a")]);
    assert_eq!(fenced, 1);
    // Replica a leads again, in term 3: its state applies, b's is fenced.
    assert_eq!(both.deliver_on(A, 15, vec![epoch(3), hpa("api", 4)]), 0);
    assert_eq!(both.deliver_on(B, 12, vec![epoch(2), hpa("api", 9)]), 1);
    both.assert_same("after term 3");
    assert_eq!(
        value_of(&both, families::HPA_STATUS_CURRENT_REPLICAS.name),
        vec![4.0]
    );
}

#[test]
fn senders_without_epochs_are_never_fenced() {
    let mut both = Both::new(Limits::default());
    assert_eq!(both.deliver_on(A, 1, vec![epoch(5), hpa("api", 2)]), 0);
    // A stream that never sent a marker (a sender without leader election).
    assert_eq!(both.deliver_on(B, 1, vec![hpa("api", 7)]), 0);
    assert_eq!(
        value_of(&both, families::HPA_STATUS_CURRENT_REPLICAS.name),
        vec![7.0]
    );
    both.assert_same("unstamped state applies");
}

#[test]
fn a_present_of_an_older_epoch_is_refused() {
    let mut both = Both::new(Limits::default());
    both.deliver_on(
        B,
        1,
        vec![
            epoch(2),
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n2")),
        ],
    );
    let mut old = vec![epoch(1)];
    old.extend(snapshot(
        3,
        &[ObjectKind::Pod],
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1"))],
    ));
    let outcome = both.store.present_at(CLUSTER, A, 40, old, both.now);
    assert_eq!(outcome, PresentOutcome::Fenced { epoch: 1 });
    assert_eq!(phase(&both, "a").as_deref(), Some("Running"));
    // It covers nothing either: replica a's backlog is not history.
    both.deliver_on(
        A,
        1,
        vec![
            epoch(3),
            ClusterRecord::PodUpsert(pod("a", PodPhase::Succeeded, "n1")),
        ],
    );
    assert_eq!(phase(&both, "a").as_deref(), Some("Succeeded"));
    // A present of the highest epoch applies.
    let mut current = vec![epoch(3)];
    current.extend(snapshot(
        4,
        &[ObjectKind::Pod],
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
    ));
    let outcome = both.store.present_at(CLUSTER, A, 2, current, both.now);
    assert_eq!(
        outcome,
        PresentOutcome::Applied(telemetry_link::RefusedCounts::NONE)
    );
    assert_eq!(phase(&both, "a").as_deref(), Some("Running"));
}

#[test]
fn presents_and_their_history_are_per_stream() {
    let mut both = Both::new(Limits::default());
    let present_a = snapshot(
        1,
        &[ObjectKind::Pod],
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
    );
    assert!(both
        .store
        .apply_present_at(CLUSTER, A, 100, present_a, both.now));
    // Another replica's present does not end replica a's history.
    let present_b = vec![ClusterRecord::PodUpsert(pod("b", PodPhase::Running, "n2"))];
    assert!(both
        .store
        .apply_present_at(CLUSTER, B, 10, present_b, both.now));
    both.deliver_on(
        A,
        50,
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Pending, ""))],
    );
    assert_eq!(
        phase(&both, "a").as_deref(),
        Some("Running"),
        "replica a's record 50 is history of its present"
    );
    // Replica a moves on; b's deliveries do not make a's old present new.
    both.deliver_on(
        A,
        101,
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Failed, "n1"))],
    );
    both.deliver_on(B, 11, vec![hpa("api", 1)]);
    let stale = vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))];
    assert_eq!(
        both.store.present_at(CLUSTER, A, 100, stale, both.now),
        PresentOutcome::Stale
    );
    assert_eq!(phase(&both, "a").as_deref(), Some("Failed"));
}

#[test]
fn a_new_leaders_older_usage_does_not_move_the_shown_usage_back() {
    let mut both = Both::new(Limits::default());
    both.deliver_on(
        A,
        1,
        vec![
            epoch(1),
            ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1")),
            usage("a", 2_000, 0.5),
        ],
    );
    // Replica b polled the metrics API before replica a's last poll.
    let mut takeover = vec![epoch(2)];
    takeover.extend(snapshot(
        5,
        &[ObjectKind::Pod],
        vec![ClusterRecord::PodUpsert(pod("a", PodPhase::Running, "n1"))],
    ));
    takeover.push(usage("a", 1_500, 0.3));
    let present = takeover.clone();
    let outcome = both.store.present_at(CLUSTER, B, 0, present, both.now);
    assert_eq!(
        outcome,
        PresentOutcome::Applied(telemetry_link::RefusedCounts::NONE)
    );
    let cpu = |both: &Both| value_of(both, families::POD_CONTAINER_CPU_USAGE.name);
    assert_eq!(cpu(&both), vec![0.5], "the present's older usage");
    both.deliver_on(B, 1, takeover);
    assert_eq!(cpu(&both), vec![0.5], "the snapshot's older usage");
    both.deliver_on(B, 9, vec![usage("a", 2_500, 0.6)]);
    assert_eq!(cpu(&both), vec![0.6]);
}

#[test]
fn a_rescale_reported_unchanged_by_one_replica_counts_from_the_other() {
    let mut both = Both::new(Limits::default());
    both.deliver_on(A, 1, vec![hpa("api", 3)]);
    // Replica b did not know the size before the rescale (it started after).
    both.deliver_on(B, 1, vec![scale("api", 3, 3, "uid/1")]);
    both.deliver_on(A, 2, vec![scale("api", 2, 3, "uid/1")]);
    both.deliver_on(B, 2, vec![scale("api", 2, 3, "uid/1")]);
    both.assert_same("one rescale, three copies");
    let counted: f64 = value_of(&both, families::HPA_SCALE_EVENTS.name)
        .iter()
        .sum();
    assert_eq!(counted, 1.0);
}
