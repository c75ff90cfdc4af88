//! The identity rule: a peer is named by its verified certificate — the
//! subject Common Name if present, else the first DNS SubjectAltName — and
//! the name must be 1–[`MAX_IDENTITY_LEN`] characters of `[A-Za-z0-9._-]`,
//! because it becomes a metric label and a file name.

use rustls::pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// Longest identity accepted.
pub const MAX_IDENTITY_LEN: usize = 128;

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

/// The verified leaf certificate of a connected peer (what
/// [`super::TlsMaterial::is_revoked`] takes).
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned())
}

/// The identity of a connected peer, from its verified certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<String, IdentityError> {
    let leaf = peer_certificate(conn).ok_or(IdentityError::Missing)?;
    identity_from_der(&leaf)
}

/// The first DNS name or IP address in a certificate's SubjectAltName.
pub(crate) fn first_san_name(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|g| match g {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        GeneralName::IPAddress(ip) => Some(format_ip(ip)),
        _ => None,
    })
}

/// An IP address from its SubjectAltName bytes.
pub(crate) fn format_ip(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_syntax() {
        assert!(validate_identity("cluster-a.prod_1").is_ok());
        assert!(validate_identity("").is_err());
        assert!(validate_identity("a/b").is_err());
        assert!(validate_identity("../x").is_err());
        assert!(validate_identity(&"a".repeat(128)).is_ok());
        assert!(validate_identity(&"a".repeat(129)).is_err());
        assert_eq!(identity_from_der(b"junk"), Err(IdentityError::Parse));
    }

    #[test]
    fn ip_addresses_format_both_families() {
        assert_eq!(format_ip(&[192, 168, 1, 50]), "192.168.1.50");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(format_ip(&v6), "::1");
    }
}
