//! Scenarios 3 and 4: the receiver, then the sender, killed with SIGKILL and
//! restarted 5 times while the sender streams.
//!
//! * Receiver kills: each restart uses the same state directory and a new
//!   audit log, so the audit check sees each process separately and can tell
//!   the documented crash window (a batch applied but not yet persisted when
//!   the process died, handed to the next process again) from real
//!   duplicates.
//! * Sender kills: each restart uses the same spool; the synthetic source
//!   continues after the spool's last sequence.
//!
//! Recovery time: the longest, over the 5 kills, from the kill until the
//! sender's acknowledged position reached what had been produced when the
//! replacement process was up (includes the restart itself).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    audit_source, positions, wait_acked, wait_produced, AuditSource, Ctx, Outcome, Stage,
    RX_METRICS_PORT,
};
use crate::netns::{Side, RX_IP};

/// Scenario 3 name.
pub const RECEIVER: &str = "3 receiver SIGKILL x5";
/// Scenario 4 name.
pub const SENDER: &str = "4 sender SIGKILL x5";

const KILLS: u32 = 5;
/// Uneven gaps between kills (ms), so kills land at different points of the
/// batch/persist cycle.
const GAPS_MS: [u64; 5] = [4100, 3300, 5700, 2900, 4600];

/// Scenario 3.
pub fn receiver(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, RECEIVER)?;
    let (rate, secs) = (2000u64, 45u64);
    let total = rate * secs;
    let mut spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx0.log");
    let mut rx = st.start_receiver("rx0", &spec)?;
    let mut audits: Vec<AuditSource> = Vec::new();
    let tx_spec = st.sender_spec(&[spec.listen], rate, total);
    let mut tx = st.start_sender("tx", &tx_spec)?;
    wait_produced(&tx, rate * 3, Duration::from_secs(30))?;
    let mut times: Vec<Duration> = Vec::new();
    for n in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(GAPS_MS[n as usize - 1]));
        st.kill9(&mut rx, Side::Receiver)?;
        let killed = Instant::now();
        audits.push(audit_source(&spec.audit_log, rx.name(), true));
        std::thread::sleep(Duration::from_millis(500));
        spec.audit_log = st.dir.join(format!("audit-rx{n}.log"));
        rx = st.start_receiver(&format!("rx{n}"), &spec)?;
        let (last, _) = positions(&tx)?;
        let at = wait_acked(&tx, last, Duration::from_secs(60))?;
        times.push(at - killed);
    }
    st.row.recovery = times.iter().max().copied();
    st.note(format!(
        "kill -> caught up (0.5 s down + restart + reconnect + drain): {}",
        times
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    audits.push(audit_source(&spec.audit_log, rx.name(), false));
    let how = super::plain_log(&tx.output())
        .lines()
        .filter(|l| l.contains("link session lost"))
        .map(|l| l.split("error=").nth(1).unwrap_or("?").trim().to_owned())
        .collect::<Vec<_>>();
    st.note(format!(
        "how the sender noticed each restart (session lost: error=...): {how:?}"
    ));
    let report = st.finish(
        &mut tx,
        &mut [&mut rx],
        &audits,
        total,
        Duration::from_secs(120),
    )?;
    Ok(st.outcome(Some(&report)))
}

/// Scenario 4.
pub fn sender(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, SENDER)?;
    let (rate, secs) = (2000u64, 45u64);
    let total = rate * secs;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let tx_spec = st.sender_spec(&[spec.listen], rate, total);
    let mut tx = st.start_sender("tx0", &tx_spec)?;
    wait_produced(&tx, rate * 3, Duration::from_secs(30))?;
    let mut times: Vec<Duration> = Vec::new();
    let mut last_before = 0;
    for n in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(GAPS_MS[n as usize - 1]));
        let (last, _) = positions(&tx)?;
        st.kill9(&mut tx, Side::Sender)?;
        let killed = Instant::now();
        tx = st.start_sender(&format!("tx{n}"), &tx_spec)?;
        let (resumed, _) = positions(&tx)?;
        st.check(
            resumed >= last && resumed >= last_before,
            format!("restart {n}: the spool's last sequence went back from {last} to {resumed}"),
        );
        last_before = resumed;
        let at = wait_acked(&tx, resumed, Duration::from_secs(60))?;
        times.push(at - killed);
    }
    st.row.recovery = times.iter().max().copied();
    st.note(format!(
        "kill -> restarted sender caught up (restart + reconnect + drain): {}",
        times
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let recovered_unclean = (0..=KILLS)
        .map(|n| std::fs::read_to_string(st.dir.join(format!("tx{n}.log"))).unwrap_or_default())
        .chain(std::iter::once(tx.output()))
        .filter(|l| super::count_log_lines(l, &["spool recovered from an unclean state"]) > 0)
        .count();
    st.note(format!(
        "sender restarts that repaired the spool (torn tail after SIGKILL): {recovered_unclean}"
    ));
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(120),
    )?;
    Ok(st.outcome(Some(&report)))
}
