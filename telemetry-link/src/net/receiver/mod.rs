//! The receiving end: a quinn endpoint that authenticates senders by their
//! client certificates, runs one session per sender stream (an identity and
//! a replica), hands batches to the application's [`Handler`] in sequence
//! order, persists the applied position and acknowledges.
//!
//! # Delivery guarantee (receiver side)
//!
//! For each sender identity, replica and stream, records reach
//! [`Handler::handle`] in strictly increasing sequence order, each at most
//! once **per receiver process**; a record is acknowledged only after the
//! handler returned `Ok` for it (applied or refused, see [`Applied`]) and
//! its sequence was persisted in the state directory. Records the link
//! refuses itself (they do not decode, or their series is beyond the
//! interning budget or the label limits) are settled the same way without
//! reaching the handler. Records that arrive again after that are dropped
//! and counted as duplicates; a batch that skips ahead without the sender
//! announcing the gap closes the connection. Positions are kept in the
//! state journal: one writer appends every session's newest positions and
//! makes them durable with one fdatasync per cycle (`net::persist`); a
//! session acknowledges only what is durable. Across a receiver crash, the
//! window between the handler returning and the fdatasync of the write
//! cycle carrying its position is the one place where a batch can be
//! handed to the next process's handler a second time; [`Delivery::first_seq`] lets a handler with durable side
//! effects recognise that. A handler whose state lives in memory (like the
//! metrics store of `telemetry-receiver`) loses its state with the process
//! anyway and cannot observe it.
//!
//! # Layout
//!
//! The decisions of a session (hello, versions, dedup, group commit, acks,
//! closes) are the state machine in `session::receiver`; the files here only
//! move bytes, tasks and timers for it:
//!
//! * `endpoint`: the quinn endpoint, its server configuration and TLS reload.
//! * `keys`: the stateless-reset and connection-ID keys kept across restarts.
//! * `gate`: the admission decisions (pending-handshake and session
//!   budgets, Retry under pressure, the per-address limit), without IO.
//! * `admission`: the accept loop putting connections to the gate, and each
//!   connection's standing (pending, then an open session).
//! * `failure_log`: handshake failures in the log at a bounded rate.
//! * `open`: the authenticated connections and their certificates; closes
//!   those a reloaded CRL revokes.
//! * `handshake`: the TLS handshake, the sender's identity, the allow list.
//! * `handler`: the application's [`Handler`] and what it is given.
//! * `slots`: one session per sender identity and replica.
//! * `session`: drives the session machine over the backlog stream.
//! * `presents`: the present-state lane.

mod admission;
mod endpoint;
mod failure_log;
mod gate;
mod handler;
mod handshake;
mod keys;
mod open;
mod presents;
mod session;
mod slots;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus::Registry;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{close_code, persist::Persister, TransportTuning};
use crate::{
    metrics::ReceiverMetrics,
    proto::{
        batch::{InternLimits, DEFAULT_MAX_LABEL_BYTES},
        frame::{DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT},
        message::{ErrorCode, PROTOCOL_VERSION},
        record::Payload,
        refused::RefusedCounts,
    },
    receiver_state::{
        journal::{self, JournalOptions},
        StateError, StateStore,
    },
    sample::MAX_LABELS,
    session::refusals::{describe, LogLine, RefusalLog},
    tls::{ReloadableTls, Role, TlsError, TlsFiles},
};
use admission::Admission;
use endpoint::ServerTemplate;
pub use handler::{Applied, Delivery, Handler, HandlerError, PresentDelivery};
use slots::Slots;

/// How often a sender's refusals are summarised in the log, after the
/// first one of each reason.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// [`ReceiverLimits::max_series`] by default.
pub const DEFAULT_RECEIVER_MAX_SERIES: u32 = 1 << 16;
/// [`ReceiverLimits::max_definition_bytes`] by default.
pub const DEFAULT_RECEIVER_MAX_DEFINITION_BYTES: usize = 8 << 20;
/// [`ReceiverLimits::max_present_bytes`] by default.
pub const DEFAULT_RECEIVER_MAX_PRESENT_BYTES: usize = 8 << 20;

/// Resource limits of a receiver.
///
/// Memory per connection, at worst: its interning tables (about
/// `2 × max_definition_bytes + 200 B × max_series`, ~29 MiB with the
/// defaults), one present being assembled and decoded (up to about
/// `4 × max_present_bytes`, ~32 MiB) and one batch being decoded (a few
/// times `max_frame`): ~65 MiB with the defaults, reached only by a
/// sender that spends every limit at once; a typical sender uses a few
/// hundred KiB. The application's own state is budgeted by the
/// application (the receiver binary's budgets per sender).
#[derive(Debug, Clone, Copy)]
pub struct ReceiverLimits {
    /// Largest frame accepted (and announced to senders).
    pub max_frame: usize,
    /// Series a connection may define (announced to senders, which send
    /// further series inline); samples of series defined beyond it are
    /// refused (`series_limit`). Default [`DEFAULT_RECEIVER_MAX_SERIES`]
    /// (64 Ki): interning is a wire saving, not a store, and a sender whose
    /// series outnumber it still delivers them all, inline.
    pub max_series: u32,
    /// Bytes of series definitions a connection may intern (each charged
    /// its canonical bytes plus 64 per label); samples of series beyond it
    /// are refused (`series_limit`). With `max_series` this bounds the
    /// interning memory of a connection: about
    /// `2 × max_definition_bytes + 200 B × max_series` (see
    /// [`InternLimits`]). Default [`DEFAULT_RECEIVER_MAX_DEFINITION_BYTES`]
    /// (8 MiB): about 29 MiB for a connection that spends all of both,
    /// room for the 64 Ki series of up to ~128 charged bytes (a short name
    /// and a label or two) or ~16 k typical series (~500 bytes charged).
    pub max_definition_bytes: usize,
    /// Labels one series may have (at most 64); samples of a series with
    /// more are refused (`label_limit`).
    pub max_labels_per_series: usize,
    /// Bytes of label names and values one series may have; samples of a
    /// series with more are refused (`label_limit`).
    pub max_label_bytes: usize,
    /// Concurrent authenticated sessions; a connection arriving while they
    /// are all taken is refused (`busy`). Handshakes in progress do not
    /// count here.
    pub max_connections: usize,
    /// Concurrent handshakes in progress (until the peer's certificate is
    /// verified, address validated or not); more are refused
    /// (`handshake_limit`). From half of it on the receiver is under
    /// pressure: handshakes from unvalidated addresses must first prove
    /// their address with a QUIC Retry, and the per-address limit applies.
    /// The default, 2048, admits a reconnect storm of 1000 senders without
    /// reaching the pressure mark; a pending handshake costs a few tens of
    /// kilobytes.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress from one address (an IPv4 address, an IPv6
    /// /64) while the receiver is under pressure; more are refused
    /// (`address_limit`). An address whose sender completed a session in
    /// the last 10 minutes may use up to half of `max_pending_handshakes`
    /// instead. The default, 32, lets a NAT with dozens of senders through a
    /// reconnect storm even during a flood; below the pressure mark there
    /// is no per-address limit at all.
    pub max_pending_per_address: usize,
    /// Time allowed for the TLS handshake, from the first packet until the
    /// peer's certificate is verified. The default, 3 s, is a sender's
    /// default connect timeout (a slower handshake has been abandoned by
    /// the sender anyway) and bounds how long a peer that never finishes
    /// holds a pending slot.
    pub handshake_timeout: Duration,
    /// Time allowed for the hello, once the TLS handshake is done.
    pub hello_timeout: Duration,
    /// Frames applied before the state is persisted and acknowledged, when
    /// more are already waiting (group commit).
    pub max_frames_per_commit: usize,
    /// Largest present state accepted (bytes of records); a larger one is
    /// refused and counted, the session goes on. A present is held whole
    /// while it is assembled and decoded (decoded records take 2–4 times
    /// their encoded bytes), one at a time per connection. Default
    /// [`DEFAULT_RECEIVER_MAX_PRESENT_BYTES`] (8 MiB): a sender's whole
    /// current view within the receiver's default budgets is a few MiB.
    pub max_present_bytes: usize,
    /// Newest protocol version spoken (at most [`PROTOCOL_VERSION`]): pins
    /// a receiver to an older version during a staged upgrade; senders fall
    /// back to it.
    pub max_protocol_version: u16,
}

impl ReceiverLimits {
    /// The interning limits of one connection.
    pub fn intern(&self) -> InternLimits {
        InternLimits {
            max_series: self.max_series,
            max_definition_bytes: self.max_definition_bytes,
            max_labels_per_series: self.max_labels_per_series,
            max_label_bytes: self.max_label_bytes,
        }
    }
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_series: DEFAULT_RECEIVER_MAX_SERIES,
            max_definition_bytes: DEFAULT_RECEIVER_MAX_DEFINITION_BYTES,
            max_labels_per_series: MAX_LABELS,
            max_label_bytes: DEFAULT_MAX_LABEL_BYTES,
            max_connections: 1024,
            max_pending_handshakes: 2048,
            max_pending_per_address: 32,
            handshake_timeout: Duration::from_secs(3),
            hello_timeout: Duration::from_secs(5),
            max_frames_per_commit: 64,
            max_present_bytes: DEFAULT_RECEIVER_MAX_PRESENT_BYTES,
            max_protocol_version: PROTOCOL_VERSION,
        }
    }
}

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// CA, certificate and key.
    pub tls: TlsFiles,
    /// Where the senders' applied positions (`positions.journal`,
    /// `positions.snapshot`) and the stateless-reset key live.
    pub state_dir: PathBuf,
    /// Identities allowed to connect; `None` allows every certificate the CA
    /// signed.
    pub allowed_senders: Option<BTreeSet<String>>,
    /// Limits.
    pub limits: ReceiverLimits,
    /// QUIC timers and windows.
    pub transport: TransportTuning,
    /// How often to check the TLS files for changes; `None` disables it
    /// ([`Receiver::reload_tls`] still works).
    pub tls_reload_interval: Option<Duration>,
}

impl ReceiverConfig {
    /// A configuration with default limits and timers.
    pub fn new(listen: SocketAddr, tls: TlsFiles, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            tls,
            state_dir: state_dir.into(),
            allowed_senders: None,
            limits: ReceiverLimits::default(),
            transport: TransportTuning::default(),
            tls_reload_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, Error)]
pub enum ReceiverError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// State directory unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// Socket problem.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Metrics could not be registered (duplicate registration).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// [`ReceiverLimits::max_frame`] is outside `1024..=16 MiB`.
    #[error("configuration: max_frame must be within 1024..={MAX_FRAME_LIMIT}")]
    MaxFrame {
        /// The configured value.
        max_frame: usize,
    },
    /// No async runtime to drive the endpoint.
    #[error("configuration: no async runtime found")]
    NoRuntime,
}

/// What every task of a receiver shares.
struct Shared<H> {
    limits: ReceiverLimits,
    allowed: Option<BTreeSet<String>>,
    metrics: ReceiverMetrics,
    state: StateStore,
    persister: Persister,
    handler: Arc<H>,
    slots: Slots,
    /// Each sender's refusal log (bounded by the identities that connect).
    refusal_logs: Mutex<HashMap<Arc<str>, RefusalLog>>,
    /// The gate, the open connections, the handshake-failure log.
    admission: Arc<Admission>,
    shutdown: watch::Receiver<bool>,
}

impl<H> Shared<H> {
    /// Logs refusals of `sender`'s replica `replica` through the sender's
    /// rate-limited log (the first of each reason, then a summary per
    /// [`REFUSAL_LOG_EVERY`]); `None`: what is left, as a session ends.
    fn log_refusals(&self, sender: &Arc<str>, replica: &str, counts: Option<&RefusedCounts>) {
        let now = std::time::Instant::now();
        let lines = {
            let mut logs = self.refusal_logs.lock().unwrap_or_else(|p| p.into_inner());
            let log = logs
                .entry(sender.clone())
                .or_insert_with(|| RefusalLog::new(REFUSAL_LOG_EVERY));
            match counts {
                Some(counts) => log.note(counts, now),
                None => log.flush(now).into_iter().collect(),
            }
        };
        for line in lines {
            match line {
                LogLine::First(reason, n) => warn!(
                    sender = %sender,
                    replica = %replica,
                    reason = %reason,
                    records = n,
                    "refusing records (settled, not applied); further refusals are summarised"
                ),
                LogLine::Summary { counts, over } => warn!(
                    sender = %sender,
                    replica = %replica,
                    refused = %describe(&counts),
                    over = ?over,
                    "records refused"
                ),
            }
        }
    }
}

/// A cheap, cloneable readiness check of a [`Receiver`]: the QUIC listener
/// runs and the state directory is writable.
#[derive(Debug, Clone)]
pub struct ReadyHandle {
    running: Arc<AtomicBool>,
    state: StateStore,
}

impl ReadyHandle {
    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.running.load(Ordering::Relaxed) {
            return Err("the QUIC listener is not running".into());
        }
        self.state
            .check_writable()
            .map_err(|e| format!("state directory not writable: {e}"))
    }
}

/// A running receiver.
pub struct Receiver {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    metrics: ReceiverMetrics,
    state: StateStore,
    admission: Arc<Admission>,
    server_template: ServerTemplate,
    shutdown: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("local_addr", &self.local_addr)
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Receiver {
    /// Dropping without [`Receiver::shutdown`] is an abrupt stop (like a
    /// crash, minus the loss of queued state writes, which still complete):
    /// sessions are aborted at their next await point and the endpoint closes.
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.running.store(false, Ordering::Relaxed);
        self.endpoint
            .close(close_code(ErrorCode::ShuttingDown), b"receiver stopped");
    }
}

impl Receiver {
    /// Binds the endpoint and starts accepting senders. `T` is the payload
    /// type; metrics are registered in `registry`.
    pub async fn start<T: Payload, H: Handler<T>>(
        config: ReceiverConfig,
        handler: Arc<H>,
        registry: &Registry,
    ) -> Result<Receiver, ReceiverError> {
        let max_frame = config.limits.max_frame;
        if !(1024..=MAX_FRAME_LIMIT).contains(&max_frame) {
            return Err(ReceiverError::MaxFrame { max_frame });
        }
        let metrics = ReceiverMetrics::register(registry)?;
        let tls_state = ReloadableTls::load(&config.tls, Role::Receiver)?;
        let (state, journal, recovery) = journal::open(
            &config.state_dir,
            JournalOptions::new(metrics.state_syncs.clone()),
        )?;
        info!(
            streams = recovery.streams,
            migrated = recovery.migrated,
            journal_records = recovery.journal_records,
            "sender positions recovered"
        );
        for (stream, c) in state.positions() {
            metrics
                .applied_seq
                .with_label_values(&[&stream.sender, &stream.replica])
                .set(c.applied() as i64);
        }
        let template = ServerTemplate::new(&config.transport, &metrics);
        let server_cfg = template.build(tls_state.current())?;
        let endpoint = endpoint::bind(&config, server_cfg, &metrics)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| ReceiverError::Bind {
                addr: config.listen,
                source,
            })?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let persister = Persister::start(journal).map_err(|source| StateError::Io {
            path: config.state_dir.clone(),
            source,
        })?;
        let tls = Arc::new(Mutex::new(tls_state));
        let admission = Arc::new(Admission::new(&config.limits, tls, metrics.clone()));
        let shared = Arc::new(Shared {
            limits: config.limits,
            allowed: config.allowed_senders.clone(),
            metrics: metrics.clone(),
            state: state.clone(),
            persister,
            handler,
            slots: Slots::default(),
            refusal_logs: Mutex::new(HashMap::new()),
            admission: admission.clone(),
            shutdown: shutdown_rx,
        });
        let running = Arc::new(AtomicBool::new(true));
        let accept = tokio::spawn(admission::accept_loop::<T, H>(
            endpoint.clone(),
            shared,
            admission::Reloads {
                template: template.clone(),
                every: config.tls_reload_interval,
            },
            running.clone(),
        ));
        info!(%local_addr, "telemetry link receiver listening");
        Ok(Receiver {
            endpoint,
            local_addr,
            metrics,
            state,
            admission,
            server_template: template,
            shutdown: shutdown_tx,
            accept: Some(accept),
            running,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The receiver's metrics.
    pub fn metrics(&self) -> &ReceiverMetrics {
        &self.metrics
    }

    /// Whether the endpoint is up and the state directory is writable.
    pub fn is_ready(&self) -> bool {
        self.ready_handle().check().is_ok()
    }

    /// A handle for readiness probes that outlives borrows of the receiver.
    pub fn ready_handle(&self) -> ReadyHandle {
        ReadyHandle {
            running: self.running.clone(),
            state: self.state.clone(),
        }
    }

    /// Re-reads the TLS files now (e.g. on SIGHUP). New handshakes use the
    /// new material; established sessions stay, except those whose
    /// certificate the new CRL revokes: they are closed (`NotAllowed`,
    /// "certificate revoked") and counted in
    /// `telemetry_link_sessions_revoked_total`. On error the old material
    /// stays in use. The files are also polled every
    /// [`ReceiverConfig::tls_reload_interval`], with the same effect.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        endpoint::reload(&self.endpoint, &self.admission, &self.server_template, true)
    }

    /// Graceful stop: refuse new connections, let every session finish the
    /// batch it is applying and persist its state, then close. Waits at most
    /// `deadline` for sessions.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.endpoint.set_server_config(None);
        let _ = self.shutdown.send(true);
        if let Some(accept) = self.accept.take() {
            if tokio::time::timeout(deadline, accept).await.is_err() {
                warn!("receiver sessions did not finish within the shutdown deadline");
            }
        }
        self.endpoint.close(
            close_code(ErrorCode::ShuttingDown),
            b"receiver shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
