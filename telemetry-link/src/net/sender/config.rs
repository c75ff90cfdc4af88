//! The sender's settings ([`SenderConfig`], with the defaults an
//! embedding application starts from) and the errors of starting a sender
//! and of queuing records.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use thiserror::Error;

use super::DEFAULT_LINGER;
use crate::{
    net::TransportTuning,
    proto::{frame::DEFAULT_MAX_FRAME, replica::ReplicaError},
    session::WindowLimits,
    spool::{SpoolConfig, SpoolError},
    tls::{TlsError, TlsFiles},
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
    /// How long a batch that is not full waits for more records after its
    /// first one before it is sent ([`DEFAULT_LINGER`]; `ZERO` sends every
    /// record as soon as it is spooled). A flush, a stop and the present
    /// lane do not wait.
    pub linger: Duration,
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
    /// This process's replica name (0–64 characters of `[A-Za-z0-9._-]`;
    /// empty: the default replica). Processes sharing a certificate
    /// identity run as different replicas, each with its own spool; a
    /// receiver keeps one stream per replica. A named replica needs
    /// receivers speaking protocol version 3.
    pub replica: String,
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
            linger: DEFAULT_LINGER,
            window: WindowLimits::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            failback_after: Some(Duration::from_secs(30)),
            transport: TransportTuning::default(),
            bind: None,
            tls_reload_interval: Some(Duration::from_secs(5)),
            max_frame: DEFAULT_MAX_FRAME,
            replica: String::new(),
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
    /// The configuration names no receiver.
    #[error("configuration: at least one receiver address is required")]
    NoReceivers,
    /// [`SenderConfig::replica`] breaks the naming rules.
    #[error("configuration: {0}")]
    Replica(#[from] ReplicaError),
    /// The largest record (plus its frame overhead) exceeds the largest
    /// frame.
    #[error(
        "configuration: max record size {max_record_bytes} does not fit a {max_frame}-byte frame"
    )]
    RecordExceedsFrame {
        /// [`SpoolConfig::max_record_bytes`].
        max_record_bytes: usize,
        /// [`SenderConfig::max_frame`].
        max_frame: usize,
    },
    /// The task opening the spool panicked or was cancelled.
    #[error("spool open task: {0}")]
    SpoolTask(tokio::task::JoinError),
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

/// The default local address: `[::]:0`, or `0.0.0.0:0` where IPv6 is off.
pub(super) fn default_bind() -> SocketAddr {
    let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    if std::net::UdpSocket::bind(v6).is_ok() {
        v6
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}
