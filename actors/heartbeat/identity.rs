//! Identity registry: participant identities shared across bot processes (seed 004).
//!
//! Owns `identity:ROOM:PARTICIPANT`, a JSON string holding the record the host wrote, with a
//! TTL of `identities.ttl_secs` (24 h by default). [`Identities::list`] finds a room's entries
//! with `SCAN` (the room's glob characters escaped), never `KEYS`, and reads them in one
//! pipelined batch. [`Identities::cleanup_expired`] bounds what other writers left behind:
//! entries without a TTL get one, entries that are not JSON are deleted; Redis itself deletes
//! entries whose TTL ran out. No actor: every call is one or two storage round trips on the
//! caller's task; during an outage they are served by the fallback and replayed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{check_room, glob_escape, identity_key, HeartbeatError, IDENTITY_PREFIX};
use crate::settings::IdentitySettings;
use crate::storage::{Op, Storage, Ttl};

/// What [`Identities::cleanup_expired`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Entries of the room examined.
    pub examined: usize,
    /// Entries without a TTL that were given `identities.ttl_secs`.
    pub ttl_restored: usize,
    /// Entries deleted because they were not JSON records.
    pub removed: usize,
}

#[derive(Debug)]
struct Shared {
    storage: Storage,
    settings: IdentitySettings,
}

/// The identity registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Identities {
    shared: Arc<Shared>,
}

impl Identities {
    /// A registry on `storage`.
    pub fn new(storage: Storage, settings: IdentitySettings) -> Self {
        Self {
            shared: Arc::new(Shared { storage, settings }),
        }
    }

    fn check(&self, room: &str, participant: &str) -> Result<(), HeartbeatError> {
        check_room(room)?;
        if participant.trim().is_empty() {
            return Err(HeartbeatError::InvalidParticipant(
                participant.to_string(),
                "empty participant id",
            ));
        }
        Ok(())
    }

    /// Writes a participant's record (the seed's `write_identity`), with the registry's TTL.
    pub async fn write(
        &self,
        room: &str,
        participant: &str,
        record: &serde_json::Value,
    ) -> Result<(), HeartbeatError> {
        self.check(room, participant)?;
        let text = record.to_string();
        if text.len() > self.shared.settings.max_bytes {
            return Err(HeartbeatError::RecordTooLarge {
                bytes: text.len(),
                max: self.shared.settings.max_bytes,
            });
        }
        let ttl = Duration::from_secs(self.shared.settings.ttl_secs);
        self.shared
            .storage
            .set(&identity_key(room, participant), text, Some(ttl))
            .await?;
        Ok(())
    }

    /// Reads a participant's record (the seed's `read_identity`); `None` when absent or not
    /// JSON.
    pub async fn read(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<Option<serde_json::Value>, HeartbeatError> {
        self.check(room, participant)?;
        let text = self
            .shared
            .storage
            .get(&identity_key(room, participant))
            .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Removes a participant's record.
    pub async fn remove(&self, room: &str, participant: &str) -> Result<bool, HeartbeatError> {
        self.check(room, participant)?;
        let key = identity_key(room, participant);
        Ok(self.shared.storage.del(&[&key]).await? > 0)
    }

    async fn room_keys(&self, room: &str) -> Result<Vec<String>, HeartbeatError> {
        check_room(room)?;
        let pattern = format!("{IDENTITY_PREFIX}{}:*", glob_escape(room));
        Ok(self.shared.storage.scan(&pattern).await?)
    }

    /// Every participant of `room` with its record, sorted by participant id (the seed's
    /// `scan_identities`). Entries that are not JSON are skipped.
    pub async fn list(
        &self,
        room: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, HeartbeatError> {
        let keys = self.room_keys(room).await?;
        let prefix = identity_key(room, "");
        let ops = keys.iter().map(|k| Op::Get { key: k.clone() }).collect();
        let replies = self.shared.storage.execute_batch(ops).await;
        let mut out = Vec::with_capacity(keys.len());
        for (key, reply) in keys.iter().zip(replies) {
            let Some(participant) = key.strip_prefix(&prefix) else {
                continue;
            };
            let record = reply
                .ok()
                .and_then(|r| r.into_opt_string())
                .and_then(|t| serde_json::from_str(&t).ok());
            if let Some(record) = record {
                out.push((participant.to_string(), record));
            }
        }
        Ok(out)
    }

    /// Bounds the room's entries (the seed's `cleanup_expired_identities`): an entry without a
    /// TTL gets `identities.ttl_secs`, an entry that is not a JSON record is deleted.
    pub async fn cleanup_expired(&self, room: &str) -> Result<CleanupReport, HeartbeatError> {
        let keys = self.room_keys(room).await?;
        let storage = &self.shared.storage;
        let mut report = CleanupReport {
            examined: keys.len(),
            ..CleanupReport::default()
        };
        let ttl = Duration::from_secs(self.shared.settings.ttl_secs);
        for key in &keys {
            let text = match storage.get(key).await {
                Ok(text) => text,
                // Another type under our name: not a record.
                Err(crate::storage::StorageError::Command(_)) => Some(String::new()),
                Err(e) => return Err(e.into()),
            };
            let Some(text) = text else { continue };
            if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                if storage.del(&[key]).await? > 0 {
                    report.removed += 1;
                }
                continue;
            }
            if storage.ttl(key).await? == Ttl::Persistent && storage.expire(key, ttl).await? {
                report.ttl_restored += 1;
            }
        }
        Ok(report)
    }
}
