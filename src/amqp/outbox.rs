//! Result events (`sent`, `dead_lettered`): published after the job is acked,
//! on a connection of their own, so an event never delays an ack and a broker
//! that blocks publishers (a resource alarm) cannot hold acks back.
//!
//! Best-effort by design: a lost event never causes a re-send. Events wait
//! in a bounded in-memory queue; the pump publishes them in batches with
//! publisher confirms (so losses are counted, not guessed), reconnecting
//! with backoff when the broker goes away. When the queue is full, new
//! events are dropped and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ops::metrics::Metrics;
use crate::secret::Secret;

/// Events waiting to be published, at most.
pub const CAPACITY: usize = 65_536;
/// Events published per confirm round trip, at most.
const BATCH: usize = 512;
/// On shutdown, queued events get this long to be published.
const FLUSH: Duration = Duration::from_secs(3);

/// One event to publish.
#[derive(Debug)]
pub struct Event {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Outbox {
    tx: Option<mpsc::Sender<Event>>,
    rx: Arc<Mutex<Option<mpsc::Receiver<Event>>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("enabled", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox; `enabled` false makes [`Outbox::send`] a no-op (no events
    /// exchange configured).
    pub fn new(enabled: bool, metrics: Metrics) -> Self {
        let (tx, rx) = if enabled {
            let (tx, rx) = mpsc::channel(CAPACITY);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            metrics,
        }
    }

    /// Queue an event; dropped (and counted) when the queue is full.
    pub fn send(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            self.metrics.events.with_label_values(&["dropped"]).inc();
        }
    }

    /// Publish queued events to `exchange` until `stop`, then flush for a
    /// few seconds. Runs at most once at a time (a second call while one
    /// runs returns at once).
    pub async fn pump(
        &self,
        url: Secret,
        exchange: String,
        publish_timeout: Duration,
        stop: CancellationToken,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut delay = Duration::from_millis(200);
        let mut flush_until: Option<tokio::time::Instant> = None;
        'session: loop {
            if stop.is_cancelled() && rx.is_empty() {
                break;
            }
            let (conn, channel) = match open(&url).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "events: cannot reach the broker; retrying");
                    if stop.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            delay = Duration::from_millis(200);
            loop {
                let first = if stop.is_cancelled() {
                    // Stopping: publish what is queued (for at most FLUSH), then end.
                    let until =
                        *flush_until.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH);
                    if tokio::time::Instant::now() >= until {
                        break 'session;
                    }
                    match rx.try_recv() {
                        Ok(e) => e,
                        Err(_) => break 'session,
                    }
                } else {
                    tokio::select! {
                        e = rx.recv() => match e { Some(e) => e, None => break 'session },
                        _ = stop.cancelled() => continue,
                    }
                };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let n = batch.len() as u64;
                let mut confirms = Vec::with_capacity(batch.len());
                let mut broken = false;
                for e in batch {
                    match channel
                        .basic_publish(
                            ShortString::from(exchange.as_str()),
                            ShortString::from(e.routing_key.as_str()),
                            BasicPublishOptions::default(),
                            &e.body,
                            e.properties,
                        )
                        .await
                    {
                        Ok(c) => confirms.push(c),
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                let sent = confirms.len() as u64;
                let mut acked = 0u64;
                let wait = futures_util::future::join_all(confirms);
                if let Ok(results) = tokio::time::timeout(publish_timeout, wait).await {
                    acked = results
                        .iter()
                        .filter(|r| matches!(r, Ok(c) if c.is_ack()))
                        .count() as u64;
                } else {
                    broken = true;
                }
                self.metrics
                    .events
                    .with_label_values(&["published"])
                    .inc_by(acked);
                self.metrics
                    .events
                    .with_label_values(&["failed"])
                    .inc_by(n - acked.min(n));
                debug!(n, sent, acked, "events published");
                if broken {
                    warn!("events: the broker connection failed; reconnecting");
                    let _ = conn.close(200, "reconnect".into()).await;
                    continue 'session;
                }
            }
        }
        *self.rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
    }
}

/// A connection of its own, and a channel in confirm mode on it.
async fn open(url: &Secret) -> Result<(lapin::Connection, lapin::Channel), String> {
    let conn = super::connect(url, "send-worker-events")
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, channel))
}
