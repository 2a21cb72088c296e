//! `send-worker dlq`: inspect, replay and purge the dead-letter queue.
//!
//! Reading never loses an entry. The DLQ is browsed with `basic.get` on one
//! channel without acking: an unacked message is not handed to the same
//! channel twice, and the browse is bounded by the queue's depth when it
//! started, so each entry is seen once. Entries that are not acked go back to
//! the queue when the channel closes.
//!
//! `replay` re-publishes a matching entry to the work exchange (mandatory,
//! with a publisher confirm) and acks it in the DLQ only once the broker has
//! confirmed the copy. If a publish fails, the replay stops and every entry
//! not yet confirmed stays in the DLQ. `purge` asks for a confirmation.
//!
//! Entries come from two places: the worker's own dead-lettering (the
//! `x-error-*` headers, see [`crate::pipeline::dead_letter_props`]) and
//! RabbitMQ's, for poison messages that reached the work queue's delivery
//! limit (an `x-death` header, reason `delivery_limit`).
//!
//! | file | what it owns |
//! |---|---|
//! | `entry.rs` | an entry's verdict, the filters, replayed copies' properties |
//! | `scan.rs` | the one-pass browse and the loop replay and purge share |
//! | `render.rs` | tables, the full view, JSON, terminal-safe text |
//! | `list.rs`, `show.rs`, `replay.rs`, `purge.rs` | one command each |

mod entry;
mod list;
mod purge;
mod render;
mod replay;
mod scan;
mod show;
#[cfg(test)]
mod tests;

pub use entry::{Entry, Filter, STRIPPED_ON_REPLAY, replay_props};
pub use render::{amqp_json, entry_json, format_age, table_row, write_entry};

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use lapin::options::ExchangeDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ExchangeKind};

use crate::amqp::{self, BrokerError};
use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "the dead-letter queue {queue:?} does not exist on this broker; \
         it is declared when a worker starts (amqp.declare_topology), or check amqp.dead_letter_queue"
    )]
    QueueMissing { queue: String },
    #[error(
        "the work exchange {exchange:?} does not exist on this broker; nothing was replayed \
         (check amqp.exchange, or start a worker to declare the topology)"
    )]
    ExchangeMissing { exchange: String },
    #[error("no entry with job id {job_id:?} in {queue}")]
    NotFound { job_id: String, queue: String },
    #[error(
        "purge needs a confirmation: pass --yes, or run it on a terminal and type the queue name \
         when asked; nothing was removed"
    )]
    NotConfirmed,
    #[error("purge cancelled: the answer was not the queue name {queue:?}; nothing was removed")]
    Declined { queue: String },
    #[error(
        "replay stopped after {} replayed and {} failed: {reason}; entries not replayed stay in the DLQ",
        .report.replayed,
        .report.failed
    )]
    ReplayIncomplete { report: Box<Report>, reason: String },
    #[error("purge stopped after removing {purged} entries: {reason}")]
    PurgeIncomplete { purged: u64, reason: String },
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

/// `send-worker dlq ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List entries (job id, reason, code, HTTP status, attempts, age) and a
    /// summary by reason. Nothing is removed.
    List {
        #[command(flatten)]
        filter: Filter,
        /// One JSON object per line instead of a table (the summary goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Print the entries of one job in full: headers, properties, body.
    Show {
        /// The job id (the message's `message_id`).
        job_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-publish matching entries to the work exchange with their attempt
    /// counts reset. An entry leaves the DLQ only once its copy is confirmed.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Re-publishes awaiting a confirm at once.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch: u64,
        /// A progress line on stderr every N entries examined (0: none).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        progress_every: u64,
    },
    /// Delete entries: every entry, or those matching the filters. Asks for a
    /// confirmation unless --yes is given.
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for a confirmation.
        #[arg(long)]
        yes: bool,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A progress line on stderr every N entries examined (0: none).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        progress_every: u64,
    },
}

/// How `purge` obtains its confirmation when `--yes` is not given.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Ask on the terminal (stderr) and read the answer from stdin.
    Terminal,
    /// There is nobody to ask: refuse.
    Never,
    /// A canned answer (for tests).
    Answer(String),
}

/// Where a command writes: results to `out`, progress, warnings and
/// prompts to `err`.
pub struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub prompt: Prompt,
}

/// What a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Ready entries in the DLQ when the command started.
    pub total: u64,
    /// Entries examined.
    pub scanned: u64,
    /// Entries that matched the filters (up to the limit, for replay/purge).
    pub matched: u64,
    /// Entries printed (list, show).
    pub shown: u64,
    /// Entries re-published and acked (replay).
    pub replayed: u64,
    /// Entries removed (purge).
    pub purged: u64,
    /// Entries examined that did not match and were left alone.
    pub skipped: u64,
    /// Entries whose re-publish failed; they stay in the DLQ.
    pub failed: u64,
    /// Entries examined, by reason.
    pub by_reason: BTreeMap<String, u64>,
}

/// Run a `dlq` command, writing results to `out` and progress to stderr. A
/// purge asks on the terminal when stdin is one.
pub async fn run(
    settings: &Settings,
    cmd: DlqCommand,
    out: &mut impl Write,
) -> Result<Report, DlqError> {
    let prompt = if std::io::stdin().is_terminal() {
        Prompt::Terminal
    } else {
        Prompt::Never
    };
    let mut err = std::io::stderr();
    run_with(
        settings,
        cmd,
        Console {
            out,
            err: &mut err,
            prompt,
        },
    )
    .await
}

/// [`run`], with the output streams and the confirmation source given.
pub async fn run_with(
    settings: &Settings,
    cmd: DlqCommand,
    mut io: Console<'_>,
) -> Result<Report, DlqError> {
    let read_only = matches!(cmd, DlqCommand::List { .. } | DlqCommand::Show { .. });
    let conn = amqp::connect(&settings.amqp.url, "send-worker-dlq").await?;
    let result = match cmd {
        DlqCommand::List { filter, json } => {
            list::list(&conn, settings, &filter, json, &mut io).await
        }
        DlqCommand::Show { job_id, json } => {
            show::show(&conn, settings, &job_id, json, &mut io).await
        }
        DlqCommand::Replay {
            filter,
            dry_run,
            batch,
            progress_every,
        } => {
            let batch = usize::try_from(batch).unwrap_or(100);
            replay::replay(
                &conn,
                settings,
                &filter,
                dry_run,
                batch,
                progress_every,
                &mut io,
            )
            .await
        }
        DlqCommand::Purge {
            filter,
            yes,
            dry_run,
            progress_every,
        } => {
            purge::purge(
                &conn,
                settings,
                &filter,
                yes,
                dry_run,
                progress_every,
                &mut io,
            )
            .await
        }
    };
    // Closing the connection returns every entry that was read but not acked.
    let _ = conn.close(200, ShortString::from("dlq done")).await;
    let result = result.and_then(|r| {
        io.out.flush()?;
        Ok(r)
    });
    match result {
        // `dlq list | head`: the reader went away; that is not a failure.
        Err(DlqError::Io(e)) if read_only && e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(Report::default())
        }
        other => other,
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404)
}

/// Ready messages in `queue` (passive declare on a channel of its own, since
/// a missing queue closes the channel).
async fn queue_depth(conn: &Connection, queue: &str) -> Result<u64, DlqError> {
    let ch = conn.create_channel().await?;
    match amqp::queue_depth(&ch, queue).await {
        Ok(n) => {
            let _ = ch.close(200, ShortString::from("ok")).await;
            Ok(u64::from(n))
        }
        Err(e) if is_not_found(&e) => Err(DlqError::QueueMissing {
            queue: queue.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

async fn check_exchange(conn: &Connection, exchange: &str) -> Result<(), DlqError> {
    let ch = conn.create_channel().await?;
    match ch
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = ch.close(200, ShortString::from("ok")).await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(DlqError::ExchangeMissing {
            exchange: exchange.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}
