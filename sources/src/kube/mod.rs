//! The Kubernetes source: watches Pods, HorizontalPodAutoscalers and HPA
//! rescale Events through kube-runtime watchers, polls metrics.k8s.io pod
//! usage, and ships [`telemetry_schema::ClusterRecord`]s into a
//! [`crate::RecordSink`].
//!
//! - [`quantity`]: Kubernetes quantity strings → base units.
//! - [`convert`]: API objects → record types.
//! - [`events`]: rescale events → scale events, counted once (persisted).
//! - [`source`]: the watch loop ([`KubeSource`]); with a leadership to follow,
//!   only the leader ships.
//! - [`client`]: building the `kube::Client` ([`client_from`]).
//! - [`leader`]: leader election among sender replicas over a Lease
//!   ([`LeaderElector`]), with fencing and epochs.

pub mod client;
pub mod convert;
pub mod events;
pub mod leader;
mod metrics;
pub mod quantity;
pub mod source;
mod store;

pub use client::{client_from, install_crypto_provider, ClientConfigError};
pub use events::{ScaleTracker, StateError};
pub use leader::{
    LeaderConfigError, LeaderElectionConfig, LeaderElectionError, LeaderElector, Leadership,
};
pub use quantity::{parse_quantity, QuantityError};
pub use source::{KubeSource, KubeSourceConfig, KubeSourceError};
