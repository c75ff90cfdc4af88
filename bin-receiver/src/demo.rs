//! The one-command demo: certificates made at start in a temporary
//! directory, and an in-process sender streaming a simulated cluster to this
//! receiver over real QUIC and mutual TLS. The sender's own metrics are
//! registered in the receiver's registry, so one endpoint shows both ends.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result};
use telemetry_certs::{files, Authority, Validity};
use telemetry_link::{Sender, SenderConfig, TlsFiles};
use telemetry_schema::ClusterRecord;
use telemetry_sources::{SimulatedCluster, SimulatedClusterConfig};
use tokio::{sync::watch, task::JoinHandle};

/// Identity of the demo's embedded sender (its `cluster` label).
pub const DEMO_CLUSTER: &str = "demo";

/// Files of the demo's PKI.
#[derive(Debug)]
pub struct DemoPki {
    /// Receiver side.
    pub receiver: TlsFiles,
    /// Embedded sender side.
    pub sender: TlsFiles,
}

/// Makes a CA, a receiver certificate for localhost/127.0.0.1 (and the
/// listen address, if specific) and the demo sender's certificate in `dir`.
pub fn make_pki(dir: &Path, listen: SocketAddr) -> Result<DemoPki> {
    let ca = Authority::generate("telemetry demo CA", Validity::days(30))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let receiver = ca.issue_receiver(&names, Validity::days(30))?;
    let sender = ca.issue_sender(DEMO_CLUSTER, Validity::days(30))?;
    files::write_file(&dir.join(files::CA_CERT), ca.cert_pem(), 0o644)?;
    files::write_pair(
        &dir.join(files::RECEIVER_CERT),
        &dir.join(files::RECEIVER_KEY),
        &receiver,
    )?;
    let (sc, sk) = (
        dir.join(files::sender_cert(DEMO_CLUSTER)),
        dir.join(files::sender_key(DEMO_CLUSTER)),
    );
    files::write_pair(&sc, &sk, &sender)?;
    Ok(DemoPki {
        receiver: TlsFiles::new(
            dir.join(files::CA_CERT),
            dir.join(files::RECEIVER_CERT),
            dir.join(files::RECEIVER_KEY),
        ),
        sender: TlsFiles::new(dir.join(files::CA_CERT), sc, sk),
    })
}

/// The running embedded sender.
#[derive(Debug)]
pub struct DemoSender {
    sender: Sender<ClusterRecord>,
    stop: watch::Sender<bool>,
    source: JoinHandle<()>,
}

/// Where the embedded sender dials: the receiver's port on loopback unless
/// the receiver listens on one specific address.
pub fn dial_address(listen: SocketAddr, bound: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        let ip: std::net::IpAddr = if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

/// Starts the embedded sender and the simulated cluster.
pub async fn start_sender(
    pki: &DemoPki,
    target: SocketAddr,
    spool_dir: &Path,
    registry: &prometheus::Registry,
) -> Result<DemoSender> {
    let mut cfg = SenderConfig::new(vec![target.to_string()], pki.sender.clone(), spool_dir);
    cfg.server_name = Some("localhost".into());
    // One machine, a few records a second: every change shows at once.
    cfg.linger = std::time::Duration::ZERO;
    let (sender, _) = Sender::<ClusterRecord>::start(cfg, registry)
        .await
        .context("starting the demo's embedded sender")?;
    let sim =
        SimulatedCluster::new(SimulatedClusterConfig::default()).context("simulated cluster")?;
    let (stop, mut stopped) = watch::channel(false);
    let sink = sender.clone();
    let source = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = sim.run(&sink, shutdown).await {
            tracing::error!(error = %e, "simulated cluster stopped");
        }
    });
    Ok(DemoSender {
        sender,
        stop,
        source,
    })
}

impl DemoSender {
    /// Stops the simulation and drains the embedded sender.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.source.await;
        self.sender.shutdown(Duration::from_secs(5)).await;
    }
}
