//! The task scheduler against real redis-server processes: priority and arrival order, a
//! seed-layout task added by an outside client with plain commands, retries and dead
//! letters, delayed tasks, bad input, a worker killed with -9 mid-task, a periodic job across
//! three processes, bot state and events, and Redis killed and restarted under load.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::actors::scheduler::state::{BotState, Counter, EventType};
use botfleet::actors::scheduler::{NewTask, Scheduler, SchedulerError, TaskStatus};
use botfleet::clock::now_ms;
use botfleet::settings::Settings;
use botfleet::storage::Mode;
use botfleet::Fleet;
use parking_lot::Mutex;
use support::{poll_until_async, RedisServer, TestRedis};

const CHILD_ENV: &str = "BOTFLEET_TEST_SCHEDULER_CHILD";

fn settings(url: &str) -> Settings {
    let mut s = support::suite_settings(url);
    s.scheduler.poll_interval_ms = 20;
    s.scheduler.backoff_base_ms = 20;
    s.scheduler.backoff_max_ms = 100;
    s
}

fn spawn_child(role: &str, spec: String) -> std::process::Child {
    let mut cmd = support::role_command(module_path!(), role, CHILD_ENV, &spec);
    // It prints a line per run: nobody reads it.
    cmd.stdout(Stdio::null());
    support::process::spawn_tied_to_process(cmd).unwrap()
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Enqueues the `step` task `i`, at priority 1, 10 or 5 by `i`; answers where it belongs in
/// the queue's order (minus its priority, then `i`) and its id.
async fn enqueue_step(sched: &Scheduler, i: i64) -> (i64, i64, String) {
    let prio = [1, 10, 5][i as usize % 3];
    let id = sched
        .enqueue(NewTask::raw("step", format!("{{\"i\":{i}}}")).priority(prio))
        .await
        .unwrap();
    (-prio, i, id)
}

/// Runs the tasks of type `step` with one slot until `n` have run; answers their ids in the
/// order they ran.
async fn run_steps_one_at_a_time(sched: &Scheduler, n: usize) -> Vec<String> {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    sched
        .register_handler("step", 1, move |task| {
            let seen = s2.clone();
            async move {
                seen.lock().push((task.id, task.data));
                Ok(())
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(20), || async { seen.lock().len() == n })
        .await
        .unwrap();
    let order = seen.lock().iter().map(|s| s.0.clone()).collect();
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_first_then_arrival_order() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    // Lowest priority first, so that arrival order alone would be wrong.
    let mut expected = Vec::new();
    for (i, ty) in [
        "screenshot",
        "job_check",
        "navigation",
        "job_accept",
        "login",
    ]
    .iter()
    .cycle()
    .take(15)
    .enumerate()
    {
        let id = sched
            .enqueue(NewTask::new(*ty, &serde_json::json!({ "i": i })))
            .await
            .unwrap();
        expected.push((botfleet::actors::scheduler::default_priority(ty), i, id));
    }
    // Equal scores: the queue's own order (by id) is the arrival order.
    expected.sort_by_key(|(p, i, _)| (-p, *i));
    let queued = server.cmd(&["ZRANGE", "bot:tasks:queue", "0", "-1"]);
    let queued: Vec<String> = queued
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = expected.iter().map(|e| e.2.clone()).collect();
    assert_eq!(queued, want);
    assert_eq!(
        server
            .cmd(&["ZSCORE", "bot:tasks:queue", &want[0]])
            .as_str(),
        Some("-10")
    );
    // The scheduler's own listing answers the same order.
    assert_eq!(sched.list(TaskStatus::Pending).await.unwrap(), want);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_slot_runs_in_exact_queue_order() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let mut expected = Vec::new();
    for i in 0..30i64 {
        expected.push(enqueue_step(&sched, i).await);
    }
    expected.sort();
    let order = run_steps_one_at_a_time(&sched, 30).await;
    let want: Vec<String> = expected.into_iter().map(|e| e.2).collect();
    assert_eq!(order, want);
    fleet.shutdown().await.unwrap();
}

/// Tasks no handler takes sit at the head of the queue: the claims read past them, in queue
/// order, one at a time, and leave them queued; every task claimed counts one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_read_past_tasks_nobody_takes_in_queue_order() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let mut expected = Vec::new();
    for i in 0..24i64 {
        if i % 2 == 0 {
            // Ahead of every `step` task, and taken by nobody.
            sched
                .enqueue(NewTask::raw("idle", "{}").priority(50 + i))
                .await
                .unwrap();
            continue;
        }
        expected.push(enqueue_step(&sched, i).await);
    }
    expected.sort();
    let order = run_steps_one_at_a_time(&sched, expected.len()).await;
    let want: Vec<String> = expected.iter().map(|e| e.2.clone()).collect();
    assert_eq!(order, want);
    for id in &want {
        let task = sched.get(id).await.unwrap().unwrap();
        assert_eq!(
            (task.status, task.attempts),
            (Some(TaskStatus::Completed), 1),
            "{id}"
        );
    }
    let counts = sched.counts().await.unwrap();
    assert_eq!((counts.pending, counts.processing), (12, 0));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_clients_seed_layout_task_is_processed() {
    let server = TestRedis::start().unwrap();
    // What the seed's Python bot does: HSET the task hash, ZADD its id with -priority.
    server.cmd(&[
        "HSET",
        "bot:task:py-1",
        "id",
        "py-1",
        "type",
        "job_check",
        "data",
        "{\"session_id\": \"s-1\", \"username\": \"user@example.com\"}",
        "priority",
        "5",
        "created_at",
        "2025-09-28T05:15:14Z",
        "status",
        "pending",
    ]);
    server.cmd(&["ZADD", "bot:tasks:queue", "-5", "py-1"]);
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    sched
        .register_handler("job_check", 4, move |task| {
            let seen = s2.clone();
            async move {
                assert_eq!(task.attempts, 1);
                seen.lock().push((task.id, task.data));
                Ok(())
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        server.cmd(&["HGET", "bot:task:py-1", "status"]).as_str() == Some("completed")
    })
    .await
    .unwrap();
    assert_eq!(
        seen.lock().clone(),
        vec![(
            "py-1".to_string(),
            "{\"session_id\": \"s-1\", \"username\": \"user@example.com\"}".to_string()
        )]
    );
    assert_eq!(server.cmd(&["ZCARD", "bot:tasks:queue"]).as_int(), Some(0));
    assert_eq!(
        server.cmd(&["ZCARD", "bot:tasks:processing"]).as_int(),
        Some(0)
    );
    // A type nobody here handles stays queued for other processes.
    server.cmd(&[
        "HSET",
        "bot:task:py-2",
        "id",
        "py-2",
        "type",
        "ocr",
        "data",
        "{}",
        "priority",
        "9",
        "created_at",
        "2025-09-28T05:15:14Z",
        "status",
        "pending",
    ]);
    server.cmd(&["ZADD", "bot:tasks:queue", "-9", "py-2"]);
    let id = sched
        .enqueue(NewTask::raw("job_check", "{}"))
        .await
        .unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        seen.lock().iter().any(|s| s.0 == id)
    })
    .await
    .unwrap();
    assert_eq!(
        server.cmd(&["HGET", "bot:task:py-2", "status"]).as_str(),
        Some("pending")
    );
    assert_eq!(
        server.cmd(&["ZSCORE", "bot:tasks:queue", "py-2"]).as_str(),
        Some("-9")
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_dead_letter() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let calls: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let c2 = calls.clone();
    let doomed = sched
        .enqueue(NewTask::raw("flaky", "{\"fail\": 99}"))
        .await
        .unwrap();
    let once = sched
        .enqueue(NewTask::raw("flaky", "{\"fail\": 1}"))
        .await
        .unwrap();
    sched
        .register_handler("flaky", 4, move |task| {
            let calls = c2.clone();
            async move {
                let n = {
                    let mut calls = calls.lock();
                    let v = calls.entry(task.id.clone()).or_default();
                    v.push(Instant::now());
                    v.len()
                };
                let fail: usize = serde_json::from_str::<serde_json::Value>(&task.data).unwrap()
                    ["fail"]
                    .as_u64()
                    .unwrap() as usize;
                if n <= fail {
                    Err(format!("boom {n}"))
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(20), || async {
        server
            .cmd(&["HGET", &format!("bot:task:{doomed}"), "status"])
            .as_str()
            == Some("failed")
            && server
                .cmd(&["HGET", &format!("bot:task:{once}"), "status"])
                .as_str()
                == Some("completed")
    })
    .await
    .unwrap();
    let task = sched.get(&doomed).await.unwrap().unwrap();
    assert_eq!(task.status, Some(TaskStatus::Failed));
    assert_eq!(task.attempts, 3);
    assert_eq!(task.last_error.as_deref(), Some("boom 3"));
    assert_eq!(
        sched.list(TaskStatus::Failed).await.unwrap(),
        vec![doomed.clone()]
    );
    let times = calls.lock()[&doomed].clone();
    assert_eq!(times.len(), 3, "three attempts, no more");
    // Exponential backoff: 20 ms before the second attempt, 40 ms before the third.
    assert!(times[1] - times[0] >= Duration::from_millis(20));
    assert!(times[2] - times[1] >= Duration::from_millis(40));
    let ok = sched.get(&once).await.unwrap().unwrap();
    assert_eq!(ok.attempts, 2);
    assert_eq!(ok.last_error.as_deref(), Some("boom 1"));
    assert_eq!(calls.lock()[&once].len(), 2);
    let counts = sched.counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.processing,
            counts.delayed,
            counts.dead
        ),
        (0, 0, 0, 1)
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_wait_for_their_time_and_cancel_removes() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let enqueued = now_ms();
    let later = sched
        .enqueue(NewTask::raw("later", "{}").delay_ms(600))
        .await
        .unwrap();
    let cancelled = sched
        .enqueue(NewTask::raw("later", "{}").delay_ms(400))
        .await
        .unwrap();
    let queued = sched.enqueue(NewTask::raw("later", "{}")).await.unwrap();
    assert!(sched.get(&later).await.unwrap().unwrap().run_at.is_some());
    assert_eq!(
        server.cmd(&["ZCARD", "bot:tasks:delayed"]).as_int(),
        Some(2)
    );
    assert!(sched.cancel(&cancelled).await.unwrap());
    assert!(!sched.cancel(&cancelled).await.unwrap());
    assert_eq!(sched.get(&cancelled).await.unwrap(), None);
    let ran: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let r2 = ran.clone();
    sched
        .register_handler("later", 2, move |task| {
            let ran = r2.clone();
            async move {
                ran.lock().push((task.id, now_ms()));
                Ok(())
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(10), || async { ran.lock().len() == 2 })
        .await
        .unwrap();
    let ran = ran.lock().clone();
    assert_eq!(ran[0].0, queued);
    assert_eq!(ran[1].0, later);
    assert!(
        ran[1].1 >= enqueued + 600,
        "ran {} ms early",
        enqueued + 600 - ran[1].1
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_stored() {
    let server = TestRedis::start().unwrap();
    let mut s = settings(&server.url());
    s.scheduler.max_data_bytes = 100;
    s.scheduler.max_delay_ms = 10_000;
    let fleet = Fleet::start(s).await.unwrap();
    let sched = fleet.scheduler();
    let cases = [
        (NewTask::raw("t", "not json"), "not JSON"),
        (
            NewTask::raw("t", format!("\"{}\"", "x".repeat(200))),
            "scheduler.max_data_bytes",
        ),
        (
            NewTask::raw("t", "{}").delay_ms(-5),
            "scheduler.max_delay_ms",
        ),
        (
            NewTask::raw("t", "{}").delay_ms(20_000),
            "scheduler.max_delay_ms",
        ),
        (NewTask::raw("", "{}"), "task type"),
        (NewTask::raw("t", "{}").priority(i64::MAX), "priority"),
        (NewTask::raw("t", "{}").id("has space"), "task id"),
    ];
    for (task, needle) in cases {
        let err = sched.enqueue(task.clone()).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{err} for {task:?}");
    }
    // One bad task in a bulk refuses the whole call.
    let err = sched
        .enqueue_bulk(vec![NewTask::raw("t", "{}"), NewTask::raw("t", "{")])
        .await
        .unwrap_err();
    assert!(matches!(err, SchedulerError::DataNotJson(_)));
    let stored = server.cmd(&["KEYS", "bot:*"]);
    assert_eq!(
        stored.as_array().map(|a| a.len()),
        Some(0),
        "something was stored"
    );
    // Illegal state transitions.
    let err = sched
        .set_bot_state(BotState::Running, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::IllegalTransition { .. }),
        "{err}"
    );
    assert_eq!(server.cmd(&["EXISTS", "bot:state"]).as_int(), Some(0));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_state_sessions_metrics_and_events_in_the_seed_layout() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let mut live = sched.subscribe_events().await;
    let session = sched.start_session("Redis Bot Test").await.unwrap();
    assert_eq!(
        sched
            .set_bot_state(BotState::Starting, Some(&session))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        sched.set_bot_state(BotState::Running, None).await.unwrap(),
        Some(BotState::Starting)
    );
    let err = sched
        .set_bot_state(BotState::Starting, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "illegal bot state transition running -> starting"
    );
    let state = server.cmd(&["HGET", "bot:state", "state"]);
    assert_eq!(state.as_str(), Some("running"));
    assert_eq!(
        server.cmd(&["HGET", "bot:state", "session_id"]).as_str(),
        Some(session.as_str())
    );
    assert_eq!(
        server
            .cmd(&["SISMEMBER", "bot:sessions:active", &session])
            .as_int(),
        Some(1)
    );
    // Counters from many tasks at once: every increment counted.
    let mut joins = Vec::new();
    for _ in 0..20 {
        let (sched, session) = (sched.clone(), session.clone());
        joins.push(tokio::spawn(async move {
            sched.count(&session, Counter::Checks, 1).await.unwrap();
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    sched.count(&session, Counter::Accepted, 2).await.unwrap();
    let key = format!("bot:session:{session}");
    assert_eq!(
        server.cmd(&["HGET", &key, "total_checks"]).as_str(),
        Some("20")
    );
    assert_eq!(
        server.cmd(&["HGET", &key, "total_accepted"]).as_str(),
        Some("2")
    );
    assert_eq!(
        server
            .cmd(&["HGET", &format!("bot:metrics:{session}"), "total_checks"])
            .as_str(),
        Some("20")
    );
    // Events: capped list, newest first, and each one published live.
    for i in 0..(fleet.settings().scheduler.events_max_len + 5) {
        sched
            .record_event(
                &session,
                EventType::JobFound,
                &serde_json::json!({ "i": i }),
            )
            .await
            .unwrap();
    }
    let len = server.cmd(&["LLEN", "bot:events"]).as_int().unwrap();
    assert_eq!(len as usize, fleet.settings().scheduler.events_max_len);
    let newest = sched.events(1).await.unwrap();
    let last = fleet.settings().scheduler.events_max_len + 4;
    assert_eq!(newest[0].data, format!("{{\"i\":{last}}}"));
    let raw = server.cmd(&["LINDEX", "bot:events", "0"]);
    let json: serde_json::Value = serde_json::from_str(raw.as_str().unwrap()).unwrap();
    assert_eq!(json["type"], "job_found");
    assert_eq!(json["session_id"], session.as_str());
    let first = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .unwrap()
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["data"], "{\"i\":0}");
    assert_eq!(first["type"], "job_found");
    sched.end_session(&session, "stopped").await.unwrap();
    assert_eq!(
        server
            .cmd(&["SISMEMBER", "bot:sessions:active", &session])
            .as_int(),
        Some(0)
    );
    fleet.shutdown().await.unwrap();
}

/// Child role: takes one `slow` task, marks that it started, and hangs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_worker_killed_mid_task_is_replaced_after_the_visibility_timeout"]
async fn child_hanging_worker() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let mut s = settings(&url);
    s.scheduler.visibility_timeout_ms = 1_500;
    let fleet = Fleet::start(s).await.unwrap();
    let storage = fleet.storage().clone();
    fleet
        .scheduler()
        .register_handler("slow", 1, move |task| {
            let storage = storage.clone();
            async move {
                storage.set("child:started", task.id, None).await.unwrap();
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_replaced_after_the_visibility_timeout() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    let id = sched.enqueue(NewTask::raw("slow", "{}")).await.unwrap();
    let mut child = spawn_child("child_hanging_worker", server.url());
    poll_until_async(Duration::from_secs(30), || async {
        server.cmd(&["GET", "child:started"]).as_str() == Some(id.as_str())
    })
    .await
    .unwrap();
    // The child extends its claim while it lives: still processing well after 1.5 s.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        server
            .cmd(&["HGET", &format!("bot:task:{id}"), "status"])
            .as_str(),
        Some("processing")
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let runs: Arc<Mutex<Vec<u32>>> = Arc::default();
    let r2 = runs.clone();
    sched
        .register_handler("slow", 1, move |task| {
            let runs = r2.clone();
            async move {
                runs.lock().push(task.attempts);
                Ok(())
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(20), || async {
        server
            .cmd(&["HGET", &format!("bot:task:{id}"), "status"])
            .as_str()
            == Some("completed")
    })
    .await
    .unwrap();
    assert_eq!(runs.lock().clone(), vec![2], "run again once, as attempt 2");
    let counts = sched.counts().await.unwrap();
    assert_eq!((counts.pending, counts.processing), (0, 0));
    fleet.shutdown().await.unwrap();
}

/// Child role: registers the periodic job `sched-test-job` (every 1 s) and runs until killed;
/// each run counts itself under `runs:PERIOD`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_periodic_job_runs_once_per_period_across_three_processes"]
async fn child_periodic() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let fleet = Fleet::start(settings(&url)).await.unwrap();
    let storage = fleet.storage().clone();
    fleet
        .periodic()
        .every(
            "sched-test-job",
            Duration::from_secs(1),
            Duration::from_secs(10),
            move || {
                let storage = storage.clone();
                async move {
                    let label = botfleet::actors::scheduler::periodic::period_label(
                        Duration::from_secs(1),
                        now_ms(),
                    );
                    storage
                        .incr_by(&format!("runs:{label}"), 1)
                        .await
                        .map_err(|e| e.to_string())?;
                    // Long enough that the others try while it runs.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(())
                }
            },
        )
        .unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_job_runs_once_per_period_across_three_processes() {
    let server = TestRedis::start().unwrap();
    let mut children: Vec<_> = (0..3)
        .map(|_| spawn_child("child_periodic", server.url()))
        .collect();
    let runs = || {
        let keys = server.cmd(&["KEYS", "runs:*"]);
        keys.as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    poll_until_async(Duration::from_secs(60), || async { runs().len() >= 4 })
        .await
        .unwrap();
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let keys = runs();
    for key in &keys {
        assert_eq!(
            server.cmd(&["GET", key]).as_str(),
            Some("1"),
            "{key} ran more than once"
        );
    }
    let last = server.cmd(&["GET", "sched-test-job-last-run"]);
    assert!(last.as_str().is_some());
    let ttl = server
        .cmd(&["TTL", "sched-test-job-last-run"])
        .as_int()
        .unwrap();
    assert!(ttl > 2 * 24 * 3600 && ttl <= 3 * 24 * 3600, "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_a_missed_period_runs_once() {
    let server = TestRedis::start().unwrap();
    // The job last ran days ago: several periods were missed.
    server.cmd(&["SET", "daily-job-last-run", "2020-01-01", "EX", "259200"]);
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r2 = runs.clone();
    fleet
        .periodic()
        .every(
            "daily-job",
            Duration::from_secs(86_400),
            Duration::from_secs(10),
            move || {
                let runs = r2.clone();
                async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .unwrap();
    let today =
        botfleet::actors::scheduler::periodic::period_label(Duration::from_secs(86_400), now_ms());
    poll_until_async(Duration::from_secs(10), || async {
        server.cmd(&["GET", "daily-job-last-run"]).as_str() == Some(today.as_str())
    })
    .await
    .unwrap();
    // Several more checks pass (one a second): still one run.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(fleet.periodic().runs("daily-job"), 1);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_jobs_run_once_per_fire_time() {
    use botfleet::actors::scheduler::SchedulerError;
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let counter = |runs: &Arc<std::sync::atomic::AtomicU64>| {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
    };
    // Every second: one run per second, each recorded under its fire time.
    let each = Arc::new(std::sync::atomic::AtomicU64::new(0));
    fleet
        .periodic()
        .cron(
            "each-second",
            "* * * * * *",
            Duration::from_secs(5),
            counter(&each),
        )
        .unwrap();
    let mut labels = std::collections::BTreeSet::new();
    poll_until_async(Duration::from_secs(10), || {
        if let Some(label) = server.cmd(&["GET", "each-second-last-run"]).as_str() {
            labels.insert(label.to_string());
        }
        let seen = labels.len();
        async move { seen >= 3 }
    })
    .await
    .unwrap();
    for label in &labels {
        assert!(label.ends_with('Z') && label.len() == 20, "{label}");
    }
    // Daily at midnight, last run long ago: the latest fire time runs once, not every
    // missed day.
    server.cmd(&[
        "SET",
        "nightly-last-run",
        "2020-01-01T00:00:00Z",
        "EX",
        "259200",
    ]);
    let nightly = Arc::new(std::sync::atomic::AtomicU64::new(0));
    fleet
        .periodic()
        .cron(
            "nightly",
            "0 0 0 * * *",
            Duration::from_secs(5),
            counter(&nightly),
        )
        .unwrap();
    let midnight = format!(
        "{}T00:00:00Z",
        botfleet::actors::scheduler::periodic::period_label(Duration::from_secs(86_400), now_ms())
    );
    poll_until_async(Duration::from_secs(10), || async {
        server.cmd(&["GET", "nightly-last-run"]).as_str() == Some(midnight.as_str())
    })
    .await
    .unwrap();
    assert_eq!(fleet.periodic().runs("nightly"), 1);
    // A bad expression is refused, naming it.
    let err = fleet
        .periodic()
        .cron(
            "bad",
            "every tuesday",
            Duration::from_secs(5),
            counter(&nightly),
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SchedulerError::Invalid {
                what: "cron schedule",
                ..
            }
        ),
        "{err:?}"
    );
    fleet.shutdown().await.unwrap();
}

/// With enough slots the worker keeps two steps in flight, each claiming at most half of
/// them: the second step claims what the first left, so together they fill every slot, and
/// never one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_steps_in_flight_fill_every_slot_and_never_one_more() {
    const SLOTS: usize = 20;
    const TASKS: usize = 200;
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let sched = fleet.scheduler();
    for i in 0..TASKS {
        sched
            .enqueue(NewTask::raw("held", format!("{{\"i\":{i}}}")))
            .await
            .unwrap();
    }
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (open, gate) = tokio::sync::watch::channel(false);
    let (r2, m2, d2) = (running.clone(), most.clone(), done.clone());
    sched
        .register_handler("held", SLOTS, move |task| {
            let (running, most, done, mut gate) =
                (r2.clone(), m2.clone(), d2.clone(), gate.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Every task waits until the test has seen all the slots busy at once.
                gate.wait_for(|open| *open)
                    .await
                    .map_err(|e| e.to_string())?;
                *done.lock().entry(task.id).or_default() += 1;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
    poll_until_async(Duration::from_secs(20), || async {
        running.load(Ordering::SeqCst) == SLOTS
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {SLOTS} slots busy", running.load(Ordering::SeqCst)));
    open.send(true).unwrap();
    poll_until_async(Duration::from_secs(30), || async {
        done.lock().len() == TASKS
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {TASKS} done", done.lock().len()));
    assert_eq!(most.load(Ordering::SeqCst), SLOTS);
    assert!(done.lock().values().all(|n| *n == 1), "a task ran twice");
    poll_until_async(Duration::from_secs(10), || async {
        server.cmd(&["ZCARD", "bot:tasks:processing"]).as_int() == Some(0)
    })
    .await
    .unwrap();
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_every_task_completes_once() {
    killed_and_restarted_under_load(8).await;
}

/// As above with slots enough for two steps in flight when Redis dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_two_steps_in_flight_every_task_completes_once() {
    killed_and_restarted_under_load(24).await;
}

/// Tasks enqueued while `slots` handlers run them; Redis killed (-9) half-way and restarted
/// from its persistence: every task completes exactly once.
async fn killed_and_restarted_under_load(slots: usize) {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 300;
    s.storage.redis.ping_interval_ms = 50;
    s.scheduler.visibility_timeout_ms = 5_000;
    let fleet = Fleet::start(s).await.unwrap();
    let sched = fleet.scheduler();
    let done: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let d2 = done.clone();
    sched
        .register_handler("work", slots, move |task| {
            let done = d2.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                *done.lock().entry(task.id).or_default() += 1;
                Ok(())
            }
        })
        .unwrap();
    let producer = {
        let sched = sched.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..1_500 {
                let id = sched
                    .enqueue(NewTask::raw("work", format!("{{\"i\":{i}}}")))
                    .await
                    .unwrap();
                ids.push(id);
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            ids
        })
    };
    poll_until_async(Duration::from_secs(30), || async {
        done.lock().len() >= 200
    })
    .await
    .unwrap();
    server.kill9();
    poll_until_async(Duration::from_secs(10), || async {
        fleet.storage().mode() == Mode::Degraded
    })
    .await
    .unwrap();
    let at_kill = done.lock().len();
    poll_until_async(Duration::from_secs(30), || async {
        done.lock().len() >= at_kill + 100
    })
    .await
    .expect("tasks keep completing on the fallback");
    server.restart().unwrap();
    let ids = producer.await.unwrap();
    poll_until_async(Duration::from_secs(90), || async {
        done.lock().len() == ids.len()
            && fleet.storage().mode() == Mode::Redis
            && server.cmd(&["ZCARD", "bot:tasks:queue"]).as_int() == Some(0)
            && server.cmd(&["ZCARD", "bot:tasks:processing"]).as_int() == Some(0)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {} done; mode {}",
            done.lock().len(),
            ids.len(),
            fleet.storage().mode()
        )
    });
    let done = done.lock().clone();
    for id in &ids {
        // On failure, what Redis holds of the task (attempts, status) and the storage's
        // counters say which path ran it again.
        assert_eq!(
            done.get(id),
            Some(&1),
            "{id} completed {:?} times; its hash {:?}; storage {:?}",
            done.get(id),
            server.cmd(&["HGETALL", &format!("bot:task:{id}")]),
            fleet.storage().stats()
        );
        assert_eq!(
            server
                .cmd(&["HGET", &format!("bot:task:{id}"), "status"])
                .as_str(),
            Some("completed"),
            "{id}"
        );
    }
    assert_eq!(done.len(), ids.len());
    fleet.shutdown().await.unwrap();
}

/// A task whose enqueue fails on Redis mid-call (the server froze: Redis may run it later,
/// and another process claim it there) is not run from the fallback during the outage; once
/// Redis is back it runs once, in whichever process claims it. A task enqueued once the outage
/// is known runs from the fallback as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_enqueue_may_have_reached_redis_runs_once_and_not_from_the_fallback() {
    let server = RedisServer::start().unwrap();
    let mut quick = settings(&server.url());
    quick.storage.redis.timeout_ms = 300;
    quick.storage.redis.ping_interval_ms = 50;
    // The other process waits out the freeze: it stays on Redis throughout.
    let mut patient = settings(&server.url());
    patient.storage.redis.timeout_ms = 15_000;
    let (one, other) = (
        Fleet::start(quick).await.unwrap(),
        Fleet::start(patient).await.unwrap(),
    );
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    for fleet in [&one, &other] {
        let runs = runs.clone();
        fleet
            .scheduler()
            .register_handler("work", 4, move |task| {
                let runs = runs.clone();
                async move {
                    *runs.lock().entry(task.id).or_default() += 1;
                    Ok(())
                }
            })
            .unwrap();
    }
    server.freeze();
    assert_eq!(one.storage().mode(), Mode::Redis);
    // Sent to Redis, which does not answer within the timeout: the fallback takes it.
    let uncertain = one
        .scheduler()
        .enqueue(NewTask::raw("work", "{\"n\":1}"))
        .await
        .unwrap();
    assert_eq!(one.storage().mode(), Mode::Degraded);
    // Enqueued on the fallback alone: it runs there. The worker claims in queue order, so by
    // then it would have run the first one had that been in the fallback's queue.
    let local = one
        .scheduler()
        .enqueue(NewTask::raw("work", "{\"n\":2}"))
        .await
        .unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        runs.lock().contains_key(&local)
    })
    .await
    .expect("the task enqueued during the outage ran from the fallback");
    assert_eq!(
        runs.lock().get(&uncertain),
        None,
        "a task Redis may hold ran from the fallback"
    );
    server.thaw();
    let status = |id: &str| {
        server
            .cmd(&["HGET", &format!("bot:task:{id}"), "status"])
            .as_str()
            .map(str::to_string)
    };
    poll_until_async(Duration::from_secs(30), || async {
        one.storage().mode() == Mode::Redis
            && status(&uncertain).as_deref() == Some("completed")
            && status(&local).as_deref() == Some("completed")
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "mode {}; {:?} {:?}; runs {:?}",
            one.storage().mode(),
            status(&uncertain),
            status(&local),
            runs.lock()
        )
    });
    assert_eq!(runs.lock().get(&uncertain), Some(&1), "{:?}", runs.lock());
    assert_eq!(runs.lock().get(&local), Some(&1), "{:?}", runs.lock());
    assert_eq!(server.cmd(&["ZCARD", "bot:tasks:queue"]).as_int(), Some(0));
    one.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}
