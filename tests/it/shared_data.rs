//! Shared data (seed 000) against a real redis-server and a real HTTP server on loopback: the
//! seed's layout read by a plain Redis client, the freshness threshold, coalesced fallbacks
//! within and across processes, leader election with a fetcher killed by -9, a deposed
//! leader's write refused, Redis killed and back, the source down.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::actors::shared_data::{Notice, Origin, SharedData};
use botfleet::clock::now_ms;
use botfleet::settings::Settings;
use botfleet::Fleet;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::{poll_until_async, HttpReply, HttpServer, Inspect, RedisServer, TestRedis};

const CHILD_ENV: &str = "BOTFLEET_TEST_SHARED_DATA_CHILD";
const SHARED: &str = "fivem_red_green_shared_data";
const LEGACY: &str = "api_response";

/// The seed's feed for round `issue`.
fn game(issue: u64) -> Value {
    json!({"data": {"records": [
        {"issue": issue, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
    ]}})
}

/// A source answering round N to request N.
async fn game_server() -> HttpServer {
    HttpServer::start(|n| HttpReply::json(game(n).to_string())).await
}

fn settings(redis_url: &str, source_url: &str) -> Settings {
    let mut s = support::suite_settings(redis_url);
    let d = &mut s.shared_data;
    d.enabled = true;
    d.fetch_interval_ms = 100;
    d.leader_ttl_ms = 1_000;
    d.source.url = source_url.to_string();
    d.source.timeout_ms = 3_000;
    d.source.backoff_base_ms = 50;
    d.source.backoff_max_ms = 400;
    s
}

/// Settings of a process that only reads: no fetcher, no configured readers.
fn reader_only(redis_url: &str, source_url: &str, fresh_ms: u64) -> Settings {
    let mut s = settings(redis_url, source_url);
    s.shared_data.enabled = false;
    s.shared_data.readers.clear();
    s.shared_data.fresh_ms = fresh_ms;
    s
}

fn get_json(redis: &impl Inspect, key: &str) -> Option<Value> {
    redis
        .cmd(&["GET", key])
        .as_str()
        .map(|text| serde_json::from_str(text).unwrap())
}

/// Writes a snapshot of round `issue` taken `age_ms` ago, as the seed's English bot would.
fn seed_write(redis: &impl Inspect, issue: u64, age_ms: u64) -> u64 {
    let timestamp = now_ms() - age_ms;
    let snapshot = json!({"timestamp": timestamp, "game_data": game(issue), "processed_data": {}});
    assert!(redis
        .cmd(&["SET", SHARED, &snapshot.to_string(), "EX", "300"])
        .is_ok());
    timestamp
}

fn issue_of(game_data: &Value) -> u64 {
    game_data
        .pointer("/data/records/0/issue")
        .and_then(Value::as_u64)
        .expect("the seed's layout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetcher_writes_the_seed_layout_that_a_plain_client_reads() {
    let redis = TestRedis::start().unwrap();
    let source = game_server().await;
    let mut s = settings(&redis.url(), &source.url("/api/game"));
    s.shared_data.fetch_interval_ms = 60_000;
    s.shared_data
        .source
        .headers
        .push(("User-Agent".into(), "red-green-bot".into()));
    s.shared_data
        .source
        .query
        .push(("gameCode".into(), "RG5M".into()));
    let fleet = Fleet::start(s).await.unwrap();

    // A client that knows nothing of botfleet: plain GET, the seed's freshness check.
    poll_until_async(Duration::from_secs(10), || async {
        get_json(&redis, SHARED).is_some()
    })
    .await
    .expect("the fetcher wrote the shared key");
    let shared = get_json(&redis, SHARED).unwrap();
    let object = shared.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["game_data", "processed_data", "timestamp"]
    );
    let timestamp = shared["timestamp"].as_u64().unwrap();
    assert!(now_ms() - timestamp < 10_000, "fresh by the seed's check");
    assert_eq!(shared["game_data"], game(1));
    assert_eq!(
        shared["processed_data"],
        json!({"issue_number": 1, "colors": "GREEN   🟢", "result_format": "123",
               "game_type": "RG5M", "last_update": timestamp})
    );
    let ttl = redis.cmd(&["TTL", SHARED]).as_int().unwrap();
    assert!((1..=300).contains(&ttl), "ttl {ttl}");
    // Written beside the shared key, not with it on a Cluster (another slot).
    poll_until_async(Duration::from_secs(10), || async {
        get_json(&redis, LEGACY) == Some(game(1))
    })
    .await
    .expect("the fetcher wrote the legacy key");
    let head = source.last_head().unwrap();
    assert!(
        head.starts_with("GET /api/game?gameCode=RG5M HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("user-agent: red-green-bot"),
        "{head}"
    );

    // The four readers got the notice: read() answers from memory without a request.
    let data = fleet.shared_data();
    for name in ["EN", "VI", "JP", "ID"] {
        let reader = data.reader(name).unwrap();
        poll_until_async(Duration::from_secs(5), || async {
            reader.current().is_some()
        })
        .await
        .unwrap();
        let reading = reader.read().await.unwrap();
        assert_eq!(reading.origin, Origin::Memory);
        assert_eq!(reading.snapshot.timestamp, timestamp);
    }
    assert_eq!(source.requests(), 1);
    let metrics = serde_json::to_value(data.metrics()).unwrap();
    assert_eq!(metrics["fetcher"]["leader"], true);
    assert_eq!(metrics["fetcher"]["fetches"], 1);
    assert_eq!(metrics["readers"][0]["name"], "EN");
    assert_eq!(metrics["readers"][0]["hits"], 1);
    fleet.shutdown().await.unwrap();
}

/// `Reader::newer_than` wakes on the next round's notice and hands over that round, without
/// polling; a snapshot no newer than the one asked about never satisfies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_a_newer_snapshot_wakes_with_the_next_round() {
    let redis = TestRedis::start().unwrap();
    let source = game_server().await;
    let fleet = Fleet::start(settings(&redis.url(), &source.url("/api/game")))
        .await
        .unwrap();
    let reader = fleet.shared_data().reader("EN").unwrap();
    let within = Duration::from_secs(10);
    let first = tokio::time::timeout(within, reader.newer_than(0))
        .await
        .expect("a first snapshot");
    let next = tokio::time::timeout(within, reader.newer_than(first.timestamp))
        .await
        .expect("the next round");
    assert!(next.timestamp > first.timestamp);
    assert!(issue_of(&next.game_data) > issue_of(&first.game_data));
    // The copy itself never satisfies a wait for something newer than it.
    let current = reader.current().unwrap();
    fleet.shutdown().await.unwrap();
    let stalled = tokio::time::timeout(
        Duration::from_millis(300),
        reader.newer_than(current.timestamp),
    )
    .await;
    assert!(stalled.is_err(), "woke without a newer snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freshness_threshold_is_honoured_and_stale_data_triggers_a_direct_fetch() {
    let redis = TestRedis::start().unwrap();
    let source = game_server().await;
    let fleet = Fleet::start(reader_only(&redis.url(), &source.url("/game"), 3_000))
        .await
        .unwrap();
    let data = fleet.shared_data();
    let reader = data.add_reader("VI").await.unwrap();

    // 1 s old, threshold 3 s: served from Redis, then from memory; no request.
    let written = seed_write(&redis, 777, 1_000);
    let first = reader.read().await.unwrap();
    assert_eq!(first.origin, Origin::Redis);
    assert_eq!(first.snapshot.timestamp, written);
    assert_eq!(issue_of(&first.snapshot.game_data), 777);
    let second = reader.read().await.unwrap();
    assert_eq!(second.origin, Origin::Memory);
    assert_eq!(source.requests(), 0);

    // Once the copy is 3 s old (Redis holds the same one), the next read fetches directly.
    poll_until_async(Duration::from_secs(5), || async {
        now_ms() - written >= 3_000
    })
    .await
    .unwrap();
    let third = reader.read().await.unwrap();
    assert_eq!(third.origin, Origin::Direct);
    assert_eq!(issue_of(&third.snapshot.game_data), 1);
    assert_eq!(source.requests(), 1);
    // ... and shares what it fetched, in the seed's layout.
    let shared = get_json(&redis, SHARED).unwrap();
    assert_eq!(shared["timestamp"].as_u64(), Some(third.snapshot.timestamp));
    assert_eq!(reader.read().await.unwrap().origin, Origin::Memory);
    let m = reader.metrics();
    assert_eq!((m.hits, m.misses, m.direct_fetches), (2, 2, 1));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_stale_reads_in_two_processes_make_one_source_request() {
    let redis = TestRedis::start().unwrap();
    // A slow source, so that every read arrives while the fetch is under way.
    let source = HttpServer::start(|n| {
        HttpReply::json(game(100 + n).to_string()).after(Duration::from_millis(300))
    })
    .await;
    seed_write(&redis, 5, 60_000);
    let a = Fleet::start(reader_only(&redis.url(), &source.url("/game"), 10_000))
        .await
        .unwrap();
    let b = Fleet::start(reader_only(&redis.url(), &source.url("/game"), 10_000))
        .await
        .unwrap();
    let mut readers = Vec::new();
    for (fleet, names) in [(&a, ["EN", "VI"]), (&b, ["JP", "ID"])] {
        for name in names {
            readers.push(fleet.shared_data().add_reader(name).await.unwrap());
        }
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let reader = readers[i % readers.len()].clone();
        tasks.push(tokio::spawn(async move { reader.read().await }));
    }
    let mut timestamps = std::collections::BTreeSet::new();
    for task in tasks {
        let reading = task.await.unwrap().unwrap();
        assert_ne!(reading.origin, Origin::Stale, "{reading:?}");
        assert_eq!(issue_of(&reading.snapshot.game_data), 101);
        timestamps.insert(reading.snapshot.timestamp);
    }
    assert_eq!(source.requests(), 1);
    assert_eq!(timestamps.len(), 1, "everyone got the one fetch");
    let direct: u64 = [&a, &b]
        .iter()
        .flat_map(|f| f.shared_data().metrics().readers)
        .map(|r| r.direct_fetches)
        .sum();
    assert_eq!(direct, 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Child role: runs a fleet whose fetcher should lead; prints `leading FENCE` once it does,
/// then runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the leader-killed test"]
async fn child_fetcher() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (redis_url, source_url) = spec.split_once('|').unwrap();
    let fleet = Fleet::start(takeover_settings(redis_url, source_url))
        .await
        .unwrap();
    let data = fleet.shared_data();
    poll_until_async(Duration::from_secs(20), || async {
        data.metrics().fetcher.writes > 0
    })
    .await
    .expect("the child leads");
    println!("leading {}", data.metrics().fetcher.fence.unwrap());
    std::future::pending::<()>().await;
}

/// The leader lock's TTL of the takeover test: long enough that a busy machine (a Cluster's
/// six servers and two tests at once on 2 cores) does not stall the leader past it, so the
/// leadership moves only when the leader is killed.
fn takeover_settings(redis_url: &str, source_url: &str) -> Settings {
    let mut s = settings(redis_url, source_url);
    s.shared_data.leader_ttl_ms = 3_000;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_twice_the_lock_ttl_without_interleaved_writes() {
    let redis = TestRedis::start().unwrap();
    let source = game_server().await;
    let mut child = support::spawn_role(
        module_path!(),
        "child_fetcher",
        CHILD_ENV,
        &format!("{}|{}", redis.url(), source.url("/game")),
    );
    let child_fence: u64 = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.rsplit_once("leading ")
                .map(|(_, f)| f.trim().parse().unwrap())
        })
        .expect("the child leads");

    let s = takeover_settings(&redis.url(), &source.url("/game"));
    let ttl = Duration::from_millis(s.shared_data.leader_ttl_ms);
    let fleet = Fleet::start(s).await.unwrap();
    let data = fleet.shared_data();
    // Every write of either fetcher, in order, from the notices.
    let notices: Arc<Mutex<Vec<Notice>>> = Arc::default();
    let mut subscription = fleet.storage().subscribe(&data.settings().channel).await;
    let log = notices.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.recv().await {
            log.lock().push(serde_json::from_str(&message).unwrap());
        }
    });
    poll_until_async(Duration::from_secs(5), || async {
        notices.lock().len() >= 3
    })
    .await
    .expect("the child keeps writing");
    assert!(!data.metrics().fetcher.leader, "one fetcher per fleet");

    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    poll_until_async(2 * ttl, || async { data.metrics().fetcher.writes > 0 })
        .await
        .unwrap_or_else(|e| panic!("no takeover within 2x the ttl: {e:?}"));
    let took_over = killed.elapsed();
    poll_until_async(Duration::from_secs(5), || async {
        notices
            .lock()
            .iter()
            .filter(|n| n.writer == fleet.instance())
            .count()
            >= 3
    })
    .await
    .unwrap();

    let notices = notices.lock().clone();
    let first_ours = notices
        .iter()
        .position(|n| n.writer == fleet.instance())
        .unwrap();
    assert!(first_ours > 0);
    let (before, after) = notices.split_at(first_ours);
    assert!(before
        .iter()
        .all(|n| n.fence == child_fence as i64 && n.writer != fleet.instance()));
    let our_fence = data.metrics().fetcher.fence.unwrap() as i64;
    assert!(our_fence > child_fence as i64);
    assert!(
        after
            .iter()
            .all(|n| n.writer == fleet.instance() && n.fence == our_fence),
        "a write of the dead leader after the takeover: {after:?}"
    );
    for pair in notices.windows(2) {
        assert!(pair[0].snapshot.timestamp < pair[1].snapshot.timestamp);
    }
    let shared = get_json(&redis, SHARED).unwrap();
    assert_eq!(
        shared["timestamp"].as_u64(),
        Some(notices.last().unwrap().snapshot.timestamp)
    );
    eprintln!(
        "takeover after {} ms (ttl {} ms)",
        took_over.as_millis(),
        ttl.as_millis()
    );
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_overwrites_a_newer_snapshot() {
    let redis = TestRedis::start().unwrap();
    let source = game_server().await;
    let fleet = Fleet::start(reader_only(&redis.url(), &source.url("/game"), 10_000))
        .await
        .unwrap();
    let data: SharedData = fleet.shared_data();
    let newer = data.fetch_and_write(7).await.unwrap().expect("written");
    // The deposed leader (token 6) fetched later, but must not overwrite.
    assert!(data.fetch_and_write(6).await.unwrap().is_none());
    let shared = get_json(&redis, SHARED).unwrap();
    assert_eq!(shared["timestamp"].as_u64(), Some(newer.timestamp));
    assert_eq!(issue_of(&shared["game_data"]), 1);
    // The leader itself goes on; a direct fetch goes through when newer. (Snapshots are
    // stamped in milliseconds: each write waits for the clock to pass the last one.)
    let clock_after = |ms: u64| {
        support::poll_until(Duration::from_secs(1), || botfleet::clock::now_ms() > ms).unwrap();
    };
    clock_after(newer.timestamp);
    let last = data
        .fetch_and_write(7)
        .await
        .unwrap()
        .expect("the leader writes");
    clock_after(last.timestamp);
    let direct = data.fetch_and_write(-1).await.unwrap().expect("newer");
    assert_eq!(
        get_json(&redis, SHARED).unwrap()["timestamp"].as_u64(),
        Some(direct.timestamp)
    );
    assert_eq!(get_json(&redis, LEGACY), Some(direct.game_data.clone()));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_readers_keep_answering_with_the_age_and_the_newest_snapshot_returns() {
    let mut redis = RedisServer::start().unwrap();
    let source = game_server().await;
    let mut s = settings(&redis.url(), &source.url("/game"));
    s.storage.redis.timeout_ms = 300;
    s.shared_data.fresh_ms = 1_000;
    let fleet = Fleet::start(s).await.unwrap();
    let data = fleet.shared_data();
    let reader = data.reader("JP").unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        reader.current().is_some()
    })
    .await
    .unwrap();

    let before = issue_of(&reader.current().unwrap().game_data);
    redis.kill9();
    // The fetcher keeps fetching into the fallback; the notices reach the readers in process.
    let requests = source.requests();
    poll_until_async(Duration::from_secs(10), || async {
        source.requests() >= requests + 5
    })
    .await
    .expect("the fetcher keeps fetching");
    let reading = reader.read().await.unwrap();
    assert!(
        issue_of(&reading.snapshot.game_data) > before + 3,
        "{reading:?}"
    );
    assert!(reading.age_ms < 1_000, "{reading:?}");

    // Source down too: the last snapshot is served, with its growing age.
    // A fetch in flight when the source goes down may still land, so the age is
    // measured from whatever snapshot is newest once none has come for 1.5 s.
    source.down();
    poll_until_async(Duration::from_secs(10), || async {
        now_ms() - data.latest().unwrap().timestamp > 1_500
    })
    .await
    .unwrap();
    let last = data.latest().unwrap();
    let stale = reader.read().await.unwrap();
    assert_eq!(stale.origin, Origin::Stale);
    assert_eq!(stale.snapshot.timestamp, last.timestamp);
    assert!(stale.age_ms >= 1_500, "{}", stale.age_ms);
    assert!(reader.metrics().data_age_ms.unwrap() >= 1_500);

    // Redis back: the newest snapshot of the outage is what Redis holds.
    let newest = data.latest().unwrap();
    redis.restart().unwrap();
    poll_until_async(Duration::from_secs(15), || async {
        get_json(&redis, SHARED).and_then(|v| v["timestamp"].as_u64()) == Some(newest.timestamp)
    })
    .await
    .expect("the newest snapshot reached redis");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_source_down_the_fetcher_retries_with_backoff_and_the_last_good_snapshot_stays() {
    let redis = TestRedis::start().unwrap();
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let source = game_server().await;
    let mut s = settings(&redis.url(), &source.url("/game"));
    s.shared_data.source.attempts = 3;
    s.shared_data.fresh_ms = 1_000;
    s.shared_data.fetch_interval_ms = 500;
    let fleet = Fleet::start(s).await.unwrap();
    let data = fleet.shared_data();
    let reader = data.reader("ID").unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        reader.current().is_some()
    })
    .await
    .unwrap();
    let good = reader.current().unwrap();

    let log = arrivals.clone();
    source.set_handler(move |_| {
        log.lock().push(Instant::now());
        HttpReply::status(503)
    });
    poll_until_async(Duration::from_secs(10), || async {
        data.metrics().fetcher.failures >= 1
    })
    .await
    .expect("a fetch failed after its attempts");
    let metrics = data.metrics().fetcher;
    assert!(metrics.retries >= 2, "{metrics:?}");
    assert!(
        metrics.last_error.as_deref().unwrap().contains("503"),
        "{metrics:?}"
    );
    let times = arrivals.lock().clone();
    assert!(times.len() >= 3);
    // Backoff: 50 ms, then 100 ms between the attempts of one fetch.
    assert!(times[1] - times[0] >= Duration::from_millis(50));
    assert!(times[2] - times[1] >= Duration::from_millis(100));

    // The last good snapshot stays in Redis and in the readers, served stale once old.
    let shared = get_json(&redis, SHARED).unwrap();
    let kept = shared["timestamp"].as_u64().unwrap();
    assert!(kept >= good.timestamp);
    poll_until_async(Duration::from_secs(5), || async { now_ms() - kept > 1_000 })
        .await
        .unwrap();
    let reading = reader.read().await.unwrap();
    assert_eq!(reading.origin, Origin::Stale);
    assert_eq!(reading.snapshot.timestamp, kept);
    fleet.shutdown().await.unwrap();
}

/// The fetcher hands each snapshot it writes to the reader actors of its own process, in
/// process: their copies follow the writes without waiting for the channel's notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetcher_hands_each_snapshot_to_the_readers_of_its_process() {
    let redis = TestRedis::start().unwrap();
    let mut s = settings(&redis.url(), "http://127.0.0.1:9/unused");
    s.shared_data.readers = vec!["EN".into(), "VI".into()];
    let fleet = Fleet::start(s).await.unwrap();
    let issue = Arc::new(std::sync::atomic::AtomicU64::new(1));
    fleet.shared_data().register_source(move || {
        let n = issue.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move { Ok::<_, String>(game(n)) }
    });
    let shared = fleet.shared_data();
    let written = poll_until_async(Duration::from_secs(20), || {
        let writes = shared.metrics().fetcher.writes;
        async move { writes >= 5 }
    })
    .await;
    assert!(written.is_ok(), "{:?}", shared.metrics().fetcher);
    for name in ["EN", "VI"] {
        let reader = shared.reader(name).unwrap();
        let told = poll_until_async(Duration::from_secs(20), || {
            let n = reader.metrics().snapshots_in_process;
            async move { n >= 4 }
        })
        .await;
        assert!(told.is_ok(), "{name}: {:?}", reader.metrics());
        let reading = reader.read().await.unwrap();
        assert_eq!(
            reading.origin,
            botfleet::actors::shared_data::Origin::Memory
        );
    }
    fleet.shutdown().await.unwrap();
}
