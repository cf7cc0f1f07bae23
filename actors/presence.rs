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

/// Writes this instance's presence record.
#[derive(Debug)]
pub(crate) struct Presence {
    storage: Storage,
    settings: PresenceSettings,
    key: String,
    pid: String,
    host: String,
    started_at: String,
    beats: u64,
    last_error: Option<String>,
    child: ChildContext,
}

impl Presence {
    /// A presence actor for `instance_id`.
    pub fn new(
        storage: Storage,
        settings: PresenceSettings,
        instance_id: &str,
        child: ChildContext,
    ) -> Self {
        Self {
            key: storage.keys().instance(instance_id),
            storage,
            settings,
            pid: std::process::id().to_string(),
            host: hostname(),
            started_at: now_ms().to_string(),
            beats: 0,
            last_error: None,
            child,
        }
    }

    /// Writes one beat; returns the beat number written.
    async fn beat(
        storage: Storage,
        key: String,
        fields: Vec<(&'static str, String)>,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(f, v)| (*f, v.as_str())).collect();
        storage.hset(&key, &pairs).await?;
        storage.expire(&key, ttl).await?;
        Ok(())
    }

    fn schedule_beat(&mut self, ctx: &mut Context<Self>) {
        self.beats += 1;
        let beat = self.beats;
        let fields = vec![
            ("pid", self.pid.clone()),
            ("host", self.host.clone()),
            ("started_at", self.started_at.clone()),
            ("beats", beat.to_string()),
            ("storage_mode", self.storage.mode().to_string()),
            ("updated_at", now_ms().to_string()),
        ];
        let ttl = Duration::from_secs(self.settings.ttl_secs);
        let fut = Self::beat(self.storage.clone(), self.key.clone(), fields, ttl);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => {
                act.last_error = None;
                tracing::debug!(actor = "presence", key = %act.key, beat, "presence beat");
            }
            Err(e @ StorageError::Command(_)) => {
                act.child.fail(ctx, format!("presence record {}: {e}", act.key));
            }
            Err(e) => {
                tracing::warn!(actor = "presence", key = %act.key, error = %e, "presence beat refused");
                act.last_error = Some(e.to_string());
            }
        }));
    }
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Rebuild from what was mirrored: continue the beat count; a record of the wrong type
        // (the failure that restarted us) is removed first.
        let storage = self.storage.clone();
        let key = self.key.clone();
        let restored = async move {
            match storage.hget(&key, "beats").await {
                Ok(beats) => beats.and_then(|b| b.parse::<u64>().ok()).unwrap_or(0),
                Err(StorageError::Command(_)) => {
                    let _ = storage.del(&[&key]).await;
                    0
                }
                Err(_) => 0,
            }
        };
        ctx.wait(restored.into_actor(self).map(|beats, act, ctx| {
            act.beats = beats;
            act.schedule_beat(ctx);
            let every = Duration::from_millis(act.settings.interval_ms);
            ctx.run_interval(every, |act, ctx| act.schedule_beat(ctx));
        }));
    }
}

impl Handler<GetPresence> for Presence {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _: GetPresence, _: &mut Context<Self>) -> Self::Result {
        MessageResult(PresenceStatus {
            key: self.key.clone(),
            beats: self.beats,
            last_error: self.last_error.clone(),
        })
    }
}

/// The host name, from the kernel (no extra dependency).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
