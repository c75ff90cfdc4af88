//! Helpers shared by the workspace's tests (never used in production code).
//!
//! * [`pki`]: a CA and certificates in a temporary directory.
//! * [`process`]: child processes that are killed on drop, with signals.
//! * [`http`]: a tiny HTTP/1.1 GET client and a polling helper.
//! * [`prom`]: a parser for the Prometheus text format, for assertions.
//! * `kube_api` (feature `kube`): a test Kubernetes API server (list/watch over HTTP) with fault controls.
//! * [`link`]: a collecting handler and receiver/sender starters for link tests.
//! * [`raw`]: hand-built QUIC peers that break the rules, for bad-input tests.

pub mod http;
#[cfg(feature = "kube")]
pub mod kube_api;
pub mod link;
pub mod pki;
pub mod process;
pub mod prom;
pub mod raw;

/// Common start of a test: installs rustls' ring provider and a tracing
/// subscriber writing through the test harness (level from `RUST_LOG`).
pub fn init() {
    telemetry_link::tls::install_default_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
