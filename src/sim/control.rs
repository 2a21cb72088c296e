//! What the simulator is told: its configuration at the start
//! ([`SimConfig`]), the changes `POST /_sim/control` and
//! [`super::SimHandle::control`] make at runtime ([`SimControl`]), and the
//! configuration in force as `GET /_sim/config` shows it ([`SimConfigView`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModelKind, ResetStyle, RetryAfterStyle, Sim, millis};

/// How a simulator starts. Everything but the key can change at runtime
/// through [`SimControl`].
#[derive(Clone)]
pub struct SimConfig {
    /// Added to every answer.
    pub latency: Duration,
    /// Up to this much more, drawn uniformly for each answer.
    pub latency_jitter: Duration,
    /// The rate-limit server model (default `fixed-first`).
    pub model: ModelKind,
    /// Requests per window `L`; 0 disables the limit (the models then run
    /// with 1,000,000, and headers are still sent).
    pub limit: u64,
    /// The window `W` (at least 1 ms is sensible; 0 is read as 1 ns).
    pub window: Duration,
    /// gcra's bucket capacity (default 10; 0 is read as 1).
    pub burst: u64,
    /// Whether a refused request counts against the limit (default false).
    pub count_refused: bool,
    /// How `x-ratelimit-reset` is written (default `unix`).
    pub reset_style: ResetStyle,
    /// How `retry-after` is written on a 429 (default `seconds`).
    pub retry_after: RetryAfterStyle,
    /// When set, any other bearer token gets 401 / 10009.
    pub api_key: Option<String>,
    /// Whether answers carry `x-ratelimit-*` headers (default true). false:
    /// an API that says nothing about its limit (a 429 still carries
    /// `retry-after`), as the worker's headerless slow start expects.
    pub rate_headers: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            latency_jitter: Duration::ZERO,
            model: ModelKind::default(),
            limit: 0,
            window: Duration::from_secs(1),
            burst: 10,
            count_refused: false,
            reset_style: ResetStyle::default(),
            retry_after: RetryAfterStyle::default(),
            api_key: None,
            rate_headers: true,
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("latency", &self.latency)
            .field("latency_jitter", &self.latency_jitter)
            .field("model", &self.model)
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("burst", &self.burst)
            .field("count_refused", &self.count_refused)
            .field("reset_style", &self.reset_style)
            .field("retry_after", &self.retry_after)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("rate_headers", &self.rate_headers)
            .finish()
    }
}

/// `POST /_sim/control`: every field optional; unknown fields are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimControl {
    pub outage: Option<bool>,
    pub revoked: Option<bool>,
    pub limit: Option<u64>,
    pub latency_ms: Option<u64>,
    pub latency_jitter_ms: Option<u64>,
    /// Switching starts the new model fresh (empty counters, full bucket).
    pub model: Option<ModelKind>,
    /// 0 is read as 1.
    pub window_ms: Option<u64>,
    pub burst: Option<u64>,
    pub count_refused: Option<bool>,
    pub reset_style: Option<ResetStyle>,
    pub retry_after: Option<RetryAfterStyle>,
}

/// `GET /_sim/config`: the configuration in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimConfigView {
    pub model: ModelKind,
    /// As configured: 0 means no limit.
    pub limit: u64,
    pub window_ms: u64,
    pub burst: u64,
    pub count_refused: bool,
    pub reset_style: ResetStyle,
    pub retry_after: RetryAfterStyle,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Whether only one bearer token is accepted (the key itself is not shown).
    pub api_key_required: bool,
    pub outage: bool,
    pub revoked: bool,
    /// The simulator's start as a Unix time in milliseconds: the origin of
    /// every `at_ms` and `start_ms`.
    pub epoch_unix_ms: u64,
}

pub(super) fn apply_control(sim: &Sim, c: &SimControl) {
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
    if let Some(v) = c.latency_jitter_ms {
        cfg.latency_jitter = Duration::from_millis(v);
    }
    if let Some(v) = c.model {
        cfg.model = v;
    }
    if let Some(v) = c.window_ms {
        cfg.window = Duration::from_millis(v.max(1));
    }
    if let Some(v) = c.burst {
        cfg.burst = v;
    }
    if let Some(v) = c.count_refused {
        cfg.count_refused = v;
    }
    if let Some(v) = c.reset_style {
        cfg.reset_style = v;
    }
    if let Some(v) = c.retry_after {
        cfg.retry_after = v;
    }
    // Under the configuration's lock, so changes apply in order.
    sim.rate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .reconfigure(&cfg, sim.now_unix());
}

pub(super) fn config_view(sim: &Sim) -> SimConfigView {
    let cfg = sim.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
    SimConfigView {
        model: cfg.model,
        limit: cfg.limit,
        window_ms: millis(cfg.window),
        burst: cfg.burst,
        count_refused: cfg.count_refused,
        reset_style: cfg.reset_style,
        retry_after: cfg.retry_after,
        latency_ms: millis(cfg.latency),
        latency_jitter_ms: millis(cfg.latency_jitter),
        api_key_required: cfg.api_key.is_some(),
        outage: sim.outage.load(Ordering::SeqCst),
        revoked: sim.revoked.load(Ordering::SeqCst),
        epoch_unix_ms: millis(sim.epoch_unix),
    }
}
