//! Sender RSS and CPU while watching a large cluster (not a timed test),
//! alone or as a leader and a standby.
//!
//! `cargo bench -p telemetry-sender --bench kube_watch`
//! `KUBE_WATCH_REPLICAS=2 cargo bench -p telemetry-sender --bench kube_watch`
//!
//! Starts the test Kubernetes API server in this process with 10,000 pods
//! (50 namespaces × 20 Deployments × 10 pods, each with realistic metadata,
//! two containers with requests, status, managedFields) and 1,000
//! autoscaling/v2 HPAs (one per Deployment), plus metrics.k8s.io usage for
//! every pod; starts the release `telemetry-receiver` and the release
//! `telemetry-sender` (`--source kube --kubeconfig …`, otherwise production
//! defaults: metrics every 15 s, fsync per batch, log level info) as real
//! processes; waits until the sender is ready (first full lists shipped) and
//! its spool is drained; then applies changes through the API server at a
//! fixed rate for a measured window — pod status churn, label changes, phase
//! flips, HPA status updates with some rescales (+ SuccessfulRescale events),
//! pod deletes + replacements — sampling the sender's `/proc/PID/stat`
//! (utime + stime) and `/proc/PID/status` (VmRSS, VmHWM) every second.
//!
//! The test API server paginates lists (`limit`/`continue`) as a real one
//! does, so the sender's initial list arrives in pages of 500 pods, as in
//! production; metrics.k8s.io is listed whole, as metrics-server serves it.
//!
//! Prints the machine, the initial-list time, steady-state CPU in % of one
//! core (the window only, the initial list excluded), peak RSS (VmHWM), RSS
//! at the end, records/s shipped, each against the targets (≤ 64 MiB RSS,
//! ≤ 5 % of one core), next to kube-state-metrics' published guidance.
//!
//! With `KUBE_WATCH_REPLICAS=2` it runs two senders with `--leader-elect`
//! (default lease timings, one Lease in the test API server): the first
//! is started, leads and delivers its initial lists, then the second is
//! started and stands by (it watches, lists metrics, holds rescale events,
//! ships nothing). Both are sampled over the same window and printed side
//! by side, against the standby's targets (≤ 2 % of one core, peak RSS ≤
//! the leader's).
//!
//! Environment: `KUBE_WATCH_SECS` (window, default 60), `KUBE_WATCH_RATE`
//! (API writes per second, default 100), `KUBE_WATCH_PODS` (default 10000),
//! `KUBE_WATCH_HPAS` (default 1000), `KUBE_WATCH_METRICS_INTERVAL` (the
//! sender's `--metrics-interval`, default 15s), `KUBE_WATCH_POD_METRICS`
//! (`0`: serve no pod metrics, to see the metrics poll's share),
//! `KUBE_WATCH_SENDER_ENV`
//! (extra `NAME=VALUE` pairs, space-separated, for the sender processes: e.g.
//! `MALLOC_ARENA_MAX=2`, or heaptrack's `LD_PRELOAD=…/libheaptrack_preload.so
//! DUMP_HEAPTRACK_OUTPUT=/tmp/ht.raw` to see what the memory is).
//!
//! Both binaries must be release builds next to this bench's profile
//! directory (`target/release/`); `cargo bench` builds the sender, the
//! receiver needs `cargo build --release -p telemetry-receiver`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod cluster;
mod procstat;
mod senders;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use telemetry_link::TlsFiles;
use telemetry_test_support::{
    http::{get, wait_for},
    kube_api::{KubeApiServer, Resource, Verb},
    pki::TestPki,
    process::{free_tcp_port, free_udp_port, ChildProcess},
};

use self::{
    cluster::{set_metrics, Cluster, NAMESPACES},
    procstat::{clock_ticks, loadavg, release_binary},
    senders::{Figures, Launch, Sender, Window},
};

const TARGET_RSS_MIB: f64 = 64.0;
const TARGET_CPU_PERCENT: f64 = 5.0;
const TARGET_STANDBY_CPU_PERCENT: f64 = 2.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's settings (see the module documentation).
pub(crate) struct Settings {
    pub(crate) secs: u64,
    pub(crate) rate: usize,
    pub(crate) pods: usize,
    pub(crate) hpas: usize,
    pub(crate) metrics_interval: String,
    pub(crate) with_metrics: bool,
    pub(crate) replicas: usize,
    pub(crate) sender_env: String,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            secs: env_or("KUBE_WATCH_SECS", 60),
            rate: env_or("KUBE_WATCH_RATE", 100),
            pods: env_or("KUBE_WATCH_PODS", 10_000),
            hpas: env_or("KUBE_WATCH_HPAS", 1_000),
            metrics_interval: env_or("KUBE_WATCH_METRICS_INTERVAL", "15s".to_string()),
            with_metrics: env_or("KUBE_WATCH_POD_METRICS", 1u8) != 0,
            replicas: env_or("KUBE_WATCH_REPLICAS", 1usize).clamp(1, 2),
            sender_env: std::env::var("KUBE_WATCH_SENDER_ENV").unwrap_or_default(),
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Starts the receiver; returns it with its `/metrics` address.
fn start_receiver(bin: &Path, quic: SocketAddr, tls: &TlsFiles, dir: &Path) -> ChildProcess {
    let rmetrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(quic.to_string())
        .arg("--metrics-listen")
        .arg(rmetrics.to_string())
        .arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .arg("--state-dir")
        .arg(dir.join("receiver-state"));
    let receiver = ChildProcess::spawn("telemetry-receiver", cmd).unwrap();
    wait_for(Duration::from_secs(30), "receiver /metrics", || {
        Ok(get(rmetrics, "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .unwrap();
    receiver
}

/// Fills `server` with the cluster; prints the size of the pod list.
fn serve(server: &KubeApiServer, cluster: &Cluster, with_metrics: bool, built: Instant) {
    for (i, (_, pod)) in cluster.pods.iter().enumerate() {
        server.upsert_pod(pod);
        if with_metrics {
            set_metrics(server, pod, i);
        }
    }
    for (hpa, _) in &cluster.hpas {
        server.upsert_hpa(hpa);
    }
    let list_bytes = serde_json::to_vec(&cluster.pods.iter().map(|(_, p)| p).collect::<Vec<_>>())
        .map_or(0, |v| v.len());
    let n_pods = cluster.pods.len();
    println!(
        "objects made in {:.1} s; pod list JSON {:.1} MiB ({:.1} KiB per pod)",
        built.elapsed().as_secs_f64(),
        list_bytes as f64 / 1048576.0,
        list_bytes as f64 / 1024.0 / n_pods.max(1) as f64
    );
}

/// Starts the senders: one, or a leader (listed and delivered) and then a
/// standby (listed).
fn start_senders(l: &Launch<'_>, objects: usize, ticks: f64) -> Vec<Sender> {
    if l.settings.replicas == 1 {
        let mut s = Sender::start(l, None);
        s.initial_list(true, objects, ticks);
        return vec![s];
    }
    let mut leader = Sender::start(l, Some("replica-0"));
    wait_for(Duration::from_secs(60), "replica-0 leading", || {
        Ok(leader.leads().then_some(()))
    })
    .unwrap();
    leader.initial_list(true, objects, ticks);
    let mut standby = Sender::start(l, Some("replica-1"));
    standby.initial_list(false, objects, ticks);
    assert!(
        leader.leads() && !standby.leads(),
        "replica-0 leads, replica-1 stands by"
    );
    vec![leader, standby]
}

/// Applies `rate` changes per second for `secs`, sampling every sender
/// every second; returns the window's length in seconds.
fn measure(
    server: &KubeApiServer,
    cluster: &mut Cluster,
    settings: &Settings,
    senders: &[Sender],
    windows: &mut [Window],
    ticks: f64,
) -> f64 {
    let mut stats = BTreeMap::new();
    let t0 = Instant::now();
    let tick = Duration::from_millis(100);
    let mut writes = 0usize;
    let mut next_sample = t0 + Duration::from_secs(1);
    let end = t0 + Duration::from_secs(settings.secs);
    let mut next_tick = t0;
    while Instant::now() < end {
        // Writes due by now at `rate` per second.
        let due = (t0.elapsed().as_secs_f64() * settings.rate as f64) as usize;
        while writes < due {
            writes += cluster.change(server, settings.with_metrics, &mut stats);
        }
        if Instant::now() >= next_sample {
            for (s, w) in senders.iter().zip(windows.iter_mut()) {
                w.sample(s, ticks);
            }
            next_sample += Duration::from_secs(1);
        }
        next_tick += tick;
        if let Some(pause) = next_tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(pause);
        }
    }
    let window = t0.elapsed().as_secs_f64();
    println!(
        "window: {window:.1} s, {writes} API writes ({:.1}/s):",
        writes as f64 / window
    );
    for (kind, n) in &stats {
        println!("  {kind:<22} {n}");
    }
    window
}

/// The targets of a sender alone, or of a leader and its standby.
fn print_targets(senders: &[Sender], figures: &[Figures]) {
    let f = &figures[0];
    println!(
        "targets: RSS ≤ {TARGET_RSS_MIB} MiB: {} (peak {:.1} MiB, steady {:.1} MiB); \
         CPU ≤ {TARGET_CPU_PERCENT} % of one core: {} ({:.2} %)",
        verdict(f.hwm <= TARGET_RSS_MIB),
        f.hwm,
        f.rss_end,
        verdict(f.cpu_pct <= TARGET_CPU_PERCENT),
        f.cpu_pct
    );
    let [leader, standby] = figures else { return };
    println!(
        "side by side ({} leads, {} stands by):",
        senders[0].name, senders[1].name
    );
    println!("  {:<34} {:>10} {:>10}", "", "leader", "standby");
    let row = |what: &str, a: f64, b: f64| println!("  {what:<34} {a:>10.2} {b:>10.2}");
    row(
        "CPU, % of one core (window)",
        leader.cpu_pct,
        standby.cpu_pct,
    );
    row(
        "CPU, busiest second, %",
        leader.busiest_second_pct,
        standby.busiest_second_pct,
    );
    row("peak RSS (VmHWM), MiB", leader.hwm, standby.hwm);
    row("RSS at the end, MiB", leader.rss_end, standby.rss_end);
    row(
        "records enqueued per second",
        leader.enqueued_per_s,
        standby.enqueued_per_s,
    );
    println!(
        "standby targets: CPU ≤ {TARGET_STANDBY_CPU_PERCENT} % of one core: {} ({:.2} %); \
         peak RSS ≤ the leader's: {} ({:.1} vs {:.1} MiB)",
        verdict(standby.cpu_pct <= TARGET_STANDBY_CPU_PERCENT),
        standby.cpu_pct,
        verdict(standby.hwm <= leader.hwm),
        standby.hwm,
        leader.hwm
    );
}

/// What is measured, where and how.
fn print_header(settings: &Settings) {
    println!(
        "kube_watch: sender RSS and CPU while watching a large cluster{}",
        if settings.replicas == 2 {
            ", a leader and a standby (--leader-elect)"
        } else {
            ""
        }
    );
    println!(
        "machine: {}, load average at start {}",
        telemetry_test_support::machine(),
        loadavg()
    );
    println!(
        "setup: {} pods in {NAMESPACES} namespaces, {} HPAs, {}, \
         {} API writes/s for {} s, sender --metrics-interval {}",
        settings.pods,
        settings.hpas,
        if settings.with_metrics {
            "pod metrics for every pod"
        } else {
            "NO pod metrics"
        },
        settings.rate,
        settings.secs,
        settings.metrics_interval
    );
    if !settings.sender_env.is_empty() {
        println!("sender environment: {}", settings.sender_env);
    }
}

/// How many pod lists were started: one per sender when none relisted.
fn print_list_starts(server: &KubeApiServer, senders: usize) {
    // List starts (pages after the first carry `continue`).
    let lists = server
        .requests()
        .iter()
        .filter(|r| {
            r.resource == Some(Resource::Pods)
                && r.verb == Some(Verb::List)
                && !r.query.contains("continue=")
        })
        .count();
    println!("pod lists started: {lists} ({senders} = no relist during the run)");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs benches
    // once in test mode: do nothing then (this is a measurement, not a test).
    if !std::env::args().any(|a| a == "--bench") {
        println!("kube_watch: run with `cargo bench -p telemetry-sender --bench kube_watch`");
        return;
    }
    let settings = Settings::from_env();
    let sender_bin = release_binary("telemetry-sender");
    let receiver_bin = release_binary("telemetry-receiver");
    let ticks = clock_ticks();

    print_header(&settings);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let server = rt.block_on(KubeApiServer::start()).unwrap();
    let built = Instant::now();
    let mut cluster = Cluster::new(settings.pods, settings.hpas);
    serve(&server, &cluster, settings.with_metrics, built);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let pki = TestPki::new().unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let receiver = start_receiver(&receiver_bin, quic, &pki.receiver().unwrap(), dir.path());
    let stls = pki.sender("bench-cluster").unwrap();
    let launch = Launch {
        bin: &sender_bin,
        kubeconfig: &kubeconfig,
        quic,
        tls: &stls,
        dir: dir.path(),
        settings: &settings,
    };
    let mut senders = start_senders(&launch, settings.pods + settings.hpas, ticks);

    let mut windows: Vec<Window> = senders.iter().map(|s| Window::start(s, ticks)).collect();
    let window = measure(
        &server,
        &mut cluster,
        &settings,
        &senders,
        &mut windows,
        ticks,
    );
    let usage_note = if settings.with_metrics {
        format!(
            " (of which pod usage: {} records every {})",
            settings.pods, settings.metrics_interval
        )
    } else {
        String::new()
    };
    let figures: Vec<Figures> = senders
        .iter()
        .zip(&windows)
        .map(|(s, w)| w.report(s, window, ticks, &usage_note))
        .collect();
    if senders.len() == 2 && (!senders[0].leads() || senders[1].leads()) {
        println!("WARNING: the leadership changed during the window; the figures mix roles");
    }
    print_list_starts(&server, senders.len());
    print_targets(&senders, &figures);
    println!(
        "kube-state-metrics' published guidance (README, \"Resource recommendation\"): \"As a general rule, \
         you should allocate: 250MiB memory, 0.1 cores\" (older READMEs: 200MiB + 0.1 cores at 100 nodes, \
         plus 2MiB and 0.001 cores per node beyond)."
    );
    println!("load average at end {}", loadavg());

    for s in senders.iter_mut().rev() {
        let status = s.proc.terminate(Duration::from_secs(30)).unwrap();
        println!("{} SIGTERM exit: {status}", s.name);
    }
    drop(receiver);
    rt.block_on(server.stop());
}
