//! Layered configuration: the built-in `config/default.toml`, then an optional
//! file (`--config FILE`), then `SEND_WORKER__<SECTION>__<KEY>` environment
//! variables. `TELNYX_API_KEY` is accepted for the API key, as the SDKs do.
//! `[pacing.numbers]` keys hold a `+`, which no variable name can, so
//! `SEND_WORKER__PACING__NUMBERS="+18005550100=5,+15551234567=1"` sets the
//! whole table ([`env`]). The checks on the values are in
//! [`validate`](Settings::validate). An error names the key, and the
//! environment variable when one set it.

pub mod env;
mod validate;
mod webhooks;

pub use webhooks::WebhookSettings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The defaults, compiled in so the binary needs no file beside it.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
pub const ENV_PREFIX: &str = "SEND_WORKER";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or combined: a bad file, a value of the
    /// wrong type, an unknown key. The text is the config crate's own (it is
    /// not kept as a `source`, so it is printed once), plus the variables
    /// that caused it.
    #[error("configuration could not be loaded: {message}{}", env::set_by(.sources))]
    Load {
        message: String,
        /// The variables (or the `--config` file) that cause it.
        sources: Vec<String>,
    },
    #[error("configuration key `{key}` is invalid: {reason}{}", env::set_by(.sources))]
    Invalid {
        key: &'static str,
        reason: String,
        /// The environment variable that set the key, if one did.
        sources: Vec<String>,
    },
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
        sources: Vec::new(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub telnyx: TelnyxSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub limiter: LimiterSettings,
    pub pacing: PacingSettings,
    pub circuit: CircuitSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub redis: RedisSettings,
    pub dedupe: DedupeSettings,
    pub webhooks: WebhookSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: Secret,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub dead_routing_key: String,
    pub retry_queue_prefix: String,
    pub events_exchange: String,
    pub prefetch: u16,
    pub delivery_limit: u32,
    pub declare_topology: bool,
    pub reconnect_max_secs: u64,
    /// A publish (retry copy, dead-letter entry, event) not confirmed within
    /// this long has failed.
    pub publish_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelnyxSettings {
    pub base_url: String,
    pub api_key: Secret,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_in_flight: usize,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub max_age_secs: u64,
    pub halt_probe_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitSettings {
    pub enabled: bool,
    pub window_ms: u64,
    pub min_failures: u32,
    pub failure_ratio: f64,
    pub cool_down_ms: u64,
    pub max_cool_down_ms: u64,
    /// When a half-open probe fails, ask the API a question no job can spoil
    /// (`GET /messages/{nil uuid}`) to tell an outage from a bad job.
    pub canary: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
    pub max_attempts: u32,
    pub max_rate_limit_bounces: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterSettings {
    pub initial_rate: f64,
    pub min_rate: f64,
    pub max_rate: f64,
    pub burst: u32,
    /// Fraction of the API limit left unused, as a safety margin.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    /// The longest a `retry-after` may pause sending (or delay a 429'd job)
    /// before the worker tries again.
    pub max_pause_secs: u64,
    /// Where the budgets live: this process, or Redis (shared by a fleet).
    pub backend: LimiterBackend,
    /// Without rate-limit headers, raise the rate while no 429 comes.
    pub slow_start: bool,
}

fn default_headroom() -> f64 {
    0.015
}

/// `limiter.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// In-process budgets: one replica (and the demo).
    Local,
    /// Budgets shared through Redis by every replica (`redis.url`).
    Redis,
}

impl Default for LimiterSettings {
    /// The shipped defaults (`config/default.toml`).
    fn default() -> Self {
        Self {
            initial_rate: 50.0,
            min_rate: 1.0,
            max_rate: 5000.0,
            burst: 10,
            headroom: default_headroom(),
            max_pause_secs: 60,
            backend: LimiterBackend::Local,
            slow_start: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PacingSettings {
    #[serde(default)]
    pub account_sms_per_second: f64,
    #[serde(default)]
    pub account_mms_per_second: f64,
    #[serde(default)]
    pub long_code_per_second: f64,
    #[serde(default)]
    pub toll_free_per_second: f64,
    #[serde(default)]
    pub short_code_per_second: f64,
    #[serde(default)]
    pub alphanumeric_per_second: f64,
    #[serde(default)]
    pub max_wait_ms: u64,
    #[serde(default)]
    pub numbers: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db`, or `rediss://`; empty: no Redis.
    pub url: Secret,
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
}

/// Where the job store keeps what it knows (`dedupe.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupeBackend {
    Off,
    Memory,
    Redis,
}

/// What to do with a job whose outcome is unknown (`dedupe.on_unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnknown {
    /// Send it again: a possible duplicate, counted.
    Send,
    /// Dead-letter it with reason `unknown-outcome`: never a duplicate.
    DeadLetter,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    pub backend: DedupeBackend,
    /// How long a sent job is remembered.
    pub ttl_secs: u64,
    /// A lease lasts `telnyx.request_timeout_ms` plus this.
    pub lease_margin_ms: u64,
    pub on_unknown: OnUnknown,
    /// Go on sending, unsuppressed, while the store is unreachable.
    pub fail_open: bool,
    /// The memory backend remembers at most this many jobs.
    pub memory_max_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Load defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        if let Some(path) = file
            && !path.exists()
        {
            return Err(invalid(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        let ours = env::ours(&env);
        let mut settings = match build(file, &ours) {
            Ok(s) => s,
            Err(e) => return Err(env::explain(e, file, &ours)),
        };
        if let Some(value) = env.get(env::PACING_NUMBERS) {
            settings.pacing.numbers =
                env::parse_numbers(value).map_err(|reason| ConfigError::Invalid {
                    key: "pacing.numbers",
                    reason,
                    sources: vec![env::PACING_NUMBERS.to_owned()],
                })?;
        }
        if settings.telnyx.api_key.is_empty()
            && let Some(key) = env.get("TELNYX_API_KEY")
        {
            settings.telnyx.api_key = Secret::new(key.trim());
        }
        settings
            .validate()
            .map_err(|e| env::name_variable(e, &env))?;
        Ok(settings)
    }

    /// The configuration as TOML, in the layout of `config/default.toml`.
    /// Secrets are `[redacted]` unless `reveal_secrets` (for a file a child
    /// process reads; never for output).
    pub fn to_toml(&self, reveal_secrets: bool) -> Result<String, toml::ser::Error> {
        if reveal_secrets {
            crate::secret::revealed(|| toml::to_string(self))
        } else {
            toml::to_string(self)
        }
    }

    /// The extra check `send-worker run` makes against the real API.
    pub fn require_api_key(&self) -> Result<(), ConfigError> {
        if self.telnyx.api_key.is_empty() {
            return Err(invalid(
                "telnyx.api_key",
                "is not set; set SEND_WORKER__TELNYX__API_KEY or TELNYX_API_KEY",
            ));
        }
        Ok(())
    }

    pub fn http_listen(&self) -> SocketAddr {
        // validate() has checked it; fall back to the default rather than panic.
        self.http
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9090)))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.worker.shutdown_grace_secs)
    }
}

/// Defaults, then `file`, then the `SEND_WORKER__*` variables in `vars`.
fn build(
    file: Option<&Path>,
    vars: &std::collections::HashMap<String, String>,
) -> Result<Settings, config::ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars.clone())),
        )
        .build()?
        .try_deserialize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_the_public_contract() {
        let s = Settings::load_with_env(None, env(&[])).expect("defaults");
        assert_eq!(s.amqp.exchange, "messages");
        assert_eq!(s.amqp.routing_key, "send");
        assert_eq!(s.amqp.queue, "messages.send");
        assert_eq!(s.amqp.dead_letter_queue, "messages.send.dead");
        assert_eq!(s.telnyx.base_url, "https://api.telnyx.com/v2");
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.pacing.account_sms_per_second, 50.0);
        assert_eq!(s.pacing.account_mms_per_second, 15.0);
        assert_eq!(s.pacing.toll_free_per_second, 20.0);
        assert_eq!(s.pacing.short_code_per_second, 1000.0);
        assert_eq!(s.pacing.alphanumeric_per_second, 0.1);
        assert_eq!(s.pacing.long_code_per_second, 0.0);
        assert!(s.require_api_key().is_err());
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("SEND_WORKER__AMQP__URL", "amqp://u:p@rabbit:5672/%2f"),
                ("SEND_WORKER__TELNYX__BASE_URL", "http://127.0.0.1:8080/v2"),
                ("SEND_WORKER__TELNYX__API_KEY", "KEYabc"),
                ("SEND_WORKER__HTTP__LISTEN", "127.0.0.1:9999"),
                ("SEND_WORKER__AMQP__PREFETCH", "17"),
                ("SEND_WORKER__PACING__ACCOUNT_SMS_PER_SECOND", "0"),
            ]),
        )
        .expect("load");
        assert_eq!(s.amqp.url.expose(), "amqp://u:p@rabbit:5672/%2f");
        assert_eq!(s.telnyx.base_url, "http://127.0.0.1:8080/v2");
        assert_eq!(s.telnyx.api_key.expose(), "KEYabc");
        assert_eq!(s.http.listen, "127.0.0.1:9999");
        assert_eq!(s.amqp.prefetch, 17);
        assert_eq!(s.pacing.account_sms_per_second, 0.0);
        s.require_api_key().expect("key set");
    }

    #[test]
    fn telnyx_api_key_variable_is_accepted_and_ours_wins() {
        let s = Settings::load_with_env(None, env(&[("TELNYX_API_KEY", "sdk-style")])).unwrap();
        assert_eq!(s.telnyx.api_key.expose(), "sdk-style");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TELNYX_API_KEY", "sdk-style"),
                ("SEND_WORKER__TELNYX__API_KEY", "ours"),
            ]),
        )
        .unwrap();
        assert_eq!(s.telnyx.api_key.expose(), "ours");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("SEND_WORKER__AMQP__URL", "http://nope", "amqp.url"),
            (
                "SEND_WORKER__TELNYX__BASE_URL",
                "not a url",
                "telnyx.base_url",
            ),
            ("SEND_WORKER__HTTP__LISTEN", "localhost", "http.listen"),
            (
                "SEND_WORKER__WORKER__SHUTDOWN_GRACE_SECS",
                "15",
                "worker.shutdown_grace_secs",
            ),
            (
                "SEND_WORKER__RETRY__MAX_ATTEMPTS",
                "0",
                "retry.max_attempts",
            ),
            (
                "SEND_WORKER__PACING__TOLL_FREE_PER_SECOND",
                "-1",
                "pacing.toll_free_per_second",
            ),
        ];
        for (k, v, key) in cases {
            let err = Settings::load_with_env(None, env(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(key), "{k}={v}: {err}");
        }
        let err = Settings::load_with_env(None, env(&[("SEND_WORKER__AMQP__PREFETCH", "many")]))
            .unwrap_err();
        assert!(err.to_string().contains("prefetch"), "{err}");
        let err =
            Settings::load_with_env(None, env(&[("SEND_WORKER__AMQP__PREFECT", "1")])).unwrap_err();
        assert!(err.to_string().contains("prefect"), "{err}");
    }

    #[test]
    fn a_config_file_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("sw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[amqp]\nqueue = \"from-file\"\nprefetch = 5\n[pacing.numbers]\n\"+18005550100\" = 2.5\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[("SEND_WORKER__AMQP__PREFETCH", "9")]))
            .unwrap();
        assert_eq!(s.amqp.queue, "from-file");
        assert_eq!(s.amqp.prefetch, 9);
        assert_eq!(s.pacing.numbers.get("+18005550100"), Some(&2.5));
        let missing = Settings::load_with_env(Some(&dir.join("nope.toml")), env(&[])).unwrap_err();
        assert!(missing.to_string().contains("--config"));
    }

    #[test]
    fn settings_round_trip_through_toml_with_secrets_only_when_revealed() {
        let mut s = Settings::load_with_env(
            None,
            env(&[
                ("SEND_WORKER__TELNYX__API_KEY", "KEY-SUPER-SECRET"),
                ("SEND_WORKER__AMQP__PREFETCH", "17"),
            ]),
        )
        .unwrap();
        s.pacing.numbers.insert("+18005550100".into(), 2.5);
        let shown = s.to_toml(false).unwrap();
        assert!(!shown.contains("KEY-SUPER-SECRET"), "{shown}");
        assert!(!shown.contains("guest:guest"), "{shown}");
        let dir = std::env::temp_dir().join(format!("sw-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, s.to_toml(true).unwrap()).unwrap();
        let back = Settings::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(back.telnyx.api_key.expose(), "KEY-SUPER-SECRET");
        assert_eq!(back.amqp.url.expose(), s.amqp.url.expose());
        assert_eq!(back.amqp.prefetch, 17);
        assert_eq!(back.pacing.numbers.get("+18005550100"), Some(&2.5));
        // Every key survives: the two serialize to the same text.
        assert_eq!(back.to_toml(true).unwrap(), s.to_toml(true).unwrap());
    }

    #[test]
    fn debug_never_prints_the_api_key_or_amqp_password() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("SEND_WORKER__TELNYX__API_KEY", "KEY-SUPER-SECRET"),
                ("SEND_WORKER__AMQP__URL", "amqp://user:hunter2@h:5672/%2f"),
            ]),
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("KEY-SUPER-SECRET"));
        assert!(!dbg.contains("hunter2"));
    }

    #[test]
    fn pacing_numbers_come_from_one_variable_which_replaces_the_files_table() {
        let s = Settings::load_with_env(
            None,
            env(&[(
                "SEND_WORKER__PACING__NUMBERS",
                "+18005550100=5,+15551234567=1",
            )]),
        )
        .unwrap();
        assert_eq!(s.pacing.numbers.len(), 2);
        assert_eq!(s.pacing.numbers["+18005550100"], 5.0);
        assert_eq!(s.pacing.numbers["+15551234567"], 1.0);

        let dir = std::env::temp_dir().join(format!("sw-numbers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[pacing.numbers]\n\"+18005550100\" = 2.5\n").unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[("SEND_WORKER__PACING__NUMBERS", "+15551234567=1")]),
        )
        .unwrap();
        assert_eq!(
            s.pacing.numbers.keys().collect::<Vec<_>>(),
            ["+15551234567"],
            "the variable sets the whole table"
        );
        let s = Settings::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(s.pacing.numbers["+18005550100"], 2.5);

        for bad in ["+18005550100", "+18005550100=-1"] {
            let err = Settings::load_with_env(None, env(&[("SEND_WORKER__PACING__NUMBERS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("pacing.numbers"), "{bad}: {err}");
            assert!(err.contains("SEND_WORKER__PACING__NUMBERS"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_variable_that_set_the_key_and_say_it_once() {
        let err = Settings::load_with_env(
            None,
            env(&[
                ("SEND_WORKER__AMQP__PREFECT", "1"),
                ("SEND_WORKER__AMQP__PREFETCH", "9"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("prefect"), "{text}");
        assert!(
            text.ends_with("(set by SEND_WORKER__AMQP__PREFECT)"),
            "only the culprit is named: {text}"
        );
        assert!(
            std::error::Error::source(&err).is_none(),
            "no source: anyhow would print the message a second time"
        );
        let err = Settings::load_with_env(None, env(&[("SEND_WORKER__AMQP__PREFETCH", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(set by SEND_WORKER__AMQP__PREFETCH)"),
            "{err}"
        );
        let err = Settings::load_with_env(None, env(&[("SEND_WORKER__AMQP__URL", "http://x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("amqp.url") && err.contains("(set by SEND_WORKER__AMQP__URL)"),
            "{err}"
        );

        // A typo in the file names the file, and no variable.
        let dir = std::env::temp_dir().join(format!("sw-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[amqp]\nprefect = 1\n").unwrap();
        let err =
            Settings::load_with_env(Some(&path), env(&[("SEND_WORKER__AMQP__PREFETCH", "9")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("prefect"), "{err}");
        assert!(
            err.contains("--config") && !err.contains("SEND_WORKER__"),
            "{err}"
        );
    }
}
