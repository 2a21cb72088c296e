//! The rate-limit server models the simulator can play, pure over an
//! injected clock: [`RateModel::take`] is given `now` as a duration since the
//! Unix epoch and answers a [`Decision`], so every model is tested without
//! sleeping. The limiter is judged against these; the semantics below are
//! exact.
//!
//! All models count per simulator (one account). `L` is the limit (requests
//! per window), `W` the window. A limit of 0 ("no limit") reaches the models
//! as `L` = 1,000,000 (and gcra's burst as at least 1,000,000), and the
//! headers say so.
//!
//! | model | allowed when | `x-ratelimit-limit` | `remaining` | reset in |
//! |---|---|---|---|---|
//! | [`ModelKind::FixedClock`] | fewer than `L` counted in the window `[k·W, (k+1)·W)`, `k = floor(now / W)` | `L` | `L − counted` | the window's end − now |
//! | [`ModelKind::FixedFirst`] | fewer than `L` counted in the window `[s, s+W)`, where `s` is the first request at or after the previous window's end | `L` | `L − counted` | the window's end − now |
//! | [`ModelKind::Sliding`] | fewer than `L` counted requests in `(now − W, now]` (a log) | `L` | `L − counted` | until `remaining` next grows |
//! | [`ModelKind::Gcra`] | a token is in the bucket (GCRA) | `burst` | whole tokens left | until the bucket is full |
//!
//! Details, per model:
//! - **fixed-clock**: windows are multiples of `W` since the Unix epoch. They
//!   do not restart when the client pauses. Changing `W` starts a new
//!   window (the counter is keyed by window and length).
//! - **fixed-first**: a request at or after `s + W` opens a new window at its
//!   own arrival. After a pause the first request gets a full fresh window.
//!   Changing `W` moves the current window's end (`s` is kept).
//! - **sliding**: a request at `t` counts while `t > now − W`, so it leaves
//!   the window at `t + W` exactly. `reset` is the time until `remaining`
//!   next grows: until the oldest counted request leaves when at most `L`
//!   are counted (more can be counted when refused requests count or the
//!   limit was lowered: then until enough have left for one to be allowed).
//!   It would be 0 only with nothing counted, which no answer sees: a
//!   decision follows a counted request or a full log. `retry-after` is the
//!   same instant.
//! - **gcra**, as redis-cell: emission interval `T = W / L` (rounded to the
//!   nanosecond, at least 1 ns), capacity `B = burst`. The state is the
//!   theoretical arrival time `TAT` (initially: a full bucket). A request at
//!   `now` is allowed when `max(TAT, now) + T − now ≤ B·T`; then `TAT` becomes
//!   `max(TAT, now) + T`. So `B` requests pass at once from a full bucket, and
//!   then one every `T`: `L` per `W`. `remaining = floor((B·T − (TAT − now)) /
//!   T)`, at least 0; `reset = TAT − now` (until full); `retry-after` = until
//!   a request would pass, `TAT + T − B·T − now`. Changing `L` or `burst`
//!   keeps the bucket's level in tokens (capped at the new capacity) and
//!   refills at the new rate from then on.
//!
//! `count_refused` (all models): a refused request is counted as if it had
//! been allowed. In the fixed windows it pushes the counter above `L` (which
//! matters when the limit is raised within the window: those refusals have
//! used it up); in the sliding log it is logged, so it keeps the window full
//! for `W` after it; in gcra it pushes `TAT` forward by `T`, so a client that
//! retries at once digs deeper and its `retry-after` grows by `T` with each
//! refusal.
//!
//! Changing `L` keeps every counter and applies at once (a window with more
//! than the new `L` counted refuses until it ends). Switching the model
//! starts the new one fresh at the switch: empty counters, a full bucket.
//!
//! `now` must not go backwards; an earlier `now` than one already seen is
//! taken as the latest seen.

mod fixed;
mod gcra;
mod sliding;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which model the simulator plays.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Fixed windows aligned to the Unix clock.
    FixedClock,
    /// A fixed window that starts at the first request after the last one
    /// ended. The default (for now).
    #[default]
    FixedFirst,
    /// A sliding log of the last `W`.
    Sliding,
    /// A token bucket (GCRA) refilling at `L / W`, capacity `burst`.
    Gcra,
}

impl std::fmt::Display for ModelKind {
    /// The name the flags and the control endpoint use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FixedClock => "fixed-clock",
            Self::FixedFirst => "fixed-first",
            Self::Sliding => "sliding",
            Self::Gcra => "gcra",
        })
    }
}

/// What a model counts with; build with [`Params::new`], which keeps every
/// value in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// `L`, at least 1.
    pub limit: u64,
    /// `W`, at least 1 ns.
    pub window: Duration,
    /// gcra's capacity, at least 1.
    pub burst: u64,
    /// Whether a refused request counts as if it had been allowed.
    pub count_refused: bool,
}

impl Params {
    pub fn new(limit: u64, window: Duration, burst: u64, count_refused: bool) -> Self {
        Self {
            limit: limit.max(1),
            window: window.max(Duration::from_nanos(1)),
            burst: burst.max(1),
            count_refused,
        }
    }
}

/// A model's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `x-ratelimit-limit`.
    pub limit: u64,
    /// `x-ratelimit-remaining`, after this request.
    pub remaining: u64,
    /// Until the reset (see the table above), after this request.
    pub reset_in: Duration,
    /// When refused: until a request would be allowed (`retry-after`, > 0).
    /// Zero when allowed.
    pub retry_in: Duration,
    /// The start (since the Unix epoch) of the `W`-long window this request
    /// is accounted in: the model's own window for the fixed models, the
    /// clock-aligned `floor(now / W)·W` for sliding and gcra.
    pub window_start: Duration,
}

enum State {
    FixedClock(fixed::FixedClock),
    FixedFirst(fixed::FixedFirst),
    Sliding(sliding::SlidingLog),
    Gcra(gcra::Gcra),
}

impl State {
    fn fresh(kind: ModelKind) -> Self {
        match kind {
            ModelKind::FixedClock => Self::FixedClock(fixed::FixedClock::default()),
            ModelKind::FixedFirst => Self::FixedFirst(fixed::FixedFirst::default()),
            ModelKind::Sliding => Self::Sliding(sliding::SlidingLog::default()),
            ModelKind::Gcra => Self::Gcra(gcra::Gcra::default()),
        }
    }
}

/// One model with its state and parameters.
pub struct RateModel {
    kind: ModelKind,
    params: Params,
    state: State,
    last: Duration,
}

impl RateModel {
    pub fn new(kind: ModelKind, params: Params) -> Self {
        Self {
            kind,
            params,
            state: State::fresh(kind),
            last: Duration::ZERO,
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// Decide (and count) one request arriving at `now`.
    pub fn take(&mut self, now: Duration) -> Decision {
        let now = self.clock(now);
        let p = &self.params;
        match &mut self.state {
            State::FixedClock(m) => m.take(now, p),
            State::FixedFirst(m) => m.take(now, p),
            State::Sliding(m) => m.take(now, p),
            State::Gcra(m) => m.take(now, p),
        }
    }

    /// Switch to `kind` with `params` at `now`. The same kind keeps its
    /// counters (see the module docs); another kind starts fresh.
    pub fn reconfigure(&mut self, kind: ModelKind, params: Params, now: Duration) {
        let now = self.clock(now);
        if kind != self.kind {
            self.state = State::fresh(kind);
        } else {
            match &mut self.state {
                State::FixedClock(m) => m.reconfigure(&self.params, &params),
                State::Gcra(m) => m.reconfigure(&self.params, &params, now),
                // fixed-first and sliding read the parameters at each take.
                State::FixedFirst(_) | State::Sliding(_) => {}
            }
        }
        self.kind = kind;
        self.params = params;
    }

    fn clock(&mut self, now: Duration) -> Duration {
        self.last = self.last.max(now);
        self.last
    }
}

/// `d` in nanoseconds.
fn ns(d: Duration) -> u128 {
    d.as_nanos()
}

/// `n` nanoseconds, saturating at [`Duration::MAX`].
fn from_ns(n: u128) -> Duration {
    match (
        u64::try_from(n / 1_000_000_000),
        u32::try_from(n % 1_000_000_000),
    ) {
        (Ok(secs), Ok(nanos)) => Duration::new(secs, nanos),
        _ => Duration::MAX,
    }
}

/// The start of the clock-aligned `window` that holds `now`.
fn align(now: Duration, window: Duration) -> Duration {
    let w = ns(window).max(1);
    from_ns(ns(now) / w * w)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn model_names_match_the_flags_and_the_control_endpoint() {
        use clap::ValueEnum;
        for kind in ModelKind::value_variants() {
            let flag = kind.to_possible_value().unwrap();
            assert_eq!(kind.to_string(), flag.get_name());
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.to_string().as_str());
        }
    }

    #[test]
    fn params_stay_in_range() {
        let p = Params::new(0, Duration::ZERO, 0, false);
        assert_eq!(
            (p.limit, p.window, p.burst),
            (1, Duration::from_nanos(1), 1)
        );
    }

    #[test]
    fn clock_aligned_windows_and_big_numbers() {
        assert_eq!(align(ms(12_345), ms(1_000)), ms(12_000));
        assert_eq!(align(ms(12_345), ms(5_000)), ms(10_000));
        assert_eq!(from_ns(u128::MAX), Duration::MAX);
        assert_eq!(from_ns(1_500_000_000), ms(1_500));
    }

    #[test]
    fn time_never_runs_backwards_for_a_model() {
        let mut m = RateModel::new(ModelKind::FixedFirst, Params::new(1, ms(1_000), 1, false));
        assert!(m.take(ms(10_000)).allowed);
        // An earlier clock is read as 10 s: the same window, spent.
        let d = m.take(ms(5_000));
        assert!(!d.allowed);
        assert_eq!(d.reset_in, ms(1_000));
    }

    #[test]
    fn switching_models_starts_fresh_and_keeping_one_keeps_its_counters() {
        let p = Params::new(2, ms(1_000), 2, false);
        let mut m = RateModel::new(ModelKind::FixedClock, p);
        assert!(m.take(ms(100)).allowed);
        assert!(m.take(ms(200)).allowed);
        assert!(!m.take(ms(300)).allowed);
        m.reconfigure(
            ModelKind::FixedClock,
            Params::new(3, ms(1_000), 2, false),
            ms(400),
        );
        let d = m.take(ms(500));
        assert!(d.allowed, "the raised limit applies to the same counter");
        assert_eq!(d.remaining, 0);
        assert!(!m.take(ms(600)).allowed);
        m.reconfigure(ModelKind::Sliding, p, ms(700));
        assert_eq!(m.kind(), ModelKind::Sliding);
        assert!(m.take(ms(800)).allowed, "a new model starts empty");
    }
}
