//! Settlements that did not stick. When the broker cannot take a job's
//! replacement (the publish fails or times out), or cannot take its ack, the
//! delivery is left unacked and the session reconnects; the broker then
//! delivers the job again. The ledger remembers what was already decided
//! for it, so the redelivery is settled from that decision instead of
//! calling the API a second time: a broker fault never makes a job reach the
//! API more often than `retry.max_attempts` allows, and never sends it twice.
//!
//! In memory, per process, bounded: entries exist only for jobs whose
//! settlement failed, and are dropped once settled or after [`MAX_AGE`].
//! Across processes the dedupe store plays the same part for sent jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::decide::Disposition;

/// An entry older than this is forgotten (the job has long been settled by
/// some other path, or its queue was purged).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// At most this many entries; the oldest go first.
pub const MAX_ENTRIES: usize = 100_000;

/// What the ledger knows about a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Decided, but the replacement was not confirmed: settle it again.
    /// A retry's delay counts from when it was decided (`decided_at`).
    Decided {
        disposition: Disposition,
        decided_at: Instant,
    },
    /// Sent or replaced, but the ack was lost: a redelivery only needs an ack.
    Settled,
}

#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<String, (Instant, Entry)>>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Entry)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember `entry` for job `id` (replacing what was there).
    pub fn record(&self, id: &str, entry: Entry) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (at, _)| now.saturating_duration_since(*at) < MAX_AGE);
            if map.len() >= MAX_ENTRIES
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.to_owned(), (now, entry));
    }

    /// What is known about job `id`, if anything recent.
    pub fn get(&self, id: &str) -> Option<Entry> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get(id) {
            Some((at, _)) if now.saturating_duration_since(*at) >= MAX_AGE => {
                map.remove(id);
                None
            }
            Some((_, e)) => Some(e.clone()),
            None => None,
        }
    }

    /// The job is settled: forget it.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_are_kept_replaced_forgotten_and_aged_out() {
        let l = Ledger::new();
        assert_eq!(l.get("a"), None);
        l.record("a", Entry::Settled);
        assert_eq!(l.get("a"), Some(Entry::Settled));
        let d = Entry::Decided {
            disposition: Disposition::Requeue { halt: None },
            decided_at: Instant::now(),
        };
        l.record("a", d.clone());
        assert_eq!(l.get("a"), Some(d));
        l.forget("a");
        assert!(l.is_empty());
        l.record("b", Entry::Settled);
        tokio::time::advance(MAX_AGE).await;
        assert_eq!(l.get("b"), None, "aged out");
        assert!(l.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn it_is_bounded() {
        let l = Ledger::new();
        for i in 0..MAX_ENTRIES + 10 {
            l.record(&i.to_string(), Entry::Settled);
            if i % 10_000 == 0 {
                tokio::time::advance(Duration::from_millis(1)).await;
            }
        }
        assert!(l.len() <= MAX_ENTRIES);
        assert_eq!(
            l.get(&(MAX_ENTRIES + 9).to_string()),
            Some(Entry::Settled),
            "the newest is kept"
        );
    }
}
