//! Hostile peers: QUIC clients built directly on quinn and rustls, without
//! the link's own checks, so tests can present no certificate, an expired
//! one, a wrong server name, and then speak broken protocol; clients on
//! other loopback addresses, clients whose handshakes never finish, and a
//! flood of handshakes as fast as the machine allows.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, UdpPoller,
};

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
    client_endpoint_on([127, 0, 0, 1].into())
}

/// A client endpoint on an ephemeral port of `ip` (on Linux every address
/// of 127.0.0.0/8 is local: a second "host" for tests).
pub fn client_endpoint_on(ip: IpAddr) -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::client((ip, 0).into())?)
}

/// A client endpoint on `ip` whose handshakes never finish: it sends its
/// first flight (and answers a Retry) but none of its later packets, so
/// the server holds each handshake until its timeout — a peer that
/// occupies handshake state without ever authenticating.
pub fn stalling_endpoint(ip: IpAddr) -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let inner = runtime.wrap_udp_socket(socket)?;
    Ok(quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(FirstFlightOnly { inner }),
        runtime,
    )?)
}

/// Sends only datagrams that are one whole client Initial packet (a
/// ClientHello, or an acknowledgement alone); drops the rest silently.
struct FirstFlightOnly {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl fmt::Debug for FirstFlightOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirstFlightOnly").finish_non_exhaustive()
    }
}

/// Whether `d` is exactly one QUIC v1 Initial packet.
fn is_lone_initial(d: &[u8]) -> bool {
    fn varint(d: &[u8], at: &mut usize) -> Option<usize> {
        let first = *d.get(*at)?;
        let len = 1usize << (first >> 6);
        let bytes = d.get(*at..*at + len)?;
        *at += len;
        let v = bytes
            .iter()
            .skip(1)
            .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
        usize::try_from(v).ok()
    }
    let parse = || -> Option<bool> {
        let first = *d.first()?;
        if first & 0x80 == 0 || (first >> 4) & 0x3 != 0 {
            return Some(false); // short header, or not an Initial
        }
        let mut at = 5; // first byte, version
        for _ in 0..2 {
            at += 1 + usize::from(*d.get(at)?); // DCID, SCID
        }
        let token = varint(d, &mut at)?;
        at += token;
        let length = varint(d, &mut at)?;
        Some(at + length == d.len())
    };
    parse().unwrap_or(false)
}

impl AsyncUdpSocket for FirstFlightOnly {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if is_lone_initial(transmit.contents) {
            self.inner.try_send(transmit)
        } else {
            Ok(())
        }
    }

    fn poll_recv(
        &self,
        cx: &mut TaskContext<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1 // one datagram per transmit, so each is judged alone
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What a [`flood`] did.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Handshakes started.
    pub started: u64,
    /// Handshakes that completed on the client's side (the server may
    /// still have refused them right after).
    pub completed: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Flood {
    /// Handshakes started per second.
    pub fn rate(&self) -> f64 {
        self.started as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Starts handshakes with `cfg` from `ep` to `addr` for `duration`, as fast
/// as the machine allows with `concurrency` in flight, from one task (each
/// handshake is a future in it, not a task of its own).
pub async fn flood(
    ep: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> Flood {
    use std::future::Future;
    type Attempt = Pin<Box<dyn Future<Output = bool> + Send>>;
    let start = Instant::now();
    let mut report = Flood {
        started: 0,
        completed: 0,
        elapsed: Duration::ZERO,
    };
    let mut in_flight: Vec<Attempt> = Vec::with_capacity(concurrency);
    let end = tokio::time::Instant::now() + duration;
    loop {
        let now = tokio::time::Instant::now();
        while now < end && in_flight.len() < concurrency {
            let connecting = ep.connect_with(cfg.clone(), addr, "localhost");
            report.started += 1;
            in_flight.push(Box::pin(async move {
                match connecting {
                    Ok(c) => c.await.is_ok(),
                    Err(_) => false,
                }
            }));
        }
        if in_flight.is_empty() {
            break;
        }
        // Wait for any attempt to end (or the end of the flood).
        let any = std::future::poll_fn(|cx| {
            for i in 0..in_flight.len() {
                if let Poll::Ready(ok) = in_flight[i].as_mut().poll(cx) {
                    drop(in_flight.swap_remove(i));
                    return Poll::Ready(Some(ok));
                }
            }
            Poll::Pending
        });
        match tokio::time::timeout_at(end.max(now + Duration::from_millis(1)), any).await {
            Ok(Some(true)) => report.completed += 1,
            Ok(_) => {}
            Err(_) => {
                if tokio::time::Instant::now() >= end {
                    break; // in-flight attempts are dropped (closed)
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
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
