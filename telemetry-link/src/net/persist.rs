//! The receiver's state writer: one thread that persists applied positions
//! for every sender stream (identity and replica), coalescing updates (only
//! the newest position of each stream is written), so a busy stream costs
//! one atomic file replace per write cycle rather than per batch.
//!
//! Sessions submit a position synchronously, in the same step in which the
//! handler's success is recorded, so no task cancellation can separate
//! "handled" from "queued for persisting"; they then await the position's
//! durability before acknowledging. The thread drains what was submitted
//! before it exits, even when the receiver is dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use tokio::sync::watch;

use crate::{
    receiver_state::{StateError, StateStore, StreamKey},
    session::dedup::StreamCursor,
};

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
    pub(crate) fn start(store: StateStore) -> std::io::Result<Self> {
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
            .spawn(move || run(s, store))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// A receiver of `stream`'s durable position, starting at `applied`.
    pub(crate) fn watch(&self, stream: &StreamKey, applied: u64) -> watch::Receiver<Durable> {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tx = w
            .entry(stream.clone())
            .or_insert_with(|| watch::channel(Durable::Upto(applied)).0);
        tx.send_replace(Durable::Upto(applied));
        tx.subscribe()
    }

    /// Queues `cursor` to be written (never blocks on IO).
    pub(crate) fn submit(&self, stream: &StreamKey, cursor: StreamCursor) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.pending.insert(stream.clone(), cursor);
        self.shared.ready.notify_one();
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            self.shared.ready.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: Arc<Shared>, store: StateStore) {
    loop {
        let batch = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.pending.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.pending.is_empty() && q.closed {
                return;
            }
            std::mem::take(&mut q.pending)
        };
        for (stream, cursor) in batch {
            let outcome = match store.save(&stream, &cursor) {
                Ok(()) => Durable::Upto(cursor.applied()),
                Err(e) => {
                    tracing::error!(sender = %stream.sender, replica = %stream.replica, error = %e, "cannot persist sender state");
                    Durable::Failed(Arc::new(e))
                }
            };
            let w = shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = w.get(&stream) {
                tx.send_if_modified(|cur| {
                    let newer = match (&*cur, &outcome) {
                        (Durable::Upto(a), Durable::Upto(b)) => b > a,
                        _ => true,
                    };
                    if newer {
                        *cur = outcome.clone();
                    }
                    newer
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn positions_become_durable_and_coalesce() {
        let d = tempfile::tempdir().unwrap();
        let store = StateStore::open(d.path()).unwrap();
        let p = Persister::start(store.clone()).unwrap();
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
        assert_eq!(store.load(&s).unwrap(), Some(StreamCursor::new(1, 101)));
    }
}
