//! The path of one job, top to bottom: parse and validate, check the
//! deadline, wait for the circuit and the limiter, call the API, classify the
//! answer, decide what to do with the delivery, and settle it with the broker.
//!
//! [`crate::telnyx::classify`] says what an answer means; [`decide`] turns
//! that (plus the job's attempt counts) into a [`Disposition`];
//! [`Pipeline::settle`] is the one place that publishes, acks, nacks and emits
//! result events.

pub mod circuit;
mod decide;
mod settle;

pub use decide::{DeadReason, Disposition, RetryKind, decide};
pub use settle::{dead_letter_props, describe};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::amqp::{Publisher, Topology};
use crate::job::{self, Job};
use crate::limiter::{Admission, RateControl};
use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;
use crate::retry::Backoff;
use crate::telnyx::{Outcome, TelnyxClient, classify};
use circuit::{CircuitBreaker, Signal};
use decide::{expired_disposition, rejection_disposition};

/// Signals a job raises for its session.
#[derive(Debug, Clone)]
pub struct JobSignals {
    /// Cancelled on shutdown or halt: jobs not yet sent are requeued.
    pub cancel: CancellationToken,
    /// Cancelled by a job whose answer halts the account.
    pub halt: CancellationToken,
}

/// Everything a job needs, shared by all jobs of a session.
#[derive(Debug)]
pub struct Pipeline {
    pub topology: Topology,
    pub backoff: Backoff,
    pub api: TelnyxClient,
    pub limiter: Arc<RateControl>,
    pub circuit: Arc<CircuitBreaker>,
    pub metrics: Metrics,
    pub state: Arc<WorkerState>,
    pub publisher: Publisher,
    pub in_flight: Arc<Semaphore>,
    pub max_body_bytes: usize,
    pub max_age: Option<Duration>,
}

/// How a delivery was settled (for tests, the demo and the halt probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Sent,
    Retried,
    DeadLettered,
    Requeued,
    Halted,
    /// The broker could not take the replacement; the delivery was given back.
    Failed,
}

impl Pipeline {
    /// Process one delivery to the end.
    pub async fn handle(&self, delivery: Delivery, signals: &JobSignals) -> Settled {
        self.metrics.jobs_consumed.inc();
        let props = delivery.properties.clone();
        let job = match Job::parse(&delivery.data, &props, self.max_body_bytes, self.max_age) {
            Ok(job) => job,
            Err(rejection) => {
                let id = job::job_id(&props).unwrap_or_else(|| "-".to_owned());
                let span =
                    info_span!("job", job_id = %id, attempt = job::attempts_made(&props) + 1);
                return async {
                    warn!(detail = %rejection.detail, "job rejected before sending");
                    let d = rejection_disposition(rejection, job::attempts_made(&props));
                    self.settle(&delivery, None, &id, d).await
                }
                .instrument(span)
                .await;
            }
        };
        let span = info_span!(
            "job",
            job_id = %job.id,
            attempt = job.attempt,
            sender_class = job.sender.as_str()
        );
        async {
            let disposition = self.process(&job, signals).await;
            if let Disposition::Requeue { halt: Some(f) } = &disposition {
                let reason = describe(f);
                if self.state.halt(reason.clone()) {
                    error!(reason = %reason, "account-wide failure: halting; jobs stay queued");
                }
                signals.halt.cancel();
            }
            self.settle(&delivery, Some(&job), &job.id, disposition)
                .await
        }
        .instrument(span)
        .await
    }

    /// Decide the disposition of a valid job, sending it if it may be sent.
    async fn process(&self, job: &Job, signals: &JobSignals) -> Disposition {
        if job.is_expired(SystemTime::now()) {
            return expired_disposition(job);
        }
        // While the circuit is open, jobs wait here: unsent and uncharged.
        let Some(pass) = self.circuit.admit(&signals.cancel).await else {
            return Disposition::Requeue { halt: None };
        };
        let (disposition, signal) = self.send(job, signals).await;
        self.circuit.record(pass, signal);
        disposition
    }

    /// Pace, send and classify. The signal tells the circuit breaker what
    /// the answer says about the API's health.
    async fn send(&self, job: &Job, signals: &JobSignals) -> (Disposition, Signal) {
        let neutral = |d| (d, Signal::Neutral);
        match self.limiter.admit(job, &signals.cancel).await {
            Admission::Go => {}
            Admission::Cancelled => return neutral(Disposition::Requeue { halt: None }),
            Admission::Defer(delay) => {
                return neutral(Disposition::Retry {
                    kind: RetryKind::Paced,
                    delay,
                    attempts_made: job.attempt.saturating_sub(1),
                    bounces: job.rate_limit_bounces,
                    deferrals: job.deferrals + 1,
                    failure: None,
                });
            }
        }
        // Waiting may have taken a while: check the deadline again.
        if job.is_expired(SystemTime::now()) {
            return neutral(expired_disposition(job));
        }
        let permit = tokio::select! {
            _ = signals.cancel.cancelled() => return neutral(Disposition::Requeue { halt: None }),
            p = self.in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return neutral(Disposition::Requeue { halt: None }),
            },
        };
        self.metrics.in_flight.inc();
        let result = self.api.send_message(job.body.clone()).await;
        self.metrics.in_flight.dec();
        drop(permit);

        let outcome = classify(&result);
        match &result {
            Ok(r) => {
                self.limiter.observe(&r.headers);
                let code = outcome.failure().and_then(|f| f.code.as_deref());
                self.metrics
                    .api_request(Some(r.status), code, Some(r.latency.as_secs_f64()));
            }
            Err(_) => self.metrics.api_request(None, None, None),
        }
        if let Outcome::RateLimited(f) = &outcome {
            let pause = f.retry_after.unwrap_or(Duration::from_secs(1));
            self.limiter.pause_for(pause);
            self.state.set_paused(true);
            info!(
                pause_ms = pause.as_millis() as u64,
                "429 from the API: pausing sends"
            );
        } else if result.is_ok() {
            self.state.set_paused(false);
        }
        debug!(?outcome, "API answered");
        let signal = Signal::of(&outcome);
        (
            decide(job, outcome, &self.backoff, rand::random::<f64>()),
            signal,
        )
    }
}
