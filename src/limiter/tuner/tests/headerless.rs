//! The headerless policy (`limiter.slow_start`) on a fake clock: an API that
//! sends no rate-limit headers, answered after `DELAY`, with every send made
//! as soon as the rate allows.

use super::super::*;

const DELAY: f64 = 0.02;

fn tuner(slow_start: bool) -> Tuner {
    Tuner::new(&LimiterSettings {
        initial_rate: 10.0,
        max_rate: 500.0,
        slow_start,
        ..LimiterSettings::default()
    })
}

/// Send at the tuner's rate from `*now` until `until` (virtual seconds),
/// each answered after `DELAY` without headers; `refuse(seq)` makes an
/// answer a 429 with `retry-after: 1`. Returns every (time, rate) after an
/// answer.
fn run(
    t: &mut Tuner,
    now: &mut f64,
    seq: &mut u64,
    until: f64,
    refuse: impl Fn(u64) -> bool,
) -> Vec<(f64, f64, Option<f64>)> {
    let mut out = Vec::new();
    while *now < until {
        *seq += 1;
        t.record_send(*now, *seq);
        let refused = refuse(*seq);
        let o = Observation {
            at: *now,
            seq: *seq,
            headers: None,
            refused,
            retry_after: refused.then_some(1.0),
        };
        let tuning = t.observe(*now + DELAY, *seq, &o);
        out.push((*now + DELAY, tuning.rate, tuning.pause));
        *now += 1.0 / t.rate() + tuning.pause.unwrap_or(0.0);
    }
    out
}

#[test]
fn slow_start_raises_the_rate_by_half_each_used_second_up_to_max_rate() {
    let mut t = tuner(true);
    let (mut now, mut seq) = (0.0, 0);
    let seen = run(&mut t, &mut now, &mut seq, 3.0, |_| false);
    assert_eq!(t.model(), Model::Headerless);
    // From 10/s: no step before a second has passed, never more than x1.5
    // per second.
    assert!(seen.iter().all(|(at, r, _)| *at >= 1.0 || *r == 10.0));
    let at_3s = t.rate();
    assert!(
        (15.0..=10.0 * 1.5f64.powi(3)).contains(&at_3s),
        "after 3 s: {at_3s}"
    );
    for w in seen.windows(2) {
        assert!(w[1].1 <= w[0].1 * 1.5 + 1e-9, "one step at a time: {w:?}");
    }
    run(&mut t, &mut now, &mut seq, 20.0, |_| false);
    assert_eq!(t.rate(), 500.0, "capped at max_rate");
}

#[test]
fn a_429_halves_the_rate_and_pauses_for_retry_after() {
    let mut t = tuner(true);
    let (mut now, mut seq) = (0.0, 0);
    run(&mut t, &mut now, &mut seq, 5.0, |_| false);
    let before = t.rate();
    assert!(before > 10.0);
    let refused_at = seq + 1;
    let until = now + 0.001;
    let seen = run(&mut t, &mut now, &mut seq, until, |s| s == refused_at);
    let (_, rate, pause) = seen[0];
    assert_eq!(rate, before * 0.5);
    assert_eq!(pause, Some(1.0), "the 429's retry-after");
    // It climbs again afterwards.
    let until = now + 3.0;
    run(&mut t, &mut now, &mut seq, until, |_| false);
    assert!(t.rate() > before * 0.5);
}

#[test]
fn slow_start_off_stays_at_initial_rate() {
    let mut t = tuner(false);
    let (mut now, mut seq) = (0.0, 0);
    let seen = run(&mut t, &mut now, &mut seq, 10.0, |_| false);
    assert!(seen.iter().all(|(_, r, _)| *r == 10.0));
}

#[test]
fn an_unused_rate_is_not_raised() {
    // Two sends a second against 10/s: nothing shows the API can take more.
    let mut t = tuner(true);
    let mut seq = 0;
    for i in 0..40 {
        let now = i as f64 * 0.5;
        seq += 1;
        t.record_send(now, seq);
        let o = Observation {
            at: now,
            seq,
            headers: None,
            refused: false,
            retry_after: None,
        };
        t.observe(now + DELAY, seq, &o);
    }
    assert_eq!(t.rate(), 10.0);
}
