//! Job deadlines: the producer's `x-expires-at` header, RFC 3339 (with `Z`
//! or a numeric offset) or unix seconds. A deadline a producer sets is
//! untrusted input of any AMQP type:
//!
//! - text (long or short string, or a UTF-8 byte array): RFC 3339 or unix
//!   seconds (integer or fractional);
//! - a number of any AMQP numeric type, or an AMQP timestamp: unix seconds;
//! - `void`: no deadline, as if the header were absent.
//!
//! A valid time after year 9999 (1e300, `i64::MAX`, a millisecond timestamp
//! taken for seconds) is no deadline of its own: [`Deadline::Never`], and
//! `worker.max_age_secs` still applies. Anything else (negative, before
//! 1970, NaN, infinite, not a time, a boolean, a table, an array, bytes that
//! are not UTF-8) is refused with the reason, and the job is dead-lettered.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::AMQPValue;

use super::time;

/// What a valid `x-expires-at` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Not to be sent at or after this.
    At(SystemTime),
    /// A time after year 9999: no deadline of its own.
    Never,
}

impl Deadline {
    pub fn at(self) -> Option<SystemTime> {
        match self {
            Deadline::At(t) => Some(t),
            Deadline::Never => None,
        }
    }
}

/// `x-expires-at` text: RFC 3339, or unix seconds (integer or fractional).
/// `None` if it is no valid deadline, or after year 9999.
pub fn parse_deadline(raw: &str) -> Option<SystemTime> {
    parse_deadline_text(raw).ok().and_then(Deadline::at)
}

/// At most this many characters of a refused value go into its reason.
const SHOWN_CHARS: usize = 64;

fn shown(raw: &str) -> String {
    let mut s: String = raw.chars().take(SHOWN_CHARS).collect();
    if raw.chars().nth(SHOWN_CHARS).is_some() {
        s.push('…');
    }
    s
}

/// `x-expires-at` text, or why it is no deadline.
pub fn parse_deadline_text(raw: &str) -> Result<Deadline, String> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return from_secs_f64(secs).map_err(|why| format!("{why}: {:?}", shown(raw)));
    }
    match time::parse_rfc3339_unbounded(raw) {
        Some(t) => from_time(t).map_err(|why| format!("{why}: {:?}", shown(raw))),
        None => Err(format!("is not RFC 3339 or unix seconds: {:?}", shown(raw))),
    }
}

/// An `x-expires-at` header value of any AMQP type: `Ok(None)` for `void`.
pub fn parse_deadline_value(v: &AMQPValue) -> Result<Option<Deadline>, String> {
    let unsigned = |v: i64| {
        u64::try_from(v)
            .map(from_secs)
            .map_err(|_| format!("is negative: {v}"))
    };
    let d = match v {
        AMQPValue::Void => return Ok(None),
        AMQPValue::ShortShortInt(v) => unsigned(i64::from(*v))?,
        AMQPValue::ShortInt(v) => unsigned(i64::from(*v))?,
        AMQPValue::LongInt(v) => unsigned(i64::from(*v))?,
        AMQPValue::LongLongInt(v) => unsigned(*v)?,
        AMQPValue::ShortShortUInt(v) => from_secs(u64::from(*v)),
        AMQPValue::ShortUInt(v) => from_secs(u64::from(*v)),
        AMQPValue::LongUInt(v) => from_secs(u64::from(*v)),
        AMQPValue::Timestamp(v) => from_secs(*v),
        AMQPValue::Float(v) => from_secs_f64(f64::from(*v)).map_err(|why| format!("{why}: {v}"))?,
        AMQPValue::Double(v) => from_secs_f64(*v).map_err(|why| format!("{why}: {v}"))?,
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            from_secs_f64(v).map_err(|why| format!("{why}: {v}"))?
        }
        AMQPValue::ShortString(s) => parse_deadline_text(s.as_str())?,
        AMQPValue::LongString(s) => parse_deadline_text(utf8(s.as_bytes())?)?,
        AMQPValue::ByteArray(b) => parse_deadline_text(utf8(b.as_slice())?)?,
        AMQPValue::Boolean(_) => return Err(wrong_type("a boolean")),
        AMQPValue::FieldTable(_) => return Err(wrong_type("a table")),
        AMQPValue::FieldArray(_) => return Err(wrong_type("an array")),
    };
    Ok(Some(d))
}

fn wrong_type(got: &str) -> String {
    format!("must be RFC 3339 text or unix seconds, got {got}")
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "is not UTF-8 text".to_owned())
}

fn from_secs(secs: u64) -> Deadline {
    time::from_unix_secs(secs).map_or(Deadline::Never, Deadline::At)
}

fn from_secs_f64(secs: f64) -> Result<Deadline, &'static str> {
    if secs.is_nan() {
        return Err("is not a number");
    }
    if secs < 0.0 {
        return Err("is before 1970");
    }
    if secs.is_infinite() || secs > time::LATEST_SECS as f64 {
        return Ok(Deadline::Never);
    }
    time::from_unix_secs_f64(secs)
        .map(Deadline::At)
        .ok_or("is not a time")
}

fn from_time(t: SystemTime) -> Result<Deadline, &'static str> {
    if t < UNIX_EPOCH {
        return Err("is before 1970");
    }
    Ok(time::within(t).map_or(Deadline::Never, Deadline::At))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
    use std::time::Duration;

    fn secs(d: Deadline) -> Option<u64> {
        d.at()
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    #[test]
    fn text_far_in_the_future_is_no_deadline_of_its_own() {
        for raw in [
            "1e300",
            "inf",
            "99999999999999999999999999999999",
            "9223372036854775807",
            "18446744073709551615",
            "253402300800",
            // A millisecond timestamp taken for seconds: year 56000.
            "1700000000000",
            "9999-12-31T23:59:59-02:00",
        ] {
            assert_eq!(parse_deadline_text(raw), Ok(Deadline::Never), "{raw}");
            assert_eq!(parse_deadline(raw), None, "{raw}");
        }
        assert_eq!(
            secs(parse_deadline_text("9999-12-31T23:59:59Z").unwrap()),
            Some(time::LATEST_SECS)
        );
    }

    #[test]
    fn text_that_is_no_time_is_refused_with_its_reason() {
        for (raw, why) in [
            ("-5", "before 1970"),
            ("-1e300", "before 1970"),
            ("-inf", "before 1970"),
            ("NaN", "not a number"),
            ("tomorrow", "not RFC 3339"),
            ("", "not RFC 3339"),
            ("1970-01-01T00:00:00+02:00", "before 1970"),
            ("2030-01-01T00:00:00+24:00", "not RFC 3339"),
            ("2030-01-01T00:00:00+0a:00", "not RFC 3339"),
            ("2030-01-01T00:00:00++1:00", "not RFC 3339"),
        ] {
            let err = parse_deadline_text(raw).unwrap_err();
            assert!(err.contains(why), "{raw:?}: {err}");
        }
        let long = "x".repeat(10_000);
        let err = parse_deadline_text(&long).unwrap_err();
        assert!(err.len() < 200, "the reason quotes at most a prefix");
    }

    /// humantime's weak parser read `…00.5+02:00` as UTC, ignoring the
    /// offset after fractional seconds: the deadline was two hours late.
    #[test]
    fn an_offset_after_fractional_seconds_moves_the_deadline() {
        let utc = secs(parse_deadline_text("2030-01-01T08:00:00Z").unwrap());
        for raw in [
            "2030-01-01T10:00:00+02:00",
            "2030-01-01T10:00:00.5+02:00",
            "2030-01-01T10:00:00.000+02:00",
            "2030-01-01T07:00:00.25-01:00",
        ] {
            assert_eq!(secs(parse_deadline_text(raw).unwrap()), utc, "{raw}");
        }
    }

    /// A panic found in review: `split_at(len - 6)` panicked when that byte
    /// was inside a multi-byte character.
    #[test]
    fn an_offset_split_inside_a_character_is_refused_not_a_panic() {
        for raw in ["aé:00:0", "x€12345", "2030-01-01T00:00:0€0:00"] {
            assert!(!raw.is_char_boundary(raw.len() - 6), "{raw}");
            assert!(parse_deadline_text(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn values_of_every_amqp_type() {
        let ok = |v: AMQPValue| parse_deadline_value(&v);
        let at = |s: u64| Ok(Some(Deadline::At(UNIX_EPOCH + Duration::from_secs(s))));
        assert_eq!(ok(AMQPValue::Void), Ok(None));
        assert_eq!(ok(AMQPValue::LongLongInt(1_893_456_000)), at(1_893_456_000));
        assert_eq!(ok(AMQPValue::LongUInt(u32::MAX)), at(u64::from(u32::MAX)));
        assert_eq!(ok(AMQPValue::Timestamp(1_893_456_000)), at(1_893_456_000));
        assert_eq!(ok(AMQPValue::Double(1_893_456_000.0)), at(1_893_456_000));
        assert_eq!(ok(AMQPValue::Float(0.0)), at(0));
        assert_eq!(
            ok(AMQPValue::DecimalValue(DecimalValue {
                scale: 1,
                value: 100
            })),
            at(10)
        );
        assert_eq!(
            ok(AMQPValue::ByteArray(ByteArray::from(
                b"1893456000".to_vec()
            ))),
            at(1_893_456_000)
        );
        for v in [
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::Timestamp(u64::MAX),
            AMQPValue::Double(1e300),
            AMQPValue::Double(f64::INFINITY),
            AMQPValue::Float(3.0e38),
        ] {
            assert_eq!(ok(v.clone()), Ok(Some(Deadline::Never)), "{v:?}");
        }
        for v in [
            AMQPValue::LongLongInt(i64::MIN),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::Double(-1e300),
            AMQPValue::Double(f64::NAN),
            AMQPValue::Boolean(true),
            AMQPValue::FieldTable(FieldTable::default()),
            AMQPValue::FieldArray(FieldArray::default()),
            AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0xfe])),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        ] {
            assert!(ok(v.clone()).is_err(), "{v:?}");
        }
    }
}
