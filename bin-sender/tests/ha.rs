//! A highly available sender, with real processes: two `telemetry-sender`
//! replicas (`--leader-elect`, one certificate identity, a spool each) watch
//! the test Kubernetes API server, each through its own `ApiProxy`, and ship
//! to one real `telemetry-receiver`, each through its own `UdpProxy`, so
//! either can be cut off from the API server or from the receiver alone.
//! Leases are short (3 s / 2 s / 500 ms) and the assertions use them.
//!
//! While a test runs, a ticker moves the cluster forward (an HPA's replica
//! count and a pod's CPU usage grow every 300 ms) and a monitor scrapes the
//! receiver every 100 ms; at the end every test asserts, at the receiver:
//! no series of those and no scale-event counter ever moved back, each
//! rescale counted exactly once, nothing lost, every replica's stream
//! applied up to its last sequence (each record applied or refused once),
//! and refusals counted alike on both ends.
//!
//! The receiver binary is taken from the target directory: build it first
//! (`cargo build -p telemetry-receiver`, or `cargo test --workspace`). The
//! tests run one at a time (they share the machine's cores and time
//! bounds).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::json;
use telemetry_link::TlsFiles;
use telemetry_test_support::{
    http::get,
    kube_api::{
        objects::{now_time, pod_metrics, rescale_event, HpaBuilder, PodBuilder},
        ApiProxy, KubeApiServer,
    },
    pki::TestPki,
    prom::Exposition,
    running::{log_time, poll, RunningReceiver, RunningSender},
    udp_proxy::UdpProxy,
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const CLUSTER: &str = "ha-cluster";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const ELECTION: [&str; 8] = [
    "--leader-elect",
    "--lease-duration=3s",
    "--renew-deadline=2s",
    "--retry-period=500ms",
    "--lease-namespace=default",
    "--source=kube",
    "--metrics-interval=1s",
    "--shutdown-timeout=3s",
];
/// An ordinary wait.
const WAIT: Duration = Duration::from_secs(30);
/// Series whose values only grow in these tests.
const MONOTONIC: [&str; 3] = [
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_scale_events_total",
    "kube_pod_container_cpu_usage_cores",
];

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// The cluster, the receiver and the replicas
// ---------------------------------------------------------------------------

/// The API server with its runtime, the receiver, the certificates, the
/// ticker and the monitor.
struct Cluster {
    rt: Runtime,
    api: Arc<KubeApiServer>,
    receiver: RunningReceiver,
    sender_tls: TlsFiles,
    /// Rescale occurrences created (each must count once).
    rescales: i32,
    ticker: Option<Ticker>,
    monitor: Option<Monitor>,
    _pki: TestPki,
    dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = Arc::new(rt.block_on(KubeApiServer::start()).unwrap());
        let pki = TestPki::new().unwrap();
        let receiver = RunningReceiver::start(&pki.receiver().unwrap(), &[]).unwrap();
        api.upsert_pod(
            &PodBuilder::new("shop", "web-1")
                .container("app", Some("100m"), Some("64Mi"))
                .node("node-a")
                .phase("Running")
                .build(),
        );
        api.upsert_hpa(&web_hpa(1, None));
        let ticker = Ticker::start(api.clone());
        let monitor = Monitor::start(receiver.metrics);
        Cluster {
            rt,
            api,
            receiver,
            sender_tls: pki.sender(CLUSTER).unwrap(),
            rescales: 0,
            ticker: Some(ticker),
            monitor: Some(monitor),
            _pki: pki,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn replica(&self, id: &'static str) -> Replica {
        let (proxy, udp) = self.rt.block_on(async {
            (
                ApiProxy::start(self.api.addr()).await.unwrap(),
                UdpProxy::start(self.receiver.quic).await.unwrap(),
            )
        });
        let kubeconfig = self.dir.path().join(format!("{id}.kubeconfig"));
        proxy.write_kubeconfig(&kubeconfig).unwrap();
        Replica {
            id,
            proxy,
            udp,
            kubeconfig,
            spool: self.dir.path().join(format!("{id}-spool")),
            proc: None,
        }
    }

    fn page(&self) -> Exposition {
        self.receiver.scrape().unwrap()
    }

    /// A pod (`Running`) only a replica that watches now can report.
    fn add_pod(&self, name: &str) {
        self.api.upsert_pod(
            &PodBuilder::new("shop", name)
                .container("app", Some("50m"), Some("32Mi"))
                .node("node-b")
                .phase("Running")
                .build(),
        );
    }

    fn shows_pod(&self, name: &str) -> bool {
        self.page()
            .value(
                "kube_pod_status_phase",
                &[("cluster", CLUSTER), ("pod", name), ("phase", "Running")],
            )
            .is_some_and(|v| v == 1.0)
    }

    fn wait_pod(&self, name: &str, limit: Duration, replicas: &[&Replica]) -> Duration {
        let start = Instant::now();
        poll(
            limit,
            Duration::from_millis(50),
            &format!("pod {name} at the receiver"),
            || self.shows_pod(name).then_some(()),
            || self.outputs(replicas),
        )
        .unwrap();
        start.elapsed()
    }

    /// A new rescale of HPA `web` from `from` to `replicas` (one
    /// occurrence), as the HPA controller writes it: the status of the
    /// rescaling reconcile, the event, the settled status.
    fn rescale(&mut self, from: i32, replicas: i32) {
        self.rescales += 1;
        // The HPA controller rescales an HPA at most every 15 s (its sync
        // period): space the occurrence times as it would.
        let t = Time(
            Timestamp::from_second(now_time().0.as_second() + 15 * i64::from(self.rescales))
                .unwrap(),
        );
        self.api.upsert_hpa(
            &HpaBuilder::new("shop", "web")
                .replicas(1, 20)
                .resource_utilization("cpu", 50)
                .status(from, replicas, Some(t.clone()))
                .build(),
        );
        self.api.upsert_event(&rescale_event(
            "shop",
            &format!("web.{}", self.rescales),
            "web",
            1,
            replicas,
            "cpu resource utilization (percentage of request) above target",
            (t.clone(), t.clone()),
        ));
        self.api.upsert_hpa(&web_hpa(replicas, Some(t)));
    }

    /// Scale events counted at the receiver, both directions.
    fn counted(&self) -> f64 {
        self.page().sum(
            "kube_horizontalpodautoscaler_scale_events_total",
            &[("cluster", CLUSTER), ("horizontalpodautoscaler", "web")],
        )
    }

    fn outputs(&self, replicas: &[&Replica]) -> String {
        let mut out = format!("receiver output:\n{}", self.receiver.proc.output());
        for r in replicas {
            if let Some(p) = &r.proc {
                out += &format!("\n\nreplica {} output:\n{}", r.id, p.proc.output());
            }
        }
        out
    }

    /// The checks every test ends with (see the module documentation).
    fn assert_exact(mut self, replicas: &[&Replica]) {
        self.ticker.take().unwrap().stop();
        let want = f64::from(self.rescales);
        let counted = poll(
            WAIT,
            Duration::from_millis(100),
            "every rescale counted",
            || (self.counted() >= want).then(|| self.counted()),
            || self.outputs(replicas),
        )
        .unwrap();
        assert_eq!(counted, want, "each rescale counted exactly once");
        for r in replicas {
            r.wait_settled(&self);
        }
        let page = self.page();
        let sender = [("sender", CLUSTER)];
        let lost = page.sum("telemetry_link_records_lost_total", &sender);
        assert_eq!(lost, 0.0, "nothing lost");
        let applied = page.sum("telemetry_link_records_received_total", &sender);
        let refused = page.sum("telemetry_link_records_rejected_total", &sender);
        let sent: f64 = replicas
            .iter()
            .map(|r| r.metric("telemetry_sender_last_seq"))
            .sum();
        assert_eq!(
            applied + refused,
            sent,
            "every record applied or refused, once"
        );
        let fenced = page.sum(
            "telemetry_link_records_rejected_total",
            &[("sender", CLUSTER), ("reason", "fenced")],
        );
        let fenced_at_senders: f64 = replicas.iter().map(|r| r.refused("fenced")).sum();
        assert_eq!(
            fenced, fenced_at_senders,
            "fenced refusals alike on both ends"
        );
        eprintln!("at the receiver: {applied} records applied, {refused} refused ({fenced} fenced) of {sent} sent; {counted} rescales counted");
        let violations = self.monitor.take().unwrap().stop();
        assert!(violations.is_empty(), "series moved back:\n{violations:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
        // Stop the server inside its runtime before the runtime goes.
        self.rt.block_on(self.api.stop());
    }
}

/// HPA `web` settled at `replicas` since its last rescale at `scaled`, as
/// the HPA controller leaves it.
fn web_hpa(
    replicas: i32,
    scaled: Option<Time>,
) -> k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
    HpaBuilder::new("shop", "web")
        .replicas(1, 20)
        .resource_utilization("cpu", 50)
        .status(replicas, replicas, scaled)
        .build()
}

/// One sender replica: its proxies, kubeconfig and spool, and its process.
struct Replica {
    id: &'static str,
    proxy: ApiProxy,
    udp: UdpProxy,
    kubeconfig: PathBuf,
    spool: PathBuf,
    proc: Option<RunningSender>,
}

impl Replica {
    fn start(&mut self, cluster: &Cluster) {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let replica = format!("--replica-id={}", self.id);
        let mut extra: Vec<&str> = ELECTION.to_vec();
        extra.extend([kubeconfig.as_str(), replica.as_str()]);
        let tls = &cluster.sender_tls;
        let bin = env!("CARGO_BIN_EXE_telemetry-sender");
        self.proc =
            Some(RunningSender::start(bin, self.udp.addr(), tls, &self.spool, &extra).unwrap());
    }

    fn running(&self) -> &RunningSender {
        self.proc.as_ref().expect("replica running")
    }

    fn kill(&mut self) {
        self.proc
            .take()
            .expect("replica running")
            .proc
            .kill_9()
            .unwrap();
    }

    fn metric(&self, name: &str) -> f64 {
        self.running().metric(name, &[]).unwrap_or(0.0)
    }

    fn refused(&self, reason: &str) -> f64 {
        let page = self.running().scrape().unwrap();
        page.sum(
            "telemetry_sender_records_refused_total",
            &[("reason", reason)],
        )
    }

    fn leads(&self) -> bool {
        self.metric("telemetry_sender_leader") == 1.0
    }

    fn wait_role(&self, cluster: &Cluster, leader: bool) {
        let what = format!(
            "replica {} {}",
            self.id,
            if leader { "leading" } else { "standing by" }
        );
        poll(
            WAIT,
            Duration::from_millis(50),
            &what,
            || (self.leads() == leader).then_some(()),
            || cluster.outputs(&[self]),
        )
        .unwrap();
    }

    fn wait_ready(&self, cluster: &Cluster) {
        let metrics = self.running().metrics;
        let ready = || {
            get(metrics, "/readyz", &[])
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ())
        };
        poll(WAIT, Duration::from_millis(50), "readiness", ready, || {
            cluster.outputs(&[self])
        })
        .unwrap();
    }

    /// Waits until every record is acknowledged and the receiver shows
    /// this replica's stream applied exactly that far. Both pages may be up
    /// to a second old (scrapes share a rendered page), so the three
    /// figures are polled until they agree.
    fn wait_settled(&self, cluster: &Cluster) {
        poll(
            WAIT,
            Duration::from_millis(100),
            &format!("replica {} acknowledged and applied", self.id),
            || {
                let (last, acked) = (
                    self.metric("telemetry_sender_last_seq"),
                    self.metric("telemetry_sender_acked_seq"),
                );
                // A stream that never shipped has no position yet.
                let applied = cluster
                    .page()
                    .value(
                        "telemetry_link_applied_seq",
                        &[("sender", CLUSTER), ("replica", self.id)],
                    )
                    .unwrap_or(0.0);
                (last == acked && acked == applied).then_some(())
            },
            || cluster.outputs(&[self]),
        )
        .unwrap();
    }
}

// ---------------------------------------------------------------------------
// Ticker and monitor
// ---------------------------------------------------------------------------

/// Moves the cluster forward every 300 ms: HPA `ticker`'s replicas and pod
/// `web-1`'s CPU usage (metrics timestamped to the millisecond) grow.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Ticker {
    fn start(api: Arc<KubeApiServer>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let n = Arc::new(AtomicI32::new(0));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                api.upsert_hpa(
                    &HpaBuilder::new("shop", "ticker")
                        .replicas(1, 1_000_000)
                        .status(n, n, None)
                        .build(),
                );
                let mut metrics =
                    pod_metrics("shop", "web-1", &[("app", &format!("{n}m"), "64Mi")]);
                metrics["timestamp"] = json!(Timestamp::now().to_string());
                api.set_pod_metrics(metrics);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Ticker { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// Scrapes the receiver every 100 ms and records every series of
/// [`MONOTONIC`] that moved back.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Monitor {
    fn start(metrics: std::net::SocketAddr) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last: BTreeMap<String, f64> = BTreeMap::new();
            let mut violations = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok(page) = telemetry_test_support::prom::scrape(metrics) {
                    for s in page
                        .samples
                        .iter()
                        .filter(|s| MONOTONIC.contains(&s.name.as_str()))
                    {
                        let key = format!("{}{:?}", s.name, s.labels);
                        if let Some(before) = last.insert(key.clone(), s.value) {
                            if s.value < before {
                                violations.push(format!("{key}: {before} -> {}", s.value));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            violations
        });
        Monitor { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// A and B started, A leading, B a ready standby, the receiver showing
/// the cluster.
fn two_replicas(cluster: &Cluster) -> (Replica, Replica) {
    let mut a = cluster.replica("a");
    a.start(cluster);
    a.wait_role(cluster, true);
    let mut b = cluster.replica("b");
    b.start(cluster);
    b.wait_ready(cluster);
    b.wait_role(cluster, false);
    cluster.wait_pod("web-1", WAIT, &[&a, &b]);
    (a, b)
}

/// The first log line of `replica` with every one of `needles`, and its time.
fn logged(replica: &Replica, needles: &[&str]) -> String {
    let lines = replica.running().lines(needles);
    let line = lines.first().unwrap_or_else(|| {
        panic!(
            "replica {}: no log line with {needles:?}:\n{}",
            replica.id,
            replica.running().proc.output()
        )
    });
    log_time(line).expect("a timestamped line").to_owned()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Killing the standby changes nothing at the receiver; killing the leader
/// hands over to the standby, whose present shows a change made after the
/// kill within the lease duration + 3 s. The rescale the old leader
/// shipped is shipped by the new one too and counted once.
#[test]
fn the_standby_takes_over_when_the_leader_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start();
    let (mut a, mut b) = two_replicas(&cluster);
    cluster.rescale(1, 2);
    poll(
        WAIT,
        Duration::from_millis(50),
        "the first rescale",
        || (cluster.counted() == 1.0).then_some(()),
        || cluster.outputs(&[&a, &b]),
    )
    .unwrap();

    // The standby dies and comes back: nothing changes at the receiver,
    // the leader goes on alone.
    let standby_records = b.metric("telemetry_sender_last_seq");
    assert_eq!(standby_records, 0.0, "a standby ships nothing");
    let pods = |c: &Cluster| c.page().count("kube_pod_info", &[("cluster", CLUSTER)]);
    let epochs = |c: &Cluster| c.receiver.lines(&["leadership epoch advanced"]).len();
    let (pods_before, epochs_before) = (pods(&cluster), epochs(&cluster));
    b.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pods(&cluster), pods_before);
    assert_eq!(epochs(&cluster), epochs_before, "the same leader");
    assert_eq!(cluster.counted(), 1.0);
    cluster.add_pod("while-b-was-down");
    cluster.wait_pod("while-b-was-down", WAIT, &[&a]);
    assert!(a.leads());
    b.start(&cluster);
    b.wait_ready(&cluster);
    b.wait_role(&cluster, false);

    // The leader dies: the standby takes over, with a change made after.
    let epoch_a = a.metric("telemetry_sender_leader_epoch");
    a.kill();
    cluster.add_pod("after-the-kill");
    cluster.rescale(2, 3);
    let took = cluster.wait_pod(
        "after-the-kill",
        LEASE_DURATION + Duration::from_secs(3),
        &[&b],
    );
    eprintln!("takeover: the new leader's present reached the receiver {took:?} after the kill");
    assert!(b.leads());
    assert!(b.metric("telemetry_sender_leader_epoch") > epoch_a);

    // The old leader comes back as a standby and ships nothing.
    a.start(&cluster);
    a.wait_ready(&cluster);
    a.wait_role(&cluster, false);
    cluster.assert_exact(&[&a, &b]);
}

/// A leader cut off from the API server alone fences itself (stops
/// shipping) before the standby starts: it logs standing down before the
/// standby logs leading, its last record reached the receiver before the
/// standby's first, nothing of it is fenced at the receiver, and it ships
/// nothing after, even once it reaches the API server again.
#[test]
fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_starts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = Cluster::start();
    let (a, b) = two_replicas(&cluster);
    let positions = PositionWatch::start(cluster.receiver.metrics);
    a.proxy.cut();
    b.wait_role(&cluster, true);
    cluster.add_pod("after-the-cut");
    cluster.wait_pod("after-the-cut", WAIT, &[&a, &b]);
    assert!(!a.leads(), "the cut-off leader stood down");
    let a_shipped = a.metric("telemetry_sender_records_enqueued_total");
    let fenced_at = logged(&a, &["stepping down (fenced)"]);
    let leads_at = logged(&b, &["this replica leads"]);
    assert!(
        fenced_at < leads_at,
        "a fenced at {fenced_at}, b leads at {leads_at}"
    );
    let (a_last, b_first) = positions.stop();
    assert!(
        a_last < b_first,
        "a's last record applied at {a_last:?}, b's first at {b_first:?}"
    );

    a.proxy.restore();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!a.leads() && b.leads());
    assert_eq!(
        a.metric("telemetry_sender_records_enqueued_total"),
        a_shipped,
        "a standby ships nothing"
    );
    cluster.assert_exact(&[&a, &b]);
}

/// A leader cut off from the receiver alone keeps the Lease and spools;
/// once the link is back it delivers its backlog once, and the receiver
/// shows the present at once.
#[test]
fn a_leader_cut_off_from_the_receiver_keeps_the_lease_and_delivers_its_backlog_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start();
    let (a, b) = two_replicas(&cluster);
    a.udp.cut();
    let spooled = a.metric("telemetry_sender_spool_records");
    cluster.add_pod("during-the-cut");
    cluster.rescale(1, 4);
    std::thread::sleep(LEASE_DURATION * 2);
    assert!(a.leads() && !b.leads(), "the Lease stays with a");
    assert!(!cluster.shows_pod("during-the-cut"));
    assert!(
        a.metric("telemetry_sender_spool_records") > spooled,
        "a spools"
    );
    assert_eq!(
        b.metric("telemetry_sender_last_seq"),
        0.0,
        "b ships nothing"
    );

    a.udp.restore();
    cluster.wait_pod("during-the-cut", WAIT, &[&a, &b]);
    cluster.assert_exact(&[&a, &b]);
}

/// The old leader, cut off from the receiver with a backlog in its spool,
/// is killed; the standby takes over; the old leader restarts on its spool
/// and delivers the backlog exactly once as a standby: its old-epoch state
/// is refused `fenced` (counted on both ends, not lost), its rescales
/// counted once, nothing moves back.
#[test]
fn an_old_leader_restarted_with_a_backlog_delivers_it_once_and_its_state_is_fenced() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start();
    let (mut a, b) = two_replicas(&cluster);
    a.udp.cut();
    cluster.add_pod("in-the-backlog");
    cluster.rescale(1, 5);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        a.metric("telemetry_sender_spool_records") > 0.0,
        "a has a backlog"
    );
    a.kill();
    b.wait_role(&cluster, true);
    cluster.wait_pod("in-the-backlog", WAIT, &[&b]);

    a.udp.restore();
    a.start(&cluster);
    a.wait_role(&cluster, false);
    poll(
        WAIT,
        Duration::from_millis(100),
        "a's backlog refused in part",
        || (a.refused("fenced") > 0.0).then_some(()),
        || cluster.outputs(&[&a, &b]),
    )
    .unwrap();
    cluster.assert_exact(&[&a, &b]);
}

/// When each replica's applied position last / first moved at the receiver.
struct PositionWatch {
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Option<Instant>, Option<Instant>)>,
}

impl PositionWatch {
    /// Watches `telemetry_link_applied_seq` of replicas a (its last move)
    /// and b (its first move) every 20 ms.
    fn start(metrics: std::net::SocketAddr) -> PositionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut a_seen, mut b_seen) = (None, 0.0);
            let (mut a_last, mut b_first) = (None, None);
            while !flag.load(Ordering::SeqCst) {
                if let Ok(page) = telemetry_test_support::prom::scrape(metrics) {
                    let at = |r: &str| {
                        let labels = [("sender", CLUSTER), ("replica", r)];
                        page.value("telemetry_link_applied_seq", &labels)
                    };
                    let (a, b) = (at("a"), at("b").unwrap_or(0.0));
                    if a_seen.is_some() && a.is_some() && a != a_seen {
                        a_last = Some(Instant::now());
                    }
                    if b_first.is_none() && b > b_seen {
                        b_first = Some(Instant::now());
                    }
                    a_seen = a.or(a_seen);
                    b_seen = b_seen.max(b);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (a_last, b_first)
        });
        PositionWatch {
            started: Instant::now(),
            stop,
            thread,
        }
    }

    /// (a's last move, or the start of the watch if it did not move; b's
    /// first move).
    fn stop(self) -> (Instant, Instant) {
        self.stop.store(true, Ordering::SeqCst);
        let (a_last, b_first) = self.thread.join().unwrap();
        (
            a_last.unwrap_or(self.started),
            b_first.expect("b's position moved"),
        )
    }
}
