//! Discovery documents of the test API server.
//!
//! This module owns what `/version`, `/api`, `/api/v1`, `/apis`,
//! `/apis/GROUP` and `/apis/GROUP/VERSION` answer: a v1.34 server with the
//! core pods and events, autoscaling/v2, coordination.k8s.io/v1 and (while
//! switched on) metrics.k8s.io/v1beta1, each resource listing the verbs the
//! server serves for it.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{
        APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    },
    version::Info,
};
use serde_json::Value;

use super::state::Resource;

fn api_resource(r: Resource) -> APIResource {
    let verbs: &[&str] = if r.writable() {
        &["create", "delete", "get", "list", "update", "watch"]
    } else if r.watchable() {
        &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    } else {
        &["get", "list"]
    };
    APIResource {
        name: r.plural().to_owned(),
        singular_name: r.kind().to_lowercase(),
        namespaced: true,
        kind: r.kind().to_owned(),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..APIResource::default()
    }
}

fn resource_list(group_version: &str, resources: &[Resource]) -> Value {
    serde_json::to_value(APIResourceList {
        group_version: group_version.to_owned(),
        resources: resources.iter().copied().map(api_resource).collect(),
    })
    .unwrap_or_default()
}

fn api_group(name: &str, version: &str) -> APIGroup {
    let gv = GroupVersionForDiscovery {
        group_version: format!("{name}/{version}"),
        version: version.to_owned(),
    };
    APIGroup {
        name: name.to_owned(),
        preferred_version: Some(gv.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![gv],
    }
}

fn api_groups(metrics: bool) -> Vec<APIGroup> {
    let mut g = vec![
        api_group("autoscaling", "v2"),
        api_group("coordination.k8s.io", "v1"),
    ];
    if metrics {
        g.push(api_group("metrics.k8s.io", "v1beta1"));
    }
    g
}

/// `/version`.
pub(crate) fn version() -> Value {
    serde_json::to_value(Info {
        major: "1".into(),
        minor: "34".into(),
        git_version: "v1.34.0-telemetry-test".into(),
        git_commit: "0000000000000000000000000000000000000000".into(),
        git_tree_state: "clean".into(),
        build_date: "2025-01-01T00:00:00Z".into(),
        go_version: "go1.24".into(),
        compiler: "gc".into(),
        platform: "linux/amd64".into(),
        ..Info::default()
    })
    .unwrap_or_default()
}

/// `/api`.
pub(crate) fn core_versions() -> Value {
    serde_json::to_value(APIVersions {
        versions: vec!["v1".into()],
        server_address_by_client_cidrs: vec![],
    })
    .unwrap_or_default()
}

/// `/api/v1`.
pub(crate) fn core_resources() -> Value {
    resource_list("v1", &[Resource::Pods, Resource::Events])
}

/// `/apis`.
pub(crate) fn groups(metrics: bool) -> Value {
    serde_json::to_value(APIGroupList {
        groups: api_groups(metrics),
    })
    .unwrap_or_default()
}

/// `/apis/GROUP`, if served.
pub(crate) fn group(name: &str, metrics: bool) -> Option<Value> {
    api_groups(metrics)
        .into_iter()
        .find(|g| g.name == name)
        .map(|g| serde_json::to_value(g).unwrap_or_default())
}

/// `/apis/GROUP/VERSION`, if served.
pub(crate) fn group_resources(group: &str, version: &str, metrics: bool) -> Option<Value> {
    let (group_version, resources) = match (group, version) {
        ("autoscaling", "v2") => ("autoscaling/v2", Resource::HorizontalPodAutoscalers),
        ("coordination.k8s.io", "v1") => ("coordination.k8s.io/v1", Resource::Leases),
        ("metrics.k8s.io", "v1beta1") if metrics => {
            ("metrics.k8s.io/v1beta1", Resource::PodMetrics)
        }
        _ => return None,
    };
    Some(resource_list(group_version, &[resources]))
}
