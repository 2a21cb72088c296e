//! The wire contract: the Rust types of what producers send and what the
//! worker publishes, from which the JSON Schemas in `schema/` are generated
//! ([`schemas`]). `tests/contract.rs` fails when a file there differs from
//! what these types generate (`UPDATE_SCHEMA=1` rewrites them), and holds the
//! schemas to the code that really reads and writes the messages.

mod job;

pub use job::{
    ALPHANUMERIC_PATTERN, E164_PATTERN, HAS_LETTER_PATTERN, HTTPS_URL_PATTERN, MAX_TEXT_CHARS,
    MessageType, SHORT_CODE_PATTERN, SendRequest,
};

use schemars::generate::SchemaSettings;

/// Every schema file in `schema/`: its file name and its text (pretty JSON
/// with a trailing newline).
pub fn schemas() -> Vec<(&'static str, String)> {
    let deserialize = SchemaSettings::draft2020_12().for_deserialize();
    let files = [(
        "job-body.json",
        deserialize
            .clone()
            .into_generator()
            .into_root_schema_for::<SendRequest>(),
    )];
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
