//! `--leader-elect`: this replica's part in the Lease election, its
//! gauges, and the Lease namespace's default.
//!
//! What it owns: the [`LeaderElector`] task (started with the Kubernetes
//! client, stopped after the source, so a graceful stop releases the
//! Lease once everything of the term is spooled), the gauges
//! `telemetry_sender_leader` (1 while this replica leads) and
//! `telemetry_sender_leader_epoch` (the epoch of its current or last term;
//! 0 before the first), and the choice of namespace: `--lease-namespace`,
//! else the pod's namespace from the service-account mount, else the
//! kubeconfig context's namespace, else `default`. The elector logs every
//! change of leadership, naming the holder.

use std::path::Path;

use anyhow::{Context, Result};
use prometheus::{IntGauge, Registry};
use telemetry_sources::kube::{LeaderElectionError, LeaderElector, Leadership};
use tokio::{sync::watch, task::JoinHandle};
use tracing::info;

use crate::config::LeaderSettings;

/// Where Kubernetes mounts the pod's namespace.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The Lease's namespace (see the module documentation).
pub(crate) fn lease_namespace(given: Option<&str>, mount: &Path, client: &kube::Client) -> String {
    if let Some(ns) = given {
        return ns.to_owned();
    }
    std::fs::read_to_string(mount)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

/// A running election.
#[derive(Debug)]
pub(crate) struct Election {
    leadership: watch::Receiver<Leadership>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), LeaderElectionError>>,
    gauges: JoinHandle<()>,
}

impl Election {
    /// Starts competing for the Lease through `client`; registers the
    /// gauges on `registry`.
    pub(crate) fn start(
        settings: &LeaderSettings,
        client: kube::Client,
        registry: &Registry,
    ) -> Result<Self> {
        let namespace = lease_namespace(
            settings.lease_namespace.as_deref(),
            Path::new(POD_NAMESPACE_FILE),
            &client,
        );
        let config = settings.election(&namespace);
        info!(
            lease = %format!("{namespace}/{}", config.lease_name),
            replica = %config.identity,
            lease_duration = ?config.lease_duration,
            renew_deadline = ?config.renew_deadline,
            retry_period = ?config.retry_period,
            "leader election: standing by until this replica holds the Lease"
        );
        let elector = LeaderElector::new(client, config).context("--leader-elect")?;
        let leadership = elector.leadership();
        let gauges = tokio::spawn(follow_gauges(register(registry)?, elector.leadership()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(elector.run(stopped));
        Ok(Self {
            leadership,
            stop,
            task,
            gauges,
        })
    }

    /// This replica's leadership.
    pub(crate) fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Resolves when the elector ends on its own, which only a `403` makes
    /// it do.
    pub(crate) async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.task).await {
            Ok(Err(e)) => anyhow::Error::new(e).context("leader election"),
            Ok(Ok(())) => anyhow::anyhow!("leader election ended"),
            Err(e) => anyhow::anyhow!("leader election task failed: {e}"),
        }
    }

    /// Steps down and releases the Lease (if this replica holds it).
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        if !self.task.is_finished() {
            match self.task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "leader election ended with an error"),
                Err(error) => tracing::warn!(%error, "leader election task failed"),
            }
        }
        self.gauges.abort();
    }
}

/// `telemetry_sender_leader` and `telemetry_sender_leader_epoch`.
fn register(registry: &Registry) -> Result<(IntGauge, IntGauge)> {
    let leader = IntGauge::new(
        "telemetry_sender_leader",
        "1 while this sender replica holds the Lease and ships, 0 while it stands by.",
    )?;
    let epoch = IntGauge::new(
        "telemetry_sender_leader_epoch",
        "Leadership epoch of this replica's current or last term (0 before the first).",
    )?;
    registry.register(Box::new(leader.clone()))?;
    registry.register(Box::new(epoch.clone()))?;
    Ok((leader, epoch))
}

async fn follow_gauges(
    (leader, epoch): (IntGauge, IntGauge),
    mut leadership: watch::Receiver<Leadership>,
) {
    loop {
        let current = leadership.borrow_and_update().epoch();
        match current {
            Some(e) => {
                leader.set(1);
                epoch.set(i64::try_from(e).unwrap_or(i64::MAX));
            }
            None => leader.set(0),
        }
        if leadership.changed().await.is_err() {
            leader.set(0);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_namespace_comes_from_the_flag_then_the_mount_then_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        config.default_namespace = "from-context".into();
        let client = kube::Client::try_from(config).unwrap();
        let mount = dir.path().join("namespace");
        assert_eq!(lease_namespace(None, &mount, &client), "from-context");
        std::fs::write(&mount, "telemetry\n").unwrap();
        assert_eq!(lease_namespace(None, &mount, &client), "telemetry");
        assert_eq!(lease_namespace(Some("given"), &mount, &client), "given");
    }

    #[tokio::test]
    async fn the_gauges_follow_the_leadership() {
        let registry = Registry::new();
        let gauges = register(&registry).unwrap();
        let (tx, rx) = watch::channel(Leadership::Standby { holder: None });
        let task = tokio::spawn(follow_gauges(gauges.clone(), rx));
        let value = |name: &str| {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
        };
        tx.send_replace(Leadership::Leader {
            epoch: 7,
            since: std::time::Instant::now(),
        });
        for _ in 0..100 {
            if value("telemetry_sender_leader") == Some(1.0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(value("telemetry_sender_leader"), Some(1.0));
        assert_eq!(value("telemetry_sender_leader_epoch"), Some(7.0));
        drop(tx);
        task.await.unwrap();
        assert_eq!(value("telemetry_sender_leader"), Some(0.0));
        assert_eq!(value("telemetry_sender_leader_epoch"), Some(7.0));
    }
}
