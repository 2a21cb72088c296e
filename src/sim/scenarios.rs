//! What the simulator answers: the scripted outcomes chosen by destination
//! number, and the success and error bodies in Telnyx's shapes.

use std::sync::Arc;

use serde_json::{Value, json};

use super::SimRequest;
use crate::job::encoding;

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct SimReply {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl SimReply {
    pub fn error(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }
}

/// A hook that may answer a request instead of the built-in scenarios.
pub type Behavior = Arc<dyn Fn(&SimRequest) -> Option<SimReply> + Send + Sync>;

/// The built-in scenarios, by destination number. Any other number succeeds.
///
/// | `to` | answer |
/// |---|---|
/// | +19990000400 | 400 / 10015 bad request (permanent) |
/// | +19990000403 | 403 / 40300 blocked by STOP (permanent) |
/// | +19990000422 | 422 / 40310 invalid `to` (permanent) |
/// | +19990000401 | 401 / 10009 authentication failed (account-wide) |
/// | +19990000402 | 402 / 20100 insufficient funds (account-wide) |
/// | +19990000500 | 500 on every attempt (transient forever) |
/// | +19990000503 | 503 on the first 2 tries of a body, then 200 |
/// | +19990000318 | 403 / 40318 queue full on the first try, then 200 |
/// | +19990000429 | 429 / 10011 with retry-after 1 on the first try, then 200 |
pub fn scenario_for(to: &str, nth: u32) -> Option<SimReply> {
    match to {
        "+19990000400" => Some(SimReply::error(
            400,
            "10015",
            "Bad Request",
            "The request failed because it was not well-formed.",
        )),
        "+19990000403" => Some(SimReply::error(
            403,
            "40300",
            "Blocked due to STOP message",
            "Messages cannot be sent from the from number to the to number because the recipient replied STOP.",
        )),
        "+19990000422" => Some(SimReply::error(
            422,
            "40310",
            "Invalid 'to' address",
            "The 'to' address is not a valid destination.",
        )),
        "+19990000401" => Some(auth_failed()),
        "+19990000402" => Some(SimReply::error(
            402,
            "20100",
            "Insufficient funds",
            "The account balance is too low to send messages.",
        )),
        "+19990000500" => Some(SimReply::error(
            500,
            "10007",
            "Unexpected error",
            "An unexpected error occurred.",
        )),
        "+19990000503" if nth <= 2 => Some(SimReply::error(
            503,
            "10006",
            "Service unavailable",
            "The service is temporarily unavailable.",
        )),
        "+19990000318" if nth <= 1 => Some(SimReply::error(
            403,
            "40318",
            "Message queue full",
            "The sending queue for this number is full; try again later.",
        )),
        "+19990000429" if nth <= 1 => Some(SimReply {
            retry_after: Some(1),
            ..SimReply::error(429, "10011", "Too many requests", "Rate limit exceeded.")
        }),
        _ => None,
    }
}

pub(super) fn auth_failed() -> SimReply {
    SimReply::error(
        401,
        "10009",
        "Authentication failed",
        "The API key was not accepted.",
    )
}

pub(super) fn error_body(r: &SimReply) -> Value {
    json!({"errors": [{
        "code": r.code,
        "title": r.title,
        "detail": r.detail,
        "meta": {"url": format!("https://developers.telnyx.com/docs/messaging/messages/error-codes#{}", r.code)}
    }]})
}

pub(super) fn success_body(req: &Value) -> Value {
    let text = req.get("text").and_then(Value::as_str).unwrap_or("");
    let media = req
        .get("media_urls")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let seg = encoding::segments(text);
    let mms = media > 0 || req.get("type").and_then(Value::as_str) == Some("MMS");
    let parts = if mms { 1 } else { seg.parts };
    let cost = if mms { 0.015 } else { 0.004 * f64::from(parts) };
    json!({"data": {
        "record_type": "message",
        "direction": "outbound",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": if mms { "MMS" } else { "SMS" },
        "messaging_profile_id": req.get("messaging_profile_id").cloned().unwrap_or(Value::Null),
        "from": {"phone_number": req.get("from").cloned().unwrap_or(Value::Null), "carrier": "Telnyx", "line_type": "Wireless"},
        "to": [{"phone_number": req.get("to").cloned().unwrap_or(Value::Null), "status": "queued", "carrier": "CARRIER", "line_type": "Wireless"}],
        "text": text,
        "media": req.get("media_urls").cloned().unwrap_or(json!([])),
        "encoding": match seg.encoding { encoding::Encoding::Gsm7 => "GSM-7", encoding::Encoding::Ucs2 => "UCS-2" },
        "parts": parts,
        "cost": {"amount": format!("{cost:.4}"), "currency": "USD"},
        "errors": [],
        "valid_until": null,
        "webhook_url": req.get("webhook_url").cloned().unwrap_or(Value::Null),
    }})
}
