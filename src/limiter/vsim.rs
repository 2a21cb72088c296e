//! Test support: the tuner and the token bucket it sets, against the
//! simulator's server models ([`crate::sim::models`]), stepped in virtual
//! time. Headers are written by the simulator's own code and read by the
//! worker's, so a run here is a run against the simulator, minus the
//! network, the scheduler and the wall clock: seconds of traffic in
//! milliseconds, deterministic (a fixed seed for the latency jitter).
//!
//! Clients are always backlogged. Each has the tuner and the worker's own
//! [`ApiBucket`] on a fake clock (burst `limiter.burst`, retuned as
//! `RateControl` retunes it). In fleet mode the clients share one bucket,
//! as the Redis script spaces the replicas' slots, and every tuner hears of
//! every send.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use governor::clock::FakeRelativeClock;

use super::ApiBucket;
use super::headers::RateLimitHeaders;
use super::tuner::{Model, Observation, Tuner};
use crate::config::LimiterSettings;
use crate::sim::headers::{rate_limit, retry_after};
use crate::sim::models::{ModelKind, Params, RateModel};
use crate::sim::{ResetStyle, RetryAfterStyle};

/// One run's setup.
#[derive(Debug, Clone)]
pub struct Cell {
    pub model: ModelKind,
    pub limit: u64,
    pub window: f64,
    pub burst: u64,
    pub count_refused: bool,
    pub reset: ResetStyle,
    pub retry: RetryAfterStyle,
    pub latency: f64,
    pub jitter: f64,
    pub clients: usize,
    /// Share one bucket (the Redis limiter) rather than one each.
    pub fleet: bool,
    /// `(at, new limit)`.
    pub changes: Vec<(f64, u64)>,
    /// `(at, active clients)`: replicas joining and leaving.
    pub membership: Vec<(f64, usize)>,
    pub duration: f64,
    pub settings: LimiterSettings,
}

impl Cell {
    pub fn new(model: ModelKind, limit: u64, latency_ms: u64) -> Self {
        Self {
            model,
            limit,
            window: 1.0,
            burst: 10,
            count_refused: false,
            reset: ResetStyle::Unix,
            retry: RetryAfterStyle::Seconds,
            latency: latency_ms as f64 / 1000.0,
            jitter: 0.0,
            clients: 1,
            fleet: false,
            changes: Vec::new(),
            membership: Vec::new(),
            duration: 20.0,
            settings: settings(),
        }
    }
}

pub fn settings() -> LimiterSettings {
    LimiterSettings {
        initial_rate: 50.0,
        min_rate: 1.0,
        max_rate: 5000.0,
        burst: 10,
        headroom: 0.015,
        max_pause_secs: 60,
        ..LimiterSettings::default()
    }
}

/// One window as the server counted it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: f64,
    pub limit: u64,
    pub allowed: u64,
    pub refused: u64,
}

#[derive(Debug)]
pub struct Report {
    pub windows: Vec<Window>,
    pub models: Vec<Model>,
    pub rates: Vec<f64>,
}

impl Report {
    /// Windows after the first, before the last (partial) one, and not
    /// within `settle` seconds after a limit change.
    pub fn steady(&self, cell: &Cell, settle: f64) -> Vec<Window> {
        let n = self.windows.len();
        self.windows
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                *i >= 1
                    && *i + 1 < n
                    && !cell
                        .changes
                        .iter()
                        .any(|(t, _)| w.start + cell.window > *t && w.start < *t + settle)
                    && !cell
                        .membership
                        .iter()
                        .any(|(t, _)| w.start + cell.window > *t && w.start < *t + settle)
            })
            .map(|(_, w)| *w)
            .collect()
    }

    /// Allowed requests over the limit, across `ws`.
    pub fn utilisation(ws: &[Window]) -> f64 {
        let used: u64 = ws.iter().map(|w| w.allowed).sum();
        let limit: u64 = ws.iter().map(|w| w.limit).sum();
        used as f64 / limit.max(1) as f64
    }

    /// 429s after the first window, over requests after the first window.
    pub fn refused_share(&self) -> f64 {
        let w = &self.windows[1.min(self.windows.len())..];
        let refused: u64 = w.iter().map(|w| w.refused).sum();
        let all: u64 = w.iter().map(|w| w.allowed + w.refused).sum();
        refused as f64 / all.max(1) as f64
    }

    /// Seconds from the limit change at `at` until the windows stay at
    /// 97 % or more of the new limit with no 429 (until `until`).
    pub fn reconvergence(&self, at: f64, until: f64, window: f64) -> Option<f64> {
        let after: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| w.start >= at - window && w.start + window <= until)
            .collect();
        (0..after.len())
            .find(|i| {
                after[*i..]
                    .iter()
                    .all(|w| w.refused == 0 && w.allowed as f64 >= 0.97 * w.limit as f64)
            })
            .map(|i| (after[i].start - at).max(0.0))
    }
}

struct Client {
    tuner: Tuner,
    bucket: Local,
    gate: f64,
    /// A pause was waited out: the next take starts a fresh schedule, as
    /// `RateControl::api_token` does.
    waited: bool,
    pending: VecDeque<(f64, Observation)>,
}

/// The worker's own [`ApiBucket`] on a fake clock that follows virtual time.
struct Local {
    bucket: ApiBucket<FakeRelativeClock>,
    clock: FakeRelativeClock,
    at: f64,
}

impl Local {
    fn new(rate: f64, burst: u32) -> Self {
        let clock = FakeRelativeClock::default();
        Self {
            bucket: ApiBucket::new(rate, burst, clock.clone()),
            clock,
            at: 0.0,
        }
    }

    fn sync(&mut self, t: f64) {
        if t > self.at {
            self.clock.advance(dur(t - self.at));
            self.at = t;
        }
    }

    fn try_take(&mut self, t: f64) -> bool {
        self.sync(t);
        self.bucket.try_acquire().is_ok()
    }

    /// A new rate, with `RateControl::set_rate`'s thresholds.
    fn set_rate(&mut self, r: f64, t: f64) {
        let current = self.bucket.rate();
        if r <= current * 1.02 && r >= current * 0.99 {
            return;
        }
        self.sync(t);
        self.bucket.set_rate(r);
    }

    /// The end of a pause, as `RateControl::api_token` handles it.
    fn restart(&mut self, t: f64) {
        self.sync(t);
        self.bucket.set_rate(self.bucket.rate());
    }
}

/// The fleet's bucket as the Redis script spaces its slots (a burst of one,
/// never earlier than a pause's end).
#[derive(Clone, Copy)]
struct Bucket {
    rate: f64,
    burst: f64,
    tat: f64,
}

impl Bucket {
    fn ready(&self, t: f64) -> bool {
        t >= self.tat - (self.burst - 1.0) / self.rate
    }

    fn take(&mut self, t: f64) {
        self.tat = self.tat.max(t) + 1.0 / self.rate;
    }

    /// A new rate, written when it moved (as `RateControl::set_rate`).
    fn set_rate(&mut self, r: f64, t: f64) {
        if r <= self.rate * 1.02 && r >= self.rate * 0.99 {
            return;
        }
        self.rate = r;
        self.tat = self.tat.max(t + (self.burst - 1.0) / self.rate);
    }
}

/// A tiny deterministic RNG for the jitter.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const STEP: f64 = 0.000_25;
/// The virtual clock's Unix time at t = 0 (not on a second boundary).
const EPOCH: f64 = 1_800_000_000.37;

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Run `cell`.
pub fn run(cell: &Cell) -> Report {
    let mut server = RateModel::new(
        cell.model,
        Params::new(cell.limit, dur(cell.window), cell.burst, cell.count_refused),
    );
    let s = &cell.settings;
    let new_client = || Client {
        tuner: Tuner::new(s),
        bucket: Local::new(s.initial_rate, s.burst),
        gate: 0.0,
        waited: false,
        pending: VecDeque::new(),
    };
    let mut clients: Vec<Client> = (0..cell.clients).map(|_| new_client()).collect();
    let mut fleet = Bucket {
        rate: s.initial_rate,
        burst: 1.0,
        tat: 0.0,
    };
    let mut fleet_gate = 0.0f64;
    let mut active = cell.clients;
    let mut seq = vec![0u64; cell.clients.max(8)];
    let mut fleet_seq = 0u64;
    let mut rr = 0usize;
    let mut rng = Lcg(7);
    let mut windows: BTreeMap<u128, Window> = BTreeMap::new();
    let mut changes = cell.changes.clone();
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut membership = cell.membership.clone();
    membership.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut models = Vec::new();
    let mut rates = Vec::new();
    let mut t = 0.0;
    while t < cell.duration {
        while let Some((at, l)) = changes.first().copied()
            && at <= t
        {
            let p = Params::new(l, dur(cell.window), cell.burst, cell.count_refused);
            server.reconfigure(cell.model, p, dur(EPOCH + t));
            changes.remove(0);
        }
        while let Some((at, n)) = membership.first().copied()
            && at <= t
        {
            while clients.len() < n {
                clients.push(new_client());
                seq.push(0);
            }
            active = n;
            membership.remove(0);
        }
        // Answers that have arrived.
        for (i, c) in clients.iter_mut().enumerate().take(active) {
            while c.pending.front().is_some_and(|(arrive, _)| *arrive <= t) {
                let Some((_, o)) = c.pending.pop_front() else {
                    break;
                };
                let now_seq = if cell.fleet { fleet_seq } else { seq[i] };
                let tuning = c.tuner.observe(t, now_seq, &o);
                if cell.fleet {
                    fleet.set_rate(tuning.rate, t);
                    if let Some(p) = tuning.pause {
                        fleet_gate = fleet_gate.max(t + p);
                    }
                } else {
                    c.bucket.set_rate(tuning.rate, t);
                    if let Some(p) = tuning.pause {
                        c.gate = c.gate.max(t + p);
                    }
                }
            }
        }
        // Sends.
        let mut send =
            |client: usize, clients: &mut Vec<Client>, server: &mut RateModel, seq_no: u64| {
                let now_unix = dur(EPOCH + t);
                let d = server.take(now_unix);
                let mut h = HeaderMap::new();
                rate_limit(&mut h, &d, cell.reset, now_unix);
                let sys = UNIX_EPOCH + now_unix;
                let headers = RateLimitHeaders::parse(&h, sys);
                let retry = (!d.allowed).then(|| {
                    let v = retry_after(cell.retry, now_unix, d.retry_in);
                    let mut rh = HeaderMap::new();
                    if let Ok(hv) = v.parse() {
                        rh.insert("retry-after", hv);
                    }
                    crate::telnyx::retry_after(&rh, sys).map_or(1.0, |x| x.as_secs_f64())
                });
                let key = d.window_start.as_nanos();
                let w = windows.entry(key).or_insert(Window {
                    start: d.window_start.as_secs_f64() - EPOCH,
                    limit: server.params().limit,
                    allowed: 0,
                    refused: 0,
                });
                w.limit = server.params().limit;
                if d.allowed {
                    w.allowed += 1;
                } else {
                    w.refused += 1;
                }
                let arrive = t + cell.latency + cell.jitter * rng.next();
                let o = Observation {
                    at: t,
                    seq: seq_no,
                    headers,
                    refused: !d.allowed,
                    retry_after: retry,
                };
                let c = &mut clients[client];
                let pos = c.pending.partition_point(|(a, _)| *a <= arrive);
                c.pending.insert(pos, (arrive, o));
                let _ = SystemTime::now;
            };
        if cell.fleet {
            if t >= fleet_gate {
                if fleet.tat < fleet_gate {
                    fleet.tat = fleet_gate;
                }
                while fleet.ready(t) && active > 0 {
                    fleet.take(t);
                    fleet_seq += 1;
                    for c in clients.iter_mut().take(active) {
                        c.tuner.record_send(t, fleet_seq);
                    }
                    rr = (rr + 1) % active;
                    send(rr, &mut clients, &mut server, fleet_seq);
                }
            }
        } else {
            for i in 0..active {
                if t < clients[i].gate {
                    clients[i].waited = true;
                    continue;
                }
                if clients[i].waited {
                    clients[i].waited = false;
                    clients[i].bucket.restart(t);
                }
                while clients[i].bucket.try_take(t) {
                    seq[i] += 1;
                    let n = seq[i];
                    clients[i].tuner.record_send(t, n);
                    send(i, &mut clients, &mut server, n);
                }
            }
        }
        if (t / 0.1).fract() < STEP / 0.1 {
            models.push(clients[0].tuner.model());
            rates.push(if cell.fleet {
                fleet.rate
            } else {
                clients[0].bucket.bucket.rate()
            });
        }
        t += STEP;
    }
    Report {
        windows: windows.into_values().collect(),
        models,
        rates,
    }
}
