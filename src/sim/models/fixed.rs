//! The two fixed-window models: windows aligned to the Unix clock
//! (`fixed-clock`, as Kong's fixed window or GitHub's hourly limit), and a
//! window that starts at the first request after the last one ended
//! (`fixed-first`, a counter key with a TTL). Semantics in the parent
//! module's docs.

use std::time::Duration;

use super::{Decision, Params, align};

/// The count of one window `[start, start + W)`.
#[derive(Debug, Default)]
struct Counter {
    start: Option<Duration>,
    counted: u64,
}

impl Counter {
    fn open(start: Duration) -> Self {
        Self {
            start: Some(start),
            counted: 0,
        }
    }

    /// Decide a request at `now`, which lies in this window.
    fn decide(&mut self, start: Duration, now: Duration, p: &Params) -> Decision {
        let allowed = self.counted < p.limit;
        if allowed || p.count_refused {
            self.counted = self.counted.saturating_add(1);
        }
        // Positive: `now` is before the window's end.
        let reset_in = start.saturating_add(p.window).saturating_sub(now);
        Decision {
            allowed,
            limit: p.limit,
            remaining: p.limit.saturating_sub(self.counted),
            reset_in,
            retry_in: if allowed { Duration::ZERO } else { reset_in },
            window_start: start,
        }
    }
}

/// Windows at multiples of `W` since the Unix epoch.
#[derive(Debug, Default)]
pub(super) struct FixedClock {
    cur: Counter,
}

impl FixedClock {
    pub(super) fn take(&mut self, now: Duration, p: &Params) -> Decision {
        let start = align(now, p.window);
        if self.cur.start != Some(start) {
            self.cur = Counter::open(start);
        }
        self.cur.decide(start, now, p)
    }

    /// A new `W` is a new set of windows: the count starts again.
    pub(super) fn reconfigure(&mut self, old: &Params, new: &Params) {
        if old.window != new.window {
            self.cur = Counter::default();
        }
    }
}

/// A window opened by the first request at or after the previous window's
/// end.
#[derive(Debug, Default)]
pub(super) struct FixedFirst {
    cur: Counter,
}

impl FixedFirst {
    pub(super) fn take(&mut self, now: Duration, p: &Params) -> Decision {
        let start = match self.cur.start {
            Some(s) if now < s.saturating_add(p.window) => s,
            _ => {
                self.cur = Counter::open(now);
                now
            }
        };
        self.cur.decide(start, now, p)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ms;
    use super::super::{ModelKind, RateModel};
    use super::*;

    fn model(kind: ModelKind, limit: u64, window_ms: u64, count_refused: bool) -> RateModel {
        RateModel::new(kind, Params::new(limit, ms(window_ms), 1, count_refused))
    }

    #[test]
    fn fixed_clock_windows_reset_at_multiples_of_the_window_since_the_epoch() {
        let mut m = model(ModelKind::FixedClock, 2, 1_000, false);
        let d = m.take(ms(10_200));
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (2, 1));
        assert_eq!((d.window_start, d.reset_in), (ms(10_000), ms(800)));
        assert!(m.take(ms(10_500)).allowed);
        let d = m.take(ms(10_900));
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.reset_in, d.retry_in), (0, ms(100), ms(100)));
        // 11.000 is the next window, a full one.
        let d = m.take(ms(11_000));
        assert!(d.allowed);
        assert_eq!(
            (d.window_start, d.remaining, d.reset_in),
            (ms(11_000), 1, ms(1_000))
        );
        // A 5 s window holding 12.3 s started at 10 s.
        let mut m = model(ModelKind::FixedClock, 2, 5_000, false);
        let d = m.take(ms(12_300));
        assert_eq!((d.window_start, d.reset_in), (ms(10_000), ms(2_700)));
    }

    #[test]
    fn fixed_clock_windows_do_not_restart_after_a_pause() {
        let mut m = model(ModelKind::FixedClock, 2, 1_000, false);
        assert!(m.take(ms(20_100)).allowed);
        // The client pauses, then comes back late in a window: that window
        // began at 30 s, not at its first request, and ends at 31 s.
        let d = m.take(ms(30_700));
        assert!(d.allowed);
        assert_eq!(
            (d.window_start, d.reset_in, d.remaining),
            (ms(30_000), ms(300), 1)
        );
        assert!(m.take(ms(30_800)).allowed);
        assert!(!m.take(ms(30_900)).allowed);
        // 31 s is a new window although 30.7 + 1 s has not passed.
        let d = m.take(ms(31_000));
        assert!(d.allowed);
        assert_eq!(d.window_start, ms(31_000));
    }

    #[test]
    fn fixed_first_restarts_at_the_first_request_after_a_pause() {
        let mut m = model(ModelKind::FixedFirst, 2, 1_000, false);
        let d = m.take(ms(10_000));
        assert_eq!((d.window_start, d.reset_in), (ms(10_000), ms(1_000)));
        assert!(m.take(ms(10_100)).allowed);
        let d = m.take(ms(10_200));
        assert!(!d.allowed);
        assert_eq!((d.reset_in, d.retry_in), (ms(800), ms(800)));
        // After a pause, the first request opens a full window at itself.
        let d = m.take(ms(15_300));
        assert!(d.allowed);
        assert_eq!(
            (d.window_start, d.remaining, d.reset_in),
            (ms(15_300), 1, ms(1_000))
        );
        // 16.2 s is still that window (it ends at 16.3 s), past a clock second.
        assert!(m.take(ms(16_200)).allowed);
        let d = m.take(ms(16_250));
        assert!(!d.allowed);
        assert_eq!(d.reset_in, ms(50));
        // At its end exactly, a new one opens.
        let d = m.take(ms(16_300));
        assert!(d.allowed);
        assert_eq!(d.window_start, ms(16_300));
    }

    #[test]
    fn fixed_first_window_changes_move_the_current_end() {
        let mut m = model(ModelKind::FixedFirst, 1, 1_000, false);
        assert!(m.take(ms(1_000)).allowed);
        m.reconfigure(
            ModelKind::FixedFirst,
            Params::new(1, ms(3_000), 1, false),
            ms(1_500),
        );
        let d = m.take(ms(2_500));
        assert!(!d.allowed, "the window now runs to 4 s");
        assert_eq!(d.reset_in, ms(1_500));
        assert!(m.take(ms(4_000)).allowed);
    }

    #[test]
    fn fixed_clock_window_changes_start_a_new_count() {
        let mut m = model(ModelKind::FixedClock, 1, 1_000, false);
        assert!(m.take(ms(2_100)).allowed);
        assert!(!m.take(ms(2_200)).allowed);
        m.reconfigure(
            ModelKind::FixedClock,
            Params::new(1, ms(2_000), 1, false),
            ms(2_300),
        );
        let d = m.take(ms(2_400));
        assert!(d.allowed);
        assert_eq!((d.window_start, d.reset_in), (ms(2_000), ms(1_600)));
    }

    /// With refused requests counted, refusals use up a limit raised within
    /// the window; without, the raise is there to use.
    fn refusals_dig_deeper(kind: ModelKind) {
        for count_refused in [false, true] {
            let mut m = model(kind, 2, 1_000, count_refused);
            let allowed = (0..5)
                .filter(|i| m.take(ms(7_000 + i * 10)).allowed)
                .count();
            assert_eq!(allowed, 2);
            m.reconfigure(kind, Params::new(4, ms(1_000), 1, count_refused), ms(7_100));
            let more = (0..3)
                .filter(|i| m.take(ms(7_200 + i * 10)).allowed)
                .count();
            if count_refused {
                assert_eq!(more, 0, "{kind:?}: 5 counted, limit 4");
            } else {
                assert_eq!(more, 2, "{kind:?}: 2 counted, limit 4");
            }
            // Either way the next window is whole.
            let next = (0..5)
                .filter(|i| m.take(ms(8_000 + i * 10)).allowed)
                .count();
            assert_eq!(next, 4, "{kind:?}");
        }
    }

    #[test]
    fn fixed_clock_counting_refusals_digs_deeper() {
        refusals_dig_deeper(ModelKind::FixedClock);
    }

    #[test]
    fn fixed_first_counting_refusals_digs_deeper() {
        refusals_dig_deeper(ModelKind::FixedFirst);
    }

    #[test]
    fn a_lowered_limit_applies_to_the_current_count() {
        let mut m = model(ModelKind::FixedClock, 5, 1_000, false);
        for i in 0..3 {
            assert!(m.take(ms(i * 10)).allowed);
        }
        m.reconfigure(
            ModelKind::FixedClock,
            Params::new(2, ms(1_000), 1, false),
            ms(50),
        );
        let d = m.take(ms(60));
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (2, 0));
    }
}
