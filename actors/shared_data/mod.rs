//! Shared data (seed 000): one fetcher per fleet polls a source and shares its JSON through
//! Redis in the seed's layout; named readers serve it from memory while it is fresh.
//!
//! Owns: the shared key (`shared_data.shared_key`, default `fivem_red_green_shared_data`)
//! holding `{"timestamp": MS, "game_data": SOURCE_JSON, "processed_data": {...}}` with a TTL
//! (`ttl_secs`); the legacy key (`api_response`) holding the source's JSON alone; the write
//! guard `INTERNAL:shared-data-guard:{TAG}` (highest fencing token and newest timestamp
//! written, TAG in the shared key's cluster slot); the direct-fetch claim
//! `INTERNAL:shared-data-claim:SHARED_KEY` (`SET NX PX fresh_ms`); the leader lock
//! (`leader_lock`, through [`Locks`]); the change notices on `channel`
//! (`{"writer", "fence", "snapshot"}`).
//!
//! Pieces: [`SharedData`] is the cloneable handle (`Fleet::shared_data()`): readers by name,
//! [`SharedData::register_source`], [`SharedData::register_extractor`],
//! [`SharedData::metrics`]. The `Fetcher` actor runs the fetch loop (leader election,
//! fetch with retries, guarded write, notice). Each `ReaderActor` keeps its reader's
//! snapshot up to date from the notices; [`Reader::read`] answers from memory when fresh and
//! otherwise falls back to Redis, then to one direct fetch per freshness window across the
//! fleet, then to the last snapshot known or the legacy key.
//!
//! Leadership: one fetcher per fleet holds `shared_data.leader_lock` (fenced, renewed by its
//! watchdog) and leads while it has a source; the others try for the lock every third of
//! `leader_ttl_ms`, so one takes over within twice the TTL after the leader dies, with a
//! higher fencing token. Every snapshot write goes through one script (`shared-data-write`,
//! `scripts.rs`) that refuses a lower fencing token (a deposed leader, which then stands down)
//! and a timestamp not newer than the one stored, so the writes of two fetchers never
//! interleave and a replay never regresses the key. With no Redis configured the one process
//! leads.
//!
//! Following the key (`watch.rs`): the readers' copies are fed by this process's fetcher, by
//! the change notices of the fleet's fetchers, and by a watch of the shared key itself, so a
//! snapshot written by anyone in the seed's layout (a seed bot's plain `SET` + `EXPIRE`) with
//! a newer `timestamp` reaches every reader within `watch_interval_ms` plus one `GET` (about
//! one round trip with keyspace notifications, `keyspace_events`), and wakes
//! [`Reader::newer_than`].
//!
//! Reads: a reader answers from its in-process copy (a load and a clock read) while it is
//! younger than `fresh_ms`. A stale read takes the process's single-flight fallback (one task
//! shared by every reader of the process), and at most one direct fetch per freshness window
//! runs across the fleet (the `INTERNAL:shared-data-claim:KEY` claim); the others wait for its
//! notice or read Redis again, never longer than the source timeout.
//!
//! Failure: both actors run their loop as a task on the host runtime; a panic there fails the
//! actor, which its supervisor restarts (a restarted reader keeps its snapshot and counters:
//! they live in the handle). While Redis is down the leader keeps fetching into the fallback
//! store and notices are delivered in process; the fallback's writes are replayed when Redis
//! returns, each through the same guarded script, so an older snapshot never overwrites a
//! newer one.

mod fetcher;
mod reader;
mod scripts;
mod source;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

pub(crate) use fetcher::Fetcher;
pub use fetcher::FetcherMetrics;
pub use reader::{Reader, ReaderMetrics};
pub(crate) use reader::{ReaderActor, SnapshotWritten};
pub use source::{ExtractorFn, FnSource, HttpSource, Source, SourceFuture};
pub use watch::{WatchMetrics, WatchMode};

use crate::actors::locks::Locks;
use crate::clock::now_ms;
use crate::settings::SharedDataSettings;
use crate::storage::{Reply, Storage, StorageError};
use crate::supervisor::HandleRecipient;
use reader::ReaderState;
use scripts::{write_script, DEPOSED, OLDER, WRITTEN};

/// Why a shared-data call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedDataError {
    /// No snapshot anywhere: not in memory, not in Redis, the source failed and the legacy
    /// key is empty.
    #[error("no shared data available: {0}")]
    NoData(String),
    /// The reader name is empty or already used.
    #[error("invalid reader name {0:?}: expected a non-empty name not used yet")]
    InvalidReaderName(String),
    /// The storage refused a write (not an outage: those are served by the fallback).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The source could not be built from the settings (e.g. an invalid header).
    #[error("shared data source: {0}")]
    Source(String),
}

/// A snapshot in the seed's exact layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was fetched, Unix milliseconds.
    pub timestamp: u64,
    /// The source's JSON as received.
    pub game_data: Value,
    /// What the extractor made of it (`null` when a writer left it out).
    #[serde(default)]
    pub processed_data: Value,
}

impl Snapshot {
    /// Age at `now_ms`, milliseconds.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.timestamp)
    }
}

/// Where a [`Reading`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The reader's own copy, fresh.
    Memory,
    /// The shared key in Redis (or the fallback while Redis is down), fresh; or a notice from
    /// another process's direct fetch.
    Redis,
    /// A direct fetch from the source by this process.
    Direct,
    /// The last snapshot known, older than `fresh_ms`: nothing fresher could be had.
    Stale,
    /// The legacy key (no snapshot known at all).
    Legacy,
}

/// What [`Reader::read`] answers.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// Where it came from.
    pub origin: Origin,
    /// Its age when read, milliseconds.
    pub age_ms: u64,
}

/// Fetcher and reader metrics, as one serializable value.
#[derive(Debug, Clone, Serialize)]
pub struct SharedDataMetrics {
    /// The fetcher of this process.
    pub fetcher: FetcherMetrics,
    /// Every reader of this process.
    pub readers: Vec<ReaderMetrics>,
    /// The key watch of this process.
    pub watch: WatchMetrics,
}

/// A change notice, as published on `shared_data.channel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    /// The instance that wrote the snapshot.
    pub writer: String,
    /// Its fencing token (-1: a reader's direct fetch).
    pub fence: i64,
    /// The snapshot written.
    pub snapshot: Snapshot,
}

type Flight = Shared<BoxFuture<'static, Result<(Arc<Snapshot>, Origin), String>>>;

/// What the handles of one process share.
pub(crate) struct Core {
    settings: SharedDataSettings,
    storage: Storage,
    locks: Locks,
    instance: String,
    guard_key: String,
    claim_key: String,
    runtime: tokio::runtime::Handle,
    // Read when a fetch starts, written when the host registers one: an RwLock, never held
    // across an await.
    source: parking_lot::RwLock<Option<Arc<dyn Source>>>,
    extractor: parking_lot::RwLock<Option<ExtractorFn>>,
    source_changed: Notify,
    /// The newest snapshot this process knows, and a wake-up when it changes.
    latest: ArcSwapOption<Snapshot>,
    changed: Notify,
    /// The fallback under way in this process (single flight), with its generation.
    flight: parking_lot::Mutex<Option<(u64, Flight)>>,
    flights: AtomicU64,
    readers: parking_lot::RwLock<Vec<Arc<ReaderState>>>,
    fetcher: fetcher::Counters,
    watch: watch::Counters,
    /// The last change notice parsed, by its text: every reader of the process receives the
    /// same notice, and only the first parses it. A mutex held for one parse, never across an
    /// await.
    last_notice: parking_lot::Mutex<Option<(String, Arc<Snapshot>)>>,
    /// The reader actors of this process, told by the fetcher of each snapshot it wrote.
    local_readers: parking_lot::RwLock<Vec<HandleRecipient<SnapshotWritten>>>,
}

/// The shared-data handle (`Fleet::shared_data()`). Cheap to clone.
#[derive(Clone)]
pub struct SharedData {
    core: Arc<Core>,
}

impl std::fmt::Debug for SharedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedData")
            .field("shared_key", &self.core.settings.shared_key)
            .finish()
    }
}

impl SharedData {
    /// A handle over `storage`, with the readers named in the settings when
    /// `shared_data.enabled` (their actors are started by the fleet) and the HTTP source when `source.url` is set. Call it on the
    /// host runtime: loops and direct fetches run there.
    pub fn new(
        storage: Storage,
        settings: SharedDataSettings,
        locks: Locks,
        instance: &str,
    ) -> Result<Self, SharedDataError> {
        let source: Option<Arc<dyn Source>> = if settings.source.url.is_empty() {
            None
        } else {
            Some(Arc::new(
                HttpSource::new(&settings.source).map_err(SharedDataError::Source)?,
            ))
        };
        let fence_of_slot = storage.keys().lock_fence(&settings.shared_key);
        let tag = fence_of_slot
            .find('{')
            .map(|i| fence_of_slot[i..].to_string())
            .unwrap_or_default();
        let internal = storage.keys().internal_prefix().to_string();
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            SharedDataError::Storage(StorageError::Runtime(format!("shared data: {e}")))
        })?;
        let core = Arc::new(Core {
            guard_key: format!("{internal}:shared-data-guard:{tag}"),
            claim_key: format!("{internal}:shared-data-claim:{}", settings.shared_key),
            settings,
            storage,
            locks,
            instance: instance.to_string(),
            runtime,
            source: parking_lot::RwLock::new(source),
            extractor: parking_lot::RwLock::new(None),
            source_changed: Notify::new(),
            latest: ArcSwapOption::empty(),
            changed: Notify::new(),
            flight: parking_lot::Mutex::new(None),
            flights: AtomicU64::new(0),
            readers: parking_lot::RwLock::new(Vec::new()),
            fetcher: fetcher::Counters::default(),
            watch: watch::Counters::default(),
            last_notice: parking_lot::Mutex::new(None),
            local_readers: parking_lot::RwLock::new(Vec::new()),
        });
        let handle = SharedData { core };
        if handle.core.settings.enabled {
            for name in handle.core.settings.readers.clone() {
                handle.register_reader(&name)?;
            }
        }
        Ok(handle)
    }

    /// The settings in use.
    pub fn settings(&self) -> &SharedDataSettings {
        &self.core.settings
    }

    /// Uses `fetch` as the source instead of (or in the absence of) the HTTP endpoint.
    pub fn register_source<F, Fut, E>(&self, fetch: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        *self.core.source.write() = Some(Arc::new(FnSource(fetch)));
        self.core.source_changed.notify_waiters();
    }

    /// Builds `processed_data` with `extract(game_data, timestamp)` instead of the JSON
    /// pointers of `[shared_data.extract]`.
    pub fn register_extractor<F>(&self, extract: F)
    where
        F: Fn(&Value, u64) -> Value + Send + Sync + 'static,
    {
        *self.core.extractor.write() = Some(Arc::new(extract));
    }

    /// The reader named `name`, if there is one.
    pub fn reader(&self, name: &str) -> Option<Reader> {
        self.core
            .readers
            .read()
            .iter()
            .find(|r| r.name == name)
            .map(|state| Reader::new(self.core.clone(), state.clone()))
    }

    /// Every reader, in the order they were added.
    pub fn readers(&self) -> Vec<Reader> {
        self.core
            .readers
            .read()
            .iter()
            .map(|state| Reader::new(self.core.clone(), state.clone()))
            .collect()
    }

    /// Whom the fetcher of this process tells of each snapshot it wrote, in process (the fleet
    /// gives it its reader actors), so they need not wait for the channel's notice.
    pub(crate) fn tell_readers(&self, readers: Vec<HandleRecipient<SnapshotWritten>>) {
        *self.core.local_readers.write() = readers;
    }

    /// Adds a reader that follows the change notices from a task on the current runtime
    /// (the readers of the settings are followed by their actors instead).
    pub async fn add_reader(&self, name: &str) -> Result<Reader, SharedDataError> {
        let reader = self.register_reader(name)?;
        let subscription = self
            .core
            .storage
            .subscribe(&self.core.settings.channel)
            .await;
        tokio::spawn(reader::follow(
            Arc::downgrade(&self.core),
            reader.state.clone(),
            subscription,
        ));
        Ok(reader)
    }

    fn register_reader(&self, name: &str) -> Result<Reader, SharedDataError> {
        let mut readers = self.core.readers.write();
        if name.trim().is_empty() || readers.iter().any(|r| r.name == name) {
            return Err(SharedDataError::InvalidReaderName(name.to_string()));
        }
        let state = Arc::new(ReaderState::new(name));
        if let Some(latest) = self.core.latest.load_full() {
            state.offer(latest);
        }
        readers.push(state.clone());
        Ok(Reader::new(self.core.clone(), state))
    }

    /// Fetcher and reader metrics.
    pub fn metrics(&self) -> SharedDataMetrics {
        let now = now_ms();
        SharedDataMetrics {
            fetcher: self.core.fetcher.snapshot(
                self.core
                    .source
                    .read()
                    .as_ref()
                    .map(|source| source.describe()),
            ),
            readers: self
                .core
                .readers
                .read()
                .iter()
                .map(|r| r.metrics(now))
                .collect(),
            watch: self
                .core
                .watch
                .snapshot(self.core.settings.watch_interval_ms),
        }
    }

    /// The newest snapshot this process knows (fresh or not).
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.core.latest.load_full()
    }

    /// Fetches once from the source (with the fetcher's retries) and writes the snapshot as
    /// the fetcher does, with `fence` as the fencing token (`-1`: timestamp check only).
    /// Returns the snapshot when it was written, `None` when the write was refused.
    pub async fn fetch_and_write(
        &self,
        fence: i64,
    ) -> Result<Option<Arc<Snapshot>>, SharedDataError> {
        let source = self
            .core
            .source()
            .ok_or_else(|| SharedDataError::Source("no source configured".into()))?;
        let value = source::fetch_with_retries(source.as_ref(), &self.core.settings.source, |_| {})
            .await
            .map_err(SharedDataError::Source)?;
        let snapshot = Arc::new(self.core.snapshot_of(value));
        Ok(match self.core.write(&snapshot, fence).await? {
            WRITTEN => Some(snapshot),
            _ => None,
        })
    }
}

impl Core {
    /// The snapshot of a change notice, parsed once per notice for all readers of the process.
    pub(crate) fn notice_snapshot(
        &self,
        message: &str,
    ) -> Result<Arc<Snapshot>, serde_json::Error> {
        let mut last = self.last_notice.lock();
        if let Some((text, snapshot)) = last.as_ref() {
            if text == message {
                return Ok(snapshot.clone());
            }
        }
        let notice: Notice = serde_json::from_str(message)?;
        let snapshot = Arc::new(notice.snapshot);
        *last = Some((message.to_string(), snapshot.clone()));
        Ok(snapshot)
    }

    fn source(&self) -> Option<Arc<dyn Source>> {
        self.source.read().clone()
    }

    fn fresh(&self, snapshot: &Snapshot, now: u64) -> bool {
        snapshot.age_ms(now) < self.settings.fresh_ms
    }

    fn source_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.source.timeout_ms)
    }

    /// A snapshot of `game_data` taken now.
    fn snapshot_of(&self, game_data: Value) -> Snapshot {
        let timestamp = now_ms();
        let extractor = self.extractor.read().clone();
        let processed_data = match extractor {
            Some(extract) => extract(&game_data, timestamp),
            None => source::extract(&self.settings.extract, &game_data, timestamp),
        };
        Snapshot {
            timestamp,
            game_data,
            processed_data,
        }
    }

    /// Keeps `snapshot` as the newest known when it is newer; wakes waiters.
    fn offer(&self, snapshot: &Arc<Snapshot>) {
        let newer = self
            .latest
            .load()
            .as_ref()
            .is_none_or(|s| s.timestamp < snapshot.timestamp);
        if newer {
            self.latest.store(Some(snapshot.clone()));
            self.changed.notify_waiters();
        }
    }

    /// Hands `snapshot`, found in the shared key, to the process and every reader, when it is
    /// newer than the newest the process knows. Answers whether it was.
    fn offer_to_readers(&self, snapshot: &Arc<Snapshot>) -> bool {
        let newer = self
            .latest
            .load()
            .as_ref()
            .is_none_or(|s| s.timestamp < snapshot.timestamp);
        if !newer {
            return false;
        }
        self.offer(snapshot);
        for reader in self.readers.read().iter() {
            reader.offer(snapshot.clone());
        }
        true
    }

    /// The guarded write: the shared key through the script, then the legacy key and the
    /// notice when it was written. Answers the script's verdict.
    async fn write(&self, snapshot: &Arc<Snapshot>, fence: i64) -> Result<i64, StorageError> {
        let json = serde_json::to_string(snapshot.as_ref())
            .map_err(|e| StorageError::Command(e.to_string()))?;
        let ttl = Duration::from_secs(self.settings.ttl_secs);
        // During an outage only the newest snapshot is replayed (each write replaces the last).
        let verdict = self
            .storage
            .eval_latest(
                write_script(),
                &[&self.settings.shared_key, &self.guard_key],
                &[
                    &json,
                    &ttl.as_millis().to_string(),
                    &fence.to_string(),
                    &snapshot.timestamp.to_string(),
                ],
            )
            .await?;
        let verdict = match verdict {
            Reply::Int(v) => v,
            other => {
                return Err(StorageError::Command(format!(
                    "shared-data-write answered {other:?}"
                )))
            }
        };
        if verdict == WRITTEN {
            let legacy = serde_json::to_string(&snapshot.game_data)
                .map_err(|e| StorageError::Command(e.to_string()))?;
            self.offer(snapshot);
            let notice = Notice {
                writer: self.instance.clone(),
                fence,
                snapshot: snapshot.as_ref().clone(),
            };
            let notice =
                serde_json::to_string(&notice).map_err(|e| StorageError::Command(e.to_string()))?;
            // The legacy copy and the notice go out together (one round trip on the shared
            // connection): nothing orders them, since readers take the snapshot from the
            // notice and only a plain client reads the legacy key.
            let (legacy, published) = tokio::join!(
                self.storage
                    .set_latest(&self.settings.legacy_key, legacy, Some(ttl)),
                self.storage.publish(&self.settings.channel, &notice)
            );
            legacy?;
            published?;
        } else {
            debug_assert!(verdict == DEPOSED || verdict == OLDER);
        }
        Ok(verdict)
    }

    /// The shared key, parsed; `None` when missing or not in the layout.
    async fn read_shared(&self) -> Result<Option<Arc<Snapshot>>, StorageError> {
        Ok(self
            .storage
            .get(&self.settings.shared_key)
            .await?
            .and_then(|text| serde_json::from_str::<Snapshot>(&text).ok())
            .map(Arc::new))
    }

    /// The fallback of a stale read, shared by every reader of the process that needs it
    /// while it runs. `by` is the reader that starts it (its direct fetch is counted there).
    fn fallback(self: &Arc<Self>, by: &Arc<ReaderState>) -> Flight {
        let mut slot = self.flight.lock();
        if let Some((_, flight)) = slot.as_ref() {
            return flight.clone();
        }
        let generation = self.flights.fetch_add(1, Ordering::Relaxed);
        let core = self.clone();
        let by = by.clone();
        let task = self.runtime.spawn(async move {
            let result = core.clone().slow_read(&by).await;
            let mut slot = core.flight.lock();
            if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                *slot = None;
            }
            result
        });
        let flight = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("fallback task failed: {e}")))
        }
        .boxed()
        .shared();
        *slot = Some((generation, flight.clone()));
        flight
    }

    /// Redis, then one direct fetch per freshness window across the fleet (or the notice of
    /// the process that made it), then the last snapshot known, then the legacy key.
    async fn slow_read(
        self: Arc<Self>,
        by: &ReaderState,
    ) -> Result<(Arc<Snapshot>, Origin), String> {
        let deadline = tokio::time::Instant::now() + self.source_timeout();
        let mut best = self.latest.load_full();
        let mut redis_down = false;
        match self.read_shared().await {
            Ok(Some(snapshot)) => {
                self.offer(&snapshot);
                if self.fresh(&snapshot, now_ms()) {
                    tracing::info!(actor = "reader", reader = %by.name, age_ms = snapshot.age_ms(now_ms()),
                        "[{}] Shared data read from Redis successfully (updated {}ms ago)",
                        by.name, snapshot.age_ms(now_ms()));
                    return Ok((snapshot, Origin::Redis));
                }
                if best
                    .as_ref()
                    .is_none_or(|b| b.timestamp < snapshot.timestamp)
                {
                    best = Some(snapshot);
                }
                tracing::info!(actor = "reader", reader = %by.name, "[{}] Redis data is stale, using direct API", by.name);
            }
            Ok(None) => {
                tracing::info!(actor = "reader", reader = %by.name, "[{}] No shared data in Redis, using direct API", by.name);
            }
            Err(e) => {
                redis_down = true;
                tracing::warn!(actor = "reader", reader = %by.name, error = %e, "[{}] Redis unavailable, using direct API", by.name);
            }
        }
        if let Some(source) = self.source() {
            let claimed = self
                .storage
                .set_nx(
                    &self.claim_key,
                    self.instance.clone(),
                    Some(Duration::from_millis(self.settings.fresh_ms)),
                )
                .await
                // A refused claim (e.g. the fallback is full) must not stop the read.
                .unwrap_or(true);
            if claimed {
                by.direct_fetches.fetch_add(1, Ordering::Relaxed);
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match source::fetch_once(source.as_ref(), remaining).await {
                    Ok(value) => {
                        let snapshot = Arc::new(self.snapshot_of(value));
                        if let Err(e) = self.write(&snapshot, -1).await {
                            tracing::warn!(actor = "reader", reader = %by.name, error = %e, "direct fetch not shared");
                            self.offer(&snapshot);
                        }
                        return Ok((snapshot, Origin::Direct));
                    }
                    Err(e) => {
                        tracing::warn!(actor = "reader", reader = %by.name, error = %e, source = %source.describe(), "[{}] Direct API call failed", by.name);
                    }
                }
            } else if let Some(snapshot) = self.wait_for_fresh(deadline, redis_down).await {
                return Ok((snapshot, Origin::Redis));
            }
        }
        if let Some(snapshot) = best.or_else(|| self.latest.load_full()) {
            return Ok((snapshot, Origin::Stale));
        }
        match self.storage.get(&self.settings.legacy_key).await {
            Ok(Some(text)) => match serde_json::from_str::<Value>(&text) {
                Ok(game_data) => {
                    let processed_data = source::extract(&self.settings.extract, &game_data, 0);
                    Ok((
                        Arc::new(Snapshot {
                            timestamp: 0,
                            game_data,
                            processed_data,
                        }),
                        Origin::Legacy,
                    ))
                }
                Err(e) => Err(format!("legacy key holds no JSON: {e}")),
            },
            Ok(None) => {
                Err("nothing in memory, in redis, from the source or in the legacy key".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Another process claimed this window's direct fetch: wait for its notice (or its write,
    /// re-reading Redis now and then) until `deadline`.
    async fn wait_for_fresh(
        &self,
        deadline: tokio::time::Instant,
        redis_down: bool,
    ) -> Option<Arc<Snapshot>> {
        const RECHECK: Duration = Duration::from_millis(100);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(latest) = self.latest.load_full() {
                if self.fresh(&latest, now_ms()) {
                    return Some(latest);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let wake = (now + RECHECK).min(deadline);
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake) => {
                    if !redis_down {
                        if let Ok(Some(snapshot)) = self.read_shared().await {
                            self.offer(&snapshot);
                        }
                    }
                }
            }
        }
    }
}
