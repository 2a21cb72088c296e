//! The path of one job, top to bottom: parse and validate, check the
//! deadline, wait for the limiter, call the API, classify the answer, decide
//! what to do with the delivery, and settle it with the broker.
//!
//! [`crate::outcome::classify`] says what an answer means; [`decide`] turns
//! that (plus the job's attempt counts) into a [`Disposition`]; [`Pipeline::settle`]
//! is the one place that publishes, acks, nacks and emits result events.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::broker::{Publisher, Topology};
use crate::circuit::{CircuitBreaker, Signal};
use crate::headers;
use crate::job::{self, Job, Rejection, RejectionKind};
use crate::limiter::{Admission, RateControl};
use crate::metrics::{Metrics, result};
use crate::outcome::{Accepted, Failure, Outcome, classify};
use crate::retry::{Backoff, tier_for};
use crate::state::WorkerState;
use crate::telnyx::TelnyxClient;

/// Why a job was dead-lettered (`x-error-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    Validation,
    Malformed,
    Permanent,
    AttemptsExhausted,
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Validation => "validation",
            DeadReason::Malformed => "malformed",
            DeadReason::Permanent => "permanent",
            DeadReason::AttemptsExhausted => "attempts-exhausted",
            DeadReason::Expired => "expired",
        }
    }

    /// The metrics `reason` label (underscored).
    fn label(self) -> &'static str {
        match self {
            DeadReason::AttemptsExhausted => "attempts_exhausted",
            other => other.as_str(),
        }
    }
}

/// Why a job goes back to the broker to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// A transient failure: charged one attempt.
    Transient,
    /// A 429: not charged; counted in `x-rate-limit-bounces`.
    RateLimited,
    /// Its sender is paced too far behind: not charged; counted in `x-deferrals`.
    Paced,
}

/// What happens to a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Sent: publish the result event, ack.
    Ack(Accepted),
    /// Publish a delayed copy to a retry tier (confirmed), then ack.
    Retry {
        kind: RetryKind,
        delay: Duration,
        /// `x-attempts` on the copy: attempts made so far.
        attempts_made: u32,
        bounces: u32,
        deferrals: u32,
        failure: Option<Failure>,
    },
    /// Publish to the DLQ (confirmed), then ack.
    DeadLetter {
        reason: DeadReason,
        failure: Failure,
        attempts: u32,
    },
    /// Give the delivery back to the queue untouched, charging nothing.
    Requeue { halt: Option<Failure> },
}

/// What to do after an API answer. Pure: the policy for *when*, given
/// [`classify`]'s *what*.
pub fn decide(job: &Job, outcome: Outcome, backoff: &Backoff, jitter: f64) -> Disposition {
    match outcome {
        Outcome::Sent(accepted) => Disposition::Ack(accepted),
        Outcome::Reject(failure) => Disposition::DeadLetter {
            reason: DeadReason::Permanent,
            failure,
            attempts: job.attempt,
        },
        Outcome::Halt(failure) => Disposition::Requeue {
            halt: Some(failure),
        },
        Outcome::RateLimited(failure)
            if job.rate_limit_bounces < backoff.max_rate_limit_bounces =>
        {
            Disposition::Retry {
                kind: RetryKind::RateLimited,
                delay: failure.retry_after.unwrap_or(Duration::from_secs(1)),
                attempts_made: job.attempt.saturating_sub(1),
                bounces: job.rate_limit_bounces + 1,
                deferrals: job.deferrals,
                failure: Some(failure),
            }
        }
        // Too many 429 bounces: from here on a 429 costs an attempt.
        Outcome::RateLimited(failure) | Outcome::Retry(failure) => {
            if job.attempt >= backoff.max_attempts {
                Disposition::DeadLetter {
                    reason: DeadReason::AttemptsExhausted,
                    failure,
                    attempts: job.attempt,
                }
            } else {
                Disposition::Retry {
                    kind: RetryKind::Transient,
                    delay: backoff.delay(job.attempt, jitter, failure.retry_after),
                    attempts_made: job.attempt,
                    bounces: job.rate_limit_bounces,
                    deferrals: job.deferrals,
                    failure: Some(failure),
                }
            }
        }
    }
}

fn rejection_disposition(rejection: Rejection, attempts: u32) -> Disposition {
    let reason = match rejection.kind {
        RejectionKind::Malformed => DeadReason::Malformed,
        RejectionKind::Validation => DeadReason::Validation,
    };
    Disposition::DeadLetter {
        reason,
        failure: Failure {
            title: match reason {
                DeadReason::Malformed => "Malformed job".to_owned(),
                _ => "Invalid job".to_owned(),
            },
            detail: rejection.detail,
            ..Failure::default()
        },
        attempts,
    }
}

fn expired_disposition(job: &Job) -> Disposition {
    let at = job
        .deadline
        .map(|d| humantime::format_rfc3339_seconds(d).to_string())
        .unwrap_or_default();
    Disposition::DeadLetter {
        reason: DeadReason::Expired,
        failure: Failure {
            title: "Job expired".to_owned(),
            detail: format!("the job's deadline {at} passed before it could be sent"),
            ..Failure::default()
        },
        attempts: job.attempt.saturating_sub(1),
    }
}

/// A result event on the events exchange.
#[derive(Debug, Serialize)]
struct ResultEvent<'a> {
    event: &'a str,
    job_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    at: String,
}

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

    /// Carry out a disposition: publish what replaces the delivery, wait for
    /// the broker's confirm, then ack. If the publish fails, the delivery is
    /// given back to the queue instead, so nothing is lost.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        job: Option<&Job>,
        job_id: &str,
        disposition: Disposition,
    ) -> Settled {
        let t = &self.topology;
        match disposition {
            Disposition::Ack(accepted) => {
                if let Some(job) = job {
                    self.record_sent(job, &accepted);
                }
                self.event(ResultEvent {
                    event: "sent",
                    job_id,
                    message_id: accepted.message_id.as_deref(),
                    attempts: job.map_or(1, |j| j.attempt),
                    parts: accepted.parts,
                    reason: None,
                    code: None,
                    at: now_rfc3339(),
                })
                .await;
                info!(
                    message_id = accepted.message_id.as_deref().unwrap_or("-"),
                    "sent"
                );
                ack(delivery).await;
                Settled::Sent
            }
            Disposition::Retry {
                kind,
                delay,
                attempts_made,
                bounces,
                deferrals,
                failure,
            } => {
                let Some(tier) = tier_for(&t.tiers, delay) else {
                    return self
                        .give_back(delivery, "no retry tier is configured")
                        .await;
                };
                let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
                let props = copy_props(&delivery.properties).with_expiration(ms.to_string().into());
                let props = headers::with_header(
                    props,
                    headers::ATTEMPTS,
                    headers::int(u64::from(attempts_made)),
                );
                let props = headers::with_header(
                    props,
                    headers::RATE_LIMIT_BOUNCES,
                    headers::int(u64::from(bounces)),
                );
                let props = headers::with_header(
                    props,
                    headers::DEFERRALS,
                    headers::int(u64::from(deferrals)),
                );
                match self
                    .publisher
                    .publish(
                        &t.exchange,
                        &t.tier_routing_key(tier),
                        &delivery.data,
                        props,
                        true,
                    )
                    .await
                {
                    Ok(()) => {
                        let (result, reason) = match kind {
                            RetryKind::Transient => {
                                self.metrics
                                    .retries
                                    .with_label_values(&[&attempts_made.to_string()])
                                    .inc();
                                (result::RETRIED, "transient")
                            }
                            RetryKind::RateLimited => (result::RETRIED, "rate_limited"),
                            RetryKind::Paced => (result::DEFERRED, "paced"),
                        };
                        self.metrics.outcome(result, reason);
                        info!(
                            delay_ms = ms,
                            tier = %tier.label,
                            kind = ?kind,
                            error = failure.as_ref().map(describe).as_deref().unwrap_or(""),
                            "retry scheduled"
                        );
                        ack(delivery).await;
                        Settled::Retried
                    }
                    Err(e) => self.give_back(delivery, &e.to_string()).await,
                }
            }
            Disposition::DeadLetter {
                reason,
                failure,
                attempts,
            } => {
                let props = dead_letter_props(&delivery.properties, reason, &failure, attempts);
                match self
                    .publisher
                    .publish(
                        &t.exchange,
                        &t.dead_routing_key,
                        &delivery.data,
                        props,
                        true,
                    )
                    .await
                {
                    Ok(()) => {
                        let result = if reason == DeadReason::Expired {
                            result::EXPIRED
                        } else {
                            result::DEAD_LETTERED
                        };
                        self.metrics.outcome(result, reason.label());
                        warn!(reason = reason.as_str(), error = %describe(&failure), "dead-lettered");
                        self.event(ResultEvent {
                            event: "dead_lettered",
                            job_id,
                            message_id: None,
                            attempts,
                            parts: None,
                            reason: Some(reason.as_str()),
                            code: failure.code.as_deref(),
                            at: now_rfc3339(),
                        })
                        .await;
                        ack(delivery).await;
                        Settled::DeadLettered
                    }
                    Err(e) => self.give_back(delivery, &e.to_string()).await,
                }
            }
            Disposition::Requeue { halt: None } => {
                // Shutdown or halt before the job was sent. It stays unacked:
                // closing the channel at the end of the drain returns it once.
                // (A nack now would return it to this still-open consumer,
                // which would count a second redelivery against the quorum
                // queue's delivery limit.)
                self.metrics.outcome(result::REQUEUED, "shutdown");
                Settled::Requeued
            }
            Disposition::Requeue { halt: Some(_) } => {
                // A halt can last hours, and the probe takes the same jobs
                // again and again. A nack would count each return against the
                // quorum queue's delivery limit until RabbitMQ dead-lettered
                // perfectly good jobs; a fresh copy (confirmed, then ack)
                // starts its count at zero.
                let props = copy_props(&delivery.properties);
                match self
                    .publisher
                    .publish(&t.exchange, &t.routing_key, &delivery.data, props, true)
                    .await
                {
                    Ok(()) => {
                        self.metrics.outcome(result::REQUEUED, "account_halt");
                        ack(delivery).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not re-queue a halted job as a fresh copy; returning it");
                        self.metrics.outcome(result::REQUEUED, "account_halt");
                        nack_requeue(delivery).await;
                    }
                }
                Settled::Halted
            }
        }
    }

    fn record_sent(&self, job: &Job, accepted: &Accepted) {
        self.metrics.outcome(result::SENT, "ok");
        self.metrics
            .message_parts
            .inc_by(u64::from(accepted.parts.unwrap_or(job.parts)));
        if let Some(c) = &accepted.cost {
            self.metrics.cost(c.amount, &c.currency);
        }
        if let Some(at) = job.published_at
            && let Ok(age) = SystemTime::now().duration_since(at)
        {
            self.metrics.end_to_end.observe(age.as_secs_f64());
        }
    }

    async fn give_back(&self, delivery: &Delivery, why: &str) -> Settled {
        error!(
            error = why,
            "could not publish the job's replacement; returning it to the queue"
        );
        self.metrics.outcome(result::REQUEUED, "publish_failed");
        nack_requeue(delivery).await;
        Settled::Failed
    }

    /// Result events are confirmed but best-effort: a send is never repeated
    /// to make up for a lost event.
    async fn event(&self, event: ResultEvent<'_>) {
        let exchange = &self.topology.events_exchange;
        if exchange.is_empty() {
            return;
        }
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.job_id.into());
        if let Err(e) = self
            .publisher
            .publish(exchange, event.event, &body, props, false)
            .await
        {
            warn!(error = %e, event = event.event, "result event not published");
        }
    }
}

/// "403 40300 Forbidden: detail" — for logs and halt reasons; never a secret.
pub fn describe(f: &Failure) -> String {
    let mut s = String::new();
    if let Some(status) = f.status {
        s.push_str(&status.to_string());
        s.push(' ');
    }
    if let Some(code) = &f.code {
        s.push_str(code);
        s.push(' ');
    }
    s.push_str(&f.title);
    if !f.detail.is_empty() {
        s.push_str(": ");
        s.push_str(&f.detail);
    }
    s
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The delivery's properties for a re-published copy: unchanged, except that
/// a producer-set `expiration` is dropped (a copy must not expire in a queue
/// that is not the one the producer chose).
fn copy_props(p: &BasicProperties) -> BasicProperties {
    headers::copy_props(p, |_| true)
}

/// The dead-letter entry's properties: the original's, plus the x-error-* headers.
pub fn dead_letter_props(
    original: &BasicProperties,
    reason: DeadReason,
    failure: &Failure,
    attempts: u32,
) -> BasicProperties {
    let mut p = copy_props(original);
    p = headers::with_header(p, headers::ERROR_REASON, headers::string(reason.as_str()));
    p = headers::with_header(
        p,
        headers::ERROR_CODE,
        headers::string(failure.code.as_deref().unwrap_or("")),
    );
    p = headers::with_header(p, headers::ERROR_TITLE, headers::string(&failure.title));
    let detail: String = failure.detail.chars().take(1000).collect();
    p = headers::with_header(p, headers::ERROR_DETAIL, headers::string(detail));
    p = headers::with_header(
        p,
        headers::HTTP_STATUS,
        headers::int(u64::from(failure.status.unwrap_or(0))),
    );
    p = headers::with_header(p, headers::ATTEMPTS, headers::int(u64::from(attempts)));
    headers::with_header(p, headers::FAILED_AT, headers::string(now_rfc3339()))
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers the job. Its replacement
        // (if any) was already confirmed, so the worst case is a duplicate.
        warn!(error = %e, "ack failed; the broker will redeliver the job");
    }
}

async fn nack_requeue(delivery: &Delivery) {
    if let Err(e) = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
    {
        warn!(error = %e, "nack failed; the broker will redeliver the job");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{MessageKind, SenderClass};

    fn job(attempt: u32, bounces: u32) -> Job {
        Job {
            id: "j".into(),
            body: Vec::new(),
            from: Some("+15551234567".into()),
            sender: SenderClass::LongCode,
            kind: MessageKind::Sms,
            parts: 1,
            attempt,
            rate_limit_bounces: bounces,
            deferrals: 0,
            published_at: None,
            deadline: None,
        }
    }

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(300),
            max_attempts: 5,
            max_rate_limit_bounces: 3,
        }
    }

    fn failure(retry_after: Option<Duration>) -> Failure {
        Failure {
            status: Some(503),
            retry_after,
            ..Failure::default()
        }
    }

    #[test]
    fn transient_failures_retry_until_the_fifth_attempt() {
        for attempt in 1..=4 {
            match decide(
                &job(attempt, 0),
                Outcome::Retry(failure(None)),
                &backoff(),
                0.5,
            ) {
                Disposition::Retry {
                    kind,
                    delay,
                    attempts_made,
                    ..
                } => {
                    assert_eq!(kind, RetryKind::Transient);
                    assert_eq!(attempts_made, attempt);
                    assert_eq!(delay, backoff().nominal(attempt));
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        match decide(&job(5, 0), Outcome::Retry(failure(None)), &backoff(), 0.5) {
            Disposition::DeadLetter {
                reason, attempts, ..
            } => {
                assert_eq!(reason, DeadReason::AttemptsExhausted);
                assert_eq!(attempts, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = decide(
            &job(1, 0),
            Outcome::Retry(failure(Some(Duration::from_secs(40)))),
            &backoff(),
            0.0,
        );
        assert!(matches!(d, Disposition::Retry { delay, .. } if delay == Duration::from_secs(40)));
    }

    #[test]
    fn rate_limits_bounce_without_charging_until_the_cap() {
        let f = failure(Some(Duration::from_secs(2)));
        match decide(&job(2, 0), Outcome::RateLimited(f.clone()), &backoff(), 0.5) {
            Disposition::Retry {
                kind,
                delay,
                attempts_made,
                bounces,
                ..
            } => {
                assert_eq!(kind, RetryKind::RateLimited);
                assert_eq!(delay, Duration::from_secs(2));
                assert_eq!(attempts_made, 1, "the 429'd attempt is not charged");
                assert_eq!(bounces, 1);
            }
            other => panic!("{other:?}"),
        }
        match decide(&job(2, 3), Outcome::RateLimited(f.clone()), &backoff(), 0.5) {
            Disposition::Retry {
                kind,
                attempts_made,
                ..
            } => {
                assert_eq!(kind, RetryKind::Transient);
                assert_eq!(attempts_made, 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&job(5, 3), Outcome::RateLimited(f), &backoff(), 0.5),
            Disposition::DeadLetter {
                reason: DeadReason::AttemptsExhausted,
                ..
            }
        ));
    }

    #[test]
    fn permanent_halt_and_sent() {
        assert!(matches!(
            decide(&job(1, 0), Outcome::Reject(failure(None)), &backoff(), 0.5),
            Disposition::DeadLetter {
                reason: DeadReason::Permanent,
                attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            decide(&job(3, 0), Outcome::Halt(failure(None)), &backoff(), 0.5),
            Disposition::Requeue { halt: Some(_) }
        ));
        assert!(matches!(
            decide(
                &job(1, 0),
                Outcome::Sent(Accepted::default()),
                &backoff(),
                0.5
            ),
            Disposition::Ack(_)
        ));
    }

    #[test]
    fn dead_letter_entries_keep_the_original_properties() {
        let original = BasicProperties::default()
            .with_message_id("job-9".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_expiration("60000".into());
        let original = headers::with_header(original, "x-tenant", headers::string("acme"));
        let f = Failure {
            status: Some(403),
            code: Some("40300".into()),
            title: "Forbidden".into(),
            detail: "blocked".into(),
            retry_after: None,
        };
        let p = dead_letter_props(&original, DeadReason::Permanent, &f, 1);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "job-9");
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(p.expiration(), &None, "must not expire in the DLQ");
        let h = |n| headers::get_string(&p, n).unwrap();
        assert_eq!(h("x-tenant"), "acme");
        assert_eq!(h(headers::ERROR_REASON), "permanent");
        assert_eq!(h(headers::ERROR_CODE), "40300");
        assert_eq!(h(headers::ERROR_TITLE), "Forbidden");
        assert_eq!(h(headers::ERROR_DETAIL), "blocked");
        assert_eq!(headers::get_u32(&p, headers::HTTP_STATUS), Some(403));
        assert_eq!(headers::get_u32(&p, headers::ATTEMPTS), Some(1));
        assert!(job::parse_deadline(&h(headers::FAILED_AT)).is_some());
    }

    #[test]
    fn describe_never_needs_the_key() {
        let f = Failure {
            status: Some(401),
            code: Some("10009".into()),
            title: "Authentication failed".into(),
            detail: "".into(),
            retry_after: None,
        };
        assert_eq!(describe(&f), "401 10009 Authentication failed");
    }
}
