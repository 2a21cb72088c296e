//! Turning a [`Raw`] job into what is published: its job id (the producer's,
//! or one derived from the file name and line number, so the same file gives
//! the same ids every time), its AMQP properties, and the worker's own
//! verdict on it ([`Job::parse`], the very check the worker runs first).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::ShortString;
use uuid::Uuid;

use super::input::Raw;
use crate::contract::JobHeaders;
use crate::job::{Job, RejectionKind};

/// The namespace of derived job ids: `uuid5(ID_NAMESPACE, "<name>:<line>")`.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1e_2f0a_93b4_4d4e_9a57_0c5e_8b21_f3d7);

/// The job id of line `line` of a file called `name`, when the line has none.
pub fn derived_id(name: &str, line: u64) -> String {
    Uuid::new_v5(&ID_NAMESPACE, format!("{name}:{line}").as_bytes()).to_string()
}

/// The longest AMQP short string: `message_id` is one.
const MAX_ID_BYTES: usize = 255;

/// How ids are found for jobs without one.
#[derive(Debug, Clone)]
pub enum Ids {
    /// Derived from this name (the file name, or `--id-namespace`).
    Derived(String),
    /// Standard input without `--id-namespace`: no stable name to derive from.
    Unnamed,
    /// One job from flags: a random id.
    Random,
}

/// What every job gets, and the worker's limits it is checked against.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub ids: Ids,
    pub expires_in: Option<Duration>,
    pub max_body_bytes: usize,
    pub max_age: Option<Duration>,
}

/// A job ready to publish.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub line: u64,
    pub id: String,
    pub body: Vec<u8>,
    pub props: BasicProperties,
}

/// A line's job, or why it is skipped.
#[derive(Debug)]
pub struct Item {
    pub line: u64,
    /// The input's byte offset just past the line.
    pub end: u64,
    pub job: Result<Prepared, String>,
}

impl Stamp {
    fn id_for(&self, raw: &Raw) -> Result<String, String> {
        let id = match (&raw.id, &self.ids) {
            (Some(id), _) => id.clone(),
            (None, Ids::Derived(name)) => derived_id(name, raw.line),
            (None, Ids::Random) => Uuid::new_v4().to_string(),
            (None, Ids::Unnamed) => {
                return Err(
                    "no job_id, and standard input has no file name to derive one \
                            from: pass --id-namespace NAME (or give the line a job_id)"
                        .to_owned(),
                );
            }
        };
        if id.len() > MAX_ID_BYTES {
            return Err(format!(
                "the job id is {} bytes; an AMQP message_id holds at most {MAX_ID_BYTES}",
                id.len()
            ));
        }
        Ok(id)
    }

    /// The properties of job `id`, published at `now`: persistent, JSON,
    /// `message_id`, `timestamp`, and `x-expires-at` with `--expires-in`.
    fn props(&self, id: &str, now: SystemTime) -> Result<BasicProperties, String> {
        let message_id = ShortString::try_new(id).map_err(|e| e.to_string())?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut props = BasicProperties::default()
            .with_message_id(message_id)
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_timestamp(secs)
            .with_app_id(ShortString::from("send-worker-publish"));
        if let Some(ttl) = self.expires_in {
            let at = now
                .checked_add(ttl)
                .ok_or_else(|| "--expires-in is too far in the future".to_owned())?;
            props = JobHeaders {
                expires_at: Some(humantime::format_rfc3339_seconds(at).to_string()),
            }
            .apply(props);
        }
        Ok(props)
    }

    /// Give `raw` its id and properties, and run the worker's checks on it.
    pub fn prepare(&self, raw: Raw, now: SystemTime) -> Item {
        let (line, end) = (raw.line, raw.end);
        let job = (|| {
            let body = raw.body.clone()?;
            let id = self.id_for(&raw)?;
            let props = self.props(&id, now)?;
            match Job::parse(&body, &props, self.max_body_bytes, self.max_age) {
                Ok(_) => Ok(Prepared {
                    line,
                    id,
                    body,
                    props,
                }),
                Err(r) => Err(match r.kind {
                    RejectionKind::Malformed => format!("malformed: {}", r.detail),
                    RejectionKind::Validation => r.detail,
                }),
            }
        })();
        Item { line, end, job }
    }
}
