//! Waiting for a condition with a deadline: the only way tests synchronise with servers, actors
//! and clients. A bare sleep either wastes time or flakes; a bounded poll does neither.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two checks of a condition: short enough not to slow tests down, long enough
/// not to hog one of the machine's few cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The condition did not hold within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    /// The deadline the caller gave.
    pub deadline: Duration,
    /// How long the poll actually ran (at least `deadline`).
    pub elapsed: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "condition still false after {:?} (deadline {:?})",
            self.elapsed, self.deadline
        )
    }
}

impl std::error::Error for TimedOut {}

/// Calls `f` every [`POLL_INTERVAL`] until it returns `true` or `deadline` has passed.
///
/// `f` is always called at least once, and once more at the deadline, so a condition that
/// becomes true while the poll sleeps is not missed. Returns the time it took.
pub fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, TimedOut> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(TimedOut { deadline, elapsed });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - elapsed));
    }
}

/// The async form of [`poll_until`]: awaits `f()` every [`POLL_INTERVAL`] (with
/// `tokio::time::sleep`, so the runtime keeps running actors and clients meanwhile).
///
/// Works under `#[tokio::test]` and `#[actix_rt::test]` alike.
pub async fn poll_until_async<F, Fut>(deadline: Duration, mut f: F) -> Result<Duration, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Ok(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(TimedOut { deadline, elapsed });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - elapsed)).await;
    }
}
