//! The AMQP headers of the contract as types: the producer's
//! ([`JobHeaders`]: `x-expires-at`) and the dead-letter entry's
//! ([`DeadLetterHeaders`]: `x-error-*`, `x-http-status`, `x-attempts`,
//! `x-failed-at`). The code that writes them goes through these types
//! (`send-worker publish` and `pipeline::dead_letter_props`), with the
//! header names of [`crate::amqp::headers`]; `tests/contract.rs` holds the
//! serialized names to those constants. `schema/job-headers.json` and
//! `schema/dead-letter-headers.json` are generated from them.

use std::time::SystemTime;

use lapin::BasicProperties;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::amqp::headers;
use crate::pipeline::DeadReason;
use crate::telnyx::Failure;

/// `x-error-detail` is cut to this many characters.
pub const MAX_DETAIL_CHARS: usize = 1000;

/// The headers a producer may set on a job. The worker also writes
/// `x-attempts`, `x-rate-limit-bounces` and `x-deferrals` on the retry
/// copies it publishes; a producer leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Job headers")]
pub struct JobHeaders {
    /// A deadline: RFC 3339 (`Z` or a numeric offset) or unix seconds. A job
    /// past it is dead-lettered with reason `expired`, never sent late; it is
    /// checked before every attempt.
    #[serde(
        rename = "x-expires-at",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub expires_at: Option<String>,
}

impl JobHeaders {
    /// `props` with these headers set.
    pub fn apply(&self, props: BasicProperties) -> BasicProperties {
        match &self.expires_at {
            Some(at) => headers::with_header(props, headers::EXPIRES_AT, headers::string(at)),
            None => props,
        }
    }
}

/// The headers the worker adds to a dead-letter entry (the original message,
/// body and properties unchanged, a producer `expiration` dropped).
/// RabbitMQ's own dead-lettering (the work queue's delivery limit) adds
/// `x-death` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Dead-letter headers")]
pub struct DeadLetterHeaders {
    /// Why the job was dead-lettered.
    #[serde(rename = "x-error-reason")]
    pub reason: DeadReason,
    /// The Telnyx `errors[0].code`, or empty.
    #[serde(rename = "x-error-code")]
    pub code: String,
    /// The API error's title, or the worker's own for a job it refused or
    /// gave up on without an API error (`Job expired`, ...).
    #[serde(rename = "x-error-title")]
    pub title: String,
    /// The API error's detail, or the validation message (at most 1000
    /// characters).
    #[serde(rename = "x-error-detail")]
    #[schemars(length(max = MAX_DETAIL_CHARS))]
    pub detail: String,
    /// The HTTP status; 0 when there was no HTTP answer (a timeout, a job
    /// refused before any call).
    #[serde(rename = "x-http-status")]
    pub http_status: u16,
    /// API attempts made.
    #[serde(rename = "x-attempts")]
    pub attempts: u32,
    /// When it was dead-lettered: RFC 3339, UTC, milliseconds.
    #[serde(rename = "x-failed-at")]
    #[schemars(extend("format" = "date-time"))]
    pub failed_at: String,
}

impl DeadLetterHeaders {
    pub fn new(reason: DeadReason, failure: &Failure, attempts: u32, at: SystemTime) -> Self {
        Self {
            reason,
            code: failure.code.clone().unwrap_or_default(),
            title: failure.title.clone(),
            detail: failure.detail.chars().take(MAX_DETAIL_CHARS).collect(),
            http_status: failure.status.unwrap_or(0),
            attempts,
            failed_at: humantime::format_rfc3339_millis(at).to_string(),
        }
    }

    /// `props` with these headers set (strings as long strings, numbers as
    /// long-long integers).
    pub fn apply(&self, props: BasicProperties) -> BasicProperties {
        let mut p = props;
        p = headers::with_header(
            p,
            headers::ERROR_REASON,
            headers::string(self.reason.as_str()),
        );
        p = headers::with_header(p, headers::ERROR_CODE, headers::string(&self.code));
        p = headers::with_header(p, headers::ERROR_TITLE, headers::string(&self.title));
        p = headers::with_header(p, headers::ERROR_DETAIL, headers::string(&self.detail));
        p = headers::with_header(
            p,
            headers::HTTP_STATUS,
            headers::int(u64::from(self.http_status)),
        );
        p = headers::with_header(p, headers::ATTEMPTS, headers::int(u64::from(self.attempts)));
        headers::with_header(p, headers::FAILED_AT, headers::string(&self.failed_at))
    }
}
