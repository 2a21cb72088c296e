//! The request-body rules a job must pass before any API call, from the field
//! descriptions of `CreateMessageRequest` in Telnyx's public OpenAPI spec
//! (github.com/team-telnyx/openapi, `openapi/spec3.yml`, operation
//! `SendMessage`), and the sender class of a `from`, which decides its pacing.

use serde_json::{Map, Value};

use super::encoding::{self, MAX_PARTS};
use super::{MAX_MEDIA_URLS, MessageKind, Rejection, SenderClass};

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) struct Checked {
    pub from: Option<String>,
    pub sender: SenderClass,
    pub kind: MessageKind,
    pub parts: u32,
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Rejection::invalid(format!(
            "`{field}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// The request-body rules.
pub(super) fn validate(obj: &Map<String, Value>) -> Result<Checked, Rejection> {
    let to = optional_str(obj, "to")?.ok_or_else(|| Rejection::invalid("`to` is required"))?;
    if !is_e164(to) {
        return Err(Rejection::invalid(format!(
            "`to` must be an E.164 number like +15551234567, got {:?}",
            truncate(to)
        )));
    }
    let profile = optional_str(obj, "messaging_profile_id")?.filter(|s| !s.trim().is_empty());
    let from = optional_str(obj, "from")?.filter(|s| !s.is_empty());
    let sender = match from {
        Some(f) => classify_sender(f).ok_or_else(|| {
            Rejection::invalid(format!(
                "`from` must be an E.164 number, a short code or an alphanumeric sender ID, got {:?}",
                truncate(f)
            ))
        })?,
        None if profile.is_some() => SenderClass::Profile,
        None => {
            return Err(Rejection::invalid(
                "`from` is required unless `messaging_profile_id` is given",
            ));
        }
    };
    let text = optional_str(obj, "text")?;
    let media = match obj.get("media_urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut urls = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => urls.push(s.as_str()),
                    other => {
                        return Err(Rejection::invalid(format!(
                            "`media_urls` must hold strings, found {}",
                            type_name(other)
                        )));
                    }
                }
            }
            urls
        }
        Some(other) => {
            return Err(Rejection::invalid(format!(
                "`media_urls` must be an array of strings, got {}",
                type_name(other)
            )));
        }
    };
    if media.len() > MAX_MEDIA_URLS {
        return Err(Rejection::invalid(format!(
            "`media_urls` has {} entries; at most {MAX_MEDIA_URLS} are allowed",
            media.len()
        )));
    }
    for url in &media {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            _ => {
                return Err(Rejection::invalid(format!(
                    "`media_urls` entries must be https URLs, got {:?}",
                    truncate(url)
                )));
            }
        }
    }
    let has_text = text.is_some_and(|t| !t.is_empty());
    if !has_text && media.is_empty() {
        return Err(Rejection::invalid("`text` or `media_urls` is required"));
    }
    let declared = optional_str(obj, "type")?;
    let kind = match declared {
        None => {
            if media.is_empty() {
                MessageKind::Sms
            } else {
                MessageKind::Mms
            }
        }
        Some("SMS") if !media.is_empty() => {
            return Err(Rejection::invalid("`type` is SMS but `media_urls` is set"));
        }
        Some("SMS") => MessageKind::Sms,
        Some("MMS") => MessageKind::Mms,
        Some(other) => {
            return Err(Rejection::invalid(format!(
                "`type` must be SMS or MMS, got {:?}",
                truncate(other)
            )));
        }
    };
    let parts = match text {
        Some(t) if !t.is_empty() => {
            let seg = encoding::segments(t);
            if kind == MessageKind::Sms && seg.parts > MAX_PARTS {
                return Err(Rejection::invalid(format!(
                    "`text` needs {} parts ({} {} units); at most {MAX_PARTS} are allowed",
                    seg.parts,
                    seg.units,
                    match seg.encoding {
                        encoding::Encoding::Gsm7 => "GSM-7",
                        encoding::Encoding::Ucs2 => "UCS-2",
                    }
                )));
            }
            seg.parts
        }
        _ => 1,
    };
    Ok(Checked {
        from: from.map(str::to_owned),
        sender,
        kind,
        parts,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `+` then 2 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Area codes of NANP toll-free numbers.
const TOLL_FREE_AREA_CODES: [&str; 7] = ["800", "833", "844", "855", "866", "877", "888"];

/// Which pacing class a `from` belongs to, or `None` if it is no valid sender.
pub fn classify_sender(from: &str) -> Option<SenderClass> {
    if is_e164(from) {
        let digits = &from[1..];
        if digits.len() == 11
            && digits.starts_with('1')
            && TOLL_FREE_AREA_CODES.contains(&&digits[1..4])
        {
            return Some(SenderClass::TollFree);
        }
        return Some(SenderClass::LongCode);
    }
    if (5..=6).contains(&from.len()) && from.bytes().all(|b| b.is_ascii_digit()) {
        return Some(SenderClass::ShortCode);
    }
    // Alphanumeric sender ID: 1 to 11 characters of letters, digits and spaces,
    // at least one letter.
    let len = from.chars().count();
    if (1..=11).contains(&len)
        && from.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && from.chars().any(|c| c.is_ascii_alphabetic())
        && from.trim() == from
    {
        return Some(SenderClass::Alphanumeric);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_classes() {
        assert_eq!(classify_sender("+18005550100"), Some(SenderClass::TollFree));
        assert_eq!(classify_sender("+18885550100"), Some(SenderClass::TollFree));
        assert_eq!(classify_sender("+18335550100"), Some(SenderClass::TollFree));
        assert_eq!(classify_sender("+18015550100"), Some(SenderClass::LongCode));
        assert_eq!(
            classify_sender("+448005550100"),
            Some(SenderClass::LongCode)
        );
        assert_eq!(classify_sender("12345"), Some(SenderClass::ShortCode));
        assert_eq!(classify_sender("123456"), Some(SenderClass::ShortCode));
        assert_eq!(classify_sender("1234"), None);
        assert_eq!(classify_sender("1234567"), None);
        assert_eq!(classify_sender("ACME"), Some(SenderClass::Alphanumeric));
        assert_eq!(
            classify_sender("Acme Shop 1"),
            Some(SenderClass::Alphanumeric)
        );
        assert_eq!(classify_sender("TooLongSenderX"), None);
        assert_eq!(classify_sender("bad!"), None);
    }
}
