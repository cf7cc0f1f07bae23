//! `botfleet bench read [--redis URL]`: the shared-data reader. One JSON line per scenario:
//! `read()` on a fresh snapshot (ns, p50/p99) beside a plain Redis `GET` of the same key
//! through the storage handle (µs, p50/p99) and their ratio; then the propagation time from
//! the start of a write, by a writer on a connection of its own, to 100 readers all holding
//! the new snapshot through the change notice (ms, p50/p99). Without
//! `--redis` it starts a private redis-server (needs `redis-server` on PATH).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use botfleet::actors::locks::Locks;
use botfleet::actors::shared_data::{SharedData, SharedDataError};
use botfleet::settings::{LockSettings, SharedDataSettings};
use botfleet::storage::StorageError;

/// Options of the read benchmark (`botfleet bench read`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReadBench {
    /// Server to use (keys under `bench:shared-data` are overwritten); without it a private
    /// redis-server is started.
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Reads (and GETs) timed.
    #[arg(long, default_value_t = 100_000)]
    pub reads: usize,
    /// Writes whose propagation is timed.
    #[arg(long, default_value_t = 500)]
    pub rounds: usize,
    /// Readers following the notices (each must hold every new snapshot).
    #[arg(long, default_value_t = 100)]
    pub readers: usize,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadBenchError {
    /// The storage could not be opened, or Redis does not answer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A shared-data call failed.
    #[error(transparent)]
    SharedData(#[from] SharedDataError),
    /// The private redis-server could not be started.
    #[error("private redis-server: {0}")]
    Redis(String),
    /// A write did not reach every reader within 5 s.
    #[error("propagation to {0} readers did not complete within 5 s")]
    Propagation(usize),
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant digits: constant bounds, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs the scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &ReadBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), ReadBenchError> {
    let (url, private) = super::given_or_private(bench.redis_url.as_deref())
        .map_err(|e| ReadBenchError::Redis(e.to_string()))?;
    let storage = super::open_storage(&url).await?;
    let shared_settings = SharedDataSettings {
        shared_key: "bench:shared-data".into(),
        legacy_key: "bench:shared-data:legacy".into(),
        channel: "bench:shared-data:changed".into(),
        // Fresh for the whole run.
        fresh_ms: 3_600_000,
        readers: Vec::new(),
        ..SharedDataSettings::default()
    };
    // The writer has a storage handle (a connection) of its own, as a fetcher in another
    // process would: a notice reaches the readers through Redis, not through this process.
    let writer_storage = super::open_storage(&url).await?;
    let locks = Locks::new(storage.clone(), LockSettings::default());
    let data = SharedData::new(storage.clone(), shared_settings.clone(), locks, "bench")?;
    let writer_locks = Locks::new(writer_storage.clone(), LockSettings::default());
    let writer = SharedData::new(
        writer_storage.clone(),
        shared_settings,
        writer_locks,
        "bench-writer",
    )?;
    let round = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = round.clone();
    writer.register_source(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            Ok::<_, String>(json!({"data": {"records": [
                {"issue": n, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
            ]}}))
        }
    });
    let mut readers = Vec::with_capacity(bench.readers.max(1));
    for i in 0..bench.readers.max(1) {
        readers.push(data.add_reader(&format!("R{i}")).await?);
    }
    writer.fetch_and_write(-1).await?;
    let reader = readers[0].clone();
    // Warm-up: the first read may fall back to Redis.
    for _ in 0..1_000 {
        reader.read().await?;
    }

    let mut reads = histogram();
    for _ in 0..bench.reads {
        let started = Instant::now();
        let reading = reader.read().await?;
        let ns = started.elapsed().as_nanos() as u64;
        std::hint::black_box(reading);
        let _ = reads.record(ns.max(1));
    }
    let mut gets = histogram();
    for _ in 0..bench.reads {
        let started = Instant::now();
        let value = storage.get("bench:shared-data").await?;
        let ns = started.elapsed().as_nanos() as u64;
        std::hint::black_box(value);
        let _ = gets.record(ns.max(1));
    }
    let (read_p50, get_p50) = (reads.value_at_quantile(0.5), gets.value_at_quantile(0.5));
    out(json!({
        "scenario": "read_fresh_vs_get",
        "reads": bench.reads,
        "read_ns_p50": read_p50,
        "read_ns_p99": reads.value_at_quantile(0.99),
        "get_us_p50": get_p50 as f64 / 1_000.0,
        "get_us_p99": gets.value_at_quantile(0.99) as f64 / 1_000.0,
        "speedup_p50": get_p50 as f64 / read_p50.max(1) as f64,
        "goal": "read() at least 100x faster than GET",
    }));

    let mut propagation = histogram();
    for _ in 0..bench.rounds {
        let started = Instant::now();
        let Some(snapshot) = writer.fetch_and_write(-1).await? else {
            continue;
        };
        // Each reader is awaited in turn: the last one to wake sets the time.
        let all = async {
            for reader in &readers {
                reader
                    .newer_than(snapshot.timestamp.saturating_sub(1))
                    .await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            return Err(ReadBenchError::Propagation(readers.len()));
        }
        let _ = propagation.record((started.elapsed().as_nanos() as u64).max(1));
        // Timestamps are milliseconds: the next write must be newer.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out(json!({
        "scenario": "propagation",
        "readers": readers.len(),
        "rounds": bench.rounds,
        "ms_p50": propagation.value_at_quantile(0.5) as f64 / 1e6,
        "ms_p99": propagation.value_at_quantile(0.99) as f64 / 1e6,
        "ms_max": propagation.max() as f64 / 1e6,
        "goal": "p99 under 2 ms",
    }));
    writer_storage.close().await;
    storage.close().await;
    drop(private);
    Ok(())
}
