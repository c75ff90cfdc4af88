//! Revocation and certificate purposes over real QUIC on loopback: a
//! receiver with a CRL refuses a revoked sender at the handshake (counted
//! as `revoked`), also right after the CRL is updated and reloaded; client
//! certificates without clientAuth are refused (counted as `bad_eku`); a
//! sender refuses a receiver certificate without serverAuth, and a revoked
//! sender's link reports why it is refused.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use telemetry_certs::Purpose;
use telemetry_link::{proto::message::ALPN, tls::TlsFiles, Sender, SenderConfig};
use telemetry_test_support::{
    link::{eventually, metric, start_receiver, start_sender},
    pki::TestPki,
    raw,
};

const HS: &str = "telemetry_link_handshake_failures_total";

async fn wait_count(reg: &prometheus::Registry, reason: &str, n: f64) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(10),
        &format!("{HS}{{reason={reason}}} >= {n}"),
        || metric(reg, HS, &[("reason", reason)]) >= n,
    )
    .await
}

/// Whether a client presenting `files` gets (and keeps, for a second) a
/// connection to the receiver at `addr`.
async fn admitted(
    ep: &quinn::Endpoint,
    pki: &TestPki,
    files: &TlsFiles,
    addr: SocketAddr,
) -> anyhow::Result<bool> {
    let cfg = raw::client_config(&pki.ca_path(), Some(files))?;
    Ok(
        match raw::attempt(ep, cfg, addr, "localhost", Duration::from_secs(1)).await {
            Ok(conn) => {
                conn.close(0u32.into(), b"done");
                true
            }
            Err(_) => false,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sender_is_refused_at_the_handshake_and_counted() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let gone = pki.sender("gone")?;
    let kept = pki.sender("kept")?;
    pki.revoke(&gone)?;
    let state = tempfile::tempdir()?;
    let tls = pki.receiver_with_crl()?;
    let (receiver, reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), Arc::new(Discard), |c| c.tls = tls).await?;
    let addr = receiver.local_addr();
    let ep = raw::client_endpoint()?;

    assert!(
        !admitted(&ep, &pki, &gone, addr).await?,
        "revoked sender got in"
    );
    wait_count(&reg, "revoked", 1.0).await?;
    assert!(
        admitted(&ep, &pki, &kept, addr).await?,
        "other senders still get in"
    );
    assert_eq!(metric(&reg, HS, &[("reason", "revoked")]), 1.0);

    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_crl_refuses_the_next_handshake_of_a_newly_revoked_sender() -> anyhow::Result<()>
{
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let later = pki.sender("later")?;
    let kept = pki.sender("kept")?;
    let state = tempfile::tempdir()?;
    let tls = pki.receiver_with_crl()?;
    let (receiver, reg) = start_receiver::<u64, _>(&pki, 0, state.path(), Arc::new(Discard), |c| {
        c.tls = tls;
        c.tls_reload_interval = None; // only the explicit reload below
    })
    .await?;
    let addr = receiver.local_addr();
    let ep = raw::client_endpoint()?;
    assert!(admitted(&ep, &pki, &later, addr).await?);

    pki.revoke(&later)?;
    assert!(
        admitted(&ep, &pki, &later, addr).await?,
        "the CRL in use changes only on reload"
    );
    receiver.reload_tls()?;
    assert!(
        !admitted(&ep, &pki, &later, addr).await?,
        "revoked sender got in"
    );
    wait_count(&reg, "revoked", 1.0).await?;
    assert!(admitted(&ep, &pki, &kept, addr).await?);
    assert_eq!(
        metric(
            &reg,
            "telemetry_link_tls_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );

    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_without_client_auth_are_refused_as_bad_eku() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let (receiver, reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), Arc::new(Discard), |_| {}).await?;
    let addr = receiver.local_addr();
    let ep = raw::client_endpoint()?;

    let no_eku = pki.with_purposes("no-eku", &[])?;
    assert!(!admitted(&ep, &pki, &no_eku, addr).await?, "no EKU got in");
    wait_count(&reg, "bad_eku", 1.0).await?;
    let server_only = pki.with_purposes("server-only", &[Purpose::ServerAuth])?;
    assert!(
        !admitted(&ep, &pki, &server_only, addr).await?,
        "serverAuth-only got in"
    );
    wait_count(&reg, "bad_eku", 2.0).await?;
    let client = pki.with_purposes("client", &[Purpose::ClientAuth])?;
    assert!(
        admitted(&ep, &pki, &client, addr).await?,
        "clientAuth gets in"
    );

    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_refuses_a_receiver_certificate_without_server_auth() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    for (name, purposes) in [
        ("no EKU", &[][..]),
        ("clientAuth only", &[Purpose::ClientAuth][..]),
    ] {
        let server = RawServer::start(&pki.with_purposes("localhost", purposes)?)?;
        let spool = tempfile::tempdir()?;
        let (sender, _) = start_sender::<u64>(&pki, "s", &[server.addr], spool.path(), |c| {
            c.server_name = Some("localhost".into());
        })
        .await?;
        let mut status = sender.status();
        let st = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.last_error.is_some()),
        )
        .await??
        .clone();
        let msg = st.last_error.unwrap_or_default();
        assert!(
            msg.contains("extended key usage for server authentication"),
            "{name}: {msg}"
        );
        assert_eq!(server.established.load(Ordering::Relaxed), 0, "{name}");
        sender.shutdown(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_senders_link_reports_the_refusal() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let files = pki.sender("s")?;
    pki.revoke(&files)?;
    let state = tempfile::tempdir()?;
    let tls = pki.receiver_with_crl()?;
    let (receiver, reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), Arc::new(Discard), |c| c.tls = tls).await?;
    let spool = tempfile::tempdir()?;
    let mut cfg = SenderConfig::new(vec![receiver.local_addr().to_string()], files, spool.path());
    cfg.server_name = Some("localhost".into());
    let (sender, _) = Sender::<u64>::start(cfg, &prometheus::Registry::new()).await?;
    let mut status = sender.status();
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await??
    .clone();
    let msg = st.last_error.unwrap_or_default();
    assert!(msg.contains("error 44") && msg.contains("Revoked"), "{msg}");
    assert!(!st.connected);
    wait_count(&reg, "revoked", 1.0).await?;
    sender.shutdown(Duration::from_millis(100)).await;
    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

/// A handler that accepts and drops everything.
struct Discard;

impl telemetry_link::Handler<u64> for Discard {
    async fn handle(
        &self,
        _: telemetry_link::Delivery<u64>,
    ) -> Result<telemetry_link::Applied, telemetry_link::HandlerError> {
        Ok(telemetry_link::Applied::all())
    }
}

/// A bare QUIC server presenting whatever certificate it is given (the
/// link's own receiver would refuse to start with a bad one), counting the
/// handshakes that complete.
struct RawServer {
    addr: SocketAddr,
    established: Arc<AtomicU32>,
    _endpoint: quinn::Endpoint,
}

impl RawServer {
    fn start(files: &TlsFiles) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&files.key)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(telemetry_link::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?;
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            ([127, 0, 0, 1], 0).into(),
        )?;
        let established = Arc::new(AtomicU32::new(0));
        let (ep, count) = (endpoint.clone(), established.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    if incoming.await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self {
            addr: endpoint.local_addr()?,
            established,
            _endpoint: endpoint,
        })
    }
}
