//! Human-readable facts about certificates and CRLs, for
//! `telemetry-certs inspect` and `revoke`: names, serials, purposes,
//! validity, and a CRL's number, dates and entries.

use std::time::SystemTime;

use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer,
    revocation_list::CertificateRevocationList,
};

use super::{
    crl::CrlError,
    identity::{format_ip, identity_from_der, IdentityError},
    verify::Purposes,
};

/// Human-readable facts about a certificate (for `telemetry-certs inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, big-endian without leading zero bytes (what a CRL lists).
    pub serial: Vec<u8>,
    /// DNS names and IP addresses in the SubjectAltName.
    pub sans: Vec<String>,
    /// The link identity, or why there is none.
    pub identity: Result<String, IdentityError>,
    /// Extended key usages (`clientAuth`, `serverAuth`, ...); empty when the
    /// certificate has no extended key usage extension.
    pub purposes: Vec<String>,
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
    let now = now_unix();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.serial.to_bytes_be(),
        sans,
        identity: identity_from_der(der),
        purposes: Purposes::of(&cert).names(),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        is_ca: cert.is_ca(),
        status: if now < not_before {
            "not yet valid"
        } else if now > not_after {
            "expired"
        } else {
            "valid"
        },
    })
}

/// Facts about a certificate revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// Issuer distinguished name.
    pub issuer: String,
    /// The CRL number (grows with every new version), if present.
    pub number: Option<u128>,
    /// When it was issued, Unix seconds.
    pub this_update: i64,
    /// When its issuer promised a newer one, Unix seconds.
    pub next_update: Option<i64>,
    /// The revoked certificates.
    pub entries: Vec<CrlEntry>,
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial number, big-endian without leading zero bytes.
    pub serial: Vec<u8>,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
    /// RFC 5280 reason code, if given.
    pub reason: Option<u8>,
    /// When the key is known or suspected to have been compromised, Unix seconds.
    pub invalid_since: Option<i64>,
}

/// Summarises a DER CRL.
pub fn summarize_crl_der(der: &[u8]) -> Result<CrlSummary, CrlError> {
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|_| CrlError::Parse)?;
    let number = match crl.crl_number() {
        None => None,
        Some(n) => Some(u128_of(&n.to_bytes_be()).ok_or(CrlError::NumberTooLarge)?),
    };
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| CrlEntry {
            serial: r.serial().to_bytes_be(),
            revoked_at: r.revocation_date.timestamp(),
            reason: r.reason_code().map(|(_, code)| code.0),
            invalid_since: r.invalidity_date().map(|(_, t)| t.timestamp()),
        })
        .collect();
    Ok(CrlSummary {
        issuer: crl.issuer().to_string(),
        number,
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        entries,
    })
}

fn u128_of(bytes: &[u8]) -> Option<u128> {
    let bytes = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => return Some(0),
    };
    if bytes.len() > 16 {
        return None;
    }
    Some(bytes.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b)))
}

/// A serial number as colon-separated hex (`3a:0f:...`).
pub fn format_serial(serial: &[u8]) -> String {
    serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn serials_and_numbers() {
        assert_eq!(format_serial(&[0x3a, 0x0f, 0x00]), "3a:0f:00");
        assert_eq!(format_serial(&[]), "");
        assert_eq!(u128_of(&[0, 0, 1, 2]), Some(0x102));
        assert_eq!(u128_of(&[]), Some(0));
        assert_eq!(u128_of(&[0xff; 16]), Some(u128::MAX));
        assert_eq!(u128_of(&[1; 17]), None);
        assert!(matches!(summarize_crl_der(b"junk"), Err(CrlError::Parse)));
    }
}
