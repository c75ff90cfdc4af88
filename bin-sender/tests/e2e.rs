//! End to end with real processes: the `telemetry-sender` binary watches the
//! test Kubernetes API server (through the kube client, as in production:
//! `--source kube --kubeconfig FILE`) and ships over QUIC + mutual TLS to a
//! real `telemetry-receiver` process; the assertions are on the receiver's
//! `/metrics` page (exact values and exact label sets) and on the sender's
//! `/readyz`, exit status and output.
//!
//! The receiver binary is taken from the target directory
//! (`workspace_binary("telemetry-receiver")`): build it first with
//! `cargo build -p telemetry-receiver` (or `cargo test --workspace`).
//!
//! Every wait polls with a deadline; nothing relies on a fixed sleep.

#![allow(clippy::too_many_lines)] // a process test reads top to bottom as one scenario
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use telemetry_link::tls::TlsFiles;
use telemetry_test_support::{
    binaries::{receiver_command, sender_command},
    http::{get, wait_for},
    kube_api::{
        objects::{now_time, pod_metrics, rescale_event, HpaBuilder, PodBuilder},
        KubeApiServer, Resource, Verb,
    },
    pki::TestPki,
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::{scrape, Exposition},
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Deadline of an ordinary wait.
const WAIT: Duration = Duration::from_secs(30);
/// Deadline of a wait that includes watch retries after an outage (the
/// sender's watch backoff doubles up to 30 s).
const RECOVER: Duration = Duration::from_secs(60);
/// The sender's certificate identity: the `cluster` label at the receiver.
const CLUSTER: &str = "e2e-cluster";

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Certificates for one receiver (127.0.0.1 / localhost) and one sender.
struct Certs {
    _pki: TestPki,
    receiver: TlsFiles,
    sender: TlsFiles,
}

fn certs(identity: &str) -> Certs {
    let pki = TestPki::new().expect("test CA");
    let receiver = pki.receiver().expect("receiver certificate");
    let sender = pki.sender(identity).expect("sender certificate");
    Certs {
        _pki: pki,
        receiver,
        sender,
    }
}

/// A running `telemetry-receiver`.
struct Receiver {
    proc: ChildProcess,
    quic: SocketAddr,
    metrics: SocketAddr,
    _state: TempDir,
}

fn start_receiver(tls: &TlsFiles) -> Receiver {
    let bin = workspace_binary("telemetry-receiver").unwrap_or_else(|e| {
        panic!("{e:#} (the e2e tests run the receiver binary: `cargo build -p telemetry-receiver`)")
    });
    let state = tempfile::tempdir().unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = receiver_command(bin, quic, metrics, tls, state.path());
    cmd.env("RUST_LOG", "info");
    let proc = ChildProcess::spawn("telemetry-receiver", cmd).unwrap();
    let receiver = Receiver {
        proc,
        quic,
        metrics,
        _state: state,
    };
    wait_for(WAIT, "receiver /metrics", || {
        Ok(get(receiver.metrics, "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nreceiver output:\n{}", receiver.proc.output()));
    receiver
}

/// A running `telemetry-sender`.
struct Sender {
    proc: ChildProcess,
    metrics: SocketAddr,
}

/// Starts the sender binary on `kubeconfig`, shipping to `receiver` (UDP).
fn start_sender(
    kubeconfig: &Path,
    receiver: SocketAddr,
    tls: &TlsFiles,
    spool: &Path,
    extra: &[&str],
) -> Sender {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = sender_command(
        env!("CARGO_BIN_EXE_telemetry-sender"),
        receiver,
        tls,
        spool,
        metrics,
    );
    cmd.args(["--source", "kube", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--metrics-interval", "1s"])
        .args(extra)
        .env("RUST_LOG", "info");
    Sender {
        proc: ChildProcess::spawn("telemetry-sender", cmd).unwrap(),
        metrics,
    }
}

impl Sender {
    /// The first answer of `/readyz` (waiting for the endpoint to come up).
    fn readyz(&self) -> u16 {
        wait_for(WAIT, "sender /readyz", || {
            Ok(get(self.metrics, "/readyz", &[]).ok().map(|r| r.status))
        })
        .unwrap_or_else(|e| panic!("{e:#}\nsender output:\n{}", self.proc.output()))
    }

    fn wait_ready(&self, limit: Duration) {
        wait_for(limit, "sender /readyz 200", || {
            Ok(get(self.metrics, "/readyz", &[])
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ()))
        })
        .unwrap_or_else(|e| panic!("{e:#}\nsender output:\n{}", self.proc.output()));
    }

    /// Output lines (colour codes removed) containing every one of `needles`.
    fn lines(&self, needles: &[&str]) -> Vec<String> {
        strip_ansi(&self.proc.output())
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`): the log lines
/// are coloured even when written to a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The receiver's /metrics
// ---------------------------------------------------------------------------

/// Polls the receiver until `pred` holds for its page; on timeout panics
/// with the cluster's kube_* series and both processes' output.
fn wait_metrics(
    receiver: &Receiver,
    sender: &Sender,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let start = Instant::now();
    loop {
        let page = scrape(receiver.metrics);
        if let Ok(page) = &page {
            if pred(page) {
                return page.clone();
            }
        }
        if start.elapsed() > limit {
            let shown = match &page {
                Ok(p) => p
                    .samples
                    .iter()
                    .filter(|s| {
                        s.name.starts_with("kube_") || s.name.starts_with("telemetry_link_sender")
                    })
                    .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(e) => format!("{e:#}"),
            };
            panic!(
                "timed out after {limit:?} waiting for {what}\nreceiver series:\n{shown}\n\nsender output:\n{}\n\nreceiver output:\n{}",
                sender.proc.output(),
                receiver.proc.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

type Labels = BTreeMap<String, String>;

/// A label set: `cluster` plus `pairs`.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    std::iter::once(("cluster", CLUSTER))
        .chain(pairs.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every series of `name` whose labels include `matching` (and
/// `cluster="e2e-cluster"`), sorted by labels.
fn series(page: &Exposition, name: &str, matching: &[(&str, &str)]) -> Vec<(Labels, f64)> {
    let mut m = vec![("cluster", CLUSTER)];
    m.extend_from_slice(matching);
    let mut out: Vec<(Labels, f64)> = page
        .find(name, &m)
        .map(|s| (s.labels.clone(), s.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `v` sorted by labels, as [`series`] returns them.
fn sorted(mut v: Vec<(Labels, f64)>) -> Vec<(Labels, f64)> {
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn value(page: &Exposition, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
    let mut m = vec![("cluster", CLUSTER)];
    m.extend_from_slice(matching);
    page.value(name, &m)
}

/// Number of series, in any family, that carry `pod="<pod>"`.
fn pod_series(page: &Exposition, namespace: &str, pod: &str) -> usize {
    page.samples
        .iter()
        .filter(|s| {
            s.labels.get("cluster").map(String::as_str) == Some(CLUSTER)
                && s.labels.get("namespace").map(String::as_str) == Some(namespace)
                && s.labels.get("pod").map(String::as_str) == Some(pod)
        })
        .count()
}

const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// The five `kube_pod_status_phase` series of a pod, `phase` at 1.
fn phase_series(namespace: &str, pod: &str, phase: &str) -> Vec<(Labels, f64)> {
    let uid = uid(namespace, pod);
    sorted(
        PHASES
            .iter()
            .map(|p| {
                (
                    labels(&[
                        ("namespace", namespace),
                        ("pod", pod),
                        ("uid", &uid),
                        ("phase", p),
                    ]),
                    if *p == phase { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    )
}

fn phase_is(page: &Exposition, namespace: &str, pod: &str, phase: &str) -> bool {
    value(
        page,
        "kube_pod_status_phase",
        &[("namespace", namespace), ("pod", pod), ("phase", phase)],
    ) == Some(1.0)
}

fn hpa_value(page: &Exposition, family: &str, hpa: &str) -> Option<f64> {
    value(
        page,
        family,
        &[("namespace", "shop"), ("horizontalpodautoscaler", hpa)],
    )
}

fn scale_events(page: &Exposition, hpa: &str, direction: &str) -> Option<f64> {
    value(
        page,
        "kube_horizontalpodautoscaler_scale_events_total",
        &[
            ("namespace", "shop"),
            ("horizontalpodautoscaler", hpa),
            ("direction", direction),
        ],
    )
}

// ---------------------------------------------------------------------------
// Kubernetes objects
// ---------------------------------------------------------------------------

fn uid(namespace: &str, pod: &str) -> String {
    format!("uid-{namespace}-{pod}")
}

/// A pod with a fixed uid (so label sets can be asserted exactly).
fn pod(builder: PodBuilder, namespace: &str, name: &str) -> Pod {
    let mut p = builder.build();
    p.metadata.uid = Some(uid(namespace, name));
    p
}

/// `shop/web-1`: owned by ReplicaSet web-5d8f, two containers with requests
/// (and limits on the first).
fn web_1(phase: &str, placed: bool) -> Pod {
    let mut b = PodBuilder::new("shop", "web-1")
        .label("app", "web")
        .owner("ReplicaSet", "web-5d8f")
        .container("app", Some("250m"), Some("64Mi"))
        .limit("cpu", "1")
        .limit("memory", "128Mi")
        .container("sidecar", Some("1500000n"), Some("12345Ki"))
        .phase(phase);
    if placed {
        b = b.node("node-a").ip("10.0.0.7");
    }
    pod(b, "shop", "web-1")
}

fn running_pod(namespace: &str, name: &str) -> Pod {
    pod(
        PodBuilder::new(namespace, name)
            .label("app", name)
            .owner("StatefulSet", name)
            .container("main", Some("1"), Some("1Gi"))
            .node("node-b")
            .ip("10.0.0.9")
            .phase("Running"),
        namespace,
        name,
    )
}

fn web_hpa() -> HpaBuilder {
    HpaBuilder::new("shop", "web")
        .replicas(1, 10)
        .resource_utilization("cpu", 70)
}

fn web_hpa_status(current: i32, desired: i32, last_scale: Option<Time>) -> HorizontalPodAutoscaler {
    web_hpa().status(current, desired, last_scale).build()
}

fn at(base: &Time, secs: i64) -> Time {
    Time(Timestamp::from_second(base.0.as_second() + secs).unwrap())
}

const UP_REASON: &str = "cpu resource utilization (percentage of request) above target";

/// The API server, its runtime and its kubeconfig.
struct Api {
    server: KubeApiServer,
    kubeconfig: PathBuf,
    rt: Runtime,
    _dir: TempDir,
}

fn start_api() -> Api {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(KubeApiServer::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    Api {
        server,
        kubeconfig,
        rt,
        _dir: dir,
    }
}

impl Api {
    fn wait_requests(&self, resource: Resource, verb: Verb, more_than: usize) {
        wait_for(RECOVER, &format!("a new {verb:?} of {resource:?}"), || {
            Ok((self.server.request_count(resource, verb) > more_than).then_some(()))
        })
        .unwrap();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        // Stop the server inside its runtime before the runtime goes.
        self.rt.block_on(self.server.stop());
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// One receiver and one sender through a whole life: readiness before and
/// after the first lists, pods through Pending → Running → Failed with
/// requests and usage in cores and bytes, an HPA scaling 1 → 5 → 2, a pod
/// delete, watch expiry with relist, two API server restarts with changes
/// made while it was down (one resumed from the watches' resourceVersion,
/// one with the history compacted, so only the relist's snapshot removes
/// what was deleted), a SIGKILLed sender restarted on the same spool
/// (a rescale made meanwhile is counted once, earlier ones not again), and
/// a SIGTERM that exits 0.
#[test]
fn cluster_life_reaches_the_receiver() {
    let api = start_api();
    let s = &api.server;
    s.upsert_pod(&web_1("Pending", false));
    s.upsert_pod(&running_pod("shop", "db-0"));
    s.upsert_hpa(&web_hpa_status(1, 1, None));
    // Down at first: the sender cannot list, so it must not be ready.
    api.rt.block_on(s.stop());

    let certs = certs(CLUSTER);
    let receiver = start_receiver(&certs.receiver);
    let spool = tempfile::tempdir().unwrap();
    let sender = start_sender(
        &api.kubeconfig,
        receiver.quic,
        &certs.sender,
        spool.path(),
        &[],
    );

    // --- readiness ---------------------------------------------------------
    assert_eq!(sender.readyz(), 503, "not ready before the first lists");
    let r = get(sender.metrics, "/readyz", &[]).unwrap();
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("waiting for the source's first full listing"),
        "{}",
        r.body
    );
    assert_eq!(get(sender.metrics, "/healthz", &[]).unwrap().status, 200);
    api.rt.block_on(s.resume()).unwrap();
    sender.wait_ready(RECOVER);

    // --- initial lists -----------------------------------------------------
    let page = wait_metrics(&receiver, &sender, WAIT, "initial pods and HPA", |p| {
        pod_series(p, "shop", "web-1") > 0
            && pod_series(p, "shop", "db-0") > 0
            && hpa_value(p, "kube_horizontalpodautoscaler_spec_max_replicas", "web").is_some()
    });
    assert_eq!(
        series(&page, "telemetry_link_sender_up", &[]),
        vec![(labels(&[]), 1.0)]
    );
    let web_uid = uid("shop", "web-1");
    assert_eq!(
        series(&page, "kube_pod_info", &[("pod", "web-1")]),
        vec![(
            labels(&[
                ("namespace", "shop"),
                ("pod", "web-1"),
                ("uid", &web_uid),
                ("node", ""),
                ("pod_ip", ""),
                ("created_by_kind", "ReplicaSet"),
                ("created_by_name", "web-5d8f"),
            ]),
            1.0
        )]
    );
    assert_eq!(
        series(&page, "kube_pod_status_phase", &[("pod", "web-1")]),
        phase_series("shop", "web-1", "Pending")
    );
    let req = |container: &str, resource: &str, unit: &str| {
        labels(&[
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("container", container),
            ("resource", resource),
            ("unit", unit),
        ])
    };
    // 250m = 0.25 cores, 64Mi = 67108864 bytes, 1500000n = 0.0015 cores,
    // 12345Ki = 12641280 bytes.
    assert_eq!(
        series(
            &page,
            "kube_pod_container_resource_requests",
            &[("pod", "web-1")]
        ),
        sorted(vec![
            (req("app", "cpu", "core"), 0.25),
            (req("app", "memory", "byte"), 67_108_864.0),
            (req("sidecar", "cpu", "core"), 0.0015),
            (req("sidecar", "memory", "byte"), 12_641_280.0),
        ])
    );
    assert_eq!(
        series(
            &page,
            "kube_pod_container_resource_limits",
            &[("pod", "web-1")]
        ),
        sorted(vec![
            (req("app", "cpu", "core"), 1.0),
            (req("app", "memory", "byte"), 134_217_728.0),
        ])
    );
    assert_eq!(
        series(&page, "kube_namespace_pods_running", &[]),
        vec![(labels(&[("namespace", "shop")]), 1.0)]
    );
    let hpa_labels = labels(&[("namespace", "shop"), ("horizontalpodautoscaler", "web")]);
    for (family, v) in [
        ("kube_horizontalpodautoscaler_spec_min_replicas", 1.0),
        ("kube_horizontalpodautoscaler_spec_max_replicas", 10.0),
        ("kube_horizontalpodautoscaler_status_current_replicas", 1.0),
        ("kube_horizontalpodautoscaler_status_desired_replicas", 1.0),
    ] {
        assert_eq!(
            series(&page, family, &[]),
            vec![(hpa_labels.clone(), v)],
            "{family}"
        );
    }
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_spec_target_metric",
            &[]
        ),
        vec![(
            labels(&[
                ("namespace", "shop"),
                ("horizontalpodautoscaler", "web"),
                ("metric_name", "cpu"),
                ("metric_target_type", "utilization"),
            ]),
            70.0
        )]
    );
    let dir_labels = |d: &str| {
        labels(&[
            ("namespace", "shop"),
            ("horizontalpodautoscaler", "web"),
            ("direction", d),
        ])
    };
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_scale_events_total",
            &[]
        ),
        vec![(dir_labels("down"), 0.0), (dir_labels("up"), 0.0)]
    );
    assert_eq!(
        series(&page, "kube_pod_container_cpu_usage_cores", &[]),
        vec![]
    );

    // --- usage from metrics.k8s.io -----------------------------------------
    s.set_pod_metrics(pod_metrics(
        "shop",
        "web-1",
        &[("app", "125m", "32Mi"), ("sidecar", "1500000n", "12345Ki")],
    ));
    s.set_pod_metrics(pod_metrics("shop", "db-0", &[("main", "2", "1Gi")]));
    // Usage of a pod the sender does not know is not shipped.
    s.set_pod_metrics(pod_metrics("shop", "ghost", &[("main", "1", "1Mi")]));
    let page = wait_metrics(&receiver, &sender, WAIT, "usage", |p| {
        series(p, "kube_pod_container_memory_working_set_bytes", &[]).len() == 3
    });
    let usage = |pod: &str, container: &str| {
        labels(&[
            ("namespace", "shop"),
            ("pod", pod),
            ("container", container),
        ])
    };
    assert_eq!(
        series(&page, "kube_pod_container_cpu_usage_cores", &[]),
        sorted(vec![
            (usage("db-0", "main"), 2.0),
            (usage("web-1", "app"), 0.125),
            (usage("web-1", "sidecar"), 0.0015),
        ])
    );
    assert_eq!(
        series(&page, "kube_pod_container_memory_working_set_bytes", &[]),
        sorted(vec![
            (usage("db-0", "main"), 1_073_741_824.0),
            (usage("web-1", "app"), 33_554_432.0),
            (usage("web-1", "sidecar"), 12_641_280.0),
        ])
    );
    assert_eq!(pod_series(&page, "shop", "ghost"), 0);

    // --- Pending → Running → Failed ----------------------------------------
    s.upsert_pod(&web_1("Running", true));
    let page = wait_metrics(&receiver, &sender, WAIT, "web-1 Running", |p| {
        phase_is(p, "shop", "web-1", "Running")
    });
    assert_eq!(
        series(&page, "kube_pod_status_phase", &[("pod", "web-1")]),
        phase_series("shop", "web-1", "Running")
    );
    assert_eq!(
        series(&page, "kube_pod_info", &[("pod", "web-1")]),
        vec![(
            labels(&[
                ("namespace", "shop"),
                ("pod", "web-1"),
                ("uid", &web_uid),
                ("node", "node-a"),
                ("pod_ip", "10.0.0.7"),
                ("created_by_kind", "ReplicaSet"),
                ("created_by_name", "web-5d8f"),
            ]),
            1.0
        )]
    );
    assert_eq!(
        series(&page, "kube_namespace_pods_running", &[]),
        vec![(labels(&[("namespace", "shop")]), 2.0)]
    );
    s.upsert_pod(&web_1("Failed", true));
    let page = wait_metrics(&receiver, &sender, WAIT, "web-1 Failed", |p| {
        phase_is(p, "shop", "web-1", "Failed")
    });
    assert_eq!(
        series(&page, "kube_pod_status_phase", &[("pod", "web-1")]),
        phase_series("shop", "web-1", "Failed")
    );
    assert_eq!(
        value(
            &page,
            "kube_namespace_pods_running",
            &[("namespace", "shop")]
        ),
        Some(1.0)
    );

    // --- HPA 1 → 5 → 2 -----------------------------------------------------
    // As the HPA controller writes it: status (current=old, desired=new,
    // lastScaleTime), the SuccessfulRescale event, the settled status.
    let base = now_time();
    let (t1, t2, t3) = (at(&base, 1), at(&base, 61), at(&base, 121));
    s.upsert_hpa(&web_hpa_status(1, 5, Some(t1.clone())));
    s.upsert_event(&rescale_event(
        "shop",
        "web.up",
        "web",
        1,
        5,
        UP_REASON,
        (t1.clone(), t1.clone()),
    ));
    s.upsert_hpa(&web_hpa_status(5, 5, Some(t1.clone())));
    let page = wait_metrics(&receiver, &sender, WAIT, "scale up 1 → 5", |p| {
        scale_events(p, "web", "up") == Some(1.0)
            && hpa_value(
                p,
                "kube_horizontalpodautoscaler_status_current_replicas",
                "web",
            ) == Some(5.0)
    });
    assert_eq!(scale_events(&page, "web", "down"), Some(0.0));
    assert_eq!(
        hpa_value(
            &page,
            "kube_horizontalpodautoscaler_status_desired_replicas",
            "web"
        ),
        Some(5.0)
    );
    s.upsert_event(&rescale_event(
        "shop",
        "web.down",
        "web",
        1,
        2,
        "All metrics below target",
        (t2.clone(), t2.clone()),
    ));
    s.upsert_hpa(&web_hpa_status(5, 2, Some(t2.clone())));
    s.upsert_hpa(&web_hpa_status(2, 2, Some(t2.clone())));
    let page = wait_metrics(&receiver, &sender, WAIT, "scale down 5 → 2", |p| {
        scale_events(p, "web", "down") == Some(1.0)
            && hpa_value(
                p,
                "kube_horizontalpodautoscaler_status_current_replicas",
                "web",
            ) == Some(2.0)
    });
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_scale_events_total",
            &[]
        ),
        vec![(dir_labels("down"), 1.0), (dir_labels("up"), 1.0)]
    );
    for (family, v) in [
        ("kube_horizontalpodautoscaler_spec_min_replicas", 1.0),
        ("kube_horizontalpodautoscaler_spec_max_replicas", 10.0),
        ("kube_horizontalpodautoscaler_status_current_replicas", 2.0),
        ("kube_horizontalpodautoscaler_status_desired_replicas", 2.0),
    ] {
        assert_eq!(
            series(&page, family, &[]),
            vec![(hpa_labels.clone(), v)],
            "{family}"
        );
    }
    let rescales = sender.lines(&["HPA rescale", "hpa=web "]);
    assert_eq!(rescales.len(), 2, "{rescales:#?}\n{}", sender.proc.output());
    assert!(rescales[0].contains("old=1 new=5"), "{}", rescales[0]);
    assert!(rescales[1].contains("old=5 new=2"), "{}", rescales[1]);

    // --- pod delete ----------------------------------------------------------
    assert!(s.delete_pod("shop", "web-1"));
    let page = wait_metrics(&receiver, &sender, WAIT, "web-1 deleted", |p| {
        pod_series(p, "shop", "web-1") == 0
    });
    // Every series of the pod went (info, phase, requests, usage); db-0 stays.
    assert_eq!(series(&page, "kube_pod_info", &[("pod", "web-1")]), vec![]);
    assert_eq!(
        series(
            &page,
            "kube_pod_container_cpu_usage_cores",
            &[("pod", "web-1")]
        ),
        vec![]
    );
    assert_eq!(series(&page, "kube_pod_info", &[]).len(), 1);
    assert_eq!(
        value(
            &page,
            "kube_namespace_pods_running",
            &[("namespace", "shop")]
        ),
        Some(1.0)
    );

    // --- watch expiry: resourceVersions compacted, watches cut → relist ----
    let lists = |r| s.request_count(r, Verb::List);
    let (pod_lists, hpa_lists, event_lists) = (
        lists(Resource::Pods),
        lists(Resource::HorizontalPodAutoscalers),
        lists(Resource::Events),
    );
    s.compact();
    s.drop_watches();
    api.wait_requests(Resource::Pods, Verb::List, pod_lists);
    api.wait_requests(Resource::HorizontalPodAutoscalers, Verb::List, hpa_lists);
    api.wait_requests(Resource::Events, Verb::List, event_lists);
    // A change after the relist flows, and the relisted rescale events are
    // not counted again (neither by the sender nor at the receiver).
    s.upsert_pod(&running_pod("shop", "web-2"));
    let page = wait_metrics(&receiver, &sender, RECOVER, "web-2 after the relist", |p| {
        phase_is(p, "shop", "web-2", "Running")
    });
    assert!(
        !sender
            .lines(&["resourceVersion expired (410 Gone); relisting"])
            .is_empty(),
        "the sender saw the expiry:\n{}",
        sender.proc.output()
    );
    assert_eq!(
        value(
            &page,
            "kube_namespace_pods_running",
            &[("namespace", "shop")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_scale_events_total",
            &[]
        ),
        vec![(dir_labels("down"), 1.0), (dir_labels("up"), 1.0)]
    );
    assert_eq!(sender.lines(&["HPA rescale", "hpa=web "]).len(), 2);

    // --- API server restart; a change made while it is down -----------------
    // The history is kept: the watches resume from their resourceVersion
    // (no relist) and the change is replayed to them.
    let pod_lists = lists(Resource::Pods);
    let pod_watches = s.request_count(Resource::Pods, Verb::Watch);
    api.rt.block_on(async {
        s.stop().await;
        s.upsert_pod(&pod(
            PodBuilder::new("shop", "job-1").phase("Succeeded"),
            "shop",
            "job-1",
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.resume().await.unwrap();
    });
    let page = wait_metrics(
        &receiver,
        &sender,
        RECOVER,
        "job-1 after the API server restart",
        |p| phase_is(p, "shop", "job-1", "Succeeded"),
    );
    assert_eq!(
        pod_series(&page, "shop", "web-2"),
        1 + 5 + 2,
        "web-2 kept: info, phases, requests"
    );
    assert!(s.request_count(Resource::Pods, Verb::Watch) > pod_watches);
    assert_eq!(
        lists(Resource::Pods),
        pod_lists,
        "resumed from the resourceVersion, not relisted"
    );

    // --- API server restart; changes made while it is down, history lost ---
    // db-0, job-1 and HPA "old" are deleted and web-3 created while nothing
    // watches, and the history is compacted: only the relist's snapshot tells.
    s.upsert_hpa(
        &HpaBuilder::new("shop", "old")
            .replicas(2, 4)
            .status(2, 2, None)
            .build(),
    );
    wait_metrics(&receiver, &sender, WAIT, "HPA old", |p| {
        hpa_value(p, "kube_horizontalpodautoscaler_spec_max_replicas", "old") == Some(4.0)
    });
    api.rt.block_on(async {
        s.stop().await;
        assert!(s.delete_pod("shop", "db-0"));
        assert!(s.delete_pod("shop", "job-1"));
        assert!(s.delete_hpa("shop", "old"));
        s.upsert_pod(&pod(
            PodBuilder::new("shop", "web-3").phase("Pending"),
            "shop",
            "web-3",
        ));
        s.compact();
        // Down for a moment, as a restart is.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.resume().await.unwrap();
    });
    let page = wait_metrics(
        &receiver,
        &sender,
        RECOVER,
        "state after the API server restart",
        |p| {
            pod_series(p, "shop", "db-0") == 0
                && pod_series(p, "shop", "job-1") == 0
                && phase_is(p, "shop", "web-3", "Pending")
                && hpa_value(p, "kube_horizontalpodautoscaler_spec_max_replicas", "old").is_none()
        },
    );
    let mut pods: Vec<String> = series(&page, "kube_pod_info", &[])
        .into_iter()
        .map(|(l, _)| l["pod"].clone())
        .collect();
    pods.sort();
    assert_eq!(pods, vec!["web-2", "web-3"]);
    assert_eq!(
        value(
            &page,
            "kube_namespace_pods_running",
            &[("namespace", "shop")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_scale_events_total",
            &[]
        ),
        vec![(dir_labels("down"), 1.0), (dir_labels("up"), 1.0)],
        "HPA old is gone with its counters; web's are not counted again"
    );
    assert_eq!(
        series(&page, "telemetry_link_sender_up", &[]),
        vec![(labels(&[]), 1.0)]
    );

    // --- sender SIGKILL, a rescale meanwhile, restart on the same spool -----
    let mut sender = sender;
    sender.proc.kill_9().unwrap();
    s.upsert_hpa(&web_hpa_status(2, 4, Some(t3.clone())));
    s.upsert_event(&rescale_event(
        "shop",
        "web.up2",
        "web",
        1,
        4,
        UP_REASON,
        (t3.clone(), t3.clone()),
    ));
    s.upsert_hpa(&web_hpa_status(4, 4, Some(t3.clone())));
    let sender = start_sender(
        &api.kubeconfig,
        receiver.quic,
        &certs.sender,
        spool.path(),
        &[],
    );
    sender.wait_ready(WAIT);
    let page = wait_metrics(
        &receiver,
        &sender,
        WAIT,
        "the rescale made while the sender was down",
        |p| {
            scale_events(p, "web", "up") == Some(2.0)
                && hpa_value(
                    p,
                    "kube_horizontalpodautoscaler_status_current_replicas",
                    "web",
                ) == Some(4.0)
        },
    );
    assert_eq!(
        series(
            &page,
            "kube_horizontalpodautoscaler_scale_events_total",
            &[]
        ),
        vec![(dir_labels("down"), 1.0), (dir_labels("up"), 2.0)]
    );
    // The restarted sender shipped only the new occurrence: the earlier two
    // were remembered in the spool directory's state.
    let rescales = sender.lines(&["HPA rescale", "hpa=web "]);
    assert_eq!(rescales.len(), 1, "{rescales:#?}\n{}", sender.proc.output());
    assert!(rescales[0].contains("old=2 new=4"), "{}", rescales[0]);

    // --- SIGTERM: graceful, exit 0 -----------------------------------------
    let mut sender = sender;
    let status = sender.proc.terminate(WAIT).unwrap();
    assert!(
        status.success(),
        "SIGTERM exit {status:?}\n{}",
        sender.proc.output()
    );
}

/// No metrics-server: one clear warning, no usage series, everything else
/// (pods, HPAs, readiness) as usual.
#[test]
fn metrics_server_absent_everything_else_flows() {
    let api = start_api();
    let s = &api.server;
    s.set_metrics_api(false);
    s.upsert_pod(&running_pod("shop", "db-0"));
    s.upsert_hpa(&web_hpa_status(3, 3, None));
    s.set_pod_metrics(pod_metrics("shop", "db-0", &[("main", "2", "1Gi")]));
    let certs = certs(CLUSTER);
    let receiver = start_receiver(&certs.receiver);
    let spool = tempfile::tempdir().unwrap();
    let sender = start_sender(
        &api.kubeconfig,
        receiver.quic,
        &certs.sender,
        spool.path(),
        &[],
    );
    sender.wait_ready(WAIT);
    api.wait_requests(Resource::PodMetrics, Verb::List, 0);
    let warning = "metrics.k8s.io/v1beta1 is not served (is metrics-server installed and running?); pod usage will not be reported, everything else is";
    wait_for(WAIT, "the metrics-server warning", || {
        Ok((!sender.lines(&[warning]).is_empty()).then_some(()))
    })
    .unwrap();
    let page = wait_metrics(&receiver, &sender, WAIT, "pods and HPAs", |p| {
        phase_is(p, "shop", "db-0", "Running")
            && hpa_value(
                p,
                "kube_horizontalpodautoscaler_status_current_replicas",
                "web",
            ) == Some(3.0)
    });
    assert_eq!(
        series(&page, "kube_pod_container_cpu_usage_cores", &[]),
        vec![]
    );
    assert_eq!(
        series(&page, "kube_pod_container_memory_working_set_bytes", &[]),
        vec![]
    );
    assert_eq!(
        value(
            &page,
            "kube_namespace_pods_running",
            &[("namespace", "shop")]
        ),
        Some(1.0)
    );
    let warnings = sender.lines(&["WARN", "metrics.k8s.io"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        sender.lines(&["ERROR"]).is_empty(),
        "{}",
        sender.proc.output()
    );
    let mut sender = sender;
    assert!(sender.proc.terminate(WAIT).unwrap().success());
}

/// A watch the service account may not do stops the sender with a non-zero
/// exit and the RBAC message naming verb, resource and group.
#[test]
fn forbidden_watch_exits_non_zero_with_the_rbac_message() {
    let api = start_api();
    api.server.upsert_hpa(&web_hpa_status(1, 1, None));
    api.server
        .forbid(Resource::HorizontalPodAutoscalers, Verb::Watch);
    let certs = certs(CLUSTER);
    // Nobody listens there: the sender must fail on RBAC regardless.
    let nowhere: SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let spool = tempfile::tempdir().unwrap();
    let mut sender = start_sender(
        &api.kubeconfig,
        nowhere,
        &certs.sender,
        spool.path(),
        &["--shutdown-timeout", "1s"],
    );
    let status = sender.proc.wait_timeout(WAIT).unwrap();
    let output = strip_ansi(&sender.proc.output());
    assert!(!status.success(), "must fail: {status:?}\n{output}");
    assert!(
        output.contains(
            "RBAC: the service account may not \"watch\" \"horizontalpodautoscalers\" (group \"autoscaling\") — check the ClusterRole in k8s/sender/"
        ),
        "{output}"
    );
    assert!(
        api.server
            .requests()
            .iter()
            .any(|r| r.resource == Some(Resource::HorizontalPodAutoscalers)
                && r.verb == Some(Verb::Watch)
                && r.status == 403),
        "the watch was refused by the server"
    );
}
