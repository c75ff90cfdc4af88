//! The endpoint's web config file (`--web-config-file`), in the format of
//! Prometheus' own `--web.config.file` (the Prometheus exporter-toolkit), so
//! one file and one habit protect every exporter of a site:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.pem          # relative paths: to the file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
//!   client_ca_file: ca.pem
//!   min_version: TLS12             # TLS12 (default) or TLS13
//!   max_version: TLS13
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt, as `htpasswd -nBC 10 user` prints
//! ```
//!
//! What it guarantees: every key is one of exporter-toolkit's; a key this
//! endpoint does not implement (`cert`/`key` inline, `client_allowed_sans`,
//! `cipher_suites`, `curve_preferences`, `prefer_server_cipher_suites`) is
//! an error naming it, and any other key is an error too, so a typo never
//! leaves the endpoint open. Password hashes are parsed at load, so a broken
//! hash is a load error, not a refused scrape. The combinations
//! exporter-toolkit refuses are refused (a client CA without a client
//! authentication policy; a verifying policy without a CA). TLS 1.0 and 1.1
//! are not offered by this TLS stack: asking for them is an error. The file
//! is read with a size cap. An empty file is valid and protects nothing.
//!
//! `http_server_config.http2` is accepted and ignored: the endpoint speaks
//! HTTP/1.1. Response headers are limited to exporter-toolkit's list.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use thiserror::Error;

/// Largest web config file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Response headers a web config may set (exporter-toolkit's list).
const ALLOWED_HEADERS: [&str; 5] = [
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "content-security-policy",
];

/// A parsed, checked web config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// Serve over TLS with these settings.
    pub tls: Option<TlsServerConfig>,
    /// Users and their bcrypt hashes; empty: no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Extra response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `tls_server_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerConfig {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// What is asked of clients.
    pub client_auth: ClientAuth,
    /// CAs client certificates must chain to (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Lowest TLS version offered.
    pub min_version: TlsVersion,
    /// Highest TLS version offered.
    pub max_version: TlsVersion,
}

/// `client_auth_type`, with exporter-toolkit's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    NoClientCert,
    /// A certificate is asked for, not required, not verified.
    RequestClientCert,
    /// A certificate is required, not verified against a CA.
    RequireAnyClientCert,
    /// A certificate is optional; if given, it must chain to the client CA.
    VerifyClientCertIfGiven,
    /// A certificate chaining to the client CA is required.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Result<Self, WebConfigError> {
        Ok(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // exporter-toolkit keeps the old name for compatibility.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            other => return Err(WebConfigError::ClientAuthType(other.to_owned())),
        })
    }

    /// Whether certificates are checked against `client_ca_file`.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    fn parse(key: &'static str, s: &str) -> Result<Self, WebConfigError> {
        match s {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            "TLS10" | "TLS11" => Err(WebConfigError::TlsVersionUnsupported {
                key,
                value: s.to_owned(),
            }),
            _ => Err(WebConfigError::TlsVersion {
                key,
                value: s.to_owned(),
            }),
        }
    }
}

/// Why a web config could not be used.
#[derive(Debug, Error)]
pub enum WebConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than the cap.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// The YAML is malformed or has a key exporter-toolkit does not know.
    #[error("{0}")]
    Yaml(#[from] serde_norway::Error),
    /// A key of exporter-toolkit's format that this endpoint does not implement.
    #[error("`{0}` is not supported by this endpoint")]
    Unsupported(&'static str),
    /// `tls_server_config` lacks `cert_file` or `key_file`.
    #[error("tls_server_config needs `{0}`")]
    MissingTlsFile(&'static str),
    /// An unknown `client_auth_type`.
    #[error("client_auth_type `{0}` is none of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert")]
    ClientAuthType(String),
    /// `client_ca_file` without a policy that uses it.
    #[error("client_ca_file is set but client_auth_type is NoClientCert (set VerifyClientCertIfGiven or RequireAndVerifyClientCert)")]
    ClientCaWithoutPolicy,
    /// A verifying policy without `client_ca_file`.
    #[error("client_auth_type {0:?} needs client_ca_file")]
    PolicyWithoutClientCa(ClientAuth),
    /// A version spelling exporter-toolkit does not know.
    #[error("{key} `{value}` is neither TLS12 nor TLS13")]
    TlsVersion {
        /// `min_version` or `max_version`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// TLS 1.0 or 1.1.
    #[error("{key} `{value}`: this endpoint offers TLS 1.2 and 1.3 only")]
    TlsVersionUnsupported {
        /// `min_version` or `max_version`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// `min_version` above `max_version`.
    #[error("min_version is above max_version")]
    VersionRange,
    /// A user name that cannot appear in Basic credentials.
    #[error("basic_auth_users: user name {0:?} is empty or contains `:`")]
    UserName(String),
    /// A password hash that is not bcrypt.
    #[error("basic_auth_users: the hash of {user:?} is not a bcrypt hash: {source}")]
    Hash {
        /// The user.
        user: String,
        /// What bcrypt said.
        source: bcrypt::BcryptError,
    },
    /// A header this endpoint may not set.
    #[error("http_server_config.headers: `{0}` is not one of Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, Content-Security-Policy")]
    HeaderNotAllowed(String),
    /// A header value that cannot be sent.
    #[error("http_server_config.headers: the value of `{0}` is not a valid header value")]
    HeaderValue(String),
    /// The server certificate or key could not be used.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate, key or CA.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA file is unusable.
    #[error("client_ca_file: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    /// The system gave no randomness for the credential cache's key.
    #[error("no randomness for the credential cache key")]
    NoRandomness,
}

/// The file as written; each key is exporter-toolkit's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    // exporter-toolkit keys not implemented here: refused by name.
    cert: Option<serde_norway::Value>,
    key: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    prefer_server_cipher_suites: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[allow(dead_code)] // accepted for compatibility; HTTP/1.1 only
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

impl WebConfig {
    /// Reads and checks `path`; relative paths inside are relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let read_err = |source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(WebConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_FILE_BYTES,
            });
        }
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses the text of a web config; relative paths are joined to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, WebConfigError> {
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig::default()
        } else {
            // `~` (null) for the whole document is an empty config too.
            serde_norway::from_str::<Option<RawWebConfig>>(text)?.unwrap_or_default()
        };
        let tls = raw.tls_server_config.map(|t| tls(t, dir)).transpose()?;
        let mut basic_auth_users = BTreeMap::new();
        for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
            if user.is_empty() || user.contains(':') {
                return Err(WebConfigError::UserName(user));
            }
            if let Err(source) = hash.parse::<bcrypt::HashParts>() {
                return Err(WebConfigError::Hash { user, source });
            }
            basic_auth_users.insert(user, hash);
        }
        let mut headers = Vec::new();
        for (name, value) in raw
            .http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
        {
            let lower = name.to_ascii_lowercase();
            if !ALLOWED_HEADERS.contains(&lower.as_str()) {
                return Err(WebConfigError::HeaderNotAllowed(name));
            }
            let header_name = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| WebConfigError::HeaderNotAllowed(name.clone()))?;
            let header_value =
                HeaderValue::from_str(&value).map_err(|_| WebConfigError::HeaderValue(name))?;
            headers.push((header_name, header_value));
        }
        Ok(Self {
            tls,
            basic_auth_users,
            headers,
        })
    }

    /// The files the config names (for change detection).
    pub fn referenced_files(&self) -> Vec<&Path> {
        self.tls.as_ref().map_or_else(Vec::new, |t| {
            let mut files = vec![t.cert_file.as_path(), t.key_file.as_path()];
            files.extend(t.client_ca_file.as_deref());
            files
        })
    }
}

fn tls(raw: RawTls, dir: &Path) -> Result<TlsServerConfig, WebConfigError> {
    for (key, given) in [
        ("tls_server_config.cert", raw.cert.is_some()),
        ("tls_server_config.key", raw.key.is_some()),
        (
            "tls_server_config.client_allowed_sans",
            raw.client_allowed_sans.is_some(),
        ),
        (
            "tls_server_config.cipher_suites",
            raw.cipher_suites.is_some(),
        ),
        (
            "tls_server_config.curve_preferences",
            raw.curve_preferences.is_some(),
        ),
        (
            "tls_server_config.prefer_server_cipher_suites",
            raw.prefer_server_cipher_suites.is_some(),
        ),
    ] {
        if given {
            return Err(WebConfigError::Unsupported(key));
        }
    }
    let resolve = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    let cert_file = resolve(
        raw.cert_file
            .ok_or(WebConfigError::MissingTlsFile("cert_file"))?,
    );
    let key_file = resolve(
        raw.key_file
            .ok_or(WebConfigError::MissingTlsFile("key_file"))?,
    );
    let client_auth = ClientAuth::parse(raw.client_auth_type.as_deref().unwrap_or(""))?;
    let client_ca_file = raw.client_ca_file.map(resolve);
    match (client_auth, &client_ca_file) {
        (ClientAuth::NoClientCert, Some(_)) => return Err(WebConfigError::ClientCaWithoutPolicy),
        (policy, None) if policy.verifies() => {
            return Err(WebConfigError::PolicyWithoutClientCa(policy))
        }
        _ => {}
    }
    let min_version = raw
        .min_version
        .map(|v| TlsVersion::parse("min_version", &v))
        .transpose()?
        .unwrap_or(TlsVersion::Tls12);
    let max_version = raw
        .max_version
        .map(|v| TlsVersion::parse("max_version", &v))
        .transpose()?
        .unwrap_or(TlsVersion::Tls13);
    if min_version > max_version {
        return Err(WebConfigError::VersionRange);
    }
    Ok(TlsServerConfig {
        cert_file,
        key_file,
        client_auth,
        client_ca_file,
        min_version,
        max_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `htpasswd -nbB -C 5 prometheus 'scrape secret'` (Apache's `$2y$`).
    pub(crate) const HTPASSWD_HASH: &str =
        "$2y$05$kbKqY8UQ/8KCvzpM78FCe.43sewQnZxr2O1SRaEpOoUaoSJfCrTX2";
    /// Python's `bcrypt.hashpw(b'scrape secret', bcrypt.gensalt(rounds=5))` (`$2b$`).
    pub(crate) const PYTHON_HASH: &str =
        "$2b$05$AORKcF7coB9F/9E6ZrkZJu54McSyRl7cGbB0QfjDYFY6aQQxxdf8m";

    fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::parse(text, Path::new("/etc/telemetry"))
    }

    #[test]
    fn a_full_file_parses_with_paths_relative_to_its_directory() {
        let text = format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: /abs/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    strict-transport-security: max-age=3600\nbasic_auth_users:\n  prometheus: {HTPASSWD_HASH}\n  grafana: '{PYTHON_HASH}'\n"
        );
        let config = parse(&text).unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/telemetry/server.pem"));
        assert_eq!(tls.key_file, Path::new("/abs/server.key"));
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/telemetry/ca.pem"))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        assert_eq!(config.basic_auth_users.len(), 2);
        assert_eq!(config.headers.len(), 2);
        assert_eq!(config.headers[0].0.as_str(), "x-frame-options");
        assert_eq!(config.referenced_files().len(), 3);
    }

    #[test]
    fn empty_and_null_files_protect_nothing() {
        for text in [
            "",
            "  \n",
            "~\n",
            "# only a comment\n",
            "basic_auth_users:\n",
        ] {
            let config = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(config, WebConfig::default(), "{text:?}");
        }
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors() {
        let err = parse("basic_auth_user:\n  a: b\n").unwrap_err();
        assert!(err.to_string().contains("basic_auth_user"), "{err}");
        let err = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  certfile: c\n")
            .unwrap_err();
        assert!(err.to_string().contains("certfile"), "{err}");
        let err = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n").unwrap_err();
        assert!(
            matches!(
                err,
                WebConfigError::Unsupported("tls_server_config.cipher_suites")
            ),
            "{err}"
        );
        let err = parse("http_server_config:\n  headers:\n    Server: x\n").unwrap_err();
        assert!(matches!(err, WebConfigError::HeaderNotAllowed(_)), "{err}");
    }

    #[test]
    fn tls_settings_are_checked() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        assert!(matches!(
            parse("tls_server_config:\n  key_file: b\n").unwrap_err(),
            WebConfigError::MissingTlsFile("cert_file")
        ));
        assert!(matches!(
            parse(&format!("{base}  client_ca_file: ca.pem\n")).unwrap_err(),
            WebConfigError::ClientCaWithoutPolicy
        ));
        assert!(matches!(
            parse(&format!(
                "{base}  client_auth_type: VerifyClientCertIfGiven\n"
            ))
            .unwrap_err(),
            WebConfigError::PolicyWithoutClientCa(ClientAuth::VerifyClientCertIfGiven)
        ));
        assert!(matches!(
            parse(&format!("{base}  client_auth_type: Sometimes\n")).unwrap_err(),
            WebConfigError::ClientAuthType(_)
        ));
        assert!(matches!(
            parse(&format!("{base}  min_version: TLS11\n")).unwrap_err(),
            WebConfigError::TlsVersionUnsupported { .. }
        ));
        assert!(matches!(
            parse(&format!(
                "{base}  min_version: TLS13\n  max_version: TLS12\n"
            ))
            .unwrap_err(),
            WebConfigError::VersionRange
        ));
        let any = parse(&format!("{base}  client_auth_type: RequireClientCert\n")).unwrap();
        assert_eq!(
            any.tls.map(|t| t.client_auth),
            Some(ClientAuth::RequireAnyClientCert),
            "exporter-toolkit's old name"
        );
    }

    #[test]
    fn users_and_hashes_are_checked_at_load() {
        let err = parse("basic_auth_users:\n  a: plaintext\n").unwrap_err();
        assert!(
            matches!(&err, WebConfigError::Hash { user, .. } if user == "a"),
            "{err}"
        );
        let err = parse(&format!("basic_auth_users:\n  'a:b': {HTPASSWD_HASH}\n")).unwrap_err();
        assert!(matches!(err, WebConfigError::UserName(_)), "{err}");
    }

    #[test]
    fn bcrypt_verifies_htpasswd_and_python_hashes() {
        for hash in [HTPASSWD_HASH, PYTHON_HASH] {
            assert!(bcrypt::verify("scrape secret", hash).unwrap(), "{hash}");
            assert!(!bcrypt::verify("scrape secreT", hash).unwrap(), "{hash}");
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(matches!(
            WebConfig::load(&path).unwrap_err(),
            WebConfigError::TooLarge { .. }
        ));
        let err = WebConfig::load(&dir.path().join("missing.yml")).unwrap_err();
        assert!(err.to_string().contains("missing.yml"), "{err}");
    }
}
