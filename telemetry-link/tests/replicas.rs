//! Replicas over real QUIC and mutual TLS: several sender processes under
//! one certificate identity, each with its own spool, are separate streams
//! at the receiver — delivered concurrently, resumed separately after a
//! receiver restart, each exactly once, nothing counted as lost or reset.
//! A receiver pinned below protocol version 3 still serves the default
//! replica and refuses a named one with a clear error.

use std::time::Duration;

use telemetry_link::{session::WindowLimits, Sender};
use telemetry_test_support::{
    link::{
        assert_exactly_once, eventually, metric, restart_receiver, start_receiver, start_sender,
        Collector,
    },
    pki::TestPki,
};

/// Sends `from..=to` (each value its sequence number) in batches of 100.
async fn send_range(sender: &Sender<u64>, from: u64, to: u64) -> anyhow::Result<()> {
    let values: Vec<u64> = (from..=to).collect();
    for chunk in values.chunks(100) {
        sender.send_batch(chunk).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_one_identity_are_separate_streams_across_a_receiver_restart(
) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let (spool1, spool2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    let replica = |name: &'static str| {
        move |c: &mut telemetry_link::SenderConfig| {
            c.replica = name.into();
            c.backoff_cap = Duration::from_millis(300);
        }
    };
    let (r1, reg1) = start_sender::<u64>(&pki, "c1", &[addr], spool1.path(), replica("r1")).await?;
    let (r2, reg2) = start_sender::<u64>(&pki, "c1", &[addr], spool2.path(), replica("r2")).await?;
    assert_eq!((r1.replica(), r2.replica()), ("r1", "r2"));
    assert_ne!(r1.stream_id(), r2.stream_id());

    // Both replicas are connected at once: neither supersedes the other.
    eventually(Duration::from_secs(20), "both replicas connected", || {
        metric(&rx_reg, "telemetry_link_senders_connected", &[]) == 2.0
    })
    .await?;
    const N: u64 = 6000;
    let (a, b) = tokio::join!(send_range(&r1, 1, N / 2), send_range(&r2, 1, N / 2));
    a?;
    b?;
    collector
        .wait_for("c1@r1", N as usize / 2, Duration::from_secs(60))
        .await?;
    collector
        .wait_for("c1@r2", N as usize / 2, Duration::from_secs(60))
        .await?;

    // An abrupt receiver restart in the middle of both streams.
    let feed = tokio::spawn({
        let (r1, r2) = (r1.clone(), r2.clone());
        async move {
            let (a, b) = tokio::join!(send_range(&r1, N / 2 + 1, N), send_range(&r2, N / 2 + 1, N));
            a.and(b)
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(receiver);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (receiver, rx_reg) =
        restart_receiver::<u64, _>(&pki, addr.port(), state.path(), collector.clone(), |_| {})
            .await?;
    feed.await??;
    for stream in ["c1@r1", "c1@r2"] {
        eventually(
            Duration::from_secs(30),
            "a reconnect after the restart",
            || collector.log(stream).connects >= 2,
        )
        .await?;
        collector
            .wait_for(stream, N as usize, Duration::from_secs(60))
            .await?;
        let log = collector.log(stream);
        assert_exactly_once(log.records.iter().map(|r| r.0), N);
        assert!(log.records.iter().all(|(s, v)| s == v), "{stream}");
        assert_eq!(log.order_violations, 0, "{stream}");
    }
    assert_eq!(collector.count("c1"), 0, "nothing for the default replica");
    for (sender, reg) in [(&r1, &reg1), (&r2, &reg2)] {
        assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
        assert_eq!(
            metric(reg, "telemetry_sender_records_refused_total", &[]),
            0.0
        );
    }
    check_streams_apart(&rx_reg, state.path(), N)?;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The receiver resumed each replica of `c1` at its own position (`n`),
/// reset and lost nothing, and keeps every position in the state journal.
fn check_streams_apart(
    rx_reg: &prometheus::Registry,
    state: &std::path::Path,
    n: u64,
) -> anyhow::Result<()> {
    // The restarted receiver resumed each replica at its own position.
    for replica in ["r1", "r2"] {
        assert_eq!(
            metric(
                rx_reg,
                "telemetry_link_applied_seq",
                &[("sender", "c1"), ("replica", replica)]
            ),
            n as f64
        );
    }
    for name in [
        "telemetry_link_stream_resets_total",
        "telemetry_link_records_lost_total",
    ] {
        assert_eq!(metric(rx_reg, name, &[("sender", "c1")]), 0.0, "{name}");
    }
    let mut files: Vec<String> = std::fs::read_dir(state)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|f| f.starts_with("positions.") || f.ends_with(".state"));
    files.sort();
    assert_eq!(files, ["positions.journal", "positions.snapshot"]);
    Ok(())
}

/// A replica that stops (it lost the leadership) with a backlog in its
/// spool, while another replica of the identity goes on, delivers that
/// backlog exactly once when it comes back: the other replica's stream
/// does not reset or advance its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_comes_back_delivers_its_backlog_once() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let (spool1, spool2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    let tune =
        |name: &'static str| move |c: &mut telemetry_link::SenderConfig| c.replica = name.into();
    // Small batches and a small window: a backlog builds up quickly.
    let (leader, _) = start_sender::<u64>(&pki, "c2", &[addr], spool1.path(), |c| {
        c.replica = "a".into();
        c.batch_max_records = 10;
        c.window = WindowLimits {
            max_batches: 2,
            max_bytes: 1 << 20,
        };
    })
    .await?;
    send_range(&leader, 1, 1000).await?;
    collector
        .wait_for("c2@a", 1000, Duration::from_secs(30))
        .await?;
    // It loses the leadership and stops at once, with records in its spool.
    let values: Vec<u64> = (1001..=2500).collect();
    leader.send_batch(&values).await?;
    let report = leader.shutdown(Duration::ZERO).await;
    assert!(report.unacked > 0, "a backlog stays in the spool");
    drop(leader);

    // Meanwhile the other replica leads and sends its own stream.
    let (other, _) = start_sender::<u64>(&pki, "c2", &[addr], spool2.path(), tune("b")).await?;
    send_range(&other, 1, 3000).await?;
    collector
        .wait_for("c2@b", 3000, Duration::from_secs(30))
        .await?;

    // The first replica comes back on its spool: its backlog, once.
    let (back, back_reg) =
        start_sender::<u64>(&pki, "c2", &[addr], spool1.path(), tune("a")).await?;
    collector
        .wait_for("c2@a", 2500, Duration::from_secs(30))
        .await?;
    assert!(back.shutdown(Duration::from_secs(10)).await.drained);
    assert!(other.shutdown(Duration::from_secs(10)).await.drained);
    let a = collector.log("c2@a");
    assert_exactly_once(a.records.iter().map(|r| r.0), 2500);
    assert!(a.records.iter().all(|(s, v)| s == v));
    assert_exactly_once(collector.log("c2@b").records.iter().map(|r| r.0), 3000);
    for name in [
        "telemetry_link_stream_resets_total",
        "telemetry_link_records_lost_total",
    ] {
        assert_eq!(metric(&rx_reg, name, &[("sender", "c2")]), 0.0, "{name}");
    }
    assert_eq!(
        metric(&back_reg, "telemetry_sender_records_dropped_total", &[]),
        0.0
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A receiver pinned to version 2 or 1 serves a version-3 sender as the
/// default replica; a named replica gets a clear connect error instead of
/// having its stream merged with the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_older_than_version_3_serves_the_default_replica_only() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    for pinned in [2u16, 1] {
        let state = tempfile::tempdir()?;
        let (spool1, spool2) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let collector = Collector::<u64>::new();
        let (receiver, rx_reg) =
            start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
                c.limits.max_protocol_version = pinned;
            })
            .await?;
        let addr = receiver.local_addr();
        let (plain, _) = start_sender::<u64>(&pki, "old", &[addr], spool1.path(), |_| {}).await?;
        send_range(&plain, 1, 500).await?;
        collector
            .wait_for("old", 500, Duration::from_secs(30))
            .await?;
        assert!(plain.shutdown(Duration::from_secs(10)).await.drained);

        let (named, named_reg) = start_sender::<u64>(&pki, "old", &[addr], spool2.path(), |c| {
            c.replica = "r9".into();
            c.backoff_cap = Duration::from_millis(200);
        })
        .await?;
        send_range(&named, 1, 10).await?;
        let mut status = named.status();
        let error = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(e) = status.borrow_and_update().last_error.clone() {
                    return e;
                }
                let _ = status.changed().await;
            }
        })
        .await?;
        assert!(
            error.contains(&format!(
                "the receiver speaks protocol version {pinned} at most, which has no replicas, but this sender is replica \"r9\""
            )),
            "{error}"
        );
        assert!(
            metric(
                &named_reg,
                "telemetry_sender_connect_failures_total",
                &[("reason", "refused")]
            ) >= 1.0
        );
        assert_eq!(collector.count("old@r9"), 0);
        assert_eq!(
            collector.count("old"),
            500,
            "nothing merged into the default stream"
        );
        assert_eq!(
            metric(&rx_reg, "telemetry_link_applied_seq", &[("sender", "old")]),
            500.0
        );
        named.shutdown(Duration::ZERO).await;
        receiver.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
