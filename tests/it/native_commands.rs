//! Native commands in place of scripts: the server named at every connection, the choice per
//! script, and the native and the script form of each compared on one Valkey, call for call
//! and key for key (`storage.redis.native_commands = false` forces the scripts). Also
//! `storage.redis.wait_aof`: refused where the server cannot honour it, honoured where it can.
//!
//! Valkey 9.1 has every native command botfleet uses; `redis-server` 7.0 none of them, so
//! there every script runs. These tests start their own servers (a Valkey and a Redis, and
//! restart one as the other), so they are not switched by `BOTFLEET_TEST_REDIS`.

use std::collections::BTreeMap;
use std::time::Duration;

use botfleet::actors::locks::Locks;
use botfleet::settings::{LockSettings, StorageSettings};
use botfleet::storage::{KeySchema, Mode, ServerKind, Storage, StorageError};

use crate::support::redis::valkey_binary;
use crate::support::{poll_until_async, RedisServer, RespValue};

const WAIT: Duration = Duration::from_secs(10);

fn settings(url: &str, native: bool) -> StorageSettings {
    let mut st = StorageSettings::default();
    st.redis.url = url.to_string();
    st.redis.timeout_ms = 2_000;
    st.redis.native_commands = native;
    st.last_known.enabled = false;
    st
}

async fn open(url: &str, native: bool) -> Storage {
    let storage = Storage::open(&settings(url, native), &KeySchema::default())
        .await
        .unwrap();
    assert_eq!(storage.mode(), Mode::Redis);
    storage
}

/// `INFO commandstats` calls per command (`cmdstat_NAME` lower case).
fn calls(server: &RedisServer) -> BTreeMap<String, u64> {
    let RespValue::Bulk(text) = server.cmd(&["INFO", "commandstats"]) else {
        panic!("INFO commandstats answered no text");
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// What a key holds, as a test compares it: type, value (strings), expiry (none, or some).
fn key_state(server: &RedisServer, key: &str) -> String {
    let kind = format!("{:?}", server.cmd(&["TYPE", key]));
    let value = match server.cmd(&["TYPE", key]) {
        RespValue::Simple(t) if t == "string" => format!("{:?}", server.cmd(&["GET", key])),
        _ => String::new(),
    };
    let ttl = match server.cmd(&["PTTL", key]) {
        RespValue::Integer(ms) if ms > 0 => "expires".to_string(),
        other => format!("{other:?}"),
    };
    format!("{kind} {value} {ttl}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_is_named_and_its_native_commands_chosen() {
    let valkey = RedisServer::start_valkey().unwrap();
    let storage = open(&valkey.url(), true).await;
    let server = storage.stats().server.expect("the server was asked");
    assert_eq!(server.name, ServerKind::Valkey);
    assert!(server.version.starts_with("9."), "{server:?}");
    assert!(server.native_commands && server.waitaof);
    let c = server.commands;
    assert_eq!(
        (c.compare_and_set, c.set_many, c.lock_extend, c.lock_release),
        ("SET IFEQ", "MSETEX", "SET IFEQ", "DELIFEQ")
    );
    // /status shows it under storage.server.
    let json = serde_json::to_value(storage.stats()).unwrap();
    assert_eq!(json["server"]["commands"]["lock_release"], "DELIFEQ");
    assert_eq!(json["server"]["name"], "valkey");
    storage.close().await;

    // Switched off: every script, on the same server.
    let scripts = open(&valkey.url(), false).await;
    let server = scripts.stats().server.unwrap();
    assert!(!server.native_commands);
    let c = server.commands;
    assert_eq!(
        [c.compare_and_set, c.set_many, c.lock_extend, c.lock_release],
        ["script"; 4]
    );
    scripts.close().await;

    // Redis 7.0 has none of them.
    let redis = RedisServer::start().unwrap();
    let storage = open(&redis.url(), true).await;
    let server = storage.stats().server.unwrap();
    assert_eq!(server.name, ServerKind::Redis);
    assert!(
        server.version.starts_with("7.") && !server.version.starts_with("7.2"),
        "{server:?}"
    );
    let c = server.commands;
    assert_eq!(
        [c.compare_and_set, c.set_many, c.lock_extend, c.lock_release],
        ["script"; 4]
    );
    assert!(!server.waitaof);
    storage.close().await;
}

/// The compare-and-set and set-many calls of one run, with the state they leave, under
/// `prefix`.
async fn records_run(storage: &Storage, server: &RedisServer, prefix: &str) -> Vec<String> {
    let k = |name: &str| format!("{prefix}:{name}");
    let mut out = Vec::new();
    let mut note = |what: &str, reply: Result<bool, StorageError>| {
        out.push(format!("{what}: {reply:?}"));
    };
    let hour = Some(Duration::from_secs(3_600));
    // Absent: only the "must be absent" form writes; IFEQ never creates the key.
    note(
        "cas missing, expected a value",
        storage
            .compare_and_set(&k("a"), Some("x"), "new", None)
            .await,
    );
    note(
        "cas missing, expected absent",
        storage.compare_and_set(&k("a"), None, "v1", hour).await,
    );
    note(
        "cas present, expected absent",
        storage.compare_and_set(&k("a"), None, "v2", None).await,
    );
    note(
        "cas stale",
        storage
            .compare_and_set(&k("a"), Some("old"), "v2", None)
            .await,
    );
    note(
        "cas current, no ttl (clears the expiry)",
        storage
            .compare_and_set(&k("a"), Some("v1"), "v2", None)
            .await,
    );
    note(
        "cas current, with ttl",
        storage.compare_and_set(&k("b"), None, "b1", None).await,
    );
    note(
        "cas current, with ttl",
        storage
            .compare_and_set(&k("b"), Some("b1"), "b2", hour)
            .await,
    );
    note(
        "cas empty expected",
        storage.compare_and_set(&k("e"), None, "", None).await,
    );
    note(
        "cas empty expected",
        storage
            .compare_and_set(&k("e"), Some(""), "filled", None)
            .await,
    );
    storage.rpush(&k("list"), &["x"]).await.unwrap();
    let wrong = storage
        .compare_and_set(&k("list"), Some("x"), "y", None)
        .await;
    out.push(format!(
        "cas on a list: {}",
        match wrong {
            Err(StorageError::Command(m)) => m.split_whitespace().next().unwrap_or("").to_string(),
            other => format!("{other:?}"),
        }
    ));
    // set_many: with and without a TTL, over a key of another type and one with an expiry.
    storage.rpush(&k("m1"), &["old"]).await.unwrap();
    storage
        .set(&k("m2"), "old", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let pairs = |names: &[&str], v: &str| {
        names
            .iter()
            .map(|n| (k(n), format!("{v}-{n}")))
            .collect::<Vec<_>>()
    };
    storage
        .set_many(pairs(&["m0", "m1"], "ttl"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    storage
        .set_many(pairs(&["m2", "m3"], "none"), None)
        .await
        .unwrap();
    for name in ["a", "b", "e", "list", "m0", "m1", "m2", "m3"] {
        out.push(format!("{name}: {}", key_state(server, &k(name))));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_native_and_scripted_answer_and_change_alike() {
    let valkey = RedisServer::start_valkey().unwrap();
    let native = open(&valkey.url(), true).await;
    let scripted = open(&valkey.url(), false).await;

    let before = calls(&valkey);
    let with_scripts = records_run(&scripted, &valkey, "{s}").await;
    let mid = calls(&valkey);
    let with_native = records_run(&native, &valkey, "{n}").await;
    let after = calls(&valkey);
    assert_eq!(with_native, with_scripts);
    // Each ran in the form it was asked to: the scripts as EVALSHA, the natives without it.
    assert_eq!(delta(&before, &mid, "msetex"), 0);
    assert!(delta(&before, &mid, "evalsha") >= 11, "{mid:?}");
    assert_eq!(delta(&mid, &after, "evalsha"), 0, "{after:?}");
    assert_eq!(delta(&mid, &after, "msetex"), 2);
    assert!(delta(&mid, &after, "set") >= 10);
    // The fallback answers the same, as its twin of the scripts.
    native.close().await;
    scripted.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_native_and_scripted_extend_and_release_alike() {
    let valkey = RedisServer::start_valkey().unwrap();
    let mut seen = Vec::new();
    for native in [false, true] {
        let storage = open(&valkey.url(), native).await;
        let locks = Locks::new(storage.clone(), LockSettings::default());
        let keys = storage.keys().clone();
        let name = format!("native-lock:{native}");
        let before = calls(&valkey);

        // Extended by the watchdog past its TTL, then released. An extension is a `SET
        // IFEQ` natively, the script's `GET` + `PEXPIRE` otherwise (the acquisition's own two
        // `SET`s run inside its script, and count as `SET` calls too).
        let ttl = Duration::from_millis(300);
        let guard = locks.try_acquire(&name, ttl).await.unwrap().unwrap();
        let extensions = |c: &BTreeMap<String, u64>| {
            if native {
                delta(&before, c, "set").saturating_sub(2)
            } else {
                delta(&before, c, "pexpire")
            }
        };
        let extended = poll_until_async(WAIT, || {
            let n = extensions(&calls(&valkey));
            async move { n >= 4 }
        })
        .await;
        assert!(extended.is_ok(), "native={native}: {:?}", calls(&valkey));
        // Four extensions a third of the TTL apart: past the TTL, and still held.
        assert!(
            !guard.is_lost(),
            "native={native}: the watchdog did not keep it"
        );
        assert!(matches!(valkey.cmd(&["PTTL", &name]), RespValue::Integer(ms) if ms > 0));
        // No waiter: nothing is published. A marker published after the release is the
        // first message the channel carries.
        let channel = locks.settings().release_channel.clone();
        let mut sub = storage.subscribe(&channel).await;
        assert!(guard.release().await.unwrap());
        assert_eq!(valkey.cmd(&["EXISTS", &name]), RespValue::Integer(0));
        storage.publish(&channel, "marker").await.unwrap();
        let first = tokio::time::timeout(WAIT, sub.recv()).await.unwrap();
        assert_eq!(first.as_deref(), Some("marker"), "native={native}");

        // A lock that is no longer ours: neither extended nor released.
        let guard = locks.try_acquire(&name, ttl).await.unwrap().unwrap();
        valkey.cmd(&["SET", &name, "someone-else", "PX", "60000"]);
        let lost = poll_until_async(WAIT, || {
            let lost = guard.is_lost();
            async move { lost }
        })
        .await;
        assert!(
            lost.is_ok(),
            "native={native}: a stolen lock must be reported lost"
        );
        assert!(!guard.release().await.unwrap());
        assert_eq!(valkey.cmd(&["GET", &name]), RespValue::bulk("someone-else"));
        valkey.cmd(&["DEL", &name]);

        // A waiter elsewhere marked the name: the release deletes the mark and announces.
        let holder = locks
            .try_acquire(&name, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let other = Locks::new(storage.clone(), LockSettings::default());
        let waiter = {
            let (other, name) = (other.clone(), name.clone());
            tokio::spawn(async move {
                other
                    .acquire(&name, Duration::from_secs(10), Duration::from_secs(20))
                    .await
            })
        };
        let mark = keys.lock_waiting(&name);
        let marked = poll_until_async(WAIT, || {
            let found = valkey.cmd(&["EXISTS", &mark]) == RespValue::Integer(1);
            async move { found }
        })
        .await;
        assert!(marked.is_ok(), "the waiter did not mark the name");
        assert!(holder.release().await.unwrap());
        let notice = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(notice.ends_with(&format!("\n{name}")), "{notice:?}");
        let got = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(got.release().await.unwrap());

        let after = calls(&valkey);
        seen.push((
            native,
            delta(&before, &after, "delifeq"),
            delta(&before, &after, "exec"),
            delta(&before, &after, "pexpire"),
        ));
        storage.close().await;
    }
    // The forced scripts never ran DELIFEQ, and extended with PEXPIRE; the native run
    // released with DELIFEQ (four releases: three of ours, one of the waiter's), with no
    // transaction, and never ran PEXPIRE.
    let (scripted, native) = (seen[0], seen[1]);
    assert_eq!((scripted.1, scripted.2), (0, 0), "{seen:?}");
    assert!(scripted.3 >= 4, "{seen:?}");
    assert_eq!((native.1, native.2, native.3), (4, 0, 0), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_swapped_behind_the_address_is_asked_again() {
    let mut server = RedisServer::start().unwrap();
    let mut st = settings(&server.url(), true);
    st.redis.timeout_ms = 1_000;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    assert_eq!(
        storage.stats().server.unwrap().commands.compare_and_set,
        "script"
    );

    // An upgrade: the same address now answers as Valkey.
    server.restart_as(valkey_binary()).unwrap();
    let asked = poll_until_async(WAIT, || {
        let storage = storage.clone();
        async move {
            storage.mode() == Mode::Redis
                && storage
                    .stats()
                    .server
                    .is_some_and(|s| s.name == ServerKind::Valkey)
        }
    })
    .await;
    assert!(asked.is_ok(), "{:?}", storage.stats());
    assert!(storage
        .compare_and_set("swap:k", None, "v1", None)
        .await
        .unwrap());
    assert!(storage
        .compare_and_set("swap:k", Some("v1"), "v2", None)
        .await
        .unwrap());

    // A downgrade: back to Redis 7.0. A call sent before the server is asked again meets a
    // command it does not know, and runs as the script: every call answers right.
    server
        .restart_as(std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into()))
        .unwrap();
    // At once, whatever the storage knows yet: on the fallback (replayed as the script), or on
    // Redis as the native command it refuses, then as the script.
    for i in 0..3 {
        let key = format!("swap:early:{i}");
        assert!(storage
            .compare_and_set(&key, None, "a", None)
            .await
            .unwrap());
        assert!(storage
            .compare_and_set(&key, Some("a"), "b", None)
            .await
            .unwrap());
    }
    let mut written = 0;
    let back = poll_until_async(WAIT, || {
        let storage = storage.clone();
        async move {
            storage.mode() == Mode::Redis
                && storage
                    .stats()
                    .server
                    .is_some_and(|s| s.name == ServerKind::Redis)
        }
    })
    .await;
    assert!(back.is_ok(), "{:?}", storage.stats());
    for i in 0..3 {
        let key = format!("swap:after:{i}");
        if storage
            .compare_and_set(&key, None, "a", None)
            .await
            .unwrap()
            && storage
                .compare_and_set(&key, Some("a"), "b", None)
                .await
                .unwrap()
        {
            written += 1;
        }
    }
    assert_eq!(written, 3);
    let replayed = poll_until_async(WAIT, || {
        let storage = storage.clone();
        async move { storage.stats().outbox_len == 0 && storage.mode() == Mode::Redis }
    })
    .await;
    assert!(replayed.is_ok());
    for i in 0..3 {
        let key = format!("swap:early:{i}");
        assert_eq!(server.cmd(&["GET", &key]), RespValue::bulk("b"));
    }
    storage
        .set_many(
            vec![("swap:m".into(), "x".into())],
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(storage.get("swap:m").await.unwrap().as_deref(), Some("x"));
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_aof_is_refused_where_the_server_cannot_honour_it() {
    // Redis 7.0 has no WAITAOF.
    let redis = RedisServer::builder().persistence(true).start().unwrap();
    let mut st = settings(&redis.url(), true);
    st.redis.wait_aof = true;
    let err = Storage::open(&st, &KeySchema::default()).await.unwrap_err();
    match &err {
        StorageError::Config { key, message } => {
            assert_eq!(*key, "storage.redis.wait_aof");
            assert!(message.contains("has no WAITAOF"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // Valkey has it, but not without an append-only file.
    let valkey = RedisServer::start_valkey().unwrap();
    st.redis.url = valkey.url();
    let err = Storage::open(&st, &KeySchema::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("storage.redis.wait_aof: valkey 9.1.2 runs without an append-only file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_aof_acknowledges_what_the_master_wrote_to_its_file() {
    let valkey = RedisServer::builder()
        .valkey()
        .persistence(true)
        .start()
        .unwrap();
    let mut st = settings(&valkey.url(), true);
    st.redis.wait_aof = true;
    st.redis.wait_timeout_ms = 500;
    st.redis.ping_interval_ms = 50;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    let before = calls(&valkey);
    storage.set("aof:k", "v", None).await.unwrap();
    assert!(storage
        .compare_and_set("aof:c", None, "1", None)
        .await
        .unwrap());
    storage
        .set_many(vec![("aof:m".into(), "x".into())], None)
        .await
        .unwrap();
    let after = calls(&valkey);
    assert_eq!(delta(&before, &after, "waitaof"), 3, "{after:?}");
    assert_eq!(delta(&before, &after, "wait"), 0);
    let stats = storage.stats();
    assert_eq!((stats.unsynced_writes, stats.unreplicated_writes), (0, 0));

    // The file switched off under it: writes are no longer durable, so the storage serves
    // from the fallback (nothing is lost: the outbox waits) until the file is back.
    valkey.cmd(&["CONFIG", "SET", "appendonly", "no"]);
    // (The write that meets the refusal is on the master already, as after a timeout; it is
    // replayed all the same.)
    storage.set("aof:during", "1", None).await.unwrap();
    assert_eq!(storage.mode(), Mode::Degraded);
    storage.set("aof:later", "2", None).await.unwrap();
    // The monitor asks the server again before each resync, and stays degraded.
    let asked = calls(&valkey).get("info").copied().unwrap_or(0);
    let again = poll_until_async(WAIT, || {
        let n = calls(&valkey).get("info").copied().unwrap_or(0);
        async move { n >= asked + 6 }
    })
    .await;
    assert!(again.is_ok());
    assert_eq!(
        storage.mode(),
        Mode::Degraded,
        "a server without the file is not written to"
    );
    assert_eq!(valkey.cmd(&["EXISTS", "aof:later"]), RespValue::Integer(0));
    valkey.cmd(&["CONFIG", "SET", "appendonly", "yes"]);
    let back = poll_until_async(WAIT, || {
        let storage = storage.clone();
        async move { storage.mode() == Mode::Redis }
    })
    .await;
    assert!(back.is_ok(), "{:?}", storage.stats());
    assert_eq!(valkey.cmd(&["GET", "aof:during"]), RespValue::bulk("1"));
    assert_eq!(valkey.cmd(&["GET", "aof:later"]), RespValue::bulk("2"));
    storage.close().await;
}
