//! The job body: a Telnyx `POST /v2/messages` request, as far as the worker
//! checks it (`job::Job::parse`). `send-worker publish` builds the bodies of
//! CSV rows and flag jobs with [`SendRequest`], and `schema/job-body.json` is
//! generated from it; a test holds the schema to the worker's validator.
//!
//! JSON Schema cannot say everything the validator checks: the text's length
//! in SMS parts (GSM-7 or UCS-2) and the body's size in bytes are checked by
//! the worker only. The schema says so in its descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `+`, then 2 to 15 digits, the first not 0 (`job::is_e164`).
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{1,14}$";
/// A short code: 5 or 6 digits.
pub const SHORT_CODE_PATTERN: &str = r"^[0-9]{5,6}$";
/// An alphanumeric sender ID: 1 to 11 letters, digits and inner spaces (it
/// must also hold a letter: [`HAS_LETTER_PATTERN`]).
pub const ALPHANUMERIC_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9 ]{0,9}[A-Za-z0-9])?$";
pub const HAS_LETTER_PATTERN: &str = "[A-Za-z]";
/// An https URL with a host.
pub const HTTPS_URL_PATTERN: &str = r"^https://[^/?#\s]+";
/// The longest text that can fit in 10 parts (GSM-7, 153 characters a part).
pub const MAX_TEXT_CHARS: u32 = 1530;

/// A send job's body: the Telnyx `POST /v2/messages` request. The worker
/// forwards it to the API byte for byte, so fields not listed here reach the
/// API unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "Job body",
    description = "The body of a send job: a Telnyx POST /v2/messages request (JSON object, at most \
                   worker.max_body_bytes, 256 KiB by default). The worker forwards it byte for \
                   byte; other Telnyx fields may be added. Besides what this schema says, the \
                   worker checks that `text` fits in 10 SMS parts (GSM-7: 160 characters, or 153 \
                   a part when split, extension characters counting twice; anything else UCS-2: \
                   70, or 67 a part). A job that breaks a rule is dead-lettered with reason \
                   `validation` (or `malformed` if it is no JSON object) before any API call.",
    extend("allOf" = [
        {
            "description": "`from`, or a `messaging_profile_id` (its number pool) instead",
            "anyOf": [
                {"required": ["from"]},
                {"required": ["messaging_profile_id"],
                 "properties": {"messaging_profile_id": {"type": "string", "pattern": "\\S"}}}
            ]
        },
        {
            "description": "`text`, `media_urls`, or both",
            "anyOf": [
                {"required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}},
                {"required": ["media_urls"], "properties": {"media_urls": {"type": "array", "minItems": 1}}}
            ]
        },
        {
            "description": "an SMS has no media",
            "if": {"required": ["type"], "properties": {"type": {"const": "SMS"}}},
            "then": {"properties": {"media_urls": {"maxItems": 0}}}
        }
    ])
)]
pub struct SendRequest {
    /// The destination, an E.164 number.
    #[schemars(regex(pattern = E164_PATTERN))]
    pub to: String,
    /// The sender: an E.164 number (long code or toll-free), a 5–6 digit short
    /// code, or an alphanumeric sender ID (1–11 letters, digits and spaces,
    /// with a letter). Its class sets its pacing. Optional when
    /// `messaging_profile_id` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "sender_schema")]
    pub from: Option<String>,
    /// The message text. At most 10 SMS parts (the worker counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(max = MAX_TEXT_CHARS))]
    pub text: Option<String>,
    /// MMS media: at most 10 https URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(regex(pattern = HTTPS_URL_PATTERN)))]
    pub media_urls: Vec<String>,
    /// Send through this messaging profile (its number pool when `from` is
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub messaging_profile_id: Option<String>,
    /// `SMS` or `MMS`; by default SMS without media, MMS with.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "MessageType")]
    pub kind: Option<MessageType>,
    /// Other Telnyx request fields (`subject`, `webhook_url`, `auto_detect`,
    /// `encoding`, `send_at`, ...): forwarded unchanged, not checked.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MessageType {
    #[serde(rename = "SMS")]
    Sms,
    #[serde(rename = "MMS")]
    Mms,
}

fn sender_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "anyOf": [
            {"description": "E.164 number", "pattern": E164_PATTERN},
            {"description": "short code", "pattern": SHORT_CODE_PATTERN},
            {"description": "alphanumeric sender ID",
             "allOf": [{"pattern": ALPHANUMERIC_PATTERN}, {"pattern": HAS_LETTER_PATTERN}]}
        ]
    })
}
