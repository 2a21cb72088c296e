//! Test support for the limiter: a model of a rate-limited server and of
//! processes that send to it, stepped in virtual time (1 ms steps), so the
//! tuner is tested against whole runs without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant as StdInstant, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};

use super::headers::RateLimitHeaders;
use super::tuner::Tuner;
use crate::config::LimiterSettings;

pub fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

pub fn settings() -> LimiterSettings {
    LimiterSettings {
        initial_rate: 50.0,
        min_rate: 1.0,
        max_rate: 5000.0,
        burst: 10,
        headroom: 0.015,
        max_pause_secs: 60,
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Style {
    /// Whole seconds until the reset (rounded up), as the simulator.
    Seconds,
    /// A unix timestamp in whole seconds.
    Unix,
    /// Exact fractional seconds.
    Exact,
}

/// A fixed-window limit like the simulator's: a window starts at the
/// first request after the previous one ended.
pub struct Server {
    pub limit: u64,
    pub window: Duration,
    pub style: Style,
    pub started: Option<StdInstant>,
    pub used: u64,
    pub rejected: u64,
    pub done: Vec<(u64, u64, u64)>,
}

impl Server {
    pub fn new(limit: u64, window: Duration, style: Style) -> Self {
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
    pub fn request(&mut self, now: StdInstant, epoch: StdInstant) -> (bool, HeaderMap, Duration) {
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
pub struct Proc {
    pub tuner: Tuner,
    pub credit: f64,
    pub paused_until: Option<StdInstant>,
    pub in_flight: VecDeque<StdInstant>,
    pub starts_at: Duration,
    /// Spans in which it cannot send (a stalled broker, a busy CPU).
    pub stalls: Vec<(Duration, Duration)>,
    pub sent: u64,
}

pub struct Run {
    pub server: Server,
    pub procs: Vec<Proc>,
    pub latency: Duration,
    pub epoch: StdInstant,
    /// (at, new limit)
    pub changes: Vec<(Duration, u64)>,
    /// Simulated time so far.
    pub elapsed: Duration,
}

impl Run {
    pub fn new(server: Server, starts: &[Duration], latency: Duration) -> Self {
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
    pub fn run(&mut self, span: Duration) {
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
                        UNIX_EPOCH + Duration::from_secs_f64(1_800_000_000.25 + t.as_secs_f64()),
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
    pub fn windows(&self) -> &[(u64, u64, u64)] {
        &self.server.done
    }
}

pub fn utilisation(w: &[(u64, u64, u64)]) -> f64 {
    let used: u64 = w.iter().map(|x| x.1).sum();
    let limit: u64 = w.iter().map(|x| x.0).sum();
    used as f64 / limit as f64
}

pub fn rejected(w: &[(u64, u64, u64)]) -> u64 {
    w.iter().map(|x| x.2).sum()
}

pub fn single(style: Style, latency: Duration) -> Run {
    let mut run = Run::new(
        Server::new(1000, Duration::from_secs(1), style),
        &[Duration::ZERO],
        latency,
    );
    run.run(Duration::from_secs(20));
    run
}
