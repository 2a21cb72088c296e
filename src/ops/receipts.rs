//! The metrics of delivery receipts (the webhook intake): final outcomes by
//! status and carrier error code, the time from the API's acceptance to the
//! final status, events by type and result, and rejected webhooks by cause.
//! Part of [`super::metrics::Metrics`] (one registry, one `/metrics`). Labels
//! are bounded: known statuses and documented delivery codes, else `other`.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// `cause` label values of `send_worker_webhook_rejections_total`.
pub const REJECTION_CAUSES: [&str; 5] = ["headers", "stale", "signature", "too_large", "malformed"];
/// `event` label values of `send_worker_webhook_events_total` (and `other`).
pub const EVENT_TYPES: [&str; 3] = ["message.sent", "message.finalized", "message.received"];
/// `result` label values of `send_worker_webhook_events_total`.
pub const EVENT_RESULTS: [&str; 4] = ["published", "duplicate", "busy", "unavailable"];
/// `status` label values of `send_worker_delivery_outcomes_total`.
pub const OUTCOME_STATUSES: [&str; 5] = [
    "delivered",
    "sending_failed",
    "delivery_failed",
    "delivery_unconfirmed",
    "other",
];

#[derive(Clone)]
pub struct ReceiptMetrics {
    /// `status`, `code` (a documented delivery code, `none` or `other`).
    pub outcomes: IntCounterVec,
    /// From the API accepting the message to its final status.
    pub seconds: Histogram,
    /// `event`, `result`.
    pub events: IntCounterVec,
    /// `cause`.
    pub rejections: IntCounterVec,
}

impl ReceiptMetrics {
    /// The families, registered in `r`, every known series at zero.
    pub fn register(r: &Registry, prefix: &str) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(format!("{prefix}{name}"), help), labels)
                .expect("valid metric");
            let _ = r.register(Box::new(v.clone()));
            v
        };
        let outcomes = vec(
            "delivery_outcomes_total",
            "Final delivery statuses (message.finalized) by status and carrier error code.",
            &["status", "code"],
        );
        let events = vec(
            "webhook_events_total",
            "Verified Telnyx webhooks by event type and result (published, duplicate, busy, unavailable, ignored).",
            &["event", "result"],
        );
        let rejections = vec(
            "webhook_rejections_total",
            "Webhooks rejected (400), by cause: headers, stale, signature, too_large, malformed (or not received in time).",
            &["cause"],
        );
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{prefix}delivery_seconds"),
                "From the API accepting a message to its final status (message.finalized's occurred_at).",
            )
            .buckets(vec![
                1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
        )
        .expect("valid metric");
        let _ = r.register(Box::new(seconds.clone()));
        for s in OUTCOME_STATUSES {
            outcomes.with_label_values(&[s, "none"]);
        }
        for e in EVENT_TYPES {
            for res in EVENT_RESULTS {
                events.with_label_values(&[e, res]);
            }
        }
        events.with_label_values(&["other", "ignored"]);
        for c in REJECTION_CAUSES {
            rejections.with_label_values(&[c]);
        }
        Self {
            outcomes,
            seconds,
            events,
            rejections,
        }
    }
}
