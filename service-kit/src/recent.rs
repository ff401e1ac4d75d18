//! Copies of values read lately, each good for a while: a burst of requests that need the same
//! record (a template, for every create of it) reads it once per period instead of once each.
//! Whoever changes a record forgets its copy at once; a change made elsewhere shows within the
//! period.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Copies live past their period are dropped once the map holds this many.
const PRUNE_ABOVE: usize = 1024;

/// Values by key, each fresh for `fresh_for` after it was read.
#[derive(Debug)]
pub struct RecentCopies<V> {
    fresh_for: Duration,
    copies: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> RecentCopies<V> {
    pub fn new(fresh_for: Duration) -> Self {
        Self {
            fresh_for,
            copies: Mutex::new(HashMap::new()),
        }
    }

    /// The copy of `key`, if one was read within the period.
    pub fn get(&self, key: &str) -> Option<V> {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|(_, read_at)| now.duration_since(*read_at) < self.fresh_for)
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` as the copy of `key`, read now.
    pub fn put(&self, key: &str, value: V) {
        let now = Instant::now();
        let mut copies = self.lock();
        if copies.len() >= PRUNE_ABOVE {
            copies.retain(|_, (_, read_at)| now.duration_since(*read_at) < self.fresh_for);
        }
        copies.insert(key.to_owned(), (value, now));
    }

    /// Forgets the copy of `key` (it was just changed).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (V, Instant)>> {
        // Map operations do not panic half-way: a poisoned lock still holds a usable map.
        self.copies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_fresh_for_its_period_and_forgotten_on_change() {
        let copies = RecentCopies::new(Duration::from_millis(50));
        assert_eq!(copies.get("t"), None);
        copies.put("t", 1);
        assert_eq!(copies.get("t"), Some(1));
        copies.forget("t");
        assert_eq!(copies.get("t"), None);
        copies.put("t", 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(copies.get("t"), None, "stale after its period");
    }
}
