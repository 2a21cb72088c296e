//! The job store: what the worker remembers about a job beyond one delivery.
//! It suppresses duplicate sends (a redelivered job that was sent is not
//! sent again), it correlates Telnyx message ids with job ids for delivery
//! receipts, and it answers `send-worker status JOB_ID`.
//!
//! The one place a send is decided ([`crate::pipeline::Pipeline`]) asks it
//! first ([`Store::begin`]): the job is either new (and this worker now holds
//! a short lease on it), already sent, leased by another live worker, or of
//! unknown outcome (a lease that ran out with nothing recorded: a worker
//! died while its request was in flight, so the message may have been sent).
//! After the answer it records `sent` (with the message id and time) or
//! releases the lease.
//!
//! Backends (`dedupe.backend`): `memory` (the default; protects one process:
//! redeliveries after a lost channel, producers that publish a job twice),
//! `redis` (shared by every replica and kept across restarts, on `redis.url`),
//! and `off`. The window that remains — a crash after the API accepted a
//! message and before `sent` is recorded — is covered by the lease: a
//! redelivery inside it waits, and one after it is an unknown outcome, sent
//! again or dead-lettered as `dedupe.on_unknown` says (README, "Duplicate
//! suppression").

pub(crate) mod bounded;
mod memory;
mod redis;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{DedupeBackend, Settings};
use crate::ops::metrics::Metrics;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the job store (Redis) is unreachable or failed: {0}")]
    Unavailable(String),
    #[error("the job store answered something unexpected: {0}")]
    Protocol(String),
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        // redis-rs errors name the command and the server's message, never
        // the URL's password.
        StoreError::Unavailable(e.to_string())
    }
}

/// What the store says about a job about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// Not sent before and not leased: the lease is this worker's now.
    /// `attempts`: API attempts an earlier worker recorded for it.
    Fresh { attempts: u32 },
    /// Sent before: must not be sent again.
    Sent(Sent),
    /// Another worker holds a live lease on it (it may be sending it right
    /// now): put it back, uncharged, for about `left`.
    Leased { left: Duration },
    /// A lease ran out with nothing recorded: a worker died (or lost the
    /// store) while its request was in flight, so the message may have been
    /// sent. The lease is this worker's now.
    Unknown { attempts: u32 },
}

/// What is recorded when the API accepts a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sent {
    pub message_id: Option<String>,
    /// Unix milliseconds.
    pub sent_at_ms: u64,
    pub parts: Option<u32>,
    pub cost: Option<String>,
    pub currency: Option<String>,
}

/// Where a job stands, as far as the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A worker holds a lease and may be sending it.
    Leased,
    /// Accepted by the API.
    Sent,
    /// Tried and not sent (a transient failure: a retry is waiting).
    Released,
    /// In the dead-letter queue.
    DeadLettered,
}

/// A delivery receipt, from the `message.sent` / `message.finalized` webhooks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Delivery {
    /// `sent`, `delivered`, `sending_failed`, `delivery_failed`,
    /// `delivery_unconfirmed`, ...
    pub status: String,
    /// The carrier's error code, if any.
    pub code: Option<String>,
    pub detail: Option<String>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// Everything the store knows about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub attempts: u32,
    /// How many times its outcome was found unknown (a lease that ran out).
    pub unknowns: u32,
    pub sent: Option<Sent>,
    pub dead_reason: Option<String>,
    pub dead_at_ms: Option<u64>,
    pub delivery: Option<Delivery>,
}

impl JobRecord {
    /// A record of job `id` in `state` that knows nothing else yet.
    pub fn new(id: &str, state: JobState) -> Self {
        Self {
            job_id: id.to_owned(),
            state,
            attempts: 0,
            unknowns: 0,
            sent: None,
            dead_reason: None,
            dead_at_ms: None,
            delivery: None,
        }
    }
}

/// The store, with the backend `dedupe.backend` chose. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    ttl: Duration,
    metrics: Metrics,
}

#[derive(Clone)]
enum Backend {
    Off,
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Store operations, for the metrics' `op` label.
#[derive(Debug, Clone, Copy)]
enum Op {
    Begin,
    Record,
    Release,
    Lookup,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Begin => "begin",
            Op::Record => "record",
            Op::Release => "release",
            Op::Lookup => "lookup",
        }
    }
}

impl Store {
    /// The store `settings` describe. `redis` is the process's one client
    /// (required for the `redis` backend; validation has checked that
    /// `redis.url` is set).
    pub fn from_settings(
        settings: &Settings,
        redis: Option<&crate::redis::Redis>,
        metrics: Metrics,
    ) -> Result<Store, StoreError> {
        let d = &settings.dedupe;
        let backend = match d.backend {
            DedupeBackend::Off => Backend::Off,
            DedupeBackend::Memory => Backend::Memory(MemoryStore::new(d.memory_max_entries)),
            DedupeBackend::Redis => match redis {
                Some(r) => Backend::Redis(RedisStore::new(r.clone())),
                None => {
                    return Err(StoreError::Unavailable(
                        "dedupe.backend = \"redis\" needs redis.url".to_owned(),
                    ));
                }
            },
        };
        metrics.dedupe_store_available.set(1);
        Ok(Store {
            backend,
            ttl: Duration::from_secs(d.ttl_secs),
            metrics,
        })
    }

    /// A memory store (for tests and tools).
    pub fn memory(max_entries: usize, ttl: Duration, metrics: Metrics) -> Store {
        Store {
            backend: Backend::Memory(MemoryStore::new(max_entries)),
            ttl,
            metrics,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Off => "off",
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Whether duplicates are suppressed at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    /// Time an operation and count its failure.
    async fn timed<T>(
        &self,
        op: Op,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.metrics
            .dedupe_store_seconds
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Ok(_) => self.metrics.dedupe_store_available.set(1),
            Err(_) => {
                self.metrics
                    .dedupe_store_errors
                    .with_label_values(&[op.label()])
                    .inc();
                self.metrics.dedupe_store_available.set(0);
            }
        }
        r
    }

    /// Before the API call: take a lease of `lease` on job `id` for `owner`
    /// (unique per attempt), or say why not.
    pub async fn begin(&self, id: &str, owner: &str, lease: Duration) -> Result<Begin, StoreError> {
        let r = match &self.backend {
            Backend::Off => return Ok(Begin::Fresh { attempts: 0 }),
            Backend::Memory(m) => Ok(m.begin(id, owner, lease, self.ttl)),
            Backend::Redis(r) => {
                self.timed(Op::Begin, r.begin(id, owner, lease, self.ttl))
                    .await
            }
        }?;
        match &r {
            Begin::Sent(_) => {}
            Begin::Leased { .. } => self.metrics.dedupe_lease_contended.inc(),
            Begin::Fresh { .. } | Begin::Unknown { .. } => {}
        }
        Ok(r)
    }

    /// The API accepted job `id`: record it (and the message id → job id
    /// correlation), for `dedupe.ttl_secs`.
    pub async fn sent(&self, id: &str, sent: &Sent) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Off => Ok(()),
            Backend::Memory(m) => {
                m.sent(id, sent, self.ttl);
                Ok(())
            }
            Backend::Redis(r) => self.timed(Op::Record, r.sent(id, sent, self.ttl)).await,
        }
    }

    /// The attempt did not send job `id` (a failure the API answered, or no
    /// attempt at all): drop `owner`'s lease, keeping the attempts made.
    /// `maybe_sent`: the request timed out, so it may have been accepted
    /// (counted in the record's `unknowns`, as an expired lease is).
    pub async fn release(
        &self,
        id: &str,
        owner: &str,
        attempts: u32,
        maybe_sent: bool,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Off => Ok(()),
            Backend::Memory(m) => {
                m.release(id, owner, attempts, maybe_sent, self.ttl);
                Ok(())
            }
            Backend::Redis(r) => {
                self.timed(
                    Op::Release,
                    r.release(id, owner, attempts, maybe_sent, self.ttl),
                )
                .await
            }
        }
    }

    /// Job `id` went to the DLQ for `reason` (for `status`; not a send).
    pub async fn dead_lettered(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Off => Ok(()),
            Backend::Memory(m) => {
                m.dead_lettered(id, reason, self.ttl);
                Ok(())
            }
            Backend::Redis(r) => {
                self.timed(Op::Record, r.dead_lettered(id, reason, self.ttl))
                    .await
            }
        }
    }

    /// Everything known about job `id`.
    pub async fn lookup(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Off => Ok(None),
            Backend::Memory(m) => Ok(m.lookup(id)),
            Backend::Redis(r) => self.timed(Op::Lookup, r.lookup(id)).await,
        }
    }

    /// The job a Telnyx message id was sent for.
    pub async fn job_for_message(&self, message_id: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Off => Ok(None),
            Backend::Memory(m) => Ok(m.job_for_message(message_id)),
            Backend::Redis(r) => self.timed(Op::Lookup, r.job_for_message(message_id)).await,
        }
    }

    /// A delivery receipt for job `id` (kept only if the job is known).
    pub async fn record_delivery(&self, id: &str, delivery: &Delivery) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Off => Ok(()),
            Backend::Memory(m) => {
                m.record_delivery(id, delivery);
                Ok(())
            }
            Backend::Redis(r) => {
                self.timed(Op::Record, r.record_delivery(id, delivery))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests;
