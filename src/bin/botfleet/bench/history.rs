//! `botfleet bench history`: how fast the archive writes, and what it costs the task path.
//!
//! Scenarios, one JSON line each:
//! - `archive-sqlite`, `archive-postgres`: N event records handed to the sink as fast as
//!   possible, timed until the writer has committed the last one (`records_per_s`). SQLite in
//!   a temporary file; PostgreSQL in a throwaway database created on `--postgres` (its admin
//!   URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`) and dropped after; skipped
//!   without it.
//! - `task-path`: T tasks run one after another (enqueue, then wait for the handler) with the
//!   archive off, then on (SQLite), on the same private (or given) Redis, alternating in
//!   rounds so that drift hits both alike; p50/p99 round trip of each and the difference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tokio::sync::mpsc;

use super::Latencies;
use botfleet::actors::history::{EventRecord, History, HistoryError, Record};
use botfleet::actors::scheduler::{NewTask, Scheduler, SchedulerError};
use botfleet::settings::{
    FallbackKind, HistorySettings, KeySettings, SchedulerSettings, StorageSettings,
};
use botfleet::storage::{KeySchema, Mode, Storage, StorageError};

/// Options of the history benchmark (`botfleet bench history`).
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryBench {
    /// Redis for the task-path scenario; without it a private redis-server is started.
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: Option<String>,
    /// PostgreSQL admin URL (e.g. postgres://postgres@127.0.0.1:5432/postgres): a throwaway
    /// database is created there and dropped after. Without it the PostgreSQL scenario is
    /// skipped.
    #[arg(long = "postgres", value_name = "URL")]
    pub postgres_url: Option<String>,
    /// Records per archive scenario.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Task round trips timed with the archive off, and as many with it on.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryBenchError {
    /// The archive failed.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The storage could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A scheduler call failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The throwaway PostgreSQL database could not be made.
    #[error("postgres: {0}")]
    Postgres(String),
    /// Local I/O (temporary directory, private redis-server).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something did not finish in time.
    #[error("{0} did not finish within {1} s")]
    Stalled(&'static str, u64),
}

const PATIENCE: Duration = Duration::from_secs(300);

/// Runs the scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &HistoryBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), HistoryBenchError> {
    let dir = std::env::temp_dir().join(format!("botfleet-bench-history-{}", std::process::id()));
    let result = scenarios(bench, &dir, &mut out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn scenarios(
    bench: &HistoryBench,
    dir: &std::path::Path,
    out: &mut impl FnMut(serde_json::Value),
) -> Result<(), HistoryBenchError> {
    let sqlite = settings(dir.join("archive"), String::new());
    out(archive(&sqlite, "archive-sqlite", bench.records).await?);
    if let Some(admin) = &bench.postgres_url {
        let name = format!("botfleet_bench_{}", std::process::id());
        let url = scratch_database(admin, &name).await?;
        let postgres = settings(dir.join("pg"), url);
        let result = archive(&postgres, "archive-postgres", bench.records).await;
        drop_database(admin, &name).await?;
        out(result?);
    }
    out(task_path(bench, dir).await?);
    Ok(())
}

fn settings(dir: std::path::PathBuf, url: String) -> HistorySettings {
    HistorySettings {
        enabled: true,
        url,
        dir: dir.to_string_lossy().into_owned(),
        queue_capacity: 1_000_000,
        ..HistorySettings::default()
    }
}

/// N events through the sink, timed until the last is committed.
async fn archive(
    settings: &HistorySettings,
    scenario: &'static str,
    n: usize,
) -> Result<serde_json::Value, HistoryBenchError> {
    let history = History::open(settings, FallbackKind::Memory)?;
    // Schema first, so that the figure is the writer's alone.
    history.events(&Default::default()).await?;
    let sink = history.sink();
    let t0 = Instant::now();
    for i in 0..n {
        sink.record(Record::Event(EventRecord {
            id: format!("bench-{i}"),
            session_id: "bench".into(),
            event_type: "job_found".into(),
            data: r#"{"job":"bench","pay":42}"#.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            at_ms: i as i64,
        }));
    }
    let queued = t0.elapsed();
    if !history.flush(PATIENCE).await {
        return Err(HistoryBenchError::Stalled(scenario, PATIENCE.as_secs()));
    }
    let elapsed = t0.elapsed();
    let stats = history.stats();
    history.close(Duration::from_secs(10)).await;
    Ok(json!({
        "bench": "history", "scenario": scenario, "records": n,
        "batch_size": settings.batch_size,
        "records_per_s": (n as f64 / elapsed.as_secs_f64()).round(),
        "enqueue_ns_per_record": (queued.as_nanos() as f64 / n.max(1) as f64).round(),
        "transactions": stats.batches, "dropped": stats.dropped,
    }))
}

/// Sequential task round trips with the archive off and on.
async fn task_path(
    bench: &HistoryBench,
    dir: &std::path::Path,
) -> Result<serde_json::Value, HistoryBenchError> {
    let (url, _private) = super::given_or_private(bench.redis_url.as_deref())?;
    let mut st = StorageSettings::default();
    st.redis.url = url.clone();
    st.redis.timeout_ms = 2_000;
    let keys = KeySchema::new(&KeySettings {
        prefix: format!("bench-history-{}", std::process::id()),
        ..KeySettings::default()
    });
    let storage = Storage::open(&st, &keys).await?;
    if storage.mode() != Mode::Redis {
        storage.close().await;
        return Err(StorageError::Config {
            key: "--redis",
            message: format!("{url} does not answer"),
        }
        .into());
    }
    let history = History::open(
        &settings(dir.join("task-path"), String::new()),
        FallbackKind::Memory,
    )?;
    history.events(&Default::default()).await?;
    let sched = SchedulerSettings {
        completed_ttl_secs: 0,
        ..SchedulerSettings::default()
    };
    let off = Scheduler::new(storage.clone(), sched.clone(), "bench-off");
    let on = Scheduler::new(storage.clone(), sched, "bench-on");
    on.archive_to(history.sink());
    let mut lat = [Latencies::default(), Latencies::default()];
    let rounds = 10;
    let per_round = (bench.tasks / rounds).max(1);
    let runners = [
        Runner::start(&off, "bench-off")?,
        Runner::start(&on, "bench-on")?,
    ];
    // Warm-up: connections, scripts loaded, the writer's first transaction.
    for (i, r) in runners.iter().enumerate() {
        let mut warm = Latencies::default();
        r.round_trips(if i == 0 { &off } else { &on }, 50, &mut warm)
            .await?;
    }
    for _ in 0..rounds {
        for (i, r) in runners.iter().enumerate() {
            r.round_trips(if i == 0 { &off } else { &on }, per_round, &mut lat[i])
                .await?;
        }
    }
    off.stop(Duration::from_secs(5)).await;
    on.stop(Duration::from_secs(5)).await;
    let archived = history.flush(PATIENCE).await;
    let written = history.stats().written;
    history.close(Duration::from_secs(10)).await;
    storage.close().await;
    let us = |l: &Latencies, q: f64| l.percentile_us(q) as i64;
    Ok(json!({
        "bench": "history", "scenario": "task-path", "tasks": per_round * rounds,
        "off_p50_us": us(&lat[0], 0.5), "off_p99_us": us(&lat[0], 0.99),
        "on_p50_us": us(&lat[1], 0.5), "on_p99_us": us(&lat[1], 0.99),
        "added_p50_us": us(&lat[1], 0.5) - us(&lat[0], 0.5),
        "added_p99_us": us(&lat[1], 0.99) - us(&lat[0], 0.99),
        "archived_records": written, "archive_flushed": archived,
    }))
}

/// A handler that reports each run, for one scheduler.
struct Runner {
    done: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task_type: &'static str,
}

impl Runner {
    fn start(scheduler: &Scheduler, task_type: &'static str) -> Result<Runner, SchedulerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = Arc::new(tx);
        scheduler.register_handler(task_type, 1, move |_| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                Ok(())
            }
        })?;
        Ok(Runner {
            done: tokio::sync::Mutex::new(rx),
            task_type,
        })
    }

    async fn round_trips(
        &self,
        scheduler: &Scheduler,
        n: usize,
        lat: &mut Latencies,
    ) -> Result<(), HistoryBenchError> {
        let mut done = self.done.lock().await;
        for i in 0..n {
            let t0 = Instant::now();
            scheduler
                .enqueue(NewTask::new(self.task_type, &json!({ "i": i })))
                .await?;
            scheduler.wake();
            match tokio::time::timeout(Duration::from_secs(30), done.recv()).await {
                Ok(Some(())) => lat.record(t0.elapsed()),
                _ => return Err(HistoryBenchError::Stalled("task round trip", 30)),
            }
        }
        Ok(())
    }
}

/// Creates the database `name` on the server of `admin_url`; answers its URL.
pub async fn scratch_database(admin_url: &str, name: &str) -> Result<String, HistoryBenchError> {
    let pg = |e: sqlx::Error| HistoryBenchError::Postgres(e.to_string());
    let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(pg)?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .map_err(pg)?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(pg)?;
    conn.close().await.map_err(pg)?;
    let mut url =
        url::Url::parse(admin_url).map_err(|e| HistoryBenchError::Postgres(e.to_string()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops the database `name` (and its sessions) on the server of `admin_url`.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), HistoryBenchError> {
    let pg = |e: sqlx::Error| HistoryBenchError::Postgres(e.to_string());
    let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(pg)?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(pg)?;
    conn.close().await.map_err(pg)?;
    Ok(())
}
