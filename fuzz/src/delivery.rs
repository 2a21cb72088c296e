//! The generator: fuzzer bytes → a hostile delivery. Every header the worker
//! or the DLQ tool reads (and some it does not), with a value of any AMQP
//! type, absurd numbers, text that is almost a time or a number, bytes that
//! are not UTF-8, nesting hundreds of levels deep, x-death records of the
//! wrong shape; bodies that are raw bytes, JSON of the right shape with wrong
//! or boundary values, deeply nested JSON, or large (up to 1 MiB).

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Result, Unstructured};
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use serde_json::{Map, Number, Value};

/// What the worker gets from the broker for one message, and its settings.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub props: BasicProperties,
    pub body: Vec<u8>,
    /// `worker.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `worker.max_age_secs`.
    pub max_age: Option<Duration>,
}

/// Headers the worker, the retry path and the DLQ tool read or strip.
pub const HEADER_NAMES: &[&str] = &[
    "x-attempts",
    "x-expires-at",
    "x-deferrals",
    "x-rate-limit-bounces",
    "x-death",
    "x-error-reason",
    "x-error-code",
    "x-error-title",
    "x-error-detail",
    "x-http-status",
    "x-failed-at",
    "x-delivery-count",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-last-death-reason",
    "x-tenant",
    "",
];

const U64S: &[u64] = &[
    0,
    1,
    2,
    5,
    255,
    256,
    65_535,
    u32::MAX as u64,
    u32::MAX as u64 + 1,
    1_700_000_000,
    1_893_456_000,
    1_700_000_000_000,
    253_402_300_799,
    253_402_300_800,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    u64::MAX / 2,
    u64::MAX - 1,
    u64::MAX,
];

const I64S: &[i64] = &[
    0,
    1,
    -1,
    i8::MIN as i64,
    i16::MIN as i64,
    i32::MIN as i64,
    i32::MAX as i64,
    1_893_456_000,
    253_402_300_799,
    253_402_300_800,
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
];

const F64S: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    1.5,
    -1.0,
    1_893_456_000.0,
    1_893_456_000.999_999_9,
    253_402_300_799.0,
    253_402_300_799.999_9,
    253_402_300_800.0,
    1e300,
    -1e300,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    f64::EPSILON,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    i64::MAX as f64,
    u64::MAX as f64,
];

/// Text that is almost a number, a time, a verdict or a sender.
const TEXTS: &[&str] = &[
    "",
    " ",
    "0",
    "-0",
    "+7",
    " 4 ",
    "-1",
    "1.5",
    "1e3",
    "1e300",
    "-1e300",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "infinity",
    "+",
    "12a",
    "0x10",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "253402300799",
    "253402300800",
    "1700000000000",
    "1893456000",
    "2030-01-01T00:00:00Z",
    "2030-01-01T00:00:00.123456789Z",
    "2030-01-01T02:00:00+02:00",
    "2029-12-31T22:00:00-02:00",
    "2030-01-01 00:00:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-02:00",
    "9999-12-31T23:59:59+23:59",
    "10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00+02:00",
    "2030-01-01T00:00:00+24:00",
    "2030-02-30T00:00:00Z",
    "2030-01-01T00:00:60Z",
    "2030-01-01T00:00:00++1:00",
    "aé:00:0",
    "x€12345",
    "2030-01-01T00:00:0€0:00",
    "\u{0}\u{7}\u{1b}[2J\u{7f}",
    "\u{202e}evil",
    "\r\n\t",
    "validation",
    "malformed",
    "permanent",
    "attempts-exhausted",
    "expired",
    "delivery_limit",
    "rejected",
    "40300",
    "+15551234567",
    "+18005550100",
    "12345",
    "ACME",
    "Acme Shop 1",
    " ACME",
    "+0123",
    "+1234567890123456",
    "١٢٣٤٥",
    "messages.send",
    "https://m.example/a.png",
    "http://m.example/a.png",
    "https://",
    "https://[::1]/x",
    "file:///etc/passwd",
    "SMS",
    "MMS",
    "sms",
    "FAX",
];

/// Characters whose count decides SMS parts: GSM-7 basic and extension,
/// UCS-2, a surrogate pair, controls.
const CHARS: &[char] = &['a', '@', '€', '^', '✓', '😀', '\u{0}', '\n', 'é', 'ß', ' '];

/// At most this many levels of tables and arrays in an ordinary value; a
/// "deep" value goes much further.
pub const MAX_DEPTH: usize = 4;
/// A deep value nests up to this many levels (on the wire, a 128 KiB frame
/// holds at most about 26,000).
pub const MAX_DEEP: u32 = 2_000;

fn pick<'a, T: Copy>(u: &mut Unstructured<'a>, from: &[T]) -> Result<T> {
    Ok(*u.choose(from)?)
}

fn u64_any(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(3, 4)? {
        pick(u, U64S)
    } else {
        u.arbitrary()
    }
}

fn i64_any(u: &mut Unstructured) -> Result<i64> {
    match u.int_in_range(0..=3)? {
        0 | 1 => pick(u, I64S),
        2 => Ok(u64_any(u)? as i64),
        _ => u.arbitrary(),
    }
}

fn f64_any(u: &mut Unstructured) -> Result<f64> {
    if u.ratio(3, 4)? {
        pick(u, F64S)
    } else {
        Ok(f64::from_bits(u.arbitrary()?))
    }
}

/// Text: a near-miss from [`TEXTS`], arbitrary text, the two joined, or one
/// character repeated up to 2,000 times.
pub fn text(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0..=2 => pick(u, TEXTS)?.to_owned(),
        3 => u.arbitrary::<&str>()?.to_owned(),
        4 => format!("{}{}", pick(u, TEXTS)?, u.arbitrary::<&str>()?),
        _ => {
            let c = pick(u, CHARS)?;
            let n = u.int_in_range(0..=2_000)?;
            std::iter::repeat_n(c, n).collect()
        }
    })
}

/// Bytes: text, or bytes that need not be UTF-8.
fn bytes(u: &mut Unstructured) -> Result<Vec<u8>> {
    if u.ratio(2, 3)? {
        Ok(text(u)?.into_bytes())
    } else {
        Ok(u.arbitrary::<&[u8]>()?.to_vec())
    }
}

/// At most 255 bytes, cut at a character boundary (what the wire allows).
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

fn name(u: &mut Unstructured) -> Result<ShortString> {
    if u.ratio(7, 8)? {
        Ok(ShortString::from(pick(u, HEADER_NAMES)?))
    } else {
        Ok(short(&text(u)?))
    }
}

/// An AMQP value of any type.
pub fn value(u: &mut Unstructured, depth: usize) -> Result<AMQPValue> {
    Ok(match u.int_in_range(0..=19)? {
        0 => AMQPValue::Boolean(u.arbitrary()?),
        1 => AMQPValue::ShortShortInt(i64_any(u)? as i8),
        2 => AMQPValue::ShortShortUInt(u64_any(u)? as u8),
        3 => AMQPValue::ShortInt(i64_any(u)? as i16),
        4 => AMQPValue::ShortUInt(u64_any(u)? as u16),
        5 => AMQPValue::LongInt(i64_any(u)? as i32),
        6 => AMQPValue::LongUInt(u64_any(u)? as u32),
        7 => AMQPValue::LongLongInt(i64_any(u)?),
        8 => AMQPValue::Float(f64_any(u)? as f32),
        9 => AMQPValue::Double(f64_any(u)?),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: u.arbitrary()?,
            value: u64_any(u)? as u32,
        }),
        11 => AMQPValue::ShortString(short(&text(u)?)),
        12 | 13 => AMQPValue::LongString(LongString::from(bytes(u)?)),
        14 => AMQPValue::Timestamp(u64_any(u)?),
        15 => AMQPValue::ByteArray(ByteArray::from(bytes(u)?)),
        16 => AMQPValue::Void,
        17 if depth < MAX_DEPTH => {
            let n = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(u, depth + 1)?);
            }
            AMQPValue::FieldArray(FieldArray::from(items))
        }
        18 if depth < MAX_DEPTH => AMQPValue::FieldTable(table(u, depth + 1)?),
        // Not below MAX_DEPTH, so that a deep value's leaf is never deep
        // itself: chained, they nested 100,000 levels and more, past what a
        // 128 KiB AMQP frame can carry, and overflowed the stack of the
        // harness (a SIGSEGV in the first long runs; FUZZING.md).
        19 if depth < MAX_DEPTH && u.ratio(1, 4)? => deep(u)?,
        _ => AMQPValue::Void,
    })
}

/// A table of up to 6 entries, named mostly like the worker's headers.
fn table(u: &mut Unstructured, depth: usize) -> Result<FieldTable> {
    let n = u.int_in_range(0..=6)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = name(u)?;
        let v = value(u, depth)?;
        m.insert(k, v);
    }
    Ok(FieldTable::from(m))
}

/// A leaf inside up to [`MAX_DEEP`] tables and arrays.
fn deep(u: &mut Unstructured) -> Result<AMQPValue> {
    let levels = u.int_in_range(1..=MAX_DEEP)?;
    let tables = u.arbitrary::<bool>()?;
    let mut v = value(u, MAX_DEPTH)?;
    for i in 0..levels {
        v = if tables && i % 2 == 0 {
            let mut t = FieldTable::default();
            t.insert(ShortString::from("x-death"), v);
            AMQPValue::FieldTable(t)
        } else {
            AMQPValue::FieldArray(FieldArray::from(vec![v]))
        };
    }
    Ok(v)
}

/// An `x-death` header: RabbitMQ's array of tables, or something shaped
/// almost like it.
fn x_death(u: &mut Unstructured) -> Result<AMQPValue> {
    let n = u.int_in_range(0..=3)?;
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        if u.ratio(1, 6)? {
            records.push(value(u, 1)?);
            continue;
        }
        let mut t = FieldTable::default();
        for key in [
            "reason",
            "queue",
            "time",
            "count",
            "exchange",
            "routing-keys",
        ] {
            if u.ratio(1, 5)? {
                continue;
            }
            let v = if u.ratio(1, 3)? {
                value(u, 2)?
            } else {
                match key {
                    "time" => AMQPValue::Timestamp(u64_any(u)?),
                    "count" => AMQPValue::LongLongInt(i64_any(u)?),
                    "routing-keys" => {
                        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                            LongString::from(bytes(u)?),
                        )]))
                    }
                    _ => AMQPValue::LongString(LongString::from(bytes(u)?)),
                }
            };
            t.insert(ShortString::from(key), v);
        }
        records.push(AMQPValue::FieldTable(t));
    }
    Ok(AMQPValue::FieldArray(FieldArray::from(records)))
}

fn headers(u: &mut Unstructured) -> Result<FieldTable> {
    let mut t = table(u, 1)?;
    if u.ratio(1, 4)? {
        t.insert(ShortString::from("x-death"), x_death(u)?);
    }
    Ok(t)
}

fn opt_short(u: &mut Unstructured, common: &[&str]) -> Result<Option<ShortString>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 | 2 if !common.is_empty() => Some(ShortString::from(pick(u, common)?)),
        _ => Some(short(&text(u)?)),
    })
}

fn props(u: &mut Unstructured) -> Result<BasicProperties> {
    let mut p = BasicProperties::default();
    if let Some(id) = opt_short(u, &["job-1", "", " ", "\u{0}"])? {
        p = p.with_message_id(id);
    }
    if u.ratio(2, 3)? {
        p = p.with_timestamp(u64_any(u)?);
    }
    if let Some(v) = opt_short(u, &["application/json", "text/plain"])? {
        p = p.with_content_type(v);
    }
    if let Some(v) = opt_short(u, &["gzip", "utf-8"])? {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = opt_short(u, &["60000", "-1", "0"])? {
        p = p.with_expiration(v);
    }
    if u.arbitrary()? {
        p = p.with_delivery_mode(u.arbitrary()?);
    }
    if u.arbitrary()? {
        p = p.with_priority(u.arbitrary()?);
    }
    if u.ratio(3, 4)? {
        p = p.with_headers(headers(u)?);
    }
    if u.ratio(1, 4)? {
        p = p
            .with_correlation_id(short(&text(u)?))
            .with_reply_to(short(&text(u)?))
            .with_type(short(&text(u)?))
            .with_user_id(short(&text(u)?))
            .with_app_id(short(&text(u)?))
            .with_cluster_id(short(&text(u)?));
    }
    Ok(p)
}

/// A JSON value of any type, depth-limited.
fn json_any(u: &mut Unstructured, depth: usize) -> Result<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(i64_any(u)?)),
        3 => Value::Number(Number::from(u64_any(u)?)),
        4 => Number::from_f64(f64_any(u)?).map_or(Value::Null, Value::Number),
        5 if depth < MAX_DEPTH => {
            let n = u.int_in_range(0..=4)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(json_any(u, depth + 1)?);
            }
            Value::Array(v)
        }
        6 if depth < MAX_DEPTH => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(text(u)?, json_any(u, depth + 1)?);
            }
            Value::Object(m)
        }
        _ => Value::String(text(u)?),
    })
}

/// A job body of the right shape: each field usually of its type (with
/// boundary values), sometimes of any type.
fn job_object(u: &mut Unstructured) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for field in [
        "from",
        "to",
        "text",
        "media_urls",
        "type",
        "messaging_profile_id",
        "webhook_url",
    ] {
        if u.ratio(1, 6)? {
            continue;
        }
        let v = if u.ratio(1, 8)? {
            json_any(u, 1)?
        } else {
            match field {
                "from" => Value::String(
                    pick(u, &["+15551234567", "+18005550100", "12345", "ACME"])?.into(),
                ),
                "to" => Value::String(pick(u, &["+15559876543", "+447700900123"])?.into()),
                "media_urls" if u.ratio(1, 2)? => {
                    let n = u.int_in_range(0..=12)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(Value::String(if u.ratio(3, 4)? {
                            "https://m.example/a.png".to_owned()
                        } else {
                            text(u)?
                        }));
                    }
                    Value::Array(v)
                }
                "media_urls" | "webhook_url" => Value::Null,
                "type" => Value::String(pick(u, &["SMS", "MMS"])?.into()),
                _ => Value::String(text(u)?),
            }
        };
        m.insert(field.to_owned(), v);
    }
    // Fields the worker does not know, forwarded as they are.
    for _ in 0..u.int_in_range(0..=2)? {
        m.insert(text(u)?, json_any(u, 1)?);
    }
    Ok(m)
}

fn body(u: &mut Unstructured) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=63)? {
        // Raw bytes: not UTF-8, not JSON, truncated JSON...
        0..=11 => u.arbitrary::<&[u8]>()?.to_vec(),
        // The right shape with wrong or boundary values.
        12..=39 => serde_json::to_vec(&Value::Object(job_object(u)?)).unwrap_or_default(),
        // A job with a few bytes changed.
        40..=49 => {
            let mut b = serde_json::to_vec(&Value::Object(job_object(u)?)).unwrap_or_default();
            for _ in 0..u.int_in_range(1..=4)? {
                if b.is_empty() {
                    break;
                }
                let i = u.choose_index(b.len())?;
                b[i] = u.arbitrary()?;
            }
            b
        }
        // Deeply nested JSON, alone or in a field the worker forwards.
        50..=61 => {
            let n = u.int_in_range(1..=5_000)?;
            let (open, close) = if u.arbitrary()? {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let inner = format!("{}1{}", open.repeat(n), close.repeat(n));
            if u.arbitrary()? {
                inner.into_bytes()
            } else {
                format!(
                    r#"{{"from":"+15551234567","to":"+15559876543","text":"x","extra":{inner}}}"#
                )
                .into_bytes()
            }
        }
        // Large: a job padded with whitespace, a long text, or one
        // repeated byte: up to 2^k bytes, k up to 20 (1 MiB; the default
        // limit is 256 KiB), rare enough to keep the run fast.
        _ => {
            let k = u.int_in_range(8..=20)?;
            let n = u.int_in_range(0..=(1usize << k) + 64)?;
            match u.int_in_range(0..=2)? {
                0 => {
                    let mut b =
                        br#"{"from":"+15551234567","to":"+15559876543","text":"x"}"#.to_vec();
                    b.resize(b.len() + n, b' ');
                    b
                }
                1 => {
                    let c = pick(u, CHARS)?;
                    let t: String = std::iter::repeat_n(c, n / 4).collect();
                    serde_json::to_vec(&serde_json::json!({
                        "from": "+15551234567", "to": "+15559876543", "text": t
                    }))
                    .unwrap_or_default()
                }
                _ => vec![u.arbitrary()?; n],
            }
        }
    })
}

impl<'a> Arbitrary<'a> for Delivery {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let max_body_bytes = match u.int_in_range(0..=5)? {
            0 => u.arbitrary()?,
            1 => pick(u, &[0, 1, 64, 1 << 20, usize::MAX])?,
            _ => 262_144,
        };
        let max_age = match u.int_in_range(0..=4)? {
            0 | 1 => None,
            2 => Some(Duration::from_secs(u64_any(u)?)),
            3 => Some(pick(
                u,
                &[Duration::ZERO, Duration::MAX, Duration::from_secs(60)],
            )?),
            _ => Some(Duration::new(
                u.arbitrary()?,
                u.int_in_range(0..=999_999_999)?,
            )),
        };
        let props = props(u)?;
        let body = body(u)?;
        Ok(Delivery {
            props,
            body,
            max_body_bytes,
            max_age,
        })
    }
}
