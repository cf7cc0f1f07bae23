//! [`RedisSentinel`]: a real Sentinel set-up (one master, one replica, three sentinels) of
//! `redis-server` children on free loopback ports, for the suites switched to Sentinel and
//! for fail-over tests.
//!
//! The data servers and the sentinels are [`RedisServer`]s (own temporary directories, ports
//! reserved, killed with the test process); the sentinels run `redis-server CONFIG
//! --sentinel` with a quorum of 2, `down-after-milliseconds` 1 s and `failover-timeout` 3 s,
//! so a killed master is replaced by the replica within a few seconds. Start-up returns once
//! the replica's link is up and every sentinel knows the replica and the two other sentinels:
//! a fail-over is possible from then on.
//!
//! Optional passwords: one for the data servers (`requirepass`, `masterauth`, and the
//! sentinels' `auth-pass`) and one for the sentinels themselves (`requirepass`,
//! `sentinel-pass`), so that botfleet's two credentials are both exercised.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::poll::poll_until;
use super::redis::{RedisServer, RedisServerBuilder};
use super::resp::{send_commands, send_pipeline, RespValue};

/// The service (master) name the sentinels monitor.
pub const SERVICE: &str = "botfleet-test";
/// `down-after-milliseconds`: a master silent this long is subjectively down.
pub const DOWN_AFTER_MS: u64 = 1_000;
/// `failover-timeout`.
pub const FAILOVER_TIMEOUT_MS: u64 = 3_000;
/// How long the set-up may take to be ready.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fail-over may take.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// Timeout of the harness's own commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(2);
/// Number of sentinels.
const SENTINELS: usize = 3;

/// Passwords of a Sentinel set-up to start.
#[derive(Debug, Clone, Default)]
pub struct RedisSentinelBuilder {
    data_password: Option<String>,
    sentinel_password: Option<String>,
}

impl RedisSentinelBuilder {
    /// The password of the master and the replica.
    pub fn data_password(mut self, password: &str) -> Self {
        self.data_password = Some(password.to_string());
        self
    }

    /// The password of the sentinels.
    pub fn sentinel_password(mut self, password: &str) -> Self {
        self.sentinel_password = Some(password.to_string());
        self
    }

    /// Starts the master, the replica and the sentinels, and waits until they are ready.
    pub fn start(self) -> io::Result<RedisSentinel> {
        let master = data_builder(self.data_password.as_deref()).start()?;
        let replica = data_builder(self.data_password.as_deref())
            .config(format!("replicaof 127.0.0.1 {}", master.port()))
            .start()?;
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for _ in 0..SENTINELS {
            let mut b = RedisServer::builder()
                .arg("--sentinel")
                .config(format!(
                    "sentinel monitor {SERVICE} 127.0.0.1 {} 2",
                    master.port()
                ))
                .config(format!(
                    "sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}"
                ))
                .config(format!(
                    "sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}"
                ))
                .config(format!("sentinel parallel-syncs {SERVICE} 1"));
            if let Some(pw) = &self.data_password {
                b = b.config(format!("sentinel auth-pass {SERVICE} {pw}"));
            }
            if let Some(pw) = &self.sentinel_password {
                b = b
                    .config(format!("requirepass {pw}"))
                    .config(format!("sentinel sentinel-pass {pw}"));
            }
            sentinels.push(b.start()?);
        }
        let set = RedisSentinel {
            data: vec![master, replica],
            sentinels,
            data_password: self.data_password,
            sentinel_password: self.sentinel_password,
        };
        set.wait_ready()?;
        Ok(set)
    }
}

/// A data server's builder, with the data password (also used to reach a new master after a
/// fail-over) when there is one.
fn data_builder(password: Option<&str>) -> RedisServerBuilder {
    match password {
        Some(pw) => RedisServer::builder()
            .config(format!("requirepass {pw}"))
            .config(format!("masterauth {pw}")),
        None => RedisServer::builder(),
    }
}

/// A running Sentinel set-up; dropping it kills every process.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data servers: index 0 started as master, 1 as its replica.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    data_password: Option<String>,
    sentinel_password: Option<String>,
}

impl RedisSentinel {
    /// A set-up without passwords.
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// A builder, for passwords.
    pub fn builder() -> RedisSentinelBuilder {
        RedisSentinelBuilder::default()
    }

    /// `redis-sentinel://127.0.0.1:S1/?sentinelServiceName=...&node=127.0.0.1:S2&node=...`,
    /// without credentials (give those through the settings).
    pub fn url(&self) -> String {
        let ports: Vec<u16> = self.sentinels.iter().map(RedisServer::port).collect();
        let nodes: Vec<String> = ports[1..]
            .iter()
            .map(|p| format!("&node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}{}",
            ports[0],
            nodes.concat()
        )
    }

    /// A data server: 0 started as master, 1 as replica.
    pub fn data_server(&self, index: usize) -> &RedisServer {
        &self.data[index]
    }

    /// The master's port as the first answering sentinel reports it.
    pub fn master_port(&self) -> io::Result<u16> {
        let mut last = io::Error::other("no sentinel answered");
        for s in &self.sentinels {
            match self.sentinel_cmd(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]) {
                Ok(RespValue::Array(items)) if items.len() == 2 => {
                    if let Some(port) = items[1].as_str().and_then(|p| p.parse().ok()) {
                        return Ok(port);
                    }
                }
                Ok(other) => last = io::Error::other(format!("sentinel answered {other:?}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Index (into the data servers) of the current master.
    pub fn master_index(&self) -> io::Result<usize> {
        let port = self.master_port()?;
        self.data
            .iter()
            .position(|d| d.port() == port)
            .ok_or_else(|| io::Error::other(format!("master port {port} is not ours")))
    }

    /// Sends one command to the current master (authenticated when it has a password).
    ///
    /// # Panics
    /// On a connection failure.
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{args:?} to the sentinel master: {e}"))
    }

    /// [`cmd`](Self::cmd) that returns connection failures as errors.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        let port = self.master_port()?;
        with_auth(loopback(port), self.data_password.as_deref(), args)
    }

    /// `GET` of every key from the current master, pipelined: the values in the order of
    /// `keys`.
    pub fn get_many(&self, keys: &[String]) -> io::Result<Vec<RespValue>> {
        let port = self.master_port()?;
        let mut commands: Vec<Vec<&str>> = Vec::with_capacity(keys.len() + 1);
        if let Some(pw) = self.data_password.as_deref() {
            commands.push(vec!["AUTH", pw]);
        }
        let skip = commands.len();
        commands.extend(keys.iter().map(|k| vec!["GET", k.as_str()]));
        let mut replies = send_pipeline(loopback(port), &commands, CMD_TIMEOUT)?;
        Ok(replies.split_off(skip))
    }

    /// Sends one command to data server `index`, authenticated.
    pub fn data_cmd(&self, index: usize, args: &[&str]) -> io::Result<RespValue> {
        with_auth(self.data[index].addr(), self.data_password.as_deref(), args)
    }

    /// Waits until the current master's replica has acknowledged every write the master had
    /// when the wait began (see
    /// [`RedisCluster::wait_replica_in_sync`](super::cluster::RedisCluster::wait_replica_in_sync)).
    pub fn wait_replica_in_sync(&self) -> io::Result<Duration> {
        let index = self.master_index()?;
        super::cluster::wait_replica_caught_up("the master", || {
            self.data_cmd(index, &["INFO", "replication"])
                .ok()
                .and_then(|r| r.as_str().map(str::to_string))
        })
    }

    /// Kills (SIGKILL) the current master; its index.
    pub fn kill_master(&mut self) -> io::Result<usize> {
        let index = self.master_index()?;
        self.data[index].kill9();
        Ok(index)
    }

    /// Waits until the sentinels name a master other than `old_port` and that server says it
    /// is a master; how long it took.
    pub fn wait_failover(&self, old_port: u16) -> io::Result<Duration> {
        poll_until(FAILOVER_WAIT, || {
            let Ok(port) = self.master_port() else {
                return false;
            };
            port != old_port
                && with_auth(loopback(port), self.data_password.as_deref(), &["ROLE"])
                    .ok()
                    .and_then(|r| {
                        r.as_array()
                            .and_then(|a| a.first().and_then(|v| v.as_str().map(str::to_owned)))
                    })
                    .as_deref()
                    == Some("master")
        })
        .map_err(|e| {
            io::Error::other(format!(
                "no fail-over from {old_port}: {e}\n{}",
                self.sentinels[0].log_tail(20)
            ))
        })
    }

    fn sentinel_cmd(&self, sentinel: &RedisServer, args: &[&str]) -> io::Result<RespValue> {
        with_auth(sentinel.addr(), self.sentinel_password.as_deref(), args)
    }

    fn wait_ready(&self) -> io::Result<()> {
        poll_until(FORM_TIMEOUT, || {
            let linked = self
                .data_cmd(1, &["INFO", "replication"])
                .ok()
                .and_then(|r| r.as_str().map(|s| s.contains("master_link_status:up")))
                .unwrap_or(false);
            linked
                && self.sentinels.iter().all(|s| {
                    let Ok(reply) = self.sentinel_cmd(s, &["SENTINEL", "MASTER", SERVICE]) else {
                        return false;
                    };
                    let fields = flat_pairs(&reply);
                    fields.get("num-slaves").map(String::as_str) == Some("1")
                        && fields.get("num-other-sentinels").map(String::as_str)
                            == Some(&(SENTINELS - 1).to_string())
                })
        })
        .map(|_| ())
        .map_err(|e| {
            io::Error::other(format!(
                "sentinel set-up not ready: {e}\n{}",
                self.sentinels[0].log_tail(20)
            ))
        })
    }
}

/// `[k1, v1, k2, v2, ...]` as a map.
fn flat_pairs(reply: &RespValue) -> std::collections::HashMap<String, String> {
    let items = reply.as_array().unwrap_or_default();
    items
        .chunks(2)
        .filter_map(|kv| {
            Some((
                kv[0].as_str()?.to_string(),
                kv.get(1)?.as_str()?.to_string(),
            ))
        })
        .collect()
}

fn with_auth(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> io::Result<RespValue> {
    match password {
        Some(pw) => send_commands(addr, &[&["AUTH", pw], args], CMD_TIMEOUT),
        None => send_commands(addr, &[args], CMD_TIMEOUT),
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
