//! The `HistoryWriter` actor: runs the batch writer (`writer.rs`) as its supervised task, so
//! that a writer that panics, fails or returns fails the actor (reported, counted, restarted
//! per the tree's policy) instead of leaving records unwritten while health says all is well.
//!
//! The fleet declares it as the child `history` when `history.enabled` (no child otherwise),
//! before the producers (hazard ticker, scheduler): it starts before them and stops after
//! them. The restarted actor's writer takes the parts its predecessor handed back (see
//! `writer.rs`): the same bounded queue, spool and waiting batches.
//!
//! Stop: a stop the supervisor asked for tells the writer to hand its parts back after the
//! batch in hand, and waits for that up to the drain deadline (3/4 of
//! `supervisor.stop_timeout_ms`); the final drain of the queue is `History::close`'s, after
//! the tree stopped. A failure stops at once: the task is aborted and its drop hands the parts
//! back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;

use super::{writer, History};
use crate::supervisor::ChildContext;

/// Runs the history's batch writer as a supervised task on the host runtime.
pub(crate) struct HistoryWriter {
    history: History,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
    drain: Duration,
    draining: bool,
}

impl HistoryWriter {
    /// The writer actor of `history` (opened with `History::open_supervised`), its task on
    /// `runtime`; an orderly stop waits up to `drain` for the writer to hand its parts back.
    /// With a disabled history the actor idles.
    pub(crate) fn new(
        history: History,
        runtime: tokio::runtime::Handle,
        child: ChildContext,
        drain: Duration,
    ) -> Self {
        Self {
            history,
            runtime,
            child,
            drain,
            draining: false,
        }
    }
}

impl Actor for HistoryWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(inner) = self.history.inner.clone() else {
            return;
        };
        inner.handback.store(false, Ordering::Release);
        self.child
            .spawn_task(ctx, "writer", &self.runtime, writer::supervised(inner));
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        let inner = match &self.history.inner {
            Some(inner) if !self.draining && self.child.stop_requested() => inner.clone(),
            // A failure, or the hand-back is over: the task is aborted with the context.
            _ => return Running::Stop,
        };
        self.draining = true;
        inner.handback.store(true, Ordering::Release);
        inner.stop.notify_one();
        let until = tokio::time::Instant::now() + self.drain;
        let returned = self
            .runtime
            .spawn(async move { writer::handed_back(&inner, Some(until)).await });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(returned).map(|_, _, ctx| ctx.stop()));
        Running::Continue
    }
}
