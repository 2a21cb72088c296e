//! The limiter through the real pipeline: per-sender pacing without
//! head-of-line blocking, deferral through the broker without charging an
//! attempt, per-number overrides, account pacing, and the rate learned from
//! the simulator's `x-ratelimit-*` headers.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use send_worker::sim::{SimConfig, SimRequest};
use send_worker::testkit::{self, TestEnv, job_props, wait_for};

const T: Duration = Duration::from_secs(60);

fn job(from: &str, to: &str, text: &str) -> Vec<u8> {
    serde_json::json!({"from": from, "to": to, "text": text})
        .to_string()
        .into_bytes()
}

fn jobs(from: &str, tag: &str, n: usize) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
    (0..n)
        .map(|i| {
            (
                job(from, &format!("+1555300{i:04}"), &format!("{tag} {i}")),
                job_props(&format!("{tag}-{i}")),
            )
        })
        .collect()
}

/// Accepted requests whose text starts with `tag`, in the order the
/// simulator counted them.
fn accepted(reqs: &[SimRequest], tag: &str) -> Vec<SimRequest> {
    let prefix = format!("{tag} ");
    reqs.iter()
        .filter(|r| r.status == 200 && r.text.as_deref().is_some_and(|t| t.starts_with(&prefix)))
        .cloned()
        .collect()
}

/// The most requests in any span of `span_ms`.
fn most_in_any(reqs: &[SimRequest], span_ms: u64) -> usize {
    let t: Vec<u64> = reqs.iter().map(|r| r.at_ms).collect();
    testkit::most_in_any(&t, span_ms)
}

fn once_each(reqs: &[SimRequest], tag: &str, n: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in accepted(reqs, tag) {
        *seen.entry(r.text.unwrap_or_default()).or_default() += 1;
    }
    for i in 0..n {
        assert_eq!(seen.get(&format!("{tag} {i}")), Some(&1), "{tag} {i}");
    }
}

#[tokio::test]
async fn a_paced_sender_neither_blocks_others_nor_uses_up_attempts() {
    // Toll-free paced at 5/s with 1 s of backlog in memory: 5 jobs wait in
    // memory, the rest of its 40 go back to the broker.
    let env = TestEnv::new("pacing-hol", SimConfig::default(), |s| {
        s.pacing.toll_free_per_second = 5.0;
        s.pacing.max_wait_ms = 1_000;
    })
    .await;
    // Result events, to read the attempt each job was sent on.
    let events = format!("{}.sent-events", env.prefix);
    env.ch
        .queue_declare(
            events.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare events queue");
    env.ch
        .queue_bind(
            events.as_str().into(),
            env.settings.amqp.events_exchange.as_str().into(),
            "sent".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind events queue");

    let mut all = jobs("+18005550100", "tf", 40);
    all.extend(jobs("+15551234567", "lc", 60));
    env.publish_all(all).await;
    let w = env.start();
    wait_for("the 60 long-code jobs", T, || async {
        accepted(&env.sim.requests(), "lc").len() >= 60
    })
    .await;
    // They were queued behind 40 toll-free jobs that need 7 s at 5/s.
    let tf_by_then = accepted(&env.sim.requests(), "tf").len();
    assert!(
        tf_by_then < 25,
        "long-code jobs waited for the toll-free backlog: {tf_by_then} toll-free sent first"
    );
    wait_for("the 40 toll-free jobs", T, || async {
        accepted(&env.sim.requests(), "tf").len() >= 40
    })
    .await;
    let deferrals = w
        .worker
        .metrics
        .pacing_deferrals
        .with_label_values(&["toll_free"])
        .get();
    w.stop().await;

    let reqs = env.sim.requests();
    once_each(&reqs, "tf", 40);
    once_each(&reqs, "lc", 60);
    let tf = accepted(&reqs, "tf");
    // A burst of 5, then 5/s.
    assert!(
        most_in_any(&tf, 1000) <= 11,
        "toll-free pace: {}",
        most_in_any(&tf, 1000)
    );
    let span = tf.last().map_or(0, |r| r.at_ms) - tf.first().map_or(0, |r| r.at_ms);
    assert!(
        span >= 6_000,
        "40 at 5/s after a burst of 5 take 7 s: {span} ms"
    );
    assert!(
        deferrals >= 20,
        "most of the backlog waited in the broker: {deferrals}"
    );
    assert_eq!(env.dlq_depth().await, 0);

    // Every job was sent on its first attempt, however often it was deferred.
    let sent = env.drain_queue(&events).await;
    assert_eq!(sent.len(), 100);
    for (_, body) in &sent {
        let e: serde_json::Value = serde_json::from_slice(body).expect("event json");
        assert_eq!(e["attempts"], 1, "{e}");
    }
    let _ = env
        .ch
        .queue_delete(events.as_str().into(), QueueDeleteOptions::default())
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_per_number_override_replaces_its_class_pace() {
    let env = TestEnv::new("pacing-override", SimConfig::default(), |s| {
        s.pacing.toll_free_per_second = 2.0;
        s.pacing.max_wait_ms = 60_000;
        s.pacing.numbers.insert("+18885550100".into(), 0.0);
    })
    .await;
    let mut all = jobs("+18005550100", "slow", 12);
    all.extend(jobs("+18885550100", "free", 40));
    env.publish_all(all).await;
    let w = env.start();
    wait_for("the unpaced number's 40 jobs", T, || async {
        accepted(&env.sim.requests(), "free").len() >= 40
    })
    .await;
    let slow_by_then = accepted(&env.sim.requests(), "slow").len();
    assert!(
        slow_by_then < 12,
        "the class pace (2/s) holds the other toll-free number: {slow_by_then}"
    );
    wait_for("the paced number's 12 jobs", T, || async {
        accepted(&env.sim.requests(), "slow").len() >= 12
    })
    .await;
    w.stop().await;
    let reqs = env.sim.requests();
    once_each(&reqs, "slow", 12);
    once_each(&reqs, "free", 40);
    let slow = accepted(&reqs, "slow");
    assert!(most_in_any(&slow, 1000) <= 5, "burst 2 then 2/s");
    env.cleanup().await;
}

#[tokio::test]
async fn account_pacing_holds_every_sender() {
    let env = TestEnv::new("pacing-account", SimConfig::default(), |s| {
        s.pacing.account_sms_per_second = 20.0;
    })
    .await;
    let mut all = jobs("+15551234567", "a", 30);
    all.extend(jobs("+15557654321", "b", 30));
    env.publish_all(all).await;
    let w = env.start();
    wait_for("60 sends", T, || async { env.sim.stats().accepted >= 60 }).await;
    w.stop().await;
    let reqs = env.sim.requests();
    once_each(&reqs, "a", 30);
    once_each(&reqs, "b", 30);
    let mut both = accepted(&reqs, "a");
    both.extend(accepted(&reqs, "b"));
    // A burst of 20, then 20/s, across both senders.
    assert!(
        most_in_any(&both, 1000) <= 41,
        "{}",
        most_in_any(&both, 1000)
    );
    let first = both.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = both.iter().map(|r| r.at_ms).max().unwrap_or(0);
    assert!(
        last - first >= 1_900,
        "60 at 20/s after a burst of 20: {} ms",
        last - first
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_rate_follows_the_api_headers() {
    // 40 requests per second; the worker starts at limiter.initial_rate 500.
    let env = TestEnv::new(
        "learned-rate",
        SimConfig {
            limit: 40,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    env.publish_all(jobs("+15551234567", "r", 200)).await;
    let w = env.start();
    wait_for("200 sends", T, || async {
        accepted(&env.sim.requests(), "r").len() >= 200
    })
    .await;
    let e = w.worker.limiter.estimates();
    eprintln!("estimates at the end: {e:?}");
    w.stop().await;
    once_each(&env.sim.requests(), "r", 200);
    assert_eq!(env.dlq_depth().await, 0, "429s cost no attempts");
    assert_eq!(e.limit, Some(40.0));
    // The first window may be overrun (the limit is not known yet); after
    // the limit is learned the windows stay within it.
    let windows = env.sim.windows();
    if std::env::var("LIMITER_TRACE").is_ok() {
        // Every request's arrival (ms), "!" for a 429: for tuning.
        let reqs = env.sim.requests();
        let line: Vec<String> = reqs
            .iter()
            .filter(|r| r.at_ms < 7000)
            .map(|r| format!("{}{}", r.at_ms, if r.status == 429 { "!" } else { "" }))
            .collect();
        eprintln!("{}", line.join(" "));
    }
    assert!(windows.len() >= 5, "{windows:?}");
    // Measured on this tree: 0-6 429s in the windows after the first two
    // (a first-request window's edge, with requests in flight), never a
    // lost window. Issue #10 is open until this is ≤ 0.1 %.
    let later: u64 = windows[2..].iter().map(|w| w.rejected).sum();
    let used: u64 = windows[2..].iter().map(|w| w.used).sum();
    assert!(
        later * 20 <= used,
        "429s after the first windows at most 5 % of the requests: {windows:?}"
    );
    // Learning takes the first three windows (measured: 21-40 of 40 in
    // windows 1-2); after that each whole window is used to 90 %, and no
    // window at all is lost to a pause.
    let whole = &windows[..windows.len() - 1];
    assert!(
        whole[3..].iter().all(|w| w.used >= 36),
        "after learning, every window is used: {windows:?}"
    );
    assert!(
        whole[1..].iter().all(|w| w.used >= 10),
        "no window is lost: {windows:?}"
    );
    env.cleanup().await;
}

/// An API without rate-limit headers, limit 0 (none), no latency: `n`
/// long-code jobs at `limiter.initial_rate` 10, burst 10, with `slow_start`
/// as given. The requests the simulator accepted, and the limiter's rate at
/// the end.
async fn headerless(name: &str, slow_start: bool, n: usize) -> (Vec<SimRequest>, f64) {
    let env = TestEnv::new(
        name,
        SimConfig {
            latency: Duration::ZERO,
            rate_headers: false,
            ..SimConfig::default()
        },
        |s| {
            s.limiter.initial_rate = 10.0;
            s.limiter.burst = 10;
            s.limiter.slow_start = slow_start;
            s.pacing.account_sms_per_second = 0.0;
        },
    )
    .await;
    env.publish_all(jobs("+15551234567", "h", n)).await;
    let w = env.start();
    wait_for("every job sent", T, || async {
        accepted(&env.sim.requests(), "h").len() >= n
    })
    .await;
    let rate = w.worker.limiter.estimates().rate;
    w.stop().await;
    let reqs = env.sim.requests();
    once_each(&reqs, "h", n);
    assert!(
        reqs.iter().all(|r| r.status == 200),
        "no 429 from an unlimited API"
    );
    env.cleanup().await;
    (accepted(&reqs, "h"), rate)
}

#[tokio::test]
async fn without_rate_headers_slow_start_raises_the_rate_above_initial_rate() {
    // 10/s, then x1.5 each second it is used: 15, 22, 33, 50, 75 ... 200
    // jobs are sent in about 6 s instead of 19 s at 10/s.
    let (sent, rate) = headerless("slow-start", true, 200).await;
    assert!(rate > 10.0, "the rate rose from initial_rate 10: {rate}");
    let most = most_in_any(&sent, 1000);
    assert!(
        most > 20,
        "more than initial_rate + burst (20) in some second: {most}"
    );
}

#[tokio::test]
async fn without_rate_headers_and_slow_start_off_the_rate_stays_at_initial_rate() {
    let (sent, rate) = headerless("no-slow-start", false, 40).await;
    assert_eq!(rate, 10.0, "the rate is initial_rate");
    let most = most_in_any(&sent, 1000);
    assert!(
        most <= 21,
        "at most initial_rate + burst (+1) in any second: {most}"
    );
}
