//! Command lines of the workspace's binaries for tests and benches that run
//! them as real processes: certificates made by `telemetry-certs init`, and
//! the flags that point a receiver or a sender at its addresses,
//! certificates and directory. Callers add their own flags.

use std::{ffi::OsStr, net::SocketAddr, path::Path, process::Command};

use anyhow::{ensure, Result};
use telemetry_certs::files;
use telemetry_link::TlsFiles;

use crate::process::workspace_binary;

/// `telemetry-certs init --out dir --sender ID...` (receiver names
/// `localhost` and `127.0.0.1`).
pub fn certs_init(dir: &Path, senders: &[&str]) -> Result<()> {
    let mut cmd = Command::new(workspace_binary("telemetry-certs")?);
    cmd.args(["init", "--out"]).arg(dir);
    for s in senders {
        cmd.args(["--sender", s]);
    }
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "telemetry-certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The receiver's files in a directory made by [`certs_init`].
pub fn receiver_tls(dir: &Path) -> TlsFiles {
    TlsFiles::new(
        dir.join(files::CA_CERT),
        dir.join(files::RECEIVER_CERT),
        dir.join(files::RECEIVER_KEY),
    )
}

/// Sender `id`'s files in a directory made by [`certs_init`].
pub fn sender_tls(dir: &Path, id: &str) -> TlsFiles {
    TlsFiles::new(
        dir.join(files::CA_CERT),
        dir.join(files::sender_cert(id)),
        dir.join(files::sender_key(id)),
    )
}

fn tls_args(cmd: &mut Command, tls: &TlsFiles) {
    cmd.arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key);
}

/// `telemetry-receiver` (at `bin`) listening on `quic` and `metrics`.
pub fn receiver_command(
    bin: impl AsRef<OsStr>,
    quic: SocketAddr,
    metrics: SocketAddr,
    tls: &TlsFiles,
    state: &Path,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(quic.to_string())
        .arg("--metrics-listen")
        .arg(metrics.to_string());
    tls_args(&mut cmd, tls);
    cmd.arg("--state-dir").arg(state);
    cmd
}

/// `telemetry-sender` (at `bin`) shipping to `receiver` (certificate name
/// `localhost`), its own endpoint on `metrics`.
pub fn sender_command(
    bin: impl AsRef<OsStr>,
    receiver: SocketAddr,
    tls: &TlsFiles,
    spool: &Path,
    metrics: SocketAddr,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--receiver")
        .arg(receiver.to_string())
        .args(["--server-name", "localhost"]);
    tls_args(&mut cmd, tls);
    cmd.arg("--spool-dir")
        .arg(spool)
        .arg("--metrics-listen")
        .arg(metrics.to_string());
    cmd
}
