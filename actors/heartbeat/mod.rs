//! Heartbeats, peers, identities and admin messages: seed 004's process-health and messaging
//! layer, with the seed's Redis layout so that its Python bots and botfleet interoperate.
//!
//! | file | owns |
//! |---|---|
//! | `sender.rs` | `HeartbeatSender` actor and the [`Heartbeat`] handle: `heartbeat:PID` |
//! | `monitor.rs` | `PeerMonitor` actor and the [`Peers`] handle: live / stale / zombie peers |
//! | `identity.rs` | the [`Identities`] handle: `identity:ROOM:PARTICIPANT` |
//! | `admin.rs` | `AdminInbox` actor and the [`Admin`] handle: `admin:bot:PID`, `admin:queue:PID` |
//! | `mailbox.rs` | any pid's queue read and acknowledged through this process ([`Admin::receive`], [`Admin::acknowledge`]); how payloads of every writer are read |
//!
//! Keys (exactly the seed's, no prefix):
//!
//! | key | type | written by | TTL |
//! |---|---|---|---|
//! | `heartbeat:PID` | string, JSON `{pid, host, room_url, participants, status, timestamp}` | sender | `heartbeat.ttl_secs` |
//! | `identity:ROOM:PARTICIPANT` | string, the host's JSON record | [`Identities::write`] | `identities.ttl_secs` |
//! | `admin:queue:PID` | list of JSON envelopes `{id, from, message, sent_at}` | [`Admin::send`] | `admin.queue_ttl_secs` |
//! | `admin:bot:PID` | pub/sub channel, the same envelopes | [`Admin::send`] | - |
//!
//! The host reaches them through four cloneable handles on the `Fleet`: `heartbeat()`,
//! `peers()`, `identities()`, `admin()`. The sender and the peer monitor run when
//! `heartbeat.enabled`; the admin inbox always runs.
//!
//! - Heartbeats: written every `heartbeat.interval_ms` with a TTL of `heartbeat.ttl_secs`
//!   (settings with a TTL under three intervals are refused). The timestamp is the Redis
//!   server's clock (`TIME`; the local clock on the fallback), so ages compare on one clock
//!   across hosts. A clean shutdown deletes the key.
//! - Peers: a scan every `heartbeat.monitor_interval_ms` (`SCAN`, never `KEYS`; one pipelined
//!   batch of `GET`s; `TIME`). Stale: older than `heartbeat.stale_after_intervals` intervals;
//!   zombie: key alive, `host` equal to ours, no process with its pid; left: the key is gone.
//!   Changes are broadcast as [`PeerEvent`]s.
//! - Identities: `write`, `read`, `remove`, `list(room)` (`SCAN`), `cleanup_expired(room)`.
//! - Admin messages: `send(pid, message)` appends the envelope to the queue, then publishes it;
//!   the inbox delivers each message once, in send order, whether heard live or found in the
//!   queue (`admin.rs` explains how). A bot outside the process reads its queue through
//!   [`Admin::receive`] and removes what it handled with [`Admin::acknowledge`]: at least
//!   once, in order, ids as idempotence keys (`mailbox.rs`). Seed payloads
//!   (`{"message", "timestamp"}`, pushed with `RPUSH` and read from the head, as seed 004's
//!   Python does) are read as typed messages on both paths.
//!
//! Every call goes through [`Storage`](crate::storage::Storage): while Redis is down the
//! heartbeats, identities and queued messages land in the fallback and are replayed when it
//! returns; the inbox then reads its queue again, so messages sent meanwhile reach their bot.
//! A message sent while Redis is down by another process reaches the bot when that process's
//! outbox is replayed and the bot reads its queue (after its own resync, at its poll, or on
//! the next live message).

mod admin;
mod identity;
mod mailbox;
mod monitor;
mod sender;

pub(crate) use admin::AdminInbox;
pub use admin::{Admin, AdminMessage, Delivery, InboxStats};
pub use identity::{CleanupReport, Identities};
pub use mailbox::{Acked, PayloadKind, QueuedMessage, Received};
pub(crate) use monitor::PeerMonitor;
pub use monitor::{Peer, PeerEvent, PeerState, Peers};
pub(crate) use sender::HeartbeatSender;
pub use sender::{Heartbeat, HeartbeatRecord};

use crate::storage::{Expiry, Keyspace, LocalError, Op, Reply, StorageError};

/// Why a heartbeat, identity or admin call failed. Nothing is stored when the input is bad.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatError {
    /// A PID must be a positive decimal integer that fits a process id.
    #[error("invalid pid {0:?}: expected a positive decimal process id")]
    InvalidPid(String),
    /// A room URL must not be empty (nor blank).
    #[error("invalid room: the room URL is empty")]
    EmptyRoom,
    /// A participant id must not be empty and must not contain glob characters.
    #[error("invalid participant id {0:?}: {1}")]
    InvalidParticipant(String, &'static str),
    /// A status must not be empty.
    #[error("invalid status: the status is empty")]
    EmptyStatus,
    /// An admin message is larger than `admin.max_message_bytes`.
    #[error("admin message of {bytes} bytes exceeds admin.max_message_bytes ({max})")]
    MessageTooLarge {
        /// Size of the message given.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// An identity record is larger than `identities.max_bytes`.
    #[error("identity record of {bytes} bytes exceeds identities.max_bytes ({max})")]
    RecordTooLarge {
        /// Size of the record, as JSON.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The inbox receiver was already taken by an earlier call.
    #[error("the admin inbox was already taken")]
    InboxTaken,
    /// The storage refused the call (not an outage: that is served by the fallback).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Prefix of heartbeat keys.
pub const HEARTBEAT_PREFIX: &str = "heartbeat:";
/// Prefix of identity keys.
pub const IDENTITY_PREFIX: &str = "identity:";
/// Prefix of admin channels.
pub const ADMIN_CHANNEL_PREFIX: &str = "admin:bot:";
/// Prefix of admin queues.
pub const ADMIN_QUEUE_PREFIX: &str = "admin:queue:";

/// `heartbeat:PID`.
pub fn heartbeat_key(pid: u32) -> String {
    format!("{HEARTBEAT_PREFIX}{pid}")
}

/// `admin:bot:PID`.
pub fn admin_channel(pid: u32) -> String {
    format!("{ADMIN_CHANNEL_PREFIX}{pid}")
}

/// `admin:queue:PID`.
pub fn admin_queue(pid: u32) -> String {
    format!("{ADMIN_QUEUE_PREFIX}{pid}")
}

/// `identity:ROOM:PARTICIPANT`.
pub fn identity_key(room: &str, participant: &str) -> String {
    format!("{IDENTITY_PREFIX}{room}:{participant}")
}

/// Parses a PID as the seed writes it (decimal text): a typed error for anything else.
pub fn parse_pid(text: &str) -> Result<u32, HeartbeatError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeartbeatError::InvalidPid(text.to_string()));
    }
    match trimmed.parse::<u32>() {
        Ok(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(pid),
        _ => Err(HeartbeatError::InvalidPid(text.to_string())),
    }
}

/// Checks a room URL: not empty.
pub fn check_room(room: &str) -> Result<(), HeartbeatError> {
    if room.trim().is_empty() {
        return Err(HeartbeatError::EmptyRoom);
    }
    Ok(())
}

/// Whether a process with this pid exists on this host (`kill(pid, 0)`: only `ESRCH` means
/// gone; `EPERM` means it exists under another user).
pub fn process_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 performs the permission and existence checks only; nothing is sent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Escapes the glob characters of `text` for a SCAN `MATCH` pattern.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The fallback's twin of the admin queue's acknowledgement scripts: reads the list `keys[0]`,
/// lets `remove` take what one acknowledged entry names (answering whether it took any), and
/// writes the rest back with the list's expiry when anything was taken. Answers how many
/// entries took something.
fn remove_from_queue_local(
    ks: &mut Keyspace,
    now: u64,
    keys: &[String],
    args: &[String],
    script: &str,
    remove: impl Fn(&mut Vec<String>, &str) -> bool,
) -> Result<Reply, LocalError> {
    let key = keys
        .first()
        .ok_or_else(|| LocalError::Script(format!("{script}: no key")))?;
    let mut rest = ks
        .apply(
            &Op::LRange {
                key: key.clone(),
                start: 0,
                stop: -1,
            },
            now,
        )?
        .into_strings();
    let pttl = ks.apply(&Op::Pttl { key: key.clone() }, now)?.as_int();
    let mut removed = 0;
    for arg in args {
        if remove(&mut rest, arg) {
            removed += 1;
        }
    }
    if removed > 0 {
        ks.apply(
            &Op::Del {
                keys: vec![key.clone()],
            },
            now,
        )?;
        if !rest.is_empty() {
            ks.apply(
                &Op::RPush {
                    key: key.clone(),
                    values: rest,
                },
                now,
            )?;
            if pttl > 0 {
                ks.apply(
                    &Op::Expire {
                        key: key.clone(),
                        expiry: Expiry::At(now + pttl as u64),
                    },
                    now,
                )?;
            }
        }
    }
    Ok(Reply::Int(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_decimal_and_positive() {
        assert_eq!(parse_pid("12345"), Ok(12345));
        assert_eq!(parse_pid(" 7 "), Ok(7));
        for bad in ["", "abc", "-1", "0", "12a", "99999999999", "1.5"] {
            assert_eq!(
                parse_pid(bad),
                Err(HeartbeatError::InvalidPid(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_follow_the_seed() {
        assert_eq!(heartbeat_key(12345), "heartbeat:12345");
        assert_eq!(admin_channel(12345), "admin:bot:12345");
        assert_eq!(admin_queue(12345), "admin:queue:12345");
        assert_eq!(
            identity_key("https://room.url", "user1"),
            "identity:https://room.url:user1"
        );
    }

    #[test]
    fn glob_characters_are_escaped() {
        let room = "https://x/r?a=[1]*";
        let pattern = format!("{}:*", glob_escape(room));
        assert!(crate::storage::glob_match(&pattern, &format!("{room}:p")));
        assert!(!crate::storage::glob_match(&pattern, "https://x/rXa=11:p"));
    }

    #[test]
    fn this_process_exists_and_a_free_pid_does_not() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(!process_exists(i32::MAX as u32));
    }
}
