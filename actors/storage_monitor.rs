//! Storage monitor: keeps the recent storage events (mode changes, resyncs) for the status
//! API and the dashboard.
//!
//! Owns an in-process ring of the last `KEEP` events with their times; reads the storage
//! handle's event channel; accepts `ListStorageEvents`. Holds nothing in Redis, so a restart
//! starts with an empty ring (events from before it are in the log).

use std::collections::VecDeque;

use actix::prelude::*;
use serde::Serialize;

use crate::clock::now_ms;
use crate::storage::{Storage, StorageEvent};

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

/// Query: the recent storage events, oldest first.
#[derive(Debug, Message)]
#[rtype(result = "Vec<SeenEvent>")]
pub(crate) struct ListStorageEvents;

/// Records storage events.
#[derive(Debug)]
pub(crate) struct StorageMonitor {
    storage: Storage,
    recent: VecDeque<SeenEvent>,
}

impl StorageMonitor {
    /// A monitor of `storage`'s events.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            recent: VecDeque::with_capacity(KEEP),
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
