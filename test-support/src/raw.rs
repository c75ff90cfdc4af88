//! Hostile peers: QUIC clients built directly on quinn and rustls, without
//! the link's own checks, so tests can present no certificate, an expired
//! one, a wrong server name, and then speak broken protocol.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use telemetry_link::{
    proto::{
        frame::encode_frame,
        message::{Message, ALPN},
    },
    tls::TlsFiles,
};

/// A client endpoint on an ephemeral loopback port.
pub fn client_endpoint() -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?)
}

/// A quinn client configuration trusting `ca` and presenting `identity`
/// (if any) — whatever its validity.
pub fn client_config(
    ca: &std::path::Path,
    identity: Option<&TlsFiles>,
) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(f) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&f.cert)?.collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&f.key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Connects and completes the handshake (or fails).
pub async fn connect(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = ep
        .connect_with(cfg, addr, server_name)
        .map_err(|_| quinn::ConnectionError::LocallyClosed)?;
    connecting.await
}

/// Encodes `msg` as a frame.
pub fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let body = msg.to_vec();
    // test frames are small; the limit only matters for the receiver
    let _ = encode_frame(&body, usize::MAX, &mut out);
    out
}

/// Writes raw bytes on a fresh bidirectional stream and returns the stream
/// pair.
pub async fn open_and_write(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    Ok((send, recv))
}

/// Waits for the connection to be closed by the peer and returns the
/// application error code, if it was an application close.
pub async fn closed_with(conn: &quinn::Connection, limit: Duration) -> Result<Option<u64>> {
    let err = tokio::time::timeout(limit, conn.closed())
        .await
        .context("connection was not closed in time")?;
    Ok(match err {
        quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
        _ => None,
    })
}

/// Tries to get a connection accepted: `Err(reason)` if the handshake fails
/// or the peer closes the connection within `limit` (in TLS 1.3 the client
/// finishes its side of the handshake before the server has judged the
/// client certificate, so a refusal can arrive just after "success").
pub async fn attempt(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    limit: Duration,
) -> Result<quinn::Connection, String> {
    let conn = connect(ep, cfg, addr, server_name)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, conn.closed()).await {
        Ok(e) => Err(e.to_string()),
        Err(_) => Ok(conn),
    }
}

/// Reads one frame body (refusing bodies above 16 MiB).
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= telemetry_link::proto::frame::MAX_FRAME_LIMIT,
        "frame of {len} bytes"
    );
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

/// The batch body a correct sender would send for `records` on a fresh
/// connection (encoded with the library's own encoder).
pub fn app_body<T: telemetry_link::Payload>(records: &[T]) -> Vec<u8> {
    let mut enc = telemetry_link::proto::batch::BatchEncoder::new(u32::MAX);
    let mut body = Vec::new();
    let mut envelope = Vec::new();
    for r in records {
        envelope.clear();
        if telemetry_link::proto::record::encode_record(r, &mut envelope).is_ok() {
            let _ = enc.push_record(&envelope, &mut body);
        }
    }
    body
}

/// Connects presenting `identity`, says hello for `stream_id` and returns
/// the connection, its stream and the receiver's applied position.
pub async fn hello(
    ep: &quinn::Endpoint,
    ca: &std::path::Path,
    identity: &TlsFiles,
    addr: SocketAddr,
    server_name: &str,
    stream_id: u128,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, u64)> {
    use telemetry_link::proto::message::{Hello, PROTOCOL_VERSION};
    let conn = connect(ep, client_config(ca, Some(identity))?, addr, server_name).await?;
    let h = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        stream_id,
        last_seq: 0,
        max_frame: 1 << 20,
        replica: String::new(),
    });
    let (send, mut recv) = open_and_write(&conn, &frame(&h)).await?;
    let reply = read_frame(&mut recv).await?;
    match Message::decode(&reply)? {
        Message::Welcome(w) => Ok((conn, send, recv, w.applied_seq)),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}
