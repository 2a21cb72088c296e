//! How fast the worker may send: one API token bucket tuned from the
//! `x-ratelimit-*` headers, a process-wide 429 gate, and message pacing per
//! account and per sender.
//!
//! ## The API bucket
//! A governor direct limiter shared by every consumer task. Governor quotas
//! are immutable, so the limiter lives in an [`ArcSwap`] and a retune swaps in
//! a new one with the same small burst. After every response that carries
//! `x-ratelimit-limit`, `-remaining` and `-reset`, the target rate is
//! `remaining / seconds_until_reset` (spend what is left evenly over the time
//! left), clamped to `[limiter.min_rate, limiter.max_rate]`. The bucket is only
//! swapped when the target moves by more than 10 %, so steady traffic does not
//! reset it on every answer. `x-ratelimit-reset` is read as seconds until the
//! reset when it is small and as a unix timestamp (seconds or milliseconds)
//! when it is large. With `remaining` at 0, the gate closes until the reset.
//!
//! ## The 429 gate
//! A 429 closes the gate for `retry-after` (or 1 s without one): every task
//! waits at the gate before taking a token, so the whole process pauses.
//!
//! ## Pacing
//! Account pacing (SMS and MMS), then per-sender pacing: a keyed governor
//! limiter per sender class (toll-free, short code, alphanumeric, long code)
//! keyed by the `from` number, and a direct limiter per number listed in
//! `[pacing.numbers]`. Each job waits in its own task, so a throttled sender
//! never blocks another sender's jobs. A sender may hold at most
//! `max_wait_ms` worth of its rate in memory; jobs beyond that are deferred
//! through the broker (a retry tier, without charging an attempt).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{LimiterSettings, PacingSettings};
use crate::job::{Job, MessageKind, SenderClass};
use crate::metrics::Metrics;

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

/// The rate-limit headers of one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitHeaders {
    pub limit: Option<f64>,
    pub remaining: f64,
    /// Seconds until the window resets.
    pub reset_in: f64,
}

impl RateLimitHeaders {
    /// Read the headers; `now` converts a unix-timestamp reset.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        let num = |name: &str| -> Option<f64> {
            headers
                .get(name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        let remaining = num("x-ratelimit-remaining")?;
        let raw_reset = num("x-ratelimit-reset")?;
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let reset_in = if raw_reset > 1e12 {
            (raw_reset / 1000.0 - now_secs).max(0.0)
        } else if raw_reset > 1e9 {
            (raw_reset - now_secs).max(0.0)
        } else {
            raw_reset
        };
        Some(Self {
            limit: num("x-ratelimit-limit"),
            remaining,
            reset_in,
        })
    }
}

fn quota(rate: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

fn direct(rate: f64, burst: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota(rate, burst))
}

/// Burst for a pacing limiter: a second's worth, at least 1.
fn pacing_burst(rate: f64) -> u32 {
    (rate.floor() as u32).clamp(1, 1000)
}

struct Pacing {
    max_wait: Duration,
    account_sms: Option<DefaultDirectRateLimiter>,
    account_mms: Option<DefaultDirectRateLimiter>,
    classes: HashMap<SenderClass, (f64, DefaultKeyedRateLimiter<String>)>,
    numbers: HashMap<String, (f64, DefaultDirectRateLimiter)>,
    /// Jobs per sender waiting in memory right now.
    held: Mutex<HashMap<String, usize>>,
}

pub struct RateControl {
    settings: LimiterSettings,
    bucket: ArcSwap<DefaultDirectRateLimiter>,
    rate_bits: AtomicU64,
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

/// Decrements a sender's held count when the job stops waiting.
struct Held<'a> {
    pacing: &'a Pacing,
    key: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.pacing.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl RateControl {
    pub fn new(limiter: &LimiterSettings, pacing: &PacingSettings, metrics: Metrics) -> Self {
        let opt = |rate: f64| (rate > 0.0).then(|| direct(rate, pacing_burst(rate)));
        let mut classes = HashMap::new();
        for (class, rate) in [
            (SenderClass::LongCode, pacing.long_code_per_second),
            (SenderClass::TollFree, pacing.toll_free_per_second),
            (SenderClass::ShortCode, pacing.short_code_per_second),
            (SenderClass::Alphanumeric, pacing.alphanumeric_per_second),
        ] {
            if rate > 0.0 {
                classes.insert(
                    class,
                    (rate, RateLimiter::keyed(quota(rate, pacing_burst(rate)))),
                );
            }
        }
        let numbers = pacing
            .numbers
            .iter()
            .map(|(n, r)| (n.clone(), (*r, direct(r.max(1e-6), pacing_burst(*r)))))
            .collect();
        metrics.limiter_rate.set(limiter.initial_rate);
        Self {
            settings: limiter.clone(),
            bucket: ArcSwap::from_pointee(direct(limiter.initial_rate, limiter.burst)),
            rate_bits: AtomicU64::new(limiter.initial_rate.to_bits()),
            gate: Mutex::new(None),
            pacing: Pacing {
                max_wait: Duration::from_millis(pacing.max_wait_ms),
                account_sms: opt(pacing.account_sms_per_second),
                account_mms: opt(pacing.account_mms_per_second),
                classes,
                numbers,
                held: Mutex::new(HashMap::new()),
            },
            metrics,
        }
    }

    /// The API request rate allowed now.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
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

    /// Retune from a response's headers.
    pub fn observe(&self, headers: &HeaderMap) {
        let Some(h) = RateLimitHeaders::parse(headers, SystemTime::now()) else {
            return;
        };
        self.metrics.limiter_remaining.set(h.remaining);
        if h.remaining < 1.0 {
            self.pause_for(Duration::from_secs_f64(h.reset_in.clamp(0.05, 60.0)));
            return;
        }
        let target = tuned_rate(&h, &self.settings);
        self.set_rate(target);
    }

    /// Swap in a bucket at `rate` when it differs from the current one by > 10 %.
    pub fn set_rate(&self, rate: f64) {
        let rate = rate.clamp(self.settings.min_rate, self.settings.max_rate);
        let current = self.rate();
        if (rate - current).abs() <= current * 0.10 {
            return;
        }
        self.bucket
            .store(Arc::new(direct(rate, self.settings.burst)));
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.metrics.limiter_rate.set(rate);
    }

    async fn wait_gate(&self, cancel: &CancellationToken) -> bool {
        loop {
            let Some(until) = self.paused_until() else {
                self.metrics.limiter_paused.set(0);
                return true;
            };
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Wait for pacing, the gate and a token. Cancellable at every step.
    pub async fn admit(&self, job: &Job, cancel: &CancellationToken) -> Admission {
        match self.pace(job, cancel).await {
            Admission::Go => {}
            other => return other,
        }
        if !self.wait_gate(cancel).await {
            return Admission::Cancelled;
        }
        let bucket = self.bucket.load_full();
        tokio::select! {
            _ = cancel.cancelled() => return Admission::Cancelled,
            _ = bucket.until_ready() => {}
        }
        // A 429 may have closed the gate while we waited for the token.
        if !self.wait_gate(cancel).await {
            return Admission::Cancelled;
        }
        Admission::Go
    }

    async fn pace(&self, job: &Job, cancel: &CancellationToken) -> Admission {
        let p = &self.pacing;
        let clock = DefaultClock::default();
        if let Some(from) = &job.from {
            let lane: Option<(f64, Lane<'_>)> = if let Some((rate, l)) = p.numbers.get(from) {
                (*rate > 0.0).then_some((*rate, Lane::Direct(l)))
            } else {
                p.classes
                    .get(&job.sender)
                    .map(|(rate, l)| (*rate, Lane::Keyed(l, from)))
            };
            if let Some((rate, lane)) = lane {
                let first = lane.check(&clock);
                if let Some(wait) = first {
                    let held = {
                        let mut held = p.held.lock().unwrap_or_else(|e| e.into_inner());
                        let n = held.entry(from.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let guard = Held {
                        pacing: p,
                        key: from.clone(),
                    };
                    let expected = wait + Duration::from_secs_f64((held - 1) as f64 / rate);
                    if expected > p.max_wait {
                        drop(guard);
                        self.metrics
                            .pacing_deferrals
                            .with_label_values(&[job.sender.as_str()])
                            .inc();
                        return Admission::Defer(expected.max(Duration::from_secs(1)));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        _ = lane.until_ready() => {}
                    }
                    drop(guard);
                }
            }
        }
        let account = match job.kind {
            MessageKind::Sms => p.account_sms.as_ref(),
            MessageKind::Mms => p.account_mms.as_ref(),
        };
        if let Some(l) = account {
            tokio::select! {
                _ = cancel.cancelled() => return Admission::Cancelled,
                _ = l.until_ready() => {}
            }
        }
        Admission::Go
    }
}

enum Lane<'a> {
    Direct(&'a DefaultDirectRateLimiter),
    Keyed(&'a DefaultKeyedRateLimiter<String>, &'a String),
}

impl Lane<'_> {
    /// Take a token if one is free; otherwise how long until one is.
    fn check(&self, clock: &DefaultClock) -> Option<Duration> {
        let r = match self {
            Lane::Direct(l) => l.check(),
            Lane::Keyed(l, k) => l.check_key(k),
        };
        r.err().map(|nu| nu.wait_time_from(clock.now()))
    }

    async fn until_ready(&self) {
        match self {
            Lane::Direct(l) => l.until_ready().await,
            Lane::Keyed(l, k) => l.until_key_ready(k).await,
        }
    }
}

/// The rate that spends `remaining` evenly until the reset.
pub fn tuned_rate(h: &RateLimitHeaders, s: &LimiterSettings) -> f64 {
    let secs = h.reset_in.max(1.0);
    (h.remaining / secs).clamp(s.min_rate, s.max_rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn settings() -> LimiterSettings {
        LimiterSettings {
            initial_rate: 50.0,
            min_rate: 1.0,
            max_rate: 5000.0,
            burst: 10,
        }
    }

    #[test]
    fn reset_as_seconds_or_unix_timestamp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = headers(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "20"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!(
            (r.limit, r.remaining, r.reset_in),
            (Some(100.0), 40.0, 20.0)
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000010"),
        ]);
        assert_eq!(RateLimitHeaders::parse(&h, now).unwrap().reset_in, 10.0);
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000004000"),
        ]);
        assert_eq!(RateLimitHeaders::parse(&h, now).unwrap().reset_in, 4.0);
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1799999990"),
        ]);
        assert_eq!(
            RateLimitHeaders::parse(&h, now).unwrap().reset_in,
            0.0,
            "past resets"
        );
        assert!(
            RateLimitHeaders::parse(&headers(&[("x-ratelimit-remaining", "x")]), now).is_none()
        );
    }

    #[test]
    fn tuning_spends_remaining_over_the_time_left() {
        let s = settings();
        let h = |remaining, reset_in| RateLimitHeaders {
            limit: Some(1000.0),
            remaining,
            reset_in,
        };
        assert_eq!(tuned_rate(&h(1000.0, 10.0), &s), 100.0);
        assert_eq!(tuned_rate(&h(500.0, 10.0), &s), 50.0);
        assert_eq!(
            tuned_rate(&h(500.0, 0.2), &s),
            500.0,
            "at most one second's spread"
        );
        assert_eq!(tuned_rate(&h(0.5, 60.0), &s), 1.0, "min_rate floor");
        assert_eq!(tuned_rate(&h(1e9, 1.0), &s), 5000.0, "max_rate ceiling");
    }

    #[test]
    fn observe_swaps_the_bucket_and_closes_the_gate_when_exhausted() {
        let m = Metrics::new();
        let rc = RateControl::new(&settings(), &PacingSettings::default(), m.clone());
        assert_eq!(rc.rate(), 50.0);
        rc.observe(&headers(&[
            ("x-ratelimit-limit", "2000"),
            ("x-ratelimit-remaining", "2000"),
            ("x-ratelimit-reset", "10"),
        ]));
        assert_eq!(rc.rate(), 200.0);
        rc.observe(&headers(&[
            ("x-ratelimit-remaining", "1900"),
            ("x-ratelimit-reset", "10"),
        ]));
        assert_eq!(rc.rate(), 200.0, "within 10 %: no swap");
        assert!(rc.paused_until().is_none());
        rc.observe(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "3"),
        ]));
        assert!(rc.paused_until().is_some());
        assert!(m.render().contains("send_worker_limiter_rate 200"));
    }
}
