//! Integration tests of `LeaderElector` against the test Kubernetes API
//! server, through the real kube client.
//!
//! Each replica talks to the server through its own `ApiProxy`, so one can
//! be cut off while the others keep working. Timings are short (lease 3 s,
//! renew deadline 2 s, retry 0.5 s). Every replica's leadership changes are
//! recorded with timestamps by a task of their own; waits poll, and a fixed
//! pause is used only to show that something does not happen.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use telemetry_sources::kube::{
    client_from, LeaderElectionConfig, LeaderElectionError, LeaderElector, Leadership,
};
use telemetry_test_support::kube_api::{ApiProxy, KubeApiServer, Resource, Verb};
use tokio::{sync::watch, task::JoinHandle};

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// Scheduling and request latency allowed on top of the protocol's bounds.
const SLACK: Duration = Duration::from_millis(400);
const WAIT: Duration = Duration::from_secs(20);
const NAMESPACE: &str = "telemetry";
const NAME: &str = "telemetry-sender";

/// One running replica.
struct Replica {
    id: &'static str,
    leadership: watch::Receiver<Leadership>,
    /// Every leadership change, timestamped when observed.
    log: Arc<Log>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), LeaderElectionError>>,
    proxy: ApiProxy,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(server: &KubeApiServer, id: &'static str) -> Replica {
        let proxy = ApiProxy::start(server.addr()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        proxy.write_kubeconfig(&kubeconfig).unwrap();
        let client = client_from(Some(kubeconfig), Some("fake".into()))
            .await
            .unwrap();
        let config = LeaderElectionConfig {
            lease_duration: LEASE,
            renew_deadline: RENEW,
            retry_period: RETRY,
            ..LeaderElectionConfig::new(NAME, NAMESPACE, id)
        };
        let elector = LeaderElector::new(client, config).unwrap();
        let leadership = elector.leadership();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut changes = elector.leadership();
        let recorder = log.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let now = Instant::now();
                let value = changes.borrow_and_update().clone();
                recorder.lock().unwrap().push((now, value));
            }
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(elector.run(stop_rx));
        Replica {
            id,
            leadership,
            log,
            stop,
            task,
            proxy,
            _dir: dir,
        }
    }

    fn current(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    fn is_leader(&self) -> bool {
        self.current().is_leader()
    }

    /// When this replica first reported a leadership matching `pred` at or
    /// after `after`, if it has.
    fn first(&self, after: Instant, pred: impl Fn(&Leadership) -> bool) -> Option<Instant> {
        first_in(&self.log, after, pred)
    }

    /// [`Replica::first`], waiting for the recorder to log it.
    async fn recorded(&self, after: Instant, pred: impl Fn(&Leadership) -> bool) -> Instant {
        recorded_in(&self.log, after, pred).await
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&Leadership) -> bool) -> Instant {
        let mut rx = self.leadership.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|l| pred(l)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: timed out waiting for {what}; now {:?}",
                    self.id,
                    self.current()
                )
            })
            .expect("elector alive");
        Instant::now()
    }

    async fn shutdown(self) -> Result<(), LeaderElectionError> {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("elector stops in time")
            .expect("elector did not panic")
    }
}

type Log = Mutex<Vec<(Instant, Leadership)>>;

fn first_in(log: &Log, after: Instant, pred: impl Fn(&Leadership) -> bool) -> Option<Instant> {
    log.lock()
        .unwrap()
        .iter()
        .find(|(t, l)| *t >= after && pred(l))
        .map(|(t, _)| *t)
}

/// [`first_in`], waiting for the recorder task to log it.
async fn recorded_in(log: &Log, after: Instant, pred: impl Fn(&Leadership) -> bool) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = first_in(log, after, &pred) {
            return t;
        }
        assert!(Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stored(server: &KubeApiServer) -> LeaseSpec {
    server
        .lease(NAMESPACE, NAME)
        .and_then(|l: Lease| l.spec)
        .expect("the Lease exists")
}

/// Waits until exactly one of `replicas` leads; its index.
async fn one_leader(replicas: &[&Replica]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].is_leader())
            .collect();
        if let [one] = leaders.as_slice() {
            return *one;
        }
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        assert!(Instant::now() < deadline, "no leader in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_acquires_renews_and_releases() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    let a = Replica::start(&server, "a").await;
    a.wait_for("leadership", Leadership::is_leader).await;
    assert_eq!(
        a.current().epoch(),
        Some(0),
        "the first term of a new Lease"
    );
    let spec = stored(&server);
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(spec.lease_transitions, Some(0));
    assert!(spec.acquire_time.is_some());
    let first_renew = spec.renew_time.clone().unwrap();
    // It renews every retry period.
    let deadline = Instant::now() + WAIT;
    while stored(&server).renew_time.unwrap() == first_renew {
        assert!(Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.is_leader());
    assert!(server.request_count(Resource::Leases, Verb::Create) >= 1);
    assert!(server.request_count(Resource::Leases, Verb::Update) >= 1);
    let log = a.log.clone();
    let stopping = Instant::now();
    a.shutdown().await.unwrap();
    let spec = stored(&server);
    assert_eq!(spec.holder_identity, None, "released");
    assert_eq!(
        spec.lease_transitions,
        Some(0),
        "a release is no transition"
    );
    recorded_in(&log, stopping, |l| {
        *l == Leadership::Standby { holder: None }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_exactly_one_leader() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    let (a, b, c) = tokio::join!(
        Replica::start(&server, "a"),
        Replica::start(&server, "b"),
        Replica::start(&server, "c")
    );
    let all = [&a, &b, &c];
    let leader = one_leader(&all).await;
    let holder = all[leader].id;
    // Sample often for several lease durations: always exactly one leader,
    // the same one, and the others name it.
    let end = Instant::now() + LEASE * 2;
    let mut samples = 0;
    while Instant::now() < end {
        let leaders: Vec<_> = all.iter().filter(|r| r.is_leader()).map(|r| r.id).collect();
        assert_eq!(leaders, [holder], "sample {samples}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for r in all.iter().filter(|r| r.id != holder) {
        assert_eq!(
            r.current(),
            Leadership::Standby {
                holder: Some(holder.into())
            }
        );
    }
    assert_eq!(stored(&server).holder_identity.as_deref(), Some(holder));
    tracing::info!(samples, "samples with exactly one leader");
    for r in [a, b, c] {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_once_the_lease_expires() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    let a = Replica::start(&server, "a").await;
    a.wait_for("leadership", Leadership::is_leader).await;
    let b = Replica::start(&server, "b").await;
    b.wait_for("standby naming a", |l| {
        *l == Leadership::Standby {
            holder: Some("a".into()),
        }
    })
    .await;
    let epoch_a = a.current().epoch().unwrap();
    // Kill A: it stops renewing and never releases.
    a.task.abort();
    let killed = Instant::now();
    let mut last_renew_of_a = stored(&server).renew_time.unwrap();
    let deadline = killed + WAIT;
    while !b.is_leader() {
        let spec = stored(&server);
        if spec.holder_identity.as_deref() == Some("a") {
            last_renew_of_a = spec.renew_time.unwrap();
        }
        assert!(Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took_over = b.recorded(killed, Leadership::is_leader).await;
    let after_kill = took_over - killed;
    assert!(after_kill >= LEASE - RETRY, "too early: {after_kill:?}");
    assert!(
        after_kill <= LEASE + RETRY.mul_f64(2.4) + SLACK,
        "too late: {after_kill:?}"
    );
    // Measured on the Lease: from A's last renewal to B's acquisition,
    // within lease duration + one (jittered) retry period.
    let spec = stored(&server);
    let gap = spec.acquire_time.unwrap().0.as_millisecond() - last_renew_of_a.0.as_millisecond();
    let gap = Duration::from_millis(u64::try_from(gap).unwrap());
    assert!(gap >= LEASE, "{gap:?}");
    assert!(gap <= LEASE + RETRY.mul_f64(1.2) + SLACK, "{gap:?}");
    let epoch_b = b.current().epoch().unwrap();
    assert!(epoch_b > epoch_a, "{epoch_b} > {epoch_a}");
    assert_eq!(
        spec.lease_transitions,
        Some(i32::try_from(epoch_b).unwrap())
    );
    assert_eq!(
        a.current(),
        Leadership::Standby { holder: None },
        "a dead elector reports standby"
    );
    tracing::info!(?after_kill, ?gap, "takeover after a kill");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_over_within_a_retry_period() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    let a = Replica::start(&server, "a").await;
    a.wait_for("leadership", Leadership::is_leader).await;
    let b = Replica::start(&server, "b").await;
    b.wait_for("standby naming a", |l| {
        *l == Leadership::Standby {
            holder: Some("a".into()),
        }
    })
    .await;
    let log_a = a.log.clone();
    let stopping = Instant::now();
    a.shutdown().await.unwrap();
    let took_over = b.wait_for("leadership", Leadership::is_leader).await;
    let handover = took_over - stopping;
    assert!(handover <= RETRY.mul_f64(1.2) + SLACK, "{handover:?}");
    let a_stepped_down = recorded_in(&log_a, stopping, |l| !l.is_leader()).await;
    let b_leads = b.recorded(stopping, Leadership::is_leader).await;
    assert!(a_stepped_down < b_leads, "a stopped leading before b began");
    assert_eq!(b.current().epoch(), Some(1));
    assert_eq!(stored(&server).holder_identity.as_deref(), Some("b"));
    tracing::info!(?handover, "takeover after a graceful stop");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_fences_itself_before_another_leads() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    let a = Replica::start(&server, "a").await;
    a.wait_for("leadership", Leadership::is_leader).await;
    let b = Replica::start(&server, "b").await;
    b.wait_for("standby naming a", |l| {
        *l == Leadership::Standby {
            holder: Some("a".into()),
        }
    })
    .await;
    a.proxy.cut();
    let cut = Instant::now();
    a.wait_for("fencing", |l| !l.is_leader()).await;
    b.wait_for("leadership", Leadership::is_leader).await;
    let fenced = a.recorded(cut, |l| !l.is_leader()).await;
    let b_leads = b.recorded(cut, Leadership::is_leader).await;
    assert!(
        fenced < b_leads,
        "fenced {:?} after the cut, b led {:?} after it",
        fenced - cut,
        b_leads - cut
    );
    assert!(
        fenced - cut <= RENEW + SLACK,
        "fenced {:?} after the cut",
        fenced - cut
    );
    assert!(
        b_leads - cut >= LEASE - RETRY,
        "b led {:?} after the cut",
        b_leads - cut
    );
    assert_eq!(a.current(), Leadership::Standby { holder: None });
    // Restored, A stands by and names the new holder; it does not lead
    // again.
    a.proxy.restore();
    a.wait_for("standby naming b", |l| {
        *l == Leadership::Standby {
            holder: Some("b".into()),
        }
    })
    .await;
    tokio::time::sleep(LEASE).await;
    assert!(a.first(cut, Leadership::is_leader).is_none(), "a led again");
    assert!(b.is_leader());
    tracing::info!(fenced = ?fenced - cut, b_leads = ?b_leads - cut, "partition timeline");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_lease_ends_the_election_with_an_rbac_error() {
    telemetry_test_support::init();
    let server = KubeApiServer::start().await.unwrap();
    server.forbid(Resource::Leases, Verb::Create);
    let a = Replica::start(&server, "a").await;
    let result = tokio::time::timeout(WAIT, a.task).await.unwrap().unwrap();
    match result {
        Err(LeaderElectionError::Rbac {
            verb,
            namespace,
            message,
        }) => {
            assert_eq!((verb, namespace.as_str()), ("create", NAMESPACE));
            assert!(
                message.contains("cannot create resource \"leases\""),
                "{message}"
            );
        }
        other => panic!("expected an RBAC error, got {other:?}"),
    }
    assert!(!a.leadership.borrow().is_leader());
}
