//! The watchdogs of one lock handle: what extends held locks while their guards live.
//!
//! Most locks are released long before their first extension is due (TTL/3), so a guard
//! costs no task of its own: it is filed under its first due time in one timer per
//! handle ([`Watchdogs`]), and dropping it takes it out again. Only a guard still held
//! when its first extension comes due gets an extension task ([`extend_while_held`]), which
//! then renews the lock every TTL/3 until the guard ends it.
//!
//! Filing a guard wakes the timer only when the guard comes due before the timer means to
//! wake. While guards are being filed the timer wakes at least every TTL/3 of the shortest
//! TTL filed since it last woke, so a guard filed after that is never due before the timer's
//! next wake, and a busy handle files guard after guard without waking anything (a wake-up
//! per guard cost a context switch on another worker per lock taken).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::scripts::scripts;
use super::Shared;
use crate::clock::now_ms;

/// The longest the timer sleeps without looking whether its lock handle is gone.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// One guard's watchdog, shared by the guard, the timer and the extension task.
#[derive(Debug)]
pub(super) struct Watch {
    name: String,
    token: String,
    ttl: Duration,
    /// When the lock was acquired (or last handed over): its first extension is due TTL/3
    /// later.
    acquired_at: Instant,
    /// Told `true`, once, when the lock is lost. Held here for as long as the guard lives.
    lost: watch::Sender<bool>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// Filed with the timer; no extension has been due yet.
    Filed,
    /// The lock outlived its first third: this task extends it.
    Extending(JoinHandle<()>),
    /// The guard is released or dropped.
    Ended,
}

impl Watch {
    /// A receiver of the loss notice.
    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }
}

/// The timer of one lock handle's guards.
#[derive(Debug, Default)]
pub(super) struct Watchdogs {
    state: Mutex<Timer>,
    /// Told when a guard is filed that comes due before the timer means to wake.
    earlier: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Timer {
    /// Guards by first due time (and a sequence number, to tell equal times apart).
    due: BTreeMap<(Instant, u64), Arc<Watch>>,
    next_seq: u64,
    /// The timer task. Started with the first guard, and again if it ended (its runtime shut
    /// down while the lock handle lives on).
    task: Option<JoinHandle<()>>,
    /// When the timer task means to wake next.
    wakes_at: Option<Instant>,
    /// The shortest extension period (TTL/3) of the guards filed since the timer last woke.
    recent_every: Option<Duration>,
    /// Times the timer task woke.
    wakes: u64,
}

/// A filed guard's place with the timer.
#[derive(Debug)]
pub(super) struct Filed {
    key: (Instant, u64),
    watch: Arc<Watch>,
}

impl Filed {
    /// The guard's watchdog.
    pub(super) fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }
}

impl Watchdogs {
    /// Files a guard of `name` just acquired with `token` for `ttl`: unless [`Watchdogs::end`]
    /// is called first, an extension task starts TTL/3 from now.
    pub(super) fn file(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Filed {
        let acquired_at = Instant::now();
        let (lost, _) = watch::channel(false);
        let watch = Arc::new(Watch {
            name: name.to_string(),
            token: token.to_string(),
            ttl,
            acquired_at,
            lost,
            state: Mutex::new(State::Filed),
        });
        let period = every(ttl);
        let due = acquired_at + period;
        let (key, earlier) = {
            let mut timer = self.state.lock();
            let key = (due, timer.next_seq);
            timer.next_seq += 1;
            timer.recent_every = Some(timer.recent_every.map_or(period, |p| p.min(period)));
            timer.due.insert(key, watch.clone());
            if timer.task.as_ref().is_none_or(JoinHandle::is_finished) {
                timer.wakes_at = None;
                timer.task = shared.spawn(run(Arc::downgrade(shared)));
            }
            (key, timer.wakes_at.is_some_and(|at| due < at))
        };
        if earlier {
            self.earlier.notify_one();
        }
        Filed { key, watch }
    }

    /// Ends a guard's watchdog: takes it off the timer, or stops its extension task.
    pub(super) fn end(&self, filed: &Filed) {
        if self.state.lock().due.remove(&filed.key).is_some() {
            *filed.watch.state.lock() = State::Ended;
            return;
        }
        // The timer took it already: it is starting, or running, its extension task.
        let previous = std::mem::replace(&mut *filed.watch.state.lock(), State::Ended);
        if let State::Extending(task) = previous {
            task.abort();
        }
    }
}

/// The timer: starts the extension task of every guard still held when its first
/// extension comes due. Ends when its lock handle is gone.
///
/// It wakes at the earliest due time filed, and no later than the shortest TTL/3 filed since
/// it last woke (or [`IDLE_CHECK`] when none was): so that a guard filed with that TTL is
/// never due before the next wake and need not wake it (see [`Watchdogs::file`]).
async fn run(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (due, wake) = {
            let mut timer = strong.watchdogs.state.lock();
            timer.wakes += 1;
            let later = timer.due.split_off(&(now, u64::MAX));
            let due = std::mem::replace(&mut timer.due, later);
            let period = timer
                .recent_every
                .take()
                .unwrap_or(IDLE_CHECK)
                .min(IDLE_CHECK);
            let next = timer.due.first_key_value().map(|(k, _)| k.0);
            let wake = next.map_or(now + period, |at| at.min(now + period));
            timer.wakes_at = Some(wake);
            (due, wake)
        };
        for watch in due.into_values() {
            let mut state = watch.state.lock();
            if matches!(*state, State::Filed) {
                let task = extend_while_held(strong.clone(), watch.clone());
                if let Some(task) = strong.spawn(task) {
                    *state = State::Extending(task);
                }
            }
        }
        let earlier = strong.watchdogs.earlier.clone();
        drop(strong);
        tokio::select! {
            _ = earlier.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// How often a lock of `ttl` is extended.
fn every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// Extends the lock every TTL/3 until aborted; reports a loss once and stops.
///
/// Redis answering that the lock is no longer ours is a loss at once. A call that fails (a
/// timeout, a dropped connection, the storage briefly degraded) is retried, since the lock is
/// still ours until its TTL runs out; the loss is reported once no extension has succeeded by
/// [`extension_deadline`], a third of the TTL before the earliest moment the lock can expire.
async fn extend_while_held(shared: Arc<Shared>, watch: Arc<Watch>) {
    let (name, token, ttl) = (&watch.name, &watch.token, watch.ttl);
    let every = every(ttl);
    let retry = (every / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let ttl_ms = ttl.as_millis().to_string();
    // The acquisition's script set the lock shortly before the guard was filed; the margin
    // in `extension_deadline` covers the difference.
    let mut extended_at = watch.acquired_at;
    let mut tick = tokio::time::interval_at(extended_at + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reason = loop {
            let sent = Instant::now();
            let reply = shared
                .storage
                .eval_lock(&scripts().extend, &[name], &[token, &ttl_ms])
                .await;
            match reply {
                Ok(r) if r.as_int() == 1 => {
                    extended_at = sent;
                    shared.note_extended(
                        token,
                        now_ms().saturating_sub(sent.elapsed().as_millis() as u64)
                            + ttl.as_millis() as u64,
                    );
                    break None;
                }
                Ok(_) => break Some("expired and no longer ours".to_string()),
                Err(e) => {
                    let now = Instant::now();
                    if now + retry >= extension_deadline(extended_at, ttl) {
                        break Some(e.to_string());
                    }
                    shared.extension_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(actor = "locks", key = %name, error = %e, "lock extension failed; retrying");
                    tokio::time::sleep(retry).await;
                }
            }
        };
        let Some(reason) = reason else { continue };
        tracing::warn!(actor = "locks", key = %name, error = %reason, "lock lost: it could not be extended");
        let _ = watch.lost.send(true);
        return;
    }
}

/// The moment by which a lock last extended (or acquired) at `extended_at` must be extended
/// again, or be reported lost: two thirds of its TTL later. The last third is the margin for
/// the time the extension's reply took and for the clocks of Redis and this process.
fn extension_deadline(extended_at: Instant, ttl: Duration) -> Instant {
    extended_at + ttl * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::super::{LockSettings, Locks};
    use super::*;
    use crate::storage::{KeySchema, Storage};

    /// A lock handle on a storage without Redis: the watchdogs' extensions fail, which
    /// these tests do not look at.
    async fn shared() -> Arc<Shared> {
        let mut settings = crate::settings::Settings::default();
        settings.storage.redis.enabled = false;
        let storage = Storage::open(&settings.storage, &KeySchema::default())
            .await
            .unwrap();
        Locks::new(storage, LockSettings::default()).shared
    }

    fn wakes(shared: &Shared) -> u64 {
        shared.watchdogs.state.lock().wakes
    }

    fn extending(filed: &Filed) -> bool {
        matches!(*filed.watch().state.lock(), State::Extending(_))
    }

    /// Polls until `filed` has its extension task; how long after `since` that was.
    async fn extension_started(filed: &Filed, since: Instant, within: Duration) -> Duration {
        while !extending(filed) {
            assert!(
                since.elapsed() < within,
                "no extension task {within:?} after the guard was filed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        since.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guards_taken_and_released_one_after_another_leave_the_timer_asleep() {
        let shared = shared().await;
        let ttl = Duration::from_secs(10);
        for i in 0..200 {
            // Released before the timer could run (a lock released in the task's same
            // step), so that the timer never finds a guard held to wait for.
            let filed = shared.watchdogs.file(&shared, "n", &format!("t{i}"), ttl);
            shared.watchdogs.end(&filed);
            // The timer would run here if the filing woke it.
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        // Its first run and the wake that shortened its sleep to the guards' TTL/3 (a
        // third if this loop took longer than that); not one per guard.
        assert!(
            wakes(&shared) <= 3,
            "the timer woke {} times",
            wakes(&shared)
        );
        assert!(shared.watchdogs.state.lock().due.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guard_of_a_shorter_ttl_than_the_others_still_gets_its_extension_on_time() {
        let shared = shared().await;
        // The timer settles on a sleep of 10 s / 3.
        let long = shared
            .watchdogs
            .file(&shared, "long", "t1", Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
        shared.watchdogs.end(&long);
        let filed_at = Instant::now();
        let short = shared
            .watchdogs
            .file(&shared, "short", "t2", Duration::from_millis(300));
        let after = extension_started(&short, filed_at, Duration::from_secs(2)).await;
        assert!(
            after >= Duration::from_millis(100),
            "extended after {after:?}"
        );
        shared.watchdogs.end(&short);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guard_held_past_its_first_third_is_extended_while_others_come_and_go() {
        let shared = shared().await;
        let ttl = Duration::from_millis(600);
        let filed_at = Instant::now();
        let held = shared.watchdogs.file(&shared, "held", "t0", ttl);
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let other = shared
                .watchdogs
                .file(&shared, "other", &format!("t{i}"), ttl);
            shared.watchdogs.end(&other);
        }
        let after = extension_started(&held, filed_at, Duration::from_secs(2)).await;
        assert!(
            after >= Duration::from_millis(200),
            "extended after {after:?}"
        );
        shared.watchdogs.end(&held);
    }
}
