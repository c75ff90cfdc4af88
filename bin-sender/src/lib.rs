//! The sender's pieces, wired together by `main.rs`:
//!
//! * [`config`]: flags, environment and TOML file → [`config::Settings`].
//! * [`kube`]: the Kubernetes source (watchers, metrics.k8s.io, scale events).
//! * [`service`]: runs the link sender, the source, the endpoint, the signals.
//! * [`memory`]: allocator tuning that keeps RSS near the live heap.
//! * [`sink`]: the link sender as the sources' sink.

pub mod config;
pub mod kube;
pub mod memory;
pub mod service;
pub mod sink;
