//! Conversion of Kubernetes API objects into the link's record types.
//!
//! This module owns the mapping `Pod` → [`PodInfo`], autoscaling/v2
//! `HorizontalPodAutoscaler` → [`HpaInfo`] and metrics.k8s.io/v1beta1
//! `PodMetrics` → [`PodUsage`], and the small serde type [`PodMetrics`] (the
//! metrics API has no k8s-openapi type). Quantities go through
//! [`parse_quantity`] into cores and bytes. A malformed quantity in a spec
//! drops only that value (with a warning), never the whole object.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::{
        autoscaling::v2::{HorizontalPodAutoscaler, MetricTarget},
        core::v1::Pod,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, Time},
    },
};
use serde::{Deserialize, Serialize};
use telemetry_schema::{
    ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, ObjectRef, PodInfo, PodPhase, PodUsage,
};

use super::quantity::{parse_quantity, QuantityError};

/// A metrics.k8s.io quantity could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// A usage value is not a valid quantity.
    #[error("pod metrics {pod}: container {container:?} {resource} usage: {source}")]
    Quantity {
        /// `namespace/name` of the pod.
        pod: String,
        /// Container name.
        container: String,
        /// `cpu` or `memory`.
        resource: &'static str,
        /// What was wrong.
        #[source]
        source: QuantityError,
    },
}

/// `metrics.k8s.io/v1beta1` `PodMetrics`, as metrics-server serves it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodMetrics {
    /// Standard metadata (namespace and name of the pod).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// When the sample was taken (end of the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Sampling window, e.g. `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Per-container usage.
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

/// One container's entry in [`PodMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerMetrics {
    /// Container name.
    pub name: String,
    /// Resource name (`cpu`, `memory`) to quantity.
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

impl kube::Resource for PodMetrics {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("PodMetrics")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("metrics.k8s.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1beta1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn meta_ref(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Namespace and name of a pod.
pub fn pod_ref(pod: &Pod) -> ObjectRef {
    meta_ref(&pod.metadata)
}

/// Namespace and name of an HPA.
pub fn hpa_ref(hpa: &HorizontalPodAutoscaler) -> ObjectRef {
    meta_ref(&hpa.metadata)
}

/// Parses an optional spec quantity, logging and dropping a malformed one.
fn spec_quantity(q: Option<&Quantity>, what: &str, object: &ObjectRef) -> Option<f64> {
    let q = q?;
    match parse_quantity(&q.0) {
        Ok(v) => Some(v),
        Err(error) => {
            tracing::warn!(
                namespace = %object.namespace,
                name = %object.name,
                field = what,
                %error,
                "ignoring malformed quantity"
            );
            None
        }
    }
}

/// A pod's state: phase, node, IP, controlling owner and container requests and limits.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let object = pod_ref(pod);
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let controller = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true));
    let containers = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let resources = c.resources.as_ref();
            let requests = resources.and_then(|r| r.requests.as_ref());
            let limits = resources.and_then(|r| r.limits.as_ref());
            let quantity = |map: Option<&std::collections::BTreeMap<String, Quantity>>,
                            resource: &str,
                            field: &str| {
                spec_quantity(map.and_then(|m| m.get(resource)), field, &object)
            };
            ContainerRequests {
                name: c.name.clone(),
                cpu_cores: quantity(requests, "cpu", "requests.cpu"),
                memory_bytes: quantity(requests, "memory", "requests.memory"),
                cpu_limit_cores: quantity(limits, "cpu", "limits.cpu"),
                memory_limit_bytes: quantity(limits, "memory", "limits.memory"),
            }
        })
        .collect();
    PodInfo {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        pod_ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        phase: PodPhase::parse(status.and_then(|s| s.phase.as_deref())),
        created_by_kind: controller.map(|o| o.kind.clone()).unwrap_or_default(),
        created_by_name: controller.map(|o| o.name.clone()).unwrap_or_default(),
        containers,
        namespace: object.namespace,
        name: object.name,
    }
}

/// Pushes one target per value present in `target`, as kube-state-metrics'
/// `kube_horizontalpodautoscaler_spec_target_metric` does.
fn push_targets(
    out: &mut Vec<HpaTarget>,
    metric_name: &str,
    target: &MetricTarget,
    object: &ObjectRef,
) {
    if let Some(v) = spec_quantity(target.value.as_ref(), "target.value", object) {
        out.push(HpaTarget {
            metric_name: metric_name.to_owned(),
            target_type: "value".to_owned(),
            value: v,
        });
    }
    if let Some(v) = spec_quantity(target.average_value.as_ref(), "target.averageValue", object) {
        out.push(HpaTarget {
            metric_name: metric_name.to_owned(),
            target_type: "average".to_owned(),
            value: v,
        });
    }
    if let Some(v) = target.average_utilization {
        out.push(HpaTarget {
            metric_name: metric_name.to_owned(),
            target_type: "utilization".to_owned(),
            value: f64::from(v),
        });
    }
}

/// An HPA's bounds, replica counts and metric targets.
pub fn hpa_info(hpa: &HorizontalPodAutoscaler) -> HpaInfo {
    let object = hpa_ref(hpa);
    let spec = hpa.spec.as_ref();
    let status = hpa.status.as_ref();
    let mut targets = Vec::new();
    for metric in spec.and_then(|s| s.metrics.as_deref()).unwrap_or_default() {
        // The `type` field says which member is set; trust the member that is
        // actually present so an unusual spelling does not lose the target.
        if let Some(r) = &metric.resource {
            push_targets(&mut targets, &r.name, &r.target, &object);
        } else if let Some(c) = &metric.container_resource {
            push_targets(&mut targets, &c.name, &c.target, &object);
        } else if let Some(p) = &metric.pods {
            push_targets(&mut targets, &p.metric.name, &p.target, &object);
        } else if let Some(o) = &metric.object {
            push_targets(&mut targets, &o.metric.name, &o.target, &object);
        } else if let Some(e) = &metric.external {
            push_targets(&mut targets, &e.metric.name, &e.target, &object);
        } else {
            tracing::debug!(
                namespace = %object.namespace,
                name = %object.name,
                metric_type = %metric.type_,
                "HPA metric without a source; skipped"
            );
        }
    }
    HpaInfo {
        min_replicas: spec.and_then(|s| s.min_replicas).unwrap_or(1),
        max_replicas: spec.map(|s| s.max_replicas).unwrap_or_default(),
        current_replicas: status.and_then(|s| s.current_replicas).unwrap_or_default(),
        desired_replicas: status.map(|s| s.desired_replicas).unwrap_or_default(),
        targets,
        namespace: object.namespace,
        name: object.name,
    }
}

/// A pod's usage in cores and bytes. `now_ms` stands in for a missing
/// timestamp. A container without a `cpu` or `memory` entry reports 0 for it.
pub fn pod_usage(metrics: &PodMetrics, now_ms: i64) -> Result<PodUsage, ConvertError> {
    let object = meta_ref(&metrics.metadata);
    let usage = |c: &ContainerMetrics, resource: &'static str| -> Result<f64, ConvertError> {
        match c.usage.get(resource) {
            None => Ok(0.0),
            Some(q) => parse_quantity(&q.0).map_err(|source| ConvertError::Quantity {
                pod: format!("{}/{}", object.namespace, object.name),
                container: c.name.clone(),
                resource,
                source,
            }),
        }
    };
    let containers = metrics
        .containers
        .iter()
        .map(|c| {
            Ok(ContainerUsage {
                name: c.name.clone(),
                cpu_cores: usage(c, "cpu")?,
                memory_bytes: usage(c, "memory")?,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(PodUsage {
        timestamp_ms: metrics
            .timestamp
            .as_ref()
            .map_or(now_ms, |t| t.0.as_millisecond()),
        containers,
        namespace: object.namespace,
        pod: object.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "uid": "u-1",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "x"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "y", "controller": true}
                ]
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [
                    {"name": "app", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
                    {"name": "sidecar", "resources": {"requests": {"cpu": "1500000n"}}},
                    {"name": "bare"}
                ]
            },
            "status": {"phase": "Running", "podIP": "10.1.2.3"}
        })
    }

    #[test]
    fn pod_maps_all_fields() {
        let pod: Pod = serde_json::from_value(pod_json()).unwrap();
        let info = pod_info(&pod);
        assert_eq!(info.namespace, "shop");
        assert_eq!(info.name, "web-1");
        assert_eq!(info.uid, "u-1");
        assert_eq!(info.node, "node-a");
        assert_eq!(info.pod_ip, "10.1.2.3");
        assert_eq!(info.phase, PodPhase::Running);
        assert_eq!(info.created_by_kind, "ReplicaSet");
        assert_eq!(info.created_by_name, "web-abc");
        assert_eq!(
            info.containers,
            vec![
                ContainerRequests {
                    name: "app".into(),
                    cpu_cores: Some(0.25),
                    memory_bytes: Some(67_108_864.0),
                    cpu_limit_cores: Some(0.5),
                    memory_limit_bytes: None,
                },
                ContainerRequests {
                    name: "sidecar".into(),
                    cpu_cores: Some(0.0015),
                    memory_bytes: None,
                    cpu_limit_cores: None,
                    memory_limit_bytes: None,
                },
                ContainerRequests {
                    name: "bare".into(),
                    cpu_cores: None,
                    memory_bytes: None,
                    cpu_limit_cores: None,
                    memory_limit_bytes: None,
                },
            ]
        );
    }

    #[test]
    fn pending_pod_without_status_or_owner() {
        let mut v = pod_json();
        v["metadata"]["ownerReferences"] = serde_json::json!([]);
        v["spec"]["nodeName"] = serde_json::Value::Null;
        v["status"] = serde_json::json!({"phase": "Pending"});
        let info = pod_info(&serde_json::from_value(v).unwrap());
        assert_eq!(info.phase, PodPhase::Pending);
        assert_eq!(info.node, "");
        assert_eq!(info.pod_ip, "");
        assert_eq!(info.created_by_kind, "");
        assert_eq!(info.created_by_name, "");
        let mut v = pod_json();
        v["status"] = serde_json::Value::Null;
        assert_eq!(
            pod_info(&serde_json::from_value(v).unwrap()).phase,
            PodPhase::Unknown
        );
    }

    #[test]
    fn malformed_request_drops_only_that_value() {
        let mut v = pod_json();
        v["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots".into();
        let info = pod_info(&serde_json::from_value(v).unwrap());
        assert_eq!(info.containers[0].cpu_cores, None);
        assert_eq!(info.containers[0].memory_bytes, Some(67_108_864.0));
    }

    #[test]
    fn hpa_targets_of_every_metric_type() {
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "512Mi"}}},
                    {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Pods", "pods": {"metric": {"name": "packets-per-second"}, "target": {"type": "AverageValue", "averageValue": "1k"}}},
                    {"type": "Object", "object": {"metric": {"name": "requests-per-second"}, "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"}, "target": {"type": "Value", "value": "10k"}}},
                    {"type": "External", "external": {"metric": {"name": "queue_messages_ready"}, "target": {"type": "Value", "value": "30"}}}
                ]
            },
            "status": {"currentReplicas": 3, "desiredReplicas": 4}
        }))
        .unwrap();
        let info = hpa_info(&hpa);
        assert_eq!(info.min_replicas, 1, "minReplicas defaults to 1");
        assert_eq!(info.max_replicas, 10);
        assert_eq!(info.current_replicas, 3);
        assert_eq!(info.desired_replicas, 4);
        let t = |m: &str, ty: &str, v: f64| HpaTarget {
            metric_name: m.into(),
            target_type: ty.into(),
            value: v,
        };
        assert_eq!(
            info.targets,
            vec![
                t("cpu", "utilization", 70.0),
                t("memory", "average", 536_870_912.0),
                t("cpu", "utilization", 60.0),
                t("packets-per-second", "average", 1000.0),
                t("requests-per-second", "value", 10_000.0),
                t("queue_messages_ready", "value", 30.0),
            ]
        );
    }

    #[test]
    fn hpa_explicit_min_and_missing_status() {
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "minReplicas": 2, "maxReplicas": 5}
        }))
        .unwrap();
        let info = hpa_info(&hpa);
        assert_eq!(
            (
                info.min_replicas,
                info.max_replicas,
                info.current_replicas,
                info.desired_replicas
            ),
            (2, 5, 0, 0)
        );
        assert!(info.targets.is_empty());
    }

    #[test]
    fn pod_metrics_to_usage() {
        let m: PodMetrics = serde_json::from_value(serde_json::json!({
            "kind": "PodMetrics",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "timestamp": "2024-05-01T10:00:00Z",
            "window": "15s",
            "containers": [
                {"name": "app", "usage": {"cpu": "125000000n", "memory": "12345Ki"}},
                {"name": "idle", "usage": {}}
            ]
        }))
        .unwrap();
        let u = pod_usage(&m, 7).unwrap();
        assert_eq!(u.namespace, "shop");
        assert_eq!(u.pod, "web-1");
        assert_eq!(u.timestamp_ms, 1_714_557_600_000);
        assert_eq!(
            u.containers,
            vec![
                ContainerUsage {
                    name: "app".into(),
                    cpu_cores: 0.125,
                    memory_bytes: 12_641_280.0
                },
                ContainerUsage {
                    name: "idle".into(),
                    cpu_cores: 0.0,
                    memory_bytes: 0.0
                },
            ]
        );
        let mut no_ts = m.clone();
        no_ts.timestamp = None;
        assert_eq!(pod_usage(&no_ts, 7).unwrap().timestamp_ms, 7);
    }

    #[test]
    fn pod_metrics_with_bad_quantity_is_an_error() {
        let mut m = PodMetrics::default();
        m.metadata.name = Some("p".into());
        m.containers.push(ContainerMetrics {
            name: "c".into(),
            usage: [("cpu".to_string(), Quantity("fast".into()))].into(),
        });
        let err = pod_usage(&m, 0).unwrap_err();
        assert!(err.to_string().contains("cpu usage"), "{err}");
    }

    #[test]
    fn pod_metrics_resource_paths() {
        use kube::Resource;
        assert_eq!(
            PodMetrics::url_path(&(), None),
            "/apis/metrics.k8s.io/v1beta1/pods"
        );
        assert_eq!(
            PodMetrics::url_path(&(), Some("ns")),
            "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods"
        );
    }
}
