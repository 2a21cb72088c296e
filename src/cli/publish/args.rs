//! The arguments of `publish` and the fixed plan of a run made from them and
//! the settings: where the jobs come from (a file, standard input, or flags),
//! their format, how jobs without an id get one, and where they go.

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use lapin::types::ShortString;

use super::Fatal;
use super::input::{self, CsvReader, InputError, JsonlReader, Raw};
use super::prepare::{Ids, Stamp};
use crate::config::Settings;
use crate::contract::SendRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object (a Telnyx request body) per line.
    Jsonl,
    /// A header line, then one job per row.
    Csv,
}

/// `send-worker publish`
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "to"])))]
pub struct Args {
    /// A JSONL or CSV file of jobs (`-`: standard input). CSV columns: to,
    /// from, text, media_urls, job_id (or id), messaging_profile_id. Lines
    /// without a job id get one derived from the file name and line number.
    #[arg(value_name = "FILE", conflicts_with = "to")]
    pub(super) input: Option<PathBuf>,
    /// The input format (default: csv for a `.csv` file, else jsonl).
    #[arg(long, value_enum, requires = "input")]
    pub(super) format: Option<Format>,
    /// The name derived job ids come from, instead of the file name (needed
    /// for standard input when lines have no job_id).
    #[arg(long, value_name = "NAME", requires = "input")]
    pub(super) id_namespace: Option<String>,

    /// One job from flags: its destination (E.164).
    #[arg(long, value_name = "E164", help_heading = "One job from flags")]
    pub(super) to: Option<String>,
    #[arg(long, requires = "to", help_heading = "One job from flags")]
    pub(super) from: Option<String>,
    #[arg(long, requires = "to", help_heading = "One job from flags")]
    pub(super) text: Option<String>,
    /// An https media URL (repeat for several).
    #[arg(
        long = "media-url",
        value_name = "URL",
        requires = "to",
        help_heading = "One job from flags"
    )]
    pub(super) media_urls: Vec<String>,
    #[arg(
        long,
        value_name = "ID",
        requires = "to",
        help_heading = "One job from flags"
    )]
    pub(super) messaging_profile_id: Option<String>,
    /// The job id (default: a random UUID).
    #[arg(
        long,
        value_name = "ID",
        requires = "to",
        help_heading = "One job from flags"
    )]
    pub(super) job_id: Option<String>,

    /// The exchange (default: amqp.exchange).
    #[arg(long, value_name = "NAME")]
    pub(super) exchange: Option<String>,
    /// The routing key (default: amqp.routing_key).
    #[arg(long, value_name = "KEY")]
    pub(super) routing_key: Option<String>,
    /// Publishes awaiting the broker's confirm at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    pub(super) window: u64,
    /// At most this many jobs per second.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub(super) rate: Option<f64>,
    /// Set `x-expires-at` this long after each job's publish (e.g. 5m, 1h):
    /// the worker dead-letters it as `expired` instead of sending it late.
    #[arg(long, value_name = "DURATION", value_parser = parse_expires_in)]
    pub(super) expires_in: Option<Duration>,
    /// Validate and print what would be published (line, job id, body);
    /// publish nothing and touch no broker.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Check every line first, and publish nothing if any is invalid.
    #[arg(long)]
    pub(super) strict: bool,
    /// Off a terminal, a progress line on stderr every N jobs read (0: none).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(super) progress_every: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.001..=1_000_000.0).contains(&r) => Ok(r),
        _ => Err("a number of jobs per second from 0.001 to 1000000".to_owned()),
    }
}

fn parse_expires_in(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be longer than 0".to_owned());
    }
    // Ten years: later is a mistake, and it must fit any SystemTime.
    if d > Duration::from_secs(10 * 365 * 24 * 3600) {
        return Err("must be at most 10 years".to_owned());
    }
    Ok(d)
}

/// Where jobs come from.
pub(super) enum Source {
    File(PathBuf),
    Stdin,
    /// Standard input, read whole (for `--strict`'s two passes).
    Memory(Arc<Vec<u8>>),
    Flags(Box<SendRequest>, Option<String>),
}

pub(super) type Reader = Box<dyn Iterator<Item = Result<Raw, InputError>> + Send>;

impl Source {
    pub(super) fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin | Source::Memory(_) => "stdin".to_owned(),
            Source::Flags(..) => "flags".to_owned(),
        }
    }

    pub(super) fn total_bytes(&self) -> Option<u64> {
        match self {
            Source::File(p) => std::fs::metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
            Source::Memory(b) => u64::try_from(b.len()).ok(),
            Source::Stdin | Source::Flags(..) => None,
        }
    }

    pub(super) fn open(&self, format: Format, limit: usize) -> Result<Reader, Fatal> {
        let stream: Box<dyn Read + Send> = match self {
            Source::File(p) => Box::new(std::fs::File::open(p).map_err(|e| Fatal::Open {
                path: p.display().to_string(),
                source: e,
            })?),
            Source::Stdin => Box::new(std::io::stdin()),
            Source::Memory(b) => Box::new(std::io::Cursor::new(SharedBytes(b.clone()))),
            Source::Flags(request, id) => {
                return Ok(Box::new(std::iter::once(Ok(input::flags_job(
                    request,
                    id.clone(),
                )))));
            }
        };
        Ok(match format {
            Format::Jsonl => Box::new(JsonlReader::new(BufReader::new(stream), limit)),
            Format::Csv => Box::new(CsvReader::new(stream)?),
        })
    }
}

struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The run's fixed choices, from the arguments and the settings.
pub(super) struct Plan {
    pub(super) source: Source,
    pub(super) format: Format,
    pub(super) stamp: Stamp,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    /// The longest JSONL line read (room for a job id field on top of the body).
    pub(super) line_limit: usize,
}

pub(super) fn plan(settings: &Settings, args: &Args) -> Result<Plan, Fatal> {
    let exchange = args
        .exchange
        .clone()
        .unwrap_or_else(|| settings.amqp.exchange.clone());
    let routing_key = args
        .routing_key
        .clone()
        .unwrap_or_else(|| settings.amqp.routing_key.clone());
    for (what, v) in [("exchange", &exchange), ("routing key", &routing_key)] {
        if ShortString::try_new(v.as_str()).is_err() {
            return Err(Fatal::Usage(format!(
                "the {what} is {} bytes; AMQP allows at most 255",
                v.len()
            )));
        }
    }
    let (source, ids) = match &args.input {
        Some(p) if p.as_os_str() == "-" => (
            Source::Stdin,
            args.id_namespace.clone().map_or(Ids::Unnamed, Ids::Derived),
        ),
        Some(p) => {
            let name = match &args.id_namespace {
                Some(n) => n.clone(),
                None => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Fatal::Usage(format!("{} is not a file", p.display())))?,
            };
            (Source::File(p.clone()), Ids::Derived(name))
        }
        None => {
            let request = SendRequest {
                to: args.to.clone().unwrap_or_default(),
                from: args.from.clone(),
                text: args.text.clone(),
                media_urls: args.media_urls.clone(),
                messaging_profile_id: args.messaging_profile_id.clone(),
                ..SendRequest::default()
            };
            let ids = if args.job_id.is_some() {
                Ids::Unnamed
            } else {
                Ids::Random
            };
            (Source::Flags(Box::new(request), args.job_id.clone()), ids)
        }
    };
    let format = args.format.unwrap_or(match &args.input {
        Some(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) => Format::Csv,
        _ => Format::Jsonl,
    });
    let max_body_bytes = settings.worker.max_body_bytes;
    Ok(Plan {
        source,
        format,
        stamp: Stamp {
            ids,
            expires_in: args.expires_in,
            max_body_bytes,
            max_age: (settings.worker.max_age_secs > 0)
                .then(|| Duration::from_secs(settings.worker.max_age_secs)),
        },
        exchange,
        routing_key,
        line_limit: max_body_bytes.saturating_add(1024),
    })
}
