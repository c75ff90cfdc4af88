//! The spool's internals, for the fuzz targets and benchmarks (feature
//! `internals`). No compatibility promise: these change with the
//! implementation.

pub use crate::proto::seq::MAX_SEQ;
pub use crate::spool::{format, ranges, Cursor, ReadBuf, ReadOutcome, Spool};
