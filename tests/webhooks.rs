//! The Telnyx webhook intake (issue #12) against the real RabbitMQ and
//! Redis. Every webhook is signed as Telnyx signs it (`testkit::webhook`):
//! a fresh Ed25519 key pair per test, the signature over
//! `"{telnyx-timestamp}|{raw body}"` in `telnyx-signature-ed25519` (base64),
//! the public key configured as base64 of its raw 32 bytes.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use send_worker::config::{DedupeBackend, Settings};
use send_worker::ops::metrics::Metrics;
use send_worker::secret::Secret;
use send_worker::sim::SimConfig;
use send_worker::store::{JobState, Store};
use send_worker::testkit::webhook::{TelnyxKeys, now_secs, post, post_signed, webhook};
use send_worker::testkit::{
    ConfigFile, TestEnv, WorkerProcess, bin, free_port, metric, redis_url, sms, wait_for,
};
use send_worker::webhooks::{Intake, PATH};

const T: Duration = Duration::from_secs(30);

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The sandbox's settings with `telnyx`'s key and, when `redis_prefix` is
/// given, the job store and the event dedupe in Redis under it.
fn configure(s: &mut Settings, telnyx: &TelnyxKeys, redis_prefix: Option<&str>) {
    s.webhooks.public_key = Secret::new(telnyx.public_key());
    if let Some(prefix) = redis_prefix {
        s.redis.url = Secret::new(redis_url());
        s.redis.key_prefix = prefix.to_owned();
        s.dedupe.backend = DedupeBackend::Redis;
    }
}

fn redis_of(s: &Settings) -> Option<send_worker::redis::Redis> {
    send_worker::redis::Redis::from_settings(&s.redis).expect("a valid redis.url")
}

/// An intake for `settings` on a loopback port: its URL, its metrics.
async fn serve(settings: &Settings, store: Store) -> (String, Metrics, CancellationToken) {
    let metrics = Metrics::new();
    let intake = Intake::from_settings(settings, store, redis_of(settings), metrics.clone())
        .expect("valid settings")
        .expect("a public key is set");
    let stop = CancellationToken::new();
    let (addr, _) = send_worker::ops::http::serve_router(
        "127.0.0.1:0".parse().expect("addr"),
        intake.router(),
        stop.clone(),
    )
    .await
    .expect("bind");
    (format!("http://{addr}{PATH}"), metrics, stop)
}

/// Every event in `queue` now: (routing key, properties' message_id, body).
/// The intake answers 200 only after the broker confirmed the publish, so
/// what it published is in the queue by then.
async fn take(env: &TestEnv, queue: &str) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while let Some(m) = env
        .ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let body = serde_json::from_slice(&m.delivery.data).expect("a JSON event");
        out.push((m.delivery.routing_key.to_string(), id, body));
    }
    out
}

fn schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/delivery-event.json");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("schema file"))
        .expect("schema JSON");
    jsonschema::validator_for(&s).expect("a valid schema")
}

fn quiet_sim() -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(1),
        ..SimConfig::default()
    }
}

/// Run `send-worker status` with `settings`: exit code and stdout.
async fn status(settings: &Settings, args: &[&str]) -> (i32, String) {
    let config = ConfigFile::write(settings);
    let out = tokio::process::Command::new(bin())
        .arg("--config")
        .arg(config.path())
        .arg("status")
        .args(args)
        .env_remove("SEND_WORKER__AMQP__URL")
        .output()
        .await
        .expect("run send-worker status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The message id the API gave job `id`, once the worker recorded it.
async fn message_id(store: &Store, id: &str) -> Option<String> {
    let r = store.lookup(id).await.ok().flatten()?;
    r.sent?.message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_are_published_once_with_the_job_id_and_status_shows_them() {
    let telnyx = TelnyxKeys::new();
    let prefix = format!("sw-test-wh-{}", &uid()[..8]);
    let env = TestEnv::new("whsent", quiet_sim(), |s| {
        configure(s, &telnyx, Some(&prefix))
    })
    .await;
    let events = env.events_queue("message.#").await;
    env.publish("wh-delivered", &sms("+15559876543", "delivered one"))
        .await;
    env.publish("wh-failed", &sms("+15559876544", "failed one"))
        .await;
    env.publish("wh-dead", &sms("+19990000400", "dead one"))
        .await;
    let w = env.start();
    let store = w.worker.store.clone();
    wait_for("two sends recorded and one dead letter", T, || async {
        let dead = store.lookup("wh-dead").await.ok().flatten();
        message_id(&store, "wh-delivered").await.is_some()
            && message_id(&store, "wh-failed").await.is_some()
            && dead.is_some_and(|r| r.state == JobState::DeadLettered)
    })
    .await;
    let delivered_mid = message_id(&store, "wh-delivered").await.expect("sent");
    let failed_mid = message_id(&store, "wh-failed").await.expect("sent");
    let (url, metrics, stop) = serve(&env.settings, store.clone()).await;

    let sent = webhook("message.sent", &uid(), &delivered_mid, "sent", json!([]));
    let delivered = webhook(
        "message.finalized",
        &uid(),
        &delivered_mid,
        "delivered",
        json!([]),
    );
    let failed = webhook(
        "message.finalized",
        &uid(),
        &failed_mid,
        "delivery_failed",
        json!([{"code": "40008", "title": "Undeliverable", "detail": "The carrier rejected it."}]),
    );
    let inbound = webhook(
        "message.received",
        &uid(),
        &uid(),
        "webhook_delivered",
        json!([]),
    );
    for body in [&sent, &delivered, &failed, &inbound] {
        assert_eq!(post_signed(&url, &telnyx, body).await, 200);
    }

    let got = take(&env, &events).await;
    assert_eq!(got.len(), 4, "each event published exactly once: {got:?}");
    let validator = schema();
    let expect = [
        (&sent, "message.sent", Some("wh-delivered")),
        (&delivered, "message.finalized", Some("wh-delivered")),
        (&failed, "message.finalized", Some("wh-failed")),
        (&inbound, "message.received", None),
    ];
    for ((key, id, event), (body, kind, job)) in got.iter().zip(expect) {
        let original: Value = serde_json::from_slice(body).expect("JSON");
        assert_eq!(key, kind);
        assert_eq!(event["event"], *kind);
        assert_eq!(id, original["data"]["id"].as_str().expect("id"));
        assert_eq!(event["event_id"], original["data"]["id"]);
        assert_eq!(event["message_id"], original["data"]["payload"]["id"]);
        assert_eq!(
            event["webhook"], original,
            "the original payload, unchanged"
        );
        assert_eq!(event["job_id"].as_str(), job, "{event}");
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {event}");
    }
    assert_eq!(got[2].2["status"], "delivery_failed");
    assert_eq!(got[2].2["code"], "40008");

    // Receipts are recorded after the publish, within the answer's budget or
    // just after it (they never hold the answer back).
    wait_for("both receipts recorded", T, || async {
        let status_of =
            |r: Option<send_worker::store::JobRecord>| r.and_then(|r| r.delivery).map(|d| d.status);
        status_of(store.lookup("wh-delivered").await.ok().flatten()).as_deref() == Some("delivered")
            && status_of(store.lookup("wh-failed").await.ok().flatten()).as_deref()
                == Some("delivery_failed")
    })
    .await;

    let text = metrics.render();
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(-1.0);
    assert_eq!(
        m(
            "send_worker_delivery_outcomes_total",
            &[("status", "delivered"), ("code", "none")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "send_worker_delivery_outcomes_total",
            &[("status", "delivery_failed"), ("code", "40008")]
        ),
        1.0
    );
    assert_eq!(m("send_worker_delivery_seconds_count", &[]), 2.0);
    assert_eq!(
        m(
            "send_worker_webhook_events_total",
            &[("result", "published")]
        ),
        4.0
    );

    // `send-worker status`, the real binary, reading the same store.
    let (code, out) = status(&env.settings, &["wh-delivered"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("job wh-delivered: delivered"), "{out}");
    assert!(out.contains(&format!("message {delivered_mid}")), "{out}");
    let (code, out) = status(&env.settings, &["wh-failed"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("job wh-failed: delivery_failed"), "{out}");
    assert!(out.contains("carrier error 40008: Undeliverable"), "{out}");
    let (code, out) = status(&env.settings, &["wh-dead"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("job wh-dead: dead_lettered"), "{out}");
    assert!(out.contains("reason permanent"), "{out}");
    let (code, out) = status(&env.settings, &["wh-never-seen"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("job wh-never-seen: unknown"), "{out}");
    let (code, out) = status(&env.settings, &["--json", "wh-delivered"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["status"], "delivered");
    assert_eq!(v["record"]["sent"]["message_id"], delivered_mid.as_str());
    // A memory store lives inside each worker: status says it cannot read it.
    let mut memory = env.settings.clone();
    memory.dedupe.backend = DedupeBackend::Memory;
    let (code, out) = status(&memory, &["wh-delivered"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dedupe.backend = \"redis\""), "{out}");

    stop.cancel();
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_stale_unsigned_oversized_and_malformed_events_are_rejected_alike() {
    let telnyx = TelnyxKeys::new();
    let env = TestEnv::new("whreject", quiet_sim(), |s| {
        configure(s, &telnyx, None);
        s.webhooks.max_body_bytes = 4096;
    })
    .await;
    let events = env.events_queue("message.#").await;
    let store = Store::memory(1000, Duration::from_secs(60), Metrics::new());
    let (url, metrics, stop) = serve(&env.settings, store).await;

    let body = webhook("message.finalized", &uid(), &uid(), "delivered", json!([]));
    let ts = now_secs().to_string();
    let sig = telnyx.sign(&ts, &body);
    let forged = TelnyxKeys::new().sign(&ts, &body);
    let tampered = String::from_utf8(body.clone())
        .expect("utf-8")
        .replace("\"delivered\"", "\"delivery_failed\"")
        .into_bytes();
    assert_ne!(tampered, body);
    let stale = (now_secs() - 301).to_string();
    let future = (now_secs() + 301).to_string();
    let not_json = b"not json".to_vec();
    let no_id = json!({"data": {"event_type": "message.sent", "payload": {"id": "m"}}})
        .to_string()
        .into_bytes();
    let mut big: Value = serde_json::from_slice(&body).expect("JSON");
    big["data"]["payload"]["text"] = json!("x".repeat(5000));
    let big = big.to_string().into_bytes();
    let s = |ts: &str, b: &[u8]| Some(telnyx.sign(ts, b));
    // (what, body, telnyx-timestamp, telnyx-signature-ed25519)
    type Case<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<String>);
    let cases: Vec<Case> = vec![
        ("forged", &body, Some(&ts), Some(forged)),
        ("tampered", &tampered, Some(&ts), Some(sig.clone())),
        ("stale", &body, Some(&stale), s(&stale, &body)),
        ("from the future", &body, Some(&future), s(&future, &body)),
        ("unsigned", &body, None, None),
        ("no timestamp", &body, None, Some(sig.clone())),
        ("no signature", &body, Some(&ts), None),
        (
            "a signature that is no base64",
            &body,
            Some(&ts),
            Some("%%%".into()),
        ),
        ("not JSON", &not_json, Some(&ts), s(&ts, &not_json)),
        ("no event id", &no_id, Some(&ts), s(&ts, &no_id)),
        ("oversized", &big, Some(&ts), s(&ts, &big)),
    ];
    let mut answers = std::collections::BTreeSet::new();
    for (name, b, t, sig) in cases {
        let (code, text) = post(&url, b, t, sig.as_deref()).await;
        assert_eq!(code, 400, "{name}: {text}");
        answers.insert(text);
    }
    assert_eq!(answers.len(), 1, "one answer whatever failed: {answers:?}");
    assert!(take(&env, &events).await.is_empty(), "nothing published");

    let text = metrics.render();
    for (cause, n) in [
        ("signature", 2.0),
        ("stale", 2.0),
        ("headers", 4.0),
        ("malformed", 2.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            metric(
                &text,
                "send_worker_webhook_rejections_total",
                &[("cause", cause)]
            ),
            Some(n),
            "{cause}"
        );
    }
    // The same event, genuinely signed, goes through: the checks above
    // rejected what they had to, not everything.
    assert_eq!(post_signed(&url, &telnyx, &body).await, 200);
    assert_eq!(take(&env, &events).await.len(), 1);

    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_is_published_once_with_redis_and_in_memory() {
    for with_redis in [true, false] {
        let telnyx = TelnyxKeys::new();
        let prefix = format!("sw-test-whdup-{}", &uid()[..8]);
        let env = TestEnv::new("whdup", quiet_sim(), |s| {
            configure(s, &telnyx, with_redis.then_some(prefix.as_str()))
        })
        .await;
        let events = env.events_queue("message.#").await;
        let redis = redis_of(&env.settings);
        let store =
            Store::from_settings(&env.settings, redis.as_ref(), Metrics::new()).expect("store");
        let (url, metrics, stop) = serve(&env.settings, store).await;

        // A retry, signed again later (another timestamp, the same event).
        let body = webhook("message.sent", &uid(), &uid(), "sent", json!([]));
        assert_eq!(post_signed(&url, &telnyx, &body).await, 200);
        let ts = (now_secs() - 1).to_string();
        let (code, _) = post(&url, &body, Some(&ts), Some(&telnyx.sign(&ts, &body))).await;
        assert_eq!(code, 200, "a repeat is answered 200 so that Telnyx stops");

        // Eight copies at once: one publish; the others are duplicates or
        // asked to come back (503) while the first is in flight.
        let burst = webhook("message.finalized", &uid(), &uid(), "delivered", json!([]));
        let codes =
            futures_util::future::join_all((0..8).map(|_| post_signed(&url, &telnyx, &burst)))
                .await;
        assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
        for _ in codes.iter().filter(|c| **c == 503) {
            // Telnyx retries a 503; by now the first copy is published.
            assert_eq!(post_signed(&url, &telnyx, &burst).await, 200);
        }
        let got = take(&env, &events).await;
        let ids: Vec<&str> = got.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(ids.len(), 2, "redis {with_redis}: {ids:?}");
        assert_ne!(ids[0], ids[1]);
        let dups = metric(
            &metrics.render(),
            "send_worker_webhook_events_total",
            &[("result", "duplicate")],
        );
        assert!(dups >= Some(1.0), "{dups:?}");
        stop.cancel();
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_the_intake_answers_503_and_telnyxs_retry_is_published() {
    let telnyx = TelnyxKeys::new();
    let prefix = format!("sw-test-whdown-{}", &uid()[..8]);
    let env = TestEnv::new("whdown", quiet_sim(), |s| {
        configure(s, &telnyx, Some(&prefix))
    })
    .await;
    let events = env.events_queue("message.#").await;
    let store = || {
        Store::from_settings(
            &env.settings,
            redis_of(&env.settings).as_ref(),
            Metrics::new(),
        )
        .expect("store")
    };
    let body = webhook("message.finalized", &uid(), &uid(), "delivered", json!([]));

    // Nothing listens on the broker's port.
    let mut refused = env.settings.clone();
    refused.amqp.url = Secret::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()));
    let (url, metrics, stop_refused) = serve(&refused, store()).await;
    assert_eq!(post_signed(&url, &telnyx, &body).await, 503);
    assert_eq!(
        metric(
            &metrics.render(),
            "send_worker_webhook_events_total",
            &[("result", "unavailable")]
        ),
        Some(1.0)
    );

    // A broker that takes the connection and never answers: the intake
    // gives up within its budget instead of hanging.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let mut hung = env.settings.clone();
    hung.amqp.url = Secret::new(format!("amqp://guest:guest@127.0.0.1:{silent_port}/%2f"));
    let (url_hung, _, stop_hung) = serve(&hung, store()).await;
    assert_eq!(post_signed(&url_hung, &telnyx, &body).await, 503);
    assert!(take(&env, &events).await.is_empty(), "nothing published");

    // Telnyx retries; this time the broker is there: published, once.
    let (url_up, _, stop_up) = serve(&env.settings, store()).await;
    assert_eq!(post_signed(&url_up, &telnyx, &body).await, 200);
    assert_eq!(post_signed(&url_up, &telnyx, &body).await, 200);
    let got = take(&env, &events).await;
    assert_eq!(got.len(), 1, "{got:?}");

    hold.abort();
    for s in [stop_refused, stop_hung, stop_up] {
        s.cancel();
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_and_the_standalone_intake_serve_it_and_without_a_key_it_is_404() {
    let telnyx = TelnyxKeys::new();
    let prefix = format!("sw-test-whproc-{}", &uid()[..8]);
    let env = TestEnv::new("whproc", quiet_sim(), |s| {
        configure(s, &telnyx, Some(&prefix))
    })
    .await;
    let events = env.events_queue("message.#").await;

    let mut worker = WorkerProcess::spawn("wh-worker", &env.settings, &[]);
    worker.wait_ready(T).await;
    let first = webhook("message.sent", &uid(), &uid(), "sent", json!([]));
    let at_worker = format!("{}{PATH}", worker.ops);
    assert_eq!(post_signed(&at_worker, &telnyx, &first).await, 200);

    let intake = WorkerProcess::spawn_command(&bin(), "wh-intake", &env.settings, "webhooks", &[]);
    wait_for("the standalone intake", T, || async {
        intake.get("/healthz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;
    let second = webhook(
        "message.received",
        &uid(),
        &uid(),
        "webhook_delivered",
        json!([]),
    );
    let at_intake = format!("{}{PATH}", intake.ops);
    assert_eq!(post_signed(&at_intake, &telnyx, &second).await, 200);
    assert_eq!(post(&at_intake, &second, None, None).await.0, 400);
    // Both share Redis: the first event, retried to the other, is a repeat.
    assert_eq!(post_signed(&at_intake, &telnyx, &first).await, 200);
    let got = take(&env, &events).await;
    let keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["message.sent", "message.received"]);
    let m = intake.metrics().await.expect("/metrics");
    assert_eq!(
        metric(
            &m,
            "send_worker_webhook_events_total",
            &[("result", "duplicate")]
        ),
        Some(1.0)
    );

    let mut no_key = env.settings.clone();
    no_key.webhooks.public_key = Secret::new("");
    let mut keyless = WorkerProcess::spawn("wh-keyless", &no_key, &[]);
    keyless.wait_ready(T).await;
    let third = webhook("message.sent", &uid(), &uid(), "sent", json!([]));
    let at_keyless = format!("{}{PATH}", keyless.ops);
    assert_eq!(post_signed(&at_keyless, &telnyx, &third).await, 404);
    assert_eq!(post(&at_keyless, &third, None, None).await.0, 404);
    assert!(take(&env, &events).await.is_empty());

    for mut p in [worker, intake, keyless] {
        p.terminate(T).await;
    }
    env.cleanup().await;
}
