//! A map for tables that mostly hold a few entries: a filter's subscribers in the
//! subscription trie (a device's own topic has one), a session's subscriptions (most
//! devices have one or two) and its in-flight window (empty while idle).
//!
//! Up to [`FEW`] entries sit in a vector grown one entry at a time and searched in
//! order: one allocation the size of its entries, none while empty. A hash table's
//! first allocation is four buckets and their control bytes, 4–5× one subscription's
//! entry, and a table never gives back what it grew to. Past [`FEW`] entries the map
//! becomes a hash table; emptied, it is an empty vector again, so a session whose
//! window drained holds nothing for it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept in the vector at most: a search of this many compares as fast as a
/// hash lookup.
pub const FEW: usize = 8;

/// See the module docs.
#[derive(Debug)]
pub struct SmallMap<K, V>(Repr<K, V>);

#[derive(Debug)]
enum Repr<K, V> {
    Few(Vec<(K, V)>),
    // Boxed: the vector's size is the map's.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

// As small as the vector it usually is: 24 bytes in every session instead of 48.
const _: () = assert!(std::mem::size_of::<SmallMap<String, u64>>() == 24);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Repr::Few(Vec::new()))
    }
}

impl<K: Hash + Eq, V> SmallMap<K, V> {
    /// An empty map; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &self.0 {
            Repr::Few(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            Repr::Many(m) => m.get(key),
        }
    }

    /// The value under `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &mut self.0 {
            Repr::Few(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            Repr::Many(m) => m.get_mut(key),
        }
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Puts `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match &mut self.0 {
            Repr::Few(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(old, value));
                }
                if v.len() < FEW {
                    // One entry at a time: a session's few subscriptions take what
                    // they need, not a doubling's worth.
                    v.reserve_exact(1);
                    v.push((key, value));
                    return None;
                }
                let mut m = HashMap::with_capacity(2 * FEW);
                m.extend(v.drain(..));
                m.insert(key, value);
                self.0 = Repr::Many(Box::new(m));
                None
            }
            Repr::Many(m) => m.insert(key, value),
        }
    }

    /// Takes the entry under `key` out; the map gives its memory back once empty.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &mut self.0 {
            Repr::Few(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                Some(v.swap_remove(i).1)
            }
            Repr::Many(m) => {
                let value = m.remove(key)?;
                if m.is_empty() {
                    self.0 = Repr::Few(Vec::new());
                }
                Some(value)
            }
        }
    }

    /// Takes every entry out, giving the memory of a grown map back.
    pub fn clear(&mut self) {
        match &mut self.0 {
            Repr::Few(v) => v.clear(),
            Repr::Many(_) => self.0 = Repr::Few(Vec::new()),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.0 {
            Repr::Few(v) => Iter::Few(v.iter()),
            Repr::Many(m) => Iter::Many(m.iter()),
        }
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

/// The entries of a [`SmallMap`].
pub enum Iter<'a, K, V> {
    #[doc(hidden)]
    Few(std::slice::Iter<'a, (K, V)>),
    #[doc(hidden)]
    Many(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Many(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Few(it) => it.size_hint(),
            Iter::Many(it) => it.size_hint(),
        }
    }
}

impl<'a, K: Hash + Eq, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The entries of a [`SmallMap`], taken out of it.
pub enum IntoIter<K, V> {
    #[doc(hidden)]
    Few(std::vec::IntoIter<(K, V)>),
    #[doc(hidden)]
    Many(std::collections::hash_map::IntoIter<K, V>),
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Few(it) => it.next(),
            IntoIter::Many(it) => it.next(),
        }
    }
}

impl<K, V> IntoIterator for SmallMap<K, V> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Repr::Few(v) => IntoIter::Few(v.into_iter()),
            Repr::Many(m) => IntoIter::Many(m.into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys from a range a little past `FEW`, so that maps cross it both ways.
        let key = 0..(2 * FEW as u8 + 4);
        prop_oneof![
            8 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            6 => key.prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Whatever is inserted and removed, the map answers as a hash map does.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut small = SmallMap::new();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(small.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(small.remove(&k), model.remove(&k)),
                    Op::Clear => {
                        small.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(small.len(), model.len());
                let mut entries: Vec<(u8, u32)> = small.iter().map(|(k, v)| (*k, *v)).collect();
                entries.sort_unstable();
                let mut expected: Vec<(u8, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                expected.sort_unstable();
                prop_assert_eq!(entries, expected);
                for k in 0..(2 * FEW as u8 + 4) {
                    prop_assert_eq!(small.get(&k), model.get(&k));
                }
            }
        }
    }

    #[test]
    fn few_entries_take_only_their_room_and_an_emptied_table_goes() {
        let mut m: SmallMap<String, u64> = SmallMap::new();
        m.insert("a/b".into(), 1);
        match &m.0 {
            Repr::Few(v) => assert_eq!(v.capacity(), 1, "one entry, one slot"),
            Repr::Many(_) => panic!("one entry in a table"),
        }
        for i in 0..=FEW as u64 {
            m.insert(format!("t/{i}"), i);
        }
        assert!(matches!(m.0, Repr::Many(_)), "past FEW: a table");
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in &keys {
            assert!(m.remove(k.as_str()).is_some());
        }
        match &m.0 {
            Repr::Few(v) => assert_eq!(v.capacity(), 0, "emptied: nothing kept"),
            Repr::Many(_) => panic!("an empty table kept"),
        }
        assert_eq!(m.get("a/b"), None);
    }
}
