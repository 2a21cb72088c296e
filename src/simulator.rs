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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::encoding;

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
    /// Milliseconds since the simulator started, when the request was
    /// counted against the rate limit (after the added latency).
    pub at_ms: u64,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct SimReply {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl SimReply {
    pub fn error(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }
}

/// A hook that may answer a request instead of the built-in scenarios.
pub type Behavior = Arc<dyn Fn(&SimRequest) -> Option<SimReply> + Send + Sync>;

/// The built-in scenarios, by destination number. Any other number succeeds.
///
/// | `to` | answer |
/// |---|---|
/// | +19990000400 | 400 / 10015 bad request (permanent) |
/// | +19990000403 | 403 / 40300 blocked by STOP (permanent) |
/// | +19990000422 | 422 / 40310 invalid `to` (permanent) |
/// | +19990000401 | 401 / 10009 authentication failed (account-wide) |
/// | +19990000402 | 402 / 20100 insufficient funds (account-wide) |
/// | +19990000500 | 500 on every attempt (transient forever) |
/// | +19990000503 | 503 on the first 2 tries of a body, then 200 |
/// | +19990000318 | 403 / 40318 queue full on the first try, then 200 |
/// | +19990000429 | 429 / 10011 with retry-after 1 on the first try, then 200 |
pub fn scenario_for(to: &str, nth: u32) -> Option<SimReply> {
    match to {
        "+19990000400" => Some(SimReply::error(
            400,
            "10015",
            "Bad Request",
            "The request failed because it was not well-formed.",
        )),
        "+19990000403" => Some(SimReply::error(
            403,
            "40300",
            "Blocked due to STOP message",
            "Messages cannot be sent from the from number to the to number because the recipient replied STOP.",
        )),
        "+19990000422" => Some(SimReply::error(
            422,
            "40310",
            "Invalid 'to' address",
            "The 'to' address is not a valid destination.",
        )),
        "+19990000401" => Some(auth_failed()),
        "+19990000402" => Some(SimReply::error(
            402,
            "20100",
            "Insufficient funds",
            "The account balance is too low to send messages.",
        )),
        "+19990000500" => Some(SimReply::error(
            500,
            "10007",
            "Unexpected error",
            "An unexpected error occurred.",
        )),
        "+19990000503" if nth <= 2 => Some(SimReply::error(
            503,
            "10006",
            "Service unavailable",
            "The service is temporarily unavailable.",
        )),
        "+19990000318" if nth <= 1 => Some(SimReply::error(
            403,
            "40318",
            "Message queue full",
            "The sending queue for this number is full; try again later.",
        )),
        "+19990000429" if nth <= 1 => Some(SimReply {
            retry_after: Some(1),
            ..SimReply::error(429, "10011", "Too many requests", "Rate limit exceeded.")
        }),
        _ => None,
    }
}

fn auth_failed() -> SimReply {
    SimReply::error(
        401,
        "10009",
        "Authentication failed",
        "The API key was not accepted.",
    )
}

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    used: u64,
    rejected: u64,
    limit: u64,
}

/// One fixed rate-limit window, as the simulator counted it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimWindow {
    /// Milliseconds since the simulator started.
    pub start_ms: u64,
    /// The limit when the window ended (or now, for the current one).
    pub limit: u64,
    /// Requests counted against the limit.
    pub used: u64,
    /// Requests refused with 429 because the window was spent.
    pub rejected: u64,
}

struct Sim {
    cfg: Mutex<SimConfig>,
    epoch: Instant,
    window: Mutex<Window>,
    /// Windows that have ended, oldest first.
    windows: Mutex<Vec<SimWindow>>,
    seen: Mutex<HashMap<u64, u32>>,
    log: Mutex<Vec<SimRequest>>,
    total: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    outage: AtomicBool,
    revoked: AtomicBool,
    behavior: Mutex<Option<Behavior>>,
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

    pub fn control(&self, c: &SimControl) {
        apply_control(&self.sim, c);
    }

    pub fn set_behavior(&self, b: Option<Behavior>) {
        *self.sim.behavior.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// Every rate-limit window so far, oldest first, the current one last.
    /// Windows start at the first request after the previous one ended.
    pub fn windows(&self) -> Vec<SimWindow> {
        let mut out = self
            .sim
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let w = self.sim.window.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = window_record(&self.sim, &w) {
            out.push(current);
        }
        out
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

fn window_record(sim: &Sim, w: &Window) -> Option<SimWindow> {
    let started = w.started?;
    Some(SimWindow {
        start_ms: u64::try_from(started.saturating_duration_since(sim.epoch).as_millis())
            .unwrap_or(u64::MAX),
        limit: w.limit,
        used: w.used,
        rejected: w.rejected,
    })
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
        window: Mutex::new(Window::default()),
        windows: Mutex::new(Vec::new()),
        seen: Mutex::new(HashMap::new()),
        log: Mutex::new(Vec::new()),
        total: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        outage: AtomicBool::new(false),
        revoked: AtomicBool::new(false),
        behavior: Mutex::new(None),
    });
    let app = Router::new()
        .route("/v2/messages", post(send_message))
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

struct Limit {
    limit: u64,
    remaining: u64,
    reset_in: Duration,
    reset_style: ResetStyle,
}

impl Limit {
    fn apply(&self, headers: &mut HeaderMap) {
        let reset = match self.reset_style {
            ResetStyle::Seconds => self.reset_in.as_secs_f64().ceil() as u64,
            ResetStyle::Unix => (SystemTime::now() + self.reset_in)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs_f64().ceil() as u64),
        };
        for (name, value) in [
            ("x-ratelimit-limit", self.limit),
            ("x-ratelimit-remaining", self.remaining),
            ("x-ratelimit-reset", reset),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

/// Take one request from the fixed window; `None` when it is exhausted.
fn take(sim: &Sim, cfg: &SimConfig) -> (bool, Limit) {
    let mut w = sim.window.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let limit = if cfg.limit == 0 { 1_000_000 } else { cfg.limit };
    let started = match w.started {
        Some(s) if now.duration_since(s) < cfg.window => s,
        _ => {
            if let Some(done) = window_record(sim, &w) {
                let mut windows = sim.windows.lock().unwrap_or_else(|e| e.into_inner());
                // A bounded history: enough for any benchmark run.
                if windows.len() >= 100_000 {
                    windows.remove(0);
                }
                windows.push(done);
            }
            w.started = Some(now);
            w.used = 0;
            w.rejected = 0;
            now
        }
    };
    w.limit = limit;
    let reset_in = cfg.window.saturating_sub(now.duration_since(started));
    let ok = w.used < limit;
    if ok {
        w.used += 1;
    } else {
        w.rejected += 1;
    }
    (
        ok,
        Limit {
            limit,
            remaining: limit.saturating_sub(w.used),
            reset_in,
            reset_style: cfg.reset_style,
        },
    )
}

fn error_body(r: &SimReply) -> Value {
    json!({"errors": [{
        "code": r.code,
        "title": r.title,
        "detail": r.detail,
        "meta": {"url": format!("https://developers.telnyx.com/docs/messaging/messages/error-codes#{}", r.code)}
    }]})
}

async fn send_message(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = sim.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
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
    };

    let (allowed, limit) = take(&sim, &cfg);
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
    response
}

fn success_body(req: &Value) -> Value {
    let text = req.get("text").and_then(Value::as_str).unwrap_or("");
    let media = req
        .get("media_urls")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let seg = encoding::segments(text);
    let mms = media > 0 || req.get("type").and_then(Value::as_str) == Some("MMS");
    let parts = if mms { 1 } else { seg.parts };
    let cost = if mms { 0.015 } else { 0.004 * f64::from(parts) };
    json!({"data": {
        "record_type": "message",
        "direction": "outbound",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": if mms { "MMS" } else { "SMS" },
        "messaging_profile_id": req.get("messaging_profile_id").cloned().unwrap_or(Value::Null),
        "from": {"phone_number": req.get("from").cloned().unwrap_or(Value::Null), "carrier": "Telnyx", "line_type": "Wireless"},
        "to": [{"phone_number": req.get("to").cloned().unwrap_or(Value::Null), "status": "queued", "carrier": "CARRIER", "line_type": "Wireless"}],
        "text": text,
        "media": req.get("media_urls").cloned().unwrap_or(json!([])),
        "encoding": match seg.encoding { encoding::Encoding::Gsm7 => "GSM-7", encoding::Encoding::Ucs2 => "UCS-2" },
        "parts": parts,
        "cost": {"amount": format!("{cost:.4}"), "currency": "USD"},
        "errors": [],
        "valid_until": null,
        "webhook_url": req.get("webhook_url").cloned().unwrap_or(Value::Null),
    }})
}
