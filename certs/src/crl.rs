//! The CA's certificate revocation list (CRL): the sender certificates a
//! receiver started with `--crl` refuses.
//!
//! * Every signed version carries a CRL number one higher than the version
//!   it replaces; revoking a serial that is already listed changes nothing.
//! * `thisUpdate` is the signing time and `nextUpdate` [`NEXT_UPDATE_DAYS`]
//!   later. A receiver keeps applying a list past its `nextUpdate` —
//!   revocations never lapse — and logs a warning until the list is
//!   re-signed ([`Revocations::sign`], `telemetry-certs refresh-crl`).
//! * An existing list is read only if this CA signed it, and a certificate
//!   is revoked only if this CA issued it.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use rustls_pki_types::{pem::PemObject, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

use crate::{first_cert, Authority, CertError};

/// Days from signing a CRL to its `nextUpdate`.
pub const NEXT_UPDATE_DAYS: i64 = 365;

/// Why a certificate is revoked (RFC 5280 reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The certificate's private key was (or may have been) disclosed.
    KeyCompromise,
    /// The subject's name or affiliation changed.
    AffiliationChanged,
    /// A new certificate replaces it.
    Superseded,
    /// The sender is decommissioned.
    CessationOfOperation,
}

impl From<Reason> for RevocationReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

/// An RFC 5280 reason code read from an existing CRL (unknown codes are dropped).
fn reason_of_code(code: u8) -> Option<RevocationReason> {
    use RevocationReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCrl,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}

/// The contents of the CA's CRL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Revocations {
    number: u128,
    entries: Vec<RevokedCertParams>,
}

impl Revocations {
    /// An empty list that has never been signed (its first version is number 1).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a PEM CRL (`what` names it in errors), which `ca` must have signed.
    pub fn parse(ca: &Authority, pem: &str, what: &str) -> Result<Self, CertError> {
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            CertError::Pem {
                what: what.to_owned(),
                problem: format!("no usable X509 CRL block: {e}"),
            }
        })?;
        let crl_err = |problem| CertError::Crl {
            what: what.to_owned(),
            problem,
        };
        if !telemetry_link::tls::crl_issued_by(&der, ca.cert_der()) {
            return Err(crl_err(telemetry_link::tls::CrlError::NotSignedByCa {
                issuer: telemetry_link::tls::summarize_crl_der(&der)
                    .map(|s| s.issuer)
                    .unwrap_or_default(),
            }));
        }
        let summary = telemetry_link::tls::summarize_crl_der(&der).map_err(crl_err)?;
        let time = |ts: i64| OffsetDateTime::from_unix_timestamp(ts).ok();
        let entries = summary
            .entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: e.serial.clone().into(),
                revocation_time: time(e.revoked_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                reason_code: e.reason.and_then(reason_of_code),
                invalidity_date: e.invalid_since.and_then(time),
            })
            .collect();
        Ok(Self {
            number: summary.number.unwrap_or(0),
            entries,
        })
    }

    /// The CRL number of the version last read or signed (0: never signed).
    pub fn number(&self) -> u128 {
        self.number
    }

    /// How many certificates are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no certificate is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `serial` (big-endian, no leading zeros) is listed.
    pub fn contains(&self, serial: &[u8]) -> bool {
        self.entries
            .iter()
            .any(|e| strip(&e.serial_number.to_bytes()) == strip(serial))
    }

    /// Lists the certificate `cert_pem` (`what` names it in errors), which
    /// `ca` must have issued. Returns its serial and whether the list
    /// changed (false: it was already listed).
    pub fn revoke(
        &mut self,
        ca: &Authority,
        cert_pem: &str,
        what: &str,
        reason: Reason,
    ) -> Result<(Vec<u8>, bool), CertError> {
        let der = first_cert(cert_pem, what)?;
        if !telemetry_link::tls::issued_by(&der, ca.cert_der()) {
            return Err(CertError::NotIssuedByCa(what.to_owned()));
        }
        let serial = telemetry_link::tls::summarize_der(&der)
            .map_err(|e| CertError::Pem {
                what: what.to_owned(),
                problem: e.to_string(),
            })?
            .serial;
        if self.contains(&serial) {
            return Ok((serial, false));
        }
        self.entries.push(RevokedCertParams {
            serial_number: serial.clone().into(),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(reason.into()),
            invalidity_date: None,
        });
        Ok((serial, true))
    }

    /// Signs the next version (number + 1, `thisUpdate` now, `nextUpdate`
    /// [`NEXT_UPDATE_DAYS`] later) with `ca`; returns it as PEM.
    pub fn sign(&mut self, ca: &Authority) -> Result<String, CertError> {
        self.sign_at(ca, OffsetDateTime::now_utc())
    }

    /// [`Revocations::sign`] as if it were `this_update` (tests of lists
    /// past their `nextUpdate`).
    pub fn sign_at(
        &mut self,
        ca: &Authority,
        this_update: OffsetDateTime,
    ) -> Result<String, CertError> {
        let number = self.number.saturating_add(1);
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + Duration::days(NEXT_UPDATE_DAYS),
            crl_number: number_bytes(number).into(),
            issuing_distribution_point: None,
            revoked_certs: self.entries.clone(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = params.signed_by(&ca.issuer)?.pem()?;
        self.number = number;
        Ok(pem)
    }
}

fn strip(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn number_bytes(n: u128) -> Vec<u8> {
    strip(&n.to_be_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validity;

    #[test]
    fn revoking_grows_the_number_once_per_change_and_survives_a_reparse() {
        let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
        let a = ca.issue_sender("a", Validity::days(1)).unwrap();
        let b = ca.issue_sender("b", Validity::days(1)).unwrap();
        let mut list = Revocations::new();
        let empty = list.sign(&ca).unwrap();
        assert_eq!(list.number(), 1);
        let mut list = Revocations::parse(&ca, &empty, "crl.pem").unwrap();
        assert!(list.is_empty() && list.number() == 1);

        let (serial_a, changed) = list
            .revoke(&ca, &a.cert_pem, "a.pem", Reason::KeyCompromise)
            .unwrap();
        assert!(changed);
        let pem = list.sign(&ca).unwrap();
        let mut again = Revocations::parse(&ca, &pem, "crl.pem").unwrap();
        assert_eq!(again.number(), 2);
        assert!(again.contains(&serial_a));
        let (_, changed) = again
            .revoke(&ca, &a.cert_pem, "a.pem", Reason::Unspecified)
            .unwrap();
        assert!(!changed, "already listed");
        again
            .revoke(&ca, &b.cert_pem, "b.pem", Reason::Superseded)
            .unwrap();
        let pem = again.sign(&ca).unwrap();
        let last = Revocations::parse(&ca, &pem, "crl.pem").unwrap();
        assert_eq!((last.number(), last.len()), (3, 2));
        assert_eq!(
            last.entries[0].reason_code,
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(
            last.entries[0].revocation_time,
            list.entries[0]
                .revocation_time
                .replace_nanosecond(0)
                .unwrap()
        );
    }

    #[test]
    fn foreign_lists_and_certificates_are_refused() {
        let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
        let other = Authority::generate("test CA", Validity::days(10)).unwrap();
        let foreign = other.issue_sender("x", Validity::days(1)).unwrap();
        let mut list = Revocations::new();
        assert!(matches!(
            list.revoke(&ca, &foreign.cert_pem, "x.pem", Reason::Unspecified),
            Err(CertError::NotIssuedByCa(_))
        ));
        let foreign_crl = Revocations::new().sign(&other).unwrap();
        let err = Revocations::parse(&ca, &foreign_crl, "crl.pem").unwrap_err();
        assert!(err.to_string().contains("not signed by a CA"), "{err}");
        assert!(Revocations::parse(&ca, "junk", "crl.pem").is_err());
    }

    #[test]
    fn numbers_encode_without_leading_zeros() {
        assert_eq!(number_bytes(1), vec![1]);
        assert_eq!(number_bytes(0x1234), vec![0x12, 0x34]);
        assert_eq!(number_bytes(0), Vec::<u8>::new());
        assert_eq!(strip(&[0, 0, 5]), &[5]);
    }
}
