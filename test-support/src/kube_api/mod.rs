//! A test Kubernetes API server speaking the real list/watch protocol.
//!
//! This module owns [`KubeApiServer`]: plain HTTP on a random 127.0.0.1 port
//! serving discovery (`/version`, `/api`, `/api/v1`, `/apis`,
//! `/apis/autoscaling/v2`, `/apis/coordination.k8s.io/v1`,
//! `/apis/metrics.k8s.io/v1beta1`), list, get and watch of pods,
//! autoscaling/v2 horizontalpodautoscalers, events and coordination/v1
//! leases, list of metrics.k8s.io pod metrics, cluster-wide and namespaced,
//! with equality-based `labelSelector` / `fieldSelector`; and create, replace
//! (resourceVersion-checked) and delete of leases with the real server's
//! answers (`writes` lists them; patch is not served). Lists carry
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
//!
//! To cut one client off while others keep working, put an [`ApiProxy`]
//! between that client and the server ([`proxy`]).

mod discovery;
mod http;
pub mod objects;
pub mod proxy;
pub mod selector;
mod state;
mod watch_stream;
mod writes;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::AtomicUsize, Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    coordination::v1::Lease,
    core::v1::{Event, Pod},
};
use serde::Serialize;
use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{oneshot, watch},
    task::JoinHandle,
};

pub use proxy::ApiProxy;
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

/// A kubeconfig for `url`: cluster, user and context all named `fake`, no
/// authentication.
fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
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
        *self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop, task));
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
        std::fs::write(path, kubeconfig(&self.url()))
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
        self.state()
            .upsert(Resource::HorizontalPodAutoscalers, to_value(hpa))
    }

    /// Deletes an HPA; false if there was none.
    pub fn delete_hpa(&self, namespace: &str, name: &str) -> bool {
        self.state()
            .delete(Resource::HorizontalPodAutoscalers, namespace, name)
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

    /// Creates or replaces a Lease without any check (as another writer
    /// would); returns its resourceVersion.
    pub fn upsert_lease(&self, lease: &Lease) -> u64 {
        self.state().upsert(Resource::Leases, to_value(lease))
    }

    /// The stored Lease, if any.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.state()
            .get(Resource::Leases, namespace, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Deletes a Lease; false if there was none.
    pub fn delete_lease(&self, namespace: &str, name: &str) -> bool {
        self.state().delete(Resource::Leases, namespace, name)
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
        self.shared
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
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
mod lease_tests;

#[cfg(test)]
mod tests {
    //! The server over raw HTTP/1.1, so the wire format itself is checked
    //! (the sender's integration tests drive it with the kube client).

    use super::{objects::*, *};
    use serde_json::json;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    /// A response being read: status, then a body that may be chunked.
    struct Conn {
        stream: TcpStream,
        status: u16,
        chunked: bool,
        raw: Vec<u8>,
        body: Vec<u8>,
        /// The terminating chunk arrived (a clean end, not a cut).
        finished: bool,
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    impl Conn {
        async fn open(addr: SocketAddr, path: &str) -> Conn {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            let head_end = loop {
                if let Some(p) = find(&raw, b"\r\n\r\n") {
                    break p;
                }
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the headers");
                raw.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            let chunked = head.contains("transfer-encoding: chunked");
            let raw = raw[head_end + 4..].to_vec();
            Conn {
                stream,
                status,
                chunked,
                raw,
                body: Vec::new(),
                finished: false,
            }
        }

        /// Moves complete chunks from `raw` to `body`.
        fn decode(&mut self) {
            if !self.chunked {
                self.body.append(&mut self.raw);
                return;
            }
            while let Some(eol) = find(&self.raw, b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.raw[..eol]).unwrap().trim(),
                    16,
                )
                .unwrap();
                if self.raw.len() < eol + 2 + size + 2 {
                    return;
                }
                if size == 0 {
                    self.finished = true;
                    self.raw.clear();
                    return;
                }
                self.body
                    .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
                self.raw.drain(..eol + 2 + size + 2);
            }
        }

        /// Reads more (and decodes it); false at end of stream.
        async fn fill(&mut self) -> bool {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("data in time")
                .unwrap_or(0);
            self.raw.extend_from_slice(&buf[..n]);
            self.decode();
            n > 0
        }

        /// The whole body as JSON.
        async fn json(mut self) -> (u16, Value) {
            self.decode();
            while !self.finished && self.fill().await {}
            (self.status, serde_json::from_slice(&self.body).unwrap())
        }

        /// The next watch event line, or None when the stream ended.
        async fn event(&mut self) -> Option<Value> {
            self.decode();
            let mut eof = false;
            loop {
                if let Some(nl) = self.body.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.body.drain(..=nl).collect();
                    return Some(serde_json::from_slice(&line).unwrap());
                }
                if self.finished || eof {
                    return None;
                }
                eof = !self.fill().await;
            }
        }

        /// The next event that is not a bookmark.
        async fn change(&mut self) -> Value {
            loop {
                let e = self.event().await.expect("an event");
                if e["type"] != "BOOKMARK" {
                    return e;
                }
            }
        }
    }

    async fn get(server: &KubeApiServer, path: &str) -> (u16, Value) {
        Conn::open(server.addr(), path).await.json().await
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i["metadata"]["namespace"].as_str().unwrap(),
                    i["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn lists_paginate_with_limit_and_continue() {
        let server = KubeApiServer::start().await.unwrap();
        for (ns, name) in [
            ("a", "p1"),
            ("a", "p2"),
            ("b", "p3"),
            ("b", "p4"),
            ("c", "p5"),
        ] {
            server.upsert_pod(&PodBuilder::new(ns, name).build());
        }
        let rv = server.resource_version().to_string();
        let (code, page) = get(&server, "/api/v1/pods?limit=2").await;
        assert_eq!(code, 200);
        assert_eq!(names(&page), vec!["a/p1", "a/p2"]);
        assert_eq!(page["metadata"]["resourceVersion"], rv.as_str());
        let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
        // A change between pages: later pages show it, the list keeps its
        // first resourceVersion (a watch from it replays the change).
        server.delete_pod("b", "p3");
        let (_, page) = get(&server, &format!("/api/v1/pods?limit=2&continue={token}")).await;
        assert_eq!(names(&page), vec!["b/p4", "c/p5"]);
        assert_eq!(page["metadata"]["resourceVersion"], rv.as_str());
        assert!(page["metadata"].get("continue").is_none(), "last page");
        let (_, page) = get(&server, "/api/v1/namespaces/a/pods?limit=1").await;
        assert_eq!(names(&page), vec!["a/p1"]);
        let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
        server.compact();
        let (code, status) = get(
            &server,
            &format!("/api/v1/namespaces/a/pods?limit=1&continue={token}"),
        )
        .await;
        assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));
        // Without limit: everything, no continue.
        let (_, all) = get(&server, "/api/v1/pods").await;
        assert_eq!(names(&all), vec!["a/p1", "a/p2", "b/p4", "c/p5"]);
        assert!(all["metadata"].get("continue").is_none());
    }

    #[tokio::test]
    async fn discovery_documents() {
        let server = KubeApiServer::start().await.unwrap();
        let (code, v) = get(&server, "/version").await;
        assert_eq!(
            (code, v["major"].as_str(), v["minor"].as_str()),
            (200, Some("1"), Some("34"))
        );
        let (_, v) = get(&server, "/api").await;
        assert_eq!(v["kind"], "APIVersions");
        assert_eq!(v["versions"], json!(["v1"]));
        let (_, v) = get(&server, "/api/v1").await;
        assert_eq!(v["kind"], "APIResourceList");
        let pods = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
        assert_eq!(pods["namespaced"], true);
        let (_, v) = get(&server, "/apis").await;
        assert_eq!(v["kind"], "APIGroupList");
        let groups: Vec<_> = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].clone())
            .collect();
        assert_eq!(
            groups,
            vec![
                json!("autoscaling"),
                json!("coordination.k8s.io"),
                json!("metrics.k8s.io")
            ]
        );
        let (_, v) = get(&server, "/apis/autoscaling/v2").await;
        assert_eq!(v["groupVersion"], "autoscaling/v2");
        assert_eq!(v["resources"][0]["name"], "horizontalpodautoscalers");
        let (code, v) = get(&server, "/apis/metrics.k8s.io/v1beta1").await;
        assert_eq!(
            (code, v["resources"][0]["kind"].as_str()),
            (200, Some("PodMetrics"))
        );

        server.set_metrics_api(false);
        let (_, v) = get(&server, "/apis").await;
        assert_eq!(v["groups"].as_array().unwrap().len(), 2);
        for path in [
            "/apis/metrics.k8s.io/v1beta1",
            "/apis/metrics.k8s.io/v1beta1/pods",
            "/apis/metrics.k8s.io",
        ] {
            let (code, v) = get(&server, path).await;
            assert_eq!(
                (code, v["kind"].as_str(), v["reason"].as_str()),
                (404, Some("Status"), Some("NotFound")),
                "{path}"
            );
        }
        assert_eq!(get(&server, "/api/v1/nodes").await.0, 404);
    }

    #[tokio::test]
    async fn lists_honour_namespaces_and_selectors() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(
            &PodBuilder::new("a", "p1")
                .label("app", "web")
                .phase("Running")
                .build(),
        );
        server.upsert_pod(&PodBuilder::new("a", "p2").label("app", "db").build());
        server.upsert_pod(&PodBuilder::new("b", "p3").label("app", "web").build());
        let t = now_time();
        server.upsert_event(&rescale_event(
            "a",
            "e1",
            "web",
            1,
            3,
            "cpu",
            (t.clone(), t.clone()),
        ));
        let mut other = rescale_event("a", "e2", "web", 1, 3, "cpu", (t.clone(), t));
        other.reason = Some("Killing".into());
        server.upsert_event(&other);

        let (code, list) = get(&server, "/api/v1/pods?limit=500").await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(names(&list), vec!["a/p1", "a/p2", "b/p3"]);
        assert_eq!(
            list["metadata"]["resourceVersion"],
            server.resource_version().to_string()
        );
        let item = &list["items"][0];
        assert!(
            item.get("kind").is_none(),
            "list items carry no kind, like the real server"
        );
        assert!(
            item["metadata"]["uid"].is_string()
                && item["metadata"]["creationTimestamp"].is_string()
        );
        assert_eq!(
            item["metadata"]["resourceVersion"]
                .as_str()
                .map(|v| v.parse::<u64>().is_ok()),
            Some(true)
        );
        let (_, web) = get(&server, "/api/v1/pods?labelSelector=app%3Dweb").await;
        assert_eq!(names(&web), vec!["a/p1", "b/p3"]);
        let (_, ns) = get(
            &server,
            "/api/v1/namespaces/a/pods?labelSelector=app%21%3Dweb",
        )
        .await;
        assert_eq!(names(&ns), vec!["a/p2"]);
        let (code, one) = get(&server, "/api/v1/namespaces/a/pods/p1").await;
        assert_eq!(
            (code, one["kind"].as_str(), one["status"]["phase"].as_str()),
            (200, Some("Pod"), Some("Running"))
        );
        assert_eq!(get(&server, "/api/v1/namespaces/a/pods/nope").await.0, 404);
        let (_, events) = get(
            &server,
            "/api/v1/events?fieldSelector=reason%3DSuccessfulRescale",
        )
        .await;
        assert_eq!(names(&events), vec!["a/e1"]);
        let (code, bad) = get(&server, "/api/v1/pods?labelSelector=app+in+%28web%29").await;
        assert_eq!((code, bad["reason"].as_str()), (400, Some("BadRequest")));
        assert_eq!(server.request_count(Resource::Pods, Verb::List), 4);
        assert_eq!(server.request_count(Resource::Pods, Verb::Get), 2);
        assert_eq!(server.request_count(Resource::Events, Verb::List), 1);
    }

    #[tokio::test]
    async fn pod_metrics_list() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "p1").label("app", "web").build());
        server.set_pod_metrics(pod_metrics("a", "p1", &[("c", "250m", "64Mi")]));
        server.set_pod_metrics(pod_metrics("b", "p9", &[("c", "1", "1Gi")]));
        let (code, all) = get(&server, "/apis/metrics.k8s.io/v1beta1/pods").await;
        assert_eq!((code, all["kind"].as_str()), (200, Some("PodMetricsList")));
        assert_eq!(names(&all), vec!["a/p1", "b/p9"]);
        let (_, web) = get(
            &server,
            "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%3Dweb",
        )
        .await;
        assert_eq!(names(&web), vec!["a/p1"]);
        assert_eq!(web["items"][0]["containers"][0]["usage"]["cpu"], "250m");
        assert!(web["items"][0]["timestamp"].is_string());
        let (_, ns) = get(&server, "/apis/metrics.k8s.io/v1beta1/namespaces/b/pods").await;
        assert_eq!(names(&ns), vec!["b/p9"]);
        let (code, _) = get(&server, "/apis/metrics.k8s.io/v1beta1/pods?watch=true").await;
        assert_eq!(code, 405, "pod metrics cannot be watched");
        assert!(server.remove_pod_metrics("b", "p9"));
        assert_eq!(
            names(&get(&server, "/apis/metrics.k8s.io/v1beta1/pods").await.1),
            vec!["a/p1"]
        );
        assert_eq!(server.request_count(Resource::PodMetrics, Verb::List), 4);
    }

    #[tokio::test]
    async fn watch_streams_changes_after_the_version_then_bookmarks() {
        let server = KubeApiServer::start_with(Duration::from_millis(200))
            .await
            .unwrap();
        server.upsert_pod(&PodBuilder::new("a", "before").build());
        let rv = server.resource_version();
        let path = format!(
            "/api/v1/namespaces/a/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=30"
        );
        let mut w = Conn::open(server.addr(), &path).await;
        assert_eq!(w.status, 200);
        assert!(w.chunked);
        server.upsert_pod(&PodBuilder::new("a", "p").phase("Pending").build());
        server.upsert_pod(&PodBuilder::new("b", "elsewhere").build());
        server.upsert_pod(&PodBuilder::new("a", "p").phase("Running").build());
        server.delete_pod("a", "p");
        let added = w.change().await;
        assert_eq!(
            (added["type"].as_str(), added["object"]["kind"].as_str()),
            (Some("ADDED"), Some("Pod"))
        );
        let modified = w.change().await;
        assert_eq!(modified["type"], "MODIFIED");
        assert_eq!(modified["object"]["status"]["phase"], "Running");
        let deleted = w.change().await;
        assert_eq!(deleted["type"], "DELETED");
        // Idle: bookmarks at the latest version this watch has passed.
        let bookmark = w.event().await.unwrap();
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(
            bookmark["object"]["metadata"]["resourceVersion"],
            deleted["object"]["metadata"]["resourceVersion"]
        );
        assert_eq!(bookmark["object"]["kind"], "Pod");
        assert_eq!(server.open_watches(), 1);

        // A second watch from the old version replays the same changes.
        let mut replay = Conn::open(
            server.addr(),
            &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={rv}"),
        )
        .await;
        let kinds: Vec<_> = [
            replay.event().await,
            replay.event().await,
            replay.event().await,
        ]
        .into_iter()
        .map(|e| e.unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
        // Without a version: the current objects as ADDED.
        let mut fresh = Conn::open(server.addr(), "/api/v1/namespaces/a/pods?watch=true").await;
        let first = fresh.event().await.unwrap();
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("before"))
        );
        assert_eq!(server.request_count(Resource::Pods, Verb::Watch), 3);
    }

    #[tokio::test]
    async fn watch_selectors_turn_transitions_into_added_and_deleted() {
        let server = KubeApiServer::start_with(Duration::from_secs(60))
            .await
            .unwrap();
        let rv = server.resource_version();
        let mut w = Conn::open(
            server.addr(),
            &format!("/api/v1/pods?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb"),
        )
        .await;
        server.upsert_pod(&PodBuilder::new("a", "p").label("app", "db").build());
        server.upsert_pod(&PodBuilder::new("a", "p").label("app", "web").build());
        server.upsert_pod(&PodBuilder::new("a", "p").label("app", "db").build());
        let types: Vec<_> = [w.event().await, w.event().await]
            .into_iter()
            .map(|e| e.unwrap()["type"].clone())
            .collect();
        assert_eq!(types, vec![json!("ADDED"), json!("DELETED")]);
    }

    #[tokio::test]
    async fn watch_field_selector_and_server_timeout() {
        let server = KubeApiServer::start_with(Duration::from_secs(60))
            .await
            .unwrap();
        let rv = server.resource_version();
        let path = format!(
            "/api/v1/events?watch=true&resourceVersion={rv}&fieldSelector=reason%3DSuccessfulRescale&timeoutSeconds=1"
        );
        let mut w = Conn::open(server.addr(), &path).await;
        let t = now_time();
        let mut killing = rescale_event("a", "k", "web", 1, 3, "cpu", (t.clone(), t.clone()));
        killing.reason = Some("Killing".into());
        server.upsert_event(&killing);
        server.upsert_event(&rescale_event(
            "a",
            "e",
            "web",
            1,
            3,
            "cpu",
            (t.clone(), t.clone()),
        ));
        server.upsert_event(&rescale_event("a", "e", "web", 2, 3, "cpu", (t.clone(), t)));
        let added = w.event().await.unwrap();
        assert_eq!(
            (added["type"].as_str(), added["object"]["count"].as_i64()),
            (Some("ADDED"), Some(1))
        );
        let modified = w.event().await.unwrap();
        assert_eq!(
            (
                modified["type"].as_str(),
                modified["object"]["count"].as_i64()
            ),
            (Some("MODIFIED"), Some(2))
        );
        assert_eq!(
            modified["object"]["metadata"]["uid"], added["object"]["metadata"]["uid"],
            "updated in place"
        );
        // timeoutSeconds ends the response cleanly.
        assert!(w.event().await.is_none());
        assert!(
            w.finished,
            "a timed-out watch ends with the terminating chunk"
        );
    }

    #[tokio::test]
    async fn compacted_versions_get_410_as_a_watch_event() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_hpa(&HpaBuilder::new("a", "web").build());
        let rv = server.resource_version();
        server.compact();
        let path = format!(
            "/apis/autoscaling/v2/horizontalpodautoscalers?watch=true&resourceVersion={rv}"
        );
        let mut w = Conn::open(server.addr(), &path).await;
        assert_eq!(
            w.status, 200,
            "the real server reports expiry inside the stream"
        );
        let e = w.event().await.unwrap();
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["kind"], "Status");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
        assert!(w.event().await.is_none());
        // A fresh list gives a version that works again.
        let (_, list) = get(&server, "/apis/autoscaling/v2/horizontalpodautoscalers").await;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!(
            "/apis/autoscaling/v2/horizontalpodautoscalers?watch=true&resourceVersion={rv}"
        );
        let mut w = Conn::open(server.addr(), &path).await;
        server.upsert_hpa(&HpaBuilder::new("a", "web").status(2, 2, None).build());
        let e = w.change().await;
        assert_eq!(
            (e["type"].as_str(), e["object"]["apiVersion"].as_str()),
            (Some("MODIFIED"), Some("autoscaling/v2"))
        );
    }

    #[tokio::test]
    async fn forbidden_verbs_get_a_403_status() {
        let server = KubeApiServer::start().await.unwrap();
        server.forbid(Resource::HorizontalPodAutoscalers, Verb::Watch);
        let base = "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers";
        assert_eq!(get(&server, base).await.0, 200, "only watch is forbidden");
        let (code, status) = get(&server, &format!("{base}?watch=true&resourceVersion=1")).await;
        assert_eq!(code, 403);
        assert_eq!(
            (
                status["kind"].as_str(),
                status["reason"].as_str(),
                status["code"].as_i64()
            ),
            (Some("Status"), Some("Forbidden"), Some(403))
        );
        assert_eq!(status["details"]["group"], "autoscaling");
        let msg = status["message"].as_str().unwrap();
        assert!(
            msg.contains("cannot watch resource \"horizontalpodautoscalers\" in API group \"autoscaling\" in the namespace \"shop\""),
            "{msg}"
        );
        server.allow(Resource::HorizontalPodAutoscalers, Verb::Watch);
        let w = Conn::open(
            server.addr(),
            &format!("{base}?watch=true&resourceVersion=1"),
        )
        .await;
        assert_eq!(w.status, 200);
        let log = server.requests();
        let watches: Vec<_> = log
            .iter()
            .filter(|r| r.verb == Some(Verb::Watch))
            .map(|r| r.status)
            .collect();
        assert_eq!(watches, vec![403, 200]);
        assert!(log.iter().all(|r| r.namespace.as_deref() == Some("shop")));
        assert!(log.iter().all(|r| r.method == "GET" && r.path == base));
    }

    async fn wait_open_watches(server: &KubeApiServer, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while server.open_watches() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "open watches: {} != {n}",
                server.open_watches()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn drop_watches_cuts_open_streams() {
        let server = KubeApiServer::start_with(Duration::from_secs(60))
            .await
            .unwrap();
        let mut a = Conn::open(server.addr(), "/api/v1/pods?watch=true&resourceVersion=1").await;
        let mut b = Conn::open(server.addr(), "/api/v1/events?watch=true&resourceVersion=1").await;
        wait_open_watches(&server, 2).await;
        server.drop_watches();
        assert!(a.event().await.is_none() && b.event().await.is_none());
        assert!(
            !a.finished && !b.finished,
            "cut mid-stream, not ended cleanly"
        );
        wait_open_watches(&server, 0).await;
        // New watches work.
        let mut c = Conn::open(server.addr(), "/api/v1/pods?watch=true&resourceVersion=1").await;
        server.upsert_pod(&PodBuilder::new("a", "p").build());
        assert_eq!(c.change().await["type"], "ADDED");
    }

    #[tokio::test]
    async fn restart_keeps_state_and_port() {
        let server = KubeApiServer::start().await.unwrap();
        server.upsert_pod(&PodBuilder::new("a", "p").build());
        let rv = server.resource_version();
        let mut w = Conn::open(
            server.addr(),
            &format!("/api/v1/pods?watch=true&resourceVersion={rv}"),
        )
        .await;
        let addr = server.addr();
        server.stop().await;
        assert!(w.event().await.is_none(), "open watches are closed");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "refused while stopped"
        );
        server.upsert_pod(&PodBuilder::new("a", "q").build());
        server.resume().await.unwrap();
        let (_, list) = get(&server, "/api/v1/pods").await;
        assert_eq!(names(&list), vec!["a/p", "a/q"]);
        // Watching from before the stop replays what changed meanwhile.
        let mut w = Conn::open(
            addr,
            &format!("/api/v1/pods?watch=true&resourceVersion={rv}"),
        )
        .await;
        assert_eq!(w.change().await["object"]["metadata"]["name"], "q");
        server.restart(Duration::from_millis(100)).await.unwrap();
        assert_eq!(server.addr(), addr);
        assert_eq!(get(&server, "/api/v1/pods").await.0, 200);
    }

    #[tokio::test]
    async fn only_get_is_served() {
        let server = KubeApiServer::start().await.unwrap();
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream
            .write_all(b"DELETE /api/v1/namespaces/a/pods/p HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 405"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[tokio::test]
    async fn kubeconfig_names_the_fake_context() {
        let server = KubeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kc");
        server.write_kubeconfig(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("    server: {}\n", server.url())),
            "{text}"
        );
        assert!(text.contains("current-context: fake\n"));
        assert!(text.contains("- name: fake\n  context:\n    cluster: fake\n    user: fake\n"));
    }
}
