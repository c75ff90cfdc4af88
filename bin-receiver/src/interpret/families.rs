//! The receiver's own metric families: names, help texts, kinds and label
//! orders, defined once for `/metrics` and remote write.
//!
//! What it owns: every family the receiver writes itself
//! ([`FAMILIES`], in `/metrics` order; kube-state-metrics / metrics-server
//! names) and the order of each family's labels. `cluster` always comes
//! first and is not listed; an object's labels (`namespace` and its name)
//! come next ([`POD_LABELS`], [`HPA_LABELS`]), then the family's own.
//!
//! What it guarantees: the `/metrics` renderer escapes label fragments and
//! remote write builds its label sets from these same lists, so the two
//! name and label every series identically (remote write then sorts the
//! labels by name, as the protocol requires).

use telemetry_runtime::exposition::{FamilyDesc, MetricKind};

const fn gauge(name: &'static str, help: &'static str) -> FamilyDesc {
    FamilyDesc {
        name,
        help,
        kind: MetricKind::Gauge,
    }
}

/// A pod's labels, first in every pod family.
pub(crate) const POD_LABELS: [&str; 2] = ["namespace", "pod"];
/// `kube_pod_info`'s own labels, after [`POD_LABELS`].
pub(crate) const POD_INFO_LABELS: [&str; 5] = [
    "uid",
    "node",
    "pod_ip",
    "created_by_kind",
    "created_by_name",
];
/// `kube_pod_status_phase`'s own labels, after [`POD_LABELS`].
pub(crate) const POD_PHASE_LABELS: [&str; 2] = ["uid", "phase"];
/// Resource requests' and limits' own labels, after [`POD_LABELS`].
pub(crate) const RESOURCE_LABELS: [&str; 3] = ["container", "resource", "unit"];
/// Usage families' own labels, after [`POD_LABELS`].
pub(crate) const USAGE_LABELS: [&str; 1] = ["container"];
/// `kube_namespace_pods_running`'s labels.
pub(crate) const NAMESPACE_LABELS: [&str; 1] = ["namespace"];
/// An HPA's labels, first in every HPA family.
pub(crate) const HPA_LABELS: [&str; 2] = ["namespace", "horizontalpodautoscaler"];
/// `kube_horizontalpodautoscaler_spec_target_metric`'s own labels, after
/// [`HPA_LABELS`].
pub(crate) const HPA_TARGET_LABELS: [&str; 2] = ["metric_name", "metric_target_type"];
/// The scale-event counter's own label, after [`HPA_LABELS`].
pub(crate) const SCALE_LABELS: [&str; 1] = ["direction"];

/// `kube_pod_info{cluster,namespace,pod,uid,node,pod_ip,created_by_kind,created_by_name}`.
pub(crate) const POD_INFO: FamilyDesc = gauge("kube_pod_info", "Information about pod.");
/// `kube_pod_status_phase{cluster,namespace,pod,uid,phase}`.
pub(crate) const POD_STATUS_PHASE: FamilyDesc =
    gauge("kube_pod_status_phase", "The pods current phase.");
/// `kube_pod_container_resource_requests{cluster,namespace,pod,container,resource,unit}`.
pub(crate) const POD_CONTAINER_RESOURCE_REQUESTS: FamilyDesc = gauge(
    "kube_pod_container_resource_requests",
    "The number of requested request resource by a container (cpu in cores, memory in bytes).",
);
/// `kube_pod_container_resource_limits{cluster,namespace,pod,container,resource,unit}`.
pub(crate) const POD_CONTAINER_RESOURCE_LIMITS: FamilyDesc = gauge(
    "kube_pod_container_resource_limits",
    "The number of requested limit resource by a container (cpu in cores, memory in bytes).",
);
/// `kube_pod_container_cpu_usage_cores{cluster,namespace,pod,container}`.
pub(crate) const POD_CONTAINER_CPU_USAGE: FamilyDesc = gauge(
    "kube_pod_container_cpu_usage_cores",
    "CPU in use by a container according to metrics.k8s.io, in cores.",
);
/// `kube_pod_container_memory_working_set_bytes{cluster,namespace,pod,container}`.
pub(crate) const POD_CONTAINER_MEMORY_WORKING_SET: FamilyDesc = gauge(
    "kube_pod_container_memory_working_set_bytes",
    "Working-set memory of a container according to metrics.k8s.io, in bytes.",
);
/// `kube_namespace_pods_running{cluster,namespace}`.
pub(crate) const NAMESPACE_PODS_RUNNING: FamilyDesc = gauge(
    "kube_namespace_pods_running",
    "Pods in phase Running, per namespace with known pods.",
);
/// `kube_horizontalpodautoscaler_spec_min_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub(crate) const HPA_SPEC_MIN_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_min_replicas",
    "Lower limit for the number of pods that can be set by the autoscaler, default 1.",
);
/// `kube_horizontalpodautoscaler_spec_max_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub(crate) const HPA_SPEC_MAX_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "Upper limit for the number of pods that can be set by the autoscaler; cannot be smaller than MinReplicas.",
);
/// `kube_horizontalpodautoscaler_status_current_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub(crate) const HPA_STATUS_CURRENT_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_status_current_replicas",
    "Current number of replicas of pods managed by this autoscaler.",
);
/// `kube_horizontalpodautoscaler_status_desired_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub(crate) const HPA_STATUS_DESIRED_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "Desired number of replicas of pods managed by this autoscaler.",
);
/// `kube_horizontalpodautoscaler_spec_target_metric{cluster,namespace,horizontalpodautoscaler,metric_name,metric_target_type}`.
pub(crate) const HPA_SPEC_TARGET_METRIC: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_target_metric",
    "The metric specifications used by this autoscaler when calculating the desired replica count.",
);
/// `kube_horizontalpodautoscaler_scale_events_total{cluster,namespace,horizontalpodautoscaler,direction}`.
pub(crate) const HPA_SCALE_EVENTS: FamilyDesc = FamilyDesc {
    name: "kube_horizontalpodautoscaler_scale_events_total",
    help: "Rescales done by this autoscaler (SuccessfulRescale events), by direction.",
    kind: MetricKind::Counter,
};
/// `telemetry_link_sender_up{cluster}`.
pub(crate) const SENDER_UP: FamilyDesc = gauge(
    "telemetry_link_sender_up",
    "1 while the cluster's telemetry sender is connected or disconnected for less than the sender TTL; 0 once its series were removed.",
);
/// `telemetry_receiver_sender_last_seen_timestamp_seconds{cluster}`.
pub(crate) const SENDER_LAST_SEEN: FamilyDesc = gauge(
    "telemetry_receiver_sender_last_seen_timestamp_seconds",
    "Unix time of the sender's last connect, disconnect or record.",
);
/// `telemetry_receiver_sender_budget_used{cluster,budget}`.
pub(crate) const SENDER_BUDGET_USED: FamilyDesc = gauge(
    "telemetry_receiver_sender_budget_used",
    "What the cluster's sender holds of each budget: sample_series, sample_bytes (names and labels of its sample series), objects (units: pods, containers, HPAs, metric targets; of the view /metrics shows).",
);
/// `telemetry_receiver_sender_budget_limit{cluster,budget}`.
pub(crate) const SENDER_BUDGET_LIMIT: FamilyDesc = gauge(
    "telemetry_receiver_sender_budget_limit",
    "Each budget of the cluster's sender (--budget-* flags); records beyond it are refused with reason budget.",
);
/// The `budget` label of the budget families.
pub(crate) const BUDGET_LABELS: [&str; 1] = ["budget"];
/// Help of every generic sample family.
pub(crate) const SAMPLE_HELP: &str =
    "Series sent by the cluster's telemetry sender (last value received).";

/// The HPA gauges with one series per HPA, in `/metrics` order.
pub(crate) const HPA_GAUGES: [FamilyDesc; 4] = [
    HPA_SPEC_MIN_REPLICAS,
    HPA_SPEC_MAX_REPLICAS,
    HPA_STATUS_CURRENT_REPLICAS,
    HPA_STATUS_DESIRED_REPLICAS,
];

/// The receiver's own families, in `/metrics` order.
pub(crate) const FAMILIES: [FamilyDesc; 17] = [
    POD_INFO,
    POD_STATUS_PHASE,
    POD_CONTAINER_RESOURCE_REQUESTS,
    POD_CONTAINER_RESOURCE_LIMITS,
    POD_CONTAINER_CPU_USAGE,
    POD_CONTAINER_MEMORY_WORKING_SET,
    NAMESPACE_PODS_RUNNING,
    HPA_SPEC_MIN_REPLICAS,
    HPA_SPEC_MAX_REPLICAS,
    HPA_STATUS_CURRENT_REPLICAS,
    HPA_STATUS_DESIRED_REPLICAS,
    HPA_SPEC_TARGET_METRIC,
    HPA_SCALE_EVENTS,
    SENDER_UP,
    SENDER_LAST_SEEN,
    SENDER_BUDGET_USED,
    SENDER_BUDGET_LIMIT,
];

/// Prefixes of names the receiver keeps for itself.
pub(crate) const RESERVED_PREFIXES: [&str; 2] = ["telemetry_link_", "telemetry_receiver_"];

/// True when `name` belongs to the receiver: one of [`FAMILIES`] (or a
/// counter's OpenMetrics base name) or under [`RESERVED_PREFIXES`]. A
/// generic sample must not use it.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || FAMILIES.iter().any(|family| {
            family.name == name
                || (family.kind == MetricKind::Counter
                    && family.name.strip_suffix("_total") == Some(name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_and_counter_bases_are_reserved() {
        assert!(is_reserved("kube_pod_info"));
        assert!(is_reserved("kube_horizontalpodautoscaler_scale_events"));
        assert!(is_reserved("telemetry_link_anything"));
        assert!(is_reserved("telemetry_receiver_anything"));
        assert!(!is_reserved("telemetry_synthetic_value"));
        assert!(!is_reserved("kube_pod_info_extra"));
    }
}
