//! The real binaries, run inside the namespaces.
//!
//! What it owns: locating `telemetry-sender` and `telemetry-receiver`
//! ([`Bins`]), turning a [`ReceiverSpec`]/[`SenderSpec`] into their flags,
//! starting them with `ip netns exec` (which `exec`s, so the child's pid is
//! the binary's pid and signals reach it directly), and the process
//! operations the scenarios need: SIGKILL, SIGTERM with an exit-status check,
//! SIGUSR1, metric scrapes, memory readings.
//!
//! What it guarantees: processes are killed when their [`Proc`] is dropped
//! (the namespace teardown kills stragglers too); each process's combined
//! output is kept in `<log_dir>/<name>.log` after it ends, for diagnosis;
//! the peak memory (`VmHWM`) is read just before every kill or stop, so the
//! table's peak covers processes that no longer exist. The children get no
//! `TELEMETRY_*` variables from the suite's own environment.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use telemetry_link::TlsFiles;
use telemetry_test_support::{process::ChildProcess, prom::Exposition};

use crate::{
    netns::Netns,
    rss::{self, Mem},
    scrape::{poll, Scraper},
};

/// Where the release binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `telemetry-sender`.
    pub sender: PathBuf,
    /// `telemetry-receiver`.
    pub receiver: PathBuf,
}

impl Bins {
    /// Finds both binaries in `dir`.
    pub fn locate(dir: &Path) -> Result<Self> {
        let find = |name: &str| {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found: build it first (cargo build --release -p telemetry-sender -p telemetry-receiver) or pass --bin-dir",
                    p.display()
                );
            }
            Ok(std::fs::canonicalize(&p)?)
        };
        Ok(Self {
            sender: find("telemetry-sender")?,
            receiver: find("telemetry-receiver")?,
        })
    }
}

/// How to run a receiver.
#[derive(Debug, Clone)]
pub struct ReceiverSpec {
    /// QUIC address.
    pub listen: SocketAddr,
    /// Metrics address (inside the namespace).
    pub metrics: SocketAddr,
    /// TLS files.
    pub tls: TlsFiles,
    /// State directory.
    pub state_dir: PathBuf,
    /// Audit log file.
    pub audit_log: PathBuf,
    /// `--allow-sender` identities.
    pub allow: Vec<String>,
}

impl ReceiverSpec {
    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--listen".into(),
            self.listen.to_string(),
            "--metrics-listen".into(),
            self.metrics.to_string(),
            "--ca".into(),
            self.tls.ca.display().to_string(),
            "--cert".into(),
            self.tls.cert.display().to_string(),
            "--key".into(),
            self.tls.key.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--audit-log".into(),
            self.audit_log.display().to_string(),
        ];
        for id in &self.allow {
            a.push("--allow-sender".into());
            a.push(id.clone());
        }
        a
    }
}

/// How to run a synthetic sender.
#[derive(Debug, Clone)]
pub struct SenderSpec {
    /// Receivers in failover order.
    pub receivers: Vec<String>,
    /// TLS server name override.
    pub server_name: Option<String>,
    /// TLS files.
    pub tls: TlsFiles,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// `--spool-max-bytes`.
    pub spool_max_bytes: Option<String>,
    /// `--fsync`.
    pub fsync: Option<String>,
    /// Metrics address (inside the namespace).
    pub metrics: SocketAddr,
    /// Synthetic series.
    pub series: u32,
    /// Records per second.
    pub rate: u64,
    /// Last sequence to produce.
    pub total: u64,
    /// `--bind`.
    pub bind: Option<SocketAddr>,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
}

impl SenderSpec {
    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--source".into(), "synthetic".into()];
        for r in &self.receivers {
            a.push("--receiver".into());
            a.push(r.clone());
        }
        let mut opt = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(flag.into());
                a.push(v);
            }
        };
        opt("--server-name", self.server_name.clone());
        opt("--ca", Some(self.tls.ca.display().to_string()));
        opt("--cert", Some(self.tls.cert.display().to_string()));
        opt("--key", Some(self.tls.key.display().to_string()));
        opt("--spool-dir", Some(self.spool_dir.display().to_string()));
        opt("--spool-max-bytes", self.spool_max_bytes.clone());
        opt("--fsync", self.fsync.clone());
        opt("--metrics-listen", Some(self.metrics.to_string()));
        opt("--synthetic-series", Some(self.series.to_string()));
        opt("--synthetic-rate", Some(self.rate.to_string()));
        opt("--synthetic-total", Some(self.total.to_string()));
        opt("--bind", self.bind.map(|b| b.to_string()));
        opt("--shutdown-timeout", self.shutdown_timeout.clone());
        a
    }
}

/// A running binary inside a namespace.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: ChildProcess,
    scraper: Scraper,
    log_path: PathBuf,
    /// Highest `VmHWM` read so far (KiB).
    pub peak_kb: u64,
    /// When it was started.
    pub started: Instant,
}

impl Proc {
    /// Starts `program args` in `ns`; `metrics` is where its `/metrics` is
    /// served inside the namespace. The log ends up in `log_dir/<name>.log`.
    pub fn spawn(
        ns: &Netns,
        name: &str,
        program: &Path,
        args: &[String],
        metrics: SocketAddr,
        log_dir: &Path,
    ) -> Result<Self> {
        let mut cmd = ns.command(program);
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TELEMETRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RELIABILITY_CHILD_LOG")
                .unwrap_or_else(|_| "info,quinn=warn,quinn_proto=warn".into()),
        );
        let child = ChildProcess::spawn(name, cmd)?;
        Ok(Self {
            name: name.to_owned(),
            child,
            scraper: Scraper::new(ns.name(), metrics),
            log_path: log_dir.join(format!("{name}.log")),
            peak_kb: 0,
            started: Instant::now(),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (while not reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Waits until `/metrics` answers.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.scraper.scrape().is_ok() {
                return Ok(());
            }
            if !self.child.is_running() {
                bail!(
                    "{} exited during start-up:\n{}",
                    self.name,
                    tail(&self.child.output(), 30)
                );
            }
            if start.elapsed() > limit {
                bail!(
                    "{} not serving /metrics after {limit:?}:\n{}",
                    self.name,
                    tail(&self.child.output(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One scrape of its metrics.
    pub fn scrape(&self) -> Result<Exposition> {
        self.scraper
            .scrape()
            .with_context(|| format!("scraping {}", self.name))
    }

    /// Polls its metrics until `f` says yes.
    pub fn wait_metrics<T>(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&Exposition) -> Option<T>,
    ) -> Result<T> {
        poll(limit, &format!("{}: {what}", self.name), || {
            Ok(f(&self.scrape()?))
        })
    }

    /// Memory now (and its peak so far), updating [`Proc::peak_kb`].
    pub fn mem(&mut self) -> Option<Mem> {
        let m = rss::read(self.pid()?)?;
        self.peak_kb = self.peak_kb.max(m.hwm_kb);
        Some(m)
    }

    /// SIGKILL (after reading its peak memory).
    pub fn kill9(&mut self) -> Result<()> {
        self.mem();
        self.child.kill_9()?;
        Ok(())
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.child.signal(sig)
    }

    /// SIGTERM and wait; fails unless it exits 0 in time.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.mem();
        let st = self.child.terminate(limit)?;
        if !st.success() {
            bail!(
                "{} exited with {st} after SIGTERM:\n{}",
                self.name,
                tail(&self.child.output(), 30)
            );
        }
        Ok(st)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// Where its log is kept.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.log_path, self.child.output());
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
