//! The cluster the bench serves: 10,000 pods as a real API server returns
//! them (realistic metadata, two containers with requests, status,
//! managedFields) under 1,000 HPAs, their metrics.k8s.io usage, and the
//! random changes applied during the measured window (deterministic: a
//! fixed-seed xorshift, so runs apply the same change mix).

use std::collections::BTreeMap;

use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod};
use serde_json::{json, Value};
use telemetry_test_support::kube_api::{
    objects::{now_time, pod_metrics, rescale_event},
    KubeApiServer,
};

/// Namespaces the workloads spread over.
pub(crate) const NAMESPACES: usize = 50;
const PODS_PER_DEPLOYMENT: usize = 10;
const NODES: usize = 100;

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
/// Long: one JSON literal of a whole pod, read best in one piece.
#[allow(clippy::too_many_lines)]
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
pub(crate) struct Cluster {
    workloads: Vec<Workload>,
    /// (workload index, pod) for every live pod.
    pub(crate) pods: Vec<(usize, Pod)>,
    pub(crate) hpas: Vec<(HorizontalPodAutoscaler, i32)>,
    rng: Rng,
    next_pod: u64,
    next_event: u64,
}

impl Cluster {
    pub(crate) fn new(pods: usize, hpas: usize) -> Self {
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
    /// Long: one `match` arm per kind of change, each a few lines.
    #[allow(clippy::too_many_lines)]
    pub(crate) fn change(
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

pub(crate) fn set_metrics(server: &KubeApiServer, pod: &Pod, seed: usize) {
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
