//! The simulator's rate limit: a fixed window that starts at the first
//! request after the previous one ended, with the `x-ratelimit-*` headers it
//! answers with, and a log of every window for benchmarks to read.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{ResetStyle, SimConfig};

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    used: u64,
    rejected: u64,
    limit: u64,
}

/// One fixed rate-limit window, as the simulator counted it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimWindow {
    /// Milliseconds since the simulator started.
    pub start_ms: u64,
    /// The limit when the window ended (or now, for the current one).
    pub limit: u64,
    /// Requests counted against the limit.
    pub used: u64,
    /// Requests refused with 429 because the window was spent.
    pub rejected: u64,
}

/// The current window and the windows that have ended, oldest first.
#[derive(Default)]
pub(super) struct Windows {
    current: Window,
    done: Vec<SimWindow>,
}

pub(super) struct Limit {
    limit: u64,
    remaining: u64,
    pub(super) reset_in: Duration,
    reset_style: ResetStyle,
}

impl Limit {
    pub(super) fn apply(&self, headers: &mut HeaderMap) {
        let reset = match self.reset_style {
            ResetStyle::Seconds => self.reset_in.as_secs_f64().ceil() as u64,
            ResetStyle::Unix => (SystemTime::now() + self.reset_in)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs_f64().ceil() as u64),
        };
        for (name, value) in [
            ("x-ratelimit-limit", self.limit),
            ("x-ratelimit-remaining", self.remaining),
            ("x-ratelimit-reset", reset),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

impl Windows {
    /// Take one request from the fixed window: whether it is allowed, and the
    /// headers to answer with.
    pub(super) fn take(&mut self, cfg: &SimConfig, epoch: Instant) -> (bool, Limit) {
        let now = Instant::now();
        let w = &mut self.current;
        let limit = if cfg.limit == 0 { 1_000_000 } else { cfg.limit };
        let started = match w.started {
            Some(s) if now.duration_since(s) < cfg.window => s,
            _ => {
                if let Some(done) = record(w, epoch) {
                    // A bounded history: enough for any benchmark run.
                    if self.done.len() >= 100_000 {
                        self.done.remove(0);
                    }
                    self.done.push(done);
                }
                w.started = Some(now);
                w.used = 0;
                w.rejected = 0;
                now
            }
        };
        w.limit = limit;
        let reset_in = cfg.window.saturating_sub(now.duration_since(started));
        let ok = w.used < limit;
        if ok {
            w.used += 1;
        } else {
            w.rejected += 1;
        }
        (
            ok,
            Limit {
                limit,
                remaining: limit.saturating_sub(w.used),
                reset_in,
                reset_style: cfg.reset_style,
            },
        )
    }

    /// Every window so far, oldest first, the current one last.
    pub(super) fn all(&self, epoch: Instant) -> Vec<SimWindow> {
        let mut out = self.done.clone();
        out.extend(record(&self.current, epoch));
        out
    }
}

fn record(w: &Window, epoch: Instant) -> Option<SimWindow> {
    let started = w.started?;
    Some(SimWindow {
        start_ms: u64::try_from(started.saturating_duration_since(epoch).as_millis())
            .unwrap_or(u64::MAX),
        limit: w.limit,
        used: w.used,
        rejected: w.rejected,
    })
}
