//! The switch that runs the Redis suites against a standalone server, a Cluster or a Sentinel
//! set-up without copying a test: [`TestRedis::start`] reads `BOTFLEET_TEST_REDIS`
//! (`standalone`, the default; `valkey`: one Valkey server, see [`super::redis::valkey_binary`];
//! `cluster`: 3 masters + 3 replicas; `sentinel`: 1 master, 1 replica, 3 sentinels).
//!
//! What changes under the switch, so that a test's code does not:
//!
//! - [`TestRedis::url`] is the deployment's URL (`redis-cluster://...`,
//!   `redis-sentinel://...?sentinelServiceName=...`).
//! - [`fit_settings`] gives a Cluster the hash-tagged key prefix `{bot}` (the scheduler's scripts
//!   touch the queue and the task hashes together, so they must share a slot; botfleet refuses
//!   to start on a Cluster without it). Each suite's `settings()` helper calls it, so child
//!   processes that build their settings from the URL get it too.
//! - [`TestRedis::cmd`] goes to the master that owns the key (Cluster) or to the current master
//!   (Sentinel). On a Cluster it names the seed keys as the `{bot}` prefix does: an argument
//!   `bot:...` is sent as `{bot}:...`, so assertions keep the seed's names.
//!
//! Tests that kill, freeze or restart the one server keep [`RedisServer`]: they are about a
//! single server's outage (fail-over of a Cluster or Sentinel master is tests/scale.rs's).

use std::io;

use botfleet::settings::Settings;

use super::cluster::RedisCluster;
use super::redis::RedisServer;
use super::resp::RespValue;
use super::sentinel::RedisSentinel;

/// The environment variable that selects the deployment.
pub const TEST_REDIS_ENV: &str = "BOTFLEET_TEST_REDIS";
/// The key prefix a Cluster run uses instead of the seed's `bot`.
pub const CLUSTER_PREFIX: &str = "{bot}";

/// Which deployment the suites run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One `redis-server`.
    Standalone,
    /// One `valkey-server`: the suites then run the native commands where botfleet has them.
    Valkey,
    /// 3 masters, 3 replicas.
    Cluster,
    /// 1 master, 1 replica, 3 sentinels.
    Sentinel,
}

/// The deployment `BOTFLEET_TEST_REDIS` asks for.
///
/// # Panics
/// On a value other than `standalone`, `valkey`, `cluster`, `sentinel` or empty: a typo must not run
/// the standalone suite while claiming another.
pub fn topology() -> Topology {
    match std::env::var(TEST_REDIS_ENV).unwrap_or_default().as_str() {
        "" | "standalone" => Topology::Standalone,
        "valkey" => Topology::Valkey,
        "cluster" => Topology::Cluster,
        "sentinel" => Topology::Sentinel,
        other => {
            panic!("{TEST_REDIS_ENV}={other:?}: expected standalone, valkey, cluster or sentinel")
        }
    }
}

/// Anything tests send raw commands to.
pub trait Inspect {
    /// One command; connection failures as errors.
    fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue>;

    /// One command.
    ///
    /// # Panics
    /// On a connection failure.
    fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

impl Inspect for RedisServer {
    fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        RedisServer::try_cmd(self, args)
    }
}

impl Inspect for RedisCluster {
    fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        RedisCluster::try_cmd(self, args)
    }
}

impl Inspect for RedisSentinel {
    fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        RedisSentinel::try_cmd(self, args)
    }
}

/// The deployment a switched test runs against; dropping it stops every process.
#[derive(Debug)]
pub enum TestRedis {
    /// One server (`redis-server`, or `valkey-server` under `valkey`).
    Standalone(RedisServer),
    /// A Cluster.
    Cluster(RedisCluster),
    /// A Sentinel set-up.
    Sentinel(RedisSentinel),
}

impl TestRedis {
    /// Starts the deployment `BOTFLEET_TEST_REDIS` selects.
    pub fn start() -> io::Result<Self> {
        Ok(match topology() {
            Topology::Standalone => Self::Standalone(RedisServer::start()?),
            Topology::Valkey => Self::Standalone(RedisServer::start_valkey()?),
            Topology::Cluster => Self::Cluster(RedisCluster::start()?),
            Topology::Sentinel => Self::Sentinel(RedisSentinel::start()?),
        })
    }

    /// The URL for `storage.redis.url`.
    pub fn url(&self) -> String {
        match self {
            Self::Standalone(s) => s.url(),
            Self::Cluster(c) => c.url(),
            Self::Sentinel(s) => s.url(),
        }
    }

    /// One command, as the module doc describes; error replies are values, not panics.
    ///
    /// # Panics
    /// On a connection failure.
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        Inspect::cmd(self, args)
    }
}

impl Inspect for TestRedis {
    fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        match self {
            Self::Standalone(s) => s.try_cmd(args),
            Self::Cluster(c) => {
                let mapped: Vec<String> = args.iter().map(|a| cluster_key(a)).collect();
                let mapped: Vec<&str> = mapped.iter().map(String::as_str).collect();
                c.try_cmd(&mapped)
            }
            Self::Sentinel(s) => s.try_cmd(args),
        }
    }
}

/// Adapts suite settings to the deployment their URL names: a Cluster gets the `{bot}`
/// prefix (see the module doc). Call it in each suite's `settings()` helper, after the URL.
pub fn fit_settings(settings: &mut Settings) {
    if settings.storage.redis.url.contains("-cluster://") && settings.keys.prefix == "bot" {
        settings.keys.prefix = CLUSTER_PREFIX.to_string();
    }
}

/// The settings a Redis suite starts from: `url`, fitted to its deployment, with a 2 s command
/// timeout (a loaded 2-core machine must not look like an outage half-way through) and a 2 s
/// stop timeout. Fail-over tests set shorter timeouts themselves.
pub fn suite_settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = url.to_string();
    fit_settings(&mut s);
    s.storage.redis.timeout_ms = 2_000;
    s.supervisor.stop_timeout_ms = 2_000;
    s
}

/// A seed key `bot:...` as the Cluster run names it.
fn cluster_key(arg: &str) -> String {
    match arg.strip_prefix("bot:") {
        Some(rest) => format!("{CLUSTER_PREFIX}:{rest}"),
        None => arg.to_string(),
    }
}
