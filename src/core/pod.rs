//! The compact record of a pod: only what a report or a selection needs.
//!
//! Whole `Pod` objects cost tens of kilobytes each in memory; this keeps names,
//! labels, phase, creation time, owners and, per reportable container, its
//! artifact name and fingerprint.
//!
//! Labels are kept only as far as some selector needs them (the keys any pod
//! selector names): the report carries no labels, so a pod's memory does not
//! grow with labels nobody selects on.
//!
//! What replicas share — label sets, owner lists, container lists, namespace
//! and phase strings — is held once and shared ([`Interner`]): at scale a pod
//! costs its name, its creation time and a handful of pointers. Each shared
//! container list also keeps its part of the report body ready-serialised
//! ([`Containers::digests`]), so a report is assembled rather than serialised.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::core::fingerprint::{self, Fingerprint, FingerprintKind};
use crate::core::selection::{ContainerOptions, Labels};

/// An owner reference as the Kubernetes API serialises it (field order included).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

    /// Whether the container is reported under `options`.
    pub fn counts(&self, options: ContainerOptions) -> bool {
        match self.kind {
            ContainerKind::App => true,
            ContainerKind::Sidecar => options.include_sidecars,
            ContainerKind::Ephemeral => options.include_ephemeral,
        }
    }
}

/// A pod's owner references, shared by the pods that have the same ones, with
/// their part of the report body (`null` when there are none).
#[derive(Debug)]
pub struct Owners {
    list: Vec<Owner>,
    json: Box<[u8]>,
    sha256: [u8; 32],
}

impl Owners {
    pub fn new(list: Vec<Owner>) -> Self {
        let json = if list.is_empty() {
            b"null".to_vec()
        } else {
            to_json(&list)
        };
        Self {
            list,
            sha256: Sha256::digest(&json).into(),
            json: json.into_boxed_slice(),
        }
    }

    pub fn list(&self) -> &[Owner] {
        &self.list
    }

    /// The `owners` value of the report entry, serialised.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// sha256 of [`json`](Self::json).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

impl PartialEq for Owners {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Owners {}

impl Hash for Owners {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.list.hash(state);
    }
}

/// Strings, owner references and maps of strings cannot fail to serialise.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    serde_json::to_vec(value).expect("strings serialise")
}

/// What a report says of one container list under one set of
/// [`ContainerOptions`]: worked out once per shared list, not per pod.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// The `digests` object of the report entry, serialised: artifact name
    /// to fingerprint, sorted by name (one key per name).
    pub json: Box<[u8]>,
    /// sha256 of `json`.
    pub sha256: [u8; 32],
    /// Whether any container gives a digest (a pod with none is not reported).
    pub any: bool,
    /// The distinct fingerprints, and whether each is an image config ID.
    pub fingerprints: Vec<(Box<str>, bool)>,
    /// Containers that count but have no usable image ID: `name (reason)`.
    pub unusable: Vec<String>,
}

impl Digests {
    fn of<'a>(containers: impl Iterator<Item = &'a ContainerRecord>) -> Self {
        let mut digests: BTreeMap<&str, &str> = BTreeMap::new();
        let mut fingerprints: BTreeMap<&str, bool> = BTreeMap::new();
        let mut unusable = Vec::new();
        for container in containers {
            match &container.image {
                Ok(image) => {
                    let hex = image.fingerprint.hex.as_str();
                    fingerprints.insert(hex, image.fingerprint.kind == FingerprintKind::ConfigId);
                    digests.insert(image.name.as_str(), hex);
                }
                Err(reason) => unusable.push(format!("{} ({reason})", container.name)),
            }
        }
        let json = to_json(&digests);
        Self {
            sha256: Sha256::digest(&json).into(),
            json: json.into_boxed_slice(),
            any: !digests.is_empty(),
            fingerprints: fingerprints
                .into_iter()
                .map(|(hex, config)| (Box::from(hex), config))
                .collect(),
            unusable,
        }
    }
}

/// A pod's reportable containers, shared by the pods that run the same ones
/// (the replicas of a workload), with their report parts cached per option set.
#[derive(Debug)]
pub struct Containers {
    list: Vec<ContainerRecord>,
    digests: [OnceLock<Digests>; 4],
}

impl Containers {
    pub fn new(list: Vec<ContainerRecord>) -> Self {
        Self {
            list,
            digests: Default::default(),
        }
    }

    pub fn list(&self) -> &[ContainerRecord] {
        &self.list
    }

    /// The report part of the containers `options` count.
    pub fn digests(&self, options: ContainerOptions) -> &Digests {
        let slot =
            usize::from(options.include_sidecars) | usize::from(options.include_ephemeral) << 1;
        self.digests[slot]
            .get_or_init(|| Digests::of(self.list.iter().filter(|c| c.counts(options))))
    }
}

impl PartialEq for Containers {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Containers {}

impl Hash for Containers {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for container in &self.list {
            container.name.hash(state);
            if let Ok(image) = &container.image {
                image.name.hash(state);
                image.fingerprint.hex.hash(state);
            }
        }
    }
}

/// One shared copy of each value many pods hold alike. Values no pod holds any
/// more are dropped once a pool has doubled since it was last swept, so the
/// pools follow the cluster without growing with its history.
#[derive(Debug, Default)]
pub struct Interner {
    strings: Pool<str>,
    labels: Pool<Labels>,
    owners: Pool<Owners>,
    containers: Pool<Containers>,
}

#[derive(Debug)]
struct Pool<T: ?Sized> {
    values: HashSet<Arc<T>>,
    /// How many values were left after the last sweep.
    kept: usize,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Self {
            values: HashSet::new(),
            kept: 0,
        }
    }
}

impl<T: ?Sized + Hash + Eq> Pool<T> {
    fn get(&self, value: &T) -> Option<Arc<T>> {
        self.values.get(value).cloned()
    }

    fn insert(&mut self, shared: Arc<T>) -> Arc<T> {
        if self.values.len() >= 2 * self.kept + 1024 {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.kept = self.values.len();
        }
        self.values.insert(shared.clone());
        shared
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

impl Interner {
    pub fn string(&mut self, s: &str) -> Arc<str> {
        match self.strings.get(s) {
            Some(shared) => shared,
            None => self.strings.insert(Arc::from(s)),
        }
    }

    pub fn labels(&mut self, labels: Labels) -> Arc<Labels> {
        match self.labels.get(&labels) {
            Some(shared) => shared,
            None => self.labels.insert(Arc::new(labels)),
        }
    }

    pub fn owners(&mut self, owners: Vec<Owner>) -> Arc<Owners> {
        let owners = Owners {
            list: owners,
            json: Box::default(),
            sha256: [0; 32],
        };
        match self.owners.get(&owners) {
            Some(shared) => shared,
            None => self.owners.insert(Arc::new(Owners::new(owners.list))),
        }
    }

    pub fn containers(&mut self, containers: Vec<ContainerRecord>) -> Arc<Containers> {
        let containers = Containers::new(containers);
        match self.containers.get(&containers) {
            Some(shared) => shared,
            None => self.containers.insert(Arc::new(containers)),
        }
    }

    /// Distinct shared values held (strings, label sets, owner and container lists).
    pub fn shared_values(&self) -> usize {
        self.strings.len() + self.labels.len() + self.owners.len() + self.containers.len()
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

/// A pod's name, with what a report's summary needs of it worked out once
/// when the pod is decoded: its length as a JSON string and the digest the
/// content hash takes in its place. A summary of 150,000 pods then reads no
/// name at all (each would be a cache miss of its own); only a body does.
#[derive(Clone, Debug)]
pub struct PodName {
    text: Arc<str>,
    json_len: u32,
    digest: [u8; 32],
}

impl PodName {
    /// The name, shared with the store's key.
    pub fn arc(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// The bytes the name takes in a body, as a JSON string.
    pub fn json_len(&self) -> usize {
        self.json_len as usize
    }

    /// The sha256 of the name's length (8 bytes, little-endian) and bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl From<&str> for PodName {
    fn from(name: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update((name.len() as u64).to_le_bytes());
        digest.update(name.as_bytes());
        Self {
            text: Arc::from(name),
            // Kubernetes names are at most 253 bytes; a longer one would
            // still fit many times over.
            json_len: u32::try_from(crate::core::snapshot::json_string_len(name))
                .unwrap_or(u32::MAX),
            digest: digest.finalize().into(),
        }
    }
}

impl std::ops::Deref for PodName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Equal names have equal lengths and digests: the text alone decides.
impl PartialEq for PodName {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PodName {}

impl PartialOrd for PodName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PodName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: Arc<str>,
    pub name: PodName,
    /// The pod's labels whose keys a selector uses (all of them when decoded
    /// with [`From`], as the one-shot `snapshot` command does).
    pub labels: Arc<Labels>,
    /// `status.phase`, empty when the kubelet has not set it.
    pub phase: Arc<str>,
    /// `metadata.creationTimestamp` in Unix seconds.
    pub created: Option<i64>,
    pub owners: Arc<Owners>,
    /// Statuses of app containers, native sidecars and ephemeral containers.
    pub containers: Arc<Containers>,
}

impl PodRecord {
    /// Running and Failed pods are what Kosli's K8S reports contain.
    pub fn is_reportable_phase(&self) -> bool {
        matches!(&*self.phase, "Running" | "Failed")
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
    /// The record with every label, sharing nothing with other records.
    fn from(pod: &Pod) -> Self {
        Self::decode(pod, None, &mut Interner::default())
    }
}

impl PodRecord {
    /// The record of `pod`, keeping only the labels whose keys are in
    /// `label_keys` (`None`: all of them), with what other pods share taken
    /// from `shared`.
    pub fn decode(pod: &Pod, label_keys: Option<&LabelKeys>, shared: &mut Interner) -> Self {
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

        let labels = match (label_keys, &meta.labels) {
            (_, None) => Labels::new(),
            (None, Some(labels)) => labels.clone(),
            (Some(keys), Some(labels)) => labels
                .iter()
                .filter(|(k, _)| keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let owners = meta
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
            .collect();
        PodRecord {
            namespace: shared.string(meta.namespace.as_deref().unwrap_or_default()),
            name: PodName::from(meta.name.as_deref().unwrap_or_default()),
            labels: shared.labels(labels),
            phase: shared.string(status.and_then(|s| s.phase.as_deref()).unwrap_or_default()),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            owners: shared.owners(owners),
            containers: shared.containers(containers),
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
        record.namespace.len() + record.name.len() + labels
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
        let small_record =
            PodRecord::decode(&pod(&selected), Some(&keys), &mut Interner::default());
        let large_record = PodRecord::decode(&pod(&large), Some(&keys), &mut Interner::default());
        assert_eq!(
            *large_record.labels, selected,
            "only the keys selectors use"
        );
        assert_eq!(heap_bytes(&large_record), heap_bytes(&small_record));
        assert_eq!(large_record, small_record);

        // Kept whole (the one-shot `snapshot` decodes so), they would weigh
        // ~60 KB per pod: what the store used to hold for every pod.
        let whole = PodRecord::from(&pod(&large));
        assert_eq!(*whole.labels, large);
        assert!(heap_bytes(&whole) > heap_bytes(&small_record) + 50_000);
    }

    fn replica(name: &str, hex: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d9f", "uid": "rs-1", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "web", "image": "nginx:1.27", "ready": true, "restartCount": 0,
                "imageID": format!("docker.io/library/nginx@sha256:{}", hex.repeat(64)),
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn replicas_share_labels_owners_containers_and_strings() {
        let mut shared = Interner::default();
        let a = PodRecord::decode(&replica("web-a", "1"), None, &mut shared);
        let b = PodRecord::decode(&replica("web-b", "1"), None, &mut shared);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.phase, &b.phase));
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(Arc::ptr_eq(&a.owners, &b.owners));
        assert!(Arc::ptr_eq(&a.containers, &b.containers));
        assert!(!Arc::ptr_eq(&a.name.arc(), &b.name.arc()));

        let rolled = PodRecord::decode(&replica("web-c", "2"), None, &mut shared);
        assert!(Arc::ptr_eq(&a.owners, &rolled.owners));
        assert!(
            !Arc::ptr_eq(&a.containers, &rolled.containers),
            "another digest"
        );
        assert_ne!(a.containers, rolled.containers);
        assert_eq!(
            a,
            PodRecord {
                name: PodName::from("web-a"),
                ..b.clone()
            },
            "equal by value, not by sharing"
        );
    }

    #[test]
    fn values_no_pod_holds_are_dropped_as_the_pools_grow() {
        let mut shared = Interner::default();
        let kept = PodRecord::decode(&replica("web-kept", "1"), None, &mut shared);
        for i in 0..20_000 {
            let mut labels = Labels::new();
            labels.insert("pod".to_owned(), i.to_string());
            drop(shared.labels(labels));
        }
        assert!(
            shared.labels.len() <= 2 * 1024 + 2,
            "{} label sets held for 1 live pod",
            shared.labels.len()
        );
        let again = PodRecord::decode(&replica("web-again", "1"), None, &mut shared);
        assert!(
            Arc::ptr_eq(&kept.labels, &again.labels),
            "a held value survives"
        );
    }

    #[test]
    fn the_digests_part_is_the_sorted_map_of_counted_containers() {
        let c = |kind, name: &str, image: &str, hex: &str| {
            ContainerRecord::new(
                kind,
                name,
                image,
                &format!("docker.io/library/x@sha256:{}", hex.repeat(64)),
                None,
            )
        };
        let containers = Containers::new(vec![
            c(ContainerKind::App, "b", "zeta:1", "2"),
            c(ContainerKind::App, "a", "alpha:1", "1"),
            c(ContainerKind::Sidecar, "s", "side:1", "3"),
            ContainerRecord::new(ContainerKind::App, "broken", "x:1", "", None),
        ]);
        let app = containers.digests(ContainerOptions::default());
        let expected = format!(
            r#"{{"alpha:1":"{}","zeta:1":"{}"}}"#,
            "1".repeat(64),
            "2".repeat(64)
        );
        assert_eq!(std::str::from_utf8(&app.json).unwrap(), expected);
        assert!(app.any);
        assert_eq!(app.fingerprints.len(), 2);
        assert_eq!(app.unusable.len(), 1);
        assert!(
            app.unusable[0].starts_with("broken ("),
            "{:?}",
            app.unusable
        );
        let with_sidecars = containers.digests(ContainerOptions {
            include_sidecars: true,
            include_ephemeral: false,
        });
        assert_eq!(with_sidecars.fingerprints.len(), 3);
        assert!(
            std::ptr::eq(app, containers.digests(ContainerOptions::default())),
            "cached"
        );
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
