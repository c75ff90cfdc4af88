//! The sender's per-batch costs over real QUIC + mutual TLS on loopback:
//! records sent one by one linger into one batch, a flush sends at once and
//! reports the ack (or the link being down), concurrent sends share fsyncs
//! and keep their order, the interval policy syncs once per burst, and the
//! fsync, datagram and byte counters count.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use telemetry_link::{
    net::{Delivery, Flushed, Handler, HandlerError},
    Applied, FsyncPolicy, Sender,
};
use telemetry_test_support::{
    link::{eventually, metric, start_receiver, start_sender},
    pki::TestPki,
};

const SYNCS: &str = "telemetry_sender_spool_syncs_total";

/// Counts deliveries (one per batch) and records.
#[derive(Debug, Default)]
struct Batches {
    deliveries: AtomicU64,
    records: AtomicU64,
}

impl Handler<u64> for Batches {
    async fn handle(&self, d: Delivery<u64>) -> Result<Applied, HandlerError> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        self.records
            .fetch_add(d.records.len() as u64, Ordering::SeqCst);
        Ok(Applied::all())
    }
}

/// [`Sender::flush`], failing the test instead of hanging it.
async fn flush(sender: &Sender<u64>) -> anyhow::Result<Flushed> {
    Ok(tokio::time::timeout(Duration::from_secs(10), sender.flush()).await?)
}

async fn connected(sender: &Sender<u64>) -> anyhow::Result<()> {
    let mut status = sender.status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.connected)).await??;
    Ok(())
}

/// Connected, and the session running: records spooled before it started
/// are its backlog, which does not linger.
async fn session_running(sender: &Sender<u64>) -> anyhow::Result<()> {
    connected(sender).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sent_one_by_one_leave_together_after_the_linger() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let batches = Arc::new(Batches::default());
    let (receiver, _) =
        start_receiver::<u64, _>(&pki, 0, state.path(), batches.clone(), |_| {}).await?;
    let linger = Duration::from_secs(2);
    let (sender, _) = start_sender::<u64>(
        &pki,
        "lingering",
        &[receiver.local_addr()],
        spool.path(),
        |c| c.linger = linger,
    )
    .await?;
    session_running(&sender).await?;
    let first = Instant::now();
    for i in 0..10u64 {
        sender.send(&i).await?;
    }
    eventually(Duration::from_secs(10), "the records", || {
        batches.records.load(Ordering::SeqCst) == 10
    })
    .await?;
    let waited = first.elapsed();
    assert_eq!(
        batches.deliveries.load(Ordering::SeqCst),
        1,
        "ten sends, one batch"
    );
    assert!(
        waited >= linger - Duration::from_millis(100),
        "left after {waited:?}, before the linger"
    );
    assert!(sender.shutdown(Duration::from_secs(5)).await.drained);
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_sends_at_once_and_says_whether_it_was_acknowledged() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let batches = Arc::new(Batches::default());
    let (receiver, _) =
        start_receiver::<u64, _>(&pki, 0, state.path(), batches.clone(), |_| {}).await?;
    let (sender, _) = start_sender::<u64>(
        &pki,
        "flushing",
        &[receiver.local_addr()],
        spool.path(),
        |c| c.linger = Duration::from_secs(600),
    )
    .await?;
    session_running(&sender).await?;
    assert_eq!(
        flush(&sender).await?,
        Flushed::Acknowledged,
        "nothing spooled"
    );
    sender.send_batch(&[1, 2, 3]).await?;
    // The session is waiting for the batch to linger when the flush comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(batches.records.load(Ordering::SeqCst), 0, "lingering");
    let t = Instant::now();
    assert_eq!(flush(&sender).await?, Flushed::Acknowledged);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(batches.records.load(Ordering::SeqCst), 3);
    assert_eq!(sender.stats().records, 0, "acknowledged and removed");

    receiver.shutdown(Duration::from_secs(5)).await;
    let mut status = sender.status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected)).await??;
    sender.send(&4).await?;
    assert_eq!(flush(&sender).await?, Flushed::LinkDown);
    assert_eq!(
        sender.stats().records,
        1,
        "still spooled for the next session"
    );
    sender.shutdown(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_fsyncs_and_take_their_order_from_the_first_poll(
) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let spool = tempfile::tempdir()?;
    // Nothing listens there: this is about the spool only.
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse()?;
    let (sender, reg) =
        start_sender::<u64>(&pki, "concurrent", &[nowhere], spool.path(), |_| {}).await?;
    let before = metric(&reg, SYNCS, &[]);
    assert!(before > 0.0, "opening the spool synced it");
    let values: Vec<u64> = (100..116).collect();
    let seqs = futures_util::future::join_all(values.iter().map(|v| sender.send(v))).await;
    let seqs: Vec<u64> = seqs.into_iter().collect::<Result<_, _>>()?;
    assert_eq!(seqs, (1..=16).collect::<Vec<_>>(), "numbered in poll order");
    let syncs = metric(&reg, SYNCS, &[]) - before;
    assert!(
        (1.0..=8.0).contains(&syncs),
        "16 concurrent sends took {syncs} fsyncs"
    );
    // One after another, each send has its own fsync.
    let before = metric(&reg, SYNCS, &[]);
    for v in 0..4u64 {
        sender.send(&v).await?;
    }
    assert_eq!(metric(&reg, SYNCS, &[]) - before, 4.0);
    sender.shutdown(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_policy_syncs_after_a_burst_and_then_rests() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let spool = tempfile::tempdir()?;
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse()?;
    let (sender, reg) = start_sender::<u64>(&pki, "interval", &[nowhere], spool.path(), |c| {
        c.spool.fsync = FsyncPolicy::Interval(Duration::from_millis(200));
    })
    .await?;
    let before = metric(&reg, SYNCS, &[]);
    for v in 0..5u64 {
        sender.send(&v).await?;
    }
    assert_eq!(metric(&reg, SYNCS, &[]), before, "appends do not sync");
    eventually(Duration::from_secs(3), "the interval's fsync", || {
        metric(&reg, SYNCS, &[]) == before + 1.0
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        metric(&reg, SYNCS, &[]),
        before + 1.0,
        "nothing appended: no more fsyncs"
    );
    sender.shutdown(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_counters_follow_what_quic_reports_across_sessions() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let batches = Arc::new(Batches::default());
    let (receiver, _) =
        start_receiver::<u64, _>(&pki, 0, state.path(), batches.clone(), |_| {}).await?;
    let (sender, reg) =
        start_sender::<u64>(&pki, "udp", &[receiver.local_addr()], spool.path(), |_| {}).await?;
    connected(&sender).await?;
    sender.send_batch(&[1, 2, 3]).await?;
    assert_eq!(flush(&sender).await?, Flushed::Acknowledged);
    let quic = sender.quic_stats().map(|s| s.udp_tx).unwrap_or_default();
    let datagrams = metric(&reg, "telemetry_sender_udp_datagrams_sent_total", &[]);
    let bytes = metric(&reg, "telemetry_sender_udp_bytes_sent_total", &[]);
    assert!(quic.datagrams > 0);
    assert!(
        datagrams >= quic.datagrams as f64 && bytes >= quic.bytes as f64,
        "metrics {datagrams}/{bytes} behind QUIC's {quic:?}"
    );
    assert_eq!(sender.metrics().udp_sent().datagrams as f64, datagrams);

    // A second session adds to the totals; nothing is counted twice.
    let first = sender.metrics().udp_sent();
    let port = receiver.local_addr().port();
    receiver.shutdown(Duration::from_secs(5)).await;
    let (receiver, _) =
        start_receiver::<u64, _>(&pki, port, state.path(), batches.clone(), |_| {}).await?;
    eventually(Duration::from_secs(20), "a second session", || {
        *sender.connections().borrow() >= 2 && sender.status().borrow().connected
    })
    .await?;
    sender.send(&4).await?;
    assert_eq!(flush(&sender).await?, Flushed::Acknowledged);
    let second = sender.quic_stats().map(|s| s.udp_tx).unwrap_or_default();
    let total = sender.metrics().udp_sent();
    assert!(total.datagrams >= first.datagrams + second.datagrams);
    assert!(total.bytes >= first.bytes + second.bytes);
    sender.shutdown(Duration::from_secs(5)).await;
    receiver.shutdown(Duration::from_secs(5)).await;
    let after = sender.metrics().udp_sent();
    assert!(after.datagrams >= total.datagrams, "totals never go back");
    Ok(())
}
