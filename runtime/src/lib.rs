//! Process plumbing shared by the two binaries, so that each `main.rs`
//! only wires library pieces to flags:
//!
//! * [`http`]: the operations endpoint (`/`, `/metrics`, `/healthz`,
//!   `/readyz`) with its web config (TLS, basic auth) and resource bounds.
//! * [`exposition`]: Prometheus text 0.0.4 and OpenMetrics 1.0.0 rendering.
//! * [`html`]: an escaping HTML writer for the status pages.
//! * [`status`]: what the status pages read (gathered families,
//!   certificate expiry) and how they spell times and sizes.
//! * [`config`]: TOML configuration files and human-readable durations.
//! * [`flags`]: flags, environment and file in one precedence order, and the
//!   flag groups both binaries share (TLS files, the endpoint).
//! * [`signals`]: SIGTERM/SIGINT (stop) and SIGHUP (reload certificates).
//! * [`logging`]: tracing setup.

pub mod config;
pub mod exposition;
pub mod flags;
pub mod html;
pub mod http;
pub mod logging;
pub mod signals;
pub mod status;
