//! A send job: one AMQP message whose body is a Telnyx `POST /v2/messages`
//! request and whose `message_id` is the job id. [`Job::parse`] turns a
//! delivery's properties and body into a job or a [`Rejection`], before any
//! API call; a rejected job is dead-lettered with the reason it gives.

mod deadline;
pub mod encoding;
pub mod time;
mod validate;

pub use deadline::{Deadline, parse_deadline, parse_deadline_text, parse_deadline_value};
pub use validate::{classify_sender, is_e164};

use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use serde_json::Value;

use crate::amqp::headers;
use validate::{type_name, validate};

/// At most this many `media_urls` (Telnyx's MMS limit).
pub const MAX_MEDIA_URLS: usize = 10;

/// Why a job was refused before any API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Not a JSON object at all: too large, not UTF-8, not JSON, not an object.
    Malformed,
    /// A JSON object that is not a valid send request.
    Validation,
}

impl Rejection {
    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Malformed,
            detail: detail.into(),
        }
    }
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Validation,
            detail: detail.into(),
        }
    }
}

/// How Telnyx paces a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenderClass {
    LongCode,
    TollFree,
    ShortCode,
    Alphanumeric,
    /// No `from`: sent through a messaging profile's number pool.
    Profile,
}

impl SenderClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderClass::LongCode => "long_code",
            SenderClass::TollFree => "toll_free",
            SenderClass::ShortCode => "short_code",
            SenderClass::Alphanumeric => "alphanumeric",
            SenderClass::Profile => "profile",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Sms,
    Mms,
}

/// A validated job, ready to be sent.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// The original body, forwarded to the API byte for byte (shared:
    /// handing it to a request copies nothing).
    pub body: bytes::Bytes,
    pub from: Option<String>,
    pub sender: SenderClass,
    pub kind: MessageKind,
    /// SMS parts the text needs (1 for MMS without text).
    pub parts: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub rate_limit_bounces: u32,
    pub deferrals: u32,
    /// When the producer published it (AMQP `timestamp`), if not after
    /// year 9999 ([`time::LATEST_SECS`]).
    pub published_at: Option<SystemTime>,
    /// Not to be sent after this: the earlier of `x-expires-at` and
    /// `published_at + max_age`. Never after year 9999.
    pub deadline: Option<SystemTime>,
}

/// The job id of a delivery, if it has one (for logs and dead-letter entries
/// of jobs that fail to parse).
pub fn job_id(props: &BasicProperties) -> Option<String> {
    props
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .filter(|s| !s.is_empty())
}

/// Attempts already made, as recorded on the message.
pub fn attempts_made(props: &BasicProperties) -> u32 {
    headers::get_u32(props, headers::ATTEMPTS).unwrap_or(0)
}

impl Job {
    /// Parse and validate a delivery.
    pub fn parse(
        body: &[u8],
        props: &BasicProperties,
        max_body_bytes: usize,
        max_age: Option<Duration>,
    ) -> Result<Job, Rejection> {
        if body.len() > max_body_bytes {
            return Err(Rejection::malformed(format!(
                "body is {} bytes; the limit is {max_body_bytes}",
                body.len()
            )));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| Rejection::malformed(format!("body is not valid UTF-8: {e}")))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Rejection::malformed(format!("body is not JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Rejection::malformed(format!(
                "body must be a JSON object, got {}",
                type_name(&value)
            )));
        };
        let id = job_id(props).ok_or_else(|| {
            Rejection::invalid("the message_id property (the job id) is missing or empty")
        })?;
        let checked = validate(&obj)?;

        // A timestamp after year 9999 (a millisecond one, u64::MAX) is no
        // publish time: it is ignored, as if absent.
        let published_at = props
            .timestamp()
            .filter(|t| *t > 0)
            .and_then(time::from_unix_secs);
        let explicit = match headers::value(props, headers::EXPIRES_AT) {
            Some(v) => parse_deadline_value(v)
                .map_err(|why| Rejection::invalid(format!("header {} {why}", headers::EXPIRES_AT)))?
                .and_then(Deadline::at),
            None => None,
        };
        // Past year 9999 there is no deadline by age either.
        let by_age = match (max_age, published_at) {
            (Some(age), Some(at)) => time::checked_add(at, age),
            _ => None,
        };
        let deadline = match (explicit, by_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        Ok(Job {
            id,
            body: bytes::Bytes::copy_from_slice(body),
            from: checked.from,
            sender: checked.sender,
            kind: checked.kind,
            parts: checked.parts,
            attempt: attempts_made(props).saturating_add(1),
            rate_limit_bounces: headers::get_u32(props, headers::RATE_LIMIT_BOUNCES).unwrap_or(0),
            deferrals: headers::get_u32(props, headers::DEFERRALS).unwrap_or(0),
            published_at,
            deadline,
        })
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, ShortString};
    use std::time::UNIX_EPOCH;

    fn props(id: &str) -> BasicProperties {
        BasicProperties::default().with_message_id(ShortString::from(id))
    }

    fn parse(body: &str) -> Result<Job, Rejection> {
        Job::parse(body.as_bytes(), &props("job-1"), 1 << 20, None)
    }

    /// A plain SMS with properties `p`, and `max_age`.
    fn parse_props(p: &BasicProperties, max_age: Option<Duration>) -> Result<Job, Rejection> {
        Job::parse(
            br#"{"from":"+15551234567","to":"+15559876543","text":"x"}"#,
            p,
            1 << 20,
            max_age,
        )
    }

    fn reason(body: &str) -> (RejectionKind, String) {
        let r = parse(body).unwrap_err();
        (r.kind, r.detail)
    }

    #[test]
    fn a_plain_sms_is_valid() {
        let j =
            parse(r#"{"from":"+15551234567","to":"+15559876543","text":"Hello, world!"}"#).unwrap();
        assert_eq!(j.id, "job-1");
        assert_eq!(j.sender, SenderClass::LongCode);
        assert_eq!(j.kind, MessageKind::Sms);
        assert_eq!(j.parts, 1);
        assert_eq!(j.attempt, 1);
    }

    #[test]
    fn unknown_fields_are_kept_in_the_forwarded_body() {
        let body =
            r#"{"from":"+15551234567","to":"+15559876543","text":"x","future_field":{"a":1}}"#;
        let j = parse(body).unwrap();
        assert_eq!(j.body, body.as_bytes());
    }

    #[test]
    fn malformed_bodies_are_rejected_as_malformed() {
        assert_eq!(reason("not json").0, RejectionKind::Malformed);
        assert_eq!(reason("[1,2]").0, RejectionKind::Malformed);
        assert_eq!(reason("\"str\"").0, RejectionKind::Malformed);
        assert_eq!(reason("").0, RejectionKind::Malformed);
        let bad_utf8 = [b'{', 0xff, 0xfe, b'}'];
        let r = Job::parse(&bad_utf8, &props("j"), 1 << 20, None).unwrap_err();
        assert_eq!(r.kind, RejectionKind::Malformed);
        assert!(r.detail.contains("UTF-8"));
        let big = vec![b' '; 5 * 1024 * 1024];
        let r = Job::parse(&big, &props("j"), 262_144, None).unwrap_err();
        assert_eq!(r.kind, RejectionKind::Malformed);
        assert!(r.detail.contains("limit"));
    }

    #[test]
    fn field_rules() {
        let cases = [
            (r#"{"from":"+15551234567","text":"x"}"#, "`to` is required"),
            (
                r#"{"from":"+15551234567","to":15559876543,"text":"x"}"#,
                "`to` must be a string",
            ),
            (
                r#"{"from":"+15551234567","to":"15559876543","text":"x"}"#,
                "E.164",
            ),
            (
                r#"{"from":"+15551234567","to":"+1 555 987","text":"x"}"#,
                "E.164",
            ),
            (r#"{"to":"+15559876543","text":"x"}"#, "`from` is required"),
            (
                r#"{"from":"555-1234","to":"+15559876543","text":"x"}"#,
                "`from` must be",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543"}"#,
                "`text` or `media_urls`",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","text":""}"#,
                "`text` or `media_urls`",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","text":5}"#,
                "`text` must be a string",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","media_urls":"https://a/b"}"#,
                "array",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","media_urls":["http://a.com/x.png"]}"#,
                "https",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","media_urls":[1]}"#,
                "hold strings",
            ),
            (
                r#"{"from":"+15551234567","to":"+15559876543","text":"x","type":"FAX"}"#,
                "SMS or MMS",
            ),
        ];
        for (body, want) in cases {
            let (kind, detail) = reason(body);
            assert_eq!(kind, RejectionKind::Validation, "{body}");
            assert!(detail.contains(want), "{body}: {detail}");
        }
    }

    #[test]
    fn media_limits() {
        let urls: Vec<String> = (0..11)
            .map(|i| format!("\"https://m.example/{i}.png\""))
            .collect();
        let body = format!(
            r#"{{"from":"+15551234567","to":"+15559876543","media_urls":[{}]}}"#,
            urls.join(",")
        );
        assert!(reason(&body).1.contains("at most 10"));
        let body = format!(
            r#"{{"from":"+15551234567","to":"+15559876543","media_urls":[{}]}}"#,
            urls[..10].join(",")
        );
        assert_eq!(parse(&body).unwrap().kind, MessageKind::Mms);
    }

    #[test]
    fn text_length_follows_gsm7_and_ucs2_parts() {
        let ok = format!(
            r#"{{"from":"+15551234567","to":"+15559876543","text":"{}"}}"#,
            "a".repeat(1530)
        );
        assert_eq!(parse(&ok).unwrap().parts, 10);
        let long = format!(
            r#"{{"from":"+15551234567","to":"+15559876543","text":"{}"}}"#,
            "a".repeat(1531)
        );
        assert!(reason(&long).1.contains("11 parts"));
        let uni = format!(
            r#"{{"from":"+15551234567","to":"+15559876543","text":"{}"}}"#,
            "✓".repeat(671)
        );
        assert!(reason(&uni).1.contains("UCS-2"));
    }

    #[test]
    fn messaging_profile_replaces_from() {
        let j = parse(r#"{"messaging_profile_id":"abc","to":"+15559876543","text":"x"}"#).unwrap();
        assert_eq!(j.sender, SenderClass::Profile);
        assert_eq!(j.from, None);
    }

    #[test]
    fn missing_job_id_is_a_validation_failure() {
        let r = parse_props(&BasicProperties::default(), None).unwrap_err();
        assert_eq!(r.kind, RejectionKind::Validation);
        assert!(r.detail.contains("message_id"));
    }

    #[test]
    fn attempts_and_deadlines_come_from_headers() {
        let p = headers::with_header(props("j"), headers::ATTEMPTS, headers::int(2));
        let p = headers::with_header(
            p,
            headers::EXPIRES_AT,
            headers::string("2030-01-01T00:00:00Z"),
        );
        let j = parse_props(&p, None).unwrap();
        assert_eq!(j.attempt, 3);
        let d = j.deadline.unwrap();
        assert_eq!(
            d.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_893_456_000
        );
        assert!(!j.is_expired(UNIX_EPOCH + Duration::from_secs(1_893_455_999)));
        assert!(j.is_expired(UNIX_EPOCH + Duration::from_secs(1_893_456_000)));
    }

    #[test]
    fn deadline_formats() {
        let secs =
            |s: &str| parse_deadline(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(secs("1893456000"), Some(1_893_456_000));
        assert_eq!(secs("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(secs("2030-01-01T02:00:00+02:00"), Some(1_893_456_000));
        assert_eq!(secs("2029-12-31T22:00:00-02:00"), Some(1_893_456_000));
        assert_eq!(secs("tomorrow"), None);
        assert_eq!(secs("-5"), None);
        let p = headers::with_header(props("j"), headers::EXPIRES_AT, headers::string("soon"));
        let r = parse_props(&p, None).unwrap_err();
        assert!(r.detail.contains("x-expires-at"));
    }

    #[test]
    fn max_age_counts_from_the_amqp_timestamp() {
        let p = props("j").with_timestamp(1_000);
        let j = parse_props(&p, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(j.deadline, Some(UNIX_EPOCH + Duration::from_secs(1_060)));
    }

    /// The panics the hostile test (tests/hostile.rs) dead-lettered as
    /// `internal`: `UNIX_EPOCH + secs` past `SystemTime`'s range for the
    /// AMQP timestamp and for `x-expires-at` read as text, and `at + age`.
    #[test]
    fn absurd_timestamps_are_no_publish_time() {
        let age = Some(Duration::from_secs(3_600));
        for ts in [
            u64::MAX,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX / 2,
            time::LATEST_SECS + 1,
        ] {
            let j = parse_props(&props("j").with_timestamp(ts), age).unwrap();
            assert_eq!(j.published_at, None, "{ts}");
            assert_eq!(j.deadline, None, "{ts}");
        }
        // In range, but `at + max_age` is past year 9999: no age deadline.
        let j = parse_props(&props("j").with_timestamp(time::LATEST_SECS), age).unwrap();
        assert!(j.published_at.is_some());
        assert_eq!(j.deadline, None);
        let year_3000 = 32_503_680_000;
        let j = parse_props(&props("j").with_timestamp(year_3000), age).unwrap();
        assert_eq!(
            j.deadline,
            Some(UNIX_EPOCH + Duration::from_secs(year_3000 + 3_600))
        );
    }

    #[test]
    fn absurd_deadlines_are_none_or_refused_never_a_panic() {
        let with = |v: AMQPValue| {
            let p = headers::with_header(props("j").with_timestamp(1_000), headers::EXPIRES_AT, v);
            parse_props(&p, Some(Duration::from_secs(60)))
        };
        let by_age = Some(UNIX_EPOCH + Duration::from_secs(1_060));
        // Far in the future: no deadline of its own; max_age still holds.
        for v in [
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::Timestamp(u64::MAX),
            AMQPValue::Double(1e300),
            AMQPValue::Float(3.0e38),
            headers::string("1e300"),
            headers::string("99999999999999999999999999999999"),
            headers::string(i64::MAX.to_string()),
            headers::string("9999-12-31T23:59:59Z"),
            AMQPValue::Void,
        ] {
            assert_eq!(with(v.clone()).unwrap().deadline, by_age, "{v:?}");
        }
        // Not a time: refused, naming the header.
        for v in [
            AMQPValue::LongLongInt(i64::MIN),
            AMQPValue::Double(-1e300),
            AMQPValue::Double(f64::NAN),
            AMQPValue::Boolean(true),
            headers::string("-5"),
            headers::string("NaN"),
            headers::string("not a number \u{0}\u{7f}"),
        ] {
            let r = with(v.clone()).unwrap_err();
            assert_eq!(r.kind, RejectionKind::Validation, "{v:?}");
            assert!(
                r.detail.contains(headers::EXPIRES_AT),
                "{v:?}: {}",
                r.detail
            );
        }
        // An earlier explicit deadline wins over max_age.
        let j = with(AMQPValue::LongLongInt(1_030)).unwrap();
        assert_eq!(j.deadline, Some(UNIX_EPOCH + Duration::from_secs(1_030)));
    }

    #[test]
    fn absurd_counters_saturate() {
        for name in [
            headers::ATTEMPTS,
            headers::RATE_LIMIT_BOUNCES,
            headers::DEFERRALS,
        ] {
            for v in [
                AMQPValue::LongLongInt(i64::MAX),
                AMQPValue::Timestamp(u64::MAX),
                headers::string("99999999999999999999999999999999"),
            ] {
                let p = headers::with_header(props("j"), name, v);
                let j = parse_props(&p, None).unwrap();
                let got = match name {
                    headers::ATTEMPTS => j.attempt,
                    headers::RATE_LIMIT_BOUNCES => j.rate_limit_bounces,
                    _ => j.deferrals,
                };
                assert_eq!(got, u32::MAX, "{name}");
            }
            // Negative, fractional or not a number: absent.
            for v in [
                AMQPValue::LongLongInt(i64::MIN),
                AMQPValue::Double(3.0),
                headers::string("-1"),
                AMQPValue::Boolean(true),
            ] {
                let p = headers::with_header(props("j"), name, v);
                let j = parse_props(&p, None).unwrap();
                assert_eq!(
                    (j.attempt, j.rate_limit_bounces, j.deferrals),
                    (1, 0, 0),
                    "{name}"
                );
            }
        }
    }
}
