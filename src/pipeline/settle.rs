//! Carrying out a [`Disposition`]: the one place that publishes, acks and
//! emits result events. A replacement (retry copy, dead-letter entry) is
//! confirmed by the broker before the original is acked. If the broker does
//! not take the replacement (or the ack), the delivery is left unacked, the
//! decision goes into the [`ledger`](super::ledger), and the session
//! reconnects: the broker returns the job, and it is settled again from the
//! same decision — never an immediate redelivery and a second API call.
//! Result events go out after the ack, through the [`Outbox`](crate::amqp::Outbox).

use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::decide::{DeadReason, Disposition, RetryKind};
use super::ledger::Entry;
use super::{JobSignals, Pipeline, Progress, Settled};
use crate::amqp::headers;
use crate::amqp::outbox::Event;
use crate::contract::{DeadLetterHeaders, EventKind, ResultEvent};
use crate::job::Job;
use crate::ops::metrics::result;
use crate::retry::tier_for;
use crate::telnyx::{Accepted, Failure};

impl Pipeline {
    /// Carry out a disposition: publish what replaces the delivery, wait for
    /// the broker's confirm, then ack. If the broker does not take it, the
    /// delivery stays unacked and the session reconnects (see the module docs).
    pub async fn settle(
        &self,
        delivery: &Delivery,
        job: Option<&Job>,
        job_id: &str,
        disposition: Disposition,
        signals: &JobSignals,
        progress: &Progress,
    ) -> Settled {
        progress.start_settling();
        let t = &self.topology;
        match disposition {
            Disposition::Ack(accepted) => {
                if let Some(job) = job {
                    self.record_sent(job, &accepted);
                }
                // Per-job success is a debug line: the counters carry it,
                // and an info line per job costs more than the rest of its
                // handling (BENCHMARKS.md, "Throughput").
                debug!(
                    message_id = accepted.message_id.as_deref().unwrap_or("-"),
                    "sent"
                );
                if !self.ack(delivery, job_id, signals).await {
                    return Settled::Failed;
                }
                self.event(ResultEvent {
                    event: EventKind::Sent,
                    job_id,
                    message_id: accepted.message_id.as_deref(),
                    attempts: job.map_or(1, |j| j.attempt),
                    parts: accepted.parts,
                    reason: None,
                    code: None,
                    at: now_rfc3339(),
                });
                Settled::Sent
            }
            Disposition::Suppressed(accepted) => {
                // Sent before: only the ack is missing. The result event goes
                // out again (a consumer may have missed the first).
                if !self.ack(delivery, job_id, signals).await {
                    return Settled::Failed;
                }
                self.metrics.outcome(result::SUPPRESSED, "duplicate");
                self.event(ResultEvent {
                    event: EventKind::Sent,
                    job_id,
                    message_id: accepted.message_id.as_deref(),
                    attempts: job.map_or(1, |j| j.attempt.saturating_sub(1).max(1)),
                    parts: accepted.parts,
                    reason: None,
                    code: None,
                    at: now_rfc3339(),
                });
                Settled::Suppressed
            }
            Disposition::Retry {
                kind,
                delay,
                attempts_made,
                bounces,
                deferrals,
                ref failure,
            } => {
                let Some(tier) = tier_for(&t.tiers, delay) else {
                    return self
                        .unsettled(
                            job_id,
                            disposition.clone(),
                            "no retry tier is configured",
                            signals,
                        )
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
                let key = t.tier_routing_key(tier);
                if let Err(unsettled) = self
                    .replace(delivery, &key, props, job_id, &disposition, signals)
                    .await
                {
                    return unsettled;
                }
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
                    RetryKind::Leased => (result::DEFERRED, "leased"),
                };
                self.metrics.outcome(result, reason);
                info!(
                    delay_ms = ms,
                    tier = %tier.label,
                    kind = ?kind,
                    error = failure.as_ref().map(describe).as_deref().unwrap_or(""),
                    "retry scheduled"
                );
                if !self.ack(delivery, job_id, signals).await {
                    return Settled::Failed;
                }
                Settled::Retried
            }
            Disposition::DeadLetter {
                reason,
                ref failure,
                attempts,
            } => {
                let props = dead_letter_props(&delivery.properties, reason, failure, attempts);
                let key = &t.amqp.dead_routing_key;
                if let Err(unsettled) = self
                    .replace(delivery, key, props, job_id, &disposition, signals)
                    .await
                {
                    return unsettled;
                }
                let result = if reason == DeadReason::Expired {
                    result::EXPIRED
                } else {
                    result::DEAD_LETTERED
                };
                self.metrics.outcome(result, reason.label());
                warn!(reason = reason.as_str(), error = %describe(failure), "dead-lettered");
                if !self.ack(delivery, job_id, signals).await {
                    return Settled::Failed;
                }
                if job.is_some()
                    && let Err(e) = self.store.dead_lettered(job_id, reason.as_str()).await
                {
                    warn!(error = %e, "the job store did not record the dead letter (status only)");
                }
                self.event(ResultEvent {
                    event: EventKind::DeadLettered,
                    job_id,
                    message_id: None,
                    attempts,
                    parts: None,
                    reason: Some(reason),
                    code: failure.code.as_deref(),
                    at: now_rfc3339(),
                });
                Settled::DeadLettered
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
                // starts its count at zero. If the copy cannot be published
                // the delivery stays unacked: the session ends with the halt
                // and the channel close returns it.
                self.metrics.outcome(result::REQUEUED, "account_halt");
                let props = copy_props(&delivery.properties);
                match self
                    .publisher
                    .publish(
                        &t.amqp.exchange,
                        &t.amqp.routing_key,
                        &delivery.data,
                        props,
                        true,
                    )
                    .await
                {
                    Ok(()) => {
                        self.ack(delivery, job_id, signals).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not re-queue a halted job as a fresh copy; the broker returns it");
                    }
                }
                Settled::Halted
            }
        }
    }

    /// A redelivery of a job that was already settled (its ack was lost):
    /// ack it, and nothing else.
    pub(super) async fn ack_settled(
        &self,
        delivery: &Delivery,
        job_id: &str,
        signals: &JobSignals,
    ) -> Settled {
        if self.ack(delivery, job_id, signals).await {
            self.metrics.outcome(result::SUPPRESSED, "duplicate");
            Settled::Suppressed
        } else {
            Settled::Failed
        }
    }

    fn record_sent(&self, job: &Job, accepted: &Accepted) {
        self.metrics.outcome(result::SENT, "ok");
        let mms = matches!(job.kind, crate::job::MessageKind::Mms);
        self.metrics.sent(job.sender.as_str(), mms);
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

    /// Publish the delivery's replacement (a retry copy or a dead letter) to
    /// `routing_key`, mandatory and confirmed, before anything is acked.
    /// `Err`: the broker did not take it, and this is the settlement.
    async fn replace(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        props: BasicProperties,
        job_id: &str,
        disposition: &Disposition,
        signals: &JobSignals,
    ) -> Result<(), Settled> {
        let exchange = &self.topology.amqp.exchange;
        match (self.publisher)
            .publish(exchange, routing_key, &delivery.data, props, true)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .unsettled(job_id, disposition.clone(), &e.to_string(), signals)
                .await),
        }
    }

    /// The broker did not take the replacement: remember the decision, leave
    /// the delivery unacked, and have the session reconnect.
    async fn unsettled(
        &self,
        job_id: &str,
        disposition: Disposition,
        why: &str,
        signals: &JobSignals,
    ) -> Settled {
        error!(
            error = why,
            "the broker did not take the job's replacement; reconnecting, and the job will be \
             settled again from this decision"
        );
        self.metrics.outcome(result::REQUEUED, "publish_failed");
        self.ledger.record(
            job_id,
            Entry::Decided {
                disposition,
                decided_at: Instant::now(),
            },
        );
        signals.fault.cancel();
        Settled::Failed
    }

    /// Ack; on success the job is settled and the ledger forgets it. A failed
    /// ack means the channel is gone: the broker returns the job, and the
    /// ledger says it needs nothing but an ack.
    async fn ack(&self, delivery: &Delivery, job_id: &str, signals: &JobSignals) -> bool {
        let acked = delivery.acker.ack(BasicAckOptions::default()).await;
        match acked {
            Ok(true) => {
                self.ledger.forget(job_id);
                true
            }
            Ok(false) | Err(_) => {
                let e = acked
                    .err()
                    .map_or_else(|| "the channel is gone".to_owned(), |e| e.to_string());
                warn!(error = %e, "ack failed; the broker will return the job, which is settled already");
                self.ledger.record(job_id, Entry::Settled);
                signals.fault.cancel();
                false
            }
        }
    }

    /// Result events are best-effort: queued for the outbox after the ack,
    /// and a lost one never causes a re-send.
    fn event(&self, event: ResultEvent<'_>) {
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.job_id.into());
        self.outbox.send(Event {
            routing_key: event.event.routing_key().to_owned(),
            body,
            properties,
        });
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
    DeadLetterHeaders::new(reason, failure, attempts, SystemTime::now()).apply(copy_props(original))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ..Failure::default()
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
        assert!(crate::job::parse_deadline(&h(headers::FAILED_AT)).is_some());
    }

    #[test]
    fn describe_never_needs_the_key() {
        let f = Failure {
            status: Some(401),
            code: Some("10009".into()),
            title: "Authentication failed".into(),
            detail: "".into(),
            retry_after: None,
            ..Failure::default()
        };
        assert_eq!(describe(&f), "401 10009 Authentication failed");
    }
}
