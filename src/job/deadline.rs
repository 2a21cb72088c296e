//! Job deadlines: the producer's `x-expires-at` header, RFC 3339 (with `Z`
//! or a numeric offset) or unix seconds. A deadline a producer sets is
//! untrusted input: anything that does not fit a `SystemTime` is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `x-expires-at`: RFC 3339, or unix seconds (integer or fractional).
pub fn parse_deadline(raw: &str) -> Option<SystemTime> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
        return None;
    }
    humantime::parse_rfc3339_weak(raw)
        .ok()
        .or_else(|| parse_rfc3339_offset(raw))
}

/// RFC 3339 with a numeric offset (`+02:00`), which humantime does not take.
fn parse_rfc3339_offset(raw: &str) -> Option<SystemTime> {
    let split = raw.len().checked_sub(6)?;
    let (local, offset) = raw.split_at(split);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    if offset.as_bytes().get(3) != Some(&b':') {
        return None;
    }
    let base = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = Duration::from_secs(u64::try_from((hours * 3600 + minutes * 60).abs()).ok()?);
    // local time = UTC + offset, so UTC = local - offset.
    if sign > 0 {
        base.checked_sub(shift)
    } else {
        base.checked_add(shift)
    }
}
