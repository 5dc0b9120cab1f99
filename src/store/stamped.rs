//! Values built from a few rows, each kept while those rows' change counters
//! (`Store::row_changes`, summed into a stamp read before the rows) stay where they were.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// A bounded map of stamped values: a full map is emptied rather than grown.
pub struct Stamped<K, V> {
    // A std Mutex: held for a lookup or an insert, never across an await.
    inner: Mutex<HashMap<K, (u64, V)>>,
    len_max: usize,
}

impl<K: Hash + Eq, V: Clone> Stamped<K, V> {
    pub fn new(len_max: usize) -> Self {
        Self { inner: Mutex::new(HashMap::new()), len_max }
    }

    /// The value kept for `key`, if it was read at `stamp`.
    pub fn get(&self, key: &K, stamp: u64) -> Option<V> {
        let map = self.inner.lock().ok()?;
        map.get(key).filter(|(s, _)| *s == stamp).map(|(_, v)| v.clone())
    }

    /// Keeps `value`, read at `stamp` (taken before the read).
    pub fn put(&self, key: K, stamp: u64, value: V) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= self.len_max && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, (stamp, value));
        }
    }
}
