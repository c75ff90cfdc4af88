//! Loading a node's own material: purposes, CRL checks, revocation lookups
//! and reloads, on certificates from `telemetry-certs` in a temp directory.

use std::path::{Path, PathBuf};

use rustls::pki_types::{pem::PemObject, CertificateDer};
use telemetry_certs::{crl::Revocations, files, Authority, Issued, Purpose, Validity};

use super::*;

struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
    crl: Revocations,
}

impl Pki {
    fn new() -> Self {
        install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("unit CA", Validity::days(10)).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let mut pki = Self {
            dir,
            ca,
            crl: Revocations::new(),
        };
        pki.sign_crl();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sign_crl(&mut self) {
        let pem = self.crl.sign(&self.ca).unwrap();
        files::write_file(&self.path("crl.pem"), &pem, 0o644).unwrap();
    }

    fn write(&self, name: &str, issued: &Issued) -> TlsFiles {
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        TlsFiles::new(self.path("ca.pem"), cert, key)
    }

    fn sender(&self, id: &str) -> TlsFiles {
        self.write(id, &self.ca.issue_sender(id, Validity::days(1)).unwrap())
    }

    fn receiver(&self) -> TlsFiles {
        let issued = self
            .ca
            .issue_receiver(&["localhost".into()], Validity::days(1))
            .unwrap();
        self.write("receiver", &issued)
    }

    fn leaf(&self, name: &str, purposes: &[Purpose]) -> TlsFiles {
        let issued = self
            .ca
            .issue_leaf(&[name.into()], purposes, Validity::days(1))
            .unwrap();
        self.write(name, &issued)
    }

    fn revoke(&mut self, files: &TlsFiles) {
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        self.crl
            .revoke(
                &self.ca,
                &pem,
                "cert",
                telemetry_certs::crl::Reason::Superseded,
            )
            .unwrap();
        self.sign_crl();
    }
}

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[test]
fn own_certificates_need_the_purpose_of_their_role() {
    let pki = Pki::new();
    assert!(TlsMaterial::load(&pki.sender("s"), Role::Sender).is_ok());
    assert!(TlsMaterial::load(&pki.receiver(), Role::Receiver).is_ok());
    for (files, role, purpose) in [
        (pki.leaf("no-eku", &[]), Role::Sender, "clientAuth"),
        (
            pki.leaf("server-only", &[Purpose::ServerAuth]),
            Role::Sender,
            "clientAuth",
        ),
        (pki.leaf("localhost", &[]), Role::Receiver, "serverAuth"),
        (pki.sender("client-only"), Role::Receiver, "serverAuth"),
    ] {
        let err = TlsMaterial::load(&files, role).unwrap_err();
        assert!(matches!(err, TlsError::MissingPurpose { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&files.cert.display().to_string()), "{text}");
        assert!(text.contains(purpose), "{text}");
    }
    // Both purposes serve both roles.
    let both = pki.leaf("localhost", &[Purpose::ClientAuth, Purpose::ServerAuth]);
    assert!(TlsMaterial::load(&both, Role::Sender).is_ok());
    assert!(TlsMaterial::load(&both, Role::Receiver).is_ok());
}

#[test]
fn the_crl_must_come_from_the_ca_and_cover_every_ca() {
    let pki = Pki::new();
    let good = pki.receiver().with_crl(pki.path("crl.pem"));
    assert!(TlsMaterial::load(&good, Role::Receiver).is_ok());

    let other = Authority::generate("unit CA", Validity::days(10)).unwrap();
    let foreign = Revocations::new().sign(&other).unwrap();
    std::fs::write(pki.path("foreign-crl.pem"), &foreign).unwrap();
    let err = TlsMaterial::load(
        &pki.receiver().with_crl(pki.path("foreign-crl.pem")),
        Role::Receiver,
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            TlsError::Crl {
                problem: CrlError::NotSignedByCa { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("foreign-crl.pem"), "{err}");

    // Two CAs, a CRL from one of them only.
    let two = format!("{}{}", pki.ca.cert_pem(), other.cert_pem());
    std::fs::write(pki.path("two-cas.pem"), two).unwrap();
    let mut files = pki.receiver().with_crl(pki.path("crl.pem"));
    files.ca = pki.path("two-cas.pem");
    let err = TlsMaterial::load(&files, Role::Receiver).unwrap_err();
    assert!(
        matches!(
            &err,
            TlsError::Crl {
                problem: CrlError::MissingForCa { .. },
                ..
            }
        ),
        "{err}"
    );
    // ... and from both.
    let both = format!(
        "{}{foreign}",
        std::fs::read_to_string(pki.path("crl.pem")).unwrap()
    );
    std::fs::write(pki.path("both-crls.pem"), both).unwrap();
    files.crl = Some(pki.path("both-crls.pem"));
    assert!(TlsMaterial::load(&files, Role::Receiver).is_ok());

    std::fs::write(pki.path("empty.pem"), "nothing here").unwrap();
    let err = TlsMaterial::load(
        &pki.receiver().with_crl(pki.path("empty.pem")),
        Role::Receiver,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no X509 CRL block"), "{err}");
}

#[test]
fn revoked_certificates_are_recognised_and_refused_as_own() {
    let mut pki = Pki::new();
    let bad = pki.sender("bad");
    let fine = pki.sender("fine");
    pki.revoke(&bad);
    let receiver = TlsMaterial::load(
        &pki.receiver().with_crl(pki.path("crl.pem")),
        Role::Receiver,
    )
    .unwrap();
    assert!(receiver.is_revoked(&der(&bad.cert)));
    assert!(!receiver.is_revoked(&der(&fine.cert)));
    assert!(!receiver.is_revoked(b"junk"));
    let other = Authority::generate("unit CA", Validity::days(10)).unwrap();
    let foreign = pki.write(
        "foreign",
        &other.issue_sender("bad", Validity::days(1)).unwrap(),
    );
    assert!(!receiver.is_revoked(&der(&foreign.cert)));
    let without_crl = TlsMaterial::load(&pki.receiver(), Role::Receiver).unwrap();
    assert!(!without_crl.is_revoked(&der(&bad.cert)));

    let err =
        TlsMaterial::load(&bad.clone().with_crl(pki.path("crl.pem")), Role::Sender).unwrap_err();
    assert!(matches!(err, TlsError::Revoked { .. }), "{err}");
}

#[test]
fn a_changed_crl_is_reloaded() {
    let mut pki = Pki::new();
    let later = pki.sender("later");
    let mut tls = ReloadableTls::load(
        &pki.receiver().with_crl(pki.path("crl.pem")),
        Role::Receiver,
    )
    .unwrap();
    assert!(matches!(tls.poll(false), Reload::Unchanged));
    assert!(!tls.current().is_revoked(&der(&later.cert)));
    pki.revoke(&later);
    assert!(matches!(tls.poll(false), Reload::Reloaded));
    assert!(tls.current().is_revoked(&der(&later.cert)));

    // A broken CRL keeps the previous material.
    std::fs::write(pki.path("crl.pem"), "broken").unwrap();
    assert!(matches!(
        tls.poll(false),
        Reload::Failed(TlsError::Pem { .. })
    ));
    assert!(tls.current().is_revoked(&der(&later.cert)));
}

#[test]
fn a_crl_past_its_next_update_still_applies() {
    let mut pki = Pki::new();
    let bad = pki.sender("bad");
    let fine = pki.sender("fine");
    let pem = std::fs::read_to_string(&bad.cert).unwrap();
    pki.crl
        .revoke(
            &pki.ca,
            &pem,
            "bad",
            telemetry_certs::crl::Reason::KeyCompromise,
        )
        .unwrap();
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    let stale = pki.crl.sign_at(&pki.ca, long_ago).unwrap();
    std::fs::write(pki.path("stale.pem"), stale).unwrap();
    let next = summarize_crl_der(
        &rustls::pki_types::CertificateRevocationListDer::from_pem_file(pki.path("stale.pem"))
            .unwrap(),
    )
    .unwrap()
    .next_update
    .unwrap();
    assert!(
        next < summary::now_unix(),
        "the list is past its next update"
    );

    let receiver = TlsMaterial::load(
        &pki.receiver().with_crl(pki.path("stale.pem")),
        Role::Receiver,
    )
    .unwrap();
    assert!(receiver.is_revoked(&der(&bad.cert)));
    // WebPKI checks senders against it without refusing the stale list.
    assert!(TlsMaterial::load(&fine.with_crl(pki.path("stale.pem")), Role::Sender).is_ok());
    let err = TlsMaterial::load(&bad.with_crl(pki.path("stale.pem")), Role::Sender).unwrap_err();
    assert!(matches!(err, TlsError::Revoked { .. }), "{err}");
}
