//! Rendering of a [`ClusterStore`] through [`telemetry_runtime::exposition`]:
//! the clusters' current views, family by family.
//!
//! What it owns: the layout of the page — the receiver's families in the
//! order of [`FAMILIES`](crate::interpret::families::FAMILIES) (names, help texts and label orders are
//! [`crate::interpret::families`]'), then one gauge family per generic
//! sample name.
//!
//! What it guarantees: every family of `FAMILIES` is written, in that
//! order, with `# HELP` and `# TYPE` even when it has no series; then one
//! gauge family per generic sample name (sorted). Within a family, series
//! are ordered by cluster, then namespace, then object name, so two renders
//! of the same state are byte-identical. `cluster` is always the first
//! label. Label fragments were escaped when the objects changed, so a
//! render mostly copies them.

use std::collections::BTreeSet;

use telemetry_runtime::exposition::{
    push_label, push_value_line_end, write_family_header, FamilyDesc, Format, MetricKind,
};
use telemetry_schema::PodPhase;

use super::{ClusterState, ClusterStore, LinkState};
use crate::interpret::{
    families::{
        BUDGET_LABELS, HPA_GAUGES, HPA_SCALE_EVENTS, HPA_SPEC_TARGET_METRIC, NAMESPACE_LABELS,
        NAMESPACE_PODS_RUNNING, POD_CONTAINER_CPU_USAGE, POD_CONTAINER_MEMORY_WORKING_SET,
        POD_CONTAINER_RESOURCE_LIMITS, POD_CONTAINER_RESOURCE_REQUESTS, POD_INFO, POD_PHASE_LABELS,
        POD_STATUS_PHASE, SAMPLE_HELP, SCALE_LABELS, SENDER_BUDGET_LIMIT, SENDER_BUDGET_USED,
        SENDER_LAST_SEEN, SENDER_UP,
    },
    hpa::{HpaState, ScaleCounts},
    pod::{PodState, ResourceSeries, UsageState},
    view::View,
};

#[inline]
fn open(out: &mut String, family: &FamilyDesc, cluster: &ClusterState) {
    out.push_str(family.name);
    out.push('{');
    out.push_str(&cluster.cluster_label);
}

/// `,phase="…"` of each of [`PodPhase::ALL`], written once per store.
pub(super) fn phase_labels() -> [String; 5] {
    PodPhase::ALL.map(|phase| {
        let mut label = String::with_capacity(24);
        push_plain_label(&mut label, POD_PHASE_LABELS[1], phase.as_str());
        label
    })
}

/// Appends `,name="value"` for a value that needs no escaping.
#[inline]
fn push_plain_label(out: &mut String, name: &str, value: &str) {
    out.push(',');
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(value);
    out.push('"');
}

impl ClusterStore {
    fn views(&self) -> impl Iterator<Item = (&ClusterState, &View)> {
        self.clusters
            .values()
            .filter_map(|cluster| cluster.model.current().map(|view| (cluster, view)))
    }

    fn pods(&self) -> impl Iterator<Item = (&ClusterState, &PodState, &UsageState)> {
        self.views()
            .flat_map(|(cluster, view)| view.pods().map(move |(pod, usage)| (cluster, pod, usage)))
    }

    fn hpas(&self) -> impl Iterator<Item = (&ClusterState, &HpaState, ScaleCounts)> {
        self.views().flat_map(|(cluster, view)| {
            view.hpas().map(move |(hpa, counts)| (cluster, hpa, counts))
        })
    }

    /// Appends every family of the store to `out` (no `# EOF`; see
    /// [`ClusterStore::render_page`] for a whole page).
    pub fn render(&self, format: Format, out: &mut String) {
        self.render_pods(format, out);
        self.render_usage(format, out);
        self.render_namespaces(format, out);
        self.render_hpas(format, out);
        self.render_senders(format, out);
        self.render_samples(format, out);
    }

    fn render_pods(&self, format: Format, out: &mut String) {
        POD_INFO.write_header(out, format);
        for (cluster, pod, _) in self.pods() {
            open(out, &POD_INFO, cluster);
            out.push_str(pod.ns_pod());
            out.push_str(pod.info_tail());
            out.push_str("} 1\n");
        }

        POD_STATUS_PHASE.write_header(out, format);
        for (cluster, pod, _) in self.pods() {
            for (phase, label) in PodPhase::ALL.iter().zip(&self.phase_labels) {
                open(out, &POD_STATUS_PHASE, cluster);
                out.push_str(pod.ns_pod());
                out.push_str(pod.uid_fragment());
                out.push_str(label);
                out.push_str(if *phase == pod.phase() {
                    "} 1\n"
                } else {
                    "} 0\n"
                });
            }
        }

        for (family, pick) in [
            (
                &POD_CONTAINER_RESOURCE_REQUESTS,
                PodState::requests as fn(&PodState) -> &[ResourceSeries],
            ),
            (&POD_CONTAINER_RESOURCE_LIMITS, PodState::limits),
        ] {
            family.write_header(out, format);
            for (cluster, pod, _) in self.pods() {
                for resource in pick(pod) {
                    open(out, family, cluster);
                    out.push_str(pod.ns_pod());
                    out.push_str(&resource.fragment);
                    push_value_line_end(out, resource.value);
                }
            }
        }
    }

    fn render_usage(&self, format: Format, out: &mut String) {
        for (family, memory) in [
            (&POD_CONTAINER_CPU_USAGE, false),
            (&POD_CONTAINER_MEMORY_WORKING_SET, true),
        ] {
            family.write_header(out, format);
            for (cluster, pod, usage) in self.pods() {
                for container in usage.containers() {
                    open(out, family, cluster);
                    out.push_str(pod.ns_pod());
                    out.push_str(&container.fragment);
                    let value = if memory {
                        container.memory_bytes
                    } else {
                        container.cpu_cores
                    };
                    push_value_line_end(out, value);
                }
            }
        }
    }

    fn render_namespaces(&self, format: Format, out: &mut String) {
        NAMESPACE_PODS_RUNNING.write_header(out, format);
        for (cluster, view) in self.views() {
            for (namespace, running) in view.running_pods() {
                open(out, &NAMESPACE_PODS_RUNNING, cluster);
                out.push(',');
                push_label(out, NAMESPACE_LABELS[0], namespace);
                push_value_line_end(out, running as f64);
            }
        }
    }

    fn render_hpas(&self, format: Format, out: &mut String) {
        for (index, family) in HPA_GAUGES.iter().enumerate() {
            family.write_header(out, format);
            for (cluster, hpa, _) in self.hpas() {
                open(out, family, cluster);
                out.push_str(hpa.ns_hpa());
                push_value_line_end(out, hpa.gauges()[index]);
            }
        }

        HPA_SPEC_TARGET_METRIC.write_header(out, format);
        for (cluster, hpa, _) in self.hpas() {
            for target in hpa.targets() {
                open(out, &HPA_SPEC_TARGET_METRIC, cluster);
                out.push_str(hpa.ns_hpa());
                out.push_str(&target.fragment);
                push_value_line_end(out, target.value);
            }
        }

        HPA_SCALE_EVENTS.write_header(out, format);
        for (cluster, hpa, counts) in self.hpas() {
            for (direction, count) in counts.by_direction() {
                open(out, &HPA_SCALE_EVENTS, cluster);
                out.push_str(hpa.ns_hpa());
                push_plain_label(out, SCALE_LABELS[0], direction.as_str());
                push_value_line_end(out, count as f64);
            }
        }
    }

    fn render_senders(&self, format: Format, out: &mut String) {
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

        for (family, limit) in [(&SENDER_BUDGET_USED, false), (&SENDER_BUDGET_LIMIT, true)] {
            family.write_header(out, format);
            for cluster in self.clusters.values() {
                for (budget, used, max) in cluster.model.budgets(&self.config.limits) {
                    open(out, family, cluster);
                    push_plain_label(out, BUDGET_LABELS[0], budget);
                    push_value_line_end(out, if limit { max } else { used } as f64);
                }
            }
        }
    }

    fn render_samples(&self, format: Format, out: &mut String) {
        let names: BTreeSet<&str> = self
            .clusters
            .values()
            .flat_map(|cluster| cluster.model.samples().families().keys())
            .map(String::as_str)
            .collect();
        for name in names {
            write_family_header(out, format, name, SAMPLE_HELP, MetricKind::Gauge);
            for cluster in self.clusters.values() {
                let Some(family) = cluster.model.samples().family(name) else {
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
        for (_, pod, usage) in self.pods() {
            count += 1
                + PodPhase::ALL.len()
                + pod.requests().len()
                + pod.limits().len()
                + 2 * usage.containers().len();
        }
        for (_, view) in self.views() {
            count += view.namespace_count();
        }
        for cluster in self.clusters.values() {
            // sender up and last seen, three budgets used and their limits
            count += 2 + 6 + cluster.model.samples().len();
        }
        for (_, hpa, _) in self.hpas() {
            count += HPA_GAUGES.len() + hpa.targets().len() + 2;
        }
        count
    }
}
