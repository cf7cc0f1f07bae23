//! Per-name wait queues of one process: waiters are served in arrival order. Only the head
//! of a queue tries the lock; a release (heard locally or through the release channel) wakes
//! the head. A holder of this process may instead hand its lock to the head directly (one
//! script moves the lock to the head's token): the head then finds a [`Grant`] in its slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// Hashed on every acquisition: foldhash (seeded per process) rather than SipHash.
use foldhash::HashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A lock handed over to a waiter by the holder before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The waiter's token, now held by the lock key.
    pub(crate) token: String,
    /// Its fencing token.
    pub(crate) fence: u64,
    /// Consecutive in-process hand-overs so far (bounded, so other processes get a turn).
    pub(crate) handoffs: u32,
    /// Unix milliseconds just before the hand-over script was sent: the lock expires no
    /// earlier than this plus the waiter's TTL.
    pub(crate) sent_at_ms: u64,
}

#[derive(Debug)]
enum Slot {
    Waiting,
    Granted(Grant),
    Gone,
}

/// One waiter.
#[derive(Debug)]
pub(crate) struct Waiter {
    id: u64,
    /// The TTL the waiter asked for, ms.
    pub(crate) ttl_ms: u64,
    notify: Notify,
    // A parking_lot mutex: a state change under it, never an await.
    slot: Mutex<Slot>,
}

impl Waiter {
    /// Hands `grant` to this waiter; false (and nothing done) when it has given up.
    pub(crate) fn deliver(&self, grant: Grant) -> bool {
        let mut slot = self.slot.lock();
        if matches!(*slot, Slot::Waiting) {
            *slot = Slot::Granted(grant);
            drop(slot);
            self.notify.notify_one();
            true
        } else {
            false
        }
    }
}

/// Releases a hand-over (lock name, grant) nobody is left to take.
pub(crate) type OrphanRelease = Box<dyn Fn(&str, Grant) + Send + Sync>;

/// The queues, shared by the [`Locks`](super::Locks) handles and the lock manager actor.
// A parking_lot mutex: held for a hash-map operation only, never across an await.
#[derive(Default)]
pub(crate) struct WaitQueues {
    queues: Mutex<HashMap<String, VecDeque<Arc<Waiter>>>>,
    next_id: AtomicU64,
    /// Releases a hand-over that reached a waiter which then went away (its future dropped).
    on_orphan: std::sync::OnceLock<OrphanRelease>,
}

impl std::fmt::Debug for WaitQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitQueues")
            .field("queues", &self.queues)
            .finish()
    }
}

impl WaitQueues {
    /// Sets what releases an orphaned hand-over (once).
    pub(crate) fn set_on_orphan(&self, f: OrphanRelease) {
        let _ = self.on_orphan.set(f);
    }

    /// Joins the queue of `name` at its tail.
    pub(crate) fn enqueue(self: &Arc<Self>, name: &str, ttl_ms: u64) -> Ticket {
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ttl_ms,
            notify: Notify::new(),
            slot: Mutex::new(Slot::Waiting),
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

    /// The head waiter of `name`, if it still waits (a candidate for a hand-over).
    pub(crate) fn head(&self, name: &str) -> Option<Arc<Waiter>> {
        self.queues
            .lock()
            .get(name)
            .and_then(|q| q.front())
            .filter(|w| matches!(*w.slot.lock(), Slot::Waiting))
            .cloned()
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

    /// Whether nothing was handed over to this waiter (yet).
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(*self.waiter.slot.lock(), Slot::Waiting)
    }

    /// A lock handed over to this waiter, if any (taken once).
    pub(crate) fn take_grant(&self) -> Option<Grant> {
        let mut slot = self.waiter.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Waiting) {
            Slot::Granted(grant) => Some(grant),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Gives up: no hand-over is accepted from now on; one that arrived before is returned
    /// (the caller must release it).
    pub(crate) fn give_up(&self) -> Option<Grant> {
        match std::mem::replace(&mut *self.waiter.slot.lock(), Slot::Gone) {
            Slot::Granted(grant) => Some(grant),
            _ => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.served {
            // A hand-over arriving after this point is refused by `deliver` and released by
            // the giver; one that arrived before is released here.
            if let Some(grant) = self.give_up() {
                if let Some(release) = self.queues.on_orphan.get() {
                    release(&self.name, grant);
                }
            }
        }
        self.queues.leave(&self.name, self.waiter.id, !self.served);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_is_first_arrival_and_turn_passes_on() {
        let queues = Arc::new(WaitQueues::default());
        let a = queues.enqueue("n", 1_000);
        let b = queues.enqueue("n", 1_000);
        assert!(a.is_head() && !b.is_head());
        drop(a);
        assert!(b.is_head());
        // Giving up as head woke b: the permit is there.
        tokio::time::timeout(std::time::Duration::from_secs(1), b.woken())
            .await
            .unwrap();
        // A hand-over reaches the head once; after giving up none is accepted.
        let head = queues.head("n").unwrap();
        let grant = Grant {
            token: "t".into(),
            fence: 7,
            handoffs: 1,
            sent_at_ms: 0,
        };
        assert!(head.deliver(grant.clone()));
        assert_eq!(b.take_grant(), Some(grant.clone()));
        assert_eq!(b.take_grant(), None);
        assert!(b.give_up().is_none());
        assert!(!head.deliver(grant));
        b.served();
        assert_eq!(queues.counts(), (0, 0));
    }
}
