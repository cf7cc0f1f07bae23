//! One set of operation cases run against all three backends: a real redis-server, the memory
//! fallback and the file fallback. Redis is the oracle: the fallbacks must answer exactly as it
//! does (replies, type errors, deletion of emptied collections, expiry).
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::time::Duration;

use botfleet::settings::{FallbackKind, StorageSettings};
use botfleet::storage::{
    Expiry, KeySchema, Keyspace, LocalError, Mode, Op, Reply, Script, Storage,
};
use support::TestRedis;

fn s(x: &str) -> String {
    x.to_string()
}

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: s(key),
        value: s(value),
        expiry: Expiry::Never,
        only_if_absent: false,
    }
}

/// The cases: each a sequence of ops on a fresh keyspace.
fn cases() -> Vec<(&'static str, Vec<Op>)> {
    vec![
        (
            "strings",
            vec![
                Op::Get { key: s("a") },
                set("a", "1"),
                Op::Get { key: s("a") },
                Op::Set {
                    key: s("a"),
                    value: s("2"),
                    expiry: Expiry::Never,
                    only_if_absent: true,
                },
                Op::Set {
                    key: s("b"),
                    value: s("2"),
                    expiry: Expiry::Never,
                    only_if_absent: true,
                },
                Op::IncrBy {
                    key: s("a"),
                    by: 41,
                },
                Op::IncrBy {
                    key: s("new"),
                    by: -3,
                },
                Op::Exists { key: s("a") },
                Op::Exists { key: s("zz") },
                Op::Del {
                    keys: vec![s("a"), s("b"), s("zz")],
                },
                Op::Get { key: s("a") },
                set("text", "abc"),
                Op::IncrBy {
                    key: s("text"),
                    by: 1,
                },
            ],
        ),
        (
            "expiry",
            vec![
                Op::Pttl { key: s("missing") },
                set("p", "v"),
                Op::Pttl { key: s("p") },
                Op::Expire {
                    key: s("p"),
                    expiry: Expiry::In(60_000),
                },
                Op::Expire {
                    key: s("missing"),
                    expiry: Expiry::In(60_000),
                },
                Op::Expire {
                    key: s("p"),
                    expiry: Expiry::Never,
                },
                Op::Pttl { key: s("p") },
                Op::Set {
                    key: s("t"),
                    value: s("v"),
                    expiry: Expiry::In(60_000),
                    only_if_absent: false,
                },
                set("t", "w"),
                Op::Pttl { key: s("t") },
                Op::Expire {
                    key: s("t"),
                    expiry: Expiry::At(1_000),
                },
                Op::Exists { key: s("t") },
            ],
        ),
        (
            "hashes",
            vec![
                Op::HSet {
                    key: s("h"),
                    fields: vec![(s("a"), s("1")), (s("b"), s("2"))],
                },
                Op::HSet {
                    key: s("h"),
                    fields: vec![(s("a"), s("3")), (s("c"), s("4"))],
                },
                Op::HGet {
                    key: s("h"),
                    field: s("a"),
                },
                Op::HGet {
                    key: s("h"),
                    field: s("zz"),
                },
                Op::HIncrBy {
                    key: s("h"),
                    field: s("b"),
                    by: 5,
                },
                Op::HIncrBy {
                    key: s("h"),
                    field: s("new"),
                    by: 1,
                },
                Op::HLen { key: s("h") },
                Op::HGetAll { key: s("h") },
                Op::HDel {
                    key: s("h"),
                    fields: vec![s("a"), s("zz")],
                },
                Op::HDel {
                    key: s("h"),
                    fields: vec![s("b"), s("c"), s("new")],
                },
                Op::Exists { key: s("h") },
                Op::HGetAll { key: s("h") },
                set("str", "x"),
                Op::HSet {
                    key: s("str"),
                    fields: vec![(s("a"), s("1"))],
                },
                Op::HGet {
                    key: s("str"),
                    field: s("a"),
                },
            ],
        ),
        (
            "sets",
            vec![
                Op::SAdd {
                    key: s("s"),
                    members: vec![s("a"), s("b"), s("a")],
                },
                Op::SAdd {
                    key: s("s"),
                    members: vec![s("c")],
                },
                Op::SIsMember {
                    key: s("s"),
                    member: s("b"),
                },
                Op::SIsMember {
                    key: s("s"),
                    member: s("z"),
                },
                Op::SCard { key: s("s") },
                Op::SMembers { key: s("s") },
                Op::SRem {
                    key: s("s"),
                    members: vec![s("a"), s("z")],
                },
                Op::SRem {
                    key: s("s"),
                    members: vec![s("b"), s("c")],
                },
                Op::Exists { key: s("s") },
                Op::SMembers { key: s("nothing") },
            ],
        ),
        (
            "sorted sets",
            vec![
                Op::ZAdd {
                    key: s("z"),
                    members: vec![
                        (-10.0, s("login")),
                        (-5.0, s("check")),
                        (-10.0, s("accept")),
                    ],
                },
                Op::ZAdd {
                    key: s("z"),
                    members: vec![(-1.0, s("shot")), (-7.5, s("check"))],
                },
                Op::ZCard { key: s("z") },
                Op::ZScore {
                    key: s("z"),
                    member: s("check"),
                },
                Op::ZScore {
                    key: s("z"),
                    member: s("nope"),
                },
                Op::ZRangeByScore {
                    key: s("z"),
                    min: f64::NEG_INFINITY,
                    max: f64::INFINITY,
                    limit: None,
                },
                Op::ZRangeByScore {
                    key: s("z"),
                    min: -8.0,
                    max: -1.0,
                    limit: Some((1, 1)),
                },
                Op::ZPopMin {
                    key: s("z"),
                    count: 2,
                },
                Op::ZRem {
                    key: s("z"),
                    members: vec![s("shot"), s("nope")],
                },
                Op::ZPopMin {
                    key: s("z"),
                    count: 5,
                },
                Op::Exists { key: s("z") },
                Op::ZPopMin {
                    key: s("z"),
                    count: 1,
                },
                Op::ZAdd {
                    key: s("inf"),
                    members: vec![(f64::INFINITY, s("x")), (1.5, s("y"))],
                },
                Op::ZRangeByScore {
                    key: s("inf"),
                    min: 0.0,
                    max: f64::INFINITY,
                    limit: None,
                },
            ],
        ),
        (
            "lists",
            vec![
                Op::LPush {
                    key: s("l"),
                    values: vec![s("a"), s("b")],
                },
                Op::RPush {
                    key: s("l"),
                    values: vec![s("c"), s("d"), s("e")],
                },
                Op::LRange {
                    key: s("l"),
                    start: 0,
                    stop: -1,
                },
                Op::LRange {
                    key: s("l"),
                    start: -2,
                    stop: 100,
                },
                Op::LRange {
                    key: s("l"),
                    start: 3,
                    stop: 1,
                },
                Op::LLen { key: s("l") },
                Op::LTrim {
                    key: s("l"),
                    start: 0,
                    stop: 2,
                },
                Op::LRange {
                    key: s("l"),
                    start: 0,
                    stop: -1,
                },
                Op::LTrim {
                    key: s("l"),
                    start: 5,
                    stop: 10,
                },
                Op::Exists { key: s("l") },
                Op::LTrim {
                    key: s("missing"),
                    start: 0,
                    stop: 1,
                },
            ],
        ),
        (
            "wrong types",
            vec![
                Op::SAdd {
                    key: s("set"),
                    members: vec![s("a")],
                },
                Op::Get { key: s("set") },
                Op::LPush {
                    key: s("set"),
                    values: vec![s("a")],
                },
                Op::ZAdd {
                    key: s("set"),
                    members: vec![(1.0, s("a"))],
                },
                Op::HIncrBy {
                    key: s("set"),
                    field: s("f"),
                    by: 1,
                },
                Op::HSet {
                    key: s("hh"),
                    fields: vec![(s("f"), s("x"))],
                },
                Op::HIncrBy {
                    key: s("hh"),
                    field: s("f"),
                    by: 1,
                },
            ],
        ),
        (
            "scan",
            vec![
                set("heartbeat:1", "a"),
                set("heartbeat:22", "b"),
                set("identity:room:p", "c"),
                Op::Scan {
                    cursor: 0,
                    pattern: s("heartbeat:*"),
                    count: 500,
                },
                Op::Scan {
                    cursor: 0,
                    pattern: s("identity:r?om:*"),
                    count: 500,
                },
            ],
        ),
    ]
}

/// A script with a Lua side and a Rust side: moves the lowest-scored member of a sorted set
/// into a hash marked "processing", returning the member, or nil when the set is empty.
fn claim_script() -> Script {
    const LUA: &str = r#"
local popped = redis.call('ZPOPMIN', KEYS[1], 1)
if #popped == 0 then return false end
redis.call('HSET', KEYS[2], popped[1], ARGV[1])
return popped[1]
"#;
    fn local(
        ks: &mut Keyspace,
        now: u64,
        keys: &[String],
        args: &[String],
    ) -> Result<Reply, LocalError> {
        let popped = ks.apply(
            &Op::ZPopMin {
                key: keys[0].clone(),
                count: 1,
            },
            now,
        )?;
        let Some(member) = popped.into_strings().into_iter().next() else {
            return Ok(Reply::Nil);
        };
        ks.apply(
            &Op::HSet {
                key: keys[1].clone(),
                fields: vec![(member.clone(), args[0].clone())],
            },
            now,
        )?;
        Ok(Reply::Str(member))
    }
    Script::new("test-claim", LUA, local)
}

/// Replies compared order-insensitively where Redis does not define an order, TTLs by sign.
fn normalize(op: &Op, reply: Result<Reply, String>) -> Result<Reply, String> {
    let reply = reply.map_err(|e| e.split_whitespace().next().unwrap_or("").to_string())?;
    Ok(match (op, reply) {
        (Op::SMembers { .. }, Reply::Array(mut items)) => {
            items.sort_by_key(|r| format!("{r:?}"));
            Reply::Array(items)
        }
        (Op::HGetAll { .. }, Reply::Array(items)) => {
            let mut pairs: Vec<Vec<Reply>> = items.chunks(2).map(|c| c.to_vec()).collect();
            pairs.sort_by_key(|p| format!("{p:?}"));
            Reply::Array(pairs.into_iter().flatten().collect())
        }
        (Op::Scan { .. }, Reply::Array(parts)) => {
            let mut keys = parts
                .get(1)
                .cloned()
                .map(Reply::into_strings)
                .unwrap_or_default();
            keys.sort();
            Reply::Array(keys.into_iter().map(Reply::Str).collect())
        }
        (Op::Pttl { .. }, Reply::Int(ms)) if ms > 0 => Reply::Str("positive ttl".into()),
        (_, reply) => reply,
    })
}

async fn run_all(storage: &Storage) -> Vec<(String, Result<Reply, String>)> {
    let mut out = Vec::new();
    for (i, (name, ops)) in cases().into_iter().enumerate() {
        for op in ops {
            // Each case gets its own keys by a prefix, so cases do not see each other; the
            // prefix is a hash tag, so a case's keys share a slot on a Cluster too.
            let op = prefixed(op, &format!("{{c{i}}}:"));
            let reply = storage.execute(op.clone()).await.map_err(|e| e.to_string());
            out.push((format!("{name}: {op:?}"), normalize(&op, reply)));
        }
    }
    let script = claim_script();
    storage
        .zadd("{c}:queue", &[(1.0, "t1"), (2.0, "t2")])
        .await
        .unwrap();
    for _ in 0..3 {
        let reply = storage
            .eval(&script, &["{c}:queue", "{c}:processing"], &["now"])
            .await;
        out.push(("script claim".into(), reply.map_err(|e| e.to_string())));
    }
    let hash = storage.hgetall("{c}:processing").await.unwrap();
    let mut hash: Vec<_> = hash.into_iter().collect();
    hash.sort();
    out.push(("script effects".into(), Ok(Reply::Str(format!("{hash:?}")))));
    // set_many: values, TTLs (with and without), and an existing key of another type
    // overwritten, as SET does.
    storage.rpush("m:2", &["old"]).await.unwrap();
    let pairs = |n: usize| {
        (0..n)
            .map(|i| (format!("m:{i}"), format!("v{i}")))
            .collect::<Vec<_>>()
    };
    storage
        .set_many(pairs(3), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    storage
        .set_many(vec![("m:9".into(), "x".into())], None)
        .await
        .unwrap();
    storage.set_many(Vec::new(), None).await.unwrap();
    for key in ["m:0", "m:1", "m:2", "m:9"] {
        let value = storage.get(key).await.map_err(|e| e.to_string());
        out.push((
            format!("set_many {key}"),
            value.map(|v| Reply::Str(format!("{v:?}"))),
        ));
        // The TTL to the next 10 s: the servers' clocks move on between the calls.
        let ttl = storage.ttl(key).await.map_err(|e| e.to_string());
        let bucket = ttl.map(|t| match t {
            botfleet::storage::Ttl::Expires(d) => format!("{}", d.as_secs().div_ceil(10)),
            other => format!("{other:?}"),
        });
        out.push((format!("set_many ttl {key}"), bucket.map(Reply::Str)));
    }
    // compare_and_set (a script, or SET IFEQ where the server has it): absent, stale,
    // current, with and without expiry, and a key of another type.
    let hour = Some(Duration::from_secs(3_600));
    let cas = [
        ("cas:a", Some("x"), "new", None),
        ("cas:a", None, "v1", hour),
        ("cas:a", None, "v2", None),
        ("cas:a", Some("old"), "v2", None),
        ("cas:a", Some("v1"), "v2", None),
        ("cas:b", None, "", hour),
        ("cas:b", Some(""), "b2", hour),
        ("m:2", Some("x"), "y", None),
    ];
    storage.rpush("cas:list", &["x"]).await.unwrap();
    for (key, expected, value, ttl) in cas.into_iter().chain([("cas:list", Some("x"), "y", None)]) {
        let reply = storage
            .compare_and_set(key, expected, value, ttl)
            .await
            .map_err(|e| {
                e.to_string()
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            });
        out.push((
            format!("compare_and_set {key} {expected:?} {value}"),
            reply.map(|written| Reply::Int(i64::from(written))),
        ));
    }
    for key in ["cas:a", "cas:b", "cas:list"] {
        let value = storage.get(key).await.map_err(|e| e.to_string());
        let ttl = storage.ttl(key).await.map_err(|e| e.to_string());
        out.push((
            format!("compare_and_set leaves {key}"),
            Ok(Reply::Str(format!(
                "{:?} {:?}",
                value.map_err(|e| e.split_whitespace().next().unwrap_or("").to_string()),
                ttl.map(|t| matches!(t, botfleet::storage::Ttl::Expires(_)))
            ))),
        ));
    }
    out
}

fn prefixed(op: Op, prefix: &str) -> Op {
    let p = |k: &String| format!("{prefix}{k}");
    match op {
        Op::Scan {
            cursor,
            pattern,
            count,
        } => Op::Scan {
            cursor,
            pattern: p(&pattern),
            count,
        },
        Op::Del { keys } => Op::Del {
            keys: keys.iter().map(p).collect(),
        },
        // Infinite scores do not survive JSON, so these are rewritten by hand.
        Op::ZAdd { key, members } => Op::ZAdd {
            key: p(&key),
            members,
        },
        Op::ZRangeByScore {
            key,
            min,
            max,
            limit,
        } => Op::ZRangeByScore {
            key: p(&key),
            min,
            max,
            limit,
        },
        other => {
            // Every other variant has exactly one `key`; rewrite it through serde to keep
            // this table-driven.
            let mut v = serde_json::to_value(&other).unwrap();
            let fields = v.as_object_mut().unwrap().values_mut().next().unwrap();
            if let Some(key) = fields.get_mut("key") {
                *key = serde_json::Value::String(format!("{prefix}{}", key.as_str().unwrap()));
            }
            serde_json::from_value(v).unwrap()
        }
    }
}

fn settings(fallback: FallbackKind, url: Option<&str>, dir: &std::path::Path) -> StorageSettings {
    let mut st = StorageSettings {
        fallback,
        ..StorageSettings::default()
    };
    st.file.dir = dir.join("store").to_string_lossy().into_owned();
    match url {
        Some(url) => {
            st.redis.url = url.to_string();
            // Redis is the oracle here, not under test: a busy machine must not make it look
            // like an outage.
            st.redis.timeout_ms = 5_000;
        }
        None => st.redis.enabled = false,
    }
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_answer_exactly_as_redis_does() {
    let server = TestRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = Storage::open(
        &settings(FallbackKind::Memory, Some(&server.url()), dir.path()),
        &KeySchema::default(),
    )
    .await
    .unwrap();
    assert_eq!(redis.mode(), Mode::Redis);
    let expected = run_all(&redis).await;

    for fallback in [FallbackKind::Memory, FallbackKind::File] {
        let dir = tempfile::tempdir().unwrap();
        let local = Storage::open(&settings(fallback, None, dir.path()), &KeySchema::default())
            .await
            .unwrap();
        assert_eq!(local.mode(), Mode::Fallback);
        let got = run_all(&local).await;
        assert_eq!(got.len(), expected.len());
        for ((what, want), (_, have)) in expected.iter().zip(&got) {
            assert_eq!(have, want, "{fallback:?} differs from redis at {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fallback_keeps_its_data_across_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(FallbackKind::File, None, dir.path());
    st.file.compact_min_bytes = 4_096;
    st.memory.sweep_interval_ms = 20;
    {
        let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
        for i in 0..5_000 {
            storage.set("k", format!("{i}"), None).await.unwrap();
            storage.rpush("events", &[&format!("e{i}")]).await.unwrap();
            storage.ltrim("events", -10, -1).await.unwrap();
        }
        storage
            .set("short", "gone", Some(Duration::from_millis(1)))
            .await
            .unwrap();
        storage.close().await;
    }
    let journal_bytes: u64 = std::fs::read_dir(dir.path().join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        journal_bytes < 60_000,
        "the store compacts: {journal_bytes} bytes on disk"
    );
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some("4999"));
    let events = storage.lrange("events", 0, -1).await.unwrap();
    assert_eq!(events.first().map(String::as_str), Some("e4990"));
    assert_eq!(events.len(), 10);
    assert_eq!(storage.get("short").await.unwrap(), None);
}
