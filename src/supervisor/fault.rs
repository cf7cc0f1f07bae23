//! Fault injection for the supervision tests: the work loops of the built-in actors call
//! [`point`] with the name of a fault point, and a test [`arm`]s that point to make the next
//! pass through it panic, as a bug in that loop would.
//!
//! Compiled only into debug builds (the test profile): in a release build [`point`] is an
//! empty inline function and [`arm`] does nothing, so the daemon carries no hook. State is
//! process-wide; the test runner runs each test in a process of its own.
//!
//! | point | where |
//! |---|---|
//! | `fetcher` | each pass of the shared-data fetch loop |
//! | `reader` | each change notice a reader follows |
//! | `shared-data-watch` | each check of the shared key by the fetcher's key watch |
//! | `scheduler` | each pass of the scheduler's worker loop |
//! | `locks` | each release notice the lock manager hears |
//! | `hazards` | each pass of the hazard ticker's loop |
//! | `heartbeat` | each heartbeat the sender writes |
//! | `cache` | each invalidation message the cache's listener hears |
//! | `history` | each pass of the history batch writer's loop |
//! | `dashboard-sampler` | each sample of the dashboard's history (`src/http/history.rs`) |

#[cfg(debug_assertions)]
mod armed {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{LazyLock, Mutex};

    /// Whether any point is armed: the common case costs one load.
    static ANY: AtomicBool = AtomicBool::new(false);
    static POINTS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(Default::default);

    pub(super) fn arm(point: &str, times: u32) {
        if let Ok(mut points) = POINTS.lock() {
            points.insert(point.to_owned(), times);
            ANY.store(true, Ordering::Release);
        }
    }

    pub(super) fn take(point: &str) -> bool {
        if !ANY.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut points) = POINTS.lock() else {
            return false;
        };
        match points.get_mut(point) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Makes the next `times` passes through the fault point `point` panic (debug builds only).
pub fn arm(point: &str, times: u32) {
    #[cfg(debug_assertions)]
    armed::arm(point, times);
    #[cfg(not(debug_assertions))]
    let _ = (point, times);
}

/// A fault point: panics with `injected fault at POINT` when a test armed `point`.
#[inline]
pub fn point(point: &str) {
    #[cfg(debug_assertions)]
    if armed::take(point) {
        panic!("injected fault at {point}");
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
