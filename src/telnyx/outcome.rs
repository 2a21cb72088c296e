//! What an API answer means. [`classify`] is the one place that decides; every
//! ack, retry, dead-letter and halt in the pipeline follows from its answer.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | `Sent` (never retried, even with an unreadable body: it was accepted) |
//! | 401, 402, or code 10009 / 20100 / 20012 / 40333 | `Halt`: account-wide, every job would fail the same way |
//! | 429 or code 10011 | `RateLimited`: gate the process, bounce without charging an attempt |
//! | code 40318 (queue full), 40006, 40008, 40011 | `Retry` |
//! | 408, 5xx, timeouts, connection errors, other non-4xx statuses | `Retry` |
//! | any other 4xx | `Reject`: permanent, dead-letter |

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::client::{ApiResult, TransportError};

/// Codes that mean the whole account is unusable until someone acts.
pub const HALT_CODES: [&str; 4] = ["10009", "20100", "20012", "40333"];
/// Codes worth retrying later even though the status is 4xx.
pub const TRANSIENT_CODES: [&str; 4] = ["40318", "40006", "40008", "40011"];
pub const RATE_LIMIT_CODE: &str = "10011";

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent(Accepted),
    Retry(Failure),
    RateLimited(Failure),
    Reject(Failure),
    Halt(Failure),
}

impl Outcome {
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Sent(_) => None,
            Outcome::Retry(f) | Outcome::RateLimited(f) | Outcome::Reject(f) | Outcome::Halt(f) => {
                Some(f)
            }
        }
    }
}

/// The API accepted the message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Accepted {
    pub message_id: Option<String>,
    pub parts: Option<u32>,
    pub cost: Option<Cost>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub amount: f64,
    pub currency: String,
}

/// Why a send did not succeed, as recorded on a retry or dead-letter entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    /// HTTP status; `None` for transport errors.
    pub status: Option<u16>,
    /// The first Telnyx `errors[].code`.
    pub code: Option<String>,
    pub title: String,
    pub detail: String,
    /// From `retry-after`, when the API gave one.
    pub retry_after: Option<Duration>,
    /// The request went out and no answer came back in time (a timeout):
    /// the API may have accepted it.
    pub maybe_accepted: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(Deserialize)]
struct SuccessBody {
    data: SuccessData,
}

#[derive(Deserialize)]
struct SuccessData {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parts: Option<u32>,
    #[serde(default)]
    cost: Option<CostBody>,
}

#[derive(Deserialize)]
struct CostBody {
    #[serde(default)]
    amount: Option<serde_json::Value>,
    #[serde(default)]
    currency: Option<String>,
}

fn code_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.trim().to_owned()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The longest `retry-after` read as such; anything longer is taken as this
/// (the worker's own caps, `limiter.max_pause_secs` and `retry.cap_ms`, are
/// shorter still).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// `retry-after` as seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate_parse(raw)?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// An HTTP date in any of the three forms RFC 9110 requires a recipient to
/// accept (IMF-fixdate, RFC 850, asctime).
fn httpdate_parse(raw: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(raw).ok()
}

/// Decide what an API result means.
pub fn classify(result: &ApiResult) -> Outcome {
    classify_at(result, SystemTime::now())
}

/// [`classify`] with the clock given (for `retry-after` dates).
pub fn classify_at(result: &ApiResult, now: SystemTime) -> Outcome {
    let response = match result {
        Err(e) => {
            let title = match e {
                TransportError::Timeout => "Timeout",
                TransportError::Connect(_) => "Connection failed",
                TransportError::Other(_) => "Transport error",
            };
            return Outcome::Retry(Failure {
                status: None,
                code: None,
                title: title.to_owned(),
                detail: e.to_string(),
                retry_after: None,
                maybe_accepted: matches!(e, TransportError::Timeout),
            });
        }
        Ok(r) => r,
    };
    let status = response.status;
    if (200..300).contains(&status) {
        let accepted = serde_json::from_slice::<SuccessBody>(&response.body)
            .map(|b| Accepted {
                message_id: b.data.id,
                parts: b.data.parts,
                cost: b.data.cost.and_then(|c| {
                    let amount = match c.amount? {
                        serde_json::Value::Number(n) => n.as_f64()?,
                        serde_json::Value::String(s) => s.trim().parse().ok()?,
                        _ => return None,
                    };
                    Some(Cost {
                        amount,
                        currency: c.currency.unwrap_or_else(|| "USD".to_owned()),
                    })
                }),
            })
            .unwrap_or_default();
        return Outcome::Sent(accepted);
    }

    let errors = serde_json::from_slice::<ErrorBody>(&response.body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let codes: Vec<String> = errors
        .iter()
        .filter_map(|e| e.code.as_ref().and_then(code_string))
        .collect();
    let first = errors.first();
    let failure = Failure {
        status: Some(status),
        code: codes.first().cloned(),
        title: first
            .and_then(|e| e.title.clone())
            .unwrap_or_else(|| default_title(status).to_owned()),
        detail: first.and_then(|e| e.detail.clone()).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&response.body);
            text.chars().take(500).collect()
        }),
        retry_after: retry_after(&response.headers, now),
        maybe_accepted: false,
    };
    let has = |set: &[&str]| codes.iter().any(|c| set.contains(&c.as_str()));

    if status == 401 || status == 402 || has(&HALT_CODES) {
        Outcome::Halt(failure)
    } else if status == 429 || has(&[RATE_LIMIT_CODE]) {
        Outcome::RateLimited(failure)
    } else if has(&TRANSIENT_CODES) || status == 408 || status >= 500 {
        Outcome::Retry(failure)
    } else if (400..500).contains(&status) {
        Outcome::Reject(failure)
    } else {
        // 1xx/3xx: not an answer the API gives; maybe a proxy. Retry, bounded by attempts.
        Outcome::Retry(failure)
    }
}

fn default_title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unexpected status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telnyx::ApiResponse;
    use reqwest::header::HeaderValue;

    fn resp(status: u16, body: &str, headers: &[(&'static str, &str)]) -> ApiResult {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Ok(ApiResponse {
            status,
            headers: h,
            body: body.as_bytes().to_vec(),
            latency: Duration::from_millis(5),
        })
    }

    fn err(status: u16, code: &str) -> ApiResult {
        resp(
            status,
            &format!(r#"{{"errors":[{{"code":"{code}","title":"T{code}","detail":"D{code}"}}]}}"#),
            &[],
        )
    }

    fn kind(o: &Outcome) -> &'static str {
        match o {
            Outcome::Sent(_) => "sent",
            Outcome::Retry(_) => "retry",
            Outcome::RateLimited(_) => "rate_limited",
            Outcome::Reject(_) => "reject",
            Outcome::Halt(_) => "halt",
        }
    }

    #[test]
    fn success_parses_id_parts_and_cost() {
        let body =
            r#"{"data":{"id":"b0c7","parts":2,"cost":{"amount":"0.0051","currency":"USD"}}}"#;
        let Outcome::Sent(a) = classify(&resp(200, body, &[])) else {
            panic!("not sent")
        };
        assert_eq!(a.message_id.as_deref(), Some("b0c7"));
        assert_eq!(a.parts, Some(2));
        assert_eq!(
            a.cost,
            Some(Cost {
                amount: 0.0051,
                currency: "USD".into()
            })
        );
        let Outcome::Sent(a) = classify(&resp(200, r#"{"data":{"cost":{"amount":0.01}}}"#, &[]))
        else {
            panic!()
        };
        assert_eq!(a.cost.unwrap().amount, 0.01);
    }

    #[test]
    fn any_2xx_is_sent_even_with_a_bad_body() {
        for s in [200, 201, 202, 299] {
            assert_eq!(kind(&classify(&resp(s, "garbage", &[]))), "sent", "{s}");
        }
        assert_eq!(kind(&classify(&resp(200, "", &[]))), "sent");
    }

    #[test]
    fn every_status_has_one_meaning() {
        for status in 100..600u16 {
            let o = classify(&resp(status, "", &[]));
            let want = match status {
                200..=299 => "sent",
                401 | 402 => "halt",
                429 => "rate_limited",
                408 => "retry",
                400..=499 => "reject",
                500..=599 => "retry",
                _ => "retry",
            };
            assert_eq!(kind(&o), want, "status {status}");
        }
    }

    #[test]
    fn codes_refine_the_status() {
        let table = [
            (401, "10009", "halt"),
            (403, "10009", "halt"),
            (402, "20100", "halt"),
            (400, "20100", "halt"),
            (403, "20012", "halt"),
            (403, "40333", "halt"),
            (422, "40333", "halt"),
            (429, "10011", "rate_limited"),
            (400, "10011", "rate_limited"),
            (403, "40318", "retry"),
            (429, "40318", "rate_limited"),
            (400, "40006", "retry"),
            (400, "40008", "retry"),
            (400, "40011", "retry"),
            (403, "40300", "reject"),
            (403, "40301", "reject"),
            (400, "40305", "reject"),
            (400, "40310", "reject"),
            (400, "40302", "reject"),
            (400, "40316", "reject"),
            (400, "40317", "reject"),
            (422, "10016", "reject"),
            (400, "10015", "reject"),
            (400, "10004", "reject"),
            (404, "10005", "reject"),
            (500, "10007", "retry"),
            (503, "", "retry"),
            (500, "40300", "retry"),
        ];
        for (status, code, want) in table {
            let o = classify(&err(status, code));
            assert_eq!(kind(&o), want, "{status}/{code}");
            if let Some(f) = o.failure() {
                assert_eq!(f.status, Some(status));
                if !code.is_empty() {
                    assert_eq!(f.code.as_deref(), Some(code));
                    assert_eq!(f.title, format!("T{code}"));
                    assert_eq!(f.detail, format!("D{code}"));
                }
            }
        }
    }

    #[test]
    fn halt_codes_anywhere_in_the_error_list_halt() {
        let body = r#"{"errors":[{"code":"40300"},{"code":40333}]}"#;
        let o = classify(&resp(403, body, &[]));
        assert_eq!(kind(&o), "halt");
        assert_eq!(o.failure().unwrap().code.as_deref(), Some("40300"));
    }

    #[test]
    fn numeric_codes_are_read() {
        let o = classify(&resp(403, r#"{"errors":[{"code":40318}]}"#, &[]));
        assert_eq!(kind(&o), "retry");
        assert_eq!(o.failure().unwrap().code.as_deref(), Some("40318"));
    }

    #[test]
    fn transport_errors_are_transient() {
        for e in [
            TransportError::Timeout,
            TransportError::Connect("refused".into()),
            TransportError::Other("reset by peer".into()),
        ] {
            let o = classify(&Err(e.clone()));
            assert_eq!(kind(&o), "retry", "{e}");
            let f = o.failure().unwrap();
            assert_eq!(f.status, None);
            assert!(f.detail.contains(&e.to_string()));
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let o = classify(&resp(429, "", &[("retry-after", "7")]));
        assert_eq!(
            o.failure().unwrap().retry_after,
            Some(Duration::from_secs(7))
        );
        let o = classify(&resp(503, "", &[("retry-after", "0.5")]));
        assert_eq!(
            o.failure().unwrap().retry_after,
            Some(Duration::from_millis(500))
        );
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let o = classify_at(
            &resp(503, "", &[("retry-after", "Thu, 01 Jan 2026 00:00:30 GMT")]),
            now,
        );
        assert_eq!(
            o.failure().unwrap().retry_after,
            Some(Duration::from_secs(30))
        );
        // The obsolete RFC 850 and asctime forms, which RFC 9110 also requires.
        for old in [
            "Thursday, 01-Jan-26 00:00:30 GMT",
            "Thu Jan  1 00:00:30 2026",
        ] {
            let o = classify_at(&resp(503, "", &[("retry-after", old)]), now);
            assert_eq!(
                o.failure().unwrap().retry_after,
                Some(Duration::from_secs(30)),
                "{old}"
            );
        }
        // Absurd values are bounded, in either form.
        let o = classify_at(
            &resp(429, "", &[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            now,
        );
        assert_eq!(o.failure().unwrap().retry_after, Some(MAX_RETRY_AFTER));
        let o = classify(&resp(429, "", &[("retry-after", "1e300")]));
        assert_eq!(o.failure().unwrap().retry_after, Some(MAX_RETRY_AFTER));
        let o = classify(&resp(503, "", &[("retry-after", "soon")]));
        assert_eq!(o.failure().unwrap().retry_after, None);
        let o = classify(&resp(503, "", &[("retry-after", "-3")]));
        assert_eq!(o.failure().unwrap().retry_after, None);
    }

    #[test]
    fn unparseable_error_bodies_keep_a_readable_detail() {
        let o = classify(&resp(502, "<html>bad gateway</html>", &[]));
        let f = o.failure().unwrap();
        assert_eq!(f.title, "Bad Gateway");
        assert!(f.detail.contains("bad gateway"));
        assert_eq!(f.code, None);
    }
}
