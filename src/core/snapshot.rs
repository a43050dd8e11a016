//! The snapshot engine: pods + selection -> the exact body of Kosli's K8S report.
//!
//! Pure and deterministic: the same pods give the same bytes, so a sha256 of the
//! body tells whether anything changed. The rules are the Kosli CLI's (with its
//! fixes): Running and Failed pods only; per container the digest inside imageID,
//! keyed by the status image, or by the spec image when the status image is a bare
//! ID; unusable containers skipped and pods without digests skipped, with a
//! warning, never an aborted report.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::core::fingerprint::{self, FingerprintKind, ImageRef};
use crate::core::pod::{ContainerKind, ContainerRecord, Owner, PodRecord};
use crate::core::selection::ContainerOptions;

/// One entry of the report body, fields in Kosli's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Artifact<'a> {
    pod_name: &'a str,
    namespace: &'a str,
    digests: BTreeMap<&'a str, &'a str>,
    creation_timestamp: i64,
    owners: Option<&'a [Owner]>,
}

#[derive(Serialize)]
struct Body<'a> {
    artifacts: Vec<Artifact<'a>>,
}

/// A built report and what it contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The exact bytes to PUT: compact JSON.
    pub body: Vec<u8>,
    /// sha256 of `body`, lowercase hex.
    pub hash: String,
    /// Pods in the report.
    pub pod_count: usize,
    /// Distinct fingerprints in the report.
    pub artifact_count: usize,
    /// Distinct fingerprints that are image-config IDs, not registry digests.
    pub config_id_count: usize,
    /// Containers and pods left out, and why.
    pub warnings: Vec<String>,
}

/// Builds the report of the given pods, which the caller has already selected.
pub fn build<'a>(
    pods: impl IntoIterator<Item = &'a PodRecord>,
    options: ContainerOptions,
) -> Snapshot {
    let mut artifacts = Vec::new();
    let mut warnings = Vec::new();
    let mut fingerprints = BTreeSet::new();
    let mut config_ids = BTreeSet::new();

    for pod in pods.into_iter().filter(|p| p.is_reportable_phase()) {
        let mut digests = BTreeMap::new();
        let mut unusable = Vec::new();
        for container in pod.containers.iter().filter(|c| counts(c, options)) {
            match &container.image {
                Ok(image) => {
                    let hex = image.fingerprint.hex.as_str();
                    if image.fingerprint.kind == FingerprintKind::ConfigId {
                        config_ids.insert(hex);
                    }
                    fingerprints.insert(hex);
                    digests.insert(image.name.as_str(), hex);
                }
                Err(reason) => unusable.push(format!("{} ({reason})", container.name)),
            }
        }
        if digests.is_empty() {
            let reason = if unusable.is_empty() {
                String::new()
            } else {
                format!(": {}", unusable.join(", "))
            };
            warnings.push(format!(
                "skipping {} pod {} in namespace {} as none of its containers has a usable image ID{reason}",
                pod.phase, pod.name, pod.namespace
            ));
            continue;
        }
        if !unusable.is_empty() {
            warnings.push(format!(
                "{} pod {} in namespace {} has containers without a usable image ID, reporting it without them: {}",
                pod.phase,
                pod.name,
                pod.namespace,
                unusable.join(", ")
            ));
        }
        artifacts.push(Artifact {
            pod_name: &pod.name,
            namespace: &pod.namespace,
            digests,
            creation_timestamp: pod.created.unwrap_or_default(),
            owners: (!pod.owners.is_empty()).then_some(pod.owners.as_slice()),
        });
    }
    artifacts.sort_by(|a, b| (a.namespace, a.pod_name).cmp(&(b.namespace, b.pod_name)));

    let pod_count = artifacts.len();
    let body = serialize(&Body { artifacts });
    Snapshot {
        hash: hex::encode(Sha256::digest(&body)),
        body,
        pod_count,
        artifact_count: fingerprints.len(),
        config_id_count: config_ids.len(),
        warnings,
    }
}

fn serialize(body: &Body<'_>) -> Vec<u8> {
    // Strings, integers, maps with string keys and nulls cannot fail to serialize.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(body).expect("report body serializes")
}

fn counts(container: &ContainerRecord, options: ContainerOptions) -> bool {
    match container.kind {
        ContainerKind::App => true,
        ContainerKind::Sidecar => options.include_sidecars,
        ContainerKind::Ephemeral => options.include_ephemeral,
    }
}

/// The name an artifact is reported under. containerd reports an image pulled by
/// digest under its image ID rather than a name; fall back to the spec image
/// (normalised, tag kept, digest dropped), then to the repository in the imageID,
/// so one image gets one name whether or not the node had it cached.
pub fn artifact_name(status_image: &str, spec_image: Option<&str>, image_id: &str) -> String {
    if fingerprint::is_named(status_image) {
        return status_image.to_owned();
    }
    if let Some(name) = spec_image
        .filter(|image| fingerprint::is_named(image))
        .and_then(|image| ImageRef::parse(image).ok())
        .and_then(|r| r.tagged_name())
    {
        return name;
    }
    let trimmed = fingerprint::trim_runtime_prefix(image_id);
    if fingerprint::is_named(trimmed) {
        return trimmed.to_owned();
    }
    if !status_image.is_empty() {
        return status_image.to_owned();
    }
    trimmed.to_owned()
}

#[cfg(test)]
mod tests;
