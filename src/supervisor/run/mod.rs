//! The supervisor loop: starts the children in order, turns exit notices into restarts (with
//! backoff, within the restart intensity), runs the watchdog that abandons hung actors, and
//! stops the children in reverse order at shutdown or escalation.
//!
//! It is one task on an arbiter of its own. It owns each incarnation's fate sender, so when
//! the loop is dropped (the actor system stopped under it) every waiting request resolves.
//!
//! Children are indexed by declaration order. Every index used here comes from the loop's own
//! ranges, or from a notice that carries the index the loop gave the incarnation (and is
//! checked with `is_current` first), so indexing `children` cannot go out of bounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::child::{Notice, SupervisedChild, Wiring};
use super::error::{Exit, SupervisorError};
use super::events::SupervisionEvent;
use super::handle::Fate;
use super::health::{ChildState, HealthBoard};
use super::report::ShutdownReport;
use super::restart::{backoff, Intensity};
use super::system::{ManagedArbiter, SystemInner};
use crate::settings::SupervisorSettings;

mod shutdown;

/// Shortest period of the watchdog's check.
const MIN_WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// The loop's state.
pub(crate) struct Tree {
    name: String,
    settings: SupervisorSettings,
    system: Arc<SystemInner>,
    own_arbiter: ManagedArbiter,
    children: Vec<ChildRecord>,
    notices_tx: mpsc::UnboundedSender<Notice>,
    notices: mpsc::UnboundedReceiver<Notice>,
    health: Arc<HealthBoard>,
    events: broadcast::Sender<SupervisionEvent>,
    /// Restarts across the whole tree, for the intensity limit.
    intensity: Intensity,
}

struct ChildRecord {
    child: Arc<dyn SupervisedChild>,
    arbiter: Option<ManagedArbiter>,
    /// Number of the latest incarnation (0 before the first).
    generation: u64,
    restarts: u32,
    /// This child's recent restarts: their count sets its backoff.
    recent: Intensity,
    live: Option<Live>,
    restart_at: Option<Instant>,
    /// How and when the previous incarnation ended, for the restart event.
    last_exit: Option<(Exit, Instant)>,
}

/// The supervisor's side of the current incarnation.
struct Live {
    fate: watch::Sender<Fate>,
    stop: Option<oneshot::Sender<()>>,
    spawned_at: Instant,
    running: bool,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Tree {
    pub(crate) fn new(
        name: String,
        settings: SupervisorSettings,
        system: Arc<SystemInner>,
        own_arbiter: ManagedArbiter,
        children: Vec<Arc<dyn SupervisedChild>>,
        health: Arc<HealthBoard>,
        events: broadcast::Sender<SupervisionEvent>,
    ) -> Self {
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let children = children
            .into_iter()
            .map(|child| ChildRecord {
                child,
                arbiter: None,
                generation: 0,
                restarts: 0,
                recent: Intensity::new(&settings),
                live: None,
                restart_at: None,
                last_exit: None,
            })
            .collect();
        Self {
            intensity: Intensity::new(&settings),
            name,
            settings,
            system,
            own_arbiter,
            children,
            notices_tx,
            notices,
            health,
            events,
        }
    }

    /// Runs the tree to its end and publishes the outcome.
    pub(crate) async fn run(
        mut self,
        ready: oneshot::Sender<Result<(), SupervisorError>>,
        mut shutdown: oneshot::Receiver<()>,
        outcome: watch::Sender<Option<Result<ShutdownReport, SupervisorError>>>,
    ) {
        let result = match self.start_all().await {
            Err(error) => {
                let _ = ready.send(Err(error.clone()));
                Err(error)
            }
            Ok(()) => {
                let _ = ready.send(Ok(()));
                self.supervise(&mut shutdown).await
            }
        };
        outcome.send_replace(Some(result));
        self.system.retire(&self.own_arbiter);
    }

    fn watchdog(&self) -> Duration {
        Duration::from_millis(self.settings.watchdog_ms)
    }

    fn emit(&self, event: SupervisionEvent) {
        event.emit();
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn is_current(&self, index: usize, generation: u64) -> bool {
        self.children
            .get(index)
            .is_some_and(|rec| rec.generation == generation && rec.live.is_some())
    }

    async fn start_all(&mut self) -> Result<(), SupervisorError> {
        for index in 0..self.children.len() {
            if let Err(error) = self.start_one(index).await {
                let report = self.stop_children().await;
                tracing::info!(supervisor = %self.name, stopped = ?report.stop_order(),
                    "start aborted, started children stopped");
                return Err(error);
            }
        }
        Ok(())
    }

    /// Starts child `index` and waits until it runs; its failure (or a start longer than
    /// `watchdog_ms`) aborts the start of the tree.
    async fn start_one(&mut self, index: usize) -> Result<(), SupervisorError> {
        self.spawn_incarnation(index).await?;
        let generation = self.children[index].generation;
        let deadline = tokio::time::Instant::now() + self.watchdog();
        loop {
            let notice = match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                Ok(Some(notice)) => notice,
                // Cannot happen: the tree holds a sender.
                Ok(None) => return Err(SupervisorError::SystemStopped),
                Err(_) => {
                    let exit = Exit::Hung {
                        pending_ms: self.settings.watchdog_ms,
                    };
                    self.retire_arbiter(index);
                    self.bury(index, exit.clone());
                    return Err(self.start_failed(index, exit));
                }
            };
            match notice {
                Notice::Started {
                    index: i,
                    generation: g,
                } => {
                    self.on_started(i, g);
                    if i == index && g == generation {
                        return Ok(());
                    }
                }
                Notice::Exited {
                    index: i,
                    generation: g,
                    exit,
                } if i == index && g == generation => {
                    if !exit.is_failure() {
                        // It started and stopped at once: handled like any normal exit.
                        return self.on_exit(i, g, exit);
                    }
                    self.bury(i, exit.clone());
                    return Err(self.start_failed(i, exit));
                }
                // A child started earlier died: restarted as usual once the start is done
                // (or the intensity is exceeded, which aborts the start).
                Notice::Exited {
                    index: i,
                    generation: g,
                    exit,
                } => self.on_exit(i, g, exit)?,
            }
        }
    }

    fn start_failed(&self, index: usize, error: Exit) -> SupervisorError {
        SupervisorError::StartFailed {
            actor: self.children[index].child.name().to_owned(),
            error,
        }
    }

    /// Supervises until shutdown (`Ok` with the stop report) or escalation (`Err`).
    async fn supervise(
        &mut self,
        shutdown: &mut oneshot::Receiver<()>,
    ) -> Result<ShutdownReport, SupervisorError> {
        let mut watchdog = tokio::time::interval((self.watchdog() / 4).max(MIN_WATCHDOG_TICK));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_restart = self.children.iter().filter_map(|rec| rec.restart_at).min();
            let wake = tokio::time::Instant::from_std(next_restart.unwrap_or_else(Instant::now));
            let step = tokio::select! {
                biased;
                // Shutdown asked, or the `Supervisor` was dropped.
                _ = &mut *shutdown => return Ok(self.stop_children().await),
                notice = self.notices.recv() => match notice {
                    Some(Notice::Started { index, generation }) => {
                        self.on_started(index, generation);
                        Ok(())
                    }
                    Some(Notice::Exited { index, generation, exit }) => {
                        self.on_exit(index, generation, exit)
                    }
                    // Cannot happen: the tree holds a sender.
                    None => Ok(()),
                },
                _ = tokio::time::sleep_until(wake), if next_restart.is_some() => {
                    self.restart_due().await
                }
                _ = watchdog.tick() => self.check_watchdog(),
            };
            if let Err(error) = step {
                let report = self.stop_children().await;
                tracing::error!(supervisor = %self.name, error = %error, stopped = ?report.stop_order(),
                    "supervision tree stopped");
                return Err(error);
            }
        }
    }

    /// Creates incarnation `generation + 1` of child `index` (and its arbiter if needed).
    async fn spawn_incarnation(&mut self, index: usize) -> Result<(), SupervisorError> {
        if self.children[index].arbiter.is_none() {
            let label = format!("{}/{}", self.name, self.children[index].child.name());
            let arbiter = self.system.spawn_arbiter(&label).await?;
            self.children[index].arbiter = Some(arbiter);
        }
        let rec = &mut self.children[index];
        let Some(arbiter) = rec.arbiter.as_ref() else {
            return Err(SupervisorError::SystemStopped);
        };
        rec.generation += 1;
        let (fate, fate_rx) = watch::channel(Fate::Alive);
        let (stop, stop_rx) = oneshot::channel();
        rec.child.spawn(
            arbiter.handle(),
            Wiring {
                index,
                generation: rec.generation,
                restarts: rec.restarts,
                notices: self.notices_tx.clone(),
                fate: fate_rx,
                stop: stop_rx,
            },
        );
        rec.live = Some(Live {
            fate,
            stop: Some(stop),
            spawned_at: Instant::now(),
            running: false,
        });
        self.health.starting(index, rec.generation, rec.restarts);
        Ok(())
    }

    fn on_started(&mut self, index: usize, generation: u64) {
        if !self.is_current(index, generation) {
            return;
        }
        let rec = &mut self.children[index];
        if let Some(live) = rec.live.as_mut() {
            live.running = true;
        }
        self.health.running(index);
        let actor = rec.child.name().to_owned();
        let event = match rec.last_exit.take() {
            None => SupervisionEvent::ActorStarted { actor },
            Some((error, died_at)) => SupervisionEvent::ActorRestarted {
                actor,
                incarnation: generation,
                restarts: rec.restarts,
                downtime_ms: millis(died_at.elapsed()),
                error,
            },
        };
        self.emit(event);
    }

    fn take_live(&mut self, index: usize) -> Option<Live> {
        let rec = &mut self.children[index];
        let live = rec.live.take();
        rec.child.detach(rec.generation);
        live
    }

    /// An incarnation ended: restart it or not, within the intensity.
    fn on_exit(
        &mut self,
        index: usize,
        generation: u64,
        exit: Exit,
    ) -> Result<(), SupervisorError> {
        if !self.is_current(index, generation) {
            // An incarnation abandoned earlier finished at last.
            return Ok(());
        }
        let Some(live) = self.take_live(index) else {
            return Ok(());
        };
        self.after_death(index, live, exit)
    }

    fn after_death(&mut self, index: usize, live: Live, exit: Exit) -> Result<(), SupervisorError> {
        let actor = self.children[index].child.name().to_owned();
        let restart = self.children[index]
            .child
            .restart_type()
            .restarts_after(exit.is_failure());
        let now = Instant::now();
        let over_limit = if restart {
            let restarts = self.intensity.record(now);
            (restarts > self.settings.max_restarts).then_some(restarts)
        } else {
            None
        };
        self.emit(exit_event(&actor, &exit, restart && over_limit.is_none()));
        if let Some(restarts) = over_limit {
            self.settle_as(index, live, &exit, ChildState::Failed);
            let within_secs = self.settings.within_secs;
            self.emit(SupervisionEvent::IntensityExceeded {
                actor: actor.clone(),
                error: exit.clone(),
                restarts,
                within_secs,
            });
            return Err(SupervisorError::IntensityExceeded {
                actor,
                last_failure: exit,
                restarts,
                within_secs,
            });
        }
        if !restart {
            self.settle(index, live, &exit);
            return Ok(());
        }
        let rec = &mut self.children[index];
        let consecutive = rec.recent.record(now);
        rec.restart_at = Some(now + backoff(&self.settings, consecutive));
        rec.last_exit = Some((exit.clone(), now));
        // Health first: a caller woken by the fate must already see the new state.
        self.health.exited(index, &exit, ChildState::Restarting);
        live.fate.send_replace(Fate::Restarting);
        Ok(())
    }

    /// The incarnation is dead for good: requests fail with `Stopped` from now on.
    fn settle(&mut self, index: usize, live: Live, exit: &Exit) {
        let state = if exit.is_failure() {
            ChildState::Failed
        } else {
            ChildState::Stopped
        };
        self.settle_as(index, live, exit, state);
    }

    fn settle_as(&mut self, index: usize, live: Live, exit: &Exit, state: ChildState) {
        let rec = &mut self.children[index];
        rec.child.close();
        rec.restart_at = None;
        // Health first: a caller woken by the fate must already see the new state.
        self.health.exited(index, exit, state);
        live.fate.send_replace(Fate::Stopped);
    }

    /// Takes the current incarnation (if any) and settles it without restart.
    fn bury(&mut self, index: usize, exit: Exit) {
        if exit.is_failure() {
            let actor = self.children[index].child.name().to_owned();
            self.emit(exit_event(&actor, &exit, false));
        }
        if let Some(live) = self.take_live(index) {
            self.settle(index, live, &exit);
        } else {
            self.children[index].child.close();
            self.health.exited(index, &exit, ChildState::Failed);
        }
    }

    /// Gives up on the current incarnation's arbiter: stops it and lets its thread go. A
    /// thread blocked in a synchronous handler stays alive until the handler returns.
    fn retire_arbiter(&mut self, index: usize) {
        if let Some(arbiter) = self.children[index].arbiter.take() {
            self.system.retire(&arbiter);
        }
    }

    async fn restart_due(&mut self) -> Result<(), SupervisorError> {
        let now = Instant::now();
        for index in 0..self.children.len() {
            let rec = &mut self.children[index];
            if rec.restart_at.is_some_and(|at| at <= now) {
                rec.restart_at = None;
                rec.restarts += 1;
                self.spawn_incarnation(index).await?;
            }
        }
        Ok(())
    }

    /// Abandons and restarts every actor with a request (or a start) older than `watchdog_ms`.
    fn check_watchdog(&mut self) -> Result<(), SupervisorError> {
        let limit = self.watchdog();
        for index in 0..self.children.len() {
            let rec = &self.children[index];
            let Some(live) = rec.live.as_ref() else {
                continue;
            };
            let age = if live.running {
                rec.child.oldest_pending()
            } else {
                Some(live.spawned_at.elapsed())
            };
            let Some(age) = age.filter(|age| *age > limit) else {
                continue;
            };
            let live = self.take_live(index);
            self.retire_arbiter(index);
            if let Some(live) = live {
                self.after_death(
                    index,
                    live,
                    Exit::Hung {
                        pending_ms: millis(age),
                    },
                )?;
            }
        }
        Ok(())
    }
}

impl Drop for Tree {
    /// Runs at the end of the loop, and also when the loop task is dropped because the actor
    /// system was stopped under it: handles then report `Stopped` instead of waiting for a
    /// restart that will never come (dropping the fate senders settles requests in flight).
    fn drop(&mut self) {
        for (index, rec) in self.children.iter().enumerate() {
            rec.child.close();
            if matches!(
                self.health.state(index),
                Some(ChildState::Starting | ChildState::Running | ChildState::Restarting)
            ) {
                self.health.set_state(index, ChildState::Stopped);
            }
        }
    }
}

/// The event that reports an exit: a failure, or a normal stop.
fn exit_event(actor: &str, exit: &Exit, will_restart: bool) -> SupervisionEvent {
    let actor = actor.to_owned();
    if exit.is_failure() {
        SupervisionEvent::ActorFailed {
            actor,
            error: exit.clone(),
            will_restart,
        }
    } else {
        SupervisionEvent::ActorStopped {
            actor,
            will_restart,
        }
    }
}
