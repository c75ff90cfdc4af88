//! The cluster of the leader-failover scenario: the test Kubernetes API
//! server and a workload that keeps changing it.
//!
//! What it owns: a [`KubeApiServer`] whose listening socket is made inside
//! the sender's namespace (so the replicas reach it on that namespace's
//! loopback while the receiver stays across the veth link; its tasks run
//! on the suite's own runtime), the objects the scenario starts from, the
//! marker pods the scenario adds at each kill, and a [`Workload`] thread
//! that changes the cluster every [`TICK`]:
//!
//! * HPA `ticker`'s replica count and pod `web-1`'s CPU usage grow by one
//!   every tick (series that only ever grow, so a value that moves back at
//!   the receiver is a regression, and a value that stops moving is a gap);
//! * HPA `web` rescales every [`RESCALE_EVERY`] ticks, 2 → 3 → 2 → …, as the
//!   HPA controller writes it (the rescaling status, a `SuccessfulRescale`
//!   Event, the settled status); repeats of the same size are one Event
//!   object whose `count` grows, as the API server aggregates them;
//! * a pod `churn-N` is created every [`CHURN_EVERY`] ticks and the one
//!   three before it deleted (a deleted pod must never come back).
//!
//! What it guarantees: [`Workload::stop`] returns how many rescale
//! occurrences the API server emitted, each of which the receiver must count
//! exactly once.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::autoscaling::v2::HorizontalPodAutoscaler, apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde_json::json;
use telemetry_test_support::kube_api::{
    objects::{now_time, pod_metrics, rescale_event, HpaBuilder, PodBuilder},
    KubeApiServer,
};
use tokio::runtime::Runtime;

use crate::netns::Netns;

/// The namespace of every object.
pub(super) const NAMESPACE: &str = "shop";
/// How often the workload changes the cluster.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// Ticks between two rescales of HPA `web` (4 s: the HPA controller
/// rescales an HPA at most once per sync period of 15 s; faster here so
/// every failover has rescales on both sides of it).
const RESCALE_EVERY: u64 = 16;
/// Ticks between two new churn pods.
const CHURN_EVERY: u64 = 8;
/// Churn pods alive at once.
const CHURN_ALIVE: u64 = 3;

/// The API server and the runtime its tasks run on.
#[derive(Debug)]
pub(super) struct Cluster {
    rt: Runtime,
    api: Arc<KubeApiServer>,
}

impl Cluster {
    /// Starts the server listening on 127.0.0.1 inside `ns`, with HPAs
    /// `web` (2 replicas) and `ticker`, and pod `web-1` with its usage.
    pub(super) fn start(ns: &Netns) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-api")
            .enable_all()
            .build()?;
        // The socket is made by the thread that runs `block_on`, which
        // entered `ns`; connections accepted from it stay in `ns`.
        let api = ns
            .run(|| rt.block_on(KubeApiServer::start()))?
            .context("starting the test Kubernetes API server")?;
        let api = Arc::new(api);
        api.upsert_hpa(&web_hpa(2, None));
        api.upsert_hpa(&ticker_hpa(0));
        api.upsert_pod(&pod("web-1", "node-a"));
        api.set_pod_metrics(usage(0));
        Ok(Self { rt, api })
    }

    /// Writes a kubeconfig for the server (valid inside the namespace).
    pub(super) fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        self.api.write_kubeconfig(path)?;
        Ok(())
    }

    /// Adds a pod that is never deleted.
    pub(super) fn add_pod(&self, name: &str) {
        self.api.upsert_pod(&pod(name, "node-b"));
    }

    /// Starts changing the cluster.
    pub(super) fn workload(&self) -> Workload {
        Workload::start(self.api.clone())
    }

    /// Stops the server (inside its runtime).
    pub(super) fn stop(self) {
        self.rt.block_on(self.api.stop());
    }
}

fn pod(name: &str, node: &str) -> k8s_openapi::api::core::v1::Pod {
    PodBuilder::new(NAMESPACE, name)
        .container("app", Some("100m"), Some("64Mi"))
        .node(node)
        .phase("Running")
        .build()
}

/// Pod `web-1`'s usage at tick `n`: `n` millicores, timestamped now to the
/// millisecond, so every poll after a tick sees a new value.
fn usage(n: u64) -> serde_json::Value {
    let mut m = pod_metrics(NAMESPACE, "web-1", &[("app", &format!("{n}m"), "64Mi")]);
    let now =
        Timestamp::from_millisecond(telemetry_link::unix_ms()).unwrap_or(Timestamp::UNIX_EPOCH);
    m["timestamp"] = json!(now.to_string());
    m
}

fn ticker_hpa(n: u64) -> HorizontalPodAutoscaler {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    HpaBuilder::new(NAMESPACE, "ticker")
        .replicas(1, i32::MAX)
        .status(n, n, None)
        .build()
}

/// HPA `web` at `current` → `desired`, last rescaled at `scaled`.
fn web(current: i32, desired: i32, scaled: Option<Time>) -> HorizontalPodAutoscaler {
    HpaBuilder::new(NAMESPACE, "web")
        .replicas(1, 20)
        .resource_utilization("cpu", 50)
        .status(current, desired, scaled)
        .build()
}

fn web_hpa(replicas: i32, scaled: Option<Time>) -> HorizontalPodAutoscaler {
    web(replicas, replicas, scaled)
}

/// The thread that changes the cluster.
#[derive(Debug)]
pub(super) struct Workload {
    stop: Arc<AtomicBool>,
    rescales: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// The workload thread's own state.
struct Driver {
    api: Arc<KubeApiServer>,
    rescales: Arc<AtomicU64>,
    tick: u64,
    web: i32,
    /// `(event name, first occurrence, count)` per new size.
    events: [(String, Option<Time>, i32); 2],
    churn: u64,
}

impl Driver {
    fn step(&mut self) {
        self.tick += 1;
        let n = self.tick;
        self.api.upsert_hpa(&ticker_hpa(n));
        self.api.set_pod_metrics(usage(n));
        if n.is_multiple_of(RESCALE_EVERY) {
            self.rescale();
        }
        if n % CHURN_EVERY == CHURN_EVERY / 2 {
            self.churn += 1;
            self.api
                .upsert_pod(&pod(&format!("churn-{}", self.churn), "node-c"));
            if self.churn > CHURN_ALIVE {
                let old = format!("churn-{}", self.churn - CHURN_ALIVE);
                self.api.delete_pod(NAMESPACE, &old);
            }
        }
    }

    /// One rescale of `web` between 2 and 3 replicas, written as the HPA
    /// controller writes it.
    fn rescale(&mut self) {
        let (from, to) = (self.web, 5 - self.web);
        let t = now_time();
        self.api.upsert_hpa(&web(from, to, Some(t.clone())));
        let slot = usize::from(to == 3);
        let (name, first, count) = &mut self.events[slot];
        *count += 1;
        let first = first.get_or_insert_with(|| t.clone()).clone();
        let reason = if to > from {
            "cpu resource utilization (percentage of request) above target"
        } else {
            "All metrics below target"
        };
        self.api.upsert_event(&rescale_event(
            NAMESPACE,
            name,
            "web",
            *count,
            to,
            reason,
            (first, t.clone()),
        ));
        self.rescales.fetch_add(1, Ordering::SeqCst);
        self.api.upsert_hpa(&web_hpa(to, Some(t)));
        self.web = to;
    }
}

impl Workload {
    fn start(api: Arc<KubeApiServer>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rescales = Arc::new(AtomicU64::new(0));
        let mut driver = Driver {
            api,
            rescales: rescales.clone(),
            tick: 0,
            web: 2,
            events: [
                ("web.scaled-to-2".into(), None, 0),
                ("web.scaled-to-3".into(), None, 0),
            ],
            churn: 0,
        };
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = std::time::Instant::now();
            while !flag.load(Ordering::SeqCst) {
                driver.step();
                next += TICK;
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
        });
        Self {
            stop,
            rescales,
            thread: Some(thread),
        }
    }

    /// Rescale occurrences emitted so far.
    pub(super) fn rescales(&self) -> u64 {
        self.rescales.load(Ordering::SeqCst)
    }

    /// Stops changing the cluster; returns the rescale occurrences emitted.
    pub(super) fn stop(mut self) -> u64 {
        self.halt();
        self.rescales()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.halt();
    }
}
