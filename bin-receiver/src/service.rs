//! Runs the receiver: the QUIC link receiver feeding the store, the
//! operations endpoint (status page, `/metrics`, probes), certificate and
//! web-config reloads on SIGHUP, and a graceful stop on SIGTERM/SIGINT
//! (stop accepting, finish applying in-flight batches, persist state,
//! exit 0).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use telemetry_link::{net::ReadyHandle, Receiver, ReceiverConfig, TlsFiles};
use telemetry_runtime::{
    exposition::Format,
    http::{Endpoint, Exporter},
    signals::{Request, Signals},
    status::{certificate_not_after, unix_now},
};
use telemetry_schema::ClusterRecord;
use tempfile::TempDir;
use tracing::{info, warn};

use crate::{
    config::Settings,
    demo::{self, DemoPki, DemoSender},
    handler::{lock, SharedStore, StoreHandler},
    remote_write::{RemoteWrite, RemoteWriteConfig},
    status::ReceiverStatus,
    store::{ClusterStore, StoreConfig},
};

/// What the receiver's endpoint serves: `/metrics` from the store and the
/// registry, `/readyz` from the link, `/` from both and a few facts.
struct ReceiverExporter {
    store: SharedStore,
    registry: prometheus::Registry,
    ready: ReadyHandle,
    started: Instant,
    quic: std::net::SocketAddr,
    certificate: PathBuf,
    remote_write: Option<Arc<RemoteWrite>>,
}

impl Exporter for ReceiverExporter {
    fn render(&self, format: Format, out: &mut String) {
        let families = self.registry.gather();
        lock(&self.store).scrape(Instant::now(), format, &families, out);
    }

    fn render_status(&self, out: &mut String) {
        let families = self.registry.gather();
        let now = Instant::now();
        let links = {
            let mut store = lock(&self.store);
            store.expire(now);
            store.sender_links(now)
        };
        ReceiverStatus {
            version: env!("CARGO_PKG_VERSION"),
            uptime: self.started.elapsed(),
            quic: self.quic,
            certificate_not_after: certificate_not_after(&self.certificate).ok(),
            ready: self.ready.check(),
            links,
            families: &families,
            remote_write: self
                .remote_write
                .as_ref()
                .map(|rw| rw.last_errors())
                .unwrap_or_default(),
            now_unix: unix_now(),
        }
        .render(out);
    }

    fn ready(&self) -> Result<(), String> {
        self.ready.check()
    }

    fn revision(&self) -> Option<u64> {
        Some(lock(&self.store).revision())
    }
}

/// The receiver's files: given by flags, or made at start for `--demo`.
struct Files {
    tls: TlsFiles,
    state_dir: PathBuf,
    /// The demo's certificates (in `demo_dir`).
    demo_pki: Option<DemoPki>,
    /// Kept for the process's life; removed on drop.
    demo_dir: Option<TempDir>,
}

impl Files {
    fn resolve(settings: &Settings) -> Result<Self> {
        let demo_dir = if settings.demo {
            Some(
                tempfile::Builder::new()
                    .prefix("telemetry-demo-")
                    .tempdir()
                    .context("demo temp dir")?,
            )
        } else {
            None
        };
        let demo_pki = match &demo_dir {
            Some(d) => Some(
                demo::make_pki(d.path(), settings.listen).context("making demo certificates")?,
            ),
            None => None,
        };
        let tls = match (&settings.tls, &demo_pki) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => p.receiver.clone(),
            (None, None) => anyhow::bail!("no TLS files configured"),
        };
        let state_dir = match (&settings.state_dir, &demo_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d.path().join("state"),
            (None, None) => anyhow::bail!("no state directory configured"),
        };
        Ok(Self {
            tls,
            state_dir,
            demo_pki,
            demo_dir,
        })
    }
}

/// Starts remote write (if configured) and the link receiver.
async fn start_link(
    settings: &Settings,
    files: &Files,
    store: &SharedStore,
    registry: &prometheus::Registry,
) -> Result<(Receiver, Option<Arc<RemoteWrite>>)> {
    let mut cfg = ReceiverConfig::new(settings.listen, files.tls.clone(), &files.state_dir);
    cfg.allowed_senders = settings.allow_senders.clone();
    cfg.limits = settings.link_limits;
    // Private from the start, before anything creates a file in it.
    create_private_dir(&files.state_dir)?;
    let mut handler = StoreHandler::new(store.clone());
    let remote_write = if settings.remote_write.is_empty() {
        None
    } else {
        let queues = files.state_dir.join("remote-write");
        create_private_dir(&queues)?;
        let mut rw = RemoteWriteConfig::new(settings.remote_write.clone(), queues);
        rw.max_queue_bytes = settings.remote_write_queue_bytes;
        rw.headers = settings.remote_write_headers.clone();
        let rw = RemoteWrite::start(rw, registry).context("starting remote write")?;
        handler = handler.with_remote_write(rw.clone());
        Some(rw)
    };
    if let Some(path) = &settings.audit_log {
        handler = handler
            .with_audit_log(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
    }
    let receiver = Receiver::start::<ClusterRecord, _>(cfg, Arc::new(handler), registry)
        .await
        .context("starting the QUIC receiver")?;
    Ok((receiver, remote_write))
}

/// Creates `dir` and its missing parents, each 0700 (an existing one is
/// left as it is).
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> Result<()> {
    let mut signals = Signals::install().context("installing signal handlers")?;
    let started = Instant::now();
    let registry = prometheus::Registry::new();
    let store: SharedStore = Arc::new(Mutex::new(ClusterStore::new(StoreConfig {
        sender_ttl: settings.sender_ttl,
        limits: settings.budgets,
    })));
    let files = Files::resolve(&settings)?;
    let (receiver, remote_write) = start_link(&settings, &files, &store, &registry).await?;
    let exporter = Arc::new(ReceiverExporter {
        store: store.clone(),
        registry: registry.clone(),
        ready: receiver.ready_handle(),
        started,
        quic: receiver.local_addr(),
        certificate: files.tls.cert.clone(),
        remote_write: remote_write.clone(),
    });
    let endpoint = Endpoint::start(&settings.endpoint, exporter, &registry).await?;
    let demo_sender = match (&files.demo_pki, &files.demo_dir) {
        (Some(pki), Some(dir)) => {
            let target = demo::dial_address(settings.listen, receiver.local_addr());
            Some(demo::start_sender(pki, target, &dir.path().join("spool"), &registry).await?)
        }
        _ => None,
    };
    announce(&files, &receiver, &endpoint);
    wait_for_stop(&mut signals, &receiver, &endpoint).await;
    stop(demo_sender, receiver, remote_write, endpoint).await;
    Ok(())
}

fn announce(files: &Files, receiver: &Receiver, endpoint: &Endpoint) {
    let metrics = endpoint.url("/metrics");
    info!(quic = %receiver.local_addr(), metrics = %metrics, status = %endpoint.url("/"), "telemetry receiver ready");
    if let Some(d) = &files.demo_dir {
        println!(
            "demo: simulated cluster {:?} -> QUIC + mutual TLS -> this receiver (certificates in {})",
            demo::DEMO_CLUSTER,
            d.path().display()
        );
        println!(
            "demo: status page at {}   metrics at {metrics}   (Ctrl-C to stop)",
            endpoint.url("/")
        );
    }
}

async fn wait_for_stop(signals: &mut Signals, receiver: &Receiver, endpoint: &Endpoint) {
    loop {
        match signals.next().await {
            Request::Reload => {
                match receiver.reload_tls() {
                    Ok(()) => info!("SIGHUP: certificates re-read"),
                    Err(e) => {
                        warn!(error = %e, "SIGHUP: certificate reload failed; keeping the current ones")
                    }
                }
                endpoint.reload_web_config();
            }
            Request::Rebind => info!("SIGUSR1 ignored: the receiver's address is fixed"),
            Request::Stop => return,
        }
    }
}

async fn stop(
    demo_sender: Option<DemoSender>,
    receiver: Receiver,
    remote_write: Option<Arc<RemoteWrite>>,
    endpoint: Endpoint,
) {
    info!("stopping: finishing in-flight batches and persisting state");
    if let Some(d) = demo_sender {
        d.stop().await;
    }
    receiver.shutdown(Duration::from_secs(10)).await;
    if let Some(rw) = remote_write {
        rw.shutdown(Duration::from_secs(5)).await;
        info!(
            pending = rw.pending_samples(),
            "remote write stopped; pending samples stay queued"
        );
    }
    endpoint.shutdown().await;
    info!("stopped");
}
