//! End-to-end tests of the core pipeline against the real RabbitMQ and the
//! in-process Telnyx simulator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use send_worker::amqp::headers;
use send_worker::sim::{SimConfig, SimReply};
use send_worker::testkit::{TestEnv, job_props, sms, wait_for};

const T: Duration = Duration::from_secs(30);

fn h(p: &lapin::BasicProperties, name: &str) -> String {
    headers::get_string(p, name).unwrap_or_else(|| panic!("header {name} missing"))
}

#[tokio::test]
async fn valid_jobs_are_sent_exactly_once_and_acked() {
    let env = TestEnv::new("success", SimConfig::default(), |_| {}).await;
    for i in 0..25 {
        env.publish(
            &format!("ok-{i}"),
            &sms(&format!("+1555200{i:04}"), &format!("ok {i}")),
        )
        .await;
    }
    let w = env.start();
    wait_for("25 sends", T, || async { env.sim.stats().accepted >= 25 }).await;
    w.stop().await;
    assert_eq!(
        env.sim.stats().requests,
        25,
        "no request beyond one per job"
    );
    for i in 0..25 {
        assert_eq!(
            env.sim.requests_with_text(&format!("ok {i}")).len(),
            1,
            "job {i}"
        );
    }
    // Acked: nothing is back in the queue once the worker's channel is gone.
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.dlq_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn the_body_reaches_the_api_unchanged_with_unknown_fields() {
    let env = TestEnv::new("forward", SimConfig::default(), |_| {}).await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    env.sim.set_behavior(Some(Arc::new(move |r| {
        if r.text.as_deref() == Some("fwd") {
            *s.lock().unwrap() = Some(r.clone());
        }
        None
    })));
    let body = br#"{"from":"+15551234567","to":"+15559876543","text":"fwd","webhook_url":"https://hooks.example/x","future_field":{"nested":[1,2]}}"#;
    env.publish("fwd-1", body).await;
    let w = env.start();
    wait_for("send", T, || async { env.sim.stats().accepted >= 1 }).await;
    w.stop().await;
    let got = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the job reached the API");
    assert_eq!(
        got.body.as_bytes(),
        body,
        "forwarded byte for byte, unknown fields and all"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn permanent_failures_go_to_the_dlq_with_their_reason() {
    let env = TestEnv::new("permanent", SimConfig::default(), |_| {}).await;
    env.sim.set_behavior(Some(Arc::new(|r| {
        (r.to.as_deref() == Some("+15550000404"))
            .then(|| SimReply::error(404, "10005", "Resource not found", "No such profile."))
    })));
    let cases = [
        ("+19990000400", 400u32, "10015"),
        ("+19990000403", 403, "40300"),
        ("+19990000422", 422, "40310"),
        ("+15550000404", 404, "10005"),
    ];
    for (i, (to, _, _)) in cases.iter().enumerate() {
        let props = headers::with_header(
            job_props(&format!("perm-{i}")),
            "x-tenant",
            headers::string("acme"),
        );
        env.publish_with(&sms(to, &format!("perm {i}")), props)
            .await;
    }
    let w = env.start();
    wait_for("4 dead letters", T, || async { env.dlq_depth().await >= 4 }).await;
    w.stop().await;
    assert_eq!(env.sim.stats().requests, 4, "one attempt each, no retries");
    let mut dead: HashMap<String, (lapin::BasicProperties, Vec<u8>)> = HashMap::new();
    for (p, body) in env.drain_dlq().await {
        dead.insert(p.message_id().as_ref().unwrap().to_string(), (p, body));
    }
    for (i, (to, status, code)) in cases.iter().enumerate() {
        let (p, body) = &dead[&format!("perm-{i}")];
        assert_eq!(body, &sms(to, &format!("perm {i}")), "original body kept");
        assert_eq!(h(p, headers::ERROR_REASON), "permanent");
        assert_eq!(h(p, headers::ERROR_CODE), *code);
        assert_eq!(headers::get_u32(p, headers::HTTP_STATUS), Some(*status));
        assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(1));
        assert!(!h(p, headers::ERROR_TITLE).is_empty());
        assert!(!h(p, headers::ERROR_DETAIL).is_empty());
        assert!(send_worker::job::parse_deadline(&h(p, headers::FAILED_AT)).is_some());
        assert_eq!(h(p, "x-tenant"), "acme", "original headers kept");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.delivery_mode(), &Some(2));
    }
    env.cleanup().await;
}

#[tokio::test]
async fn transient_then_success_is_sent_once() {
    let env = TestEnv::new("transient-ok", SimConfig::default(), |_| {}).await;
    env.publish("flaky-1", &sms("+19990000503", "flaky")).await;
    env.publish("queue-full-1", &sms("+19990000318", "queue full"))
        .await;
    let w = env.start();
    wait_for("2 sends", T, || async { env.sim.stats().accepted >= 2 }).await;
    w.stop().await;
    let flaky = env.sim.requests_with_text("flaky");
    assert_eq!(
        flaky.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    let full = env.sim.requests_with_text("queue full");
    assert_eq!(
        full.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403, 200]
    );
    assert_eq!(env.dlq_depth().await, 0);
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn transient_forever_makes_exactly_five_calls_then_dead_letters() {
    let env = TestEnv::new("transient-forever", SimConfig::default(), |_| {}).await;
    env.publish("doomed-1", &sms("+19990000500", "doomed"))
        .await;
    let w = env.start();
    wait_for("dead letter", T, || async { env.dlq_depth().await >= 1 }).await;
    // Give a sixth call the chance to happen if the limit were wrong.
    tokio::time::sleep(Duration::from_millis(600)).await;
    w.stop().await;
    assert_eq!(env.sim.requests_with_text("doomed").len(), 5);
    let dead = env.drain_dlq().await;
    assert_eq!(dead.len(), 1);
    let p = &dead[0].0;
    assert_eq!(h(p, headers::ERROR_REASON), "attempts-exhausted");
    assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(5));
    assert_eq!(headers::get_u32(p, headers::HTTP_STATUS), Some(500));
    assert_eq!(h(p, headers::ERROR_CODE), "10007");
    assert_eq!(dead[0].1, sms("+19990000500", "doomed"));
    env.cleanup().await;
}

#[tokio::test]
async fn transport_errors_are_retried_and_counted_as_attempts() {
    // Every call times out: 5 attempts, then the DLQ with no HTTP status.
    let env = TestEnv::new("timeouts", SimConfig::default(), |s| {
        s.telnyx.request_timeout_ms = 150;
    })
    .await;
    env.sim.control(&send_worker::sim::SimControl {
        latency_ms: Some(1_000),
        ..Default::default()
    });
    env.publish("slow-1", &sms("+15559876543", "slow")).await;
    let w = env.start();
    wait_for("dead letter", T, || async { env.dlq_depth().await >= 1 }).await;
    w.stop().await;
    let dead = env.drain_dlq().await;
    let p = &dead[0].0;
    assert_eq!(h(p, headers::ERROR_REASON), "attempts-exhausted");
    assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(5));
    assert_eq!(
        headers::get_u32(p, headers::HTTP_STATUS),
        Some(0),
        "no HTTP answer"
    );
    assert_eq!(h(p, headers::ERROR_TITLE), "Timeout");
    env.cleanup().await;
}

#[tokio::test]
async fn retries_wait_in_the_broker_not_in_memory() {
    let env = TestEnv::new("durable-retry", SimConfig::default(), |s| {
        s.retry.base_ms = 3_000;
        s.retry.cap_ms = 10_000;
    })
    .await;
    env.publish("later-1", &sms("+19990000503", "later")).await;
    let w = env.start();
    wait_for("first attempt", T, || async {
        env.sim.stats().requests >= 1
    })
    .await;
    // The copy sits in a tier queue; the original is acked; the worker holds nothing.
    wait_for("copy in a retry tier", T, || async {
        env.retry_depth().await == 1
    })
    .await;
    w.stop().await;
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(
        env.retry_depth().await,
        1,
        "the retry survives the worker stopping"
    );
    // A new worker picks it up once the TTL has passed, with the attempt count.
    let w = env.start();
    wait_for("sent after retries", T, || async {
        env.sim.stats().accepted >= 1
    })
    .await;
    w.stop().await;
    assert_eq!(env.sim.requests_with_text("later").len(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_and_malformed_jobs_are_dead_lettered_without_an_api_call() {
    let env = TestEnv::new("invalid", SimConfig::default(), |_| {}).await;
    let big = {
        let mut v = br#"{"from":"+15551234567","to":"+15559876543","text":""#.to_vec();
        v.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
        v.extend(br#""}"#);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"{{{ nope".to_vec(), "malformed"),
        ("bad-utf8", vec![b'{', 0xff, 0xfe, b'}'], "malformed"),
        ("array", b"[1,2,3]".to_vec(), "malformed"),
        ("five-mb", big, "malformed"),
        ("empty", Vec::new(), "malformed"),
        ("bad-to", sms("555-0100", "x"), "validation"),
        ("to-number", br#"{"from":"+15551234567","to":15559876543,"text":"x"}"#.to_vec(), "validation"),
        ("no-from", br#"{"to":"+15559876543","text":"x"}"#.to_vec(), "validation"),
        ("no-content", br#"{"from":"+15551234567","to":"+15559876543"}"#.to_vec(), "validation"),
        ("too-long", sms("+15559876543", &"x".repeat(1531)), "validation"),
        ("http-media", br#"{"from":"+15551234567","to":"+15559876543","media_urls":["http://x.example/a.png"]}"#.to_vec(), "validation"),
    ];
    for (id, body, _) in &cases {
        env.publish(id, body).await;
    }
    // A job without a message_id is refused too (it cannot be tracked).
    env.publish_with(
        &sms("+15559876543", "anon"),
        lapin::BasicProperties::default(),
    )
    .await;
    let w = env.start();
    wait_for("all dead-lettered", T, || async {
        env.dlq_depth().await as usize > cases.len()
    })
    .await;
    w.stop().await;
    assert_eq!(env.sim.stats().requests, 0, "no API call for a bad job");
    let dead = env.drain_dlq().await;
    assert_eq!(dead.len(), cases.len() + 1);
    for (id, body, reason) in &cases {
        let (p, b) = dead
            .iter()
            .find(|(p, _)| p.message_id().as_ref().map(|m| m.as_str()) == Some(*id))
            .unwrap_or_else(|| panic!("{id} not in the DLQ"));
        assert_eq!(&h(p, headers::ERROR_REASON), reason, "{id}");
        assert!(!h(p, headers::ERROR_DETAIL).is_empty(), "{id} has a detail");
        assert_eq!(b, body, "{id}: original body kept");
        assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(0), "{id}");
    }
    let anon = dead
        .iter()
        .find(|(p, _)| p.message_id().is_none())
        .expect("anonymous job");
    assert!(h(&anon.0, headers::ERROR_DETAIL).contains("message_id"));
    env.cleanup().await;
}

/// Not a crash (tests/process.rs kills a real process with SIGKILL): this
/// drops the running worker future mid-flight, as an embedding application
/// shutting its runtime down would. Its job tasks are aborted with it, and
/// every unacked delivery must come back.
#[tokio::test]
async fn dropping_the_worker_future_mid_flight_loses_nothing() {
    let env = TestEnv::new(
        "crash",
        SimConfig {
            latency: Duration::from_millis(200),
            ..SimConfig::default()
        },
        |s| {
            s.amqp.prefetch = 20;
        },
    )
    .await;
    let n = 60;
    for i in 0..n {
        env.publish(
            &format!("c-{i}"),
            &sms("+15559876543", &format!("crash {i}")),
        )
        .await;
    }
    let first = env.start();
    wait_for("some sends", T, || async { env.sim.stats().accepted >= 5 }).await;
    // Drop it without a drain: the task, its job tasks and its connection go.
    first.handle.abort();
    let _ = first.handle.await;
    let second = env.start();
    wait_for("every job sent", Duration::from_secs(60), || async {
        (0..n).all(|i| !env.sim.requests_with_text(&format!("crash {i}")).is_empty())
    })
    .await;
    second.stop().await;
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.dlq_depth().await, 0);
    let dupes: usize = (0..n)
        .map(|i| env.sim.requests_with_text(&format!("crash {i}")).len() - 1)
        .sum();
    // At-least-once: jobs in flight at the crash may be sent again, never lost.
    assert!(dupes <= 20, "duplicates bounded by the prefetch: {dupes}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_with_its_url_and_a_hint() {
    let url = send_worker::secret::Secret::new("amqp://guest:hunter2@127.0.0.1:1/%2f");
    let err = send_worker::amqp::connect(&url, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("amqp://guest:***@127.0.0.1:1/%2f"), "{err}");
    assert!(err.contains("rabbitmq-server"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
