//! The kit that the tests, the benchmarks and the demo share: a uniquely
//! named topology on the real RabbitMQ next to an in-process Telnyx simulator
//! ([`Sandbox`], and [`TestEnv`], its panicking face for tests), the real
//! binary as a child process ([`WorkerProcess`]), and small helpers to
//! publish, wait and read metrics; Telnyx's side of a signed webhook
//! ([`webhook`]).
//!
//! Only the Telnyx API is simulated; the broker (and Redis, where a test
//! uses it) are real. Every sandbox deletes what it declared in
//! [`Sandbox::cleanup`].

mod env;
mod process;
mod sandbox;
pub mod webhook;

pub use env::TestEnv;
pub use env::{give_back, test_settings};
pub use process::{ConfigFile, Run, WorkerProcess, bin, free_port};
pub use sandbox::{RunningWorker, Sandbox};

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::BasicProperties;

use crate::sim::SimHandle;

/// The bearer token the sandbox's simulator accepts.
pub const API_KEY: &str = "test-key-0123456789";

/// A simulator answering after `latency_ms` that accepts only [`API_KEY`]
/// (any other key gets 401 / 10009, as Telnyx answers a revoked one).
pub fn keyed_sim(latency_ms: u64) -> crate::sim::SimConfig {
    crate::sim::SimConfig {
        latency: Duration::from_millis(latency_ms),
        api_key: Some(API_KEY.to_owned()),
        ..crate::sim::SimConfig::default()
    }
}

/// Why the kit could not do something (the demo and the benchmarks report
/// it; tests panic with it).
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error(transparent)]
    Broker(#[from] crate::amqp::BrokerError),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("a publish was not confirmed: {0}")]
    Publish(#[from] crate::amqp::PublishError),
    #[error("could not start the simulator: {0}")]
    Simulator(#[from] std::io::Error),
    #[error("HTTP client: {0}")]
    Client(#[from] crate::telnyx::ClientError),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("job store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The broker the kit uses: `SEND_WORKER__AMQP__URL`, or the local one.
pub fn amqp_url() -> String {
    std::env::var("SEND_WORKER__AMQP__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The local Redis (`REDIS_URL` overrides it).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// The most of `times` (ms, in any order) inside any span of `span_ms`.
pub fn most_in_any(times: &[u64], span_ms: u64) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= span_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// A job body: an SMS from a long code to `to`, whose text identifies it.
pub fn sms(to: &str, text: &str) -> Vec<u8> {
    sms_from("+15551234567", to, text)
}

/// A job body: an SMS from `from` to `to`, whose text identifies it.
pub fn sms_from(from: &str, to: &str, text: &str) -> Vec<u8> {
    serde_json::json!({"from": from, "to": to, "text": text})
        .to_string()
        .into_bytes()
}

/// A message's `message_id` (the job id), or "" when it has none.
pub fn job_id_of(p: &BasicProperties) -> String {
    p.message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// The properties of a well-formed job with id `id`, published now.
pub fn job_props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a Prometheus sample: the sum of the lines of metric `name`
/// whose labels include every `labels` pair. None if there is no such line.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.chars().next() {
            Some('{') => match rest.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue,
        };
        if !labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// How many times the simulator accepted (200) each `text`.
pub fn accepted_by_text(sim: &SimHandle) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for r in sim.requests() {
        if r.status == 200
            && let Some(t) = r.text
        {
            *out.entry(t).or_insert(0) += 1;
        }
    }
    out
}

/// Deliveries of `queue` that a consumer holds unacknowledged, as the broker
/// counts them (`rabbitmqctl list_queues`; needs rabbitmqctl on the PATH and
/// the rights to run it, as on the test machines). An error says why it
/// could not be asked — never a silent zero.
pub fn unacked(queue: &str) -> Result<u64, String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_unacknowledged"])
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl list_queues failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        if cols.next() == Some(queue) {
            return cols
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("unexpected rabbitmqctl line: {line}"));
        }
    }
    Err(format!("queue {queue} is not in rabbitmqctl's list"))
}

/// The `text` field of a job body, if it has one.
pub fn text_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("text")?
        .as_str()
        .map(str::to_owned)
}
