//! Supervised tasks: the one way an actor starts the tokio tasks that do its work.
//!
//! actix sees a panic only when it happens inside the actor's own context (a handler, a timer
//! closure). Work that runs as a tokio task — a fetch loop, a worker, a subscription — would
//! otherwise die unseen while the tree still reports the actor `running`.
//! [`ChildContext::spawn_task`] spawns such a task and watches it from inside the actor's
//! context:
//!
//! - a **panic** of the task fails the actor as a panic ([`Exit::Panicked`]), with the panic
//!   message and the task's name;
//! - an **error** (`Err(e)` from a task whose output is a `Result`) fails the actor with `e`
//!   ([`Exit::Failed`]);
//! - an **unexpected return** (any end, `Ok` included, while the supervisor has not asked the
//!   actor to stop) fails the actor: the work of a supervised actor runs for as long as it
//!   lives.
//!
//! The failure is reported as [`ChildContext::fail`] does: the actor stops, the supervisor
//! logs and counts it and restarts the actor per its restart type, backoff and the tree's
//! intensity; the new incarnation spawns its tasks again in `started`. The watcher lives in
//! the actor's context, so when the actor stops (a normal stop, a failure, a panic of a
//! handler, an abandoned arbiter) the watcher is dropped and **aborts its task**: an actor's
//! tasks never outlive it. A task that ends after the supervisor asked the actor to stop (an
//! actor draining its work in `stopping()`) is a normal end.
//!
//! ```text
//!   actor context (arbiter thread)              runtime given (host runtime, usually)
//!   ┌──────────────────────────────┐            ┌─────────────────────────────┐
//!   │ TaskWatch ── JoinHandle ─────┼───────────▶│ the work (loop, subscription)│
//!   │  on end: panic / Err / return│◀───────────┤                             │
//!   │   → ChildContext::fail       │            └─────────────────────────────┘
//!   │  on drop: abort the task     │
//!   └──────────────────────────────┘
//! ```

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::fut::ActorFuture;
use actix::{Actor, AsyncContext, Context};
use tokio::task::{JoinError, JoinHandle};

use super::child::ChildContext;
use super::error::Exit;

/// What the end of a supervised task means. Implemented for `()`, [`Infallible`] and
/// `Result<T, E>` with a displayable `E`; the text names why the task ended.
pub trait TaskExit: Send + 'static {
    /// Why the task ended, as the actor's failure.
    fn describe(self) -> String;
}

impl TaskExit for () {
    fn describe(self) -> String {
        "returned unexpectedly".to_owned()
    }
}

impl TaskExit for Infallible {
    fn describe(self) -> String {
        match self {}
    }
}

impl<T: Send + 'static, E: Display + Send + 'static> TaskExit for Result<T, E> {
    fn describe(self) -> String {
        match self {
            Ok(_) => "returned unexpectedly".to_owned(),
            Err(e) => format!("failed: {e}"),
        }
    }
}

impl ChildContext {
    /// Spawns `work` on `runtime` as a task of this actor, named `task` in failures (see the
    /// module documentation): its panic, error or return fails the actor, and the actor's stop
    /// aborts it. Call it from `started` (or a handler) of the actor this context was given
    /// to; a restarted actor spawns its tasks again.
    pub fn spawn_task<A, F>(
        &self,
        ctx: &mut Context<A>,
        task: &str,
        runtime: &tokio::runtime::Handle,
        work: F,
    ) where
        A: Actor<Context = Context<A>>,
        F: Future + Send + 'static,
        F::Output: TaskExit,
    {
        let handle = runtime.spawn(work);
        ctx.spawn(TaskWatch {
            task: task.to_owned(),
            handle,
            child: self.clone(),
        });
    }
}

/// Watches one supervised task from inside its actor's context; aborts it when dropped.
struct TaskWatch<O> {
    task: String,
    handle: JoinHandle<O>,
    child: ChildContext,
}

impl<O> Drop for TaskWatch<O> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl<A, O> ActorFuture<A> for TaskWatch<O>
where
    A: Actor<Context = Context<A>>,
    O: TaskExit,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        _actor: &mut A,
        ctx: &mut Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        let ended = match Pin::new(&mut this.handle).poll(task) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(ended) => ended,
        };
        if this.child.stop_requested() {
            return Poll::Ready(());
        }
        let exit = match ended {
            Ok(output) => Exit::Failed(format!("task `{}` {}", this.task, output.describe())),
            Err(error) => join_failure(&this.task, error),
        };
        tracing::error!(actor = %this.child.actor(), task = %this.task, error = %exit, "supervised task ended");
        this.child.exit_with(ctx, exit);
        Poll::Ready(())
    }
}

/// A task that panicked (with its message) or was cancelled (its runtime shut down).
fn join_failure(task: &str, error: JoinError) -> Exit {
    if !error.is_panic() {
        return Exit::Failed(format!(
            "task `{task}` was cancelled (its runtime shut down)"
        ));
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    Exit::Panicked(format!("{message} (in task `{task}`)"))
}
