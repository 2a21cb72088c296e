//! [`TestEnv`]: a [`Sandbox`] with the settings tests want (fast retries, a
//! short drain, account pacing off, a generous first rate) and methods that
//! panic with a clear message instead of returning errors.

use std::ops::{Deref, DerefMut};

use lapin::BasicProperties;

use super::{Sandbox, amqp_url, job_props};
use crate::config::Settings;
use crate::secret::Secret;
use crate::sim::SimConfig;
use crate::worker::Worker;

pub struct TestEnv(Sandbox);

impl Deref for TestEnv {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.0
    }
}

impl DerefMut for TestEnv {
    fn deref_mut(&mut self) -> &mut Sandbox {
        &mut self.0
    }
}

/// Give a delivery back to its queue (nack, requeue).
pub async fn give_back(delivery: &lapin::message::Delivery) {
    delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
}

/// The settings tests start from: the shipped defaults, with fast retries, a
/// short drain, account pacing off and a generous first rate.
pub fn test_settings() -> Settings {
    let mut s = Settings::load_with_env(None, Vec::<(String, String)>::new())
        .expect("the shipped defaults load");
    s.amqp.url = Secret::new(amqp_url());
    s.amqp.reconnect_max_secs = 2;
    s.telnyx.request_timeout_ms = 5_000;
    s.retry.base_ms = 50;
    s.retry.cap_ms = 400;
    s.worker.shutdown_grace_secs = 10;
    s.pacing.account_sms_per_second = 0.0;
    s.pacing.account_mms_per_second = 0.0;
    s.limiter.initial_rate = 500.0;
    s.http.listen = "127.0.0.1:0".into();
    s
}

impl TestEnv {
    /// A fresh topology named after `name`, a simulator with `sim`, and
    /// [`test_settings`] pointing at both; `tweak` adjusts the rest.
    pub async fn new(name: &str, sim: SimConfig, tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        let sandbox = Sandbox::open(&format!("test-{name}"), test_settings(), sim, tweak)
            .await
            .expect("RabbitMQ must be running on 127.0.0.1:5672 (rabbitmq-server -detached)");
        TestEnv(sandbox)
    }

    pub fn worker(&self) -> Worker {
        self.0.worker().expect("a worker")
    }

    pub fn start(&self) -> super::RunningWorker {
        self.0.start_worker(self.worker())
    }

    /// Publish a job (confirmed) with routing key `send`.
    pub async fn publish(&self, id: &str, body: &[u8]) {
        self.publish_with(body, job_props(id)).await;
    }

    pub async fn publish_with(&self, body: &[u8], props: BasicProperties) {
        self.publish_all(vec![(body.to_vec(), props)]).await;
    }

    /// Publish many jobs, then wait for all the confirms.
    pub async fn publish_all(&self, jobs: Vec<(Vec<u8>, BasicProperties)>) {
        self.0
            .publish_all(jobs)
            .await
            .expect("every publish is confirmed and routed");
    }

    /// Ready messages in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.0.depth(queue).await.expect("passive declare")
    }

    pub async fn dlq_depth(&self) -> u32 {
        self.depth(&self.settings.amqp.dead_letter_queue).await
    }

    pub async fn work_depth(&self) -> u32 {
        self.depth(&self.settings.amqp.queue).await
    }

    /// Ready messages across all retry tiers.
    pub async fn retry_depth(&self) -> u32 {
        self.0.retry_depth().await.expect("passive declare")
    }

    /// Take every DLQ entry (acking it).
    pub async fn drain_dlq(&self) -> Vec<(BasicProperties, Vec<u8>)> {
        self.drain_queue(&self.settings.amqp.dead_letter_queue)
            .await
    }

    /// Take every ready message of `queue` (acking it).
    pub async fn drain_queue(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        self.0.drain_queue(queue).await.expect("drain the queue")
    }

    /// A server-named, exclusive queue bound to the events exchange with
    /// `routing_key` (e.g. "sent", "message.#"): it collects the events
    /// published from now on, and goes away with the connection.
    pub async fn events_queue(&self, routing_key: &str) -> String {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let q = self
            .ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare an events queue");
        self.ch
            .queue_bind(
                q.name().clone(),
                self.settings.amqp.events_exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the events queue");
        q.name().to_string()
    }

    /// Take one ready message of `queue` and give it back (nack, requeue),
    /// as a worker crash would: a redelivery. False if none was ready.
    pub async fn redeliver_one(&self, queue: &str) -> bool {
        use lapin::options::BasicGetOptions;
        let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        else {
            return false;
        };
        give_back(&m.delivery).await;
        true
    }

    /// Open a new connection and channel (after a broker restart closed them).
    pub async fn reconnect(&mut self) {
        self.0.reconnect().await.expect("reconnect to RabbitMQ");
    }

    /// Delete everything this test declared.
    pub async fn cleanup(self) {
        self.0.cleanup().await;
    }
}
