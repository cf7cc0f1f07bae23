//! `botfleet bench cache [--redis URL]`: the cache service's near-cache hit latency, its
//! storage (Redis) hit latency beside a bare storage `GET` of the same key (the baseline),
//! and invalidation propagation: one cache writes a key, the time until a second process
//! (`botfleet bench cache --peer`, driven through its stdin) has dropped its near copy, and the
//! same with a second cache in this process. One JSON line each.
//! Without `--redis` a private redis-server is started.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Latencies;
use botfleet::actors::cache::{Cache, CacheError};
use botfleet::settings::CacheSettings;
use botfleet::storage::{Storage, StorageError};

/// TTL of the benchmark's keys.
const TTL: Duration = Duration::from_secs(300);
/// Reads timed together in the near-hit scenario (a single read is below the clock's grain).
const BATCH: usize = 100;

/// Options of the cache benchmark (`botfleet bench cache`).
#[derive(Debug, Clone, clap::Args)]
pub struct CacheBench {
    /// Server to use (keys under `bench-cache:` are overwritten).
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Reads per hit scenario.
    #[arg(long, default_value_t = 200_000)]
    pub reads: usize,
    /// Invalidations measured.
    #[arg(long, default_value_t = 2_000)]
    pub invalidations: usize,
    /// Internal: run as the second process of the propagation scenario (driven through stdin
    /// and stdout).
    #[arg(long, hide = true)]
    pub peer: bool,
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
    /// An invalidation did not arrive within 5 s.
    #[error("invalidation of {0} did not arrive within 5 s")]
    Lost(String),
    /// The peer process failed.
    #[error("peer process: {0}")]
    Peer(String),
}

const PEER_KEY: &str = "bench-cache:payload";

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The second process: `botfleet bench cache --redis URL --peer`.
struct Peer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn spawn(url: &str) -> Result<Self, CacheBenchError> {
        let fail = |e: std::io::Error| CacheBenchError::Peer(e.to_string());
        let exe = std::env::current_exe().map_err(fail)?;
        let mut child = std::process::Command::new(exe)
            .args(["bench", "cache", "--redis", url, "--peer"])
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(fail)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CacheBenchError::Peer("no pipes".into()));
        };
        Ok(Self {
            child,
            stdin,
            stdout: std::io::BufReader::new(stdout),
        })
    }

    fn ask(&mut self, command: &str) -> Result<String, CacheBenchError> {
        use std::io::{BufRead, Write};
        let fail = |e: std::io::Error| CacheBenchError::Peer(e.to_string());
        writeln!(self.stdin, "{command}").map_err(fail)?;
        self.stdin.flush().map_err(fail)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(fail)?;
        if line.is_empty() {
            return Err(CacheBenchError::Peer("exited".into()));
        }
        Ok(line.trim().to_string())
    }

    /// The peer reads the key (its near copy is then filled).
    fn fill(&mut self) -> Result<(), CacheBenchError> {
        self.ask("fill").map(drop)
    }

    /// Blocks until the peer's near copy was dropped; the wall-clock time it saw it, ns, or
    /// `None` when it was still there after 5 s.
    fn seen(&mut self) -> Result<Option<u64>, CacheBenchError> {
        let line = self.ask("wait")?;
        if line == "lost" {
            return Ok(None);
        }
        line.parse()
            .map(Some)
            .map_err(|_| CacheBenchError::Peer(format!("unexpected answer {line:?}")))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's loop: `fill` → reads the key, starts watching its near copy, answers `ok`;
/// `wait` → the wall-clock time in ns at which the copy was dropped (`lost` after 5 s).
async fn run_peer(url: &str) -> Result<(), CacheBenchError> {
    let storage = open(url).await?;
    let settings = CacheSettings {
        near_ttl_ms: 600_000,
        ..CacheSettings::default()
    };
    let cache = Cache::start(storage.clone(), settings).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    // After `fill`, a task watches the near copy from that moment on and records the time
    // it disappeared; `wait` collects it.
    let mut watcher: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    while let Some(command) = rx.recv().await {
        let answer = match command.as_str() {
            "fill" => {
                let dropped = cache.invalidations();
                cache.get(PEER_KEY, TTL).await?;
                watcher = Some(tokio::spawn(async move {
                    let seen = tokio::time::timeout(Duration::from_secs(5), dropped_key(dropped));
                    seen.await.ok().flatten().map(|_| unix_ns())
                }));
                "ok".to_string()
            }
            "wait" => match watcher.take() {
                Some(task) => match task.await {
                    Ok(Some(ns)) => ns.to_string(),
                    _ => "lost".to_string(),
                },
                None => "?".to_string(),
            },
            _ => "?".to_string(),
        };
        println!("{answer}");
    }
    storage.close().await;
    Ok(())
}

/// Waits until `PEER_KEY` is invalidated by another process; `None` if the cache went away.
async fn dropped_key(
    mut dropped: tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
) -> Option<()> {
    loop {
        match dropped.recv().await {
            Ok(key) if &*key == PEER_KEY => return Some(()),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn open(url: &str) -> Result<Storage, CacheBenchError> {
    Ok(super::open_storage(url).await?)
}

/// Runs the scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &CacheBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), CacheBenchError> {
    if bench.peer {
        let url = bench.redis_url.clone().unwrap_or_default();
        return run_peer(&url).await;
    }
    let (url, _private) = super::given_or_private(bench.redis_url.as_deref())
        .map_err(|e| CacheBenchError::Redis(e.to_string()))?;
    let (storage_a, storage_b) = (open(&url).await?, open(&url).await?);
    let settings = CacheSettings {
        near_ttl_ms: 600_000,
        ..CacheSettings::default()
    };
    let a = Cache::start(storage_a.clone(), settings.clone()).await;
    let b = Cache::start(storage_b.clone(), settings).await;
    let key = PEER_KEY;
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

    // Propagation between processes: a second botfleet process (`bench cache --peer`)
    // caches the key; this one writes it; the peer reports the wall-clock time at which its
    // near copy was dropped.
    let mut propagation = Latencies::default();
    let mut peer = Peer::spawn(&url)?;
    let mut lost = 0u64;
    for i in 0..bench.invalidations.max(1) {
        peer.fill()?;
        let sent = unix_ns();
        a.set(key, &format!("{value}{i}"), TTL).await?;
        match peer.seen()? {
            Some(seen) => propagation.record(Duration::from_nanos(seen.saturating_sub(sent))),
            None => lost += 1,
        }
    }
    drop(peer);
    out(json!({
        "peer": "botfleet", "bench": "cache", "scenario": "invalidation-propagation",
        "invalidations": bench.invalidations.max(1),
        "p50_us": propagation.percentile_us(0.50), "p99_us": propagation.percentile_us(0.99),
        "max_us": propagation.max_us(), "goal_p99_us": 2000, "lost": lost,
        "note": "second OS process; timed from the writer's set() call (SET + PUBLISH) to the reader's near copy being dropped",
    }));
    // The in-process reader b (its own storage handle and connections), for comparison.
    let mut local = Latencies::default();
    for i in 0..bench.invalidations.max(1) {
        let dropped = b.invalidations();
        b.get(key, TTL).await?;
        let t = Instant::now();
        a.set(key, &format!("{value}-{i}"), TTL).await?;
        let seen = tokio::time::timeout(Duration::from_secs(5), dropped_key(dropped)).await;
        if !matches!(seen, Ok(Some(_))) || b.peek(key).is_some() {
            return Err(CacheBenchError::Lost(key.to_string()));
        }
        local.record(t.elapsed());
    }
    out(json!({
        "peer": "botfleet", "bench": "cache", "scenario": "invalidation-propagation-same-process",
        "invalidations": bench.invalidations.max(1),
        "p50_us": local.percentile_us(0.50), "p99_us": local.percentile_us(0.99),
        "max_us": local.max_us(),
    }));
    storage_a.del(&[key]).await?;
    drop((a, b));
    storage_a.close().await;
    storage_b.close().await;
    Ok(())
}
