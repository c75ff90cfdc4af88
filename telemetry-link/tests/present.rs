//! The present-state lane: a present set when the link reconnects reaches
//! the receiver's handler ahead of a large backlog, on its own stream, and
//! the backlog still arrives exactly once behind it; an oversized present is
//! refused and counted without disturbing the session.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use telemetry_link::Sender;
use telemetry_test_support::{
    link::{assert_exactly_once, eventually, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
    process::free_udp_port,
};

/// Sets `[last value]` as the present whenever the link (re)connects, like
/// a source re-sending its state.
fn present_on_connect(sender: &Sender<u64>, last: u64) -> tokio::task::JoinHandle<()> {
    let sender = sender.clone();
    let mut connections = sender.connections();
    tokio::spawn(async move {
        while connections.changed().await.is_ok() {
            connections.borrow_and_update();
            sender.set_present(&[last]).expect("present encodes");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_present_overtakes_a_large_backlog() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let port = free_udp_port()?;
    let addr = ([127, 0, 0, 1], port).into();
    // The backlog builds up while no receiver listens.
    let (sender, tx_reg) = start_sender::<u64>(&pki, "s1", &[addr], spool.path(), |c| {
        c.backoff_cap = Duration::from_millis(200);
    })
    .await?;
    const N: u64 = 1_000_000;
    let values: Vec<u64> = (1..=N).collect();
    for chunk in values.chunks(50_000) {
        sender.send_batch(chunk).await?;
    }
    let _presenter = present_on_connect(&sender, N);

    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, port, state.path(), collector.clone(), |_| {}).await?;
    collector
        .wait_for("s1", N as usize, Duration::from_secs(120))
        .await?;
    let log = collector.log("s1");
    assert_exactly_once(log.records.iter().map(|(s, _)| *s), N);
    let first = log.presents.first().expect("a present arrived");
    assert_eq!(first.covers_seq, N);
    assert_eq!(first.records, vec![N]);
    assert!(
        first.after_records < N as usize / 2,
        "the present arrived after {} of {N} backlog records",
        first.after_records
    );
    eprintln!(
        "present arrived after {} of {N} backlog records",
        first.after_records
    );
    assert_eq!(
        metric(
            &rx_reg,
            "telemetry_link_presents_total",
            &[("sender", "s1"), ("result", "applied")]
        ),
        log.presents.len() as f64
    );
    assert!(metric(&tx_reg, "telemetry_sender_presents_sent_total", &[]) >= 1.0);
    sender.shutdown(Duration::from_secs(5)).await;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_present_is_refused_and_the_session_goes_on() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
            c.limits.max_present_bytes = 1000;
        })
        .await?;
    let (sender, _) =
        start_sender::<u64>(&pki, "s1", &[receiver.local_addr()], spool.path(), |_| {}).await?;
    sender.send_batch(&[1, 2, 3]).await?;
    collector.wait_for("s1", 3, Duration::from_secs(30)).await?;
    let big: Vec<u64> = (0..10_000).collect();
    sender.set_present(&big)?;
    eventually(Duration::from_secs(30), "the refusal counted", || {
        metric(
            &rx_reg,
            "telemetry_link_presents_total",
            &[("sender", "s1"), ("result", "refused")],
        ) >= 1.0
    })
    .await?;
    sender.set_present(&[7])?;
    sender.send_batch(&[4, 5]).await?;
    collector.wait_for("s1", 5, Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(30), "the small present", || {
        !collector.log("s1").presents.is_empty()
    })
    .await?;
    let log = collector.log("s1");
    assert_eq!(log.presents.len(), 1);
    assert_eq!(log.presents[0].records, vec![7]);
    assert_eq!(log.presents[0].covers_seq, 3);
    assert_eq!(log.connects, 1, "the refusal did not cost the connection");
    assert_exactly_once(log.records.iter().map(|(s, _)| *s), 5);
    sender.shutdown(Duration::from_secs(5)).await;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_falls_back_to_a_version_1_receiver_without_presents() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
            c.limits.max_protocol_version = 1;
        })
        .await?;
    let (sender, tx_reg) =
        start_sender::<u64>(&pki, "s1", &[receiver.local_addr()], spool.path(), |_| {}).await?;
    let _presenter = present_on_connect(&sender, 3);
    sender.send_batch(&[1, 2, 3]).await?;
    collector.wait_for("s1", 3, Duration::from_secs(30)).await?;
    let log = collector.log("s1");
    assert_exactly_once(log.records.iter().map(|(s, _)| *s), 3);
    assert_eq!(log.connects, 1);
    assert!(
        log.presents.is_empty(),
        "a version-1 session has no present lane"
    );
    assert_eq!(
        metric(
            &rx_reg,
            "telemetry_link_handshake_failures_total",
            &[("reason", "unsupported_version")]
        ),
        1.0,
        "one refused version-2 hello, then version 1"
    );
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_presents_sent_total", &[]),
        0.0
    );
    sender.shutdown(Duration::from_secs(5)).await;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
