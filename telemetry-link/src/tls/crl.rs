//! Certificate revocation lists. A CRL file is accepted only if every CRL
//! in it is issued and signed by a CA of the CA file that may sign CRLs,
//! and every CA there has exactly one CRL — so no sender's revocation
//! status is ever unknown at a handshake. The revoked serials are indexed by
//! issuer for [`super::TlsMaterial::is_revoked`].
//!
//! A CRL whose `nextUpdate` has passed keeps applying: a revoked sender
//! stays refused however old the list is. Loading one logs a warning so the
//! operator re-signs it (`telemetry-certs refresh-crl`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use thiserror::Error;
use tracing::warn;
use x509_parser::{
    certificate::X509Certificate, prelude::FromDer, revocation_list::CertificateRevocationList,
};

use super::{
    files::load_crls,
    summary::{now_unix, rfc3339},
    TlsError,
};

/// Why a CRL cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CrlError {
    /// Not a parseable X.509 CRL.
    #[error("not a valid X.509 CRL")]
    Parse,
    /// The CRL number does not fit 128 bits.
    #[error("CRL number is longer than 128 bits")]
    NumberTooLarge,
    /// No CA of the CA file issued and signed it.
    #[error("the CRL from {issuer:?} is not signed by a CA of the CA file")]
    NotSignedByCa {
        /// The CRL's issuer name.
        issuer: String,
    },
    /// Its CA's key usage does not include cRLSign.
    #[error("CA {ca:?} may not sign CRLs (its key usage lacks cRLSign)")]
    CaCannotSignCrls {
        /// The CA's subject name.
        ca: String,
    },
    /// A CA of the CA file has no CRL, so its senders could not be checked.
    #[error(
        "no CRL from CA {ca:?}: every CA of the CA file needs one \
         (`telemetry-certs refresh-crl` writes an empty one)"
    )]
    MissingForCa {
        /// The CA's subject name.
        ca: String,
    },
    /// Two CRLs from the same CA.
    #[error("more than one CRL from CA {ca:?}")]
    Duplicate {
        /// The CA's subject name.
        ca: String,
    },
}

/// The CRLs a receiver checks, validated against its CA certificates.
#[derive(Debug, Clone)]
pub(crate) struct RevocationLists {
    path: PathBuf,
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// Revoked serials (big-endian, no leading zeros) by raw issuer name.
    revoked: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
}

impl RevocationLists {
    /// Loads the CRL file at `path` and checks it against `cas`.
    pub(crate) fn load(path: &Path, cas: &[CertificateDer<'_>]) -> Result<Self, TlsError> {
        let ders = load_crls(path)?;
        let crl_err = |problem| TlsError::Crl {
            path: path.to_path_buf(),
            problem,
        };
        let revoked = index(&ders, cas).map_err(crl_err)?;
        let now = now_unix();
        for der in &ders {
            if let Ok((_, crl)) = CertificateRevocationList::from_der(der) {
                if let Some(next) = crl.next_update().map(|t| t.timestamp()) {
                    if next < now {
                        warn!(
                            crl = %path.display(),
                            issuer = %crl.issuer(),
                            next_update = %rfc3339(next),
                            "CRL is past its next update; its revocations still apply — \
                             re-sign it with `telemetry-certs refresh-crl`"
                        );
                    }
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            ders,
            revoked,
        })
    }

    /// The CRL file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The CRLs, for rustls' verifier.
    pub(crate) fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.ders.clone()
    }

    /// Whether a CRL from `cert_der`'s issuer lists its serial. An
    /// unparseable certificate is not listed.
    pub(crate) fn is_revoked(&self, cert_der: &[u8]) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
            return false;
        };
        self.revoked
            .get(cert.issuer().as_raw())
            .is_some_and(|serials| serials.contains(&cert.serial.to_bytes_be()))
    }
}

/// Checks `crls` against `cas` (see the module documentation) and indexes
/// the revoked serials by issuer.
fn index(
    crls: &[CertificateRevocationListDer<'_>],
    cas: &[CertificateDer<'_>],
) -> Result<BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>, CrlError> {
    let cas: Vec<X509Certificate<'_>> = cas
        .iter()
        .filter_map(|c| X509Certificate::from_der(c).ok().map(|(_, c)| c))
        .collect();
    let mut revoked = BTreeMap::new();
    for der in crls {
        let (_, crl) = CertificateRevocationList::from_der(der).map_err(|_| CrlError::Parse)?;
        let ca = cas
            .iter()
            .find(|ca| crl_signed_by(&crl, ca))
            .ok_or_else(|| CrlError::NotSignedByCa {
                issuer: crl.issuer().to_string(),
            })?;
        let may_sign = match ca.key_usage() {
            Ok(Some(ku)) => ku.value.crl_sign(),
            Ok(None) => true,
            Err(_) => false,
        };
        if !may_sign {
            return Err(CrlError::CaCannotSignCrls {
                ca: ca.subject().to_string(),
            });
        }
        let serials: BTreeSet<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.serial().to_bytes_be())
            .collect();
        if revoked
            .insert(crl.issuer().as_raw().to_vec(), serials)
            .is_some()
        {
            return Err(CrlError::Duplicate {
                ca: ca.subject().to_string(),
            });
        }
    }
    if let Some(ca) = cas
        .iter()
        .find(|ca| !revoked.contains_key(ca.subject().as_raw()))
    {
        return Err(CrlError::MissingForCa {
            ca: ca.subject().to_string(),
        });
    }
    Ok(revoked)
}

fn crl_signed_by(crl: &CertificateRevocationList<'_>, ca: &X509Certificate<'_>) -> bool {
    crl.issuer().as_raw() == ca.subject().as_raw() && crl.verify_signature(ca.public_key()).is_ok()
}

/// Whether the DER CRL `crl_der` was issued and signed by the CA certificate `ca_der`.
pub fn crl_issued_by(crl_der: &[u8], ca_der: &[u8]) -> bool {
    match (
        CertificateRevocationList::from_der(crl_der),
        X509Certificate::from_der(ca_der),
    ) {
        (Ok((_, crl)), Ok((_, ca))) => crl_signed_by(&crl, &ca),
        _ => false,
    }
}

/// Whether the DER certificate `cert_der` was issued and signed by the CA
/// certificate `ca_der` (names and signature only: not its validity or
/// purposes).
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    match (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(ca_der),
    ) {
        (Ok((_, cert)), Ok((_, ca))) => {
            cert.issuer().as_raw() == ca.subject().as_raw()
                && cert.verify_signature(Some(ca.public_key())).is_ok()
        }
        _ => false,
    }
}
