//! Pods from a file: the v1 List `kubectl get pods -A -o json` prints.
//!
//! Either every pod parses or nothing is reported: a broken or truncated file
//! must never turn into a report that is missing pods.

use std::io::Read;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use crate::core::pod::{Interner, PodRecord};
use crate::error::{Error, Result};

#[derive(Deserialize)]
struct ListDocument {
    kind: Option<String>,
    items: Option<Vec<Pod>>,
}

/// Reads a pod list from a path, or from standard input for `-`.
pub fn read_pod_list(path: &Path) -> Result<Vec<PodRecord>> {
    let origin = path.display().to_string();
    let mut bytes = Vec::new();
    let read = if origin == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map(drop)
    } else {
        std::fs::read(path).map(|b| bytes = b)
    };
    read.map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let origin = if origin == "-" {
        "standard input".to_owned()
    } else {
        origin
    };
    parse_pod_list(&bytes, &origin)
}

/// Parses a v1 List of pods; the error names the item or the line at fault.
pub fn parse_pod_list(bytes: &[u8], origin: &str) -> Result<Vec<PodRecord>> {
    let fail = |message: String| Error::PodList {
        origin: origin.to_owned(),
        message,
    };
    let doc: ListDocument = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
    let items = match (doc.kind.as_deref(), doc.items) {
        (Some("List" | "PodList") | None, Some(items)) => items,
        (Some(kind), _) => {
            return Err(fail(format!(
                "expected a v1 List of pods (kubectl get pods -A -o json), found kind {kind:?}"
            )));
        }
        (None, None) => {
            return Err(fail(
                "expected a v1 List of pods with an `items` array".to_owned(),
            ));
        }
    };
    let mut shared = Interner::default();
    items
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let record = PodRecord::decode(pod, None, &mut shared);
            let missing = [
                ("metadata.name", record.name.is_empty()),
                ("metadata.namespace", record.namespace.is_empty()),
                ("metadata.creationTimestamp", record.created.is_none()),
            ]
            .into_iter()
            .find_map(|(field, missing)| missing.then_some(field));
            match missing {
                Some(field) => Err(fail(format!("items[{i}] has no {field}"))),
                None => Ok(record),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"metadata":{"name":"p","namespace":"ns","creationTimestamp":"2026-01-01T00:00:00Z"},
        "spec":{"containers":[{"name":"c","image":"nginx"}]},"status":{"phase":"Running"}}"#;

    fn list(items: &str) -> Vec<u8> {
        format!(r#"{{"apiVersion":"v1","kind":"List","items":[{items}]}}"#).into_bytes()
    }

    #[test]
    fn parses_a_list() {
        let pods = parse_pod_list(&list(POD), "f").unwrap();
        assert_eq!((&*pods[0].namespace, &*pods[0].name), ("ns", "p"));
        assert_eq!(parse_pod_list(&list(""), "f").unwrap().len(), 0);
    }

    #[test]
    fn truncated_input_is_an_error_with_a_position() {
        let mut bytes = list(POD);
        bytes.truncate(bytes.len() - 10);
        let e = parse_pod_list(&bytes, "pods.json").unwrap_err().to_string();
        assert!(
            e.starts_with("failed to parse pod list from pods.json: EOF while parsing"),
            "{e}"
        );
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn a_broken_pod_fails_the_whole_list() {
        let bad = POD.replace(r#""phase":"Running""#, r#""phase":7"#);
        let e = parse_pod_list(&list(&format!("{POD},{bad}")), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type: integer `7`"), "{e}");
    }

    #[test]
    fn missing_identity_fields_name_the_item() {
        let no_ns = POD.replace(r#""namespace":"ns","#, "");
        let e = parse_pod_list(&list(&format!("{POD},{no_ns}")), "f")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("items[1] has no metadata.namespace"), "{e}");
        let no_ts = POD.replace(r#","creationTimestamp":"2026-01-01T00:00:00Z""#, "");
        let e = parse_pod_list(&list(&no_ts), "f").unwrap_err().to_string();
        assert!(
            e.ends_with("items[0] has no metadata.creationTimestamp"),
            "{e}"
        );
    }

    #[test]
    fn a_single_pod_or_other_document_is_refused_clearly() {
        let pod = format!(r#"{{"kind":"Pod",{}"#, &POD[1..]);
        let e = parse_pod_list(pod.as_bytes(), "f").unwrap_err().to_string();
        assert!(e.contains("found kind \"Pod\""), "{e}");
        assert!(parse_pod_list(b"[]", "f").is_err());
        assert!(parse_pod_list(b"", "f").is_err());
        assert!(
            parse_pod_list(b"{}", "f")
                .unwrap_err()
                .to_string()
                .contains("items")
        );
    }
}
