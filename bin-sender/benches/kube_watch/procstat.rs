//! What the bench reads about the sender processes: CPU time and memory
//! from `/proc`, the load average, the senders' own counters, and where
//! the release binaries are.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

pub(crate) use telemetry_test_support::process::{clock_ticks, loadavg};
use telemetry_test_support::{
    http::get,
    process::{self, workspace_binary},
    prom::Exposition,
};

// ---------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------

/// utime + stime of `pid`, in seconds (0 once it is gone).
pub(crate) fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    process::cpu_seconds(pid, ticks).unwrap_or(0.0)
}

/// VmRSS and VmHWM of `pid`, in MiB.
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The sender's own counters.
pub(crate) fn sender_metric(addr: SocketAddr, name: &str) -> f64 {
    get(addr, "/metrics", &[])
        .ok()
        .and_then(|r| Exposition::parse(&r.body).ok())
        .map_or(f64::NAN, |e| e.sum(name, &[]))
}

pub(crate) fn release_binary(name: &str) -> PathBuf {
    match workspace_binary(name) {
        Ok(p) => {
            let profile = p
                .parent()
                .and_then(Path::file_name)
                .and_then(|s| s.to_str())
                .unwrap_or("");
            if profile != "release" {
                eprintln!(
                    "warning: {} is not a release build; figures will not be representative",
                    p.display()
                );
            }
            p
        }
        Err(e) => {
            eprintln!(
                "error: {e:#}\n\nThis bench runs the release binaries as processes. Build them with:\n\n    cargo build --release -p telemetry-sender -p telemetry-receiver\n\nthen run `cargo bench -p telemetry-sender --bench kube_watch` again."
            );
            std::process::exit(2);
        }
    }
}
