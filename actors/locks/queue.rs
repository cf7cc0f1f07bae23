//! Per-name wait queues of one process: waiters are served in arrival order. Only the head
//! of a queue tries the lock; a release (heard locally or through the release channel) wakes
//! the head.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// One waiter.
#[derive(Debug)]
struct Waiter {
    id: u64,
    notify: Notify,
}

/// The queues, shared by the [`Locks`](super::Locks) handles and the lock manager actor.
// A parking_lot mutex: held for a hash-map operation only, never across an await.
#[derive(Debug, Default)]
pub(crate) struct WaitQueues {
    queues: Mutex<HashMap<String, VecDeque<Arc<Waiter>>>>,
    next_id: AtomicU64,
}

impl WaitQueues {
    /// Joins the queue of `name` at its tail.
    pub(crate) fn enqueue(self: &Arc<Self>, name: &str) -> Ticket {
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
        });
        self.queues
            .lock()
            .entry(name.to_string())
            .or_default()
            .push_back(waiter.clone());
        Ticket {
            queues: self.clone(),
            name: name.to_string(),
            waiter,
            served: false,
        }
    }

    /// Wakes the head waiter of `name` (a permit is kept if it is not waiting yet).
    pub(crate) fn wake(&self, name: &str) {
        if let Some(head) = self.queues.lock().get(name).and_then(|q| q.front()) {
            head.notify.notify_one();
        }
    }

    /// The names somebody waits for.
    pub(crate) fn names(&self) -> Vec<String> {
        self.queues.lock().keys().cloned().collect()
    }

    /// Waiters in all queues, and queues.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let queues = self.queues.lock();
        (queues.values().map(VecDeque::len).sum(), queues.len())
    }

    fn leave(&self, name: &str, id: u64, wake_next: bool) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(name) else {
            return;
        };
        let was_head = queue.front().is_some_and(|w| w.id == id);
        queue.retain(|w| w.id != id);
        match queue.front() {
            None => {
                queues.remove(name);
            }
            Some(next) if was_head && wake_next => next.notify.notify_one(),
            Some(_) => {}
        }
    }
}

/// A place in a queue; leaving (drop) removes it. A waiter that gives up passes the turn on
/// to the next one; a served waiter does not (the next one waits for the release).
#[derive(Debug)]
pub(crate) struct Ticket {
    queues: Arc<WaitQueues>,
    name: String,
    waiter: Arc<Waiter>,
    served: bool,
}

impl Ticket {
    /// Whether this waiter is first in line.
    pub(crate) fn is_head(&self) -> bool {
        self.queues
            .queues
            .lock()
            .get(&self.name)
            .and_then(|q| q.front())
            .is_some_and(|w| w.id == self.waiter.id)
    }

    /// Resolves when this waiter is woken.
    pub(crate) async fn woken(&self) {
        self.waiter.notify.notified().await
    }

    /// The lock was acquired: leave without waking the next waiter.
    pub(crate) fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queues.leave(&self.name, self.waiter.id, !self.served);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_is_first_arrival_and_turn_passes_on() {
        let queues = Arc::new(WaitQueues::default());
        let a = queues.enqueue("n");
        let b = queues.enqueue("n");
        assert!(a.is_head() && !b.is_head());
        drop(a);
        assert!(b.is_head());
        // Giving up as head woke b: the permit is there.
        tokio::time::timeout(std::time::Duration::from_secs(1), b.woken())
            .await
            .unwrap();
        b.served();
        assert_eq!(queues.counts(), (0, 0));
    }
}
