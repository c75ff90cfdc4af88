use super::*;
use telemetry_link::tls::{identity_from_der, summarize_der};

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn issued_certificates_carry_identity_names_and_purpose() {
    let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
    let s = ca.issue_sender("cluster-a", Validity::days(1)).unwrap();
    assert_eq!(identity_from_der(&der(&s.cert_pem)).unwrap(), "cluster-a");
    assert_eq!(
        summarize_der(&der(&s.cert_pem)).unwrap().purposes,
        vec!["clientAuth"]
    );
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
    assert_eq!(sum.purposes, vec!["serverAuth"]);
    assert!(!sum.is_ca);
    assert!(summarize_der(ca.cert_der()).unwrap().is_ca);
    let none = ca
        .issue_leaf(&["x".into()], &[], Validity::days(1))
        .unwrap();
    assert!(summarize_der(&der(&none.cert_pem))
        .unwrap()
        .purposes
        .is_empty());
}

#[test]
fn every_ca_has_a_name_of_its_own() {
    let a = Authority::generate("telemetry-link CA", Validity::days(10)).unwrap();
    let b = Authority::generate("telemetry-link CA", Validity::days(10)).unwrap();
    assert_ne!(a.subject(), b.subject());
    assert!(
        a.subject().starts_with("CN=telemetry-link CA "),
        "{}",
        a.subject()
    );
    let tag = a
        .subject()
        .split(',')
        .next()
        .and_then(|cn| cn.rsplit(' ').next())
        .unwrap()
        .to_owned();
    assert_eq!(tag.len(), 8);
    assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
}

#[test]
fn windows_that_are_over_are_refused_unless_asked_for() {
    let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
    let err = ca.issue_sender("a", Validity::days(0)).unwrap_err();
    assert!(matches!(err, CertError::Window { .. }), "{err}");
    assert!(err.to_string().contains("already over"), "{err}");
    assert!(Authority::generate("test CA", Validity::days(0)).is_err());
    assert!(ca.issue_receiver(&["r".into()], Validity::days(0)).is_err());
    // An empty window is refused even on request.
    assert!(ca.issue_sender("a", Validity::relative(60, 60)).is_err());
    // Tests ask for expired and future certificates explicitly.
    assert!(ca
        .issue_sender("a", Validity::relative(-7200, -3600))
        .is_ok());
    assert!(ca.issue_sender("a", Validity::relative(3600, 7200)).is_ok());
    // Huge windows saturate instead of overflowing.
    assert!(ca.issue_sender("a", Validity::days(u32::MAX)).is_ok());
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
fn ca_roundtrips_through_pem_and_refuses_a_foreign_key() {
    let ca = Authority::generate("test CA", Validity::days(10)).unwrap();
    let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let s = again.issue_sender("later", Validity::days(1)).unwrap();
    assert_eq!(identity_from_der(&der(&s.cert_pem)).unwrap(), "later");
    assert!(telemetry_link::tls::issued_by(
        &der(&s.cert_pem),
        ca.cert_der()
    ));
    let other = Authority::generate("test CA", Validity::days(10)).unwrap();
    assert!(matches!(
        Authority::from_pem(ca.cert_pem(), other.key_pem()),
        Err(CertError::CaKeyMismatch)
    ));
    assert!(matches!(
        Authority::from_pem("junk", ca.key_pem()),
        Err(CertError::Pem { .. })
    ));
}
