//! Restarts in the middle of a stream: the receiver dropped abruptly and
//! restarted several times; the sender as a real child process killed with
//! SIGKILL and restarted on the same spool. In both, every record reaches
//! the handler exactly once.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use telemetry_link::Receiver;
use telemetry_test_support::{
    link::{
        assert_exactly_once, metric, restart_receiver, start_receiver, start_sender, Collector,
    },
    pki::TestPki,
    process::ChildProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_dropped_and_restarted_mid_stream_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (mut receiver, _) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    let (sender, tx_reg) = start_sender::<u64>(&pki, "s1", &[addr], spool.path(), |c| {
        c.backoff_cap = Duration::from_millis(500);
    })
    .await?;

    const N: u64 = 50_000;
    let producer = {
        let sender = sender.clone();
        tokio::spawn(async move {
            let values: Vec<u64> = (1..=N).collect();
            for chunk in values.chunks(100) {
                sender.send_batch(chunk).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut last_registry = None;
    for round in 1..=4u64 {
        let before = collector.count("s1");
        collector
            .wait_for("s1", before + 2000, Duration::from_secs(60))
            .await?;
        drop(receiver); // abrupt: sessions aborted wherever they are
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (r, reg) =
            restart_receiver::<u64, _>(&pki, addr.port(), state.path(), collector.clone(), |_| {})
                .await?;
        receiver = r;
        last_registry = Some(reg);
        // The sender finds the new receiver by itself.
        let limit = tokio::time::Instant::now() + Duration::from_secs(30);
        while collector.log("s1").connects < round + 1 {
            anyhow::ensure!(
                tokio::time::Instant::now() < limit,
                "sender did not reconnect after restart {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    producer.await??;
    collector
        .wait_for("s1", N as usize, Duration::from_secs(60))
        .await?;
    let log = collector.log("s1");
    assert_exactly_once(log.records.iter().map(|r| r.0), N);
    assert!(log.records.iter().all(|(s, v)| s == v));
    assert_eq!(log.order_violations, 0);
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    assert!(metric(&tx_reg, "telemetry_sender_reconnects_total", &[]) >= 4.0);
    if let Some(reg) = last_registry {
        assert_eq!(
            metric(&reg, "telemetry_link_applied_seq", &[("sender", "s1")]),
            N as f64
        );
    }
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Runs only as a child process of the SIGKILL test (it re-executes this
/// test binary with `--ignored --exact child_sender_entry`): a sender that
/// numbers records 1..=TOTAL, each value equal to its sequence number,
/// continuing after whatever its spool already holds.
#[tokio::test]
#[ignore = "child-process entry point of sender_killed_with_sigkill_and_restarted_on_same_spool_loses_nothing"]
async fn child_sender_entry() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let env = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set"));
    let tls =
        telemetry_link::TlsFiles::new(env("CHILD_CA")?, env("CHILD_CERT")?, env("CHILD_KEY")?);
    let total: u64 = env("CHILD_TOTAL")?.parse()?;
    let cfg =
        telemetry_link::SenderConfig::new(vec![env("CHILD_RECEIVER")?], tls, env("CHILD_SPOOL")?);
    let (sender, _) =
        telemetry_link::Sender::<u64>::start(cfg, &prometheus::Registry::new()).await?;
    let mut next = sender.stats().last_seq + 1;
    while next <= total {
        let end = (next + 49).min(total);
        let values: Vec<u64> = (next..=end).collect();
        let a = sender.send_batch(&values).await?;
        anyhow::ensure!(
            a.first_seq == next,
            "spool assigned {} for {next}",
            a.first_seq
        );
        next = end + 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let report = sender.shutdown(Duration::from_secs(30)).await;
    println!("child done: drained: {}", report.drained);
    Ok(())
}

fn spawn_sender(
    pki: &TestPki,
    addr: SocketAddr,
    spool: &Path,
    total: u64,
) -> anyhow::Result<ChildProcess> {
    let mut cmd = child_command("child_sender_entry", &pki.sender("child")?)?;
    cmd.env("CHILD_RECEIVER", addr.to_string())
        .env("CHILD_SPOOL", spool)
        .env("CHILD_TOTAL", total.to_string());
    ChildProcess::spawn("sender-child", cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_with_sigkill_and_restarted_on_same_spool_loses_nothing() -> anyhow::Result<()>
{
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    const N: u64 = 20_000;
    for round in 1..=4u64 {
        let mut child = spawn_sender(&pki, addr, spool.path(), N)?;
        let target = (round * 3000) as usize;
        collector
            .wait_for("child", target, Duration::from_secs(60))
            .await?;
        let status = child.kill_9()?;
        assert!(!status.success(), "killed mid-stream");
    }
    let mut child = spawn_sender(&pki, addr, spool.path(), N)?;
    let status = tokio::task::spawn_blocking(move || {
        let s = child.wait_timeout(Duration::from_secs(120));
        (s, child.output())
    })
    .await?;
    let output = status.1;
    assert!(status.0?.success(), "final sender run failed:\n{output}");
    collector
        .wait_for("child", N as usize, Duration::from_secs(30))
        .await?;
    let log = collector.log("child");
    assert_exactly_once(log.records.iter().map(|r| r.0), N);
    assert!(
        log.records.iter().all(|(s, v)| s == v),
        "values match sequences"
    );
    assert_eq!(log.order_violations, 0);
    assert_eq!(
        metric(&rx_reg, "telemetry_link_records_lost_total", &[]),
        0.0
    );
    assert!(output.contains("child done: drained: true"), "{output}");
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Runs only as a child process: a receiver on `CHILD_LISTEN` with state in
/// `CHILD_STATE`, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child-process entry point of receiver_killed_with_sigkill_is_reset_at_once_after_restart"]
async fn child_receiver_entry() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let env = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set"));
    let tls =
        telemetry_link::TlsFiles::new(env("CHILD_CA")?, env("CHILD_CERT")?, env("CHILD_KEY")?);
    let mut cfg = telemetry_link::ReceiverConfig::new(
        env("CHILD_LISTEN")?.parse()?,
        tls,
        env("CHILD_STATE")?,
    );
    // The effective idle timeout is the smaller of both ends': make it long
    // on both, so only a stateless reset can end a dead connection quickly.
    cfg.transport.idle_timeout = Duration::from_secs(30);
    let collector = Collector::<u64>::new();
    let _r = Receiver::start::<u64, _>(cfg, collector, &prometheus::Registry::new()).await?;
    println!("child receiver listening");
    std::future::pending::<()>().await;
    Ok(())
}

/// This test binary running only the ignored test `entry`, with the TLS
/// files in `CHILD_CA`, `CHILD_CERT` and `CHILD_KEY`.
fn child_command(entry: &str, tls: &telemetry_link::TlsFiles) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--ignored",
        "--exact",
        entry,
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CHILD_CA", &tls.ca)
    .env("CHILD_CERT", &tls.cert)
    .env("CHILD_KEY", &tls.key);
    Ok(cmd)
}

fn spawn_receiver(pki: &TestPki, listen: SocketAddr, state: &Path) -> anyhow::Result<ChildProcess> {
    let mut cmd = child_command("child_receiver_entry", &pki.receiver()?)?;
    cmd.env("CHILD_LISTEN", listen.to_string())
        .env("CHILD_STATE", state);
    let child = ChildProcess::spawn("receiver-child", cmd)?;
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    while !child.output().contains("child receiver listening") {
        anyhow::ensure!(
            std::time::Instant::now() < limit,
            "child receiver did not start:\n{}",
            child.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// A receiver killed with SIGKILL cannot close its connections. The restarted
/// process recognises its predecessor's connection IDs and resets them, so
/// the sender reconnects at once — not after its idle timeout (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_with_sigkill_is_reset_at_once_after_restart() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = spawn_receiver(&pki, addr, state.path())?;
    let (sender, _) = start_sender::<u64>(&pki, "s", &[addr], spool.path(), |c| {
        c.transport.idle_timeout = Duration::from_secs(30);
        c.transport.keep_alive = Duration::from_millis(200);
    })
    .await?;
    let mut status = sender.status();
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.connected)).await??;
    sender.send_batch(&[1, 2, 3]).await?;
    let limit = tokio::time::Instant::now() + Duration::from_secs(20);
    while sender.stats().acked_seq < 3 {
        anyhow::ensure!(tokio::time::Instant::now() < limit, "not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill_9()?;
    let child = tokio::task::spawn_blocking({
        let state = state.path().to_path_buf();
        move || {
            let pki = pki;
            let c = spawn_receiver(&pki, addr, &state);
            (c, pki)
        }
    })
    .await?;
    let restarted = tokio::time::Instant::now();
    // Keep-alives hit the new process, which resets the old connection.
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
        .await
        .map_err(|_| anyhow::anyhow!("the dead connection was not reset within 10 s"))??;
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.connected)).await??;
    let took = restarted.elapsed();
    sender.send_batch(&[4]).await?;
    let limit = tokio::time::Instant::now() + Duration::from_secs(20);
    while sender.stats().acked_seq < 4 {
        anyhow::ensure!(
            tokio::time::Instant::now() < limit,
            "not acknowledged after reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(took < Duration::from_secs(10), "reconnected after {took:?}");
    sender.shutdown(Duration::from_secs(5)).await;
    child.0?.kill_9()?;
    drop(child.1);
    Ok(())
}
