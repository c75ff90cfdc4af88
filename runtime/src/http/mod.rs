//! The operations HTTP endpoint both binaries serve, as one service:
//!
//! * `GET /` — a status page for a person (HTML, [`Exporter::render_status`]);
//! * `GET /metrics` — Prometheus text format, or OpenMetrics when the
//!   scraper's `Accept` header prefers it;
//! * `GET /readyz` — 200 when the [`Exporter`] says it is ready, else 503
//!   with the reason;
//! * `GET /healthz` — 200 while the process runs.
//!
//! Protection comes from `--web-config-file`, in the format of Prometheus'
//! `--web.config.file` ([`webconfig`]): TLS with optional client
//! certificates, basic authentication (bcrypt), extra response headers. It
//! applies to every path but `/healthz` (liveness probes usually cannot
//! authenticate, and it reveals nothing). The file and the files it names
//! are re-read when they change (polled every [`Limits::web_config_poll`])
//! or on [`Endpoint::reload_web_config`]; a broken new file keeps the
//! previous config in force.
//!
//! Resources are bounded so that a careless or hostile client cannot hurt
//! the link: a connection cap (tied to the open-file limit), a header read
//! timeout that is also the idle keep-alive timeout, a write timeout for
//! clients that stop reading, small request heads, and pages rendered once
//! and shared by every request within [`Limits::snapshot_max_age`] while the
//! exporter's state is unchanged, with the exporter's locks held only while
//! rendering into a buffer, never while writing to a socket. Layout:
//! [`webconfig`] parses the file, `active` follows it, `tls` and `auth`
//! implement it, `snapshot` shares pages, `io` times out writes, `server`
//! accepts and serves connections, `routes` answers requests, `metrics`
//! counts what the endpoint refused.

mod active;
mod auth;
mod io;
mod metrics;
mod routes;
mod server;
mod snapshot;
mod tls;
pub mod webconfig;

#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{info, warn};

use self::{
    active::{Reload, WebConfigState},
    metrics::EndpointMetrics,
    server::Shared,
    snapshot::Snapshots,
    webconfig::WebConfigError,
};
use crate::{exposition::Format, html::Page};

/// What the endpoint serves.
pub trait Exporter: Send + Sync + 'static {
    /// Writes a complete scrape page in `format` into `out` (cleared first).
    fn render(&self, format: Format, out: &mut String);

    /// Writes the status page (a whole HTML document) into `out`.
    fn render_status(&self, out: &mut String) {
        let mut page = Page::begin(out, "telemetry", "operations endpoint", None);
        page.footer(
            "telemetry",
            &[("/metrics", "metrics"), ("/readyz", "readiness")],
        );
        page.end();
    }

    /// `Ok` when ready to serve its purpose, `Err(reason)` otherwise.
    fn ready(&self) -> Result<(), String>;

    /// A number that changes whenever the state behind the pages changes,
    /// or `None` (the default) if the exporter cannot tell. With a
    /// revision, a shared page is rendered again as soon as the state
    /// changed (see [`Limits::snapshot_max_age`]); without one, a page is
    /// shared for its whole age.
    fn revision(&self) -> Option<u64> {
        None
    }
}

impl std::fmt::Debug for dyn Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// The endpoint's resource bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for the TLS handshake and a complete request head, and the
    /// longest a kept-alive connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// Longest a response may wait for the client to read anything.
    pub write_timeout: Duration,
    /// Connections open at once (further ones are closed at once); lowered
    /// to a quarter of the open-file limit.
    pub max_connections: usize,
    /// How long a rendered page is served to later requests at most; for
    /// an [`Exporter`] with a [`revision`](Exporter::revision), only while
    /// the revision stays the same (or within ten times the page's render
    /// time, which bounds rendering to about a tenth of a core per page
    /// kind).
    pub snapshot_max_age: Duration,
    /// How often the web config's files are checked for changes.
    pub web_config_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
            snapshot_max_age: Duration::from_secs(1),
            web_config_poll: Duration::from_secs(5),
        }
    }
}

/// Where and how the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSettings {
    /// TCP address.
    pub listen: SocketAddr,
    /// The web config file (TLS, basic auth, headers), if any.
    pub web_config_file: Option<PathBuf>,
    /// Resource bounds.
    pub limits: Limits,
}

impl EndpointSettings {
    /// Listens on `listen` with the default limits and no web config.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            web_config_file: None,
            limits: Limits::default(),
        }
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

/// Why the endpoint did not start.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// The address cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The web config file is unusable.
    #[error("web config file {path}: {source}")]
    WebConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: WebConfigError,
    },
    /// The endpoint's metrics could not be registered.
    #[error("registering the endpoint's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Binds the endpoint's TCP listener (separately from serving, so that a
/// bad address is a startup error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    poller: JoinHandle<()>,
}

impl Endpoint {
    /// Loads the web config, binds, registers the endpoint's metrics in
    /// `registry`, logs what it serves and how it is protected, and serves
    /// `exporter` until [`Endpoint::shutdown`].
    pub async fn start(
        settings: &EndpointSettings,
        exporter: Arc<dyn Exporter>,
        registry: &prometheus::Registry,
    ) -> Result<Self, EndpointError> {
        let metrics = EndpointMetrics::register(registry)?;
        let web = WebConfigState::load(settings.web_config_file.as_deref(), metrics.clone())
            .map_err(|source| EndpointError::WebConfig {
                path: settings.web_config_file.clone().unwrap_or_default(),
                source,
            })?;
        let listener = bind(settings.listen).await?;
        let local_addr = listener.local_addr().map_err(|source| BindError {
            addr: settings.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            exporter,
            web,
            snapshots: Snapshots::new(settings.limits.snapshot_max_age),
            metrics,
            limits: settings.limits,
            max_connections: server::connection_cap(settings.limits.max_connections),
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::run(listener, shared.clone(), stopped.clone()));
        let poller = tokio::spawn(poll_web_config(shared.clone(), stopped));
        let endpoint = Self {
            local_addr,
            shared,
            stop,
            server,
            poller,
        };
        endpoint.log_start();
        Ok(endpoint)
    }

    fn log_start(&self) {
        let active = self.shared.web.current();
        let protection = active.describe();
        let web_config = self
            .shared
            .web
            .path()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        info!(
            listen = %self.local_addr,
            url = %self.url("/"),
            %protection,
            web_config = %web_config,
            max_connections = self.shared.max_connections,
            "operations endpoint: status page /, /metrics, /readyz, /healthz"
        );
        if active.is_protected() {
            info!(
                "the web config protects every path but /healthz (left open for liveness probes)"
            );
        }
        if !self.local_addr.ip().is_loopback() {
            if !active.is_protected() {
                warn!(
                    listen = %self.local_addr,
                    "the operations endpoint listens beyond loopback without TLS or authentication: whoever reaches it reads every cluster's pod names, node names and addresses; set --web-config-file, or listen on 127.0.0.1"
                );
            } else if active.tls.is_none() {
                warn!(
                    listen = %self.local_addr,
                    "the operations endpoint checks passwords without TLS beyond loopback: credentials and pages travel in clear; add tls_server_config to the web config"
                );
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A URL of `path` on this endpoint for people (loopback for an
    /// unspecified address; `https` with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.shared.web.current().tls.is_some() {
            "https"
        } else {
            "http"
        };
        let addr = if self.local_addr.ip().is_unspecified() {
            let ip: std::net::IpAddr = if self.local_addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(ip, self.local_addr.port())
        } else {
            self.local_addr
        };
        format!("{scheme}://{addr}{path}")
    }

    /// How the endpoint is protected now, e.g. `TLS, basic auth`.
    pub fn protection(&self) -> String {
        self.shared.web.current().describe()
    }

    /// The web config file, if any.
    pub fn web_config_file(&self) -> Option<&Path> {
        self.shared.web.path()
    }

    /// Re-reads the web config file now (SIGHUP); logs the outcome.
    pub fn reload_web_config(&self) {
        log_reload(&self.shared, self.shared.web.poll(true));
    }

    /// Stops accepting, lets open connections finish their response
    /// (briefly), and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.poller.abort();
    }
}

fn log_reload(shared: &Shared, outcome: Reload) {
    match outcome {
        Reload::Unchanged => {}
        Reload::Reloaded => info!(
            protection = %shared.web.current().describe(),
            "web config reloaded"
        ),
        Reload::Failed(e) => warn!(
            error = %e,
            "web config reload failed; the previous config stays in force"
        ),
    }
}

async fn poll_web_config(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if shared.web.path().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(shared.limits.web_config_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let polled = shared.clone();
        match tokio::task::spawn_blocking(move || polled.web.poll(false)).await {
            Ok(outcome) => log_reload(&shared, outcome),
            Err(e) => warn!(error = %e, "checking the web config file failed"),
        }
    }
}
