//! The checks a loaded configuration must pass. Each failure names the key.

use std::net::SocketAddr;

use super::{ConfigError, Settings, invalid};

impl Settings {
    /// Checks that do not need the API key (simulate, demo, dlq).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .amqp
            .url
            .expose()
            .parse::<lapin::uri::AMQPUri>()
            .is_err()
        {
            return Err(invalid("amqp.url", "not an amqp:// or amqps:// URL"));
        }
        for (key, value) in [
            ("amqp.exchange", &self.amqp.exchange),
            ("amqp.routing_key", &self.amqp.routing_key),
            ("amqp.queue", &self.amqp.queue),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
            ("amqp.dead_routing_key", &self.amqp.dead_routing_key),
            ("amqp.retry_queue_prefix", &self.amqp.retry_queue_prefix),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if self.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        match reqwest::Url::parse(&self.telnyx.base_url) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => return Err(invalid("telnyx.base_url", "not an http(s) URL")),
        }
        if self.telnyx.max_in_flight == 0 {
            return Err(invalid("telnyx.max_in_flight", "must be at least 1"));
        }
        if self.telnyx.request_timeout_ms == 0 {
            return Err(invalid("telnyx.request_timeout_ms", "must be positive"));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.retry.base_ms == 0 {
            return Err(invalid("retry.base_ms", "must be positive"));
        }
        if !(self.retry.factor >= 1.0 && self.retry.factor.is_finite()) {
            return Err(invalid("retry.factor", "must be a finite number >= 1"));
        }
        if self.retry.cap_ms < self.retry.base_ms {
            return Err(invalid("retry.cap_ms", "must be at least retry.base_ms"));
        }
        let l = &self.limiter;
        if !(l.min_rate > 0.0 && l.min_rate <= l.initial_rate && l.initial_rate <= l.max_rate) {
            return Err(invalid(
                "limiter.initial_rate",
                "need 0 < min_rate <= initial_rate <= max_rate",
            ));
        }
        if l.burst == 0 {
            return Err(invalid("limiter.burst", "must be at least 1"));
        }
        if !(0.0..0.5).contains(&l.headroom) {
            return Err(invalid("limiter.headroom", "must be in [0, 0.5)"));
        }
        for (key, v) in [
            (
                "pacing.account_sms_per_second",
                self.pacing.account_sms_per_second,
            ),
            (
                "pacing.account_mms_per_second",
                self.pacing.account_mms_per_second,
            ),
            (
                "pacing.long_code_per_second",
                self.pacing.long_code_per_second,
            ),
            (
                "pacing.toll_free_per_second",
                self.pacing.toll_free_per_second,
            ),
            (
                "pacing.short_code_per_second",
                self.pacing.short_code_per_second,
            ),
            (
                "pacing.alphanumeric_per_second",
                self.pacing.alphanumeric_per_second,
            ),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(key, "must be a number >= 0"));
            }
        }
        if let Some((_, v)) = self
            .pacing
            .numbers
            .iter()
            .find(|(_, v)| !(**v >= 0.0 && v.is_finite()))
        {
            return Err(invalid("pacing.numbers", format!("rate {v} must be >= 0")));
        }
        let c = &self.circuit;
        if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
            return Err(invalid("circuit.failure_ratio", "must be in (0, 1]"));
        }
        if c.min_failures == 0 || c.window_ms == 0 || c.cool_down_ms == 0 {
            return Err(invalid(
                "circuit.min_failures",
                "min_failures, window_ms and cool_down_ms must be positive",
            ));
        }
        if c.max_cool_down_ms < c.cool_down_ms {
            return Err(invalid(
                "circuit.max_cool_down_ms",
                "must be at least circuit.cool_down_ms",
            ));
        }
        if self.amqp.publish_timeout_ms == 0 {
            return Err(invalid("amqp.publish_timeout_ms", "must be positive"));
        }
        if self.limiter.max_pause_secs == 0 {
            return Err(invalid("limiter.max_pause_secs", "must be at least 1"));
        }
        if self.worker.shutdown_grace_secs.saturating_mul(1000) <= self.telnyx.request_timeout_ms {
            return Err(invalid(
                "worker.shutdown_grace_secs",
                format!(
                    "must be longer than telnyx.request_timeout_ms ({} ms), or a drain would \
                     abandon requests that are still within their timeout",
                    self.telnyx.request_timeout_ms
                ),
            ));
        }
        if self.worker.halt_probe_secs == 0 {
            return Err(invalid("worker.halt_probe_secs", "must be at least 1"));
        }
        let r = &self.redis;
        if !r.url.is_empty() && redis::Client::open(r.url.expose()).is_err() {
            return Err(invalid("redis.url", "not a redis:// or rediss:// URL"));
        }
        if r.key_prefix.trim().is_empty() {
            return Err(invalid("redis.key_prefix", "must not be empty"));
        }
        if r.connect_timeout_ms == 0 || r.command_timeout_ms == 0 {
            return Err(invalid(
                "redis.command_timeout_ms",
                "redis.connect_timeout_ms and redis.command_timeout_ms must be positive",
            ));
        }
        if self.limiter.backend == super::LimiterBackend::Redis && r.url.is_empty() {
            return Err(invalid(
                "limiter.backend",
                "\"redis\" needs redis.url (SEND_WORKER__REDIS__URL); or use \"local\"",
            ));
        }
        let d = &self.dedupe;
        if d.backend == super::DedupeBackend::Redis && r.url.is_empty() {
            return Err(invalid(
                "dedupe.backend",
                "\"redis\" needs redis.url (SEND_WORKER__REDIS__URL); or use \"memory\"",
            ));
        }
        if d.ttl_secs == 0 {
            return Err(invalid("dedupe.ttl_secs", "must be at least 1"));
        }
        if d.memory_max_entries == 0 {
            return Err(invalid("dedupe.memory_max_entries", "must be at least 1"));
        }
        self.validate_webhooks()?;
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                "not a socket address like 0.0.0.0:9090",
            ));
        }
        Ok(())
    }
}

impl Settings {
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let w = &self.webhooks;
        if !w.public_key.is_empty() {
            if let Err(why) = crate::webhooks::signature::parse_public_key(w.public_key.expose()) {
                return Err(invalid("webhooks.public_key", why));
            }
            if self.amqp.events_exchange.is_empty() {
                return Err(invalid(
                    "webhooks.public_key",
                    "the intake publishes to amqp.events_exchange, which is empty",
                ));
            }
        }
        if w.tolerance_secs == 0 {
            return Err(invalid("webhooks.tolerance_secs", "must be at least 1"));
        }
        if w.max_body_bytes == 0 {
            return Err(invalid("webhooks.max_body_bytes", "must be at least 1"));
        }
        // Telnyx waits 2 s; a failed publish adds up to 300 ms to drop its claim.
        if !(100..=1_700).contains(&w.answer_within_ms) {
            return Err(invalid(
                "webhooks.answer_within_ms",
                "must be between 100 and 1700 (Telnyx waits 2 s for the answer)",
            ));
        }
        if w.dedupe_ttl_secs == 0 {
            return Err(invalid("webhooks.dedupe_ttl_secs", "must be at least 1"));
        }
        if w.memory_max_entries == 0 {
            return Err(invalid("webhooks.memory_max_entries", "must be at least 1"));
        }
        Ok(())
    }
}
