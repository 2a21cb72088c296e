//! `send-worker demo`: a worker against an in-process simulator and the local
//! RabbitMQ. It publishes a mix of good, bad and flaky jobs, waits until every
//! one is accounted for, prints a summary, and removes what it declared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::amqp::headers;
use crate::config::Settings;
use crate::sim::SimConfig;
use crate::testkit::{KitError, Sandbox, job_props};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Kit(#[from] KitError),
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

/// `send-worker demo`: the demo's output is its summary, so per-job logs
/// stay quiet unless `SEND_WORKER__LOG__LEVEL` asks for them.
pub async fn command(mut settings: Settings, jobs: usize, timeout_secs: u64) -> anyhow::Result<()> {
    if std::env::var_os("SEND_WORKER__LOG__LEVEL").is_none() {
        settings.log.level = "error".into();
    }
    super::init_logging(Some(&settings));
    let report = run(settings, jobs, Duration::from_secs(timeout_secs)).await?;
    println!("{report}");
    Ok(())
}

/// Run the demo with `jobs` sample jobs against the broker in `settings`.
pub async fn run(base: Settings, jobs: usize, timeout: Duration) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let sandbox = Sandbox::open("demo", base, SimConfig::default(), |s| {
        s.retry.base_ms = 200;
        s.retry.cap_ms = 2_000;
        s.worker.shutdown_grace_secs = 5;
    })
    .await?;
    let result = drive(&sandbox, jobs, timeout).await;
    sandbox.cleanup().await;
    let mut report = result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Publish the sample jobs, run a worker until every one is accounted for,
/// and read the DLQ's reasons.
async fn drive(sandbox: &Sandbox, jobs: usize, timeout: Duration) -> Result<DemoReport, DemoError> {
    let total_weight: usize = KINDS.iter().map(|k| k.weight).sum();
    let mut report = DemoReport {
        published: jobs,
        ..DemoReport::default()
    };
    let mut per_kind = vec![0usize; KINDS.len()];
    let mut batch = Vec::with_capacity(jobs);
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
        batch.push((
            body_for(kind, i),
            job_props(&format!("{}-{i}", sandbox.prefix)),
        ));
    }
    sandbox.publish_all(batch).await?;
    report.per_kind = KINDS
        .iter()
        .zip(&per_kind)
        .map(|(k, n)| (k.name.to_owned(), *n, k.expect_sent))
        .collect();

    let running = sandbox.start_worker(sandbox.worker()?);
    let dlq = &sandbox.settings.amqp.dead_letter_queue;
    let deadline = Instant::now() + timeout;
    loop {
        let accepted = sandbox.sim.stats().accepted;
        let dead = sandbox.depth(dlq).await?;
        if accepted as usize >= report.expected_sent && dead as usize >= report.expected_dead {
            break;
        }
        if Instant::now() > deadline {
            running.stop().await;
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
    let worker = running.stop().await;

    for (props, _) in sandbox.drain_queue(dlq).await? {
        let reason =
            headers::get_string(&props, headers::ERROR_REASON).unwrap_or_else(|| "(none)".into());
        *report.dead_by_reason.entry(reason).or_default() += 1;
    }
    let stats = sandbox.sim.stats();
    report.sent = stats.accepted;
    report.api_requests = stats.requests;
    let retried = |reason: &str| {
        worker
            .metrics
            .outcomes
            .get_metric_with_label_values(&["retried", reason])
            .map_or(0, |c| c.get())
    };
    report.retries_scheduled = retried("transient") + retried("rate_limited");
    Ok(report)
}
