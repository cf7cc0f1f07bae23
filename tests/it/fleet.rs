//! The Fleet handle embedded in a host's tokio runtime: start and stop without leaking threads,
//! built-in actors mirrored to a real redis-server, restarts after a fatal error, host actors
//! in the tree, reverse-ordered shutdown, and the blocking facade.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::time::Duration;

use actix::prelude::*;
use botfleet::settings::Settings;
use botfleet::supervisor::{ActorHandle, ChildSpec, ChildState};
use botfleet::{BlockingFleet, Fleet};
use support::{poll_until, poll_until_async, RedisServer, TestRedis};

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = url.to_string();
    support::fit_settings(&mut s);
    // Not a fail-over test: a busy machine must not look like an outage.
    s.storage.redis.timeout_ms = 2_000;
    s.presence.interval_ms = 50;
    s.presence.ttl_secs = 60;
    s.supervisor.stop_timeout_ms = 2_000;
    s
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_stops_three_times_without_leaking_threads() {
    // Standalone whatever BOTFLEET_TEST_REDIS says: this counts the process's threads, and a
    // Cluster or Sentinel client resolves more node addresses on tokio's blocking pool, whose
    // idle threads linger for 10 s by design.
    let server = RedisServer::start().unwrap();
    // A first start and stop warms up what lives for the whole process (tokio's blocking
    // pool, the panic hook): the baseline is taken after it.
    Fleet::start(settings(&server.url()))
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let before = threads();
    for round in 0..3 {
        let fleet = Fleet::start(settings(&server.url())).await.unwrap();
        assert!(fleet.health().actors.all_running(), "round {round}");
        let report = fleet.shutdown().await.unwrap();
        assert!(report.flushed);
    }
    // Threads end asynchronously after join; allow the count to settle. An idle thread of
    // tokio's blocking pool (address lookups run there) lingers for its 10 s keep-alive, so
    // the deadline is past that: a leaked thread never ends at all.
    let settled = poll_until(Duration::from_secs(15), || threads() <= before);
    assert!(
        settled.is_ok(),
        "threads before {before}, after {}",
        threads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_mirrored_to_redis_in_the_seed_style_layout() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let key = fleet.storage().keys().instance(fleet.instance());
    let s = &server;
    poll_until(Duration::from_secs(5), || {
        s.cmd(&["HGET", &key, "beats"])
            .as_str()
            .is_some_and(|b| b.parse::<u64>().unwrap_or(0) >= 3)
    })
    .expect("beats reach redis");
    let pid = server.cmd(&["HGET", &key, "pid"]);
    assert_eq!(pid.as_str(), Some(std::process::id().to_string().as_str()));
    assert_eq!(
        server.cmd(&["HGET", &key, "storage_mode"]).as_str(),
        Some("redis")
    );
    let ttl = server.cmd(&["TTL", &key]).as_int().unwrap();
    assert!(ttl > 50 && ttl <= 60, "ttl {ttl}");
    assert!(fleet.presence().await.unwrap().beats >= 3);
    fleet.shutdown().await.unwrap();
}

/// Another client turns the presence hash into a string: the actor's write fails with
/// WRONGTYPE, which it declares fatal; the supervisor restarts it; the new incarnation
/// repairs the key and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_storage_error_restarts_the_actor_which_repairs_its_key() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let key = fleet.storage().keys().instance(fleet.instance());
    let s = &server;
    poll_until(Duration::from_secs(5), || {
        s.cmd(&["EXISTS", &key]).as_int() == Some(1)
    })
    .unwrap();
    server.cmd(&["SET", &key, "not a hash"]);
    let f = fleet.clone();
    poll_until_async(Duration::from_secs(5), move || {
        let f = f.clone();
        async move {
            f.health()
                .actors
                .actor("presence")
                .is_some_and(|a| a.restarts >= 1)
        }
    })
    .await
    .expect("presence restarted");
    let health = fleet.health();
    let presence = health.actors.actor("presence").unwrap();
    assert!(
        presence
            .last_failure
            .as_ref()
            .is_some_and(|f| f.contains("WRONGTYPE")),
        "{presence:?}"
    );
    poll_until(Duration::from_secs(5), || {
        s.cmd(&["TYPE", &key]).as_str() == Some("hash")
    })
    .expect("the new incarnation repaired the key");
    assert_eq!(
        health.actors.actor("storage-monitor").unwrap().restarts,
        0,
        "sibling unaffected"
    );
    fleet.shutdown().await.unwrap();
}

/// A host actor that counts; it panics on request.
#[derive(Default)]
struct HostCounter(u64);
impl Actor for HostCounter {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "u64")]
struct Bump {
    panic: bool,
}
impl Handler<Bump> for HostCounter {
    type Result = u64;
    fn handle(&mut self, msg: Bump, _: &mut Context<Self>) -> u64 {
        assert!(!msg.panic, "asked to panic");
        self.0 += 1;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_actors_are_supervised_and_stopped_first() {
    let server = TestRedis::start().unwrap();
    let mut handle: Option<ActorHandle<HostCounter>> = None;
    let fleet = Fleet::start_with(settings(&server.url()), |tree, _storage| {
        handle = Some(tree.child(ChildSpec::new("host-counter", |_| HostCounter::default())));
    })
    .await
    .unwrap();
    let counter = handle.unwrap();
    assert_eq!(counter.send(Bump { panic: false }).await.unwrap(), 1);
    assert!(
        counter.send(Bump { panic: true }).await.is_err(),
        "the in-flight request fails"
    );
    let c = counter.clone();
    poll_until_async(Duration::from_secs(3), move || {
        let c = c.clone();
        async move { matches!(c.send(Bump { panic: false }).await, Ok(1)) }
    })
    .await
    .expect("the restarted counter answers with fresh state");
    // The supervisor hears of the restart asynchronously: the new incarnation can answer
    // before its health row says Running.
    poll_until_async(Duration::from_secs(3), || async {
        fleet.health().actors.actor("host-counter").unwrap().state == ChildState::Running
    })
    .await
    .expect("the restarted counter is marked running");
    let health = fleet.health();
    let host = health.actors.actor("host-counter").unwrap();
    assert_eq!(host.restarts, 1);
    assert_eq!(host.state, ChildState::Running);
    let report = fleet.shutdown().await.unwrap();
    assert_eq!(
        report.actors.stop_order(),
        [
            "host-counter",
            "admin-inbox",
            "peer-monitor",
            "heartbeat",
            "scheduler",
            "cache",
            "hazards",
            "locks",
            "presence",
            "storage-monitor"
        ]
    );
    assert!(report.actors.abandoned().is_empty());
}

#[test]
fn blocking_facade_serves_hosts_without_a_runtime() {
    let server = TestRedis::start().unwrap();
    let fleet = BlockingFleet::start(settings(&server.url())).unwrap();
    fleet.set("from-sync-code", "yes", None).unwrap();
    assert_eq!(fleet.get("from-sync-code").unwrap().as_deref(), Some("yes"));
    assert_eq!(server.cmd(&["GET", "from-sync-code"]).as_str(), Some("yes"));
    assert!(fleet.health().actors.all_running());
    fleet.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_fallback_is_the_store() {
    let mut s = Settings::default();
    s.storage.redis.enabled = false;
    let fleet = Fleet::start(s).await.unwrap();
    fleet.storage().set("k", "v", None).await.unwrap();
    assert_eq!(
        fleet.storage().get("k").await.unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(
        fleet.health().storage.mode,
        Some(botfleet::storage::Mode::Fallback)
    );
    fleet.shutdown().await.unwrap();
}
