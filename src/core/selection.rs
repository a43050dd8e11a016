//! Which pods belong to an environment: the Kosli CLI's four namespace lists (same
//! semantics: exact names, unanchored regexes where any match counts, include and
//! exclude mutually exclusive) plus label selectors on namespaces and pods, plus
//! which containers of a pod count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use regex::Regex;

use crate::core::pod::PodRecord;
use crate::error::{Error, Result};

/// A label set: a pod's or a namespace's.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The CLI's namespace filter, compiled once.
#[derive(Clone, Debug, Default)]
pub struct NamespaceFilter {
    mode: FilterMode,
    names: Vec<String>,
    patterns: Vec<Regex>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FilterMode {
    /// No lists given: every namespace.
    #[default]
    All,
    Include,
    Exclude,
}

impl NamespaceFilter {
    /// Compiles the four lists. Mixing include and exclude, or a regex that does
    /// not compile, is an error naming the culprit.
    pub fn new(
        include: &[String],
        include_regex: &[String],
        exclude: &[String],
        exclude_regex: &[String],
    ) -> Result<Self> {
        let including = !include.is_empty() || !include_regex.is_empty();
        let excluding = !exclude.is_empty() || !exclude_regex.is_empty();
        let (mode, names, regexes, kind) = match (including, excluding) {
            (true, true) => {
                return Err(Error::Config(
                    "namespaces/namespacesRegex cannot be combined with excludeNamespaces/excludeNamespacesRegex"
                        .to_owned(),
                ));
            }
            (true, false) => (FilterMode::Include, include, include_regex, "include"),
            (false, true) => (FilterMode::Exclude, exclude, exclude_regex, "exclude"),
            (false, false) => return Ok(Self::default()),
        };
        let patterns = regexes
            .iter()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| Error::InvalidRegex {
                    kind,
                    pattern: pattern.clone(),
                    reason: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            mode,
            names: names.to_vec(),
            patterns,
        })
    }

    pub fn matches(&self, namespace: &str) -> bool {
        let listed = || {
            self.names.iter().any(|n| n == namespace)
                || self.patterns.iter().any(|re| re.is_match(namespace))
        };
        match self.mode {
            FilterMode::All => true,
            FilterMode::Include => listed(),
            FilterMode::Exclude => !listed(),
        }
    }

    /// The exact namespaces this filter can match, when it is a plain include list
    /// of names: pods can then be listed namespace by namespace, which needs no
    /// cluster-wide rights.
    pub fn exact_namespaces(&self) -> Option<&[String]> {
        (self.mode == FilterMode::Include && self.patterns.is_empty()).then_some(&self.names)
    }
}

/// Which containers of a pod are reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerOptions {
    /// Native sidecars: init containers with restartPolicy Always.
    pub include_sidecars: bool,
    /// Ephemeral (debug) containers.
    pub include_ephemeral: bool,
}

/// An environment's complete, compiled selection.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub namespaces: NamespaceFilter,
    namespace_selector: Option<Selector>,
    pod_selector: Option<Selector>,
    pub containers: ContainerOptions,
}

fn compile_selector(
    field: &'static str,
    selector: Option<LabelSelector>,
) -> Result<Option<Selector>> {
    selector
        .map(|s| {
            Selector::try_from(s).map_err(|e| Error::InvalidSelector {
                field,
                message: e.to_string(),
            })
        })
        .transpose()
}

impl Selection {
    pub fn new(
        namespaces: NamespaceFilter,
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
        containers: ContainerOptions,
    ) -> Result<Self> {
        Ok(Self {
            namespaces,
            namespace_selector: compile_selector("namespaceSelector", namespace_selector)?,
            pod_selector: compile_selector("podSelector", pod_selector)?,
            containers,
        })
    }

    /// A selection by namespace lists only (the snapshot command's).
    pub fn from_filter(namespaces: NamespaceFilter) -> Self {
        Self {
            namespaces,
            ..Self::default()
        }
    }

    /// Whether the selection needs namespace labels to decide.
    pub fn needs_namespace_labels(&self) -> bool {
        self.namespace_selector.is_some()
    }

    /// Whether a namespace (by name and, when known, labels) is in the selection.
    /// With a namespaceSelector and unknown labels the answer is no.
    pub fn selects_namespace(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        self.namespaces.matches(namespace)
            && match &self.namespace_selector {
                None => true,
                Some(selector) => namespace_labels.is_some_and(|labels| selector.matches(labels)),
            }
    }

    /// Whether pod labels satisfy the pod selector (all do without one).
    pub fn selects_labels(&self, pod_labels: &BTreeMap<String, String>) -> bool {
        self.pod_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(pod_labels))
    }

    /// Whether a pod is in the selection.
    pub fn selects_pod(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        pod_labels: &BTreeMap<String, String>,
    ) -> bool {
        self.selects_namespace(namespace, namespace_labels)
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(pod_labels))
    }
}

/// Decides which pods a selection takes, once per run of pods in the same
/// namespace and once per shared label set, rather than once per pod: a
/// report of many replicas asks the same questions over and over.
pub struct PodFilter<'a> {
    selection: &'a Selection,
    namespace: Option<(Arc<str>, bool)>,
    labels: HashMap<SameArc<Labels>, bool>,
}

/// An `Arc` compared by identity: interned values are equal when shared.
struct SameArc<T>(Arc<T>);

impl<T> PartialEq for SameArc<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for SameArc<T> {}

impl<T> std::hash::Hash for SameArc<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

impl<'a> PodFilter<'a> {
    pub fn new(selection: &'a Selection) -> Self {
        Self {
            selection,
            namespace: None,
            labels: HashMap::new(),
        }
    }

    /// Whether `pod` is selected; `namespace_labels` is asked only when the
    /// namespace changes from the pod before.
    pub fn selects<'l>(
        &mut self,
        pod: &PodRecord,
        namespace_labels: impl FnOnce(&str) -> Option<&'l Labels>,
    ) -> bool {
        let in_namespace = match &self.namespace {
            Some((namespace, selected)) if *namespace == pod.namespace => *selected,
            _ => {
                let selected = self
                    .selection
                    .selects_namespace(&pod.namespace, namespace_labels(&pod.namespace));
                self.namespace = Some((pod.namespace.clone(), selected));
                selected
            }
        };
        if !in_namespace {
            return false;
        }
        let selection = self.selection;
        if selection.pod_selector.is_none() {
            return true;
        }
        *self
            .labels
            .entry(SameArc(pod.labels.clone()))
            .or_insert_with(|| selection.selects_labels(&pod.labels))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn filter(inc: &[&str], inc_re: &[&str], exc: &[&str], exc_re: &[&str]) -> NamespaceFilter {
        NamespaceFilter::new(
            &strings(inc),
            &strings(inc_re),
            &strings(exc),
            &strings(exc_re),
        )
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_lists_select_every_namespace() {
        let f = filter(&[], &[], &[], &[]);
        assert!(f.matches("anything") && f.matches("kube-system"));
        assert_eq!(f.exact_namespaces(), None);
    }

    #[test]
    fn include_names_are_exact() {
        let f = filter(&["prod"], &[], &[], &[]);
        assert!(f.matches("prod"));
        assert!(!f.matches("prod-2") && !f.matches("pro"));
        assert_eq!(f.exact_namespaces(), Some(&strings(&["prod"])[..]));
    }

    #[test]
    fn include_regexes_are_unanchored_and_any_match_counts() {
        let f = filter(&[], &["team-", "^ops$"], &[], &[]);
        assert!(f.matches("team-a") && f.matches("my-team-b") && f.matches("ops"));
        assert!(!f.matches("ops-2") && !f.matches("prod"));
        assert_eq!(f.exact_namespaces(), None);
    }

    #[test]
    fn include_names_and_regexes_are_a_union() {
        let f = filter(&["prod"], &["^team-"], &[], &[]);
        assert!(f.matches("prod") && f.matches("team-x"));
        assert!(!f.matches("staging"));
    }

    #[test]
    fn exclude_names_and_regexes_remove_matches() {
        let f = filter(&[], &[], &["default"], &["^kube-"]);
        assert!(!f.matches("default") && !f.matches("kube-system") && !f.matches("kube-public"));
        assert!(f.matches("prod") && f.matches("my-kube-thing"));
    }

    #[test]
    fn include_and_exclude_are_mutually_exclusive() {
        for (inc, inc_re, exc, exc_re) in [
            (vec!["a"], vec![], vec!["b"], vec![]),
            (vec![], vec!["a"], vec![], vec!["b"]),
            (vec!["a"], vec![], vec![], vec!["b"]),
            (vec![], vec!["a"], vec!["b"], vec![]),
        ] {
            let err = NamespaceFilter::new(
                &strings(&inc),
                &strings(&inc_re),
                &strings(&exc),
                &strings(&exc_re),
            )
            .unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    #[test]
    fn bad_regexes_name_their_kind_and_pattern() {
        let err = NamespaceFilter::new(&[], &[], &[], &strings(&["ok", "[unclosed"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("invalid exclude namespace regex \"[unclosed\""),
            "{msg}"
        );
    }

    #[test]
    fn namespace_selector_needs_matching_labels() {
        let sel = Selection::new(
            filter(&[], &[], &[], &[]),
            Some(LabelSelector {
                match_labels: Some(labels(&[("team", "payments")])),
                ..Default::default()
            }),
            None,
            ContainerOptions::default(),
        )
        .unwrap();
        assert!(sel.needs_namespace_labels());
        assert!(sel.selects_namespace("a", Some(&labels(&[("team", "payments")]))));
        assert!(!sel.selects_namespace("a", Some(&labels(&[("team", "other")]))));
        assert!(
            !sel.selects_namespace("a", None),
            "unknown labels never match a selector"
        );
    }

    #[test]
    fn namespace_selector_and_lists_both_apply() {
        let sel = Selection::new(
            filter(&[], &[], &["skip"], &[]),
            Some(LabelSelector {
                match_labels: Some(labels(&[("env", "prod")])),
                ..Default::default()
            }),
            None,
            ContainerOptions::default(),
        )
        .unwrap();
        let prod = labels(&[("env", "prod")]);
        assert!(sel.selects_namespace("web", Some(&prod)));
        assert!(!sel.selects_namespace("skip", Some(&prod)));
    }

    #[test]
    fn pod_selector_with_expressions() {
        let sel = Selection::new(
            NamespaceFilter::default(),
            None,
            Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                }]),
                ..Default::default()
            }),
            ContainerOptions::default(),
        )
        .unwrap();
        assert!(sel.selects_pod("ns", None, &labels(&[("tier", "web")])));
        assert!(!sel.selects_pod("ns", None, &labels(&[("tier", "db")])));
        assert!(!sel.selects_pod("ns", None, &labels(&[])));
    }

    #[test]
    fn invalid_selector_operator_is_a_clear_error() {
        let err = Selection::new(
            NamespaceFilter::default(),
            None,
            Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "Near".into(),
                    values: None,
                }]),
                ..Default::default()
            }),
            ContainerOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid podSelector:"), "{err}");
    }
}
