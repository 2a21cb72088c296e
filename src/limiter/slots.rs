//! Where pacing lanes keep their slots: in this process, or in Redis for
//! the whole fleet ([`super::shared`]). A lane is a GCRA with a burst of one:
//! its next free slot (`tat`) moves one interval on each take.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::pacing::Lane;
use super::secs;
use super::shared::Shared;

/// Lanes in this process.
#[derive(Debug, Default)]
pub(super) struct LocalSlots {
    tat: Mutex<HashMap<String, Instant>>,
}

impl LocalSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.tat.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Until the lane's next free slot, at `rate` (the fleet's share of it
    /// when falling back).
    pub(super) fn wait(&self, key: &str) -> Duration {
        let now = Instant::now();
        self.lock()
            .get(key)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Take the slot if it is free now; otherwise how long until it is.
    pub(super) fn take(&self, key: &str, rate: f64) -> Duration {
        let now = Instant::now();
        let mut m = self.lock();
        if m.len() > 10_000 {
            m.retain(|_, t| *t > now);
        }
        let tat = m.get(key).copied().unwrap_or(now);
        if tat > now {
            return tat - now;
        }
        // As the shared lane: a taker a little late keeps the schedule, by
        // at most half a slot, so no second holds more than MPS + 1.
        let iv = secs(1.0 / rate.max(1e-6));
        m.insert(key.to_owned(), (tat + iv).max(now + iv / 2));
        Duration::ZERO
    }
}

/// The slots of every lane, local or shared.
#[derive(Clone)]
pub(crate) enum Slots {
    Local(Arc<LocalSlots>),
    Shared(Arc<Shared>),
}

impl Slots {
    pub(super) async fn wait(&self, lane: &Lane) -> Duration {
        match self {
            Slots::Local(l) => l.wait(&lane.key),
            Slots::Shared(s) => s.lane(lane, false).await,
        }
    }

    pub(super) async fn take(&self, lane: &Lane) -> Duration {
        match self {
            Slots::Local(l) => l.take(&lane.key, lane.rate),
            Slots::Shared(s) => s.lane(lane, true).await,
        }
    }
}
