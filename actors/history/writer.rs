//! The batch writer (seed 003's `BatchDatabaseWriter`): one task that takes records from the
//! bounded queue and writes them in transactions of up to `history.batch_size` records, at
//! the latest `history.flush_interval_ms` after the first record of a batch arrived.
//!
//! While the database is unreachable (a transient failure: I/O, a pool timeout, PostgreSQL
//! SQLSTATE classes 08, 53, 57 and 40, SQLite BUSY or LOCKED) batches wait: in the spool when
//! `storage.fallback = "file"` (the writer keeps taking records and appends them, synced, so
//! callers never notice), otherwise in memory (the writer stops taking records; the queue
//! fills, then drops are counted). Every `history.retry_interval_ms` the writer tries again:
//! spool first, oldest batch first, then the batch held in memory, then new records. A batch
//! that the database refuses for good (a constraint or SQL error) is written record by record
//! and the refused records are counted and logged, so one bad record never blocks the rest.
//!
//! `kill -9` loses only the records still in the queue (not yet acknowledged). At shutdown
//! (`Fleet::shutdown`, after the actors stopped, so the producers are done) the queue is
//! written, or spooled, or counted as lost (memory fallback, database down). One spool per
//! `history.dir`: two processes must not share the directory.
//!
//! # Supervised, and handed back
//!
//! In a fleet the writer runs as the task `writer` of the `HistoryWriter` actor (the child
//! `history`, see `actor.rs`); a [`History::open`](super::History::open) without a fleet
//! runs it as a plain task. What the writer works with, its [`Parts`] (the queue's receiver,
//! the spool, the batches waiting in memory), lives in the history's `parts` slot whenever no
//! writer holds it: a writer takes the parts when it starts and puts them back when it ends,
//! whichever way (its drop does it: a return, a panic, an abort by its actor's stop). So a
//! restarted actor's writer resumes from the same bounded queue, with the same spool and
//! waiting batches, and [`History::close`](super::History::close) takes them for the final
//! drain once the actor stopped. The one batch a writer can lose is the one it was writing
//! when it panicked (or was aborted past its actor's drain deadline): those records are
//! counted `lost` and logged; records still in the queue, spooled or waiting in memory are
//! kept.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::record::Record;
use super::spool::Spool;
use super::Inner;
use crate::supervisor::fault;

/// What a writer works with, kept in the history's slot while no writer holds it.
pub(super) struct Parts {
    pub(super) rx: mpsc::Receiver<Record>,
    /// Present with `storage.fallback = "file"` (or when an earlier run left batches there).
    /// The mutex is only taken by the writer, inside `spawn_blocking`: file I/O stays off the
    /// runtime's threads.
    pub(super) spool: Option<Arc<Mutex<Spool>>>,
    /// Batches waiting in memory for the database.
    pub(super) pending: VecDeque<Vec<Record>>,
}

/// The writer task's state.
pub(super) struct Writer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Record>,
    spool: Option<Arc<Mutex<Spool>>>,
    pending: VecDeque<Vec<Record>>,
    /// While the database is unreachable: when to try it again.
    retry_at: Option<Instant>,
    /// The batch being written: its size, and whether it waited in memory (lost if the writer
    /// ends before the write returns).
    in_hand: Option<(u64, bool)>,
}

/// The writer of a history opened without a fleet: runs until the history is closed.
pub(super) async fn standalone(inner: Arc<Inner>) {
    if let Some(writer) = Writer::take(&inner, None).await {
        writer.run().await;
    }
}

/// The task of the `HistoryWriter` actor: takes the parts (waiting for the previous
/// incarnation's writer to hand them back), writes until the actor's stop asks for them back.
/// Once the history is closed it idles: `close` drains the parts itself.
pub(super) async fn supervised(inner: Arc<Inner>) {
    if !inner.stopping.load(Ordering::Acquire) {
        if let Some(writer) = Writer::take(&inner, None).await {
            if !inner.stopping.load(Ordering::Acquire) {
                writer.run().await;
            }
        }
    }
    if inner.stopping.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Waits (until `until`, forever with `None`) for the parts to be in the slot. True when they
/// are.
pub(super) async fn handed_back(inner: &Inner, until: Option<Instant>) -> bool {
    loop {
        let returned = inner.returned.notified();
        tokio::pin!(returned);
        returned.as_mut().enable();
        if inner.parts.lock().is_some() {
            return true;
        }
        match until {
            Some(until) => {
                if tokio::time::timeout_at(until, returned).await.is_err() {
                    return inner.parts.lock().is_some();
                }
            }
            None => returned.await,
        }
    }
}

impl Drop for Writer {
    /// Hands the parts back (a restarted actor's writer, or `close`, takes them), and counts
    /// the batch in hand, if any, as lost.
    fn drop(&mut self) {
        if let Some((n, was_pending)) = self.in_hand.take() {
            let c = &self.inner.counters;
            if was_pending {
                c.pending.fetch_sub(n, Ordering::Relaxed);
            }
            c.lost.fetch_add(n, Ordering::Relaxed);
            tracing::error!(
                actor = "history",
                records = n,
                "history writer ended while writing a batch: its records are lost"
            );
        }
        // A closed receiver stands in for the one handed back.
        let (_, closed) = mpsc::channel(1);
        let parts = Parts {
            rx: std::mem::replace(&mut self.rx, closed),
            spool: self.spool.take(),
            pending: std::mem::take(&mut self.pending),
        };
        *self.inner.parts.lock() = Some(parts);
        self.inner.returned.notify_waiters();
        self.inner.progress.notify_waiters();
    }
}

/// How a write went.
enum Outcome {
    /// Every record is stored (or refused for good and counted).
    Done,
    /// The database is unreachable; these records still wait.
    Unreachable(Vec<Record>),
}

impl Writer {
    /// Takes the parts from the slot, once there (waiting until `until`, forever with `None`).
    pub(super) async fn take(inner: &Arc<Inner>, until: Option<Instant>) -> Option<Writer> {
        loop {
            if !handed_back(inner, until).await {
                return None;
            }
            if let Some(parts) = inner.parts.lock().take() {
                return Some(Writer {
                    inner: inner.clone(),
                    rx: parts.rx,
                    spool: parts.spool,
                    pending: parts.pending,
                    retry_at: None,
                    in_hand: None,
                });
            }
        }
    }

    /// Runs until the history is closed and everything taken is written, spooled or counted,
    /// or until its actor's stop asks for the parts back (after the batch in hand).
    pub(super) async fn run(mut self) {
        let settings = self.inner.settings.clone();
        let retry = Duration::from_millis(settings.retry_interval_ms.max(1));
        loop {
            fault::point("history");
            let stopping = self.inner.stopping.load(Ordering::Acquire);
            if !stopping && self.inner.handback.load(Ordering::Acquire) {
                break;
            }
            if self.retry_at.is_none_or(|at| Instant::now() >= at) {
                self.retry_at = if self.settle_waiting().await {
                    None
                } else {
                    Some(Instant::now() + retry)
                };
            }
            if let Some(at) = self.retry_at {
                // Unreachable: keep taking records only when they can wait on disk.
                if stopping {
                    let rest = self.drain_now();
                    self.park(rest).await;
                    self.lose_pending();
                    break;
                }
                if self.spool.is_some() {
                    if let Some(batch) = self.collect(Some(at)).await {
                        self.park(batch).await;
                    }
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.inner.stop.notified() => {}
                    }
                }
                continue;
            }
            if stopping {
                let rest = self.drain_now();
                if rest.is_empty() {
                    break;
                }
                self.in_hand = Some((rest.len() as u64, false));
                let outcome = self.write(rest).await;
                self.in_hand = None;
                if let Outcome::Unreachable(left) = outcome {
                    self.park(left).await;
                    self.lose_pending();
                    break;
                }
                continue;
            }
            let Some(batch) = self.collect(None).await else {
                continue;
            };
            if let Some(left) = self.write_counted(batch, false).await {
                self.retry_at = Some(Instant::now() + retry);
                self.park(left).await;
            }
        }
        self.inner.progress.notify_waiters();
    }

    /// Takes the next batch: waits for a first record (until `until`, or the stop), then up to
    /// `history.flush_interval_ms` for the batch to fill.
    async fn collect(&mut self, until: Option<Instant>) -> Option<Vec<Record>> {
        let size = self.inner.settings.batch_size.max(1);
        let first = tokio::select! {
            r = self.rx.recv() => r?,
            _ = self.inner.stop.notified() => return None,
            _ = sleep_until_opt(until) => return None,
        };
        let mut batch = Vec::with_capacity(size.min(1_024));
        batch.push(first);
        let flush_at =
            Instant::now() + Duration::from_millis(self.inner.settings.flush_interval_ms);
        while batch.len() < size {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => tokio::select! {
                    r = self.rx.recv() => match r {
                        Some(r) => batch.push(r),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(flush_at) => break,
                    _ = self.inner.stop.notified() => break,
                },
            }
        }
        Some(batch)
    }

    /// Everything in the queue now, without waiting (at shutdown).
    fn drain_now(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }

    /// Writes what waits (spool, then memory). False when the database is still unreachable.
    async fn settle_waiting(&mut self) -> bool {
        if let Some(spool) = self.spool.clone() {
            let waiting = spool.lock().records();
            if waiting > 0 {
                let batches = match blocking(spool.clone(), |s| s.batches()).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(actor = "history", error = %e, "reading the spool failed");
                        return false;
                    }
                };
                for batch in batches {
                    if let Outcome::Unreachable(_) = self.write(batch).await {
                        return false;
                    }
                }
                if let Err(e) = blocking(spool, |s| s.clear()).await {
                    tracing::error!(actor = "history", error = %e, "emptying the spool failed");
                    return false;
                }
                self.inner.counters.spooled.store(0, Ordering::Relaxed);
                tracing::info!(
                    actor = "history",
                    records = waiting,
                    "spooled history written to the database"
                );
            }
        }
        while let Some(batch) = self.pending.pop_front() {
            if let Some(left) = self.write_counted(batch, true).await {
                self.pending.push_front(left);
                return false;
            }
        }
        self.set_reachable(true, None);
        true
    }

    /// Keeps records that could not be written: in the spool (acknowledged) when there is one,
    /// in memory otherwise.
    async fn park(&mut self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let batch = match self.spool.clone() {
            None => batch,
            Some(spool) => {
                let (appended, batch) = tokio::task::spawn_blocking(move || {
                    let appended = spool.lock().append(&batch);
                    (appended, batch)
                })
                .await
                .unwrap_or_else(|e| (Err(std::io::Error::other(e)), Vec::new()));
                match appended {
                    Ok(()) => {
                        let c = &self.inner.counters;
                        c.spooled.fetch_add(n, Ordering::Relaxed);
                        c.acknowledged.fetch_add(n, Ordering::Relaxed);
                        self.inner.progress.notify_waiters();
                        return;
                    }
                    Err(e) => {
                        tracing::error!(actor = "history", error = %e, records = n, "spooling history failed; the batch waits in memory");
                        batch
                    }
                }
            }
        };
        let n = batch.len() as u64;
        self.inner.counters.pending.fetch_add(n, Ordering::Relaxed);
        self.pending.push_back(batch);
    }

    /// At shutdown with the database unreachable and no spool: what waits in memory is lost.
    fn lose_pending(&mut self) {
        let n: u64 = self.pending.drain(..).map(|b| b.len() as u64).sum();
        if n > 0 {
            let c = &self.inner.counters;
            c.pending.fetch_sub(n, Ordering::Relaxed);
            c.lost.fetch_add(n, Ordering::Relaxed);
            tracing::error!(actor = "history", records = n, "database unreachable at shutdown: history records held in memory are lost (use storage.fallback = \"file\" to keep them)");
        }
    }

    /// Writes `batch` and counts what was stored as acknowledged (and no longer pending, for a
    /// batch that waited in memory). Answers the records still waiting, if any.
    async fn write_counted(
        &mut self,
        batch: Vec<Record>,
        was_pending: bool,
    ) -> Option<Vec<Record>> {
        let n = batch.len() as u64;
        self.in_hand = Some((n, was_pending));
        let left = match self.write(batch).await {
            Outcome::Done => None,
            Outcome::Unreachable(left) => Some(left),
        };
        self.in_hand = None;
        let stored = n - left.as_ref().map_or(0, |l| l.len() as u64);
        let c = &self.inner.counters;
        c.acknowledged.fetch_add(stored, Ordering::Relaxed);
        if was_pending {
            c.pending.fetch_sub(stored, Ordering::Relaxed);
        }
        left
    }

    /// One attempt at writing `batch`, in one transaction (record by record after a refusal).
    async fn write(&mut self, batch: Vec<Record>) -> Outcome {
        if batch.is_empty() {
            return Outcome::Done;
        }
        if let Err(e) = self.inner.schema().await {
            self.set_reachable(false, Some(e.to_string()));
            return Outcome::Unreachable(batch);
        }
        let archive = &self.inner.archive;
        match archive.write(&batch).await {
            Ok(()) => {
                self.stored(batch.len() as u64);
                Outcome::Done
            }
            Err(e) if super::is_transient(&e) => {
                self.set_reachable(false, Some(e.to_string()));
                Outcome::Unreachable(batch)
            }
            Err(e) => {
                tracing::warn!(actor = "history", error = %e, "history batch refused; writing its records one by one");
                let mut rest = batch.into_iter();
                while let Some(record) = rest.next() {
                    match archive.write(std::slice::from_ref(&record)).await {
                        Ok(()) => self.stored(1),
                        Err(e) if super::is_transient(&e) => {
                            self.set_reachable(false, Some(e.to_string()));
                            let mut left = vec![record];
                            left.extend(rest);
                            return Outcome::Unreachable(left);
                        }
                        Err(e) => {
                            self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(actor = "history", error = %e, "history record refused by the database");
                        }
                    }
                }
                Outcome::Done
            }
        }
    }

    fn stored(&self, n: u64) {
        self.inner.counters.written.fetch_add(n, Ordering::Relaxed);
        self.inner.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.inner.progress.notify_waiters();
    }

    fn set_reachable(&self, up: bool, error: Option<String>) {
        let was = self.inner.counters.reachable.swap(up, Ordering::AcqRel);
        if was != up {
            if up {
                tracing::info!(
                    actor = "history",
                    backend = self.inner.archive.backend().as_str(),
                    "history database reachable"
                );
            } else {
                tracing::warn!(
                    actor = "history",
                    backend = self.inner.archive.backend().as_str(),
                    error = error.as_deref().unwrap_or(""),
                    "history database unreachable: batches wait"
                );
            }
        }
        if let Some(error) = error {
            *self.inner.last_error.lock() = Some(error);
        }
        self.inner.progress.notify_waiters();
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` on the spool on the blocking pool.
async fn blocking<T: Send + 'static>(
    spool: Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(move || f(&mut spool.lock()))
        .await
        .map_err(std::io::Error::other)?
}
