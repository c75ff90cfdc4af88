//! Bad input against a live receiver while a good sender streams: every
//! case is refused with a clear QUIC error code, counted by reason, and the
//! good sender loses nothing.

#![allow(clippy::too_many_lines)] // a test reads top to bottom as one scenario

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use telemetry_certs::Validity;
use telemetry_link::proto::message::{Batch, ErrorCode, Hello, Message};
use telemetry_test_support::{
    link::{assert_exactly_once, metric, start_receiver, start_sender, Collector},
    pki::TestPki,
    raw,
};

async fn wait_metric(
    reg: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) {
    let limit = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(reg, name, labels);
        if v >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < limit,
            "{name}{labels:?} = {v}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects as `id` (a certificate from `pki`) and says hello.
async fn hello(
    ep: &quinn::Endpoint,
    pki: &TestPki,
    addr: SocketAddr,
    id: &str,
    stream_id: u128,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, u64)> {
    raw::hello(
        ep,
        &pki.ca_path(),
        &pki.sender(id)?,
        addr,
        "localhost",
        stream_id,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_and_counted_while_a_good_sender_loses_nothing(
) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let allowed: BTreeSet<String> = ["good", "proto", "replayer"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (receiver, reg) = start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
        c.allowed_senders = Some(allowed);
    })
    .await?;
    let addr = receiver.local_addr();
    let (good, _) = start_sender::<u64>(&pki, "good", &[addr], spool.path(), |_| {}).await?;
    const N: u64 = 20_000;
    let producer = {
        let good = good.clone();
        tokio::spawn(async move {
            let values: Vec<u64> = (1..=N).collect();
            for chunk in values.chunks(50) {
                good.send_batch(chunk).await?;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(())
        })
    };
    let ep = raw::client_endpoint()?;
    let hs = "telemetry_link_handshake_failures_total";

    // --- TLS-level refusals -------------------------------------------------
    let refused = |cfg| raw::attempt(&ep, cfg, addr, "localhost", Duration::from_secs(3));
    let no_cert = refused(raw::client_config(&pki.ca_path(), None)?).await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate must not get in"
    );
    wait_metric(&reg, hs, &[("reason", "no_certificate")], 1.0).await;

    let foreign = pki.sender_from_other_ca("good")?;
    assert!(refused(raw::client_config(&pki.ca_path(), Some(&foreign))?)
        .await
        .is_err());
    wait_metric(&reg, hs, &[("reason", "unknown_ca")], 1.0).await;

    let selfsigned = pki.self_signed("good")?;
    assert!(
        refused(raw::client_config(&pki.ca_path(), Some(&selfsigned))?)
            .await
            .is_err()
    );
    wait_metric(&reg, hs, &[("reason", "unknown_ca")], 2.0).await;

    let expired = pki.sender_valid("good", Validity::relative(-7200, -3600))?;
    assert!(refused(raw::client_config(&pki.ca_path(), Some(&expired))?)
        .await
        .is_err());
    wait_metric(&reg, hs, &[("reason", "expired")], 1.0).await;

    let future = pki.sender_valid("good", Validity::relative(3600, 7200))?;
    assert!(refused(raw::client_config(&pki.ca_path(), Some(&future))?)
        .await
        .is_err());
    wait_metric(&reg, hs, &[("reason", "not_yet_valid")], 1.0).await;

    // Valid certificate, identity not allowed: refused after the handshake.
    let intruder = pki.sender("intruder")?;
    let conn = raw::connect(
        &ep,
        raw::client_config(&pki.ca_path(), Some(&intruder))?,
        addr,
        "localhost",
    )
    .await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::NotAllowed.as_u32()))
    );
    wait_metric(&reg, hs, &[("reason", "not_allowed")], 1.0).await;

    // The client rejects the receiver (wrong server name); the receiver
    // counts the peer's refusal.
    let good_files = pki.sender("good")?;
    let wrong = raw::connect(
        &ep,
        raw::client_config(&pki.ca_path(), Some(&good_files))?,
        addr,
        "wrong.example",
    )
    .await;
    let err = wrong
        .expect_err("server name mismatch must fail")
        .to_string();
    assert!(
        err.contains("not valid for name"),
        "clear client-side error: {err}"
    );
    wait_metric(&reg, hs, &[("reason", "peer_rejected_certificate")], 1.0).await;

    // --- Protocol-level refusals --------------------------------------------
    let files = pki.sender("proto")?;
    // Unknown version: a readable refusal, then a close with its code.
    let conn = raw::connect(
        &ep,
        raw::client_config(&pki.ca_path(), Some(&files))?,
        addr,
        "localhost",
    )
    .await?;
    let v99 = Message::Hello(Hello {
        version: 99,
        stream_id: 1,
        last_seq: 0,
        max_frame: 1 << 20,
        replica: String::new(),
    });
    let (_s, mut r) = raw::open_and_write(&conn, &raw::frame(&v99)).await?;
    match Message::decode(&raw::read_frame(&mut r).await?)? {
        Message::Refuse(f) => {
            assert_eq!(f.code, ErrorCode::UnsupportedVersion);
            assert!(f.reason.contains("99"), "{}", f.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(3)
    );
    wait_metric(&reg, hs, &[("reason", "unsupported_version")], 1.0).await;

    let pe = "telemetry_link_protocol_errors_total";
    // A frame one byte above the maximum.
    let (conn, mut s, _r, _) = hello(&ep, &pki, addr, "proto", 7).await?;
    s.write_all(&((1u32 << 20) + 1).to_be_bytes()).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::FrameTooLarge.as_u32()))
    );
    wait_metric(&reg, pe, &[("reason", "frame_too_large")], 1.0).await;

    // A truncated frame: the stream ends inside it.
    let (conn, mut s, _r, _) = hello(&ep, &pki, addr, "proto", 7).await?;
    s.write_all(&[0, 0, 0, 10, 1, 2, 3]).await?;
    s.finish()?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::ProtocolViolation.as_u32()))
    );

    // A malformed message (unknown type byte).
    let (conn, mut s, _r, _) = hello(&ep, &pki, addr, "proto", 7).await?;
    s.write_all(&[0, 0, 0, 3, 200, 1, 2]).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::ProtocolViolation.as_u32()))
    );

    // A batch whose body is random bytes.
    let (conn, mut s, _r, applied) = hello(&ep, &pki, addr, "proto", 7).await?;
    let junk: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let bad = Message::Batch(Batch {
        first_seq: applied + 1,
        count: 5,
        body: &junk,
    });
    s.write_all(&raw::frame(&bad)).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::ProtocolViolation.as_u32()))
    );

    // A truncated batch body (one record announced, half of it sent).
    let (conn, mut s, _r, applied) = hello(&ep, &pki, addr, "proto", 7).await?;
    let body = raw::app_body(&[42u64]);
    let cut = Message::Batch(Batch {
        first_seq: applied + 1,
        count: 1,
        body: &body[..body.len() - 1],
    });
    s.write_all(&raw::frame(&cut)).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::ProtocolViolation.as_u32()))
    );

    // A batch that skips ahead without announcing the gap.
    let (conn, mut s, _r, applied) = hello(&ep, &pki, addr, "proto", 7).await?;
    let body = raw::app_body(&[1u64]);
    let gap = Message::Batch(Batch {
        first_seq: applied + 10,
        count: 1,
        body: &body,
    });
    s.write_all(&raw::frame(&gap)).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(u64::from(ErrorCode::SequenceGap.as_u32()))
    );
    wait_metric(&reg, pe, &[("reason", "sequence_gap")], 1.0).await;
    assert!(metric(&reg, pe, &[("reason", "protocol_violation")]) >= 4.0);

    // A sender replaying old sequence numbers: dropped and counted, the
    // session stays up, the handler sees each record once.
    let (conn, mut s, mut r, applied) = hello(&ep, &pki, addr, "replayer", 9).await?;
    assert_eq!(applied, 0);
    let body = raw::app_body(&[10u64, 20, 30]);
    let b = raw::frame(&Message::Batch(Batch {
        first_seq: 1,
        count: 3,
        body: &body,
    }));
    s.write_all(&b).await?;
    assert!(
        matches!(Message::decode(&raw::read_frame(&mut r).await?)?, Message::Ack(a) if a.applied_seq == 3)
    );
    s.write_all(&b).await?;
    s.write_all(&b).await?;
    s.write_all(&raw::frame(&Message::Bye)).await?;
    assert_eq!(
        raw::closed_with(&conn, Duration::from_secs(5)).await?,
        Some(0),
        "clean close after bye"
    );
    wait_metric(
        &reg,
        "telemetry_link_duplicates_dropped_total",
        &[("sender", "replayer")],
        6.0,
    )
    .await;
    let replayed = collector.log("replayer");
    assert_eq!(replayed.records, vec![(1, 10), (2, 20), (3, 30)]);

    // --- Datagrams that are not QUIC -----------------------------------------
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..50u8 {
        udp.send_to(&[0x00, i, 1, 2, 3, 4, 5, 6, 7], addr)?; // fixed bit clear
    }
    let mut unknown_version = vec![0xc0, 0xde, 0xad, 0xbe, 0xef, 8];
    unknown_version.resize(1200, 0);
    for _ in 0..20 {
        udp.send_to(&unknown_version, addr)?;
    }
    let mut short_initial = vec![0xc0, 0, 0, 0, 1, 8];
    short_initial.resize(100, 7);
    for _ in 0..20 {
        udp.send_to(&short_initial, addr)?;
    }
    let inv = "telemetry_link_invalid_datagrams_total";
    wait_metric(&reg, inv, &[("reason", "not_quic")], 50.0).await;
    wait_metric(&reg, inv, &[("reason", "unsupported_version")], 20.0).await;
    wait_metric(&reg, inv, &[("reason", "short_initial")], 20.0).await;
    assert_eq!(
        metric(&reg, inv, &[("reason", "not_quic")]),
        50.0,
        "nothing legitimate is counted"
    );

    // --- A bounded flood of connection attempts -------------------------------
    let mut attempts = Vec::new();
    for _ in 0..200 {
        let ep = ep.clone();
        let cfg = raw::client_config(&pki.ca_path(), None)?;
        attempts.push(tokio::spawn(async move {
            raw::attempt(&ep, cfg, addr, "localhost", Duration::from_secs(5))
                .await
                .is_ok()
        }));
    }
    let mut admitted = 0;
    for a in attempts {
        admitted += usize::from(a.await?);
    }
    assert_eq!(admitted, 0, "none of the certificate-less flood gets in");

    // --- The good sender was never disturbed ---------------------------------
    producer.await??;
    collector
        .wait_for("good", N as usize, Duration::from_secs(60))
        .await?;
    let log = collector.log("good");
    assert_exactly_once(log.records.iter().map(|r| r.0), N);
    assert!(log.records.iter().all(|(seq, v)| seq == v));
    assert_eq!(
        log.connects, 1,
        "the good sender's session survived everything"
    );
    assert!(good.shutdown(Duration::from_secs(10)).await.drained);
    assert_eq!(
        metric(
            &reg,
            "telemetry_link_duplicates_dropped_total",
            &[("sender", "good")]
        ),
        0.0
    );
    receiver.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_reports_clear_errors_for_refusals() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let collector = Collector::<u64>::new();
    let (receiver, _reg) =
        start_receiver::<u64, _>(&pki, 0, state.path(), collector.clone(), |c| {
            c.allowed_senders = Some(["someone-else".to_string()].into_iter().collect());
        })
        .await?;
    let addr = receiver.local_addr();

    // Not in the allow list.
    let spool = tempfile::tempdir()?;
    let (s, reg) = start_sender::<u64>(&pki, "stranger", &[addr], spool.path(), |_| {}).await?;
    let mut status = s.status();
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await??
    .clone();
    let msg = st.last_error.unwrap_or_default();
    assert!(
        msg.contains("not_allowed") && msg.contains("stranger"),
        "{msg}"
    );
    assert!(
        metric(
            &reg,
            "telemetry_sender_connect_failures_total",
            &[("reason", "refused")]
        ) >= 1.0
    );
    s.shutdown(Duration::from_millis(100)).await;

    // Wrong server name.
    let spool = tempfile::tempdir()?;
    let (s, _) = start_sender::<u64>(&pki, "someone-else", &[addr], spool.path(), |c| {
        c.server_name = Some("wrong.example".into());
    })
    .await?;
    let mut status = s.status();
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await??
    .clone();
    let msg = st.last_error.unwrap_or_default();
    assert!(msg.contains("not valid for name"), "{msg}");
    s.shutdown(Duration::from_millis(100)).await;
    receiver.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[test]
fn own_certificate_problems_name_the_file_and_the_reason() -> anyhow::Result<()> {
    use telemetry_link::tls::{Role, TlsError, TlsMaterial};
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let expired = pki.sender_valid("x", Validity::relative(-7200, -3600))?;
    let err = TlsMaterial::load(&expired, Role::Sender).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&expired.cert.display().to_string()));
    let future = pki.sender_valid("y", Validity::relative(3600, 7200))?;
    assert!(matches!(
        TlsMaterial::load(&future, Role::Sender),
        Err(TlsError::NotYetValid { .. })
    ));
    let foreign = pki.sender_from_other_ca("z")?;
    let err = TlsMaterial::load(&foreign, Role::Sender).unwrap_err();
    assert!(matches!(err, TlsError::WrongCa { .. }), "{err}");
    assert!(err.to_string().contains("not signed by the CA"));
    let mut missing = pki.sender("w")?;
    missing.key = pki.dir().join("nope.key");
    let err = TlsMaterial::load(&missing, Role::Sender).unwrap_err();
    assert!(err.to_string().contains("nope.key"), "{err}");
    // a key that belongs to another certificate
    let mut mismatched = pki.sender("v")?;
    mismatched.key = pki.sender("u")?.key;
    assert!(matches!(
        TlsMaterial::load(&mismatched, Role::Sender),
        Err(TlsError::KeyMismatch { .. })
    ));
    // receiver certificate used as a sender's: wrong usage
    let recv = pki.receiver()?;
    assert!(TlsMaterial::load(&recv, Role::Sender).is_err());
    assert!(TlsMaterial::load(&recv, Role::Receiver).is_ok());
    Ok(())
}
