//! The receiver's pieces, wired together by `main.rs`:
//!
//! * [`config`]: flags, environment and TOML file → [`config::Settings`].
//! * [`store`]: records → kube-state-metrics-compatible series, lifecycle.
//! * [`handler`]: the link handler that feeds the store (and remote write).
//! * [`remote_write`]: applied samples → Prometheus remote-write endpoints.
//! * [`service`]: runs the link receiver, the endpoint and the signals.
//! * [`demo`]: certificates and an in-process simulated sender for `--demo`.

pub mod config;
pub mod demo;
pub mod handler;
pub mod remote_write;
pub mod service;
pub mod store;
