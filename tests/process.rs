//! Issue #4's failure semantics, proven against the real RabbitMQ by running
//! the real `send-worker run` binary as a child process: kill -9 and restart,
//! SIGTERM drains, a second signal exits at once, a 30 s API outage, a key
//! revoked mid-run, expired jobs, and the ops endpoints.
//!
//! The Telnyx simulator runs in this test process; the child reaches it over
//! loopback. Every test uses its own uniquely named topology and deletes it
//! at the end; every child is killed when its guard drops. The broker
//! restart test is in `tests/broker_restart.rs` (it disturbs other tests).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use send_worker::amqp::headers;
use send_worker::sim::SimControl;
use send_worker::testkit::{
    API_KEY, TestEnv, WorkerProcess, accepted_by_text, job_props, keyed_sim, metric, sms, text_of,
    wait_for,
};

const T: Duration = Duration::from_secs(60);

/// Valid SMS jobs `tag`-i for i in `range`, with texts "`tag` i"; returns the texts.
async fn publish_jobs(env: &TestEnv, tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut texts = Vec::new();
    let mut jobs = Vec::new();
    for i in range {
        let text = format!("{tag} {i}");
        jobs.push((
            sms(&format!("+1555300{:04}", i % 10_000), &text),
            job_props(&format!("{tag}-{i}")),
        ));
        texts.push(text);
    }
    env.publish_all(jobs).await;
    texts
}

/// Texts accepted at least once.
fn unique_accepted(env: &TestEnv) -> usize {
    accepted_by_text(&env.sim).len()
}

fn all_accepted(env: &TestEnv, texts: &[String]) -> bool {
    let accepted = accepted_by_text(&env.sim);
    texts.iter().all(|t| accepted.contains_key(t))
}

/// Duplicates: acceptances beyond the first, summed over `texts`.
fn duplicates(env: &TestEnv, texts: &[String]) -> usize {
    let accepted = accepted_by_text(&env.sim);
    texts
        .iter()
        .map(|t| accepted.get(t).copied().unwrap_or(0).saturating_sub(1))
        .sum()
}

async fn assert_queues_empty(env: &TestEnv) {
    assert_eq!(env.work_depth().await, 0, "work queue empty");
    assert_eq!(env.retry_depth().await, 0, "retry tiers empty");
    assert_eq!(env.dlq_depth().await, 0, "nothing dead-lettered");
}

fn grace(env: &TestEnv) -> Duration {
    Duration::from_secs(env.settings.worker.shutdown_grace_secs)
}

// ---------------------------------------------------------------------------
// 1. kill -9 under load, then restart: nothing lost.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_loses_nothing() {
    const N: usize = 500;
    const PREFETCH: u16 = 20;
    let env = TestEnv::new("kill9", keyed_sim(50), |s| s.amqp.prefetch = PREFETCH).await;
    let texts = publish_jobs(&env, "kill9", 0..N).await;

    let mut first = WorkerProcess::spawn("first", &env.settings, &[]);
    first.wait_ready(T).await;
    wait_for("100 sends", T, || async { unique_accepted(&env) >= 100 }).await;
    first.signal("KILL");
    let status = first.wait_exit(T).await.expect("SIGKILL ends the worker");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    let at_kill = unique_accepted(&env);
    assert!(
        at_kill < N,
        "the kill must land mid-run (all {N} were already sent)"
    );
    drop(first);

    let mut second = WorkerProcess::spawn("second", &env.settings, &[]);
    second.wait_ready(T).await;
    wait_for("every job accepted at least once", T * 2, || async {
        all_accepted(&env, &texts)
    })
    .await;
    let status = second.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");

    assert_queues_empty(&env).await;
    let dupes = duplicates(&env, &texts);
    eprintln!("kill -9: {at_kill} of {N} sent before the kill; {dupes} sent twice");
    // Only deliveries the killed worker held unacked can be sent again, and
    // it never holds more than the prefetch.
    assert!(
        dupes <= usize::from(PREFETCH),
        "duplicates {dupes} exceed the prefetch {PREFETCH}"
    );
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// 2. SIGTERM under load: drained, exit 0, nothing lost or stuck.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_0() {
    const N: usize = 300;
    const PREFETCH: u16 = 100;
    // Answers take 1 s, so the jobs move in waves of about a prefetch: the
    // signal lands while a wave is in flight, and its answers (and acks)
    // arrive together during the drain, just before the channel closes.
    let env = TestEnv::new("sigterm", keyed_sim(1_000), |s| {
        s.amqp.prefetch = PREFETCH;
        s.amqp.events_exchange = String::new();
        s.limiter.initial_rate = 5_000.0;
        s.limiter.burst = 1_000;
    })
    .await;
    let texts = publish_jobs(&env, "term", 0..N).await;

    let mut w = WorkerProcess::spawn("sigterm", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("the first wave sent", T, || async {
        unique_accepted(&env) >= usize::from(PREFETCH)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = w.terminate(grace(&env) + Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {status}");
    assert_eq!(
        w.log_count("draining: no new jobs"),
        1,
        "the drain is logged once"
    );
    assert_eq!(
        w.log_count("still in flight after the grace period"),
        0,
        "the drain finished within the grace period"
    );

    // The worker is gone: everything it did not send is back in the queue.
    let accepted = accepted_by_text(&env.sim);
    let drained = env.drain_queue(&env.settings.amqp.queue).await;
    // A drain returns each job it had taken once, not more: every return
    // counts against the quorum queue's delivery limit.
    for (props, body) in &drained {
        let count = send_worker::amqp::headers::get_u32(props, "x-delivery-count").unwrap_or(0);
        assert!(
            count <= 1,
            "{:?} was returned {count} times by one drain",
            text_of(body)
        );
    }
    let remaining: Vec<String> = drained
        .iter()
        .map(|(_, body)| text_of(body).expect("a job body"))
        .collect();
    let remaining_set: HashSet<&String> = remaining.iter().collect();
    assert_eq!(remaining.len(), remaining_set.len(), "no job queued twice");
    for (text, n) in &accepted {
        assert_eq!(*n, 1, "{text} sent {n} times by a draining worker");
    }
    // A job the worker sent during the drain was acked before the channel
    // closed, so it must not come back.
    let mut sent_and_queued: Vec<&String> = accepted
        .keys()
        .filter(|t| remaining_set.contains(t))
        .collect();
    sent_and_queued.sort();
    assert!(
        sent_and_queued.is_empty(),
        "{} jobs were sent and acked during the drain, yet are back in the queue \
         (they would be sent twice): {sent_and_queued:?}",
        sent_and_queued.len()
    );
    assert!(
        !remaining.is_empty(),
        "SIGTERM must land mid-run (the test publishes enough for that)"
    );
    let all: HashSet<&String> = texts.iter().collect();
    let accounted: HashSet<&String> = accepted.keys().chain(remaining.iter()).collect();
    assert_eq!(
        accepted.len() + remaining.len(),
        N,
        "sent + still queued == published"
    );
    assert_eq!(accounted, all, "every job is either sent or still queued");
    assert_eq!(env.retry_depth().await, 0);
    assert_eq!(env.dlq_depth().await, 0);
    eprintln!(
        "SIGTERM: {} sent, {} requeued",
        accepted.len(),
        remaining.len()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_130_and_a_restart_sends_everything() {
    const N: usize = 100;
    const PREFETCH: u16 = 20;
    // Slow answers, so the drain after the first signal is still running
    // when the second arrives.
    let env = TestEnv::new("twosignals", keyed_sim(3_000), |s| {
        s.amqp.prefetch = PREFETCH
    })
    .await;
    let texts = publish_jobs(&env, "twice", 0..N).await;

    let mut w = WorkerProcess::spawn("two-signals", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("requests in flight", T, || async {
        w.metrics()
            .await
            .and_then(|m| metric(&m, "send_worker_requests_in_flight", &[]))
            .is_some_and(|v| v > 0.0)
    })
    .await;
    w.signal("INT");
    wait_for("the drain to start", T, || async {
        w.log_count("draining") > 0
    })
    .await;
    w.signal("TERM");
    let status = w
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the second signal ends the worker");
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(w.log_count("second signal"), 1);
    drop(w);

    env.sim.control(&SimControl {
        latency_ms: Some(20),
        ..SimControl::default()
    });
    let mut again = WorkerProcess::spawn("after-130", &env.settings, &[]);
    again.wait_ready(T).await;
    wait_for("every job accepted at least once", T, || async {
        all_accepted(&env, &texts)
    })
    .await;
    let status = again.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_queues_empty(&env).await;
    let dupes = duplicates(&env, &texts);
    eprintln!("two signals: {dupes} jobs sent twice");
    assert!(dupes <= usize::from(PREFETCH), "duplicates {dupes}");
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// 3. A 30 s outage: the circuit breaker holds the jobs; none dead-lettered.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_outage_dead_letters_nothing() {
    const PREFETCH: u16 = 20;
    const OUTAGE: Duration = Duration::from_secs(30);
    // Retries are realistic enough that without the breaker every job would
    // exhaust its 5 attempts well inside the outage: 4 waits of at most
    // 0.75 + 1.5 + 3 + 4 s.
    let env = TestEnv::new("outage", keyed_sim(100), |s| {
        s.amqp.prefetch = PREFETCH;
        s.retry.base_ms = 500;
        s.retry.cap_ms = 4_000;
    })
    .await;
    let c = &env.settings.circuit;
    assert!(c.enabled, "default circuit settings");
    let worst_backoff: u64 = (1..env.settings.retry.max_attempts)
        .map(|n| {
            let nominal =
                env.settings.retry.base_ms as f64 * env.settings.retry.factor.powi(n as i32 - 1);
            (nominal * 1.5).min(env.settings.retry.cap_ms as f64) as u64
        })
        .sum();
    assert!(Duration::from_millis(worst_backoff) < OUTAGE);

    let mut texts = publish_jobs(&env, "outage", 0..100).await;
    let mut w = WorkerProcess::spawn("outage", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("20 sends", T, || async { unique_accepted(&env) >= 20 }).await;

    env.sim.control(&SimControl {
        outage: Some(true),
        ..SimControl::default()
    });
    let started = Instant::now();
    let failures_before = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(failures_before, 0);
    let mut readyz_circuits = HashSet::new();
    // Readiness is about this pod, not Telnyx: it stays 200 while the
    // circuit is open, and the body says the API looks down.
    let mut readyz_200_while_open = false;
    let mut readyz_not_200_while_open = Vec::new();
    let mut max_metric_state = 0.0f64;
    let mut batches = 0u32;
    while started.elapsed() < OUTAGE {
        // More jobs arrive during the outage: 10 more every 2 s for 20 s.
        if batches < 10 && started.elapsed() >= Duration::from_secs(2) * batches {
            let from = 100 + 10 * batches as usize;
            texts.extend(publish_jobs(&env, "outage", from..from + 10).await);
            batches += 1;
        }
        w.assert_running();
        if let Some((status, body)) = w.readyz().await {
            let circuit = body["circuit"].as_str().unwrap_or("?").to_owned();
            if circuit == "open" {
                if status == 200
                    && body["ready"] == true
                    && body["degraded"]
                        .to_string()
                        .contains("circuit breaker open")
                {
                    readyz_200_while_open = true;
                } else {
                    readyz_not_200_while_open.push((status, body.clone()));
                }
            }
            readyz_circuits.insert(circuit);
        }
        if let Some(m) = w.metrics().await
            && let Some(v) = metric(&m, "send_worker_circuit_state", &[])
        {
            max_metric_state = max_metric_state.max(v);
        }
        assert_eq!(env.dlq_depth().await, 0, "dead-lettered during the outage");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    env.sim.control(&SimControl {
        outage: Some(false),
        ..SimControl::default()
    });
    let outage_failures = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    eprintln!(
        "outage: {outage_failures} requests failed in {:?}; /readyz circuits seen {readyz_circuits:?}",
        started.elapsed()
    );
    assert_eq!(texts.len(), 200);
    assert!(
        readyz_circuits.contains("open"),
        "/readyz reported the circuit open: {readyz_circuits:?}"
    );
    assert!(
        readyz_200_while_open,
        "/readyz is 200, saying the circuit is open, while it is open"
    );
    assert!(
        readyz_not_200_while_open.is_empty(),
        "an open circuit must not make the pod unready: {readyz_not_200_while_open:?}"
    );
    assert_eq!(
        max_metric_state, 2.0,
        "send_worker_circuit_state reached 2 (open)"
    );
    // With the circuit open, only the half-open probes reach the API: the
    // failures are the first wave (at most a few prefetches) plus the probes,
    // not 200 jobs x 5 attempts.
    assert!(
        outage_failures <= 3 * usize::from(PREFETCH) + 10,
        "{outage_failures} requests failed: the breaker did not stop sending"
    );

    wait_for(
        "every job sent after the outage",
        Duration::from_secs(120),
        || async { all_accepted(&env, &texts) },
    )
    .await;
    wait_for("the circuit closes", T, || async {
        matches!(w.readyz().await, Some((200, b)) if b["circuit"] == "closed")
    })
    .await;
    let status = w.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_queues_empty(&env).await;
    assert_eq!(duplicates(&env, &texts), 0, "each job sent once");
    assert!(w.log_count("circuit open") >= 1);
    assert!(w.log_count("circuit closed") >= 1);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// 4. A key revoked mid-run: the worker halts, probes, resumes by itself.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_halts_then_resumes_without_dead_letters() {
    const N: usize = 300;
    let env = TestEnv::new("revoked", keyed_sim(50), |s| {
        s.amqp.prefetch = 20;
        s.worker.halt_probe_secs = 1;
    })
    .await;
    let texts = publish_jobs(&env, "revoked", 0..N).await;
    let mut w = WorkerProcess::spawn("revoked", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("30 sends", T, || async { unique_accepted(&env) >= 30 }).await;

    env.sim.control(&SimControl {
        revoked: Some(true),
        ..SimControl::default()
    });
    let deadline = Instant::now() + T;
    let halted_body = loop {
        w.assert_running();
        // A halt is the account's problem, not the pod's: still ready (a
        // rollout can ship a fix), consumer closed, the halt in the body.
        if let Some((200, body)) = w.readyz().await
            && body["halted"].is_string()
            && body["consuming"] == false
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the halt and the consumer stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = halted_body["halted"].as_str().unwrap_or_default();
    assert!(reason.contains("10009"), "halt reason: {halted_body}");
    assert_eq!(halted_body["ready"], true, "{halted_body}");
    assert_eq!(
        halted_body["reasons"],
        serde_json::json!([]),
        "{halted_body}"
    );
    assert!(
        halted_body["degraded"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains("halted")))),
        "{halted_body}"
    );
    assert_eq!(halted_body["consuming"], false, "{halted_body}");

    // Let the requests that were in flight at the revocation finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = w.metrics().await.expect("/metrics");
    assert_eq!(metric(&metrics, "send_worker_halted", &[]), Some(1.0));
    let accepted_at_halt = unique_accepted(&env);
    let requests_before = env.sim.stats().requests;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let probes = env.sim.stats().requests - requests_before;
    eprintln!("halted: {probes} requests in {window:?} (probes every 1 s)");
    // Consumption stopped: about one probe a second, not hundreds of sends.
    assert!(
        probes <= window.as_secs() + 4,
        "{probes} requests in {window:?} while halted"
    );
    assert!(probes >= 1, "the worker probes while halted");
    assert_eq!(
        unique_accepted(&env),
        accepted_at_halt,
        "nothing sent while halted"
    );
    assert!(env.work_depth().await > 0, "the jobs wait in the queue");
    assert_eq!(env.dlq_depth().await, 0, "a halt dead-letters nothing");
    assert_eq!(env.retry_depth().await, 0, "a halt charges no attempt");
    // Nothing lost: every job unsent is back in the queue (a probe may hold
    // one for a moment).
    wait_for("sent + queued == published", T, || async {
        unique_accepted(&env) + env.work_depth().await as usize == N
    })
    .await;
    assert!(
        env.sim
            .requests()
            .iter()
            .filter(|r| r.status != 200)
            .all(|r| r.status == 401),
        "only 401s while revoked"
    );

    env.sim.control(&SimControl {
        revoked: Some(false),
        ..SimControl::default()
    });
    wait_for("/readyz no longer halted, consuming again", T, || async {
        matches!(w.readyz().await,
            Some((200, b)) if b["halted"].is_null() && b["consuming"] == true)
    })
    .await;
    wait_for("every job sent after the resume", T, || async {
        all_accepted(&env, &texts)
    })
    .await;
    let metrics = w.metrics().await.expect("/metrics");
    assert_eq!(metric(&metrics, "send_worker_halted", &[]), Some(0.0));
    let status = w.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_queues_empty(&env).await;
    assert_eq!(duplicates(&env, &texts), 0, "each job sent once");
    // The state change is logged once, not once per job or per probe.
    assert_eq!(w.log_count("account-wide failure: halting"), 1);
    assert_eq!(w.log_count("the account works again; resuming"), 1);
    env.cleanup().await;
}

/// The `reason` of the first `x-death` entry RabbitMQ put on a dead letter.
fn x_death_reason(p: &BasicProperties) -> Option<String> {
    let headers = p.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A long halt must not dead-letter good jobs. A quorum queue counts every
/// give-back against `amqp.delivery_limit`, and probes rotate through the
/// same jobs while halted; so a halted job is re-queued as a fresh copy
/// (confirmed, then acked) rather than nacked. This test shrinks the numbers
/// (limit 3, prefetch 2, a probe a second) so that nacking would dead-letter
/// jobs within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_halt_dead_letters_nothing() {
    let env = TestEnv::new("longhalt", keyed_sim(20), |s| {
        s.amqp.prefetch = 2;
        s.amqp.delivery_limit = 3;
        s.worker.halt_probe_secs = 1;
    })
    .await;
    env.sim.control(&SimControl {
        revoked: Some(true),
        ..SimControl::default()
    });
    let texts = publish_jobs(&env, "longhalt", 0..10).await;
    let mut w = WorkerProcess::spawn("long-halt", &env.settings, &[]);
    wait_for("the halt (the pod stays ready)", T, || async {
        matches!(w.readyz().await, Some((200, b)) if b["halted"].is_string())
    })
    .await;
    // 20 probes: several times the delivery limit per job given back.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && env.dlq_depth().await == 0 {
        w.assert_running();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dead: Vec<String> = env
        .drain_dlq()
        .await
        .iter()
        .map(|(p, body)| {
            format!(
                "{:?}: x-error-reason {:?}, x-death reason {:?}",
                text_of(body),
                headers::get_string(p, headers::ERROR_REASON),
                x_death_reason(p)
            )
        })
        .collect();
    if !dead.is_empty() {
        // Expected to fail until the issue is fixed: clean up first.
        let requests = env.sim.stats().requests;
        drop(w);
        env.cleanup().await;
        panic!(
            "{} jobs dead-lettered by RabbitMQ during a halt ({requests} API requests, each a 401): {dead:#?}",
            dead.len()
        );
    }
    env.sim.control(&SimControl {
        revoked: Some(false),
        ..SimControl::default()
    });
    wait_for("every job sent after the resume", T, || async {
        all_accepted(&env, &texts)
    })
    .await;
    let status = w.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_queues_empty(&env).await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// 5. Expired jobs: dead-lettered as `expired`, never sent.
// ---------------------------------------------------------------------------

fn with_expiry(id: &str, v: AMQPValue) -> BasicProperties {
    headers::with_header(job_props(id), headers::EXPIRES_AT, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jobs_are_dead_lettered_and_never_sent() {
    let env = TestEnv::new("expired", keyed_sim(20), |s| s.worker.max_age_secs = 60).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let in_an_hour =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let expired: Vec<(&str, BasicProperties)> = vec![
        (
            "exp-rfc3339",
            with_expiry("exp-rfc3339", headers::string("2020-01-01T00:00:00Z")),
        ),
        (
            "exp-rfc3339-offset",
            with_expiry(
                "exp-rfc3339-offset",
                headers::string("2020-01-01T02:00:00+02:00"),
            ),
        ),
        (
            "exp-unix-string",
            with_expiry("exp-unix-string", headers::string((now - 5).to_string())),
        ),
        (
            "exp-unix-int",
            with_expiry("exp-unix-int", AMQPValue::LongLongInt((now - 5) as i64)),
        ),
        (
            "exp-max-age",
            job_props("exp-max-age").with_timestamp(now - 3_600),
        ),
    ];
    let fresh: Vec<(&str, BasicProperties)> = vec![
        (
            "ok-rfc3339-future",
            with_expiry("ok-rfc3339-future", headers::string(in_an_hour.to_string())),
        ),
        (
            "ok-unix-future",
            with_expiry("ok-unix-future", headers::string((now + 3_600).to_string())),
        ),
        ("ok-fresh-timestamp", job_props("ok-fresh-timestamp")),
    ];
    let mut jobs = Vec::new();
    for (id, props) in expired.iter().chain(fresh.iter()) {
        jobs.push((sms("+15553000001", &format!("text of {id}")), props.clone()));
    }
    env.publish_all(jobs).await;

    let mut w = WorkerProcess::spawn("expired", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("expired jobs dead-lettered, fresh ones sent", T, || async {
        env.dlq_depth().await as usize == expired.len()
            && env.sim.stats().accepted as usize == fresh.len()
    })
    .await;
    // Outcomes are counted just after the API answer or the dead letter's
    // confirm: wait until the worker has counted them all.
    let counted = |m: &str, result: &str| {
        metric(m, "send_worker_outcomes_total", &[("result", result)]).unwrap_or(0.0)
    };
    wait_for("the outcomes counted", T, || async {
        w.metrics().await.is_some_and(|m| {
            counted(&m, "expired") >= expired.len() as f64
                && counted(&m, "sent") >= fresh.len() as f64
        })
    })
    .await;
    let metrics = w.metrics().await.expect("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "send_worker_outcomes_total",
            &[("result", "expired")]
        ),
        Some(expired.len() as f64),
        "{metrics}"
    );
    let status = w.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let dead = env.drain_dlq().await;
    let mut by_id: HashMap<String, BasicProperties> = HashMap::new();
    for (props, _) in dead {
        let id = props.message_id().as_ref().expect("message_id").to_string();
        assert!(by_id.insert(id.clone(), props).is_none(), "{id} twice");
    }
    for (id, _) in &expired {
        let p = by_id
            .get(*id)
            .unwrap_or_else(|| panic!("{id} not in the DLQ"));
        assert_eq!(
            headers::get_string(p, headers::ERROR_REASON).as_deref(),
            Some("expired"),
            "{id}"
        );
        assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(0), "{id}");
        assert!(
            env.sim
                .requests_with_text(&format!("text of {id}"))
                .is_empty(),
            "{id} reached the API"
        );
    }
    for (id, _) in &fresh {
        assert_eq!(
            env.sim.requests_with_text(&format!("text of {id}")).len(),
            1,
            "{id} sent once"
        );
    }
    assert_eq!(
        env.sim.stats().requests as usize,
        fresh.len(),
        "no other request"
    );
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// 7. Ops endpoints, and the API key never shows in metrics or logs.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_report_and_never_leak_the_key() {
    const N: usize = 20;
    // Debug logs from every crate: the widest net for a leaked key.
    let env = TestEnv::new("ops", keyed_sim(20), |s| s.log.level = "debug".into()).await;
    let texts = publish_jobs(&env, "ops", 0..N).await;
    env.publish("ops-permanent", &sms("+19990000403", "ops permanent"))
        .await;
    env.publish("ops-malformed", b"{not json").await;

    let mut w = WorkerProcess::spawn("ops", &env.settings, &[]);
    let ready = w.wait_ready(T).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["broker_connected"], true, "{ready}");
    assert_eq!(ready["consuming"], true, "{ready}");
    assert_eq!(ready["draining"], false, "{ready}");
    assert!(ready["halted"].is_null(), "{ready}");
    assert_eq!(ready["circuit"], "closed", "{ready}");
    assert_eq!(ready["reasons"], serde_json::json!([]), "{ready}");
    assert_eq!(ready["degraded"], serde_json::json!([]), "{ready}");
    assert_eq!(ready["store_available"], true, "{ready}");
    let (status, body) = w.get("/healthz").await.expect("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));

    wait_for("sends and dead letters", T, || async {
        all_accepted(&env, &texts) && env.dlq_depth().await == 2
    })
    .await;
    // The worker counts an outcome just after the API answer (or the
    // dead letter's confirm): wait until it has counted all of them.
    let total = (N + 2) as f64;
    wait_for("every outcome counted", T, || async {
        w.metrics()
            .await
            .is_some_and(|m| metric(&m, "send_worker_outcomes_total", &[]) >= Some(total))
    })
    .await;
    let m = w.metrics().await.expect("/metrics");
    assert_eq!(
        metric(&m, "send_worker_jobs_consumed_total", &[]),
        Some(total),
        "{m}"
    );
    assert_eq!(
        metric(&m, "send_worker_outcomes_total", &[("result", "sent")]),
        Some(N as f64)
    );
    assert_eq!(
        metric(
            &m,
            "send_worker_outcomes_total",
            &[("result", "dead_lettered")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "send_worker_api_requests_total", &[]),
        Some((N + 1) as f64),
        "the malformed job made no request"
    );
    assert_eq!(
        metric(&m, "send_worker_api_requests_total", &[("status", "403")]),
        Some(1.0)
    );
    for (name, value) in [
        ("send_worker_broker_connected", 1.0),
        ("send_worker_consuming", 1.0),
        ("send_worker_halted", 0.0),
        ("send_worker_circuit_state", 0.0),
        ("send_worker_build_info", 1.0),
    ] {
        assert_eq!(metric(&m, name, &[]), Some(value), "{name}");
    }
    assert!(m.contains("send_worker_api_request_duration_seconds_bucket"));
    assert!(!m.contains(API_KEY), "the API key is in /metrics");

    let status = w.terminate(grace(&env) + T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    let logs = w.logs();
    assert!(logs.len() > N, "the worker logged ({} lines)", logs.len());
    for line in &logs {
        assert!(
            !line.contains(API_KEY),
            "the API key is in a log line: {line}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "logs are JSON when not a terminal: {line}"
        );
    }
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    env.cleanup().await;
}
