//! Objects, resource versions and the watch event log of the test API server.
//!
//! This module owns the server's data: the current objects per resource, a
//! global resourceVersion counter, the log of changes watches replay from
//! (with its compaction point), the broadcast feeding open watches, the
//! permission and metrics-API switches, and the request log and counters.
//! It knows nothing about HTTP (the rules of writes live in `writes`).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::selector::Selector;

/// Resources the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// core/v1 pods.
    Pods,
    /// autoscaling/v2 horizontalpodautoscalers.
    HorizontalPodAutoscalers,
    /// core/v1 events.
    Events,
    /// metrics.k8s.io/v1beta1 pods (list only).
    PodMetrics,
    /// coordination.k8s.io/v1 leases (the only resource clients may write).
    Leases,
}

impl Resource {
    /// All resources.
    pub const ALL: [Resource; 5] = [
        Resource::Pods,
        Resource::HorizontalPodAutoscalers,
        Resource::Events,
        Resource::PodMetrics,
        Resource::Leases,
    ];

    /// Plural name in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods | Resource::PodMetrics => "pods",
            Resource::HorizontalPodAutoscalers => "horizontalpodautoscalers",
            Resource::Events => "events",
            Resource::Leases => "leases",
        }
    }

    /// API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Events => "",
            Resource::HorizontalPodAutoscalers => "autoscaling",
            Resource::PodMetrics => "metrics.k8s.io",
            Resource::Leases => "coordination.k8s.io",
        }
    }

    /// API version within the group.
    pub fn version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Events | Resource::Leases => "v1",
            Resource::HorizontalPodAutoscalers => "v2",
            Resource::PodMetrics => "v1beta1",
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> String {
        if self.group().is_empty() {
            self.version().to_owned()
        } else {
            format!("{}/{}", self.group(), self.version())
        }
    }

    /// `kind` of its objects.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::HorizontalPodAutoscalers => "HorizontalPodAutoscaler",
            Resource::Events => "Event",
            Resource::PodMetrics => "PodMetrics",
            Resource::Leases => "Lease",
        }
    }

    /// Whether it supports watch.
    pub fn watchable(self) -> bool {
        self != Resource::PodMetrics
    }

    /// Whether clients may create, update and delete it (the other
    /// resources are changed through the handle only).
    pub fn writable(self) -> bool {
        self == Resource::Leases
    }

    /// Finds the resource for a URL's group, version and plural.
    pub fn lookup(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && r.version() == version && r.plural() == plural)
    }

    /// `plural.group` as RBAC messages spell it.
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_owned()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
}

/// Request verbs the server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// A collection GET.
    List,
    /// A collection GET with `watch=true`.
    Watch,
    /// A GET of one named object.
    Get,
    /// A POST to a collection.
    Create,
    /// A PUT of one named object.
    Update,
    /// A DELETE of one named object.
    Delete,
}

impl Verb {
    /// As RBAC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Resource addressed, if any.
    pub resource: Option<Resource>,
    /// Verb, if a resource was addressed.
    pub verb: Option<Verb>,
    /// Namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// HTTP status returned.
    pub status: u16,
}

/// One change in the log.
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub(crate) rv: u64,
    pub(crate) resource: Resource,
    pub(crate) namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(crate) kind: &'static str,
    pub(crate) object: Value,
    /// The object before the change (for selector transitions).
    pub(crate) previous: Option<Value>,
}

/// What a watch wants to see.
#[derive(Debug, Clone)]
pub(crate) struct WatchFilter {
    pub(crate) resource: Resource,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches_labels(object) && self.fields.matches_fields(object)
    }

    /// The watch event type this watch sees for `entry`, if any: an object
    /// moving into the selector is `ADDED`, out of it `DELETED`.
    pub(crate) fn event_type(&self, entry: &LogEntry) -> Option<&'static str> {
        if entry.resource != self.resource
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != entry.namespace)
        {
            return None;
        }
        let now = self.matches(&entry.object);
        let before = entry.previous.as_ref().is_some_and(|p| self.matches(p));
        match (entry.kind, before, now) {
            ("DELETED", true, _) => Some("DELETED"),
            ("DELETED", false, _) => None,
            (_, true, true) => Some("MODIFIED"),
            (_, false, true) => Some("ADDED"),
            (_, true, false) => Some("DELETED"),
            (_, false, false) => None,
        }
    }
}

/// Longest the change log gets before its oldest entries are compacted away.
const MAX_LOG: usize = 50_000;
/// Requests remembered in the log (counters keep counting).
const MAX_REQUEST_LOG: usize = 100_000;

/// The server's mutable data.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub(crate) compacted_below: u64,
    objects: HashMap<Resource, BTreeMap<(String, String), Value>>,
    log: VecDeque<Arc<LogEntry>>,
    pub(crate) feed: broadcast::Sender<Arc<LogEntry>>,
    pub(crate) metrics_enabled: bool,
    forbidden: HashSet<(Resource, Verb)>,
    requests: VecDeque<RequestRecord>,
    counters: HashMap<(Resource, Verb), usize>,
    next_uid: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            rv: 1,
            compacted_below: 0,
            objects: HashMap::new(),
            log: VecDeque::new(),
            feed: broadcast::channel(4096).0,
            metrics_enabled: true,
            forbidden: HashSet::new(),
            requests: VecDeque::new(),
            counters: HashMap::new(),
            next_uid: 1,
        }
    }
}

fn ns_name(object: &Value) -> (String, String) {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let ns = s("/metadata/namespace");
    (
        if ns.is_empty() {
            "default".to_owned()
        } else {
            ns
        },
        s("/metadata/name"),
    )
}

fn now_rfc3339() -> String {
    super::objects::now_time().0.to_string()
}

impl State {
    fn append(
        &mut self,
        resource: Resource,
        namespace: String,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let entry = Arc::new(LogEntry {
            rv: self.rv,
            resource,
            namespace,
            kind,
            object,
            previous,
        });
        self.log.push_back(entry.clone());
        while self.log.len() > MAX_LOG {
            if let Some(old) = self.log.pop_front() {
                self.compacted_below = self.compacted_below.max(old.rv + 1);
            }
        }
        // No receivers is fine.
        let _ = self.feed.send(entry);
    }

    /// Creates or replaces an object; assigns namespace, uid,
    /// creationTimestamp (kept from the stored object) and resourceVersion.
    /// Returns the new resourceVersion.
    pub(crate) fn upsert(&mut self, resource: Resource, mut object: Value) -> u64 {
        let (ns, name) = ns_name(&object);
        let previous = self
            .objects
            .get(&resource)
            .and_then(|m| m.get(&(ns.clone(), name.clone())))
            .cloned();
        self.rv += 1;
        let rv = self.rv;
        if let Some(obj) = object.as_object_mut() {
            obj.insert("apiVersion".into(), Value::String(resource.api_version()));
            obj.insert("kind".into(), Value::String(resource.kind().into()));
            let meta = obj.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("namespace".into(), Value::String(ns.clone()));
                meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
                let keep = |field: &str| {
                    previous
                        .as_ref()
                        .and_then(|p| p.pointer(&format!("/metadata/{field}")))
                        .cloned()
                };
                if meta.get("uid").is_none_or(Value::is_null) {
                    let uid = keep("uid").unwrap_or_else(|| {
                        self.next_uid += 1;
                        Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid))
                    });
                    meta.insert("uid".into(), uid);
                }
                if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                    let ts =
                        keep("creationTimestamp").unwrap_or_else(|| Value::String(now_rfc3339()));
                    meta.insert("creationTimestamp".into(), ts);
                }
            }
        }
        self.objects
            .entry(resource)
            .or_default()
            .insert((ns.clone(), name), object.clone());
        if resource.watchable() {
            let kind = if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            self.append(resource, ns, kind, object, previous);
        }
        rv
    }

    /// Deletes an object; false if it did not exist.
    pub(crate) fn delete(&mut self, resource: Resource, namespace: &str, name: &str) -> bool {
        let Some(mut object) = self
            .objects
            .get_mut(&resource)
            .and_then(|m| m.remove(&(namespace.to_owned(), name.to_owned())))
        else {
            return false;
        };
        self.rv += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        if resource.watchable() {
            let previous = Some(object.clone());
            self.append(resource, namespace.to_owned(), "DELETED", object, previous);
        }
        true
    }

    /// Current objects matching the filter, in namespace/name order.
    pub(crate) fn list(&self, filter: &WatchFilter) -> Vec<Value> {
        self.objects
            .get(&filter.resource)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| {
                        filter.namespace.as_deref().is_none_or(|want| want == ns)
                    })
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One page of [`State::list`]: at most `limit` matching objects whose
    /// (namespace, name) comes after `after`, in that order, and the key of
    /// the last one returned if more match beyond it.
    pub(crate) fn list_page(
        &self,
        filter: &WatchFilter,
        after: Option<(String, String)>,
        limit: usize,
    ) -> (Vec<Value>, Option<(String, String)>) {
        use std::ops::Bound;
        let Some(objects) = self.objects.get(&filter.resource) else {
            return (Vec::new(), None);
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = objects
            .range((start, Bound::Unbounded))
            .filter(|((ns, _), _)| filter.namespace.as_deref().is_none_or(|want| want == ns))
            .filter(|(_, o)| filter.matches(o));
        let page: Vec<(&(String, String), &Value)> = matching.by_ref().take(limit).collect();
        let next = match (page.last(), matching.next()) {
            (Some((key, _)), Some(_)) => Some((*key).clone()),
            _ => None,
        };
        (page.into_iter().map(|(_, o)| o.clone()).collect(), next)
    }

    /// One object.
    pub(crate) fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&resource)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Log entries after `rv`.
    pub(crate) fn since(&self, rv: u64) -> Vec<Arc<LogEntry>> {
        self.log.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    /// Expires every resourceVersion handed out so far.
    pub(crate) fn compact(&mut self) {
        self.rv += 1;
        self.compacted_below = self.rv;
        self.log.clear();
    }

    pub(crate) fn forbid(&mut self, resource: Resource, verb: Verb) {
        self.forbidden.insert((resource, verb));
    }

    pub(crate) fn allow(&mut self, resource: Resource, verb: Verb) {
        self.forbidden.remove(&(resource, verb));
    }

    pub(crate) fn is_forbidden(&self, resource: Resource, verb: Verb) -> bool {
        self.forbidden.contains(&(resource, verb))
    }

    pub(crate) fn record(&mut self, r: RequestRecord) {
        if let (Some(res), Some(verb)) = (r.resource, r.verb) {
            *self.counters.entry((res, verb)).or_default() += 1;
        }
        self.requests.push_back(r);
        while self.requests.len() > MAX_REQUEST_LOG {
            self.requests.pop_front();
        }
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.requests.iter().cloned().collect()
    }

    pub(crate) fn count(&self, resource: Resource, verb: Verb) -> usize {
        self.counters
            .get(&(resource, verb))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(resource: Resource, ns: Option<&str>, labels: &str) -> WatchFilter {
        WatchFilter {
            resource,
            namespace: ns.map(str::to_owned),
            labels: Selector::labels(labels).unwrap(),
            fields: Selector::default(),
        }
    }

    #[test]
    fn upsert_assigns_metadata_and_logs_changes() {
        let mut s = State::default();
        let rv1 = s.upsert(Resource::Pods, json!({"metadata": {"name": "a"}}));
        let rv2 = s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}}),
        );
        assert!(rv2 > rv1);
        let obj = s.get(Resource::Pods, "default", "a").unwrap();
        assert_eq!(obj["kind"], "Pod");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["metadata"]["resourceVersion"], rv2.to_string());
        let first_uid = s.since(0)[0].object["metadata"]["uid"].clone();
        assert_eq!(obj["metadata"]["uid"], first_uid, "uid survives updates");
        let kinds: Vec<_> = s.since(0).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["ADDED", "MODIFIED"]);
        assert_eq!(s.since(rv1).len(), 1);
        assert!(s.delete(Resource::Pods, "default", "a"));
        assert!(!s.delete(Resource::Pods, "default", "a"));
        assert_eq!(s.since(rv2)[0].kind, "DELETED");
        // Metrics are stored but not logged.
        s.upsert(
            Resource::PodMetrics,
            json!({"metadata": {"name": "a", "namespace": "n"}}),
        );
        assert_eq!(s.since(rv2).len(), 1);
    }

    #[test]
    fn list_filters_by_namespace_and_labels() {
        let mut s = State::default();
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}}}),
        );
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "b", "namespace": "y", "labels": {"app": "web"}}}),
        );
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "c", "namespace": "x"}}),
        );
        assert_eq!(s.list(&filter(Resource::Pods, None, "")).len(), 3);
        assert_eq!(s.list(&filter(Resource::Pods, Some("x"), "")).len(), 2);
        assert_eq!(s.list(&filter(Resource::Pods, None, "app=web")).len(), 2);
        assert_eq!(
            s.list(&filter(Resource::Pods, Some("x"), "app=web")).len(),
            1
        );
        assert_eq!(s.list(&filter(Resource::Events, None, "")).len(), 0);
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let mut s = State::default();
        let f = filter(Resource::Pods, None, "app=web");
        s.upsert(Resource::Pods, json!({"metadata": {"name": "a"}}));
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "a", "labels": {"app": "web"}}}),
        );
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "a", "labels": {"app": "web", "v": "2"}}}),
        );
        s.upsert(
            Resource::Pods,
            json!({"metadata": {"name": "a", "labels": {"app": "db"}}}),
        );
        s.delete(Resource::Pods, "default", "a");
        let seen: Vec<_> = s.since(0).iter().map(|e| f.event_type(e)).collect();
        assert_eq!(
            seen,
            vec![None, Some("ADDED"), Some("MODIFIED"), Some("DELETED"), None]
        );
    }

    #[test]
    fn compaction_expires_old_versions() {
        let mut s = State::default();
        let rv = s.upsert(Resource::Pods, json!({"metadata": {"name": "a"}}));
        assert!(rv >= s.compacted_below);
        s.compact();
        assert!(rv < s.compacted_below);
        assert!(s.since(0).is_empty());
    }

    #[test]
    fn counters_and_permissions() {
        let mut s = State::default();
        s.forbid(Resource::HorizontalPodAutoscalers, Verb::Watch);
        assert!(s.is_forbidden(Resource::HorizontalPodAutoscalers, Verb::Watch));
        assert!(!s.is_forbidden(Resource::HorizontalPodAutoscalers, Verb::List));
        s.allow(Resource::HorizontalPodAutoscalers, Verb::Watch);
        assert!(!s.is_forbidden(Resource::HorizontalPodAutoscalers, Verb::Watch));
        for _ in 0..3 {
            s.record(RequestRecord {
                method: "GET".into(),
                path: "/api/v1/pods".into(),
                query: String::new(),
                resource: Some(Resource::Pods),
                verb: Some(Verb::List),
                namespace: None,
                status: 200,
            });
        }
        assert_eq!(s.count(Resource::Pods, Verb::List), 3);
        assert_eq!(s.count(Resource::Pods, Verb::Watch), 0);
        assert_eq!(s.requests().len(), 3);
        assert_eq!(
            Resource::lookup("autoscaling", "v2", "horizontalpodautoscalers"),
            Some(Resource::HorizontalPodAutoscalers)
        );
        assert_eq!(
            Resource::lookup("metrics.k8s.io", "v1beta1", "pods"),
            Some(Resource::PodMetrics)
        );
        assert_eq!(Resource::lookup("", "v1", "nodes"), None);
    }
}
