//! The properties every delivery must keep, whatever it holds. A broken one
//! panics, which libFuzzer (and the smoke test) report as a crash with the
//! input that broke it.

use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ShortString};
use serde_json::Value;

use send_worker::amqp::headers;
use send_worker::cli::dlq::{self, Entry, Filter, STRIPPED_ON_REPLAY};
use send_worker::contract::MAX_DETAIL_CHARS;
use send_worker::job::{self, Job, MessageKind, Rejection, RejectionKind, time};
use send_worker::pipeline::{DeadReason, Disposition, dead_letter_props, rejection_disposition};

use crate::Delivery;

/// The decoder: `Job::parse` gives a job or a rejection (never a panic),
/// and each is what the body and headers say; the retry copy of a job
/// parses back to the same job one attempt later; the dead-letter entry of
/// a rejection reads back with its reason.
pub fn check_decode(d: &Delivery) {
    let now = SystemTime::now();
    match Job::parse(&d.body, &d.props, d.max_body_bytes, d.max_age) {
        Ok(job) => {
            check_job(d, &job, now);
            check_retry_copy(d, &job);
        }
        Err(rejection) => {
            check_rejection(d, &rejection);
            check_dead_letter(d, rejection);
        }
    }
}

fn check_job(d: &Delivery, job: &Job, now: SystemTime) {
    assert!(
        d.body.len() <= d.max_body_bytes,
        "a body over the limit was taken"
    );
    assert_eq!(job.body, d.body, "the body is forwarded byte for byte");
    let parsed: Value = serde_json::from_slice(&d.body).expect("a job's body is JSON");
    let obj = parsed.as_object().expect("a job's body is a JSON object");
    let to = obj
        .get("to")
        .and_then(Value::as_str)
        .expect("a job has `to`");
    assert!(job::is_e164(to), "`to` {to:?} is E.164");
    if let Some(from) = &job.from {
        assert_eq!(job::classify_sender(from), Some(job.sender));
    }
    let id = d.props.message_id().as_ref().map(ShortString::as_str);
    assert_eq!(Some(job.id.as_str()), id, "the job id is the message_id");
    assert!(!job.id.is_empty());
    assert!(job.attempt >= 1);
    assert!(job.parts >= 1);
    if job.kind == MessageKind::Sms {
        assert!(job.parts <= 10, "an SMS of {} parts was taken", job.parts);
    }
    for t in [job.published_at, job.deadline].into_iter().flatten() {
        assert!(time::within(t).is_some(), "{t:?} is after year 9999");
        assert!(!time::rfc3339(t).starts_with("unix"));
    }
    if let (Some(age), Some(at), Some(deadline)) = (d.max_age, job.published_at, job.deadline)
        && let Some(limit) = at.checked_add(age)
    {
        assert!(
            deadline <= limit,
            "the deadline is not after published + max_age"
        );
    }
    let _ = job.is_expired(now);
}

/// What `pipeline::settle` publishes for a retry: the original's properties
/// (minus `expiration`) with the new counters. It must parse back to the
/// same job, one attempt later.
fn check_retry_copy(d: &Delivery, job: &Job) {
    let copy = headers::copy_props(&d.props, |_| true);
    assert_eq!(*copy.expiration(), None, "a copy never keeps `expiration`");
    assert_eq!(copy.message_id(), d.props.message_id());
    assert_eq!(copy.timestamp(), d.props.timestamp());
    let copy = copy.with_expiration(ShortString::from("500"));
    let copy = headers::with_header(copy, headers::ATTEMPTS, headers::int(job.attempt.into()));
    let bounces = job.rate_limit_bounces.saturating_add(1);
    let copy = headers::with_header(
        copy,
        headers::RATE_LIMIT_BOUNCES,
        headers::int(bounces.into()),
    );
    let copy = headers::with_header(copy, headers::DEFERRALS, headers::int(job.deferrals.into()));
    let again = Job::parse(&job.body, &copy, d.max_body_bytes, d.max_age)
        .unwrap_or_else(|r| panic!("the retry copy of a job is refused: {r:?}"));
    assert_eq!(again.id, job.id);
    assert_eq!(again.attempt, job.attempt.saturating_add(1));
    assert_eq!(again.rate_limit_bounces, bounces);
    assert_eq!(again.deferrals, job.deferrals);
    assert_eq!(again.published_at, job.published_at);
    assert_eq!(again.deadline, job.deadline);
    assert_eq!(
        (again.sender, again.kind, again.parts),
        (job.sender, job.kind, job.parts)
    );
}

fn check_rejection(d: &Delivery, r: &Rejection) {
    assert!(!r.detail.trim().is_empty(), "an empty reason");
    assert!(
        !r.detail.chars().any(char::is_control),
        "a reason with a control character: {:?}",
        r.detail
    );
    let chars = r.detail.chars().count();
    assert!(
        chars <= MAX_DETAIL_CHARS,
        "a reason of {chars} characters is cut in the DLQ"
    );
    // The kind follows from the body alone, by an independent reading.
    let object = std::str::from_utf8(&d.body)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .is_some_and(|v| v.is_object());
    let want = if d.body.len() > d.max_body_bytes || !object {
        RejectionKind::Malformed
    } else {
        RejectionKind::Validation
    };
    assert_eq!(r.kind, want, "{}", r.detail);
}

/// The DLQ entry of a rejected job reads back (through the DLQ tool) with
/// its reason, detail, job id and attempts.
fn check_dead_letter(d: &Delivery, rejection: Rejection) {
    let kind = rejection.kind;
    let detail = rejection.detail.clone();
    let attempts = job::attempts_made(&d.props);
    let Disposition::DeadLetter {
        reason,
        failure,
        attempts,
    } = rejection_disposition(rejection, attempts)
    else {
        panic!("a rejection is not dead-lettered");
    };
    let want = match kind {
        RejectionKind::Malformed => DeadReason::Malformed,
        RejectionKind::Validation => DeadReason::Validation,
    };
    assert_eq!(reason, want);
    let entry_props = dead_letter_props(&d.props, reason, &failure, attempts);
    assert_eq!(*entry_props.expiration(), None, "a DLQ entry cannot expire");
    let e = Entry::from_props(&entry_props);
    assert_eq!(e.reason, reason.as_str());
    assert_eq!(e.detail.as_deref(), Some(detail.trim()));
    assert_eq!(e.attempts, Some(attempts));
    assert_eq!(e.job_id, job::job_id(&d.props));
    assert!(e.failed_at.is_some(), "x-failed-at reads back");
    check_entry(&entry_props);
}

/// The DLQ tool on any entry: `Entry::from_props`, the filters, the
/// replayed copy's properties, the table row, the full view and the JSON.
pub fn check_dlq_entry(d: &Delivery) {
    let e = check_entry(&d.props);
    check_rendering(&e, &d.props, &d.body);
}

/// Reading an entry: its summary, the filters, the replayed copy.
fn check_entry(props: &BasicProperties) -> Entry {
    let now = SystemTime::now();
    let e = Entry::from_props(props);
    assert!(!e.reason.is_empty());
    assert_eq!(e.reason.trim(), e.reason);
    if let Some(at) = e.failed_at {
        assert!(time::within(at).is_some(), "{at:?} is after year 9999");
    }
    let _ = e.age(now);

    // An entry matches a filter on its own reason, code and job id.
    let own = Filter {
        reasons: vec![e.reason.clone()],
        codes: e.code.iter().cloned().collect(),
        job_ids: e.job_id.iter().cloned().collect(),
        ..Filter::default()
    };
    assert!(
        own.matches(&e, now),
        "an entry does not match its own {own:?}"
    );
    for (older, newer) in [
        (Some(std::time::Duration::MAX), None),
        (None, Some(std::time::Duration::ZERO)),
        (
            Some(std::time::Duration::ZERO),
            Some(std::time::Duration::MAX),
        ),
    ] {
        let f = Filter {
            older_than: older,
            newer_than: newer,
            ..Filter::default()
        };
        let _ = f.matches(&e, now);
    }

    // A replayed copy keeps everything but the verdict, the counters and
    // RabbitMQ's bookkeeping, and never an `expiration`.
    let replay = dlq::replay_props(props);
    assert_eq!(*replay.expiration(), None);
    assert_eq!(replay.message_id(), props.message_id());
    let kept = replay.headers().as_ref().map(|h| h.inner().clone());
    for (k, v) in props.headers().iter().flat_map(|h| h.inner()) {
        let got: Option<&AMQPValue> = kept.as_ref().and_then(|m| m.get(k));
        if STRIPPED_ON_REPLAY.contains(&k.as_str()) {
            assert!(got.is_none(), "{k} survives a replay");
        } else {
            assert!(
                got.is_some_and(|g| same(g, v)),
                "{k} is lost or changed in a replay"
            );
        }
    }
    e
}

/// Printing an entry: the table row, the full view (`dlq show`), the JSON.
fn check_rendering(e: &Entry, props: &BasicProperties, body: &[u8]) {
    let now = SystemTime::now();

    // The table row is one line of text without control characters.
    let row = dlq::table_row(e, now);
    assert!(
        !row.chars().any(char::is_control),
        "a table row with a control character: {row:?}"
    );
    // The full view: only newlines and tabs among the control characters.
    let mut out = Vec::new();
    dlq::write_entry(&mut out, props, body, false, now).expect("writing to a Vec");
    let text = String::from_utf8(out).expect("the full view is UTF-8");
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        panic!("the full view holds control character {c:?}");
    }
    // The JSON view serializes, and reads back.
    let json = dlq::entry_json(props, body, false, now);
    let s = serde_json::to_string(&json).expect("the JSON view serializes");
    // A JSON body is embedded one level down: one that serde_json just
    // accepted (128 levels) makes a view it refuses to read back, by its
    // recursion limit only (the smoke test's first find; FUZZING.md).
    match serde_json::from_str::<Value>(&s) {
        Ok(back) => assert_eq!(back["reason"], Value::from(e.reason.as_str())),
        Err(err) => assert!(
            err.to_string().contains("recursion limit"),
            "the JSON view does not read back: {err}"
        ),
    }
    for v in props.headers().iter().flat_map(|h| h.inner().values()) {
        let _ = dlq::amqp_json(v);
    }
}

/// `a == b`, except that NaN equals NaN (bit for bit), without recursion
/// (the generator nests values 2,000 levels deep).
fn same(a: &AMQPValue, b: &AMQPValue) -> bool {
    let mut pending = vec![(a, b)];
    while let Some((a, b)) = pending.pop() {
        match (a, b) {
            (AMQPValue::Float(x), AMQPValue::Float(y)) if x.to_bits() != y.to_bits() => {
                return false;
            }
            (AMQPValue::Double(x), AMQPValue::Double(y)) if x.to_bits() != y.to_bits() => {
                return false;
            }
            (AMQPValue::Float(_), AMQPValue::Float(_))
            | (AMQPValue::Double(_), AMQPValue::Double(_)) => {}
            (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
                if x.as_slice().len() != y.as_slice().len() {
                    return false;
                }
                pending.extend(x.as_slice().iter().zip(y.as_slice()));
            }
            (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => {
                let (x, y) = (x.inner(), y.inner());
                if x.len() != y.len() || !x.keys().eq(y.keys()) {
                    return false;
                }
                pending.extend(x.values().zip(y.values()));
            }
            (AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_), _)
            | (_, AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_)) => return false,
            (a, b) if a != b => return false,
            _ => {}
        }
    }
    true
}
