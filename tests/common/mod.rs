//! Shared test harness: a uniquely named topology on the real RabbitMQ, an
//! in-process Telnyx simulator, and helpers to publish, wait and inspect.
//! Every test calls [`TestEnv::cleanup`] at the end to delete what it declared.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
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
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
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
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(
                self.settings.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
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

    /// Delete everything this test declared.
    pub async fn cleanup(self) {
        for q in self.topology.queues() {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [&self.topology.exchange, &self.topology.events_exchange] {
            let _ = self
                .ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
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
