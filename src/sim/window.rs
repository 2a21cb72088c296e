//! The simulator's rate limit as a whole: the model in play (see
//! [`super::models`]) fed by the simulator's settings, and the record of
//! every window for benchmarks to read.
//!
//! Accounting windows are `W` long: the model's own windows for the fixed
//! models, windows aligned to the Unix clock (`floor(t / W)·W`) for sliding
//! and gcra. Each records the limit `L` in force at its last request and how
//! many requests were allowed and refused. Only windows that saw a request
//! are recorded, so on a clock-aligned model a missing start is an empty
//! window. Switching the model or changing `W` closes the current record
//! (the next one may share its start); changing `L` does not.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SimConfig;
use super::models::{Decision, ModelKind, Params, RateModel};

/// `L` when the limit is 0 ("no limit"), and gcra's least burst then.
pub(super) const UNLIMITED: u64 = 1_000_000;

/// A bounded history: enough for any benchmark run.
const MAX_WINDOWS: usize = 100_000;

/// One rate-limit window, as the simulator counted it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimWindow {
    /// Milliseconds since the simulator started (0 for a clock-aligned
    /// window that began before it; [`Self::start_unix_ms`] is exact).
    pub start_ms: u64,
    /// `L`, requests per window, in force at the window's last request (the
    /// rate, not gcra's burst; 1,000,000 when the limit is off).
    pub limit: u64,
    /// Requests allowed.
    pub used: u64,
    /// Requests refused with 429 (also when they count against the model:
    /// they are never in `used`).
    pub rejected: u64,
    /// The window's start as a Unix time in milliseconds.
    #[serde(default)]
    pub start_unix_ms: u64,
    /// Its length `W` in milliseconds.
    #[serde(default)]
    pub len_ms: u64,
    /// The model that counted it.
    #[serde(default)]
    pub model: ModelKind,
}

/// What a configuration asks of the model.
pub(super) fn params(cfg: &SimConfig) -> Params {
    let (limit, burst) = if cfg.limit == 0 {
        (UNLIMITED, cfg.burst.max(UNLIMITED))
    } else {
        (cfg.limit, cfg.burst)
    };
    Params::new(limit, cfg.window, burst, cfg.count_refused)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Open {
    start: Duration,
    rec: SimWindow,
}

/// The model and the windows it has counted.
pub(super) struct RateState {
    model: RateModel,
    /// The simulator's start, as a Unix time.
    epoch_unix: Duration,
    current: Option<Open>,
    done: VecDeque<SimWindow>,
}

impl RateState {
    pub(super) fn new(cfg: &SimConfig, epoch_unix: Duration) -> Self {
        Self {
            model: RateModel::new(cfg.model, params(cfg)),
            epoch_unix,
            current: None,
            done: VecDeque::new(),
        }
    }

    /// Decide and count one request arriving at `now` (a Unix time).
    pub(super) fn take(&mut self, now: Duration) -> Decision {
        let d = self.model.take(now);
        let p = self.model.params();
        if self
            .current
            .as_ref()
            .is_none_or(|o| o.start != d.window_start)
        {
            self.close();
            self.current = Some(Open {
                start: d.window_start,
                rec: SimWindow {
                    start_ms: millis(d.window_start.saturating_sub(self.epoch_unix)),
                    limit: p.limit,
                    used: 0,
                    rejected: 0,
                    start_unix_ms: millis(d.window_start),
                    len_ms: millis(p.window),
                    model: self.model.kind(),
                },
            });
        }
        if let Some(o) = self.current.as_mut() {
            o.rec.limit = p.limit;
            o.rec.len_ms = millis(p.window);
            if d.allowed {
                o.rec.used = o.rec.used.saturating_add(1);
            } else {
                o.rec.rejected = o.rec.rejected.saturating_add(1);
            }
        }
        d
    }

    /// Apply `cfg` at `now` (see the module docs of [`super::models`]).
    pub(super) fn reconfigure(&mut self, cfg: &SimConfig, now: Duration) {
        let p = params(cfg);
        if cfg.model != self.model.kind() || p.window != self.model.params().window {
            self.close();
        }
        self.model.reconfigure(cfg.model, p, now);
    }

    fn close(&mut self) {
        if let Some(o) = self.current.take() {
            if self.done.len() >= MAX_WINDOWS {
                self.done.pop_front();
            }
            self.done.push_back(o.rec);
        }
    }

    /// Every window so far, oldest first, the current one last.
    pub(super) fn windows(&self) -> Vec<SimWindow> {
        self.done
            .iter()
            .copied()
            .chain(self.current.as_ref().map(|o| o.rec))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn cfg(model: ModelKind, limit: u64) -> SimConfig {
        SimConfig {
            model,
            limit,
            window: ms(1_000),
            ..SimConfig::default()
        }
    }

    #[test]
    fn clock_aligned_models_are_accounted_in_clock_windows() {
        let epoch = ms(100_400);
        let mut r = RateState::new(&cfg(ModelKind::Sliding, 2), epoch);
        for t in [
            100_500, 100_600, 100_700, 101_100, 101_200, 101_500, 103_000,
        ] {
            r.take(ms(t));
        }
        let w = r.windows();
        let got: Vec<_> = w
            .iter()
            .map(|w| {
                (
                    w.start_ms,
                    w.start_unix_ms,
                    w.used,
                    w.rejected,
                    w.limit,
                    w.len_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // Begun before the simulator: start_ms says 0.
                (0, 100_000, 2, 1, 2, 1_000),
                // 101.1 and 101.2 still see 100.5 and 100.6; at 101.5 one has left.
                (600, 101_000, 1, 2, 2, 1_000),
                // 102 had no request, so no record.
                (2_600, 103_000, 1, 0, 2, 1_000),
            ]
        );
        assert!(w.iter().all(|w| w.model == ModelKind::Sliding));
    }

    #[test]
    fn fixed_first_is_accounted_in_its_own_windows() {
        let epoch = ms(50_000);
        let mut r = RateState::new(&cfg(ModelKind::FixedFirst, 2), epoch);
        for t in [50_300, 50_400, 50_500, 51_300, 51_350] {
            r.take(ms(t));
        }
        let got: Vec<_> = r
            .windows()
            .iter()
            .map(|w| (w.start_ms, w.used, w.rejected))
            .collect();
        assert_eq!(got, [(300, 2, 1), (1_300, 2, 0)]);
    }

    #[test]
    fn a_limit_change_stays_in_the_window_and_a_model_switch_closes_it() {
        let epoch = ms(0);
        let mut c = cfg(ModelKind::FixedClock, 1);
        let mut r = RateState::new(&c, epoch);
        r.take(ms(100));
        r.take(ms(200));
        c.limit = 3;
        r.reconfigure(&c, ms(300));
        r.take(ms(400));
        c.model = ModelKind::Gcra;
        r.reconfigure(&c, ms(500));
        r.take(ms(600));
        let got: Vec<_> = r
            .windows()
            .iter()
            .map(|w| (w.start_ms, w.limit, w.used, w.rejected, w.model))
            .collect();
        assert_eq!(
            got,
            [
                (0, 3, 2, 1, ModelKind::FixedClock),
                (0, 3, 1, 0, ModelKind::Gcra),
            ]
        );
    }

    #[test]
    fn no_limit_is_a_million_for_every_model() {
        for model in [
            ModelKind::FixedClock,
            ModelKind::FixedFirst,
            ModelKind::Sliding,
            ModelKind::Gcra,
        ] {
            let mut r = RateState::new(&cfg(model, 0), ms(0));
            let d = r.take(ms(10));
            assert!(d.allowed);
            assert_eq!(d.limit, UNLIMITED, "{model:?}");
            assert_eq!(r.windows()[0].limit, UNLIMITED);
        }
    }
}
