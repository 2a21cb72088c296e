//! A map of at most `max` entries that forget their oldest insertions
//! first, each with an expiry: the shape of every in-memory store (job
//! records, message-id correlation, webhook event ids).

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Bounded<V> {
    max: usize,
    map: HashMap<String, (V, Instant)>,
    /// Insertion order, for eviction (may name keys already removed).
    order: VecDeque<String>,
}

impl<V> Bounded<V> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The live value for `key`; an expired one is dropped on the way.
    pub(crate) fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        if self.map.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.map.remove(key);
        }
        self.map.get_mut(key).map(|(v, _)| v)
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        self.map.remove(key).map(|(v, _)| v)
    }

    /// Keep `key` (if present) until `expires`.
    pub(crate) fn set_expiry(&mut self, key: &str, expires: Instant) {
        if let Some((_, exp)) = self.map.get_mut(key) {
            *exp = expires;
        }
    }

    /// Insert or replace `key` until `expires`, forgetting the oldest keys
    /// beyond `max`.
    pub(crate) fn insert(&mut self, key: &str, value: V, expires: Instant) {
        if self.map.insert(key.to_owned(), (value, expires)).is_none() {
            self.order.push_back(key.to_owned());
        }
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // The order queue may name keys replaced or removed since; keep it
        // from growing without bound.
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_go_first_and_expired_ones_are_gone() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut b = Bounded::new(2);
        b.insert("a", 1, later);
        b.insert("b", 2, later);
        b.insert("a", 3, later); // a replacement keeps its place
        b.insert("c", 4, later);
        assert_eq!(b.len(), 2);
        assert_eq!(b.get_mut("a", now), None);
        assert_eq!(b.get_mut("b", now).copied(), Some(2));
        assert_eq!(b.get_mut("c", now).copied(), Some(4));
        b.set_expiry("c", now);
        assert_eq!(b.get_mut("c", now), None, "expired by set_expiry");
        b.insert("d", 5, now);
        assert_eq!(b.get_mut("d", now), None, "expired at its instant");
        for i in 0..100 {
            b.insert("x", i, later);
        }
        assert!(b.order.len() <= 4, "{}", b.order.len());
    }
}
