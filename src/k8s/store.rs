//! What the reporter knows of the cluster: compact pod records, namespace labels,
//! and whether each watch has a complete view.
//!
//! A watch that (re)starts lists everything again; its objects are buffered and
//! swapped in whole when the list is done, so a half-listed store is never read.
//! Until then the watch counts as unsynced and nothing is reported from it.

use std::collections::{BTreeMap, HashMap};

use crate::core::pod::PodRecord;

/// (namespace, name)
pub type PodKey = (String, String);
pub use crate::core::selection::Labels;

/// A keyed collection fed by one watch, with its re-list buffer.
#[derive(Debug)]
pub struct Watched<K, V> {
    items: HashMap<K, V>,
    relist: Option<HashMap<K, V>>,
    synced: bool,
}

impl<K, V> Default for Watched<K, V> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

/// What an event changed: the value before and after (both `None`: nothing).
pub type Change<V> = (Option<V>, Option<V>);

impl<K: std::hash::Hash + Eq + Clone, V: PartialEq + Clone> Watched<K, V> {
    /// Whether the view is complete: listed once and not re-listing.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.items.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.values()
    }

    /// An added or modified object; `None` when nothing a report uses changed.
    pub fn apply(&mut self, key: K, value: V) -> Option<Change<V>> {
        match self.items.insert(key, value.clone()) {
            Some(old) if old == value => None,
            old => Some((old, Some(value))),
        }
    }

    pub fn delete(&mut self, key: &K) -> Option<Change<V>> {
        self.items.remove(key).map(|old| (Some(old), None))
    }

    /// A re-list begins: hold reports until it is done.
    pub fn relist_started(&mut self) {
        self.synced = false;
        self.relist = Some(HashMap::new());
    }

    pub fn relisted(&mut self, key: K, value: V) {
        self.relist
            .get_or_insert_with(HashMap::new)
            .insert(key, value);
    }

    /// The re-list is complete: swap it in, and return what differs from before
    /// (objects deleted while the watch was down included).
    pub fn relist_done(&mut self) -> Vec<Change<V>> {
        let fresh = self.relist.take().unwrap_or_default();
        let old = std::mem::replace(&mut self.items, fresh);
        self.synced = true;
        let mut changes: Vec<Change<V>> = Vec::new();
        for (key, value) in &self.items {
            match old.get(key) {
                Some(before) if before == value => {}
                before => changes.push((before.cloned(), Some(value.clone()))),
            }
        }
        for (key, before) in old {
            if !self.items.contains_key(&key) {
                changes.push((Some(before), None));
            }
        }
        changes
    }
}

/// The pods and namespaces the reporter works from.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// One pod store per pod watch: `None` for the cluster-wide watch, else a namespace.
    pub pod_scopes: BTreeMap<Option<String>, Watched<PodKey, PodRecord>>,
    pub namespaces: Watched<String, Labels>,
}

impl ClusterState {
    /// A state for pod watches on these scopes (`None`: cluster-wide).
    pub fn new(scopes: impl IntoIterator<Item = Option<String>>) -> Self {
        Self {
            pod_scopes: scopes
                .into_iter()
                .map(|s| (s, Watched::default()))
                .collect(),
            namespaces: Watched::default(),
        }
    }

    /// Every pod watch has a complete view.
    pub fn pods_synced(&self) -> bool {
        !self.pod_scopes.is_empty() && self.pod_scopes.values().all(Watched::is_synced)
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pod_scopes.values().flat_map(Watched::values)
    }

    pub fn pod_count(&self) -> usize {
        self.pod_scopes.values().map(Watched::len).sum()
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(&namespace.to_owned())
    }
}

/// The cluster state behind one lock, shared by the watches (which write it),
/// the reporter and the gate (which read it).
#[derive(Debug, Default)]
pub struct SharedState(std::sync::RwLock<ClusterState>);

impl SharedState {
    pub fn new(state: ClusterState) -> Self {
        Self(std::sync::RwLock::new(state))
    }

    /// A poisoned lock still holds a consistent state: every writer keeps the
    /// state whole between its statements.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, ClusterState> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn pod_key(pod: &PodRecord) -> PodKey {
    (pod.namespace.clone(), pod.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Watched<&'static str, i32> {
        Watched::default()
    }

    #[test]
    fn unchanged_values_are_no_change() {
        let mut s = w();
        assert_eq!(s.apply("a", 1), Some((None, Some(1))));
        assert_eq!(s.apply("a", 1), None);
        assert_eq!(s.apply("a", 2), Some((Some(1), Some(2))));
        assert_eq!(s.delete(&"a"), Some((Some(2), None)));
        assert_eq!(s.delete(&"a"), None);
    }

    #[test]
    fn unsynced_until_the_first_list_is_done() {
        let mut s = w();
        assert!(!s.is_synced());
        s.relist_started();
        s.relisted("a", 1);
        assert!(!s.is_synced());
        assert!(s.is_empty(), "a half-listed buffer is never visible");
        s.relist_done();
        assert!(s.is_synced());
        assert_eq!(s.get(&"a"), Some(&1));
    }

    #[test]
    fn a_relist_swaps_whole_and_reports_what_changed_meanwhile() {
        let mut s = w();
        s.relist_started();
        for (k, v) in [("keep", 1), ("change", 2), ("gone", 3)] {
            s.relisted(k, v);
        }
        s.relist_done();
        s.relist_started();
        assert!(!s.is_synced(), "re-listing holds reports");
        assert_eq!(
            s.get(&"gone"),
            Some(&3),
            "the old view stays readable meanwhile"
        );
        s.relisted("keep", 1);
        s.relisted("change", 20);
        s.relisted("new", 4);
        let mut changes = s.relist_done();
        changes.sort();
        assert_eq!(
            changes,
            vec![(None, Some(4)), (Some(2), Some(20)), (Some(3), None)]
        );
        assert_eq!(s.len(), 3);
        assert!(s.get(&"gone").is_none());
    }
}
