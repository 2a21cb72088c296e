//! A DLQ entry as the commands see it: its verdict and counters read from the
//! worker's `x-error-*` headers or RabbitMQ's `x-death`, the filters that
//! select entries, and the properties a replayed copy gets.

use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use super::render::rfc3339;
use crate::amqp::headers;

/// Headers a replayed copy loses: the worker's verdict and counters, and
/// RabbitMQ's own dead-lettering and redelivery bookkeeping.
pub const STRIPPED_ON_REPLAY: &[&str] = &[
    headers::ERROR_REASON,
    headers::ERROR_CODE,
    headers::ERROR_TITLE,
    headers::ERROR_DETAIL,
    headers::HTTP_STATUS,
    headers::FAILED_AT,
    headers::ATTEMPTS,
    headers::RATE_LIMIT_BOUNCES,
    headers::DEFERRALS,
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
];

/// Which entries a command applies to. Every given criterion must hold.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only entries with this reason (repeatable): validation, malformed,
    /// permanent, attempts-exhausted, expired, or a RabbitMQ reason such as
    /// delivery_limit. `_` and `-` are interchangeable.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Only entries with this API error code (repeatable), e.g. 40300.
    #[arg(long = "code", value_name = "CODE")]
    pub codes: Vec<String>,
    /// Only entries for this job id (repeatable).
    #[arg(long = "job-id", value_name = "ID")]
    pub job_ids: Vec<String>,
    /// Only entries dead-lettered at least this long ago (e.g. 30m, 2h, 7d).
    /// Entries of unknown age never match an age filter.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only entries dead-lettered at most this long ago.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Act on at most this many matching entries (`list` still counts all
    /// entries for its summary).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

impl Filter {
    /// No criterion and no limit: everything matches.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
            && self.codes.is_empty()
            && self.job_ids.is_empty()
            && self.older_than.is_none()
            && self.newer_than.is_none()
            && self.limit.is_none()
    }

    /// Whether `entry` matches the criteria (the limit aside).
    pub fn matches(&self, entry: &Entry, now: SystemTime) -> bool {
        if !self.reasons.is_empty() {
            let reason = normalize_reason(&entry.reason);
            if !self.reasons.iter().any(|r| normalize_reason(r) == reason) {
                return false;
            }
        }
        if !self.codes.is_empty() {
            let Some(code) = &entry.code else {
                return false;
            };
            if !self.codes.iter().any(|c| c.trim() == code) {
                return false;
            }
        }
        if !self.job_ids.is_empty() {
            let Some(id) = &entry.job_id else {
                return false;
            };
            if !self.job_ids.iter().any(|j| j == id) {
                return false;
            }
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            let Some(age) = entry.age(now) else {
                return false;
            };
            if self.older_than.is_some_and(|min| age < min) {
                return false;
            }
            if self.newer_than.is_some_and(|max| age > max) {
                return false;
            }
        }
        true
    }

    pub(super) fn under_limit(&self, matched: u64) -> bool {
        self.limit.is_none_or(|l| matched < l)
    }

    /// A short description for messages ("all entries", "entries with ...").
    pub(super) fn describe(&self) -> String {
        let mut s = match self.criteria() {
            Some(c) => format!("entries with {c}"),
            None => "all entries".to_owned(),
        };
        if let Some(l) = self.limit {
            s.push_str(&format!(" (at most {l})"));
        }
        s
    }

    /// The criteria, the limit aside: "reason a|b, code c"; `None` if none.
    pub(super) fn criteria(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.reasons.is_empty() {
            parts.push(format!("reason {}", self.reasons.join("|")));
        }
        if !self.codes.is_empty() {
            parts.push(format!("code {}", self.codes.join("|")));
        }
        if !self.job_ids.is_empty() {
            parts.push(format!("job id {}", self.job_ids.join("|")));
        }
        if let Some(d) = self.older_than {
            parts.push(format!("older than {}", humantime::format_duration(d)));
        }
        if let Some(d) = self.newer_than {
            parts.push(format!("newer than {}", humantime::format_duration(d)));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

fn normalize_reason(r: &str) -> String {
    r.trim().to_ascii_lowercase().replace('_', "-")
}

/// The summary of one DLQ entry, from its headers and properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub job_id: Option<String>,
    /// `x-error-reason`; else the reason of the latest `x-death`
    /// (`delivery_limit`, ...); else `unknown`.
    pub reason: String,
    pub code: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    pub http_status: Option<u32>,
    pub attempts: Option<u32>,
    /// `x-failed-at`; else the latest `x-death` time; else the AMQP timestamp.
    pub failed_at: Option<SystemTime>,
    /// How often RabbitMQ has delivered the entry (`x-delivery-count`).
    pub delivery_count: Option<u64>,
    /// For an entry RabbitMQ dead-lettered: the queue it came from.
    pub death_queue: Option<String>,
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(name))
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn table_string(t: &FieldTable, key: &str) -> Option<String> {
    match t.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn table_time(t: &FieldTable, key: &str) -> Option<SystemTime> {
    let secs = match t.inner().get(key)? {
        AMQPValue::Timestamp(v) => *v,
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok()?,
        AMQPValue::LongInt(v) => u64::try_from(*v).ok()?,
        AMQPValue::LongUInt(v) => u64::from(*v),
        _ => return None,
    };
    crate::job::time::from_unix_secs(secs)
}

/// The most recent `x-death` record (RabbitMQ keeps them newest first).
fn latest_death(props: &BasicProperties) -> Option<&FieldTable> {
    match header(props, "x-death")? {
        AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

impl Entry {
    pub fn from_props(props: &BasicProperties) -> Entry {
        let death = latest_death(props);
        let reason = nonempty(headers::get_string(props, headers::ERROR_REASON))
            .or_else(|| death.and_then(|d| nonempty(table_string(d, "reason"))))
            .unwrap_or_else(|| "unknown".to_owned());
        let failed_at = headers::get_string(props, headers::FAILED_AT)
            .and_then(|s| crate::job::parse_deadline(&s))
            .or_else(|| death.and_then(|d| table_time(d, "time")))
            .or_else(|| {
                props
                    .timestamp()
                    .filter(|t| *t > 0)
                    .and_then(crate::job::time::from_unix_secs)
            });
        Entry {
            job_id: crate::job::job_id(props),
            reason,
            code: nonempty(headers::get_string(props, headers::ERROR_CODE)),
            title: nonempty(headers::get_string(props, headers::ERROR_TITLE)),
            detail: nonempty(headers::get_string(props, headers::ERROR_DETAIL)),
            http_status: headers::get_u32(props, headers::HTTP_STATUS).filter(|s| *s > 0),
            attempts: headers::get_u32(props, headers::ATTEMPTS),
            failed_at,
            delivery_count: headers::get_u64(props, "x-delivery-count"),
            death_queue: death.and_then(|d| nonempty(table_string(d, "queue"))),
        }
    }

    /// Time since the entry was dead-lettered (zero if that is in the future).
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.failed_at
            .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO))
    }

    pub(super) fn json(&self, now: SystemTime) -> Value {
        json!({
            "job_id": self.job_id,
            "reason": self.reason,
            "code": self.code,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "title": self.title,
            "detail": self.detail,
            "failed_at": self.failed_at.map(rfc3339),
            "age_secs": self.age(now).map(|d| d.as_secs()),
            "delivery_count": self.delivery_count,
            "dead_lettered_from": self.death_queue,
        })
    }
}

/// The properties of a replayed copy: the original's, minus the headers in
/// [`STRIPPED_ON_REPLAY`] (so the attempt count starts again) and minus any
/// `expiration`.
pub fn replay_props(p: &BasicProperties) -> BasicProperties {
    headers::copy_props(p, |k| !STRIPPED_ON_REPLAY.contains(&k))
}
