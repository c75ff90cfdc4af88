//! Builders of the k8s-openapi objects tests feed the test API server.
//!
//! This module owns short, readable constructors for Pods, autoscaling/v2
//! HPAs, HPA `SuccessfulRescale` Events and metrics.k8s.io PodMetrics (as
//! JSON, since the metrics API has no k8s-openapi type).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            HorizontalPodAutoscalerStatus, MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Container, Event, EventSource, ObjectReference, Pod, PodSpec, PodStatus,
            ResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference, Time},
    },
    jiff::Timestamp,
};
use serde_json::{json, Value};

/// Now, as a Kubernetes `Time` (whole seconds, as the API server stores it).
pub fn now_time() -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Builds a [`Pod`].
#[derive(Debug, Clone)]
pub struct PodBuilder(Pod);

impl PodBuilder {
    /// A pod with no containers, no status.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodBuilder(Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        })
    }

    /// Sets `status.phase`.
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_with(PodStatus::default).phase = Some(phase.to_owned());
        self
    }

    /// Sets `spec.nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.0.spec.get_or_insert_with(PodSpec::default).node_name = Some(node.to_owned());
        self
    }

    /// Sets `status.podIP`.
    pub fn ip(mut self, ip: &str) -> Self {
        self.0.status.get_or_insert_with(PodStatus::default).pod_ip = Some(ip.to_owned());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the controlling owner reference.
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        self.0
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
                uid: format!("owner-{name}"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            });
        self
    }

    /// Adds a container with optional cpu and memory requests.
    pub fn container(mut self, name: &str, cpu: Option<&str>, memory: Option<&str>) -> Self {
        let mut requests = BTreeMap::new();
        if let Some(c) = cpu {
            requests.insert("cpu".to_owned(), Quantity(c.to_owned()));
        }
        if let Some(m) = memory {
            requests.insert("memory".to_owned(), Quantity(m.to_owned()));
        }
        self.0
            .spec
            .get_or_insert_with(PodSpec::default)
            .containers
            .push(Container {
                name: name.to_owned(),
                image: Some("registry.example/app:1".to_owned()),
                resources: Some(ResourceRequirements {
                    requests: (!requests.is_empty()).then_some(requests),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            });
        self
    }

    /// Sets a limit (`resource` = `cpu` or `memory`) on the last container
    /// added.
    pub fn limit(mut self, resource: &str, quantity: &str) -> Self {
        if let Some(container) = self.0.spec.as_mut().and_then(|s| s.containers.last_mut()) {
            container
                .resources
                .get_or_insert_with(ResourceRequirements::default)
                .limits
                .get_or_insert_with(BTreeMap::new)
                .insert(resource.to_owned(), Quantity(quantity.to_owned()));
        }
        self
    }

    /// The pod.
    pub fn build(self) -> Pod {
        self.0
    }
}

/// Builds an autoscaling/v2 [`HorizontalPodAutoscaler`] targeting a
/// Deployment of the same name.
#[derive(Debug, Clone)]
pub struct HpaBuilder(HorizontalPodAutoscaler);

impl HpaBuilder {
    /// An HPA with maxReplicas 10, no minReplicas (defaults to 1), no metrics.
    pub fn new(namespace: &str, name: &str) -> Self {
        HpaBuilder(HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(HorizontalPodAutoscalerSpec {
                max_replicas: 10,
                min_replicas: None,
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".to_owned()),
                    kind: "Deployment".to_owned(),
                    name: name.to_owned(),
                },
                metrics: None,
                behavior: None,
            }),
            status: None,
        })
    }

    /// Sets min and max replicas.
    pub fn replicas(mut self, min: i32, max: i32) -> Self {
        if let Some(spec) = self.0.spec.as_mut() {
            spec.min_replicas = Some(min);
            spec.max_replicas = max;
        }
        self
    }

    /// Adds a Resource metric with an averageUtilization target.
    pub fn resource_utilization(mut self, resource: &str, percent: i32) -> Self {
        if let Some(spec) = self.0.spec.as_mut() {
            spec.metrics.get_or_insert_with(Vec::new).push(MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: resource.to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(percent),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            });
        }
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the status as the HPA controller writes it.
    pub fn status(mut self, current: i32, desired: i32, last_scale: Option<Time>) -> Self {
        self.0.status = Some(HorizontalPodAutoscalerStatus {
            current_replicas: Some(current),
            desired_replicas: desired,
            last_scale_time: last_scale,
            ..HorizontalPodAutoscalerStatus::default()
        });
        self
    }

    /// The HPA.
    pub fn build(self) -> HorizontalPodAutoscaler {
        self.0
    }
}

/// A `SuccessfulRescale` Event about HPA `hpa`, as the HPA controller
/// records it: object `name`, `count` occurrences, the first and the latest
/// at `(first, last)`.
pub fn rescale_event(
    namespace: &str,
    name: &str,
    hpa: &str,
    count: i32,
    new_size: i32,
    reason: &str,
    (first, last): (Time, Time),
) -> Event {
    Event {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("autoscaling/v2".to_owned()),
            kind: Some("HorizontalPodAutoscaler".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(hpa.to_owned()),
            uid: Some(format!("hpa-{hpa}")),
            ..ObjectReference::default()
        },
        reason: Some("SuccessfulRescale".to_owned()),
        message: Some(format!("New size: {new_size}; reason: {reason}")),
        count: Some(count),
        first_timestamp: Some(first),
        last_timestamp: Some(last),
        type_: Some("Normal".to_owned()),
        source: Some(EventSource {
            component: Some("horizontal-pod-autoscaler".to_owned()),
            host: None,
        }),
        reporting_component: Some("horizontal-pod-autoscaler".to_owned()),
        ..Event::default()
    }
}

/// A metrics.k8s.io/v1beta1 `PodMetrics` object; `containers` are
/// `(name, cpu, memory)` quantities.
pub fn pod_metrics(namespace: &str, pod: &str, containers: &[(&str, &str, &str)]) -> Value {
    let ts = now_time();
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": pod, "namespace": namespace, "creationTimestamp": ts},
        "timestamp": ts,
        "window": "15s",
        "containers": containers
            .iter()
            .map(|(name, cpu, memory)| json!({"name": name, "usage": {"cpu": cpu, "memory": memory}}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_produce_what_they_say() {
        let p = PodBuilder::new("ns", "p")
            .phase("Running")
            .node("n1")
            .ip("10.0.0.1")
            .label("app", "web")
            .owner("ReplicaSet", "web-1")
            .container("c", Some("250m"), Some("64Mi"))
            .build();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "250m"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);

        let h = HpaBuilder::new("ns", "web")
            .replicas(1, 5)
            .resource_utilization("cpu", 70)
            .status(1, 1, None)
            .build();
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );

        let t = now_time();
        let e = rescale_event(
            "ns",
            "web.1",
            "web",
            1,
            5,
            "cpu above target",
            (t.clone(), t),
        );
        assert_eq!(
            e.message.as_deref(),
            Some("New size: 5; reason: cpu above target")
        );

        let m = pod_metrics("ns", "p", &[("c", "100m", "10Mi")]);
        assert_eq!(m["containers"][0]["usage"]["memory"], "10Mi");
    }
}
