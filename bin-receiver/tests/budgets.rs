//! The receiver as a real process, for what an operator of a shared
//! receiver relies on: its files are private from a fresh start under the
//! usual umask; a sender over its budget is refused (counted on both ends,
//! logged at a bounded rate) while the rest of its stream is applied and
//! nothing stalls; and what an idle connection costs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::too_many_lines)] // a process test reads top to bottom as one scenario

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use telemetry_test_support::{
    binaries::{certs_init, sender_tls},
    prom::scrape,
    raw,
    running::{start_certs_receiver, start_certs_sender, wait_metrics},
};

/// Sets the process's umask (inherited by the children it starts).
#[allow(unsafe_code)] // one libc call; its SAFETY argument beside it
fn set_umask(mask: libc::mode_t) {
    // SAFETY: umask only swaps the process's file mode creation mask; it
    // cannot fail and touches no memory.
    unsafe {
        libc::umask(mask);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every directory and file under `dir` (itself included), with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = vec![(dir.to_path_buf(), mode(dir))];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path.clone(), mode(&path)));
        }
    }
    out
}

#[test]
fn state_and_queue_files_are_private_from_a_fresh_start() -> Result<()> {
    set_umask(0o022);
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["perm"])?;
    // Neither the state directory nor its parent exists yet.
    let state = dir.path().join("new").join("state");
    let mut rx = start_certs_receiver(
        &certs,
        &state,
        &["--remote-write", "http://127.0.0.1:9/api/v1/write"],
    )?;
    let (mut tx, _) = start_certs_sender(
        &certs,
        "perm",
        rx.quic,
        &dir.path().join("spool"),
        &[
            "--source",
            "synthetic",
            "--synthetic-series",
            "2",
            "--synthetic-rate",
            "0",
            "--synthetic-total",
            "50",
        ],
    )?;
    wait_metrics(rx.metrics, "all 50 records applied", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "perm")]) == Some(50.0)
    })?;
    assert!(tx.terminate(Duration::from_secs(20))?.success());
    assert!(rx.proc.terminate(Duration::from_secs(20))?.success());

    assert_eq!(mode(&state), 0o700, "the state directory");
    for file in ["positions.journal", "positions.snapshot", "reset.key"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    // The queues' directories are private, so nobody else reaches their
    // files (which the spool creates with the umask's mode).
    let queues = state.join("remote-write");
    let all = modes(&queues);
    assert!(
        all.iter().filter(|(p, _)| p.is_file()).count() >= 2,
        "the queue has files: {all:?}"
    );
    let dirs: Vec<_> = all.iter().filter(|(path, _)| path.is_dir()).collect();
    assert!(
        dirs.len() >= 3,
        "remote-write, the endpoint's, its queue: {dirs:?}"
    );
    let open: Vec<_> = dirs.iter().filter(|(_, mode)| *mode != 0o700).collect();
    assert!(
        open.is_empty(),
        "queue directories open to others: {open:?}"
    );
    Ok(())
}

#[test]
fn a_sender_over_its_budget_is_refused_on_both_ends_and_the_rest_is_applied() -> Result<()> {
    const TOTAL: u64 = 2_000;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["big"])?;
    let audit = dir.path().join("audit.log");
    let mut rx = start_certs_receiver(
        &certs,
        &dir.path().join("state"),
        &[
            "--budget-series",
            "5",
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    )?;
    let (mut tx, tx_metrics) = start_certs_sender(
        &certs,
        "big",
        rx.quic,
        &dir.path().join("spool"),
        &[
            "--source",
            "synthetic",
            "--synthetic-series",
            "20",
            "--synthetic-rate",
            "2000",
            "--synthetic-total",
            &TOTAL.to_string(),
        ],
    )?;
    // Nothing stalls: every record is settled, applied or refused.
    let tx_end = wait_metrics(tx_metrics, "every record acknowledged", |e| {
        e.value("telemetry_sender_acked_seq", &[]) == Some(TOTAL as f64)
    })?;
    let rx_end = scrape(rx.metrics)?;
    let refused_tx = tx_end
        .value(
            "telemetry_sender_records_refused_total",
            &[("reason", "budget")],
        )
        .unwrap();
    let id = [("sender", "big")];
    let budget = [("sender", "big"), ("reason", "budget")];
    let rejected = rx_end.sum("telemetry_link_records_rejected_total", &budget);
    let in_presents = rx_end.sum("telemetry_link_present_records_rejected_total", &budget);
    let received = rx_end.sum("telemetry_link_records_received_total", &id);
    // Value v goes to series v mod 20; series 1..=5 are admitted first.
    assert_eq!(
        refused_tx,
        (TOTAL * 15 / 20) as f64,
        "refused as the sender counts"
    );
    assert_eq!(rejected - in_presents, refused_tx, "both ends agree");
    assert_eq!(
        received + refused_tx,
        TOTAL as f64,
        "applied + refused = sent"
    );
    assert_eq!(
        rx_end.count("telemetry_synthetic_value", &[("cluster", "big")]),
        5
    );
    assert_eq!(
        rx_end.value(
            "telemetry_receiver_sender_budget_used",
            &[("cluster", "big"), ("budget", "sample_series")]
        ),
        Some(5.0)
    );
    // The audit log says the same, delivery by delivery.
    let text = std::fs::read_to_string(&audit)?;
    let (mut handed, mut refused) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
        handed += f[2];
        refused += f.get(3).copied().unwrap_or(0);
    }
    assert_eq!((handed, refused as f64), (TOTAL, refused_tx));
    // Logged at a bounded rate: the first refusal, not one line per record.
    let logged = rx
        .proc
        .output()
        .lines()
        .filter(|l| l.contains("refusing records") && l.contains("budget"))
        .count();
    assert_eq!(logged, 1, "{}", rx.proc.output());
    assert!(tx.terminate(Duration::from_secs(20))?.success());
    assert!(rx.proc.terminate(Duration::from_secs(20))?.success());
    Ok(())
}

/// An established session of replica `replica`: the connection and its
/// backlog stream, welcomed.
async fn session(
    ep: &quinn::Endpoint,
    ca: &Path,
    tls: &telemetry_link::TlsFiles,
    addr: SocketAddr,
    replica: &str,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    use telemetry_link::proto::message::{Hello, Message, PROTOCOL_VERSION};
    let conn = raw::connect(ep, raw::client_config(ca, Some(tls))?, addr, "localhost").await?;
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        stream_id: 7,
        last_seq: 0,
        max_frame: 1 << 20,
        replica: replica.to_owned(),
    });
    let (send, mut recv) = raw::open_and_write(&conn, &raw::frame(&hello)).await?;
    match Message::decode(&raw::read_frame(&mut recv).await?)? {
        Message::Welcome(_) => Ok((conn, send, recv)),
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    }
}

#[test]
fn an_idle_connection_costs_tens_of_kilobytes() -> Result<()> {
    const CONNECTIONS: usize = 100;
    telemetry_test_support::init();
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["idle"])?;
    let mut rx = start_certs_receiver(&certs, &dir.path().join("state"), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let tls = sender_tls(&certs, "idle");
    let ca = certs.join("ca.pem");
    // Warm up: the first session allocates what every later one reuses.
    let warm = rt.block_on(async {
        let ep = raw::client_endpoint()?;
        let conn = session(&ep, &ca, &tls, rx.quic, "warm").await?;
        anyhow::Ok((ep, conn))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rx.proc.rss_kib()?;
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..CONNECTIONS {
            let ep = raw::client_endpoint()?;
            // Each its own replica, so none supersedes another.
            let conn = session(&ep, &ca, &tls, rx.quic, &format!("r{i}")).await?;
            held.push((ep, conn));
        }
        anyhow::Ok(held)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rx.proc.rss_kib()?;
    let per_connection = (after.saturating_sub(before)) as f64 / CONNECTIONS as f64;
    eprintln!("{CONNECTIONS} idle connections: receiver RSS {before} KiB -> {after} KiB, {per_connection:.0} KiB each");
    assert!(
        per_connection < 200.0,
        "an idle connection costs {per_connection:.0} KiB"
    );
    drop((held, warm));
    assert!(rx.proc.terminate(Duration::from_secs(20))?.success());
    Ok(())
}
