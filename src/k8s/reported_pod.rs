//! Pods as the pod watch reads them: only what a report or a selection uses.
//!
//! A pod of a real cluster is 4–6 KB of JSON, most of it managedFields, env,
//! volumes and probes; decoded whole it takes 30–40 KB of memory. The watch
//! lists 500 pods a page, so at scale whole pages cost tens of megabytes and
//! most of the list's CPU. [`ReportedPod`] reads the same JSON and keeps only
//! names, labels, owners, the phase and the containers' names and images,
//! skipping everything else without allocating it.
//!
//! It also reads leniently: a pod the API server serves is never refused for
//! a field this operator does not use.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EphemeralContainer, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;

/// A [`Pod`] holding only the fields the reporter reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportedPod(pub Pod);

impl kube::Resource for ReportedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl<'de> Deserialize<'de> for ReportedPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = Read::deserialize(deserializer)?;
        Ok(Self(read.into()))
    }
}

#[derive(Deserialize)]
struct Read {
    #[serde(default)]
    metadata: Meta,
    spec: Option<Spec>,
    status: Option<Status>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    containers: Vec<NamedImage>,
    init_containers: Option<Vec<NamedImage>>,
    ephemeral_containers: Option<Vec<NamedImage>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamedImage {
    #[serde(default)]
    name: String,
    image: Option<String>,
    restart_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    container_statuses: Option<Vec<ImageStatus>>,
    init_container_statuses: Option<Vec<ImageStatus>>,
    ephemeral_container_statuses: Option<Vec<ImageStatus>>,
}

#[derive(Deserialize)]
struct ImageStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default, rename = "imageID")]
    image_id: String,
}

fn containers(list: Vec<NamedImage>) -> Vec<Container> {
    list.into_iter()
        .map(|c| Container {
            name: c.name,
            image: c.image,
            restart_policy: c.restart_policy,
            ..Container::default()
        })
        .collect()
}

fn statuses(list: Option<Vec<ImageStatus>>) -> Option<Vec<ContainerStatus>> {
    list.map(|list| {
        list.into_iter()
            .map(|s| ContainerStatus {
                name: s.name,
                image: s.image,
                image_id: s.image_id,
                ..ContainerStatus::default()
            })
            .collect()
    })
}

impl From<Read> for Pod {
    fn from(read: Read) -> Self {
        let meta = read.metadata;
        Pod {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                resource_version: meta.resource_version,
                labels: meta.labels,
                creation_timestamp: meta.creation_timestamp,
                deletion_timestamp: meta.deletion_timestamp,
                owner_references: meta.owner_references,
                ..ObjectMeta::default()
            },
            spec: read.spec.map(|spec| PodSpec {
                containers: containers(spec.containers),
                init_containers: spec.init_containers.map(containers),
                ephemeral_containers: spec.ephemeral_containers.map(|list| {
                    list.into_iter()
                        .map(|c| EphemeralContainer {
                            name: c.name,
                            image: c.image,
                            ..EphemeralContainer::default()
                        })
                        .collect()
                }),
                ..PodSpec::default()
            }),
            status: read.status.map(|status| PodStatus {
                phase: status.phase,
                container_statuses: statuses(status.container_statuses),
                init_container_statuses: statuses(status.init_container_statuses),
                ephemeral_container_statuses: statuses(status.ephemeral_container_statuses),
                ..PodStatus::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::pod::{Interner, LabelKeys, PodRecord};

    fn heavy_pod() -> serde_json::Value {
        let hex = "1".repeat(64);
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-11-20T09:14:07Z",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d", "uid": "rs", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}]
            },
            "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27",
                    "env": [{"name": "A", "value": "b"}], "resources": {"limits": {"cpu": "1"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                "initContainers": [
                    {"name": "side", "image": "envoy:1", "restartPolicy": "Always"},
                    {"name": "migrate", "image": "tool:1"}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox:1"}],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "image": "nginx:1.27", "ready": true,
                    "restartCount": 0, "imageID": format!("docker.io/library/nginx@sha256:{hex}"),
                    "state": {"running": {"startedAt": "2026-11-20T09:14:12Z"}}}],
                "initContainerStatuses": [
                    {"name": "side", "image": "envoy:1", "imageID": format!("envoy@sha256:{hex}"), "ready": true, "restartCount": 0},
                    {"name": "migrate", "image": "tool:1", "imageID": format!("tool@sha256:{hex}"), "ready": false, "restartCount": 0}],
                "ephemeralContainerStatuses": [{"name": "debug", "image": "busybox:1",
                    "imageID": format!("busybox@sha256:{hex}"), "ready": false, "restartCount": 0}]
            }
        })
    }

    #[test]
    fn the_record_is_the_one_a_whole_pod_gives() {
        let whole: Pod = serde_json::from_value(heavy_pod()).unwrap();
        let read: ReportedPod = serde_json::from_value(heavy_pod()).unwrap();
        for keys in [None, Some(LabelKeys::from(["app".to_owned()]))] {
            let mut shared = Interner::default();
            assert_eq!(
                PodRecord::decode(&read.0, keys.as_ref(), &mut shared),
                PodRecord::decode(&whole, keys.as_ref(), &mut shared)
            );
        }
        assert_eq!(read.0.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(read.0.metadata.managed_fields, None, "never kept");
        assert_eq!(read.0.metadata.annotations, None);
    }

    #[test]
    fn fields_this_operator_does_not_use_are_never_a_reason_to_refuse_a_pod() {
        let mut pod = heavy_pod();
        // A whole `Pod` refuses these; the reporter has no use for them.
        pod["status"]["containerStatuses"][0]
            .as_object_mut()
            .unwrap()
            .remove("ready");
        pod["spec"]["volumes"] = json!("not a list");
        assert!(serde_json::from_value::<Pod>(pod.clone()).is_err());
        let read: ReportedPod = serde_json::from_value(pod).unwrap();
        assert_eq!(read.0.status.unwrap().phase.as_deref(), Some("Running"));
    }

    #[test]
    fn a_bare_object_reads_as_an_empty_pod() {
        let read: ReportedPod = serde_json::from_value(json!({})).unwrap();
        assert_eq!(read, ReportedPod::default());
    }
}
