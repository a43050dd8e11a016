//! The compact record of a pod: only what a report or a selection needs.
//!
//! Whole `Pod` objects cost tens of kilobytes each in memory; this keeps names,
//! labels, phase, creation time, owners and, per reportable container, its status
//! image, imageID and spec image.
//!
//! Labels are kept only as far as some selector needs them (the keys any pod
//! selector names): the report carries no labels, so a pod's memory does not
//! grow with labels nobody selects on.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use serde::Serialize;

use crate::core::fingerprint::{self, Fingerprint};

/// An owner reference as the Kubernetes API serialises it (field order included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// Which list of the pod a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    App,
    /// An init container with restartPolicy Always.
    Sidecar,
    Ephemeral,
}

/// What a report says of a container: the artifact name and its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedImage {
    pub name: String,
    pub fingerprint: Fingerprint,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub kind: ContainerKind,
    pub name: String,
    /// The reported image, or why the container cannot be reported. Worked out
    /// once when the pod is decoded, not at every report that includes it.
    pub image: Result<ReportedImage, fingerprint::ImageError>,
}

impl ContainerRecord {
    /// A container from its status (`image`, `imageID`) and its spec image.
    pub fn new(
        kind: ContainerKind,
        name: &str,
        status_image: &str,
        image_id: &str,
        spec_image: Option<&str>,
    ) -> Self {
        let image = fingerprint::parse_image_id(image_id).map(|fingerprint| ReportedImage {
            name: crate::core::snapshot::artifact_name(status_image, spec_image, image_id),
            fingerprint,
        });
        Self {
            kind,
            name: name.to_owned(),
            image,
        }
    }
}

/// The pod label keys some selector uses.
pub type LabelKeys = BTreeSet<String>;

/// The label keys a pod selector reads (`matchLabels` and `matchExpressions`).
pub fn selector_keys(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> impl Iterator<Item = &str> {
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str());
    let expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|e| e.key.as_str());
    labels.chain(expressions)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's labels whose keys a selector uses (all of them when decoded
    /// with [`From`], as the one-shot `snapshot` command does).
    pub labels: BTreeMap<String, String>,
    /// `status.phase`, empty when the kubelet has not set it.
    pub phase: String,
    /// `metadata.creationTimestamp` in Unix seconds.
    pub created: Option<i64>,
    pub owners: Vec<Owner>,
    /// Statuses of app containers, native sidecars and ephemeral containers.
    pub containers: Vec<ContainerRecord>,
}

impl PodRecord {
    /// Running and Failed pods are what Kosli's K8S reports contain.
    pub fn is_reportable_phase(&self) -> bool {
        matches!(self.phase.as_str(), "Running" | "Failed")
    }
}

fn spec_image(containers: Option<&Vec<Container>>, name: &str) -> Option<String> {
    containers?
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
}

fn records(
    kind: ContainerKind,
    statuses: Option<&Vec<ContainerStatus>>,
    image_of: impl Fn(&str) -> Option<String>,
    keep: impl Fn(&ContainerStatus) -> bool,
) -> impl Iterator<Item = ContainerRecord> {
    statuses
        .into_iter()
        .flatten()
        .filter(move |s| keep(s))
        .map(move |s| {
            ContainerRecord::new(
                kind,
                &s.name,
                &s.image,
                &s.image_id,
                image_of(&s.name).as_deref(),
            )
        })
}

impl From<&Pod> for PodRecord {
    /// The record with every label.
    fn from(pod: &Pod) -> Self {
        Self::decode(pod, None)
    }
}

impl PodRecord {
    /// The record of `pod`, keeping only the labels whose keys are in
    /// `label_keys` (`None`: all of them).
    pub fn decode(pod: &Pod, label_keys: Option<&LabelKeys>) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let sidecar_names: Vec<&str> = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .map(|c| c.name.as_str())
            .collect();

        let mut containers: Vec<ContainerRecord> = records(
            ContainerKind::App,
            status.and_then(|s| s.container_statuses.as_ref()),
            |name| spec_image(spec.map(|s| &s.containers), name),
            |_| true,
        )
        .collect();
        containers.extend(records(
            ContainerKind::Sidecar,
            status.and_then(|s| s.init_container_statuses.as_ref()),
            |name| spec_image(spec.and_then(|s| s.init_containers.as_ref()), name),
            |s| sidecar_names.contains(&s.name.as_str()),
        ));
        let ephemeral_spec: Vec<(String, Option<String>)> = spec
            .and_then(|s| s.ephemeral_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect();
        containers.extend(records(
            ContainerKind::Ephemeral,
            status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
            |name| {
                ephemeral_spec
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, image)| image.clone())
            },
            |_| true,
        ));

        PodRecord {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: match (label_keys, &meta.labels) {
                (_, None) => BTreeMap::new(),
                (None, Some(labels)) => labels.clone(),
                (Some(keys), Some(labels)) => labels
                    .iter()
                    .filter(|(k, _)| keys.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            owners: meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| Owner {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect(),
            containers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heap bytes a record holds in strings, labels included.
    fn heap_bytes(record: &PodRecord) -> usize {
        let labels: usize = record
            .labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity())
            .sum();
        record.namespace.capacity() + record.name.capacity() + record.uid.capacity() + labels
    }

    fn pod(labels: &BTreeMap<String, String>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "labels": labels},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "web", "image": "nginx:1.27", "ready": true, "restartCount": 0,
                "imageID": format!("docker.io/library/nginx@sha256:{}", "1".repeat(64)),
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn labels_no_selector_uses_cost_nothing() {
        let selected: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        let mut large = selected.clone();
        for i in 0..500 {
            large.insert(
                format!("example.com/unused-{i:03}-{}", "k".repeat(40)),
                "v".repeat(63),
            );
        }
        let keys: LabelKeys = ["app".to_owned(), "tier".to_owned()].into();
        let small_record = PodRecord::decode(&pod(&selected), Some(&keys));
        let large_record = PodRecord::decode(&pod(&large), Some(&keys));
        assert_eq!(large_record.labels, selected, "only the keys selectors use");
        assert_eq!(heap_bytes(&large_record), heap_bytes(&small_record));
        assert_eq!(large_record, small_record);

        // Kept whole (the one-shot `snapshot` decodes so), they would weigh
        // ~60 KB per pod: what the store used to hold for every pod.
        let whole = PodRecord::from(&pod(&large));
        assert_eq!(whole.labels, large);
        assert!(heap_bytes(&whole) > heap_bytes(&small_record) + 50_000);
    }

    #[test]
    fn selector_keys_cover_match_labels_and_expressions() {
        let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(serde_json::json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}],
            }))
            .unwrap();
        let keys: Vec<&str> = selector_keys(&selector).collect();
        assert_eq!(keys, ["app", "tier"]);
    }
}
