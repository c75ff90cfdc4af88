//! A shared receiver under every attack at once, with default flags,
//! beside a legitimate sender.
//!
//! Attackers (senders and raw clients in the sender's namespace, HTTP
//! clients in the receiver's): a cardinality bomb (a synthetic sender whose
//! every record is a new series), an object bomb (a raw client sending
//! hundreds of thousands of `PodUpsert`s), four scrapers that never read
//! and 300 half-open HTTP connections, a flood of handshakes without a
//! certificate, and a sender whose certificate is revoked (CRL updated,
//! SIGHUP) halfway.
//!
//! The goal it checks: receiver peak RSS ≤ 256 MB; every legitimate record
//! applied exactly once (audit); every legitimate scrape answered within
//! 1 s; every legitimate connect accepted; the revoked sender's session
//! closed and its reconnects refused. The bombs' streams must add up (sent
//! = applied + refused, refused told to the sender), with what was applied
//! within their budgets.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use telemetry_link::TlsFiles;

use super::{Ctx, Outcome, Stage, RX_METRICS_PORT, SENDER_ID, TX_METRICS_PORT};
use crate::{
    audit::AuditFile,
    netns::{Side, RX_IP},
    procs::Proc,
};
use attackers::{
    handshake_flood, http_pests, object_bomb, watch, FloodOutcome, ObjectBomb, Scrapes, HALF_OPEN,
    NON_READING,
};

mod attackers;

/// Scenario name.
pub const NAME: &str = "shared service (all attacks at once)";

const BOMB_SERIES: &str = "bomb-series";
const BOMB_OBJECTS: &str = "bomb-objects";
const REVOKED: &str = "revoked";
const PROBE: &str = "probe";
/// Records of the cardinality bomb (each a new series) and its rate.
const BOMB_RECORDS: u64 = 300_000;
const BOMB_RATE: u64 = 20_000;
/// The receiver's default budgets (`--budget-series`, `--budget-objects`).
const DEFAULT_BUDGET_SERIES: f64 = 50_000.0;
const DEFAULT_BUDGET_OBJECTS: u64 = 10_000;
const GOAL_RSS_KB: u64 = 256 * 1000;
const GOAL_SCRAPE: Duration = Duration::from_secs(1);

/// A synthetic sender of `id` with its own spool and metrics port.
fn start_sender(
    st: &mut Stage<'_>,
    id: &str,
    port: u16,
    (series, rate, total): (u32, u64, u64),
) -> Result<(Proc, TlsFiles)> {
    let listen = SocketAddr::from((RX_IP, super::QUIC_PORT));
    let mut spec = st.sender_spec(&[listen], rate, total);
    let tls = st.ctx.pki.sender(id)?;
    spec.tls = tls.clone();
    spec.spool_dir = st.dir.join(format!("spool-{id}"));
    spec.metrics = SocketAddr::from(([127, 0, 0, 1], port));
    spec.series = series;
    Ok((st.start_sender(id, &spec)?, tls))
}

/// Revokes `files`, has the receiver re-read its CRL and returns how long
/// the sender `tx` took to see its session closed.
fn revoke(ctx: &Ctx, rx: &Proc, tx: &Proc, files: &TlsFiles) -> Result<Duration> {
    ctx.pki.revoke(files)?;
    let t = Instant::now();
    rx.signal(libc::SIGHUP)?;
    tx.wait_metrics(
        Duration::from_secs(10),
        "revoked sender disconnected",
        |e| (e.value("telemetry_sender_connected", &[])? == 0.0).then_some(()),
    )?;
    Ok(t.elapsed())
}

/// Which attacks a row runs.
#[derive(Debug, Clone, Copy, Default)]
struct Attacks {
    /// The cardinality bomb and the object bomb.
    bombs: bool,
    /// Non-reading scrapers and half-open HTTP connections.
    http: bool,
    /// The handshake flood (with the legitimate connects beside it).
    flood: bool,
    /// The sender revoked halfway.
    revoke: bool,
}

/// A row of the suite: number, key, name, function.
pub type Row = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Ctx) -> Result<Outcome>,
);

/// This module's rows, each attack alone and then all at once.
pub const ROWS: [Row; 5] = [
    ("11", "bombs", BOMBS, bombs),
    ("12", "http-pests", HTTP, http),
    ("13", "handshake-flood", FLOOD, flood),
    ("14", "revoked-sender", REVOKE, revoked),
    ("15", "shared-service", NAME, run),
];

/// Row name: the two bombs beside a legitimate sender.
pub const BOMBS: &str = "cardinality and object bombs";
/// Row name: HTTP clients that do not finish.
pub const HTTP: &str = "4 non-reading scrapers, 300 half-open HTTP";
/// Row name: the handshake flood.
pub const FLOOD: &str = "handshake flood without a certificate";
/// Row name: the revoked sender.
pub const REVOKE: &str = "revoked sender (CRL, SIGHUP)";

/// The bombs beside a legitimate sender.
pub fn bombs(ctx: &Ctx) -> Result<Outcome> {
    let only = Attacks {
        bombs: true,
        ..Attacks::default()
    };
    attack(ctx, BOMBS, only)
}

/// Non-reading scrapers and half-open HTTP connections.
pub fn http(ctx: &Ctx) -> Result<Outcome> {
    let only = Attacks {
        http: true,
        ..Attacks::default()
    };
    attack(ctx, HTTP, only)
}

/// The handshake flood.
pub fn flood(ctx: &Ctx) -> Result<Outcome> {
    let only = Attacks {
        flood: true,
        ..Attacks::default()
    };
    attack(ctx, FLOOD, only)
}

/// The revoked sender.
pub fn revoked(ctx: &Ctx) -> Result<Outcome> {
    let only = Attacks {
        revoke: true,
        ..Attacks::default()
    };
    attack(ctx, REVOKE, only)
}

/// Every attack at once: the goal.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let all = Attacks {
        bombs: true,
        http: true,
        flood: true,
        revoke: true,
    };
    attack(ctx, NAME, all)
}

/// The processes of a row.
struct Cast {
    rx: Proc,
    tx: Proc,
    bomb: Option<Proc>,
    revoked: Option<(Proc, TlsFiles)>,
    audit_log: std::path::PathBuf,
}

/// Starts the receiver (default flags, a CRL), the legitimate sender and
/// the attacking senders `a` asks for.
fn cast(st: &mut Stage<'_>, a: Attacks, total: u64) -> Result<Cast> {
    let ctx = st.ctx;
    let mut spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    spec.allow = [SENDER_ID, BOMB_SERIES, BOMB_OBJECTS, REVOKED, PROBE]
        .map(String::from)
        .to_vec();
    let mut args = spec.args();
    args.extend(["--crl".into(), ctx.pki.crl_path().display().to_string()]);
    let mut rx = Proc::spawn(
        &st.topo.rx,
        "rx",
        &ctx.bins.receiver,
        &args,
        spec.metrics,
        &st.dir,
    )?;
    rx.wait_ready(Duration::from_secs(15))?;
    let tx_spec = st.sender_spec(&[spec.listen], RATE, total);
    let tx = st.start_sender("tx", &tx_spec)?;
    let bomb = if a.bombs {
        let bomb = (BOMB_RECORDS as u32, BOMB_RATE, BOMB_RECORDS);
        Some(start_sender(st, BOMB_SERIES, TX_METRICS_PORT + 1, bomb)?.0)
    } else {
        None
    };
    let revoked = if a.revoke {
        let (p, tls) = start_sender(st, REVOKED, TX_METRICS_PORT + 2, (10, 100, total / 10))?;
        p.wait_metrics(Duration::from_secs(15), "revoked sender connected", |e| {
            (e.value("telemetry_sender_connected", &[])? == 1.0).then_some(())
        })?;
        Some((p, tls))
    } else {
        None
    };
    Ok(Cast {
        rx,
        tx,
        bomb,
        revoked,
        audit_log: spec.audit_log,
    })
}

/// What happened during the attack.
struct Seen {
    scrapes: [Scrapes; 2],
    pests_refused: Option<usize>,
    closed: Option<Result<Duration>>,
    objects: Option<ObjectBomb>,
    flood: Option<FloodOutcome>,
}

/// Legitimate records per second, and seconds of them.
const RATE: u64 = 1000;
const SECS: u64 = 45;

/// Runs the attacks `a` beside a legitimate sender, as row `name`.
fn attack(ctx: &Ctx, name: &str, a: Attacks) -> Result<Outcome> {
    let mut st = Stage::new(ctx, name)?;
    let total = RATE * SECS;
    let mut c = cast(&mut st, a, total)?;
    let (objects_tls, probe_tls) = (ctx.pki.sender(BOMB_OBJECTS)?, ctx.pki.sender(PROBE)?);
    let ca = ctx.pki.ca_path();
    let metrics = SocketAddr::from(([127, 0, 0, 1], RX_METRICS_PORT));
    let pests = a
        .http
        .then(|| http_pests(&st.topo.rx, metrics))
        .transpose()?;
    let tx_ns = &st.topo.tx;
    let seen = std::thread::scope(|s| -> Result<Seen> {
        let objects = a
            .bombs
            .then(|| s.spawn(|| object_bomb(tx_ns, &ca, &objects_tls)));
        let flood = a
            .flood
            .then(|| s.spawn(|| handshake_flood(tx_ns, &ca, &probe_tls, Duration::from_secs(20))));
        let first = watch(&mut c.rx, Duration::from_secs(15));
        let closed = c
            .revoked
            .as_ref()
            .map(|(p, tls)| revoke(ctx, &c.rx, p, tls));
        let second = watch(&mut c.rx, Duration::from_secs(10));
        let joined = |what: &str| anyhow::anyhow!("{what} panicked");
        Ok(Seen {
            scrapes: [first, second],
            pests_refused: pests.as_ref().map(|p| p.1),
            closed,
            objects: objects
                .map(|h| h.join().map_err(|_| joined("object bomb"))?)
                .transpose()?,
            flood: flood
                .map(|h| h.join().map_err(|_| joined("flood"))?)
                .transpose()?,
        })
    })?;
    drop(pests);
    st.account(&mut c.rx, Side::Receiver);
    report_attack(&mut st, &c.rx, &seen)?;
    finish(st, c, total, seen.objects.as_ref())
}

/// Notes and checks of what happened during the attack.
fn report_attack(st: &mut Stage<'_>, rx: &Proc, seen: &Seen) -> Result<()> {
    for (when, s) in ["in the first 15 s", "in the last 10 s"]
        .iter()
        .zip(seen.scrapes.clone())
    {
        st.note(format!(
            "{} legitimate scrapes {when}: slowest {:.0} ms, {} failed{}",
            s.n,
            s.slowest.as_secs_f64() * 1e3,
            s.failed,
            s.error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
        st.check(
            s.failed == 0 && s.slowest <= GOAL_SCRAPE,
            format!("legitimate scrapes {when}: {s:?} (goal: all within 1 s)"),
        );
    }
    if let Some(refused) = seen.pests_refused {
        st.note(format!(
            "{NON_READING} non-reading scrapers and {HALF_OPEN} half-open HTTP connections opened, {refused} refused at connect"
        ));
    }
    match &seen.closed {
        Some(Ok(d)) => {
            let refused = rx.scrape()?.sum(
                "telemetry_link_handshake_failures_total",
                &[("reason", "revoked")],
            );
            st.note(format!(
                "revoked sender: session closed {:.0} ms after the CRL was updated and SIGHUP sent; {refused} reconnects refused as revoked",
                d.as_secs_f64() * 1e3
            ));
        }
        Some(Err(e)) => st.check(false, format!("revoked sender: {e:#}")),
        None => {}
    }
    if let Some(o) = &seen.objects {
        st.note(format!(
            "object bomb: {} PodUpserts in {:.1} s, {} refused (told in acks)",
            o.sent,
            o.took.as_secs_f64(),
            o.refused
        ));
    }
    if let Some(flood) = &seen.flood {
        let f = &flood.flood;
        st.note(format!(
            "handshake flood: {} started ({:.0}/s), {} completed on the client side; legitimate connects {}/{} accepted, slowest {:.0} ms beyond the 300 ms wait",
            f.started,
            f.rate(),
            f.completed,
            flood.accepted,
            flood.connects,
            flood.slowest.as_secs_f64() * 1e3
        ));
        st.check(
            flood.connects > 0 && flood.accepted == flood.connects,
            format!(
                "legitimate connects during the flood: {}/{} accepted",
                flood.accepted, flood.connects
            ),
        );
    }
    Ok(())
}

/// The legitimate sender's apply delay, from the audit log: each
/// delivery's newest record, applied at the line's time, against when the
/// sender's schedule (`rate` records a second) produced it, taking the
/// quickest delivery as zero. `(p50, p99, max)` in ms, by delivery.
fn apply_delays(files: &[AuditFile], sender: &str, rate: u64) -> Option<(f64, f64, f64)> {
    let offsets: Vec<f64> = files
        .iter()
        .flat_map(|f| &f.deliveries)
        .filter(|d| d.sender == sender)
        .map(|d| d.ms as f64 - (d.last() - 1) as f64 * 1000.0 / rate as f64)
        .collect();
    let zero = offsets.iter().copied().reduce(f64::min)?;
    let mut delays: Vec<f64> = offsets.iter().map(|o| o - zero).collect();
    delays.sort_by(f64::total_cmp);
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.99), at(1.0)))
}

/// Checks what the cardinality bomb left: settled, its budget held, its
/// refusals as counted. Returns its refused count.
fn settle_bomb(st: &mut Stage<'_>, bomb: &mut Proc) -> Result<u64> {
    let settled = bomb.wait_metrics(Duration::from_secs(120), "cardinality bomb settled", |e| {
        (e.value("telemetry_sender_acked_seq", &[])? as u64 == BOMB_RECORDS).then_some(())
    });
    st.check(
        settled.is_ok(),
        "the cardinality bomb was not settled within 120 s",
    );
    let refused = bomb
        .scrape()?
        .sum("telemetry_sender_records_refused_total", &[]) as u64;
    st.note(format!(
        "cardinality bomb: {BOMB_RECORDS} records of distinct series, {refused} refused"
    ));
    st.account(bomb, Side::Sender);
    if let Err(e) = bomb.terminate(Duration::from_secs(20)) {
        st.failures.push(format!("{} stop: {e:#}", bomb.name()));
    }
    Ok(refused)
}

/// Waits for the bombs and the legitimate sender to be settled, checks
/// budgets, audits every stream and the goal's RSS.
fn finish(
    mut st: Stage<'_>,
    mut c: Cast,
    total: u64,
    objects: Option<&ObjectBomb>,
) -> Result<Outcome> {
    let bomb_refused = c
        .bomb
        .as_mut()
        .map(|b| settle_bomb(&mut st, b))
        .transpose()?;
    if let Some((p, _)) = c.revoked.as_mut() {
        let still = p.scrape()?.value("telemetry_sender_connected", &[]);
        st.check(
            still == Some(0.0),
            format!("revoked sender connected: {still:?}"),
        );
        st.account(p, Side::Sender);
        if let Err(e) = p.terminate(Duration::from_secs(20)) {
            st.failures.push(format!("{} stop: {e:#}", p.name()));
        }
    }
    let e = c.rx.scrape().context("scraping the receiver")?;
    let used = |cluster: &str, budget: &str| {
        e.value(
            "telemetry_receiver_sender_budget_used",
            &[("cluster", cluster), ("budget", budget)],
        )
    };
    if c.bomb.is_some() {
        let (series, units) = (
            used(BOMB_SERIES, "sample_series"),
            used(BOMB_OBJECTS, "objects"),
        );
        st.note(format!(
            "budgets held: {BOMB_SERIES} {series:?} sample series, {BOMB_OBJECTS} {units:?} object units"
        ));
        st.check(
            series == Some(DEFAULT_BUDGET_SERIES),
            format!("{BOMB_SERIES} holds {series:?} series, want the budget"),
        );
        st.check(
            units == Some(DEFAULT_BUDGET_OBJECTS as f64),
            format!("{BOMB_OBJECTS} holds {units:?} object units, want the budget"),
        );
    }
    let report = st.finish_single(
        &mut c.tx,
        &mut c.rx,
        &c.audit_log,
        total,
        Duration::from_secs(120),
    )?;
    let files = vec![AuditFile::load(&c.audit_log, "rx", false)?];
    if let Some((p50, p99, max)) = apply_delays(&files, SENDER_ID, RATE) {
        st.note(format!(
            "legitimate sender: apply delay behind its schedule p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (quickest delivery = 0)"
        ));
    }
    if let Some(refused) = bomb_refused {
        st.audit_check(&files, BOMB_SERIES, BOMB_RECORDS, (0, refused));
    }
    if let Some(o) = objects {
        st.audit_check(&files, BOMB_OBJECTS, o.sent, (0, o.refused));
    }
    st.note(format!(
        "receiver peak RSS {} MB (goal ≤ {} MB)",
        st.peak_rx_kb / 1000,
        GOAL_RSS_KB / 1000
    ));
    st.check(
        st.peak_rx_kb <= GOAL_RSS_KB,
        format!("receiver peak RSS {} kB above the goal", st.peak_rx_kb),
    );
    Ok(st.outcome(Some(&report)))
}
