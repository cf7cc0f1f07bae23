//! Presence: this instance's record in Redis, so operators and other instances can list the
//! live botfleet processes.
//!
//! Owns the hash `INTERNAL_PREFIX:instance:ID` (fields `pid`, `host`, `started_at`, `beats`,
//! `storage_mode`, `updated_at`, all text), rewritten every `presence.interval_ms` with a TTL
//! of `presence.ttl_secs`. Accepts `GetPresence`. A beat goes through the storage handle
//! like any write, so while Redis is down it lands in the fallback and is replayed.
//!
//! Failure and restart: a storage error other than an outage (for example another client
//! turned the key into a string: WRONGTYPE) is fatal: the actor reports it to its supervisor,
//! which restarts it; the new incarnation deletes the broken key and resumes counting from the
//! `beats` it mirrored in storage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::clock::now_ms;
use crate::settings::PresenceSettings;
use crate::storage::{Storage, StorageError};
use crate::supervisor::ChildContext;

/// What `GetPresence` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceStatus {
    /// The record's key.
    pub key: String,
    /// Beats written since this instance started (continued across restarts of the actor).
    pub beats: u64,
    /// The last beat's error, if it failed.
    pub last_error: Option<String>,
}

/// Query: the presence actor's status.
#[derive(Debug, Message)]
#[rtype(result = "PresenceStatus")]
pub(crate) struct GetPresence;

/// Writes this instance's presence record, from a supervised task on the host runtime.
#[derive(Debug)]
pub(crate) struct Presence {
    record: Arc<Record>,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

/// What a beat writes, and its last outcome (read by `GetPresence`).
#[derive(Debug)]
struct Record {
    storage: Storage,
    settings: PresenceSettings,
    key: String,
    pid: String,
    host: String,
    started_at: String,
    beats: AtomicU64,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Presence {
    /// A presence actor for `instance_id`, beating from a task on `runtime`.
    pub fn new(
        storage: Storage,
        settings: PresenceSettings,
        instance_id: &str,
        runtime: tokio::runtime::Handle,
        child: ChildContext,
    ) -> Self {
        Self {
            record: Arc::new(Record {
                key: storage.keys().instance(instance_id),
                storage,
                settings,
                pid: std::process::id().to_string(),
                host: hostname(),
                started_at: now_ms().to_string(),
                beats: AtomicU64::new(0),
                last_error: parking_lot::Mutex::new(None),
            }),
            runtime,
            child,
        }
    }
}

impl Record {
    /// Rebuilds from what was mirrored (continues the beat count; a record of the wrong type,
    /// the failure that restarted the actor, is removed first), then beats every
    /// `presence.interval_ms`. Ends only with a fatal error.
    async fn run(self: Arc<Self>) -> Result<(), String> {
        let beats = match self.storage.hget(&self.key, "beats").await {
            Ok(beats) => beats.and_then(|b| b.parse::<u64>().ok()).unwrap_or(0),
            Err(StorageError::Command(_)) => {
                let _ = self.storage.del(&[&self.key]).await;
                0
            }
            Err(_) => 0,
        };
        self.beats.store(beats, Ordering::Relaxed);
        let every = Duration::from_millis(self.settings.interval_ms.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.beat().await?;
        }
    }

    /// Writes one beat. A refused write is remembered; a command error (WRONGTYPE) is fatal.
    async fn beat(&self) -> Result<(), String> {
        let beat = self.beats.fetch_add(1, Ordering::Relaxed) + 1;
        let fields = [
            ("pid", self.pid.clone()),
            ("host", self.host.clone()),
            ("started_at", self.started_at.clone()),
            ("beats", beat.to_string()),
            ("storage_mode", self.storage.mode().to_string()),
            ("updated_at", now_ms().to_string()),
        ];
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(f, v)| (*f, v.as_str())).collect();
        let ttl = Duration::from_secs(self.settings.ttl_secs);
        let written = async {
            self.storage.hset(&self.key, &pairs).await?;
            self.storage.expire(&self.key, ttl).await?;
            Ok::<_, StorageError>(())
        }
        .await;
        match written {
            Ok(()) => {
                *self.last_error.lock() = None;
                tracing::debug!(actor = "presence", key = %self.key, beat, "presence beat");
                Ok(())
            }
            Err(e @ StorageError::Command(_)) => Err(format!("presence record {}: {e}", self.key)),
            Err(e) => {
                tracing::warn!(actor = "presence", key = %self.key, error = %e, "presence beat refused");
                *self.last_error.lock() = Some(e.to_string());
                Ok(())
            }
        }
    }
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let record = self.record.clone();
        self.child
            .spawn_task(ctx, "beats", &self.runtime, record.run());
    }
}

impl Handler<GetPresence> for Presence {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _: GetPresence, _: &mut Context<Self>) -> Self::Result {
        MessageResult(PresenceStatus {
            key: self.record.key.clone(),
            beats: self.record.beats.load(Ordering::Relaxed),
            last_error: self.record.last_error.lock().clone(),
        })
    }
}

/// The host name, from the kernel (no extra dependency).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
