//! The tuner on hand-made traffic: situations the backlogged clients of the
//! virtual-time matrix (`vsim.rs`) never produce, such as an idle spell.

use super::super::*;

/// A fixed window opened by the first request (`fixed-first`), `limit` per
/// `window` seconds, answering after `delay`. Drives a [`Tuner`] with the
/// given send times and returns it.
struct FirstRequestWindow {
    limit: f64,
    window: f64,
    start: Option<f64>,
    used: f64,
}

impl FirstRequestWindow {
    fn remaining_after_request(&mut self, at: f64) -> (f64, f64) {
        if self.start.is_none_or(|s| at >= s + self.window) {
            self.start = Some(at);
            self.used = 0.0;
        }
        self.used += 1.0;
        let start = self.start.unwrap_or(at);
        (self.limit - self.used, start + self.window - at)
    }
}

fn drive(tuner: &mut Tuner, server: &mut FirstRequestWindow, seq: &mut u64, sends: &[f64]) {
    let mut answers = Vec::new();
    for &at in sends {
        *seq += 1;
        tuner.record_send(at, *seq);
        let (remaining, reset_in) = server.remaining_after_request(at);
        answers.push((at, *seq, remaining, reset_in));
    }
    // Concurrent requests: the answers come back out of their send order
    // (each run of five reversed, so the test is deterministic), each
    // `DELAY` after the latest send of its run.
    const DELAY: f64 = 0.02;
    for chunk in answers.chunks(5) {
        let arrive = chunk.iter().map(|a| a.0).fold(0.0, f64::max) + DELAY;
        for &(at, s, remaining, reset_in) in chunk.iter().rev() {
            let o = Observation {
                at,
                seq: s,
                headers: Some(RateLimitHeaders {
                    limit: Some(server.limit),
                    remaining,
                    reset_in,
                    coarse: false,
                }),
                refused: false,
                retry_after: None,
            };
            tuner.observe(arrive, *seq, &o);
        }
    }
}

fn settings() -> LimiterSettings {
    LimiterSettings {
        initial_rate: 500.0,
        min_rate: 1.0,
        max_rate: 5000.0,
        ..LimiterSettings::default()
    }
}

/// A halt (or any quiet spell) sends one request a second; against a
/// first-request window each finds a fresh budget, which looks like a full
/// token bucket. When the backlog comes back, a burst that spends a sliver
/// of a huge budget must not be read as a bucket refilling slowly: the
/// rate stays where the limit puts it (it fell to `min_rate`, 1/s, before).
#[test]
fn a_quiet_spell_against_a_huge_first_request_window_keeps_the_rate() {
    let mut tuner = Tuner::new(&settings());
    let mut server = FirstRequestWindow {
        limit: 1_000_000.0,
        window: 1.0,
        start: None,
        used: 0.0,
    };
    let mut seq = 0;
    // Busy: 40 requests in 0.1 s.
    let busy: Vec<f64> = (0..40).map(|i| f64::from(i) * 0.0025).collect();
    drive(&mut tuner, &mut server, &mut seq, &busy);
    let before = tuner.rate();
    assert!(before >= 500.0, "rate while busy: {before}");
    // Quiet: one request a second for 8 s (halt probes).
    let quiet: Vec<f64> = (1..=8).map(f64::from).collect();
    for t in quiet {
        drive(&mut tuner, &mut server, &mut seq, &[t]);
    }
    // Busy again: bursts of 20 every 50 ms for 3 s.
    for k in 0..60 {
        let t0 = 9.0 + f64::from(k) * 0.05;
        let burst: Vec<f64> = (0..20).map(|i| t0 + f64::from(i) * 0.001).collect();
        drive(&mut tuner, &mut server, &mut seq, &burst);
        assert!(
            tuner.rate() >= 400.0,
            "at {t0:.2} s the rate fell to {} ({:?})",
            tuner.rate(),
            tuner.model()
        );
    }
}
