//! One connection attempt: resolve, QUIC + mutual TLS, open the session's
//! stream, and the hello exchange. What the hello says and what the answer
//! means is decided by [`Handshake`]; this module only moves it.

use std::{net::SocketAddr, sync::Arc};

use thiserror::Error;
use tracing::info;

use super::{Inner, SenderConfig, TARGET};
use crate::{
    metrics::TrackedConnection,
    net::stream::{write_message, FrameReader, ReadError, WriteError},
    proto::message::{Message, Welcome},
    session::handshake::{Answer, Handshake, HandshakeError, PeerCode},
    tls::TlsError,
};

/// A failed connection attempt.
#[derive(Debug, Error)]
pub(super) enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("protocol error: sending hello: {0}")]
    SendHello(WriteError),
    #[error("protocol error: {0}")]
    ReadAnswer(ReadError),
    #[error("protocol error: stream closed before welcome")]
    NoAnswer,
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS: {0}")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("TLS: lock poisoned")]
    TlsLock,
}

impl ConnectError {
    /// The `reason` label of `telemetry_sender_connect_failures_total`.
    pub(super) fn label(&self) -> &'static str {
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
            ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(_)) => "refused",
            ConnectError::Connection(quinn::ConnectionError::TimedOut) => "timeout",
            ConnectError::Connection(_) => "connection",
            ConnectError::Handshake(h) => h.label(),
            ConnectError::SendHello(_) | ConnectError::ReadAnswer(_) | ConnectError::NoAnswer => {
                "protocol"
            }
            ConnectError::Tls(_) | ConnectError::QuicTls(_) | ConnectError::TlsLock => "tls",
        }
    }
}

/// An established session after the hello.
pub(super) struct Established {
    pub(super) conn: quinn::Connection,
    /// Counts the connection's UDP traffic while it lives.
    pub(super) tracked: TrackedConnection,
    pub(super) send: quinn::SendStream,
    pub(super) reader: FrameReader,
    pub(super) welcome: Welcome,
    pub(super) address: String,
}

/// What one attempt (one protocol version) came to.
enum Attempt {
    Established(Box<Established>),
    Retry { version: u16 },
}

pub(super) fn server_name_for(address: &str, configured: Option<&str>) -> String {
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

/// Connects with the newest protocol version, and once more in an older
/// one if the receiver asks for it (see [`Handshake`]).
pub(super) async fn connect(
    inner: &Inner,
    cfg: &SenderConfig,
    address: &str,
) -> Result<Established, ConnectError> {
    let mut handshake = Handshake::new(cfg.max_frame, cfg.spool.max_record_bytes, &cfg.replica);
    loop {
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|_| ConnectError::Resolve(address.to_owned()))?
            .next()
            .ok_or_else(|| ConnectError::Resolve(address.to_owned()))?;
        let client_cfg = client_config(inner, cfg)?;
        let attempt = tokio::time::timeout(
            cfg.connect_timeout,
            attempt(inner, cfg, address, (addr, client_cfg), &mut handshake),
        )
        .await;
        match attempt {
            Ok(Ok(Attempt::Established(e))) => return Ok(*e),
            Ok(Ok(Attempt::Retry { version })) => {
                info!(
                    target: TARGET,
                    receiver = address,
                    version,
                    "receiver speaks an older protocol; using it"
                );
            }
            Ok(Err(ConnectError::Connection(quinn::ConnectionError::ApplicationClosed(a)))) => {
                return Err(refusal(&a).into())
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ConnectError::Timeout),
        }
    }
}

/// One attempt in the handshake's current version, to a resolved address
/// with the TLS configuration in force.
async fn attempt(
    inner: &Inner,
    cfg: &SenderConfig,
    address: &str,
    (addr, client_cfg): (SocketAddr, quinn::ClientConfig),
    handshake: &mut Handshake,
) -> Result<Attempt, ConnectError> {
    let name = server_name_for(address, cfg.server_name.as_deref());
    let conn = inner
        .endpoint
        .connect_with(client_cfg, addr, &name)?
        .await?;
    let tracked = inner.metrics.udp.track(&conn);
    let (mut send, recv) = conn.open_bi().await?;
    let hello = {
        let spool = inner.spool();
        Message::Hello(handshake.hello(spool.stream_id(), spool.last_seq()))
    };
    let mut buf = Vec::new();
    if let Err(e) = write_message(&mut send, &hello, cfg.max_frame, &mut buf).await {
        // The receiver may have refused us while we were writing: its
        // reason beats "connection lost".
        return Err(match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(a)) => refusal(&a).into(),
            _ => ConnectError::SendHello(e),
        });
    }
    let mut reader = FrameReader::new(recv, cfg.max_frame);
    let answer = match reader.next().await {
        Ok(Some(frame)) => handshake.on_answer(frame),
        Ok(None) | Err(ReadError::Stream(_)) => return Err(closed_error(&conn)),
        Err(e) => return Err(ConnectError::ReadAnswer(e)),
    };
    match answer {
        Answer::Accepted(welcome) => Ok(Attempt::Established(Box::new(Established {
            conn,
            tracked,
            send,
            reader,
            welcome,
            address: address.to_owned(),
        }))),
        Answer::Retry { version } => Ok(Attempt::Retry { version }),
        Answer::Failed(e) => Err(e.into()),
    }
}

fn client_config(inner: &Inner, cfg: &SenderConfig) -> Result<quinn::ClientConfig, ConnectError> {
    let tls = inner.tls.lock().map_err(|_| ConnectError::TlsLock)?;
    let rustls_cfg = tls.current().client_config()?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(cfg.transport.build(false));
    Ok(c)
}

/// A receiver's application close as a readable refusal.
pub(super) fn refusal(a: &quinn::ApplicationClose) -> HandshakeError {
    HandshakeError::Refused {
        code: PeerCode::from_wire(u64::from(a.error_code)),
        reason: String::from_utf8_lossy(&a.reason).into_owned(),
    }
}

fn closed_error(conn: &quinn::Connection) -> ConnectError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(a)) => refusal(&a).into(),
        Some(e) => ConnectError::Connection(e),
        None => ConnectError::NoAnswer,
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
}
