//! Cache: cache-aside over the storage with a near cache in process (seeds 002 and 003).
//!
//! Owns: the near cache (a map of key → value and deadline, at most `cache.near_capacity`
//! entries, each living at most `cache.near_ttl_ms` and never past its own TTL); the
//! subscription to `cache.channel` (`cache-invalidate`); one in-flight loader per key.
//!
//! [`Cache::get_or_load`] answers from the near cache, else from the storage (Redis, or its
//! fallback while Redis is down), else calls the loader once however many callers ask for the
//! key at the same time, stores its value with the TTL given and keeps it near.
//! [`Cache::set`] and [`Cache::invalidate`] write through and publish `{"key":"K","origin":O}`
//! on the channel; every other process drops its near copy when the message arrives (a bot
//! of the seed publishing `{"key":"K"}` does the same). A near entry filled from a read that
//! overlapped an invalidation is not kept, so a stale value cannot outlive the message.
//!
//! Rules:
//!
//! - A value is kept near for at most `min(ttl, cache.near_ttl_ms)`, `ttl` being the one the
//!   caller gives.
//! - One loader per key: concurrent callers of [`Cache::get_or_load`] for one key in this
//!   process wait on a per-key async mutex; the first calls the loader, the others then find
//!   the value near.
//! - A process ignores its own invalidation messages (the `origin` field). Each key dropped for
//!   another process's message is announced on [`Cache::invalidations`] (a broadcast, 1,024
//!   deep), for a host that reacts to a change without polling.
//! - A read that overlapped an invalidation does not fill the near cache (a generation counter
//!   raised by every message received).
//! - A full near cache drops its expired entries, then arbitrary ones down to 7/8 of its
//!   capacity, counted in [`CacheStats::evictions`]; hits keep no bookkeeping, so they stay
//!   cheap.
//! - Every answer, loader call and invalidation sent or received is counted
//!   ([`Cache::stats`]: atomic counters, nothing on a lock); the daemon shows them in `/status`
//!   (`cache`), `/metrics` (`botfleet_cache_...`) and on the dashboard.
//!
//! In a fleet the `CacheListener` actor (`cache` in the tree) follows the channel from a
//! supervised task on the host runtime, and is told of mode changes by the storage monitor
//! (`StorageModeChanged`); each incarnation subscribes and clears the near cache (what was
//! published before it subscribed was missed). A cache made
//! by hand with [`Cache::start`] runs the same loop as a task of its own, which ends with the
//! last handle.
//!
//! Failure: while Redis is down the near cache and the fallback keep serving, but
//! invalidations of other processes cannot arrive; when the storage is back on Redis the near
//! cache is cleared (messages published meanwhile were missed). A loader error is returned to
//! every caller waiting on it and nothing is cached. A panic of the listening loop fails the
//! `cache` actor, which restarts it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::actors::storage_monitor::StorageModeChanged;
use crate::settings::CacheSettings;
use crate::storage::{Mode, Storage, StorageError, StorageEvent};
use crate::supervisor::{fault, ChildContext};

/// Keys [`Cache::invalidations`] holds for a receiver that has not read them yet.
const INVALIDATIONS_CAPACITY: usize = 1_024;

/// Why a cache call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The key is empty.
    #[error("cache key is empty")]
    EmptyKey,
    /// The TTL is zero.
    #[error("cache ttl of key {0} is zero")]
    ZeroTtl(String),
    /// The loader failed; nothing was cached.
    #[error("loader of {key} failed: {reason}")]
    Loader {
        /// The key.
        key: String,
        /// The loader's error, formatted.
        reason: String,
    },
    /// The storage refused the call.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The cache's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Answers from the near cache.
    pub near_hits: u64,
    /// Answers from the storage (Redis or its fallback).
    pub storage_hits: u64,
    /// Keys found nowhere.
    pub misses: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Invalidations this process published ([`Cache::set`], [`Cache::invalidate`]).
    pub invalidations_sent: u64,
    /// Invalidations received from other processes.
    pub invalidations_received: u64,
    /// Near entries dropped because the near cache was full.
    pub evictions: u64,
    /// Entries in the near cache now.
    pub near_entries: u64,
}

/// An invalidation message on `cache.channel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invalidation {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

#[derive(Debug, Clone)]
struct Near {
    value: Arc<str>,
    expires_at: Instant,
}

#[derive(Default)]
struct Counters {
    near_hits: AtomicU64,
    storage_hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    invalidations_sent: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
}

struct Inner {
    storage: Storage,
    settings: CacheSettings,
    origin: String,
    near: DashMap<String, Near>,
    loading: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Raised by every invalidation received: a read that overlapped one does not fill the
    /// near cache.
    generation: AtomicU64,
    counters: Counters,
    /// Keys named by invalidations of other processes, for [`Cache::invalidations`].
    dropped: tokio::sync::broadcast::Sender<Arc<str>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// The cache API: a cheap, cloneable handle (`Fleet::cache()`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("near_entries", &self.inner.near.len())
            .finish()
    }
}

impl Cache {
    /// A cache over `storage`, subscribed to `settings.channel` before it returns, following
    /// it from a task of its own. Call it on a tokio runtime: the task runs there.
    pub async fn start(storage: Storage, settings: CacheSettings) -> Self {
        let subscription = storage.subscribe(&settings.channel).await;
        let events = storage.events();
        let cache = Self::unstarted(storage, settings);
        let inner = &cache.inner;
        let listen = tokio::spawn(listen(Arc::downgrade(inner), subscription));
        let watch = tokio::spawn(watch_mode(Arc::downgrade(inner), events));
        inner.tasks.lock().extend([listen, watch]);
        cache
    }

    /// A cache whose invalidations a supervised `CacheListener` follows (the fleet's).
    pub(crate) fn unstarted(storage: Storage, settings: CacheSettings) -> Self {
        let inner = Arc::new(Inner {
            storage,
            settings,
            origin: format!("{:016x}", rand::random::<u64>()),
            near: DashMap::new(),
            loading: DashMap::new(),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
            dropped: tokio::sync::broadcast::channel(INVALIDATIONS_CAPACITY).0,
            tasks: parking_lot::Mutex::new(Vec::new()),
        });
        Self { inner }
    }

    /// The actor that follows this cache's invalidations in a fleet, for the incarnation
    /// `child`, on `runtime`.
    pub(crate) fn listener(
        &self,
        runtime: tokio::runtime::Handle,
        child: ChildContext,
    ) -> CacheListener {
        CacheListener {
            cache: Arc::downgrade(&self.inner),
            storage: self.inner.storage.clone(),
            channel: self.inner.settings.channel.clone(),
            runtime,
            child,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            near_hits: c.near_hits.load(Ordering::Relaxed),
            storage_hits: c.storage_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            load_errors: c.load_errors.load(Ordering::Relaxed),
            invalidations_sent: c.invalidations_sent.load(Ordering::Relaxed),
            invalidations_received: c.invalidations.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            near_entries: self.inner.near.len() as u64,
        }
    }

    /// Every key another process invalidates from now on, once this process has dropped its
    /// near copy: for a host that reacts to a change (re-renders, reloads) without polling.
    /// A receiver that falls more than 1,024 keys behind gets `Lagged` and skips them.
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.inner.dropped.subscribe()
    }

    /// The near copy of `key`, if this process holds a live one (no storage call).
    pub fn peek(&self, key: &str) -> Option<Arc<str>> {
        let entry = self.inner.near.get(key)?;
        (entry.expires_at > Instant::now()).then(|| entry.value.clone())
    }

    /// The value of `key`: near cache, then storage (kept near for `ttl` at most).
    pub async fn get(&self, key: &str, ttl: Duration) -> Result<Option<Arc<str>>, CacheError> {
        check(key, ttl)?;
        if let Some(value) = self.near_hit(key) {
            return Ok(Some(value));
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        self.inner.storage.remember_key(key);
        match self.inner.storage.get(key).await? {
            Some(value) => {
                self.inner
                    .counters
                    .storage_hits
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(self.keep(key, value, ttl, generation)))
            }
            None => {
                self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Cache-aside: the value of `key` from the near cache or the storage, else from
    /// `loader` (stored with `ttl`). Concurrent calls for one key in this process share one
    /// loader call.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Arc<str>, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        check(key, ttl)?;
        if let Some(value) = self.near_hit(key) {
            return Ok(value);
        }
        let flight = self
            .inner
            .loading
            .entry(key.to_string())
            .or_default()
            .clone();
        let result = {
            let _turn = flight.lock().await;
            self.load_once(key, ttl, loader).await
        };
        // The last one out removes the key's slot (the map holds one reference, we hold one).
        self.inner
            .loading
            .remove_if(key, |_, slot| Arc::strong_count(slot) <= 2);
        result
    }

    async fn load_once<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Arc<str>, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        // Filled by the caller that went first.
        if let Some(value) = self.near_hit(key) {
            return Ok(value);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let counters = &self.inner.counters;
        self.inner.storage.remember_key(key);
        if let Some(value) = self.inner.storage.get(key).await? {
            counters.storage_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(self.keep(key, value, ttl, generation));
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
        counters.loads.fetch_add(1, Ordering::Relaxed);
        let value = match loader().await {
            Ok(value) => value,
            Err(e) => {
                counters.load_errors.fetch_add(1, Ordering::Relaxed);
                return Err(CacheError::Loader {
                    key: key.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        self.inner
            .storage
            .set(key, value.as_str(), Some(ttl))
            .await?;
        Ok(self.keep(key, value, ttl, generation))
    }

    /// Writes `value` with `ttl` through to the storage, keeps it near, and tells the other
    /// processes to drop their copy.
    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        check(key, ttl)?;
        self.inner.storage.remember_key(key);
        self.inner.storage.set(key, value, Some(ttl)).await?;
        self.put_near(key, Arc::from(value), ttl);
        self.announce(key).await
    }

    /// Deletes `key` everywhere: storage, this near cache, and (by message) the others'.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        if key.is_empty() {
            return Err(CacheError::EmptyKey);
        }
        self.inner.storage.del(&[key]).await?;
        self.inner.near.remove(key);
        self.announce(key).await
    }

    /// Drops every near entry of this process.
    pub fn clear_near(&self) {
        self.inner.near.clear();
    }

    async fn announce(&self, key: &str) -> Result<(), CacheError> {
        let message = Invalidation {
            key: key.to_string(),
            origin: Some(self.inner.origin.clone()),
        };
        // A struct of two strings always serializes.
        let text = serde_json::to_string(&message).expect("invalidation serializes");
        self.inner
            .storage
            .publish(&self.inner.settings.channel, &text)
            .await?;
        self.inner
            .counters
            .invalidations_sent
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn near_hit(&self, key: &str) -> Option<Arc<str>> {
        let value = self.peek(key)?;
        self.inner
            .counters
            .near_hits
            .fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// Keeps a value read from the storage near, unless an invalidation arrived since the
    /// read began.
    fn keep(&self, key: &str, value: String, ttl: Duration, generation: u64) -> Arc<str> {
        let value: Arc<str> = Arc::from(value);
        if self.inner.generation.load(Ordering::Acquire) == generation {
            self.put_near(key, value.clone(), ttl);
        }
        value
    }

    fn put_near(&self, key: &str, value: Arc<str>, ttl: Duration) {
        let inner = &self.inner;
        let life = ttl.min(Duration::from_millis(inner.settings.near_ttl_ms));
        if inner.near.len() >= inner.settings.near_capacity && !inner.near.contains_key(key) {
            make_room(inner);
        }
        inner.near.insert(
            key.to_string(),
            Near {
                value,
                expires_at: Instant::now() + life,
            },
        );
    }
}

/// The near cache is full: drop expired entries, then arbitrary ones down to 7/8 of the
/// capacity (no bookkeeping on the hit path, so hits stay cheap).
fn make_room(inner: &Inner) {
    let now = Instant::now();
    let before = inner.near.len();
    inner.near.retain(|_, near| near.expires_at > now);
    let target = inner.settings.near_capacity - inner.settings.near_capacity / 8 - 1;
    if inner.near.len() > target {
        let excess = inner.near.len() - target;
        let victims: Vec<String> = inner
            .near
            .iter()
            .take(excess)
            .map(|e| e.key().clone())
            .collect();
        for key in victims {
            inner.near.remove(&key);
        }
    }
    let dropped = before.saturating_sub(inner.near.len()) as u64;
    inner
        .counters
        .evictions
        .fetch_add(dropped, Ordering::Relaxed);
}

fn check(key: &str, ttl: Duration) -> Result<(), CacheError> {
    if key.is_empty() {
        return Err(CacheError::EmptyKey);
    }
    if ttl.is_zero() {
        return Err(CacheError::ZeroTtl(key.to_string()));
    }
    Ok(())
}

/// Drops near copies named by invalidations of other processes.
/// Follows a cache's invalidations from a supervised task (see the module documentation).
pub(crate) struct CacheListener {
    cache: Weak<Inner>,
    storage: Storage,
    channel: String,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

impl std::fmt::Debug for CacheListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheListener")
            .field("channel", &self.channel)
            .finish()
    }
}

impl actix::Actor for CacheListener {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (cache, storage, channel) = (
            self.cache.clone(),
            self.storage.clone(),
            self.channel.clone(),
        );
        let work = async move {
            let subscription = storage.subscribe(&channel).await;
            // What was published before this subscription was missed.
            if let Some(inner) = cache.upgrade() {
                inner.generation.fetch_add(1, Ordering::AcqRel);
                inner.near.clear();
            }
            // Mode changes come from the storage monitor (`StorageModeChanged`).
            listen(cache, subscription).await;
            Err::<(), _>("the cache's subscription ended")
        };
        self.child
            .spawn_task(ctx, "invalidations", &self.runtime, work);
    }
}

impl actix::Handler<StorageModeChanged> for CacheListener {
    type Result = ();

    /// Back on Redis: invalidations published while this process was cut off never arrived.
    fn handle(&mut self, changed: StorageModeChanged, _: &mut Self::Context) {
        if changed.to == Mode::Redis {
            if let Some(inner) = self.cache.upgrade() {
                back_on_redis(&inner);
            }
        }
    }
}

/// Clears the near cache: the storage is back on Redis.
fn back_on_redis(inner: &Inner) {
    inner.generation.fetch_add(1, Ordering::AcqRel);
    inner.near.clear();
    tracing::info!(actor = "cache", "near cache cleared: storage back on redis");
}

async fn listen(inner: Weak<Inner>, mut subscription: crate::storage::Subscription) {
    while let Some(message) = subscription.recv().await {
        fault::point("cache");
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let invalidation = serde_json::from_str::<Invalidation>(&message).unwrap_or(Invalidation {
            key: message.trim_matches('"').to_string(),
            origin: None,
        });
        if invalidation.origin.as_deref() == Some(inner.origin.as_str()) {
            continue;
        }
        inner.generation.fetch_add(1, Ordering::AcqRel);
        inner.near.remove(&invalidation.key);
        inner.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        // Nobody listening is the usual case: then the key is not even copied.
        if inner.dropped.receiver_count() > 0 {
            let _ = inner.dropped.send(Arc::from(invalidation.key));
        }
    }
}

/// Clears the near cache when the storage is back on Redis: invalidations published while
/// this process was cut off never arrived.
async fn watch_mode(
    inner: Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<StorageEvent>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let StorageEvent::ModeChanged {
            to: Mode::Redis, ..
        } = event
        {
            back_on_redis(&inner);
        }
    }
}
