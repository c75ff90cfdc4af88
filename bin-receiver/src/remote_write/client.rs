//! One HTTP POST of a remote-write request, and what its answer means.
//!
//! What it owns: the request headers of remote-write 1.0
//! (`Content-Encoding: snappy`, `Content-Type: application/x-protobuf`,
//! `X-Prometheus-Remote-Write-Version: 0.1.0`, a `User-Agent`), a timeout,
//! http and https (rustls with the ring provider, the system's roots), and
//! the retry classification: 5xx, 429 and transport errors are retried;
//! any other status outside 2xx is final.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: written.
    Sent,
    /// Worth retrying (5xx, 429, timeout, connection failure); the
    /// server's `Retry-After` in seconds when it gave one.
    Retry {
        /// What happened.
        reason: String,
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// Refused for good (other 4xx, and anything else unexpected).
    Refused {
        /// Status and the start of the body.
        reason: String,
    },
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub struct RemoteWriteClient {
    uri: Uri,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse or is not http(s).
    #[error("remote-write URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The system's root certificates could not be loaded.
    #[error("loading the system's root certificates for https: {0}")]
    Roots(std::io::Error),
    /// An extra header is not `Name: value` with a valid name and value.
    #[error(
        "remote-write header {0:?}: expected \"Name: value\" with a valid header name and value"
    )]
    BadHeader(String),
}

/// Parses `Name: value` (e.g. `X-Scope-OrgID: tenant-1`,
/// `Authorization: Bearer …`).
pub fn parse_header(text: &str) -> Result<(header::HeaderName, header::HeaderValue), ClientError> {
    let bad = || ClientError::BadHeader(text.split(':').next().unwrap_or("").to_owned());
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let name = header::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let mut value = header::HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    value.set_sensitive(true);
    Ok((name, value))
}

impl RemoteWriteClient {
    /// A client posting to `url` (http:// or https://) with the extra
    /// `headers` (`Name: value`) on every request.
    pub fn new(url: &str, headers: &[String], timeout: Duration) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(bad("the scheme must be http or https".into())),
        }
        if uri.host().is_none() {
            return Err(bad("no host".into()));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad(
                "credentials in the URL are not supported; use --remote-write-header \"Authorization: ...\""
                    .into(),
            ));
        }
        let headers = headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        // The system's roots only where TLS is used: a plain-http endpoint
        // works on a machine without a CA bundle.
        let builder = if uri.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(ClientError::Roots)?
        } else {
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Roots(std::io::Error::other(e)))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(tls)
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            uri,
            headers,
            client,
            timeout,
        })
    }

    /// The endpoint, for logs and metric labels.
    pub fn endpoint(&self) -> String {
        self.uri.to_string()
    }

    /// Posts `body` (a snappy-compressed WriteRequest) once.
    pub async fn post(&self, body: Vec<u8>) -> Outcome {
        let mut request = Request::post(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .header(header::CONTENT_ENCODING, "snappy")
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                header::USER_AGENT,
                concat!("telemetry-receiver/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused {
                    reason: format!("building the request: {e}"),
                }
            }
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Err(_) => {
                return Outcome::Retry {
                    reason: format!("no answer within {:?}", self.timeout),
                    retry_after: None,
                }
            }
            Ok(Err(e)) => {
                return Outcome::Retry {
                    reason: format!("{e}"),
                    retry_after: None,
                }
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Read (a bounded prefix of) the body: it says why, and reading it
        // lets the connection be reused.
        let body = match tokio::time::timeout(self.timeout, response.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let text = String::from_utf8_lossy(&body[..body.len().min(512)])
            .trim()
            .to_owned();
        classify(status, &text, retry_after)
    }
}

/// What a status means for the batch.
pub fn classify(status: StatusCode, body: &str, retry_after: Option<u64>) -> Outcome {
    let reason = if body.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {body}")
    };
    if status.is_success() {
        Outcome::Sent
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry {
            reason,
            retry_after,
        }
    } else {
        Outcome::Refused { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_5xx_and_429_only() {
        assert_eq!(classify(StatusCode::NO_CONTENT, "", None), Outcome::Sent);
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, "", None),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, "slow down", Some(3)),
            Outcome::Retry {
                reason: "429 Too Many Requests: slow down".into(),
                retry_after: Some(3)
            }
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, "out of order sample", None),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, "", None),
            Outcome::Refused { .. }
        ));
    }

    #[test]
    fn refuses_urls_it_cannot_post_to() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let t = Duration::from_secs(1);
        for url in [
            "ftp://x/api/v1/write",
            "not a url",
            "/api/v1/write",
            "http://user:secret@mimir/api/v1/push",
        ] {
            assert!(RemoteWriteClient::new(url, &[], t).is_err(), "{url}");
        }
        let url = "http://127.0.0.1:9090/api/v1/write";
        assert!(RemoteWriteClient::new(url, &["X-Scope-OrgID: tenant-1".into()], t).is_ok());
        for header in ["no colon", "bad name: x", "X-Ok: bad\nvalue"] {
            assert!(
                RemoteWriteClient::new(url, &[header.into()], t).is_err(),
                "{header}"
            );
        }
    }
}
