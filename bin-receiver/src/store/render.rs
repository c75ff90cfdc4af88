//! Rendering of a [`ClusterStore`] through [`telemetry_runtime::exposition`]: the fixed
//! list of families, their help texts, and the order of their series.
//!
//! What it owns: the exact names, label orders and help texts of the
//! receiver's metrics (kube-state-metrics compatible), listed in
//! [`STORE_FAMILIES`].
//!
//! What it guarantees: every family of [`STORE_FAMILIES`] is written, in that
//! order, with `# HELP` and `# TYPE` even when it has no series; then one
//! gauge family per generic sample name (sorted). Within a family, series
//! are ordered by cluster, then namespace, then object name, so two renders
//! of the same state are byte-identical. `cluster` is always the first label.

use std::collections::BTreeSet;

use telemetry_schema::PodPhase;

use super::{objects::PodSeries, objects::PodSlot, ClusterState, ClusterStore, LinkState};
use telemetry_runtime::exposition::{
    push_label, push_value_line_end, write_family_header, FamilyDesc, Format, MetricKind,
};

const fn gauge(name: &'static str, help: &'static str) -> FamilyDesc {
    FamilyDesc {
        name,
        help,
        kind: MetricKind::Gauge,
    }
}

/// `kube_pod_info{cluster,namespace,pod,uid,node,pod_ip,created_by_kind,created_by_name}`.
pub const POD_INFO: FamilyDesc = gauge("kube_pod_info", "Information about pod.");
/// `kube_pod_status_phase{cluster,namespace,pod,uid,phase}`.
pub const POD_STATUS_PHASE: FamilyDesc = gauge("kube_pod_status_phase", "The pods current phase.");
/// `kube_pod_container_resource_requests{cluster,namespace,pod,container,resource,unit}`.
pub const POD_CONTAINER_RESOURCE_REQUESTS: FamilyDesc = gauge(
    "kube_pod_container_resource_requests",
    "The number of requested request resource by a container (cpu in cores, memory in bytes).",
);
/// `kube_pod_container_resource_limits{cluster,namespace,pod,container,resource,unit}`.
pub const POD_CONTAINER_RESOURCE_LIMITS: FamilyDesc = gauge(
    "kube_pod_container_resource_limits",
    "The number of requested limit resource by a container (cpu in cores, memory in bytes).",
);
/// `kube_pod_container_cpu_usage_cores{cluster,namespace,pod,container}`.
pub const POD_CONTAINER_CPU_USAGE: FamilyDesc = gauge(
    "kube_pod_container_cpu_usage_cores",
    "CPU in use by a container according to metrics.k8s.io, in cores.",
);
/// `kube_pod_container_memory_working_set_bytes{cluster,namespace,pod,container}`.
pub const POD_CONTAINER_MEMORY_WORKING_SET: FamilyDesc = gauge(
    "kube_pod_container_memory_working_set_bytes",
    "Working-set memory of a container according to metrics.k8s.io, in bytes.",
);
/// `kube_namespace_pods_running{cluster,namespace}`.
pub const NAMESPACE_PODS_RUNNING: FamilyDesc = gauge(
    "kube_namespace_pods_running",
    "Pods in phase Running, per namespace with known pods.",
);
/// `kube_horizontalpodautoscaler_spec_min_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub const HPA_SPEC_MIN_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_min_replicas",
    "Lower limit for the number of pods that can be set by the autoscaler, default 1.",
);
/// `kube_horizontalpodautoscaler_spec_max_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub const HPA_SPEC_MAX_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "Upper limit for the number of pods that can be set by the autoscaler; cannot be smaller than MinReplicas.",
);
/// `kube_horizontalpodautoscaler_status_current_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub const HPA_STATUS_CURRENT_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_status_current_replicas",
    "Current number of replicas of pods managed by this autoscaler.",
);
/// `kube_horizontalpodautoscaler_status_desired_replicas{cluster,namespace,horizontalpodautoscaler}`.
pub const HPA_STATUS_DESIRED_REPLICAS: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "Desired number of replicas of pods managed by this autoscaler.",
);
/// `kube_horizontalpodautoscaler_spec_target_metric{cluster,namespace,horizontalpodautoscaler,metric_name,metric_target_type}`.
pub const HPA_SPEC_TARGET_METRIC: FamilyDesc = gauge(
    "kube_horizontalpodautoscaler_spec_target_metric",
    "The metric specifications used by this autoscaler when calculating the desired replica count.",
);
/// `kube_horizontalpodautoscaler_scale_events_total{cluster,namespace,horizontalpodautoscaler,direction}`.
pub const HPA_SCALE_EVENTS: FamilyDesc = FamilyDesc {
    name: "kube_horizontalpodautoscaler_scale_events_total",
    help: "Rescales done by this autoscaler (SuccessfulRescale events), by direction.",
    kind: MetricKind::Counter,
};
/// `telemetry_link_sender_up{cluster}`.
pub const SENDER_UP: FamilyDesc = gauge(
    "telemetry_link_sender_up",
    "1 while the cluster's telemetry sender is connected or disconnected for less than the sender TTL; 0 once its series were removed.",
);
/// `telemetry_receiver_sender_last_seen_timestamp_seconds{cluster}`.
pub const SENDER_LAST_SEEN: FamilyDesc = gauge(
    "telemetry_receiver_sender_last_seen_timestamp_seconds",
    "Unix time of the sender's last connect, disconnect or record.",
);
/// Help of every generic sample family.
pub const SAMPLE_HELP: &str =
    "Series sent by the cluster's telemetry sender (last value received).";

/// The store's own families, in rendering order.
pub const STORE_FAMILIES: [FamilyDesc; 15] = [
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
];

/// True when `name` (or its OpenMetrics counter base) is one of the store's
/// families, so a generic sample must not use it.
pub(super) fn is_store_family_name(name: &str) -> bool {
    STORE_FAMILIES.iter().any(|family| {
        family.name == name
            || (family.kind == MetricKind::Counter
                && family.name.strip_suffix("_total") == Some(name))
    })
}

#[inline]
fn open(out: &mut String, family: &FamilyDesc, cluster: &ClusterState) {
    out.push_str(family.name);
    out.push('{');
    out.push_str(&cluster.cluster_label);
}

impl ClusterStore {
    fn pods(&self) -> impl Iterator<Item = (&ClusterState, &PodSlot, &PodSeries)> {
        self.clusters.values().flat_map(|cluster| {
            cluster
                .objects
                .pods
                .values()
                .flat_map(|by_name| by_name.values())
                .filter_map(move |slot| slot.pod.as_ref().map(|pod| (cluster, slot, pod)))
        })
    }

    fn hpas(
        &self,
    ) -> impl Iterator<
        Item = (
            &ClusterState,
            &super::objects::HpaSlot,
            &super::objects::HpaSeries,
        ),
    > {
        self.clusters.values().flat_map(|cluster| {
            cluster
                .objects
                .hpas
                .values()
                .flat_map(|by_name| by_name.values())
                .filter_map(move |slot| slot.hpa.as_ref().map(|hpa| (cluster, slot, hpa)))
        })
    }

    /// Appends every family of the store to `out` (no `# EOF`; see
    /// [`ClusterStore::render_page`] for a whole page).
    pub fn render(&self, format: Format, out: &mut String) {
        POD_INFO.write_header(out, format);
        for (cluster, slot, pod) in self.pods() {
            open(out, &POD_INFO, cluster);
            out.push_str(&slot.ns_pod);
            out.push_str(&pod.info_tail);
            out.push_str("} 1\n");
        }

        POD_STATUS_PHASE.write_header(out, format);
        for (cluster, slot, pod) in self.pods() {
            for phase in PodPhase::ALL {
                open(out, &POD_STATUS_PHASE, cluster);
                out.push_str(&slot.ns_pod);
                out.push_str(pod.uid_fragment());
                out.push_str(",phase=\"");
                out.push_str(phase.as_str());
                out.push_str(if phase == pod.phase {
                    "\"} 1\n"
                } else {
                    "\"} 0\n"
                });
            }
        }

        for (family, pick) in [
            (
                &POD_CONTAINER_RESOURCE_REQUESTS,
                (|pod| &pod.requests) as fn(&PodSeries) -> &Vec<(String, f64)>,
            ),
            (&POD_CONTAINER_RESOURCE_LIMITS, |pod| &pod.limits),
        ] {
            family.write_header(out, format);
            for (cluster, slot, pod) in self.pods() {
                for (fragment, value) in pick(pod) {
                    open(out, family, cluster);
                    out.push_str(&slot.ns_pod);
                    out.push_str(fragment);
                    push_value_line_end(out, *value);
                }
            }
        }

        POD_CONTAINER_CPU_USAGE.write_header(out, format);
        for (cluster, slot, _) in self.pods() {
            for usage in &slot.usage {
                open(out, &POD_CONTAINER_CPU_USAGE, cluster);
                out.push_str(&slot.ns_pod);
                out.push_str(&usage.fragment);
                push_value_line_end(out, usage.cpu_cores);
            }
        }

        POD_CONTAINER_MEMORY_WORKING_SET.write_header(out, format);
        for (cluster, slot, _) in self.pods() {
            for usage in &slot.usage {
                open(out, &POD_CONTAINER_MEMORY_WORKING_SET, cluster);
                out.push_str(&slot.ns_pod);
                out.push_str(&usage.fragment);
                push_value_line_end(out, usage.memory_bytes);
            }
        }

        NAMESPACE_PODS_RUNNING.write_header(out, format);
        for cluster in self.clusters.values() {
            for (namespace, by_name) in &cluster.objects.pods {
                let mut known = false;
                let mut running = 0u64;
                for pod in by_name.values().filter_map(|slot| slot.pod.as_ref()) {
                    known = true;
                    running += u64::from(pod.phase == PodPhase::Running);
                }
                if known {
                    open(out, &NAMESPACE_PODS_RUNNING, cluster);
                    out.push(',');
                    push_label(out, "namespace", namespace);
                    push_value_line_end(out, running as f64);
                }
            }
        }

        for (family, value) in [
            (
                &HPA_SPEC_MIN_REPLICAS,
                (|h| h.min_replicas) as fn(&super::objects::HpaSeries) -> f64,
            ),
            (&HPA_SPEC_MAX_REPLICAS, |h| h.max_replicas),
            (&HPA_STATUS_CURRENT_REPLICAS, |h| h.current_replicas),
            (&HPA_STATUS_DESIRED_REPLICAS, |h| h.desired_replicas),
        ] {
            family.write_header(out, format);
            for (cluster, slot, hpa) in self.hpas() {
                open(out, family, cluster);
                out.push_str(&slot.ns_hpa);
                push_value_line_end(out, value(hpa));
            }
        }

        HPA_SPEC_TARGET_METRIC.write_header(out, format);
        for (cluster, slot, hpa) in self.hpas() {
            for (fragment, value) in &hpa.targets {
                open(out, &HPA_SPEC_TARGET_METRIC, cluster);
                out.push_str(&slot.ns_hpa);
                out.push_str(fragment);
                push_value_line_end(out, *value);
            }
        }

        HPA_SCALE_EVENTS.write_header(out, format);
        for (cluster, slot, _) in self.hpas() {
            for (direction, count) in [("up", slot.scale_ups), ("down", slot.scale_downs)] {
                open(out, &HPA_SCALE_EVENTS, cluster);
                out.push_str(&slot.ns_hpa);
                out.push_str(",direction=\"");
                out.push_str(direction);
                out.push('"');
                push_value_line_end(out, count as f64);
            }
        }

        SENDER_UP.write_header(out, format);
        for cluster in self.clusters.values() {
            open(out, &SENDER_UP, cluster);
            let up = !matches!(cluster.link, LinkState::Expired);
            out.push_str(if up { "} 1\n" } else { "} 0\n" });
        }

        SENDER_LAST_SEEN.write_header(out, format);
        for cluster in self.clusters.values() {
            open(out, &SENDER_LAST_SEEN, cluster);
            push_value_line_end(out, cluster.last_seen_unix);
        }

        let names: BTreeSet<&str> = self
            .clusters
            .values()
            .flat_map(|cluster| cluster.samples.families.keys().map(String::as_str))
            .collect();
        for name in names {
            write_family_header(out, format, name, SAMPLE_HELP, MetricKind::Gauge);
            for cluster in self.clusters.values() {
                let Some(family) = cluster.samples.families.get(name) else {
                    continue;
                };
                for series in family.values() {
                    out.push_str(name);
                    out.push('{');
                    out.push_str(&cluster.cluster_label);
                    out.push_str(&series.labels);
                    push_value_line_end(out, series.value);
                }
            }
        }
    }

    /// Number of series [`ClusterStore::render`] writes.
    pub fn series_count(&self) -> usize {
        let mut count = 0;
        for (_, slot, pod) in self.pods() {
            count += 1
                + PodPhase::ALL.len()
                + pod.requests.len()
                + pod.limits.len()
                + 2 * slot.usage.len();
        }
        for cluster in self.clusters.values() {
            count += cluster
                .objects
                .pods
                .values()
                .filter(|by_name| by_name.values().any(|slot| slot.pod.is_some()))
                .count();
            // sender up and last seen
            count += 2 + cluster.samples.len();
        }
        for (_, _, hpa) in self.hpas() {
            count += 4 + hpa.targets.len() + 2;
        }
        count
    }
}
