//! Shared test harness: a uniquely named topology on the real RabbitMQ, an
//! in-process Telnyx simulator, and helpers to publish, wait and inspect.
//! Every test calls [`TestEnv::cleanup`] at the end to delete what it declared.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use send_worker::broker::Topology;
use send_worker::config::Settings;
use send_worker::metrics::Metrics;
use send_worker::secret::Secret;
use send_worker::simulator::{self, SimConfig, SimHandle};
use send_worker::telnyx::TelnyxClient;
use send_worker::worker::Worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "test-key-0123456789";

pub fn amqp_url() -> String {
    std::env::var("SEND_WORKER__AMQP__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub struct TestEnv {
    pub prefix: String,
    pub settings: Settings,
    pub sim: SimHandle,
    pub conn: Connection,
    pub ch: Channel,
    pub topology: Topology,
    sim_stop: CancellationToken,
}

pub struct RunningWorker {
    pub worker: Worker,
    pub token: CancellationToken,
    pub handle: JoinHandle<Result<(), send_worker::broker::BrokerError>>,
}

impl RunningWorker {
    /// Graceful stop: cancel and wait for the drain.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.handle).await;
    }
}

/// A job body: an SMS from a long code to `to`, whose text identifies it.
pub fn sms(to: &str, text: &str) -> Vec<u8> {
    serde_json::json!({"from": "+15551234567", "to": to, "text": text})
        .to_string()
        .into_bytes()
}

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

impl TestEnv {
    /// A fresh topology named after `name`, a simulator with `sim`, and
    /// settings pointing at both (fast retries; `tweak` adjusts the rest).
    pub async fn new(name: &str, sim: SimConfig, tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("test-{name}-{}", &id[..8]);
        let sim_stop = CancellationToken::new();
        let sim = simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim, sim_stop.clone())
            .await
            .expect("simulator starts");
        let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new())
            .expect("default settings");
        settings.amqp.url = Secret::new(amqp_url());
        settings.amqp.exchange = format!("{prefix}.messages");
        settings.amqp.queue = format!("{prefix}.messages.send");
        settings.amqp.dead_letter_queue = format!("{prefix}.messages.send.dead");
        settings.amqp.retry_queue_prefix = format!("{prefix}.messages.send.retry");
        settings.amqp.events_exchange = format!("{prefix}.messages.events");
        settings.amqp.reconnect_max_secs = 2;
        settings.telnyx.base_url = sim.base_url();
        settings.telnyx.api_key = Secret::new(API_KEY);
        settings.telnyx.request_timeout_ms = 5_000;
        settings.retry.base_ms = 50;
        settings.retry.cap_ms = 400;
        settings.worker.shutdown_grace_secs = 10;
        settings.pacing.account_sms_per_second = 0.0;
        settings.pacing.account_mms_per_second = 0.0;
        settings.limiter.initial_rate = 500.0;
        settings.http.listen = "127.0.0.1:0".into();
        tweak(&mut settings);

        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running on 127.0.0.1:5672 (rabbitmq-server -detached)");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let topology = Topology::new(
            &settings.amqp,
            &send_worker::retry::Backoff::from_settings(&settings.retry),
        );
        topology.declare(&ch).await.expect("declare topology");
        TestEnv {
            prefix,
            settings,
            sim,
            conn,
            ch,
            topology,
            sim_stop,
        }
    }

    pub fn worker(&self) -> Worker {
        let api = TelnyxClient::new(&self.settings.telnyx).expect("client");
        Worker::new(self.settings.clone(), api, Metrics::new())
    }

    pub fn start(&self) -> RunningWorker {
        self.start_worker(self.worker())
    }

    pub fn start_worker(&self, worker: Worker) -> RunningWorker {
        let token = CancellationToken::new();
        let w = worker.clone();
        let t = token.clone();
        let handle = tokio::spawn(async move { w.run(t).await });
        RunningWorker {
            worker,
            token,
            handle,
        }
    }

    /// Publish a job (confirmed) with routing key `send`.
    pub async fn publish(&self, id: &str, body: &[u8]) {
        self.publish_with(body, job_props(id)).await;
    }

    pub async fn publish_with(&self, body: &[u8], props: BasicProperties) {
        let confirm = self
            .ch
            .basic_publish(
                self.settings.amqp.exchange.as_str().into(),
                self.settings.amqp.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "publish confirmed");
        assert!(confirm.take_message().is_none(), "publish routed");
    }

    /// Ready messages in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        send_worker::broker::queue_depth(&self.ch, queue)
            .await
            .expect("passive declare")
    }

    pub async fn dlq_depth(&self) -> u32 {
        self.depth(&self.settings.amqp.dead_letter_queue).await
    }

    pub async fn work_depth(&self) -> u32 {
        self.depth(&self.settings.amqp.queue).await
    }

    /// Ready messages across all retry tiers.
    pub async fn retry_depth(&self) -> u32 {
        let mut n = 0;
        for t in &self.topology.tiers {
            n += self.depth(&self.topology.tier_queue(t)).await;
        }
        n
    }

    /// Take every DLQ entry (acking it).
    pub async fn drain_dlq(&self) -> Vec<(BasicProperties, Vec<u8>)> {
        self.drain_queue(&self.settings.amqp.dead_letter_queue)
            .await
    }

    /// Delete everything this test declared.
    pub async fn cleanup(self) {
        self.topology.delete(&self.ch).await;
        let _ = self.conn.close(200, "test done".into()).await;
        self.sim_stop.cancel();
    }
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

// ---------------------------------------------------------------------------
// Child-process harness: the real `send-worker` binary, for tests whose
// subject is the process (signals, kill -9, halts, broker restarts).
// ---------------------------------------------------------------------------

/// The `send-worker` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_send-worker");

/// The `SEND_WORKER__*` variables that make `send-worker run` use `s`
/// (every scalar key; `pacing.numbers` is not passed). `http.listen` is
/// chosen by [`WorkerProcess::spawn`].
pub fn child_env(s: &Settings) -> Vec<(String, String)> {
    let a = &s.amqp;
    let t = &s.telnyx;
    let w = &s.worker;
    let r = &s.retry;
    let l = &s.limiter;
    let p = &s.pacing;
    let c = &s.circuit;
    let format = match s.log.format {
        send_worker::config::LogFormat::Auto => "auto",
        send_worker::config::LogFormat::Json => "json",
        send_worker::config::LogFormat::Text => "text",
    };
    [
        ("AMQP__URL", a.url.expose().to_owned()),
        ("AMQP__EXCHANGE", a.exchange.clone()),
        ("AMQP__ROUTING_KEY", a.routing_key.clone()),
        ("AMQP__QUEUE", a.queue.clone()),
        ("AMQP__DEAD_LETTER_QUEUE", a.dead_letter_queue.clone()),
        ("AMQP__DEAD_ROUTING_KEY", a.dead_routing_key.clone()),
        ("AMQP__RETRY_QUEUE_PREFIX", a.retry_queue_prefix.clone()),
        ("AMQP__EVENTS_EXCHANGE", a.events_exchange.clone()),
        ("AMQP__PREFETCH", a.prefetch.to_string()),
        ("AMQP__DELIVERY_LIMIT", a.delivery_limit.to_string()),
        ("AMQP__DECLARE_TOPOLOGY", a.declare_topology.to_string()),
        ("AMQP__RECONNECT_MAX_SECS", a.reconnect_max_secs.to_string()),
        ("TELNYX__BASE_URL", t.base_url.clone()),
        ("TELNYX__API_KEY", t.api_key.expose().to_owned()),
        (
            "TELNYX__CONNECT_TIMEOUT_MS",
            t.connect_timeout_ms.to_string(),
        ),
        (
            "TELNYX__REQUEST_TIMEOUT_MS",
            t.request_timeout_ms.to_string(),
        ),
        ("TELNYX__MAX_IN_FLIGHT", t.max_in_flight.to_string()),
        (
            "TELNYX__POOL_MAX_IDLE_PER_HOST",
            t.pool_max_idle_per_host.to_string(),
        ),
        ("WORKER__MAX_BODY_BYTES", w.max_body_bytes.to_string()),
        (
            "WORKER__SHUTDOWN_GRACE_SECS",
            w.shutdown_grace_secs.to_string(),
        ),
        ("WORKER__MAX_AGE_SECS", w.max_age_secs.to_string()),
        ("WORKER__HALT_PROBE_SECS", w.halt_probe_secs.to_string()),
        ("RETRY__BASE_MS", r.base_ms.to_string()),
        ("RETRY__FACTOR", r.factor.to_string()),
        ("RETRY__CAP_MS", r.cap_ms.to_string()),
        ("RETRY__MAX_ATTEMPTS", r.max_attempts.to_string()),
        (
            "RETRY__MAX_RATE_LIMIT_BOUNCES",
            r.max_rate_limit_bounces.to_string(),
        ),
        ("LIMITER__INITIAL_RATE", l.initial_rate.to_string()),
        ("LIMITER__MIN_RATE", l.min_rate.to_string()),
        ("LIMITER__MAX_RATE", l.max_rate.to_string()),
        ("LIMITER__BURST", l.burst.to_string()),
        (
            "PACING__ACCOUNT_SMS_PER_SECOND",
            p.account_sms_per_second.to_string(),
        ),
        (
            "PACING__ACCOUNT_MMS_PER_SECOND",
            p.account_mms_per_second.to_string(),
        ),
        (
            "PACING__LONG_CODE_PER_SECOND",
            p.long_code_per_second.to_string(),
        ),
        (
            "PACING__TOLL_FREE_PER_SECOND",
            p.toll_free_per_second.to_string(),
        ),
        (
            "PACING__SHORT_CODE_PER_SECOND",
            p.short_code_per_second.to_string(),
        ),
        (
            "PACING__ALPHANUMERIC_PER_SECOND",
            p.alphanumeric_per_second.to_string(),
        ),
        ("PACING__MAX_WAIT_MS", p.max_wait_ms.to_string()),
        ("CIRCUIT__ENABLED", c.enabled.to_string()),
        ("CIRCUIT__WINDOW_MS", c.window_ms.to_string()),
        ("CIRCUIT__MIN_FAILURES", c.min_failures.to_string()),
        ("CIRCUIT__FAILURE_RATIO", c.failure_ratio.to_string()),
        ("CIRCUIT__COOL_DOWN_MS", c.cool_down_ms.to_string()),
        ("CIRCUIT__MAX_COOL_DOWN_MS", c.max_cool_down_ms.to_string()),
        ("LOG__FORMAT", format.to_owned()),
        ("LOG__LEVEL", s.log.level.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("SEND_WORKER__{k}"), v))
    .collect()
}

/// A free loopback port (bound, read and released: the child binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `send-worker run` as a child process. Its stdout and stderr are captured
/// line by line; dropping it kills the process (SIGKILL) and reaps it, so no
/// test leaves a worker running, even when it panics.
pub struct WorkerProcess {
    pub name: String,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`: the ops endpoints.
    pub ops: String,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    http: reqwest::Client,
}

impl WorkerProcess {
    /// Start `send-worker run` configured by `settings` (JSON logs on a
    /// fresh loopback port), plus `extra` variables.
    pub fn spawn(name: &str, settings: &Settings, extra: &[(&str, &str)]) -> WorkerProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        // Nothing inherited may change what the child does: no other
        // SEND_WORKER__* value, no RUST_LOG, no proxy for loopback traffic.
        for (k, _) in std::env::vars() {
            if k.starts_with("SEND_WORKER__")
                || k == "TELNYX_API_KEY"
                || k == "RUST_LOG"
                || k.to_ascii_lowercase().ends_with("_proxy")
            {
                cmd.env_remove(k);
            }
        }
        cmd.envs(child_env(settings))
            .env("SEND_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SEND_WORKER__LOG__FORMAT", "json");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn send-worker run");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in out {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        WorkerProcess {
            name: name.to_owned(),
            pid: child.id(),
            ops: format!("http://127.0.0.1:{port}"),
            child,
            log,
            readers,
            http,
        }
    }

    /// Every line the child has written so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lines that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    fn tail(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Send a signal by name ("TERM", "INT", "KILL") with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid);
    }

    /// The exit status, if the child has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Wait (bounded) for the child to exit; then every line it wrote has
    /// been collected. `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                // The pipes close with the process: the readers end promptly.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panic (with the child's last log lines) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!(
                "worker {} exited unexpectedly ({status}); last log lines:\n{}",
                self.name,
                self.tail(40)
            );
        }
    }

    /// GET a path on the ops listener: status and body, or None if the
    /// request failed (not listening yet, or gone).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.ops))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().await.ok()?;
        Some((status, body))
    }

    /// `/readyz`: its status and JSON body.
    pub async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let (status, body) = self.get("/readyz").await?;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/readyz body is not JSON ({e}): {body}"));
        Some((status, json))
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        match self.get("/metrics").await? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    /// Wait until `/readyz` answers 200 (connected and consuming).
    pub async fn wait_ready(&mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Some((200, body)) = self.readyz().await {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} not ready after {timeout:?}; last log lines:\n{}",
                self.name,
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        match self.wait_exit(timeout).await {
            Some(status) => status,
            None => panic!(
                "worker {} still running {timeout:?} after SIGTERM; last log lines:\n{}",
                self.name,
                self.tail(40)
            ),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- last log lines of worker {} (pid {}) ---\n{}",
                self.name,
                self.pid,
                self.tail(60)
            );
        }
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

/// The `text` field of a job body, if it has one.
pub fn text_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("text")?
        .as_str()
        .map(str::to_owned)
}

impl TestEnv {
    /// Publish many jobs, then wait for all the confirms (much faster than
    /// one confirmed publish at a time).
    pub async fn publish_all(&self, jobs: Vec<(Vec<u8>, BasicProperties)>) {
        let mut confirms = Vec::with_capacity(jobs.len());
        for (body, props) in jobs {
            confirms.push(
                self.ch
                    .basic_publish(
                        self.settings.amqp.exchange.as_str().into(),
                        self.settings.amqp.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        props,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for c in confirms {
            let confirm = c.await.expect("confirm");
            assert!(confirm.is_ack(), "publish confirmed");
            assert!(confirm.take_message().is_none(), "publish routed");
        }
    }

    /// Take every ready message of `queue` (acking it).
    pub async fn drain_queue(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            out.push((m.delivery.properties.clone(), m.delivery.data.clone()));
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        out
    }

    /// Open a new connection and channel (after a broker restart closed them).
    pub async fn reconnect(&mut self) {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("reconnect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        self.conn = conn;
        self.ch = ch;
    }
}
