//! The token-bucket model, GCRA as redis-cell computes it: the bucket
//! refills continuously at `L / W`, holds at most `burst` tokens, and its
//! headers describe the bucket (capacity, whole tokens left, time until
//! full), not a window. Semantics in the parent module's docs.

use std::time::Duration;

use super::{Decision, Params, align, from_ns, ns};

/// The theoretical arrival time, in nanoseconds since the Unix epoch. At or
/// before `now`, the bucket is full.
#[derive(Debug, Default)]
pub(super) struct Gcra {
    tat: u128,
}

/// The emission interval `T = W / L`, rounded to the nanosecond, at least 1.
fn interval(p: &Params) -> u128 {
    let limit = u128::from(p.limit.max(1));
    (ns(p.window).saturating_add(limit / 2) / limit).max(1)
}

/// `B·T`: how far ahead of now the arrival time may run.
fn capacity(p: &Params) -> u128 {
    interval(p).saturating_mul(u128::from(p.burst.max(1)))
}

impl Gcra {
    pub(super) fn take(&mut self, now: Duration, p: &Params) -> Decision {
        let now_ns = ns(now);
        let t = interval(p);
        let cap = capacity(p);
        let next = self.tat.max(now_ns).saturating_add(t);
        let allowed = next - now_ns <= cap;
        if allowed || p.count_refused {
            self.tat = next;
        }
        let debt = self.tat.saturating_sub(now_ns);
        let tokens = cap.saturating_sub(debt) / t;
        let retry_in = if allowed {
            Duration::ZERO
        } else {
            // Refused, so tat > now: the first instant x with tat + T − x ≤ B·T.
            from_ns(
                self.tat
                    .saturating_add(t)
                    .saturating_sub(cap)
                    .saturating_sub(now_ns),
            )
        };
        Decision {
            allowed,
            limit: p.burst.max(1),
            remaining: u64::try_from(tokens).unwrap_or(u64::MAX),
            reset_in: from_ns(debt),
            retry_in,
            window_start: align(now, p.window),
        }
    }

    /// Keep the bucket's level in tokens across a change of rate or
    /// capacity (capped at the new capacity; below zero stays below zero).
    pub(super) fn reconfigure(&mut self, old: &Params, new: &Params, now: Duration) {
        let (t_old, t_new) = (interval(old), interval(new));
        let (cap_old, cap_new) = (capacity(old), capacity(new));
        if (t_old, cap_old) == (t_new, cap_new) {
            return;
        }
        let now_ns = ns(now);
        let int = |v: u128| i128::try_from(v).unwrap_or(i128::MAX);
        let debt = int(self.tat.saturating_sub(now_ns));
        // The level in tokens, times T (old, then new).
        let level_old = int(cap_old).saturating_sub(debt);
        let level_new = (level_old.saturating_mul(int(t_new)) / int(t_old)).min(int(cap_new));
        let debt_new = u128::try_from(int(cap_new).saturating_sub(level_new)).unwrap_or(0);
        self.tat = now_ns.saturating_add(debt_new);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ms;
    use super::super::{ModelKind, RateModel};
    use super::*;

    fn model(limit: u64, window_ms: u64, burst: u64, count_refused: bool) -> RateModel {
        RateModel::new(
            ModelKind::Gcra,
            Params::new(limit, ms(window_ms), burst, count_refused),
        )
    }

    #[test]
    fn a_full_bucket_passes_the_burst_at_once_then_exactly_the_rate() {
        // 100 per second (T = 10 ms), burst 10.
        let mut m = model(100, 1_000, 10, false);
        let now = ms(50_000);
        let at_once = (0..15).filter(|_| m.take(now).allowed).count();
        assert_eq!(at_once, 10);
        let d = m.take(now);
        assert_eq!((d.allowed, d.retry_in), (false, ms(10)));
        // A client asking every millisecond for 10 s gets one every 10 ms:
        // 100 in each clock second after the first.
        let mut per_second = [0u32; 10];
        for i in 1..10_000u64 {
            if m.take(now + ms(i)).allowed {
                per_second[usize::try_from(i / 1_000).unwrap()] += 1;
            }
        }
        assert_eq!(per_second[0], 99, "10, 20, ... 990 ms");
        assert!(per_second[1..].iter().all(|&n| n == 100), "{per_second:?}");
    }

    #[test]
    fn steady_spending_at_the_rate_never_sees_a_refusal() {
        let mut m = model(100, 1_000, 10, false);
        assert!((0..5_000u64).all(|i| m.take(ms(i * 10)).allowed));
    }

    #[test]
    fn headers_describe_the_bucket_as_redis_cell_does() {
        let mut m = model(100, 1_000, 10, false);
        for _ in 0..2 {
            m.take(ms(0));
        }
        let d = m.take(ms(0));
        // Limit = capacity, not L; 7 tokens left; full again in 30 ms.
        assert_eq!((d.limit, d.remaining, d.reset_in), (10, 7, ms(30)));
        // 25 ms later 2.5 tokens have come back: 9.5 − 1 = 8.5, 8 whole.
        let d = m.take(ms(25));
        assert_eq!((d.remaining, d.reset_in), (8, ms(15)));
        // Empty it: every refusal says when the next token comes.
        while m.take(ms(25)).allowed {}
        let d = m.take(ms(25));
        assert_eq!((d.remaining, d.reset_in, d.retry_in), (0, ms(95), ms(5)));
        // A slow rate hides behind a short reset: 1 per 10 s, burst 1.
        let mut m = model(1, 10_000, 1, false);
        let d = m.take(ms(0));
        assert_eq!((d.limit, d.remaining, d.reset_in), (1, 0, ms(10_000)));
        assert_eq!(d.window_start, ms(0));
    }

    #[test]
    fn counting_refusals_digs_deeper() {
        let mut plain = model(100, 1_000, 10, false);
        let mut deep = model(100, 1_000, 10, true);
        for m in [&mut plain, &mut deep] {
            for _ in 0..10 {
                assert!(m.take(ms(0)).allowed);
            }
        }
        let waits = |m: &mut RateModel| -> Vec<Duration> {
            (1..=5).map(|i| m.take(ms(i)).retry_in).collect()
        };
        // Not counted: the next token still comes at 10 ms.
        assert_eq!(waits(&mut plain), [ms(9), ms(8), ms(7), ms(6), ms(5)]);
        // Counted: each refusal pushes it 10 ms further.
        assert_eq!(waits(&mut deep), [ms(19), ms(28), ms(37), ms(46), ms(55)]);
        assert!(plain.take(ms(10)).allowed);
        // The next token comes at 60 ms; asking at 59 ms pushes it to 70 ms.
        assert!(!deep.take(ms(59)).allowed);
        assert!(deep.take(ms(70)).allowed);
    }

    #[test]
    fn a_rate_change_keeps_the_level_and_refills_at_the_new_rate() {
        // 10 per second (T = 100 ms), burst 10: spend 5.
        let mut m = model(10, 1_000, 10, false);
        for _ in 0..5 {
            m.take(ms(0));
        }
        m.reconfigure(
            ModelKind::Gcra,
            Params::new(100, ms(1_000), 10, false),
            ms(0),
        );
        // Still 5 tokens; this takes one; refilling at 10 ms each now.
        let d = m.take(ms(0));
        assert_eq!((d.remaining, d.reset_in), (4, ms(60)));
        assert_eq!(m.take(ms(60)).remaining, 9);
        // A smaller capacity caps the level: full bucket of 3.
        m.reconfigure(
            ModelKind::Gcra,
            Params::new(100, ms(1_000), 3, false),
            ms(1_000),
        );
        let d = m.take(ms(1_000));
        assert_eq!((d.limit, d.remaining, d.reset_in), (3, 2, ms(10)));
    }

    #[test]
    fn absurd_parameters_do_not_overflow() {
        let mut m = model(u64::MAX, 1, u64::MAX, true);
        assert!(m.take(Duration::MAX).allowed);
        let mut m = model(1, u64::MAX, u64::MAX, true);
        let d = m.take(ms(1));
        assert!(d.allowed);
        m.reconfigure(
            ModelKind::Gcra,
            Params::new(u64::MAX, ms(1), 1, true),
            ms(2),
        );
        m.take(ms(3));
    }
}
