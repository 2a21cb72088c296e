//! Message pacing (MPS): per account (SMS and MMS) and per sender. Each
//! paced budget is a *lane*: a GCRA with a burst of one (a slot every
//! `1 / MPS`), so a sender can never burst — in any second it gets at most
//! its MPS plus one, after a pause, when deferred jobs come back, and after
//! a restart alike.
//!
//! A job waits for its lanes in two steps. First it queues, in order, behind
//! the other jobs of its sender (and then of the account) until its slot is
//! near, holding nothing else; then, once it has its API token, it *commits*
//! to the slot ([`Pacing::commit`]): the slot is taken at the moment the
//! request goes out, so waiting for the API token cannot bunch a sender's
//! sends together. A sender holds at most `max_wait_ms` of its rate in
//! memory; a job beyond that is deferred through the broker, booked one
//! interval after the jobs deferred before it.
//!
//! Where the lanes' slots live is [`super::Slots`]' business: in this
//! process, or in Redis for a fleet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Admission, Slots, secs};
use crate::config::PacingSettings;
use crate::job::{Job, MessageKind, SenderClass};
use crate::ops::metrics::Metrics;

pub use crate::retry::MAX_DEFER;
/// A deferred job is never put back for less than this.
const MIN_DEFER: Duration = Duration::from_secs(1);

/// One sender's jobs waiting in memory, in order.
struct Waiting {
    held: usize,
    /// The last slot booked for a deferred job.
    booked: Option<Instant>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Waiting {
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

/// A lane a job must pass: its key (in [`Slots`]) and rate.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lane {
    pub key: String,
    pub rate: f64,
}

/// The lanes one job passes, once it has queued for them.
pub(super) struct Ticket {
    pub lanes: Vec<Lane>,
    /// Held until the job commits: the next job of the sender (or the
    /// account) waits until then.
    _turns: Vec<tokio::sync::OwnedMutexGuard<()>>,
    _held: Option<Held>,
}

/// Decrements a sender's held count when its job stops waiting.
struct Held {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = w.get_mut(&self.key) {
            s.held = s.held.saturating_sub(1);
            if s.idle(now) {
                w.remove(&self.key);
            }
        }
    }
}

pub(super) struct Pacing {
    max_wait: Duration,
    account_sms: f64,
    account_mms: f64,
    classes: HashMap<SenderClass, f64>,
    numbers: HashMap<String, f64>,
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    account_turn: [Arc<tokio::sync::Mutex<()>>; 2],
    checks: AtomicU64,
}

impl Pacing {
    pub(super) fn new(p: &PacingSettings) -> Self {
        let mut classes = HashMap::new();
        for (class, rate) in [
            (SenderClass::LongCode, p.long_code_per_second),
            (SenderClass::TollFree, p.toll_free_per_second),
            (SenderClass::ShortCode, p.short_code_per_second),
            (SenderClass::Alphanumeric, p.alphanumeric_per_second),
        ] {
            if rate > 0.0 {
                classes.insert(class, rate);
            }
        }
        Self {
            max_wait: Duration::from_millis(p.max_wait_ms),
            account_sms: p.account_sms_per_second,
            account_mms: p.account_mms_per_second,
            classes,
            numbers: p.numbers.clone().into_iter().collect(),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            account_turn: [
                Arc::new(tokio::sync::Mutex::new(())),
                Arc::new(tokio::sync::Mutex::new(())),
            ],
            checks: AtomicU64::new(0),
        }
    }

    /// The sender lane of a job, if it is paced (a number's override of 0
    /// makes it unpaced).
    fn sender_lane(&self, job: &Job) -> Option<Lane> {
        let from = job.from.as_deref()?;
        let rate = match self.numbers.get(from) {
            Some(r) => *r,
            None => *self.classes.get(&job.sender)?,
        };
        (rate > 0.0).then(|| Lane {
            key: format!("sender:{from}"),
            rate,
        })
    }

    fn account_lane(&self, job: &Job) -> Option<(Lane, usize)> {
        let (rate, key, i) = match job.kind {
            MessageKind::Sms => (self.account_sms, "account:sms", 0),
            MessageKind::Mms => (self.account_mms, "account:mms", 1),
        };
        (rate > 0.0).then(|| {
            (
                Lane {
                    key: key.to_owned(),
                    rate,
                },
                i,
            )
        })
    }

    /// Every so often, forget senders with nothing waiting.
    fn housekeeping(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        let now = Instant::now();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, s| !s.idle(now));
    }

    /// Queue for the job's lanes until its slots are near; or say to defer
    /// it (its sender is too far behind), or that it was cancelled.
    pub(super) async fn queue(
        &self,
        job: &Job,
        slots: &Slots,
        cancel: &CancellationToken,
        metrics: &Metrics,
    ) -> Result<Ticket, Admission> {
        self.housekeeping();
        let mut lanes = Vec::new();
        let mut turns = Vec::new();
        let mut held = None;
        if let Some(lane) = self.sender_lane(job) {
            let wait_now = slots.wait(&lane).await;
            let (turn, ahead) = {
                let now = Instant::now();
                let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let s = w.entry(lane.key.clone()).or_insert_with(Waiting::new);
                // Each job ahead needs a slot of its own.
                let expected = wait_now + secs(s.held as f64 / lane.rate);
                if expected > self.max_wait {
                    let delay = book(s, now, lane.rate, self.max_wait);
                    metrics
                        .pacing_deferrals
                        .with_label_values(&[job.sender.as_str()])
                        .inc();
                    return Err(Admission::Defer(delay));
                }
                s.held += 1;
                (s.turn.clone(), s.held - 1)
            };
            held = Some(Held {
                waiting: self.waiting.clone(),
                key: lane.key.clone(),
            });
            let guard = tokio::select! {
                _ = cancel.cancelled() => return Err(Admission::Cancelled),
                g = turn.lock_owned() => g,
            };
            let _ = ahead;
            wait_for(slots, &lane, cancel).await?;
            turns.push(guard);
            lanes.push(lane);
        }
        if let Some((lane, i)) = self.account_lane(job) {
            let guard = tokio::select! {
                _ = cancel.cancelled() => return Err(Admission::Cancelled),
                g = self.account_turn[i].clone().lock_owned() => g,
            };
            wait_for(slots, &lane, cancel).await?;
            turns.push(guard);
            lanes.push(lane);
        }
        Ok(Ticket {
            lanes,
            _turns: turns,
            _held: held,
        })
    }

    /// Take the ticket's slots now (waiting out what is left of them): the
    /// request goes out next.
    pub(super) async fn commit(
        &self,
        ticket: Ticket,
        slots: &Slots,
        cancel: &CancellationToken,
    ) -> Result<(), Admission> {
        for lane in &ticket.lanes {
            loop {
                let wait = slots.take(lane).await;
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Admission::Cancelled),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        Ok(())
    }
}

/// Sleep until `lane` has a free slot (without taking it).
async fn wait_for(slots: &Slots, lane: &Lane, cancel: &CancellationToken) -> Result<(), Admission> {
    loop {
        let wait = slots.wait(lane).await;
        if wait.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Admission::Cancelled),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The delay for a deferred job: the sender's next free slot after its
/// in-memory queue and after the jobs deferred before it.
fn book(state: &mut Waiting, now: Instant, rate: f64, max_wait: Duration) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_jobs_are_booked_one_interval_apart() {
        let mut s = Waiting::new();
        let now = Instant::now();
        let wait = Duration::from_secs(5);
        let d1 = book(&mut s, now, 20.0, wait);
        let d2 = book(&mut s, now, 20.0, wait);
        let d3 = book(&mut s, now + Duration::from_millis(20), 20.0, wait);
        assert_eq!(d1, Duration::from_millis(5050));
        assert_eq!(d2, Duration::from_millis(5100));
        assert_eq!(d3, Duration::from_millis(5130), "after the earlier ones");
        let d4 = book(&mut s, now + Duration::from_secs(1), 20.0, wait);
        assert_eq!(d4, Duration::from_millis(5050));
        assert!(!s.idle(now));
        let mut s = Waiting::new();
        for _ in 0..10 {
            assert!(book(&mut s, now, 0.1, wait) <= MAX_DEFER);
        }
        assert!(s.booked.is_some_and(|b| b <= now + MAX_DEFER));
        assert!(s.idle(now + MAX_DEFER));
    }
}
