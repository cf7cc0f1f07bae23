//! Readers: a named view of the shared data with its own in-process copy, kept up to date by
//! the change notices ([`ReaderActor`]), and [`Reader::read`]: the copy while fresh, otherwise
//! the process's single-flight fallback (Redis, direct fetch, last known, legacy key), never
//! waiting longer than the source timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::watch;

use super::{Core, Origin, Reading, SharedData, SharedDataError, Snapshot};
use crate::clock::now_ms;
use crate::storage::Subscription;
use crate::supervisor::{fault, ChildContext};

/// A reader's copy and counters; lives in the handle, so it survives a restart of the actor.
pub(crate) struct ReaderState {
    pub(crate) name: String,
    snapshot: ArcSwapOption<Snapshot>,
    hits: AtomicU64,
    misses: AtomicU64,
    redis_reads: AtomicU64,
    stale_reads: AtomicU64,
    legacy_reads: AtomicU64,
    errors: AtomicU64,
    pub(crate) direct_fetches: AtomicU64,
    notices: AtomicU64,
    in_process: AtomicU64,
    reads: AtomicU64,
    read_ns_total: AtomicU64,
    read_ns_max: AtomicU64,
    /// The copy's timestamp; also what serializes [`offer`](Self::offer)s, and what
    /// [`Reader::newer_than`] waits on.
    timestamp: watch::Sender<Option<u64>>,
}

impl ReaderState {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            snapshot: ArcSwapOption::empty(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            redis_reads: AtomicU64::new(0),
            stale_reads: AtomicU64::new(0),
            legacy_reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            direct_fetches: AtomicU64::new(0),
            notices: AtomicU64::new(0),
            in_process: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_ns_total: AtomicU64::new(0),
            read_ns_max: AtomicU64::new(0),
            timestamp: watch::Sender::new(None),
        }
    }

    /// Keeps `snapshot` when it is newer than the copy, and wakes whoever waits for it.
    pub(crate) fn offer(&self, snapshot: Arc<Snapshot>) {
        self.timestamp.send_if_modified(|copy| {
            if copy.is_some_and(|copy| snapshot.timestamp <= copy) {
                return false;
            }
            *copy = Some(snapshot.timestamp);
            self.snapshot.store(Some(snapshot));
            true
        });
    }

    fn record(&self, started: Instant) {
        let ns = started.elapsed().as_nanos() as u64;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_ns_total.fetch_add(ns, Ordering::Relaxed);
        self.read_ns_max.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn metrics(&self, now: u64) -> ReaderMetrics {
        let reads = self.reads.load(Ordering::Relaxed);
        ReaderMetrics {
            name: self.name.clone(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            redis_reads: self.redis_reads.load(Ordering::Relaxed),
            stale_reads: self.stale_reads.load(Ordering::Relaxed),
            legacy_reads: self.legacy_reads.load(Ordering::Relaxed),
            direct_fetches: self.direct_fetches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            notices: self.notices.load(Ordering::Relaxed),
            snapshots_in_process: self.in_process.load(Ordering::Relaxed),
            data_age_ms: self.snapshot.load().as_ref().map(|s| s.age_ms(now)),
            reads,
            read_latency_mean_ns: self
                .read_ns_total
                .load(Ordering::Relaxed)
                .checked_div(reads)
                .unwrap_or(0),
            read_latency_max_ns: self.read_ns_max.load(Ordering::Relaxed),
        }
    }
}

/// A reader's counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReaderMetrics {
    /// The reader's name (`EN`, `VI`, ...).
    pub name: String,
    /// Reads answered from the reader's fresh copy.
    pub hits: u64,
    /// Reads that found the copy missing or stale and took the fallback.
    pub misses: u64,
    /// Fallbacks answered fresh from Redis (or another process's notice).
    pub redis_reads: u64,
    /// Reads answered with data older than `fresh_ms`.
    pub stale_reads: u64,
    /// Reads answered from the legacy key.
    pub legacy_reads: u64,
    /// Direct fetches from the source started by this reader.
    pub direct_fetches: u64,
    /// Reads that had nothing to answer.
    pub errors: u64,
    /// Change notices received.
    pub notices: u64,
    /// Snapshots this process's fetcher handed over in process as it wrote them.
    pub snapshots_in_process: u64,
    /// Age of the copy, milliseconds (`None`: no snapshot yet).
    pub data_age_ms: Option<u64>,
    /// Reads made.
    pub reads: u64,
    /// Mean latency of a read, nanoseconds.
    pub read_latency_mean_ns: u64,
    /// Longest read, nanoseconds.
    pub read_latency_max_ns: u64,
}

/// A named reader. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    core: Arc<Core>,
    pub(crate) state: Arc<ReaderState>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("name", &self.state.name)
            .finish()
    }
}

impl Reader {
    pub(crate) fn new(core: Arc<Core>, state: Arc<ReaderState>) -> Self {
        Self { core, state }
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The reader's copy, fresh or not, without any fallback.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.state.snapshot.load_full()
    }

    /// Waits until the reader's copy is newer than `timestamp` (ms) and returns it: a host
    /// that acts on each new round awaits `newer_than(last.timestamp)` instead of polling.
    /// Waits for as long as no newer snapshot arrives; wrap it in a timeout to bound it.
    pub async fn newer_than(&self, timestamp: u64) -> Arc<Snapshot> {
        let mut copy = self.state.timestamp.subscribe();
        loop {
            // The copy moves only forwards and is stored before its timestamp is announced.
            if let Some(snapshot) = self.current().filter(|s| s.timestamp > timestamp) {
                return snapshot;
            }
            // The sender lives in the reader's state, which `self` holds: it cannot close.
            if copy.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The latest snapshot: the reader's copy while younger than `fresh_ms`; otherwise Redis;
    /// if that is stale or missing, one direct fetch from the source (shared by every reader
    /// of the process, and at most one per freshness window across the fleet), then the last
    /// snapshot known, then the legacy key. Never waits longer than the source timeout.
    pub async fn read(&self) -> Result<Reading, SharedDataError> {
        let started = Instant::now();
        let now = now_ms();
        if let Some(snapshot) = self.state.snapshot.load_full() {
            if self.core.fresh(&snapshot, now) {
                self.state.hits.fetch_add(1, Ordering::Relaxed);
                self.state.record(started);
                return Ok(Reading {
                    age_ms: snapshot.age_ms(now),
                    snapshot,
                    origin: Origin::Memory,
                });
            }
        }
        self.state.misses.fetch_add(1, Ordering::Relaxed);
        // Another reader of this process may have a fresher copy already.
        if let Some(latest) = self.core.latest.load_full() {
            if self.core.fresh(&latest, now) {
                self.state.offer(latest.clone());
                self.state.redis_reads.fetch_add(1, Ordering::Relaxed);
                self.state.record(started);
                return Ok(Reading {
                    age_ms: latest.age_ms(now),
                    snapshot: latest,
                    origin: Origin::Redis,
                });
            }
        }
        let flight = self.core.fallback(&self.state);
        let outcome = match tokio::time::timeout(self.core.source_timeout(), flight).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer within {} ms",
                self.core.settings.source.timeout_ms
            )),
        };
        let now = now_ms();
        let reading = match outcome {
            Ok((snapshot, origin)) => {
                let origin = if origin != Origin::Legacy && !self.core.fresh(&snapshot, now) {
                    Origin::Stale
                } else {
                    origin
                };
                if origin != Origin::Legacy {
                    self.state.offer(snapshot.clone());
                }
                Reading {
                    age_ms: snapshot.age_ms(now),
                    snapshot,
                    origin,
                }
            }
            Err(e) => match self.state.snapshot.load_full() {
                Some(snapshot) => Reading {
                    age_ms: snapshot.age_ms(now),
                    snapshot,
                    origin: Origin::Stale,
                },
                None => {
                    self.state.errors.fetch_add(1, Ordering::Relaxed);
                    self.state.record(started);
                    return Err(SharedDataError::NoData(e));
                }
            },
        };
        let counter = match reading.origin {
            Origin::Stale => {
                tracing::warn!(actor = "reader", reader = %self.state.name, age_ms = reading.age_ms,
                    "[{}] Serving the last snapshot ({}ms old)", self.state.name, reading.age_ms);
                &self.state.stale_reads
            }
            Origin::Legacy => &self.state.legacy_reads,
            Origin::Redis | Origin::Memory | Origin::Direct => &self.state.redis_reads,
        };
        if reading.origin != Origin::Direct {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.state.record(started);
        Ok(reading)
    }

    /// This reader's counters.
    pub fn metrics(&self) -> ReaderMetrics {
        self.state.metrics(now_ms())
    }
}

/// Applies the change notices of `subscription` to `state` (and the process's newest
/// snapshot) until the storage or the shared-data handle is gone.
pub(crate) async fn follow(
    core: Weak<Core>,
    state: Arc<ReaderState>,
    mut subscription: Subscription,
) {
    while let Some(message) = subscription.recv().await {
        let Some(core) = core.upgrade() else {
            return;
        };
        fault::point("reader");
        match core.notice_snapshot(&message) {
            Ok(snapshot) => {
                state.notices.fetch_add(1, Ordering::Relaxed);
                core.offer(&snapshot);
                state.offer(snapshot);
            }
            Err(e) => {
                tracing::debug!(actor = "reader", reader = %state.name, error = %e, "ignored a notice not in the layout");
            }
        }
    }
}

/// The actor of one configured reader: follows the change notices for it from a supervised
/// task on the host runtime. Its copy and counters live in the [`SharedData`] handle.
pub(crate) struct ReaderActor {
    shared: SharedData,
    name: String,
    child: ChildContext,
}

impl std::fmt::Debug for ReaderActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderActor")
            .field("name", &self.name)
            .finish()
    }
}

impl ReaderActor {
    /// The actor of the reader `name` (one of `shared_data.readers`).
    pub fn new(shared: SharedData, name: &str, child: ChildContext) -> Self {
        Self {
            shared,
            name: name.to_string(),
            child,
        }
    }
}

/// Event: the fetcher of this process wrote `snapshot` (sent to the reader actors of its
/// process through [`HandleRecipient`](crate::supervisor::HandleRecipient)s, ahead of the channel's notice).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SnapshotWritten {
    /// The snapshot written.
    pub(crate) snapshot: Arc<Snapshot>,
}

impl Handler<SnapshotWritten> for ReaderActor {
    type Result = ();

    fn handle(&mut self, event: SnapshotWritten, _: &mut Context<Self>) {
        if let Some(reader) = self.shared.reader(&self.name) {
            reader.state.in_process.fetch_add(1, Ordering::Relaxed);
            reader.state.offer(event.snapshot);
        }
    }
}

impl Actor for ReaderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(reader) = self.shared.reader(&self.name) else {
            self.child.fail(
                ctx,
                format!("no reader named {:?} in the handle", self.name),
            );
            return;
        };
        let core = self.shared.core.clone();
        let channel = core.settings.channel.clone();
        let runtime = core.runtime.clone();
        let weak = Arc::downgrade(&core);
        let state = reader.state.clone();
        let work = async move {
            let subscription = core.storage.subscribe(&channel).await;
            // Notices published before the subscription are missed: start from the newest
            // snapshot this process knows, or the one stored.
            if let Some(latest) = core.latest.load_full() {
                state.offer(latest);
            }
            match core.read_shared().await {
                Ok(Some(snapshot)) => {
                    core.offer(&snapshot);
                    state.offer(snapshot);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(actor = "reader", reader = %state.name, error = %e, "no stored snapshot to start from");
                }
            }
            drop(core);
            follow(weak, state, subscription).await;
        };
        self.child.spawn_task(ctx, "follow", &runtime, work);
        tracing::info!(actor = "reader", reader = %self.name, "[{}] reader started", self.name);
    }
}
