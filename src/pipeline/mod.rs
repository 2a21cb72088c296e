//! The path of one job, top to bottom: parse and validate, check the
//! deadline, wait for the circuit and the limiter, call the API, classify the
//! answer, decide what to do with the delivery, and settle it with the broker.
//!
//! [`crate::telnyx::classify`] says what an answer means; [`decide`] turns
//! that (plus the job's attempt counts) into a [`Disposition`];
//! [`Pipeline::settle`] is the one place that publishes, acks and emits
//! result events. A settlement the broker does not take is remembered in the
//! [`ledger`], so the redelivery is settled from the same decision without a
//! second API call.

pub mod circuit;
mod decide;
mod dedupe;
pub mod ledger;
mod settle;

pub use decide::{DeadReason, Disposition, RetryKind, decide, rejection_disposition};
pub use settle::{dead_letter_props, describe};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::amqp::{Outbox, Publisher, Topology};
use crate::config::OnUnknown;
use crate::job::{self, Job};
use crate::limiter::{Admission, RateControl};
use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;
use crate::retry::Backoff;
use crate::store::Store;
use crate::telnyx::{Failure, Outcome, TelnyxClient, classify};
use circuit::{CircuitBreaker, Signal};
use decide::expired_disposition;
use ledger::{Entry, Ledger};

/// Signals between a session and its jobs.
#[derive(Debug, Clone)]
pub struct JobSignals {
    /// Cancelled on shutdown or halt: jobs not yet sent are left for the
    /// channel close to return.
    pub cancel: CancellationToken,
    /// Cancelled when the drain's grace period is over: requests still in
    /// flight are abandoned (their jobs return to the queue).
    pub hard_stop: CancellationToken,
    /// Cancelled by a job whose answer halts the account.
    pub halt: CancellationToken,
    /// Cancelled by a job whose settlement the broker did not take: the
    /// session is broken and must reconnect.
    pub fault: CancellationToken,
}

impl JobSignals {
    /// Fresh signals whose `cancel` and `hard_stop` follow `shutdown`.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            cancel: shutdown.child_token(),
            hard_stop: CancellationToken::new(),
            halt: CancellationToken::new(),
            fault: CancellationToken::new(),
        }
    }
}

/// Whether a job has started settling (set just before the first publish or
/// ack), so a panic can be told apart: before it the job is dead-lettered as
/// `internal`; after it, the delivery is left for the broker to return.
#[derive(Debug, Default)]
pub struct Progress {
    settling: AtomicBool,
}

impl Progress {
    pub fn settling(&self) -> bool {
        self.settling.load(Ordering::SeqCst)
    }

    fn start_settling(&self) {
        self.settling.store(true, Ordering::SeqCst);
    }
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
    pub outbox: Outbox,
    pub ledger: Arc<Ledger>,
    /// Duplicate suppression ([`dedupe`]).
    pub store: Store,
    /// How long a job's lease lasts (the request timeout plus a margin).
    pub lease: Duration,
    pub on_unknown: OnUnknown,
    pub fail_open: bool,
    /// The fail-open warning is logged once per process.
    pub fail_open_logged: Arc<AtomicBool>,
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
    /// Already settled before (a redelivery): acked, nothing sent.
    Suppressed,
    /// The broker could not take the replacement or the ack: the delivery
    /// is left unacked for the broker to return, and the session reconnects.
    Failed,
}

impl Pipeline {
    /// Process one delivery to the end.
    pub async fn handle(
        &self,
        delivery: &Delivery,
        signals: &JobSignals,
        progress: &Progress,
    ) -> Settled {
        self.metrics.jobs_consumed.inc();
        let props = &delivery.properties;
        let mut job = match Job::parse(&delivery.data, props, self.max_body_bytes, self.max_age) {
            Ok(job) => job,
            Err(rejection) => {
                let id = job::job_id(props).unwrap_or_else(|| "-".to_owned());
                let attempts = job::attempts_made(props);
                let span = info_span!("job", job_id = %id, attempt = attempts.saturating_add(1));
                return async {
                    warn!(detail = %rejection.detail, "job rejected before sending");
                    let d = rejection_disposition(rejection, attempts);
                    self.settle(delivery, None, &id, d, signals, progress).await
                }
                .instrument(span)
                .await;
            }
        };
        // A settlement of this job that the broker did not take: settle it
        // again from what was decided, without calling the API again.
        let resumed = match self.ledger.get(&job.id) {
            Some(Entry::Settled) => {
                info!(job_id = %job.id, "already settled (its ack was lost); acking the redelivery");
                progress.start_settling();
                return self.ack_settled(delivery, &job.id, signals).await;
            }
            Some(Entry::Decided {
                disposition,
                decided_at,
            }) => resume(&mut job, disposition, decided_at),
            None => None,
        };
        let span = info_span!(
            "job",
            job_id = %job.id,
            attempt = job.attempt,
            sender_class = job.sender.as_str()
        );
        async {
            let disposition = match resumed {
                Some(d) => {
                    info!("settling again what was decided before the broker fault");
                    d
                }
                None => self.process(&mut job, signals).await,
            };
            if let Disposition::Requeue { halt: Some(f) } = &disposition {
                let reason = describe(f);
                if self.state.halt(reason.clone()) {
                    error!(reason = %reason, "account-wide failure: halting; jobs stay queued");
                }
                signals.halt.cancel();
            }
            self.settle(
                delivery,
                Some(&job),
                &job.id,
                disposition,
                signals,
                progress,
            )
            .await
        }
        .instrument(span)
        .await
    }

    /// A job whose handling panicked: dead-letter it (reason `internal`) if
    /// it had not started settling; otherwise leave it for the broker to
    /// return and reconnect. Either way it never stays unacked for good.
    pub async fn settle_panic(
        &self,
        delivery: &Delivery,
        why: &str,
        signals: &JobSignals,
        progress: &Progress,
    ) -> Settled {
        self.metrics.panics.inc();
        let id = job::job_id(&delivery.properties).unwrap_or_else(|| "-".to_owned());
        error!(job_id = %id, panic = why, "handling a job panicked; this is a bug");
        if progress.settling() {
            signals.fault.cancel();
            return Settled::Failed;
        }
        let failure = Failure {
            title: "Internal error".to_owned(),
            detail: format!("the worker failed while handling this job: {why}"),
            ..Failure::default()
        };
        let d = Disposition::DeadLetter {
            reason: DeadReason::Internal,
            failure,
            attempts: job::attempts_made(&delivery.properties),
        };
        self.settle(delivery, None, &id, d, signals, progress).await
    }

    /// Decide the disposition of a valid job, sending it if it may be sent.
    async fn process(&self, job: &mut Job, signals: &JobSignals) -> Disposition {
        if job.is_expired(SystemTime::now()) {
            return expired_disposition(job);
        }
        // While the circuit is open, jobs wait here: unsent and uncharged.
        let Some(pass) = self.circuit.admit(&signals.cancel).await else {
            return Disposition::Requeue { halt: None };
        };
        let (disposition, signal) = self.send(job, signals).await;
        let canary = if self.circuit.wants_canary(pass, signal) {
            let answer = self.api.canary().await;
            let c = Signal::of_canary(&classify(&answer));
            info!(canary = ?c, "the probe failed; the canary says whether the API is down");
            Some(c)
        } else {
            None
        };
        self.circuit.record_with_canary(pass, signal, canary);
        disposition
    }

    /// Pace, send and classify. The signal tells the circuit breaker what
    /// the answer says about the API's health.
    async fn send(&self, job: &mut Job, signals: &JobSignals) -> (Disposition, Signal) {
        let neutral = |d| (d, Signal::Neutral);
        let (admission, fleet_seq) = self.limiter.admit(job, &signals.cancel).await;
        match admission {
            Admission::Go => {}
            Admission::Cancelled => return neutral(Disposition::Requeue { halt: None }),
            Admission::Defer(delay) => {
                return neutral(Disposition::Retry {
                    kind: RetryKind::Paced,
                    delay,
                    attempts_made: job.attempt.saturating_sub(1),
                    bounces: job.rate_limit_bounces,
                    deferrals: job.deferrals.saturating_add(1),
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
        // The one place a send is decided: ask the job store first. The
        // lease is taken only once the request can go out at once, so a job
        // whose outcome becomes unknown (a crash) was really about to be sent.
        let owner = match self.lease(job, signals).await {
            dedupe::Lease::Go { owner } => owner,
            dedupe::Lease::Done(d) => return neutral(d),
        };
        self.metrics.in_flight.inc();
        let sent = self.limiter.sent(fleet_seq);
        let result = tokio::select! {
            r = self.api.send_message(job.body.clone()) => Some(r),
            // The drain's grace is over: abandon the request. The API may
            // have accepted it; the job goes back to the queue.
            _ = signals.hard_stop.cancelled() => None,
        };
        self.metrics.in_flight.dec();
        drop(permit);
        let Some(result) = result else {
            warn!("request abandoned at the end of the drain; the job returns to the queue");
            return neutral(Disposition::Requeue { halt: None });
        };

        let outcome = classify(&result);
        match &result {
            Ok(r) => {
                let code = outcome.failure().and_then(|f| f.code.as_deref());
                self.metrics
                    .api_request(Some(r.status), code, Some(r.latency.as_secs_f64()));
            }
            Err(_) => self.metrics.api_request(None, None, None),
        }
        let refused = matches!(outcome, Outcome::RateLimited(_));
        let retry_after = outcome.failure().and_then(|f| f.retry_after);
        let headers = result.as_ref().ok().map(|r| &r.headers);
        match self.limiter.observe(sent, headers, refused, retry_after) {
            Some(pause) if refused => {
                self.state.set_paused(true);
                info!(
                    pause_ms = pause.as_millis() as u64,
                    "429 from the API: pausing sends"
                );
            }
            Some(pause) => {
                self.state.set_paused(true);
                debug!(
                    pause_ms = pause.as_millis() as u64,
                    "the API budget is spent: pausing sends"
                );
            }
            None if refused => {
                debug!("429 for this job while the account has budget left: no pause")
            }
            None if result.is_ok() => self.state.set_paused(false),
            None => {}
        }
        debug!(?outcome, "API answered");
        let signal = Signal::of(&outcome);
        if let Outcome::Retry(f) = &outcome
            && f.maybe_accepted
        {
            // A timeout: the API may have accepted it.
            let action = match self.on_unknown {
                OnUnknown::Send => "send",
                OnUnknown::DeadLetter => "dead_letter",
            };
            self.metrics
                .dedupe_unknown
                .with_label_values(&[action])
                .inc();
        }
        let disposition = decide(
            job,
            outcome,
            &self.backoff,
            self.on_unknown,
            rand::random::<f64>(),
        );
        if let Some(owner) = &owner {
            self.record_outcome(job, owner, &disposition).await;
        }
        (disposition, signal)
    }
}

/// The job's counters and disposition as they were when its settlement
/// failed. A retry whose delay has already run out is not re-published: the
/// job goes on as its next attempt (`None`), with the counters it had.
fn resume(job: &mut Job, disposition: Disposition, decided_at: Instant) -> Option<Disposition> {
    match disposition {
        Disposition::Retry {
            kind,
            delay,
            attempts_made,
            bounces,
            deferrals,
            failure,
        } => {
            let left = decided_at
                .checked_add(delay)
                .map_or(delay, |end| end.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                job.attempt = attempts_made.saturating_add(1);
                job.rate_limit_bounces = bounces;
                job.deferrals = deferrals;
                return None;
            }
            Some(Disposition::Retry {
                kind,
                delay: left,
                attempts_made,
                bounces,
                deferrals,
                failure,
            })
        }
        other => Some(other),
    }
}
