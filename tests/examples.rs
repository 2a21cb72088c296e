//! The producer examples in `examples/` (Python with pika, Node with
//! amqplib, Go with amqp091-go), each run as a child process against a fresh
//! sandbox on the real RabbitMQ: their jobs arrive with the properties of a
//! safe publish, a worker (against the simulator) sends exactly those jobs,
//! and an unroutable or nacked publish makes the example fail after its
//! retries instead of losing the job.
//!
//! These tests are `#[ignore]`d in a plain `cargo nextest run`:
//! `scripts/examples.sh` prepares the interpreters (a virtualenv with pika,
//! `npm ci`, `go build`) and runs them, passing `EXAMPLES_PYTHON`,
//! `EXAMPLES_NODE` and `EXAMPLES_GO_BIN`. A test whose variable is missing
//! fails; it never passes without running its example.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use lapin::options::{BasicGetOptions, BasicQosOptions};
use lapin::types::ShortString;
use send_worker::amqp::headers;
use send_worker::testkit::{Run, TestEnv, wait_for};

use common::{
    assert_safe_properties, delete_queue, env, event_job_ids, message_id, refusing_queue,
    sent_events_queue,
};

const T: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run these tests with scripts/examples.sh, which prepares it")
    })
}

/// One of the examples.
#[derive(Clone, Copy, Debug)]
enum Example {
    Python,
    Node,
    Go,
}

impl Example {
    fn command(self) -> tokio::process::Command {
        let mut cmd = match self {
            Example::Python => {
                let mut c = tokio::process::Command::new(required("EXAMPLES_PYTHON"));
                c.arg(repo().join("examples/python/send_otp.py"));
                c
            }
            Example::Node => {
                let mut c = tokio::process::Command::new(required("EXAMPLES_NODE"));
                c.arg(repo().join("examples/node/publish.js"))
                    .args(["--order", &uuid::Uuid::new_v4().simple().to_string()]);
                c
            }
            Example::Go => tokio::process::Command::new(required("EXAMPLES_GO_BIN")),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Run `example` against `env`'s exchange with `routing_key`, sending to `numbers`.
async fn run(
    example: Example,
    env: &TestEnv,
    routing_key: &str,
    numbers: &[&str],
    attempts: u32,
) -> Run {
    let mut cmd = example.command();
    cmd.args(numbers)
        .env("AMQP_URL", env.settings.amqp.url.expose())
        .env("SEND_WORKER_EXCHANGE", &env.settings.amqp.exchange)
        .env("SEND_WORKER_ROUTING_KEY", routing_key)
        .env("PUBLISH_ATTEMPTS", attempts.to_string());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start the {example:?} example: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the example finishes")
        .expect("the example runs");
    Run::from(out)
}

/// The job ids an example says it published, with their numbers.
fn published(run: &Run) -> Vec<(String, String)> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("published ")?;
            let (id, to) = rest.split_once(" to ")?;
            Some((id.to_owned(), to.to_owned()))
        })
        .collect()
}

/// The example's jobs reach the work queue safely, and the worker sends
/// exactly them.
async fn end_to_end(example: Example, name: &str) {
    let env = env(name).await;
    let events = sent_events_queue(&env).await;
    let numbers = ["+15557000001", "+15557000002", "+15557000003"];
    let since = SystemTime::now();
    let out = run(example, &env, &env.settings.amqp.routing_key, &numbers, 5).await;
    assert_eq!(out.code, 0, "{out}");
    let jobs = published(&out);
    assert_eq!(jobs.len(), 3, "{out}");
    let to: Vec<&str> = jobs.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(to, numbers);

    // In the work queue, before any worker runs: look, then give them back
    // (closing the channel returns what it took and did not ack).
    assert_eq!(env.work_depth().await, 3);
    let peek = env.conn.create_channel().await.expect("a channel");
    peek.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    for _ in 0..3 {
        let m = peek
            .basic_get(
                ShortString::from(env.settings.amqp.queue.as_str()),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get")
            .expect("a job");
        let p = &m.delivery.properties;
        let id = message_id(p);
        let (_, number) = jobs
            .iter()
            .find(|(j, _)| *j == id)
            .unwrap_or_else(|| panic!("job {id} is one the example published"));
        assert_safe_properties(p, &id, since);
        let body: serde_json::Value =
            serde_json::from_slice(&m.delivery.data).expect("a JSON body");
        assert_eq!(body["to"], number.as_str());
        if let Example::Python = example {
            // A one-time passcode expires: x-expires-at, five minutes on.
            let raw = headers::get_string(p, headers::EXPIRES_AT).expect("x-expires-at");
            let at = send_worker::job::parse_deadline(&raw).expect("RFC 3339");
            assert!(
                at >= since + Duration::from_secs(299)
                    && at <= SystemTime::now() + Duration::from_secs(301),
                "{raw}"
            );
            assert!(raw.ends_with('Z'), "{raw}");
        }
    }
    peek.close(200, ShortString::from("peeked"))
        .await
        .expect("close");

    let w = env.start();
    wait_for("3 sent events", T, || async {
        env.depth(&events).await >= 3
    })
    .await;
    w.stop().await;
    let mut sent = event_job_ids(&env, &events).await;
    sent.sort();
    let mut expected: Vec<String> = jobs.iter().map(|(j, _)| j.clone()).collect();
    expected.sort();
    assert_eq!(sent, expected, "the worker sent exactly the example's jobs");
    assert_eq!(env.sim.stats().accepted, 3);
    assert_eq!(env.dlq_depth().await, 0);
    delete_queue(&env, &events).await;
    env.cleanup().await;
}

/// Unroutable and nacked publishes: the example retries, then fails loudly.
async fn refused(example: Example, name: &str) {
    let env = env(name).await;
    let out = run(example, &env, "nobody-listens", &["+15557000009"], 2).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("unroutable"), "{out}");
    assert!(out.stderr.contains("after 2 attempts"), "{out}");
    assert!(published(&out).is_empty(), "{out}");

    let full = refusing_queue(&env, "full").await;
    let out = run(example, &env, "full", &["+15557000009"], 2).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("nacked"), "{out}");
    assert!(published(&out).is_empty(), "{out}");
    delete_queue(&env, &full).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python with pika: run scripts/examples.sh"]
async fn python_example_jobs_are_sent() {
    end_to_end(Example::Python, "example-python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python with pika: run scripts/examples.sh"]
async fn python_example_fails_on_unroutable_and_nacked_publishes() {
    refused(Example::Python, "example-python-refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with amqplib (npm ci): run scripts/examples.sh"]
async fn node_example_jobs_are_sent() {
    end_to_end(Example::Node, "example-node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with amqplib (npm ci): run scripts/examples.sh"]
async fn node_example_fails_on_unroutable_and_nacked_publishes() {
    refused(Example::Node, "example-node-refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Go example built: run scripts/examples.sh"]
async fn go_example_jobs_are_sent() {
    end_to_end(Example::Go, "example-go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Go example built: run scripts/examples.sh"]
async fn go_example_fails_on_unroutable_and_nacked_publishes() {
    refused(Example::Go, "example-go-refused").await;
}
