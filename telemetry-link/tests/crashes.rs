//! The receiver killed at every step of its state-writing path: a real
//! receiver process aborts at a named crash point (`TELEMETRY_LINK_CRASH_AT`,
//! compiled into test builds only), or is killed with SIGKILL mid-stream,
//! while two senders stream to it; a second process on the same state
//! directory takes over. Checked for every sender stream:
//!
//! * nothing lost: every record reached a handler, and every sender drains;
//! * acks only after durability: the position the second process recovers
//!   is at least what the senders had been acknowledged;
//! * never a position that was not applied: it is at most what the first
//!   process handed to its handler;
//! * nothing applied twice beyond the documented window: the records both
//!   processes handed over are exactly those the first one applied after
//!   its last durable position.

#![allow(clippy::too_many_lines)] // a crash test reads top to bottom as one scenario

use std::{
    collections::BTreeMap, net::SocketAddr, path::Path, process::Command, sync::Arc, time::Duration,
};

use telemetry_link::{Applied, Delivery, Handler, HandlerError, Receiver, Sender};
use telemetry_test_support::{
    link::{metric, start_sender},
    pki::TestPki,
    process::ChildProcess,
};

const STREAMS: [&str; 2] = ["c1", "c2"];
const N: u64 = 600;

/// Prints every delivery as `D <sender> <first> <last>`, flushed at once.
struct Printing;

impl Handler<u64> for Printing {
    async fn handle(&self, d: Delivery<u64>) -> Result<Applied, HandlerError> {
        let last = d.first_seq + d.records.len() as u64 - 1;
        println!("D {} {} {last}", d.sender, d.first_seq);
        Ok(Applied::all())
    }
}

/// Runs only as a child process: a receiver on `CHILD_LISTEN` with state in
/// `CHILD_STATE` that prints its recovered positions (`R <sender>
/// <applied>`) and every delivery, until it is killed or crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child-process entry point of the crash tests"]
async fn child_crash_receiver_entry() -> anyhow::Result<()> {
    telemetry_test_support::init();
    let env = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set"));
    let tls =
        telemetry_link::TlsFiles::new(env("CHILD_CA")?, env("CHILD_CERT")?, env("CHILD_KEY")?);
    let cfg = telemetry_link::ReceiverConfig::new(
        env("CHILD_LISTEN")?.parse()?,
        tls,
        env("CHILD_STATE")?,
    );
    let registry = prometheus::Registry::new();
    let _r = Receiver::start::<u64, _>(cfg, Arc::new(Printing), &registry).await?;
    // The test harness's "test ... " has no line end yet.
    println!();
    for s in STREAMS {
        let applied = metric(&registry, "telemetry_link_applied_seq", &[("sender", s)]);
        println!("R {s} {applied}");
    }
    println!("child receiver listening");
    std::future::pending::<()>().await;
    Ok(())
}

fn spawn_receiver(
    pki: &TestPki,
    listen: SocketAddr,
    state: &Path,
    crash_at: Option<&str>,
) -> anyhow::Result<ChildProcess> {
    let tls = pki.receiver()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--ignored",
        "--exact",
        "child_crash_receiver_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CHILD_CA", &tls.ca)
    .env("CHILD_CERT", &tls.cert)
    .env("CHILD_KEY", &tls.key)
    .env("CHILD_LISTEN", listen.to_string())
    .env("CHILD_STATE", state)
    // Small enough that a compaction comes every few write cycles.
    .env("TELEMETRY_LINK_COMPACT_BYTES", "1024");
    if let Some(point) = crash_at {
        cmd.env("TELEMETRY_LINK_CRASH_AT", point);
    }
    let child = ChildProcess::spawn("crash-receiver", cmd)?;
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    while !child.output().contains("child receiver listening") {
        anyhow::ensure!(
            std::time::Instant::now() < limit,
            "child receiver did not start:\n{}",
            child.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// What one receiver process printed, per sender.
#[derive(Debug, Default)]
struct Printed {
    recovered: BTreeMap<String, u64>,
    delivered: BTreeMap<String, Vec<(u64, u64)>>,
}

fn parse(output: &str) -> anyhow::Result<Printed> {
    let mut p = Printed::default();
    for line in output.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["R", s, applied] => {
                p.recovered
                    .insert((*s).to_owned(), applied.parse::<f64>()? as u64);
            }
            ["D", s, first, last] => p
                .delivered
                .entry((*s).to_owned())
                .or_default()
                .push((first.parse()?, last.parse()?)),
            _ => {}
        }
    }
    Ok(p)
}

/// Each sender sends 1..=N in small batches, a little at a time.
fn produce(sender: &Sender<u64>) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let sender = sender.clone();
    tokio::spawn(async move {
        let values: Vec<u64> = (1..=N).collect();
        for chunk in values.chunks(3) {
            sender.send_batch(chunk).await?;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        Ok(())
    })
}

/// Starts a receiver that dies by `kill` (a crash point, or SIGKILL after
/// some records), restarts it, and checks the guarantees of the module
/// docs.
async fn crash_and_recover(crash_at: Option<&str>) -> anyhow::Result<()> {
    telemetry_test_support::init();
    let pki = TestPki::new()?;
    let state = tempfile::tempdir()?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = spawn_receiver(&pki, addr, state.path(), crash_at)?;
    let mut senders = Vec::new();
    let mut spools = Vec::new();
    for id in STREAMS {
        let spool = tempfile::tempdir()?;
        let (s, _) = start_sender::<u64>(&pki, id, &[addr], spool.path(), |c| {
            c.backoff_cap = Duration::from_millis(200);
        })
        .await?;
        spools.push(spool);
        senders.push(s);
    }
    let producers: Vec<_> = senders.iter().map(produce).collect();
    let died = match crash_at {
        Some(_) => {
            tokio::task::spawn_blocking(move || {
                let status = first.wait_timeout(Duration::from_secs(60));
                (status, first.output())
            })
            .await?
        }
        None => {
            let limit = tokio::time::Instant::now() + Duration::from_secs(60);
            while senders[0].stats().acked_seq < N / 3 {
                anyhow::ensure!(tokio::time::Instant::now() < limit, "no progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (first.kill_9(), first.output())
        }
    };
    let (status, first_output) = died;
    let status = status?;
    anyhow::ensure!(
        !status.success(),
        "the receiver did not crash:\n{first_output}"
    );
    if let Some(point) = crash_at {
        let name = point.split(':').next().unwrap_or(point);
        anyhow::ensure!(
            first_output.contains(&format!("crash point {name} reached")),
            "did not crash at {point}:\n{first_output}"
        );
    }
    // Every ack the dead process sent has arrived or never will.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked_at_crash: Vec<u64> = senders.iter().map(|s| s.stats().acked_seq).collect();

    let second = tokio::task::spawn_blocking({
        let state = state.path().to_path_buf();
        move || {
            let c = spawn_receiver(&pki, addr, &state, None);
            (c, pki)
        }
    })
    .await?;
    let (second, _pki) = (second.0?, second.1);
    for p in producers {
        p.await??;
    }
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    while senders.iter().any(|s| s.stats().acked_seq < N) {
        anyhow::ensure!(
            tokio::time::Instant::now() < limit,
            "senders did not drain after the restart: acked {:?}",
            senders
                .iter()
                .map(|s| s.stats().acked_seq)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in &senders {
        assert!(s.shutdown(Duration::from_secs(10)).await.drained);
    }
    let second_output = second.output();
    if std::env::var_os("CRASH_TEST_VERBOSE").is_some() {
        eprintln!("first:\n{first_output}\nsecond:\n{second_output}");
    }
    let (before, after) = (parse(&first_output)?, parse(&second_output)?);
    let mut mid_stream = false;
    for (i, id) in STREAMS.iter().enumerate() {
        let applied_first = check_stream(id, acked_at_crash[i], &before, &after);
        mid_stream |= applied_first > 0 && applied_first < N;
    }
    anyhow::ensure!(mid_stream, "the receiver did not die mid-stream");
    Ok(())
}

/// The guarantees of the module docs for one sender stream; returns the
/// last sequence the first process applied.
fn check_stream(id: &str, acked_at_crash: u64, before: &Printed, after: &Printed) -> u64 {
    let ranges = |p: &Printed| p.delivered.get(id).cloned().unwrap_or_default();
    let (first, second) = (ranges(before), ranges(after));
    let seqs = |r: &[(u64, u64)]| -> Vec<u64> { r.iter().flat_map(|&(a, b)| a..=b).collect() };
    let (s1, s2) = (seqs(&first), seqs(&second));
    // Each process hands each record over at most once, in order.
    for s in [&s1, &s2] {
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{id}: {s:?}");
    }
    let recovered = after.recovered.get(id).copied().unwrap_or(0);
    let applied_first = s1.last().copied().unwrap_or(0);
    assert!(
        recovered >= acked_at_crash,
        "{id}: recovered {recovered} below the acknowledged {acked_at_crash}"
    );
    assert!(
        recovered <= applied_first,
        "{id}: recovered {recovered}, but only {applied_first} were applied"
    );
    // The second process resumes right after the recovered position...
    if let Some(&start) = s2.first() {
        assert_eq!(start, recovered + 1, "{id}");
    }
    // ... so the records handed over twice are exactly the first
    // process's applied-but-not-durable tail.
    let twice: Vec<u64> = s2.iter().copied().filter(|s| *s <= applied_first).collect();
    let tail: Vec<u64> = (recovered + 1..=applied_first).collect();
    assert_eq!(twice, tail, "{id}");
    // Nothing lost.
    let mut all: Vec<u64> = s1.iter().chain(&s2).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=N).collect::<Vec<_>>(), "{id}");
    eprintln!(
        "{id}: acknowledged {acked_at_crash}, recovered {recovered}, applied {applied_first}, handed over twice {}",
        twice.len()
    );
    applied_first
}

macro_rules! crash_test {
    ($name:ident, $point:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> anyhow::Result<()> {
            crash_and_recover($point).await
        }
    };
}

crash_test!(
    killed_before_a_journal_write,
    Some("journal-before-write:40")
);
crash_test!(
    killed_after_a_journal_write_before_its_sync,
    Some("journal-after-write:40")
);
crash_test!(
    killed_after_a_journal_sync_before_the_acks,
    Some("journal-after-sync:40")
);
crash_test!(
    killed_in_a_compaction_after_the_snapshot_write,
    Some("compact-after-snapshot-write:3")
);
crash_test!(
    killed_in_a_compaction_after_the_snapshot_rename,
    Some("compact-after-snapshot-rename:3")
);
crash_test!(
    killed_in_a_compaction_before_the_journal_reset,
    Some("compact-before-journal-reset:3")
);
crash_test!(
    killed_in_a_compaction_after_the_new_journal_write,
    Some("compact-after-journal-write:3")
);
crash_test!(killed_with_sigkill_mid_stream, None);
