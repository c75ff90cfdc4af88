//! The receiver's pieces, wired together by `main.rs`:
//!
//! * [`config`]: flags, environment and TOML file → [`config::Settings`].
//! * [`interpret`]: what records mean — objects, snapshots, present and
//!   history, scale events, samples → series, for both consumers below.
//! * [`store`]: the `/metrics` page of every cluster's current view, and
//!   the senders' lifetime.
//! * [`handler`]: the link handler: each delivery interpreted once, for the
//!   store and remote write.
//! * [`remote_write`]: the timeline's samples → Prometheus remote-write
//!   endpoints.
//! * [`status`]: the status page (`GET /`).
//! * [`service`]: runs the link receiver, the endpoint and the signals.
//! * [`demo`]: certificates and an in-process simulated sender for `--demo`.

pub mod config;
pub mod demo;
pub mod handler;
pub mod interpret;
pub mod remote_write;
pub mod service;
pub mod status;
pub mod store;
