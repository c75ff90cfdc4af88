//! Helpers shared by the workspace's tests (never used in production code).
//!
//! * [`pki`]: a CA and certificates in a temporary directory.
//! * [`binaries`]: command lines of the workspace's binaries, `telemetry-certs init`.
//! * [`docs`]: documentation pages checked against the binaries' `--help`.
//! * [`process`]: child processes that are killed on drop, with signals.
//! * [`http`]: a tiny HTTP/1.1 GET client (plain, TLS, basic auth) and a polling helper.
//! * [`browser`]: headless Chromium (rendered DOM, screenshots) for the status pages.
//! * [`prom`]: a parser for the Prometheus text format, for assertions.
//! * [`prometheus_server`]: a real Prometheus on loopback, queried over its API.
//! * `kube_api` (feature `kube`): a test Kubernetes API server (list/watch over HTTP) with fault controls.
//! * [`link`]: a collecting handler and receiver/sender starters for link tests.
//! * [`raw`]: hand-built QUIC peers that break the rules, for bad-input tests.
//! * [`udp_proxy`]: a UDP relay a test can cut, to partition one sender from
//!   its receiver.
//! * [`running`]: a receiver and senders as real processes, with their
//!   `/metrics` and logs, for process tests.

pub mod binaries;
pub mod browser;
pub mod docs;
pub mod http;
#[cfg(feature = "kube")]
pub mod kube_api;
pub mod link;
pub mod pki;
pub mod process;
pub mod prom;
pub mod prometheus_server;
pub mod raw;
pub mod running;
pub mod udp_proxy;

/// Common start of a test: installs rustls' ring provider and a tracing
/// subscriber writing through the test harness (level from `RUST_LOG`).
pub fn init() {
    telemetry_link::tls::install_default_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The machine a benchmark ran on: cores, CPU model, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}
