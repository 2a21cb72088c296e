//! `dlq show JOB_ID`: every entry of one job in full (headers, properties,
//! body). Nothing is removed.

use std::time::SystemTime;

use lapin::Connection;

use super::render::{entry_json, write_entry};
use super::scan::Scan;
use super::{Console, DlqError, Report};
use crate::config::Settings;

pub(super) async fn show(
    conn: &Connection,
    settings: &Settings,
    job_id: &str,
    json: bool,
    io: &mut Console<'_>,
) -> Result<Report, DlqError> {
    let queue = &settings.amqp.dead_letter_queue;
    let (mut scan, mut report) = Scan::start(conn, queue).await?;
    let now = SystemTime::now();
    let mut found = Vec::new();
    while let Some((delivery, entry)) = scan.next_counted(&mut report).await? {
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
