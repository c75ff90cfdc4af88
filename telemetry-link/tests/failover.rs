//! Failover between two receivers and honest loss accounting when the
//! spool overflows during an outage.

use std::time::Duration;

use telemetry_link::SpoolConfig;
use telemetry_test_support::{
    link::{
        assert_exactly_once, metric, restart_receiver, start_receiver, start_sender, Collector,
    },
    pki::TestPki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_second_receiver_and_back_without_loss() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state_a, state_b, spool) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let (ca, cb) = (Collector::<u64>::new(), Collector::<u64>::new());
    let (a, reg_a) = start_receiver::<u64, _>(&pki, 0, state_a.path(), ca.clone(), |_| {}).await?;
    let (b, reg_b) = start_receiver::<u64, _>(&pki, 0, state_b.path(), cb.clone(), |_| {}).await?;
    let (addr_a, addr_b) = (a.local_addr(), b.local_addr());
    let (sender, _) = start_sender::<u64>(&pki, "fo", &[addr_a, addr_b], spool.path(), |c| {
        c.failback_after = Some(Duration::from_millis(500));
        c.backoff_cap = Duration::from_millis(300);
    })
    .await?;

    let send = |from: u64, to: u64| {
        let s = sender.clone();
        async move {
            let v: Vec<u64> = (from..=to).collect();
            for c in v.chunks(100) {
                s.send_batch(c).await?;
            }
            anyhow::Ok(())
        }
    };
    send(1, 3000).await?;
    ca.wait_for("fo", 3000, Duration::from_secs(30)).await?;
    a.shutdown(Duration::from_secs(2)).await; // the preferred receiver dies
    send(3001, 6000).await?;
    cb.wait_for("fo", 3000, Duration::from_secs(30)).await?; // ...the second takes over
    let (a2, reg_a2) =
        restart_receiver::<u64, _>(&pki, addr_a.port(), state_a.path(), ca.clone(), |_| {}).await?;
    // Fail back to the preferred receiver once it is up again.
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    while ca.log("fo").connects < 2 {
        anyhow::ensure!(tokio::time::Instant::now() < limit, "no failback");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(6001, 9000).await?;
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    while ca.count("fo") + cb.count("fo") < 9000 {
        anyhow::ensure!(
            tokio::time::Instant::now() < limit,
            "only {} + {}",
            ca.count("fo"),
            cb.count("fo")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all: Vec<u64> = ca.log("fo").records.iter().map(|r| r.0).collect();
    all.extend(cb.log("fo").records.iter().map(|r| r.0));
    assert_exactly_once(all, 9000);
    assert!(
        ca.log("fo").records.iter().any(|r| r.0 > 6000),
        "records after failback went to the preferred receiver"
    );
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    // Records delivered to the other receiver are skipped, not lost.
    for reg in [&reg_a, &reg_b, &reg_a2] {
        assert_eq!(metric(reg, "telemetry_link_records_lost_total", &[]), 0.0);
    }
    b.shutdown(Duration::from_secs(2)).await;
    a2.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_overflow_during_an_outage_is_counted_and_reported_as_lost() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let collector = Collector::<u64>::new();
    // A receiver address nobody listens on yet.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (sender, tx_reg) = start_sender::<u64>(&pki, "small", &[addr], spool.path(), |c| {
        c.spool = SpoolConfig {
            max_bytes: 256 * 1024,
            segment_bytes: Some(16 * 1024),
            ..SpoolConfig::default()
        };
        c.backoff_cap = Duration::from_millis(200);
    })
    .await?;
    const N: u64 = 40_000; // ~1 MB of records into a 256 KiB spool
    let values: Vec<u64> = (1..=N).collect();
    let mut dropped = 0;
    for c in values.chunks(500) {
        dropped += sender.send_batch(c).await?.dropped;
    }
    assert!(dropped > 0);
    assert!(sender.stats().bytes <= 256 * 1024);
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_records_dropped_total", &[]),
        dropped as f64
    );

    let (receiver, reg) =
        start_receiver::<u64, _>(&pki, port, state.path(), collector.clone(), |_| {}).await?;
    let expected = (N - dropped) as usize;
    collector
        .wait_for("small", expected, Duration::from_secs(60))
        .await?;
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    let log = collector.log("small");
    assert_eq!(log.records.len(), expected);
    // The oldest records were dropped: what arrived is the newest, in order.
    assert_eq!(log.records.first().map(|r| r.0), Some(dropped + 1));
    assert_eq!(log.records.last().map(|r| r.0), Some(N));
    assert_eq!(
        metric(
            &reg,
            "telemetry_link_records_lost_total",
            &[("sender", "small")]
        ),
        dropped as f64
    );
    assert_eq!(
        metric(&reg, "telemetry_link_applied_seq", &[("sender", "small")]),
        N as f64
    );
    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
