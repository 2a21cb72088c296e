//! send-worker: consumes Telnyx send jobs from RabbitMQ and sends them through
//! the Telnyx Messaging API, with adaptive rate limiting, durable retries, a
//! dead-letter queue and account-wide halts.
//!
//! The path of one job is [`pipeline::Pipeline::handle`]; the runner that feeds
//! it is [`worker::Worker::run`].

pub mod broker;
pub mod circuit;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod encoding;
pub mod headers;
pub mod http;
pub mod job;
pub mod limiter;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
pub mod retry;
pub mod secret;
pub mod simulator;
pub mod state;
pub mod telnyx;
pub mod worker;
