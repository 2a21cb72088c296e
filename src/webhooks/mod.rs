//! The Telnyx webhook intake: `POST /webhooks/telnyx`, served by the
//! worker's HTTP server (`send-worker run`) or alone (`send-worker
//! webhooks`). Each request is, in order:
//!
//! 1. read (at most `webhooks.max_body_bytes`) and verified
//!    ([`signature`]: Ed25519 over `"{timestamp}|{body}"`, a fresh timestamp);
//! 2. read as a Telnyx event ([`event`]); types other than `message.sent`,
//!    `message.finalized` and `message.received` are answered 200 unpublished;
//! 3. claimed by its event id ([`seen`]): a repeat is answered 200 unpublished;
//! 4. correlated: the message id's job id, from the job store;
//! 5. published to `amqp.events_exchange` with the event type as routing key
//!    ([`crate::contract::DeliveryEvent`]), with a confirm ([`broker`]);
//! 6. marked published, recorded in the job store (for `send-worker status`)
//!    and counted ([`crate::ops::receipts`]).
//!
//! Every rejection is the same 400, whichever check failed. Anything not
//! confirmed within `webhooks.answer_within_ms` (the broker, Redis) is a 503,
//! and the claim is dropped, so Telnyx's retry publishes the event.

pub mod broker;
pub mod event;
pub mod seen;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lapin::BasicProperties;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{ConfigError, Settings, invalid};
use crate::contract::{DeliveryEvent, DeliveryEventKind};
use crate::ops::metrics::Metrics;
use crate::store::{Delivery, JobRecord, Store, StoreError, now_ms};
use broker::Link;
use event::{Notice, Parsed};
use seen::{Claim, Seen};
use signature::Verifier;

/// The intake's path.
pub const PATH: &str = "/webhooks/telnyx";

/// The intake; cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    verifier: Verifier,
    seen: Seen,
    link: Link,
    store: Store,
    metrics: Metrics,
    max_body: usize,
    budget: Duration,
}

/// How a request was answered.
enum Answer {
    Ok,
    Rejected(&'static str),
    Unavailable,
}

impl Intake {
    /// The intake `settings` describe, or `None` when `webhooks.public_key`
    /// is empty (the endpoint is then not served: 404). `store` correlates
    /// message ids with job ids; `redis` (when set) holds the event ids.
    pub fn from_settings(
        settings: &Settings,
        store: Store,
        redis: Option<crate::redis::Redis>,
        metrics: Metrics,
    ) -> Result<Option<Intake>, ConfigError> {
        let w = &settings.webhooks;
        if w.public_key.is_empty() {
            return Ok(None);
        }
        let key = signature::parse_public_key(w.public_key.expose())
            .map_err(|why| invalid("webhooks.public_key", why))?;
        let a = &settings.amqp;
        Ok(Some(Intake {
            inner: Arc::new(Inner {
                verifier: Verifier::new(key, Duration::from_secs(w.tolerance_secs)),
                seen: Seen::new(
                    redis,
                    Duration::from_secs(w.dedupe_ttl_secs),
                    w.memory_max_entries,
                ),
                link: Link::new(
                    a.url.clone(),
                    a.events_exchange.clone(),
                    a.declare_topology,
                    Duration::from_millis(w.answer_within_ms),
                ),
                store,
                metrics,
                max_body: w.max_body_bytes,
                budget: Duration::from_millis(w.answer_within_ms),
            }),
        }))
    }

    /// `POST /webhooks/telnyx`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(PATH, post(telnyx))
            .with_state(self.clone())
    }

    /// Where event ids are remembered: `redis` or `memory`.
    pub fn dedupe_backend(&self) -> &'static str {
        self.inner.seen.backend_name()
    }
}

async fn telnyx(State(intake): State<Intake>, req: Request) -> Response {
    let deadline = Instant::now() + intake.inner.budget;
    let (parts, body) = req.into_parts();
    match intake.handle(&parts.headers, body, deadline).await {
        Answer::Ok => (StatusCode::OK, "ok\n").into_response(),
        Answer::Rejected(cause) => {
            intake
                .inner
                .metrics
                .receipts
                .rejections
                .with_label_values(&[cause])
                .inc();
            debug!(cause, "webhook rejected");
            (StatusCode::BAD_REQUEST, "rejected\n").into_response()
        }
        Answer::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n").into_response(),
    }
}

/// How long a failed request waits for its claim to be dropped (past the
/// budget: a 503 that leaves the claim would make Telnyx's retry wait for
/// it to run out).
const RELEASE_WAIT: Duration = Duration::from_millis(300);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Intake {
    async fn handle(&self, headers: &HeaderMap, body: Body, deadline: Instant) -> Answer {
        let i = &self.inner;
        let body =
            match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, i.max_body)).await {
                Ok(Ok(body)) => body,
                Ok(Err(_)) => return Answer::Rejected("too_large"),
                // Not received within the budget (a client that stalls).
                Err(_) => return Answer::Rejected("malformed"),
            };
        let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
        if let Err(r) = i.verifier.verify(
            header(signature::TIMESTAMP_HEADER),
            header(signature::SIGNATURE_HEADER),
            &body,
            now_secs(),
        ) {
            return Answer::Rejected(r.label());
        }
        let notice = match event::parse(&body) {
            Ok(Parsed::Notice(n)) => n,
            Ok(Parsed::Other) => {
                self.count("other", "ignored");
                return Answer::Ok;
            }
            Err(e) => {
                debug!(error = %e, "webhook rejected");
                return Answer::Rejected("malformed");
            }
        };
        let kind = notice.kind.routing_key();
        let claim = tokio::time::timeout_at(deadline, i.seen.claim(&notice.event_id));
        let token = match claim.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "no answer within webhooks.answer_within_ms".into(),
            ))
        }) {
            Ok(Claim::Fresh(token)) => token,
            Ok(Claim::Done) => {
                self.count(kind, "duplicate");
                return Answer::Ok;
            }
            Ok(Claim::Busy) => {
                self.count(kind, "busy");
                return Answer::Unavailable;
            }
            Err(e) => {
                warn!(error = %e, "webhook: cannot reach the event dedupe store; answering 503");
                self.count(kind, "unavailable");
                return Answer::Unavailable;
            }
        };
        match self.publish(&notice, deadline).await {
            Ok((job_id, record)) => {
                self.count(kind, "published");
                // Published: the answer is 200 whatever follows. Marking the
                // id and recording the receipt get the rest of the budget and
                // finish in the background if they need longer (until then,
                // a retry finds the claim and is asked to come back).
                let me = self.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = me.inner.seen.done(&notice.event_id).await {
                        warn!(error = %e, event_id = %notice.event_id,
                            "webhook published but not marked; a retry after the claim runs out publishes it again");
                    }
                    me.after(&notice, job_id.as_deref(), record.as_ref()).await;
                });
                let _ = tokio::time::timeout_at(deadline, task).await;
                Answer::Ok
            }
            Err(why) => {
                warn!(event_id = %notice.event_id, event = kind, %why,
                    "webhook not published; answering 503 so that Telnyx retries");
                let release = i.seen.release(&notice.event_id, &token);
                match tokio::time::timeout(RELEASE_WAIT, release).await {
                    Ok(Ok(())) => {}
                    _ => warn!("webhook claim not released; it runs out by itself"),
                }
                self.count(kind, "unavailable");
                Answer::Unavailable
            }
        }
    }

    fn count(&self, event: &str, result: &str) {
        self.inner
            .metrics
            .receipts
            .events
            .with_label_values(&[event, result])
            .inc();
    }

    /// Correlate, build the envelope and publish it (confirmed by
    /// `deadline`). The job id and its record, when known.
    async fn publish(
        &self,
        n: &Notice,
        deadline: Instant,
    ) -> Result<(Option<String>, Option<JobRecord>), String> {
        let i = &self.inner;
        let late = || "the job store did not answer within webhooks.answer_within_ms".to_owned();
        let job_id = match (&n.message_id, n.kind) {
            (_, DeliveryEventKind::Received) | (None, _) => None,
            (Some(mid), _) => tokio::time::timeout_at(deadline, i.store.job_for_message(mid))
                .await
                .map_err(|_| late())?
                .map_err(|e| e.to_string())?,
        };
        // Only for the delivery time and the store's receipt: not worth a 503.
        let record = match &job_id {
            Some(job) => tokio::time::timeout_at(deadline, i.store.lookup(job))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            None => None,
        };
        let envelope = DeliveryEvent {
            event: n.kind,
            event_id: n.event_id.clone(),
            job_id: job_id.clone(),
            message_id: n.message_id.clone(),
            status: n.status.clone(),
            code: n.errors.first().and_then(|e| e.code.clone()),
            occurred_at: n.occurred_at.clone(),
            received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            webhook: n.body.clone(),
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
        let props = BasicProperties::default()
            .with_message_id(n.event_id.as_str().into())
            .with_type(n.kind.routing_key().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(now_secs());
        i.link
            .publish(n.kind.routing_key(), &body, props, deadline)
            .await
            .map_err(|e| e.to_string())?;
        debug!(event_id = %n.event_id, event = n.kind.routing_key(),
            status = n.status.as_deref().unwrap_or(""), job_id = job_id.as_deref().unwrap_or(""),
            "webhook published");
        Ok((job_id, record))
    }

    /// After the publish: the store's delivery record and the metrics.
    async fn after(&self, n: &Notice, job_id: Option<&str>, record: Option<&JobRecord>) {
        let i = &self.inner;
        let final_ms = n
            .occurred_at
            .as_deref()
            .and_then(crate::job::time::parse_rfc3339)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or_else(now_ms);
        let first_error = n.errors.first();
        if n.kind == DeliveryEventKind::Finalized {
            let code = event::code_label(first_error.and_then(|e| e.code.as_deref()));
            i.metrics
                .receipts
                .outcomes
                .with_label_values(&[event::status_label(n.status.as_deref()), &code])
                .inc();
            if let Some(sent_at) = record.and_then(|r| r.sent.as_ref()).map(|s| s.sent_at_ms)
                && let Some(ms) = final_ms.checked_sub(sent_at)
            {
                i.metrics.receipts.seconds.observe(ms as f64 / 1000.0);
            }
        }
        let Some(job) = job_id else { return };
        if n.kind == DeliveryEventKind::Received {
            return;
        }
        let already_final = record
            .and_then(|r| r.delivery.as_ref())
            .is_some_and(|d| event::is_final(&d.status));
        if n.kind == DeliveryEventKind::Sent && already_final {
            // A late message.sent never hides the final status.
            return;
        }
        let detail = first_error.and_then(|e| match (&e.title, &e.detail) {
            (Some(t), Some(d)) => Some(format!("{t}: {d}")),
            (t, d) => t.clone().or_else(|| d.clone()),
        });
        let delivery = Delivery {
            status: n.status.clone().unwrap_or_else(|| match n.kind {
                DeliveryEventKind::Sent => "sent".to_owned(),
                _ => "unknown".to_owned(),
            }),
            code: first_error.and_then(|e| e.code.clone()),
            detail,
            at_ms: final_ms,
        };
        if let Err(e) = i.store.record_delivery(job, &delivery).await {
            warn!(error = %e, "webhook: the delivery was published but not recorded in the job store");
        }
    }
}
