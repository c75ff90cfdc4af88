//! A test Kubernetes API server speaking the real list/watch protocol.
//!
//! This module owns [`KubeApiServer`]: plain HTTP on a random 127.0.0.1 port
//! serving discovery (`/version`, `/api`, `/api/v1`, `/apis`,
//! `/apis/autoscaling/v2`, `/apis/metrics.k8s.io/v1beta1`), list, get and
//! watch of pods, autoscaling/v2 horizontalpodautoscalers and events, and
//! list of metrics.k8s.io pod metrics, cluster-wide and namespaced, with
//! equality-based `labelSelector` / `fieldSelector`. Lists carry
//! `metadata.resourceVersion`; watches stream newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` events
//! after the requested resourceVersion from a change log, send bookmarks
//! when idle (if `allowWatchBookmarks=true`), honour `timeoutSeconds`, and
//! answer a resourceVersion older than the compaction point with an `ERROR`
//! event carrying a `410 Expired` `Status`.
//!
//! Test controls on the handle change objects (each change gets the next
//! resourceVersion and reaches open watches), expire resourceVersions
//! ([`KubeApiServer::compact`]), cut watch connections
//! ([`KubeApiServer::drop_watches`]), stop and restart the server on the
//! same port ([`KubeApiServer::restart`], [`KubeApiServer::stop`],
//! [`KubeApiServer::resume`]), switch the metrics API off and on, refuse
//! verbs with 403, and expose a request log and counters.

mod http;
pub mod objects;
pub mod selector;
mod state;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::AtomicUsize, Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Event, Pod},
};
use serde::Serialize;
use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{oneshot, watch},
    task::JoinHandle,
};

pub use state::{RequestRecord, Resource, Verb};

use self::http::Shared;

/// Bookmark interval of [`KubeApiServer::start`].
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A running test API server; dropping it stops the server.
#[derive(Debug)]
pub struct KubeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn to_value(object: &impl Serialize) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

impl KubeApiServer {
    /// Starts a server on a random port with 1 s idle bookmarks.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(DEFAULT_BOOKMARK_INTERVAL).await
    }

    /// Starts a server whose idle watches get a bookmark every
    /// `bookmark_interval`.
    pub async fn start_with(bookmark_interval: Duration) -> std::io::Result<Self> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::default()),
            cut: watch::channel(0).0,
            bookmark_interval,
            open_watches: AtomicUsize::new(0),
        });
        let server = KubeApiServer {
            shared,
            addr,
            running: Mutex::new(None),
        };
        server.spawn(listener);
        Ok(server)
    }

    fn spawn(&self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(http::serve(listener, self.shared.clone(), stopped));
        *self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop, task));
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server: cluster, user and context all
    /// named `fake`, no authentication.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, state::State> {
        self.shared.lock()
    }

    /// Creates or replaces a pod; returns its resourceVersion.
    pub fn upsert_pod(&self, pod: &Pod) -> u64 {
        self.state().upsert(Resource::Pods, to_value(pod))
    }

    /// Deletes a pod; false if there was none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.state().delete(Resource::Pods, namespace, name)
    }

    /// Creates or replaces an HPA; returns its resourceVersion.
    pub fn upsert_hpa(&self, hpa: &HorizontalPodAutoscaler) -> u64 {
        self.state().upsert(Resource::HorizontalPodAutoscalers, to_value(hpa))
    }

    /// Deletes an HPA; false if there was none.
    pub fn delete_hpa(&self, namespace: &str, name: &str) -> bool {
        self.state().delete(Resource::HorizontalPodAutoscalers, namespace, name)
    }

    /// Adds an Event, or updates it in place (same namespace/name keeps its
    /// uid, as a count increment does); returns its resourceVersion.
    pub fn upsert_event(&self, event: &Event) -> u64 {
        self.state().upsert(Resource::Events, to_value(event))
    }

    /// Deletes an Event; false if there was none.
    pub fn delete_event(&self, namespace: &str, name: &str) -> bool {
        self.state().delete(Resource::Events, namespace, name)
    }

    /// Sets a pod's metrics.k8s.io `PodMetrics` (see
    /// [`objects::pod_metrics`]); the pod's labels are copied onto it, as
    /// metrics-server does, so label selectors work.
    pub fn set_pod_metrics(&self, mut metrics: Value) {
        let mut state = self.state();
        let ns = metrics
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let name = metrics
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(labels) = state
            .get(Resource::Pods, &ns, &name)
            .and_then(|p| p.pointer("/metadata/labels").cloned())
        {
            if let Some(meta) = metrics.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("labels".into(), labels);
            }
        }
        state.upsert(Resource::PodMetrics, metrics);
    }

    /// Removes a pod's metrics.
    pub fn remove_pod_metrics(&self, namespace: &str, name: &str) -> bool {
        self.state().delete(Resource::PodMetrics, namespace, name)
    }

    /// Expires every resourceVersion handed out so far: the next watch from
    /// one of them gets `410 Expired`. Open watches stay open.
    pub fn compact(&self) {
        self.state().compact();
    }

    /// Cuts every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// Number of watch responses currently streaming.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops listening and closes every connection (open watches
    /// included), keeping all state. Clients get "connection refused" until
    /// [`KubeApiServer::resume`]. Objects can still be changed meanwhile.
    pub async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Listens again on the same port (a no-op if running).
    pub async fn resume(&self) -> std::io::Result<()> {
        if self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        // The port was ours a moment ago; retry briefly if the kernel still
        // holds it.
        let mut attempt = 0;
        let listener = loop {
            match listen(self.addr) {
                Ok(l) => break l,
                Err(e) if attempt < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.spawn(listener);
        Ok(())
    }

    /// [`KubeApiServer::stop`], wait `pause`, [`KubeApiServer::resume`]: an
    /// API server restart that keeps its data.
    pub async fn restart(&self, pause: Duration) -> std::io::Result<()> {
        self.stop().await;
        tokio::time::sleep(pause).await;
        self.resume().await
    }

    /// Serves metrics.k8s.io (the default) or answers 404 for it and leaves
    /// it out of discovery.
    pub fn set_metrics_api(&self, enabled: bool) {
        self.state().metrics_enabled = enabled;
    }

    /// Answers `verb` on `resource` with 403 and a `Forbidden` `Status`.
    pub fn forbid(&self, resource: Resource, verb: Verb) {
        self.state().forbid(resource, verb);
    }

    /// Undoes [`KubeApiServer::forbid`].
    pub fn allow(&self, resource: Resource, verb: Verb) {
        self.state().allow(resource, verb);
    }

    /// Every request answered so far (the most recent 100 000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests()
    }

    /// How many `verb` requests on `resource` were answered.
    pub fn request_count(&self, resource: Resource, verb: Verb) -> usize {
        self.state().count(resource, verb)
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some((stop, task)) = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{objects::*, *};
    use futures_util::{StreamExt, TryStreamExt};
    use kube::{
        api::{Api, ListParams, WatchEvent, WatchParams},
        core::{DynamicObject, GroupVersionKind},
        discovery::ApiResource,
    };

    async fn client(server: &KubeApiServer) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        server.write_kubeconfig(&path).unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(
            kc,
            &kube::config::KubeConfigOptions {
                context: Some("fake".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    async fn get_raw(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
        let req = hyper::Request::get(path).body(Vec::new()).unwrap();
        let text = client.request_text(req).await?;
        Ok(serde_json::from_str(&text).unwrap())
    }

    fn status_code(r: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
        match r {
            Err(kube::Error::Api(s)) => s.code,
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    async fn next_event<K: Clone + std::fmt::Debug>(
        stream: &mut (impl futures_util::Stream<Item = Result<WatchEvent<K>, kube::Error>> + Unpin),
    ) -> WatchEvent<K> {
        tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("watch event in time")
            .expect("watch ok")
            .expect("stream open")
    }

    async fn next_non_bookmark<K: Clone + std::fmt::Debug>(
        stream: &mut (impl futures_util::Stream<Item = Result<WatchEvent<K>, kube::Error>> + Unpin),
    ) -> WatchEvent<K> {
        loop {
            match next_event(stream).await {
                WatchEvent::Bookmark(_) => continue,
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn discovery_documents() {
        let server = KubeApiServer::start().await.unwrap();
        let c = client(&server).await;
        let v = c.apiserver_version().await.unwrap();
        assert_eq!(v.major, "1");
        let core = c.list_core_api_versions().await.unwrap();
        assert_eq!(core.versions, vec!["v1".to_string()]);
        let res = c.list_core_api_resources("v1").await.unwrap();
        assert!(res
            .resources
            .iter()
            .any(|r| r.name == "pods" && r.verbs.contains(&"watch".to_string())));
        let groups = c.list_api_groups().await.unwrap();
        let names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, vec!["autoscaling", "metrics.k8s.io"]);
        let hpa = c.list_api_group_resources("autoscaling/v2").await.unwrap();
        assert_eq!(hpa.resources[0].name, "horizontalpodautoscalers");
        let m = c.list_api_group_resources("metrics.k8s.io/v1beta1").await.unwrap();
        assert_eq!(m.resources[0].kind, "PodMetrics");

        server.set_metrics_api(false);
        let groups = c.list_api_groups().await.unwrap();
        assert!(groups.groups.iter().all(|g| g.name != "metrics.k8s.io"));
        assert_eq!(
            status_code(c.list_api_group_resources("metrics.k8s.io/v1beta1").await),
            404
        );
        assert_eq!(status_code(get_raw(&c, "/apis/metrics.k8s.io/v1beta1/pods").await), 404);
        assert_eq!(status_code(get_raw(&c, "/api/v1/nodes").await), 404);
    }

    #[tokio::test]
    async fn list_with_namespaces_and_selectors() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "p1").label("app", "web").phase("Running").build());
        server.upsert_pod(&PodBuilder::new("a", "p2").label("app", "db").build());
        server.upsert_pod(&PodBuilder::new("b", "p3").label("app", "web").build());
        let t = now_time();
        server.upsert_event(&rescale_event("a", "e1", "web", 1, 3, "cpu", (t.clone(), t.clone())));
        let mut other = rescale_event("a", "e2", "web", 1, 3, "cpu", (t.clone(), t));
        other.reason = Some("Killing".into());
        server.upsert_event(&other);
        let c = client(&server).await;

        let all: Api<Pod> = Api::all(c.clone());
        let list = all.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 3);
        let rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
        assert_eq!(rv, server.resource_version());
        assert!(list.items[0].metadata.uid.is_some());
        assert!(list.items[0].metadata.creation_timestamp.is_some());
        let web = all.list(&ListParams::default().labels("app=web")).await.unwrap();
        assert_eq!(web.items.len(), 2);
        let ns_a: Api<Pod> = Api::namespaced(c.clone(), "a");
        assert_eq!(ns_a.list(&ListParams::default()).await.unwrap().items.len(), 2);
        assert_eq!(
            ns_a.list(&ListParams::default().labels("app!=web"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let one = ns_a.get("p1").await.unwrap();
        assert_eq!(one.status.unwrap().phase.as_deref(), Some("Running"));
        assert_eq!(status_code(ns_a.get("nope").await), 404);

        let events: Api<Event> = Api::all(c.clone());
        let rescales = events
            .list(&ListParams::default().fields("reason=SuccessfulRescale"))
            .await
            .unwrap();
        assert_eq!(rescales.items.len(), 1);
        assert_eq!(rescales.items[0].metadata.name.as_deref(), Some("e1"));

        assert_eq!(
            status_code(all.list(&ListParams::default().labels("app in (web)")).await),
            400
        );
    }

    #[tokio::test]
    async fn pod_metrics_list() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "p1").label("app", "web").build());
        server.set_pod_metrics(pod_metrics("a", "p1", &[("c", "250m", "64Mi")]));
        server.set_pod_metrics(pod_metrics("b", "p9", &[("c", "1", "1Gi")]));
        let c = client(&server).await;
        let gvk = GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "pods");
        let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
        assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 2);
        let web = all.list(&ListParams::default().labels("app=web")).await.unwrap();
        assert_eq!(web.items.len(), 1);
        assert_eq!(web.items[0].data["containers"][0]["usage"]["cpu"], "250m");
        let ns: Api<DynamicObject> = Api::namespaced_with(c.clone(), "b", &ar);
        assert_eq!(ns.list(&ListParams::default()).await.unwrap().items.len(), 1);
        server.set_metrics_api(false);
        assert_eq!(status_code(all.list(&ListParams::default()).await), 404);
        server.set_metrics_api(true);
        assert!(server.remove_pod_metrics("b", "p9"));
        assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 1);
    }

    #[tokio::test]
    async fn watch_streams_changes_after_the_version() {
        let server = KubeApiServer::start_with(Duration::from_millis(200)).await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "before").build());
        let c = client(&server).await;
        let pods: Api<Pod> = Api::namespaced(c.clone(), "a");
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = pods
            .watch(&WatchParams::default().timeout(30), &rv)
            .await
            .unwrap()
            .boxed();

        server.upsert_pod(&PodBuilder::new("a", "p").phase("Pending").build());
        server.upsert_pod(&PodBuilder::new("b", "elsewhere").build());
        server.upsert_pod(&PodBuilder::new("a", "p").phase("Running").build());
        server.delete_pod("a", "p");
        match next_non_bookmark(&mut stream).await {
            WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("p")),
            other => panic!("{other:?}"),
        }
        match next_non_bookmark(&mut stream).await {
            WatchEvent::Modified(p) => assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running")),
            other => panic!("{other:?}"),
        }
        let deleted_rv = match next_non_bookmark(&mut stream).await {
            WatchEvent::Deleted(p) => p.metadata.resource_version.unwrap(),
            other => panic!("{other:?}"),
        };
        // Idle: a bookmark at the latest version this watch has passed.
        match next_event(&mut stream).await {
            WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, deleted_rv),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.open_watches(), 1);

        // A new watch from the old version replays what happened since.
        let mut replay = pods.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(match next_non_bookmark(&mut replay).await {
                WatchEvent::Added(_) => "ADDED",
                WatchEvent::Modified(_) => "MODIFIED",
                WatchEvent::Deleted(_) => "DELETED",
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"]);
        assert_eq!(server.request_count(Resource::Pods, Verb::Watch), 2);
        assert_eq!(server.request_count(Resource::Pods, Verb::List), 1);
    }

    #[tokio::test]
    async fn watch_honours_field_selector_and_timeout() {
        let server = KubeApiServer::start_with(Duration::from_secs(60)).await.unwrap();
        let c = client(&server).await;
        let events: Api<Event> = Api::all(c.clone());
        let rv = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let wp = WatchParams::default().fields("reason=SuccessfulRescale").timeout(2);
        let mut stream = events.watch(&wp, &rv).await.unwrap().boxed();
        let t = now_time();
        let mut killing = rescale_event("a", "k", "web", 1, 3, "cpu", (t.clone(), t.clone()));
        killing.reason = Some("Killing".into());
        server.upsert_event(&killing);
        server.upsert_event(&rescale_event("a", "e", "web", 1, 3, "cpu", (t.clone(), t.clone())));
        server.upsert_event(&rescale_event("a", "e", "web", 2, 3, "cpu", (t.clone(), t)));
        match next_non_bookmark(&mut stream).await {
            WatchEvent::Added(e) => assert_eq!(e.count, Some(1)),
            other => panic!("{other:?}"),
        }
        match next_non_bookmark(&mut stream).await {
            WatchEvent::Modified(e) => {
                assert_eq!(e.count, Some(2));
                assert!(e.metadata.uid.is_some());
            }
            other => panic!("{other:?}"),
        }
        // The server ends the watch after timeoutSeconds.
        let end = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("ends in time");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn compacted_versions_get_410_as_a_watch_event() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_hpa(&HpaBuilder::new("a", "web").build());
        let c = client(&server).await;
        let hpas: Api<HorizontalPodAutoscaler> = Api::all(c.clone());
        let rv = hpas
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        server.compact();
        let mut stream = hpas.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        match next_event(&mut stream).await {
            WatchEvent::Error(s) => {
                assert_eq!(s.code, 410);
                assert_eq!(s.reason, "Expired");
            }
            other => panic!("{other:?}"),
        }
        // A fresh list gives a version that works again.
        let rv = hpas
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = hpas.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        server.upsert_hpa(&HpaBuilder::new("a", "web").status(2, 2, None).build());
        assert!(matches!(next_non_bookmark(&mut stream).await, WatchEvent::Modified(_)));
    }

    #[tokio::test]
    async fn forbidden_verbs_get_a_403_status() {
        let server = KubeApiServer::start().await.unwrap();
        server.forbid(Resource::HorizontalPodAutoscalers, Verb::Watch);
        let c = client(&server).await;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), "shop");
        assert!(
            hpas.list(&ListParams::default()).await.is_ok(),
            "only watch is forbidden"
        );
        match hpas.watch(&WatchParams::default(), "1").await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert_eq!(s.reason, "Forbidden");
                assert!(s.message.contains("cannot watch resource \"horizontalpodautoscalers\" in API group \"autoscaling\" in the namespace \"shop\""), "{}", s.message);
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("watch was allowed"),
        }
        server.allow(Resource::HorizontalPodAutoscalers, Verb::Watch);
        assert!(hpas.watch(&WatchParams::default(), "1").await.is_ok());
        let log = server.requests();
        let watches: Vec<_> = log
            .iter()
            .filter(|r| r.verb == Some(Verb::Watch))
            .map(|r| r.status)
            .collect();
        assert_eq!(watches, vec![403, 200]);
        assert!(log.iter().all(|r| r.namespace.as_deref() == Some("shop")));
    }

    #[tokio::test]
    async fn drop_watches_cuts_open_streams() {
        let server = KubeApiServer::start_with(Duration::from_secs(60)).await.unwrap();
        let c = client(&server).await;
        let pods: Api<Pod> = Api::all(c.clone());
        let mut stream = pods.watch(&WatchParams::default(), "1").await.unwrap().boxed();
        let wait = tokio::time::Instant::now() + Duration::from_secs(5);
        while server.open_watches() == 0 && tokio::time::Instant::now() < wait {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.drop_watches();
        // kube ends the stream on a cut chunked body (or reports the error).
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream ends");
        assert!(matches!(end, None | Some(Err(_))), "{end:?}");
        let wait = tokio::time::Instant::now() + Duration::from_secs(5);
        while server.open_watches() != 0 && tokio::time::Instant::now() < wait {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.open_watches(), 0);
    }

    #[tokio::test]
    async fn restart_keeps_state_and_port() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "p").build());
        let c = client(&server).await;
        let pods: Api<Pod> = Api::all(c.clone());
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = pods.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        let addr = server.addr();
        let restart = server.restart(Duration::from_millis(500));
        let probe = async {
            // While it is down, connections are refused.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::net::TcpStream::connect(addr).await.is_err()
        };
        let (restarted, refused) = tokio::join!(restart, probe);
        restarted.unwrap();
        assert!(refused, "the port must be closed during the pause");
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("old watch ends");
        assert!(matches!(end, None | Some(Err(_))), "{end:?}");
        assert_eq!(server.addr(), addr);
        let list = pods.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.metadata.resource_version.unwrap(), rv);
    }

    #[tokio::test]
    async fn kubeconfig_names_the_fake_context() {
        let server = KubeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kc");
        server.write_kubeconfig(&path).unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("fake"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()),
            Some(server.url())
        );
    }
}
