//! How the simulator writes its rate-limit headers: `x-ratelimit-limit`,
//! `-remaining` and `-reset` on every answer, `retry-after` on a 429, each in
//! the styles real servers use (see
//! `/work/shared/reference/rate-limit-server-models.md`).
//!
//! Every style rounds *up*, so a client that trusts a header never comes back
//! before the server would let it:
//! - `x-ratelimit-reset`: [`ResetStyle::Seconds`] is the wait in whole
//!   seconds, rounded up (0 only when the wait is 0); [`ResetStyle::Unix`] is
//!   the reset instant as a Unix time in whole seconds, rounded up;
//!   [`ResetStyle::UnixMs`] is the reset instant in Unix milliseconds, rounded
//!   up.
//! - `retry-after` on the rate limit's own 429: [`RetryAfterStyle::Seconds`] is
//!   the wait in whole seconds, rounded up, at least 1;
//!   [`RetryAfterStyle::HttpDate`] is an IMF-fixdate (RFC 9110) of the instant
//!   the wait ends, rounded up to the next whole second (the format has 1 s
//!   resolution; capped at the last second of year 9999).
//! - A scripted reply's `retry-after` (a whole number of seconds, see
//!   [`super::SimReply`]) is sent as is in the seconds style, and as now plus
//!   that many seconds, rounded up, in the date style.

use std::time::{Duration, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::models::Decision;

/// How `x-ratelimit-reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ResetStyle {
    /// Seconds until the reset, rounded up (Telnyx's docs, the IETF draft).
    Seconds,
    /// The reset as a Unix time in whole seconds, rounded up (the send guide,
    /// GitHub). The default.
    #[default]
    Unix,
    /// The reset as a Unix time in milliseconds, rounded up.
    UnixMs,
}

/// How `retry-after` is written on a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RetryAfterStyle {
    /// Whole seconds, rounded up, at least 1. The default.
    #[default]
    Seconds,
    /// An IMF-fixdate, rounded up to the next whole second.
    HttpDate,
}

/// The last second an IMF-fixdate can name (9999-12-31T23:59:59Z).
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// Whole seconds in `d`, rounded up.
pub(super) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Whole milliseconds in `d`, rounded up.
pub(super) fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The `x-ratelimit-reset` value for a reset `reset_in` from `now_unix`.
pub(super) fn reset_value(style: ResetStyle, now_unix: Duration, reset_in: Duration) -> u64 {
    let at = now_unix.saturating_add(reset_in);
    match style {
        ResetStyle::Seconds => ceil_secs(reset_in),
        ResetStyle::Unix => ceil_secs(at),
        ResetStyle::UnixMs => ceil_millis(at),
    }
}

/// The three `x-ratelimit-*` headers of a decision.
pub(crate) fn rate_limit(
    headers: &mut HeaderMap,
    d: &Decision,
    style: ResetStyle,
    now_unix: Duration,
) {
    for (name, value) in [
        ("x-ratelimit-limit", d.limit),
        ("x-ratelimit-remaining", d.remaining),
        (
            "x-ratelimit-reset",
            reset_value(style, now_unix, d.reset_in),
        ),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// The rate limit's own `retry-after`: `wait` until a request would be
/// allowed, from `now_unix`.
pub(crate) fn retry_after(style: RetryAfterStyle, now_unix: Duration, wait: Duration) -> String {
    match style {
        RetryAfterStyle::Seconds => ceil_secs(wait).max(1).to_string(),
        RetryAfterStyle::HttpDate => http_date(ceil_secs(now_unix.saturating_add(wait))),
    }
}

/// A scripted reply's `retry-after` of `secs` whole seconds.
pub(super) fn scripted_retry_after(
    style: RetryAfterStyle,
    now_unix: Duration,
    secs: u64,
) -> String {
    match style {
        RetryAfterStyle::Seconds => secs.to_string(),
        RetryAfterStyle::HttpDate => http_date(ceil_secs(
            now_unix.saturating_add(Duration::from_secs(secs)),
        )),
    }
}

/// `unix_secs` as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
pub(super) fn http_date(unix_secs: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix_secs.min(LAST_HTTP_DATE));
    httpdate::fmt_http_date(at)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::telnyx;

    fn system_time(now_unix: Duration) -> SystemTime {
        UNIX_EPOCH + now_unix
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn reset_styles_round_up() {
        let now = ms(1_800_000_000_250);
        // 1.5 s to go: 2 whole seconds, the instant 1800000001.75 → ...002.
        assert_eq!(reset_value(ResetStyle::Seconds, now, ms(1_500)), 2);
        assert_eq!(reset_value(ResetStyle::Unix, now, ms(1_500)), 1_800_000_002);
        assert_eq!(
            reset_value(ResetStyle::UnixMs, now, ms(1_500)),
            1_800_000_001_750
        );
        // Exactly whole: no rounding.
        assert_eq!(reset_value(ResetStyle::Seconds, now, ms(2_000)), 2);
        assert_eq!(reset_value(ResetStyle::Unix, ms(1_000), ms(2_000)), 3);
        // A nanosecond over rounds up a whole unit.
        let tiny = Duration::from_nanos(1);
        assert_eq!(reset_value(ResetStyle::Seconds, ms(0), tiny), 1);
        assert_eq!(reset_value(ResetStyle::Unix, ms(5_000), tiny), 6);
        assert_eq!(reset_value(ResetStyle::UnixMs, ms(5_000), tiny), 5_001);
        assert_eq!(reset_value(ResetStyle::Seconds, now, Duration::ZERO), 0);
    }

    #[test]
    fn rate_limit_headers_carry_the_decision() {
        let d = Decision {
            allowed: true,
            limit: 10,
            remaining: 7,
            reset_in: ms(300),
            retry_in: Duration::ZERO,
            window_start: ms(0),
        };
        let mut h = HeaderMap::new();
        rate_limit(&mut h, &d, ResetStyle::UnixMs, ms(1_000));
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-remaining"], "7");
        assert_eq!(h["x-ratelimit-reset"], "1300");
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_at_least_one() {
        let now = ms(1_000_500);
        assert_eq!(retry_after(RetryAfterStyle::Seconds, now, ms(200)), "1");
        assert_eq!(retry_after(RetryAfterStyle::Seconds, now, ms(1_000)), "1");
        assert_eq!(retry_after(RetryAfterStyle::Seconds, now, ms(1_001)), "2");
        assert_eq!(
            retry_after(RetryAfterStyle::Seconds, now, Duration::ZERO),
            "1"
        );
        assert_eq!(scripted_retry_after(RetryAfterStyle::Seconds, now, 0), "0");
        assert_eq!(scripted_retry_after(RetryAfterStyle::Seconds, now, 7), "7");
    }

    #[test]
    fn retry_after_dates_round_up_to_the_next_second() {
        // 2026-01-01T00:00:00.500Z plus 200 ms is .700: the date says :01.
        let midnight = 1_767_225_600;
        let now = Duration::from_secs(midnight) + ms(500);
        let v = retry_after(RetryAfterStyle::HttpDate, now, ms(200));
        assert_eq!(v, "Thu, 01 Jan 2026 00:00:01 GMT");
        // A whole second stays itself.
        let v = retry_after(RetryAfterStyle::HttpDate, now, ms(1_500));
        assert_eq!(v, "Thu, 01 Jan 2026 00:00:02 GMT");
        let v = scripted_retry_after(RetryAfterStyle::HttpDate, now, 1);
        assert_eq!(v, "Thu, 01 Jan 2026 00:00:02 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        // Absurd waits are capped, never a panic.
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        let far = retry_after(RetryAfterStyle::HttpDate, now, Duration::MAX);
        assert_eq!(far, "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn an_http_date_parses_back_with_the_workers_own_reader() {
        let now = Duration::from_secs(1_767_225_600) + ms(500);
        let mut h = HeaderMap::new();
        let v = retry_after(RetryAfterStyle::HttpDate, now, ms(2_200));
        h.insert("retry-after", HeaderValue::from_str(&v).unwrap());
        // .5 + 2.2 = 2.7 → :03, which is 2.5 s after now: never earlier than
        // the real wait, and less than a second later.
        let read = telnyx::retry_after(&h, system_time(now)).unwrap();
        assert_eq!(read, ms(2_500));
        assert!(read >= ms(2_200) && read < ms(3_200));
        let mut h = HeaderMap::new();
        let v = retry_after(RetryAfterStyle::Seconds, now, ms(2_200));
        h.insert("retry-after", HeaderValue::from_str(&v).unwrap());
        assert_eq!(telnyx::retry_after(&h, system_time(now)), Some(ms(3_000)));
    }
}
