//! The spool's error type.

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// A spool failure.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Some records of an append were written, then the disk failed.
    #[error("only {accepted} records (from sequence {first_seq}) were spooled before an I/O error on {path}: {source}")]
    PartialAppend {
        /// Records written.
        accepted: u64,
        /// Sequence of the first of them.
        first_seq: u64,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// One record above [`SpoolConfig::max_record_bytes`](super::SpoolConfig::max_record_bytes).
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// An append larger than half the cap.
    #[error("a batch of {size} bytes cannot fit a spool capped at {cap} bytes")]
    BatchTooLarge {
        /// Batch size on disk.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Another process uses the directory.
    #[error("spool directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The stream reached [`MAX_SEQ`](crate::proto::seq::MAX_SEQ).
    #[error("sequence numbers exhausted (2^62); start a new spool")]
    SequenceExhausted,
}

/// Maps an OS error on `path` to [`SpoolError::Io`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}
