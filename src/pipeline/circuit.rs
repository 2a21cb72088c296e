//! The circuit breaker: sustained transient failures (5xx, timeouts,
//! connection errors) open it, and sending pauses for a cool-down instead of
//! spending every job's attempts on an API that is down.
//!
//! - **Closed**: every job passes. Each API answer is recorded in a sliding
//!   window of `window_ms`. When the window holds at least `min_failures`
//!   outage-like failures and they are at least `failure_ratio` of its
//!   answers, the circuit opens.
//! - **Open**: no job is sent. Jobs already taken wait here, unsent and
//!   uncharged (no new deliveries arrive once the prefetch is full, so
//!   consumption pauses); on shutdown they go back to the queue.
//! - **Half-open**: after the cool-down, exactly one job is let through as a
//!   probe. A healthy answer closes the circuit. An outage answer may be the
//!   job's own doing (a few jobs that fail on every attempt can be all the
//!   traffic left), so the pipeline asks the canary (`circuit.canary`: a
//!   `GET` of a message id that does not exist, which only a down API fails):
//!   if the canary fails too, the circuit opens again with the cool-down
//!   doubled (up to `max_cool_down_ms`); if it succeeds, the API is up and
//!   the failure was the job's, so the circuit closes and the cool-down
//!   starts over. A few poison jobs therefore cost at most one cool-down per
//!   attempt, never an open circuit that holds every job.
//!
//! What counts as healthy or as an outage is read off the one classification
//! ([`crate::telnyx::Outcome`]); this module adds no judgement of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::CircuitSettings;
use crate::ops::state::{Circuit, WorkerState};
use crate::telnyx::Outcome;

/// How the circuit let a job through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    Probe,
}

/// What an answer says about the API's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The API answered as a working API does (2xx, a permanent 4xx).
    Healthy,
    /// The API looks down: 5xx, 408, timeout, connection error.
    Outage,
    /// Says nothing about availability (429, account halt, queue full), or
    /// the job never reached the API.
    Neutral,
}

impl Signal {
    /// What the canary's answer says: an outage-like answer is an outage;
    /// any other answer (404 for the nil message id, 200, even 401 or 429)
    /// comes from a working API.
    pub fn of_canary(outcome: &Outcome) -> Signal {
        match Signal::of(outcome) {
            Signal::Outage => Signal::Outage,
            _ => Signal::Healthy,
        }
    }

    pub fn of(outcome: &Outcome) -> Signal {
        match outcome {
            Outcome::Sent(_) | Outcome::Reject(_) => Signal::Healthy,
            Outcome::Retry(f) => match f.status {
                None => Signal::Outage,
                Some(s) if s >= 500 || s == 408 => Signal::Outage,
                Some(_) => Signal::Neutral,
            },
            Outcome::RateLimited(_) | Outcome::Halt(_) => Signal::Neutral,
        }
    }
}

#[derive(Debug)]
struct Inner {
    circuit: Circuit,
    window: VecDeque<(Instant, bool)>,
    opened_at: Instant,
    cool_down: Duration,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: CircuitSettings,
    inner: Mutex<Inner>,
    state: Arc<WorkerState>,
}

impl CircuitBreaker {
    pub fn new(settings: CircuitSettings, state: Arc<WorkerState>) -> Self {
        let cool_down = Duration::from_millis(settings.cool_down_ms);
        state.set_circuit(Circuit::Closed);
        Self {
            settings,
            inner: Mutex::new(Inner {
                circuit: Circuit::Closed,
                window: VecDeque::new(),
                opened_at: Instant::now(),
                cool_down,
                probe_in_flight: false,
            }),
            state,
        }
    }

    pub fn circuit(&self) -> Circuit {
        self.lock().circuit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, inner: &mut Inner, c: Circuit) {
        inner.circuit = c;
        self.state.set_circuit(c);
    }

    /// Wait until a job may be sent. `None`: cancelled while waiting.
    pub async fn admit(&self, cancel: &CancellationToken) -> Option<Pass> {
        if !self.settings.enabled {
            return Some(Pass::Normal);
        }
        loop {
            let wait_until = {
                let mut inner = self.lock();
                let now = Instant::now();
                match inner.circuit {
                    Circuit::Closed => return Some(Pass::Normal),
                    Circuit::Open if now >= inner.opened_at + inner.cool_down => {
                        self.set(&mut inner, Circuit::HalfOpen);
                        inner.probe_in_flight = true;
                        info!("circuit half-open: sending one probe");
                        return Some(Pass::Probe);
                    }
                    Circuit::Open => inner.opened_at + inner.cool_down,
                    Circuit::HalfOpen if !inner.probe_in_flight => {
                        inner.probe_in_flight = true;
                        return Some(Pass::Probe);
                    }
                    Circuit::HalfOpen => now + Duration::from_millis(50),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Whether a probe's answer needs the canary's opinion before it counts.
    pub fn wants_canary(&self, pass: Pass, signal: Signal) -> bool {
        self.settings.enabled
            && self.settings.canary
            && pass == Pass::Probe
            && signal == Signal::Outage
    }

    /// Record what a job's answer said, and for a failed probe what the
    /// canary said (`None`: not asked). Every `Pass` must be recorded once
    /// (with `Neutral` if the job did not reach the API).
    pub fn record(&self, pass: Pass, signal: Signal) {
        self.record_with_canary(pass, signal, None);
    }

    /// [`CircuitBreaker::record`] with the canary's answer for a failed probe.
    pub fn record_with_canary(&self, pass: Pass, signal: Signal, canary: Option<Signal>) {
        if !self.settings.enabled {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match (pass, signal) {
            (Pass::Probe, Signal::Healthy) => {
                inner.window.clear();
                inner.probe_in_flight = false;
                inner.cool_down = Duration::from_millis(self.settings.cool_down_ms);
                self.set(&mut inner, Circuit::Closed);
                info!("circuit closed: the API answered the probe");
            }
            (Pass::Probe, Signal::Outage) if canary == Some(Signal::Healthy) => {
                inner.window.clear();
                inner.probe_in_flight = false;
                inner.cool_down = Duration::from_millis(self.settings.cool_down_ms);
                self.set(&mut inner, Circuit::Closed);
                info!(
                    "circuit closed: the probe job failed but the API answers the canary; \
                     the failures are the jobs' own"
                );
            }
            (Pass::Probe, Signal::Outage) => {
                inner.probe_in_flight = false;
                inner.opened_at = now;
                let max = Duration::from_millis(self.settings.max_cool_down_ms);
                inner.cool_down = (inner.cool_down * 2).min(max);
                self.set(&mut inner, Circuit::Open);
                warn!(
                    cool_down_ms = inner.cool_down.as_millis() as u64,
                    "circuit open again: the probe failed"
                );
            }
            (Pass::Probe, Signal::Neutral) => {
                inner.probe_in_flight = false;
            }
            (Pass::Normal, Signal::Neutral) => {}
            (Pass::Normal, s) => {
                let outage = s == Signal::Outage;
                inner.window.push_back((now, outage));
                let horizon = Duration::from_millis(self.settings.window_ms);
                while inner
                    .window
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > horizon)
                {
                    inner.window.pop_front();
                }
                if inner.circuit == Circuit::Closed && outage {
                    let failures = inner.window.iter().filter(|(_, f)| *f).count();
                    let ratio = failures as f64 / inner.window.len().max(1) as f64;
                    if failures >= self.settings.min_failures as usize
                        && ratio >= self.settings.failure_ratio
                    {
                        inner.opened_at = now;
                        inner.cool_down = Duration::from_millis(self.settings.cool_down_ms);
                        self.set(&mut inner, Circuit::Open);
                        warn!(
                            failures,
                            ratio,
                            cool_down_ms = inner.cool_down.as_millis() as u64,
                            "circuit open: the API looks down; pausing sends"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::Metrics;
    use crate::telnyx::{Accepted, Failure};

    fn settings() -> CircuitSettings {
        CircuitSettings {
            enabled: true,
            window_ms: 10_000,
            min_failures: 3,
            failure_ratio: 0.5,
            cool_down_ms: 1_000,
            max_cool_down_ms: 4_000,
            canary: true,
        }
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(settings(), Arc::new(WorkerState::new(Metrics::new())))
    }

    #[test]
    fn signals_come_from_the_classification() {
        let f = |status| Failure {
            status,
            ..Failure::default()
        };
        assert_eq!(
            Signal::of(&Outcome::Sent(Accepted::default())),
            Signal::Healthy
        );
        assert_eq!(Signal::of(&Outcome::Reject(f(Some(403)))), Signal::Healthy);
        assert_eq!(Signal::of(&Outcome::Retry(f(None))), Signal::Outage);
        assert_eq!(Signal::of(&Outcome::Retry(f(Some(503)))), Signal::Outage);
        assert_eq!(Signal::of(&Outcome::Retry(f(Some(408)))), Signal::Outage);
        assert_eq!(
            Signal::of(&Outcome::Retry(f(Some(403)))),
            Signal::Neutral,
            "40318 queue full"
        );
        assert_eq!(
            Signal::of(&Outcome::RateLimited(f(Some(429)))),
            Signal::Neutral
        );
        assert_eq!(Signal::of(&Outcome::Halt(f(Some(401)))), Signal::Neutral);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_sustained_failures_and_closes_after_a_good_probe() {
        let b = breaker();
        let cancel = CancellationToken::new();
        b.record(Pass::Normal, Signal::Healthy);
        b.record(Pass::Normal, Signal::Outage);
        b.record(Pass::Normal, Signal::Outage);
        assert_eq!(b.circuit(), Circuit::Closed, "2 failures < min_failures");
        b.record(Pass::Normal, Signal::Outage);
        assert_eq!(b.circuit(), Circuit::Open);

        // While open, nothing passes until the cool-down is over.
        let started = Instant::now();
        let pass = b.admit(&cancel).await;
        assert_eq!(pass, Some(Pass::Probe));
        assert!(Instant::now() - started >= Duration::from_millis(1_000));
        assert_eq!(b.circuit(), Circuit::HalfOpen);

        // Only one probe at a time: a second job waits.
        let second = tokio::time::timeout(Duration::from_millis(500), b.admit(&cancel)).await;
        assert!(second.is_err(), "a second job must wait for the probe");

        b.record(Pass::Probe, Signal::Healthy);
        assert_eq!(b.circuit(), Circuit::Closed);
        assert_eq!(b.admit(&cancel).await, Some(Pass::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_longer_cool_down() {
        let b = breaker();
        let cancel = CancellationToken::new();
        for _ in 0..3 {
            b.record(Pass::Normal, Signal::Outage);
        }
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        b.record(Pass::Probe, Signal::Outage);
        assert_eq!(b.circuit(), Circuit::Open);
        let t = Instant::now();
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        assert!(
            Instant::now() - t >= Duration::from_millis(2_000),
            "doubled"
        );
        b.record(Pass::Probe, Signal::Outage);
        b.record(Pass::Probe, Signal::Outage);
        let t = Instant::now();
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        assert!(Instant::now() - t <= Duration::from_millis(4_050), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_with_a_healthy_canary_closes_and_resets_the_cool_down() {
        let b = breaker();
        let cancel = CancellationToken::new();
        for _ in 0..3 {
            b.record(Pass::Normal, Signal::Outage);
        }
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        assert!(b.wants_canary(Pass::Probe, Signal::Outage));
        assert!(!b.wants_canary(Pass::Normal, Signal::Outage));
        assert!(!b.wants_canary(Pass::Probe, Signal::Healthy));
        // A real outage: the canary fails too; the cool-down doubles.
        b.record_with_canary(Pass::Probe, Signal::Outage, Some(Signal::Outage));
        assert_eq!(b.circuit(), Circuit::Open);
        let t = Instant::now();
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        assert!(Instant::now() - t >= Duration::from_millis(2_000));
        // The job's own failure: the API answers the canary; closed at once.
        b.record_with_canary(Pass::Probe, Signal::Outage, Some(Signal::Healthy));
        assert_eq!(b.circuit(), Circuit::Closed);
        assert_eq!(b.admit(&cancel).await, Some(Pass::Normal));
        // And the next opening starts from the base cool-down again.
        for _ in 0..3 {
            b.record(Pass::Normal, Signal::Outage);
        }
        let t = Instant::now();
        assert_eq!(b.admit(&cancel).await, Some(Pass::Probe));
        let waited = Instant::now() - t;
        assert!(
            waited >= Duration::from_millis(1_000) && waited < Duration::from_millis(1_100),
            "{waited:?}"
        );
    }

    #[test]
    fn the_canary_is_healthy_unless_the_api_looks_down() {
        let f = |status| Failure {
            status,
            ..Failure::default()
        };
        assert_eq!(
            Signal::of_canary(&Outcome::Reject(f(Some(404)))),
            Signal::Healthy
        );
        assert_eq!(
            Signal::of_canary(&Outcome::Halt(f(Some(401)))),
            Signal::Healthy
        );
        assert_eq!(
            Signal::of_canary(&Outcome::RateLimited(f(Some(429)))),
            Signal::Healthy
        );
        assert_eq!(
            Signal::of_canary(&Outcome::Retry(f(Some(503)))),
            Signal::Outage
        );
        assert_eq!(Signal::of_canary(&Outcome::Retry(f(None))), Signal::Outage);
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_failure_ratio_keeps_it_closed_and_old_failures_age_out() {
        let b = breaker();
        for _ in 0..10 {
            b.record(Pass::Normal, Signal::Healthy);
        }
        for _ in 0..4 {
            b.record(Pass::Normal, Signal::Outage);
        }
        assert_eq!(b.circuit(), Circuit::Closed, "4 of 14 is under half");
        let b = breaker();
        b.record(Pass::Normal, Signal::Outage);
        b.record(Pass::Normal, Signal::Outage);
        tokio::time::advance(Duration::from_secs(11)).await;
        b.record(Pass::Normal, Signal::Outage);
        assert_eq!(
            b.circuit(),
            Circuit::Closed,
            "the first two left the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_jobs_are_released_on_cancel() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Pass::Normal, Signal::Outage);
        }
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(b.admit(&cancel).await, None);
    }

    #[tokio::test]
    async fn disabled_lets_everything_through() {
        let b = CircuitBreaker::new(
            CircuitSettings {
                enabled: false,
                ..settings()
            },
            Arc::new(WorkerState::new(Metrics::new())),
        );
        for _ in 0..10 {
            b.record(Pass::Normal, Signal::Outage);
        }
        assert_eq!(b.admit(&CancellationToken::new()).await, Some(Pass::Normal));
    }
}
