//! The spool shared between threads, with group commit: batches submitted
//! close together are written one after another and share one fsync.
//!
//! # How
//!
//! [`SharedSpool::submit`] queues a batch (encoded records and a callback)
//! and returns at once. One committer at a time ([`SharedSpool::commit`],
//! on a thread that may block) takes everything queued, appends it under
//! the spool's lock in queue order, then — under
//! [`FsyncPolicy::EveryBatch`] — fdatasyncs once *without* the lock (a
//! [`SyncTicket`]), and only then calls each batch's callback. Batches
//! queued while that fsync runs form the next round. The submitter that
//! finds no committer running is told to start one.
//!
//! # Guarantees
//!
//! * **Durable when told.** Under `EveryBatch` a callback reports success
//!   only after an fsync that started after its records were written; a
//!   failed fsync is reported to every batch of its round. Under the other
//!   policies the callback follows the write (the caller syncs later).
//! * **Order.** Batches get their sequence numbers in submission order.
//! * **One fsync in flight.** Only the committer syncs appended data, and
//!   there is one committer; a batch waits for at most the fsync in flight
//!   and the one after it. Nothing polls or sleeps: the callbacks are the
//!   only signal.
//! * **Nothing shared between spools.** All state is in the value.
//!
//! The driver of a link reads and acknowledges through [`SharedSpool::lock`]
//! while a round's fsync runs, so a slow disk does not stall the link.

use std::{
    collections::VecDeque,
    io,
    sync::{Mutex, MutexGuard},
};

use super::{Appended, FsyncPolicy, Spool, SpoolError, SyncTicket};

/// Tells a submitter how its batch fared.
pub(crate) type Done = Box<dyn FnOnce(Result<Appended, SpoolError>) + Send>;

/// A batch waiting to be appended: record payloads stored end to end.
pub(crate) struct Submission {
    data: Vec<u8>,
    ends: Vec<usize>,
    done: Done,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("records", &self.ends.len())
            .field("bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Submission {
    /// Records whose payloads are `data`, the `i`th ending at `ends[i]`;
    /// `done` is called once with the outcome.
    pub(crate) fn new(data: Vec<u8>, ends: Vec<usize>, done: Done) -> Self {
        Self { data, ends, done }
    }

    fn payloads(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let p = self.data.get(start..end).unwrap_or_default();
                start = end;
                p
            })
            .collect()
    }
}

/// What one commit round did, for [`SharedSpool::commit`]'s hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Round {
    /// Batches in the round.
    pub(crate) batches: usize,
    /// Records appended (and, under `EveryBatch`, synced) successfully.
    pub(crate) records: u64,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Submission>,
    committing: bool,
}

/// A [`Spool`] shared between threads, with group commit; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct SharedSpool {
    spool: Mutex<Spool>,
    queue: Mutex<Queue>,
    fsync: FsyncPolicy,
}

impl SharedSpool {
    /// Shares `spool`.
    pub(crate) fn new(spool: Spool) -> Self {
        let fsync = spool.config().fsync;
        Self {
            spool: Mutex::new(spool),
            queue: Mutex::new(Queue::default()),
            fsync,
        }
    }

    /// The spool, locked. Appends go through [`SharedSpool::submit`].
    pub(crate) fn lock(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool's files
        // inconsistent (every mutation is a complete file operation), so a
        // poisoned lock is safe to keep using.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch. Returns `true` when no committer is running: the
    /// caller must then have [`SharedSpool::commit`] run (on a thread that
    /// may block), or [`SharedSpool::abandon`] the queue.
    #[must_use = "a `true` asks the caller to run the committer"]
    pub(crate) fn submit(&self, submission: Submission) -> bool {
        let mut q = self.queue();
        q.pending.push_back(submission);
        !std::mem::replace(&mut q.committing, true)
    }

    /// Runs commit rounds until the queue is empty. `after` runs after
    /// each round's records are durable (per the policy), under the
    /// spool's lock, before the round's callbacks.
    pub(crate) fn commit(&self, mut after: impl FnMut(&mut Spool, Round)) {
        let _unwind = AbandonOnUnwind(self);
        loop {
            let batch: Vec<Submission> = {
                let mut q = self.queue();
                if q.pending.is_empty() {
                    q.committing = false;
                    break;
                }
                q.pending.drain(..).collect()
            };
            self.round(batch, &mut after);
        }
    }

    /// Fails every queued batch and lets the next submitter commit: for a
    /// committer that will not run (its thread could not start).
    pub(crate) fn abandon(&self) {
        let pending = {
            let mut q = self.queue();
            q.committing = false;
            std::mem::take(&mut q.pending)
        };
        if pending.is_empty() {
            return;
        }
        let dir = self.lock().dir().to_path_buf();
        for s in pending {
            (s.done)(Err(SpoolError::Io {
                path: dir.clone(),
                source: io::Error::other("the spool's committer stopped"),
            }));
        }
    }

    /// Appends a round's batches, syncs them once, reports.
    fn round(&self, batch: Vec<Submission>, after: &mut impl FnMut(&mut Spool, Round)) {
        let mut spool = self.lock();
        let mut results: Vec<Result<Appended, SpoolError>> = batch
            .iter()
            .map(|s| spool.append_unsynced(&s.payloads()))
            .collect();
        let ticket = match self.fsync {
            FsyncPolicy::EveryBatch => spool.sync_ticket(),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => None,
        };
        if let Some(ticket) = ticket {
            drop(spool);
            spool = self.sync_unlocked(ticket, &mut results);
        }
        let round = Round {
            batches: batch.len(),
            records: results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|a| a.last_seq + 1 - a.first_seq)
                .sum(),
        };
        after(&mut spool, round);
        drop(spool);
        for (s, r) in batch.into_iter().zip(results) {
            (s.done)(r);
        }
    }

    /// fsyncs with the spool unlocked; a failure fails every batch written.
    fn sync_unlocked(
        &self,
        ticket: SyncTicket,
        results: &mut [Result<Appended, SpoolError>],
    ) -> MutexGuard<'_, Spool> {
        let outcome = ticket.sync();
        let mut spool = self.lock();
        if let Err(e) = spool.finish_sync(ticket, outcome) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(copy_error(&e));
            }
        }
        spool
    }
}

/// The same failure for another batch (I/O errors are not `Clone`).
fn copy_error(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: match source.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(source.kind(), source.to_string()),
            },
        },
        other => SpoolError::Io {
            path: std::path::PathBuf::new(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// A committer that did not finish (its hook or a callback panicked) fails
/// what is still queued, so no submitter waits forever.
struct AbandonOnUnwind<'a>(&'a SharedSpool);

impl Drop for AbandonOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

#[cfg(test)]
mod tests;
