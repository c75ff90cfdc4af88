//! Scenario 6: failover. Two receivers at two addresses (10.77.0.1 and
//! 10.77.0.3); the sender lists both in that order. The first is killed
//! (SIGKILL): the sender moves to the second. The first is restarted: the
//! sender moves back (it probes the preferred receiver every 30 s — the
//! library's `failback_after`, not a flag). No record may be lost; every
//! record is applied exactly once across both receivers, except what the
//! killed receiver had applied but not acknowledged (documented limit).
//!
//! Recovery time: from the kill until the second receiver had acknowledged
//! everything produced up to the kill. The failback time is in the notes.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    audit_source, positions, wait_acked, wait_produced, Ctx, Outcome, Stage, QUIC_PORT, RX_IP2,
    RX_METRICS_PORT,
};
use crate::netns::{Side, RX_IP};

/// Scenario name.
pub const NAME: &str = "6 failover A->B->A";

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    st.topo.add_address(Side::Receiver, RX_IP2)?;
    let mut a_spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state-a", "audit-a1.log");
    let b_spec = st.receiver_spec(RX_IP2, RX_METRICS_PORT + 10, "state-b", "audit-b.log");
    let mut a = st.start_receiver("rx-a1", &a_spec)?;
    let mut b = st.start_receiver("rx-b", &b_spec)?;
    let (rate, secs) = (2000u64, 70u64);
    let total = rate * secs;
    let tx_spec = st.sender_spec(
        &[
            SocketAddr::from((RX_IP, QUIC_PORT)),
            SocketAddr::from((RX_IP2, QUIC_PORT)),
        ],
        rate,
        total,
    );
    let mut tx = st.start_sender("tx", &tx_spec)?;
    wait_produced(&tx, rate * 8, Duration::from_secs(30))?;
    a.wait_metrics(Duration::from_secs(10), "sender on A", |e| {
        (e.value("telemetry_link_senders_connected", &[])? == 1.0).then_some(())
    })?;

    st.kill9(&mut a, Side::Receiver)?;
    let killed = Instant::now();
    let (last_at_kill, _) = positions(&tx)?;
    let on_b = b.wait_metrics(Duration::from_secs(30), "sender moved to B", |e| {
        (e.value("telemetry_link_senders_connected", &[])? == 1.0).then(Instant::now)
    })?;
    st.note(format!(
        "sender connected to B {:.1} s after A was killed",
        (on_b - killed).as_secs_f64()
    ));
    if let Ok(at) = wait_acked(&tx, last_at_kill, Duration::from_secs(30)) {
        st.row.recovery = Some(at - killed);
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    a_spec.audit_log = st.dir.join("audit-a2.log");
    drop(a);
    let mut a = st.start_receiver("rx-a2", &a_spec)?;
    let restarted = Instant::now();
    let back = a.wait_metrics(Duration::from_secs(50), "sender back on A", |e| {
        (e.value("telemetry_link_senders_connected", &[])? == 1.0).then(Instant::now)
    });
    match back {
        Ok(at) => st.note(format!(
            "sender back on A {:.1} s after A's restart (failback probe every 30 s)",
            (at - restarted).as_secs_f64()
        )),
        Err(e) => st.failures.push(format!("no failback to A: {e:#}")),
    }
    let b_applied = b
        .scrape()?
        .value(
            "telemetry_link_applied_seq",
            &[("sender", super::SENDER_ID)],
        )
        .unwrap_or(0.0);
    st.note(format!("B applied up to {b_applied} while A was away"));
    st.check(
        b_applied > last_at_kill as f64 * 0.5,
        "B applied nothing: the failover did not happen",
    );
    let audits = [
        audit_source(&st.dir.join("audit-a1.log"), "rx-a1", true),
        audit_source(&b_spec.audit_log, "rx-b", false),
        audit_source(&a_spec.audit_log, "rx-a2", false),
    ];
    let report = st.finish(
        &mut tx,
        &mut [&mut a, &mut b],
        &audits,
        total,
        Duration::from_secs(120),
    )?;
    Ok(st.outcome(Some(&report)))
}
