//! `send-worker publish`, the real binary, against the real RabbitMQ: jobs
//! from JSONL, CSV, stdin and flags reach the work queue with the properties
//! of a safe publish, and a worker (in this process, against the simulator)
//! sends them. Invalid, unroutable and nacked jobs are reported with their
//! line numbers; a missing exchange or broker is exit status 2.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::ShortString;
use send_worker::amqp::headers;
use send_worker::cli::publish::ID_NAMESPACE;
use send_worker::config::Settings;
use send_worker::testkit::{ConfigFile, Run, accepted_by_text, bin, give_back, wait_for};
use tokio::io::AsyncWriteExt;

use common::{capped_queue, delete_queue, env, event_job_ids, sent_events_queue};

const T: Duration = Duration::from_secs(60);

/// `send-worker --config <settings> publish <args>` in `dir`, with `stdin`.
async fn publish_in(dir: &Path, settings: &Settings, args: &[&str], stdin: &[u8]) -> Run {
    let config = ConfigFile::write(settings);
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("--config")
        .arg(config.path())
        .arg("publish")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("SEND_WORKER__") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn send-worker publish");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("publish finishes")
        .expect("publish runs");
    Run::from(out)
}

async fn publish(dir: &Path, settings: &Settings, args: &[&str]) -> Run {
    publish_in(dir, settings, args, b"").await
}

/// A fresh directory for a test's input files.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "send-worker-publish-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

fn expected_id(file: &str, line: u64) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{file}:{line}").as_bytes()).to_string()
}

fn sms_line(to: &str, text: &str) -> String {
    serde_json::json!({"from": "+15551234567", "to": to, "text": text}).to_string()
}

fn message_ids(msgs: &[(lapin::BasicProperties, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(p, _)| {
            p.message_id()
                .as_ref()
                .expect("message_id")
                .as_str()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jsonl_lines_are_all_published_and_all_sent() {
    const N: u64 = 10_000;
    let env = env("publish-10k").await;
    let events = sent_events_queue(&env).await;
    let dir = tempdir("10k");
    let mut text = String::new();
    for i in 1..=N {
        text.push_str(&sms_line(
            &format!("+1555{:07}", i),
            &format!("publish-10k {i}"),
        ));
        text.push('\n');
    }
    std::fs::write(dir.join("jobs-10k.jsonl"), text).expect("write the file");

    let run = publish(&dir, &env.settings, &["jobs-10k.jsonl"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("published 10000 of 10000 jobs to exchange"),
        "{run}"
    );
    assert!(run.stdout.contains("0 invalid, 0 rejected"), "{run}");
    assert_eq!(env.work_depth().await, 10_000, "all in the work queue");

    let w = env.start();
    wait_for("10,000 jobs sent", Duration::from_secs(400), || async {
        env.sim.stats().accepted >= N
    })
    .await;
    wait_for("10,000 sent events", T, || async {
        env.depth(&events).await >= 10_000
    })
    .await;
    w.stop().await;

    let accepted = accepted_by_text(&env.sim);
    assert_eq!(accepted.len(), 10_000, "every job reached the API");
    for i in 1..=N {
        assert_eq!(
            accepted.get(&format!("publish-10k {i}")),
            Some(&1),
            "line {i} sent exactly once"
        );
    }
    let ids: BTreeSet<String> = event_job_ids(&env, &events).await.into_iter().collect();
    let expected: BTreeSet<String> = (1..=N).map(|l| expected_id("jobs-10k.jsonl", l)).collect();
    assert_eq!(ids, expected, "the sent jobs are the file's lines, by id");
    assert_eq!(env.dlq_depth().await, 0);
    assert_eq!(env.work_depth().await, 0);
    delete_queue(&env, &events).await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_with_three_invalid_lines_reports_them_by_line_and_the_rest_are_sent() {
    let env = env("publish-csv").await;
    let dir = tempdir("csv");
    let mut csv = String::from("to,from,text,media_urls,job_id\n");
    let mut valid = Vec::new();
    // line 2..: 20 rows; row 3 spans two lines, so later rows start one line on.
    let mut line = 2;
    let mut invalid_lines = Vec::new();
    for i in 1..=20 {
        let (row, lines, ok) = match i {
            3 => (
                "+15553000003,+15551234567,\"csv 3\nsecond line\",,".to_owned(),
                2,
                true,
            ),
            // Bad E.164 destination.
            6 => ("5553000006,+15551234567,csv 6,,".to_owned(), 1, false),
            // Neither text nor media.
            11 => ("+15553000011,+15551234567,,,".to_owned(), 1, false),
            // Media must be https.
            17 => (
                "+15553000017,+15551234567,csv 17,http://media.example/a.png,".to_owned(),
                1,
                false,
            ),
            _ => (
                format!("+1555300{i:04},+15551234567,csv {i},,csv-job-{i}"),
                1,
                true,
            ),
        };
        if ok {
            valid.push(if i == 3 {
                "csv 3\nsecond line".to_owned()
            } else {
                format!("csv {i}")
            });
        } else {
            invalid_lines.push(line);
        }
        csv.push_str(&row);
        csv.push('\n');
        line += lines;
    }
    assert_eq!(invalid_lines, [8, 13, 19]);
    std::fs::write(dir.join("jobs.csv"), csv).expect("write the file");

    let run = publish(&dir, &env.settings, &["jobs.csv"]).await;
    assert_eq!(run.code, 1, "some lines were invalid: exit 1\n{run}");
    assert!(run.stdout.contains("published 17 of 20 jobs"), "{run}");
    assert!(run.stdout.contains("3 invalid, 0 rejected"), "{run}");
    let reports: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(": invalid: "))
        .collect();
    assert_eq!(reports.len(), 3, "{run}");
    assert!(
        reports[0].starts_with("jobs.csv:8: invalid: `to` must be an E.164"),
        "{run}"
    );
    assert!(
        reports[1].starts_with("jobs.csv:13: invalid: `text` or `media_urls`"),
        "{run}"
    );
    assert!(
        reports[2].starts_with("jobs.csv:19: invalid: `media_urls` entries must be https"),
        "{run}"
    );

    let w = env.start();
    wait_for("17 jobs sent", T, || async {
        env.sim.stats().accepted >= 17
    })
    .await;
    w.stop().await;
    let accepted = accepted_by_text(&env.sim);
    let mut sent: Vec<String> = accepted.keys().cloned().collect();
    sent.sort();
    valid.sort();
    assert_eq!(sent, valid, "exactly the valid rows were sent");
    assert!(accepted.values().all(|n| *n == 1));
    assert_eq!(
        env.dlq_depth().await,
        0,
        "invalid rows were never published"
    );
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_or_broker_is_a_clear_error_and_exit_2() {
    let env = env("publish-missing").await;
    let dir = tempdir("missing");
    std::fs::write(
        dir.join("jobs.jsonl"),
        sms_line("+15559876543", "never published"),
    )
    .expect("write");
    let missing = format!("{}.no-such-exchange", env.prefix);
    let run = publish(&dir, &env.settings, &["jobs.jsonl", "--exchange", &missing]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr
            .contains(&format!("the exchange {missing:?} does not exist")),
        "{run}"
    );
    assert!(run.stderr.contains("nothing was published"), "{run}");
    assert!(!run.stdout.contains("published"), "{run}");

    // The configured exchange missing: the same.
    let mut s = env.settings.clone();
    s.amqp.exchange = missing.clone();
    let run = publish(&dir, &s, &["jobs.jsonl"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("does not exist"), "{run}");

    // No broker at all: exit 2, the URL named, its password not.
    let mut s = env.settings.clone();
    s.amqp.url = send_worker::secret::Secret::new(format!(
        "amqp://guest:hunter2-secret@127.0.0.1:{}/%2f",
        send_worker::testkit::free_port()
    ));
    let run = publish(&dir, &s, &["jobs.jsonl"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr
            .contains("cannot reach RabbitMQ at amqp://guest:***@127.0.0.1"),
        "{run}"
    );
    assert!(!run.stderr.contains("hunter2"), "{run}");

    // Usage errors: exit 2 too.
    let run = publish(&dir, &env.settings, &["jobs.jsonl", "--window", "0"]).await;
    assert_eq!(run.code, 2, "{run}");
    let run = publish(&dir, &env.settings, &["no-such-file.jsonl"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("cannot open no-such-file.jsonl"),
        "{run}"
    );
    std::fs::write(dir.join("bad.csv"), "to,txt\n+15559876543,x\n").expect("write");
    let run = publish(&dir, &env.settings, &["bad.csv"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("unknown CSV column \"txt\""), "{run}");

    assert_eq!(env.work_depth().await, 0);
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_published_twice_gives_the_same_job_ids() {
    let env = env("publish-twice").await;
    let dir = tempdir("twice");
    let mut text = String::new();
    for i in 1..=50 {
        if i == 10 {
            text.push_str(
                r#"{"job_id":"order-10","from":"+15551234567","to":"+15554000010","text":"t 10"}"#,
            );
        } else {
            text.push_str(&sms_line(&format!("+1555400{i:04}"), &format!("t {i}")));
        }
        text.push('\n');
    }
    std::fs::write(dir.join("batch.jsonl"), &text).expect("write");

    for _ in 0..2 {
        let run = publish(&dir, &env.settings, &["batch.jsonl"]).await;
        assert_eq!(run.code, 0, "{run}");
    }
    // From a pipe, named like the file: the same ids again.
    let run = publish_in(
        &dir,
        &env.settings,
        &["-", "--id-namespace", "batch.jsonl"],
        text.as_bytes(),
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    // The same lines in a file of another name: other ids.
    std::fs::write(dir.join("other.jsonl"), &text).expect("write");
    let run = publish(&dir, &env.settings, &["other.jsonl"]).await;
    assert_eq!(run.code, 0, "{run}");

    let msgs = env.work_depth().await;
    assert_eq!(msgs, 200);
    let all = message_ids(&env.drain_queue(&env.settings.amqp.queue).await);
    let (first, rest) = all.split_at(50);
    let (second, rest) = rest.split_at(50);
    let (piped, other) = rest.split_at(50);
    assert_eq!(
        first, second,
        "the same file twice: the same ids, line by line"
    );
    assert_eq!(first, piped, "from stdin with --id-namespace: the same ids");
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>().len(),
        50,
        "distinct ids"
    );
    for (i, id) in first.iter().enumerate() {
        let line = u64::try_from(i + 1).expect("small");
        if line == 10 {
            assert_eq!(id, "order-10", "a job_id field is the id");
        } else {
            assert_eq!(id, &expected_id("batch.jsonl", line));
        }
    }
    for (a, b) in first.iter().zip(other) {
        if a == "order-10" {
            assert_eq!(b, "order-10");
        } else {
            assert_ne!(a, b, "another file name: other ids");
        }
    }
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_nacked_publishes_are_rejected_with_their_line_numbers() {
    let env = env("publish-rejected").await;
    let dir = tempdir("rejected");
    let text: String = (1..=6)
        .map(|i| sms_line(&format!("+1555500{i:04}"), &format!("r {i}")) + "\n")
        .collect();
    std::fs::write(dir.join("jobs.jsonl"), &text).expect("write");

    // No queue is bound with this key: every publish comes back.
    let run = publish(
        &dir,
        &env.settings,
        &["jobs.jsonl", "--routing-key", "nobody-listens"],
    )
    .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("published 0 of 6 jobs"), "{run}");
    assert!(run.stdout.contains("0 invalid, 6 rejected"), "{run}");
    for line in 1..=6 {
        assert!(
            run.stderr.lines().any(|l| l
                .starts_with(&format!("jobs.jsonl:{line}: rejected (job "))
                && l.contains("312 NO_ROUTE")),
            "line {line}\n{run}"
        );
    }

    // A queue that holds 3 and refuses more (x-overflow reject-publish): the
    // broker nacks lines 4 to 6. A window of 1 keeps the order.
    let small = capped_queue(&env, "small", 3).await;
    let run = publish(
        &dir,
        &env.settings,
        &["jobs.jsonl", "--routing-key", "small", "--window", "1"],
    )
    .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("published 3 of 6 jobs"), "{run}");
    assert!(run.stdout.contains("0 invalid, 3 rejected"), "{run}");
    for line in 4..=6 {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(&format!("jobs.jsonl:{line}: rejected"))
                    && l.contains("refused the message (nack)")),
            "line {line}\n{run}"
        );
    }
    assert_eq!(env.depth(&small).await, 3);
    delete_queue(&env, &small).await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_strict_publish_nothing() {
    let env = env("publish-dry").await;
    let dir = tempdir("dry");
    let text = [
        sms_line("+15556000001", "d 1"),
        sms_line("12345", "d 2"),
        sms_line("+15556000003", "d 3"),
    ]
    .join("\n");
    std::fs::write(dir.join("jobs.jsonl"), &text).expect("write");

    let run = publish(&dir, &env.settings, &["jobs.jsonl", "--dry-run"]).await;
    assert_eq!(run.code, 1, "a dry run with an invalid line: exit 1\n{run}");
    let listed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("jobs.jsonl:"))
        .collect();
    assert_eq!(listed.len(), 2, "{run}");
    assert!(listed[0].starts_with(&format!(
        "jobs.jsonl:1\t{}\t{{",
        expected_id("jobs.jsonl", 1)
    )));
    assert!(listed[1].starts_with("jobs.jsonl:3\t"));
    assert!(
        run.stdout
            .contains("dry run: 2 of 3 jobs would be published"),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("jobs.jsonl:2: invalid: `to` must be an E.164"),
        "{run}"
    );

    let run = publish(&dir, &env.settings, &["jobs.jsonl", "--strict"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout
            .contains("strict: 1 of 3 jobs are invalid; nothing was published"),
        "{run}"
    );
    assert!(run.stderr.contains("jobs.jsonl:2: invalid:"), "{run}");
    let run = publish_in(
        &dir,
        &env.settings,
        &["-", "--strict", "--id-namespace", "x"],
        text.as_bytes(),
    )
    .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("stdin:2: invalid:"), "{run}");
    assert_eq!(env.work_depth().await, 0, "nothing was published");

    // --strict on a clean file publishes it all.
    std::fs::write(dir.join("clean.jsonl"), sms_line("+15556000009", "d 9")).expect("write");
    let run = publish(&dir, &env.settings, &["clean.jsonl", "--strict"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(env.work_depth().await, 1);
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_flags_has_the_properties_of_a_safe_publish() {
    let env = env("publish-flags").await;
    let dir = tempdir("flags");
    let before = std::time::SystemTime::now();
    let run = publish(
        &dir,
        &env.settings,
        &[
            "--to",
            "+15559876543",
            "--from",
            "+15551234567",
            "--text",
            "Your code is 123456",
            "--job-id",
            "otp-1",
            "--expires-in",
            "5m",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("published 1 of 1 jobs"), "{run}");
    let m = env
        .ch
        .basic_get(
            ShortString::from(env.settings.amqp.queue.as_str()),
            BasicGetOptions::default(),
        )
        .await
        .expect("basic.get")
        .expect("the job is in the work queue");
    let p = &m.delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("otp-1"));
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let now = std::time::SystemTime::now();
    let ts = p.timestamp().expect("timestamp");
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    assert!(ts >= secs(before) && ts <= secs(now));
    let expires = headers::get_string(p, headers::EXPIRES_AT).expect("x-expires-at");
    let at = send_worker::job::parse_deadline(&expires).expect("RFC 3339");
    assert!(
        at >= before + Duration::from_secs(299) && at <= now + Duration::from_secs(301),
        "{expires}"
    );
    let body: HashMap<String, String> =
        serde_json::from_slice(&m.delivery.data).expect("JSON body");
    assert_eq!(body["to"], "+15559876543");
    assert_eq!(body["from"], "+15551234567");
    assert_eq!(body["text"], "Your code is 123456");
    assert_eq!(body.len(), 3);

    // Back to the queue, and the worker sends it.
    give_back(&m.delivery).await;
    let w = env.start();
    wait_for("the job sent", T, || async {
        env.sim.stats().accepted >= 1
    })
    .await;
    w.stop().await;
    assert_eq!(
        accepted_by_text(&env.sim).get("Your code is 123456"),
        Some(&1)
    );
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
