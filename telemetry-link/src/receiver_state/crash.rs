//! Named crash points on the state writer's path, for the crash tests: a
//! process started with `TELEMETRY_LINK_CRASH_AT=<name>` (or `<name>:<n>`,
//! the n-th time) aborts there, as abruptly as `kill -9`. Compiled only in
//! test builds (`cfg(test)` or the `crash-points` feature); elsewhere every
//! point is an empty function and the variable is never read.
//!
//! The points, in the order a write cycle and a compaction reach them:
//! `journal-before-write`, `journal-after-write` (before its sync),
//! `journal-after-sync` (before the positions count as durable and any ack
//! goes out); `compact-after-snapshot-write` (the new snapshot is synced
//! under its temporary name), `compact-after-snapshot-rename` (renamed,
//! the directory not yet synced), `compact-before-journal-reset` (the
//! directory synced, the old journal still in place),
//! `compact-after-journal-write` (the new journal synced under its
//! temporary name).
//!
//! `TELEMETRY_LINK_COMPACT_BYTES` sets the journal size that triggers a
//! compaction, so that a test reaches the compaction points quickly.

/// The variable naming the crash point.
#[cfg(any(test, feature = "crash-points"))]
const CRASH_AT: &str = "TELEMETRY_LINK_CRASH_AT";
/// The variable overriding the compaction threshold.
#[cfg(any(test, feature = "crash-points"))]
const COMPACT_BYTES: &str = "TELEMETRY_LINK_COMPACT_BYTES";

/// Aborts the process if this is the configured crash point (and its
/// configured occurrence).
#[cfg(any(test, feature = "crash-points"))]
pub(crate) fn point(name: &'static str) {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    };
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var(CRASH_AT).ok()?;
        Some(match spec.split_once(':') {
            Some((n, count)) => (n.to_owned(), count.parse().unwrap_or(1).max(1)),
            None => (spec, 1),
        })
    });
    if let Some((wanted, nth)) = target {
        if wanted == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *nth {
            eprintln!("crash point {name} reached: aborting");
            std::process::abort();
        }
    }
}

/// Does nothing outside test builds.
#[cfg(not(any(test, feature = "crash-points")))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}

/// The compaction threshold a test asked for.
#[cfg(any(test, feature = "crash-points"))]
pub(crate) fn compact_bytes() -> Option<u64> {
    std::env::var(COMPACT_BYTES).ok()?.parse().ok()
}

/// None outside test builds.
#[cfg(not(any(test, feature = "crash-points")))]
#[inline(always)]
pub(crate) fn compact_bytes() -> Option<u64> {
    None
}
