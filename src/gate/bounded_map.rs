//! A map that holds at most a fixed number of entries, forgetting the one
//! written longest ago when full. The gate's caches are keyed by what pods
//! name (images, tags, credentials): without a bound, a stream of distinct
//! names grows them without end.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub struct BoundedMap<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, u64)>,
    /// Write order: the sequence number of each entry's last write.
    order: BTreeMap<u64, K>,
    next: u64,
}

impl<K: Clone + Hash + Eq, V> BoundedMap<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Writes `value`; the entry counts as the newest, and the oldest goes
    /// when the map is full.
    pub fn insert(&mut self, key: K, value: V) {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        if let Some((_, old)) = self.entries.insert(key.clone(), (value, seq)) {
            self.order.remove(&old);
        }
        self.order.insert(seq, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, seq) = self.entries.remove(key)?;
        self.order.remove(&seq);
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_past_the_bound_keeps_the_size_and_forgets_the_oldest() {
        let mut map = BoundedMap::new(3);
        for i in 0..10 {
            map.insert(i, i * 10);
            assert!(map.len() <= 3);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&6), None);
        assert_eq!(
            [map.get(&7), map.get(&8), map.get(&9)],
            [Some(&70), Some(&80), Some(&90)]
        );
    }

    #[test]
    fn a_rewrite_makes_an_entry_the_newest() {
        let mut map = BoundedMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("a", 3);
        map.insert("c", 4);
        assert_eq!(map.get(&"b"), None, "b was written longest ago");
        assert_eq!(map.get(&"a"), Some(&3));
        assert_eq!(map.remove(&"a"), Some(3));
        assert_eq!(map.len(), 1);
        assert_eq!(map.order.len(), 1, "the write order follows the entries");
    }
}
