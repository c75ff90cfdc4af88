//! The sender's pieces, wired together by `main.rs`:
//!
//! * [`config`]: flags, environment and TOML file → [`config::Settings`].
//! * [`service`]: runs the link sender, the chosen source (from
//!   `telemetry-sources`), the endpoint, the signals.
//! * [`sink`]: the link sender as the sources' sink.
//! * [`status`]: the endpoint's exporter and the status page (`GET /`).

pub mod config;
pub mod service;
pub mod sink;
pub mod status;
