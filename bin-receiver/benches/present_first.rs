//! Time to the current state after a reconnect with a large backlog, with
//! the present-state lane and without it (`--no-present`), side by side.
//!
//! What it measures, per run, with the real binaries over loopback: a
//! synthetic sender (1,000 series, 50,000 records/s, still producing
//! throughout) builds a backlog of `BACKLOG` records (default 1,000,000)
//! while no receiver runs; then the receiver starts. From the moment the
//! receiver reports the sender connected, `/metrics` is polled every 20 ms:
//! *time to current state* is until every series shows a value at least as
//! new as the sender's newest record at that moment; *time to drain* is
//! until the receiver applied everything the sender had at that moment.
//! It also counts how often a series' value went down between two polls
//! (the synthetic values only grow, so that is a value moving back to an
//! older sample).
//!
//! Then the same two runs with the receiver also forwarding to a real
//! Prometheus on loopback (`--remote-write`; skipped when `prometheus` is
//! not installed).
//!
//! Build the binaries first, then run:
//! `cargo build --release -p telemetry-sender -p telemetry-certs && \
//!  cargo bench -p telemetry-receiver --bench present_first`
//! (`PRESENT_FIRST_BACKLOG=N` changes the backlog).

#![allow(clippy::too_many_lines)] // a bench is one measured scenario, read top to bottom

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use telemetry_test_support::{
    binaries::{certs_init, receiver_command, receiver_tls, sender_command, sender_tls},
    http::wait_for,
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::scrape,
    prometheus_server::PrometheusServer,
};

const SERIES: u64 = 1_000;
const RATE: u64 = 50_000;

struct Outcome {
    backlog: u64,
    /// Times a series' value on /metrics was lower than at the poll before.
    moved_back: u64,
    to_connect: Duration,
    to_current: Duration,
    to_drain: Duration,
}

fn run(certs: &Path, backlog: u64, present: bool, remote_write: Option<&str>) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let rx_metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let tx_metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let mut sender = sender_command(
        workspace_binary("telemetry-sender")?,
        quic,
        &sender_tls(certs, "bench"),
        &dir.path().join("spool"),
        tx_metrics,
    );
    sender
        .args(["--source", "synthetic", "--synthetic-series"])
        .arg(SERIES.to_string())
        .arg("--synthetic-rate")
        .arg(RATE.to_string());
    if !present {
        sender.arg("--no-present");
    }
    let _sender = ChildProcess::spawn("sender", sender)?;
    wait_for(Duration::from_secs(120), "the backlog", || {
        let e = scrape(tx_metrics)?;
        Ok((e
            .value("telemetry_sender_spool_records", &[])
            .unwrap_or(0.0)
            >= backlog as f64)
            .then_some(()))
    })?;

    let mut receiver = receiver_command(
        env!("CARGO_BIN_EXE_telemetry-receiver"),
        quic,
        rx_metrics,
        &receiver_tls(certs),
        &dir.path().join("state"),
    );
    if let Some(url) = remote_write {
        receiver.args(["--remote-write", url]);
    }
    let started = Instant::now();
    let _receiver = ChildProcess::spawn("receiver", receiver)?;
    // The reconnect: the sender retries with a backoff of at most 2 s.
    let (connected, target) = loop {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the sender did not connect");
        }
        if let Ok(e) = scrape(rx_metrics) {
            if e.value("telemetry_link_senders_connected", &[]) == Some(1.0) {
                let at = Instant::now();
                let newest = scrape(tx_metrics)?
                    .value("telemetry_sender_last_seq", &[])
                    .context("sender last seq")?;
                break (at, newest);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let backlog_at_connect = target as u64;
    // Series i's newest value at the reconnect is >= target - SERIES.
    let floor = target - SERIES as f64;
    let mut to_current = None;
    let mut last: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let mut moved_back = 0;
    let to_drain = loop {
        let e = scrape(rx_metrics)?;
        let values: Vec<(String, f64)> = e
            .find("telemetry_synthetic_value", &[("cluster", "bench")])
            .map(|s| (s.labels.get("series").cloned().unwrap_or_default(), s.value))
            .collect();
        for (series, value) in &values {
            if let Some(before) = last.insert(series.clone(), *value) {
                if *value < before {
                    moved_back += 1;
                }
            }
        }
        if to_current.is_none()
            && values.len() == SERIES as usize
            && values.iter().all(|(_, v)| *v >= floor)
        {
            to_current = Some(connected.elapsed());
        }
        let applied = e
            .value("telemetry_link_applied_seq", &[("sender", "bench")])
            .unwrap_or(0.0);
        if applied >= target {
            break connected.elapsed();
        }
        if connected.elapsed() > Duration::from_secs(600) {
            bail!("the backlog did not drain within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Outcome {
        backlog: backlog_at_connect,
        moved_back,
        to_connect: connected.duration_since(started),
        to_current: to_current.unwrap_or(to_drain),
        to_drain,
    })
}

fn main() -> Result<()> {
    let backlog: u64 = std::env::var("PRESENT_FIRST_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let certs = tempfile::tempdir()?;
    certs_init(certs.path(), &["bench"])?;

    println!("present_first — {}", telemetry_test_support::machine());
    println!(
        "synthetic sender: {SERIES} series at {RATE} records/s (still producing), backlog >= {backlog} records built with the receiver down"
    );
    let with = run(certs.path(), backlog, true, None)?;
    let without = run(certs.path(), backlog, false, None)?;
    let mut runs = vec![("present lane (default)", with), ("--no-present", without)];
    // The same with the receiver also forwarding to a real Prometheus
    // (remote write: every delivery is queued durably before its ack, so the
    // backlog drains slower).
    match PrometheusServer::remote_write_receiver(None)? {
        Some(prom) => {
            let url = prom.remote_write_url();
            runs.push((
                "remote write, present",
                run(certs.path(), backlog, true, Some(&url))?,
            ));
            runs.push((
                "remote write, --no-present",
                run(certs.path(), backlog, false, Some(&url))?,
            ));
        }
        None => println!("  (prometheus not installed: the remote-write runs are skipped)"),
    }
    for (name, o) in &runs {
        println!(
            "  {name:<28} backlog at reconnect {:>9} records; receiver start -> connected {:>6.2} s; connected -> current state {:>7.3} s; connected -> backlog drained {:>6.2} s; values that moved back {}",
            o.backlog,
            o.to_connect.as_secs_f64(),
            o.to_current.as_secs_f64(),
            o.to_drain.as_secs_f64(),
            o.moved_back
        );
    }
    for pair in runs.chunks(2) {
        if let [(with_name, with), (_, without)] = pair {
            println!(
                "  time to current state, {with_name}: {:.3} of the same run without the present lane",
                with.to_current.as_secs_f64() / without.to_current.as_secs_f64()
            );
        }
    }
    Ok(())
}
