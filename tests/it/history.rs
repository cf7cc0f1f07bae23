//! The history archive against real databases and real redis-server processes: what a run of
//! tasks, sessions and events leaves in SQLite and in PostgreSQL; events that outlive the
//! trimming of `bot:events`; PostgreSQL stopped and restarted under load (every record once);
//! a daemon killed with -9 while the database is down (nothing the spool acknowledged is
//! lost); a task whose workers were killed with -9, dead-lettered by another process's reaper
//! and archived by it; retention that deletes only old rows; players' settled rounds that stay
//! verifiable from the archive (SQLite and PostgreSQL), and a version-1 archive migrated to
//! hold them.

use crate::support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use botfleet::actors::hazards::fairness;
use botfleet::actors::history::{
    task_status, Archive, EventRecord, History, HistoryQuery, Record, SettlementRecord, TaskRecord,
    RETENTION_JOB,
};
use botfleet::actors::scheduler::state::EventType;
use botfleet::actors::scheduler::{NewTask, TaskStatus};
use botfleet::clock::now_ms;
use botfleet::settings::{FallbackKind, HistorySettings, Settings};
use botfleet::Fleet;
use support::postgres::{create_database, PgDatabase, PrivatePostgres};
use support::{poll_until_async, RedisServer};

const CHILD_ENV: &str = "BOTFLEET_TEST_HISTORY_CHILD";
const WORKER_ENV: &str = "BOTFLEET_TEST_HISTORY_WORKER";
/// The visibility timeout of the killed workers' claims, ms.
const SHORT_VISIBILITY_MS: u64 = 500;
const WAIT: Duration = Duration::from_secs(30);

fn settings(redis: &str, history_url: &str, dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = redis.to_string();
    s.storage.redis.timeout_ms = 2_000;
    s.supervisor.stop_timeout_ms = 5_000;
    s.scheduler.poll_interval_ms = 20;
    s.scheduler.backoff_base_ms = 20;
    s.scheduler.backoff_max_ms = 50;
    s.heartbeat.enabled = false;
    s.history = HistorySettings {
        enabled: true,
        url: history_url.to_string(),
        dir: dir.join("history").to_string_lossy().into_owned(),
        flush_interval_ms: 20,
        retry_interval_ms: 100,
        connect_timeout_ms: 1_000,
        ..HistorySettings::default()
    };
    s
}

async fn all_tasks(history: &History) -> Vec<TaskRecord> {
    history
        .tasks(&HistoryQuery::latest(10_000))
        .await
        .unwrap()
        .items
}

/// Every archived event, page after page.
async fn all_events(history: &History) -> Vec<EventRecord> {
    let mut out = Vec::new();
    let mut query = HistoryQuery::latest(5_000);
    loop {
        let page = history.events(&query).await.unwrap();
        out.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query = HistoryQuery::latest(5_000).after(cursor),
            None => return out,
        }
    }
}

/// A run of tasks (completed; failed then completed; dead-lettered), a session with events,
/// then what the archive holds.
async fn run_and_check_contents(history_url: &str) {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(settings(&redis.url(), history_url, dir.path()))
        .await
        .unwrap();
    let t0 = now_ms() as i64;
    let sched = fleet.scheduler();
    let session = sched.start_session("contents").await.unwrap();
    sched
        .update_session(&session, &[("login_status", "success")])
        .await
        .unwrap();
    let tries = Arc::new(AtomicU64::new(0));
    let t = tries.clone();
    sched
        .register_handler("job_check", 2, move |task| {
            let t = t.clone();
            async move {
                match task.data.as_str() {
                    r#"{"kind":"flaky"}"# if task.attempts == 1 => Err("first try fails".into()),
                    r#"{"kind":"broken"}"# => {
                        t.fetch_add(1, Ordering::Relaxed);
                        Err("always fails".into())
                    }
                    _ => Ok(()),
                }
            }
        })
        .unwrap();
    let mut ok_ids = Vec::new();
    for i in 0..5 {
        let id = sched
            .enqueue(NewTask::new("job_check", &serde_json::json!({ "i": i })))
            .await
            .unwrap();
        ok_ids.push(id);
    }
    let flaky = sched
        .enqueue(NewTask::raw("job_check", r#"{"kind":"flaky"}"#))
        .await
        .unwrap();
    let broken = sched
        .enqueue(NewTask::raw("job_check", r#"{"kind":"broken"}"#).max_attempts(2))
        .await
        .unwrap();
    let mut event_ids = Vec::new();
    for i in 0..4 {
        let e = sched
            .record_event(
                &session,
                EventType::JobFound,
                &serde_json::json!({ "job": i }),
            )
            .await
            .unwrap();
        event_ids.push(e.id);
    }
    sched
        .count(
            &session,
            botfleet::actors::scheduler::state::Counter::Checks,
            3,
        )
        .await
        .unwrap();
    sched.end_session(&session, "stopped").await.unwrap();

    let history = fleet.history();
    // 5 completions, flaky failed + completed, broken failed + dead.
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move { all_tasks(&h).await.len() == 9 }
    })
    .await
    .unwrap_or_else(|_| panic!("9 task attempts archived: {:?}", history.stats()));
    let tasks = all_tasks(&history).await;
    let of = |id: &str| {
        let mut v: Vec<(i64, String)> = tasks
            .iter()
            .filter(|t| t.id == id)
            .map(|t| (t.attempt, t.status.clone()))
            .collect();
        v.sort();
        v
    };
    for id in &ok_ids {
        assert_eq!(of(id), vec![(1, task_status::COMPLETED.to_string())]);
    }
    assert_eq!(
        of(&flaky),
        vec![
            (1, task_status::FAILED.to_string()),
            (2, task_status::COMPLETED.to_string())
        ]
    );
    assert_eq!(
        of(&broken),
        vec![
            (1, task_status::FAILED.to_string()),
            (2, task_status::DEAD.to_string())
        ]
    );
    let dead = tasks
        .iter()
        .find(|t| t.id == broken && t.attempt == 2)
        .unwrap();
    assert_eq!(dead.error.as_deref(), Some("always fails"));
    assert_eq!(dead.data, r#"{"kind":"broken"}"#);
    assert_eq!(dead.task_type, "job_check");
    assert_eq!(dead.priority, 5);
    assert!(dead.started_ms >= t0 && dead.finished_ms >= dead.started_ms);
    assert_eq!(tries.load(Ordering::Relaxed), 2);

    // The session as it ended: every field of the hash.
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move {
            let s = h.sessions(&HistoryQuery::latest(10)).await.unwrap().items;
            s.len() == 1 && s[0].ended_ms.is_some()
        }
    })
    .await
    .expect("the ended session archived");
    let s = history
        .sessions(&HistoryQuery::latest(10))
        .await
        .unwrap()
        .items;
    assert_eq!(s[0].id, session);
    assert_eq!(s[0].name, "contents");
    assert_eq!(s[0].status, "stopped");
    let live = sched.session(&session).await.unwrap();
    assert_eq!(s[0].fields, live.into_iter().collect());
    assert_eq!(s[0].fields["total_checks"], "3");
    assert_eq!(s[0].fields["login_status"], "success");

    // Events, newest first, a page at a time, by session and by time.
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move { all_events(&h).await.len() == 4 }
    })
    .await
    .expect("4 events archived");
    let first = history
        .events(&HistoryQuery::latest(3).session(session.clone()))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = history
        .events(
            &HistoryQuery::latest(3)
                .session(session.clone())
                .after(cursor),
        )
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.next_cursor, None);
    let mut paged: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|e| e.id.clone())
        .collect();
    paged.reverse();
    assert_eq!(paged, event_ids, "pages go newest to oldest, nothing twice");
    assert_eq!(first.items[0].event_type, "job_found");
    assert_eq!(first.items[0].data, r#"{"job":3}"#);
    let none = history
        .events(&HistoryQuery::latest(10).session("other"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let later = history
        .tasks(&HistoryQuery::latest(100).since(now_ms() as i64 + 60_000))
        .await
        .unwrap();
    assert!(later.items.is_empty());
    let before = history
        .tasks(&HistoryQuery::latest(100).until(t0))
        .await
        .unwrap();
    assert!(before.items.is_empty());
    let s = history.stats();
    assert_eq!((s.dropped, s.rejected, s.lost), (0, 0, 0), "{s:?}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archive_holds_the_tasks_sessions_and_events_of_a_run() {
    // history.url empty: the SQLite file in history.dir.
    run_and_check_contents("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archive_holds_the_tasks_sessions_and_events_of_a_run() {
    let db = PgDatabase::create().await;
    run_and_check_contents(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outlive_the_trimming_of_bot_events() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&redis.url(), "", dir.path());
    s.scheduler.events_max_len = 10;
    let fleet = Fleet::start(s).await.unwrap();
    let sched = fleet.scheduler();
    let mut ids = BTreeSet::new();
    for i in 0..50 {
        let e = sched
            .record_event(
                "s-trim",
                EventType::JobFound,
                &serde_json::json!({ "i": i }),
            )
            .await
            .unwrap();
        ids.insert(e.id);
    }
    assert_eq!(redis.cmd(&["LLEN", "bot:events"]).as_int(), Some(10));
    let history = fleet.history();
    assert!(history.flush(WAIT).await, "{:?}", history.stats());
    let archived: BTreeSet<String> = all_events(&history)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(archived, ids, "every event pushed, the trimmed ones too");
    fleet.shutdown().await.unwrap();
}

/// Load: tasks and events produced while PostgreSQL is stopped (a crash) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load_keeps_every_record_once() {
    let pg = PrivatePostgres::start();
    create_database(&pg.admin_url(), "history").await;
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(settings(&redis.url(), &pg.url("history"), dir.path()))
        .await
        .unwrap();
    let sched = fleet.scheduler();
    sched
        .register_handler("job_check", 8, |_| async { Ok(()) })
        .unwrap();
    let history = fleet.history();
    let (mut tasks, mut events) = (BTreeSet::new(), BTreeSet::new());
    let produce = |n: usize| {
        let sched = sched.clone();
        async move {
            let mut t = Vec::new();
            let mut e = Vec::new();
            for i in 0..n {
                t.push(
                    sched
                        .enqueue(NewTask::new("job_check", &serde_json::json!({ "i": i })))
                        .await
                        .unwrap(),
                );
                e.push(
                    sched
                        .record_event(
                            "s-load",
                            EventType::JobFound,
                            &serde_json::json!({ "i": i }),
                        )
                        .await
                        .unwrap()
                        .id,
                );
            }
            (t, e)
        }
    };
    let (t, e) = produce(200).await;
    tasks.extend(t);
    events.extend(e);
    pg.stop("immediate");
    let (t, e) = produce(200).await;
    tasks.extend(t);
    events.extend(e);
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move { !h.stats().reachable && h.stats().pending > 0 }
    })
    .await
    .unwrap_or_else(|_| panic!("the writer saw the outage: {:?}", history.stats()));
    // The actors went on: every task produced so far completed while the database was down.
    poll_until_async(WAIT, || {
        let sched = sched.clone();
        async move { sched.stats().completed >= 400 }
    })
    .await
    .unwrap_or_else(|_| panic!("tasks completed during the outage: {:?}", sched.stats()));
    assert!(!history.stats().reachable);
    pg.start_again();
    let (t, e) = produce(200).await;
    tasks.extend(t);
    events.extend(e);
    poll_until_async(WAIT, || {
        let (h, n) = (history.clone(), tasks.len());
        async move {
            h.tasks(&HistoryQuery::latest(10_000))
                .await
                .map(|p| p.items.len() >= n)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "all tasks archived: {:?}\n{}",
            history.stats(),
            pg.log_tail()
        )
    });
    assert!(history.flush(WAIT).await, "{:?}", history.stats());
    let archived_tasks = all_tasks(&history).await;
    assert_eq!(archived_tasks.len(), tasks.len(), "each attempt once");
    let got: BTreeSet<String> = archived_tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(got, tasks);
    assert!(archived_tasks
        .iter()
        .all(|t| t.status == task_status::COMPLETED && t.attempt == 1));
    let archived_events = all_events(&history).await;
    assert_eq!(archived_events.len(), events.len(), "each event once");
    let got: BTreeSet<String> = archived_events.into_iter().map(|e| e.id).collect();
    assert_eq!(got, events);
    let s = history.stats();
    assert_eq!(
        (s.dropped, s.rejected, s.lost, s.pending),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.reachable);
    fleet.shutdown().await.unwrap();
}

/// The child's role: a daemon whose history database is unreachable, with the file fallback:
/// records events forever, printing each id, and how many records are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill9_with_the_database_down_loses_no_acknowledged_record"]
async fn child_daemon_with_the_database_down() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = std::path::Path::new(parts[2]);
    let mut s = settings(parts[0], parts[1], dir);
    s.storage.fallback = FallbackKind::File;
    s.storage.file.dir = dir.join("store").to_string_lossy().into_owned();
    let fleet = Fleet::start(s).await.unwrap();
    let sched = fleet.scheduler();
    let history = fleet.history();
    for i in 0u64.. {
        let e = sched
            .record_event(
                "s-crash",
                EventType::JobFound,
                &serde_json::json!({ "i": i }),
            )
            .await
            .unwrap();
        println!("recorded-event {}", e.id);
        let st = history.stats();
        assert_eq!(st.dropped, 0);
        println!("acked-records {}", st.acknowledged);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_the_database_down_loses_no_acknowledged_record() {
    let pg = PrivatePostgres::start();
    create_database(&pg.admin_url(), "history").await;
    pg.stop("fast");
    let url = pg.url("history");
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{}|{}|{}", redis.url(), url, dir.path().display());
    let mut child = support::spawn_role(
        module_path!(),
        "child_daemon_with_the_database_down",
        CHILD_ENV,
        &spec,
    );
    let stdout = child.stdout.take().unwrap();
    let mut sent = Vec::new();
    let mut acked = 0usize;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some((_, id)) = line.split_once("recorded-event ") {
            sent.push(id.to_string());
        } else if let Some((_, n)) = line.split_once("acked-records ") {
            acked = n.parse().unwrap();
            if acked >= 1_000 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acked >= 1_000 && acked <= sent.len(),
        "{acked} of {}",
        sent.len()
    );

    // The database returns; a new process on the same directory writes the spool.
    pg.start_again();
    let mut history_settings = settings(&redis.url(), &url, dir.path()).history;
    history_settings.enabled = true;
    let history = History::open(&history_settings, FallbackKind::File).unwrap();
    assert!(
        history.stats().spooled >= acked as u64,
        "{:?}",
        history.stats()
    );
    assert!(history.flush(WAIT).await, "{:?}", history.stats());
    let events = all_events(&history).await;
    let archived: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(archived.len(), events.len(), "each event once");
    // Records are acknowledged in the order they were recorded: the first `acked` ones.
    let missing: Vec<usize> = (0..acked)
        .filter(|i| !archived.contains(sent[*i].as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {acked} acknowledged events lost (first at {:?}); {} archived of {} sent",
        missing.len(),
        missing.first(),
        archived.len(),
        sent.len()
    );
    assert_eq!(history.stats().spooled, 0);
    history.close(WAIT).await;
    println!(
        "{} of {} events acknowledged before kill -9; all written after the restart",
        acked,
        sent.len()
    );
}

/// The child's role: a worker without history whose `stuck` handler never returns. It prints
/// each claim (`claimed ID ATTEMPT`) and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_task_the_reaper_dead_letters_is_archived_as_dead"]
async fn child_worker_that_never_finishes() {
    let redis = std::env::var(WORKER_ENV).expect("run by the parent test");
    let mut s = Settings::default();
    s.storage.redis.url = redis;
    s.storage.redis.timeout_ms = 2_000;
    s.scheduler.poll_interval_ms = 20;
    s.scheduler.visibility_timeout_ms = SHORT_VISIBILITY_MS;
    s.heartbeat.enabled = false;
    let fleet = Fleet::start(s).await.unwrap();
    fleet
        .scheduler()
        .register_handler("stuck", 1, |task| async move {
            println!("claimed {} {}", task.id, task.attempts);
            std::future::pending::<()>().await;
            Ok(())
        })
        .unwrap();
    std::future::pending::<()>().await;
}

/// Waits for the child worker's claim of attempt `attempt` of `id`, then kills it with -9:
/// no handler result, the claim stays in `PREFIX:tasks:processing` until it expires.
fn claim_and_die(redis: &str, id: &str, attempt: u32) {
    let mut child = support::spawn_role(
        module_path!(),
        "child_worker_that_never_finishes",
        WORKER_ENV,
        redis,
    );
    let stdout = child.stdout.take().unwrap();
    let wanted = format!("claimed {id} {attempt}");
    let mut seen = Vec::new();
    let mut claimed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.ends_with(&wanted) {
            claimed = true;
            break;
        }
        seen.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(claimed, "the worker ended without {wanted:?}: {seen:?}");
}

/// A task whose every attempt was claimed by a worker that then died is
/// dead-lettered by the reaper in another process's step, and that process archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_reaper_dead_letters_is_archived_as_dead() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() as i64;
    let fleet = Fleet::start(settings(&redis.url(), "", dir.path()))
        .await
        .unwrap();
    let sched = fleet.scheduler();
    // This process has no handler for `stuck`: its worker only steps, and so reaps.
    sched
        .register_handler("job_check", 1, |_| async { Ok(()) })
        .unwrap();
    let id = sched
        .enqueue(
            NewTask::raw("stuck", r#"{"kind":"stuck"}"#)
                .priority(7)
                .max_attempts(2),
        )
        .await
        .unwrap();
    let created_at = sched.get(&id).await.unwrap().unwrap().created_at;

    claim_and_die(&redis.url(), &id, 1);
    // The first expired attempt goes back to the queue.
    poll_until_async(WAIT, || {
        let (sched, id) = (sched.clone(), id.clone());
        async move {
            let t = sched.get(&id).await.unwrap().unwrap();
            t.status == Some(TaskStatus::Pending) && t.attempts == 1
        }
    })
    .await
    .expect("attempt 1 reaped back to the queue");
    claim_and_die(&redis.url(), &id, 2);

    let history = fleet.history();
    poll_until_async(WAIT, || {
        let (h, id) = (history.clone(), id.clone());
        async move {
            all_tasks(&h)
                .await
                .iter()
                .any(|t| t.id == id && t.status == task_status::DEAD)
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the reaper's dead letter archived: {:?} {:?}",
            history.stats(),
            sched.stats()
        )
    });
    let live = sched.get(&id).await.unwrap().unwrap();
    assert_eq!(live.status, Some(TaskStatus::Failed));
    assert_eq!(live.attempts, 2);
    assert_eq!(sched.counts().await.unwrap().dead, 1);
    let archived: Vec<TaskRecord> = all_tasks(&history)
        .await
        .into_iter()
        .filter(|t| t.id == id && t.status == task_status::DEAD)
        .collect();
    assert_eq!(archived.len(), 1, "archived once: {archived:?}");
    let dead = &archived[0];
    assert_eq!(dead.attempt, 2, "the attempt that expired last");
    assert_eq!(dead.error.as_deref(), Some("visibility timeout expired"));
    assert_eq!(dead.error, live.last_error);
    assert_eq!(dead.task_type, "stuck");
    assert_eq!(dead.data, r#"{"kind":"stuck"}"#);
    assert_eq!(dead.priority, 7);
    assert_eq!(dead.created_at, created_at);
    // Started when attempt 2 was claimed (to the second, as the task hash keeps it), finished
    // when the reaper buried it.
    assert!(
        t0 / 1000 * 1000 <= dead.started_ms
            && dead.started_ms <= dead.finished_ms
            && dead.finished_ms <= now_ms() as i64,
        "{dead:?}"
    );
    let s = history.stats();
    assert_eq!((s.dropped, s.rejected, s.lost), (0, 0, 0), "{s:?}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let mut s = settings(&redis.url(), "", dir.path());
    s.history.retention_days = 2;
    s.history.retention_interval_secs = 1;
    let now = now_ms() as i64;
    let day = 86_400_000;
    // Rows 3 days old (deleted) and 1 day old (kept), written before the fleet starts.
    let seed = History::open(&s.history, FallbackKind::Memory).unwrap();
    let sink = seed.sink();
    for (i, age) in [3 * day, day, 3 * day, day].iter().enumerate() {
        sink.record(Record::Event(EventRecord {
            id: format!("e{i}-{age}"),
            session_id: "s".into(),
            event_type: "job_found".into(),
            data: "{}".into(),
            timestamp: String::new(),
            at_ms: now - age,
        }));
        sink.record(Record::Task(TaskRecord {
            id: format!("t{i}"),
            attempt: 1,
            task_type: "job_check".into(),
            data: "{}".into(),
            priority: 5,
            status: task_status::COMPLETED.into(),
            error: None,
            created_at: String::new(),
            started_ms: now - age,
            finished_ms: now - age,
        }));
    }
    assert!(seed.flush(WAIT).await);
    assert_eq!(all_events(&seed).await.len(), 4);
    seed.close(WAIT).await;

    let fleet = Fleet::start(s).await.unwrap();
    let periodic = fleet.periodic();
    poll_until_async(WAIT, || {
        let p = periodic.clone();
        async move { p.runs(RETENTION_JOB) >= 1 }
    })
    .await
    .expect("the retention job ran");
    let history = fleet.history();
    let events = all_events(&history).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.at_ms == now - day));
    let tasks = all_tasks(&history).await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.finished_ms == now - day));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hazard_rounds_are_archived_and_verifiable_once_their_seed_is_revealed() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&redis.url(), "", dir.path());
    s.hazards.enabled = true;
    s.hazards.interval_ms = 100;
    s.hazards.rotate_every_ticks = 3;
    let fleet = Fleet::start(s).await.unwrap();
    let history = fleet.history();
    // A round whose epoch is over: its seed was revealed and archived beside it.
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move {
            h.rounds(&HistoryQuery::latest(1_000))
                .await
                .map(|p| p.items.iter().any(|r| r.server_seed.is_some()))
                .unwrap_or(false)
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a revealed round archived: {:?}", history.stats()));
    let rounds = history.rounds(&HistoryQuery::latest(1_000)).await.unwrap();
    let hazards = fleet.hazards();
    let mut verified = 0;
    for round in rounds.items.iter().filter(|r| r.server_seed.is_some()) {
        let seed = round.server_seed.as_deref().unwrap();
        let again = hazards
            .verify(seed, &round.difficulty, round.tick, &round.difficulty)
            .unwrap();
        assert_eq!(
            again, round.hazards,
            "round {} {}",
            round.difficulty, round.tick
        );
        verified += 1;
    }
    assert!(
        verified >= 4,
        "every difficulty of a revealed tick verified: {verified}"
    );
    fleet.shutdown().await.unwrap();
}

/// A player's two settled rounds (and another player's one), archived by `Hazards::settle`:
/// the rows hold what verifies each round after Redis forgot its seed, once each even when
/// the records are handed to the archive again.
async fn settlements_are_archived_and_verifiable(history_url: &str) {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(settings(&redis.url(), history_url, dir.path()))
        .await
        .unwrap();
    let hazards = fleet.hazards();
    let t0 = now_ms() as i64;
    hazards
        .start_fairness("user123", "agent456", "lucky")
        .await
        .unwrap();
    // Round 0 at EASY, settled with a new user seed for round 1, played at HARD.
    let round0 = hazards.round("user123", "agent456", "EASY").await.unwrap();
    let settled0 = hazards
        .settle("user123", "agent456", Some("lucky-2"))
        .await
        .unwrap();
    let round1 = hazards.round("user123", "agent456", "HARD").await.unwrap();
    let settled1 = hazards.settle("user123", "agent456", None).await.unwrap();
    hazards
        .start_fairness("user789", "agent456", "other")
        .await
        .unwrap();
    let settled2 = hazards.settle("user789", "agent456", None).await.unwrap();

    let history = fleet.history();
    poll_until_async(WAIT, || {
        let h = history.clone();
        async move {
            h.settlements(&HistoryQuery::latest(100))
                .await
                .map(|p| p.items.len() == 3)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap_or_else(|_| panic!("3 settlements archived: {:?}", history.stats()));

    let mut mine = history
        .settlements(&HistoryQuery::latest(100).user("user123"))
        .await
        .unwrap()
        .items;
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine[0].settled_ms >= mine[1].settled_ms, "newest first");
    mine.sort_by_key(|s| s.nonce);
    for (row, settled, round) in [
        (&mine[0], &settled0, &round0),
        (&mine[1], &settled1, &round1),
    ] {
        assert_eq!(
            (row.user_id.as_str(), row.agent_id.as_str()),
            ("user123", "agent456")
        );
        assert_eq!(row.nonce, settled.nonce as i64);
        assert_eq!(row.user_seed, settled.user_seed);
        assert_eq!(row.server_seed, settled.server_seed);
        assert_eq!(row.hashed_server_seed, round.hashed_server_seed);
        assert_eq!(
            fairness::hash_seed(&row.server_seed),
            row.hashed_server_seed
        );
        assert!(t0 <= row.settled_ms && row.settled_ms <= now_ms() as i64);
        // The archived row alone reproduces the hazards the round was played with.
        let difficulty = hazards.difficulty(&round.difficulty).unwrap();
        let again =
            fairness::derive_hazards(&row.server_seed, &row.user_seed, row.nonce, difficulty)
                .unwrap();
        assert_eq!(again, round.hazards, "round {}", row.nonce);
        assert_eq!(
            hazards
                .verify(
                    &row.server_seed,
                    &row.user_seed,
                    row.nonce,
                    &round.difficulty
                )
                .unwrap(),
            round.hazards
        );
    }
    assert_eq!((mine[0].nonce, mine[1].nonce), (0, 1));
    assert_eq!(
        (mine[0].user_seed.as_str(), mine[1].user_seed.as_str()),
        ("lucky", "lucky-2")
    );

    // Filters, pages and time range.
    let theirs = history
        .settlements(&HistoryQuery::latest(100).user("user789").agent("agent456"))
        .await
        .unwrap()
        .items;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].server_seed, settled2.server_seed);
    let agents = history
        .settlements(&HistoryQuery::latest(100).agent("agent456"))
        .await
        .unwrap();
    assert_eq!(agents.items.len(), 3);
    let first = history.settlements(&HistoryQuery::latest(2)).await.unwrap();
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = history
        .settlements(&HistoryQuery::latest(2).after(cursor))
        .await
        .unwrap();
    assert_eq!(second.next_cursor, None);
    let mut paged: Vec<&str> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|s| s.hashed_server_seed.as_str())
        .collect();
    paged.sort();
    let mut all: Vec<&str> = agents
        .items
        .iter()
        .map(|s| s.hashed_server_seed.as_str())
        .collect();
    all.sort();
    assert_eq!(paged, all, "pages cover every row once");
    assert!(history
        .settlements(&HistoryQuery::latest(100).since(now_ms() as i64 + 60_000))
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(history
        .settlements(&HistoryQuery::latest(100).until(t0))
        .await
        .unwrap()
        .items
        .is_empty());

    // The same settlements again (a replayed spool, a duplicate): still one row each.
    let sink = history.sink();
    for row in &agents.items {
        let mut again = row.clone();
        again.settled_ms += 1_000;
        sink.record(Record::Settlement(again));
    }
    assert!(history.flush(WAIT).await, "{:?}", history.stats());
    let counts = history.archive().unwrap().counts().await.unwrap();
    assert_eq!(counts[5], 3, "{counts:?}");
    let after = history
        .settlements(&HistoryQuery::latest(100))
        .await
        .unwrap();
    assert_eq!(after.items, agents.items, "the first record of a key stays");
    let s = history.stats();
    assert_eq!((s.dropped, s.rejected, s.lost), (0, 0, 0), "{s:?}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archive_keeps_settled_rounds_verifiable() {
    settlements_are_archived_and_verifiable("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archive_keeps_settled_rounds_verifiable() {
    let db = PgDatabase::create().await;
    settlements_are_archived_and_verifiable(db.url()).await;
}

/// An archive at schema version 1 (before settlements) keeps its rows and gains the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_archive_is_migrated_to_hold_settlements() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HistorySettings {
        enabled: true,
        dir: dir.path().to_string_lossy().into_owned(),
        ..HistorySettings::default()
    };
    // Version 1, as an older botfleet left it: its statements only, one event row.
    {
        let db = rusqlite::Connection::open(dir.path().join("history.sqlite3")).unwrap();
        let (version, name, statements) = botfleet::actors::history::archive::MIGRATIONS[0];
        assert_eq!(version, 1);
        db.execute_batch(
            "CREATE TABLE history_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL,
             applied_ms BIGINT NOT NULL)",
        )
        .unwrap();
        for statement in statements {
            db.execute_batch(statement).unwrap();
        }
        db.execute(
            "INSERT INTO history_schema VALUES (1, ?1, 0)",
            rusqlite::params![name],
        )
        .unwrap();
        db.execute(
            "INSERT INTO history_events VALUES ('e1', 's', 'job_found', '{}', '', 5)",
            [],
        )
        .unwrap();
    }
    let archive = Archive::open(&hs).unwrap();
    assert_eq!(archive.schema_version().await.unwrap(), 1);
    assert_eq!(archive.migrate().await.unwrap(), 2);
    archive.close().await;

    let history = History::open(&hs, FallbackKind::Memory).unwrap();
    let row = SettlementRecord {
        user_id: "u".into(),
        agent_id: "a".into(),
        user_seed: "seed".into(),
        nonce: 7,
        server_seed: "server".into(),
        hashed_server_seed: fairness::hash_seed("server"),
        settled_ms: 10,
    };
    history.sink().record(Record::Settlement(row.clone()));
    assert!(history.flush(WAIT).await, "{:?}", history.stats());
    let page = history
        .settlements(&HistoryQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(page.items, vec![row]);
    assert_eq!(all_events(&history).await.len(), 1, "version 1 rows kept");
    history.close(WAIT).await;
}

#[test]
fn a_bad_history_url_is_refused_at_start_up_without_its_password() {
    let err = Settings::load_with_env(
        None,
        [
            (
                "BOTFLEET__HISTORY__URL".to_string(),
                "mysql://u:hunter2@db/bots".to_string(),
            ),
            ("BOTFLEET__HISTORY__BATCH_SIZE".to_string(), "0".to_string()),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("history.url: expected"), "{text}");
    assert!(text.contains("history.batch_size"), "{text}");
    assert!(!text.contains("hunter2"), "password shown: {text}");
    let ok = Settings::load_with_env(
        None,
        [(
            "BOTFLEET__HISTORY__URL".to_string(),
            "postgres://u:hunter2@db/bots".to_string(),
        )],
    )
    .unwrap();
    assert!(!ok.redacted().to_toml().contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_the_archive_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let history_dir = dir.path().join("history");
    let config = dir.path().join("settings.toml");
    std::fs::write(
        &config,
        format!("[history]\ndir = {:?}\n", history_dir.to_string_lossy()),
    )
    .unwrap();
    let hs = HistorySettings {
        enabled: true,
        dir: history_dir.to_string_lossy().into_owned(),
        ..HistorySettings::default()
    };
    let history = History::open(&hs, FallbackKind::Memory).unwrap();
    let now = now_ms() as i64;
    for i in 0..3 {
        history.sink().record(Record::Event(EventRecord {
            id: format!("cli-{i}"),
            session_id: "s-cli".into(),
            event_type: "job_found".into(),
            data: format!("{{\"i\":{i}}}"),
            timestamp: String::new(),
            at_ms: now - (3 - i) * 60_000,
        }));
    }
    for (i, user) in ["cli-user", "cli-other"].iter().enumerate() {
        history.sink().record(Record::Settlement(SettlementRecord {
            user_id: user.to_string(),
            agent_id: "cli-agent".into(),
            user_seed: format!("seed-{i}"),
            nonce: i as i64,
            server_seed: format!("server-{i}"),
            hashed_server_seed: fairness::hash_seed(&format!("server-{i}")),
            settled_ms: now - 60_000,
        }));
    }
    assert!(history.flush(WAIT).await);
    history.close(WAIT).await;

    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Text, newest first, two rows and the cursor of the next page.
    let text = run(&["history", "events", "--limit", "2"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("cli-2") && lines[1].contains("cli-1"),
        "{text}"
    );
    let cursor = lines[2]
        .strip_prefix("# more: --cursor ")
        .expect("a cursor line");
    let rest = run(&[
        "history", "events", "--limit", "2", "--cursor", cursor, "--json",
    ]);
    let page: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(page["items"][0]["id"], "cli-0");
    assert_eq!(page["next_cursor"], serde_json::Value::Null);
    // --since as an age: only the newest event is less than 90 s old.
    let recent = run(&["history", "events", "--since", "90s", "--json"]);
    let page: serde_json::Value = serde_json::from_str(recent.trim()).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{recent}");
    assert!(run(&["history", "tasks"]).is_empty());
    // Settlements: text with the revealed seed, JSON, one player's.
    let text = run(&["history", "settlements", "--since", "5m"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("cli-user  cli-agent  nonce 0  user seed seed-0  seed server-0"),
        "{text}"
    );
    let one = run(&["history", "settlements", "--user", "cli-other", "--json"]);
    let page: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{one}");
    assert_eq!(items[0]["server_seed"], "server-1");
    assert_eq!(items[0]["nonce"], 1);
    assert!(run(&["history", "settlements", "--until", "10m"]).is_empty());
}
