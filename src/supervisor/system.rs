//! [`ActorSystem`]: an actix `System` on a dedicated OS thread, plus the arbiters (one thread
//! each) that supervised children run on.
//!
//! It can be started from any context: a host's multi-threaded tokio runtime, a
//! `#[tokio::test]`, or a plain thread (actix's own `System::new()` cannot run inside a tokio
//! runtime, and `Actor::start()` panics outside an actix arbiter). Arbiters are created on the
//! system thread on request and tracked here; [`ActorSystem::stop`] stops every one of them and
//! the system, then joins all their threads, so repeated start/stop cycles leak nothing.
//!
//! A thread that stays blocked (an actor stuck in a synchronous handler) cannot be joined:
//! `stop` waits for it until its join deadline, then leaves it detached and names it in the
//! [`SystemStopReport`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_rt::{Arbiter, ArbiterHandle, System};
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use super::error::SupervisorError;
use super::panic;

/// Default of how long [`ActorSystem::stop`] waits for each thread to finish.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// An actix `System` running on a thread of its own, and the arbiters created in it.
///
/// Cheap to share by reference; supervisors keep an internal reference to it. Dropping it
/// without [`stop`](Self::stop) stops the system but does not wait for its threads.
#[derive(Debug)]
pub struct ActorSystem {
    inner: Arc<SystemInner>,
    thread: Option<JoinHandle<()>>,
    thread_exit: Arc<ExitSignal>,
    join_timeout: Duration,
}

/// What [`ActorSystem::stop`] did with the threads it owned.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SystemStopReport {
    /// Threads (system and arbiters) that finished and were joined.
    pub joined_threads: usize,
    /// Threads still running at the join deadline, left detached (labels of their arbiters).
    pub leaked_threads: Vec<String>,
}

impl SystemStopReport {
    /// True when every thread was joined.
    pub fn is_clean(&self) -> bool {
        self.leaked_threads.is_empty()
    }
}

/// An arbiter (event loop on its own thread) created by an [`ActorSystem`].
#[derive(Debug, Clone)]
pub struct ManagedArbiter {
    id: u64,
    handle: ArbiterHandle,
}

impl ManagedArbiter {
    /// The actix handle, e.g. for `Actor::start_in_arbiter`.
    pub fn handle(&self) -> &ArbiterHandle {
        &self.handle
    }
}

/// The shared part of an [`ActorSystem`], referenced by supervisors.
#[derive(Debug)]
pub(crate) struct SystemInner {
    name: String,
    system: System,
    running: AtomicBool,
    book: Mutex<ArbiterBook>,
}

#[derive(Debug, Default)]
struct ArbiterBook {
    next_id: u64,
    live: HashMap<u64, TrackedArbiter>,
    retired: Vec<TrackedArbiter>,
}

#[derive(Debug)]
struct TrackedArbiter {
    label: String,
    arbiter: Arbiter,
    exit: Arc<ExitSignal>,
}

/// Set when a thread is about to finish, so that joining it afterwards never blocks for long
/// and can be given a deadline (std's `JoinHandle::join` has none; actix's `Arbiter` does not
/// expose `is_finished`).
#[derive(Debug)]
struct ExitSignal {
    done: Mutex<bool>,
    condvar: Condvar,
    watch: watch::Sender<bool>,
}

impl ExitSignal {
    fn new() -> Self {
        Self {
            done: Mutex::new(false),
            condvar: Condvar::new(),
            watch: watch::Sender::new(false),
        }
    }

    fn set(&self) {
        *self.done.lock() = true;
        self.condvar.notify_all();
        self.watch.send_replace(true);
    }

    fn is_set(&self) -> bool {
        *self.done.lock()
    }

    fn wait_blocking(&self, deadline: Instant) -> bool {
        let mut done = self.done.lock();
        while !*done {
            if self.condvar.wait_until(&mut done, deadline).timed_out() {
                return *done;
            }
        }
        true
    }

    async fn wait(&self, deadline: Instant) -> bool {
        let mut rx = self.watch.subscribe();
        let until = tokio::time::Instant::from_std(deadline);
        let finished = tokio::time::timeout_at(until, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|waited| waited.is_ok());
        finished
    }
}

/// Sets its signal when dropped: at the end of the system thread, and (stored in a
/// thread-local) when an arbiter thread runs its thread-local destructors on exit.
struct ExitOnDrop(Arc<ExitSignal>);

impl Drop for ExitOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

thread_local! {
    static ARBITER_EXIT: RefCell<Option<ExitOnDrop>> = const { RefCell::new(None) };
}

impl ActorSystem {
    /// Starts an actix `System` named `name` on a new thread and waits until it runs.
    ///
    /// Blocks the caller only for the thread start-up (well under a millisecond of work).
    pub fn start(name: &str) -> Result<Self, SupervisorError> {
        panic::install_hook();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread_exit = Arc::new(ExitSignal::new());
        let exit = Arc::clone(&thread_exit);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-system"))
            .spawn(move || {
                let _exit = ExitOnDrop(exit);
                let runner = System::new();
                let _ = tx.send(System::current());
                if let Err(error) = runner.run() {
                    tracing::error!(error = %error, "actor system stopped with an error");
                }
            })
            .map_err(|error| SupervisorError::Thread {
                what: format!("actor system `{name}`"),
                error: error.to_string(),
            })?;
        let Ok(system) = rx.recv() else {
            // The thread died before handing over its System (runtime creation panicked).
            let _ = thread.join();
            return Err(SupervisorError::Thread {
                what: format!("actor system `{name}`"),
                error: "the system thread panicked during start-up".into(),
            });
        };
        tracing::info!(system = name, "actor system started");
        Ok(Self {
            inner: Arc::new(SystemInner {
                name: name.to_owned(),
                system,
                running: AtomicBool::new(true),
                book: Mutex::new(ArbiterBook::default()),
            }),
            thread: Some(thread),
            thread_exit,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
        })
    }

    /// Sets how long [`stop`](Self::stop) waits for each thread before leaving it detached.
    pub fn with_join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Name given at start.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The actix `System` (Send + Sync).
    pub fn system(&self) -> &System {
        &self.inner.system
    }

    /// Number of arbiters created and not yet retired.
    pub fn live_arbiters(&self) -> usize {
        self.inner.book.lock().live.len()
    }

    /// Creates a new arbiter (an event loop on its own thread); `label` names it in reports.
    pub async fn spawn_arbiter(&self, label: &str) -> Result<ManagedArbiter, SupervisorError> {
        self.inner.spawn_arbiter(label).await
    }

    /// Stops an arbiter created by [`spawn_arbiter`](Self::spawn_arbiter). Its thread is
    /// joined by [`stop`](Self::stop) (or earlier, once finished).
    pub fn retire_arbiter(&self, arbiter: &ManagedArbiter) {
        self.inner.retire(arbiter);
    }

    pub(crate) fn inner(&self) -> Arc<SystemInner> {
        Arc::clone(&self.inner)
    }

    /// Stops every arbiter and the system, and joins their threads (waiting asynchronously,
    /// up to the join timeout for each). Needs a tokio runtime for its timer.
    pub async fn stop(mut self) -> SystemStopReport {
        let (arbiters, deadline) = self.begin_stop();
        let mut report = SystemStopReport::default();
        for tracked in arbiters {
            let finished = tracked.exit.wait(deadline).await;
            finish_thread(tracked, finished, &mut report);
        }
        let finished = self.thread_exit.wait(deadline).await;
        self.finish_system_thread(finished, &mut report);
        report
    }

    /// Like [`stop`](Self::stop), for callers outside any async runtime (blocks the thread).
    pub fn stop_blocking(mut self) -> SystemStopReport {
        let (arbiters, deadline) = self.begin_stop();
        let mut report = SystemStopReport::default();
        for tracked in arbiters {
            let finished = tracked.exit.wait_blocking(deadline);
            finish_thread(tracked, finished, &mut report);
        }
        let finished = self.thread_exit.wait_blocking(deadline);
        self.finish_system_thread(finished, &mut report);
        report
    }

    fn begin_stop(&mut self) -> (Vec<TrackedArbiter>, Instant) {
        self.inner.running.store(false, Ordering::SeqCst);
        let arbiters = {
            let mut book = self.inner.book.lock();
            let mut all: Vec<TrackedArbiter> = book.live.drain().map(|(_, a)| a).collect();
            all.append(&mut book.retired);
            all
        };
        for tracked in &arbiters {
            tracked.arbiter.stop();
        }
        self.inner.system.stop();
        (arbiters, Instant::now() + self.join_timeout)
    }

    fn finish_system_thread(&mut self, finished: bool, report: &mut SystemStopReport) {
        if let Some(thread) = self.thread.take() {
            if finished {
                let _ = thread.join();
                report.joined_threads += 1;
            } else {
                report
                    .leaked_threads
                    .push(format!("{}-system", self.inner.name));
            }
        }
        if report.is_clean() {
            tracing::info!(system = %self.inner.name, threads = report.joined_threads, "actor system stopped");
        } else {
            tracing::warn!(system = %self.inner.name, leaked = ?report.leaked_threads,
                "actor system stopped; threads still blocked were left detached");
        }
    }
}

fn finish_thread(tracked: TrackedArbiter, finished: bool, report: &mut SystemStopReport) {
    if finished {
        // The thread has run its exit hook: it is finishing, so this join is immediate.
        let _ = tracked.arbiter.join();
        report.joined_threads += 1;
    } else {
        report.leaked_threads.push(tracked.label);
    }
}

impl Drop for ActorSystem {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not stopped explicitly: stop everything, without waiting for the threads.
            let _ = self.begin_stop();
        }
    }
}

impl SystemInner {
    pub(crate) async fn spawn_arbiter(
        &self,
        label: &str,
    ) -> Result<ManagedArbiter, SupervisorError> {
        if !self.running.load(Ordering::SeqCst) {
            return Err(SupervisorError::SystemStopped);
        }
        let exit = Arc::new(ExitSignal::new());
        let exit_in_thread = Arc::clone(&exit);
        let (tx, rx) = oneshot::channel();
        // `Arbiter::try_with_tokio_rt` needs `System::current()`, which only the system's own
        // threads have: create it there.
        let sent = self.system.arbiter().spawn_fn(move || {
            let created = Arbiter::try_with_tokio_rt(move || {
                // Runs on the new thread: its thread-local destructors signal the exit.
                ARBITER_EXIT.with(|slot| *slot.borrow_mut() = Some(ExitOnDrop(exit_in_thread)));
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            });
            let _ = tx.send(created);
        });
        if !sent {
            return Err(SupervisorError::SystemStopped);
        }
        let arbiter = rx
            .await
            .map_err(|_| SupervisorError::SystemStopped)?
            .map_err(|error| SupervisorError::Thread {
                what: label.to_owned(),
                error: error.to_string(),
            })?;
        let handle = arbiter.handle();
        let mut book = self.book.lock();
        if !self.running.load(Ordering::SeqCst) {
            // The system was stopped while this arbiter was being created.
            arbiter.stop();
            return Err(SupervisorError::SystemStopped);
        }
        book.next_id += 1;
        let id = book.next_id;
        let label = label.to_owned();
        book.live.insert(
            id,
            TrackedArbiter {
                label,
                arbiter,
                exit,
            },
        );
        Ok(ManagedArbiter { id, handle })
    }

    /// Stops the arbiter and keeps its thread for a later join; joins retired threads that
    /// have finished in the meantime, so a long-running system does not accumulate them.
    pub(crate) fn retire(&self, arbiter: &ManagedArbiter) {
        let mut book = self.book.lock();
        if let Some(tracked) = book.live.remove(&arbiter.id) {
            tracked.arbiter.stop();
            book.retired.push(tracked);
        }
        let (finished, pending): (Vec<_>, Vec<_>) =
            book.retired.drain(..).partition(|t| t.exit.is_set());
        book.retired = pending;
        drop(book);
        for tracked in finished {
            let _ = tracked.arbiter.join();
        }
    }
}
