//! The Redis backend: the only code in botfleet that talks to fred.
//!
//! Every op is sent as one raw command through `custom()`, with per-command options
//! (`fail_fast`, a timeout, one attempt) that fred honours there, EVALSHA included (its `eval`
//! helpers ignore them). A script missing from Redis's cache (`NOSCRIPT`) is loaded and the
//! call sent again. Failures are classified: a connection error, a timeout, or a server that
//! cannot serve now (`LOADING`, `READONLY`, `MASTERDOWN`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`)
//! is an outage, which the storage handle turns into a mode change; any other error reply is
//! the caller's error.
//!
//! # Fast failure
//!
//! fred queues a command while its connection is down and, without a timeout, waits forever;
//! its state reads `Connected` through the first reconnect delay and on a frozen server. Only
//! these settings together, measured against a killed and a frozen redis-server, bound a call
//! to a few hundred milliseconds: reconnect forever with exponential backoff
//! (`storage.redis.reconnect_min_ms` .. `reconnect_max_ms`, 100 ms .. 2 s), connection and
//! internal command timeouts of `connect_timeout_ms` (300 ms),
//! unresponsive detection, one attempt per command and a command buffer bounded by
//! `max_command_buffer`. At start-up a fail-fast probe tells an unreachable server (the
//! storage starts `degraded` and keeps connecting) from a misconfiguration (a bad URL, a failed
//! AUTH, TLS): start-up then fails naming the setting. A `rediss://` URL whose server answers
//! plain RESP is reported as such, not taken for an outage. Clients are created and
//! initialised on the caller's multi-threaded tokio runtime, never inside the actix system.
//!
//! # Sentinel and Cluster
//!
//! ```text
//!   daemon A ─┐                         Sentinel: sentinels ──name──▶ master ──▶ replica
//!   daemon B ─┼── storage (fred) ──▶       or
//!   daemon C ─┘                         Cluster:  master 1 (slots 0-5460)      ──▶ replica
//!                                                 master 2 (slots 5461-10922)  ──▶ replica
//!                                                 master 3 (slots 10923-16383) ──▶ replica
//! ```
//!
//! `storage.redis.url` picks the deployment by its scheme: `redis://` or `rediss://` for one
//! server, `redis-cluster://` or `redis-sentinel://` (and their `rediss-` forms).
//! `storage.redis.nodes` adds seed nodes (Cluster) or sentinels; `sentinel_service`,
//! `sentinel_username` and `sentinel_password` are the sentinels' own (the data servers keep
//! `username` and `password`). Only this file knows about the deployment. fred follows `MOVED`
//! and `ASK`, and reconnects, asking the sentinels or the cluster for the current master,
//! when a server answers `READONLY`, `MASTERDOWN`, `CLUSTERDOWN` or `LOADING`.
//!
//! A Cluster runs a script only when all its keys share a slot. Each script satisfies it by
//! construction:
//!
//! | script keys | how they share a slot |
//! |---|---|
//! | scheduler: queue, processing, delayed, dead, `PREFIX:task:*` | `keys.prefix` carries a hash tag (`{bot}`); start-up refuses a Cluster URL otherwise |
//! | a named queue (`Scheduler::for_queue`) | all under `{NAME}` |
//! | session counters: `PREFIX:session:ID`, `PREFIX:metrics:ID` | the prefix's hash tag |
//! | locks: the lock, `lock-fence:{TAG}`, `lock-waiting:{TAG}:NAME` | TAG is chosen to hash to the lock name's slot ([`KeySchema::lock_fence`](super::KeySchema::lock_fence)); off a Cluster one `lock-fence` serves every lock |
//! | hazards tick: `hazards-D`, `INTERNAL:hazards-tick:{hazards-D}` | tagged with the seed key's name |
//! | shared data: the shared key and `shared-data-guard:{TAG}` | TAG is chosen to hash to the shared key's slot |
//! | outbox replay: the entry's keys and `INTERNAL:replayed:{TAG}` | one marker per slot |
//! | `set-many`, lock batches | split by slot before the call |
//!
//! Scripts are loaded into every master's cache (`script_load_cluster`); a promoted replica
//! starts with an empty cache, and the `NOSCRIPT` path loads them again. `SCAN` runs on every
//! master and the keys are merged, since each master holds part of the keyspace.
//!
//! # Several daemons
//!
//! Several processes may share one deployment. Nothing in Redis is per process except
//! presence, heartbeats and admin queues, which are keyed by instance or pid: the fetcher and
//! the hazard ticker elect a leader through fenced locks, the scheduler's claim script hands
//! each task to one worker, and pub/sub notices reach every process (Cluster pub/sub is
//! broadcast to every node).
//!
//! # Fail-over
//!
//! A dead or demoted master is an outage like any other: the first call that meets it
//! switches the storage to `degraded`, the monitor PINGs until fred has found the promoted
//! replica, and the outbox is replayed to it (idempotently, with per-slot markers). What the
//! old master acknowledged before dying is on the replica unless Redis's asynchronous
//! replication had not shipped it yet; `storage.redis.wait_replicas` closes that window (the
//! `replicas` module).
//!
//! One queue is one hash tag, so one slot on one master: a queue never scales past one Redis
//! core, which is what keeps its scripts atomic. Throughput grows by spreading queues
//! (`Scheduler::for_queue`) over the masters; no command of a task crosses masters. The
//! README gives the measured figures.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fred::bytes::BytesMut;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{Options, ReconnectError, Server, ServerConfig, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand, KeyspaceEvent, Message};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::lane::{LaneFailure, Lanes, Target};
use super::native::{self, Feature, MapReply, Plan};
use super::op::{Op, Reply, ScriptRef};
use super::outbox::{command_wrapper, marker_key, replay_command, script_wrapper, OutboxEntry};
use super::replicas::{Change, ReplicaWatch, WaitPlan};
use super::server::{Commands, Profile, ServerInfo, ServerStats};
use super::StorageError;
use crate::settings::{RedisSettings, REDIS_SCHEMES};

/// Why a Redis call failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Redis is unreachable, slow or frozen: a mode change, not an error for the caller.
    Outage(String),
    /// Redis answered with an error (WRONGTYPE, a script error, ...).
    Command(String),
    /// The script is not in Redis's cache (after a restart).
    NoScript,
}

/// A connection event, forwarded to the storage monitor.
#[derive(Debug, Clone)]
pub enum ConnEvent {
    /// A connection failed or was lost.
    Error(String),
    /// A connection was (re-)established.
    Reconnected,
}

/// The Redis side of the storage handle.
pub struct RedisBackend {
    pool: Pool,
    subscriber: SubscriberClient,
    opts: Options,
    channels: Mutex<BTreeSet<String>>,
    clustered: bool,
    /// The database number the connections select (the URL's, or `storage.redis.db`).
    database: u8,
    /// What each write waits for (`storage.redis.wait_replicas`, `wait_aof`), if anything.
    wait: Option<Wait>,
    /// Writes fewer replicas than asked acknowledged within the timeout.
    unreplicated: std::sync::atomic::AtomicU64,
    /// Writes the master had not written to its append-only file within the timeout.
    unsynced: std::sync::atomic::AtomicU64,
    /// Masters whose replicas did not answer the last `WAIT`.
    replicas: ReplicaWatch,
    /// `storage.redis.native_commands`.
    native_enabled: bool,
    /// What the server is and which native commands are in use (`None` until it answered).
    profile: parking_lot::RwLock<Option<Profile>>,
    /// Whether the last detection found `wait_aof` impossible (logged once per change).
    aof_refused: std::sync::atomic::AtomicBool,
    /// The lock scripts' own connections (`storage.redis.lock_connections`), where the
    /// deployment allows them (see the `lane` module).
    lanes: Option<Lanes>,
}

/// What each write waits for before it is acknowledged.
#[derive(Debug, Clone, Copy)]
struct Wait {
    /// Replicas that must have it (`wait_replicas`).
    replicas: u32,
    /// `wait_timeout_ms`.
    timeout_ms: u64,
    /// `WAITAOF 1 replicas` in place of `WAIT replicas` (`wait_aof`).
    aof: bool,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

/// The fred configuration from settings; errors name the setting at fault.
fn fred_config(settings: &RedisSettings, fail_fast: bool) -> Result<Config, StorageError> {
    let scheme = settings.url.split("://").next().unwrap_or_default();
    if !settings.url.contains("://") || !REDIS_SCHEMES.contains(&scheme) {
        return Err(StorageError::Config {
            key: "storage.redis.url",
            message: format!(
                "expected a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL, got scheme {scheme:?}"
            ),
        });
    }
    let mut config =
        Config::from_url(&settings.effective_url()).map_err(|e| StorageError::Config {
            key: "storage.redis.url",
            message: e.details().to_string(),
        })?;
    if !settings.username.is_empty() {
        config.username = Some(settings.username.clone());
    }
    let password = settings.password.expose().to_string();
    if !password.is_empty() {
        config.password = Some(password);
    }
    if settings.db != 0 {
        config.database = Some(settings.db);
    }
    add_topology(&mut config, settings)?;
    config.fail_fast = fail_fast;
    Ok(config)
}

/// The Cluster seed nodes and the Sentinel addresses, service name and credentials that the
/// settings add to the URL's.
fn add_topology(config: &mut Config, settings: &RedisSettings) -> Result<(), StorageError> {
    let extra = settings
        .nodes
        .iter()
        .map(|node| {
            let parsed = node
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
            match parsed {
                Some((host, port)) if !host.is_empty() => Ok(Server::new(host.to_string(), port)),
                _ => Err(StorageError::Config {
                    key: "storage.redis.nodes",
                    message: format!("expected host:port, got {node:?}"),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    match &mut config.server {
        ServerConfig::Clustered { hosts, .. } => hosts.extend(extra),
        ServerConfig::Sentinel {
            hosts,
            service_name,
            username,
            password,
        } => {
            hosts.extend(extra);
            if !settings.sentinel_service.is_empty() {
                *service_name = settings.sentinel_service.clone();
            }
            if service_name.is_empty() {
                return Err(StorageError::Config {
                    key: "storage.redis.sentinel_service",
                    message: "the monitored master's name is missing".into(),
                });
            }
            if !settings.sentinel_username.is_empty() {
                *username = Some(settings.sentinel_username.clone());
            }
            if !settings.sentinel_password.is_empty() {
                *password = Some(settings.sentinel_password.expose().to_string());
            }
        }
        _ if !extra.is_empty() => {
            return Err(StorageError::Config {
                key: "storage.redis.nodes",
                message: "extra nodes need a redis-cluster:// or redis-sentinel:// URL".into(),
            })
        }
        _ => {}
    }
    Ok(())
}

fn builder(settings: &RedisSettings, fail_fast: bool) -> Result<Builder, StorageError> {
    let config = fred_config(settings, fail_fast)?;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let connect = Duration::from_millis(settings.connect_timeout_ms);
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            settings.reconnect_min_ms.min(u32::MAX as u64) as u32,
            settings.reconnect_max_ms.min(u32::MAX as u64) as u32,
            2,
        ))
        .with_performance_config(|perf| {
            perf.default_command_timeout = timeout;
        })
        .with_connection_config(|conn| {
            // A server that stopped being the master (a fail-over demoted it, the cluster
            // lost a majority) answers these instead of closing the connection: reconnect, so
            // fred asks the sentinels or the cluster for the current master. MOVED and ASK
            // are followed by fred itself (up to `max_redirections`).
            conn.reconnect_errors = vec![
                ReconnectError::ClusterDown,
                ReconnectError::Loading,
                ReconnectError::ReadOnly,
                ReconnectError::MasterDown,
            ];
            conn.connection_timeout = connect;
            conn.internal_command_timeout = connect;
            conn.max_command_attempts = 1;
            conn.max_command_buffer_len = settings.max_command_buffer;
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: Some(connect),
                interval: Duration::from_millis(settings.ping_interval_ms.clamp(10, 1_000)),
            };
        });
    Ok(builder)
}

/// `parts` as command arguments that share one buffer: one allocation for the lot, where a
/// value per argument would copy each into its own.
fn one_buffer<'a>(parts: impl Iterator<Item = &'a str> + Clone) -> Vec<Value> {
    let mut buf = BytesMut::with_capacity(parts.clone().map(str::len).sum());
    let mut ends = Vec::with_capacity(parts.size_hint().0);
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
        ends.push(buf.len());
    }
    let buf = buf.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let value = Value::Bytes(buf.slice(start..end));
            start = end;
            value
        })
        .collect()
}

/// Classifies a fred error. fred reports many server error replies as `Unknown`, so the
/// reply text decides first: Redis error replies start with an upper-case code (`ERR`,
/// `WRONGTYPE`, `NOSCRIPT`, ...).
fn classify(e: &Error) -> Failure {
    let details = e.details();
    let code = reply_code(details);
    let is_reply_code = !code.is_empty()
        && code.len() <= 16
        && code.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    match code {
        "NOSCRIPT" => return Failure::NoScript,
        _ if is_outage_code(code) => return Failure::Outage(e.to_string()),
        _ => {}
    }
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Protocol => Failure::Outage(e.to_string()),
        ErrorKind::Unknown if !is_reply_code => Failure::Outage(e.to_string()),
        _ => Failure::Command(details.to_string()),
    }
}

/// The code an error reply starts with (`ERR`, `NOSCRIPT`, `LOADING`, ...).
fn reply_code(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or_default()
}

/// The server cannot serve right now (loading a dataset, a replica after a fail-over, a script
/// running too long): an outage, the data path will come back.
fn is_outage_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "READONLY" | "MASTERDOWN" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN"
    )
}

/// Classifies an error reply read off a connection of botfleet's own (the lock lanes), as
/// [`classify`] does fred's.
fn classify_reply(text: &str) -> Failure {
    match reply_code(text) {
        "NOSCRIPT" => Failure::NoScript,
        code if is_outage_code(code) => Failure::Outage(text.to_string()),
        _ => Failure::Command(text.to_string()),
    }
}

fn to_reply(value: Value) -> Reply {
    match value {
        Value::Null => Reply::Nil,
        Value::Integer(i) => Reply::Int(i),
        Value::Boolean(b) => Reply::Int(b as i64),
        Value::Double(d) => Reply::Str(d.to_string()),
        Value::String(s) => Reply::Str(s.to_string()),
        Value::Bytes(b) => Reply::Str(String::from_utf8_lossy(&b).into_owned()),
        Value::Array(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        Value::Map(map) => Reply::Array(
            map.inner()
                .into_iter()
                .flat_map(|(k, v)| {
                    [
                        Reply::Str(k.as_str().map(|s| s.to_string()).unwrap_or_default()),
                        to_reply(v),
                    ]
                })
                .collect(),
        ),
        Value::Queued => Reply::Str("QUEUED".into()),
    }
}

impl RedisBackend {
    /// Connects. `Ok((backend, true))` when Redis answered, `Ok((backend, false))` when it is
    /// unreachable (the backend keeps connecting in the background), `Err` for a
    /// misconfiguration (bad URL, failed AUTH, TLS error), naming the setting.
    pub async fn connect(settings: &RedisSettings) -> Result<(Self, bool), StorageError> {
        // A fail-fast probe tells an unreachable server from a misconfigured one.
        let probe = builder(settings, true)?
            .build()
            .map_err(|e| config_error(&e))?;
        let deadline = Duration::from_millis(settings.connect_timeout_ms.max(100) * 3);
        let reachable = match tokio::time::timeout(deadline, probe.init()).await {
            Ok(Ok(_task)) => {
                let _ = probe.quit().await;
                true
            }
            Ok(Err(e)) => match e.kind() {
                ErrorKind::Auth | ErrorKind::Tls | ErrorKind::Config | ErrorKind::Url => {
                    return Err(config_error(&e));
                }
                _ if e.details().contains("WRONGPASS") || e.details().contains("NOAUTH") => {
                    return Err(config_error(&e));
                }
                _ => false,
            },
            Err(_) => false,
        };
        if !reachable && settings.url.starts_with("rediss") {
            // A TLS handshake with a plaintext server stalls (the server waits for a line
            // that never comes) and looks like an outage; asking the same port in plain RESP
            // tells the misconfiguration apart.
            if let Some(addr) = plaintext_redis_answers(&settings.url, deadline).await {
                return Err(StorageError::Config {
                    key: "storage.redis.url",
                    message: format!(
                        "the URL asks for TLS (rediss://) but {addr} answers plain RESP: use redis://"
                    ),
                });
            }
        }

        let b = builder(settings, false)?;
        let pool = b
            .build_pool(settings.pool_size.max(1))
            .map_err(|e| config_error(&e))?;
        let subscriber = b.build_subscriber_client().map_err(|e| config_error(&e))?;
        pool.connect_pool();
        subscriber.connect();
        if reachable {
            let wait = async {
                pool.wait_for_connect().await?;
                subscriber.wait_for_connect().await
            };
            let connected = matches!(tokio::time::timeout(deadline, wait).await, Ok(Ok(())));
            let opts = command_options(settings);
            return Ok((Self::assemble(pool, subscriber, opts, settings), connected));
        }
        Ok((
            Self::assemble(pool, subscriber, command_options(settings), settings),
            false,
        ))
    }

    fn assemble(
        pool: Pool,
        subscriber: SubscriberClient,
        opts: Options,
        settings: &RedisSettings,
    ) -> Self {
        let clustered = pool.clients()[0].is_clustered();
        let config = pool.clients()[0].client_config();
        let database = config.database.unwrap_or(0);
        let wait = (settings.wait_replicas > 0 || settings.wait_aof).then_some(Wait {
            replicas: settings.wait_replicas,
            timeout_ms: settings.wait_timeout_ms.max(1),
            aof: settings.wait_aof,
        });
        // One server, no TLS, no replica to wait for: see the `lane` module.
        let lanes = match &config.server {
            ServerConfig::Centralized { server }
                if config.tls.is_none() && wait.is_none() && settings.lock_connections > 0 =>
            {
                Some(Lanes::new(
                    Target {
                        host: server.host.to_string(),
                        port: server.port,
                        username: config.username.clone(),
                        password: config.password.clone(),
                        database,
                    },
                    settings.lock_connections,
                    Duration::from_millis(settings.timeout_ms),
                    Duration::from_millis(settings.connect_timeout_ms),
                    Duration::from_millis(settings.reconnect_max_ms),
                ))
            }
            _ => None,
        };
        Self {
            pool,
            subscriber,
            opts,
            channels: Mutex::new(BTreeSet::new()),
            clustered,
            database,
            wait,
            unreplicated: std::sync::atomic::AtomicU64::new(0),
            unsynced: std::sync::atomic::AtomicU64::new(0),
            replicas: ReplicaWatch::new(Duration::from_millis(
                settings.wait_timeout_ms.max(100) * 2,
            )),
            native_enabled: settings.native_commands,
            profile: parking_lot::RwLock::new(None),
            aof_refused: std::sync::atomic::AtomicBool::new(false),
            lanes,
        }
    }

    /// Asks every master what it is (`INFO server`, and `INFO persistence` with `wait_aof`),
    /// keeps the profile, and logs it at INFO when it is new or changed. Answers why
    /// `storage.redis.wait_aof` cannot be honoured, when it is set and cannot (logged at
    /// ERROR once per change); the caller refuses the server.
    pub async fn detect(&self) -> Result<Option<String>, Failure> {
        self.detect_with(true).await
    }

    /// [`RedisBackend::detect`] at start-up, where a refusal is the caller's error to report
    /// (start-up fails naming the setting), not a log line.
    pub async fn detect_at_start(&self) -> Result<Option<String>, Failure> {
        self.detect_with(false).await
    }

    async fn detect_with(&self, log_refusal: bool) -> Result<Option<String>, Failure> {
        let sections: &[&str] = if self.wait.is_some_and(|w| w.aof) {
            &["server", "persistence"]
        } else {
            &["server"]
        };
        let mut servers = Vec::new();
        if self.clustered {
            let client = self.pool.next();
            let masters = client
                .cached_cluster_state()
                .map(|state| state.unique_primary_nodes())
                .ok_or_else(|| Failure::Outage("cluster state unknown".into()))?;
            for master in masters {
                let opts = Options {
                    cluster_node: Some(master),
                    ..self.opts.clone()
                };
                let mut text = String::new();
                for section in sections {
                    let command = CustomCommand::new_static("INFO", ClusterHash::Random, false);
                    let reply = client
                        .with_options(&opts)
                        .custom::<Value, String>(command, vec![section.to_string()])
                        .await
                        .map(to_reply)
                        .map_err(|e| classify(&e))?;
                    text.push_str(&reply.into_opt_string().unwrap_or_default());
                }
                servers.push(ServerInfo::from_info(&text));
            }
        } else {
            let client = self.pool.next();
            let mut text = String::new();
            for section in sections {
                let reply = self
                    .raw(client, "INFO", vec![section.to_string()], None)
                    .await?;
                text.push_str(&reply.into_opt_string().unwrap_or_default());
            }
            servers.push(ServerInfo::from_info(&text));
        }
        let profile = Profile::new(servers, self.native_enabled);
        let changed = self.profile.read().as_ref() != Some(&profile);
        if changed {
            if let Some(stats) = profile.stats() {
                tracing::info!(
                    backend = "redis",
                    server = %stats.name,
                    version = %stats.version,
                    masters = stats.masters,
                    native_commands = self.native_enabled,
                    "redis server is {} {}; {}",
                    stats.name,
                    stats.version,
                    stats.commands
                );
            }
        }
        let problem = self
            .wait
            .is_some_and(|w| w.aof)
            .then(|| profile.wait_aof_problem())
            .flatten();
        *self.profile.write() = Some(profile);
        let was_refused = self
            .aof_refused
            .swap(problem.is_some(), std::sync::atomic::Ordering::Relaxed);
        if !log_refusal {
            return Ok(problem);
        }
        match (&problem, was_refused) {
            (Some(p), false) => tracing::error!(
                backend = "redis",
                "storage.redis.wait_aof: {p}; writes are served by the fallback until a server \
                 that can honour it answers"
            ),
            (None, true) => tracing::info!(
                backend = "redis",
                "storage.redis.wait_aof: the server now has WAITAOF and an append-only file"
            ),
            _ => {}
        }
        Ok(problem)
    }

    /// The server's name, version and the commands in use, once it answered.
    pub fn server_stats(&self) -> Option<ServerStats> {
        self.profile.read().as_ref().and_then(Profile::stats)
    }

    /// The native commands in use now.
    fn commands(&self) -> Commands {
        self.profile
            .read()
            .as_ref()
            .map(|p| p.commands)
            .unwrap_or_default()
    }

    /// The server refused a native command as unknown: off until the next detection.
    fn refused(&self, feature: Feature, message: &str) {
        let mut profile = self.profile.write();
        let Some(profile) = profile.as_mut() else {
            return;
        };
        let commands = &mut profile.commands;
        match feature {
            Feature::SetIfEq => commands.set_ifeq = false,
            Feature::DeleteIfEqual => commands.delete_if_equal = None,
            Feature::MSetEx => commands.msetex = false,
        }
        tracing::warn!(
            backend = "redis",
            error = %message,
            "the server refused a native command; its scripts run instead until it is asked \
             again ({})",
            commands.choices()
        );
    }

    /// Commands (name, arguments, the key that routes it) pipelined on `client` in one round
    /// trip: their replies in order, or the first error (a reply error, or an outage).
    async fn pipelined(
        &self,
        client: &Client,
        commands: Vec<(&'static str, Vec<String>, &str)>,
    ) -> Result<Vec<Reply>, Failure> {
        let commands = commands
            .into_iter()
            .map(|(cmd, args, key)| (cmd, args, Some(key)));
        self.send_pipeline(client, commands)
            .await?
            .into_iter()
            .map(|r| r.map(to_reply).map_err(|e| classify(&e)))
            .collect()
    }

    /// Sends `commands` (name, arguments, the key that routes it) pipelined on `client`, in
    /// one round trip bounded by the timeout: each command's own result, or an outage when
    /// the pipeline could not be sent or answered in time.
    async fn send_pipeline<'a>(
        &self,
        client: &Client,
        commands: impl Iterator<Item = (&'static str, Vec<String>, Option<&'a str>)>,
    ) -> Result<Vec<Result<Value, Error>>, Failure> {
        let pipeline = client.pipeline();
        for (cmd, args, key) in commands {
            let command = CustomCommand::new_static(cmd, self.hash_for(key), false);
            let _: () = pipeline
                .custom(command, args)
                .await
                .map_err(|e| classify(&e))?;
        }
        let timeout = self.opts.timeout.unwrap_or(Duration::from_secs(1));
        tokio::time::timeout(timeout, pipeline.try_all())
            .await
            .map_err(|_| Failure::Outage("pipeline timed out".into()))
    }

    /// Runs a native plan on `client`: the reply the script would have given.
    async fn run_plan(&self, client: &Client, plan: Plan) -> Result<Reply, Failure> {
        match plan {
            Plan::Single { cmd, args, map } => {
                let key = args.get(usize::from(cmd == "MSETEX")).cloned();
                let reply = self.raw(client, cmd, args, key.as_deref()).await?;
                Ok(match map {
                    MapReply::Written => Reply::Int(i64::from(reply != Reply::Nil)),
                    MapReply::Count(n) => Reply::Int(n),
                })
            }
            Plan::Release {
                form,
                channel,
                requests,
            } => {
                // One round trip: per request the conditional delete, then the mark check.
                let mut commands = Vec::with_capacity(requests.len() * 2);
                for (key, mark, value, _) in &requests {
                    let (cmd, args) = form.command(key, value);
                    commands.push((cmd, args, key.as_str()));
                    commands.push(("EXISTS", vec![mark.clone()], mark.as_str()));
                }
                let replies = self.pipelined(client, commands).await?;
                let mut out = Vec::with_capacity(requests.len());
                let mut announce = Vec::new();
                for (pair, (_, mark, _, notice)) in replies.chunks_exact(2).zip(&requests) {
                    let deleted = pair[0].as_int() == 1;
                    let announced = deleted && pair[1].as_int() == 1;
                    if announced {
                        // A waiter marked the name: tell it, as the script would have.
                        announce.push(("DEL", vec![mark.clone()], mark.as_str()));
                        announce.push((
                            "PUBLISH",
                            vec![channel.clone(), notice.clone()],
                            mark.as_str(),
                        ));
                    }
                    out.push(Reply::Int(i64::from(deleted) + i64::from(announced)));
                }
                if !announce.is_empty() {
                    self.pipelined(client, announce).await?;
                }
                Ok(Reply::Array(out))
            }
        }
    }

    /// Writes that fewer replicas than `storage.redis.wait_replicas` acknowledged in time.
    pub fn unreplicated_writes(&self) -> u64 {
        self.unreplicated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes the master had not written to its append-only file in time (`wait_aof`).
    pub fn unsynced_writes(&self) -> u64 {
        self.unsynced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// With `wait_replicas` set: `WAIT` on `client` (the connection that carried the writes;
    /// on a Cluster, routed by `key` to the master of its slot). A reply short of the replicas
    /// asked for is counted; the master is then taken to be missing replicas and its writes
    /// skip `WAIT` but for one probe per interval ([`ReplicaWatch`]). A failure of the `WAIT`
    /// itself is an outage, as any command's.
    ///
    /// With `wait_aof`: `WAITAOF 1 N` in its place, which also waits for the master's own
    /// append-only file (a write it had not written in time is counted as unsynced). A write
    /// that skips the replicas still waits for the master's file. The server refusing
    /// `WAITAOF` (no append-only file any more) is an outage too: the write goes to the
    /// fallback and the next resync asks the server again.
    async fn wait_for_replicas(&self, client: &Client, key: Option<&str>) -> Result<(), Failure> {
        let Some(wait) = self.wait else {
            return Ok(());
        };
        let mut replicas = wait.replicas;
        // Which master the write went to matters only once one is missing replicas.
        let mut master = None;
        if replicas > 0 && self.replicas.any_missing() {
            let m = self.master_of(client, key);
            if self.replicas.plan(&m, Instant::now()) == WaitPlan::Skip {
                self.unreplicated
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !wait.aof {
                    return Ok(());
                }
                replicas = 0;
            } else {
                master = Some(m);
            }
        }
        let timeout_ms = wait.timeout_ms;
        let (cmd, args) = if wait.aof {
            (
                "WAITAOF",
                vec![
                    "1".to_string(),
                    replicas.to_string(),
                    timeout_ms.to_string(),
                ],
            )
        } else {
            ("WAIT", vec![replicas.to_string(), timeout_ms.to_string()])
        };
        let command = CustomCommand::new_static(cmd, self.hash_for(key), true);
        let timeout = Duration::from_millis(timeout_ms) + self.opts.timeout.unwrap_or_default();
        let reply: Value = client
            .with_options(&Options {
                timeout: Some(timeout),
                ..self.opts.clone()
            })
            .custom(command, args)
            .await
            .map_err(|e| match classify(&e) {
                Failure::Command(message) if wait.aof => {
                    Failure::Outage(format!("WAITAOF refused: {message}"))
                }
                other => other,
            })?;
        let acked = if wait.aof {
            let counts = to_reply(reply).into_strings();
            let count = |i: usize| {
                counts
                    .get(i)
                    .and_then(|c| c.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            if count(0) < 1 {
                self.unsynced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            count(1)
        } else {
            reply.as_i64().unwrap_or(0)
        };
        if replicas == 0 {
            return Ok(());
        }
        let enough = acked >= i64::from(replicas);
        if !enough {
            self.unreplicated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if enough && master.is_none() {
            return Ok(());
        }
        let master = master.unwrap_or_else(|| self.master_of(client, key));
        match self.replicas.record(&master, enough, Instant::now()) {
            Change::Lost => tracing::warn!(
                backend = "redis",
                master = %master,
                acked,
                wanted = replicas,
                timeout_ms,
                "a write reached fewer replicas than storage.redis.wait_replicas in time; \
                 until they answer again, writes to this master skip WAIT (counted as \
                 unreplicated) but for one probe every {} ms",
                self.replicas.probe_every().as_millis()
            ),
            Change::Regained => tracing::info!(
                backend = "redis",
                master = %master,
                "replicas answer WAIT again; every write waits for them"
            ),
            Change::None => {}
        }
        Ok(())
    }

    /// The address of the master that serves `key` (from fred's cached Cluster routing);
    /// `""` outside a Cluster, for a write without a key, or before the routing is known.
    fn master_of(&self, client: &Client, key: Option<&str>) -> String {
        let (true, Some(key)) = (self.clustered, key) else {
            return String::new();
        };
        let slot = super::hash_slot(key);
        client
            .cached_cluster_state()
            .and_then(|routing| routing.get_server(slot).map(ToString::to_string))
            .unwrap_or_default()
    }

    /// Masters now taken to be missing replicas (see [`ReplicaWatch`]).
    pub fn masters_missing_replicas(&self) -> u64 {
        self.replicas.missing() as u64
    }

    /// Where a command with `key` goes: its slot on a cluster; elsewhere the one connection
    /// (no slot computed: it would cost a CRC per call for nothing).
    fn hash_for(&self, key: Option<&str>) -> ClusterHash {
        match key {
            Some(k) if self.clustered => {
                ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes()))
            }
            _ => ClusterHash::Random,
        }
    }

    /// Whether the server is a Cluster.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The database number the connections select.
    pub fn database(&self) -> u8 {
        self.database
    }

    /// `CONFIG GET name`: the value, `None` when the server has no such parameter. A server
    /// that refuses `CONFIG` (renamed, or not allowed to this user) answers a command error.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, Failure> {
        let reply = self
            .raw(
                self.pool.next(),
                "CONFIG",
                vec!["GET".into(), name.to_string()],
                None,
            )
            .await?;
        Ok(reply.into_strings().into_iter().nth(1))
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(&self, name: &str, value: &str) -> Result<(), Failure> {
        self.raw(
            self.pool.next(),
            "CONFIG",
            vec!["SET".into(), name.to_string(), value.to_string()],
            None,
        )
        .await
        .map(|_| ())
    }

    /// Connection events of every connection (pool and subscriber), into `tx`.
    pub fn watch(&self, tx: tokio::sync::mpsc::UnboundedSender<ConnEvent>) {
        let clients = self
            .pool
            .clients()
            .iter()
            .map(|c| (c.error_rx(), c.reconnect_rx(), false))
            .chain(std::iter::once((
                self.subscriber.error_rx(),
                self.subscriber.reconnect_rx(),
                true,
            )));
        for (mut errors, mut reconnects, is_subscriber) in clients {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        e = errors.recv() => match e {
                            Ok((err, _)) => ConnEvent::Error(err.to_string()),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        },
                        r = reconnects.recv() => match r {
                            Ok(_) if is_subscriber => ConnEvent::Reconnected,
                            Ok(_) => ConnEvent::Reconnected,
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        },
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            });
        }
    }

    /// Runs one op.
    pub async fn exec(&self, op: &Op) -> Result<Reply, Failure> {
        if let (true, Op::Scan { pattern, count, .. }) = (self.clustered, op) {
            return self.scan_masters(pattern, *count).await;
        }
        if let Op::Eval { script, keys, args } = op {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            return self.eval(script, &keys, &args).await;
        }
        let client = self.pool.next();
        let (cmd, args) = op.to_command();
        let reply = self.raw(client, cmd, args, op.first_key()).await?;
        if op.is_write() {
            self.wait_for_replicas(client, op.first_key()).await?;
        }
        Ok(reply)
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`), or its native form where the
    /// server has the command. The keys and arguments are borrowed: each is copied once,
    /// into the command sent.
    pub async fn eval(
        &self,
        script: &ScriptRef,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, Failure> {
        self.eval_via(script, keys, args, None).await
    }

    /// Runs a lock script as [`RedisBackend::eval`] does, but a script that does not run as
    /// a native command goes out on a free lock lane where there are lanes.
    pub async fn eval_on_lane(
        &self,
        script: &ScriptRef,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, Failure> {
        self.eval_via(script, keys, args, self.lanes.as_ref()).await
    }

    /// [`RedisBackend::eval`], with the script (not its native form) sent on a free lane of
    /// `lanes` when there is one.
    async fn eval_via(
        &self,
        script: &ScriptRef,
        keys: &[&str],
        args: &[&str],
        lanes: Option<&Lanes>,
    ) -> Result<Reply, Failure> {
        let client = self.pool.next();
        let first_key = keys.first().copied();
        if let Some(form) = script.native {
            if let Some(plan) = native::plan(form, &self.commands(), keys, args) {
                match self.run_plan(client, plan).await {
                    Ok(reply) => {
                        self.wait_for_replicas(client, first_key).await?;
                        return Ok(reply);
                    }
                    // Nothing was applied: the script runs instead (below).
                    Err(Failure::Command(message)) if native::is_unsupported(&message) => {
                        self.refused(form.feature(), &message)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Lanes exist only where no write waits for replicas (see `assemble`).
        if let Some(lanes) = lanes {
            match lanes.eval(script, keys, args).await {
                None => {}
                Some(Ok(reply)) => return Ok(reply),
                Some(Err(LaneFailure::Lost(reason))) => return Err(Failure::Outage(reason)),
                Some(Err(LaneFailure::Refused(text))) => return Err(classify_reply(&text)),
            }
        }
        let evalsha = || {
            let numkeys = keys.len().to_string();
            let sha_and_count = [&*script.sha, numkeys.as_str()];
            one_buffer(sha_and_count.iter().chain(keys).chain(args).copied())
        };
        let reply = match self.raw(client, "EVALSHA", evalsha(), first_key).await {
            Err(Failure::NoScript) => {
                self.load(script).await?;
                self.raw(client, "EVALSHA", evalsha(), first_key).await
            }
            other => other,
        }?;
        // A script may write (the lock scripts all do): wait for the replicas as for any
        // write.
        self.wait_for_replicas(client, first_key).await?;
        Ok(reply)
    }

    /// Calls the lock lanes served (0 without lanes).
    pub fn lane_calls(&self) -> u64 {
        self.lanes.as_ref().map_or(0, Lanes::calls)
    }

    async fn raw<V>(
        &self,
        client: &Client,
        cmd: &'static str,
        args: Vec<V>,
        key: Option<&str>,
    ) -> Result<Reply, Failure>
    where
        V: TryInto<Value> + Send,
        V::Error: Into<Error> + Send,
    {
        let command = CustomCommand::new_static(cmd, self.hash_for(key), false);
        client
            .with_options(&self.opts)
            .custom::<Value, V>(command, args)
            .await
            .map(to_reply)
            .map_err(|e| classify(&e))
    }

    /// Runs plain ops (no scripts) pipelined on one connection: one round trip for the lot.
    /// The outer error is an outage; the inner ones are Redis's replies to single commands.
    pub async fn exec_pipeline(&self, ops: &[Op]) -> Result<Vec<Result<Reply, Failure>>, Failure> {
        let client = self.pool.next();
        let commands = ops.iter().map(|op| {
            let (cmd, args) = op.to_command();
            (cmd, args, op.first_key())
        });
        let results = self.send_pipeline(client, commands).await?;
        let mut out = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(value) => out.push(Ok(to_reply(value))),
                Err(e) => match classify(&e) {
                    Failure::Outage(reason) => return Err(Failure::Outage(reason)),
                    other => out.push(Err(other)),
                },
            }
        }
        if self.wait.is_some() {
            // One WAIT per master the writes went to: per slot on a Cluster (a WAIT covers
            // every earlier write of its connection), once otherwise.
            let mut slots = BTreeSet::new();
            for op in ops.iter().filter(|op| op.is_write()) {
                let key = op.first_key();
                let slot = if self.clustered {
                    key.map(crate::storage::hash_slot)
                } else {
                    None
                };
                if slots.insert(slot) {
                    self.wait_for_replicas(client, key).await?;
                }
            }
        }
        Ok(out)
    }

    /// Loads a script into Redis's cache: on a Cluster into every master's, since EVALSHA
    /// goes to the master of its keys' slot (and a promoted replica starts with an empty
    /// cache, which the NOSCRIPT path refills).
    pub async fn load(&self, script: &ScriptRef) -> Result<(), Failure> {
        if self.clustered {
            return self
                .pool
                .next()
                .with_options(&self.opts)
                .script_load_cluster::<Value, _>(script.lua.to_string())
                .await
                .map(|_| ())
                .map_err(|e| classify(&e));
        }
        self.raw(
            self.pool.next(),
            "SCRIPT",
            vec!["LOAD".into(), script.lua.to_string()],
            None,
        )
        .await
        .map(|_| ())
    }

    /// A whole `SCAN` of every Cluster master (each holds part of the keyspace), answered as
    /// one round with cursor 0 so that `Storage::scan` stops after it.
    async fn scan_masters(&self, pattern: &str, count: u64) -> Result<Reply, Failure> {
        let client = self.pool.next();
        let masters = client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .ok_or_else(|| Failure::Outage("cluster state unknown".into()))?;
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor = "0".to_string();
            loop {
                let command = CustomCommand::new_static("SCAN", ClusterHash::Random, false);
                let args = vec![
                    cursor.clone(),
                    "MATCH".into(),
                    pattern.to_string(),
                    "COUNT".into(),
                    count.to_string(),
                ];
                let opts = Options {
                    cluster_node: Some(master.clone()),
                    ..self.opts.clone()
                };
                let reply = client
                    .with_options(&opts)
                    .custom::<Value, String>(command, args)
                    .await
                    .map(to_reply)
                    .map_err(|e| classify(&e))?;
                let Reply::Array(mut parts) = reply else {
                    break;
                };
                if parts.len() != 2 {
                    break;
                }
                keys.extend(parts.pop().map(Reply::into_strings).unwrap_or_default());
                cursor = parts
                    .pop()
                    .and_then(Reply::into_opt_string)
                    .unwrap_or_else(|| "0".into());
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(Reply::Array(vec![
            Reply::Str("0".into()),
            Reply::Array(keys.into_iter().map(Reply::Str).collect()),
        ]))
    }

    /// A PING with the command timeout: true when Redis answers.
    pub async fn ping(&self) -> bool {
        self.raw(self.pool.next(), "PING", Vec::<Value>::new(), None)
            .await
            .is_ok()
    }

    /// A PING allowed `patience`: the idle-connection check in `redis` mode, which must not
    /// take a busy machine for an outage (calls detect outages within the command timeout).
    pub async fn ping_patiently(&self, patience: Duration) -> bool {
        let opts = Options {
            timeout: Some(patience),
            ..self.opts.clone()
        };
        let command = CustomCommand::new_static("PING", ClusterHash::Random, false);
        self.pool
            .next()
            .with_options(&opts)
            .custom::<Value, String>(command, Vec::new())
            .await
            .is_ok()
    }

    /// Replays outbox entries in order on one connection, pipelined. Returns how many were
    /// applied (the rest had been applied by an earlier replay, or were expired or older).
    pub async fn replay(
        &self,
        outbox_id: &str,
        internal_prefix: &str,
        entries: &[OutboxEntry],
    ) -> Result<usize, Failure> {
        let client = self.pool.next();
        // Wrappers for the scripts in this batch, loaded before the pipeline.
        let mut wrappers = std::collections::HashMap::new();
        for entry in entries {
            if let Op::Eval { script, .. } = &entry.op {
                if !wrappers.contains_key(&script.sha) {
                    let wrapper = script_wrapper(script);
                    self.load(&wrapper).await?;
                    wrappers.insert(script.sha.clone(), wrapper);
                }
            }
        }
        let pipeline = client.pipeline();
        for entry in entries {
            // One marker per slot on a cluster (the wrapper touches it with the entry's keys);
            // a single one on a standalone server.
            let marker = marker_key(
                internal_prefix,
                entry.op.first_key().filter(|_| self.clustered),
            );
            let wrapper = match &entry.op {
                Op::Eval { script, .. } => &wrappers[&script.sha],
                _ => command_wrapper(),
            };
            let args = replay_command(entry, outbox_id, &marker, wrapper);
            let command = CustomCommand::new_static("EVALSHA", self.hash_for(Some(&marker)), false);
            let _: () = pipeline
                .custom(command, args)
                .await
                .map_err(|e| classify(&e))?;
        }
        // The command wrapper is loaded once per resync by the caller; after a restart of
        // Redis in the middle, NOSCRIPT sends the replay back to `degraded` and the next
        // attempt loads it again.
        let timeout = self.opts.timeout.unwrap_or(Duration::from_secs(1)) * 8;
        let results: Vec<Result<Value, Error>> = tokio::time::timeout(timeout, pipeline.try_all())
            .await
            .map_err(|_| Failure::Outage("replay timed out".into()))?;
        let mut applied = 0;
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(Value::Integer(1)) => applied += 1,
                Ok(Value::Integer(_)) | Ok(Value::Null) => {}
                Ok(_) => applied += 1,
                Err(e) => match classify(&e) {
                    Failure::Command(message) => {
                        // A write Redis refuses (a script error, WRONGTYPE) would block the
                        // outbox forever; it is logged and dropped, as it would have failed
                        // had Redis been up.
                        tracing::warn!(seq = entry.seq, error = %message, "replayed write refused by Redis");
                    }
                    other => return Err(other),
                },
            }
        }
        Ok(applied)
    }

    /// Subscribes the subscriber connection to `channel` (remembered across reconnects).
    pub async fn subscribe(&self, channel: &str) -> Result<(), Failure> {
        self.channels.lock().insert(channel.to_string());
        self.subscriber
            .subscribe(channel.to_string())
            .await
            .map_err(|e| classify(&e))
    }

    /// Subscribes again to every remembered channel (after the subscriber reconnected).
    pub async fn resubscribe(&self) -> Result<(), Failure> {
        let channels: Vec<String> = self.channels.lock().iter().cloned().collect();
        if channels.is_empty() {
            return Ok(());
        }
        self.subscriber
            .subscribe(channels)
            .await
            .map_err(|e| classify(&e))
    }

    /// Messages arriving on subscribed channels, as (channel, payload).
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.subscriber.message_rx()
    }

    /// Keyspace notifications arriving on subscribed `__keyspace@DB__:KEY` channels: the
    /// client hands them out apart from the other messages.
    pub fn keyspace_events(&self) -> broadcast::Receiver<KeyspaceEvent> {
        self.subscriber.keyspace_event_rx()
    }

    /// Closes every connection.
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.pool.quit().await;
    }
}

/// A keyspace notification as the message it was: (`__keyspace@DB__:KEY`, the command). The
/// client parses `__keyevent@` notifications into the same form; botfleet subscribes to none.
pub fn keyspace_text(event: &KeyspaceEvent) -> (String, String) {
    (
        format!("__keyspace@{}__:{}", event.db, event.key.as_str_lossy()),
        event.operation.clone(),
    )
}

/// Decodes a pub/sub payload as text.
pub fn message_text(message: &Message) -> (String, String) {
    let payload = match &message.value {
        Value::String(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    (message.channel.to_string(), payload)
}

/// `Some(host:port)` when a plaintext Redis answers PING at the URL's address.
async fn plaintext_redis_answers(url: &str, within: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed = url::Url::parse(url).ok()?;
    let addr = format!("{}:{}", parsed.host_str()?, parsed.port().unwrap_or(6379));
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 16];
        let n = stream.read(&mut reply).await.ok()?;
        let reply = &reply[..n];
        (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")).then_some(())
    };
    tokio::time::timeout(within, probe).await.ok()??;
    Some(addr)
}

fn command_options(settings: &RedisSettings) -> Options {
    Options {
        fail_fast: true,
        max_attempts: Some(1),
        timeout: Some(Duration::from_millis(settings.timeout_ms)),
        ..Default::default()
    }
}

fn config_error(e: &Error) -> StorageError {
    let key = match e.kind() {
        ErrorKind::Auth => "storage.redis.password",
        ErrorKind::Tls => "storage.redis.url (TLS)",
        _ if e.details().contains("WRONGPASS") || e.details().contains("NOAUTH") => {
            "storage.redis.password"
        }
        _ => "storage.redis.url",
    };
    StorageError::Config {
        key,
        message: e.details().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::check_redis_url;

    #[test]
    fn error_replies_are_classified_as_the_pool_classifies_them() {
        assert!(matches!(
            classify_reply("NOSCRIPT No matching"),
            Failure::NoScript
        ));
        for outage in ["LOADING loading", "BUSY script", "READONLY replica"] {
            assert!(
                matches!(classify_reply(outage), Failure::Outage(_)),
                "{outage}"
            );
        }
        match classify_reply("WRONGTYPE Operation against a key") {
            Failure::Command(text) => assert!(text.starts_with("WRONGTYPE")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_buffer_gives_each_part_as_its_own_argument() {
        let parts = [
            "0123abcd",
            "2",
            "bet-lock:é",
            "",
            "INTERNAL:lock-fence:{12}",
            "10000",
        ];
        let values = one_buffer(parts.iter().copied());
        assert_eq!(values.len(), parts.len());
        for (value, part) in values.iter().zip(parts) {
            let Value::Bytes(bytes) = value else {
                panic!("{value:?} is not bytes");
            };
            assert_eq!(&bytes[..], part.as_bytes());
        }
        assert!(one_buffer(std::iter::empty()).is_empty());
    }

    /// The settings validate `storage.redis.url` without the Redis client; this holds their
    /// check to the client's own parser: what the client refuses, validation refuses too, and
    /// the usual forms pass both.
    #[test]
    fn validation_refuses_every_url_the_client_refuses() {
        let usable = [
            "redis://127.0.0.1:6379",
            "redis://h",
            "redis://h:1/",
            "redis://h:1/15",
            "redis://user:p%40ss@h:6379/2",
            "rediss://h:6380",
            "redis-cluster://h:1?node=g:2&node=f:3",
            "rediss-cluster://:pw@h:1",
            "redis-sentinel://h:26379?sentinelServiceName=main",
            "redis-sentinel://h:26379/3?sentinelServiceName=main&node=g:26380",
            "redis-sentinel://h:26379?sentinelServiceName=main&sentinelUsername=u&sentinelPassword=p",
        ];
        for url in usable {
            assert!(Config::from_url(url).is_ok(), "the client refuses {url}");
            assert_eq!(check_redis_url(url), Ok(()), "{url}");
        }
        let unusable = [
            "redis://h:1/256",
            "redis://h:1/db",
            "redis://h:1/1/2",
            "redis://u:%FF@h:1",
            "redis://%C3@h:1",
            "redis-cluster://h:1?node=g",
            "redis-cluster://h:1?node=g:99999",
            "redis-cluster://h:1?node=g:1:2",
            "redis-sentinel://h:26379",
            "redis-sentinel://h:26379/x?sentinelServiceName=main",
            "redis-sentinel://h:26379?sentinelServiceName=main&node=g",
            "redis://h:notaport",
            "redis://",
        ];
        for url in unusable {
            assert!(Config::from_url(url).is_err(), "the client accepts {url}");
            assert!(check_redis_url(url).is_err(), "validation accepts {url}");
        }
    }
}
