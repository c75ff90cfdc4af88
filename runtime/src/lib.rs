//! Process plumbing shared by the two binaries, so that each `main.rs`
//! only wires library pieces to flags:
//!
//! * [`http`]: the operations endpoint (`/metrics`, `/healthz`, `/readyz`).
//! * [`exposition`]: Prometheus text 0.0.4 and OpenMetrics 1.0.0 rendering.
//! * [`config`]: TOML configuration files and human-readable durations.
//! * [`flags`]: flags, environment and file in one precedence order, and the
//!   flag groups both binaries share (TLS files, the endpoint).
//! * [`signals`]: SIGTERM/SIGINT (stop) and SIGHUP (reload certificates).
//! * [`logging`]: tracing setup.

pub mod config;
pub mod exposition;
pub mod flags;
pub mod http;
pub mod logging;
pub mod signals;
