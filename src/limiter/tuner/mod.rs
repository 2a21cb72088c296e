//! The tuner: turns the API's answers into a request rate (the algorithm is
//! in the [`crate::limiter`] docs). It works out which kind of limit the
//! server counts with from how `x-ratelimit-remaining` moves against the
//! requests it knows were sent, and then spends that limit evenly:
//!
//! - [`Model::Window`] (fixed windows, aligned to the clock or opened by the
//!   first request): `remaining` falls by one per request and jumps back at
//!   each window start. Rate `L / W`.
//! - [`Model::Sliding`] (a sliding log): capacity comes back gradually, as
//!   old requests leave the window; the window length is how far back the
//!   `L − remaining` counted requests reach in the send log. Rate `L / W`.
//! - [`Model::Bucket`] (a token bucket, the headers describe the bucket):
//!   `remaining` stays at the top while the rate is below the refill rate,
//!   which nothing in the headers says. The rate is probed upward until the
//!   bucket starts to drain; while it drains, the refill rate is the slope of
//!   `remaining + requests sent`.
//!
//! Always less `limiter.headroom`. Pure: every time is passed in (seconds,
//! on any monotonic clock), so it is tested in virtual time against the
//! simulator's models (`vsim.rs`).

mod evidence;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use evidence::{HORIZON, Samples, SendLog, median};

use super::headers::RateLimitHeaders;
use crate::config::LimiterSettings;

/// How the server seems to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Headers seen, not enough to tell yet.
    Unknown,
    Window,
    Sliding,
    Bucket,
    /// No rate-limit headers at all.
    Headerless,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Unknown => "unknown",
            Model::Window => "window",
            Model::Sliding => "sliding",
            Model::Bucket => "bucket",
            Model::Headerless => "headerless",
        }
    }
}

/// One answer, for the tuner.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// When the request was sent (the server decides on arrival).
    pub at: f64,
    /// Its sequence number among the sends the tuner is told about.
    pub seq: u64,
    pub headers: Option<RateLimitHeaders>,
    /// A 429.
    pub refused: bool,
    /// `retry-after`, in seconds, on a 429.
    pub retry_after: Option<f64>,
}

/// What one tuning step decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Requests per second.
    pub rate: f64,
    /// Close the gate this long (seconds): the budget is spent.
    pub pause: Option<f64>,
}

/// The latest answer, by the time its request was sent.
#[derive(Debug, Clone, Copy)]
struct Last {
    at: f64,
    seq: u64,
    limit: f64,
    remaining: f64,
    reset_in: f64,
}

/// Probing a token bucket.
#[derive(Debug, Clone, Default)]
struct Probe {
    /// The refill rate, once measured.
    refill: Option<f64>,
    /// `(sent at, remaining + sends)` while the bucket is not full.
    level: Samples,
    /// `(sent at, remaining)`, beside `level`.
    low: Samples,
    /// No probe step before this.
    next_step: f64,
}

#[derive(Debug, Clone)]
pub struct Tuner {
    min_rate: f64,
    max_rate: f64,
    headroom: f64,
    slow_start: bool,
    rate: f64,
    model: Model,
    limit: Option<f64>,
    sends: SendLog,
    last: Option<Last>,
    /// `x-ratelimit-reset` intervals (upper bounds).
    resets: Samples,
    /// Window starts seen (value: the estimated start).
    starts: Samples,
    /// Capacity given back without a window start.
    gives: Samples,
    /// Sends between consecutive answers.
    spent: Samples,
    /// Window lengths a sliding log implies.
    spans: Samples,
    /// Answers in a row that showed the bucket (nearly) full.
    full: u32,
    probe: Probe,
    /// Answer delays seen (receive − send), for pacing the probe.
    delays: Samples,
    /// Headerless slow start: the last step.
    headerless_step: f64,
    /// Sends the server refused (their sequence numbers, in order): a
    /// sliding log that does not count them must not be measured by them.
    refused_seqs: VecDeque<u64>,
    /// Refused sends dropped from `refused_seqs` (the oldest).
    refused_dropped: u64,
}

/// A window start shows as `remaining` jumping up by at least this share
/// of the limit ...
const JUMP: f64 = 0.3;
/// ... to at least this share of it.
const JUMP_TO: f64 = 0.6;
/// Answers in a row with a full bucket that make it a [`Model::Bucket`].
const FULL_STREAK: u32 = 6;
/// A bucket's refill rate is measured only while `remaining` is at most
/// this share of the limit.
const DRAINED: f64 = 0.5;

impl Tuner {
    pub fn new(s: &LimiterSettings) -> Self {
        Self {
            min_rate: s.min_rate,
            max_rate: s.max_rate,
            headroom: s.headroom.clamp(0.0, 0.5),
            slow_start: s.slow_start,
            rate: s.initial_rate,
            model: Model::Unknown,
            limit: None,
            sends: SendLog::default(),
            last: None,
            resets: Samples::default(),
            starts: Samples::default(),
            gives: Samples::default(),
            spent: Samples::default(),
            spans: Samples::default(),
            full: 0,
            probe: Probe::default(),
            delays: Samples::default(),
            headerless_step: f64::NEG_INFINITY,
            refused_seqs: VecDeque::new(),
            refused_dropped: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn model(&self) -> Model {
        self.model
    }

    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// The window length in use (seconds).
    pub fn window_len(&self, now: f64) -> f64 {
        match self.model {
            Model::Sliding => self
                .sliding_window(now)
                .unwrap_or_else(|| self.reset_window(now)),
            _ => self.fixed_window(now),
        }
    }

    /// The refill rate a token bucket was measured at.
    pub fn refill(&self) -> Option<f64> {
        self.probe.refill
    }

    /// A send, decided at `at`, numbered `seq` (strictly increasing).
    pub fn record_send(&mut self, at: f64, seq: u64) {
        self.sends.push(at, seq);
    }

    fn clamp(&self, r: f64) -> f64 {
        if r.is_finite() {
            r.clamp(self.min_rate, self.max_rate)
        } else {
            self.max_rate
        }
    }

    /// The largest reset interval of the last [`HORIZON`] seconds.
    fn reset_window(&self, now: f64) -> f64 {
        self.resets
            .since(now - HORIZON)
            .fold(0.0, f64::max)
            .max(0.05)
    }

    /// The window length from the window starts seen; else the resets.
    fn fixed_window(&self, now: f64) -> f64 {
        let reset = self.reset_window(now);
        let starts: Vec<f64> = self.starts.since(now - HORIZON).collect();
        let gaps: Vec<f64> = starts
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|g| *g > 0.5 * reset.min(1.0))
            .collect();
        if gaps.is_empty() {
            return reset;
        }
        let m = median(gaps.iter().rev().take(5).copied().collect());
        if m > 0.0 { m.min(reset.max(m)) } else { reset }
    }

    fn sliding_window(&self, now: f64) -> Option<f64> {
        let v: Vec<f64> = self.spans.since(now - 2.0).collect();
        (v.len() >= 5).then(|| median(v).max(0.01))
    }

    /// Take in one answer, received at `now`, when `seq_now` sends have
    /// been made in all.
    pub fn observe(&mut self, now: f64, seq_now: u64, o: &Observation) -> Tuning {
        self.delays.push(now, (now - o.at).max(0.0));
        if o.refused {
            let pos = self.refused_seqs.partition_point(|s| *s < o.seq);
            if self.refused_seqs.get(pos) != Some(&o.seq) {
                self.refused_seqs.insert(pos, o.seq);
            }
            while self.refused_seqs.len() > 10_000 {
                self.refused_seqs.pop_front();
                self.refused_dropped += 1;
            }
        }
        let Some(h) = o.headers else {
            return self.headerless(now, o);
        };
        let limit = match h.limit {
            Some(l) if l >= 1.0 => l,
            _ => self.limit.unwrap_or(0.0).max(h.remaining + 1.0),
        };
        let remaining = h.remaining.min(limit);
        let changed = self.limit.is_some_and(|l| (l - limit).abs() >= 0.5);
        self.limit = Some(limit);
        if h.reset_in > 0.0 && h.reset_in.is_finite() {
            self.resets.push(o.at, h.reset_in.min(3600.0));
        }
        if self.model == Model::Headerless {
            self.model = Model::Unknown;
        }
        if changed {
            // A new limit: what was learned about the old one misleads.
            self.probe = Probe::default();
            self.full = 0;
        }
        let now_last = Last {
            at: o.at,
            seq: o.seq,
            limit,
            remaining,
            reset_in: h.reset_in,
        };
        match self.last {
            Some(a) if o.at > a.at => {
                self.evidence(&a, &now_last);
                self.last = Some(now_last);
            }
            Some(_) => {} // a late answer: older news than what is known
            None => self.last = Some(now_last),
        }
        self.classify(now);
        let mut pause = None;
        let rate = match self.model {
            Model::Window => {
                let w = self.fixed_window(now);
                pause = self.window_guard(now, seq_now, w);
                limit / w * (1.0 - self.headroom)
            }
            Model::Unknown => {
                // Not told apart yet: a budget that stays (nearly) full is
                // not being spent, so the rate need not fall to `L / W`
                // (a token bucket reports its burst as the limit).
                let w = self.fixed_window(now);
                pause = self.window_guard(now, seq_now, w);
                let r = limit / w * (1.0 - self.headroom);
                if remaining >= limit - 1.5 && !o.refused {
                    r.max(self.rate)
                } else {
                    r
                }
            }
            Model::Sliding => {
                let w = self
                    .sliding_window(now)
                    .unwrap_or_else(|| self.reset_window(now));
                limit / w * (1.0 - self.headroom)
            }
            Model::Bucket => {
                let (r, p) = self.bucket(now, seq_now, &now_last);
                pause = p;
                r
            }
            Model::Headerless => self.rate,
        };
        self.rate = self.clamp(rate);
        if o.refused {
            let p = self.refused(now, o);
            pause = Some(pause.map_or(p, |q: f64| q.max(p)));
        }
        Tuning {
            rate: self.rate,
            pause,
        }
    }

    /// What two consecutive answers `a` and `b` (by send time) show.
    fn evidence(&mut self, a: &Last, b: &Last) {
        let limit = b.limit;
        let sent = b.seq.saturating_sub(a.seq) as f64;
        let rise = b.remaining - a.remaining;
        let gap = b.at - a.at;
        let reset = self.reset_window(b.at);
        self.spent.push(b.at, sent);
        // A window start: remaining jumps back up while requests went on
        // (a bucket refilling after a pause looks the same, but only after
        // a pause).
        if rise >= (JUMP * limit).max(2.0) && b.remaining >= JUMP_TO * limit && gap < 0.25 * reset {
            let in_new = (limit - b.remaining).max(1.0) as u64;
            let first = b.seq.saturating_sub(in_new - 1);
            let start = self.sends.time_of(first).unwrap_or(b.at).max(a.at);
            self.starts.push(b.at, start);
        } else {
            // Net, so answers that reached the server out of their send
            // order (concurrent requests) cancel out instead of adding up.
            let give = rise + sent;
            if give.abs() >= 0.5 {
                self.gives.push(b.at, give);
            }
        }
        if b.remaining >= limit - 1.5 && sent >= 1.0 {
            self.full = self.full.saturating_add(1);
        } else {
            self.full = 0;
        }
        // A sliding log counts the last W: the oldest counted request is
        // `used` sends back.
        let used = (limit - b.remaining).round();
        if used >= 3.0 {
            // The window reaches back past the oldest counted request but
            // not to the one before it: take the middle.
            let oldest = self.counted_back(b.seq, used as u64 - 1);
            let before = self.counted_back(b.seq, used as u64);
            if let (Some(t), Some(t0)) = (self.sends.time_of(oldest), self.sends.time_of(before)) {
                self.spans.push(b.at, b.at - 0.5 * (t + t0));
            }
        }
    }

    /// Sends up to `seq` that the server did not refuse.
    fn counted(&self, seq: u64) -> u64 {
        let refused =
            self.refused_dropped + self.refused_seqs.partition_point(|s| *s <= seq) as u64;
        seq.saturating_sub(refused)
    }

    /// The send `n` counted sends before `seq`, not counting the ones the
    /// server refused.
    fn counted_back(&self, seq: u64, n: u64) -> u64 {
        let mut oldest = seq.saturating_sub(n);
        for _ in 0..8 {
            let lo = self.refused_seqs.partition_point(|s| *s < oldest);
            let hi = self.refused_seqs.partition_point(|s| *s <= seq);
            let skipped = (hi - lo) as u64;
            let next = seq.saturating_sub(n.saturating_add(skipped));
            if next == oldest {
                break;
            }
            oldest = next;
        }
        oldest
    }

    /// Settle on a model from the evidence of the last seconds.
    fn classify(&mut self, now: f64) {
        let w = self.fixed_window(now).max(0.2);
        let recent = now - (3.0 * w).max(2.0);
        let starts = self.starts.times_since(recent).count();
        let given: f64 = self.gives.since(recent).sum::<f64>().max(0.0);
        let spent: f64 = self.spent.since(recent).sum();
        if self.full >= FULL_STREAK {
            self.model = Model::Bucket;
            return;
        }
        if starts >= 1 && given < 0.1 * spent.max(1.0) {
            self.model = Model::Window;
            return;
        }
        if self.model == Model::Bucket {
            return; // sticky: a draining bucket looks like little else
        }
        let spans: Vec<f64> = self.spans.since(now - 2.0).collect();
        if spans.len() >= 5 && given >= 0.5 * spent {
            let mut s = spans.clone();
            s.sort_by(f64::total_cmp);
            let lo = s[s.len() / 10];
            let hi = s[s.len() * 9 / 10];
            if lo > 0.0 && hi / lo <= 1.3 {
                self.model = Model::Sliding;
            }
        }
    }

    /// In a window whose budget is spent (counting requests already sent
    /// since the last answer): close the gate until it ends.
    fn window_guard(&self, now: f64, seq_now: u64, w: f64) -> Option<f64> {
        let last = self.last?;
        // The window holds the `L - remaining` counted requests up to the
        // last answer's: it began no later than the first of them, so it
        // ends no later than that plus `W` (exact when the window opened
        // with that request; never early on a clock-aligned one).
        let used = (last.limit - last.remaining).max(1.0) as u64;
        let first = self.counted_back(last.seq, used - 1);
        let from_log = self
            .sends
            .time_of(first)
            .map(|t| t + w)
            .filter(|e| *e > last.at);
        let start = self.starts.last().map(|(_, s)| s);
        let told = (last.reset_in > 0.0).then_some(last.at + last.reset_in);
        let end = match (from_log, start) {
            (Some(e), _) => told.map_or(e, |t| e.min(t)),
            (None, Some(s)) if s <= last.at => {
                let mut e = s + w;
                while e <= last.at {
                    e += w;
                }
                e
            }
            _ => last.at + last.reset_in,
        };
        if end <= now {
            return None;
        }
        let credit = last.remaining - seq_now.saturating_sub(last.seq) as f64;
        (credit < 0.5).then_some(end - now + 0.002)
    }

    /// Token bucket: probe, measure, hold.
    fn bucket(&mut self, now: f64, seq_now: u64, b: &Last) -> (f64, Option<f64>) {
        let limit = b.limit;
        let delay = median(self.delays.since(now - 2.0).collect()).max(0.001);
        let full = b.remaining >= limit - 1.5;
        if full {
            self.probe.level.clear();
            self.probe.low.clear();
        } else {
            self.probe
                .level
                .push(b.at, b.remaining + self.counted(b.seq) as f64);
            self.probe.low.push(b.at, b.remaining);
        }
        // The refill rate: the slope of remaining + sends while not full,
        // and only once the bucket has really drained (to `DRAINED` of its
        // limit): a sliver spent from a large budget (a first-request
        // window after a quiet spell looks like a full bucket) says nothing
        // about a refill rate, and its slope is noise.
        let pts: Vec<(f64, f64)> = {
            let t0 = now - 1.0;
            let ts: Vec<f64> = self.probe.level.times_since(t0).collect();
            let vs: Vec<f64> = self.probe.level.since(t0).collect();
            ts.into_iter().zip(vs).collect()
        };
        let drained = self
            .probe
            .low
            .since(now - 1.0)
            .any(|r| r <= DRAINED * limit);
        if drained && pts.len() >= 5 && pts[pts.len() - 1].0 - pts[0].0 >= 0.25 {
            let slope = regression(&pts);
            if slope.is_finite() && slope > 0.0 {
                self.probe.refill = Some(slope);
                self.probe.next_step = self.probe.next_step.max(now + 2.0);
            }
        }
        let sent_rate = self.sends.count_between(now - 0.5, now) as f64 / 0.5;
        let mut rate = match self.probe.refill {
            Some(r) => r * (1.0 - self.headroom),
            None => self.rate,
        };
        if full && now >= self.probe.next_step && sent_rate >= 0.7 * self.rate {
            // The bucket keeps up with everything sent: try more.
            let step = if self.probe.refill.is_some() {
                1.1
            } else {
                2.0
            };
            rate = rate.max(self.rate) * step;
            self.probe.next_step = now + (1.5 * delay).max(0.25);
        } else if full {
            rate = rate.max(self.rate);
        }
        // Nearly empty: let a token come back before the next request.
        let pause = (b.remaining <= 1.0 && !full).then(|| {
            let r = self.probe.refill.unwrap_or(rate).max(1.0);
            let ahead = seq_now.saturating_sub(b.seq) as f64;
            ((1.0 + ahead - b.remaining).max(1.0) / r).min(1.0)
        });
        (rate, pause)
    }

    /// A 429: how long to pause.
    fn refused(&mut self, now: f64, o: &Observation) -> f64 {
        let retry = o.retry_after.unwrap_or(1.0);
        match self.model {
            Model::Bucket => {
                let r = self
                    .probe
                    .refill
                    .unwrap_or(self.rate)
                    .min(self.rate)
                    .max(self.min_rate);
                self.probe.refill = Some(r * 0.97);
                self.rate = self.clamp(r * 0.97 * (1.0 - self.headroom));
                self.probe.next_step = now + 2.0;
                (1.0 / r).min(retry)
            }
            Model::Window | Model::Unknown => {
                // Until the window ends, if it is known more closely than
                // a whole-second retry-after says.
                match self.window_guard(now, u64::MAX, self.fixed_window(now)) {
                    Some(p) => p.min(retry),
                    None => retry,
                }
            }
            Model::Sliding => {
                // Old requests must leave the log first; how many is not
                // said, so each 429 close behind another doubles the wait.
                let recent = self
                    .refused_seqs
                    .iter()
                    .rev()
                    .take_while(|s| **s + self.rate.max(1.0) as u64 >= o.seq)
                    .count()
                    .min(10) as i32;
                let w = self
                    .sliding_window(now)
                    .unwrap_or_else(|| self.reset_window(now));
                (2f64.powi(recent) / self.rate.max(1.0))
                    .min(0.25 * w)
                    .min(retry)
            }
            Model::Headerless => {
                self.rate = self.clamp(self.rate * 0.5);
                self.headerless_step = now;
                retry
            }
        }
    }

    /// No rate-limit headers: `limiter.slow_start` raises the rate by half
    /// every second while answers come back without a 429 and the rate is
    /// being used; a 429 halves it.
    fn headerless(&mut self, now: f64, o: &Observation) -> Tuning {
        if self.limit.is_none() {
            self.model = Model::Headerless;
        }
        if o.refused {
            let p = self.refused(now, o);
            return Tuning {
                rate: self.rate,
                pause: Some(p),
            };
        }
        if self.slow_start && self.model == Model::Headerless && now - self.headerless_step >= 1.0 {
            let used = self.sends.count_between(now - 1.0, now) as f64;
            if used >= 0.7 * self.rate {
                self.rate = self.clamp(self.rate * 1.5);
            }
            self.headerless_step = now;
        }
        Tuning {
            rate: self.rate,
            pause: None,
        }
    }
}

/// The least-squares slope of `pts`.
fn regression(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx <= 0.0 { f64::NAN } else { sxy / sxx }
}
