//! The runner: connects, declares the topology, consumes, spawns one task
//! per delivery, and supervises the whole thing. It reconnects with backoff
//! when the broker goes away (or a job's settlement was not taken), stops
//! consuming on an account-wide halt (and probes until the account works
//! again, [`halt`]), and drains on shutdown within a bounded time. A job
//! task that panics is still settled ([`Pipeline::settle_panic`]). What
//! happens to one job is the pipeline's business, not the runner's.

mod halt;

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::amqp::{self, BrokerError, Outbox, Publisher, Topology};
use crate::config::Settings;
use crate::limiter::RateControl;
use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;
use crate::pipeline::circuit::CircuitBreaker;
use crate::pipeline::ledger::Ledger;
use crate::pipeline::{JobSignals, Pipeline, Progress};
use crate::retry::Backoff;
use crate::store::{Store, StoreError};
use crate::telnyx::TelnyxClient;

/// The parts of a worker that outlive one broker session.
#[derive(Debug, Clone)]
pub struct Worker {
    pub settings: Arc<Settings>,
    pub api: TelnyxClient,
    pub metrics: Metrics,
    pub state: Arc<WorkerState>,
    pub limiter: Arc<RateControl>,
    pub circuit: Arc<CircuitBreaker>,
    pub halt_probe_interval: Duration,
    pub outbox: Outbox,
    pub ledger: Arc<Ledger>,
    /// The process's one Redis client (None without `redis.url`).
    pub redis: Option<crate::redis::Redis>,
    pub store: Store,
    fail_open_logged: Arc<std::sync::atomic::AtomicBool>,
}

/// After the drain's grace period, abandoned requests get this long to
/// unwind before their tasks are aborted.
const ABORT_AFTER: Duration = Duration::from_secs(2);

/// The reconnect schedule: the delay doubles from 0.5 s and each wait is
/// drawn at random between that delay and twice it, so replicas that lost
/// the same broker come back spread out instead of in lockstep. Every wait is
/// below `max_secs` (`amqp.reconnect_max_secs`).
fn reconnect_backoff(max_secs: u64) -> backon::ExponentialBuilder {
    let max = Duration::from_secs(max_secs.max(1));
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500).min(max / 2))
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

enum SessionEnd {
    Shutdown,
    Halted,
}

impl Worker {
    /// A worker for `settings`. Fails only if the job store cannot be built
    /// (an invalid `redis.url`, which configuration validation rejects first).
    pub fn new(
        settings: Settings,
        api: TelnyxClient,
        metrics: Metrics,
    ) -> Result<Self, StoreError> {
        let state = Arc::new(WorkerState::new(metrics.clone()));
        let redis = crate::redis::Redis::from_settings(&settings.redis)?;
        let limiter = Arc::new(RateControl::new(
            &settings.limiter,
            &settings.pacing,
            metrics.clone(),
            redis.as_ref(),
            state.clone(),
        ));
        let circuit = Arc::new(CircuitBreaker::new(settings.circuit.clone(), state.clone()));
        let halt_probe_interval = Duration::from_secs(settings.worker.halt_probe_secs);
        let outbox = Outbox::new(!settings.amqp.events_exchange.is_empty(), metrics.clone());
        let store = Store::from_settings(&settings, redis.as_ref(), metrics.clone())?;
        Ok(Self {
            settings: Arc::new(settings),
            api,
            metrics,
            state,
            limiter,
            circuit,
            halt_probe_interval,
            outbox,
            ledger: Arc::new(Ledger::new()),
            redis,
            store,
            fail_open_logged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    pub fn topology(&self) -> Topology {
        Topology::from_settings(&self.settings)
    }

    fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.amqp.publish_timeout_ms)
    }

    /// Run until `shutdown` is cancelled. Broker failures are retried forever
    /// (with the reason logged each time); only shutdown ends it. Result
    /// events are published by a pump of their own for as long as this runs
    /// (and a few seconds more, to flush).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let pump_stop = CancellationToken::new();
        let pump = {
            let outbox = self.outbox.clone();
            let a = &self.settings.amqp;
            let (url, exchange, timeout) = (
                a.url.clone(),
                a.events_exchange.clone(),
                self.publish_timeout(),
            );
            let stop = pump_stop.clone();
            tokio::spawn(async move { outbox.pump(url, exchange, timeout, stop).await })
        };
        self.limiter.start(pump_stop.clone());
        let result = self.supervise(&shutdown).await;
        pump_stop.cancel();
        let _ = pump.await;
        result
    }

    async fn supervise(&self, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let backoff = reconnect_backoff(self.settings.amqp.reconnect_max_secs);
        let mut delays = backoff.build();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.session(shutdown).await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Halted) => {
                    delays = backoff.build();
                    if !self.wait_out_halt(shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.state.set_connected(false);
                    self.state.set_consuming(false);
                    // The schedule never ends (no max_times); the 1 s is a fallback.
                    let delay = delays.next().unwrap_or(Duration::from_secs(1));
                    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    error!(error = %e, retry_in_ms, "broker session failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<(lapin::Connection, Publisher), BrokerError> {
        // Named after the queue, so an operator (or a test) can tell the
        // consumers of one queue apart in RabbitMQ's connection list.
        let name = format!("send-worker {}", self.settings.amqp.queue);
        let conn = amqp::connect(&self.settings.amqp.url, &name).await?;
        if self.settings.amqp.declare_topology {
            let ch = conn.create_channel().await?;
            self.topology().declare(&ch).await?;
            let _ = ch.close(200, "declared".into()).await;
        }
        let publisher = Publisher::new(&conn, self.publish_timeout()).await?;
        Ok((conn, publisher))
    }

    fn pipeline(&self, publisher: Publisher) -> Pipeline {
        let w = &self.settings.worker;
        Pipeline {
            topology: self.topology(),
            backoff: Backoff::for_settings(&self.settings),
            api: self.api.clone(),
            limiter: self.limiter.clone(),
            circuit: self.circuit.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            publisher,
            outbox: self.outbox.clone(),
            ledger: self.ledger.clone(),
            store: self.store.clone(),
            lease: Duration::from_millis(
                self.settings
                    .telnyx
                    .request_timeout_ms
                    .saturating_add(self.settings.dedupe.lease_margin_ms),
            ),
            on_unknown: self.settings.dedupe.on_unknown,
            fail_open: self.settings.dedupe.fail_open,
            fail_open_logged: self.fail_open_logged.clone(),
            in_flight: Arc::new(Semaphore::new(self.settings.telnyx.max_in_flight)),
            max_body_bytes: w.max_body_bytes,
            max_age: (w.max_age_secs > 0).then(|| Duration::from_secs(w.max_age_secs)),
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        let (conn, publisher) = self.connect().await?;
        self.state.set_connected(true);
        let pipeline = Arc::new(self.pipeline(publisher));
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.settings.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("send-worker-{}", uuid::Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(
                self.settings.amqp.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.state.set_consuming(true);
        info!(queue = %self.settings.amqp.queue, prefetch = self.settings.amqp.prefetch, "consuming");

        let signals = JobSignals::new(shutdown);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let end: Result<SessionEnd, BrokerError> = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(SessionEnd::Shutdown),
                _ = signals.halt.cancelled() => break Ok(SessionEnd::Halted),
                _ = signals.fault.cancelled() => break Err(BrokerError::Settlement),
                // Reap finished tasks so the set stays as small as the prefetch.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let p = pipeline.clone();
                        let s = signals.clone();
                        tasks.spawn(async move { run_job(&p, delivery, &s).await });
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(BrokerError::Amqp(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed, "consumer stream ended").into())),
                },
            }
        };

        // Stop taking deliveries, leave what has not started for the channel
        // close, and give the requests in flight the grace period to finish.
        // After it they are abandoned, and whatever is still running is
        // aborted: the drain is bounded, and every job not settled by then
        // is returned by the broker when the channel closes.
        self.state.set_consuming(false);
        if matches!(end, Ok(SessionEnd::Shutdown)) {
            self.state.set_draining(true);
            info!("draining: no new jobs; waiting for requests in flight");
        }
        signals.cancel.cancel();
        let grace = self.settings.shutdown_grace();
        if tokio::time::timeout(grace, join_all(&mut tasks))
            .await
            .is_err()
        {
            warn!(
                grace_s = grace.as_secs(),
                in_flight = tasks.len(),
                "requests still in flight after the grace period: abandoning them; the broker \
                 returns their jobs"
            );
            signals.hard_stop.cancel();
            if tokio::time::timeout(ABORT_AFTER, join_all(&mut tasks))
                .await
                .is_err()
            {
                tasks.abort_all();
                join_all(&mut tasks).await;
            }
        }
        // Cancel the consumer only once the jobs in flight are settled: on a
        // quorum queue, acks sent after basic.cancel and just before the
        // channel closes can be dropped by RabbitMQ (rabbitmq-server#10327),
        // which returns those jobs to the queue to be sent a second time.
        // Deliveries that arrive meanwhile are never started; the close below
        // returns them.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // Closing the channel returns every delivery still unacked (prefetched,
        // never started) to the queue.
        let _ = channel.close(200, "bye".into()).await;
        let _ = conn.close(200, "bye".into()).await;
        self.state.set_connected(false);
        self.state.set_draining(false);
        end
    }
}

/// Wait for every task of the set.
async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// One job's task: the pipeline, with a panic caught and the delivery still
/// settled (a panicking task must never hold its delivery unacked).
async fn run_job(pipeline: &Pipeline, delivery: lapin::message::Delivery, signals: &JobSignals) {
    let progress = Progress::default();
    let handled = std::panic::AssertUnwindSafe(pipeline.handle(&delivery, signals, &progress))
        .catch_unwind()
        .await;
    if let Err(panic) = handled {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        pipeline
            .settle_panic(&delivery, &why, signals, &progress)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::reconnect_backoff;
    use backon::BackoffBuilder;
    use std::time::Duration;

    #[test]
    fn reconnect_delays_grow_are_jittered_and_stay_under_the_cap() {
        let schedule = |n| reconnect_backoff(30).build().take(n).collect::<Vec<_>>();
        let a = schedule(40);
        assert_eq!(a.len(), 40, "the schedule never ends");
        for (i, d) in a.iter().enumerate() {
            let nominal = (0.5 * 2f64.powi(i as i32)).min(15.0);
            let s = d.as_secs_f64();
            assert!(s >= nominal && s <= 2.0 * nominal, "delay {i}: {d:?}");
            assert!(
                *d <= Duration::from_secs(30),
                "delay {i}: {d:?} over the cap"
            );
        }
        // Replicas draw their own waits: 40 draws from two schedules are not
        // all equal (each is uniform over an interval as wide as its base).
        let b = schedule(40);
        assert_ne!(a, b, "two schedules are in lockstep");
    }
}
