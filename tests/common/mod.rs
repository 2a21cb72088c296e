//! Helpers the producer tests share (`tests/publish.rs`, `tests/examples.rs`):
//! a quick sandbox, a queue that collects the worker's `sent` events, and the
//! checks of a safely published job.

#![allow(dead_code)] // each test binary uses a part

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use send_worker::sim::SimConfig;
use send_worker::testkit::TestEnv;

/// A quick environment: pacing off, a high first rate, a 1 ms simulator.
pub async fn env(name: &str) -> TestEnv {
    TestEnv::new(
        name,
        SimConfig {
            latency: Duration::from_millis(1),
            ..SimConfig::default()
        },
        |s| {
            s.limiter.initial_rate = 5_000.0;
            s.pacing = Default::default();
        },
    )
    .await
}

/// A queue bound to the sandbox's events exchange for `sent` events.
pub async fn sent_events_queue(env: &TestEnv) -> String {
    let name = format!("{}.test-sent-events", env.prefix);
    env.ch
        .queue_declare(
            ShortString::from(name.as_str()),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the events queue");
    env.ch
        .queue_bind(
            ShortString::from(name.as_str()),
            ShortString::from(env.settings.amqp.events_exchange.as_str()),
            ShortString::from("sent"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the events queue");
    name
}

/// A queue bound to the work exchange with `routing_key` that holds no
/// message: the broker nacks every publish to it (x-overflow reject-publish).
pub async fn refusing_queue(env: &TestEnv, routing_key: &str) -> String {
    capped_queue(env, routing_key, 0).await
}

/// A queue bound to the work exchange with `routing_key` that holds
/// `max_length` messages; the broker nacks every publish past that
/// (x-overflow reject-publish).
pub async fn capped_queue(env: &TestEnv, routing_key: &str, max_length: i64) -> String {
    let name = format!("{}.{routing_key}", env.prefix);
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(max_length),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from(&b"reject-publish"[..])),
    );
    env.ch
        .queue_declare(
            ShortString::from(name.as_str()),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .expect("declare");
    env.ch
        .queue_bind(
            ShortString::from(name.as_str()),
            ShortString::from(env.settings.amqp.exchange.as_str()),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    name
}

pub async fn delete_queue(env: &TestEnv, name: &str) {
    let _ = env
        .ch
        .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
        .await;
}

/// The `job_id` of every event in `queue` (taking them).
pub async fn event_job_ids(env: &TestEnv, queue: &str) -> Vec<String> {
    env.drain_queue(queue)
        .await
        .into_iter()
        .map(|(_, body)| {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("an event is JSON");
            v["job_id"].as_str().expect("job_id").to_owned()
        })
        .collect()
}

pub fn message_id(p: &BasicProperties) -> String {
    p.message_id()
        .as_ref()
        .expect("message_id")
        .as_str()
        .to_owned()
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The properties of a safe publish: the job id as `message_id`, persistent,
/// JSON, and a `timestamp` within [`since`, now].
pub fn assert_safe_properties(p: &BasicProperties, job_id: &str, since: SystemTime) {
    assert_eq!(message_id(p), job_id);
    assert_eq!(p.delivery_mode(), &Some(2), "{job_id}: persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json"),
        "{job_id}"
    );
    let ts = p.timestamp().expect("timestamp");
    assert!(
        ts >= unix_secs(since) && ts <= unix_secs(SystemTime::now()),
        "{job_id}: timestamp {ts}"
    );
}
