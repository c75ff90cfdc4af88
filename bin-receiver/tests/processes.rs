//! The binaries as real processes over 127.0.0.1, with certificates made by
//! `telemetry-certs`: series appear and pass `promtool check metrics`; a
//! stopped sender's series go after the TTL; refusals are counted; bad
//! certificate files are clear startup errors; certificates rotate without a
//! restart; SIGTERM persists state and exits 0; remote write fills a
//! receiver outage in a real Prometheus.

#![allow(clippy::too_many_lines)] // a process test reads top to bottom as one scenario

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};
use telemetry_certs::Validity;
use telemetry_test_support::{
    binaries::certs_init,
    http::{get, wait_for},
    pki::TestPki,
    process::{free_tcp_port, free_udp_port, ChildProcess},
    prom::{promtool_check, scrape, Exposition},
    prometheus_server::{value_of, PrometheusServer},
    raw,
    running::{
        start_certs_receiver, start_certs_receiver_at, start_certs_sender, wait_metrics,
        PROCESS_LIMIT as LIMIT,
    },
};

fn receiver_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_telemetry-receiver"))
}

#[test]
fn simulated_cluster_series_appear_and_pass_promtool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["lab"])?;
    let rx = start_certs_receiver(&certs, &dir.path().join("state"), &[])?;
    let (mut tx, tx_metrics) = start_certs_sender(
        &certs,
        "lab",
        rx.quic,
        &dir.path().join("spool"),
        &["--source", "simulated"],
    )?;
    let e = wait_metrics(rx.metrics, "simulated pods, HPA and usage", |e| {
        e.count("kube_pod_info", &[("cluster", "lab")]) > 0
            && e.count("kube_pod_container_cpu_usage_cores", &[("cluster", "lab")]) > 0
            && e.value(
                "kube_horizontalpodautoscaler_spec_max_replicas",
                &[("cluster", "lab")],
            ) == Some(8.0)
    })?;
    // Every pod has exactly one phase at 1 among five.
    for info in e.find("kube_pod_info", &[("cluster", "lab")]) {
        let pod = &info.labels["pod"];
        let want = [("cluster", "lab"), ("pod", pod.as_str())];
        let phases: Vec<_> = e.find("kube_pod_status_phase", &want).collect();
        assert_eq!(phases.len(), 5, "{pod}");
        assert_eq!(phases.iter().filter(|p| p.value == 1.0).count(), 1, "{pod}");
        assert_eq!(info.labels["created_by_kind"], "ReplicaSet");
    }
    assert_eq!(
        e.value(
            "kube_horizontalpodautoscaler_spec_min_replicas",
            &[("cluster", "lab")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "kube_horizontalpodautoscaler_spec_target_metric",
            &[
                ("cluster", "lab"),
                ("metric_name", "cpu"),
                ("metric_target_type", "utilization")
            ]
        ),
        Some(50.0)
    );
    assert!(
        e.count(
            "kube_pod_container_resource_requests",
            &[("resource", "cpu"), ("unit", "core")]
        ) > 0
    );
    assert_eq!(
        e.value("telemetry_link_sender_up", &[("cluster", "lab")]),
        Some(1.0)
    );
    assert_eq!(e.value("telemetry_link_senders_connected", &[]), Some(1.0));

    let body = get(rx.metrics, "/metrics", &[])?.body;
    match promtool_check(&body) {
        Some(r) => r.map_err(|e| anyhow::anyhow!(e))?,
        None => ensure!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI"
        ),
    }
    let om = get(
        rx.metrics,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )?;
    assert!(om
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));
    assert!(om
        .body
        .contains("# TYPE kube_horizontalpodautoscaler_scale_events counter"));
    assert_eq!(get(rx.metrics, "/healthz", &[])?.status, 200);

    // The sender's own endpoint.
    let s = scrape(tx_metrics)?;
    assert_eq!(s.value("telemetry_sender_connected", &[]), Some(1.0));
    assert_eq!(get(tx_metrics, "/readyz", &[])?.status, 200);
    assert!(
        tx.terminate(Duration::from_secs(20))?.success(),
        "sender exits 0 on SIGTERM"
    );
    Ok(())
}

#[test]
fn a_sender_gone_past_the_ttl_loses_its_series_and_sigterm_persists_state() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["short"])?;
    let state = dir.path().join("state");
    let mut rx = start_certs_receiver(&certs, &state, &["--sender-ttl", "2s"])?;
    let (mut tx, _) = start_certs_sender(
        &certs,
        "short",
        rx.quic,
        &dir.path().join("spool"),
        &[
            "--source",
            "synthetic",
            "--synthetic-series",
            "3",
            "--synthetic-rate",
            "300",
            "--synthetic-total",
            "600",
        ],
    )?;
    wait_metrics(rx.metrics, "all 600 synthetic records applied", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "short")]) == Some(600.0)
    })?;
    let e = scrape(rx.metrics)?;
    assert_eq!(
        e.count("telemetry_synthetic_value", &[("cluster", "short")]),
        3
    );
    assert_eq!(
        e.value(
            "telemetry_synthetic_value",
            &[("cluster", "short"), ("series", "0")]
        ),
        Some(600.0)
    );
    assert!(tx.terminate(Duration::from_secs(20))?.success());
    wait_metrics(rx.metrics, "series removed after the TTL", |e| {
        e.value("telemetry_link_sender_up", &[("cluster", "short")]) == Some(0.0)
            && e.count("telemetry_synthetic_value", &[("cluster", "short")]) == 0
    })?;
    // SIGTERM: exit 0 with the applied position persisted.
    assert!(
        rx.proc.terminate(Duration::from_secs(20))?.success(),
        "receiver exits 0 on SIGTERM"
    );
    let files: Vec<_> = std::fs::read_dir(&state)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy() == "positions.journal"),
        "{files:?}"
    );
    // A restarted receiver resumes at 600: a new sender stream would start at 1,
    // the same one continues — checked through the metric it exposes at start.
    let rx2 = start_certs_receiver(&certs, &state, &[])?;
    let e = scrape(rx2.metrics)?;
    assert_eq!(
        e.value("telemetry_link_applied_seq", &[("sender", "short")]),
        Some(600.0)
    );
    Ok(())
}

#[test]
fn a_sender_says_it_spools_while_the_receiver_is_down_and_what_it_delivered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["quiet"])?;
    // Nothing listens at the receiver's address yet.
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let synthetic = [
        "--source",
        "synthetic",
        "--synthetic-series",
        "2",
        "--synthetic-rate",
        "100",
    ];
    let spool = dir.path().join("spool");
    let first_run = [&synthetic[..], &["--synthetic-total", "300"]].concat();
    let (mut tx, _) = start_certs_sender(&certs, "quiet", quic, &spool, &first_run)?;
    wait_for(LIMIT, "the sender's spooling message", || {
        Ok(tx
            .output()
            .lines()
            .any(|l| l.contains("cannot reach the receiver") && l.contains("kept in the spool"))
            .then_some(()))
    })?;
    // The receiver comes up: the backlog is announced, then reported delivered.
    let mut rx = start_certs_receiver_at(&certs, &dir.path().join("state"), quic, metrics, &[])?;
    let delivered = wait_for(LIMIT, "the sender's backlog report", || {
        Ok(tx
            .output()
            .lines()
            .find(|l| l.contains("backlog delivered"))
            .map(str::to_owned))
    })?;
    let out = tx.output();
    assert!(
        out.contains("sending the backlog kept in the spool"),
        "{out}"
    );
    let records: u64 = delivered
        .split_whitespace()
        .find_map(|w| w.strip_prefix("records="))
        .context("records= in the backlog report")?
        .parse()?;
    assert!((1..=300).contains(&records), "{delivered}");
    wait_metrics(rx.metrics, "all 300 records applied", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "quiet")]) == Some(300.0)
    })?;
    // Stopping while the receiver is gone says what it waits for.
    rx.proc.kill_9()?;
    assert!(tx.terminate(Duration::from_secs(20))?.success());
    let (mut tx2, _) = start_certs_sender(&certs, "quiet", quic, &spool, &synthetic)?;
    wait_for(LIMIT, "records spooled by the second run", || {
        Ok(tx2.output().contains("kept in the spool").then_some(()))
    })?;
    tx2.signal(libc::SIGTERM)?;
    wait_for(Duration::from_secs(5), "the stop message", || {
        Ok(tx2
            .output()
            .lines()
            .any(|l| l.contains("stopping: waiting up to") && l.contains("connected=false"))
            .then_some(()))
    })
    .with_context(|| tx2.output())?;
    assert!(tx2.wait_timeout(Duration::from_secs(30))?.success());
    Ok(())
}

#[test]
fn refused_senders_are_counted_by_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    // The receiver trusts `pki`'s CA and allows only "good".
    let rcv = pki.receiver()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::copy(&rcv.ca, certs.join("ca.pem"))?;
    std::fs::copy(&rcv.cert, certs.join("receiver.pem"))?;
    std::fs::copy(&rcv.key, certs.join("receiver.key"))?;
    for (id, files) in [
        ("intruder", pki.sender("intruder")?),
        ("good", pki.sender("good")?),
    ] {
        std::fs::copy(&files.cert, certs.join(format!("sender-{id}.pem")))?;
        std::fs::copy(&files.key, certs.join(format!("sender-{id}.key")))?;
    }
    let rx = start_certs_receiver(
        &certs,
        &dir.path().join("state"),
        &["--allow-sender", "good"],
    )?;

    // A certificate from another CA: refused in the handshake, counted.
    let foreign = pki.sender_from_other_ca("good")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let refused = rt.block_on(async {
        let ep = raw::client_endpoint()?;
        raw::attempt(
            &ep,
            raw::client_config(&pki.ca_path(), Some(&foreign))?,
            rx.quic,
            "localhost",
            Duration::from_secs(3),
        )
        .await
        .err()
        .context("foreign certificate accepted")
    })?;
    assert!(!refused.is_empty());
    wait_metrics(rx.metrics, "unknown_ca counted", |e| {
        e.value(
            "telemetry_link_handshake_failures_total",
            &[("reason", "unknown_ca")],
        ) == Some(1.0)
    })?;

    // The sender binary with that certificate refuses to start, naming file and reason.
    std::fs::copy(&foreign.cert, certs.join("sender-foreign.pem"))?;
    std::fs::copy(&foreign.key, certs.join("sender-foreign.key"))?;
    let (mut bad, _) = start_certs_sender(
        &certs,
        "foreign",
        rx.quic,
        &dir.path().join("spool-f"),
        &["--source", "simulated"],
    )?;
    let status = bad.wait_timeout(Duration::from_secs(20))?;
    assert!(!status.success());
    let out = bad.output();
    assert!(
        out.contains("sender-foreign.pem") && out.contains("not signed by the CA"),
        "{out}"
    );

    // A valid certificate whose identity is not allowed: refused after the
    // handshake, with a message the sender logs, counted on both sides.
    let (mut intruder, intruder_metrics) = start_certs_sender(
        &certs,
        "intruder",
        rx.quic,
        &dir.path().join("spool-i"),
        &["--source", "simulated"],
    )?;
    wait_metrics(rx.metrics, "not_allowed counted", |e| {
        e.value(
            "telemetry_link_handshake_failures_total",
            &[("reason", "not_allowed")],
        )
        .unwrap_or(0.0)
            >= 1.0
    })?;
    wait_metrics(intruder_metrics, "sender counts the refusal", |e| {
        e.value(
            "telemetry_sender_connect_failures_total",
            &[("reason", "refused")],
        )
        .unwrap_or(0.0)
            >= 1.0
    })?;
    assert!(
        intruder.is_running(),
        "a refused sender keeps its spool and retries"
    );
    let out = intruder.output();
    assert!(
        out.contains("not_allowed") && out.contains("intruder"),
        "{out}"
    );
    // A receiver that answered and refused is not "unreachable".
    assert!(
        out.contains("the receiver refused this sender") && !out.contains("cannot reach"),
        "{out}"
    );
    let e = scrape(rx.metrics)?;
    assert_eq!(e.count("kube_pod_info", &[("cluster", "intruder")]), 0);
    Ok(())
}

#[test]
fn bad_certificate_files_are_clear_startup_errors() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let run = |ca: &Path, cert: &Path, key: &Path| -> Result<String> {
        let out = Command::new(receiver_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--ca",
            ])
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--state-dir")
            .arg(dir.path())
            .output()?;
        ensure!(!out.status.success(), "receiver started with bad files");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let good = pki.receiver()?;
    let missing = dir.path().join("missing.key");
    let err = run(&good.ca, &good.cert, &missing)?;
    assert!(
        err.contains("missing.key") && err.contains("No such file"),
        "{err}"
    );
    // An expired receiver certificate.
    let expired = pki.sender_valid("rx-expired", Validity::relative(-7200, -3600))?;
    let err = run(&good.ca, &expired.cert, &expired.key)?;
    assert!(
        err.contains(&expired.cert.display().to_string()) && err.contains("expired"),
        "{err}"
    );
    let future = pki.sender_valid("rx-future", Validity::relative(3600, 7200))?;
    let err = run(&good.ca, &future.cert, &future.key)?;
    assert!(err.contains("not valid before"), "{err}");
    // A receiver certificate from another CA than --ca.
    let other_pki = TestPki::new()?;
    let other = other_pki.receiver()?;
    let err = run(&good.ca, &other.cert, &other.key)?;
    assert!(
        err.contains(&other.cert.display().to_string()) && err.contains("not signed by the CA"),
        "{err}"
    );
    // Not PEM at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello")?;
    let err = run(&junk, &good.cert, &good.key)?;
    assert!(err.contains("junk.pem"), "{err}");
    Ok(())
}

/// The DER of the certificate a receiver presents now.
fn presented_cert(
    quic: SocketAddr,
    pki_ca: &Path,
    client: &telemetry_link::TlsFiles,
) -> Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ep = raw::client_endpoint()?;
        let conn = raw::connect(
            &ep,
            raw::client_config(pki_ca, Some(client))?,
            quic,
            "localhost",
        )
        .await?;
        let certs = conn
            .peer_identity()
            .and_then(|a| {
                a.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .context("no peer certificate")?;
        conn.close(0u32.into(), b"done");
        Ok(certs[0].to_vec())
    })
}

fn pem_der(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    Ok(CertificateDer::from_pem_file(path)?.to_vec())
}

#[test]
fn certificates_rotate_without_a_restart_and_broken_files_keep_the_old_ones() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    let first = pki.receiver()?;
    std::fs::copy(&first.ca, certs.join("ca.pem"))?;
    std::fs::copy(&first.cert, certs.join("receiver.pem"))?;
    std::fs::copy(&first.key, certs.join("receiver.key"))?;
    let s = pki.sender("rot")?;
    std::fs::copy(&s.cert, certs.join("sender-rot.pem"))?;
    std::fs::copy(&s.key, certs.join("sender-rot.key"))?;
    let rx = start_certs_receiver(&certs, &dir.path().join("state"), &[])?;
    let (tx, tx_metrics) = start_certs_sender(
        &certs,
        "rot",
        rx.quic,
        &dir.path().join("spool"),
        &["--source", "synthetic", "--synthetic-rate", "200"],
    )?;
    wait_metrics(tx_metrics, "sender connected", |e| {
        e.value("telemetry_sender_connected", &[]) == Some(1.0)
    })?;
    let probe = pki.sender("probe")?;
    assert_eq!(
        presented_cert(rx.quic, &pki.ca_path(), &probe)?,
        pem_der(&certs.join("receiver.pem"))?
    );

    // Rotate: new certificate and key from the same CA, then SIGHUP.
    let second = pki.receiver()?;
    std::fs::copy(&second.cert, certs.join("receiver.pem"))?;
    std::fs::copy(&second.key, certs.join("receiver.key"))?;
    rx.proc.signal(libc::SIGHUP)?;
    wait_metrics(rx.metrics, "reload counted", |e| {
        e.value("telemetry_link_tls_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    })?;
    let new_der = pem_der(&certs.join("receiver.pem"))?;
    wait_for(LIMIT, "new handshakes use the new certificate", || {
        Ok((presented_cert(rx.quic, &pki.ca_path(), &probe)? == new_der).then_some(()))
    })?;
    // The established session was not disturbed and data keeps flowing.
    let before = scrape(rx.metrics)?
        .value("telemetry_link_applied_seq", &[("sender", "rot")])
        .unwrap_or(0.0);
    wait_metrics(rx.metrics, "records keep arriving", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "rot")])
            .unwrap_or(0.0)
            > before + 100.0
    })?;
    let s = scrape(tx_metrics)?;
    assert_eq!(
        s.value("telemetry_sender_reconnects_total", &[]),
        Some(0.0),
        "no reconnect during rotation"
    );

    // A broken new certificate: logged, counted, old material stays in use.
    std::fs::write(
        certs.join("receiver.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )?;
    rx.proc.signal(libc::SIGHUP)?;
    wait_metrics(rx.metrics, "failed reload counted", |e| {
        e.value("telemetry_link_tls_reloads_total", &[("result", "error")])
            .unwrap_or(0.0)
            >= 1.0
    })?;
    assert_eq!(
        presented_cert(rx.quic, &pki.ca_path(), &probe)?,
        new_der,
        "still the last good certificate"
    );
    assert!(
        rx.proc.output().contains("keeping"),
        "the failure is logged"
    );

    // The sender side: a new certificate is loaded on SIGHUP, a broken one
    // is refused and counted, and the session stays up throughout.
    let renewed = pki.sender("rot")?;
    std::fs::copy(&renewed.cert, certs.join("sender-rot.pem"))?;
    std::fs::copy(&renewed.key, certs.join("sender-rot.key"))?;
    tx.signal(libc::SIGHUP)?;
    wait_metrics(tx_metrics, "sender reload counted", |e| {
        e.value("telemetry_sender_tls_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    })?;
    std::fs::write(certs.join("sender-rot.key"), "not a key")?;
    tx.signal(libc::SIGHUP)?;
    wait_metrics(tx_metrics, "sender's failed reload counted", |e| {
        e.value("telemetry_sender_tls_reloads_total", &[("result", "error")])
            .unwrap_or(0.0)
            >= 1.0
    })?;
    let s = scrape(tx_metrics)?;
    assert_eq!(s.value("telemetry_sender_connected", &[]), Some(1.0));
    assert_eq!(s.value("telemetry_sender_reconnects_total", &[]), Some(0.0));

    // Changed files are also picked up without a signal (polled every 5 s).
    let third = pki.receiver()?;
    std::fs::copy(&third.cert, certs.join("receiver.pem"))?;
    std::fs::copy(&third.key, certs.join("receiver.key"))?;
    let third_der = pem_der(&certs.join("receiver.pem"))?;
    wait_for(Duration::from_secs(20), "automatic reload", || {
        Ok((presented_cert(rx.quic, &pki.ca_path(), &probe)? == third_der).then_some(()))
    })?;
    Ok(())
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Issue 7's acceptance test: a synthetic sender samples 4 series once per
/// second each; the receiver forwards to a real Prometheus through remote
/// write, is killed for 40 s while the sender keeps sampling, and comes
/// back. Afterwards every second of the outage has its sample in
/// Prometheus, with the time it was taken; consecutive samples of a series
/// differ by exactly 4 (the synthetic counter is round-robin over 4 series),
/// so none was lost or written twice; Prometheus refused no write.
#[test]
fn remote_write_fills_a_receiver_outage_in_prometheus() -> Result<()> {
    const SERIES: usize = 4;
    const OUTAGE: Duration = Duration::from_secs(40);
    let Some(prom) = PrometheusServer::remote_write_receiver(None)? else {
        return Ok(());
    };
    let url = prom.remote_write_url();
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["rw"])?;
    let state = dir.path().join("state");
    let mut rx = start_certs_receiver(&certs, &state, &["--remote-write", &url])?;
    let (_tx, tx_metrics) = start_certs_sender(
        &certs,
        "rw",
        rx.quic,
        &dir.path().join("spool"),
        &[
            "--source",
            "synthetic",
            "--synthetic-series",
            "4",
            "--synthetic-rate",
            "4",
        ],
    )?;
    let series = r#"telemetry_synthetic_value{cluster="rw"}"#;
    wait_for(LIMIT, "4 synthetic series in Prometheus", || {
        Ok(prom
            .scalar(&format!("count({series})"))?
            .filter(|n| *n == SERIES as f64))
    })?;

    let outage_start = unix_now_s();
    rx.proc.kill_9()?;
    std::thread::sleep(OUTAGE);
    let outage_end = unix_now_s();
    let rx = start_certs_receiver_at(
        &certs,
        &state,
        rx.quic,
        rx.metrics,
        &["--remote-write", &url],
    )?;
    let produced = scrape(tx_metrics)?
        .value("telemetry_sender_last_seq", &[])
        .context("sender last seq")?;
    wait_metrics(rx.metrics, "the backlog applied and forwarded", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "rw")])
            .is_some_and(|applied| applied >= produced)
            && e.sum("telemetry_remote_write_samples_pending", &[]) == 0.0
            && e.sum("telemetry_remote_write_samples_sent_total", &[]) > 0.0
    })?;
    let e = scrape(rx.metrics)?;
    assert_eq!(
        e.sum("telemetry_remote_write_samples_failed_total", &[]),
        0.0
    );
    assert_eq!(
        e.sum("telemetry_remote_write_samples_dropped_total", &[]),
        0.0
    );

    // The raw samples around the outage, per series.
    let window = (outage_end - outage_start).ceil() as u64 + 10;
    let result = prom.query(&format!("{series}[{window}s]"), Some(outage_end + 5.0))?;
    assert_eq!(result.len(), SERIES, "{result:?}");
    for s in &result {
        let name = s["metric"]["series"].as_str().unwrap_or("?").to_owned();
        let samples: Vec<(f64, f64)> = s["values"]
            .as_array()
            .context("values")?
            .iter()
            .map(|pair| Ok((pair[0].as_f64().context("time")?, value_of(pair)?)))
            .collect::<Result<_>>()?;
        for pair in samples.windows(2) {
            let ((t0, v0), (t1, v1)) = (pair[0], pair[1]);
            assert_eq!(
                v1 - v0,
                SERIES as f64,
                "series {name}: {v0} then {v1} at {t0}..{t1}"
            );
            assert!(
                (0.5..=1.5).contains(&(t1 - t0)),
                "series {name}: samples at {t0} and {t1}"
            );
        }
        let in_outage = samples
            .iter()
            .filter(|(t, _)| (outage_start..=outage_end).contains(t))
            .count();
        assert!(
            in_outage as f64 >= (outage_end - outage_start).floor() - 1.0,
            "series {name}: {in_outage} samples in the {:.1} s outage",
            outage_end - outage_start
        );
    }
    // The same with count_over_time over the outage's whole seconds.
    let whole = (outage_end - outage_start).floor() as u64;
    let counts = prom.query(
        &format!("count_over_time({series}[{whole}s])"),
        Some(outage_start + whole as f64),
    )?;
    assert_eq!(counts.len(), SERIES);
    for c in &counts {
        let n = value_of(&c["value"])?;
        assert!(
            (whole as f64 - 1.0..=whole as f64 + 1.0).contains(&n),
            "count_over_time over {whole} s of outage: {n} samples ({c})"
        );
    }
    // Prometheus answered every write with 2xx.
    let own = Exposition::parse(&get(prom.addr(), "/metrics", &[])?.body)?;
    let refused: f64 = own
        .find(
            "prometheus_http_requests_total",
            &[("handler", "/api/v1/write")],
        )
        .filter(|s| !s.labels.get("code").is_some_and(|c| c.starts_with('2')))
        .map(|s| s.value)
        .sum();
    assert_eq!(refused, 0.0, "{}", prom.output());
    Ok(())
}

/// What a receiver acknowledged is not lost when it crashes before the
/// remote-write endpoint took it: the receiver forwards to an address where
/// no Prometheus runs yet, applies (and acks) 40 records, is killed with
/// SIGKILL; Prometheus comes up there; the restarted receiver drains its
/// queue, and Prometheus holds each of the 40 values exactly once.
#[test]
fn acked_samples_survive_a_receiver_crash_before_the_endpoint_took_them() -> Result<()> {
    const TOTAL: u64 = 40;
    let prom_addr: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let url = format!("http://{prom_addr}/api/v1/write");
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["crash"])?;
    let state = dir.path().join("state");
    let mut rx = start_certs_receiver(&certs, &state, &["--remote-write", &url])?;
    let (_tx, _) = start_certs_sender(
        &certs,
        "crash",
        rx.quic,
        &dir.path().join("spool"),
        &[
            "--source",
            "synthetic",
            "--synthetic-series",
            "2",
            "--synthetic-rate",
            "200",
            "--synthetic-total",
            &TOTAL.to_string(),
        ],
    )?;
    wait_metrics(rx.metrics, "all records applied and queued", |e| {
        e.value("telemetry_link_applied_seq", &[("sender", "crash")]) == Some(TOTAL as f64)
            && e.sum("telemetry_remote_write_samples_pending", &[]) == TOTAL as f64
    })?;
    rx.proc.kill_9()?;

    let Some(prom) = PrometheusServer::remote_write_receiver(Some(prom_addr))? else {
        return Ok(());
    };
    let rx = start_certs_receiver_at(
        &certs,
        &state,
        rx.quic,
        rx.metrics,
        &["--remote-write", &url],
    )?;
    wait_metrics(rx.metrics, "the queue drained", |e| {
        e.sum("telemetry_remote_write_samples_sent_total", &[]) >= TOTAL as f64
            && e.sum("telemetry_remote_write_samples_pending", &[]) == 0.0
    })?;
    let result = prom.query(r#"telemetry_synthetic_value{cluster="crash"}[1h]"#, None)?;
    let mut values: Vec<u64> = result
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|pair| value_of(&pair).map(|v| v as u64))
        .collect::<Result<_>>()?;
    values.sort_unstable();
    eprintln!(
        "Prometheus holds {} samples after the crash and restart",
        values.len()
    );
    assert_eq!(values, (1..=TOTAL).collect::<Vec<_>>());
    Ok(())
}

/// Kubernetes state goes through remote write under the same names and
/// labels as on `/metrics`: the demo's simulated cluster, forwarded to a
/// real Prometheus, shows every `kube_*` family the receiver's page has.
#[test]
fn kubernetes_series_reach_prometheus_under_their_metrics_names() -> Result<()> {
    let Some(prom) = PrometheusServer::remote_write_receiver(None)? else {
        return Ok(());
    };
    let url = prom.remote_write_url();
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let mut cmd = Command::new(receiver_bin());
    cmd.args(["--demo", "--listen"])
        .arg(quic.to_string())
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .args(["--remote-write", &url]);
    let _demo = ChildProcess::spawn("demo", cmd)?;
    let page = wait_metrics(metrics, "the demo's pods and HPA", |e| {
        e.count("kube_pod_info", &[("cluster", "demo")]) > 0
            && e.count(
                "kube_horizontalpodautoscaler_spec_max_replicas",
                &[("cluster", "demo")],
            ) > 0
            && e.count("kube_pod_container_cpu_usage_cores", &[("cluster", "demo")]) > 0
    })?;
    let mut on_page: Vec<String> = page
        .samples
        .iter()
        .filter(|s| {
            s.name.starts_with("kube_")
                && s.labels.get("cluster").map(String::as_str) == Some("demo")
        })
        .map(|s| s.name.clone())
        .collect();
    on_page.sort();
    on_page.dedup();
    let names = wait_for(LIMIT, "the same kube_* families in Prometheus", || {
        let result = prom.query(
            r#"count by (__name__) ({cluster="demo", __name__=~"kube_.*"})"#,
            None,
        )?;
        let mut names: Vec<String> = result
            .iter()
            .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(on_page.iter().all(|n| names.contains(n)).then_some(names))
    })?;
    // The same label names too, for one family.
    let info = prom.query(r#"kube_pod_info{cluster="demo"}"#, None)?;
    let mut labels: Vec<String> = info[0]["metric"]
        .as_object()
        .context("labels")?
        .keys()
        .filter(|k| k.as_str() != "__name__")
        .cloned()
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "cluster",
            "created_by_kind",
            "created_by_name",
            "namespace",
            "node",
            "pod",
            "pod_ip",
            "uid"
        ]
    );
    eprintln!("kube_* families via remote write: {names:?}");
    Ok(())
}
