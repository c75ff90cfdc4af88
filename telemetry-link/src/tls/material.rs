//! A node's TLS material: its files loaded and checked up front (see the
//! checks on [`TlsMaterial::load`]), and the rustls configurations built
//! from it — the receiver's requiring a client certificate with the
//! [`ClassifyingVerifier`], the sender's checking the receiver with the
//! [`PurposeServerVerifier`]. Each configuration gets fresh verifiers, so a
//! reloaded CRL applies to every handshake after the reload.

use std::{fmt, sync::Arc};

use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    sign::CertifiedKey,
    CertificateError, RootCertStore,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::{
    crl::RevocationLists,
    files::{load_certs, load_key, pem_err},
    identity::{first_san_name, identity_from_der},
    provider,
    summary::{now_unix, rfc3339},
    verify::{check_purpose, ClassifyingVerifier, FailureSink, PurposeServerVerifier},
    Role, TlsError, TlsFiles,
};
use crate::proto::message::ALPN;

/// A node's loaded, checked TLS material.
#[derive(Clone)]
pub struct TlsMaterial {
    files: TlsFiles,
    role: Role,
    roots: Arc<RootCertStore>,
    crls: Option<RevocationLists>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: String,
    not_after: i64,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("role", &self.role)
            .field("identity", &self.identity)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

/// What the leaf certificate says about itself.
struct Leaf {
    identity: String,
    not_after: i64,
    /// The name a sender would dial (first SAN), for the receiver's self-check.
    server_name: Option<String>,
}

impl TlsMaterial {
    /// Loads and checks `files` for a node playing `role`: every file
    /// readable and parseable, the key matching the certificate, the
    /// certificate inside its validity period, issued by the CA, carrying
    /// the extended key usage of `role` and not revoked by the CRL (if
    /// any); the CRL signed by the CA.
    pub fn load(files: &TlsFiles, role: Role) -> Result<Self, TlsError> {
        let ca_certs = load_certs(&files.ca)?;
        let crls = files
            .crl
            .as_deref()
            .map(|path| RevocationLists::load(path, &ca_certs))
            .transpose()?;
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots
                .add(c)
                .map_err(|e| pem_err(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let leaf = check_leaf(files, &chain[0])?;
        check_key_matches(files, &chain, &key)?;

        let material = Self {
            files: files.clone(),
            role,
            roots: Arc::new(roots),
            crls,
            chain,
            key: Arc::new(key),
            identity: leaf.identity,
            not_after: leaf.not_after,
        };
        material.check_issued_by_ca(leaf.server_name)?;
        if check_purpose(&material.chain[0], role).is_err() {
            return Err(material.missing_purpose());
        }
        if let Some(crls) = &material.crls {
            if crls.is_revoked(&material.chain[0]) {
                return Err(TlsError::Revoked {
                    path: files.cert.clone(),
                    crl: crls.path().to_path_buf(),
                });
            }
        }
        Ok(material)
    }

    fn missing_purpose(&self) -> TlsError {
        TlsError::MissingPurpose {
            path: self.files.cert.clone(),
            role: self.role.name(),
            purpose: self.role.purpose(),
        }
    }

    /// Verifies the own certificate the way the peer will (chain to the CA;
    /// for a receiver, also its first SAN as the server name).
    fn check_issued_by_ca(&self, server_name: Option<String>) -> Result<(), TlsError> {
        let leaf = &self.chain[0];
        let inter = &self.chain[1..];
        let now = UnixTime::now();
        let res = match self.role {
            Role::Sender => self
                .client_verifier()?
                .verify_client_cert(leaf, inter, now)
                .map(|_| ()),
            Role::Receiver => {
                let name = server_name.unwrap_or_else(|| self.identity.clone());
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    pem_err(
                        &self.files.cert,
                        format!("SAN {name:?} is not a valid server name"),
                    )
                })?;
                self.server_verifier()?
                    .verify_server_cert(leaf, inter, &server_name, &[], now)
                    .map(|_| ())
            }
        };
        res.map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => TlsError::WrongCa {
                path: self.files.cert.clone(),
                ca: self.files.ca.clone(),
            },
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => self.missing_purpose(),
            rustls::Error::InvalidCertificate(CertificateError::Revoked) => TlsError::Revoked {
                path: self.files.cert.clone(),
                crl: self.files.crl.clone().unwrap_or_default(),
            },
            other => TlsError::Invalid {
                path: self.files.cert.clone(),
                reason: other.to_string(),
            },
        })
    }

    /// WebPKI's client verifier for the CA and the CRLs.
    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if let Some(crls) = &self.crls {
            builder = builder.with_crls(crls.ders());
        }
        builder.build().map_err(|e| TlsError::Config(e.to_string()))
    }

    /// WebPKI's server verifier for the CA and the CRLs, plus the purpose rule.
    fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider());
        if let Some(crls) = &self.crls {
            builder = builder.with_crls(crls.ders());
        }
        let webpki = builder
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(PurposeServerVerifier::new(webpki)))
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

    /// Whether this material's CRL lists `peer_cert_der` (a peer's leaf
    /// certificate, e.g. from [`super::peer_certificate`]). False without a
    /// CRL and for a certificate that cannot be parsed. After a reload, a
    /// receiver closes the open sessions of peers this returns true for.
    pub fn is_revoked(&self, peer_cert_der: &[u8]) -> bool {
        self.crls
            .as_ref()
            .is_some_and(|crls| crls.is_revoked(peer_cert_der))
    }

    /// A rustls server configuration requiring client certificates from the
    /// CA, with clientAuth, not revoked; certificate failures are reported to
    /// `on_failure` by reason.
    pub fn server_config(&self, on_failure: FailureSink) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(ClassifyingVerifier::new(
            self.client_verifier()?,
            on_failure,
        ));
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
    /// trusting only the CA, for receiver certificates with serverAuth (not
    /// revoked, if this material has a CRL).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Parses the leaf: inside its validity period, with a usable identity.
fn check_leaf(files: &TlsFiles, leaf: &CertificateDer<'_>) -> Result<Leaf, TlsError> {
    let (_, parsed) = X509Certificate::from_der(leaf)
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
    let identity = identity_from_der(leaf).map_err(|source| TlsError::Identity {
        path: files.cert.clone(),
        source,
    })?;
    Ok(Leaf {
        identity,
        not_after,
        server_name: first_san_name(&parsed),
    })
}

fn check_key_matches(
    files: &TlsFiles,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| pem_err(&files.key, format!("unsupported private key: {e}")))?;
    if CertifiedKey::new(chain.to_vec(), signing)
        .keys_match()
        .is_err()
    {
        return Err(TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        });
    }
    Ok(())
}
