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
//! records it lost ([`Skip`]). Sessions resume at the receiver's applied
//! position, so after a crash of either side nothing is lost and what is
//! resent is recognised as a duplicate.
//!
//! Limits: with [`crate::spool::FsyncPolicy::Interval`] or `Never`, a power cut (not a
//! process crash) can lose the last records; if a receiver then reports more
//! applied than the spool has, the sender moves its sequence past that point
//! so new records are not mistaken for duplicates. A receiver whose state
//! directory is wiped starts the sender's stream afresh from what the spool
//! still holds.

use std::{
    marker::PhantomData,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use prometheus::Registry;
use rand::{rngs::StdRng, SeedableRng};
use thiserror::Error;
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    close_code,
    stream::{frame_message, write_message, FrameReader, ReadError},
    TransportTuning,
};
use crate::{
    backoff::{Backoff, Failover},
    metrics::SenderMetrics,
    proto::{
        batch::{BatchEncoder, ENTRY_OVERHEAD},
        frame::{DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT},
        message::{
            Batch, ErrorCode, Hello, Message, Present, Skip, Welcome, MIN_PROTOCOL_VERSION,
            PRESENT_VERSION, PROTOCOL_VERSION,
        },
        present,
        record::{encode_record, Payload},
        window::{SendWindow, WindowLimits},
    },
    spool::{
        Appended, ReadBuf, ReadOutcome, RecoveryReport, Spool, SpoolConfig, SpoolError, SpoolStats,
    },
    tls::{Reload, ReloadableTls, Role, TlsError, TlsFiles},
};

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Receiver addresses (`host:port`), in order of preference.
    pub receivers: Vec<String>,
    /// TLS server name to expect; default: the host part of each address.
    pub server_name: Option<String>,
    /// CA, certificate and key.
    pub tls: TlsFiles,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool settings.
    pub spool: SpoolConfig,
    /// Most records per batch.
    pub batch_max_records: usize,
    /// In-flight limits per session.
    pub window: WindowLimits,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed for connecting, the TLS handshake and the hello.
    pub connect_timeout: Duration,
    /// While connected to a non-preferred receiver, how often to try the
    /// preferred one again; `None` stays until that session fails.
    pub failback_after: Option<Duration>,
    /// QUIC timers and windows.
    pub transport: TransportTuning,
    /// Local UDP address; default `[::]:0`, or `0.0.0.0:0` without IPv6.
    pub bind: Option<SocketAddr>,
    /// How often to check the TLS files for changes.
    pub tls_reload_interval: Option<Duration>,
    /// Largest frame this sender accepts.
    pub max_frame: usize,
}

impl SenderConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(receivers: Vec<String>, tls: TlsFiles, spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            receivers,
            server_name: None,
            tls,
            spool_dir: spool_dir.into(),
            spool: SpoolConfig::default(),
            batch_max_records: 4096,
            window: WindowLimits::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            failback_after: Some(Duration::from_secs(30)),
            transport: TransportTuning::default(),
            bind: None,
            tls_reload_interval: Some(Duration::from_secs(5)),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// Why a sender could not start.
#[derive(Debug, Error)]
pub enum SenderError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Spool unusable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Socket problem.
    #[error("cannot bind the sender's UDP socket: {0}")]
    Bind(std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// Why records could not be queued.
#[derive(Debug, Error)]
pub enum SendError {
    /// The spool refused them.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A record does not serialize.
    #[error("record does not serialize: {0}")]
    Encode(#[from] postcard::Error),
    /// The sender is gone.
    #[error("sender is closed")]
    Closed,
}

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
    spool: Mutex<Spool>,
    wake: Notify,
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
}

/// A present state, encoded once, sent to every session after it was set.
#[derive(Debug)]
struct PresentState {
    id: u64,
    covers_seq: u64,
    body: Vec<u8>,
}

impl Inner {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool's files
        // inconsistent (every mutation is a complete file operation), so a
        // poisoned lock is safe to keep using.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_gauges(&self, stats: &SpoolStats) {
        let m = &self.metrics;
        m.last_seq.set(stats.last_seq as i64);
        m.acked_seq.set(stats.acked_seq as i64);
        m.spool_records.set(stats.records as i64);
        m.spool_bytes.set(stats.bytes as i64);
        m.spool_capacity_bytes.set(stats.cap_bytes as i64);
        let dropped = m.records_dropped.get();
        if stats.dropped_total > dropped {
            m.records_dropped.inc_by(stats.dropped_total - dropped);
        }
    }

    fn append(&self, data: &[u8], ends: &[usize]) -> Result<Appended, SendError> {
        let mut slices = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in ends {
            slices.push(&data[start..end]);
            start = end;
        }
        let mut spool = self.spool();
        let res = spool.append(&slices);
        let stats = spool.stats();
        drop(spool);
        self.refresh_gauges(&stats);
        let appended = res?;
        self.metrics.records_enqueued.inc_by(ends.len() as u64);
        self.wake.notify_one();
        Ok(appended)
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
            return Err(SenderError::Config(
                "at least one receiver address is required".into(),
            ));
        }
        if config.spool.max_record_bytes + 64 > config.max_frame.min(MAX_FRAME_LIMIT) {
            return Err(SenderError::Config(format!(
                "max record size {} does not fit a {}-byte frame",
                config.spool.max_record_bytes, config.max_frame
            )));
        }
        let metrics = SenderMetrics::register(registry)?;
        let tls = ReloadableTls::load(&config.tls, Role::Sender)?;
        let dir = config.spool_dir.clone();
        let spool_cfg = config.spool.clone();
        let (spool, report) = tokio::task::spawn_blocking(move || Spool::open(dir, spool_cfg))
            .await
            .map_err(|e| SenderError::Config(format!("spool open task: {e}")))??;
        if !report.is_clean() {
            warn!(?report, "spool recovered from an unclean state");
        }
        let stats = spool.stats();
        let bind = match config.bind {
            Some(b) => b,
            None => default_bind(),
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(SenderError::Bind)?;
        let inner = Arc::new(Inner {
            spool: Mutex::new(spool),
            wake: Notify::new(),
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
        });
        inner.refresh_gauges(&stats);
        info!(
            identity = inner
                .tls
                .lock()
                .map(|t| t.current().identity().to_owned())
                .unwrap_or_default(),
            last_seq = stats.last_seq,
            unacked = stats.records,
            "telemetry link sender started"
        );
        let task = tokio::spawn(run_link(inner.clone(), config));
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
    /// (and an fsync under [`crate::spool::FsyncPolicy::EveryBatch`]), never for the network.
    pub async fn send(&self, record: &T) -> Result<u64, SendError> {
        self.send_batch(std::slice::from_ref(record))
            .await
            .map(|a| a.first_seq)
    }

    /// Queues records in order, atomically with respect to other sends.
    pub async fn send_batch(&self, records: &[T]) -> Result<Appended, SendError> {
        let (data, ends) = encode_all(records)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.append(&data, &ends))
            .await
            .map_err(|_| SendError::Closed)?
    }

    /// [`Sender::send_batch`] for callers outside async code (or that accept
    /// blocking the current thread on disk I/O).
    pub fn send_batch_blocking(&self, records: &[T]) -> Result<Appended, SendError> {
        let (data, ends) = encode_all(records)?;
        self.inner.append(&data, &ends)
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
    /// Receivers speaking protocol version 1 do not get presents.
    pub fn set_present(&self, records: &[T]) -> Result<u64, SendError> {
        let (body, _) = present::encode_body(records)?;
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
        let _ = self.inner.stopping.send(Some(Instant::now() + deadline));
        self.inner.wake.notify_one();
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(deadline + Duration::from_secs(2), task).await;
        }
        let mut spool = self.inner.spool();
        if let Err(e) = spool.checkpoint() {
            warn!(error = %e, "could not checkpoint the spool");
        }
        let stats = spool.stats();
        drop(spool);
        self.inner.refresh_gauges(&stats);
        ShutdownReport {
            drained: stats.records == 0,
            unacked: stats.records,
        }
    }
}

fn default_bind() -> SocketAddr {
    let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    if std::net::UdpSocket::bind(v6).is_ok() {
        v6
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
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

/// A failed connection attempt.
#[derive(Debug, Error)]
enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("refused by the receiver ({code}): {reason}")]
    Refused { code: String, reason: String },
    #[error("the receiver speaks protocol versions {min}..={max} only")]
    OlderReceiver { min: u16, max: u16 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ConnectError {
    fn label(&self) -> &'static str {
        match self {
            ConnectError::Resolve(_) => "resolve",
            ConnectError::Timeout => "timeout",
            ConnectError::Connect(_) => "connect",
            ConnectError::Connection(quinn::ConnectionError::TransportError(t))
                if (0x100..0x200).contains(&u64::from(t.code)) =>
            {
                "tls"
            }
            ConnectError::Connection(quinn::ConnectionError::ConnectionClosed(c))
                if (0x100..0x200).contains(&u64::from(c.error_code)) =>
            {
                "tls_refused"
            }
            ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(_))
            | ConnectError::Refused { .. }
            | ConnectError::OlderReceiver { .. } => "refused",
            ConnectError::Connection(quinn::ConnectionError::TimedOut) => "timeout",
            ConnectError::Connection(_) => "connection",
            ConnectError::Protocol(_) => "protocol",
            ConnectError::Tls(_) => "tls",
        }
    }
}

/// An established session after the hello.
struct Established {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    welcome: Welcome,
    address: String,
}

fn server_name_for(address: &str, configured: Option<&str>) -> String {
    if let Some(n) = configured {
        return n.to_owned();
    }
    let host = match address.rsplit_once(':') {
        Some((h, _)) => h,
        None => address,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Connects with the newest protocol version; a receiver that refuses it
/// but speaks an older one this sender also speaks gets a second attempt in
/// that version (a v2 sender keeps working with v1 receivers, without the
/// present lane).
async fn connect(
    inner: &Inner,
    cfg: &SenderConfig,
    address: &str,
) -> Result<Established, ConnectError> {
    match connect_with_version(inner, cfg, address, PROTOCOL_VERSION).await {
        Err(ConnectError::OlderReceiver { min, max })
            if (MIN_PROTOCOL_VERSION..PROTOCOL_VERSION).contains(&max) && min <= max =>
        {
            info!(
                receiver = address,
                version = max,
                "receiver speaks an older protocol; using it"
            );
            connect_with_version(inner, cfg, address, max).await
        }
        other => other,
    }
}

async fn connect_with_version(
    inner: &Inner,
    cfg: &SenderConfig,
    address: &str,
    version: u16,
) -> Result<Established, ConnectError> {
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|_| ConnectError::Resolve(address.to_owned()))?
        .next()
        .ok_or_else(|| ConnectError::Resolve(address.to_owned()))?;
    let client_cfg = {
        let tls = inner
            .tls
            .lock()
            .map_err(|_| ConnectError::Tls("lock poisoned".into()))?;
        let rustls_cfg = tls
            .current()
            .client_config()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut c = quinn::ClientConfig::new(Arc::new(quic));
        c.transport_config(cfg.transport.build(false));
        c
    };
    let name = server_name_for(address, cfg.server_name.as_deref());
    let attempt = async {
        let conn = inner
            .endpoint
            .connect_with(client_cfg, addr, &name)?
            .await?;
        let (mut send, recv) = conn.open_bi().await?;
        let hello = {
            let spool = inner.spool();
            Message::Hello(Hello {
                version,
                stream_id: spool.stream_id(),
                last_seq: spool.last_seq(),
                max_frame: cfg.max_frame as u32,
            })
        };
        let mut buf = Vec::new();
        if let Err(e) = write_message(&mut send, &hello, cfg.max_frame, &mut buf).await {
            // The receiver may have refused us while we were writing: its
            // reason beats "connection lost".
            return Err(match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(a)) => refusal(&a),
                _ => ConnectError::Protocol(format!("sending hello: {e}")),
            });
        }
        let mut reader = FrameReader::new(recv, cfg.max_frame);
        let reply = match reader.next().await {
            Ok(Some(f)) => Message::decode(f).map_err(|e| ConnectError::Protocol(e.to_string()))?,
            Ok(None) => return Err(closed_error(&conn)),
            Err(ReadError::Stream(_)) => return Err(closed_error(&conn)),
            Err(e) => return Err(ConnectError::Protocol(e.to_string())),
        };
        match reply {
            Message::Welcome(welcome) if (welcome.max_frame as usize) < cfg.spool.max_record_bytes + 64 + ENTRY_OVERHEAD => {
                Err(ConnectError::Protocol(format!(
                    "the receiver accepts frames of at most {} bytes, but this sender's records may be up to {} bytes; raise the receiver's frame limit or lower the sender's record limit",
                    welcome.max_frame, cfg.spool.max_record_bytes
                )))
            }
            Message::Welcome(welcome) => Ok(Established {
                conn,
                send,
                reader,
                welcome,
                address: address.to_owned(),
            }),
            Message::Refuse(r) if r.code == ErrorCode::UnsupportedVersion => {
                Err(ConnectError::OlderReceiver {
                    min: r.min_version,
                    max: r.max_version,
                })
            }
            Message::Refuse(r) => Err(ConnectError::Refused {
                code: r.code.to_string(),
                reason: r.reason,
            }),
            other => Err(ConnectError::Protocol(format!(
                "expected welcome, got {:?}",
                other.message_type()
            ))),
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(Err(ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(a)))) => {
            Err(refusal(&a))
        }
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// A receiver's application close as a readable refusal.
fn refusal(a: &quinn::ApplicationClose) -> ConnectError {
    ConnectError::Refused {
        code: ErrorCode::from_u32(u64::from(a.error_code) as u32)
            .map_or_else(|| a.error_code.to_string(), |c| c.to_string()),
        reason: String::from_utf8_lossy(&a.reason).into_owned(),
    }
}

fn closed_error(conn: &quinn::Connection) -> ConnectError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(a)) => refusal(&a),
        Some(e) => ConnectError::Connection(e),
        None => ConnectError::Protocol("stream closed before welcome".into()),
    }
}

/// How a session ended.
enum SessionEnd {
    /// Everything acknowledged during shutdown, or the deadline passed.
    Stopped,
    /// The connection failed.
    Lost(String),
    /// Switch to this session with the preferred receiver.
    FailBack(Box<Established>),
}

/// Logs repeated connection errors once per 30 s.
struct ErrorLog {
    last: Option<(String, Instant)>,
}

impl ErrorLog {
    fn log(&mut self, address: &str, err: &str) {
        let now = Instant::now();
        let repeat = self
            .last
            .as_ref()
            .is_some_and(|(m, t)| m == err && now.duration_since(*t) < Duration::from_secs(30));
        if repeat {
            debug!(receiver = address, error = err, "connection attempt failed");
        } else {
            warn!(
                receiver = address,
                error = err,
                "cannot reach receiver; retrying with backoff"
            );
            self.last = Some((err.to_owned(), now));
        }
    }
}

async fn run_link(inner: Arc<Inner>, cfg: SenderConfig) {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_cap);
    let mut failover = Failover::new(cfg.receivers.len());
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut stopping = inner.stopping.subscribe();
    let mut sessions = 0u64;
    let mut errors = ErrorLog { last: None };
    let mut next: Option<Established> = None;
    let mut last_reload = Instant::now();
    loop {
        if let Some(deadline) = *stopping.borrow() {
            if Instant::now() >= deadline || inner.spool().stats().records == 0 {
                break;
            }
        }
        if let Some(every) = cfg.tls_reload_interval {
            if last_reload.elapsed() >= every {
                last_reload = Instant::now();
                let _ = reload_tls(&inner, false);
            }
        }
        let established = match next.take() {
            Some(e) => Ok(e),
            None => connect(&inner, &cfg, &cfg.receivers[failover.current()]).await,
        };
        match established {
            Ok(session) => {
                backoff.reset();
                sessions += 1;
                if sessions > 1 {
                    inner.metrics.reconnects.inc();
                }
                inner.metrics.connected.set(1);
                inner.status.send_replace(LinkStatus {
                    connected: true,
                    receiver: Some(session.address.clone()),
                    last_error: None,
                });
                // Presents set from now on (sources react to the
                // connection counter) go to this session, on their own stream.
                let pusher = (session.welcome.version >= PRESENT_VERSION).then(|| {
                    let mut presents = inner.present.subscribe();
                    let unsent = presents
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|p| p.id > inner.present_sent.load(Ordering::Acquire));
                    if unsent {
                        presents.mark_changed();
                    }
                    let max_frame = (session.welcome.max_frame as usize).min(cfg.max_frame);
                    AbortOnDrop(tokio::spawn(push_presents(
                        session.conn.clone(),
                        presents,
                        max_frame,
                        inner.metrics.presents_sent.clone(),
                        inner.present_sent.clone(),
                    )))
                });
                inner.connections.send_modify(|c| *c += 1);
                info!(receiver = %session.address, applied = session.welcome.applied_seq, "link session established");
                let end = drive(&inner, &cfg, session, failover.is_failed_over()).await;
                drop(pusher);
                inner.metrics.connected.set(0);
                match end {
                    SessionEnd::Stopped => {
                        inner.status.send_modify(|s| s.connected = false);
                        break;
                    }
                    SessionEnd::Lost(reason) => {
                        info!(error = %reason, "link session lost; reconnecting");
                        inner.status.send_replace(LinkStatus {
                            connected: false,
                            receiver: None,
                            last_error: Some(reason),
                        });
                        // Try the same receiver first: it may just have restarted.
                        sleep_or_stop(backoff.next_delay(&mut rng), &mut stopping).await;
                    }
                    SessionEnd::FailBack(e) => {
                        failover.fail_back();
                        next = Some(*e);
                    }
                }
            }
            Err(e) => {
                inner
                    .metrics
                    .connect_failures
                    .with_label_values(&[e.label()])
                    .inc();
                let msg = e.to_string();
                errors.log(&cfg.receivers[failover.current()], &msg);
                inner.status.send_replace(LinkStatus {
                    connected: false,
                    receiver: None,
                    last_error: Some(msg),
                });
                failover.advance();
                sleep_or_stop(backoff.next_delay(&mut rng), &mut stopping).await;
            }
        }
    }
    inner
        .endpoint
        .close(close_code(ErrorCode::NoError), b"sender stopped");
    let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Room for a [`Present`]'s header fields inside a frame.
const PRESENT_OVERHEAD: usize = 64;

/// Sends every present set during a session (and one left unsent before
/// it) on a new unidirectional stream; a newer present abandons (resets) an
/// older one still being sent.
async fn push_presents(
    conn: quinn::Connection,
    mut presents: watch::Receiver<Option<Arc<PresentState>>>,
    max_frame: usize,
    sent: prometheus::IntCounter,
    sent_id: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    while presents.changed().await.is_ok() {
        let Some(state) = presents.borrow_and_update().clone() else {
            continue;
        };
        let Ok(mut stream) = conn.open_uni().await else {
            return;
        };
        // Ahead of the backlog's queued packets.
        let _ = stream.set_priority(1);
        let parts = present::split_parts(
            &state.body,
            max_frame.saturating_sub(PRESENT_OVERHEAD).max(1),
        );
        let n = parts.len();
        let mut complete = true;
        for (i, (count, range)) in parts.into_iter().enumerate() {
            if presents.has_changed().unwrap_or(true) {
                let _ = stream.reset(0u32.into());
                complete = false;
                break;
            }
            let part = Message::Present(Present {
                id: state.id,
                covers_seq: state.covers_seq,
                part: i as u32,
                last: i + 1 == n,
                count,
                body: &state.body[range],
            });
            if write_message(&mut stream, &part, max_frame, &mut buf)
                .await
                .is_err()
            {
                return;
            }
        }
        if complete {
            let _ = stream.finish();
            sent.inc();
            sent_id.fetch_max(state.id, Ordering::AcqRel);
            debug!(
                id = state.id,
                covers_seq = state.covers_seq,
                bytes = state.body.len(),
                "present sent"
            );
        }
    }
}

async fn sleep_or_stop(delay: Duration, stopping: &mut watch::Receiver<Option<Instant>>) {
    let until = tokio::time::Instant::now() + delay;
    let deadline = (*stopping.borrow()).map(tokio::time::Instant::from_std);
    let until = deadline.map_or(until, |d| d.min(until));
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = stopping.changed() => {}
    }
}

/// Runs one session until it fails, drains on shutdown, or fails back.
async fn drive(
    inner: &Arc<Inner>,
    cfg: &SenderConfig,
    session: Established,
    failed_over: bool,
) -> SessionEnd {
    let Established {
        conn,
        mut send,
        reader,
        welcome,
        address,
    } = session;
    let applied = welcome.applied_seq;
    if applied > crate::spool::MAX_SEQ {
        return SessionEnd::Lost(format!(
            "receiver reported an impossible applied position {applied}"
        ));
    }
    if let Ok(mut c) = inner.current.lock() {
        *c = Some(conn.clone());
    }
    let start_stats = {
        let mut spool = inner.spool();
        if applied > spool.last_seq() {
            warn!(
                applied,
                last = spool.last_seq(),
                "receiver has applied more than this spool holds (its tail was lost); continuing after the receiver's position"
            );
            if let Err(e) = spool.advance_next_seq(applied + 1) {
                return SessionEnd::Lost(format!("spool: {e}"));
            }
        }
        match spool.ack(applied) {
            Ok(n) => inner.metrics.records_acked.inc_by(n),
            Err(e) => return SessionEnd::Lost(format!("spool: {e}")),
        }
        // Records dropped after being sent are settled now: those this
        // receiver applied were delivered; the others are lost, counted here
        // and in the skip the receiver is about to get.
        if let Err(e) = spool.settle_uncertain(applied) {
            return SessionEnd::Lost(format!("spool: {e}"));
        }
        spool.stats()
    };
    inner.refresh_gauges(&start_stats);
    // Records another receiver already acknowledged may still sit in the
    // spool's active segment: skip them (they are delivered, not lost).
    let mut initial_skip = (start_stats.acked_seq > applied).then(|| {
        let (from, to) = (applied + 1, start_stats.acked_seq);
        Skip {
            from,
            to,
            lost: inner.spool().lost_in(from, to),
        }
    });

    let max_frame = (welcome.max_frame as usize)
        .clamp(1024, MAX_FRAME_LIMIT)
        .min(cfg.max_frame.max(1024));
    let max_records = cfg
        .batch_max_records
        .clamp(1, (max_frame / ENTRY_OVERHEAD).max(1));
    // Payload budget so that payloads + per-entry overhead + header fit a frame.
    let budget = max_frame
        .saturating_sub(64 + max_records * ENTRY_OVERHEAD)
        .max(1);
    let mut window = SendWindow::new(applied, cfg.window);
    let mut cursor = inner.spool().cursor(start_stats.acked_seq.max(applied) + 1);
    let mut encoder = BatchEncoder::new(welcome.max_series);
    let mut rbuf = ReadBuf::new();
    let mut body = Vec::new();
    let mut frame = Vec::new();

    // Acks are cumulative: the reader task publishes only the latest.
    let (ack_tx, mut ack_rx) = watch::channel(applied);
    let reader_task = tokio::spawn(read_acks(reader, ack_tx));
    let mut stopping = inner.stopping.subscribe();
    let mut failback_at = (failed_over && cfg.failback_after.is_some())
        .then(|| tokio::time::Instant::now() + cfg.failback_after.unwrap_or_default());
    let mut probe: Option<JoinHandle<Result<Established, ConnectError>>> = None;
    let mut switching: Option<Established> = None;

    let end = 'session: loop {
        // 1. Acknowledgements.
        let acked = *ack_rx.borrow_and_update();
        if acked > window.acked() {
            if let Err(e) = window.on_ack(acked) {
                break 'session SessionEnd::Lost(format!("receiver sent a bad ack: {e}"));
            }
            let mut spool = inner.spool();
            match spool
                .ack(acked)
                .and_then(|n| spool.settle_delivered(acked).map(|()| n))
            {
                Ok(n) => inner.metrics.records_acked.inc_by(n),
                Err(e) => break 'session SessionEnd::Lost(format!("spool: {e}")),
            }
            let stats = spool.stats();
            drop(spool);
            inner.refresh_gauges(&stats);
        }

        // 2. Stop / switch conditions.
        let deadline = *stopping.borrow();
        if let Some(d) = deadline {
            let empty = inner.spool().stats().records == 0;
            if (empty && window.is_idle()) || Instant::now() >= d {
                break 'session SessionEnd::Stopped;
            }
        }
        if switching.is_some() && window.is_idle() {
            if let Some(next) = switching.take() {
                break 'session SessionEnd::FailBack(Box::new(next));
            }
        }

        // 3. Send while the window has room (not while switching over).
        if switching.is_none() && window.has_room() {
            let outcome = match initial_skip.take() {
                Some(skip) => Ok(ReadOutcome::Gap {
                    from: skip.from,
                    to: skip.to,
                    lost: skip.lost,
                }),
                None => inner
                    .spool()
                    .read(&mut cursor, max_records, budget, &mut rbuf),
            };
            let msg_len = match outcome {
                Ok(ReadOutcome::Records { first_seq, count }) => {
                    body.clear();
                    for env in rbuf.iter() {
                        if let Err(e) = encoder.push_record(env, &mut body) {
                            break 'session SessionEnd::Lost(format!(
                                "spooled record unreadable: {e}"
                            ));
                        }
                    }
                    let msg = Message::Batch(Batch {
                        first_seq,
                        count: count as u32,
                        body: &body,
                    });
                    if let Err(e) = frame_message(&msg, max_frame, &mut frame) {
                        break 'session SessionEnd::Lost(format!("batch framing: {e}"));
                    }
                    Some((first_seq + count as u64 - 1, frame.len()))
                }
                Ok(ReadOutcome::Gap { from, to, lost }) => {
                    if lost > 0 {
                        warn!(
                            from,
                            to, lost, "telling the receiver about records dropped from the spool"
                        );
                    }
                    let msg = Message::Skip(Skip { from, to, lost });
                    if let Err(e) = frame_message(&msg, max_frame, &mut frame) {
                        break 'session SessionEnd::Lost(format!("skip framing: {e}"));
                    }
                    Some((to, frame.len()))
                }
                Ok(ReadOutcome::Empty) => None,
                Err(e) => break 'session SessionEnd::Lost(format!("spool read: {e}")),
            };
            if let Some((last_seq, len)) = msg_len {
                if let Err(e) = send.write_all(&frame).await {
                    break 'session SessionEnd::Lost(format!("write: {e}"));
                }
                window.on_sent(last_seq, len);
                inner.spool().mark_sent(last_seq);
                inner.metrics.bytes_sent.inc_by(len as u64);
                continue;
            }
        }

        // 4. Wait for something to change.
        let has_room = window.has_room() && switching.is_none();
        tokio::select! {
            r = ack_rx.changed() => {
                if r.is_err() {
                    break 'session SessionEnd::Lost(lost_reason(&conn));
                }
            }
            _ = inner.wake.notified(), if has_room => {}
            _ = stopping.changed() => {}
            _ = conn.closed() => break 'session SessionEnd::Lost(lost_reason(&conn)),
            _ = sleep_until_opt(failback_at), if failback_at.is_some() && probe.is_none() && switching.is_none() => {
                failback_at = None;
                let inner2 = inner.clone();
                let cfg2 = cfg.clone();
                probe = Some(tokio::spawn(async move { connect(&inner2, &cfg2, &cfg2.receivers[0]).await }));
            }
            res = join_opt(&mut probe), if probe.is_some() => {
                probe = None;
                match res {
                    Some(Ok(next)) => {
                        info!(preferred = %next.address, current = %address, "preferred receiver is back; failing back once in-flight batches are acknowledged");
                        switching = Some(next);
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "preferred receiver still unreachable");
                        failback_at = cfg.failback_after.map(|d| tokio::time::Instant::now() + d);
                    }
                    None => {}
                }
            }
        }
    };

    if let Some(p) = probe {
        p.abort();
    }
    if let Ok(mut c) = inner.current.lock() {
        *c = None;
    }
    match &end {
        SessionEnd::Stopped => {
            let mut buf = Vec::new();
            let _ = write_message(&mut send, &Message::Bye, max_frame, &mut buf).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(close_code(ErrorCode::NoError), b"sender stopping");
        }
        SessionEnd::FailBack(_) => {
            let mut buf = Vec::new();
            let _ = write_message(&mut send, &Message::Bye, max_frame, &mut buf).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(
                close_code(ErrorCode::NoError),
                b"failing back to the preferred receiver",
            );
        }
        SessionEnd::Lost(_) => conn.close(close_code(ErrorCode::NoError), b"reconnecting"),
    }
    reader_task.abort();
    end
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn join_opt<T>(h: &mut Option<JoinHandle<T>>) -> Option<T> {
    match h {
        Some(h) => h.await.ok(),
        None => std::future::pending().await,
    }
}

fn lost_reason(conn: &quinn::Connection) -> String {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(a)) => {
            let code = ErrorCode::from_u32(u64::from(a.error_code) as u32)
                .map_or_else(|| a.error_code.to_string(), |c| c.to_string());
            format!(
                "receiver closed the session ({code}): {}",
                String::from_utf8_lossy(&a.reason)
            )
        }
        Some(e) => e.to_string(),
        None => "acknowledgement stream ended".into(),
    }
}

/// Reads acks until the stream ends; publishes the highest.
async fn read_acks(mut reader: FrameReader, tx: watch::Sender<u64>) {
    loop {
        match reader.next().await {
            Ok(Some(frame)) => match Message::decode(frame) {
                Ok(Message::Ack(a)) => {
                    tx.send_if_modified(|v| {
                        if a.applied_seq > *v {
                            *v = a.applied_seq;
                            true
                        } else {
                            false
                        }
                    });
                }
                Ok(other) => {
                    warn!("unexpected {:?} from receiver", other.message_type());
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "malformed message from receiver");
                    return;
                }
            },
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(server_name_for("recv.lan:4433", None), "recv.lan");
        assert_eq!(server_name_for("127.0.0.1:4433", None), "127.0.0.1");
        assert_eq!(server_name_for("[::1]:4433", None), "::1");
        assert_eq!(server_name_for("x:1", Some("y")), "y");
    }

    #[test]
    fn fsync_policy_is_reexported() {
        assert_eq!(
            SpoolConfig::default().fsync,
            crate::spool::FsyncPolicy::EveryBatch
        );
    }
}
