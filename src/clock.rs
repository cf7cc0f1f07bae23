//! The clock: time as Unix milliseconds, the unit of every timestamp botfleet stores or
//! compares, and the two ISO-8601 texts the seeds' records use.
//!
//! | function | text | where |
//! |---|---|---|
//! | [`iso8601`] | `2024-01-01T00:00:05Z` | task hashes, sessions, events, periodic jobs (seed 001) |
//! | [`iso8601_ms`] | `2024-01-01T00:00:05.000Z` | hazards (seed 002, JavaScript's `Date.toISOString()`) |
//!
//! Both are UTC, formatted by `chrono`; [`parse_ms`] reads either back, and
//! [`parse_ms_lenient`] also a time without an offset (as Python writes it), taken as UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch (0 if the system clock is set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds) for Unix milliseconds, as seed 001 writes
/// timestamps.
pub fn iso8601(ms: u64) -> String {
    utc(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds) for Unix milliseconds, the format of
/// JavaScript's `Date.toISOString()`.
pub fn iso8601_ms(ms: u64) -> String {
    utc(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Unix milliseconds of an RFC 3339 / ISO-8601 time with an offset (`...Z`, `...+02:00`), or
/// `None` when `text` is not one.
pub fn parse_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Unix milliseconds of an ISO-8601 time as other languages write it: RFC 3339 with an offset
/// (as [`parse_ms`]), or a date and time without one (`2025-01-01T12:00:05.123456`, Python's
/// `datetime.now().isoformat()`), taken as UTC; `None` for anything else.
pub fn parse_ms_lenient(text: &str) -> Option<i64> {
    parse_ms(text).or_else(|| {
        chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc().timestamp_millis())
    })
}

/// The instant `ms` after the epoch. Times past chrono's range (year 262,143) cannot come from
/// a clock; they are shown as the latest time chrono holds.
fn utc(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_match_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_704_067_205_999), "2024-01-01T00:00:05Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_704_067_205_000), "2024-01-01T00:00:05.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn texts_parse_back_to_their_milliseconds() {
        for ms in [0, 951_782_400_123, 1_704_067_205_000, 4_102_444_799_999] {
            assert_eq!(parse_ms(&iso8601_ms(ms)), Some(ms as i64));
            assert_eq!(parse_ms(&iso8601(ms)), Some(ms as i64 / 1_000 * 1_000));
        }
        assert_eq!(
            parse_ms("2024-01-01T02:00:05+02:00"),
            Some(1_704_067_205_000)
        );
        assert_eq!(parse_ms("yesterday"), None);
        assert_eq!(
            parse_ms_lenient("2024-01-01T00:00:05.250000"),
            Some(1_704_067_205_250)
        );
        assert_eq!(
            parse_ms_lenient("2024-01-01T00:00:05"),
            Some(1_704_067_205_000)
        );
        assert_eq!(
            parse_ms_lenient("2024-01-01T02:00:05+02:00"),
            Some(1_704_067_205_000)
        );
        assert_eq!(parse_ms_lenient("2024-01-01"), None);
        assert_eq!(parse_ms(""), None);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now_ms() > 1_796_000_000_000, "{}", now_ms());
    }
}
