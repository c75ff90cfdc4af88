//! Certificate authority operations for the telemetry link, on rcgen:
//! a CA, receiver (server) certificates valid for a set of DNS names and IP
//! addresses, sender (client) certificates whose identity is the sender's
//! id, and the CA's certificate revocation list ([`crl`]). Keys are ECDSA
//! P-256.
//!
//! Guarantees:
//! * Every CA gets a subject name of its own (`<name> <8 random hex
//!   digits>`), so a certificate from another CA is reported as coming from
//!   an unknown CA, never as a bad signature of a same-named one.
//! * A receiver certificate carries exactly the serverAuth extended key
//!   usage, a sender certificate exactly clientAuth.
//! * A validity window that is empty or already over is refused, unless it
//!   was made with [`Validity::relative`] (tests of refusal paths).
//! * A CA loaded from files is checked: its key must belong to its
//!   certificate.
//!
//! The [`files`] module writes them the way the binaries expect them (see
//! its layout), keys with mode 0600, never overwriting without `force`.

pub mod crl;
pub mod files;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// A certificate operation failed.
#[derive(Debug, Error)]
pub enum CertError {
    /// rcgen refused the parameters or the input.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name that is neither an IP address nor a DNS name.
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
    BadName(String),
    /// A sender id that is not a valid link identity.
    #[error("invalid sender id: {0}")]
    BadIdentity(#[from] telemetry_link::tls::IdentityError),
    /// A validity window that ends before it starts or before now.
    #[error("validity window {not_before} .. {not_after} is empty or already over")]
    Window {
        /// Start (RFC 3339).
        not_before: String,
        /// End (RFC 3339).
        not_after: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not belong to the CA certificate")]
    CaKeyMismatch,
    /// A PEM input that holds no usable object.
    #[error("{what}: {problem}")]
    Pem {
        /// What was being read (a file name or "CA certificate").
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A certificate that this CA did not issue.
    #[error("{0} was not issued by this CA")]
    NotIssuedByCa(String),
    /// A CRL that cannot be used.
    #[error("{what}: {problem}")]
    Crl {
        /// The CRL file.
        what: String,
        /// Why.
        problem: telemetry_link::tls::CrlError,
    },
    /// File problem.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Refusing to overwrite.
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(String),
}

/// A validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
    /// Whether a window entirely in the past may be issued.
    past_allowed: bool,
}

impl Validity {
    /// From an hour ago (tolerating clock skew between machines) for `days`
    /// days. Issuing refuses `days == 0`: that window is already over.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now.saturating_add(Duration::days(i64::from(days))),
            past_allowed: false,
        }
    }

    /// An explicit window relative to now, in seconds (negative = past),
    /// issued even when it is already over: tests use it for expired and
    /// not-yet-valid certificates.
    pub fn relative(from_secs: i64, to_secs: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now + Duration::seconds(from_secs),
            not_after: now + Duration::seconds(to_secs),
            past_allowed: true,
        }
    }

    /// Refuses an empty window, and one that is over unless made with
    /// [`Validity::relative`].
    fn check(self) -> Result<Self, CertError> {
        let over = self.not_after <= OffsetDateTime::now_utc() && !self.past_allowed;
        if self.not_after <= self.not_before || over {
            let fmt = |t: OffsetDateTime| telemetry_link::tls::rfc3339(t.unix_timestamp());
            return Err(CertError::Window {
                not_before: fmt(self.not_before),
                not_after: fmt(self.not_after),
            });
        }
        Ok(self)
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// TLS client authentication: a sender.
    ClientAuth,
    /// TLS server authentication: a receiver.
    ServerAuth,
}

/// A certificate authority that can issue link certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams, CertError> {
    let validity = validity.check()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.distinguished_name
        .push(DnType::OrganizationName, "telemetry-link");
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    Ok(p)
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid_dns {
        return Err(CertError::BadName(name.to_owned()));
    }
    Ok(SanType::DnsName(
        name.try_into()
            .map_err(|_| CertError::BadName(name.to_owned()))?,
    ))
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what: what.to_owned(),
        problem: format!("no usable CERTIFICATE block: {e}"),
    })
}

impl Authority {
    /// Makes a new self-signed CA named `<common_name> <8 random hex digits>`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, CertError> {
        let name = format!("{common_name} {:08x}", rand::random::<u32>());
        let mut p = base_params(&name, validity)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and key (which must
    /// belong to the certificate).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = first_cert(cert_pem, "CA certificate")?;
        if public_key_of(&cert_der)? != key.public_key_raw() {
            return Err(CertError::CaKeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA's subject name.
    pub fn subject(&self) -> String {
        telemetry_link::tls::summarize_der(&self.cert_der)
            .map(|s| s.subject)
            .unwrap_or_default()
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, CertError> {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A receiver (server) certificate for `names` (DNS names or IP
    /// addresses; the first is also the Common Name).
    pub fn issue_receiver(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        self.issue_leaf(names, &[Purpose::ServerAuth], validity)
    }

    /// A sender (client) certificate whose link identity is `id`.
    pub fn issue_sender(&self, id: &str, validity: Validity) -> Result<Issued, CertError> {
        telemetry_link::tls::validate_identity(id)?;
        let mut p = base_params(id, validity)?;
        if let Ok(s) = san(id) {
            p.subject_alt_names = vec![s];
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A certificate for `names` (the first is also the Common Name) with
    /// exactly the extended key usages `purposes` — none at all for an empty
    /// slice. The link refuses anything but [`Authority::issue_receiver`]'s
    /// and [`Authority::issue_sender`]'s choice; tests use this for the
    /// refusals.
    pub fn issue_leaf(
        &self,
        names: &[String],
        purposes: &[Purpose],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let first = names
            .first()
            .ok_or_else(|| CertError::BadName(String::new()))?;
        let mut p = base_params(first, validity)?;
        p.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = purposes
            .iter()
            .map(|purpose| match purpose {
                Purpose::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                Purpose::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            })
            .collect();
        self.issue(p)
    }
}

/// The raw public key (subjectPublicKey bits) of a DER certificate.
fn public_key_of(der: &[u8]) -> Result<Vec<u8>, CertError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Pem {
        what: "CA certificate".into(),
        problem: format!("not valid X.509: {e}"),
    })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// A self-signed client certificate for `id` (not issued by any CA the
/// receiver trusts): for tests of refusal paths.
pub fn self_signed_sender(id: &str) -> Result<Issued, CertError> {
    let mut p = base_params(id, Validity::days(1))?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests;
