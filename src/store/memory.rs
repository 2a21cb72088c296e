//! The in-process job store: the same answers as the Redis one, for one
//! process. Bounded: at most `dedupe.memory_max_entries` jobs (the oldest are
//! forgotten first), each for at most `dedupe.ttl_secs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::bounded::Bounded;
use super::{Begin, Delivery, JobRecord, JobState, Sent, now_ms};

#[derive(Debug, Clone)]
struct Entry {
    record: JobRecord,
    owner: Option<String>,
    lease_until: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    jobs: Bounded<Entry>,
    /// Telnyx message id -> job id.
    messages: Bounded<String>,
}

#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                jobs: Bounded::new(max_entries),
                messages: Bounded::new(max_entries),
            })),
        }
    }

    /// Jobs remembered now.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry for `id` (expired ones are dropped on the way).
    fn live<'a>(inner: &'a mut Inner, id: &str, now: Instant) -> Option<&'a mut Entry> {
        inner.jobs.get_mut(id, now)
    }

    pub fn begin(&self, id: &str, owner: &str, lease: Duration, ttl: Duration) -> Begin {
        let now = Instant::now();
        let mut inner = self.lock();
        let (attempts, unknown) = match Self::live(&mut inner, id, now) {
            Some(e) => match e.record.state {
                JobState::Sent => {
                    return Begin::Sent(e.record.sent.clone().unwrap_or_default());
                }
                JobState::Leased => match e.lease_until {
                    Some(until) if until > now => {
                        return Begin::Leased { left: until - now };
                    }
                    _ => (e.record.attempts, true),
                },
                JobState::Released => (e.record.attempts, false),
                // Replayed from the DLQ: it starts over.
                JobState::DeadLettered => (0, false),
            },
            None => (0, false),
        };
        let mut record = match Self::live(&mut inner, id, now) {
            Some(e) => e.record.clone(),
            None => JobRecord::new(id, JobState::Leased),
        };
        record.state = JobState::Leased;
        if unknown {
            record.unknowns = record.unknowns.saturating_add(1);
        }
        let entry = Entry {
            record,
            owner: Some(owner.to_owned()),
            lease_until: Some(now + lease),
        };
        inner.jobs.insert(id, entry, now + ttl);
        if unknown {
            Begin::Unknown { attempts }
        } else {
            Begin::Fresh { attempts }
        }
    }

    pub fn sent(&self, id: &str, sent: &Sent, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut record = match Self::live(&mut inner, id, now) {
            Some(e) => e.record.clone(),
            None => JobRecord::new(id, JobState::Sent),
        };
        record.state = JobState::Sent;
        record.sent = Some(sent.clone());
        inner.jobs.insert(
            id,
            Entry {
                record,
                owner: None,
                lease_until: None,
            },
            now + ttl,
        );
        if let Some(m) = &sent.message_id {
            inner.messages.insert(m, id.to_owned(), now + ttl);
        }
    }

    pub fn release(&self, id: &str, owner: &str, attempts: u32, maybe_sent: bool, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(e) = Self::live(&mut inner, id, now)
            && e.record.state == JobState::Leased
            && e.owner.as_deref() == Some(owner)
        {
            e.record.state = JobState::Released;
            e.record.attempts = e.record.attempts.max(attempts);
            if maybe_sent {
                e.record.unknowns = e.record.unknowns.saturating_add(1);
            }
            e.owner = None;
            e.lease_until = None;
            inner.jobs.set_expiry(id, now + ttl);
        }
    }

    pub fn dead_lettered(&self, id: &str, reason: &str, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut record = match Self::live(&mut inner, id, now) {
            Some(e) if e.record.state == JobState::Sent => return,
            Some(e) => e.record.clone(),
            None => JobRecord::new(id, JobState::DeadLettered),
        };
        record.state = JobState::DeadLettered;
        record.dead_reason = Some(reason.to_owned());
        record.dead_at_ms = Some(now_ms());
        inner.jobs.insert(
            id,
            Entry {
                record,
                owner: None,
                lease_until: None,
            },
            now + ttl,
        );
    }

    pub fn lookup(&self, id: &str) -> Option<JobRecord> {
        let now = Instant::now();
        let mut inner = self.lock();
        Self::live(&mut inner, id, now).map(|e| e.record.clone())
    }

    pub fn job_for_message(&self, message_id: &str) -> Option<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.messages.get_mut(message_id, now).cloned()
    }

    pub fn record_delivery(&self, id: &str, delivery: &Delivery) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(e) = Self::live(&mut inner, id, now) {
            e.record.delivery = Some(delivery.clone());
        }
    }
}
