//! A minimal blocking HTTP/1.1 GET client, over plain TCP or TLS (with an
//! optional client certificate) and with optional basic credentials, and
//! polling.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// First header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` from `addr` with optional extra headers.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    get_with(addr, path, headers, &Client::default())
}

/// How [`get_with`] connects: TLS (with the CA to trust, the server name
/// and an optional client certificate) and basic credentials.
#[derive(Debug, Clone, Default)]
pub struct Client {
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    basic: Option<String>,
}

impl Client {
    /// HTTPS, trusting `ca_pem` for `server_name`.
    pub fn https(ca_pem: &Path, server_name: &str) -> Result<Self> {
        Self::https_with_identity(ca_pem, server_name, None)
    }

    /// HTTPS presenting `identity` (certificate and key PEM files).
    pub fn https_with_identity(
        ca_pem: &Path,
        server_name: &str,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(ca_pem)? {
            roots.add(ca?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(telemetry_link::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_owned())?;
        Ok(Self {
            tls: Some((Arc::new(config), name)),
            ..Self::default()
        })
    }

    /// Sends `Authorization: Basic` with `user` and `password`.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.basic = Some(format!("Basic {encoded}"));
        self
    }
}

/// GET `path` from `addr` the way `client` says, with extra headers.
pub fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    client: &Client,
) -> Result<Response> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(auth) = &client.basic {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = Vec::new();
    match &client.tls {
        None => {
            let mut s = s;
            s.write_all(req.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())?;
            let mut tls = rustls::StreamOwned::new(conn, s);
            tls.write_all(req.as_bytes())?;
            match tls.read_to_end(&mut raw) {
                Ok(_) => {}
                // A server that closes without close_notify after a
                // complete response is fine here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header terminator")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body)?,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `limit`
/// with the last error message and `what`.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello").unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("content-type")),
            (200, "hello", Some("text/plain"))
        );
        let r = parse(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
    }
}
