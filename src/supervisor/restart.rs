//! Restart policy: which exits are restarted ([`RestartType`]), how long to wait before a
//! restart ([`backoff`]), and when restarting has to give up ([`Intensity`]).
//!
//! The meanings follow Erlang/OTP: a *permanent* child is always restarted, a *transient* one
//! only after a failure (not after it stopped normally), a *temporary* one never. Every
//! restart anywhere in the tree counts towards one intensity window: past `max_restarts`
//! restarts within `within_secs`, the supervisor stops the whole tree with
//! [`SupervisorError::IntensityExceeded`](super::SupervisorError::IntensityExceeded).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::settings::SupervisorSettings;

/// When a child is restarted (OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartType {
    /// Always restarted, whether it failed or stopped normally.
    Permanent,
    /// Restarted only after a failure (panic, reported error, hang); a normal stop is final.
    Transient,
    /// Never restarted.
    Temporary,
}

impl RestartType {
    /// Whether a child of this type is restarted after an exit that was (or was not) a failure.
    pub fn restarts_after(self, failed: bool) -> bool {
        match self {
            RestartType::Permanent => true,
            RestartType::Transient => failed,
            RestartType::Temporary => false,
        }
    }
}

/// Upper bound of the delay before the `k`-th consecutive restart (k starts at 1):
/// `min(backoff_max_ms, backoff_base_ms * 2^(k-1))`.
pub fn backoff_ceiling(settings: &SupervisorSettings, k: u32) -> Duration {
    let exponent = k.saturating_sub(1).min(63);
    let doubled = settings
        .backoff_base_ms
        .saturating_mul(1_u64.checked_shl(exponent).unwrap_or(u64::MAX));
    Duration::from_millis(doubled.min(settings.backoff_max_ms))
}

/// Delay before the `k`-th consecutive restart of a child: uniformly drawn from `[d/2, d]`
/// with `d` = [`backoff_ceiling`], so that children failing together do not restart in step.
pub fn backoff(settings: &SupervisorSettings, k: u32) -> Duration {
    let ceiling = backoff_ceiling(settings, k).as_millis() as u64;
    let floor = ceiling / 2;
    Duration::from_millis(rand::thread_rng().gen_range(floor..=ceiling))
}

/// Sliding window of restart times, used both for the tree-wide intensity and for each
/// child's count of consecutive restarts (which sets its backoff).
#[derive(Debug, Clone)]
pub(crate) struct Intensity {
    window: Duration,
    times: VecDeque<Instant>,
}

impl Intensity {
    /// An empty window of `within_secs`.
    pub(crate) fn new(settings: &SupervisorSettings) -> Self {
        Self {
            window: Duration::from_secs(settings.within_secs),
            times: VecDeque::new(),
        }
    }

    /// Records a restart at `now` and returns how many restarts the window now holds.
    pub(crate) fn record(&mut self, now: Instant) -> u32 {
        while let Some(&first) = self.times.front() {
            if now.saturating_duration_since(first) >= self.window {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        u32::try_from(self.times.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SupervisorSettings {
        SupervisorSettings::default()
    }

    #[test]
    fn restart_types_follow_otp() {
        assert!(RestartType::Permanent.restarts_after(false));
        assert!(RestartType::Permanent.restarts_after(true));
        assert!(!RestartType::Transient.restarts_after(false));
        assert!(RestartType::Transient.restarts_after(true));
        assert!(!RestartType::Temporary.restarts_after(true));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_stays_in_the_jitter_band() {
        let s = settings();
        assert_eq!(backoff_ceiling(&s, 1), Duration::from_millis(50));
        assert_eq!(backoff_ceiling(&s, 2), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(&s, 7), Duration::from_millis(3_200));
        assert_eq!(backoff_ceiling(&s, 8), Duration::from_millis(5_000));
        assert_eq!(backoff_ceiling(&s, 200), Duration::from_millis(5_000));
        for k in 1..10 {
            let d = backoff_ceiling(&s, k);
            for _ in 0..50 {
                let delay = backoff(&s, k);
                assert!(
                    delay >= d / 2 && delay <= d,
                    "k={k}: {delay:?} outside [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
    }

    #[test]
    fn intensity_forgets_restarts_older_than_the_window() {
        let s = settings();
        let mut window = Intensity::new(&s);
        let t0 = Instant::now();
        assert_eq!(window.record(t0), 1);
        assert_eq!(window.record(t0 + Duration::from_secs(1)), 2);
        assert_eq!(window.record(t0 + Duration::from_secs(10)), 2);
        assert_eq!(window.record(t0 + Duration::from_secs(30)), 1);
    }
}
