//! Unit tests of the source's parts: error classification, backoff, scopes,
//! batching, and what each role ships.

use std::time::{Duration, Instant};

use kube::{
    core::Status,
    runtime::{utils::Backoff, watcher},
};
use telemetry_schema::{ClusterRecord, ObjectKind};
use tokio::sync::watch;

use super::{
    batch::Batcher,
    watches::{bad_request, forbidden_verb, is_gone, WatchBackoff},
    KubeSourceConfig, KubeSourceError,
};
use crate::sink::{RecordSink, SinkError};

fn api(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(Status::failure("nope", reason).with_code(code).boxed())
}

#[test]
fn rbac_error_names_verb_resource_and_group() {
    let e = KubeSourceError::Rbac {
        verb: "watch",
        resource: "horizontalpodautoscalers",
        group: "autoscaling",
        namespace: None,
    };
    assert_eq!(
        e.to_string(),
        "RBAC: the service account may not \"watch\" \"horizontalpodautoscalers\" (group \"autoscaling\") — check the ClusterRole in k8s/sender/"
    );
    let e = KubeSourceError::Rbac {
        verb: "list",
        resource: "pods",
        group: "",
        namespace: Some("shop".into()),
    };
    assert!(
        e.to_string()
            .contains("\"list\" \"pods\" (group \"\") in namespace \"shop\""),
        "{e}"
    );
}

#[test]
fn watcher_errors_are_classified() {
    assert_eq!(
        forbidden_verb(&watcher::Error::InitialListFailed(api(403, "Forbidden"))),
        Some("list")
    );
    assert_eq!(
        forbidden_verb(&watcher::Error::WatchStartFailed(api(403, "Forbidden"))),
        Some("watch")
    );
    assert_eq!(
        forbidden_verb(&watcher::Error::WatchError(
            Status::failure("x", "Forbidden").with_code(403).boxed()
        )),
        Some("watch")
    );
    assert_eq!(
        forbidden_verb(&watcher::Error::InitialListFailed(api(
            500,
            "InternalError"
        ))),
        None
    );
    let gone =
        watcher::Error::WatchError(Status::failure("too old", "Expired").with_code(410).boxed());
    assert!(is_gone(&gone));
    assert_eq!(forbidden_verb(&gone), None);
    assert_eq!(
        bad_request(&watcher::Error::InitialListFailed(api(400, "BadRequest"))),
        Some(("list", "nope".to_string()))
    );
}

#[test]
fn backoff_grows_caps_and_resets_after_quiet() {
    let mut b = WatchBackoff::new(Duration::from_secs(2));
    assert_eq!(b.next(), Some(Duration::from_millis(500)));
    assert_eq!(b.next(), Some(Duration::from_secs(1)));
    b.reset(); // too soon: keeps growing
    assert_eq!(b.next(), Some(Duration::from_secs(2)));
    assert_eq!(b.next(), Some(Duration::from_secs(2)));
    b.last = Some(Instant::now() - Duration::from_secs(10));
    b.reset();
    assert_eq!(b.next(), Some(Duration::from_millis(500)));
}

#[test]
fn scopes_dedupe_and_default_to_all() {
    let mut c = KubeSourceConfig::new("/tmp/x");
    assert_eq!(c.scopes(), vec![None]);
    c.namespaces = vec!["a".into(), "b".into(), "a".into()];
    assert_eq!(
        c.scopes(),
        vec![Some("a".to_string()), Some("b".to_string())]
    );
}

/// Records the size of every batch.
#[derive(Default)]
struct SizesSink {
    sizes: std::sync::Mutex<Vec<usize>>,
    inner: crate::sink::VecSink,
}

impl RecordSink for SizesSink {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        self.sizes.lock().unwrap().push(records.len());
        self.inner.send_batch(records).await
    }

    fn connections(&self) -> watch::Receiver<u64> {
        self.inner.connections()
    }
}

#[tokio::test]
async fn batcher_splits_into_max_sized_batches() {
    let sink = SizesSink::default();
    let mut b = Batcher::new(Duration::from_millis(100), 2);
    assert!(b.deadline().is_none());
    for id in 0..5 {
        b.push(ClusterRecord::SnapshotEnd { id });
    }
    assert!(b.full());
    assert!(b.deadline().is_some());
    b.flush(&sink).await.unwrap();
    assert!(b.deadline().is_none());
    assert_eq!(*sink.sizes.lock().unwrap(), vec![2, 2, 1]);
    let got: Vec<u64> = sink
        .inner
        .records()
        .into_iter()
        .map(|r| match r {
            ClusterRecord::SnapshotEnd { id } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------
// Roles: a source following a leadership it is given, against the test API
// server.
// ---------------------------------------------------------------------------

mod roles {
    use std::{path::Path, sync::Arc};

    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use telemetry_test_support::kube_api::{
        objects::{now_time, rescale_event, HpaBuilder, PodBuilder},
        KubeApiServer, Resource, Verb,
    };
    use tokio::task::JoinHandle;

    use super::*;
    use crate::{
        kube::{client_from, KubeSource, Leadership},
        VecSink,
    };

    const WAIT: Duration = Duration::from_secs(20);
    /// How long "nothing happens" is watched for.
    const QUIET: Duration = Duration::from_millis(600);

    struct Elected {
        sink: Arc<VecSink>,
        leadership: watch::Sender<Leadership>,
        ready: watch::Receiver<bool>,
        stop: watch::Sender<bool>,
        task: JoinHandle<Result<(), KubeSourceError>>,
    }

    async fn start(server: &KubeApiServer, dir: &Path) -> Elected {
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        let client = client_from(Some(kubeconfig), Some("fake".into()))
            .await
            .unwrap();
        let mut config = KubeSourceConfig::new(dir.join("state"));
        config.flush_interval = Duration::from_millis(30);
        config.metrics_interval = Duration::from_millis(200);
        config.metrics_retry_interval = Duration::from_millis(200);
        config.max_backoff = Duration::from_secs(1);
        let (leadership, rx) = watch::channel(Leadership::Standby { holder: None });
        let source = KubeSource::new(config).with_leadership(rx);
        let ready = source.ready();
        let (stop, stop_rx) = watch::channel(false);
        let sink = Arc::new(VecSink::new());
        let task_sink = sink.clone();
        let task = tokio::spawn(async move { source.run(client, &*task_sink, stop_rx).await });
        Elected {
            sink,
            leadership,
            ready,
            stop,
            task,
        }
    }

    impl Elected {
        fn lead(&self, epoch: u64) {
            self.leadership.send_replace(Leadership::Leader {
                epoch,
                since: Instant::now(),
            });
        }

        fn stand_by(&self) {
            self.leadership.send_replace(Leadership::Standby {
                holder: Some("other".into()),
            });
        }

        async fn wait_records(&self, what: &str, pred: impl Fn(&[ClusterRecord]) -> bool) {
            let deadline = Instant::now() + WAIT;
            while !pred(&self.sink.records()) {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; records:\n{:#?}",
                    self.sink.records()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Asserts that nothing reaches the sink for a while.
        async fn assert_quiet(&self, when: &str) {
            let (records, presents) = (self.sink.records().len(), self.sink.presents().len());
            tokio::time::sleep(QUIET).await;
            assert_eq!(
                (self.sink.records().len(), self.sink.presents().len()),
                (records, presents),
                "{when}: nothing may be shipped; records:\n{:#?}",
                self.sink.records()
            );
        }
    }

    fn pod(name: &str, phase: &str) -> k8s_openapi::api::core::v1::Pod {
        PodBuilder::new("shop", name)
            .container("c", Some("100m"), Some("1Mi"))
            .phase(phase)
            .build()
    }

    fn rescale(
        name: &str,
        count: i32,
        new_size: i32,
        at: &Time,
    ) -> k8s_openapi::api::core::v1::Event {
        rescale_event(
            "shop",
            name,
            "web",
            count,
            new_size,
            "test",
            (at.clone(), at.clone()),
        )
    }

    fn scale_keys(records: &[ClusterRecord]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| match r {
                ClusterRecord::ScaleEvent(e) => Some(e.key.clone()),
                _ => None,
            })
            .collect()
    }

    fn has_pod(records: &[ClusterRecord], name: &str) -> bool {
        records
            .iter()
            .any(|r| matches!(r, ClusterRecord::PodUpsert(p) if p.name == name))
    }

    /// The epoch stamped in front of the last batch with object state.
    fn last_epoch(records: &[ClusterRecord]) -> Option<u64> {
        records.iter().rev().find_map(|r| match r {
            ClusterRecord::LeaderEpoch { epoch } => Some(*epoch),
            _ => None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_ships_nothing_and_a_new_leader_ships_the_present_and_unshipped_rescales() {
        crate::kube::install_crypto_provider();
        let server = KubeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Rescale times must be at or after the replica's first start.
        let later = Time(Timestamp::from_second(now_time().0.as_second() + 5).unwrap());
        server.upsert_pod(&pod("web-1", "Running"));
        server.upsert_hpa(
            &HpaBuilder::new("shop", "web")
                .replicas(1, 5)
                .status(1, 1, None)
                .build(),
        );
        let src = start(&server, dir.path()).await;
        let mut ready = src.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();

        // Warm standby: watching, ready, shipping nothing.
        server.upsert_pod(&pod("web-2", "Pending"));
        server.upsert_event(&rescale("web.a", 1, 3, &later));
        src.assert_quiet("standby").await;

        // Takeover: present and snapshot stamped with the epoch, the held
        // rescale counted.
        src.lead(4);
        src.wait_records("the takeover snapshot and the held rescale", |r| {
            has_pod(r, "web-2") && scale_keys(r).len() == 1
        })
        .await;
        let records = src.sink.records();
        assert_eq!(records[0], ClusterRecord::LeaderEpoch { epoch: 4 });
        let presents = src.sink.presents();
        assert_eq!(presents.len(), 1);
        assert_eq!(presents[0][0], ClusterRecord::LeaderEpoch { epoch: 4 });
        assert!(has_pod(&presents[0], "web-1") && has_pod(&presents[0], "web-2"));
        assert_eq!(src.sink.leader_epoch(), Some(4));

        // A leader ships changes at once.
        server.upsert_pod(&pod("web-2", "Running"));
        src.wait_records("the leader's upsert", |r| {
            r.iter().any(|r| matches!(r, ClusterRecord::PodUpsert(p) if p.name == "web-2" && p.phase == telemetry_schema::PodPhase::Running))
        })
        .await;

        // Lost the lease: nothing more, not even rescales (held instead).
        src.stand_by();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.upsert_pod(&pod("web-3", "Running"));
        server.upsert_event(&rescale("web.a", 2, 4, &later));
        server.upsert_event(&rescale("web.b", 1, 2, &later));
        src.assert_quiet("standby again").await;

        // Leading again (a later term): the rescales of the standby time,
        // and only those: occurrence 1 of web.a went out in epoch 4.
        src.lead(6);
        src.wait_records("the second takeover", |r| {
            has_pod(r, "web-3") && scale_keys(r).len() == 3
        })
        .await;
        let records = src.sink.records();
        let keys = scale_keys(&records);
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), 3, "every occurrence once: {keys:?}");
        assert_eq!(last_epoch(&records), Some(6));
        assert_eq!(src.sink.presents().len(), 2);
        assert_eq!(
            src.sink.presents()[1][0],
            ClusterRecord::LeaderEpoch { epoch: 6 }
        );

        src.stop.send_replace(true);
        tokio::time::timeout(WAIT, src.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_polls_pod_metrics_less_often_and_at_once_on_takeover() {
        crate::kube::install_crypto_provider();
        let server = KubeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        server.upsert_pod(&pod("web-1", "Running"));
        let src = start(&server, dir.path()).await;
        let mut ready = src.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        let polls = || server.request_count(Resource::PodMetrics, Verb::List);
        // Standing by: every 800 ms (4 × 200 ms), not every 200 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = polls();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let standby_polls = polls() - before;
        assert!(
            (1..=3).contains(&standby_polls),
            "a standby polled {standby_polls} times in 2 s"
        );
        // Leading: a poll at once, then every 200 ms.
        let before = polls();
        src.lead(2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(polls() > before, "no poll at the takeover");
        let before = polls();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let leader_polls = polls() - before;
        assert!(
            leader_polls >= 6,
            "a leader polled {leader_polls} times in 2 s"
        );
        src.stop.send_replace(true);
        tokio::time::timeout(WAIT, src.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconnect_while_standing_by_sets_no_present() {
        crate::kube::install_crypto_provider();
        let server = KubeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        server.upsert_pod(&pod("web-1", "Running"));
        let src = start(&server, dir.path()).await;
        let mut ready = src.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        src.sink.reconnect();
        src.assert_quiet("standby reconnect").await;
        src.lead(1);
        src.wait_records("the takeover", |r| has_pod(r, "web-1"))
            .await;
        src.sink.reconnect();
        let deadline = Instant::now() + WAIT;
        while src.sink.presents().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "a leader's reconnect sets a present"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The elector going away counts as standing by.
        drop(src.leadership);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let shipped = src.sink.records().len();
        server.upsert_pod(&pod("web-9", "Running"));
        tokio::time::sleep(QUIET).await;
        assert_eq!(src.sink.records().len(), shipped);
        src.stop.send_replace(true);
        tokio::time::timeout(WAIT, src.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[test]
    fn standing_by_drops_waiting_object_state_and_keeps_measurements() {
        let mut b = Batcher::new(Duration::from_secs(1), 10);
        b.push(ClusterRecord::SnapshotBegin {
            id: 1,
            kinds: vec![ObjectKind::Pod],
        });
        b.push(ClusterRecord::PodUsage(telemetry_schema::PodUsage {
            namespace: "n".into(),
            pod: "p".into(),
            timestamp_ms: 1,
            containers: vec![],
        }));
        assert_eq!(b.drop_object_state(), 1);
        assert!(b.deadline().is_some());
        assert_eq!(b.drop_object_state(), 0);
    }
}
