//! Runs the receiver: the QUIC link receiver feeding the store, the
//! operations endpoint, certificate reloads on SIGHUP, and a graceful stop
//! on SIGTERM/SIGINT (stop accepting, finish applying in-flight batches,
//! persist state, exit 0).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use telemetry_link::{net::ReadyHandle, Receiver, ReceiverConfig};
use telemetry_runtime::{
    exposition::Format,
    http::{self, Exporter},
    signals::{Request, Signals},
};
use telemetry_schema::ClusterRecord;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::{
    config::Settings,
    demo,
    handler::{lock, SharedStore, StoreHandler},
    remote_write::{RemoteWrite, RemoteWriteConfig},
    store::{ClusterStore, StoreConfig},
};

/// `/metrics` and `/readyz` of the receiver.
struct ReceiverExporter {
    store: SharedStore,
    registry: prometheus::Registry,
    ready: ReadyHandle,
}

impl Exporter for ReceiverExporter {
    fn render(&self, format: Format, out: &mut String) {
        let families = self.registry.gather();
        lock(&self.store).scrape(Instant::now(), format, &families, out);
    }

    fn ready(&self) -> Result<(), String> {
        self.ready.check()
    }
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> Result<()> {
    let mut signals = Signals::install().context("installing signal handlers")?;
    let registry = prometheus::Registry::new();
    let store: SharedStore = Arc::new(Mutex::new(ClusterStore::new(StoreConfig::with_sender_ttl(
        settings.sender_ttl,
    ))));

    // Demo: certificates and state in a temporary directory.
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
        Some(d) => {
            Some(demo::make_pki(d.path(), settings.listen).context("making demo certificates")?)
        }
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

    let mut cfg = ReceiverConfig::new(settings.listen, tls, &state_dir);
    cfg.allowed_senders = settings.allow_senders.clone();
    let mut handler = StoreHandler::new(store.clone());
    let remote_write = if settings.remote_write.is_empty() {
        None
    } else {
        let mut rw = RemoteWriteConfig::new(
            settings.remote_write.clone(),
            state_dir.join("remote-write"),
        );
        rw.max_queue_bytes = settings.remote_write_queue_bytes;
        rw.headers = settings.remote_write_headers.clone();
        let rw = RemoteWrite::start(rw, &registry).context("starting remote write")?;
        handler = handler.with_remote_write(rw.clone());
        Some(rw)
    };
    if let Some(path) = &settings.audit_log {
        handler = handler
            .with_audit_log(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
    }
    let receiver = Receiver::start::<ClusterRecord, _>(cfg, Arc::new(handler), &registry)
        .await
        .context("starting the QUIC receiver")?;

    let listener = http::bind(settings.metrics_listen).await?;
    let metrics_addr = listener.local_addr().context("metrics address")?;
    let exporter = Arc::new(ReceiverExporter {
        store: store.clone(),
        registry: registry.clone(),
        ready: receiver.ready_handle(),
    });
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(listener, exporter, async {
        let _ = http_stopped.await;
    }));

    let demo_sender = match (&demo_pki, &demo_dir) {
        (Some(pki), Some(dir)) => {
            let target = demo::dial_address(settings.listen, receiver.local_addr());
            Some(demo::start_sender(pki, target, &dir.path().join("spool"), &registry).await?)
        }
        _ => None,
    };

    let shown = if metrics_addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}/metrics", metrics_addr.port())
    } else {
        format!("http://{metrics_addr}/metrics")
    };
    info!(quic = %receiver.local_addr(), metrics = %shown, "telemetry receiver ready");
    if let Some(d) = &demo_dir {
        println!(
            "demo: simulated cluster {:?} -> QUIC + mutual TLS -> this receiver (certificates in {})",
            demo::DEMO_CLUSTER,
            d.path().display()
        );
        println!("demo: metrics at {shown}   (Ctrl-C to stop)");
    }

    loop {
        match signals.next().await {
            Request::Reload => match receiver.reload_tls() {
                Ok(()) => info!("SIGHUP: certificates re-read"),
                Err(e) => {
                    warn!(error = %e, "SIGHUP: certificate reload failed; keeping the current ones")
                }
            },
            Request::Rebind => info!("SIGUSR1 ignored: the receiver's address is fixed"),
            Request::Stop => break,
        }
    }
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
    let _ = stop_http.send(());
    match http_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "metrics endpoint failed"),
        Err(e) => error!(error = %e, "metrics endpoint task failed"),
    }
    info!("stopped");
    Ok(())
}
