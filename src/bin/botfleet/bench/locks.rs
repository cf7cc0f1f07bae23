//! `botfleet bench locks --redis URL`: the peers' lock workload (`../shared/peers`, rslock):
//! acquire then release, TTL 10 s, `N` pairs — one task on a new key each time, 50 tasks on
//! keys of their own, 8 tasks contending for one key (N/10 pairs). One JSON line per scenario
//! with `pairs_per_s`, and the wait for the lock (p50/p99, µs). A last line,
//! `one-task-bare-scripts`, is the floor of the one-task scenario: the same two scripts per
//! pair called back to back through the storage, without the lock manager;
//! `one-task-bare-extensions` the watchdog's extension called back to back on one held lock.
//! `one-task-bare-socket` sends the same two scripts per pair over a bare socket, with no
//! Redis client library, then two plain commands per pair the same way: beside `one-task`
//! and `round-trip-floor`, what the client stack costs and what the scripts cost.
//! `pipelined-server-cost` sends pairs with 32 calls in flight from one task (botfleet's
//! scripts one and eight requests to a call, then rslock's commands), so that the server runs
//! them back to back: what a pair costs the server without the wake-ups a round trip at a
//! time adds, one line per form.
//! Each line of botfleet's names the server and the form each script ran in (`server`;
//! `--scripts` keeps the scripts where the server has native commands, to compare the two).
//! `50-tasks-unfenced-commands` is rslock's own commands per pair (a plain `SET NX PX`, then a
//! script that deletes the key if it still holds the token) sent by 50 tasks through
//! botfleet's storage, with no lock manager, fence or waiting mark: beside
//! `50-tasks-distinct-keys` in the same run, it says what the fenced, holder-checked pair
//! costs each side over rslock's, on the same client stack.
//! The last, `round-trip-floor`, is the server's: `redis-benchmark -c 1` `SET`s per second on
//! one connection, and half of that, the pairs per second of two awaited round trips that
//! any client can reach at most (left out when `redis-benchmark` is not installed).
//! The scenarios' lines carry the CPU time a pair cost this process and the server
//! (`client_cpu_us_per_pair`, `server_cpu_us_per_pair`): on a machine whose cores the two
//! share, `1 / server` bounds the pairs per second of any client of these scripts, and
//! `cores / (client + server)` this one's. `script_calls_per_pair` and
//! `server_script_us_per_pair` say how many script calls a pair took (batches carry several
//! requests) and how long Redis ran them. The peer scenarios' lines also carry the pairs per
//! second of each [`WINDOW`] of the run (`window_pairs_per_s`: p10, p50, p90), counted by a
//! thread of their own: a run whose round trips alternate between fast and slow (the process
//! and the server on one CPU, or waking each other across two) shows it there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use super::bare::BareReply;
use super::{CpuSample, Latencies};
use crate::exit::BadArgument;
use botfleet::actors::locks::{LockError, Locks};
use botfleet::settings::{LockSettings, MAX_LOCK_CONNECTIONS};
use botfleet::storage::{Keyspace, LocalError, Reply, Script, Storage, StorageError};

/// The lock TTL of the workload.
const TTL: Duration = Duration::from_secs(10);

/// Options of the lock benchmark (`botfleet bench locks`).
#[derive(Debug, Clone, clap::Args)]
pub struct LocksBench {
    /// Server to use (keys under `bench-lock:` are overwritten).
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: String,
    /// Pairs per uncontended scenario; the contended one runs a tenth of them.
    #[arg(long, default_value_t = 20_000)]
    pub pairs: usize,
    /// Run only this scenario (repeatable; default: all of them).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Run the lock scripts even where the server has native commands for some of them
    /// (`storage.redis.native_commands = false`), to compare the two forms.
    #[arg(long)]
    pub scripts: bool,
    /// The lock scripts' own connections (`storage.redis.lock_connections`); 0 sends them
    /// through the pool, to compare the two in one run.
    #[arg(long, value_name = "N", default_value_t = botfleet::settings::RedisSettings::default().lock_connections)]
    pub lock_connections: usize,
}

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 10] = [
    "one-task",
    "50-tasks-distinct-keys",
    "8-tasks-one-key",
    "one-task-release-on-drop",
    "50-tasks-unfenced-commands",
    "one-task-bare-scripts",
    "one-task-bare-extensions",
    "one-task-bare-socket",
    "pipelined-server-cost",
    "round-trip-floor",
];

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocksBenchError {
    /// The storage could not be opened, or Redis does not answer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A lock call failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A benchmark task panicked.
    #[error("benchmark task failed: {0}")]
    Task(String),
    /// The bare socket of `one-task-bare-socket` failed (it names the cause).
    #[error("bare socket: {0}")]
    Bare(String),
    /// A scenario name that is not one of [`SCENARIOS`].
    #[error("unknown scenario {0:?}; expected one of: {list}", list = SCENARIOS.join(", "))]
    UnknownScenario(String),
}

/// `--scenario` checked before anything runs: each must be one of [`SCENARIOS`].
pub fn check_scenarios(scenarios: &[String]) -> Result<(), BadArgument> {
    match scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        Some(unknown) => Err(BadArgument::new(
            "--scenario",
            LocksBenchError::UnknownScenario(unknown.clone()).to_string(),
        )),
        None => Ok(()),
    }
}

/// `--lock-connections` checked before anything runs: at most the setting's bound.
pub fn check_lock_connections(count: usize) -> Result<(), BadArgument> {
    if count > MAX_LOCK_CONNECTIONS {
        return Err(BadArgument::new(
            "--lock-connections",
            format!("expected at most {MAX_LOCK_CONNECTIONS}, got {count}"),
        ));
    }
    Ok(())
}

/// Runs the scenarios asked for (all by default), printing one JSON line each through `out`.
pub async fn run(
    bench: &LocksBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), LocksBenchError> {
    if let Some(unknown) = bench
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        return Err(LocksBenchError::UnknownScenario(unknown.clone()));
    }
    let wanted =
        |name: &str| bench.scenarios.is_empty() || bench.scenarios.iter().any(|s| s == name);
    let storage =
        super::open_storage_with(&bench.redis_url, !bench.scripts, bench.lock_connections).await?;
    // Each line of botfleet's names the server and the form the scripts ran in.
    let server = super::server_line(&storage);
    let lock_connections = bench.lock_connections;
    let mut out = |mut line: serde_json::Value| {
        if line["peer"] == "botfleet" {
            line["server"] = server.clone();
            line["lock_connections"] = lock_connections.into();
        }
        out(line)
    };
    let locks = Locks::new(storage.clone(), LockSettings::default());
    let n = bench.pairs.max(1);
    for (scenario, tasks, pairs, shared, on_drop) in [
        ("one-task", 1usize, n, false, false),
        ("50-tasks-distinct-keys", 50, n, false, false),
        ("8-tasks-one-key", 8, (n / 10).max(8), true, false),
        // Not a peer scenario: the guard is dropped (its release runs in the background,
        // overlapping the next acquisition); timed until every lock is gone from Redis.
        ("one-task-release-on-drop", 1, n, false, true),
    ] {
        if !wanted(scenario) {
            continue;
        }
        let before = CpuSample::take(&storage).await;
        let (elapsed, waits, done, windows) =
            scenario_run(&locks, &storage, tasks, pairs, shared, on_drop).await?;
        let after = CpuSample::take(&storage).await;
        let mut line = json!({
            "peer": "botfleet", "bench": "locks", "scenario": scenario, "tasks": tasks,
            "pairs": done, "pairs_per_s": (done as f64 / elapsed.as_secs_f64()).round(),
            "wait_p50_us": waits.percentile_us(0.50), "wait_p99_us": waits.percentile_us(0.99),
            "window_ms": WINDOW.as_millis() as u64,
            "window_pairs_per_s": window_rates(&windows, WINDOW),
        });
        before.report(&after, done, "pair", &mut line);
        out(line);
    }
    if wanted("50-tasks-unfenced-commands") {
        let unlock = loaded_unlock(&storage).await?;
        let before = CpuSample::take(&storage).await;
        let (elapsed, done) = unfenced_run(&storage, &unlock, 50, n).await?;
        let after = CpuSample::take(&storage).await;
        let mut line = json!({
            "peer": "botfleet", "bench": "locks", "scenario": "50-tasks-unfenced-commands",
            "tasks": 50, "pairs": done,
            "pairs_per_s": (done as f64 / elapsed.as_secs_f64()).round(),
        });
        before.report(&after, done, "pair", &mut line);
        out(line);
    }
    if wanted("one-task-bare-scripts") {
        bare_scripts(&storage, n, &mut out).await?;
    }
    if wanted("one-task-bare-extensions") {
        let bare = Locks::new(storage.clone(), LockSettings::default());
        let name = format!("bench-lock:{:08x}:extend", rand::random::<u32>());
        let start = Instant::now();
        bare.bare_extensions(&name, TTL, n).await?;
        let elapsed = start.elapsed();
        out(json!({
            "peer": "botfleet", "bench": "locks", "scenario": "one-task-bare-extensions",
            "tasks": 1, "extensions": n,
            "extensions_per_s": (n as f64 / elapsed.as_secs_f64()).round(),
        }));
    }
    if wanted("one-task-bare-socket") {
        bare_socket(&storage, &bench.redis_url, n, &mut out).await?;
    }
    if wanted("pipelined-server-cost") {
        let bare = Locks::new(storage.clone(), LockSettings::default());
        let unlock = loaded_unlock(&storage).await?;
        // The lock scripts known to the server before the clock starts too: otherwise the
        // first calls in flight each come back for the script's text.
        let warm = format!("bench-lock:{:08x}:pipelined-warm-up", rand::random::<u32>());
        bare.bare_pair(&warm, TTL).await?;
        for (form, batch) in [("fenced", 1), ("fenced", 8), ("rslock-commands", 1)] {
            let before = CpuSample::take(&storage).await;
            let (elapsed, done) = pipelined_run(&bare, &storage, &unlock, form, batch, n).await?;
            let after = CpuSample::take(&storage).await;
            let mut line = json!({
                "peer": "botfleet", "bench": "locks", "scenario": "pipelined-server-cost",
                "form": form, "batch": batch, "in_flight": PIPELINED_IN_FLIGHT, "pairs": done,
                "pairs_per_s": (done as f64 / elapsed.as_secs_f64()).round(),
            });
            before.report(&after, done, "pair", &mut line);
            out(line);
        }
    }
    storage.close().await;
    if wanted("round-trip-floor") {
        let url = bench.redis_url.clone();
        let sets = tokio::task::spawn_blocking(move || {
            super::redis_benchmark(&url, "set", 1, FLOOR_REQUESTS)
        })
        .await
        .map_err(|e| LocksBenchError::Task(e.to_string()))?;
        if let Some((_, per_s)) = sets.into_iter().find(|(name, _)| name == "SET") {
            out(json!({
                "peer": "redis-benchmark", "bench": "locks", "scenario": "round-trip-floor",
                "clients": 1, "set_per_s": per_s.round(), "pairs_per_s": (per_s / 2.0).round(),
            }));
        }
    }
    Ok(())
}

/// `SET`s `redis-benchmark` sends for the round-trip floor.
const FLOOR_REQUESTS: usize = 20_000;

/// The floor of `one-task`: the two scripts per pair, called bare ([`Locks::bare_pair`]).
async fn bare_scripts(
    storage: &Storage,
    n: usize,
    out: &mut impl FnMut(serde_json::Value),
) -> Result<(), LocksBenchError> {
    let run = format!("{:08x}", rand::random::<u32>());
    let bare = Locks::new(storage.clone(), LockSettings::default());
    let start = Instant::now();
    // On a worker of the runtime, like the scenarios' tasks.
    tokio::spawn(async move {
        for i in 0..n {
            bare.bare_pair(&format!("bench-lock:{run}:bare:{i}"), TTL)
                .await?;
        }
        Ok::<(), LockError>(())
    })
    .await
    .map_err(|e| LocksBenchError::Task(e.to_string()))??;
    let elapsed = start.elapsed();
    out(json!({
        "peer": "botfleet", "bench": "locks", "scenario": "one-task-bare-scripts", "tasks": 1,
        "pairs": n, "pairs_per_s": (n as f64 / elapsed.as_secs_f64()).round(),
    }));
    Ok(())
}

/// The longest a command of `one-task-bare-socket` may wait for its reply.
const BARE_PATIENCE: Duration = Duration::from_secs(10);

/// `one-task-bare-socket`: one task sends `n` pairs over a bare socket ([`bare`]), one
/// command at a time, in two forms: the lock manager's acquire and release scripts as
/// [`Locks::bare_pair_commands`] lays them out (`fenced-scripts`), and two plain commands,
/// `SET NX PX` then `DEL` (`plain-commands`). Beside `one-task` and `round-trip-floor`, the
/// first says what the Redis client stack costs and the second what the scripts cost. A line
/// with `skipped` for a URL the bare socket does not speak.
///
/// [`bare`]: super::bare
async fn bare_socket(
    storage: &Storage,
    url: &str,
    n: usize,
    out: &mut impl FnMut(serde_json::Value),
) -> Result<(), LocksBenchError> {
    if let Some(reason) = super::bare::unsupported(url) {
        out(json!({
            "peer": "botfleet", "bench": "locks", "scenario": "one-task-bare-socket",
            "skipped": reason,
        }));
        return Ok(());
    }
    let mut connection = super::bare::BareConnection::connect(url, BARE_PATIENCE)
        .await
        .map_err(LocksBenchError::Bare)?;
    for lua in Locks::bare_pair_scripts() {
        connection
            .call(&["SCRIPT", "LOAD", lua])
            .await
            .map_err(LocksBenchError::Bare)?;
    }
    let locks = Locks::new(storage.clone(), LockSettings::default());
    let run = format!("{:08x}", rand::random::<u32>());
    let ttl_ms = TTL.as_millis().to_string();
    for form in ["fenced-scripts", "plain-commands"] {
        let before = CpuSample::take(storage).await;
        let start = Instant::now();
        // On a worker of the runtime, like the scenarios' tasks; the connection comes back.
        let (back, done) = {
            let locks = locks.clone();
            let (run, ttl_ms) = (run.clone(), ttl_ms.clone());
            tokio::spawn(async move {
                for i in 0..n {
                    let name = format!("bench-lock:{run}:socket:{form}:{i}");
                    let [first, second] = if form == "fenced-scripts" {
                        locks.bare_pair_commands(&name, TTL)
                    } else {
                        let set = ["SET", &name, "1", "NX", "PX", &ttl_ms];
                        [
                            set.map(String::from).to_vec(),
                            vec!["DEL".into(), name.clone()],
                        ]
                    };
                    let granted = connection.call(&first).await?;
                    let released = connection.call(&second).await?;
                    let held = match &granted {
                        BareReply::Int(fence) => *fence > 0,
                        BareReply::Status(ok) => ok == "OK",
                        BareReply::Bulk(_) => false,
                    };
                    if !held || released != BareReply::Int(1) {
                        return Err(format!(
                            "{name} was not free or not released ({granted:?}, {released:?})"
                        ));
                    }
                }
                Ok((connection, n))
            })
            .await
            .map_err(|e| LocksBenchError::Task(e.to_string()))?
            .map_err(LocksBenchError::Bare)?
        };
        connection = back;
        let elapsed = start.elapsed();
        let after = CpuSample::take(storage).await;
        let mut line = json!({
            "peer": "botfleet", "bench": "locks", "scenario": "one-task-bare-socket",
            "form": form, "tasks": 1, "pairs": done,
            "pairs_per_s": (done as f64 / elapsed.as_secs_f64()).round(),
        });
        before.report(&after, done, "pair", &mut line);
        out(line);
    }
    Ok(())
}

/// rslock's release: deletes the key if it still holds the token (1), else nothing (0).
const UNLOCK_IF_HELD: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The fallback twin of [`UNLOCK_IF_HELD`]: never run, the scenario calls Redis only.
fn unlock_on_redis_only(
    _: &mut Keyspace,
    _: u64,
    _: &[String],
    _: &[String],
) -> Result<Reply, LocalError> {
    Err(LocalError::Script(
        "the benchmark's unlock runs on redis only".into(),
    ))
}

/// [`UNLOCK_IF_HELD`], known to the server before any clock starts (as the lock scripts are
/// by then).
async fn loaded_unlock(storage: &Storage) -> Result<Arc<Script>, LocksBenchError> {
    let unlock = Arc::new(Script::new(
        "bench-unlock-if-held",
        UNLOCK_IF_HELD,
        unlock_on_redis_only,
    ));
    storage
        .eval_on_redis(&unlock, &["bench-lock:unfenced-warm-up"], &["-"])
        .await?;
    Ok(unlock)
}

/// rslock's pair on `key`: `SET key token PX ttl NX`, then `unlock`. Fails if the key was
/// not free or not released.
async fn rslock_pair(storage: &Storage, unlock: &Script, key: &str) -> Result<(), LocksBenchError> {
    let token = format!("{:032x}", rand::random::<u128>());
    if !storage.set_nx(key, token.as_str(), Some(TTL)).await? {
        return Err(LocksBenchError::Task(format!("{key} was not free")));
    }
    let released = storage.eval_on_redis(unlock, &[key], &[&token]).await?;
    if released.as_int() != 1 {
        return Err(LocksBenchError::Task(format!("{key} was not released")));
    }
    Ok(())
}

/// `50-tasks-unfenced-commands`: `tasks` tasks, `pairs` in all, each pair rslock's commands
/// (`SET key token PX ttl NX`, then `unlock`, [`UNLOCK_IF_HELD`]) through the storage. Fails if a key
/// was not free or not released: every key is new and taken by one task.
async fn unfenced_run(
    storage: &Storage,
    unlock: &Arc<Script>,
    tasks: usize,
    pairs: usize,
) -> Result<(Duration, usize), LocksBenchError> {
    let per_task = (pairs / tasks).max(1);
    let run = format!("{:08x}", rand::random::<u32>());
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let (storage, unlock, run) = (storage.clone(), unlock.clone(), run.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let key = format!("bench-lock:{run}:unfenced:{t}:{i}");
                rslock_pair(&storage, &unlock, &key).await?;
            }
            Ok::<(), LocksBenchError>(())
        }));
    }
    join_tasks(handles).await?;
    Ok((start.elapsed(), per_task * tasks))
}

/// Calls in flight at once in `pipelined-server-cost`: enough that the server finds several
/// in each read and runs them back to back, without waiting on a wake-up between them.
const PIPELINED_IN_FLIGHT: usize = 32;

/// `pipelined-server-cost`: `pairs` acquire + release pairs on new keys, [`PIPELINED_IN_FLIGHT`]
/// calls in flight at once from one task, so that what a pair costs the server is its work
/// alone, not the wake-ups that a round trip at a time adds on a machine whose idle cores
/// halt. `fenced` is botfleet's scripts, `batch` requests per call (one acquire call, then
/// one release call: [`Locks::bare_pairs`]); `rslock-commands` is rslock's pair (a plain `SET
/// NX PX`, then [`UNLOCK_IF_HELD`]). Fails if a key was not free or not released.
async fn pipelined_run(
    locks: &Locks,
    storage: &Storage,
    unlock: &Arc<Script>,
    form: &'static str,
    batch: usize,
    pairs: usize,
) -> Result<(Duration, usize), LocksBenchError> {
    use futures::stream::{self, StreamExt, TryStreamExt};

    let calls = (pairs / batch).max(1);
    let run = format!("{:08x}", rand::random::<u32>());
    let (locks, storage, unlock) = (locks.clone(), storage.clone(), unlock.clone());
    let start = Instant::now();
    // On a worker of the runtime, like the scenarios' tasks.
    tokio::spawn(async move {
        stream::iter(0..calls)
            .map(|call| {
                let (locks, storage, unlock, run) = (&locks, &storage, &unlock, &run);
                async move {
                    // One hash tag per call: on a Cluster a batch shares a slot.
                    let names: Vec<String> = (0..batch)
                        .map(|i| format!("bench-lock:{{{run}:{call}}}:pipelined:{form}:{i}"))
                        .collect();
                    if form == "fenced" {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        if !locks.bare_pairs(&names, TTL).await? {
                            return Err(LocksBenchError::Task(format!(
                                "{} was not free or not released",
                                names[0]
                            )));
                        }
                        return Ok(());
                    }
                    for key in &names {
                        rslock_pair(storage, unlock, key).await?;
                    }
                    Ok(())
                }
            })
            .buffer_unordered(PIPELINED_IN_FLIGHT)
            .try_collect::<()>()
            .await
    })
    .await
    .map_err(|e| LocksBenchError::Task(e.to_string()))??;
    Ok((start.elapsed(), calls * batch))
}

/// Waits for every benchmark task: the first failure, a task's own or its panic, fails the
/// scenario.
async fn join_tasks<E>(
    handles: Vec<tokio::task::JoinHandle<Result<(), E>>>,
) -> Result<(), LocksBenchError>
where
    LocksBenchError: From<E>,
{
    for h in handles {
        h.await
            .map_err(|e| LocksBenchError::Task(e.to_string()))??;
    }
    Ok(())
}

/// The span over which [`Windows`] counts the pairs done.
const WINDOW: Duration = Duration::from_millis(25);

/// The pairs done in each [`WINDOW`] of a scenario, counted by a thread of its own (it
/// wakes once a window, off the runtime the scenario runs on). Dropped unfinished (the
/// scenario failed), it stops its thread.
struct Windows {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counter: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl Windows {
    fn start() -> Self {
        let (done, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (counted, stopped) = (done.clone(), stop.clone());
        let counter = std::thread::spawn(move || {
            let mut counts = Vec::new();
            let (mut last, mut next) = (0, Instant::now() + WINDOW);
            // Window ends are fixed from the start: a late wake-up makes that window
            // longer and the next one shorter, never the run's windows fewer.
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let now = counted.load(Ordering::Relaxed);
                counts.push(now - last);
                (last, next) = (now, next + WINDOW);
            }
            counts
        });
        Self {
            done,
            stop,
            counter: Some(counter),
        }
    }

    /// The counts of the whole windows (the last, partial one is left out).
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.counter
            .take()
            .and_then(|counter| counter.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Windows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// p10, p50 and p90 of the windows' pairs per second (`null` for a run shorter than one
/// window).
fn window_rates(counts: &[u64], window: Duration) -> serde_json::Value {
    if counts.is_empty() {
        return serde_json::Value::Null;
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let per_s = |q: f64| {
        // Nearest rank.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        (sorted[rank - 1] as f64 / window.as_secs_f64()).round()
    };
    json!({ "p10": per_s(0.10), "p50": per_s(0.50), "p90": per_s(0.90) })
}

async fn scenario_run(
    locks: &Locks,
    storage: &Storage,
    tasks: usize,
    pairs: usize,
    shared: bool,
    on_drop: bool,
) -> Result<(Duration, Latencies, usize, Vec<u64>), LocksBenchError> {
    let per_task = pairs / tasks;
    let waits = Arc::new(Mutex::new(Latencies::default()));
    let run = format!("{:08x}", rand::random::<u32>());
    let start = Instant::now();
    let windows = Windows::start();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let (locks, waits, run, done) = (
            locks.clone(),
            waits.clone(),
            run.clone(),
            windows.done.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut mine = Latencies::default();
            for i in 0..per_task {
                let key = if shared {
                    "bench-lock:shared".to_string()
                } else {
                    format!("bench-lock:{run}:{t}:{i}")
                };
                let asked = Instant::now();
                let guard = locks.acquire(&key, TTL, Duration::from_secs(60)).await?;
                mine.record(asked.elapsed());
                if on_drop {
                    drop(guard);
                } else {
                    guard.release().await?;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            waits.lock().merge(&mine);
            Ok::<(), LockError>(())
        }));
    }
    join_tasks(handles).await?;
    if on_drop {
        // The releases run in the background: the scenario ends when they are all done.
        let pattern = format!("bench-lock:{run}:*");
        while !storage.scan(&pattern).await?.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = start.elapsed();
    let windows = windows.finish();
    let waits = waits.lock().clone();
    Ok((elapsed, waits, per_task * tasks, windows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rates_are_nearest_rank_percentiles_per_second() {
        let window = Duration::from_millis(25);
        // Ten windows, 1..=10 pairs each, given out of order.
        let counts = [7, 3, 10, 1, 5, 9, 2, 8, 4, 6];
        assert_eq!(
            window_rates(&counts, window),
            json!({ "p10": 40.0, "p50": 200.0, "p90": 360.0 })
        );
        // One window: every percentile is that window's.
        assert_eq!(
            window_rates(&[3], window),
            json!({ "p10": 120.0, "p50": 120.0, "p90": 120.0 })
        );
        assert_eq!(window_rates(&[], window), serde_json::Value::Null);
    }
}
