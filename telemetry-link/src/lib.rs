//! telemetry-link (work in progress)
pub mod backoff;
pub mod fsutil;
pub mod proto;
pub mod sample;
pub mod spool;

pub use proto::record::Payload;
pub use sample::{Sample, SeriesKey};
