//! `telemetry-certs` as a real process: the files it writes and where (the
//! CA key apart), their modes, refusing to overwrite, adding a sender later,
//! revoking, refusing empty validity windows, and `inspect`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

fn certs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_telemetry-certs"))
        .args(args)
        .output()
        .expect("telemetry-certs runs")
}

fn ok(args: &[&str]) -> String {
    let o = certs(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = certs(args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

/// `inspect`'s value for `field` (the first line starting with it).
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in {text}"))
        .trim()
        .to_owned()
}

#[test]
fn init_writes_a_ca_a_crl_a_receiver_and_senders_with_the_ca_key_apart() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    let o = out.to_str().unwrap();
    let text = ok(&[
        "init",
        "--out",
        o,
        "--receiver-name",
        "recv.lan",
        "--receiver-name",
        "192.168.1.50",
        "--sender",
        "lab",
        "--sender",
        "edge-1",
        "--days",
        "30",
    ]);
    assert!(text.contains("private/ca.key"), "{text}");
    for f in [
        "ca.pem",
        "crl.pem",
        "private/ca.key",
        "receiver.pem",
        "receiver.key",
        "sender-lab.pem",
        "sender-lab.key",
        "sender-edge-1.pem",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(!out.join("ca.key").exists(), "the CA key is not handed out");
    for key in [
        "private/ca.key",
        "receiver.key",
        "sender-lab.key",
        "sender-edge-1.key",
    ] {
        assert_eq!(mode(&out.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&out.join("crl.pem")), 0o644);
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("private")), 0o700);

    // inspect shows identity, names, purposes and validity
    let text = ok(&["inspect", s(&out.join("receiver.pem"))]);
    assert!(
        text.contains("DNS:recv.lan") && text.contains("IP:192.168.1.50"),
        "{text}"
    );
    assert!(text.contains("status:     valid"), "{text}");
    assert_eq!(field(&text, "purposes:"), "serverAuth");
    let text = ok(&["inspect", s(&out.join("sender-lab.pem"))]);
    assert!(text.contains("identity:   lab"));
    assert_eq!(field(&text, "purposes:"), "clientAuth");
    let text = ok(&["inspect", s(&out.join("crl.pem"))]);
    assert_eq!(field(&text, "CRL number:"), "1");
    assert_eq!(field(&text, "revoked:"), "0");

    // never overwrite without --force
    let err = fails(&["init", "--out", o]);
    assert!(err.contains("already exists (use --force"), "{err}");
    let before = std::fs::read(out.join("ca.pem")).unwrap();
    ok(&["init", "--out", o, "--force"]);
    assert_ne!(
        before,
        std::fs::read(out.join("ca.pem")).unwrap(),
        "--force made a new CA"
    );

    // a sender added later from the existing CA, its key found in private/
    ok(&["issue-sender", "--ca-dir", o, "late"]);
    assert_eq!(mode(&out.join("sender-late.key")), 0o600);
    let text = ok(&["inspect", s(&out.join("sender-late.pem"))]);
    let ca = ok(&["inspect", s(&out.join("ca.pem"))]);
    assert!(text.contains("identity:   late"), "{text}");
    assert_eq!(field(&text, "issuer:"), field(&ca, "subject:"));
    fails(&["issue-sender", "--ca-dir", o, "late"]);
}

#[test]
fn every_ca_gets_a_name_of_its_own() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&["init", "--out", s(&a)]);
    ok(&["init", "--out", s(&b)]);
    let name = |dir: &Path| field(&ok(&["inspect", s(&dir.join("ca.pem"))]), "subject:");
    let (na, nb) = (name(&a), name(&b));
    assert_ne!(na, nb);
    assert!(na.starts_with("CN=telemetry-link CA "), "{na}");
}

#[test]
fn the_ca_key_can_live_elsewhere_and_the_old_layout_still_works() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    let keys = d.path().join("usb/telemetry-ca");
    ok(&["init", "--out", s(&out), "--ca-key-dir", s(&keys)]);
    assert_eq!(mode(&keys.join("ca.key")), 0o600);
    assert_eq!(mode(&keys), 0o700);
    assert!(!out.join("private").exists() && !out.join("ca.key").exists());

    let err = fails(&["issue-sender", "--ca-dir", s(&out), "x"]);
    assert!(err.contains("private/ca.key"), "{err}");
    ok(&[
        "issue-sender",
        "--ca-dir",
        s(&out),
        "--ca-key-dir",
        s(&keys),
        "x",
    ]);

    // ca.key beside the certificates: used, with a warning to move it
    std::fs::rename(keys.join("ca.key"), out.join("ca.key")).unwrap();
    let o = certs(&["issue-sender", "--ca-dir", s(&out), "y"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let warning = String::from_utf8_lossy(&o.stderr);
    assert!(
        warning.contains("warning") && warning.contains("move it"),
        "{warning}"
    );
}

#[test]
fn revoke_lists_a_sender_once_and_numbers_every_change() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    let o = s(&out);
    ok(&["init", "--out", o, "--sender", "a", "--sender", "b"]);
    let crl = out.join("crl.pem");
    std::fs::remove_file(&crl).unwrap(); // revoke creates it when absent

    let text = ok(&["revoke", "--ca-dir", o, s(&out.join("sender-a.pem"))]);
    assert!(text.contains("revoked serial"), "{text}");
    assert_eq!(mode(&crl), 0o644);
    let serial_a = field(&ok(&["inspect", s(&out.join("sender-a.pem"))]), "serial:");
    let listed = ok(&["inspect", s(&crl)]);
    assert_eq!(field(&listed, "CRL number:"), "1");
    assert_eq!(field(&listed, "revoked:"), "1");
    assert!(listed.contains(&format!("serial {serial_a}")), "{listed}");
    assert!(!field(&listed, "CRL issuer:").is_empty());

    // idempotent: the file is left alone
    let before = std::fs::read(&crl).unwrap();
    let text = ok(&["revoke", "--ca-dir", o, s(&out.join("sender-a.pem"))]);
    assert!(text.contains("already revoked"), "{text}");
    assert_eq!(before, std::fs::read(&crl).unwrap());

    ok(&[
        "revoke",
        "--ca-dir",
        o,
        "--reason",
        "key-compromise",
        s(&out.join("sender-b.pem")),
    ]);
    let listed = ok(&["inspect", s(&crl)]);
    assert_eq!(field(&listed, "CRL number:"), "2");
    assert_eq!(field(&listed, "revoked:"), "2");
    assert!(listed.contains("reason key-compromise"), "{listed}");

    ok(&["refresh-crl", "--ca-dir", o]);
    let listed = ok(&["inspect", s(&crl)]);
    assert_eq!(field(&listed, "CRL number:"), "3");
    assert_eq!(field(&listed, "revoked:"), "2");

    // a certificate from another CA is not this CA's to revoke
    let other = d.path().join("other");
    ok(&["init", "--out", s(&other), "--sender", "a"]);
    let err = fails(&["revoke", "--ca-dir", o, s(&other.join("sender-a.pem"))]);
    assert!(err.contains("not issued by this CA"), "{err}");
    // nor is another CA's CRL this CA's to extend
    std::fs::copy(other.join("crl.pem"), &crl).unwrap();
    let err = fails(&["revoke", "--ca-dir", o, s(&out.join("sender-a.pem"))]);
    assert!(err.contains("not signed by a CA"), "{err}");
}

#[test]
fn zero_days_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("c");
    let err = fails(&["init", "--out", s(&out), "--days", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    assert!(!out.exists());
    ok(&["init", "--out", s(&out)]);
    let err = fails(&["issue-sender", "--ca-dir", s(&out), "--days", "0", "x"]);
    assert!(err.contains("at least 1"), "{err}");
    assert!(!out.join("sender-x.pem").exists());
    let err = fails(&["init", "--out", s(&out), "--days", "99999999", "--force"]);
    assert!(err.contains("at most 36500"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("c");
    let err = fails(&["init", "--out", s(&out), "--sender", "bad/id"]);
    assert!(err.contains("bad/id"), "{err}");
    let err = fails(&["init", "--out", s(&out), "--receiver-name", "not a name"]);
    assert!(err.contains("not a name"), "{err}");
    let err = fails(&[
        "issue-sender",
        "--ca-dir",
        s(&d.path().join("nowhere")),
        "x",
    ]);
    assert!(err.contains("ca.pem"), "{err}");
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let err = fails(&["inspect", s(&junk)]);
    assert!(err.contains("junk.pem"), "{err}");
}
