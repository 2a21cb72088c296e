//! The ops endpoints of a real running worker: /healthz, /readyz (and
//! `send-worker probe` against it) and a /metrics scrape that must export
//! every family in deploy/metrics-contract.txt.

use std::net::SocketAddr;
use std::time::Duration;

use send_worker::sim::SimConfig;
use send_worker::testkit::{TestEnv, sms, wait_for};
use tokio_util::sync::CancellationToken;

/// `send-worker probe --url URL`: its exit code, and what it printed. Async:
/// the server it probes runs on this test's runtime.
async fn probe(url: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_send-worker"))
        .args(["probe", "--url", url])
        .output()
        .await
        .expect("run send-worker probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn contract() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metrics-contract.txt");
    std::fs::read_to_string(path)
        .expect("deploy/metrics-contract.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_running_worker_serves_health_readiness_and_every_contracted_metric() {
    let env = TestEnv::new("ops", SimConfig::default(), |_| {}).await;
    let worker = env.worker();
    let stop = CancellationToken::new();
    let (addr, server) = send_worker::ops::http::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        worker.metrics.clone(),
        worker.state.clone(),
        stop.clone(),
    )
    .await
    .expect("bind");
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let c = client.clone();
        async move {
            let r = c
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };

    // Before the worker connects: alive, not ready, and it says why.
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).expect("readyz is JSON");
    assert_eq!(v["ready"], false);
    assert!(v["reasons"].to_string().contains("not connected"), "{body}");
    let readyz = format!("http://{addr}/readyz");
    let (code, text) = probe(&readyz).await;
    assert_eq!(code, Some(1), "probe exits 1 on 503: {text}");
    assert!(
        text.contains("503") && text.contains("not connected"),
        "{text}"
    );
    let (code, text) = probe("http://127.0.0.1:1/readyz").await;
    assert_eq!(code, Some(1), "and when nothing listens: {text}");

    env.publish("m-ok", &sms("+15559876543", "ok")).await;
    env.publish("m-bad", &sms("+19990000403", "blocked")).await;
    env.publish("m-flaky", &sms("+19990000503", "flaky")).await;
    let running = env.start_worker(worker.clone());
    wait_for("ready", Duration::from_secs(20), || async {
        get("/readyz").await.0 == 200
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&get("/readyz").await.1).expect("JSON");
    assert_eq!(v["ready"], true);
    assert_eq!(v["consuming"], true);
    assert_eq!(v["store_available"], true);
    assert_eq!(v["degraded"], serde_json::json!([]));
    let (code, text) = probe(&readyz).await;
    assert_eq!(code, Some(0), "probe exits 0 on 200: {text}");
    assert!(text.contains("\"ready\":true"), "{text}");

    // The simulator counts a send when it arrives; the worker settles it
    // after the answer: wait for the worker's own count. Idle from here on,
    // so no job's store call overwrites the states set below.
    wait_for("2 sends settled", Duration::from_secs(20), || async {
        get("/metrics")
            .await
            .1
            .contains(r#"send_worker_outcomes_total{reason="ok",result="sent"} 2"#)
    })
    .await;
    // Telnyx's health is not the pod's readiness: an open circuit and a
    // 429 pause leave /readyz at 200 and show in the body. A job store
    // that cannot be used makes the pod unready, with the reason.
    worker
        .state
        .set_circuit(send_worker::ops::state::Circuit::Open);
    worker.state.set_paused(true);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["circuit"], "open");
    assert_eq!(v["rate_limit_paused"], true);
    assert_eq!(v["degraded"].as_array().map(Vec::len), Some(2), "{body}");
    worker
        .state
        .set_circuit(send_worker::ops::state::Circuit::Closed);
    worker.state.set_paused(false);
    worker
        .state
        .set_store_unavailable(Some("Redis timed out".into()));
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("job store unavailable: Redis timed out"),
        "{body}"
    );
    assert_eq!(probe(&readyz).await.0, Some(1));
    worker.state.set_store_unavailable(None);
    assert_eq!(get("/readyz").await.0, 200);

    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    for family in contract() {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} is in deploy/metrics-contract.txt but not in a real scrape"
        );
    }
    for line in [
        r#"send_worker_outcomes_total{reason="ok",result="sent"} 2"#,
        r#"send_worker_outcomes_total{reason="permanent",result="dead_lettered"} 1"#,
        "send_worker_consuming 1",
        "send_worker_broker_connected 1",
        "send_worker_jobs_consumed_total",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains(send_worker::testkit::API_KEY),
        "the API key must never reach /metrics"
    );
    assert!(!text.contains("+1999"), "no phone numbers in labels");

    running.stop().await;
    let v: serde_json::Value = serde_json::from_str(&get("/readyz").await.1).expect("JSON");
    assert_eq!(v["ready"], false, "not ready after stopping");
    stop.cancel();
    let _ = server.await;
    env.cleanup().await;
}
