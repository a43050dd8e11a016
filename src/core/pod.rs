//! The compact record of a pod: only what a report or a selection needs.
//!
//! Whole `Pod` objects cost tens of kilobytes each in memory; this keeps names,
//! labels, phase, creation time, owners and, per reportable container, its status
//! image, imageID and spec image.

use std::collections::BTreeMap;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
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
    fn from(pod: &Pod) -> Self {
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
            labels: meta.labels.clone().unwrap_or_default(),
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
