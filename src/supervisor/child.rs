//! A supervised child: its declaration ([`ChildSpec`]), what each incarnation is given
//! ([`ChildContext`]), and how a death is detected without the actor's cooperation.
//!
//! Each incarnation is created with `Actor::start_in_arbiter`, and before the factory runs a
//! *lifeline* is spawned into its context. The lifeline tells the supervisor that the actor
//! has started (on its first poll, which comes after `started()`), stops the actor when the
//! supervisor asks, and owns a *death guard*. The guard is dropped only when the actor's
//! context is dropped: after a normal stop, when its arbiter shuts down, or during the unwind
//! of a panic in a handler, a timer closure, `started()` or the factory itself (tokio drops the
//! panicking task while unwinding). Its `Drop` reads `std::thread::panicking()`, the panic
//! message captured by the hook in [`super::panic`] and any failure reported through
//! [`ChildContext::fail`], and sends one exit notice. It never panics.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::fut::ActorFuture;
use actix::{Actor, ActorContext, AsyncContext, Context};
use actix_rt::ArbiterHandle;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::error::Exit;
use super::handle::{ActorHandle, Fate, HandleShared, Incarnation, PendingTable};
use super::panic;
use super::restart::RestartType;

/// Builds a fresh actor value for each incarnation.
type Factory<A> = dyn Fn(&ChildContext) -> A + Send + Sync + 'static;

/// Declaration of one child: its name, restart type and factory.
pub struct ChildSpec<A: Actor> {
    name: Arc<str>,
    restart: RestartType,
    factory: Arc<Factory<A>>,
}

impl<A: Actor> ChildSpec<A> {
    /// A permanent child named `name`, built by `factory` at each (re)start.
    ///
    /// The factory runs on the child's arbiter thread. It gets a [`ChildContext`] to keep if
    /// the actor reports fatal errors. State is rebuilt from scratch at every restart: an actor
    /// that mirrors state in storage reloads it in `started`.
    pub fn new<F>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(&ChildContext) -> A + Send + Sync + 'static,
    {
        Self {
            name: Arc::from(name.into()),
            restart: RestartType::Permanent,
            factory: Arc::new(factory),
        }
    }

    /// Sets the restart type (default [`RestartType::Permanent`]).
    pub fn restart(mut self, restart: RestartType) -> Self {
        self.restart = restart;
        self
    }
}

/// What the factory is handed for one incarnation: who it is, and a way to report a fatal
/// error. Cheap to clone; an actor may keep it in its state.
#[derive(Debug, Clone)]
pub struct ChildContext {
    actor: Arc<str>,
    incarnation: u64,
    restarts: u32,
    failure: Arc<Mutex<Option<Exit>>>,
    /// Set when the supervisor asked this incarnation to stop (an orderly stop of the tree).
    stop_requested: Arc<AtomicBool>,
}

impl ChildContext {
    /// Name of the child.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Number of this incarnation: 1 for the first start, then one more per restart.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Restarts of this child before this incarnation.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Whether the supervisor has asked this incarnation to stop: the tree is stopping and the
    /// actor's tasks may end without it being a failure.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire)
    }

    /// Reports a fatal error and stops the actor: the supervisor counts it as a failure and
    /// restarts the actor according to its restart type. The reply of the current handler
    /// (if any) is still delivered. Do not refuse the stop in `stopping()`.
    pub fn fail<C: ActorContext>(&self, ctx: &mut C, error: impl Display) {
        self.exit_with(ctx, Exit::Failed(error.to_string()));
    }

    /// Records how this incarnation ends (the first reason given wins) and stops it.
    pub(crate) fn exit_with<C: ActorContext>(&self, ctx: &mut C, exit: Exit) {
        let mut slot = self.failure.lock();
        if slot.is_none() {
            *slot = Some(exit);
        }
        drop(slot);
        ctx.stop();
    }
}

/// Sent by incarnations to their supervisor.
#[derive(Debug)]
pub(crate) enum Notice {
    /// The incarnation finished `started()`.
    Started { index: usize, generation: u64 },
    /// The incarnation's context is gone.
    Exited {
        index: usize,
        generation: u64,
        exit: Exit,
    },
}

/// What the supervisor gives a new incarnation.
pub(crate) struct Wiring {
    pub(crate) index: usize,
    pub(crate) generation: u64,
    pub(crate) restarts: u32,
    /// Unbounded on purpose: it carries at most two notices per incarnation (never requests),
    /// and a `Drop` during an unwind must not wait.
    pub(crate) notices: mpsc::UnboundedSender<Notice>,
    pub(crate) fate: watch::Receiver<Fate>,
    pub(crate) stop: oneshot::Receiver<()>,
}

/// A child with its actor type erased, as the supervisor loop sees it.
pub(crate) trait SupervisedChild: Send + Sync {
    /// Name of the child.
    fn name(&self) -> &str;
    /// Restart type.
    fn restart_type(&self) -> RestartType;
    /// Starts a new incarnation on `arbiter` and puts it behind the handle.
    fn spawn(&self, arbiter: &ArbiterHandle, wiring: Wiring);
    /// Takes incarnation `generation` from behind the handle.
    fn detach(&self, generation: u64);
    /// Marks the child stopped for good.
    fn close(&self);
    /// Age of the oldest request pending on the current incarnation.
    fn oldest_pending(&self) -> Option<Duration>;
}

/// The typed child: its spec and the state its handles share.
pub(crate) struct TypedChild<A: Actor> {
    spec: ChildSpec<A>,
    shared: Arc<HandleShared<A>>,
}

impl<A> TypedChild<A>
where
    A: Actor<Context = Context<A>>,
{
    /// The child and the first handle to it.
    pub(crate) fn new(spec: ChildSpec<A>) -> (Self, ActorHandle<A>) {
        let shared = Arc::new(HandleShared::new(Arc::clone(&spec.name)));
        let handle = ActorHandle::from_shared(Arc::clone(&shared));
        (Self { spec, shared }, handle)
    }
}

impl<A> SupervisedChild for TypedChild<A>
where
    A: Actor<Context = Context<A>>,
{
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn restart_type(&self) -> RestartType {
        self.spec.restart
    }

    fn spawn(&self, arbiter: &ArbiterHandle, wiring: Wiring) {
        let failure = Arc::new(Mutex::new(None));
        let stop_requested = Arc::new(AtomicBool::new(false));
        let child_context = ChildContext {
            actor: Arc::clone(&self.spec.name),
            incarnation: wiring.generation,
            restarts: wiring.restarts,
            failure: Arc::clone(&failure),
            stop_requested: Arc::clone(&stop_requested),
        };
        let lifeline = Lifeline {
            guard: DeathGuard {
                index: wiring.index,
                generation: wiring.generation,
                notices: wiring.notices,
                failure,
            },
            started: false,
            stop: Some(wiring.stop),
            stop_requested,
        };
        let factory = Arc::clone(&self.spec.factory);
        // If the arbiter is already gone the closure is dropped unrun; the lifeline inside it
        // then reports a normal exit, so the supervisor still hears about it.
        let addr = A::start_in_arbiter(arbiter, move |ctx: &mut Context<A>| {
            ctx.spawn(lifeline);
            factory(&child_context)
        });
        self.shared.install(Incarnation {
            addr,
            generation: wiring.generation,
            fate: wiring.fate,
            pending: PendingTable::default(),
        });
    }

    fn detach(&self, generation: u64) {
        self.shared.detach(generation);
    }

    fn close(&self) {
        self.shared.close();
    }

    fn oldest_pending(&self) -> Option<Duration> {
        self.shared.oldest_pending()
    }
}

/// Spawned into every incarnation's context (see the module documentation). Never completes,
/// so it lives exactly as long as the context.
struct Lifeline {
    guard: DeathGuard,
    started: bool,
    stop: Option<oneshot::Receiver<()>>,
    stop_requested: Arc<AtomicBool>,
}

impl<A> ActorFuture<A> for Lifeline
where
    A: Actor,
    A::Context: ActorContext,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        _actor: &mut A,
        ctx: &mut A::Context,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        if !this.started {
            this.started = true;
            let _ = this.guard.notices.send(Notice::Started {
                index: this.guard.index,
                generation: this.guard.generation,
            });
        }
        if let Some(stop) = this.stop.as_mut() {
            if let Poll::Ready(result) = Pin::new(stop).poll(task) {
                this.stop = None;
                // Ok: the supervisor asks for a stop. Err: it dropped the sender without
                // asking (it abandoned this incarnation), so there is nothing to do.
                if result.is_ok() {
                    this.stop_requested.store(true, Ordering::Release);
                    ctx.stop();
                }
            }
        }
        Poll::Pending
    }
}

/// Reports the end of an incarnation from its `Drop` (see the module documentation).
struct DeathGuard {
    index: usize,
    generation: u64,
    notices: mpsc::UnboundedSender<Notice>,
    failure: Arc<Mutex<Option<Exit>>>,
}

impl Drop for DeathGuard {
    fn drop(&mut self) {
        // Nothing in here may panic: during an unwind a second panic aborts the process.
        let exit = if std::thread::panicking() {
            Exit::Panicked(
                panic::take_last_panic()
                    .unwrap_or_else(|| "panicked (message not captured)".into()),
            )
        } else if let Some(exit) = self.failure.lock().take() {
            exit
        } else {
            Exit::Normal
        };
        let _ = self.notices.send(Notice::Exited {
            index: self.index,
            generation: self.generation,
            exit,
        });
    }
}
