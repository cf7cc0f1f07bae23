//! Task ids that sort by creation time, and the ISO-8601 timestamps of the seed's layout.

use std::sync::atomic::{AtomicU64, Ordering};

/// Last (milliseconds << 12 | counter) handed out by this process.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A new task id in the UUIDv7 layout (lowercase hex with dashes): the first 48 bits are the
/// Unix milliseconds, the next 12 a counter within the millisecond, so ids made by this
/// process sort lexicographically in creation order (what orders tasks of equal priority in
/// the queue, whose members with equal scores Redis sorts by their bytes). When more than
/// 4,096 ids are made within one millisecond the clock is borrowed from the next one.
pub fn new_task_id(now_ms: u64) -> String {
    let wanted = (now_ms & 0xffff_ffff_ffff) << 12;
    let mut last = LAST.load(Ordering::Relaxed);
    let stamp = loop {
        let next = wanted.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let ms = stamp >> 12;
    let counter = stamp & 0xfff;
    let random: u64 = rand::random::<u64>() & 0x3fff_ffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        counter,
        0x8000 | (random >> 48) as u16 & 0x3fff,
        random & 0xffff_ffff_ffff
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for Unix milliseconds, as the seed writes timestamps.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order_even_within_one_millisecond() {
        let ids: Vec<String> = (0..10_000)
            .map(|_| new_task_id(1_700_000_000_000))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids[0].len(), 36);
        assert_eq!(&ids[0][14..15], "7");
        let later = new_task_id(1_800_000_000_000);
        assert!(later > ids[9_999]);
    }

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_759_036_514_000), "2025-09-28T05:15:14Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
