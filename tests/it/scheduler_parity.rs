//! The scheduler's Lua scripts and their Rust twins answer alike: the same scenario (priority
//! order, retries, dead letter, a dead letter by the reaper after its worker died, delayed
//! task, cancel, bot state, counters, capped events, what the history archive receives) run
//! against a real redis-server and against the fallback alone gives the same results.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use botfleet::actors::history::{History, HistoryQuery};
use botfleet::actors::scheduler::state::{BotState, Counter, EventType};
use botfleet::actors::scheduler::{NewTask, Scheduler, TaskStatus};
use botfleet::settings::{
    FallbackKind, HistorySettings, SchedulerSettings, Settings, StorageSettings,
};
use botfleet::storage::{KeySchema, Storage};
use parking_lot::Mutex;
use support::{poll_until_async, TestRedis};

/// An archived attempt without its times: id, attempt, type, data, priority, status, error.
type Archived = (String, i64, String, String, i64, String, Option<String>);

#[derive(Debug, PartialEq)]
struct Outcome {
    /// The order the tasks ran in, the delayed one aside: it joins the queue when its delay
    /// has passed, which on a loaded machine can be before the others ran.
    order: Vec<String>,
    /// Runs of the delayed task.
    delayed_runs: usize,
    tasks: Vec<(String, Option<TaskStatus>, u32, Option<String>)>,
    /// Dead letters, sorted (the two die at about the same time).
    dead: Vec<String>,
    /// What the history archive received, by id and attempt.
    archived: Vec<Archived>,
    state: Option<BotState>,
    illegal: String,
    checks: i64,
    events: usize,
}

/// A worker that claims the task of type `stuck` and dies with it: the scheduler runs on a
/// runtime of its own, dropped once the handler started (handler, worker loop and heartbeat
/// stop there, as in a process killed with -9), so the claim expires `visibility_ms` later.
async fn claim_and_die(storage: Storage, visibility_ms: u64) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let settings = SchedulerSettings {
                poll_interval_ms: 10,
                visibility_timeout_ms: visibility_ms,
                ..SchedulerSettings::default()
            };
            let dying = Scheduler::new(storage, settings, "dying");
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let tx = Mutex::new(Some(tx));
            dying
                .register_handler("stuck", 1, move |_| {
                    if let Some(tx) = tx.lock().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending()
                })
                .unwrap();
            rx.await.expect("the stuck task claimed");
        });
        drop(rt);
        let _ = done_tx.send(());
    });
    done_rx.await.expect("the dying worker's thread ended");
    thread.join().unwrap();
}

async fn scenario(storage: Storage) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(
        &HistorySettings {
            enabled: true,
            dir: dir.path().to_string_lossy().into_owned(),
            flush_interval_ms: 10,
            ..HistorySettings::default()
        },
        FallbackKind::Memory,
    )
    .unwrap();
    let settings = SchedulerSettings {
        poll_interval_ms: 10,
        backoff_base_ms: 10,
        backoff_max_ms: 20,
        events_max_len: 3,
        ..SchedulerSettings::default()
    };
    let sched = Scheduler::new(storage.clone(), settings, "parity");
    sched.archive_to(history.sink());
    for (id, prio) in [("a", 1), ("b", 10), ("c", 5), ("d", 10), ("e", 1)] {
        sched
            .enqueue(NewTask::raw("t", "{}").id(id).priority(prio))
            .await
            .unwrap();
    }
    // Enqueueing an existing id again changes nothing.
    sched
        .enqueue(NewTask::raw("t", "{\"x\":1}").id("a").priority(99))
        .await
        .unwrap();
    sched
        .enqueue(NewTask::raw("t", "{}").id("late").delay_ms(150))
        .await
        .unwrap();
    sched
        .enqueue(NewTask::raw("t", "{}").id("gone").delay_ms(150))
        .await
        .unwrap();
    sched
        .enqueue(
            NewTask::raw("t", "{}")
                .id("bad")
                .priority(-5)
                .max_attempts(2),
        )
        .await
        .unwrap();
    sched
        .enqueue(
            NewTask::raw("stuck", "{\"lost\":1}")
                .id("lost")
                .priority(20)
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert!(sched.cancel("gone").await.unwrap());
    // Its only attempt is claimed by a worker that dies; this scheduler's reaper buries it.
    claim_and_die(storage, 200).await;
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let o2 = order.clone();
    sched
        .register_handler("t", 1, move |task| {
            let order = o2.clone();
            async move {
                order.lock().push(task.id.clone());
                if task.id == "bad" {
                    Err("always".into())
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(20), || async {
        sched.counts().await.unwrap().dead == 2 && order.lock().len() == 8
    })
    .await
    .unwrap();
    // a..e and late completed, bad failed then dead, lost dead (reaped).
    poll_until_async(Duration::from_secs(20), || async {
        history
            .tasks(&HistoryQuery::latest(100))
            .await
            .is_ok_and(|p| p.items.len() == 9)
    })
    .await
    .unwrap_or_else(|_| panic!("9 attempts archived: {:?}", history.stats()));
    let mut archived: Vec<Archived> = history
        .tasks(&HistoryQuery::latest(100))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|t| {
            (
                t.id,
                t.attempt,
                t.task_type,
                t.data,
                t.priority,
                t.status,
                t.error,
            )
        })
        .collect();
    archived.sort();
    history.close(Duration::from_secs(5)).await;
    let mut tasks = Vec::new();
    for id in ["a", "b", "c", "d", "e", "late", "gone", "bad", "lost"] {
        let t = sched.get(id).await.unwrap();
        tasks.push(match t {
            Some(t) => (id.to_string(), t.status, t.attempts, t.last_error),
            None => (id.to_string(), None, 0, None),
        });
    }
    sched.stop(Duration::from_secs(5)).await;
    let session = sched.start_session("s").await.unwrap();
    sched
        .set_bot_state(BotState::Starting, Some(&session))
        .await
        .unwrap();
    let illegal = sched
        .set_bot_state(BotState::Stopped, None)
        .await
        .unwrap_err()
        .to_string();
    for _ in 0..4 {
        sched.count(&session, Counter::Checks, 2).await.unwrap();
        sched
            .record_event(&session, EventType::JobFound, &serde_json::json!({}))
            .await
            .unwrap();
    }
    let (delayed, order): (Vec<String>, Vec<String>) =
        order.lock().iter().cloned().partition(|id| id == "late");
    let mut dead = sched.list(TaskStatus::Failed).await.unwrap();
    dead.sort();
    Outcome {
        order,
        delayed_runs: delayed.len(),
        tasks,
        dead,
        archived,
        state: sched.bot_state().await.unwrap().map(|s| s.state),
        illegal,
        checks: sched.count(&session, Counter::Checks, 0).await.unwrap(),
        events: sched.events(100).await.unwrap().len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_and_rust_twins_answer_alike() {
    let server = TestRedis::start().unwrap();
    let mut on_redis = Settings::default();
    on_redis.storage.redis.url = server.url();
    on_redis.storage.redis.timeout_ms = 2_000;
    support::fit_settings(&mut on_redis);
    let keys = KeySchema::new(&on_redis.keys);
    let redis = Storage::open(&on_redis.storage, &keys).await.unwrap();
    let mut local = StorageSettings::default();
    local.redis.enabled = false;
    let fallback = Storage::open(&local, &keys).await.unwrap();
    let a = scenario(redis).await;
    let b = scenario(fallback).await;
    assert_eq!(a, b);
    assert_eq!(a.order, ["b", "d", "c", "a", "e", "bad", "bad"]);
    assert_eq!(a.delayed_runs, 1);
    assert_eq!(a.dead, vec!["bad".to_string(), "lost".to_string()]);
    let lost = a.archived.iter().find(|t| t.0 == "lost");
    assert_eq!(
        lost,
        Some(&(
            "lost".to_string(),
            1,
            "stuck".to_string(),
            "{\"lost\":1}".to_string(),
            20,
            "dead".to_string(),
            Some("visibility timeout expired".to_string()),
        )),
        "{:?}",
        a.archived
    );
    assert_eq!(a.checks, 8);
    assert_eq!(a.events, 3);
}

/// A leaseholder's calls (the HTTP worker protocol's), in one scenario: claims by type and by
/// `*`, extensions, completions with a result, failures retried and dead-lettered, a lease
/// reaped and claimed again, dead letters retried and deleted, a delayed task promoted, and
/// what the archive receives. Every observation except the random lease tokens is compared.
async fn lease_scenario(storage: Storage) -> Vec<String> {
    use botfleet::actors::scheduler::{ClaimOptions, ClaimedTask, SchedulerError};
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(
        &HistorySettings {
            enabled: true,
            dir: dir.path().to_string_lossy().into_owned(),
            flush_interval_ms: 10,
            ..HistorySettings::default()
        },
        FallbackKind::Memory,
    )
    .unwrap();
    let settings = SchedulerSettings {
        poll_interval_ms: 10,
        backoff_base_ms: 10,
        backoff_max_ms: 20,
        max_attempts: 2,
        ..SchedulerSettings::default()
    };
    let sched = Scheduler::new(storage, settings, "parity");
    sched.archive_to(history.sink());
    let mut seen = Vec::new();
    for (id, ty, prio) in [("x1", "a", 5), ("x2", "b", 3), ("x3", "c", 1)] {
        sched
            .enqueue(NewTask::raw(ty, "{\"n\":1}").id(id).priority(prio))
            .await
            .unwrap();
    }
    sched
        .enqueue(NewTask::raw("a", "{}").id("d1").delay_ms(600_000))
        .await
        .unwrap();
    let claim = |types: &[&str], max: usize, lease_ms: u64| ClaimOptions {
        types: types.iter().map(|t| t.to_string()).collect(),
        max,
        lease_ms,
        wait: Duration::ZERO,
    };
    let show = |c: &[ClaimedTask]| {
        c.iter()
            .map(|c| format!("{}#{}/{}", c.task.id, c.attempt, c.max_attempts))
            .collect::<Vec<_>>()
            .join(",")
    };
    let err = |e: SchedulerError| match e {
        SchedulerError::StaleLease { status, .. } => format!("stale({status})"),
        SchedulerError::NoSuchTask(id) => format!("none({id})"),
        other => format!("{other}"),
    };
    let a = sched.claim(&claim(&["a"], 5, 60_000)).await.unwrap();
    seen.push(format!("claim a: {}", show(&a)));
    let any = sched.claim(&claim(&["*"], 1, 60_000)).await.unwrap();
    seen.push(format!("claim *: {}", show(&any)));
    let (x1, x2) = (&a[0], &any[0]);
    assert_eq!((x1.lease.len(), x2.lease.len()), (32, 32));
    seen.push(format!(
        "extend, wrong lease: {:?}",
        sched.extend_lease("x1", "nope", 60_000).await.map_err(err)
    ));
    let extended = sched.extend_lease("x1", &x1.lease, 60_000).await.unwrap();
    seen.push(format!(
        "extend: later {}",
        extended > x1.deadline_ms - 60_000
    ));
    sched
        .complete_lease("x1", &x1.lease, Some("{\"r\":1}"))
        .await
        .unwrap();
    seen.push(format!(
        "complete again: {:?}",
        sched
            .complete_lease("x1", &x1.lease, None)
            .await
            .map_err(err)
    ));
    let t = sched.get("x1").await.unwrap().unwrap();
    seen.push(format!("x1: {:?} {:?}", t.status, t.result));
    let failed = sched.fail_lease("x2", &x2.lease, "first").await.unwrap();
    seen.push(format!(
        "fail x2: dead {} retry {}",
        failed.dead,
        failed.retry_at_ms.is_some()
    ));
    seen.push(format!("promote x2: {:?}", sched.promote("x2").await));
    let b = sched.claim(&claim(&["b"], 5, 60_000)).await.unwrap();
    seen.push(format!("claim b: {}", show(&b)));
    let failed = sched.fail_lease("x2", &b[0].lease, "second").await.unwrap();
    seen.push(format!(
        "fail x2 again: dead {} retry {:?}",
        failed.dead, failed.retry_at_ms
    ));
    seen.push(format!(
        "retry x2: {:?}",
        sched.retry_dead(&["x2".into(), "nope".into()]).await
    ));
    let b = sched.claim(&claim(&["b"], 5, 60_000)).await.unwrap();
    seen.push(format!("claim b after retry: {}", show(&b)));
    sched.complete_lease("x2", &b[0].lease, None).await.unwrap();
    // A lease that runs out: reaped, claimed again; the first lease is stale.
    let c1 = sched.claim(&claim(&["c"], 1, 100)).await.unwrap();
    poll_until_async(Duration::from_secs(5), || async {
        botfleet::clock::now_ms() > c1[0].deadline_ms
    })
    .await
    .unwrap();
    let c2 = sched.claim(&claim(&["c"], 1, 60_000)).await.unwrap();
    seen.push(format!("claim c twice: {} then {}", show(&c1), show(&c2)));
    seen.push(format!(
        "fail, first lease: {:?}",
        sched
            .fail_lease("x3", &c1[0].lease, "late")
            .await
            .map_err(err)
    ));
    let failed = sched.fail_lease("x3", &c2[0].lease, "last").await.unwrap();
    seen.push(format!("fail x3: dead {}", failed.dead));
    seen.push(format!("retry all: {:?}", sched.retry_all_dead().await));
    seen.push(format!(
        "delete x3 (not dead): {:?}",
        sched.delete_dead("x3").await
    ));
    let c3 = sched.claim(&claim(&["c"], 1, 60_000)).await.unwrap();
    sched.fail_lease("x3", &c3[0].lease, "again").await.unwrap();
    seen.push(format!("promote x3: {:?}", sched.promote("x3").await));
    let c4 = sched.claim(&claim(&["c"], 1, 60_000)).await.unwrap();
    sched
        .fail_lease("x3", &c4[0].lease, "dead again")
        .await
        .unwrap();
    seen.push(format!("delete x3: {:?}", sched.delete_dead("x3").await));
    seen.push(format!("x3 after: {:?}", sched.get("x3").await.unwrap()));
    seen.push(format!(
        "promote d1: {:?} then {:?}",
        sched.promote("d1").await,
        sched.promote("d1").await
    ));
    let d = sched.claim(&claim(&["a"], 5, 60_000)).await.unwrap();
    seen.push(format!("claim d1: {}", show(&d)));
    seen.push(format!(
        "none: {:?}",
        sched.complete_lease("zz", "l", None).await.map_err(err)
    ));
    seen.push(format!("counts: {:?}", sched.counts().await.unwrap()));
    // Seven attempts ended through a lease: x1 completed; x2 failed, dead, then (retried)
    // completed; x3 dead, then (retried) failed and dead. The archive keeps one row per id
    // and attempt: the first.
    poll_until_async(Duration::from_secs(20), || async {
        history.stats().acknowledged == 7
    })
    .await
    .unwrap_or_else(|_| panic!("7 attempts archived: {:?}", history.stats()));
    let mut archived: Vec<String> = history
        .tasks(&HistoryQuery::latest(100))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|t| {
            format!(
                "{} {} {} {} {:?} {}",
                t.id, t.attempt, t.task_type, t.status, t.error, t.priority
            )
        })
        .collect();
    archived.sort();
    history.close(Duration::from_secs(5)).await;
    seen.extend(archived);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_answer_alike_on_redis_and_on_the_fallback() {
    let server = TestRedis::start().unwrap();
    let mut on_redis = Settings::default();
    on_redis.storage.redis.url = server.url();
    on_redis.storage.redis.timeout_ms = 2_000;
    support::fit_settings(&mut on_redis);
    let keys = KeySchema::new(&on_redis.keys);
    let redis = Storage::open(&on_redis.storage, &keys).await.unwrap();
    let mut local = StorageSettings::default();
    local.redis.enabled = false;
    let fallback = Storage::open(&local, &keys).await.unwrap();
    let a = lease_scenario(redis).await;
    let b = lease_scenario(fallback).await;
    assert_eq!(a, b);
    let expected = [
        "claim a: x1#1/2",
        "claim *: x2#1/2",
        "extend, wrong lease: Err(\"stale(processing)\")",
        "extend: later true",
        "complete again: Err(\"stale(completed)\")",
        "x1: Some(Completed) Some(\"{\\\"r\\\":1}\")",
        "fail x2: dead false retry true",
        "promote x2: Ok(true)",
        "claim b: x2#2/2",
        "fail x2 again: dead true retry None",
        "retry x2: Ok(1)",
        "claim b after retry: x2#1/2",
        "claim c twice: x3#1/2 then x3#2/2",
        "fail, first lease: Err(\"stale(processing)\")",
        "fail x3: dead true",
        "retry all: Ok(1)",
        "delete x3 (not dead): Ok(false)",
        "promote x3: Ok(true)",
        "delete x3: Ok(true)",
        "x3 after: None",
        "promote d1: Ok(true) then Ok(false)",
        "claim d1: d1#1/2",
        "none: Err(\"none(zz)\")",
        "counts: QueueCounts { pending: 0, delayed: 0, processing: 1, dead: 0 }",
        "x1 1 a completed None 5",
        "x2 1 b failed Some(\"first\") 3",
        "x2 2 b dead Some(\"second\") 3",
        "x3 1 c failed Some(\"again\") 1",
        "x3 2 c dead Some(\"last\") 1",
    ];
    assert_eq!(a, expected, "{a:#?}");
}
