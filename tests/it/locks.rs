//! The lock manager against real redis-server processes: mutual exclusion across processes,
//! a holder killed with -9, the watchdog, fencing tokens across processes and a Redis restart,
//! compare-and-delete, both outage modes, arrival order, and interplay with the seed's own
//! `SET key "1" EX ttl NX` clients.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::actors::locks::{LockError, LockGuard, Locks, SCRIPT_CALLS_IN_FLIGHT};
use botfleet::settings::{LockOutage, Settings};
use botfleet::storage::{KeySchema, Mode, Storage, StorageError, LANE_CLIENT_NAME};
use botfleet::Fleet;
use support::{poll_until_async, RedisServer, RespValue, TestRedis};

const CHILD_ENV: &str = "BOTFLEET_TEST_LOCK_CHILD";
const SHARED: &str = "bet-lock:user123-agent456";
const TOTAL: u64 = 10_000;
const PROCESSES: u64 = 3;
const TASKS: u64 = 2;

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = url.to_string();
    support::fit_settings(&mut s);
    s.supervisor.stop_timeout_ms = 2_000;
    s
}

/// Settings for tests that must not see a busy machine as an outage.
fn patient(url: &str) -> Settings {
    let mut s = settings(url);
    s.storage.redis.timeout_ms = 2_000;
    s
}

/// A task of this process waiting for `name` (up to 20 s, for `ttl`), once it is in the queue:
/// the holder's release hands the lock over to it.
async fn queue_one_waiter(
    fleet: &Fleet,
    name: &'static str,
    ttl: Duration,
) -> tokio::task::JoinHandle<LockGuard> {
    let locks = fleet.locks();
    let waiter = tokio::spawn(async move {
        locks
            .acquire(name, ttl, Duration::from_secs(20))
            .await
            .unwrap()
    });
    let f = fleet.clone();
    poll_until_async(Duration::from_secs(5), move || {
        let f = f.clone();
        async move { f.lock_stats().await.unwrap().waiters == 1 }
    })
    .await
    .unwrap();
    waiter
}

fn spawn_child(role: &str, spec: String) -> std::process::Child {
    support::spawn_role(module_path!(), role, CHILD_ENV, &spec)
}

/// Child role: acquires [`SHARED`] `count` times over [`TASKS`] tasks; inside each critical
/// section INCR/DECR of `overlap:inside` detects a second holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of mutual_exclusion_across_three_processes"]
async fn child_contender() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (url, count) = spec.split_once('|').unwrap();
    let count: u64 = count.parse().unwrap();
    let fleet = Fleet::start(patient(url)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (locks, storage) = (fleet.locks(), fleet.storage().clone());
        let mine = count / TASKS + u64::from(t < count % TASKS);
        tasks.push(tokio::spawn(async move {
            let mut last_fence = 0;
            for _ in 0..mine {
                let guard = locks
                    .acquire(SHARED, Duration::from_secs(10), Duration::from_secs(60))
                    .await
                    .unwrap();
                let fence = guard.fencing_token().unwrap();
                assert!(fence > last_fence, "fence {fence} after {last_fence}");
                last_fence = fence;
                if storage.incr_by("overlap:inside", 1).await.unwrap() != 1 {
                    storage.incr_by("overlap:violations", 1).await.unwrap();
                }
                storage.incr_by("overlap:inside", -1).await.unwrap();
                storage.incr_by("overlap:acquired", 1).await.unwrap();
                assert!(guard.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("done");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_three_processes() {
    let server = TestRedis::start().unwrap();
    let started_us = botfleet::clock::now_ms() * 1_000;
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            let count = TOTAL / PROCESSES + u64::from(p < TOTAL % PROCESSES);
            spawn_child("child_contender", format!("{}|{count}", server.url()))
        })
        .collect();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a contender failed: {status}");
    }
    let get = |key: &str| server.cmd(&["GET", key]).as_str().map(str::to_owned);
    assert_eq!(get("overlap:acquired").as_deref(), Some("10000"));
    assert_eq!(get("overlap:violations"), None, "two holders at once");
    assert_eq!(get("overlap:inside").as_deref(), Some("0"));
    assert_eq!(server.cmd(&["EXISTS", SHARED]).as_int(), Some(0));
    // The fencing counter follows the server's clock (microseconds) at least.
    let fence_key = fence_counter(&server, SHARED);
    let counter: u64 = server
        .cmd(&["GET", &fence_key])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        counter >= started_us,
        "counter {counter} below the clock {started_us}"
    );
}

/// The child holder's lock TTL: long enough that its watchdog (renewing every third of it)
/// outlives a stall of the loaded CI machine, short enough to watch the lock outlive it.
const HOLDER_TTL: Duration = Duration::from_secs(2);

/// Child role: takes a lock (TTL [`HOLDER_TTL`], extended by its watchdog), prints its
/// fencing token, and holds it until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of holder_killed_with_sigkill_frees_the_lock_after_its_ttl"]
async fn child_holder() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (url, name) = spec.split_once('|').unwrap();
    let fleet = Fleet::start(patient(url)).await.unwrap();
    let guard = fleet
        .locks()
        .acquire(name, HOLDER_TTL, Duration::from_secs(10))
        .await
        .unwrap();
    println!("held {}", guard.fencing_token().unwrap());
    std::future::pending::<()>().await;
}

fn child_fence(url: &str, name: &str) -> (std::process::Child, u64) {
    let mut child = spawn_child("child_holder", format!("{url}|{name}"));
    let stdout = child.stdout.take().unwrap();
    let fence = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.rsplit_once("held ")
                .map(|(_, f)| f.trim().parse::<u64>().unwrap())
        })
        .expect("the child took the lock");
    (child, fence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_with_sigkill_frees_the_lock_after_its_ttl() {
    let server = TestRedis::start().unwrap();
    let name = "wallet-retry-scheduler-lock";
    let (mut child, _) = child_fence(&server.url(), name);
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    // The watchdog keeps it past its TTL while the holder lives.
    let held_since = Instant::now();
    while held_since.elapsed() < HOLDER_TTL + Duration::from_millis(500) {
        assert!(locks
            .try_acquire(name, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let guard = locks
        .acquire(name, Duration::from_secs(5), Duration::from_secs(5))
        .await
        .unwrap();
    let waited = killed.elapsed();
    assert!(
        waited <= HOLDER_TTL + Duration::from_millis(500),
        "free after {waited:?}"
    );
    assert!(guard.release().await.unwrap());
    fleet.shutdown().await.unwrap();
}

/// Checks every 100 ms, for `held_for`, that `guard` is not lost and that Redis still holds its
/// token under `name`.
async fn assert_held(server: &TestRedis, guard: &LockGuard, name: &str, held_for: Duration) {
    let start = Instant::now();
    while start.elapsed() < held_for {
        assert!(
            !guard.is_lost(),
            "{name} reported lost after {:?}",
            start.elapsed()
        );
        assert_eq!(
            server.cmd(&["GET", name]).as_str(),
            Some(guard.token()),
            "{name} after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_holds_a_lock_far_past_its_ttl() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    // A 2 s TTL held for 6 s: extended every 667 ms, and a failed extension retried until
    // 1.33 s after the last success, so a loaded machine (a Cluster's six servers and the
    // client on two cores, beside other suites) may stall the watchdog for over a second.
    let guard = locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_held(&server, &guard, "bet-cleanup-lock", Duration::from_secs(6)).await;
    assert!(locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    assert!(guard.release().await.unwrap());
    assert_eq!(
        server.cmd(&["EXISTS", "bet-cleanup-lock"]).as_int(),
        Some(0)
    );
    fleet.shutdown().await.unwrap();
}

/// The watchdogs share one timer, which sleeps until the first extension due (or 5 s). A lock
/// whose first extension falls before that wake-up must wake it: here a 2 s lock taken while
/// the timer sleeps on a 30 s lock's extension (10 s away) is held for 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lock_taken_while_the_watchdog_timer_sleeps_is_extended_in_time() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let long = locks
        .try_acquire("wallet-retry-scheduler-lock", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let short = locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_held(&server, &short, "bet-cleanup-lock", Duration::from_secs(6)).await;
    assert!(!long.is_lost());
    assert!(short.release().await.unwrap());
    assert!(long.release().await.unwrap());
    fleet.shutdown().await.unwrap();
}

/// The watchdog timer runs on the runtime of the first guard. A host that took that guard on
/// a runtime it has shut down since must still have its later locks extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_extended_after_the_runtime_of_the_first_guard_is_gone() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    {
        let locks = locks.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let guard = locks
                    .try_acquire("bet-lock:first", Duration::from_secs(30))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(guard.release().await.unwrap());
            });
        })
        .join()
        .unwrap();
    }
    let guard = locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_held(&server, &guard, "bet-cleanup-lock", Duration::from_secs(4)).await;
    assert!(guard.release().await.unwrap());
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_processes_and_a_redis_restart() {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let name = "retry-job-lock:tx-42:refund";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (mut child, fence) = child_fence(&server.url(), name);
        child.kill().unwrap();
        child.wait().unwrap();
        seen.push(fence);
        // Free it for the next one rather than wait for its TTL.
        server.cmd(&["DEL", name]);
    }
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let guard = fleet
        .locks()
        .try_acquire(name, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    seen.push(guard.fencing_token().unwrap());
    assert!(guard.release().await.unwrap());
    fleet.shutdown().await.unwrap();

    server.restart().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let guard = fleet
        .locks()
        .try_acquire(name, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    seen.push(guard.fencing_token().unwrap());
    fleet.shutdown().await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_by_a_non_holder_is_refused_and_the_old_holder_is_told() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let name = "bet-lock:user1-agent1";
    let old = locks
        .try_acquire(name, Duration::from_millis(600))
        .await
        .unwrap()
        .unwrap();
    // Its lock goes away (as by expiry) and another holder takes it.
    server.cmd(&["DEL", name]);
    let new = locks
        .try_acquire(name, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), old.lost())
        .await
        .expect("the old holder is told its lock is lost");
    assert!(old.is_lost());
    assert!(
        !old.release().await.unwrap(),
        "a non-holder released the lock"
    );
    assert_eq!(server.cmd(&["GET", name]).as_str(), Some(new.token()));
    assert!(new.release().await.unwrap());
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_clients_are_excluded_both_ways() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    for (name, ttl) in [
        ("bet-lock:user123-agent456", 30),
        ("wallet-retry-scheduler-lock", 60),
        ("retry-job-lock:ptx-9:debit", 300),
        ("bet-cleanup-lock", 300),
        ("wallet-audit-cleanup-lock", 300),
    ] {
        let ex = ttl.to_string();
        let guard = locks
            .try_acquire(name, Duration::from_secs(ttl))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.cmd(&["SET", name, "1", "EX", &ex, "NX"]),
            RespValue::Nil,
            "{name}: seed client got a lock botfleet holds"
        );
        assert!(guard.release().await.unwrap());
        assert!(server.cmd(&["SET", name, "1", "EX", &ex, "NX"]).is_ok());
        assert!(locks
            .try_acquire(name, Duration::from_secs(ttl))
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            locks
                .run_exclusive(name, Duration::from_secs(ttl), async { 1 })
                .await
                .unwrap(),
            None,
            "{name}: the job ran while a seed client held the lock"
        );
        server.cmd(&["DEL", name]);
        assert_eq!(
            locks
                .run_exclusive(name, Duration::from_secs(ttl), async { 1 })
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(server.cmd(&["EXISTS", name]).as_int(), Some(0));
    }
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_one_process_are_served_in_arrival_order() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let name = "bet-lock:queue";
    let holder = locks
        .try_acquire(name, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5usize {
        let (locks, order) = (locks.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks
                .acquire(name, Duration::from_secs(5), Duration::from_secs(20))
                .await
                .unwrap();
            order.lock().push(i);
            guard.release().await.unwrap();
        }));
        let f = fleet.clone();
        poll_until_async(Duration::from_secs(5), move || {
            let f = f.clone();
            async move { f.lock_stats().await.unwrap().waiters == i + 1 }
        })
        .await
        .unwrap();
    }
    assert!(holder.release().await.unwrap());
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_notice_from_another_process_wakes_a_waiter_at_once() {
    let server = TestRedis::start().unwrap();
    // Without the notice the waiter would wait for its 5 s retry.
    let (a, b) = two_fleets_woken_only_by_notices(&server).await;
    // Releases nobody waited for announce nothing.
    for _ in 0..20 {
        let guard = a
            .locks()
            .acquire("bet-cleanup-lock", Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert!(guard.release().await.unwrap());
    }
    let name = "wallet-audit-cleanup-lock";
    let held = a
        .locks()
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let locks = b.locks();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let guard = locks
            .acquire(name, Duration::from_secs(30), Duration::from_secs(20))
            .await
            .unwrap();
        (started.elapsed(), guard.fencing_token())
    });
    let bb = b.clone();
    poll_until_async(Duration::from_secs(5), move || {
        let b = bb.clone();
        async move { b.lock_stats().await.unwrap().waiters == 1 }
    })
    .await
    .unwrap();
    // Counted as a waiter is not yet refused by Redis: only a refused attempt leaves the
    // waiting mark that makes the release announce itself. Released earlier, the lock would
    // simply be granted to the first attempt, with no notice to hear.
    let waiting = KeySchema::default().lock_waiting(name);
    poll_until_async(Duration::from_secs(5), || async {
        server.cmd(&["EXISTS", &waiting]).as_int() == Some(1)
    })
    .await
    .expect("the waiter's first attempt was refused");
    let released = Instant::now();
    let held_fence = held.fencing_token().unwrap();
    assert!(held.release().await.unwrap());
    let (_, fence) = waiter.await.unwrap();
    assert!(released.elapsed() < Duration::from_secs(2), "woken late");
    assert!(fence.unwrap() > held_fence);
    // Notices arrive in publishing order: had the uncontended releases announced themselves,
    // b would have heard them before the one that woke its waiter.
    assert_eq!(b.lock_stats().await.unwrap().notices_heard, 1);
    assert_eq!(
        server
            .cmd(&["EXISTS", &KeySchema::default().lock_waiting(name)])
            .as_int(),
        Some(0),
        "the release consumed the waiting mark"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A guard dropped while Redis is unreachable releases its lock once Redis answers again,
/// long before the lock's TTL: the release is retried, not left to the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_during_an_outage_releases_its_lock_once_redis_is_back() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let name = "bet-cleanup-lock";
    let guard = fleet
        .locks()
        .try_acquire(name, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lock is free");
    server.freeze();
    let storage = fleet.storage().clone();
    poll_until_async(Duration::from_secs(5), || {
        let storage = storage.clone();
        async move { storage.mode() != Mode::Redis }
    })
    .await
    .expect("the outage is seen");
    drop(guard);
    server.thaw();
    poll_until_async(Duration::from_secs(15), || async {
        server.cmd(&["EXISTS", name]).as_int() == Some(0)
    })
    .await
    .expect("released once Redis is back, long before its 60 s TTL");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_refuse_fails_fast_and_a_held_lock_is_reported_lost() {
    let mut server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let held = locks
        .try_acquire("bet-lock:u-a", Duration::from_millis(600))
        .await
        .unwrap()
        .unwrap();
    server.kill9();
    let start = Instant::now();
    let first = locks
        .try_acquire("bet-lock:u-b", Duration::from_secs(5))
        .await;
    assert!(matches!(first, Err(LockError::Unavailable(_))), "{first:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let again = locks
        .acquire(
            "bet-lock:u-b",
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(again, Err(LockError::Unavailable(_))), "{again:?}");
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("the holder is told");
    // Nothing went to the fallback (or its outbox; presence beats may be there).
    assert_eq!(fleet.storage().mode(), Mode::Degraded);
    assert_eq!(fleet.storage().get("bet-lock:u-b").await.unwrap(), None);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extension_is_retried_while_the_lock_cannot_have_expired() {
    let server = RedisServer::start().unwrap();
    let fleet = Arc::new(Fleet::start(settings(&server.url())).await.unwrap());
    let locks = fleet.locks();
    let name = "wallet-retry-scheduler-lock";
    // Extended every 3 s; a failed extension is retried until 6 s after the last success.
    let ttl = Duration::from_secs(9);
    let guard = locks.try_acquire(name, ttl).await.unwrap().unwrap();
    let token = guard.token().to_string();
    // Frozen until the first extension has failed (its call times out, or finds the storage
    // degraded): the lock itself is still safe in Redis for seconds.
    server.freeze();
    let f = fleet.clone();
    let failed = poll_until_async(Duration::from_secs(8), move || {
        let f = f.clone();
        async move { f.lock_stats().await.unwrap().extension_retries > 0 }
    })
    .await;
    server.thaw();
    failed.expect("the extension due 3 s after the acquisition failed while Redis was frozen");
    assert!(!guard.is_lost(), "lost at the first failed extension");
    // Once Redis answers again, a retry extends the lock: its TTL is back near 9 s.
    poll_until_async(Duration::from_secs(5), || async {
        server.cmd(&["PTTL", name]).as_int().unwrap_or(0) > 7_000
    })
    .await
    .expect("the lock was extended after the thaw");
    assert!(!guard.is_lost());
    assert_eq!(server.cmd(&["GET", name]).as_str(), Some(token.as_str()));
    assert!(guard.release().await.unwrap());
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_local_grants_process_local_locks() {
    let mut server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.locks.on_outage = LockOutage::Local;
    let fleet = Fleet::start(s).await.unwrap();
    let locks = fleet.locks();
    server.kill9();
    let st = fleet.storage().clone();
    // The first attempt meets the outage and is granted locally.
    let guard = locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(guard.is_local() && guard.fencing_token().is_none());
    assert!(locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    // Nothing went to the fallback (reads are served by it while degraded).
    assert_eq!(st.mode(), Mode::Degraded);
    assert_eq!(st.get("bet-cleanup-lock").await.unwrap(), None);
    // Back on Redis: the local lock still excludes this process until released; then the
    // lock is a Redis lock again.
    server.restart().unwrap();
    let st2 = st.clone();
    poll_until_async(Duration::from_secs(15), move || {
        let s = st2.clone();
        async move { s.mode() == Mode::Redis }
    })
    .await
    .unwrap();
    assert!(locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    assert!(guard.release().await.unwrap());
    let remote = locks
        .try_acquire("bet-cleanup-lock", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(!remote.is_local());
    // Off a Cluster, one counter serves every lock.
    let counter = KeySchema::default().lock_fence_shared();
    let counter = server
        .cmd(&["GET", &counter])
        .as_str()
        .unwrap()
        .parse::<u64>();
    assert_eq!(remote.fencing_token(), Some(counter.unwrap()));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_on_redis_never_falls_back() {
    let mut server = RedisServer::start().unwrap();
    let s = settings(&server.url());
    let storage = Storage::open(&s.storage, &KeySchema::default())
        .await
        .unwrap();
    let script = botfleet::storage::Script::new(
        "test-set",
        "return redis.call('SET', KEYS[1], ARGV[1])",
        |_, _, _, _| Err(botfleet::storage::LocalError::Script("redis only".into())),
    );
    assert!(storage.eval_on_redis(&script, &["k"], &["v"]).await.is_ok());
    assert_eq!(server.cmd(&["GET", "k"]).as_str(), Some("v"));
    server.kill9();
    let start = Instant::now();
    let err = storage.eval_on_redis(&script, &["k"], &["w"]).await;
    assert!(matches!(err, Err(StorageError::Unavailable(_))), "{err:?}");
    assert!(start.elapsed() < Duration::from_millis(1_000));
    assert_eq!(storage.mode(), Mode::Degraded);
    let err = storage.eval_on_redis(&script, &["k"], &["w"]).await;
    assert!(matches!(err, Err(StorageError::Unavailable(_))), "{err:?}");
    assert_eq!(storage.stats().outbox_len, 0);
    assert_eq!(
        storage.get("k").await.unwrap(),
        None,
        "nothing applied locally"
    );
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lock_to_the_waiter_of_this_process() {
    let server = TestRedis::start().unwrap();
    let mut s = patient(&server.url());
    // Only a hand-over (or a release notice) can serve the waiter before its 5 s retry.
    s.locks.retry_min_ms = 5_000;
    s.locks.retry_max_ms = 5_000;
    let fleet = Fleet::start(s).await.unwrap();
    let locks = fleet.locks();
    let name = "retry-job-lock:tx-7:credit";
    let first = locks
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let waiter = queue_one_waiter(&fleet, name, Duration::from_secs(20)).await;
    let fence = first.fencing_token().unwrap();
    let released = Instant::now();
    assert!(first.release().await.unwrap(), "the holder still held it");
    let second = waiter.await.unwrap();
    assert!(released.elapsed() < Duration::from_secs(2));
    assert!(
        second.fencing_token() > Some(fence),
        "a newer fencing token"
    );
    assert_eq!(server.cmd(&["GET", name]).as_str(), Some(second.token()));
    // The waiter's own TTL was applied.
    let pttl = server.cmd(&["PTTL", name]).as_int().unwrap();
    assert!(pttl > 10_000 && pttl <= 20_000, "pttl {pttl}");
    assert!(second.release().await.unwrap());
    assert_eq!(server.cmd(&["EXISTS", name]).as_int(), Some(0));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_overs_inside_one_process_do_not_starve_another() {
    let server = TestRedis::start().unwrap();
    // The other process's waiter must get in through a release notice, not a retry.
    let (a, b) = two_fleets_woken_only_by_notices(&server).await;
    let name = "bet-lock:hot-user-agent";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two tasks of process A keep the lock busy, handing it to each other.
    let hammers: Vec<_> = (0..2)
        .map(|_| {
            let (locks, stop) = (a.locks(), stop.clone());
            tokio::spawn(async move {
                let mut pairs = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let guard = locks
                        .acquire(name, Duration::from_secs(10), Duration::from_secs(30))
                        .await
                        .unwrap();
                    guard.release().await.unwrap();
                    pairs += 1;
                }
                pairs
            })
        })
        .collect();
    let started = Instant::now();
    let guard = b
        .locks()
        .acquire(name, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .expect("process B got a turn");
    let waited = started.elapsed();
    assert!(guard.release().await.unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pairs = 0;
    for h in hammers {
        pairs += h.await.unwrap();
    }
    assert!(waited < Duration::from_secs(3), "B waited {waited:?}");
    assert!(pairs > 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Runs of hand-overs inside one process, with no other process waiting, end in releases
/// that do not hold this process's waiters back: nobody marked the name. Only the first run's
/// release is announced, marked by the first waiter's failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_hand_overs_yield_a_turn_only_to_a_waiter_that_marked_the_name() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let name = "bet-lock:busy-user-agent";
    // Four tasks take the lock 800 times in all: six runs of 128 hand-overs and more.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let locks = fleet.locks();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let guard = locks
                        .acquire(name, Duration::from_secs(10), Duration::from_secs(30))
                        .await
                        .unwrap();
                    assert!(guard.release().await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = fleet.lock_stats().await.unwrap();
    // Hand-overs carried the lock: the acquire and release scripts ran only around them.
    assert!(stats.script_calls < 100, "{stats:?}");
    assert!(
        stats.turns_yielded <= 2,
        "{} turns yielded with no other process waiting: {stats:?}",
        stats.turns_yielded
    );
    assert_eq!(server.cmd(&["EXISTS", name]).as_int(), Some(0));
    fleet.shutdown().await.unwrap();
}

/// Two fleets (two "processes") on one Redis whose lock waiters retry only every 5 s, so a
/// waiter that gets in quickly was woken by a release notice.
async fn two_fleets_woken_only_by_notices(server: &TestRedis) -> (Fleet, Fleet) {
    let mut s = patient(&server.url());
    s.locks.retry_min_ms = 5_000;
    s.locks.retry_max_ms = 5_000;
    (
        Fleet::start(s.clone()).await.unwrap(),
        Fleet::start(s).await.unwrap(),
    )
}

/// Calls of one script (`EVALSHA`) that Redis ran, from `INFO commandstats`.
fn evalsha_calls(server: &RedisServer) -> u64 {
    command_calls(server, "evalsha")
}

/// How many times `command` ran on `server`, scripts' commands included (`INFO
/// commandstats`).
fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cmd(&["INFO", "commandstats"]);
    let info = info.as_str().unwrap_or_default().to_string();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The fencing counter of `name` on `server`: its slot's on a Cluster, the one of every
/// lock elsewhere.
fn fence_counter(server: &TestRedis, name: &str) -> String {
    match server {
        TestRedis::Cluster(_) => KeySchema::default().lock_fence(name),
        _ => KeySchema::default().lock_fence_shared(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_one_process_share_script_calls() {
    let server = RedisServer::start().unwrap();
    // The calls in flight wait on the frozen server until it thaws: on a loaded machine that
    // can outlast `patient`'s timeout, and a call that times out frees its slot early.
    let mut settings = patient(&server.url());
    settings.storage.redis.timeout_ms = 15_000;
    let fleet = Fleet::start(settings).await.unwrap();
    let locks = fleet.locks();
    let ttl = Duration::from_secs(30);
    let names: Vec<String> = (0..30).map(|i| format!("bet-lock:user{i}-agent")).collect();
    // Warm the script cache so the counts below are the calls themselves.
    drop(locks.try_acquire("warm-up", ttl).await.unwrap());
    poll_until_async(Duration::from_secs(5), || async {
        server.cmd(&["EXISTS", "warm-up"]).as_int() == Some(0)
    })
    .await
    .unwrap();

    // Redis is frozen while 30 tasks ask: the first calls stay in flight, the others queue
    // behind them, and go out together once one is answered.
    let acquired = {
        let names = names.clone();
        shared_calls(&server, &fleet, "bet-lock:user", move |locks| {
            names
                .into_iter()
                .map(|n| {
                    let locks = locks.clone();
                    tokio::spawn(async move { locks.try_acquire(&n, ttl).await })
                })
                .collect()
        })
        .await
    };
    let guards: Vec<_> = acquired.into_iter().map(|g| g.unwrap().unwrap()).collect();
    for (guard, name) in guards.iter().zip(&names) {
        assert_eq!(
            server.cmd(&["GET", name]).as_str(),
            Some(guard.token()),
            "{name} holds its holder's token"
        );
    }
    // One counter serves every lock off a Cluster: each grant has its own token, and the
    // counter holds the highest token issued or reserved.
    let counter: u64 = server
        .cmd(&["GET", &KeySchema::default().lock_fence_shared()])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut fences: Vec<u64> = guards.iter().map(|g| g.fencing_token().unwrap()).collect();
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), guards.len(), "a token issued twice");
    assert!(
        fences.iter().all(|&f| f <= counter),
        "{fences:?} > {counter}"
    );

    let released = shared_calls(&server, &fleet, "bet-lock:user", move |_| {
        guards
            .into_iter()
            .map(|g| tokio::spawn(g.release()))
            .collect()
    })
    .await;
    assert!(released.into_iter().all(|r| r.unwrap()));
    for name in &names {
        assert_eq!(server.cmd(&["EXISTS", name]).as_int(), Some(0), "{name}");
    }

    // One name asked for 30 times at once: one winner.
    let one = "wallet-retry-scheduler-lock";
    let tries = futures::future::join_all((0..30).map(|_| locks.try_acquire(one, ttl))).await;
    let winners: Vec<_> = tries.into_iter().filter_map(|t| t.unwrap()).collect();
    assert_eq!(winners.len(), 1);
    assert_eq!(server.cmd(&["GET", one]).as_str(), Some(winners[0].token()));
    drop(winners);
    fleet.shutdown().await.unwrap();
}

/// Runs the 30 lock calls `start` spawns while Redis is frozen until every request is either
/// in a script call sent or queued; asserts they shared calls: at most
/// [`SCRIPT_CALLS_IN_FLIGHT`] went out while Redis was frozen, and the queued ones went out
/// together in one more (counted by botfleet and by Redis: the `EVALSHA` calls naming a lock
/// that starts with `prefix`, so that the fleet's other services' scripts do not count).
async fn shared_calls<T: Send + 'static>(
    server: &RedisServer,
    fleet: &Fleet,
    prefix: &str,
    start: impl FnOnce(&botfleet::actors::locks::Locks) -> Vec<tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let before = fleet.lock_stats().await.unwrap();
    log_every_command(server);
    server.freeze();
    let tasks = start(&fleet.locks());
    let placed = poll_until_async(Duration::from_secs(5), || async {
        let now = fleet.lock_stats().await.unwrap();
        now.script_requests - before.script_requests + now.queued_calls as u64 == 30
    })
    .await;
    let frozen = fleet.lock_stats().await.unwrap();
    server.thaw();
    placed.expect("every request was sent or queued");
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    let after = fleet.lock_stats().await.unwrap();
    assert_eq!(after.script_requests - before.script_requests, 30);
    let sent_frozen = frozen.script_calls - before.script_calls;
    assert!(
        (1..=SCRIPT_CALLS_IN_FLIGHT as u64).contains(&sent_frozen),
        "{sent_frozen} calls in flight"
    );
    let calls = after.script_calls - before.script_calls;
    let queued = u64::from(frozen.queued_calls > 0);
    assert_eq!(calls, sent_frozen + queued, "{frozen:?} {after:?}");
    assert!(calls < 30 / 2, "{calls} calls for 30 requests");
    assert_eq!(logged_lock_calls(server, prefix), calls);
    out
}

/// Makes `server` log every command from now on in its slow log (emptied first), for
/// [`logged_lock_calls`].
fn log_every_command(server: &RedisServer) {
    for args in [
        &["CONFIG", "SET", "slowlog-log-slower-than", "0"][..],
        &["CONFIG", "SET", "slowlog-max-len", "100000"],
        &["SLOWLOG", "RESET"],
    ] {
        assert!(
            !matches!(server.cmd(args), RespValue::Error(_)),
            "{args:?} refused"
        );
    }
}

/// Script calls (`EVALSHA`) in `server`'s slow log whose keys name a lock starting with
/// `prefix`: what the lock manager sent for those locks, and nothing another service of the
/// fleet ran meanwhile (a heartbeat, a refresh of the last-known copy).
fn logged_lock_calls(server: &RedisServer, prefix: &str) -> u64 {
    logged_calls(server)
        .iter()
        .filter(|args| {
            args.first()
                .is_some_and(|cmd| cmd.eq_ignore_ascii_case("evalsha"))
                && args.iter().any(|arg| arg.starts_with(prefix))
        })
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_whose_caller_is_gone_are_released() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let ttl = Duration::from_secs(30);
    let names: Vec<String> = (0..30).map(|i| format!("orphan-lock:{i}")).collect();
    {
        // Polled once: the first calls are sent, the others are queued behind them; then every
        // caller is gone before any answer.
        let mut all = Box::pin(futures::future::join_all(
            names.iter().map(|n| locks.try_acquire(n, ttl)),
        ));
        assert!(futures::poll!(all.as_mut()).is_pending());
    }
    // The queued ones are still acquired (they were sent after their callers left), and then
    // released since nobody guards them; the first ones, sent on their callers' tasks, are
    // left to their TTL.
    let left = || {
        names
            .iter()
            .filter(|n| server.cmd(&["EXISTS", n]).as_int() == Some(1))
            .count()
    };
    poll_until_async(Duration::from_secs(15), || async {
        left() <= SCRIPT_CALLS_IN_FLIGHT
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} orphaned locks still held; storage {:?}",
            left(),
            fleet.storage().stats()
        )
    });
    let stats = fleet.lock_stats().await.unwrap();
    eprintln!("lock stats {stats:?}");
    fleet.shutdown().await.unwrap();
}

/// `botfleet bench locks`, run as a user would: `--scenario` runs only the scenarios named, a
/// name it does not know is refused before anything is written, and the scenarios release
/// every lock they take.
#[test]
fn bench_locks_runs_the_scenarios_asked_for_and_refuses_unknown_ones() {
    let server = RedisServer::start().unwrap();
    let bench = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
            .args(["bench", "locks", "--redis", &server.url(), "--pairs", "200"])
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };

    let refused = bench(&["--scenario", "one-task", "--scenario", "two-tasks"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unknown scenario \"two-tasks\"") && stderr.contains("8-tasks-one-key"),
        "{stderr}"
    );
    assert_eq!(server.cmd(&["DBSIZE"]).as_int(), Some(0));

    let ran = bench(&[
        "--scenario",
        "8-tasks-one-key",
        "--scenario",
        "one-task-release-on-drop",
        "--scenario",
        "50-tasks-unfenced-commands",
    ]);
    assert!(ran.status.success(), "{ran:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&ran.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scenarios: Vec<&str> = lines
        .iter()
        .map(|l| l["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        scenarios,
        [
            "8-tasks-one-key",
            "one-task-release-on-drop",
            "50-tasks-unfenced-commands"
        ]
    );
    // The contended scenario runs a tenth of the pairs (at least 8), split over 8 tasks.
    assert_eq!(lines[0]["pairs"], 16);
    assert_eq!(lines[1]["pairs"], 200);
    assert_eq!(lines[2]["pairs"], 200);
    assert!(lines
        .iter()
        .all(|l| l["pairs_per_s"].as_f64().unwrap() > 0.0));
    // The lock manager's scenarios give the spread of their 25 ms windows (none when the run
    // was shorter than one; a window may hold no pair when a slow start or the last,
    // partial window took them all): ordered percentiles.
    for line in &lines[..2] {
        assert_eq!(line["window_ms"], 25, "{line}");
        let windows = &line["window_pairs_per_s"];
        if !windows.is_null() {
            let p = |q: &str| windows[q].as_f64().unwrap();
            assert!(
                0.0 <= p("p10") && p("p10") <= p("p50") && p("p50") <= p("p90"),
                "{line}"
            );
        }
    }
    assert!(lines[2].get("window_pairs_per_s").is_none(), "{}", lines[2]);
    // rslock's commands: a plain `SET NX` and one release script per pair, never batched
    // (one call more where the server did not know the script yet).
    let calls = lines[2]["script_calls_per_pair"].as_f64().unwrap();
    assert!((1.0..=1.01).contains(&calls), "{}", lines[2]);
    // What the pairs cost Redis: at least one script call per pair (a hand-over, or an
    // acquisition and a release; batches of this one task's calls cannot form), and time in
    // those scripts.
    for line in &lines[..2] {
        let calls = line["script_calls_per_pair"].as_f64().unwrap();
        assert!((1.0..=3.0).contains(&calls), "{line}");
        assert!(
            line["server_script_us_per_pair"].as_f64().unwrap() > 0.0,
            "{line}"
        );
    }
    // Every lock was released; only the fencing counter is left.
    assert_eq!(
        server.cmd(&["KEYS", "bench-lock:*"]),
        RespValue::Array(Vec::new())
    );

    // The lock lanes: each line says how many there were, and the lock manager's lines how
    // many calls a pair made on them; with none, every call goes through the pool.
    for line in &lines {
        assert_eq!(line["lock_connections"], 8, "{line}");
    }
    for line in &lines[..2] {
        let lane = line["lane_calls_per_pair"].as_f64().unwrap_or(0.0);
        assert!(lane > 0.0, "{line}");
    }
    let pooled = bench(&["--scenario", "one-task", "--lock-connections", "0"]);
    assert!(pooled.status.success(), "{pooled:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&pooled.stdout).trim()).unwrap();
    assert_eq!(line["lock_connections"], 0, "{line}");
    assert!(line.get("lane_calls_per_pair").is_none(), "{line}");
    let too_many = bench(&["--scenario", "one-task", "--lock-connections", "65"]);
    assert_eq!(too_many.status.code(), Some(2), "{too_many:?}");
    let stderr = String::from_utf8_lossy(&too_many.stderr);
    assert!(
        stderr.contains("--lock-connections") && stderr.contains("expected at most 64, got 65"),
        "{stderr}"
    );
}

/// `bench locks --scenario pipelined-server-cost`: the fenced pairs one and eight to a call
/// and rslock's commands, with calls in flight together; each line says what the pairs cost
/// the server, the calls carry the requests they should, and every lock is released.
#[test]
fn bench_locks_pipelined_server_cost_batches_the_fenced_pairs_and_releases_them() {
    let server = RedisServer::start().unwrap();
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(["bench", "locks", "--redis", &server.url(), "--pairs", "200"])
        .args(["--scenario", "pipelined-server-cost"])
        .env_clear()
        .output()
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&ran.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let forms: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["scenario"], "pipelined-server-cost", "{l}");
            (l["form"].as_str().unwrap(), l["batch"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        forms,
        [("fenced", 1), ("fenced", 8), ("rslock-commands", 1)]
    );
    // Script calls per pair: an acquire and a release call per pair, per eight pairs, or
    // rslock's one release script (one call more where the server did not know a script).
    for (line, calls) in lines.iter().zip([2.0, 0.25, 1.0]) {
        assert_eq!(line["pairs"], 200, "{line}");
        let per_pair = line["script_calls_per_pair"].as_f64().unwrap();
        assert!(
            per_pair >= calls && per_pair <= calls + 0.011,
            "expected {calls} calls per pair: {line}"
        );
        assert!(
            line["server_cpu_us_per_pair"].as_f64().unwrap() > 0.0,
            "{line}"
        );
        assert!(line["pairs_per_s"].as_f64().unwrap() > 0.0, "{line}");
    }
    assert_eq!(
        server.cmd(&["KEYS", "bench-lock:*"]),
        RespValue::Array(Vec::new())
    );
}

/// `bench locks --scenario one-task-bare-socket`: the lock scripts and the plain commands
/// over a bare socket, which authenticates as the URL says (the default user may not run
/// them here); each line counts its pairs, its script calls, and every lock is released.
#[test]
fn bench_locks_bare_socket_sends_the_scripts_and_the_plain_commands_and_releases_them() {
    let server = RedisServer::builder()
        .config("user default on nopass ~* &* +@all -evalsha -eval -set -del")
        .config("user bench on >bench-secret ~* &* +@all")
        .start()
        .unwrap();
    let url = format!("redis://bench:bench-secret@127.0.0.1:{}", server.port());
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(["bench", "locks", "--redis", &url, "--pairs", "200"])
        .args(["--scenario", "one-task-bare-socket"])
        .env_clear()
        .output()
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    assert!(
        !String::from_utf8_lossy(&ran.stderr).contains("bench-secret"),
        "{ran:?}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&ran.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let forms: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["scenario"], "one-task-bare-socket", "{l}");
            l["form"].as_str().unwrap()
        })
        .collect();
    assert_eq!(forms, ["fenced-scripts", "plain-commands"]);
    // Two script calls per pair, or none (and the CPU sample's own, at most 0.01 per pair).
    for (line, calls) in lines.iter().zip([2.0, 0.0]) {
        assert_eq!(line["pairs"], 200, "{line}");
        let per_pair = line["script_calls_per_pair"].as_f64().unwrap();
        assert!(
            per_pair >= calls && per_pair <= calls + 0.011,
            "expected {calls} calls per pair: {line}"
        );
        assert!(line["pairs_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert!(
            line["server_cpu_us_per_pair"].as_f64().unwrap() > 0.0,
            "{line}"
        );
    }
    assert!(
        lines[0]["server_script_us_per_pair"].as_f64().unwrap() > 0.0,
        "{}",
        lines[0]
    );
    assert_eq!(
        server.cmd(&["KEYS", "bench-lock:*"]),
        RespValue::Array(Vec::new())
    );
}

/// A fencing counter ahead of the server's clock (tokens issued by a server whose clock ran
/// ahead, or written by hand) is still raised by one, by a grant and by a hand-over, and the
/// counter keeps the token issued; a counter behind the clock jumps to the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_stay_above_a_counter_ahead_of_the_clock() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let name = "payout-lock:round-88";
    let counter = fence_counter(&server, name);
    let counter_now = |server: &TestRedis| -> u64 {
        server
            .cmd(&["GET", &counter])
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("the counter holds a number")
    };
    // Ten years of microseconds ahead of any clock this test runs under.
    let ahead: u64 = 2_100_000_000_000_000;
    server.cmd(&["SET", &counter, &ahead.to_string()]);
    let first = locks
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(first.fencing_token(), Some(ahead + 1));
    assert_eq!(counter_now(&server), ahead + 1);
    let waiter = queue_one_waiter(&fleet, name, Duration::from_secs(30)).await;
    assert!(first.release().await.unwrap());
    let second = waiter.await.unwrap();
    assert_eq!(second.fencing_token(), Some(ahead + 2), "handed over");
    assert_eq!(counter_now(&server), ahead + 2);
    assert!(second.release().await.unwrap());

    // Behind the clock: the token is the server's clock in microseconds, above the counter,
    // and the counter holds the same number. Twenty times: the script writes the clock as
    // seconds and six-digit microseconds, and nine clock readings in ten have fewer digits
    // of microseconds to pad.
    for _ in 0..20 {
        server.cmd(&["SET", &counter, "5"]);
        let before_us = server.cmd(&["TIME"]);
        let third = locks
            .try_acquire(name, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the lock is free");
        let fence = third.fencing_token().unwrap();
        let clock_us = match before_us {
            RespValue::Array(parts) => {
                let secs: u64 = parts[0].as_str().unwrap().parse().unwrap();
                let micros: u64 = parts[1].as_str().unwrap().parse().unwrap();
                secs * 1_000_000 + micros
            }
            other => panic!("TIME answered {other:?}"),
        };
        assert!(fence >= clock_us, "{fence} follows the clock ({clock_us})");
        assert!(
            fence < clock_us + 60_000_000,
            "{fence} is the clock ({clock_us}), not past it"
        );
        assert_eq!(counter_now(&server), fence);
        assert!(third.release().await.unwrap());
    }
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locks_held_now_are_listed_from_memory() {
    use botfleet::actors::locks::Holder;
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let ttl = Duration::from_secs(30);
    let guard = locks.try_acquire("held:guard", ttl).await.unwrap().unwrap();
    let lease = locks
        .acquire_lease("held:lease", ttl, Duration::ZERO)
        .await
        .unwrap();
    let (held, total) = locks.held_now(10);
    let mine: Vec<_> = held
        .iter()
        .filter(|h| h.name.starts_with("held:"))
        .map(|h| (h.name.as_str(), h.holder, h.fence))
        .collect();
    assert_eq!(
        mine,
        [
            ("held:guard", Holder::Guard, guard.fencing_token()),
            ("held:lease", Holder::Lease, Some(lease.fence)),
        ]
    );
    assert!(total >= 2);
    assert_eq!(locks.stats().leases, 1);
    let now = botfleet::clock::now_ms();
    assert!(held
        .iter()
        .filter(|h| h.name.starts_with("held:"))
        .all(|h| h
            .expires_at_ms
            .is_some_and(|at| at > now && at <= now + 30_000)));
    // A limit cuts the list, not the total.
    assert_eq!(locks.held_now(1).0.len(), 1);

    drop(guard);
    assert!(locks
        .release_lease("held:lease", &lease.token)
        .await
        .unwrap());
    assert_eq!(locks.stats().leases, 0);
    let (held, _) = locks.held_now(10);
    assert!(
        held.iter().all(|h| !h.name.starts_with("held:")),
        "{held:?}"
    );
    fleet.shutdown().await.unwrap();
}

/// The calls a server logged (`SLOWLOG` with every call logged), oldest first: each call's
/// arguments.
fn logged_calls(server: &RedisServer) -> Vec<Vec<String>> {
    let RespValue::Array(entries) = server.cmd(&["SLOWLOG", "GET", "-1"]) else {
        panic!("SLOWLOG GET answered no list");
    };
    let mut calls: Vec<Vec<String>> = entries
        .iter()
        .filter_map(|entry| entry.as_array()?.get(3)?.as_array())
        .map(|args| {
            args.iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .collect();
    calls.reverse();
    calls
}

/// A lock call sent twice (its connection lost after Redis ran it, so the storage sends it
/// again on another connection) is answered as the first was: an acquisition is granted again
/// to the same holder, with a fence above the first, and the lock stays the guard's to
/// release; a hand-over sent twice hands over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_call_sent_twice_is_answered_as_once() {
    // One server: its log holds every call (on a Cluster, the key's master would).
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let locks = fleet.locks();
    let name = "payout-lock:resent";
    log_every_command(&server);
    let guard = locks
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the lock is free");
    let first = guard.fencing_token().unwrap();
    // The fleet's other services run scripts too: the acquisition is the call naming the lock.
    let call = logged_calls(&server)
        .into_iter()
        .find(|args| {
            args.first()
                .is_some_and(|c| c.eq_ignore_ascii_case("evalsha"))
                && args.iter().any(|a| a == name)
        })
        .expect("the acquisition was logged");
    let args: Vec<&str> = call.iter().map(String::as_str).collect();
    // A call of one request answers its integer alone.
    let again = server.cmd(&args);
    let fence = again
        .as_int()
        .unwrap_or_else(|| panic!("the acquisition sent again answered {again:?}"));
    assert!(fence > first as i64, "granted again: {fence} above {first}");
    // Another holder's call is still refused.
    let mut other = args.clone();
    let token_at = 3 + 3; // EVALSHA sha numkeys, three keys, then the token
    other[token_at] = "someone-else";
    let refused = server.cmd(&other);
    assert_eq!(refused.as_int(), Some(0), "{refused:?}");

    // A hand-over: released to a waiter of this process, then sent twice.
    let waiter = queue_one_waiter(&fleet, name, Duration::from_secs(30)).await;
    server.cmd(&["SLOWLOG", "RESET"]);
    assert!(guard.release().await.unwrap(), "still the guard's lock");
    let second = waiter.await.unwrap();
    let handed = second.fencing_token().unwrap();
    assert!(handed > fence as u64, "handed over with a new fence");
    // The hand-over: two keys, the lock and its fencing counter.
    let call = logged_calls(&server)
        .into_iter()
        .find(|args| {
            args.first()
                .is_some_and(|c| c.eq_ignore_ascii_case("evalsha"))
                && args.get(2).map(String::as_str) == Some("2")
                && args.get(3).is_some_and(|k| k == name)
                && args.get(4).is_some_and(|k| k.contains("fence"))
        })
        .expect("the hand-over was logged");
    let args: Vec<&str> = call.iter().map(String::as_str).collect();
    let again = server.cmd(&args).as_int();
    assert!(
        again.is_some_and(|f| f > handed as i64),
        "handed over again: {again:?} above {handed}"
    );
    assert!(second.release().await.unwrap(), "still the waiter's lock");
    assert_eq!(server.cmd(&["EXISTS", name]).as_int(), Some(0));
    fleet.shutdown().await.unwrap();
}

/// A call made while another is in flight first lets the callers ready to run go ahead, and
/// sends what they asked for meanwhile with its own request: ten acquisitions started
/// together behind one in flight leave in one script call, not in seven more (the calls in
/// flight allowed). The ten are polled by one task, so that all are asked for before the
/// first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_one_is_in_flight_gather_into_one() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 15_000;
    let storage = Storage::open(&s.storage, &KeySchema::default())
        .await
        .unwrap();
    let locks = botfleet::actors::locks::Locks::new(storage.clone(), s.locks.clone());
    let ttl = Duration::from_secs(30);
    // Warm the script cache so the counts below are the calls themselves.
    let warm_up = locks.try_acquire("warm-up", ttl).await.unwrap().unwrap();
    assert!(warm_up.release().await.unwrap());
    let before = locks.stats();
    let evalsha_before = evalsha_calls(&server);
    let sets_before = command_calls(&server, "set");

    server.freeze();
    let first = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.try_acquire("payout-lock:round-1", ttl).await })
    };
    poll_until_async(Duration::from_secs(5), || async {
        locks.stats().script_calls == before.script_calls + 1
    })
    .await
    .expect("the first call went out");
    let names: Vec<String> = (2..=11).map(|i| format!("payout-lock:round-{i}")).collect();
    let rest = {
        let (locks, names) = (locks.clone(), names.clone());
        tokio::spawn(async move {
            futures::future::join_all(names.iter().map(|n| locks.try_acquire(n, ttl))).await
        })
    };
    let placed = poll_until_async(Duration::from_secs(5), || async {
        let now = locks.stats();
        now.script_requests - before.script_requests + now.queued_calls as u64 == 11
    })
    .await;
    let frozen = locks.stats();
    server.thaw();
    placed.expect("every request was sent or queued");
    assert_eq!(frozen.script_calls - before.script_calls, 2, "{frozen:?}");
    assert_eq!(frozen.queued_calls, 0, "{frozen:?}");

    // Each caller got its own lock, with its own token.
    let first = first.await.unwrap().unwrap().expect("round-1 was free");
    assert_eq!(
        server.cmd(&["GET", "payout-lock:round-1"]).as_str(),
        Some(first.token())
    );
    let gathered: Vec<LockGuard> = rest
        .await
        .unwrap()
        .into_iter()
        .map(|acquired| acquired.unwrap().expect("the lock was free"))
        .collect();
    // A call raises the counter once, however many locks it grants: a `SET NX` per grant
    // and one `SET ... GET` of the counter per call (2 + 11 here, not 2 + 20; one more
    // should the second call read the same microsecond from `TIME` as the first, and raise
    // the counter past it). The ten gathered grants took the ten tokens the call reserved,
    // and the counter holds the last.
    let sets = command_calls(&server, "set") - sets_before;
    assert!((13..=14).contains(&sets), "{sets} SETs");
    let mut fences: Vec<u64> = gathered
        .iter()
        .map(|g| g.fencing_token().unwrap())
        .collect();
    fences.sort_unstable();
    assert!(fences[0] > first.fencing_token().unwrap());
    assert_eq!(
        fences,
        (fences[0]..fences[0] + 10).collect::<Vec<_>>(),
        "the tokens the call reserved"
    );
    let counter = server.cmd(&["GET", &KeySchema::default().lock_fence_shared()]);
    assert_eq!(counter.as_str(), Some(fences[9].to_string().as_str()));
    for (guard, name) in gathered.into_iter().zip(&names) {
        assert_eq!(server.cmd(&["GET", name]).as_str(), Some(guard.token()));
        assert!(guard.release().await.unwrap(), "{name}");
    }
    assert_eq!(evalsha_calls(&server) - evalsha_before, 2 + 10);
    assert!(first.release().await.unwrap());
    storage.close().await;
}

/// The lock lanes' connections on `server`: each one's `CLIENT LIST` id.
fn lane_clients(server: &RedisServer) -> Vec<String> {
    let list = server.cmd(&["CLIENT", "LIST"]);
    let text = list.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field == format!("name={LANE_CLIENT_NAME}"))
        })
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

/// Acquires and releases `name` once, on a free lock.
async fn one_pair(locks: &Locks, name: &str) {
    let guard = locks
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is free"));
    assert!(guard.fencing_token().is_some(), "a lock of Redis's");
    assert!(guard.release().await.unwrap(), "still the guard's lock");
}

/// Lock scripts run on the lanes, connections of their own that authenticate and select the
/// database as the pool does; with `lock_connections = 0` they go through the pool and no
/// lane connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_scripts_run_on_their_own_connections_unless_there_are_none() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(patient(&server.url())).await.unwrap();
    let storage = fleet.storage().clone();
    assert!(
        lane_clients(&server).is_empty(),
        "lanes connect at first use"
    );
    one_pair(&fleet.locks(), "lane-lock:first").await;
    let served = storage.lock_lane_calls();
    assert!(served >= 2, "the acquisition and the release: {served}");
    let lanes = lane_clients(&server);
    assert_eq!(
        lanes.len(),
        1,
        "one call at a time opens one lane: {lanes:?}"
    );
    one_pair(&fleet.locks(), "lane-lock:second").await;
    assert!(storage.lock_lane_calls() >= served + 2);
    assert_eq!(lane_clients(&server), lanes, "the lane is kept");
    fleet.shutdown().await.unwrap();

    // Many calls at once: no more lanes than the setting allows; the rest use the pool.
    let bounded = RedisServer::start().unwrap();
    let mut s = patient(&bounded.url());
    s.storage.redis.lock_connections = 2;
    let fleet = Fleet::start(s).await.unwrap();
    let locks = fleet.locks();
    let pairs: Vec<_> = (0..64)
        .map(|i| {
            let locks = locks.clone();
            tokio::spawn(async move { one_pair(&locks, &format!("lane-lock:many-{i}")).await })
        })
        .collect();
    for pair in pairs {
        pair.await.unwrap();
    }
    let lanes = lane_clients(&bounded);
    assert!(
        (1..=2).contains(&lanes.len()),
        "at most lock_connections lanes: {lanes:?}"
    );
    fleet.shutdown().await.unwrap();

    let pooled = RedisServer::start().unwrap();
    let mut s = patient(&pooled.url());
    s.storage.redis.lock_connections = 0;
    let fleet = Fleet::start(s).await.unwrap();
    one_pair(&fleet.locks(), "lane-lock:pooled").await;
    assert_eq!(fleet.storage().lock_lane_calls(), 0);
    assert!(lane_clients(&pooled).is_empty());
    fleet.shutdown().await.unwrap();

    // A password and a database: the lane's lock lands where the pool reads.
    let guarded = RedisServer::builder()
        .config("requirepass lane-secret")
        .start()
        .unwrap();
    let mut s = patient(&guarded.url());
    s.storage.redis.password = "lane-secret".into();
    s.storage.redis.db = 3;
    let fleet = Fleet::start(s).await.unwrap();
    let storage = fleet.storage().clone();
    let name = "lane-lock:guarded";
    let guard = fleet
        .locks()
        .try_acquire(name, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the lock is free");
    assert!(storage.lock_lane_calls() >= 1, "served by a lane");
    assert_eq!(
        storage.get(name).await.unwrap().as_deref(),
        Some(guard.token()),
        "the lane wrote the lock into database 3"
    );
    assert!(guard.release().await.unwrap());
    assert_eq!(storage.get(name).await.unwrap(), None);
    fleet.shutdown().await.unwrap();
}

/// A lane's connection that died with its server while idle is replaced, and the call sent
/// again on the new one: after a restart that lost the data (and the script cache), the
/// first lock call succeeds, and the storage does not take it for another outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_server_restarted_empty_serves_the_next_call_on_a_new_connection() {
    let mut server = RedisServer::start().unwrap();
    // The storage and the lock handle alone: no service of a fleet takes a lock meanwhile,
    // so the next call is the first on the dead connection.
    let s = patient(&server.url());
    let storage = Storage::open(&s.storage, &KeySchema::default())
        .await
        .unwrap();
    let locks = Locks::new(storage.clone(), s.locks.clone());
    one_pair(&locks, "lane-lock:before").await;
    let before = lane_clients(&server);
    assert!(!before.is_empty());
    server.restart_empty().unwrap();
    // Wait until the storage is back on Redis and stays there.
    poll_until_async(Duration::from_secs(15), || {
        let storage = storage.clone();
        async move { storage.mode() == Mode::Redis && storage.get("lane-lock:probe").await.is_ok() }
    })
    .await
    .expect("the storage is back on Redis");
    let changes = storage.stats().mode_changes;
    let served = storage.lock_lane_calls();
    one_pair(&locks, "lane-lock:after").await;
    assert!(storage.lock_lane_calls() > served, "served by a lane");
    assert_eq!(
        storage.stats().mode_changes,
        changes,
        "the dead connection was not taken for an outage"
    );
    assert!(!lane_clients(&server).is_empty(), "a new lane connection");
    storage.close().await;
}

/// A lane call meets a frozen server: it fails within the command timeout as an outage; a
/// call dropped half-way (its caller gave up) closes its connection, whose late reply could
/// otherwise answer the next call; once the server is back the lanes serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_call_on_a_frozen_server_fails_in_time_and_a_dropped_one_closes_its_connection() {
    let server = RedisServer::start().unwrap();
    let mut s = patient(&server.url());
    s.storage.redis.lock_connections = 1;
    let fleet = Fleet::start(s).await.unwrap();
    let storage = fleet.storage().clone();
    let locks = fleet.locks();
    one_pair(&fleet.locks(), "lane-lock:warm").await;
    let lane = lane_clients(&server);
    assert_eq!(lane.len(), 1, "{lane:?}");

    // Dropped half-way: the caller's own deadline is far shorter than the 2 s timeout.
    server.freeze();
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        locks.try_acquire("lane-lock:dropped", Duration::from_secs(30)),
    )
    .await;
    assert!(dropped.is_err(), "answered by a frozen server: {dropped:?}");
    // Failed in time: the command timeout, then an outage.
    let start = Instant::now();
    let failed = locks
        .try_acquire("lane-lock:frozen", Duration::from_secs(30))
        .await;
    assert!(
        matches!(failed, Err(LockError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?} for a 2 s timeout",
        start.elapsed()
    );
    server.thaw();
    poll_until_async(Duration::from_secs(10), || async {
        !lane_clients(&server).contains(&lane[0])
    })
    .await
    .expect("the connection of the dropped call is closed");
    poll_until_async(Duration::from_secs(15), || {
        let storage = storage.clone();
        async move { storage.mode() == Mode::Redis }
    })
    .await
    .expect("the storage is back on Redis");
    // A lane that could not connect to the frozen server leaves the calls to the pool for
    // reconnect_max_ms: pairs run until one is served by the lane again.
    let mut pairs = 0;
    poll_until_async(Duration::from_secs(10), || {
        pairs += 1;
        let (locks, storage) = (locks.clone(), storage.clone());
        let name = format!("lane-lock:thawed-{pairs}");
        async move {
            let served = storage.lock_lane_calls();
            one_pair(&locks, &name).await;
            storage.lock_lane_calls() > served
        }
    })
    .await
    .expect("the lane serves again");
    assert_eq!(lane_clients(&server).len(), 1);
    fleet.shutdown().await.unwrap();
}
