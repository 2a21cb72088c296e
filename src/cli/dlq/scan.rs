//! A one-pass browse of the DLQ that never loses an entry, and [`sweep`], the
//! loop that `replay` and `purge` share: every entry counted, the matching
//! ones (up to the limit) printed on a dry run or handed to the command.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection};

use super::entry::{Entry, Filter};
use super::render::{progress, write_row};
use super::{Console, DlqError, Report, queue_depth};

/// Above this many deliveries of a DLQ entry, warn: every browse returns the
/// entries to the queue, which RabbitMQ 4.0–4.2 counts against a quorum
/// queue's delivery limit (20 by default there).
const DELIVERY_COUNT_WARNING: u64 = 10;

/// How long to wait for entries given back to be ready again.
const RETURN_WAIT: Duration = Duration::from_secs(5);

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
pub(super) struct Scan {
    ch: Channel,
    queue: String,
    /// Ready entries when the scan started: no more are yielded.
    pub(super) total: u64,
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
    /// Open a scan of `queue`, and the report it starts (its total: the
    /// ready entries now).
    pub(super) async fn start(conn: &Connection, queue: &str) -> Result<(Scan, Report), DlqError> {
        let scan = Scan::open(conn, queue).await?;
        let report = Report {
            total: scan.total,
            ..Report::default()
        };
        Ok((scan, report))
    }

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

    /// [`Scan::next`], counted in `report` (scanned, and by reason).
    pub(super) async fn next_counted(
        &mut self,
        report: &mut Report,
    ) -> Result<Option<(Delivery, Entry)>, DlqError> {
        let next = self.next().await?;
        if let Some((_, entry)) = &next {
            report.scanned += 1;
            *report.by_reason.entry(entry.reason.clone()).or_default() += 1;
        }
        Ok(next)
    }

    /// The next entry, unacked; `None` once as many entries as the queue
    /// held at the start have been seen, or the queue has no more ready.
    pub(super) async fn next(&mut self) -> Result<Option<(Delivery, Entry)>, DlqError> {
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
    pub(super) async fn ack(&mut self, delivery: &Delivery) -> Result<(), String> {
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
    pub(super) async fn close(
        mut self,
        conn: &Connection,
        err: &mut dyn Write,
    ) -> std::io::Result<()> {
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

/// What `replay` or `purge` does with each matching entry.
pub(super) trait Sweep {
    /// The command, for progress lines ("replay", "purge").
    fn command(&self) -> &'static str;

    /// What it has done, for progress lines ("replayed", "purged"), and how often.
    fn done(&self, report: &Report) -> (&'static str, u64);

    /// Take one matching entry (not on a dry run). Returns why the sweep
    /// must stop, if it must.
    async fn take(
        &mut self,
        scan: &mut Scan,
        delivery: Delivery,
        entry: Entry,
        report: &mut Report,
        io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError>;

    /// After the last entry: finish what is pending.
    async fn finish(
        &mut self,
        scan: &mut Scan,
        report: &mut Report,
        io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError>;
}

/// One pass over the queue for `replay` or `purge`. Entries that do not match
/// stay unacked and return untouched when the scan ends. On a dry run the
/// matching entries are printed as a table and nothing is taken. Returns why
/// the sweep stopped early, if it did.
pub(super) async fn sweep(
    scan: &mut Scan,
    filter: &Filter,
    dry_run: bool,
    progress_every: u64,
    action: &mut impl Sweep,
    report: &mut Report,
    io: &mut Console<'_>,
) -> Result<Option<String>, DlqError> {
    let now = SystemTime::now();
    let mut header = false;
    while filter.under_limit(report.matched) {
        let Some((delivery, entry)) = scan.next_counted(report).await? else {
            break;
        };
        if !filter.matches(&entry, now) {
            report.skipped += 1;
        } else {
            report.matched += 1;
            if dry_run {
                write_row(io.out, &mut header, &entry, now)?;
            } else if let Some(stop) = action.take(scan, delivery, entry, report, io).await? {
                return Ok(Some(stop));
            }
        }
        progress(
            io.err,
            progress_every,
            action.command(),
            report,
            action.done(report),
        )?;
    }
    if header {
        writeln!(io.out)?;
    }
    if dry_run {
        return Ok(None);
    }
    action.finish(scan, report, io).await
}
