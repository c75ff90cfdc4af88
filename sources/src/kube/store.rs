//! The source's local copy of the watched cluster state.
//!
//! This module owns the current pods, HPAs and last pod usage as the source
//! last shipped them, keyed by namespace/name, and turns them into snapshot
//! records (`SnapshotBegin` .. upserts .. `SnapshotEnd`). A watch relist of
//! one watch scope (all namespaces, or one namespace) replaces exactly the
//! objects of that scope.

use std::collections::BTreeMap;

use telemetry_schema::{ClusterRecord, HpaInfo, ObjectKind, ObjectRef, PodInfo, PodUsage};

/// Pods, HPAs and pod usage currently known.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pods: BTreeMap<ObjectRef, PodInfo>,
    hpas: BTreeMap<ObjectRef, HpaInfo>,
    usage: BTreeMap<ObjectRef, PodUsage>,
}

fn in_scope(r: &ObjectRef, scope: Option<&str>) -> bool {
    scope.is_none_or(|ns| r.namespace == ns)
}

fn pod_key(p: &PodInfo) -> ObjectRef {
    ObjectRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    }
}

fn hpa_key(h: &HpaInfo) -> ObjectRef {
    ObjectRef {
        namespace: h.namespace.clone(),
        name: h.name.clone(),
    }
}

impl Store {
    /// Replaces the pods of `scope` (None: all) with `pods`.
    pub(crate) fn replace_pods(&mut self, scope: Option<&str>, pods: Vec<PodInfo>) {
        self.pods.retain(|r, _| !in_scope(r, scope));
        for p in pods {
            self.pods.insert(pod_key(&p), p);
        }
        let pods = &self.pods;
        self.usage.retain(|r, _| pods.contains_key(r));
    }

    /// Replaces the HPAs of `scope` (None: all) with `hpas`.
    pub(crate) fn replace_hpas(&mut self, scope: Option<&str>, hpas: Vec<HpaInfo>) {
        self.hpas.retain(|r, _| !in_scope(r, scope));
        for h in hpas {
            self.hpas.insert(hpa_key(&h), h);
        }
    }

    /// Stores a pod; true if it is new or differs from the stored one.
    pub(crate) fn upsert_pod(&mut self, pod: PodInfo) -> bool {
        let key = pod_key(&pod);
        if self.pods.get(&key) == Some(&pod) {
            return false;
        }
        self.pods.insert(key, pod);
        true
    }

    /// Removes a pod (and its usage); true if it was known.
    pub(crate) fn delete_pod(&mut self, r: &ObjectRef) -> bool {
        self.usage.remove(r);
        self.pods.remove(r).is_some()
    }

    /// Stores an HPA; true if it is new or differs from the stored one.
    pub(crate) fn upsert_hpa(&mut self, hpa: HpaInfo) -> bool {
        let key = hpa_key(&hpa);
        if self.hpas.get(&key) == Some(&hpa) {
            return false;
        }
        self.hpas.insert(key, hpa);
        true
    }

    /// Removes an HPA; true if it was known.
    pub(crate) fn delete_hpa(&mut self, r: &ObjectRef) -> bool {
        self.hpas.remove(r).is_some()
    }

    /// Whether the HPA is known.
    pub(crate) fn has_hpa(&self, r: &ObjectRef) -> bool {
        self.hpas.contains_key(r)
    }

    /// Records usage of a known pod; false (and nothing stored) for a pod
    /// that is not watched.
    pub(crate) fn set_usage(&mut self, usage: &PodUsage) -> bool {
        let key = ObjectRef {
            namespace: usage.namespace.clone(),
            name: usage.pod.clone(),
        };
        if !self.pods.contains_key(&key) {
            return false;
        }
        self.usage.insert(key, usage.clone());
        true
    }

    /// Number of pods and HPAs stored.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.pods.len(), self.hpas.len())
    }

    /// A snapshot of `kinds` with id `id`; with `with_usage`, the last usage
    /// of every pod follows the snapshot's end.
    pub(crate) fn snapshot(
        &self,
        id: u64,
        kinds: &[ObjectKind],
        with_usage: bool,
    ) -> Vec<ClusterRecord> {
        let mut out = Vec::with_capacity(2 + self.pods.len() + self.hpas.len());
        out.push(ClusterRecord::SnapshotBegin {
            id,
            kinds: kinds.to_vec(),
        });
        if kinds.contains(&ObjectKind::Pod) {
            out.extend(self.pods.values().cloned().map(ClusterRecord::PodUpsert));
        }
        if kinds.contains(&ObjectKind::Hpa) {
            out.extend(self.hpas.values().cloned().map(ClusterRecord::HpaUpsert));
        }
        out.push(ClusterRecord::SnapshotEnd { id });
        if with_usage && kinds.contains(&ObjectKind::Pod) {
            out.extend(self.usage.values().cloned().map(ClusterRecord::PodUsage));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_schema::PodPhase;

    fn pod(ns: &str, name: &str, phase: PodPhase) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("{ns}-{name}"),
            node: String::new(),
            pod_ip: String::new(),
            phase,
            created_by_kind: String::new(),
            created_by_name: String::new(),
            containers: vec![],
        }
    }

    fn hpa(ns: &str, name: &str) -> HpaInfo {
        HpaInfo {
            namespace: ns.into(),
            name: name.into(),
            min_replicas: 1,
            max_replicas: 3,
            current_replicas: 1,
            desired_replicas: 1,
            targets: vec![],
        }
    }

    fn r(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn scoped_replace_keeps_other_namespaces() {
        let mut s = Store::default();
        s.replace_pods(
            Some("a"),
            vec![
                pod("a", "1", PodPhase::Running),
                pod("a", "2", PodPhase::Running),
            ],
        );
        s.replace_pods(Some("b"), vec![pod("b", "1", PodPhase::Running)]);
        s.replace_pods(Some("a"), vec![pod("a", "3", PodPhase::Pending)]);
        let names: Vec<_> = s
            .pods
            .keys()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        assert_eq!(names, vec!["a/3", "b/1"]);
        s.replace_pods(None, vec![]);
        assert_eq!(s.len(), (0, 0));
    }

    #[test]
    fn upserts_report_changes_only() {
        let mut s = Store::default();
        assert!(s.upsert_pod(pod("a", "1", PodPhase::Pending)));
        assert!(!s.upsert_pod(pod("a", "1", PodPhase::Pending)));
        assert!(s.upsert_pod(pod("a", "1", PodPhase::Running)));
        assert!(s.delete_pod(&r("a", "1")));
        assert!(!s.delete_pod(&r("a", "1")));
        assert!(s.upsert_hpa(hpa("a", "h")));
        assert!(!s.upsert_hpa(hpa("a", "h")));
        assert!(s.has_hpa(&r("a", "h")));
        assert!(s.delete_hpa(&r("a", "h")));
        assert!(!s.has_hpa(&r("a", "h")));
    }

    #[test]
    fn snapshots_bracket_the_kinds_asked_for() {
        let mut s = Store::default();
        s.upsert_pod(pod("a", "1", PodPhase::Running));
        s.upsert_hpa(hpa("a", "h"));
        let usage = PodUsage {
            namespace: "a".into(),
            pod: "1".into(),
            timestamp_ms: 5,
            containers: vec![],
        };
        assert!(s.set_usage(&usage));
        assert!(!s.set_usage(&PodUsage {
            pod: "ghost".into(),
            ..usage.clone()
        }));
        let snap = s.snapshot(7, &[ObjectKind::Pod], false);
        assert_eq!(snap.len(), 3);
        assert!(
            matches!(&snap[0], ClusterRecord::SnapshotBegin { id: 7, kinds } if kinds == &vec![ObjectKind::Pod])
        );
        assert!(matches!(&snap[1], ClusterRecord::PodUpsert(p) if p.name == "1"));
        assert_eq!(snap[2], ClusterRecord::SnapshotEnd { id: 7 });
        let full = s.snapshot(8, &[ObjectKind::Pod, ObjectKind::Hpa], true);
        assert_eq!(full.len(), 5);
        assert!(matches!(&full[2], ClusterRecord::HpaUpsert(h) if h.name == "h"));
        assert_eq!(full[4], ClusterRecord::PodUsage(usage));
        // A deleted pod takes its usage with it.
        s.delete_pod(&r("a", "1"));
        assert_eq!(s.snapshot(9, &[ObjectKind::Pod], true).len(), 2);
    }
}
