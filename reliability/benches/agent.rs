//! Our link against a Prometheus agent with remote_write 1.0, side by side
//! in one run: the same workload — **1,000 series at one sample
//! per second each** — shipped across a 1500-MTU veth link between two
//! network namespaces (`telemetry_reliability::netns::Topology`: receiver
//! side 10.77.0.1, sender side 10.77.0.2), one way after the other, each on
//! fresh namespaces:
//!
//! 1. **our link**: `telemetry-receiver` in the receiver namespace,
//!    `telemetry-sender --source synthetic --synthetic-series 1000
//!    --synthetic-rate 1000` in the sender namespace, default flags
//!    otherwise; then the same with `--synthetic-tick 1s` (each second's
//!    1,000 samples handed to the link as one batch, as a 1 s scrape does),
//!    when the sender's `--help` offers that flag;
//! 2. **Prometheus agent + remote_write 1.0** (Debian's `prometheus`): in
//!    the sender namespace an exporter serving 1,000 gauges
//!    `bench_value{series="i"}` whose values change every second (this
//!    bench binary itself, re-executed with `--serve-exporter ADDR`) and
//!    `prometheus --enable-feature=agent` scraping it every 1 s and
//!    remote-writing to a second `prometheus
//!    --web.enable-remote-write-receiver` in the receiver namespace.
//!    remote_write's queue settings are left at their defaults.
//!
//! Measured per way over a window of `--seconds` (default 120) that starts
//! 10 s after the first sample arrived at the far end:
//! - **CPU seconds** (utime + stime from `/proc/PID/stat`) of every process:
//!   sender and receiver; agent and remote-write target; the exporter apart
//!   (it is the workload's source, as the synthetic source inside our sender
//!   is). The pids are those of the programs: `ip netns exec` execs, and the
//!   bench checks `/proc/PID/exe` of each before measuring.
//! - **IP bytes and datagrams each way on the veth**, from nftables counters
//!   (table `inet agentbench`) read before and after the window: in the
//!   sender namespace an output chain (`oifname`) and an input chain
//!   (`iifname`), and in the receiver namespace an input chain. Both veth
//!   ends get `gso_max_segs 1`, so TCP leaves in MSS-sized segments and UDP
//!   GSO is segmented before the veth, as on a 1500-MTU wire (otherwise
//!   the veth carries up-to-64 KB super-packets). The sender side's
//!   output hook still sees a UDP GSO send as one datagram (segmentation
//!   happens after it), so sender→receiver is taken from the receiver
//!   namespace's input counter and receiver→sender from the sender
//!   namespace's; the output counter is printed beside it.
//! - **samples delivered** in the window: our receiver's
//!   `telemetry_link_applied_seq` (one record is one sample); for the agent
//!   the `bench_value` samples of the window found in the target
//!   (`count_over_time`), with the target's
//!   `prometheus_tsdb_head_samples_appended_total` (which also counts the
//!   agent's five `up`/`scrape_*` series) and the agent's
//!   `prometheus_remote_storage_samples_total` printed beside it. Per-sample
//!   figures divide by the samples delivered, not by the nominal 1,000/s.
//!
//! It prints the machine, one markdown table with a row per way and the
//! ratios ours ÷ agent. The sender and receiver binaries are copied into
//! the work directory first, so a rebuild during the run cannot mix builds.
//! Namespaces, processes, nftables tables and the work directory are
//! removed on every exit path, also on SIGINT/SIGTERM.
//!
//! Run as root (needs `ip`, `nft` and `prometheus`):
//!
//! ```text
//! cargo build --release -p telemetry-sender -p telemetry-receiver -p telemetry-certs
//! cargo bench -p telemetry-reliability --bench agent -- [--seconds 120] [--bin-dir target/release]
//! ```
//!
//! `--bin-dir` defaults to the directory of this bench's own build
//! (`target/release`).

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use telemetry_link::TlsFiles;
use telemetry_reliability::{
    netns::{self, Netns, Topology, RX_IF, RX_IP, TX_IF, TX_IP},
    procs::{Bins, Proc, ReceiverSpec, SenderSpec},
};
use telemetry_test_support::{
    http,
    pki::TestPki,
    process::{clock_ticks, cpu_seconds, help_offers, loadavg, workspace_bin_dir},
    prom::Exposition,
    prometheus_server::value_of,
};

/// Series of the workload, and samples per second over all of them.
const SERIES: u32 = 1_000;
const RATE: u64 = 1_000;
/// From the first sample at the far end to the start of the window.
const WARM_UP: Duration = Duration::from_secs(10);
/// Time for remote_write to hand over the window's last samples
/// (`batch_send_deadline` defaults to 5 s) before the target is queried.
const FLUSH: Duration = Duration::from_secs(7);
/// Our sender's certificate identity (the `sender` label at the receiver).
const SENDER_ID: &str = "bench";
const QUIC_PORT: u16 = 4433;
const RX_METRICS_PORT: u16 = 9464;
const TX_METRICS_PORT: u16 = 9465;
/// Web port of both Prometheus servers (one per namespace).
const PROM_PORT: u16 = 9090;
/// The exporter, on loopback inside the sender namespace.
const EXPORTER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9100);
const NFT_TABLE: &str = "agentbench";
const TICK_FLAG: &str = "--synthetic-tick";
const SERVE_EXPORTER: &str = "--serve-exporter";

// ---------------------------------------------------------------- main

struct Args {
    seconds: u64,
    bin_dir: PathBuf,
}

/// What this process is asked to be.
enum Mode {
    /// The bench.
    Bench(Args),
    /// The exporter, serving on the address (`--serve-exporter ADDR`).
    Exporter(String),
}

fn args() -> Result<Mode> {
    let mut seconds = 120;
    let mut bin_dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            SERVE_EXPORTER => return Ok(Mode::Exporter(value()?)),
            "--bench" => {} // cargo bench's own
            other => bail!("unknown argument {other} (known: --seconds N, --bin-dir DIR)"),
        }
    }
    ensure!(seconds > 0, "--seconds must be at least 1");
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => workspace_bin_dir()?,
    };
    Ok(Mode::Bench(Args { seconds, bin_dir }))
}

fn main() -> ExitCode {
    let result = match args() {
        Ok(Mode::Bench(a)) => run(&a),
        Ok(Mode::Exporter(addr)) => serve_exporter(&addr),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every way needs.
struct Ctx {
    bins: Bins,
    prometheus: PathBuf,
    exe: PathBuf,
    rx_tls: TlsFiles,
    tx_tls: TlsFiles,
    seconds: u64,
    ticks: f64,
    // Dropped last: the certificates and the work directory.
    _pki: TestPki,
    work: WorkDir,
}

fn run(args: &Args) -> Result<()> {
    let prometheus = preflight()?;
    install_interrupt_handlers();
    for stale in netns::cleanup_stale()? {
        println!("removed stale {stale}");
    }
    println!("agent — {}", telemetry_test_support::machine());
    println!("load average at start: {}", loadavg());
    let work = WorkDir::create()?;
    let bins = pinned_bins(&args.bin_dir, &work.0)?;
    let tick = help_offers(&bins.sender, TICK_FLAG)?;
    let pki = TestPki::new()?;
    let ctx = Ctx {
        bins,
        prometheus,
        exe: std::fs::canonicalize(std::env::current_exe()?)?,
        rx_tls: pki.receiver_for(&[&RX_IP.to_string()])?,
        tx_tls: pki.sender(SENDER_ID)?,
        seconds: args.seconds,
        ticks: clock_ticks(),
        _pki: pki,
        work,
    };
    println!(
        "workload {SERIES} series × 1 sample/s; window {} s from {} s after the first sample arrived",
        ctx.seconds,
        WARM_UP.as_secs()
    );
    let mut rows = vec![measure_ours(&ctx, false)?];
    if tick {
        rows.push(measure_ours(&ctx, true)?);
    } else {
        println!("NOTE: {TICK_FLAG} is not in the sender's --help: its row is skipped");
    }
    rows.push(measure_agent(&ctx)?);
    println!();
    print_table(&rows, ctx.seconds);
    println!();
    print_notes(&rows);
    println!("load average at end: {}", loadavg());
    Ok(())
}

/// Root, `ip`, `nft` (with a probe namespace) and `prometheus`; returns the
/// latter's path.
fn preflight() -> Result<PathBuf> {
    netns::check_support().context("this bench needs root, `ip` and `nft`")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .map(std::fs::canonicalize)
        .context("`prometheus` is missing: apt-get install prometheus")?
        .context("resolving the prometheus binary")
}

/// Copies the sender and receiver of `dir` into the work directory, so a
/// rebuild during the run cannot change the binaries between two ways.
fn pinned_bins(dir: &Path, work: &Path) -> Result<Bins> {
    let found = Bins::locate(dir)?;
    let pinned = work.join("bin");
    std::fs::create_dir_all(&pinned)?;
    for (from, name) in [
        (&found.sender, "telemetry-sender"),
        (&found.receiver, "telemetry-receiver"),
    ] {
        let age = std::fs::metadata(from)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        println!(
            "{name}: {} (modified {} s before the run), copied to {}",
            from.display(),
            age.as_secs(),
            pinned.display()
        );
        std::fs::copy(from, pinned.join(name)).with_context(|| format!("copying {name}"))?;
    }
    Bins::locate(&pinned)
}

/// The run's directory (spools, state, Prometheus data, logs), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(netns::unique_name("agentbench"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------- interrupts

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag the waits check, so the run ends
/// through its drop guards (namespaces, processes, tables, directory).
#[allow(unsafe_code)] // signal(2), with its SAFETY argument
fn install_interrupt_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no memory is shared otherwise.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Sleeps `d`, failing early when a signal asked to stop.
fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        ensure!(
            !INTERRUPTED.load(Ordering::SeqCst),
            "interrupted: cleaning up"
        );
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

// ------------------------------------------------------ link, counters

/// Fresh namespaces with the veth at MTU 1500 and one segment per skb.
fn link() -> Result<Topology> {
    let topo = Topology::create().context("creating the two namespaces")?;
    for (ns, dev) in [(&topo.rx, RX_IF), (&topo.tx, TX_IF)] {
        ns.ip(&[
            "link",
            "set",
            "dev",
            dev,
            "mtu",
            "1500",
            "gso_max_segs",
            "1",
        ])?;
    }
    Ok(topo)
}

/// IP datagrams and bytes through one hook.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    packets: f64,
    bytes: f64,
}

impl std::ops::Sub for Count {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            packets: self.packets - o.packets,
            bytes: self.bytes - o.bytes,
        }
    }
}

/// The three counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Wire {
    /// Sender namespace, output hook, `oifname` the veth: sender → receiver
    /// before UDP GSO segmentation.
    tx_out: Count,
    /// Sender namespace, input hook: receiver → sender.
    tx_in: Count,
    /// Receiver namespace, input hook: sender → receiver, segmented.
    rx_in: Count,
}

/// The nftables tables of one way; deleted on drop.
struct Counters<'a> {
    tx: &'a Netns,
    rx: &'a Netns,
}

fn chain(name: &str, hook: &str, dir: &str, dev: &str) -> String {
    format!(
        "  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n    {dir} \"{dev}\" counter\n  }}\n"
    )
}

impl<'a> Counters<'a> {
    fn install(topo: &'a Topology) -> Result<Self> {
        let counters = Self {
            tx: &topo.tx,
            rx: &topo.rx,
        };
        let tx = format!(
            "table inet {NFT_TABLE} {{\n{}{}}}\n",
            chain("out", "output", "oifname", TX_IF),
            chain("in", "input", "iifname", TX_IF)
        );
        let rx = format!(
            "table inet {NFT_TABLE} {{\n{}}}\n",
            chain("in", "input", "iifname", RX_IF)
        );
        counters.tx.exec_stdin("nft", &["-f", "-"], &tx)?;
        counters.rx.exec_stdin("nft", &["-f", "-"], &rx)?;
        Ok(counters)
    }

    fn read(&self) -> Result<Wire> {
        Ok(Wire {
            tx_out: counter(self.tx, "out")?,
            tx_in: counter(self.tx, "in")?,
            rx_in: counter(self.rx, "in")?,
        })
    }
}

impl Drop for Counters<'_> {
    fn drop(&mut self) {
        for ns in [self.tx, self.rx] {
            let _ = ns.exec("nft", &["delete", "table", "inet", NFT_TABLE]);
        }
    }
}

/// The counter of the single rule of `chain` in `ns`.
fn counter(ns: &Netns, chain: &str) -> Result<Count> {
    let text = ns.exec("nft", &["-j", "list", "chain", "inet", NFT_TABLE, chain])?;
    let json: serde_json::Value = serde_json::from_str(&text).context("nft -j output")?;
    let found = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .find_map(|e| {
            let c = &e["counter"];
            Some(Count {
                packets: c["packets"].as_f64()?,
                bytes: c["bytes"].as_f64()?,
            })
        });
    found.with_context(|| format!("no counter in chain {chain} of {}", ns.name()))
}

// ------------------------------------------------------- measurement

/// The pid of `p`, checked to be `program` itself and not `ip netns exec`.
fn program_pid(p: &Proc, program: &Path) -> Result<u32> {
    let pid = p
        .pid()
        .with_context(|| format!("{} has no pid", p.name()))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    ensure!(
        exe == program,
        "{}: pid {pid} runs {}, not {}",
        p.name(),
        exe.display(),
        program.display()
    );
    Ok(pid)
}

/// The measured processes: each side's, and the workload's source when it
/// is a process of its own.
struct Pids {
    tx: u32,
    rx: u32,
    source: Option<u32>,
}

/// Everything read at one end of the window.
struct Snap {
    at: Instant,
    unix_s: f64,
    cpu: [f64; 3],
    wire: Wire,
    delivered: f64,
}

fn snap(
    ctx: &Ctx,
    pids: &Pids,
    counters: &Counters<'_>,
    delivered: &dyn Fn() -> Result<f64>,
) -> Result<Snap> {
    let source = match pids.source {
        Some(pid) => cpu_seconds(pid, ctx.ticks)?,
        None => 0.0,
    };
    Ok(Snap {
        at: Instant::now(),
        unix_s: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64(),
        cpu: [
            cpu_seconds(pids.tx, ctx.ticks)?,
            cpu_seconds(pids.rx, ctx.ticks)?,
            source,
        ],
        wire: counters.read()?,
        delivered: delivered()?,
    })
}

/// Snapshots at both ends of a window of `ctx.seconds`.
fn window(
    ctx: &Ctx,
    pids: &Pids,
    counters: &Counters<'_>,
    delivered: &dyn Fn() -> Result<f64>,
) -> Result<(Snap, Snap)> {
    let a = snap(ctx, pids, counters, delivered)?;
    sleep_checked(Duration::from_secs(ctx.seconds))?;
    let b = snap(ctx, pids, counters, delivered)?;
    Ok((a, b))
}

/// One way's figures over its window.
struct Row {
    way: String,
    /// Window length as measured.
    secs: f64,
    /// Workload samples delivered in the window.
    samples: f64,
    /// CPU-s in the window, scaled to exactly `--seconds`: sender side,
    /// receiver side, the source (when a process of its own).
    cpu_tx: f64,
    cpu_rx: f64,
    cpu_source: Option<f64>,
    /// Deltas over the window.
    wire: Wire,
    notes: Vec<String>,
}

impl Row {
    fn new(way: &str, ctx: &Ctx, (a, b): (&Snap, &Snap), samples: f64, source: bool) -> Self {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let scale = ctx.seconds as f64 / secs;
        let cpu = |i: usize| (b.cpu[i] - a.cpu[i]) * scale;
        Self {
            way: way.to_owned(),
            secs,
            samples,
            cpu_tx: cpu(0),
            cpu_rx: cpu(1),
            cpu_source: source.then(|| cpu(2)),
            wire: Wire {
                tx_out: b.wire.tx_out - a.wire.tx_out,
                tx_in: b.wire.tx_in - a.wire.tx_in,
                rx_in: b.wire.rx_in - a.wire.rx_in,
            },
            notes: Vec::new(),
        }
    }

    fn cpu_both(&self) -> f64 {
        self.cpu_tx + self.cpu_rx
    }

    fn ip_bytes_per_sample(&self) -> f64 {
        (self.wire.rx_in.bytes + self.wire.tx_in.bytes) / self.samples.max(1.0)
    }
}

// ------------------------------------------------------------ our link

fn applied(e: &Exposition) -> Option<f64> {
    e.value("telemetry_link_applied_seq", &[("sender", SENDER_ID)])
}

/// `args` without `flag` and its value: the suite's specs always pin an
/// audit log and a total, which the comparison's default flags do not have.
fn without_flag(args: Vec<String>, flag: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == flag {
            it.next();
        } else {
            out.push(a);
        }
    }
    out
}

/// Our receiver and sender (default flags, `--synthetic-tick 1s` if
/// `tick`), both answering `/metrics`.
fn start_ours(topo: &Topology, ctx: &Ctx, dir: &Path, tick: bool) -> Result<(Proc, Proc)> {
    let rx_spec = ReceiverSpec {
        listen: SocketAddr::from((RX_IP, QUIC_PORT)),
        metrics: SocketAddr::from(([127, 0, 0, 1], RX_METRICS_PORT)),
        tls: ctx.rx_tls.clone(),
        state_dir: dir.join("state"),
        audit_log: dir.join("audit.log"),
        allow: Vec::new(),
    };
    std::fs::create_dir_all(&rx_spec.state_dir)?;
    let rx_args = without_flag(rx_spec.args(), "--audit-log");
    let mut rx = Proc::spawn(
        &topo.rx,
        "receiver",
        &ctx.bins.receiver,
        &rx_args,
        rx_spec.metrics,
        dir,
    )?;
    rx.wait_ready(Duration::from_secs(15))?;
    let tx_spec = SenderSpec {
        receivers: vec![rx_spec.listen.to_string()],
        server_name: None,
        tls: ctx.tx_tls.clone(),
        spool_dir: dir.join("spool"),
        spool_max_bytes: None,
        fsync: None,
        metrics: SocketAddr::from(([127, 0, 0, 1], TX_METRICS_PORT)),
        series: SERIES,
        rate: RATE,
        total: 0,
        bind: None,
        shutdown_timeout: None,
    };
    let mut tx_args = without_flag(tx_spec.args(), "--synthetic-total");
    if tick {
        tx_args.extend([TICK_FLAG.to_owned(), "1s".to_owned()]);
    }
    let mut tx = Proc::spawn(
        &topo.tx,
        "sender",
        &ctx.bins.sender,
        &tx_args,
        tx_spec.metrics,
        dir,
    )?;
    tx.wait_ready(Duration::from_secs(15))?;
    Ok((rx, tx))
}

fn measure_ours(ctx: &Ctx, tick: bool) -> Result<Row> {
    let way = if tick {
        "our link, --synthetic-tick 1s"
    } else {
        "our link, default flags"
    };
    println!("running: {way}");
    let topo = link()?;
    let counters = Counters::install(&topo)?;
    let dir = ctx.work.0.join(if tick { "ours-tick" } else { "ours" });
    std::fs::create_dir_all(&dir)?;
    let (rx, tx) = start_ours(&topo, ctx, &dir, tick)?;
    let pids = Pids {
        tx: program_pid(&tx, &ctx.bins.sender)?,
        rx: program_pid(&rx, &ctx.bins.receiver)?,
        source: None,
    };
    rx.wait_metrics(Duration::from_secs(60), "first sample applied", |e| {
        (applied(e)? > 0.0).then_some(())
    })?;
    sleep_checked(WARM_UP)?;
    let delivered = || Ok(applied(&rx.scrape()?).unwrap_or(0.0));
    let (a, b) = window(ctx, &pids, &counters, &delivered)?;
    let mut row = Row::new(way, ctx, (&a, &b), b.delivered - a.delivered, false);
    let e = tx.scrape()?;
    row.notes.push(format!(
        "sender at the window's end: connected {}, spool backlog {} records",
        e.value("telemetry_sender_connected", &[]).unwrap_or(-1.0),
        e.value("telemetry_sender_spool_records", &[])
            .unwrap_or(-1.0)
    ));
    Ok(row)
}

// --------------------------------------------------- Prometheus agent

/// Starts `prometheus` in `ns` on `listen` with `config` and `flags`, and
/// waits for its `/metrics`.
fn start_prometheus(
    ctx: &Ctx,
    ns: &Netns,
    (name, dir): (&str, &Path),
    listen: SocketAddr,
    config: &str,
    flags: &[String],
) -> Result<Proc> {
    let config_path = dir.join(format!("{name}.yml"));
    std::fs::write(&config_path, config)?;
    let mut args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--web.listen-address={listen}"),
    ];
    args.extend_from_slice(flags);
    let mut p = Proc::spawn(ns, name, &ctx.prometheus, &args, listen, dir)?;
    p.wait_ready(Duration::from_secs(60))?;
    Ok(p)
}

/// The target, the exporter and the agent, in that order.
fn start_agent_way(topo: &Topology, ctx: &Ctx, dir: &Path) -> Result<[Proc; 3]> {
    let target_addr = SocketAddr::from((RX_IP, PROM_PORT));
    let target = start_prometheus(
        ctx,
        &topo.rx,
        ("target", dir),
        target_addr,
        "# remote-write target: no scrapes of its own\nscrape_configs: []\n",
        &[
            format!("--storage.tsdb.path={}", dir.join("target-data").display()),
            "--web.enable-remote-write-receiver".into(),
        ],
    )?;
    let args = [SERVE_EXPORTER.to_owned(), EXPORTER.to_string()];
    let mut exporter = Proc::spawn(&topo.tx, "exporter", &ctx.exe, &args, EXPORTER, dir)?;
    exporter.wait_ready(Duration::from_secs(15))?;
    // remote_write: URL only, every queue setting at its default.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: [\"{EXPORTER}\"]\nremote_write:\n  - url: http://{target_addr}/api/v1/write\n"
    );
    let agent = start_prometheus(
        ctx,
        &topo.tx,
        ("agent", dir),
        SocketAddr::from((TX_IP, PROM_PORT)),
        &config,
        &[
            "--enable-feature=agent".into(),
            format!("--storage.agent.path={}", dir.join("agent-data").display()),
        ],
    )?;
    Ok([target, exporter, agent])
}

fn appended(e: &Exposition) -> f64 {
    e.sum("prometheus_tsdb_head_samples_appended_total", &[])
}

/// The result vector of the instant query `expr` at `time` (unix
/// seconds) in the target.
fn query(rx: &Netns, expr: &str, time: f64) -> Result<Vec<serde_json::Value>> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/api/v1/query?query={encoded}&time={time:.3}");
    let addr = SocketAddr::from((RX_IP, PROM_PORT));
    let resp = rx.run(move || http::get(addr, &path, &[]))??;
    ensure!(resp.status == 200, "target query {expr}: {}", resp.body);
    let v: serde_json::Value = serde_json::from_str(&resp.body).context("target query")?;
    v["data"]["result"]
        .as_array()
        .cloned()
        .with_context(|| format!("target query {expr}: {}", resp.body))
}

/// Samples of `metric` in the target with timestamps in `(from, to]`.
fn samples_in(rx: &Netns, metric: &str, from: f64, to: f64) -> Result<f64> {
    let ms = ((to - from) * 1000.0).round() as u64;
    let expr = format!("sum(count_over_time({metric}[{ms}ms]))");
    match query(rx, &expr, to)?.as_slice() {
        [] => Ok(0.0),
        [one] => value_of(&one["value"]),
        more => bail!("{expr}: {} results", more.len()),
    }
}

/// Series per metric name in the target at `time`: `name ×count, ...`.
fn series_by_name(rx: &Netns, time: f64) -> Result<String> {
    let names: Vec<String> = query(rx, "count by (__name__) ({__name__=~\".+\"})", time)?
        .iter()
        .map(|r| {
            let name = r["metric"]["__name__"].as_str().unwrap_or("?");
            let n = value_of(&r["value"]).unwrap_or(f64::NAN);
            format!("{name} ×{n}")
        })
        .collect();
    Ok(names.join(", "))
}

fn measure_agent(ctx: &Ctx) -> Result<Row> {
    let way = "Prometheus agent → remote_write 1.0 → Prometheus";
    println!("running: {way}");
    let topo = link()?;
    let counters = Counters::install(&topo)?;
    let dir = ctx.work.0.join("agent");
    std::fs::create_dir_all(&dir)?;
    let [target, exporter, agent] = start_agent_way(&topo, ctx, &dir)?;
    let pids = Pids {
        tx: program_pid(&agent, &ctx.prometheus)?,
        rx: program_pid(&target, &ctx.prometheus)?,
        source: Some(program_pid(&exporter, &ctx.exe)?),
    };
    target.wait_metrics(Duration::from_secs(60), "first remote write", |e| {
        (appended(e) > 0.0).then_some(())
    })?;
    sleep_checked(WARM_UP)?;
    let sent_a = agent.scrape()?;
    let delivered = || Ok(appended(&target.scrape()?));
    let (a, b) = window(ctx, &pids, &counters, &delivered)?;
    let sent_b = agent.scrape()?;
    sleep_checked(FLUSH)?;
    let samples = samples_in(&topo.rx, "bench_value", a.unix_s, b.unix_s)?;
    let series = series_by_name(&topo.rx, b.unix_s)?;
    let mut row = Row::new(way, ctx, (&a, &b), samples, true);
    let delta = |name: &str| sent_b.sum(name, &[]) - sent_a.sum(name, &[]);
    let secs = row.secs;
    row.notes.push(format!(
        "series in the target: {series}; it appended {:.1} samples/s in the window; the agent sent {:.1} samples/s in {:.2} requests/s, {:.0} B/s compressed; failed {}, retried {}, dropped {}; shards at the end {}",
        (b.delivered - a.delivered) / secs,
        delta("prometheus_remote_storage_samples_total") / secs,
        delta("prometheus_remote_storage_sent_batch_duration_seconds_count") / secs,
        delta("prometheus_remote_storage_bytes_total") / secs,
        delta("prometheus_remote_storage_samples_failed_total"),
        delta("prometheus_remote_storage_samples_retried_total"),
        delta("prometheus_remote_storage_samples_dropped_total"),
        sent_b.sum("prometheus_remote_storage_shards", &[]),
    ));
    Ok(row)
}

// ------------------------------------------------------------ exporter

/// The exporter mode (`--serve-exporter ADDR`, run inside the sender
/// namespace): `/metrics` with 1,000 gauges whose values change every
/// second, HTTP/1.1 with keep-alive, uncompressed. Runs until killed, and
/// dies with the bench (`PR_SET_PDEATHSIG`).
#[allow(unsafe_code)] // prctl(2), with its SAFETY argument
fn serve_exporter(addr: &str) -> Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of this
    // process; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                std::thread::spawn(move || serve_connection(c));
            }
            Err(e) => eprintln!("exporter: accept: {e}"),
        }
    }
    Ok(())
}

/// Answers the requests of one connection until the peer closes it.
fn serve_connection(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some((path, close)) = read_request(&mut reader)? {
        let (status, body) = if path == "/metrics" {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            ("200 OK", exposition(now))
        } else {
            ("404 Not Found", String::new())
        };
        let mut resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        );
        if close {
            resp.push_str("Connection: close\r\n");
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        out.write_all(resp.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

/// The next request's path and whether the client asked to close; `None`
/// at the end of the connection.
fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<(String, bool)>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut close = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        if h.trim().is_empty() {
            return Ok(Some((path, close)));
        }
        let h = h.to_ascii_lowercase();
        close |= h.starts_with("connection:") && h.contains("close");
    }
}

/// The page at second `now`: gauge `i` is `now + i`.
fn exposition(now: u64) -> String {
    let mut s = String::with_capacity(32 * SERIES as usize + 128);
    s.push_str("# HELP bench_value One of the agent bench's gauges; each changes every second.\n");
    s.push_str("# TYPE bench_value gauge\n");
    for i in 0..SERIES {
        let _ = writeln!(s, "bench_value{{series=\"{i}\"}} {}", now + u64::from(i));
    }
    s
}

// --------------------------------------------------------------- output

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "—".into()
    }
}

fn print_table(rows: &[Row], seconds: u64) {
    let agent = rows.last();
    println!("| way | samples/s delivered | CPU-s per {seconds} s, sender side | CPU-s, receiver side | CPU-s, both | CPU-s, workload source | IP B/sample, both ways | IP datagrams/s sender→receiver | IP datagrams/s receiver→sender | CPU both ÷ (agent + target) | CPU both ÷ agent alone | IP B/sample ÷ agent's |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        let source = r
            .cpu_source
            .map_or_else(|| "(inside the sender)".to_owned(), |c| format!("{c:.3}"));
        let ratios = match agent {
            Some(a) if i + 1 < rows.len() => format!(
                "{} | {} | {}",
                ratio(r.cpu_both(), a.cpu_both()),
                ratio(r.cpu_both(), a.cpu_tx),
                ratio(r.ip_bytes_per_sample(), a.ip_bytes_per_sample())
            ),
            _ => "1 (reference) | — | 1 (reference)".into(),
        };
        println!(
            "| {} | {:.1} | {:.3} | {:.3} | {:.3} | {source} | {:.2} | {:.2} | {:.2} | {ratios} |",
            r.way,
            r.samples / r.secs,
            r.cpu_tx,
            r.cpu_rx,
            r.cpu_both(),
            r.ip_bytes_per_sample(),
            r.wire.rx_in.packets / r.secs,
            r.wire.tx_in.packets / r.secs,
        );
    }
}

fn print_notes(rows: &[Row]) {
    println!("- sender side = our sender / the agent; receiver side = our receiver / the remote-write target Prometheus.");
    println!("- workload source: the exporter the agent scrapes (loopback in the sender namespace, off the veth), a process of its own and not in \"both\"; our sender's synthetic source runs inside the sender, so its cost is in the sender's column.");
    println!("- remote_write: Prometheus' default queue settings (only the URL is configured); the agent scrapes every 1 s; the agent's `up`/`scrape_*` series travel too and are not counted as delivered.");
    println!("- IP figures from nftables: sender→receiver at the receiver namespace's input hook, receiver→sender at the sender namespace's input hook; veth MTU 1500 with gso_max_segs 1.");
    println!("- CPU-s: utime + stime of /proc/PID/stat (all threads) over the window, scaled to exactly the nominal window; read in clock ticks, so each figure is ±0.01 s.");
    println!("- samples delivered: ours = the receiver's applied_seq moved in the window (arrival, in whole batches); the agent's = bench_value samples scraped in the window, found in the target after a {} s flush.", FLUSH.as_secs());
    for r in rows {
        println!(
            "- {}: window {:.1} s, {:.0} samples delivered; sender-namespace output hook saw {:.2} datagrams/s, {:.0} B/s sender→receiver (before UDP GSO segmentation), the receiver's input hook {:.2} datagrams/s, {:.0} B/s",
            r.way,
            r.secs,
            r.samples,
            r.wire.tx_out.packets / r.secs,
            r.wire.tx_out.bytes / r.secs,
            r.wire.rx_in.packets / r.secs,
            r.wire.rx_in.bytes / r.secs,
        );
        for n in &r.notes {
            println!("  - {n}");
        }
    }
}
