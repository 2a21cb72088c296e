//! What the tuner remembers between answers: the log of its own sends (so an
//! answer's `remaining` can be compared with what was really sent), the
//! reset intervals, the window starts it has seen, the capacity the server
//! gave back without a window reset, and the window lengths a sliding log
//! implies. Pure: every time is passed in, in seconds.

use std::collections::VecDeque;

/// Sends kept in the log, at most.
const MAX_SENDS: usize = 50_000;
/// Evidence older than this is dropped.
pub(super) const HORIZON: f64 = 30.0;

/// The middle value (0 for none).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The log of sends: `(decided at, sequence number)`, in order.
#[derive(Debug, Clone, Default)]
pub(super) struct SendLog {
    log: VecDeque<(f64, u64)>,
}

impl SendLog {
    pub(super) fn push(&mut self, at: f64, seq: u64) {
        if self.log.back().is_some_and(|(_, s)| *s >= seq) {
            return;
        }
        self.log.push_back((at, seq));
        while self.log.len() > MAX_SENDS || self.log.front().is_some_and(|(t, _)| at - *t > HORIZON)
        {
            self.log.pop_front();
        }
    }

    /// When send number `seq` was decided (the latest sample at or before
    /// it, for a log of fleet samples), if the log reaches back that far.
    pub(super) fn time_of(&self, seq: u64) -> Option<f64> {
        let first = self.log.front()?;
        if seq < first.1 {
            return None;
        }
        let i = self.log.partition_point(|(_, s)| *s <= seq);
        self.log.get(i.checked_sub(1)?).map(|(t, _)| *t)
    }

    /// Sends decided in `(from, to]`.
    pub(super) fn count_between(&self, from: f64, to: f64) -> u64 {
        let seq_at = |t: f64| {
            let i = self.log.partition_point(|(at, _)| *at <= t);
            match i.checked_sub(1).and_then(|j| self.log.get(j)) {
                Some((_, s)) => *s,
                None => self.log.front().map_or(0, |(_, s)| s.saturating_sub(1)),
            }
        };
        seq_at(to).saturating_sub(seq_at(from))
    }
}

/// Timed samples of one quantity, kept for [`HORIZON`].
#[derive(Debug, Clone, Default)]
pub(super) struct Samples {
    v: VecDeque<(f64, f64)>,
}

impl Samples {
    pub(super) fn push(&mut self, at: f64, value: f64) {
        self.v.push_back((at, value));
        while self.v.front().is_some_and(|(t, _)| at - *t > HORIZON) || self.v.len() > 4096 {
            self.v.pop_front();
        }
    }

    pub(super) fn since(&self, t: f64) -> impl Iterator<Item = f64> + '_ {
        self.v
            .iter()
            .filter(move |(at, _)| *at >= t)
            .map(|(_, x)| *x)
    }

    pub(super) fn times_since(&self, t: f64) -> impl Iterator<Item = f64> + '_ {
        self.v
            .iter()
            .filter(move |(at, _)| *at >= t)
            .map(|(at, _)| *at)
    }

    pub(super) fn last(&self) -> Option<(f64, f64)> {
        self.v.back().copied()
    }

    pub(super) fn clear(&mut self) {
        self.v.clear();
    }
}
