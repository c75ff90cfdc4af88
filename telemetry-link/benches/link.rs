//! Link benchmark: figures, not pass/fail. Run in release:
//!
//! ```text
//! cargo bench -p telemetry-link --bench link
//! ```
//!
//! In one process on loopback it measures, side by side:
//! 1. end-to-end records/s (spool on, fsync per batch) for u64 records and
//!    for metric samples, and the same link payload rate in MB/s next to a
//!    raw quinn single-stream transfer (the ceiling);
//! 2. bytes per sample in steady state — link frames and UDP payload — next
//!    to the same samples as Prometheus remote_write 1.0 (protobuf + snappy);
//! 3. p50/p99 latency from `send` to the handler at a fixed 10,000 records/s,
//!    with batches sent at once (linger 0) and with the default linger;
//! 4. a steady trickle of 100 records/s paced as the synthetic source
//!    paces it (one send per 100 ms tick, sends pipelined): batches,
//!    datagrams and spool fsyncs per second, with linger 0 and the default
//!    linger, and at a 10 ms tick for comparison (each send's fsync ends
//!    before the next tick, so a finer tick means more fsyncs);
//! 5. spool append MB/s with fsync per batch and without fsync.
//!
//! The throughput and byte figures use linger 0 (`start_sender`'s test
//! default): they measure the link, not the wait.
//!
//! `BENCH_SCALE` (default 1.0) scales the record counts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use telemetry_link::{
    internals::Spool,
    net::{Applied, Delivery, Handler, HandlerError, DEFAULT_LINGER},
    FsyncPolicy, Sample, SeriesKey, SpoolConfig,
};
use telemetry_test_support::{
    link::{metric, start_receiver, start_sender},
    pki::TestPki,
};

fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: u64) -> u64 {
    ((n as f64) * scale()).max(1000.0) as u64
}

/// Counts deliveries; records latency when payloads carry send times.
struct Counting {
    count: AtomicU64,
    deliveries: AtomicU64,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    base: Instant,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            latency: Mutex::new(hdrhistogram::Histogram::new(3).expect("histogram")),
            base: Instant::now(),
        })
    }

    async fn wait(&self, n: u64, limit: Duration) -> bool {
        let start = Instant::now();
        while self.count.load(Ordering::Relaxed) < n {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

impl Handler<u64> for Counting {
    async fn handle(&self, d: Delivery<u64>) -> Result<Applied, HandlerError> {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.count
            .fetch_add(d.records.len() as u64, Ordering::Relaxed);
        Ok(Applied::all())
    }
}

/// Payload carrying its send time (ns since the handler's base instant).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Stamped(u64);
impl telemetry_link::Payload for Stamped {}

struct Latency(Arc<Counting>);
impl Handler<Stamped> for Latency {
    async fn handle(&self, d: Delivery<Stamped>) -> Result<Applied, HandlerError> {
        let now = self.0.base.elapsed().as_nanos() as u64;
        if let Ok(mut h) = self.0.latency.lock() {
            for r in &d.records {
                let _ = h.record(now.saturating_sub(r.0) / 1000);
            }
        }
        self.0
            .count
            .fetch_add(d.records.len() as u64, Ordering::Relaxed);
        Ok(Applied::all())
    }
}

struct Samples(Arc<Counting>);
impl Handler<Sample> for Samples {
    async fn handle(&self, d: Delivery<Sample>) -> Result<Applied, HandlerError> {
        self.0
            .count
            .fetch_add(d.records.len() as u64, Ordering::Relaxed);
        Ok(Applied::all())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Round-robin in a stable order, like consecutive scrapes; value = running
/// counter; the clock advances 1 ms per 1000 samples.
fn synthetic(keys: &[Arc<SeriesKey>], start: u64, n: usize) -> Vec<Sample> {
    let ts = now_ms();
    (0..n as u64)
        .map(|i| {
            let seq = start + i;
            let k = (seq % keys.len() as u64) as usize;
            Sample::new(keys[k].clone(), ts + (seq / 1000) as i64, seq as f64)
        })
        .collect()
}

/// Worst case: every sample picks a random series (no order to exploit) and
/// its value is the global counter (irregular steps per series).
fn random_samples(keys: &[Arc<SeriesKey>], start: u64, n: usize) -> Vec<Sample> {
    let ts = now_ms();
    (0..n as u64)
        .map(|i| {
            let seq = start + i;
            let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let k = ((z ^ (z >> 31)) % keys.len() as u64) as usize;
            Sample::new(keys[k].clone(), ts + (seq / 1000) as i64, seq as f64)
        })
        .collect()
}

fn series(n: usize) -> Vec<Arc<SeriesKey>> {
    (0..n)
        .map(|i| {
            Arc::new(
                SeriesKey::new(
                    "telemetry_synthetic_value",
                    [("cluster", "bench".to_string()), ("series", i.to_string())],
                )
                .expect("valid key"),
            )
        })
        .collect()
}

async fn e2e_u64(pki: &TestPki, n: u64) -> anyhow::Result<(f64, f64)> {
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let c = Counting::new();
    let (r, _) = start_receiver::<u64, _>(pki, 0, state.path(), c.clone(), |_| {}).await?;
    let (s, reg) =
        start_sender::<u64>(pki, "bench", &[r.local_addr()], spool.path(), |_| {}).await?;
    let start = Instant::now();
    let producer = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut next = 1u64;
            while next <= n {
                let end = (next + 4095).min(n);
                let v: Vec<u64> = (next..=end).collect();
                s.send_batch_blocking(&v)?;
                next = end + 1;
            }
            anyhow::Ok(())
        })
    };
    anyhow::ensure!(
        c.wait(n, Duration::from_secs(600)).await,
        "e2e u64 did not complete"
    );
    let secs = start.elapsed().as_secs_f64();
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let frame_bytes = metric(&reg, "telemetry_sender_bytes_sent_total", &[]);
    s.shutdown(Duration::from_secs(10)).await;
    r.shutdown(Duration::from_secs(5)).await;
    Ok((n as f64 / secs, frame_bytes / secs / 1e6))
}

struct WireFigures {
    rate: f64,
    frame_bytes_per_sample: f64,
    udp_bytes_per_sample: f64,
}

async fn e2e_samples(
    pki: &TestPki,
    n: u64,
    keys: &[Arc<SeriesKey>],
    make: fn(&[Arc<SeriesKey>], u64, usize) -> Vec<Sample>,
) -> anyhow::Result<WireFigures> {
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let c = Counting::new();
    let (r, _) =
        start_receiver::<Sample, _>(pki, 0, state.path(), Arc::new(Samples(c.clone())), |_| {})
            .await?;
    let (s, reg) = start_sender::<Sample>(
        pki,
        "bench-samples",
        &[r.local_addr()],
        spool.path(),
        |_| {},
    )
    .await?;
    // Warm-up: every series defined once (interning), then measure steady state.
    let warm = synthetic(keys, 0, keys.len() * 2);
    s.send_batch(&warm).await?;
    anyhow::ensure!(
        c.wait(warm.len() as u64, Duration::from_secs(60)).await,
        "warm-up"
    );
    let frame0 = metric(&reg, "telemetry_sender_bytes_sent_total", &[]);
    let udp0 = s.quic_stats().map_or(0, |q| q.udp_tx.bytes);
    let start = Instant::now();
    let batch = 4096usize;
    let mut produced = 0u64;
    let mut seq = warm.len() as u64;
    while produced < n {
        let k = batch.min((n - produced) as usize);
        let v = make(keys, seq, k);
        s.send_batch(&v).await?;
        seq += k as u64;
        produced += k as u64;
    }
    let total = warm.len() as u64 + n;
    anyhow::ensure!(
        c.wait(total, Duration::from_secs(600)).await,
        "e2e samples did not complete"
    );
    let secs = start.elapsed().as_secs_f64();
    let frames = metric(&reg, "telemetry_sender_bytes_sent_total", &[]) - frame0;
    let udp = s.quic_stats().map_or(0, |q| q.udp_tx.bytes) - udp0;
    s.shutdown(Duration::from_secs(10)).await;
    r.shutdown(Duration::from_secs(5)).await;
    Ok(WireFigures {
        rate: n as f64 / secs,
        frame_bytes_per_sample: frames / n as f64,
        udp_bytes_per_sample: udp as f64 / n as f64,
    })
}

async fn latency(
    pki: &TestPki,
    rate: u64,
    seconds: u64,
    linger: Duration,
) -> anyhow::Result<(f64, f64, f64)> {
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let c = Counting::new();
    let (r, _) =
        start_receiver::<Stamped, _>(pki, 0, state.path(), Arc::new(Latency(c.clone())), |_| {})
            .await?;
    let (s, _) = start_sender::<Stamped>(pki, "latency", &[r.local_addr()], spool.path(), |c| {
        c.linger = linger;
    })
    .await?;
    // 10 records every millisecond, each stamped when it is handed over.
    let per_tick = (rate / 1000).max(1);
    let ticks = seconds * 1000;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..ticks {
        interval.tick().await;
        let t = c.base.elapsed().as_nanos() as u64;
        let v: Vec<Stamped> = (0..per_tick).map(|_| Stamped(t)).collect();
        s.send_batch(&v).await?;
    }
    anyhow::ensure!(
        c.wait(ticks * per_tick, Duration::from_secs(60)).await,
        "latency run incomplete"
    );
    let h = c
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    s.shutdown(Duration::from_secs(5)).await;
    r.shutdown(Duration::from_secs(5)).await;
    Ok((
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    ))
}

/// Per-second costs of a steady trickle.
struct Trickle {
    batches: f64,
    datagrams: f64,
    syncs: f64,
}

/// The synthetic source's pacing tick (`telemetry_sources::synthetic::TICK`).
const SYNTHETIC_TICK: Duration = Duration::from_millis(100);

/// `rate` records/s for `seconds`, one send per `tick`, up to 8 sends in
/// flight (as the synthetic source does at `SYNTHETIC_TICK`).
async fn trickle(
    pki: &TestPki,
    rate: u64,
    seconds: u64,
    tick: Duration,
    linger: Duration,
) -> anyhow::Result<Trickle> {
    let (state, spool) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let c = Counting::new();
    let (r, _) = start_receiver::<u64, _>(pki, 0, state.path(), c.clone(), |_| {}).await?;
    let (s, reg) = start_sender::<u64>(pki, "trickle", &[r.local_addr()], spool.path(), |cfg| {
        cfg.linger = linger;
    })
    .await?;
    let mut status = s.status();
    status.wait_for(|st| st.connected).await?;
    let ticks_per_second = (1000 / tick.as_millis().max(1)) as u64;
    let per_tick = (rate / ticks_per_second).max(1);
    let ticks = seconds * ticks_per_second;
    let (syncs0, dgrams0) = (
        metric(&reg, "telemetry_sender_spool_syncs_total", &[]),
        metric(&reg, "telemetry_sender_udp_datagrams_sent_total", &[]),
    );
    let start = Instant::now();
    let mut interval = tokio::time::interval(tick);
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u64;
    for _ in 0..ticks {
        interval.tick().await;
        let v: Vec<u64> = (next..next + per_tick).collect();
        next += per_tick;
        let s = s.clone();
        in_flight.push_back(tokio::spawn(async move { s.send_batch(&v).await }));
        while in_flight.len() > 8 {
            if let Some(h) = in_flight.pop_front() {
                h.await??;
            }
        }
    }
    for h in in_flight {
        h.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let figures = Trickle {
        batches: c.deliveries.load(Ordering::Relaxed) as f64 / secs,
        datagrams: (metric(&reg, "telemetry_sender_udp_datagrams_sent_total", &[]) - dgrams0)
            / secs,
        syncs: (metric(&reg, "telemetry_sender_spool_syncs_total", &[]) - syncs0) / secs,
    };
    s.shutdown(Duration::from_secs(5)).await;
    r.shutdown(Duration::from_secs(5)).await;
    Ok(figures)
}

fn spool_append(fsync: FsyncPolicy, records: usize, size: usize) -> anyhow::Result<f64> {
    let d = tempfile::tempdir()?;
    let (mut spool, _) = Spool::open(
        d.path(),
        SpoolConfig {
            max_bytes: 8 << 30,
            fsync,
            ..SpoolConfig::default()
        },
    )?;
    let payload = vec![0xabu8; size];
    let batch: Vec<&[u8]> = (0..4096).map(|_| payload.as_slice()).collect();
    let start = Instant::now();
    let mut done = 0;
    while done < records {
        spool.append(&batch)?;
        done += batch.len();
    }
    spool.sync()?;
    Ok((done * (size + 16)) as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Raw quinn: one stream, client writes `bytes`, server reads and discards.
async fn raw_quinn(pki: &TestPki, bytes: usize) -> anyhow::Result<f64> {
    use telemetry_link::tls::{Role, TlsMaterial};
    let rx = TlsMaterial::load(&pki.receiver()?, Role::Receiver)?;
    let tx = TlsMaterial::load(&pki.sender("raw")?, Role::Sender)?;
    let scfg = rx.server_config(Arc::new(|_| {}))?;
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(scfg)?,
        )),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )?;
    let addr = server.local_addr()?;
    let sink = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("no conn"))?
            .await?;
        let (_s, mut r) = conn.accept_bi().await?;
        let mut total = 0usize;
        while let Some(chunk) = r.read_chunk(1 << 20, true).await? {
            total += chunk.bytes.len();
        }
        anyhow::Ok(total)
    });
    let mut client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tx.client_config()?)?,
    )));
    let conn = client.connect(addr, "localhost")?.await?;
    let (mut s, _r) = conn.open_bi().await?;
    let buf = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&buf).await?;
        sent += buf.len();
    }
    s.finish()?;
    let got = sink.await??;
    anyhow::ensure!(got == sent, "raw quinn lost bytes");
    Ok(sent as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// The same samples as Prometheus remote_write 1.0: a protobuf WriteRequest
/// per `per_request` samples (grouped by series), snappy block-compressed.
fn remote_write_bytes_per_sample(samples: &[Sample], per_request: usize) -> f64 {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
        varint(out, u64::from(field << 3 | 2));
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut total = 0usize;
    let mut encoder = snap::raw::Encoder::new();
    for chunk in samples.chunks(per_request) {
        let mut by_series: Vec<(&Arc<SeriesKey>, Vec<&Sample>)> = Vec::new();
        for s in chunk {
            match by_series
                .iter_mut()
                .find(|(k, _)| Arc::ptr_eq(k, &s.series))
            {
                Some((_, v)) => v.push(s),
                None => by_series.push((&s.series, vec![s])),
            }
        }
        let mut req = Vec::new();
        for (key, ss) in by_series {
            let mut ts = Vec::new();
            let mut labels = vec![("__name__", key.name())];
            labels.extend(key.labels().iter().map(|(k, v)| (k.as_str(), v.as_str())));
            for (k, v) in labels {
                let mut l = Vec::new();
                field_bytes(&mut l, 1, k.as_bytes());
                field_bytes(&mut l, 2, v.as_bytes());
                field_bytes(&mut ts, 1, &l);
            }
            for s in ss {
                let mut smp = vec![0x09]; // field 1, fixed64 (double)
                smp.extend_from_slice(&s.value.to_le_bytes());
                smp.push(0x10); // field 2, varint (int64)
                varint(&mut smp, s.timestamp_ms as u64);
                field_bytes(&mut ts, 2, &smp);
            }
            field_bytes(&mut req, 1, &ts);
        }
        total += encoder
            .compress_vec(&req)
            .map(|v| v.len())
            .unwrap_or(req.len());
    }
    total as f64 / samples.len() as f64
}

fn main() -> anyhow::Result<()> {
    telemetry_link::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pki = TestPki::new()?;
        println!("telemetry-link benchmark — {}", telemetry_test_support::machine());
        if cfg!(debug_assertions) {
            println!("(debug build: figures are meaningless; use cargo bench)");
        }
        let n = scaled(2_000_000);
        let (rate, mbps) = e2e_u64(&pki, n).await?;
        println!("e2e u64 records (fsync per batch):   {:>10.0} records/s   link frames {:.1} MB/s", rate, mbps);
        let raw = raw_quinn(&pki, 512 << 20).await?;
        println!("raw quinn single stream (ceiling):  {:>10.1} MB/s          link frames / raw = {:.3}", raw, mbps / raw);
        let keys = series(1000);
        let w = e2e_samples(&pki, scaled(2_000_000), &keys, synthetic).await?;
        println!("e2e samples, 1000 series, stable order: {:>10.0} samples/s", w.rate);
        println!("  link frame bytes per sample:       {:>10.2}", w.frame_bytes_per_sample);
        println!("  UDP payload bytes per sample:      {:>10.2}  (QUIC + TLS overhead, acks excluded)", w.udp_bytes_per_sample);
        let ws = e2e_samples(&pki, scaled(1_000_000), &keys, random_samples).await?;
        println!("e2e samples, 1000 series, random:       {:>10.0} samples/s", ws.rate);
        println!("  link frame bytes per sample:       {:>10.2}", ws.frame_bytes_per_sample);
        println!("  UDP payload bytes per sample:      {:>10.2}", ws.udp_bytes_per_sample);
        let stable_set = synthetic(&keys, 0, 100_000);
        let random_set = random_samples(&keys, 0, 100_000);
        for per_req in [500usize, 2000] {
            let rw_stable = remote_write_bytes_per_sample(&stable_set, per_req);
            let rw_random = remote_write_bytes_per_sample(&random_set, per_req);
            println!(
                "  remote_write 1.0 ({per_req:>4}/request): {rw_stable:>6.2} (stable) / {rw_random:.2} (random) bytes/sample; link = {:.3} / {:.3} of it",
                w.frame_bytes_per_sample / rw_stable,
                ws.frame_bytes_per_sample / rw_random
            );
        }
        for (what, linger) in [("linger 0", Duration::ZERO), ("default linger", DEFAULT_LINGER)] {
            let (p50, p99, max) = latency(&pki, 10_000, 10, linger).await?;
            println!("latency send→handler @10k rec/s, {what}: p50 {p50:.2} ms   p99 {p99:.2} ms   max {max:.2} ms");
        }
        let trickles = [
            ("100 ms tick, linger 0", SYNTHETIC_TICK, Duration::ZERO),
            ("100 ms tick, default linger", SYNTHETIC_TICK, DEFAULT_LINGER),
            ("10 ms tick, default linger", Duration::from_millis(10), DEFAULT_LINGER),
        ];
        for (what, tick, linger) in trickles {
            let t = trickle(&pki, 100, 10, tick, linger).await?;
            println!(
                "100 rec/s trickle, {what}: {:.1} batches/s, {:.1} datagrams/s, {:.1} spool fsyncs/s",
                t.batches, t.datagrams, t.syncs
            );
        }
        let recs = scaled(2_000_000) as usize;
        let synced = spool_append(FsyncPolicy::EveryBatch, recs, 64)?;
        let unsynced = spool_append(FsyncPolicy::Never, recs, 64)?;
        println!("spool append, 64 B records, 4096/batch: fsync per batch {synced:.0} MB/s, no fsync {unsynced:.0} MB/s");
        anyhow::Ok(())
    })
}
