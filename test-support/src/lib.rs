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
