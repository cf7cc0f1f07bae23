//! Storage monitor: keeps the recent storage events (mode changes, resyncs) for the status
//! API and the dashboard, and tells the actors that care of each mode change.
//!
//! Owns an in-process ring of the last `KEEP` events with their times; reads the storage
//! handle's event channel; accepts `ListStorageEvents`; sends `StorageModeChanged` to the
//! recipients it was given (the admin inbox and the cache listener: both read again what they
//! may have missed once the storage is back on Redis). A recipient that is restarting misses
//! the event; each reads afresh when it starts. Holds nothing in Redis, so a restart starts
//! with an empty ring (events from before it are in the log).

use std::collections::VecDeque;

use actix::prelude::*;
use serde::Serialize;

use crate::clock::now_ms;
use crate::storage::{Mode, Storage, StorageEvent};
use crate::supervisor::HandleRecipient;

/// Events kept.
pub(crate) const KEEP: usize = 100;

/// A storage event and when it was seen (Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeenEvent {
    /// When the monitor received it.
    pub at_ms: u64,
    /// The event.
    pub event: StorageEvent,
}

/// Event: the storage's mode changed (sent by the storage monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub(crate) struct StorageModeChanged {
    /// The mode before.
    pub(crate) from: Mode,
    /// The mode now.
    pub(crate) to: Mode,
}

/// Query: the recent storage events, oldest first.
#[derive(Debug, Message)]
#[rtype(result = "Vec<SeenEvent>")]
pub(crate) struct ListStorageEvents;

/// Records storage events.
#[derive(Debug)]
pub(crate) struct StorageMonitor {
    storage: Storage,
    recent: VecDeque<SeenEvent>,
    tell: Vec<HandleRecipient<StorageModeChanged>>,
}

impl StorageMonitor {
    /// A monitor of `storage`'s events, telling `tell` of each mode change.
    pub fn new(storage: Storage, tell: Vec<HandleRecipient<StorageModeChanged>>) -> Self {
        Self {
            storage,
            recent: VecDeque::with_capacity(KEEP),
            tell,
        }
    }
}

impl Actor for StorageMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let events = self.storage.events();
        let stream = futures::stream::unfold(events, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        ctx.add_stream(stream);
    }
}

impl StreamHandler<StorageEvent> for StorageMonitor {
    fn handle(&mut self, event: StorageEvent, _: &mut Context<Self>) {
        if let StorageEvent::ModeChanged { from, to, .. } = &event {
            let changed = StorageModeChanged {
                from: *from,
                to: *to,
            };
            for recipient in &self.tell {
                if let Err(e) = recipient.do_send(changed) {
                    tracing::debug!(actor = "storage-monitor", to = recipient.actor(), error = %e, "mode change not told");
                }
            }
        }
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(SeenEvent {
            at_ms: now_ms(),
            event,
        });
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The storage is gone (shutdown): keep running until stopped by the supervisor.
    }
}

impl Handler<ListStorageEvents> for StorageMonitor {
    type Result = MessageResult<ListStorageEvents>;

    fn handle(&mut self, _: ListStorageEvents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.recent.iter().cloned().collect())
    }
}
