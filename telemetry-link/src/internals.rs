//! The spool's and the receiver state's internals, for the fuzz targets and benchmarks (feature
//! `internals`). No compatibility promise: these change with the
//! implementation.

pub use crate::proto::seq::MAX_SEQ;
pub use crate::receiver_state::{format as state_format, StreamKey};
pub use crate::session::dedup::StreamCursor;
pub use crate::spool::{format, ranges, Cursor, ReadBuf, ReadOutcome, Spool};

/// Opens a receiver state directory as a receiver does (recovery, the
/// migration of older per-stream files, a compaction) and returns every
/// stream's position, sorted.
pub fn open_receiver_state(
    dir: &std::path::Path,
) -> Result<Vec<(StreamKey, StreamCursor)>, crate::StateError> {
    let syncs =
        prometheus::IntCounter::new("syncs", "syncs").map_err(|e| crate::StateError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    let options = crate::receiver_state::journal::JournalOptions::new(syncs);
    let (store, _journal, _) = crate::receiver_state::journal::open(dir, options)?;
    Ok(store.positions())
}

/// The stream and position in a receiver state file of the older
/// per-stream layout named `file_name` (`sender-<identity>[@<replica>].state`)
/// holding `bytes`; `None` when the name or the contents are not valid.
pub fn parse_legacy_state_file(file_name: &str, bytes: &[u8]) -> Option<(StreamKey, StreamCursor)> {
    let key = crate::receiver_state::legacy::key_of(file_name).filter(StreamKey::is_valid)?;
    let cursor = crate::receiver_state::legacy::parse(&key, bytes)?;
    Some((key, cursor))
}
