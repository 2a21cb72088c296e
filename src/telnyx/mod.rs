//! The Telnyx Messaging API: the HTTP client that reports what happened
//! ([`client`]), and [`classify`], the one function that says what an answer
//! means. Every ack, retry, dead-letter and halt follows from its [`Outcome`].

mod client;
mod outcome;

pub use client::{ApiResponse, ApiResult, ClientError, TelnyxClient, TransportError};
pub use outcome::{
    Accepted, Cost, Failure, HALT_CODES, MAX_RETRY_AFTER, Outcome, RATE_LIMIT_CODE,
    TRANSIENT_CODES, classify, classify_at, retry_after,
};
