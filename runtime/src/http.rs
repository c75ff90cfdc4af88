//! The operations HTTP endpoint both binaries serve:
//!
//! * `GET /metrics` — Prometheus text format, or OpenMetrics when the
//!   scraper's `Accept` header prefers it;
//! * `GET /healthz` — 200 while the process runs;
//! * `GET /readyz` — 200 when the [`Exporter`] says it is ready, else 503
//!   with the reason.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::exposition::{negotiate, Format};

/// What the endpoint serves.
pub trait Exporter: Send + Sync + 'static {
    /// Writes a complete scrape page in `format` into `out` (cleared first).
    fn render(&self, format: Format, out: &mut String);

    /// `Ok` when ready to serve its purpose, `Err(reason)` otherwise.
    fn ready(&self) -> Result<(), String>;
}

/// Renders a plain registry (the sender's endpoint).
#[derive(Debug)]
pub struct RegistryExporter<R> {
    registry: prometheus::Registry,
    ready: R,
}

impl<R: Fn() -> Result<(), String> + Send + Sync + 'static> RegistryExporter<R> {
    /// Serves `registry`; `ready` decides readiness.
    pub fn new(registry: prometheus::Registry, ready: R) -> Self {
        Self { registry, ready }
    }
}

impl<R: Fn() -> Result<(), String> + Send + Sync + 'static> Exporter for RegistryExporter<R> {
    fn render(&self, format: Format, out: &mut String) {
        out.clear();
        crate::exposition::render_metric_families(out, format, &self.registry.gather());
        crate::exposition::finish(out, format);
    }

    fn ready(&self) -> Result<(), String> {
        (self.ready)()
    }
}

/// The endpoint could not start.
#[derive(Debug, Error)]
#[error("cannot listen on {addr} for the metrics endpoint: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Binds the endpoint's TCP listener (separately from serving, so that a
/// bad address is a startup error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

async fn metrics(State(exporter): State<Arc<dyn Exporter>>, headers: HeaderMap) -> Response {
    let format = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        exporter.render(format, &mut out);
        out
    })
    .await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response(),
    }
}

async fn readyz(State(exporter): State<Arc<dyn Exporter>>) -> Response {
    match exporter.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<dyn Exporter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(exporter);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use telemetry_test_support::http::get as http_get;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_health_and_readiness() -> anyhow::Result<()> {
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounter::new("demo_events_total", "Events.")?;
        registry.register(Box::new(c.clone()))?;
        c.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let r2 = ready.clone();
        let exporter = Arc::new(RegistryExporter::new(registry, move || {
            if r2.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("first list not done".into())
            }
        }));
        let listener = bind(([127, 0, 0, 1], 0).into()).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, exporter, async {
            let _ = rx.await;
        }));
        let (plain, om, health, not_ready) = tokio::task::spawn_blocking(move || {
            (
                http_get(addr, "/metrics", &[]),
                http_get(
                    addr,
                    "/metrics",
                    &[("Accept", "application/openmetrics-text;version=1.0.0")],
                ),
                http_get(addr, "/healthz", &[]),
                http_get(addr, "/readyz", &[]),
            )
        })
        .await?;
        let plain = plain?;
        assert_eq!(plain.status, 200);
        assert!(plain
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"));
        assert!(plain.body.contains("demo_events_total 3"));
        let om = om?;
        assert!(om
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"));
        assert!(om.body.ends_with("# EOF\n"));
        assert_eq!(health?.status, 200);
        let not_ready = not_ready?;
        assert_eq!(not_ready.status, 503);
        assert!(not_ready.body.contains("first list not done"));
        ready.store(true, Ordering::Relaxed);
        let now_ready =
            tokio::task::spawn_blocking(move || http_get(addr, "/readyz", &[])).await??;
        assert_eq!(now_ready.status, 200);
        let _ = tx.send(());
        server.await??;
        Ok(())
    }

    #[tokio::test]
    async fn bad_bind_address_is_a_clear_error() {
        let taken = bind(([127, 0, 0, 1], 0).into()).await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.expect_err("port in use");
        assert!(err.to_string().contains(&addr.to_string()));
    }
}
