//! A present's records refused by the handler: counted by reason on the
//! receiver (with the present's result), never reported to the sender as
//! refused sequences, and the backlog's accounting stays exact beside them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use telemetry_link::RefusedReason;
use telemetry_test_support::{
    link::{eventually, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_refusals_are_counted_on_the_receiver_only() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    // Odd values are over the application's budget, wherever they come from.
    collector.refuse_when(|v| (v % 2 == 1).then_some(RefusedReason::Budget));
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let (sender, tx_reg) =
        start_sender::<u64>(&pki, "s1", &[receiver.local_addr()], spool.path(), |_| {}).await?;
    sender.send_batch(&[2, 3, 4]).await?;
    collector.wait_for("s1", 2, Duration::from_secs(30)).await?;

    let presents = |result: &str| {
        metric(
            &rx_reg,
            "telemetry_link_presents_total",
            &[("sender", "s1"), ("result", result)],
        )
    };
    sender.set_present(&[10, 11, 13])?;
    eventually(Duration::from_secs(30), "a partly refused present", || {
        presents("partly_refused") == 1.0
    })
    .await?;
    sender.set_present(&[21])?;
    eventually(Duration::from_secs(30), "a wholly refused present", || {
        presents("handler_refused") == 1.0
    })
    .await?;
    sender.set_present(&[30])?;
    eventually(Duration::from_secs(30), "an applied present", || {
        presents("applied") == 1.0
    })
    .await?;
    let log = collector.log("s1");
    let seen: Vec<(Vec<u64>, u64)> = log
        .presents
        .iter()
        .map(|p| (p.records.clone(), p.refused))
        .collect();
    assert_eq!(seen, vec![(vec![10], 2), (vec![], 1), (vec![30], 0)]);

    let budget = [("sender", "s1"), ("reason", "budget")];
    // One refused batch record plus three refused present records.
    assert_eq!(
        metric(&rx_reg, "telemetry_link_records_rejected_total", &budget),
        4.0
    );
    assert_eq!(
        metric(
            &rx_reg,
            "telemetry_link_present_records_rejected_total",
            &budget
        ),
        3.0
    );
    // The sender learns of the batch's refusal only.
    sender.send_batch(&[6]).await?;
    collector.wait_for("s1", 3, Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(30), "the batch settled", || {
        metric(&tx_reg, "telemetry_sender_acked_seq", &[]) == 4.0
    })
    .await?;
    assert_eq!(
        metric(
            &tx_reg,
            "telemetry_sender_records_refused_total",
            &[("reason", "budget")]
        ),
        1.0
    );
    sender.shutdown(Duration::from_secs(5)).await;
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
