//! Sorted-vector maps and sets for the client.
//!
//! The client's collections are small (rooms, watches) or read far more than
//! written (members), and `BTreeMap` code cost the browser bundle ~60 KB once
//! instantiated for each key and value type. A sorted `Vec` with binary search
//! is a few hundred bytes per instantiation and iterates in key order too.

use crate::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A map kept as a `Vec` sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find(&self, key: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    // `get(i)` rather than `[i]` here and below: `find`'s index is always in
    // range, but a bounds check the compiler cannot drop costs the browser
    // bundle a panic branch (and its message) per instantiation.

    /// The value for `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key).ok()?;
        self.0.get(i).map(|(_, v)| v)
    }

    /// The value for `key`, mutably.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        self.0.get_mut(i).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the old value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => self.0.get_mut(i).map(|(_, v)| core::mem::replace(v, value)),
            // The same condition as `Vec::insert`'s assert, so it folds away.
            Err(i) if i <= self.0.len() => {
                self.0.insert(i, (key, value));
                None
            }
            Err(_) => None,
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok().filter(|&i| i < self.0.len())?;
        Some(self.0.remove(i).1)
    }

    /// Keeps the entries `f` accepts.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &V) -> bool) {
        self.0.retain(|(k, v)| f(k, v));
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A set kept as a sorted `Vec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecSet<K>(VecMap<K, ()>);

impl<K> Default for VecSet<K> {
    fn default() -> Self {
        Self(VecMap::default())
    }
}

impl<K: Ord> VecSet<K> {
    /// Adds `key`; returns whether it was new.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ()).is_none()
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        self.0.remove(key).is_some()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    /// Members in order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_sorted_and_replaces() {
        let mut m = VecMap::default();
        for k in [5, 1, 3, 1] {
            m.insert(k, k * 10);
        }
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(m.insert(3, 0), Some(30));
        assert_eq!(m.remove(&1), Some(10));
        assert_eq!(m.get(&3), Some(&0));
        let mut s = VecSet::default();
        assert!(s.insert("b") && s.insert("a") && !s.insert("a"));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), ["a", "b"]);
    }
}
