//! Packet loss with nftables (this kernel has no netem).
//!
//! What it owns: one `netdev` table per namespace whose ingress chain on the
//! veth interface drops `N`% of packets at random
//! (`numgen random mod 100 < N counter drop`). Rules sit on the *receiving*
//! side of each direction, so "20% each way" is a rule in each namespace.
//!
//! What it guarantees: [`set_loss`] replaces any previous rule (0 removes
//! it); [`dropped_packets`] reads the rule's counter so a scenario can prove
//! the loss really happened. The tables vanish with their namespace.
//! Note: veth passes GSO super-packets intact, so the unit of loss is one
//! skb (a QUIC sender's GSO batch), not always one datagram.

use anyhow::{Context, Result};

use crate::netns::{Side, Topology};

const TABLE: &str = "relsuite_loss";

/// Drops `percent`% of the packets arriving at `side`'s veth interface.
pub fn set_loss(topo: &Topology, side: Side, percent: u32) -> Result<()> {
    let ns = topo.ns(side);
    // Delete a previous table (ignore "does not exist").
    let _ = ns.exec("nft", &["delete", "table", "netdev", TABLE]);
    if percent == 0 {
        return Ok(());
    }
    let iface = Topology::iface(side);
    let rules = format!(
        "table netdev {TABLE} {{\n  chain ingress {{\n    type filter hook ingress device \"{iface}\" priority 0; policy accept;\n    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
    );
    ns.exec_stdin("nft", &["-f", "-"], &rules)
        .with_context(|| format!("installing {percent}% loss on {iface}"))?;
    Ok(())
}

/// Packets the loss rule on `side` dropped so far (0 without a rule).
pub fn dropped_packets(topo: &Topology, side: Side) -> Result<u64> {
    let out = match topo
        .ns(side)
        .exec("nft", &["list", "table", "netdev", TABLE])
    {
        Ok(o) => o,
        Err(_) => return Ok(0),
    };
    Ok(parse_counter(&out))
}

/// Sum of `counter packets N` in an `nft list` output.
pub fn parse_counter(listing: &str) -> u64 {
    let mut total = 0;
    let mut words = listing.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "counter" && words.peek() == Some(&"packets") {
            words.next();
            if let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok()) {
                total += n;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_counters() {
        let l = "table netdev relsuite_loss {\n chain ingress {\n numgen random mod 100 < 20 counter packets 42 bytes 5000 drop\n }\n}";
        assert_eq!(super::parse_counter(l), 42);
        assert_eq!(super::parse_counter("nothing"), 0);
    }
}
