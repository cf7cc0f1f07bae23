//! Peer monitor: which bots are alive, stale or zombies, from their `heartbeat:PID` keys.
//!
//! Every `heartbeat.monitor_interval_ms` the [`PeerMonitor`] actor asks the [`Peers`] handle
//! to scan: `SCAN MATCH heartbeat:*` (never `KEYS`), the records read in one pipelined batch,
//! and `TIME` for the server's clock. A peer is
//! - *stale* when its last heartbeat is older than `heartbeat.stale_after_intervals` x
//!   `heartbeat.interval_ms` by the server's clock;
//! - a *zombie* when its key is alive, its `host` is this host and no process has its pid
//!   (`kill(pid, 0)` answers `ESRCH`);
//! - *live* otherwise.
//!
//! Each change is a [`PeerEvent`] broadcast to subscribers ([`Peers::subscribe`]): a peer
//! joined, became stale, zombie or live again, or left (its key expired or was deleted).
//! The last scan is kept in the handle, so [`Peers::list`] answers without a round trip and a
//! restarted actor continues from it without repeating events. During an outage the scan sees
//! the fallback (the heartbeats written meanwhile in this process).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use super::sender::HeartbeatRecord;
use super::{heartbeat_key, process_exists, HeartbeatError, HEARTBEAT_PREFIX};
use crate::settings::HeartbeatSettings;
use crate::storage::{Op, Storage};
use crate::supervisor::ChildContext;

/// Events kept for a slow subscriber before it starts losing the oldest.
const EVENT_CAPACITY: usize = 1_024;

/// A peer's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heartbeating on time.
    Live,
    /// Its last heartbeat is older than the stale threshold.
    Stale,
    /// Its key is alive but its process is gone from this host.
    Zombie,
}

/// A peer as the last scan saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    /// Its heartbeat record.
    pub record: HeartbeatRecord,
    /// Age of the record by the server's clock, milliseconds.
    pub age_ms: u64,
    /// Its health.
    pub state: PeerState,
}

/// A change seen by the monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PeerEvent {
    /// A heartbeat key appeared.
    Joined(Peer),
    /// A peer missed its heartbeats.
    Stale(Peer),
    /// A peer's process is gone from this host while its key lives on.
    Zombie(Peer),
    /// A stale or zombie peer heartbeats on time again.
    Recovered(Peer),
    /// A peer's key expired or was deleted.
    Left {
        /// Its pid.
        pid: u32,
        /// Its state at the last scan that saw it.
        last_state: PeerState,
    },
}

#[derive(Debug)]
struct Shared {
    storage: Storage,
    settings: HeartbeatSettings,
    host: String,
    peers: RwLock<BTreeMap<u32, Peer>>,
    events: broadcast::Sender<PeerEvent>,
    scanning: tokio::sync::Mutex<()>,
}

/// The host's handle on the peer monitor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Peers {
    shared: Arc<Shared>,
}

impl Peers {
    /// A monitor for this `host`.
    pub fn new(storage: Storage, settings: HeartbeatSettings, host: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                storage,
                settings,
                host: host.to_string(),
                peers: RwLock::new(BTreeMap::new()),
                events: broadcast::channel(EVENT_CAPACITY).0,
                scanning: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Peer events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    /// The peers of the last scan, by pid.
    pub fn list(&self) -> Vec<Peer> {
        self.shared.peers.read().values().cloned().collect()
    }

    /// The peers in one state, from the last scan.
    pub fn in_state(&self, state: PeerState) -> Vec<Peer> {
        self.shared
            .peers
            .read()
            .values()
            .filter(|p| p.state == state)
            .cloned()
            .collect()
    }

    /// Reads one bot's heartbeat (the seed's `get_heartbeat(pid)`).
    pub async fn get(&self, pid: u32) -> Result<Option<HeartbeatRecord>, HeartbeatError> {
        let text = self.shared.storage.get(&heartbeat_key(pid)).await?;
        Ok(text.and_then(|t| parse_record(&t)))
    }

    /// Scans now: updates the list and broadcasts the changes. Scans do not overlap.
    pub async fn scan(&self) -> Result<Vec<Peer>, HeartbeatError> {
        let _one_at_a_time = self.shared.scanning.lock().await;
        let storage = &self.shared.storage;
        let keys = storage.scan(&format!("{HEARTBEAT_PREFIX}*")).await?;
        let now = storage.server_time_ms().await?;
        let ops = keys
            .iter()
            .map(|key| Op::Get { key: key.clone() })
            .collect();
        let replies = storage.execute_batch(ops).await;
        let stale_after = self
            .shared
            .settings
            .interval_ms
            .saturating_mul(self.shared.settings.stale_after_intervals);
        let mut seen = BTreeMap::new();
        for (key, reply) in keys.iter().zip(replies) {
            // A key of another type (WRONGTYPE) or text that is not a record is not a peer.
            let Some(record) = reply
                .ok()
                .and_then(|r| r.into_opt_string())
                .and_then(|t| parse_record(&t))
            else {
                tracing::debug!(actor = "peer-monitor", %key, "not a heartbeat record");
                continue;
            };
            let age_ms = now.saturating_sub((record.timestamp * 1_000.0) as u64);
            let state = if record.host == self.shared.host && !process_exists(record.pid) {
                PeerState::Zombie
            } else if age_ms > stale_after {
                PeerState::Stale
            } else {
                PeerState::Live
            };
            seen.insert(
                record.pid,
                Peer {
                    record,
                    age_ms,
                    state,
                },
            );
        }
        let events = {
            let mut peers = self.shared.peers.write();
            let mut events = Vec::new();
            for (pid, peer) in &seen {
                let before = peers.get(pid).map(|p| p.state);
                let event = match (before, peer.state) {
                    (None, PeerState::Live) => Some(PeerEvent::Joined(peer.clone())),
                    (None, _) => {
                        events.push(PeerEvent::Joined(peer.clone()));
                        transition(peer)
                    }
                    (Some(b), s) if b == s => None,
                    (Some(_), _) => transition(peer),
                };
                events.extend(event);
            }
            for (pid, peer) in peers.iter() {
                if !seen.contains_key(pid) {
                    events.push(PeerEvent::Left {
                        pid: *pid,
                        last_state: peer.state,
                    });
                }
            }
            *peers = seen;
            events
        };
        for event in events {
            tracing::debug!(actor = "peer-monitor", ?event, "peer event");
            let _ = self.shared.events.send(event);
        }
        Ok(self.list())
    }
}

fn transition(peer: &Peer) -> Option<PeerEvent> {
    Some(match peer.state {
        PeerState::Live => PeerEvent::Recovered(peer.clone()),
        PeerState::Stale => PeerEvent::Stale(peer.clone()),
        PeerState::Zombie => PeerEvent::Zombie(peer.clone()),
    })
}

/// Reads a heartbeat record, tolerating what other writers may do: a pid as text, a missing
/// room, participants or status.
fn parse_record(text: &str) -> Option<HeartbeatRecord> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let pid = match value.get("pid")? {
        serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    let text_of = |field: &str| {
        value
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Some(HeartbeatRecord {
        pid,
        host: text_of("host").unwrap_or_default(),
        room_url: text_of("room_url"),
        participants: value
            .get("participants")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|p| match p {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        status: text_of("status").unwrap_or_else(|| "active".into()),
        timestamp: value.get("timestamp").and_then(|v| v.as_f64())?,
    })
}

/// The actor that scans every `heartbeat.monitor_interval_ms`, from a supervised task on the
/// host runtime.
#[derive(Debug)]
pub(crate) struct PeerMonitor {
    peers: Peers,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

impl PeerMonitor {
    /// A monitor actor driving `peers` on `runtime`, for the incarnation `child`.
    pub fn new(peers: Peers, runtime: tokio::runtime::Handle, child: ChildContext) -> Self {
        Self {
            peers,
            runtime,
            child,
        }
    }
}

impl Actor for PeerMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let peers = self.peers.clone();
        self.child
            .spawn_task(ctx, "scans", &self.runtime, scan_peers(peers));
    }
}

/// Scans now and then every `heartbeat.monitor_interval_ms` (a failed scan is logged, the next
/// one tried at its time). Never returns.
async fn scan_peers(peers: Peers) {
    let every = Duration::from_millis(peers.shared.settings.monitor_interval_ms.max(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = peers.scan().await {
            tracing::warn!(actor = "peer-monitor", error = %e, "peer scan failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_other_writers_are_read() {
        let r = parse_record(
            r#"{"pid":"42","host":"h","room_url":"https://r","participants":["a",7],"timestamp":1.5}"#,
        )
        .unwrap();
        assert_eq!(r.pid, 42);
        assert_eq!(r.participants, vec!["a".to_string(), "7".to_string()]);
        assert_eq!(r.status, "active");
        assert!(parse_record("not json").is_none());
        assert!(parse_record(r#"{"pid":1}"#).is_none(), "no timestamp");
    }
}
