//! The index of KosliEnvironments: which exist, each one's Kosli name, its
//! selection compiled once (or why its spec cannot be served) and its gate.
//!
//! The KosliEnvironment watch writes it; the reporter's workers and the gate
//! read it. Neither depends on the other: both depend on this index.
//!
//! One Kosli environment has one writer: when several KosliEnvironments name
//! it, the oldest ([`owners`]) reports it and the others stand aside, so two
//! views never overwrite each other in Kosli.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::ResourceExt;

use crate::core::crd::{GateMode, GateSpec, KosliEnvironment, validate_environment_name};
use crate::core::selection::{Labels, Selection};
use crate::error::Error;

/// Why an environment's spec cannot be served: shown in its status and Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec {
    pub message: String,
}

impl std::fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the gate enforces for an environment: a valid spec's selection and gate.
#[derive(Clone, Debug)]
pub struct Gating {
    pub selection: Arc<Selection>,
    pub gate: GateSpec,
    /// The generation of the spec they come from.
    pub generation: Option<i64>,
}

/// Whether a KosliEnvironment may report its Kosli environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// It is the oldest KosliEnvironment naming its Kosli environment.
    Owner,
    /// An older KosliEnvironment (this one) names the same Kosli environment.
    OwnedBy(String),
    /// The first list of KosliEnvironments is not complete: an older one naming
    /// the same Kosli environment may still arrive.
    Unsettled,
}

/// A KosliEnvironment's claim on a Kosli environment.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub object: &'a str,
    pub kosli_env: &'a str,
    /// `metadata.creationTimestamp`; the API server always sets it, and an
    /// object without one counts as the newest.
    pub created: Option<jiff::Timestamp>,
}

/// The owner of each claimed Kosli environment: the oldest claim by creation
/// time, then by object name (creation times have one-second resolution).
/// Creation times never change and a new object is always the newest, so
/// ownership moves only when its owner is deleted.
pub fn owners<'a>(claims: impl IntoIterator<Item = Claim<'a>>) -> BTreeMap<&'a str, &'a str> {
    let mut oldest: BTreeMap<&'a str, Claim<'a>> = BTreeMap::new();
    let age = |c: &Claim<'a>| (c.created.is_none(), c.created, c.object);
    for claim in claims {
        let kept = oldest.entry(claim.kosli_env).or_insert(claim);
        if age(&claim) < age(kept) {
            *kept = claim;
        }
    }
    oldest
        .into_iter()
        .map(|(kosli_env, claim)| (kosli_env, claim.object))
        .collect()
}

/// One KosliEnvironment as the reporter and the gate need it.
#[derive(Clone, Debug)]
pub struct IndexedEnvironment {
    /// The KosliEnvironment object's name.
    pub object: String,
    /// The Kosli environment it reports to.
    pub kosli_env: String,
    pub generation: Option<i64>,
    /// The compiled selection, or why the spec cannot be served.
    pub selection: Result<Arc<Selection>, InvalidSpec>,
    pub gate: GateSpec,
    /// What the gate enforces: this spec's selection and gate when valid, else
    /// the last valid spec's (an invalid edit must not switch the gate off);
    /// `None` when no spec of it was ever valid.
    pub gating: Option<Gating>,
    /// The object as last seen (its status is what the API server holds).
    pub resource: Arc<KosliEnvironment>,
    /// Whether it reports its Kosli environment; set by the index.
    pub ownership: Ownership,
}

impl IndexedEnvironment {
    /// Compiles `env` once; `watch_namespaces` is the operator's pod watch scope
    /// (`None`: cluster-wide), which a selection must stay inside.
    pub fn compile(env: KosliEnvironment, watch_namespaces: Option<&[String]>) -> Self {
        let selection = compile_selection(&env, watch_namespaces).map(Arc::new);
        let gating = selection.as_ref().ok().map(|s| Gating {
            selection: s.clone(),
            gate: env.spec.gate.clone(),
            generation: env.metadata.generation,
        });
        Self {
            gating,
            object: env.name_any(),
            kosli_env: env.environment_name(),
            generation: env.metadata.generation,
            selection,
            gate: env.spec.gate.clone(),
            resource: Arc::new(env),
            ownership: Ownership::Unsettled,
        }
    }

    fn claim(&self) -> Claim<'_> {
        Claim {
            object: &self.object,
            kosli_env: &self.kosli_env,
            created: self
                .resource
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0),
        }
    }

    /// The resend interval of the unchanged snapshot.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.resource.spec.heartbeat_seconds)
                .unwrap_or(300)
                .max(1),
        )
    }

    /// Whether the gate covers a pod in `namespace` with `labels` (by the last
    /// valid spec), and in which mode.
    pub fn gates(
        &self,
        namespace: &str,
        namespace_labels: Option<&Labels>,
        labels: &Labels,
    ) -> Option<&Gating> {
        self.gating.as_ref().filter(|g| {
            g.gate.mode != GateMode::Off
                && g.selection.selects_pod(namespace, namespace_labels, labels)
        })
    }

    /// An Enforce gate with no valid spec ever seen: it cannot tell which
    /// namespaces it covers, so it denies what it reviews.
    pub fn unservable_enforce(&self) -> Option<&InvalidSpec> {
        match (&self.gating, &self.selection) {
            (None, Err(invalid)) if self.gate.mode == GateMode::Enforce => Some(invalid),
            _ => None,
        }
    }

    /// Whether this environment selects a pod in `namespace` with `labels`.
    pub fn selects(
        &self,
        namespace: &str,
        namespace_labels: Option<&Labels>,
        labels: &Labels,
    ) -> bool {
        self.selection
            .as_ref()
            .is_ok_and(|s| s.selects_pod(namespace, namespace_labels, labels))
    }
}

/// The selection of a spec, or why it cannot be served.
fn compile_selection(
    env: &KosliEnvironment,
    watch_namespaces: Option<&[String]>,
) -> Result<Selection, InvalidSpec> {
    let selection = env.spec.validate().map_err(|e| InvalidSpec {
        message: match e {
            Error::Config(message) => message,
            other => other.to_string(),
        },
    })?;
    validate_environment_name(&env.environment_name()).map_err(|e| InvalidSpec {
        message: format!("spec.name: {e}"),
    })?;
    if let Some(watched) = watch_namespaces {
        let covered = selection
            .namespaces
            .exact_namespaces()
            .is_some_and(|names| names.iter().all(|n| watched.contains(n)));
        if !covered {
            return Err(InvalidSpec {
                message: format!(
                    "spec selects namespaces outside --watch-namespaces ({}); with --watch-namespaces, list the namespaces in spec.namespaces",
                    watched.join(",")
                ),
            });
        }
    }
    Ok(selection)
}

/// What an invalid spec means for the gate, for its status and Events.
fn gate_note(kept: Option<&Gating>, gate: &GateSpec) -> String {
    match kept {
        Some(g) if g.gate.mode != GateMode::Off => format!(
            "; the gate keeps enforcing the last valid spec (generation {}, mode {:?}) until this is fixed",
            g.generation.unwrap_or_default(),
            g.gate.mode
        ),
        None if gate.mode == GateMode::Enforce => {
            "; with no earlier valid spec, the gate denies every pod it reviews until this is fixed"
                .to_owned()
        }
        _ => String::new(),
    }
}

/// What applying an object did to the index.
#[derive(Debug)]
pub enum Applied {
    /// A new environment.
    Added(Arc<IndexedEnvironment>),
    /// Its spec changed (a new generation).
    Changed(Arc<IndexedEnvironment>),
    /// Only its status or metadata moved: nothing to do.
    Unchanged,
}

/// Every KosliEnvironment this operator handles.
#[derive(Debug, Default)]
pub struct EnvironmentIndex {
    watch_namespaces: Option<Vec<String>>,
    entries: RwLock<BTreeMap<String, Arc<IndexedEnvironment>>>,
    synced: AtomicBool,
}

impl EnvironmentIndex {
    pub fn new(watch_namespaces: Option<Vec<String>>) -> Self {
        Self {
            watch_namespaces,
            ..Self::default()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<IndexedEnvironment>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<IndexedEnvironment>>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or updates an environment. Status-only updates come back through the
    /// watch after every status write: they leave the entry as it is.
    pub fn apply(&self, env: KosliEnvironment) -> Applied {
        let name = env.name_any();
        let mut entries = self.write();
        let existing = entries.get(&name).map(|e| e.generation);
        if existing.is_some_and(|generation| generation == env.metadata.generation) {
            return Applied::Unchanged;
        }
        let mut entry = IndexedEnvironment::compile(env, self.watch_namespaces.as_deref());
        if let Err(invalid) = &mut entry.selection {
            entry.gating = entries.get(&name).and_then(|e| e.gating.clone());
            invalid
                .message
                .push_str(&gate_note(entry.gating.as_ref(), &entry.gate));
        }
        entries.insert(name.clone(), Arc::new(entry));
        // The entry's own ownership is settled here; other entries it displaced
        // are left to `settle_ownership`.
        let ownership = self.ownership_of(&entries, &name);
        let entry = match entries.get_mut(&name) {
            Some(slot) => {
                Arc::make_mut(slot).ownership = ownership;
                slot.clone()
            }
            None => return Applied::Unchanged,
        };
        match existing {
            Some(_) => Applied::Changed(entry),
            None => Applied::Added(entry),
        }
    }

    /// What `object` may do, by the claims in `entries`.
    fn ownership_of(
        &self,
        entries: &BTreeMap<String, Arc<IndexedEnvironment>>,
        object: &str,
    ) -> Ownership {
        if !self.is_synced() {
            return Ownership::Unsettled;
        }
        let Some(entry) = entries.get(object) else {
            return Ownership::Unsettled;
        };
        let owners = owners(entries.values().map(|e| e.claim()));
        match owners.get(entry.kosli_env.as_str()) {
            Some(owner) if *owner != object => Ownership::OwnedBy((*owner).to_owned()),
            _ => Ownership::Owner,
        }
    }

    /// Recomputes every entry's ownership (after an environment came, went or
    /// the first list completed) and returns the entries whose ownership moved,
    /// so their workers learn it.
    pub fn settle_ownership(&self) -> Vec<Arc<IndexedEnvironment>> {
        let mut entries = self.write();
        let settled: Vec<(String, Ownership)> = entries
            .keys()
            .map(|name| (name.clone(), self.ownership_of(&entries, name)))
            .collect();
        let mut moved = Vec::new();
        for (name, ownership) in settled {
            if let Some(slot) = entries.get_mut(&name)
                && slot.ownership != ownership
            {
                Arc::make_mut(slot).ownership = ownership;
                moved.push(slot.clone());
            }
        }
        moved
    }

    /// Removes an environment; `false` if it was not there.
    pub fn remove(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// After a re-list: removes the environments that are gone, and names them.
    pub fn retain(&self, present: &BTreeSet<String>) -> Vec<String> {
        let mut entries = self.write();
        let gone: Vec<String> = entries
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for name in &gone {
            entries.remove(name);
        }
        gone
    }

    /// Every environment, in name order.
    pub fn all(&self) -> Vec<Arc<IndexedEnvironment>> {
        self.read().values().cloned().collect()
    }

    /// The environments whose gate is on and covers a pod in `namespace` with
    /// `labels`, with what they enforce (the last valid spec's gate).
    pub fn gated(
        &self,
        namespace: &str,
        namespace_labels: Option<&Labels>,
        labels: &Labels,
    ) -> Vec<(Arc<IndexedEnvironment>, Gating)> {
        self.read()
            .values()
            .filter_map(|e| {
                let gating = e.gates(namespace, namespace_labels, labels)?.clone();
                Some((e.clone(), gating))
            })
            .collect()
    }

    /// Gates that need a namespace's labels to tell whether they cover it:
    /// what could gate a pod whose namespace labels are not known.
    pub fn gated_by_namespace_labels(&self) -> Vec<(Arc<IndexedEnvironment>, Gating)> {
        self.read()
            .values()
            .filter_map(|e| {
                let gating = e.gating.as_ref()?;
                (gating.gate.mode != GateMode::Off && gating.selection.needs_namespace_labels())
                    .then(|| (e.clone(), gating.clone()))
            })
            .collect()
    }

    /// Enforce gates whose spec was never valid (see
    /// [`IndexedEnvironment::unservable_enforce`]): object name and why.
    pub fn unservable_enforce(&self) -> Vec<(String, InvalidSpec)> {
        self.read()
            .values()
            .filter_map(|e| Some((e.object.clone(), e.unservable_enforce()?.clone())))
            .collect()
    }

    /// The first full list of KosliEnvironments is in.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crd::KosliEnvironmentSpec;

    fn env(name: &str, generation: i64, spec: serde_json::Value) -> KosliEnvironment {
        let spec: KosliEnvironmentSpec = serde_json::from_value(spec).unwrap();
        let mut env = KosliEnvironment::new(name, spec);
        env.metadata.generation = Some(generation);
        env
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_spec_is_compiled_once_per_generation() {
        let index = EnvironmentIndex::new(None);
        let first = index.apply(env("prod", 1, serde_json::json!({"namespaces": ["a"]})));
        assert!(matches!(first, Applied::Added(ref e) if e.kosli_env == "prod"));
        let status_only = index.apply(env("prod", 1, serde_json::json!({"namespaces": ["a"]})));
        assert!(matches!(status_only, Applied::Unchanged));
        let changed = index.apply(env("prod", 2, serde_json::json!({"namespaces": ["b"]})));
        let Applied::Changed(entry) = changed else {
            panic!("a new generation is a change: {changed:?}")
        };
        assert!(entry.selects("b", None, &Labels::new()));
        assert!(!entry.selects("a", None, &Labels::new()));
    }

    #[test]
    fn an_invalid_spec_says_why_and_selects_nothing() {
        let index = EnvironmentIndex::new(None);
        let Applied::Added(entry) = index.apply(env(
            "prod",
            1,
            serde_json::json!({"namespacesRegex": ["("]}),
        )) else {
            panic!("added")
        };
        let message = &entry.selection.as_ref().unwrap_err().message;
        assert!(message.contains("namespace regex \"(\""), "{message}");
        assert!(!entry.selects("anything", None, &Labels::new()));
    }

    #[test]
    fn a_selection_outside_the_watched_namespaces_is_invalid() {
        let index = EnvironmentIndex::new(Some(vec!["a".to_owned()]));
        let Applied::Added(wide) = index.apply(env("wide", 1, serde_json::json!({}))) else {
            panic!("added")
        };
        assert!(
            wide.selection
                .as_ref()
                .unwrap_err()
                .message
                .starts_with("spec selects namespaces outside --watch-namespaces (a)")
        );
        let Applied::Added(inside) =
            index.apply(env("inside", 1, serde_json::json!({"namespaces": ["a"]})))
        else {
            panic!("added")
        };
        assert!(inside.selection.is_ok());
    }

    #[test]
    fn only_gated_environments_that_select_the_pod_are_gate_targets() {
        let index = EnvironmentIndex::new(None);
        index.apply(env(
            "enforced",
            1,
            serde_json::json!({"namespaces": ["a"], "gate": {"mode": "Enforce"}}),
        ));
        index.apply(env("off", 1, serde_json::json!({"namespaces": ["a"]})));
        index.apply(env(
            "by-label",
            1,
            serde_json::json!({"podSelector": {"matchLabels": {"app": "web"}}, "gate": {"mode": "Audit"}}),
        ));
        let names = |found: Vec<(Arc<IndexedEnvironment>, Gating)>| {
            found
                .iter()
                .map(|(e, _)| e.object.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(index.gated("a", None, &Labels::new())),
            vec!["enforced"]
        );
        assert_eq!(
            names(index.gated("a", None, &labels(&[("app", "web")]))),
            vec!["by-label", "enforced"]
        );
        assert!(index.gated("b", None, &Labels::new()).is_empty());
    }

    #[test]
    fn an_invalid_edit_keeps_the_gate_on_the_last_valid_spec_and_says_so() {
        let index = EnvironmentIndex::new(None);
        index.apply(env(
            "prod",
            1,
            serde_json::json!({"namespaces": ["a"], "gate": {"mode": "Enforce"}}),
        ));
        let Applied::Changed(broken) = index.apply(env(
            "prod",
            2,
            serde_json::json!({"namespacesRegex": ["("], "gate": {"mode": "Off"}}),
        )) else {
            panic!("a new generation is a change")
        };
        let message = &broken.selection.as_ref().unwrap_err().message;
        assert!(
            message.ends_with(
                "; the gate keeps enforcing the last valid spec (generation 1, mode Enforce) until this is fixed"
            ),
            "{message}"
        );
        let gated = index.gated("a", None, &Labels::new());
        assert_eq!(gated.len(), 1, "still gating namespace a");
        assert_eq!(gated[0].1.gate.mode, GateMode::Enforce);
        assert_eq!(gated[0].1.generation, Some(1));
        assert!(index.gated("b", None, &Labels::new()).is_empty());
        assert!(index.unservable_enforce().is_empty());
        // A second invalid edit still keeps generation 1's.
        index.apply(env(
            "prod",
            3,
            serde_json::json!({"namespacesRegex": ["["]}),
        ));
        assert_eq!(
            index.gated("a", None, &Labels::new())[0].1.generation,
            Some(1)
        );
        // A valid spec replaces it.
        index.apply(env("prod", 4, serde_json::json!({"namespaces": ["b"]})));
        assert!(index.gated("a", None, &Labels::new()).is_empty());
    }

    #[test]
    fn an_enforce_gate_that_was_never_valid_is_unservable() {
        let index = EnvironmentIndex::new(None);
        let Applied::Added(entry) = index.apply(env(
            "prod",
            1,
            serde_json::json!({"namespacesRegex": ["("], "gate": {"mode": "Enforce"}}),
        )) else {
            panic!("added")
        };
        let message = &entry.selection.as_ref().unwrap_err().message;
        assert!(
            message.ends_with(
                "; with no earlier valid spec, the gate denies every pod it reviews until this is fixed"
            ),
            "{message}"
        );
        let unservable = index.unservable_enforce();
        assert_eq!(unservable.len(), 1);
        assert_eq!(unservable[0].0, "prod");
        assert!(index.gated("a", None, &Labels::new()).is_empty());
        // Warn or Audit with a spec never valid: nothing to deny.
        index.apply(env(
            "prod",
            2,
            serde_json::json!({"namespacesRegex": ["("], "gate": {"mode": "Warn"}}),
        ));
        assert!(index.unservable_enforce().is_empty());
    }

    #[test]
    fn gates_that_select_namespaces_by_label_are_known() {
        let index = EnvironmentIndex::new(None);
        index.apply(env(
            "by-label",
            1,
            serde_json::json!({"namespaceSelector": {"matchLabels": {"team": "shop"}}, "gate": {"mode": "Enforce"}}),
        ));
        index.apply(env(
            "by-name",
            1,
            serde_json::json!({"namespaces": ["a"], "gate": {"mode": "Enforce"}}),
        ));
        let found = index.gated_by_namespace_labels();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.object, "by-label");
    }

    #[test]
    fn a_relist_drops_what_is_gone() {
        let index = EnvironmentIndex::new(None);
        index.apply(env("keep", 1, serde_json::json!({})));
        index.apply(env("gone", 1, serde_json::json!({})));
        let present = BTreeSet::from(["keep".to_owned()]);
        assert_eq!(index.retain(&present), vec!["gone"]);
        let left: Vec<String> = index.all().iter().map(|e| e.object.clone()).collect();
        assert_eq!(left, vec!["keep"]);
        assert!(!index.is_synced());
        index.set_synced();
        assert!(index.is_synced());
    }

    fn created(name: &str, kosli_env: &str, at: &str) -> KosliEnvironment {
        let mut e = env(name, 1, serde_json::json!({"name": kosli_env}));
        e.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at.parse().unwrap(),
        ));
        e
    }

    fn claim<'a>(object: &'a str, kosli_env: &'a str, at: Option<&str>) -> Claim<'a> {
        Claim {
            object,
            kosli_env,
            created: at.map(|at| at.parse().unwrap()),
        }
    }

    #[test]
    fn the_oldest_claim_owns_a_kosli_environment() {
        let owners = owners([
            claim("b-newer", "prod", Some("2026-01-02T00:00:00Z")),
            claim("z-oldest", "prod", Some("2026-01-01T00:00:00Z")),
            claim("no-time", "prod", None),
            claim("alone", "dev", Some("2026-01-03T00:00:00Z")),
        ]);
        assert_eq!(
            owners.get("prod"),
            Some(&"z-oldest"),
            "by creation time first"
        );
        assert_eq!(owners.get("dev"), Some(&"alone"));
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn claims_created_in_the_same_second_go_by_name_and_a_missing_time_is_newest() {
        let same = Some("2026-01-01T00:00:00Z");
        let owners_of = |claims: Vec<Claim<'static>>| owners(claims).get("prod").copied();
        assert_eq!(
            owners_of(vec![claim("b", "prod", same), claim("a", "prod", same)]),
            Some("a")
        );
        assert_eq!(
            owners_of(vec![claim("a", "prod", same), claim("b", "prod", same)]),
            Some("a")
        );
        assert_eq!(
            owners_of(vec![claim("a", "prod", None), claim("b", "prod", same)]),
            Some("b"),
            "an object without a creation time never displaces one with it"
        );
    }

    #[test]
    fn ownership_is_unsettled_until_the_first_list_is_complete() {
        let index = EnvironmentIndex::new(None);
        // The newer object arrives first in the list: it must not report before
        // the older one is known.
        let Applied::Added(newer) = index.apply(created("newer", "prod", "2026-01-02T00:00:00Z"))
        else {
            panic!("added")
        };
        assert_eq!(newer.ownership, Ownership::Unsettled);
        index.apply(created("older", "prod", "2026-01-01T00:00:00Z"));
        index.set_synced();
        let mut moved: Vec<(String, Ownership)> = index
            .settle_ownership()
            .iter()
            .map(|e| (e.object.clone(), e.ownership.clone()))
            .collect();
        moved.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            moved,
            vec![
                ("newer".to_owned(), Ownership::OwnedBy("older".to_owned())),
                ("older".to_owned(), Ownership::Owner),
            ]
        );
        assert!(index.settle_ownership().is_empty(), "nothing moved since");
    }

    #[test]
    fn when_the_owner_goes_the_next_oldest_takes_over() {
        let index = EnvironmentIndex::new(None);
        index.set_synced();
        let Applied::Added(first) = index.apply(created("first", "prod", "2026-01-01T00:00:00Z"))
        else {
            panic!("added")
        };
        assert_eq!(first.ownership, Ownership::Owner);
        let Applied::Added(second) = index.apply(created("second", "prod", "2026-01-02T00:00:00Z"))
        else {
            panic!("added")
        };
        assert_eq!(second.ownership, Ownership::OwnedBy("first".to_owned()));
        let Applied::Added(third) = index.apply(created("third", "prod", "2026-01-03T00:00:00Z"))
        else {
            panic!("added")
        };
        assert_eq!(third.ownership, Ownership::OwnedBy("first".to_owned()));
        let Applied::Added(other) = index.apply(created("other", "dev", "2026-01-04T00:00:00Z"))
        else {
            panic!("added")
        };
        assert_eq!(other.ownership, Ownership::Owner, "another Kosli name");
        assert!(index.settle_ownership().is_empty());

        assert!(index.remove("first"));
        let moved = index.settle_ownership();
        let moved: Vec<(&str, &Ownership)> = moved
            .iter()
            .map(|e| (e.object.as_str(), &e.ownership))
            .collect();
        assert_eq!(
            moved,
            vec![
                ("second", &Ownership::Owner),
                ("third", &Ownership::OwnedBy("second".to_owned()))
            ]
        );
    }

    #[test]
    fn renaming_the_kosli_environment_frees_the_old_name() {
        let index = EnvironmentIndex::new(None);
        index.set_synced();
        index.apply(created("first", "prod", "2026-01-01T00:00:00Z"));
        index.apply(created("second", "prod", "2026-01-02T00:00:00Z"));
        let mut renamed = created("first", "staging", "2026-01-01T00:00:00Z");
        renamed.metadata.generation = Some(2);
        let Applied::Changed(first) = index.apply(renamed) else {
            panic!("a new generation")
        };
        assert_eq!(first.ownership, Ownership::Owner);
        let moved = index.settle_ownership();
        assert_eq!(moved.len(), 1);
        assert_eq!(
            (moved[0].object.as_str(), &moved[0].ownership),
            ("second", &Ownership::Owner)
        );
    }
}
