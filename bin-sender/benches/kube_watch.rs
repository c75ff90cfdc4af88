//! Sender RSS and CPU while watching a large cluster (not a timed test).
//!
//! `cargo bench -p telemetry-sender --bench kube_watch`
//!
//! Starts the test Kubernetes API server in this process with 10,000 pods
//! (50 namespaces × 20 Deployments × 10 pods, each with realistic metadata,
//! two containers with requests, status, managedFields) and 1,000
//! autoscaling/v2 HPAs (one per Deployment), plus metrics.k8s.io usage for
//! every pod; starts the release `telemetry-receiver` and the release
//! `telemetry-sender` (`--source kube --kubeconfig …`, otherwise production
//! defaults: metrics every 15 s, fsync per batch, log level info) as real
//! processes; waits until the sender is ready (first full lists shipped) and
//! its spool is drained; then applies changes through the API server at a
//! fixed rate for a measured window — pod status churn, label changes, phase
//! flips, HPA status updates with some rescales (+ SuccessfulRescale events),
//! pod deletes + replacements — sampling the sender's `/proc/PID/stat`
//! (utime + stime) and `/proc/PID/status` (VmRSS, VmHWM) every second.
//!
//! The test API server paginates lists (`limit`/`continue`) as a real one
//! does, so the sender's initial list arrives in pages of 500 pods, as in
//! production; metrics.k8s.io is listed whole, as metrics-server serves it.
//!
//! Prints the machine, the initial-list time, steady-state CPU in % of one
//! core (the window only, the initial list excluded), peak RSS (VmHWM), RSS
//! at the end, records/s shipped, each against the targets (≤ 64 MiB RSS,
//! ≤ 5 % of one core), next to kube-state-metrics' published guidance.
//!
//! Environment: `KUBE_WATCH_SECS` (window, default 60), `KUBE_WATCH_RATE`
//! (API writes per second, default 100), `KUBE_WATCH_PODS` (default 10000),
//! `KUBE_WATCH_HPAS` (default 1000), `KUBE_WATCH_METRICS_INTERVAL` (the
//! sender's `--metrics-interval`, default 15s), `KUBE_WATCH_POD_METRICS`
//! (`0`: serve no pod metrics, to see the metrics poll's share),
//! `KUBE_WATCH_SENDER_ENV`
//! (extra `NAME=VALUE` pairs, space-separated, for the sender process: e.g.
//! `MALLOC_ARENA_MAX=2`, or heaptrack's `LD_PRELOAD=…/libheaptrack_preload.so
//! DUMP_HEAPTRACK_OUTPUT=/tmp/ht.raw` to see what the memory is).
//!
//! Both binaries must be release builds next to this bench's profile
//! directory (`target/release/`); `cargo bench` builds the sender, the
//! receiver needs `cargo build --release -p telemetry-receiver`.

#![allow(clippy::too_many_lines)] // a bench is one measured scenario, read top to bottom
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod};
use serde_json::{json, Value};
use telemetry_test_support::{
    http::{get, wait_for},
    kube_api::{
        objects::{now_time, pod_metrics, rescale_event},
        KubeApiServer, Resource, Verb,
    },
    pki::TestPki,
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::Exposition,
};

const TARGET_RSS_MIB: f64 = 64.0;
const TARGET_CPU_PERCENT: f64 = 5.0;
const NAMESPACES: usize = 50;
const PODS_PER_DEPLOYMENT: usize = 10;
const NODES: usize = 100;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// A deterministic PRNG (xorshift64*), so runs apply the same change mix.
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn hex(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rng.next()));
    }
    s.truncate(len);
    s
}

fn uuid(rng: &mut Rng) -> String {
    let h = hex(rng, 32);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

// ---------------------------------------------------------------------------
// Objects as a real API server returns them
// ---------------------------------------------------------------------------

/// One Deployment's identity.
#[derive(Clone)]
struct Workload {
    namespace: String,
    name: String,
    replica_set: String,
    hash: String,
    cpu: &'static str,
    memory: &'static str,
}

fn timestamp() -> String {
    serde_json::to_value(now_time())
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A pod of `w` with the fields a kubelet-managed pod has (status,
/// conditions, container statuses, projected token volume, managedFields).
fn make_pod(rng: &mut Rng, w: &Workload, name: &str, phase: &str) -> Pod {
    let ts = timestamp();
    let node = rng.below(NODES);
    let host_ip = format!("10.0.{}.{}", node / 250, node % 250 + 1);
    let pod_ip = format!("10.244.{}.{}", rng.below(250), rng.below(250) + 1);
    let vol = format!("kube-api-access-{}", &hex(rng, 5));
    let running = phase == "Running";
    let container_status = |rng: &mut Rng, cname: &str, image: &str| {
        json!({
            "name": cname,
            "state": if running { json!({"running": {"startedAt": ts}}) } else { json!({"waiting": {"reason": "ContainerCreating"}}) },
            "lastState": {},
            "ready": running,
            "restartCount": 0,
            "image": image,
            "imageID": format!("{image}@sha256:{}", hex(rng, 64)),
            "containerID": format!("containerd://{}", hex(rng, 64)),
            "started": running,
        })
    };
    let app_image = format!("registry.example.com/{}/{}:1.4.2", w.namespace, w.name);
    let sidecar_image = "registry.example.com/platform/log-shipper:2.9.0".to_owned();
    let conditions: Vec<Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .map(|t| {
        let ok = running || matches!(*t, "Initialized" | "PodScheduled");
        json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": ts})
    })
    .collect();
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{}-", w.replica_set),
            "namespace": w.namespace,
            "uid": uuid(rng),
            "creationTimestamp": ts,
            "labels": {
                "app.kubernetes.io/name": w.name,
                "app.kubernetes.io/instance": w.name,
                "app.kubernetes.io/part-of": w.namespace,
                "app.kubernetes.io/version": "1.4.2",
                "pod-template-hash": w.hash,
                "team": w.namespace,
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "8080",
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": w.replica_set,
                "uid": uuid(rng), "controller": true, "blockOwnerDeletion": true,
            }],
            "managedFields": [
                {
                    "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": ts,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}},
                        "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:resources": {".": {}, "f:requests": {}}}}}},
                },
                {
                    "manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts,
                    "fieldsType": "FieldsV1", "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:startTime": {}}},
                },
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": app_image,
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
                        {"name": "LOG_LEVEL", "value": "info"},
                    ],
                    "resources": {"requests": {"cpu": w.cpu, "memory": w.memory}, "limits": {"memory": "1Gi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "volumeMounts": [{"name": vol, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                },
                {
                    "name": "log-shipper",
                    "image": sidecar_image,
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                    "volumeMounts": [{"name": vol, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                },
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": format!("node-{node:03}"),
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "volumes": [{
                "name": vol,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                    "defaultMode": 420,
                },
            }],
        },
        "status": {
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": ts,
            "containerStatuses": [container_status(rng, "app", &app_image), container_status(rng, "log-shipper", &sidecar_image)],
            "qosClass": "Burstable",
        },
    });
    serde_json::from_value(v).expect("valid pod")
}

fn make_hpa(
    rng: &mut Rng,
    w: &Workload,
    current: i32,
    desired: i32,
    utilization: i32,
) -> HorizontalPodAutoscaler {
    let ts = timestamp();
    let v = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": w.name,
            "namespace": w.namespace,
            "uid": uuid(rng),
            "creationTimestamp": ts,
            "labels": {"app.kubernetes.io/name": w.name, "app.kubernetes.io/part-of": w.namespace},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name},
            "minReplicas": 2,
            "maxReplicas": 20,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "400Mi"}}},
            ],
        },
        "status": {
            "lastScaleTime": ts,
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": utilization, "averageValue": "180m"}}},
                {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "310Mi"}}},
            ],
            "conditions": [
                {"type": "AbleToScale", "status": "True", "lastTransitionTime": ts, "reason": "ReadyForNewScale", "message": "recommended size matches current size"},
                {"type": "ScalingActive", "status": "True", "lastTransitionTime": ts, "reason": "ValidMetricFound", "message": "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"},
                {"type": "ScalingLimited", "status": "False", "lastTransitionTime": ts, "reason": "DesiredWithinRange", "message": "the desired count is within the acceptable range"},
            ],
        },
    });
    serde_json::from_value(v).expect("valid hpa")
}

/// The cluster as the bench drives it.
struct Cluster {
    workloads: Vec<Workload>,
    /// (workload index, pod) for every live pod.
    pods: Vec<(usize, Pod)>,
    hpas: Vec<(HorizontalPodAutoscaler, i32)>,
    rng: Rng,
    next_pod: u64,
    next_event: u64,
}

impl Cluster {
    fn new(pods: usize, hpas: usize) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let deployments = pods.div_ceil(PODS_PER_DEPLOYMENT).max(hpas).max(1);
        let sizes = [
            ("100m", "128Mi"),
            ("250m", "256Mi"),
            ("500m", "512Mi"),
            ("1", "1Gi"),
        ];
        let workloads: Vec<Workload> = (0..deployments)
            .map(|i| {
                let hash = hex(&mut rng, 10);
                let name = format!("svc-{:04}", i);
                let (cpu, memory) = sizes[i % sizes.len()];
                Workload {
                    namespace: format!("team-{:02}", i % NAMESPACES),
                    replica_set: format!("{name}-{hash}"),
                    name,
                    hash,
                    cpu,
                    memory,
                }
            })
            .collect();
        let mut cluster = Cluster {
            workloads,
            pods: Vec::with_capacity(pods),
            hpas: Vec::with_capacity(hpas),
            rng,
            next_pod: 0,
            next_event: 0,
        };
        for i in 0..pods {
            let w = i % deployments;
            let phase = if i % 50 == 0 { "Pending" } else { "Running" };
            let pod = cluster.new_pod(w, phase);
            cluster.pods.push((w, pod));
        }
        for w in 0..hpas {
            let hpa = make_hpa(&mut cluster.rng, &cluster.workloads[w], 10, 10, 55);
            cluster.hpas.push((hpa, 10));
        }
        cluster
    }

    fn new_pod(&mut self, w: usize, phase: &str) -> Pod {
        self.next_pod += 1;
        let workload = self.workloads[w].clone();
        let name = format!(
            "{}-{}",
            workload.replica_set,
            &hex(&mut Rng(self.next_pod.wrapping_mul(0x9e37_79b9) | 1), 5)
        );
        make_pod(&mut self.rng, &workload, &name, phase)
    }

    /// Applies one random change; returns the number of API writes made.
    fn change(
        &mut self,
        server: &KubeApiServer,
        with_metrics: bool,
        stats: &mut BTreeMap<&'static str, u64>,
    ) -> usize {
        let roll = self.rng.below(100);
        let i = self.rng.below(self.pods.len());
        match roll {
            // Kubelet status churn that changes nothing the sender ships.
            0..=29 => {
                let pod = &mut self.pods[i].1;
                if let Some(cs) = pod
                    .status
                    .as_mut()
                    .and_then(|s| s.container_statuses.as_mut())
                {
                    cs[0].restart_count += 1;
                }
                server.upsert_pod(pod);
                *stats.entry("pod status churn").or_default() += 1;
                1
            }
            // Label change (not shipped either).
            30..=49 => {
                let n = self.rng.next() % 1000;
                let pod = &mut self.pods[i].1;
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("rollout".into(), n.to_string());
                server.upsert_pod(pod);
                *stats.entry("pod label").or_default() += 1;
                1
            }
            // Phase flip Running ↔ Pending.
            50..=69 => {
                let pod = &mut self.pods[i].1;
                if let Some(status) = pod.status.as_mut() {
                    let next = if status.phase.as_deref() == Some("Running") {
                        "Pending"
                    } else {
                        "Running"
                    };
                    status.phase = Some(next.to_owned());
                }
                server.upsert_pod(pod);
                *stats.entry("pod phase").or_default() += 1;
                1
            }
            // HPA status: mostly a new utilization, sometimes a rescale.
            70..=89 => {
                let h = self.rng.below(self.hpas.len());
                let utilization = 30 + self.rng.below(70) as i32;
                let rescale = self.rng.below(10) == 0;
                let (hpa, replicas) = &mut self.hpas[h];
                let status = hpa.status.as_mut().expect("status");
                if let Some(m) = status.current_metrics.as_mut().and_then(|m| m.first_mut()) {
                    if let Some(r) = m.resource.as_mut() {
                        r.current.average_utilization = Some(utilization);
                    }
                }
                if !rescale {
                    server.upsert_hpa(hpa);
                    *stats.entry("HPA metrics").or_default() += 1;
                    return 1;
                }
                let old = *replicas;
                let new = if old >= 15 { old - 3 } else { old + 2 };
                let t = now_time();
                status.current_replicas = Some(old);
                status.desired_replicas = new;
                status.last_scale_time = Some(t.clone());
                server.upsert_hpa(hpa);
                *replicas = new;
                self.next_event += 1;
                let w = &self.workloads[h];
                let reason = if new > old {
                    "cpu resource utilization (percentage of request) above target"
                } else {
                    "All metrics below target"
                };
                server.upsert_event(&rescale_event(
                    &w.namespace,
                    &format!("{}.{:x}", w.name, self.next_event),
                    &w.name,
                    1,
                    new,
                    reason,
                    (t.clone(), t),
                ));
                *stats.entry("HPA rescale (+event)").or_default() += 1;
                2
            }
            // A pod replaced: delete, create another of the same workload.
            _ => {
                let (w, old) = self.pods.swap_remove(i);
                let ns = old.metadata.namespace.clone().unwrap_or_default();
                let name = old.metadata.name.clone().unwrap_or_default();
                server.delete_pod(&ns, &name);
                server.remove_pod_metrics(&ns, &name);
                let pod = self.new_pod(w, "Pending");
                server.upsert_pod(&pod);
                if with_metrics {
                    set_metrics(server, &pod, 1);
                }
                self.pods.push((w, pod));
                *stats.entry("pod delete + create").or_default() += 1;
                2
            }
        }
    }
}

fn set_metrics(server: &KubeApiServer, pod: &Pod, seed: usize) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let cpu = format!("{}m", 20 + seed % 400);
    let mem = format!("{}Mi", 60 + seed % 300);
    server.set_pod_metrics(pod_metrics(
        ns,
        name,
        &[("app", &cpu, &mem), ("log-shipper", "3m", "21Mi")],
    ));
}

// ---------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (n(11) + n(12)) / ticks
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sender's own counters.
fn sender_metric(addr: SocketAddr, name: &str) -> f64 {
    get(addr, "/metrics", &[])
        .ok()
        .and_then(|r| Exposition::parse(&r.body).ok())
        .map_or(f64::NAN, |e| e.sum(name, &[]))
}

fn release_binary(name: &str) -> PathBuf {
    match workspace_binary(name) {
        Ok(p) => {
            let profile = p
                .parent()
                .and_then(Path::file_name)
                .and_then(|s| s.to_str())
                .unwrap_or("");
            if profile != "release" {
                eprintln!(
                    "warning: {} is not a release build; figures will not be representative",
                    p.display()
                );
            }
            p
        }
        Err(e) => {
            eprintln!(
                "error: {e:#}\n\nThis bench runs the release binaries as processes. Build them with:\n\n    cargo build --release -p telemetry-sender -p telemetry-receiver\n\nthen run `cargo bench -p telemetry-sender --bench kube_watch` again."
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs benches
    // once in test mode: do nothing then (this is a measurement, not a test).
    if !std::env::args().any(|a| a == "--bench") {
        println!("kube_watch: run with `cargo bench -p telemetry-sender --bench kube_watch`");
        return;
    }
    let secs: u64 = env_or("KUBE_WATCH_SECS", 60);
    let rate: usize = env_or("KUBE_WATCH_RATE", 100);
    let n_pods: usize = env_or("KUBE_WATCH_PODS", 10_000);
    let n_hpas: usize = env_or("KUBE_WATCH_HPAS", 1_000);
    let metrics_interval: String = env_or("KUBE_WATCH_METRICS_INTERVAL", "15s".to_string());
    let with_metrics = env_or("KUBE_WATCH_POD_METRICS", 1u8) != 0;
    let sender_bin = release_binary("telemetry-sender");
    let receiver_bin = release_binary("telemetry-receiver");
    let ticks = clock_ticks();

    println!("kube_watch: sender RSS and CPU while watching a large cluster");
    println!(
        "machine: {}, load average at start {}",
        telemetry_test_support::machine(),
        loadavg()
    );
    println!(
        "setup: {n_pods} pods in {NAMESPACES} namespaces, {n_hpas} HPAs, {}, \
         {rate} API writes/s for {secs} s, sender --metrics-interval {metrics_interval}",
        if with_metrics {
            "pod metrics for every pod"
        } else {
            "NO pod metrics"
        }
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let server = rt.block_on(KubeApiServer::start()).unwrap();
    let built = Instant::now();
    let mut cluster = Cluster::new(n_pods, n_hpas);
    for (i, (_, pod)) in cluster.pods.iter().enumerate() {
        server.upsert_pod(pod);
        if with_metrics {
            set_metrics(&server, pod, i);
        }
    }
    for (hpa, _) in &cluster.hpas {
        server.upsert_hpa(hpa);
    }
    let list_bytes = serde_json::to_vec(&cluster.pods.iter().map(|(_, p)| p).collect::<Vec<_>>())
        .map_or(0, |v| v.len());
    println!(
        "objects made in {:.1} s; pod list JSON {:.1} MiB ({:.1} KiB per pod)",
        built.elapsed().as_secs_f64(),
        list_bytes as f64 / 1048576.0,
        list_bytes as f64 / 1024.0 / n_pods.max(1) as f64
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let pki = TestPki::new().unwrap();
    let rtls = pki.receiver().unwrap();
    let stls = pki.sender("bench-cluster").unwrap();

    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let rmetrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = Command::new(&receiver_bin);
    cmd.arg("--listen")
        .arg(quic.to_string())
        .arg("--metrics-listen")
        .arg(rmetrics.to_string())
        .arg("--ca")
        .arg(&rtls.ca)
        .arg("--cert")
        .arg(&rtls.cert)
        .arg("--key")
        .arg(&rtls.key)
        .arg("--state-dir")
        .arg(dir.path().join("receiver-state"));
    let receiver = ChildProcess::spawn("telemetry-receiver", cmd).unwrap();
    wait_for(Duration::from_secs(30), "receiver /metrics", || {
        Ok(get(rmetrics, "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .unwrap();

    let smetrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = Command::new(&sender_bin);
    cmd.args(["--source", "kube", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--receiver")
        .arg(quic.to_string())
        .args([
            "--server-name",
            "localhost",
            "--metrics-interval",
            &metrics_interval,
        ])
        .arg("--ca")
        .arg(&stls.ca)
        .arg("--cert")
        .arg(&stls.cert)
        .arg("--key")
        .arg(&stls.key)
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--metrics-listen")
        .arg(smetrics.to_string())
        .env("RUST_LOG", "info");
    let extra_env = std::env::var("KUBE_WATCH_SENDER_ENV").unwrap_or_default();
    for pair in extra_env.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            cmd.env(k, v);
        }
    }
    if !extra_env.is_empty() {
        println!("sender environment: {extra_env}");
    }
    let started = Instant::now();
    let mut sender = ChildProcess::spawn("telemetry-sender", cmd).unwrap();
    let pid = sender.pid().unwrap();

    // Initial list: spawn → /readyz 200 (pods and HPAs listed and shipped).
    let mut peak_during_list = 0.0f64;
    let ready = loop {
        if get(smetrics, "/readyz", &[]).is_ok_and(|r| r.status == 200) {
            break started.elapsed();
        }
        peak_during_list = peak_during_list.max(memory_mib(pid).0);
        assert!(sender.is_running(), "sender exited:\n{}", sender.output());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not ready in 5 min:\n{}",
            sender.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Delivered: the spool is empty again.
    let drained = loop {
        if sender_metric(smetrics, "telemetry_sender_spool_records") == 0.0
            && sender_metric(smetrics, "telemetry_sender_records_enqueued_total")
                >= (n_pods + n_hpas) as f64
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not drained in 5 min:\n{}",
            sender.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (rss_after_list, hwm_after_list) = memory_mib(pid);
    let cpu_after_list = cpu_seconds(pid, ticks);
    println!(
        "initial list: ready after {:.2} s, delivered (spool empty) after {:.2} s; CPU so far {:.2} s; \
         RSS {:.1} MiB, VmHWM {:.1} MiB (sampled RSS max while listing {:.1} MiB)",
        ready.as_secs_f64(),
        drained.as_secs_f64(),
        cpu_after_list,
        rss_after_list,
        hwm_after_list,
        peak_during_list
    );

    // Measured window.
    let mut stats = BTreeMap::new();
    let enqueued0 = sender_metric(smetrics, "telemetry_sender_records_enqueued_total");
    let acked0 = sender_metric(smetrics, "telemetry_sender_records_acked_total");
    let bytes0 = sender_metric(smetrics, "telemetry_sender_bytes_sent_total");
    let cpu0 = cpu_seconds(pid, ticks);
    let t0 = Instant::now();
    let tick = Duration::from_millis(100);
    let mut writes = 0usize;
    let mut next_sample = t0 + Duration::from_secs(1);
    let mut rss_samples: Vec<f64> = Vec::new();
    let mut cpu_per_second: Vec<f64> = Vec::new();
    let mut last_cpu = cpu0;
    let end = t0 + Duration::from_secs(secs);
    let mut next_tick = t0;
    while Instant::now() < end {
        // Writes due by now at `rate` per second.
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as usize;
        while writes < due {
            writes += cluster.change(&server, with_metrics, &mut stats);
        }
        if Instant::now() >= next_sample {
            let (rss, _) = memory_mib(pid);
            rss_samples.push(rss);
            let c = cpu_seconds(pid, ticks);
            cpu_per_second.push(c - last_cpu);
            last_cpu = c;
            next_sample += Duration::from_secs(1);
        }
        next_tick += tick;
        if let Some(pause) = next_tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(pause);
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid, ticks);
    let (rss_end, hwm_end) = memory_mib(pid);
    let enqueued1 = sender_metric(smetrics, "telemetry_sender_records_enqueued_total");
    let acked1 = sender_metric(smetrics, "telemetry_sender_records_acked_total");
    let bytes1 = sender_metric(smetrics, "telemetry_sender_bytes_sent_total");
    let cpu_pct = (cpu1 - cpu0) / window * 100.0;
    let max_second = cpu_per_second.iter().copied().fold(0.0, f64::max) * 100.0;
    let rss_max = rss_samples.iter().copied().fold(rss_end, f64::max);
    let rss_min = rss_samples.iter().copied().fold(rss_end, f64::min);
    // List starts (pages after the first carry `continue`).
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| {
            r.resource == Some(Resource::Pods)
                && r.verb == Some(Verb::List)
                && !r.query.contains("continue=")
        })
        .count();

    println!(
        "window: {window:.1} s, {writes} API writes ({:.1}/s):",
        writes as f64 / window
    );
    for (kind, n) in &stats {
        println!("  {kind:<22} {n}");
    }
    println!(
        "shipped: {:.0} records/s enqueued, {:.0} records/s acknowledged, {:.1} KiB/s of link frames{}",
        (enqueued1 - enqueued0) / window,
        (acked1 - acked0) / window,
        (bytes1 - bytes0) / window / 1024.0,
        if with_metrics {
            format!(" (of which pod usage: {n_pods} records every {metrics_interval})")
        } else {
            String::new()
        }
    );
    println!(
        "sender CPU: {cpu_pct:.2} % of one core over the window (busiest second {max_second:.0} %); \
         initial list {cpu_after_list:.2} s of CPU"
    );
    println!(
        "sender RSS: peak (VmHWM) {hwm_end:.1} MiB (VmHWM after the initial list {hwm_after_list:.1} MiB), \
         during the window {rss_min:.1}–{rss_max:.1} MiB, at the end {rss_end:.1} MiB"
    );
    println!(
        "sender RSS every 10 s (MiB): {}",
        rss_samples
            .iter()
            .step_by(10)
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("pod lists started: {lists_after} (1 = no relist during the run)");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: RSS ≤ {TARGET_RSS_MIB} MiB: {} (peak {hwm_end:.1} MiB, steady {rss_end:.1} MiB); \
         CPU ≤ {TARGET_CPU_PERCENT} % of one core: {} ({cpu_pct:.2} %)",
        verdict(hwm_end <= TARGET_RSS_MIB),
        verdict(cpu_pct <= TARGET_CPU_PERCENT)
    );
    println!(
        "kube-state-metrics' published guidance (README, \"Resource recommendation\"): \"As a general rule, \
         you should allocate: 250MiB memory, 0.1 cores\" (older READMEs: 200MiB + 0.1 cores at 100 nodes, \
         plus 2MiB and 0.001 cores per node beyond)."
    );
    println!("load average at end {}", loadavg());

    let status = sender.terminate(Duration::from_secs(30)).unwrap();
    println!("sender SIGTERM exit: {status}");
    drop(receiver);
    rt.block_on(server.stop());
}
