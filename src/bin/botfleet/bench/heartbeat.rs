//! `botfleet bench heartbeat [--redis URL]`: seed 004's load from one process.
//!
//! - `heartbeats`: `--bots` simulated bots (10,000) each writing `heartbeat:PID` once a second
//!   for `--duration` seconds. One task drives them all: the second is cut into 100 slots of
//!   10 ms, each bot belongs to one slot, and the bots of a slot are written with one
//!   `Storage::set_many` call (one script call of `SET .. PX`, the seed's JSON; one per
//!   cluster slot on a Cluster). Reported: CPU of this process (getrusage, user +
//!   system) as a percentage of one core, Redis commands per second (`INFO stats`
//!   `total_commands_processed`, delta over the run), and the lateness of each heartbeat (from
//!   when it was due to when Redis acknowledged it) p50/p99/max.
//! - `heartbeats-naive`: the baseline, the same bots with one timer and one `SET` each (a
//!   tenth of the duration, at most 5 s), to show what batching saves.
//! - `peer-scan`: one monitor scan of all those heartbeats (SCAN + one pipelined GET batch).
//! - `admin`: `--messages` admin messages sent one after the other to an inbox in this
//!   process; latency from `send` to the inbox handing the message over, p50/p99/max.
//!
//! Without `--redis` a private redis-server is started (needs `redis-server` on PATH).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Latencies;
use botfleet::actors::heartbeat::{heartbeat_key, Admin, HeartbeatError, HeartbeatRecord, Peers};
use botfleet::settings::{AdminSettings, HeartbeatSettings};
use botfleet::storage::StorageError;

/// Slots per second: each bot belongs to one.
const SLOTS: u64 = 100;
/// First simulated pid (far above any real one; their host is not ours, so none is a zombie).
const FIRST_PID: u32 = 2_000_000_000;

/// Options of the heartbeat benchmark (`botfleet bench heartbeat`).
#[derive(Debug, Clone, clap::Args)]
pub struct HeartbeatBench {
    /// Server to use (`heartbeat:*` and `admin:*` keys of simulated pids are overwritten);
    /// without it a private redis-server is started.
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Simulated bots.
    #[arg(long, default_value_t = 10_000)]
    pub bots: u64,
    /// Seconds of heartbeating.
    #[arg(long = "duration", default_value_t = 30, value_name = "SECS")]
    pub duration_secs: u64,
    /// Admin messages to time.
    #[arg(long, default_value_t = 2_000)]
    pub messages: u64,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatBenchError {
    /// The storage could not be opened, or Redis does not answer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A heartbeat or admin call failed.
    #[error(transparent)]
    Heartbeat(#[from] HeartbeatError),
    /// The private redis-server could not start.
    #[error("private redis-server: {0}")]
    Io(#[from] std::io::Error),
    /// The inbox closed or a message did not arrive.
    #[error("admin delivery: {0}")]
    Delivery(String),
}

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `INFO stats` field `total_commands_processed`, over a plain RESP connection.
fn commands_processed(url: &str) -> Option<u64> {
    let parsed = url::Url::parse(url).ok()?;
    let addr = format!("{}:{}", parsed.host_str()?, parsed.port().unwrap_or(6379));
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    if !parsed.password().unwrap_or("").is_empty() {
        let user = if parsed.username().is_empty() {
            "default"
        } else {
            parsed.username()
        };
        let pass = parsed.password()?;
        let cmd = format!(
            "*3\r\n$4\r\nAUTH\r\n${}\r\n{user}\r\n${}\r\n{pass}\r\n",
            user.len(),
            pass.len()
        );
        stream.write_all(cmd.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).ok()?;
    }
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

fn record(
    lateness: &mut Latencies,
    written: &mut u64,
    failed: &mut u64,
    n: usize,
    ok: usize,
    late: Duration,
) {
    for _ in 0..ok {
        lateness.record(late);
    }
    *written += ok as u64;
    *failed += (n - ok) as u64;
}

/// `CONFIG SET appendfsync everysec` on the private server (it starts with `always`, which
/// measures the disk rather than botfleet).
fn relax_fsync(url: &str) {
    let Some(addr) = url::Url::parse(url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port()?)))
    else {
        return;
    };
    if let Ok(mut stream) = TcpStream::connect(addr) {
        let _ = stream.write_all(
            b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n",
        );
        let mut line = String::new();
        let _ = BufReader::new(stream).read_line(&mut line);
    }
}

fn record_of(pid: u32, timestamp_ms: u64) -> String {
    HeartbeatRecord {
        pid,
        host: "bench-sim".into(),
        room_url: Some(format!("https://rooms.example/{}", pid % 1_000)),
        participants: vec!["user1".into(), "user2".into()],
        status: "active".into(),
        timestamp: timestamp_ms as f64 / 1_000.0,
    }
    .to_json()
}

/// Runs the scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &HeartbeatBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), HeartbeatBenchError> {
    let (url, private) = super::given_or_private(bench.redis_url.as_deref())?;
    if private.is_some() {
        relax_fsync(&url);
    }
    let storage = super::open_storage(&url).await?;
    let bots = bench.bots.max(1);
    let duration = Duration::from_secs(bench.duration_secs.max(1));
    let ttl_ms = 30_000;

    // Batched: one task, 100 slots a second, one `set_many` call per slot.
    let cmds0 = commands_processed(&url);
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let mut lateness = Latencies::default();
    let mut offset_ms: i64 = 0;
    let slot_len = Duration::from_millis(1_000 / SLOTS);
    let mut written = 0u64;
    let mut failed = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    let mut tick = 0u64;
    loop {
        let due = wall0 + slot_len * tick as u32;
        if due >= wall0 + duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let slot = tick % SLOTS;
        if slot == 0 {
            // The server's clock once a second: timestamps follow it, not ours.
            let local = botfleet::clock::now_ms() as i64;
            offset_ms = storage.server_time_ms().await? as i64 - local;
        }
        let stamp = (botfleet::clock::now_ms() as i64 + offset_ms) as u64;
        let beats: Vec<(String, String)> = (slot..bots)
            .step_by(SLOTS as usize)
            .map(|i| {
                let pid = FIRST_PID + i as u32;
                (heartbeat_key(pid), record_of(pid, stamp))
            })
            .collect();
        // Each batch is its own task, so a slow acknowledgement does not delay the next slot.
        let batch_storage = storage.clone();
        in_flight.push_back(tokio::spawn(async move {
            let n = beats.len();
            let ttl = Some(Duration::from_millis(ttl_ms));
            let ok = match batch_storage.set_many(beats, ttl).await {
                Ok(()) => n,
                Err(_) => 0,
            };
            (n, ok, due.elapsed())
        }));
        while in_flight.len() > 200 {
            if let Some(h) = in_flight.pop_front() {
                let (n, ok, late) = h.await.unwrap_or((0, 0, Duration::ZERO));
                record(&mut lateness, &mut written, &mut failed, n, ok, late);
            }
        }
        tick += 1;
    }
    for h in in_flight {
        let (n, ok, late) = h.await.unwrap_or((0, 0, Duration::ZERO));
        record(&mut lateness, &mut written, &mut failed, n, ok, late);
    }
    let wall = wall0.elapsed();
    let cpu = cpu_time() - cpu0;
    let cmds = commands_processed(&url)
        .zip(cmds0)
        .map(|(b, a)| b.saturating_sub(a));
    out(json!({
        "peer": "botfleet", "bench": "heartbeat", "scenario": "heartbeats",
        "bots": bots, "rate_hz": 1, "duration_s": wall.as_secs_f64(),
        "heartbeats": written, "failed": failed,
        "cpu_pct_of_one_core": (cpu.as_secs_f64() / wall.as_secs_f64() * 1_000.0).round() / 10.0,
        "redis_commands_per_s": cmds.map(|c| (c as f64 / wall.as_secs_f64()).round()),
        "lateness_p50_us": lateness.percentile_us(0.50),
        "lateness_p99_us": lateness.percentile_us(0.99),
        "lateness_max_us": lateness.max_us(),
        "goal": "cpu under 10% of one core",
    }));

    // Baseline: one timer and one SET per bot.
    let naive_for = Duration::from_secs((bench.duration_secs / 10).clamp(1, 5));
    let cmds0 = commands_processed(&url);
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let mut tasks = Vec::with_capacity(bots as usize);
    for i in 0..bots {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let pid = FIRST_PID + i as u32;
            let first = wall0 + Duration::from_millis(i * 1_000 / bots);
            let mut lateness = Latencies::default();
            let mut k = 0u32;
            loop {
                let due = first + Duration::from_secs(k as u64);
                if due >= wall0 + naive_for {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let value = record_of(pid, botfleet::clock::now_ms());
                let ttl = Some(Duration::from_millis(ttl_ms));
                if storage.set(&heartbeat_key(pid), value, ttl).await.is_ok() {
                    lateness.record(due.elapsed());
                }
                k += 1;
            }
            lateness
        }));
    }
    let mut naive = Latencies::default();
    let mut naive_written = 0u64;
    for t in tasks {
        if let Ok(l) = t.await {
            naive_written += l.0.len();
            naive.merge(&l);
        }
    }
    let wall = wall0.elapsed();
    let cpu = cpu_time() - cpu0;
    let cmds = commands_processed(&url)
        .zip(cmds0)
        .map(|(b, a)| b.saturating_sub(a));
    out(json!({
        "peer": "baseline-one-timer-per-bot", "bench": "heartbeat", "scenario": "heartbeats-naive",
        "bots": bots, "rate_hz": 1, "duration_s": wall.as_secs_f64(),
        "heartbeats": naive_written,
        "cpu_pct_of_one_core": (cpu.as_secs_f64() / wall.as_secs_f64() * 1_000.0).round() / 10.0,
        "redis_commands_per_s": cmds.map(|c| (c as f64 / wall.as_secs_f64()).round()),
        "lateness_p50_us": naive.percentile_us(0.50),
        "lateness_p99_us": naive.percentile_us(0.99),
        "lateness_max_us": naive.max_us(),
    }));

    // One monitor scan over every simulated bot.
    let peers = Peers::new(
        storage.clone(),
        HeartbeatSettings::default(),
        "bench-monitor",
    );
    let scan0 = Instant::now();
    let seen = peers.scan().await?.len();
    out(json!({
        "peer": "botfleet", "bench": "heartbeat", "scenario": "peer-scan",
        "peers": seen, "scan_ms": scan0.elapsed().as_millis() as u64,
    }));

    // Admin messages, one at a time, to an inbox in this process.
    let admin_settings = AdminSettings {
        poll_interval_ms: 60_000,
        ..AdminSettings::default()
    };
    let pid = FIRST_PID - 1;
    let admin = Admin::for_pid(storage.clone(), admin_settings, "bench", pid);
    let mut inbox = admin.inbox()?;
    let serving = tokio::spawn(admin.clone().serve());
    // The inbox listens once it has read its queue the first time.
    let listen_deadline = Instant::now() + Duration::from_secs(10);
    while admin.stats().queue_reads == 0 {
        if Instant::now() > listen_deadline {
            return Err(HeartbeatBenchError::Delivery("inbox not listening".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let target = pid.to_string();
    let mut delivery = Latencies::default();
    let messages = bench.messages.max(1);
    for i in 0..messages {
        let started = Instant::now();
        let id = admin.send(&target, &format!("bench message {i}")).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .map_err(|_| HeartbeatBenchError::Delivery(format!("message {i} not delivered")))?
            .ok_or_else(|| HeartbeatBenchError::Delivery("inbox closed".into()))?;
        if got.id.as_deref() != Some(id.as_str()) {
            return Err(HeartbeatBenchError::Delivery(format!(
                "expected {id}, got {:?}",
                got.id
            )));
        }
        delivery.record(started.elapsed());
    }
    serving.abort();
    let stats = admin.stats();
    out(json!({
        "peer": "botfleet", "bench": "heartbeat", "scenario": "admin",
        "messages": messages, "delivered_live": stats.delivered_live,
        "delivered_queue": stats.delivered_queue,
        "delivery_p50_us": delivery.percentile_us(0.50),
        "delivery_p99_us": delivery.percentile_us(0.99),
        "delivery_max_us": delivery.max_us(),
        "goal": "delivery p99 under 5 ms on loopback",
    }));
    storage.close().await;
    drop(private);
    Ok(())
}
