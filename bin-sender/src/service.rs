//! Runs the sender: the link sender (spool + QUIC), the chosen source, the
//! operations endpoint (status page, `/metrics`, probes), certificate and
//! web-config reloads on SIGHUP, and a graceful stop on SIGTERM/SIGINT
//! (stop the source, flush its records to the spool, send what the
//! deadline allows, exit 0).

use std::sync::Arc;

use anyhow::{Context, Result};
use telemetry_link::{Sender, SenderConfig, SpoolConfig};
use telemetry_runtime::{
    http::Endpoint,
    signals::{Request, Signals},
};
use telemetry_schema::ClusterRecord;
use telemetry_sources::{SimulatedCluster, SimulatedClusterConfig, SyntheticSource};
use tokio::{
    sync::watch,
    task::{JoinError, JoinHandle},
};
use tracing::{error, info, warn};

use crate::{
    config::{Settings, SourceKind},
    sink::LinkSink,
    status::SenderExporter,
};

/// The link sender's settings.
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
    cfg.replica = settings.link_replica().to_owned();
    cfg.linger = settings.linger;
    cfg.spool = SpoolConfig {
        max_bytes: settings.spool_max_bytes,
        fsync: settings.fsync,
        ..SpoolConfig::default()
    };
    cfg
}

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
        let registry = registry.clone();
        tokio::spawn(async move {
            run_source(settings, sender, source_stopped, ready_tx, registry).await
        })
    };

    let exporter = Arc::new(SenderExporter::new(
        registry.clone(),
        sender.clone(),
        ready_rx,
        settings.clone(),
    ));
    let endpoint = Endpoint::start(&settings.endpoint, exporter, &registry).await?;
    info!(source = ?settings.source, receivers = ?settings.receivers, status = %endpoint.url("/"), metrics = %endpoint.url("/metrics"), "telemetry sender running");

    let source_result = serve_signals(
        &mut signals,
        &settings,
        &sender,
        &endpoint,
        stop_source,
        source_task,
    )
    .await;
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
    endpoint.shutdown().await;
    outcome
}

/// Answers signals until SIGTERM/SIGINT (then stops the source and waits
/// for it) or until the source ends by itself; returns how it ended.
async fn serve_signals(
    signals: &mut Signals,
    settings: &Settings,
    sender: &Sender<ClusterRecord>,
    endpoint: &Endpoint,
    stop_source: watch::Sender<bool>,
    mut source_task: JoinHandle<Result<()>>,
) -> Result<Result<()>, JoinError> {
    loop {
        tokio::select! {
            req = signals.next() => match req {
                Request::Reload => {
                    match sender.reload_tls() {
                        Ok(()) => info!("SIGHUP: certificates re-read"),
                        Err(e) => warn!(error = %e, "SIGHUP: certificate reload failed; keeping the current ones"),
                    }
                    endpoint.reload_web_config();
                }
                Request::Rebind => rebind(settings, sender),
                Request::Stop => {
                    info!("stopping: flushing the source to the spool");
                    let _ = stop_source.send(true);
                    return (&mut source_task).await;
                }
            },
            res = &mut source_task => return res,
        }
    }
}

/// SIGUSR1: a fresh UDP port (same address family and IP as now); the
/// session migrates to it.
fn rebind(settings: &Settings, sender: &Sender<ClusterRecord>) {
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

async fn run_source(
    settings: Settings,
    sender: Sender<ClusterRecord>,
    mut stop: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    registry: prometheus::Registry,
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
            crate::kube_source::run(&settings, &sink, stop.clone(), ready, &registry).await?;
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
                tick: settings.synthetic_tick,
                first_value: sender.stats().last_seq + 1,
                last_value: settings.synthetic_total,
            };
            let last = source
                .run(&sink, stopped)
                .await
                .context("synthetic source")?;
            info!(last_value = last, "synthetic source finished producing");
            if settings.synthetic_total.is_some_and(|total| last >= total) {
                // The total is reached: nothing will fill the last batch,
                // so it leaves now rather than after the linger.
                tokio::select! {
                    _ = sender.flush() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            // Keep delivering until asked to stop.
            let _ = stop.wait_for(|s| *s).await;
        }
    }
    Ok(())
}
