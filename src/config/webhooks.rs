//! `[webhooks]`: the settings of the Telnyx webhook intake
//! (`crate::webhooks`); checked in `validate.rs` with the rest.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `[webhooks]`: the Telnyx webhook intake (`POST /webhooks/telnyx`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Base64 of the account's raw 32-byte Ed25519 public key, as the Telnyx
    /// portal shows it. Empty: the endpoint answers 404.
    pub public_key: Secret,
    /// A `telnyx-timestamp` further than this from now is rejected.
    pub tolerance_secs: u64,
    /// A larger body is rejected.
    pub max_body_bytes: usize,
    /// The intake answers within this long (Telnyx waits 2 s); a publish the
    /// broker has not confirmed by then is answered 503.
    pub answer_within_ms: u64,
    /// How long a published event id is remembered (its duplicates dropped).
    pub dedupe_ttl_secs: u64,
    /// Without Redis, at most this many event ids are remembered.
    pub memory_max_entries: usize,
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use crate::config::Settings;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, crate::config::ConfigError> {
        Settings::load_with_env(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_public_key_is_checked_and_never_printed() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let b64 = STANDARD.encode(key.verifying_key().to_bytes());
        let s = with(&[("SEND_WORKER__WEBHOOKS__PUBLIC_KEY", &b64)]).expect("a valid key");
        assert_eq!(s.webhooks.public_key.expose(), b64);
        assert!(!s.to_toml(false).expect("toml").contains(&b64));
        assert!(!format!("{s:?}").contains(&b64));
        for bad in ["not base64!", "AAAA"] {
            let err = with(&[("SEND_WORKER__WEBHOOKS__PUBLIC_KEY", bad)])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("webhooks.public_key"), "{err}");
            assert!(!err.contains(bad), "the value is not echoed: {err}");
        }
        let err = with(&[
            ("SEND_WORKER__WEBHOOKS__PUBLIC_KEY", &b64),
            ("SEND_WORKER__AMQP__EVENTS_EXCHANGE", ""),
        ])
        .expect_err("no exchange to publish to")
        .to_string();
        assert!(err.contains("events_exchange"), "{err}");
        let err = with(&[("SEND_WORKER__WEBHOOKS__ANSWER_WITHIN_MS", "5")])
            .expect_err("too short")
            .to_string();
        assert!(err.contains("webhooks.answer_within_ms"), "{err}");
    }
}
