//! One view of a cluster's Kubernetes objects: pods with their usage, HPAs
//! with their scale-event counters, the running pods per namespace, and the
//! snapshot bookkeeping that replaces them.
//!
//! What it owns: the object table one consumer sees (`/metrics` reads the
//! current view, remote write is told about the timeline's changes; see
//! the parent module) and the facts its changes produce.
//!
//! What it guarantees:
//! - An upsert replaces the object's state (a pod's usage and an HPA's
//!   counters are kept: they come from their own records); a delete
//!   removes the object and every series it had.
//! - Snapshots: every upsert gets a tick of a logical clock; a
//!   `SnapshotBegin` remembers the clock, and its `SnapshotEnd` removes
//!   every object of the snapshot's kinds not upserted since (objects known
//!   only through usage or scale events included). Several snapshots may
//!   be open at once (pods and HPAs relist independently); a begin with
//!   the id of an open one restarts it; an end whose begin is unknown is
//!   ignored with a warning; at most `max_open` stay open (the oldest is
//!   forgotten with a warning).
//! - Usage of a pod not upserted yet, and scale events of an HPA not
//!   upserted yet, are kept and belong to the object once it is; they go
//!   with its delete or the end of the next snapshot that does not list it.
//! - Running pods are counted per namespace over upserted pods; a
//!   namespace without upserted pods has no count.
//! - Facts ([`super::facts`]): an upsert writes the object's series at the
//!   object time and marks stale those its previous state had and the new
//!   one lacks; a delete or a snapshot removal marks all of its series
//!   stale (usage and counters included); usage and counters are written
//!   at their own times as they arrive; [`View::finish`] writes the count of
//!   every namespace touched since the last call, or marks it stale when
//!   the namespace lost its last pod.
//! - The view counts the budget units its objects take ([`View::units`],
//!   see [`super::budget`]) through every change; the `admits_*` checks
//!   tell the caller, before a change, whether it stays within a budget.

use std::{collections::BTreeMap, sync::Arc};

use telemetry_schema::{ObjectKind, PodUsage, ScaleEvent};

use super::{
    budget::{hpa_units, pod_units, Limits},
    facts::{Facts, Out},
    families::{NAMESPACE_LABELS, NAMESPACE_PODS_RUNNING},
    hpa::{self, Direction, HpaState, ScaleCounts},
    pod::{PodState, UsageState},
};

/// Namespace → name → slot.
type ByNamespace<T> = BTreeMap<String, BTreeMap<String, T>>;

/// A pod as the view knows it: possibly only its usage so far.
#[derive(Debug, Default)]
struct PodSlot {
    /// Logical time of the last upsert (0: never upserted).
    upserted_at: u64,
    pod: Option<Arc<PodState>>,
    usage: UsageState,
}

impl PodSlot {
    /// Budget units it takes.
    fn units(&self) -> usize {
        let containers = self.pod.as_ref().map_or(0, |p| p.container_count());
        pod_units(containers, self.usage.containers().len())
    }
}

/// An HPA as the view knows it: possibly only scale events so far.
#[derive(Debug, Default)]
struct HpaSlot {
    /// Logical time of the last upsert (0: never upserted).
    upserted_at: u64,
    hpa: Option<Arc<HpaState>>,
    counts: ScaleCounts,
}

impl HpaSlot {
    /// Budget units it takes.
    fn units(&self) -> usize {
        hpa_units(self.hpa.as_ref().map_or(0, |h| h.target_count()))
    }
}

/// Upserted pods of one namespace.
#[derive(Debug, Clone, Copy, Default)]
struct PodCounts {
    known: u64,
    running: u64,
}

/// The running-pod count of each namespace with upserted pods, and the
/// namespaces touched since [`View::finish`].
#[derive(Debug, Default)]
struct NamespaceCounts {
    live: BTreeMap<String, PodCounts>,
    /// Touched namespace → whether it had a count before.
    touched: BTreeMap<String, bool>,
}

impl NamespaceCounts {
    /// A pod of `namespace` went from `before` to `after` (`Some(running)`
    /// while upserted). `track`: remember the namespace as touched.
    fn change(&mut self, namespace: &str, before: Option<bool>, after: Option<bool>, track: bool) {
        if track && !self.touched.contains_key(namespace) {
            let had = self.live.contains_key(namespace);
            self.touched.insert(namespace.to_owned(), had);
        }
        if before == after {
            return;
        }
        if !self.live.contains_key(namespace) {
            self.live.insert(namespace.to_owned(), PodCounts::default());
        }
        let Some(counts) = self.live.get_mut(namespace) else {
            return;
        };
        if let Some(running) = before {
            counts.known = counts.known.saturating_sub(1);
            counts.running = counts.running.saturating_sub(u64::from(running));
        }
        if let Some(running) = after {
            counts.known += 1;
            counts.running += u64::from(running);
        }
        if counts.known == 0 {
            self.live.remove(namespace);
        }
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

/// The objects of one cluster, as one consumer sees them.
#[derive(Debug, Default)]
pub(crate) struct View {
    pods: ByNamespace<PodSlot>,
    hpas: ByNamespace<HpaSlot>,
    namespaces: NamespaceCounts,
    snapshots: Vec<OpenSnapshot>,
    /// Logical clock: advanced by every upsert.
    upserts: u64,
    /// Budget units of every slot.
    units: usize,
    /// Whether this view logs anomalies (one view per cluster does, so a
    /// record is not reported twice).
    logs: bool,
}

impl View {
    /// An empty view; `logs`: report anomalies (snapshot bookkeeping).
    pub(crate) fn new(logs: bool) -> Self {
        Self {
            logs,
            ..Self::default()
        }
    }

    /// Forgets every object (the cluster expired).
    pub(crate) fn clear(&mut self) {
        *self = Self::new(self.logs);
    }

    /// Upserted pods with their usage, by namespace and name.
    pub(crate) fn pods(&self) -> impl Iterator<Item = (&PodState, &UsageState)> {
        self.pods
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|slot| slot.pod.as_deref().map(|pod| (pod, &slot.usage)))
    }

    /// Upserted HPAs with their counters, by namespace and name.
    pub(crate) fn hpas(&self) -> impl Iterator<Item = (&HpaState, ScaleCounts)> {
        self.hpas
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|slot| slot.hpa.as_deref().map(|hpa| (hpa, slot.counts)))
    }

    /// `(namespace, running pods)` of each namespace with upserted pods.
    pub(crate) fn running_pods(&self) -> impl Iterator<Item = (&str, u64)> {
        self.namespaces
            .live
            .iter()
            .map(|(namespace, counts)| (namespace.as_str(), counts.running))
    }

    /// Number of namespaces with upserted pods.
    pub(crate) fn namespace_count(&self) -> usize {
        self.namespaces.live.len()
    }

    /// Budget units its objects take.
    pub(crate) fn units(&self) -> usize {
        self.units
    }

    fn pod_slot(&self, namespace: &str, name: &str) -> Option<&PodSlot> {
        self.pods.get(namespace)?.get(name)
    }

    /// Whether an upsert of pod `namespace/name` with `containers`
    /// containers stays within `limits`.
    pub(crate) fn admits_pod(
        &self,
        (namespace, name): (&str, &str),
        containers: usize,
        limits: &Limits,
    ) -> bool {
        let slot = self.pod_slot(namespace, name);
        let before = slot.map_or(0, PodSlot::units);
        let usage = slot.map_or(0, |s| s.usage.containers().len());
        limits.admits(self.units, before, pod_units(containers, usage))
    }

    /// Whether `usage` stays within `limits` (`history`: it creates no
    /// slot for an unknown pod).
    pub(crate) fn admits_usage(&self, usage: &PodUsage, history: bool, limits: &Limits) -> bool {
        let after = |containers| pod_units(containers, usage.containers.len());
        match self.pod_slot(&usage.namespace, &usage.pod) {
            Some(slot) => {
                let containers = slot.pod.as_ref().map_or(0, |p| p.container_count());
                limits.admits(self.units, slot.units(), after(containers))
            }
            None => history || limits.admits(self.units, 0, after(0)),
        }
    }

    /// Whether an upsert of an HPA `namespace/name` with `targets` metric
    /// targets stays within `limits`.
    pub(crate) fn admits_hpa(
        &self,
        (namespace, name): (&str, &str),
        targets: usize,
        limits: &Limits,
    ) -> bool {
        let before = self
            .hpas
            .get(namespace)
            .and_then(|m| m.get(name))
            .map_or(0, HpaSlot::units);
        limits.admits(self.units, before, hpa_units(targets))
    }

    /// Whether counting a scale event of HPA `namespace/name` stays within
    /// `limits` (an unknown HPA gets a slot).
    pub(crate) fn admits_scale(&self, (namespace, name): (&str, &str), limits: &Limits) -> bool {
        self.hpas
            .get(namespace)
            .is_some_and(|m| m.contains_key(name))
            || limits.admits(self.units, 0, hpa_units(0))
    }

    /// Opens snapshot `id` of `kinds` (restarting one with the same id;
    /// forgetting the oldest beyond `max_open`).
    pub(crate) fn snapshot_begin(
        &mut self,
        cluster: &str,
        id: u64,
        kinds: &[ObjectKind],
        max_open: usize,
    ) {
        self.snapshots.retain(|s| s.id != id);
        while !self.snapshots.is_empty() && self.snapshots.len() >= max_open.max(1) {
            let abandoned = self.snapshots.remove(0);
            if !self.logs {
                continue;
            }
            tracing::warn!(
                cluster,
                snapshot = abandoned.id,
                "too many open snapshots; forgetting the oldest"
            );
        }
        self.snapshots.push(OpenSnapshot {
            id,
            pods: kinds.contains(&ObjectKind::Pod),
            hpas: kinds.contains(&ObjectKind::Hpa),
            began_at: self.upserts,
        });
    }

    /// Ends snapshot `id`: removes what it did not list, at `at_ms`.
    pub(crate) fn snapshot_end<F: Facts>(&mut self, id: u64, out: &mut Out<'_, F>, at_ms: i64) {
        let Some(position) = self.snapshots.iter().position(|s| s.id == id) else {
            if self.logs {
                tracing::warn!(
                    cluster = out.cluster,
                    snapshot = id,
                    "snapshot end without a matching begin; ignored"
                );
            }
            return;
        };
        let snapshot = self.snapshots.remove(position);
        let began_at = snapshot.began_at;
        let mut removed = 0usize;
        if snapshot.pods {
            let gone = take_stale(&mut self.pods, |slot| slot.upserted_at <= began_at);
            removed += gone.len();
            for (namespace, name, slot) in gone {
                self.removed_pod(&namespace, &name, slot, out, at_ms);
            }
        }
        if snapshot.hpas {
            let gone = take_stale(&mut self.hpas, |slot| slot.upserted_at <= began_at);
            removed += gone.len();
            for (namespace, name, slot) in gone {
                self.units -= slot.units().min(self.units);
                removed_hpa(&namespace, &name, slot, out, at_ms);
            }
        }
        if self.logs {
            tracing::debug!(
                cluster = out.cluster,
                snapshot = id,
                removed,
                "snapshot applied"
            );
        }
    }

    fn tick(&mut self) -> u64 {
        self.upserts += 1;
        self.upserts
    }

    /// Upserts pod `namespace/name`, observed at `at_ms`.
    pub(crate) fn upsert_pod<F: Facts>(
        &mut self,
        (namespace, name): (&str, &str),
        state: Arc<PodState>,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        let at = self.tick();
        let (before, units) = with_slot(&mut self.pods, namespace, name, |slot, new| {
            let units = if new { 0 } else { slot.units() };
            slot.upserted_at = at;
            let before = slot.pod.replace(state.clone());
            (before, (units, slot.units()))
        });
        self.recount(units);
        self.namespaces.change(
            namespace,
            before.as_ref().map(|p| p.running()),
            Some(state.running()),
            F::WANTED,
        );
        if F::WANTED {
            if let Some(before) = &before {
                before.stale_changes(Some(&state), (namespace, name), out, at_ms);
            }
            state.emit((namespace, name), out, at_ms);
        }
    }

    /// Deletes pod `namespace/name`, observed at `at_ms`.
    pub(crate) fn delete_pod<F: Facts>(
        &mut self,
        namespace: &str,
        name: &str,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        match remove(&mut self.pods, namespace, name) {
            Some(slot) => self.removed_pod(namespace, name, slot, out, at_ms),
            None => self.namespaces.change(namespace, None, None, F::WANTED),
        }
    }

    fn removed_pod<F: Facts>(
        &mut self,
        namespace: &str,
        name: &str,
        slot: PodSlot,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        self.recount((slot.units(), 0));
        let before = slot.pod.as_ref().map(|p| p.running());
        self.namespaces.change(namespace, before, None, F::WANTED);
        if F::WANTED {
            if let Some(pod) = &slot.pod {
                pod.stale_changes(None, (namespace, name), out, at_ms);
            }
            slot.usage.stale_missing(namespace, name, None, out, at_ms);
        }
    }

    /// When the usage shown for pod `namespace/pod` was measured, if the
    /// view has a slot for it (`i64::MIN`: no usage yet).
    pub(crate) fn usage_ms(&self, namespace: &str, pod: &str) -> Option<i64> {
        let slot = self.pods.get(namespace)?.get(pod)?;
        Some(slot.usage.timestamp_ms())
    }

    /// Applies a pod's usage. A `history` record (older than the present
    /// the sender sent) only replaces an older measurement of a known pod.
    pub(crate) fn pod_usage<F: Facts>(
        &mut self,
        usage: &PodUsage,
        history: bool,
        out: &mut Out<'_, F>,
    ) {
        let (namespace, pod) = (usage.namespace.as_str(), usage.pod.as_str());
        let units = if let Some(slot) = self.pods.get_mut(namespace).and_then(|m| m.get_mut(pod)) {
            let before = slot.units();
            if !(history && usage.timestamp_ms <= slot.usage.timestamp_ms()) {
                set_usage(slot, usage, out);
            }
            (before, slot.units())
        } else if !history {
            with_slot(&mut self.pods, namespace, pod, |slot, _| {
                set_usage(slot, usage, out);
                (0, slot.units())
            })
        } else {
            (0, 0)
        };
        self.recount(units);
    }

    /// Upserts an HPA observed at `at_ms`.
    pub(crate) fn upsert_hpa<F: Facts>(
        &mut self,
        state: Arc<HpaState>,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        let at = self.tick();
        let (before, units) = with_slot(
            &mut self.hpas,
            state.namespace(),
            state.name(),
            |slot, new| {
                let units = if new { 0 } else { slot.units() };
                slot.upserted_at = at;
                let before = slot.hpa.replace(state.clone());
                (before, (units, slot.units()))
            },
        );
        self.recount(units);
        if F::WANTED {
            if let Some(before) = &before {
                before.stale_changes(Some(&state), out, at_ms);
            }
            state.emit(out, at_ms);
        }
    }

    /// Deletes HPA `namespace/name`, observed at `at_ms`.
    pub(crate) fn delete_hpa<F: Facts>(
        &mut self,
        namespace: &str,
        name: &str,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        if let Some(slot) = remove(&mut self.hpas, namespace, name) {
            self.recount((slot.units(), 0));
            removed_hpa(namespace, name, slot, out, at_ms);
        }
    }

    /// Counts a scale event (already known to be new) in `direction`.
    pub(crate) fn count_scale<F: Facts>(
        &mut self,
        event: &ScaleEvent,
        direction: Direction,
        out: &mut Out<'_, F>,
    ) {
        let (count, units) =
            with_slot(&mut self.hpas, &event.namespace, &event.hpa, |slot, new| {
                let before = if new { 0 } else { slot.units() };
                (slot.counts.count(direction), (before, slot.units()))
            });
        self.recount(units);
        if F::WANTED {
            hpa::write_count(
                out,
                (&event.namespace, &event.hpa),
                direction,
                event.timestamp_ms,
                Some(count),
            );
        }
    }

    /// Moves the unit count from a slot's `before` to its `after` units.
    fn recount(&mut self, (before, after): (usize, usize)) {
        self.units = (self.units + after).saturating_sub(before);
    }

    /// Writes the running-pod count of every namespace touched since the
    /// last call at `at_ms` (stale for one that lost its last pod).
    pub(crate) fn finish<F: Facts>(&mut self, out: &mut Out<'_, F>, at_ms: i64) {
        for (namespace, had) in std::mem::take(&mut self.namespaces.touched) {
            let labels = [(NAMESPACE_LABELS[0], namespace.as_str())];
            match self.namespaces.live.get(&namespace) {
                Some(counts) => out.value(
                    NAMESPACE_PODS_RUNNING.name,
                    &labels,
                    at_ms,
                    counts.running as f64,
                ),
                None if had => out.stale(NAMESPACE_PODS_RUNNING.name, &labels, at_ms),
                None => {}
            }
        }
    }
}

/// Marks an HPA's series stale (state and counted directions).
fn removed_hpa<F: Facts>(
    namespace: &str,
    name: &str,
    slot: HpaSlot,
    out: &mut Out<'_, F>,
    at_ms: i64,
) {
    if !F::WANTED {
        return;
    }
    if let Some(hpa) = &slot.hpa {
        hpa.stale_changes(None, out, at_ms);
    }
    for (direction, count) in slot.counts.by_direction() {
        if count > 0 {
            hpa::write_count(out, (namespace, name), direction, at_ms, None);
        }
    }
}

/// Applies `f` to the slot of `namespace/name`, created empty when
/// missing (a known object costs one lookup; the names are copied only for
/// a new one); `f` is told whether the slot is new.
fn with_slot<T: Default, R>(
    map: &mut ByNamespace<T>,
    namespace: &str,
    name: &str,
    f: impl FnOnce(&mut T, bool) -> R,
) -> R {
    if let Some(slot) = map.get_mut(namespace).and_then(|m| m.get_mut(name)) {
        return f(slot, false);
    }
    let slot = map
        .entry(namespace.to_owned())
        .or_default()
        .entry(name.to_owned())
        .or_default();
    f(slot, true)
}

/// Replaces a pod's usage with `usage`: its vanished containers' series
/// are marked stale and the new values written, at the usage's time.
fn set_usage<F: Facts>(slot: &mut PodSlot, usage: &PodUsage, out: &mut Out<'_, F>) {
    let (namespace, pod, at_ms) = (&usage.namespace, &usage.pod, usage.timestamp_ms);
    if F::WANTED {
        let kept = Some(usage.containers.as_slice());
        slot.usage.stale_missing(namespace, pod, kept, out, at_ms);
    }
    slot.usage.set(&usage.containers, at_ms);
    if F::WANTED {
        slot.usage.emit(namespace, pod, out);
    }
}

/// Removes one slot (and its namespace when it empties).
fn remove<T>(map: &mut ByNamespace<T>, namespace: &str, name: &str) -> Option<T> {
    let inner = map.get_mut(namespace)?;
    let slot = inner.remove(name);
    if inner.is_empty() {
        map.remove(namespace);
    }
    slot
}

/// Removes and returns the slots for which `stale` holds (and emptied
/// namespaces).
fn take_stale<T>(map: &mut ByNamespace<T>, stale: impl Fn(&T) -> bool) -> Vec<(String, String, T)> {
    let mut gone = Vec::new();
    map.retain(|namespace, inner| {
        let names: Vec<String> = inner
            .iter()
            .filter(|(_, slot)| stale(slot))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if let Some(slot) = inner.remove(&name) {
                gone.push((namespace.clone(), name, slot));
            }
        }
        !inner.is_empty()
    });
    gone
}
