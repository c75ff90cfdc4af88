//! Refused records over real QUIC and mutual TLS: records the handler
//! refuses, and samples of series beyond the receiver's interning budget or
//! label limits, are settled — acknowledged, counted by reason on both ends
//! alike, deleted from the spool, never delivered again — while the
//! connection stays up and the rest of the stream is applied.

use std::{sync::Arc, time::Duration};

use telemetry_link::{proto::batch::definition_cost, RefusedReason, Sample, SeriesKey};
use telemetry_test_support::{
    link::{
        assert_exactly_once, eventually, exported, metric, restart_receiver, start_receiver,
        start_sender, Collector,
    },
    pki::TestPki,
};

const REFUSED: &str = "telemetry_sender_records_refused_total";
const REJECTED: &str = "telemetry_link_records_rejected_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_handler_refuses_are_settled_on_both_ends_and_never_redelivered(
) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let collector = Collector::<u64>::new();
    // Every tenth record is over a budget, every 25th invalid.
    collector.refuse_when(|v| match v {
        v if v % 10 == 0 => Some(RefusedReason::Budget),
        v if v % 25 == 0 => Some(RefusedReason::Invalid),
        _ => None,
    });
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    let (sender, tx_reg) = start_sender::<u64>(&pki, "ref", &[addr], spool.path(), |_| {}).await?;
    // Exported at 0 from the start on the sender, on connect on the
    // receiver.
    eventually(Duration::from_secs(20), "connected", || {
        metric(&rx_reg, "telemetry_link_senders_connected", &[]) == 1.0
    })
    .await?;
    for reason in RefusedReason::ALL {
        let reason = reason.as_str();
        assert!(
            exported(&tx_reg, REFUSED, &[("reason", reason)]),
            "{reason}"
        );
        assert!(
            exported(&rx_reg, REJECTED, &[("sender", "ref"), ("reason", reason)]),
            "{reason}"
        );
    }
    const N: u64 = 5000;
    let values: Vec<u64> = (1..=N).collect();
    for chunk in values.chunks(250) {
        sender.send_batch(chunk).await?;
    }
    eventually(Duration::from_secs(30), "every record settled", || {
        collector.settled("ref") == N as usize
    })
    .await?;
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    let log = collector.log("ref");
    assert_eq!(log.order_violations, 0);
    assert_exactly_once(
        log.records
            .iter()
            .map(|r| r.0)
            .chain(log.refused.iter().map(|r| r.0)),
        N,
    );
    let budget = N / 10;
    let invalid = (1..=N).filter(|v| v % 25 == 0 && v % 10 != 0).count() as f64;
    for (reason, want) in [("budget", budget as f64), ("invalid", invalid)] {
        assert_eq!(metric(&tx_reg, REFUSED, &[("reason", reason)]), want);
        assert_eq!(
            metric(&rx_reg, REJECTED, &[("sender", "ref"), ("reason", reason)]),
            want
        );
    }
    // Sent = applied + refused; all of it acknowledged and out of the spool.
    let applied = metric(&rx_reg, "telemetry_link_records_received_total", &[]);
    assert_eq!(applied + budget as f64 + invalid, N as f64);
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_records_acked_total", &[]),
        N as f64
    );
    assert_eq!(sender.stats().records, 0);
    drop(sender);
    restart_both_and_go_on(&pki, receiver, &collector, state.path(), spool.path(), N).await
}

/// After a restart of both ends nothing is delivered again, and the stream
/// goes on after the `n` settled records.
async fn restart_both_and_go_on(
    pki: &TestPki,
    receiver: telemetry_link::Receiver,
    collector: &Arc<Collector<u64>>,
    state: &std::path::Path,
    spool: &std::path::Path,
    n: u64,
) -> anyhow::Result<()> {
    let addr = receiver.local_addr();
    receiver.shutdown(Duration::from_secs(5)).await;
    let (receiver, rx_reg) =
        restart_receiver::<u64, _>(pki, addr.port(), state, collector.clone(), |_| {}).await?;
    let (sender, _) = start_sender::<u64>(pki, "ref", &[addr], spool, |_| {}).await?;
    sender.send(&(n + 1)).await?;
    eventually(Duration::from_secs(30), "the next record", || {
        collector.settled("ref") == n as usize + 1
    })
    .await?;
    assert!(sender.shutdown(Duration::from_secs(10)).await.drained);
    assert_eq!(collector.log("ref").records.last(), Some(&(n + 1, n + 1)));
    assert_eq!(
        metric(&rx_reg, "telemetry_link_duplicates_dropped_total", &[]),
        0.0
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn series(name: &str, labels: usize) -> anyhow::Result<Arc<SeriesKey>> {
    let labels = (0..labels).map(|i| (format!("l{i}"), "v".to_string()));
    Ok(Arc::new(SeriesKey::new(name, labels)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_beyond_the_budget_are_refused_while_the_others_are_applied() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let collector = Collector::<Sample>::new();
    // Room for the definitions of three of the six narrow series; and at
    // most two labels per series.
    let narrow = (0..6)
        .map(|i| series(&format!("m{i}"), 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wide = series("wide", 3)?;
    let budget = 3 * definition_cost(&narrow[0]);
    let (receiver, rx_reg) =
        start_receiver::<Sample, _>(&pki, 0, state.path(), collector.clone(), |c| {
            c.limits.max_definition_bytes = budget;
            c.limits.max_labels_per_series = 2;
        })
        .await?;
    let addr = receiver.local_addr();
    let (sender, tx_reg) =
        start_sender::<Sample>(&pki, "big", &[addr], spool.path(), |_| {}).await?;

    const ROUNDS: u64 = 50;
    for round in 0..ROUNDS {
        let ts = 1_700_000_000_000 + round as i64 * 1000;
        let mut batch: Vec<Sample> = narrow
            .iter()
            .map(|k| Sample::new(k.clone(), ts, round as f64))
            .collect();
        batch.push(Sample::new(wide.clone(), ts, 1.0));
        sender.send_batch(&batch).await?;
    }
    // Drained: every sample acknowledged, applied or refused.
    assert!(sender.shutdown(Duration::from_secs(20)).await.drained);
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_records_acked_total", &[]),
        (ROUNDS * 7) as f64
    );

    let log = collector.log("big");
    // The first three series were interned and all their samples applied.
    assert_eq!(log.records.len(), ROUNDS as usize * 3);
    for (_, s) in &log.records {
        assert!(narrow[..3].contains(&s.series), "{:?}", s.series);
    }
    let last = log.records.last().map(|(_, s)| s.value);
    assert_eq!(last, Some((ROUNDS - 1) as f64));
    // The others never reached the handler; both ends count them alike.
    assert!(log.refused.is_empty());
    for (reason, want) in [("series_limit", ROUNDS * 3), ("label_limit", ROUNDS)] {
        assert_eq!(metric(&tx_reg, REFUSED, &[("reason", reason)]), want as f64);
        assert_eq!(
            metric(&rx_reg, REJECTED, &[("sender", "big"), ("reason", reason)]),
            want as f64
        );
    }
    // One connection throughout, no protocol error.
    assert_eq!(
        metric(&tx_reg, "telemetry_sender_reconnects_total", &[]),
        0.0
    );
    assert_eq!(
        metric(&rx_reg, "telemetry_link_protocol_errors_total", &[]),
        0.0
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
