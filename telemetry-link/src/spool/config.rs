//! What a spool is configured with: its size cap, segment size, fsync
//! policy and largest record.

use std::time::Duration;

use super::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// When appended data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every `append` returns (default).
    EveryBatch,
    /// At most this long after an append (the spool's owner syncs on a
    /// timer, as the [`Sender`](crate::Sender) does).
    Interval(Duration),
    /// Never explicitly; the kernel writes back when it likes.
    Never,
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Cap on the spool's total size on disk.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    /// `None`: `max_bytes / 16`, clamped to 256 KiB ..= 8 MiB.
    pub segment_bytes: Option<u64>,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Largest record payload accepted.
    pub max_record_bytes: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            segment_bytes: None,
            fsync: FsyncPolicy::EveryBatch,
            max_record_bytes: 256 * 1024,
        }
    }
}

impl SpoolConfig {
    /// The segment size in force: the configured one (or the default
    /// derived from the cap), at least one header and a one-byte record.
    pub(super) fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .unwrap_or_else(|| (self.max_bytes / 16).clamp(256 * 1024, 8 * 1024 * 1024))
            .max((SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_size_follows_the_cap_within_bounds() {
        let cap = |max_bytes| SpoolConfig {
            max_bytes,
            ..SpoolConfig::default()
        };
        assert_eq!(cap(1 << 30).effective_segment_bytes(), 8 << 20);
        assert_eq!(cap(1 << 20).effective_segment_bytes(), 256 << 10);
        assert_eq!(cap(64 << 20).effective_segment_bytes(), 4 << 20);
        let tiny = SpoolConfig {
            segment_bytes: Some(1),
            ..SpoolConfig::default()
        };
        assert_eq!(
            tiny.effective_segment_bytes(),
            (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1) as u64
        );
    }
}
