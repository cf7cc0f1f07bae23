//! Workers outside the process: claims that hand out leases, the operations of a leaseholder
//! (extend, complete, fail), and the dead letters and delayed tasks an operator acts on. The
//! daemon's HTTP worker protocol (`/api/tasks/...`) is built on these calls.
//!
//! A claim is a `task-step` call, like the in-process worker's: it reaps expired claims,
//! promotes due delayed tasks, then claims up to `max` tasks of the types asked, each with a
//! random lease token written into its hash (field `lease`) and a visibility deadline of its
//! own (`lease_ms`) in `PREFIX:tasks:processing`. The leaseholder's extend, complete and fail
//! are `task-step` calls too, applied only while the task is `processing` under that lease: a
//! lease whose attempt is over (finished, or reaped after its deadline and claimed again)
//! changes nothing and is answered [`SchedulerError::StaleLease`]. A failure is retried with
//! the scheduler's backoff, and dead-lettered after the last attempt, exactly as a handler's
//! `Err`. A leaseholder that dies loses its tasks to the reaper at their deadline.
//! [`Scheduler::report_leases`] applies many completions and failures at once (a worker's
//! finished tasks, reported with its next claim): they wait at the desk with the others, so
//! one step carries them, and each is answered as its single call would be.
//!
//! [`Scheduler::claim`] waits up to [`ClaimOptions::wait`] for tasks: it tries again as soon as
//! this process makes a task ready (an enqueue, a dead letter retried, a delayed task
//! promoted), and otherwise every `scheduler.poll_interval_ms` (tasks added by other processes,
//! delayed tasks and retries falling due, claims expiring).
//!
//! # Outages
//!
//! On the fallback a claim names the ids it may take (this process's local queue), so that
//! its replay claims the same ones, as the in-process worker does. The operations of a
//! leaseholder name the task's hash among the script's keys: during an outage the storage
//! seeds it from its last-known copy, so that a task claimed from Redis before the outage is
//! completed (or failed, or extended) on the fallback and the operation is replayed. After a
//! claim on Redis the claimed hashes are marked for the last-known copy to read back (within
//! `storage.last_known.refresh_interval_ms`); a task claimed less than that before the
//! outage began is unknown to the fallback: its operations answer [`SchedulerError::NoSuchTask`]
//! until Redis is back (they are replayed all the same, and apply there if the lease still
//! holds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::{
    history, now_ms, scripts, Mode, Reply, Scheduler, SchedulerError, Shared, StepCall,
    StorageError, Task, TaskStatus,
};
use crate::clock::iso8601;

/// Longest `error` a leaseholder's failure may carry, bytes.
pub const MAX_ERROR_BYTES: usize = 8_192;
/// Leased operations carried by one step.
const MAX_LEASED_PER_STEP: usize = 500;
/// Dead letters moved back to the queue per script call when retrying all of them.
const REVIVE_BATCH: usize = 1_000;

/// What [`Scheduler::claim`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOptions {
    /// Task types served; `*` takes any type (no check against `scheduler.task_types` here:
    /// that is the HTTP API's).
    pub types: Vec<String>,
    /// Most tasks to claim (at most `scheduler.claim_batch` are claimed per call).
    pub max: usize,
    /// Visibility timeout of the tasks claimed: the reaper returns a task to the queue this
    /// long after its claim (or its last extension).
    pub lease_ms: u64,
    /// How long to wait for a task when none is ready; zero answers at once.
    pub wait: Duration,
}

/// A task claimed by a leaseholder.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// The task (status processing; `attempts` is this attempt).
    pub task: Task,
    /// This attempt (1 for the first).
    pub attempt: u32,
    /// The lease: the random token that extend, complete and fail must name.
    pub lease: String,
    /// The visibility deadline, Unix ms: extend before it or lose the task to the reaper.
    pub deadline_ms: u64,
    /// The attempt that dead-letters the task if it fails.
    pub max_attempts: u32,
}

/// What became of a leaseholder's failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAttempt {
    /// True when it was the last attempt: the task is dead-lettered (status `failed`).
    pub dead: bool,
    /// When the task is retried (Unix ms), unless dead.
    pub retry_at_ms: Option<u64>,
}

/// One operation of a leaseholder, as one entry of a `task-step` call.
#[derive(Debug, Clone)]
pub(super) enum LeasedOp {
    /// Complete the attempt; `result` ('' for none) kept in the hash while it stays.
    Complete {
        id: String,
        lease: String,
        result: String,
    },
    /// Fail the attempt with `error`, retried at `retry_ms` unless it was the last.
    Fail {
        id: String,
        lease: String,
        error: String,
        retry_ms: u64,
    },
    /// Move the visibility deadline to `deadline_ms`.
    Extend {
        id: String,
        lease: String,
        deadline_ms: u64,
    },
}

impl LeasedOp {
    /// The task's id.
    pub(super) fn id(&self) -> &str {
        match self {
            LeasedOp::Complete { id, .. }
            | LeasedOp::Fail { id, .. }
            | LeasedOp::Extend { id, .. } => id,
        }
    }

    /// Its six arguments of the step script: op, id, lease, x, y, z.
    pub(super) fn args(&self) -> [String; 6] {
        match self {
            LeasedOp::Complete { id, lease, result } => [
                "c".into(),
                id.clone(),
                lease.clone(),
                result.clone(),
                String::new(),
                String::new(),
            ],
            LeasedOp::Fail {
                id,
                lease,
                error,
                retry_ms,
            } => [
                "f".into(),
                id.clone(),
                lease.clone(),
                error.clone(),
                retry_ms.to_string(),
                iso8601(*retry_ms),
            ],
            LeasedOp::Extend {
                id,
                lease,
                deadline_ms,
            } => [
                "e".into(),
                id.clone(),
                lease.clone(),
                deadline_ms.to_string(),
                String::new(),
                String::new(),
            ],
        }
    }
}

/// The step's answer for one leased operation.
#[derive(Debug, Clone, Default)]
pub(super) struct LeasedReply {
    /// 1 applied, 0 no such task, -1 not the task's lease.
    pub(super) code: i64,
    /// The status after it (the current one when refused).
    pub(super) status: String,
    /// The new deadline (extend), the retry time (a failure retried later), else 0.
    pub(super) n: u64,
    /// The attempt.
    attempt: String,
    /// type, data, priority, created_at, claimed_at: only when archiving.
    record: [String; 5],
}

impl LeasedReply {
    /// The entries of the step's seventh array (nine fields each).
    pub(super) fn parse_all(fields: Vec<String>) -> Vec<LeasedReply> {
        fields
            .chunks_exact(9)
            .map(|f| LeasedReply {
                code: f[0].parse().unwrap_or(0),
                status: f[1].clone(),
                n: f[2].parse().unwrap_or(0),
                attempt: f[3].clone(),
                record: [
                    f[4].clone(),
                    f[5].clone(),
                    f[6].clone(),
                    f[7].clone(),
                    f[8].clone(),
                ],
            })
            .collect()
    }

    /// `Ok` when applied, else the error that says why not.
    fn check(&self, id: &str) -> Result<(), SchedulerError> {
        match self.code {
            1 => Ok(()),
            0 => Err(SchedulerError::NoSuchTask(id.to_string())),
            _ => Err(SchedulerError::StaleLease {
                id: id.to_string(),
                status: self.status.clone(),
            }),
        }
    }
}

/// A leaseholder's finished attempt, one entry of [`Scheduler::report_leases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseReport {
    /// The attempt succeeded: [`Scheduler::complete_lease`].
    Complete {
        /// The task.
        id: String,
        /// The lease its claim handed out.
        lease: String,
        /// Its result (JSON text), if any.
        result: Option<String>,
    },
    /// The attempt failed: [`Scheduler::fail_lease`].
    Fail {
        /// The task.
        id: String,
        /// The lease its claim handed out.
        lease: String,
        /// Why (at most [`MAX_ERROR_BYTES`]).
        error: String,
    },
}

impl LeaseReport {
    /// The task's id.
    pub fn id(&self) -> &str {
        match self {
            LeaseReport::Complete { id, .. } | LeaseReport::Fail { id, .. } => id,
        }
    }
}

/// What a reported attempt became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Completed.
    Completed,
    /// Failed: retried later, or dead-lettered.
    Failed(FailedAttempt),
}

/// Reports turned into leased operations, and those refused before any was sent.
#[derive(Default)]
struct PreparedReports {
    ops: Vec<LeasedOp>,
    /// The index of each operation's report.
    sent: Vec<usize>,
    refused: Vec<(usize, SchedulerError)>,
}

impl PreparedReports {
    /// One result per report, in order, from the operations' `replies`.
    fn finish(
        self,
        reports: &[LeaseReport],
        replies: Vec<Result<LeasedReply, SchedulerError>>,
    ) -> Vec<Result<ReportOutcome, SchedulerError>> {
        let mut results: Vec<Option<Result<ReportOutcome, SchedulerError>>> =
            reports.iter().map(|_| None).collect();
        for (i, e) in self.refused {
            results[i] = Some(Err(e));
        }
        for (i, reply) in self.sent.into_iter().zip(replies) {
            let report = &reports[i];
            results[i] = Some(reply.and_then(|reply| {
                reply.check(report.id())?;
                Ok(match report {
                    LeaseReport::Complete { .. } => ReportOutcome::Completed,
                    LeaseReport::Fail { .. } => ReportOutcome::Failed(failed_attempt(&reply)),
                })
            }));
        }
        results.into_iter().map(or_no_reply).collect()
    }
}

/// What the reply to a failure says became of the task.
fn failed_attempt(reply: &LeasedReply) -> FailedAttempt {
    let dead = reply.status == TaskStatus::Failed.as_str();
    FailedAttempt {
        dead,
        retry_at_ms: (!dead).then_some(reply.n),
    }
}

/// A random lease token: 128 bits from the thread's CSPRNG, as 32 hex digits.
fn new_lease() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Shared {
    /// Archives the leased completions and failures the step applied.
    pub(super) fn archive_leased(&self, ops: &[LeasedOp], replies: &[LeasedReply], now: i64) {
        let Some(sink) = self.history.get() else {
            return;
        };
        for (op, reply) in ops.iter().zip(replies) {
            let error = match op {
                _ if reply.code != 1 => continue,
                LeasedOp::Extend { .. } => continue,
                LeasedOp::Complete { .. } => None,
                LeasedOp::Fail { error, .. } => Some(error.clone()),
            };
            let status = match (&error, reply.status.as_str()) {
                (None, _) => history::task_status::COMPLETED,
                (Some(_), "failed") => history::task_status::DEAD,
                (Some(_), _) => history::task_status::FAILED,
            };
            let [task_type, data, priority, created_at, claimed_at] = reply.record.clone();
            let started_ms = crate::clock::parse_ms(&claimed_at).map_or(now, |t| t.min(now));
            sink.record(history::Record::Task(history::TaskRecord {
                id: op.id().to_string(),
                attempt: reply.attempt.parse().unwrap_or(0),
                task_type,
                data,
                priority: priority.parse().unwrap_or(0),
                status: status.to_string(),
                error,
                created_at,
                started_ms,
                finished_ms: now,
            }));
        }
    }

    /// Ids this process may claim outside Redis (its local queue), `None` on Redis; an error
    /// reading them is an empty list (nothing claimed this time).
    pub(super) async fn local_ids(&self) -> Option<Vec<String>> {
        if !matches!(self.storage.mode(), Mode::Degraded | Mode::Resyncing) {
            return None;
        }
        let ids = self
            .storage
            .zrange_by_score(
                &self.keys.queue,
                f64::NEG_INFINITY,
                f64::INFINITY,
                Some((0, self.settings.scan_limit as u64)),
            )
            .await
            .map(|v| v.into_iter().map(|(m, _)| m).collect())
            .unwrap_or_default();
        Some(ids)
    }

    /// One claim attempt, without waiting.
    async fn claim_once(&self, o: &ClaimOptions) -> Result<Vec<ClaimedTask>, SchedulerError> {
        Ok(self.claim_once_with(o, &[]).await?.0)
    }

    /// One claim attempt carrying the leased operations `leased` in its step (applied
    /// whatever is claimed); the tasks claimed and the operations' replies.
    async fn claim_once_with(
        &self,
        o: &ClaimOptions,
        leased: &[LeasedOp],
    ) -> Result<(Vec<ClaimedTask>, Vec<LeasedReply>), StorageError> {
        let max = o.max.min(self.settings.claim_batch);
        let explicit = self.local_ids().await;
        if max == 0 || explicit.as_ref().is_some_and(Vec::is_empty) {
            // Nothing this process may take: reap and promote only (its replay claims
            // nothing either).
            let stepped = self
                .step(&StepCall {
                    leased,
                    ..StepCall::default()
                })
                .await?;
            return Ok((Vec::new(), stepped.leased));
        }
        let caps: Vec<(String, usize)> = o.types.iter().map(|t| (t.clone(), max)).collect();
        let tokens: Vec<String> = (0..max).map(|_| new_lease()).collect();
        let explicit = explicit.unwrap_or_default();
        let now = now_ms();
        let stepped = self
            .step(&StepCall {
                caps: &caps,
                explicit: &explicit,
                tokens: &tokens,
                visibility_ms: Some(o.lease_ms),
                max: Some(max),
                leased,
                ..StepCall::default()
            })
            .await?;
        if self.storage.mode() == Mode::Redis {
            let prefix = &self.keys.task_prefix;
            let hashes: Vec<String> = stepped
                .claimed
                .iter()
                .map(|(t, _)| format!("{prefix}{}", t.id))
                .collect();
            self.storage.note_changed(hashes.iter().map(String::as_str));
        }
        let claimed = stepped
            .claimed
            .into_iter()
            .zip(tokens)
            .map(|((task, max_attempts), lease)| ClaimedTask {
                attempt: task.attempts,
                task,
                lease,
                deadline_ms: now + o.lease_ms,
                max_attempts,
            })
            .collect();
        Ok((claimed, stepped.leased))
    }

    /// One leased operation, sent with the others waiting (see [`Desk`]); its reply.
    async fn leased(&self, op: LeasedOp) -> Result<LeasedReply, SchedulerError> {
        let id = op.id().to_string();
        let reply = self.leased_many(vec![op]).await.pop().unwrap_or_else(|| {
            // leased_many answers one reply per operation.
            Err(SchedulerError::Storage(StorageError::Unavailable(
                "no reply".into(),
            )))
        })?;
        reply.check(&id)?;
        Ok(reply)
    }

    /// Leased operations, sent with the others waiting (see [`Desk`]): one step carries them
    /// all (up to [`MAX_LEASED_PER_STEP`]); their replies in order, unchecked.
    async fn leased_many(&self, ops: Vec<LeasedOp>) -> Vec<Result<LeasedReply, SchedulerError>> {
        let mut receivers = Vec::with_capacity(ops.len());
        {
            let mut pending = self.desk.pending.lock();
            for op in ops {
                let (tx, rx) = oneshot::channel();
                pending.push((op, tx));
                receivers.push(rx);
            }
        }
        let mut replies: Vec<Option<Result<LeasedReply, SchedulerError>>> =
            receivers.iter().map(|_| None).collect();
        loop {
            // Listening before looking: a sender that stops after this call found it busy
            // wakes it.
            let idle = self.desk.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.desk.try_begin() {
                let _sending = Sending(&self.desk);
                self.send_waiting().await;
            }
            // Our operations were sent (by this call or another), unless another call took
            // them and was dropped mid-step; or some still wait, behind a step in flight.
            let all = async {
                for (rx, reply) in receivers.iter_mut().zip(replies.iter_mut()) {
                    if reply.is_none() {
                        *reply = Some(rx.await.unwrap_or_else(|_| {
                            Err(SchedulerError::Storage(StorageError::Unavailable(
                                "the step that carried this call was interrupted; it may have been applied".into(),
                            )))
                        }));
                    }
                }
            };
            tokio::select! {
                () = all => break,
                _ = idle => {}
            }
        }
        replies.into_iter().map(or_no_reply).collect()
    }

    /// Sends the waiting operations, a step per [`MAX_LEASED_PER_STEP`], until none waits.
    async fn send_waiting(&self) {
        loop {
            let batch: Vec<(LeasedOp, AnswerTx)> = {
                let mut pending = self.desk.pending.lock();
                let n = pending.len().min(MAX_LEASED_PER_STEP);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let (ops, replies): (Vec<LeasedOp>, Vec<AnswerTx>) = batch.into_iter().unzip();
            let stepped = self
                .step(&StepCall {
                    leased: &ops,
                    ..StepCall::default()
                })
                .await;
            match stepped {
                Ok(stepped) => {
                    let mut answers = stepped.leased.into_iter();
                    for tx in replies {
                        let _ = tx.send(Ok(answers.next().unwrap_or_default()));
                    }
                }
                Err(e) => {
                    for tx in replies {
                        let _ = tx.send(Err(SchedulerError::Storage(e.clone())));
                    }
                }
            }
        }
    }
}

/// Where a leaseholder's call waits for a step. The first call that finds no step in flight
/// sends every operation waiting, in one step (up to [`MAX_LEASED_PER_STEP`] per step), and
/// keeps sending until none waits; the others wait for their reply. So many leaseholders'
/// completions share one round trip, as the in-process handlers' results do.
#[derive(Default)]
pub(super) struct Desk {
    pending: Mutex<Vec<(LeasedOp, AnswerTx)>>,
    sending: AtomicBool,
    /// Told when a sender stops: a call whose operation still waits sends it.
    idle: Notify,
}

impl Desk {
    /// Whether this call becomes the sender.
    fn try_begin(&self) -> bool {
        !self.sending.swap(true, Ordering::AcqRel)
    }
}

/// Where a leased operation's reply goes.
type AnswerTx = oneshot::Sender<Result<LeasedReply, SchedulerError>>;

/// Ends a sender's turn, also when its call is dropped mid-step: the calls still waiting are
/// told, and one of them sends next.
struct Sending<'a>(&'a Desk);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.store(false, Ordering::Release);
        self.0.idle.notify_waiters();
    }
}

impl Scheduler {
    /// Claims up to `options.max` tasks of `options.types` for a leaseholder, waiting up to
    /// `options.wait` for one to be ready (see the module docs). Answers an empty list when
    /// none came in time.
    pub async fn claim(&self, options: &ClaimOptions) -> Result<Vec<ClaimedTask>, SchedulerError> {
        self.claim_until(options, std::future::pending()).await
    }

    /// [`Scheduler::claim`], giving up the wait (answering an empty list) once `cancelled`
    /// resolves; a claim already sent to the storage is seen through, so no task is claimed
    /// without its leaseholder learning of it.
    pub async fn claim_until(
        &self,
        options: &ClaimOptions,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<Vec<ClaimedTask>, SchedulerError> {
        let shared = &self.shared;
        let until = tokio::time::Instant::now() + options.wait;
        let poll = Duration::from_millis(shared.settings.poll_interval_ms.max(1));
        tokio::pin!(cancelled);
        loop {
            let arrived = shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let claimed = shared.claim_once(options).await?;
            let now = tokio::time::Instant::now();
            if !claimed.is_empty() || now >= until {
                return Ok(claimed);
            }
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep(poll.min(until - now)) => {}
                _ = &mut cancelled => return Ok(Vec::new()),
            }
        }
    }

    /// Moves the visibility deadline of the task `id` held under `lease` to `lease_ms` from
    /// now; answers the new deadline (Unix ms). [`SchedulerError::StaleLease`] when the lease
    /// is no longer the task's, [`SchedulerError::NoSuchTask`] when there is no such task.
    pub async fn extend_lease(
        &self,
        id: &str,
        lease: &str,
        lease_ms: u64,
    ) -> Result<u64, SchedulerError> {
        let deadline_ms = now_ms() + lease_ms;
        let reply = self
            .shared
            .leased(LeasedOp::Extend {
                id: id.to_string(),
                lease: lease.to_string(),
                deadline_ms,
            })
            .await?;
        Ok(reply.n)
    }

    /// Completes the attempt of the task `id` held under `lease`, keeping `result` (JSON text)
    /// in its hash (field `result`) for as long as the completed hash stays
    /// (`scheduler.completed_ttl_secs`). Errors as [`Scheduler::extend_lease`].
    pub async fn complete_lease(
        &self,
        id: &str,
        lease: &str,
        result: Option<&str>,
    ) -> Result<(), SchedulerError> {
        self.shared
            .leased(LeasedOp::Complete {
                id: id.to_string(),
                lease: lease.to_string(),
                result: result.unwrap_or_default().to_string(),
            })
            .await
            .map(drop)
    }

    /// Fails the attempt of the task `id` held under `lease` with `error` (at most
    /// [`MAX_ERROR_BYTES`]): retried after the scheduler's backoff, or dead-lettered after its
    /// last attempt. Errors as [`Scheduler::extend_lease`].
    pub async fn fail_lease(
        &self,
        id: &str,
        lease: &str,
        error: &str,
    ) -> Result<FailedAttempt, SchedulerError> {
        if error.len() > MAX_ERROR_BYTES {
            return Err(SchedulerError::Invalid {
                what: "error",
                message: format!("{} bytes, more than {MAX_ERROR_BYTES}", error.len()),
            });
        }
        // The backoff depends on the attempt, which the lease pins: read it first (the script
        // checks the lease again, so a claim in between makes this a stale lease).
        let attempt = self.attempt_of(id).await?;
        let retry_ms = now_ms() + self.shared.backoff_ms(attempt);
        let reply = self
            .shared
            .leased(LeasedOp::Fail {
                id: id.to_string(),
                lease: lease.to_string(),
                error: error.to_string(),
                retry_ms,
            })
            .await?;
        Ok(failed_attempt(&reply))
    }

    /// Applies leaseholders' finished attempts, each as [`Scheduler::complete_lease`] or
    /// [`Scheduler::fail_lease`] would alone, but together: they join the operations waiting
    /// at the desk, so one step carries them all. Answers one result per report, in order;
    /// an entry refused (a stale lease, no such task, an error too long) leaves the others
    /// untouched.
    pub async fn report_leases(
        &self,
        reports: &[LeaseReport],
    ) -> Vec<Result<ReportOutcome, SchedulerError>> {
        let prepared = self.prepare_reports(reports).await;
        let replies = self.shared.leased_many(prepared.ops.clone()).await;
        prepared.finish(reports, replies)
    }

    /// [`Scheduler::report_leases`] and one claim attempt (without waiting: `options.wait`
    /// is not used), in one step. Answers the reports' results and the claim's; a storage
    /// error of that step is every report's error and the claim's.
    pub async fn claim_reporting(
        &self,
        options: &ClaimOptions,
        reports: &[LeaseReport],
    ) -> (
        Vec<Result<ReportOutcome, SchedulerError>>,
        Result<Vec<ClaimedTask>, SchedulerError>,
    ) {
        let prepared = self.prepare_reports(reports).await;
        let (replies, claimed) = match self.shared.claim_once_with(options, &prepared.ops).await {
            Ok((claimed, replies)) => (replies.into_iter().map(Ok).collect(), Ok(claimed)),
            Err(e) => (
                prepared
                    .ops
                    .iter()
                    .map(|_| Err(SchedulerError::Storage(e.clone())))
                    .collect(),
                Err(SchedulerError::Storage(e)),
            ),
        };
        (prepared.finish(reports, replies), claimed)
    }

    /// The leased operations of `reports`: failures' attempts read first, all at once (the
    /// backoff depends on the attempt, which the lease pins; the script checks the lease
    /// again); an entry refused here (an error too long) is not sent.
    async fn prepare_reports(&self, reports: &[LeaseReport]) -> PreparedReports {
        let attempts = futures::future::join_all(reports.iter().map(|r| async move {
            match r {
                LeaseReport::Complete { .. } => Ok(0),
                LeaseReport::Fail { error, .. } if error.len() > MAX_ERROR_BYTES => {
                    Err(SchedulerError::Invalid {
                        what: "error",
                        message: format!("{} bytes, more than {MAX_ERROR_BYTES}", error.len()),
                    })
                }
                LeaseReport::Fail { id, .. } => self.attempt_of(id).await,
            }
        }))
        .await;
        let mut prepared = PreparedReports::default();
        for (i, (report, attempt)) in reports.iter().zip(attempts).enumerate() {
            let attempt = match attempt {
                Ok(a) => a,
                Err(e) => {
                    prepared.refused.push((i, e));
                    continue;
                }
            };
            prepared.sent.push(i);
            prepared.ops.push(match report {
                LeaseReport::Complete { id, lease, result } => LeasedOp::Complete {
                    id: id.clone(),
                    lease: lease.clone(),
                    result: result.clone().unwrap_or_default(),
                },
                LeaseReport::Fail { id, lease, error } => LeasedOp::Fail {
                    id: id.clone(),
                    lease: lease.clone(),
                    error: error.clone(),
                    retry_ms: now_ms() + self.shared.backoff_ms(attempt),
                },
            });
        }
        prepared
    }

    /// The attempt a task's hash records (1 when it says none).
    async fn attempt_of(&self, id: &str) -> Result<u32, SchedulerError> {
        let key = format!("{}{id}", self.shared.keys.task_prefix);
        Ok(self
            .shared
            .storage
            .hget(&key, "attempts")
            .await?
            .and_then(|a| a.parse().ok())
            .unwrap_or(1))
    }

    /// Moves the dead letters `ids` back to the queue, their attempts reset; ids not in the
    /// dead set are skipped. Answers how many went back.
    pub async fn retry_dead(&self, ids: &[String]) -> Result<u64, SchedulerError> {
        let mut retried = 0;
        for chunk in ids.chunks(REVIVE_BATCH) {
            let (n, _) = self.revive(chunk).await?;
            retried += n;
        }
        if retried > 0 {
            self.shared.arrived.notify_waiters();
            self.shared.wake.notify_one();
        }
        Ok(retried)
    }

    /// Moves every dead letter back to the queue (1,000 per script call, until the dead set
    /// is empty or a call finds fewer). Answers how many went back.
    pub async fn retry_all_dead(&self) -> Result<u64, SchedulerError> {
        let mut retried = 0;
        loop {
            let (n, removed) = self.revive(&[]).await?;
            retried += n;
            if removed < REVIVE_BATCH as u64 {
                break;
            }
        }
        if retried > 0 {
            self.shared.arrived.notify_waiters();
            self.shared.wake.notify_one();
        }
        Ok(retried)
    }

    /// One `task-revive` call: `ids`, or the head of the dead set when empty. Answers
    /// (retried, removed from the dead set).
    async fn revive(&self, ids: &[String]) -> Result<(u64, u64), SchedulerError> {
        let k = &self.shared.keys;
        let iso = iso8601(now_ms());
        let batch = REVIVE_BATCH.to_string();
        let mut args: Vec<&str> = vec![&k.task_prefix, &iso, &batch];
        args.extend(ids.iter().map(String::as_str));
        let reply = self
            .shared
            .storage
            .eval(&scripts().revive, &[&k.queue, &k.dead], &args)
            .await?;
        let parts = reply.into_strings();
        let n = |i: usize| parts.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((n(0), n(1)))
    }

    /// Deletes the dead letter `id` (its hash too): false when `id` is not a dead letter.
    pub async fn delete_dead(&self, id: &str) -> Result<bool, SchedulerError> {
        let k = &self.shared.keys;
        // Given the dead set twice, `task-cancel` deletes a dead letter.
        self.remove_task(&k.dead, &k.dead, id).await
    }

    /// Moves the delayed task `id` (delayed at enqueue, or waiting for its retry) to the queue
    /// now: false when it is not delayed.
    pub async fn promote(&self, id: &str) -> Result<bool, SchedulerError> {
        let k = &self.shared.keys;
        let iso = iso8601(now_ms());
        let reply = self
            .shared
            .storage
            .eval(
                &scripts().promote,
                &[&k.queue, &k.delayed],
                &[&k.task_prefix, &iso, id],
            )
            .await?;
        let promoted = reply.as_int() == 1;
        if promoted {
            self.shared.arrived.notify_waiters();
            self.shared.wake.notify_one();
        }
        Ok(promoted)
    }

    /// The first `limit` ids of the delayed set (`PREFIX:tasks:delayed`), soonest due first.
    pub async fn delayed_ids(&self, limit: usize) -> Result<Vec<String>, SchedulerError> {
        let op = crate::storage::Op::ZRangeByScore {
            key: self.shared.keys.delayed.clone(),
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
            limit: Some((0, limit as u64)),
        };
        let reply: Reply = self.shared.storage.read_known(op).await?;
        Ok(super::ids_of(reply))
    }
}

/// A reply slot the step never filled: the storage gave no answer for it.
fn or_no_reply<T>(slot: Option<Result<T, SchedulerError>>) -> Result<T, SchedulerError> {
    slot.unwrap_or_else(|| {
        Err(SchedulerError::Storage(StorageError::Unavailable(
            "no reply".into(),
        )))
    })
}
