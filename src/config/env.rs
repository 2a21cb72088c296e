//! The environment's part of the configuration: which variables are ours,
//! the `SEND_WORKER__PACING__NUMBERS` form of `[pacing.numbers]` (its keys
//! start with `+`, which a variable name cannot hold), and naming the
//! variable (or file) that set a bad or unknown key in an error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{ConfigError, ENV_PREFIX, build};

/// `"+18005550100=5,+15551234567=1"`: the whole `[pacing.numbers]` table.
pub const PACING_NUMBERS: &str = "SEND_WORKER__PACING__NUMBERS";

/// The `SEND_WORKER__*` variables the config crate reads (all but
/// [`PACING_NUMBERS`], which is parsed here).
pub(super) fn ours(env: &HashMap<String, String>) -> HashMap<String, String> {
    let prefix = format!("{ENV_PREFIX}__");
    env.iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.as_str() != PACING_NUMBERS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `SEND_WORKER__AMQP__URL` -> `amqp.url`.
fn key_of(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?.strip_prefix("__")?;
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// `" (set by A, B)"`, or nothing.
pub(super) fn set_by(sources: &[String]) -> String {
    if sources.is_empty() {
        String::new()
    } else {
        format!(" (set by {})", sources.join(", "))
    }
}

/// Parse `NUMBER=RATE[,NUMBER=RATE...]`. Blanks around entries are ignored;
/// an empty value is an empty table.
pub fn parse_numbers(value: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((number, rate)) = entry.split_once('=') else {
            return Err(format!("`{entry}` is not NUMBER=RATE"));
        };
        let (number, rate) = (number.trim(), rate.trim());
        if number.is_empty() {
            return Err(format!("`{entry}` has no number"));
        }
        let rate: f64 = rate
            .parse()
            .map_err(|_| format!("`{entry}`: `{rate}` is not a number"))?;
        if out.insert(number.to_owned(), rate).is_some() {
            return Err(format!("{number} is given twice"));
        }
    }
    Ok(out)
}

/// A config-crate error, with the sources that cause it: each variable that
/// fails on its own over the defaults and the file, or else the file.
pub(super) fn explain(
    e: config::ConfigError,
    file: Option<&Path>,
    vars: &HashMap<String, String>,
) -> ConfigError {
    let none = HashMap::new();
    let mut culprits = Vec::new();
    if build(file, &none).is_ok() {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let one: HashMap<String, String> =
                [(name.clone(), vars[name].clone())].into_iter().collect();
            if build(file, &one).is_err() {
                culprits.push(name.clone());
            }
        }
    } else if let Some(path) = file
        && build(None, &none).is_ok()
    {
        culprits.push(format!("--config {}", path.display()));
    }
    ConfigError::Load {
        message: e.to_string(),
        sources: culprits,
    }
}

/// Name the variable that set the key of an `Invalid` error, if one did.
pub(super) fn name_variable(e: ConfigError, env: &HashMap<String, String>) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            reason,
            sources,
        } if sources.is_empty() => {
            let mut sources: Vec<String> = env
                .keys()
                .filter(|var| key_of(var).as_deref() == Some(key))
                .cloned()
                .collect();
            if sources.is_empty() && key == "telnyx.api_key" && env.contains_key("TELNYX_API_KEY") {
                sources.push("TELNYX_API_KEY".to_owned());
            }
            sources.sort();
            ConfigError::Invalid {
                key,
                reason,
                sources,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_with_blanks_and_reject_garbage() {
        let m = parse_numbers(" +18005550100=5, +15551234567 = 1.5 ,").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["+18005550100"], 5.0);
        assert_eq!(m["+15551234567"], 1.5);
        assert!(parse_numbers("").unwrap().is_empty());
        for bad in ["+1800", "=5", "+1800=fast", "+1=1,+1=2"] {
            assert!(parse_numbers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variables_map_to_keys() {
        assert_eq!(
            key_of("SEND_WORKER__AMQP__URL").as_deref(),
            Some("amqp.url")
        );
        assert_eq!(key_of("TELNYX_API_KEY"), None);
        assert_eq!(set_by(&[]), "");
        assert_eq!(set_by(&["A".into(), "B".into()]), " (set by A, B)");
    }
}
