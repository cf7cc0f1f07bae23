//! Heartbeat sender: this process's `heartbeat:PID`, rewritten every `heartbeat.interval_ms`.
//!
//! Owns the key `heartbeat:PID`: a JSON string `{"pid", "host", "room_url", "participants",
//! "status", "timestamp"}` (timestamp: Unix seconds with millisecond precision, read from the
//! Redis server's clock with `TIME`, so ages compare against one clock) written with
//! `SET .. PX` and a TTL of `heartbeat.ttl_secs`. The host changes the room, participants and
//! status through the [`Heartbeat`] handle (`Fleet::heartbeat()`); each change is written at
//! once. The [`HeartbeatSender`] actor only ticks; the record lives in the handle, so a
//! restarted actor carries on with the same room and participants.
//!
//! Failure: a write during an outage lands in the fallback and is replayed; a refused write
//! (for example a key of the wrong type) is logged and retried on the next tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{check_room, heartbeat_key, HeartbeatError};
use crate::clock::now_ms;
use crate::settings::HeartbeatSettings;
use crate::storage::Storage;
use crate::supervisor::{fault, ChildContext};

/// One heartbeat, as stored in `heartbeat:PID` (the seed's fields, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    /// Process id of the bot.
    pub pid: u32,
    /// Host name of the bot's machine.
    pub host: String,
    /// The room the bot is in; `null` when in none.
    pub room_url: Option<String>,
    /// Participant ids in the room.
    pub participants: Vec<String>,
    /// Free-form status (`active` by default).
    pub status: String,
    /// When it was written, Unix seconds (server clock).
    pub timestamp: f64,
}

impl HeartbeatRecord {
    /// The record as the seed's JSON text.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug)]
struct Shared {
    storage: Storage,
    settings: HeartbeatSettings,
    pid: u32,
    host: String,
    record: Mutex<(Option<String>, Vec<String>, String)>,
    beats: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The host's handle on this process's heartbeat. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    shared: Arc<Shared>,
}

impl Heartbeat {
    /// A handle for this process (`std::process::id()`) on `host`.
    pub fn new(storage: Storage, settings: HeartbeatSettings, host: &str) -> Self {
        Self::for_pid(storage, settings, host, std::process::id())
    }

    /// A handle writing the heartbeat of `pid` (tests and simulations).
    pub fn for_pid(storage: Storage, settings: HeartbeatSettings, host: &str, pid: u32) -> Self {
        let status = settings.status.clone();
        Self {
            shared: Arc::new(Shared {
                storage,
                settings,
                pid,
                host: host.to_string(),
                record: Mutex::new((None, Vec::new(), status)),
                beats: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// A handle writing the heartbeat of `pid` on the same storage, settings and host: for
    /// a bot that registers its heartbeat through this process (a sidecar's `PUT
    /// /api/heartbeats/{pid}`). It starts with no room, no participants and the default
    /// status; no actor beats for it.
    pub fn with_pid(&self, pid: u32) -> Heartbeat {
        Self::for_pid(
            self.shared.storage.clone(),
            self.shared.settings.clone(),
            &self.shared.host,
            pid,
        )
    }

    /// The pid whose heartbeat this handle writes.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// `heartbeat:PID`.
    pub fn key(&self) -> String {
        heartbeat_key(self.shared.pid)
    }

    /// Heartbeats written since start.
    pub fn beats(&self) -> u64 {
        self.shared.beats.load(Ordering::Relaxed)
    }

    /// The last write's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Enters `room` with `participants` (or leaves the room with `None`), and writes the
    /// heartbeat at once. An empty room URL or participant id is refused, nothing written.
    pub async fn set_room(
        &self,
        room: Option<&str>,
        participants: &[&str],
    ) -> Result<(), HeartbeatError> {
        if let Some(room) = room {
            check_room(room)?;
        }
        check_participants(participants)?;
        {
            let mut record = self.shared.record.lock();
            record.0 = room.map(str::to_string);
            record.1 = participants.iter().map(|p| p.to_string()).collect();
        }
        self.beat().await
    }

    /// Replaces the participants and writes the heartbeat at once.
    pub async fn set_participants(&self, participants: &[&str]) -> Result<(), HeartbeatError> {
        check_participants(participants)?;
        self.shared.record.lock().1 = participants.iter().map(|p| p.to_string()).collect();
        self.beat().await
    }

    /// Sets the status and writes the heartbeat at once.
    pub async fn set_status(&self, status: &str) -> Result<(), HeartbeatError> {
        if status.trim().is_empty() {
            return Err(HeartbeatError::EmptyStatus);
        }
        self.shared.record.lock().2 = status.to_string();
        self.beat().await
    }

    /// The record as it would be written now (timestamp from the local clock).
    pub fn record(&self) -> HeartbeatRecord {
        self.record_at(now_ms())
    }

    fn record_at(&self, at_ms: u64) -> HeartbeatRecord {
        let (room_url, participants, status) = self.shared.record.lock().clone();
        HeartbeatRecord {
            pid: self.shared.pid,
            host: self.shared.host.clone(),
            room_url,
            participants,
            status,
            timestamp: at_ms as f64 / 1_000.0,
        }
    }

    /// Sets the room (`None`: in none), participants and status at once, and writes the
    /// heartbeat once: what a bot registering through the daemon (`PUT
    /// /api/heartbeats/{pid}`) does at each of its beats. Answers the record written. An
    /// empty room URL, participant id or status is refused, nothing written.
    pub async fn update(
        &self,
        room: Option<&str>,
        participants: &[&str],
        status: &str,
    ) -> Result<HeartbeatRecord, HeartbeatError> {
        if let Some(room) = room {
            check_room(room)?;
        }
        check_participants(participants)?;
        if status.trim().is_empty() {
            return Err(HeartbeatError::EmptyStatus);
        }
        {
            let mut record = self.shared.record.lock();
            record.0 = room.map(str::to_string);
            record.1 = participants.iter().map(|p| p.to_string()).collect();
            record.2 = status.to_string();
        }
        self.write().await
    }

    /// Writes the heartbeat now, stamped with the server's clock.
    pub async fn beat(&self) -> Result<(), HeartbeatError> {
        self.write().await.map(drop)
    }

    /// Writes the heartbeat now; answers the record written.
    async fn write(&self) -> Result<HeartbeatRecord, HeartbeatError> {
        let storage = &self.shared.storage;
        let result = async {
            let at = storage.server_time_ms().await?;
            let ttl = Duration::from_secs(self.shared.settings.ttl_secs);
            let record = self.record_at(at);
            storage
                .set(&self.key(), record.to_json(), Some(ttl))
                .await?;
            Ok::<_, HeartbeatError>(record)
        }
        .await;
        match &result {
            Ok(_) => {
                self.shared.beats.fetch_add(1, Ordering::Relaxed);
                *self.shared.last_error.lock() = None;
            }
            Err(e) => *self.shared.last_error.lock() = Some(e.to_string()),
        }
        result
    }

    /// Deletes the heartbeat (a clean exit, so that peers do not take this process for a
    /// zombie). Answers whether there was one.
    pub async fn remove(&self) -> Result<bool, HeartbeatError> {
        Ok(self.shared.storage.del(&[&self.key()]).await? > 0)
    }
}

fn check_participants(participants: &[&str]) -> Result<(), HeartbeatError> {
    for p in participants {
        if p.trim().is_empty() {
            return Err(HeartbeatError::InvalidParticipant(
                p.to_string(),
                "empty participant id",
            ));
        }
    }
    Ok(())
}

/// The actor that writes the heartbeat every `heartbeat.interval_ms`, from a supervised task
/// on the host runtime.
#[derive(Debug)]
pub(crate) struct HeartbeatSender {
    heartbeat: Heartbeat,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

impl HeartbeatSender {
    /// A sender ticking for `heartbeat` on `runtime`, for the incarnation `child`.
    pub fn new(heartbeat: Heartbeat, runtime: tokio::runtime::Handle, child: ChildContext) -> Self {
        Self {
            heartbeat,
            runtime,
            child,
        }
    }
}

impl Actor for HeartbeatSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let heartbeat = self.heartbeat.clone();
        self.child
            .spawn_task(ctx, "beats", &self.runtime, send_beats(heartbeat));
    }
}

/// Writes the heartbeat now and then every `heartbeat.interval_ms` (a refused beat is logged,
/// the next one tried at its time). Never returns.
async fn send_beats(heartbeat: Heartbeat) {
    let every = Duration::from_millis(heartbeat.shared.settings.interval_ms.max(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        fault::point("heartbeat");
        if let Err(e) = heartbeat.beat().await {
            tracing::warn!(actor = "heartbeat", key = %heartbeat.key(), error = %e, "heartbeat refused");
        }
    }
}
