//! *What to do* with a job, given what happened to it: [`decide`] turns
//! [`classify`]'s answer (plus the job's attempt counts) into a
//! [`Disposition`]. Pure: no I/O, no clock, jitter passed in.

use std::time::Duration;

use crate::config::OnUnknown;
use crate::job::{Job, Rejection, RejectionKind};
use crate::retry::Backoff;
use crate::telnyx::{Accepted, Failure, Outcome};

/// Why a job was dead-lettered: its DLQ entry's `x-error-reason` and its
/// `dead_lettered` event's `reason`.
// Serialized (schema/) by the same names as `as_str`; tests/contract.rs checks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DeadReason {
    Validation,
    Malformed,
    Permanent,
    AttemptsExhausted,
    Expired,
    /// Handling the job panicked (a bug in the worker): settled here
    /// instead of being held unacked.
    Internal,
    /// It may have been sent (a worker died with its request in flight, or
    /// the request timed out) and `dedupe.on_unknown` is `dead-letter`.
    UnknownOutcome,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Validation => "validation",
            DeadReason::Malformed => "malformed",
            DeadReason::Permanent => "permanent",
            DeadReason::AttemptsExhausted => "attempts-exhausted",
            DeadReason::Expired => "expired",
            DeadReason::Internal => "internal",
            DeadReason::UnknownOutcome => "unknown-outcome",
        }
    }

    /// The metrics `reason` label (underscored).
    pub(super) fn label(self) -> &'static str {
        match self {
            DeadReason::AttemptsExhausted => "attempts_exhausted",
            DeadReason::UnknownOutcome => "unknown_outcome",
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
    /// Another worker holds its lease (it may be sending it): not charged.
    Leased,
}

/// What happens to a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Sent: publish the result event, ack.
    Ack(Accepted),
    /// Sent before (the job store says so): ack without sending, and
    /// publish its result event again.
    Suppressed(Accepted),
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
pub fn decide(
    job: &Job,
    outcome: Outcome,
    backoff: &Backoff,
    on_unknown: OnUnknown,
    jitter: f64,
) -> Disposition {
    match outcome {
        Outcome::Sent(accepted) => Disposition::Ack(accepted),
        // A timeout: the API may have accepted it, and a retry could send
        // it twice. With `dedupe.on_unknown = "dead-letter"` it is not retried.
        Outcome::Retry(failure)
            if failure.maybe_accepted && on_unknown == OnUnknown::DeadLetter =>
        {
            Disposition::DeadLetter {
                reason: DeadReason::UnknownOutcome,
                failure,
                attempts: job.attempt,
            }
        }
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
                delay: failure
                    .retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(backoff.max_retry_after),
                attempts_made: job.attempt.saturating_sub(1),
                bounces: job.rate_limit_bounces.saturating_add(1),
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

/// A job refused before any API call: dead-lettered with the rejection as
/// its reason (`malformed` or `validation`) and detail.
pub fn rejection_disposition(rejection: Rejection, attempts: u32) -> Disposition {
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

pub(super) fn expired_disposition(job: &Job) -> Disposition {
    let at = job
        .deadline
        .map(crate::job::time::rfc3339)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{MessageKind, SenderClass};

    fn job(attempt: u32, bounces: u32) -> Job {
        Job {
            id: "j".into(),
            body: bytes::Bytes::new(),
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
            max_rate_limit_bounces: 3,
            ..Backoff::shipped()
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
                OnUnknown::Send,
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
        match decide(
            &job(5, 0),
            Outcome::Retry(failure(None)),
            &backoff(),
            OnUnknown::Send,
            0.5,
        ) {
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
            OnUnknown::Send,
            0.0,
        );
        assert!(matches!(d, Disposition::Retry { delay, .. } if delay == Duration::from_secs(40)));
    }

    #[test]
    fn rate_limits_bounce_without_charging_until_the_cap() {
        let f = failure(Some(Duration::from_secs(2)));
        match decide(
            &job(2, 0),
            Outcome::RateLimited(f.clone()),
            &backoff(),
            OnUnknown::Send,
            0.5,
        ) {
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
        match decide(
            &job(2, 3),
            Outcome::RateLimited(f.clone()),
            &backoff(),
            OnUnknown::Send,
            0.5,
        ) {
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
            decide(
                &job(5, 3),
                Outcome::RateLimited(f),
                &backoff(),
                OnUnknown::Send,
                0.5
            ),
            Disposition::DeadLetter {
                reason: DeadReason::AttemptsExhausted,
                ..
            }
        ));
    }

    #[test]
    fn absurd_retry_afters_are_cut_to_the_caps() {
        // A day-long 429: the job waits at most limiter.max_pause_secs.
        let day = failure(Some(Duration::from_secs(86_400)));
        match decide(
            &job(1, 0),
            Outcome::RateLimited(day.clone()),
            &backoff(),
            OnUnknown::Send,
            0.5,
        ) {
            Disposition::Retry { kind, delay, .. } => {
                assert_eq!(kind, RetryKind::RateLimited);
                assert_eq!(delay, backoff().max_retry_after);
            }
            other => panic!("{other:?}"),
        }
        // An hour-long 503: at most retry.cap_ms, so it fits the top tier.
        match decide(
            &job(1, 0),
            Outcome::Retry(day),
            &backoff(),
            OnUnknown::Send,
            0.5,
        ) {
            Disposition::Retry { delay, .. } => assert_eq!(delay, backoff().cap),
            other => panic!("{other:?}"),
        }
        // Counters at their maximum saturate instead of overflowing.
        let mut j = job(1, u32::MAX);
        j.deferrals = u32::MAX;
        let b = Backoff {
            max_rate_limit_bounces: u32::MAX,
            ..backoff()
        };
        assert!(matches!(
            decide(
                &j,
                Outcome::RateLimited(failure(None)),
                &b,
                OnUnknown::Send,
                0.5
            ),
            Disposition::Retry {
                kind: RetryKind::Transient,
                ..
            }
        ));
    }

    #[test]
    fn permanent_halt_and_sent() {
        assert!(matches!(
            decide(
                &job(1, 0),
                Outcome::Reject(failure(None)),
                &backoff(),
                OnUnknown::Send,
                0.5
            ),
            Disposition::DeadLetter {
                reason: DeadReason::Permanent,
                attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            decide(
                &job(3, 0),
                Outcome::Halt(failure(None)),
                &backoff(),
                OnUnknown::Send,
                0.5
            ),
            Disposition::Requeue { halt: Some(_) }
        ));
        assert!(matches!(
            decide(
                &job(1, 0),
                Outcome::Sent(Accepted::default()),
                &backoff(),
                OnUnknown::Send,
                0.5
            ),
            Disposition::Ack(_)
        ));
    }
}
