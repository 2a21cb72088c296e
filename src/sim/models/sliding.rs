//! The sliding-log model: a request is allowed when fewer than `L` counted
//! requests lie in `(now − W, now]` (as Kong's sliding window, counted
//! exactly rather than weighted). Semantics in the parent module's docs.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Decision, Params, align};

/// Room in the log beyond `L`, for refusals when they count. Past it a
/// refused request is not logged (the window is full for a long while by
/// then anyway); this only bounds memory against a client that hammers a
/// long window.
const REFUSED_ROOM: u64 = 1_000_000;

/// The arrival times of the requests counted in the last `W`, oldest first.
#[derive(Debug, Default)]
pub(super) struct SlidingLog {
    log: VecDeque<Duration>,
}

impl SlidingLog {
    pub(super) fn take(&mut self, now: Duration, p: &Params) -> Decision {
        // A request at `t` is counted while `t > now − W`.
        while self
            .log
            .front()
            .is_some_and(|t| t.saturating_add(p.window) <= now)
        {
            self.log.pop_front();
        }
        let counted = |log: &VecDeque<Duration>| u64::try_from(log.len()).unwrap_or(u64::MAX);
        let allowed = counted(&self.log) < p.limit;
        if allowed || (p.count_refused && counted(&self.log) < p.limit.saturating_add(REFUSED_ROOM))
        {
            self.log.push_back(now);
        }
        let n = counted(&self.log);
        // `remaining` next grows when the count drops below L (or, with room
        // left, when the oldest leaves): when entry n − L leaves, or entry 0.
        let next = usize::try_from(n.saturating_sub(p.limit)).unwrap_or(usize::MAX);
        let reset_in = self.log.get(next).map_or(Duration::ZERO, |t| {
            t.saturating_add(p.window).saturating_sub(now)
        });
        Decision {
            allowed,
            limit: p.limit,
            remaining: p.limit.saturating_sub(n),
            reset_in,
            retry_in: if allowed { Duration::ZERO } else { reset_in },
            window_start: align(now, p.window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ms;
    use super::super::{ModelKind, RateModel};
    use super::*;

    fn model(limit: u64, window_ms: u64, count_refused: bool) -> RateModel {
        RateModel::new(
            ModelKind::Sliding,
            Params::new(limit, ms(window_ms), 1, count_refused),
        )
    }

    #[test]
    fn never_more_than_the_limit_in_any_window_long_interval() {
        // Irregular arrivals (a fixed pseudo-random walk) at about 3× the limit.
        let mut m = model(5, 1_000, false);
        let mut t = 0u64;
        let mut x = 12_345u64;
        let mut allowed = Vec::new();
        for _ in 0..3_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            t += (x >> 33) % 130;
            if m.take(ms(t)).allowed {
                allowed.push(t);
            }
        }
        // The busiest half-open interval [a, a + W) starts at an allowed
        // request; every one of them holds at most L.
        let busiest = allowed
            .iter()
            .map(|&a| allowed.iter().filter(|&&b| b >= a && b < a + 1_000).count())
            .max()
            .unwrap();
        assert_eq!(busiest, 5);
        // And the log wastes nothing: over the run, nearly L per W passed.
        let per_window = allowed.len() as f64 / (t as f64 / 1_000.0);
        assert!(per_window > 4.5, "{per_window}");
    }

    #[test]
    fn remaining_rises_gradually_as_each_request_leaves() {
        let mut m = model(4, 1_000, false);
        let seen: Vec<_> = [0, 250, 500, 750]
            .iter()
            .map(|&t| {
                let d = m.take(ms(t));
                (d.allowed, d.remaining, d.reset_in)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (true, 3, ms(1_000)),
                (true, 2, ms(750)),
                (true, 1, ms(500)),
                (true, 0, ms(250)),
            ]
        );
        let d = m.take(ms(900));
        assert!(!d.allowed);
        // Not a window reset: only the request at 0 leaves, at 1 s.
        assert_eq!((d.remaining, d.reset_in, d.retry_in), (0, ms(100), ms(100)));
        // At 1.3 s two have left (0 and 250); this one leaves one slot.
        let d = m.take(ms(1_300));
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_in), (1, ms(200)));
        // At 1.8 s 500 and 750 have left too.
        let d = m.take(ms(1_800));
        assert_eq!((d.allowed, d.remaining, d.reset_in), (true, 2, ms(500)));
        // A request leaves at t + W exactly.
        let mut m = model(1, 1_000, false);
        assert!(m.take(ms(0)).allowed);
        assert!(!m.take(ms(999)).allowed);
        assert!(m.take(ms(1_000)).allowed);
    }

    #[test]
    fn counting_refusals_digs_deeper() {
        let mut plain = model(2, 1_000, false);
        let mut deep = model(2, 1_000, true);
        for m in [&mut plain, &mut deep] {
            assert!(m.take(ms(0)).allowed);
            assert!(m.take(ms(100)).allowed);
            for t in (200..=900).step_by(100) {
                assert!(!m.take(ms(t)).allowed);
            }
        }
        // Refusals not counted: the request at 0 leaves at 1 s, one passes.
        assert!(plain.take(ms(1_000)).allowed);
        // Counted: 100..=1000 are all in the log (10 > L), and this refusal
        // joins them; one is allowed again when only L − 1 = 1 is left,
        // i.e. when the request at 900 has left, at 1.9 s.
        let d = deep.take(ms(1_000));
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.reset_in, d.retry_in), (0, ms(900), ms(900)));
        let mut probe = model(2, 1_000, true);
        for t in [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1_000] {
            probe.take(ms(t));
        }
        assert!(!probe.take(ms(1_899)).allowed);
        assert!(deep.take(ms(1_900)).allowed);
    }

    #[test]
    fn a_lowered_limit_refuses_until_enough_have_left() {
        let mut m = model(4, 1_000, false);
        for t in [0, 100, 200, 300] {
            assert!(m.take(ms(t)).allowed);
        }
        m.reconfigure(
            ModelKind::Sliding,
            Params::new(2, ms(1_000), 1, false),
            ms(400),
        );
        let d = m.take(ms(500));
        assert!(!d.allowed);
        // 4 counted, L = 2: allowed again when 0, 100 and 200 have left.
        assert_eq!((d.limit, d.remaining, d.retry_in), (2, 0, ms(700)));
        assert!(!m.take(ms(1_199)).allowed);
        assert!(m.take(ms(1_200)).allowed);
    }

    #[test]
    fn windows_are_accounted_on_the_clock() {
        let mut m = model(4, 1_000, false);
        assert_eq!(m.take(ms(12_345)).window_start, ms(12_000));
    }
}
