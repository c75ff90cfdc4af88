//! Appending for the sender: every send becomes a submission to the
//! spool's group commit ([`SharedSpool`]), so sends made close together —
//! several tasks, or one task holding several send futures — share one
//! fsync. When a submission finds no committer running, one is started on
//! the runtime's blocking pool; it keeps going while submissions arrive.
//!
//! After each commit round, with the spool locked: the gauges are brought
//! up to date, the session is woken if the round brought what it waits for
//! (its [`WakeOn`], set under the same lock, so no append goes unnoticed),
//! and under [`FsyncPolicy::Interval`] an fsync is scheduled if none is —
//! a timer armed only while data waits for it, never a periodic one.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tracing::warn;

use super::{Inner, TARGET};
use crate::{
    session::sender::WakeOn,
    spool::{
        commit::{Done, Round},
        FsyncPolicy, Spool, Submission,
    },
};

/// The session's [`WakeOn`], read and written with the spool locked.
#[derive(Debug)]
pub(super) struct WakeThreshold {
    last_seq: AtomicU64,
    appended_bytes: AtomicU64,
}

impl Default for WakeThreshold {
    fn default() -> Self {
        Self {
            last_seq: AtomicU64::new(u64::MAX),
            appended_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

impl WakeThreshold {
    /// Sets it; call with the spool locked.
    pub(super) fn set(&self, w: WakeOn) {
        // The spool's lock orders these with the committer's reads.
        self.last_seq.store(w.last_seq, Ordering::Relaxed);
        self.appended_bytes
            .store(w.appended_bytes, Ordering::Relaxed);
    }

    fn is_met(&self, spool: &Spool) -> bool {
        WakeOn {
            last_seq: self.last_seq.load(Ordering::Relaxed),
            appended_bytes: self.appended_bytes.load(Ordering::Relaxed),
        }
        .is_met(spool.last_seq(), spool.appended_bytes())
    }
}

/// A committer to run on the blocking pool; if it never runs (the runtime
/// is shutting down), dropping it fails what is queued.
struct Committer(Option<Arc<Inner>>);

impl Committer {
    fn run(mut self) {
        if let Some(inner) = self.0.take() {
            inner
                .spool
                .commit(|spool, round| inner.after_commit(spool, round));
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.spool.abandon();
        }
    }
}

impl Inner {
    /// Submits records (payloads `data`, the `i`th ending at `ends[i]`);
    /// `done` is told the outcome once they are appended and, under
    /// [`FsyncPolicy::EveryBatch`], synced.
    pub(super) fn submit(self: &Arc<Self>, data: Vec<u8>, ends: Vec<usize>, done: Done) {
        if self.spool.submit(Submission::new(data, ends, done)) {
            let committer = Committer(Some(self.clone()));
            // The handle's blocking pool works from any thread, so
            // `send_batch_blocking` callers outside the runtime are served
            // by the same committer.
            drop(self.runtime.spawn_blocking(move || committer.run()));
        }
    }

    /// After a commit round, with the spool locked.
    fn after_commit(self: &Arc<Self>, spool: &mut Spool, round: Round) {
        self.metrics.records_enqueued.inc_by(round.records);
        self.refresh_gauges(spool);
        if self.wake_on.is_met(spool) {
            self.wake.notify_one();
        }
        if let FsyncPolicy::Interval(every) = self.fsync {
            if spool.needs_sync() && !self.sync_armed.swap(true, Ordering::AcqRel) {
                self.schedule_sync(every);
            }
        }
    }

    /// Syncs the spool `after` from now ([`FsyncPolicy::Interval`]).
    fn schedule_sync(self: &Arc<Self>, after: Duration) {
        let inner = self.clone();
        drop(self.runtime.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tokio::task::spawn_blocking(move || inner.interval_sync()).await;
        }));
    }

    /// The fsync [`FsyncPolicy::Interval`] promises, without the spool's
    /// lock while it runs.
    fn interval_sync(&self) {
        // Appends from now on need (and arm) the next one.
        self.sync_armed.store(false, Ordering::Release);
        let Some(ticket) = self.spool().sync_ticket() else {
            return;
        };
        let outcome = ticket.sync();
        let mut spool = self.spool();
        if let Err(e) = spool.finish_sync(ticket, outcome) {
            warn!(target: TARGET, error = %e, "spool fsync failed; retrying after the next append");
        }
        self.refresh_gauges(&spool);
    }
}
