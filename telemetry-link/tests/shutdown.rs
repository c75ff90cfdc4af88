//! A shutdown against a receiver that stops acknowledging ends the session
//! at the deadline: the link does not go on in the background once
//! `shutdown` has reported what it left in the spool.

use std::{sync::Arc, time::Duration};

use telemetry_link::{Applied, Delivery, Handler, HandlerError};
use telemetry_test_support::{
    link::{start_receiver, start_sender},
    pki::TestPki,
};
use tokio::sync::{watch, Notify};

/// A handler that holds every batch until released.
struct Stall {
    entered: Notify,
    release: watch::Receiver<bool>,
}

impl Handler<String> for Stall {
    async fn handle(&self, _delivery: Delivery<String>) -> Result<Applied, HandlerError> {
        self.entered.notify_one();
        let mut release = self.release.clone();
        let _ = release.wait_for(|r| *r).await;
        Ok(Applied::all())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_session_at_the_deadline_when_acks_stall() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let (release, release_rx) = watch::channel(false);
    let stall = Arc::new(Stall {
        entered: Notify::new(),
        release: release_rx,
    });
    let (receiver, _) =
        start_receiver::<String, _>(&pki, 0, state.path(), stall.clone(), |_| {}).await?;
    let (sender, _) = start_sender::<String>(
        &pki,
        "cluster-a",
        &[receiver.local_addr()],
        spool.path(),
        |_| {},
    )
    .await?;
    let records: Vec<String> = (0..10).map(|i| format!("record {i}")).collect();
    sender.send_batch(&records).await?;
    tokio::time::timeout(Duration::from_secs(20), stall.entered.notified()).await?;

    let report = sender.shutdown(Duration::from_millis(500)).await;
    assert!(!report.drained, "{report:?}");
    assert_eq!(report.unacked, 10);
    assert!(!sender.status().borrow().connected);

    // The receiver applies the batch now: the stopped sender must not take
    // the acknowledgement any more.
    release.send_replace(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sender.stats().records, 10, "the link ran on after shutdown");
    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
