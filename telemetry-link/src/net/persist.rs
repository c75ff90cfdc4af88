//! The receiver's state writer: one thread that persists applied positions
//! for every sender, coalescing updates (only the newest position of each
//! sender is written), so a busy sender costs one atomic file replace per
//! write cycle rather than per batch.
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
    receiver_state::{StateError, StateStore},
    session::dedup::StreamCursor,
};

/// Durable position of one sender as seen by waiting sessions.
#[derive(Debug, Clone)]
pub(crate) enum Durable {
    /// Everything up to this sequence is on disk.
    Upto(u64),
    /// The last write failed.
    Failed(Arc<StateError>),
}

struct Queue {
    pending: HashMap<Arc<str>, StreamCursor>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    watchers: Mutex<HashMap<Arc<str>, watch::Sender<Durable>>>,
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

    /// A receiver of `sender`'s durable position, starting at `applied`.
    pub(crate) fn watch(&self, sender: &Arc<str>, applied: u64) -> watch::Receiver<Durable> {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tx = w
            .entry(sender.clone())
            .or_insert_with(|| watch::channel(Durable::Upto(applied)).0);
        tx.send_replace(Durable::Upto(applied));
        tx.subscribe()
    }

    /// Queues `cursor` to be written (never blocks on IO).
    pub(crate) fn submit(&self, sender: &Arc<str>, cursor: StreamCursor) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.pending.insert(sender.clone(), cursor);
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
        for (sender, cursor) in batch {
            let outcome = match store.save(&sender, &cursor) {
                Ok(()) => Durable::Upto(cursor.applied()),
                Err(e) => {
                    tracing::error!(sender = %sender, error = %e, "cannot persist sender state");
                    Durable::Failed(Arc::new(e))
                }
            };
            let w = shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = w.get(&sender) {
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
        let s: Arc<str> = Arc::from("a");
        let mut w = p.watch(&s, 0);
        for i in 1..=100 {
            p.submit(&s, StreamCursor::new(1, i));
        }
        w.wait_for(|d| matches!(d, Durable::Upto(100)))
            .await
            .unwrap();
        assert_eq!(store.load("a").unwrap(), Some(StreamCursor::new(1, 100)));
        // dropping drains what was submitted
        p.submit(&s, StreamCursor::new(1, 101));
        drop(p);
        assert_eq!(store.load("a").unwrap(), Some(StreamCursor::new(1, 101)));
    }
}
