//! `send-worker dlq` against the real RabbitMQ: entries put in the DLQ by a
//! worker (or by RabbitMQ's delivery limit), then listed, shown, replayed
//! and purged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::FieldTable;
use send_worker::amqp::headers;
use send_worker::cli::dlq::{self, Console, DlqCommand, DlqError, Prompt, Report};
use send_worker::config::Settings;
use send_worker::pipeline::{DeadReason, dead_letter_props};
use send_worker::sim::{SimConfig, SimReply};
use send_worker::telnyx::Failure;

use send_worker::testkit::{TestEnv, job_id_of, job_props, sms, wait_for};

const T: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: DlqCommand,
}

struct Run {
    result: Result<Report, DlqError>,
    out: String,
    err: String,
}

impl Run {
    fn report(&self) -> &Report {
        match &self.result {
            Ok(r) => r,
            Err(e) => panic!(
                "dlq failed: {e}\nstdout:\n{}\nstderr:\n{}",
                self.out, self.err
            ),
        }
    }
}

/// `send-worker dlq ARGS...` against `settings`, with `prompt` for purge.
async fn dlq_with(settings: &Settings, args: &[&str], prompt: Prompt) -> Run {
    let cli = Cli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = dlq::run_with(
        settings,
        cli.cmd,
        Console {
            out: &mut out,
            err: &mut err,
            prompt,
        },
    )
    .await;
    Run {
        result,
        out: String::from_utf8_lossy(&out).into_owned(),
        err: String::from_utf8_lossy(&err).into_owned(),
    }
}

async fn dlq(env: &TestEnv, args: &[&str]) -> Run {
    dlq_with(&env.settings, args, Prompt::Never).await
}

fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

fn reasons(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// Dead-letter entries the real way: a worker against the simulator.
/// perm-1, perm-2: permanent 403/40300; inval-1, inval-2: validation;
/// bad-1: malformed.
async fn populate(env: &TestEnv) {
    env.publish("perm-1", &sms("+19990000403", "perm 1")).await;
    env.publish("perm-2", &sms("+19990000403", "perm 2")).await;
    env.publish("inval-1", br#"{"from":"+15551234567","text":"no to 1"}"#)
        .await;
    env.publish("inval-2", br#"{"from":"+15551234567","text":"no to 2"}"#)
        .await;
    env.publish("bad-1", b"{{{ not json").await;
    let w = env.start();
    wait_for("5 dead letters", T, || async { env.dlq_depth().await >= 5 }).await;
    w.stop().await;
    assert_eq!(env.dlq_depth().await, 5);
}

/// A poison message dead-lettered by RabbitMQ itself: returned to the work
/// queue until its delivery limit (set to 1 by the test) is passed.
async fn poison(env: &TestEnv, id: &str) {
    let before = env.dlq_depth().await;
    env.publish(id, &sms("+15559876543", "poison")).await;
    for _ in 0..10 {
        if env.dlq_depth().await > before {
            break;
        }
        env.redeliver_one(&env.settings.amqp.queue).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("RabbitMQ dead-letters the poison message", T, || async {
        env.dlq_depth().await > before
    })
    .await;
}

/// Publish a DLQ entry directly, as the worker would have made it.
async fn dead_letter(env: &TestEnv, id: &str, reason: DeadReason, code: &str, status: u16) {
    let failure = Failure {
        status: Some(status),
        code: Some(code.to_owned()),
        title: "Failed".to_owned(),
        detail: format!("{id} failed"),
        ..Failure::default()
    };
    let props = dead_letter_props(&job_props(id), reason, &failure, 3);
    let props = headers::with_header(props, headers::RATE_LIMIT_BOUNCES, headers::int(2));
    let confirm = env
        .ch
        .basic_publish(
            env.settings.amqp.exchange.as_str().into(),
            env.settings.amqp.dead_routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &sms("+15559876543", id),
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

/// Take every message in `queue`, acking it.
async fn drain(env: &TestEnv, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
    env.drain_queue(queue).await
}

#[tokio::test]
async fn list_shows_every_entry_with_its_reason_and_filters_select() {
    let env = TestEnv::new("dlq-list", SimConfig::default(), |s| {
        s.amqp.delivery_limit = 1;
    })
    .await;
    populate(&env).await;
    poison(&env, "poison-1").await;

    let all = dlq(&env, &["list"]).await;
    let r = all.report();
    assert_eq!(r.scanned, 6);
    assert_eq!(r.shown, 6);
    assert_eq!(
        r.by_reason,
        reasons(&[
            ("permanent", 2),
            ("validation", 2),
            ("malformed", 1),
            ("delivery_limit", 1)
        ])
    );
    let perm = line_with(&all.out, "perm-1");
    for want in ["permanent", "40300", "403", "Messages cannot be sent"] {
        assert!(perm.contains(want), "{want:?} missing from {perm:?}");
    }
    assert!(line_with(&all.out, "inval-2").contains("validation"));
    assert!(line_with(&all.out, "bad-1").contains("malformed"));
    assert!(line_with(&all.out, "poison-1").contains("delivery_limit"));
    assert!(all.out.contains("by reason: "), "{}", all.out);
    // Browsing removed nothing.
    assert_eq!(env.dlq_depth().await, 6);

    let perm = dlq(&env, &["list", "--reason", "permanent"]).await;
    assert_eq!(perm.report().shown, 2);
    assert!(perm.out.contains("perm-1") && perm.out.contains("perm-2"));
    assert!(!perm.out.contains("inval-1") && !perm.out.contains("poison-1"));

    let two = dlq(
        &env,
        &["list", "--reason", "validation", "--reason", "malformed"],
    )
    .await;
    assert_eq!(two.report().shown, 3);

    let poison = dlq(&env, &["list", "--reason", "delivery-limit"]).await;
    assert_eq!(poison.report().shown, 1);
    assert!(poison.out.contains("poison-1"));

    let code = dlq(&env, &["list", "--code", "40300"]).await;
    assert_eq!(code.report().shown, 2);

    let old = dlq(&env, &["list", "--older-than", "1h"]).await;
    assert_eq!(old.report().shown, 0);
    assert_eq!(old.report().scanned, 6);
    let new = dlq(&env, &["list", "--newer-than", "1h"]).await;
    assert_eq!(new.report().shown, 6);

    let one = dlq(&env, &["list", "--limit", "1"]).await;
    assert_eq!(one.report().shown, 1);
    assert_eq!(one.report().matched, 6, "the summary still counts all");

    let json = dlq(&env, &["list", "--json", "--reason", "validation"]).await;
    let lines: Vec<serde_json::Value> = json
        .out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", json.out);
    for v in &lines {
        assert_eq!(v["reason"], "validation");
        assert_eq!(v["attempts"], 0);
        assert!(v["age_secs"].as_u64().is_some_and(|a| a < 3600));
        assert!(v["detail"].as_str().is_some_and(|d| d.contains("`to`")));
    }
    assert!(json.err.contains("by reason"), "summary on stderr");

    assert_eq!(env.dlq_depth().await, 6, "nothing was removed by listing");
    env.cleanup().await;
}

#[tokio::test]
async fn show_prints_one_entry_in_full() {
    let env = TestEnv::new("dlq-show", SimConfig::default(), |_| {}).await;
    populate(&env).await;

    let shown = dlq(&env, &["show", "perm-2"]).await;
    assert_eq!(shown.report().shown, 1);
    let out = &shown.out;
    for want in [
        "job id:       perm-2",
        "reason:       permanent",
        "code:         40300",
        "http status:  403",
        "attempts:     1",
        "Blocked due to STOP message",
        "x-error-reason: \"permanent\"",
        "content_type: \"application/json\"",
        "body (",
        "\"to\": \"+19990000403\"",
        "\"text\": \"perm 2\"",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert!(!out.contains("perm 1"), "only the one job");

    let json = dlq(&env, &["show", "bad-1", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(json.out.trim()).expect("JSON");
    assert_eq!(v["reason"], "malformed");
    assert_eq!(v["body_text"], "{{{ not json");
    assert_eq!(v["headers"]["x-error-reason"], "malformed");

    let missing = dlq(&env, &["show", "no-such-job"]).await;
    assert!(
        matches!(missing.result, Err(DlqError::NotFound { .. })),
        "{:?}",
        missing.result
    );
    assert_eq!(env.dlq_depth().await, 5, "showing removed nothing");
    env.cleanup().await;
}

#[tokio::test]
async fn replay_dry_run_changes_nothing() {
    let env = TestEnv::new("dlq-dry", SimConfig::default(), |_| {}).await;
    populate(&env).await;
    let requests = env.sim.stats().requests;

    let dry = dlq(&env, &["replay", "--dry-run"]).await;
    assert_eq!(dry.report().matched, 5);
    assert_eq!(dry.report().replayed, 0);
    assert!(
        dry.out.contains("5 entries would be replayed"),
        "{}",
        dry.out
    );
    for id in ["perm-1", "perm-2", "inval-1", "inval-2", "bad-1"] {
        assert!(dry.out.contains(id), "{id} not listed:\n{}", dry.out);
    }
    let dry = dlq(&env, &["replay", "--dry-run", "--reason", "permanent"]).await;
    assert_eq!(dry.report().matched, 2);

    assert_eq!(env.dlq_depth().await, 5);
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    assert_eq!(env.sim.stats().requests, requests);
    // Every entry is still whole.
    let dead = env.drain_dlq().await;
    assert_eq!(dead.len(), 5);
    assert!(
        dead.iter()
            .all(|(p, _)| headers::get_string(p, headers::ERROR_REASON).is_some())
    );
    env.cleanup().await;
}

#[tokio::test]
async fn replay_by_reason_moves_only_those_with_attempts_reset() {
    let env = TestEnv::new("dlq-replay-reason", SimConfig::default(), |_| {}).await;
    populate(&env).await;

    let run = dlq(&env, &["replay", "--reason", "validation"]).await;
    let r = run.report();
    assert_eq!((r.replayed, r.skipped, r.failed), (2, 3, 0), "{}", run.err);
    assert!(
        run.out.contains("replayed inval-1 (validation)"),
        "{}",
        run.out
    );
    assert!(run.err.contains("2 replayed, 3 skipped"), "{}", run.err);
    assert_eq!(env.dlq_depth().await, 3);
    assert_eq!(env.work_depth().await, 2);

    // The copies: original body and properties, no verdict, no counters.
    let work = drain(&env, &env.settings.amqp.queue).await;
    let ids: BTreeSet<String> = work.iter().map(|(p, _)| job_id_of(p)).collect();
    assert_eq!(ids, BTreeSet::from(["inval-1".into(), "inval-2".into()]));
    for (p, body) in &work {
        let n = if job_id_of(p) == "inval-1" { 1 } else { 2 };
        assert_eq!(
            body,
            format!(r#"{{"from":"+15551234567","text":"no to {n}"}}"#).as_bytes()
        );
        for h in [
            headers::ERROR_REASON,
            headers::ERROR_CODE,
            headers::ERROR_DETAIL,
            headers::FAILED_AT,
            headers::ATTEMPTS,
            headers::HTTP_STATUS,
        ] {
            assert!(headers::get_string(p, h).is_none(), "{h} kept");
        }
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert!(p.timestamp().is_some());
    }
    // The rest are untouched.
    let dead = env.drain_dlq().await;
    let left: BTreeMap<String, String> = dead
        .iter()
        .map(|(p, _)| {
            (
                job_id_of(p),
                headers::get_string(p, headers::ERROR_REASON).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        left,
        BTreeMap::from([
            ("bad-1".into(), "malformed".into()),
            ("perm-1".into(), "permanent".into()),
            ("perm-2".into(), "permanent".into()),
        ])
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_replay_round_trip_sends_the_jobs_as_first_attempts() {
    let env = TestEnv::new("dlq-roundtrip", SimConfig::default(), |_| {}).await;
    // Refused at first, as if the recipient had opted out.
    env.sim.set_behavior(Some(Arc::new(|r| {
        r.text
            .as_deref()
            .is_some_and(|t| t.starts_with("rt "))
            .then(|| {
                SimReply::error(
                    403,
                    "40300",
                    "Blocked due to STOP message",
                    "The recipient replied STOP.",
                )
            })
    })));
    // Result events, to see the attempt number each send was made with.
    let events = env.events_queue("sent").await;

    let n = 3;
    for i in 0..n {
        env.publish(
            &format!("rt-{i}"),
            &sms(&format!("+1555300000{i}"), &format!("rt {i}")),
        )
        .await;
    }
    let w = env.start();
    wait_for("3 permanent failures", T, || async {
        env.dlq_depth().await >= n
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 0);

    // The recipients opted back in. Replay while the worker runs.
    env.sim.set_behavior(None);
    let run = dlq(
        &env,
        &["replay", "--reason", "permanent", "--code", "40300"],
    )
    .await;
    assert_eq!(run.report().replayed, u64::from(n), "{}", run.err);
    wait_for("3 sends", T, || async {
        env.sim.stats().accepted >= u64::from(n)
    })
    .await;
    let sent = std::cell::RefCell::new(BTreeMap::new());
    wait_for("3 sent events", T, || async {
        while let Some(m) = env
            .ch
            .basic_get(events.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).expect("event");
            sent.borrow_mut().insert(
                v["job_id"].as_str().unwrap_or("").to_owned(),
                v["attempts"].clone(),
            );
        }
        sent.borrow().len() >= n as usize
    })
    .await;
    w.stop().await;
    let sent = sent.into_inner();
    for i in 0..n {
        assert_eq!(
            sent[&format!("rt-{i}")],
            1,
            "rt-{i} was sent as attempt 1: its attempts were reset"
        );
        let tries: Vec<u16> = env
            .sim
            .requests_with_text(&format!("rt {i}"))
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(tries, [403, 200], "rt-{i}");
    }
    assert_eq!(env.dlq_depth().await, 0);
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_re_publish_leaves_the_entries_in_the_dlq() {
    let env = TestEnv::new("dlq-replay-fail", SimConfig::default(), |_| {}).await;
    for i in 0..4 {
        dead_letter(&env, &format!("f-{i}"), DeadReason::Permanent, "40300", 403).await;
    }
    // The work queue is no longer bound: a mandatory publish comes back.
    env.ch
        .queue_unbind(
            env.settings.amqp.queue.as_str().into(),
            env.settings.amqp.exchange.as_str().into(),
            env.settings.amqp.routing_key.as_str().into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind");
    let run = dlq(&env, &["replay"]).await;
    let Err(DlqError::ReplayIncomplete { report, reason }) = &run.result else {
        panic!("expected an incomplete replay, got {:?}", run.result);
    };
    assert_eq!(report.replayed, 0);
    assert!(report.failed >= 1);
    assert!(reason.contains("unroutable"), "{reason}");
    assert!(run.err.contains("not replayed f-"), "{}", run.err);
    assert_eq!(env.dlq_depth().await, 4, "every entry is still in the DLQ");

    // A missing work exchange is found before anything is touched.
    let mut settings = env.settings.clone();
    settings.amqp.exchange = format!("{}.nope", env.prefix);
    let run = dlq_with(&settings, &["replay"], Prompt::Never).await;
    assert!(
        matches!(run.result, Err(DlqError::ExchangeMissing { .. })),
        "{:?}",
        run.result
    );
    // So is a missing DLQ.
    let mut settings = env.settings.clone();
    settings.amqp.dead_letter_queue = format!("{}.nope", env.prefix);
    let run = dlq_with(&settings, &["list"], Prompt::Never).await;
    assert!(
        matches!(run.result, Err(DlqError::QueueMissing { .. })),
        "{:?}",
        run.result
    );
    assert_eq!(env.dlq_depth().await, 4);

    // Bound again, the same entries replay.
    env.ch
        .queue_bind(
            env.settings.amqp.queue.as_str().into(),
            env.settings.amqp.exchange.as_str().into(),
            env.settings.amqp.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let run = dlq(&env, &["replay"]).await;
    assert_eq!(run.report().replayed, 4);
    assert_eq!(env.dlq_depth().await, 0);
    assert_eq!(env.work_depth().await, 4);
    env.cleanup().await;
}

#[tokio::test]
async fn a_large_replay_reports_progress_and_moves_each_entry_once() {
    let env = TestEnv::new("dlq-large", SimConfig::default(), |_| {}).await;
    let n = 300;
    for i in 0..n {
        let reason = if i % 3 == 0 {
            DeadReason::Permanent
        } else {
            DeadReason::AttemptsExhausted
        };
        dead_letter(&env, &format!("l-{i}"), reason, "10007", 500).await;
    }
    let run = dlq(
        &env,
        &[
            "replay",
            "--reason",
            "attempts-exhausted",
            "--batch",
            "16",
            "--progress-every",
            "100",
            "--limit",
            "150",
        ],
    )
    .await;
    let r = run.report();
    assert_eq!(r.replayed, 150, "{}", run.err);
    assert!(run.err.contains("examined 100/300"), "{}", run.err);
    assert!(run.err.contains("replay done: 150 replayed"), "{}", run.err);
    assert_eq!(env.dlq_depth().await, 150);

    // The rest of them; permanent ones stay.
    let run = dlq(&env, &["replay", "--reason", "attempts-exhausted"]).await;
    assert_eq!(run.report().replayed, 50);
    assert_eq!(run.report().skipped, 100);
    assert_eq!(env.dlq_depth().await, 100);

    let work = drain(&env, &env.settings.amqp.queue).await;
    assert_eq!(work.len(), 200, "each entry replayed exactly once");
    let ids: BTreeSet<String> = work.iter().map(|(p, _)| job_id_of(p)).collect();
    let want: BTreeSet<String> = (0..n)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("l-{i}"))
        .collect();
    assert_eq!(ids, want);
    for (p, _) in &work {
        assert!(headers::get_string(p, headers::RATE_LIMIT_BOUNCES).is_none());
        assert!(headers::get_string(p, headers::ATTEMPTS).is_none());
    }
    // Everything else in one go: 100 acks in a row, none may come back.
    let run = dlq(&env, &["replay"]).await;
    assert_eq!(run.report().replayed, 100, "{}", run.err);
    assert_eq!(env.dlq_depth().await, 0, "no acked entry came back");
    let work = drain(&env, &env.settings.amqp.queue).await;
    assert_eq!(work.len(), 100);
    assert!(work.iter().all(|(p, _)| {
        job_id_of(p)
            .trim_start_matches("l-")
            .parse::<u32>()
            .is_ok_and(|i| i % 3 == 0)
    }));
    env.cleanup().await;
}

#[tokio::test]
async fn purge_refuses_without_a_confirmation_and_removes_with_one() {
    let env = TestEnv::new("dlq-purge", SimConfig::default(), |_| {}).await;
    populate(&env).await;
    let queue = env.settings.amqp.dead_letter_queue.clone();

    let run = dlq(&env, &["purge"]).await;
    assert!(
        matches!(run.result, Err(DlqError::NotConfirmed)),
        "{:?}",
        run.result
    );
    let msg = run
        .result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(msg.contains("--yes"), "{msg}");
    let run = dlq_with(&env.settings, &["purge"], Prompt::Answer("yes".into())).await;
    assert!(
        matches!(run.result, Err(DlqError::Declined { .. })),
        "{:?}",
        run.result
    );
    assert_eq!(env.dlq_depth().await, 5, "nothing removed");

    let dry = dlq(&env, &["purge", "--reason", "validation", "--dry-run"]).await;
    assert_eq!(dry.report().matched, 2);
    assert_eq!(env.dlq_depth().await, 5);

    let run = dlq(&env, &["purge", "--reason", "validation", "--yes"]).await;
    assert_eq!(run.report().purged, 2);
    assert!(run.out.contains("purged 2 entries"), "{}", run.out);
    assert_eq!(env.dlq_depth().await, 3);
    let left = dlq(&env, &["list"]).await;
    assert_eq!(
        left.report().by_reason,
        reasons(&[("permanent", 2), ("malformed", 1)])
    );

    // Typing the queue name confirms a whole-queue purge.
    let run = dlq_with(
        &env.settings,
        &["purge"],
        Prompt::Answer(format!("{queue}\n")),
    )
    .await;
    assert_eq!(run.report().purged, 3);
    assert!(run.out.contains("purged 3 entries"), "{}", run.out);
    assert_eq!(env.dlq_depth().await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_named_without_its_password() {
    let settings = Settings::load_with_env(
        None,
        [(
            "SEND_WORKER__AMQP__URL".to_owned(),
            "amqp://guest:hunter2@127.0.0.1:1/%2f".to_owned(),
        )],
    )
    .expect("settings");
    let run = dlq_with(&settings, &["list"], Prompt::Never).await;
    let msg = match &run.result {
        Err(e @ DlqError::Broker(_)) => e.to_string(),
        other => panic!("expected a broker error, got {other:?}"),
    };
    assert!(msg.contains("amqp://guest:***@127.0.0.1:1"), "{msg}");
    assert!(msg.contains("rabbitmq-server"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn the_binary_lists_and_refuses_an_unconfirmed_purge() {
    let env = TestEnv::new("dlq-bin", SimConfig::default(), |_| {}).await;
    dead_letter(&env, "b-1", DeadReason::Permanent, "40300", 403).await;
    let bin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_send-worker"))
            .args(args)
            .env("SEND_WORKER__AMQP__URL", send_worker::testkit::amqp_url())
            .env("SEND_WORKER__AMQP__EXCHANGE", &env.settings.amqp.exchange)
            .env("SEND_WORKER__AMQP__QUEUE", &env.settings.amqp.queue)
            .env(
                "SEND_WORKER__AMQP__DEAD_LETTER_QUEUE",
                &env.settings.amqp.dead_letter_queue,
            )
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runs")
    };
    let list = bin(&["dlq", "list", "--json"]);
    assert!(list.status.success(), "{list:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&list.stdout).expect("one JSON line on stdout");
    assert_eq!(v["job_id"], "b-1");
    assert_eq!(v["code"], "40300");

    let purge = bin(&["dlq", "purge"]);
    assert!(!purge.status.success());
    let err = String::from_utf8_lossy(&purge.stderr);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(env.dlq_depth().await, 1);

    let purge = bin(&["dlq", "purge", "--yes"]);
    assert!(purge.status.success(), "{purge:?}");
    assert!(String::from_utf8_lossy(&purge.stdout).contains("purged 1 entries"));
    assert_eq!(env.dlq_depth().await, 0);
    env.cleanup().await;
}
