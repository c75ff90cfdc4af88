//! Scenario 8: connection migration. Mid-stream the sender's host gets a
//! second address (10.77.0.4), its original address (10.77.0.2) is removed
//! (the second one is promoted), and the sender is told to rebind its UDP
//! socket (SIGUSR1: a fresh port). The QUIC connection must continue on the
//! new path without a new handshake (no reconnect on the sender, one
//! session in the receiver's log) and without loss; an nftables counter in
//! the receiver's namespace proves packets arrive from the new address.
//!
//! Recovery time: from the address change until the first record produced
//! after it was acknowledged.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    count_log_lines, positions, wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT,
};
use crate::netns::{Side, Topology, RX_IP, TX_IP};

/// Scenario name.
pub const NAME: &str = "8 migration (new IP+port)";

const NEW_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 4);

fn packets_from_new_ip(st: &Stage) -> u64 {
    st.topo
        .rx
        .exec("nft", &["list", "table", "netdev", "relsuite_seen"])
        .map(|l| crate::loss::parse_counter(&l))
        .unwrap_or(0)
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let (rate, secs) = (2000u64, 30u64);
    let total = rate * secs;
    let tx_spec = st.sender_spec(&[spec.listen], rate, total);
    let mut tx = st.start_sender("tx", &tx_spec)?;
    wait_produced(&tx, rate * 8, Duration::from_secs(30))?;
    let reconnects = |tx: &crate::procs::Proc| -> Result<f64> {
        Ok(tx
            .scrape()?
            .value("telemetry_sender_reconnects_total", &[])
            .unwrap_or(0.0))
    };
    let before = reconnects(&tx)?;
    let rules = format!(
        "table netdev relsuite_seen {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority 0; policy accept;\n  ip saddr {NEW_IP} counter\n }}\n}}\n",
        Topology::iface(Side::Receiver)
    );
    st.topo.rx.exec_stdin("nft", &["-f", "-"], &rules)?;

    st.topo.tx.exec(
        "sysctl",
        &[
            "-qw",
            &format!(
                "net.ipv4.conf.{}.promote_secondaries=1",
                Topology::iface(Side::Sender)
            ),
        ],
    )?;
    st.topo.add_address(Side::Sender, NEW_IP)?;
    let moved = Instant::now();
    st.topo.del_address(Side::Sender, TX_IP)?;
    tx.signal(libc::SIGUSR1)?;
    let (last, _) = positions(&tx)?;
    // The first record produced after the move, acknowledged over the new path.
    match wait_acked(&tx, last + 1, Duration::from_secs(30)) {
        Ok(at) => st.row.recovery = Some(at - moved),
        Err(e) => st
            .failures
            .push(format!("stream did not continue after the move: {e:#}")),
    }
    wait_produced(&tx, (last + rate * 5).min(total), Duration::from_secs(30))?;
    let seen = packets_from_new_ip(&st);
    let after = reconnects(&tx)?;
    let rebound = count_log_lines(&tx.output(), &["SIGUSR1: UDP socket rebound"]);
    st.note(format!(
        "{seen} packets reached the receiver from {NEW_IP}; sender reconnects {before} -> {after}; rebind logged {rebound}x"
    ));
    st.check(
        seen > 0,
        format!("no packet came from the new address {NEW_IP}"),
    );
    st.check(
        after == before,
        format!("the sender reconnected ({before} -> {after}): new handshake instead of migration"),
    );
    st.check(rebound == 1, "the sender did not log the rebind");
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(60),
    )?;
    let sessions = count_log_lines(&rx.output(), &["sender connected"]);
    st.check(
        sessions == 1,
        format!("the receiver saw {sessions} sessions, want 1 (no new handshake)"),
    );
    Ok(st.outcome(Some(&report)))
}
