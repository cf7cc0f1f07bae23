//! The fetcher: one per fleet. Its loop takes the leader lock (`shared_data.leader_lock`,
//! a fenced lock renewed by its watchdog), and while leading fetches the source every
//! `fetch_interval_ms` (with retries and backoff), writes the snapshot through the guarded
//! script with its fencing token, the legacy key, and publishes the change notice. The others
//! try for the lock every third of its TTL, so one takes over within 2x the TTL of a leader's
//! death. While Redis is unreachable the leader keeps fetching into the fallback (its lock
//! cannot be renewed and is given up once Redis is back, then taken again); with no Redis
//! configured the only process leads.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::scripts::{DEPOSED, WRITTEN};
use super::{source, Core, SharedData, SnapshotWritten};
use crate::actors::locks::LockGuard;
use crate::clock::now_ms;
use crate::storage::Mode;
use crate::supervisor::{fault, ChildContext};

/// The fetcher's counters (in the handle: they survive a restart of the actor).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    leader: AtomicBool,
    fence: AtomicI64,
    fetches: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    writes: AtomicU64,
    refused_writes: AtomicU64,
    elections: AtomicU64,
    last_success_ms: AtomicU64,
    // Written once per failed fetch, read by metrics: a mutex never held across an await.
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn snapshot(&self, source: Option<String>) -> FetcherMetrics {
        let last = self.last_success_ms.load(Ordering::Relaxed);
        let fence = self.fence.load(Ordering::Relaxed);
        FetcherMetrics {
            leader: self.leader.load(Ordering::Relaxed),
            fence: (fence > 0).then_some(fence as u64),
            source,
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            refused_writes: self.refused_writes.load(Ordering::Relaxed),
            elections: self.elections.load(Ordering::Relaxed),
            last_success_ms: (last > 0).then_some(last),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// The fetcher's counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FetcherMetrics {
    /// Whether this process's fetcher leads now.
    pub leader: bool,
    /// Its fencing token while it leads.
    pub fence: Option<u64>,
    /// The source (URL, or `host function`); `None` when there is none yet.
    pub source: Option<String>,
    /// Successful fetches.
    pub fetches: u64,
    /// Fetches that failed after every attempt.
    pub failures: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Snapshots written.
    pub writes: u64,
    /// Writes refused by the guard (deposed, or older than the snapshot in place).
    pub refused_writes: u64,
    /// Times this process became the leader.
    pub elections: u64,
    /// When the last fetch succeeded, Unix milliseconds.
    pub last_success_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The fetcher actor: runs the fetch loop as a supervised task on the host runtime.
pub(crate) struct Fetcher {
    shared: SharedData,
    child: ChildContext,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher over the shared-data handle.
    pub fn new(shared: SharedData, child: ChildContext) -> Self {
        Self { shared, child }
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let core = self.shared.core.clone();
        let runtime = core.runtime.clone();
        self.child
            .spawn_task(ctx, "fetch loop", &runtime, run(core.clone()));
        self.child
            .spawn_task(ctx, "key watch", &runtime, super::watch::run(core));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared
            .core
            .fetcher
            .leader
            .store(false, Ordering::Relaxed);
    }
}

/// The fetch loop; it never returns. The guard is dropped (and the lock released) when the
/// task is aborted.
async fn run(core: Arc<Core>) {
    let settings = &core.settings;
    let lock_ttl = Duration::from_millis(settings.leader_ttl_ms);
    let interval = Duration::from_millis(settings.fetch_interval_ms);
    let follower_retry = (lock_ttl / 3).max(Duration::from_millis(1));
    let mut guard: Option<LockGuard> = None;
    let counters = &core.fetcher;
    loop {
        fault::point("fetcher");
        let source_changed = core.source_changed.notified();
        tokio::pin!(source_changed);
        source_changed.as_mut().enable();
        let source = core.source();
        let mode = core.storage.mode();
        if guard.as_ref().is_some_and(|g| g.is_lost()) && mode == Mode::Redis {
            tracing::warn!(actor = "fetcher", key = %settings.leader_lock, "leadership lost; standing for election again");
            guard = None;
        }
        if guard.is_none() && source.is_some() && mode == Mode::Redis {
            match core
                .locks
                .try_acquire(&settings.leader_lock, lock_ttl)
                .await
            {
                Ok(Some(g)) => {
                    let fence = g.fencing_token().unwrap_or(0);
                    counters.elections.fetch_add(1, Ordering::Relaxed);
                    counters.fence.store(fence as i64, Ordering::Relaxed);
                    tracing::info!(actor = "fetcher", key = %settings.leader_lock, fence, instance = %core.instance, "elected fetcher of the fleet");
                    guard = Some(g);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(actor = "fetcher", key = %settings.leader_lock, error = %e, "election attempt failed");
                }
            }
        }
        // A lost guard still leads while Redis is unreachable: nobody can take over then,
        // and the snapshots go to the fallback (replayed through the guard later).
        let leading = source.is_some() && (guard.is_some() || mode == Mode::Fallback);
        counters.leader.store(leading, Ordering::Relaxed);
        if !leading {
            counters.fence.store(0, Ordering::Relaxed);
        }
        let pause = match (leading, source) {
            (true, Some(source)) => {
                let fence = guard
                    .as_ref()
                    .and_then(LockGuard::fencing_token)
                    .map_or(0, |f| f as i64);
                if cycle(&core, source.as_ref(), fence).await == Some(DEPOSED) {
                    tracing::warn!(actor = "fetcher", key = %settings.shared_key, fence, "a newer leader wrote meanwhile: stepping down");
                    guard = None;
                    counters.leader.store(false, Ordering::Relaxed);
                    follower_retry
                } else {
                    interval
                }
            }
            _ => follower_retry.min(interval),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut source_changed => {}
        }
    }
}

/// One fetch and write; the write's verdict, or `None` when the fetch failed.
async fn cycle(core: &Arc<Core>, source: &dyn super::Source, fence: i64) -> Option<i64> {
    let counters = &core.fetcher;
    let fetched = source::fetch_with_retries(source, &core.settings.source, |e| {
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(actor = "fetcher", source = %source.describe(), error = %e, "[fetcher] API call failed, retrying with backoff");
    })
    .await;
    let value = match fetched {
        Ok(value) => value,
        Err(e) => {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(actor = "fetcher", source = %source.describe(), error = %e, "[fetcher] API unavailable; the last snapshot stays served");
            *counters.last_error.lock() = Some(e);
            return None;
        }
    };
    counters.fetches.fetch_add(1, Ordering::Relaxed);
    counters.last_success_ms.store(now_ms(), Ordering::Relaxed);
    let snapshot = Arc::new(core.snapshot_of(value));
    match core.write(&snapshot, fence).await {
        Ok(WRITTEN) => {
            counters.writes.fetch_add(1, Ordering::Relaxed);
            for reader in core.local_readers.read().iter() {
                // A reader that is restarting (or whose mailbox is full) reads the snapshot
                // from Redis or the channel's notice instead.
                if let Err(e) = reader.do_send(SnapshotWritten {
                    snapshot: snapshot.clone(),
                }) {
                    tracing::debug!(actor = "fetcher", reader = reader.actor(), error = %e, "reader not told of the snapshot");
                }
            }
            tracing::debug!(actor = "fetcher", key = %core.settings.shared_key, backend = %core.storage.mode(), "[fetcher] Shared data updated to Redis successfully");
            Some(WRITTEN)
        }
        Ok(verdict) => {
            counters.refused_writes.fetch_add(1, Ordering::Relaxed);
            Some(verdict)
        }
        Err(e) => {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(actor = "fetcher", key = %core.settings.shared_key, error = %e, "[fetcher] Failed to update Redis");
            *counters.last_error.lock() = Some(e.to_string());
            None
        }
    }
}
