//! `run --environments-file`: the KosliEnvironments to report, read from a
//! file instead of watched in the cluster, for an operator that has no
//! cluster-wide rights (the chart's `permissionScope: namespace`).
//!
//! The file holds KosliEnvironment manifests as `kubectl apply` takes them,
//! separated by `---`. It is read once, at start: the chart restarts the
//! operator when it changes. Every entry is checked before anything starts,
//! since no status can show an invalid one later:
//! - `apiVersion: kosli.com/v1alpha1`, `kind: KosliEnvironment`, a
//!   `metadata.name` (a DNS-1123 subdomain), at most one per name;
//! - no field the CRD does not define, at any depth (the API server would
//!   drop it silently, and a misspelt selector would widen a report);
//! - a valid spec, and one Kosli environment per entry.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use kube::CustomResourceExt as _;
use serde_json::Value;

use crate::core::crd::KosliEnvironment;
use crate::error::{Error, Result};

/// A larger file is refused: hundreds of environments fit in far less.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

const API_VERSION: &str = "kosli.com/v1alpha1";
const KIND: &str = "KosliEnvironment";

/// Reads and checks `path`.
pub fn read(path: &Path) -> Result<Vec<KosliEnvironment>> {
    let read_error = |source| Error::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Config(format!(
            "--environments-file {}: larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    parse(&text).map_err(|message| {
        Error::Config(format!("--environments-file {}: {message}", path.display()))
    })
}

/// The environments of a file's text, or what is wrong with it.
pub fn parse(text: &str) -> std::result::Result<Vec<KosliEnvironment>, String> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    let schema = spec_schema();
    let mut environments: Vec<KosliEnvironment> = Vec::new();
    let mut kosli_names: BTreeMap<String, String> = BTreeMap::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let at = format!("document {}", index + 1);
        let env = environment(document, schema.as_ref()).map_err(|e| format!("{at}: {e}"))?;
        let name = env.metadata.name.clone().unwrap_or_default();
        let at = format!("{at} ({name})");
        if environments
            .iter()
            .any(|e| e.metadata.name.as_deref() == Some(&name))
        {
            return Err(format!("{at}: a second KosliEnvironment named {name:?}"));
        }
        env.spec
            .validate()
            .map_err(|e| format!("{at}: {}", bare(e)))?;
        let kosli_env = env.environment_name();
        crate::core::crd::validate_environment_name(&kosli_env)
            .map_err(|e| format!("{at}: spec.name: {}", bare(e)))?;
        if let Some(first) = kosli_names.insert(kosli_env.clone(), name.clone()) {
            return Err(format!(
                "{at}: Kosli environment {kosli_env:?} is already reported by {first:?}; \
                 one KosliEnvironment per Kosli environment"
            ));
        }
        environments.push(env);
    }
    if environments.is_empty() {
        return Err("no KosliEnvironment in it: nothing would be reported".to_owned());
    }
    Ok(environments)
}

fn bare(error: Error) -> String {
    match error {
        Error::Config(message) => message,
        other => other.to_string(),
    }
}

/// One document as a KosliEnvironment; generation 1, as a new object's.
fn environment(
    document: Value,
    spec_schema: Option<&JSONSchemaProps>,
) -> std::result::Result<KosliEnvironment, String> {
    let Value::Object(object) = &document else {
        return Err("not a KosliEnvironment manifest (a mapping)".to_owned());
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str);
    if text("apiVersion") != Some(API_VERSION) || text("kind") != Some(KIND) {
        return Err(format!(
            "apiVersion and kind must be {API_VERSION} and {KIND}, not {:?} and {:?}",
            text("apiVersion").unwrap_or_default(),
            text("kind").unwrap_or_default()
        ));
    }
    for key in object.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "spec") {
            return Err(format!("unknown field {key:?}"));
        }
    }
    let metadata = object.get("metadata").and_then(Value::as_object);
    for key in metadata.into_iter().flat_map(|m| m.keys()) {
        if !matches!(key.as_str(), "name" | "labels" | "annotations") {
            return Err(format!(
                "metadata.{key}: not taken here (only name, labels and annotations)"
            ));
        }
    }
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !is_subdomain(name) {
        return Err(format!(
            "metadata.name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
        ));
    }
    let mut unknown = Vec::new();
    if let (Some(spec), Some(schema)) = (object.get("spec"), spec_schema) {
        unknown_fields(spec, schema, "spec", &mut unknown)?;
    }
    if let Some(path) = unknown.first() {
        return Err(format!(
            "{path}: not a field of a KosliEnvironment (a misspelt one would be ignored)"
        ));
    }
    let mut env: KosliEnvironment = serde_json::from_value(document).map_err(|e| e.to_string())?;
    env.metadata.generation = Some(1);
    Ok(env)
}

/// The schema of `spec` in the CRD this binary serves.
fn spec_schema() -> Option<JSONSchemaProps> {
    let crd = KosliEnvironment::crd();
    let version = crd.spec.versions.into_iter().next()?;
    version
        .schema?
        .open_api_v3_schema?
        .properties?
        .remove("spec")
}

/// Collects the paths of fields `schema` does not define, as the API server
/// would prune them; a boolean where the schema wants a string from a short
/// list is the YAML trap of an unquoted `Off`, and said so at once.
fn unknown_fields(
    value: &Value,
    schema: &JSONSchemaProps,
    path: &str,
    unknown: &mut Vec<String>,
) -> std::result::Result<(), String> {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return Ok(());
    }
    match value {
        Value::Bool(b) if schema.type_.as_deref() == Some("string") => {
            let choices: Vec<String> = schema
                .enum_
                .iter()
                .flatten()
                .filter_map(|v| v.0.as_str().map(str::to_owned))
                .collect();
            let word = if *b { "On, Yes or True" } else { "Off, No or False" };
            let quote = choices
                .iter()
                .find(|c| word.contains(c.as_str()))
                .map(|c| format!("; write {path}: \"{c}\""))
                .unwrap_or_default();
            return Err(format!(
                "{path}: a boolean where a string is expected: YAML reads an unquoted {word} as {b}, quote it{quote}"
            ));
        }
        Value::Object(fields) => {
            if let Some(properties) = &schema.properties {
                for (key, field) in fields {
                    let at = format!("{path}.{key}");
                    match properties.get(key) {
                        Some(inner) => unknown_fields(field, inner, &at, unknown)?,
                        None => unknown.push(at),
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(inner),
            ) = &schema.items
            {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, inner, &format!("{path}[{i}]"), unknown)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
apiVersion: kosli.com/v1alpha1
kind: KosliEnvironment
metadata:
  name: shop
spec:
  name: shop-prod
  namespaces: [shop, payments]
  gate:
    mode: "Off"
---
apiVersion: kosli.com/v1alpha1
kind: KosliEnvironment
metadata:
  name: backend
  labels: {team: core}
spec:
  namespaces: [backend]
  podSelector:
    matchLabels: {tier: api}
"#;

    #[test]
    fn manifests_separated_by_dashes_become_environments() {
        let envs = parse(TWO).unwrap();
        assert_eq!(envs.len(), 2);
        assert_eq!(envs[0].environment_name(), "shop-prod");
        assert_eq!(envs[1].environment_name(), "backend");
        assert_eq!(envs[1].metadata.generation, Some(1));
        assert!(envs[1].spec.pod_selector.is_some());
    }

    #[test]
    fn a_misspelt_field_is_refused_with_its_path() {
        let text = TWO.replace("  namespaces: [backend]", "  namespace: [backend]");
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains("document 2") && err.contains("spec.namespace:"),
            "{err}"
        );
        let text = TWO.replace("mode: \"Off\"", "mode: \"Off\"\n    requireDigests: true");
        let err = parse(&text).unwrap_err();
        assert!(err.contains("spec.gate.requireDigests:"), "{err}");
        let text = TWO.replace("matchLabels:", "matchLabel:");
        let err = parse(&text).unwrap_err();
        assert!(err.contains("spec.podSelector.matchLabel:"), "{err}");
    }

    #[test]
    fn an_unquoted_off_read_as_false_is_named() {
        let text = TWO.replace("mode: \"Off\"", "mode: false");
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains("spec.gate.mode: a boolean where a string is expected")
                && err.contains("unquoted Off")
                && err.contains(r#"write spec.gate.mode: "Off""#),
            "{err}"
        );
    }

    #[test]
    fn what_a_status_would_have_shown_stops_the_start() {
        for (from, to, says) in [
            (
                "name: backend\n  labels",
                "name: shop\n  labels",
                "a second KosliEnvironment named \"shop\"",
            ),
            (
                "  namespaces: [backend]",
                "  name: shop-prod\n  namespaces: [backend]",
                "already reported by \"shop\"",
            ),
            (
                "  namespaces: [backend]",
                "  namespaces: [backend]\n  excludeNamespaces: [x]",
                "cannot be combined",
            ),
            ("name: backend\n", "name: Backend\n", "DNS-1123"),
            (
                "kind: KosliEnvironment\nmetadata:\n  name: backend",
                "kind: Pod\nmetadata:\n  name: backend",
                "must be kosli.com/v1alpha1 and KosliEnvironment",
            ),
            (
                "  name: backend\n",
                "  name: backend\n  namespace: default\n",
                "metadata.namespace",
            ),
        ] {
            assert!(TWO.contains(from), "{from}");
            let err = parse(&TWO.replacen(from, to, 1)).unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
        assert!(parse("---\n").unwrap_err().contains("no KosliEnvironment"));
        assert!(parse("- a\n- b\n").is_err());
        assert!(parse("spec: [").is_err());
    }

    #[test]
    fn a_file_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("environments.yaml");
        std::fs::write(&path, " ".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        std::fs::write(&path, TWO).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        let err = read(&dir.path().join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.yaml"), "{err}");
    }
}
