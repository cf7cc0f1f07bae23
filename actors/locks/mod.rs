//! Locks: distributed locks on Redis that are safe where the seed's `SET key "1" EX ttl NX` +
//! `DEL` is not.
//!
//! Owns: the lock keys, named exactly as given (`bet-lock:USER-AGENT`,
//! `wallet-retry-scheduler-lock`, ...) and holding the holder's random token, so that seed
//! clients and botfleet exclude each other; the fencing counters (`INTERNAL:lock-fence`, one
//! for every lock, raised once per script call; on a Cluster `INTERNAL:lock-fence:{TAG}`, one
//! per slot, TAG chosen to hash to the lock's slot so that one script touches a lock and its
//! counter; no expiry; each grant takes one more than the counter held and never below the
//! server's clock in microseconds, so tokens strictly increase even across a Redis that lost
//! the counter, see `scripts.rs`); the waiting marks (`INTERNAL:lock-waiting:{TAG}:NAME`); this process's wait queues
//! (arrival order) and the subscription to the release channel (`locks.release_channel`).
//!
//! The host calls the [`Locks`] handle (`Fleet::locks()`): [`Locks::try_acquire`],
//! [`Locks::acquire`], [`Locks::run_exclusive`]. For holders outside the process (the HTTP
//! API's clients, `botfleet lock run`) there is a lower level with no guard and no watchdog:
//! [`Locks::acquire_lease`] answers a [`LockLease`] (token, fencing token, expiry), which its
//! holder extends with [`Locks::extend_lease`] and releases with [`Locks::release_lease`], by
//! its token; a lease nobody extends expires at its TTL. Leases wait in the same queues as
//! guards, take hand-overs from this process's guards, and never become process-local
//! during an outage (they fail with [`LockError::Unavailable`]). Every acquisition, release and extension is
//! one Lua script round trip, run on Redis only (never on the fallback, never through the
//! outbox). A [`LockGuard`] extends its lock every TTL/3 on the host runtime (one timer for every
//! guard of the handle; a task of its own once it outlives its first third, see `watchdog.rs`)
//! and releases it when dropped; it never talks to the actor. The `LockManager` actor listens to
//! the release channel from a supervised task and wakes the head waiter of the released name
//! (its counters are read from the handle, [`Locks::stats`]). A waiter whose attempt fails
//! marks the name (in the acquire script), unless a guard or lease of this process holds it
//! (whose release wakes the waiter anyway: the handle counts its holders per name); a
//! release that finds the mark announces itself on the channel (`ORIGIN\nNAME`, in the
//! release script), so an uncontended release publishes nothing; it wakes this process's
//! waiters directly. When this process has a waiter
//! for the name, the holder instead hands the lock over in one script (compare-and-set to the
//! waiter's token, with a new fencing token), at most 128 times in a row; then it releases the
//! lock for everyone and, when the release was announced (a waiter, of this process or
//! another, marked the name since the last release), holds its own waiters back for 1 ms, so
//! other processes get a turn.
//!
//! Calls of one process share script calls: acquisitions (and releases) asked for while
//! [`SCRIPT_CALLS_IN_FLIGHT`] are in flight queue and go out together as one call of the same
//! script, split by hash slot on a Cluster; so do those asked for while a call made behind
//! another in flight gathers (it lets the tasks ready to run go first, off Cluster); an
//! acquisition whose caller left meanwhile is
//! released (`batch.rs`; [`LockStats::queued_calls`], [`LockStats::script_calls`],
//! [`LockStats::script_requests`]). The watchdog extends a lock every TTL/3; a failed
//! extension is retried, and the guard reports itself lost when Redis says the lock is not its
//! own, or when no extension has succeeded in time ([`LockStats::extension_retries`]).
//!
//! The scripts go out on the storage's lock lanes where it has them
//! ([`Storage::eval_lock`](crate::storage::Storage::eval_lock),
//! `storage.redis.lock_connections`): connections of their own that the calling task writes
//! and reads itself, with no hand-off to the Redis client's tasks; a call that finds no lane
//! free goes through the pool.
//!
//! Failure: lock scripts run through
//! [`Storage::eval_lock`](crate::storage::Storage::eval_lock), never on the fallback
//! and never through the outbox: a lock granted locally and replayed later would exclude
//! nobody. While Redis is unreachable `acquire` fails at once with [`LockError::Unavailable`]
//! (`locks.on_outage = "refuse"`) or grants a process-local lock (`"local"`: no fencing token,
//! it excludes this process's tasks only); a guard whose lock cannot be extended reports
//! itself lost. A release nobody waits for (a dropped guard, an acquisition whose caller left,
//! a hand-over whose waiter gave up) that meets an outage is retried every 50 ms, doubling to
//! 1 s, until it goes through or the lock's TTL (at most a minute) has passed: a hiccup of
//! Redis must not leave a lock held for its whole TTL, and a release is a compare-and-delete
//! on the token, so retrying is safe. The actor holds no state of its own: when it is
//! restarted it subscribes again and wakes every head waiter; notices published meanwhile are
//! missed, and waiters find the lock free on their next retry (`locks.retry_min_ms` ..
//! `retry_max_ms`, with jitter).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Locks`], `LockManager`, [`LockError`], [`LockStats`] |
//! | `guard.rs` | [`LockGuard`]: release, hand-over, the retried release of an unguarded lock |
//! | `queue.rs` | this process's wait queues, in arrival order |
//! | `batch.rs` | script calls shared by concurrent acquisitions and releases |
//! | `watchdog.rs` | one timer per handle; an extension task per guard that outlives TTL/3 |
//! | `scripts.rs` | the acquire, release, extend and hand-over scripts (Redis only) |

mod batch;
mod guard;
mod queue;
mod scripts;
mod watchdog;

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
// Lock names and tokens hashed on every acquisition and release: foldhash (seeded per
// process) instead of SipHash, about 2k instructions less per pair.
use foldhash::HashMap;
use rand::Rng;
use serde::Serialize;

pub use guard::LockGuard;
use queue::WaitQueues;
use scripts::scripts;

use crate::clock::now_ms;
use crate::settings::{LockOutage, LockSettings};
use crate::storage::{Mode, Reply, Script, Storage, StorageError};
use crate::supervisor::{fault, ChildContext};

/// Why a lock call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The name is empty or longer than `locks.max_name_bytes`. Nothing was written.
    #[error("invalid lock name: {0}")]
    InvalidName(String),
    /// The TTL is zero (under a millisecond) or longer than `locks.max_ttl_ms`. Nothing was
    /// written.
    #[error("invalid lock ttl of {ttl_ms} ms: {reason}")]
    InvalidTtl {
        /// The TTL given, in milliseconds.
        ttl_ms: u128,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis is unreachable and `locks.on_outage` is `"refuse"` (or the call met an outage
    /// mid-way: it may or may not have been applied; a lock so taken expires with its TTL).
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
    /// `acquire` waited its whole `wait` without getting the lock.
    #[error("lock {name} still held by another holder after {waited_ms} ms")]
    Timeout {
        /// The lock.
        name: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The lock was lost while [`Locks::run_exclusive`] ran its future (which was dropped).
    #[error("lock {name} lost while held: the protected work was stopped")]
    Lost {
        /// The lock.
        name: String,
    },
    /// A lease's token is not one this service hands out (32 lower-case hex digits). Nothing
    /// was written.
    #[error("invalid lock token: {0}")]
    InvalidToken(String),
    /// Redis refused a script (e.g. WRONGTYPE: the lock key holds another type).
    #[error(transparent)]
    Storage(StorageError),
}

impl LockError {
    fn from_storage(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(reason) => LockError::Unavailable(reason),
            other => LockError::Storage(other),
        }
    }
}

/// How often [`Shared::note_held`] sweeps expired leases (in leases noted).
const LEASE_SWEEP: usize = 256;

/// What this process holds now: each lock by its token, and how many holders each name has.
#[derive(Debug, Default)]
struct Holding {
    by_token: HashMap<String, HeldLock>,
    /// Holders per name, keyed by the name's hash so that noting a holder allocates no key
    /// (a collision only makes a waiter skip its waiting mark: see `Locks::wait_for`).
    per_name: HashMap<u64, u32>,
    hasher: foldhash::fast::RandomState,
}

impl Holding {
    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    fn insert(&mut self, token: String, lock: HeldLock) {
        let hash = self.hash(&lock.name);
        if let Some(old) = self.by_token.insert(token, lock) {
            // The same token noted again (a lease re-noted): count it once.
            self.forget_name(&old.name);
        }
        *self.per_name.entry(hash).or_default() += 1;
    }

    fn remove(&mut self, token: &str) {
        if let Some(old) = self.by_token.remove(token) {
            self.forget_name(&old.name);
        }
    }

    /// Drops the leases whose TTL has passed.
    fn sweep(&mut self, now: u64) {
        let Holding {
            by_token,
            per_name,
            hasher,
        } = self;
        by_token.retain(|_, held| {
            let live = held.expires_at_ms.is_none_or(|at| at > now);
            if !live {
                uncount(per_name, hasher.hash_one(held.name.as_str()));
            }
            live
        });
    }

    fn forget_name(&mut self, name: &str) {
        let hash = self.hash(name);
        uncount(&mut self.per_name, hash);
    }
}

/// One holder fewer for the name of hash `hash`.
fn uncount(per_name: &mut HashMap<u64, u32>, hash: u64) {
    if let Some(n) = per_name.get_mut(&hash) {
        *n -= 1;
        if *n == 0 {
            per_name.remove(&hash);
        }
    }
}

/// What the lock handles of one process share.
#[derive(Debug)]
pub(crate) struct Shared {
    storage: Storage,
    settings: LockSettings,
    /// A random id of this process's lock handle: notices it published itself are ignored.
    origin: String,
    queues: Arc<WaitQueues>,
    /// Process-local locks granted during an outage: name → token.
    // A parking_lot mutex: a map operation under it, never an await.
    local: parking_lot::Mutex<HashMap<String, String>>,
    notices: AtomicU64,
    /// Watchdog extensions that failed and were retried (see `watchdog::extend_while_held`).
    pub(super) extension_retries: AtomicU64,
    /// Releases that held this process's waiters back after a run of hand-overs, for another
    /// process's waiter (see `guard::release`).
    pub(super) turns_yielded: AtomicU64,
    /// Guards of this process not yet released or dropped.
    held: AtomicUsize,
    /// What this process holds now, by token: its guards, and the leases it handed out
    /// (`GET /api/locks/held`). Leases left to expire are dropped once their TTL has passed.
    // A parking_lot mutex: a map operation under it, never an await.
    holding: parking_lot::Mutex<Holding>,
    runtime: Option<tokio::runtime::Handle>,
    /// Acquisitions and releases in flight together go out as one script call.
    acquire_batch: Arc<batch::Batcher>,
    release_batch: Arc<batch::Batcher>,
    /// What extends the locks of this process's guards.
    watchdogs: watchdog::Watchdogs,
}

impl Shared {
    /// Spawns `task` on the current runtime, or else the one the lock handle was made on;
    /// `None` outside both (a guard dropped after shutdown: its lock expires with its TTL).
    fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle.spawn(task)),
            Err(_) => self.runtime.as_ref().map(|handle| handle.spawn(task)),
        }
    }

    /// The fencing counter and the waiting mark of `name` (the counter: [`Shared::fence_key`]).
    pub(super) fn lock_keys(&self, name: &str) -> (String, String) {
        if self.storage.is_clustered() {
            // Both in the lock's slot: its tag computed once.
            self.storage.keys().lock_keys(name)
        } else {
            (self.fence_key(name), self.storage.keys().lock_waiting(name))
        }
    }

    /// The fencing counter of `name`: the one of every lock
    /// ([`KeySchema::lock_fence_shared`]) off a Cluster, so that a script call granting
    /// several locks raises one counter once; on a Cluster the lock's slot's
    /// ([`KeySchema::lock_fence`]), the only one a script may touch with the lock.
    ///
    /// [`KeySchema::lock_fence_shared`]: crate::storage::KeySchema::lock_fence_shared
    /// [`KeySchema::lock_fence`]: crate::storage::KeySchema::lock_fence
    pub(super) fn fence_key(&self, name: &str) -> String {
        let keys = self.storage.keys();
        if self.storage.is_clustered() {
            keys.lock_fence(name)
        } else {
            keys.lock_fence_shared()
        }
    }

    /// Notes that this process holds `name` with `token`.
    pub(super) fn note_held(&self, token: &str, lock: HeldLock) {
        let mut holding = self.holding.lock();
        // Guards leave the map when dropped; a lease its holder left to expire stays until a
        // sweep, every `LEASE_SWEEP`th lease noted, drops those past their TTL: the map stays
        // bounded by what is held, at an amortized constant cost per acquisition.
        if lock.holder == Holder::Lease && holding.by_token.len() % LEASE_SWEEP == LEASE_SWEEP - 1 {
            holding.sweep(now_ms());
        }
        holding.insert(token.to_owned(), lock);
    }

    /// Notes that the lock held with `token` now expires at `expires_at_ms`.
    pub(super) fn note_extended(&self, token: &str, expires_at_ms: u64) {
        if let Some(held) = self.holding.lock().by_token.get_mut(token) {
            held.expires_at_ms = Some(expires_at_ms);
        }
    }

    /// Notes that the lock held with `token` is no longer held.
    pub(super) fn note_released(&self, token: &str) {
        self.holding.lock().remove(token);
    }

    /// Whether a guard or a lease of this process holds `name` now (as far as this process
    /// knows: a lease left to expire counts until a sweep drops it).
    pub(super) fn holds(&self, name: &str) -> bool {
        let holding = self.holding.lock();
        !holding.per_name.is_empty() && holding.per_name.contains_key(&holding.hash(name))
    }

    fn release_local(&self, name: &str, token: &str) -> bool {
        let released = {
            let mut local = self.local.lock();
            if local.get(name).is_some_and(|t| t == token) {
                local.remove(name);
                true
            } else {
                false
            }
        };
        self.queues.wake(name);
        released
    }
}

/// Acquire (or release) script calls a process sends at once; calls beyond that queue and go
/// out together as one call when a slot frees up.
pub const SCRIPT_CALLS_IN_FLIGHT: usize = batch::MAX_IN_FLIGHT;

/// The lock API: a cheap, cloneable handle (`Fleet::locks()`).
#[derive(Debug, Clone)]
pub struct Locks {
    shared: Arc<Shared>,
}

impl Locks {
    /// A lock handle over `storage`. Without a `LockManager` (which the `Fleet` starts)
    /// waiters are not woken by other processes' releases, only by retries.
    pub fn new(storage: Storage, settings: LockSettings) -> Self {
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            // An acquisition whose caller was gone when it succeeded, or whose call failed
            // after it may have run: release it (compare-and-delete on its token).
            let weak = weak.clone();
            let orphan: batch::Orphan = Box::new(move |request: batch::Request, fence: i64| {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if fence <= 0 {
                    return;
                }
                let (name, token) = (request.keys[0].clone(), request.args[0].clone());
                // ARGV per request: token, ttl ms, mark ms.
                let ttl_ms = request
                    .args
                    .get(1)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                tokio::spawn(async move {
                    let ttl = Duration::from_millis(ttl_ms);
                    if let Err(e) =
                        guard::release_unguarded(&shared, &name, &token, ttl, false).await
                    {
                        tracing::warn!(actor = "locks", key = %name, error = %e, "release of an acquisition whose caller is gone failed; it expires with its ttl");
                    }
                });
            });
            let channel = settings.release_channel.clone();
            Shared {
                acquire_batch: batch::Batcher::new(
                    storage.clone(),
                    &scripts().acquire,
                    Vec::new(),
                    Some(orphan),
                ),
                release_batch: batch::Batcher::new(
                    storage.clone(),
                    &scripts().release,
                    vec![channel],
                    None,
                ),
                storage,
                settings,
                origin: format!("{:016x}", rand::random::<u64>()),
                queues: Arc::new(WaitQueues::default()),
                local: parking_lot::Mutex::new(HashMap::default()),
                notices: AtomicU64::new(0),
                extension_retries: AtomicU64::new(0),
                turns_yielded: AtomicU64::new(0),
                held: AtomicUsize::new(0),
                holding: parking_lot::Mutex::new(Holding::default()),
                runtime: tokio::runtime::Handle::try_current().ok(),
                watchdogs: watchdog::Watchdogs::default(),
            }
        });
        let locks = Self { shared };
        // A hand-over that reached a waiter whose future was dropped: release it (weakly
        // held: the queues belong to the shared state).
        let weak = Arc::downgrade(&locks.shared);
        locks
            .shared
            .queues
            .set_on_orphan(Box::new(move |name: &str, grant: queue::Grant| {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let name = name.to_string();
                let holder = shared.clone();
                let task = async move {
                    let guard = LockGuard::remote(
                        holder,
                        &name,
                        grant.token,
                        grant.fence,
                        Duration::from_secs(1),
                        grant.handoffs,
                    );
                    let _ = guard.release().await;
                };
                shared.spawn(task);
            }));
        locks
    }

    /// One uncontended acquire-then-release of `name`, bare: the acquire script and the
    /// release script called back to back through the storage, with no wait queue, batcher,
    /// guard or watchdog around them. `botfleet bench locks` reports it as the floor the lock
    /// API is measured against; hosts take locks with [`Locks::acquire`] and its siblings.
    pub async fn bare_pair(&self, name: &str, ttl: Duration) -> Result<(), LockError> {
        self.bare_pairs(&[name], ttl).await.map(|_| ())
    }

    /// [`Locks::bare_pair`] for several names at once: one acquire call for all of them (the
    /// per-request layout the batcher sends), then one release call. On a Cluster the names
    /// must share a slot. `Ok(false)` when a name was not free or not released (it was held
    /// by someone else); what was granted is released either way. For `botfleet bench
    /// locks`, which measures what such calls cost the server.
    pub async fn bare_pairs(&self, names: &[&str], ttl: Duration) -> Result<bool, LockError> {
        if names.is_empty() {
            return Ok(true);
        }
        let storage = &self.shared.storage;
        let [acquire, release] = self.bare_layout(names, ttl);
        let granted = storage
            .eval_lock(&scripts().acquire, &strs(&acquire.0), &strs(&acquire.1))
            .await
            .map_err(LockError::from_storage)?;
        let released = storage
            .eval_lock(&scripts().release, &strs(&release.0), &strs(&release.1))
            .await
            .map_err(LockError::from_storage)?;
        // A call of one request answers its integer, of several an array.
        let all = |reply: &Reply, ok: fn(i64) -> bool| match reply {
            Reply::Array(items) => {
                items.len() == names.len() && items.iter().all(|r| ok(r.as_int()))
            }
            one => names.len() == 1 && ok(one.as_int()),
        };
        Ok(all(&granted, |fence| fence > 0) && all(&released, |r| r == 1))
    }

    /// The keys and arguments of the acquire call, then of the release call, of
    /// [`Locks::bare_pairs`] for `names`, each under a new token: the per-request layout the
    /// batcher sends.
    fn bare_layout(&self, names: &[&str], ttl: Duration) -> [(Vec<String>, Vec<String>); 2] {
        let ttl_ms = ttl.as_millis().to_string();
        let mut acquire = (Vec::with_capacity(names.len() * 3), Vec::new());
        let mut release = (Vec::with_capacity(names.len() * 2), Vec::new());
        release.1.push(self.shared.settings.release_channel.clone());
        for name in names {
            let token = new_token();
            let (fence_key, waiting_key) = self.shared.lock_keys(name);
            acquire
                .0
                .extend([name.to_string(), fence_key, waiting_key.clone()]);
            acquire
                .1
                .extend([token.clone(), ttl_ms.clone(), "0".to_string()]);
            release.0.extend([name.to_string(), waiting_key]);
            release.1.extend([token, "-".to_string()]);
        }
        [acquire, release]
    }

    /// What one [`Locks::bare_pair`] of `name` sends, as a client of its own would send it:
    /// `EVALSHA` of the acquire script, then of the release script, with their keys and
    /// arguments under a new token. The scripts must be in the server's script cache first
    /// ([`Locks::bare_pair_scripts`]). For `botfleet bench locks`, which sends them over a
    /// bare socket to tell what the Redis client costs from what the scripts cost; hosts take
    /// locks with [`Locks::acquire`] and its siblings.
    pub fn bare_pair_commands(&self, name: &str, ttl: Duration) -> [Vec<String>; 2] {
        let [acquire, release] = self.bare_layout(&[name], ttl);
        let evalsha = |script: &Script, (keys, args): (Vec<String>, Vec<String>)| {
            let mut command = vec![
                "EVALSHA".to_string(),
                script.sha().to_string(),
                keys.len().to_string(),
            ];
            command.extend(keys);
            command.extend(args);
            command
        };
        let scripts = scripts();
        [
            evalsha(&scripts.acquire, acquire),
            evalsha(&scripts.release, release),
        ]
    }

    /// The Lua source of the acquire and release scripts that [`Locks::bare_pair_commands`]
    /// calls, for `SCRIPT LOAD` (whose answer is the SHA-1 those commands name).
    pub fn bare_pair_scripts() -> [&'static str; 2] {
        let scripts = scripts();
        [scripts.acquire.lua(), scripts.release.lua()]
    }

    /// `n` extensions of one lock, bare, timed for `botfleet bench locks`: the acquire
    /// script, then the extension `n` times back to back (the watchdog's call), then the
    /// release; no guard or watchdog around them. `Ok(false)` when the lock was held by
    /// someone else (nothing extended).
    pub async fn bare_extensions(
        &self,
        name: &str,
        ttl: Duration,
        n: usize,
    ) -> Result<bool, LockError> {
        let storage = &self.shared.storage;
        let token = new_token();
        let (fence_key, waiting_key) = self.shared.lock_keys(name);
        let ttl_ms = ttl.as_millis().to_string();
        let fence = storage
            .eval_lock(
                &scripts().acquire,
                &[name, &fence_key, &waiting_key],
                &[&token, &ttl_ms, "0"],
            )
            .await
            .map_err(LockError::from_storage)?;
        if batch::first_answer(&fence) == 0 {
            return Ok(false);
        }
        for _ in 0..n {
            storage
                .eval_lock(&scripts().extend, &[name], &[&token, &ttl_ms])
                .await
                .map_err(LockError::from_storage)?;
        }
        storage
            .eval_lock(
                &scripts().release,
                &[name, &waiting_key],
                &[&self.shared.settings.release_channel, &token, "-"],
            )
            .await
            .map_err(LockError::from_storage)?;
        Ok(true)
    }

    /// The settings in use.
    pub fn settings(&self) -> &LockSettings {
        &self.shared.settings
    }

    /// Tries once, without waiting: `Ok(None)` when another holder has the lock.
    pub async fn try_acquire(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.validate(name, ttl)?;
        self.attempt(name, ttl, 0).await
    }

    /// Acquires `name` for `ttl` (extended by the guard's watchdog while it lives), waiting up
    /// to `wait`. Waiters of this process are served in arrival order; they are woken by
    /// release notices, and retry after a random `locks.retry_min_ms`..`retry_max_ms` in case
    /// a notice is missed or the lock expires instead.
    pub async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        self.validate(name, ttl)?;
        self.wait_for(
            name,
            ttl,
            wait,
            |mark_ms| self.attempt(name, ttl, mark_ms),
            |grant| {
                LockGuard::remote(
                    self.shared.clone(),
                    name,
                    grant.token,
                    grant.fence,
                    ttl,
                    grant.handoffs,
                )
            },
        )
        .await
    }

    /// Acquires `name` for `ttl` with no guard and no watchdog, waiting up to `wait` (in
    /// the same queue as [`Locks::acquire`]'s waiters): the holder keeps it with
    /// [`Locks::extend_lease`] and gives it back with [`Locks::release_lease`], by its token.
    /// A lease nobody extends expires at its TTL. This is what the HTTP API hands out, for
    /// holders in other processes and languages.
    ///
    /// Unlike [`Locks::acquire`], a lease is never process-local: while Redis is unreachable
    /// it fails with [`LockError::Unavailable`] whatever `locks.on_outage` says. Not had
    /// within `wait`: [`LockError::Timeout`].
    pub async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockLease, LockError> {
        self.validate(name, ttl)?;
        let ttl_ms = ttl.as_millis() as u64;
        let lease = self
            .wait_for(
                name,
                ttl,
                wait,
                |mark_ms| async move {
                    let held = self.attempt_on_redis(name, ttl, mark_ms).await?;
                    Ok(held.map(|(token, fence, sent_at_ms)| LockLease {
                        name: name.to_string(),
                        token,
                        fence,
                        expires_at_ms: sent_at_ms + ttl_ms,
                    }))
                },
                |grant| LockLease {
                    name: name.to_string(),
                    token: grant.token,
                    fence: grant.fence,
                    expires_at_ms: grant.sent_at_ms + ttl_ms,
                },
            )
            .await?;
        self.shared.note_held(
            &lease.token,
            HeldLock {
                name: lease.name.clone(),
                holder: Holder::Lease,
                fence: Some(lease.fence),
                expires_at_ms: Some(lease.expires_at_ms),
            },
        );
        Ok(lease)
    }

    /// Extends the lease of `name` held with `token` to `ttl` from now (compare-and-extend
    /// on the token): `Ok(Some(expires_at_ms))`, or `Ok(None)` when the token no longer holds
    /// the lock (it expired, was released, or another holder has it). Fails with
    /// [`LockError::Unavailable`] while Redis is unreachable.
    pub async fn extend_lease(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        self.validate(name, ttl)?;
        validate_token(token)?;
        let ttl_ms = ttl.as_millis() as u64;
        let sent_at_ms = now_ms();
        let reply = self
            .shared
            .storage
            .eval_lock(&scripts().extend, &[name], &[token, &ttl_ms.to_string()])
            .await
            .map_err(LockError::from_storage)?;
        let extended = (reply.as_int() == 1).then_some(sent_at_ms + ttl_ms);
        match extended {
            Some(at) => self.shared.note_extended(token, at),
            None => self.shared.note_released(token),
        }
        Ok(extended)
    }

    /// Releases the lease of `name` held with `token` (compare-and-delete on the token):
    /// `Ok(true)` when it was still held by it, `Ok(false)` when not (nothing changed). Wakes
    /// this process's waiters and, when other processes wait, announces the release. Fails
    /// with [`LockError::Unavailable`] while Redis is unreachable (the lock then expires at
    /// its TTL unless released later).
    pub async fn release_lease(&self, name: &str, token: &str) -> Result<bool, LockError> {
        self.validate_name(name)?;
        validate_token(token)?;
        let released = guard::release(&self.shared, name, token, false, false).await?;
        self.shared.note_released(token);
        Ok(released)
    }

    /// Waits in `name`'s queue until `attempt` (called as the head, with how long to mark the
    /// name as waited for) gets the lock, a holder of this process hands it over (`granted`
    /// turns the hand-over into what is held), or `wait` runs out.
    async fn wait_for<T, A, Fut>(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
        mut attempt: A,
        granted: impl Fn(queue::Grant) -> T,
    ) -> Result<T, LockError>
    where
        A: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<Option<T>, LockError>>,
    {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let ticket = self.shared.queues.enqueue(name, ttl.as_millis() as u64);
        let (min, max) = (
            self.shared.settings.retry_min_ms,
            self.shared
                .settings
                .retry_max_ms
                .max(self.shared.settings.retry_min_ms),
        );
        loop {
            // A holder of this process may have handed the lock over (see `guard::handoff`).
            if let Some(grant) = ticket.take_grant() {
                ticket.served();
                return Ok(granted(grant));
            }
            let head = ticket.is_head();
            if head {
                // A failed attempt marks the name for as long as this waiter may still wait,
                // so that its release is announced on the channel; not while a holder of this
                // process has it, whose release wakes this queue anyway (a mark would make
                // that holder's run of hand-overs end by yielding a turn to nobody).
                let mark_ms = if self.shared.holds(name) {
                    0
                } else {
                    deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_millis()
                        .max(1) as u64
                };
                if let Some(held) = attempt(mark_ms).await? {
                    ticket.served();
                    return Ok(held);
                }
            }
            if tokio::time::Instant::now() >= deadline && ticket.is_waiting() {
                return Err(LockError::Timeout {
                    name: name.to_string(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            // The head retries after a jittered delay (the safety net); the others wait for
            // their turn.
            let retry = if head {
                tokio::time::Instant::now()
                    + Duration::from_millis(rand::thread_rng().gen_range(min..=max))
            } else {
                deadline
            };
            tokio::select! {
                _ = ticket.woken() => {}
                _ = tokio::time::sleep_until(retry.min(deadline)) => {}
            }
        }
    }

    /// Runs `work` while holding `name`, for jobs that one process of the fleet must run at a
    /// time (`wallet-retry-scheduler-lock`, `bet-cleanup-lock`): `Ok(None)` without running it
    /// when another holder has the lock. If the lock is lost while `work` runs, `work` is
    /// dropped and [`LockError::Lost`] returned. The lock is released afterwards.
    pub async fn run_exclusive<F, T>(
        &self,
        name: &str,
        ttl: Duration,
        work: F,
    ) -> Result<Option<T>, LockError>
    where
        F: Future<Output = T>,
    {
        let Some(guard) = self.try_acquire(name, ttl).await? else {
            return Ok(None);
        };
        let outcome = tokio::select! {
            out = work => Some(out),
            _ = guard.lost() => None,
        };
        match outcome {
            Some(out) => {
                // The work is done; a failed release only leaves the lock to its TTL.
                if let Err(e) = guard.release().await {
                    tracing::warn!(actor = "locks", key = %name, error = %e, "release after exclusive run failed; the lock expires with its ttl");
                }
                Ok(Some(out))
            }
            None => Err(LockError::Lost {
                name: name.to_string(),
            }),
        }
    }

    fn validate(&self, name: &str, ttl: Duration) -> Result<(), LockError> {
        self.validate_name(name)?;
        let settings = &self.shared.settings;
        let ttl_ms = ttl.as_millis();
        if ttl_ms == 0 {
            return Err(LockError::InvalidTtl {
                ttl_ms,
                reason: "expected at least 1 ms".into(),
            });
        }
        if ttl_ms > settings.max_ttl_ms as u128 {
            return Err(LockError::InvalidTtl {
                ttl_ms,
                reason: format!("more than locks.max_ttl_ms ({})", settings.max_ttl_ms),
            });
        }
        Ok(())
    }

    fn validate_name(&self, name: &str) -> Result<(), LockError> {
        let settings = &self.shared.settings;
        if name.is_empty() {
            return Err(LockError::InvalidName("the name is empty".into()));
        }
        if name.len() > settings.max_name_bytes {
            return Err(LockError::InvalidName(format!(
                "{} bytes, more than locks.max_name_bytes ({})",
                name.len(),
                settings.max_name_bytes
            )));
        }
        Ok(())
    }

    /// One attempt: one script on Redis, or the outage policy. When the lock is taken and
    /// `mark_ms` is not 0, the name is marked as waited for during `mark_ms`.
    async fn attempt(
        &self,
        name: &str,
        ttl: Duration,
        mark_ms: u64,
    ) -> Result<Option<LockGuard>, LockError> {
        match self.attempt_on_redis(name, ttl, mark_ms).await {
            Ok(Some((token, fence, _))) => Ok(Some(LockGuard::remote(
                self.shared.clone(),
                name,
                token,
                fence,
                ttl,
                0,
            ))),
            Ok(None) => Ok(None),
            Err(LockError::Unavailable(reason)) => self.outage(name, reason),
            Err(e) => Err(e),
        }
    }

    /// One acquire script on Redis: `Some((token, fencing token, Unix ms just before the
    /// call))` when the lock was free, `None` when it is held, [`LockError::Unavailable`]
    /// off Redis.
    async fn attempt_on_redis(
        &self,
        name: &str,
        ttl: Duration,
        mark_ms: u64,
    ) -> Result<Option<(String, u64, u64)>, LockError> {
        let shared = &self.shared;
        if shared.storage.mode() != Mode::Redis {
            return Err(LockError::Unavailable(format!(
                "storage is {}",
                shared.storage.mode()
            )));
        }
        // A process-local lock granted during an outage still excludes this process's tasks.
        if shared.local.lock().contains_key(name) {
            return Ok(None);
        }
        let token = new_token();
        let (fence_key, waiting_key) = shared.lock_keys(name);
        let (ttl_ms, mark_ms) = (ttl.as_millis().to_string(), mark_ms.to_string());
        let sent_at_ms = now_ms();
        let reply = shared
            .acquire_batch
            .call(batch::Request {
                keys: vec![name.to_string(), fence_key, waiting_key],
                args: vec![token.clone(), ttl_ms, mark_ms],
            })
            .await;
        match reply {
            Ok(fence) if fence > 0 => Ok(Some((token, fence as u64, sent_at_ms))),
            Ok(_) => Ok(None),
            Err(e) => Err(LockError::from_storage(e)),
        }
    }

    fn outage(&self, name: &str, reason: String) -> Result<Option<LockGuard>, LockError> {
        match self.shared.settings.on_outage {
            LockOutage::Refuse => Err(LockError::Unavailable(reason)),
            LockOutage::Local => {
                let token = new_token();
                let mut local = self.shared.local.lock();
                if local.contains_key(name) {
                    return Ok(None);
                }
                local.insert(name.to_string(), token.clone());
                drop(local);
                tracing::debug!(actor = "locks", key = %name, "granted a process-local lock during an outage");
                Ok(Some(LockGuard::local(self.shared.clone(), name, token)))
            }
        }
    }

    /// A release notice from the channel: wakes this process's head waiter of the name,
    /// unless this process published it (it has woken its waiters already).
    fn heard(&self, notice: &str) {
        let Some((origin, name)) = notice.split_once('\n') else {
            return;
        };
        self.shared.notices.fetch_add(1, Ordering::Relaxed);
        if origin != self.shared.origin {
            self.shared.queues.wake(name);
        }
    }

    /// The locks this process holds now, by name (at most `limit`), and how many there are:
    /// its guards and the leases it handed out (through the HTTP API), read from memory.
    pub fn held_now(&self, limit: usize) -> (Vec<HeldLock>, usize) {
        let now = now_ms();
        let mut held: Vec<HeldLock> = self
            .shared
            .holding
            .lock()
            .by_token
            .values()
            .filter(|h| h.expires_at_ms.is_none_or(|at| at > now))
            .cloned()
            .collect();
        let total = held.len();
        held.sort_by(|a, b| a.name.cmp(&b.name).then(a.fence.cmp(&b.fence)));
        held.truncate(limit);
        (held, total)
    }

    /// This process's lock counters: waiters, release notices heard, script calls.
    pub fn stats(&self) -> LockStats {
        let (waiters, names) = self.shared.queues.counts();
        let (aq, ac, ar) = self.shared.acquire_batch.counts();
        let (rq, rc, rr) = self.shared.release_batch.counts();
        LockStats {
            waiters,
            names_waited_for: names,
            held: self.shared.held.load(Ordering::Relaxed),
            leases: {
                let now = now_ms();
                self.shared
                    .holding
                    .lock()
                    .by_token
                    .values()
                    .filter(|h| {
                        h.holder == Holder::Lease && h.expires_at_ms.is_none_or(|at| at > now)
                    })
                    .count()
            },
            local_locks: self.shared.local.lock().len(),
            notices_heard: self.shared.notices.load(Ordering::Relaxed),
            queued_calls: aq + rq,
            script_calls: ac + rc,
            script_requests: ar + rr,
            extension_retries: self.shared.extension_retries.load(Ordering::Relaxed),
            turns_yielded: self.shared.turns_yielded.load(Ordering::Relaxed),
        }
    }
}

/// A token as [`new_token`] makes them: 32 lower-case hex digits. Anything else is refused
/// before it reaches Redis, so that a lease call can never release or extend a lock a seed
/// client holds with its `"1"`.
fn validate_token(token: &str) -> Result<(), LockError> {
    let ok = token.len() == 32
        && token
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(LockError::InvalidToken(
            "expected the 32 lower-case hex digits of a token this service handed out".into(),
        ))
    }
}

/// A lock held by its token alone ([`Locks::acquire_lease`]): no guard, no watchdog. Its
/// holder extends it with [`Locks::extend_lease`] and releases it with
/// [`Locks::release_lease`]; left alone, it expires at its TTL. Serialized as the HTTP API
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockLease {
    /// The lock's name (its Redis key, exactly as given).
    pub name: String,
    /// The random token the lock key holds (32 lower-case hex digits): what extends and
    /// releases it.
    pub token: String,
    /// The fencing token: strictly increasing per lock name (see [`LockGuard::fencing_token`]).
    pub fence: u64,
    /// Unix milliseconds by which the lock expires unless extended: this process's clock
    /// just before the acquisition was sent, plus the TTL (so never later than the real
    /// expiry by this process's clock).
    pub expires_at_ms: u64,
}

/// `values` borrowed, for a storage call.
fn strs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

/// A random token: 32 lower-case hex digits (128 bits).
pub(super) fn new_token() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut out = String::with_capacity(32);
    for nibble in (0..32).rev() {
        out.push(HEX[((bits >> (nibble * 4)) & 0xf) as usize] as char);
    }
    out
}

/// Who in this process holds a lock (see [`HeldLock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Holder {
    /// A [`LockGuard`] of this process, extended by its watchdog.
    Guard,
    /// A process-local lock granted during an outage (`locks.on_outage = "local"`).
    Local,
    /// A lease handed out by [`Locks::acquire_lease`] (the HTTP API's holders).
    Lease,
}

/// A lock this process holds now ([`Locks::held_now`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldLock {
    /// The lock's name.
    pub name: String,
    /// Who holds it.
    pub holder: Holder,
    /// Its fencing token (`None` for a process-local lock).
    pub fence: Option<u64>,
    /// When it expires unless extended (unix ms; `None` for a process-local lock).
    pub expires_at_ms: Option<u64>,
}

/// What [`Locks::stats`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockStats {
    /// Tasks of this process waiting for a lock.
    pub waiters: usize,
    /// Lock names they wait for.
    pub names_waited_for: usize,
    /// Locks this process holds now (guards handed out and not yet released or dropped).
    pub held: usize,
    /// Leases this process handed out ([`Locks::acquire_lease`], the HTTP API's holders) and
    /// not yet released or past their expiry.
    pub leases: usize,
    /// Process-local locks held (granted during an outage).
    pub local_locks: usize,
    /// Release notices heard on the release channel since start.
    pub notices_heard: u64,
    /// Acquisitions and releases waiting for the next script call (they queue while one is
    /// in flight, and go out together).
    pub queued_calls: usize,
    /// Acquire and release script calls sent since start.
    pub script_calls: u64,
    /// Acquisitions and releases those calls carried (over `script_calls`: how well calls
    /// are shared).
    pub script_requests: u64,
    /// Watchdog extensions that failed (a timeout, a dropped connection, the storage briefly
    /// degraded) and were retried since start; a guard is reported lost only when none
    /// succeeds in time.
    pub extension_retries: u64,
    /// Releases since start that, after a run of hand-overs inside this process, held its
    /// waiters back a moment so that another process's waiter could take the lock; only when
    /// the release was announced (some waiter had marked the name).
    pub turns_yielded: u64,
}

/// Event: a lock was released (a notice from the release channel: `ORIGIN\nNAME`).
/// Listens to the release channel and wakes this process's waiters, from a supervised task.
#[derive(Debug)]
pub(crate) struct LockManager {
    locks: Locks,
    child: ChildContext,
}

impl LockManager {
    /// A manager for the waiters of `locks` (the handle the host uses), for the incarnation
    /// `child` of its place in the tree.
    pub fn new(locks: Locks, child: ChildContext) -> Self {
        Self { locks, child }
    }
}

impl Actor for LockManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let runtime = self
            .locks
            .shared
            .runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let locks = self.locks.clone();
        self.child
            .spawn_task(ctx, "release notices", &runtime, listen(locks));
    }
}

/// Subscribes to the release channel, lets every head waiter try (releases missed while
/// (re)subscribing), then wakes the head waiter of each name released. Ends only with the
/// storage's subscriptions (an error: the actor restarts and subscribes again).
async fn listen(locks: Locks) -> Result<(), &'static str> {
    let channel = locks.shared.settings.release_channel.clone();
    let mut subscription = locks.shared.storage.subscribe(&channel).await;
    for name in locks.shared.queues.names() {
        locks.shared.queues.wake(&name);
    }
    while let Some(notice) = subscription.recv().await {
        fault::point("locks");
        locks.heard(&notice);
    }
    Err("the release channel's subscription ended")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KeySchema;

    #[test]
    fn a_name_counts_as_held_while_any_of_its_holders_is_noted() {
        let lock = |name: &str, holder, expires_at_ms| HeldLock {
            name: name.to_string(),
            holder,
            fence: Some(1),
            expires_at_ms: Some(expires_at_ms),
        };
        let held = |h: &Holding, name: &str| h.per_name.contains_key(&h.hash(name));
        let mut h = Holding::default();
        h.insert("t1".into(), lock("a", Holder::Guard, 1_000));
        h.insert("t2".into(), lock("a", Holder::Lease, 500));
        h.insert("t3".into(), lock("b", Holder::Guard, 1_000));
        // Noted again (a lease noted twice): still one holder.
        h.insert("t3".into(), lock("b", Holder::Guard, 2_000));
        assert!(held(&h, "a") && held(&h, "b") && !held(&h, "c"));
        h.remove("t1");
        assert!(held(&h, "a"), "the lease still holds it");
        // The lease's TTL has passed: the sweep drops it, and the name is free.
        h.sweep(700);
        assert!(!held(&h, "a"));
        assert!(held(&h, "b"));
        h.remove("t3");
        h.remove("t3");
        assert!(h.per_name.is_empty() && h.by_token.is_empty());
    }

    #[test]
    fn tokens_are_32_lower_case_hex_digits_and_differ() {
        let (a, b) = (new_token(), new_token());
        for token in [&a, &b] {
            assert_eq!(token.len(), 32, "{token}");
            assert!(token
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
        assert_ne!(a, b);
        // Every digit is used: the top and bottom nibbles are not stuck at zero.
        let tokens: Vec<String> = (0..64).map(|_| new_token()).collect();
        assert!(tokens.iter().any(|t| !t.starts_with('0')));
        assert!(tokens.iter().any(|t| !t.ends_with('0')));
    }

    async fn fallback_locks(on_outage: LockOutage) -> Locks {
        let mut settings = crate::settings::Settings::default();
        settings.storage.redis.enabled = false;
        let storage = Storage::open(&settings.storage, &KeySchema::default())
            .await
            .unwrap();
        let lock_settings = LockSettings {
            on_outage,
            ..LockSettings::default()
        };
        Locks::new(storage, lock_settings)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_a_typed_error() {
        let locks = fallback_locks(LockOutage::Local).await;
        let second = Duration::from_secs(1);
        assert!(matches!(
            locks.try_acquire("", second).await,
            Err(LockError::InvalidName(_))
        ));
        let long = "x".repeat(513);
        assert!(matches!(
            locks.try_acquire(&long, second).await,
            Err(LockError::InvalidName(_))
        ));
        assert!(matches!(
            locks.try_acquire("a", Duration::ZERO).await,
            Err(LockError::InvalidTtl { .. })
        ));
        assert!(matches!(
            locks.try_acquire("a", Duration::from_micros(10)).await,
            Err(LockError::InvalidTtl { .. })
        ));
        assert!(matches!(
            locks
                .acquire("a", Duration::from_secs(86_401), second)
                .await,
            Err(LockError::InvalidTtl { .. })
        ));
        assert_eq!(locks.stats().local_locks, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_redis_refuse_fails_and_local_grants_a_local_lock() {
        let refuse = fallback_locks(LockOutage::Refuse).await;
        assert!(matches!(
            refuse
                .try_acquire("bet-cleanup-lock", Duration::from_secs(1))
                .await,
            Err(LockError::Unavailable(_))
        ));
        let local = fallback_locks(LockOutage::Local).await;
        let guard = local
            .try_acquire("bet-cleanup-lock", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(guard.is_local() && guard.fencing_token().is_none() && !guard.is_lost());
        assert!(local
            .try_acquire("bet-cleanup-lock", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
        // A waiter is served once the holder lets go.
        let waiter = {
            let local = local.clone();
            tokio::spawn(async move {
                local
                    .acquire(
                        "bet-cleanup-lock",
                        Duration::from_secs(1),
                        Duration::from_secs(5),
                    )
                    .await
            })
        };
        assert!(guard.release().await.unwrap());
        let second = waiter.await.unwrap().unwrap();
        assert!(second.is_local());
    }
}
