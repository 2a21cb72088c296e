//! A local, Telnyx-compatible Messaging API: `POST /v2/messages` with the
//! response and error shapes of the real one, `x-ratelimit-*` headers from a
//! fixed-window limit, 429s with `retry-after`, configurable latency, and an
//! optional API key check.
//!
//! It serves `send-worker simulate`, `send-worker demo`, the tests and the
//! benchmarks. Outcomes are chosen by the destination number, so any producer
//! can script them (see [`scenario_for`]); tests can also install a
//! [`Behavior`] hook, flip an outage or revoke the key at runtime, through
//! [`SimHandle`] or `POST /_sim/control`.

mod scenarios;
mod window;

pub use scenarios::{Behavior, SimReply, scenario_for};
pub use window::SimWindow;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use scenarios::{auth_failed, error_body, success_body};
use window::Windows;

/// How the simulator's `x-ratelimit-reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetStyle {
    /// Seconds until the window resets (Telnyx's docs).
    Seconds,
    /// A unix timestamp (the send guide).
    Unix,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added to every answer.
    pub latency: Duration,
    /// Requests per window; 0 disables the limit (headers are still sent).
    pub limit: u64,
    pub window: Duration,
    pub reset_style: ResetStyle,
    /// When set, any other bearer token gets 401 / 10009.
    pub api_key: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            limit: 0,
            window: Duration::from_secs(1),
            reset_style: ResetStyle::Seconds,
            api_key: None,
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SimRequest {
    pub to: Option<String>,
    pub from: Option<String>,
    pub text: Option<String>,
    /// How many times this exact body has been received, this one included.
    pub nth: u32,
    pub status: u16,
    /// Milliseconds since the simulator started, when the request arrived
    /// and was counted (it is answered after the added latency).
    pub at_ms: u64,
    /// The request body as received (lossy UTF-8).
    pub body: String,
}

struct Sim {
    cfg: Mutex<SimConfig>,
    epoch: Instant,
    windows: Mutex<Windows>,
    seen: Mutex<HashMap<u64, u32>>,
    log: Mutex<Vec<SimRequest>>,
    total: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    outage: AtomicBool,
    revoked: AtomicBool,
    behavior: Mutex<Option<Behavior>>,
    canaries: AtomicU64,
}

/// Control and inspection of a running simulator.
#[derive(Clone)]
pub struct SimHandle {
    sim: Arc<Sim>,
    pub addr: SocketAddr,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// `GET /_sim/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimStats {
    pub requests: u64,
    pub accepted: u64,
    pub rate_limited: u64,
}

/// `POST /_sim/control`: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimControl {
    pub outage: Option<bool>,
    pub revoked: Option<bool>,
    pub limit: Option<u64>,
    pub latency_ms: Option<u64>,
}

impl SimHandle {
    /// The base URL to give the worker (`.../v2`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            requests: self.sim.total.load(Ordering::SeqCst),
            accepted: self.sim.accepted.load(Ordering::SeqCst),
            rate_limited: self.sim.rate_limited.load(Ordering::SeqCst),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SimRequest> {
        self.sim
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests whose `text` is `text`.
    pub fn requests_with_text(&self, text: &str) -> Vec<SimRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.text.as_deref() == Some(text))
            .collect()
    }

    /// Canary requests (`GET /v2/messages/{id}`) so far.
    pub fn canaries(&self) -> u64 {
        self.sim.canaries.load(Ordering::SeqCst)
    }

    pub fn control(&self, c: &SimControl) {
        apply_control(&self.sim, c);
    }

    pub fn set_behavior(&self, b: Option<Behavior>) {
        *self.sim.behavior.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// Every rate-limit window so far, oldest first, the current one last.
    /// Windows start at the first request after the previous one ended.
    pub fn windows(&self) -> Vec<SimWindow> {
        self.sim
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all(self.sim.epoch)
    }

    /// Milliseconds since the simulator started (the clock of
    /// [`SimRequest::at_ms`] and [`SimWindow::start_ms`]).
    pub fn now_ms(&self) -> u64 {
        millis_since(self.sim.epoch)
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn apply_control(sim: &Sim, c: &SimControl) {
    if let Some(v) = c.outage {
        sim.outage.store(v, Ordering::SeqCst);
    }
    if let Some(v) = c.revoked {
        sim.revoked.store(v, Ordering::SeqCst);
    }
    let mut cfg = sim.cfg.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = c.limit {
        cfg.limit = v;
    }
    if let Some(v) = c.latency_ms {
        cfg.latency = Duration::from_millis(v);
    }
}

/// Start on `addr` (port 0 picks one); stops when `shutdown` is cancelled.
pub async fn start(
    addr: SocketAddr,
    cfg: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SimHandle> {
    let sim = Arc::new(Sim {
        cfg: Mutex::new(cfg),
        epoch: Instant::now(),
        windows: Mutex::new(Windows::default()),
        seen: Mutex::new(HashMap::new()),
        log: Mutex::new(Vec::new()),
        total: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        outage: AtomicBool::new(false),
        revoked: AtomicBool::new(false),
        behavior: Mutex::new(None),
        canaries: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v2/messages", post(send_message))
        .route("/v2/messages/{id}", get(get_message))
        .route("/_sim/stats", get(stats))
        .route("/_sim/requests", get(requests))
        .route("/_sim/control", post(control))
        .with_state(sim.clone());
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(SimHandle { sim, addr: local })
}

async fn stats(State(sim): State<Arc<Sim>>) -> impl IntoResponse {
    axum::Json(SimStats {
        requests: sim.total.load(Ordering::SeqCst),
        accepted: sim.accepted.load(Ordering::SeqCst),
        rate_limited: sim.rate_limited.load(Ordering::SeqCst),
    })
}

async fn requests(State(sim): State<Arc<Sim>>) -> impl IntoResponse {
    let log = sim.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(log)
}

async fn control(
    State(sim): State<Arc<Sim>>,
    axum::Json(c): axum::Json<SimControl>,
) -> impl IntoResponse {
    apply_control(&sim, &c);
    StatusCode::NO_CONTENT
}

fn hash(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// `GET /v2/messages/{id}`: the circuit breaker's canary. The simulator
/// keeps no messages, so a working API answers 404 (Telnyx's error shape);
/// an outage answers 503 and a revoked or wrong key 401, as for sends. Not
/// counted against the rate limit (only sends are).
async fn get_message(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let cfg = sim.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
    sim.canaries.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let r = if sim.revoked.load(Ordering::SeqCst)
        || cfg.api_key.as_deref().is_some_and(|k| k != token)
        || token.is_empty()
    {
        auth_failed()
    } else if sim.outage.load(Ordering::SeqCst) {
        SimReply::error(
            503,
            "10006",
            "Service unavailable",
            "The service is temporarily unavailable.",
        )
    } else {
        SimReply::error(
            404,
            "10005",
            "Resource not found",
            "The requested resource or URL could not be found.",
        )
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(error_body(&r))).into_response()
}

async fn send_message(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = sim.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Like the real API, the request is decided and counted the moment it
    // arrives, and answered after the latency: a client that gives up (or
    // dies) meanwhile has still had its message accepted.
    sim.total.fetch_add(1, Ordering::SeqCst);
    let nth = {
        let mut seen = sim.seen.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.entry(hash(&body)).or_insert(0);
        *n += 1;
        *n
    };
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut req = SimRequest {
        to: field("to"),
        from: field("from"),
        text: field("text"),
        nth,
        status: 0,
        at_ms: 0,
        body: String::from_utf8_lossy(&body).into_owned(),
    };

    let (allowed, limit) = sim
        .windows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&cfg, sim.epoch);
    req.at_ms = millis_since(sim.epoch);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let behavior = sim
        .behavior
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    let reply: Option<SimReply> = if sim.revoked.load(Ordering::SeqCst)
        || cfg.api_key.as_deref().is_some_and(|k| k != token)
        || token.is_empty()
    {
        Some(auth_failed())
    } else if sim.outage.load(Ordering::SeqCst) {
        Some(SimReply::error(
            503,
            "10006",
            "Service unavailable",
            "The service is temporarily unavailable.",
        ))
    } else if !allowed {
        Some(SimReply {
            retry_after: Some(limit.reset_in.as_secs_f64().ceil().max(1.0) as u64),
            ..SimReply::error(429, "10011", "Too many requests", "Rate limit exceeded.")
        })
    } else if parsed.as_ref().is_none_or(|v| !v.is_object()) {
        Some(SimReply::error(
            400,
            "10015",
            "Bad Request",
            "The request body is not a JSON object.",
        ))
    } else if let Some(r) = behavior.as_ref().and_then(|b| b(&req)) {
        Some(r)
    } else if req.to.is_none() {
        Some(SimReply::error(
            400,
            "10004",
            "Missing required parameter",
            "The 'to' parameter is required.",
        ))
    } else {
        req.to.as_deref().and_then(|to| scenario_for(to, nth))
    };

    let mut out_headers = HeaderMap::new();
    limit.apply(&mut out_headers);
    let response = match reply {
        Some(r) => {
            if r.status == 429 {
                sim.rate_limited.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(s) = r.retry_after {
                out_headers.insert("retry-after", HeaderValue::from(s));
            }
            req.status = r.status;
            let status =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, out_headers, axum::Json(error_body(&r))).into_response()
        }
        None => {
            sim.accepted.fetch_add(1, Ordering::SeqCst);
            req.status = 200;
            let body = success_body(parsed.as_ref().unwrap_or(&Value::Null));
            (StatusCode::OK, out_headers, axum::Json(body)).into_response()
        }
    };
    sim.log.lock().unwrap_or_else(|e| e.into_inner()).push(req);
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    response
}
