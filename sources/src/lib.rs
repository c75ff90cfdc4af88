//! Where a sender's records come from, and where they go.
//!
//! * [`sink`]: the [`RecordSink`] every source writes to — the link sender
//!   in production ([`telemetry_link::Sender`] implements it), a vector in
//!   tests ([`VecSink`]).
//! * [`simulated`]: a simulated cluster (the `php-apache` HPA walkthrough)
//!   producing the records the Kubernetes source sends, for the demo.
//! * [`synthetic`]: an exact-rate counter over N series, for load tests.
//! * `kube` (feature `kube`): the Kubernetes source — kube-runtime
//!   watchers, metrics.k8s.io polling, scale events.
//! * `memory` (feature `kube`): keeping resident memory near the live heap
//!   after relists.

#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "kube")]
pub mod memory;
pub mod simulated;
pub mod sink;
pub mod synthetic;

pub use simulated::{SimulatedCluster, SimulatedClusterConfig, SimulatedConfigError};
pub use sink::{RecordSink, SinkError, VecSink};
pub use synthetic::SyntheticSource;
