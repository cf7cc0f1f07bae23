//! The work of the built-in actors runs in supervised tasks: a panic injected into each
//! actor's work (through `botfleet::supervisor::fault`, compiled into debug builds only) is
//! reported with its message, the actor is restarted within its backoff, its work resumes,
//! and no sibling restarts. The history writer's restart resumes from the same queue: records
//! queued while it was down reach the archive. Past the restart intensity the tree stops with
//! the documented error.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use botfleet::actors::history::HistoryQuery;
use botfleet::actors::scheduler::state::EventType;
use botfleet::actors::scheduler::NewTask;
use botfleet::http::HttpApi;
use botfleet::settings::{HistorySettings, Settings};
use botfleet::supervisor::{backoff_ceiling, fault, ChildState, SupervisionEvent, SupervisorError};
use botfleet::{Fleet, FleetError};
use serde_json::json;
use support::{poll_until_async, TestRedis};

const WAIT: Duration = Duration::from_secs(20);
/// Time a restart may take past its backoff on a busy 2-core machine (a new arbiter thread).
const START_SLACK_MS: u64 = 1_000;

fn settings(url: &str) -> Settings {
    let mut s = support::suite_settings(url);
    s.heartbeat.interval_ms = 100;
    s.heartbeat.monitor_interval_ms = 100;
    s
}

/// Arms the fault point `point` once and waits for `actor` to be restarted after it: the
/// failure names the injected panic, the downtime stays within the first backoff, the actor
/// runs again, and no other actor failed or restarted.
async fn panic_and_restart(fleet: &Fleet, actor: &str, point: &str) {
    let mut events = fleet.supervision_events();
    fault::arm(point, 1);
    let expected = format!("injected fault at {point}");
    let (downtime_ms, error) = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(SupervisionEvent::ActorRestarted {
                    actor: a,
                    downtime_ms,
                    error,
                    ..
                }) if a == actor => return (downtime_ms, error),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("supervision events closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{actor} was not restarted after the panic at {point}"));
    let text = error.to_string();
    assert!(
        text.starts_with("panicked: ") && text.contains(&expected),
        "{actor} failed with {text:?}"
    );
    let ceiling = backoff_ceiling(&fleet.settings().supervisor, 1).as_millis() as u64;
    assert!(
        downtime_ms <= ceiling + START_SLACK_MS,
        "{actor} was down {downtime_ms} ms (first backoff at most {ceiling} ms)"
    );
    let health = fleet.health().actors;
    let row = health.actor(actor).unwrap();
    assert_eq!(row.restarts, 1, "{row:?}");
    assert!(
        row.last_failure
            .as_deref()
            .is_some_and(|f| f.contains(&expected)),
        "{row:?}"
    );
    assert!(row.last_failure_unix_ms.is_some(), "{row:?}");
    for other in health.actors.iter().filter(|h| h.actor != actor) {
        assert_eq!(other.restarts, 0, "sibling disturbed: {other:?}");
        assert_eq!(other.last_failure, None, "sibling disturbed: {other:?}");
    }
    poll_until_async(WAIT, || async {
        fleet.health().actors.actor(actor).unwrap().state == ChildState::Running
    })
    .await
    .expect("running again");
}

/// Waits until `count` passes `from + by`.
async fn grows(what: &str, from: u64, by: u64, count: impl Fn() -> u64) {
    let reached = poll_until_async(WAIT, || {
        let now = count();
        async move { now >= from + by }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{what}: {} after {from}, expected +{by}",
        count()
    );
}

fn game(issue: u64) -> serde_json::Value {
    json!({"data": {"records": [
        {"issue": issue, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
    ]}})
}

async fn shared_data_fleet(url: &str) -> Fleet {
    let mut s = settings(url);
    s.shared_data.enabled = true;
    s.shared_data.readers = vec!["EN".into()];
    s.shared_data.fetch_interval_ms = 100;
    s.shared_data.leader_ttl_ms = 1_000;
    let fleet = Fleet::start(s).await.unwrap();
    let issue = Arc::new(AtomicU64::new(0));
    fleet.shared_data().register_source(move || {
        let n = issue.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, String>(game(n)) }
    });
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_fetcher_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = shared_data_fleet(&redis.url()).await;
    let fetches = || fleet.shared_data().metrics().fetcher.fetches;
    grows("fetches before", 0, 2, fetches).await;
    panic_and_restart(&fleet, "shared-data-fetcher", "fetcher").await;
    grows("fetches after the restart", fetches(), 3, fetches).await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_key_watch_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = shared_data_fleet(&redis.url()).await;
    let reads = || fleet.shared_data().metrics().watch.reads;
    grows("key reads before", 0, 2, reads).await;
    panic_and_restart(&fleet, "shared-data-fetcher", "shared-data-watch").await;
    grows("key reads after the restart", reads(), 2, reads).await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_reader_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = shared_data_fleet(&redis.url()).await;
    let reader = fleet.shared_data().reader("EN").unwrap();
    let notices = || reader.metrics().notices;
    grows("notices before", 0, 2, notices).await;
    panic_and_restart(&fleet, "reader-EN", "reader").await;
    grows("notices after the restart", notices(), 3, notices).await;
    let reading = reader.read().await.expect("reads are answered");
    assert!(reading.age_ms < 5_000, "{reading:?}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_scheduler_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    fleet
        .scheduler()
        .register_handler("step", 2, move |_| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .unwrap();
    let enqueue = |n: u64| {
        let scheduler = fleet.scheduler();
        async move {
            for i in 0..n {
                scheduler
                    .enqueue(NewTask::new("step", &json!({ "i": i })))
                    .await
                    .unwrap();
            }
        }
    };
    fleet
        .periodic()
        .every(
            "supervised-job",
            Duration::from_secs(1),
            Duration::from_secs(5),
            || async { Ok(()) },
        )
        .unwrap();
    let runs = || fleet.periodic().runs("supervised-job");
    enqueue(3).await;
    grows("tasks before", 0, 3, || done.load(Ordering::Relaxed)).await;
    grows("periodic runs before", 0, 1, runs).await;
    panic_and_restart(&fleet, "scheduler", "scheduler").await;
    enqueue(3).await;
    grows("tasks after the restart", 3, 3, || {
        done.load(Ordering::Relaxed)
    })
    .await;
    // The periodic jobs run again under the new incarnation (no flag left set).
    grows("periodic runs after the restart", runs(), 2, runs).await;
    let counts = fleet.scheduler().counts().await.unwrap();
    assert_eq!((counts.pending, counts.processing), (0, 0), "{counts:?}");
    fleet.shutdown().await.unwrap();
}

/// A waiter for `name` is granted the lock once its holder, another process (plain commands,
/// as a seed's client holds a lock), releases it and announces the release on the channel:
/// the waiter marked the name, and the lock manager's notice wakes it. (A holder of the
/// waiter's own process would wake it directly, with no notice.)
async fn handed_over(fleet: &Fleet, redis: &TestRedis, name: &str) {
    let locks = fleet.locks();
    let ttl = Duration::from_secs(5);
    assert_eq!(
        redis
            .cmd(&["SET", name, "elsewhere", "PX", "5000", "NX"])
            .as_str(),
        Some("OK"),
        "{name} is free"
    );
    let waiter = {
        let (locks, name) = (locks.clone(), name.to_owned());
        tokio::spawn(async move { locks.acquire(&name, ttl, Duration::from_secs(10)).await })
    };
    let mark = fleet.storage().keys().lock_waiting(name);
    poll_until_async(WAIT, || async {
        redis.cmd(&["EXISTS", &mark]).as_int() == Some(1)
    })
    .await
    .expect("the waiter marks the name");
    // The holder's release: the lock and the mark go, and the notice follows.
    assert_eq!(redis.cmd(&["DEL", name, &mark]).as_int(), Some(2));
    let channel = &fleet.settings().locks.release_channel;
    redis.cmd(&["PUBLISH", channel, &format!("elsewhere\n{name}")]);
    let granted = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    let guard = granted.expect("the waiter is granted the lock");
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_lock_manager_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    handed_over(&fleet, &redis, "supervised-lock-1").await;
    let notices = || fleet.locks().stats().notices_heard;
    grows("release notices heard", 0, 1, notices).await;
    let heard = notices();
    // The next release notice the manager hears panics its task.
    let restarted = panic_and_restart(&fleet, "locks", "locks");
    // Armed first (the hand-over's notice may go out before it yields).
    let ((), ()) = tokio::join!(
        biased;
        restarted,
        handed_over(&fleet, &redis, "supervised-lock-2")
    );
    handed_over(&fleet, &redis, "supervised-lock-3").await;
    // The new incarnation hears the release notices again.
    grows("release notices heard after the restart", heard, 1, notices).await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_hazard_ticker_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let mut s = settings(&redis.url());
    s.hazards.enabled = true;
    s.hazards.interval_ms = 100;
    s.hazards.lock_ttl_ms = 1_000;
    let fleet = Fleet::start(s).await.unwrap();
    let ticks = || {
        let fleet = &fleet;
        async move { fleet.hazard_ticker_status().await.unwrap().ticks_written }
    };
    let before = poll_until_async(WAIT, || async { ticks().await >= 2 }).await;
    assert!(before.is_ok(), "ticks are written");
    panic_and_restart(&fleet, "hazards", "hazards").await;
    let at_restart = ticks().await;
    let after = poll_until_async(WAIT, || async { ticks().await >= at_restart + 3 }).await;
    assert!(
        after.is_ok(),
        "ticks resume: {} after {at_restart}",
        ticks().await
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_heartbeat_sender_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    let heartbeat = fleet.heartbeat();
    let beats = || heartbeat.beats();
    grows("beats before", 0, 2, beats).await;
    panic_and_restart(&fleet, "heartbeat", "heartbeat").await;
    grows("beats after the restart", beats(), 3, beats).await;
    let key = heartbeat.key();
    assert!(
        redis.cmd(&["GET", &key]).as_str().is_some(),
        "{key} written"
    );
    // `/status` tells the restart and the failure.
    let http = HttpApi::start(fleet.clone()).unwrap();
    let url = format!("http://{}/status", http.local_addr());
    let status: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let row = status["actors"]["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["actor"] == "heartbeat")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["restarts"], 1, "{row}");
    assert!(
        row["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("injected fault at heartbeat")),
        "{row}"
    );
    assert!(row["last_failure_unix_ms"].as_u64().is_some(), "{row}");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_cache_listener_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    let cache = fleet.cache();
    let ttl = Duration::from_secs(60);
    // Its own invalidation message reaches the listener, and panics it.
    let restarted = panic_and_restart(&fleet, "cache", "cache");
    let set = async {
        // Until the listener has subscribed and heard one: a message every 50 ms.
        let mut every = tokio::time::interval(Duration::from_millis(50));
        while fleet.health().actors.actor("cache").unwrap().restarts == 0 {
            every.tick().await;
            cache.set("supervised-key", "v1", ttl).await.unwrap();
        }
    };
    tokio::join!(restarted, set);
    // Another process's invalidation drops the near copy again.
    cache.set("supervised-key", "v2", ttl).await.unwrap();
    assert!(cache.peek("supervised-key").is_some(), "kept near");
    let heard = cache.stats().invalidations_received;
    // As a seed bot publishes it (the reply counts only that node's subscribers on a Cluster).
    redis.cmd(&["PUBLISH", "cache-invalidate", r#"{"key":"supervised-key"}"#]);
    grows("invalidations after the restart", heard, 1, || {
        cache.stats().invalidations_received
    })
    .await;
    assert!(cache.peek("supervised-key").is_none(), "dropped near");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_history_writer_is_restarted() {
    let redis = TestRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&redis.url());
    s.history = HistorySettings {
        enabled: true,
        dir: dir.path().join("history").to_string_lossy().into_owned(),
        flush_interval_ms: 20,
        retry_interval_ms: 100,
        connect_timeout_ms: 1_000,
        ..HistorySettings::default()
    };
    let fleet = Fleet::start(s).await.unwrap();
    let (scheduler, history) = (fleet.scheduler(), fleet.history());
    let session = "history-supervised";
    let record = |i: u64| {
        let scheduler = scheduler.clone();
        async move {
            scheduler
                .record_event(session, EventType::JobFound, &json!({ "i": i }))
                .await
                .unwrap()
                .id
        }
    };
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(record(i).await);
    }
    let written = || history.stats().written;
    grows("records written before", 0, 2, written).await;
    // The writer takes the next record, writes it, and panics at its next pass; records
    // queued while it is down wait in the same queue for the restarted writer.
    let restarted = panic_and_restart(&fleet, "history", "history");
    let queue = async {
        let mut queued = vec![record(2).await];
        let failed = poll_until_async(WAIT, || async {
            let health = fleet.health().actors;
            health.actor("history").unwrap().last_failure.is_some()
        })
        .await;
        assert!(failed.is_ok(), "the writer's panic is reported");
        for i in 3..6 {
            queued.push(record(i).await);
        }
        queued
    };
    let ((), queued) = tokio::join!(restarted, queue);
    ids.extend(queued);
    for i in 6..9 {
        ids.push(record(i).await);
    }
    let archived = || async {
        let page = history
            .events(&HistoryQuery::latest(100).session(session))
            .await
            .unwrap();
        let mut got: Vec<String> = page.items.into_iter().map(|e| e.id).collect();
        got.sort();
        got
    };
    ids.sort();
    let all = poll_until_async(WAIT, || async { archived().await == ids }).await;
    assert!(
        all.is_ok(),
        "archived {:?}, expected {ids:?}",
        archived().await
    );
    let stats = history.stats();
    assert_eq!(
        (stats.lost, stats.dropped, stats.rejected),
        (0, 0, 0),
        "{stats:?}"
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_panicking_past_the_restart_intensity_stops_the_tree() {
    let redis = TestRedis::start().unwrap();
    let mut s = settings(&redis.url());
    s.supervisor.max_restarts = 2;
    s.supervisor.within_secs = 30;
    let fleet = Fleet::start(s).await.unwrap();
    fault::arm("heartbeat", 100);
    let ended = tokio::time::timeout(WAIT, fleet.wait())
        .await
        .expect("the tree gives up");
    match ended {
        Err(FleetError::Supervisor(SupervisorError::IntensityExceeded {
            actor,
            last_failure,
            restarts,
            ..
        })) => {
            assert_eq!(actor, "heartbeat");
            assert_eq!(restarts, 3);
            assert!(
                last_failure
                    .to_string()
                    .contains("injected fault at heartbeat"),
                "{last_failure}"
            );
        }
        other => panic!("expected the intensity error, got {other:?}"),
    }
    let health = fleet.health().actors;
    assert!(
        health.actors.iter().all(|h| h.state != ChildState::Running),
        "{health:?}"
    );
    fleet.shutdown().await.unwrap();
}
