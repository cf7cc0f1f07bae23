//! The cache service against real redis-server processes: one loader call for 100 concurrent
//! loads, invalidation reaching a second OS process, a seed-style `{"key":...}` message, and
//! serving from the near cache and the fallback while Redis is down.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::actors::cache::CacheError;
use botfleet::settings::Settings;
use botfleet::Fleet;
use support::{poll_until_async, RedisServer, TestRedis};

const CHILD_ENV: &str = "BOTFLEET_TEST_CACHE_CHILD";
const TTL: Duration = Duration::from_secs(60);

fn settings(url: &str) -> Settings {
    support::suite_settings(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_key_call_the_loader_once() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls) = (fleet.cache(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("game.payloads", TTL, || async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that every caller arrives while the load runs.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>(format!(
                        "{{\"gameCode\":\"chicken-road-two\",\"n\":{n}}}"
                    ))
                })
                .await
                .unwrap()
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(values.iter().all(|v| v == &values[0]));
    let stats = fleet.cache().stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.near_hits + stats.storage_hits + stats.misses, 100);
    // Stored in Redis with the TTL given.
    let ttl = server.cmd(&["TTL", "game.payloads"]).as_int().unwrap();
    assert!((1..=60).contains(&ttl));
    // A failing loader reaches its caller and caches nothing.
    let err = fleet
        .cache()
        .get_or_load("broken", TTL, || async { Err::<String, _>("db down") })
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Loader { .. }), "{err}");
    assert!(server.cmd(&["GET", "broken"]).is_nil());
    assert_eq!(
        fleet.cache().get("", TTL).await.unwrap_err(),
        CacheError::EmptyKey
    );
    fleet.shutdown().await.unwrap();
}

fn spawn_child(role: &str, spec: String) -> std::process::Child {
    support::spawn_role(module_path!(), role, CHILD_ENV, &spec)
}

/// Child role: caches `game.payloads`, prints `cached VALUE`, then prints `invalidated` when
/// its near copy is dropped by a message and `reloaded VALUE` with the value read afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of invalidation_reaches_a_second_process"]
async fn child_reader() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let fleet = Fleet::start(settings(&url)).await.unwrap();
    let cache = fleet.cache();
    // Another process's invalidations only: the near cache is also cleared when this
    // process's listener subscribes (what came before was missed), which may come after the
    // first read.
    let mut dropped = cache.invalidations();
    let value = cache.get("game.payloads", TTL).await.unwrap().unwrap();
    println!("cached {value}");
    std::io::stdout().flush().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), dropped.recv()).await {
            Ok(Ok(key)) if &*key == "game.payloads" => break,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("never invalidated: {other:?}"),
        }
    }
    println!("invalidated");
    let value = cache.get("game.payloads", TTL).await.unwrap().unwrap();
    println!("reloaded {value}");
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_a_second_process() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let cache = fleet.cache();
    cache.set("game.payloads", "v1", TTL).await.unwrap();
    let mut child = spawn_child("child_reader", server.url());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |prefix: &str, within: Duration| -> Option<String> {
        let until = Instant::now() + within;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let line = rx.recv_timeout(left).ok()?;
            if let Some((_, rest)) = line.split_once(prefix) {
                return Some(rest.trim().to_string());
            }
        }
    };
    assert_eq!(
        next_line("cached ", Duration::from_secs(20)).as_deref(),
        Some("v1")
    );
    // The child holds v1 near: reading it again costs it nothing. Now this process writes.
    // The child's listener may not have subscribed yet (it does so once its fleet runs), so
    // the invalidation is sent again until the child has heard one.
    let sent = Instant::now();
    cache.set("game.payloads", "v2", TTL).await.unwrap();
    while next_line("invalidated", Duration::from_millis(200)).is_none() {
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "the child never heard an invalidation"
        );
        cache.invalidate("game.payloads").await.unwrap();
    }
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert_eq!(
        next_line("reloaded ", Duration::from_secs(20)).as_deref(),
        Some("v2")
    );
    child.kill().unwrap();
    child.wait().unwrap();
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_style_message_and_a_second_fleet_invalidate_the_near_copy() {
    let server = TestRedis::start().unwrap();
    let a = Fleet::start(settings(&server.url())).await.unwrap();
    let b = Fleet::start(settings(&server.url())).await.unwrap();
    let (ca, cb) = (a.cache(), b.cache());
    let (mut dropped_a, mut dropped_b) = (ca.invalidations(), cb.invalidations());
    ca.set("game.payloads", "v1", TTL).await.unwrap();
    // a's own message reaches b first (b had nothing to drop).
    poll_until_async(Duration::from_secs(5), || async {
        cb.stats().invalidations_received == 1
    })
    .await
    .expect("a's message reaches b");
    assert_eq!(&*cb.get("game.payloads", TTL).await.unwrap().unwrap(), "v1");
    assert!(cb.peek("game.payloads").is_some());
    // An ioredis bot publishes {"key": ...} after writing the key itself.
    server.cmd(&["SET", "game.payloads", "v2"]);
    server.cmd(&["PUBLISH", "cache-invalidate", "{\"key\":\"game.payloads\"}"]);
    poll_until_async(Duration::from_secs(5), || async {
        cb.peek("game.payloads").is_none() && ca.peek("game.payloads").is_none()
    })
    .await
    .expect("both near copies dropped");
    assert_eq!(&*cb.get("game.payloads", TTL).await.unwrap().unwrap(), "v2");
    // invalidate() deletes everywhere.
    ca.invalidate("game.payloads").await.unwrap();
    poll_until_async(Duration::from_secs(5), || async {
        cb.peek("game.payloads").is_none()
    })
    .await
    .expect("b's copy dropped");
    assert!(cb.get("game.payloads", TTL).await.unwrap().is_none());
    assert_eq!(cb.stats().invalidations_received, 3);
    assert_eq!(
        ca.stats().invalidations_received,
        1,
        "its own messages are ignored"
    );
    // Each invalidation received is announced to the host once, its own never.
    for _ in 0..3 {
        assert_eq!(&*dropped_b.try_recv().unwrap(), "game.payloads");
    }
    assert_eq!(&*dropped_a.try_recv().unwrap(), "game.payloads");
    assert!(dropped_a.try_recv().is_err() && dropped_b.try_recv().is_err());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_and_fallback_serve_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 250;
    let fleet = Fleet::start(s).await.unwrap();
    let cache = fleet.cache();
    cache
        .set("stats:total", "{\"rounds\":10}", TTL)
        .await
        .unwrap();
    server.kill9();
    // Near hit: no storage call at all.
    assert_eq!(
        &*cache.get("stats:total", TTL).await.unwrap().unwrap(),
        "{\"rounds\":10}"
    );
    // A new key loads through the fallback, and is served again without the loader.
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = cache
            .get_or_load("stats:Admiral", TTL, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("{\"rounds\":3}".to_string())
            })
            .await
            .unwrap();
        assert_eq!(&*v, "{\"rounds\":3}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    cache.clear_near();
    assert_eq!(
        &*cache.get("stats:Admiral", TTL).await.unwrap().unwrap(),
        "{\"rounds\":3}",
        "served by the fallback"
    );
    fleet.shutdown().await.unwrap();
}
