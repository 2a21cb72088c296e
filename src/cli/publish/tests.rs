//! Unit tests of the readers, the ids and the preparation (no broker; the
//! broker side is in `tests/publish.rs`).

use std::io::Cursor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::input::{CsvReader, InputError, JsonlReader, Raw, split_media};
use super::prepare::{Ids, Stamp, derived_id};
use crate::amqp::headers;

fn jsonl(text: &str) -> Vec<Raw> {
    jsonl_limited(text, 1 << 16)
}

fn jsonl_limited(text: &str, limit: usize) -> Vec<Raw> {
    JsonlReader::new(Cursor::new(text.as_bytes().to_vec()), limit)
        .map(|r| r.expect("no I/O error"))
        .collect()
}

fn csv(text: &str) -> Result<Vec<Raw>, InputError> {
    Ok(CsvReader::new(Cursor::new(text.as_bytes().to_vec()))?
        .map(|r| r.expect("no I/O error"))
        .collect())
}

fn body(r: &Raw) -> serde_json::Value {
    serde_json::from_slice(r.body.as_ref().expect("a body")).expect("JSON")
}

fn stamp(ids: Ids) -> Stamp {
    Stamp {
        ids,
        expires_in: None,
        max_body_bytes: 262_144,
        max_age: None,
    }
}

#[test]
fn jsonl_lines_keep_their_numbers_and_skip_blank_lines() {
    let raws =
        jsonl("{\"to\":\"+15550000001\"}\n\n   \n{\"to\":\"+15550000002\"}\r\n{\"to\":\"+3\"}");
    let lines: Vec<u64> = raws.iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 4, 5]);
    assert_eq!(body(&raws[1])["to"], "+15550000002", "CR stripped");
    assert_eq!(raws[2].body.as_deref(), Ok(&b"{\"to\":\"+3\"}"[..]));
    assert!(raws[0].end < raws[1].end && raws[1].end < raws[2].end);
}

#[test]
fn a_line_without_an_id_is_forwarded_byte_for_byte() {
    let line = r#"{"text":"x",  "to":"+15550000001", "from":"+15551234567"}"#;
    let raws = jsonl(line);
    assert_eq!(raws[0].body.as_deref(), Ok(line.as_bytes()));
    assert_eq!(raws[0].id, None);
}

#[test]
fn job_id_and_id_fields_become_the_id_and_leave_the_body() {
    let raws = jsonl(concat!(
        r#"{"job_id":"order-1","to":"+15550000001","future":{"a":[1,2.5]}}"#,
        "\n",
        r#"{"id":42,"to":"+15550000002"}"#,
        "\n",
        r#"{"job_id":"a","id":"b","to":"+15550000003"}"#,
        "\n",
        r#"{"job_id":"","to":"+15550000004"}"#,
        "\n",
        r#"{"job_id":{"x":1},"to":"+15550000005"}"#,
        "\n",
    ));
    assert_eq!(raws[0].id.as_deref(), Some("order-1"));
    assert_eq!(
        body(&raws[0]),
        serde_json::json!({"to":"+15550000001","future":{"a":[1,2.5]}})
    );
    assert_eq!(raws[1].id.as_deref(), Some("42"));
    assert_eq!(body(&raws[1]), serde_json::json!({"to":"+15550000002"}));
    assert_eq!(raws[2].id.as_deref(), Some("a"), "job_id wins over id");
    assert_eq!(body(&raws[2]), serde_json::json!({"to":"+15550000003"}));
    assert_eq!(raws[3].id, None, "an empty id is no id");
    assert!(
        raws[4]
            .body
            .as_ref()
            .unwrap_err()
            .contains("`job_id` must be")
    );
}

#[test]
fn an_overlong_line_is_reported_and_the_next_one_read() {
    let long = format!("{{\"text\":\"{}\"}}", "x".repeat(5000));
    let raws = jsonl_limited(&format!("{long}\n{{\"to\":\"+15550000001\"}}\n"), 1024);
    assert_eq!(raws.len(), 2);
    assert!(
        raws[0]
            .body
            .as_ref()
            .unwrap_err()
            .contains("longer than 1024")
    );
    assert_eq!(raws[1].line, 2);
    assert_eq!(body(&raws[1])["to"], "+15550000001");
}

#[test]
fn csv_rows_become_telnyx_requests() {
    let raws = csv(concat!(
        "\u{feff}To, From ,text,media_urls,ID,messaging_profile_id\n",
        "+15550000001,+15551234567,\"Hello, world\",,order-9,\n",
        "+15550000002,,\" spaced \",https://a.example/1.png https://a.example/2.png,,prof-1\n",
        "+15550000003,ACME,\"two\nlines\",\"[\"\"https://a.example/x.png\"\"]\",,\n",
        "+15550000004,ACME,too,many,fields,here,!\n",
        "+15550000005,ACME,last,,,\n",
    ))
    .expect("the header is fine");
    assert_eq!(
        raws.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 3, 4, 6, 7],
        "a record's line is where it starts"
    );
    assert_eq!(raws[0].id.as_deref(), Some("order-9"));
    assert_eq!(
        body(&raws[0]),
        serde_json::json!({"to":"+15550000001","from":"+15551234567","text":"Hello, world"})
    );
    assert_eq!(raws[1].id, None);
    assert_eq!(
        body(&raws[1]),
        serde_json::json!({"to":"+15550000002","text":" spaced ",
            "media_urls":["https://a.example/1.png","https://a.example/2.png"],
            "messaging_profile_id":"prof-1"})
    );
    assert_eq!(body(&raws[2])["text"], "two\nlines");
    assert_eq!(
        body(&raws[2])["media_urls"],
        serde_json::json!(["https://a.example/x.png"])
    );
    assert!(
        raws[3]
            .body
            .as_ref()
            .unwrap_err()
            .contains("7 fields; the header has 6")
    );
    assert_eq!(body(&raws[4])["text"], "last");
}

#[test]
fn csv_headers_must_name_known_columns_and_a_to() {
    let err = |text: &str| csv(text).map(|_| ()).unwrap_err().to_string();
    assert!(err("to,txt\n+1,x\n").contains("unknown CSV column \"txt\""));
    assert!(err("from,text\nACME,x\n").contains("no `to` column"));
    assert!(err("to,job_id,id\n").contains("appears twice"));
}

#[test]
fn media_cells() {
    assert_eq!(
        split_media(" https://a/1 | https://a/2  https://a/3 "),
        Ok(vec![
            "https://a/1".into(),
            "https://a/2".into(),
            "https://a/3".into()
        ])
    );
    assert_eq!(split_media(""), Ok(vec![]));
    assert!(split_media("[1]").is_err());
}

#[test]
fn derived_ids_are_stable_and_differ_by_name_and_line() {
    let a = derived_id("jobs.csv", 2);
    assert_eq!(a, derived_id("jobs.csv", 2));
    assert_ne!(a, derived_id("jobs.csv", 3));
    assert_ne!(a, derived_id("other.csv", 2));
    // A UUIDv5 in the published namespace: producers can compute it too.
    let expected = uuid::Uuid::new_v5(&super::ID_NAMESPACE, b"jobs.csv:2");
    assert_eq!(a, expected.to_string());
    assert_eq!(expected.get_version_num(), 5);
}

#[test]
fn prepared_jobs_carry_the_properties_of_a_safe_publish() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut s = stamp(Ids::Derived("jobs.jsonl".into()));
    s.expires_in = Some(Duration::from_secs(300));
    let raw = jsonl(r#"{"from":"+15551234567","to":"+15559876543","text":"hi"}"#).remove(0);
    let item = s.prepare(raw, now);
    let job = item.job.expect("valid");
    assert_eq!(job.id, derived_id("jobs.jsonl", 1));
    let p = &job.props;
    assert_eq!(
        p.message_id().as_ref().map(|m| m.as_str()),
        Some(job.id.as_str())
    );
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|m| m.as_str()),
        Some("application/json")
    );
    assert_eq!(p.timestamp(), &Some(1_700_000_000));
    let expires = headers::get_string(p, headers::EXPIRES_AT).expect("x-expires-at");
    assert_eq!(expires, "2023-11-14T22:18:20Z");
    assert_eq!(
        crate::job::parse_deadline(&expires),
        Some(now + Duration::from_secs(300))
    );
}

#[test]
fn the_workers_validator_decides_and_its_reason_is_kept() {
    let s = stamp(Ids::Derived("f".into()));
    let now = SystemTime::now();
    let reason = |line: &str| {
        s.prepare(jsonl(line).remove(0), now)
            .job
            .map(|_| ())
            .unwrap_err()
    };
    assert!(reason(r#"{"from":"+15551234567","to":"12345","text":"x"}"#).contains("E.164"));
    assert!(reason(r#"{"from":"+15551234567","to":"+15559876543"}"#).contains("`text` or"));
    assert!(reason("[1]").starts_with("malformed: "));
    let long_text = format!(
        r#"{{"from":"+15551234567","to":"+15559876543","text":"{}"}}"#,
        "✓".repeat(671)
    );
    assert!(reason(&long_text).contains("UCS-2"));
    let long_id = format!(
        r#"{{"job_id":"{}","from":"+15551234567","to":"+15559876543","text":"x"}}"#,
        "j".repeat(256)
    );
    assert!(reason(&long_id).contains("at most 255"));
}

#[test]
fn stdin_without_a_namespace_cannot_derive_ids() {
    let s = stamp(Ids::Unnamed);
    let now = SystemTime::now();
    let without = jsonl(r#"{"from":"+15551234567","to":"+15559876543","text":"x"}"#).remove(0);
    assert!(
        s.prepare(without, now)
            .job
            .unwrap_err()
            .contains("--id-namespace")
    );
    let with =
        jsonl(r#"{"id":"j-1","from":"+15551234567","to":"+15559876543","text":"x"}"#).remove(0);
    assert_eq!(s.prepare(with, now).job.expect("valid").id, "j-1");
}
