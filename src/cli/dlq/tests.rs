//! Unit tests of the DLQ tool: entries, filters, replayed copies, rendering
//! and the command line. The broker round trips are in `tests/dlq.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::entry::*;
use super::render::*;
use super::*;
use crate::amqp::headers;
use crate::pipeline::{DeadReason, dead_letter_props};
use crate::telnyx::Failure;
use clap::Parser;
use lapin::types::FieldArray;

fn original() -> BasicProperties {
    let p = BasicProperties::default()
        .with_message_id("job-1".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(1_700_000_000)
        .with_correlation_id("corr".into())
        .with_expiration("5000".into());
    let p = headers::with_header(p, "x-tenant", headers::string("acme"));
    let p = headers::with_header(p, headers::RATE_LIMIT_BOUNCES, headers::int(3));
    headers::with_header(p, headers::DEFERRALS, headers::int(2))
}

fn dead(reason: DeadReason, code: Option<&str>, status: Option<u16>) -> BasicProperties {
    let f = Failure {
        status,
        code: code.map(str::to_owned),
        title: "Blocked".into(),
        detail: "The recipient replied\nSTOP.".into(),
        retry_after: None,
        ..Failure::default()
    };
    dead_letter_props(&original(), reason, &f, 4)
}

fn death(reason: &str, time: u64) -> AMQPValue {
    let mut t = FieldTable::default();
    t.insert("reason".into(), headers::string(reason));
    t.insert("queue".into(), headers::string("messages.send"));
    t.insert("count".into(), AMQPValue::LongLongInt(1));
    t.insert("time".into(), AMQPValue::Timestamp(time));
    AMQPValue::FieldTable(t)
}

fn poison() -> BasicProperties {
    let mut arr = FieldArray::default();
    arr.push(death("delivery_limit", 1_700_000_500));
    arr.push(death("expired", 1_700_000_100));
    let p = headers::with_header(
        BasicProperties::default()
            .with_message_id("poison-1".into())
            .with_timestamp(1_700_000_000),
        "x-death",
        AMQPValue::FieldArray(arr),
    );
    let p = headers::with_header(p, "x-first-death-reason", headers::string("expired"));
    headers::with_header(p, "x-delivery-count", headers::int(2))
}

#[test]
fn entries_of_the_worker_are_read_from_the_x_error_headers() {
    let e = Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403)));
    assert_eq!(e.job_id.as_deref(), Some("job-1"));
    assert_eq!(e.reason, "permanent");
    assert_eq!(e.code.as_deref(), Some("40300"));
    assert_eq!(e.http_status, Some(403));
    assert_eq!(e.attempts, Some(4));
    assert_eq!(e.title.as_deref(), Some("Blocked"));
    let age = e.age(SystemTime::now()).expect("x-failed-at is read");
    assert!(age < Duration::from_secs(60), "{age:?}");

    // A validation rejection has no code and no HTTP status.
    let e = Entry::from_props(&dead(DeadReason::Validation, None, None));
    assert_eq!(e.reason, "validation");
    assert_eq!(e.code, None);
    assert_eq!(e.http_status, None);
}

#[test]
fn entries_dead_lettered_by_rabbitmq_use_the_latest_x_death() {
    let e = Entry::from_props(&poison());
    assert_eq!(e.reason, "delivery_limit");
    assert_eq!(e.job_id.as_deref(), Some("poison-1"));
    assert_eq!(e.code, None);
    assert_eq!(e.attempts, None);
    assert_eq!(e.delivery_count, Some(2));
    assert_eq!(
        e.failed_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_500))
    );
    // Nothing at all: unknown reason, age from the AMQP timestamp.
    let e = Entry::from_props(&BasicProperties::default().with_timestamp(1_700_000_000));
    assert_eq!(e.reason, "unknown");
    assert_eq!(e.job_id, None);
    assert_eq!(
        e.failed_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );
    assert_eq!(
        Entry::from_props(&BasicProperties::default()).failed_at,
        None
    );
}

#[test]
fn filters_combine_reason_code_job_and_age() {
    let now = SystemTime::now();
    let perm = Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403)));
    let poison = Entry::from_props(&poison());
    let f = |tweak: fn(&mut Filter)| {
        let mut f = Filter::default();
        tweak(&mut f);
        f
    };
    assert!(Filter::default().matches(&perm, now));
    assert!(f(|f| f.reasons = vec!["permanent".into()]).matches(&perm, now));
    assert!(!f(|f| f.reasons = vec!["validation".into()]).matches(&perm, now));
    assert!(f(|f| f.reasons = vec!["validation".into(), "PERMANENT".into()]).matches(&perm, now));
    // `_` and `-` are the same.
    assert!(f(|f| f.reasons = vec!["delivery-limit".into()]).matches(&poison, now));
    assert!(f(|f| f.reasons = vec!["delivery_limit".into()]).matches(&poison, now));
    assert!(f(|f| f.codes = vec!["40300".into()]).matches(&perm, now));
    assert!(!f(|f| f.codes = vec!["40310".into()]).matches(&perm, now));
    assert!(!f(|f| f.codes = vec!["40300".into()]).matches(&poison, now));
    assert!(f(|f| f.job_ids = vec!["job-1".into()]).matches(&perm, now));
    assert!(!f(|f| f.job_ids = vec!["job-2".into()]).matches(&perm, now));
    // perm failed just now; poison in 2023.
    let older_1h = f(|f| f.older_than = Some(Duration::from_secs(3600)));
    let newer_1h = f(|f| f.newer_than = Some(Duration::from_secs(3600)));
    assert!(!older_1h.matches(&perm, now));
    assert!(older_1h.matches(&poison, now));
    assert!(newer_1h.matches(&perm, now));
    assert!(!newer_1h.matches(&poison, now));
    // Unknown age never matches an age filter.
    let ageless = Entry::from_props(&BasicProperties::default());
    assert!(!older_1h.matches(&ageless, now));
    assert!(!newer_1h.matches(&ageless, now));
    assert!(Filter::default().matches(&ageless, now));
    // Criteria combine.
    let both = f(|f| {
        f.reasons = vec!["permanent".into()];
        f.codes = vec!["40310".into()];
    });
    assert!(!both.matches(&perm, now));
}

#[test]
fn the_limit_counts_matches() {
    let f = Filter {
        limit: Some(2),
        ..Filter::default()
    };
    assert!(!f.is_empty());
    assert!(f.under_limit(1));
    assert!(!f.under_limit(2));
    assert!(Filter::default().under_limit(u64::MAX - 1));
    assert!(Filter::default().is_empty());
}

#[test]
fn replayed_copies_lose_the_verdict_and_counters_and_keep_the_rest() {
    let mut p = dead(DeadReason::AttemptsExhausted, Some("10007"), Some(500));
    for (k, v) in poison().headers().clone().unwrap_or_default().inner() {
        p = headers::with_header(p, k.as_str(), v.clone());
    }
    let r = replay_props(&p);
    for h in STRIPPED_ON_REPLAY {
        assert!(
            headers::get_string(&r, h).is_none() && !r.headers().as_ref().unwrap().contains_key(h),
            "{h} kept"
        );
    }
    assert_eq!(crate::job::attempts_made(&r), 0, "attempts reset");
    assert_eq!(headers::get_string(&r, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(r.message_id().as_ref().unwrap().as_str(), "job-1");
    assert_eq!(r.correlation_id().as_ref().unwrap().as_str(), "corr");
    assert_eq!(
        r.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(r.timestamp(), &Some(1_700_000_000));
    assert_eq!(r.delivery_mode(), &Some(2));
    assert_eq!(r.expiration(), &None);
    // No headers left at all: none sent.
    let bare = replay_props(&poison());
    assert!(bare.headers().is_none());
}

#[test]
fn ages_are_short() {
    assert_eq!(format_age(Duration::from_secs(0)), "0s");
    assert_eq!(format_age(Duration::from_secs(59)), "59s");
    assert_eq!(format_age(Duration::from_secs(61)), "1m");
    assert_eq!(format_age(Duration::from_secs(3600)), "1h");
    assert_eq!(format_age(Duration::from_secs(3600 + 120)), "1h2m");
    assert_eq!(format_age(Duration::from_secs(86_400 * 3)), "3d");
    assert_eq!(format_age(Duration::from_secs(86_400 * 3 + 7200)), "3d2h");
}

#[test]
fn producer_text_cannot_drive_the_terminal() {
    assert_eq!(one_line("a\x1b[31mb\nc", 100), "a?[31mb c");
    assert_eq!(one_line("abcdef", 3), "abc…");
    assert_eq!(one_line("a  \n\t b", 10), "a b");
    assert_eq!(safe_text("x\x1by\nz"), "x\\u{1b}y\nz");
    let row = table_row(
        &Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403))),
        SystemTime::now(),
    );
    assert!(row.contains("The recipient replied STOP."), "{row}");
    assert!(!row.contains('\n'));
}

#[test]
fn amqp_values_render_as_json() {
    let v = amqp_json(&AMQPValue::FieldArray({
        let mut a = FieldArray::default();
        a.push(death("delivery_limit", 0));
        a
    }));
    assert_eq!(v[0]["reason"], "delivery_limit");
    assert_eq!(v[0]["time"], "1970-01-01T00:00:00Z");
    assert_eq!(v[0]["count"], 1);
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: DlqCommand,
}

#[test]
fn the_command_line_parses() {
    let cli = Cli::try_parse_from([
        "dlq",
        "replay",
        "--reason",
        "validation",
        "--reason",
        "permanent",
        "--code",
        "40300",
        "--older-than",
        "2h",
        "--newer-than",
        "7d",
        "--limit",
        "10",
        "--dry-run",
    ])
    .expect("parses");
    let DlqCommand::Replay {
        filter, dry_run, ..
    } = cli.cmd
    else {
        panic!("not replay");
    };
    assert!(dry_run);
    assert_eq!(filter.reasons, ["validation", "permanent"]);
    assert_eq!(filter.codes, ["40300"]);
    assert_eq!(filter.older_than, Some(Duration::from_secs(7200)));
    assert_eq!(filter.newer_than, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(filter.limit, Some(10));
    assert!(Cli::try_parse_from(["dlq", "list", "--older-than", "soon"]).is_err());
    assert!(
        Cli::try_parse_from(["dlq", "show"]).is_err(),
        "job id required"
    );
    assert!(Cli::try_parse_from(["dlq", "purge", "--yes"]).is_ok());
    assert!(Cli::try_parse_from(["dlq", "replay", "--batch", "0"]).is_err());
}

/// Panics found by review for issue #9: `UNIX_EPOCH + secs` on an absurd
/// AMQP timestamp or `x-death` time, humantime's formatter on a time after
/// year 9999, and `delivery_count + 1`.
#[test]
fn absurd_entries_render_without_panicking() {
    let mut arr = FieldArray::default();
    arr.push(death("delivery_limit", u64::MAX));
    let mut p = BasicProperties::default()
        .with_message_id("absurd".into())
        .with_timestamp(u64::MAX);
    p = headers::with_header(p, "x-death", AMQPValue::FieldArray(arr));
    p = headers::with_header(p, "x-delivery-count", AMQPValue::Timestamp(u64::MAX));
    p = headers::with_header(p, headers::FAILED_AT, headers::string("1e300"));
    p = headers::with_header(p, "x-when", AMQPValue::Timestamp(i64::MAX as u64 + 1));
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let e = Entry::from_props(&p);
    assert_eq!(e.failed_at, None, "no usable time");
    assert_eq!(e.delivery_count, Some(u64::MAX));
    let mut out = Vec::new();
    write_entry(&mut out, &p, b"{}", true, now).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(&format!("deliveries:   {}", u64::MAX)),
        "{text}"
    );
    let j = entry_json(&p, b"{}", false, now);
    assert_eq!(j["properties"]["timestamp"], serde_json::json!(u64::MAX));
    assert_eq!(
        j["headers"]["x-when"],
        serde_json::json!(i64::MAX as u64 + 1)
    );
    let _ = table_row(&e, now);

    // The last second RFC 3339 can write is still a time.
    let p = BasicProperties::default().with_timestamp(crate::job::time::LATEST_SECS);
    let e = Entry::from_props(&p);
    assert!(e.failed_at.is_some());
    let j = entry_json(&p, b"", false, now);
    assert_eq!(j["properties"]["timestamp"], "9999-12-31T23:59:59Z");
    assert_eq!(j["age_secs"], 0, "in the future: age zero");
}

#[test]
fn deeply_nested_headers_are_cut_when_rendered() {
    let mut v = headers::string("deep");
    for i in 0..200 {
        let mut t = FieldTable::default();
        t.insert(format!("k{i}").as_str().into(), v);
        v = AMQPValue::FieldTable(t);
    }
    let j = amqp_json(&v);
    let mut depth = 0;
    let mut cur = &j;
    while let serde_json::Value::Object(m) = cur {
        cur = m.values().next().unwrap();
        depth += 1;
    }
    assert_eq!(depth, MAX_JSON_DEPTH);
    assert!(cur.as_str().unwrap().contains("nested deeper"));
}

/// Found by fuzzing (fuzz target `dlq_entry` and `decode`, FUZZING.md): the
/// full view printed DEL and C1 controls (U+009B is a CSI on some terminals)
/// raw, because serde_json escapes only those below U+0020 in strings.
#[test]
fn the_full_view_escapes_del_and_c1_controls_in_json() {
    let p = BasicProperties::default()
        .with_message_id("job\u{7f}1".into())
        .with_app_id("app\u{9b}31m".into());
    let p = headers::with_header(p, "x-tenant", headers::string("a\u{85}b\u{9b}2J"));
    // Raw DEL and CSI are valid in a JSON string; ESC must come escaped.
    let body = "{\"text\":\"hi\u{7f}\u{9b}31m\",\"to\":\"\\u001b[2J\"}";
    let mut out = Vec::new();
    write_entry(&mut out, &p, body.as_bytes(), false, SystemTime::now()).unwrap();
    let text = String::from_utf8(out).unwrap();
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(raw.is_empty(), "raw controls {raw:?} in:\n{text}");
    // Still JSON, with the same strings.
    assert!(text.contains(r#"app_id: "app\u009b31m""#), "{text}");
    assert!(text.contains(r#"x-tenant: "a\u0085b\u009b2J""#), "{text}");
    assert!(text.contains(r#""text": "hi\u007f\u009b31m""#), "{text}");
    assert!(text.contains(r#""to": "\u001b[2J""#), "{text}");
    assert_eq!(json_for_terminal("\"\u{7f}\"\n"), "\"\\u007f\"\n");
}
