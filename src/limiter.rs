//! How fast the worker may send: one API token bucket tuned from the
//! `x-ratelimit-*` headers, a process-wide 429 gate, and message pacing per
//! account and per sender.
//!
//! ## The API bucket
//! One governor direct limiter ([`ApiBucket`]) shared by every consumer task.
//! Governor quotas are immutable, so the limiter lives in an [`ArcSwap`]: a
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

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{LimiterSettings, PacingSettings};
use crate::job::{Job, MessageKind, SenderClass};
use crate::metrics::Metrics;

/// A deferred job is never put back for longer than this.
pub const MAX_DEFER: Duration = Duration::from_secs(60);
/// Nor for less than this.
const MIN_DEFER: Duration = Duration::from_secs(1);
/// A task waiting for a token re-reads the bucket at least this often.
const MAX_TOKEN_SLEEP: Duration = Duration::from_millis(20);
/// The bucket is swapped only when the target rises by more than this
/// fraction, or falls by more than [`SWAP_THRESHOLD_DOWN`]: erring low.
const SWAP_THRESHOLD_UP: f64 = 0.02;
const SWAP_THRESHOLD_DOWN: f64 = 0.01;
/// Window lengths kept for the median.
const LENGTH_SAMPLES: usize = 5;
/// A share below this is taken as this.
const MIN_SHARE: f64 = 0.01;
/// Catching up on a window that is behind schedule: at most this times the
/// steady rate.
const MAX_CATCH_UP: f64 = 1.2;
/// The current window's share replaces last window's only when it differs
/// by more than this fraction.
const SHARE_DEADBAND: f64 = 0.05;

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
    /// Seconds until the window resets (an upper bound when `coarse`).
    pub reset_in: f64,
    /// The reset was given in whole seconds, so it is rounded up by up to 1 s.
    pub coarse: bool,
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
        let whole = raw_reset.fract() == 0.0;
        let (reset_in, coarse) = if raw_reset > 1e12 {
            ((raw_reset / 1000.0 - now_secs).max(0.0), false)
        } else if raw_reset > 1e9 {
            ((raw_reset - now_secs).max(0.0), whole)
        } else {
            (raw_reset, whole)
        };
        Some(Self {
            limit: num("x-ratelimit-limit"),
            remaining,
            reset_in,
            coarse,
        })
    }

    /// The earliest the reset can be: `reset_in` minus the rounding.
    fn reset_lower(&self) -> f64 {
        if self.coarse {
            (self.reset_in - 1.0).max(0.0)
        } else {
            self.reset_in
        }
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

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(if d.is_finite() { d.max(0.0) } else { 0.0 })
}

// ---------------------------------------------------------------------------
// The API bucket
// ---------------------------------------------------------------------------

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A governor token bucket whose rate can change at runtime: the limiter is
/// swapped (see the module docs). Generic over the clock so tests can drive
/// it with governor's `FakeRelativeClock`.
pub struct ApiBucket<C: Clock = DefaultClock> {
    clock: C,
    burst: u32,
    limiter: ArcSwap<Direct<C>>,
    rate_bits: AtomicU64,
    swaps: AtomicU64,
}

impl<C: Clock + Clone> std::fmt::Debug for ApiBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBucket")
            .field("rate", &self.rate())
            .field("burst", &self.burst)
            .finish()
    }
}

impl<C: Clock + Clone> ApiBucket<C> {
    /// A bucket at `rate`, starting with its full burst.
    pub fn new(rate: f64, burst: u32, clock: C) -> Self {
        let limiter = RateLimiter::direct_with_clock(quota(rate, burst), clock.clone());
        Self {
            clock,
            burst: burst.max(1),
            limiter: ArcSwap::from_pointee(limiter),
            rate_bits: AtomicU64::new(rate.to_bits()),
            swaps: AtomicU64::new(0),
        }
    }

    /// Requests per second allowed now.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Swap in a limiter at `rate`. It starts with one token, not a full
    /// burst, so changing the rate never releases a burst (and a task that
    /// was waiting for the old limiter's next token does not wait twice).
    pub fn set_rate(&self, rate: f64) {
        let limiter = RateLimiter::direct_with_clock(quota(rate, self.burst), self.clock.clone());
        if let Some(n) = NonZeroU32::new(self.burst - 1) {
            let _ = limiter.check_n(n);
        }
        self.limiter.store(Arc::new(limiter));
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the rate was changed.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Take a token, or say how long until one is free.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let limiter = self.limiter.load();
        limiter
            .check()
            .map_err(|nu| nu.wait_time_from(self.clock.now()))
    }
}

// ---------------------------------------------------------------------------
// Tuning
// ---------------------------------------------------------------------------

/// What one tuning step decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Requests per second for this process.
    pub rate: f64,
    /// The window is spent: close the gate this long.
    pub pause: Option<Duration>,
}

/// The server's current rate-limit window as this process sees it.
#[derive(Debug, Clone)]
struct WindowView {
    /// Estimated start (only when seen within a few requests of it).
    started: Option<std::time::Instant>,
    /// When this process noticed the window.
    noticed: std::time::Instant,
    /// The process started in the middle of this window, so its share
    /// there says little.
    joined_late: bool,
    /// `remaining` at the start of the accounting segment (L at a window
    /// start; a limit change mid-window starts a new segment).
    base: f64,
    /// Lowest `remaining` seen in the segment.
    min_remaining: f64,
    /// This process's answers in the segment.
    own: f64,
    /// The lowest `remaining` of the window before (late answers from it
    /// are recognised by it).
    previous_min: Option<f64>,
}

impl WindowView {
    fn used(&self) -> f64 {
        (self.base - self.min_remaining).max(self.own)
    }

    fn share(&self, prior: f64, k: f64) -> f64 {
        ((self.own + prior * k) / (self.used() + k)).clamp(MIN_SHARE, 1.0)
    }

    /// The share over the whole window, once it has ended: the plain ratio
    /// when the window saw enough requests, else pulled towards `prior`.
    fn final_share(&self, prior: f64, k: f64) -> f64 {
        if self.used() >= k {
            (self.own / self.used()).clamp(MIN_SHARE, 1.0)
        } else {
            self.share(prior, k)
        }
    }
}

/// Turns a stream of rate-limit headers into a request rate for this
/// process (the algorithm is in the module docs). Pure: the time of each
/// observation is passed in, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct Tuner {
    min_rate: f64,
    max_rate: f64,
    headroom: f64,
    rate: f64,
    limit: Option<f64>,
    /// The largest reset interval any header gave.
    max_reset: f64,
    /// Measured window lengths, newest last.
    lengths: VecDeque<f64>,
    window: Option<WindowView>,
    /// This process's share of the account's traffic in the last window.
    prior_share: f64,
    last_seen: Option<std::time::Instant>,
}

impl Tuner {
    pub fn new(s: &LimiterSettings) -> Self {
        Self {
            min_rate: s.min_rate,
            max_rate: s.max_rate,
            headroom: s.headroom.clamp(0.0, 0.5),
            rate: s.initial_rate,
            limit: None,
            max_reset: 0.0,
            lengths: VecDeque::with_capacity(LENGTH_SAMPLES),
            window: None,
            prior_share: 1.0,
            last_seen: None,
        }
    }

    /// The rate decided last.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The last `x-ratelimit-limit` (or the best guess at it).
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// The estimated window length in seconds.
    pub fn window_len(&self) -> f64 {
        let fallback = if self.max_reset > 0.0 {
            self.max_reset
        } else {
            1.0
        };
        if self.lengths.is_empty() {
            return fallback;
        }
        let mut v: Vec<f64> = self.lengths.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        if self.max_reset > 0.0 {
            median.min(self.max_reset)
        } else {
            median
        }
    }

    /// This process's estimated share of the account's requests.
    pub fn share(&self) -> f64 {
        let k = self.pseudo_count();
        match &self.window {
            // Answers being handled by other tasks lag `remaining` by a
            // request or two, so early in a window the current figure runs
            // low: it takes over from last window's once a quarter of the
            // window is used, or earlier when it is clearly different (a
            // replica came or went).
            Some(w) if w.used() >= k => {
                let current = w.share(self.prior_share, k);
                let settled = w.used() >= 0.25 * self.limit.unwrap_or(0.0);
                if settled || (current - self.prior_share).abs() > SHARE_DEADBAND * self.prior_share
                {
                    current
                } else {
                    self.prior_share
                }
            }
            _ => self.prior_share,
        }
    }

    fn pseudo_count(&self) -> f64 {
        (self.limit.unwrap_or(0.0) * 0.05).max(20.0)
    }

    /// Seconds until the window resets (an upper bound: the start of a
    /// window is noticed a little after it happened), and whether that is
    /// known well enough to plan the rest of the window with.
    fn time_left(&self, now: std::time::Instant, h: &RateLimitHeaders, len: f64) -> (f64, bool) {
        let upper = h.reset_in;
        let lower = h.reset_lower();
        match self.window.as_ref().and_then(|w| w.started) {
            Some(started) => {
                let end = started + secs(len);
                let left = if end >= now {
                    (end - now).as_secs_f64()
                } else {
                    -(now - end).as_secs_f64()
                };
                (left.clamp(lower, upper), true)
            }
            None => (upper, upper - lower <= 0.1 * len),
        }
    }

    /// Take in one response's headers, seen at `now`, with `in_flight` of
    /// this process's requests still unanswered.
    pub fn observe(
        &mut self,
        now: std::time::Instant,
        h: &RateLimitHeaders,
        in_flight: f64,
    ) -> Tuning {
        let limit = match h.limit {
            Some(l) if l >= 1.0 => l,
            _ => self.limit.unwrap_or(0.0).max(h.remaining + 1.0),
        };
        let remaining = h.remaining.min(limit);
        if h.reset_in > 0.0 && h.reset_in.is_finite() {
            // A reset more than an hour away is not a window to plan by.
            self.max_reset = self.max_reset.max(h.reset_in.min(3600.0));
        }
        let len = self.window_len();
        let jump = (limit * 0.02).max(3.0);
        let idle = self
            .last_seen
            .is_none_or(|t| now.saturating_duration_since(t).as_secs_f64() > len);
        let limit_changed = self.limit.is_some_and(|l| (l - limit).abs() >= 0.5);
        self.limit = Some(limit);
        self.last_seen = Some(now);
        // A 429 (remaining 0) was not counted by the server: not ours to count.
        let own = if remaining >= 1.0 { 1.0 } else { 0.0 };

        match self.window.as_mut() {
            Some(w) if limit_changed => {
                // Same window, new limit: restart the share accounting.
                w.base = remaining + own;
                w.min_remaining = remaining;
                w.own = own;
            }
            Some(w) if !idle && remaining <= w.min_remaining + jump => {
                let young =
                    now.saturating_duration_since(w.noticed).as_secs_f64() < (0.25 * len).min(1.0);
                let late = w.previous_min.is_some_and(|m| remaining <= m + jump);
                if young && late && remaining + limit * 0.5 < w.min_remaining {
                    // A late answer from the previous window: ignore it.
                    return Tuning {
                        rate: self.rate,
                        pause: None,
                    };
                }
                w.min_remaining = w.min_remaining.min(remaining);
                w.own += own;
            }
            _ => self.roll(now, remaining, limit, jump, idle, own),
        }

        let len = self.window_len();
        let share = self.share();
        let (left, sure) = self.time_left(now, h, len);
        let steady = share * limit / len * (1.0 - self.headroom);
        let mut rate = steady;
        if sure && remaining >= 1.0 {
            // Plan the rest of the window: this process's part of what is
            // left, less the reserve, less its requests already on the way,
            // spread over the time in which new requests still land in this
            // window. `left` errs long (the start is noticed late), so a
            // catch-up is never too eager; the brake allows for that error.
            let lead = in_flight / self.rate.max(1.0);
            let budget = share * (remaining - self.headroom * limit) - in_flight;
            let tolerance = 0.01 * len + 0.002;
            let span = left - lead;
            if span >= 0.1 * len {
                let careful = budget / span;
                let hopeful = budget / (span - tolerance).max(1e-3);
                if hopeful < steady {
                    rate = hopeful.max(0.0);
                } else if careful > steady {
                    rate = careful.min(steady * MAX_CATCH_UP);
                }
            }
        }
        self.rate = rate.clamp(self.min_rate, self.max_rate);
        // Spent: close the gate until the reset. The rate stays as it was
        // for the next window.
        let pause = (remaining < 1.0).then(|| {
            let until = if sure { left } else { h.reset_in };
            secs(until + 0.02 * len + 0.005)
                .clamp(Duration::from_millis(10), Duration::from_secs(60))
        });
        Tuning {
            rate: self.rate,
            pause,
        }
    }

    /// A new window began.
    fn roll(
        &mut self,
        now: std::time::Instant,
        remaining: f64,
        limit: f64,
        jump: f64,
        idle: bool,
        own: f64,
    ) {
        let used_at_first = (limit - remaining).max(1.0);
        let sharp = used_at_first <= jump;
        let previous_min = self.window.as_ref().map(|w| w.min_remaining);
        let first = self.window.is_none();
        // Seen within a few requests of its start: it started a moment ago.
        // Taking "now" errs late, which errs safe: the window looks longer.
        let started = sharp.then_some(now);
        if let Some(prev) = self.window.take() {
            if !prev.joined_late {
                self.prior_share = prev.final_share(self.prior_share, self.pseudo_count());
            }
            if let (Some(a), Some(b), false) = (prev.started, started, idle) {
                let len = b.saturating_duration_since(a).as_secs_f64();
                // A window cannot be much shorter than the headers say.
                if len > 0.5 * self.max_reset.min(self.window_len()) {
                    if self.lengths.len() == LENGTH_SAMPLES {
                        self.lengths.pop_front();
                    }
                    self.lengths.push_back(len);
                }
            }
        }
        self.window = Some(WindowView {
            started,
            noticed: now,
            // Started in the middle of a window: what this process makes of
            // that window says little about its share.
            joined_late: first && !sharp,
            base: limit,
            min_remaining: remaining,
            own,
            previous_min,
        });
    }
}

// ---------------------------------------------------------------------------
// Pacing
// ---------------------------------------------------------------------------

/// One sender's state: jobs waiting in memory, and the last slot booked for
/// a deferred job.
struct SenderState {
    held: usize,
    booked: Option<Instant>,
    /// Jobs of this sender take their turn in order.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl SenderState {
    fn new() -> Self {
        Self {
            held: 0,
            booked: None,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.held == 0 && self.booked.is_none_or(|b| b <= now)
    }
}

struct Pacing {
    max_wait: Duration,
    account_sms: Option<(DefaultDirectRateLimiter, tokio::sync::Mutex<()>)>,
    account_mms: Option<(DefaultDirectRateLimiter, tokio::sync::Mutex<()>)>,
    classes: HashMap<SenderClass, (f64, DefaultKeyedRateLimiter<String>)>,
    numbers: HashMap<String, (f64, DefaultDirectRateLimiter)>,
    senders: Mutex<HashMap<String, SenderState>>,
    checks: AtomicU64,
}

enum Lane<'a> {
    Direct(&'a DefaultDirectRateLimiter),
    Keyed(&'a DefaultKeyedRateLimiter<String>, String),
}

impl Lane<'_> {
    /// Take a token if one is free; otherwise how long until one is.
    fn check(&self) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        let r = match self {
            Lane::Direct(l) => l.check(),
            Lane::Keyed(l, k) => l.check_key(k),
        };
        r.map_err(|nu| nu.wait_time_from(clock.now()))
    }

    async fn until_ready(&self) {
        match self {
            Lane::Direct(l) => l.until_ready().await,
            Lane::Keyed(l, k) => l.until_key_ready(k).await,
        }
    }
}

/// What a sender's pacing says about a job.
enum Entry {
    /// A token was free: go on.
    Free,
    /// Wait in memory for the sender's turn.
    Wait(Arc<tokio::sync::Mutex<()>>),
    /// Put it back in the broker for this long.
    Defer(Duration),
}

/// Decrements a sender's held count when the job stops waiting.
struct Held<'a> {
    pacing: &'a Pacing,
    key: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut senders = self
            .pacing
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = senders.get_mut(&self.key) {
            s.held = s.held.saturating_sub(1);
            if s.idle(now) {
                senders.remove(&self.key);
            }
        }
    }
}

impl Pacing {
    fn new(p: &PacingSettings) -> Self {
        let opt = |rate: f64| {
            (rate > 0.0).then(|| {
                (
                    direct(rate, pacing_burst(rate)),
                    tokio::sync::Mutex::new(()),
                )
            })
        };
        let mut classes = HashMap::new();
        for (class, rate) in [
            (SenderClass::LongCode, p.long_code_per_second),
            (SenderClass::TollFree, p.toll_free_per_second),
            (SenderClass::ShortCode, p.short_code_per_second),
            (SenderClass::Alphanumeric, p.alphanumeric_per_second),
        ] {
            if rate > 0.0 {
                classes.insert(
                    class,
                    (rate, RateLimiter::keyed(quota(rate, pacing_burst(rate)))),
                );
            }
        }
        let numbers = p
            .numbers
            .iter()
            .map(|(n, r)| (n.clone(), (*r, direct(r.max(1e-6), pacing_burst(*r)))))
            .collect();
        Self {
            max_wait: Duration::from_millis(p.max_wait_ms),
            account_sms: opt(p.account_sms_per_second),
            account_mms: opt(p.account_mms_per_second),
            classes,
            numbers,
            senders: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    /// The sender lane of a job, with its rate, if it is paced.
    fn lane<'a>(&'a self, job: &Job, from: &str) -> Option<(f64, Lane<'a>)> {
        if let Some((rate, l)) = self.numbers.get(from) {
            return (*rate > 0.0).then_some((*rate, Lane::Direct(l)));
        }
        self.classes
            .get(&job.sender)
            .map(|(rate, l)| (*rate, Lane::Keyed(l, from.to_owned())))
    }

    /// Every so often, forget senders that have been quiet.
    fn housekeeping(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        for (_, l) in self.classes.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|_, s| !s.idle(now));
    }

    fn enter(&self, from: &str, rate: f64, lane: &Lane<'_>) -> Entry {
        let now = Instant::now();
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let state = senders
            .entry(from.to_owned())
            .or_insert_with(SenderState::new);
        let expected = if state.held == 0 {
            match lane.check() {
                Ok(()) => {
                    if state.idle(now) {
                        senders.remove(from);
                    }
                    return Entry::Free;
                }
                Err(wait) => wait,
            }
        } else {
            // Each job ahead needs a token of its own.
            secs(state.held as f64 / rate)
        };
        if expected > self.max_wait {
            return Entry::Defer(book(state, now, rate, self.max_wait));
        }
        state.held += 1;
        Entry::Wait(state.turn.clone())
    }
}

/// The delay for a deferred job: the sender's next free slot after its
/// in-memory queue and after the jobs deferred before it.
fn book(state: &mut SenderState, now: Instant, rate: f64, max_wait: Duration) -> Duration {
    let step = secs(1.0 / rate.max(1e-6));
    let earliest = now + max_wait;
    let slot = state.booked.filter(|b| *b > earliest).unwrap_or(earliest) + step;
    let delay = if slot <= now + MAX_DEFER {
        state.booked = Some(slot);
        slot - now
    } else {
        MAX_DEFER
    };
    delay.max(MIN_DEFER)
}

// ---------------------------------------------------------------------------
// RateControl
// ---------------------------------------------------------------------------

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
        match self.pace(job, cancel).await {
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

    async fn pace(&self, job: &Job, cancel: &CancellationToken) -> Admission {
        let p = &self.pacing;
        p.housekeeping();
        if let Some(from) = job.from.as_deref()
            && let Some((rate, lane)) = p.lane(job, from)
        {
            match p.enter(from, rate, &lane) {
                Entry::Free => {}
                Entry::Defer(delay) => {
                    self.metrics
                        .pacing_deferrals
                        .with_label_values(&[job.sender.as_str()])
                        .inc();
                    return Admission::Defer(delay);
                }
                Entry::Wait(turn) => {
                    let _held = Held {
                        pacing: p,
                        key: from.to_owned(),
                    };
                    let _turn = tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        t = turn.lock() => t,
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        _ = lane.until_ready() => {}
                    }
                }
            }
        }
        let account = match job.kind {
            MessageKind::Sms => p.account_sms.as_ref(),
            MessageKind::Mms => p.account_mms.as_ref(),
        };
        if let Some((l, turn)) = account {
            let _turn = tokio::select! {
                _ = cancel.cancelled() => return Admission::Cancelled,
                t = turn.lock() => t,
            };
            tokio::select! {
                _ = cancel.cancelled() => return Admission::Cancelled,
                _ = l.until_ready() => {}
            }
        }
        Admission::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use reqwest::header::HeaderValue;
    use std::time::Instant as StdInstant;

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
            headroom: 0.015,
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
            (r.limit, r.remaining, r.reset_in, r.coarse),
            (Some(100.0), 40.0, 20.0, true)
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "0.25"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (0.25, false), "fractional seconds");
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000010"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (10.0, true));
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000004000"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (4.0, false), "milliseconds");
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
        assert!(
            RateLimitHeaders::parse(
                &headers(&[("x-ratelimit-remaining", "-3"), ("x-ratelimit-reset", "1")]),
                now
            )
            .is_none(),
            "negative remaining"
        );
    }

    // -- The API bucket, on governor's fake clock ------------------------

    /// Tokens granted over `span`, trying every millisecond.
    fn granted(b: &ApiBucket<FakeRelativeClock>, clock: &FakeRelativeClock, span_ms: u64) -> u32 {
        let mut n = 0;
        for _ in 0..span_ms {
            while b.try_acquire().is_ok() {
                n += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        n
    }

    #[test]
    fn the_bucket_rate_changes_at_runtime_without_a_burst() {
        let clock = FakeRelativeClock::default();
        let b = ApiBucket::new(100.0, 10, clock.clone());
        // A fresh bucket has its burst, then the rate.
        assert_eq!(granted(&b, &clock, 1000), 10 + 100 - 1);
        b.set_rate(500.0);
        assert_eq!(b.rate(), 500.0);
        // Swapped in empty: exactly the new rate, no extra burst.
        // Swapped in with one token, then the new rate; no extra burst.
        assert_eq!(granted(&b, &clock, 1000), 500);
        b.set_rate(50.0);
        assert_eq!(granted(&b, &clock, 2000), 100);
        while b.try_acquire().is_ok() {}
        let wait = b.try_acquire().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(20),
            "{wait:?}"
        );
    }

    // -- Tuning against a model of the fixed-window server ----------------

    #[derive(Clone, Copy, PartialEq)]
    enum Style {
        /// Whole seconds until the reset (rounded up), as the simulator.
        Seconds,
        /// A unix timestamp in whole seconds.
        Unix,
        /// Exact fractional seconds.
        Exact,
    }

    /// A fixed-window limit like the simulator's: a window starts at the
    /// first request after the previous one ended.
    struct Server {
        limit: u64,
        window: Duration,
        style: Style,
        started: Option<StdInstant>,
        used: u64,
        rejected: u64,
        done: Vec<(u64, u64, u64)>,
    }

    impl Server {
        fn new(limit: u64, window: Duration, style: Style) -> Self {
            Self {
                limit,
                window,
                style,
                started: None,
                used: 0,
                rejected: 0,
                done: Vec::new(),
            }
        }

        /// One request at `now`: accepted?, the headers, retry-after.
        fn request(&mut self, now: StdInstant, epoch: StdInstant) -> (bool, HeaderMap, Duration) {
            let started = match self.started {
                Some(s) if now.duration_since(s) < self.window => s,
                _ => {
                    if self.started.is_some() {
                        self.done.push((self.limit, self.used, self.rejected));
                    }
                    self.started = Some(now);
                    self.used = 0;
                    self.rejected = 0;
                    now
                }
            };
            let ok = self.used < self.limit;
            if ok {
                self.used += 1;
            } else {
                self.rejected += 1;
            }
            let left = self.window.saturating_sub(now.duration_since(started));
            // A wall clock that starts at a fixed unix time with the epoch.
            let wall = 1_800_000_000.25 + now.duration_since(epoch).as_secs_f64();
            let reset = match self.style {
                Style::Seconds => format!("{}", left.as_secs_f64().ceil()),
                Style::Unix => format!("{}", (wall + left.as_secs_f64()).ceil()),
                Style::Exact => format!("{:.6}", left.as_secs_f64()),
            };
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
            h.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(self.limit.saturating_sub(self.used)),
            );
            h.insert("x-ratelimit-reset", HeaderValue::from_str(&reset).unwrap());
            let retry = Duration::from_secs(left.as_secs_f64().ceil().max(1.0) as u64);
            (ok, h, retry)
        }
    }

    /// A process: a tuner, the token credit its rate gives, a pause, and
    /// its requests in flight (answered `latency` after they are sent).
    struct Proc {
        tuner: Tuner,
        credit: f64,
        paused_until: Option<StdInstant>,
        in_flight: VecDeque<StdInstant>,
        starts_at: Duration,
        /// Spans in which it cannot send (a stalled broker, a busy CPU).
        stalls: Vec<(Duration, Duration)>,
        sent: u64,
    }

    struct Run {
        server: Server,
        procs: Vec<Proc>,
        latency: Duration,
        epoch: StdInstant,
        /// (at, new limit)
        changes: Vec<(Duration, u64)>,
        /// Simulated time so far.
        elapsed: Duration,
    }

    impl Run {
        fn new(server: Server, starts: &[Duration], latency: Duration) -> Self {
            let procs = starts
                .iter()
                .map(|s| Proc {
                    tuner: Tuner::new(&settings()),
                    credit: 0.0,
                    paused_until: None,
                    in_flight: VecDeque::new(),
                    starts_at: *s,
                    stalls: Vec::new(),
                    sent: 0,
                })
                .collect();
            Self {
                server,
                procs,
                latency,
                epoch: StdInstant::now(),
                changes: Vec::new(),
                elapsed: Duration::ZERO,
            }
        }

        /// Step the world in 1 ms steps for `span`. Every process always has
        /// work: it sends whenever its rate allows and it is not paused.
        fn run(&mut self, span: Duration) {
            let step = Duration::from_millis(1);
            let from = self.elapsed;
            self.elapsed += span;
            for i in 0..span.as_millis() as u64 {
                let t = from + Duration::from_millis(i);
                let now = self.epoch + t;
                if let Some(pos) = self.changes.iter().position(|(at, _)| *at <= t) {
                    self.server.limit = self.changes.remove(pos).1;
                }
                for p in &mut self.procs {
                    if t < p.starts_at {
                        continue;
                    }
                    // Answers due now.
                    while p
                        .in_flight
                        .front()
                        .is_some_and(|at| *at + self.latency <= now)
                    {
                        p.in_flight.pop_front();
                        let (ok, h, retry) = self.server.request(now, self.epoch);
                        let parsed = RateLimitHeaders::parse(
                            &h,
                            UNIX_EPOCH
                                + Duration::from_secs_f64(1_800_000_000.25 + t.as_secs_f64()),
                        )
                        .unwrap();
                        let tuning = p.tuner.observe(now, &parsed, p.in_flight.len() as f64);
                        let mut pause = tuning.pause;
                        if !ok {
                            pause = Some(pause.map_or(retry, |d| d.max(retry)));
                        }
                        if let Some(d) = pause {
                            let until = now + d;
                            if p.paused_until.is_none_or(|u| u < until) {
                                p.paused_until = Some(until);
                            }
                        }
                    }
                    if p.paused_until.is_some_and(|u| u > now)
                        || p.stalls.iter().any(|(a, b)| *a <= t && t < *b)
                    {
                        p.credit = 0.0;
                        continue;
                    }
                    // A bucket with a burst of 10 at the tuned rate.
                    p.credit = (p.credit + p.tuner.rate() * step.as_secs_f64()).min(10.0);
                    while p.credit >= 1.0 {
                        p.credit -= 1.0;
                        p.in_flight.push_back(now);
                        p.sent += 1;
                    }
                }
            }
        }

        /// Windows that ended: (limit, used, rejected).
        fn windows(&self) -> &[(u64, u64, u64)] {
            &self.server.done
        }
    }

    fn utilisation(w: &[(u64, u64, u64)]) -> f64 {
        let used: u64 = w.iter().map(|x| x.1).sum();
        let limit: u64 = w.iter().map(|x| x.0).sum();
        used as f64 / limit as f64
    }

    fn rejected(w: &[(u64, u64, u64)]) -> u64 {
        w.iter().map(|x| x.2).sum()
    }

    fn single(style: Style, latency: Duration) -> Run {
        let mut run = Run::new(
            Server::new(1000, Duration::from_secs(1), style),
            &[Duration::ZERO],
            latency,
        );
        run.run(Duration::from_secs(20));
        run
    }

    #[test]
    fn one_process_uses_the_limit_without_429s_whole_second_resets() {
        let run = single(Style::Seconds, Duration::from_millis(20));
        let w = &run.windows()[1..];
        assert!(w.len() >= 17, "{} windows", w.len());
        assert_eq!(rejected(w), 0, "no 429 after the first window");
        let u = utilisation(w);
        assert!(u >= 0.98, "utilisation {u}");
        assert!(run.procs[0].tuner.window_len() > 0.99);
        assert_eq!(run.procs[0].tuner.share(), 1.0);
    }

    #[test]
    fn one_process_with_unix_timestamp_and_exact_resets() {
        for style in [Style::Unix, Style::Exact] {
            let run = single(style, Duration::from_millis(20));
            // A unix timestamp in whole seconds says little about a 1 s
            // window until two window starts have been seen.
            let w = &run.windows()[3..];
            assert_eq!(rejected(w), 0);
            let u = utilisation(w);
            assert!(u >= 0.98, "utilisation {u}");
            let len = run.procs[0].tuner.window_len();
            assert!((0.99..1.02).contains(&len), "window {len}");
        }
    }

    #[test]
    fn latency_does_not_lower_the_rate() {
        let run = single(Style::Seconds, Duration::from_millis(250));
        let w = &run.windows()[1..];
        assert_eq!(rejected(w), 0);
        let u = utilisation(w);
        assert!(u >= 0.98, "utilisation {u}");
    }

    #[test]
    fn a_stall_is_made_up_within_the_window_without_a_429() {
        // Utilisation without the catch-up (MAX_CATCH_UP = 1): 0.926 and
        // 0.921. At 250 ms less can be made up: requests sent late in a
        // window land in the next one.
        for (latency, least) in [(20, 0.94), (250, 0.925)] {
            let mut run = Run::new(
                Server::new(1000, Duration::from_secs(1), Style::Seconds),
                &[Duration::ZERO],
                Duration::from_millis(latency),
            );
            // Stalls of 150 ms at different points of different windows.
            run.procs[0].stalls = (3..13)
                .map(|i| {
                    let at = Duration::from_millis(i * 1000 + (i % 5) * 150);
                    (at, at + Duration::from_millis(150))
                })
                .collect();
            run.run(Duration::from_secs(15));
            let w = &run.windows()[1..];
            assert_eq!(rejected(w), 0, "latency {latency}");
            for (limit, used, _) in w {
                assert!(
                    *used as f64 <= *limit as f64 * 0.995,
                    "latency {latency}: the catch-up kept a reserve: {used}"
                );
            }
            let u = utilisation(w);
            assert!(u >= least, "latency {latency}: utilisation {u}");
        }
    }

    #[test]
    fn a_long_window_is_spread_evenly() {
        // 6,000 per minute: 100/s, never a burst that spends it early.
        let mut run = Run::new(
            Server::new(6000, Duration::from_secs(60), Style::Seconds),
            &[Duration::ZERO],
            Duration::from_millis(20),
        );
        run.run(Duration::from_secs(30));
        let rate = run.procs[0].tuner.rate();
        assert!((95.0..=100.0).contains(&rate), "rate {rate}");
        assert_eq!(run.server.rejected, 0);
        run.run(Duration::from_secs(150));
        let w = &run.windows()[1..];
        assert_eq!(rejected(w), 0);
        assert!(utilisation(w) >= 0.98, "utilisation {}", utilisation(w));
    }

    #[test]
    fn three_replicas_stay_under_the_limit_together() {
        let mut run = Run::new(
            Server::new(1000, Duration::from_secs(1), Style::Seconds),
            &[
                Duration::ZERO,
                Duration::from_millis(300),
                Duration::from_millis(1700),
            ],
            Duration::from_millis(20),
        );
        run.run(Duration::from_secs(30));
        // Once all three run and have seen a whole window together.
        let w = &run.windows()[4..];
        for (i, (limit, used, _)) in w.iter().enumerate() {
            assert!(used <= limit, "window {i}: {used} > {limit}");
        }
        assert_eq!(rejected(w), 0, "no 429 once the shares are known");
        let u = utilisation(w);
        assert!(u >= 0.97, "together they still use the limit: {u}");
        let shares: f64 = run.procs.iter().map(|p| p.tuner.share()).sum();
        assert!((0.97..=1.03).contains(&shares), "shares sum to {shares}");
        for p in &run.procs {
            assert!(p.tuner.share() < 0.9, "no replica believes it is alone");
        }
    }

    #[test]
    fn a_replica_that_leaves_frees_its_share() {
        let mut run = Run::new(
            Server::new(1000, Duration::from_secs(1), Style::Seconds),
            &[Duration::ZERO, Duration::ZERO],
            Duration::from_millis(20),
        );
        run.run(Duration::from_secs(10));
        let before = run.procs[0].tuner.share();
        assert!((0.2..0.8).contains(&before), "share {before}");
        run.procs.truncate(1);
        let windows = run.windows().len();
        run.run(Duration::from_secs(5));
        assert!(
            run.procs[0].tuner.share() > 0.97,
            "{}",
            run.procs[0].tuner.share()
        );
        let w = &run.windows()[windows + 2..];
        assert!(utilisation(w) >= 0.98, "{}", utilisation(w));
    }

    #[test]
    fn a_changed_limit_is_followed_within_two_seconds() {
        let mut run = Run::new(
            Server::new(1000, Duration::from_secs(1), Style::Seconds),
            &[Duration::ZERO],
            Duration::from_millis(20),
        );
        run.changes = vec![
            (Duration::from_millis(10_500), 500),
            (Duration::from_millis(20_500), 1500),
        ];
        run.run(Duration::from_secs(30));
        let w = run.windows();
        // Windows are about 1 s long: the one holding 10.5 s is index 10.
        let after_drop: Vec<_> = w.iter().filter(|x| x.0 == 500).copied().collect();
        assert!(after_drop.len() >= 8);
        // From the second window at the new limit on: full use, no 429.
        let settled = &after_drop[1..];
        assert_eq!(rejected(settled), 0);
        assert!(utilisation(settled) >= 0.98, "{}", utilisation(settled));
        let after_rise: Vec<_> = w.iter().filter(|x| x.0 == 1500).copied().collect();
        let settled = &after_rise[1..];
        assert_eq!(rejected(&after_rise), 0, "a rise never causes a 429");
        assert!(utilisation(settled) >= 0.98, "{}", utilisation(settled));
    }

    #[test]
    fn a_spent_window_closes_the_gate_until_its_reset() {
        let mut t = Tuner::new(&settings());
        let t0 = StdInstant::now();
        let h = |remaining: f64, reset_in: f64| RateLimitHeaders {
            limit: Some(100.0),
            remaining,
            reset_in,
            coarse: false,
        };
        let first = t.observe(t0, &h(99.0, 10.0), 0.0);
        assert_eq!(first.pause, None);
        // 100 per 10 s, less the headroom.
        assert!((first.rate - 9.85).abs() < 0.01, "{}", first.rate);
        // Someone else spent the window: 2 s in, nothing left for 8 s.
        let spent = t.observe(t0 + Duration::from_secs(2), &h(0.0, 8.0), 0.0);
        let pause = spent.pause.expect("paused");
        assert!(
            pause >= Duration::from_secs(8) && pause < Duration::from_millis(8300),
            "{pause:?}"
        );
        // Half the window used in its first 10 %: the rest is spread.
        let mut t = Tuner::new(&settings());
        t.observe(t0, &h(99.0, 10.0), 0.0);
        let r = t
            .observe(t0 + Duration::from_secs(1), &h(50.0, 9.0), 0.0)
            .rate;
        assert!(r < 9.85 * 0.6, "braked to {r}");
    }

    #[test]
    fn without_the_limit_header_the_largest_remaining_stands_in() {
        let mut t = Tuner::new(&settings());
        let t0 = StdInstant::now();
        let r = t
            .observe(
                t0,
                &RateLimitHeaders {
                    limit: None,
                    remaining: 199.0,
                    reset_in: 1.0,
                    coarse: true,
                },
                0.0,
            )
            .rate;
        assert_eq!(t.limit(), Some(200.0));
        assert!((r - 197.0).abs() < 1.0, "{r}");
    }

    #[test]
    fn rates_stay_within_the_configured_bounds() {
        let mut t = Tuner::new(&settings());
        let t0 = StdInstant::now();
        let h = |limit: f64, remaining: f64| RateLimitHeaders {
            limit: Some(limit),
            remaining,
            reset_in: 1.0,
            coarse: false,
        };
        assert_eq!(t.observe(t0, &h(1e9, 1e9 - 1.0), 0.0).rate, 5000.0);
        let mut t = Tuner::new(&settings());
        assert_eq!(t.observe(t0, &h(1.0, 0.0), 0.0).rate, 1.0);
    }

    #[test]
    fn deferred_jobs_are_booked_one_interval_apart() {
        let mut s = SenderState::new();
        let now = Instant::now();
        let wait = Duration::from_secs(5);
        let d1 = book(&mut s, now, 20.0, wait);
        let d2 = book(&mut s, now, 20.0, wait);
        let d3 = book(&mut s, now + Duration::from_millis(20), 20.0, wait);
        assert_eq!(d1, Duration::from_millis(5050));
        assert_eq!(d2, Duration::from_millis(5100));
        assert_eq!(d3, Duration::from_millis(5130), "after the earlier ones");
        // A second later the in-memory queue has room again: 5 s from then.
        let d4 = book(&mut s, now + Duration::from_secs(1), 20.0, wait);
        assert_eq!(d4, Duration::from_millis(5050));
        assert!(!s.idle(now));
        // Never further than MAX_DEFER, and bookings stop at the horizon.
        let mut s = SenderState::new();
        for _ in 0..10 {
            assert!(book(&mut s, now, 0.1, wait) <= MAX_DEFER);
        }
        assert!(s.booked.is_some_and(|b| b <= now + MAX_DEFER));
        assert!(s.idle(now + MAX_DEFER));
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
