//! Mutual TLS for the link: loading and checking PEM files, the peer
//! identity rule, certificate purposes, revocation, rustls configurations
//! for both ends, and hot reload.
//!
//! * Only TLS 1.3, only the `ring` provider, ALPN [`crate::proto::message::ALPN`].
//! * The receiver requires a client certificate chaining to the configured
//!   CA; the sender requires the receiver's certificate to chain to the same
//!   CA and to match the server name.
//! * **Purposes**: a sender's certificate must carry the clientAuth extended
//!   key usage and a receiver's serverAuth. A certificate without an extended
//!   key usage extension is refused too (WebPKI alone would accept it for
//!   any purpose): at the receiver's handshake (counted as `bad_eku`), at the
//!   sender for the receiver's certificate, and at startup for a node's own
//!   certificate.
//! * **Revocation**: with [`TlsFiles::crl`] the receiver refuses senders
//!   whose certificate a CRL lists (counted as `revoked`). The CRL file must
//!   hold one CRL signed by each CA in the CA file; it is checked at load and
//!   reloaded with the certificates. A CRL past its `nextUpdate` still
//!   applies (a warning is logged): revocations never lapse by age.
//!   [`TlsMaterial::is_revoked`] tells whether an already connected peer's
//!   certificate is listed, so open sessions can be closed on reload.
//! * **Identity** is read from the peer's verified certificate, never from
//!   anything the peer says: the subject Common Name if present, else the
//!   first DNS name in the SubjectAltName. It must be 1–128 characters of
//!   `[A-Za-z0-9._-]` (it becomes a metric label and a file name).
//! * [`TlsMaterial::load`] checks a node's own files up front — readable,
//!   parseable, key matching the certificate, inside its validity period,
//!   issued by the CA, carrying the purpose of its role, not revoked — and
//!   names the file and the reason when they are not.
//! * Client-certificate failures during handshakes are classified (expired,
//!   not yet valid, unknown CA, revoked, bad EKU, ...) through a wrapping
//!   verifier that reports them to a callback, so they can be counted by
//!   reason.
//!
//! Modules by job: `files` reads PEM files, `identity` the identity rule,
//! `summary` human-readable facts for `telemetry-certs inspect`, `crl`
//! revocation lists, `verify` the purpose-checking and classifying
//! verifiers, `material` a node's checked material and its rustls
//! configurations, `reload` following the files.

use std::{path::PathBuf, sync::Arc};

use rustls::crypto::CryptoProvider;
use thiserror::Error;

mod crl;
mod files;
mod identity;
mod material;
mod reload;
mod summary;
mod verify;

pub use crl::{crl_issued_by, issued_by, CrlError};
pub use files::{load_certs, load_crls};
pub use identity::{
    identity_from_der, peer_certificate, peer_identity, validate_identity, IdentityError,
    MAX_IDENTITY_LEN,
};
pub use material::TlsMaterial;
pub use reload::{Reload, ReloadableTls};
pub use summary::{
    format_serial, rfc3339, summarize_crl_der, summarize_der, CertSummary, CrlEntry, CrlSummary,
};
pub use verify::{classify_cert_error, is_certificate_alert, FailureSink};

/// Paths of a node's TLS files.
///
/// Build with [`TlsFiles::new`] and, on a receiver that checks revocation,
/// [`TlsFiles::with_crl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that peers must chain to (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificate revocation lists (PEM, one per CA in [`TlsFiles::ca`]):
    /// a receiver refuses senders whose certificate is listed (a sender
    /// given one refuses a listed receiver certificate). `None`: no
    /// revocation checking.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// CA, certificate and key; no CRL.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            crl: None,
        }
    }

    /// The same files plus a CRL file.
    pub fn with_crl(mut self, crl: impl Into<PathBuf>) -> Self {
        self.crl = Some(crl.into());
        self
    }
}

/// Which end of the link a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A sender: client certificate.
    Sender,
    /// A receiver: server certificate.
    Receiver,
}

impl Role {
    /// The extended key usage this role's certificate must carry.
    pub fn purpose(self) -> &'static str {
        match self {
            Role::Sender => "clientAuth (TLS client authentication)",
            Role::Receiver => "serverAuth (TLS server authentication)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
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
    /// The certificate lacks the extended key usage of its role.
    #[error(
        "{}: certificate does not allow {purpose}, which a {role} certificate needs \
         (issue it with `telemetry-certs`)",
        path.display()
    )]
    MissingPurpose {
        /// The certificate file.
        path: PathBuf,
        /// The role the certificate was loaded for (`sender`, `receiver`).
        role: &'static str,
        /// The missing extended key usage.
        purpose: &'static str,
    },
    /// The certificate is listed in the node's own CRL.
    #[error("{}: certificate is revoked by {}", path.display(), crl.display())]
    Revoked {
        /// The certificate file.
        path: PathBuf,
        /// The CRL file.
        crl: PathBuf,
    },
    /// The CRL file is unusable.
    #[error("{}: {problem}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong.
        problem: CrlError,
    },
    /// The certificate fails another check (encoding, ...).
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

/// The process-wide crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as rustls' process default (harmless if already done).
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests;
