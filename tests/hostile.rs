//! Issue #9: nothing a producer or the API does can stall, loop or lose a
//! job. The real `send-worker run` binary, as a child process, against the
//! real RabbitMQ and the in-process simulator:
//!
//! 1. hostile jobs (absurd timestamps, deadlines and counters in every header
//!    the worker reads, wrong header types, bodies that are not jobs) beside
//!    good ones, plus one job answered 429 with `retry-after: 86400` and one
//!    answered 503 with `retry-after: 3600` on every attempt;
//! 2. a mixed load in which 1 % of the jobs fail on every attempt, and a load
//!    made only of such jobs: they reach the DLQ on their schedule, and the
//!    circuit breaker holds nothing for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};
use send_worker::amqp::headers;
use send_worker::sim::{SimConfig, SimReply};
use send_worker::testkit::{
    TestEnv, WorkerProcess, accepted_by_text, job_id_of, job_props, keyed_sim, metric, sms,
    unacked, wait_for,
};

const T: Duration = Duration::from_secs(120);

fn sim() -> SimConfig {
    keyed_sim(10)
}

/// The header that names a hostile case; it survives into the DLQ entry.
const CASE: &str = "x-test-case";

fn case_of(p: &BasicProperties) -> Option<String> {
    headers::get_string(p, CASE)
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn nested(depth: usize) -> AMQPValue {
    let mut v = AMQPValue::LongString(LongString::from(b"deep".to_vec()));
    for i in 0..depth {
        let mut t = FieldTable::default();
        t.insert(ShortString::from(format!("k{i}")), v);
        v = if i % 2 == 0 {
            AMQPValue::FieldTable(t)
        } else {
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(t)]))
        };
    }
    v
}

/// Every AMQP value type, and the absurd ones, for a header. (RabbitMQ
/// itself refuses NaN and infinite floats and short-string field values — it
/// closes the publishing connection — so no producer can deliver those; the
/// decoder's fuzzer covers them in-process.)
fn hostile_values() -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8min", AMQPValue::ShortShortInt(i8::MIN)),
        ("u8max", AMQPValue::ShortShortUInt(u8::MAX)),
        ("i16min", AMQPValue::ShortInt(i16::MIN)),
        ("u16max", AMQPValue::ShortUInt(u16::MAX)),
        ("i32min", AMQPValue::LongInt(i32::MIN)),
        ("u32max", AMQPValue::LongUInt(u32::MAX)),
        ("i64min", AMQPValue::LongLongInt(i64::MIN)),
        ("i64max", AMQPValue::LongLongInt(i64::MAX)),
        ("f32huge", AMQPValue::Float(3.0e38)),
        ("f64huge", AMQPValue::Double(1e300)),
        ("f64neghuge", AMQPValue::Double(-1e300)),
        ("ts_max", AMQPValue::Timestamp(u64::MAX)),
        ("str_1e300", ls("1e300")),
        ("str_neg", ls("-5")),
        ("str_nan", ls("NaN")),
        ("str_inf", ls("inf")),
        ("str_digits", ls("99999999999999999999999999999999")),
        ("str_garbage", ls("not a number \u{0}\u{7f}")),
        ("str_year_9999", ls("9999-12-31T23:59:59Z")),
        (
            "decimal",
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 255,
                value: u32::MAX,
            }),
        ),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0xfe, 0, 1])),
        ),
        ("void", AMQPValue::Void),
        ("table", nested(1)),
        ("deep", nested(64)),
    ]
}

struct Cases {
    jobs: Vec<(Vec<u8>, BasicProperties)>,
    /// Case name → the text its body carries (None: not a sendable body).
    texts: HashMap<String, Option<String>>,
}

impl Cases {
    fn add(&mut self, name: String, body: Vec<u8>, props: BasicProperties, text: Option<String>) {
        let props = headers::with_header(props, CASE, ls(&name));
        self.jobs.push((body, props));
        self.texts.insert(name, text);
    }
}

fn hostile_cases() -> Cases {
    let mut c = Cases {
        jobs: Vec::new(),
        texts: HashMap::new(),
    };
    let mut n = 0usize;
    let mut valid = |c: &mut Cases, name: String, props: BasicProperties| {
        n += 1;
        let text = format!("hostile {name}");
        c.add(
            name,
            sms(&format!("+1555400{:04}", n % 10_000), &text),
            props,
            Some(text),
        );
    };
    // Absurd values of every type in every header the worker reads.
    for header in [
        headers::EXPIRES_AT,
        headers::ATTEMPTS,
        headers::RATE_LIMIT_BOUNCES,
        headers::DEFERRALS,
    ] {
        for (kind, v) in hostile_values() {
            let name = format!("{header}={kind}");
            let props = headers::with_header(job_props(&name), header, v);
            valid(&mut c, name, props);
        }
    }
    // Absurd AMQP timestamps (with worker.max_age_secs set, `at + age` too).
    for (kind, ts) in [
        ("ts=u64max", u64::MAX),
        ("ts=i64max+1", i64::MAX as u64 + 1),
        ("ts=half", u64::MAX / 2),
        ("ts=year-3000", 32_503_680_000),
    ] {
        let props = job_props(kind).with_timestamp(ts);
        valid(&mut c, kind.to_owned(), props);
    }
    // Every absurd header at once.
    let mut all = job_props("all-at-once").with_timestamp(u64::MAX);
    for header in [
        headers::EXPIRES_AT,
        headers::ATTEMPTS,
        headers::RATE_LIMIT_BOUNCES,
        headers::DEFERRALS,
    ] {
        all = headers::with_header(all, header, AMQPValue::LongLongInt(i64::MIN));
    }
    valid(&mut c, "all-at-once".to_owned(), all);
    // No job id, or an empty one.
    let text = sms("+15554009999", "hostile no-id");
    c.add(
        "no-id".into(),
        text.clone(),
        BasicProperties::default().with_delivery_mode(2),
        None,
    );
    c.add(
        "empty-id".into(),
        text,
        BasicProperties::default().with_message_id("".into()),
        None,
    );
    // Bodies that are not jobs.
    let deep = "[".repeat(100_000);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("array", b"[1,2,3]".to_vec()),
        ("null", b"null".to_vec()),
        ("bad-utf8", vec![b'{', 0xff, 0xfe, 0xfd, b'}']),
        ("deep-nesting", deep.into_bytes()),
        ("huge", vec![b'x'; 5 * 1024 * 1024]),
        (
            "to-is-object",
            br#"{"from":"+15551234567","to":{"a":1},"text":"x"}"#.to_vec(),
        ),
        (
            "number-overflow",
            br#"{"from":"+15551234567","to":1e999,"text":"x"}"#.to_vec(),
        ),
        (
            "text-not-string",
            br#"{"from":"+15551234567","to":"+15559876543","text":[1]}"#.to_vec(),
        ),
        ("nul-bytes", b"{\"to\":\"+1555\0\"}".to_vec()),
    ];
    for (name, body) in bodies {
        let name = format!("body={name}");
        let props = job_props(&name);
        c.add(name, body, props, None);
    }
    c
}

fn x_reason(p: &BasicProperties) -> String {
    headers::get_string(p, headers::ERROR_REASON).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_and_absurd_retry_afters_stall_loop_and_lose_nothing() {
    let env = TestEnv::new("hostile", sim(), |s| {
        s.amqp.prefetch = 64;
        s.retry.base_ms = 50;
        s.retry.cap_ms = 1_000;
        s.limiter.max_pause_secs = 2;
        s.worker.max_age_secs = 3_600;
        // Not a test of timeouts: on a loaded machine a request that times
        // out after the simulator accepted it is (rightly) sent again.
        s.telnyx.request_timeout_ms = 30_000;
        s.worker.shutdown_grace_secs = 40;
    })
    .await;
    // One job answered 429 with a day-long retry-after (then accepted), one
    // answered 503 with an hour-long retry-after on every attempt.
    env.sim
        .set_behavior(Some(Arc::new(|r| match r.text.as_deref() {
            Some("retry-after 429") if r.nth == 1 => Some(SimReply {
                retry_after: Some(86_400),
                ..SimReply::error(429, "10011", "Too many requests", "Rate limit exceeded.")
            }),
            Some("retry-after 503") => Some(SimReply {
                retry_after: Some(3_600),
                ..SimReply::error(503, "10006", "Service unavailable", "Try again later.")
            }),
            _ => None,
        })));

    let mut cases = hostile_cases();
    let mut good = Vec::new();
    for i in 0..100 {
        let text = format!("good {i}");
        cases.jobs.push((
            sms(&format!("+1555500{i:04}"), &text),
            job_props(&format!("good-{i}")),
        ));
        good.push(text);
    }
    cases.jobs.push((
        sms("+15556000001", "retry-after 429"),
        job_props("retry-after-429"),
    ));
    cases.jobs.push((
        sms("+15556000002", "retry-after 503"),
        job_props("retry-after-503"),
    ));
    // The hostile jobs go first, so good jobs queue behind them.
    env.publish_all(cases.jobs.clone()).await;

    let mut w = WorkerProcess::spawn("hostile", &env.settings, &[]);
    w.wait_ready(T).await;

    // Every good job, and the 429 job once its (capped) pause is over.
    wait_for("every good job and the 429 job sent", T, || async {
        let accepted = accepted_by_text(&env.sim);
        good.iter().all(|t| accepted.contains_key(t)) && accepted.contains_key("retry-after 429")
    })
    .await;
    // The 503 job: five attempts, each delay cut to retry.cap_ms, then the DLQ.
    let mut dead: HashMap<String, String> = HashMap::new();
    let mut dead_ids = Vec::new();
    let hostile_done = |dead: &HashMap<String, String>| {
        let accepted = accepted_by_text(&env.sim);
        cases.texts.iter().all(|(case, text)| {
            dead.contains_key(case) || text.as_ref().is_some_and(|t| accepted.contains_key(t))
        })
    };
    let started = Instant::now();
    loop {
        for (p, _) in env.drain_dlq().await {
            match case_of(&p) {
                Some(case) => {
                    dead.insert(case, x_reason(&p));
                }
                None => dead_ids.push((job_id_of(&p), x_reason(&p))),
            }
        }
        let done_503 = dead_ids.iter().any(|(id, _)| id == "retry-after-503");
        if done_503 && hostile_done(&dead) {
            break;
        }
        w.assert_running();
        assert!(
            started.elapsed() < T,
            "not every hostile job ended sent or dead-lettered: missing {:?}",
            cases
                .texts
                .iter()
                .filter(|(case, text)| !dead.contains_key(*case)
                    && !text
                        .as_ref()
                        .is_some_and(|t| accepted_by_text(&env.sim).contains_key(t)))
                .map(|(c, _)| c)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing held: the queues are empty and the broker counts no unacked
    // delivery on the work queue while the worker still runs.
    wait_for("queues empty", T, || async {
        env.work_depth().await == 0 && env.retry_depth().await == 0
    })
    .await;
    let held = unacked(&env.settings.amqp.queue).expect("ask rabbitmqctl for unacked deliveries");
    assert_eq!(held, 0, "deliveries held unacked by the worker");
    w.assert_running();

    let accepted = accepted_by_text(&env.sim);
    for t in &good {
        assert_eq!(accepted.get(t), Some(&1), "{t} sent once");
    }
    assert_eq!(
        accepted.get("retry-after 429"),
        Some(&1),
        "the 429 job sent once"
    );
    let calls_503 = env.sim.requests_with_text("retry-after 503").len();
    assert_eq!(
        calls_503, env.settings.retry.max_attempts as usize,
        "the 503 job made exactly max_attempts calls"
    );
    assert!(
        dead_ids
            .iter()
            .any(|(id, r)| id == "retry-after-503" && r == "attempts-exhausted"),
        "{dead_ids:?}"
    );
    // Every hostile case ended in exactly one place.
    for (case, text) in &cases.texts {
        let sent = text
            .as_ref()
            .and_then(|t| accepted.get(t))
            .copied()
            .unwrap_or(0);
        let dl = usize::from(dead.contains_key(case));
        assert_eq!(
            sent + dl,
            1,
            "{case}: sent {sent} times, dead-lettered {dl} times"
        );
    }
    for (case, reason) in &dead {
        assert!(
            [
                "validation",
                "malformed",
                "expired",
                "attempts-exhausted",
                "permanent"
            ]
            .contains(&reason.as_str()),
            "{case} dead-lettered with reason {reason:?}"
        );
    }
    let m = w.metrics().await.expect("metrics");
    assert_eq!(
        metric(&m, "send_worker_job_panics_total", &[]),
        Some(0.0),
        "no job's handling panicked"
    );
    assert_eq!(w.log_count("panicked"), 0, "no panic in the logs");
    // The day-long retry-after paused nothing: the answer still had budget.
    assert_eq!(w.log_count("pausing sends"), 0);
    let reasons: HashSet<&String> = dead.values().collect();
    eprintln!(
        "hostile: {} cases, {} dead-lettered ({reasons:?}), {} sent",
        cases.texts.len(),
        dead.len(),
        cases.texts.len() - dead.len()
    );
    let status = w.terminate(T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    env.cleanup().await;
}

/// The sum of the longest delays of a job's retries: its schedule.
fn schedule(env: &TestEnv) -> Duration {
    let r = &env.settings.retry;
    let ms: f64 = (1..r.max_attempts)
        .map(|n| (r.base_ms as f64 * r.factor.powi(n as i32 - 1) * 1.5).min(r.cap_ms as f64))
        .sum();
    Duration::from_millis(ms as u64)
}

/// Jobs whose text starts with "always" fail with 503 on every attempt.
fn always_failing(env: &TestEnv) {
    env.sim.set_behavior(Some(Arc::new(|r| {
        r.text
            .as_deref()
            .is_some_and(|t| t.starts_with("always"))
            .then(|| SimReply::error(503, "10006", "Service unavailable", "Try again later."))
    })));
}

/// Wait until the DLQ holds every job of `ids`; returns when each arrived.
async fn collect_dead(
    env: &TestEnv,
    w: &mut WorkerProcess,
    ids: &HashSet<String>,
    timeout: Duration,
) -> HashMap<String, (BasicProperties, Duration)> {
    let started = Instant::now();
    let mut dead = HashMap::new();
    while dead.len() < ids.len() {
        for (p, _) in env.drain_dlq().await {
            let id = job_id_of(&p);
            assert!(
                ids.contains(&id),
                "unexpected dead letter {id}: {:?}",
                x_reason(&p)
            );
            dead.insert(id, (p, started.elapsed()));
        }
        w.assert_running();
        assert!(
            started.elapsed() < timeout,
            "only {} of {} always-failing jobs reached the DLQ within {timeout:?}",
            dead.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_of_jobs_failing_forever_reach_the_dlq_on_their_schedule() {
    // A realistic retry schedule, a 10 s run, and a circuit breaker that
    // opens on 5 failures at 50 % of a 10 s window: at the tail of the run,
    // when only retries of failing jobs are left, it opens (as measured in
    // the issue), and must not hold them.
    let env = TestEnv::new("onepercent", sim(), |s| {
        s.retry.base_ms = 500;
        s.retry.cap_ms = 8_000;
        s.limiter.initial_rate = 200.0;
        s.circuit.min_failures = 5;
    })
    .await;
    always_failing(&env);
    const N: usize = 2_000;
    let mut jobs = Vec::new();
    let mut always = HashSet::new();
    let mut flaky = Vec::new();
    let mut good = Vec::new();
    for i in 0..N {
        let id = format!("mix-{i}");
        let (to, text) = if i % 100 == 0 {
            always.insert(id.clone());
            ("+15557000000".to_owned(), format!("always {i}"))
        } else if i % 25 == 1 {
            // 503 on the first two tries of this body, then accepted.
            flaky.push(format!("flaky {i}"));
            ("+19990000503".to_owned(), format!("flaky {i}"))
        } else {
            good.push(format!("good {i}"));
            (format!("+1555700{:04}", i % 10_000), format!("good {i}"))
        };
        jobs.push((sms(&to, &text), job_props(&id)));
    }
    env.publish_all(jobs).await;
    let mut w = WorkerProcess::spawn("onepercent", &env.settings, &[]);
    w.wait_ready(T).await;
    let c = &env.settings.circuit;
    // The schedule, plus at most one cool-down (and a canary) per retry,
    // plus room for a slow machine.
    let bound = schedule(&env) * 2
        + Duration::from_millis(c.cool_down_ms + 1_000) * (env.settings.retry.max_attempts - 1)
        + Duration::from_secs(30);
    let dead = collect_dead(&env, &mut w, &always, bound).await;
    let latest = dead.values().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "1 %: all {} always-failing jobs dead-lettered {latest:?} after the start (schedule {:?}, bound {bound:?}); circuit opened {} times, closed by the canary {} times",
        dead.len(),
        schedule(&env),
        w.log_count("circuit open"),
        w.log_count("answers the canary")
    );
    for (id, (p, _)) in &dead {
        assert_eq!(x_reason(p), "attempts-exhausted", "{id}");
        assert_eq!(headers::get_u32(p, headers::ATTEMPTS), Some(5), "{id}");
    }
    wait_for("every other job sent", T, || async {
        let accepted = accepted_by_text(&env.sim);
        good.iter()
            .chain(flaky.iter())
            .all(|t| accepted.contains_key(t))
    })
    .await;
    let accepted = accepted_by_text(&env.sim);
    for t in good.iter().chain(flaky.iter()) {
        assert_eq!(accepted.get(t), Some(&1), "{t} sent once");
    }
    for i in (0..N).step_by(100) {
        assert_eq!(
            env.sim.requests_with_text(&format!("always {i}")).len(),
            5,
            "always {i}: exactly max_attempts calls"
        );
    }
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    let status = w.terminate(T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_failing_jobs_are_all_the_traffic_the_canary_keeps_the_circuit_from_holding_them() {
    let env = TestEnv::new("onlybad", sim(), |s| {
        s.retry.base_ms = 500;
        s.retry.cap_ms = 4_000;
    })
    .await;
    always_failing(&env);
    // 30 jobs that fail at once: more than circuit.min_failures, 100 % of
    // the answers. The circuit opens; only the canary can tell that the API
    // itself is up.
    let ids: HashSet<String> = (0..30).map(|i| format!("bad-{i}")).collect();
    let jobs = (0..30)
        .map(|i| {
            (
                sms("+15557100000", &format!("always {i}")),
                job_props(&format!("bad-{i}")),
            )
        })
        .collect();
    env.publish_all(jobs).await;
    let mut w = WorkerProcess::spawn("onlybad", &env.settings, &[]);
    w.wait_ready(T).await;
    let c = &env.settings.circuit;
    let bound = schedule(&env) * 2
        + Duration::from_millis(c.cool_down_ms + 1_000) * (env.settings.retry.max_attempts - 1)
        + Duration::from_secs(30);
    let dead = collect_dead(&env, &mut w, &ids, bound).await;
    let latest = dead.values().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "only bad jobs: all 30 dead-lettered after {latest:?} (bound {bound:?}); {} canaries",
        env.sim.canaries()
    );
    assert!(w.log_count("circuit open") >= 1, "the circuit opened");
    assert!(env.sim.canaries() >= 1, "a failed probe asked the canary");
    assert!(
        w.log_count("answers the canary") >= 1,
        "the canary closed the circuit"
    );
    for (id, (p, _)) in &dead {
        assert_eq!(x_reason(p), "attempts-exhausted", "{id}");
    }
    let status = w.terminate(T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    env.cleanup().await;
}
