//! The machine-readable contract: `schema/*.json` is what the types in
//! `send_worker::contract` generate (`UPDATE_SCHEMA=1` rewrites the files),
//! the schemas agree with the code that reads and writes the messages (the
//! job validator, the dead-letter headers, the events a real worker
//! publishes), and `asyncapi.yaml` names exactly the topology the worker
//! declares.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use send_worker::amqp::{Topology, headers};
use send_worker::config::Settings;
use send_worker::contract::{DeadLetterHeaders, DeliveryEventKind, EventKind, JobHeaders, schemas};
use send_worker::job::Job;
use send_worker::pipeline::{DeadReason, dead_letter_props};
use send_worker::retry::Backoff;
use send_worker::telnyx::Failure;
use send_worker::testkit::{job_props, sms, wait_for};
use serde_json::{Value, json};

use common::{delete_queue, env};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_file(name: &str) -> Value {
    let path = repo().join("schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&schema_file(name))
        .unwrap_or_else(|e| panic!("schema/{name} is not a valid JSON Schema: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| e.to_string()).collect()
}

/// The string values a schema (or one of its `$defs`) allows: `enum`, or
/// the `const`/`enum` of each `oneOf` branch.
fn allowed(schema: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut take = |v: &Value| {
        if let Some(s) = v.get("const").and_then(Value::as_str) {
            out.insert(s.to_owned());
        }
        for e in v
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.insert(e.as_str().expect("a string").to_owned());
        }
    };
    take(schema);
    for branch in schema
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        take(branch);
    }
    out
}

#[test]
fn schema_files_match_the_types() {
    let dir = repo().join("schema");
    let generated = schemas();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(&dir).expect("create schema/");
        for (name, text) in &generated {
            std::fs::write(dir.join(name), text).expect("write a schema");
        }
    }
    for (name, text) in &generated {
        let path = dir.join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == *text,
            "{} differs from what send_worker::contract generates; run \
             `UPDATE_SCHEMA=1 cargo nextest run --test contract` and commit the result",
            path.display()
        );
    }
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("schema/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let names: BTreeSet<String> = generated.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(files, names, "schema/ holds exactly the generated files");
}

#[test]
fn every_schema_is_valid_json_schema() {
    for (name, _) in schemas() {
        let schema = schema_file(name);
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("schema/{name} fails its meta-schema: {e}");
        }
        validator(name);
    }
}

/// The reasons the schemas list are exactly the `DeadReason`s, by the
/// names the worker writes (`as_str`).
#[test]
fn dead_reasons_in_the_schemas_are_the_workers_names() {
    let event = schema_file("result-event.json");
    let in_event = allowed(&event["$defs"]["DeadReason"]);
    let dlq = schema_file("dead-letter-headers.json");
    let in_dlq = allowed(&dlq["$defs"]["DeadReason"]);
    assert_eq!(in_event, in_dlq);
    assert!(in_event.len() >= 6, "{in_event:?}");
    for name in &in_event {
        let reason: DeadReason = serde_json::from_value(json!(name))
            .unwrap_or_else(|e| panic!("{name} is no DeadReason: {e}"));
        assert_eq!(reason.as_str(), name, "serde name and x-error-reason agree");
        assert_eq!(
            serde_json::to_value(reason).expect("serialize"),
            json!(name)
        );
    }
}

#[test]
fn event_kinds_are_their_routing_keys() {
    let event = schema_file("result-event.json");
    let in_schema = allowed(&event["$defs"]["EventKind"]);
    let kinds: BTreeSet<String> = EventKind::ALL
        .iter()
        .map(|k| k.routing_key().to_owned())
        .collect();
    assert_eq!(in_schema, kinds, "EventKind::ALL lists every kind");
    for k in EventKind::ALL {
        assert_eq!(
            serde_json::to_value(k).expect("serialize"),
            json!(k.routing_key())
        );
    }
}

#[test]
fn delivery_event_kinds_are_their_routing_keys() {
    let event = schema_file("delivery-event.json");
    let in_schema = allowed(&event["$defs"]["DeliveryEventKind"]);
    let kinds: BTreeSet<String> = DeliveryEventKind::ALL
        .iter()
        .map(|k| k.routing_key().to_owned())
        .collect();
    assert_eq!(in_schema, kinds, "DeliveryEventKind::ALL lists every kind");
    for k in DeliveryEventKind::ALL {
        assert_eq!(
            serde_json::to_value(k).expect("serialize"),
            json!(k.routing_key())
        );
        assert_eq!(DeliveryEventKind::from_event_type(k.routing_key()), Some(k));
    }
}

fn failure() -> Failure {
    Failure {
        status: Some(403),
        code: Some("40300".into()),
        title: "Forbidden".into(),
        detail: "x".repeat(1500),
        retry_after: None,
        maybe_accepted: false,
    }
}

/// An AMQP header table as the JSON a schema can check.
fn headers_json(p: &BasicProperties) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in p.headers().as_ref().expect("headers").inner() {
        let v = match v {
            AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::LongLongInt(i) => json!(i),
            other => panic!("header {k} has an unexpected type {other:?}"),
        };
        m.insert(k.as_str().to_owned(), v);
    }
    Value::Object(m)
}

/// What `dead_letter_props` writes is what the schema describes, header by
/// header, for every reason; and the type's names are the header constants.
#[test]
fn dead_letter_headers_are_the_ones_the_worker_writes() {
    let constants: BTreeSet<&str> = [
        headers::ERROR_REASON,
        headers::ERROR_CODE,
        headers::ERROR_TITLE,
        headers::ERROR_DETAIL,
        headers::HTTP_STATUS,
        headers::ATTEMPTS,
        headers::FAILED_AT,
    ]
    .into();
    let schema = schema_file("dead-letter-headers.json");
    let in_schema: BTreeSet<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(in_schema, constants);
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .map(|v| v.as_str().expect("a name"))
        .collect();
    assert_eq!(required, constants, "every header is always written");

    let v = validator("dead-letter-headers.json");
    for name in allowed(&schema["$defs"]["DeadReason"]) {
        let reason: DeadReason = serde_json::from_value(json!(name)).expect("a reason");
        let p = dead_letter_props(&BasicProperties::default(), reason, &failure(), 3);
        let written = headers_json(&p);
        let keys: BTreeSet<&str> = written
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, constants, "{name}");
        assert_eq!(
            errors(&v, &written),
            Vec::<String>::new(),
            "{name}: {written}"
        );
        assert_eq!(written[headers::ERROR_REASON], json!(name));
        assert_eq!(
            written[headers::ERROR_DETAIL]
                .as_str()
                .map(|s| s.chars().count()),
            Some(1000)
        );
        // The typed value serializes to the same names and values.
        let typed = DeadLetterHeaders::new(reason, &failure(), 3, SystemTime::now());
        let mut typed = serde_json::to_value(typed).expect("serialize");
        typed[headers::FAILED_AT] = written[headers::FAILED_AT].clone();
        assert_eq!(typed, written, "{name}");
    }
    // A wrong value is refused: the schema is no rubber stamp.
    let p = dead_letter_props(
        &BasicProperties::default(),
        DeadReason::Expired,
        &failure(),
        1,
    );
    let mut bad = headers_json(&p);
    bad[headers::ERROR_REASON] = json!("gone-fishing");
    assert!(!v.is_valid(&bad));
    bad = headers_json(&p);
    bad.as_object_mut()
        .expect("object")
        .remove(headers::FAILED_AT);
    assert!(!v.is_valid(&bad));
}

#[test]
fn job_headers_name_the_header_the_worker_reads() {
    let h = JobHeaders {
        expires_at: Some("2030-01-01T00:00:00Z".into()),
    };
    let value = serde_json::to_value(&h).expect("serialize");
    assert_eq!(
        value,
        json!({ headers::EXPIRES_AT: "2030-01-01T00:00:00Z" })
    );
    let v = validator("job-headers.json");
    assert!(v.is_valid(&value));
    assert!(!v.is_valid(&json!({ headers::EXPIRES_AT: 5 })));
    let p = h.apply(job_props("j-1"));
    let job = Job::parse(&sms("+15559876543", "x"), &p, 1 << 20, None).expect("valid");
    assert_eq!(
        job.deadline,
        send_worker::job::parse_deadline("2030-01-01T00:00:00Z")
    );
}

/// Bodies the validator accepts and the schema must accept too.
fn valid_bodies() -> Vec<Value> {
    vec![
        json!({"from": "+15551234567", "to": "+15559876543", "text": "Hello"}),
        json!({"from": "+18005550100", "to": "+15559876543", "text": "toll-free"}),
        json!({"from": "12345", "to": "+15559876543", "text": "short code"}),
        json!({"from": "123456", "to": "+15559876543", "text": "short code"}),
        json!({"from": "ACME", "to": "+15559876543", "text": "alphanumeric"}),
        json!({"from": "Acme Shop 1", "to": "+15559876543", "text": "alphanumeric"}),
        json!({"messaging_profile_id": "abc", "to": "+15559876543", "text": "pool"}),
        json!({"from": "+15551234567", "to": "+15559876543",
               "media_urls": ["https://m.example/a.png"]}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "x", "type": "MMS",
               "media_urls": ["https://m.example/a.png"], "subject": "Hi"}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "x", "type": "SMS"}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "x",
               "webhook_url": "https://hooks.example/t", "future_field": {"a": 1}}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "a".repeat(1530)}),
        json!({"from": "+15551234567", "to": "+12", "text": "shortest E.164"}),
        json!({"from": "+15551234567", "to": "+123456789012345", "text": "longest E.164"}),
    ]
}

/// Bodies the validator refuses, each for a rule the schema can express.
fn invalid_bodies() -> Vec<Value> {
    vec![
        json!({"from": "+15551234567", "text": "no to"}),
        json!({"from": "+15551234567", "to": 15559876543_u64, "text": "x"}),
        json!({"from": "+15551234567", "to": "15559876543", "text": "x"}),
        json!({"from": "+15551234567", "to": "+1 555 987", "text": "x"}),
        json!({"from": "+15551234567", "to": "+05559876543", "text": "x"}),
        json!({"from": "+15551234567", "to": "+1234567890123456", "text": "x"}),
        json!({"to": "+15559876543", "text": "no from, no profile"}),
        json!({"messaging_profile_id": "  ", "to": "+15559876543", "text": "blank profile"}),
        json!({"from": "555-1234", "to": "+15559876543", "text": "x"}),
        json!({"from": "1234", "to": "+15559876543", "text": "x"}),
        json!({"from": "TooLongSenderX", "to": "+15559876543", "text": "x"}),
        json!({"from": " ACME", "to": "+15559876543", "text": "x"}),
        json!({"from": "bad!", "to": "+15559876543", "text": "x"}),
        json!({"from": "+15551234567", "to": "+15559876543"}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": ""}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": 5}),
        json!({"from": "+15551234567", "to": "+15559876543", "media_urls": "https://a/b"}),
        json!({"from": "+15551234567", "to": "+15559876543", "media_urls": [1]}),
        json!({"from": "+15551234567", "to": "+15559876543",
               "media_urls": ["http://m.example/a.png"]}),
        json!({"from": "+15551234567", "to": "+15559876543", "media_urls": ["https://"]}),
        json!({"from": "+15551234567", "to": "+15559876543",
               "media_urls": (0..11).map(|i| format!("https://m.example/{i}.png")).collect::<Vec<_>>()}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "x", "type": "FAX"}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "x", "type": "SMS",
               "media_urls": ["https://m.example/a.png"]}),
        json!({"from": "+15551234567", "to": "+15559876543", "text": "a".repeat(1531)}),
    ]
}

fn worker_accepts(body: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(body).expect("serialize");
    Job::parse(&bytes, &job_props("j-1"), 1 << 20, None)
        .map(|_| ())
        .map_err(|r| r.detail)
}

/// The job-body schema and the worker's validator agree on every case here,
/// both ways. (One rule the schema cannot state: a text's length in SMS
/// parts under UCS-2 or with GSM-7 extension characters; the last case
/// below shows the worker refusing what the schema lets through, as its
/// description says.)
#[test]
fn the_job_body_schema_agrees_with_the_workers_validator() {
    let v = validator("job-body.json");
    for body in valid_bodies() {
        assert_eq!(worker_accepts(&body), Ok(()), "{body}");
        assert_eq!(errors(&v, &body), Vec::<String>::new(), "{body}");
    }
    for body in invalid_bodies() {
        assert!(worker_accepts(&body).is_err(), "the worker accepts {body}");
        assert!(!v.is_valid(&body), "the schema accepts {body}");
    }
    let ucs2 = json!({"from": "+15551234567", "to": "+15559876543", "text": "✓".repeat(671)});
    assert!(v.is_valid(&ucs2));
    assert!(worker_accepts(&ucs2).unwrap_err().contains("UCS-2"));
}

/// What the CSV and flag readers build (a `SendRequest`) is a schema-valid
/// body.
#[test]
fn send_requests_serialize_to_schema_valid_bodies() {
    let v = validator("job-body.json");
    let request = send_worker::contract::SendRequest {
        to: "+15559876543".into(),
        from: Some("+15551234567".into()),
        text: Some("Hello".into()),
        media_urls: vec!["https://m.example/a.png".into()],
        ..Default::default()
    };
    let body = serde_json::to_value(&request).expect("serialize");
    assert_eq!(errors(&v, &body), Vec::<String>::new());
    assert_eq!(worker_accepts(&body), Ok(()));
}

/// A real worker's events and dead-letter entries, checked against the
/// schema files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_dead_letters_of_a_real_worker_match_the_schemas() {
    let env = env("contract-events").await;
    let events = format!("{}.test-all-events", env.prefix);
    env.ch
        .queue_declare(
            ShortString::from(events.as_str()),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    env.ch
        .queue_bind(
            ShortString::from(events.as_str()),
            ShortString::from(env.settings.amqp.events_exchange.as_str()),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    env.publish("c-sent", &sms("+15559876543", "contract sent"))
        .await;
    env.publish("c-permanent", &sms("+19990000403", "contract stop"))
        .await;
    env.publish("c-invalid", &sms("5559876543", "contract invalid"))
        .await;
    env.publish("c-malformed", b"not json").await;
    let expired = headers::with_header(
        job_props("c-expired"),
        headers::EXPIRES_AT,
        headers::string("2001-01-01T00:00:00Z"),
    );
    env.publish_with(&sms("+15559876544", "contract expired"), expired)
        .await;
    let w = env.start();
    wait_for("5 events", Duration::from_secs(60), || async {
        env.depth(&events).await >= 5
    })
    .await;
    w.stop().await;

    let v = validator("result-event.json");
    let mut seen = BTreeMap::new();
    for (props, body) in env.drain_queue(&events).await {
        let event: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(errors(&v, &event), Vec::<String>::new(), "{event}");
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str()),
            event["job_id"].as_str()
        );
        seen.insert(
            event["job_id"].as_str().expect("job_id").to_owned(),
            (event["event"].clone(), event["reason"].clone()),
        );
    }
    assert_eq!(seen["c-sent"], (json!("sent"), Value::Null));
    assert_eq!(
        seen["c-permanent"],
        (json!("dead_lettered"), json!("permanent"))
    );
    assert_eq!(
        seen["c-invalid"],
        (json!("dead_lettered"), json!("validation"))
    );
    assert_eq!(
        seen["c-malformed"],
        (json!("dead_lettered"), json!("malformed"))
    );
    assert_eq!(
        seen["c-expired"],
        (json!("dead_lettered"), json!("expired"))
    );

    let dlq = validator("dead-letter-headers.json");
    let entries = env.drain_dlq().await;
    assert_eq!(entries.len(), 4);
    for (props, _) in &entries {
        let mut h = headers_json(props);
        // The schema covers the worker's headers; the job's own may be there too.
        if let Some(m) = h.as_object_mut() {
            m.remove(headers::EXPIRES_AT);
        }
        assert_eq!(errors(&dlq, &h), Vec::<String>::new(), "{h}");
    }
    delete_queue(&env, &events).await;
    env.cleanup().await;
}

// ---- asyncapi.yaml ----

fn asyncapi() -> Value {
    let path = repo().join("asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("asyncapi.yaml");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("asyncapi.yaml is YAML");
    serde_json::to_value(yaml).expect("as JSON")
}

fn amqp_args(t: &FieldTable) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in t.inner() {
        let v = match v {
            AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::LongLongInt(i) => json!(i),
            other => panic!("unexpected argument type {other:?}"),
        };
        m.insert(k.as_str().to_owned(), v);
    }
    Value::Object(m)
}

fn str_set<'a>(items: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    items
        .into_iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// `{param}` in `s`, expanded over the parameter's enum (or `s` itself).
fn expand(doc: &Value, s: &str) -> Vec<String> {
    let Some(start) = s.find('{') else {
        return vec![s.to_owned()];
    };
    let end = s[start..].find('}').expect("a closing brace") + start;
    let name = &s[start + 1..end];
    let values = str_set(
        doc["components"]["parameters"][name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("parameter {name} has an enum")),
    );
    values
        .into_iter()
        .map(|v| format!("{}{v}{}", &s[..start], &s[end + 1..]))
        .collect()
}

#[test]
fn asyncapi_names_exactly_the_topology_the_worker_declares() {
    let settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    let t = Topology::new(&settings.amqp, &Backoff::from_settings(&settings.retry));
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channels = doc["channels"].as_object().expect("channels");

    // Exchanges, and the routing keys published to each.
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Queues: name -> (exchange, binding key, arguments).
    let mut queues: BTreeMap<String, (String, String, Value)> = BTreeMap::new();
    for (id, ch) in channels {
        let b = &ch["bindings"]["amqp"];
        let address = ch["address"].as_str().expect("address");
        match b["is"].as_str() {
            Some("routingKey") => {
                let ex = &b["exchange"];
                assert_eq!(ex["type"], "topic", "{id}");
                assert_eq!(ex["durable"], true, "{id}");
                let name = ex["name"].as_str().expect("exchange name").to_owned();
                keys.entry(name).or_default().extend(expand(&doc, address));
            }
            Some("queue") => {
                let q = &b["queue"];
                assert_eq!(q["durable"], true, "{id}");
                assert_eq!(q["name"].as_str(), Some(address), "{id}");
                let names = expand(&doc, address);
                let bound = &ch["x-bound-to"];
                let routing = expand(&doc, bound["routingKey"].as_str().expect("routingKey"));
                assert_eq!(names.len(), routing.len(), "{id}");
                for (name, key) in names.into_iter().zip(routing) {
                    queues.insert(
                        name,
                        (
                            bound["exchange"].as_str().expect("exchange").to_owned(),
                            key,
                            ch["x-arguments"].clone(),
                        ),
                    );
                }
            }
            other => panic!("channel {id}: amqp binding is {other:?}"),
        }
    }

    let a = &t.amqp;
    let exchanges: BTreeSet<String> = keys.keys().cloned().collect();
    assert_eq!(
        exchanges,
        BTreeSet::from([a.exchange.clone(), a.events_exchange.clone()]),
        "the exchanges"
    );
    let mut work_keys = BTreeSet::from([a.routing_key.clone(), a.dead_routing_key.clone()]);
    work_keys.extend(t.tiers.iter().map(|tier| t.tier_routing_key(tier)));
    assert_eq!(
        keys[&a.exchange], work_keys,
        "routing keys on {}",
        a.exchange
    );
    let mut events: BTreeSet<String> = EventKind::ALL
        .iter()
        .map(|k| k.routing_key().to_owned())
        .collect();
    events.extend(DeliveryEventKind::ALL.map(|k| k.routing_key().to_owned()));
    assert_eq!(
        keys[&a.events_exchange], events,
        "the event names (result events and delivery events)"
    );

    let mut expected = BTreeMap::new();
    expected.insert(
        a.queue.clone(),
        (
            a.exchange.clone(),
            a.routing_key.clone(),
            amqp_args(&t.work_queue_args()),
        ),
    );
    expected.insert(
        a.dead_letter_queue.clone(),
        (
            a.exchange.clone(),
            a.dead_routing_key.clone(),
            amqp_args(&t.dead_letter_queue_args()),
        ),
    );
    for tier in &t.tiers {
        expected.insert(
            t.tier_queue(tier),
            (
                a.exchange.clone(),
                t.tier_routing_key(tier),
                amqp_args(&t.tier_queue_args()),
            ),
        );
    }
    let labels: Vec<&str> = t.tiers.iter().map(|tier| tier.label.as_str()).collect();
    assert_eq!(
        queues.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>(),
        "the queues (the tier labels are {labels:?})"
    );
    assert_eq!(queues, expected, "bindings and arguments");
    assert_eq!(t.queues().len(), expected.len());
}

#[test]
fn asyncapi_refers_to_every_schema_file_and_only_to_them() {
    let text = std::fs::read_to_string(repo().join("asyncapi.yaml")).expect("asyncapi.yaml");
    let refs: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("$ref: './schema/"))
        .map(|r| r.trim_end_matches('\'').to_owned())
        .collect();
    let files: BTreeSet<String> = schemas().iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(refs, files);
    for r in &refs {
        assert!(Path::new(&repo().join("schema").join(r)).exists(), "{r}");
    }
    // Local references resolve.
    let doc = asyncapi();
    for line in text.lines() {
        if let Some(r) = line.trim().strip_prefix("$ref: '#/") {
            let pointer = format!("/{}", r.trim_end_matches('\''));
            assert!(
                doc.pointer(&pointer).is_some(),
                "{pointer} does not resolve"
            );
        }
    }
    // The retry copies' headers are the worker's names.
    let retry = &doc["components"]["messages"]["retryCopy"]["headers"]["properties"];
    let names: BTreeSet<&str> = retry
        .as_object()
        .expect("headers")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            headers::ATTEMPTS,
            headers::RATE_LIMIT_BOUNCES,
            headers::DEFERRALS,
            headers::EXPIRES_AT
        ])
    );
}
