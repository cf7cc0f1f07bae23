//! `botfleet bench cache [--redis URL]`: the cache service's near-cache hit latency, its
//! storage (Redis) hit latency beside a bare storage `GET` of the same key (the baseline),
//! and invalidation propagation: one cache writes a key, the time until a second cache (its
//! own storage handle and Redis connections) has dropped its near copy. One JSON line each.
//! Without `--redis` a private redis-server is started.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Latencies, PrivateRedis};
use crate::actors::cache::{Cache, CacheError};
use crate::settings::{CacheSettings, StorageSettings};
use crate::storage::{KeySchema, Mode, Storage, StorageError};

/// TTL of the benchmark's keys.
const TTL: Duration = Duration::from_secs(300);
/// Reads timed together in the near-hit scenario (a single read is below the clock's grain).
const BATCH: usize = 100;

/// Options of the cache benchmark.
#[derive(Debug, Clone)]
pub struct CacheBench {
    /// Server to use (keys under `bench-cache:` are overwritten); a private one when `None`.
    pub redis_url: Option<String>,
    /// Reads per hit scenario.
    pub reads: usize,
    /// Invalidations measured.
    pub invalidations: usize,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheBenchError {
    /// The storage could not be opened, or Redis does not answer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A cache call failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The private redis-server could not start.
    #[error("private redis-server: {0}")]
    Redis(String),
    /// An invalidation did not arrive within a second.
    #[error("invalidation of {0} did not arrive within 1 s")]
    Lost(String),
}

async fn open(url: &str) -> Result<Storage, CacheBenchError> {
    let mut settings = StorageSettings::default();
    settings.redis.url = url.to_string();
    settings.redis.timeout_ms = 2_000;
    let storage = Storage::open(&settings, &KeySchema::default()).await?;
    if storage.mode() != Mode::Redis {
        return Err(StorageError::Config {
            key: "--redis",
            message: format!("{url} does not answer"),
        }
        .into());
    }
    Ok(storage)
}

/// Runs the scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &CacheBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), CacheBenchError> {
    let private = match &bench.redis_url {
        Some(_) => None,
        None => Some(PrivateRedis::start().map_err(|e| CacheBenchError::Redis(e.to_string()))?),
    };
    let url = match (&bench.redis_url, &private) {
        (Some(url), _) => url.clone(),
        (None, Some(p)) => p.url(),
        (None, None) => unreachable!("a private server is started when no url is given"),
    };
    let (storage_a, storage_b) = (open(&url).await?, open(&url).await?);
    let settings = CacheSettings {
        near_ttl_ms: 600_000,
        ..CacheSettings::default()
    };
    let a = Cache::start(storage_a.clone(), settings.clone()).await;
    let b = Cache::start(storage_b.clone(), settings).await;
    let key = "bench-cache:payload";
    let value = "x".repeat(200);
    a.set(key, &value, TTL).await?;
    let reads = bench.reads.max(BATCH);

    // Near hits: batches of BATCH reads, per-read latency in ns.
    a.get(key, TTL).await?;
    let mut batches = Vec::with_capacity(reads / BATCH);
    let start = Instant::now();
    for _ in 0..reads / BATCH {
        let t = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(a.get(key, TTL).await?);
        }
        batches.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let mean = start.elapsed().as_nanos() as f64 / ((reads / BATCH) * BATCH) as f64;
    batches.sort_by(f64::total_cmp);
    let pct = |q: f64| batches[((batches.len() - 1) as f64 * q) as usize];
    out(json!({
        "peer": "botfleet", "bench": "cache", "scenario": "near-hit", "reads": reads,
        "mean_ns": mean.round(), "p50_ns": pct(0.50).round(), "p99_ns": pct(0.99).round(),
        "goal_ns": 1000,
    }));

    // Storage hits (near copy dropped before each read) beside a bare storage GET.
    let storage_reads = (reads / 20).max(1_000);
    let mut via_cache = Latencies::default();
    let mut bare = Latencies::default();
    for _ in 0..storage_reads {
        a.clear_near();
        let t = Instant::now();
        std::hint::black_box(a.get(key, TTL).await?);
        via_cache.record(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(storage_a.get(key).await?);
        bare.record(t.elapsed());
    }
    out(json!({
        "peer": "botfleet", "bench": "cache", "scenario": "storage-hit", "reads": storage_reads,
        "p50_us": via_cache.percentile_us(0.50), "p99_us": via_cache.percentile_us(0.99),
        "baseline": "storage.get", "baseline_p50_us": bare.percentile_us(0.50),
        "baseline_p99_us": bare.percentile_us(0.99),
    }));

    // Propagation: a writes, b's near copy disappears.
    let mut propagation = Latencies::default();
    for i in 0..bench.invalidations.max(1) {
        b.get(key, TTL).await?;
        debug_assert!(b.peek(key).is_some());
        let t = Instant::now();
        a.set(key, &format!("{value}{i}"), TTL).await?;
        while b.peek(key).is_some() {
            if t.elapsed() > Duration::from_secs(1) {
                return Err(CacheBenchError::Lost(key.to_string()));
            }
            tokio::task::yield_now().await;
        }
        propagation.record(t.elapsed());
    }
    out(json!({
        "peer": "botfleet", "bench": "cache", "scenario": "invalidation-propagation",
        "invalidations": bench.invalidations.max(1),
        "p50_us": propagation.percentile_us(0.50), "p99_us": propagation.percentile_us(0.99),
        "max_us": propagation.max_us(), "goal_p99_us": 2000,
        "note": "two caches with their own storage handles and Redis connections, timed from the write call",
    }));
    storage_a.del(&[key]).await?;
    drop((a, b));
    storage_a.close().await;
    storage_b.close().await;
    Ok(())
}
