//! The receiving end: a quinn endpoint that authenticates senders by their
//! client certificates, runs one session per sender identity, hands batches
//! to the application's [`Handler`] in sequence order, persists the applied
//! position and acknowledges.
//!
//! # Delivery guarantee (receiver side)
//!
//! For each sender identity and stream, records reach [`Handler::handle`]
//! in strictly increasing sequence order, each at most once **per receiver
//! process**; a record is acknowledged only after the handler returned `Ok`
//! for it and its sequence was persisted in the state directory. Records that
//! arrive again after that are dropped and counted as duplicates; a batch
//! that skips ahead without the sender announcing the gap closes the
//! connection. Across a receiver crash, the window between the handler
//! returning and the state file being renamed into place (one fsync) is the
//! one place where a batch can be handed to the next process's handler a
//! second time; [`Delivery::first_seq`] lets a handler with durable side
//! effects recognise that. A handler whose state lives in memory (like the
//! metrics store of `telemetry-receiver`) loses its state with the process
//! anyway and cannot observe it.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus::Registry;
use thiserror::Error;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    close_code,
    socket::CountingSocket,
    stream::{write_message, FrameReader, ReadError},
    TransportTuning,
};
use crate::{
    metrics::ReceiverMetrics,
    net::persist::{Durable, Persister},
    proto::{
        batch::{BatchDecoder, BatchError, Entry, DEFAULT_MAX_SERIES},
        dedup::{SeqError, StreamCursor},
        frame::{FrameError, DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT},
        message::{
            Ack, ErrorCode, Message, MessageError, Refusal, Welcome, MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
        },
        present::{self, PresentAssembler},
        record::{decode_record, Payload},
    },
    receiver_state::{StateError, StateStore},
    sample::Sample,
    tls::{self, is_certificate_alert, Reload, ReloadableTls, Role, TlsError, TlsFiles},
};

/// Error type handlers return.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A run of consecutive, never-before-applied records from one sender.
#[derive(Debug)]
pub struct Delivery<T> {
    /// The sender's identity (from its certificate).
    pub sender: Arc<str>,
    /// The sender's stream (its spool's id): sequence numbers restart at 1
    /// when a sender starts a new stream, so `(stream_id, seq)` names a
    /// record.
    pub stream_id: u128,
    /// Sequence number of `records[0]`.
    pub first_seq: u64,
    /// The records, in sequence order.
    pub records: Vec<T>,
}

/// A sender's present state: its current view, sent on its own stream
/// ahead of or beside its backlog (see [`crate::Sender::set_present`]).
/// Not sequenced and not acknowledged; a handler applies it to show the
/// present at once, and treats records of the same stream up to
/// `covers_seq` that arrive afterwards as history (older than the present).
#[derive(Debug)]
pub struct PresentDelivery<T> {
    /// The sender's identity (from its certificate).
    pub sender: Arc<str>,
    /// The sender's stream.
    pub stream_id: u128,
    /// The sender's last sequence number when it took the present.
    pub covers_seq: u64,
    /// The present's records.
    pub records: Vec<T>,
}

/// The application's side of the receiver.
pub trait Handler<T>: Send + Sync + 'static {
    /// Applies a batch. Returning an error closes the sender's connection
    /// without acknowledging the batch; the sender retries it later.
    fn handle(
        &self,
        delivery: Delivery<T>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// A sender's present state arrived (default: ignored). It may arrive
    /// while [`Handler::handle`] runs for the same sender's backlog. An
    /// error is logged and counted; the session goes on.
    fn present(
        &self,
        present: PresentDelivery<T>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = present;
        async { Ok(()) }
    }

    /// A session with `sender` was established.
    fn sender_connected(&self, sender: &str) {
        let _ = sender;
    }

    /// The session with `sender` ended.
    fn sender_disconnected(&self, sender: &str) {
        let _ = sender;
    }
}

/// Resource limits of a receiver.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverLimits {
    /// Largest frame accepted (and announced to senders).
    pub max_frame: usize,
    /// Interned series per connection.
    pub max_series: u32,
    /// Concurrent connections; more are refused.
    pub max_connections: usize,
    /// Concurrent unfinished handshakes from unvalidated addresses before
    /// new ones must prove their address with a QUIC retry.
    pub max_pending_handshakes: usize,
    /// Time allowed for the TLS handshake and for the hello.
    pub hello_timeout: Duration,
    /// Frames applied before the state is persisted and acknowledged, when
    /// more are already waiting (group commit).
    pub max_frames_per_commit: usize,
    /// Largest present state accepted (bytes of records); a larger one is
    /// refused and counted, the session goes on.
    pub max_present_bytes: usize,
    /// Newest protocol version spoken (at most [`PROTOCOL_VERSION`]): pins
    /// a receiver to an older version during a staged upgrade; senders fall
    /// back to it.
    pub max_protocol_version: u16,
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_series: DEFAULT_MAX_SERIES,
            max_connections: 1024,
            max_pending_handshakes: 64,
            hello_timeout: Duration::from_secs(5),
            max_frames_per_commit: 64,
            max_present_bytes: 64 << 20,
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
    /// Where per-sender state and the stateless-reset key live.
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
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
}

struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    current: Option<quinn::Connection>,
}

struct Shared<H> {
    limits: ReceiverLimits,
    allowed: Option<BTreeSet<String>>,
    metrics: ReceiverMetrics,
    state: StateStore,
    persister: Persister,
    handler: Arc<H>,
    slots: Mutex<HashMap<String, Slot>>,
    active: AtomicUsize,
    pending: AtomicUsize,
    shutdown: watch::Receiver<bool>,
}

/// A cheap, cloneable readiness check of a [`Receiver`]: the QUIC listener
/// runs and the state directory is writable.
#[derive(Debug, Clone)]
pub struct ReadyHandle {
    running: Arc<std::sync::atomic::AtomicBool>,
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
    tls: Arc<Mutex<ReloadableTls>>,
    server_template: ServerTemplate,
    shutdown: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
    running: Arc<std::sync::atomic::AtomicBool>,
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

#[derive(Clone)]
struct ServerTemplate {
    transport: Arc<quinn::TransportConfig>,
    failures: tls::FailureSink,
}

impl ServerTemplate {
    fn build(&self, material: &tls::TlsMaterial) -> Result<quinn::ServerConfig, TlsError> {
        let rustls_cfg = material.server_config(self.failures.clone())?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(self.transport.clone());
        cfg.migration(true);
        Ok(cfg)
    }
}

/// Keys that must survive restarts: the stateless-reset key, and the key of
/// the connection-ID generator. With both, a restarted receiver recognises
/// connection IDs its predecessor issued and answers their packets with a
/// stateless reset, so senders notice at once instead of waiting for their
/// idle timeout.
struct EndpointKeys {
    reset: ring::hmac::Key,
    cid: u64,
}

fn endpoint_keys(state_dir: &std::path::Path) -> Result<EndpointKeys, StateError> {
    let path = state_dir.join("reset.key");
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    let secret = match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => b,
        _ => {
            let mut b = vec![0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut b[..]);
            crate::fsutil::write_atomic(&path, &b).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            b
        }
    };
    let derived = ring::digest::digest(
        &ring::digest::SHA256,
        &[&secret[..], b"connection-id key"].concat(),
    );
    let mut cid = [0u8; 8];
    cid.copy_from_slice(&derived.as_ref()[..8]);
    Ok(EndpointKeys {
        reset: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        cid: u64::from_le_bytes(cid),
    })
}

impl Receiver {
    /// Binds the endpoint and starts accepting senders. `T` is the payload
    /// type; metrics are registered in `registry`.
    pub async fn start<T: Payload, H: Handler<T>>(
        config: ReceiverConfig,
        handler: Arc<H>,
        registry: &Registry,
    ) -> Result<Receiver, ReceiverError> {
        if config.limits.max_frame > MAX_FRAME_LIMIT || config.limits.max_frame < 1024 {
            return Err(ReceiverError::Config(format!(
                "max_frame must be within 1024..={MAX_FRAME_LIMIT}"
            )));
        }
        let metrics = ReceiverMetrics::register(registry)?;
        let tls_state = ReloadableTls::load(&config.tls, Role::Receiver)?;
        let state = StateStore::open(&config.state_dir)?;
        for (id, c) in state.list() {
            metrics
                .applied_seq
                .with_label_values(&[id.as_str()])
                .set(c.applied() as i64);
        }
        let hs = metrics.handshake_failures.clone();
        let template = ServerTemplate {
            transport: config.transport.build(true),
            failures: Arc::new(move |reason| hs.with_label_values(&[reason]).inc()),
        };
        let server_cfg = template.build(tls_state.current())?;

        let keys = endpoint_keys(&config.state_dir)?;
        let mut ep_cfg = quinn::EndpointConfig::new(Arc::new(keys.reset));
        let cid_key = keys.cid;
        ep_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        ep_cfg.grease_quic_bit(false);
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| ReceiverError::Bind {
                addr: config.listen,
                source,
            })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ReceiverError::Config("no async runtime found".into()))?;
        let bind_err = |source| ReceiverError::Bind {
            addr: config.listen,
            source,
        };
        let wrapped = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
        let counting = Arc::new(CountingSocket::new(
            wrapped,
            metrics.invalid_datagrams.clone(),
        ));
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(ep_cfg, Some(server_cfg), counting, runtime)
                .map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let persister = Persister::start(state.clone()).map_err(|source| StateError::Io {
            path: config.state_dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            limits: config.limits,
            allowed: config.allowed_senders.clone(),
            metrics: metrics.clone(),
            state: state.clone(),
            persister,
            handler,
            slots: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            shutdown: shutdown_rx,
        });
        let tls = Arc::new(Mutex::new(tls_state));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = running.clone();
        let loop_endpoint = endpoint.clone();
        let loop_tls = tls.clone();
        let loop_template = template.clone();
        let reload_every = config.tls_reload_interval;
        let accept = tokio::spawn(async move {
            accept_loop::<T, H>(loop_endpoint, shared, loop_tls, loop_template, reload_every).await;
            flag.store(false, Ordering::Relaxed);
        });
        info!(%local_addr, "telemetry link receiver listening");
        Ok(Receiver {
            endpoint,
            local_addr,
            metrics,
            state,
            tls,
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
    /// new material; established connections are not disturbed. On error the
    /// old material stays in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        reload(
            &self.endpoint,
            &self.tls,
            &self.server_template,
            &self.metrics,
            true,
        )
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

fn reload(
    endpoint: &quinn::Endpoint,
    tls: &Mutex<ReloadableTls>,
    template: &ServerTemplate,
    metrics: &ReceiverMetrics,
    force: bool,
) -> Result<(), TlsError> {
    let Ok(mut guard) = tls.lock() else {
        return Err(TlsError::Config("TLS state lock poisoned".into()));
    };
    match guard.poll(force) {
        Reload::Unchanged => Ok(()),
        Reload::Reloaded => match template.build(guard.current()) {
            Ok(cfg) => {
                endpoint.set_server_config(Some(cfg));
                metrics.tls_reloads.with_label_values(&["ok"]).inc();
                info!("TLS material reloaded; new handshakes use it");
                Ok(())
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["error"]).inc();
                Err(e)
            }
        },
        Reload::Failed(e) => {
            metrics.tls_reloads.with_label_values(&["error"]).inc();
            warn!(error = %e, "TLS reload failed; keeping the previous certificate");
            Err(e)
        }
    }
}

async fn accept_loop<T: Payload, H: Handler<T>>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<H>>,
    tls: Arc<Mutex<ReloadableTls>>,
    template: ServerTemplate,
    reload_every: Option<Duration>,
) {
    let mut sessions = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let mut reload_tick = tokio::time::interval(reload_every.unwrap_or(Duration::from_secs(3600)));
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload_tick.tick().await;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                admit(incoming, &shared, &mut sessions);
            }
            _ = shutdown.changed() => break,
            Some(res) = sessions.join_next() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!("session task panicked: {e}");
                    }
                }
            }
            _ = reload_tick.tick(), if reload_every.is_some() => {
                let _ = reload(&endpoint, &tls, &template, &shared.metrics, false);
            }
        }
    }
    // Shutdown: sessions see the flag between frames and finish.
    while sessions.join_next().await.is_some() {}
}

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
        serve::<T, H>(incoming, &shared).await;
        shared.active.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Metric label for a failed handshake.
fn classify_connection_error(e: &quinn::ConnectionError) -> Option<&'static str> {
    use quinn::ConnectionError as C;
    match e {
        C::TransportError(t) => {
            let code = u64::from(t.code);
            // CRYPTO_ERROR codes are 0x0100 + TLS alert.
            if (0x100..0x200).contains(&code) {
                let alert = (code - 0x100) as u8;
                if is_certificate_alert(alert) {
                    return None; // counted by the verifier, by reason
                }
                return Some(match alert {
                    116 => "no_certificate",
                    120 => "alpn_mismatch",
                    70 => "tls_version",
                    _ => "tls_error",
                });
            }
            Some("transport_error")
        }
        C::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            if (0x100..0x200).contains(&code) {
                Some("peer_rejected_certificate")
            } else {
                Some("peer_closed")
            }
        }
        C::ApplicationClosed(_) => Some("peer_closed"),
        C::TimedOut => Some("handshake_timeout"),
        C::VersionMismatch => Some("quic_version"),
        C::Reset => Some("reset"),
        C::LocallyClosed | C::CidsExhausted => None,
    }
}

struct PendingGuard<'a>(&'a AtomicUsize, bool);

impl PendingGuard<'_> {
    fn done(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::Relaxed);
            self.1 = true;
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

fn refuse(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    conn.close(close_code(code), reason.as_bytes());
}

async fn serve<T: Payload, H: Handler<T>>(incoming: quinn::Incoming, shared: &Shared<H>) {
    let remote = incoming.remote_address();
    let failures = &shared.metrics.handshake_failures;
    let fail = |reason: &'static str| failures.with_label_values(&[reason]).inc();
    let mut pending = PendingGuard(&shared.pending, false);

    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            if let Some(r) = classify_connection_error(&e) {
                fail(r);
            }
            debug!(%remote, error = %e, "incoming connection failed");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.limits.hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(r) = classify_connection_error(&e) {
                fail(r);
            }
            info!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            fail("handshake_timeout");
            return;
        }
    };
    pending.done();

    let identity = match tls::peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            fail("bad_identity");
            warn!(%remote, error = %e, "sender certificate has no usable identity");
            refuse(
                &conn,
                ErrorCode::NotAllowed,
                &format!("certificate identity: {e}"),
            );
            return;
        }
    };
    if let Some(allowed) = &shared.allowed {
        if !allowed.contains(&identity) {
            fail("not_allowed");
            warn!(%remote, sender = %identity, "sender identity not in the allow list; refused");
            refuse(
                &conn,
                ErrorCode::NotAllowed,
                &format!("sender identity {identity:?} is not allowed by this receiver"),
            );
            return;
        }
    }

    let (mut send, recv) =
        match tokio::time::timeout(shared.limits.hello_timeout, conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%remote, sender = %identity, error = %e, "connection ended before hello");
                fail("no_hello");
                return;
            }
            Err(_) => {
                fail("hello_timeout");
                refuse(
                    &conn,
                    ErrorCode::HelloTimeout,
                    "no hello within the time limit",
                );
                return;
            }
        };
    let mut reader = FrameReader::new(recv, shared.limits.max_frame);
    let mut buf = Vec::new();
    let hello = match reader.next_within(shared.limits.hello_timeout).await {
        Ok(Some(frame)) => match Message::decode(frame).and_then(|m| match m {
            Message::Hello(h) if h.version > shared.limits.max_protocol_version => {
                Err(MessageError::UnsupportedVersion(h.version))
            }
            other => Ok(other),
        }) {
            Ok(Message::Hello(h)) => h,
            Ok(_) => {
                fail("bad_hello");
                refuse(
                    &conn,
                    ErrorCode::ProtocolViolation,
                    "first message must be a hello",
                );
                return;
            }
            Err(MessageError::UnsupportedVersion(v)) => {
                fail("unsupported_version");
                let max = shared.limits.max_protocol_version.min(PROTOCOL_VERSION);
                let reason = format!(
                    "protocol version {v} is not supported; this receiver speaks {MIN_PROTOCOL_VERSION}..={max}"
                );
                warn!(%remote, sender = %identity, "{reason}");
                let mut refusal = Refusal::new(ErrorCode::UnsupportedVersion, reason.clone());
                refusal.max_version = max;
                let refusal = Message::Refuse(refusal);
                let _ = write_message(&mut send, &refusal, shared.limits.max_frame, &mut buf).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                refuse(&conn, ErrorCode::UnsupportedVersion, &reason);
                return;
            }
            Err(e) => {
                fail("bad_hello");
                refuse(
                    &conn,
                    ErrorCode::ProtocolViolation,
                    &format!("bad hello: {e}"),
                );
                return;
            }
        },
        Ok(None) => {
            fail("no_hello");
            return;
        }
        Err(ReadError::Timeout) => {
            fail("hello_timeout");
            refuse(
                &conn,
                ErrorCode::HelloTimeout,
                "no hello within the time limit",
            );
            return;
        }
        Err(ReadError::Frame(FrameError::TooLarge { .. })) => {
            fail("frame_too_large");
            refuse(
                &conn,
                ErrorCode::FrameTooLarge,
                "hello frame above the maximum size",
            );
            return;
        }
        Err(e) => {
            fail("bad_hello");
            debug!(%remote, error = %e, "hello read failed");
            refuse(&conn, ErrorCode::ProtocolViolation, "bad hello");
            return;
        }
    };

    // One session per identity: a newer connection replaces an older one
    // (the sender reconnected while the old path was still half-open).
    let lock = {
        let Ok(mut slots) = shared.slots.lock() else {
            return;
        };
        let slot = slots.entry(identity.clone()).or_insert_with(|| Slot {
            lock: Arc::new(tokio::sync::Mutex::new(())),
            current: None,
        });
        if let Some(old) = slot.current.replace(conn.clone()) {
            refuse(
                &old,
                ErrorCode::Superseded,
                "replaced by a newer connection from the same sender",
            );
        }
        slot.lock.clone()
    };
    let _exclusive = lock.lock_owned().await;
    if conn.close_reason().is_some() {
        return;
    }

    let stored = match shared.state.load(&identity) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(sender = %identity, error = %e, "cannot load sender state; refusing the sender");
            refuse(
                &conn,
                ErrorCode::StateError,
                "receiver state for this sender is unreadable",
            );
            return;
        }
    };
    let (cursor, reset) = StreamCursor::for_hello(stored, hello.stream_id);
    if reset {
        shared
            .metrics
            .stream_resets
            .with_label_values(&[identity.as_str()])
            .inc();
        warn!(sender = %identity, "sender started a new stream (its spool was recreated); sequence restarts at 1");
    }
    let max_frame = (hello.max_frame as usize).clamp(1024, MAX_FRAME_LIMIT);
    let welcome = Message::Welcome(Welcome {
        version: hello.version.min(shared.limits.max_protocol_version),
        applied_seq: cursor.applied(),
        max_frame: shared.limits.max_frame as u32,
        max_series: shared.limits.max_series,
    });
    if write_message(&mut send, &welcome, max_frame, &mut buf)
        .await
        .is_err()
    {
        return;
    }

    let sender: Arc<str> = Arc::from(identity.as_str());
    info!(%remote, sender = %sender, applied = cursor.applied(), last = hello.last_seq, "sender connected");
    shared.metrics.senders_connected.inc();
    shared.metrics.init_sender(&sender);
    shared.handler.sender_connected(&sender);
    let mut session = Session::<T, H> {
        shared,
        sender: sender.clone(),
        cursor,
        durable: shared.persister.watch(&sender, cursor.applied()),
        decoder: BatchDecoder::new(shared.limits.max_series),
        send,
        buf,
        max_frame,
        _payload: std::marker::PhantomData,
    };
    let stream_id = cursor.stream_id();
    let end = tokio::select! {
        end = session.run(&mut reader) => end,
        never = receive_presents::<T, H>(&conn, shared, &sender, stream_id) => match never {},
    };
    shared.metrics.senders_connected.dec();
    shared.handler.sender_disconnected(&sender);
    match end {
        SessionEnd::Bye => {
            info!(sender = %sender, "sender closed the session");
            conn.close(close_code(ErrorCode::NoError), b"bye");
        }
        SessionEnd::Lost(e) => info!(sender = %sender, error = %e, "sender connection lost"),
        SessionEnd::Shutdown => {
            // Everything applied is persisted and acknowledged; make sure
            // the last ack reaches the sender before closing (a close
            // discards unsent stream data), or it would resend those records
            // elsewhere.
            let _ = session.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), session.send.stopped()).await;
            refuse(&conn, ErrorCode::ShuttingDown, "receiver shutting down");
        }
        SessionEnd::Refuse(code, reason) => {
            warn!(sender = %sender, code = %code, "closing sender session: {reason}");
            if let Some(label) = protocol_label(code) {
                shared
                    .metrics
                    .protocol_errors
                    .with_label_values(&[label])
                    .inc();
            }
            refuse(&conn, code, &reason);
        }
    }
    if let Ok(mut slots) = shared.slots.lock() {
        if let Some(slot) = slots.get_mut(sender.as_ref()) {
            if slot
                .current
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                slot.current = None;
            }
        }
    }
}

/// Reads the presents a sender sends on unidirectional streams, one stream
/// at a time, and hands each complete one to the handler. A malformed or
/// oversized present is refused (its stream stopped) and counted; the
/// session goes on. Runs until the connection ends (then never returns:
/// the batch session decides how the connection ended).
async fn receive_presents<T: Payload, H: Handler<T>>(
    conn: &quinn::Connection,
    shared: &Shared<H>,
    sender: &Arc<str>,
    stream_id: u128,
) -> std::convert::Infallible {
    let count = |result: &str| {
        shared
            .metrics
            .presents
            .with_label_values(&[sender, result])
            .inc();
    };
    loop {
        let Ok(recv) = conn.accept_uni().await else {
            return std::future::pending().await;
        };
        let mut reader = FrameReader::new(recv, shared.limits.max_frame);
        let mut assembler = PresentAssembler::new(shared.limits.max_present_bytes);
        let assembled = loop {
            let frame = match reader.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(ReadError::Stream(_)) => break Err("abandoned"),
                Err(e) => {
                    debug!(sender = %sender, error = %e, "unreadable present stream");
                    break Err("refused");
                }
            };
            let part = match Message::decode(frame) {
                Ok(Message::Present(part)) => part,
                Ok(other) => {
                    debug!(sender = %sender, kind = ?other.message_type(), "unexpected message on a present stream");
                    break Err("refused");
                }
                Err(e) => {
                    debug!(sender = %sender, error = %e, "malformed present part");
                    break Err("refused");
                }
            };
            match assembler.push(&part) {
                Ok(Some(done)) => break Ok(done),
                Ok(None) => {}
                Err(e) => {
                    warn!(sender = %sender, error = %e, "refusing a present");
                    break Err("refused");
                }
            }
        };
        let done = match assembled {
            Ok(done) => done,
            Err(result) => {
                reader.stop();
                count(result);
                continue;
            }
        };
        let records: Result<Vec<T>, String> = present::records(&done.body)
            .map(|r| {
                r.map_err(|e| e.to_string())
                    .and_then(|bytes| decode_record::<T>(bytes).map_err(|e| e.to_string()))
            })
            .collect();
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                warn!(sender = %sender, error = %e, "refusing a present with an undecodable record");
                count("refused");
                continue;
            }
        };
        let delivery = PresentDelivery {
            sender: sender.clone(),
            stream_id,
            covers_seq: done.covers_seq,
            records,
        };
        match shared.handler.present(delivery).await {
            Ok(()) => {
                debug!(sender = %sender, id = done.id, covers_seq = done.covers_seq, records = done.count, "present applied");
                count("applied");
            }
            Err(e) => {
                warn!(sender = %sender, error = %e, "handler failed on a present");
                count("handler_error");
            }
        }
    }
}

fn protocol_label(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::HandlerFailed
        | ErrorCode::StateError
        | ErrorCode::ShuttingDown
        | ErrorCode::NoError => None,
        other => Some(other.as_str()),
    }
}

enum SessionEnd {
    Bye,
    Lost(String),
    Shutdown,
    Refuse(ErrorCode, String),
}

struct Session<'a, T, H> {
    shared: &'a Shared<H>,
    sender: Arc<str>,
    cursor: StreamCursor,
    durable: watch::Receiver<Durable>,
    decoder: BatchDecoder,
    send: quinn::SendStream,
    buf: Vec<u8>,
    max_frame: usize,
    _payload: std::marker::PhantomData<fn() -> T>,
}

enum Step {
    Continue,
    Bye,
}

impl<T: Payload, H: Handler<T>> Session<'_, T, H> {
    async fn run(&mut self, reader: &mut FrameReader) -> SessionEnd {
        let mut shutdown = self.shared.shutdown.clone();
        let mut persisted = self.cursor.applied();
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => return SessionEnd::Shutdown,
                f = reader.next() => f,
            };
            let mut frame = first;
            let mut frames = 0;
            let mut bye = false;
            // Apply every frame that is already here, then persist and ack
            // once (group commit).
            loop {
                let bytes = match frame {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        let _ = self.commit(&mut persisted).await;
                        return SessionEnd::Lost("stream finished without bye".into());
                    }
                    Err(e) => {
                        let _ = self.commit(&mut persisted).await;
                        return read_end(e);
                    }
                };
                match self.apply_frame(bytes).await {
                    Ok(Step::Continue) => {}
                    Ok(Step::Bye) => {
                        bye = true;
                        break;
                    }
                    Err(end) => {
                        let _ = self.commit(&mut persisted).await;
                        return end;
                    }
                }
                frames += 1;
                if frames >= self.shared.limits.max_frames_per_commit || *shutdown.borrow() {
                    break;
                }
                frame = match reader.try_next() {
                    Ok(Some(b)) => Ok(Some(b)),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
            }
            if let Err(end) = self.commit(&mut persisted).await {
                return end;
            }
            if bye {
                let _ = self.send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), self.send.stopped()).await;
                return SessionEnd::Bye;
            }
        }
    }

    /// Waits until the applied position is durable, then acknowledges it.
    async fn commit(&mut self, persisted: &mut u64) -> Result<(), SessionEnd> {
        let applied = self.cursor.applied();
        if applied == *persisted {
            return Ok(());
        }
        let durable = self
            .durable
            .wait_for(|d| match d {
                Durable::Upto(n) => *n >= applied,
                Durable::Failed(_) => true,
            })
            .await
            .map(|d| d.clone());
        match durable {
            Ok(Durable::Upto(_)) => {}
            Ok(Durable::Failed(e)) => {
                return Err(SessionEnd::Refuse(
                    ErrorCode::StateError,
                    format!("receiver cannot persist its state: {e}"),
                ))
            }
            Err(_) => {
                return Err(SessionEnd::Refuse(
                    ErrorCode::Internal,
                    "state writer stopped".into(),
                ))
            }
        }
        *persisted = applied;
        self.shared
            .metrics
            .applied_seq
            .with_label_values(&[&*self.sender])
            .set(applied as i64);
        let ack = Message::Ack(Ack {
            applied_seq: applied,
        });
        write_message(&mut self.send, &ack, self.max_frame, &mut self.buf)
            .await
            .map_err(|e| SessionEnd::Lost(format!("writing ack: {e}")))
    }

    async fn apply_frame(&mut self, bytes: &[u8]) -> Result<Step, SessionEnd> {
        let msg = Message::decode(bytes).map_err(|e| {
            SessionEnd::Refuse(
                ErrorCode::ProtocolViolation,
                format!("malformed message: {e}"),
            )
        })?;
        let m = &self.shared.metrics;
        match msg {
            Message::Batch(b) => {
                let mut entries = Vec::new();
                self.decoder
                    .decode(b.body, b.count, &mut entries)
                    .map_err(|e| {
                        let code = match e {
                            BatchError::TooManySeries(_) => ErrorCode::TooManySeries,
                            _ => ErrorCode::ProtocolViolation,
                        };
                        SessionEnd::Refuse(code, format!("bad batch at {}: {e}", b.first_seq))
                    })?;
                let plan = self
                    .cursor
                    .plan_batch(b.first_seq, b.count)
                    .map_err(seq_end)?;
                if plan.duplicates > 0 {
                    m.duplicates_dropped
                        .with_label_values(&[&*self.sender])
                        .inc_by(u64::from(plan.duplicates));
                }
                if plan.fresh == 0 {
                    return Ok(Step::Continue);
                }
                let mut records = Vec::with_capacity(plan.fresh as usize);
                let mut rejected = 0u64;
                for e in entries.drain(plan.duplicates as usize..) {
                    match into_record::<T>(e) {
                        Ok(r) => records.push(r),
                        Err(reason) => {
                            rejected += 1;
                            if rejected == 1 {
                                warn!(sender = %self.sender, "skipping a record that does not decode: {reason}");
                            }
                        }
                    }
                }
                let first_seq = b.first_seq + u64::from(plan.duplicates);
                if rejected > 0 {
                    m.records_rejected
                        .with_label_values(&[&*self.sender])
                        .inc_by(rejected);
                }
                if !records.is_empty() {
                    let delivered = records.len() as u64;
                    let delivery = Delivery {
                        sender: self.sender.clone(),
                        stream_id: self.cursor.stream_id(),
                        first_seq,
                        records,
                    };
                    if let Err(e) = self.shared.handler.handle(delivery).await {
                        return Err(SessionEnd::Refuse(
                            ErrorCode::HandlerFailed,
                            format!("handler failed: {e}"),
                        ));
                    }
                    m.records_received
                        .with_label_values(&[&*self.sender])
                        .inc_by(delivered);
                }
                // Recorded and queued for persisting in one synchronous step
                // after the handler's success: no cancellation point between.
                self.cursor.commit(plan.last_seq);
                self.shared.persister.submit(&self.sender, self.cursor);
                Ok(Step::Continue)
            }
            Message::Skip(s) => {
                let outcome = self.cursor.apply_skip(&s).map_err(seq_end)?;
                if outcome.skipped > 0 {
                    self.shared.persister.submit(&self.sender, self.cursor);
                    if outcome.lost > 0 {
                        m.records_lost
                            .with_label_values(&[&*self.sender])
                            .inc_by(outcome.lost);
                    }
                    warn!(sender = %self.sender, from = s.from, to = s.to, lost = outcome.lost, "sender skipped sequences it no longer has");
                }
                Ok(Step::Continue)
            }
            Message::Bye => Ok(Step::Bye),
            other => Err(SessionEnd::Refuse(
                ErrorCode::ProtocolViolation,
                format!("unexpected {:?} message", other.message_type()),
            )),
        }
    }
}

fn seq_end(e: SeqError) -> SessionEnd {
    let code = match e {
        SeqError::Gap { .. } => ErrorCode::SequenceGap,
        _ => ErrorCode::ProtocolViolation,
    };
    SessionEnd::Refuse(code, e.to_string())
}

fn read_end(e: ReadError) -> SessionEnd {
    match e {
        ReadError::Frame(FrameError::TooLarge { announced, max }) => SessionEnd::Refuse(
            ErrorCode::FrameTooLarge,
            format!("frame of {announced} bytes exceeds the maximum of {max}"),
        ),
        ReadError::Frame(FrameError::Truncated { buffered }) => SessionEnd::Refuse(
            ErrorCode::ProtocolViolation,
            format!("stream ended inside a frame ({buffered} bytes)"),
        ),
        other => SessionEnd::Lost(other.to_string()),
    }
}

fn into_record<T: Payload>(e: Entry<'_>) -> Result<T, String> {
    match e {
        Entry::App(bytes) => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        Entry::Sample {
            series,
            timestamp_ms,
            value,
        } => T::from_sample(Sample::new(series, timestamp_ms, value)).ok_or_else(|| {
            "a sample arrived but the payload type has no sample variant".to_string()
        }),
    }
}
