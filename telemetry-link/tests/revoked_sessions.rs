//! Revocation reaches open sessions, over real QUIC on loopback: a sender
//! connected and sending has its session closed within a second of the
//! reload that brings a CRL listing it (`Receiver::reload_tls`, as on
//! SIGHUP, or the receiver's own poll of the files), with the reason
//! "certificate revoked", counted in `telemetry_link_sessions_revoked_total`;
//! its reconnect is refused at the handshake (`revoked`); another sender
//! streams on undisturbed.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use telemetry_link::{metrics::HANDSHAKE_FAILURE_REASONS, tls::TlsFiles, Sender, SenderConfig};
use telemetry_test_support::{
    link::{eventually, exported, metric, start_receiver, Collector},
    pki::TestPki,
};

const HS: &str = "telemetry_link_handshake_failures_total";
const REVOKED: &str = "telemetry_link_sessions_revoked_total";

async fn sender(
    files: TlsFiles,
    addr: std::net::SocketAddr,
    spool: &Path,
) -> anyhow::Result<(Sender<u64>, prometheus::Registry)> {
    let registry = prometheus::Registry::new();
    let mut cfg = SenderConfig::new(vec![addr.to_string()], files, spool);
    cfg.server_name = Some("localhost".into());
    let (s, _) = Sender::<u64>::start(cfg, &registry).await?;
    Ok((s, registry))
}

/// Runs the scenario; `poll`: the receiver finds the new CRL itself,
/// else `reload_tls` is called.
async fn revoking_closes_the_open_session(poll: bool) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let tls = pki.receiver_with_crl()?;
    let poll_every = Duration::from_millis(200);
    let (receiver, reg) = start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
        c.tls = tls;
        c.tls_reload_interval = poll.then_some(poll_every);
    })
    .await?;
    for reason in HANDSHAKE_FAILURE_REASONS {
        assert!(
            exported(&reg, HS, &[("reason", reason)]),
            "{reason} not exported"
        );
    }
    assert!(exported(&reg, REVOKED, &[]));
    let addr = receiver.local_addr();
    let gone_files = pki.sender("gone")?;
    let (spool_a, spool_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (gone, _) = sender(gone_files.clone(), addr, spool_a.path()).await?;
    let (kept, kept_reg) = sender(pki.sender("kept")?, addr, spool_b.path()).await?;
    for n in 1..=5 {
        gone.send(&n).await?;
        kept.send(&n).await?;
    }
    collector
        .wait_for("gone", 5, Duration::from_secs(20))
        .await?;
    collector
        .wait_for("kept", 5, Duration::from_secs(20))
        .await?;

    pki.revoke(&gone_files)?;
    let revoked_at = Instant::now();
    if !poll {
        receiver.reload_tls()?;
    }
    let mut status = gone.status();
    let closed = tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| !s.connected))
        .await??
        .clone();
    let took = revoked_at.elapsed();
    let limit = Duration::from_secs(1) + if poll { poll_every } else { Duration::ZERO };
    assert!(took < limit, "session closed {took:?} after the revocation");
    assert_eq!(metric(&reg, REVOKED, &[]), 1.0);
    println!("revoked session closed {took:?} after the CRL changed (poll: {poll}); sender saw: {closed:?}");

    // The reconnect is refused at the handshake, and says why.
    eventually(
        Duration::from_secs(15),
        "the reconnect refused as revoked",
        || metric(&reg, HS, &[("reason", "revoked")]) >= 1.0,
    )
    .await?;
    let st = gone.status().borrow().clone();
    assert!(!st.connected);
    let why = st.last_error.unwrap_or_default();
    assert!(
        why.contains("certificate revoked") || why.contains("Revoked"),
        "{why}"
    );

    // The other sender never noticed.
    for n in 6..=10 {
        kept.send(&n).await?;
    }
    collector
        .wait_for("kept", 10, Duration::from_secs(20))
        .await?;
    assert_eq!(
        metric(&kept_reg, "telemetry_sender_reconnects_total", &[]),
        0.0
    );
    assert_eq!(metric(&kept_reg, "telemetry_sender_connected", &[]), 1.0);
    assert_eq!(metric(&reg, REVOKED, &[]), 1.0);

    gone.shutdown(Duration::from_millis(100)).await;
    kept.shutdown(Duration::from_secs(2)).await;
    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_tls_closes_the_session_of_a_newly_revoked_sender() -> anyhow::Result<()> {
    revoking_closes_the_open_session(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_own_poll_closes_the_session_of_a_newly_revoked_sender() -> anyhow::Result<()>
{
    revoking_closes_the_open_session(true).await
}
