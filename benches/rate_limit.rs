//! Rate-limiting benchmark: the real `Worker` (RabbitMQ on 127.0.0.1:5672)
//! against the in-process Telnyx simulator, which enforces a fixed-window
//! limit R with real `x-ratelimit-*` headers and 429 + `retry-after`.
//!
//! ```text
//! cargo bench --bench rate_limit                 # every scenario
//! cargo bench --bench rate_limit -- steady latency   # some of them
//! ```
//!
//! Scenarios: `steady`, `change`, `latency`, `replicas`, `senders`. Every
//! worker runs with the shipped defaults (config/default.toml) except that
//! account pacing is off and queue names are unique; it prints measurements,
//! it does not pass or fail. Each scenario deletes the queues it declared.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use send_worker::ops::metrics::Metrics;
use send_worker::sim::{SimConfig, SimControl, SimRequest, SimWindow};
use send_worker::testkit::{RunningWorker, Sandbox, job_props, sms_from};

const LONG_CODE: &str = "+15551234567";
const TOLL_FREE: &str = "+18005550100";
const SHORT_CODE: &str = "54321";

/// One scenario's world: a simulator and a unique topology (the test kit's
/// sandbox) with the shipped defaults, account pacing off, and any
/// `SEND_WORKER__*` variables of the environment on top (for experiments,
/// e.g. SEND_WORKER__AMQP__PREFETCH=256).
async fn env(name: &str, sim: SimConfig) -> anyhow::Result<Sandbox> {
    Sandbox::for_bench(name, &[], sim)
        .await
        .context("RabbitMQ must be running on 127.0.0.1:5672")
}

fn start(env: &Sandbox) -> anyhow::Result<RunningWorker> {
    Ok(env.start_worker(env.worker()?))
}

/// Publish SMS jobs from `from`, texts `{tag} {i}`, confirmed.
async fn publish(env: &Sandbox, from: &str, tag: &str, n: usize) -> anyhow::Result<()> {
    let jobs = (0..n).map(|i| {
        let body = sms_from(
            from,
            &format!("+1555{:07}", i % 10_000_000),
            &format!("{tag} {i}"),
        );
        (body, job_props(&format!("{tag}-{i}")))
    });
    env.publish_all(jobs).await?;
    Ok(())
}

fn sim(limit: u64, latency_ms: u64) -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(latency_ms),
        limit,
        window: Duration::from_secs(1),
        ..SimConfig::default()
    }
}

/// Requests answered 200 / 429 with `at_ms` in `[from, to)`.
fn count(reqs: &[SimRequest], from: u64, to: u64) -> (usize, usize, usize) {
    let inside = reqs.iter().filter(|r| r.at_ms >= from && r.at_ms < to);
    let (mut ok, mut limited, mut all) = (0, 0, 0);
    for r in inside {
        all += 1;
        match r.status {
            200 => ok += 1,
            429 => limited += 1,
            _ => {}
        }
    }
    (ok, limited, all)
}

/// Windows that started at or after `from` and ended by `to`.
fn windows_between(w: &[SimWindow], from: u64, to: u64) -> Vec<SimWindow> {
    w.iter()
        .filter(|x| x.start_ms >= from && x.start_ms + 1000 <= to)
        .copied()
        .collect()
}

fn window_summary(w: &[SimWindow]) -> String {
    if w.is_empty() {
        return "no whole windows".to_owned();
    }
    let used: Vec<f64> = w
        .iter()
        .map(|x| x.used as f64 / x.limit.max(1) as f64 * 100.0)
        .collect();
    let min = used.iter().copied().fold(f64::INFINITY, f64::min);
    let max = used.iter().copied().fold(0.0, f64::max);
    let mean = used.iter().sum::<f64>() / used.len() as f64;
    let rejected: u64 = w.iter().map(|x| x.rejected).sum();
    format!(
        "{} windows: used {min:.1}..{max:.1} % of R (mean {mean:.1} %), 429s {rejected}",
        w.len()
    )
}

/// Every window as `used/limit(+429s)`, for the record.
fn window_list(w: &[SimWindow], from: u64, to: u64) -> String {
    w.iter()
        .filter(|x| x.start_ms >= from && x.start_ms < to)
        .map(|x| {
            if x.rejected > 0 {
                format!("{}(+{})", x.used, x.rejected)
            } else {
                x.used.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn sent(m: &Metrics) -> u64 {
    m.outcomes.with_label_values(&["sent", "ok"]).get()
}

async fn steady() -> anyhow::Result<()> {
    const R: u64 = 1000;
    const RUN: u64 = 20_000;
    println!("\n## steady: R = {R}/s, 20 ms latency, {} s", RUN / 1000);
    let env = env("steady", sim(R, 20)).await?;
    publish(
        &env,
        LONG_CODE,
        "steady",
        (R * RUN / 1000 * 23 / 20) as usize,
    )
    .await?;
    let t0 = env.sim.now_ms();
    let w = start(&env)?;
    tokio::time::sleep(Duration::from_millis(RUN)).await;
    let end = t0 + RUN;
    let e = w.worker.limiter.estimates();
    println!(
        "limiter at the end: {:.1}/s; learned limit {:?} per {:?}, model {}; {} rate changes",
        e.rate,
        e.limit,
        e.window,
        e.model.as_str(),
        e.swaps
    );
    w.stop().await;
    let reqs = env.sim.requests();
    let windows = env.sim.windows();
    let second = windows.get(1).map_or(end, |w| w.start_ms);
    let (ok, limited, all) = count(&reqs, second, end);
    let (_, limited_total, all_total) = count(&reqs, t0, end);
    let secs = (end - second) as f64 / 1000.0;
    println!(
        "achieved after the first window: {:.1}/s = {:.1} % of R ({ok} sent in {secs:.2} s)",
        ok as f64 / secs,
        ok as f64 / secs / R as f64 * 100.0
    );
    println!(
        "429s after the first window: {limited} of {all} requests = {:.3} % (whole run: {limited_total} of {all_total})",
        pct(limited, all)
    );
    let (ok_all, _, _) = count(&reqs, t0, end);
    println!(
        "achieved over the whole run, start-up included: {:.1}/s = {:.1} % of R",
        ok_all as f64 / (RUN as f64 / 1000.0),
        ok_all as f64 / (RUN as f64 / 1000.0) / R as f64 * 100.0
    );
    println!(
        "server windows: {}",
        window_summary(&windows_between(&windows, second, end))
    );
    env.cleanup().await;
    Ok(())
}

/// Seconds from `change` until the first window that starts a run of
/// windows (to `until`) each using >= 95 % of `limit` with no 429.
fn converged(windows: &[SimWindow], change: u64, until: u64, limit: u64) -> Option<(f64, f64)> {
    let after: Vec<SimWindow> = windows
        .iter()
        .filter(|w| w.start_ms >= change && w.start_ms + 1000 <= until)
        .copied()
        .collect();
    let good =
        |w: &SimWindow| w.limit == limit && w.rejected == 0 && w.used as f64 >= 0.95 * limit as f64;
    let first = (0..after.len()).find(|&i| after[i..].iter().all(good))?;
    let w = after[first];
    Some((
        (w.start_ms - change) as f64 / 1000.0,
        (w.start_ms + 1000 - change) as f64 / 1000.0,
    ))
}

async fn change() -> anyhow::Result<()> {
    let phases = [(1000u64, 8_000u64), (500, 8_000), (1000, 8_000)];
    println!("\n## change: R = 1000/s, then 500/s at 8 s, then 1000/s at 16 s; 20 ms latency");
    let env = env("change", sim(phases[0].0, 20)).await?;
    let jobs: u64 = phases.iter().map(|(r, d)| r * d / 1000).sum();
    publish(&env, LONG_CODE, "change", (jobs * 23 / 20) as usize).await?;
    let t0 = env.sim.now_ms();
    let w = start(&env)?;
    let mut starts = Vec::new();
    let mut at = t0;
    for (i, (limit, dur)) in phases.iter().enumerate() {
        if i > 0 {
            env.sim.control(&SimControl {
                limit: Some(*limit),
                ..SimControl::default()
            });
        }
        starts.push((env.sim.now_ms(), *limit));
        at += dur;
        let wait = at.saturating_sub(env.sim.now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let end = env.sim.now_ms();
    w.stop().await;
    let reqs = env.sim.requests();
    let windows = env.sim.windows();
    for (i, (from, limit)) in starts.iter().enumerate() {
        let to = starts.get(i + 1).map_or(end, |s| s.0);
        let (ok, limited, all) = count(&reqs, *from, to);
        let secs = (to - from) as f64 / 1000.0;
        let conv = if i == 0 {
            "start".to_owned()
        } else {
            match converged(&windows, *from, to, *limit) {
                Some((start, end)) => format!(
                    "re-converged {start:.2} s after the change (first good window ends at {end:.2} s)"
                ),
                None => "did not re-converge".to_owned(),
            }
        };
        println!(
            "phase R = {limit}: {:.1}/s average, 429s {limited} of {all} ({:.2} %); {conv}",
            ok as f64 / secs,
            pct(limited, all)
        );
        println!(
            "  windows after the first 2 s of the phase: {}",
            window_summary(&windows_between(&windows, from + 2000, to))
        );
    }
    env.cleanup().await;
    Ok(())
}

async fn latency() -> anyhow::Result<()> {
    const R: u64 = 1000;
    const RUN: u64 = 20_000;
    println!(
        "\n## latency: R = {R}/s, 250 ms API latency, {} s",
        RUN / 1000
    );
    let env = env("latency", sim(R, 250)).await?;
    publish(
        &env,
        LONG_CODE,
        "latency",
        (R * RUN / 1000 * 23 / 20) as usize,
    )
    .await?;
    let t0 = env.sim.now_ms();
    let w = start(&env)?;
    let m = w.worker.metrics.clone();
    let mut peak = 0;
    let sampler = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(m.in_flight.get());
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(RUN), sampler).await;
    let end = t0 + RUN;
    w.stop().await;
    let reqs = env.sim.requests();
    let from = t0 + 2000;
    let (ok, limited, all) = count(&reqs, from, end);
    let secs = (end - from) as f64 / 1000.0;
    println!(
        "sent from 2 s on: {:.1}/s ({ok} in {secs:.1} s); 429s {limited} of {all}; peak requests in flight {peak} (telnyx.max_in_flight {}, amqp.prefetch {})",
        ok as f64 / secs,
        env.settings.telnyx.max_in_flight,
        env.settings.amqp.prefetch
    );
    let windows = env.sim.windows();
    let second = windows.get(1).map_or(end, |w| w.start_ms);
    println!(
        "server windows: {}",
        window_summary(&windows_between(&windows, second, end))
    );
    env.cleanup().await;
    Ok(())
}

async fn replicas() -> anyhow::Result<()> {
    const R: u64 = 1000;
    const RUN: u64 = 20_000;
    println!(
        "\n## replicas: 3 workers (each its own connection, HTTP client and limiter, in one process) against one API, R = {R}/s, {} s",
        RUN / 1000
    );
    let env = env("replicas", sim(R, 20)).await?;
    publish(
        &env,
        LONG_CODE,
        "replicas",
        (R * RUN / 1000 * 23 / 20) as usize,
    )
    .await?;
    let t0 = env.sim.now_ms();
    let mut ws = Vec::new();
    for _ in 0..3 {
        ws.push(start(&env)?);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let wait = (t0 + RUN).saturating_sub(env.sim.now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let end = t0 + RUN;
    // Read every replica's view first: stopping one changes the others'.
    let views: Vec<_> = ws.iter().map(|w| w.worker.limiter.estimates()).collect();
    let mut stopped = Vec::new();
    for (w, e) in ws.into_iter().zip(views) {
        let worker = w.stop().await;
        stopped.push((worker, e.rate, e.model.as_str()));
    }
    let reqs = env.sim.requests();
    let windows = env.sim.windows();
    let third = windows.get(2).map_or(end, |w| w.start_ms);
    let (ok, limited, all) = count(&reqs, third, end);
    let secs = (end - third) as f64 / 1000.0;
    println!(
        "together, after the first 2 windows: {:.1}/s = {:.1} % of R; 429s {limited} of {all} = {:.3} %",
        ok as f64 / secs,
        ok as f64 / secs / R as f64 * 100.0,
        pct(limited, all)
    );
    let (_, limited_total, all_total) = count(&reqs, t0, end);
    println!("429s over the whole run, start-up included: {limited_total} of {all_total}");
    println!(
        "requests per window (+429s): {}",
        window_list(&windows, t0, end)
    );
    println!(
        "server windows: {}",
        window_summary(&windows_between(&windows, third, end))
    );
    for (i, (w, rate, share)) in stopped.iter().enumerate() {
        println!(
            "  replica {i}: sent {}, rate at the end {rate:.1}/s, model {share}",
            sent(&w.metrics)
        );
    }
    env.cleanup().await;
    Ok(())
}

/// Accepted requests from `from`, by at_ms.
fn accepted_times(reqs: &[SimRequest], from: &str, tag: &str) -> Vec<u64> {
    reqs.iter()
        .filter(|r| {
            r.status == 200
                && r.from.as_deref() == Some(from)
                && r.text.as_deref().is_some_and(|t| t.starts_with(tag))
        })
        .map(|r| r.at_ms)
        .collect()
}

fn max_in_any_second(times: &[u64]) -> usize {
    send_worker::testkit::most_in_any(times, 1000)
}

async fn senders() -> anyhow::Result<()> {
    const SC: usize = 5000;
    const TF: usize = 300;
    println!(
        "\n## senders: R = 1000/s, 20 ms latency; shipped pacing (toll-free 20/s, short code 1000/s, max_wait 5 s)"
    );
    let mut results = HashMap::new();
    for mixed in [false, true] {
        let env = env(if mixed { "mixed" } else { "alone" }, sim(1000, 20)).await?;
        if mixed {
            publish(&env, TOLL_FREE, "tf", TF).await?;
        }
        publish(&env, SHORT_CODE, "sc", SC).await?;
        let t0 = env.sim.now_ms();
        let w = start(&env)?;
        let started = Instant::now();
        let sc_done = loop {
            let n = accepted_times(&env.sim.requests(), SHORT_CODE, "sc").len();
            if n >= SC {
                break Some(env.sim.now_ms() - t0);
            }
            if started.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let reqs = env.sim.requests();
        let sc = accepted_times(&reqs, SHORT_CODE, "sc");
        let tf_by_then = accepted_times(&reqs, TOLL_FREE, "tf").len();
        let Some(sc_ms) = sc_done else {
            println!("short-code jobs did not finish within 60 s");
            w.stop().await;
            env.cleanup().await;
            continue;
        };
        let first = sc.iter().min().copied().unwrap_or(t0);
        let sc_rate = SC as f64 / ((sc_ms + t0 - first) as f64 / 1000.0);
        results.insert(mixed, (sc_ms, sc_rate));
        if !mixed {
            println!(
                "short code alone: {SC} sent {:.2} s after start, {sc_rate:.1}/s from its first send",
                sc_ms as f64 / 1000.0
            );
        } else {
            println!(
                "{TF} toll-free jobs queued first, then {SC} short-code jobs: short code done {:.2} s after start, {sc_rate:.1}/s; toll-free sent by then: {tf_by_then}",
                sc_ms as f64 / 1000.0
            );
            // Let the toll-free backlog finish at its pace.
            let tf_done = loop {
                let n = accepted_times(&env.sim.requests(), TOLL_FREE, "tf").len();
                if n >= TF {
                    break Some(env.sim.now_ms() - t0);
                }
                if started.elapsed() > Duration::from_secs(90) {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let reqs = env.sim.requests();
            let tf = accepted_times(&reqs, TOLL_FREE, "tf");
            let mut per_text: HashMap<&str, usize> = HashMap::new();
            for r in reqs.iter().filter(|r| r.status == 200) {
                if let Some(t) = r.text.as_deref() {
                    *per_text.entry(t).or_default() += 1;
                }
            }
            let dupes = per_text.values().filter(|n| **n > 1).count();
            let deferrals = w
                .worker
                .metrics
                .pacing_deferrals
                .with_label_values(&["toll_free"])
                .get();
            match tf_done {
                Some(ms) => println!(
                    "toll-free: all {TF} sent after {:.1} s ({:.1}/s); most in any 1 s: {} (burst 20 + 20/s); deferred through the broker {deferrals} times; duplicate sends {dupes}",
                    ms as f64 / 1000.0,
                    tf.len() as f64 / (ms as f64 / 1000.0),
                    max_in_any_second(&tf)
                ),
                None => println!(
                    "toll-free: only {} of {TF} sent within 90 s; deferred {deferrals} times",
                    tf.len()
                ),
            }
        }
        w.stop().await;
        env.cleanup().await;
    }
    if let (Some(alone), Some(mixed)) = (results.get(&false), results.get(&true)) {
        println!(
            "short-code rate behind the toll-free backlog vs alone: {:.1} %",
            mixed.1 / alone.1 * 100.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let all = ["steady", "change", "latency", "replicas", "senders"];
    // `cargo bench` passes --bench; anything else that is not a flag picks scenarios.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for p in &picked {
        if !all.contains(&p.as_str()) {
            bail!("unknown scenario {p:?}; choose from {all:?}");
        }
    }
    let run = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        println!(
            "# rate_limit benchmark ({} CPUs)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if run("steady") {
            steady().await?;
        }
        if run("change") {
            change().await?;
        }
        if run("latency") {
            latency().await?;
        }
        if run("replicas") {
            replicas().await?;
        }
        if run("senders") {
            senders().await?;
        }
        println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    })
}
