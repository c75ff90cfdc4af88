//! A thousand senders on one receiver: figures, not pass/fail. Run in
//! release:
//!
//! ```text
//! cargo bench -p telemetry-link --bench thousand
//! ```
//!
//! One receiver **process** (this binary again, with `THOUSAND_ROLE=receiver`:
//! a library receiver whose handler counts) and, in this process, 1,000
//! library `Sender`s, each with its own certificate identity (`s0000` ...
//! `s0999`, from a test PKI) and spool directory (fsync off: the sender side
//! is not what is measured), each sending one record per second.
//!
//! 1. Connect: time until all 1,000 are connected; then 20 s with idle
//!    links (nothing sent: only QUIC keep-alives).
//! 2. Steady state: the receiver's CPU (% of one core, from
//!    `/proc/<pid>/stat`) and RSS over `THOUSAND_STEADY_SECS` (default 60),
//!    its state syncs per second, datagrams per second.
//! 3. Crash: the receiver is killed with SIGKILL and started again on the
//!    same state directory; time until every sender is connected and caught
//!    up (acknowledged everything it had sent by the restart), and how many
//!    connect attempts failed, by reason (timeouts included).
//!
//! `THOUSAND_SENDERS` (default 1000) scales the count;
//! `THOUSAND_RX_KEEPALIVE_MS` gives the receiver keep-alives of its own
//! (it sends none by default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use telemetry_link::{
    net::{Applied, Delivery, Handler, HandlerError, Receiver, ReceiverConfig, Sender},
    FsyncPolicy, SenderConfig, TlsFiles,
};
use telemetry_test_support::{
    link::metric,
    pki::TestPki,
    process::{clock_ticks, ChildProcess},
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Counts what it is given.
struct Count(AtomicU64);

impl Handler<u64> for Count {
    async fn handle(&self, d: Delivery<u64>) -> Result<Applied, HandlerError> {
        self.0.fetch_add(d.records.len() as u64, Ordering::Relaxed);
        Ok(Applied::all())
    }
}

/// The receiver process: listens until killed, printing its counters every
/// 5 s as `stats <records> <connected> <state syncs> <udp datagrams sent>`.
async fn receiver_role() -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set"));
    let tls = TlsFiles::new(env("RX_CA")?, env("RX_CERT")?, env("RX_KEY")?);
    let mut cfg = ReceiverConfig::new(env("RX_LISTEN")?.parse()?, tls, env("RX_STATE")?);
    cfg.tls_reload_interval = None;
    if let Ok(ms) = std::env::var("THOUSAND_RX_KEEPALIVE_MS") {
        cfg.transport.receiver_keep_alive = Some(Duration::from_millis(ms.parse()?));
    }
    let registry = prometheus::Registry::new();
    let count = Arc::new(Count(AtomicU64::new(0)));
    let _r = Receiver::start::<u64, _>(cfg, count.clone(), &registry).await?;
    println!("receiver listening");
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!(
            "stats {} {} {} {}",
            count.0.load(Ordering::Relaxed),
            metric(&registry, "telemetry_link_senders_connected", &[]),
            metric(&registry, "telemetry_link_state_syncs_total", &[]),
            metric(&registry, "telemetry_link_udp_datagrams_sent_total", &[]),
        );
    }
}

fn spawn_receiver(
    tls: &TlsFiles,
    listen: SocketAddr,
    state: &Path,
) -> anyhow::Result<ChildProcess> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env("THOUSAND_ROLE", "receiver")
        .env("RX_CA", &tls.ca)
        .env("RX_CERT", &tls.cert)
        .env("RX_KEY", &tls.key)
        .env("RX_LISTEN", listen.to_string())
        .env("RX_STATE", state)
        .env("RUST_LOG", "warn");
    let child = ChildProcess::spawn("thousand-receiver", cmd)?;
    let limit = Instant::now() + Duration::from_secs(30);
    while !child.output().contains("receiver listening") {
        anyhow::ensure!(
            Instant::now() < limit,
            "receiver did not start:\n{}",
            child.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// CPU ticks (user + system) and RSS in KiB of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime [11], stime [12].
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((ticks, rss))
}

fn last_stats(output: &str) -> Option<Vec<f64>> {
    output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stats "))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
}

struct Fleet {
    senders: Vec<(Sender<u64>, prometheus::Registry)>,
    spools: tempfile::TempDir,
}

impl Fleet {
    async fn start(pki: &TestPki, n: u64, addr: SocketAddr) -> anyhow::Result<Self> {
        let spools = tempfile::tempdir()?;
        let mut senders = Vec::new();
        for i in 0..n {
            let id = format!("s{i:04}");
            let mut cfg = SenderConfig::new(
                vec![addr.to_string()],
                pki.sender(&id)?,
                spools.path().join(&id),
            );
            cfg.spool.fsync = FsyncPolicy::Never;
            cfg.tls_reload_interval = None;
            let registry = prometheus::Registry::new();
            let (s, _) = Sender::<u64>::start(cfg, &registry).await?;
            senders.push((s, registry));
        }
        Ok(Self { senders, spools })
    }

    fn connected(&self) -> usize {
        self.senders
            .iter()
            .filter(|(s, _)| s.status().borrow().connected)
            .count()
    }

    /// One record per second from each sender, phases spread over the
    /// second.
    fn produce(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let n = self.senders.len() as u64;
        self.senders
            .iter()
            .enumerate()
            .map(|(i, (s, _))| {
                let s = s.clone();
                let phase = Duration::from_millis(1000 * i as u64 / n.max(1));
                tokio::spawn(async move {
                    tokio::time::sleep(phase).await;
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    let mut v = 0u64;
                    loop {
                        tick.tick().await;
                        v += 1;
                        if s.send(&v).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect()
    }

    fn failures(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (_, reg) in &self.senders {
            for fam in reg.gather() {
                if fam.name() != "telemetry_sender_connect_failures_total" {
                    continue;
                }
                for m in fam.get_metric() {
                    let reason = m
                        .get_label()
                        .iter()
                        .find(|l| l.name() == "reason")
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default();
                    *out.entry(reason).or_insert(0.0) += m.get_counter().get_value();
                }
            }
        }
        out
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(start.elapsed())
}

async fn steady(rx: &ChildProcess, secs: u64) -> anyhow::Result<()> {
    let pid = rx.pid().unwrap();
    let hz = clock_ticks();
    let before = last_stats(&rx.output()).unwrap_or_default();
    let (t0, _) = usage(pid)?;
    let start = Instant::now();
    let mut max_rss = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        max_rss = max_rss.max(usage(pid)?.1);
    }
    let (t1, rss) = usage(pid)?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (t1 - t0) as f64 / hz / elapsed * 100.0;
    let after = last_stats(&rx.output()).unwrap_or_default();
    let rate = |i: usize| {
        (after.get(i).copied().unwrap_or(0.0) - before.get(i).copied().unwrap_or(0.0)) / elapsed
    };
    println!(
        "steady {elapsed:.0} s: receiver CPU {cpu:.1} % of a core, RSS {} MiB (max {} MiB), {:.0} records/s, {:.1} state syncs/s, {:.0} datagrams sent/s, {} connected",
        rss / 1024,
        max_rss / 1024,
        rate(0),
        rate(2),
        rate(3),
        after.get(1).copied().unwrap_or(0.0),
    );
    Ok(())
}

async fn crash_and_restart(
    fleet: &Fleet,
    rx: &mut ChildProcess,
    tls: &TlsFiles,
    addr: SocketAddr,
    state: &Path,
) -> anyhow::Result<ChildProcess> {
    let failures_before = fleet.failures();
    rx.kill_9()?;
    let killed = Instant::now();
    let respawned = {
        let (tls, state) = (tls.clone(), state.to_path_buf());
        tokio::task::spawn_blocking(move || spawn_receiver(&tls, addr, &state)).await??
    };
    let up = killed.elapsed();
    let targets: Vec<u64> = fleet
        .senders
        .iter()
        .map(|(s, _)| s.stats().last_seq)
        .collect();
    let back = wait_until(Duration::from_secs(120), || {
        fleet
            .senders
            .iter()
            .zip(&targets)
            .all(|((s, _), &t)| s.stats().acked_seq >= t)
    })
    .await;
    let failures: BTreeMap<String, f64> = fleet
        .failures()
        .into_iter()
        .map(|(k, v)| {
            let d = v - failures_before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    match back {
        Some(t) => println!(
            "restart: receiver up {:.2} s after the kill; all {} senders connected and caught up {:.2} s after the kill; connect failures {failures:?}",
            up.as_secs_f64(),
            fleet.senders.len(),
            (up + t).as_secs_f64()
        ),
        None => println!(
            "restart: NOT all caught up within 120 s ({} connected); connect failures {failures:?}",
            fleet.connected()
        ),
    }
    Ok(respawned)
}

async fn run() -> anyhow::Result<()> {
    let n = env_or("THOUSAND_SENDERS", 1000);
    let secs = env_or("THOUSAND_STEADY_SECS", 60);
    let pki = TestPki::new()?;
    let rx_tls = pki.receiver()?;
    let state = tempfile::tempdir()?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut rx = spawn_receiver(&rx_tls, addr, state.path())?;
    let started = Instant::now();
    let fleet = Fleet::start(&pki, n, addr).await?;
    let connected = wait_until(Duration::from_secs(120), || fleet.connected() == n as usize).await;
    println!(
        "connect: {n} senders started in {:.1} s, all connected after {}; connect failures {:?}",
        started.elapsed().as_secs_f64(),
        connected.map_or("NEVER (120 s)".into(), |d| format!(
            "{:.1} s more",
            d.as_secs_f64()
        )),
        fleet
            .failures()
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .collect::<BTreeMap<_, _>>()
    );
    // Idle links first: only keep-alives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    print!("idle: ");
    steady(&rx, 20).await?;
    let producers = fleet.produce();
    tokio::time::sleep(Duration::from_secs(10)).await;
    steady(&rx, secs).await?;
    let mut rx = crash_and_restart(&fleet, &mut rx, &rx_tls, addr, state.path()).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    steady(&rx, secs.min(20)).await?;
    for p in producers {
        p.abort();
    }
    rx.kill_9()?;
    // The senders go with the process (a graceful stop of 1,000 is not
    // what is measured); their spools, the state and the certificates are
    // removed first.
    let _ = std::fs::remove_dir_all(fleet.spools.path());
    let _ = std::fs::remove_dir_all(state.path());
    let _ = std::fs::remove_dir_all(pki.dir());
    std::process::exit(0)
}

fn main() -> anyhow::Result<()> {
    telemetry_link::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var("THOUSAND_ROLE").as_deref() == Ok("receiver") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
        return rt.block_on(receiver_role());
    }
    // cargo bench passes --bench; nothing else to parse.
    rt.block_on(run())
}
