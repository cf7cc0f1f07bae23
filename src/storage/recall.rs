//! The Redis side of the last-known copy (`last_known.rs`): the refresher task that reads
//! changed keys back, the data epoch that tells a Redis that lost its data, and the write-back
//! of last-known state into such a Redis before the outbox is replayed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::keys::group_by_slot;
use super::last_known::{
    refresh_script, restore_args, restore_script, REFRESH_BATCH, SHARED_EVERY,
};
use super::op::{Expiry, Op, Reply};
use super::redis::{Failure, RedisBackend};
use super::{Mode, Storage};
use crate::clock::now_ms;

/// Keys written back per restore script call.
const RESTORE_BATCH: usize = 64;

impl Storage {
    /// The key of the data epoch: a random id set once per Redis dataset. A process that
    /// finds it gone, or changed, after an outage knows Redis lost its data meanwhile.
    fn epoch_key(&self) -> String {
        format!("{}:data-epoch", self.inner.keys.internal_prefix())
    }

    /// Starts the refresher: every `storage.last_known.refresh_interval_ms`, while the mode is
    /// `redis`, the dirty keys are read back into the copy; the copy is saved when due.
    pub(super) fn spawn_refresher(&self) {
        if self.inner.redis.is_none() || !self.inner.last_known.is_enabled() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.refresh_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for round in 0u64.. {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.stopped.load(Ordering::Acquire) {
                    break;
                }
                let storage = Storage { inner };
                if storage.mode() != Mode::Redis {
                    continue;
                }
                storage.inner.last_known.contact(now_ms());
                // The epoch is written once the copy holds something worth writing back.
                if storage.inner.last_known.epoch().is_empty()
                    && storage.inner.last_known.usage().0 > 0
                {
                    if let Some(epoch) = storage.current_epoch().await {
                        storage.inner.last_known.set_epoch(&epoch);
                    }
                }
                storage.refresh_dirty(round % SHARED_EVERY == 0).await;
                let last_known = storage.inner.last_known.clone();
                let saved =
                    tokio::task::spawn_blocking(move || last_known.save_if_due(now_ms(), false))
                        .await;
                if let Ok(Err(e)) = saved {
                    tracing::error!(backend = "file", error = %e, "last-known copy not saved");
                }
            }
        });
    }

    /// Reads the dirty keys back from Redis (a bounded number of batches per round, so one
    /// round never holds the copy's lock or Redis for long).
    async fn refresh_dirty(&self, shared: bool) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let last_known = &self.inner.last_known;
        for _ in 0..16 {
            if !last_known.has_dirty(shared) {
                return;
            }
            let keys = last_known.take_dirty(REFRESH_BATCH, shared);
            let mut groups = group_by_slot(keys, |k| k.as_str()).into_iter();
            while let Some(group) = groups.next() {
                match self.read_back(redis, &group).await {
                    Ok(()) => last_known.read_ended(group.len()),
                    Err(Failure::Outage(reason)) => {
                        // This batch's keys not read back yet are read back after the outage.
                        last_known.read_again(group.into_iter().chain(groups.flatten()));
                        self.degrade(reason);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(backend = "redis", error = ?e, "last-known read-back refused");
                        // That group is given up; the batch's others wait for the next round.
                        last_known.read_ended(group.len());
                        last_known.read_again(groups.flatten());
                        return;
                    }
                }
            }
        }
    }

    /// Reads `key` back now when the copy does not hold it as it is (a listing of a shared
    /// key: what the process shows, it still knows if Redis goes away next).
    pub(super) async fn refresh_if_stale(&self, key: &str) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let last_known = &self.inner.last_known;
        if !last_known.take_if_stale(key) {
            return;
        }
        let keys = vec![key.to_string()];
        match self.read_back(redis, &keys).await {
            Ok(()) => last_known.read_ended(1),
            Err(e) => {
                tracing::debug!(backend = "redis", key, error = ?e, "last-known read-back deferred");
                last_known.read_again(keys);
            }
        }
    }

    /// Reads `keys` (one cluster slot) back from Redis into the copy, in one script call.
    async fn read_back(&self, redis: &RedisBackend, keys: &[String]) -> Result<(), Failure> {
        let op = Op::Eval {
            script: refresh_script().reference.clone(),
            keys: keys.to_vec(),
            args: vec![self.inner.max_members.to_string()],
        };
        let reply = redis.exec(&op).await?;
        self.inner.last_known.store_refreshed(keys, reply, now_ms());
        Ok(())
    }

    /// The data epoch on Redis, created when missing; `None` when Redis does not answer.
    async fn current_epoch(&self) -> Option<String> {
        let redis = self.inner.redis.as_ref()?;
        let key = self.epoch_key();
        let fresh = format!("{:016x}", rand::random::<u64>());
        let set = Op::Set {
            key: key.clone(),
            value: fresh,
            expiry: Expiry::Never,
            only_if_absent: true,
        };
        redis.exec(&set).await.ok()?;
        match redis.exec(&Op::Get { key }).await.ok()? {
            Reply::Str(epoch) => Some(epoch),
            _ => None,
        }
    }

    /// Before the outbox is replayed: when Redis lost its data since this process last saw it
    /// (the epoch it remembers is gone or changed), writes the last-known state keys back,
    /// each only if Redis lacks it. False when Redis failed meanwhile.
    pub(super) async fn restore_if_lost(&self) -> bool {
        let Some(redis) = &self.inner.redis else {
            return true;
        };
        let last_known = &self.inner.last_known;
        if !last_known.is_enabled() {
            return true;
        }
        let seen = last_known.epoch();
        let Some(now_epoch) = self.current_epoch().await else {
            return false;
        };
        if seen.is_empty() || seen == now_epoch {
            last_known.set_epoch(&now_epoch);
            return true;
        }
        let now = now_ms();
        let entries = last_known.state_entries(now);
        let total = entries.len();
        let mut written = 0i64;
        for group in group_by_slot(entries, |(k, _)| k.as_str()) {
            for chunk in group.chunks(RESTORE_BATCH) {
                let mut args = Vec::new();
                for (_, entry) in chunk {
                    restore_args(entry, &mut args);
                }
                let op = Op::Eval {
                    script: restore_script().reference.clone(),
                    keys: chunk.iter().map(|(k, _)| k.clone()).collect(),
                    args,
                };
                match redis.exec(&op).await {
                    Ok(reply) => written += reply.as_int(),
                    Err(e) => {
                        tracing::warn!(backend = "redis", error = ?e, "last-known write-back interrupted");
                        return false;
                    }
                }
            }
        }
        tracing::warn!(
            backend = "redis",
            keys = total,
            written,
            "redis lost its data during the outage: last-known state written back where missing"
        );
        last_known.set_epoch(&now_epoch);
        true
    }
}
