//! `send-worker publish`: publish send jobs from a JSONL or CSV file,
//! standard input, or flags, the safe way: every job first passes the
//! worker's own validator, then goes out persistent and `mandatory` on a
//! confirm-mode channel, with a bounded window of unconfirmed publishes.
//!
//! Exit status: 0 when every job was published and confirmed; 1 when some
//! lines were invalid (skipped) or rejected by the broker (returned or
//! nacked); 2 on a usage, configuration, input or connection error (a
//! missing exchange included); 130 when interrupted (Ctrl-C), after the
//! publishes in flight are settled.
//!
//! | file | what it owns |
//! |---|---|
//! | `args.rs` | the arguments, and the plan of a run: source, format, ids, target |
//! | `input.rs` | the JSONL, CSV and flags readers: one raw job per line |
//! | `prepare.rs` | job ids (given or derived), properties, the validator |
//! | `window.rs` | the bounded window of publishes awaiting confirms |
//! | `progress.rs` | the bar or progress lines, and the summary |

mod args;
mod input;
mod prepare;
mod progress;
#[cfg(test)]
mod tests;
mod window;

pub use args::{Args, Format};
pub use input::CSV_COLUMNS;
pub use prepare::{ID_NAMESPACE, derived_id};

use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ExchangeKind};
use tokio::sync::mpsc;

use crate::amqp::{self, BrokerError};
use crate::config::{ConfigError, Settings};
use args::{Plan, Source, plan};
use input::InputError;
use prepare::Item;
use progress::{Counts, Progress, summary};
use window::{Outcome, Settled, Window};

/// Why a run stopped before its end: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "the exchange {exchange:?} does not exist on {url}; nothing was published. Start a worker \
         once to declare the topology (amqp.declare_topology), or check amqp.exchange / --exchange"
    )]
    ExchangeMissing { exchange: String, url: String },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    pub counts: Counts,
    pub fatal: Option<Fatal>,
    pub interrupted: bool,
}

impl Report {
    /// 0, 1, 2 or 130: see the module documentation.
    pub fn exit_code(&self) -> i32 {
        if self.fatal.is_some() || self.counts.unconfirmed > 0 {
            2
        } else if self.interrupted {
            130
        } else if self.counts.invalid > 0 || self.counts.rejected > 0 {
            1
        } else {
            0
        }
    }
}

/// Run `publish` and return its exit status (the caller exits with it).
pub async fn command(settings: Result<Settings, ConfigError>, args: Args) -> i32 {
    let report = match settings {
        Ok(s) => run(&s, args).await,
        Err(e) => Report {
            counts: Counts::default(),
            fatal: Some(e.into()),
            interrupted: false,
        },
    };
    if let Some(e) = &report.fatal {
        progress::err(&format!("send-worker publish: {e}"));
    }
    report.exit_code()
}

enum Msg {
    Item(Box<Item>),
    Fatal(Fatal),
}

/// Read and prepare jobs on a thread of their own (reading may block), and
/// hand them over through a bounded channel.
fn spawn_reader(plan: &Plan) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel(1024);
    let opened = plan.source.open(plan.format, plan.line_limit);
    let stamp = plan.stamp.clone();
    std::thread::spawn(move || {
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Msg::Fatal(e));
                return;
            }
        };
        for raw in reader {
            let msg = match raw {
                Ok(raw) => Msg::Item(Box::new(stamp.prepare(raw, SystemTime::now()))),
                Err(e) => Msg::Fatal(e.into()),
            };
            let stop = matches!(msg, Msg::Fatal(_));
            if tx.blocking_send(msg).is_err() || stop {
                return;
            }
        }
    });
    rx
}

fn failed(fatal: Fatal) -> Report {
    Report {
        counts: Counts::default(),
        fatal: Some(fatal),
        interrupted: false,
    }
}

async fn run(settings: &Settings, args: Args) -> Report {
    let mut plan = match plan(settings, &args) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let target = format!(
        "exchange {:?} with routing key {:?}",
        plan.exchange, plan.routing_key
    );
    let terminal = std::io::stderr().is_terminal();
    if args.strict {
        if matches!(plan.source, Source::Stdin) {
            let mut all = Vec::new();
            let read = tokio::task::spawn_blocking(move || {
                std::io::stdin().read_to_end(&mut all).map(|_| all)
            })
            .await;
            match read {
                Ok(Ok(all)) => plan.source = Source::Memory(Arc::new(all)),
                Ok(Err(e)) => return failed(Fatal::Input(InputError::Io(e))),
                Err(e) => return failed(Fatal::Usage(format!("reading stdin: {e}"))),
            }
        }
        let check = pass(&plan, None, &args, terminal, true).await;
        if check.fatal.is_some() || check.interrupted || check.counts.invalid > 0 {
            if check.fatal.is_none() && !check.interrupted {
                progress::out(&format!(
                    "strict: {} of {} jobs are invalid; nothing was published",
                    check.counts.invalid, check.counts.read
                ));
            }
            return check;
        }
    }
    if args.dry_run {
        let started = Instant::now();
        let report = pass(&plan, None, &args, terminal, false).await;
        progress::out(&summary(&report.counts, started.elapsed(), true, &target));
        return report;
    }
    let conn = match connect(settings, &plan.exchange).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let started = Instant::now();
    let report = pass(&plan, Some(&conn), &args, terminal, false).await;
    let _ = conn.close(200, ShortString::from("publish done")).await;
    if report.interrupted {
        progress::err(
            "interrupted: the jobs read so far were settled; the rest were not published",
        );
    }
    progress::out(&summary(&report.counts, started.elapsed(), false, &target));
    report
}

/// Connect, and check that the exchange exists (publishing to a missing one
/// would close the channel at the first job).
async fn connect(settings: &Settings, exchange: &str) -> Result<Connection, Fatal> {
    let conn = amqp::connect(&settings.amqp.url, "send-worker-publish").await?;
    if exchange.is_empty() {
        return Ok(conn);
    }
    let ch = conn.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = ch.close(200, ShortString::from("ok")).await;
            Ok(conn)
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404) => {
            let _ = conn.close(200, ShortString::from("no exchange")).await;
            Err(Fatal::ExchangeMissing {
                exchange: exchange.to_owned(),
                url: amqp::redact_url(settings.amqp.url.expose()),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// One pass over the input. With `conn`, publish the valid jobs; without,
/// only check them (printing each valid one unless `quiet_valid`).
async fn pass(
    plan: &Plan,
    conn: Option<&Connection>,
    args: &Args,
    terminal: bool,
    quiet_valid: bool,
) -> Report {
    let mut bytes = 0;
    let mut progress = Progress::new(terminal, plan.source.total_bytes(), args.progress_every);
    let label = plan.source.label();
    let mut counts = Counts::default();
    let mut window = match conn {
        Some(c) => match open_window(c, plan, args).await {
            Ok(w) => Some(w),
            Err(e) => return failed(e),
        },
        None => None,
    };
    let mut rx = spawn_reader(plan);
    let mut settled = Vec::new();
    let mut fatal = None;
    let mut interrupted = false;
    let started = tokio::time::Instant::now();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut interrupt => { interrupted = true; break }
            msg = rx.recv() => match msg { Some(m) => m, None => break },
        };
        match msg {
            Msg::Fatal(e) => {
                fatal = Some(e);
                break;
            }
            Msg::Item(item) => {
                let Item { line, end, job } = *item;
                bytes = end;
                counts.read += 1;
                match job {
                    Err(reason) => {
                        counts.invalid += 1;
                        progress.report(&format!("{label}:{line}: invalid: {reason}"));
                    }
                    Ok(job) => {
                        counts.valid += 1;
                        match window.as_mut() {
                            None if quiet_valid => {}
                            None => {
                                let body = String::from_utf8_lossy(&job.body);
                                progress.report_out(&format!("{label}:{line}\t{}\t{body}", job.id));
                            }
                            Some(w) => {
                                pace(args.rate, started, counts.valid.saturating_sub(1)).await;
                                if let Err(e) = w.publish(job, &mut settled).await {
                                    fatal = Some(Fatal::Amqp(e));
                                    break;
                                }
                                w.ready(&mut settled);
                            }
                        }
                    }
                }
            }
        }
        account(&mut counts, &mut settled, &progress, &label);
        progress.update(&counts, bytes);
    }
    drop(rx);
    if let Some(w) = window.as_mut() {
        settled.extend(w.finish().await);
    }
    account(&mut counts, &mut settled, &progress, &label);
    progress.update(&counts, bytes);
    progress.finish();
    Report {
        counts,
        fatal,
        interrupted,
    }
}

async fn open_window(conn: &Connection, plan: &Plan, args: &Args) -> Result<Window, Fatal> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let cap = usize::try_from(args.window).unwrap_or(256);
    Ok(Window::new(ch, &plan.exchange, &plan.routing_key, cap))
}

/// With `--rate`, wait until job number `n` (0-based) is due.
async fn pace(rate: Option<f64>, started: tokio::time::Instant, n: u64) {
    let Some(rate) = rate else { return };
    let Ok(offset) = Duration::try_from_secs_f64(n as f64 / rate) else {
        return;
    };
    if let Some(due) = started.checked_add(offset) {
        tokio::time::sleep_until(due).await;
    }
}

fn account(counts: &mut Counts, settled: &mut Vec<Settled>, progress: &Progress, label: &str) {
    for s in settled.drain(..) {
        match s.outcome {
            Outcome::Confirmed => counts.confirmed += 1,
            Outcome::Rejected(why) => {
                counts.rejected += 1;
                progress.report(&format!(
                    "{label}:{}: rejected (job {}): {why}",
                    s.line, s.id
                ));
            }
            Outcome::Unconfirmed(why) => {
                counts.unconfirmed += 1;
                progress.report(&format!(
                    "{label}:{}: unconfirmed (job {}; the broker may or may not have it): {why}",
                    s.line, s.id
                ));
            }
        }
    }
}
