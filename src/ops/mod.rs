//! What operators see: Prometheus metrics ([`metrics`]), the worker's shared
//! state and readiness ([`state`]), and the HTTP endpoints that serve them
//! ([`http`]); the metrics of delivery receipts ([`receipts`]). Nothing here
//! decides what happens to a job.

pub mod http;
pub mod metrics;
pub mod receipts;
pub mod state;
