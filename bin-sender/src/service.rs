//! Runs the sender: the link sender (spool + QUIC), the chosen source, the
//! operations endpoint, certificate reloads on SIGHUP, and a graceful stop
//! on SIGTERM/SIGINT (stop the source, flush its records to the spool, send
//! what the deadline allows, exit 0).

use std::sync::Arc;

use anyhow::{Context, Result};
use telemetry_link::{Sender, SenderConfig, SpoolConfig};
use telemetry_runtime::{
    http::{self, RegistryExporter},
    signals::{Request, Signals},
};
use telemetry_schema::ClusterRecord;
use telemetry_sources::{SimulatedCluster, SimulatedClusterConfig, SyntheticSource};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use telemetry_sources::kube::{client_from, KubeSource, KubeSourceConfig};

use crate::{
    config::{Settings, SourceKind},
    sink::LinkSink,
};

/// Runs until SIGTERM/SIGINT (or until the source fails).
pub async fn run(settings: Settings) -> Result<()> {
    let mut signals = Signals::install().context("installing signal handlers")?;
    let registry = prometheus::Registry::new();
    let (sender, recovery) = Sender::<ClusterRecord>::start(link_config(&settings), &registry)
        .await
        .context("starting the link sender")?;
    if !recovery.is_clean() {
        warn!(?recovery, "the spool was repaired after an unclean stop");
    }

    let (stop_source, source_stopped) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let source_task = {
        let sender = sender.clone();
        let settings = settings.clone();
        tokio::spawn(async move { run_source(settings, sender, source_stopped, ready_tx).await })
    };

    let listener = http::bind(settings.metrics_listen).await?;
    let exporter = Arc::new(RegistryExporter::new(registry.clone(), move || {
        if *ready_rx.borrow() {
            Ok(())
        } else {
            Err("waiting for the source's first full listing".into())
        }
    }));
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(listener, exporter, async {
        let _ = http_stopped.await;
    }));
    info!(source = ?settings.source, receivers = ?settings.receivers, metrics = %settings.metrics_listen, "telemetry sender running");

    let mut source_task = source_task;
    let source_result = loop {
        tokio::select! {
            req = signals.next() => match req {
                Request::Reload => match sender.reload_tls() {
                    Ok(()) => info!("SIGHUP: certificates re-read"),
                    Err(e) => warn!(error = %e, "SIGHUP: certificate reload failed; keeping the current ones"),
                },
                Request::Rebind => {
                    // Same address family and IP as now, a fresh port.
                    let addr = match (settings.bind, sender.local_addr()) {
                        (Some(b), _) => b,
                        (None, Ok(cur)) => std::net::SocketAddr::new(cur.ip(), 0),
                        (None, Err(_)) => std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
                    };
                    match sender.rebind(addr) {
                        Ok(()) => info!(%addr, "SIGUSR1: UDP socket rebound; the session migrates to it"),
                        Err(e) => warn!(%addr, error = %e, "SIGUSR1: rebind failed"),
                    }
                }
                Request::Stop => {
                    info!("stopping: flushing the source to the spool");
                    let _ = stop_source.send(true);
                    break (&mut source_task).await;
                }
            },
            res = &mut source_task => break res,
        }
    };
    let outcome = match source_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            error!("{e:#}");
            Err(e)
        }
        Err(e) => Err(anyhow::anyhow!("source task failed: {e}")),
    };
    let report = sender.shutdown(settings.shutdown_timeout).await;
    info!(
        drained = report.drained,
        left_in_spool = report.unacked,
        "link stopped"
    );
    let _ = stop_http.send(());
    if let Ok(Err(e)) = http_task.await {
        error!(error = %e, "metrics endpoint failed");
    }
    outcome
}

/// The link sender's settings from the sender's.
fn link_config(settings: &Settings) -> SenderConfig {
    let mut cfg = SenderConfig::new(
        settings.receivers.clone(),
        settings.tls.clone(),
        &settings.spool_dir,
    );
    cfg.server_name = settings.server_name.clone();
    cfg.bind = settings.bind;
    cfg.failback_after = Some(settings.failback_after);
    cfg.connect_timeout = settings.connect_timeout;
    cfg.linger = settings.linger;
    cfg.spool = SpoolConfig {
        max_bytes: settings.spool_max_bytes,
        fsync: settings.fsync,
        ..SpoolConfig::default()
    };
    cfg
}

async fn run_source(
    settings: Settings,
    sender: Sender<ClusterRecord>,
    mut stop: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> Result<()> {
    let stopped = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let sink = LinkSink::new(sender.clone(), settings.present);
    match settings.source {
        SourceKind::Kube => {
            let client = client_from(settings.kubeconfig.clone(), settings.context.clone())
                .await
                .context("connecting to the Kubernetes API")?;
            let mut cfg = KubeSourceConfig::new(settings.spool_dir.join("kube-source-state"));
            cfg.namespaces = settings.namespaces.clone();
            cfg.label_selector = settings.label_selector.clone();
            cfg.metrics_interval = settings.metrics_interval;
            let source = KubeSource::new(cfg);
            let mut source_ready = source.ready();
            let forward = tokio::spawn(async move {
                if source_ready.wait_for(|r| *r).await.is_ok() {
                    let _ = ready.send(true);
                }
            });
            let res = source.run(client, &sink, stop.clone()).await;
            forward.abort();
            res.context("Kubernetes source")?;
        }
        SourceKind::Simulated => {
            let _ = ready.send(true);
            let sim = SimulatedCluster::new(SimulatedClusterConfig {
                seed: settings.simulated_seed,
                ..SimulatedClusterConfig::default()
            })
            .context("simulated cluster")?;
            sim.run(&sink, stopped).await.context("simulated source")?;
        }
        SourceKind::Synthetic => {
            let _ = ready.send(true);
            let source = SyntheticSource {
                series: settings.synthetic_series,
                rate: settings.synthetic_rate,
                first_value: sender.stats().last_seq + 1,
                last_value: settings.synthetic_total,
            };
            let last = source
                .run(&sink, stopped)
                .await
                .context("synthetic source")?;
            info!(last_value = last, "synthetic source finished producing");
            // Keep delivering until asked to stop.
            let _ = stop.wait_for(|s| *s).await;
        }
    }
    Ok(())
}
