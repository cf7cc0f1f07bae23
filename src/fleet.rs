//! The `Fleet` handle: what a host application (or the daemon) starts.
//!
//! [`Fleet::start`] (called from the host's multi-threaded tokio runtime) opens the storage
//! there, opens the history archive (its writer runs on that runtime too), starts the actix
//! system on a thread of its own ([`ActorSystem`]) and the supervision tree. Its children, in
//! start order, all [`RestartType::Permanent`]:
//!
//! | child | actor | when |
//! |---|---|---|
//! | `storage-monitor` | [`StorageMonitor`] | always |
//! | `presence` | [`Presence`] | always |
//! | `locks` | [`LockManager`] | always |
//! | `hazards` | [`HazardTicker`] | always (it ticks only when `hazards.enabled`) |
//! | `scheduler` | [`SchedulerActor`] | always |
//! | `shared-data-fetcher`, `reader-NAME` | [`Fetcher`], one [`ReaderActor`] per reader | `shared_data.enabled` |
//! | `heartbeat`, `peer-monitor` | [`HeartbeatSender`], [`PeerMonitor`] | `heartbeat.enabled` |
//! | `admin-inbox` | [`AdminInbox`] | always |
//!
//! The host's own actors follow ([`Fleet::start_with`]): they start after the built-in ones and
//! stop before them. The handles the host calls ([`Fleet::scheduler`], [`Fleet::locks`],
//! [`Fleet::cache`], ...) are built here and kept in the fleet; the cache is a handle only, with
//! no actor. With `history.enabled` the scheduler and the hazards handle get the archive's
//! sink, and with `history.retention_days` above 0 a periodic job purges old rows.
//!
//! [`Fleet::shutdown`] stops the actors in reverse order, each within
//! `supervisor.stop_timeout_ms`, deletes this process's heartbeat, closes the history archive
//! (what it queued is written or spooled), flushes the outbox to Redis (waiting up to the same
//! deadline; with the file fallback what cannot reach Redis stays on disk for the next start),
//! closes the storage and stops the system thread. [`BlockingFleet`] is the same handle for
//! hosts without an async runtime.
//!
//! `ARCHITECTURE.md` lists the steps to add a service here.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use crate::actors::heartbeat::{
    Admin, AdminInbox, Heartbeat, HeartbeatSender, Identities, PeerMonitor, Peers,
};
use crate::actors::locks::{GetLockStats, LockManager, LockStats, Locks};
use crate::actors::presence::{hostname, GetPresence, Presence, PresenceStatus};
use crate::actors::shared_data::{Fetcher, ReaderActor, SharedData, SharedDataError};
use crate::actors::storage_monitor::{ListStorageEvents, SeenEvent, StorageMonitor};
// Hazards, game sessions and the cache service (issue 7).
use crate::actors::cache::Cache;
use crate::actors::hazards::sessions::GameSessions;
use crate::actors::hazards::{GetTickerStatus, HazardTicker, Hazards, TickerStatus};
use crate::settings::{FallbackKind, Settings};
use crate::storage::{KeySchema, Mode, Storage, StorageError, StorageStats};
use crate::supervisor::{
    ActorHandle, ActorSystem, CallError, ChildSpec, HealthReport, RestartType, ShutdownReport,
    Supervisor, SupervisorBuilder, SupervisorError,
};

/// Why a fleet could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The storage could not be opened (a misconfiguration names its setting).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Supervision failed: start-up of an actor, or the restart intensity was exceeded.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A call to a built-in actor failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The fleet is already shut down.
    #[error("the fleet is shut down")]
    ShutDown,
    /// The shared-data settings could not be used (e.g. an invalid source header).
    #[error(transparent)]
    SharedData(#[from] SharedDataError),
    /// The history archive could not be opened (a malformed `history.url`, an unusable
    /// `history.dir`).
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The health of a fleet: storage and every actor, as one serializable value.
#[derive(Debug, Clone, Serialize)]
pub struct FleetHealth {
    /// This instance's id (`HOST-PID`).
    pub instance: String,
    /// Storage mode and counters.
    pub storage: StorageStats,
    /// Every supervised actor.
    pub actors: HealthReport,
}

/// What [`Fleet::shutdown`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FleetShutdown {
    /// Actors in the order they stopped, and any abandoned past the deadline.
    pub actors: ShutdownReport,
    /// Whether every write reached Redis (or the durable file store).
    pub flushed: bool,
    /// Writes still waiting, lost if the fallback is memory.
    pub unflushed_writes: usize,
}

/// A running fleet. Cheap to clone, `Send + Sync`; every clone is the same fleet.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("instance", &self.inner.instance)
            .finish()
    }
}

struct Inner {
    settings: Settings,
    instance: String,
    storage: Storage,
    supervisor: Supervisor,
    system: Mutex<Option<ActorSystem>>,
    presence: ActorHandle<Presence>,
    monitor: ActorHandle<StorageMonitor>,
    locks: Locks,
    lock_manager: ActorHandle<LockManager>,
    hazards: Hazards,
    hazard_ticker: ActorHandle<HazardTicker>,
    game_sessions: GameSessions,
    cache: Cache,
    scheduler: SchedulerParts,
    seed004: Seed004,
    shut_down: tokio::sync::Mutex<Option<FleetShutdown>>,
    shared_data: SharedData,
    history: History,
}

impl Fleet {
    /// Starts a fleet with the built-in actors. Call it from a multi-threaded tokio runtime.
    pub async fn start(settings: Settings) -> Result<Fleet, FleetError> {
        Self::start_with(settings, |_, _| {}).await
    }

    /// Starts a fleet; `configure` adds the host's own supervised actors after the built-in
    /// ones (they start after them and stop before them). Keep the handles `tree.child(..)`
    /// returns: they stay valid across restarts.
    pub async fn start_with<F>(settings: Settings, configure: F) -> Result<Fleet, FleetError>
    where
        F: FnOnce(&mut SupervisorBuilder, &Storage),
    {
        let storage = Storage::open(&settings.storage, &KeySchema::new(&settings.keys)).await?;
        // The history archive (issue 10): its writer runs on this runtime, off every caller's path.
        let history = match History::open(&settings.history, settings.storage.fallback) {
            Ok(history) => history,
            Err(e) => {
                storage.close().await;
                return Err(e.into());
            }
        };
        let instance = format!("{}-{}", hostname(), std::process::id());
        let system = match ActorSystem::start("botfleet") {
            Ok(system) => system,
            Err(e) => {
                storage.close().await;
                return Err(e.into());
            }
        };
        let mut tree = SupervisorBuilder::new("botfleet", settings.supervisor.clone());
        let monitor = {
            let storage = storage.clone();
            tree.child(ChildSpec::new("storage-monitor", move |_| {
                StorageMonitor::new(storage.clone())
            }))
        };
        let presence = {
            let (storage, presence, id) =
                (storage.clone(), settings.presence.clone(), instance.clone());
            tree.child(
                ChildSpec::new("presence", move |child| {
                    Presence::new(storage.clone(), presence.clone(), &id, child.clone())
                })
                .restart(RestartType::Permanent),
            )
        };
        let locks = Locks::new(storage.clone(), settings.locks.clone());
        let lock_manager = {
            let locks = locks.clone();
            tree.child(
                ChildSpec::new("locks", move |_| LockManager::new(locks.clone()))
                    .restart(RestartType::Permanent),
            )
        };
        // Hazards, game sessions and the cache service (issue 7).
        let hazards = Hazards::new(
            storage.clone(),
            settings.hazards.clone(),
            locks.clone(),
            &instance,
        );
        let hazard_ticker = {
            let (hazards, runtime) = (hazards.clone(), tokio::runtime::Handle::current());
            tree.child(
                ChildSpec::new("hazards", move |_| hazards.ticker(runtime.clone()))
                    .restart(RestartType::Permanent),
            )
        };
        let game_sessions = GameSessions::new(storage.clone(), settings.game_sessions.clone());
        let cache = Cache::start(storage.clone(), settings.cache.clone()).await;
        let scheduler = SchedulerParts::start(&mut tree, &storage, &locks, &settings, &instance);
        archive_history(&history, &settings, &hazards, &scheduler);
        // Shared data (seed 000): the fetcher and the readers, when enabled.
        let shared_data = match SharedData::new(
            storage.clone(),
            settings.shared_data.clone(),
            locks.clone(),
            &instance,
        ) {
            Ok(shared_data) => shared_data,
            Err(e) => {
                system.stop().await;
                storage.close().await;
                return Err(e.into());
            }
        };
        if settings.shared_data.enabled {
            let shared = shared_data.clone();
            tree.child(
                ChildSpec::new("shared-data-fetcher", move |child| {
                    Fetcher::new(shared.clone(), child.clone())
                })
                .restart(RestartType::Permanent),
            );
            for name in &settings.shared_data.readers {
                let (shared, name) = (shared_data.clone(), name.clone());
                tree.child(
                    ChildSpec::new(format!("reader-{name}"), move |child| {
                        ReaderActor::new(shared.clone(), &name, child.clone())
                    })
                    .restart(RestartType::Permanent),
                );
            }
        }
        let seed004 = Seed004::add(&mut tree, &storage, &settings);
        configure(&mut tree, &storage);
        let supervisor = match tree.start(&system).await {
            Ok(s) => s,
            Err(e) => {
                system.stop().await;
                storage.close().await;
                return Err(e.into());
            }
        };
        tracing::info!(%instance, mode = %storage.mode(), "fleet started");
        Ok(Fleet {
            inner: Arc::new(Inner {
                settings,
                instance,
                storage,
                supervisor,
                system: Mutex::new(Some(system)),
                presence,
                monitor,
                locks,
                lock_manager,
                hazards,
                hazard_ticker,
                game_sessions,
                cache,
                scheduler,
                seed004,
                shut_down: tokio::sync::Mutex::new(None),
                shared_data,
                history,
            }),
        })
    }

    /// The storage handle (the one path to Redis).
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The settings the fleet runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This instance's id (`HOST-PID`).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Storage and actor health.
    pub fn health(&self) -> FleetHealth {
        FleetHealth {
            instance: self.inner.instance.clone(),
            storage: self.inner.storage.stats(),
            actors: self.inner.supervisor.health(),
        }
    }

    /// The presence actor's status.
    pub async fn presence(&self) -> Result<PresenceStatus, FleetError> {
        Ok(self.inner.presence.send(GetPresence).await?)
    }

    /// The lock API (`acquire`, `try_acquire`, `run_exclusive`). Cheap to clone; guards it
    /// hands out run their watchdog and release on this runtime, not on the actor.
    pub fn locks(&self) -> Locks {
        self.inner.locks.clone()
    }

    /// The lock manager's counters (waiters, release notices heard).
    pub async fn lock_stats(&self) -> Result<LockStats, FleetError> {
        Ok(self.inner.lock_manager.send(GetLockStats).await?)
    }

    /// The hazards API: current hazards, seed history, verification, fairness records.
    pub fn hazards(&self) -> Hazards {
        self.inner.hazards.clone()
    }

    /// The hazard ticker's status, asked of its actor.
    pub async fn hazard_ticker_status(&self) -> Result<TickerStatus, FleetError> {
        Ok(self.inner.hazard_ticker.send(GetTickerStatus).await?)
    }

    /// Game sessions `gameSession:USER-AGENT`.
    pub fn game_sessions(&self) -> GameSessions {
        self.inner.game_sessions.clone()
    }

    /// The cache service (near cache, pub/sub invalidation, single-flight loads).
    pub fn cache(&self) -> Cache {
        self.inner.cache.clone()
    }

    /// Recent storage events (mode changes, resyncs), oldest first.
    pub async fn storage_events(&self) -> Result<Vec<SeenEvent>, FleetError> {
        Ok(self.inner.monitor.send(ListStorageEvents).await?)
    }

    /// The shared data (seed 000): readers by name, `register_source`, `metrics()`. Its
    /// fetcher and readers run when `shared_data.enabled` is true.
    pub fn shared_data(&self) -> SharedData {
        self.inner.shared_data.clone()
    }

    /// Resolves when the supervision tree stops on its own: with an error naming the actor
    /// when the restart intensity was exceeded.
    pub async fn wait(&self) -> Result<(), FleetError> {
        self.inner.supervisor.wait().await?;
        Ok(())
    }

    /// Stops the actors in reverse order (each within `supervisor.stop_timeout_ms`), flushes
    /// the outbox to Redis (waiting up to the same deadline when Redis is reachable), syncs the
    /// file store and stops the actix thread. Idempotent: later calls return the first report.
    pub async fn shutdown(&self) -> Result<FleetShutdown, FleetError> {
        let mut done = self.inner.shut_down.lock().await;
        if let Some(report) = done.as_ref() {
            return Ok(report.clone());
        }
        // After an escalation the tree has already stopped its children: nothing to report.
        let actors = self
            .inner
            .supervisor
            .shutdown()
            .await
            .unwrap_or(ShutdownReport {
                children: Vec::new(),
                elapsed_ms: 0,
            });
        self.inner.seed004.stopped().await;
        let deadline = Duration::from_millis(self.inner.settings.supervisor.stop_timeout_ms);
        // The producers stopped: what the archive queued is written (or spooled) now.
        self.inner.history.close(deadline).await;
        let storage = &self.inner.storage;
        let mut flushed = storage.flush(deadline).await;
        let unflushed_writes = storage.stats().outbox_len;
        if !flushed && self.inner.settings.storage.fallback == FallbackKind::File {
            tracing::warn!(
                unflushed_writes,
                "redis unreachable at shutdown: writes stay in the file store and are replayed on the next start"
            );
            flushed = true;
        } else if !flushed {
            tracing::error!(
                unflushed_writes,
                "redis unreachable at shutdown: writes held in memory are lost (use storage.fallback = \"file\" to keep them)"
            );
        }
        storage.close().await;
        let system = self.inner.system.lock().take();
        if let Some(system) = system {
            system.stop().await;
        }
        tracing::info!(instance = %self.inner.instance, flushed, "fleet stopped");
        let report = FleetShutdown {
            actors,
            flushed,
            unflushed_writes: if flushed && storage.mode() != Mode::Degraded {
                0
            } else {
                unflushed_writes
            },
        };
        *done = Some(report.clone());
        Ok(report)
    }
}

impl Fleet {
    /// This process's heartbeat (`heartbeat:PID`): set the room, participants and status.
    pub fn heartbeat(&self) -> Heartbeat {
        self.inner.seed004.heartbeat.clone()
    }

    /// The peer monitor: live, stale and zombie peers, and their events.
    pub fn peers(&self) -> Peers {
        self.inner.seed004.peers.clone()
    }

    /// The participant identity registry (`identity:ROOM:PARTICIPANT`).
    pub fn identities(&self) -> Identities {
        self.inner.seed004.identities.clone()
    }

    /// Admin messages: `send(pid, message)` and this process's `inbox()`.
    pub fn admin(&self) -> Admin {
        self.inner.seed004.admin.clone()
    }
}

/// Seed 004's services: their handles, and their actors added to the tree.
struct Seed004 {
    enabled: bool,
    heartbeat: Heartbeat,
    peers: Peers,
    identities: Identities,
    admin: Admin,
}

impl Seed004 {
    fn add(tree: &mut SupervisorBuilder, storage: &Storage, settings: &Settings) -> Self {
        let host = hostname();
        let heartbeat = Heartbeat::new(storage.clone(), settings.heartbeat.clone(), &host);
        let peers = Peers::new(storage.clone(), settings.heartbeat.clone(), &host);
        let identities = Identities::new(storage.clone(), settings.identities.clone());
        let admin = Admin::new(storage.clone(), settings.admin.clone(), &host);
        let enabled = settings.heartbeat.enabled;
        if enabled {
            let h = heartbeat.clone();
            tree.child(
                ChildSpec::new("heartbeat", move |_| HeartbeatSender::new(h.clone()))
                    .restart(RestartType::Permanent),
            );
            let p = peers.clone();
            tree.child(
                ChildSpec::new("peer-monitor", move |_| PeerMonitor::new(p.clone()))
                    .restart(RestartType::Permanent),
            );
        }
        let a = admin.clone();
        tree.child(
            ChildSpec::new("admin-inbox", move |_| AdminInbox::new(a.clone()))
                .restart(RestartType::Permanent),
        );
        Self {
            enabled,
            heartbeat,
            peers,
            identities,
            admin,
        }
    }

    /// After the actors stopped: a clean exit removes this process's heartbeat.
    async fn stopped(&self) {
        if self.enabled {
            if let Err(e) = self.heartbeat.remove().await {
                tracing::warn!(actor = "heartbeat", error = %e, "heartbeat not removed at shutdown");
            }
        }
    }
}

/// A [`Fleet`] for hosts without an async runtime: it owns a small multi-threaded tokio
/// runtime and blocks on the same async methods.
pub struct BlockingFleet {
    runtime: tokio::runtime::Runtime,
    fleet: Fleet,
}

impl std::fmt::Debug for BlockingFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingFleet")
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl BlockingFleet {
    /// Starts a fleet on a runtime of its own. Must not be called from inside a tokio runtime.
    pub fn start(settings: Settings) -> Result<BlockingFleet, FleetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("botfleet-host")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Storage(StorageError::Runtime(e.to_string())))?;
        let fleet = runtime.block_on(Fleet::start(settings))?;
        Ok(BlockingFleet { runtime, fleet })
    }

    /// The async handle, for calls this facade does not wrap.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Runs any future on the fleet's runtime and blocks until it is done, e.g.
    /// `blocking.block_on(blocking.fleet().storage().get("key"))`.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `GET` through the storage handle.
    pub fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.block_on(self.fleet.storage().get(key))
    }

    /// `SET` through the storage handle.
    pub fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StorageError> {
        self.block_on(self.fleet.storage().set(key, value, ttl))
    }

    /// Storage and actor health.
    pub fn health(&self) -> FleetHealth {
        self.fleet.health()
    }

    /// Stops the fleet and its runtime.
    pub fn shutdown(self) -> Result<FleetShutdown, FleetError> {
        let report = self.runtime.block_on(self.fleet.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        report
    }
}

/// The scheduler's handles, as the fleet keeps them.
struct SchedulerParts {
    scheduler: Scheduler,
    periodic: Periodic,
    actor: ActorHandle<SchedulerActor>,
}

impl SchedulerParts {
    fn start(
        tree: &mut SupervisorBuilder,
        storage: &Storage,
        locks: &Locks,
        settings: &Settings,
        instance: &str,
    ) -> Self {
        let scheduler = Scheduler::new(storage.clone(), settings.scheduler.clone(), instance);
        let periodic = Periodic::new(storage.clone(), locks.clone());
        let actor = {
            let (scheduler, periodic) = (scheduler.clone(), periodic.clone());
            tree.child(
                ChildSpec::new("scheduler", move |_| {
                    SchedulerActor::new(scheduler.clone(), periodic.clone())
                })
                .restart(RestartType::Permanent),
            )
        };
        Self {
            scheduler,
            periodic,
            actor,
        }
    }
}

impl Fleet {
    /// The task scheduler: the seed's task queue with workers, bot state, sessions, metrics
    /// and events.
    pub fn scheduler(&self) -> Scheduler {
        self.inner.scheduler.scheduler.clone()
    }

    /// Periodic jobs that run once per period across the fleet.
    pub fn periodic(&self) -> Periodic {
        self.inner.scheduler.periodic.clone()
    }

    /// Counters of this process's task workers.
    pub async fn scheduler_stats(&self) -> Result<SchedulerStats, FleetError> {
        Ok(self.inner.scheduler.actor.send(GetSchedulerStats).await?)
    }
}

use crate::actors::scheduler::periodic::Periodic;
use crate::actors::scheduler::{GetSchedulerStats, Scheduler, SchedulerActor, SchedulerStats};

impl Fleet {
    /// The history archive (issue 10): sessions, task attempts, events, hazard rounds and
    /// players' settled rounds kept in SQL after they leave Redis. Queries answer [`HistoryError::Disabled`] when
    /// `history.enabled` is false.
    pub fn history(&self) -> History {
        self.inner.history.clone()
    }
}

/// Hands the history sink to the producers and registers the retention job.
fn archive_history(
    history: &History,
    settings: &Settings,
    hazards: &Hazards,
    scheduler: &SchedulerParts,
) {
    if !history.is_enabled() {
        return;
    }
    scheduler.scheduler.archive_to(history.sink());
    hazards.archive_to(history.sink());
    if settings.history.retention_days > 0 {
        let h = history.clone();
        let every = Duration::from_secs(settings.history.retention_interval_secs);
        let job = scheduler
            .periodic
            .every(RETENTION_JOB, every, RETENTION_LOCK_TTL, move || {
                let h = h.clone();
                async move {
                    h.purge_expired()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            });
        if let Err(e) = job {
            tracing::error!(actor = "history", error = %e, "history retention job not registered");
        }
    }
}

/// Bound of one retention run (the lock's watchdog extends it while the run lasts).
const RETENTION_LOCK_TTL: Duration = Duration::from_secs(60);

use crate::actors::history::{History, HistoryError, RETENTION_JOB};
