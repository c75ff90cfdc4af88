//! The HTTP side of the test API server (hyper 1, plain HTTP/1.1).
//!
//! This module owns routing, discovery documents, list and get responses,
//! streaming watches (newline-delimited JSON watch events, bookmarks, `410
//! Expired` as an `ERROR` event, server-side `timeoutSeconds`), `Status`
//! error bodies, and the accept loop whose connections can be cut.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{
        APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    },
    version::Info,
};
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{broadcast, oneshot, watch},
    task::JoinSet,
};

use super::{
    selector::Selector,
    state::{LogEntry, RequestRecord, Resource, State, Verb, WatchFilter},
};

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Everything request handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Bumped to cut every open watch connection.
    pub(crate) cut: watch::Sender<u64>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) open_watches: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not wedge the server for the others.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `Status` failure object.
pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

fn status_response(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_object(code, reason, message, details),
    )
}

fn not_found() -> Response<Body> {
    status_response(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match decoded {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, decoded.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a URL addresses.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Version,
    CoreVersions,
    CoreResources,
    Groups,
    Group(String),
    GroupResources(String, String),
    Collection {
        resource: Resource,
        namespace: Option<String>,
    },
    Object {
        resource: Resource,
        namespace: String,
        name: String,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource_route = |group: &str, version: &str, rest: &[&str]| -> Route {
        let (namespace, rest) = match rest {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
            other => (None, other),
        };
        match rest {
            [plural] => {
                Resource::lookup(group, version, plural).map_or(Route::Unknown, |resource| {
                    Route::Collection {
                        resource,
                        namespace,
                    }
                })
            }
            [plural, name] => match (Resource::lookup(group, version, plural), namespace) {
                (Some(resource), Some(namespace)) => Route::Object {
                    resource,
                    namespace,
                    name: (*name).to_owned(),
                },
                _ => Route::Unknown,
            },
            _ => Route::Unknown,
        }
    };
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["api", "v1"] => Route::CoreResources,
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group((*g).to_owned()),
        ["apis", g, v] => Route::GroupResources((*g).to_owned(), (*v).to_owned()),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::Unknown,
    }
}

fn api_resource(r: Resource) -> APIResource {
    let verbs: &[&str] = if r.watchable() {
        &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    } else {
        &["get", "list"]
    };
    APIResource {
        name: r.plural().to_owned(),
        singular_name: r.kind().to_lowercase(),
        namespaced: true,
        kind: r.kind().to_owned(),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..APIResource::default()
    }
}

fn resource_list(group_version: &str, resources: &[Resource]) -> Value {
    serde_json::to_value(APIResourceList {
        group_version: group_version.to_owned(),
        resources: resources.iter().copied().map(api_resource).collect(),
    })
    .unwrap_or_default()
}

fn api_group(name: &str, version: &str) -> APIGroup {
    let gv = GroupVersionForDiscovery {
        group_version: format!("{name}/{version}"),
        version: version.to_owned(),
    };
    APIGroup {
        name: name.to_owned(),
        preferred_version: Some(gv.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![gv],
    }
}

fn groups(metrics: bool) -> Vec<APIGroup> {
    let mut g = vec![api_group("autoscaling", "v2")];
    if metrics {
        g.push(api_group("metrics.k8s.io", "v1beta1"));
    }
    g
}

fn forbidden(resource: Resource, verb: Verb, namespace: Option<&str>) -> Response<Body> {
    let scope = namespace.map_or_else(
        || "at the cluster scope".to_owned(),
        |ns| format!("in the namespace \"{ns}\""),
    );
    let message = format!(
        "{} is forbidden: User \"system:serviceaccount:telemetry:telemetry-sender\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        resource.qualified(),
        verb.as_str(),
        resource.plural(),
        resource.group(),
    );
    status_response(
        403,
        "Forbidden",
        &message,
        Some(json!({"group": resource.group(), "kind": resource.plural()})),
    )
}

fn list_kind(resource: Resource) -> String {
    format!("{}List", resource.kind())
}

/// Handles one request (recording it).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let route = route(&path);
    let (resource, namespace, verb) = match &route {
        Route::Collection {
            resource,
            namespace,
        } => {
            let watch = matches!(query.get("watch"), Some("true" | "1"));
            (
                Some(*resource),
                namespace.clone(),
                Some(if watch { Verb::Watch } else { Verb::List }),
            )
        }
        Route::Object {
            resource,
            namespace,
            ..
        } => (Some(*resource), Some(namespace.clone()), Some(Verb::Get)),
        _ => (None, None, None),
    };
    let resp = if method != Method::GET {
        status_response(
            405,
            "MethodNotAllowed",
            "the test API server only serves GET",
            None,
        )
    } else {
        respond(&shared, route, &query)
    };
    shared.lock().record(RequestRecord {
        method: method.to_string(),
        path,
        query: raw_query,
        resource,
        verb,
        namespace,
        status: resp.status().as_u16(),
    });
    resp
}

fn respond(shared: &Arc<Shared>, route: Route, query: &Query) -> Response<Body> {
    let metrics_enabled = shared.lock().metrics_enabled;
    match route {
        Route::Version => json_response(
            StatusCode::OK,
            &serde_json::to_value(Info {
                major: "1".into(),
                minor: "34".into(),
                git_version: "v1.34.0-telemetry-test".into(),
                git_commit: "0000000000000000000000000000000000000000".into(),
                git_tree_state: "clean".into(),
                build_date: "2025-01-01T00:00:00Z".into(),
                go_version: "go1.24".into(),
                compiler: "gc".into(),
                platform: "linux/amd64".into(),
                ..Info::default()
            })
            .unwrap_or_default(),
        ),
        Route::CoreVersions => json_response(
            StatusCode::OK,
            &serde_json::to_value(APIVersions {
                versions: vec!["v1".into()],
                server_address_by_client_cidrs: vec![],
            })
            .unwrap_or_default(),
        ),
        Route::CoreResources => json_response(
            StatusCode::OK,
            &resource_list("v1", &[Resource::Pods, Resource::Events]),
        ),
        Route::Groups => json_response(
            StatusCode::OK,
            &serde_json::to_value(APIGroupList {
                groups: groups(metrics_enabled),
            })
            .unwrap_or_default(),
        ),
        Route::Group(g) => match groups(metrics_enabled).into_iter().find(|x| x.name == g) {
            Some(group) => json_response(
                StatusCode::OK,
                &serde_json::to_value(group).unwrap_or_default(),
            ),
            None => not_found(),
        },
        Route::GroupResources(g, v) => match (g.as_str(), v.as_str()) {
            ("autoscaling", "v2") => json_response(
                StatusCode::OK,
                &resource_list("autoscaling/v2", &[Resource::HorizontalPodAutoscalers]),
            ),
            ("metrics.k8s.io", "v1beta1") if metrics_enabled => json_response(
                StatusCode::OK,
                &resource_list("metrics.k8s.io/v1beta1", &[Resource::PodMetrics]),
            ),
            _ => not_found(),
        },
        Route::Collection {
            resource,
            namespace,
        } => {
            if resource == Resource::PodMetrics && !metrics_enabled {
                return not_found();
            }
            let watch = matches!(query.get("watch"), Some("true" | "1"));
            let verb = if watch { Verb::Watch } else { Verb::List };
            if shared.lock().is_forbidden(resource, verb) {
                return forbidden(resource, verb, namespace.as_deref());
            }
            let labels = match Selector::labels(query.get("labelSelector").unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => return status_response(400, "BadRequest", &e.to_string(), None),
            };
            let fields = match Selector::fields(query.get("fieldSelector").unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => return status_response(400, "BadRequest", &e.to_string(), None),
            };
            let filter = WatchFilter {
                resource,
                namespace,
                labels,
                fields,
            };
            if watch {
                if !resource.watchable() {
                    return status_response(
                        405,
                        "MethodNotAllowed",
                        "the resource does not support watch",
                        None,
                    );
                }
                watch_response(shared, filter, query)
            } else {
                list_response(shared, &filter, query)
            }
        }
        Route::Object {
            resource,
            namespace,
            name,
        } => {
            if resource == Resource::PodMetrics && !metrics_enabled {
                return not_found();
            }
            let state = shared.lock();
            if state.is_forbidden(resource, Verb::Get) {
                drop(state);
                return forbidden(resource, Verb::Get, Some(&namespace));
            }
            match state.get(resource, &namespace, &name) {
                Some(obj) => json_response(StatusCode::OK, &obj),
                None => status_response(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", resource.qualified()),
                    Some(
                        json!({"name": name, "group": resource.group(), "kind": resource.plural()}),
                    ),
                ),
            }
        }
        Route::Unknown => not_found(),
    }
}

/// A list, paginated when the client sends `limit` (as kube-runtime's
/// watcher does, 500 by default): `metadata.continue` is
/// `<rv>/<namespace>/<name>` of the last item, and every page carries the
/// first page's resourceVersion, so a watch from it replays whatever changed
/// while the pages were fetched (later pages show current objects, not a
/// snapshot). A continue token older than the compaction point gets
/// `410 Expired`, as from the real API server.
fn list_response(shared: &Shared, filter: &WatchFilter, query: &Query) -> Response<Body> {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let cont = match query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            match (
                parts.next().and_then(|r| r.parse::<u64>().ok()),
                parts.next(),
                parts.next(),
            ) {
                (Some(rv), Some(ns), Some(name)) => Some((rv, (ns.to_owned(), name.to_owned()))),
                _ => {
                    return status_response(
                        400,
                        "BadRequest",
                        &format!("invalid continue token {token:?}"),
                        None,
                    )
                }
            }
        }
    };
    let (items, rv, next) = {
        let state = shared.lock();
        match (limit, cont) {
            (None, None) => (state.list(filter), state.rv, None),
            (limit, cont) => {
                let (rv, after) = match cont {
                    Some((rv, _)) if rv < state.compacted_below => {
                        return status_response(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                            None,
                        );
                    }
                    Some((rv, after)) => (rv, Some(after)),
                    None => (state.rv, None),
                };
                let (items, next) = state.list_page(filter, after, limit.unwrap_or(usize::MAX));
                (items, rv, next)
            }
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some((ns, name)) = next {
        metadata["continue"] = Value::String(format!("{rv}/{ns}/{name}"));
    }
    // Like the real API server, items of a list carry no kind/apiVersion.
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": list_kind(filter.resource),
            "apiVersion": filter.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The state of one streaming watch.
struct WatchStream {
    shared: Arc<Shared>,
    filter: WatchFilter,
    replay: VecDeque<Bytes>,
    feed: Option<broadcast::Receiver<Arc<LogEntry>>>,
    seen_rv: u64,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    cut: watch::Receiver<u64>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WatchStream {
    fn bookmark(&self) -> Bytes {
        line(
            "BOOKMARK",
            &json!({
                "kind": self.filter.resource.kind(),
                "apiVersion": self.filter.resource.api_version(),
                "metadata": {"resourceVersion": self.seen_rv.to_string()},
            }),
        )
    }

    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        if let Some(l) = self.replay.pop_front() {
            return Some(Ok(Frame::data(l)));
        }
        let interval = self.shared.bookmark_interval;
        let feed = self.feed.as_mut()?;
        let idle = tokio::time::sleep(interval);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                _ = self.cut.changed() => {
                    // An error ends the response without its final chunk:
                    // the client sees the connection cut mid-stream.
                    return Some(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch cut by test")));
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
                _ = &mut idle, if self.bookmarks => return Some(Ok(Frame::data(self.bookmark()))),
                got = feed.recv() => match got {
                    Ok(entry) => {
                        if entry.rv <= self.seen_rv {
                            continue;
                        }
                        self.seen_rv = entry.rv;
                        if let Some(kind) = self.filter.event_type(&entry) {
                            return Some(Ok(Frame::data(line(kind, &entry.object))));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(Err(std::io::Error::other("watch fell behind")));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn watch_response(shared: &Arc<Shared>, filter: WatchFilter, query: &Query) -> Response<Body> {
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let bookmarks = matches!(query.get("allowWatchBookmarks"), Some("true" | "1"));
    let requested: Option<u64> = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                return status_response(
                    400,
                    "BadRequest",
                    &format!("invalid resourceVersion {v:?}"),
                    None,
                )
            }
        },
    };
    let mut replay = VecDeque::new();
    let (feed, seen_rv) = {
        let state = shared.lock();
        match requested {
            Some(n) if n < state.compacted_below => {
                let status = status_object(
                    410,
                    "Expired",
                    &format!("too old resource version: {n} ({})", state.compacted_below),
                    None,
                );
                replay.push_back(line("ERROR", &status));
                (None, state.rv)
            }
            Some(n) => {
                for entry in state.since(n) {
                    if let Some(kind) = filter.event_type(&entry) {
                        replay.push_back(line(kind, &entry.object));
                    }
                }
                (Some(state.feed.subscribe()), state.rv)
            }
            None => {
                for obj in state.list(&filter) {
                    replay.push_back(line("ADDED", &obj));
                }
                (Some(state.feed.subscribe()), state.rv)
            }
        }
    };
    shared
        .open_watches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let stream = WatchStream {
        shared: shared.clone(),
        filter,
        replay,
        feed,
        seen_rv,
        bookmarks,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        cut: shared.cut.subscribe(),
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((frame, s))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves connections from `listener` until `stop` fires; then closes every
/// connection (open watches included) before returning.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, "test API server accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(route("/api"), Route::CoreVersions);
        assert_eq!(route("/api/v1"), Route::CoreResources);
        assert_eq!(route("/apis"), Route::Groups);
        assert_eq!(
            route("/apis/autoscaling/v2"),
            Route::GroupResources("autoscaling".into(), "v2".into())
        );
        assert_eq!(
            route("/api/v1/pods"),
            Route::Collection {
                resource: Resource::Pods,
                namespace: None
            }
        );
        assert_eq!(
            route("/api/v1/namespaces/shop/events"),
            Route::Collection {
                resource: Resource::Events,
                namespace: Some("shop".into())
            }
        );
        assert_eq!(
            route("/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/web"),
            Route::Object {
                resource: Resource::HorizontalPodAutoscalers,
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/pods"),
            Route::Collection {
                resource: Resource::PodMetrics,
                namespace: None
            }
        );
        assert_eq!(route("/api/v1/nodes"), Route::Unknown);
        assert_eq!(route("/api/v1/namespaces/x"), Route::Unknown);
        assert_eq!(route("/healthz"), Route::Unknown);
    }

    #[test]
    fn queries_are_decoded() {
        let q = Query::parse("labelSelector=app%3Dweb%2Ctier%21%3Dx&watch=true&fieldSelector=reason%3DSuccessfulRescale&x=a+b&bad=%zz&trail=%4");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier!=x"));
        assert_eq!(q.get("watch"), Some("true"));
        assert_eq!(q.get("fieldSelector"), Some("reason=SuccessfulRescale"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("trail"), Some("%4"));
        assert_eq!(q.get("missing"), None);
    }
}
