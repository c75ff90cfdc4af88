//! Scenario 7: a long outage at a high rate. The sender produces 20 000
//! records/s; after 10 s of normal operation the link goes down for the
//! outage (default 60 s — the CI equivalent, 1.2 M records, ~80 MB of spool;
//! `--full`: 600 s, 12 M records, ~830 MB), then heals.
//!
//! Checks: the sender's RSS during the outage stays within 20% of its RSS
//! when the outage began (the spool grows on disk, not in memory); the
//! spool really grew; after healing, the backlog present at healing is
//! acknowledged at least 5 times faster than it was produced (backlog /
//! drain time >= 5 x rate, measured while production continues).
//!
//! Recovery time: from healing until the backlog was acknowledged.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{positions, wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT};
use crate::{netns::RX_IP, partition::Partition, rss::RssSampler};

/// Scenario name.
pub const NAME: &str = "7 long outage @20k/s";

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let name = if ctx.full {
        "7 long outage 600s @20k/s"
    } else {
        "7 long outage 60s @20k/s"
    };
    let mut st = Stage::new(ctx, name)?;
    let outage = Duration::from_secs(if ctx.full { 600 } else { 60 });
    let rate = 20_000u64;
    let total = rate * (10 + outage.as_secs() + 15);
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let mut tx_spec = st.sender_spec(&[spec.listen], rate, total);
    tx_spec.spool_max_bytes = Some("4GiB".into());
    let mut tx = st.start_sender("tx", &tx_spec)?;
    let sampler = RssSampler::start(tx.pid().unwrap_or(0), Duration::from_millis(250));

    wait_produced(&tx, rate * 10, Duration::from_secs(40))?;
    let baseline = tx.mem().map(|m| m.rss_kb).unwrap_or(0);
    let cut = Partition::start(&st.topo)?;
    let mut spool_bytes = 0.0f64;
    while cut.since.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(e) = tx.scrape() {
            spool_bytes =
                spool_bytes.max(e.value("telemetry_sender_spool_bytes", &[]).unwrap_or(0.0));
        }
    }
    let outage_peak = sampler.max_between(cut.since, Instant::now()).unwrap_or(0);
    let healed = cut.heal()?;
    let (last, acked) = positions(&tx)?;
    let backlog = last - acked;
    let drained = wait_acked(&tx, last, Duration::from_secs(300));
    let growth = outage_peak as f64 / baseline.max(1) as f64;
    st.note(format!(
        "sender RSS {:.1} MiB at the outage's start, peak {:.1} MiB during it (x{growth:.2}); spool grew to {:.1} MiB",
        baseline as f64 / 1024.0,
        outage_peak as f64 / 1024.0,
        spool_bytes / 1048576.0
    ));
    st.check(
        growth <= 1.2,
        format!("sender RSS grew x{growth:.2} during the outage (limit x1.20)"),
    );
    st.check(
        spool_bytes > (rate * outage.as_secs() * 30) as f64,
        format!("the spool did not grow as expected ({spool_bytes} bytes)"),
    );
    match drained {
        Ok(at) => {
            let d = at - healed;
            st.row.recovery = Some(d);
            let drain_rate = backlog as f64 / d.as_secs_f64();
            st.note(format!(
                "backlog {backlog} records drained in {:.1} s: {:.0} records/s = {:.1} x the production rate",
                d.as_secs_f64(),
                drain_rate,
                drain_rate / rate as f64
            ));
            st.check(
                drain_rate >= 5.0 * rate as f64,
                format!("drain rate {drain_rate:.0}/s < 5 x {rate}/s"),
            );
        }
        Err(e) => st.failures.push(format!("backlog not drained: {e:#}")),
    }
    drop(sampler);
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(300),
    )?;
    Ok(st.outcome(Some(&report)))
}
