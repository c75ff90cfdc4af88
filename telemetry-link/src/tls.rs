//! Mutual TLS for the link: loading and checking PEM files, the peer
//! identity rule, rustls configurations for both ends, and hot reload.
//!
//! * Only TLS 1.3, only the `ring` provider, ALPN [`crate::proto::message::ALPN`].
//! * The receiver requires a client certificate chaining to the configured
//!   CA; the sender requires the receiver's certificate to chain to the same
//!   CA and to match the server name.
//! * **Identity** is read from the peer's verified certificate, never from
//!   anything the peer says: the subject Common Name if present, else the
//!   first DNS name in the SubjectAltName. It must be 1–128 characters of
//!   `[A-Za-z0-9._-]` (it becomes a metric label and a file name).
//! * [`TlsMaterial::load`] checks a node's own files up front — readable,
//!   parseable, key matching the certificate, inside its validity period,
//!   issued by the CA — and names the file and the reason when they are not.
//! * Client-certificate failures during handshakes are classified (expired,
//!   not yet valid, unknown CA, ...) through a wrapping verifier that reports
//!   them to a callback, so they can be counted by reason.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use thiserror::Error;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::proto::message::ALPN;

/// Longest identity accepted.
pub const MAX_IDENTITY_LEN: usize = 128;

/// Paths of a node's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that peers must chain to (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Which end of the link a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A sender: client certificate.
    Sender,
    /// A receiver: server certificate.
    Receiver,
}

/// Why TLS material cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no PEM object of the expected kind.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate's validity period ended.
    #[error("{}: certificate expired on {not_after} (it is now {now})", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// End of validity (RFC 3339).
        not_after: String,
        /// Current time (RFC 3339).
        now: String,
    },
    /// The certificate's validity period has not begun.
    #[error("{}: certificate not valid before {not_before} (it is now {now})", path.display())]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity (RFC 3339).
        not_before: String,
        /// Current time (RFC 3339).
        now: String,
    },
    /// The certificate was not issued by the configured CA.
    #[error("{}: certificate is not signed by the CA in {}", path.display(), ca.display())]
    WrongCa {
        /// The certificate file.
        path: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },
    /// The certificate fails another check (usage, encoding, ...).
    #[error("{}: certificate rejected: {reason}", path.display())]
    Invalid {
        /// The certificate file.
        path: PathBuf,
        /// rustls' explanation.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// No usable identity in the certificate.
    #[error("{}: {source}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// rustls refused to build a configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Why a certificate yields no identity.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("not a valid X.509 certificate")]
    Parse,
    /// Neither a Common Name nor a DNS SubjectAltName.
    #[error("certificate has no Common Name and no DNS SubjectAltName")]
    Missing,
    /// The identity has characters outside `[A-Za-z0-9._-]` or is too long.
    #[error("identity {0:?} must be 1-128 characters of A-Z a-z 0-9 . _ -")]
    Invalid(String),
}

/// The identity in a DER certificate: its Common Name, else its first DNS
/// SubjectAltName.
pub fn identity_from_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Parse)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let id = match cn {
        Some(cn) => cn,
        None => cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|g| match g {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
            })
            .ok_or(IdentityError::Missing)?,
    };
    validate_identity(&id)?;
    Ok(id)
}

/// Checks the identity syntax rule.
pub fn validate_identity(id: &str) -> Result<(), IdentityError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_IDENTITY_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Invalid(
            id.chars().take(MAX_IDENTITY_LEN + 1).collect(),
        ))
    }
}

/// Human-readable facts about a certificate (for `telemetry-certs inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// DNS names and IP addresses in the SubjectAltName.
    pub sans: Vec<String>,
    /// The link identity, or why there is none.
    pub identity: Result<String, IdentityError>,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// `valid`, `expired` or `not yet valid`, at the time of the call.
    pub status: &'static str,
}

/// Summarises a DER certificate.
pub fn summarize_der(der: &[u8]) -> Result<CertSummary, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Parse)?;
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", format_ip(ip))),
                GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        identity: identity_from_der(der),
        not_before: rfc3339(cert.validity().not_before.timestamp()),
        not_after: rfc3339(cert.validity().not_after.timestamp()),
        is_ca: cert.is_ca(),
        status: {
            let now = now_unix();
            if now < cert.validity().not_before.timestamp() {
                "not yet valid"
            } else if now > cert.validity().not_after.timestamp() {
                "expired"
            } else {
                "valid"
            }
        },
    })
}

fn format_ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

/// Formats a Unix timestamp as RFC 3339 UTC (no external time crate).
pub fn rfc3339(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The process-wide crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as rustls' process default (harmless if already done).
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A node's loaded, checked TLS material.
#[derive(Clone)]
pub struct TlsMaterial {
    files: TlsFiles,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: String,
    not_after: i64,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("identity", &self.identity)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Parses every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| pem_err(path, format!("no usable private key: {e}")))
}

impl TlsMaterial {
    /// Loads and checks `files` for a node playing `role`.
    pub fn load(files: &TlsFiles, role: Role) -> Result<Self, TlsError> {
        let ca_certs = load_certs(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots
                .add(c)
                .map_err(|e| pem_err(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;

        let leaf = chain[0].clone();
        let (_, parsed) = X509Certificate::from_der(&leaf)
            .map_err(|_| pem_err(&files.cert, "certificate is not valid X.509"))?;
        let now = now_unix();
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        if now < not_before {
            return Err(TlsError::NotYetValid {
                path: files.cert.clone(),
                not_before: rfc3339(not_before),
                now: rfc3339(now),
            });
        }
        if now > not_after {
            return Err(TlsError::Expired {
                path: files.cert.clone(),
                not_after: rfc3339(not_after),
                now: rfc3339(now),
            });
        }
        let identity = identity_from_der(&leaf).map_err(|source| TlsError::Identity {
            path: files.cert.clone(),
            source,
        })?;

        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| pem_err(&files.key, format!("unsupported private key: {e}")))?;
        if CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .is_err()
        {
            return Err(TlsError::KeyMismatch {
                key: files.key.clone(),
                cert: files.cert.clone(),
            });
        }

        let material = Self {
            files: files.clone(),
            roots,
            chain,
            key: Arc::new(key),
            identity,
            not_after,
        };
        material.check_issued_by_ca(role, &parsed)?;
        Ok(material)
    }

    fn check_issued_by_ca(&self, role: Role, parsed: &X509Certificate<'_>) -> Result<(), TlsError> {
        let leaf = &self.chain[0];
        let inter = &self.chain[1..];
        let now = UnixTime::now();
        let res = match role {
            Role::Sender => self
                .client_verifier_inner()?
                .verify_client_cert(leaf, inter, now)
                .map(|_| ()),
            Role::Receiver => {
                let name = first_san_name(parsed).unwrap_or_else(|| self.identity.clone());
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    pem_err(
                        &self.files.cert,
                        format!("SAN {name:?} is not a valid server name"),
                    )
                })?;
                WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?
                    .verify_server_cert(leaf, inter, &server_name, &[], now)
                    .map(|_| ())
            }
        };
        res.map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                TlsError::WrongCa {
                    path: self.files.cert.clone(),
                    ca: self.files.ca.clone(),
                }
            }
            other => TlsError::Invalid {
                path: self.files.cert.clone(),
                reason: other.to_string(),
            },
        })
    }

    fn client_verifier_inner(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// This node's identity (from its own certificate).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The files this material came from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// End of the certificate's validity, Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after
    }

    /// A rustls server configuration requiring client certificates from the
    /// CA; certificate failures are reported to `on_failure` by reason.
    pub fn server_config(&self, on_failure: FailureSink) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(ClassifyingVerifier {
            inner: self.client_verifier_inner()?,
            on_failure,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// A rustls client configuration presenting this node's certificate and
    /// trusting only the CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

fn first_san_name(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|g| match g {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        GeneralName::IPAddress(ip) => Some(format_ip(ip)),
        _ => None,
    })
}

/// Callback told the reason of every client-certificate failure.
pub type FailureSink = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Metric label for a rustls certificate error.
pub fn classify_cert_error(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_usage"
            }
            #[allow(deprecated)]
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        _ => "bad_certificate",
    }
}

/// Wraps the WebPKI client verifier to report failures by reason.
struct ClassifyingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    on_failure: FailureSink,
}

impl fmt::Debug for ClassifyingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyingVerifier")
    }
}

impl ClassifyingVerifier {
    fn report<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(e) = &r {
            (self.on_failure)(classify_cert_error(e));
        }
        r
    }
}

impl ClientCertVerifier for ClassifyingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.report(
            self.inner
                .verify_client_cert(end_entity, intermediates, now),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.report(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.report(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS alert codes the [`ClassifyingVerifier`] may cause, so a connection
/// error carrying one of them was already counted by reason.
pub fn is_certificate_alert(alert: u8) -> bool {
    // bad_certificate, unsupported_certificate, certificate_revoked,
    // certificate_expired, certificate_unknown, unknown_ca, decrypt_error
    matches!(alert, 42 | 43 | 44 | 45 | 46 | 48 | 51)
}

/// The identity of a connected peer, from its verified certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<String, IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::Missing)?;
    let leaf = certs.first().ok_or(IdentityError::Missing)?;
    identity_from_der(leaf)
}

/// TLS material that follows its files: [`ReloadableTls::poll`] reloads it
/// when a file's modification time or size changed. A broken new file keeps
/// the previous material in use.
#[derive(Debug)]
pub struct ReloadableTls {
    role: Role,
    current: TlsMaterial,
    stamps: [Option<(SystemTime, u64)>; 3],
}

/// Outcome of a reload check.
#[derive(Debug)]
pub enum Reload {
    /// Files unchanged.
    Unchanged,
    /// New material loaded.
    Reloaded,
    /// Files changed but are unusable; the old material stays.
    Failed(TlsError),
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ReloadableTls {
    /// Loads the initial material (errors are fatal at startup).
    pub fn load(files: &TlsFiles, role: Role) -> Result<Self, TlsError> {
        let stamps = Self::stamps_of(files);
        Ok(Self {
            role,
            current: TlsMaterial::load(files, role)?,
            stamps,
        })
    }

    fn stamps_of(files: &TlsFiles) -> [Option<(SystemTime, u64)>; 3] {
        [stamp(&files.ca), stamp(&files.cert), stamp(&files.key)]
    }

    /// The material in use.
    pub fn current(&self) -> &TlsMaterial {
        &self.current
    }

    /// Reloads if any file changed (or unconditionally with `force`, as on SIGHUP).
    pub fn poll(&mut self, force: bool) -> Reload {
        let stamps = Self::stamps_of(&self.current.files);
        if !force && stamps == self.stamps {
            return Reload::Unchanged;
        }
        self.stamps = stamps;
        match TlsMaterial::load(&self.current.files, self.role) {
            Ok(m) => {
                self.current = m;
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_syntax() {
        assert!(validate_identity("cluster-a.prod_1").is_ok());
        assert!(validate_identity("").is_err());
        assert!(validate_identity("a/b").is_err());
        assert!(validate_identity("../x").is_err());
        assert!(validate_identity(&"a".repeat(129)).is_err());
        assert_eq!(identity_from_der(b"junk"), Err(IdentityError::Parse));
    }

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
