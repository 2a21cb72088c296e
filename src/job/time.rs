//! Times a producer controls (the AMQP `timestamp`, `x-expires-at`,
//! `x-failed-at`, `x-death` times), turned into `SystemTime`s that can never
//! overflow or fail to print. Anything after [`LATEST`] (the last second
//! RFC 3339 can write, 9999-12-31T23:59:59Z) is "no usable time": `None`.
//! Nothing here panics on any input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second of year 9999, in unix seconds: the latest time taken
/// from a producer. Later ones (and sums that pass it) are `None`.
pub const LATEST_SECS: u64 = 253_402_300_799;

/// `secs` after the epoch, if not after [`LATEST_SECS`].
pub fn from_unix_secs(secs: u64) -> Option<SystemTime> {
    if secs > LATEST_SECS {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Fractional unix seconds, if finite, not negative and not after
/// [`LATEST_SECS`].
pub fn from_unix_secs_f64(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || secs < 0.0 || secs > LATEST_SECS as f64 {
        return None;
    }
    let t = UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
    within(t)
}

/// `t`, if it lies between the epoch and [`LATEST_SECS`].
pub fn within(t: SystemTime) -> Option<SystemTime> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    (d.as_secs() <= LATEST_SECS).then_some(t)
}

/// `t + d`, if that is not after [`LATEST_SECS`].
pub fn checked_add(t: SystemTime, d: Duration) -> Option<SystemTime> {
    within(t.checked_add(d)?)
}

/// RFC 3339 (UTC, seconds). A time RFC 3339 cannot write (before the epoch
/// or after year 9999) is written as unix seconds instead of panicking, as
/// `humantime`'s formatter would.
pub fn rfc3339(t: SystemTime) -> String {
    if within(t).is_some() {
        let mut s = String::new();
        use std::fmt::Write;
        if write!(s, "{}", humantime::format_rfc3339_seconds(t)).is_ok() {
            return s;
        }
    }
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("unix {}", d.as_secs()),
        Err(e) => format!("unix -{}", e.duration().as_secs()),
    }
}

/// An RFC 3339 time with `Z`, no zone (UTC) or a `±hh:mm` offset (as
/// Telnyx writes `occurred_at`), if it is one between the epoch and
/// [`LATEST_SECS`].
pub fn parse_rfc3339(raw: &str) -> Option<SystemTime> {
    parse_rfc3339_unbounded(raw.trim()).and_then(within)
}

/// An RFC 3339 time as [`parse_rfc3339`] reads it, before 1970 or after
/// year 9999 too (for callers that tell those apart).
pub fn parse_rfc3339_unbounded(raw: &str) -> Option<SystemTime> {
    // The offset form first: humantime's weak parser takes any `+hh:mm`
    // after fractional seconds and ignores it (2.4.0), which would read
    // `20:30:00.000+02:00` as 20:30 UTC.
    parse_rfc3339_offset(raw).or_else(|| humantime::parse_rfc3339_weak(raw).ok())
}

/// RFC 3339 with a numeric offset (`+02:00`), which humantime does not take.
fn parse_rfc3339_offset(raw: &str) -> Option<SystemTime> {
    let split = raw.len().checked_sub(6)?;
    // `get`, not `split_at`: `split` need not be a character boundary.
    let local = raw.get(..split)?;
    let offset = raw.get(split..)?.as_bytes();
    let sign = match offset.first()? {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let digit = |i: usize| {
        offset
            .get(i)
            .filter(|b| b.is_ascii_digit())
            .map(|b| i64::from(b - b'0'))
    };
    let hours = digit(1)? * 10 + digit(2)?;
    let minutes = digit(4)? * 10 + digit(5)?;
    if offset.get(3) != Some(&b':') || hours > 23 || minutes > 59 {
        return None;
    }
    let base = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = Duration::from_secs(u64::try_from(hours * 3600 + minutes * 60).ok()?);
    // local time = UTC + offset, so UTC = local - offset.
    if sign > 0 {
        base.checked_sub(shift)
    } else {
        base.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_z_no_zone_or_an_offset_is_read() {
        let z = parse_rfc3339("2026-03-05T18:30:00.000Z").expect("Z");
        assert_eq!(parse_rfc3339("2026-03-05T18:30:00.000+00:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-03-05T20:30:00.000+02:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-03-05T16:30:00.000-02:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-03-05T20:30:00+02:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-03-05T18:30:00"), Some(z));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339(""), None);
    }

    #[test]
    fn the_latest_second_is_taken_and_the_next_is_not() {
        let last = from_unix_secs(LATEST_SECS).unwrap();
        assert_eq!(rfc3339(last), "9999-12-31T23:59:59Z");
        assert_eq!(from_unix_secs(LATEST_SECS + 1), None);
        assert_eq!(from_unix_secs(u64::MAX), None);
        assert_eq!(from_unix_secs(i64::MAX as u64), None);
        assert_eq!(checked_add(last, Duration::from_secs(1)), None);
        assert_eq!(checked_add(last, Duration::MAX), None);
        assert_eq!(
            checked_add(UNIX_EPOCH, Duration::from_secs(60)),
            from_unix_secs(60)
        );
    }

    #[test]
    fn absurd_floats_are_no_time() {
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            -1e300,
            1e300,
            f64::MAX,
            i64::MAX as f64,
            u64::MAX as f64,
            LATEST_SECS as f64 + 1.0,
        ] {
            assert_eq!(from_unix_secs_f64(v), None, "{v}");
        }
        assert_eq!(from_unix_secs_f64(-0.0), Some(UNIX_EPOCH));
        assert_eq!(
            from_unix_secs_f64(1.5),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert!(from_unix_secs_f64(f64::MIN_POSITIVE).is_some());
    }

    #[test]
    fn times_rfc3339_cannot_write_print_as_unix_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(LATEST_SECS + 1);
        assert_eq!(rfc3339(far), format!("unix {}", LATEST_SECS + 1));
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "unix -5");
        if let Some(max) = UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64)) {
            assert_eq!(rfc3339(max), format!("unix {}", i64::MAX));
        }
    }
}
