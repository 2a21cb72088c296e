//! How fast the worker may send: the API request budget, learned from the
//! `x-ratelimit-*` headers, and message pacing per account and per sender.
//! [`RateControl`] is the one entry point: [`RateControl::admit`] before a
//! request, [`RateControl::sent`] as it goes out, [`RateControl::observe`]
//! with its answer.
//!
//! | file | what it owns |
//! |---|---|
//! | `headers.rs` | reading `x-ratelimit-*` |
//! | `tuner/` | answers → a rate and pauses (pure, virtual time) |
//! | `bucket.rs` | the local API token bucket (governor), swapped on a retune |
//! | `pacing.rs` | MPS lanes: queueing, committing, deferrals |
//! | `slots.rs` | where lanes keep their slots: here, or in Redis |
//! | `shared.rs` | the fleet's budgets in Redis, and the local fallback |
//! | `vsim.rs` | test support: the tuner against the simulator's models |
//!
//! ## What the servers do
//! Telnyx documents its headers but not how it counts. Servers count in
//! fixed windows aligned to the clock, fixed windows opened by the first
//! request, sliding logs, or token buckets (GCRA), and may or may not count
//! refused requests (`rate-limit-server-models.md`). A limiter tuned to one
//! model fails the others: waiting for "the reset" loses a clock-aligned
//! window, a sliding window has no reset to wait for, and a bucket's headers
//! (capacity, tokens left, time until full) say nothing of its refill rate.
//!
//! ## What the tuner does ([`Tuner`])
//! Every answer carries `remaining` as the server saw it when it decided
//! the request — at the moment it was sent. The tuner numbers its sends and
//! compares: in a fixed window `remaining` falls by one per request and jumps
//! back at a window start; in a sliding log capacity comes back gradually and
//! the `L − remaining` counted requests reach exactly one window back in the
//! send log; in a bucket `remaining` stays at the top while the rate is below
//! the refill rate. From that it settles on a model, and:
//! 1. **Window** (fixed): rate `L / W`, where `W` is the median time between
//!    window starts it has seen (before two, the largest reset interval).
//!    The request budget is spent evenly, so neither a clock-aligned nor a
//!    first-request window can be overrun at its edge. If what the last
//!    answer left, less the requests sent since, is spent, the gate closes
//!    until the window ends — computed from the window starts, not from a
//!    `retry-after` rounded up to a whole second.
//! 2. **Sliding**: rate `L / W`, `W` the window length the send log implies.
//! 3. **Bucket**: probe upward (×1.3 steps, then ×1.1 once the refill rate
//!    is known, every few answer delays) while the bucket stays full and
//!    the rate is being used; while it drains, the refill rate is the slope
//!    of `remaining + sends` over time. Then spend that rate, and probe
//!    again every couple of seconds, so a raised limit is found.
//! 4. All less `limiter.headroom`, within `[min_rate, max_rate]`.
//!
//! A 429 whose answer still shows budget (`remaining ≥ 1`) is about its job
//! alone: it pauses nothing. Otherwise the gate closes for what the model
//! says (until the window ends; one token; one slot), at most the
//! `retry-after`, and at most `limiter.max_pause_secs`. Without any
//! rate-limit headers, `limiter.slow_start` raises the rate by half each
//! second it is used without a 429, and halves it on one.
//!
//! ## Where the budgets live (`limiter.backend`)
//! `local`: one governor token bucket at the tuned rate for the process
//! ([`ApiBucket`], swapped for a new one on a retune, starting with a single
//! token so a retune never releases a burst; tasks take tokens one at a
//! time, in arrival order), and pacing lanes in memory. `redis`: the
//! replicas share one API bucket and every lane through Redis
//! ([`shared`]), so a fleet of any size sends at the budget together, with
//! a local fallback to each replica's share when Redis is away.
//!
//! ## Pacing
//! Account pacing (SMS and MMS) and per-sender pacing (by class, or a
//! `[pacing.numbers]` override) are lanes with a burst of one
//! ([`pacing`]): never more than MPS + 1 in any second. A job queues for its
//! lanes before it takes an API token and takes their slots after, just
//! before the request goes out.

mod bucket;
mod headers;
mod pacing;
mod shared;
mod slots;
mod tuner;
#[cfg(all(test, feature = "sim"))]
pub(crate) mod vsim;

pub use bucket::ApiBucket;
pub use headers::RateLimitHeaders;
pub use pacing::MAX_DEFER;
pub use tuner::{Model, Observation, Tuner, Tuning};

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::DefaultClock;
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{LimiterBackend, LimiterSettings, PacingSettings};
use crate::job::Job;
use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;
use pacing::Pacing;
use shared::Shared;
use slots::{LocalSlots, Slots};

/// A task waiting for a token re-reads the bucket at least this often.
const MAX_TOKEN_SLEEP: Duration = Duration::from_millis(20);

/// What the limiter says about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now.
    Go,
    /// The sender is paced too far behind: put the job back in the broker for this long.
    Defer(Duration),
    /// Shutdown or halt: stop before sending.
    Cancelled,
}

pub(crate) fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(if d.is_finite() {
        d.clamp(0.0, 1e9)
    } else {
        0.0
    })
}

/// The limiter's view of the API's rate limit, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    /// The last `x-ratelimit-limit`.
    pub limit: Option<f64>,
    /// The window length the limit applies to.
    pub window: Duration,
    /// How the server seems to count.
    pub model: Model,
    /// Requests per second allowed now (the fleet's, when shared).
    pub rate: f64,
    /// Rate changes so far.
    pub swaps: u64,
}

/// A request as it goes out: when, and its number (the fleet's, when shared).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    at: Instant,
    seq: u64,
}

struct TunerState {
    tuner: Tuner,
    seq: u64,
}

/// Everything that decides when a job may be sent; one per process.
pub struct RateControl {
    settings: LimiterSettings,
    bucket: ApiBucket,
    /// Tasks take API tokens one at a time, in order.
    turn: tokio::sync::Mutex<()>,
    tuner: Mutex<TunerState>,
    gate: Mutex<Option<Instant>>,
    pacing: Pacing,
    slots: Slots,
    shared: Option<Arc<Shared>>,
    metrics: Metrics,
    epoch: Instant,
}

impl std::fmt::Debug for RateControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateControl")
            .field("rate", &self.rate())
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateControl {
    /// The limiter `limiter` and `pacing` describe. With `limiter.backend =
    /// "redis"`, `redis` is the process's client (validation has checked
    /// that `redis.url` is set); `state` shows a fallback in `/readyz`.
    pub fn new(
        limiter: &LimiterSettings,
        pacing: &PacingSettings,
        metrics: Metrics,
        redis: Option<&crate::redis::Redis>,
        state: Arc<WorkerState>,
    ) -> Self {
        metrics.limiter_rate.set(limiter.initial_rate);
        let shared = match (limiter.backend, redis) {
            (LimiterBackend::Redis, Some(r)) => {
                Some(Shared::new(r.clone(), metrics.clone(), state))
            }
            _ => {
                metrics.limiter_shared.set(0);
                None
            }
        };
        let slots = match &shared {
            Some(s) => Slots::Shared(s.clone()),
            None => Slots::Local(Arc::new(LocalSlots::default())),
        };
        Self {
            settings: limiter.clone(),
            bucket: ApiBucket::new(limiter.initial_rate, limiter.burst, DefaultClock::default()),
            turn: tokio::sync::Mutex::new(()),
            tuner: Mutex::new(TunerState {
                tuner: Tuner::new(limiter),
                seq: 0,
            }),
            gate: Mutex::new(None),
            pacing: Pacing::new(pacing),
            slots,
            shared,
            metrics,
            epoch: Instant::now(),
        }
    }

    /// Run the shared limiter's heartbeat until `stop` (nothing when local).
    pub fn start(&self, stop: CancellationToken) {
        if let Some(s) = &self.shared {
            tokio::spawn(s.clone().heartbeat(stop));
        }
    }

    fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// The API request rate allowed now.
    pub fn rate(&self) -> f64 {
        self.lock().tuner.rate()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TunerState> {
        self.tuner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the tuner has learned about the API's limit.
    pub fn estimates(&self) -> Estimates {
        let now = self.t(Instant::now());
        let s = self.lock();
        Estimates {
            limit: s.tuner.limit(),
            window: secs(s.tuner.window_len(now)),
            model: s.tuner.model(),
            rate: s.tuner.rate(),
            swaps: self.bucket.swaps(),
        }
    }

    /// When the gate opens, if it is closed.
    pub fn paused_until(&self) -> Option<Instant> {
        let g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        g.filter(|t| *t > Instant::now())
    }

    /// Close the gate for `d` (extends, never shortens, a pause), at most
    /// `limiter.max_pause_secs`; the whole fleet's when shared.
    fn pause_for(&self, d: Duration) -> Duration {
        let d = d.min(Duration::from_secs(self.settings.max_pause_secs));
        let until = Instant::now() + d;
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
            self.metrics.limiter_paused.set(1);
            let wall = SystemTime::now() + d;
            self.metrics.limiter_paused_until.set(
                wall.duration_since(UNIX_EPOCH)
                    .map_or(0.0, |x| x.as_secs_f64()),
            );
        }
        if let Some(s) = &self.shared {
            s.pause(d);
        }
        d
    }

    /// A request is going out now.
    pub fn sent(&self, fleet_seq: Option<u64>) -> Sent {
        let at = Instant::now();
        let t = self.t(at);
        let mut s = self.lock();
        s.seq = match fleet_seq {
            Some(n) => n.max(s.seq),
            None => s.seq + 1,
        };
        let seq = s.seq;
        s.tuner.record_send(t, seq);
        Sent { at, seq }
    }

    /// The answer to the request `sent`: its headers (None for a transport
    /// error), whether it was a 429, and its `retry-after`. Retunes, and
    /// returns the pause it set, if any.
    pub fn observe(
        &self,
        sent: Sent,
        headers: Option<&HeaderMap>,
        refused: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let parsed = headers.and_then(|h| RateLimitHeaders::parse(h, SystemTime::now()));
        if let Some(h) = &parsed {
            self.metrics.limiter_remaining.set(h.remaining);
        }
        headers?; // no answer: nothing to learn
        // A 429 that leaves budget is about its job alone.
        let budget_429 = refused && parsed.is_none_or(|h| h.remaining < 1.0);
        let now = Instant::now();
        let mut s = self.lock();
        let seq_now = s.seq;
        let tuning = s.tuner.observe(
            self.t(now),
            seq_now,
            &Observation {
                at: self.t(sent.at),
                seq: sent.seq,
                headers: parsed,
                refused: budget_429,
                retry_after: retry_after.map(|d| d.as_secs_f64()),
            },
        );
        self.set_rate(tuning.rate);
        drop(s);
        tuning
            .pause
            .filter(|p| *p > 0.0)
            .map(|p| self.pause_for(secs(p)))
    }

    /// Swap in a bucket at `rate` when it is more than 2 % above the current
    /// one or more than 1 % below it (erring low); tell the fleet.
    fn set_rate(&self, rate: f64) {
        let rate = rate.clamp(self.settings.min_rate, self.settings.max_rate);
        if let Some(s) = &self.shared {
            s.set_rate(rate);
        }
        let current = self.bucket.rate();
        let local = match &self.shared {
            Some(s) => rate / s.replicas() as f64,
            None => rate,
        };
        if local <= current * 1.02 && local >= current * 0.99 {
            return;
        }
        self.bucket
            .set_rate(local.max(self.settings.min_rate / 10.0));
        self.metrics.limiter_rate.set(rate);
    }

    /// Wait while the gate is closed. `None` when cancelled, else whether
    /// there was a pause.
    async fn wait_gate(&self, cancel: &CancellationToken) -> Option<bool> {
        let mut waited = false;
        loop {
            let Some(until) = self.paused_until() else {
                if self.metrics.limiter_paused.get() != 0 {
                    self.metrics.limiter_paused.set(0);
                    self.metrics.limiter_paused_until.set(0.0);
                }
                return Some(waited);
            };
            waited = true;
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Wait for pacing, the gate and an API token. Cancellable at every
    /// step. On `Go`, the fleet's number of the token, when shared.
    pub async fn admit(&self, job: &Job, cancel: &CancellationToken) -> (Admission, Option<u64>) {
        let started = Instant::now();
        let ticket = match self
            .pacing
            .queue(job, &self.slots, cancel, &self.metrics)
            .await
        {
            Ok(t) => t,
            Err(a) => return (a, None),
        };
        let paced = Instant::now();
        self.metrics
            .limiter_wait
            .with_label_values(&["pacing"])
            .observe((paced - started).as_secs_f64());
        let fleet_seq = match self.api_token(cancel).await {
            Some(seq) => seq,
            None => return (Admission::Cancelled, None),
        };
        if let Err(a) = self.pacing.commit(ticket, &self.slots, cancel).await {
            return (a, None);
        }
        self.metrics
            .limiter_wait
            .with_label_values(&["api"])
            .observe(paced.elapsed().as_secs_f64());
        (Admission::Go, fleet_seq)
    }

    /// An API token: the fleet's (its number) or, local or falling back,
    /// this process's bucket's (`Some(None)`). `None`: cancelled.
    async fn api_token(&self, cancel: &CancellationToken) -> Option<Option<u64>> {
        if let Some(s) = &self.shared {
            match s.api_token(self.rate(), cancel).await {
                Ok(Some(seq)) => return Some(Some(seq)),
                Ok(None) => {} // Redis is away: the local share
                Err(()) => return None,
            }
        }
        let _turn = tokio::select! {
            _ = cancel.cancelled() => return None,
            t = self.turn.lock() => t,
        };
        loop {
            match self.wait_gate(cancel).await {
                None => return None,
                // The bucket filled up during the pause: swap it for one with
                // a single token, so the next window does not open with a
                // burst.
                Some(true) => self.bucket.set_rate(self.bucket.rate()),
                Some(false) => {}
            }
            match self.bucket.try_acquire() {
                Ok(()) => return Some(None),
                Err(wait) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(wait.min(MAX_TOKEN_SLEEP)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
