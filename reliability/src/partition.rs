//! Network partitions: the veth link taken down and brought back.
//!
//! What it owns: `ip link set <veth> down/up` on the receiver's end (the
//! sender's end then loses carrier too: both directions are cut, and nothing
//! is delivered late — the packets are gone, as with a pulled cable).
//!
//! What it guarantees: a [`Partition`] heals the link when dropped, so a
//! failing scenario never leaves it down; [`Partition::heal`] waits until
//! the peers can ping each other again.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::netns::{sh, Side, Topology, RX_IP};

/// A cut link; healed on drop.
#[derive(Debug)]
pub struct Partition {
    rx_ns: String,
    tx_ns: String,
    healed: bool,
    /// When the link went down.
    pub since: Instant,
}

impl Partition {
    /// Takes the link down.
    pub fn start(topo: &Topology) -> Result<Self> {
        set_link(topo, false)?;
        Ok(Self {
            rx_ns: topo.rx.name().to_owned(),
            tx_ns: topo.tx.name().to_owned(),
            healed: false,
            since: Instant::now(),
        })
    }

    /// Brings the link back and waits until it carries packets; returns the
    /// instant it came back.
    pub fn heal(mut self) -> Result<Instant> {
        set_link_in(&self.rx_ns, true)?;
        self.healed = true;
        let at = Instant::now();
        let rx = RX_IP.to_string();
        while sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.tx_ns,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                &rx,
            ],
        )
        .is_err()
        {
            if at.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("{rx} still unreachable 10 s after healing the partition");
            }
        }
        Ok(at)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed {
            let _ = set_link_in(&self.rx_ns, true);
        }
    }
}

/// Sets the receiver end of the veth link up or down.
pub fn set_link(topo: &Topology, up: bool) -> Result<()> {
    set_link_in(topo.rx.name(), up)
}

fn set_link_in(rx_ns: &str, up: bool) -> Result<()> {
    sh(
        "ip",
        &[
            "-n",
            rx_ns,
            "link",
            "set",
            Topology::iface(Side::Receiver),
            if up { "up" } else { "down" },
        ],
    )?;
    Ok(())
}
