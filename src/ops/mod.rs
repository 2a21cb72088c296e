//! What operators see: Prometheus metrics ([`metrics`]), the worker's shared
//! state and readiness ([`state`]), and the HTTP endpoints that serve them
//! ([`http`]). Nothing here decides what happens to a job.

pub mod http;
pub mod metrics;
pub mod state;
