//! The history archive: what leaves Redis (TTLs, the capped `PREFIX:events`, completed task
//! hashes that expire), kept in SQL so that it outlives them.
//!
//! Owns: the archive database (SQLite by default, a file in `history.dir` needing no server;
//! PostgreSQL with `history.url = "postgres://..."`), its schema ([`archive::MIGRATIONS`]),
//! the bounded queue and the batch writer task (`writer.rs`), and the spool file of batches
//! waiting for an unreachable database (`spool.rs`). It lives under `actors/` because its
//! producers do (the scheduler and the hazard ticker hold its sink); it never touches
//! `Storage`. In a fleet the writer is the supervised task of the `HistoryWriter` actor (the
//! child `history`, `actor.rs`): a panic, error or return of the writer fails the actor, which
//! is restarted and resumes from the same queue (`writer.rs` tells what a restart keeps).
//!
//! ```text
//!  scheduler worker ──Task (attempt finished, ──┐
//!                      or buried by the reaper)  │
//!  start/end_session ──Session───────────────────┤   bounded mpsc         batch writer task
//!  record_event ──Event (as pushed)──────────────┼─► (queue_capacity) ─► size/time batches ─► SQLite | PostgreSQL
//!  hazard ticker ──HazardRound, HazardSeed───────┤   full: dropped++          │ unreachable
//!  Hazards::settle ──Settlement──────────────────┘                            ▼
//!                                  storage.fallback = "file": spool.log (synced, acknowledged)
//!                                  "memory": the batch waits in memory, the queue fills
//! ```
//!
//! Accepts: [`Record`]s through a [`HistorySink`]. `HistorySink::record` never waits: it puts
//! the record in the queue (`history.queue_capacity`) or counts it as dropped (one WARN per
//! 10,000 drops).
//!
//! # Where records come from
//!
//! - Tasks: once per `(id, attempt)`, when an attempt reaches `completed`, `failed` (retried
//!   later) or `dead` (its last attempt). The scheduler's worker builds the record when it
//!   spawns a handler (only while a sink is on) and hands it over once the `task-step` call
//!   that reported the result succeeded. A task the reaper dead-letters (its last attempt's
//!   deadline expired: the worker died, or lost its claim) has no handler left to report it:
//!   the step's reply lists each such task with its attempt, type, data, priority,
//!   `created_at` and claim time, and the process whose step buried it archives it as `dead`
//!   with the error `visibility timeout expired`.
//! - Sessions: `start_session` archives the fields it wrote; `end_session` reads the whole
//!   hash on a spawned task and archives it.
//! - Events: `record_event` archives the event after the script pushed it.
//! - Hazard rounds and seeds: the ticker archives each tick it wrote, and the revealed seed of
//!   the previous epoch whenever it prepares an epoch (also when an earlier leader revealed
//!   it).
//! - Settlements: `Hazards::settle` archives the settled round once the rotated record is
//!   stored (a settle that fails archives nothing).
//!
//! Known limits: an attempt the reaper returns to the queue (not its last) is not archived, as
//! the task is not finished; when a worker that lost its claim finishes the last attempt after
//! the reaper buried it, the archive keeps the reaper's `dead` row (the first for that key),
//! even if the late completion completes the task in Redis; a task buried only by the outbox's
//! replay of a step recorded during a Redis outage is not archived (replies of replays are not
//! read).
//!
//! # Queries and retention
//!
//! [`History`] (`Fleet::history()`) lists sessions, task attempts, events, hazard rounds and
//! players' settlements ([`History::sessions`], [`History::tasks`], [`History::events`],
//! [`History::rounds`], [`History::settlements`]) by a [`HistoryQuery`]: a time range
//! (`since_ms` inclusive, `until_ms` exclusive), a page size and a keyset cursor (the time and
//! key of the page's last row, `next_cursor`). Pages run newest to oldest, and a row inserted
//! meanwhile never shifts them. Events filter by session, settlements by user and agent (either or both).
//! [`History::reader`] opens the archive for queries only (no writer, the spool left alone):
//! `botfleet history sessions|tasks|events|rounds|settlements` uses it, without a daemon.
//!
//! With `history.retention_days` above 0 the fleet registers the periodic job
//! [`RETENTION_JOB`] every `history.retention_interval_secs`: once per period across the
//! fleet, it deletes the rows of every table older than the retention.
//!
//! Fails: a malformed URL at start-up ([`HistoryError::Url`]); an unreachable database is not
//! an error for the writers: batches wait (in the spool with `storage.fallback = "file"`, in
//! memory otherwise) and are written when it returns, each record once thanks to its key.
//! Queries fail with [`HistoryError::Database`] while it is unreachable.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`History`], [`HistorySink`], [`HistoryError`], the transient-error classification |
//! | [`record`] | one record type per table, [`Record`], [`HistoryQuery`], [`Page`] |
//! | [`archive`] | [`Archive`]: the sqlx pool, the schema, batch inserts, paged queries, purge |
//! | `actor.rs` | `HistoryWriter`, the actor whose supervised task the writer is |
//! | `writer.rs` | the batch writer task, and the parts it hands back |
//! | `spool.rs` | the spool file of batches waiting for the database |

mod actor;
pub mod archive;
pub mod record;
mod spool;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, Notify, OnceCell};

pub(crate) use actor::HistoryWriter;
pub use archive::Archive;
pub use record::{
    task_status, EventRecord, HazardRoundRecord, HazardSeedRecord, HistoryQuery, Page, Record,
    SessionRecord, SettlementRecord, TaskRecord, MAX_PAGE,
};

use crate::clock::now_ms;
use crate::settings::{FallbackKind, HistorySettings};

/// Name of the periodic retention job (`NAME-lock`, `NAME-last-run` in storage).
pub const RETENTION_JOB: &str = "history-retention";
/// A day, in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// Why the archive could not be opened or queried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// `history.url` is neither `sqlite:` nor `postgres://` (shown without its password).
    #[error("history.url: expected sqlite://PATH or postgres://USER@HOST/DB, got {0:?}")]
    Url(String),
    /// The history is not enabled (`history.enabled = false`).
    #[error("the history archive is off (history.enabled = false)")]
    Disabled,
    /// A cursor that no page answered.
    #[error("invalid history cursor {0:?}")]
    Cursor(String),
    /// A reader found no archive: the SQLite file does not exist (nothing archived yet, or
    /// `[history]` points elsewhere).
    #[error("no history archive at {0}")]
    Missing(String),
    /// A file could not be created or read.
    #[error("history file: {0}")]
    Io(String),
    /// The database failed or is unreachable.
    #[error("history database: {0}")]
    Database(String),
}

impl From<sqlx::Error> for HistoryError {
    fn from(e: sqlx::Error) -> Self {
        HistoryError::Database(e.to_string())
    }
}

fn redacted(url: &str) -> String {
    crate::settings::redact_url(url)
}

/// Whether a failed write may succeed later unchanged: the database is unreachable, shutting
/// down, out of resources, or (SQLite) busy. Anything else is a refusal of the data.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL SQLSTATE classes 08 (connection), 53 (resources), 57 (operator
            // intervention: shutdown, admin command), 40 (serialization, deadlock); SQLite
            // BUSY (5) and LOCKED (6) with their extended codes.
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.len() == 5 && code.starts_with(class))
                || matches!(code.parse::<i64>(), Ok(n) if n & 0xff == 5 || n & 0xff == 6)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The writer's counters, shared with the handles.
#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    acknowledged: AtomicU64,
    spooled: AtomicU64,
    pending: AtomicU64,
    rejected: AtomicU64,
    lost: AtomicU64,
    batches: AtomicU64,
    reachable: AtomicBool,
}

/// The archive's counters (`Fleet::history().stats()`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryStats {
    /// Whether records are archived.
    pub enabled: bool,
    /// `sqlite` or `postgres` (empty when off).
    pub backend: String,
    /// Records accepted into the queue.
    pub submitted: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Records stored in the database (spooled ones included once replayed).
    pub written: u64,
    /// Records that can no longer be lost: stored in the database or synced to the spool.
    pub acknowledged: u64,
    /// Records waiting in the spool for the database.
    pub spooled: u64,
    /// Records waiting in memory for the database.
    pub pending: u64,
    /// Records the database refused for good (logged).
    pub rejected: u64,
    /// Records lost at shutdown with the database unreachable and no spool.
    pub lost: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Whether the last attempt reached the database.
    pub reachable: bool,
    /// The last database error seen.
    pub last_error: Option<String>,
}

/// The hook the producers hold: [`HistorySink::record`] never waits and never fails. A sink of
/// a disabled history (or [`HistorySink::off`]) ignores records.
#[derive(Clone, Default)]
pub struct HistorySink {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for HistorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistorySink")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl HistorySink {
    /// A sink that ignores records.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Whether records go anywhere (producers skip building them otherwise).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `record` for the writer, or counts it dropped when the queue is full.
    pub fn record(&self, record: Record) {
        let Some(inner) = &self.inner else {
            return;
        };
        match inner.tx.try_send(record) {
            Ok(()) => {
                inner.counters.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let dropped = inner.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One warning per 10,000 drops: a full queue must not flood the log.
                if dropped % 10_000 == 1 {
                    tracing::warn!(
                        actor = "history",
                        dropped,
                        "history queue full: records dropped"
                    );
                }
            }
        }
    }
}

struct Inner {
    settings: HistorySettings,
    archive: Archive,
    tx: mpsc::Sender<Record>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    schema: OnceCell<i64>,
    stopping: AtomicBool,
    /// Set by the `HistoryWriter` actor's stop: the writer ends after the batch in hand and
    /// hands its parts back.
    handback: AtomicBool,
    /// Wakes the writer for `stopping` and `handback`.
    stop: Notify,
    progress: Notify,
    /// The writer's parts (queue receiver, spool, batches waiting in memory) while no writer
    /// holds them: between two incarnations of the actor, and for `close`.
    parts: Mutex<Option<writer::Parts>>,
    /// Notified when a writer hands its parts back.
    returned: Notify,
    /// The writer task of a history opened with [`History::open`] (no actor).
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    fn new(settings: &HistorySettings, archive: Archive, tx: mpsc::Sender<Record>) -> Self {
        let counters = Counters::default();
        counters.reachable.store(true, Ordering::Relaxed);
        Inner {
            settings: settings.clone(),
            archive,
            tx,
            counters,
            last_error: Mutex::new(None),
            schema: OnceCell::new(),
            stopping: AtomicBool::new(false),
            handback: AtomicBool::new(false),
            stop: Notify::new(),
            progress: Notify::new(),
            parts: Mutex::new(None),
            returned: Notify::new(),
            writer: Mutex::new(None),
        }
    }

    /// Migrates the schema once per process (tried again after a failure).
    async fn schema(&self) -> Result<i64, HistoryError> {
        self.schema
            .get_or_try_init(|| self.archive.migrate())
            .await
            .copied()
    }
}

/// The archive handle: queries, counters, retention. Cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("backend", &self.inner.as_ref().map(|i| i.archive.backend()))
            .finish()
    }
}

impl History {
    /// A history that is off: its sink ignores records, its queries answer
    /// [`HistoryError::Disabled`].
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Opens the archive of `settings` and starts its writer as a plain task on the current
    /// tokio runtime (disabled when `history.enabled` is false), for a history used without a
    /// fleet: nothing restarts that task. With `fallback` = file, batches wait in the spool in
    /// `history.dir` while the database is unreachable; batches an earlier process left there
    /// are written first. The database is not contacted here: an unreachable one delays the
    /// writes, never the start.
    pub fn open(
        settings: &HistorySettings,
        fallback: FallbackKind,
    ) -> Result<History, HistoryError> {
        let history = Self::open_supervised(settings, fallback)?;
        if let Some(inner) = &history.inner {
            *inner.writer.lock() = Some(tokio::spawn(writer::standalone(inner.clone())));
        }
        Ok(history)
    }

    /// Opens the archive as [`History::open`] does, without starting its writer: a
    /// `HistoryWriter` actor runs it, in the supervision tree (the fleet declares it as the
    /// child `history`). Records queue until the actor starts.
    pub fn open_supervised(
        settings: &HistorySettings,
        fallback: FallbackKind,
    ) -> Result<History, HistoryError> {
        if !settings.enabled {
            return Ok(Self::disabled());
        }
        let archive = Archive::open(settings)?;
        let spool_path = Path::new(&settings.dir);
        let spool = if fallback == FallbackKind::File || spool_path.join("spool.log").exists() {
            let spool = spool::Spool::open(spool_path)
                .map_err(|e| HistoryError::Io(format!("{}: {e}", spool_path.display())))?;
            Some(spool)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let inner = Arc::new(Inner::new(settings, archive, tx));
        if let Some(spool) = &spool {
            inner
                .counters
                .spooled
                .store(spool.records(), Ordering::Relaxed);
        }
        *inner.parts.lock() = Some(writer::Parts {
            rx,
            spool: spool.map(|s| Arc::new(Mutex::new(s))),
            pending: Default::default(),
        });
        Ok(History { inner: Some(inner) })
    }

    /// The archive of `settings` for queries only (whatever `history.enabled` says): no
    /// writer, and the spool is left to the process that owns it. Its sink drops records. It
    /// creates nothing: a SQLite archive that does not exist is [`HistoryError::Missing`].
    pub fn reader(settings: &HistorySettings) -> Result<History, HistoryError> {
        let archive = Archive::open_existing(settings)?;
        // The receiver is dropped at once: nothing is ever written through this handle.
        let (tx, _) = mpsc::channel(1);
        Ok(History {
            inner: Some(Arc::new(Inner::new(settings, archive, tx))),
        })
    }

    /// Whether records are archived.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The hook for producers.
    pub fn sink(&self) -> HistorySink {
        HistorySink {
            inner: self.inner.clone(),
        }
    }

    /// The database, when enabled.
    pub fn archive(&self) -> Option<&Archive> {
        self.inner.as_ref().map(|i| &i.archive)
    }

    /// The writer's counters.
    pub fn stats(&self) -> HistoryStats {
        let Some(inner) = &self.inner else {
            return HistoryStats::default();
        };
        let c = &inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HistoryStats {
            enabled: true,
            backend: inner.archive.backend().as_str().to_string(),
            submitted: get(&c.submitted),
            dropped: get(&c.dropped),
            written: get(&c.written),
            acknowledged: get(&c.acknowledged),
            spooled: get(&c.spooled),
            pending: get(&c.pending),
            rejected: get(&c.rejected),
            lost: get(&c.lost),
            batches: get(&c.batches),
            reachable: c.reachable.load(Ordering::Relaxed),
            last_error: inner.last_error.lock().clone(),
        }
    }

    fn ready(&self) -> Result<&Arc<Inner>, HistoryError> {
        self.inner.as_ref().ok_or(HistoryError::Disabled)
    }

    /// Sessions by start time, newest first.
    pub async fn sessions(&self, q: &HistoryQuery) -> Result<Page<SessionRecord>, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.sessions(q).await
    }

    /// Task attempts by finish time, newest first.
    pub async fn tasks(&self, q: &HistoryQuery) -> Result<Page<TaskRecord>, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.tasks(q).await
    }

    /// Events by time, newest first (of one session with [`HistoryQuery::session`]).
    pub async fn events(&self, q: &HistoryQuery) -> Result<Page<EventRecord>, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.events(q).await
    }

    /// Hazard rounds by due time, newest first, with their server seed once revealed.
    pub async fn rounds(&self, q: &HistoryQuery) -> Result<Page<HazardRoundRecord>, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.rounds(q).await
    }

    /// Players' settled rounds by settlement time, newest first (of one user and/or agent with
    /// [`HistoryQuery::user`] and [`HistoryQuery::agent`]): each with the revealed server
    /// seed that verifies it after the fairness record expired from Redis.
    pub async fn settlements(
        &self,
        q: &HistoryQuery,
    ) -> Result<Page<SettlementRecord>, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.settlements(q).await
    }

    /// Deletes rows older than `cutoff_ms`; answers how many.
    pub async fn purge_older_than(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let inner = self.ready()?;
        inner.schema().await?;
        inner.archive.purge(cutoff_ms).await
    }

    /// The retention job: deletes rows older than `history.retention_days` (nothing when 0).
    pub async fn purge_expired(&self) -> Result<u64, HistoryError> {
        let inner = self.ready()?;
        let days = inner.settings.retention_days;
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms() as i64 - (days as i64).saturating_mul(DAY_MS);
        let deleted = self.purge_older_than(cutoff).await?;
        tracing::info!(
            actor = "history",
            deleted,
            retention_days = days,
            "history retention ran"
        );
        Ok(deleted)
    }

    /// Waits up to `deadline` until every record submitted so far is stored in the database
    /// (or dropped, refused or lost, and counted). True when it is.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let progress = inner.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let s = self.stats();
            if s.written + s.rejected + s.lost >= s.submitted && s.spooled == 0 {
                return true;
            }
            // Woken by the writer's progress; the short bound covers a notice sent before
            // `enable` (a missed wake-up costs at most this).
            let step = tokio::time::Instant::now() + Duration::from_millis(50);
            if tokio::time::timeout_at(until.min(step), progress)
                .await
                .is_err()
                && tokio::time::Instant::now() >= until
            {
                return false;
            }
        }
    }

    /// Stops the writer: what is queued is written, or spooled (`storage.fallback = "file"`)
    /// when the database is unreachable, or counted lost; waits up to `deadline`. Then closes
    /// the pool. Idempotent.
    ///
    /// With a supervised writer, call it once its `HistoryWriter` actor stopped (the fleet
    /// does, after the tree): the actor handed the queue back, and this call runs the final
    /// drain itself. A writer still running is told to stop, and drains what it holds.
    pub async fn close(&self, deadline: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        if inner.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let until = tokio::time::Instant::now() + deadline;
        // A stored permit: the writer sees it even if it is not waiting right now.
        inner.stop.notify_one();
        let standalone = inner.writer.lock().take();
        let handle = match standalone {
            Some(handle) => Some(handle),
            // Supervised: the parts, once the actor's writer handed them back.
            None => writer::Writer::take(inner, Some(until))
                .await
                .map(|w| tokio::spawn(w.run())),
        };
        match handle {
            Some(handle) => {
                if tokio::time::timeout_at(until, handle).await.is_err() {
                    tracing::error!(
                        actor = "history",
                        "history writer still busy at the shutdown deadline"
                    );
                }
            }
            None => tracing::error!(
                actor = "history",
                "history writer did not hand its queue back by the shutdown deadline"
            ),
        }
        inner.archive.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_sink_ignores_records() {
        let sink = History::disabled().sink();
        assert!(!sink.is_on());
        sink.record(Record::HazardSeed(HazardSeedRecord {
            epoch: 1,
            server_seed: "s".into(),
            hashed_server_seed: "h".into(),
            revealed_ms: 1,
        }));
        assert_eq!(History::disabled().stats(), HistoryStats::default());
    }
}
