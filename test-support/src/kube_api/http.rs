//! The HTTP side of the test API server (hyper 1, plain HTTP/1.1).
//!
//! This module owns routing (method and path to a verb on a resource), list
//! and get responses, `Status` error bodies, reading write bodies (at most
//! [`MAX_BODY`] bytes) and the accept loop whose connections can be cut.
//! Discovery documents come from `discovery`, watches stream from
//! `watch_stream`, and what a write answers is decided in `writes`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinSet,
};

use super::{
    discovery,
    selector::Selector,
    state::{RequestRecord, Resource, State, Verb, WatchFilter},
    watch_stream::watch_response,
    writes,
};

/// Largest request body read (a Lease is well under 1 KiB).
pub(crate) const MAX_BODY: usize = 1 << 20;

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

pub(crate) fn status_response(
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

/// The verb a request performs, if it addresses a resource with a method
/// the server serves for it.
fn verb(method: &Method, route: &Route, query: &Query) -> Option<Verb> {
    let writable = |r: &Resource| r.writable();
    match (method, route) {
        (&Method::GET, Route::Collection { .. }) => {
            Some(if matches!(query.get("watch"), Some("true" | "1")) {
                Verb::Watch
            } else {
                Verb::List
            })
        }
        (&Method::GET, Route::Object { .. }) => Some(Verb::Get),
        (
            &Method::POST,
            Route::Collection {
                resource,
                namespace: Some(_),
            },
        ) if writable(resource) => Some(Verb::Create),
        (&Method::PUT, Route::Object { resource, .. }) if writable(resource) => Some(Verb::Update),
        (&Method::DELETE, Route::Object { resource, .. }) if writable(resource) => {
            Some(Verb::Delete)
        }
        _ => None,
    }
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
    let verb = verb(&method, &route, &query);
    let (resource, namespace, name) = match &route {
        Route::Collection {
            resource,
            namespace,
        } => (Some(*resource), namespace.clone(), None),
        Route::Object {
            resource,
            namespace,
            name,
        } => (Some(*resource), Some(namespace.clone()), Some(name.clone())),
        _ => (None, None, None),
    };
    let resp = match (verb, resource, namespace.as_deref()) {
        (Some(v @ (Verb::Create | Verb::Update | Verb::Delete)), Some(r), Some(ns)) => {
            write(&shared, v, r, (ns, name.as_deref()), req.into_body()).await
        }
        _ if method != Method::GET => status_response(
            405,
            "MethodNotAllowed",
            "the test API server serves GET, and create, update and delete of leases",
            None,
        ),
        _ => respond(&shared, route, &query),
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

/// A create, update or delete of `resource` at `(namespace, name)`.
async fn write(
    shared: &Shared,
    verb: Verb,
    resource: Resource,
    (namespace, name): (&str, Option<&str>),
    body: hyper::body::Incoming,
) -> Response<Body> {
    if shared.lock().is_forbidden(resource, verb) {
        return forbidden(resource, verb, Some(namespace));
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return status_response(
                413,
                "RequestEntityTooLarge",
                &format!("the request body could not be read (limit {MAX_BODY} bytes): {e}"),
                None,
            )
        }
    };
    let answer = {
        let mut state = shared.lock();
        let name = name.unwrap_or_default();
        match verb {
            Verb::Create => writes::create(&mut state, resource, namespace, &bytes),
            Verb::Update => writes::replace(&mut state, resource, namespace, name, &bytes),
            _ => writes::delete(&mut state, resource, namespace, name, &bytes),
        }
    };
    json_response(
        StatusCode::from_u16(answer.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &answer.body,
    )
}

fn respond(shared: &Arc<Shared>, route: Route, query: &Query) -> Response<Body> {
    let metrics_enabled = shared.lock().metrics_enabled;
    match route {
        Route::Version => json_response(StatusCode::OK, &discovery::version()),
        Route::CoreVersions => json_response(StatusCode::OK, &discovery::core_versions()),
        Route::CoreResources => json_response(StatusCode::OK, &discovery::core_resources()),
        Route::Groups => json_response(StatusCode::OK, &discovery::groups(metrics_enabled)),
        Route::Group(g) => discovery::group(&g, metrics_enabled)
            .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
        Route::GroupResources(g, v) => discovery::group_resources(&g, &v, metrics_enabled)
            .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
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
