//! The in-process job store: the same answers as the Redis one, for one
//! process. Bounded: at most `dedupe.memory_max_entries` jobs (the oldest are
//! forgotten first), each for at most `dedupe.ttl_secs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Begin, Delivery, JobRecord, JobState, Sent, now_ms};

#[derive(Debug, Clone)]
struct Entry {
    record: JobRecord,
    owner: Option<String>,
    lease_until: Option<Instant>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    /// Insertion order, for eviction (may name jobs already gone).
    order: VecDeque<String>,
    messages: HashMap<String, (String, Instant)>,
    message_order: VecDeque<String>,
}

#[derive(Debug, Clone)]
pub struct MemoryStore {
    max: usize,
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> Self {
        Self {
            max: max_entries.max(1),
            inner: Arc::new(Mutex::new(Inner::default())),
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
        if inner.jobs.get(id).is_some_and(|e| e.expires <= now) {
            inner.jobs.remove(id);
        }
        inner.jobs.get_mut(id)
    }

    fn insert(&self, inner: &mut Inner, id: &str, entry: Entry) {
        if inner.jobs.insert(id.to_owned(), entry).is_none() {
            inner.order.push_back(id.to_owned());
        }
        while inner.jobs.len() > self.max {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.jobs.remove(&old);
                }
                None => break,
            }
        }
        // The order queue may hold names of jobs removed since; keep it from
        // growing without bound.
        if inner.order.len() > 2 * self.max {
            let jobs = &inner.jobs;
            inner.order.retain(|k| jobs.contains_key(k));
        }
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
            None => JobRecord {
                job_id: id.to_owned(),
                state: JobState::Leased,
                attempts: 0,
                unknowns: 0,
                sent: None,
                dead_reason: None,
                dead_at_ms: None,
                delivery: None,
            },
        };
        record.state = JobState::Leased;
        if unknown {
            record.unknowns = record.unknowns.saturating_add(1);
        }
        let entry = Entry {
            record,
            owner: Some(owner.to_owned()),
            lease_until: Some(now + lease),
            expires: now + ttl,
        };
        self.insert(&mut inner, id, entry);
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
            None => JobRecord {
                job_id: id.to_owned(),
                state: JobState::Sent,
                attempts: 0,
                unknowns: 0,
                sent: None,
                dead_reason: None,
                dead_at_ms: None,
                delivery: None,
            },
        };
        record.state = JobState::Sent;
        record.sent = Some(sent.clone());
        self.insert(
            &mut inner,
            id,
            Entry {
                record,
                owner: None,
                lease_until: None,
                expires: now + ttl,
            },
        );
        if let Some(m) = &sent.message_id {
            if inner
                .messages
                .insert(m.clone(), (id.to_owned(), now + ttl))
                .is_none()
            {
                inner.message_order.push_back(m.clone());
            }
            while inner.messages.len() > self.max {
                match inner.message_order.pop_front() {
                    Some(old) => {
                        inner.messages.remove(&old);
                    }
                    None => break,
                }
            }
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
            e.expires = now + ttl;
        }
    }

    pub fn dead_lettered(&self, id: &str, reason: &str, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut record = match Self::live(&mut inner, id, now) {
            Some(e) if e.record.state == JobState::Sent => return,
            Some(e) => e.record.clone(),
            None => JobRecord {
                job_id: id.to_owned(),
                state: JobState::DeadLettered,
                attempts: 0,
                unknowns: 0,
                sent: None,
                dead_reason: None,
                dead_at_ms: None,
                delivery: None,
            },
        };
        record.state = JobState::DeadLettered;
        record.dead_reason = Some(reason.to_owned());
        record.dead_at_ms = Some(now_ms());
        self.insert(
            &mut inner,
            id,
            Entry {
                record,
                owner: None,
                lease_until: None,
                expires: now + ttl,
            },
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
        match inner.messages.get(message_id) {
            Some((_, exp)) if *exp <= now => {
                inner.messages.remove(message_id);
                None
            }
            Some((job, _)) => Some(job.clone()),
            None => None,
        }
    }

    pub fn record_delivery(&self, id: &str, delivery: &Delivery) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(e) = Self::live(&mut inner, id, now) {
            e.record.delivery = Some(delivery.clone());
        }
    }
}
