//! The scenarios, and what they share: a [`Stage`] per scenario (fresh
//! namespaces, a work directory, process start-up with the suite's
//! certificates, peak-memory bookkeeping, the list of failed checks) and
//! [`Stage::finish`], the common end-of-scenario verification:
//!
//! 1. the sender's `acked_seq` reaches its `last_seq`, which is the known
//!    load `K`, and its spool is empty;
//! 2. the receiver's `applied_seq` is `K`; the records it reports lost equal
//!    the records the sender dropped by policy;
//! 3. the receiver's `telemetry_synthetic_value{series}` values are the last
//!    sequence of each series (the payload arrived intact);
//! 4. both processes stop cleanly on SIGTERM (exit 0);
//! 5. the audit logs of every receiver process contain each sequence in
//!    `1..=K` exactly once, except records dropped by policy, with
//!    duplicates classified (see [`crate::audit`]); the checker is also run
//!    on a sabotaged copy of the logs, which must fail, so a scenario can
//!    never pass because its check is blind.

pub mod bad_input;
pub mod failover;
pub mod kills;
pub mod leader_failover;
pub mod long_outage;
pub mod loss;
pub mod migration;
pub mod partition;
pub mod shared;
pub mod small_disk;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use telemetry_link::TlsFiles;
use telemetry_test_support::pki::TestPki;

use crate::{
    audit::{self, AuditFile, AuditReport},
    netns::{Side, Topology, RX_IP},
    procs::{Bins, Proc, ReceiverSpec, SenderSpec},
    table::{Row, Verdict},
};

/// The sender identity every scenario uses.
pub const SENDER_ID: &str = "s1";
/// QUIC port of receivers.
pub const QUIC_PORT: u16 = 4433;
/// Metrics port of the first receiver (inside its namespace).
pub const RX_METRICS_PORT: u16 = 9464;
/// Metrics port of the sender (inside its namespace).
pub const TX_METRICS_PORT: u16 = 9465;
/// Synthetic series per sender.
pub const SERIES: u32 = 10;
/// A second receiver address (failover).
pub const RX_IP2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// What every scenario gets.
#[derive(Debug)]
pub struct Ctx {
    /// The binaries.
    pub bins: Bins,
    /// The CA and certificates.
    pub pki: TestPki,
    /// Receiver certificate (valid for both receiver addresses).
    pub rx_tls: TlsFiles,
    /// The sender's certificate.
    pub tx_tls: TlsFiles,
    /// The run's work directory.
    pub work: PathBuf,
    /// `--full`: the 10-minute outage.
    pub full: bool,
    /// `--sabotage`: tamper with the audit check so every scenario must fail.
    pub sabotage: bool,
}

impl Ctx {
    /// Makes the certificates under a fresh CA.
    pub fn new(bins: Bins, work: PathBuf, full: bool, sabotage: bool) -> Result<Self> {
        let pki = TestPki::new()?;
        let rx_tls = pki.receiver_for(&[&RX_IP.to_string(), &RX_IP2.to_string()])?;
        let tx_tls = pki.sender(SENDER_ID)?;
        Ok(Self {
            bins,
            pki,
            rx_tls,
            tx_tls,
            work,
            full,
            sabotage,
        })
    }
}

/// What a scenario hands back.
#[derive(Debug)]
pub struct Outcome {
    /// The table row.
    pub row: Row,
    /// Measurements and explanations for the report.
    pub notes: Vec<String>,
    /// Failed checks (empty = pass).
    pub failures: Vec<String>,
}

/// The fixed parts of one scenario's run.
#[derive(Debug)]
pub struct Stage<'a> {
    /// Shared context.
    pub ctx: &'a Ctx,
    /// Scenario name.
    pub name: String,
    /// Its namespaces.
    pub topo: Topology,
    /// Its work directory.
    pub dir: PathBuf,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// Failed checks.
    pub failures: Vec<String>,
    /// Peak RSS over all sender processes (KiB).
    pub peak_tx_kb: u64,
    /// Peak RSS over all receiver processes (KiB).
    pub peak_rx_kb: u64,
    /// The row being filled.
    pub row: Row,
}

/// One receiver process's audit file, for the final check.
#[derive(Debug, Clone)]
pub struct AuditSource {
    /// The file.
    pub path: PathBuf,
    /// Its label.
    pub label: String,
    /// Whether that process was SIGKILLed.
    pub killed: bool,
}

impl<'a> Stage<'a> {
    /// Fresh namespaces and directory for `name`.
    pub fn new(ctx: &'a Ctx, name: &str) -> Result<Self> {
        let dir = ctx.work.join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir)?;
        let topo = Topology::create().context("creating the two-namespace topology")?;
        Ok(Self {
            ctx,
            name: name.to_owned(),
            topo,
            dir,
            notes: Vec::new(),
            failures: Vec::new(),
            peak_tx_kb: 0,
            peak_rx_kb: 0,
            row: Row::new(name),
        })
    }

    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// Adds a note.
    pub fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        println!("    [{}] {n}", self.name);
        self.notes.push(n);
    }

    /// A receiver spec on `ip:QUIC_PORT` with metrics on `metrics_port`,
    /// state in `state`, audit log `audit`.
    pub fn receiver_spec(
        &self,
        ip: Ipv4Addr,
        metrics_port: u16,
        state: &str,
        audit: &str,
    ) -> ReceiverSpec {
        ReceiverSpec {
            listen: SocketAddr::from((ip, QUIC_PORT)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            tls: self.ctx.rx_tls.clone(),
            state_dir: self.dir.join(state),
            audit_log: self.dir.join(audit),
            allow: vec![SENDER_ID.to_owned()],
        }
    }

    /// A synthetic sender spec towards `receivers`.
    pub fn sender_spec(&self, receivers: &[SocketAddr], rate: u64, total: u64) -> SenderSpec {
        SenderSpec {
            receivers: receivers.iter().map(|a| a.to_string()).collect(),
            server_name: None,
            tls: self.ctx.tx_tls.clone(),
            spool_dir: self.dir.join("spool"),
            spool_max_bytes: None,
            fsync: None,
            metrics: SocketAddr::from(([127, 0, 0, 1], TX_METRICS_PORT)),
            series: SERIES,
            rate,
            total,
            bind: None,
            shutdown_timeout: Some("10s".into()),
        }
    }

    /// Starts a receiver and waits for its metrics endpoint.
    pub fn start_receiver(&mut self, label: &str, spec: &ReceiverSpec) -> Result<Proc> {
        std::fs::create_dir_all(&spec.state_dir)?;
        let mut p = Proc::spawn(
            &self.topo.rx,
            label,
            &self.ctx.bins.receiver,
            &spec.args(),
            spec.metrics,
            &self.dir,
        )?;
        p.wait_ready(Duration::from_secs(15))?;
        Ok(p)
    }

    /// Starts a sender and waits for its metrics endpoint.
    pub fn start_sender(&mut self, label: &str, spec: &SenderSpec) -> Result<Proc> {
        let mut p = Proc::spawn(
            &self.topo.tx,
            label,
            &self.ctx.bins.sender,
            &spec.args(),
            spec.metrics,
            &self.dir,
        )?;
        p.wait_ready(Duration::from_secs(15))?;
        Ok(p)
    }

    /// Folds a process's peak memory into the scenario's.
    pub fn account(&mut self, p: &mut Proc, side: Side) {
        p.mem();
        match side {
            Side::Sender => self.peak_tx_kb = self.peak_tx_kb.max(p.peak_kb),
            Side::Receiver => self.peak_rx_kb = self.peak_rx_kb.max(p.peak_kb),
        }
    }

    /// SIGKILLs `p` (accounting its memory first).
    pub fn kill9(&mut self, p: &mut Proc, side: Side) -> Result<()> {
        self.account(p, side);
        p.kill9()
    }

    /// [`Stage::finish`] for the usual shape: one receiver process, never
    /// killed, whose audit log is `audit_log`.
    pub fn finish_single(
        &mut self,
        sender: &mut Proc,
        receiver: &mut Proc,
        audit_log: &Path,
        total: u64,
        drain_limit: Duration,
    ) -> Result<AuditReport> {
        self.finish(
            sender,
            &mut [receiver],
            &[audit_source(audit_log, "rx", false)],
            total,
            drain_limit,
        )
    }

    /// The common end of a scenario (see the module docs). `receivers` are
    /// the receiver processes still running, the one that should hold the
    /// final position first; `audits` every receiver process's audit log in
    /// start order. Returns the audit report.
    pub fn finish(
        &mut self,
        sender: &mut Proc,
        receivers: &mut [&mut Proc],
        audits: &[AuditSource],
        total: u64,
        drain_limit: Duration,
    ) -> Result<AuditReport> {
        // 1. Everything acknowledged, spool empty.
        let done = sender.wait_metrics(drain_limit, "all records acknowledged", |e| {
            let last = e.value("telemetry_sender_last_seq", &[])? as u64;
            let acked = e.value("telemetry_sender_acked_seq", &[])? as u64;
            let spooled = e.value("telemetry_sender_spool_records", &[])? as u64;
            (last == total && acked == last && spooled == 0).then_some(())
        });
        let e = sender.scrape()?;
        let last = e.value("telemetry_sender_last_seq", &[]).unwrap_or(-1.0) as i64;
        let acked = e.value("telemetry_sender_acked_seq", &[]).unwrap_or(-1.0) as i64;
        let spooled = e
            .value("telemetry_sender_spool_records", &[])
            .unwrap_or(-1.0) as i64;
        let dropped = e
            .value("telemetry_sender_records_dropped_total", &[])
            .unwrap_or(0.0) as u64;
        let refused = e.sum("telemetry_sender_records_refused_total", &[]) as u64;
        if let Err(err) = done {
            self.failures.push(format!(
                "sender did not finish: last_seq {last} (want {total}), acked_seq {acked}, spool records {spooled}: {err:#}"
            ));
        }
        self.row.sent = Some(last.max(0) as u64);
        // 2. Receiver position and loss accounting.
        let id = [("sender", SENDER_ID)];
        let mut lost_reported = 0u64;
        if let Some(first) = receivers.first() {
            let applied = first
                .wait_metrics(Duration::from_secs(10), "applied_seq == K", |e| {
                    (e.value("telemetry_link_applied_seq", &id)? as u64 == total).then_some(())
                })
                .is_ok();
            let e = first.scrape()?;
            let got = e.value("telemetry_link_applied_seq", &id).unwrap_or(-1.0);
            self.check(
                applied,
                format!("receiver applied_seq is {got}, want {total}"),
            );
            // 3. Payload integrity: the last value of every series.
            let mut wrong = Vec::new();
            for i in 0..u64::from(SERIES) {
                let want = last_value_of_series(total, u64::from(SERIES), i);
                let got = e.value(
                    "telemetry_synthetic_value",
                    &[("cluster", SENDER_ID), ("series", &i.to_string())],
                );
                if got != Some(want as f64) {
                    wrong.push(format!("series {i}: {got:?} != {want}"));
                }
            }
            self.check(
                wrong.is_empty(),
                format!("synthetic values wrong at the receiver: {wrong:?}"),
            );
        }
        for r in receivers.iter() {
            lost_reported += r.scrape()?.sum("telemetry_link_records_lost_total", &id) as u64;
        }
        self.check(
            lost_reported == dropped,
            format!("receivers report {lost_reported} records lost, the sender dropped {dropped}"),
        );
        // 4. Clean stops.
        self.account(sender, Side::Sender);
        if let Err(e) = sender.terminate(Duration::from_secs(20)) {
            self.failures.push(format!("sender stop: {e:#}"));
        }
        for r in receivers.iter_mut() {
            self.account(r, Side::Receiver);
            if let Err(e) = r.terminate(Duration::from_secs(20)) {
                self.failures.push(format!("{} stop: {e:#}", r.name()));
            }
        }
        // 5. Audit logs.
        let files: Vec<AuditFile> = audits
            .iter()
            .map(|a| AuditFile::load(&a.path, &a.label, a.killed))
            .collect::<Result<_>>()?;
        let report = self.audit_check(&files, SENDER_ID, total, (dropped, refused));
        self.row.applied = Some(report.applied);
        self.row.lost = Some(report.missing);
        self.row.duplicates = report.duplicates_cell();
        Ok(report)
    }

    /// Runs the audit check for `sender` (and the sabotage self-check),
    /// recording failures: `dropped` records the sender dropped by its
    /// spool cap, `refused` records it was told the receiver refused.
    pub fn audit_check(
        &mut self,
        files: &[AuditFile],
        sender: &str,
        total: u64,
        (dropped, refused): (u64, u64),
    ) -> AuditReport {
        let tampered = audit::without_a_delivery(files, sender);
        let replayed = audit::with_a_replay(files, sender);
        let blind = audit::verify(&tampered, sender, total)
            .problems(dropped, refused)
            .is_empty()
            || audit::verify(&replayed, sender, total)
                .problems(dropped, refused)
                .is_empty();
        self.check(!blind, format!("self-check: the audit check of {sender} did not notice a removed or replayed delivery"));
        let used = if self.ctx.sabotage { &tampered } else { files };
        let report = audit::verify(used, sender, total);
        for p in report.problems(dropped, refused) {
            self.failures.push(format!("audit ({sender}): {p}"));
        }
        if report.refused > 0 {
            self.note(format!(
                "audit ({sender}): sent {total} = applied {} + refused {} + lost {}",
                report.applied, report.refused, report.missing
            ));
        }
        if report.duplicates > 0 {
            self.note(format!(
                "audit ({sender}): {} duplicate applications: {} in the documented crash window ({} batch(es) of a killed receiver), {} unexplained",
                report.duplicates, report.crash_window, report.crash_window_batches, report.unexplained
            ));
        }
        report
    }

    /// Turns the stage into an outcome.
    pub fn outcome(mut self, report: Option<&AuditReport>) -> Outcome {
        self.row.rss_sender_kb = (self.peak_tx_kb > 0).then_some(self.peak_tx_kb);
        self.row.rss_receiver_kb = (self.peak_rx_kb > 0).then_some(self.peak_rx_kb);
        self.row.verdict = if !self.failures.is_empty() {
            Verdict::Fail
        } else if report.is_some_and(|r| r.duplicates > 0) {
            Verdict::PassDocumented
        } else {
            Verdict::Pass
        };
        Outcome {
            row: self.row,
            notes: self.notes,
            failures: self.failures,
        }
    }
}

/// The largest value `<= total` of series `i` when value `v` goes to series
/// `v mod n`.
pub fn last_value_of_series(total: u64, n: u64, i: u64) -> u64 {
    let r = total % n;
    if i <= r {
        total - (r - i)
    } else {
        total - (r + n - i)
    }
}

/// Sender metric helper: (last_seq, acked_seq).
pub fn positions(sender: &Proc) -> Result<(u64, u64)> {
    let e = sender.scrape()?;
    Ok((
        e.value("telemetry_sender_last_seq", &[]).unwrap_or(0.0) as u64,
        e.value("telemetry_sender_acked_seq", &[]).unwrap_or(0.0) as u64,
    ))
}

/// Waits until the sender's acked_seq reaches `target`; returns when.
pub fn wait_acked(sender: &Proc, target: u64, limit: Duration) -> Result<Instant> {
    sender.wait_metrics(limit, &format!("acked_seq >= {target}"), |e| {
        (e.value("telemetry_sender_acked_seq", &[])? as u64 >= target).then(Instant::now)
    })
}

/// Waits until the sender has produced at least `seq`.
pub fn wait_produced(sender: &Proc, seq: u64, limit: Duration) -> Result<()> {
    sender.wait_metrics(limit, &format!("last_seq >= {seq}"), |e| {
        (e.value("telemetry_sender_last_seq", &[])? as u64 >= seq).then_some(())
    })
}

/// Lines of a process log, with ANSI colour codes removed.
pub fn plain_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// How many log lines contain every one of `needles`.
pub fn count_log_lines(text: &str, needles: &[&str]) -> usize {
    plain_log(text)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// The audit path helper.
pub fn audit_source(path: &Path, label: &str, killed: bool) -> AuditSource {
    AuditSource {
        path: path.to_path_buf(),
        label: label.to_owned(),
        killed,
    }
}

/// Runs `f`, turning an error into a failed outcome for `name`.
pub fn guarded(name: &str, f: impl FnOnce() -> Result<Outcome>) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome {
            row: Row::new(name),
            notes: Vec::new(),
            failures: vec![format!("scenario could not complete: {e:#}")],
        },
        Err(_) => Outcome {
            row: Row::new(name),
            notes: Vec::new(),
            failures: vec!["scenario panicked".into()],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_values_per_series() {
        // values 1..=23 over 10 series: series 3 last got 23, series 4 got 14, series 0 got 20.
        assert_eq!(last_value_of_series(23, 10, 3), 23);
        assert_eq!(last_value_of_series(23, 10, 4), 14);
        assert_eq!(last_value_of_series(23, 10, 0), 20);
        assert_eq!(last_value_of_series(20, 10, 0), 20);
        assert_eq!(last_value_of_series(20, 10, 9), 19);
    }

    #[test]
    fn strips_colours() {
        let l = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m sender connected \u{1b}[3msender\u{1b}[0m\u{1b}[2m=\u{1b}[0mgood";
        assert_eq!(plain_log(l), "2026  INFO sender connected sender=good");
        assert_eq!(count_log_lines(l, &["sender connected", "sender=good"]), 1);
    }
}
