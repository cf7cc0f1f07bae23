//! Task ids that sort by creation time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Last (milliseconds << 12 | counter) handed out by this process.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A new task id in the UUIDv7 layout (lowercase hex with dashes): the first 48 bits are the
/// Unix milliseconds, the next 12 a counter within the millisecond, so ids made by this
/// process sort lexicographically in creation order (what orders tasks of equal priority in
/// the queue, whose members with equal scores Redis sorts by their bytes). When more than
/// 4,096 ids are made within one millisecond the clock is borrowed from the next one.
pub(crate) fn new_task_id(now_ms: u64) -> String {
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
}
