//! Orderly stop of a tree, at shutdown or after an escalation: children in reverse
//! declaration order, each within `stop_timeout_ms`; one that does not stop in time is
//! abandoned (its arbiter stopped, its thread left to finish on its own) and reported.

use std::time::{Duration, Instant};

use super::{exit_event, millis, Tree};
use crate::supervisor::child::Notice;
use crate::supervisor::error::Exit;
use crate::supervisor::events::SupervisionEvent;
use crate::supervisor::health::ChildState;
use crate::supervisor::report::{ChildStopReport, ShutdownReport, StopOutcome};

impl Tree {
    /// Stops the children in reverse order, each within `stop_timeout_ms`.
    pub(super) async fn stop_children(&mut self) -> ShutdownReport {
        let started = Instant::now();
        let stop_timeout = Duration::from_millis(self.settings.stop_timeout_ms);
        let mut children = Vec::with_capacity(self.children.len());
        for index in (0..self.children.len()).rev() {
            let began = Instant::now();
            self.children[index].restart_at = None;
            let generation = self.children[index].generation;
            let outcome = match self.children[index].live.as_mut() {
                None => {
                    self.children[index].child.close();
                    // Waiting for a restart, or never started (the start was aborted).
                    if matches!(
                        self.health.state(index),
                        Some(ChildState::Restarting | ChildState::Starting)
                    ) {
                        self.health.set_state(index, ChildState::Stopped);
                    }
                    StopOutcome::NotRunning
                }
                Some(live) => {
                    if let Some(stop) = live.stop.take() {
                        let _ = stop.send(());
                    }
                    if self
                        .await_exit(index, generation, began + stop_timeout)
                        .await
                    {
                        StopOutcome::Stopped
                    } else {
                        self.retire_arbiter(index);
                        self.bury(index, Exit::Normal);
                        self.emit(SupervisionEvent::ActorAbandoned {
                            actor: self.children[index].child.name().to_owned(),
                            waited_ms: millis(began.elapsed()),
                        });
                        StopOutcome::Abandoned
                    }
                }
            };
            children.push(ChildStopReport {
                actor: self.children[index].child.name().to_owned(),
                outcome,
                elapsed_ms: millis(began.elapsed()),
            });
        }
        for index in 0..self.children.len() {
            self.retire_arbiter(index);
        }
        ShutdownReport {
            children,
            elapsed_ms: millis(started.elapsed()),
        }
    }

    /// Waits until incarnation `generation` of child `index` has exited; exits of other
    /// children meanwhile are settled without restart.
    async fn await_exit(&mut self, index: usize, generation: u64, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            let notice = match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                Ok(Some(notice)) => notice,
                Ok(None) | Err(_) => return false,
            };
            match notice {
                Notice::Started {
                    index: i,
                    generation: g,
                } => self.on_started(i, g),
                Notice::Exited {
                    index: i,
                    generation: g,
                    exit,
                } if self.is_current(i, g) => {
                    if let Some(live) = self.take_live(i) {
                        let actor = self.children[i].child.name().to_owned();
                        self.emit(exit_event(&actor, &exit, false));
                        self.settle(i, live, &exit);
                    }
                    if i == index && g == generation {
                        return true;
                    }
                }
                Notice::Exited { .. } => {}
            }
        }
    }
}
