//! The simulator through HTTP: a real server on a loopback port, driven with
//! reqwest, its rate-limit headers and statuses read back, and its models
//! switched through `POST /_sim/control`. Windows are an hour or longer, so
//! nothing here depends on how fast the machine is.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::telnyx;

const HOUR_MS: u64 = 3_600_000;

struct Served {
    handle: SimHandle,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Served {
    async fn start(cfg: SimConfig) -> Served {
        let stop = CancellationToken::new();
        let handle = start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg, stop.clone())
            .await
            .unwrap();
        Served {
            handle,
            http: reqwest::Client::new(),
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.addr)
    }

    async fn send(&self) -> reqwest::Response {
        self.http
            .post(self.url("/v2/messages"))
            .bearer_auth("key")
            .json(&json!({"from": "+15550000000", "to": "+15551234567", "text": "hi"}))
            .send()
            .await
            .unwrap()
    }

    async fn control(&self, body: Value) -> StatusCode {
        self.http
            .post(self.url("/_sim/control"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn num(r: &reqwest::Response, name: &str) -> u64 {
    header(r, name).parse().unwrap()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn sim_answers_with_rate_limit_headers_and_a_telnyx_429_over_http() {
    let s = Served::start(SimConfig {
        latency: Duration::ZERO,
        limit: 3,
        window: Duration::from_millis(HOUR_MS),
        ..SimConfig::default()
    })
    .await;
    let before = unix_secs();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = s.send().await;
        seen.push((
            r.status().as_u16(),
            num(&r, "x-ratelimit-limit"),
            num(&r, "x-ratelimit-remaining"),
        ));
        // The default reset style: a Unix time in whole seconds, rounded up,
        // an hour after the window's first request.
        let reset = num(&r, "x-ratelimit-reset");
        assert!(
            reset > before + 3_599 && reset <= unix_secs() + 3_601,
            "{reset}"
        );
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            // Whole seconds until the window ends, rounded up.
            let wait: u64 = header(&r, "retry-after").parse().unwrap();
            assert!(wait > 3_500 && wait <= 3_600, "{wait}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "10011");
        }
    }
    assert_eq!(
        seen,
        [(200, 3, 2), (200, 3, 1), (200, 3, 0), (429, 3, 0)],
        "(status, limit, remaining)"
    );
    let windows = s.get("/_sim/windows").await;
    assert_eq!(windows.as_array().unwrap().len(), 1, "{windows}");
    assert_eq!(windows[0]["used"], 3);
    assert_eq!(windows[0]["rejected"], 1);
    assert_eq!(windows[0]["model"], "fixed-first");
    assert_eq!(s.handle.stats().rate_limited, 1);
    let config = s.get("/_sim/config").await;
    assert_eq!(config["model"], "fixed-first");
    assert_eq!(config["reset_style"], "unix");
    assert_eq!(config["retry_after"], "seconds");
    assert_eq!(config["burst"], 10);
    assert_eq!(config["api_key_required"], false);
    assert_eq!(config["epoch_unix_ms"], s.handle.epoch_unix_ms());
}

#[tokio::test]
async fn sim_control_switches_models_and_header_styles() {
    let s = Served::start(SimConfig {
        latency: Duration::ZERO,
        limit: 100,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(s.send().await.status(), StatusCode::OK);

    // gcra: 1 per hour, burst 2, reset in seconds, retry-after as a date.
    let c = json!({"model": "gcra", "limit": 1, "window_ms": HOUR_MS, "burst": 2,
                   "reset_style": "seconds", "retry_after": "http-date"});
    assert_eq!(s.control(c).await, StatusCode::NO_CONTENT);
    let (a, b, refused) = (s.send().await, s.send().await, s.send().await);
    let statuses = [a.status(), b.status(), refused.status()].map(|s| s.as_u16());
    assert_eq!(statuses, [200, 200, 429]);
    // The headers describe the bucket: capacity 2, whole tokens left, and the
    // time until it is full again (one hour per token spent).
    assert_eq!(num(&a, "x-ratelimit-limit"), 2);
    assert_eq!(num(&a, "x-ratelimit-remaining"), 1);
    assert_eq!(num(&a, "x-ratelimit-reset"), 3_600);
    assert_eq!(num(&b, "x-ratelimit-remaining"), 0);
    let full_in = num(&b, "x-ratelimit-reset");
    assert!(full_in > 7_100 && full_in <= 7_200, "{full_in}");
    let date = header(&refused, "retry-after");
    assert!(date.ends_with(" GMT"), "{date}");
    let wait = telnyx::retry_after(refused.headers(), SystemTime::now()).unwrap();
    assert!(
        wait > Duration::from_secs(3_500) && wait <= Duration::from_secs(3_601),
        "{date}: {wait:?}"
    );

    // sliding, refusals counted, reset in Unix milliseconds: a fresh log.
    let c = json!({"model": "sliding", "limit": 2, "count_refused": true,
                   "reset_style": "unix-ms", "retry_after": "seconds"});
    assert_eq!(s.control(c).await, StatusCode::NO_CONTENT);
    let before_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let rs = [s.send().await, s.send().await, s.send().await];
    assert_eq!(rs.each_ref().map(|r| r.status().as_u16()), [200, 200, 429]);
    // An hour after the first request, in ms (1 s of slack for the
    // simulator's clock, which is the system clock read at its start).
    let reset = num(&rs[0], "x-ratelimit-reset");
    assert!(reset + 1_000 >= before_ms + HOUR_MS, "{reset} ms");
    assert!(reset <= before_ms + HOUR_MS + 60_000, "{reset} ms");
    assert!(num(&rs[2], "retry-after") <= 3_600);

    // fixed-clock: windows on multiples of the hour since the epoch, so the
    // Unix reset is one (nothing is rounded: it is a whole second already).
    let c = json!({"model": "fixed-clock", "limit": 1, "reset_style": "unix"});
    assert_eq!(s.control(c).await, StatusCode::NO_CONTENT);
    let (a, b) = (s.send().await, s.send().await);
    let (ra, rb) = (num(&a, "x-ratelimit-reset"), num(&b, "x-ratelimit-reset"));
    assert_eq!(ra % 3_600, 0, "{ra}");
    if ra == rb {
        assert_eq!(b.status(), StatusCode::TOO_MANY_REQUESTS);
    } else {
        // The hour turned between the two requests (a window edge, once an
        // hour): the second one opened the next window.
        assert_eq!((b.status(), rb), (StatusCode::OK, ra + 3_600));
    }

    let config = s.handle.config();
    assert_eq!(
        (config.model, config.limit, config.window_ms, config.burst),
        (ModelKind::FixedClock, 1, HOUR_MS, 2)
    );
    assert!(config.count_refused);
    let models: Vec<Value> = s.get("/_sim/windows").await.as_array().unwrap().to_vec();
    let models: Vec<&str> = models
        .iter()
        .map(|w| w["model"].as_str().unwrap())
        .collect();
    assert_eq!(models[..3], ["fixed-first", "gcra", "sliding"]);
    assert_eq!(models[3], "fixed-clock");

    // Typos and unknown models are refused, and change nothing.
    assert!(s.control(json!({"modle": "gcra"})).await.is_client_error());
    assert!(s.control(json!({"model": "leaky"})).await.is_client_error());
    assert_eq!(s.handle.config().model, ModelKind::FixedClock);
}

#[test]
fn jitter_stays_within_its_bound() {
    assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    let max = Duration::from_millis(5);
    let draws: Vec<Duration> = (0..2_000).map(|_| jitter(max)).collect();
    assert!(draws.iter().all(|d| *d <= max));
    // Uniform, so both halves are drawn.
    assert!(draws.iter().any(|d| *d < max / 2) && draws.iter().any(|d| *d > max / 2));
}

#[test]
fn the_config_debug_print_hides_the_api_key() {
    let cfg = SimConfig {
        api_key: Some("sekrit-key".to_owned()),
        ..SimConfig::default()
    };
    let printed = format!("{cfg:?}");
    assert!(!printed.contains("sekrit"), "{printed}");
    assert!(printed.contains("redacted"));
}
