//! `dlq list`: a table (or JSON lines) of the entries, and a summary by
//! reason. Nothing is removed.

use std::time::SystemTime;

use lapin::Connection;

use super::entry::Filter;
use super::render::{by_reason_line, progress, write_row};
use super::scan::Scan;
use super::{Console, DlqError, Report};
use crate::config::Settings;

pub(super) async fn list(
    conn: &Connection,
    settings: &Settings,
    filter: &Filter,
    json: bool,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let queue = &settings.amqp.dead_letter_queue;
    let (mut scan, mut report) = Scan::start(conn, queue).await?;
    let now = SystemTime::now();
    let mut header = false;
    while let Some((_delivery, entry)) = scan.next_counted(&mut report).await? {
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
