//! Logging setup: human-readable lines on stderr, level from `RUST_LOG`
//! (default `info`; quinn's and the kube client's own chatter mostly off —
//! the binaries log the failures that matter themselves). Colours only on a
//! terminal, never in files or `kubectl logs`; `NO_COLOR` turns them off.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str =
    "info,quinn=warn,quinn_proto=warn,kube_client=off,kube_runtime=warn,hyper=warn,hyper_util=warn";

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
