//! Throughput benchmark (issue #15): how close the real worker gets to the
//! broker's own ceiling, and what each job costs it.
//!
//! ```text
//! cargo bench --bench throughput                       # the matrix: events on/off x log info/warn
//! BENCH_JOBS=20000 cargo bench --bench throughput -- events-off/warn   # one cell, fewer jobs
//! ```
//!
//! For each cell, on one fresh sandbox (a unique quorum work queue on the
//! real RabbitMQ, and the in-process simulator: no latency, no limit, no
//! rate-limit headers):
//! 1. the ceiling, twice: N jobs published, then drained by a bare lapin
//!    consumer that only acks, one ack per delivery, at the worker's
//!    prefetch, from the same queue: once as a loop that awaits each ack
//!    (the issue's "consume-and-ack loop"), once acking from a task per
//!    delivery (as the worker does);
//! 2. N jobs published again, then the real `send-worker run` (the release
//!    binary, a child process configured through a TOML file) drains them:
//!    jobs/s from the first to the last request the simulator accepted; CPU
//!    per job from the child's /proc/<pid>/stat (utime + stime, start-up
//!    included, until the queue is empty); peak RSS from VmHWM;
//! 3. latency: with the worker idle, `BENCH_LATENCY_JOBS` jobs published at
//!    `BENCH_LATENCY_RATE`/s, each stamped with its publish time (ms) in its
//!    text; p50/p99 from that stamp to the simulator accepting the request.
//!
//! The worker runs with the shipped defaults except: account pacing off, the
//! API bucket lifted (`limiter.initial_rate` 50,000, `max_rate` 100,000,
//! `burst` 1,000), the cell's events and log level, and any `SEND_WORKER__*`
//! variables of the environment (e.g. `SEND_WORKER__AMQP__PREFETCH=256`).
//! It prints measurements; it does not pass or fail.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use send_worker::sim::SimConfig;
use send_worker::testkit::{Sandbox, WorkerProcess, bin, job_props, sms, unacked};

/// One cell of the matrix.
#[derive(Clone, Copy)]
struct Cell {
    events: bool,
    log: &'static str,
}

impl Cell {
    fn name(&self) -> String {
        format!(
            "events-{}/{}",
            if self.events { "on" } else { "off" },
            self.log
        )
    }
}

struct Row {
    cell: String,
    jobs_per_s: f64,
    /// A bare consume-and-ack loop (one ack awaited at a time).
    loop_per_s: f64,
    /// A bare consumer acking from a task per delivery.
    ceiling_per_s: f64,
    cpu_us_per_job: f64,
    rss_mb: f64,
    p50_ms: u64,
    p99_ms: u64,
    latency_jobs: usize,
    /// Jobs the simulator accepted more than once.
    duplicates: usize,
    /// Lines the worker wrote (stdout and stderr) in the whole cell.
    log_lines: usize,
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a count")),
        Err(_) => Ok(default),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sandbox's settings: shipped defaults, account pacing off, the API
/// bucket lifted, and the environment's `SEND_WORKER__*` on top.
async fn sandbox(name: &str) -> anyhow::Result<Sandbox> {
    let sim = SimConfig {
        latency: Duration::ZERO,
        limit: 0,
        rate_headers: false,
        ..SimConfig::default()
    };
    let lifted = [
        ("SEND_WORKER__LIMITER__INITIAL_RATE", "50000"),
        ("SEND_WORKER__LIMITER__MAX_RATE", "100000"),
        ("SEND_WORKER__LIMITER__BURST", "1000"),
    ];
    Sandbox::for_bench(name, &lifted, sim)
        .await
        .context("RabbitMQ must be running on 127.0.0.1:5672")
}

/// `n` SMS jobs tagged `tag`, published (confirmed) to the work exchange.
/// Each text is `"{tag} {i} {publish unix ms}"`.
async fn publish(s: &Sandbox, tag: &str, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    let now = unix_ms();
    let jobs = range.map(|i| {
        let body = sms(
            &format!("+1555{:07}", i % 10_000_000),
            &format!("{tag} {i} {now}"),
        );
        (body, job_props(&format!("{tag}-{i}")))
    });
    s.publish_all(jobs).await?;
    Ok(())
}

/// The ceiling: a bare consumer that acks each of `n` deliveries of the work
/// queue at `prefetch`. Deliveries per second from the first delivery to the
/// last ack. `concurrent`: each ack from its own task (as the worker acks);
/// else a loop that awaits each ack before it takes the next delivery (the
/// issue's "consume-and-ack loop").
async fn ceiling(s: &Sandbox, n: usize, concurrent: bool) -> anyhow::Result<f64> {
    let a = &s.settings.amqp;
    let conn = send_worker::amqp::connect(&a.url, "bench-ceiling").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            a.queue.as_str().into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Awaiting an ack waits for lapin's I/O loop to write it: a loop that
    // awaits each one before it takes the next delivery measures that round
    // trip as much as the broker.
    let mut acks = tokio::task::JoinSet::new();
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("no delivery for 30 s")?
            .context("the consumer ended")??;
        first.get_or_insert_with(Instant::now);
        if concurrent {
            acks.spawn(async move { d.acker.ack(BasicAckOptions::default()).await });
        } else {
            d.acker.ack(BasicAckOptions::default()).await?;
        }
        seen += 1;
        while let Some(done) = acks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    let _ = conn.close(200, "ceiling measured".into()).await;
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// (utime + stime in seconds, VmHWM in MB) of process `pid`.
fn usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends with the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based, pid first).
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .map(|(u, s)| u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0))
        .context("no utime/stime")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok((ticks as f64 / clock_ticks(), hwm_kb / 1024.0))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_accepted(s: &Sandbox, n: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while s.sim.stats().accepted < n {
        if Instant::now() > deadline {
            bail!("{what}: only {} of {n} accepted", s.sim.stats().accepted);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn run_cell(cell: Cell, n: usize, lat_n: usize, lat_rate: usize) -> anyhow::Result<Row> {
    let s = sandbox("throughput").await?;
    let result = measure(&s, cell, n, lat_n, lat_rate).await;
    s.cleanup().await;
    result
}

async fn measure(
    s: &Sandbox,
    cell: Cell,
    n: usize,
    lat_n: usize,
    lat_rate: usize,
) -> anyhow::Result<Row> {
    let queue = s.settings.amqp.queue.clone();
    // 1. The ceilings, on the same queue.
    publish(s, "ceiling", 0..n).await?;
    let loop_per_s = ceiling(s, n, false).await?;
    publish(s, "ceiling2", 0..n).await?;
    let ceiling_per_s = ceiling(s, n, true).await?;

    // 2. The worker on a preloaded queue.
    publish(s, "job", 0..n).await?;
    let mut settings = s.settings.clone();
    if !cell.events {
        settings.amqp.events_exchange = String::new();
    }
    settings.log.level = cell.log.to_owned();
    let mut w = WorkerProcess::spawn_in(&bin(), "bench-throughput", &settings, &[]);
    wait_accepted(s, n as u64, "worker").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.assert_running();
        let ready = s.depth(&queue).await?;
        let held = unacked(&queue).map_err(anyhow::Error::msg)?;
        if ready == 0 && held == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("queue not empty 60 s after the last send: {ready} ready, {held} unacked");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cpu_s, rss_mb) = usage(w.pid)?;
    let at: Vec<u64> = s
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.at_ms)
        .collect();
    let (lo, hi) = (
        at.iter().copied().min().unwrap_or(0),
        at.iter().copied().max().unwrap_or(0),
    );
    let jobs_per_s = n as f64 / (hi.saturating_sub(lo).max(1) as f64 / 1000.0);

    // 3. Latency, publish to accept, at a steady rate below the ceiling.
    let batch = (lat_rate / 100).max(1);
    let start = Instant::now();
    let mut sent = 0;
    while sent < lat_n {
        let k = batch.min(lat_n - sent);
        publish(s, "lat", sent..sent + k).await?;
        sent += k;
        let due = start + Duration::from_secs_f64(sent as f64 / lat_rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let reqs = loop {
        let reqs = s.sim.requests();
        let done = reqs
            .iter()
            .filter(|r| r.status == 200 && r.nth == 1)
            .filter(|r| r.text.as_deref().is_some_and(|t| t.starts_with("lat ")))
            .count();
        if done >= lat_n {
            break reqs;
        }
        if Instant::now() > deadline {
            bail!("latency phase: {done} of {lat_n} accepted");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let duplicates = reqs.iter().filter(|r| r.status == 200 && r.nth > 1).count();
    let epoch = s.sim.epoch_unix_ms();
    let mut lat: Vec<u64> = reqs
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| {
            let t = r.text.as_deref()?.strip_prefix("lat ")?;
            let published: u64 = t.rsplit(' ').next()?.parse().ok()?;
            Some((epoch + r.at_ms).saturating_sub(published))
        })
        .collect();
    lat.sort_unstable();
    let _ = w.terminate(Duration::from_secs(30)).await;
    let log_lines = w.logs().len();
    Ok(Row {
        cell: cell.name(),
        jobs_per_s,
        loop_per_s,
        ceiling_per_s,
        cpu_us_per_job: cpu_s * 1e6 / n as f64,
        rss_mb,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        latency_jobs: lat.len(),
        duplicates,
        log_lines,
    })
}

fn main() -> anyhow::Result<()> {
    let cells = [
        Cell {
            events: true,
            log: "info",
        },
        Cell {
            events: false,
            log: "info",
        },
        Cell {
            events: true,
            log: "warn",
        },
        Cell {
            events: false,
            log: "warn",
        },
    ];
    // `cargo bench` passes --bench; anything else that is not a flag picks cells.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let names: Vec<String> = cells.iter().map(Cell::name).collect();
    for p in &picked {
        if !names.contains(p) {
            bail!("unknown cell {p:?}; choose from {names:?}");
        }
    }
    let n = env_usize("BENCH_JOBS", 50_000)?;
    let lat_n = env_usize("BENCH_LATENCY_JOBS", 5_000)?;
    let lat_rate = env_usize("BENCH_LATENCY_RATE", 1_000)?.max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        println!(
            "# throughput benchmark ({} CPUs): {n} jobs per cell; latency: {lat_n} jobs at {lat_rate}/s; worker {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            bin().display()
        );
        let mut rows = Vec::new();
        for cell in cells {
            if !picked.is_empty() && !picked.contains(&cell.name()) {
                continue;
            }
            let row = run_cell(cell, n, lat_n, lat_rate).await?;
            println!(
                "{}: {:.0} jobs/s; bare loop {:.0}/s (ratio {:.2}); bare concurrent acks {:.0}/s (ratio {:.2}); {:.1} µs CPU/job; peak RSS {:.1} MB; publish->accept p50 {} ms, p99 {} ms ({} jobs); sent twice: {}; log lines: {}",
                row.cell,
                row.jobs_per_s,
                row.loop_per_s,
                row.jobs_per_s / row.loop_per_s,
                row.ceiling_per_s,
                row.jobs_per_s / row.ceiling_per_s,
                row.cpu_us_per_job,
                row.rss_mb,
                row.p50_ms,
                row.p99_ms,
                row.latency_jobs,
                row.duplicates,
                row.log_lines
            );
            rows.push(row);
        }
        println!();
        println!("| cell | jobs/s | bare loop/s | ratio | bare concurrent/s | ratio | CPU µs/job | peak RSS MB | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} | {:.1} | {} | {} |",
                r.cell,
                r.jobs_per_s,
                r.loop_per_s,
                r.jobs_per_s / r.loop_per_s,
                r.ceiling_per_s,
                r.jobs_per_s / r.ceiling_per_s,
                r.cpu_us_per_job,
                r.rss_mb,
                r.p50_ms,
                r.p99_ms
            );
        }
        println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    })
}
