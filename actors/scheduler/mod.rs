//! The task scheduler: the seed's priority queue (`PREFIX:tasks:queue`, `PREFIX:task:ID`) made
//! reliable, workers with per-type handlers, bot state, sessions, metrics, events and periodic
//! jobs.
//!
//! The host uses the cloneable [`Scheduler`] handle (`Fleet::scheduler()`): [`Scheduler::enqueue`],
//! [`Scheduler::enqueue_bulk`], [`Scheduler::enqueue_new`], [`Scheduler::cancel`], [`Scheduler::get`],
//! [`Scheduler::list`], [`Scheduler::counts`], [`Scheduler::register_handler`] and
//! [`Scheduler::stop`], and [`periodic::Periodic`] (`Fleet::periodic()`). In a fleet the
//! `SchedulerActor` runs this process's worker loop, the visibility heartbeat and the periodic
//! jobs as supervised tasks from the tree's start (the host's `register_handler` only
//! registers): a panic of any of them fails the actor, and each incarnation clears the
//! stopping flag, so a restart resumes claiming and the periodic jobs. When the tree stops,
//! it stops claiming, lets running handlers report, then stops. The state lives in the handle
//! ([`Scheduler::stats`], `Fleet::scheduler_stats()`). A
//! scheduler made by hand (a named queue, a benchmark) starts its own worker, unsupervised,
//! at the first `register_handler`.
//!
//! # The task hash
//!
//! `PREFIX:task:ID` holds the seed's `id`, `type`, `data` (JSON text), `priority`, `created_at`
//! and `status` (`pending`, `processing`, `completed`, `failed`), plus `attempts`,
//! `updated_at`, `last_error`, `run_at` (a delayed or retried task) and `max_attempts` (when
//! set per task), and for a task a worker over HTTP claimed, `lease` (the random token of its
//! attempt) and `result` (what its completion reported). A task added by an outside client
//! with `HSET` and `ZADD` lacks the extra fields; the claim creates them. Beside the queue, `PREFIX:tasks:processing` scores each
//! claimed id by its visibility deadline, `PREFIX:tasks:delayed` by its due time and
//! `PREFIX:tasks:dead` by its time of death (milliseconds).
//!
//! Order: the queue's score is `-priority`, as in the seed; members of equal score sort by
//! their bytes, and botfleet's ids (`ids`) start with the millisecond and a counter, so equal
//! priorities run in arrival order.
//!
//! # One step per round trip
//!
//! The worker loop of a process sends `task-step` script calls that each carry every result
//! finished since the last and ask for as many tasks as its handlers have free slots (per
//! type, at most `scheduler.claim_batch` in all). With 16 slots or more, and while Redis
//! serves, two steps are in flight at once, each claiming at most half of the slots, so that
//! Redis runs one while the worker starts the other's tasks; a second step goes only with a
//! full half (of results or of free slots): smaller steps cost Redis more per task than the
//! overlap saves. In order, the script applies:
//!
//! - completions, once: a completed task is left alone. A completed hash keeps
//!   `status completed` for `scheduler.completed_ttl_secs` (0 deletes it);
//! - failures, only when the attempt matches: a retry through `PREFIX:tasks:delayed` after
//!   `backoff_base_ms * 2^(attempt-1)`, capped at `backoff_max_ms`, or, after the last attempt,
//!   the dead set with `status failed` and `last_error`;
//! - the operations of leaseholders (workers over HTTP, [`lease`](self#workers-over-http)):
//!   extend, complete or fail, each only while the task is `processing` under the lease named;
//! - the reaper: up to 100 expired deadlines, each back to the queue, or dead after its last
//!   attempt with `last_error` `visibility timeout expired`;
//! - the promotion of due delayed tasks to the queue;
//! - claims from the head of the queue, skipping types this process has no handler for (they
//!   stay for other processes; at most `scheduler.scan_limit` looked at; a handler of the type
//!   `*` takes any type no other handler names). A claim sets `status processing`, raises
//!   `attempts` and scores the id with `now + visibility_timeout_ms`.
//!
//! Before it builds a step the worker lets the handlers that are ready finish, so that one
//! step carries all their results and refills all their slots. Handlers run as tokio tasks; a
//! handler's `Err` or panic fails the attempt. The heartbeat extends the deadline of the tasks
//! running longer than a third of the timeout (`task-extend`, only while the attempt still
//! holds the task).
//!
//! With a history sink on ([`Scheduler::archive_to`]) every finished attempt is archived once
//! the step that reported it succeeded, and a task the reaper dead-letters (its last attempt
//! expired: its worker died) is archived as `dead` by the process whose step buried it, from
//! the fields that step's reply carries.
//!
//! # Outages
//!
//! Everything goes through [`Storage`]: while Redis is unreachable the scripts' Rust twins run
//! on the fallback, where only the tasks enqueued during the outage are, and the outbox
//! replays the scripts on Redis, in order, with the clock they were given. To make that replay
//! claim the same tasks, a worker that sees the mode `degraded` or `resyncing` reads the local
//! queue first and names the ids in its claim (a named id is claimed only while still queued);
//! `task-enqueue` skips an id that exists; a completion replayed for a task already complete
//! changes nothing. Tasks claimed from Redis before the outage finish on the fallback, and
//! their completion is replayed. An enqueue that fails on Redis mid-call (the connection lost,
//! the timeout) may have run there, and a worker on Redis may have claimed its task already:
//! the fallback keeps such tasks out of its queues (they are not run from it), the outbox
//! replays the enqueue all the same, and the task runs from Redis once the outage ends. Known
//! limit: a claim that meets the outage mid-call is
//! recorded as a claim from the head; replayed, it claims Redis tasks that nobody runs, with
//! an expired deadline, so the reaper returns them at the next step (their `attempts` counts
//! one more).
//!
//! # Workers over HTTP
//!
//! Workers outside the process (the daemon's `/api/tasks` protocol, `botfleet task work`)
//! claim with [`Scheduler::claim`]: the same step, with the types they serve as capacities, a
//! visibility timeout of their own, and a random lease token written into each claimed hash.
//! [`Scheduler::extend_lease`], [`Scheduler::complete_lease`] and [`Scheduler::fail_lease`]
//! are steps carrying one leased operation, refused with [`SchedulerError::StaleLease`] once
//! the attempt is over; the reaper treats their tasks as any other. [`Scheduler::claim`] waits
//! for tasks: woken by this process's enqueues, re-checking every `poll_interval_ms`. Dead
//! letters go back with [`Scheduler::retry_dead`] / [`Scheduler::retry_all_dead`] (attempts
//! reset) or away with [`Scheduler::delete_dead`]; [`Scheduler::promote`] runs a delayed task
//! now. The `lease` module's docs say how it meets an outage.
//!
//! # Named queues
//!
//! [`Scheduler::for_queue`] keeps a queue's keys under `{NAME}` ([`queue_prefix`]): on Redis
//! Cluster each queue lives in the slot of its name, and several queues spread over the
//! masters. One queue never spans masters, which keeps its scripts atomic. Bot state, sessions
//! and events stay under the storage's prefix.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Scheduler`], the worker loop and the heartbeat, `SchedulerActor` |
//! | `lease.rs` | workers over HTTP: claims with leases, the leaseholders' calls, dead letters and delayed tasks |
//! | `scripts.rs` | the Lua scripts and their Rust twins: `task-enqueue`, `task-step`, `task-extend`, `task-cancel`, `task-revive`, `task-promote`, `bot-state`, `session-count`, `bot-event` |
//! | [`state`] | bot state, sessions, metrics and events |
//! | [`periodic`] | periodic jobs, once per period across the fleet |
//! | [`external`] | handlers outside the process, from `[[scheduler.handlers]]`: a command or a webhook per task |
//! | `ids` | time-ordered task ids |

pub mod external;
mod ids;
mod lease;
pub mod periodic;
mod scripts;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context};
use dashmap::DashMap;
use futures::{FutureExt, StreamExt};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::actors::history;
use crate::clock::iso8601;
use crate::clock::now_ms;
use crate::settings::SchedulerSettings;
use crate::storage::{Mode, Op, Remembered, Reply, Storage, StorageError};
use crate::supervisor::{fault, ChildContext};
use ids::new_task_id;
pub use lease::{
    ClaimOptions, ClaimedTask, FailedAttempt, LeaseReport, ReportOutcome, MAX_ERROR_BYTES,
};
use scripts::scripts;

/// Longest task type name, bytes.
pub const MAX_TYPE_BYTES: usize = 128;
/// Longest task id, bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest absolute priority.
pub const MAX_PRIORITY: i64 = 1_000_000;
/// Tasks per script call of a bulk enqueue.
const BULK_CHUNK: usize = 1_000;
/// Results sent with one step.
const MAX_RESULTS_PER_STEP: usize = 1_000;
/// Steps of a process's worker in flight at once while Redis serves and its handlers have at
/// least [`TWO_STEPS_FROM_SLOTS`] slots in all. A step's round trip leaves the worker waiting
/// while Redis runs it, and Redis waiting while the worker starts the tasks it claimed and
/// gathers their results: with two in flight, each claiming at most half of the slots, the
/// two sides overlap. Outside Redis, and with fewer slots, one.
const STEPS_IN_FLIGHT: usize = 2;
/// Slots from which the worker keeps [`STEPS_IN_FLIGHT`] steps in flight. With fewer, the
/// round trip is the bound: two steps would carry the same tasks per round trip in twice the
/// calls.
const TWO_STEPS_FROM_SLOTS: usize = 16;
/// The type of a handler (or of a claim's `types`) that takes tasks of any type no other
/// handler of the process names.
pub const ANY_TYPE: &str = "*";

/// A bad call or a storage failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The task type is empty or too long.
    #[error("invalid task type {0:?}: expected 1..={MAX_TYPE_BYTES} bytes")]
    InvalidType(String),
    /// The task id is empty, too long or contains whitespace.
    #[error("invalid task id {0:?}: expected 1..={MAX_ID_BYTES} bytes without whitespace")]
    InvalidId(String),
    /// The data is larger than `scheduler.max_data_bytes`.
    #[error("task data is {bytes} bytes, more than scheduler.max_data_bytes ({max})")]
    DataTooLarge {
        /// Size given.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The data is not a JSON document.
    #[error("task data is not JSON: {0}")]
    DataNotJson(String),
    /// The delay is negative or longer than `scheduler.max_delay_ms`.
    #[error("invalid delay {delay_ms} ms: expected 0..={max} (scheduler.max_delay_ms)")]
    InvalidDelay {
        /// Delay given.
        delay_ms: i64,
        /// The bound.
        max: u64,
    },
    /// The priority is out of range.
    #[error("invalid priority {0}: expected -{MAX_PRIORITY}..={MAX_PRIORITY}")]
    InvalidPriority(i64),
    /// `max_attempts` or a handler's concurrency is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A state name the seed does not know.
    #[error("unknown bot state {0:?}: expected starting, running, stopping, stopped or error")]
    UnknownState(String),
    /// The bot state cannot go from `from` to `to`.
    #[error("illegal bot state transition {from} -> {to}")]
    IllegalTransition {
        /// Current state ("none" when there is none).
        from: String,
        /// State asked for.
        to: String,
    },
    /// A session id, counter, event type or job name is not acceptable.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was given.
        what: &'static str,
        /// Why it is refused.
        message: String,
    },
    /// Workers need a tokio runtime.
    #[error("register_handler must be called inside a tokio runtime")]
    NoRuntime,
    /// No task has this id (never added, or completed and its hash gone).
    #[error("no task {0}")]
    NoSuchTask(String),
    /// The lease given is not the task's current one: the attempt it was handed out for is
    /// over (finished, or reaped after its deadline and perhaps claimed again). Nothing was
    /// changed.
    #[error("task {id}: the lease is no longer current (status {status})")]
    StaleLease {
        /// The task.
        id: String,
        /// Its status now.
        status: String,
    },
    /// The storage refused the call.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The seed's task status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting in the queue (or delayed until `run_at`).
    Pending,
    /// Claimed by a worker.
    Processing,
    /// Done.
    Completed,
    /// Dead-lettered after its last attempt.
    Failed,
}

impl TaskStatus {
    /// The seed's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    /// Parses the seed's name of a status.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "pending" => TaskStatus::Pending,
            "processing" => TaskStatus::Processing,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            _ => return None,
        })
    }
}

/// The seed's default priority of a task type: login 10, job_accept and job_reject 8,
/// navigation 7, job_check 5, screenshot 1; any other type 5.
pub fn default_priority(task_type: &str) -> i64 {
    match task_type {
        "login" => 10,
        "job_accept" | "job_reject" => 8,
        "navigation" => 7,
        "job_check" => 5,
        "screenshot" => 1,
        _ => 5,
    }
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Task type (`login`, `job_check`, ...; any other name too).
    pub task_type: String,
    /// The data: a JSON document, stored as a string.
    pub data: String,
    /// Priority; the type's default when `None`. Higher runs first.
    pub priority: Option<i64>,
    /// Run no earlier than this many milliseconds from now.
    pub delay_ms: i64,
    /// Id to use (enqueueing an existing id again does nothing); a new time-ordered id when
    /// `None`.
    pub id: Option<String>,
    /// Attempts before dead-lettering; `scheduler.max_attempts` when `None`.
    pub max_attempts: Option<u32>,
}

impl NewTask {
    /// A task of `task_type` with `data` serialized as JSON.
    pub fn new(task_type: impl Into<String>, data: &impl Serialize) -> Self {
        Self::raw(
            task_type,
            serde_json::to_string(data).unwrap_or_else(|_| "null".into()),
        )
    }

    /// A task whose data is given as JSON text (checked at enqueue).
    pub fn raw(task_type: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            task_type: task_type.into(),
            data: data.into(),
            priority: None,
            delay_ms: 0,
            id: None,
            max_attempts: None,
        }
    }

    /// With this priority.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Delayed by `delay_ms` milliseconds.
    pub fn delay_ms(mut self, delay_ms: i64) -> Self {
        self.delay_ms = delay_ms;
        self
    }

    /// With this id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// With this many attempts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
}

/// A task as stored (the seed's fields and the reliability fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// Id.
    pub id: String,
    /// Type.
    pub task_type: String,
    /// Data (JSON text).
    pub data: String,
    /// Priority.
    pub priority: i64,
    /// Creation time, ISO-8601.
    pub created_at: String,
    /// Status.
    pub status: Option<TaskStatus>,
    /// Attempts so far (this one included, for a claimed task).
    pub attempts: u32,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Last change, ISO-8601.
    pub updated_at: Option<String>,
    /// When a delayed or retried task becomes due, ISO-8601.
    pub run_at: Option<String>,
    /// What a leaseholder's completion reported (JSON text), kept while the completed hash
    /// stays.
    pub result: Option<String>,
}

impl Task {
    fn from_hash(id: &str, h: &HashMap<String, String>) -> Task {
        let get = |f: &str| h.get(f).cloned();
        Task {
            id: get("id").unwrap_or_else(|| id.to_string()),
            task_type: get("type").unwrap_or_default(),
            data: get("data").unwrap_or_default(),
            priority: get("priority").and_then(|p| p.parse().ok()).unwrap_or(0),
            created_at: get("created_at").unwrap_or_default(),
            status: get("status").as_deref().and_then(TaskStatus::parse),
            attempts: get("attempts").and_then(|p| p.parse().ok()).unwrap_or(0),
            last_error: get("last_error"),
            updated_at: get("updated_at"),
            run_at: get("run_at"),
            result: get("result"),
        }
    }
}

/// Counts of the queue's sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Waiting in `PREFIX:tasks:queue`.
    pub pending: u64,
    /// Waiting for their time in `PREFIX:tasks:delayed`.
    pub delayed: u64,
    /// Claimed, in `PREFIX:tasks:processing`.
    pub processing: u64,
    /// Dead letters in `PREFIX:tasks:dead`.
    pub dead: u64,
}

/// Counters of this process's workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulerStats {
    /// Tasks claimed.
    pub claimed: u64,
    /// Completions applied.
    pub completed: u64,
    /// Failed attempts reported.
    pub failed_attempts: u64,
    /// Tasks dead-lettered by this process's script calls.
    pub dead_lettered: u64,
    /// Expired claims returned to the queue by this process's script calls.
    pub reaped: u64,
    /// Handlers running now.
    pub running: u64,
}

/// What a handler returns: `Err(message)` fails the attempt.
pub type HandlerResult = Result<(), String>;
type BoxHandler = Arc<
    dyn Fn(Task) -> Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>> + Send + Sync,
>;

struct HandlerEntry {
    run: BoxHandler,
    concurrency: usize,
    running: AtomicUsize,
}

/// Key names of the queue.
#[derive(Debug, Clone)]
struct QueueKeys {
    queue: String,
    processing: String,
    delayed: String,
    dead: String,
    task_prefix: String,
}

struct Outcome {
    id: String,
    attempt: String,
    error: Option<String>,
    /// The attempt as the archive keeps it (only while a history sink is on).
    record: Option<Box<history::TaskRecord>>,
}

/// A claimed attempt this process runs.
struct Running {
    attempt: String,
    since: Instant,
    /// Set when its handler finished and sent its outcome to the worker.
    reported: AtomicBool,
}

struct Shared {
    storage: Storage,
    settings: SchedulerSettings,
    keys: QueueKeys,
    handlers: RwLock<HashMap<String, Arc<HandlerEntry>>>,
    wake: Notify,
    /// Told of every task this process makes ready (enqueued, retried from the dead letters,
    /// promoted): the claims waiting over HTTP try again at once.
    arrived: Notify,
    stop: Notify,
    stopping: AtomicBool,
    /// Set when a supervised actor runs the worker (the fleet's scheduler): then
    /// `register_handler` spawns nothing.
    supervised: AtomicBool,
    /// Set once `register_handler` started an unsupervised worker (a scheduler outside a fleet).
    worker_started: AtomicBool,
    results_tx: mpsc::UnboundedSender<Outcome>,
    /// Held by the running worker for as long as it runs: a worker that dies (its task aborted
    /// or panicking) hands it back by dropping its guard, and the next one takes it over.
    results_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Outcome>>>,
    inflight: DashMap<String, Running>,
    idle: Notify,
    claimed: AtomicU64,
    completed: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
    reaped: AtomicU64,
    updated_by: String,
    /// Where finished attempts, sessions and events are archived (set once by the fleet).
    history: std::sync::OnceLock<history::HistorySink>,
    /// Leaseholders' operations waiting for a step, and whether one is being sent.
    desk: lease::Desk,
}

/// The scheduler API: a cheap, cloneable handle (`Fleet::scheduler()`).
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// The key prefix of the named queue `name`: `{NAME}`, a hash tag, so that every key of the
/// queue (queue, processing, delayed, dead, task hashes) shares one Cluster slot, and queues
/// of different names land on different slots (and so, spread, on different masters).
pub fn queue_prefix(name: &str) -> String {
    format!("{{{name}}}")
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("queue", &self.shared.keys.queue)
            .finish()
    }
}

impl Scheduler {
    /// A scheduler over `storage` (key names from its [`KeySchema`](crate::storage::KeySchema)).
    /// `updated_by` names this process in `PREFIX:state`.
    pub fn new(storage: Storage, settings: SchedulerSettings, updated_by: &str) -> Self {
        let prefix = storage.keys().prefix().to_string();
        Self::with_prefix(storage, settings, updated_by, &prefix)
    }

    /// A scheduler of the named queue `name`: its keys live under `{NAME}` (see
    /// [`queue_prefix`]), so on Redis Cluster each queue sits in the slot of its name and
    /// several queues spread over the masters. Bot state and sessions stay under the
    /// storage's prefix.
    pub fn for_queue(
        storage: Storage,
        settings: SchedulerSettings,
        updated_by: &str,
        name: &str,
    ) -> Self {
        Self::with_prefix(storage, settings, updated_by, &queue_prefix(name))
    }

    fn with_prefix(
        storage: Storage,
        settings: SchedulerSettings,
        updated_by: &str,
        prefix: &str,
    ) -> Self {
        let keys = QueueKeys {
            queue: format!("{prefix}:tasks:queue"),
            processing: format!("{prefix}:tasks:processing"),
            delayed: format!("{prefix}:tasks:delayed"),
            dead: format!("{prefix}:tasks:dead"),
            task_prefix: format!("{prefix}:task:"),
        };
        // What a claim could hand out twice is shown through an outage, never decided on;
        // a task's own record is state.
        for queue in [&keys.queue, &keys.processing, &keys.delayed, &keys.dead] {
            storage.remember(queue, Remembered::Shared);
        }
        storage.remember(&format!("{}*", keys.task_prefix), Remembered::State);
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(Shared {
                storage,
                settings,
                keys,
                handlers: RwLock::new(HashMap::new()),
                wake: Notify::new(),
                arrived: Notify::new(),
                stop: Notify::new(),
                stopping: AtomicBool::new(false),
                supervised: AtomicBool::new(false),
                worker_started: AtomicBool::new(false),
                results_tx: tx,
                results_rx: Arc::new(tokio::sync::Mutex::new(rx)),
                inflight: DashMap::new(),
                idle: Notify::new(),
                claimed: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                failed_attempts: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                reaped: AtomicU64::new(0),
                updated_by: updated_by.to_string(),
                history: std::sync::OnceLock::new(),
                desk: lease::Desk::default(),
            }),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &SchedulerSettings {
        &self.shared.settings
    }

    /// The storage handle.
    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    /// Archives finished task attempts, the tasks the reaper dead-letters in this process's
    /// steps (their worker died), sessions (at start and at end) and every event into `sink`
    /// from now on. Set once; later calls are ignored.
    pub fn archive_to(&self, sink: history::HistorySink) {
        let _ = self.shared.history.set(sink);
    }

    /// The history sink, when one is on.
    pub(crate) fn history(&self) -> Option<&history::HistorySink> {
        self.shared.history.get().filter(|s| s.is_on())
    }

    fn check(&self, task: &NewTask, now: u64) -> Result<Vec<String>, SchedulerError> {
        let s = &self.shared.settings;
        if task.task_type.is_empty() || task.task_type.len() > MAX_TYPE_BYTES {
            return Err(SchedulerError::InvalidType(task.task_type.clone()));
        }
        if task.data.len() > s.max_data_bytes {
            return Err(SchedulerError::DataTooLarge {
                bytes: task.data.len(),
                max: s.max_data_bytes,
            });
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&task.data)
            .map_err(|e| SchedulerError::DataNotJson(e.to_string()))?;
        if task.delay_ms < 0 || task.delay_ms as u64 > s.max_delay_ms {
            return Err(SchedulerError::InvalidDelay {
                delay_ms: task.delay_ms,
                max: s.max_delay_ms,
            });
        }
        let priority = task
            .priority
            .unwrap_or_else(|| default_priority(&task.task_type));
        if priority.abs() > MAX_PRIORITY {
            return Err(SchedulerError::InvalidPriority(priority));
        }
        if task.max_attempts == Some(0) {
            return Err(SchedulerError::Zero("max_attempts"));
        }
        let id = match &task.id {
            Some(id) => {
                if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_whitespace) {
                    return Err(SchedulerError::InvalidId(id.clone()));
                }
                id.clone()
            }
            None => new_task_id(now),
        };
        let (run_at, run_at_iso) = if task.delay_ms > 0 {
            let at = now + task.delay_ms as u64;
            (at.to_string(), iso8601(at))
        } else {
            ("0".to_string(), String::new())
        };
        Ok(vec![
            id,
            task.task_type.clone(),
            task.data.clone(),
            priority.to_string(),
            run_at,
            run_at_iso,
            task.max_attempts.map(|m| m.to_string()).unwrap_or_default(),
        ])
    }

    /// Enqueues one task; answers its id. Bad input is refused with nothing stored.
    pub async fn enqueue(&self, task: NewTask) -> Result<String, SchedulerError> {
        Ok(self.enqueue_bulk(vec![task]).await?.remove(0))
    }

    /// Enqueues one task; answers its id and whether it was added (false: a task with its id
    /// exists, and nothing changed).
    pub async fn enqueue_new(&self, task: NewTask) -> Result<(String, bool), SchedulerError> {
        let (mut ids, added) = self.enqueue_counted(vec![task]).await?;
        Ok((ids.remove(0), added == 1))
    }

    /// Enqueues many tasks (1,000 per script call); answers their ids in order. Every task is
    /// checked first: one bad task refuses the whole call, nothing stored.
    pub async fn enqueue_bulk(&self, tasks: Vec<NewTask>) -> Result<Vec<String>, SchedulerError> {
        Ok(self.enqueue_counted(tasks).await?.0)
    }

    /// [`Scheduler::enqueue_bulk`], answering how many were added too.
    async fn enqueue_counted(
        &self,
        tasks: Vec<NewTask>,
    ) -> Result<(Vec<String>, i64), SchedulerError> {
        let now = now_ms();
        let mut rows = Vec::with_capacity(tasks.len());
        for task in &tasks {
            rows.push(self.check(task, now)?);
        }
        let ids: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
        let k = &self.shared.keys;
        let iso = iso8601(now);
        let now_text = now.to_string();
        let mut added = 0;
        for chunk in rows.chunks(BULK_CHUNK) {
            let mut args: Vec<&str> = Vec::with_capacity(3 + chunk.len() * 7);
            args.extend([k.task_prefix.as_str(), now_text.as_str(), iso.as_str()]);
            for row in chunk {
                args.extend(row.iter().map(String::as_str));
            }
            // An enqueue that fails on Redis mid-call may have run there, and a worker there
            // (of this process, before the outage was seen, or of another) may have claimed
            // its tasks: run from the fallback too, they would run twice. They stay out of the
            // fallback's queues; the replayed enqueue (which skips an id that exists) leaves
            // them to Redis, where they run once the outage ends.
            let withhold = || {
                let ids: Vec<String> = chunk.iter().map(|row| row[0].clone()).collect();
                vec![
                    Op::ZRem {
                        key: k.queue.clone(),
                        members: ids.clone(),
                    },
                    Op::ZRem {
                        key: k.delayed.clone(),
                        members: ids,
                    },
                ]
            };
            let (reply, _) = self
                .shared
                .storage
                .eval_withholding(
                    &scripts().enqueue,
                    &[&k.queue, &k.delayed],
                    &args,
                    &withhold,
                )
                .await?;
            added += reply.as_int();
        }
        self.shared.wake.notify_one();
        self.shared.arrived.notify_waiters();
        Ok((ids, added))
    }

    /// Cancels a waiting (queued or delayed) task, deleting it: false when it is not waiting
    /// (unknown, processing, completed or dead).
    pub async fn cancel(&self, id: &str) -> Result<bool, SchedulerError> {
        let k = &self.shared.keys;
        self.remove_task(&k.queue, &k.delayed, id).await
    }

    /// `task-cancel`: removes `id` from the sets `a` and `b` and deletes its hash if either
    /// held it; true when one did.
    async fn remove_task(&self, a: &str, b: &str, id: &str) -> Result<bool, SchedulerError> {
        let k = &self.shared.keys;
        let reply = self
            .shared
            .storage
            .eval(&scripts().cancel, &[a, b], &[&k.task_prefix, id])
            .await?;
        Ok(reply.as_int() == 1)
    }

    /// The task `id`, if its hash exists.
    pub async fn get(&self, id: &str) -> Result<Option<Task>, SchedulerError> {
        let key = format!("{}{id}", self.shared.keys.task_prefix);
        let h = self.shared.storage.hgetall(&key).await?;
        Ok((!h.is_empty()).then(|| Task::from_hash(id, &h)))
    }

    /// Ids with `status`: pending in queue order (then the delayed ones by due time),
    /// processing by deadline, failed (dead letters) by time of death, completed (those whose
    /// hash is kept, `scheduler.completed_ttl_secs`) found by `SCAN`.
    pub async fn list(&self, status: TaskStatus) -> Result<Vec<String>, SchedulerError> {
        let st = &self.shared.storage;
        let k = &self.shared.keys;
        let all = |key: &str| {
            let op = Op::ZRangeByScore {
                key: key.to_string(),
                min: f64::NEG_INFINITY,
                max: f64::INFINITY,
                limit: None,
            };
            async move { st.read_known(op).await.map(ids_of) }
        };
        Ok(match status {
            TaskStatus::Pending => {
                let mut ids = all(&k.queue).await?;
                ids.extend(all(&k.delayed).await?);
                ids
            }
            TaskStatus::Processing => all(&k.processing).await?,
            TaskStatus::Failed => all(&k.dead).await?,
            TaskStatus::Completed => {
                let mut ids = Vec::new();
                for key in st.scan(&format!("{}*", k.task_prefix)).await? {
                    if st.hget(&key, "status").await?.as_deref() == Some("completed") {
                        ids.push(key[k.task_prefix.len()..].to_string());
                    }
                }
                ids
            }
        })
    }

    /// At most `limit` ids with `status`, in the order of [`Scheduler::list`], reading no more
    /// of a set than that (for status pages; completed tasks are found by `SCAN` as there).
    pub async fn list_first(
        &self,
        status: TaskStatus,
        limit: usize,
    ) -> Result<Vec<String>, SchedulerError> {
        if status == TaskStatus::Completed {
            let mut ids = self.list(status).await?;
            ids.truncate(limit);
            return Ok(ids);
        }
        let st = &self.shared.storage;
        let k = &self.shared.keys;
        let first = |key: &str, n: usize| {
            let op = Op::ZRangeByScore {
                key: key.to_string(),
                min: f64::NEG_INFINITY,
                max: f64::INFINITY,
                limit: Some((0, n as u64)),
            };
            async move { st.read_known(op).await.map(ids_of) }
        };
        let mut ids = match status {
            TaskStatus::Pending => first(&k.queue, limit).await?,
            TaskStatus::Processing => first(&k.processing, limit).await?,
            _ => first(&k.dead, limit).await?,
        };
        if status == TaskStatus::Pending && ids.len() < limit {
            ids.extend(first(&k.delayed, limit - ids.len()).await?);
        }
        Ok(ids)
    }

    /// Sizes of the queue's sets.
    pub async fn counts(&self) -> Result<QueueCounts, SchedulerError> {
        let st = &self.shared.storage;
        let k = &self.shared.keys;
        let count = |key: &str| {
            let op = Op::ZCard {
                key: key.to_string(),
            };
            async move { st.read_known(op).await.map(|r| r.as_int() as u64) }
        };
        Ok(QueueCounts {
            pending: count(&k.queue).await?,
            delayed: count(&k.delayed).await?,
            processing: count(&k.processing).await?,
            dead: count(&k.dead).await?,
        })
    }

    /// Counters of this process's workers.
    pub fn stats(&self) -> SchedulerStats {
        let s = &self.shared;
        SchedulerStats {
            claimed: s.claimed.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
            reaped: s.reaped.load(Ordering::Relaxed),
            running: s.inflight.len() as u64,
        }
    }

    /// Runs tasks of `task_type` with `handler`, at most `concurrency` at a time in this
    /// process. `Err(message)` (or a panic) fails the attempt: it is retried after a backoff,
    /// dead-lettered after the last attempt. Registering a type again replaces its handler.
    /// The fleet's scheduler runs its worker under the scheduler actor; a scheduler made by
    /// hand (a named queue, a benchmark) starts its own, unsupervised, on first use (inside a
    /// tokio runtime).
    pub fn register_handler<F, Fut>(
        &self,
        task_type: &str,
        concurrency: usize,
        handler: F,
    ) -> Result<(), SchedulerError>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        if task_type.is_empty() || task_type.len() > MAX_TYPE_BYTES {
            return Err(SchedulerError::InvalidType(task_type.to_string()));
        }
        if concurrency == 0 {
            return Err(SchedulerError::Zero("concurrency"));
        }
        let supervised = self.shared.supervised.load(Ordering::Acquire);
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Some(runtime),
            Err(_) if supervised => None,
            Err(_) => return Err(SchedulerError::NoRuntime),
        };
        let run: BoxHandler = Arc::new(move |task| Box::pin(handler(task)));
        self.shared.handlers.write().insert(
            task_type.to_string(),
            Arc::new(HandlerEntry {
                run,
                concurrency,
                running: AtomicUsize::new(0),
            }),
        );
        if let Some(runtime) = runtime.filter(|_| !supervised) {
            if !self.shared.worker_started.swap(true, Ordering::AcqRel) {
                runtime.spawn(worker(self.shared.clone()));
                runtime.spawn(heartbeat(self.shared.clone()));
            }
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Stops claiming, waits up to `deadline` for running handlers and reports their results.
    /// Tasks still running after it go back to the queue when their visibility expires.
    pub async fn stop(&self, deadline: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        self.shared.wake.notify_one();
        self.shared.drained(deadline).await;
    }

    /// Marks this scheduler as run by a supervised actor ([`SchedulerActor`]): from now on
    /// `register_handler` starts no worker of its own.
    pub(crate) fn supervise(&self) {
        self.shared.supervised.store(true, Ordering::Release);
    }

    /// Wakes this process's worker (after tasks were added by other means).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

impl Shared {
    /// The handlers registered now, with their types.
    fn handler_list(&self) -> Vec<(String, Arc<HandlerEntry>)> {
        self.handlers
            .read()
            .iter()
            .map(|(t, h)| (t.clone(), h.clone()))
            .collect()
    }

    /// The slots of this process's handlers, all types together.
    fn slots(&self) -> usize {
        self.handlers.read().values().map(|h| h.concurrency).sum()
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        let s = &self.settings;
        let factor = 1u64 << attempt.saturating_sub(1).min(40);
        s.backoff_base_ms
            .saturating_mul(factor)
            .min(s.backoff_max_ms)
    }

    /// One step: report `call.results`, apply the leased operations, reap, promote, claim up
    /// to `call.caps`.
    async fn step(&self, call: &StepCall<'_>) -> Result<Stepped, StorageError> {
        let k = &self.keys;
        let s = &self.settings;
        let now = now_ms();
        let iso = iso8601(now);
        let total: usize = call
            .caps
            .iter()
            .map(|c| c.1)
            .sum::<usize>()
            .min(call.max.unwrap_or(usize::MAX))
            .min(s.claim_batch);
        let archiving = self.history.get().is_some_and(|s| s.is_on());
        let (done, failed): (Vec<&Outcome>, Vec<&Outcome>) =
            call.results.iter().partition(|o| o.error.is_none());
        let mut args: Vec<String> = Vec::with_capacity(
            15 + call.results.len() * 3
                + call.caps.len() * 2
                + call.leased.len() * 6
                + call.explicit.len()
                + call.tokens.len(),
        );
        args.extend([
            k.task_prefix.clone(),
            now.to_string(),
            iso.clone(),
            call.visibility_ms
                .unwrap_or(s.visibility_timeout_ms)
                .to_string(),
            s.max_attempts.to_string(),
            (s.completed_ttl_secs * 1000).to_string(),
            done.len().to_string(),
            failed.len().to_string(),
            call.caps.len().to_string(),
            total.to_string(),
            s.scan_limit.to_string(),
            call.explicit.len().to_string(),
            call.leased.len().to_string(),
            call.tokens.len().to_string(),
            if archiving { "1" } else { "0" }.to_string(),
        ]);
        for o in &done {
            args.push(o.id.clone());
            args.push(o.attempt.clone());
        }
        for o in &failed {
            let attempt: u32 = o.attempt.parse().unwrap_or(1);
            let at = now + self.backoff_ms(attempt);
            args.push(o.id.clone());
            args.push(o.attempt.clone());
            args.push(o.error.clone().unwrap_or_default());
            args.push(at.to_string());
            args.push(iso8601(at));
        }
        for op in call.leased {
            args.extend(op.args());
        }
        for (ty, cap) in call.caps {
            args.push(ty.clone());
            args.push(cap.to_string());
        }
        args.extend(call.explicit.iter().cloned());
        args.extend(call.tokens.iter().cloned());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let hashes: Vec<String> = call
            .leased
            .iter()
            .map(|op| format!("{}{}", k.task_prefix, op.id()))
            .collect();
        let mut keys: Vec<&str> = vec![&k.queue, &k.processing, &k.delayed, &k.dead];
        keys.extend(hashes.iter().map(String::as_str));
        let reply = self.storage.eval(&scripts().step, &keys, &arg_refs).await?;
        let Reply::Array(mut parts) = reply else {
            return Err(StorageError::Command("task-step: unexpected reply".into()));
        };
        if parts.len() != 7 {
            return Err(StorageError::Command("task-step: unexpected reply".into()));
        }
        let leased_fields = parts.pop().map(Reply::into_strings).unwrap_or_default();
        let buried_fields = parts.pop().map(Reply::into_strings).unwrap_or_default();
        let claimed_fields = parts.pop().map(Reply::into_strings).unwrap_or_default();
        self.completed
            .fetch_add(parts[0].as_int() as u64, Ordering::Relaxed);
        self.dead_lettered
            .fetch_add(parts[1].as_int() as u64, Ordering::Relaxed);
        self.reaped
            .fetch_add(parts[2].as_int() as u64, Ordering::Relaxed);
        self.failed_attempts
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        let tasks: Vec<(Task, u32)> = claimed_fields
            .chunks_exact(7)
            .map(|f| {
                let task = Task {
                    id: f[0].clone(),
                    task_type: f[1].clone(),
                    data: f[2].clone(),
                    priority: f[3].parse().unwrap_or(0),
                    created_at: f[5].clone(),
                    status: Some(TaskStatus::Processing),
                    attempts: f[4].parse().unwrap_or(1),
                    last_error: None,
                    updated_at: Some(iso.clone()),
                    run_at: None,
                    result: None,
                };
                // The attempt that dead-letters the task: its own max_attempts or the default.
                (task, f[6].parse().unwrap_or(s.max_attempts))
            })
            .collect();
        self.claimed
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let leased = lease::LeasedReply::parse_all(leased_fields);
        for (op, reply) in call.leased.iter().zip(&leased) {
            if reply.code == 1 && matches!(op, lease::LeasedOp::Fail { .. }) {
                self.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
        if s.completed_ttl_secs == 0 {
            // The completions just applied deleted their hashes: the last-known copy forgets
            // them now instead of reading each back to find it gone.
            let gone: Vec<String> = call
                .leased
                .iter()
                .zip(&leased)
                .filter(|(op, reply)| {
                    reply.code == 1 && matches!(op, lease::LeasedOp::Complete { .. })
                })
                .map(|(op, _)| format!("{}{}", k.task_prefix, op.id()))
                .collect();
            if !gone.is_empty() {
                self.storage.note_deleted(gone.iter().map(String::as_str));
            }
        }
        if archiving {
            self.archive_leased(call.leased, &leased, now as i64);
        }
        // Only while a sink is on: the reply carries these tasks anyway (rarely any).
        let buried = if archiving {
            buried_fields
                .chunks_exact(8)
                .map(|f| reaped_record(f, now as i64))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Stepped {
            claimed: tasks,
            buried,
            leased,
        })
    }

    fn spawn_handler(self: &Arc<Self>, task: Task, limit: u32, entry: Arc<HandlerEntry>) {
        let attempt = task.attempts.to_string();
        let id = task.id.clone();
        let mut record = self
            .history
            .get()
            .filter(|s| s.is_on())
            .map(|_| Box::new(archived_attempt(&task, limit)));
        self.inflight.insert(
            id.clone(),
            Running {
                attempt: attempt.clone(),
                since: Instant::now(),
                reported: AtomicBool::new(false),
            },
        );
        let shared = self.clone();
        tokio::spawn(async move {
            let fut = (entry.run)(task);
            let result = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(message)) => Some(message),
                Err(_) => Some("handler panicked".to_string()),
            };
            entry.running.fetch_sub(1, Ordering::AcqRel);
            if let Some(r) = record.as_mut() {
                r.finished_ms = now_ms() as i64;
            }
            if let Some(running) = shared.inflight.get(&id) {
                running.reported.store(true, Ordering::Release);
            }
            let _ = shared.results_tx.send(Outcome {
                id,
                attempt,
                error,
                record,
            });
        });
    }
}

/// What a step that succeeded brought back.
struct Stepped {
    /// The tasks claimed, each with the attempt that dead-letters it.
    claimed: Vec<(Task, u32)>,
    /// The archive's records of the tasks the reaper dead-lettered in this step (empty unless
    /// a history sink is on).
    buried: Vec<history::TaskRecord>,
    /// What became of each leased operation, in order.
    leased: Vec<lease::LeasedReply>,
}

/// What one step carries: this process's results and free slots, and the operations and
/// claims of leaseholders (workers outside the process). `Default` is an empty step (it still
/// reaps and promotes).
#[derive(Default)]
struct StepCall<'a> {
    /// Finished attempts of this process's handlers.
    results: &'a [Outcome],
    /// Free slots per type (`*`: any type no other entry names).
    caps: &'a [(String, usize)],
    /// Ids to claim (outside Redis), instead of the head of the queue.
    explicit: &'a [String],
    /// Operations of leaseholders, checked against the lease each names.
    leased: &'a [lease::LeasedOp],
    /// Lease tokens of the tasks claimed, one per task (claims over HTTP); none for this
    /// process's handlers.
    tokens: &'a [String],
    /// Visibility timeout of the tasks claimed; `scheduler.visibility_timeout_ms` when `None`.
    visibility_ms: Option<u64>,
    /// Claim at most this many (and never more than `scheduler.claim_batch`).
    max: Option<usize>,
}

impl Shared {
    /// Waits up to `deadline` for the worker to end (nothing running, all reported); at once
    /// when no worker runs.
    async fn drained(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            // A running worker holds the receiver until it exits.
            if self.results_rx.try_lock().is_ok() {
                return;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return;
            }
        }
    }

    /// Hands the finished attempts of a step that succeeded to the history sink: `completed`,
    /// `failed` (retried later) or `dead` (its last attempt).
    fn archive_results(&self, results: &mut [Outcome]) {
        let Some(sink) = self.history.get() else {
            return;
        };
        for o in results.iter_mut() {
            let Some(mut record) = o.record.take() else {
                continue;
            };
            record.error = o.error.clone();
            record.status = match &o.error {
                None => history::task_status::COMPLETED,
                Some(_) if record.status == history::task_status::DEAD => {
                    history::task_status::DEAD
                }
                Some(_) => history::task_status::FAILED,
            }
            .to_string();
            sink.record(history::Record::Task(*record));
        }
    }

    /// Hands the tasks the reaper dead-lettered in a step that succeeded to the history sink.
    /// Their worker is gone (or lost its claim), so no handler reports them: whichever process
    /// ran the step archives them, once, as the step's reply names each only once.
    fn archive_buried(&self, buried: Vec<history::TaskRecord>) {
        let Some(sink) = self.history.get() else {
            return;
        };
        for record in buried {
            sink.record(history::Record::Task(record));
        }
    }
}

/// The archive's record of a task the reaper dead-lettered, from the eight fields the step
/// script answers for it (id, attempt, type, data, priority, created_at, claimed_at, error):
/// status `dead`, started when that attempt was claimed (to the second, as `updated_at` keeps
/// it; `finished_ms` when unknown), finished at the step's clock.
fn reaped_record(f: &[String], finished_ms: i64) -> history::TaskRecord {
    let started_ms = crate::clock::parse_ms(&f[6]).map_or(finished_ms, |t| t.min(finished_ms));
    history::TaskRecord {
        id: f[0].clone(),
        attempt: f[1].parse().unwrap_or(0),
        task_type: f[2].clone(),
        data: f[3].clone(),
        priority: f[4].parse().unwrap_or(0),
        status: history::task_status::DEAD.to_string(),
        error: Some(f[7].clone()),
        created_at: f[5].clone(),
        started_ms,
        finished_ms,
    }
}

/// The archive's record of a claimed attempt; `status` says `dead` when this is the last
/// attempt (it becomes `completed` if the handler succeeds), finish time set when it ends.
fn archived_attempt(task: &Task, limit: u32) -> history::TaskRecord {
    let now = now_ms() as i64;
    history::TaskRecord {
        id: task.id.clone(),
        attempt: i64::from(task.attempts),
        task_type: task.task_type.clone(),
        data: task.data.clone(),
        priority: task.priority,
        status: if task.attempts >= limit {
            history::task_status::DEAD
        } else {
            history::task_status::FAILED
        }
        .to_string(),
        error: None,
        created_at: task.created_at.clone(),
        started_ms: now,
        finished_ms: now,
    }
}

/// A step the worker sent, with what it carried: its results (kept for the next step when
/// it fails) and the slots per type it may claim (reserved until it answers).
struct SentStep {
    results: Vec<Outcome>,
    reserved: Vec<(String, usize)>,
    outcome: Result<Stepped, StorageError>,
}

/// The worker loop of a process: up to [`STEPS_IN_FLIGHT`] steps at once while Redis serves
/// (one outside it), each carrying every finished result gathered since the last. Returns once
/// stopping with nothing running, nothing in flight and everything reported.
///
/// A worker that died (a panic) may have taken results off the channel without reporting
/// them: the next one forgets the attempts whose handlers reported and whose results it does
/// not find, so that the heartbeat stops extending them; their visibility expires and the
/// reaper queues them again.
async fn worker(shared: Arc<Shared>) {
    let mut rx = Arc::clone(&shared.results_rx).lock_owned().await;
    let poll = Duration::from_millis(shared.settings.poll_interval_ms.max(1));
    let mut results: Vec<Outcome> = Vec::new();
    while let Ok(o) = rx.try_recv() {
        results.push(o);
    }
    shared.inflight.retain(|id, running| {
        !running.reported.load(Ordering::Acquire) || results.iter().any(|o| o.id == *id)
    });
    // Answered in the order they were sent, so that claims start in queue order.
    let mut steps = futures::stream::FuturesOrdered::new();
    // Slots per type that the steps in flight may still claim.
    let mut reserved: HashMap<String, usize> = HashMap::new();
    // The last step found nothing to do: claim again only after a result, a wake-up or the
    // poll interval.
    let mut idle = false;
    // The last step claimed tasks, so the queue likely holds more: a second step may claim
    // beside one in flight. (Otherwise a second step only carries results, so that a worker
    // that finds nothing polls with one call.)
    let mut found = false;
    // After a failed step, the next is sent no sooner than this.
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        fault::point("scheduler");
        if !shared.inflight.is_empty() {
            // Handlers that are ready to finish do so before a step is built, so that it
            // carries their results and refills their slots in one call.
            tokio::task::yield_now().await;
        }
        while results.len() < MAX_RESULTS_PER_STEP {
            match rx.try_recv() {
                Ok(o) => results.push(o),
                Err(_) => break,
            }
        }
        let stopping = shared.stopping.load(Ordering::Acquire);
        if stopping && results.is_empty() && shared.inflight.is_empty() && steps.is_empty() {
            break;
        }
        // Outside Redis, claims name their tasks, so that their replay claims the same ones:
        // one step at a time, as two could name the same.
        let outside = matches!(shared.storage.mode(), Mode::Degraded | Mode::Resyncing);
        let limit = if outside || shared.slots() < TWO_STEPS_FROM_SLOTS {
            1
        } else {
            STEPS_IN_FLIGHT
        };
        if retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            // A step failed a moment ago: wait (below) before the next.
        } else {
            retry_at = None;
            while steps.len() < limit {
                let claims = !(stopping || idle) && (steps.is_empty() || found);
                let beside = !steps.is_empty();
                let built =
                    next_step(&shared, &mut results, &mut reserved, claims, limit, beside).await;
                let Some(step) = built else { break };
                steps.push_back(step);
            }
        }
        tokio::select! {
            Some(sent) = steps.next(), if !steps.is_empty() => {
                let end = finish_step(&shared, sent, &mut results, &mut reserved);
                found = end == StepEnd::Claimed;
                match end {
                    StepEnd::Claimed | StepEnd::Reported => idle = false,
                    StepEnd::Idle => idle = true,
                    StepEnd::Failed => retry_at = Some(tokio::time::Instant::now() + poll),
                }
            }
            // Results are awaited only while another step could go; otherwise each would wake
            // this loop ahead of the handlers still to finish, and the next step would carry
            // fewer of them.
            o = rx.recv(), if steps.len() < limit => match o {
                Some(o) => {
                    results.push(o);
                    idle = false;
                }
                None => break,
            },
            _ = shared.stop.notified() => idle = false,
            _ = shared.wake.notified() => idle = false,
            // A step in flight wakes the loop when it answers (its own timeout bounds it).
            _ = tokio::time::sleep(poll), if steps.is_empty() => idle = false,
        }
    }
    drop(rx);
    shared.idle.notify_waiters();
}

/// How a step the worker sent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    /// It claimed tasks.
    Claimed,
    /// It claimed none, and carried results.
    Reported,
    /// It found nothing to do.
    Idle,
    /// It failed; its results wait for the next step.
    Failed,
}

/// Builds the worker's next step: the results gathered so far, and claims for the free slots
/// of each type that no step in flight has reserved (with `limit` steps in flight, at most
/// `1/limit` of all the slots per step, so that each step refills its share while the other
/// runs). `None` when it would carry nothing.
async fn next_step(
    shared: &Arc<Shared>,
    results: &mut Vec<Outcome>,
    reserved: &mut HashMap<String, usize>,
    claims: bool,
    limit: usize,
    beside: bool,
) -> Option<futures::future::BoxFuture<'static, SentStep>> {
    let handlers = shared.handler_list();
    let slots: usize = handlers.iter().map(|(_, h)| h.concurrency).sum();
    let per_step = if limit > 1 {
        slots.div_ceil(limit).max(1)
    } else {
        usize::MAX
    };
    let mut caps: Vec<(String, usize)> = if claims {
        handlers
            .iter()
            .map(|(t, h)| {
                let free = h
                    .concurrency
                    .saturating_sub(h.running.load(Ordering::Acquire))
                    .saturating_sub(reserved.get(t).copied().unwrap_or(0));
                (t.clone(), free)
            })
            .filter(|c| c.1 > 0)
            .collect()
    } else {
        Vec::new()
    };
    // Outside Redis, claims name their tasks, so that their replay claims the same ones.
    let mut explicit = Vec::new();
    if !caps.is_empty() {
        if let Some(ids) = shared.local_ids().await {
            explicit = ids;
            if explicit.is_empty() {
                caps.clear();
            }
        }
    }
    if results.is_empty() && caps.is_empty() {
        return None;
    }
    let reserve: Vec<(String, usize)> = caps
        .iter()
        .map(|(t, free)| (t.clone(), (*free).min(per_step)))
        .collect();
    let claimable = reserve.iter().map(|r| r.1).sum::<usize>().min(per_step);
    let unreserved = slots.saturating_sub(reserved.values().sum());
    if beside && results.len() < per_step && claimable < per_step.min(unreserved) {
        // Beside a step in flight, only a full share (or every slot the other left): each
        // call has a fixed cost to Redis, and smaller steps cost it more per task than the
        // overlap saves, so they wait for the step in flight to answer.
        return None;
    }
    for (t, n) in &reserve {
        *reserved.entry(t.clone()).or_default() += n;
    }
    let carried = std::mem::take(results);
    let shared = shared.clone();
    Some(Box::pin(async move {
        let call = StepCall {
            results: &carried,
            caps: &caps,
            explicit: &explicit,
            max: (per_step != usize::MAX).then_some(per_step),
            ..StepCall::default()
        };
        let outcome = shared.step(&call).await;
        SentStep {
            results: carried,
            reserved: reserve,
            outcome,
        }
    }))
}

/// Takes a step's answer: its reservation released, its results forgotten (archived) and
/// handlers spawned for its claims; when it failed, its results go back in front of `results`
/// for the next step.
fn finish_step(
    shared: &Arc<Shared>,
    sent: SentStep,
    results: &mut Vec<Outcome>,
    reserved: &mut HashMap<String, usize>,
) -> StepEnd {
    let SentStep {
        results: mut carried,
        reserved: reserve,
        outcome,
    } = sent;
    for (t, n) in &reserve {
        if let Some(held) = reserved.get_mut(t) {
            *held = held.saturating_sub(*n);
        }
    }
    let Stepped {
        claimed: tasks,
        buried,
        ..
    } = match outcome {
        Ok(stepped) => stepped,
        Err(e) => {
            tracing::warn!(actor = "scheduler", error = %e, "task step failed; retrying");
            // A step applies each result once, so sending them again is safe.
            carried.append(results);
            *results = carried;
            return StepEnd::Failed;
        }
    };
    for o in &carried {
        shared.inflight.remove(&o.id);
    }
    shared.archive_results(&mut carried);
    shared.archive_buried(buried);
    shared.idle.notify_waiters();
    if tasks.is_empty() {
        return if carried.is_empty() {
            StepEnd::Idle
        } else {
            StepEnd::Reported
        };
    }
    let handlers = shared.handler_list();
    for (task, limit) in tasks {
        // A handler of the type, else the catch-all `*` (the script claims for `*` only types
        // no other handler names).
        let entry = handlers
            .iter()
            .find(|(t, _)| *t == task.task_type)
            .or_else(|| handlers.iter().find(|(t, _)| t == ANY_TYPE))
            .map(|(_, h)| h.clone());
        match entry {
            Some(entry) => {
                entry.running.fetch_add(1, Ordering::AcqRel);
                shared.spawn_handler(task, limit, entry);
            }
            // Unreachable: the script claims only types given in `caps`.
            None => {
                tracing::error!(actor = "scheduler", id = %task.id, "claimed a task without handler")
            }
        }
    }
    StepEnd::Claimed
}

/// Extends the visibility deadline of the tasks this process runs, every third of the timeout.
async fn heartbeat(shared: Arc<Shared>) {
    let vis = shared.settings.visibility_timeout_ms.max(3);
    let every = Duration::from_millis(vis / 3);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stop.notified() => {}
        }
        if shared.stopping.load(Ordering::Acquire) && shared.inflight.is_empty() {
            return;
        }
        let held: Vec<(String, String)> = shared
            .inflight
            .iter()
            .filter(|e| e.value().since.elapsed() >= every)
            .map(|e| (e.key().clone(), e.value().attempt.clone()))
            .collect();
        for chunk in held.chunks(500) {
            let deadline = (now_ms() + vis).to_string();
            let mut args = vec![shared.keys.task_prefix.as_str(), deadline.as_str()];
            for (id, attempt) in chunk {
                args.push(id);
                args.push(attempt);
            }
            if let Err(e) = shared
                .storage
                .eval(&scripts().extend, &[&shared.keys.processing], &args)
                .await
            {
                tracing::warn!(actor = "scheduler", error = %e, "extending visibility failed");
            }
        }
    }
}

/// The scheduler's place in the actor tree: runs this process's worker, its visibility
/// heartbeat and the periodic jobs as supervised tasks on the host runtime.
///
/// Each incarnation starts afresh (the `stopping` flag cleared), so a restart resumes claiming
/// and the periodic jobs. When the tree stops it, it stops claiming and lets the running
/// handlers finish and report, up to its drain deadline, before it stops (and so aborts the
/// periodic jobs); a failure stops it at once.
#[derive(Debug)]
pub(crate) struct SchedulerActor {
    scheduler: Scheduler,
    periodic: periodic::Periodic,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
    drain: Duration,
    draining: bool,
}

impl SchedulerActor {
    /// The actor for `scheduler` and its periodic jobs, running them on `runtime` for the
    /// incarnation `child`; an orderly stop waits up to `drain` for running handlers.
    pub fn new(
        scheduler: Scheduler,
        periodic: periodic::Periodic,
        runtime: tokio::runtime::Handle,
        child: ChildContext,
        drain: Duration,
    ) -> Self {
        Self {
            scheduler,
            periodic,
            runtime,
            child,
            drain,
            draining: false,
        }
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = &self.scheduler.shared;
        shared.stopping.store(false, Ordering::Release);
        self.child
            .spawn_task(ctx, "worker", &self.runtime, worker(shared.clone()));
        self.child.spawn_task(
            ctx,
            "visibility heartbeat",
            &self.runtime,
            heartbeat(shared.clone()),
        );
        self.child
            .spawn_task(ctx, "periodic jobs", &self.runtime, self.periodic.run());
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> actix::Running {
        if self.draining || !self.child.stop_requested() {
            // A failure, or the drain is over: the tasks are aborted with the context.
            return actix::Running::Stop;
        }
        self.draining = true;
        let shared = self.scheduler.shared.clone();
        shared.stopping.store(true, Ordering::Release);
        shared.stop.notify_waiters();
        shared.wake.notify_one();
        let drain = self.drain;
        let drained = self
            .runtime
            .spawn(async move { shared.drained(drain).await });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(drained).map(|_, _, ctx| ctx.stop()));
        actix::Running::Continue
    }
}

/// The members of a `ZRANGEBYSCORE ... WITHSCORES` reply.
fn ids_of(reply: Reply) -> Vec<String> {
    reply.into_scored().into_iter().map(|(m, _)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(claimed_at: &str) -> Vec<String> {
        [
            "a",
            "3",
            "t",
            "{}",
            "-2",
            "2025-09-28T05:15:00Z",
            claimed_at,
            "visibility timeout expired",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_task_the_reaper_buried_is_archived_dead_from_its_claim_to_the_step() {
        let finished = 1_759_036_514_250;
        let r = reaped_record(&fields("2025-09-28T05:15:10Z"), finished);
        assert_eq!(
            r,
            history::TaskRecord {
                id: "a".into(),
                attempt: 3,
                task_type: "t".into(),
                data: "{}".into(),
                priority: -2,
                status: history::task_status::DEAD.into(),
                error: Some("visibility timeout expired".into()),
                created_at: "2025-09-28T05:15:00Z".into(),
                started_ms: 1_759_036_510_000,
                finished_ms: finished,
            }
        );
        // No claim time (a hash written by an outside client), or one after the step's clock.
        assert_eq!(reaped_record(&fields(""), finished).started_ms, finished);
        let later = reaped_record(&fields("2025-09-28T05:16:00Z"), finished);
        assert_eq!(later.started_ms, finished);
    }
}
