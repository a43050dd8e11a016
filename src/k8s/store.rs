//! What the reporter knows of the cluster: compact pod records, namespace labels,
//! and whether each watch has a complete view.
//!
//! A watch that (re)starts lists everything again. The list is marked into the
//! live store as it arrives (each object stamped with the list's number) and
//! what it did not bring is swept out when it ends, so a re-list never holds a
//! second copy of the cluster. Meanwhile the watch counts as unsynced and
//! nothing is reported from it.
//!
//! The stores are persistent maps kept in (namespace, name) order: a reader
//! takes a copy in constant time under the lock ([`ClusterState::pods_view`])
//! and builds a report of any size from it after letting go of the lock, while
//! the watches go on writing (a write then copies only the nodes it touches).
//!
//! Each pod store has exactly one feeding watch (see [`ClusterState::claim`]):
//! two watches sharing one store would each sweep out the other's list.
//! A watch that keeps failing after it synced does not pass its old view off as
//! current: it is marked stale (see [`WatchHealth::failing`]) until a re-list ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use imbl::OrdMap;

use crate::core::pod::{Interner, LabelKeys, PodRecord};

/// (namespace, name)
pub type PodKey = (Arc<str>, Arc<str>);
pub use crate::core::selection::Labels;

/// A keyed collection fed by one watch.
#[derive(Debug)]
pub struct Watched<K: Ord + Clone, V: Clone> {
    items: OrdMap<K, Marked<V>>,
    /// The number of the list last started: objects it brought carry it.
    list: u32,
    synced: bool,
    /// Whether a watch task feeds this store (at most one may).
    claimed: bool,
    pub health: WatchHealth,
}

/// A value and the number of the list (or the event since) that last brought it.
#[derive(Clone, Debug)]
struct Marked<V> {
    value: V,
    list: u32,
}

/// Whether the watch feeding a store keeps its view current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchHealth {
    /// Since when the watch has been failing without a successful event.
    failing_since: Option<Instant>,
    /// The watch failed for too long: the view may be behind the cluster.
    /// Cleared only by a completed re-list.
    stale_since: Option<Instant>,
}

impl WatchHealth {
    /// The watch failed at `now`.
    pub fn failing(&mut self, now: Instant) {
        self.failing_since.get_or_insert(now);
    }

    /// The watch answered: whatever failed before has recovered (a stale view
    /// stays stale: only a completed list makes it current again).
    pub fn answered(&mut self) {
        self.failing_since = None;
    }

    /// When the view turns stale if the watch keeps failing: `bound` after
    /// the failures began; `None` while it works or once stale.
    pub fn stale_due(&self, bound: std::time::Duration) -> Option<Instant> {
        match self.stale_since {
            Some(_) => None,
            None => self.failing_since.map(|since| since + bound),
        }
    }

    /// The watch has failed for longer than the bound.
    pub fn mark_stale(&mut self, now: Instant) {
        self.stale_since.get_or_insert(now);
    }

    pub fn stale_since(&self) -> Option<Instant> {
        self.stale_since
    }

    fn listed(&mut self) {
        *self = Self::default();
    }
}

impl<K: Ord + Clone, V: Clone> Default for Watched<K, V> {
    fn default() -> Self {
        Self {
            items: OrdMap::new(),
            list: 0,
            synced: false,
            claimed: false,
            health: WatchHealth::default(),
        }
    }
}

/// What an event changed: the value before and after (both `None`: nothing).
pub type Change<V> = (Option<V>, Option<V>);

impl<K: Ord + Clone, V: PartialEq + Clone> Watched<K, V> {
    /// What is held must be listed again before it is complete (e.g. pods
    /// decoded without labels a selector now needs): unsynced until then.
    pub fn invalidate(&mut self) {
        self.synced = false;
    }

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
        self.items.get(key).map(|m| &m.value)
    }

    /// The values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.values().map(|m| &m.value)
    }

    /// A copy of what is held, taken in constant time.
    pub fn view(&self) -> StoreView<K, V> {
        StoreView(self.items.clone())
    }

    /// An added or modified object; `None` when nothing a report uses changed.
    pub fn apply(&mut self, key: K, value: V) -> Option<Change<V>> {
        let marked = Marked {
            value,
            list: self.list,
        };
        match self.items.get_mut(&key) {
            Some(held) if held.value == marked.value => {
                held.list = self.list;
                None
            }
            Some(held) => {
                let before = std::mem::replace(held, marked);
                Some((Some(before.value), Some(held.value.clone())))
            }
            None => {
                let after = marked.value.clone();
                self.items.insert(key, marked);
                Some((None, Some(after)))
            }
        }
    }

    pub fn delete(&mut self, key: &K) -> Option<Change<V>> {
        self.items.remove(key).map(|old| (Some(old.value), None))
    }

    /// A (re-)list begins: hold reports until it is done.
    pub fn relist_started(&mut self) {
        self.synced = false;
        self.list = self.list.wrapping_add(1);
    }

    /// An object of the list in progress, marked into the live store.
    pub fn relisted(&mut self, key: K, value: V) -> Option<Change<V>> {
        self.apply(key, value)
    }

    /// The list is complete: sweep out what it did not bring (objects deleted
    /// while the watch was down), and return those.
    pub fn relist_done(&mut self) -> Vec<Change<V>> {
        let gone: Vec<K> = self
            .items
            .iter()
            .filter(|(_, m)| m.list != self.list)
            .map(|(k, _)| k.clone())
            .collect();
        let changes = gone.iter().filter_map(|key| self.delete(key)).collect();
        self.synced = true;
        self.health.listed();
        changes
    }
}

/// A copy of a store's contents at one moment, in key order.
#[derive(Clone, Debug)]
pub struct StoreView<K: Ord + Clone, V: Clone>(OrdMap<K, Marked<V>>);

impl<K: Ord + Clone, V: Clone> StoreView<K, V> {
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.values().map(|m| &m.value)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key).map(|m| &m.value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a report is built from, copied out of the state under its lock.
#[derive(Clone, Debug)]
pub struct PodsView {
    /// One view per pod store, in scope order: (namespace, name) order overall.
    pub pods: Vec<StoreView<PodKey, PodRecord>>,
    pub namespaces: StoreView<String, Labels>,
}

impl PodsView {
    /// Every pod, in (namespace, name) order.
    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.iter().flat_map(StoreView::values)
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(&namespace.to_owned())
    }
}

/// The pods and namespaces the reporter works from.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// One pod store per pod watch: `None` for the cluster-wide watch, else a namespace.
    pub pod_scopes: BTreeMap<Option<String>, Watched<PodKey, PodRecord>>,
    pub namespaces: Watched<String, Labels>,
    /// One copy of what pod records share, across every pod store.
    pub shared: Interner,
    /// The pod label keys some pod selector uses: the only labels kept.
    /// `None` until the KosliEnvironments are listed (pods are listed after).
    pub label_keys: Option<Arc<LabelKeys>>,
    /// Bumped whenever pods must be listed again for new label keys: a list
    /// decoded under an older generation is not complete.
    pub label_generation: u64,
}

/// Why a view cannot be reported as current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleView {
    pub since: Instant,
    pub reason: String,
}

impl ClusterState {
    /// A state for pod watches on these scopes (`None`: cluster-wide); a scope
    /// named twice is one scope.
    pub fn new(scopes: impl IntoIterator<Item = Option<String>>) -> Self {
        Self {
            pod_scopes: scopes
                .into_iter()
                .map(|s| (s, Watched::default()))
                .collect(),
            namespaces: Watched::default(),
            shared: Interner::default(),
            label_keys: None,
            label_generation: 0,
        }
    }

    /// A watch task takes the pod store of `scope` for itself: `false` when
    /// there is none or another watch already feeds it.
    pub fn claim(&mut self, scope: &Option<String>) -> bool {
        match self.pod_scopes.get_mut(scope) {
            Some(store) if !store.claimed => {
                store.claimed = true;
                true
            }
            _ => false,
        }
    }

    /// The label keys pod records keep, once known.
    pub fn label_keys(&self) -> Option<Arc<LabelKeys>> {
        self.label_keys.clone()
    }

    /// Sets the label keys pods are decoded with. Returns whether pods must be
    /// listed again: a key was added that records decoded before lack (every
    /// pod store is then unsynced at once, before anyone acts on the new keys).
    pub fn set_label_keys(&mut self, keys: LabelKeys) -> bool {
        let relist = match &self.label_keys {
            None => {
                self.label_generation = 1;
                false
            }
            Some(old) if **old == keys => return false,
            Some(old) => !keys.is_subset(old),
        };
        if relist {
            self.label_generation += 1;
            for store in self.pod_scopes.values_mut() {
                store.invalidate();
            }
        }
        self.label_keys = Some(Arc::new(keys));
        relist
    }

    /// Whether a pod list decoded under label-key `generation` is complete:
    /// not when a selector has since needed a key it lacks.
    pub fn lists_complete_at(&self, generation: u64) -> bool {
        generation == self.label_generation
    }

    /// Why the view a report would be built from is not current: a pod store,
    /// or the namespace labels when `namespace_labels` are needed, is stale.
    pub fn stale_view(&self, namespace_labels: bool) -> Option<StaleView> {
        let pods = self
            .pod_scopes
            .iter()
            .filter_map(|(scope, store)| Some((store.health.stale_since()?, scope)))
            .min();
        if let Some((since, scope)) = pods {
            let watch = match scope {
                Some(namespace) => format!("the pod watch of namespace {namespace}"),
                None => "the pod watch".to_owned(),
            };
            return Some(StaleView {
                since,
                reason: format!("{watch} is failing; the view is not current until it lists again"),
            });
        }
        let since = self
            .namespaces
            .health
            .stale_since()
            .filter(|_| namespace_labels)?;
        Some(StaleView {
            since,
            reason: "the namespace watch is failing; namespace labels are not current until it lists again".to_owned(),
        })
    }

    /// Every pod watch has a complete view.
    pub fn pods_synced(&self) -> bool {
        !self.pod_scopes.is_empty() && self.pod_scopes.values().all(Watched::is_synced)
    }

    /// A copy of every pod store and the namespace labels, taken in time
    /// independent of their size: reports are built from it off the lock.
    pub fn pods_view(&self) -> PodsView {
        PodsView {
            pods: self.pod_scopes.values().map(Watched::view).collect(),
            namespaces: self.namespaces.view(),
        }
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
    (pod.namespace.clone(), pod.name.arc())
}

/// The key of the pod `name` in `namespace`, for a lookup or a delete.
pub fn key_of(namespace: &str, name: &str) -> PodKey {
    (Arc::from(namespace), Arc::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Watched<&'static str, i32> {
        Watched::default()
    }

    fn keys(names: &[&str]) -> LabelKeys {
        names.iter().map(|k| (*k).to_owned()).collect()
    }

    fn listed(store: &mut Watched<PodKey, PodRecord>) {
        store.relist_started();
        store.relist_done();
    }

    #[test]
    fn a_scope_named_twice_is_one_store_fed_by_one_watch() {
        let a = || Some("a".to_owned());
        let mut state = ClusterState::new([a(), a(), Some("b".to_owned())]);
        assert_eq!(state.pod_scopes.len(), 2);
        assert!(state.claim(&a()));
        assert!(!state.claim(&a()), "a second watch into the same store");
        assert!(state.claim(&Some("b".to_owned())));
        assert!(!state.claim(&None), "no such store");
    }

    #[test]
    fn a_relist_of_one_scope_leaves_the_others_whole() {
        let (a, b) = (Some("a".to_owned()), Some("b".to_owned()));
        let mut state = ClusterState::new([a.clone(), b.clone()]);
        let mut shared = Interner::default();
        let mut record = |ns: &str, name: &str| PodRecord {
            namespace: shared.string(ns),
            name: name.into(),
            labels: shared.labels(Labels::new()),
            phase: shared.string("Running"),
            created: None,
            owners: shared.owners(Vec::new()),
            containers: shared.containers(Vec::new()),
        };
        for (scope, ns) in [(&a, "a"), (&b, "b")] {
            let store = state.pod_scopes.get_mut(scope).unwrap();
            store.relist_started();
            for i in 0..300 {
                let r = record(ns, &format!("p{i}"));
                store.relisted(pod_key(&r), r);
            }
            store.relist_done();
        }
        // `a` re-lists: `b` keeps its view and its sync while `a`'s list is buffered.
        let store_a = state.pod_scopes.get_mut(&a).unwrap();
        store_a.relist_started();
        let r = record("a", "p0");
        store_a.relisted(pod_key(&r), r);
        assert_eq!(state.pod_scopes[&b].len(), 300);
        assert!(state.pod_scopes[&b].is_synced());
        assert!(!state.pods_synced());
        assert_eq!(
            state.pod_count(),
            600,
            "the old view of `a` stays whole meanwhile"
        );
    }

    #[test]
    fn a_new_label_key_unsyncs_every_pod_store_at_once() {
        let mut state = ClusterState::new([None]);
        assert_eq!(state.label_keys(), None);
        assert!(
            !state.set_label_keys(keys(&["app"])),
            "the first keys: nothing listed yet"
        );
        assert_eq!(state.label_generation, 1);
        listed(state.pod_scopes.get_mut(&None).unwrap());
        assert!(state.pods_synced());

        assert!(!state.set_label_keys(keys(&["app"])));
        assert!(
            !state.set_label_keys(keys(&[])),
            "fewer keys: records hold a surplus only"
        );
        assert!(state.pods_synced());
        assert_eq!(state.label_generation, 1);
        assert_eq!(state.label_keys().as_deref(), Some(&keys(&[])));

        assert!(
            state.set_label_keys(keys(&["app"])),
            "a key records may lack"
        );
        assert!(
            !state.pods_synced(),
            "unsynced before anyone reads with the new key"
        );
        assert_eq!(state.label_generation, 2);
        listed(state.pod_scopes.get_mut(&None).unwrap());
        assert!(state.pods_synced());
    }

    #[test]
    fn a_watch_failing_past_the_bound_is_stale_until_it_lists_again() {
        let bound = std::time::Duration::from_secs(60);
        let t0 = Instant::now();
        let mut state = ClusterState::new([None]);
        let store = state.pod_scopes.get_mut(&None).unwrap();
        listed(store);
        assert_eq!(store.health.stale_due(bound), None);
        store.health.failing(t0);
        store.health.failing(t0 + bound / 2);
        assert_eq!(
            store.health.stale_due(bound),
            Some(t0 + bound),
            "from the first failure"
        );
        store.health.answered();
        assert_eq!(store.health.stale_due(bound), None, "it recovered in time");

        store.health.failing(t0);
        store.health.mark_stale(t0 + bound);
        store.health.answered();
        assert_eq!(
            store.health.stale_since(),
            Some(t0 + bound),
            "an answer is not a list"
        );
        assert_eq!(store.health.stale_due(bound), None, "stale once, not again");
        assert!(store.is_synced(), "the old view stays readable");
        let stale = state.stale_view(false).unwrap();
        assert_eq!(stale.since, t0 + bound);
        assert!(
            stale.reason.contains("pod watch is failing"),
            "{}",
            stale.reason
        );

        listed(state.pod_scopes.get_mut(&None).unwrap());
        assert_eq!(state.stale_view(false), None);
    }

    #[test]
    fn stale_namespace_labels_matter_only_to_namespace_selectors() {
        let mut state = ClusterState::new([None]);
        state.namespaces.health.failing(Instant::now());
        state.namespaces.health.mark_stale(Instant::now());
        assert_eq!(state.stale_view(false), None);
        assert!(
            state
                .stale_view(true)
                .unwrap()
                .reason
                .contains("namespace watch")
        );
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
        assert!(!s.is_synced(), "a half-listed store is never reported from");
        s.relist_done();
        assert!(s.is_synced());
        assert_eq!(s.get(&"a"), Some(&1));
    }

    #[test]
    fn a_relist_is_marked_into_the_live_store_and_sweeps_what_it_did_not_bring() {
        let mut s = w();
        s.relist_started();
        for (k, v) in [("keep", 1), ("change", 2), ("gone", 3)] {
            s.relisted(k, v);
        }
        s.relist_done();
        s.relist_started();
        assert!(!s.is_synced(), "re-listing holds reports");
        assert_eq!(s.relisted("keep", 1), None, "unchanged");
        assert_eq!(s.relisted("change", 20), Some((Some(2), Some(20))));
        assert_eq!(s.relisted("new", 4), Some((None, Some(4))));
        assert_eq!(s.len(), 4, "one copy: the list goes into the live store");
        assert_eq!(
            s.relist_done(),
            vec![(Some(3), None)],
            "deleted while the watch was down"
        );
        assert!(s.is_synced());
        assert_eq!(s.len(), 3);
        assert!(s.get(&"gone").is_none());
        assert_eq!(s.get(&"keep"), Some(&1));
    }

    #[test]
    fn an_object_changed_by_an_event_during_a_relist_is_kept() {
        let mut s = w();
        s.relist_started();
        s.relisted("a", 1);
        s.relisted("b", 2);
        s.relist_done();
        // A list that failed half way, then a new one: only the second counts.
        s.relist_started();
        s.relisted("a", 1);
        s.relist_started();
        s.relisted("b", 2);
        s.apply("c", 3);
        assert_eq!(s.relist_done(), vec![(Some(1), None)]);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_view_is_a_copy_that_later_writes_do_not_touch() {
        let mut s = w();
        s.relist_started();
        s.relisted("b", 2);
        s.relisted("a", 1);
        s.relist_done();
        let view = s.view();
        s.apply("a", 10);
        s.delete(&"b");
        s.apply("c", 3);
        assert_eq!(
            view.values().copied().collect::<Vec<_>>(),
            [1, 2],
            "key order"
        );
        assert_eq!(s.values().copied().collect::<Vec<_>>(), [10, 3]);
    }
}
