//! One cluster's Kubernetes objects — pods with their usage, HPAs with their
//! scale-event counters — and the snapshot bookkeeping that replaces them.
//!
//! What it owns: turning pod/HPA records into per-object state whose label
//! fragments are escaped once, when the object changes, so rendering is
//! mostly copying.
//!
//! What it guarantees:
//! - An upsert replaces the object's state (a pod's usage is kept: it comes
//!   from its own record); a delete removes the object and every series it
//!   had (a pod's requests and usage, an HPA's scale-event counters).
//! - Snapshots: every upsert gets a tick of a per-cluster logical clock; a
//!   `SnapshotBegin` remembers the clock, and its `SnapshotEnd` removes every
//!   object of the snapshot's kinds not upserted since. Several snapshots may
//!   be open at once (pods and HPAs relist independently); an end whose begin
//!   is unknown is ignored with a warning; at most `max_open_snapshots` stay
//!   open (the oldest is forgotten).
//! - Usage for a pod not known yet is kept but not rendered until the pod is
//!   upserted; it disappears with the pod's delete or at the end of the next
//!   pod snapshot that does not list the pod. A scale event for an unknown
//!   HPA is counted the same way and shown once the HPA is upserted.
//! - Scale events are counted once per `key`: the last `scale_event_keys`
//!   keys are remembered per HPA (bounded memory); events that do not change
//!   the size are not counted.
//! - Duplicate container names (or duplicate HPA targets) inside one record
//!   collapse to one series, the last one winning, so a page never holds two
//!   identical series.

use std::collections::{BTreeMap, HashSet, VecDeque};

use telemetry_schema::{
    ContainerRequests, ContainerUsage, HpaInfo, ObjectKind, ObjectRef, PodInfo, PodPhase, PodUsage,
    ScaleEvent,
};

use telemetry_runtime::exposition::push_label;

/// Namespace → name → slot.
pub(super) type ByNamespace<T> = BTreeMap<String, BTreeMap<String, T>>;

/// A pod's rendered state.
#[derive(Debug, Clone)]
pub(super) struct PodSeries {
    /// Current phase.
    pub phase: PodPhase,
    /// `,uid="…",node="…",pod_ip="…",created_by_kind="…",created_by_name="…"`.
    pub info_tail: String,
    /// Length of the `,uid="…"` prefix of `info_tail`.
    pub uid_len: usize,
    /// `(,container="…",resource="…",unit="…", request)` per request.
    pub requests: Vec<(String, f64)>,
    /// The same for limits.
    pub limits: Vec<(String, f64)>,
}

/// `(,container="…",resource="…",unit="…", value)` for each container's cpu
/// and memory value that `pick` returns and that is set; a container name
/// repeated in one pod keeps its last value.
fn resource_fragments(
    pod: &PodInfo,
    pick: impl Fn(&ContainerRequests) -> [Option<f64>; 2],
) -> Vec<(String, f64)> {
    let mut series: Vec<(String, f64)> = Vec::with_capacity(pod.containers.len() * 2);
    for container in &pod.containers {
        let [cpu, memory] = pick(container);
        for (resource, unit, value) in [("cpu", "core", cpu), ("memory", "byte", memory)] {
            let Some(value) = value else { continue };
            let mut fragment = String::with_capacity(64);
            fragment.push(',');
            push_label(&mut fragment, "container", &container.name);
            fragment.push(',');
            push_label(&mut fragment, "resource", resource);
            fragment.push(',');
            push_label(&mut fragment, "unit", unit);
            match series
                .iter_mut()
                .find(|(existing, _)| *existing == fragment)
            {
                Some(existing) => existing.1 = value,
                None => series.push((fragment, value)),
            }
        }
    }
    series
}

impl PodSeries {
    fn new(pod: &PodInfo) -> Self {
        let mut info_tail = String::with_capacity(160);
        info_tail.push(',');
        push_label(&mut info_tail, "uid", &pod.uid);
        let uid_len = info_tail.len();
        for (name, value) in [
            ("node", &pod.node),
            ("pod_ip", &pod.pod_ip),
            ("created_by_kind", &pod.created_by_kind),
            ("created_by_name", &pod.created_by_name),
        ] {
            info_tail.push(',');
            push_label(&mut info_tail, name, value);
        }
        let requests = resource_fragments(pod, |c| [c.cpu_cores, c.memory_bytes]);
        let limits = resource_fragments(pod, |c| [c.cpu_limit_cores, c.memory_limit_bytes]);
        Self {
            phase: pod.phase,
            info_tail,
            uid_len,
            requests,
            limits,
        }
    }

    /// `,uid="…"`.
    pub(super) fn uid_fragment(&self) -> &str {
        &self.info_tail[..self.uid_len]
    }
}

/// One container's latest usage.
#[derive(Debug, Clone)]
pub(super) struct ContainerUsageSeries {
    /// The raw container name (to recognise an unchanged container list).
    name: String,
    /// `,container="…"`.
    pub fragment: String,
    /// CPU in use, cores.
    pub cpu_cores: f64,
    /// Working-set memory, bytes.
    pub memory_bytes: f64,
}

/// A pod as the store knows it: possibly only its usage so far.
#[derive(Debug, Clone)]
pub(super) struct PodSlot {
    /// Logical time of the last upsert (0: never upserted).
    upserted_at: u64,
    /// `,namespace="…",pod="…"`.
    pub ns_pod: String,
    /// Its state, once upserted.
    pub pod: Option<PodSeries>,
    /// Latest usage per container.
    pub usage: Vec<ContainerUsageSeries>,
    /// metrics-server's timestamp of that usage.
    usage_ms: i64,
}

impl PodSlot {
    fn new(namespace: &str, name: &str) -> Self {
        let mut ns_pod = String::with_capacity(namespace.len() + name.len() + 20);
        ns_pod.push(',');
        push_label(&mut ns_pod, "namespace", namespace);
        ns_pod.push(',');
        push_label(&mut ns_pod, "pod", name);
        Self {
            upserted_at: 0,
            ns_pod,
            pod: None,
            usage: Vec::new(),
            usage_ms: i64::MIN,
        }
    }

    fn set_usage(&mut self, containers: &[ContainerUsage]) {
        let unchanged = self.usage.len() == containers.len()
            && self
                .usage
                .iter()
                .zip(containers)
                .all(|(have, new)| have.name == new.name);
        if unchanged {
            for (have, new) in self.usage.iter_mut().zip(containers) {
                have.cpu_cores = new.cpu_cores;
                have.memory_bytes = new.memory_bytes;
            }
            return;
        }
        self.usage.clear();
        for container in containers {
            match self.usage.iter_mut().find(|u| u.name == container.name) {
                Some(existing) => {
                    existing.cpu_cores = container.cpu_cores;
                    existing.memory_bytes = container.memory_bytes;
                }
                None => {
                    let mut fragment = String::with_capacity(container.name.len() + 14);
                    fragment.push(',');
                    push_label(&mut fragment, "container", &container.name);
                    self.usage.push(ContainerUsageSeries {
                        name: container.name.clone(),
                        fragment,
                        cpu_cores: container.cpu_cores,
                        memory_bytes: container.memory_bytes,
                    });
                }
            }
        }
    }
}

/// An HPA's rendered state.
#[derive(Debug, Clone)]
pub(super) struct HpaSeries {
    pub min_replicas: f64,
    pub max_replicas: f64,
    pub current_replicas: f64,
    pub desired_replicas: f64,
    /// `(,metric_name="…",metric_target_type="…", target)` per target.
    pub targets: Vec<(String, f64)>,
}

impl HpaSeries {
    fn new(hpa: &HpaInfo) -> Self {
        let mut targets: Vec<(String, f64)> = Vec::with_capacity(hpa.targets.len());
        for target in &hpa.targets {
            let mut fragment = String::with_capacity(64);
            fragment.push(',');
            push_label(&mut fragment, "metric_name", &target.metric_name);
            fragment.push(',');
            push_label(&mut fragment, "metric_target_type", &target.target_type);
            match targets
                .iter_mut()
                .find(|(existing, _)| *existing == fragment)
            {
                Some(existing) => existing.1 = target.value,
                None => targets.push((fragment, target.value)),
            }
        }
        Self {
            min_replicas: hpa.min_replicas as f64,
            max_replicas: hpa.max_replicas as f64,
            current_replicas: hpa.current_replicas as f64,
            desired_replicas: hpa.desired_replicas as f64,
            targets,
        }
    }
}

/// An HPA as the store knows it: possibly only scale events so far.
#[derive(Debug, Clone)]
pub(super) struct HpaSlot {
    /// Logical time of the last upsert (0: never upserted).
    upserted_at: u64,
    /// `,namespace="…",horizontalpodautoscaler="…"`.
    pub ns_hpa: String,
    /// Its state, once upserted.
    pub hpa: Option<HpaSeries>,
    /// Scale-ups counted.
    pub scale_ups: u64,
    /// Scale-downs counted.
    pub scale_downs: u64,
    /// Recently counted event keys, oldest first (bounded).
    recent_keys: VecDeque<String>,
    recent_key_set: HashSet<String>,
}

impl HpaSlot {
    fn new(namespace: &str, name: &str) -> Self {
        let mut ns_hpa = String::with_capacity(namespace.len() + name.len() + 40);
        ns_hpa.push(',');
        push_label(&mut ns_hpa, "namespace", namespace);
        ns_hpa.push(',');
        push_label(&mut ns_hpa, "horizontalpodautoscaler", name);
        Self {
            upserted_at: 0,
            ns_hpa,
            hpa: None,
            scale_ups: 0,
            scale_downs: 0,
            recent_keys: VecDeque::new(),
            recent_key_set: HashSet::new(),
        }
    }

    /// Counts `event` unless its key was seen recently. Returns whether it
    /// was counted.
    fn count(&mut self, event: &ScaleEvent, keys_kept: usize) -> bool {
        if self.recent_key_set.contains(&event.key) {
            return false;
        }
        if keys_kept > 0 {
            while self.recent_keys.len() >= keys_kept {
                if let Some(oldest) = self.recent_keys.pop_front() {
                    self.recent_key_set.remove(&oldest);
                }
            }
            self.recent_keys.push_back(event.key.clone());
            self.recent_key_set.insert(event.key.clone());
        }
        match event.direction() {
            "up" => self.scale_ups += 1,
            "down" => self.scale_downs += 1,
            _ => return false,
        }
        true
    }
}

/// A snapshot between its begin and its end.
#[derive(Debug, Clone, Copy)]
struct OpenSnapshot {
    id: u64,
    pods: bool,
    hpas: bool,
    /// The logical clock at the begin.
    began_at: u64,
}

/// Limits of one cluster's object state.
#[derive(Debug, Clone, Copy)]
pub(super) struct ObjectLimits {
    /// Scale-event keys remembered per HPA.
    pub scale_event_keys: usize,
    /// Snapshots that may be open at once.
    pub max_open_snapshots: usize,
}

/// The pods and HPAs of one cluster.
#[derive(Debug, Default)]
pub(super) struct ClusterObjects {
    pub pods: ByNamespace<PodSlot>,
    pub hpas: ByNamespace<HpaSlot>,
    open_snapshots: Vec<OpenSnapshot>,
    /// Logical clock: advanced by every upsert.
    upserts: u64,
}

impl ClusterObjects {
    /// Forgets everything (the cluster expired).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(super) fn snapshot_begin(
        &mut self,
        cluster: &str,
        id: u64,
        kinds: &[ObjectKind],
        limits: ObjectLimits,
    ) {
        self.open_snapshots.retain(|s| s.id != id);
        while !self.open_snapshots.is_empty()
            && self.open_snapshots.len() >= limits.max_open_snapshots.max(1)
        {
            let abandoned = self.open_snapshots.remove(0);
            tracing::warn!(
                cluster,
                snapshot = abandoned.id,
                "too many open snapshots; forgetting the oldest"
            );
        }
        self.open_snapshots.push(OpenSnapshot {
            id,
            pods: kinds.contains(&ObjectKind::Pod),
            hpas: kinds.contains(&ObjectKind::Hpa),
            began_at: self.upserts,
        });
    }

    pub(super) fn snapshot_end(&mut self, cluster: &str, id: u64) {
        let Some(position) = self.open_snapshots.iter().position(|s| s.id == id) else {
            tracing::warn!(
                cluster,
                snapshot = id,
                "snapshot end without a matching begin; ignored"
            );
            return;
        };
        let snapshot = self.open_snapshots.remove(position);
        let began_at = snapshot.began_at;
        let mut removed = 0usize;
        if snapshot.pods {
            removed += prune(&mut self.pods, |slot| slot.upserted_at <= began_at);
        }
        if snapshot.hpas {
            removed += prune(&mut self.hpas, |slot| slot.upserted_at <= began_at);
        }
        tracing::debug!(cluster, snapshot = id, removed, "snapshot applied");
    }

    fn tick(&mut self) -> u64 {
        self.upserts += 1;
        self.upserts
    }

    pub(super) fn upsert_pod(&mut self, pod: &PodInfo) {
        let at = self.tick();
        let series = PodSeries::new(pod);
        match self
            .pods
            .get_mut(&pod.namespace)
            .and_then(|m| m.get_mut(&pod.name))
        {
            Some(slot) => {
                slot.pod = Some(series);
                slot.upserted_at = at;
            }
            None => {
                let mut slot = PodSlot::new(&pod.namespace, &pod.name);
                slot.pod = Some(series);
                slot.upserted_at = at;
                self.pods
                    .entry(pod.namespace.clone())
                    .or_default()
                    .insert(pod.name.clone(), slot);
            }
        }
    }

    pub(super) fn delete_pod(&mut self, pod: &ObjectRef) {
        remove(&mut self.pods, &pod.namespace, &pod.name);
    }

    /// Applies a pod's usage. A `history` record (older than the present
    /// the sender sent) only replaces an older measurement of a known pod.
    pub(super) fn pod_usage(&mut self, usage: &PodUsage, history: bool) {
        match self
            .pods
            .get_mut(&usage.namespace)
            .and_then(|m| m.get_mut(&usage.pod))
        {
            Some(slot) if history && usage.timestamp_ms <= slot.usage_ms => {}
            Some(slot) => {
                slot.set_usage(&usage.containers);
                slot.usage_ms = usage.timestamp_ms;
            }
            None if history => {}
            None => {
                let mut slot = PodSlot::new(&usage.namespace, &usage.pod);
                slot.set_usage(&usage.containers);
                slot.usage_ms = usage.timestamp_ms;
                self.pods
                    .entry(usage.namespace.clone())
                    .or_default()
                    .insert(usage.pod.clone(), slot);
            }
        }
    }

    pub(super) fn upsert_hpa(&mut self, hpa: &HpaInfo) {
        let at = self.tick();
        let series = HpaSeries::new(hpa);
        match self
            .hpas
            .get_mut(&hpa.namespace)
            .and_then(|m| m.get_mut(&hpa.name))
        {
            Some(slot) => {
                slot.hpa = Some(series);
                slot.upserted_at = at;
            }
            None => {
                let mut slot = HpaSlot::new(&hpa.namespace, &hpa.name);
                slot.hpa = Some(series);
                slot.upserted_at = at;
                self.hpas
                    .entry(hpa.namespace.clone())
                    .or_default()
                    .insert(hpa.name.clone(), slot);
            }
        }
    }

    pub(super) fn delete_hpa(&mut self, hpa: &ObjectRef) {
        remove(&mut self.hpas, &hpa.namespace, &hpa.name);
    }

    pub(super) fn scale_event(&mut self, event: &ScaleEvent, limits: ObjectLimits) {
        match self
            .hpas
            .get_mut(&event.namespace)
            .and_then(|m| m.get_mut(&event.hpa))
        {
            Some(slot) => {
                slot.count(event, limits.scale_event_keys);
            }
            None => {
                let mut slot = HpaSlot::new(&event.namespace, &event.hpa);
                slot.count(event, limits.scale_event_keys);
                self.hpas
                    .entry(event.namespace.clone())
                    .or_default()
                    .insert(event.hpa.clone(), slot);
            }
        }
    }
}

/// Removes one slot (and its namespace when it empties).
fn remove<T>(map: &mut ByNamespace<T>, namespace: &str, name: &str) {
    if let Some(inner) = map.get_mut(namespace) {
        inner.remove(name);
        if inner.is_empty() {
            map.remove(namespace);
        }
    }
}

/// Removes the slots for which `stale` holds (and emptied namespaces);
/// returns how many.
fn prune<T>(map: &mut ByNamespace<T>, stale: impl Fn(&T) -> bool) -> usize {
    let mut removed = 0;
    map.retain(|_, inner| {
        let before = inner.len();
        inner.retain(|_, slot| !stale(slot));
        removed += before - inner.len();
        !inner.is_empty()
    });
    removed
}
