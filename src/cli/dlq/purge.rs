//! `dlq purge`: delete every entry, or the matching ones. It asks for the
//! queue name as a confirmation unless `--yes` is given.

use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::QueuePurgeOptions;
use lapin::types::ShortString;

use super::entry::{Entry, Filter};
use super::scan::{Scan, Sweep, sweep};
use super::{Console, DlqError, Prompt, Report, queue_depth};
use crate::config::Settings;

/// Acks each matching entry: it leaves the queue.
struct Purge;

impl Sweep for Purge {
    fn command(&self) -> &'static str {
        "purge"
    }

    fn done(&self, report: &Report) -> (&'static str, u64) {
        ("purged", report.purged)
    }

    async fn take(
        &mut self,
        scan: &mut Scan,
        delivery: Delivery,
        _entry: Entry,
        report: &mut Report,
        _io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError> {
        match scan.ack(&delivery).await {
            Ok(()) => {
                report.purged += 1;
                Ok(None)
            }
            Err(e) => Ok(Some(e)),
        }
    }

    async fn finish(
        &mut self,
        _scan: &mut Scan,
        _report: &mut Report,
        _io: &mut Console<'_>,
    ) -> Result<Option<String>, DlqError> {
        Ok(None)
    }
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

pub(super) async fn purge(
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
    let (mut scan, mut report) = Scan::start(conn, queue).await?;
    let outcome = sweep(
        &mut scan,
        filter,
        dry_run,
        progress_every,
        &mut Purge,
        &mut report,
        io,
    )
    .await;
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
