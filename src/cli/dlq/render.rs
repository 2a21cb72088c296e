//! How DLQ entries are printed: the table, the full view of one entry, JSON,
//! and the defences against producer text that could drive a terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::{Map, Value, json};

use super::Report;
use super::entry::Entry;

/// "dlq replay: examined 2000/52000, matched 800, replayed 780, failed 0"
pub(super) fn progress(
    err: &mut dyn Write,
    every: u64,
    command: &str,
    report: &Report,
    (done, n): (&str, u64),
) -> std::io::Result<()> {
    if every > 0 && report.scanned > 0 && report.scanned.is_multiple_of(every) {
        writeln!(
            err,
            "dlq {command}: examined {}/{}, matched {}, {done} {n}, failed {}",
            report.scanned, report.total, report.matched, report.failed
        )?;
    }
    Ok(())
}

/// RFC 3339; a time it cannot write (after year 9999) as unix seconds.
pub(super) fn rfc3339(t: SystemTime) -> String {
    crate::job::time::rfc3339(t)
}

/// An AMQP timestamp (producer-set, any `u64`) as RFC 3339, or as the bare
/// number when it is past year 9999.
fn timestamp_json(t: u64) -> Value {
    match crate::job::time::from_unix_secs(t) {
        Some(at) => json!(rfc3339(at)),
        None => json!(t),
    }
}

/// "42s", "17m", "5h12m", "3d4h".
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, (s % 86_400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// One line of text from producer- or API-supplied data: control characters
/// (which could drive the terminal) become `?`, runs of whitespace a space.
pub(super) fn one_line(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for c in s.chars() {
        let c = if c.is_whitespace() {
            ' '
        } else if c.is_control() {
            '?'
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == max_chars {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// JSON text for the terminal. serde_json escapes only the controls below
/// U+0020 in strings: DEL and the C1 controls (U+007F to U+009F, among them
/// U+009B, a CSI on some terminals) stay raw. They are written as `\u`
/// escapes here, which is still the same JSON. (Found by fuzzing.)
pub(super) fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_control() && c != '\n' {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Multi-line text with control characters other than newline and tab escaped.
pub(super) fn safe_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

const TABLE_HEADER: &str = "JOB ID                                 REASON              CODE    STATUS  ATTEMPTS  AGE      DETAIL";

/// A table row, after the header if it is the first.
pub(super) fn write_row(
    out: &mut dyn Write,
    header_done: &mut bool,
    e: &Entry,
    now: SystemTime,
) -> std::io::Result<()> {
    if !*header_done {
        writeln!(out, "{TABLE_HEADER}")?;
        *header_done = true;
    }
    writeln!(out, "{}", table_row(e, now))
}

pub fn table_row(e: &Entry, now: SystemTime) -> String {
    let dash = || "-".to_owned();
    let detail = match (&e.title, &e.detail, &e.death_queue) {
        (_, Some(d), _) => d.clone(),
        (Some(t), None, _) => t.clone(),
        (None, None, Some(q)) => format!("dead-lettered by RabbitMQ from {q}"),
        (None, None, None) => String::new(),
    };
    format!(
        "{:<38} {:<19} {:<7} {:<7} {:>8}  {:<8} {}",
        e.job_id.as_deref().map_or_else(dash, |s| one_line(s, 64)),
        one_line(&e.reason, 40),
        e.code.as_deref().map_or_else(dash, |s| one_line(s, 16)),
        e.http_status.map_or_else(dash, |s| s.to_string()),
        e.attempts.map_or_else(dash, |a| a.to_string()),
        e.age(now).map_or_else(dash, format_age),
        one_line(&detail, 60),
    )
}

pub(super) fn by_reason_line(by_reason: &BTreeMap<String, u64>) -> String {
    if by_reason.is_empty() {
        return "none".to_owned();
    }
    let mut v: Vec<_> = by_reason.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(r, n)| format!("{} {n}", one_line(r, 40)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn properties_json(p: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put(
        "message_id",
        p.message_id().as_ref().map(|v| json!(v.as_str())),
    );
    put(
        "content_type",
        p.content_type().as_ref().map(|v| json!(v.as_str())),
    );
    put(
        "content_encoding",
        p.content_encoding().as_ref().map(|v| json!(v.as_str())),
    );
    put("delivery_mode", p.delivery_mode().map(|v| json!(v)));
    put("priority", p.priority().map(|v| json!(v)));
    put(
        "correlation_id",
        p.correlation_id().as_ref().map(|v| json!(v.as_str())),
    );
    put("reply_to", p.reply_to().as_ref().map(|v| json!(v.as_str())));
    put(
        "expiration",
        p.expiration().as_ref().map(|v| json!(v.as_str())),
    );
    put("timestamp", p.timestamp().map(timestamp_json));
    put("type", p.kind().as_ref().map(|v| json!(v.as_str())));
    put("user_id", p.user_id().as_ref().map(|v| json!(v.as_str())));
    put("app_id", p.app_id().as_ref().map(|v| json!(v.as_str())));
    put(
        "cluster_id",
        p.cluster_id().as_ref().map(|v| json!(v.as_str())),
    );
    m
}

/// Tables and arrays nested deeper than this are shown as a marker.
pub const MAX_JSON_DEPTH: usize = 32;

/// An AMQP value as JSON (timestamps as RFC 3339, byte arrays escaped,
/// nesting cut at [`MAX_JSON_DEPTH`]).
pub fn amqp_json(v: &AMQPValue) -> Value {
    amqp_json_at(v, 0)
}

fn amqp_json_at(v: &AMQPValue, depth: usize) -> Value {
    if depth >= MAX_JSON_DEPTH && matches!(v, AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_)) {
        return json!(format!("(nested deeper than {MAX_JSON_DEPTH} levels)"));
    }
    let inner = |v: &AMQPValue| amqp_json_at(v, depth + 1);
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(inner).collect()),
        AMQPValue::Timestamp(t) => timestamp_json(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), inner(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(b.as_slice().escape_ascii().to_string()),
        AMQPValue::Void => Value::Null,
    }
}

fn headers_json(p: &BasicProperties) -> Map<String, Value> {
    p.headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The body as JSON if it is JSON, else as text if UTF-8, else escaped bytes.
enum Body {
    Json(Value),
    Text(String),
    Bytes(String),
}

fn body(data: &[u8]) -> Body {
    match std::str::from_utf8(data) {
        Ok(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => Body::Json(v),
            Err(_) => Body::Text(s.to_owned()),
        },
        Err(_) => Body::Bytes(data.escape_ascii().to_string()),
    }
}

pub fn write_entry(
    out: &mut dyn Write,
    props: &BasicProperties,
    data: &[u8],
    redelivered: bool,
    now: SystemTime,
) -> std::io::Result<()> {
    let e = Entry::from_props(props);
    let field = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_owned(), safe_text);
    writeln!(out, "job id:       {}", field(&e.job_id))?;
    writeln!(out, "reason:       {}", safe_text(&e.reason))?;
    writeln!(out, "code:         {}", field(&e.code))?;
    writeln!(out, "title:        {}", field(&e.title))?;
    writeln!(out, "detail:       {}", field(&e.detail))?;
    writeln!(
        out,
        "http status:  {}",
        e.http_status
            .map_or_else(|| "-".to_owned(), |s| s.to_string())
    )?;
    writeln!(
        out,
        "attempts:     {}",
        e.attempts.map_or_else(|| "-".to_owned(), |s| s.to_string())
    )?;
    match e.failed_at {
        Some(at) => writeln!(
            out,
            "failed at:    {} ({} ago)",
            rfc3339(at),
            format_age(e.age(now).unwrap_or_default())
        )?,
        None => writeln!(out, "failed at:    -")?,
    }
    writeln!(
        out,
        "deliveries:   {} (redelivered: {redelivered})",
        e.delivery_count.unwrap_or(0).saturating_add(1)
    )?;
    writeln!(out, "properties:")?;
    for (k, v) in properties_json(props) {
        writeln!(out, "  {k}: {}", json_for_terminal(&v.to_string()))?;
    }
    writeln!(out, "headers:")?;
    for (k, v) in headers_json(props) {
        writeln!(
            out,
            "  {}: {}",
            safe_text(&k),
            json_for_terminal(&v.to_string())
        )?;
    }
    match body(data) {
        Body::Json(v) => {
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            let pretty = json_for_terminal(&pretty);
            writeln!(out, "body ({} bytes, JSON):\n{pretty}", data.len())?;
        }
        Body::Text(s) => writeln!(out, "body ({} bytes, text):\n{}", data.len(), safe_text(&s))?,
        Body::Bytes(s) => writeln!(out, "body ({} bytes, not UTF-8):\n{s}", data.len())?,
    }
    Ok(())
}

pub fn entry_json(
    props: &BasicProperties,
    data: &[u8],
    redelivered: bool,
    now: SystemTime,
) -> Value {
    let mut v = Entry::from_props(props).json(now);
    if let Value::Object(m) = &mut v {
        m.insert("redelivered".into(), json!(redelivered));
        m.insert("properties".into(), Value::Object(properties_json(props)));
        m.insert("headers".into(), Value::Object(headers_json(props)));
        let (k, b) = match body(data) {
            Body::Json(j) => ("body", j),
            Body::Text(s) => ("body_text", json!(s)),
            Body::Bytes(s) => ("body_bytes_escaped", json!(s)),
        };
        m.insert(k.into(), b);
    }
    v
}
