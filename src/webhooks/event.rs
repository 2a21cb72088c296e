//! Reading a verified Telnyx webhook body: `{"data": {"event_type", "id",
//! "occurred_at", "payload": {message}}, "meta": {...}}` (telnyx-facts.md,
//! the send guide's example, and the OpenAPI `OutboundMessagePayload`).
//! Only what the intake needs is read; the body is published unchanged.
//! Nothing here panics on any input.

use serde_json::Value;

use crate::contract::DeliveryEventKind;

/// The longest event or message id taken (Telnyx's are UUIDs); a longer one
/// is malformed, so no producer-sized string becomes a Redis key.
pub const MAX_ID_CHARS: usize = 128;
/// Carrier error titles and details are cut to this many characters.
const MAX_TEXT_CHARS: usize = 300;

/// A carrier error from `payload.errors[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrierError {
    pub code: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
}

/// A webhook of a kind the intake publishes.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: DeliveryEventKind,
    /// `data.id`.
    pub event_id: String,
    /// `data.payload.id`.
    pub message_id: Option<String>,
    /// `data.payload.to[0].status`.
    pub status: Option<String>,
    pub errors: Vec<CarrierError>,
    /// `data.occurred_at`, as written.
    pub occurred_at: Option<String>,
    /// The whole body, to publish unchanged.
    pub body: Value,
}

/// What a well-formed body is.
#[derive(Debug, Clone)]
pub enum Parsed {
    Notice(Box<Notice>),
    /// Another event type (answered 200, not published).
    Other,
}

/// Why a body is malformed (for logs; the answer never says).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed webhook: {0}")]
pub struct Malformed(pub &'static str);

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.chars().take(MAX_TEXT_CHARS).collect()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn id(v: Option<&Value>, what: &'static str) -> Result<Option<String>, Malformed> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_CHARS => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Malformed(what)),
    }
}

/// Read a webhook body.
pub fn parse(body: &[u8]) -> Result<Parsed, Malformed> {
    let v: Value = serde_json::from_slice(body).map_err(|_| Malformed("not JSON"))?;
    let data = v
        .get("data")
        .filter(|d| d.is_object())
        .ok_or(Malformed("no data object"))?;
    let event_type = data
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or(Malformed("no data.event_type"))?;
    let event_id = id(data.get("id"), "data.id is not an id")?.ok_or(Malformed("no data.id"))?;
    let Some(kind) = DeliveryEventKind::from_event_type(event_type) else {
        return Ok(Parsed::Other);
    };
    let payload = data
        .get("payload")
        .filter(|p| p.is_object())
        .ok_or(Malformed("no data.payload object"))?;
    let message_id = id(payload.get("id"), "data.payload.id is not an id")?;
    let status = payload
        .get("to")
        .and_then(Value::as_array)
        .and_then(|to| to.first())
        .and_then(|r| text(r.get("status")));
    let errors = payload
        .get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .take(10)
                .map(|e| CarrierError {
                    code: text(e.get("code")),
                    title: text(e.get("title")),
                    detail: text(e.get("detail")),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Parsed::Notice(Box::new(Notice {
        kind,
        event_id,
        message_id,
        status,
        errors,
        occurred_at: text(data.get("occurred_at")),
        body: v,
    })))
}

/// `status` label values of `send_worker_delivery_outcomes_total`: the final
/// statuses of `message.finalized`; anything else is `other`.
pub const FINAL_STATUSES: [&str; 4] = [
    "delivered",
    "sending_failed",
    "delivery_failed",
    "delivery_unconfirmed",
];

/// The delivery error codes Telnyx documents for `message.finalized`
/// (40001..40020, 40329, 40330): the `code` label values besides `none` and
/// `other`.
pub fn known_delivery_code(code: &str) -> bool {
    match code.parse::<u32>() {
        Ok(n) => (40001..=40020).contains(&n) || n == 40329 || n == 40330,
        Err(_) => false,
    }
}

/// The bounded `status` label of a final status.
pub fn status_label(status: Option<&str>) -> &'static str {
    status
        .and_then(|s| FINAL_STATUSES.iter().copied().find(|f| *f == s))
        .unwrap_or("other")
}

/// The bounded `code` label of a carrier error code.
pub fn code_label(code: Option<&str>) -> String {
    match code {
        None => "none".to_owned(),
        Some(c) if known_delivery_code(c) => c.to_owned(),
        Some(_) => "other".to_owned(),
    }
}

/// Whether a status is final (a `message.sent` never overwrites one).
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status) || status == "expired"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finalized(status: &str, errors: Value) -> Value {
        json!({
            "data": {
                "event_type": "message.finalized",
                "id": "e6e3e550-4e3f-4b3a-9e10-1c2d3e4f5a6b",
                "occurred_at": "2026-03-05T18:30:00.000+00:00",
                "payload": {
                    "id": "b0c7e8cb-6227-4c74-9f32-c7f80c30934b",
                    "record_type": "message",
                    "to": [{"phone_number": "+15559876543", "status": status}],
                    "parts": 1,
                    "cost": {"amount": "0.0051", "currency": "USD"},
                    "errors": errors
                },
                "record_type": "event"
            },
            "meta": {"attempt": 1, "delivered_to": "https://example.com/webhooks"}
        })
    }

    #[test]
    fn the_guides_example_is_read() {
        let body = finalized(
            "delivery_failed",
            json!([{"code": "40008", "title": "Undeliverable"}]),
        );
        let Parsed::Notice(n) = parse(body.to_string().as_bytes()).unwrap() else {
            panic!("a notice");
        };
        assert_eq!(n.kind, DeliveryEventKind::Finalized);
        assert_eq!(n.event_id, "e6e3e550-4e3f-4b3a-9e10-1c2d3e4f5a6b");
        assert_eq!(
            n.message_id.as_deref(),
            Some("b0c7e8cb-6227-4c74-9f32-c7f80c30934b")
        );
        assert_eq!(n.status.as_deref(), Some("delivery_failed"));
        assert_eq!(n.errors[0].code.as_deref(), Some("40008"));
        assert_eq!(n.errors[0].title.as_deref(), Some("Undeliverable"));
        assert_eq!(
            n.occurred_at.as_deref(),
            Some("2026-03-05T18:30:00.000+00:00")
        );
        assert_eq!(n.body, body);
    }

    #[test]
    fn other_event_types_are_well_formed_but_not_notices() {
        let body = json!({"data": {"event_type": "call.initiated", "id": "x", "payload": {}}});
        assert!(matches!(
            parse(body.to_string().as_bytes()),
            Ok(Parsed::Other)
        ));
    }

    #[test]
    fn malformed_bodies_are_refused_without_panicking() {
        let long = "x".repeat(MAX_ID_CHARS + 1);
        for bad in [
            "".to_owned(),
            "not json".to_owned(),
            "[]".to_owned(),
            json!({"data": 1}).to_string(),
            json!({"data": {"id": "x"}}).to_string(),
            json!({"data": {"event_type": "message.sent"}}).to_string(),
            json!({"data": {"event_type": "message.sent", "id": 5, "payload": {}}}).to_string(),
            json!({"data": {"event_type": "message.sent", "id": long, "payload": {}}}).to_string(),
            json!({"data": {"event_type": "message.sent", "id": "x"}}).to_string(),
            json!({"data": {"event_type": "message.sent", "id": "x", "payload": {"id": []}}})
                .to_string(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // Odd but harmless shapes are read as far as they go.
        let odd = json!({"data": {"event_type": "message.finalized", "id": "x",
            "payload": {"to": "nobody", "errors": {"code": 1}}}});
        let Ok(Parsed::Notice(n)) = parse(odd.to_string().as_bytes()) else {
            panic!("a notice");
        };
        assert_eq!((n.status, n.errors.len(), n.message_id), (None, 0, None));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_label(Some("delivered")), "delivered");
        assert_eq!(status_label(Some("+15551234567")), "other");
        assert_eq!(status_label(None), "other");
        assert_eq!(code_label(Some("40008")), "40008");
        assert_eq!(code_label(Some("40330")), "40330");
        assert_eq!(code_label(Some("40021")), "other");
        assert_eq!(code_label(Some("+15551234567")), "other");
        assert_eq!(code_label(None), "none");
    }
}
