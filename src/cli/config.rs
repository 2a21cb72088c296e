//! `send-worker config check`: load and validate the configuration as `run`
//! would (defaults, `--config FILE`, environment), without connecting to
//! anything, and print the effective configuration with secrets redacted.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;

use crate::config::{ConfigError, Settings};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration without connecting and print the
    /// effective configuration (TOML, secrets redacted) on stdout.
    Check {
        /// Do not require `telnyx.api_key` (for the `dlq` commands, which
        /// never call the API).
        #[arg(long)]
        no_api_key: bool,
    },
}

pub fn run(
    settings: Result<Settings, ConfigError>,
    cmd: ConfigCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { no_api_key } => {
            let settings = settings?;
            if !no_api_key {
                settings.require_api_key()?;
            }
            let text = settings
                .to_toml(false)
                .context("printing the configuration")?;
            out.write_all(text.as_bytes())?;
            out.flush()?;
            eprintln!("configuration OK");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with_env(
            None,
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn check_prints_the_effective_configuration_without_secrets() {
        let mut out = Vec::new();
        run(
            load(&[
                ("SEND_WORKER__TELNYX__API_KEY", "KEY-SUPER-SECRET"),
                ("SEND_WORKER__AMQP__URL", "amqp://u:hunter2@h:5672/%2f"),
                ("SEND_WORKER__AMQP__PREFETCH", "17"),
            ]),
            ConfigCommand::Check { no_api_key: false },
            &mut out,
        )
        .expect("valid");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("prefetch = 17"), "{text}");
        assert!(text.contains("[pacing]"), "{text}");
        assert!(
            !text.contains("KEY-SUPER-SECRET") && !text.contains("hunter2"),
            "{text}"
        );
        // What it prints is a configuration file the worker accepts.
        let parsed: toml::Table = toml::from_str(&text).expect("TOML");
        assert!(parsed.contains_key("amqp"));
    }

    #[test]
    fn check_fails_on_bad_configuration_and_a_missing_key() {
        let mut out = Vec::new();
        let err = run(
            load(&[("SEND_WORKER__AMQP__PREFETCH", "0")]),
            ConfigCommand::Check { no_api_key: true },
            &mut out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("amqp.prefetch"), "{err}");
        let err = run(
            load(&[]),
            ConfigCommand::Check { no_api_key: false },
            &mut out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("telnyx.api_key"), "{err}");
        assert!(out.is_empty(), "nothing printed for a bad configuration");
        run(
            load(&[]),
            ConfigCommand::Check { no_api_key: true },
            &mut out,
        )
        .expect("no key needed");
        assert!(String::from_utf8_lossy(&out).contains("[amqp]"));
    }
}
