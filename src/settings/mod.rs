//! The settings tree: one struct per section, its defaults in its `Default` impl,
//! unit-suffixed keys (`interval_ms`, `ttl_secs`), unknown keys refused
//! (`#[serde(deny_unknown_fields, default)]`).
//!
//! Loading (file + environment), validation that reports every error at once, and redaction of
//! secrets live in the submodules; this file holds the types and their defaults. The shipped
//! `settings.toml` lists every key at its default with a comment above it, and the settings
//! suite of the integration tests holds it equal to `Settings::default()`. A new section is a
//! struct here and a field of [`Settings`]; keys that must be positive or secret are listed in
//! `validate.rs` (`POSITIVE`, `SECRETS`), and rules across keys go in its semantic checks.
//!
//! ```no_run
//! use botfleet::Settings;
//!
//! match Settings::load(None) {
//!     Ok(settings) => println!("{}", settings.redacted().to_toml()),
//!     // One line per problem, each naming its key.
//!     Err(err) => eprintln!("{err}"),
//! }
//! ```
//!
//! | submodule | what it does |
//! |---|---|
//! | `load` | merges defaults, the file and the environment with the `config` crate |
//! | `tree` | the merged value tree and a lenient serde deserializer over it |
//! | `validate` | unknown keys, type errors one path at a time, semantic checks |
//! | `error` | [`SettingsError`] and its [`Problem`]s |
//! | `secret` | [`Secret`] and [`redact_url`] |
//! | `urls` | what `storage.redis.url` and `history.url` may be ([`HistoryBackend`]) |

use std::fmt;

use serde::{Deserialize, Serialize};

mod error;
mod load;
mod secret;
mod tree;
mod urls;
mod validate;

pub use error::{Problem, ProblemKind, SettingsError};
pub use load::{DEFAULT_FILE, ENV_PREFIX, ENV_SEPARATOR, SEED_VARIABLES};
pub use secret::{redact_url, Secret, REDACTED};
#[cfg(test)]
pub(crate) use urls::check_redis_url;
pub(crate) use urls::REDIS_SCHEMES;
pub use urls::{redis_url_problem, HistoryBackend};

/// Every setting of botfleet. `Settings::default()` equals the shipped `settings.toml`.
///
/// Load with [`Settings::load`] (file and process environment) or [`Settings::load_with_env`]
/// (environment given, for tests). Secrets are [`Secret`]s; print [`Settings::redacted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where state lives: Redis, and the fallback used while it is unreachable.
    pub storage: StorageSettings,
    /// Redis key names shared with bots written in other languages.
    pub keys: KeySettings,
    /// Restart policy of the actor tree.
    pub supervisor: SupervisorSettings,
    /// This instance's presence record in Redis.
    pub presence: PresenceSettings,
    /// The distributed lock manager.
    pub locks: LockSettings,
    /// Logging.
    pub log: LogSettings,
    /// HTTP API of the daemon.
    pub api: ApiSettings,
    /// The hazard ticker and provably fair seeds (seed 002).
    pub hazards: HazardSettings,
    /// Game sessions `gameSession:USER-AGENT` (seed 002).
    pub game_sessions: GameSessionSettings,
    /// The cache service: near cache in process, invalidated through pub/sub.
    pub cache: CacheSettings,
    /// The task scheduler, bot state, sessions and events.
    pub scheduler: SchedulerSettings,
    /// Shared data: the fetcher and the readers (seed 000).
    pub shared_data: SharedDataSettings,
    /// Seed 004's heartbeats (`heartbeat:PID`) and the peer monitor.
    pub heartbeat: HeartbeatSettings,
    /// Seed 004's participant identities (`identity:ROOM:PARTICIPANT`).
    pub identities: IdentitySettings,
    /// Seed 004's admin messages (`admin:bot:PID`, `admin:queue:PID`).
    pub admin: AdminSettings,
    /// The history archive: sessions, task records, events and hazard rounds in SQL.
    pub history: HistorySettings,
}

impl Settings {
    /// A copy safe to print: every non-empty secret replaced by `***`, and the password inside
    /// `storage.redis.url` too.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.storage.redis.password = copy.storage.redis.password.redacted();
        copy.storage.redis.sentinel_password = copy.storage.redis.sentinel_password.redacted();
        copy.storage.redis.url = redact_url(&copy.storage.redis.url);
        copy.api.token = copy.api.token.redacted();
        copy.history.url = redact_url(&copy.history.url);
        for handler in &mut copy.scheduler.handlers {
            if let Some(url) = &mut handler.url {
                *url = redact_url(url);
            }
        }
        copy
    }

    /// These settings as TOML, in the layout of `settings.toml`. Call it on
    /// [`Settings::redacted`] before printing.
    pub fn to_toml(&self) -> String {
        // Plain structs of strings, integers, booleans and unit enums always serialize to TOML.
        toml::to_string(self).expect("settings serialize to TOML")
    }
}

/// `[storage]`: the storage handle, its Redis connection and its fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Backend that serves calls while Redis is unreachable (and always, when Redis is off).
    pub fallback: FallbackKind,
    /// `[storage.redis]`.
    pub redis: RedisSettings,
    /// `[storage.memory]`.
    pub memory: MemorySettings,
    /// `[storage.file]`.
    pub file: FileSettings,
    /// `[storage.outbox]`.
    pub outbox: OutboxSettings,
    /// `[storage.last_known]`.
    pub last_known: LastKnownSettings,
    /// Keys whose replay must not overwrite a newer value (compared by a version field).
    pub versioned: Vec<VersionedKey>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            fallback: FallbackKind::Memory,
            redis: RedisSettings::default(),
            memory: MemorySettings::default(),
            file: FileSettings::default(),
            outbox: OutboxSettings::default(),
            last_known: LastKnownSettings::default(),
            versioned: default_versioned(),
        }
    }
}

fn default_versioned() -> Vec<VersionedKey> {
    vec![VersionedKey {
        pattern: "fivem_red_green_shared_data".into(),
        field: "timestamp".into(),
    }]
}

/// Which fallback backend serves calls while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackKind {
    /// In-process keyspace; lost when the process exits.
    Memory,
    /// In-process keyspace journaled to `storage.file.dir`; survives `kill -9`.
    File,
}

/// A key (glob pattern) whose values carry a version: a JSON field of a string value, or a
/// field of a hash. Replay after an outage skips a write older than what Redis holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionedKey {
    /// Redis glob pattern, matched against the full key name.
    pub pattern: String,
    /// JSON field (string values) or hash field (hashes) holding a number that grows.
    pub field: String,
}

/// `[storage.redis]`: connection and fast-failure settings.
///
/// `Debug` hides the password, and the password inside the URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Use Redis at all (`USE_REDIS`). When false the fallback is the store.
    pub enabled: bool,
    /// `redis://[user[:password]@]host:port[/db]` or `rediss://...`; empty means no Redis.
    pub url: String,
    /// ACL user name; overrides the URL's.
    pub username: String,
    /// Password (secret): set it through `REDIS_PASSWORD` or `BOTFLEET__STORAGE__REDIS__PASSWORD`.
    pub password: Secret,
    /// Database number (`REDIS_DB`); overrides the URL's.
    pub db: u8,
    /// Command timeout: past it a call is served by the fallback.
    pub timeout_ms: u64,
    /// Timeout of one connection attempt (TCP, TLS, AUTH, SELECT).
    pub connect_timeout_ms: u64,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
    /// Interval of the liveness PING that detects a dead idle connection.
    pub ping_interval_ms: u64,
    /// Number of multiplexed connections the handle spreads commands over.
    pub pool_size: usize,
    /// Commands buffered while reconnecting before calls are refused.
    pub max_command_buffer: usize,
    /// More seed addresses (`host:port`) besides the URL's: other Cluster nodes with a
    /// `redis-cluster://` URL, other sentinels with a `redis-sentinel://` URL.
    pub nodes: Vec<String>,
    /// Sentinel: name of the monitored master (overrides the URL's `sentinelServiceName`).
    pub sentinel_service: String,
    /// Sentinel: ACL user name for the sentinels themselves.
    pub sentinel_username: String,
    /// Sentinel: password of the sentinels themselves (secret: set it through
    /// `REDIS_SENTINEL_PASSWORD`); `password` stays the data servers' password.
    pub sentinel_password: Secret,
    /// Replicas that must have a write before it is acknowledged (`WAIT`); 0 (the default)
    /// acknowledges once the master has it, as plain Redis does.
    pub wait_replicas: u32,
    /// Longest `WAIT` for `wait_replicas`, milliseconds; a write still short of them is
    /// acknowledged (it is on the master) and counted as unreplicated.
    pub wait_timeout_ms: u64,
    /// Acknowledge a write only once the master wrote it to its append-only file, and the
    /// `wait_replicas` replicas to theirs (`WAITAOF`, Redis 7.2+ and Valkey, with
    /// `appendonly yes`), instead of `WAIT`'s replicas holding it in memory. Refused at start
    /// on a server without it.
    pub wait_aof: bool,
    /// Run the scripts that have a native twin as that command on a server that has it
    /// (`SET IFEQ`, `DELIFEQ`/`DELEX`, `MSETEX`: Redis 8.4+, Valkey 8.1+); false keeps every
    /// script.
    pub native_commands: bool,
    /// Connections of their own for the lock scripts, written and read on the caller's task
    /// (one server without TLS or `wait_replicas` only; elsewhere, and with 0, the lock
    /// scripts go through the pool). At most [`MAX_LOCK_CONNECTIONS`].
    pub lock_connections: usize,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            url: default_redis_url(),
            username: String::new(),
            password: Secret::default(),
            db: 0,
            timeout_ms: RedisSettings::default_timeout_ms(),
            connect_timeout_ms: 300,
            reconnect_min_ms: 100,
            reconnect_max_ms: 2_000,
            ping_interval_ms: 100,
            pool_size: 2,
            max_command_buffer: 10_000,
            nodes: Vec::new(),
            sentinel_service: String::new(),
            sentinel_username: String::new(),
            sentinel_password: Secret::default(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            wait_aof: false,
            native_commands: true,
            lock_connections: 8,
        }
    }
}

/// The most lock connections `storage.redis.lock_connections` may ask for.
pub const MAX_LOCK_CONNECTIONS: usize = 64;

impl RedisSettings {
    /// Default command timeout (ms).
    pub const fn default_timeout_ms() -> u64 {
        200
    }
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out of Debug unnoticed.
        let Self {
            enabled,
            url,
            username,
            password,
            db,
            timeout_ms,
            connect_timeout_ms,
            reconnect_min_ms,
            reconnect_max_ms,
            ping_interval_ms,
            pool_size,
            max_command_buffer,
            nodes,
            sentinel_service,
            sentinel_username,
            sentinel_password,
            wait_replicas,
            wait_timeout_ms,
            wait_aof,
            native_commands,
            lock_connections,
        } = self;
        f.debug_struct("RedisSettings")
            .field("enabled", enabled)
            .field("url", &redact_url(url))
            .field("username", username)
            .field("password", password)
            .field("db", db)
            .field("timeout_ms", timeout_ms)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("reconnect_min_ms", reconnect_min_ms)
            .field("reconnect_max_ms", reconnect_max_ms)
            .field("ping_interval_ms", ping_interval_ms)
            .field("pool_size", pool_size)
            .field("max_command_buffer", max_command_buffer)
            .field("nodes", nodes)
            .field("sentinel_service", sentinel_service)
            .field("sentinel_username", sentinel_username)
            .field("sentinel_password", sentinel_password)
            .field("wait_replicas", wait_replicas)
            .field("wait_timeout_ms", wait_timeout_ms)
            .field("wait_aof", wait_aof)
            .field("native_commands", native_commands)
            .field("lock_connections", lock_connections)
            .finish()
    }
}

/// `[storage.memory]`: the in-process fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Upper bound on the bytes held by the in-process keyspace; writes past it are refused.
    pub max_bytes: u64,
    /// Interval of the sweep that drops expired keys.
    pub sweep_interval_ms: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            sweep_interval_ms: 1_000,
        }
    }
}

/// `[storage.last_known]`: what this process read from or wrote to Redis stays readable, and
/// is decided on, through an outage (marked stale). The built-in services declare their keys;
/// `patterns` adds a host's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LastKnownSettings {
    /// Keep the last-known copy at all (false: an outage starts from an empty fallback).
    pub enabled: bool,
    /// Upper bound on the bytes of the copy; the least recently used keys leave first.
    pub max_bytes: u64,
    /// Keys changed on Redis are read back into the copy at most this often (the task queues
    /// ten times less often).
    pub refresh_interval_ms: u64,
    /// A collection (hash, set, sorted set, list) with more members is not copied.
    pub max_members: u64,
    /// Redis globs of further keys to keep (a host's own keys), beside the built-in ones.
    pub patterns: Vec<String>,
}

impl Default for LastKnownSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            refresh_interval_ms: 200,
            max_members: 10_000,
            patterns: Vec::new(),
        }
    }
}

/// `[storage.file]`: the durable fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    /// Directory of the journal and snapshot.
    pub dir: String,
    /// `fsync` the journal at most this often (0: before every acknowledgement). A write is
    /// acknowledged only after it reached the kernel, so `kill -9` never loses it; this bounds
    /// what a power loss can take.
    pub fsync_interval_ms: u64,
    /// Compact the journal once it is this large and twice the size of the live data.
    pub compact_min_bytes: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            dir: "data/store".into(),
            fsync_interval_ms: 1_000,
            compact_min_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[storage.outbox]`: writes accepted while Redis is unreachable, replayed when it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Most writes held; past it writes are refused with `StorageError::OutboxFull`.
    pub max_entries: usize,
    /// Writes sent to Redis per round trip during replay.
    pub replay_batch: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            replay_batch: 1_000,
        }
    }
}

/// `[keys]`: names of the shared keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// Prefix of the scheduler's keys (`bot:tasks:queue`). `{bot}` keeps them in one cluster
    /// slot; on Redis Cluster the prefix must carry such a hash tag.
    pub prefix: String,
    /// Prefix of botfleet's own bookkeeping keys (replay markers, fencing counters).
    pub internal_prefix: String,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            prefix: "bot".into(),
            internal_prefix: "botfleet".into(),
        }
    }
}

/// `[supervisor]`: restart policy of the actor tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// Most restarts within `within_secs` before the runtime stops with an error.
    pub max_restarts: u32,
    /// Window of the restart intensity.
    pub within_secs: u64,
    /// First restart delay; doubles per restart within the window, with jitter.
    pub backoff_base_ms: u64,
    /// Largest restart delay.
    pub backoff_max_ms: u64,
    /// An actor that makes no progress on a pending message for this long is restarted.
    pub watchdog_ms: u64,
    /// Deadline for each actor to stop at shutdown.
    pub stop_timeout_ms: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within_secs: 10,
            backoff_base_ms: 50,
            backoff_max_ms: 5_000,
            watchdog_ms: 10_000,
            stop_timeout_ms: 5_000,
        }
    }
}

/// `[presence]`: every instance records itself under `INTERNAL_PREFIX:instance:ID`, so that
/// operators (and other instances) can list the live daemons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Interval between two presence records.
    pub interval_ms: u64,
    /// Lifetime of a presence record; at least three intervals.
    pub ttl_secs: u64,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            ttl_secs: 30,
        }
    }
}

/// `[locks]`: the distributed lock manager (`Fleet::locks()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockSettings {
    /// What `acquire` does while Redis is unreachable.
    pub on_outage: LockOutage,
    /// Longest lock name, bytes.
    pub max_name_bytes: usize,
    /// Longest lock TTL, milliseconds.
    pub max_ttl_ms: u64,
    /// Shortest delay between two attempts of a waiter that heard no release notice.
    pub retry_min_ms: u64,
    /// Longest delay between two attempts of a waiter that heard no release notice.
    pub retry_max_ms: u64,
    /// Pub/sub channel on which releases are announced.
    pub release_channel: String,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            on_outage: LockOutage::Refuse,
            max_name_bytes: 512,
            max_ttl_ms: 86_400_000,
            retry_min_ms: 50,
            retry_max_ms: 250,
            release_channel: "botfleet:locks:released".into(),
        }
    }
}

/// What the lock manager does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockOutage {
    /// `acquire` fails at once with `LockError::Unavailable`.
    Refuse,
    /// `acquire` grants a process-local lock; its guard says so.
    Local,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is not set, e.g. `info` or `botfleet=debug,fred=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[api]`: the daemon's HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Listen address; loopback by default.
    pub bind: String,
    /// Bearer token required by mutating endpoints (secret: set `BOTFLEET__API__TOKEN`).
    pub token: Secret,
    /// Whether `GET /health` answers 503 while storage is degraded (serving from the fallback).
    pub degraded_is_unhealthy: bool,
    /// Largest request body accepted, in bytes (larger answers 413).
    pub body_limit_bytes: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// Period of the status snapshots pushed on the live stream (`/api/events/stream`).
    pub stream_interval_ms: u64,
    /// Time a new connection has to send its first request's headers (else 408, closed).
    pub header_timeout_ms: u64,
    /// Deadline of a request's whole body, from its headers' arrival (else 408, closed).
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open; 0 closes each after one request.
    pub keep_alive_ms: u64,
    /// Open connections served at once, across the workers; past it only `GET /health` is
    /// served (on a reserve of [`ApiSettings::HEALTH_RESERVE`] more), others answer 503.
    pub max_connections: usize,
}

impl ApiSettings {
    /// Connections accepted beyond `api.max_connections` for `/health` alone.
    pub const HEALTH_RESERVE: usize = 32;

    /// Default of `api.header_timeout_ms`.
    pub const fn default_header_timeout_ms() -> u64 {
        5_000
    }

    /// Default of `api.body_timeout_ms`.
    pub const fn default_body_timeout_ms() -> u64 {
        10_000
    }

    /// Default of `api.keep_alive_ms`: off, so that every request's headers are bounded by
    /// `api.header_timeout_ms` (the server bounds only a connection's first request's).
    pub const fn default_keep_alive_ms() -> u64 {
        0
    }

    /// Default of `api.max_connections`.
    pub const fn default_max_connections() -> usize {
        1_024
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            token: Secret::default(),
            degraded_is_unhealthy: false,
            body_limit_bytes: 65_536,
            workers: 2,
            stream_interval_ms: 1_000,
            header_timeout_ms: Self::default_header_timeout_ms(),
            body_timeout_ms: Self::default_body_timeout_ms(),
            keep_alive_ms: Self::default_keep_alive_ms(),
            max_connections: Self::default_max_connections(),
        }
    }
}

/// `[hazards]`: the hazard ticker (`Fleet::hazards()`): one leader across the fleet writes
/// `hazards-DIFFICULTY` every interval from provably fair seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HazardSettings {
    /// Whether this instance runs a ticker (it writes only while it is the leader).
    pub enabled: bool,
    /// Interval between two ticks, milliseconds; tick N is due at N x interval after the Unix
    /// epoch.
    pub interval_ms: u64,
    /// Lock that elects the leader (a `Fleet::locks()` lock).
    pub lock_name: String,
    /// TTL of the leader lock, milliseconds (extended by its watchdog while the leader lives).
    pub lock_ttl_ms: u64,
    /// Channel on which every tick is announced.
    pub channel: String,
    /// Ticks served by one server seed before it is rotated and revealed.
    pub rotate_every_ticks: u64,
    /// Lifetime of the seed commitments and revealed seeds, seconds.
    pub history_ttl_secs: u64,
    /// Lifetime of a player's fairness record `fairness:USER:AGENT`, seconds.
    pub fairness_ttl_secs: u64,
    /// The difficulties ticked, in order.
    pub difficulties: Vec<DifficultySettings>,
}

impl Default for HazardSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_ms: 5_000,
            lock_name: "hazards-ticker-lock".into(),
            lock_ttl_ms: 10_000,
            channel: "hazards-refreshed".into(),
            rotate_every_ticks: 720,
            history_ttl_secs: 604_800,
            fairness_ttl_secs: 604_800,
            difficulties: vec![
                DifficultySettings::new("EASY", 30, 3),
                DifficultySettings::new("MEDIUM", 25, 5),
                DifficultySettings::new("HARD", 22, 7),
                DifficultySettings::new("DAREDEVIL", 18, 9),
            ],
        }
    }
}

/// One `[[hazards.difficulties]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifficultySettings {
    /// Name, as in `hazards-NAME` (`EASY`).
    pub name: String,
    /// Columns of the board; hazards are column indices `0..columns`.
    pub columns: u32,
    /// Hazards per round; fewer than `columns`.
    pub hazards: u32,
}

impl DifficultySettings {
    /// A difficulty.
    pub fn new(name: &str, columns: u32, hazards: u32) -> Self {
        Self {
            name: name.into(),
            columns,
            hazards,
        }
    }
}

/// `[game_sessions]`: `gameSession:USER-AGENT` and `user-sessions:AGENT` (`Fleet::game_sessions()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GameSessionSettings {
    /// Lifetime of a session, seconds (renewed by every update).
    pub ttl_secs: u64,
}

impl Default for GameSessionSettings {
    fn default() -> Self {
        Self { ttl_secs: 3_600 }
    }
}

/// `[cache]`: the cache service (`Fleet::cache()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Most entries held in process.
    pub near_capacity: usize,
    /// Longest life of an entry in process, milliseconds (a safety net for a missed
    /// invalidation); an entry never outlives the TTL it was stored with.
    pub near_ttl_ms: u64,
    /// Pub/sub channel of invalidations: `{"key":"NAME"}`.
    pub channel: String,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            near_capacity: 10_000,
            near_ttl_ms: 60_000,
            channel: "cache-invalidate".into(),
        }
    }
}

/// `[scheduler]`: the task queue, its workers, bot state, sessions and events
/// (`Fleet::scheduler()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// A claimed task whose worker neither finishes nor extends it within this time goes back
    /// to the queue, milliseconds.
    pub visibility_timeout_ms: u64,
    /// Attempts before a failing task goes to the dead-letter set.
    pub max_attempts: u32,
    /// Delay before the first retry, milliseconds; doubled at each further attempt.
    pub backoff_base_ms: u64,
    /// Longest delay between retries, milliseconds.
    pub backoff_max_ms: u64,
    /// Largest `data` of a task, bytes.
    pub max_data_bytes: usize,
    /// Longest delay of a delayed task, milliseconds.
    pub max_delay_ms: u64,
    /// How long a completed task's hash stays (status `completed`), seconds; 0 deletes it.
    pub completed_ttl_secs: u64,
    /// How often an idle worker looks at the queue, milliseconds.
    pub poll_interval_ms: u64,
    /// Most tasks claimed by one script call.
    pub claim_batch: usize,
    /// Most queued tasks one claim looks at to find tasks of the types handled here.
    pub scan_limit: usize,
    /// Length of the `PREFIX:events` list.
    pub events_max_len: usize,
    /// Pub/sub channel that carries each event live.
    pub events_channel: String,
    /// Task types the HTTP API accepts (`POST /api/tasks`, `POST /api/bot/tasks/add`, the
    /// claims of `POST /api/tasks/claim`): names following [`task_type_problem`]'s rules, or
    /// `["*"]` for any such name. Default: seed 001's six ([`DEFAULT_TASK_TYPES`]).
    pub task_types: Vec<String>,
    /// Handlers run by the daemon itself, with no code: `[[scheduler.handlers]]`, each a
    /// command or a webhook per task of one type (`botfleet::actors::scheduler::external`).
    pub handlers: Vec<HandlerSettings>,
}

/// Seed 001's task types (`bot:task:{id}` field `type`): the default of
/// `scheduler.task_types`.
pub const DEFAULT_TASK_TYPES: &[&str] = &[
    "login",
    "job_check",
    "job_accept",
    "job_reject",
    "navigation",
    "screenshot",
];

/// The entry of `scheduler.task_types` that opens the API to every well-formed type name.
pub const ANY_TASK_TYPE: &str = "*";

/// Longest task type name the HTTP API accepts, bytes.
pub const TASK_TYPE_MAX_BYTES: usize = 128;

/// Why `name` is not a task type name the HTTP API accepts (1 to 128 characters among
/// `A-Z a-z 0-9 _ - . :`), or `None` when it is one.
pub fn task_type_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > TASK_TYPE_MAX_BYTES {
        return Some(format!(
            "expected 1 to {TASK_TYPE_MAX_BYTES} characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Some(format!(
            "{c:?} is not allowed: expected characters among A-Z a-z 0-9 _ - . :"
        ));
    }
    None
}

impl SchedulerSettings {
    /// Whether `scheduler.task_types` is `["*"]`: any well-formed type name is accepted.
    pub fn open_task_types(&self) -> bool {
        self.task_types.iter().any(|t| t == ANY_TASK_TYPE)
    }

    /// Whether the HTTP API accepts tasks of `task_type`: listed in `scheduler.task_types`,
    /// or well formed when the list is `["*"]`.
    pub fn allows_task_type(&self, task_type: &str) -> bool {
        if self.open_task_types() {
            task_type_problem(task_type).is_none()
        } else {
            self.task_types.iter().any(|t| t == task_type)
        }
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: 30_000,
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_data_bytes: 65_536,
            max_delay_ms: 2_592_000_000,
            completed_ttl_secs: 3_600,
            poll_interval_ms: 100,
            claim_batch: 100,
            scan_limit: 1_000,
            events_max_len: 1_000,
            events_channel: "bot:events:live".into(),
            task_types: DEFAULT_TASK_TYPES.iter().map(|t| t.to_string()).collect(),
            handlers: Vec::new(),
        }
    }
}

/// Longest `timeout_ms` of a `[[scheduler.handlers]]` entry: a day.
pub const HANDLER_MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Largest `concurrency` of a `[[scheduler.handlers]]` entry.
pub const HANDLER_MAX_CONCURRENCY: usize = 1_024;

/// One `[[scheduler.handlers]]` entry: how the daemon runs the tasks of one type, with exactly
/// one of `command` (a process per task) and `url` (a POST per task). Its `Debug` and
/// [`Settings::redacted`] hide a password in the URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerSettings {
    /// The task type handled (`type` in the file).
    #[serde(rename = "type")]
    pub task_type: String,
    /// Tasks of this type run at once in this process.
    pub concurrency: usize,
    /// Longest run of one attempt, milliseconds: a command is then killed (its whole process
    /// group), a webhook call abandoned, and the attempt fails.
    pub timeout_ms: u64,
    /// The command's argv (`["python3", "handle.py"]`), run without a shell: the task JSON on
    /// stdin, `BOTFLEET_TASK_ID`, `BOTFLEET_TASK_TYPE` and `BOTFLEET_TASK_ATTEMPT` in its
    /// environment; exit 0 completes the task, another code fails the attempt with the tail of
    /// its stderr as the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The webhook: the task JSON is POSTed to it; a 2xx answer completes the task, anything
    /// else fails the attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl std::fmt::Debug for HandlerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerSettings")
            .field("task_type", &self.task_type)
            .field("concurrency", &self.concurrency)
            .field("timeout_ms", &self.timeout_ms)
            .field("command", &self.command)
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

impl Default for HandlerSettings {
    fn default() -> Self {
        Self {
            task_type: String::new(),
            concurrency: 1,
            timeout_ms: 30_000,
            command: None,
            url: None,
        }
    }
}

/// `[shared_data]`: one fetcher per fleet writes the source's JSON to Redis in the seed's
/// layout; named readers serve it from memory while fresh (`Fleet::shared_data()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedDataSettings {
    /// Start the fetcher and the readers. Off by default: a fleet without a source has
    /// nothing to fetch.
    pub enabled: bool,
    /// Key of the snapshot `{"timestamp", "game_data", "processed_data"}`.
    pub shared_key: String,
    /// Key of the source's JSON alone (the seed's legacy key).
    pub legacy_key: String,
    /// Time to live of both keys, seconds.
    pub ttl_secs: u64,
    /// A snapshot younger than this is fresh, milliseconds.
    pub fresh_ms: u64,
    /// Pause between two fetches of the leader, milliseconds.
    pub fetch_interval_ms: u64,
    /// Pub/sub channel of the change notices.
    pub channel: String,
    /// Lock that elects the one fetcher of the fleet.
    pub leader_lock: String,
    /// TTL of the leader lock, milliseconds (renewed every third of it).
    pub leader_ttl_ms: u64,
    /// Names of the readers started with the fleet (used in logs and metrics).
    pub readers: Vec<String>,
    /// Interval of the check of `shared_key` that finds snapshots written by anyone (a seed
    /// bot's `SET` sends no notice), milliseconds; 0 turns the check off, else at most half
    /// of `fresh_ms`. With keyspace notifications in use it is only the safety net, run
    /// every four intervals.
    pub watch_interval_ms: u64,
    /// Whether readers also follow the key through Redis keyspace notifications.
    pub keyspace_events: KeyspaceEvents,
    /// `[shared_data.source]`.
    pub source: SharedSourceSettings,
    /// `[shared_data.extract]`.
    pub extract: ExtractSettings,
}

impl Default for SharedDataSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            shared_key: "fivem_red_green_shared_data".into(),
            legacy_key: "api_response".into(),
            ttl_secs: 300,
            fresh_ms: 10_000,
            fetch_interval_ms: 2_000,
            channel: "botfleet:shared-data:changed".into(),
            leader_lock: "botfleet:shared-data:leader".into(),
            leader_ttl_ms: 5_000,
            readers: ["EN", "VI", "JP", "ID"].map(String::from).to_vec(),
            watch_interval_ms: 500,
            keyspace_events: KeyspaceEvents::Auto,
            source: SharedSourceSettings::default(),
            extract: ExtractSettings::default(),
        }
    }
}

/// Whether the shared-data readers follow `shared_key` through Redis keyspace notifications
/// (`__keyspace@DB__:KEY`), which announce a seed bot's `SET` the moment it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyspaceEvents {
    /// Use them when the server already emits them for strings (`CONFIG GET
    /// notify-keyspace-events` holds `K` and `$` or `A`); the server's configuration is
    /// never changed.
    Auto,
    /// Never: the key is checked every `watch_interval_ms`.
    Off,
    /// Add `K$` to the server's `notify-keyspace-events` (`CONFIG SET`) when they are
    /// missing, then use them: this changes the server for every client.
    Enable,
}

/// `[shared_data.source]`: the HTTP JSON endpoint the fetcher polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedSourceSettings {
    /// `http://` or `https://` URL; empty: the host registers an async function instead.
    pub url: String,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// Attempts per fetch of the fetcher (a reader's direct fetch makes one).
    pub attempts: u32,
    /// Delay before the second attempt, doubled before each next one, milliseconds.
    pub backoff_base_ms: u64,
    /// Longest delay between two attempts, milliseconds.
    pub backoff_max_ms: u64,
    /// Request headers, as `[name, value]` pairs.
    pub headers: Vec<(String, String)>,
    /// Query parameters, as `[name, value]` pairs, in order.
    pub query: Vec<(String, String)>,
}

impl Default for SharedSourceSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout_ms: 10_000,
            attempts: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 5_000,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

/// `[shared_data.extract]`: how `processed_data` is built from the source's JSON (JSON
/// pointers, RFC 6901), unless the host registers an extractor function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractSettings {
    /// Pointer to the round number (`issue_number`).
    pub issue_number: String,
    /// Pointer to the list of colors (`colors`: the last one, upper-cased, with its emoji).
    pub colors: String,
    /// Pointer to the result (`result_format`).
    pub result_format: String,
    /// Constant `game_type`.
    pub game_type: String,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            issue_number: "/data/records/0/issue".into(),
            colors: "/data/records/0/resultFormatValueI18n".into(),
            result_format: "/data/records/0/value".into(),
            game_type: "RG5M".into(),
        }
    }
}

/// `[heartbeat]`: this process writes `heartbeat:PID` (seed 004) and watches its peers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    /// Whether this process sends heartbeats and runs the peer monitor.
    pub enabled: bool,
    /// Interval between two heartbeats, milliseconds.
    pub interval_ms: u64,
    /// Lifetime of a heartbeat key, seconds; at least three intervals.
    pub ttl_secs: u64,
    /// A peer whose last heartbeat is older than this many intervals is stale.
    pub stale_after_intervals: u64,
    /// Interval between two scans of the peers, milliseconds.
    pub monitor_interval_ms: u64,
    /// Status written in the heartbeat until the host sets another.
    pub status: String,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 10_000,
            ttl_secs: 30,
            stale_after_intervals: 2,
            monitor_interval_ms: 5_000,
            status: "active".into(),
        }
    }
}

/// `[identities]`: the participant identity registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Lifetime of an identity entry, seconds.
    pub ttl_secs: u64,
    /// Largest identity record (JSON), bytes.
    pub max_bytes: usize,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            max_bytes: 65_536,
        }
    }
}

/// `[admin]`: admin messages to bot processes and this process's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Lifetime of a bot's message queue after the last message sent to it, seconds.
    pub queue_ttl_secs: u64,
    /// Largest message, bytes.
    pub max_message_bytes: usize,
    /// Interval between two reads of this process's queue (the safety net behind pub/sub),
    /// milliseconds.
    pub poll_interval_ms: u64,
    /// Messages the inbox holds for the host before it waits for the host to read.
    pub inbox_capacity: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            queue_ttl_secs: 3_600,
            max_message_bytes: 65_536,
            poll_interval_ms: 1_000,
            inbox_capacity: 1_024,
        }
    }
}

/// `[history]`: the archive of what leaves Redis (sessions, task records, events, hazard
/// rounds and their revealed seeds) in SQLite or PostgreSQL (`Fleet::history()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Whether records are archived (and the retention job runs).
    pub enabled: bool,
    /// `postgres://USER@HOST:PORT/DB` or `sqlite://PATH`; empty: the SQLite file
    /// `history.sqlite3` in `history.dir`.
    pub url: String,
    /// Directory of the default SQLite file and of the spool that holds batches while the
    /// database is unreachable (with `storage.fallback = "file"`).
    pub dir: String,
    /// Most records written by one transaction.
    pub batch_size: usize,
    /// Longest time a record waits for its batch to fill, milliseconds.
    pub flush_interval_ms: u64,
    /// Records waiting for the writer; past this, records are dropped and counted.
    pub queue_capacity: usize,
    /// Wait between two attempts while the database is unreachable, milliseconds.
    pub retry_interval_ms: u64,
    /// Longest wait for a database connection, milliseconds.
    pub connect_timeout_ms: u64,
    /// Connections to the database.
    pub pool_size: u32,
    /// Rows older than this many days are deleted by the retention job; 0 keeps them all.
    pub retention_days: u64,
    /// Period of the retention job (once across the fleet per period), seconds.
    pub retention_interval_secs: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            dir: "data/history".into(),
            batch_size: 500,
            flush_interval_ms: 200,
            queue_capacity: 100_000,
            retry_interval_ms: 1_000,
            connect_timeout_ms: 5_000,
            pool_size: 4,
            retention_days: 90,
            retention_interval_secs: 3_600,
        }
    }
}
