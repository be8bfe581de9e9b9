//! A warm function's in-memory cache: what a Lambda container (or the local
//! stack's process) keeps between requests to save store reads or work.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct WarmCache<K, V> {
    /// How long an entry is served; `None`: until it is evicted.
    ttl: Option<Duration>,
    /// Entries held at most; past it the cache starts over.
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> WarmCache<K, V> {
    pub fn new(ttl: Option<Duration>, capacity: usize) -> Self {
        Self { ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The entry for `key`, unless it is missing or older than the TTL.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let entries = self.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        self.ttl.is_none_or(|ttl| at.elapsed() < ttl).then(|| value.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                entries.clear();
            }
            entries.insert(key, (Instant::now(), value));
        }
    }

    pub fn remove<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_starts_over_when_full() {
        let c = WarmCache::new(Some(Duration::from_millis(30)), 2);
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!((c.get(&"a"), c.get(&"b")), (Some(1), Some(2)));
        c.insert("c", 3);
        assert_eq!((c.get(&"a"), c.get(&"c")), (None, Some(3)));
        c.remove(&"c");
        assert_eq!(c.get(&"c"), None);
        c.insert("d", 4);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&"d"), None);
        let forever = WarmCache::new(None, 1);
        forever.insert("x", 1);
        assert_eq!(forever.get(&"x"), Some(1));
    }
}
