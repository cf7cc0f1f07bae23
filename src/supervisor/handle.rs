//! [`ActorHandle`]: a stable address of a supervised actor that survives its restarts.
//!
//! A handle always reaches the current incarnation of its child. Each incarnation carries a
//! *fate* (alive, restarting, stopped) that the supervisor sets when the incarnation ends, so
//! a request never hangs on a dead actor: it resolves with [`CallError::ActorRestarted`] as
//! soon as the supervisor has seen the death, whether the actor panicked (actix then closes the
//! mailbox) or hung (the mailbox stays open, but the watchdog abandoned it).
//!
//! Requests in flight are counted per incarnation with the time they were sent: that table is
//! what the supervisor's watchdog reads to tell a hung actor from a busy one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::SendError;
use actix::{Actor, Addr, Context, Handler, Message};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::error::CallError;

/// What became of one incarnation, as set by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Running (or starting).
    Alive,
    /// Dead; a new incarnation will follow.
    Restarting,
    /// Dead for good.
    Stopped,
}

/// A stable address for one message type, whatever actor handles it: the type-erased
/// counterpart of [`ActorHandle`] (as actix's `Recipient` is of `Addr`), reaching the current
/// incarnation across restarts. Made with [`ActorHandle::recipient`]; cheap to clone.
pub struct HandleRecipient<M> {
    actor: Arc<str>,
    send: Arc<dyn Fn(M) -> Result<(), CallError> + Send + Sync>,
}

impl<M> Clone for HandleRecipient<M> {
    fn clone(&self) -> Self {
        Self {
            actor: Arc::clone(&self.actor),
            send: Arc::clone(&self.send),
        }
    }
}

impl<M> std::fmt::Debug for HandleRecipient<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleRecipient")
            .field("actor", &self.actor)
            .finish()
    }
}

impl<M> HandleRecipient<M> {
    /// Name of the child it reaches.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Delivers `msg` to the current incarnation without waiting, as
    /// [`ActorHandle::do_send`] does.
    pub fn do_send(&self, msg: M) -> Result<(), CallError> {
        (self.send)(msg)
    }
}

/// A stable, cloneable address of a supervised actor (see the module documentation).
pub struct ActorHandle<A: Actor> {
    shared: Arc<HandleShared<A>>,
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorHandle")
            .field("actor", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// State shared by every clone of a handle and by the supervisor.
pub(crate) struct HandleShared<A: Actor> {
    name: Arc<str>,
    current: RwLock<Option<Arc<Incarnation<A>>>>,
    closed: AtomicBool,
}

/// One running instance of a child.
pub(crate) struct Incarnation<A: Actor> {
    pub(crate) addr: Addr<A>,
    pub(crate) generation: u64,
    pub(crate) fate: watch::Receiver<Fate>,
    pub(crate) pending: PendingTable,
}

/// Requests sent to one incarnation and not answered yet, with the time each was sent.
#[derive(Debug, Default)]
pub(crate) struct PendingTable {
    inner: Mutex<PendingInner>,
}

#[derive(Debug, Default)]
struct PendingInner {
    next_id: u64,
    sent_at: BTreeMap<u64, Instant>,
}

/// Removes its request from the table when the request finishes or is cancelled.
struct PendingGuard<'a> {
    table: &'a PendingTable,
    id: u64,
}

impl PendingTable {
    fn track(&self) -> PendingGuard<'_> {
        let mut inner = self.inner.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.sent_at.insert(id, Instant::now());
        PendingGuard { table: self, id }
    }

    /// Age of the oldest unanswered request. Ids grow with time, so the first is the oldest.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        let inner = self.inner.lock();
        inner.sent_at.values().next().map(Instant::elapsed)
    }

    fn len(&self) -> usize {
        self.inner.lock().sent_at.len()
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.table.inner.lock().sent_at.remove(&self.id);
    }
}

impl<A: Actor> HandleShared<A> {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            current: RwLock::new(None),
            closed: AtomicBool::new(false),
        }
    }

    fn current(&self) -> Option<Arc<Incarnation<A>>> {
        self.current.read().clone()
    }

    /// Puts a new incarnation behind the handle.
    pub(crate) fn install(&self, incarnation: Incarnation<A>) {
        *self.current.write() = Some(Arc::new(incarnation));
    }

    /// Takes incarnation `generation` from behind the handle, if it is still the current one.
    pub(crate) fn detach(&self, generation: u64) {
        let mut current = self.current.write();
        if current
            .as_ref()
            .is_some_and(|inc| inc.generation == generation)
        {
            *current = None;
        }
    }

    /// The child is stopped for good: later requests fail with [`CallError::Stopped`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn oldest_pending(&self) -> Option<Duration> {
        self.current().and_then(|inc| inc.pending.oldest_age())
    }

    fn not_running(&self) -> CallError {
        let actor = self.name.to_string();
        if self.closed.load(Ordering::SeqCst) {
            CallError::Stopped { actor }
        } else {
            CallError::Unavailable { actor }
        }
    }

    fn died(&self, fate: Fate) -> CallError {
        let actor = self.name.to_string();
        match fate {
            Fate::Stopped => CallError::Stopped { actor },
            Fate::Alive | Fate::Restarting => CallError::ActorRestarted { actor },
        }
    }
}

/// Resolves once the incarnation is dead, with its fate. A supervisor that is gone (its task
/// dropped with the actor system) counts as stopped, so this never waits forever.
async fn death(mut fate: watch::Receiver<Fate>) -> Fate {
    match fate.wait_for(|fate| *fate != Fate::Alive).await {
        Ok(fate) => *fate,
        Err(_) => Fate::Stopped,
    }
}

impl<A> ActorHandle<A>
where
    A: Actor<Context = Context<A>>,
{
    pub(crate) fn from_shared(shared: Arc<HandleShared<A>>) -> Self {
        Self { shared }
    }

    /// Name of the child, as declared in its [`ChildSpec`](super::ChildSpec).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether an incarnation is currently behind the handle (it may be dying).
    pub fn is_running(&self) -> bool {
        self.shared
            .current()
            .is_some_and(|inc| *inc.fate.borrow() == Fate::Alive)
    }

    /// Requests sent through any clone of this handle to the current incarnation that have
    /// not been answered yet.
    pub fn pending(&self) -> usize {
        self.shared.current().map_or(0, |inc| inc.pending.len())
    }

    /// Sends `msg` to the current incarnation and waits for its reply.
    ///
    /// Waits while the actor's mailbox is full (actix's bounded mailbox). Fails with
    /// [`CallError::ActorRestarted`] when the actor dies while the request is queued or being
    /// handled, [`CallError::Unavailable`] while no incarnation runs (starting, or waiting for
    /// a restart; nothing was delivered), [`CallError::Stopped`] once it is stopped for good.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, CallError>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
        A::Context: ToEnvelope<A, M>,
    {
        let Some(incarnation) = self.shared.current() else {
            return Err(self.shared.not_running());
        };
        let fate = *incarnation.fate.borrow();
        if fate != Fate::Alive {
            return Err(self.shared.died(fate));
        }
        let _pending = incarnation.pending.track();
        let request = incarnation.addr.send(msg);
        tokio::select! {
            // A reply that is ready wins over a death noticed at the same moment.
            biased;
            reply = request => match reply {
                Ok(value) => Ok(value),
                // The mailbox closed: the actor died. Its guard has notified the supervisor,
                // which settles the fate promptly.
                Err(_) => Err(self.shared.died(death(incarnation.fate.clone()).await)),
            },
            fate = death(incarnation.fate.clone()) => Err(self.shared.died(fate)),
        }
    }

    /// A [`HandleRecipient`] of `M` through this handle: for a sender that must not know the
    /// actor's type.
    pub fn recipient<M>(&self) -> HandleRecipient<M>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
        A::Context: ToEnvelope<A, M>,
    {
        let handle = self.clone();
        HandleRecipient {
            actor: Arc::clone(&self.shared.name),
            send: Arc::new(move |msg| handle.do_send(msg)),
        }
    }

    /// Delivers `msg` to the current incarnation without waiting for a reply.
    ///
    /// Never waits: unlike actix's `do_send` it respects the mailbox bound and reports a full
    /// mailbox as [`CallError::MailboxFull`]. A message accepted here is lost if the actor
    /// dies before handling it.
    pub fn do_send<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
        A::Context: ToEnvelope<A, M>,
    {
        let Some(incarnation) = self.shared.current() else {
            return Err(self.shared.not_running());
        };
        match incarnation.addr.try_send(msg) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(CallError::MailboxFull {
                actor: self.shared.name.to_string(),
            }),
            Err(SendError::Closed(_)) => Err(CallError::Unavailable {
                actor: self.shared.name.to_string(),
            }),
        }
    }
}
