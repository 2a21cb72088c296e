//! The `x-ratelimit-*` headers of one answer. `x-ratelimit-reset` comes as
//! seconds until the reset, a unix time in seconds, or a unix time in
//! milliseconds; whole seconds are taken as rounded up.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// The rate-limit headers of one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitHeaders {
    pub limit: Option<f64>,
    pub remaining: f64,
    /// Seconds until the window resets (an upper bound when `coarse`).
    pub reset_in: f64,
    /// The reset was given in whole seconds, so it is rounded up by up to 1 s.
    pub coarse: bool,
}

impl RateLimitHeaders {
    /// Read the headers; `now` converts a unix-timestamp reset.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        let num = |name: &str| -> Option<f64> {
            headers
                .get(name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        let remaining = num("x-ratelimit-remaining")?;
        let raw_reset = num("x-ratelimit-reset")?;
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let whole = raw_reset.fract() == 0.0;
        let (reset_in, coarse) = if raw_reset > 1e12 {
            ((raw_reset / 1000.0 - now_secs).max(0.0), false)
        } else if raw_reset > 1e9 {
            ((raw_reset - now_secs).max(0.0), whole)
        } else {
            (raw_reset, whole)
        };
        Some(Self {
            limit: num("x-ratelimit-limit"),
            remaining,
            reset_in,
            coarse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::tests::headers;
    use std::time::Duration;

    #[test]
    fn reset_as_seconds_or_unix_timestamp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = headers(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "20"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!(
            (r.limit, r.remaining, r.reset_in, r.coarse),
            (Some(100.0), 40.0, 20.0, true)
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "0.25"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (0.25, false), "fractional seconds");
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000010"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (10.0, true));
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1800000004000"),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!((r.reset_in, r.coarse), (4.0, false), "milliseconds");
        let h = headers(&[
            ("x-ratelimit-remaining", "40"),
            ("x-ratelimit-reset", "1799999990"),
        ]);
        assert_eq!(
            RateLimitHeaders::parse(&h, now).unwrap().reset_in,
            0.0,
            "past resets"
        );
        assert!(
            RateLimitHeaders::parse(&headers(&[("x-ratelimit-remaining", "x")]), now).is_none()
        );
        assert!(
            RateLimitHeaders::parse(
                &headers(&[("x-ratelimit-remaining", "-3"), ("x-ratelimit-reset", "1")]),
                now
            )
            .is_none(),
            "negative remaining"
        );
    }
}
