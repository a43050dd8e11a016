//! The Kosli CLI's `--config-file` for `snapshot k8s`, and the environments a
//! snapshot run reports to.
//!
//! ```yaml
//! environments:
//!   - name: prod
//!     namespaces: [shop, payments]
//!   - name: everything-else
//!     excludeNamespacesRegex: ["^kube-"]
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::core::crd::validate_environment_name;
use crate::core::selection::{NamespaceFilter, Selection};
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    environments: Option<Vec<EnvironmentEntry>>,
}

/// One entry; unknown keys are refused so a typo cannot widen a report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvironmentEntry {
    name: Option<String>,
    namespaces: Option<Vec<String>>,
    namespaces_regex: Option<Vec<String>>,
    exclude_namespaces: Option<Vec<String>>,
    exclude_namespaces_regex: Option<Vec<String>>,
}

/// A Kosli environment and the pods that make it up.
#[derive(Clone, Debug)]
pub struct EnvironmentTarget {
    pub name: String,
    pub selection: Selection,
}

/// The namespace lists of one environment, as flags or a config entry give them.
#[derive(Clone, Debug, Default)]
pub struct NamespaceLists {
    pub namespaces: Vec<String>,
    pub namespaces_regex: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub exclude_namespaces_regex: Vec<String>,
}

impl NamespaceLists {
    pub fn compile(&self) -> Result<NamespaceFilter> {
        NamespaceFilter::new(
            &self.namespaces,
            &self.namespaces_regex,
            &self.exclude_namespaces,
            &self.exclude_namespaces_regex,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.namespaces_regex.is_empty()
            && self.exclude_namespaces.is_empty()
            && self.exclude_namespaces_regex.is_empty()
    }
}

/// One environment named on the command line.
pub fn single_target(name: &str, lists: &NamespaceLists) -> Result<EnvironmentTarget> {
    validate_environment_name(name)?;
    Ok(EnvironmentTarget {
        name: name.to_owned(),
        selection: Selection::from_filter(lists.compile()?),
    })
}

/// Reads and validates a config file: non-empty, every name present, valid and
/// unique, include and exclude not mixed, every regex compiles.
pub fn read_config_file(path: &Path) -> Result<Vec<EnvironmentTarget>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_config(&text).map_err(|source| Error::InvalidConfigFile {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Parses config file text; errors name the entry at fault.
pub fn parse_config(text: &str) -> Result<Vec<EnvironmentTarget>> {
    let problem = |problem: String| Error::ConfigEntry {
        problem,
        source: None,
    };
    let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| Error::ConfigEntry {
        problem: "failed to parse".to_owned(),
        source: Some(Box::new(e)),
    })?;
    let entries = file.environments.unwrap_or_default();
    if entries.is_empty() {
        return Err(problem(
            "no environments: list at least one under `environments:`".to_owned(),
        ));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let name = entry
                .name
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| problem(format!("environments[{i}]: name is required")))?;
            if let Some(first) = seen.insert(name.clone(), i) {
                return Err(problem(format!(
                    "environments[{first}] and environments[{i}] both report to {name:?}; names must be unique"
                )));
            }
            let lists = NamespaceLists {
                namespaces: entry.namespaces.unwrap_or_default(),
                namespaces_regex: entry.namespaces_regex.unwrap_or_default(),
                exclude_namespaces: entry.exclude_namespaces.unwrap_or_default(),
                exclude_namespaces_regex: entry.exclude_namespaces_regex.unwrap_or_default(),
            };
            single_target(&name, &lists).map_err(|e| Error::ConfigEntry {
                problem: format!("environments[{i}] ({name})"),
                source: Some(Box::new(e)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        crate::error::chain(&parse_config(text).unwrap_err())
    }

    #[test]
    fn parses_the_cli_format() {
        let targets = parse_config(
            "environments:\n  - name: prod\n    namespaces: [shop, payments]\n  - name: rest\n    excludeNamespacesRegex: ['^kube-']\n  - name: all\n",
        )
        .unwrap();
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["prod", "rest", "all"]);
        assert!(targets[0].selection.namespaces.matches("shop"));
        assert!(!targets[0].selection.namespaces.matches("other"));
        assert!(!targets[1].selection.namespaces.matches("kube-system"));
        assert!(targets[2].selection.namespaces.matches("anything"));
    }

    #[test]
    fn empty_lists_and_nulls_are_accepted() {
        let targets =
            parse_config("environments:\n- name: a\n  namespaces:\n  excludeNamespaces: []\n")
                .unwrap();
        assert!(targets[0].selection.namespaces.matches("x"));
    }

    #[test]
    fn refuses_empty_config() {
        assert!(err("environments: []\n").contains("no environments"));
        assert!(err("{}\n").contains("no environments"));
    }

    #[test]
    fn refuses_missing_and_duplicate_names() {
        assert_eq!(
            err("environments:\n- namespaces: [a]\n"),
            "environments[0]: name is required"
        );
        let e = err("environments:\n- name: a\n- name: b\n- name: a\n");
        assert!(
            e.contains("environments[0] and environments[2] both report to \"a\""),
            "{e}"
        );
    }

    #[test]
    fn refuses_invalid_names() {
        assert!(
            err("environments:\n- name: 'has space'\n").contains("does not match Kosli's pattern")
        );
    }

    #[test]
    fn refuses_include_and_exclude_mixed() {
        let e = err("environments:\n- name: a\n  namespaces: [x]\n  excludeNamespaces: [y]\n");
        assert!(e.starts_with("environments[0] (a): invalid configuration: namespaces/namespacesRegex cannot be combined"), "{e}");
    }

    #[test]
    fn refuses_bad_regex() {
        let e = err("environments:\n- name: a\n  namespacesRegex: ['(']\n");
        assert!(e.contains("invalid include namespace regex \"(\""), "{e}");
    }

    #[test]
    fn refuses_unknown_keys_and_bad_yaml() {
        assert!(err("environments:\n- name: a\n  namespace: [x]\n").contains("namespace"));
        assert!(err("environment:\n- name: a\n").contains("environment"));
        assert!(!err("environments: [\n").is_empty());
        assert!(!err("environments:\n- name: a\n  namespaces: 5\n").is_empty());
    }
}
