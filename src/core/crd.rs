//! The `KosliEnvironment` custom resource: "Kosli environment X is these pods".
//!
//! Validation the schema can express (enums, minimums, the name pattern) lives in
//! the schema, so the API server refuses bad objects; the rest (include and exclude
//! mixed, regexes that do not compile, selectors that do not parse) is checked by
//! [`KosliEnvironmentSpec::validate`] and reported as a clear error.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::selection::{ContainerOptions, NamespaceFilter, Selection};
use crate::error::{Error, Result};

/// Kosli's environment name pattern (its create-environment endpoint refuses others).
pub const ENVIRONMENT_NAME_PATTERN: &str = r"^[a-zA-Z0-9][a-zA-Z0-9\.\-_]*$";

/// The shortest heartbeat accepted: anything faster only adds load on Kosli.
pub const MIN_HEARTBEAT_SECONDS: i64 = 30;

fn default_heartbeat_seconds() -> i64 {
    300
}

/// Which pods make up a Kosli environment, and how deploys into it are gated.
// kube's printcolumn(...) repeats keys by design; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "kosli.com",
    doc = "A Kosli environment: which pods of the cluster make it up, and how deploys into it are gated.",
    version = "v1alpha1",
    kind = "KosliEnvironment",
    shortname = "kenv",
    category = "kosli",
    status = "KosliEnvironmentStatus",
    printcolumn(
        name = "Kosli Environment",
        type_ = "string",
        json_path = ".status.environment",
        description = "The Kosli environment this resource reports to"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.podCount",
        description = "Pods in the last report"
    ),
    printcolumn(
        name = "Artifacts",
        type_ = "integer",
        json_path = ".status.artifactCount",
        description = "Distinct fingerprints in the last report"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Compliant",
        type_ = "string",
        json_path = ".status.compliance",
        description = "Kosli's verdict on what runs: compliant, non-compliant or unknown"
    ),
    printcolumn(
        name = "Last Reported",
        type_ = "date",
        json_path = ".status.lastReportedAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KosliEnvironmentSpec {
    /// The Kosli environment name. Defaults to metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9\.\-_]*$"), length(max = 253))]
    pub name: Option<String>,

    /// Namespaces whose pods belong to the environment (exact names). Cannot be
    /// combined with excludeNamespaces or excludeNamespacesRegex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// Regular expressions (unanchored: any match counts) for namespaces to include.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces_regex: Vec<String>,

    /// Namespaces to leave out (exact names); every other namespace is included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,

    /// Regular expressions (unanchored: any match counts) for namespaces to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces_regex: Vec<String>,

    /// Only namespaces whose labels match, so new team namespaces join automatically.
    /// Applies on top of the name lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Only pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Create the Kosli environment (type K8S) when it does not exist yet. An
    /// existing environment is never modified.
    #[serde(default)]
    pub auto_create: bool,

    /// Description for an environment created by autoCreate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Resend the unchanged snapshot this often (seconds), so Kosli's
    /// last_reported_at shows the reporter is alive.
    #[serde(default = "default_heartbeat_seconds")]
    #[schemars(range(min = 30, max = 86400))]
    pub heartbeat_seconds: i64,

    /// Also report native sidecars (init containers with restartPolicy Always).
    #[serde(default)]
    pub include_sidecars: bool,

    /// Also report ephemeral (debug) containers.
    #[serde(default)]
    pub include_ephemeral: bool,

    /// Admission control for pods deployed into this environment.
    #[serde(default)]
    pub gate: GateSpec,
}

/// How the admission webhook treats workloads deployed into the environment.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GateSpec {
    /// Off: no checks. Audit: check and record, never deny. Warn: check and return
    /// admission warnings, never deny. Enforce: deny non-compliant artifacts.
    #[serde(default)]
    pub mode: GateMode,

    /// Kosli policies to assert instead of the environment's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,

    /// What becomes of an image Kosli has never seen (no build of its
    /// fingerprint was reported): Deny (the default: denied in Enforce, a
    /// warning in Warn), Warn (a warning, admitted even in Enforce) or Allow
    /// (admitted without a word, recorded in the operator's log).
    #[serde(default)]
    pub unknown_artifacts: UnknownArtifacts,

    /// Refuse image references by tag alone, without resolving them: denied in
    /// Enforce, a warning in Warn. A tag can move between this check and the
    /// kubelet's pull; a digest cannot.
    #[serde(default)]
    pub require_digest: bool,
}

/// What the gate does with an image Kosli has never seen.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum UnknownArtifacts {
    /// As a non-compliant image: denied in Enforce, a warning in Warn.
    #[default]
    Deny,
    /// A warning, never a denial.
    Warn,
    /// Admitted; logged.
    Allow,
}

#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum GateMode {
    #[default]
    Off,
    Audit,
    Warn,
    Enforce,
}

/// What the reporter last did for the environment and what Kosli said.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KosliEnvironmentStatus {
    /// Ready, Reporting, Degraded and Stale, each with observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation the reporter last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The Kosli environment name in use (spec.name or metadata.name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,

    /// When Kosli last accepted a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reported_at: Option<Time>,

    /// When the reported snapshot last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_changed_at: Option<Time>,

    /// Pods in the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_count: Option<i64>,

    /// Distinct fingerprints in the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_count: Option<i64>,

    /// Fingerprints in the last report that are image-config IDs, not registry
    /// digests: they can never match what CI attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_id_fingerprints: Option<i64>,

    /// sha256 of the last report body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_hash: Option<String>,

    /// Kosli's verdict on the environment: compliant, non-compliant or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,

    /// Link to the environment in Kosli.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kosli_url: Option<String>,

    /// The last error Kosli answered with, cleared by the next accepted report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_kosli_error: Option<KosliErrorStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KosliErrorStatus {
    /// HTTP status, absent when Kosli could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

impl KosliEnvironment {
    /// The Kosli environment name: spec.name, or metadata.name.
    pub fn environment_name(&self) -> String {
        self.spec
            .name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}

impl KosliEnvironmentSpec {
    /// Checks what the schema cannot and compiles the selection. Errors start
    /// with the field at fault (`spec.namespacesRegex: …`).
    pub fn validate(&self) -> Result<Selection> {
        let filter = NamespaceFilter::new(
            &self.namespaces,
            &self.namespaces_regex,
            &self.exclude_namespaces,
            &self.exclude_namespaces_regex,
        )
        .map_err(|e| {
            let field = match &e {
                Error::InvalidRegex {
                    kind: "exclude", ..
                } => "spec.excludeNamespacesRegex",
                Error::InvalidRegex { .. } => "spec.namespacesRegex",
                _ => "spec.namespaces",
            };
            Error::Config(format!("{field}: {e}"))
        })?;
        Selection::new(
            filter,
            self.namespace_selector.clone(),
            self.pod_selector.clone(),
            ContainerOptions {
                include_sidecars: self.include_sidecars,
                include_ephemeral: self.include_ephemeral,
            },
        )
        .map_err(|e| match e {
            Error::InvalidSelector { field, message } => {
                Error::Config(format!("spec.{field}: {message}"))
            }
            other => other,
        })
    }
}

/// Validates a Kosli environment name against Kosli's pattern.
pub fn validate_environment_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "environment name {name:?} does not match Kosli's pattern {ENVIRONMENT_NAME_PATTERN}"
        )))
    }
}

/// The CRD as YAML: what `kosli-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String> {
    let crd = KosliEnvironment::crd();
    serde_saphyr::to_string(&crd).map_err(|e| Error::RenderYaml {
        what: "the CRD",
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_follow_kosli_pattern() {
        for ok in ["prod", "prod-eu.1", "A_b", "9"] {
            assert!(validate_environment_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-prod", ".x", "has space", "ümlaut", "a/b"] {
            assert!(validate_environment_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_defaults_apply_to_an_empty_object() {
        let spec: KosliEnvironmentSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.heartbeat_seconds, 300);
        assert_eq!(spec.gate.mode, GateMode::Off);
        assert!(!spec.include_sidecars && !spec.include_ephemeral && !spec.auto_create);
    }

    #[test]
    fn environment_name_defaults_to_metadata_name() {
        let mut env = KosliEnvironment::new("cluster-a", KosliEnvironmentSpec::default());
        assert_eq!(env.environment_name(), "cluster-a");
        env.spec.name = Some("prod".into());
        assert_eq!(env.environment_name(), "prod");
    }

    #[test]
    fn include_and_exclude_mixed_is_a_clear_error() {
        let spec = KosliEnvironmentSpec {
            namespaces: vec!["a".into()],
            exclude_namespaces_regex: vec!["^kube-".into()],
            ..Default::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.contains("spec.namespaces: ") && err.contains("cannot be combined"),
            "{err}"
        );
    }

    #[test]
    fn bad_regex_is_a_clear_error() {
        let spec = KosliEnvironmentSpec {
            namespaces_regex: vec!["team-(".into()],
            ..Default::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration: spec.namespacesRegex: invalid include namespace regex \"team-(\": unclosed group"
        );
    }

    #[test]
    fn schema_carries_the_validation_it_can_express() {
        let yaml = crd_yaml().unwrap();
        for needle in [
            "pattern: ^[a-zA-Z0-9][a-zA-Z0-9\\.\\-_]*$",
            "minimum: 30",
            "- Enforce",
            "- Allow",
            "shortNames:",
            "- kenv",
            "scope: Cluster",
            "status: {}",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle:?}:\n{yaml}");
        }
    }
}
