//! The receiver's state writer: one thread that makes applied positions
//! durable for every sender stream (identity and replica) through the
//! state journal, with **one group commit per cycle across all sessions**.
//!
//! Sessions submit a position synchronously, in the same step in which the
//! handler's success is recorded, so no task cancellation can separate
//! "handled" from "queued for persisting"; they then await the position's
//! durability before acknowledging.
//!
//! The cycle: the thread sleeps while nothing is submitted. When something
//! is, it takes everything submitted so far — the newest position of each
//! stream, older ones are coalesced away — appends it to the journal in one
//! write, makes it durable with one fdatasync, tells the waiting sessions,
//! compacts the journal if it is due, and takes whatever was submitted
//! meanwhile. Cycles begin at least [`MIN_CYCLE`] apart: an idle receiver
//! does nothing (no timer), a lone delivery is written at once, and a busy
//! one — a flood, or a thousand senders each delivering now and then —
//! syncs at most 100 times a second, each sync covering every position
//! submitted since the one before. A session waits at most that long more
//! for its acknowledgement. The thread drains what was submitted before it
//! exits, even when the receiver is dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    receiver_state::{journal::Journal, StateError, StreamKey},
    session::dedup::StreamCursor,
};

/// The shortest time from the start of one write cycle to the start of the
/// next: at most 100 journal syncs per second, however many sessions
/// deliver.
pub(crate) const MIN_CYCLE: Duration = Duration::from_millis(10);

/// Durable position of one stream as seen by waiting sessions.
#[derive(Debug, Clone)]
pub(crate) enum Durable {
    /// Everything up to this sequence is on disk.
    Upto(u64),
    /// The last write failed.
    Failed(Arc<StateError>),
}

struct Queue {
    pending: HashMap<StreamKey, StreamCursor>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    watchers: Mutex<HashMap<StreamKey, watch::Sender<Durable>>>,
}

pub(crate) struct Persister {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Persister {
    pub(crate) fn start(journal: Journal) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: HashMap::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            watchers: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("link-state-writer".into())
            .spawn(move || run(&s, journal))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// A receiver of `stream`'s durable position, starting at `applied`.
    pub(crate) fn watch(&self, stream: &StreamKey, applied: u64) -> watch::Receiver<Durable> {
        let mut w = lock(&self.shared.watchers);
        let tx = w
            .entry(stream.clone())
            .or_insert_with(|| watch::channel(Durable::Upto(applied)).0);
        tx.send_replace(Durable::Upto(applied));
        tx.subscribe()
    }

    /// Queues `cursor` to be written (never blocks on IO).
    pub(crate) fn submit(&self, stream: &StreamKey, cursor: StreamCursor) {
        let mut q = lock(&self.shared.queue);
        match q.pending.get_mut(stream) {
            Some(held) => *held = cursor,
            None => {
                q.pending.insert(stream.clone(), cursor);
            }
        }
        self.shared.ready.notify_one();
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            self.shared.ready.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(shared: &Shared, mut journal: Journal) {
    // Two maps swapped each cycle, so neither reallocates once grown.
    let mut taken: HashMap<StreamKey, StreamCursor> = HashMap::new();
    let mut entries: Vec<(StreamKey, StreamCursor)> = Vec::new();
    let mut last_cycle: Option<Instant> = None;
    loop {
        {
            let mut q = lock(&shared.queue);
            while q.pending.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.pending.is_empty() && q.closed {
                return;
            }
            let too_soon = last_cycle
                .map(|at| MIN_CYCLE.saturating_sub(at.elapsed()))
                .filter(|wait| !wait.is_zero() && !q.closed);
            if let Some(wait) = too_soon {
                // Let more positions gather for this cycle's one sync.
                drop(q);
                std::thread::sleep(wait);
                q = lock(&shared.queue);
            }
            std::mem::swap(&mut q.pending, &mut taken);
        }
        last_cycle = Some(Instant::now());
        entries.extend(taken.drain());
        let outcome = match journal.commit(&entries) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(streams = entries.len(), error = %e, "cannot persist sender positions");
                Some(Arc::new(e))
            }
        };
        notify(shared, &entries, outcome.as_ref());
        entries.clear();
        if let Err(e) = journal.compact_if_due() {
            tracing::error!(error = %e, "cannot compact the state journal; retrying with the next write");
        }
    }
}

/// Tells the sessions waiting on `entries` that they are durable, or that
/// writing them failed.
fn notify(
    shared: &Shared,
    entries: &[(StreamKey, StreamCursor)],
    failed: Option<&Arc<StateError>>,
) {
    let w = lock(&shared.watchers);
    for (stream, cursor) in entries {
        let Some(tx) = w.get(stream) else { continue };
        let outcome = match failed {
            None => Durable::Upto(cursor.applied()),
            Some(e) => Durable::Failed(e.clone()),
        };
        tx.send_if_modified(|cur| {
            let newer = match (&*cur, &outcome) {
                (Durable::Upto(a), Durable::Upto(b)) => b > a,
                _ => true,
            };
            if newer {
                *cur = outcome;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver_state::journal::{self, JournalOptions};

    fn open(
        dir: &std::path::Path,
    ) -> (
        crate::receiver_state::StateStore,
        Journal,
        prometheus::IntCounter,
    ) {
        let syncs = prometheus::IntCounter::new("syncs", "syncs").unwrap();
        let (store, journal, _) = journal::open(dir, JournalOptions::new(syncs.clone())).unwrap();
        (store, journal, syncs)
    }

    #[tokio::test]
    async fn positions_become_durable_and_coalesce() {
        let d = tempfile::tempdir().unwrap();
        let (store, journal, _) = open(d.path());
        let p = Persister::start(journal).unwrap();
        let s = StreamKey::new("a", "");
        let r = StreamKey::new("a", "r1");
        let mut w = p.watch(&s, 0);
        let mut wr = p.watch(&r, 0);
        for i in 1..=100 {
            p.submit(&s, StreamCursor::new(1, i));
        }
        p.submit(&r, StreamCursor::new(2, 7));
        w.wait_for(|d| matches!(d, Durable::Upto(100)))
            .await
            .unwrap();
        wr.wait_for(|d| matches!(d, Durable::Upto(7)))
            .await
            .unwrap();
        assert_eq!(store.load(&s).unwrap(), Some(StreamCursor::new(1, 100)));
        assert_eq!(store.load(&r).unwrap(), Some(StreamCursor::new(2, 7)));
        // dropping drains what was submitted
        p.submit(&s, StreamCursor::new(1, 101));
        drop(p);
        drop(store);
        let (reopened, _, _) = open(d.path());
        assert_eq!(reopened.load(&s).unwrap(), Some(StreamCursor::new(1, 101)));
        assert_eq!(reopened.load(&r).unwrap(), Some(StreamCursor::new(2, 7)));
    }

    /// Deliveries spread out in time (a thousand senders, each now and
    /// then) share syncs too: cycles begin at least `MIN_CYCLE` apart.
    #[tokio::test]
    async fn spread_out_submissions_sync_at_most_once_per_min_cycle() {
        let d = tempfile::tempdir().unwrap();
        let (_store, journal, syncs) = open(d.path());
        let at_open = syncs.get();
        let p = Persister::start(journal).unwrap();
        let keys: Vec<StreamKey> = (0..300)
            .map(|i| StreamKey::new(&format!("s{i}"), ""))
            .collect();
        let mut watches: Vec<_> = keys.iter().map(|k| p.watch(k, 0)).collect();
        let started = Instant::now();
        for k in &keys {
            p.submit(k, StreamCursor::new(3, 1));
            std::thread::sleep(Duration::from_millis(1));
        }
        for w in &mut watches {
            w.wait_for(|d| matches!(d, Durable::Upto(1))).await.unwrap();
        }
        let elapsed = started.elapsed();
        let cycles = syncs.get() - at_open;
        // One sync per cycle, plus the first cycle and one for the tail.
        let most = elapsed.as_millis() / MIN_CYCLE.as_millis() + 2;
        assert!(
            (1..=most as u64).contains(&cycles),
            "{cycles} syncs over {elapsed:?} for 300 submissions (at most {most})"
        );
    }

    /// Positions of many streams submitted while a sync runs are made
    /// durable together by the next one: far fewer syncs than submissions.
    #[tokio::test]
    async fn one_sync_covers_every_stream_submitted_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let (store, journal, syncs) = open(d.path());
        let at_open = syncs.get();
        let p = Persister::start(journal).unwrap();
        let keys: Vec<StreamKey> = (0..200)
            .map(|i| StreamKey::new(&format!("s{i}"), ""))
            .collect();
        let mut watches: Vec<_> = keys.iter().map(|k| p.watch(k, 0)).collect();
        for round in 1..=5u64 {
            for k in &keys {
                p.submit(k, StreamCursor::new(9, round));
            }
        }
        for w in &mut watches {
            w.wait_for(|d| matches!(d, Durable::Upto(5))).await.unwrap();
        }
        let cycles = syncs.get() - at_open;
        assert!(
            (1..1000).contains(&cycles),
            "{cycles} syncs for 1000 submissions"
        );
        assert!(keys
            .iter()
            .all(|k| store.load(k).unwrap() == Some(StreamCursor::new(9, 5))));
    }
}
