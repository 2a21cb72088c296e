//! Result events: what the worker publishes on the events exchange
//! (`amqp.events_exchange`) once a job is settled, one JSON object per job,
//! with the event's name as the routing key. The pipeline builds
//! [`ResultEvent`] (`pipeline::settle`); `schema/result-event.json` is
//! generated from it.
//!
//! The set grows: new kinds (webhook delivery events, say) are new
//! [`EventKind`] variants, so the schema, the AsyncAPI document and their
//! tests follow.

use schemars::JsonSchema;
use serde::Serialize;

use crate::pipeline::DeadReason;

/// What happened to the job; also the event's routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The API accepted the message (2xx); the job was acked.
    Sent,
    /// The job went to the dead-letter queue (see `reason`).
    DeadLettered,
}

impl EventKind {
    /// Every kind, in schema order.
    pub const ALL: [EventKind; 2] = [EventKind::Sent, EventKind::DeadLettered];

    /// The routing key on the events exchange (the serialized name).
    pub fn routing_key(self) -> &'static str {
        match self {
            EventKind::Sent => "sent",
            EventKind::DeadLettered => "dead_lettered",
        }
    }
}

/// A result event: `{event, job_id, message_id, attempts, parts, reason,
/// code, at}`. Best-effort: a lost event never causes a re-send. Its AMQP
/// properties: `message_id` the job id, persistent, application/json.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(
    title = "Result event",
    extend("allOf" = [{
        "description": "a dead_lettered event says why",
        "if": {"properties": {"event": {"const": "dead_lettered"}}},
        "then": {"required": ["reason"]}
    }])
)]
pub struct ResultEvent<'a> {
    pub event: EventKind,
    /// The job id (the job's AMQP `message_id`).
    pub job_id: &'a str,
    /// `sent`: the Telnyx message id, when the API gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    /// API attempts made, this one included.
    pub attempts: u32,
    /// `sent`: SMS parts, as the API counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// `dead_lettered`: why (the DLQ entry's `x-error-reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadReason>,
    /// `dead_lettered`: the Telnyx error code, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    /// When the job was settled: RFC 3339, UTC, milliseconds.
    #[schemars(extend("format" = "date-time"))]
    pub at: String,
}
