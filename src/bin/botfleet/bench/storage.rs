//! `botfleet bench storage --redis URL`: throughput and latency of the storage handle, beside
//! `redis-benchmark` on the same server in the same run, and a kill -9 fail-over scenario on a
//! private server. `set-many` (100 keys with a TTL per call) and `compare-and-set` (each task
//! changes its own record from the value it last wrote) run as the server's native commands where it
//! has them; `--scripts` keeps the scripts, to compare the two.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::broadcast;

use super::{redis_benchmark, LastKnownMode, Latencies, PrivateRedis};
use botfleet::settings::StorageSettings;
use botfleet::storage::{KeySchema, Mode, Storage, StorageError, StorageEvent};

/// Options of the storage benchmark (`botfleet bench storage`).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageBench {
    /// Server for the throughput scenarios (keys under `bench:` are overwritten).
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: String,
    /// Operations per throughput scenario.
    #[arg(long, default_value_t = 100_000)]
    pub ops: usize,
    /// Outbox writes to replay in the fail-over scenario.
    #[arg(long, default_value_t = 10_000)]
    pub outbox_writes: usize,
    /// The last-known copy: `off`, `on` (as shipped: the benchmark's keys are not among the
    /// services' keys), or `all` (every `bench:` key remembered, the worst case).
    #[arg(long, value_enum, default_value_t = LastKnownMode::On)]
    pub last_known: LastKnownMode,
    /// Run only this scenario (repeatable; default: all of them).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Run the scripts even where the server has native commands for them
    /// (`storage.redis.native_commands = false`).
    #[arg(long)]
    pub scripts: bool,
}

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 8] = [
    "redis-benchmark",
    "set",
    "get",
    "zadd",
    "zpopmin",
    "set-many",
    "compare-and-set",
    "failover-kill9",
];

/// Keys per `set-many` call.
const SET_MANY_KEYS: usize = 100;

/// `--scenario` checked before anything runs: each must be one of [`SCENARIOS`].
pub fn check_scenarios(scenarios: &[String]) -> Result<(), crate::exit::BadArgument> {
    match scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        Some(unknown) => Err(crate::exit::BadArgument::new(
            "--scenario",
            format!(
                "unknown scenario {unknown:?}; expected one of: {}",
                SCENARIOS.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// Runs every scenario, printing one JSON line each through `out`.
pub async fn run(
    bench: &StorageBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), StorageError> {
    let wanted =
        |name: &str| bench.scenarios.is_empty() || bench.scenarios.iter().any(|s| s == name);
    let mut settings = StorageSettings::default();
    settings.redis.url = bench.redis_url.clone();
    settings.redis.native_commands = !bench.scripts;
    bench.last_known.apply(&mut settings, "bench:*");
    let storage = Storage::open(&settings, &KeySchema::default()).await?;
    if storage.mode() != Mode::Redis {
        return Err(StorageError::Config {
            key: "--redis",
            message: format!("{} does not answer", bench.redis_url),
        });
    }
    // Each line of the handle's names the server and the form the scripts ran in.
    let server = super::server_line(&storage);
    let baseline = if wanted("redis-benchmark") {
        redis_benchmark(
            &bench.redis_url,
            "set,get,zadd,zpopmin",
            50,
            bench.ops.max(10_000),
        )
    } else {
        Vec::new()
    };
    for (test, rps) in &baseline {
        out(
            json!({"bench": "storage", "scenario": "redis-benchmark", "test": test,
                   "concurrency": 50, "ops_per_s": rps.round()}),
        );
    }
    for op in [
        "set",
        "get",
        "zadd",
        "zpopmin",
        "set-many",
        "compare-and-set",
    ] {
        if !wanted(op) {
            continue;
        }
        for concurrency in [1usize, 50] {
            let ops = if concurrency == 1 {
                bench.ops / 4
            } else {
                bench.ops
            };
            let (elapsed, lat) = throughput(&storage, op, concurrency, ops.max(1)).await?;
            let ops_per_s = ops as f64 / elapsed.as_secs_f64();
            let mut line = json!({"bench": "storage", "scenario": op, "concurrency": concurrency,
                "server": server,
                "last_known": bench.last_known.name(),
                "ops": ops, "ops_per_s": ops_per_s.round(), "p50_us": lat.percentile_us(0.5),
                "p99_us": lat.percentile_us(0.99)});
            if op == "set-many" {
                // An op is a call: keys written per second are ops_per_s x keys_per_call.
                line["keys_per_call"] = json!(SET_MANY_KEYS);
            }
            if concurrency == 50 {
                if let Some((_, rps)) = baseline.iter().find(|(t, _)| t.eq_ignore_ascii_case(op)) {
                    line["redis_benchmark_ops_per_s"] = json!(rps.round());
                    line["vs_redis_benchmark"] = json!(((ops_per_s / rps) * 100.0).round() / 100.0);
                }
            }
            out(line);
        }
    }
    let _ = storage.del(&["bench:z"]).await;
    storage.close().await;
    if wanted("failover-kill9") {
        failover(bench.outbox_writes, &mut out).await?;
    }
    Ok(())
}

async fn throughput(
    storage: &Storage,
    op: &str,
    concurrency: usize,
    ops: usize,
) -> Result<(Duration, Latencies), StorageError> {
    if op == "zpopmin" {
        // Fill the set the pops will drain.
        let members: Vec<String> = (0..ops).map(|i| format!("m{i}")).collect();
        for chunk in members.chunks(1_000) {
            let scored: Vec<(f64, &str)> = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| (i as f64, m.as_str()))
                .collect();
            storage.zadd("bench:z", &scored).await?;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let run = rand::random::<u32>();
    for task in 0..concurrency {
        let (storage, next, op) = (storage.clone(), next.clone(), op.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            // compare-and-set: each task's own record, and the value it last wrote there.
            let record = format!("bench:cas:{run:08x}:{task}");
            let mut last: Option<String> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ops {
                    break;
                }
                let t = Instant::now();
                let key = format!("bench:k{}", i % 1_000);
                match op.as_str() {
                    "set" => storage.set(&key, "x".repeat(100), None).await.map(|_| ()),
                    "get" => storage.get(&key).await.map(|_| ()),
                    "zadd" => storage
                        .zadd("bench:za", &[(i as f64, &key)])
                        .await
                        .map(|_| ()),
                    "set-many" => {
                        let pairs = (0..SET_MANY_KEYS)
                            .map(|j| {
                                (
                                    format!("bench:m{}", (i * SET_MANY_KEYS + j) % 10_000),
                                    "x".repeat(100),
                                )
                            })
                            .collect();
                        storage.set_many(pairs, Some(Duration::from_secs(60))).await
                    }
                    "compare-and-set" => {
                        // A record changed by compare-and-set on what its writer last wrote
                        // (one round trip; every call writes).
                        let value = i.to_string();
                        let written = storage
                            .compare_and_set(&record, last.as_deref(), &value, None)
                            .await?;
                        if !written {
                            return Err(StorageError::Command(format!(
                                "{record}: compare-and-set refused"
                            )));
                        }
                        last = Some(value);
                        Ok(())
                    }
                    _ => storage.zpopmin("bench:z", 1).await.map(|_| ()),
                }?;
                lat.record(t.elapsed());
            }
            Ok::<_, StorageError>(lat)
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        // A task only ends by returning; a panic in it is a bug worth surfacing.
        let lat = t.await.expect("benchmark task panicked")?;
        all.merge(&lat);
    }
    Ok((started.elapsed(), all))
}

/// kill -9 of a private server under a 50-task write load; restart; replay.
async fn failover(
    outbox_writes: usize,
    out: &mut impl FnMut(serde_json::Value),
) -> Result<(), StorageError> {
    let mut server =
        PrivateRedis::start().map_err(|e| StorageError::Runtime(format!("redis-server: {e}")))?;
    let mut settings = StorageSettings::default();
    settings.redis.url = server.url();
    settings.outbox.max_entries = outbox_writes * 4;
    let storage = Storage::open(&settings, &KeySchema::default()).await?;
    // Writes allowed: unlimited until just before the kill; none while the load drains (so
    // that no write is in flight when the server dies, and none is half-applied and counted
    // twice); then exactly `outbox_writes`, which the outbox holds and the scenario replays.
    let budget = Arc::new(AtomicI64::new(i64::MAX));
    let in_flight = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..50 {
        let (storage, stop, errors, acked, budget, in_flight) = (
            storage.clone(),
            stop.clone(),
            errors.clone(),
            acked.clone(),
            budget.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // The write is counted in flight before its permit is taken, so that a zero
                // budget and no write in flight mean no write can still start.
                in_flight.fetch_add(1, Ordering::AcqRel);
                if budget.fetch_sub(1, Ordering::AcqRel) <= 0 {
                    budget.fetch_add(1, Ordering::AcqRel);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let key = format!("fo:{t}:{i}");
                let started = Instant::now();
                match storage.set(&key, i.to_string(), None).await {
                    Ok(()) => {
                        written.push(key);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                in_flight.fetch_sub(1, Ordering::AcqRel);
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (written, slowest)
        }));
    }
    wait_for(
        || acked.load(Ordering::Relaxed) >= 5_000,
        Duration::from_secs(30),
    )
    .await;
    budget.store(0, Ordering::Release);
    wait_for(
        || in_flight.load(Ordering::Acquire) == 0,
        Duration::from_secs(30),
    )
    .await;
    server.kill9();
    let killed = Instant::now();
    // The writers, idle, start at once: the first writes meet the dead server.
    budget.store(outbox_writes as i64, Ordering::Release);
    wait_for(|| storage.mode() == Mode::Degraded, Duration::from_secs(5)).await;
    let degraded_after = killed.elapsed();
    wait_for(
        || budget.load(Ordering::Acquire) <= 0 && in_flight.load(Ordering::Acquire) == 0,
        Duration::from_secs(60),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (w, s) = t.await.expect("load task panicked");
        written.extend(w);
        slowest = slowest.max(s);
    }
    let outbox = storage.stats().outbox_len;
    let mut events = storage.events();
    server
        .restart()
        .map_err(|e| StorageError::Runtime(format!("redis-server: {e}")))?;
    let restarted = Instant::now();
    wait_for(|| storage.mode() == Mode::Redis, Duration::from_secs(60)).await;
    let recovered = restarted.elapsed();
    // A reconnection can take more than one resync (the first replays the outbox, a later one
    // may find it empty): the replay's time is theirs together.
    let (mut resyncs, mut resync_ms, mut replayed) = (0u64, 0u64, 0u64);
    loop {
        match events.try_recv() {
            Ok(StorageEvent::Resynced { entries, millis }) => {
                resyncs += 1;
                resync_ms += millis;
                replayed += entries;
            }
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    let mut lost = 0u64;
    for key in &written {
        if storage.get(key).await?.is_none() {
            lost += 1;
        }
    }
    out(json!({"bench": "storage", "scenario": "failover-kill9",
        "switch_ms": slowest.as_millis().max(degraded_after.as_millis()) as u64,
        "degraded_after_ms": degraded_after.as_millis() as u64,
        "slowest_call_ms": slowest.as_millis() as u64,
        "caller_errors": errors.load(Ordering::Relaxed), "lost_writes": lost,
        "acked_writes": written.len(), "outbox_entries": outbox, "replayed_entries": replayed,
        "resyncs": resyncs, "resync_ms": resync_ms,
        "restart_to_redis_mode_ms": recovered.as_millis() as u64}));
    storage.close().await;
    Ok(())
}

async fn wait_for(mut cond: impl FnMut() -> bool, limit: Duration) {
    let until = Instant::now() + limit;
    while !cond() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
