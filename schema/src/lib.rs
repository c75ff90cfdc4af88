//! The records a sender produces about a Kubernetes cluster.
//!
//! One enum, [`ClusterRecord`], is the link payload of both binaries. The
//! sender emits *changes* (upserts, deletes, usage, scale events) and, after
//! every (re)connection and every watch relist, a *snapshot*: the full
//! current state of some object kinds bracketed by [`ClusterRecord::SnapshotBegin`]
//! and [`ClusterRecord::SnapshotEnd`]. On a snapshot's end the receiver
//! forgets every object of those kinds that the snapshot did not mention.
//! Replicas of one sender elect a leader, and only it ships object state;
//! [`ClusterRecord::LeaderEpoch`] names the term that state belongs to, so
//! a receiver can refuse state from a replica that no longer leads.
//!
//! Quantities are already converted to base units: CPU in cores, memory in
//! bytes (both `f64`), as kube-state-metrics exposes them.

use serde::{Deserialize, Serialize};
use telemetry_link::{Payload, Sample};

/// Everything a sender can tell a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClusterRecord {
    /// Start of a full listing of `kinds`.
    SnapshotBegin {
        /// Identifies the snapshot; the matching end carries the same id.
        id: u64,
        /// The kinds this snapshot covers.
        kinds: Vec<ObjectKind>,
    },
    /// End of the snapshot `id`: objects of its kinds not upserted since the
    /// begin are gone.
    SnapshotEnd {
        /// The snapshot's id.
        id: u64,
    },
    /// A pod was created or changed (full current state).
    PodUpsert(PodInfo),
    /// A pod was deleted.
    PodDelete(ObjectRef),
    /// CPU and memory in use by a pod's containers (metrics.k8s.io).
    PodUsage(PodUsage),
    /// A HorizontalPodAutoscaler was created or changed (full current state).
    HpaUpsert(HpaInfo),
    /// A HorizontalPodAutoscaler was deleted.
    HpaDelete(ObjectRef),
    /// An HPA changed a workload's replica count (a `SuccessfulRescale` event).
    ScaleEvent(ScaleEvent),
    /// A generic metric sample (the synthetic source; embedders' own series).
    Sample(Sample),
    /// The records that follow (until the next one of these) were observed
    /// at this time (ms since the epoch). Object state carries no time of
    /// its own; the link sink puts one in front of every batch with object
    /// state, so history forwarded by the receiver keeps when it happened.
    ObservedAt {
        /// Milliseconds since the Unix epoch.
        unix_ms: i64,
    },
    /// The object state that follows on this sender stream (until the next
    /// one of these) was shipped by the leader of this leadership epoch
    /// (sender replicas elect one leader; every term has a higher epoch).
    /// The link sink of a leader-elected sender puts one in front of every
    /// batch with object state and in every present; a receiver keeps the
    /// highest epoch per cluster and refuses object state of older epochs
    /// (`fenced`). Senders without leader election send none and are never
    /// fenced. Appended last: postcard numbers variants in order, and an
    /// older receiver refuses this one as undecodable.
    LeaderEpoch {
        /// The term's epoch.
        epoch: u64,
    },
}

impl ClusterRecord {
    /// True for records that carry their own measurement time (samples,
    /// usage, scale events) or none is needed (markers).
    pub fn is_timestamped(&self) -> bool {
        matches!(
            self,
            ClusterRecord::Sample(_)
                | ClusterRecord::PodUsage(_)
                | ClusterRecord::ScaleEvent(_)
                | ClusterRecord::ObservedAt { .. }
                | ClusterRecord::LeaderEpoch { .. }
        )
    }

    /// True for object state: snapshot brackets, upserts and deletes — what
    /// only the leader ships and a receiver fences by epoch.
    pub fn is_object_state(&self) -> bool {
        matches!(
            self,
            ClusterRecord::SnapshotBegin { .. }
                | ClusterRecord::SnapshotEnd { .. }
                | ClusterRecord::PodUpsert(_)
                | ClusterRecord::PodDelete(_)
                | ClusterRecord::HpaUpsert(_)
                | ClusterRecord::HpaDelete(_)
        )
    }
}

impl Payload for ClusterRecord {
    fn as_sample(&self) -> Option<&Sample> {
        match self {
            ClusterRecord::Sample(s) => Some(s),
            _ => None,
        }
    }

    fn from_sample(sample: Sample) -> Option<Self> {
        Some(ClusterRecord::Sample(sample))
    }
}

/// Object kinds a snapshot can cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    /// Pods (and with them their usage).
    Pod,
    /// HorizontalPodAutoscalers.
    Hpa,
}

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A pod's lifecycle phase, as in `PodStatus.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, not all containers running yet.
    Pending,
    /// Bound to a node, containers running.
    Running,
    /// All containers terminated successfully.
    Succeeded,
    /// All containers terminated, at least one failed.
    Failed,
    /// State unknown (node unreachable) or a phase string we do not know.
    Unknown,
}

impl PodPhase {
    /// All phases, in kube-state-metrics' order.
    pub const ALL: [PodPhase; 5] = [
        PodPhase::Pending,
        PodPhase::Running,
        PodPhase::Succeeded,
        PodPhase::Failed,
        PodPhase::Unknown,
    ];

    /// The phase as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }

    /// Parses Kubernetes' spelling; anything else (or nothing) is `Unknown`.
    pub fn parse(s: Option<&str>) -> PodPhase {
        match s {
            Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }
    }
}

/// The state of one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName` (empty while unscheduled).
    pub node: String,
    /// `status.podIP` (empty until assigned).
    pub pod_ip: String,
    /// Current phase.
    pub phase: PodPhase,
    /// Kind of the controlling owner (e.g. `ReplicaSet`), empty if none.
    pub created_by_kind: String,
    /// Name of the controlling owner, empty if none.
    pub created_by_name: String,
    /// Containers with their resource requests and limits.
    pub containers: Vec<ContainerRequests>,
}

/// A container's resource requests and limits in base units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRequests {
    /// Container name.
    pub name: String,
    /// Requested CPU in cores, if set.
    pub cpu_cores: Option<f64>,
    /// Requested memory in bytes, if set.
    pub memory_bytes: Option<f64>,
    /// CPU limit in cores, if set.
    pub cpu_limit_cores: Option<f64>,
    /// Memory limit in bytes, if set.
    pub memory_limit_bytes: Option<f64>,
}

/// Resource usage of one pod from metrics.k8s.io.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// When metrics-server took the measurement (ms since epoch).
    pub timestamp_ms: i64,
    /// Per-container usage.
    pub containers: Vec<ContainerUsage>,
}

/// One container's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// CPU in use, in cores.
    pub cpu_cores: f64,
    /// Working-set memory, in bytes.
    pub memory_bytes: f64,
}

/// The state of one HorizontalPodAutoscaler (autoscaling/v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaInfo {
    /// Namespace.
    pub namespace: String,
    /// HPA name.
    pub name: String,
    /// `spec.minReplicas` (Kubernetes defaults it to 1).
    pub min_replicas: i32,
    /// `spec.maxReplicas`.
    pub max_replicas: i32,
    /// `status.currentReplicas`.
    pub current_replicas: i32,
    /// `status.desiredReplicas`.
    pub desired_replicas: i32,
    /// The metric targets from `spec.metrics`.
    pub targets: Vec<HpaTarget>,
}

/// One target of an HPA, as kube-state-metrics' `_spec_target_metric` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaTarget {
    /// Metric name (`cpu`, `memory`, or the custom/external metric's name).
    pub metric_name: String,
    /// `utilization`, `average` or `value`.
    pub target_type: String,
    /// Target value (percent for utilization; base units otherwise).
    pub value: f64,
}

/// An HPA rescale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// Namespace of the HPA.
    pub namespace: String,
    /// HPA name.
    pub hpa: String,
    /// Replicas before.
    pub old_replicas: i32,
    /// Replicas after.
    pub new_replicas: i32,
    /// The event's reason text (after `reason:`).
    pub reason: String,
    /// When it happened (ms since epoch).
    pub timestamp_ms: i64,
    /// A key unique to this occurrence (event uid and count), so a receiver
    /// can recognise a repeat.
    pub key: String,
}

impl ScaleEvent {
    /// `up`, `down`, or `none` when the size did not change.
    pub fn direction(&self) -> &'static str {
        match self.new_replicas.cmp(&self.old_replicas) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use telemetry_link::SeriesKey;

    #[test]
    fn records_roundtrip_through_postcard_and_samples_are_recognised() {
        let key = Arc::new(SeriesKey::new("telemetry_synthetic_value", [("series", "1")]).unwrap());
        let recs = vec![
            ClusterRecord::SnapshotBegin {
                id: 1,
                kinds: vec![ObjectKind::Pod],
            },
            ClusterRecord::PodUpsert(PodInfo {
                namespace: "default".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                node: "n1".into(),
                pod_ip: "10.0.0.1".into(),
                phase: PodPhase::Running,
                created_by_kind: "ReplicaSet".into(),
                created_by_name: "web-abc".into(),
                containers: vec![ContainerRequests {
                    name: "c".into(),
                    cpu_cores: Some(0.2),
                    memory_bytes: None,
                    cpu_limit_cores: None,
                    memory_limit_bytes: None,
                }],
            }),
            ClusterRecord::SnapshotEnd { id: 1 },
            ClusterRecord::Sample(Sample::new(key, 5, 1.0)),
            ClusterRecord::LeaderEpoch { epoch: 7 },
        ];
        for r in recs {
            let bytes = postcard::to_allocvec(&r).unwrap();
            assert_eq!(postcard::from_bytes::<ClusterRecord>(&bytes).unwrap(), r);
            assert_eq!(
                r.as_sample().is_some(),
                matches!(r, ClusterRecord::Sample(_))
            );
        }
    }

    #[test]
    fn the_epoch_marker_is_the_last_variant_and_no_object_state() {
        // Postcard encodes the variant index first: ObservedAt is 9, so the
        // marker must be 10 for receivers that know every earlier variant.
        let bytes = postcard::to_allocvec(&ClusterRecord::LeaderEpoch { epoch: 3 }).unwrap();
        assert_eq!(bytes, vec![10, 3]);
        let marker = ClusterRecord::LeaderEpoch { epoch: 3 };
        assert!(marker.is_timestamped());
        assert!(!marker.is_object_state());
        assert!(ClusterRecord::SnapshotEnd { id: 1 }.is_object_state());
        assert!(!ClusterRecord::ObservedAt { unix_ms: 1 }.is_object_state());
    }

    #[test]
    fn phases_parse_and_scale_direction() {
        assert_eq!(PodPhase::parse(Some("Running")), PodPhase::Running);
        assert_eq!(PodPhase::parse(Some("Weird")), PodPhase::Unknown);
        assert_eq!(PodPhase::parse(None), PodPhase::Unknown);
        let mut e = ScaleEvent {
            namespace: "d".into(),
            hpa: "h".into(),
            old_replicas: 1,
            new_replicas: 5,
            reason: String::new(),
            timestamp_ms: 0,
            key: "k".into(),
        };
        assert_eq!(e.direction(), "up");
        e.new_replicas = 0;
        assert_eq!(e.direction(), "down");
    }
}
