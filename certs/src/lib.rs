//! Certificate authority operations for the telemetry link, on rcgen:
//! a CA, receiver (server) certificates valid for a set of DNS names and IP
//! addresses, and sender (client) certificates whose identity is the
//! sender's id. Keys are ECDSA P-256.
//!
//! The [`files`] module writes them the way the binaries expect them
//! (`ca.pem`/`ca.key`, `receiver.pem`/`receiver.key`, `sender-ID.pem`/
//! `sender-ID.key`), keys with mode 0600, never overwriting without `force`.

pub mod files;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
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
}

impl Validity {
    /// From an hour ago (tolerating clock skew between machines) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// An explicit window relative to now, in seconds (negative = past).
    /// Tests use it for expired and not-yet-valid certificates.
    pub fn relative(from_secs: i64, to_secs: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now + Duration::seconds(from_secs),
            not_after: now + Duration::seconds(to_secs),
        }
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

/// A certificate authority that can issue link certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams, CertError> {
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

impl Authority {
    /// Makes a new self-signed CA.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, CertError> {
        let mut p = base_params(common_name, validity)?;
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
            key_pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
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
        let first = names
            .first()
            .ok_or_else(|| CertError::BadName(String::new()))?;
        let mut p = base_params(first, validity)?;
        p.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
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
mod tests {
    use super::*;
    use telemetry_link::tls::{identity_from_der, summarize_der};

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn issued_certificates_carry_identity_and_names() {
        let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
        let s = ca.issue_sender("cluster-a", Validity::days(1)).unwrap();
        assert_eq!(identity_from_der(&der(&s.cert_pem)).unwrap(), "cluster-a");
        let r = ca
            .issue_receiver(
                &["recv.lan".into(), "192.168.1.50".into()],
                Validity::days(1),
            )
            .unwrap();
        let sum = summarize_der(&der(&r.cert_pem)).unwrap();
        assert_eq!(
            sum.sans,
            vec!["DNS:recv.lan".to_string(), "IP:192.168.1.50".to_string()]
        );
        assert!(!sum.is_ca);
        assert!(summarize_der(&der(ca.cert_pem())).unwrap().is_ca);
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
        assert!(matches!(
            ca.issue_sender("a/b", Validity::days(1)),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            ca.issue_receiver(&["bad name".into()], Validity::days(1)),
            Err(CertError::BadName(_))
        ));
    }

    #[test]
    fn ca_roundtrips_through_pem() {
        let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let s = again.issue_sender("later", Validity::days(1)).unwrap();
        assert_eq!(identity_from_der(&der(&s.cert_pem)).unwrap(), "later");
    }
}
