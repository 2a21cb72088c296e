//! Reading jobs for `publish`: JSONL (one Telnyx request body per line, with
//! an optional `job_id` or `id` field), CSV (columns `to`, `from`, `text`,
//! `media_urls`, `job_id` or `id`, `messaging_profile_id`), or one job from
//! flags. A reader yields one [`Raw`] job per line, not yet validated; a line
//! that cannot even be read as a job carries the reason instead of a body.
//! Only an I/O error, or a CSV header that names no known columns, stops the
//! reading.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use serde_json::Value;

use crate::contract::SendRequest;

/// One job as read, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    /// The line it starts on (1-based), or 1 for a job from flags.
    pub line: u64,
    /// The input's byte offset just past it (for the progress bar).
    pub end: u64,
    /// The producer's job id, if the line has one.
    pub id: Option<String>,
    /// The body to publish, or why the line is no job.
    pub body: Result<Vec<u8>, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Header(String),
}

/// Read one line into `buf` (without its `\n`), keeping at most `limit`
/// bytes of it; the rest of a longer line is consumed and dropped. `None` at
/// the end of the input, else whether the line was longer than `limit`.
/// `consumed` grows by the bytes taken from `r`.
fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
    consumed: &mut u64,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let keep = if done { take - 1 } else { take };
        let room = limit.saturating_sub(buf.len());
        if keep > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..keep.min(room)]);
        r.consume(take);
        *consumed = consumed.saturating_add(u64::try_from(take).unwrap_or(u64::MAX));
        if done {
            return Ok(Some(too_long));
        }
    }
}

/// JSONL: one JSON object per line; blank lines are skipped.
pub struct JsonlReader<R> {
    input: R,
    line: u64,
    consumed: u64,
    limit: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonlReader<R> {
    /// `limit`: the longest line kept (longer ones are reported, not read).
    pub fn new(input: R, limit: usize) -> Self {
        Self {
            input,
            line: 0,
            consumed: 0,
            limit,
            buf: Vec::new(),
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<Raw, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let too_long = match read_line_bounded(
                &mut self.input,
                &mut self.buf,
                self.limit,
                &mut self.consumed,
            ) {
                Ok(None) => return None,
                Ok(Some(t)) => t,
                Err(e) => return Some(Err(e.into())),
            };
            self.line = self.line.saturating_add(1);
            if too_long {
                return Some(Ok(Raw {
                    line: self.line,
                    end: self.consumed,
                    id: None,
                    body: Err(format!("the line is longer than {} bytes", self.limit)),
                }));
            }
            let text = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(jsonl_job(self.line, self.consumed, text)));
        }
    }
}

/// A JSONL line: the body, with a `job_id` or `id` field taken out as the id.
fn jsonl_job(line: u64, end: u64, text: &[u8]) -> Raw {
    let trimmed = text.trim_ascii();
    let mut obj = match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Object(obj)) => obj,
        // Not a JSON object: the validator says why, in its own words.
        _ => {
            return Raw {
                line,
                end,
                id: None,
                body: Ok(trimmed.to_vec()),
            };
        }
    };
    let job_id = obj.remove("job_id");
    let id_field = obj.remove("id");
    if job_id.is_none() && id_field.is_none() {
        return Raw {
            line,
            end,
            id: None,
            body: Ok(trimmed.to_vec()),
        };
    }
    let (field, value) = match job_id {
        Some(v) => ("job_id", v),
        None => ("id", id_field.unwrap_or(Value::Null)),
    };
    let id = match value {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        _ => Err(format!("`{field}` must be a string or an integer")),
    };
    match id {
        Ok(id) => Raw {
            line,
            end,
            id,
            body: serde_json::to_vec(&Value::Object(obj)).map_err(|e| e.to_string()),
        },
        Err(reason) => Raw {
            line,
            end,
            id: None,
            body: Err(reason),
        },
    }
}

/// The CSV columns, by their position in the header.
#[derive(Debug, Default)]
struct Columns {
    to: usize,
    from: Option<usize>,
    text: Option<usize>,
    media_urls: Option<usize>,
    job_id: Option<usize>,
    messaging_profile_id: Option<usize>,
}

pub const CSV_COLUMNS: &str = "to, from, text, media_urls, job_id (or id), messaging_profile_id";

impl Columns {
    fn from_header(header: &csv::StringRecord) -> Result<Columns, InputError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, name) in header.iter().enumerate() {
            let name = name
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase();
            let name = if name == "id" {
                "job_id".to_owned()
            } else {
                name
            };
            if !matches!(
                name.as_str(),
                "to" | "from" | "text" | "media_urls" | "job_id" | "messaging_profile_id"
            ) {
                return Err(InputError::Header(format!(
                    "unknown CSV column {name:?} in the header (line 1); the columns are: {CSV_COLUMNS}"
                )));
            }
            if seen.insert(name.clone(), i).is_some() {
                return Err(InputError::Header(format!(
                    "CSV column {name:?} appears twice in the header (line 1)"
                )));
            }
        }
        let to = seen.get("to").copied().ok_or_else(|| {
            InputError::Header(format!(
                "the CSV header (line 1) has no `to` column; the columns are: {CSV_COLUMNS}"
            ))
        })?;
        Ok(Columns {
            to,
            from: seen.get("from").copied(),
            text: seen.get("text").copied(),
            media_urls: seen.get("media_urls").copied(),
            job_id: seen.get("job_id").copied(),
            messaging_profile_id: seen.get("messaging_profile_id").copied(),
        })
    }
}

/// CSV with a header line; each row is one job.
pub struct CsvReader<R> {
    reader: csv::Reader<R>,
    columns: Columns,
    record: csv::StringRecord,
}

impl<R: Read> CsvReader<R> {
    /// Read the header; an unknown or missing column is an error.
    pub fn new(input: R) -> Result<Self, InputError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(input);
        let header = match reader.headers() {
            Ok(h) => h.clone(),
            Err(e) => return Err(csv_fatal(e)),
        };
        let columns = Columns::from_header(&header)?;
        Ok(Self {
            reader,
            columns,
            record: csv::StringRecord::new(),
        })
    }
}

fn csv_fatal(e: csv::Error) -> InputError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => InputError::Io(io),
        other => InputError::Header(format!("the CSV header cannot be read: {other:?}")),
    }
}

impl<R: Read> Iterator for CsvReader<R> {
    type Item = Result<Raw, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.record.position().map_or(0, csv::Position::line);
                let end = self.reader.position().byte();
                Some(Ok(csv_job(line, end, &self.columns, &self.record)))
            }
            Err(e) if e.is_io_error() => Some(Err(csv_fatal(e))),
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("the row has {len} fields; the header has {expected_len}"),
                    csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_owned(),
                    _ => e.to_string(),
                };
                Some(Ok(Raw {
                    line,
                    end: self.reader.position().byte(),
                    id: None,
                    body: Err(reason),
                }))
            }
        }
    }
}

/// `media_urls` in a CSV cell: a JSON array, or URLs separated by spaces or `|`.
pub fn split_media(cell: &str) -> Result<Vec<String>, String> {
    let cell = cell.trim();
    if cell.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(cell)
            .map_err(|e| format!("`media_urls` is not a JSON array of strings: {e}"));
    }
    Ok(cell
        .split(|c: char| c == '|' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn csv_job(line: u64, end: u64, c: &Columns, rec: &csv::StringRecord) -> Raw {
    let cell = |i: Option<usize>| i.and_then(|i| rec.get(i)).unwrap_or("");
    let media = match split_media(cell(c.media_urls)) {
        Ok(m) => m,
        Err(reason) => {
            return Raw {
                line,
                end,
                id: None,
                body: Err(reason),
            };
        }
    };
    let text = cell(c.text);
    let request = SendRequest {
        to: cell(Some(c.to)).trim().to_owned(),
        from: non_empty(cell(c.from)),
        // The text as written: spaces can be meant.
        text: (!text.is_empty()).then(|| text.to_owned()),
        media_urls: media,
        messaging_profile_id: non_empty(cell(c.messaging_profile_id)),
        ..SendRequest::default()
    };
    Raw {
        line,
        end,
        id: non_empty(cell(c.job_id)),
        body: serde_json::to_vec(&request).map_err(|e| e.to_string()),
    }
}

/// One job from flags.
pub fn flags_job(request: &SendRequest, id: Option<String>) -> Raw {
    Raw {
        line: 1,
        end: 0,
        id,
        body: serde_json::to_vec(request).map_err(|e| e.to_string()),
    }
}
