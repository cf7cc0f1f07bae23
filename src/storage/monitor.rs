//! The storage monitor task: connection events, liveness PINGs, fallback maintenance, and
//! the resync that replays the outbox when Redis answers again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};

use super::redis::{self, ConnEvent, Failure};
use super::{outbox, Mode, Storage, StorageEvent};
use crate::clock::now_ms;

impl Storage {
    pub(super) fn spawn_monitor(&self) {
        let weak = Arc::downgrade(&self.inner);
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Some(redis) = &self.inner.redis {
            redis.watch(tx);
            let mut messages = redis.messages();
            let weak_bus = weak.clone();
            tokio::spawn(async move {
                loop {
                    match messages.recv().await {
                        Ok(message) => {
                            let Some(inner) = weak_bus.upgrade() else {
                                break;
                            };
                            let (channel, payload) = redis::message_text(&message);
                            Storage { inner }.deliver_local(&channel, &payload);
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            if let Some(inner) = weak_bus.upgrade() {
                                inner
                                    .counters
                                    .lagged_messages
                                    .fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
            // Keyspace notifications come apart from the other messages: delivered the same.
            let mut keyspace = redis.keyspace_events();
            let weak_bus = weak.clone();
            tokio::spawn(async move {
                loop {
                    match keyspace.recv().await {
                        Ok(event) => {
                            let Some(inner) = weak_bus.upgrade() else {
                                break;
                            };
                            let (channel, payload) = redis::keyspace_text(&event);
                            Storage { inner }.deliver_local(&channel, &payload);
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            if let Some(inner) = weak_bus.upgrade() {
                                inner
                                    .counters
                                    .lagged_messages
                                    .fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
        } else {
            drop(tx);
        }
        tokio::spawn(async move {
            let Some(first) = weak.upgrade() else { return };
            let ping_every = first.ping_interval;
            let sweep_every = first.sweep_interval;
            drop(first);
            let mut ping = tokio::time::interval(ping_every);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sweep = tokio::time::interval(sweep_every);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut events_open = true;
            loop {
                let Some(inner) = weak.upgrade() else { break };
                if inner.stopped.load(Ordering::Acquire) {
                    break;
                }
                let storage = Storage { inner };
                tokio::select! {
                    _ = storage.inner.stop.notified() => break,
                    event = rx.recv(), if events_open => match event {
                        Some(ConnEvent::Error(reason)) => {
                            if storage.mode() == Mode::Redis {
                                storage.degrade(reason);
                            }
                        }
                        Some(ConnEvent::Reconnected) => {
                            if let Some(redis) = &storage.inner.redis {
                                let _ = redis.resubscribe().await;
                                // Another server may answer now (a fail-over, an upgrade).
                                if let Ok(Some(problem)) = redis.detect().await {
                                    if storage.mode() == Mode::Redis {
                                        storage.degrade(format!("storage.redis.wait_aof: {problem}"));
                                    }
                                }
                            }
                            if matches!(storage.mode(), Mode::Degraded | Mode::Resyncing) {
                                storage.try_resync().await;
                            }
                        }
                        None => events_open = false,
                    },
                    _ = ping.tick() => storage.check_redis().await,
                    _ = storage.inner.wake.notified() => {}
                    _ = sweep.tick() => {
                        if let Err(e) = storage.inner.local.maintain(now_ms()) {
                            tracing::error!(backend = "file", error = %e, "fallback maintenance failed");
                        }
                    }
                }
            }
        });
    }

    /// Liveness check of the monitor: PING in `redis` mode (an idle dead connection is not
    /// noticed otherwise), resync attempt in `degraded`/`resyncing`.
    pub(super) async fn check_redis(&self) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        match self.mode() {
            Mode::Redis => {
                // Patient: a busy machine must not pass for an outage (calls detect real ones).
                let patience = Duration::from_secs(1);
                if !redis.ping_patiently(patience).await && self.mode() == Mode::Redis {
                    self.degrade("PING unanswered".into());
                }
            }
            Mode::Degraded | Mode::Resyncing => {
                if redis.ping().await {
                    self.try_resync().await;
                }
            }
            Mode::Fallback => {}
        }
    }

    /// Replays the outbox and returns to `redis` mode; on a new outage stays `degraded`.
    async fn try_resync(&self) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let Ok(_guard) = self.inner.resync.try_lock() else {
            return;
        };
        if self.mode() == Mode::Redis {
            return;
        }
        // The server that answers may not be the one that left (a fail-over, a restart on
        // an upgrade): ask it first. One that cannot honour `wait_aof` is not written to.
        // (A detection that fails keeps the last profile: the replay then meets the outage.)
        if let Ok(Some(_)) = redis.detect().await {
            return;
        }
        let started = Instant::now();
        self.set_mode(Mode::Resyncing, "redis answers again");
        let mut replayed = 0u64;
        if let Err(e) = redis.load(outbox::command_wrapper()).await {
            self.set_mode(Mode::Degraded, &format!("replay interrupted: {e:?}"));
            return;
        }
        if !self.restore_if_lost().await {
            self.set_mode(Mode::Degraded, "last-known write-back interrupted");
            return;
        }
        loop {
            let (outbox_id, batch) = self.inner.local.peek(self.inner.replay_batch);
            if batch.is_empty() {
                match self.inner.local.finish_resync(|| {
                    self.set_mode(Mode::Redis, "outbox replayed");
                }) {
                    Ok(true) => {
                        let event = StorageEvent::Resynced {
                            entries: replayed,
                            millis: started.elapsed().as_millis() as u64,
                        };
                        event.emit(&self.inner.counters);
                        let _ = self.inner.events.send(event);
                        return;
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(backend = "file", error = %e, "resync bookkeeping failed");
                        self.set_mode(Mode::Degraded, &e.to_string());
                        return;
                    }
                }
            }
            let last = batch.last().map_or(0, |e| e.seq);
            match redis
                .replay(&outbox_id, self.inner.keys.internal_prefix(), &batch)
                .await
            {
                Ok(_) => {
                    replayed += batch.len() as u64;
                    self.inner
                        .counters
                        .replayed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Err(e) = self.inner.local.ack(last) {
                        tracing::error!(backend = "file", error = %e, "outbox ack failed");
                    }
                }
                Err(Failure::Outage(reason)) | Err(Failure::Command(reason)) => {
                    self.set_mode(Mode::Degraded, &format!("replay interrupted: {reason}"));
                    return;
                }
                Err(Failure::NoScript) => {
                    self.set_mode(Mode::Degraded, "replay script missing");
                    return;
                }
            }
        }
    }
}
