//! Periodic jobs: each period runs once across the fleet.
//!
//! Periods are aligned on the Unix epoch (an hourly job's periods start on the hour). When a
//! period starts, every process that registered the job tries the lock `NAME-lock`
//! ([`Locks::run_exclusive`]); the holder reads `NAME-last-run` and runs the job only when it
//! does not name the current period, then writes it (3-day TTL, as seed 002's cleanup jobs:
//! the value is the period's date `YYYY-MM-DD` for periods of a day or more, its ISO-8601
//! start otherwise). After downtime the current period has not run, so the job runs once,
//! not once per missed period. A job that fails is tried again at the next check.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::ids::iso8601;
use super::SchedulerError;
use crate::actors::locks::Locks;
use crate::storage::{now_ms, Storage};

/// How long `NAME-last-run` lives.
pub const LAST_RUN_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// Longest wait between two checks of a job.
const MAX_CHECK: Duration = Duration::from_secs(1);

/// What a job returns: `Err(message)` leaves the period to run again.
pub type JobResult = Result<(), String>;
type BoxJob = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = JobResult> + Send>> + Send + Sync>;

/// The periodic jobs of a process: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Periodic {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    locks: Locks,
    stop: Notify,
    stopped: AtomicBool,
    runs: DashMap<String, Arc<AtomicU64>>,
}

impl std::fmt::Debug for Periodic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Periodic")
            .field("jobs", &self.inner.runs.len())
            .finish()
    }
}

/// The label of the period that contains `now` (what `NAME-last-run` holds once it ran).
pub fn period_label(every: Duration, now: u64) -> String {
    let period = every.as_millis().max(1) as u64;
    let start = now - now % period;
    if period.is_multiple_of(86_400_000) {
        iso8601(start)[..10].to_string()
    } else {
        iso8601(start)
    }
}

impl Periodic {
    /// Periodic jobs over `storage`, locked with `locks`.
    pub fn new(storage: Storage, locks: Locks) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                locks,
                stop: Notify::new(),
                stopped: AtomicBool::new(false),
                runs: DashMap::new(),
            }),
        }
    }

    /// Runs `job` once per period of `every` across the fleet (every process registering the
    /// same `name` takes part). `lock_ttl` bounds one run (the lock's watchdog extends it while
    /// the job runs). Must be called inside a tokio runtime.
    pub fn every<F, Fut>(
        &self,
        name: &str,
        every: Duration,
        lock_ttl: Duration,
        job: F,
    ) -> Result<(), SchedulerError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        if name.is_empty() || name.len() > 200 {
            return Err(SchedulerError::Invalid {
                what: "job name",
                message: format!("{name:?}: expected 1..=200 bytes"),
            });
        }
        if every < Duration::from_secs(1) {
            return Err(SchedulerError::Invalid {
                what: "job period",
                message: format!("{every:?}: expected at least 1 s"),
            });
        }
        if lock_ttl.is_zero() {
            return Err(SchedulerError::Zero("lock_ttl"));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SchedulerError::NoRuntime)?;
        let job: BoxJob = Arc::new(move || Box::pin(job()));
        let runs = Arc::new(AtomicU64::new(0));
        self.inner.runs.insert(name.to_string(), runs.clone());
        runtime.spawn(run_job(
            self.inner.clone(),
            name.to_string(),
            every,
            lock_ttl,
            job,
            runs,
        ));
        Ok(())
    }

    /// How many times this process ran the job `name`.
    pub fn runs(&self, name: &str) -> u64 {
        self.inner
            .runs
            .get(name)
            .map(|r| r.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Stops every job of this process (a running one finishes).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.stop.notify_waiters();
    }
}

async fn run_job(
    inner: Arc<Inner>,
    name: String,
    every: Duration,
    lock_ttl: Duration,
    job: BoxJob,
    runs: Arc<AtomicU64>,
) {
    let last_key = format!("{name}-last-run");
    let lock = format!("{name}-lock");
    let period = every.as_millis().max(1) as u64;
    loop {
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let label = period_label(every, now_ms());
        let done = matches!(inner.storage.get(&last_key).await, Ok(Some(v)) if v == label);
        if !done {
            let (storage, job, runs) = (&inner.storage, &job, &runs);
            let work = async {
                // Read again under the lock: another process may have run it meanwhile.
                if matches!(storage.get(&last_key).await, Ok(Some(v)) if v == label) {
                    return;
                }
                match job().await {
                    Ok(()) => {
                        runs.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = storage
                            .set(&last_key, label.clone(), Some(LAST_RUN_TTL))
                            .await
                        {
                            tracing::warn!(actor = "scheduler", job = %name, error = %e, "recording the run failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(actor = "scheduler", job = %name, error = %e, "periodic job failed; it runs again at the next check");
                    }
                }
            };
            match inner.locks.run_exclusive(&lock, lock_ttl, work).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(actor = "scheduler", job = %name, error = %e, "periodic job not run")
                }
            }
        }
        // Next check: the next period's start, or sooner (a failed run, a missed notice).
        let now = now_ms();
        let next = now - now % period + period;
        let wait = Duration::from_millis(next - now + 1).min(MAX_CHECK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = inner.stop.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_period() {
        let day = Duration::from_secs(86_400);
        assert_eq!(period_label(day, 1_759_036_514_000), "2025-09-28");
        let hour = Duration::from_secs(3_600);
        assert_eq!(
            period_label(hour, 1_759_036_514_000),
            "2025-09-28T05:00:00Z"
        );
        assert_eq!(
            period_label(hour, 1_759_036_514_000),
            period_label(hour, 1_759_039_199_999)
        );
        assert_ne!(
            period_label(hour, 1_759_036_514_000),
            period_label(hour, 1_759_039_200_000)
        );
    }
}
