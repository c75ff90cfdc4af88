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

/// Why a client could not be made. No variant shows a secret: URLs appear
/// redacted ([`super::redact::redact`]), header values never.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse or is not http(s).
    #[error("remote-write URL {url}: {reason}")]
    BadUrl {
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The system's root certificates could not be loaded.
    #[error("loading the system's root certificates for https: {0}")]
    Roots(std::io::Error),
    /// An extra header is not `Name: value` with a valid name and value.
    #[error("remote-write header #{index}{}: {problem} (its value is not shown)", name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default())]
    BadHeader {
        /// Its position among the headers, from 1.
        index: usize,
        /// Its name, when that is a valid header name.
        name: Option<String>,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Parses the `index`th (from 1) extra header, `Name: value` (e.g.
/// `X-Scope-OrgID: tenant-1`, `Authorization: Bearer …`). The value is
/// marked sensitive; an error names the header by position (and by name
/// when the name is valid), never by its text.
pub fn parse_header(
    index: usize,
    text: &str,
) -> Result<(header::HeaderName, header::HeaderValue), ClientError> {
    let bad = |name: Option<&header::HeaderName>, problem| ClientError::BadHeader {
        index,
        name: name.map(|n| n.as_str().to_owned()),
        problem,
    };
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| bad(None, "expected \"Name: value\", found no colon"))?;
    let name = header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| bad(None, "the name is not a valid header name"))?;
    let mut value = header::HeaderValue::from_str(value.trim())
        .map_err(|_| bad(Some(&name), "the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The request URI and, for credentials in the URL, the basic
/// authentication header they stand for.
fn split_credentials(
    uri: Uri,
    bad: impl Fn(&str) -> ClientError,
) -> Result<(Uri, Option<header::HeaderValue>), ClientError> {
    let Some(authority) = uri.authority().cloned() else {
        return Ok((uri, None));
    };
    let Some((userinfo, host)) = authority.as_str().rsplit_once('@') else {
        return Ok((uri, None));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| bad("the credentials are not UTF-8"))
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let credentials = format!("{}:{}", decode(user)?, decode(password)?);
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, credentials);
    let mut value = header::HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| bad("the credentials do not make a header"))?;
    value.set_sensitive(true);
    let mut parts = uri.into_parts();
    parts.authority = Some(
        host.parse()
            .map_err(|_| bad("no host after the credentials"))?,
    );
    let uri = Uri::from_parts(parts).map_err(|_| bad("no host after the credentials"))?;
    Ok((uri, Some(value)))
}

impl RemoteWriteClient {
    /// A client posting to `url` (http:// or https://) with the extra
    /// `headers` (`Name: value`) on every request. Credentials in the URL
    /// (`https://user:password@host/…`) are sent as basic authentication,
    /// unless an `Authorization` header is given (it wins); a query string
    /// is sent as it is.
    pub fn new(url: &str, headers: &[String], timeout: Duration) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: super::redact::redact(url),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(bad("the scheme must be http or https")),
        }
        if uri.host().is_none() {
            return Err(bad("no host"));
        }
        let mut headers = headers
            .iter()
            .enumerate()
            .map(|(i, h)| parse_header(i + 1, h))
            .collect::<Result<Vec<_>, _>>()?;
        let (uri, basic) = split_credentials(uri, bad)?;
        if let Some(basic) = basic {
            if headers.iter().any(|(n, _)| n == header::AUTHORIZATION) {
                tracing::warn!(
                    endpoint = %super::redact::redact(url),
                    "remote write: credentials in the URL ignored, an Authorization header is given"
                );
            } else {
                headers.push((header::AUTHORIZATION, basic));
            }
        }
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

    /// The endpoint's host and port, for its queue directory's name.
    pub fn host_port(&self) -> String {
        self.uri
            .authority()
            .map_or_else(String::new, |a| a.as_str().to_owned())
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
        for url in ["ftp://x/api/v1/write", "not a url", "/api/v1/write"] {
            assert!(RemoteWriteClient::new(url, &[], t).is_err(), "{url}");
        }
        let url = "http://127.0.0.1:9090/api/v1/write";
        assert!(RemoteWriteClient::new(url, &["X-Scope-OrgID: tenant-1".into()], t).is_ok());
        for (header, shown) in [
            ("Authorization Bearer SECRET", "remote-write header #1: expected \"Name: value\", found no colon (its value is not shown)"),
            ("bad SECRET: x", "remote-write header #1: the name is not a valid header name (its value is not shown)"),
            ("X-Ok: bad\nSECRET", "remote-write header #1 (x-ok): the value is not a valid header value (its value is not shown)"),
        ] {
            let e = RemoteWriteClient::new(url, &[header.into()], t).unwrap_err().to_string();
            assert_eq!(e, shown);
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_authentication_and_are_never_shown() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let t = Duration::from_secs(1);
        let c = RemoteWriteClient::new(
            "http://u%40x:p%3Aw@mimir:8080/api/v1/push?api_key=SECRET",
            &[],
            t,
        )
        .unwrap();
        assert_eq!(
            c.uri.to_string(),
            "http://mimir:8080/api/v1/push?api_key=SECRET"
        );
        assert_eq!(c.host_port(), "mimir:8080");
        let (name, value) = c.headers.last().unwrap();
        assert_eq!(name, header::AUTHORIZATION);
        // base64("u@x:p:w")
        assert_eq!(value.to_str().unwrap(), "Basic dUB4OnA6dw==");
        assert!(value.is_sensitive());
        let both = RemoteWriteClient::new(
            "http://u:p@mimir/api/v1/push?api_key=SECRET",
            &["Authorization: Bearer SECRET2".into()],
            t,
        )
        .unwrap();
        let auth: Vec<_> = both
            .headers
            .iter()
            .filter(|(n, _)| n == header::AUTHORIZATION)
            .collect();
        assert_eq!(auth.len(), 1, "the header wins");
        assert_eq!(auth[0].1.to_str().unwrap(), "Bearer SECRET2");
        let unparsable = RemoteWriteClient::new("http://u:SECRET@ho st/?k=SECRET", &[], t)
            .unwrap_err()
            .to_string();
        assert!(!unparsable.contains("SECRET"), "{unparsable}");
    }
}
