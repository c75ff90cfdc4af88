//! Group commit over real QUIC: several senders pipelining many small
//! batches at once are made durable by far fewer state syncs than batches
//! (each session applies every frame waiting, waits once for durability
//! and acknowledges once; one sync covers every session), and the
//! receiver's per-sender UDP counters follow what QUIC sent.

use std::time::Duration;

use telemetry_test_support::{
    link::{assert_exactly_once, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_batches_from_many_senders_share_few_syncs() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, rx_reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |_| {}).await?;
    let addr = receiver.local_addr();
    let syncs_at_start = metric(&rx_reg, "telemetry_link_state_syncs_total", &[]);
    assert!(syncs_at_start > 0.0, "the start-up compaction syncs");

    const PER_SENDER: u64 = 1500;
    let ids = ["g1", "g2", "g3"];
    let mut senders = Vec::new();
    let mut spools = Vec::new();
    for id in ids {
        let spool = tempfile::tempdir()?;
        let (s, _) = start_sender::<u64>(&pki, id, &[addr], spool.path(), |c| {
            // One record per batch: every record is a frame of its own.
            c.batch_max_records = 1;
        })
        .await?;
        spools.push(spool);
        senders.push(s);
    }
    for s in &senders {
        let values: Vec<u64> = (1..=PER_SENDER).collect();
        s.send_batch(&values).await?;
    }
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    while senders.iter().any(|s| s.stats().acked_seq < PER_SENDER) {
        anyhow::ensure!(tokio::time::Instant::now() < limit, "not all acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ids {
        assert_exactly_once(collector.log(id).records.iter().map(|r| r.0), PER_SENDER);
    }
    let batches = (PER_SENDER * ids.len() as u64) as f64;
    let syncs = metric(&rx_reg, "telemetry_link_state_syncs_total", &[]) - syncs_at_start;
    eprintln!("{batches} batches, {syncs} state syncs");
    assert!(syncs >= 1.0);
    assert!(
        syncs * 4.0 <= batches,
        "{syncs} syncs for {batches} batches: commits are not grouped"
    );
    for id in ids {
        let datagrams = metric(
            &rx_reg,
            "telemetry_link_udp_datagrams_sent_total",
            &[("sender", id)],
        );
        let bytes = metric(
            &rx_reg,
            "telemetry_link_udp_bytes_sent_total",
            &[("sender", id)],
        );
        assert!(
            datagrams > 0.0 && bytes > datagrams * 20.0,
            "{id}: {datagrams} datagrams, {bytes} bytes"
        );
    }
    for s in &senders {
        assert!(s.shutdown(Duration::from_secs(10)).await.drained);
    }
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
