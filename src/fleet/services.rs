//! The built-in services of a fleet: [`Services`] holds each one's handles, and
//! [`Services::add`] creates them and declares their actors in the supervision tree, in start
//! order. A new service gets a field here and a block in `add` at its place in the order; the
//! [`Fleet`](super::Fleet) hands its handle out through an accessor.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::actors::cache::Cache;
use crate::actors::hazards::sessions::GameSessions;
use crate::actors::hazards::Hazards;
use crate::actors::heartbeat::{
    Admin, AdminInbox, Heartbeat, HeartbeatSender, Identities, PeerMonitor, Peers,
};
use crate::actors::heartbeat::{HEARTBEAT_PREFIX, IDENTITY_PREFIX};
use crate::actors::history::{History, HistoryWriter, RETENTION_JOB};
use crate::actors::locks::{LockManager, Locks};
use crate::actors::presence::{hostname, Presence};
use crate::actors::scheduler::periodic::Periodic;
use crate::actors::scheduler::{external, Scheduler, SchedulerActor};
use crate::actors::shared_data::{Fetcher, ReaderActor, SharedData, SharedDataError};
use crate::actors::storage_monitor::{StorageModeChanged, StorageMonitor};
use crate::settings::Settings;
use crate::storage::{Remembered, Storage};
use crate::supervisor::{
    ActorHandle, ChildContext, ChildSpec, HandleRecipient, RestartType, SupervisorBuilder,
};

/// Bound of one history retention run (the lock's watchdog extends it while the run lasts).
const RETENTION_LOCK_TTL: Duration = Duration::from_secs(60);

/// Every built-in service's handles, as the fleet keeps them.
pub(super) struct Services {
    pub(super) monitor: ActorHandle<StorageMonitor>,
    pub(super) presence: ActorHandle<Presence>,
    pub(super) locks: Locks,
    pub(super) hazards: Hazards,
    pub(super) game_sessions: GameSessions,
    pub(super) cache: Cache,
    pub(super) scheduler: Scheduler,
    pub(super) periodic: Periodic,
    pub(super) shared_data: SharedData,
    pub(super) heartbeat: Heartbeat,
    pub(super) peers: Peers,
    pub(super) identities: Identities,
    pub(super) admin: Admin,
    pub(super) history: History,
}

impl Services {
    /// Creates the services' handles and declares their actors in `tree`, in start order:
    /// storage monitor, presence, lock manager, history writer (when `history.enabled`),
    /// hazard ticker, scheduler, the shared-data fetcher and readers (when
    /// `shared_data.enabled`), the heartbeat sender and peer monitor (when
    /// `heartbeat.enabled`), the admin inbox; the settings' `[[scheduler.handlers]]` are
    /// registered with the scheduler. The history archive, opened by the caller with
    /// `History::open_supervised`, gets its writer actor (before its producers, so that it
    /// stops after them), its producers and its retention job. Call it on the host's
    /// multi-threaded tokio runtime: the tasks the handles spawn run there.
    pub(super) async fn add(
        tree: &mut SupervisorBuilder,
        storage: &Storage,
        settings: &Settings,
        instance: &str,
        history: History,
    ) -> Result<Services, SharedDataError> {
        remember_keys(storage, settings);
        // Whom the monitor tells of mode changes: actors declared after it, known once all are.
        let told: Arc<OnceLock<Vec<HandleRecipient<StorageModeChanged>>>> = Arc::default();
        let monitor = {
            let (storage, told) = (storage.clone(), told.clone());
            tree.child(ChildSpec::new("storage-monitor", move |_| {
                StorageMonitor::new(storage.clone(), told.get().cloned().unwrap_or_default())
            }))
        };
        let presence = {
            let (storage, presence, id) = (
                storage.clone(),
                settings.presence.clone(),
                instance.to_owned(),
            );
            let runtime = tokio::runtime::Handle::current();
            permanent(tree, "presence", move |child| {
                Presence::new(
                    storage.clone(),
                    presence.clone(),
                    &id,
                    runtime.clone(),
                    child.clone(),
                )
            })
        };

        let locks = Locks::new(storage.clone(), settings.locks.clone());
        {
            let locks = locks.clone();
            permanent(tree, "locks", move |child| {
                LockManager::new(locks.clone(), child.clone())
            })
        };

        // Before the producers: it starts before them and stops after them.
        if history.is_enabled() {
            let (h, runtime) = (history.clone(), tokio::runtime::Handle::current());
            // The hand-back must end before the tree abandons the actor.
            let drain = Duration::from_millis(settings.supervisor.stop_timeout_ms * 3 / 4);
            permanent(tree, "history", move |child| {
                HistoryWriter::new(h.clone(), runtime.clone(), child.clone(), drain)
            });
        }

        let hazards = Hazards::new(
            storage.clone(),
            settings.hazards.clone(),
            locks.clone(),
            instance,
        );
        {
            let (hazards, runtime) = (hazards.clone(), tokio::runtime::Handle::current());
            permanent(tree, "hazards", move |child| {
                hazards.ticker(runtime.clone(), child.clone())
            })
        };
        let game_sessions = GameSessions::new(storage.clone(), settings.game_sessions.clone());
        let cache = Cache::unstarted(storage.clone(), settings.cache.clone());
        let cache_listener = {
            let (cache, runtime) = (cache.clone(), tokio::runtime::Handle::current());
            permanent(tree, "cache", move |child| {
                cache.listener(runtime.clone(), child.clone())
            })
        };

        let scheduler = Scheduler::new(storage.clone(), settings.scheduler.clone(), instance);
        let periodic = Periodic::new(storage.clone(), locks.clone());
        // The worker runs under the actor, from the tree's start: the host's handlers only
        // register.
        scheduler.supervise();
        // `[[scheduler.handlers]]`: validated with the settings, so a refusal here is a bug.
        if let Err(e) = external::register(&scheduler, &settings.scheduler.handlers) {
            tracing::error!(actor = "scheduler", error = %e, "configured handlers not registered");
        }
        {
            let (scheduler, periodic) = (scheduler.clone(), periodic.clone());
            let runtime = tokio::runtime::Handle::current();
            // The drain must end before the tree abandons the actor.
            let drain = Duration::from_millis(settings.supervisor.stop_timeout_ms * 3 / 4);
            permanent(tree, "scheduler", move |child| {
                SchedulerActor::new(
                    scheduler.clone(),
                    periodic.clone(),
                    runtime.clone(),
                    child.clone(),
                    drain,
                )
            })
        };
        archive_history(&history, settings, &hazards, &scheduler, &periodic);

        let shared_data = SharedData::new(
            storage.clone(),
            settings.shared_data.clone(),
            locks.clone(),
            instance,
        )?;
        if settings.shared_data.enabled {
            let shared = shared_data.clone();
            permanent(tree, "shared-data-fetcher", move |child| {
                Fetcher::new(shared.clone(), child.clone())
            });
            let mut readers = Vec::new();
            for name in &settings.shared_data.readers {
                let (shared, name) = (shared_data.clone(), name.clone());
                let reader = permanent(tree, &format!("reader-{name}"), move |child| {
                    ReaderActor::new(shared.clone(), &name, child.clone())
                });
                readers.push(reader.recipient());
            }
            shared_data.tell_readers(readers);
        }

        let host = hostname();
        let heartbeat = Heartbeat::new(storage.clone(), settings.heartbeat.clone(), &host);
        let peers = Peers::new(storage.clone(), settings.heartbeat.clone(), &host);
        let identities = Identities::new(storage.clone(), settings.identities.clone());
        let admin = Admin::new(storage.clone(), settings.admin.clone(), &host);
        if settings.heartbeat.enabled {
            let (h, runtime) = (heartbeat.clone(), tokio::runtime::Handle::current());
            permanent(tree, "heartbeat", move |child| {
                HeartbeatSender::new(h.clone(), runtime.clone(), child.clone())
            });
            let (p, runtime) = (peers.clone(), tokio::runtime::Handle::current());
            permanent(tree, "peer-monitor", move |child| {
                PeerMonitor::new(p.clone(), runtime.clone(), child.clone())
            });
        }
        let (a, runtime) = (admin.clone(), tokio::runtime::Handle::current());
        let admin_inbox = permanent(tree, "admin-inbox", move |child| {
            AdminInbox::new(a.clone(), runtime.clone(), child.clone())
        });
        let _ = told.set(vec![cache_listener.recipient(), admin_inbox.recipient()]);

        Ok(Services {
            monitor,
            presence,
            locks,
            hazards,
            game_sessions,
            cache,
            scheduler,
            periodic,
            shared_data,
            heartbeat,
            peers,
            identities,
            admin,
            history,
        })
    }

    /// After the actors stopped, before the storage closes: a clean exit removes this
    /// process's heartbeat, and what the archive queued is written (or spooled).
    pub(super) async fn stopped(&self, settings: &Settings, deadline: Duration) {
        if settings.heartbeat.enabled {
            if let Err(e) = self.heartbeat.remove().await {
                tracing::warn!(actor = "heartbeat", error = %e, "heartbeat not removed at shutdown");
            }
        }
        self.history.close(deadline).await;
    }
}

/// Declares a child restarted after any exit (the built-in actors all are).
fn permanent<A, F>(tree: &mut SupervisorBuilder, name: &str, factory: F) -> ActorHandle<A>
where
    A: actix::Actor<Context = actix::Context<A>>,
    F: Fn(&ChildContext) -> A + Send + Sync + 'static,
{
    tree.child(ChildSpec::new(name, factory).restart(RestartType::Permanent))
}

/// Hands the history sink to the producers and registers the retention job.
fn archive_history(
    history: &History,
    settings: &Settings,
    hazards: &Hazards,
    scheduler: &Scheduler,
    periodic: &Periodic,
) {
    if !history.is_enabled() {
        return;
    }
    scheduler.archive_to(history.sink());
    hazards.archive_to(history.sink());
    if settings.history.retention_days > 0 {
        let h = history.clone();
        let every = Duration::from_secs(settings.history.retention_interval_secs);
        let job = periodic.every(RETENTION_JOB, every, RETENTION_LOCK_TTL, move || {
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

/// Declares the keys the built-in services keep through an outage (see
/// [`Storage::remember`]): what they decide on, and what they show. A task queue declares its
/// own keys when it is made (`Scheduler::for_queue`), the cache each key it touches.
fn remember_keys(storage: &Storage, settings: &Settings) {
    let keys = storage.keys();
    let (prefix, internal) = (keys.prefix(), keys.internal_prefix());
    let patterns = [
        // The bot state machine, sessions, their metrics and the event log.
        keys.state(),
        keys.sessions_active(),
        format!("{prefix}:session:*"),
        format!("{prefix}:metrics:*"),
        keys.events(),
        // Game sessions, fairness records, hazards and their tick records.
        "gameSession:*".to_string(),
        "user-sessions:*".to_string(),
        "fairness:*".to_string(),
        format!("{internal}:fairness-secret:*"),
        "hazards-*".to_string(),
        format!("{internal}:hazards*"),
        // Heartbeats, identities, presence.
        format!("{HEARTBEAT_PREFIX}*"),
        format!("{IDENTITY_PREFIX}*"),
        format!("{internal}:instance:*"),
        // The shared snapshot.
        settings.shared_data.shared_key.clone(),
        settings.shared_data.legacy_key.clone(),
        format!("{internal}:shared-data-guard:*"),
    ];
    for pattern in &patterns {
        storage.remember(pattern, Remembered::State);
    }
}
