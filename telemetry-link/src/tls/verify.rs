//! Certificate verifiers wrapped around rustls' WebPKI ones.
//!
//! * [`ClassifyingVerifier`] (receiver side): WebPKI's client verifier
//!   (chain, validity, CRLs), then the purpose rule — a sender's certificate
//!   must name clientAuth in its extended key usage; one without the
//!   extension is refused, where WebPKI alone accepts it. Every failure is
//!   reported to a [`FailureSink`] by reason ([`classify_cert_error`]).
//! * [`PurposeServerVerifier`] (sender side): WebPKI's server verifier, then
//!   the same rule for serverAuth on the receiver's certificate.

use std::{fmt, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, ExtendedKeyPurpose,
    SignatureScheme,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::Role;

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
            CertificateError::UnknownRevocationStatus => "unknown_revocation",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_eku"
            }
            #[allow(deprecated)]
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        rustls::Error::InvalidCertRevocationList(_) => "bad_crl",
        rustls::Error::NoCertificatesPresented => "no_certificate",
        _ => "bad_certificate",
    }
}

/// TLS alert codes the receiver's client-certificate verifier may cause (see
/// [`TlsMaterial::server_config`](super::TlsMaterial::server_config)), so a connection
/// error carrying one of them was already counted by reason.
pub fn is_certificate_alert(alert: u8) -> bool {
    // bad_certificate, unsupported_certificate, certificate_revoked,
    // certificate_expired, certificate_unknown, unknown_ca, decrypt_error
    matches!(alert, 42 | 43 | 44 | 45 | 46 | 48 | 51)
}

/// The TLS purposes a certificate's extended key usage names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Purposes {
    client_auth: bool,
    server_auth: bool,
    /// Every purpose by name, in the certificate's terms.
    names: Vec<String>,
    /// The same, as rustls reports them.
    presented: Vec<ExtendedKeyPurpose>,
}

impl Purposes {
    /// The purposes of a parsed certificate (none when it has no or an
    /// unreadable extended key usage extension).
    pub(crate) fn of(cert: &X509Certificate<'_>) -> Self {
        let Ok(Some(eku)) = cert.extended_key_usage() else {
            return Self::default();
        };
        let eku = eku.value;
        let mut p = Self {
            client_auth: eku.client_auth,
            server_auth: eku.server_auth,
            ..Self::default()
        };
        for (on, name) in [
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.any, "anyExtendedKeyUsage"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if on {
                p.names.push(name.to_owned());
            }
        }
        p.names
            .extend(eku.other.iter().map(|oid| oid.to_id_string()));
        if eku.server_auth {
            p.presented.push(ExtendedKeyPurpose::ServerAuth);
        }
        if eku.client_auth {
            p.presented.push(ExtendedKeyPurpose::ClientAuth);
        }
        p
    }

    /// Whether a certificate with these purposes may serve `role`.
    pub(crate) fn allows(&self, role: Role) -> bool {
        match role {
            Role::Sender => self.client_auth,
            Role::Receiver => self.server_auth,
        }
    }

    /// The purposes by name (`clientAuth`, `serverAuth`, ...).
    pub(crate) fn names(self) -> Vec<String> {
        self.names
    }
}

/// The purpose rule for a DER certificate playing `role`, as a rustls error.
pub(crate) fn check_purpose(der: &[u8], role: Role) -> Result<(), rustls::Error> {
    let purposes = X509Certificate::from_der(der)
        .map(|(_, c)| Purposes::of(&c))
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if purposes.allows(role) {
        return Ok(());
    }
    Err(rustls::Error::InvalidCertificate(
        CertificateError::InvalidPurposeContext {
            required: match role {
                Role::Sender => ExtendedKeyPurpose::ClientAuth,
                Role::Receiver => ExtendedKeyPurpose::ServerAuth,
            },
            presented: purposes.presented,
        },
    ))
}

/// The receiver's client verifier: WebPKI plus the purpose rule, reporting
/// failures by reason.
pub(crate) struct ClassifyingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    on_failure: FailureSink,
}

impl ClassifyingVerifier {
    /// Wraps `inner` (WebPKI's client verifier for the CA and CRLs).
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, on_failure: FailureSink) -> Self {
        Self { inner, on_failure }
    }

    fn report<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(e) = &r {
            (self.on_failure)(classify_cert_error(e));
        }
        r
    }
}

impl fmt::Debug for ClassifyingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyingVerifier")
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
                .verify_client_cert(end_entity, intermediates, now)
                .and_then(|ok| check_purpose(end_entity, Role::Sender).map(|()| ok)),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.report(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.report(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The sender's server verifier: WebPKI plus the purpose rule.
pub(crate) struct PurposeServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
}

impl PurposeServerVerifier {
    /// Wraps `inner` (WebPKI's server verifier for the CA).
    pub(crate) fn new(inner: Arc<dyn ServerCertVerifier>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for PurposeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PurposeServerVerifier")
    }
}

impl ServerCertVerifier for PurposeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .and_then(|ok| check_purpose(end_entity, Role::Receiver).map(|()| ok))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_map_to_reasons() {
        let cert = |e| rustls::Error::InvalidCertificate(e);
        assert_eq!(
            classify_cert_error(&cert(CertificateError::Revoked)),
            "revoked"
        );
        assert_eq!(
            classify_cert_error(&cert(CertificateError::InvalidPurposeContext {
                required: ExtendedKeyPurpose::ClientAuth,
                presented: vec![],
            })),
            "bad_eku"
        );
        assert_eq!(
            classify_cert_error(&cert(CertificateError::UnknownIssuer)),
            "unknown_ca"
        );
        assert_eq!(
            classify_cert_error(&rustls::Error::NoCertificatesPresented),
            "no_certificate"
        );
        // Every error the verifier raises sends an alert counted by reason.
        for e in [
            CertificateError::Revoked,
            CertificateError::InvalidPurpose,
            CertificateError::UnknownRevocationStatus,
            CertificateError::UnknownIssuer,
            CertificateError::Expired,
            CertificateError::BadEncoding,
        ] {
            let alert = u8::from(rustls::AlertDescription::from(e.clone()));
            assert!(is_certificate_alert(alert), "{e:?} -> alert {alert}");
        }
    }

    #[test]
    fn garbage_has_no_purpose() {
        assert!(check_purpose(b"junk", Role::Sender).is_err());
    }
}
