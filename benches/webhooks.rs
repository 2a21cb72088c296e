//! Webhook intake benchmark: how long `POST /webhooks/telnyx` takes to
//! answer (verify, claim the event id, correlate, publish with a confirm,
//! mark) against the real RabbitMQ on 127.0.0.1:5672 and Redis on
//! 127.0.0.1:6379, with signed Telnyx-shaped events, into a durable quorum
//! queue bound with `message.#`. Telnyx waits 2 s.
//!
//! ```text
//! cargo bench --bench webhooks            # 2000 events, 1 and 32 at a time, memory and Redis dedupe
//! WEBHOOK_EVENTS=500 cargo bench --bench webhooks
//! ```
//!
//! It prints measurements, it does not pass or fail. It deletes the
//! topology it declared.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use send_worker::config::{DedupeBackend, Settings};
use send_worker::ops::metrics::Metrics;
use send_worker::secret::Secret;
use send_worker::sim::SimConfig;
use send_worker::store::Store;
use send_worker::testkit::webhook::{TelnyxKeys, now_secs, webhook};
use send_worker::testkit::{Sandbox, redis_url, test_settings};
use send_worker::webhooks::{Intake, PATH};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    settings: &Settings,
    keys: &TelnyxKeys,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let redis = send_worker::redis::Redis::from_settings(&settings.redis)?;
    let store = Store::from_settings(settings, redis.as_ref(), Metrics::new())?;
    let intake = Intake::from_settings(settings, store, redis, Metrics::new())?
        .context("a public key is set")?;
    let stop = CancellationToken::new();
    let (addr, _) =
        send_worker::ops::http::serve_router("127.0.0.1:0".parse()?, intake.router(), stop.clone())
            .await?;
    let url = format!("http://{addr}{PATH}");
    let bodies: Vec<Vec<u8>> = (0..events)
        .map(|_| {
            let id = uuid::Uuid::new_v4().to_string();
            webhook("message.finalized", &id, &id, "delivered", json!([]))
        })
        .collect();
    // One client, kept-alive connections, as a load balancer in front of
    // the intake would hold them.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let mut times: Vec<(u16, Duration)> = futures_util::stream::iter(bodies.iter())
        .map(|b| {
            let (url, client) = (url.clone(), client.clone());
            async move {
                let t = Instant::now();
                let ts = now_secs().to_string();
                let sent = client
                    .post(&url)
                    .header("telnyx-timestamp", &ts)
                    .header("telnyx-signature-ed25519", keys.sign(&ts, b))
                    .body(b.clone())
                    .send()
                    .await;
                let code = sent.map_or(0, |r| r.status().as_u16());
                (code, t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    stop.cancel();
    let ok = times.iter().filter(|(c, _)| *c == 200).count();
    times.sort_by_key(|(_, d)| *d);
    let d: Vec<Duration> = times.iter().map(|(_, d)| *d).collect();
    println!(
        "dedupe {:<6} concurrency {:>2}: {ok}/{events} answered 200, {:.0} events/s; \
         answer p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        intake.dedupe_backend(),
        concurrency,
        events as f64 / wall.as_secs_f64(),
        quantile(&d, 0.5).as_secs_f64() * 1e3,
        quantile(&d, 0.95).as_secs_f64() * 1e3,
        quantile(&d, 0.99).as_secs_f64() * 1e3,
        d.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = std::env::var("WEBHOOK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let keys = TelnyxKeys::new();
    let sandbox = Sandbox::open(
        "bench-webhooks",
        test_settings(),
        SimConfig::default(),
        |s| s.webhooks.public_key = Secret::new(keys.public_key()),
    )
    .await
    .context("RabbitMQ on 127.0.0.1:5672")?;
    // A consumer's queue, as producers bind one: quorum, durable, so that
    // every confirm waits for the broker to store the event.
    let queue = format!("{}.bench-deliveries", sandbox.prefix);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    sandbox
        .ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    sandbox
        .ch
        .queue_bind(
            queue.as_str().into(),
            sandbox.settings.amqp.events_exchange.as_str().into(),
            "message.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let memory = sandbox.settings.clone();
    let mut shared = sandbox.settings.clone();
    shared.redis.url = Secret::new(redis_url());
    shared.redis.key_prefix = format!("{}-redis", sandbox.prefix);
    shared.dedupe.backend = DedupeBackend::Redis;
    for settings in [&memory, &shared] {
        for concurrency in [1, 32] {
            run(settings, &keys, events, concurrency).await?;
        }
    }
    sandbox
        .ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    sandbox.cleanup().await;
    Ok(())
}
