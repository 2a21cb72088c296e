//! The wire contract: the Rust types of what producers send and what the
//! worker publishes, from which the JSON Schemas in `schema/` are generated
//! ([`schemas`]). `tests/contract.rs` fails when a file there differs from
//! what these types generate (`UPDATE_SCHEMA=1` rewrites them), and holds the
//! schemas to the code that really reads and writes the messages.

mod delivery;
mod events;
mod headers;
mod job;

pub use delivery::{DeliveryEvent, DeliveryEventKind};
pub use events::{EventKind, ResultEvent};
pub use headers::{DeadLetterHeaders, JobHeaders, MAX_DETAIL_CHARS};
pub use job::{
    ALPHANUMERIC_PATTERN, E164_PATTERN, HAS_LETTER_PATTERN, HTTPS_URL_PATTERN, MAX_TEXT_CHARS,
    MessageType, SHORT_CODE_PATTERN, SendRequest,
};

use schemars::generate::SchemaSettings;

/// Every schema file in `schema/`: its file name and its text (pretty JSON
/// with a trailing newline). What producers send is described as the worker
/// reads it, what the worker publishes as it writes it.
pub fn schemas() -> Vec<(&'static str, String)> {
    let read = || {
        SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator()
    };
    let written = || {
        SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
    };
    let files = [
        (
            "job-body.json",
            read().into_root_schema_for::<SendRequest>(),
        ),
        (
            "job-headers.json",
            read().into_root_schema_for::<JobHeaders>(),
        ),
        (
            "result-event.json",
            written().into_root_schema_for::<ResultEvent<'static>>(),
        ),
        (
            "delivery-event.json",
            written().into_root_schema_for::<DeliveryEvent>(),
        ),
        (
            "dead-letter-headers.json",
            written().into_root_schema_for::<DeadLetterHeaders>(),
        ),
    ];
    files
        .into_iter()
        .map(|(name, schema)| {
            let mut text =
                serde_json::to_string_pretty(&schema).unwrap_or_else(|e| format!("error: {e}"));
            text.push('\n');
            (name, text)
        })
        .collect()
}
