//! What a supervision tree reports when it stops: [`ShutdownReport`], one
//! [`ChildStopReport`] per child, in stop order.

use serde::Serialize;

/// What happened to each child at shutdown, in stop order (reverse declaration order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// One entry per child, in the order they were stopped.
    pub children: Vec<ChildStopReport>,
    /// Time the whole shutdown took.
    pub elapsed_ms: u64,
}

impl ShutdownReport {
    /// Names of the children in the order they were stopped.
    pub fn stop_order(&self) -> Vec<&str> {
        self.children
            .iter()
            .map(|child| child.actor.as_str())
            .collect()
    }

    /// Names of the children that did not stop in time and were abandoned.
    pub fn abandoned(&self) -> Vec<&str> {
        self.children
            .iter()
            .filter(|child| child.outcome == StopOutcome::Abandoned)
            .map(|child| child.actor.as_str())
            .collect()
    }
}

/// How one child ended at shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildStopReport {
    /// Name of the child.
    pub actor: String,
    /// What happened.
    pub outcome: StopOutcome,
    /// Time its stop took.
    pub elapsed_ms: u64,
}

/// Outcome of stopping one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It stopped within the deadline.
    Stopped,
    /// No incarnation was running (stopped earlier, or waiting for a restart).
    NotRunning,
    /// It did not stop within `stop_timeout_ms`: its arbiter was stopped and its thread left
    /// to finish on its own.
    Abandoned,
}
