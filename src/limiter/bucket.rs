//! The API token bucket: a governor direct limiter whose rate can change at
//! runtime. Governor quotas are immutable, so the limiter lives in an
//! [`ArcSwap`] and a retune swaps in a new one (see [`ApiBucket::set_rate`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub(crate) fn quota(rate: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

pub(crate) fn direct(rate: f64, burst: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota(rate, burst))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

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
}
