//! What the endpoint answers, request by request:
//!
//! * `GET /metrics` — the shared snapshot in the negotiated format;
//! * `GET /` — the status page (HTML);
//! * `GET /readyz` — 200 or 503 with the reason;
//! * `GET /healthz` — 200 while the process runs;
//! * anything else — 404, or 405 for methods other than GET and HEAD.
//!
//! With basic authentication configured, every path but `/healthz` needs
//! valid credentials (401 with `WWW-Authenticate: Basic` otherwise).
//! `/healthz` stays open because liveness probes usually cannot
//! authenticate, and it tells nothing but "the process answers". The web
//! config's extra headers go on every response.

use std::{convert::Infallible, sync::Arc};

use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode,
};

use super::{
    active::Active,
    server::Shared,
    snapshot::{PageKind, SharedBody},
};
use crate::exposition::negotiate;

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// The status page runs no script and loads nothing.
const STATUS_PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'";

/// Answers one request.
pub(crate) async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<SharedBody>, Infallible> {
    let active = shared.web.current();
    let mut response = route(&request, &shared, &active).await;
    for (name, value) in &active.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(response)
}

async fn route(
    request: &Request<Incoming>,
    shared: &Shared,
    active: &Active,
) -> Response<SharedBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if let Some(auth) = &active.auth {
        if !auth
            .check(request.headers().get(header::AUTHORIZATION))
            .await
        {
            shared.metrics.unauthorized();
            let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"telemetry\", charset=\"UTF-8\""),
            );
            return response;
        }
    }
    match path {
        "/metrics" => {
            let format = negotiate(
                request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            page(shared, PageKind::metrics(format), format.content_type()).await
        }
        "/" => {
            let mut response = page(shared, PageKind::Status, HTML).await;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(STATUS_PAGE_POLICY),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        "/readyz" => match shared.exporter.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn page(shared: &Shared, kind: PageKind, content_type: &'static str) -> Response<SharedBody> {
    match shared.snapshots.get(kind, &shared.exporter).await {
        Ok(body) => respond(StatusCode::OK, content_type, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page of the operations endpoint");
            text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
        }
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<SharedBody> {
    respond(status, TEXT, body.into())
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: bytes::Bytes,
) -> Response<SharedBody> {
    let mut response = Response::new(SharedBody::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
