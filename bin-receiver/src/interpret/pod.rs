//! One pod's series: its state from a [`PodInfo`] (info, phase, requests,
//! limits) and its latest usage from a [`PodUsage`].
//!
//! What it owns: the series a pod has and their labels, as label fragments
//! escaped once, when the pod changes (so `/metrics` rendering is mostly
//! copying), and — only while remote write needs them — the raw values its
//! label sets are built from.
//!
//! What it guarantees: duplicate container names inside one record
//! collapse to one series per container and resource, the last value
//! winning (a page or a remote-write request never holds one series
//! twice); [`PodState::stale_changes`] names exactly the series an older
//! state had that a newer one no longer has.

use telemetry_runtime::exposition::push_label;
use telemetry_schema::{ContainerRequests, ContainerUsage, PodInfo, PodPhase};

use super::{
    facts::{Facts, Out},
    families::{
        POD_CONTAINER_CPU_USAGE, POD_CONTAINER_MEMORY_WORKING_SET, POD_CONTAINER_RESOURCE_LIMITS,
        POD_CONTAINER_RESOURCE_REQUESTS, POD_INFO, POD_INFO_LABELS, POD_LABELS, POD_PHASE_LABELS,
        POD_STATUS_PHASE, RESOURCE_LABELS, USAGE_LABELS,
    },
};

/// Appends `,name="value"` for each pair.
pub(crate) fn push_labels(out: &mut String, names: &[&str], values: &[&str]) {
    for (name, value) in names.iter().zip(values) {
        out.push(',');
        push_label(out, name, value);
    }
}

/// A container resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Resource::Cpu => "core",
            Resource::Memory => "byte",
        }
    }
}

/// One container's request (or limit) of one resource.
#[derive(Debug, Clone)]
pub(crate) struct ResourceSeries {
    /// `,container="…",resource="…",unit="…"`.
    pub(crate) fragment: String,
    /// The amount (cores or bytes).
    pub(crate) value: f64,
}

/// Which container (index in the pod's list) and resource a
/// [`ResourceSeries`] is, for remote write's label sets.
type ResourceKey = (usize, Resource);

/// The series of each container's cpu and memory value that `pick`
/// returns and that is set, with their keys when `keep_keys`; a container
/// name repeated in one pod keeps its last value.
fn resource_series(
    containers: &[ContainerRequests],
    keep_keys: bool,
    pick: impl Fn(&ContainerRequests) -> [Option<f64>; 2],
) -> (Vec<ResourceSeries>, Vec<ResourceKey>) {
    let mut series: Vec<ResourceSeries> = Vec::with_capacity(containers.len() * 2);
    let mut keys: Vec<ResourceKey> = Vec::new();
    for (index, container) in containers.iter().enumerate() {
        let [cpu, memory] = pick(container);
        for (resource, value) in [(Resource::Cpu, cpu), (Resource::Memory, memory)] {
            let Some(value) = value else { continue };
            let mut fragment = String::with_capacity(64);
            push_labels(
                &mut fragment,
                &RESOURCE_LABELS,
                &[&container.name, resource.name(), resource.unit()],
            );
            match series.iter_mut().find(|s| s.fragment == fragment) {
                Some(existing) => existing.value = value,
                None => {
                    series.push(ResourceSeries { fragment, value });
                    if keep_keys {
                        keys.push((index, resource));
                    }
                }
            }
        }
    }
    (series, keys)
}

/// What remote write's label sets are built from.
#[derive(Debug)]
struct RawPod {
    /// The record (namespace and name aside: the view knows them).
    info: PodInfo,
    /// The keys of the requests, in order.
    requests: Vec<ResourceKey>,
    /// The keys of the limits, in order.
    limits: Vec<ResourceKey>,
}

/// A pod's state as its last upsert described it.
#[derive(Debug)]
pub(crate) struct PodState {
    phase: PodPhase,
    /// `,namespace="…",pod="…"`.
    ns_pod: String,
    /// `,uid="…",node="…",pod_ip="…",created_by_kind="…",created_by_name="…"`.
    info_tail: String,
    /// Length of the `,uid="…"` prefix of `info_tail`.
    uid_len: usize,
    requests: Vec<ResourceSeries>,
    limits: Vec<ResourceSeries>,
    /// Containers its record listed (its budget units beside the pod).
    containers: usize,
    /// Kept only for remote write's label sets.
    raw: Option<Box<RawPod>>,
}

impl PodState {
    /// The state of pod `namespace/name` that `info` describes (its own
    /// namespace and name are not read). `keep_raw`: keep the values
    /// remote write needs (without them [`PodState::emit`] and
    /// [`PodState::stale_changes`] write nothing).
    pub(crate) fn new(namespace: &str, name: &str, info: PodInfo, keep_raw: bool) -> Self {
        let mut ns_pod = String::with_capacity(namespace.len() + name.len() + 20);
        push_labels(&mut ns_pod, &POD_LABELS, &[namespace, name]);
        let mut info_tail = String::with_capacity(160);
        push_labels(&mut info_tail, &POD_INFO_LABELS[..1], &[&info.uid]);
        let uid_len = info_tail.len();
        push_labels(
            &mut info_tail,
            &POD_INFO_LABELS[1..],
            &[
                &info.node,
                &info.pod_ip,
                &info.created_by_kind,
                &info.created_by_name,
            ],
        );
        let (requests, request_keys) = resource_series(&info.containers, keep_raw, |c| {
            [c.cpu_cores, c.memory_bytes]
        });
        let (limits, limit_keys) = resource_series(&info.containers, keep_raw, |c| {
            [c.cpu_limit_cores, c.memory_limit_bytes]
        });
        Self {
            phase: info.phase,
            ns_pod,
            info_tail,
            uid_len,
            requests,
            limits,
            containers: info.containers.len(),
            raw: keep_raw.then(|| {
                Box::new(RawPod {
                    info,
                    requests: request_keys,
                    limits: limit_keys,
                })
            }),
        }
    }

    /// Containers its record listed.
    pub(crate) fn container_count(&self) -> usize {
        self.containers
    }

    /// Its phase.
    pub(crate) fn phase(&self) -> PodPhase {
        self.phase
    }

    /// True in phase Running.
    pub(crate) fn running(&self) -> bool {
        self.phase == PodPhase::Running
    }

    /// `,namespace="…",pod="…"`.
    pub(crate) fn ns_pod(&self) -> &str {
        &self.ns_pod
    }

    /// `kube_pod_info`'s labels after the pod's.
    pub(crate) fn info_tail(&self) -> &str {
        &self.info_tail
    }

    /// `,uid="…"`.
    pub(crate) fn uid_fragment(&self) -> &str {
        &self.info_tail[..self.uid_len]
    }

    /// Resource requests.
    pub(crate) fn requests(&self) -> &[ResourceSeries] {
        &self.requests
    }

    /// Resource limits.
    pub(crate) fn limits(&self) -> &[ResourceSeries] {
        &self.limits
    }

    /// Writes every series of pod `key` (namespace, name) at `at_ms`.
    pub(crate) fn emit<F: Facts>(&self, key: (&str, &str), out: &mut Out<'_, F>, at_ms: i64) {
        let Some(raw) = &self.raw else { return };
        out.value(POD_INFO.name, &info_labels(key, &raw.info), at_ms, 1.0);
        for phase in PodPhase::ALL {
            let value = if phase == self.phase { 1.0 } else { 0.0 };
            let labels = phase_labels(key, &raw.info, phase);
            out.value(POD_STATUS_PHASE.name, &labels, at_ms, value);
        }
        for (family, list, keys) in [
            (
                &POD_CONTAINER_RESOURCE_REQUESTS,
                &self.requests,
                &raw.requests,
            ),
            (&POD_CONTAINER_RESOURCE_LIMITS, &self.limits, &raw.limits),
        ] {
            for (r, resource) in list.iter().zip(keys) {
                let labels = resource_labels(key, raw, *resource);
                out.value(family.name, &labels, at_ms, r.value);
            }
        }
    }

    /// Marks stale, at `at_ms`, the series of this (older) state of pod
    /// `key` that `newer` no longer has (all of them without a newer
    /// state).
    pub(crate) fn stale_changes<F: Facts>(
        &self,
        newer: Option<&PodState>,
        key: (&str, &str),
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        let Some(raw) = &self.raw else { return };
        if newer.is_none_or(|n| n.info_tail != self.info_tail) {
            out.stale(POD_INFO.name, &info_labels(key, &raw.info), at_ms);
        }
        if newer.is_none_or(|n| n.uid_fragment() != self.uid_fragment()) {
            for phase in PodPhase::ALL {
                let labels = phase_labels(key, &raw.info, phase);
                out.stale(POD_STATUS_PHASE.name, &labels, at_ms);
            }
        }
        for (family, list, keys, newer_list) in [
            (
                &POD_CONTAINER_RESOURCE_REQUESTS,
                &self.requests,
                &raw.requests,
                newer.map(|n| &n.requests),
            ),
            (
                &POD_CONTAINER_RESOURCE_LIMITS,
                &self.limits,
                &raw.limits,
                newer.map(|n| &n.limits),
            ),
        ] {
            for (r, resource) in list.iter().zip(keys) {
                if newer_list.is_none_or(|l| l.iter().all(|x| x.fragment != r.fragment)) {
                    let labels = resource_labels(key, raw, *resource);
                    out.stale(family.name, &labels, at_ms);
                }
            }
        }
    }
}

/// `kube_pod_info`'s labels of pod `(namespace, pod)`.
fn info_labels<'a>(
    (namespace, pod): (&'a str, &'a str),
    raw: &'a PodInfo,
) -> [(&'static str, &'a str); 7] {
    [
        (POD_LABELS[0], namespace),
        (POD_LABELS[1], pod),
        (POD_INFO_LABELS[0], &raw.uid),
        (POD_INFO_LABELS[1], &raw.node),
        (POD_INFO_LABELS[2], &raw.pod_ip),
        (POD_INFO_LABELS[3], &raw.created_by_kind),
        (POD_INFO_LABELS[4], &raw.created_by_name),
    ]
}

/// `kube_pod_status_phase`'s labels of pod `(namespace, pod)` for `phase`.
fn phase_labels<'a>(
    (namespace, pod): (&'a str, &'a str),
    raw: &'a PodInfo,
    phase: PodPhase,
) -> [(&'static str, &'a str); 4] {
    [
        (POD_LABELS[0], namespace),
        (POD_LABELS[1], pod),
        (POD_PHASE_LABELS[0], &raw.uid),
        (POD_PHASE_LABELS[1], phase.as_str()),
    ]
}

/// A request's or limit's labels of pod `(namespace, pod)`.
fn resource_labels<'a>(
    (namespace, pod): (&'a str, &'a str),
    raw: &'a RawPod,
    (container, resource): ResourceKey,
) -> [(&'static str, &'a str); 5] {
    let container = raw
        .info
        .containers
        .get(container)
        .map_or("", |c| c.name.as_str());
    [
        (POD_LABELS[0], namespace),
        (POD_LABELS[1], pod),
        (RESOURCE_LABELS[0], container),
        (RESOURCE_LABELS[1], resource.name()),
        (RESOURCE_LABELS[2], resource.unit()),
    ]
}

/// One container's latest usage.
#[derive(Debug, Clone)]
pub(crate) struct ContainerUsageSeries {
    /// The raw container name.
    name: String,
    /// `,container="…"`.
    pub(crate) fragment: String,
    /// CPU in use, cores.
    pub(crate) cpu_cores: f64,
    /// Working-set memory, bytes.
    pub(crate) memory_bytes: f64,
}

/// A pod's latest usage (metrics-server's view).
#[derive(Debug, Clone)]
pub(crate) struct UsageState {
    containers: Vec<ContainerUsageSeries>,
    /// metrics-server's timestamp of it (`i64::MIN`: none yet).
    timestamp_ms: i64,
}

impl Default for UsageState {
    fn default() -> Self {
        Self {
            containers: Vec::new(),
            timestamp_ms: i64::MIN,
        }
    }
}

impl UsageState {
    /// Per container, in the order of the last usage record.
    pub(crate) fn containers(&self) -> &[ContainerUsageSeries] {
        &self.containers
    }

    /// When it was measured (`i64::MIN`: never).
    pub(crate) fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// Replaces the usage; escapes container names only when the list of
    /// names changed.
    pub(crate) fn set(&mut self, containers: &[ContainerUsage], timestamp_ms: i64) {
        self.timestamp_ms = timestamp_ms;
        let unchanged = self.containers.len() == containers.len()
            && self
                .containers
                .iter()
                .zip(containers)
                .all(|(have, new)| have.name == new.name);
        if unchanged {
            for (have, new) in self.containers.iter_mut().zip(containers) {
                have.cpu_cores = new.cpu_cores;
                have.memory_bytes = new.memory_bytes;
            }
            return;
        }
        self.containers.clear();
        for container in containers {
            match self
                .containers
                .iter_mut()
                .find(|u| u.name == container.name)
            {
                Some(existing) => {
                    existing.cpu_cores = container.cpu_cores;
                    existing.memory_bytes = container.memory_bytes;
                }
                None => {
                    let mut fragment = String::with_capacity(container.name.len() + 14);
                    push_labels(&mut fragment, &USAGE_LABELS, &[&container.name]);
                    self.containers.push(ContainerUsageSeries {
                        name: container.name.clone(),
                        fragment,
                        cpu_cores: container.cpu_cores,
                        memory_bytes: container.memory_bytes,
                    });
                }
            }
        }
    }

    /// Writes every usage series of pod `namespace/pod` at the usage's time.
    pub(crate) fn emit<F: Facts>(&self, namespace: &str, pod: &str, out: &mut Out<'_, F>) {
        for c in &self.containers {
            let labels = usage_labels(namespace, pod, &c.name);
            out.value(
                POD_CONTAINER_CPU_USAGE.name,
                &labels,
                self.timestamp_ms,
                c.cpu_cores,
            );
            out.value(
                POD_CONTAINER_MEMORY_WORKING_SET.name,
                &labels,
                self.timestamp_ms,
                c.memory_bytes,
            );
        }
    }

    /// Marks stale, at `at_ms`, the usage series of containers that `kept`
    /// does not list (every one when `kept` is `None`).
    pub(crate) fn stale_missing<F: Facts>(
        &self,
        namespace: &str,
        pod: &str,
        kept: Option<&[ContainerUsage]>,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        for c in &self.containers {
            if kept.is_some_and(|kept| kept.iter().any(|k| k.name == c.name)) {
                continue;
            }
            let labels = usage_labels(namespace, pod, &c.name);
            out.stale(POD_CONTAINER_CPU_USAGE.name, &labels, at_ms);
            out.stale(POD_CONTAINER_MEMORY_WORKING_SET.name, &labels, at_ms);
        }
    }
}

/// A usage series' labels of a container of pod `namespace/pod`.
fn usage_labels<'a>(
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
) -> [(&'static str, &'a str); 3] {
    [
        (POD_LABELS[0], namespace),
        (POD_LABELS[1], pod),
        (USAGE_LABELS[0], container),
    ]
}
