//! *When* to retry: the jittered exponential schedule and the broker tiers
//! that hold retries. *Whether* to retry is [`crate::telnyx::classify`]'s call.
//!
//! The delay before retry `n` (n = 1 after the first attempt) is
//! `base * factor^(n-1) * (0.5 + U[0,1))`, at most `cap`, and never less than
//! the API's `retry-after` — unless that is beyond `cap` too: no delay is ever
//! longer than `cap`, so every delay fits a tier and none blocks a shorter
//! one for long (a 429'd job's wait is bounded by `limiter.max_pause_secs`). Delays live in the broker: one quorum queue per
//! tier, so a crash loses no waiting retry. A retry copy carries its exact
//! delay as a per-message TTL and goes to the tier whose delay is the largest
//! not above it; tiers grow by `factor`, so the TTLs in one queue are within a
//! factor of each other and a short delay never waits long behind a longer one.

use std::time::Duration;

use crate::config::{RetrySettings, Settings};

/// No more tiers than this, whatever the settings.
const MAX_TIERS: usize = 24;
/// A job deferred by pacing is never put back for longer than this.
pub const MAX_DEFER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
    pub max_attempts: u32,
    pub max_rate_limit_bounces: u32,
    /// The longest a 429's `retry-after` may hold a job back.
    pub max_retry_after: Duration,
}

/// One retry tier: a delay queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub delay: Duration,
    /// "500ms", "1s", "300s": used in the queue name and routing key.
    pub label: String,
}

impl Backoff {
    pub fn from_settings(s: &RetrySettings) -> Self {
        Self {
            base: Duration::from_millis(s.base_ms),
            factor: s.factor,
            cap: Duration::from_millis(s.cap_ms),
            max_attempts: s.max_attempts,
            max_rate_limit_bounces: s.max_rate_limit_bounces,
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The schedule `settings` describe: `[retry]`, and the 429 cap
    /// `limiter.max_pause_secs`. Everything that declares or uses the tiers
    /// builds them from this, so they agree.
    pub fn for_settings(settings: &Settings) -> Self {
        Self::from_settings(&settings.retry)
            .with_max_retry_after(Duration::from_secs(settings.limiter.max_pause_secs))
    }

    /// The longest delay the worker ever asks a tier for: a transient
    /// retry's (`cap`), a 429's, or a pacing deferral's.
    pub fn longest(&self) -> Duration {
        self.cap.max(self.max_retry_after).max(MAX_DEFER)
    }

    /// The cap on a 429's `retry-after` (`limiter.max_pause_secs`).
    pub fn with_max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// The shipped defaults (`config/default.toml`): for tests.
    #[cfg(test)]
    pub(crate) fn shipped() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(300),
            max_attempts: 5,
            max_rate_limit_bounces: 20,
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The delay before retry `n` without jitter.
    pub fn nominal(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(64) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `n`, with `jitter` drawn from [0, 1).
    pub fn delay(&self, n: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let jittered = self.nominal(n).mul_f64(0.5 + jitter).min(self.cap);
        match retry_after {
            Some(r) if r > jittered => r.min(self.cap),
            _ => jittered,
        }
    }

    /// [`Backoff::delay`] with jitter from the thread RNG.
    pub fn delay_random(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(n, rand::random::<f64>(), retry_after)
    }

    /// The tier queues: the smallest possible delay, then ×factor up to the
    /// longest delay the worker asks for, with `cap` itself among them.
    pub fn tiers(&self) -> Vec<Tier> {
        let mut delays = Vec::new();
        let mut d = self.base.mul_f64(0.5).max(Duration::from_millis(1));
        let step = if self.factor > 1.05 { self.factor } else { 2.0 };
        let top = self.longest();
        while d < top && delays.len() < MAX_TIERS - 2 {
            delays.push(round_ms(d));
            d = d.mul_f64(step);
        }
        delays.push(round_ms(self.cap));
        delays.push(round_ms(top));
        delays.sort();
        delays.dedup();
        delays
            .into_iter()
            .map(|delay| Tier {
                label: label(delay),
                delay,
            })
            .collect()
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The tier for a delay: the largest tier delay not above it (the first tier
/// for shorter delays). `tiers` must be sorted and non-empty.
pub fn tier_for(tiers: &[Tier], delay: Duration) -> Option<&Tier> {
    tiers
        .iter()
        .rev()
        .find(|t| t.delay <= delay)
        .or_else(|| tiers.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::shipped()
    }

    #[test]
    fn nominal_grows_by_factor_and_stops_at_the_cap() {
        let b = backoff();
        assert_eq!(b.nominal(1), Duration::from_secs(1));
        assert_eq!(b.nominal(2), Duration::from_secs(2));
        assert_eq!(b.nominal(4), Duration::from_secs(8));
        assert_eq!(b.nominal(9), Duration::from_secs(256));
        assert_eq!(b.nominal(10), Duration::from_secs(300));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_spans_half_to_one_and_a_half_times_nominal() {
        let b = backoff();
        assert_eq!(b.delay(3, 0.0, None), Duration::from_secs(2));
        assert_eq!(b.delay(3, 1.0, None), Duration::from_secs(6));
        assert_eq!(b.delay(3, 0.5, None), Duration::from_secs(4));
        assert_eq!(b.delay(20, 1.0, None), Duration::from_secs(300), "capped");
        assert_eq!(b.delay(1, f64::NAN, None), Duration::from_secs(1));
    }

    #[test]
    fn never_sooner_than_retry_after() {
        let b = backoff();
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_millis(100))),
            Duration::from_millis(500)
        );
        // A retry-after beyond the cap is cut to it: an hour-long
        // retry-after on every attempt must not hold a job (or the head of
        // its tier) for hours.
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(900))),
            Duration::from_secs(300)
        );
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(86_400 * 365))),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn random_delays_stay_in_bounds_and_spread_out() {
        let b = backoff();
        for n in 1..=6u32 {
            let nominal = b.nominal(n);
            let samples: Vec<Duration> = (0..2000).map(|_| b.delay_random(n, None)).collect();
            let lo = nominal.mul_f64(0.5);
            let hi = nominal.mul_f64(1.5).min(b.cap);
            assert!(samples.iter().all(|d| *d >= lo && *d <= hi), "attempt {n}");
            // Spread: the four quarters of the range are each hit often.
            let width = (hi - lo).as_secs_f64();
            let mut quarters = [0u32; 4];
            for s in &samples {
                let q = (((*s - lo).as_secs_f64() / width) * 4.0).floor() as usize;
                quarters[q.min(3)] += 1;
            }
            assert!(
                quarters.iter().all(|q| *q > 350),
                "attempt {n}: {quarters:?}"
            );
            let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / 2000.0;
            let want = nominal.as_secs_f64();
            assert!(
                (mean - want).abs() < want * 0.05,
                "attempt {n}: mean {mean} vs {want}"
            );
        }
    }

    #[test]
    fn tiers_cover_every_delay_within_a_factor() {
        let b = backoff();
        let tiers = b.tiers();
        let labels: Vec<&str> = tiers.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "500ms", "1s", "2s", "4s", "8s", "16s", "32s", "64s", "128s", "256s", "300s"
            ]
        );
        for ms in [
            1u64, 499, 500, 999, 1000, 1500, 3999, 4000, 200_000, 300_000, 900_000,
        ] {
            let d = Duration::from_millis(ms);
            let t = tier_for(&tiers, d).unwrap();
            if d >= tiers[0].delay {
                assert!(t.delay <= d, "{ms}ms → {}", t.label);
                if t.delay < b.cap {
                    assert!(d < t.delay.mul_f64(b.factor), "{ms}ms → {}", t.label);
                }
            } else {
                assert_eq!(t, &tiers[0]);
            }
        }
    }

    #[test]
    fn tiers_are_bounded_for_odd_settings() {
        let flat = Backoff {
            factor: 1.0,
            ..backoff()
        };
        assert!(flat.tiers().len() <= MAX_TIERS);
        let tiny = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(80),
            ..backoff()
        };
        let labels: Vec<String> = tiny.tiers().into_iter().map(|t| t.label).collect();
        // Up to the cap by factor, then on to the longest 429 wait or pacing
        // deferral (60 s), so those never sit at the head of a shorter tier.
        assert_eq!(
            labels,
            [
                "5ms", "10ms", "20ms", "40ms", "80ms", "160ms", "320ms", "640ms", "1280ms",
                "2560ms", "5120ms", "10240ms", "20480ms", "40960ms", "60s"
            ]
        );
    }
}
