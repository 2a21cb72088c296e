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

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{Map, Value, json};

use crate::broker::{self, BrokerError, Publisher};
use crate::config::Settings;
use crate::headers;

/// Headers a replayed copy loses: the worker's verdict and counters, and
/// RabbitMQ's own dead-lettering and redelivery bookkeeping.
pub const STRIPPED_ON_REPLAY: &[&str] = &[
    headers::ERROR_REASON,
    headers::ERROR_CODE,
    headers::ERROR_TITLE,
    headers::ERROR_DETAIL,
    headers::HTTP_STATUS,
    headers::FAILED_AT,
    headers::ATTEMPTS,
    headers::RATE_LIMIT_BOUNCES,
    headers::DEFERRALS,
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
];

/// Above this many deliveries of a DLQ entry, warn: every browse returns the
/// entries to the queue, which RabbitMQ 4.0–4.2 counts against a quorum
/// queue's delivery limit (20 by default there).
const DELIVERY_COUNT_WARNING: u64 = 10;

/// How long to wait for entries given back to be ready again.
const RETURN_WAIT: Duration = Duration::from_secs(5);

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

/// Which entries a command applies to. Every given criterion must hold.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only entries with this reason (repeatable): validation, malformed,
    /// permanent, attempts-exhausted, expired, or a RabbitMQ reason such as
    /// delivery_limit. `_` and `-` are interchangeable.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Only entries with this API error code (repeatable), e.g. 40300.
    #[arg(long = "code", value_name = "CODE")]
    pub codes: Vec<String>,
    /// Only entries for this job id (repeatable).
    #[arg(long = "job-id", value_name = "ID")]
    pub job_ids: Vec<String>,
    /// Only entries dead-lettered at least this long ago (e.g. 30m, 2h, 7d).
    /// Entries of unknown age never match an age filter.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only entries dead-lettered at most this long ago.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Act on at most this many matching entries (`list` still counts all
    /// entries for its summary).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

impl Filter {
    /// No criterion and no limit: everything matches.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
            && self.codes.is_empty()
            && self.job_ids.is_empty()
            && self.older_than.is_none()
            && self.newer_than.is_none()
            && self.limit.is_none()
    }

    /// Whether `entry` matches the criteria (the limit aside).
    pub fn matches(&self, entry: &Entry, now: SystemTime) -> bool {
        if !self.reasons.is_empty() {
            let reason = normalize_reason(&entry.reason);
            if !self.reasons.iter().any(|r| normalize_reason(r) == reason) {
                return false;
            }
        }
        if !self.codes.is_empty() {
            let Some(code) = &entry.code else {
                return false;
            };
            if !self.codes.iter().any(|c| c.trim() == code) {
                return false;
            }
        }
        if !self.job_ids.is_empty() {
            let Some(id) = &entry.job_id else {
                return false;
            };
            if !self.job_ids.iter().any(|j| j == id) {
                return false;
            }
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            let Some(age) = entry.age(now) else {
                return false;
            };
            if self.older_than.is_some_and(|min| age < min) {
                return false;
            }
            if self.newer_than.is_some_and(|max| age > max) {
                return false;
            }
        }
        true
    }

    fn under_limit(&self, matched: u64) -> bool {
        self.limit.is_none_or(|l| matched < l)
    }

    /// A short description for messages ("all entries", "entries with ...").
    fn describe(&self) -> String {
        let mut s = match self.criteria() {
            Some(c) => format!("entries with {c}"),
            None => "all entries".to_owned(),
        };
        if let Some(l) = self.limit {
            s.push_str(&format!(" (at most {l})"));
        }
        s
    }

    /// The criteria, the limit aside: "reason a|b, code c"; `None` if none.
    fn criteria(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.reasons.is_empty() {
            parts.push(format!("reason {}", self.reasons.join("|")));
        }
        if !self.codes.is_empty() {
            parts.push(format!("code {}", self.codes.join("|")));
        }
        if !self.job_ids.is_empty() {
            parts.push(format!("job id {}", self.job_ids.join("|")));
        }
        if let Some(d) = self.older_than {
            parts.push(format!("older than {}", humantime::format_duration(d)));
        }
        if let Some(d) = self.newer_than {
            parts.push(format!("newer than {}", humantime::format_duration(d)));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

fn normalize_reason(r: &str) -> String {
    r.trim().to_ascii_lowercase().replace('_', "-")
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

/// The summary of one DLQ entry, from its headers and properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub job_id: Option<String>,
    /// `x-error-reason`; else the reason of the latest `x-death`
    /// (`delivery_limit`, ...); else `unknown`.
    pub reason: String,
    pub code: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    pub http_status: Option<u32>,
    pub attempts: Option<u32>,
    /// `x-failed-at`; else the latest `x-death` time; else the AMQP timestamp.
    pub failed_at: Option<SystemTime>,
    /// How often RabbitMQ has delivered the entry (`x-delivery-count`).
    pub delivery_count: Option<u64>,
    /// For an entry RabbitMQ dead-lettered: the queue it came from.
    pub death_queue: Option<String>,
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(name))
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn table_string(t: &FieldTable, key: &str) -> Option<String> {
    match t.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn table_time(t: &FieldTable, key: &str) -> Option<SystemTime> {
    let secs = match t.inner().get(key)? {
        AMQPValue::Timestamp(v) => *v,
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok()?,
        AMQPValue::LongInt(v) => u64::try_from(*v).ok()?,
        AMQPValue::LongUInt(v) => u64::from(*v),
        _ => return None,
    };
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The most recent `x-death` record (RabbitMQ keeps them newest first).
fn latest_death(props: &BasicProperties) -> Option<&FieldTable> {
    match header(props, "x-death")? {
        AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

impl Entry {
    pub fn from_props(props: &BasicProperties) -> Entry {
        let death = latest_death(props);
        let reason = nonempty(headers::get_string(props, headers::ERROR_REASON))
            .or_else(|| death.and_then(|d| nonempty(table_string(d, "reason"))))
            .unwrap_or_else(|| "unknown".to_owned());
        let failed_at = headers::get_string(props, headers::FAILED_AT)
            .and_then(|s| crate::job::parse_deadline(&s))
            .or_else(|| death.and_then(|d| table_time(d, "time")))
            .or_else(|| {
                props
                    .timestamp()
                    .filter(|t| *t > 0)
                    .map(|t| UNIX_EPOCH + Duration::from_secs(t))
            });
        Entry {
            job_id: crate::job::job_id(props),
            reason,
            code: nonempty(headers::get_string(props, headers::ERROR_CODE)),
            title: nonempty(headers::get_string(props, headers::ERROR_TITLE)),
            detail: nonempty(headers::get_string(props, headers::ERROR_DETAIL)),
            http_status: headers::get_u32(props, headers::HTTP_STATUS).filter(|s| *s > 0),
            attempts: headers::get_u32(props, headers::ATTEMPTS),
            failed_at,
            delivery_count: headers::get_u64(props, "x-delivery-count"),
            death_queue: death.and_then(|d| nonempty(table_string(d, "queue"))),
        }
    }

    /// Time since the entry was dead-lettered (zero if that is in the future).
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.failed_at
            .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO))
    }

    fn json(&self, now: SystemTime) -> Value {
        json!({
            "job_id": self.job_id,
            "reason": self.reason,
            "code": self.code,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "title": self.title,
            "detail": self.detail,
            "failed_at": self.failed_at.map(rfc3339),
            "age_secs": self.age(now).map(|d| d.as_secs()),
            "delivery_count": self.delivery_count,
            "dead_lettered_from": self.death_queue,
        })
    }
}

/// The properties of a replayed copy: the original's, minus the headers in
/// [`STRIPPED_ON_REPLAY`] (so the attempt count starts again) and minus any
/// `expiration`.
pub fn replay_props(p: &BasicProperties) -> BasicProperties {
    crate::headers::copy_props(p, |k| !STRIPPED_ON_REPLAY.contains(&k))
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
    let conn = broker::connect(&settings.amqp.url, "send-worker-dlq").await?;
    let result = match cmd {
        DlqCommand::List { filter, json } => list(&conn, settings, &filter, json, &mut io).await,
        DlqCommand::Show { job_id, json } => show(&conn, settings, &job_id, json, &mut io).await,
        DlqCommand::Replay {
            filter,
            dry_run,
            batch,
            progress_every,
        } => {
            let batch = usize::try_from(batch).unwrap_or(100);
            replay(
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
            purge(
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
    match crate::broker::queue_depth(&ch, queue).await {
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

/// A one-pass browse of a queue: each ready entry at most once, none acked
/// unless the caller acks it; the rest return when [`Scan::close`] closes
/// the channel.
///
/// Acks on a quorum queue are applied asynchronously, and RabbitMQ drops
/// the ones its channel still has buffered when the channel closes
/// (rabbitmq/rabbitmq-server#10327, seen here with 3.10 after 50 acks in a
/// row): the entry comes back although its copy was already replayed. So
/// acks go in small groups, each followed by a [`Scan::barrier`], a
/// `basic.get` that the queue answers only after applying the acks sent
/// before it (the group is small enough for none to be held back in the
/// channel), and there is always a barrier before the channel closes.
struct Scan {
    ch: Channel,
    queue: String,
    /// Ready entries when the scan started: no more are yielded.
    total: u64,
    /// Entries yielded or buffered (counted against `total`).
    fetched: u64,
    /// Entries taken from the queue on this channel, beyond-bound ones too.
    taken: u64,
    /// Entries a barrier took that are yet to be yielded.
    ahead: VecDeque<Delivery>,
    /// Entries acked (removed from the queue).
    removed: u64,
    /// Acks sent since the last barrier.
    unbarriered: usize,
    max_delivery_count: u64,
}

/// Acks sent between two barriers, well under the 32 commands a quorum
/// queue client keeps in flight before it starts buffering.
const ACKS_PER_BARRIER: usize = 8;

impl Scan {
    async fn open(conn: &Connection, queue: &str) -> Result<Scan, DlqError> {
        let total = queue_depth(conn, queue).await?;
        let ch = conn.create_channel().await?;
        Ok(Scan {
            ch,
            queue: queue.to_owned(),
            total,
            fetched: 0,
            taken: 0,
            ahead: VecDeque::new(),
            removed: 0,
            unbarriered: 0,
            max_delivery_count: 0,
        })
    }

    async fn get(&mut self) -> Result<Option<Delivery>, DlqError> {
        let got = self
            .ch
            .basic_get(
                ShortString::from(self.queue.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        if got.is_some() {
            self.taken += 1;
        }
        Ok(got.map(|m| m.delivery))
    }

    /// The next entry, unacked; `None` once as many entries as the queue
    /// held at the start have been seen, or the queue has no more ready.
    async fn next(&mut self) -> Result<Option<(Delivery, Entry)>, DlqError> {
        let delivery = match self.ahead.pop_front() {
            Some(d) => Some(d),
            None if self.fetched < self.total => {
                let d = self.get().await?;
                if d.is_some() {
                    self.fetched += 1;
                }
                d
            }
            None => None,
        };
        Ok(delivery.map(|d| {
            let entry = Entry::from_props(&d.properties);
            self.max_delivery_count = self
                .max_delivery_count
                .max(entry.delivery_count.unwrap_or(0));
            (d, entry)
        }))
    }

    /// A round trip through the queue itself. The entry it takes, if any, is
    /// yielded later (or, past the bound, just held and given back).
    async fn barrier(&mut self) -> Result<(), DlqError> {
        if let Some(d) = self.get().await?
            && self.fetched < self.total
        {
            self.fetched += 1;
            self.ahead.push_back(d);
        }
        Ok(())
    }

    /// Ack an entry: it leaves the queue. A barrier follows every few acks.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), String> {
        match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => return Err("the delivery was already settled".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
        self.removed += 1;
        self.unbarriered += 1;
        if self.unbarriered >= ACKS_PER_BARRIER {
            self.unbarriered = 0;
            self.barrier().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Give back every entry read and not acked, and wait (a few seconds at
    /// most) until the broker has them ready again, so that a command run
    /// right after this one sees them.
    async fn close(mut self, conn: &Connection, err: &mut dyn Write) -> std::io::Result<()> {
        let removed = self.removed;
        if self.unbarriered > 0 && self.barrier().await.is_err() {
            writeln!(
                err,
                "warning: the channel to {} failed before its acks were confirmed applied; \
                 run `dlq list` to check for entries that were replayed or purged but came back",
                self.queue
            )?;
        }
        let _ = self.ch.close(200, ShortString::from("browsed")).await;
        let held = self.taken.saturating_sub(removed);
        if held > 0 {
            let want = self.total.saturating_sub(removed);
            let deadline = Instant::now() + RETURN_WAIT;
            loop {
                match queue_depth(conn, &self.queue).await {
                    Ok(depth) if depth < want => {}
                    _ => break,
                }
                if Instant::now() >= deadline {
                    writeln!(
                        err,
                        "note: {held} entries read from {} were given back but are not all ready yet",
                        self.queue
                    )?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        if self.max_delivery_count >= DELIVERY_COUNT_WARNING {
            writeln!(
                err,
                "warning: some entries of {} have been delivered {} times. Every browse counts as a \
                 delivery on RabbitMQ 4.0-4.2, where quorum queues drop a message at their delivery \
                 limit (20 by default); give this queue a policy with delivery-limit -1 there.",
                self.queue, self.max_delivery_count
            )?;
        }
        Ok(())
    }
}

/// "dlq replay: examined 2000/52000, matched 800, replayed 780, failed 0"
fn progress(
    err: &mut dyn Write,
    every: u64,
    command: &str,
    report: &Report,
    (done, n): (&str, u64),
) -> std::io::Result<()> {
    if every > 0 && report.scanned > 0 && report.scanned.is_multiple_of(every) {
        writeln!(
            err,
            "dlq {command}: examined {}/{}, matched {}, {done} {n}, failed {}",
            report.scanned, report.total, report.matched, report.failed
        )?;
    }
    Ok(())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "42s", "17m", "5h12m", "3d4h".
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, (s % 86_400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// One line of text from producer- or API-supplied data: control characters
/// (which could drive the terminal) become `?`, runs of whitespace a space.
fn one_line(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for c in s.chars() {
        let c = if c.is_whitespace() {
            ' '
        } else if c.is_control() {
            '?'
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == max_chars {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Multi-line text with control characters other than newline and tab escaped.
fn safe_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

const TABLE_HEADER: &str = "JOB ID                                 REASON              CODE    STATUS  ATTEMPTS  AGE      DETAIL";

/// A table row, after the header if it is the first.
fn write_row(
    out: &mut dyn Write,
    header_done: &mut bool,
    e: &Entry,
    now: SystemTime,
) -> std::io::Result<()> {
    if !*header_done {
        writeln!(out, "{TABLE_HEADER}")?;
        *header_done = true;
    }
    writeln!(out, "{}", table_row(e, now))
}

fn table_row(e: &Entry, now: SystemTime) -> String {
    let dash = || "-".to_owned();
    let detail = match (&e.title, &e.detail, &e.death_queue) {
        (_, Some(d), _) => d.clone(),
        (Some(t), None, _) => t.clone(),
        (None, None, Some(q)) => format!("dead-lettered by RabbitMQ from {q}"),
        (None, None, None) => String::new(),
    };
    format!(
        "{:<38} {:<19} {:<7} {:<7} {:>8}  {:<8} {}",
        e.job_id.as_deref().map_or_else(dash, |s| one_line(s, 64)),
        one_line(&e.reason, 40),
        e.code.as_deref().map_or_else(dash, |s| one_line(s, 16)),
        e.http_status.map_or_else(dash, |s| s.to_string()),
        e.attempts.map_or_else(dash, |a| a.to_string()),
        e.age(now).map_or_else(dash, format_age),
        one_line(&detail, 60),
    )
}

fn by_reason_line(by_reason: &BTreeMap<String, u64>) -> String {
    if by_reason.is_empty() {
        return "none".to_owned();
    }
    let mut v: Vec<_> = by_reason.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(r, n)| format!("{} {n}", one_line(r, 40)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn list(
    conn: &Connection,
    settings: &Settings,
    filter: &Filter,
    json: bool,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let queue = &settings.amqp.dead_letter_queue;
    let mut scan = Scan::open(conn, queue).await?;
    let now = SystemTime::now();
    let mut report = Report {
        total: scan.total,
        ..Report::default()
    };
    let mut header = false;
    while let Some((_delivery, entry)) = scan.next().await? {
        report.scanned += 1;
        *report.by_reason.entry(entry.reason.clone()).or_default() += 1;
        if filter.matches(&entry, now) {
            report.matched += 1;
            if filter.under_limit(report.shown) {
                report.shown += 1;
                if json {
                    writeln!(io.out, "{}", entry.json(now))?;
                } else {
                    write_row(io.out, &mut header, &entry, now)?;
                }
            }
        } else {
            report.skipped += 1;
        }
        progress(io.err, 10_000, "list", &report, ("shown", report.shown))?;
    }
    scan.close(conn, io.err).await?;
    let mut summary = format!(
        "{queue}: {} entries; by reason: {}",
        report.scanned,
        by_reason_line(&report.by_reason)
    );
    match filter.criteria() {
        Some(c) => summary.push_str(&format!(
            "\n{} match {c}; {} shown",
            report.matched, report.shown
        )),
        None if report.shown < report.matched => {
            summary.push_str(&format!("\n{} shown (--limit)", report.shown));
        }
        None => {}
    }
    if json {
        writeln!(io.err, "{summary}")?;
    } else {
        if header {
            writeln!(io.out)?;
        }
        writeln!(io.out, "{summary}")?;
    }
    Ok(report)
}

fn properties_json(p: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put(
        "message_id",
        p.message_id().as_ref().map(|v| json!(v.as_str())),
    );
    put(
        "content_type",
        p.content_type().as_ref().map(|v| json!(v.as_str())),
    );
    put(
        "content_encoding",
        p.content_encoding().as_ref().map(|v| json!(v.as_str())),
    );
    put("delivery_mode", p.delivery_mode().map(|v| json!(v)));
    put("priority", p.priority().map(|v| json!(v)));
    put(
        "correlation_id",
        p.correlation_id().as_ref().map(|v| json!(v.as_str())),
    );
    put("reply_to", p.reply_to().as_ref().map(|v| json!(v.as_str())));
    put(
        "expiration",
        p.expiration().as_ref().map(|v| json!(v.as_str())),
    );
    put(
        "timestamp",
        p.timestamp()
            .map(|t| json!(rfc3339(UNIX_EPOCH + Duration::from_secs(t)))),
    );
    put("type", p.kind().as_ref().map(|v| json!(v.as_str())));
    put("user_id", p.user_id().as_ref().map(|v| json!(v.as_str())));
    put("app_id", p.app_id().as_ref().map(|v| json!(v.as_str())));
    put(
        "cluster_id",
        p.cluster_id().as_ref().map(|v| json!(v.as_str())),
    );
    m
}

/// An AMQP value as JSON (timestamps as RFC 3339, byte arrays escaped).
pub fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Timestamp(t) => json!(rfc3339(UNIX_EPOCH + Duration::from_secs(*t))),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(b.as_slice().escape_ascii().to_string()),
        AMQPValue::Void => Value::Null,
    }
}

fn headers_json(p: &BasicProperties) -> Map<String, Value> {
    p.headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The body as JSON if it is JSON, else as text if UTF-8, else escaped bytes.
enum Body {
    Json(Value),
    Text(String),
    Bytes(String),
}

fn body(data: &[u8]) -> Body {
    match std::str::from_utf8(data) {
        Ok(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => Body::Json(v),
            Err(_) => Body::Text(s.to_owned()),
        },
        Err(_) => Body::Bytes(data.escape_ascii().to_string()),
    }
}

fn write_entry(
    out: &mut dyn Write,
    props: &BasicProperties,
    data: &[u8],
    redelivered: bool,
    now: SystemTime,
) -> std::io::Result<()> {
    let e = Entry::from_props(props);
    let field = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_owned(), safe_text);
    writeln!(out, "job id:       {}", field(&e.job_id))?;
    writeln!(out, "reason:       {}", safe_text(&e.reason))?;
    writeln!(out, "code:         {}", field(&e.code))?;
    writeln!(out, "title:        {}", field(&e.title))?;
    writeln!(out, "detail:       {}", field(&e.detail))?;
    writeln!(
        out,
        "http status:  {}",
        e.http_status
            .map_or_else(|| "-".to_owned(), |s| s.to_string())
    )?;
    writeln!(
        out,
        "attempts:     {}",
        e.attempts.map_or_else(|| "-".to_owned(), |s| s.to_string())
    )?;
    match e.failed_at {
        Some(at) => writeln!(
            out,
            "failed at:    {} ({} ago)",
            rfc3339(at),
            format_age(e.age(now).unwrap_or_default())
        )?,
        None => writeln!(out, "failed at:    -")?,
    }
    writeln!(
        out,
        "deliveries:   {} (redelivered: {redelivered})",
        e.delivery_count.unwrap_or(0) + 1
    )?;
    writeln!(out, "properties:")?;
    for (k, v) in properties_json(props) {
        writeln!(out, "  {k}: {v}")?;
    }
    writeln!(out, "headers:")?;
    for (k, v) in headers_json(props) {
        writeln!(out, "  {}: {v}", safe_text(&k))?;
    }
    match body(data) {
        Body::Json(v) => {
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            writeln!(out, "body ({} bytes, JSON):\n{pretty}", data.len())?;
        }
        Body::Text(s) => writeln!(out, "body ({} bytes, text):\n{}", data.len(), safe_text(&s))?,
        Body::Bytes(s) => writeln!(out, "body ({} bytes, not UTF-8):\n{s}", data.len())?,
    }
    Ok(())
}

fn entry_json(props: &BasicProperties, data: &[u8], redelivered: bool, now: SystemTime) -> Value {
    let mut v = Entry::from_props(props).json(now);
    if let Value::Object(m) = &mut v {
        m.insert("redelivered".into(), json!(redelivered));
        m.insert("properties".into(), Value::Object(properties_json(props)));
        m.insert("headers".into(), Value::Object(headers_json(props)));
        let (k, b) = match body(data) {
            Body::Json(j) => ("body", j),
            Body::Text(s) => ("body_text", json!(s)),
            Body::Bytes(s) => ("body_bytes_escaped", json!(s)),
        };
        m.insert(k.into(), b);
    }
    v
}

async fn show(
    conn: &Connection,
    settings: &Settings,
    job_id: &str,
    json: bool,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let queue = &settings.amqp.dead_letter_queue;
    let mut scan = Scan::open(conn, queue).await?;
    let now = SystemTime::now();
    let mut report = Report {
        total: scan.total,
        ..Report::default()
    };
    let mut found = Vec::new();
    while let Some((delivery, entry)) = scan.next().await? {
        report.scanned += 1;
        *report.by_reason.entry(entry.reason.clone()).or_default() += 1;
        if entry.job_id.as_deref() == Some(job_id) {
            report.matched += 1;
            found.push((delivery.properties, delivery.data, delivery.redelivered));
        } else {
            report.skipped += 1;
        }
    }
    scan.close(conn, io.err).await?;
    if found.is_empty() {
        return Err(DlqError::NotFound {
            job_id: job_id.to_owned(),
            queue: queue.clone(),
        });
    }
    let n = found.len();
    for (i, (props, data, redelivered)) in found.iter().enumerate() {
        if json {
            writeln!(io.out, "{}", entry_json(props, data, *redelivered, now))?;
        } else {
            if n > 1 {
                writeln!(io.out, "=== entry {} of {n} ===", i + 1)?;
            } else if i > 0 {
                writeln!(io.out)?;
            }
            write_entry(io.out, props, data, *redelivered, now)?;
            if i + 1 < n {
                writeln!(io.out)?;
            }
        }
        report.shown += 1;
    }
    Ok(report)
}

/// Re-publish a batch concurrently, each confirmed; ack in the DLQ only what
/// was confirmed. Returns why the replay must stop, if it must. Every
/// confirmed copy is acked even if writing the output fails meanwhile.
async fn replay_batch(
    scan: &mut Scan,
    publisher: &Publisher,
    settings: &Settings,
    pending: &mut Vec<(Delivery, Entry)>,
    report: &mut Report,
    io: &mut Console<'_>,
) -> Result<Option<String>, DlqError> {
    let a = &settings.amqp;
    let results = join_all(pending.iter().map(|(d, _)| {
        publisher.publish(
            &a.exchange,
            &a.routing_key,
            &d.data,
            replay_props(&d.properties),
            true,
        )
    }))
    .await;
    let mut stop = None;
    let mut write_error = None;
    let mut note = |w: &mut dyn Write, line: String| {
        if write_error.is_none()
            && let Err(e) = writeln!(w, "{line}")
        {
            write_error = Some(e);
        }
    };
    for ((delivery, entry), result) in pending.drain(..).zip(results) {
        let id = entry
            .job_id
            .as_deref()
            .map_or_else(|| "-".to_owned(), |s| one_line(s, 64));
        match result {
            Ok(()) => {
                report.replayed += 1;
                match scan.ack(&delivery).await {
                    Ok(()) => note(
                        io.out,
                        format!("replayed {id} ({})", one_line(&entry.reason, 40)),
                    ),
                    Err(e) => {
                        note(
                            io.err,
                            format!(
                                "replayed {id}, but its ack in the DLQ failed ({e}): \
                                 it may be replayed twice"
                            ),
                        );
                        stop.get_or_insert_with(|| format!("acking {id} in the DLQ failed: {e}"));
                    }
                }
            }
            Err(e) => {
                report.failed += 1;
                note(io.err, format!("not replayed {id}: {e}"));
                stop.get_or_insert_with(|| format!("re-publishing {id} failed: {e}"));
            }
        }
    }
    match write_error {
        Some(e) => Err(e.into()),
        None => Ok(stop),
    }
}

/// What a replay does, besides the scan.
struct ReplayPlan<'a> {
    /// `None` for a dry run.
    publisher: Option<&'a Publisher>,
    settings: &'a Settings,
    filter: &'a Filter,
    batch: usize,
    progress_every: u64,
}

/// The replay proper: scan, publish, ack. Returns why it stopped early.
async fn replay_entries(
    scan: &mut Scan,
    plan: &ReplayPlan<'_>,
    report: &mut Report,
    io: &mut Console<'_>,
) -> Result<Option<String>, DlqError> {
    let ReplayPlan {
        publisher,
        settings,
        filter,
        batch,
        progress_every,
    } = *plan;
    let now = SystemTime::now();
    let mut header = false;
    let mut pending = Vec::with_capacity(batch);
    while filter.under_limit(report.matched) {
        let Some((delivery, entry)) = scan.next().await? else {
            break;
        };
        report.scanned += 1;
        *report.by_reason.entry(entry.reason.clone()).or_default() += 1;
        if !filter.matches(&entry, now) {
            // Left unacked: it returns to the DLQ untouched when the scan ends.
            report.skipped += 1;
        } else {
            report.matched += 1;
            match publisher {
                None => write_row(io.out, &mut header, &entry, now)?,
                Some(p) => {
                    pending.push((delivery, entry));
                    if pending.len() >= batch {
                        let stop =
                            replay_batch(scan, p, settings, &mut pending, report, io).await?;
                        if stop.is_some() {
                            return Ok(stop);
                        }
                    }
                }
            }
        }
        progress(
            io.err,
            progress_every,
            "replay",
            report,
            ("replayed", report.replayed),
        )?;
    }
    match publisher {
        Some(p) if !pending.is_empty() => {
            replay_batch(scan, p, settings, &mut pending, report, io).await
        }
        _ => {
            if header {
                writeln!(io.out)?;
            }
            Ok(None)
        }
    }
}

async fn replay(
    conn: &Connection,
    settings: &Settings,
    filter: &Filter,
    dry_run: bool,
    batch: usize,
    progress_every: u64,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let a = &settings.amqp;
    if !dry_run {
        check_exchange(conn, &a.exchange).await?;
    }
    let mut scan = Scan::open(conn, &a.dead_letter_queue).await?;
    let publisher = if dry_run {
        None
    } else {
        Some(Publisher::new(conn).await?)
    };
    let mut report = Report {
        total: scan.total,
        ..Report::default()
    };
    writeln!(
        io.err,
        "{}{} of {} ({} entries) to exchange {:?} with routing key {:?}",
        if dry_run {
            "dry run: replaying "
        } else {
            "replaying "
        },
        filter.describe(),
        a.dead_letter_queue,
        scan.total,
        a.exchange,
        a.routing_key
    )?;
    let plan = ReplayPlan {
        publisher: publisher.as_ref(),
        settings,
        filter,
        batch,
        progress_every,
    };
    let outcome = replay_entries(&mut scan, &plan, &mut report, io).await;
    // Whatever happened, the acks sent must be applied before the channel
    // goes, and the entries held must go back.
    scan.close(conn, io.err).await?;
    let stop = outcome?;
    let not_examined = report.total.saturating_sub(report.scanned);
    if dry_run {
        writeln!(
            io.out,
            "dry run: {} entries would be replayed; {} did not match; {} not examined; nothing was changed",
            report.matched, report.skipped, not_examined
        )?;
    } else {
        writeln!(
            io.err,
            "replay done: {} replayed, {} skipped (did not match), {} failed, {} not examined",
            report.replayed, report.skipped, report.failed, not_examined
        )?;
    }
    if let Some(reason) = stop {
        return Err(DlqError::ReplayIncomplete {
            report: Box::new(report),
            reason,
        });
    }
    Ok(report)
}

async fn confirm_purge(
    yes: bool,
    queue: &str,
    what: &str,
    depth: u64,
    io: &mut Console<'_>,
) -> Result<(), DlqError> {
    if yes {
        return Ok(());
    }
    let answer = match &io.prompt {
        Prompt::Never => return Err(DlqError::NotConfirmed),
        Prompt::Answer(a) => a.clone(),
        Prompt::Terminal => {
            write!(
                io.err,
                "This permanently deletes {what} from {queue} ({depth} entries in it now).\n\
                 Type the queue name to confirm: "
            )?;
            io.err.flush()?;
            tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await
            .map_err(std::io::Error::other)??
        }
    };
    if answer.trim() == queue {
        Ok(())
    } else {
        Err(DlqError::Declined {
            queue: queue.to_owned(),
        })
    }
}

/// The filtered purge proper. Returns why it stopped early.
async fn purge_entries(
    scan: &mut Scan,
    filter: &Filter,
    dry_run: bool,
    progress_every: u64,
    report: &mut Report,
    io: &mut Console<'_>,
) -> Result<Option<String>, DlqError> {
    let now = SystemTime::now();
    let mut header = false;
    while filter.under_limit(report.matched) {
        let Some((delivery, entry)) = scan.next().await? else {
            break;
        };
        report.scanned += 1;
        *report.by_reason.entry(entry.reason.clone()).or_default() += 1;
        if filter.matches(&entry, now) {
            report.matched += 1;
            if dry_run {
                write_row(io.out, &mut header, &entry, now)?;
            } else {
                match scan.ack(&delivery).await {
                    Ok(()) => report.purged += 1,
                    Err(e) => return Ok(Some(e)),
                }
            }
        } else {
            report.skipped += 1;
        }
        progress(
            io.err,
            progress_every,
            "purge",
            report,
            ("purged", report.purged),
        )?;
    }
    if header {
        writeln!(io.out)?;
    }
    Ok(None)
}

async fn purge(
    conn: &Connection,
    settings: &Settings,
    filter: &Filter,
    yes: bool,
    dry_run: bool,
    progress_every: u64,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let queue = &settings.amqp.dead_letter_queue;
    let depth = queue_depth(conn, queue).await?;
    let what = filter.describe();
    if !dry_run {
        confirm_purge(yes, queue, &what, depth, io).await?;
    }
    if filter.is_empty() && !dry_run {
        let ch = conn.create_channel().await?;
        let n = ch
            .queue_purge(
                ShortString::from(queue.as_str()),
                QueuePurgeOptions::default(),
            )
            .await?;
        let _ = ch.close(200, ShortString::from("purged")).await;
        writeln!(io.out, "purged {n} entries from {queue}")?;
        let n = u64::from(n);
        return Ok(Report {
            total: depth,
            matched: n,
            purged: n,
            ..Report::default()
        });
    }
    let mut scan = Scan::open(conn, queue).await?;
    let mut report = Report {
        total: scan.total,
        ..Report::default()
    };
    let outcome = purge_entries(&mut scan, filter, dry_run, progress_every, &mut report, io).await;
    // Whatever happened, the acks sent must be applied before the channel goes.
    scan.close(conn, io.err).await?;
    let stop = outcome?;
    if dry_run {
        writeln!(
            io.out,
            "dry run: {} entries would be removed from {queue}; {} did not match; nothing was changed",
            report.matched, report.skipped
        )?;
    } else {
        writeln!(
            io.out,
            "purged {} entries ({what}) from {queue}; {} did not match and were kept",
            report.purged, report.skipped
        )?;
    }
    if let Some(reason) = stop {
        return Err(DlqError::PurgeIncomplete {
            purged: report.purged,
            reason,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;
    use crate::pipeline::{DeadReason, dead_letter_props};
    use clap::Parser;
    use lapin::types::FieldArray;

    fn original() -> BasicProperties {
        let p = BasicProperties::default()
            .with_message_id("job-1".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_correlation_id("corr".into())
            .with_expiration("5000".into());
        let p = headers::with_header(p, "x-tenant", headers::string("acme"));
        let p = headers::with_header(p, headers::RATE_LIMIT_BOUNCES, headers::int(3));
        headers::with_header(p, headers::DEFERRALS, headers::int(2))
    }

    fn dead(reason: DeadReason, code: Option<&str>, status: Option<u16>) -> BasicProperties {
        let f = Failure {
            status,
            code: code.map(str::to_owned),
            title: "Blocked".into(),
            detail: "The recipient replied\nSTOP.".into(),
            retry_after: None,
        };
        dead_letter_props(&original(), reason, &f, 4)
    }

    fn death(reason: &str, time: u64) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("reason".into(), headers::string(reason));
        t.insert("queue".into(), headers::string("messages.send"));
        t.insert("count".into(), AMQPValue::LongLongInt(1));
        t.insert("time".into(), AMQPValue::Timestamp(time));
        AMQPValue::FieldTable(t)
    }

    fn poison() -> BasicProperties {
        let mut arr = FieldArray::default();
        arr.push(death("delivery_limit", 1_700_000_500));
        arr.push(death("expired", 1_700_000_100));
        let p = headers::with_header(
            BasicProperties::default()
                .with_message_id("poison-1".into())
                .with_timestamp(1_700_000_000),
            "x-death",
            AMQPValue::FieldArray(arr),
        );
        let p = headers::with_header(p, "x-first-death-reason", headers::string("expired"));
        headers::with_header(p, "x-delivery-count", headers::int(2))
    }

    #[test]
    fn entries_of_the_worker_are_read_from_the_x_error_headers() {
        let e = Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403)));
        assert_eq!(e.job_id.as_deref(), Some("job-1"));
        assert_eq!(e.reason, "permanent");
        assert_eq!(e.code.as_deref(), Some("40300"));
        assert_eq!(e.http_status, Some(403));
        assert_eq!(e.attempts, Some(4));
        assert_eq!(e.title.as_deref(), Some("Blocked"));
        let age = e.age(SystemTime::now()).expect("x-failed-at is read");
        assert!(age < Duration::from_secs(60), "{age:?}");

        // A validation rejection has no code and no HTTP status.
        let e = Entry::from_props(&dead(DeadReason::Validation, None, None));
        assert_eq!(e.reason, "validation");
        assert_eq!(e.code, None);
        assert_eq!(e.http_status, None);
    }

    #[test]
    fn entries_dead_lettered_by_rabbitmq_use_the_latest_x_death() {
        let e = Entry::from_props(&poison());
        assert_eq!(e.reason, "delivery_limit");
        assert_eq!(e.job_id.as_deref(), Some("poison-1"));
        assert_eq!(e.code, None);
        assert_eq!(e.attempts, None);
        assert_eq!(e.delivery_count, Some(2));
        assert_eq!(
            e.failed_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_500))
        );
        // Nothing at all: unknown reason, age from the AMQP timestamp.
        let e = Entry::from_props(&BasicProperties::default().with_timestamp(1_700_000_000));
        assert_eq!(e.reason, "unknown");
        assert_eq!(e.job_id, None);
        assert_eq!(
            e.failed_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            Entry::from_props(&BasicProperties::default()).failed_at,
            None
        );
    }

    #[test]
    fn filters_combine_reason_code_job_and_age() {
        let now = SystemTime::now();
        let perm = Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403)));
        let poison = Entry::from_props(&poison());
        let f = |tweak: fn(&mut Filter)| {
            let mut f = Filter::default();
            tweak(&mut f);
            f
        };
        assert!(Filter::default().matches(&perm, now));
        assert!(f(|f| f.reasons = vec!["permanent".into()]).matches(&perm, now));
        assert!(!f(|f| f.reasons = vec!["validation".into()]).matches(&perm, now));
        assert!(
            f(|f| f.reasons = vec!["validation".into(), "PERMANENT".into()]).matches(&perm, now)
        );
        // `_` and `-` are the same.
        assert!(f(|f| f.reasons = vec!["delivery-limit".into()]).matches(&poison, now));
        assert!(f(|f| f.reasons = vec!["delivery_limit".into()]).matches(&poison, now));
        assert!(f(|f| f.codes = vec!["40300".into()]).matches(&perm, now));
        assert!(!f(|f| f.codes = vec!["40310".into()]).matches(&perm, now));
        assert!(!f(|f| f.codes = vec!["40300".into()]).matches(&poison, now));
        assert!(f(|f| f.job_ids = vec!["job-1".into()]).matches(&perm, now));
        assert!(!f(|f| f.job_ids = vec!["job-2".into()]).matches(&perm, now));
        // perm failed just now; poison in 2023.
        let older_1h = f(|f| f.older_than = Some(Duration::from_secs(3600)));
        let newer_1h = f(|f| f.newer_than = Some(Duration::from_secs(3600)));
        assert!(!older_1h.matches(&perm, now));
        assert!(older_1h.matches(&poison, now));
        assert!(newer_1h.matches(&perm, now));
        assert!(!newer_1h.matches(&poison, now));
        // Unknown age never matches an age filter.
        let ageless = Entry::from_props(&BasicProperties::default());
        assert!(!older_1h.matches(&ageless, now));
        assert!(!newer_1h.matches(&ageless, now));
        assert!(Filter::default().matches(&ageless, now));
        // Criteria combine.
        let both = f(|f| {
            f.reasons = vec!["permanent".into()];
            f.codes = vec!["40310".into()];
        });
        assert!(!both.matches(&perm, now));
    }

    #[test]
    fn the_limit_counts_matches() {
        let f = Filter {
            limit: Some(2),
            ..Filter::default()
        };
        assert!(!f.is_empty());
        assert!(f.under_limit(1));
        assert!(!f.under_limit(2));
        assert!(Filter::default().under_limit(u64::MAX - 1));
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn replayed_copies_lose_the_verdict_and_counters_and_keep_the_rest() {
        let mut p = dead(DeadReason::AttemptsExhausted, Some("10007"), Some(500));
        for (k, v) in poison().headers().clone().unwrap_or_default().inner() {
            p = headers::with_header(p, k.as_str(), v.clone());
        }
        let r = replay_props(&p);
        for h in STRIPPED_ON_REPLAY {
            assert!(
                headers::get_string(&r, h).is_none()
                    && !r.headers().as_ref().unwrap().contains_key(h),
                "{h} kept"
            );
        }
        assert_eq!(crate::job::attempts_made(&r), 0, "attempts reset");
        assert_eq!(headers::get_string(&r, "x-tenant").as_deref(), Some("acme"));
        assert_eq!(r.message_id().as_ref().unwrap().as_str(), "job-1");
        assert_eq!(r.correlation_id().as_ref().unwrap().as_str(), "corr");
        assert_eq!(
            r.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(r.timestamp(), &Some(1_700_000_000));
        assert_eq!(r.delivery_mode(), &Some(2));
        assert_eq!(r.expiration(), &None);
        // No headers left at all: none sent.
        let bare = replay_props(&poison());
        assert!(bare.headers().is_none());
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(Duration::from_secs(0)), "0s");
        assert_eq!(format_age(Duration::from_secs(59)), "59s");
        assert_eq!(format_age(Duration::from_secs(61)), "1m");
        assert_eq!(format_age(Duration::from_secs(3600)), "1h");
        assert_eq!(format_age(Duration::from_secs(3600 + 120)), "1h2m");
        assert_eq!(format_age(Duration::from_secs(86_400 * 3)), "3d");
        assert_eq!(format_age(Duration::from_secs(86_400 * 3 + 7200)), "3d2h");
    }

    #[test]
    fn producer_text_cannot_drive_the_terminal() {
        assert_eq!(one_line("a\x1b[31mb\nc", 100), "a?[31mb c");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("a  \n\t b", 10), "a b");
        assert_eq!(safe_text("x\x1by\nz"), "x\\u{1b}y\nz");
        let row = table_row(
            &Entry::from_props(&dead(DeadReason::Permanent, Some("40300"), Some(403))),
            SystemTime::now(),
        );
        assert!(row.contains("The recipient replied STOP."), "{row}");
        assert!(!row.contains('\n'));
    }

    #[test]
    fn amqp_values_render_as_json() {
        let v = amqp_json(&AMQPValue::FieldArray({
            let mut a = FieldArray::default();
            a.push(death("delivery_limit", 0));
            a
        }));
        assert_eq!(v[0]["reason"], "delivery_limit");
        assert_eq!(v[0]["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v[0]["count"], 1);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: DlqCommand,
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "dlq",
            "replay",
            "--reason",
            "validation",
            "--reason",
            "permanent",
            "--code",
            "40300",
            "--older-than",
            "2h",
            "--newer-than",
            "7d",
            "--limit",
            "10",
            "--dry-run",
        ])
        .expect("parses");
        let DlqCommand::Replay {
            filter, dry_run, ..
        } = cli.cmd
        else {
            panic!("not replay");
        };
        assert!(dry_run);
        assert_eq!(filter.reasons, ["validation", "permanent"]);
        assert_eq!(filter.codes, ["40300"]);
        assert_eq!(filter.older_than, Some(Duration::from_secs(7200)));
        assert_eq!(filter.newer_than, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(filter.limit, Some(10));
        assert!(Cli::try_parse_from(["dlq", "list", "--older-than", "soon"]).is_err());
        assert!(
            Cli::try_parse_from(["dlq", "show"]).is_err(),
            "job id required"
        );
        assert!(Cli::try_parse_from(["dlq", "purge", "--yes"]).is_ok());
        assert!(Cli::try_parse_from(["dlq", "replay", "--batch", "0"]).is_err());
    }
}
