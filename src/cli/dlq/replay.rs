//! `dlq replay`: re-publish matching entries to the work exchange with their
//! attempt counts reset. An entry is acked in the DLQ only once the broker has
//! confirmed its copy; if a publish fails, the replay stops and every entry
//! not yet confirmed stays in the DLQ.

use std::io::Write;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::Connection;
use lapin::message::Delivery;

use super::entry::{Entry, Filter, replay_props};
use super::render::one_line;
use super::scan::{Scan, Sweep, sweep};
use super::{Console, DlqError, Report, check_exchange};
use crate::amqp::Publisher;
use crate::config::{AmqpSettings, Settings};

/// Replays in batches of confirms.
struct Replay<'a> {
    /// `None` on a dry run.
    publisher: Option<Publisher>,
    amqp: &'a AmqpSettings,
    batch: usize,
    pending: Vec<(Delivery, Entry)>,
}

impl Sweep for Replay<'_> {
    fn command(&self) -> &'static str {
        "replay"
    }

    fn done(&self, report: &Report) -> (&'static str, u64) {
        ("replayed", report.replayed)
    }

    async fn take(
        &mut self,
        scan: &mut Scan,
        delivery: Delivery,
        entry: Entry,
        report: &mut Report,
        io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError> {
        self.pending.push((delivery, entry));
        if self.pending.len() < self.batch {
            return Ok(None);
        }
        self.flush(scan, report, io).await
    }

    async fn finish(
        &mut self,
        scan: &mut Scan,
        report: &mut Report,
        io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        self.flush(scan, report, io).await
    }
}

impl Replay<'_> {
    async fn flush(
        &mut self,
        scan: &mut Scan,
        report: &mut Report,
        io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError> {
        match &self.publisher {
            Some(p) => replay_batch(scan, p, self.amqp, &mut self.pending, report, io).await,
            None => Ok(None),
        }
    }
}

/// Re-publish a batch concurrently, each confirmed; ack in the DLQ only what
/// was confirmed. Returns why the replay must stop, if it must. Every
/// confirmed copy is acked even if writing the output fails meanwhile.
async fn replay_batch(
    scan: &mut Scan,
    publisher: &Publisher,
    a: &AmqpSettings,
    pending: &mut Vec<(Delivery, Entry)>,
    report: &mut Report,
    io: &mut Console<'_>,
) -> Result<Option<String>, DlqError> {
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

pub(super) async fn replay(
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
    let (mut scan, mut report) = Scan::start(conn, &a.dead_letter_queue).await?;
    let publisher = if dry_run {
        None
    } else {
        Some(
            Publisher::new(
                conn,
                Duration::from_millis(settings.amqp.publish_timeout_ms),
            )
            .await?,
        )
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
    let mut action = Replay {
        publisher,
        amqp: a,
        batch,
        pending: Vec::with_capacity(batch),
    };
    let outcome = sweep(
        &mut scan,
        filter,
        dry_run,
        progress_every,
        &mut action,
        &mut report,
        io,
    )
    .await;
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
