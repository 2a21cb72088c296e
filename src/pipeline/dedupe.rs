//! Duplicate suppression at the one place a send is decided: before the API
//! call the job store is asked ([`Pipeline::lease`]), after the answer it is
//! told what happened ([`Pipeline::record_outcome`]). The store's answers map
//! onto dispositions here, so `settle` needs to know nothing about it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{error, info, warn};

use super::decide::{DeadReason, Disposition, RetryKind};
use super::{JobSignals, Pipeline};
use crate::config::OnUnknown;
use crate::job::Job;
use crate::store::{Begin, Sent, now_ms};
use crate::telnyx::{Accepted, Cost, Failure};

/// While the store is down, a job asks it again this often.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// A job put back because another worker holds its lease waits at least this.
const MIN_LEASE_WAIT: Duration = Duration::from_millis(500);

/// What the store lets this attempt do.
pub(super) enum Lease {
    /// Send: the lease is `owner`'s (None when the store is off or failed open).
    Go { owner: Option<String> },
    /// Do not send; settle this instead.
    Done(Disposition),
}

impl Pipeline {
    /// Take the lease on `job` for this attempt, or say what to do instead.
    /// While the store cannot be reached, wait for it (fail closed), unless
    /// `dedupe.fail_open`.
    pub(super) async fn lease(&self, job: &mut Job, signals: &JobSignals) -> Lease {
        if !self.store.enabled() {
            return Lease::Go { owner: None };
        }
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let begin = loop {
            match self.store.begin(&job.id, &owner, self.lease).await {
                Ok(b) => {
                    if self.state.store_unavailable().is_some() {
                        info!("the job store answers again; sending resumes");
                        self.state.set_store_unavailable(None);
                    }
                    break b;
                }
                Err(e) if self.fail_open => {
                    if !self.fail_open_logged.swap(true, Ordering::Relaxed) {
                        error!(error = %e, "the job store is unreachable; dedupe.fail_open: sending WITHOUT duplicate suppression");
                    }
                    return Lease::Go { owner: None };
                }
                Err(e) => {
                    if self.state.store_unavailable().is_none() {
                        error!(error = %e, "the job store is unreachable; sending pauses until it answers");
                    }
                    self.state.set_store_unavailable(Some(e.to_string()));
                    tokio::select! {
                        _ = signals.cancel.cancelled() => {
                            return Lease::Done(Disposition::Requeue { halt: None });
                        }
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
            }
        };
        let recorded = match begin {
            Begin::Fresh { attempts } => attempts,
            Begin::Sent(sent) => {
                info!("already sent (the store says so): not sending it again");
                return Lease::Done(Disposition::Suppressed(accepted_from(&sent)));
            }
            Begin::Leased { left } => {
                info!(
                    wait_ms = left.as_millis() as u64,
                    "another worker holds this job's lease; putting it back"
                );
                return Lease::Done(Disposition::Retry {
                    kind: RetryKind::Leased,
                    delay: left.max(MIN_LEASE_WAIT),
                    attempts_made: job.attempt.saturating_sub(1),
                    bounces: job.rate_limit_bounces,
                    deferrals: job.deferrals,
                    failure: None,
                });
            }
            Begin::Unknown { attempts } => match self.on_unknown {
                OnUnknown::Send => {
                    warn!(
                        "a lease ran out with no outcome recorded: the job may have been sent; sending it again (dedupe.on_unknown = send)"
                    );
                    self.metrics
                        .dedupe_unknown
                        .with_label_values(&["send"])
                        .inc();
                    attempts
                }
                OnUnknown::DeadLetter => {
                    self.metrics
                        .dedupe_unknown
                        .with_label_values(&["dead_letter"])
                        .inc();
                    return Lease::Done(unknown_disposition(
                        job,
                        "a worker's lease on this job ran out with no outcome recorded (it died or lost the job store while the request was in flight); the message may have been sent",
                    ));
                }
            },
        };
        // Attempts an earlier worker made that the headers do not show (its
        // retry copy was refused): they still count.
        if recorded >= job.attempt {
            job.attempt = recorded.saturating_add(1);
        }
        if job.attempt > self.backoff.max_attempts {
            self.release(job, &owner, recorded, false).await;
            return Lease::Done(Disposition::DeadLetter {
                reason: DeadReason::AttemptsExhausted,
                failure: Failure {
                    title: "Attempts exhausted".to_owned(),
                    detail: format!(
                        "{recorded} attempts were already made (recorded by the job store)"
                    ),
                    ..Failure::default()
                },
                attempts: recorded,
            });
        }
        Lease::Go { owner: Some(owner) }
    }

    /// Tell the store what the attempt did: sent (recorded before the ack),
    /// or not sent (the lease is released, with the attempts made).
    pub(super) async fn record_outcome(&self, job: &Job, owner: &str, d: &Disposition) {
        match d {
            Disposition::Ack(a) => {
                let sent = Sent {
                    message_id: a.message_id.clone(),
                    sent_at_ms: now_ms(),
                    parts: a.parts,
                    cost: a.cost.as_ref().map(|c| c.amount.to_string()),
                    currency: a.cost.as_ref().map(|c| c.currency.clone()),
                };
                // A few quick tries: a send that is not recorded is a send
                // that a crash before the ack could repeat.
                for attempt in 1..=3 {
                    match self.store.sent(&job.id, &sent).await {
                        Ok(()) => return,
                        Err(e) if attempt == 3 => {
                            error!(error = %e, "sent, but the job store did not record it; a redelivery before the ack could send it again");
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            Disposition::Retry {
                attempts_made,
                failure,
                ..
            } => {
                let maybe = failure.as_ref().is_some_and(|f| f.maybe_accepted);
                self.release(job, owner, *attempts_made, maybe).await;
            }
            Disposition::DeadLetter {
                attempts, failure, ..
            } => {
                self.release(job, owner, *attempts, failure.maybe_accepted)
                    .await;
            }
            Disposition::Requeue { .. } | Disposition::Suppressed(_) => {
                self.release(job, owner, job.attempt.saturating_sub(1), false)
                    .await;
            }
        }
    }

    async fn release(&self, job: &Job, owner: &str, attempts: u32, maybe_sent: bool) {
        if let Err(e) = self
            .store
            .release(&job.id, owner, attempts, maybe_sent)
            .await
        {
            warn!(error = %e, "could not release the job's lease; it runs out by itself");
        }
    }
}

/// The dead-letter disposition for an unknown outcome.
pub(super) fn unknown_disposition(job: &Job, detail: &str) -> Disposition {
    Disposition::DeadLetter {
        reason: DeadReason::UnknownOutcome,
        failure: Failure {
            title: "Outcome unknown".to_owned(),
            detail: detail.to_owned(),
            ..Failure::default()
        },
        attempts: job.attempt.saturating_sub(1),
    }
}

/// What the store recorded for a sent job, as an acceptance.
fn accepted_from(s: &Sent) -> Accepted {
    Accepted {
        message_id: s.message_id.clone(),
        parts: s.parts,
        cost: s
            .cost
            .as_deref()
            .and_then(|c| c.parse::<f64>().ok())
            .map(|amount| Cost {
                amount,
                currency: s.currency.clone().unwrap_or_else(|| "USD".to_owned()),
            }),
    }
}
