//! Outages of a real redis-server under the storage handle: kill -9, SIGSTOP, restarts empty
//! and with data, start-up with Redis down, and misconfiguration.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::settings::{FallbackKind, StorageSettings};
use botfleet::storage::{KeySchema, Mode, Op, Served, Storage, StorageError, StorageEvent};
use parking_lot::Mutex;
use support::{poll_until_async, Acked, RedisServer, WriteLoad};

/// The bound the issue sets between an outage and the fallback serving a call.
const SWITCH_BOUND: Duration = Duration::from_millis(300);

fn settings(url: &str, dir: &std::path::Path) -> StorageSettings {
    let mut st = StorageSettings::default();
    st.redis.url = url.to_string();
    st.file.dir = dir.join("store").to_string_lossy().into_owned();
    st
}

async fn wait_mode(storage: &Storage, mode: Mode, within: Duration) -> Duration {
    let s = storage.clone();
    poll_until_async(within, move || {
        let s = s.clone();
        async move { s.mode() == mode }
    })
    .await
    .unwrap_or_else(|e| panic!("mode {mode} not reached: {e:?}; now {}", storage.mode()))
}

fn missing_in_redis(server: &RedisServer, written: &[Acked]) -> usize {
    written
        .iter()
        .filter(|w| server.cmd(&["GET", &w.key]).as_str() != Some(w.value.as_str()))
        .count()
}

/// kill -9 under a write load, then a restart (the server persists with `appendfsync always`,
/// so what it acknowledged before the kill survives it): every call is answered within the
/// bound, no caller sees an error, and every acknowledged write is in Redis afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_nothing_and_switches_within_bound() {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&settings(&server.url(), dir.path()), &KeySchema::default())
        .await
        .unwrap();
    assert_eq!(storage.mode(), Mode::Redis);
    let mut events = storage.events();

    let load = WriteLoad::start(&storage, 8, "load", None, None);
    load.wait_acked(500).await;
    let killed = Instant::now();
    server.kill9();
    let switch = wait_mode(&storage, Mode::Degraded, Duration::from_secs(2)).await;
    load.wait_acked(500).await;
    println!(
        "kill9: degraded {:?} after the kill",
        killed.elapsed().min(switch)
    );

    server.restart().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    load.wait_acked(500).await;
    let (written, errors, slowest) = load.finish().await;
    println!("kill9: {} writes, slowest call {slowest:?}", written.len());
    assert_eq!(errors, 0, "no caller sees the outage");
    assert!(
        slowest <= SWITCH_BOUND,
        "slowest call {slowest:?} exceeds {SWITCH_BOUND:?}"
    );
    assert_eq!(
        missing_in_redis(&server, &written),
        0,
        "acknowledged writes lost"
    );

    let mut modes = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let StorageEvent::ModeChanged { to, .. } = event {
            modes.push(to);
        }
    }
    assert_eq!(
        modes.first(),
        Some(&Mode::Degraded),
        "typed mode events: {modes:?}"
    );
    assert_eq!(
        modes.last(),
        Some(&Mode::Redis),
        "typed mode events: {modes:?}"
    );
    assert!(
        modes.contains(&Mode::Resyncing),
        "typed mode events: {modes:?}"
    );
    assert!(storage.stats().mode_changes >= 3, "{:?}", storage.stats());
}

/// SIGSTOP (a frozen server: no error, only silence) then SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_an_outage_within_bound() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&settings(&server.url(), dir.path()), &KeySchema::default())
        .await
        .unwrap();
    let load = WriteLoad::start(&storage, 8, "load", None, None);
    load.wait_acked(500).await;
    server.freeze();
    wait_mode(&storage, Mode::Degraded, Duration::from_secs(2)).await;
    load.wait_acked(500).await;
    server.thaw();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    load.wait_acked(200).await;
    let (written, errors, slowest) = load.finish().await;
    println!(
        "sigstop: {} writes, slowest call {slowest:?}",
        written.len()
    );
    assert_eq!(errors, 0);
    assert!(
        slowest <= SWITCH_BOUND,
        "slowest call {slowest:?} exceeds {SWITCH_BOUND:?}"
    );
    assert_eq!(missing_in_redis(&server, &written), 0);
}

/// Expiry is absolute: a key whose TTL ran out during the outage is not resurrected, and a
/// live one keeps the TTL it had left, not a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_absolute_expiry() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&settings(&server.url(), dir.path()), &KeySchema::default())
        .await
        .unwrap();
    server.kill9();
    storage
        .set("short", "x", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    storage
        .set("long", "y", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    storage.hset("h", &[("f", "1")]).await.unwrap();
    storage
        .expire("h", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(storage.mode(), Mode::Degraded);
    let written = Instant::now();
    let s = storage.clone();
    poll_until_async(Duration::from_secs(2), move || {
        let s = s.clone();
        async move { s.get("short").await.unwrap().is_none() }
    })
    .await
    .unwrap();
    server.restart_empty().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    assert!(
        server.cmd(&["EXISTS", "short"]).as_int() == Some(0),
        "expired key resurrected"
    );
    assert!(
        server.cmd(&["EXISTS", "h"]).as_int() == Some(0),
        "expired hash resurrected"
    );
    let pttl = server.cmd(&["PTTL", "long"]).as_int().unwrap();
    let left = 60_000 - written.elapsed().as_millis() as i64;
    assert!(
        pttl > 0 && pttl <= left + 50,
        "pttl {pttl} should be at most {left}"
    );
}

/// A value written meanwhile by another process with a newer version is not overwritten by
/// replay (the shared snapshot key is declared versioned by default); unversioned keys are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_does_not_overwrite_newer_versions() {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&settings(&server.url(), dir.path()), &KeySchema::default())
        .await
        .unwrap();
    let newer = r#"{"timestamp":200,"game_data":{},"processed_data":{}}"#;
    server.cmd(&["SET", "fivem_red_green_shared_data", newer]);
    server.cmd(&["SET", "plain", "theirs"]);
    server.kill9();
    let older = r#"{"timestamp":100,"game_data":{},"processed_data":{}}"#;
    storage
        .set("fivem_red_green_shared_data", older, None)
        .await
        .unwrap();
    storage.set("plain", "ours", None).await.unwrap();
    server.restart().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    assert_eq!(
        server.cmd(&["GET", "fivem_red_green_shared_data"]).as_str(),
        Some(newer)
    );
    assert_eq!(server.cmd(&["GET", "plain"]).as_str(), Some("ours"));
}

/// Replay twice (a crash after replay, before the outbox was acknowledged): non-idempotent
/// writes are applied once. The second replay comes from a copy of the file store taken while
/// degraded, which holds the same outbox id and entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_idempotent() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = file_store_then_kill(&mut server, dir.path()).await;
    for i in 0..300 {
        storage.incr_by("counter", 1).await.unwrap();
        storage.rpush("list", &[&i.to_string()]).await.unwrap();
        storage.hincr_by("{bot}:h", "n", 2).await.unwrap();
    }
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("store"), &copy.path().join("store"));
    server.restart_empty().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    storage.close().await;
    drop(storage);
    let check = |server: &RedisServer| {
        assert_eq!(server.cmd(&["GET", "counter"]).as_str(), Some("300"));
        assert_eq!(server.cmd(&["LLEN", "list"]).as_int(), Some(300));
        assert_eq!(server.cmd(&["HGET", "{bot}:h", "n"]).as_str(), Some("600"));
    };
    check(&server);

    let mut again = settings(&server.url(), copy.path());
    again.fallback = FallbackKind::File;
    let second = Storage::open(&again, &KeySchema::default()).await.unwrap();
    assert_eq!(
        second.stats().outbox_len,
        900,
        "the copy still holds the outbox"
    );
    wait_mode(&second, Mode::Redis, Duration::from_secs(10)).await;
    assert_eq!(second.stats().outbox_len, 0);
    check(&server);
}

/// A storage handle with the file fallback (journaled before every answer) in `dir`, opened
/// on `server`, which is then killed: every write from here on waits in the outbox.
async fn file_store_then_kill(server: &mut RedisServer, dir: &std::path::Path) -> Storage {
    let mut st = settings(&server.url(), dir);
    st.fallback = FallbackKind::File;
    st.file.fsync_interval_ms = 0;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    server.kill9();
    storage
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Start-up with Redis unreachable is degraded at once; it connects when Redis comes up and
/// replays what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_when_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill9();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let storage = Storage::open(&settings(&url, dir.path()), &KeySchema::default())
        .await
        .unwrap();
    let took = started.elapsed();
    println!("open with redis down took {took:?}");
    assert!(took < Duration::from_secs(2), "open took {took:?}");
    assert_eq!(storage.mode(), Mode::Degraded);
    storage.set("early", "1", None).await.unwrap();
    storage.sadd("members", &["a", "b"]).await.unwrap();
    server.restart_empty().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    assert_eq!(server.cmd(&["GET", "early"]).as_str(), Some("1"));
    assert_eq!(server.cmd(&["SCARD", "members"]).as_int(), Some(2));
    assert_eq!(storage.get("early").await.unwrap().as_deref(), Some("1"));
}

/// A misconfiguration is not an outage: start-up fails, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_fails_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let err = Storage::open(&settings("nonsense://x", dir.path()), &KeySchema::default())
        .await
        .unwrap_err();
    assert_config_error(&err, "storage.redis.url");

    // TLS asked of a plaintext server: the handshake stalls, which must not pass for an
    // outage.
    let plain = RedisServer::start().unwrap();
    let tls_url = plain.url().replace("redis://", "rediss://");
    let err = Storage::open(&settings(&tls_url, dir.path()), &KeySchema::default())
        .await
        .unwrap_err();
    assert_config_error(&err, "storage.redis.url");
    assert!(err.to_string().contains("TLS"), "{err}");

    let server = RedisServer::builder()
        .config("requirepass right-secret")
        .start()
        .unwrap();
    let mut st = settings(&server.url(), dir.path());
    st.redis.password = "wrong-secret".into();
    let err = Storage::open(&st, &KeySchema::default()).await.unwrap_err();
    assert_config_error(&err, "storage.redis.password");
    assert!(
        !err.to_string().contains("wrong-secret"),
        "the secret leaks: {err}"
    );

    st.redis.password = "right-secret".into();
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    assert_eq!(storage.mode(), Mode::Redis);
}

/// Bounds: past `storage.memory.max_bytes` or `storage.outbox.max_entries` a write is refused
/// with a clear error and counted; nothing already accepted is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_refuse_writes_with_a_clear_error() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(&server.url(), dir.path());
    st.outbox.max_entries = 100;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    server.kill9();
    for i in 0..100 {
        storage.set(&format!("k{i}"), "v", None).await.unwrap();
    }
    let err = storage.set("one-more", "v", None).await.unwrap_err();
    assert!(
        matches!(err, StorageError::OutboxFull { max_entries: 100 }),
        "{err}"
    );
    assert!(err.to_string().contains("storage.outbox.max_entries"));
    assert_eq!(storage.stats().refused_writes, 1);
    server.restart_empty().unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(String::as_str));
    assert_eq!(server.cmd(&exists).as_int(), Some(100));

    let mut st = StorageSettings::default();
    st.redis.enabled = false;
    st.memory.max_bytes = 10_000;
    let small = Storage::open(&st, &KeySchema::default()).await.unwrap();
    let mut refused = None;
    for i in 0..1_000 {
        if let Err(e) = small.set(&format!("k{i}"), "x".repeat(100), None).await {
            refused = Some((i, e));
            break;
        }
    }
    let (at, err) = refused.expect("the memory bound refuses writes");
    assert!(
        matches!(err, StorageError::MemoryFull { max_bytes: 10_000 }),
        "{err}"
    );
    assert!(at > 10, "refused too early, at {at}");
    assert_eq!(
        small.get("k0").await.unwrap().as_deref(),
        Some(&*"x".repeat(100))
    );
}

/// Pub/sub across processes through Redis, and in-process while degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_works_connected_and_degraded() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&settings(&server.url(), dir.path()), &KeySchema::default())
        .await
        .unwrap();
    let mut sub = storage.subscribe("news").await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.recv().await {
            r.lock().push(m);
        }
    });
    // From another client, with plain commands.
    let server_ref = &server;
    let got = received.clone();
    poll_until_async(Duration::from_secs(5), move || {
        server_ref.cmd(&["PUBLISH", "news", "from-outside"]);
        let got = got.clone();
        async move { got.lock().iter().any(|m| m == "from-outside") }
    })
    .await
    .unwrap();
    server.kill9();
    storage.publish("news", "while-down").await.unwrap();
    assert_eq!(storage.mode(), Mode::Degraded);
    let got = received.clone();
    poll_until_async(Duration::from_secs(2), move || {
        let got = got.clone();
        async move { got.lock().iter().any(|m| m == "while-down") }
    })
    .await
    .unwrap();
}

/// `err` is a misconfiguration naming `key`.
fn assert_config_error(err: &StorageError, key: &str) {
    assert!(
        matches!(err, StorageError::Config { key: k, .. } if *k == key),
        "expected a configuration error naming {key}, got: {err}"
    );
}

/// Sets KEYS[1] to ARGV[1] and appends ARGV[1] to the log KEYS[2]: the log counts the runs.
const SET_AND_LOG: &str = "redis.call('SET', KEYS[1], ARGV[1]) \
    redis.call('RPUSH', KEYS[2], ARGV[1]) return 1";

fn set_and_log_local(
    ks: &mut botfleet::storage::Keyspace,
    now_ms: u64,
    keys: &[String],
    args: &[String],
) -> Result<botfleet::storage::Reply, botfleet::storage::LocalError> {
    use botfleet::storage::Expiry;
    ks.apply(
        &Op::Set {
            key: keys[0].clone(),
            value: args[0].clone(),
            expiry: Expiry::Never,
            only_if_absent: false,
        },
        now_ms,
    )?;
    ks.apply(
        &Op::RPush {
            key: keys[1].clone(),
            values: vec![args[0].clone()],
        },
        now_ms,
    )?;
    Ok(botfleet::storage::Reply::Int(1))
}

/// Writes whose newest one makes the others obsolete (`set_latest`, `eval_latest`) are
/// replayed once, with the newest value, also from a file store reopened after a crash;
/// ordinary writes beside them are all replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_writes_are_replayed_once_with_the_newest_value() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = file_store_then_kill(&mut server, dir.path()).await;
    let script = botfleet::storage::Script::new("set-and-log", SET_AND_LOG, set_and_log_local);
    for i in 0..50 {
        let v = format!("snapshot-{i}");
        storage
            .set_latest("legacy", v.clone(), Some(Duration::from_secs(600)))
            .await
            .unwrap();
        storage
            .eval_latest(&script, &["shared", "shared-log"], &[&v])
            .await
            .unwrap();
        storage.rpush("plain", &[&v]).await.unwrap();
        // The same script on other keys is another stream of writes.
        if i % 10 == 0 {
            storage
                .eval_latest(&script, &["other", "other-log"], &[&v])
                .await
                .unwrap();
        }
    }
    assert_eq!(
        storage.stats().outbox_len,
        53,
        "one entry per tag and key set, every plain write"
    );
    // The fallback answered every call with its newest state meanwhile.
    assert_eq!(
        storage.get("legacy").await.unwrap().as_deref(),
        Some("snapshot-49")
    );
    assert_eq!(storage.llen("shared-log").await.unwrap(), 50);

    // A crash now: a second process reopens the file store and replays it.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("store"), &copy.path().join("store"));
    storage.close().await;
    drop(storage);
    server.restart_empty().unwrap();
    let mut again = settings(&server.url(), copy.path());
    again.fallback = FallbackKind::File;
    let second = Storage::open(&again, &KeySchema::default()).await.unwrap();
    wait_mode(&second, Mode::Redis, Duration::from_secs(10)).await;
    assert_eq!(server.cmd(&["GET", "legacy"]).as_str(), Some("snapshot-49"));
    assert_eq!(server.cmd(&["GET", "shared"]).as_str(), Some("snapshot-49"));
    assert_eq!(
        server.cmd(&["LLEN", "shared-log"]).as_int(),
        Some(1),
        "the script ran once on Redis"
    );
    assert_eq!(server.cmd(&["GET", "other"]).as_str(), Some("snapshot-40"));
    assert_eq!(server.cmd(&["LLEN", "other-log"]).as_int(), Some(1));
    assert_eq!(server.cmd(&["LLEN", "plain"]).as_int(), Some(50));
    let ttl = server.cmd(&["PTTL", "legacy"]).as_int().unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "the expiry is kept: {ttl}");
}

/// A script call that fails on Redis mid-call (the server froze) runs on the fallback
/// followed by its withheld writes, which are journaled but never replayed: the fallback and
/// a store reopened after a crash keep them, Redis never sees them. A call the fallback takes
/// at once (the outage known) runs without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_withheld_after_a_call_failed_mid_call_stay_on_the_fallback() {
    let mut server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(&server.url(), dir.path());
    st.fallback = FallbackKind::File;
    st.file.fsync_interval_ms = 0;
    st.redis.timeout_ms = 300;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    wait_mode(&storage, Mode::Redis, Duration::from_secs(10)).await;
    let script = botfleet::storage::Script::new("set-and-log", SET_AND_LOG, set_and_log_local);
    let withhold = |key: &'static str| {
        move || {
            vec![Op::Del {
                keys: vec![key.to_string()],
            }]
        }
    };
    server.freeze();
    let (reply, served) = storage
        .eval_withholding(&script, &["job", "job-log"], &["v1"], &withhold("job"))
        .await
        .unwrap();
    assert_eq!((reply.as_int(), served), (1, Served::FallbackAfterFailure));
    assert_eq!(storage.mode(), Mode::Degraded);
    let (_, served) = storage
        .eval_withholding(
            &script,
            &["other", "other-log"],
            &["v2"],
            &withhold("other"),
        )
        .await
        .unwrap();
    assert_eq!(served, Served::Fallback);
    // The script ran on the fallback both times; only the first call's withheld write did.
    assert_eq!(storage.get("job").await.unwrap(), None);
    assert_eq!(storage.llen("job-log").await.unwrap(), 1);
    assert_eq!(storage.get("other").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(
        storage.stats().outbox_len,
        2,
        "the calls, not the withheld write"
    );

    // A crash, with Redis still down: the reopened store knows what was withheld.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("store"), &copy.path().join("store"));
    storage.close().await;
    drop(storage);
    server.kill9();
    let mut again = settings(&server.url(), copy.path());
    again.fallback = FallbackKind::File;
    let second = Storage::open(&again, &KeySchema::default()).await.unwrap();
    assert_eq!(second.mode(), Mode::Degraded);
    assert_eq!(second.get("job").await.unwrap(), None);
    assert_eq!(second.llen("job-log").await.unwrap(), 1);

    // Redis back, empty: the replay runs both calls, and nothing withheld.
    server.restart_empty().unwrap();
    wait_mode(&second, Mode::Redis, Duration::from_secs(10)).await;
    assert_eq!(server.cmd(&["GET", "job"]).as_str(), Some("v1"));
    assert_eq!(server.cmd(&["LLEN", "job-log"]).as_int(), Some(1));
    assert_eq!(server.cmd(&["GET", "other"]).as_str(), Some("v2"));
    assert_eq!(second.get("job").await.unwrap().as_deref(), Some("v1"));
}
