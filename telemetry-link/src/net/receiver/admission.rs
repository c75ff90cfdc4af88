//! Admission: the accept loop and who gets in. A connection beyond
//! `max_connections` is refused (`busy`); while `max_pending_handshakes`
//! unvalidated handshakes are in flight, new ones must first prove their
//! address with a QUIC retry (or are refused when they already did). Every
//! admitted connection runs as its own task; the loop also polls the TLS
//! files for reloads, and on shutdown waits for the sessions to finish.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::task::JoinSet;

use super::{
    endpoint::{self, ServerTemplate},
    session, Handler, Shared,
};
use crate::{proto::record::Payload, tls::ReloadableTls};

/// How the accept loop reloads TLS material.
pub(super) struct Reloads {
    pub(super) tls: Arc<Mutex<ReloadableTls>>,
    pub(super) template: ServerTemplate,
    /// Poll interval; `None`: only on request.
    pub(super) every: Option<Duration>,
}

/// Accepts connections until the endpoint closes or shutdown is requested,
/// then waits for every session; clears `running` when done.
pub(super) async fn accept_loop<T: Payload, H: Handler<T>>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<H>>,
    reloads: Reloads,
    running: Arc<AtomicBool>,
) {
    let mut sessions = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let mut reload_tick = tokio::time::interval(reloads.every.unwrap_or(Duration::from_secs(3600)));
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload_tick.tick().await;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                admit::<T, H>(incoming, &shared, &mut sessions);
            }
            _ = shutdown.changed() => break,
            Some(res) = sessions.join_next() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!("session task panicked: {e}");
                    }
                }
            }
            _ = reload_tick.tick(), if reloads.every.is_some() => {
                let _ = endpoint::reload(
                    &endpoint, &reloads.tls, &reloads.template, &shared.metrics, false,
                );
            }
        }
    }
    // Shutdown: sessions see the flag between frames and finish.
    while sessions.join_next().await.is_some() {}
    running.store(false, Ordering::Relaxed);
}

/// Refuses, asks for a retry, or spawns the connection's task.
fn admit<T: Payload, H: Handler<T>>(
    incoming: quinn::Incoming,
    shared: &Arc<Shared<H>>,
    sessions: &mut JoinSet<()>,
) {
    let failures = &shared.metrics.handshake_failures;
    if shared.active.load(Ordering::Relaxed) >= shared.limits.max_connections {
        failures.with_label_values(&["busy"]).inc();
        incoming.refuse();
        return;
    }
    if !incoming.remote_address_validated()
        && shared.pending.load(Ordering::Relaxed) >= shared.limits.max_pending_handshakes
    {
        if incoming.may_retry() {
            let _ = incoming.retry();
        } else {
            failures.with_label_values(&["busy"]).inc();
            incoming.refuse();
        }
        return;
    }
    shared.active.fetch_add(1, Ordering::Relaxed);
    shared.pending.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    sessions.spawn(async move {
        let pending = PendingGuard::new(&shared.pending);
        session::serve::<T, H>(incoming, &shared, pending).await;
        shared.active.fetch_sub(1, Ordering::Relaxed);
    });
}

/// One admitted handshake in flight: counted in `pending` until
/// [`PendingGuard::done`] or drop.
pub(super) struct PendingGuard<'a> {
    pending: &'a AtomicUsize,
    released: bool,
}

impl<'a> PendingGuard<'a> {
    fn new(pending: &'a AtomicUsize) -> Self {
        Self {
            pending,
            released: false,
        }
    }

    /// The handshake finished (either way).
    pub(super) fn done(&mut self) {
        if !self.released {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.released = true;
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_handshake_is_released_once() {
        let pending = AtomicUsize::new(2);
        let mut g = PendingGuard::new(&pending);
        g.done();
        g.done();
        drop(g);
        assert_eq!(pending.load(Ordering::Relaxed), 1);
        drop(PendingGuard::new(&pending));
        assert_eq!(pending.load(Ordering::Relaxed), 0);
    }
}
