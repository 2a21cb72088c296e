//! Issue #11: no duplicate SMS across crashes, redeliveries and replicas.
//! Real `send-worker run` binaries as child processes, the real RabbitMQ,
//! the real Redis (`dedupe.backend = "redis"`, a key prefix per test), and
//! the simulator, which counts a request the moment it accepts it, as Telnyx
//! would (so a request in flight at a kill -9 has been sent).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use send_worker::amqp::headers;
use send_worker::config::{DedupeBackend, OnUnknown, Settings};
use send_worker::ops::metrics::Metrics;
use send_worker::secret::Secret;
use send_worker::sim::SimConfig;
use send_worker::store::Store;
use send_worker::testkit::{
    TestEnv, WorkerProcess, accepted_by_text, free_port, job_id_of, job_props, keyed_sim, metric,
    redis_url, sms, wait_for,
};

const T: Duration = Duration::from_secs(180);

fn sim() -> SimConfig {
    keyed_sim(20)
}

/// Settings for a fleet that shares Redis under a key prefix of its own.
fn shared(s: &mut Settings, redis: &str, prefix: &str) {
    s.redis.url = Secret::new(redis);
    s.redis.key_prefix = prefix.to_owned();
    s.dedupe.backend = DedupeBackend::Redis;
    s.limiter.initial_rate = 2_000.0;
    s.limiter.max_rate = 5_000.0;
    // Short leases, so the test does not wait long for a dead worker's.
    s.telnyx.request_timeout_ms = 2_000;
    s.dedupe.lease_margin_ms = 1_000;
    s.worker.shutdown_grace_secs = 5;
}

/// Jobs "dd-i" with texts "dd i".
fn jobs(tag: &str, n: usize) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
    (0..n)
        .map(|i| {
            (
                sms(&format!("+1555800{:04}", i % 10_000), &format!("{tag} {i}")),
                job_props(&format!("{tag}-{i}")),
            )
        })
        .collect()
}

/// Drain the DLQ into `dead` (job id → x-error-reason).
async fn collect_dlq(env: &TestEnv, dead: &mut HashMap<String, String>) {
    for (p, _) in env.drain_dlq().await {
        let id = job_id_of(&p);
        let reason = headers::get_string(&p, headers::ERROR_REASON).unwrap_or_default();
        assert!(
            dead.insert(id.clone(), reason).is_none(),
            "{id} dead-lettered twice"
        );
    }
}

/// Run `n` jobs through workers killed with SIGKILL `kills` times (and
/// restarted each time), until every job is sent or dead-lettered. Returns
/// the simulator's acceptances by text, the dead letters, and the
/// `send_worker_dedupe_unknown_total` each worker had counted when scraped.
async fn run_with_kills(
    env: &TestEnv,
    tag: &str,
    n: usize,
    kills: usize,
) -> (HashMap<String, usize>, HashMap<String, String>, f64) {
    env.publish_all(jobs(tag, n)).await;
    let mut w = WorkerProcess::spawn(tag, &env.settings, &[]);
    w.wait_ready(T).await;
    let mut dead = HashMap::new();
    let mut unknown_counted = 0.0;
    for k in 1..=kills {
        // Kill while it is busy: after another n / (kills + 1) acceptances.
        let target = n * k / (kills + 1);
        wait_for("progress before a kill", T, || async {
            accepted_by_text(&env.sim).len() >= target
        })
        .await;
        if let Some(m) = w.metrics().await {
            unknown_counted += metric(&m, "send_worker_dedupe_unknown_total", &[]).unwrap_or(0.0);
        }
        w.signal("KILL");
        assert!(w.wait_exit(T).await.is_some(), "kill -9 ends it");
        w = WorkerProcess::spawn(tag, &env.settings, &[]);
        w.wait_ready(T).await;
    }
    let started = Instant::now();
    loop {
        collect_dlq(env, &mut dead).await;
        let accepted = accepted_by_text(&env.sim);
        let done = (0..n).all(|i| {
            accepted.contains_key(&format!("{tag} {i}")) || dead.contains_key(&format!("{tag}-{i}"))
        });
        if done && env.work_depth().await == 0 && env.retry_depth().await == 0 {
            break;
        }
        w.assert_running();
        assert!(
            started.elapsed() < T,
            "not every job ended sent or dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(m) = w.metrics().await {
        unknown_counted += metric(&m, "send_worker_dedupe_unknown_total", &[]).unwrap_or(0.0);
    }
    let status = w.terminate(T).await;
    assert_eq!(status.code(), Some(0), "{status}");
    collect_dlq(env, &mut dead).await;
    (accepted_by_text(&env.sim), dead, unknown_counted)
}

fn store_for(env: &TestEnv) -> Store {
    let redis = send_worker::redis::Redis::from_settings(&env.settings.redis)
        .expect("URL")
        .expect("client");
    Store::from_settings(&env.settings, Some(&redis), Metrics::new()).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kills_with_on_unknown_dead_letter_lose_nothing_and_send_nothing_twice() {
    let prefix = format!("sw-dedupe-{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::new("dedupedl", sim(), |s| {
        shared(s, &redis_url(), &prefix);
        s.dedupe.on_unknown = OnUnknown::DeadLetter;
    })
    .await;
    const N: usize = 20_000;
    let (accepted, dead, _) = run_with_kills(&env, "dl", N, 5).await;
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    for i in 0..N {
        let sent = accepted.get(&format!("dl {i}")).copied().unwrap_or(0);
        let dl = dead.get(&format!("dl-{i}"));
        if sent == 0 && dl.is_none() {
            lost.push(i);
        }
        if sent > 1 {
            twice.push(i);
        }
        if let Some(reason) = dl {
            assert_eq!(
                reason, "unknown-outcome",
                "dl-{i}: only unknown outcomes are dead-lettered here"
            );
        }
    }
    let unknown = dead.len();
    let unknown_and_sent = dead
        .keys()
        .filter(|id| {
            let i = id.trim_start_matches("dl-");
            accepted.contains_key(&format!("dl {i}"))
        })
        .count();
    eprintln!(
        "on_unknown = dead-letter: {N} jobs, 5 kills: {} sent, {unknown} dead-lettered as unknown-outcome ({unknown_and_sent} of them had reached the API), {} lost, {} sent twice",
        accepted.len(),
        lost.len(),
        twice.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert!(unknown > 0, "kills under load leave requests in flight");
    // The unknown ones are in the store with their own reason.
    let store = store_for(&env);
    for id in dead.keys().take(20) {
        let r = store.lookup(id).await.unwrap().expect("a record");
        assert_eq!(r.dead_reason.as_deref(), Some("unknown-outcome"), "{id}");
        assert!(r.unknowns >= 1, "{id}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kills_with_the_default_send_duplicate_only_what_was_in_flight_and_count_it() {
    let prefix = format!("sw-dedupe-{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::new("dedupesend", sim(), |s| shared(s, &redis_url(), &prefix)).await;
    assert_eq!(
        env.settings.dedupe.on_unknown,
        OnUnknown::Send,
        "the default"
    );
    const N: usize = 20_000;
    let (accepted, dead, unknown_counted) = run_with_kills(&env, "sd", N, 5).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    let store = store_for(&env);
    let mut lost = 0;
    let mut dupes = Vec::new();
    let mut unknowns_recorded = 0u32;
    for i in 0..N {
        match accepted.get(&format!("sd {i}")).copied().unwrap_or(0) {
            0 => lost += 1,
            1 => {}
            _ => dupes.push(format!("sd-{i}")),
        }
    }
    for id in &dupes {
        let r = store.lookup(id).await.unwrap().expect("a record");
        // The only way to a second send: an outcome that was unknown (a
        // lease that ran out at a kill, or a timed-out request), which the
        // store recorded, and the metric counted.
        assert!(
            r.unknowns >= 1,
            "{id} was sent twice without an unknown outcome: {r:?}"
        );
        unknowns_recorded += r.unknowns;
    }
    eprintln!(
        "on_unknown = send: {N} jobs, 5 kills: {} sent, {lost} lost, {} sent twice; the workers counted {unknown_counted} unknown outcomes",
        accepted.len(),
        dupes.len()
    );
    assert_eq!(lost, 0, "nothing lost");
    assert!(
        unknown_counted >= 1.0,
        "the metric counted the unknown outcomes"
    );
    assert!(
        f64::from(unknowns_recorded) >= dupes.len() as f64,
        "every duplicate is an unknown outcome"
    );
    env.cleanup().await;
}

/// `rabbitmqctl close_connection` every connection named `name` (the
/// workers' consumer connections are named "send-worker <queue>"): their
/// channels die with unacked deliveries.
fn close_connections(name: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl list_connections failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut closed = 0;
    for line in text.lines() {
        if !line.contains(&format!("\"{name}\"")) {
            continue;
        }
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let ok = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "test: forced redelivery"])
            .status()
            .is_ok_and(|s| s.success());
        closed += usize::from(ok);
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_forced_redeliveries_send_no_job_twice() {
    let prefix = format!("sw-dedupe-{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::new("dedupe2", sim(), |s| {
        shared(s, &redis_url(), &prefix);
        s.limiter.initial_rate = 500.0;
        s.amqp.reconnect_max_secs = 1;
    })
    .await;
    const N: usize = 4_000;
    // Every job once, and 1,000 of them a second time (a producer's retry
    // after a lost confirm: the same message_id and body).
    let mut all = jobs("r2", N);
    all.extend(jobs("r2", 1_000).into_iter().step_by(1));
    env.publish_all(all).await;
    let mut a = WorkerProcess::spawn("replica-a", &env.settings, &[]);
    let mut b = WorkerProcess::spawn("replica-b", &env.settings, &[]);
    a.wait_ready(T).await;
    b.wait_ready(T).await;
    // Kill the consumers' connections three times mid-run: every delivery
    // they held unacked comes back, to either replica.
    let mut closed = 0;
    for k in 1..=3 {
        wait_for("progress", T, || async {
            accepted_by_text(&env.sim).len() >= N * k / 4
        })
        .await;
        closed += close_connections(&format!("send-worker {}", env.settings.amqp.queue));
    }
    wait_for("every job sent", T, || async {
        let accepted = accepted_by_text(&env.sim);
        (0..N).all(|i| accepted.contains_key(&format!("r2 {i}")))
    })
    .await;
    wait_for("queues drained", T, || async {
        env.work_depth().await == 0 && env.retry_depth().await == 0
    })
    .await;
    let accepted = accepted_by_text(&env.sim);
    let twice: Vec<_> = (0..N)
        .filter(|i| accepted.get(&format!("r2 {i}")).copied().unwrap_or(0) > 1)
        .collect();
    let suppressed: f64 = [&a, &b]
        .iter()
        .map(|w| async move {
            w.metrics()
                .await
                .and_then(|m| {
                    metric(
                        &m,
                        "send_worker_outcomes_total",
                        &[("result", "suppressed"), ("reason", "duplicate")],
                    )
                })
                .unwrap_or(0.0)
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    eprintln!(
        "two replicas: {N} jobs + 1000 republished, {closed} connections closed: {} sent twice, {suppressed} duplicates suppressed",
        twice.len()
    );
    assert!(closed >= 2, "connections were closed ({closed})");
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert!(suppressed >= 1.0, "duplicates were suppressed");
    assert_eq!(env.dlq_depth().await, 0);
    a.terminate(T).await;
    b.terminate(T).await;
    env.cleanup().await;
}

/// A Redis server of the test's own, on a free port, so stopping it
/// disturbs no other test.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it is on the test machines)");
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_the_worker_pauses_sends_nothing_and_resumes() {
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    let url = redis.url();
    let env = TestEnv::new("dedupedown", sim(), |s| {
        shared(s, &url, "sw-down");
        s.limiter.initial_rate = 200.0;
    })
    .await;
    wait_for("redis-server up", T, || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    const N: usize = 3_000;
    env.publish_all(jobs("rd", N)).await;
    let mut w = WorkerProcess::spawn("dedupedown", &env.settings, &[]);
    w.wait_ready(T).await;
    wait_for("some sends", T, || async {
        accepted_by_text(&env.sim).len() >= 500
    })
    .await;
    redis.stop();
    // Readiness says why, the store gauge drops, and sending stops: once the
    // requests already past the store have landed, the count stays put.
    wait_for("not ready: the job store", T, || async {
        matches!(w.readyz().await, Some((503, b)) if b.to_string().contains("job store unavailable"))
    })
    .await;
    let m = w.metrics().await.expect("metrics");
    assert_eq!(
        metric(&m, "send_worker_dedupe_store_available", &[]),
        Some(0.0)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = env.sim.stats().requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.sim.stats().requests,
        paused_at,
        "nothing was sent while the store was down"
    );
    assert!(
        (paused_at as usize) < N,
        "the run was cut off mid-way ({paused_at} of {N})"
    );
    // Back: the worker resumes by itself and sends the rest, each once.
    let _redis = OwnRedis::start(port);
    wait_for("every job sent", T, || async {
        accepted_by_text(&env.sim).len() >= N
    })
    .await;
    wait_for("ready again", T, || async {
        matches!(w.readyz().await, Some((200, _)))
    })
    .await;
    let accepted = accepted_by_text(&env.sim);
    let twice = accepted.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "no job sent twice");
    let ids: HashSet<String> = accepted.keys().cloned().collect();
    assert_eq!(ids.len(), N);
    w.terminate(T).await;
    env.cleanup().await;
}
