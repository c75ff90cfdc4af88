//! The sender processes the bench measures: starting one (alone, or as
//! a `--leader-elect` replica), waiting for its initial lists, sampling
//! its CPU time and memory every second over the window, and its figures.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use telemetry_link::TlsFiles;
use telemetry_test_support::{
    http::get,
    process::{free_tcp_port, ChildProcess},
};

use crate::{
    procstat::{cpu_seconds, memory_mib, sender_metric},
    Settings,
};

/// What every sender process is started with.
pub(crate) struct Launch<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) kubeconfig: &'a Path,
    pub(crate) quic: SocketAddr,
    pub(crate) tls: &'a TlsFiles,
    pub(crate) dir: &'a Path,
    pub(crate) settings: &'a Settings,
}

/// One sender process.
pub(crate) struct Sender {
    /// `sender`, or with leader election the replica id.
    pub(crate) name: String,
    pub(crate) proc: ChildProcess,
    pub(crate) pid: u32,
    pub(crate) metrics: SocketAddr,
    pub(crate) started: Instant,
}

impl Sender {
    /// Starts a sender; `replica`: with `--leader-elect` as that replica.
    pub(crate) fn start(l: &Launch<'_>, replica: Option<&str>) -> Sender {
        let name = replica.unwrap_or("sender").to_owned();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
        let mut cmd = Command::new(l.bin);
        cmd.args(["--source", "kube", "--kubeconfig"])
            .arg(l.kubeconfig)
            .arg("--receiver")
            .arg(l.quic.to_string())
            .args(["--server-name", "localhost", "--metrics-interval"])
            .arg(&l.settings.metrics_interval)
            .arg("--ca")
            .arg(&l.tls.ca)
            .arg("--cert")
            .arg(&l.tls.cert)
            .arg("--key")
            .arg(&l.tls.key)
            .arg("--spool-dir")
            .arg(l.dir.join(format!("spool-{name}")))
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .env("RUST_LOG", "info");
        if let Some(id) = replica {
            cmd.args([
                "--leader-elect",
                "--lease-namespace",
                "default",
                "--replica-id",
                id,
            ]);
        }
        for pair in l.settings.sender_env.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                cmd.env(k, v);
            }
        }
        let started = Instant::now();
        let proc = ChildProcess::spawn(&format!("telemetry-sender-{name}"), cmd).unwrap();
        let pid = proc.pid().unwrap();
        Sender {
            name,
            proc,
            pid,
            metrics,
            started,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        sender_metric(self.metrics, name)
    }

    pub(crate) fn leads(&self) -> bool {
        self.metric("telemetry_sender_leader") == 1.0
    }

    fn check_alive(&mut self, what: &str) {
        assert!(
            self.proc.is_running(),
            "{} exited:\n{}",
            self.name,
            self.proc.output()
        );
        assert!(
            self.started.elapsed() < Duration::from_secs(300),
            "{}: {what} not within 5 min:\n{}",
            self.name,
            self.proc.output()
        );
    }

    /// Waits for the initial lists: ready (`/readyz`), and for a sender
    /// that ships, its spool drained after at least `objects` records.
    pub(crate) fn initial_list(&mut self, ships: bool, objects: usize, ticks: f64) {
        let mut peak_during_list = 0.0f64;
        let ready = loop {
            if get(self.metrics, "/readyz", &[]).is_ok_and(|r| r.status == 200) {
                break self.started.elapsed();
            }
            peak_during_list = peak_during_list.max(memory_mib(self.pid).0);
            self.check_alive("ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut drained = String::new();
        if ships {
            while self.metric("telemetry_sender_spool_records") != 0.0
                || self.metric("telemetry_sender_records_enqueued_total") < objects as f64
            {
                self.check_alive("drained");
                std::thread::sleep(Duration::from_millis(50));
            }
            drained = format!(
                ", delivered (spool empty) after {:.2} s",
                self.started.elapsed().as_secs_f64()
            );
        }
        let (rss, hwm) = memory_mib(self.pid);
        println!(
            "{}: initial list: ready after {:.2} s{drained}; CPU so far {:.2} s; \
             RSS {rss:.1} MiB, VmHWM {hwm:.1} MiB (sampled RSS max while listing {peak_during_list:.1} MiB)",
            self.name,
            ready.as_secs_f64(),
            cpu_seconds(self.pid, ticks),
        );
    }
}

/// One sender's samples over the measured window.
pub(crate) struct Window {
    cpu0: f64,
    last_cpu: f64,
    cpu_per_second: Vec<f64>,
    rss_samples: Vec<f64>,
    enqueued0: f64,
    acked0: f64,
    bytes0: f64,
}

/// One sender's figures over the measured window.
pub(crate) struct Figures {
    pub(crate) cpu_pct: f64,
    pub(crate) busiest_second_pct: f64,
    pub(crate) hwm: f64,
    pub(crate) rss_end: f64,
    pub(crate) rss_min: f64,
    pub(crate) rss_max: f64,
    pub(crate) enqueued_per_s: f64,
}

impl Window {
    pub(crate) fn start(s: &Sender, ticks: f64) -> Window {
        let cpu0 = cpu_seconds(s.pid, ticks);
        Window {
            cpu0,
            last_cpu: cpu0,
            cpu_per_second: Vec::new(),
            rss_samples: Vec::new(),
            enqueued0: s.metric("telemetry_sender_records_enqueued_total"),
            acked0: s.metric("telemetry_sender_records_acked_total"),
            bytes0: s.metric("telemetry_sender_bytes_sent_total"),
        }
    }

    pub(crate) fn sample(&mut self, s: &Sender, ticks: f64) {
        self.rss_samples.push(memory_mib(s.pid).0);
        let c = cpu_seconds(s.pid, ticks);
        self.cpu_per_second.push(c - self.last_cpu);
        self.last_cpu = c;
    }

    /// Prints `s`'s figures over `window` seconds and returns them.
    pub(crate) fn report(&self, s: &Sender, window: f64, ticks: f64, usage_note: &str) -> Figures {
        let cpu1 = cpu_seconds(s.pid, ticks);
        let (rss_end, hwm) = memory_mib(s.pid);
        let per_s = |name: &str, before: f64| (s.metric(name) - before) / window;
        let f = Figures {
            cpu_pct: (cpu1 - self.cpu0) / window * 100.0,
            busiest_second_pct: self.cpu_per_second.iter().copied().fold(0.0, f64::max) * 100.0,
            hwm,
            rss_end,
            rss_min: self.rss_samples.iter().copied().fold(rss_end, f64::min),
            rss_max: self.rss_samples.iter().copied().fold(rss_end, f64::max),
            enqueued_per_s: per_s("telemetry_sender_records_enqueued_total", self.enqueued0),
        };
        let name = &s.name;
        // A standby ships no usage: the note is about what a sender ships.
        let usage_note = if f.enqueued_per_s > 0.0 {
            usage_note
        } else {
            ""
        };
        println!(
            "{name}: shipped {:.0} records/s enqueued, {:.0} records/s acknowledged, {:.1} KiB/s of link frames{usage_note}",
            f.enqueued_per_s,
            per_s("telemetry_sender_records_acked_total", self.acked0),
            per_s("telemetry_sender_bytes_sent_total", self.bytes0) / 1024.0,
        );
        println!(
            "{name}: CPU {:.2} % of one core over the window (busiest second {:.0} %)",
            f.cpu_pct, f.busiest_second_pct
        );
        println!(
            "{name}: RSS peak (VmHWM) {:.1} MiB, during the window {:.1}–{:.1} MiB, at the end {:.1} MiB",
            f.hwm, f.rss_min, f.rss_max, f.rss_end
        );
        println!(
            "{name}: RSS every 10 s (MiB): {}",
            self.rss_samples
                .iter()
                .step_by(10)
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        f
    }
}
