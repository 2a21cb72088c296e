//! Telnyx's side of a webhook, for tests: an account key pair
//! ([`TelnyxKeys`], a fresh random Ed25519 key), webhook bodies in Telnyx's
//! shape ([`webhook`]), and POSTs signed exactly as Telnyx signs them
//! (`telnyx-signature-ed25519`: base64 of the signature over
//! `"{telnyx-timestamp}|{raw body}"`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

/// An account's webhook signing key pair.
pub struct TelnyxKeys {
    key: SigningKey,
}

impl Default for TelnyxKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl TelnyxKeys {
    /// A fresh random key pair.
    pub fn new() -> Self {
        Self {
            key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// The public key as the portal shows it (`webhooks.public_key`).
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The `telnyx-signature-ed25519` value for `body` sent at `timestamp`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut signed = format!("{timestamp}|").into_bytes();
        signed.extend_from_slice(body);
        STANDARD.encode(self.key.sign(&signed).to_bytes())
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A webhook body in Telnyx's shape (the send guide's example): event
/// `event_type` with id `event_id` about message `message_id`, its first
/// recipient in `status`, with `errors`.
pub fn webhook(
    event_type: &str,
    event_id: &str,
    message_id: &str,
    status: &str,
    errors: Value,
) -> Vec<u8> {
    let inbound = event_type == "message.received";
    json!({
        "data": {
            "event_type": event_type,
            "id": event_id,
            "occurred_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "payload": {
                "id": message_id,
                "record_type": "message",
                "direction": if inbound { "inbound" } else { "outbound" },
                "type": "SMS",
                "from": {"phone_number": "+15551234567"},
                "to": [{"phone_number": "+15559876543", "status": status}],
                "text": "Hello",
                "parts": 1,
                "cost": {"amount": "0.0051", "currency": "USD"},
                "errors": errors
            },
            "record_type": "event"
        },
        "meta": {"attempt": 1, "delivered_to": "https://example.com/webhooks/telnyx"}
    })
    .to_string()
    .into_bytes()
}

/// POST `body` to `url` with the given headers: the status and body text.
/// Panics if no answer comes within 10 s (an intake must never hang).
pub async fn post(
    url: &str,
    body: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut req = client.post(url).body(body.to_vec());
    if let Some(t) = timestamp {
        req = req.header("telnyx-timestamp", t);
    }
    if let Some(s) = signature {
        req = req.header("telnyx-signature-ed25519", s);
    }
    let resp = req.send().await.expect("the intake answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// POST `body` signed now by `keys`: the status.
pub async fn post_signed(url: &str, keys: &TelnyxKeys, body: &[u8]) -> u16 {
    let ts = now_secs().to_string();
    post(url, body, Some(&ts), Some(&keys.sign(&ts, body)))
        .await
        .0
}
