//! Integration tests of `KubeSource` against the test Kubernetes API server.
//!
//! Each test drives the production path (kubeconfig → `client_from` →
//! kube-runtime watchers) against `telemetry_test_support::kube_api` and
//! inspects what reaches a `VecSink`. Waits poll with timeouts; a fixed pause
//! is only used to show that something does *not* happen.

#![allow(clippy::too_many_lines)] // a test reads top to bottom as one scenario against the test API server
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use telemetry_schema::{ClusterRecord, ObjectKind, PodPhase, ScaleEvent};
use telemetry_sources::kube::{client_from, KubeSource, KubeSourceConfig, KubeSourceError};
use telemetry_sources::VecSink;
use telemetry_test_support::kube_api::{
    objects::{now_time, pod_metrics, rescale_event, HpaBuilder, PodBuilder},
    KubeApiServer, Resource, Verb,
};
use tokio::{sync::watch, task::JoinHandle};

const WAIT: Duration = Duration::from_secs(30);

/// One running source.
struct Running {
    sink: Arc<VecSink>,
    ready: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), KubeSourceError>>,
}

impl Running {
    async fn shutdown(self) -> Result<(), KubeSourceError> {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source stops in time")
            .expect("source task did not panic")
    }

    async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .expect("source ready in time")
            .expect("readiness sender alive");
    }

    /// Polls the sink until `pred` holds.
    async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[ClusterRecord]) -> bool,
    ) -> Vec<ClusterRecord> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let recs = self.sink.records();
            if pred(&recs) {
                return recs;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; records:\n{recs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(state_dir: PathBuf) -> KubeSourceConfig {
    let mut c = KubeSourceConfig::new(state_dir);
    c.metrics_interval = Duration::from_millis(300);
    c.metrics_retry_interval = Duration::from_millis(300);
    c.flush_interval = Duration::from_millis(30);
    c.max_backoff = Duration::from_secs(1);
    c
}

/// Starts a source on `server` through a kubeconfig file and context `fake`.
async fn start(server: &KubeApiServer, config: KubeSourceConfig) -> Running {
    let kubeconfig = config.state_dir.with_extension("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let client = client_from(Some(kubeconfig), Some("fake".into()))
        .await
        .unwrap();
    let source = KubeSource::new(config);
    let ready = source.ready();
    let (stop, stop_rx) = watch::channel(false);
    let sink = Arc::new(VecSink::new());
    let task_sink = sink.clone();
    let task = tokio::spawn(async move { source.run(client, &*task_sink, stop_rx).await });
    Running {
        sink,
        ready,
        stop,
        task,
    }
}

fn at(base: &Time, secs: i64) -> Time {
    Time(Timestamp::from_second(base.0.as_second() + secs).unwrap())
}

/// The records of the last complete snapshot whose kinds are exactly `kinds`.
fn last_snapshot(recs: &[ClusterRecord], kinds: &[ObjectKind]) -> Option<Vec<ClusterRecord>> {
    let begin = recs
        .iter()
        .rposition(|r| matches!(r, ClusterRecord::SnapshotBegin { kinds: k, .. } if k == kinds))?;
    let ClusterRecord::SnapshotBegin { id, .. } = &recs[begin] else {
        return None;
    };
    let end = recs[begin..]
        .iter()
        .position(|r| *r == ClusterRecord::SnapshotEnd { id: *id })?;
    Some(recs[begin + 1..begin + end].to_vec())
}

fn snapshots(recs: &[ClusterRecord], kinds: &[ObjectKind]) -> usize {
    recs.iter()
        .filter(|r| matches!(r, ClusterRecord::SnapshotBegin { kinds: k, .. } if k == kinds))
        .count()
}

fn pod_names(recs: &[ClusterRecord]) -> Vec<String> {
    recs.iter()
        .filter_map(|r| match r {
            ClusterRecord::PodUpsert(p) => Some(format!("{}/{}", p.namespace, p.name)),
            _ => None,
        })
        .collect()
}

fn hpa_names(recs: &[ClusterRecord]) -> Vec<String> {
    recs.iter()
        .filter_map(|r| match r {
            ClusterRecord::HpaUpsert(h) => Some(format!("{}/{}", h.namespace, h.name)),
            _ => None,
        })
        .collect()
}

fn scale_events(recs: &[ClusterRecord], hpa: &str) -> Vec<ScaleEvent> {
    recs.iter()
        .filter_map(|r| match r {
            ClusterRecord::ScaleEvent(e) if e.hpa == hpa => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn pod_upserts<'a>(
    recs: &'a [ClusterRecord],
    name: &'a str,
) -> impl Iterator<Item = &'a telemetry_schema::PodInfo> + 'a {
    recs.iter().filter_map(move |r| match r {
        ClusterRecord::PodUpsert(p) if p.name == name => Some(p),
        _ => None,
    })
}

/// Log lines captured from `tracing`, for "warned exactly once" checks.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;

    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    fn lines(&self, level: &str, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level) && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn pods_flow_through_phases_with_requests_usage_and_delete() {
    let server = KubeApiServer::start().await.unwrap();
    let base = PodBuilder::new("shop", "web-1")
        .owner("ReplicaSet", "web-5d8f")
        .container("app", Some("250m"), Some("64Mi"))
        .container("sidecar", Some("1500000n"), Some("12345Ki"));
    server.upsert_pod(&base.clone().phase("Pending").build());
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    src.wait_ready().await;

    let recs = src
        .wait_for("initial pod snapshot", |r| {
            last_snapshot(r, &[ObjectKind::Pod]).is_some()
        })
        .await;
    let snap = last_snapshot(&recs, &[ObjectKind::Pod]).unwrap();
    let [ClusterRecord::PodUpsert(p)] = snap.as_slice() else {
        panic!("{snap:#?}")
    };
    assert_eq!(p.phase, PodPhase::Pending);
    assert_eq!(
        (p.created_by_kind.as_str(), p.created_by_name.as_str()),
        ("ReplicaSet", "web-5d8f")
    );
    assert_eq!(p.containers[0].cpu_cores, Some(0.25));
    assert_eq!(p.containers[0].memory_bytes, Some(67_108_864.0));
    assert_eq!(p.containers[1].cpu_cores, Some(0.0015));
    assert_eq!(p.containers[1].memory_bytes, Some(12_641_280.0));
    assert!(p.uid.len() > 10, "uid from the server: {}", p.uid);

    server.upsert_pod(
        &base
            .clone()
            .phase("Running")
            .node("node-a")
            .ip("10.0.0.7")
            .build(),
    );
    let recs = src
        .wait_for("Running", |r| {
            pod_upserts(r, "web-1").any(|p| p.phase == PodPhase::Running)
        })
        .await;
    let running = pod_upserts(&recs, "web-1")
        .find(|p| p.phase == PodPhase::Running)
        .unwrap();
    assert_eq!(
        (running.node.as_str(), running.pod_ip.as_str()),
        ("node-a", "10.0.0.7")
    );

    server.set_pod_metrics(pod_metrics(
        "shop",
        "web-1",
        &[("app", "125m", "32Mi"), ("sidecar", "1500000n", "12345Ki")],
    ));
    server.set_pod_metrics(pod_metrics("shop", "not-watched", &[("app", "1", "1Gi")]));
    let recs = src
        .wait_for("usage", |r| {
            r.iter().any(|x| matches!(x, ClusterRecord::PodUsage(_)))
        })
        .await;
    let usage = recs
        .iter()
        .find_map(|r| match r {
            ClusterRecord::PodUsage(u) => Some(u.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (usage.namespace.as_str(), usage.pod.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(usage.containers[0].cpu_cores, 0.125);
    assert_eq!(usage.containers[0].memory_bytes, 33_554_432.0);
    assert_eq!(usage.containers[1].cpu_cores, 0.0015);
    assert_eq!(usage.containers[1].memory_bytes, 12_641_280.0);
    assert!(usage.timestamp_ms > 1_600_000_000_000);

    server.upsert_pod(
        &base
            .clone()
            .phase("Failed")
            .node("node-a")
            .ip("10.0.0.7")
            .build(),
    );
    src.wait_for("Failed", |r| {
        pod_upserts(r, "web-1").any(|p| p.phase == PodPhase::Failed)
    })
    .await;
    server.delete_pod("shop", "web-1");
    let recs = src
        .wait_for("delete", |r| {
            r.iter()
                .any(|x| matches!(x, ClusterRecord::PodDelete(o) if o.name == "web-1" && o.namespace == "shop"))
        })
        .await;
    // Phases arrive in order, and usage only for the watched pod.
    let phases: Vec<_> = pod_upserts(&recs, "web-1").map(|p| p.phase).collect();
    assert_eq!(
        phases,
        vec![PodPhase::Pending, PodPhase::Running, PodPhase::Failed]
    );
    assert!(!recs
        .iter()
        .any(|r| matches!(r, ClusterRecord::PodUsage(u) if u.pod == "not-watched")));
    src.shutdown().await.unwrap();
}

/// Creates a rescale event for the `sentinel` HPA and waits until its scale
/// event arrives: everything the events watch delivered before it has been
/// handled.
async fn sentinel(server: &KubeApiServer, src: &Running, n: i32) {
    let t = now_time();
    server.upsert_event(&rescale_event(
        "shop",
        &format!("sentinel.{n}"),
        "sentinel",
        1,
        n,
        "test marker",
        (t.clone(), t),
    ));
    src.wait_for(&format!("sentinel {n}"), |r| {
        scale_events(r, "sentinel")
            .iter()
            .any(|e| e.new_replicas == n)
    })
    .await;
}

async fn wait_count(server: &KubeApiServer, resource: Resource, verb: Verb, more_than: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.request_count(resource, verb) <= more_than {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new {verb:?} of {resource:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hpa_rescales_are_counted_once_across_relists_restarts_and_sender_restarts() {
    let server = KubeApiServer::start_with(Duration::from_millis(300))
        .await
        .unwrap();
    let web = || {
        HpaBuilder::new("shop", "web")
            .replicas(1, 10)
            .resource_utilization("cpu", 70)
    };
    server.upsert_hpa(&web().status(1, 1, None).build());
    server.upsert_hpa(
        &HpaBuilder::new("shop", "sentinel")
            .status(1, 1, None)
            .build(),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = start(&server, config(state.clone())).await;
    src.wait_ready().await;
    let recs = src
        .wait_for("HPA snapshot", |r| {
            last_snapshot(r, &[ObjectKind::Hpa]).is_some()
        })
        .await;
    let snap = last_snapshot(&recs, &[ObjectKind::Hpa]).unwrap();
    assert_eq!(hpa_names(&snap), vec!["shop/sentinel", "shop/web"]);
    let hpa = snap
        .iter()
        .find_map(|r| match r {
            ClusterRecord::HpaUpsert(h) if h.name == "web" => Some(h.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (hpa.min_replicas, hpa.max_replicas, hpa.current_replicas),
        (1, 10, 1)
    );
    assert_eq!(hpa.targets[0].metric_name, "cpu");
    assert_eq!(hpa.targets[0].target_type, "utilization");
    assert_eq!(hpa.targets[0].value, 70.0);

    // 1 → 5, as the HPA controller writes it: status, event, settled status.
    let base = now_time();
    let (t1, t2, t3) = (at(&base, 1), at(&base, 61), at(&base, 121));
    let up_reason = "cpu resource utilization (percentage of request) above target";
    server.upsert_hpa(&web().status(1, 5, Some(t1.clone())).build());
    server.upsert_event(&rescale_event(
        "shop",
        "web.up",
        "web",
        1,
        5,
        up_reason,
        (t1.clone(), t1.clone()),
    ));
    server.upsert_hpa(&web().status(5, 5, Some(t1.clone())).build());
    src.wait_for("scale up", |r| scale_events(r, "web").len() == 1)
        .await;
    // 5 → 2: event first this time.
    server.upsert_event(&rescale_event(
        "shop",
        "web.down",
        "web",
        1,
        2,
        "All metrics below target",
        (t2.clone(), t2.clone()),
    ));
    server.upsert_hpa(&web().status(5, 2, Some(t2.clone())).build());
    server.upsert_hpa(&web().status(2, 2, Some(t2.clone())).build());
    let recs = src
        .wait_for("scale down", |r| scale_events(r, "web").len() == 2)
        .await;
    let evs = scale_events(&recs, "web");
    assert_eq!(
        (evs[0].old_replicas, evs[0].new_replicas, evs[0].direction()),
        (1, 5, "up")
    );
    assert_eq!(evs[0].reason, up_reason);
    assert_eq!(evs[0].timestamp_ms, t1.0.as_millisecond());
    assert_eq!(
        (evs[1].old_replicas, evs[1].new_replicas, evs[1].direction()),
        (5, 2, "down")
    );
    assert_ne!(evs[0].key, evs[1].key);
    assert!(evs[0].key.ends_with("/1"), "{}", evs[0].key);

    // Expired resourceVersions: every watch relists, events included.
    let event_lists = server.request_count(Resource::Events, Verb::List);
    let hpa_snapshots = snapshots(&src.sink.records(), &[ObjectKind::Hpa]);
    server.compact();
    server.drop_watches();
    wait_count(&server, Resource::Events, Verb::List, event_lists).await;
    src.wait_for("HPA relist snapshot", |r| {
        snapshots(r, &[ObjectKind::Hpa]) > hpa_snapshots
    })
    .await;
    sentinel(&server, &src, 2).await;
    assert_eq!(
        scale_events(&src.sink.records(), "web").len(),
        2,
        "relist re-counted"
    );

    // Cut watches: they resume from their resourceVersion.
    let watches = server.request_count(Resource::Events, Verb::Watch);
    server.drop_watches();
    wait_count(&server, Resource::Events, Verb::Watch, watches).await;
    sentinel(&server, &src, 3).await;
    // API server restart.
    let watches = server.request_count(Resource::Events, Verb::Watch);
    server.restart(Duration::from_millis(800)).await.unwrap();
    wait_count(&server, Resource::Events, Verb::Watch, watches).await;
    sentinel(&server, &src, 4).await;
    assert_eq!(
        scale_events(&src.sink.records(), "web").len(),
        2,
        "reconnect re-counted"
    );

    // Sender restart with the same state directory.
    src.shutdown().await.unwrap();
    let event_lists = server.request_count(Resource::Events, Verb::List);
    let src = start(&server, config(state.clone())).await;
    src.wait_ready().await;
    wait_count(&server, Resource::Events, Verb::List, event_lists).await;
    sentinel(&server, &src, 5).await;
    assert!(
        scale_events(&src.sink.records(), "web").is_empty(),
        "restart re-counted: {:#?}",
        src.sink.records()
    );

    // The same "New size: 5" again is a count increment: one new occurrence.
    server.upsert_event(&rescale_event(
        "shop",
        "web.up",
        "web",
        2,
        5,
        up_reason,
        (t1.clone(), t3.clone()),
    ));
    server.upsert_hpa(&web().status(2, 5, Some(t3.clone())).build());
    let recs = src
        .wait_for("second scale up", |r| scale_events(r, "web").len() == 1)
        .await;
    let ev = &scale_events(&recs, "web")[0];
    assert_eq!((ev.old_replicas, ev.new_replicas), (2, 5));
    assert!(ev.key.ends_with("/2"), "{}", ev.key);
    assert_eq!(
        ev.key.split('/').next(),
        evs[0].key.split('/').next(),
        "same event object"
    );
    sentinel(&server, &src, 6).await;
    assert_eq!(scale_events(&src.sink.records(), "web").len(), 1);
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn relist_after_compaction_sends_a_fresh_snapshot_without_deleted_objects() {
    let server = KubeApiServer::start().await.unwrap();
    for name in ["a", "b"] {
        server.upsert_pod(&PodBuilder::new("shop", name).phase("Running").build());
        server.upsert_hpa(&HpaBuilder::new("shop", name).status(1, 1, None).build());
    }
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    src.wait_ready().await;
    let recs = src
        .wait_for("snapshots", |r| {
            last_snapshot(r, &[ObjectKind::Hpa]).is_some()
        })
        .await;
    assert_eq!(
        pod_names(&last_snapshot(&recs, &[ObjectKind::Pod]).unwrap()),
        vec!["shop/a", "shop/b"]
    );
    let (pod_snaps, hpa_snaps) = (
        snapshots(&recs, &[ObjectKind::Pod]),
        snapshots(&recs, &[ObjectKind::Hpa]),
    );

    // Deletions the watches never see: made while the API server is down,
    // then the history is compacted away.
    server.stop().await;
    server.delete_pod("shop", "b");
    server.delete_hpa("shop", "b");
    server.upsert_pod(&PodBuilder::new("shop", "c").phase("Pending").build());
    server.compact();
    server.resume().await.unwrap();

    let recs = src
        .wait_for("relist snapshots", |r| {
            snapshots(r, &[ObjectKind::Pod]) > pod_snaps
                && snapshots(r, &[ObjectKind::Hpa]) > hpa_snaps
                && last_snapshot(r, &[ObjectKind::Hpa]).is_some_and(|s| hpa_names(&s) == ["shop/a"])
                && last_snapshot(r, &[ObjectKind::Pod])
                    .is_some_and(|s| pod_names(&s) == ["shop/a", "shop/c"])
        })
        .await;
    assert!(
        !recs
            .iter()
            .any(|r| matches!(r, ClusterRecord::PodDelete(_) | ClusterRecord::HpaDelete(_))),
        "the deletions were never watched; only the snapshot conveys them"
    );
    assert!(server.request_count(Resource::Pods, Verb::List) >= 2);
    assert!(server
        .requests()
        .iter()
        .any(|r| r.verb == Some(Verb::Watch) && r.status == 200));
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_api_absent_warns_once_and_everything_else_flows() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = KubeApiServer::start().await.unwrap();
    server.set_metrics_api(false);
    server.upsert_pod(
        &PodBuilder::new("shop", "p")
            .phase("Pending")
            .container("c", Some("100m"), None)
            .build(),
    );
    server.upsert_hpa(&HpaBuilder::new("shop", "h").status(1, 1, None).build());
    server.set_pod_metrics(pod_metrics("shop", "p", &[("c", "50m", "10Mi")]));
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    src.wait_ready().await;

    // Several failed polls (404), yet one warning.
    wait_count(&server, Resource::PodMetrics, Verb::List, 3).await;
    let warnings = logs.lines("WARN", "metrics.k8s.io");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("metrics-server"), "{}", warnings[0]);

    // Other records still flow.
    server.upsert_pod(
        &PodBuilder::new("shop", "p")
            .phase("Running")
            .container("c", Some("100m"), None)
            .build(),
    );
    let t = now_time();
    server.upsert_event(&rescale_event(
        "shop",
        "h.1",
        "h",
        1,
        3,
        "cpu",
        (t.clone(), t),
    ));
    let recs = src
        .wait_for("pods and scale events", |r| {
            pod_upserts(r, "p").any(|p| p.phase == PodPhase::Running)
                && !scale_events(r, "h").is_empty()
        })
        .await;
    assert!(!recs.iter().any(|r| matches!(r, ClusterRecord::PodUsage(_))));

    server.set_metrics_api(true);
    let recs = src
        .wait_for("usage after the metrics API appears", |r| {
            r.iter()
                .any(|x| matches!(x, ClusterRecord::PodUsage(u) if u.pod == "p"))
        })
        .await;
    let usage = recs
        .iter()
        .find_map(|r| match r {
            ClusterRecord::PodUsage(u) => Some(u.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(usage.containers[0].cpu_cores, 0.05);
    assert_eq!(usage.containers[0].memory_bytes, 10_485_760.0);
    assert_eq!(logs.lines("WARN", "metrics.k8s.io").len(), 1);
    assert_eq!(
        logs.lines("INFO", "metrics.k8s.io is available again")
            .len(),
        1
    );
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn forbidden_hpa_watch_is_a_clear_rbac_error() {
    let server = KubeApiServer::start().await.unwrap();
    server.forbid(Resource::HorizontalPodAutoscalers, Verb::Watch);
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    let result = tokio::time::timeout(WAIT, src.task)
        .await
        .expect("stops on RBAC")
        .unwrap();
    let err = result.expect_err("must fail");
    assert!(
        matches!(err, KubeSourceError::Rbac { verb: "watch", .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "RBAC: the service account may not \"watch\" \"horizontalpodautoscalers\" (group \"autoscaling\") — check the ClusterRole in k8s/sender/"
    );
}

#[tokio::test]
async fn forbidden_pod_list_in_a_namespace_names_it() {
    let server = KubeApiServer::start().await.unwrap();
    server.forbid(Resource::Pods, Verb::List);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path().join("state"));
    cfg.namespaces = vec!["shop".into()];
    let src = start(&server, cfg).await;
    let err = tokio::time::timeout(WAIT, src.task)
        .await
        .expect("stops")
        .unwrap()
        .expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "RBAC: the service account may not \"list\" \"pods\" (group \"\") in namespace \"shop\" — check the ClusterRole in k8s/sender/"
    );
}

#[tokio::test]
async fn reconnect_resends_a_full_snapshot() {
    let server = KubeApiServer::start().await.unwrap();
    server.upsert_pod(&PodBuilder::new("a", "p1").phase("Running").build());
    server.upsert_pod(&PodBuilder::new("b", "p2").phase("Pending").build());
    server.upsert_hpa(&HpaBuilder::new("a", "h1").status(2, 2, None).build());
    server.set_pod_metrics(pod_metrics("a", "p1", &[("c", "1", "1Mi")]));
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    src.wait_ready().await;
    src.wait_for("usage", |r| {
        r.iter().any(|x| matches!(x, ClusterRecord::PodUsage(_)))
    })
    .await;
    src.sink.take();

    src.sink.reconnect();
    let recs = src
        .wait_for("full snapshot", |r| {
            last_snapshot(r, &[ObjectKind::Pod, ObjectKind::Hpa]).is_some()
        })
        .await;
    let snap = last_snapshot(&recs, &[ObjectKind::Pod, ObjectKind::Hpa]).unwrap();
    assert_eq!(pod_names(&snap), vec!["a/p1", "b/p2"]);
    assert_eq!(hpa_names(&snap), vec!["a/h1"]);
    // The last usage follows the snapshot, so a restarted receiver has it too.
    let end = recs
        .iter()
        .position(|r| matches!(r, ClusterRecord::SnapshotEnd { .. }))
        .unwrap();
    assert!(recs[end..]
        .iter()
        .any(|r| matches!(r, ClusterRecord::PodUsage(u) if u.pod == "p1")));
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn readiness_waits_for_the_first_lists() {
    let server = KubeApiServer::start().await.unwrap();
    server.upsert_pod(&PodBuilder::new("a", "p").build());
    server.upsert_hpa(&HpaBuilder::new("a", "h").build());
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let src = start(&server, config(dir.path().join("state"))).await;
    // With the API server down nothing can be listed: not ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*src.ready.borrow());
    assert!(src.sink.records().is_empty());
    server.resume().await.unwrap();
    src.wait_ready().await;
    let recs = src
        .wait_for("both snapshots", |r| {
            last_snapshot(r, &[ObjectKind::Pod]).is_some()
                && last_snapshot(r, &[ObjectKind::Hpa]).is_some()
        })
        .await;
    assert_eq!(
        pod_names(&last_snapshot(&recs, &[ObjectKind::Pod]).unwrap()),
        vec!["a/p"]
    );
    src.shutdown().await.unwrap();
}

#[tokio::test]
async fn namespaces_and_label_selector_scope_the_watches() {
    let server = KubeApiServer::start().await.unwrap();
    for (ns, name, app) in [
        ("a", "w1", "web"),
        ("a", "d1", "db"),
        ("b", "w2", "web"),
        ("c", "w3", "web"),
    ] {
        server.upsert_pod(
            &PodBuilder::new(ns, name)
                .label("app", app)
                .phase("Running")
                .build(),
        );
    }
    server.upsert_hpa(
        &HpaBuilder::new("a", "web")
            .label("app", "web")
            .status(1, 1, None)
            .build(),
    );
    server.upsert_hpa(
        &HpaBuilder::new("c", "web")
            .label("app", "web")
            .status(1, 1, None)
            .build(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path().join("state"));
    cfg.namespaces = vec!["a".into(), "b".into()];
    cfg.label_selector = Some("app=web".into());
    let src = start(&server, cfg).await;
    src.wait_ready().await;
    let recs = src
        .wait_for("snapshots", |r| {
            last_snapshot(r, &[ObjectKind::Hpa]).is_some()
        })
        .await;
    // One pod snapshot covering both namespaces, not one per namespace.
    assert_eq!(snapshots(&recs, &[ObjectKind::Pod]), 1);
    assert_eq!(
        pod_names(&last_snapshot(&recs, &[ObjectKind::Pod]).unwrap()),
        vec!["a/w1", "b/w2"]
    );
    assert_eq!(
        hpa_names(&last_snapshot(&recs, &[ObjectKind::Hpa]).unwrap()),
        vec!["a/web"]
    );

    server.upsert_pod(&PodBuilder::new("b", "w4").label("app", "web").build());
    server.upsert_pod(&PodBuilder::new("c", "w5").label("app", "web").build());
    server.upsert_pod(&PodBuilder::new("a", "d2").label("app", "db").build());
    let recs = src
        .wait_for("w4", |r| pod_upserts(r, "w4").next().is_some())
        .await;
    assert!(pod_upserts(&recs, "w5").next().is_none() && pod_upserts(&recs, "d2").next().is_none());

    let reqs = server.requests();
    for (res, verb) in [
        (Resource::Pods, Verb::Watch),
        (Resource::HorizontalPodAutoscalers, Verb::List),
        (Resource::Events, Verb::Watch),
    ] {
        let mut namespaces: Vec<_> = reqs
            .iter()
            .filter(|r| r.resource == Some(res) && r.verb == Some(verb))
            .map(|r| r.namespace.clone())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        assert_eq!(
            namespaces,
            vec![Some("a".to_string()), Some("b".to_string())],
            "{res:?} {verb:?}"
        );
    }
    assert!(reqs
        .iter()
        .filter(|r| r.resource == Some(Resource::Events))
        .all(|r| r.query.contains("fieldSelector=reason%3DSuccessfulRescale")));
    assert!(reqs
        .iter()
        .filter(|r| r.resource == Some(Resource::Pods))
        .all(|r| r.query.contains("labelSelector=app%3Dweb")));
    src.shutdown().await.unwrap();
}
