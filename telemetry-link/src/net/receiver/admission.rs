//! Admission: the accept loop and who gets in. Each incoming connection is
//! put to the [`Gate`] (the decisions, without IO: pending-handshake and
//! session budgets, QUIC Retry under pressure, the per-address limit) and
//! admitted, asked for a Retry, or refused and counted by reason. Every
//! admitted connection runs as its own task holding a [`Ticket`]: pending
//! until its handshake ends, then an open session (in the gate's count and
//! in the registry of open connections that revocation scans) until the
//! task ends. The loop also polls the TLS files for reloads, writes the
//! summary of handshake failures once a minute, and on shutdown waits for
//! the sessions to finish.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;
use tracing::warn;

use super::{
    endpoint::{self, ServerTemplate},
    failure_log::{FailureLog, Subject},
    gate::{Arrival, Decision, Gate, GateLimits, Refusal, Source},
    open::{OpenConnection, OpenConnections},
    session, Handler, ReceiverLimits, Shared,
};
use crate::{metrics::ReceiverMetrics, proto::record::Payload, tls::ReloadableTls};

/// How often the handshake failures not logged in full are summed up.
const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How the accept loop reloads TLS material.
pub(super) struct Reloads {
    pub(super) template: ServerTemplate,
    /// Poll interval; `None`: only on request.
    pub(super) every: Option<Duration>,
}

/// What admission shares between the accept loop, the connection tasks and
/// the [`super::Receiver`] handle.
pub(super) struct Admission {
    gate: Mutex<Gate>,
    log: Mutex<FailureLog>,
    pub(super) open: OpenConnections,
    pub(super) tls: Arc<Mutex<ReloadableTls>>,
    pub(super) metrics: ReceiverMetrics,
}

/// Why an authenticated peer gets no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoSession {
    /// Every session slot is taken.
    Busy,
    /// The CRL in use lists its certificate (reloaded during the handshake).
    Revoked,
}

impl Admission {
    /// Admission state for `limits`, with the TLS material revocation
    /// checks read.
    pub(super) fn new(
        limits: &ReceiverLimits,
        tls: Arc<Mutex<ReloadableTls>>,
        metrics: ReceiverMetrics,
    ) -> Self {
        Self {
            gate: Mutex::new(Gate::new(GateLimits {
                max_sessions: limits.max_connections,
                max_pending: limits.max_pending_handshakes,
                max_pending_per_source: limits.max_pending_per_address,
            })),
            log: Mutex::new(FailureLog::new(Instant::now())),
            open: OpenConnections::default(),
            tls,
            metrics,
        }
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        // Every gate operation leaves its counts consistent.
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, FailureLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a refused handshake in `telemetry_link_handshake_failures_total`.
    pub(super) fn count_failure(&self, reason: &'static str) {
        self.metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Logs a refused handshake: in full (WARN) when it is the first of
    /// its reason and subject, else only in the next summary.
    pub(super) fn log_failure(
        &self,
        reason: &'static str,
        subject: Subject,
        remote: SocketAddr,
        detail: &dyn fmt::Display,
    ) {
        if self.log().note(reason, subject, Instant::now()) {
            warn!(%remote, reason, "handshake refused: {detail} (further ones are summed up once a minute)");
        }
    }

    /// Writes the summary of the failures not logged in full, if any.
    fn log_summary(&self) {
        if let Some(s) = self.log().summary() {
            warn!(
                count = s.total,
                "{} more handshake failures in the last minute: {s}", s.total
            );
        }
    }

    fn set_pending_gauge(&self, gate: &Gate) {
        self.metrics.admission.pending.set(gate.pending() as i64);
    }
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
    let mut summary_tick = tokio::time::interval(FAILURE_SUMMARY_EVERY);
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    summary_tick.tick().await;
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
                let _ = endpoint::reload(&endpoint, &shared.admission, &reloads.template, false);
            }
            _ = summary_tick.tick() => shared.admission.log_summary(),
        }
    }
    // Shutdown: sessions see the flag between frames and finish.
    while sessions.join_next().await.is_some() {}
    shared.admission.log_summary();
    running.store(false, Ordering::Relaxed);
}

/// Puts a connection to the gate: refuses it, asks for a retry, or spawns
/// its task.
fn admit<T: Payload, H: Handler<T>>(
    incoming: quinn::Incoming,
    shared: &Arc<Shared<H>>,
    sessions: &mut JoinSet<()>,
) {
    let admission = &shared.admission;
    let remote = incoming.remote_address();
    let source = Source::of(remote);
    let arrival = Arrival {
        source,
        validated: incoming.remote_address_validated(),
        may_retry: incoming.may_retry(),
    };
    let decision = {
        let mut gate = admission.gate();
        let d = gate.arrive(arrival, Instant::now());
        admission.set_pending_gauge(&gate);
        d
    };
    match decision {
        Decision::Retry => {
            admission.metrics.admission.retries.inc();
            if let Err(e) = incoming.retry() {
                // Not reached: the gate asks for a retry only when one may be.
                e.into_incoming().refuse();
            }
        }
        Decision::Refuse(refusal) => {
            admission.count_failure(refusal.label());
            admission.log_failure(
                refusal.label(),
                Subject::Address(remote.ip()),
                remote,
                &refusal_detail(refusal),
            );
            incoming.refuse();
        }
        Decision::Admit => {
            let shared = shared.clone();
            sessions.spawn(async move {
                let ticket = Ticket::new(&shared.admission, source);
                session::serve::<T, H>(incoming, &shared, ticket.pending()).await;
            });
        }
    }
}

fn refusal_detail(r: Refusal) -> &'static str {
    match r {
        Refusal::Busy => "every session slot is taken (max_connections)",
        Refusal::HandshakeLimit => "too many handshakes in progress (max_pending_handshakes)",
        Refusal::AddressLimit => {
            "too many handshakes in progress from this address (max_pending_per_address)"
        }
    }
}

/// One admitted connection's standing: a pending handshake until its
/// [`PendingGuard`] is done, then — if the peer got a session — an open
/// session until the ticket is dropped at the end of the connection's task.
pub(super) struct Ticket<'a> {
    admission: &'a Admission,
    source: Source,
    pending: AtomicBool,
    /// Key in the open-connection registry (0: no session).
    session: AtomicUsize,
    has_session: AtomicBool,
}

impl<'a> Ticket<'a> {
    fn new(admission: &'a Admission, source: Source) -> Self {
        Self {
            admission,
            source,
            pending: AtomicBool::new(true),
            session: AtomicUsize::new(0),
            has_session: AtomicBool::new(false),
        }
    }

    /// The handshake's guard, handed to the connection's task.
    fn pending(&self) -> PendingGuard<'_> {
        PendingGuard { ticket: self }
    }

    fn handshake_over(&self) {
        if self.pending.swap(false, Ordering::Relaxed) {
            let mut gate = self.admission.gate();
            gate.handshake_over(self.source);
            self.admission.set_pending_gauge(&gate);
        }
    }

    fn open_session(&self, open: OpenConnection) -> Result<(), NoSession> {
        self.handshake_over();
        let certificate = open.certificate.clone();
        self.admission
            .gate()
            .open_session(self.source, Instant::now())
            .map_err(|_| NoSession::Busy)?;
        self.has_session.store(true, Ordering::Relaxed);
        // Registered first, checked second: see `open`.
        let key = self.admission.open.insert(open);
        self.session.store(key, Ordering::Relaxed);
        let revoked = self
            .admission
            .tls
            .lock()
            .map(|tls| tls.current().is_revoked(&certificate))
            .unwrap_or(false);
        if revoked {
            return Err(NoSession::Revoked);
        }
        Ok(())
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.handshake_over();
        if self.has_session.load(Ordering::Relaxed) {
            self.admission
                .open
                .remove(self.session.load(Ordering::Relaxed));
            self.admission.gate().close_session();
        }
    }
}

/// An admitted connection's handshake in progress: counted as pending
/// until [`PendingGuard::done`], [`PendingGuard::open_session`] or drop.
pub(super) struct PendingGuard<'a> {
    ticket: &'a Ticket<'a>,
}

impl fmt::Debug for PendingGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingGuard").finish_non_exhaustive()
    }
}

impl PendingGuard<'_> {
    /// The handshake finished (either way).
    pub(super) fn done(&mut self) {
        self.ticket.handshake_over();
    }

    /// The peer authenticated and is allowed: takes a session slot and
    /// registers the connection with the certificate it presented, for
    /// revocation. The slot is freed when the connection's task ends.
    pub(super) fn open_session(
        &mut self,
        conn: &quinn::Connection,
        certificate: CertificateDer<'static>,
        identity: &str,
        remote: SocketAddr,
    ) -> Result<(), NoSession> {
        self.ticket.open_session(OpenConnection {
            conn: conn.clone(),
            certificate,
            identity: identity.to_owned(),
            remote,
        })
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests;
