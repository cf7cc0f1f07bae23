//! The scheduler's Lua scripts and their Rust twins answer alike: the same scenario (priority
//! order, retries, dead letter, delayed task, cancel, bot state, counters, capped events) run
//! against a real redis-server and against the fallback alone gives the same results.

mod support;

use std::sync::Arc;
use std::time::Duration;

use botfleet::actors::scheduler::state::{BotState, Counter, EventType};
use botfleet::actors::scheduler::{NewTask, Scheduler, TaskStatus};
use botfleet::settings::{SchedulerSettings, StorageSettings};
use botfleet::storage::{KeySchema, Storage};
use parking_lot::Mutex;
use support::{poll_until_async, RedisServer};

#[derive(Debug, PartialEq)]
struct Outcome {
    order: Vec<String>,
    tasks: Vec<(String, Option<TaskStatus>, u32, Option<String>)>,
    dead: Vec<String>,
    state: Option<BotState>,
    illegal: String,
    checks: i64,
    events: usize,
}

async fn scenario(storage: Storage) -> Outcome {
    let settings = SchedulerSettings {
        poll_interval_ms: 10,
        backoff_base_ms: 10,
        backoff_max_ms: 20,
        events_max_len: 3,
        ..SchedulerSettings::default()
    };
    let sched = Scheduler::new(storage, settings, "parity");
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
    assert!(sched.cancel("gone").await.unwrap());
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
        sched.counts().await.unwrap().dead == 1 && order.lock().len() == 8
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for id in ["a", "b", "c", "d", "e", "late", "gone", "bad"] {
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
    Outcome {
        order,
        tasks,
        dead: sched.list(TaskStatus::Failed).await.unwrap(),
        state: sched.bot_state().await.unwrap().map(|s| s.state),
        illegal,
        checks: sched.count(&session, Counter::Checks, 0).await.unwrap(),
        events: sched.events(100).await.unwrap().len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_and_rust_twins_answer_alike() {
    let server = RedisServer::start().unwrap();
    let mut on_redis = StorageSettings::default();
    on_redis.redis.url = server.url();
    on_redis.redis.timeout_ms = 2_000;
    let redis = Storage::open(&on_redis, &KeySchema::default())
        .await
        .unwrap();
    let mut local = StorageSettings::default();
    local.redis.enabled = false;
    let fallback = Storage::open(&local, &KeySchema::default()).await.unwrap();
    let a = scenario(redis).await;
    let b = scenario(fallback).await;
    assert_eq!(a, b);
    assert_eq!(&a.order[..5], ["b", "d", "c", "a", "e"]);
    assert_eq!(a.dead, vec!["bad".to_string()]);
    assert_eq!(a.checks, 8);
    assert_eq!(a.events, 3);
}
