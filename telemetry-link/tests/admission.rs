//! Admission under a handshake flood, over real QUIC on loopback: while one
//! task floods the receiver with handshakes — without a certificate, or
//! ones that never finish — legitimate senders connect and reconnect
//! (every connect succeeds within a sender's connect timeout) and
//! established senders stream on undisturbed. Handshakes in progress never
//! take a session slot. Each test prints its figures (`--nocapture`). The
//! floods run one at a time: two at once on a small machine measure its
//! saturation (lost datagrams, retransmission timers), not admission.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use telemetry_link::{tls::TlsFiles, ReceiverConfig};
use telemetry_test_support::{
    link::{eventually, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
    raw,
};

const HS: &str = "telemetry_link_handshake_failures_total";

/// Held by a test while it floods.
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sender's default connect timeout: a legitimate connect slower than
/// this has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the legitimate reconnecting clients saw.
#[derive(Debug, Default)]
struct Connects {
    took: Vec<Duration>,
    failed: Vec<String>,
}

impl Connects {
    fn extend(&mut self, other: Connects) {
        self.took.extend(other.took);
        self.failed.extend(other.failed);
    }
}

/// A legitimate client connecting (handshake and hello) and disconnecting
/// again and again until `until`.
async fn reconnect_loop(
    pki: &TestPki,
    identity: TlsFiles,
    addr: SocketAddr,
    until: Instant,
) -> anyhow::Result<Connects> {
    let ep = raw::client_endpoint()?;
    let mut seen = Connects::default();
    let mut stream_id = 1u128;
    let ca = pki.ca_path();
    while Instant::now() < until {
        let start = Instant::now();
        let hello = raw::hello(&ep, &ca, &identity, addr, "localhost", stream_id);
        match tokio::time::timeout(CONNECT_TIMEOUT, hello).await {
            Ok(Ok((conn, ..))) => {
                seen.took.push(start.elapsed());
                conn.close(0u32.into(), b"again");
            }
            Ok(Err(e)) => seen
                .failed
                .push(format!("refused after {:?}: {e:#}", start.elapsed())),
            Err(_) => seen.failed.push("timed out".into()),
        }
        stream_id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(seen)
}

fn summary(connects: &Connects) -> String {
    let mut sorted = connects.took.clone();
    sorted.sort();
    let pct = |p: usize| sorted.get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)));
    format!(
        "{} connects, {} failed, median {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        connects.failed.len(),
        pct(50).copied().unwrap_or_default(),
        pct(99).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default()
    )
}

/// Two senders streaming records through the whole test.
struct Streaming {
    senders: Vec<(telemetry_link::Sender<u64>, prometheus::Registry)>,
    _spools: Vec<tempfile::TempDir>,
}

impl Streaming {
    async fn start(
        pki: &TestPki,
        addr: SocketAddr,
        collector: &Collector<u64>,
    ) -> anyhow::Result<Self> {
        let mut senders = Vec::new();
        let mut spools = Vec::new();
        for id in ["steady-a", "steady-b"] {
            let spool = tempfile::tempdir()?;
            let s = start_sender::<u64>(pki, id, &[addr], spool.path(), |_| {}).await?;
            s.0.send(&1).await?;
            collector.wait_for(id, 1, Duration::from_secs(20)).await?;
            senders.push(s);
            spools.push(spool);
        }
        Ok(Self {
            senders,
            _spools: spools,
        })
    }

    async fn send(&self, n: u64) -> anyhow::Result<()> {
        for (s, _) in &self.senders {
            s.send(&n).await?;
        }
        Ok(())
    }

    /// Asserts that no sender lost its session or failed a connect.
    fn assert_undisturbed(&self) {
        for (_, reg) in &self.senders {
            assert_eq!(metric(reg, "telemetry_sender_reconnects_total", &[]), 0.0);
            assert_eq!(
                metric(reg, "telemetry_sender_connect_failures_total", &[]),
                0.0
            );
            assert_eq!(metric(reg, "telemetry_sender_connected", &[]), 1.0);
        }
    }
}

/// Runs `flood` while two clients reconnect in a loop and two senders
/// stream; returns what the reconnecting clients saw.
async fn legitimate_traffic_during(
    pki: &TestPki,
    addr: SocketAddr,
    collector: &Collector<u64>,
    duration: Duration,
    flood: impl std::future::Future<Output = raw::Flood>,
) -> anyhow::Result<(raw::Flood, Connects)> {
    let streaming = Streaming::start(pki, addr, collector).await?;
    let until = Instant::now() + duration;
    let loops = async {
        let a = reconnect_loop(pki, pki.sender("reconnecting-a")?, addr, until);
        let b = reconnect_loop(pki, pki.sender("reconnecting-b")?, addr, until);
        let (a, b) = tokio::join!(a, b);
        let mut all = a?;
        all.extend(b?);
        anyhow::Ok(all)
    };
    let stream = async {
        let mut n = 2;
        while Instant::now() < until {
            streaming.send(n).await?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(n - 1)
    };
    let (flood, connects, sent) = tokio::join!(flood, loops, stream);
    let (connects, sent) = (connects?, sent?);
    for id in ["steady-a", "steady-b"] {
        collector
            .wait_for(id, sent as usize, Duration::from_secs(20))
            .await?;
    }
    streaming.assert_undisturbed();
    Ok((flood, connects))
}

fn reasons(reg: &prometheus::Registry) -> String {
    [
        "no_certificate",
        "handshake_timeout",
        "handshake_limit",
        "address_limit",
        "busy",
    ]
    .iter()
    .map(|r| format!("{r}={}", metric(reg, HS, &[("reason", r)])))
    .collect::<Vec<_>>()
    .join(" ")
}

async fn receiver(
    pki: &TestPki,
    state: &Path,
    collector: Arc<Collector<u64>>,
    tune: impl FnOnce(&mut ReceiverConfig),
) -> anyhow::Result<(telemetry_link::Receiver, prometheus::Registry)> {
    start_receiver::<u64, _>(pki, 0, state, collector, tune).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_senders_get_in_during_a_flood_of_handshakes_without_a_certificate(
) -> anyhow::Result<()> {
    let _flooding = ONE_FLOOD_AT_A_TIME.lock().await;
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, reg) = receiver(&pki, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();

    // The flood comes from the same address as the legitimate senders:
    // only the budgets, not the per-address limit, keep them apart.
    let flooder = raw::client_endpoint()?;
    let no_cert = raw::client_config(&pki.ca_path(), None)?;
    let duration = Duration::from_secs(6);
    let flood = raw::flood(&flooder, &no_cert, addr, 64, duration);
    let (flood, connects) =
        legitimate_traffic_during(&pki, addr, &collector, duration, flood).await?;

    println!(
        "flood without certificates: {} handshakes in {:.1?} ({:.0}/s, one task, 64 in flight); legitimate: {}; receiver: {}, retries={}",
        flood.started,
        flood.elapsed,
        flood.rate(),
        summary(&connects),
        reasons(&reg),
        metric(&reg, "telemetry_link_handshake_retries_total", &[]),
    );
    assert!(flood.started > 100, "the flood ran: {flood:?}");
    assert!(connects.failed.is_empty(), "{:?}", connects.failed);
    assert!(connects.took.len() >= 10, "{}", summary(&connects));
    eventually(
        Duration::from_secs(10),
        "the flood's refusals counted",
        || metric(&reg, HS, &[("reason", "no_certificate")]) >= flood.started as f64 * 0.9,
    )
    .await?;
    assert_eq!(metric(&reg, HS, &[("reason", "busy")]), 0.0);
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_take_no_session_slot_and_are_limited_per_address(
) -> anyhow::Result<()> {
    let _flooding = ONE_FLOOD_AT_A_TIME.lock().await;
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, reg) = receiver(&pki, state.path(), collector.clone(), |c| {
        // Sessions: the two streaming senders and the two reconnecting
        // clients (with a superseded session each, for a moment); the
        // stalled handshakes would fill them many times over.
        c.limits.max_connections = 8;
        c.limits.max_pending_handshakes = 64;
        c.limits.max_pending_per_address = 8;
        c.limits.handshake_timeout = Duration::from_secs(2);
    })
    .await?;
    let addr = receiver.local_addr();

    // A second host (127.0.0.2) whose handshakes answer Retries and then
    // go silent, 200 at a time.
    let flooder = raw::stalling_endpoint(IpAddr::from([127, 0, 0, 2]))?;
    let cfg = raw::client_config(&pki.ca_path(), Some(&pki.sender("stalling")?))?;
    let duration = Duration::from_secs(6);
    let flood = raw::flood(&flooder, &cfg, addr, 200, duration);
    let (flood, connects) =
        legitimate_traffic_during(&pki, addr, &collector, duration, flood).await?;

    println!(
        "stalled handshakes from 127.0.0.2: {} started in {:.1?} ({:.0}/s, 200 in flight); legitimate: {}; receiver: {}, retries={}, pending now={}",
        flood.started,
        flood.elapsed,
        flood.rate(),
        summary(&connects),
        reasons(&reg),
        metric(&reg, "telemetry_link_handshake_retries_total", &[]),
        metric(&reg, "telemetry_link_handshakes_pending", &[]),
    );
    assert!(connects.failed.is_empty(), "{:?}", connects.failed);
    assert!(connects.took.len() >= 10, "{}", summary(&connects));
    assert!(metric(&reg, HS, &[("reason", "handshake_timeout")]) > 0.0);
    assert!(metric(&reg, HS, &[("reason", "address_limit")]) > 0.0);
    assert!(metric(&reg, "telemetry_link_handshake_retries_total", &[]) > 0.0);
    assert_eq!(metric(&reg, HS, &[("reason", "busy")]), 0.0);
    drop(flooder);
    eventually(
        Duration::from_secs(5),
        "the stalled handshakes timed out",
        || metric(&reg, "telemetry_link_handshakes_pending", &[]) == 0.0,
    )
    .await?;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_peer_beyond_the_session_limit_is_refused_as_busy() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, reg) = receiver(&pki, state.path(), collector.clone(), |c| {
        c.limits.max_connections = 1;
    })
    .await?;
    let addr = receiver.local_addr();
    let ep = raw::client_endpoint()?;
    let (first, _send, _recv, _) = raw::hello(
        &ep,
        &pki.ca_path(),
        &pki.sender("first")?,
        addr,
        "localhost",
        1,
    )
    .await?;
    let second = raw::client_config(&pki.ca_path(), Some(&pki.sender("second")?))?;
    let refused = raw::attempt(&ep, second, addr, "localhost", Duration::from_secs(1)).await;
    assert!(refused.is_err(), "a second session got in");
    eventually(Duration::from_secs(5), "busy counted", || {
        metric(&reg, HS, &[("reason", "busy")]) >= 1.0
    })
    .await?;
    first.close(0u32.into(), b"done");
    let third = raw::client_config(&pki.ca_path(), Some(&pki.sender("third")?))?;
    let mut admitted = false;
    for _ in 0..50 {
        if raw::attempt(
            &ep,
            third.clone(),
            addr,
            "localhost",
            Duration::from_millis(300),
        )
        .await
        .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "the slot was not freed when the session ended");
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
