//! `telemetry-certs` as a real process: the files it writes, their modes,
//! refusing to overwrite, adding a sender later, and `inspect`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

fn certs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_telemetry-certs"))
        .args(args)
        .output()
        .expect("telemetry-certs runs")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_writes_a_ca_a_receiver_and_senders_with_private_keys() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    let o = certs(&[
        "init",
        "--out",
        out.to_str().unwrap(),
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "ca.pem",
        "ca.key",
        "receiver.pem",
        "receiver.key",
        "sender-lab.pem",
        "sender-lab.key",
        "sender-edge-1.pem",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    for key in [
        "ca.key",
        "receiver.key",
        "sender-lab.key",
        "sender-edge-1.key",
    ] {
        assert_eq!(mode(&out.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&out), 0o700);

    // inspect shows identity, names and validity
    let o = certs(&["inspect", out.join("receiver.pem").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("DNS:recv.lan") && text.contains("IP:192.168.1.50"),
        "{text}"
    );
    assert!(text.contains("status:     valid"), "{text}");
    let o = certs(&["inspect", out.join("sender-lab.pem").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("identity:   lab"));

    // never overwrite without --force
    let o = certs(&["init", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists (use --force"));
    let before = std::fs::read(out.join("ca.pem")).unwrap();
    assert_eq!(before, std::fs::read(out.join("ca.pem")).unwrap());
    let o = certs(&["init", "--out", out.to_str().unwrap(), "--force"]);
    assert!(o.status.success());
    assert_ne!(
        before,
        std::fs::read(out.join("ca.pem")).unwrap(),
        "--force made a new CA"
    );

    // a sender added later from the existing CA
    let o = certs(&["issue-sender", "--ca-dir", out.to_str().unwrap(), "late"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&out.join("sender-late.key")), 0o600);
    let o = certs(&["inspect", out.join("sender-late.pem").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("identity:   late") && text.contains("issuer:     CN=telemetry-link CA"),
        "{text}"
    );
    let o = certs(&["issue-sender", "--ca-dir", out.to_str().unwrap(), "late"]);
    assert!(
        !o.status.success(),
        "no silent overwrite of an existing sender"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("c");
    let o = certs(&["init", "--out", out.to_str().unwrap(), "--sender", "bad/id"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad/id"));
    let o = certs(&[
        "init",
        "--out",
        out.to_str().unwrap(),
        "--receiver-name",
        "not a name",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a name"));
    let o = certs(&[
        "issue-sender",
        "--ca-dir",
        d.path().join("nowhere").to_str().unwrap(),
        "x",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ca.pem"));
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let o = certs(&["inspect", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("junk.pem"));
}
