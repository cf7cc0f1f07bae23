//! Typed supervision events. Each is logged once by the supervisor loop through
//! [`SupervisionEvent::emit`] (INFO for a start or stop, WARN for a failure, a restart or an
//! abandoned actor, ERROR for an escalation, always with the field `actor`, and `error` where
//! there is one), and broadcast to subscribers of
//! [`Supervisor::subscribe`](super::Supervisor::subscribe).

use serde::Serialize;

use super::error::Exit;

/// Something that happened to a supervised child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SupervisionEvent {
    /// The first incarnation of a child is running.
    ActorStarted {
        /// Name of the child.
        actor: String,
    },
    /// An incarnation died of a failure.
    ActorFailed {
        /// Name of the child.
        actor: String,
        /// What it died of.
        error: Exit,
        /// Whether it will be restarted (subject to the restart intensity).
        will_restart: bool,
    },
    /// A new incarnation is running after a restart.
    ActorRestarted {
        /// Name of the child.
        actor: String,
        /// Number of the new incarnation.
        incarnation: u64,
        /// Restarts of this child so far.
        restarts: u32,
        /// Time from the death of the previous incarnation to this one running.
        downtime_ms: u64,
        /// What the previous incarnation ended with.
        error: Exit,
    },
    /// An incarnation stopped normally.
    ActorStopped {
        /// Name of the child.
        actor: String,
        /// Whether it will be restarted (permanent child).
        will_restart: bool,
    },
    /// An actor that did not stop within `stop_timeout_ms` at shutdown was abandoned (its
    /// arbiter stopped, its thread left to finish on its own).
    ActorAbandoned {
        /// Name of the child.
        actor: String,
        /// How long the supervisor waited.
        waited_ms: u64,
    },
    /// The restart intensity was exceeded: the tree stops.
    IntensityExceeded {
        /// The child whose exit crossed the limit.
        actor: String,
        /// What it died of.
        error: Exit,
        /// Restarts in the window, including the refused one.
        restarts: u32,
        /// Length of the window.
        within_secs: u64,
    },
}

impl SupervisionEvent {
    /// Name of the child the event is about.
    pub fn actor(&self) -> &str {
        match self {
            SupervisionEvent::ActorStarted { actor }
            | SupervisionEvent::ActorFailed { actor, .. }
            | SupervisionEvent::ActorRestarted { actor, .. }
            | SupervisionEvent::ActorStopped { actor, .. }
            | SupervisionEvent::ActorAbandoned { actor, .. }
            | SupervisionEvent::IntensityExceeded { actor, .. } => actor,
        }
    }

    /// Logs the event at its level.
    pub fn emit(&self) {
        match self {
            SupervisionEvent::ActorStarted { actor } => {
                tracing::info!(actor = %actor, "actor started");
            }
            SupervisionEvent::ActorFailed {
                actor,
                error,
                will_restart,
            } => {
                tracing::warn!(actor = %actor, error = %error, will_restart, "actor failed");
            }
            SupervisionEvent::ActorRestarted {
                actor,
                incarnation,
                restarts,
                downtime_ms,
                error,
            } => {
                tracing::warn!(actor = %actor, error = %error, incarnation, restarts, downtime_ms,
                    "actor restarted");
            }
            SupervisionEvent::ActorStopped {
                actor,
                will_restart,
            } => {
                tracing::info!(actor = %actor, will_restart, "actor stopped");
            }
            SupervisionEvent::ActorAbandoned { actor, waited_ms } => {
                tracing::warn!(actor = %actor, error = "did not stop in time", waited_ms,
                    "actor abandoned at shutdown");
            }
            SupervisionEvent::IntensityExceeded {
                actor,
                error,
                restarts,
                within_secs,
            } => {
                tracing::error!(actor = %actor, error = %error, restarts, within_secs,
                    "restart intensity exceeded, stopping the supervision tree");
            }
        }
    }
}
