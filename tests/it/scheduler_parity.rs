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
    order: Vec<String>,
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
    let order = order.lock().clone();
    let mut dead = sched.list(TaskStatus::Failed).await.unwrap();
    dead.sort();
    Outcome {
        order,
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
    assert_eq!(&a.order[..5], ["b", "d", "c", "a", "e"]);
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
