//! The fleet's budgets in Redis (`limiter.backend = "redis"`): the API
//! request budget and every pacing lane, each a GCRA that all replicas take
//! from, one Lua script per take, on Redis's clock.
//!
//! - The API bucket (`<prefix>:rl:api`) spends the rate the replicas' tuners
//!   learn from the headers (the latest written wins; they all watch the same
//!   account). A replica *reserves* a small batch of consecutive slots at a
//!   time (about 20 ms worth) and releases its tokens at their slots, so the
//!   fleet's requests are spaced evenly and a fast fleet pays one round trip
//!   per batch, not per message. A pause (429, spent window) is fleet-wide.
//! - A pacing lane (`<prefix>:rl:lane:<lane>`) is taken at the moment a
//!   request goes out: a slot every 1/MPS for the whole fleet.
//! - Each replica renews its entry in `<prefix>:rl:replicas` every second, so
//!   every replica knows the fleet's size.
//!
//! If Redis cannot be reached, each replica falls back to its share: the
//! fleet's rate and every lane's MPS divided by the fleet size last seen
//! (safe: together the fleet stays within the budget, each replica alone
//! below it). `/readyz` lists it under `degraded`, `send_worker_limiter_shared`
//! drops to 0, and the replica goes back to the shared budgets as soon as
//! Redis answers again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ::redis::Script;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pacing::Lane;
use super::slots::LocalSlots;
use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;
use crate::redis::Redis;

/// A batch of API slots covers about this much time.
const BATCH_SPAN: f64 = 0.02;
const MAX_BATCH: f64 = 50.0;
/// Slots are reserved at most this far ahead; beyond it a replica waits
/// without reserving (so a paused fleet does not queue up reservations).
const HORIZON_MS: f64 = 250.0;
/// How long a key outlives its last use.
const KEY_TTL_MS: u64 = 3_600_000;

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'paused_until', 'granted')
local rate = tonumber(h[2]) or tonumber(ARGV[2])
if rate <= 0 then rate = 1 end
local interval = 1000 / rate
local start = math.max(tonumber(h[1]) or now, now, tonumber(h[3]) or 0)
if start - now > tonumber(ARGV[3]) then
  return {tostring(start - now - tonumber(ARGV[3])), '0', '0', '0'}
end
local n = tonumber(ARGV[1])
local granted = (tonumber(h[4]) or 0) + n
redis.call('HSET', KEYS[1], 'tat', tostring(start + n * interval), 'granted', tostring(granted))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'0', tostring(start - now), tostring(interval), tostring(granted)}
",
    )
});

static LANE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat > now then
  return tostring(tat - now)
end
if ARGV[2] == '1' then
  -- Keep the schedule when the taker is a little late (it polls), so the
  -- fleet holds the pace; never more than half a slot of catch-up, so no
  -- second can hold more than MPS + 1.
  local iv = tonumber(ARGV[1])
  local nxt = math.max(tat + iv, now + iv / 2)
  redis.call('SET', KEYS[1], tostring(nxt), 'PX', ARGV[3])
end
return '0'
",
    )
});

static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_ms > cur then
  redis.call('HSET', KEYS[1], 'paused_until', tostring(until_ms))
end
return 1
",
    )
});

static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10000)
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
",
    )
});

/// One API token: when it may be spent, and its number in the fleet.
type Token = (Instant, u64);

pub(crate) struct Shared {
    redis: Redis,
    id: String,
    metrics: Metrics,
    state: Arc<WorkerState>,
    /// Lanes while Redis cannot be reached.
    local: LocalSlots,
    falling_back: AtomicBool,
    /// The fleet's size when last seen (at least 1).
    replicas: AtomicU64,
    tokens: tokio::sync::Mutex<VecDeque<Token>>,
    written_rate: Mutex<f64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("replicas", &self.replicas())
            .field("falling_back", &self.falling_back())
            .finish_non_exhaustive()
    }
}

fn ms(v: &str) -> f64 {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .unwrap_or(0.0)
        .max(0.0)
}

fn dur_ms(v: f64) -> Duration {
    Duration::from_secs_f64((v / 1000.0).clamp(0.0, 3600.0))
}

impl Shared {
    pub(crate) fn new(redis: Redis, metrics: Metrics, state: Arc<WorkerState>) -> Arc<Self> {
        metrics.limiter_shared.set(1);
        Arc::new(Self {
            redis,
            id: uuid::Uuid::new_v4().simple().to_string(),
            metrics,
            state,
            local: LocalSlots::default(),
            falling_back: AtomicBool::new(false),
            replicas: AtomicU64::new(1),
            tokens: tokio::sync::Mutex::new(VecDeque::new()),
            written_rate: Mutex::new(0.0),
        })
    }

    pub(crate) fn replicas(&self) -> u64 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub(crate) fn falling_back(&self) -> bool {
        self.falling_back.load(Ordering::Relaxed)
    }

    fn key(&self, kind: &str) -> String {
        self.redis.key("rl", kind)
    }

    /// Redis failed: use the local share until it answers again.
    fn fall_back(&self, e: &::redis::RedisError) {
        if !self.falling_back.swap(true, Ordering::Relaxed) {
            warn!(error = %e, replicas = self.replicas(), "Redis unreachable: the limiter falls back to this replica's share of the fleet's budgets");
            self.metrics.limiter_fallback.inc();
            self.metrics.limiter_shared.set(0);
            self.state.set_degraded(
                "limiter",
                Some(format!(
                    "limiter on its local fallback (1/{} of the fleet's budgets): Redis unreachable",
                    self.replicas()
                )),
            );
        }
    }

    fn recovered(&self) {
        if self.falling_back.swap(false, Ordering::Relaxed) {
            info!("Redis answers again: the limiter is back on the fleet's shared budgets");
            self.metrics.limiter_shared.set(1);
            self.state.set_degraded("limiter", None);
        }
    }

    /// Renew this replica's entry and learn the fleet's size; every second
    /// until `stop`. Also how a replica on the fallback notices Redis is back.
    pub(crate) async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let mut c = self.redis.conn();
            let r: Result<u64, _> = HEARTBEAT
                .key(self.key("replicas"))
                .arg(&self.id)
                .arg(5_000)
                .invoke_async(&mut c)
                .await;
            match r {
                Ok(n) => {
                    self.replicas.store(n.max(1), Ordering::Relaxed);
                    self.recovered();
                }
                Err(e) => self.fall_back(&e),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Write the fleet's API rate when it moved by more than 1 %.
    pub(crate) fn set_rate(self: &Arc<Self>, rate: f64) {
        {
            let mut w = self.written_rate.lock().unwrap_or_else(|e| e.into_inner());
            if *w > 0.0 && (rate / *w - 1.0).abs() <= 0.01 {
                return;
            }
            *w = rate;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut c = me.redis.conn();
            let r: Result<(), _> = ::redis::cmd("HSET")
                .arg(me.key("api"))
                .arg("rate")
                .arg(rate)
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                me.fall_back(&e);
                *me.written_rate.lock().unwrap_or_else(|e| e.into_inner()) = 0.0;
            }
        });
    }

    /// Pause the whole fleet for `d`.
    pub(crate) fn pause(self: &Arc<Self>, d: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut c = me.redis.conn();
            let r: Result<i64, _> = PAUSE
                .key(me.key("api"))
                .arg(d.as_secs_f64() * 1000.0)
                .invoke_async(&mut c)
                .await;
            if let Err(e) = r {
                me.fall_back(&e);
            }
        });
    }

    /// An API token from the fleet's bucket at `rate` (the rate this replica
    /// believes in, used if none is written yet): its slot has come, and its
    /// number in the fleet. `Ok(None)`: Redis failed; use the local share.
    /// `Err(())`: cancelled.
    pub(crate) async fn api_token(
        &self,
        rate: f64,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, ()> {
        let mut tokens = tokio::select! {
            _ = cancel.cancelled() => return Err(()),
            t = self.tokens.lock() => t,
        };
        if self.falling_back() {
            return Ok(None);
        }
        loop {
            if let Some((at, seq)) = tokens.pop_front() {
                drop(tokens);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(()),
                    _ = tokio::time::sleep_until(at) => {}
                }
                return Ok(Some(seq));
            }
            let n = (rate * BATCH_SPAN).clamp(1.0, MAX_BATCH).floor();
            let sent = Instant::now();
            let mut c = self.redis.conn();
            let r: Result<Vec<String>, _> = RESERVE
                .key(self.key("api"))
                .arg(n)
                .arg(rate.max(1e-3))
                .arg(HORIZON_MS)
                .arg(KEY_TTL_MS)
                .invoke_async(&mut c)
                .await;
            let v = match r {
                Ok(v) if v.len() == 4 => v,
                Ok(_) => return Ok(None),
                Err(e) => {
                    self.fall_back(&e);
                    return Ok(None);
                }
            };
            // Redis's "now" was about half a round trip ago.
            let base = sent + (Instant::now() - sent) / 2;
            let wait = ms(&v[0]);
            if wait > 0.0 {
                // Paused, or the fleet is far ahead: wait, then ask again.
                tokio::select! {
                    _ = cancel.cancelled() => return Err(()),
                    _ = tokio::time::sleep(dur_ms(wait)) => {}
                }
                continue;
            }
            let start = ms(&v[1]);
            let interval = ms(&v[2]);
            let last: u64 = v[3].parse().unwrap_or(0);
            let n = n as u64;
            for j in 0..n {
                let at = base + dur_ms(start + j as f64 * interval);
                tokens.push_back((at, last.saturating_sub(n - 1 - j)));
            }
        }
    }

    /// A lane's slot: with `take`, take it if it is free now. Returns the
    /// wait until it is free (zero: free, and taken if asked).
    pub(crate) async fn lane(&self, lane: &Lane, take: bool) -> Duration {
        if self.falling_back() {
            return self.local_lane(lane, take);
        }
        let mut c = self.redis.conn();
        let r: Result<String, _> = LANE
            .key(self.redis.key("rl:lane", &lane.key))
            .arg(1000.0 / lane.rate.max(1e-6))
            .arg(if take { "1" } else { "0" })
            .arg(KEY_TTL_MS)
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(v) => dur_ms(ms(&v)),
            Err(e) => {
                self.fall_back(&e);
                self.local_lane(lane, take)
            }
        }
    }

    fn local_lane(&self, lane: &Lane, take: bool) -> Duration {
        if take {
            self.local
                .take(&lane.key, lane.rate / self.replicas() as f64)
        } else {
            self.local.wait(&lane.key)
        }
    }
}
