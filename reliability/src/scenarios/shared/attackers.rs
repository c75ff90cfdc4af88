//! The attackers of the shared-service rows: the object bomb (a raw
//! client), the handshake flood with legitimate connects beside it, HTTP
//! clients that never finish, and the legitimate scraper that watches.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use telemetry_link::{
    proto::message::{Batch, Message},
    TlsFiles,
};
use telemetry_schema::{ClusterRecord, ContainerRequests, PodInfo, PodPhase};
use telemetry_test_support::raw;

use crate::{
    netns::{Netns, RX_IP},
    procs::Proc,
};

/// `PodUpsert`s of the object bomb, and per batch.
const BOMB_PODS: u64 = 300_000;
const PODS_PER_BATCH: u64 = 500;
/// Half-open HTTP connections and scrapers that never read.
pub(super) const HALF_OPEN: usize = 300;
pub(super) const NON_READING: usize = 4;

/// A UDP endpoint whose socket lives in `ns`.
pub(super) fn endpoint_in(ns: &Netns, rt: &tokio::runtime::Runtime) -> Result<quinn::Endpoint> {
    let sock = ns.run(|| UdpSocket::bind("0.0.0.0:0"))??;
    let _g = rt.enter();
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    )?)
}

pub(super) fn bomb_pod(i: u64) -> ClusterRecord {
    ClusterRecord::PodUpsert(PodInfo {
        namespace: "bomb".into(),
        name: format!("pod-{i:07}"),
        uid: format!("00000000-0000-0000-0000-{i:012}"),
        node: "node-1".into(),
        pod_ip: "10.9.0.1".into(),
        phase: PodPhase::Running,
        created_by_kind: "ReplicaSet".into(),
        created_by_name: "bomb".into(),
        containers: vec![ContainerRequests {
            name: "c".into(),
            cpu_cores: Some(0.1),
            memory_bytes: Some(1e8),
            cpu_limit_cores: None,
            memory_limit_bytes: None,
        }],
    })
}

/// What the object bomb saw: records sent, refused as the acks told it,
/// how long it took.
pub(super) struct ObjectBomb {
    pub(super) sent: u64,
    pub(super) refused: u64,
    pub(super) took: Duration,
}

/// Sends [`BOMB_PODS`] `PodUpsert`s as `files`, a batch at a time, each
/// acknowledged before the next.
pub(super) fn object_bomb(
    ns: &Netns,
    ca: &std::path::Path,
    files: &TlsFiles,
) -> Result<ObjectBomb> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ep = endpoint_in(ns, &rt)?;
    let target = SocketAddr::from((RX_IP, crate::scenarios::QUIC_PORT));
    let started = Instant::now();
    rt.block_on(async {
        let (_conn, mut s, mut r, applied) =
            raw::hello(&ep, ca, files, target, &RX_IP.to_string(), 11).await?;
        if applied != 0 {
            bail!("the object bomb starts at {applied}");
        }
        let mut refused = 0;
        let mut seq = 1;
        while seq <= BOMB_PODS {
            let n = PODS_PER_BATCH.min(BOMB_PODS - seq + 1);
            let records: Vec<ClusterRecord> = (seq..seq + n).map(bomb_pod).collect();
            let body = raw::app_body(&records);
            s.write_all(&raw::frame(&Message::Batch(Batch {
                first_seq: seq,
                count: n as u32,
                body: &body,
            })))
            .await?;
            seq += n;
            loop {
                match Message::decode(&raw::read_frame(&mut r).await?)? {
                    Message::Refused(f) => refused += f.counts.total(),
                    Message::Ack(a) if a.applied_seq >= seq - 1 => break,
                    _ => {}
                }
            }
        }
        s.write_all(&raw::frame(&Message::Bye)).await?;
        Ok(ObjectBomb {
            sent: seq - 1,
            refused,
            took: started.elapsed(),
        })
    })
}

/// What the handshake flood and the legitimate connects beside it did.
pub(super) struct FloodOutcome {
    pub(super) flood: raw::Flood,
    pub(super) connects: usize,
    pub(super) accepted: usize,
    pub(super) slowest: Duration,
}

/// Floods certificate-less handshakes for `duration` while a legitimate
/// identity connects every half second.
pub(super) fn handshake_flood(
    ns: &Netns,
    ca: &std::path::Path,
    probe: &TlsFiles,
    duration: Duration,
) -> Result<FloodOutcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let target = SocketAddr::from((RX_IP, crate::scenarios::QUIC_PORT));
    let flood_ep = endpoint_in(ns, &rt)?;
    let probe_ep = endpoint_in(ns, &rt)?;
    let anonymous = raw::client_config(ca, None)?;
    let legit = raw::client_config(ca, Some(probe))?;
    let name = RX_IP.to_string();
    rt.block_on(async {
        let flood =
            tokio::spawn(
                async move { raw::flood(&flood_ep, &anonymous, target, 64, duration).await },
            );
        let (mut connects, mut accepted, mut slowest) = (0, 0, Duration::ZERO);
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let t = Instant::now();
            let res = raw::attempt(
                &probe_ep,
                legit.clone(),
                target,
                &name,
                Duration::from_millis(300),
            )
            .await;
            connects += 1;
            if let Ok(conn) = res {
                accepted += 1;
                slowest = slowest.max(t.elapsed().saturating_sub(Duration::from_millis(300)));
                conn.close(0u32.into(), b"probe");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(FloodOutcome {
            flood: flood.await?,
            connects,
            accepted,
            slowest,
        })
    })
}

/// HTTP clients that hurt by not finishing: `NON_READING` scrapers that
/// ask for `/metrics` and never read, and `HALF_OPEN` connections that
/// send half a request head. Returns the sockets (held open) and how many
/// connects the endpoint refused outright.
pub(super) fn http_pests(ns: &Netns, metrics: SocketAddr) -> Result<(Vec<TcpStream>, usize)> {
    ns.run(|| {
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..NON_READING + HALF_OPEN {
            let head: &[u8] = if i < NON_READING {
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            } else {
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            };
            match TcpStream::connect_timeout(&metrics, Duration::from_secs(1)) {
                Ok(mut s) => {
                    // A connection closed at once fails here or later.
                    let _ = s.write_all(head);
                    held.push(s);
                }
                Err(_) => refused += 1,
            }
        }
        (held, refused)
    })
}

/// Legitimate scrapes during an attack.
#[derive(Debug, Clone)]
pub(super) struct Scrapes {
    pub(super) n: usize,
    pub(super) slowest: Duration,
    pub(super) failed: usize,
    /// The first failure.
    pub(super) error: Option<String>,
}

/// Scrapes the receiver every half second for `duration`, sampling its
/// peak RSS.
pub(super) fn watch(rx: &mut Proc, duration: Duration) -> Scrapes {
    let every = Duration::from_millis(500);
    let (mut n, mut slowest, mut failed, mut error) = (0, Duration::ZERO, 0, None);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let t = Instant::now();
        match rx.scrape() {
            Ok(_) => slowest = slowest.max(t.elapsed()),
            Err(e) => {
                failed += 1;
                error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        n += 1;
        rx.mem();
        std::thread::sleep(every.saturating_sub(t.elapsed()));
    }
    Scrapes {
        n,
        slowest,
        failed,
        error,
    }
}
