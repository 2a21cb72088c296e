//! Delivery events: what the webhook intake (`crate::webhooks`) publishes on
//! the events exchange for each verified Telnyx webhook, with the Telnyx
//! event type as the routing key (`message.sent`, `message.finalized`,
//! `message.received`). `schema/delivery-event.json` is generated from
//! [`DeliveryEvent`].

use schemars::JsonSchema;
use serde::Serialize;

/// The Telnyx event type; also the routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
pub enum DeliveryEventKind {
    /// Telnyx handed the message to the carrier (`status` `sent`).
    #[serde(rename = "message.sent")]
    Sent,
    /// The final status: `delivered`, `sending_failed`, `delivery_failed` or
    /// `delivery_unconfirmed` (the carrier's error in `code`).
    #[serde(rename = "message.finalized")]
    Finalized,
    /// An inbound message to one of the account's numbers (no `job_id`).
    #[serde(rename = "message.received")]
    Received,
}

impl DeliveryEventKind {
    /// Every kind, in schema order.
    pub const ALL: [DeliveryEventKind; 3] = [
        DeliveryEventKind::Sent,
        DeliveryEventKind::Finalized,
        DeliveryEventKind::Received,
    ];

    /// The routing key on the events exchange (the Telnyx event type).
    pub fn routing_key(self) -> &'static str {
        match self {
            DeliveryEventKind::Sent => "message.sent",
            DeliveryEventKind::Finalized => "message.finalized",
            DeliveryEventKind::Received => "message.received",
        }
    }

    /// The kind of a Telnyx `event_type`, if it is one the intake publishes.
    pub fn from_event_type(t: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.routing_key() == t)
    }
}

/// A delivery event: the verified Telnyx webhook (`webhook`, as received),
/// and what the worker knows beside it (`job_id`). Its AMQP properties:
/// `message_id` the Telnyx event id (a consumer can dedupe on it), `type` the
/// event type, persistent, application/json.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "Delivery event")]
pub struct DeliveryEvent {
    pub event: DeliveryEventKind,
    /// The Telnyx event id (`data.id`): the same for every retry of an event.
    pub event_id: String,
    /// The producer's job id, when this system sent the message and the job
    /// store still remembers it (`dedupe.ttl_secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The Telnyx message id (`data.payload.id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The first recipient's status (`data.payload.to[0].status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The carrier's error code (`data.payload.errors[0].code`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `data.occurred_at`, as Telnyx wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// When the intake received it: RFC 3339, UTC, milliseconds.
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// The Telnyx webhook body, unchanged: `{"data": {...}, "meta": {...}}`.
    pub webhook: serde_json::Value,
}
