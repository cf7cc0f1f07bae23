//! `botfleet bench ...`: benchmarks that print one JSON line per scenario, with figures named
//! with their unit, so that runs can be compared side by side with peers and baselines.
//!
//! A benchmark is a module with an options struct (`clap::Args`: its flags) and
//! `run(&options, out)`, which prints through `out`; [`BenchCommand`] names it and [`run`]
//! dispatches.

mod bare;
mod cache;
mod heartbeat;
mod history;
mod locks;
mod queue;
mod queue_http;
mod read;
mod storage;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use botfleet::settings::{redis_url_problem, RedisSettings, StorageSettings};
use botfleet::storage::{KeySchema, Mode, Storage, StorageError};
use clap::Subcommand;

use crate::exit::BadArgument;

/// `botfleet bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Storage handle throughput and latency beside redis-benchmark on the same server, and a
    /// kill -9 fail-over of a private redis-server (needs redis-server on PATH).
    Storage(storage::StorageBench),
    /// The peers' lock workload (acquire + release, TTL 10 s: one task on new keys, 50 tasks
    /// on keys of their own, 8 tasks on one key), to compare with `peers/run.sh locks`.
    Locks(locks::LocksBench),
    /// Cache service: near-cache hit and storage hit latency, and invalidation propagation
    /// between two processes (p50/p99). Without --redis a private redis-server is started.
    Cache(cache::CacheBench),
    /// The peers' queue workload (20,000 no-op tasks, 50 concurrent handlers: seq-add,
    /// bulk-add, priority), to compare with `peers/run.sh queue`; `--via http` processes them
    /// with HTTP workers against a fleet and HTTP API the benchmark starts.
    Queue(queue::QueueBench),
    /// The shared-data reader: `read()` on a fresh snapshot beside a plain GET of the same
    /// key, and propagation of a write to 100 readers.
    Read(read::ReadBench),
    /// Seed 004's load: simulated bots heartbeating at 1 Hz from one process (CPU, Redis
    /// commands/s, lateness), a peer scan, and admin message delivery latency.
    Heartbeat(heartbeat::HeartbeatBench),
    /// The history archive: records archived per second on SQLite and on PostgreSQL, and the
    /// latency the archive adds to a task round trip (archive off vs on).
    History(history::HistoryBench),
}

/// Runs the benchmark `command` names on a runtime of its own, printing one JSON line per
/// scenario on stdout.
pub fn run(command: &BenchCommand) -> anyhow::Result<()> {
    check_arguments(command)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let print = |line: serde_json::Value| println!("{line}");
    runtime.block_on(async {
        match command {
            BenchCommand::Storage(bench) => storage::run(bench, print).await?,
            BenchCommand::Locks(bench) => locks::run(bench, print).await?,
            BenchCommand::Cache(bench) => cache::run(bench, print).await?,
            BenchCommand::Queue(bench) if bench.via == queue::Via::Http => {
                queue_http::run(bench, print).await?
            }
            BenchCommand::Queue(bench) => queue::run(bench, print).await?,
            BenchCommand::Read(bench) => read::run(bench, print).await?,
            BenchCommand::Heartbeat(bench) => heartbeat::run(bench, print).await?,
            BenchCommand::History(bench) => history::run(bench, print).await?,
        }
        Ok(())
    })
}

/// Refuses a bad argument before anything starts (a server, a runtime): `--redis` that is not
/// a Redis URL the storage can use, `--scenario` that names no scenario, `--lock-connections`
/// past the setting's bound.
fn check_arguments(command: &BenchCommand) -> Result<(), BadArgument> {
    let redis = match command {
        BenchCommand::Storage(b) => {
            storage::check_scenarios(&b.scenarios)?;
            Some(b.redis_url.as_str())
        }
        BenchCommand::Locks(b) => {
            locks::check_scenarios(&b.scenarios)?;
            locks::check_lock_connections(b.lock_connections)?;
            Some(b.redis_url.as_str())
        }
        BenchCommand::Queue(b) => Some(b.redis_url.as_str()),
        BenchCommand::Cache(b) => b.redis_url.as_deref(),
        BenchCommand::Read(b) => b.redis_url.as_deref(),
        BenchCommand::Heartbeat(b) => b.redis_url.as_deref(),
        BenchCommand::History(b) => b.redis_url.as_deref(),
    };
    match redis {
        Some(url) => redis_url_problem(url).map_err(|message| BadArgument::new("--redis", message)),
        None => Ok(()),
    }
}

/// The server and the form each script with a native twin runs in, for the JSON lines:
/// `{"server": "valkey 9.1.2", "compare_and_set": "SET IFEQ", ...}`.
pub fn server_line(storage: &Storage) -> serde_json::Value {
    match storage.stats().server {
        Some(server) => serde_json::json!({
            "server": format!("{} {}", server.name, server.version),
            "native_commands": server.native_commands,
            "forms": server.commands,
        }),
        None => serde_json::Value::Null,
    }
}

/// Latency recorder (microseconds).
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // 1 µs .. 60 s at 3 significant digits: the bounds are constants, so this cannot fail.
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let _ = self.0.record((d.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// Merges another recorder.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    /// Percentile in µs.
    pub fn percentile_us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// Largest value in µs.
    pub fn max_us(&self) -> u64 {
        self.0.max()
    }
}

/// A private `redis-server` on a free loopback port, killed on drop (benchmarks only). It
/// persists every write (`appendfsync always`), so what it acknowledged before a kill -9 is
/// there after the restart and a lost write can only be botfleet's.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("botfleet-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut me = Self {
            port,
            dir,
            child: None,
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(std::io::Error::other("redis-server did not start"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (with the persisted data).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server a benchmark runs against: `url` when given, else a private redis-server started
/// for it (keep the returned handle alive: dropping it stops the server).
pub fn given_or_private(url: Option<&str>) -> std::io::Result<(String, Option<PrivateRedis>)> {
    match url {
        Some(url) => Ok((url.to_string(), None)),
        None => {
            let private = PrivateRedis::start()?;
            Ok((private.url(), Some(private)))
        }
    }
}

/// Opens the storage on `url` with a 2 s command timeout (a loaded 2-core machine must not
/// look like an outage half-way through); fails when Redis does not answer.
pub async fn open_storage(url: &str) -> Result<Storage, StorageError> {
    open_storage_with(url, true, RedisSettings::default().lock_connections).await
}

/// [`open_storage`] with `storage.redis.native_commands` set to `native` (false: the scripts
/// run even where the server has the native command, to compare the two) and
/// `storage.redis.lock_connections` to `lock_connections`.
pub async fn open_storage_with(
    url: &str,
    native: bool,
    lock_connections: usize,
) -> Result<Storage, StorageError> {
    let mut settings = StorageSettings::default();
    settings.redis.url = url.to_string();
    settings.redis.native_commands = native;
    settings.redis.lock_connections = lock_connections;
    settings.redis.timeout_ms = 2_000;
    let storage = Storage::open(&settings, &KeySchema::default()).await?;
    if storage.mode() != Mode::Redis {
        storage.close().await;
        return Err(StorageError::Config {
            key: "--redis",
            message: format!("{url} does not answer"),
        });
    }
    Ok(storage)
}

/// CPU time, seconds: this process's (user + system, all threads) and the server's
/// (`INFO cpu` `used_cpu_user` + `used_cpu_sys`, on a Cluster of the master that answers),
/// and the server's script calls so far with the time it spent running them (`INFO
/// commandstats`: `EVAL`, `EVALSHA`, `FCALL`). Taken before and after a scenario, the
/// differences say what a pair or a task cost each side: on a machine whose cores the two
/// share, they bound what any client can reach; the script figures say how many requests a
/// call carried and what the scripts themselves cost Redis.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    client_s: f64,
    server: Option<ServerSample>,
    /// Script calls the storage's lock lanes served.
    lane_calls: u64,
}

/// The server's side of a [`CpuSample`].
#[derive(Debug, Clone, Copy)]
struct ServerSample {
    cpu_s: f64,
    script_calls: u64,
    script_us: u64,
}

/// Answers `"CPU_SECONDS SCRIPT_CALLS SCRIPT_USEC"` (its own call is counted by the next
/// sample: one call among thousands).
const SERVER_CPU: &str = r#"
local info = redis.call('INFO', 'cpu')
local user = string.match(info, 'used_cpu_user:([%d%.]+)')
local sys = string.match(info, 'used_cpu_sys:([%d%.]+)')
local calls, usec = 0, 0
local stats = redis.call('INFO', 'commandstats')
for name, c, u in string.gmatch(stats, 'cmdstat_(%w+):calls=(%d+),usec=(%d+)') do
  if name == 'eval' or name == 'evalsha' or name == 'fcall' then
    calls = calls + tonumber(c)
    usec = usec + tonumber(u)
  end
end
return string.format('%.6f %d %d', tonumber(user) + tonumber(sys), calls, usec)
"#;

/// The fallback twin of a benchmark's script: these run on Redis only.
pub fn no_local_script(
    _: &mut botfleet::storage::Keyspace,
    _: u64,
    _: &[String],
    _: &[String],
) -> Result<botfleet::storage::Reply, botfleet::storage::LocalError> {
    Err(botfleet::storage::LocalError::Script("redis only".into()))
}

impl CpuSample {
    /// Now.
    pub async fn take(storage: &Storage) -> Self {
        static SCRIPT: std::sync::OnceLock<botfleet::storage::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| {
            botfleet::storage::Script::new("bench-server-cpu", SERVER_CPU, no_local_script)
        });
        let server = match storage.eval_on_redis(script, &[], &[]).await {
            Ok(reply) => reply
                .into_opt_string()
                .and_then(|s| ServerSample::parse(&s)),
            Err(_) => None,
        };
        Self {
            client_s: process_cpu_s(),
            server,
            lane_calls: storage.lock_lane_calls(),
        }
    }

    /// `client_cpu_us_per_{unit}`, `server_cpu_us_per_{unit}`, `script_calls_per_{unit}`,
    /// `server_script_us_per_{unit}` and, when the lock lanes served any call meanwhile,
    /// `lane_calls_per_{unit}` since `self`, for `count` units, into `line`.
    pub fn report(&self, now: &CpuSample, count: usize, unit: &str, line: &mut serde_json::Value) {
        let count = count.max(1) as f64;
        // (b - a) × scale per unit, rounded to `digits` decimals.
        let per = |a: f64, b: f64, scale: f64, digits: i32| {
            let f = 10f64.powi(digits);
            ((b - a) * scale / count * f).round() / f
        };
        line[format!("client_cpu_us_per_{unit}")] = per(self.client_s, now.client_s, 1e6, 1).into();
        if now.lane_calls > self.lane_calls {
            line[format!("lane_calls_per_{unit}")] =
                per(self.lane_calls as f64, now.lane_calls as f64, 1.0, 2).into();
        }
        if let (Some(a), Some(b)) = (self.server, now.server) {
            line[format!("server_cpu_us_per_{unit}")] = per(a.cpu_s, b.cpu_s, 1e6, 1).into();
            line[format!("script_calls_per_{unit}")] =
                per(a.script_calls as f64, b.script_calls as f64, 1.0, 2).into();
            line[format!("server_script_us_per_{unit}")] =
                per(a.script_us as f64, b.script_us as f64, 1.0, 1).into();
        }
    }
}

impl ServerSample {
    /// [`SERVER_CPU`]'s answer.
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let sample = Self {
            cpu_s: parts.next()?.parse().ok()?,
            script_calls: parts.next()?.parse().ok()?,
            script_us: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(sample)
    }
}

/// This process's CPU time so far (user + system, every thread), seconds.
fn process_cpu_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points to
    // one of the right size and alignment; RUSAGE_SELF cannot fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs `redis-benchmark` against `url` for `tests` at `clients` connections and returns
/// requests per second by test name (upper case), or an empty list when it is not installed.
pub fn redis_benchmark(
    url: &str,
    tests: &str,
    clients: usize,
    requests: usize,
) -> Vec<(String, f64)> {
    let (host, port) = host_port(url);
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-c",
            &clients.to_string(),
        ])
        .args(["-n", &requests.to_string(), "-t", tests, "--csv"])
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split(',').map(|c| c.trim_matches('"'));
            let name = cols.next()?.split_whitespace().next()?.to_uppercase();
            let rps: f64 = cols.next()?.parse().ok()?;
            Some((name, rps))
        })
        .collect()
}

/// Host and port of a `redis://` URL (defaults 127.0.0.1:6379).
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(6379)),
        None => (hostport.to_string(), 6379),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_sample_is_three_numbers_or_nothing() {
        let sample = ServerSample::parse("12.500000 40002 502244").unwrap();
        assert_eq!(
            (sample.cpu_s, sample.script_calls, sample.script_us),
            (12.5, 40002, 502244)
        );
        for bad in ["", "12.5", "12.5 1", "12.5 1 x", "12.5 1 2 3", "x 1 2"] {
            assert!(ServerSample::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_report_divides_by_the_count() {
        let sample = |client_s, cpu_s, script_calls, script_us, lane_calls| CpuSample {
            client_s,
            server: Some(ServerSample {
                cpu_s,
                script_calls,
                script_us,
            }),
            lane_calls,
        };
        let (before, after) = (
            sample(1.0, 2.0, 100, 1_000, 7),
            sample(1.5, 2.25, 400, 13_000, 307),
        );
        let mut line = serde_json::json!({});
        before.report(&after, 200, "pair", &mut line);
        assert_eq!(line["client_cpu_us_per_pair"], 2500.0);
        assert_eq!(line["server_cpu_us_per_pair"], 1250.0);
        assert_eq!(line["script_calls_per_pair"], 1.5);
        assert_eq!(line["server_script_us_per_pair"], 60.0);
        assert_eq!(line["lane_calls_per_pair"], 1.5);
        // Without the server's side or a lane call, only the client's figure.
        let mut line = serde_json::json!({});
        let alone = CpuSample {
            client_s: 1.0,
            server: None,
            lane_calls: 307,
        };
        alone.report(&after, 200, "task", &mut line);
        assert_eq!(line, serde_json::json!({"client_cpu_us_per_task": 2500.0}));
    }

    #[test]
    fn host_port_reads_urls() {
        assert_eq!(
            host_port("redis://127.0.0.1:7000"),
            ("127.0.0.1".into(), 7000)
        );
        assert_eq!(host_port("redis://:pw@h:1/0"), ("h".into(), 1));
        assert_eq!(host_port("redis://h"), ("h".into(), 6379));
    }

    #[test]
    fn latencies_report_percentiles() {
        let mut l = Latencies::default();
        for us in 1..=100 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.percentile_us(0.5), 50);
        assert_eq!(l.max_us(), 100);
    }
}

/// What the last-known copy (`storage.last_known`) does during a benchmark, to measure its
/// cost beside a run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LastKnownMode {
    /// Disabled (`storage.last_known.enabled = false`): the cost without it.
    Off,
    /// As shipped: the copy keeps the keys the services declare.
    On,
    /// Every key the benchmark touches is remembered (the worst case).
    All,
}

impl LastKnownMode {
    /// Applies the mode to `settings`; the pattern to remember for `All`.
    pub fn apply(self, settings: &mut botfleet::settings::StorageSettings, pattern: &str) {
        settings.last_known.enabled = self != LastKnownMode::Off;
        if self == LastKnownMode::All {
            settings.last_known.patterns = vec![pattern.to_string()];
        }
    }

    /// The mode's name in the benchmark's JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            LastKnownMode::Off => "off",
            LastKnownMode::On => "on",
            LastKnownMode::All => "all",
        }
    }
}
