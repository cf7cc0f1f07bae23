//! Errors at the supervision boundary: why an actor exited ([`Exit`]), why the tree stopped
//! ([`SupervisorError`]) and why a call through an [`ActorHandle`](super::ActorHandle) got no
//! reply ([`CallError`]).

use std::fmt;

use serde::Serialize;

/// Why one incarnation of a supervised actor ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Exit {
    /// It stopped by itself (`ctx.stop()`) or was stopped by the supervisor.
    Normal,
    /// A handler, timer closure, factory or lifecycle method panicked; the panic message.
    Panicked(String),
    /// The actor reported a fatal error through [`ChildContext::fail`](super::ChildContext::fail).
    Failed(String),
    /// The watchdog saw a request pending for `pending_ms` with no reply (or the actor did
    /// not finish starting for that long); the actor was abandoned.
    Hung {
        /// Age of the oldest unanswered request (or of the start) when it was abandoned.
        pending_ms: u64,
    },
}

impl Exit {
    /// Whether this exit is a failure (anything but a normal stop).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Exit::Normal)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Normal => f.write_str("stopped normally"),
            Exit::Panicked(message) => write!(f, "panicked: {message}"),
            Exit::Failed(error) => write!(f, "reported a fatal error: {error}"),
            Exit::Hung { pending_ms } => {
                write!(f, "hung: no progress for {pending_ms} ms, abandoned")
            }
        }
    }
}

/// Why a supervision tree stopped or could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// More than `max_restarts` restarts happened within `within_secs`: the children were
    /// stopped in reverse order and the tree gave up.
    #[error(
        "actor `{actor}` exceeded the restart intensity ({restarts} restarts within \
         {within_secs} s); last failure: {last_failure}"
    )]
    IntensityExceeded {
        /// The child whose exit crossed the limit.
        actor: String,
        /// What that child's last incarnation died of.
        last_failure: Exit,
        /// Restarts counted in the window, including the refused one.
        restarts: u32,
        /// Length of the window.
        within_secs: u64,
    },
    /// A child failed, or did not finish starting, during the ordered start of the tree; the
    /// children started before it were stopped again in reverse order.
    #[error("actor `{actor}` failed to start: {error}")]
    StartFailed {
        /// The child that failed.
        actor: String,
        /// How it failed.
        error: Exit,
    },
    /// Two children of one tree have the same name.
    #[error("two children are named `{actor}`")]
    DuplicateChild {
        /// The repeated name.
        actor: String,
    },
    /// The [`ActorSystem`](super::ActorSystem) is not running (it was stopped, possibly
    /// under a running supervisor).
    #[error("the actor system is not running")]
    SystemStopped,
    /// An OS thread for the actor system or an arbiter could not be created.
    #[error("could not start a thread for {what}: {error}")]
    Thread {
        /// What the thread was for.
        what: String,
        /// The operating system's error.
        error: String,
    },
}

/// Why a request sent through an [`ActorHandle`](super::ActorHandle) got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The actor died (and is being restarted) while the request was in flight or queued. The
    /// request may or may not have been processed; requests sent after the restart succeed.
    #[error("actor `{actor}` died and is restarting; the request may not have been handled")]
    ActorRestarted {
        /// Name of the child.
        actor: String,
    },
    /// The actor is starting or waiting for its restart: the request was not delivered and
    /// can be retried.
    #[error("actor `{actor}` is not running yet (starting or restarting); request not delivered")]
    Unavailable {
        /// Name of the child.
        actor: String,
    },
    /// The actor's mailbox is full; returned by [`ActorHandle::do_send`](super::ActorHandle::do_send),
    /// which never waits.
    #[error("actor `{actor}` has a full mailbox; message not delivered")]
    MailboxFull {
        /// Name of the child.
        actor: String,
    },
    /// The actor is stopped for good (normal stop of a transient or temporary child, tree shut
    /// down or given up).
    #[error("actor `{actor}` is stopped")]
    Stopped {
        /// Name of the child.
        actor: String,
    },
}

impl CallError {
    /// Name of the child the request was addressed to.
    pub fn actor(&self) -> &str {
        match self {
            CallError::ActorRestarted { actor }
            | CallError::Unavailable { actor }
            | CallError::MailboxFull { actor }
            | CallError::Stopped { actor } => actor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_error_names_the_actor_and_its_last_failure() {
        let error = SupervisorError::IntensityExceeded {
            actor: "fetcher".into(),
            last_failure: Exit::Panicked("index out of bounds".into()),
            restarts: 6,
            within_secs: 10,
        };
        let text = error.to_string();
        assert!(text.contains("`fetcher`"), "{text}");
        assert!(text.contains("panicked: index out of bounds"), "{text}");
    }
}
