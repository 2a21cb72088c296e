//! What `publish` tells its user while it runs and at the end: an indicatif
//! bar on a terminal (stderr), plain progress lines otherwise, one line per
//! skipped or rejected job, and a summary with the counts, the time taken and
//! the rate.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A line on stdout. A closed stdout (`publish --dry-run | head`) is no
/// reason to stop publishing, nor to panic: the line is dropped.
pub fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr (dropped if stderr is closed).
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The running counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Jobs read (lines that are not blank).
    pub read: u64,
    /// Valid jobs (published, or to be published on a dry run).
    pub valid: u64,
    /// Published and confirmed by the broker.
    pub confirmed: u64,
    /// Skipped: the worker's validator refused them.
    pub invalid: u64,
    /// Returned (unroutable) or nacked by the broker.
    pub rejected: u64,
    /// Published, but the connection failed before the broker confirmed them.
    pub unconfirmed: u64,
}

enum Mode {
    Bar(ProgressBar),
    Lines { every: u64, next: u64 },
    Quiet,
}

pub struct Progress {
    mode: Mode,
    started: Instant,
}

impl Progress {
    /// A bar when `terminal` (over `total_bytes` if known, a spinner if not),
    /// else a plain line every `every` jobs read (0: none).
    pub fn new(terminal: bool, total_bytes: Option<u64>, every: u64) -> Self {
        let mode = if terminal {
            let bar = match total_bytes {
                Some(total) => ProgressBar::with_draw_target(
                    Some(total),
                    ProgressDrawTarget::stderr_with_hz(10),
                )
                .with_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {percent:>3}% {msg} (eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10))
                    .with_style(
                        ProgressStyle::with_template("{elapsed_precise} {spinner} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    ),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            Mode::Bar(bar)
        } else if every > 0 {
            Mode::Lines { every, next: every }
        } else {
            Mode::Quiet
        };
        Self {
            mode,
            started: Instant::now(),
        }
    }

    /// A message for the user (a skipped or rejected job), above the bar.
    pub fn report(&self, line: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(line),
            _ => err(line),
        }
    }

    /// A result line on stdout (a dry run's jobs), above the bar.
    pub fn report_out(&self, line: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.suspend(|| out(line)),
            _ => out(line),
        }
    }

    /// New counts, and the bytes of input read so far.
    pub fn update(&mut self, c: &Counts, bytes: u64) {
        let elapsed = self.started.elapsed();
        match &mut self.mode {
            Mode::Bar(bar) => {
                bar.set_position(bytes);
                bar.set_message(brief(c, elapsed));
            }
            Mode::Lines { every, next } => {
                if c.read >= *next {
                    err(&format!("progress: {} read, {}", c.read, brief(c, elapsed)));
                    while *next <= c.read {
                        *next = next.saturating_add(*every);
                    }
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn brief(c: &Counts, elapsed: Duration) -> String {
    format!(
        "{} published, {} invalid, {} rejected, {:.0}/s",
        c.confirmed,
        c.invalid,
        c.rejected,
        per_second(c.confirmed, elapsed)
    )
}

/// The closing summary.
pub fn summary(c: &Counts, elapsed: Duration, dry_run: bool, target: &str) -> String {
    let secs = elapsed.as_secs_f64();
    if dry_run {
        return format!(
            "dry run: {} of {} jobs would be published to {target}; {} invalid ({secs:.2} s)",
            c.valid, c.read, c.invalid
        );
    }
    let mut s = format!(
        "published {} of {} jobs to {target} in {secs:.2} s ({:.0} jobs/s); {} invalid, {} rejected",
        c.confirmed,
        c.read,
        per_second(c.confirmed, elapsed),
        c.invalid,
        c.rejected
    );
    if c.unconfirmed > 0 {
        s.push_str(&format!(", {} unconfirmed", c.unconfirmed));
    }
    s
}
