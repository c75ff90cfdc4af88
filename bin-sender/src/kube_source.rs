//! `--source kube`: the Kubernetes source on the link sink, with leader
//! election when `--leader-elect` is set.
//!
//! Order of a stop: the source first (it flushes what its term observed
//! into the spool), then the election (the leader releases the Lease, so a
//! standby takes over at its next retry instead of after the lease
//! duration). An election that fails (only RBAC on the Lease does) stops
//! the source the same way and ends the sender with its error.

use anyhow::{Context, Result};
use prometheus::Registry;
use telemetry_sources::kube::{client_from, KubeSource, KubeSourceConfig};
use tokio::sync::watch;

use crate::{config::Settings, election::Election, sink::LinkSink};

/// Runs the source until `stop` turns true or something fails; `ready`
/// turns true once the source's first full lists are in.
pub(crate) async fn run(
    settings: &Settings,
    sink: &LinkSink,
    mut stop: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    registry: &Registry,
) -> Result<()> {
    let client = client_from(settings.kubeconfig.clone(), settings.context.clone())
        .await
        .context("connecting to the Kubernetes API")?;
    let mut cfg = KubeSourceConfig::new(settings.spool_dir.join("kube-source-state"));
    cfg.namespaces = settings.namespaces.clone();
    cfg.label_selector = settings.label_selector.clone();
    cfg.metrics_interval = settings.metrics_interval;
    let mut source = KubeSource::new(cfg);
    let mut election = match &settings.leader {
        Some(leader) => Some(Election::start(leader, client.clone(), registry)?),
        None => None,
    };
    if let Some(election) = &election {
        source = source.with_leadership(election.leadership());
    }
    let mut source_ready = source.ready();
    let forward = tokio::spawn(async move {
        if source_ready.wait_for(|r| *r).await.is_ok() {
            let _ = ready.send(true);
        }
    });
    let (stop_source, source_stopped) = watch::channel(false);
    let running = source.run(client, sink, source_stopped);
    tokio::pin!(running);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let failed = async {
        match &mut election {
            Some(election) => election.failed().await,
            None => std::future::pending().await,
        }
    };
    let (result, election_error) = tokio::select! {
        res = &mut running => (res, None),
        () = stopped => {
            stop_source.send_replace(true);
            (running.await, None)
        }
        error = failed => {
            stop_source.send_replace(true);
            (running.await, Some(error))
        }
    };
    forward.abort();
    if let Some(election) = election {
        election.stop().await;
    }
    if let Some(error) = election_error {
        return Err(error);
    }
    result.context("Kubernetes source")
}
