//! The Kubernetes record schema shared by `telemetry-sender` and
//! `telemetry-receiver`, the [`RecordSink`] sources write to, and the
//! sources that need no cluster (simulated and synthetic).
//!
//! The real Kubernetes source lives in the sender binary's crate, so the
//! receiver (and its demo) never pull in the kube client.

pub mod schema;
pub mod simulated;
pub mod sink;
pub mod synthetic;

pub use schema::*;
pub use simulated::{SimulatedCluster, SimulatedClusterConfig, SimulatedConfigError};
pub use sink::{RecordSink, SinkError, VecSink};
pub use synthetic::SyntheticSource;
