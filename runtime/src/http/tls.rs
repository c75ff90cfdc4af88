//! The endpoint's TLS: a rustls server configuration (ring provider, TLS
//! 1.2/1.3, ALPN `http/1.1`) built from a web config's `tls_server_config`.
//!
//! What it guarantees: the five `client_auth_type` policies mean what they
//! mean in exporter-toolkit (Go's `crypto/tls`): `NoClientCert` asks for
//! nothing; `RequestClientCert` asks and accepts any answer;
//! `RequireAnyClientCert` requires a certificate whose handshake signature
//! is valid but does not check who issued it; `VerifyClientCertIfGiven`
//! and `RequireAndVerifyClientCert` check the certificate against
//! `client_ca_file`. Every file is read when the configuration is built, so
//! a reload picks up rotated certificates.

use std::sync::Arc;

use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime};

use super::webconfig::{ClientAuth, TlsServerConfig, TlsVersion, WebConfigError};

/// Builds the server configuration.
pub(crate) fn server_config(cfg: &TlsServerConfig) -> Result<Arc<ServerConfig>, WebConfigError> {
    let provider = telemetry_link::tls::provider();
    let chain = certificates(&cfg.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|source| WebConfigError::Pem {
            path: cfg.key_file.clone(),
            source,
        })?;
    let versions: &[&'static SupportedProtocolVersion] = match (cfg.min_version, cfg.max_version) {
        (TlsVersion::Tls12, TlsVersion::Tls13) => {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        }
        (TlsVersion::Tls12, TlsVersion::Tls12) => &[&rustls::version::TLS12],
        (TlsVersion::Tls13, _) => &[&rustls::version::TLS13],
    };
    let verifier = client_verifier(cfg, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let pem_err = |source| WebConfigError::Pem {
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if chain.is_empty() {
        return Err(WebConfigError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

fn client_verifier(
    cfg: &TlsServerConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    let roots = || -> Result<Arc<RootCertStore>, WebConfigError> {
        let mut roots = RootCertStore::empty();
        if let Some(path) = &cfg.client_ca_file {
            for ca in certificates(path)? {
                roots.add(ca)?;
            }
        }
        Ok(Arc::new(roots))
    };
    let webpki = || -> Result<_, WebConfigError> {
        Ok(WebPkiClientVerifier::builder_with_provider(
            roots()?,
            provider.clone(),
        ))
    };
    Ok(match cfg.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert => Arc::new(AnyClientCert::new(provider, false)),
        ClientAuth::RequireAnyClientCert => Arc::new(AnyClientCert::new(provider, true)),
        ClientAuth::VerifyClientCertIfGiven => webpki()?.allow_unauthenticated().build()?,
        ClientAuth::RequireAndVerifyClientCert => webpki()?.build()?,
    })
}

/// Accepts any client certificate whose handshake signature is valid
/// (`RequestClientCert`, `RequireAnyClientCert`): the key is proven, the
/// issuer is not checked.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl AnyClientCert {
    fn new(provider: &CryptoProvider, mandatory: bool) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
            mandatory,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
