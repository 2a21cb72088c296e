//! Reading and writing the AMQP headers the worker uses. Header values come
//! from producers and from RabbitMQ, so every reader tolerates any type.

use lapin::BasicProperties;
use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Attempts made so far (on a retry copy) or in all (on a dead-letter entry).
pub const ATTEMPTS: &str = "x-attempts";
/// 429 answers this job has bounced on; they do not count as attempts.
pub const RATE_LIMIT_BOUNCES: &str = "x-rate-limit-bounces";
/// Pacing deferrals through the broker; they do not count as attempts either.
pub const DEFERRALS: &str = "x-deferrals";
/// A producer-set deadline: RFC 3339 or unix seconds.
pub const EXPIRES_AT: &str = "x-expires-at";

pub const ERROR_REASON: &str = "x-error-reason";
pub const ERROR_CODE: &str = "x-error-code";
pub const ERROR_TITLE: &str = "x-error-title";
pub const ERROR_DETAIL: &str = "x-error-detail";
pub const HTTP_STATUS: &str = "x-http-status";
pub const FAILED_AT: &str = "x-failed-at";

/// Header `name` as it came, of whatever type.
pub fn value<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(&ShortString::from(name)))
}

/// An integer header of any AMQP integer type, or a decimal string.
pub fn get_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    match value(props, name)? {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(s) => decimal(std::str::from_utf8(s.as_bytes()).ok()?),
        AMQPValue::ShortString(s) => decimal(s.as_str()),
        _ => None,
    }
}

/// Decimal digits; more than a `u64` holds saturates.
fn decimal(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

pub fn get_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    get_u64(props, name).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// A string header (long or short string), or an integer rendered as text.
pub fn get_string(props: &BasicProperties, name: &str) -> Option<String> {
    match value(props, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => get_u64(props, name).map(|v| v.to_string()),
    }
}

/// The properties with header `name` set to `v`, everything else unchanged.
pub fn with_header(props: BasicProperties, name: &str, v: AMQPValue) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name), v);
    props.with_headers(headers)
}

/// A copy of `p` for re-publishing: every property except `expiration`, and
/// only the headers `keep` accepts.
pub fn copy_props(p: &BasicProperties, keep: impl Fn(&str) -> bool) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(h) = p.headers() {
        let kept: BTreeMap<ShortString, AMQPValue> = h
            .inner()
            .iter()
            .filter(|(k, _)| keep(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            out = out.with_headers(FieldTable::from(kept));
        }
    }
    out = out.with_delivery_mode(p.delivery_mode().unwrap_or(2));
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

pub fn string(v: impl AsRef<str>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_ref().as_bytes().to_vec()))
}

pub fn int(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_any_width_and_strings_are_read() {
        let p = BasicProperties::default();
        assert_eq!(get_u32(&p, ATTEMPTS), None);
        let p = with_header(p, ATTEMPTS, AMQPValue::ShortShortUInt(3));
        assert_eq!(get_u32(&p, ATTEMPTS), Some(3));
        let p = with_header(p, ATTEMPTS, AMQPValue::LongInt(-1));
        assert_eq!(get_u32(&p, ATTEMPTS), None);
        let p = with_header(p, ATTEMPTS, string(" 4 "));
        assert_eq!(get_u32(&p, ATTEMPTS), Some(4));
        let p = with_header(p, ATTEMPTS, int(7));
        assert_eq!(get_u32(&p, ATTEMPTS), Some(7));
        assert_eq!(get_string(&p, ATTEMPTS).as_deref(), Some("7"));
        let p = with_header(p, ATTEMPTS, AMQPValue::Boolean(true));
        assert_eq!(get_u32(&p, ATTEMPTS), None);
    }

    #[test]
    fn absurd_integers_saturate_and_non_integers_are_absent() {
        let p = |v| with_header(BasicProperties::default(), ATTEMPTS, v);
        let big = "99999999999999999999999999999999";
        assert_eq!(get_u64(&p(string(big)), ATTEMPTS), Some(u64::MAX));
        assert_eq!(get_u32(&p(string(big)), ATTEMPTS), Some(u32::MAX));
        assert_eq!(
            get_u32(&p(AMQPValue::Timestamp(u64::MAX)), ATTEMPTS),
            Some(u32::MAX)
        );
        assert_eq!(
            get_u32(&p(AMQPValue::LongLongInt(i64::MAX)), ATTEMPTS),
            Some(u32::MAX)
        );
        for v in [
            string("-1"),
            string("1.5"),
            string("1e3"),
            string(""),
            string("+"),
            string("12a"),
            AMQPValue::LongString(LongString::from(vec![0xff, b'1'])),
            AMQPValue::LongLongInt(i64::MIN),
            AMQPValue::Double(2.0),
            AMQPValue::Void,
        ] {
            assert_eq!(get_u64(&p(v.clone()), ATTEMPTS), None, "{v:?}");
        }
        assert_eq!(get_u64(&p(string(" +7 ")), ATTEMPTS), Some(7));
    }
}
