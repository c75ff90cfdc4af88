//! A receiver and senders as real processes, for process tests: started
//! on free loopback ports with the usual flags ([`crate::binaries`]),
//! waited for, scraped, and their log lines searched.
//!
//! Log lines start with an RFC 3339 UTC timestamp of fixed width (the
//! binaries' default format), so [`log_time`] values of two processes on
//! one machine compare as strings.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use telemetry_link::TlsFiles;
use tempfile::TempDir;

use crate::{
    binaries::{receiver_command, receiver_tls, sender_command, sender_tls},
    http::{get, wait_for},
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::{scrape, Exposition},
};

/// How long a process may take to open its endpoint.
const START: Duration = Duration::from_secs(30);

/// A running `telemetry-receiver` with its own state directory.
#[derive(Debug)]
pub struct RunningReceiver {
    /// The process.
    pub proc: ChildProcess,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    _state: TempDir,
}

impl RunningReceiver {
    /// Starts the workspace's receiver binary with `tls` and `extra` flags
    /// and waits for its `/metrics`.
    pub fn start(tls: &TlsFiles, extra: &[&str]) -> Result<Self> {
        let bin = workspace_binary("telemetry-receiver")
            .context("process tests run the receiver binary: cargo build -p telemetry-receiver")?;
        let state = tempfile::tempdir()?;
        let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let mut cmd = receiver_command(bin, quic, metrics, tls, state.path());
        cmd.args(extra);
        let receiver = Self {
            proc: ChildProcess::spawn("telemetry-receiver", cmd)?,
            quic,
            metrics,
            _state: state,
        };
        wait_endpoint(&receiver.proc, metrics)?;
        Ok(receiver)
    }

    /// Its `/metrics` page.
    pub fn scrape(&self) -> Result<Exposition> {
        scrape(self.metrics)
    }

    /// Its log lines containing every one of `needles`.
    pub fn lines(&self, needles: &[&str]) -> Vec<String> {
        lines(&self.proc, needles)
    }
}

/// A running `telemetry-sender`.
#[derive(Debug)]
pub struct RunningSender {
    /// The process.
    pub proc: ChildProcess,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

impl RunningSender {
    /// Starts the sender binary `bin` shipping to `receiver` with `tls`,
    /// its spool in `spool`, and `extra` flags; waits for its endpoint.
    pub fn start(
        bin: impl AsRef<std::ffi::OsStr>,
        receiver: SocketAddr,
        tls: &TlsFiles,
        spool: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let mut cmd: Command = sender_command(bin, receiver, tls, spool, metrics);
        cmd.args(extra);
        let sender = Self {
            proc: ChildProcess::spawn("telemetry-sender", cmd)?,
            metrics,
        };
        wait_endpoint(&sender.proc, metrics)?;
        Ok(sender)
    }

    /// Its `/metrics` page.
    pub fn scrape(&self) -> Result<Exposition> {
        scrape(self.metrics)
    }

    /// The value of its own series `name` with `matching` labels, if it
    /// has exactly one.
    pub fn metric(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        self.scrape().ok()?.value(name, matching)
    }

    /// Its log lines containing every one of `needles`.
    pub fn lines(&self, needles: &[&str]) -> Vec<String> {
        lines(&self.proc, needles)
    }
}

/// How long [`wait_metrics`] and a [`CertsReceiver`]'s start may take.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// A `telemetry-receiver` started with the files of a `telemetry-certs
/// init` directory ([`crate::binaries::certs_init`]) and a state directory
/// the test chooses.
#[derive(Debug)]
pub struct CertsReceiver {
    /// The process.
    pub proc: ChildProcess,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

/// Starts the receiver binary on free loopback ports with the receiver
/// files in `certs`, its state in `state` and `extra` flags; waits for
/// `/readyz`.
pub fn start_certs_receiver(certs: &Path, state: &Path, extra: &[&str]) -> Result<CertsReceiver> {
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    start_certs_receiver_at(certs, state, quic, metrics, extra)
}

/// [`start_certs_receiver`] at given addresses.
pub fn start_certs_receiver_at(
    certs: &Path,
    state: &Path,
    quic: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Result<CertsReceiver> {
    let bin = workspace_binary("telemetry-receiver")?;
    let mut cmd = receiver_command(bin, quic, metrics, &receiver_tls(certs), state);
    cmd.args(extra);
    let proc = ChildProcess::spawn("receiver", cmd)?;
    wait_for(PROCESS_LIMIT, "receiver /readyz", || {
        Ok((get(metrics, "/readyz", &[])?.status == 200).then_some(()))
    })
    .with_context(|| format!("receiver did not become ready:\n{}", proc.output()))?;
    Ok(CertsReceiver {
        proc,
        quic,
        metrics,
    })
}

/// Starts the sender binary as `id` (its files in `certs`) shipping to
/// `quic`, its spool in `spool`, with `extra` flags; returns it and its
/// `/metrics` address (not waited for).
pub fn start_certs_sender(
    certs: &Path,
    id: &str,
    quic: SocketAddr,
    spool: &Path,
    extra: &[&str],
) -> Result<(ChildProcess, SocketAddr)> {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let mut cmd = sender_command(
        workspace_binary("telemetry-sender")?,
        quic,
        &sender_tls(certs, id),
        spool,
        metrics,
    );
    cmd.args(extra);
    Ok((ChildProcess::spawn(&format!("sender-{id}"), cmd)?, metrics))
}

/// Polls the `/metrics` page at `addr` until `cond` holds (at most
/// [`PROCESS_LIMIT`]); returns that page.
pub fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&Exposition) -> bool,
) -> Result<Exposition> {
    wait_for(PROCESS_LIMIT, what, || {
        let e = scrape(addr)?;
        Ok(cond(&e).then_some(e))
    })
}

fn wait_endpoint(proc: &ChildProcess, metrics: SocketAddr) -> Result<()> {
    wait_for(START, "the process's /metrics", || {
        Ok(get(metrics, "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .with_context(|| format!("output:\n{}", proc.output()))
}

/// `proc`'s output lines containing every one of `needles`.
pub fn lines(proc: &ChildProcess, needles: &[&str]) -> Vec<String> {
    proc.output()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// The timestamp a log line starts with (RFC 3339, UTC, fixed width).
pub fn log_time(line: &str) -> Option<&str> {
    let first = line.split_whitespace().next()?;
    (first.len() >= 20 && first.ends_with('Z') && first.as_bytes()[4] == b'-').then_some(first)
}

/// Polls `f` every `every` until it returns `Some` or `limit` passes;
/// `what` names it in the error, which carries `context()`.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "timed out after {limit:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_found_and_compare_as_strings() {
        let a = "2026-11-30T10:00:01.000100Z  INFO x: y";
        let b = "2026-11-30T10:00:01.020000Z  WARN x: z";
        assert!(log_time(a).unwrap() < log_time(b).unwrap());
        assert_eq!(log_time("INFO no time"), None);
    }

    #[test]
    fn poll_returns_the_value_or_times_out() {
        let mut n = 0;
        let got = poll(
            Duration::from_secs(1),
            Duration::ZERO,
            "n",
            || {
                n += 1;
                (n == 3).then_some(n)
            },
            String::new,
        );
        assert_eq!(got.unwrap(), 3);
        let err = poll(
            Duration::ZERO,
            Duration::ZERO,
            "never",
            || None::<()>,
            || "ctx".into(),
        );
        assert!(err.unwrap_err().to_string().contains("never\nctx"));
    }
}
