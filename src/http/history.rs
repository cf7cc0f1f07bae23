//! The dashboard's recent past: a bounded ring of samples taken every second, served by
//! `GET /api/dashboard/history` so that a page opened late still draws the last minutes, and
//! whose latest point adds the per-second rates to `GET /metrics`.
//!
//! A sample reads only figures that cost the same at any queue depth: the storage counters and
//! the supervision board ([`Fleet::health`], no message), the lock manager's counters (one
//! message, bounded by 500 ms), the scheduler's in-memory counters and four `ZCARD`s of the
//! queue's sets. The sampler is a task on the HTTP server's own system, started with the
//! server, started again if it panics ([`supervise_sampler`]) and ended by its stop signal; a sample whose parts do not answer in time records
//! what it has (a missing figure is `null`), so a slow store never stalls the ring.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::bot::ApiError;
use super::AppState;
use crate::clock::now_ms;
use crate::fleet::Fleet;
use crate::storage::Mode;

/// Time between two samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: fifteen minutes at one a second.
pub(crate) const CAPACITY: usize = 900;
/// How long one sample's queries may take before the sample goes without them.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Point {
    /// When it was taken (unix ms).
    pub(crate) at_ms: u64,
    /// The storage mode (`null` before the storage reported one).
    pub(crate) mode: Option<Mode>,
    /// Writes waiting in the outbox.
    pub(crate) outbox: u64,
    /// Tasks by status (`None` when the counts did not answer in time).
    pub(crate) queue: Option<[u64; 4]>,
    /// Tasks this process completed per second since the previous sample.
    pub(crate) processed_per_sec: f64,
    /// Task attempts that failed in this process per second since the previous sample.
    pub(crate) failed_per_sec: f64,
    /// Tasks of this process waiting for a lock (`None` when the lock manager did not answer).
    pub(crate) lock_waiters: Option<u64>,
    /// Locks this process holds: its guards and the leases it handed out.
    pub(crate) locks_held: Option<u64>,
    /// Restarts of each actor so far.
    pub(crate) restarts: BTreeMap<String, u32>,
    /// The cumulative counters the rates come from: completed, failed attempts.
    #[serde(skip)]
    totals: (u64, u64),
}

/// The statuses of [`Point::queue`], in order.
pub(crate) const QUEUE_STATUSES: [&str; 4] = ["pending", "delayed", "processing", "dead"];

/// The ring: the last [`CAPACITY`] samples, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    // A parking_lot mutex: a push or a copy under it, never an await.
    points: parking_lot::Mutex<VecDeque<Point>>,
    /// Times the sampler panicked and was started again.
    restarts: std::sync::atomic::AtomicU32,
}

impl History {
    /// Adds `point`, turning the cumulative counters into rates against the previous sample,
    /// and drops the oldest past [`CAPACITY`].
    pub(crate) fn push(&self, mut point: Point) {
        let mut points = self.points.lock();
        if let Some(last) = points.back() {
            let secs = point.at_ms.saturating_sub(last.at_ms) as f64 / 1000.0;
            if secs > 0.0 {
                let rate = |now: u64, before: u64| {
                    // Rounded to a hundredth: the JSON stays short.
                    (now.saturating_sub(before) as f64 / secs * 100.0).round() / 100.0
                };
                point.processed_per_sec = rate(point.totals.0, last.totals.0);
                point.failed_per_sec = rate(point.totals.1, last.totals.1);
            }
        }
        points.push_back(point);
        while points.len() > CAPACITY {
            points.pop_front();
        }
    }

    /// The samples taken after `since_ms`, oldest first.
    pub(crate) fn since(&self, since_ms: u64) -> Vec<Point> {
        let points = self.points.lock();
        let start = points.partition_point(|p| p.at_ms <= since_ms);
        points.range(start..).cloned().collect()
    }

    /// The latest sample.
    pub(crate) fn latest(&self) -> Option<Point> {
        self.points.lock().back().cloned()
    }

    /// How many samples are kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.lock().len()
    }
}

/// Takes one sample of `fleet`.
pub(crate) async fn sample(fleet: &Fleet) -> Point {
    let health = fleet.health();
    let scheduler = fleet.scheduler();
    let stats = scheduler.stats();
    let (counts, locks) = tokio::join!(
        tokio::time::timeout(QUERY_TIMEOUT, scheduler.counts()),
        tokio::time::timeout(QUERY_TIMEOUT, fleet.lock_stats()),
    );
    let queue = counts
        .ok()
        .and_then(Result::ok)
        .map(|c| [c.pending, c.delayed, c.processing, c.dead]);
    let locks = locks.ok().and_then(Result::ok);
    Point {
        at_ms: now_ms(),
        mode: health.storage.mode,
        outbox: health.storage.outbox_len as u64,
        queue,
        processed_per_sec: 0.0,
        failed_per_sec: 0.0,
        lock_waiters: locks.as_ref().map(|l| l.waiters as u64),
        // Guards and leases alike: `botfleet_locks_held` + `botfleet_lock_leases_held`.
        locks_held: locks.as_ref().map(|l| (l.held + l.leases) as u64),
        restarts: health
            .actors
            .actors
            .iter()
            .map(|a| (a.actor.clone(), a.restarts))
            .collect(),
        totals: (stats.completed, stats.failed_attempts),
    }
}

/// Runs the sampler ([`run_sampler`]) until `shutdown` turns true, starting it again (after
/// [`SAMPLE_INTERVAL`]) whenever it panics: a bug in one sample must not leave the charts
/// frozen while the page goes on asking. Each restart is logged at ERROR with the panic's
/// message and counted (`sampler_restarts` in `/api/dashboard/history`).
pub(crate) async fn supervise_sampler(
    fleet: Fleet,
    history: std::sync::Arc<History>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let run = actix_rt::spawn(run_sampler(
            fleet.clone(),
            history.clone(),
            shutdown.clone(),
        ));
        match run.await {
            Ok(()) => return,
            Err(e) => {
                let message = match e.try_into_panic() {
                    Ok(payload) => payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned()),
                    Err(e) => e.to_string(),
                };
                let restarts = history
                    .restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                tracing::error!(task = "dashboard-sampler", restarts, error = %message, "the dashboard's sampler failed; starting it again");
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(SAMPLE_INTERVAL).await;
            }
        }
    }
}

/// Samples `fleet` into `history` every [`SAMPLE_INTERVAL`] until `shutdown` turns true.
pub(crate) async fn run_sampler(
    fleet: Fleet,
    history: std::sync::Arc<History>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    // A slow sample (an outage's timeouts) delays the next one instead of bunching them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                crate::supervisor::fault::point("dashboard-sampler");
                history.push(sample(&fleet).await)
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// The samples as columns: one array per series, index `i` of each is the sample taken at
/// `at_ms[i]`.
pub(crate) fn columns(points: &[Point]) -> Value {
    let col = |f: &dyn Fn(&Point) -> Value| points.iter().map(f).collect::<Vec<Value>>();
    let mut queue = serde_json::Map::new();
    for (i, status) in QUEUE_STATUSES.iter().enumerate() {
        queue.insert(
            (*status).to_owned(),
            Value::from(col(&|p| p.queue.map_or(Value::Null, |q| json!(q[i])))),
        );
    }
    let mut actors: Vec<&String> = points.iter().flat_map(|p| p.restarts.keys()).collect();
    actors.sort();
    actors.dedup();
    let restarts: serde_json::Map<String, Value> = actors
        .into_iter()
        .map(|name| {
            let series = col(&|p| p.restarts.get(name).map_or(Value::Null, |r| json!(r)));
            (name.clone(), Value::from(series))
        })
        .collect();
    json!({
        "at_ms": col(&|p| json!(p.at_ms)),
        "storage_mode": col(&|p| json!(p.mode)),
        "outbox_depth": col(&|p| json!(p.outbox)),
        "tasks_processed_per_sec": col(&|p| json!(p.processed_per_sec)),
        "tasks_failed_per_sec": col(&|p| json!(p.failed_per_sec)),
        "queue_depth": queue,
        "lock_waiters": col(&|p| json!(p.lock_waiters)),
        "locks_held": col(&|p| json!(p.locks_held)),
        "actor_restarts": restarts,
    })
}

/// `GET /api/dashboard/history[?since_ms=N]`: the samples taken after `since_ms` (all kept
/// when absent), as columns.
pub(crate) async fn serve(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut since_ms = 0;
    let pairs = ApiError::query_pairs(&req)?;
    for (key, value) in pairs {
        match key.as_str() {
            "since_ms" => {
                since_ms = value.parse().map_err(|_| {
                    ApiError::bad_field(
                        "since_ms",
                        format!("expected unix milliseconds, got {value:?}"),
                    )
                })?
            }
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter: expected since_ms",
                ))
            }
        }
    }
    let points = state.history.since(since_ms);
    let mut body = json!({
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "capacity": CAPACITY,
        "points": points.len(),
        "sampler_restarts": state.history.restarts.load(std::sync::atomic::Ordering::Relaxed),
    });
    if let (Some(object), Value::Object(series)) = (body.as_object_mut(), columns(&points)) {
        object.extend(series);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: u64, completed: u64, failed: u64) -> Point {
        Point {
            at_ms,
            mode: Some(Mode::Redis),
            outbox: 0,
            queue: Some([1, 2, 3, 4]),
            processed_per_sec: 0.0,
            failed_per_sec: 0.0,
            lock_waiters: Some(0),
            locks_held: None,
            restarts: BTreeMap::from([("locks".to_owned(), 1)]),
            totals: (completed, failed),
        }
    }

    #[test]
    fn rates_come_from_the_previous_sample_and_the_ring_is_bounded() {
        let history = History::default();
        history.push(point(1_000, 0, 0));
        history.push(point(3_000, 10, 4));
        let latest = history.latest().unwrap();
        assert_eq!(latest.processed_per_sec, 5.0);
        assert_eq!(latest.failed_per_sec, 2.0);
        for i in 0..(CAPACITY as u64 + 10) {
            history.push(point(4_000 + i * 1_000, 10, 4));
        }
        assert_eq!(history.len(), CAPACITY);
        assert_eq!(history.since(0).first().unwrap().at_ms, 4_000 + 10 * 1_000);
        let last = history.latest().unwrap().at_ms;
        assert!(history.since(last).is_empty());
        assert_eq!(history.since(last - 1).len(), 1);
    }

    #[test]
    fn columns_line_up_with_the_samples() {
        let mut missing = point(2_000, 0, 0);
        missing.queue = None;
        missing.restarts.insert("scheduler".into(), 2);
        let value = columns(&[point(1_000, 0, 0), missing]);
        assert_eq!(value["at_ms"], json!([1_000, 2_000]));
        assert_eq!(value["queue_depth"]["dead"], json!([4, null]));
        assert_eq!(value["storage_mode"], json!(["redis", "redis"]));
        assert_eq!(value["actor_restarts"]["scheduler"], json!([null, 2]));
        assert_eq!(value["actor_restarts"]["locks"], json!([1, 1]));
    }
}
