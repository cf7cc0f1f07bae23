//! The `Fleet` handle: what a host application (or the daemon) starts.
//!
//! [`Fleet::start`] (called from the host's multi-threaded tokio runtime) opens the storage
//! there, opens the history archive (its writer runs on that runtime too, as the task of the
//! `history` actor), starts the actix system on a thread of its own ([`ActorSystem`]) and the
//! supervision tree. Its children, in start order, all [`RestartType::Permanent`](crate::supervisor::RestartType::Permanent):
//!
//! | child | actor | when |
//! |---|---|---|
//! | `storage-monitor` | `StorageMonitor` | always |
//! | `presence` | `Presence` | always |
//! | `locks` | `LockManager` | always |
//! | `history` | `HistoryWriter` (the archive's batch writer) | `history.enabled` |
//! | `hazards` | `HazardTicker` | always (it ticks only when `hazards.enabled`) |
//! | `cache` | `CacheListener` | always |
//! | `scheduler` | `SchedulerActor` | always |
//! | `shared-data-fetcher`, `reader-NAME` | `Fetcher`, one `ReaderActor` per reader | `shared_data.enabled` |
//! | `heartbeat`, `peer-monitor` | `HeartbeatSender`, `PeerMonitor` | `heartbeat.enabled` |
//! | `admin-inbox` | `AdminInbox` | always |
//!
//! The host's own actors follow ([`Fleet::start_with`]): they start after the built-in ones and
//! stop before them. The handles the host calls ([`Fleet::scheduler`], [`Fleet::locks`],
//! [`Fleet::cache`], ...) are built in `services.rs` (`Services::add`, which also declares the
//! actors in this order) and kept in the fleet. With `history.enabled` the scheduler and the hazards handle get
//! the archive's sink, and with `history.retention_days` above 0 a periodic job purges old rows.
//! The `[[scheduler.handlers]]` of the settings (commands and webhooks,
//! `actors::scheduler::external`) are registered with the scheduler at start.
//!
//! [`Fleet::shutdown`] stops the actors in reverse order, each within
//! `supervisor.stop_timeout_ms`, deletes this process's heartbeat, closes the history archive
//! (the stopped `history` actor handed its queue back: what it queued is written or spooled),
//! flushes the outbox to Redis (waiting up to the same deadline; with the file fallback what cannot reach Redis stays on disk for the next start),
//! closes the storage and stops the system thread. [`BlockingFleet`] is the same handle for
//! hosts without an async runtime.
//!
//! `ARCHITECTURE.md` lists the steps to add a service here.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use crate::actors::cache::Cache;
use crate::actors::hazards::sessions::GameSessions;
use crate::actors::hazards::{Hazards, TickerStatus};
use crate::actors::heartbeat::{Admin, Heartbeat, Identities, Peers};
use crate::actors::history::{History, HistoryError};
use crate::actors::locks::{LockStats, Locks};
use crate::actors::presence::{hostname, GetPresence, PresenceStatus};
use crate::actors::scheduler::periodic::Periodic;
use crate::actors::scheduler::{Scheduler, SchedulerStats};
use crate::actors::shared_data::{SharedData, SharedDataError};
use crate::actors::storage_monitor::{ListStorageEvents, SeenEvent};
use crate::settings::{FallbackKind, Settings};
use crate::storage::{KeySchema, Mode, Storage, StorageError, StorageStats};
use crate::supervisor::{
    ActorSystem, CallError, HealthReport, ShutdownReport, SupervisionEvent, Supervisor,
    SupervisorBuilder, SupervisorError,
};

mod blocking;
mod services;

pub use blocking::BlockingFleet;
use services::Services;

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
    services: Services,
    shut_down: tokio::sync::Mutex<Option<FleetShutdown>>,
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
        // The history archive: its writer runs on this runtime, off every caller's path, as the
        // task of the supervised `history` actor.
        let history = match History::open_supervised(&settings.history, settings.storage.fallback) {
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
        let services = match Services::add(&mut tree, &storage, &settings, &instance, history).await
        {
            Ok(services) => services,
            Err(e) => {
                system.stop().await;
                storage.close().await;
                return Err(e.into());
            }
        };
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
                services,
                shut_down: tokio::sync::Mutex::new(None),
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

    /// The supervision events (failures with their message, restarts with their downtime,
    /// escalations) emitted from now on.
    pub fn supervision_events(&self) -> tokio::sync::broadcast::Receiver<SupervisionEvent> {
        self.inner.supervisor.subscribe()
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
        let deadline = Duration::from_millis(self.inner.settings.supervisor.stop_timeout_ms);
        // The producers stopped: the heartbeat is removed, the archive's queue written.
        self.inner
            .services
            .stopped(&self.inner.settings, deadline)
            .await;
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

/// The services' handles, and the figures their actors answer.
impl Fleet {
    /// The presence actor's status.
    pub async fn presence(&self) -> Result<PresenceStatus, FleetError> {
        Ok(self.inner.services.presence.send(GetPresence).await?)
    }

    /// Recent storage events (mode changes, resyncs), oldest first.
    pub async fn storage_events(&self) -> Result<Vec<SeenEvent>, FleetError> {
        Ok(self.inner.services.monitor.send(ListStorageEvents).await?)
    }

    /// The lock API (`acquire`, `try_acquire`, `run_exclusive`). Cheap to clone; guards it
    /// hands out run their watchdog and release on this runtime, not on the actor.
    pub fn locks(&self) -> Locks {
        self.inner.services.locks.clone()
    }

    /// The lock counters of this process (waiters, release notices heard), read from the
    /// handle: answered while the lock manager restarts too.
    pub async fn lock_stats(&self) -> Result<LockStats, FleetError> {
        Ok(self.inner.services.locks.stats())
    }

    /// The hazards API: current hazards, seed history, verification, fairness records.
    pub fn hazards(&self) -> Hazards {
        self.inner.services.hazards.clone()
    }

    /// The hazard ticker's status, read from the handle.
    pub async fn hazard_ticker_status(&self) -> Result<TickerStatus, FleetError> {
        Ok(self.inner.services.hazards.status())
    }

    /// Game sessions `gameSession:USER-AGENT`.
    pub fn game_sessions(&self) -> GameSessions {
        self.inner.services.game_sessions.clone()
    }

    /// The cache service (near cache, pub/sub invalidation, single-flight loads).
    pub fn cache(&self) -> Cache {
        self.inner.services.cache.clone()
    }

    /// The task scheduler: the seed's task queue with workers, bot state, sessions, metrics
    /// and events. The settings' `[[scheduler.handlers]]` are registered already.
    pub fn scheduler(&self) -> Scheduler {
        self.inner.services.scheduler.clone()
    }

    /// Periodic jobs that run once per period across the fleet.
    pub fn periodic(&self) -> Periodic {
        self.inner.services.periodic.clone()
    }

    /// Counters of this process's task workers, read from the handle.
    pub async fn scheduler_stats(&self) -> Result<SchedulerStats, FleetError> {
        Ok(self.inner.services.scheduler.stats())
    }

    /// The shared data (seed 000): readers by name, `register_source`, `metrics()`. Its
    /// fetcher and readers run when `shared_data.enabled` is true.
    pub fn shared_data(&self) -> SharedData {
        self.inner.services.shared_data.clone()
    }

    /// This process's heartbeat (`heartbeat:PID`): set the room, participants and status.
    pub fn heartbeat(&self) -> Heartbeat {
        self.inner.services.heartbeat.clone()
    }

    /// The peer monitor: live, stale and zombie peers, and their events.
    pub fn peers(&self) -> Peers {
        self.inner.services.peers.clone()
    }

    /// The participant identity registry (`identity:ROOM:PARTICIPANT`).
    pub fn identities(&self) -> Identities {
        self.inner.services.identities.clone()
    }

    /// Admin messages: `send(pid, message)` and this process's `inbox()`.
    pub fn admin(&self) -> Admin {
        self.inner.services.admin.clone()
    }

    /// The history archive: sessions, task attempts, events, hazard rounds and players'
    /// settled rounds kept in SQL after they leave Redis. Queries answer
    /// [`HistoryError::Disabled`] when `history.enabled` is false.
    pub fn history(&self) -> History {
        self.inner.services.history.clone()
    }
}
