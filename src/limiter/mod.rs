//! How fast the worker may send: one API token bucket tuned from the
//! `x-ratelimit-*` headers, a process-wide 429 gate, and message pacing per
//! account and per sender. [`RateControl`] is the one entry point.
//!
//! | file | what it owns |
//! |---|---|
//! | `headers.rs` | reading `x-ratelimit-*` |
//! | `bucket.rs` | the governor bucket whose rate changes at runtime |
//! | `tuner.rs` | headers → a rate for this process (pure, virtual time) |
//! | `pacing.rs` | account and per-sender MPS, deferrals through the broker |
//! | `model.rs` | test support: a rate-limited server in virtual time |
//!
//! ## The API bucket
//! One governor direct limiter ([`ApiBucket`]) shared by every consumer task.
//! Governor quotas are immutable, so the limiter lives in an `ArcSwap`: a
//! retune builds a new limiter at the new rate with the same small burst
//! (`limiter.burst`), takes all but one token of that burst at once so the
//! swap cannot release a burst of extra requests, and swaps it in. Tasks take tokens one at a time,
//! in arrival order, behind an async mutex (no thundering herd of sleepers),
//! and re-read the current limiter after every sleep (at most 20 ms), so a new
//! rate takes effect at once. Swaps happen only when the target rises by more
//! than 2 % or falls by more than 1 %.
//!
//! ## Tuning ([`Tuner`]), on every response that carries the headers
//! 1. Read `limit` L, `remaining` and `reset`. `x-ratelimit-reset` is seconds
//!    until the reset when it is below 10^9, a unix timestamp in seconds
//!    above that and in milliseconds above 10^12. An integer value is taken as
//!    rounded up, i.e. the reset lies in `(reset - 1 s, reset]`.
//! 2. Follow the server's window: a jump of `remaining` (by more than 2 % of L)
//!    or a silence longer than a window means a new window started; a late
//!    answer from the old window (low `remaining` just after a jump) is
//!    ignored. The time between two window starts seen within a few requests
//!    of their start gives the window length W (median of the last 5, at most
//!    the largest reset interval seen); before that, W is that largest reset
//!    interval. With the start and W the reset time is known to a few
//!    milliseconds even when the header is rounded to whole seconds.
//! 3. Estimate this process's share s of the account's requests. In a window,
//!    `own` counts this process's answers (429s excluded) and `used` =
//!    L − lowest `remaining` seen (everyone's requests). At the end of a
//!    window s = own / used. Within a window the running figure
//!    (own + s·k) / (used + k), k = max(20, 5 % of L), replaces it once a
//!    quarter of the window is used, or earlier when it differs by more than
//!    5 % (a replica came or went). The window a process starts in (seen
//!    only in part) does not set its share. One process alone measures
//!    s = 1; N busy replicas each measure their part and the parts sum to 1,
//!    because they all watch the same `remaining` fall. So together they
//!    never aim at more than the account's limit, where `remaining /
//!    reset_in` per process would overshoot N times. Shares follow recent
//!    use; they are not forced to be equal (with no channel between replicas
//!    nothing can know N), but a replica starting with share 1 takes its part
//!    within its first whole window, and one that stops leaves its part to
//!    the others within a window.
//! 4. Steady rate = s · L / W · (1 − `limiter.headroom`): never more than the
//!    limit per window, less a reserve.
//! 5. Spend what is left evenly over the time left: with `in_flight` requests
//!    of this process still unanswered (the `send_worker_requests_in_flight`
//!    gauge the pipeline keeps; they will count against this window),
//!    the budget is s · (remaining − headroom · L) − in_flight, spread over
//!    the time in which a request sent now still lands in this window
//!    (time left − in_flight / rate). Below the steady rate this brakes (a
//!    replica spent more than its part, or the limit fell); above it, it
//!    catches up a stall, by at most 1.2 times the steady rate.
//!    The time left errs long (a window start is noticed a moment late), so a
//!    catch-up is never too eager; the brake allows 1 % for that error. In
//!    the last tenth of a window the steady rate applies. The result is
//!    clamped to `[limiter.min_rate, limiter.max_rate]`.
//! 6. `remaining` at 0: the gate closes until the estimated reset; the rate
//!    is kept for the next window.
//!
//! ## The 429 gate
//! A 429 closes the gate for `retry-after` (or 1 s without one): every task
//! waits at the gate before taking a token, so the whole process pauses.
//! [`RateControl::pause_for`] only ever extends a pause. The bucket is
//! swapped for one holding a single token when the gate reopens, so a process
//! does not open the next window with a burst.
//!
//! ## Pacing
//! Account pacing (SMS and MMS), then per-sender pacing: a keyed governor
//! limiter per sender class (toll-free, short code, alphanumeric, long code)
//! keyed by the `from` number, and a direct limiter per number listed in
//! `[pacing.numbers]` (an override of 0 makes that number unpaced). Each job
//! waits in its own task, and jobs of one sender queue behind each other in
//! order, so a throttled sender never blocks another sender's jobs. A sender
//! may hold at most `max_wait_ms` worth of its rate in memory; a job beyond
//! that is deferred through the broker (a retry tier, without charging an
//! attempt). Deferred jobs of a sender are booked one pacing interval apart
//! after the in-memory queue (at most [`MAX_DEFER`] ahead), so they come back
//! at the pace they can be sent instead of all at once.

mod bucket;
mod headers;
#[cfg(test)]
mod model;
mod pacing;
mod tuner;

pub use bucket::ApiBucket;
pub use headers::RateLimitHeaders;
pub use pacing::MAX_DEFER;
pub use tuner::{Tuner, Tuning};

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::DefaultClock;
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{LimiterSettings, PacingSettings};
use crate::job::Job;
use crate::ops::metrics::Metrics;
use pacing::Pacing;

/// A task waiting for a token re-reads the bucket at least this often.
const MAX_TOKEN_SLEEP: Duration = Duration::from_millis(20);
/// The bucket is swapped only when the target rises by more than this
/// fraction, or falls by more than [`SWAP_THRESHOLD_DOWN`]: erring low.
const SWAP_THRESHOLD_UP: f64 = 0.02;
const SWAP_THRESHOLD_DOWN: f64 = 0.01;

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
    Duration::from_secs_f64(if d.is_finite() { d.max(0.0) } else { 0.0 })
}

/// The limiter's view of the API's rate limit, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    /// The last `x-ratelimit-limit`.
    pub limit: Option<f64>,
    /// The window length the limit applies to.
    pub window: Duration,
    /// This process's share of the account's requests.
    pub share: f64,
    /// Requests per second this process allows itself now.
    pub rate: f64,
    /// Rate changes (bucket swaps) so far.
    pub swaps: u64,
}

/// Everything that decides when a job may be sent; one per process.
pub struct RateControl {
    settings: LimiterSettings,
    bucket: ApiBucket,
    /// Tasks take API tokens one at a time, in order.
    turn: tokio::sync::Mutex<()>,
    tuner: Mutex<Tuner>,
    gate: Mutex<Option<Instant>>,
    pacing: Pacing,
    metrics: Metrics,
}

impl std::fmt::Debug for RateControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateControl")
            .field("rate", &self.rate())
            .finish_non_exhaustive()
    }
}

impl RateControl {
    pub fn new(limiter: &LimiterSettings, pacing: &PacingSettings, metrics: Metrics) -> Self {
        metrics.limiter_rate.set(limiter.initial_rate);
        Self {
            settings: limiter.clone(),
            bucket: ApiBucket::new(limiter.initial_rate, limiter.burst, DefaultClock::default()),
            turn: tokio::sync::Mutex::new(()),
            tuner: Mutex::new(Tuner::new(limiter)),
            gate: Mutex::new(None),
            pacing: Pacing::new(pacing),
            metrics,
        }
    }

    /// The API request rate allowed now.
    pub fn rate(&self) -> f64 {
        self.bucket.rate()
    }

    /// This process's estimated share of the account's API requests.
    pub fn share(&self) -> f64 {
        self.tuner.lock().unwrap_or_else(|e| e.into_inner()).share()
    }

    /// What the tuner has learned about the API's limit.
    pub fn estimates(&self) -> Estimates {
        let t = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        Estimates {
            limit: t.limit(),
            window: secs(t.window_len()),
            share: t.share(),
            rate: self.rate(),
            swaps: self.bucket.swaps(),
        }
    }

    /// When the 429 gate opens, if it is closed.
    pub fn paused_until(&self) -> Option<Instant> {
        let g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        g.filter(|t| *t > Instant::now())
    }

    /// Close the gate for `d` (extends, never shortens, a pause).
    pub fn pause_for(&self, d: Duration) {
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
    }

    /// A 429 from the API. The whole process pauses only when the answer
    /// says the account's budget is spent (`x-ratelimit-remaining` 0) or
    /// says nothing about it; a 429 that leaves budget is about this job
    /// alone (it bounces through the broker) and pauses nothing. The pause
    /// is `retry-after` (1 s without one), at most `limiter.max_pause_secs`;
    /// then the next request probes. Returns the pause, if any.
    pub fn on_rate_limited(
        &self,
        retry_after: Option<Duration>,
        headers: Option<&HeaderMap>,
    ) -> Option<Duration> {
        let budget_left = headers
            .and_then(|h| RateLimitHeaders::parse(h, SystemTime::now()))
            .is_some_and(|h| h.remaining >= 1.0);
        if budget_left {
            return None;
        }
        let cap = Duration::from_secs(self.settings.max_pause_secs);
        let pause = retry_after.unwrap_or(Duration::from_secs(1)).min(cap);
        self.pause_for(pause);
        Some(pause)
    }

    /// Retune from a response's headers.
    pub fn observe(&self, headers: &HeaderMap) {
        let Some(h) = RateLimitHeaders::parse(headers, SystemTime::now()) else {
            return;
        };
        self.metrics.limiter_remaining.set(h.remaining);
        let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        // Requests of this process still on their way (the pipeline keeps
        // the gauge); they will use up part of what `remaining` shows.
        let in_flight = self.metrics.in_flight.get().max(0) as f64;
        let t = tuner.observe(Instant::now().into_std(), &h, in_flight);
        // Under the tuner's lock, so swaps happen in the order decided.
        self.set_rate(t.rate);
        drop(tuner);
        if let Some(p) = t.pause {
            self.pause_for(p);
        }
    }

    /// Swap in a bucket at `rate` when it is more than 2 % above the
    /// current one or more than 1 % below it.
    pub fn set_rate(&self, rate: f64) {
        let rate = rate.clamp(self.settings.min_rate, self.settings.max_rate);
        let current = self.rate();
        if rate <= current * (1.0 + SWAP_THRESHOLD_UP)
            && rate >= current * (1.0 - SWAP_THRESHOLD_DOWN)
        {
            return;
        }
        self.bucket.set_rate(rate);
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

    /// Wait for pacing, the gate and a token. Cancellable at every step.
    pub async fn admit(&self, job: &Job, cancel: &CancellationToken) -> Admission {
        match self.pacing.admit(job, cancel, &self.metrics).await {
            Admission::Go => {}
            other => return other,
        }
        let _turn = tokio::select! {
            _ = cancel.cancelled() => return Admission::Cancelled,
            t = self.turn.lock() => t,
        };
        loop {
            match self.wait_gate(cancel).await {
                None => return Admission::Cancelled,
                // The bucket filled up during the pause: swap it for one with
                // a single token, so the next window does not open with a
                // burst.
                Some(true) => self.bucket.set_rate(self.bucket.rate()),
                Some(false) => {}
            }
            match self.bucket.try_acquire() {
                Ok(()) => break,
                Err(wait) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        _ = tokio::time::sleep(wait.min(MAX_TOKEN_SLEEP)) => {}
                    }
                }
            }
        }
        Admission::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{headers, settings};

    #[tokio::test]
    async fn a_429_pauses_only_when_the_budget_is_spent_and_never_past_the_cap() {
        let rc = RateControl::new(&settings(), &PacingSettings::default(), Metrics::new());
        // The answer still shows budget: this job's 429 alone, no pause.
        let left = headers(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1"),
        ]);
        assert_eq!(
            rc.on_rate_limited(Some(Duration::from_secs(86_400)), Some(&left)),
            None
        );
        assert!(rc.paused_until().is_none());
        // Spent, with a day-long retry-after: paused for the cap only.
        let spent = headers(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1"),
        ]);
        let pause = rc.on_rate_limited(Some(Duration::from_secs(86_400)), Some(&spent));
        assert_eq!(pause, Some(Duration::from_secs(60)));
        let until = rc.paused_until().expect("paused");
        assert!(until <= Instant::now() + Duration::from_secs(60));
        // No headers and no retry-after: a second.
        let rc = RateControl::new(&settings(), &PacingSettings::default(), Metrics::new());
        assert_eq!(rc.on_rate_limited(None, None), Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn observe_swaps_the_bucket_and_closes_the_gate_when_exhausted() {
        let m = Metrics::new();
        let rc = RateControl::new(&settings(), &PacingSettings::default(), m.clone());
        assert_eq!(rc.rate(), 50.0);
        rc.observe(&headers(&[
            ("x-ratelimit-limit", "2000"),
            ("x-ratelimit-remaining", "1999"),
            ("x-ratelimit-reset", "10"),
        ]));
        // 2000 per 10 s window, less the headroom.
        assert!((rc.rate() - 197.0).abs() < 0.5, "{}", rc.rate());
        assert!(rc.paused_until().is_none());
        rc.observe(&headers(&[
            ("x-ratelimit-limit", "2000"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "3"),
        ]));
        assert!(rc.paused_until().is_some());
        let text = m.render();
        assert!(text.contains("send_worker_limiter_paused 1"), "{text}");
        assert!(text.contains("send_worker_limiter_remaining 0"));
        assert!(!text.contains("send_worker_limiter_rate 50\n"));
    }
}
