//! send-worker: consumes Telnyx send jobs from RabbitMQ and sends them through
//! the Telnyx Messaging API, with adaptive rate limiting, durable retries, a
//! dead-letter queue and account-wide halts.
//!
//! The path of one job is [`pipeline::Pipeline::handle`]; the runner that feeds
//! it is [`worker::Worker::run`]. `ARCHITECTURE.md` has the map.

// The send path.
pub mod amqp;
pub mod job;
pub mod limiter;
pub mod pipeline;
pub mod retry;
pub mod telnyx;
pub mod worker;

// Around it.
pub mod cli;
pub mod config;
pub mod contract;
pub mod ops;
pub mod redis;
pub mod secret;
pub mod store;
pub mod webhooks;

// Development: the Telnyx simulator and the kit that tests, benchmarks and
// the demo share. A production build leaves them out (`--no-default-features`).
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
pub mod testkit;
