//! [`RedisCluster`]: a real Redis Cluster of `redis-server --cluster-enabled yes` children on
//! free loopback ports, for the suites switched to a cluster and for fail-over tests.
//!
//! Each node is a [`RedisServer`] (own temporary directory, port reserved for its whole life,
//! killed with the test process) whose cluster bus port is reserved as well and written into
//! its config (`cluster-port`), so no other test's server can take it. The default shape is
//! the issue's: 3 masters and 3 replicas, joined with
//! `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`. Fewer than 3 masters
//! (the queue benchmark's 1 and 2) cannot be created by `redis-cli`, which refuses them; those
//! are joined by hand with `CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET`.
//!
//! `cluster-node-timeout` is 1 s, so a killed master is replaced by its replica within a few
//! seconds. Start-up returns once every node reports `cluster_state:ok`, knows every other
//! node, and every replica's link to its master is up: a fail-over is possible from then on.
//!
//! [`RedisCluster::cmd`] looks at the cluster without botfleet's code: it sends the command to
//! the master that owns the key's slot and follows one `MOVED` redirection.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::poll::poll_until;
use super::port::PortReservation;
use super::redis::RedisServer;
use super::resp::{send_command, send_pipeline, RespValue};

/// How long a new cluster may take to agree on its slots and sync its replicas.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replica may take to replace a killed master.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of the harness's own commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(2);
/// `cluster-node-timeout`: a master silent this long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1_000;
/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The shape of a cluster to start.
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
        }
    }
}

impl RedisClusterBuilder {
    /// Starts every node, joins them and waits until the cluster is ready.
    pub fn start(self) -> io::Result<RedisCluster> {
        let total = self.masters * (1 + self.replicas_per_master);
        let nodes = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..total).map(|_| scope.spawn(start_node)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("node start panicked")))
                })
                .collect::<io::Result<Vec<_>>>()
        })?;
        let cluster = RedisCluster { nodes };
        if self.masters >= 3 {
            cluster.create_with_redis_cli(self.replicas_per_master)?;
        } else {
            cluster.create_by_hand(self.masters)?;
        }
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }
}

/// One node: its server and its cluster bus port, reserved while the node lives (fields drop
/// in order: the server is killed before the port is released).
#[derive(Debug)]
struct ClusterNode {
    server: RedisServer,
    bus: PortReservation,
}

/// A node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// A master (else a replica).
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node asked.
    pub failed: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Slot ranges served (masters), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// A running Redis Cluster; dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

impl RedisCluster {
    /// 3 masters, 3 replicas.
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// A builder, for another shape.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&...`: every node as a seed.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.server.port());
        // A cluster has at least one node (the builder asks for one master or more).
        let first = ports.next().expect("a cluster has nodes");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        if rest.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
        }
    }

    /// Every node's client port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.server.port()).collect()
    }

    /// Index of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.server.port() == port)
    }

    /// The nodes as a live node sees them (`CLUSTER NODES`).
    pub fn topology(&self) -> io::Result<Vec<NodeInfo>> {
        let mut last = io::Error::other("no node is running");
        for node in self
            .nodes
            .iter()
            .filter(|n| n.server.is_running() && !n.server.is_frozen())
        {
            match node.server.try_cmd(&["CLUSTER", "NODES"]) {
                Ok(reply) => match reply.as_str() {
                    Some(text) => return Ok(parse_nodes(text)),
                    None => last = io::Error::other(format!("CLUSTER NODES answered {reply:?}")),
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Ports of the masters that serve slots and are not flagged failed, by first slot.
    pub fn master_ports(&self) -> io::Result<Vec<u16>> {
        let mut masters: Vec<(u16, u16)> = self
            .topology()?
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| (n.slots[0].0, n.port))
            .collect();
        masters.sort();
        Ok(masters.into_iter().map(|(_, port)| port).collect())
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_port_for(&self, key: &str) -> io::Result<u16> {
        let slot = botfleet::storage::hash_slot(key);
        self.topology()?
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
            .ok_or_else(|| io::Error::other(format!("no live master serves slot {slot}")))
    }

    /// Sends one command about `args[1]` (the key) to the master of its slot, following one
    /// `MOVED`. Commands without a key go to the first live master.
    ///
    /// # Panics
    /// On a connection failure; see [`try_cmd`](Self::try_cmd).
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{args:?} to the cluster: {e}"))
    }

    /// [`cmd`](Self::cmd) that returns connection failures as errors.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        let port = match args.get(1) {
            Some(key) if has_key(args[0]) => self.master_port_for(key)?,
            _ => *self
                .master_ports()?
                .first()
                .ok_or_else(|| io::Error::other("no live master"))?,
        };
        let reply = send_command(loopback(port), args, CMD_TIMEOUT)?;
        match &reply {
            RespValue::Error(e) if e.starts_with("MOVED ") => {
                let target = e.rsplit(' ').next().unwrap_or_default();
                let addr: SocketAddr = target
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad MOVED target in {e:?}")))?;
                send_command(addr, args, CMD_TIMEOUT)
            }
            _ => Ok(reply),
        }
    }

    /// `GET` of every key, pipelined per master (one topology read for all): the values in
    /// the order of `keys`.
    pub fn get_many(&self, keys: &[String]) -> io::Result<Vec<RespValue>> {
        let masters: Vec<NodeInfo> = self
            .topology()?
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect();
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = botfleet::storage::hash_slot(key);
            let owner = masters
                .iter()
                .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
                .ok_or_else(|| io::Error::other(format!("no live master serves slot {slot}")))?;
            by_port.entry(owner.port).or_default().push(i);
        }
        let mut out = vec![RespValue::Nil; keys.len()];
        for (port, indexes) in by_port {
            let commands: Vec<[&str; 2]> =
                indexes.iter().map(|&i| ["GET", keys[i].as_str()]).collect();
            let replies = send_pipeline(loopback(port), &commands, CMD_TIMEOUT)?;
            for (i, reply) in indexes.into_iter().zip(replies) {
                out[i] = match reply {
                    // The node asked had not heard of a fail-over yet: ask the new owner.
                    RespValue::Error(e) if e.starts_with("MOVED ") => {
                        self.try_cmd(&["GET", keys[i].as_str()])?
                    }
                    other => other,
                };
            }
        }
        Ok(out)
    }

    /// Sends `args` to every live master and returns the replies, by master port.
    pub fn cmd_on_masters(&self, args: &[&str]) -> io::Result<BTreeMap<u16, RespValue>> {
        self.master_ports()?
            .into_iter()
            .map(|port| Ok((port, send_command(loopback(port), args, CMD_TIMEOUT)?)))
            .collect()
    }

    /// Waits until the replica of the master serving `key`'s slot has acknowledged every
    /// write the master had when the wait began (see [`replica_acked`]): a kill then loses
    /// at most the last instant's writes, which asynchronous replication had not shipped yet.
    pub fn wait_replica_in_sync(&self, key: &str) -> io::Result<Duration> {
        let port = self.master_port_for(key)?;
        wait_replica_caught_up(&format!("port {port}"), || {
            send_command(loopback(port), &["INFO", "replication"], CMD_TIMEOUT)
                .ok()
                .and_then(|r| r.as_str().map(str::to_string))
        })
    }

    /// Kills (SIGKILL) the master serving `key`'s slot; its index.
    pub fn kill_master_for(&mut self, key: &str) -> io::Result<usize> {
        let port = self.master_port_for(key)?;
        let index = self
            .index_of_port(port)
            .ok_or_else(|| io::Error::other(format!("port {port} is not ours")))?;
        self.nodes[index].server.kill9();
        Ok(index)
    }

    /// Waits until `key`'s slot is served by a live master other than `old_port` and every
    /// running node reports `cluster_state:ok`; how long it took.
    pub fn wait_failover(&self, key: &str, old_port: u16) -> io::Result<Duration> {
        poll_until(FAILOVER_TIMEOUT, || {
            matches!(self.master_port_for(key), Ok(p) if p != old_port) && self.all_ok()
        })
        .map_err(|e| {
            io::Error::other(format!(
                "no replica took over from {old_port}: {e}\n{:?}",
                self.topology()
            ))
        })
    }

    /// For a failing test: every node's port, whether it runs, its role and replication
    /// offsets (`INFO replication`), its key count, and the last `lines` lines of its log.
    pub fn diagnostics(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let server = &node.server;
            let port = server.port();
            if !server.is_running() {
                out.push_str(&format!(
                    "== {port}: not running\n{}\n",
                    server.log_tail(lines)
                ));
                continue;
            }
            let field =
                |name: &str| info_field(server, &["INFO", "replication"], name).unwrap_or_default();
            let keys = server
                .try_cmd(&["DBSIZE"])
                .map(|r| format!("{r:?}"))
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!(
                "== {port}: role {} master_repl_offset {} slave_repl_offset {} dbsize {keys}\n{}\n",
                field("role"),
                field("master_repl_offset"),
                field("slave_repl_offset"),
                server.log_tail(lines)
            ));
        }
        out
    }

    /// Whether every running, unfrozen node says `cluster_state:ok`.
    pub fn all_ok(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.server.is_running() && !n.server.is_frozen())
            .all(|n| {
                n.server
                    .try_cmd(&["CLUSTER", "INFO"])
                    .ok()
                    .and_then(|r| r.as_str().map(|s| s.contains("cluster_state:ok")))
                    .unwrap_or(false)
            })
    }

    fn create_with_redis_cli(&self, replicas: usize) -> io::Result<()> {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for port in self.ports() {
            cmd.arg(format!("127.0.0.1:{port}"));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run redis-cli (redis-tools): {e}"))
        })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Masters `0..masters` get an even share of the slots; the other nodes replicate them in
    /// turn.
    fn create_by_hand(&self, masters: usize) -> io::Result<()> {
        let per = SLOTS as usize / masters;
        for m in 0..masters {
            let first = m * per;
            let last = if m + 1 == masters {
                SLOTS as usize - 1
            } else {
                first + per - 1
            };
            expect_ok(self.nodes[m].server.cmd(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]))?;
        }
        let seed = self.nodes[0].server.port().to_string();
        let seed_bus = self.nodes[0].bus.port().to_string();
        for node in &self.nodes[1..] {
            expect_ok(
                node.server
                    .cmd(&["CLUSTER", "MEET", "127.0.0.1", &seed, &seed_bus]),
            )?;
        }
        let total = self.nodes.len();
        poll_until(FORM_TIMEOUT, || {
            self.nodes.iter().all(|n| {
                info_field(&n.server, &["CLUSTER", "INFO"], "cluster_known_nodes")
                    == Some(total.to_string())
            })
        })
        .map_err(|e| io::Error::other(format!("nodes did not meet: {e}")))?;
        for (i, node) in self.nodes.iter().enumerate().skip(masters) {
            let master = &self.nodes[i % masters].server;
            let id = master.cmd(&["CLUSTER", "MYID"]);
            let id = id.as_str().unwrap_or_default().to_string();
            poll_until(FORM_TIMEOUT, || {
                node.server.cmd(&["CLUSTER", "REPLICATE", &id]).is_ok()
            })
            .map_err(|e| io::Error::other(format!("replica of {id} refused: {e}")))?;
        }
        Ok(())
    }

    fn wait_formed(&self, timeout: Duration) -> io::Result<Duration> {
        let total = self.nodes.len().to_string();
        poll_until(timeout, || {
            self.all_ok()
                && self.nodes.iter().all(|n| {
                    info_field(&n.server, &["CLUSTER", "INFO"], "cluster_known_nodes")
                        == Some(total.clone())
                        && info_field(&n.server, &["INFO", "replication"], "role")
                            .as_deref()
                            .is_some_and(|role| {
                                role == "master"
                                    || info_field(
                                        &n.server,
                                        &["INFO", "replication"],
                                        "master_link_status",
                                    )
                                    .as_deref()
                                        == Some("up")
                            })
                })
        })
        .map_err(|e| {
            io::Error::other(format!(
                "cluster not ready: {e}\n{}",
                self.nodes[0].server.log_tail(20)
            ))
        })
    }
}

/// Starts one cluster-enabled node with its own reserved bus port.
fn start_node() -> io::Result<ClusterNode> {
    let bus = PortReservation::bind(0)?;
    let server = RedisServer::builder()
        .config("cluster-enabled yes")
        .config(format!("cluster-port {}", bus.port()))
        // A node that never met another (a one-master cluster) would announce no address.
        .config("cluster-announce-ip 127.0.0.1")
        .config("cluster-config-file nodes.conf")
        .config(format!("cluster-node-timeout {NODE_TIMEOUT_MS}"))
        // A replica whose link broke long ago may still take over: the tests kill masters on
        // purpose and want the fail-over, not a cluster that waits for an operator.
        .config("cluster-replica-validity-factor 0")
        .config("cluster-allow-replica-migration no")
        .start()?;
    Ok(ClusterNode { server, bus })
}

/// Whether the command's first argument is a key (the commands tests send to a cluster).
fn has_key(command: &str) -> bool {
    !matches!(
        command.to_ascii_uppercase().as_str(),
        "PING"
            | "INFO"
            | "CLUSTER"
            | "CONFIG"
            | "FLUSHALL"
            | "DBSIZE"
            | "KEYS"
            | "SCAN"
            | "PUBLISH"
            | "EVAL"
            | "EVALSHA"
            | "SCRIPT"
            | "TIME"
    )
}

fn expect_ok(reply: RespValue) -> io::Result<()> {
    if reply.is_ok() {
        Ok(())
    } else {
        Err(io::Error::other(format!("expected OK, got {reply:?}")))
    }
}

/// The value of `field:` in an INFO-style reply of `args`.
fn info_field(server: &RedisServer, args: &[&str], field: &str) -> Option<String> {
    let reply = server.try_cmd(args).ok()?;
    let text = reply.as_str()?;
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().to_string())
}

/// `master_repl_offset` in `INFO replication` of a master: how far its replication stream goes.
pub fn master_offset(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `INFO replication` of a master shows a replica online that acknowledged the
/// stream up to `offset` at least.
///
/// `state=online` and `lag=0` alone do not say the replica has the data: right after a full
/// resync the master reports the replica online with lag 0 while it still holds back the
/// commands written since the snapshot until the replica's first `REPLCONF ACK` (up to a
/// second later). A master killed in that second hands its slots to a replica that never
/// saw them, and every write of the load on that master is gone.
pub fn replica_acked(info: &str, offset: u64) -> bool {
    info.lines()
        .filter(|l| l.starts_with("slave"))
        .filter(|l| l.contains("state=online"))
        .filter_map(|l| {
            l.split(',')
                .find_map(|f| f.strip_prefix("offset="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .any(|acked| acked >= offset)
}

/// Polls `info` (a master's `INFO replication`) until a replica acknowledged the stream up to
/// the master's offset when the wait began: everything written before the call is on the
/// replica.
pub fn wait_replica_caught_up(
    what: &str,
    info: impl Fn() -> Option<String>,
) -> io::Result<Duration> {
    let mut target = None;
    poll_until(FORM_TIMEOUT, || {
        let Some(text) = info() else { return false };
        let offset = *target.get_or_insert_with(|| master_offset(&text).unwrap_or(0));
        replica_acked(&text, offset)
    })
    .map_err(|e| io::Error::other(format!("the replica of {what} did not catch up: {e}")))
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 8 {
                return None;
            }
            let port = parts[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = parts[2];
            let slots = parts[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|v| (v, v)),
                })
                .collect();
            Some(NodeInfo {
                id: parts[0].to_string(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                master_id: (parts[3] != "-").then(|| parts[3].to_string()),
                slots,
            })
        })
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
