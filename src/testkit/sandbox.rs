//! A sandbox: an in-process Telnyx simulator, and a topology on the real
//! RabbitMQ whose names carry a unique prefix, with a confirm-mode channel to
//! publish on and inspect with. Fallible, for the demo and the benchmarks;
//! [`super::TestEnv`] is the same thing for tests.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{API_KEY, KitError};
use crate::amqp::{self, BrokerError, PublishError, Topology};
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::secret::Secret;
use crate::sim::{self, SimConfig, SimHandle};
use crate::telnyx::TelnyxClient;
use crate::worker::Worker;

pub struct Sandbox {
    /// `<name>-<8 hex>`: the prefix of every queue and exchange name.
    pub prefix: String,
    pub settings: Settings,
    pub sim: SimHandle,
    pub conn: Connection,
    /// A channel in confirm mode.
    pub ch: Channel,
    pub topology: Topology,
    sim_stop: CancellationToken,
}

/// A [`Worker`] running in this process.
pub struct RunningWorker {
    pub worker: Worker,
    pub token: CancellationToken,
    pub handle: JoinHandle<Result<(), BrokerError>>,
}

impl RunningWorker {
    /// Graceful stop: cancel and wait (bounded) for the drain.
    pub async fn stop(self) -> Worker {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.handle).await;
        self.worker
    }
}

/// Settings for a sandbox named `prefix`: `base`, with the names (queues,
/// exchanges, Redis keys) prefixed, the simulator as the API and the kit's
/// key.
fn sandboxed(mut s: Settings, prefix: &str, sim: &SimHandle) -> Settings {
    let a = &mut s.amqp;
    a.exchange = format!("{prefix}.messages");
    a.queue = format!("{prefix}.messages.send");
    a.dead_letter_queue = format!("{prefix}.messages.send.dead");
    a.retry_queue_prefix = format!("{prefix}.messages.send.retry");
    a.events_exchange = format!("{prefix}.messages.events");
    // Redis keys too: a job id reused by a later sandbox (a benchmark's
    // "job-0") must not find an earlier sandbox's dedupe record.
    s.redis.key_prefix = format!("send-worker-test:{prefix}");
    s.telnyx.base_url = sim.base_url();
    s.telnyx.api_key = Secret::new(API_KEY);
    s
}

impl Sandbox {
    /// A benchmark's sandbox: the shipped defaults with the local broker,
    /// account pacing off and an ephemeral ops port, then `vars`
    /// (`SEND_WORKER__…` pairs), then the environment's own `SEND_WORKER__*`
    /// variables on top, for experiments (e.g. SEND_WORKER__AMQP__PREFETCH).
    pub async fn for_bench(
        name: &str,
        vars: &[(&str, &str)],
        sim: SimConfig,
    ) -> Result<Sandbox, KitError> {
        let defaults = [
            ("SEND_WORKER__AMQP__URL", super::amqp_url()),
            ("SEND_WORKER__PACING__ACCOUNT_SMS_PER_SECOND", "0".into()),
            ("SEND_WORKER__PACING__ACCOUNT_MMS_PER_SECOND", "0".into()),
            ("SEND_WORKER__HTTP__LISTEN", "127.0.0.1:0".into()),
        ];
        let all = defaults
            .into_iter()
            .chain(vars.iter().map(|(k, v)| (*k, (*v).to_owned())))
            .map(|(k, v)| (k.to_owned(), v))
            .chain(std::env::vars().filter(|(k, _)| k.starts_with("SEND_WORKER__")))
            .collect::<Vec<_>>();
        let base = Settings::load_with_env(None, all)?;
        Sandbox::open(&format!("bench-{name}"), base, sim, |_| {}).await
    }

    /// Start a simulator with `sim`, and declare a topology named after
    /// `name` with `base`'s settings (names prefixed, the simulator as the
    /// API), adjusted by `tweak` before anything is declared.
    pub async fn open(
        name: &str,
        base: Settings,
        sim: SimConfig,
        tweak: impl FnOnce(&mut Settings),
    ) -> Result<Sandbox, KitError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{name}-{}", &id[..8]);
        let conn = amqp::connect(&base.amqp.url, "send-worker-testkit").await?;
        let sim_stop = CancellationToken::new();
        let sim = sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim, sim_stop.clone()).await?;
        let mut settings = sandboxed(base, &prefix, &sim);
        tweak(&mut settings);
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let topology = Topology::from_settings(&settings);
        topology.declare(&ch).await?;
        Ok(Sandbox {
            prefix,
            settings,
            sim,
            conn,
            ch,
            topology,
            sim_stop,
        })
    }

    /// A worker with this sandbox's settings and fresh metrics.
    pub fn worker(&self) -> Result<Worker, KitError> {
        let api = TelnyxClient::new(&self.settings.telnyx)?;
        Ok(Worker::new(self.settings.clone(), api, Metrics::new())?)
    }

    /// Run `worker` in this process until [`RunningWorker::stop`].
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

    /// Publish jobs to the work exchange (mandatory), then wait for every
    /// confirm (much faster than one confirmed publish at a time).
    pub async fn publish_all(
        &self,
        jobs: impl IntoIterator<Item = (Vec<u8>, BasicProperties)>,
    ) -> Result<(), KitError> {
        let a = &self.settings.amqp;
        let mut confirms = Vec::new();
        for (body, props) in jobs {
            confirms.push(
                self.ch
                    .basic_publish(
                        a.exchange.as_str().into(),
                        a.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        props,
                    )
                    .await?,
            );
        }
        for c in confirms {
            let confirm = c.await?;
            if !confirm.is_ack() {
                return Err(PublishError::Nacked.into());
            }
            if let Some(m) = confirm.take_message() {
                return Err(PublishError::Returned(m.reply_text.to_string()).into());
            }
        }
        Ok(())
    }

    /// Ready messages in `queue`.
    pub async fn depth(&self, queue: &str) -> Result<u32, KitError> {
        Ok(amqp::queue_depth(&self.ch, queue).await?)
    }

    /// Ready messages across all retry tiers.
    pub async fn retry_depth(&self) -> Result<u32, KitError> {
        let mut n = 0;
        for t in &self.topology.tiers {
            n += self.depth(&self.topology.tier_queue(t)).await?;
        }
        Ok(n)
    }

    /// Take every ready message of `queue` (acking it).
    pub async fn drain_queue(
        &self,
        queue: &str,
    ) -> Result<Vec<(BasicProperties, Vec<u8>)>, KitError> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
            out.push((m.delivery.properties, m.delivery.data));
        }
        Ok(out)
    }

    /// Open a new connection and channel (after a broker restart closed them).
    pub async fn reconnect(&mut self) -> Result<(), KitError> {
        let conn = amqp::connect(&self.settings.amqp.url, "send-worker-testkit").await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.conn = conn;
        self.ch = ch;
        Ok(())
    }

    /// Delete everything this sandbox declared and stop its simulator.
    pub async fn cleanup(self) {
        self.topology.delete(&self.ch).await;
        let _ = self.conn.close(200, "sandbox done".into()).await;
        self.sim_stop.cancel();
    }
}
