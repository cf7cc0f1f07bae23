//! Storage: the one path by which state reaches Redis, and the fallback that serves while Redis
//! is unreachable.
//!
//! [`Storage`] is a cheap, cloneable handle; every actor holds a clone, and nothing else in
//! botfleet reaches Redis (`fred` is named in this module only). It is in one of four
//! [`Mode`]s:
//!
//! ```text
//!            outage: timeout, lost connection          Redis answers again
//!   redis ─────────────────────────────▶ degraded ───────────────────▶ resyncing
//!     ▲                                      ▲                              │
//!     │                                      └──────── outage again ────────┤
//!     └──────────────────────── outbox empty ───────────────────────────────┘
//!
//!   fallback: no Redis configured (storage.redis.enabled = false, or an empty URL);
//!             the fallback is the store.
//! ```
//!
//! - `redis`: every call goes to Redis with a command timeout (`storage.redis.timeout_ms`).
//!   The first call that meets an outage (a connection error, the timeout, a lost connection)
//!   switches the mode and is itself served by the fallback, so no caller waits much longer
//!   than the timeout and none sees an error because of the outage. An error reply of Redis
//!   (WRONGTYPE, a script error) is not an outage: it is the caller's
//!   [`StorageError::Command`].
//! - `degraded`: calls are served by the fallback (`local::Local`: memory, or memory plus a
//!   journal on disk); writes are also recorded in the outbox. A monitor task PINGs Redis and
//!   listens to fred's connection events. [`Storage::open`] starts here when Redis is
//!   unreachable, or when the file fallback holds an outbox to replay.
//! - `resyncing`: Redis answers again; the outbox is replayed in order, in batches of
//!   `storage.outbox.replay_batch` (the `outbox` module explains why replay is idempotent,
//!   keeps absolute expiry and respects newer versions). Calls are still served by the
//!   fallback; a write is held back for at most 100 ms (and never past the command timeout)
//!   so that writers cannot outpace the replay, then joins the outbox. Once the outbox is empty
//!   the fallback keyspace is emptied, since Redis holds everything again, and the mode is
//!   `redis`.
//!
//! Each change is a typed [`StorageEvent::ModeChanged`], sent to [`Storage::events`] and
//! logged once (WARN into `degraded`, INFO otherwise) and counted
//! ([`StorageStats::mode_changes`]); a finished replay is a [`StorageEvent::Resynced`].
//!
//! # One op model
//!
//! Every typed call ([`Storage::get`], [`Storage::hset`], [`Storage::eval`], ...) builds one
//! [`Op`], a serializable enum with a variant per command. On Redis an op is one raw command
//! (the `redis` module); on the fallback the same op is applied to the [`Keyspace`], which
//! answers as Redis does: same replies, same deletion of emptied collections, same WRONGTYPE
//! errors. The `storage_parity` suite of the integration tests runs one table of cases
//! against Redis, the memory fallback and the file fallback and compares every reply.
//!
//! A [`Script`] touches several keys atomically and is written twice: Lua for Redis, and a
//! Rust function over the keyspace for the fallback, run under the keyspace lock so that it is
//! atomic too. On Redis it is sent with `EVALSHA`, loaded on the first `NOSCRIPT`.
//!
//! Calls for particular needs:
//!
//! - [`Storage::set_latest`] and [`Storage::eval_latest`]: writes that matter only at their
//!   newest (the shared-data snapshot). While Redis is unreachable each one replaces the
//!   outbox entry of the previous write with the same *supersede tag* (`SET` and the key, or
//!   the script and its keys), so the replay writes once whatever the outage's length and the
//!   outbox does not grow with it. The file journal records the replacement, so it survives
//!   a crash.
//! - [`Storage::eval_on_redis`]: a script that must never run on the fallback nor be replayed
//!   (locks: a lock granted locally and replayed later would exclude nobody). It fails with
//!   [`StorageError::Unavailable`] at once when the mode is not `redis`, and when Redis fails
//!   mid-call (the mode then degrades as usual). [`Storage::eval_lock`] is the same for
//!   scripts that are safe to send twice (the lock scripts): it runs them on a lock lane, a
//!   connection of its own that the calling task writes and reads itself
//!   (`storage.redis.lock_connections`, the `lane` module).
//! - [`Storage::compare_and_set`]: a string written only if it still holds what the caller
//!   read, for records several processes change (game sessions, fairness seeds). Its replay
//!   after an outage compares again, so a write another process made stale is refused.
//! - [`Storage::set_many`]: many keys with one TTL in one script call (one per cluster slot).
//!   fred writes to the socket after each command of a pipeline, so thousands of small `SET`s
//!   cost a system call each; one script call does not.
//! - [`Storage::execute_batch`]: plain ops in one round trip (a pipeline on Redis).
//! - [`Storage::server_time_ms`]: Redis's clock (`TIME`), the local clock on the fallback, so
//!   that processes on several hosts compare times on one clock.
//!
//! # Last-known state
//!
//! What the process knew before an outage stays known through it: a bounded copy of the keys
//! the services declare ([`Storage::remember`]), written through while Redis answers and
//! used by the fallback during an outage ([`Remembered`] says how), saved with the file
//! fallback, and written back to a Redis that lost its data. [`Storage::freshness`] says
//! whether answers come from it; [`Storage::read_known`] reads shared keys (task queues)
//! merged with it. The `last_known` module explains the mechanism.
//!
//! # Bounds
//!
//! `storage.memory.max_bytes` (the fallback keyspace) and `storage.outbox.max_entries` refuse
//! writes with [`StorageError::MemoryFull`] and [`StorageError::OutboxFull`], counted in
//! [`StorageStats::refused_writes`]: nothing is dropped silently. Expired keys of the fallback
//! are swept every `storage.memory.sweep_interval_ms`.
//!
//! # Pub/sub
//!
//! Subscribers always read from an in-process bus ([`Storage::subscribe`]). In `redis` mode a
//! publish goes to Redis and comes back through the subscriber connection (re-subscribed after
//! every reconnect), so other processes see it; otherwise it is delivered on the bus directly.
//! Messages are not stored, so they are not replayed. A subscriber that falls more than 4,096
//! messages behind loses the oldest ([`StorageStats::lagged_messages`]). Redis's keyspace
//! notifications are subscribed like any channel ([`Storage::keyspace_channel`] names it;
//! [`Storage::server_config`] reads whether the server emits them) and arrive on the same bus.
//!
//! # Known limit
//!
//! A write that times out is ambiguous: Redis may have applied it. It is then applied to the
//! fallback and replayed, so a non-idempotent write (`INCRBY`, `LPUSH`) caught in flight at
//! the moment of an outage can be applied twice. Every other write is applied exactly once.
//!
//! # Submodules
//!
//! | file | what it holds |
//! |---|---|
//! | `commands.rs` | the typed calls, each a thin wrapper that builds an [`Op`] |
//! | `op.rs` | [`Op`], [`Expiry`], [`Reply`] |
//! | `script.rs` | [`Script`]: Lua and its Rust twin |
//! | `keys.rs` | [`KeySchema`]: the key names built from `[keys]`; [`hash_slot`] |
//! | `keyspace.rs` | [`Keyspace`]: the in-process store that answers as Redis does |
//! | `local.rs` | the fallback: keyspace, outbox and journal behind one mutex |
//! | `last_known.rs` | the last-known copy: declared keys, bound, seeding, saved file |
//! | `recall.rs` | its Redis side: the refresher, the data epoch, the write-back |
//! | `outbox.rs` | writes waiting for Redis, and their idempotent replay |
//! | `journal.rs` | the file fallback's journal, snapshot and compaction |
//! | `monitor.rs` | the monitor task: connection events, PINGs, sweeps, resync |
//! | `redis.rs` | the Redis backend (fred): fast failure, Sentinel, Cluster, several daemons |
//! | `lane.rs` | the lock lanes: the lock scripts' own connections, read on the caller's task |
//! | `replicas.rs` | `storage.redis.wait_replicas`: `WAIT`, and masters that lost their replicas |
//! | `server.rs` | which server answers (Redis or Valkey, its version) and which native commands it has |
//! | `native.rs` | [`Native`]: the native commands some scripts run as, where the server has them |
//! | `glob.rs` | Redis-style glob matching, for `SCAN` on the fallback and `storage.versioned` |

mod commands;
mod glob;
mod journal;
mod keys;
mod keyspace;
mod lane;
mod last_known;
mod local;
mod monitor;
mod native;
mod op;
mod outbox;
mod recall;
mod redis;
mod replicas;
mod script;
mod server;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{broadcast, Notify};

pub use glob::glob_match;
pub use keys::{group_by_slot, hash_slot, KeySchema};
pub use keyspace::{Keyspace, LocalError};
pub use lane::LANE_CLIENT_NAME;
pub use last_known::{Freshness, Remembered};
pub use native::Native;
pub use op::{Expiry, Op, Reply};
pub use script::{LocalScript, Script};
pub use server::{NativeChoices, ServerKind, ServerStats};

use crate::settings::{FallbackKind, StorageSettings, VersionedKey};
use last_known::LastKnown;
use local::{Local, OutboxMode};
use outbox::VersionCheck;
use redis::{Failure, RedisBackend};

/// Longest a write is held back while the outbox is replayed (then it joins the outbox).
/// Enough to keep writers from outpacing the replay, well inside the 300 ms call bound.
const RESYNC_HOLD_MS: u64 = 100;

/// Capacity of each pub/sub channel's in-process bus; a subscriber that falls further behind
/// loses the oldest messages (counted in [`StorageStats::lagged_messages`]).
const BUS_CAPACITY: usize = 4_096;

/// An error a caller of the storage handle can see. An outage of Redis is not one of them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A setting is wrong (bad URL, failed AUTH, TLS error): start-up fails.
    #[error("{key}: {message}")]
    Config {
        /// The setting at fault.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The command was refused (Redis's or the fallback's error reply, e.g. WRONGTYPE).
    #[error("{0}")]
    Command(String),
    /// The fallback keyspace is at `storage.memory.max_bytes`: the write was refused.
    #[error("storage full: the fallback holds {max_bytes} bytes (storage.memory.max_bytes); write refused")]
    MemoryFull {
        /// The bound.
        max_bytes: u64,
    },
    /// The outbox is at `storage.outbox.max_entries`: the write was refused.
    #[error("outbox full: {max_entries} writes wait for Redis (storage.outbox.max_entries); write refused")]
    OutboxFull {
        /// The bound.
        max_entries: usize,
    },
    /// The file fallback could not read or write its journal.
    #[error("file store: {0}")]
    File(String),
    /// Redis is unreachable (or not configured) and the call must not be served by the
    /// fallback: only [`Storage::eval_on_redis`] answers this.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The handle was opened outside a multi-threaded tokio runtime.
    #[error("storage must be opened on a multi-threaded tokio runtime: {0}")]
    Runtime(String),
}

impl StorageError {
    fn file(e: std::io::Error) -> Self {
        StorageError::File(e.to_string())
    }
}

impl From<LocalError> for StorageError {
    fn from(e: LocalError) -> Self {
        StorageError::Command(e.to_string())
    }
}

/// Where a call was served ([`Storage::eval_withholding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// Redis answered.
    Redis,
    /// The fallback answered (with Redis configured, the call waits in the outbox for it).
    Fallback,
    /// The fallback answered after the call failed on Redis mid-call (a lost connection, the
    /// command timeout): Redis may have run it too, and other processes may already see its
    /// effect there. The outbox replays it all the same.
    FallbackAfterFailure,
}

/// The storage mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connected: Redis serves every call.
    Redis,
    /// Redis unreachable: the fallback serves, writes go to the outbox.
    Degraded,
    /// Redis back: the outbox is being replayed.
    Resyncing,
    /// No Redis configured: the fallback is the store.
    Fallback,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Redis,
            1 => Mode::Degraded,
            2 => Mode::Resyncing,
            _ => Mode::Fallback,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Mode::Redis => 0,
            Mode::Degraded => 1,
            Mode::Resyncing => 2,
            Mode::Fallback => 3,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Redis => "redis",
            Mode::Degraded => "degraded",
            Mode::Resyncing => "resyncing",
            Mode::Fallback => "fallback",
        })
    }
}

/// A typed storage event. [`StorageEvent::emit`] logs it once and counts it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum StorageEvent {
    /// The mode changed.
    ModeChanged {
        /// Previous mode.
        from: Mode,
        /// New mode.
        to: Mode,
        /// Why.
        reason: String,
    },
    /// The outbox was replayed to Redis.
    Resynced {
        /// Entries replayed (applied or skipped as already applied / expired / older).
        entries: u64,
        /// Time from Redis answering again to the mode being `redis`.
        millis: u64,
    },
}

/// Counters of the storage handle, as one serializable value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageStats {
    /// Current mode.
    pub mode: Option<Mode>,
    /// Mode changes since start.
    pub mode_changes: u64,
    /// Writes waiting for Redis.
    pub outbox_len: usize,
    /// Bytes held by the fallback keyspace.
    pub fallback_bytes: u64,
    /// Writes refused because a bound was reached.
    pub refused_writes: u64,
    /// Outbox entries replayed since start.
    pub replayed: u64,
    /// Calls served by the fallback while Redis was configured.
    pub fallback_calls: u64,
    /// Pub/sub messages a slow subscriber missed.
    pub lagged_messages: u64,
    /// Writes that fewer replicas than `storage.redis.wait_replicas` acknowledged within
    /// `wait_timeout_ms` (acknowledged all the same: the master had them).
    pub unreplicated_writes: u64,
    /// Masters now taken to be missing replicas: their last `WAIT` came back short, and their
    /// writes skip it (counted in `unreplicated_writes`) until a probe finds the replicas back.
    /// Always 0 without `storage.redis.wait_replicas`.
    pub masters_missing_replicas: u64,
    /// Writes the master had not written to its append-only file within `wait_timeout_ms`
    /// (acknowledged all the same); always 0 without `storage.redis.wait_aof`.
    pub unsynced_writes: u64,
    /// The server (name, version) and the form each script with a native twin runs in;
    /// `None` without Redis or before it first answered.
    pub server: Option<ServerStats>,
    /// Keys held by the last-known copy (`storage.last_known`).
    pub last_known_keys: usize,
    /// Bytes held by the last-known copy (at most `storage.last_known.max_bytes`).
    pub last_known_bytes: u64,
    /// Keys the last-known copy dropped to stay within its bound, since start.
    pub last_known_evicted: u64,
    /// Keys changed on Redis and not yet read back into the last-known copy.
    pub last_known_pending: usize,
}

impl StorageEvent {
    /// Logs the event (WARN into `degraded`, INFO otherwise) and counts it.
    pub fn emit(&self, stats: &Counters) {
        match self {
            StorageEvent::ModeChanged { from, to, reason } => {
                stats.mode_changes.fetch_add(1, Ordering::Relaxed);
                if *to == Mode::Degraded {
                    tracing::warn!(backend = "redis", %from, %to, error = %reason, "storage degraded: serving from the fallback");
                } else {
                    tracing::info!(backend = "redis", %from, %to, %reason, "storage mode changed");
                }
            }
            StorageEvent::Resynced { entries, millis } => {
                tracing::info!(
                    backend = "redis",
                    entries,
                    millis,
                    "outbox replayed to redis"
                );
            }
        }
    }
}

/// Atomic counters behind [`StorageStats`].
#[derive(Debug, Default)]
pub struct Counters {
    mode_changes: AtomicU64,
    refused_writes: AtomicU64,
    replayed: AtomicU64,
    fallback_calls: AtomicU64,
    lagged_messages: AtomicU64,
}

/// How long a key lives, as [`Storage::ttl`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No such key.
    Missing,
    /// The key has no expiry.
    Persistent,
    /// Time left.
    Expires(Duration),
}

/// The storage handle. Cheap to clone; every clone shares one state.
#[derive(Clone, Debug)]
pub struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mode: AtomicU8,
    redis: Option<RedisBackend>,
    local: Local,
    last_known: Arc<LastKnown>,
    refresh_interval: Duration,
    max_members: u64,
    keys: KeySchema,
    versioned: Vec<VersionedKey>,
    replay_batch: usize,
    counters: Counters,
    events: broadcast::Sender<StorageEvent>,
    bus: DashMap<String, broadcast::Sender<String>>,
    wake: Notify,
    stop: Notify,
    stopped: std::sync::atomic::AtomicBool,
    mode_changed: Notify,
    resync_wait: Duration,
    resync: tokio::sync::Mutex<()>,
    ping_interval: Duration,
    sweep_interval: Duration,
}

impl Storage {
    /// Opens the storage: the fallback, then Redis when configured. Must run on a
    /// multi-threaded tokio runtime (fred's connection tasks live there, not on an actix
    /// arbiter). With Redis unreachable it starts `degraded` and keeps connecting; a
    /// misconfiguration fails with [`StorageError::Config`] naming the setting.
    pub async fn open(
        settings: &StorageSettings,
        keys: &KeySchema,
    ) -> Result<Storage, StorageError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| StorageError::Runtime(e.to_string()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(StorageError::Runtime(
                "the current runtime is single-threaded".into(),
            ));
        }
        let dir = std::path::Path::new(&settings.file.dir);
        let last_known = Arc::new(LastKnown::open(
            &settings.last_known,
            (settings.fallback == FallbackKind::File).then_some(dir),
        ));
        let local = match settings.fallback {
            FallbackKind::Memory => Local::memory(
                settings.memory.max_bytes,
                settings.outbox.max_entries,
                last_known.clone(),
            ),
            FallbackKind::File => Local::file(
                dir,
                settings.file.fsync_interval_ms,
                settings.file.compact_min_bytes,
                settings.memory.max_bytes,
                settings.outbox.max_entries,
                last_known.clone(),
            )
            .map_err(|e| StorageError::Config {
                key: "storage.file.dir",
                message: format!("{}: {e}", settings.file.dir),
            })?,
        };
        let use_redis = settings.redis.enabled && !settings.redis.url.trim().is_empty();
        let (redis, mode) = if use_redis {
            let (backend, connected) = RedisBackend::connect(&settings.redis).await?;
            if connected {
                // What the server is decides the native commands; a server that cannot
                // honour `wait_aof` is refused here, naming the setting. An outage meanwhile
                // leaves it to the first resync.
                if let Ok(Some(problem)) = backend.detect_at_start().await {
                    backend.quit().await;
                    return Err(StorageError::Config {
                        key: "storage.redis.wait_aof",
                        message: problem,
                    });
                }
            }
            let mode = if connected && local.outbox_len() == 0 {
                Mode::Redis
            } else {
                Mode::Degraded
            };
            (Some(backend), mode)
        } else {
            (None, Mode::Fallback)
        };
        let (events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            mode: AtomicU8::new(mode.as_u8()),
            redis,
            local,
            last_known,
            refresh_interval: Duration::from_millis(settings.last_known.refresh_interval_ms.max(1)),
            max_members: settings.last_known.max_members,
            keys: keys.clone(),
            versioned: settings.versioned.clone(),
            replay_batch: settings.outbox.replay_batch.max(1),
            counters: Counters::default(),
            events,
            bus: DashMap::new(),
            wake: Notify::new(),
            stop: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            mode_changed: Notify::new(),
            resync_wait: Duration::from_millis(settings.redis.timeout_ms.clamp(1, RESYNC_HOLD_MS)),
            resync: tokio::sync::Mutex::new(()),
            ping_interval: Duration::from_millis(settings.redis.ping_interval_ms.max(10)),
            sweep_interval: Duration::from_millis(settings.memory.sweep_interval_ms.max(10)),
        });
        let storage = Storage { inner };
        match mode {
            Mode::Redis => tracing::info!(backend = "redis", "storage connected to redis"),
            Mode::Degraded => tracing::warn!(
                backend = "redis",
                outbox = storage.inner.local.outbox_len(),
                "storage starting degraded: redis unreachable or outbox to replay; serving from the fallback"
            ),
            _ => tracing::info!(backend = "fallback", "storage running without redis"),
        }
        storage.spawn_monitor();
        storage.spawn_refresher();
        Ok(storage)
    }

    /// The key schema (every key name, from `[keys]`).
    pub fn keys(&self) -> &KeySchema {
        &self.inner.keys
    }

    /// Whether Redis is a Cluster: keys of one script must then share a hash slot.
    pub fn is_clustered(&self) -> bool {
        self.inner.redis.as_ref().is_some_and(|r| r.is_clustered())
    }

    /// Keeps the last-known value of every key matching the Redis glob `pattern` through an
    /// outage, used as `kind` says (see [`Remembered`]). The built-in services declare their
    /// keys when the fleet starts; a host declares its own here or in
    /// `storage.last_known.patterns`. Without effect when `storage.last_known.enabled` is
    /// false.
    pub fn remember(&self, pattern: &str, kind: Remembered) {
        self.inner.last_known.remember(pattern, kind);
    }

    /// [`Storage::remember`] for the one key `key`, as [`Remembered::State`]: for keys that
    /// follow no pattern (the cache's). Up to 100,000 such keys are kept.
    pub fn remember_key(&self, key: &str) {
        self.inner.last_known.remember_key(key);
    }

    /// Tells the last-known copy that a script changed `keys` on Redis without naming them
    /// among its keys (the task hashes a claim picks from a queue): while Redis serves, the
    /// refresher reads the remembered ones back within `storage.last_known.refresh_interval_ms`,
    /// as it does the keys a script names.
    pub fn note_changed<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if self.mode() == Mode::Redis {
            self.inner.last_known.note_changed(keys);
        }
    }

    /// Tells the last-known copy that a script just deleted `keys` on Redis (its reply said
    /// so): the remembered ones are forgotten at once instead of being read back. Only while
    /// Redis serves; on the fallback the keyspace holds the truth.
    pub fn note_deleted<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if self.mode() == Mode::Redis {
            self.inner.last_known.note_deleted(keys);
        }
    }

    /// Whether answers now come from last-known state: true while Redis is configured but
    /// not serving (`degraded`, `resyncing`), with the last moment it was known to answer.
    pub fn freshness(&self) -> Freshness {
        let stale =
            self.inner.redis.is_some() && matches!(self.mode(), Mode::Degraded | Mode::Resyncing);
        Freshness {
            stale,
            as_of_ms: if stale {
                self.inner.last_known.as_of_ms()
            } else {
                None
            },
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.inner.mode.load(Ordering::Acquire))
    }

    /// Storage events (mode changes, resyncs) from now on.
    pub fn events(&self) -> broadcast::Receiver<StorageEvent> {
        self.inner.events.subscribe()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StorageStats {
        let c = &self.inner.counters;
        let (last_known_keys, last_known_bytes, last_known_evicted, last_known_pending) =
            self.inner.last_known.usage();
        StorageStats {
            mode: Some(self.mode()),
            mode_changes: c.mode_changes.load(Ordering::Relaxed),
            outbox_len: self.inner.local.outbox_len(),
            fallback_bytes: self.inner.local.used_bytes(),
            refused_writes: c.refused_writes.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            fallback_calls: c.fallback_calls.load(Ordering::Relaxed),
            lagged_messages: c.lagged_messages.load(Ordering::Relaxed),
            unreplicated_writes: self
                .inner
                .redis
                .as_ref()
                .map_or(0, |r| r.unreplicated_writes()),
            masters_missing_replicas: self
                .inner
                .redis
                .as_ref()
                .map_or(0, |r| r.masters_missing_replicas()),
            unsynced_writes: self.inner.redis.as_ref().map_or(0, |r| r.unsynced_writes()),
            server: self.inner.redis.as_ref().and_then(|r| r.server_stats()),
            last_known_keys,
            last_known_bytes,
            last_known_evicted,
            last_known_pending,
        }
    }

    /// Executes one op (the typed methods below are thin wrappers of this).
    pub async fn execute(&self, op: Op) -> Result<Reply, StorageError> {
        self.run(op, None).await
    }

    async fn run(&self, op: Op, script: Option<LocalScript>) -> Result<Reply, StorageError> {
        self.run_tagged(op, script, None).await
    }

    /// [`Storage::run`], where a write taken by the outbox replaces the waiting entry of the
    /// last write with the same `supersede` tag.
    async fn run_tagged(
        &self,
        op: Op,
        script: Option<LocalScript>,
        supersede: Option<&str>,
    ) -> Result<Reply, StorageError> {
        Ok(self
            .run_served(op, script, supersede, &Vec::new, false)
            .await?
            .0)
    }

    /// [`Storage::run_tagged`], answering where the reply came from too. When the call failed
    /// on Redis mid-call, the fallback applies the writes `withhold` makes right after it,
    /// under the same lock and never replayed (made only then: a call that succeeds builds
    /// nothing). `failed` says that an earlier try of this call already failed so.
    async fn run_served(
        &self,
        op: Op,
        script: Option<LocalScript>,
        supersede: Option<&str>,
        withhold: &(dyn Fn() -> Vec<Op> + Sync),
        mut failed: bool,
    ) -> Result<(Reply, Served), StorageError> {
        let inner = &self.inner;
        if let Some(redis) = &inner.redis {
            if self.mode() == Mode::Redis {
                match redis.exec(&op).await {
                    Ok(reply) => {
                        if inner.last_known.is_enabled() {
                            inner.last_known.observe(&op, &reply);
                        }
                        return Ok((reply, Served::Redis));
                    }
                    Err(Failure::Outage(reason)) => {
                        failed = true;
                        self.degrade(reason)
                    }
                    Err(Failure::Command(message)) => return Err(StorageError::Command(message)),
                    Err(Failure::NoScript) => {
                        return Err(StorageError::Command("NOSCRIPT after reload".into()))
                    }
                }
            }
        }
        // The fallback answers without ever returning Pending: without this, callers in a
        // tight loop would monopolise the runtime's workers and starve the monitor that
        // resyncs (tokio does not preempt). Yields once the task's coop budget is spent.
        tokio::task::consume_budget().await;
        let fallback = if failed {
            Served::FallbackAfterFailure
        } else {
            Served::Fallback
        };
        if let Op::Publish { channel, message } = &op {
            let delivered = self.deliver_local(channel, message) as i64;
            return Ok((Reply::Int(delivered), fallback));
        }
        if op.is_write() && self.mode() == Mode::Resyncing && self.wait_out_resync().await {
            return Box::pin(self.run_served(op, script, supersede, withhold, failed)).await;
        }
        let then = if failed { withhold() } else { Vec::new() };
        let outbox = if inner.redis.is_some() {
            inner
                .counters
                .fallback_calls
                .fetch_add(1, Ordering::Relaxed);
            OutboxMode::Yes
        } else {
            OutboxMode::No
        };
        let version = if op.is_write() {
            self.version_of(&op)
        } else {
            None
        };
        let has_redis = inner.redis.is_some();
        let result = inner.local.execute(
            &op,
            script,
            crate::clock::now_ms(),
            outbox,
            version,
            supersede,
            &then,
            || !has_redis || self.mode() != Mode::Redis,
        );
        match result {
            Ok(Some(reply)) => Ok((reply, fallback)),
            // The outbox was drained and the mode went back to `redis` between our check
            // and the lock: send the op to Redis after all.
            Ok(None) => Box::pin(self.run_served(op, script, supersede, withhold, failed)).await,
            Err(e) => {
                if matches!(
                    e,
                    StorageError::MemoryFull { .. } | StorageError::OutboxFull { .. }
                ) {
                    inner
                        .counters
                        .refused_writes
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = "fallback", error = %e, "write refused");
                }
                Err(e)
            }
        }
    }

    /// Holds a write back while the outbox is replayed, so that writers cannot outpace the
    /// replay; after `resync_wait` (at most [`RESYNC_HOLD_MS`]) it goes to the outbox after
    /// all. True when the mode is `redis` again.
    async fn wait_out_resync(&self) -> bool {
        let wait = async {
            loop {
                let changed = self.inner.mode_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.mode() != Mode::Resyncing {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(self.inner.resync_wait, wait).await;
        self.mode() == Mode::Redis
    }

    fn version_of(&self, op: &Op) -> Option<VersionCheck> {
        let key = op.first_key()?;
        let rule = self
            .inner
            .versioned
            .iter()
            .find(|v| glob_match(&v.pattern, key))?;
        let version = match op {
            Op::Set { value, .. } => serde_json::from_str::<serde_json::Value>(value)
                .ok()?
                .get(&rule.field)?
                .as_f64()?,
            Op::HSet { fields, .. } => fields
                .iter()
                .find(|(f, _)| *f == rule.field)?
                .1
                .parse()
                .ok()?,
            _ => return None,
        };
        Some(VersionCheck {
            field: rule.field.clone(),
            version,
        })
    }

    fn set_mode(&self, to: Mode, reason: &str) -> bool {
        let from = Mode::from_u8(self.inner.mode.swap(to.as_u8(), Ordering::AcqRel));
        if from == to {
            return false;
        }
        let event = StorageEvent::ModeChanged {
            from,
            to,
            reason: reason.to_string(),
        };
        event.emit(&self.inner.counters);
        let _ = self.inner.events.send(event);
        self.inner.mode_changed.notify_waiters();
        true
    }

    fn degrade(&self, reason: String) {
        if matches!(self.mode(), Mode::Redis | Mode::Resyncing) {
            self.set_mode(Mode::Degraded, &reason);
            self.inner.wake.notify_one();
            // What the process knew as the outage began, on disk at once (file fallback).
            let last_known = self.inner.last_known.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = last_known.save_if_due(crate::clock::now_ms(), true) {
                    tracing::error!(backend = "file", error = %e, "last-known copy not saved");
                }
            });
        }
    }

    /// A read as this process knows it: from Redis while it serves; during an outage, for a
    /// key declared [`Remembered::Shared`] (the task queues), the union of the last-known value
    /// and this process's own writes, so a listing still shows what waited before the outage
    /// (a claim, which reads with [`Storage::execute`], sees only its own). A write is refused.
    pub async fn read_known(&self, op: Op) -> Result<Reply, StorageError> {
        if op.is_write() {
            return Err(StorageError::Command(
                "read_known takes a read, not a write".into(),
            ));
        }
        let stale = self.inner.redis.is_some() && self.mode() != Mode::Redis;
        if !stale || !self.inner.last_known.is_enabled() {
            let reply = self.execute(op.clone()).await?;
            if let [key] = op.keys()[..] {
                if self.mode() == Mode::Redis
                    && self.inner.last_known.kind(key) == Some(Remembered::Shared)
                {
                    self.refresh_if_stale(key).await;
                }
            }
            return Ok(reply);
        }
        self.inner.local.read_known(&op, crate::clock::now_ms())
    }

    /// Waits until the outbox is replayed (or `deadline` passes); returns whether the mode is
    /// `redis` (or `fallback`) with an empty outbox. Used at shutdown to flush.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            match self.mode() {
                Mode::Fallback => {
                    let _ = self.inner.local.flush();
                    return true;
                }
                Mode::Redis if self.inner.local.outbox_len() == 0 => return true,
                _ => {}
            }
            if Instant::now() >= until {
                let _ = self.inner.local.flush();
                return false;
            }
            self.check_redis().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the background tasks, syncs the journal and closes Redis connections.
    pub async fn close(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.stop.notify_waiters();
        let _ = self.inner.local.flush();
        let last_known = self.inner.last_known.clone();
        let saved = tokio::task::spawn_blocking(move || {
            last_known.save_if_due(crate::clock::now_ms(), true)
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::error!(backend = "file", error = %e, "last-known copy not saved");
        }
        if let Some(redis) = &self.inner.redis {
            redis.quit().await;
        }
    }

    fn deliver_local(&self, channel: &str, message: &str) -> usize {
        match self.inner.bus.get(channel) {
            Some(tx) => tx.send(message.to_string()).unwrap_or(0),
            None => 0,
        }
    }
}

/// A subscription to one pub/sub channel.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<String>,
    storage: Weak<Inner>,
}

impl Subscription {
    /// The next message; `None` when the storage is gone.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            match self.rx.recv().await {
                Ok(message) => return Some(message),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if let Some(inner) = self.storage.upgrade() {
                        inner
                            .counters
                            .lagged_messages
                            .fetch_add(n, Ordering::Relaxed);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
