//! The API token bucket: a GCRA (the algorithm governor uses) whose rate
//! can change at runtime without ever releasing a token early. Generic over
//! governor's [`Clock`], so tests drive it with `FakeRelativeClock`.
//!
//! Why not swap a governor limiter on a retune: a fresh limiter has a token
//! at once, so a limiter retuned every few tokens (the tuner moves the rate
//! by a few percent as evidence comes in) sent one request per swap on top
//! of its rate — 46 requests in a 40/s window, measured. Here a retune keeps
//! the schedule: the next token comes when the old bucket would have given
//! it (or now, if that has passed), and never more than one at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

/// Seconds, as the bucket keeps its schedule.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// The theoretical arrival time of the next token.
    tat: f64,
    /// Seconds between tokens.
    interval: f64,
}

fn interval(rate: f64) -> f64 {
    if rate.is_finite() && rate > 1e-6 {
        1.0 / rate
    } else {
        1e6
    }
}

/// A token bucket at `rate` with room for `burst` tokens.
pub struct ApiBucket<C: Clock = DefaultClock> {
    clock: C,
    origin: C::Instant,
    burst: u32,
    state: Mutex<Gcra>,
    rate_bits: AtomicU64,
    swaps: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for ApiBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBucket")
            .field("rate", &self.rate())
            .field("burst", &self.burst)
            .finish()
    }
}

impl<C: Clock> ApiBucket<C> {
    /// A bucket at `rate`, starting with its full burst.
    pub fn new(rate: f64, burst: u32, clock: C) -> Self {
        let origin = clock.now();
        Self {
            clock,
            origin,
            burst: burst.max(1),
            state: Mutex::new(Gcra {
                tat: 0.0,
                interval: interval(rate),
            }),
            rate_bits: AtomicU64::new(rate.to_bits()),
            swaps: AtomicU64::new(0),
        }
    }

    fn now(&self) -> f64 {
        Duration::from(self.clock.now().duration_since(self.origin)).as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gcra> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests per second allowed now.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Change the rate. The next token comes when the old rate would have
    /// given it, or now if that has passed, and the bucket then holds at
    /// most that one: a retune (or the end of a pause) never releases a
    /// burst or an extra token.
    pub fn set_rate(&self, rate: f64) {
        let t = self.now();
        let burst = f64::from(self.burst - 1);
        let mut g = self.lock();
        let ready = (g.tat - burst * g.interval).max(t);
        g.interval = interval(rate);
        g.tat = ready + burst * g.interval;
        drop(g);
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the rate was changed.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Take a token, or say how long until one is free.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let t = self.now();
        let burst = f64::from(self.burst - 1);
        let mut g = self.lock();
        let allow_at = g.tat - burst * g.interval;
        if t >= allow_at {
            g.tat = g.tat.max(t) + g.interval;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((allow_at - t).clamp(0.0, 1e6)))
        }
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

    #[test]
    fn a_retune_every_few_tokens_never_adds_a_token() {
        // Measured against the governor swap this replaced: a limiter
        // retuned every other token sent one extra request per retune.
        let clock = FakeRelativeClock::default();
        let b = ApiBucket::new(40.0, 10, clock.clone());
        while b.try_acquire().is_ok() {}
        let mut n = 0;
        for ms in 0..1000u64 {
            if ms % 30 == 0 {
                b.set_rate(if ms % 60 == 0 { 40.0 } else { 40.5 });
            }
            while b.try_acquire().is_ok() {
                n += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        assert!((39..=41).contains(&n), "{n} tokens in 1 s at about 40/s");
    }
}
