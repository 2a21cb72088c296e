//! The tuner: turns a stream of rate-limit headers into a request rate for
//! this process (the algorithm is in the [`crate::limiter`] docs). Pure: the
//! time of each observation is passed in, so it is tested without sleeping,
//! against the server model in `model.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use super::headers::RateLimitHeaders;
use super::secs;
use crate::config::LimiterSettings;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::model::*;
    use std::time::Instant as StdInstant;

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
}
