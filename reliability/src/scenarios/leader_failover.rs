//! Scenario 10: leader failover. Two `telemetry-sender` replicas with
//! `--leader-elect` and the default lease timings (15 s lease, 10 s renew
//! deadline, 2 s retry period) watch the test Kubernetes API server, which
//! listens inside the sender's namespace (`cluster`), and ship to a real
//! receiver across the veth link. A workload changes the cluster all the
//! time (HPA rescales with their Events, pods created and deleted, usage).
//! The leader is SIGKILLed [`KILLS`] times, alternating between the
//! replicas: after each kill the standby takes over, then the killed
//! replica is restarted on its spool and stands by.
//!
//! Per failover it measures, from the kill:
//! * **lease expiry**: until the standby logs that it leads (the lease
//!   duration as the standby counts it from its last read of a renewal;
//!   it reads again the moment that count runs out);
//! * **first present**: from then until the receiver logs the new leader's
//!   present state as applied;
//! * **visible**: until the receiver's `/metrics` shows a pod added at the
//!   kill (the present state, end to end, as a scraper sees it);
//! * the gap in `/metrics` updates around the kill.
//!
//! At the end it requires: every rescale the API server emitted counted
//! exactly once (`kube_horizontalpodautoscaler_scale_events_total`); no
//! series moved back, no deleted pod came back ([`monitor`]); no record
//! lost and none delivered twice (each replica acknowledged up to its last
//! sequence, the receiver's position of each replica's stream equals it,
//! the receiver reports nothing lost, records received + refused = records
//! sent, and the audit log holds every sequence of every stream once:
//! [`streams`]); `fenced` refusals counted alike on both ends (summed over
//! every sender process, read before each kill); each takeover in a higher
//! epoch; clean stops. The visible time is checked against what the
//! election rules allow (lease duration + one standby retry period with
//! jitter + 1 s for the present and the page). The goal, the present
//! applied at the receiver within the lease duration plus 3 s (18 s; lease
//! expiry + first present, or the visible time where the logs lack either),
//! is reported as met or missed.

mod cluster;
mod monitor;
mod streams;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use k8s_openapi::jiff::Timestamp;
use telemetry_test_support::http;

use self::{
    cluster::{Cluster, NAMESPACE, TICK},
    monitor::{gap_within, longest_gap, Monitor},
    streams::{tampered, verify_streams},
};
use super::{plain_log, Ctx, Outcome, Stage, QUIC_PORT, RX_METRICS_PORT, SENDER_ID};
use crate::{
    audit::AuditFile,
    netns::{enter_and_run, Side, RX_IP},
    procs::Proc,
    scrape::{poll, Scraper},
};

/// Scenario name.
pub const NAME: &str = "10 leader failover x6";
/// Leader kills.
const KILLS: usize = 6;
/// Pause before each kill (ms): uneven, so kills land at different points
/// of the leader's 2 s renewal cycle.
const GAPS_MS: [u64; KILLS] = [2300, 3700, 1100, 4500, 2900, 1700];
/// The goal: present state at the receiver within the lease duration + 3 s.
const GOAL: Duration = Duration::from_secs(18);
/// What the election rules allow: the standby counts the lease from its
/// read of the last renewal, which comes up to one retry period (2 s, +20 %
/// jitter) after it, and reads again when that count runs out; plus 1 s for
/// the present and the receiver's page.
const BOUND: Duration = Duration::from_millis(15_000 + 2_400 + 1_000);
/// Metrics ports of the replicas (inside the sender namespace).
const REPLICA_PORTS: [u16; 2] = [9465, 9466];
/// The cluster label (the replicas' shared certificate identity).
const CLUSTER: &str = SENDER_ID;

/// One sender replica: its spool and its current process.
#[derive(Debug)]
struct Replica {
    id: &'static str,
    metrics: SocketAddr,
    spool: PathBuf,
    proc: Option<Proc>,
    starts: u32,
    /// `fenced` refusals counted by its processes that were killed.
    fenced_before: f64,
}

/// One failover's figures.
#[derive(Debug, Clone)]
struct Takeover {
    from: &'static str,
    to: &'static str,
    /// Kill → the standby leads.
    lease: Option<Duration>,
    /// The standby leads → the receiver applied its present.
    present: Option<Duration>,
    /// Kill → the marker pod on `/metrics`.
    visible: Duration,
    killed: Instant,
}

impl Takeover {
    /// Kill → the receiver applied the new leader's present.
    fn applied(&self) -> Option<Duration> {
        Some(self.lease? + self.present?)
    }
}

fn unix_ms() -> i64 {
    telemetry_link::unix_ms()
}

/// Times (ms since the epoch) of the log lines in `text` with every one of
/// `needles`.
fn log_times(text: &str, needles: &[&str]) -> Vec<i64> {
    plain_log(text)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.split_whitespace().next()?.parse::<Timestamp>().ok())
        .map(Timestamp::as_millisecond)
        .collect()
}

fn since(from_ms: i64, to_ms: Option<i64>) -> Option<Duration> {
    to_ms.map(|t| Duration::from_millis(u64::try_from(t - from_ms).unwrap_or(0)))
}

impl Replica {
    fn new(st: &Stage<'_>, id: &'static str, port: u16) -> Self {
        Replica {
            id,
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            spool: st.dir.join(format!("spool-{id}")),
            proc: None,
            starts: 0,
            fenced_before: 0.0,
        }
    }

    fn args(&self, st: &Stage<'_>, kubeconfig: &str) -> Vec<String> {
        let tls = &st.ctx.tx_tls;
        let path = |p: &std::path::Path| p.display().to_string();
        [
            "--source=kube",
            "--leader-elect",
            "--lease-namespace=default",
            "--metrics-interval=2s",
            "--shutdown-timeout=10s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            format!("--kubeconfig={kubeconfig}"),
            format!("--replica-id={}", self.id),
            format!("--receiver={}", SocketAddr::from((RX_IP, QUIC_PORT))),
            format!("--ca={}", path(&tls.ca)),
            format!("--cert={}", path(&tls.cert)),
            format!("--key={}", path(&tls.key)),
            format!("--spool-dir={}", path(&self.spool)),
            format!("--metrics-listen={}", self.metrics),
        ])
        .collect()
    }

    fn start(&mut self, st: &Stage<'_>, kubeconfig: &str) -> Result<()> {
        let label = format!("tx-{}{}", self.id, self.starts);
        self.starts += 1;
        let mut p = Proc::spawn(
            &st.topo.tx,
            &label,
            &st.ctx.bins.sender,
            &self.args(st, kubeconfig),
            self.metrics,
            &st.dir,
        )?;
        p.wait_ready(Duration::from_secs(15))?;
        self.proc = Some(p);
        Ok(())
    }

    fn proc(&self) -> Result<&Proc> {
        self.proc
            .as_ref()
            .with_context(|| format!("replica {} is not running", self.id))
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(self.proc()?.scrape()?.sum(name, labels))
    }

    fn fenced(&self) -> Result<f64> {
        self.metric(
            "telemetry_sender_records_refused_total",
            &[("reason", "fenced")],
        )
    }

    /// Waits until it is ready (`/readyz`) and leads (or stands by).
    fn wait_role(&self, ns: &str, leader: bool, limit: Duration) -> Result<()> {
        let p = self.proc()?;
        let addr = self.metrics;
        let what = format!(
            "replica {} ready and {}",
            self.id,
            if leader { "leading" } else { "standing by" }
        );
        poll(limit, &what, || {
            let ready = enter_and_run(ns, || http::get(addr, "/readyz", &[]))??.status == 200;
            let leads = p.scrape()?.value("telemetry_sender_leader", &[]) == Some(1.0);
            Ok((ready && leads == leader).then_some(()))
        })
    }
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let cluster = Cluster::start(&st.topo.tx)?;
    let result = failovers(&mut st, &cluster, &mut rx);
    cluster.stop();
    let (mut replicas, takeovers) = result?;
    report_takeovers(&mut st, &takeovers);
    let audit = spec.audit_log.clone();
    finish(&mut st, &mut replicas, &mut rx, &audit)?;
    Ok(st.outcome(None))
}

/// The figures and checks of the failovers themselves.
fn report_takeovers(st: &mut Stage<'_>, takeovers: &[(Takeover, Option<Duration>)]) {
    let secs = |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    // The present follows the takeover within milliseconds: two decimals.
    let fine = |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    for (t, gap) in takeovers {
        st.note(format!(
            "kill {} -> {} leads after {} (lease expiry), present applied {} later; visible on /metrics {:.1} s after the kill; /metrics gap {}",
            t.from,
            t.to,
            secs(t.lease),
            fine(t.present),
            t.visible.as_secs_f64(),
            secs(*gap)
        ));
        st.check(
            t.visible <= BOUND,
            format!(
                "takeover {} -> {}: present visible {:.1} s after the kill, beyond the election's bound {:.1} s",
                t.from,
                t.to,
                t.visible.as_secs_f64(),
                BOUND.as_secs_f64()
            ),
        );
    }
    let worst = takeovers.iter().map(|(t, _)| t.visible).max();
    st.row.recovery = worst;
    let missed = takeovers
        .iter()
        .filter(|(t, _)| t.applied().unwrap_or(t.visible) > GOAL)
        .count();
    let span = |f: fn(&Takeover) -> Option<Duration>, digits: usize| {
        let v: Vec<Duration> = takeovers.iter().filter_map(|(t, _)| f(t)).collect();
        match (v.iter().min(), v.iter().max()) {
            (Some(a), Some(b)) => format!(
                "{:.digits$}–{:.digits$} s",
                a.as_secs_f64(),
                b.as_secs_f64()
            ),
            _ => "?".into(),
        }
    };
    st.note(format!(
        "takeover after kill -9 of the leader: lease expiry {}, first present {} after that; visible {} (goal: present applied <= {} s after the kill; {} of {} missed)",
        span(|t| t.lease, 1),
        span(|t| t.present, 2),
        span(|t| Some(t.visible), 1),
        GOAL.as_secs(),
        missed,
        takeovers.len()
    ));
}

/// Starts the replicas and the workload, runs the kills; returns the
/// replicas (both running) and each takeover with the `/metrics` gap
/// around its kill.
#[allow(clippy::type_complexity)]
fn failovers(
    st: &mut Stage<'_>,
    cluster: &Cluster,
    rx: &mut Proc,
) -> Result<([Replica; 2], Vec<(Takeover, Option<Duration>)>)> {
    let kubeconfig = st.dir.join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig)?;
    let kubeconfig = kubeconfig.display().to_string();
    let ns = st.topo.tx.name().to_owned();
    let mut replicas = [
        Replica::new(st, "a", REPLICA_PORTS[0]),
        Replica::new(st, "b", REPLICA_PORTS[1]),
    ];
    replicas[0].start(st, &kubeconfig)?;
    replicas[0].wait_role(&ns, true, Duration::from_secs(30))?;
    replicas[1].start(st, &kubeconfig)?;
    replicas[1].wait_role(&ns, false, Duration::from_secs(30))?;
    rx.wait_metrics(
        Duration::from_secs(30),
        "the cluster at the receiver",
        |e| {
            (e.count("kube_pod_info", &[("cluster", CLUSTER), ("pod", "web-1")]) == 1).then_some(())
        },
    )?;
    let scraper = Scraper::new(
        st.topo.rx.name(),
        SocketAddr::from(([127, 0, 0, 1], RX_METRICS_PORT)),
    );
    let monitor = Monitor::start(scraper, CLUSTER, &["web-", "marker-"]);
    let workload = cluster.workload();
    let mut takeovers = Vec::new();
    let mut epoch = replicas[0].metric("telemetry_sender_leader_epoch", &[])?;
    let mut leader = 0;
    for (k, gap) in GAPS_MS.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(*gap));
        let standby = 1 - leader;
        let t = kill_leader(st, cluster, &monitor, rx, &mut replicas, leader, k)?;
        let now = replicas[standby].metric("telemetry_sender_leader_epoch", &[])?;
        st.check(
            now > epoch,
            format!("takeover {k}: epoch {now} not above the previous term's {epoch}"),
        );
        epoch = now;
        replicas[leader].start(st, &kubeconfig)?;
        replicas[leader].wait_role(&ns, false, Duration::from_secs(30))?;
        takeovers.push(t);
        leader = standby;
    }
    let rescales = workload.stop();
    let end = Instant::now();
    scale_events_counted(st, rx, rescales)?;
    let seen = monitor.stop();
    report_monitor(st, &seen, end);
    let with_gaps = takeovers
        .into_iter()
        .map(|t: Takeover| {
            let gap = gap_within(&seen.ticker_changes, t.killed, t.killed + t.visible);
            (t, gap)
        })
        .collect();
    Ok((replicas, with_gaps))
}

/// The figures and checks of what the receiver's `/metrics` showed, the
/// workload having stopped at `end`.
fn report_monitor(st: &mut Stage<'_>, seen: &monitor::Seen, end: Instant) {
    st.note(format!(
        "/metrics polled every {} ms ({} pages, {} failed scrapes; pages are shared for up to 1 s) while the cluster changed every {} ms",
        monitor::EVERY.as_millis(),
        seen.pages,
        seen.failed,
        TICK.as_millis()
    ));
    for (what, changes) in [
        ("HPA ticker's replicas", &seen.ticker_changes),
        ("the kube_* content", &seen.content_changes),
    ] {
        if let Some((_, gap)) = longest_gap(changes, end) {
            st.note(format!(
                "longest gap in /metrics updates of {what}: {:.1} s",
                gap.as_secs_f64()
            ));
        }
    }
    st.note(format!(
        "series that moved back / deleted pods that came back: {}",
        seen.regressions.len()
    ));
    st.check(
        seen.regressions.is_empty(),
        format!("regressions at the receiver: {:?}", seen.regressions),
    );
}

/// Kills the leader, adds a marker pod, waits for it at the receiver and
/// reads the takeover's times from the logs.
fn kill_leader(
    st: &mut Stage<'_>,
    cluster: &Cluster,
    monitor: &Monitor,
    rx: &Proc,
    replicas: &mut [Replica; 2],
    leader: usize,
    k: usize,
) -> Result<Takeover> {
    let standby = 1 - leader;
    let (from, to) = (replicas[leader].id, replicas[standby].id);
    if replicas[leader].metric("telemetry_sender_leader", &[])? != 1.0 {
        bail!("kill {k}: replica {from} does not lead");
    }
    replicas[leader].fenced_before += replicas[leader].fenced()?;
    let mut p = replicas[leader]
        .proc
        .take()
        .context("the leader is not running")?;
    st.kill9(&mut p, Side::Sender)?;
    let (killed, killed_ms) = (Instant::now(), unix_ms());
    let marker = format!("marker-{k}");
    cluster.add_pod(&marker);
    let seen = poll(
        Duration::from_secs(60),
        &format!("{marker} at the receiver"),
        || Ok(monitor.first_seen(&marker)),
    )?;
    drop(p);
    let next = replicas[standby].proc()?;
    let leads = log_times(&next.output(), &["this replica leads"])
        .into_iter()
        .find(|&t| t >= killed_ms);
    let present = leads.and_then(|from_ms| {
        log_times(
            &rx.output(),
            &[
                "present state received ahead of the backlog",
                &format!("replica={to}"),
            ],
        )
        .into_iter()
        .find(|&t| t >= from_ms)
    });
    Ok(Takeover {
        from,
        to,
        lease: since(killed_ms, leads),
        present: leads.and_then(|l| since(l, present)),
        visible: seen.saturating_duration_since(killed),
        killed,
    })
}

/// Waits until the receiver counted `rescales` scale events of HPA `web`,
/// and checks it counts no more.
fn scale_events_counted(st: &mut Stage<'_>, rx: &Proc, rescales: u64) -> Result<()> {
    let labels = [("cluster", CLUSTER), ("horizontalpodautoscaler", "web")];
    let name = "kube_horizontalpodautoscaler_scale_events_total";
    let counted = || -> Result<f64> { Ok(rx.scrape()?.sum(name, &labels)) };
    let reached = poll(Duration::from_secs(30), "every rescale counted", || {
        Ok((counted()? >= rescales as f64).then_some(()))
    });
    // Anything late (a duplicate) arrives within the page's second.
    std::thread::sleep(Duration::from_millis(1500));
    let got = counted()?;
    st.note(format!(
        "scale events: the API server emitted {rescales} rescales of HPA {NAMESPACE}/web, the receiver counted {got}"
    ));
    st.check(
        reached.is_ok() && got == rescales as f64,
        format!(
            "scale events counted {got}, emitted {rescales} (duplicated: {})",
            got - rescales as f64
        ),
    );
    Ok(())
}

/// The end-of-scenario checks on records (see the module documentation).
fn finish(
    st: &mut Stage<'_>,
    replicas: &mut [Replica; 2],
    rx: &mut Proc,
    audit_log: &std::path::Path,
) -> Result<()> {
    let mut lasts = Vec::new();
    let mut fenced_senders = 0.0;
    for r in replicas.iter() {
        let p = r.proc()?;
        let last = p.wait_metrics(Duration::from_secs(30), "everything acknowledged", |e| {
            let last = e.value("telemetry_sender_last_seq", &[])?;
            (e.value("telemetry_sender_acked_seq", &[])? == last).then_some(last)
        });
        let last = match last {
            Ok(l) => l,
            Err(e) => {
                st.failures.push(format!("replica {}: {e:#}", r.id));
                r.metric("telemetry_sender_last_seq", &[])?
            }
        };
        let labels = [("sender", CLUSTER), ("replica", r.id)];
        let applied = rx.wait_metrics(
            Duration::from_secs(10),
            &format!("replica {}'s position", r.id),
            |e| {
                let a = e
                    .value("telemetry_link_applied_seq", &labels)
                    .unwrap_or(0.0);
                (a >= last).then_some(a)
            },
        );
        st.check(
            applied.as_ref().is_ok_and(|a| *a == last),
            format!(
                "replica {}: sent {last}, the receiver's position is {applied:?}",
                r.id
            ),
        );
        lasts.push(last as u64);
        fenced_senders += r.fenced_before + r.fenced()?;
    }
    let page = rx.scrape()?;
    let id = [("sender", CLUSTER)];
    let received = page.sum("telemetry_link_records_received_total", &id);
    let refused = page.sum("telemetry_link_records_rejected_total", &id);
    let fenced = page.sum(
        "telemetry_link_records_rejected_total",
        &[("sender", CLUSTER), ("reason", "fenced")],
    );
    let lost = page.sum("telemetry_link_records_lost_total", &id);
    let sent: u64 = lasts.iter().sum();
    st.note(format!(
        "records: replicas sent {lasts:?}; the receiver applied {received}, refused {refused} ({fenced} fenced; the senders counted {fenced_senders} fenced), lost {lost}"
    ));
    st.check(
        lost == 0.0,
        format!("the receiver reports {lost} records lost"),
    );
    st.check(
        received + refused == sent as f64,
        format!("received {received} + refused {refused} != sent {sent}"),
    );
    st.check(
        fenced == fenced_senders,
        format!("fenced: {fenced} at the receiver, {fenced_senders} at the senders"),
    );
    for r in replicas.iter_mut() {
        if let Some(mut p) = r.proc.take() {
            st.account(&mut p, Side::Sender);
            if let Err(e) = p.terminate(Duration::from_secs(20)) {
                st.failures.push(format!("replica {} stop: {e:#}", r.id));
            }
        }
    }
    st.account(rx, Side::Receiver);
    if let Err(e) = rx.terminate(Duration::from_secs(20)) {
        st.failures.push(format!("receiver stop: {e:#}"));
    }
    audit(st, audit_log, &lasts)
}

/// The audit-log check over both replicas' streams, with its self-check.
fn audit(st: &mut Stage<'_>, path: &std::path::Path, lasts: &[u64]) -> Result<()> {
    let log = AuditFile::load(path, "rx", false)?;
    let (removed, replayed) = tampered(&log.deliveries, CLUSTER);
    let blind = verify_streams(&removed, CLUSTER, lasts)
        .problems()
        .is_empty()
        || verify_streams(&replayed, CLUSTER, lasts)
            .problems()
            .is_empty();
    st.check(
        !blind,
        "self-check: the audit check did not notice a removed or replayed delivery",
    );
    let used = if st.ctx.sabotage {
        &removed
    } else {
        &log.deliveries
    };
    let report = verify_streams(used, CLUSTER, lasts);
    for p in report.problems() {
        st.failures.push(format!("audit: {p}"));
    }
    st.check(
        log.bad_lines == 0,
        format!("{} unparseable audit lines", log.bad_lines),
    );
    st.row.sent = Some(report.expected);
    st.row.applied = Some(report.delivered);
    st.row.lost = Some(report.missing);
    st.row.duplicates = report.duplicates.to_string();
    Ok(())
}
