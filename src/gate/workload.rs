//! What the gate needs out of an AdmissionReview: the pod spec wherever the kind
//! keeps it, its images (init, app and ephemeral containers), pull secrets,
//! labels and annotations. Garbage in gives an error, never a panic.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde_json::Value;

/// A container's image and which list it is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerImage {
    pub container: String,
    /// `initContainers`, `containers` or `ephemeralContainers`.
    pub list: &'static str,
    pub image: String,
}

/// The pod template of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTemplate {
    pub labels: BTreeMap<String, String>,
    pub images: Vec<ContainerImage>,
    pub image_pull_secrets: Vec<String>,
    pub service_account: String,
}

/// Who sent the request, as the API server authenticated them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub groups: Vec<String>,
}

/// One admission request, reduced to what the gate decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub operation: Operation,
    pub sub_resource: Option<String>,
    /// The object's own annotations (where a break-glass goes).
    pub annotations: BTreeMap<String, String>,
    /// `None` for kinds the gate does not inspect.
    pub template: Option<PodTemplate>,
    /// The old object's template, on UPDATE.
    pub old_template: Option<PodTemplate>,
    /// Why the pod template of an inspected kind could not be read: such an
    /// object is refused where a gate applies, never admitted unchecked.
    pub unreadable: Option<String>,
    pub user: Requester,
    /// A dry run: the webhook declares `sideEffects: None`, so nothing is written.
    pub dry_run: bool,
}

/// The kinds the gate inspects, as metric label values; any other kind a
/// (possibly forged) review names is `other`, so labels stay a fixed set.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "Pod" => "Pod",
        "Deployment" => "Deployment",
        "StatefulSet" => "StatefulSet",
        "DaemonSet" => "DaemonSet",
        "ReplicaSet" => "ReplicaSet",
        "Job" => "Job",
        "ReplicationController" => "ReplicationController",
        "CronJob" => "CronJob",
        _ => "other",
    }
}

/// The kinds the gate inspects and where their pod spec lives.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["template"],
        "CronJob" => &["jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the pod template of `object` (a whole object: metadata + spec).
pub fn pod_template(kind: &str, object: &Value) -> Option<Result<PodTemplate, String>> {
    let path = template_path(kind)?;
    Some(read_template(path, object))
}

/// The pod template at `path` under `spec` (the object itself for a Pod), or
/// what makes it unreadable. The API server validates objects before a
/// validating webhook sees them, so anything off here is forged or a shape
/// this code does not know: either way it must not pass unchecked.
fn read_template(path: &[&str], object: &Value) -> Result<PodTemplate, String> {
    let mut template = object;
    let mut at = String::new();
    if !path.is_empty() {
        at.push_str("spec");
        template = object.get("spec").ok_or("spec is missing")?;
        for key in path {
            at.push('.');
            at.push_str(key);
            template = template
                .get(key)
                .ok_or_else(|| format!("{at} is missing"))?;
        }
        at.push('.');
    }
    if !template.is_object() {
        return Err(format!(
            "the object{} is not a JSON object",
            if at.is_empty() {
                String::new()
            } else {
                format!(" at {}", at.trim_end_matches('.'))
            }
        ));
    }
    let metadata = template.get("metadata");
    let spec = template
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| format!("{at}spec is missing or not an object"))?;
    let mut images = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let containers = match spec.get(list) {
            None | Some(Value::Null) if list != "containers" => continue,
            Some(Value::Array(containers)) if !containers.is_empty() || list != "containers" => {
                containers
            }
            _ => {
                return Err(format!(
                    "{at}spec.{list} is not a list of containers{}",
                    if list == "containers" {
                        " (a pod has at least one)"
                    } else {
                        ""
                    }
                ));
            }
        };
        for (i, c) in containers.iter().enumerate() {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{at}spec.{list}[{i}] has no image"))?;
            images.push(ContainerImage {
                container: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                list,
                image: image.to_owned(),
            });
        }
    }
    let image_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| Some(s.get("name")?.as_str()?.to_owned()))
        .collect();
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    Ok(PodTemplate {
        labels: strings(metadata.and_then(|m| m.get("labels"))),
        images,
        image_pull_secrets,
        service_account,
    })
}

/// Parses an AdmissionReview body into its request and the workload in it.
pub fn parse_review(
    body: &[u8],
) -> crate::error::Result<(AdmissionRequest<DynamicObject>, Workload)> {
    use crate::error::Error;
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        // Where, not what: serde_json's message quotes the input, and a
        // workload's annotations or env may hold secrets.
        let (category, line, column) = crate::error::json_error_position(&e);
        Error::InvalidReview {
            problem: "not an AdmissionReview",
            source: format!("{category} error at line {line}, column {column}").into(),
        }
    })?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|e| Error::InvalidReview {
            problem: "AdmissionReview without a request",
            source: Box::new(e),
        })?;
    let workload = workload(&request);
    Ok((request, workload))
}

/// The `request.uid` of a body that does not parse as a whole: with it the
/// review can still be answered (denied) rather than refused with an HTTP
/// error, which the API server would treat under the failure policy.
pub fn review_uid(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct UidOnly {
        request: UidRequest,
    }
    #[derive(serde::Deserialize)]
    struct UidRequest {
        uid: String,
    }
    let parsed: UidOnly = serde_json::from_slice(body).ok()?;
    Some(parsed.request.uid).filter(|uid| !uid.is_empty())
}

fn as_value(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

fn workload(request: &AdmissionRequest<DynamicObject>) -> Workload {
    let kind = request.kind.kind.clone();
    let object = request.object.as_ref().map(as_value);
    let old = request.old_object.as_ref().map(as_value);
    let (template, unreadable) = match object.as_ref().and_then(|o| pod_template(&kind, o)) {
        Some(Ok(template)) => (Some(template), None),
        Some(Err(problem)) => (None, Some(problem)),
        None => (None, None),
    };
    Workload {
        namespace: request.namespace.clone().unwrap_or_default(),
        name: request.name.clone(),
        operation: request.operation.clone(),
        sub_resource: request.sub_resource.clone().filter(|s| !s.is_empty()),
        annotations: strings(
            object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/annotations")),
        ),
        // An old object that cannot be read vouches for no image: all are checked.
        old_template: old
            .as_ref()
            .and_then(|o| pod_template(&kind, o))
            .and_then(Result::ok),
        template,
        unreadable,
        user: Requester {
            username: request.user_info.username.clone().unwrap_or_default(),
            groups: request.user_info.groups.clone().unwrap_or_default(),
        },
        dry_run: request.dry_run,
        kind,
    }
}

#[cfg(test)]
mod tests;
