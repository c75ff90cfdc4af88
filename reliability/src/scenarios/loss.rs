//! Scenario 1: 20% packet loss each way for the whole run (nftables on the
//! receiving side of each direction), plus 50 ms delay each way, 0–20 ms
//! jitter (which reorders datagrams) and 1% duplication through the fault
//! proxy. The sender talks to the proxy in its own namespace; the proxy
//! talks to the receiver over the lossy veth.
//!
//! Recovery time: from the moment the sender produced its last record until
//! that record was acknowledged (the drain tail under loss).

use std::{net::UdpSocket, sync::Arc, time::Duration};

use anyhow::Result;

use super::{wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT};
use crate::{
    loss::{dropped_packets, set_loss},
    netns::{enter_and_run, Side, RX_IP},
    proxy::{FaultProxy, Faults, ProxyConfig},
};

/// Scenario name.
pub const NAME: &str = "1 loss 20%+delay+reorder";

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    set_loss(&st.topo, Side::Receiver, 20)?;
    set_loss(&st.topo, Side::Sender, 20)?;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;

    let listen = st.topo.tx.run(|| UdpSocket::bind("127.0.0.1:0"))??;
    let ns = st.topo.tx.name().to_owned();
    let factory = Arc::new(move || {
        enter_and_run(&ns, || UdpSocket::bind("0.0.0.0:0")).map_err(std::io::Error::other)?
    });
    let faults = Faults {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        drop: 0.0,
        duplicate: 0.01,
    };
    let proxy = FaultProxy::start(
        listen,
        spec.listen,
        factory,
        ProxyConfig {
            faults,
            ..ProxyConfig::default()
        },
    )?;

    let (rate, secs) = (1000u64, 45u64);
    let total = rate * secs;
    let mut tx_spec = st.sender_spec(&[proxy.listen_addr()], rate, total);
    tx_spec.server_name = Some(RX_IP.to_string());
    let mut tx = st.start_sender("tx", &tx_spec)?;

    wait_produced(&tx, total, Duration::from_secs(secs + 60))?;
    let produced = std::time::Instant::now();
    let recovered = wait_acked(&tx, total, Duration::from_secs(180));
    if let Ok(at) = recovered {
        st.row.recovery = Some(at - produced);
    }
    let ps = proxy.stats();
    let (drop_rx, drop_tx) = (
        dropped_packets(&st.topo, Side::Receiver)?,
        dropped_packets(&st.topo, Side::Sender)?,
    );
    st.note(format!(
        "nftables dropped {drop_rx} packets towards the receiver and {drop_tx} towards the sender; proxy: {} datagrams, {} reordered, {} duplicated, {} overflow, peak queue {} B",
        ps.received, ps.reordered, ps.duplicated, ps.overflow, ps.peak_queued_bytes
    ));
    st.check(drop_rx > 0 && drop_tx > 0, "the loss rules dropped nothing");
    st.check(ps.reordered > 0, "the proxy reordered nothing");
    st.check(ps.duplicated > 0, "the proxy duplicated nothing");
    let sessions = super::count_log_lines(&rx.output(), &["sender connected"]);
    st.note(format!("sessions established under loss: {sessions}"));
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(180),
    )?;
    drop(proxy);
    Ok(st.outcome(Some(&report)))
}
