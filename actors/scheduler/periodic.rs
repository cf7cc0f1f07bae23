//! Periodic jobs: each period runs once across the fleet.
//!
//! A job runs [`Periodic::every`] interval, with periods aligned on the Unix epoch (an hourly
//! job's periods start on the hour), or on a [`Periodic::cron`] schedule, whose periods run
//! from one fire time to the next (UTC). When a period starts, every process that registered the job tries the lock `NAME-lock`
//! ([`Locks::run_exclusive`]); the holder reads `NAME-last-run` and runs the job only when it
//! does not name the current period, then writes it (3-day TTL, as seed 002's cleanup jobs:
//! the value is the period's date `YYYY-MM-DD` for interval periods of a day or more, its
//! ISO-8601 start otherwise). After downtime the current period has not run, so the job runs once,
//! not once per missed period. A job that fails is tried again at the next check.
//!
//! Every process checks each of its jobs when a period starts and at least every second. The
//! checks of every job registered run in one future, [`Periodic::run`], which picks up jobs
//! registered later; in a fleet it is a supervised task of the scheduler actor, so a panic of
//! a job fails that actor, its restart runs every job again, and its stop ends them (a run in
//! progress is cut short: its lock is released and the period runs again at the next check).
//! Locks refuse while Redis is unreachable (unless `locks.on_outage = "local"`), so periodic
//! jobs pause during an outage.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;

use super::SchedulerError;
use crate::actors::locks::Locks;
use crate::clock::iso8601;
use crate::clock::now_ms;
use crate::storage::Storage;

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
    /// Every job registered, in order; [`Periodic::run`] starts the ones it has not seen.
    jobs: parking_lot::Mutex<Vec<Arc<Job>>>,
    /// Wakes [`Periodic::run`] when a job is registered.
    added: Notify,
    runs: DashMap<String, Arc<AtomicU64>>,
}

/// One registered job.
struct Job {
    name: String,
    cadence: Cadence,
    lock_ttl: Duration,
    job: BoxJob,
    runs: Arc<AtomicU64>,
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
                jobs: parking_lot::Mutex::new(Vec::new()),
                added: Notify::new(),
                runs: DashMap::new(),
            }),
        }
    }

    /// Runs `job` once per period of the cron schedule `expr` across the fleet, in UTC: a
    /// period runs from one fire time to the next, so after downtime the latest missed fire
    /// runs once. `expr` has 6 or 7 fields: seconds, minutes, hours, day of month, month, day
    /// of week, optional year (`"0 30 3 * * *"`: every day at 03:30). Otherwise as
    /// [`Periodic::every`].
    pub fn cron<F, Fut>(
        &self,
        name: &str,
        expr: &str,
        lock_ttl: Duration,
        job: F,
    ) -> Result<(), SchedulerError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let schedule = cron::Schedule::from_str(expr).map_err(|e| SchedulerError::Invalid {
            what: "cron schedule",
            message: format!("{expr:?}: {e}"),
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(SchedulerError::Invalid {
                what: "cron schedule",
                message: format!("{expr:?}: never fires again"),
            });
        }
        self.spawn(name, Cadence::Cron(Box::new(schedule)), lock_ttl, job)
    }

    /// Runs `job` once per period of `every` across the fleet (every process registering the
    /// same `name` takes part). `lock_ttl` bounds one run (the lock's watchdog extends it while
    /// the job runs). The job runs from [`Periodic::run`] (in a fleet, under the scheduler
    /// actor).
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
        if every < Duration::from_secs(1) {
            return Err(SchedulerError::Invalid {
                what: "job period",
                message: format!("{every:?}: expected at least 1 s"),
            });
        }
        self.spawn(name, Cadence::Every(every), lock_ttl, job)
    }

    fn spawn<F, Fut>(
        &self,
        name: &str,
        cadence: Cadence,
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
        if lock_ttl.is_zero() {
            return Err(SchedulerError::Zero("lock_ttl"));
        }
        let job: BoxJob = Arc::new(move || Box::pin(job()));
        let runs = Arc::new(AtomicU64::new(0));
        self.inner.runs.insert(name.to_string(), runs.clone());
        self.inner.jobs.lock().push(Arc::new(Job {
            name: name.to_string(),
            cadence,
            lock_ttl,
            job,
            runs,
        }));
        self.inner.added.notify_one();
        Ok(())
    }

    /// Runs the checks of every job registered, and of each one registered later; never
    /// returns (drop it to stop the jobs). A panic of a job propagates: in a fleet it fails the
    /// scheduler actor, whose restart runs every job again.
    pub fn run(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let mut running = FuturesUnordered::new();
            let mut seen = 0;
            loop {
                let added = inner.added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                let new: Vec<Arc<Job>> = inner.jobs.lock()[seen..].to_vec();
                seen += new.len();
                for job in new {
                    running.push(run_job(inner.clone(), job));
                }
                tokio::select! {
                    _ = &mut added => {}
                    Some(()) = running.next(), if !running.is_empty() => {}
                }
            }
        }
    }

    /// How many times this process ran the job `name`.
    pub fn runs(&self, name: &str) -> u64 {
        self.inner
            .runs
            .get(name)
            .map(|r| r.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// When a job's periods start.
enum Cadence {
    /// Every interval, aligned on the Unix epoch.
    Every(Duration),
    /// At each fire time of a cron schedule (UTC).
    Cron(Box<cron::Schedule>),
}

impl Cadence {
    /// The label of the period containing `now` (None before a cron schedule's first fire).
    fn label(&self, now: u64) -> Option<String> {
        match self {
            Cadence::Every(every) => Some(period_label(*every, now)),
            Cadence::Cron(schedule) => cron_period_start(schedule, now).map(iso8601),
        }
    }

    /// When the next period starts, in ms since the epoch (None when a cron schedule ends).
    fn next_start(&self, now: u64) -> Option<u64> {
        match self {
            Cadence::Every(every) => {
                let period = every.as_millis().max(1) as u64;
                Some(now - now % period + period)
            }
            Cadence::Cron(schedule) => schedule
                .after(&utc(now))
                .next()
                .map(|t| t.timestamp_millis().max(0) as u64),
        }
    }
}

fn utc(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// The latest fire time of `schedule` at or before `now` (ms since the epoch).
pub fn cron_period_start(schedule: &cron::Schedule, now: u64) -> Option<u64> {
    // `after(t)` yields fire times after t; walking back from just past `now` gives the
    // latest one at or before it.
    schedule
        .after(&utc(now + 1))
        .next_back()
        .map(|t| t.timestamp_millis().max(0) as u64)
}

/// The checks of one job, forever.
async fn run_job(inner: Arc<Inner>, spec: Arc<Job>) {
    let Job {
        name,
        cadence,
        lock_ttl,
        job,
        runs,
    } = &*spec;
    let lock_ttl = *lock_ttl;
    let last_key = format!("{name}-last-run");
    let lock = format!("{name}-lock");
    loop {
        let label = cadence.label(now_ms());
        let done = match &label {
            None => true,
            Some(label) => {
                matches!(inner.storage.get(&last_key).await, Ok(Some(v)) if v == *label)
            }
        };
        if !done {
            let storage = &inner.storage;
            let work = async {
                // Under the lock, the last run is read again (another process may have run
                // it meanwhile), and the period is the one current once it is read, just
                // before the job starts: the check and the lock take round trips, which may
                // cross into the next period, and then that period runs, not the one that
                // has ended (which would leave the new one to run again after it).
                let last = storage.get(&last_key).await;
                let Some(label) = cadence.label(now_ms()) else {
                    return;
                };
                if matches!(last, Ok(Some(v)) if v == label) {
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
        let wait = match cadence.next_start(now) {
            Some(next) => Duration::from_millis(next.saturating_sub(now) + 1).min(MAX_CHECK),
            None => MAX_CHECK,
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cron_period_starts_at_the_latest_fire_time() {
        let daily = cron::Schedule::from_str("0 30 3 * * *").unwrap();
        // 2025-09-28T05:15:14Z: the period began at 03:30 that day.
        let now = 1_759_036_514_000;
        let start = cron_period_start(&daily, now).unwrap();
        assert_eq!(iso8601(start), "2025-09-28T03:30:00Z");
        // A fire time is the start of its own period.
        assert_eq!(cron_period_start(&daily, start), Some(start));
        assert_eq!(
            iso8601(cron_period_start(&daily, start - 1).unwrap()),
            "2025-09-27T03:30:00Z"
        );
        let cadence = Cadence::Cron(Box::new(daily));
        assert_eq!(
            iso8601(cadence.next_start(now).unwrap()),
            "2025-09-29T03:30:00Z"
        );
        assert_eq!(cadence.label(now), Some("2025-09-28T03:30:00Z".into()));
        assert_eq!(
            Cadence::Every(Duration::from_secs(3_600)).label(now),
            Some("2025-09-28T05:00:00Z".into())
        );
    }

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
