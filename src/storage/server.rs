//! Which server botfleet talks to, and which of its scripts that server can replace with a
//! native command.
//!
//! At connection, and again after every reconnect and before every resync (a fail-over may
//! have put another server behind the same address), the backend asks each master for
//! `INFO server` and reads `server_name` (`valkey`; absent on Redis), `valkey_version` and
//! `redis_version` (Valkey reports a fixed `7.2.4` there, so its own field decides). From the
//! name and version it knows which commands exist:
//!
//! | command | Redis | Valkey | replaces |
//! |---|---|---|---|
//! | `SET k v IFEQ old` (never creates a missing key) | 8.4 | 8.1 | `compare-and-set` ([`Storage::compare_and_set`](super::Storage::compare_and_set)), `lock-extend` |
//! | `DELIFEQ k v` | – | 9.0 | `lock-release` (with the waiting-mark check, see [`Native::DeleteIfEqualAnnounced`]) |
//! | `DELEX k IFEQ v` | 8.4 | later than 9.1.2 | the same, where `DELIFEQ` is missing |
//! | `MSETEX n k v ... [PX ms]` | 8.4 | 9.1 | `set-many` ([`Storage::set_many`](super::Storage::set_many)) |
//! | `WAITAOF` | 7.2 | 7.2 (every release) | `storage.redis.wait_aof` |
//!
//! On a Cluster every master is asked and a command is used only when all of them have it
//! (a rolling upgrade leaves old and new masters side by side); the name and version shown
//! are those of the oldest master. `storage.redis.native_commands = false` keeps every
//! script. The choice is logged once at INFO (again when it changes) and shown in the
//! storage stats ([`ServerStats`], `/status` → `storage.server`).
//!
//! A native command that the server refuses as unknown (`ERR unknown command`, a syntax
//! error on an option it lacks) turns that command off until the next detection, and the
//! call runs as the script: a server swapped behind the address between a reconnect and
//! its detection costs one refused command, never a failed call. Such a refusal changes
//! nothing on the server.

use std::fmt;

use serde::Serialize;

/// A server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// Parses `7.2.4` (missing parts are 0; anything unreadable is 0.0.0).
    pub fn parse(text: &str) -> Version {
        let mut parts = text
            .trim()
            .split('.')
            .map(|p| p.trim().parse::<u16>().unwrap_or(0));
        Version(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The server software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// Redis (or a server that answers as Redis does: no `server_name`).
    Redis,
    /// Valkey.
    Valkey,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Redis => "redis",
            ServerKind::Valkey => "valkey",
        })
    }
}

/// The form of conditional delete a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteIfEqual {
    /// `DELIFEQ key value` (Valkey 9.0+).
    DelIfEq,
    /// `DELEX key IFEQ value` (Redis 8.4+).
    DelEx,
}

/// What one server is and which commands it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// Redis or Valkey.
    pub kind: ServerKind,
    /// Its own version (`valkey_version` on Valkey, `redis_version` on Redis).
    pub version: Version,
    /// `aof_enabled:1` in `INFO persistence` (asked only with `storage.redis.wait_aof`).
    pub aof_enabled: bool,
}

impl ServerInfo {
    /// Reads the fields of `INFO server` (and `aof_enabled` of `INFO persistence`, when the
    /// text has it).
    pub fn from_info(info: &str) -> ServerInfo {
        let field = |name: &str| {
            info.lines().find_map(|line| {
                let (key, value) = line.trim().split_once(':')?;
                (key == name).then(|| value.trim().to_string())
            })
        };
        let kind = match field("server_name").as_deref() {
            Some(name) if name.eq_ignore_ascii_case("valkey") => ServerKind::Valkey,
            _ if field("valkey_version").is_some() => ServerKind::Valkey,
            _ => ServerKind::Redis,
        };
        let version = match kind {
            ServerKind::Valkey => field("valkey_version"),
            ServerKind::Redis => field("redis_version"),
        };
        ServerInfo {
            kind,
            version: Version::parse(&version.unwrap_or_default()),
            aof_enabled: field("aof_enabled").as_deref() == Some("1"),
        }
    }

    /// Whether `SET ... IFEQ` exists.
    pub fn has_set_ifeq(&self) -> bool {
        self.version
            >= match self.kind {
                ServerKind::Valkey => Version(8, 1, 0),
                ServerKind::Redis => Version(8, 4, 0),
            }
    }

    /// The conditional delete the server has, if any.
    pub fn delete_if_equal(&self) -> Option<DeleteIfEqual> {
        match self.kind {
            ServerKind::Valkey if self.version >= Version(9, 0, 0) => Some(DeleteIfEqual::DelIfEq),
            ServerKind::Redis if self.version >= Version(8, 4, 0) => Some(DeleteIfEqual::DelEx),
            _ => None,
        }
    }

    /// Whether `MSETEX` exists.
    pub fn has_msetex(&self) -> bool {
        self.version
            >= match self.kind {
                ServerKind::Valkey => Version(9, 1, 0),
                ServerKind::Redis => Version(8, 4, 0),
            }
    }

    /// Whether `WAITAOF` exists (every Valkey: it forked from Redis 7.2.4).
    pub fn has_waitaof(&self) -> bool {
        match self.kind {
            ServerKind::Valkey => true,
            ServerKind::Redis => self.version >= Version(7, 2, 0),
        }
    }
}

/// The native commands in use, after detection and `storage.redis.native_commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Commands {
    /// `SET ... IFEQ` for compare-and-set and lock extension.
    pub set_ifeq: bool,
    /// `DELIFEQ` or `DELEX ... IFEQ` for the lock release.
    pub delete_if_equal: Option<DeleteIfEqual>,
    /// `MSETEX` for set-many.
    pub msetex: bool,
}

impl Commands {
    /// What every server in `servers` has (none when `servers` is empty or `enabled` is
    /// false).
    pub fn common(servers: &[ServerInfo], enabled: bool) -> Commands {
        if !enabled || servers.is_empty() {
            return Commands::default();
        }
        let first = servers[0].delete_if_equal();
        Commands {
            set_ifeq: servers.iter().all(ServerInfo::has_set_ifeq),
            delete_if_equal: first.filter(|d| {
                servers
                    .iter()
                    .all(|s| s.delete_if_equal().as_ref() == Some(d))
            }),
            msetex: servers.iter().all(ServerInfo::has_msetex),
        }
    }

    /// The form each script runs in, for the stats and the log.
    pub fn choices(&self) -> NativeChoices {
        let set_ifeq = if self.set_ifeq { "SET IFEQ" } else { SCRIPT };
        NativeChoices {
            compare_and_set: set_ifeq,
            set_many: if self.msetex { "MSETEX" } else { SCRIPT },
            lock_extend: set_ifeq,
            lock_release: match self.delete_if_equal {
                Some(DeleteIfEqual::DelIfEq) => "DELIFEQ",
                Some(DeleteIfEqual::DelEx) => "DELEX IFEQ",
                None => SCRIPT,
            },
        }
    }
}

const SCRIPT: &str = "script";

/// Per script with a native form: the command it runs as now, or `"script"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NativeChoices {
    /// [`Storage::compare_and_set`](super::Storage::compare_and_set): `SET IFEQ` or `script`.
    pub compare_and_set: &'static str,
    /// [`Storage::set_many`](super::Storage::set_many): `MSETEX` or `script`.
    pub set_many: &'static str,
    /// The lock watchdog's extension: `SET IFEQ` or `script`.
    pub lock_extend: &'static str,
    /// The lock release: `DELIFEQ`, `DELEX IFEQ` or `script`.
    pub lock_release: &'static str,
}

impl fmt::Display for NativeChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compare-and-set: {}, set-many: {}, lock-extend: {}, lock-release: {}",
            self.compare_and_set, self.set_many, self.lock_extend, self.lock_release
        )
    }
}

/// The server part of the storage stats (`/status` → `storage.server`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// `redis` or `valkey` (on a Cluster, the oldest master's).
    pub name: ServerKind,
    /// Its version.
    pub version: String,
    /// Masters asked (1 outside a Cluster).
    pub masters: usize,
    /// `storage.redis.native_commands`: false keeps every script.
    pub native_commands: bool,
    /// The form each script with a native twin runs in.
    pub commands: NativeChoices,
    /// Whether `WAITAOF` exists on every master (`storage.redis.wait_aof` needs it, and
    /// `appendonly yes`).
    pub waitaof: bool,
}

/// What detection found: every master, and the commands they all have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// One per master.
    pub servers: Vec<ServerInfo>,
    /// `storage.redis.native_commands`.
    pub enabled: bool,
    /// The native commands in use.
    pub commands: Commands,
}

impl Profile {
    /// The profile of `servers` (one per master).
    pub fn new(servers: Vec<ServerInfo>, enabled: bool) -> Profile {
        let commands = Commands::common(&servers, enabled);
        Profile {
            servers,
            enabled,
            commands,
        }
    }

    /// The oldest master: the one whose commands limit the choice.
    pub fn oldest(&self) -> Option<&ServerInfo> {
        self.servers
            .iter()
            .min_by_key(|s| (s.version, s.kind == ServerKind::Valkey))
    }

    /// The stats view.
    pub fn stats(&self) -> Option<ServerStats> {
        let oldest = self.oldest()?;
        Some(ServerStats {
            name: oldest.kind,
            version: oldest.version.to_string(),
            masters: self.servers.len(),
            native_commands: self.enabled,
            commands: self.commands.choices(),
            waitaof: self.servers.iter().all(ServerInfo::has_waitaof),
        })
    }

    /// Why `storage.redis.wait_aof` cannot be honoured here, if it cannot.
    pub fn wait_aof_problem(&self) -> Option<String> {
        if let Some(s) = self.servers.iter().find(|s| !s.has_waitaof()) {
            return Some(format!(
                "{} {} has no WAITAOF (it needs Redis 7.2+ or Valkey); set it to false or \
                 upgrade the server",
                s.kind, s.version
            ));
        }
        if let Some(s) = self.servers.iter().find(|s| !s.aof_enabled) {
            return Some(format!(
                "{} {} runs without an append-only file (appendonly no), so WAITAOF cannot \
                 wait for it: enable appendonly on the server or set it to false",
                s.kind, s.version
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALKEY: &str =
        "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n";
    const REDIS: &str = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";

    fn info(kind: ServerKind, version: Version) -> ServerInfo {
        ServerInfo {
            kind,
            version,
            aof_enabled: true,
        }
    }

    #[test]
    fn info_names_the_server_by_its_own_fields() {
        let v = ServerInfo::from_info(VALKEY);
        assert_eq!((v.kind, v.version), (ServerKind::Valkey, Version(9, 1, 2)));
        let r = ServerInfo::from_info(REDIS);
        assert_eq!((r.kind, r.version), (ServerKind::Redis, Version(7, 0, 15)));
        assert!(!r.aof_enabled);
        let aof = ServerInfo::from_info(&format!("{REDIS}# Persistence\r\naof_enabled:1\r\n"));
        assert!(aof.aof_enabled);
        assert_eq!(Version::parse("255.255.255"), Version(255, 255, 255));
        assert_eq!(Version::parse("8.1"), Version(8, 1, 0));
        assert_eq!(Version::parse("x"), Version(0, 0, 0));
    }

    #[test]
    fn commands_follow_the_version_table() {
        let redis7 = Commands::common(&[info(ServerKind::Redis, Version(7, 0, 15))], true);
        assert_eq!(redis7, Commands::default());
        let redis84 = Commands::common(&[info(ServerKind::Redis, Version(8, 4, 0))], true);
        assert!(redis84.set_ifeq && redis84.msetex);
        assert_eq!(redis84.delete_if_equal, Some(DeleteIfEqual::DelEx));
        let valkey81 = Commands::common(&[info(ServerKind::Valkey, Version(8, 1, 0))], true);
        assert!(valkey81.set_ifeq && !valkey81.msetex && valkey81.delete_if_equal.is_none());
        let valkey90 = Commands::common(&[info(ServerKind::Valkey, Version(9, 0, 3))], true);
        assert_eq!(valkey90.delete_if_equal, Some(DeleteIfEqual::DelIfEq));
        assert!(!valkey90.msetex);
        let valkey91 = Commands::common(&[info(ServerKind::Valkey, Version(9, 1, 2))], true);
        assert!(valkey91.set_ifeq && valkey91.msetex);
        assert_eq!(
            valkey91.choices().to_string(),
            "compare-and-set: SET IFEQ, set-many: MSETEX, lock-extend: SET IFEQ, lock-release: DELIFEQ"
        );
        // Switched off: scripts everywhere.
        let off = Commands::common(&[info(ServerKind::Valkey, Version(9, 1, 2))], false);
        assert_eq!(off, Commands::default());
        assert_eq!(off.choices().lock_release, "script");
    }

    #[test]
    fn a_cluster_uses_only_what_every_master_has() {
        let mixed = Profile::new(
            vec![
                info(ServerKind::Valkey, Version(9, 1, 2)),
                info(ServerKind::Valkey, Version(8, 1, 1)),
            ],
            true,
        );
        assert!(mixed.commands.set_ifeq && !mixed.commands.msetex);
        assert!(mixed.commands.delete_if_equal.is_none());
        let stats = mixed.stats().unwrap();
        assert_eq!((stats.version.as_str(), stats.masters), ("8.1.1", 2));
        // Redis and Valkey delete with different commands: neither is common.
        let both = Commands::common(
            &[
                info(ServerKind::Valkey, Version(9, 1, 2)),
                info(ServerKind::Redis, Version(8, 4, 0)),
            ],
            true,
        );
        assert!(both.delete_if_equal.is_none() && both.set_ifeq && both.msetex);
    }

    #[test]
    fn wait_aof_needs_the_command_and_an_append_only_file() {
        let old = Profile::new(vec![info(ServerKind::Redis, Version(7, 0, 15))], true);
        assert!(old.wait_aof_problem().unwrap().contains("has no WAITAOF"));
        let mut no_aof = info(ServerKind::Valkey, Version(9, 1, 2));
        no_aof.aof_enabled = false;
        let p = Profile::new(vec![no_aof], true);
        assert!(p.wait_aof_problem().unwrap().contains("appendonly"));
        let ok = Profile::new(vec![info(ServerKind::Redis, Version(7, 2, 0))], true);
        assert_eq!(ok.wait_aof_problem(), None);
    }
}
