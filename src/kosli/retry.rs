//! When and how long to wait before asking Kosli again: pure functions.

use std::time::Duration;

/// The rule lives with the error type, which must not depend on this module.
pub use crate::error::is_retryable_status;

/// Exponential backoff with jitter, as docs/kosli-api.md says: from 1 s, capped at 30 s,
/// 3 retries by default; `Retry-After` honoured up to `max_retry_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
    /// The longest `Retry-After` we wait for; beyond it the request fails now and
    /// the caller's own schedule tries again later.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first retry). `unit` in
    /// [0, 1) draws the jitter: the delay lies in [d/2, d) for the exponential d.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.cap);
        let half = exponential / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait a `Retry-After` asks for, if it is one we honour.
    pub fn honoured_retry_after(&self, asked: Duration) -> Option<Duration> {
        (asked <= self.max_retry_after).then_some(asked)
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110).
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = when.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_exactly_the_documented_ones() {
        for s in [409, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404, 422, 501] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_thirty() {
        let p = RetryPolicy::default();
        let upper: Vec<u64> = (0..7)
            .map(|r| p.backoff(r, 0.999_999).as_millis() as u64)
            .collect();
        assert_eq!(upper, [999, 1999, 3999, 7999, 15999, 29999, 29999]);
        let lower: Vec<u64> = (0..7)
            .map(|r| p.backoff(r, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(lower, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
        assert_eq!(
            p.backoff(u32::MAX, 0.5),
            p.backoff(6, 0.5),
            "huge retry counts stay capped"
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now: jiff::Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:00:12 GMT", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_beyond_the_limit_is_not_honoured() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.honoured_retry_after(Duration::from_secs(120)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p.honoured_retry_after(Duration::from_secs(121)), None);
    }
}
