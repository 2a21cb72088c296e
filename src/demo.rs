//! `send-worker demo`: a worker against an in-process simulator and the local
//! RabbitMQ. It publishes a mix of good, bad and flaky jobs, waits until every
//! one is accounted for, prints a summary, and removes what it declared.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerError};
use crate::config::Settings;
use crate::headers;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::simulator::{self, SimConfig};
use crate::telnyx::TelnyxClient;
use crate::worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("could not start the simulator: {0}")]
    Simulator(#[from] std::io::Error),
    #[error("HTTP client: {0}")]
    Client(#[from] crate::telnyx::ClientError),
    #[error("the demo did not finish within {0:?}: {1}")]
    Timeout(Duration, String),
}

/// One kind of sample job and what should become of it.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    weight: usize,
    expect_sent: bool,
}

const KINDS: [Kind; 11] = [
    Kind {
        name: "valid SMS",
        weight: 60,
        expect_sent: true,
    },
    Kind {
        name: "valid MMS",
        weight: 5,
        expect_sent: true,
    },
    Kind {
        name: "503 twice, then ok",
        weight: 5,
        expect_sent: true,
    },
    Kind {
        name: "429, then ok",
        weight: 3,
        expect_sent: true,
    },
    Kind {
        name: "40318 queue full, then ok",
        weight: 3,
        expect_sent: true,
    },
    Kind {
        name: "403 blocked (permanent)",
        weight: 5,
        expect_sent: false,
    },
    Kind {
        name: "422 invalid to (permanent)",
        weight: 4,
        expect_sent: false,
    },
    Kind {
        name: "500 forever (exhausts attempts)",
        weight: 3,
        expect_sent: false,
    },
    Kind {
        name: "invalid: bad E.164",
        weight: 5,
        expect_sent: false,
    },
    Kind {
        name: "invalid: text too long",
        weight: 3,
        expect_sent: false,
    },
    Kind {
        name: "malformed: not JSON",
        weight: 4,
        expect_sent: false,
    },
];

fn body_for(kind: usize, i: usize) -> Vec<u8> {
    let text = format!("demo job {i}");
    let sms =
        |to: &str| serde_json::json!({"from": "+15551234567", "to": to, "text": text}).to_string();
    let s = match kind {
        0 => sms(&format!("+1555{:07}", 2_000_000 + i)),
        1 => serde_json::json!({"from": "+15551234567", "to": "+15559876543", "text": text,
            "media_urls": ["https://example.com/cat.jpg"], "subject": "hi"})
        .to_string(),
        2 => sms("+19990000503"),
        3 => sms("+19990000429"),
        4 => sms("+19990000318"),
        5 => sms("+19990000403"),
        6 => sms("+19990000422"),
        7 => sms("+19990000500"),
        8 => serde_json::json!({"from": "+15551234567", "to": "555-0100", "text": text}).to_string(),
        9 => serde_json::json!({"from": "+15551234567", "to": "+15559876543", "text": "x".repeat(1600)})
            .to_string(),
        _ => format!("{{not json {i}"),
    };
    s.into_bytes()
}

#[derive(Debug, Default)]
pub struct DemoReport {
    pub published: usize,
    pub expected_sent: usize,
    pub expected_dead: usize,
    pub sent: u64,
    pub api_requests: u64,
    pub retries_scheduled: u64,
    pub dead_by_reason: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub per_kind: Vec<(String, usize, bool)>,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "send-worker demo: {} jobs in {:.1} s",
            self.published,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  published by kind:")?;
        for (name, n, sent) in &self.per_kind {
            writeln!(
                f,
                "    {n:>5}  {name}  → {}",
                if *sent { "sent" } else { "DLQ" }
            )?;
        }
        writeln!(f, "  results:")?;
        writeln!(
            f,
            "    sent:            {:>5} (expected {})",
            self.sent, self.expected_sent
        )?;
        writeln!(
            f,
            "    retries:         {:>5} scheduled through the broker",
            self.retries_scheduled
        )?;
        let dead: u64 = self.dead_by_reason.values().sum();
        writeln!(
            f,
            "    dead-lettered:   {dead:>5} (expected {})",
            self.expected_dead
        )?;
        for (reason, n) in &self.dead_by_reason {
            writeln!(f, "      {reason:<20} {n:>5}")?;
        }
        writeln!(f, "    API requests:    {:>5}", self.api_requests)?;
        let lost = self.published as i64 - self.sent as i64 - dead as i64;
        write!(f, "  unaccounted:       {lost:>5}")
    }
}

/// Run the demo with `jobs` sample jobs against the broker in `settings`.
pub async fn run(base: Settings, jobs: usize, timeout: Duration) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    // Fail fast, with the URL and how to start a broker, if there is none.
    let conn = broker::connect(&base.amqp.url, "send-worker-demo").await?;

    let shutdown = CancellationToken::new();
    let sim = simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            api_key: Some("demo-key".into()),
            ..SimConfig::default()
        },
        shutdown.clone(),
    )
    .await?;

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("demo-{}", &tag[..8]);
    let mut settings = base.clone();
    settings.amqp.exchange = format!("{prefix}.messages");
    settings.amqp.queue = format!("{prefix}.messages.send");
    settings.amqp.dead_letter_queue = format!("{prefix}.messages.send.dead");
    settings.amqp.retry_queue_prefix = format!("{prefix}.messages.send.retry");
    settings.amqp.events_exchange = format!("{prefix}.messages.events");
    settings.telnyx.base_url = sim.base_url();
    settings.telnyx.api_key = Secret::new("demo-key");
    settings.retry.base_ms = 200;
    settings.retry.cap_ms = 2_000;
    settings.worker.shutdown_grace_secs = 5;

    let metrics = Metrics::new();
    let api = TelnyxClient::new(&settings.telnyx)?;
    let worker = Worker::new(settings.clone(), api, metrics.clone());
    let topology = worker.topology();
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;

    let total_weight: usize = KINDS.iter().map(|k| k.weight).sum();
    let mut report = DemoReport {
        published: jobs,
        ..DemoReport::default()
    };
    let mut per_kind = vec![0usize; KINDS.len()];
    for i in 0..jobs {
        let mut slot = (i * 7919) % total_weight;
        let mut kind = 0;
        for (k, def) in KINDS.iter().enumerate() {
            if slot < def.weight {
                kind = k;
                break;
            }
            slot -= def.weight;
        }
        per_kind[kind] += 1;
        if KINDS[kind].expect_sent {
            report.expected_sent += 1;
        } else {
            report.expected_dead += 1;
        }
        let props = BasicProperties::default()
            .with_message_id(format!("{prefix}-{i}").into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
        ch.basic_publish(
            settings.amqp.exchange.as_str().into(),
            settings.amqp.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &body_for(kind, i),
            props,
        )
        .await?
        .await?;
    }
    report.per_kind = KINDS
        .iter()
        .zip(&per_kind)
        .map(|(k, n)| (k.name.to_owned(), *n, k.expect_sent))
        .collect();

    let run_token = CancellationToken::new();
    let w = worker.clone();
    let t = run_token.clone();
    let handle = tokio::spawn(async move { w.run(t).await });

    let deadline = Instant::now() + timeout;
    loop {
        let accepted = sim.stats().accepted;
        let dead = broker::queue_depth(&ch, &settings.amqp.dead_letter_queue).await?;
        if accepted as usize >= report.expected_sent && dead as usize >= report.expected_dead {
            break;
        }
        if Instant::now() > deadline {
            run_token.cancel();
            let _ = handle.await;
            topology.delete(&ch).await;
            return Err(DemoError::Timeout(
                timeout,
                format!(
                    "sent {accepted}/{}, dead-lettered {dead}/{}",
                    report.expected_sent, report.expected_dead
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run_token.cancel();
    let _ = handle.await;

    // Read the DLQ's reasons.
    while let Some(m) = ch
        .basic_get(
            settings.amqp.dead_letter_queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let reason = headers::get_string(&m.delivery.properties, headers::ERROR_REASON)
            .unwrap_or_else(|| "(none)".into());
        *report.dead_by_reason.entry(reason).or_default() += 1;
        m.delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let stats = sim.stats();
    report.sent = stats.accepted;
    report.api_requests = stats.requests;
    report.retries_scheduled = metrics
        .outcomes
        .get_metric_with_label_values(&["retried", "transient"])
        .map_or(0, |c| c.get())
        + metrics
            .outcomes
            .get_metric_with_label_values(&["retried", "rate_limited"])
            .map_or(0, |c| c.get());
    topology.delete(&ch).await;
    let _ = conn.close(200, "demo done".into()).await;
    shutdown.cancel();
    report.elapsed = started.elapsed();
    Ok(report)
}
