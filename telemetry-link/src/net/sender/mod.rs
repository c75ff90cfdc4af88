//! The sending end: records go into the durable spool at once; a background
//! task keeps a QUIC session with one of the receivers, streams spooled
//! records in batches and deletes them from the spool when acknowledged.
//!
//! # Delivery guarantee (sender side)
//!
//! A record whose [`Sender::send`] returned `Ok` is in the spool and stays
//! there until a receiver acknowledged it (it applied and persisted it) — or
//! until the spool's size cap forced it out, in which case it is counted in
//! `telemetry_sender_records_dropped_total` and the receiver is told how many
//! records it lost ([`Skip`](crate::proto::message::Skip)). Sessions resume at the receiver's applied
//! position, so after a crash of either side nothing is lost and what is
//! resent is recognised as a duplicate. Records the receiver refuses (see
//! [`crate::Applied`]) leave the spool with the acknowledgement that
//! settles them and are counted in `telemetry_sender_records_refused_total`.
//!
//! Several sender processes may share one certificate identity as
//! replicas ([`SenderConfig::replica`]), each with its own spool: a
//! receiver keeps each replica's stream apart.
//!
//! # Cost per record
//!
//! The costs are per batch — fsyncs, datagrams, acks — not per byte, so
//! the sender batches at both ends. Sends made close together share one
//! fsync (the spool's group commit): an application that produces steadily
//! should not await each send before the next but keep several in flight —
//! hold several [`Sender::send`] futures (polled in the order they were
//! created, they get their sequence numbers in that order; bound how many),
//! or hand records over in [`Sender::send_batch`]es. On the link, a batch
//! leaves when it is full or [`SenderConfig::linger`] after its first
//! record; [`Sender::flush`] sends at once.
//!
//! Limits: with [`crate::spool::FsyncPolicy::Interval`] or `Never`, a power cut (not a
//! process crash) can lose the last records; if a receiver then reports more
//! applied than the spool has, the sender moves its sequence past that point
//! so new records are not mistaken for duplicates. A receiver whose state
//! directory is wiped starts the sender's stream afresh from what the spool
//! still holds.

//!
//! # Layout
//!
//! The decisions are the session machines' in [`crate::session`]; this
//! module and its children only run them:
//! * `append`: sends as submissions to the spool's group commit;
//! * `batching`: the default linger and [`Sender::flush`];
//! * `config`: [`SenderConfig`] with its defaults, and the errors of
//!   starting and sending;
//! * `connect`: one connection attempt and the hello exchange;
//! * `drive`: one session's loop around [`crate::session`]'s sender machine;
//! * `present`: the present lane;
//! * `link`: the reconnect loop between sessions.

mod append;
mod batching;
mod config;
mod connect;
mod drive;
mod link;
mod present;

use std::{
    marker::PhantomData,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use prometheus::Registry;
use tokio::{
    sync::{oneshot, watch, Notify},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    metrics::SenderMetrics,
    proto::{
        frame::MAX_FRAME_LIMIT,
        record::{encode_record, Payload},
        replica::validate_replica,
    },
    session::refusals::RefusalLog,
    spool::{Appended, FsyncPolicy, RecoveryReport, SharedSpool, Spool, SpoolStats},
    tls::{Reload, ReloadableTls, Role, TlsError},
};
use append::WakeThreshold;
pub use batching::{Flushed, DEFAULT_LINGER};
use config::default_bind;
pub use config::{SendError, SenderConfig, SenderError};
use present::PresentState;

/// The target of the sender's log messages, whichever of its modules
/// writes them.
const TARGET: &str = "telemetry_link::net::sender";

/// How often refusals are summarised in the log, after the first one of
/// each reason.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The link's state as the application sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether a session is established.
    pub connected: bool,
    /// The receiver address of the current session.
    pub receiver: Option<String>,
    /// The last connection error, if any since the last session.
    pub last_error: Option<String>,
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Everything spooled was acknowledged.
    pub drained: bool,
    /// Records left in the spool for the next run.
    pub unacked: u64,
}

struct Inner {
    spool: SharedSpool,
    fsync: FsyncPolicy,
    /// Where committers and fsync timers run.
    runtime: tokio::runtime::Handle,
    /// Wakes the session after appends that meet `wake_on`, and on stop.
    wake: Notify,
    wake_on: WakeThreshold,
    /// A timer for the next [`FsyncPolicy::Interval`] fsync is armed.
    sync_armed: AtomicBool,
    /// The last sequence [`Sender::flush`] asked to send at once.
    flush: watch::Sender<u64>,
    /// The spool's acknowledged sequence, for [`Sender::flush`].
    acked: watch::Sender<u64>,
    metrics: SenderMetrics,
    status: watch::Sender<LinkStatus>,
    connections: watch::Sender<u64>,
    /// `Some(deadline)` once a shutdown was requested.
    stopping: watch::Sender<Option<Instant>>,
    tls: Mutex<ReloadableTls>,
    task: Mutex<Option<JoinHandle<()>>>,
    endpoint: quinn::Endpoint,
    /// The current session's connection, for statistics.
    current: Mutex<Option<quinn::Connection>>,
    /// The newest present state set by the application.
    present: watch::Sender<Option<Arc<PresentState>>>,
    /// Id of the newest present sent completely to some session.
    present_sent: Arc<AtomicU64>,
    /// The replica name this sender says in its hellos.
    replica: String,
    /// Refusals reported by receivers, logged at a bounded rate.
    refusal_log: Mutex<RefusalLog>,
}

impl Inner {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock()
    }

    /// Brings the spool's gauges and counters up to date. Call with the
    /// spool locked (`spool` is the guard), so that concurrent callers add
    /// each counter delta once.
    fn refresh_gauges(&self, spool: &Spool) {
        let stats = spool.stats();
        let m = &self.metrics;
        m.last_seq.set(stats.last_seq as i64);
        m.acked_seq.set(stats.acked_seq as i64);
        m.spool_records.set(stats.records as i64);
        m.spool_bytes.set(stats.bytes as i64);
        m.spool_capacity_bytes.set(stats.cap_bytes as i64);
        for (counter, total) in [
            (&m.records_dropped, stats.dropped_total),
            (&m.spool_syncs, stats.syncs),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.acked.send_if_modified(|a| {
            let newer = stats.acked_seq > *a;
            *a = (*a).max(stats.acked_seq);
            newer
        });
    }
}

/// The sending end of a link. Cheap to clone; all clones share one spool
/// and one background task.
pub struct Sender<T> {
    inner: Arc<Inner>,
    _payload: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spool = self.inner.spool();
        f.debug_struct("Sender")
            .field("replica", &self.inner.replica)
            .field("stream_id", &format_args!("{:032x}", spool.stream_id()))
            .field("spool_dir", &spool.dir())
            .field("last_seq", &spool.last_seq())
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _payload: PhantomData,
        }
    }
}

fn encode_all<'a, T: Payload>(
    records: impl IntoIterator<Item = &'a T>,
) -> Result<(Vec<u8>, Vec<usize>), SendError> {
    let mut data = Vec::new();
    let mut ends = Vec::new();
    for r in records {
        encode_record(r, &mut data)?;
        ends.push(data.len());
    }
    Ok((data, ends))
}

impl<T: Payload> Sender<T> {
    /// Opens the spool (recovering it), checks the TLS files and starts the
    /// background link task. Metrics are registered in `registry`.
    pub async fn start(
        config: SenderConfig,
        registry: &Registry,
    ) -> Result<(Sender<T>, RecoveryReport), SenderError> {
        if config.receivers.is_empty() {
            return Err(SenderError::NoReceivers);
        }
        validate_replica(&config.replica)?;
        if config.spool.max_record_bytes + 64 > config.max_frame.min(MAX_FRAME_LIMIT) {
            return Err(SenderError::RecordExceedsFrame {
                max_record_bytes: config.spool.max_record_bytes,
                max_frame: config.max_frame,
            });
        }
        let metrics = SenderMetrics::register(registry)?;
        let tls = ReloadableTls::load(&config.tls, Role::Sender)?;
        let dir = config.spool_dir.clone();
        let spool_cfg = config.spool.clone();
        let (spool, report) = tokio::task::spawn_blocking(move || Spool::open(dir, spool_cfg))
            .await
            .map_err(SenderError::SpoolTask)??;
        if !report.is_clean() {
            warn!(?report, "spool recovered from an unclean state");
        }
        let stats = spool.stats();
        let fsync = spool.config().fsync;
        let bind = match config.bind {
            Some(b) => b,
            None => default_bind(),
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(SenderError::Bind)?;
        let inner = Arc::new(Inner {
            spool: SharedSpool::new(spool),
            fsync,
            runtime: tokio::runtime::Handle::current(),
            wake: Notify::new(),
            wake_on: WakeThreshold::default(),
            sync_armed: AtomicBool::new(false),
            flush: watch::channel(0).0,
            acked: watch::channel(stats.acked_seq).0,
            metrics,
            status: watch::channel(LinkStatus::default()).0,
            connections: watch::channel(0).0,
            stopping: watch::channel(None).0,
            tls: Mutex::new(tls),
            task: Mutex::new(None),
            endpoint,
            current: Mutex::new(None),
            present: watch::channel(None).0,
            present_sent: Arc::new(AtomicU64::new(0)),
            replica: config.replica.clone(),
            refusal_log: Mutex::new(RefusalLog::new(REFUSAL_LOG_EVERY)),
        });
        inner.refresh_gauges(&inner.spool());
        info!(
            identity = inner
                .tls
                .lock()
                .map(|t| t.current().identity().to_owned())
                .unwrap_or_default(),
            replica = %config.replica,
            last_seq = stats.last_seq,
            unacked = stats.records,
            "telemetry link sender started"
        );
        let task = tokio::spawn(link::run_link(inner.clone(), config));
        if let Ok(mut t) = inner.task.lock() {
            *t = Some(task);
        }
        Ok((
            Sender {
                inner,
                _payload: PhantomData,
            },
            report,
        ))
    }

    /// Queues one record; returns its sequence number. Waits for the disk
    /// (and an fsync under [`crate::spool::FsyncPolicy::EveryBatch`]), never
    /// for the network. Sends in flight together share that fsync (see the
    /// module documentation); the record takes its place in the sequence
    /// when the future is first polled.
    pub async fn send(&self, record: &T) -> Result<u64, SendError> {
        self.send_batch(std::slice::from_ref(record))
            .await
            .map(|a| a.first_seq)
    }

    /// Queues records in order, atomically with respect to other sends,
    /// and returns once they are spooled as [`Sender::send`] says.
    pub async fn send_batch(&self, records: &[T]) -> Result<Appended, SendError> {
        let (data, ends) = encode_all(records)?;
        let (tx, rx) = oneshot::channel();
        self.inner.submit(
            data,
            ends,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| SendError::Closed)?.map_err(Into::into)
    }

    /// [`Sender::send_batch`] for callers outside async code (or that accept
    /// blocking the current thread on disk I/O).
    pub fn send_batch_blocking(&self, records: &[T]) -> Result<Appended, SendError> {
        let (data, ends) = encode_all(records)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.submit(
            data,
            ends,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .map_err(|_| SendError::Closed)?
            .map_err(Into::into)
    }

    /// Sets the application's present state: its current view (typically
    /// a full snapshot, plus the latest sample of each series), sent to the
    /// receiver on its own QUIC stream, ahead of or beside the backlog, so
    /// that the receiver can show the present at once while history drains
    /// behind it. Not spooled: only the newest present is kept, in memory.
    /// It is sent at once to the established session, or else to the next
    /// one; a newer present replaces one not sent yet (and abandons one
    /// being sent). The usual caller sets it whenever
    /// [`Sender::connections`] changes. Returns `covers_seq`: the last
    /// sequence number assigned, which every record older than the present
    /// has.
    ///
    /// Records whose send has not returned yet may be numbered after
    /// `covers_seq`: set the present once the sends it reflects returned.
    ///
    /// Receivers speaking protocol version 1 do not get presents.
    pub fn set_present(&self, records: &[T]) -> Result<u64, SendError> {
        let (body, _) = crate::proto::present::encode_body(records)?;
        let covers_seq = self.inner.spool().last_seq();
        self.inner.present.send_modify(|p| {
            let id = p.as_ref().map_or(1, |old| old.id + 1);
            *p = Some(Arc::new(PresentState {
                id,
                covers_seq,
                body,
            }));
        });
        Ok(covers_seq)
    }

    /// Spool counters.
    pub fn stats(&self) -> SpoolStats {
        self.inner.spool().stats()
    }

    /// The spool's stream id.
    pub fn stream_id(&self) -> u128 {
        self.inner.spool().stream_id()
    }

    /// This sender's replica name (empty: the default replica).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// A counter that increases with every established session; sources
    /// re-send full state when it changes (the receiver may have restarted).
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.inner.connections.subscribe()
    }

    /// The link's current status.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.inner.status.subscribe()
    }

    /// The sender's metrics.
    pub fn metrics(&self) -> &SenderMetrics {
        &self.inner.metrics
    }

    /// Re-reads the TLS files now (e.g. on SIGHUP); new sessions use them.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        reload_tls(&self.inner, true)
    }

    /// QUIC statistics of the current session (UDP bytes and datagrams,
    /// path RTT, congestion state), if one is established.
    pub fn quic_stats(&self) -> Option<quinn::ConnectionStats> {
        self.inner
            .current
            .lock()
            .ok()?
            .as_ref()
            .map(quinn::Connection::stats)
    }

    /// The link's local UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Moves the link's UDP socket to a new local address; an established
    /// session migrates to it without a new handshake.
    pub fn rebind(&self, addr: SocketAddr) -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind(addr)?;
        self.inner.endpoint.rebind(socket)
    }

    /// Stops the link: keeps sending until everything spooled is
    /// acknowledged or `deadline` passes, then closes the session and
    /// persists the spool's position. Records still unacknowledged stay in
    /// the spool for the next start.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let waiting = self.inner.spool().stats().records;
        if waiting > 0 {
            let status = self.inner.status.borrow().clone();
            info!(
                target: TARGET,
                records = waiting,
                connected = status.connected,
                last_error = status.last_error.as_deref().unwrap_or(""),
                "stopping: waiting up to {deadline:?} for the receiver to acknowledge the spooled \
                 records; what is not acknowledged by then stays in the spool for the next start"
            );
        }
        let _ = self.inner.stopping.send(Some(Instant::now() + deadline));
        self.inner.wake.notify_one();
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            // The session stops at the deadline, then waits at most
            // BYE_GRACE for the receiver's close; the endpoint's own close
            // takes up to a second more.
            let _ =
                tokio::time::timeout(deadline + drive::BYE_GRACE + Duration::from_secs(2), task)
                    .await;
        }
        let mut spool = self.inner.spool();
        if let Err(e) = spool.checkpoint() {
            warn!(error = %e, "could not checkpoint the spool");
        }
        let stats = spool.stats();
        self.inner.refresh_gauges(&spool);
        drop(spool);
        ShutdownReport {
            drained: stats.records == 0,
            unacked: stats.records,
        }
    }
}

fn reload_tls(inner: &Inner, force: bool) -> Result<(), TlsError> {
    let Ok(mut tls) = inner.tls.lock() else {
        return Err(TlsError::Config("TLS state lock poisoned".into()));
    };
    match tls.poll(force) {
        Reload::Unchanged => Ok(()),
        Reload::Reloaded => {
            inner.metrics.tls_reloads.with_label_values(&["ok"]).inc();
            info!("TLS material reloaded; new sessions use it");
            Ok(())
        }
        Reload::Failed(e) => {
            inner
                .metrics
                .tls_reloads
                .with_label_values(&["error"])
                .inc();
            warn!(error = %e, "TLS reload failed; keeping the previous certificate");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spool::SpoolConfig;

    #[test]
    fn fsync_policy_is_reexported() {
        assert_eq!(
            SpoolConfig::default().fsync,
            crate::spool::FsyncPolicy::EveryBatch
        );
    }
}
