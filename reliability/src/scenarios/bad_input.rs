//! Bad input against a live receiver while a good sender streams.
//!
//! Hostile peers run in the sender's namespace (their sockets are made
//! there with `setns`) and use `telemetry_test_support::raw` to break the
//! rules: random UDP datagrams; QUIC handshakes with no certificate, a
//! self-signed one, an expired one, one from another CA, one for an identity
//! not in `--allow-sender`; after a valid hello, a frame one byte above the
//! maximum size, a truncated frame, a truncated and a random batch body
//! (postcard), a truncated hello; a peer replaying old sequence numbers; a
//! bounded flood of 200 certificate-less connection attempts.
//!
//! Each case must be refused (handshake failure or connection closed with
//! the right error code) and counted under its reason in the receiver's
//! metrics (checked as exact deltas where the reason is unambiguous), and
//! the good sender must lose nothing: its audit log is exactly `1..=K` and
//! its single session is never interrupted.
//!
//! Recovery time: from the end of the attack until the good sender's
//! records produced by then were acknowledged.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use telemetry_certs::Validity;
use telemetry_link::{
    proto::message::{Batch, ErrorCode, Message},
    TlsFiles,
};
use telemetry_schema::ClusterRecord;
use telemetry_test_support::{prom::Exposition, raw};

use super::{
    count_log_lines, positions, wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT,
    SENDER_ID,
};
use crate::{
    audit::AuditFile,
    netns::{Netns, RX_IP},
    procs::Proc,
};

/// Scenario name.
pub const NAME: &str = "bad input (live receiver)";

const HS: &str = "telemetry_link_handshake_failures_total";
const PE: &str = "telemetry_link_protocol_errors_total";
const INV: &str = "telemetry_link_invalid_datagrams_total";

/// How the receiver classifies a datagram without connection state
/// (PROTOCOL.md, "Transport"): an independent oracle for the random-datagram
/// case.
pub fn expected_reason(d: &[u8]) -> Option<&'static str> {
    let &first = d.first()?;
    if first & 0x40 == 0 {
        return Some("not_quic");
    }
    if first & 0x80 != 0 {
        if d.len() < 7 {
            return Some("truncated");
        }
        if u32::from_be_bytes([d[1], d[2], d[3], d[4]]) != 1 {
            return Some("unsupported_version");
        }
        if (first >> 4) & 0x3 == 0 && d.len() < 1200 {
            return Some("short_initial");
        }
    }
    None
}

/// Random datagrams (seeded) with a good share of every class.
pub fn random_datagrams(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = match i % 4 {
                0 => rng.random_range(1..7),
                _ => rng.random_range(1..1400),
            };
            let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 5 == 0 && d.len() >= 5 {
                // QUIC v1 long header, Initial, usually too short.
                d[0] = 0xc0 | (d[0] & 0x0f);
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            d
        })
        .collect()
}

struct Hostile<'a> {
    ns: &'a Netns,
    rt: tokio::runtime::Runtime,
    target: SocketAddr,
    server_name: String,
    ca: std::path::PathBuf,
}

impl Hostile<'_> {
    fn endpoint(&self) -> Result<quinn::Endpoint> {
        let sock = self.ns.run(|| UdpSocket::bind("0.0.0.0:0"))??;
        let _g = self.rt.enter();
        Ok(quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            sock,
            Arc::new(quinn::TokioRuntime),
        )?)
    }

    /// A handshake that must not lead to an accepted connection.
    fn refused_handshake(&self, identity: Option<&TlsFiles>) -> Result<String> {
        let ep = self.endpoint()?;
        let cfg = raw::client_config(&self.ca, identity)?;
        let res = self.rt.block_on(raw::attempt(
            &ep,
            cfg,
            self.target,
            &self.server_name,
            Duration::from_secs(3),
        ));
        match res {
            Ok(_) => bail!("the handshake was accepted"),
            Err(e) => Ok(e),
        }
    }

    /// Connects as a valid identity, says hello, returns the streams.
    async fn hello(
        &self,
        ep: &quinn::Endpoint,
        files: &TlsFiles,
        stream_id: u128,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, u64)> {
        raw::hello(
            ep,
            &self.ca,
            files,
            self.target,
            &self.server_name,
            stream_id,
        )
        .await
    }

    /// Says hello as `files`, writes `bytes(applied)` and returns the close code.
    fn after_hello(
        &self,
        files: &TlsFiles,
        bytes: impl FnOnce(u64) -> Vec<u8>,
        finish: bool,
    ) -> Result<Option<u64>> {
        let ep = self.endpoint()?;
        self.rt.block_on(async {
            let (conn, mut s, _r, applied) = self.hello(&ep, files, 7).await?;
            s.write_all(&bytes(applied)).await?;
            if finish {
                s.finish()?;
            }
            raw::closed_with(&conn, Duration::from_secs(5)).await
        })
    }
}

/// A record the receiver's store accepts and ignores (an unknown snapshot's end).
fn end(id: u64) -> ClusterRecord {
    ClusterRecord::SnapshotEnd { id }
}

fn frame_of(type_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(type_byte);
    f.extend_from_slice(payload);
    f
}

/// Waits until `metric{labels}` reached `base + delta`, then checks it did
/// not go past it. Returns the observed delta.
fn counted(
    rx: &Proc,
    base: &Exposition,
    metric: &str,
    labels: &[(&str, &str)],
    delta: f64,
    exact: bool,
) -> Result<f64> {
    let b = base.sum(metric, labels);
    let res = rx.wait_metrics(
        Duration::from_secs(10),
        &format!("{metric}{labels:?} += {delta}"),
        |e| (e.sum(metric, labels) - b >= delta).then_some(()),
    );
    if exact {
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = rx.scrape()?.sum(metric, labels) - b;
    res?;
    if exact && got != delta {
        bail!("{metric}{labels:?} rose by {got}, expected exactly {delta}");
    }
    Ok(got)
}

/// A protocol case: name, bytes to write after the hello (given the applied
/// position), whether to finish the stream, expected close code, metric and
/// reason.
type ProtoCase = (
    &'static str,
    Box<dyn Fn(u64) -> Vec<u8>>,
    bool,
    u64,
    &'static str,
    &'static str,
);

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    let mut spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    spec.allow = vec![SENDER_ID.into(), "proto".into(), "replayer".into()];
    let mut rx = st.start_receiver("rx", &spec)?;
    let (rate, secs) = (2000u64, 45u64);
    let total = rate * secs;
    let tx_spec = st.sender_spec(&[spec.listen], rate, total);
    let mut tx = st.start_sender("tx", &tx_spec)?;
    wait_produced(&tx, rate * 2, Duration::from_secs(30))?;
    tx.wait_metrics(Duration::from_secs(10), "good sender connected", |e| {
        (e.value("telemetry_sender_connected", &[])? == 1.0).then_some(())
    })?;

    let h = Hostile {
        ns: &st.topo.tx,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        target: spec.listen,
        server_name: RX_IP.to_string(),
        ca: ctx.pki.ca_path(),
    };
    let pki = &ctx.pki;
    let mut results: Vec<(String, Result<String>)> = Vec::new();
    let mut case = |name: &str, f: &mut dyn FnMut() -> Result<String>| {
        let r = f();
        println!(
            "    [{NAME}] {name}: {}",
            match &r {
                Ok(s) => format!("refused, {s}"),
                Err(e) => format!("FAILED: {e:#}"),
            }
        );
        results.push((name.to_owned(), r));
    };

    // Random UDP datagrams.
    case("random UDP datagrams", &mut || {
        let base = rx.scrape()?;
        let grams = random_datagrams(42, 400);
        let sock = h.ns.run(|| UdpSocket::bind("0.0.0.0:0"))??;
        let mut want: std::collections::BTreeMap<&str, f64> = Default::default();
        for g in &grams {
            if let Some(r) = expected_reason(g) {
                *want.entry(r).or_default() += 1.0;
            }
            sock.send_to(g, h.target)?;
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut seen = Vec::new();
        for (reason, n) in &want {
            let got = counted(&rx, &base, INV, &[("reason", reason)], *n, true)?;
            seen.push(format!("{reason}={got}"));
        }
        Ok(format!(
            "{} datagrams, counted {}",
            grams.len(),
            seen.join(" ")
        ))
    });

    // TLS-level refusals.
    let tls_cases: Vec<(&str, Option<TlsFiles>, &str)> = vec![
        ("no client certificate", None, "no_certificate"),
        (
            "self-signed certificate",
            Some(pki.self_signed(SENDER_ID)?),
            "unknown_ca",
        ),
        (
            "expired certificate",
            Some(pki.sender_valid(SENDER_ID, Validity::relative(-7200, -3600))?),
            "expired",
        ),
        (
            "certificate from another CA",
            Some(pki.sender_from_other_ca(SENDER_ID)?),
            "unknown_ca",
        ),
    ];
    for (name, files, reason) in &tls_cases {
        case(name, &mut || {
            let base = rx.scrape()?;
            let err = h.refused_handshake(files.as_ref())?;
            counted(&rx, &base, HS, &[("reason", reason)], 1.0, true)?;
            Ok(format!("{reason} (client saw: {err})"))
        });
    }
    let intruder = pki.sender("intruder")?;
    case("identity not in --allow-sender", &mut || {
        let base = rx.scrape()?;
        let ep = h.endpoint()?;
        let code = h.rt.block_on(async {
            let conn = raw::connect(
                &ep,
                raw::client_config(&h.ca, Some(&intruder))?,
                h.target,
                &h.server_name,
            )
            .await?;
            raw::closed_with(&conn, Duration::from_secs(5)).await
        })?;
        if code != Some(u64::from(ErrorCode::NotAllowed.as_u32())) {
            bail!("closed with {code:?}, expected not_allowed");
        }
        counted(&rx, &base, HS, &[("reason", "not_allowed")], 1.0, true)?;
        Ok("not_allowed".into())
    });

    // Protocol-level refusals after a valid hello.
    let proto = pki.sender("proto")?;
    let violation = u64::from(ErrorCode::ProtocolViolation.as_u32());
    let proto_cases: Vec<ProtoCase> = vec![
        (
            "frame of maximum size + 1",
            Box::new(|_| ((1u32 << 20) + 1).to_be_bytes().to_vec()),
            false,
            u64::from(ErrorCode::FrameTooLarge.as_u32()),
            PE,
            "frame_too_large",
        ),
        (
            "truncated frame",
            Box::new(|_| vec![0, 0, 0, 10, 4, 1, 2]),
            true,
            violation,
            PE,
            "protocol_violation",
        ),
        (
            "truncated postcard batch body",
            Box::new(|applied| {
                let body = raw::app_body(&[end(42), end(43)]);
                raw::frame(&Message::Batch(Batch {
                    first_seq: applied + 1,
                    count: 2,
                    body: &body[..body.len() - 1],
                }))
            }),
            false,
            violation,
            PE,
            "protocol_violation",
        ),
        (
            "random postcard batch body",
            Box::new(|applied| {
                let mut rng = StdRng::seed_from_u64(9);
                let junk: Vec<u8> = (0..200).map(|_| rng.random()).collect();
                raw::frame(&Message::Batch(Batch {
                    first_seq: applied + 1,
                    count: 17,
                    body: &junk,
                }))
            }),
            false,
            violation,
            PE,
            "protocol_violation",
        ),
    ];
    for (name, bytes, finish, code, metric, reason) in proto_cases {
        case(name, &mut || {
            let base = rx.scrape()?;
            let got = h.after_hello(&proto, &bytes, finish)?;
            if got != Some(code) {
                bail!("closed with {got:?}, expected {code}");
            }
            counted(&rx, &base, metric, &[("reason", reason)], 1.0, true)?;
            Ok(reason.to_owned())
        });
    }
    case("truncated postcard hello", &mut || {
        let base = rx.scrape()?;
        let ep = h.endpoint()?;
        let code = h.rt.block_on(async {
            let conn = raw::connect(
                &ep,
                raw::client_config(&h.ca, Some(&proto))?,
                h.target,
                &h.server_name,
            )
            .await?;
            // version 1, then a varint that never ends
            let (_s, _r) =
                raw::open_and_write(&conn, &frame_of(1, &[0x01, 0xff, 0xff, 0xff])).await?;
            raw::closed_with(&conn, Duration::from_secs(5)).await
        })?;
        if code != Some(violation) {
            bail!("closed with {code:?}, expected protocol_violation");
        }
        counted(&rx, &base, HS, &[("reason", "bad_hello")], 1.0, true)?;
        Ok("bad_hello".into())
    });

    // A peer replaying old sequence numbers.
    let replayer = pki.sender("replayer")?;
    case("replayed sequence numbers", &mut || {
        let base = rx.scrape()?;
        let ep = h.endpoint()?;
        h.rt.block_on(async {
            let (conn, mut s, mut r, applied) = h.hello(&ep, &replayer, 9).await?;
            if applied != 0 {
                bail!("replayer starts at {applied}");
            }
            let body = raw::app_body(&[end(10), end(20), end(30)]);
            let b = raw::frame(&Message::Batch(Batch {
                first_seq: 1,
                count: 3,
                body: &body,
            }));
            s.write_all(&b).await?;
            match Message::decode(&raw::read_frame(&mut r).await?)? {
                Message::Ack(a) if a.applied_seq == 3 => {}
                other => bail!("expected ack 3, got {other:?}"),
            }
            s.write_all(&b).await?;
            s.write_all(&b).await?;
            s.write_all(&raw::frame(&Message::Bye)).await?;
            let code = raw::closed_with(&conn, Duration::from_secs(5)).await?;
            if code != Some(0) {
                bail!("closed with {code:?} after bye");
            }
            anyhow::Ok(())
        })?;
        counted(
            &rx,
            &base,
            "telemetry_link_duplicates_dropped_total",
            &[("sender", "replayer")],
            6.0,
            true,
        )?;
        Ok("6 replayed records dropped as duplicates".into())
    });

    // A bounded flood of connection attempts.
    case("flood of 200 connection attempts", &mut || {
        let base = rx.scrape()?;
        let ep = h.endpoint()?;
        let cfg = raw::client_config(&h.ca, None)?;
        let admitted = h.rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let (ep, cfg, target, name) =
                    (ep.clone(), cfg.clone(), h.target, h.server_name.clone());
                tasks.push(tokio::spawn(async move {
                    raw::attempt(&ep, cfg, target, &name, Duration::from_secs(5))
                        .await
                        .is_ok()
                }));
            }
            let mut admitted = 0;
            for t in tasks {
                admitted += usize::from(t.await.unwrap_or(true));
            }
            admitted
        });
        if admitted > 0 {
            bail!("{admitted} certificate-less connections were admitted");
        }
        let got = counted(&rx, &base, HS, &[], 200.0, false)?;
        let e = rx.scrape()?;
        let by_reason: Vec<String> = ["no_certificate", "busy", "handshake_timeout"]
            .iter()
            .map(|r| {
                format!(
                    "{r}={}",
                    e.sum(HS, &[("reason", r)]) - base.sum(HS, &[("reason", r)])
                )
            })
            .collect();
        Ok(format!(
            "0 admitted, {got} handshake failures counted ({})",
            by_reason.join(" ")
        ))
    });
    let attack_over = Instant::now();

    for (name, r) in &results {
        match r {
            Ok(s) => st.notes.push(format!("{name}: refused, {s}")),
            Err(e) => st.failures.push(format!("{name}: {e:#}")),
        }
    }
    let (last, _) = positions(&tx)?;
    if let Ok(at) = wait_acked(&tx, last, Duration::from_secs(30)) {
        st.row.recovery = Some(at - attack_over);
    }
    let e = tx.scrape()?;
    let reconnects = e
        .value("telemetry_sender_reconnects_total", &[])
        .unwrap_or(-1.0);
    st.check(
        reconnects == 0.0,
        format!("the good sender reconnected {reconnects} times during the attack"),
    );
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(120),
    )?;
    let good_sessions = count_log_lines(
        &rx.output(),
        &["sender connected", &format!("sender={SENDER_ID}")],
    );
    st.check(
        good_sessions == 1,
        format!("the good sender had {good_sessions} sessions, want 1"),
    );
    // The replayer's records were applied exactly once.
    let files = vec![AuditFile::load(&spec.audit_log, "rx", false).context("audit log")?];
    st.audit_check(&files, "replayer", 3, (0, 0));
    Ok(st.outcome(Some(&report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_follows_the_protocol_document() {
        assert_eq!(expected_reason(&[0x00, 1, 2]), Some("not_quic"));
        assert_eq!(expected_reason(&[0xc0, 0, 0]), Some("truncated"));
        assert_eq!(
            expected_reason(&[0xc0, 0xff, 0, 0, 0x1d, 0, 0, 0]),
            Some("unsupported_version")
        );
        assert_eq!(
            expected_reason(&[0xc0, 0, 0, 0, 1, 0, 0, 0]),
            Some("short_initial")
        );
        let mut initial = vec![0xc0, 0, 0, 0, 1];
        initial.resize(1200, 0);
        assert_eq!(expected_reason(&initial), None);
        assert_eq!(expected_reason(&[0x40, 1, 2, 3]), None);
        assert_eq!(
            expected_reason(&[0xd0, 0, 0, 0, 1, 0, 0, 0]),
            None,
            "0-RTT, not an Initial"
        );
    }

    #[test]
    fn random_datagrams_cover_every_reason() {
        let g = random_datagrams(42, 400);
        for reason in [
            "not_quic",
            "truncated",
            "unsupported_version",
            "short_initial",
        ] {
            assert!(
                g.iter()
                    .filter(|d| expected_reason(d) == Some(reason))
                    .count()
                    >= 10,
                "{reason}"
            );
        }
        assert_eq!(g, random_datagrams(42, 400), "deterministic");
    }

    #[test]
    fn app_bodies_encode_values() {
        let b = raw::app_body(&[1u64, 300]);
        assert_eq!(b, vec![0, 1, 1, 0, 2, 0xac, 0x02]);
        let e = postcard::to_allocvec(&end(5)).unwrap();
        let mut want = vec![0, e.len() as u8];
        want.extend(e);
        assert_eq!(raw::app_body(&[end(5)]), want);
        assert_eq!(frame_of(1, &[9]), vec![0, 0, 0, 2, 1, 9]);
    }
}
