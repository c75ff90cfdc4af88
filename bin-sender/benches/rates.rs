//! The release binaries at fixed rates and at flood, one table: what a link
//! costs per side, and what it puts on the wire, per load.
//!
//! For each load a receiver and a synthetic sender run as real processes on
//! loopback (fresh spool and state directory, default flags otherwise):
//! 1 and 100 records/s over 100 series, 1,000 and 10,000 records/s over
//! 1,000 series, measured for `--seconds` (default 20) after the sender
//! connected and 3 s of warm-up; then a flood of `--flood-total` records
//! (default 2,000,000, 1,000 series, `--synthetic-rate 0`), measured from
//! the first record applied to the last (the receiver's `--audit-log`).
//!
//! Per load and build it prints:
//! - **CPU % of a core** per side: utime + stime from `/proc/PID/stat`;
//!   *CPU-s/120 s* is both sides together scaled to 120 s (the window of
//!   the Prometheus-agent comparison, `cargo bench -p
//!   telemetry-reliability --bench agent`);
//! - **syncs/s** per side: `telemetry_sender_spool_syncs_total`,
//!   `telemetry_link_state_syncs_total`;
//! - **link B/record**: `telemetry_sender_bytes_sent_total` (frames) per
//!   record applied;
//! - **datagrams/s** each way and **IP B/record** both ways together:
//!   counted by nftables on the loopback output hook (a table
//!   `telemetry_rates_bench` with one counter per direction on the run's
//!   UDP port; needs root), so builds without UDP counters are measured
//!   the same way; without `nft` the binaries' UDP counters
//!   (`telemetry_sender_udp_*_sent_total`, `telemetry_link_udp_*_sent_total{sender}`)
//!   plus 28 bytes of IPv4 and UDP header per datagram;
//! - **due→apply p50 / p99**: from the moment a record fell due at the exact
//!   rate (the source's start, read from the sender's log line "synthetic
//!   source starting", plus `value / rate`: the synthetic value is the
//!   record's sequence number) to the receiver's audit-log line for its
//!   delivery (written once applied). It includes the source's tick, the
//!   sender's linger (default 1 s) and the link; millisecond resolution.
//!
//! The loads: 1 and 100 records/s over 100 series; 1,000 records/s over
//! 1,000 series at the synthetic source's default 100 ms tick, and again
//! with `--synthetic-tick 1s` (each second's 1,000 records handed over at
//! once, as a 1 s scrape would; builds without that flag skip it); 10,000
//! records/s over 1,000 series; the flood. `--loads` picks some by their
//! label in the table, comma-separated (e.g. `--loads "flood ×1000"`).
//!
//! A figure a build does not export prints as `—`. `--old-bin-dir DIR` runs
//! every load with a second pair of binaries right after the first, so one
//! run compares two builds on the same machine state:
//!
//! ```text
//! cargo build --release -p telemetry-sender -p telemetry-receiver
//! cargo bench -p telemetry-sender --bench rates -- [--bin-dir DIR] \
//!     [--old-bin-dir DIR] [--seconds N] [--flood-total N]
//! ```
//!
//! `--bin-dir` defaults to the directory of this bench's own build
//! (`target/release`).

#![allow(clippy::too_many_lines)] // a bench is one measured scenario, read top to bottom

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use telemetry_link::TlsFiles;
use telemetry_test_support::{
    binaries::{receiver_command, sender_command},
    pki::TestPki,
    process::{
        clock_ticks, cpu_seconds, free_tcp_port, free_udp_port, help_offers, workspace_bin_dir,
        ChildProcess,
    },
    prom::{scrape, Exposition},
};

/// The sender's identity (the `sender` label at the receiver).
const ID: &str = "bench";
/// Warm-up after the sender connected, before a steady measurement.
const WARM_UP: Duration = Duration::from_secs(3);
/// IPv4 + UDP header bytes per datagram on loopback.
const IP_UDP_HEADER: f64 = 28.0;
/// The nftables table holding the bench's counters.
const NFT_TABLE: &str = "telemetry_rates_bench";

fn nft(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("nft").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets up a fresh table with counters both ways on UDP port `port`; false
/// when nftables is not usable here.
fn nft_count_port(port: u16) -> bool {
    let _ = nft(&["delete", "table", "inet", NFT_TABLE]);
    let chain = "{ type filter hook output priority 0 ; }";
    let (to, from) = (
        format!("udp dport {port} counter"),
        format!("udp sport {port} counter"),
    );
    nft(&["add", "table", "inet", NFT_TABLE]).is_ok()
        && nft(&["add", "chain", "inet", NFT_TABLE, "out", chain]).is_ok()
        && nft(&["add", "rule", "inet", NFT_TABLE, "out", &to]).is_ok()
        && nft(&["add", "rule", "inet", NFT_TABLE, "out", &from]).is_ok()
}

/// IP packets and bytes to the receiver's port and from it, so far.
#[derive(Clone, Copy)]
struct Wire {
    to: (f64, f64),
    from: (f64, f64),
}

fn nft_wire() -> Option<Wire> {
    let text = nft(&["list", "chain", "inet", NFT_TABLE, "out"]).ok()?;
    let counter = |dir: &str| -> Option<(f64, f64)> {
        let line = text.lines().find(|l| l.contains(dir))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let at = |key: &str| -> Option<f64> {
            let i = f.iter().position(|w| *w == key)?;
            f.get(i + 1)?.parse().ok()
        };
        Some((at("packets")?, at("bytes")?))
    };
    Some(Wire {
        to: counter("dport")?,
        from: counter("sport")?,
    })
}

/// One load: records per second (0 = flood) over `series` series.
#[derive(Clone, Copy)]
struct Load {
    rate: u64,
    series: u64,
    /// `--synthetic-tick`, when not the default (builds without the flag
    /// skip the load).
    tick: Option<&'static str>,
}

impl Load {
    /// The load's name in the table and in `--loads`.
    fn label(&self) -> String {
        let rate = if self.rate == 0 {
            "flood".to_owned()
        } else {
            format!("{}/s", self.rate)
        };
        match self.tick {
            Some(tick) => format!("{rate} ×{}, tick {tick}", self.series),
            None => format!("{rate} ×{}", self.series),
        }
    }
}

const LOADS: [Load; 6] = [
    Load {
        rate: 1,
        series: 100,
        tick: None,
    },
    Load {
        rate: 100,
        series: 100,
        tick: None,
    },
    Load {
        rate: 1_000,
        series: 1_000,
        tick: None,
    },
    Load {
        rate: 1_000,
        series: 1_000,
        tick: Some("1s"),
    },
    Load {
        rate: 10_000,
        series: 1_000,
        tick: None,
    },
    Load {
        rate: 0,
        series: 1_000,
        tick: None,
    },
];

struct Args {
    builds: Vec<(&'static str, PathBuf)>,
    seconds: u64,
    flood_total: u64,
    /// Labels of the loads to run (all when empty).
    loads: Vec<String>,
}

fn args() -> Result<Args> {
    let mut bin_dir = None;
    let mut old = None;
    let mut seconds = 20;
    let mut flood_total = 2_000_000;
    let mut loads = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            "--old-bin-dir" => old = Some(PathBuf::from(value()?)),
            "--seconds" => seconds = value()?.parse()?,
            "--flood-total" => flood_total = value()?.parse()?,
            "--loads" => loads = value()?.split(',').map(str::to_owned).collect(),
            _ => {} // cargo bench's own `--bench`
        }
    }
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => workspace_bin_dir()?,
    };
    let mut builds = vec![("new", bin_dir)];
    if let Some(old) = old {
        builds.push(("old", old));
    }
    Ok(Args {
        builds,
        seconds,
        flood_total,
        loads,
    })
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Both sides' counters at one moment.
struct Snapshot {
    at: Instant,
    wall_ms: f64,
    cpu_tx: f64,
    cpu_rx: f64,
    tx: Exposition,
    rx: Exposition,
    /// A baseline at the processes' start: every counter 0.
    zero: bool,
    wire: Option<Wire>,
}

impl Snapshot {
    fn take(run: &Running) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            wall_ms: unix_ms(),
            cpu_tx: cpu_seconds(run.sender_pid, run.ticks)?,
            cpu_rx: cpu_seconds(run.receiver_pid, run.ticks)?,
            tx: scrape(run.tx_metrics)?,
            rx: scrape(run.rx_metrics)?,
            zero: false,
            wire: if run.nft { nft_wire() } else { None },
        })
    }

    fn tx(&self, name: &str) -> Option<f64> {
        if self.zero {
            return Some(0.0);
        }
        self.tx.value(name, &[])
    }

    fn rx(&self, name: &str) -> Option<f64> {
        if self.zero {
            return Some(0.0);
        }
        self.rx.value(name, &[])
    }

    fn rx_of_sender(&self, name: &str) -> Option<f64> {
        if self.zero {
            return Some(0.0);
        }
        self.rx.value(name, &[("sender", ID)])
    }
}

/// A receiver and a sender running one load.
struct Running {
    _dir: tempfile::TempDir,
    audit: PathBuf,
    sender: ChildProcess,
    receiver: ChildProcess,
    sender_pid: u32,
    receiver_pid: u32,
    tx_metrics: SocketAddr,
    rx_metrics: SocketAddr,
    ticks: f64,
    /// nftables counts this run's datagrams.
    nft: bool,
}

fn start(
    bin_dir: &Path,
    tls: (&TlsFiles, &TlsFiles),
    load: Load,
    flood_total: u64,
) -> Result<Running> {
    let dir = tempfile::tempdir()?;
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let rx_metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let tx_metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let audit = dir.path().join("audit.log");
    let nft = nft_count_port(quic.port());
    let mut receiver = receiver_command(
        bin_dir.join("telemetry-receiver"),
        quic,
        rx_metrics,
        tls.0,
        &dir.path().join("state"),
    );
    receiver.arg("--audit-log").arg(&audit);
    let receiver = ChildProcess::spawn("receiver", receiver)?;
    // The sender's first attempt must find the receiver listening.
    let started = Instant::now();
    while scrape(rx_metrics).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the receiver did not start:\n{}", receiver.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut sender = sender_command(
        bin_dir.join("telemetry-sender"),
        quic,
        tls.1,
        &dir.path().join("spool"),
        tx_metrics,
    );
    sender
        .args(["--source", "synthetic", "--synthetic-series"])
        .arg(load.series.to_string())
        .arg("--synthetic-rate")
        .arg(load.rate.to_string());
    if load.rate == 0 {
        sender.arg("--synthetic-total").arg(flood_total.to_string());
    }
    if let Some(tick) = load.tick {
        sender.args(["--synthetic-tick", tick]);
    }
    let sender = ChildProcess::spawn("sender", sender)?;
    Ok(Running {
        sender_pid: sender.pid().context("sender pid")?,
        receiver_pid: receiver.pid().context("receiver pid")?,
        _dir: dir,
        audit,
        sender,
        receiver,
        tx_metrics,
        rx_metrics,
        ticks: clock_ticks(),
        nft,
    })
}

/// One delivery from the receiver's audit log.
struct Delivery {
    applied_ms: f64,
    first: u64,
    count: u64,
}

fn deliveries(audit: &Path) -> Result<Vec<Delivery>> {
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Delivery {
                applied_ms: f.first()?.parse().ok()?,
                first: f.get(2)?.parse().ok()?,
                count: f.get(3)?.parse().ok()?,
            })
        })
        .collect())
}

/// Unix milliseconds of an RFC 3339 UTC time (`2026-12-01T05:01:54.123456Z`).
fn parse_rfc3339_ms(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days as f64 * 24.0 + h) * 60.0 + min) * 60_000.0 + sec * 1000.0)
}

/// When the synthetic source started, from the sender's log.
fn source_start_ms(sender: &ChildProcess) -> Option<f64> {
    sender
        .output()
        .lines()
        .find(|l| l.contains("synthetic source starting"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(parse_rfc3339_ms)
}

/// p50 and p99 of due→apply, in ms, for the records applied in the window.
fn latency(run: &Running, rate: u64, window: (f64, f64)) -> Option<(f64, f64)> {
    let t0 = source_start_ms(&run.sender)?;
    let mut lat: Vec<f64> = Vec::new();
    for d in deliveries(&run.audit).ok()? {
        if d.applied_ms < window.0 || d.applied_ms > window.1 {
            continue;
        }
        for v in d.first..d.first + d.count {
            lat.push(d.applied_ms - (t0 + v as f64 * 1000.0 / rate as f64));
        }
    }
    if lat.is_empty() {
        return None;
    }
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    Some((at(0.50), at(0.99)))
}

/// One row of the table.
struct Row {
    records_per_s: f64,
    cpu_tx: f64,
    cpu_rx: f64,
    syncs_tx: Option<f64>,
    syncs_rx: Option<f64>,
    link_bytes_per_record: Option<f64>,
    dgrams_tx: Option<f64>,
    dgrams_rx: Option<f64>,
    ip_bytes_per_record: Option<f64>,
    latency: Option<(f64, f64)>,
}

fn row(a: &Snapshot, b: &Snapshot, records: f64, latency: Option<(f64, f64)>) -> Row {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let delta = |f: &dyn Fn(&Snapshot) -> Option<f64>| Some(f(b)? - f(a)?);
    let per_s = |f: &dyn Fn(&Snapshot) -> Option<f64>| delta(f).map(|d| d / secs);
    let dgrams_tx = delta(&|s| s.tx("telemetry_sender_udp_datagrams_sent_total"));
    let dgrams_rx = delta(&|s| s.rx_of_sender("telemetry_link_udp_datagrams_sent_total"));
    let bytes_tx = delta(&|s| s.tx("telemetry_sender_udp_bytes_sent_total"));
    let bytes_rx = delta(&|s| s.rx_of_sender("telemetry_link_udp_bytes_sent_total"));
    let (dgrams_tx, dgrams_rx, ip_bytes) = match (a.wire, b.wire) {
        (Some(wa), Some(wb)) => (
            Some(wb.to.0 - wa.to.0),
            Some(wb.from.0 - wa.from.0),
            Some(wb.to.1 - wa.to.1 + wb.from.1 - wa.from.1),
        ),
        _ => match (dgrams_tx, dgrams_rx, bytes_tx, bytes_rx) {
            (Some(dt), Some(dr), Some(bt), Some(br)) => (
                Some(dt),
                Some(dr),
                Some(bt + br + (dt + dr) * IP_UDP_HEADER),
            ),
            _ => (dgrams_tx, dgrams_rx, None),
        },
    };
    Row {
        records_per_s: records / secs,
        cpu_tx: (b.cpu_tx - a.cpu_tx) / secs * 100.0,
        cpu_rx: (b.cpu_rx - a.cpu_rx) / secs * 100.0,
        syncs_tx: per_s(&|s| s.tx("telemetry_sender_spool_syncs_total")),
        syncs_rx: per_s(&|s| s.rx("telemetry_link_state_syncs_total")),
        link_bytes_per_record: delta(&|s| s.tx("telemetry_sender_bytes_sent_total"))
            .map(|d| d / records),
        dgrams_tx: dgrams_tx.map(|d| d / secs),
        dgrams_rx: dgrams_rx.map(|d| d / secs),
        ip_bytes_per_record: ip_bytes.map(|b| b / records),
        latency,
    }
}

fn applied(s: &Snapshot) -> f64 {
    s.rx_of_sender("telemetry_link_applied_seq").unwrap_or(0.0)
}

fn wait_connected(run: &Running) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(e) = scrape(run.rx_metrics) {
            if e.value("telemetry_link_senders_connected", &[]) == Some(1.0) {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the sender did not connect:\n{}\n{}",
                run.sender.output(),
                run.receiver.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn steady(run: &Running, load: Load, seconds: u64) -> Result<Row> {
    wait_connected(run)?;
    std::thread::sleep(WARM_UP);
    let a = Snapshot::take(run)?;
    std::thread::sleep(Duration::from_secs(seconds));
    let b = Snapshot::take(run)?;
    let records = applied(&b) - applied(&a);
    let lat = latency(run, load.rate, (a.wall_ms, b.wall_ms));
    Ok(row(&a, &b, records, lat))
}

/// The flood: counters from the processes' start to the last record
/// applied; the rate from the first record applied to the last. (Counters
/// that only exist once a metric moved read as 0 at the start.)
fn flood(run: &Running, total: u64) -> Result<Row> {
    let a = Snapshot {
        at: Instant::now(),
        wall_ms: unix_ms(),
        cpu_tx: cpu_seconds(run.sender_pid, run.ticks)?,
        cpu_rx: cpu_seconds(run.receiver_pid, run.ticks)?,
        tx: Exposition::parse("")?,
        rx: Exposition::parse("")?,
        zero: true,
        wire: run.nft.then_some(Wire {
            to: (0.0, 0.0),
            from: (0.0, 0.0),
        }),
    };
    let started = Instant::now();
    // Watch the audit log, not /metrics: rendering a page costs the receiver.
    loop {
        let done: u64 = deliveries(&run.audit)?.iter().map(|d| d.count).sum();
        if done >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the flood did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = Snapshot::take(run)?;
    let mut r = row(&a, &b, total as f64, None);
    let d = deliveries(&run.audit)?;
    if let (Some(first), Some(last)) = (
        d.iter().map(|d| d.applied_ms).reduce(f64::min),
        d.iter().map(|d| d.applied_ms).reduce(f64::max),
    ) {
        r.records_per_s = total as f64 / ((last - first).max(1.0) / 1000.0);
    }
    Ok(r)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

fn print_row(load: Load, build: &str, r: &Row) {
    let what = load.label();
    let cpu_120 = (r.cpu_tx + r.cpu_rx) / 100.0 * 120.0;
    let lat = r.latency.map_or_else(
        || "—".to_owned(),
        |(p50, p99)| format!("{p50:.0} / {p99:.0}"),
    );
    println!(
        "| {what} | {build} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} / {} | {} | {lat} |",
        r.records_per_s,
        r.cpu_tx,
        r.cpu_rx,
        cpu_120,
        opt(r.syncs_tx, 1),
        opt(r.syncs_rx, 1),
        opt(r.link_bytes_per_record, 2),
        opt(r.dgrams_tx, 1),
        opt(r.dgrams_rx, 1),
        opt(r.ip_bytes_per_record, 2),
    );
}

fn main() -> Result<()> {
    let args = args()?;
    let pki = TestPki::new()?;
    let (rx_tls, tx_tls) = (pki.receiver()?, pki.sender(ID)?);
    println!("rates — {}", telemetry_test_support::machine());
    for (name, dir) in &args.builds {
        println!("  {name}: {}", dir.display());
    }
    println!(
        "steady loads measured {} s after connect + {} s warm-up; flood of {} records",
        args.seconds,
        WARM_UP.as_secs(),
        args.flood_total
    );
    println!();
    println!("| load (records/s × series) | build | records/s applied | CPU % sender | CPU % receiver | CPU-s per 120 s, both | syncs/s sender | syncs/s receiver | link B/record | datagrams/s → / ← | IP B/record, both ways | due→apply ms p50 / p99 |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let chosen = LOADS
        .into_iter()
        .filter(|load| args.loads.is_empty() || args.loads.contains(&load.label()));
    for load in chosen {
        for (name, dir) in &args.builds {
            if load.tick.is_some()
                && !help_offers(&dir.join("telemetry-sender"), "--synthetic-tick")?
            {
                println!(
                    "| {} | {name} | (no `--synthetic-tick` in this build) |||||||||||",
                    load.label()
                );
                continue;
            }
            let mut run = start(dir, (&rx_tls, &tx_tls), load, args.flood_total)?;
            let r = if load.rate == 0 {
                flood(&run, args.flood_total)?
            } else {
                steady(&run, load, args.seconds)?
            };
            print_row(load, name, &r);
            run.sender.terminate(Duration::from_secs(10))?;
            run.receiver.terminate(Duration::from_secs(10))?;
        }
    }
    let _ = nft(&["delete", "table", "inet", NFT_TABLE]);
    Ok(())
}
