//! `send-worker status JOB_ID`: what the job store knows about one job:
//! sent (when, the Telnyx message id, parts, cost), delivered or failed (with
//! the carrier's error, from the delivery receipts), dead-lettered, or
//! unknown. It reads the shared store, so it needs `dedupe.backend = "redis"`
//! (a `memory` store lives inside each worker process). Exit status: 0 known,
//! 1 unknown, 2 the store cannot be read (or configuration).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use crate::config::{ConfigError, DedupeBackend, Settings};
use crate::ops::metrics::Metrics;
use crate::store::{JobRecord, JobState, Store};

#[derive(clap::Args)]
pub struct Args {
    /// The job id (the job's AMQP message_id).
    job_id: String,
    /// Print JSON: {"job_id", "status", "record"}.
    #[arg(long)]
    json: bool,
}

/// Run it; the exit status.
pub async fn command(settings: Result<Settings, ConfigError>, args: Args) -> i32 {
    let mut out = std::io::stdout().lock();
    match lookup(settings, &args.job_id).await {
        Ok(record) => {
            let code = if record.is_some() { 0 } else { 1 };
            let text = if args.json {
                serde_json::json!({
                    "job_id": args.job_id,
                    "status": record.as_ref().map_or("unknown", headline),
                    "record": record,
                })
                .to_string()
            } else {
                render(&args.job_id, record.as_ref())
            };
            if writeln!(out, "{text}").is_err() {
                return 2;
            }
            code
        }
        Err(e) => {
            eprintln!("send-worker status: {e}");
            2
        }
    }
}

async fn lookup(
    settings: Result<Settings, ConfigError>,
    job_id: &str,
) -> anyhow::Result<Option<JobRecord>> {
    let settings = settings?;
    if settings.dedupe.backend != DedupeBackend::Redis {
        anyhow::bail!(
            "the job store is {:?}, which lives inside each worker process; status reads a \
             shared one: dedupe.backend = \"redis\" with redis.url (SEND_WORKER__DEDUPE__BACKEND, \
             SEND_WORKER__REDIS__URL)",
            settings.dedupe.backend
        );
    }
    let redis = crate::redis::Redis::from_settings(&settings.redis)?;
    let store = Store::from_settings(&settings, redis.as_ref(), Metrics::new())?;
    Ok(store.lookup(job_id).await?)
}

/// The one word that says where a job stands.
pub fn headline(r: &JobRecord) -> &str {
    match (r.state, &r.delivery) {
        (JobState::DeadLettered, _) => "dead_lettered",
        (JobState::Sent, Some(d)) => d.status.as_str(),
        (JobState::Sent, None) => "sent",
        (JobState::Leased, _) => "sending",
        (JobState::Released, _) => "retrying",
    }
}

fn at(ms: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .and_then(crate::job::time::within)
        .map_or_else(
            || format!("unix ms {ms}"),
            |t| humantime::format_rfc3339_millis(t).to_string(),
        )
}

/// The human form.
pub fn render(job_id: &str, record: Option<&JobRecord>) -> String {
    let Some(r) = record else {
        return format!(
            "job {job_id}: unknown (the job store has no record of it: never seen by this \
             system, or forgotten after dedupe.ttl_secs)"
        );
    };
    let mut lines = vec![format!("job {job_id}: {}", headline(r))];
    if let Some(s) = &r.sent {
        let mut line = format!("  sent        {}", at(s.sent_at_ms));
        if let Some(m) = &s.message_id {
            line.push_str(&format!(", message {m}"));
        }
        if let Some(p) = s.parts {
            line.push_str(&format!(", {p} part{}", if p == 1 { "" } else { "s" }));
        }
        if let Some(c) = &s.cost {
            line.push_str(&format!(
                ", cost {c} {}",
                s.currency.as_deref().unwrap_or("")
            ));
        }
        lines.push(line.trim_end().to_owned());
    }
    if let Some(d) = &r.delivery {
        let mut line = format!("  {:<11} {}", d.status, at(d.at_ms));
        match (&d.code, &d.detail) {
            (Some(c), Some(t)) => line.push_str(&format!(" (carrier error {c}: {t})")),
            (Some(c), None) => line.push_str(&format!(" (carrier error {c})")),
            (None, Some(t)) => line.push_str(&format!(" ({t})")),
            (None, None) => {}
        }
        lines.push(line);
    }
    if r.state == JobState::DeadLettered {
        lines.push(format!(
            "  dead-lettered {}, reason {}",
            r.dead_at_ms.map_or_else(|| "(time unknown)".to_owned(), at),
            r.dead_reason.as_deref().unwrap_or("unknown")
        ));
    }
    lines.push(format!("  attempts    {}", r.attempts));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Delivery, Sent};

    fn record(state: JobState) -> JobRecord {
        JobRecord {
            job_id: "j1".into(),
            state,
            attempts: 1,
            unknowns: 0,
            sent: None,
            dead_reason: None,
            dead_at_ms: None,
            delivery: None,
        }
    }

    #[test]
    fn each_state_reads_as_one_word_and_its_details() {
        let mut r = record(JobState::Sent);
        r.sent = Some(Sent {
            message_id: Some("m-1".into()),
            sent_at_ms: 1_700_000_000_000,
            parts: Some(2),
            cost: Some("0.0102".into()),
            currency: Some("USD".into()),
        });
        assert_eq!(headline(&r), "sent");
        r.delivery = Some(Delivery {
            status: "delivery_failed".into(),
            code: Some("40008".into()),
            detail: Some("Undeliverable".into()),
            at_ms: 1_700_000_005_000,
        });
        let text = render("j1", Some(&r));
        assert!(text.starts_with("job j1: delivery_failed"), "{text}");
        assert!(
            text.contains("message m-1, 2 parts, cost 0.0102 USD"),
            "{text}"
        );
        assert!(
            text.contains("(carrier error 40008: Undeliverable)"),
            "{text}"
        );
        let mut d = record(JobState::DeadLettered);
        d.dead_reason = Some("permanent".into());
        d.dead_at_ms = Some(1_700_000_000_000);
        assert!(render("j1", Some(&d)).contains("reason permanent"));
        assert!(render("j2", None).starts_with("job j2: unknown"));
        assert_eq!(at(u64::MAX), format!("unix ms {}", u64::MAX));
    }
}
