//! Scenario 2: a 30 s partition in the middle of the run (the veth link
//! down), then healing.
//!
//! Recovery time: from the link coming back until the sender's
//! acknowledged position reached what it had produced when the link came
//! back (reconnect + backlog drain).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{positions, wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT};
use crate::{netns::RX_IP, partition::Partition};

/// Scenario name.
pub const NAME: &str = "2 partition 30s";

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let (rate, secs) = (2000u64, 60u64);
    let total = rate * secs;
    let tx_spec = st.sender_spec(&[spec.listen], rate, total);
    let mut tx = st.start_sender("tx", &tx_spec)?;

    wait_produced(&tx, rate * 15, Duration::from_secs(60))?;
    let cut = Partition::start(&st.topo)?;
    let noticed = tx.wait_metrics(
        Duration::from_secs(20),
        "sender notices the partition",
        |e| (e.value("telemetry_sender_connected", &[])? == 0.0).then(Instant::now),
    );
    match noticed {
        Ok(at) => st.note(format!(
            "sender noticed the partition after {:.1} s",
            (at - cut.since).as_secs_f64()
        )),
        Err(e) => st
            .failures
            .push(format!("the partition was not noticed: {e:#}")),
    }
    let remaining = Duration::from_secs(30).saturating_sub(cut.since.elapsed());
    std::thread::sleep(remaining);
    let healed = cut.heal()?;
    let (last_at_heal, acked_at_heal) = positions(&tx)?;
    st.note(format!(
        "backlog at healing: {} records",
        last_at_heal - acked_at_heal
    ));
    if let Ok(at) = wait_acked(&tx, last_at_heal, Duration::from_secs(60)) {
        st.row.recovery = Some(at - healed);
    }
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(120),
    )?;
    Ok(st.outcome(Some(&report)))
}
