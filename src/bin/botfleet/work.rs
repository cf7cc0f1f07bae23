//! `botfleet task work --type T -- CMD ARGS...`: a worker that runs a command per task,
//! speaking only the daemon's HTTP worker protocol (`/api/tasks/claim` with its `report` list,
//! `/api/tasks/report`, `extend`), as a worker in any language would.
//!
//! The worker keeps up to `--concurrency` commands running. Whenever slots are free it asks
//! the daemon for that many tasks with a long poll ([`CLAIM_WAIT_MS`]); free slots first wait
//! up to [`CLAIM_GATHER`] for the others to free, so that one claim fills many. From
//! [`TWO_LANES_FROM`] slots on, two such loops share the slots half and half, so that two
//! claims can be in flight. Each task runs `CMD
//! ARGS...` with the task as JSON on stdin (`{"id","type","data","priority","attempt"}`) and
//! `BOTFLEET_TASK_ID`, `BOTFLEET_TASK_TYPE`, `BOTFLEET_TASK_ATTEMPT` in its environment; its
//! stdout is the worker's, its stderr is copied to the worker's and the last
//! [`STDERR_TAIL_BYTES`] kept. Exit 0 completes the task; any other end fails it with the
//! exit status and that tail of stderr as the error (retried with the daemon's backoff, then
//! dead-lettered). The ends are reported with the next claim, which then answers at once;
//! reports no claim takes within [`FLUSH_DELAY`] (every slot busy, a long poll waiting, the
//! worker stopping) go alone through `/api/tasks/report`. A task counts as completed only
//! when the daemon says so; a report the daemon cannot be reached for is sent again until its
//! lease's deadline (then the task is lost to the reaper), and one the daemon refuses (a
//! stale lease) counts as lost. While the command runs its lease is extended every third of the lease. A
//! lease the daemon no longer honours (the task was reaped after its deadline, say) kills the
//! command: its result could not be reported.
//!
//! Stopping: the first SIGINT or SIGTERM stops claiming (a claim waiting on the daemon is
//! abandoned; the daemon notices the closed connection and claims nothing for it) and lets the
//! running commands finish and report; the worker then exits 0. A second signal kills the running commands
//! (their process groups) and fails their tasks back to the daemon with the error
//! `interrupted`, so they are retried after the backoff like any failure (a task on its last
//! attempt is dead-lettered); tasks whose failure cannot be reported return to the queue at
//! their visibility deadline. The worker then exits 130. Commands run in a process group of
//! their own, so a terminal's Ctrl-C reaches the worker only, and die with the worker (Linux
//! `PR_SET_PDEATHSIG`) if it is killed.
//!
//! The loop is [`work`], over any [`Job`]: the command line runs [`CommandJob`], `botfleet
//! bench queue --via http` a job that does nothing.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use botfleet::settings::Settings;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{base_url, url_arg, ClientError, Daemon, WorkArgs};
use crate::exit::{BadArgument, Exit};

/// How long one claim waits for a task on the daemon, milliseconds.
pub const CLAIM_WAIT_MS: u64 = 10_000;
/// How much of a failed command's stderr becomes the task's error, bytes.
pub const STDERR_TAIL_BYTES: usize = 2_048;
/// Most concurrent commands.
const CONCURRENCY_MAX: usize = 1_000;
/// Pause between two attempts to reach a daemon that does not answer.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long free slots wait for the others to be free before they are claimed for (one
/// claim then fills them all: short tasks end close together, and a claim per few tasks
/// would cost more than the wait; long ones lose at most this much per claim).
const CLAIM_GATHER: Duration = Duration::from_millis(10);
/// Shortest period between two extensions of a lease.
const EXTEND_MIN: Duration = Duration::from_millis(100);
/// How long a finished task's report waits for the next claim to carry it before it is sent
/// alone (`/api/tasks/report`): longer than [`CLAIM_GATHER`], so that a worker with free slots
/// claims first.
const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// Most reports one request carries (the daemon takes up to 1,000).
const REPORT_BATCH: usize = 1_000;
/// Most bytes of reports one request carries: half the daemon's default body limit
/// (`api.body_limit_bytes`, 64 KiB), the rest for the claim. A larger report goes alone.
const REPORT_BATCH_BYTES: usize = 32 * 1024;

/// A task the daemon handed out, as its claim answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct Claimed {
    /// Id.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Data (parsed JSON, or the stored string).
    pub data: Value,
    /// Priority.
    pub priority: i64,
    /// This attempt, from 1.
    pub attempt: u32,
    /// The lease extend, complete and fail name.
    pub lease: String,
    /// Visibility deadline, Unix ms (the daemon's clock).
    pub deadline_ms: u64,
}

/// What runs a task: `Ok` completes it, `Err(message)` fails it. The future is dropped when
/// the task must stop at once (its lease lost, or a second signal): it must then stop what it
/// started.
pub trait Job: Send + Sync + 'static {
    /// Runs `task`.
    fn run(&self, task: &Claimed) -> BoxFuture<'static, Result<(), String>>;
}

/// What the worker claims and how.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Task types served.
    pub types: Vec<String>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Visibility timeout asked for; the daemon's default when `None`.
    pub lease_ms: Option<u64>,
    /// How long one claim waits on the daemon, milliseconds.
    pub wait_ms: u64,
}

/// What became of the tasks a worker ran.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Completed.
    pub completed: AtomicU64,
    /// Failed (retried later, or dead-lettered).
    pub failed: AtomicU64,
    /// Killed by a second signal and failed back.
    pub interrupted: AtomicU64,
    /// Whose lease the daemon no longer honoured (nothing reported), or whose result could
    /// not be reported before the deadline: they return to the queue.
    pub lost: AtomicU64,
    /// Told after the counters of a request's reports changed.
    #[serde(skip)]
    pub changed: tokio::sync::Notify,
}

impl Summary {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the worker is asked to stop: [`Stop::Drain`] finishes what runs, [`Stop::Kill`] stops
/// it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Keep working.
    Run,
    /// Claim no more; let the running tasks finish and report.
    Drain,
    /// Kill the running tasks and fail them back.
    Kill,
}

/// `botfleet task work`: the worker until signals stop it; its exit code.
pub fn run(settings: &Settings, args: &WorkArgs, out: &mut impl Write) -> anyhow::Result<Exit> {
    let options = check(args)?;
    let base = match &args.url {
        Some(url) => url_arg(url)?,
        None => base_url(&settings.api.bind),
    };
    let daemon = Daemon::new(&base, Some(settings.api.token.expose().to_owned()))?;
    let job: Arc<dyn Job> = Arc::new(CommandJob {
        program: args.command[0].clone(),
        args: args.command[1..].to_vec(),
    });
    // One thread: the commands' PR_SET_PDEATHSIG watches the thread that forked them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (summary, stopped) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let signals = async move {
            for level in [Stop::Drain, Stop::Kill] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!(
                    "{}",
                    if level == Stop::Drain {
                        "stopping: no more claims, running commands finish; a second signal kills them"
                    } else {
                        "killing the running commands and failing their tasks back"
                    }
                );
                let _ = stop_tx.send(level);
            }
            std::future::pending::<()>().await;
        };
        let summary = Arc::new(Summary::default());
        let worked = tokio::select! {
            r = work(&daemon, &options, job, stop_rx.clone(), summary.clone()) => r,
            _ = signals => unreachable!("the signal watcher never ends"),
        };
        worked?;
        let stopped = *stop_rx.borrow();
        anyhow::Ok((summary, stopped))
    })?;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    if args.json {
        writeln!(out, "{}", serde_json::to_value(&*summary)?)?;
    } else {
        writeln!(
            out,
            "worker stopped: {} completed, {} failed, {} interrupted, {} lost",
            count(&summary.completed),
            count(&summary.failed),
            count(&summary.interrupted),
            count(&summary.lost)
        )?;
    }
    out.flush()?;
    Ok(if stopped == Stop::Kill {
        Exit::Interrupted
    } else {
        Exit::Ok
    })
}

/// The arguments checked before anything starts: bad ones exit 2 naming the argument.
fn check(args: &WorkArgs) -> Result<WorkOptions, BadArgument> {
    for t in &args.types {
        if t != "*" {
            if let Some(problem) = botfleet::settings::task_type_problem(t) {
                return Err(BadArgument::new("--type", format!("{t:?}: {problem}")));
            }
        }
    }
    if !(1..=CONCURRENCY_MAX).contains(&args.concurrency) {
        return Err(BadArgument::new(
            "--concurrency",
            format!("expected 1 to {CONCURRENCY_MAX}, got {}", args.concurrency),
        ));
    }
    if let Some(ms) = args.lease_ms {
        if !(100..=86_400_000).contains(&ms) {
            return Err(BadArgument::new(
                "--lease-ms",
                format!("expected 100 to 86400000, got {ms}"),
            ));
        }
    }
    if args.command.first().is_none_or(String::is_empty) {
        return Err(BadArgument::new(
            "CMD",
            "expected the command to run per task after --",
        ));
    }
    Ok(WorkOptions {
        types: args.types.clone(),
        concurrency: args.concurrency,
        lease_ms: args.lease_ms,
        wait_ms: CLAIM_WAIT_MS,
    })
}

fn now_ms() -> u64 {
    botfleet::clock::now_ms()
}

/// Waits until `stop` reaches `level`.
async fn reached(stop: &mut watch::Receiver<Stop>, level: Stop) {
    let _ = stop.wait_for(|s| *s >= level).await;
}

/// The worker loop: claims while slots are free, runs each task with `job`, reports it; ends
/// once told to stop and every task has reported (or was killed and failed back). Fails when
/// the first claim cannot reach the daemon, or when the daemon refuses the claim as bad (an
/// unknown type, a missing token); later failures to reach it are retried.
pub async fn work(
    daemon: &Daemon,
    options: &WorkOptions,
    job: Arc<dyn Job>,
    mut stop: watch::Receiver<Stop>,
    summary: Arc<Summary>,
) -> Result<(), ClientError> {
    let outbox = Arc::new(Outbox::default());
    let (done_tx, done_rx) = watch::channel(false);
    // The lanes' own stop: the caller's, or a drain as soon as one lane fails (the others
    // must not go on with a part of the slots while the failure waits to be told).
    let (lanes_tx, lanes_rx) = watch::channel(*stop.borrow());
    let lanes = lanes_for(options.concurrency);
    let worked = async {
        // Tell the flusher to send what is left and end, however the loops end.
        let _done = Done(done_tx);
        let runs = (0..lanes).map(|lane| {
            let options = WorkOptions {
                concurrency: lane_share(options.concurrency, lanes, lane),
                ..options.clone()
            };
            let (job, summary, outbox, lanes_tx) = (job.clone(), &summary, &outbox, &lanes_tx);
            let mut stop = lanes_rx.clone();
            async move {
                let ended = work_loop(daemon, &options, job, &mut stop, summary, outbox).await;
                if ended.is_err() {
                    lanes_tx.send_if_modified(|s| raise(s, Stop::Drain));
                }
                ended
            }
        });
        let all = futures::future::join_all(runs);
        tokio::pin!(all);
        // A caller that drops its end of `stop` asks for a drain, as the loop reads it.
        let mut watching = true;
        let results = loop {
            tokio::select! {
                results = &mut all => break results,
                changed = stop.changed(), if watching => {
                    let level = if changed.is_ok() {
                        *stop.borrow()
                    } else {
                        watching = false;
                        Stop::Drain
                    };
                    lanes_tx.send_if_modified(|s| raise(s, level));
                }
            }
        };
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(drop)
    };
    let (worked, ()) = tokio::join!(worked, flush(daemon, &outbox, &summary, done_rx));
    worked
}

/// Raises `stop` to `level` (never lowers it); true when it changed.
fn raise(stop: &mut Stop, level: Stop) -> bool {
    let raised = level > *stop;
    if raised {
        *stop = level;
    }
    raised
}

/// Slots from which a worker keeps two claims in flight, each for half of its slots: while
/// one claim is on its way (the daemon's step, the reply, starting its tasks), the other's
/// tasks run and report. Below it one claim fills the slots.
const TWO_LANES_FROM: usize = 16;

/// How many claim loops share `concurrency` slots.
fn lanes_for(concurrency: usize) -> usize {
    if concurrency >= TWO_LANES_FROM {
        2
    } else {
        1
    }
}

/// The slots of lane `lane` of `lanes` (the first lanes take the remainder).
fn lane_share(concurrency: usize, lanes: usize, lane: usize) -> usize {
    concurrency / lanes + usize::from(lane < concurrency % lanes)
}

/// Tells the flusher to finish when dropped.
struct Done(watch::Sender<bool>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// [`work`]'s loop, without the flusher.
async fn work_loop(
    daemon: &Daemon,
    options: &WorkOptions,
    job: Arc<dyn Job>,
    stop: &mut watch::Receiver<Stop>,
    summary: &Arc<Summary>,
    outbox: &Arc<Outbox>,
) -> Result<(), ClientError> {
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut reached_daemon = false;
    let mut retry = RETRY_MIN;
    while *stop.borrow() == Stop::Run {
        while running.try_join_next().is_some() {}
        let free = options.concurrency.saturating_sub(running.len());
        if free == 0 {
            tokio::select! {
                _ = running.join_next() => {}
                _ = reached(stop, Stop::Drain) => {}
            }
            continue;
        }
        // Some slots free while the others run: wait a moment for the rest, so that one claim
        // fills them all (short tasks end close together; long ones barely wait).
        let batch = options.concurrency;
        if free < batch {
            let gathered = async {
                while options.concurrency.saturating_sub(running.len()) < batch {
                    if running.join_next().await.is_none() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(CLAIM_GATHER, gathered) => {}
                _ = reached(stop, Stop::Drain) => {}
            }
            while running.try_join_next().is_some() {}
        }
        let free = options.concurrency.saturating_sub(running.len());
        // The finished tasks' reports go with the claim, which then answers at once (a long
        // poll would hold their outcomes back).
        let reports = outbox.take();
        let claimed = if reports.is_empty() {
            // A signal abandons a waiting claim: the daemon notices the closed connection
            // and claims nothing for it (a claim caught in the instant it hands tasks out
            // loses them until their visibility deadline).
            tokio::select! {
                r = claim(daemon, options, free, &[]) => r.map(|(tasks, _)| tasks),
                _ = reached(stop, Stop::Drain) => break,
            }
        } else {
            // Seen through: the reports may be applied already.
            let sent = claim(daemon, options, free, &reports).await;
            match sent {
                Ok((tasks, reported)) => {
                    outbox.settle(reports, &reported, summary);
                    Ok(tasks)
                }
                // Too large for the daemon's body limit: the reports go one per request
                // from now on (one still too large is lost), and the claim is made again.
                Err(e @ ClientError::Refused { status: 413, .. }) => {
                    outbox.unsent(reports, &e, RETRY_MIN, summary);
                    continue;
                }
                Err(e) => {
                    outbox.unsent(reports, &e, RETRY_MIN, summary);
                    Err(e)
                }
            }
        };
        match claimed {
            Ok(tasks) => {
                reached_daemon = true;
                retry = RETRY_MIN;
                for task in tasks {
                    running.spawn(run_one(
                        daemon.clone(),
                        job.clone(),
                        task,
                        options.lease_ms,
                        kill_rx.clone(),
                        outbox.clone(),
                        summary.clone(),
                    ));
                }
            }
            Err(
                e @ ClientError::Refused {
                    status: 400..=499, ..
                },
            ) => return Err(e),
            Err(e) if !reached_daemon => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = retry.as_millis() as u64, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = reached(stop, Stop::Drain) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    let mut killed = false;
    loop {
        tokio::select! {
            joined = running.join_next() => if joined.is_none() { break },
            _ = reached(stop, Stop::Kill), if !killed => {
                killed = true;
                let _ = kill_tx.send(true);
            }
        }
    }
    Ok(())
}

/// One claim of up to `max` tasks, carrying `reports` (then answering at once); the tasks
/// and the outcomes of the reports.
async fn claim(
    daemon: &Daemon,
    options: &WorkOptions,
    max: usize,
    reports: &[Report],
) -> Result<(Vec<Claimed>, Vec<Value>), ClientError> {
    let wait_ms = if reports.is_empty() {
        options.wait_ms
    } else {
        0
    };
    let mut body = json!({ "types": options.types, "max": max, "wait_ms": wait_ms });
    if let Some(ms) = options.lease_ms {
        body["lease_ms"] = ms.into();
    }
    if !reports.is_empty() {
        body["report"] = reports.iter().map(|r| r.entry.clone()).collect();
    }
    let timeout = Duration::from_millis(wait_ms) + Duration::from_secs(10);
    let mut answer = daemon
        .post_within("/api/tasks/claim", &body, timeout)
        .await?;
    let bad = |reason: String| ClientError::BadAnswer {
        url: "/api/tasks/claim".into(),
        reason,
    };
    let tasks = serde_json::from_value::<Vec<Claimed>>(answer["tasks"].take())
        .map_err(|e| bad(e.to_string()))?;
    let reported = reported(&mut answer, reports.len()).map_err(bad)?;
    Ok((tasks, reported))
}

/// The `reported` list of an answer, one outcome per report sent.
fn reported(answer: &mut Value, sent: usize) -> Result<Vec<Value>, String> {
    if sent == 0 {
        return Ok(Vec::new());
    }
    match answer["reported"].take() {
        Value::Array(list) if list.len() == sent => Ok(list),
        other => Err(format!(
            "expected {sent} outcomes in \"reported\", got {other}"
        )),
    }
}

/// Sends the reports no claim took within [`FLUSH_DELAY`] through `/api/tasks/report`,
/// retrying while the daemon cannot be reached; once `done`, sends what is left and ends.
async fn flush(
    daemon: &Daemon,
    outbox: &Outbox,
    summary: &Arc<Summary>,
    mut done: watch::Receiver<bool>,
) {
    let mut retry = RETRY_MIN;
    let mut failing = false;
    loop {
        let added = outbox.added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        if outbox.is_empty() {
            if *done.borrow() {
                return;
            }
            tokio::select! {
                _ = added => {}
                _ = done.changed() => {}
            }
            continue;
        }
        let pause = if failing { retry } else { FLUSH_DELAY };
        if failing || !*done.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = done.wait_for(|d| *d), if !failing => {}
            }
        }
        let reports = outbox.take();
        if reports.is_empty() {
            continue;
        }
        let body = json!({ "report": reports.iter().map(|r| r.entry.clone()).collect::<Vec<_>>() });
        let sent = daemon.post("/api/tasks/report", &body).await;
        match sent.and_then(|mut answer| {
            reported(&mut answer, reports.len()).map_err(|reason| ClientError::BadAnswer {
                url: "/api/tasks/report".into(),
                reason,
            })
        }) {
            Ok(outcomes) => {
                outbox.settle(reports, &outcomes, summary);
                failing = false;
                retry = RETRY_MIN;
            }
            Err(e) => {
                retry = (retry * 2).min(RETRY_MAX);
                outbox.unsent(reports, &e, retry, summary);
                failing = true;
            }
        }
    }
}

/// What a report counts when the daemon takes it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Completed,
    Failed,
    Interrupted,
}

/// A finished task's report, waiting to be sent.
#[derive(Debug)]
struct Report {
    /// The `report` list's entry: `{"id", "lease", "result"?}` or `{"id", "lease", "error"}`.
    entry: Value,
    /// The task's id.
    id: String,
    /// The lease's deadline as last known: past it, an unreachable daemon loses the task.
    deadline_ms: u64,
    kind: Kind,
    /// The entry's size as JSON.
    bytes: usize,
}

/// The finished tasks' reports not sent yet: the next claim takes them, or the flusher.
#[derive(Default)]
struct Outbox {
    // A plain mutex: held for a push or a swap, never across an await.
    waiting: parking_lot::Mutex<Vec<Report>>,
    added: tokio::sync::Notify,
    /// Set once the daemon refused a request's reports as too large (a body limit below
    /// [`REPORT_BATCH_BYTES`]).
    one_at_a_time: std::sync::atomic::AtomicBool,
}

impl Outbox {
    fn push(&self, report: Report) {
        self.waiting.lock().push(report);
        self.added.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.waiting.lock().is_empty()
    }

    /// The reports waiting, oldest first, up to [`REPORT_BATCH`] and [`REPORT_BATCH_BYTES`]
    /// (at least one).
    fn take(&self) -> Vec<Report> {
        let most = if self.one_at_a_time.load(Ordering::Relaxed) {
            1
        } else {
            REPORT_BATCH
        };
        let mut waiting = self.waiting.lock();
        let mut bytes = 0;
        let n = waiting
            .iter()
            .take(most)
            .take_while(|r| {
                bytes += r.bytes;
                bytes <= REPORT_BATCH_BYTES
            })
            .count()
            .max(waiting.len().min(1));
        waiting.drain(..n).collect()
    }

    /// Counts what the daemon answered for each report: taken, refused (lost), or not applied
    /// for now (a 5xx outcome: sent again, as an unreachable daemon's).
    fn settle(&self, reports: Vec<Report>, outcomes: &[Value], summary: &Summary) {
        let mut again = Vec::new();
        for (report, outcome) in reports.into_iter().zip(outcomes) {
            let Some(error) = outcome.get("error") else {
                Summary::add(match report.kind {
                    Kind::Completed => &summary.completed,
                    Kind::Failed => &summary.failed,
                    Kind::Interrupted => &summary.interrupted,
                });
                continue;
            };
            let status = error["status"].as_u64().unwrap_or(0);
            let message = error["message"].as_str().unwrap_or_default();
            if (400..500).contains(&status) {
                tracing::warn!(id = %report.id, status, reason = %message, "the daemon refused the result");
                Summary::add(&summary.lost);
            } else {
                again.push(report);
            }
        }
        summary.changed.notify_waiters();
        if !again.is_empty() {
            let e = ClientError::Refused {
                status: 503,
                message: "the daemon could not apply the report now".into(),
            };
            self.unsent(again, &e, RETRY_MIN, summary);
        }
    }

    /// Reports a request could not deliver (`e`): back to the outbox while their lease lasts
    /// past the next attempt (`retry` from now), else lost (they return to the queue at their
    /// deadline). A report the daemon refused as a whole (4xx) is lost, unless the request was
    /// too large (413) for more than one: they are sent again, one per request from now on.
    fn unsent(&self, reports: Vec<Report>, e: &ClientError, retry: Duration, summary: &Summary) {
        let too_large = matches!(e, ClientError::Refused { status: 413, .. });
        if too_large && reports.len() > 1 {
            tracing::warn!(
                reports = reports.len(),
                "the daemon refused the reports as too large; sending them one per request"
            );
            self.one_at_a_time.store(true, Ordering::Relaxed);
            let mut waiting = self.waiting.lock();
            for (i, report) in reports.into_iter().enumerate() {
                waiting.insert(i, report);
            }
            return;
        }
        let refused = matches!(
            e,
            ClientError::Refused {
                status: 400..=499,
                ..
            }
        );
        let _told = Told(summary);
        let mut waiting = self.waiting.lock();
        for report in reports {
            if refused {
                tracing::warn!(id = %report.id, error = %e, "the daemon refused the result");
                Summary::add(&summary.lost);
            } else if now_ms() + retry.as_millis() as u64 >= report.deadline_ms {
                tracing::warn!(id = %report.id, error = %e, "cannot report before the lease ends; the task returns to the queue");
                Summary::add(&summary.lost);
            } else {
                tracing::warn!(id = %report.id, error = %e, "reporting failed; retrying");
                waiting.push(report);
            }
        }
    }
}

/// Waits until the worker kills its tasks.
async fn killed(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|k| *k).await;
}

/// How a task's run ended.
enum Ended {
    Ran(Result<(), String>),
    LeaseLost(String),
    Killed,
}

/// Runs one task, extending its lease meanwhile, and reports it.
async fn run_one(
    daemon: Daemon,
    job: Arc<dyn Job>,
    task: Claimed,
    lease_ms: Option<u64>,
    mut kill: watch::Receiver<bool>,
    outbox: Arc<Outbox>,
    summary: Arc<Summary>,
) {
    let lease = lease_ms.unwrap_or_else(|| task.deadline_ms.saturating_sub(now_ms()));
    let every = Duration::from_millis(lease / 3).max(EXTEND_MIN);
    let path = |what: &str| format!("/api/tasks/{}/{what}", encode(&task.id));
    let mut extend_body = json!({ "lease": task.lease });
    if let Some(ms) = lease_ms {
        extend_body["lease_ms"] = ms.into();
    }
    let mut deadline_ms = task.deadline_ms;
    let ended = {
        let running = job.run(&task);
        tokio::pin!(running);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut running => break Ended::Ran(result),
                _ = tick.tick() => match daemon.post(&path("extend"), &extend_body).await {
                    Ok(answer) => {
                        deadline_ms = answer["deadline_ms"].as_u64().unwrap_or(deadline_ms);
                    }
                    Err(ClientError::Refused { status: 404 | 409, message }) => {
                        break Ended::LeaseLost(message);
                    }
                    Err(e) => tracing::warn!(id = %task.id, error = %e, "extending the lease failed; retrying"),
                },
                _ = killed(&mut kill) => break Ended::Killed,
            }
        }
        // The job's future is dropped here: a command still running is killed.
    };
    let report = |kind: Kind, error: Option<String>| {
        let mut entry = json!({ "id": task.id, "lease": task.lease });
        if let Some(error) = error {
            entry["error"] = error.into();
        }
        outbox.push(Report {
            bytes: entry.to_string().len(),
            entry,
            id: task.id.clone(),
            deadline_ms,
            kind,
        });
    };
    match ended {
        Ended::Ran(Ok(())) => report(Kind::Completed, None),
        Ended::Ran(Err(error)) => {
            tracing::info!(id = %task.id, attempt = task.attempt, error = %error, "task failed");
            report(Kind::Failed, Some(error));
        }
        Ended::LeaseLost(message) => {
            tracing::warn!(id = %task.id, reason = %message, "the lease was lost: command killed, nothing reported");
            Summary::add(&summary.lost);
        }
        Ended::Killed => report(
            Kind::Interrupted,
            Some("interrupted: the worker was stopped by a second signal".into()),
        ),
    }
}

/// Tells the watchers of a summary that it changed, when dropped.
struct Told<'a>(&'a Summary);

impl Drop for Told<'_> {
    fn drop(&mut self) {
        self.0.changed.notify_waiters();
    }
}

/// What a path segment cannot hold as is.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A task id as one path segment (ids have no whitespace, but may hold `/`, `?`, `%`...).
fn encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// Runs a command per task (`botfleet task work -- CMD ARGS...`).
#[derive(Debug, Clone)]
pub struct CommandJob {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Kills a command's process group when dropped, unless disarmed (the command ended).
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process group our child leads; at worst ESRCH.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

impl Job for CommandJob {
    fn run(&self, task: &Claimed) -> BoxFuture<'static, Result<(), String>> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env("BOTFLEET_TASK_ID", &task.id)
            .env("BOTFLEET_TASK_TYPE", &task.task_type)
            .env("BOTFLEET_TASK_ATTEMPT", task.attempt.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: between fork and exec, one async-signal-safe syscall, no allocation.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let input = json!({
            "id": task.id, "type": task.task_type, "data": task.data,
            "priority": task.priority, "attempt": task.attempt,
        })
        .to_string();
        let program = self.program.clone();
        Box::pin(async move {
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let mut group = GroupKill(child.id());
            let stdin = child.stdin.take();
            let stderr = child.stderr.take();
            let feed = async move {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its input closes the pipe: not an error.
                    let _ = stdin.write_all(input.as_bytes()).await;
                }
            };
            let tail = async move {
                let mut tail = Vec::new();
                if let Some(mut stderr) = stderr {
                    let mut buf = [0u8; 4096];
                    let mut ours = tokio::io::stderr();
                    while let Ok(n) = stderr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let _ = ours.write_all(&buf[..n]).await;
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > STDERR_TAIL_BYTES {
                            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                        }
                    }
                }
                tail
            };
            let ((), tail, status) = tokio::join!(feed, tail, child.wait());
            group.0 = None;
            let status = status.map_err(|e| format!("waiting for {program}: {e}"))?;
            if status.success() {
                return Ok(());
            }
            Err(failure(status, &tail))
        })
    }
}

/// The error of a command that failed: how it ended, then the tail of its stderr.
fn failure(status: std::process::ExitStatus, tail: &[u8]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".to_string(),
    };
    let text = String::from_utf8_lossy(tail);
    let text = text.trim();
    if text.is_empty() {
        how
    } else {
        format!("{how}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> WorkArgs {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(list).unwrap();
        match cli.command {
            crate::cli::Command::Task(crate::client::TaskCommand::Work(args)) => args,
            other => panic!("not task work: {other:?}"),
        }
    }

    #[test]
    fn the_command_follows_the_double_dash() {
        let a = args(&[
            "botfleet",
            "task",
            "work",
            "--type",
            "login",
            "--type",
            "job_check",
            "--concurrency",
            "4",
            "--",
            "sh",
            "-c",
            "echo --type",
        ]);
        assert_eq!(a.types, ["login", "job_check"]);
        assert_eq!(a.command, ["sh", "-c", "echo --type"]);
        let options = check(&a).unwrap();
        assert_eq!((options.concurrency, options.lease_ms), (4, None));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let mut a = args(&["botfleet", "task", "work", "--type", "t", "--", "true"]);
        a.concurrency = 0;
        assert_eq!(check(&a).unwrap_err().arg, "--concurrency");
        a.concurrency = 1;
        a.types = vec!["a b".into()];
        assert_eq!(check(&a).unwrap_err().arg, "--type");
        a.types = vec!["t".into()];
        a.lease_ms = Some(5);
        assert_eq!(check(&a).unwrap_err().arg, "--lease-ms");
    }

    #[test]
    fn a_failure_names_the_status_and_the_end_of_stderr() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(failure(status, b"  boom\n"), "exit status 3: boom");
        assert_eq!(failure(status, b""), "exit status 3");
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(failure(killed, b""), "killed by signal 9");
    }

    fn report(id: &str, bytes: usize) -> Report {
        Report {
            entry: json!({ "id": id, "lease": "l" }),
            id: id.into(),
            deadline_ms: now_ms() + 60_000,
            kind: Kind::Completed,
            bytes,
        }
    }

    #[test]
    fn a_request_carries_reports_up_to_its_bounds_and_a_large_one_alone() {
        let outbox = Outbox::default();
        for i in 0..3 {
            outbox.push(report(&format!("t{i}"), REPORT_BATCH_BYTES / 2));
        }
        assert_eq!(outbox.take().len(), 2);
        assert_eq!(outbox.take().len(), 1);
        assert!(outbox.take().is_empty());
        outbox.push(report("huge", REPORT_BATCH_BYTES * 2));
        outbox.push(report("small", 10));
        assert_eq!(outbox.take()[0].id, "huge");
        for i in 0..REPORT_BATCH + 5 {
            outbox.push(report(&format!("n{i}"), 1));
        }
        // "small" and the first of the others, up to the count.
        assert_eq!(outbox.take().len(), REPORT_BATCH);
    }

    #[test]
    fn outcomes_count_once_refusals_are_lost_and_503s_wait_for_another_try() {
        let outbox = Outbox::default();
        let summary = Summary::default();
        let sent = vec![report("a", 1), report("b", 1), report("c", 1)];
        let outcomes = [
            json!({ "id": "a", "status": "completed" }),
            json!({ "id": "b", "error": { "status": 409, "message": "stale" } }),
            json!({ "id": "c", "error": { "status": 503, "message": "full" } }),
        ];
        outbox.settle(sent, &outcomes, &summary);
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((count(&summary.completed), count(&summary.lost)), (1, 1));
        let again = outbox.take();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, "c");
        // Unreachable past the deadline: lost; before it: kept.
        let mut late = report("late", 1);
        late.deadline_ms = now_ms();
        let e = ClientError::Unreachable {
            url: "u".into(),
            reason: "down".into(),
        };
        outbox.unsent(vec![late, report("soon", 1)], &e, RETRY_MIN, &summary);
        assert_eq!(count(&summary.lost), 2);
        assert_eq!(outbox.take()[0].id, "soon");
    }

    #[test]
    fn reports_too_large_together_go_one_per_request_and_one_too_large_is_lost() {
        let outbox = Outbox::default();
        let summary = Summary::default();
        let e = ClientError::Refused {
            status: 413,
            message: "too large".into(),
        };
        outbox.unsent(
            vec![report("a", 1), report("b", 1)],
            &e,
            RETRY_MIN,
            &summary,
        );
        let first = outbox.take();
        assert_eq!((first.len(), first[0].id.as_str()), (1, "a"));
        outbox.unsent(first, &e, RETRY_MIN, &summary);
        assert_eq!(summary.lost.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.take()[0].id, "b");
    }

    #[test]
    fn slots_are_shared_between_lanes_without_loss() {
        assert_eq!(lanes_for(1), 1);
        assert_eq!(lanes_for(TWO_LANES_FROM - 1), 1);
        assert_eq!(lanes_for(TWO_LANES_FROM), 2);
        for concurrency in [1, 15, 16, 17, 50, 1_000] {
            let lanes = lanes_for(concurrency);
            let shares: Vec<usize> = (0..lanes)
                .map(|lane| lane_share(concurrency, lanes, lane))
                .collect();
            assert_eq!(shares.iter().sum::<usize>(), concurrency, "{shares:?}");
            assert!(shares.iter().all(|&s| s >= 1), "{shares:?}");
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_stop_is_raised_never_lowered() {
        let mut stop = Stop::Drain;
        assert!(!raise(&mut stop, Stop::Run));
        assert_eq!(stop, Stop::Drain);
        assert!(raise(&mut stop, Stop::Kill));
        assert_eq!(stop, Stop::Kill);
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(encode("0190-ab_c.d:e"), "0190-ab_c.d:e");
    }
}
