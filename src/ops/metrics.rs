//! Prometheus metrics. Labels are bounded: results, reasons, HTTP statuses,
//! Telnyx error codes (5-digit numbers only), sender classes, attempt numbers,
//! currencies, limiter stages, store operations. Never a phone number or a
//! job id. The standard `process_*` families (memory, CPU, file descriptors)
//! come from the prometheus crate's process collector, on Linux.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs_consumed: IntCounter,
    pub outcomes: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub api_duration: Histogram,
    pub end_to_end: Histogram,
    pub retries: IntCounterVec,
    pub limiter_rate: Gauge,
    pub limiter_remaining: Gauge,
    pub limiter_paused: IntGauge,
    pub limiter_paused_until: Gauge,
    pub pacing_deferrals: IntCounterVec,
    pub in_flight: IntGauge,
    pub halted: IntGauge,
    pub circuit_state: IntGauge,
    pub message_parts: IntCounter,
    pub cost: prometheus::CounterVec,
    pub broker_connected: IntGauge,
    pub consuming: IntGauge,
    pub events: IntCounterVec,
    pub panics: IntCounter,
    /// `stage`: `pacing` (message throughput) or `api` (the request bucket).
    pub limiter_wait: HistogramVec,
    /// Accepted sends by `sender_class` and `kind` (`sms`, `mms`).
    pub sends: IntCounterVec,
    pub dedupe_lease_contended: IntCounter,
    /// `action`: `send` or `dead_letter`.
    pub dedupe_unknown: IntCounterVec,
    /// `op`: `begin`, `record`, `release`, `lookup`.
    pub dedupe_store_errors: IntCounterVec,
    pub dedupe_store_seconds: Histogram,
    /// 1 while the job store answers (or none is configured), 0 while not;
    /// follows `WorkerState::set_store_unavailable`.
    pub dedupe_store_available: IntGauge,
    pub limiter_shared: IntGauge,
    pub limiter_fallback: IntCounter,
    /// Delivery receipts (the webhook intake).
    pub receipts: super::receipts::ReceiptMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are fixed and unique, so registration cannot fail; if it ever did,
    // the metric still works, it is just not exported.
    let _ = r.register(Box::new(m.clone()));
    m
}

/// Result label values of `send_worker_outcomes_total`.
pub mod result {
    pub const SENT: &str = "sent";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const EXPIRED: &str = "expired";
    pub const SUPPRESSED: &str = "suppressed";
    pub const REQUEUED: &str = "requeued";
    pub const DEFERRED: &str = "deferred";
}

/// Label values that are created at zero at start, so dashboards and alerts
/// see every series from the first scrape (rate() over a missing series is empty).
const KNOWN_OUTCOMES: [(&str, &str); 17] = [
    (result::SENT, "ok"),
    (result::RETRIED, "transient"),
    (result::RETRIED, "rate_limited"),
    (result::DEFERRED, "paced"),
    (result::DEAD_LETTERED, "permanent"),
    (result::DEAD_LETTERED, "validation"),
    (result::DEAD_LETTERED, "malformed"),
    (result::DEAD_LETTERED, "attempts_exhausted"),
    (result::EXPIRED, "expired"),
    (result::SUPPRESSED, "duplicate"),
    (result::REQUEUED, "account_halt"),
    (result::REQUEUED, "shutdown"),
    (result::REQUEUED, "publish_failed"),
    (result::DEAD_LETTERED, "delivery_limit"),
    (result::DEAD_LETTERED, "internal"),
    (result::DEAD_LETTERED, "unknown_outcome"),
    (result::DEFERRED, "leased"),
];

/// `sender_class` label values (`job::SenderClass::as_str`).
pub const SENDER_CLASSES: [&str; 5] = [
    "long_code",
    "toll_free",
    "short_code",
    "alphanumeric",
    "profile",
];
/// `stage` label values of `send_worker_limiter_wait_seconds`.
pub const LIMITER_STAGES: [&str; 2] = ["pacing", "api"];
/// `op` label values of `send_worker_dedupe_store_errors_total`.
pub const STORE_OPS: [&str; 4] = ["begin", "record", "release", "lookup"];
/// `action` label values of `send_worker_dedupe_unknown_total`.
pub const UNKNOWN_ACTIONS: [&str; 2] = ["send", "dead_letter"];

impl Metrics {
    pub fn new() -> Self {
        let m = Self::uninitialized();
        for (r, reason) in KNOWN_OUTCOMES {
            m.outcomes.with_label_values(&[r, reason]);
        }
        for class in SENDER_CLASSES {
            m.pacing_deferrals.with_label_values(&[class]);
            for kind in ["sms", "mms"] {
                m.sends.with_label_values(&[class, kind]);
            }
        }
        for stage in LIMITER_STAGES {
            m.limiter_wait.with_label_values(&[stage]);
        }
        for op in STORE_OPS {
            m.dedupe_store_errors.with_label_values(&[op]);
        }
        for action in UNKNOWN_ACTIONS {
            m.dedupe_unknown.with_label_values(&[action]);
        }
        m.dedupe_store_available.set(1);
        for attempt in 1..=4 {
            m.retries.with_label_values(&[&attempt.to_string()]);
        }
        m.api_requests.with_label_values(&["200", "none"]);
        for r in ["published", "failed", "dropped"] {
            m.events.with_label_values(&[r]);
        }
        for a in ["send", "dead_letter"] {
            m.dedupe_unknown.with_label_values(&[a]);
        }
        for op in ["begin", "record", "release", "lookup"] {
            m.dedupe_store_errors.with_label_values(&[op]);
        }
        m.dedupe_store_available.set(1);
        m.cost.with_label_values(&["USD"]);
        m
    }

    fn uninitialized() -> Self {
        let r = Registry::new();
        let p = "send_worker_";
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(format!("{p}{name}"), help)).expect("valid metric")
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(format!("{p}{name}"), help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            Gauge::with_opts(Opts::new(format!("{p}{name}"), help)).expect("valid metric")
        };
        let igauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(format!("{p}{name}"), help)).expect("valid metric")
        };
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let e2e_buckets = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ];

        let build = GaugeVec::new(
            Opts::new(format!("{p}build_info"), "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let _ = r.register(Box::new(build));
        #[cfg(target_os = "linux")]
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(format!("{p}{name}"), help).buckets(buckets))
                .expect("valid metric")
        };
        let wait_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let store_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];

        Self {
            jobs_consumed: reg(
                &r,
                counter(
                    "jobs_consumed_total",
                    "Deliveries taken from the work queue.",
                ),
            ),
            outcomes: reg(
                &r,
                counter_vec(
                    "outcomes_total",
                    "What became of each delivery, by result and reason.",
                    &["result", "reason"],
                ),
            ),
            api_requests: reg(
                &r,
                counter_vec(
                    "api_requests_total",
                    "Telnyx API requests by HTTP status (or \"transport\") and Telnyx error code.",
                    &["status", "code"],
                ),
            ),
            api_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{p}api_request_duration_seconds"),
                        "Telnyx API request latency.",
                    )
                    .buckets(latency_buckets),
                )
                .expect("valid metric"),
            ),
            end_to_end: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{p}end_to_end_seconds"),
                        "From the job's AMQP timestamp to the API accepting it.",
                    )
                    .buckets(e2e_buckets),
                )
                .expect("valid metric"),
            ),
            retries: reg(
                &r,
                counter_vec(
                    "retries_total",
                    "Retries scheduled, by the attempt that failed.",
                    &["attempt"],
                ),
            ),
            limiter_rate: reg(
                &r,
                gauge(
                    "limiter_rate",
                    "API requests per second the limiter allows now.",
                ),
            ),
            limiter_remaining: reg(
                &r,
                gauge(
                    "limiter_remaining",
                    "The last x-ratelimit-remaining the API sent.",
                ),
            ),
            limiter_paused: reg(
                &r,
                igauge("limiter_paused", "1 while a 429 pauses all sending."),
            ),
            limiter_paused_until: reg(
                &r,
                gauge(
                    "limiter_paused_until_seconds",
                    "Unix time the current 429 pause ends (0: none).",
                ),
            ),
            pacing_deferrals: reg(
                &r,
                counter_vec(
                    "pacing_deferrals_total",
                    "Jobs deferred through the broker because their sender was paced.",
                    &["sender_class"],
                ),
            ),
            in_flight: reg(&r, igauge("requests_in_flight", "API requests in flight.")),
            halted: reg(
                &r,
                igauge("halted", "1 while an account-wide fault halts the worker."),
            ),
            circuit_state: reg(
                &r,
                igauge(
                    "circuit_state",
                    "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                ),
            ),
            message_parts: reg(
                &r,
                counter("message_parts_total", "SMS parts the API accepted."),
            ),
            cost: reg(
                &r,
                prometheus::CounterVec::new(
                    Opts::new(
                        format!("{p}cost_total"),
                        "Cost the API reported, by currency.",
                    ),
                    &["currency"],
                )
                .expect("valid metric"),
            ),
            broker_connected: reg(
                &r,
                igauge("broker_connected", "1 while connected to RabbitMQ."),
            ),
            consuming: reg(&r, igauge("consuming", "1 while consuming the work queue.")),
            events: reg(
                &r,
                counter_vec(
                    "events_total",
                    "Result events: published (confirmed), failed (not confirmed), dropped (queue full).",
                    &["result"],
                ),
            ),
            panics: reg(
                &r,
                counter(
                    "job_panics_total",
                    "Jobs whose handling panicked (a bug); each was settled, never left unacked.",
                ),
            ),
            limiter_wait: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        format!("{p}limiter_wait_seconds"),
                        "Time a job waited for the limiter, by stage (pacing: message throughput; api: the request bucket).",
                    )
                    .buckets(wait_buckets),
                    &["stage"],
                )
                .expect("valid metric"),
            ),
            sends: reg(
                &r,
                counter_vec(
                    "sends_total",
                    "Sends the API accepted, by sender class and kind (sms, mms).",
                    &["sender_class", "kind"],
                ),
            ),
            dedupe_lease_contended: reg(
                &r,
                counter(
                    "dedupe_lease_contended_total",
                    "Jobs whose dedupe lease another worker held.",
                ),
            ),
            dedupe_unknown: reg(
                &r,
                counter_vec(
                    "dedupe_unknown_total",
                    "Jobs whose earlier send has an unknown outcome, by what was done (send, dead_letter).",
                    &["action"],
                ),
            ),
            dedupe_store_errors: reg(
                &r,
                counter_vec(
                    "dedupe_store_errors_total",
                    "Failed job store calls, by operation (begin, record, release, lookup).",
                    &["op"],
                ),
            ),
            dedupe_store_seconds: reg(
                &r,
                histogram(
                    "dedupe_store_seconds",
                    "Latency of each job store call, successful or not.",
                    store_buckets,
                ),
            ),
            dedupe_store_available: reg(
                &r,
                igauge(
                    "dedupe_store_available",
                    "1 while the job store answers (or none is configured), 0 while it does not.",
                ),
            ),
            limiter_shared: reg(
                &r,
                igauge(
                    "limiter_shared",
                    "1 while the fleet-shared (Redis) limiter is in use; 0 on the local limiter or its fallback.",
                ),
            ),
            limiter_fallback: reg(
                &r,
                counter(
                    "limiter_fallback_total",
                    "Times the shared limiter fell back to the local one.",
                ),
            ),
            receipts: super::receipts::ReceiptMetrics::register(&r, p),
            registry: r,
        }
    }

    pub fn outcome(&self, result: &str, reason: &str) {
        self.outcomes.with_label_values(&[result, reason]).inc();
    }

    /// Record one API request's status and code.
    pub fn api_request(&self, status: Option<u16>, code: Option<&str>, seconds: Option<f64>) {
        let status = status.map_or_else(|| "transport".to_owned(), |s| s.to_string());
        let code = match code {
            Some(c) if c.len() == 5 && c.bytes().all(|b| b.is_ascii_digit()) => c,
            Some(_) => "other",
            None => "none",
        };
        self.api_requests.with_label_values(&[&status, code]).inc();
        if let Some(s) = seconds {
            self.api_duration.observe(s);
        }
    }

    /// One send the API accepted. `sender_class` is a `SenderClass::as_str`.
    pub fn sent(&self, sender_class: &str, mms: bool) {
        let class = if SENDER_CLASSES.contains(&sender_class) {
            sender_class
        } else {
            "other"
        };
        let kind = if mms { "mms" } else { "sms" };
        self.sends.with_label_values(&[class, kind]).inc();
    }

    /// Currencies are three ASCII letters; anything else is "other".
    pub fn cost(&self, amount: f64, currency: &str) {
        let c = if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            currency.to_ascii_uppercase()
        } else {
            "other".to_owned()
        };
        if amount.is_finite() && amount >= 0.0 {
            self.cost.with_label_values(&[&c]).inc_by(amount);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_the_prefix() {
        let m = Metrics::new();
        m.outcome(result::SENT, "ok");
        m.api_request(Some(200), None, Some(0.01));
        m.api_request(None, None, None);
        m.api_request(Some(400), Some("+15551234567"), None);
        m.retries.with_label_values(&["1"]).inc();
        m.pacing_deferrals.with_label_values(&["toll_free"]).inc();
        m.cost(0.0051, "usd");
        m.cost(1.0, "+15551234567");
        let text = m.render();
        for family in [
            "send_worker_build_info",
            "send_worker_jobs_consumed_total",
            "send_worker_outcomes_total",
            "send_worker_api_requests_total",
            "send_worker_api_request_duration_seconds",
            "send_worker_end_to_end_seconds",
            "send_worker_retries_total",
            "send_worker_limiter_rate",
            "send_worker_limiter_remaining",
            "send_worker_limiter_paused",
            "send_worker_limiter_paused_until_seconds",
            "send_worker_pacing_deferrals_total",
            "send_worker_requests_in_flight",
            "send_worker_halted",
            "send_worker_circuit_state",
            "send_worker_message_parts_total",
            "send_worker_cost_total",
            "send_worker_broker_connected",
            "send_worker_consuming",
            "send_worker_limiter_wait_seconds",
            "send_worker_sends_total",
            "send_worker_dedupe_lease_contended_total",
            "send_worker_dedupe_unknown_total",
            "send_worker_dedupe_store_errors_total",
            "send_worker_dedupe_store_seconds",
            "send_worker_dedupe_store_available",
            "send_worker_limiter_shared",
            "send_worker_limiter_fallback_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
        }
        assert!(text.contains(r#"status="transport""#));
        assert!(text.contains(r#"currency="USD""#));
        assert!(!text.contains("+1555"), "no phone numbers in labels");
    }

    #[test]
    fn new_families_start_at_zero_for_every_known_label() {
        let m = Metrics::new();
        let text = m.render();
        for line in [
            r#"send_worker_sends_total{kind="mms",sender_class="toll_free"} 0"#,
            r#"send_worker_sends_total{kind="sms",sender_class="profile"} 0"#,
            r#"send_worker_limiter_wait_seconds_count{stage="pacing"} 0"#,
            r#"send_worker_limiter_wait_seconds_count{stage="api"} 0"#,
            r#"send_worker_dedupe_store_errors_total{op="lookup"} 0"#,
            r#"send_worker_dedupe_unknown_total{action="dead_letter"} 0"#,
            "send_worker_dedupe_store_available 1",
            "send_worker_limiter_shared 0",
            "send_worker_limiter_fallback_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?}");
        }
        m.sent("long_code", false);
        m.sent("+15551234567", true);
        let text = m.render();
        assert!(text.contains(r#"send_worker_sends_total{kind="sms",sender_class="long_code"} 1"#));
        assert!(text.contains(r#"send_worker_sends_total{kind="mms",sender_class="other"} 1"#));
        assert!(!text.contains("+1555"), "no phone numbers in labels");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let text = Metrics::new().render();
        for family in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
        }
    }
}
