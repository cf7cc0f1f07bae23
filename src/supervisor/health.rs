//! Health of the children of a supervisor, readable at any time with
//! [`Supervisor::health`](super::Supervisor::health): one [`ActorHealth`] per child, in
//! declaration order, as a serializable [`HealthReport`] for the HTTP API and the dashboard.
//!
//! The supervisor loop writes the board; readers copy it under a short lock.

use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use super::error::Exit;
use super::restart::RestartType;

/// Life-cycle state of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildState {
    /// An incarnation was created and has not finished `started()` yet.
    Starting,
    /// The current incarnation is running.
    Running,
    /// The last incarnation died; a new one starts after the backoff delay.
    Restarting,
    /// The last incarnation failed and will not be restarted (temporary child, or the tree
    /// gave up).
    Failed,
    /// Stopped normally, for good.
    Stopped,
}

/// Health of one child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorHealth {
    /// Name of the child.
    pub actor: String,
    /// Its restart type.
    pub restart: RestartType,
    /// Its state.
    pub state: ChildState,
    /// Number of the current (or last) incarnation, 1 for the first.
    pub incarnation: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// What the last failure was, if any.
    pub last_failure: Option<String>,
    /// When the last failure happened (unix time, milliseconds).
    pub last_failure_unix_ms: Option<u64>,
    /// How long the current incarnation has been running, if it is running.
    pub uptime_ms: Option<u64>,
}

/// Health of every child of a supervisor, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Name of the supervisor.
    pub supervisor: String,
    /// One entry per child.
    pub actors: Vec<ActorHealth>,
}

impl HealthReport {
    /// The entry of the child named `actor`.
    pub fn actor(&self, actor: &str) -> Option<&ActorHealth> {
        self.actors.iter().find(|health| health.actor == actor)
    }

    /// Whether every child is running.
    pub fn all_running(&self) -> bool {
        self.actors
            .iter()
            .all(|health| health.state == ChildState::Running)
    }
}

/// The board the supervisor loop writes.
#[derive(Debug)]
pub(crate) struct HealthBoard {
    supervisor: String,
    rows: Mutex<Vec<Row>>,
}

#[derive(Debug)]
struct Row {
    health: ActorHealth,
    running_since: Option<Instant>,
}

impl HealthBoard {
    pub(crate) fn new(supervisor: &str, children: &[(String, RestartType)]) -> Self {
        let rows = children
            .iter()
            .map(|(actor, restart)| Row {
                health: ActorHealth {
                    actor: actor.clone(),
                    restart: *restart,
                    state: ChildState::Starting,
                    incarnation: 0,
                    restarts: 0,
                    last_failure: None,
                    last_failure_unix_ms: None,
                    uptime_ms: None,
                },
                running_since: None,
            })
            .collect();
        Self {
            supervisor: supervisor.to_owned(),
            rows: Mutex::new(rows),
        }
    }

    pub(crate) fn snapshot(&self) -> HealthReport {
        let rows = self.rows.lock();
        let actors = rows
            .iter()
            .map(|row| {
                let mut health = row.health.clone();
                health.uptime_ms = row
                    .running_since
                    .map(|since| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
                health
            })
            .collect();
        HealthReport {
            supervisor: self.supervisor.clone(),
            actors,
        }
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut Row)) {
        if let Some(row) = self.rows.lock().get_mut(index) {
            change(row);
        }
    }

    pub(crate) fn starting(&self, index: usize, incarnation: u64, restarts: u32) {
        self.update(index, |row| {
            row.health.state = ChildState::Starting;
            row.health.incarnation = incarnation;
            row.health.restarts = restarts;
            row.running_since = None;
        });
    }

    pub(crate) fn running(&self, index: usize) {
        self.update(index, |row| {
            row.health.state = ChildState::Running;
            row.running_since = Some(Instant::now());
        });
    }

    /// The current incarnation ended with `exit`; the child is now in `state`.
    pub(crate) fn exited(&self, index: usize, exit: &Exit, state: ChildState) {
        self.update(index, |row| {
            row.health.state = state;
            row.running_since = None;
            if exit.is_failure() {
                row.health.last_failure = Some(exit.to_string());
                row.health.last_failure_unix_ms = Some(crate::clock::now_ms());
            }
        });
    }

    pub(crate) fn state(&self, index: usize) -> Option<ChildState> {
        self.rows.lock().get(index).map(|row| row.health.state)
    }

    pub(crate) fn set_state(&self, index: usize, state: ChildState) {
        self.update(index, |row| {
            row.health.state = state;
            if state != ChildState::Running {
                row.running_since = None;
            }
        });
    }
}
