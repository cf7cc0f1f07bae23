//! [`LockGuard`]: a held lock, its watchdog, and its release.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::queue::Grant;
use super::scripts::scripts;
use super::watchdog::Filed;
use super::{HeldLock, Holder, LockError, Shared};
use crate::clock::now_ms;

/// A held lock. While it lives a watchdog extends the lock every TTL/3; dropping it releases
/// the lock (in a background task); [`LockGuard::release`] releases it and says whether it was
/// still held. When the lock cannot be extended (Redis unreachable, or the lock expired and
/// was taken), the guard reports itself lost: [`LockGuard::is_lost`], [`LockGuard::lost`].
#[derive(Debug)]
pub struct LockGuard {
    name: String,
    token: String,
    fence: Option<u64>,
    handoffs: u32,
    lost: watch::Receiver<bool>,
    /// The TTL the watchdog renews: how long the lock outlives this guard at most.
    ttl: Duration,
    watchdog: Option<Filed>,
    shared: Arc<Shared>,
    released: bool,
}

impl LockGuard {
    /// A guard for a lock just acquired on Redis; files it with the watchdogs.
    pub(super) fn remote(
        shared: Arc<Shared>,
        name: &str,
        token: String,
        fence: u64,
        ttl: Duration,
        handoffs: u32,
    ) -> Self {
        shared.held.fetch_add(1, Ordering::Relaxed);
        shared.note_held(
            &token,
            HeldLock {
                name: name.to_owned(),
                holder: Holder::Guard,
                fence: Some(fence),
                expires_at_ms: Some(now_ms() + ttl.as_millis() as u64),
            },
        );
        let watchdog = shared.watchdogs.file(&shared, name, &token, ttl);
        Self {
            name: name.to_string(),
            token,
            fence: Some(fence),
            handoffs,
            lost: watchdog.watch().subscribe(),
            ttl,
            watchdog: Some(watchdog),
            shared,
            released: false,
        }
    }

    /// A guard for a process-local lock (granted during an outage with
    /// `locks.on_outage = "local"`). It has no fencing token and never expires.
    pub(super) fn local(shared: Arc<Shared>, name: &str, token: String) -> Self {
        shared.held.fetch_add(1, Ordering::Relaxed);
        shared.note_held(
            &token,
            HeldLock {
                name: name.to_owned(),
                holder: Holder::Local,
                fence: None,
                expires_at_ms: None,
            },
        );
        let (_tx, rx) = watch::channel(false);
        Self {
            name: name.to_string(),
            token,
            fence: None,
            handoffs: 0,
            lost: rx,
            ttl: Duration::ZERO,
            watchdog: None,
            shared,
            released: false,
        }
    }

    /// The lock's name (its Redis key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The random token the lock key holds while this guard holds it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fencing token: strictly increasing per lock name across processes (and across a
    /// Redis restart with persistence). Pass it to the protected resource so that it can
    /// refuse a stale holder. `None` for a process-local lock.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fence
    }

    /// Whether this is a process-local lock, granted while Redis was unreachable: it excludes
    /// the other tasks of this process only.
    pub fn is_local(&self) -> bool {
        self.fence.is_none()
    }

    /// Whether the lock was lost: it could not be extended (Redis unreachable, or it expired
    /// and is no longer ours). The protected work should stop.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lock is lost; pends forever while it is held.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        if rx.wait_for(|lost| *lost).await.is_err() {
            // The watchdog is gone without reporting a loss (local lock, or released):
            // the lock is never lost.
            std::future::pending::<()>().await;
        }
    }

    /// Releases the lock (compare-and-delete: only if it is still ours). `Ok(true)` when it
    /// was still held, `Ok(false)` when it had expired or belonged to someone else by then.
    pub async fn release(mut self) -> Result<bool, LockError> {
        self.released = true;
        if let Some(watchdog) = self.watchdog.take() {
            self.shared.watchdogs.end(&watchdog);
        }
        if !self.is_local() && self.handoffs < MAX_HANDOFFS {
            if let Some(released) =
                handoff(&self.shared, &self.name, &self.token, self.handoffs).await
            {
                return released;
            }
        }
        let yield_turn = self.handoffs >= MAX_HANDOFFS;
        release(
            &self.shared,
            &self.name,
            &self.token,
            self.is_local(),
            yield_turn,
        )
        .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Every guard is dropped exactly once, `release` included (it consumes the guard).
        self.shared.held.fetch_sub(1, Ordering::Relaxed);
        self.shared.note_released(&self.token);
        if let Some(watchdog) = self.watchdog.take() {
            self.shared.watchdogs.end(&watchdog);
        }
        if self.released {
            return;
        }
        let (shared, name, token, local) = (
            self.shared.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.token),
            self.is_local(),
        );
        if local {
            shared.release_local(&name, &token);
            return;
        }
        let (handoffs, ttl) = (self.handoffs, self.ttl);
        let task = async move {
            if handoffs < MAX_HANDOFFS {
                match handoff(&shared, &name, &token, handoffs).await {
                    None => {}
                    // An outage: release it for everyone once Redis is back (below).
                    Some(Err(LockError::Unavailable(_))) => {}
                    Some(Err(e)) => {
                        tracing::warn!(actor = "locks", key = %name, error = %e, "lock hand-over on drop failed; it expires with its ttl");
                        return;
                    }
                    Some(Ok(_)) => return,
                }
            }
            let yield_turn = handoffs >= MAX_HANDOFFS;
            if let Err(e) = release_unguarded(&shared, &name, &token, ttl, yield_turn).await {
                tracing::warn!(actor = "locks", key = %name, error = %e, "lock release on drop failed; it expires with its ttl");
            }
        };
        self.shared.spawn(task);
    }
}

/// Consecutive hand-overs inside one process before a lock is released for everyone: other
/// processes' waiters get a turn at least this often.
const MAX_HANDOFFS: u32 = 128;

/// Hands the lock to this process's head waiter of `name` in one script (compare-and-set to
/// the waiter's token, new fencing token). `None` when nobody waits here: release normally.
pub(super) async fn handoff(
    shared: &Arc<Shared>,
    name: &str,
    token: &str,
    handoffs: u32,
) -> Option<Result<bool, LockError>> {
    let waiter = shared.queues.head(name)?;
    let next = super::new_token();
    let fence_key = shared.fence_key(name);
    let ttl_ms = waiter.ttl_ms.to_string();
    let sent_at_ms = now_ms();
    let reply = shared
        .storage
        .eval_lock(
            &scripts().handoff,
            &[name, &fence_key],
            &[token, &next, &ttl_ms],
        )
        .await;
    let fence = match reply {
        Ok(reply) => reply.as_int(),
        Err(e) => {
            shared.queues.wake(name);
            return Some(Err(LockError::from_storage(e)));
        }
    };
    if fence <= 0 {
        // Not ours any more: nothing handed over; the waiter tries by itself.
        shared.queues.wake(name);
        return Some(Ok(false));
    }
    let grant = Grant {
        token: next,
        fence: fence as u64,
        handoffs: handoffs + 1,
        sent_at_ms,
    };
    if !waiter.deliver(grant.clone()) {
        // The waiter gave up meanwhile: release what it would have held.
        let ttl = Duration::from_millis(waiter.ttl_ms);
        if let Err(e) = release_unguarded(shared, name, &grant.token, ttl, false).await {
            tracing::warn!(actor = "locks", key = %name, error = %e, "release of an unclaimed hand-over failed; it expires with its ttl");
        }
    }
    Some(Ok(true))
}

/// The longest a release of a lock nobody guards keeps retrying (bounded by the lock's TTL
/// too): long enough to outlast a brief outage, short enough not to pile up tasks in a long
/// one.
const UNGUARDED_RETRY_FOR: Duration = Duration::from_secs(60);

/// Releases a lock nobody guards any more (its guard was dropped, its caller went away before
/// the acquisition answered, or a hand-over found its waiter gone). A release that meets an
/// outage is retried (every 50 ms, doubling to 1 s) until it goes through, the lock's `ttl`
/// has passed (it has expired by itself), or [`UNGUARDED_RETRY_FOR`]: otherwise a hiccup of
/// Redis would leave the lock held for its whole TTL. Retrying is safe: the release is a
/// compare-and-delete on the token.
pub(super) async fn release_unguarded(
    shared: &Shared,
    name: &str,
    token: &str,
    ttl: Duration,
    yield_turn: bool,
) -> Result<bool, LockError> {
    let give_up = std::time::Instant::now() + ttl.min(UNGUARDED_RETRY_FOR);
    let mut delay = Duration::from_millis(50);
    loop {
        match release(shared, name, token, false, yield_turn).await {
            Err(LockError::Unavailable(_)) if std::time::Instant::now() + delay < give_up => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// How long a holder that gave the lock up after [`MAX_HANDOFFS`] hand-overs keeps its own
/// waiters back, so that another process's waiter, woken by the release notice, can take it.
const YIELD: Duration = Duration::from_millis(1);

pub(super) async fn release(
    shared: &Shared,
    name: &str,
    token: &str,
    local: bool,
    yield_turn: bool,
) -> Result<bool, LockError> {
    if local {
        return Ok(shared.release_local(name, token));
    }
    let mut notice = String::with_capacity(shared.origin.len() + 1 + name.len());
    notice.push_str(&shared.origin);
    notice.push('\n');
    notice.push_str(name);
    let waiting_key = shared.storage.keys().lock_waiting(name);
    let reply = shared
        .release_batch
        .call(super::batch::Request {
            keys: vec![name.to_string(), waiting_key],
            args: vec![token.to_string(), notice],
        })
        .await;
    // Whatever happened, the head waiter of this process may try now; after a run of
    // hand-overs a moment later, the other processes' turn, if the release was announced
    // (2). Unannounced, no waiter had marked the name since the last release: no other
    // process waits (a waiter marks the name with every attempt that fails, for as long as
    // it may wait), and holding ours back would only leave the lock idle.
    if yield_turn && matches!(reply, Ok(2)) {
        shared.turns_yielded.fetch_add(1, Ordering::Relaxed);
        let (queues, name) = (shared.queues.clone(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(YIELD).await;
            queues.wake(&name);
        });
    } else {
        shared.queues.wake(name);
    }
    Ok(reply.map_err(LockError::from_storage)? >= 1)
}
