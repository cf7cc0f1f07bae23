//! The public face of a supervision tree: [`SupervisorBuilder`] declares the children in
//! order and starts them, [`Supervisor`] reads their health, waits for the tree to end and
//! shuts it down, returning a [`ShutdownReport`].
//!
//! The supervisor loop itself (in `run`) runs as a task on an arbiter of its own, never on a
//! child's arbiter, so a hung child cannot stall it; it needs no tokio runtime from the caller.

use std::collections::HashSet;
use std::sync::Arc;

use actix::{Actor, Context};
use tokio::sync::{broadcast, oneshot, watch};

use super::child::{ChildSpec, SupervisedChild, TypedChild};
use super::error::SupervisorError;
use super::events::SupervisionEvent;
use super::handle::ActorHandle;
use super::health::{HealthBoard, HealthReport};
use super::report::ShutdownReport;
use super::run::Tree;
use super::system::ActorSystem;
use crate::settings::SupervisorSettings;

/// Events kept for a slow subscriber before it starts missing some.
const EVENT_CAPACITY: usize = 256;

/// How a tree ended: a report of its orderly stop, or the error that made it give up.
type Outcome = Result<ShutdownReport, SupervisorError>;

/// Declares the children of a supervisor, in start order.
pub struct SupervisorBuilder {
    name: String,
    settings: SupervisorSettings,
    children: Vec<Arc<dyn SupervisedChild>>,
}

impl SupervisorBuilder {
    /// An empty tree named `name` with the given restart policy.
    pub fn new(name: impl Into<String>, settings: SupervisorSettings) -> Self {
        Self {
            name: name.into(),
            settings,
            children: Vec::new(),
        }
    }

    /// Declares the next child and returns its stable handle (usable once the tree started;
    /// before that, requests fail with [`CallError::Unavailable`](super::CallError::Unavailable)).
    /// The handle can be given to the factories of children declared later.
    pub fn child<A>(&mut self, spec: ChildSpec<A>) -> ActorHandle<A>
    where
        A: Actor<Context = Context<A>>,
    {
        let (child, handle) = TypedChild::new(spec);
        self.children.push(Arc::new(child));
        handle
    }

    /// Starts the children in declared order, each one running (its `started()` done) before
    /// the next is created, on an arbiter of its own.
    ///
    /// If a child fails (or does not finish starting within `watchdog_ms`) during the ordered
    /// start, the children already started are stopped in reverse order and
    /// [`SupervisorError::StartFailed`] is returned. Can be awaited on any executor.
    pub async fn start(self, system: &ActorSystem) -> Result<Supervisor, SupervisorError> {
        let mut names = HashSet::new();
        for child in &self.children {
            if !names.insert(child.name().to_owned()) {
                return Err(SupervisorError::DuplicateChild {
                    actor: child.name().to_owned(),
                });
            }
        }
        let system = system.inner();
        let own_arbiter = system
            .spawn_arbiter(&format!("{} (supervisor)", self.name))
            .await?;
        let rows: Vec<_> = self
            .children
            .iter()
            .map(|child| (child.name().to_owned(), child.restart_type()))
            .collect();
        let health = Arc::new(HealthBoard::new(&self.name, &rows));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let tree = Tree::new(
            self.name.clone(),
            self.settings,
            Arc::clone(&system),
            own_arbiter.clone(),
            self.children,
            Arc::clone(&health),
            events.clone(),
        );
        if !own_arbiter
            .handle()
            .spawn(tree.run(ready_tx, shutdown_rx, outcome_tx))
        {
            system.retire(&own_arbiter);
            return Err(SupervisorError::SystemStopped);
        }
        match ready_rx.await {
            Ok(Ok(())) => Ok(Supervisor {
                name: self.name,
                health,
                events,
                shutdown: parking_lot::Mutex::new(Some(shutdown_tx)),
                outcome: outcome_rx,
            }),
            Ok(Err(error)) => Err(error),
            // The loop was dropped before it reported: its arbiter or the system stopped.
            Err(_) => Err(SupervisorError::SystemStopped),
        }
    }
}

/// A running supervision tree. Dropping it shuts the tree down (without waiting).
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    health: Arc<HealthBoard>,
    events: broadcast::Sender<SupervisionEvent>,
    shutdown: parking_lot::Mutex<Option<oneshot::Sender<()>>>,
    outcome: watch::Receiver<Option<Outcome>>,
}

impl Supervisor {
    /// Name of the tree.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Health of every child (cheap: copies a small table under a short lock).
    pub fn health(&self) -> HealthReport {
        self.health.snapshot()
    }

    /// Receives the supervision events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.events.subscribe()
    }

    /// Whether the tree is still supervising (not shut down, not given up).
    pub fn is_running(&self) -> bool {
        self.outcome.borrow().is_none()
    }

    /// Resolves when the tree has ended: `Ok` after a shutdown, or the error that made it give
    /// up, e.g. [`SupervisorError::IntensityExceeded`].
    pub async fn wait(&self) -> Result<ShutdownReport, SupervisorError> {
        let mut outcome = self.outcome.clone();
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(SupervisorError::SystemStopped)),
            // The loop was dropped without an outcome: the actor system was stopped under it.
            Err(_) => Err(SupervisorError::SystemStopped),
        };
        result
    }

    /// Stops the children in reverse declaration order, each within `stop_timeout_ms` (a child
    /// that does not stop in time is abandoned and reported), and returns the report. If the
    /// tree had already given up, returns that error instead.
    /// Takes `&self` so that a shared owner (the `Fleet`) can stop the tree while others wait
    /// on it; a second call returns the same outcome.
    pub async fn shutdown(&self) -> Result<ShutdownReport, SupervisorError> {
        let shutdown = self.shutdown.lock().take();
        if let Some(shutdown) = shutdown {
            let _ = shutdown.send(());
        }
        self.wait().await
    }
}
