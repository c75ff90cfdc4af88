//! The sender's pieces, wired together by `main.rs`:
//!
//! * [`config`]: flags, environment and TOML file → [`config::Settings`].
//! * [`service`]: runs the link sender, the chosen source (from
//!   `telemetry-sources`), the endpoint, the signals.
//! * [`sink`]: the link sender as the sources' sink.
//! * [`status`]: the endpoint's exporter and the status page (`GET /`).
//! * `kube_source`: the Kubernetes source, with `election` (`--leader-elect`:
//!   the Lease, the leader gauges) when replicas elect a leader.

pub mod config;
mod election;
mod kube_source;
pub mod service;
pub mod sink;
pub mod status;
