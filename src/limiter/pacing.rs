//! Message pacing (MPS): per account (SMS and MMS) and per sender. Jobs of one
//! sender wait in order in their own tasks, so a throttled sender never
//! blocks another; a sender too far behind defers its jobs through the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bucket::{direct, quota};
use super::{Admission, secs};
use crate::config::PacingSettings;
use crate::job::{Job, MessageKind, SenderClass};
use crate::ops::metrics::Metrics;

pub use crate::retry::MAX_DEFER;
/// Nor for less than this.
const MIN_DEFER: Duration = Duration::from_secs(1);

/// Burst for a pacing limiter: a second's worth, at least 1.
fn pacing_burst(rate: f64) -> u32 {
    (rate.floor() as u32).clamp(1, 1000)
}

/// One sender's state: jobs waiting in memory, and the last slot booked for
/// a deferred job.
struct SenderState {
    held: usize,
    booked: Option<Instant>,
    /// Jobs of this sender take their turn in order.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl SenderState {
    fn new() -> Self {
        Self {
            held: 0,
            booked: None,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.held == 0 && self.booked.is_none_or(|b| b <= now)
    }
}

pub(super) struct Pacing {
    max_wait: Duration,
    account_sms: Option<(DefaultDirectRateLimiter, tokio::sync::Mutex<()>)>,
    account_mms: Option<(DefaultDirectRateLimiter, tokio::sync::Mutex<()>)>,
    classes: HashMap<SenderClass, (f64, DefaultKeyedRateLimiter<String>)>,
    numbers: HashMap<String, (f64, DefaultDirectRateLimiter)>,
    senders: Mutex<HashMap<String, SenderState>>,
    checks: AtomicU64,
}

enum Lane<'a> {
    Direct(&'a DefaultDirectRateLimiter),
    Keyed(&'a DefaultKeyedRateLimiter<String>, String),
}

impl Lane<'_> {
    /// Take a token if one is free; otherwise how long until one is.
    fn check(&self) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        let r = match self {
            Lane::Direct(l) => l.check(),
            Lane::Keyed(l, k) => l.check_key(k),
        };
        r.map_err(|nu| nu.wait_time_from(clock.now()))
    }

    async fn until_ready(&self) {
        match self {
            Lane::Direct(l) => l.until_ready().await,
            Lane::Keyed(l, k) => l.until_key_ready(k).await,
        }
    }
}

/// What a sender's pacing says about a job.
enum Entry {
    /// A token was free: go on.
    Free,
    /// Wait in memory for the sender's turn.
    Wait(Arc<tokio::sync::Mutex<()>>),
    /// Put it back in the broker for this long.
    Defer(Duration),
}

/// Decrements a sender's held count when the job stops waiting.
struct Held<'a> {
    pacing: &'a Pacing,
    key: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut senders = self
            .pacing
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = senders.get_mut(&self.key) {
            s.held = s.held.saturating_sub(1);
            if s.idle(now) {
                senders.remove(&self.key);
            }
        }
    }
}

impl Pacing {
    pub(super) fn new(p: &PacingSettings) -> Self {
        let opt = |rate: f64| {
            (rate > 0.0).then(|| {
                (
                    direct(rate, pacing_burst(rate)),
                    tokio::sync::Mutex::new(()),
                )
            })
        };
        let mut classes = HashMap::new();
        for (class, rate) in [
            (SenderClass::LongCode, p.long_code_per_second),
            (SenderClass::TollFree, p.toll_free_per_second),
            (SenderClass::ShortCode, p.short_code_per_second),
            (SenderClass::Alphanumeric, p.alphanumeric_per_second),
        ] {
            if rate > 0.0 {
                classes.insert(
                    class,
                    (rate, RateLimiter::keyed(quota(rate, pacing_burst(rate)))),
                );
            }
        }
        let numbers = p
            .numbers
            .iter()
            .map(|(n, r)| (n.clone(), (*r, direct(r.max(1e-6), pacing_burst(*r)))))
            .collect();
        Self {
            max_wait: Duration::from_millis(p.max_wait_ms),
            account_sms: opt(p.account_sms_per_second),
            account_mms: opt(p.account_mms_per_second),
            classes,
            numbers,
            senders: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    /// The sender lane of a job, with its rate, if it is paced.
    fn lane<'a>(&'a self, job: &Job, from: &str) -> Option<(f64, Lane<'a>)> {
        if let Some((rate, l)) = self.numbers.get(from) {
            return (*rate > 0.0).then_some((*rate, Lane::Direct(l)));
        }
        self.classes
            .get(&job.sender)
            .map(|(rate, l)| (*rate, Lane::Keyed(l, from.to_owned())))
    }

    /// Every so often, forget senders that have been quiet.
    fn housekeeping(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        for (_, l) in self.classes.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|_, s| !s.idle(now));
    }

    fn enter(&self, from: &str, rate: f64, lane: &Lane<'_>) -> Entry {
        let now = Instant::now();
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let state = senders
            .entry(from.to_owned())
            .or_insert_with(SenderState::new);
        let expected = if state.held == 0 {
            match lane.check() {
                Ok(()) => {
                    if state.idle(now) {
                        senders.remove(from);
                    }
                    return Entry::Free;
                }
                Err(wait) => wait,
            }
        } else {
            // Each job ahead needs a token of its own.
            secs(state.held as f64 / rate)
        };
        if expected > self.max_wait {
            return Entry::Defer(book(state, now, rate, self.max_wait));
        }
        state.held += 1;
        Entry::Wait(state.turn.clone())
    }
}

/// The delay for a deferred job: the sender's next free slot after its
/// in-memory queue and after the jobs deferred before it.
fn book(state: &mut SenderState, now: Instant, rate: f64, max_wait: Duration) -> Duration {
    let step = secs(1.0 / rate.max(1e-6));
    let earliest = now + max_wait;
    let slot = state.booked.filter(|b| *b > earliest).unwrap_or(earliest) + step;
    let delay = if slot <= now + MAX_DEFER {
        state.booked = Some(slot);
        slot - now
    } else {
        MAX_DEFER
    };
    delay.max(MIN_DEFER)
}

impl Pacing {
    /// Wait for the sender's and the account's pacing, or say to defer.
    pub(super) async fn admit(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        metrics: &Metrics,
    ) -> Admission {
        let p = self;
        p.housekeeping();
        if let Some(from) = job.from.as_deref()
            && let Some((rate, lane)) = p.lane(job, from)
        {
            match p.enter(from, rate, &lane) {
                Entry::Free => {}
                Entry::Defer(delay) => {
                    metrics
                        .pacing_deferrals
                        .with_label_values(&[job.sender.as_str()])
                        .inc();
                    return Admission::Defer(delay);
                }
                Entry::Wait(turn) => {
                    let _held = Held {
                        pacing: p,
                        key: from.to_owned(),
                    };
                    let _turn = tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        t = turn.lock() => t,
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return Admission::Cancelled,
                        _ = lane.until_ready() => {}
                    }
                }
            }
        }
        let account = match job.kind {
            MessageKind::Sms => p.account_sms.as_ref(),
            MessageKind::Mms => p.account_mms.as_ref(),
        };
        if let Some((l, turn)) = account {
            let _turn = tokio::select! {
                _ = cancel.cancelled() => return Admission::Cancelled,
                t = turn.lock() => t,
            };
            tokio::select! {
                _ = cancel.cancelled() => return Admission::Cancelled,
                _ = l.until_ready() => {}
            }
        }
        Admission::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_jobs_are_booked_one_interval_apart() {
        let mut s = SenderState::new();
        let now = Instant::now();
        let wait = Duration::from_secs(5);
        let d1 = book(&mut s, now, 20.0, wait);
        let d2 = book(&mut s, now, 20.0, wait);
        let d3 = book(&mut s, now + Duration::from_millis(20), 20.0, wait);
        assert_eq!(d1, Duration::from_millis(5050));
        assert_eq!(d2, Duration::from_millis(5100));
        assert_eq!(d3, Duration::from_millis(5130), "after the earlier ones");
        // A second later the in-memory queue has room again: 5 s from then.
        let d4 = book(&mut s, now + Duration::from_secs(1), 20.0, wait);
        assert_eq!(d4, Duration::from_millis(5050));
        assert!(!s.idle(now));
        // Never further than MAX_DEFER, and bookings stop at the horizon.
        let mut s = SenderState::new();
        for _ in 0..10 {
            assert!(book(&mut s, now, 0.1, wait) <= MAX_DEFER);
        }
        assert!(s.booked.is_some_and(|b| b <= now + MAX_DEFER));
        assert!(s.idle(now + MAX_DEFER));
    }
}
