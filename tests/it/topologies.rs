//! Redis Cluster and Sentinel under the storage handle: the test harnesses themselves (a
//! Cluster of 3 masters and 3 replicas, a Sentinel set-up of 1 master, 1 replica and
//! 3 sentinels), the connection settings (seed nodes, service name, the sentinels' and the data
//! servers' passwords), keys spread over the masters, scripts whose keys share a hash tag,
//! SCAN over every master, and the settings checks that name the key at fault.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use botfleet::settings::{Secret, Settings, StorageSettings};
use botfleet::storage::{hash_slot, KeySchema, Mode, Reply, Script, Storage, StorageError};
use support::{RedisCluster, RedisSentinel, RespValue};

fn storage_settings(url: &str) -> StorageSettings {
    let mut st = StorageSettings::default();
    st.redis.url = url.to_string();
    // Three masters and their replicas share 2 cores with the test.
    st.redis.timeout_ms = 2_000;
    st.redis.connect_timeout_ms = 1_000;
    st
}

fn no_local(
    _: &mut botfleet::storage::Keyspace,
    _: u64,
    _: &[String],
    _: &[String],
) -> Result<Reply, botfleet::storage::LocalError> {
    Err(botfleet::storage::LocalError::Script("redis only".into()))
}

/// Moves a value from KEYS[1] to KEYS[2].
const MOVE: &str = r#"
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], v)
redis.call('DEL', KEYS[1])
return v
"#;

#[test]
fn the_cluster_harness_forms_three_masters_with_a_replica_each() {
    let cluster = RedisCluster::start().unwrap();
    let nodes = cluster.topology().unwrap();
    let masters: Vec<_> = nodes.iter().filter(|n| n.master).collect();
    let replicas: Vec<_> = nodes.iter().filter(|n| !n.master).collect();
    assert_eq!((masters.len(), replicas.len()), (3, 3), "{nodes:?}");
    let served: u32 = masters
        .iter()
        .flat_map(|m| m.slots.iter().map(|(a, b)| u32::from(b - a) + 1))
        .sum();
    assert_eq!(served, 16_384);
    // Each master has exactly one replica.
    for m in &masters {
        let n = replicas
            .iter()
            .filter(|r| r.master_id.as_deref() == Some(m.id.as_str()))
            .count();
        assert_eq!(n, 1, "replicas of {}", m.port);
    }
    // The raw client follows the slots: keys of different slots land on different masters.
    let mut owners = BTreeSet::new();
    for i in 0..30 {
        let key = format!("harness:{i}");
        assert!(cluster.cmd(&["SET", &key, "v"]).is_ok());
        assert_eq!(cluster.cmd(&["GET", &key]), RespValue::bulk("v"));
        owners.insert(cluster.master_port_for(&key).unwrap());
    }
    assert_eq!(owners.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_on_a_cluster_spreads_keys_runs_tagged_scripts_and_scans_every_master() {
    let cluster = RedisCluster::start().unwrap();
    // Only one seed in the URL, the others through storage.redis.nodes.
    let ports = cluster.ports();
    let mut st = storage_settings(&format!("redis-cluster://127.0.0.1:{}", ports[0]));
    st.redis.nodes = ports[1..]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    assert_eq!(storage.mode(), Mode::Redis);
    // Every master was asked what it is (the native commands need all of them to have one).
    let server = storage.stats().server.expect("the masters were asked");
    assert_eq!(server.masters, 3, "{server:?}");
    assert!(storage.is_clustered());

    for i in 0..90 {
        storage
            .set(&format!("spread:{i}"), i.to_string(), None)
            .await
            .unwrap();
    }
    let sizes = cluster.cmd_on_masters(&["DBSIZE"]).unwrap();
    let counts: Vec<i64> = sizes.values().map(|v| v.as_int().unwrap()).collect();
    assert_eq!(counts.iter().sum::<i64>(), 90, "{sizes:?}");
    assert!(
        counts.iter().all(|&c| c > 0),
        "every master holds keys: {sizes:?}"
    );
    // SCAN sees the keys of every master.
    let scanned = storage.scan("spread:*").await.unwrap();
    assert_eq!(scanned.len(), 90);

    // A script whose keys share a hash tag runs on the master of that slot...
    let script = Script::new("move", MOVE, no_local);
    let (from, to) = ("{acct}:a", "{acct}:b");
    assert_eq!(hash_slot(from), hash_slot(to));
    storage.set(from, "42", None).await.unwrap();
    let moved = storage.eval(&script, &[from, to], &[]).await.unwrap();
    assert_eq!(moved, Reply::Str("42".into()));
    assert_eq!(cluster.cmd(&["GET", to]), RespValue::bulk("42"));
    // ...and is loaded into every master's script cache, not only the first one asked.
    for i in 0..20 {
        let (a, b) = (format!("{{t{i}}}:a"), format!("{{t{i}}}:b"));
        storage.set(&a, "x", None).await.unwrap();
        storage.eval(&script, &[&a, &b], &[]).await.unwrap();
    }
    // Keys of different slots in one script are refused by the Cluster (a command error,
    // not an outage): what the hash tags prevent.
    let refused = storage
        .eval(&script, &["spread:1", "spread:2"], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StorageError::Command(m) if m.contains("CROSSSLOT")),
        "{refused:?}"
    );
    assert_eq!(storage.mode(), Mode::Redis);
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_on_sentinel_uses_the_sentinel_password_and_the_data_password() {
    let set = RedisSentinel::builder()
        .data_password("data-secret")
        .sentinel_password("sentinel-secret")
        .start()
        .unwrap();
    let mut st = storage_settings(&set.url());
    st.redis.password = Secret::new("data-secret");
    st.redis.sentinel_password = Secret::new("sentinel-secret");
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    assert_eq!(storage.mode(), Mode::Redis);
    assert!(!storage.is_clustered());
    storage.set("through:sentinel", "v", None).await.unwrap();
    // The write reached the master the sentinels name, and its replica.
    let master = set.master_index().unwrap();
    assert_eq!(master, 0);
    assert_eq!(set.cmd(&["GET", "through:sentinel"]), RespValue::bulk("v"));
    support::poll_until(Duration::from_secs(5), || {
        set.data_cmd(1, &["GET", "through:sentinel"]).ok() == Some(RespValue::bulk("v"))
    })
    .unwrap();
    storage.close().await;

    // Without the sentinels' password the sentinels refuse: a misconfiguration or an
    // outage, never a connection to the data servers that skips the sentinels.
    let mut wrong = st.clone();
    wrong.redis.sentinel_password = Secret::new("not-it");
    match Storage::open(&wrong, &KeySchema::default()).await {
        Err(StorageError::Config { .. }) => {}
        Ok(storage) => {
            assert_ne!(storage.mode(), Mode::Redis);
            storage.close().await;
        }
        Err(other) => panic!("{other:?}"),
    }
}

fn problems(settings_toml: &str) -> Vec<(String, String)> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, settings_toml.as_bytes()).unwrap();
    match Settings::load_with_env(Some(file.path()), Vec::<(String, String)>::new()) {
        Ok(_) => Vec::new(),
        Err(err) => err
            .problems()
            .iter()
            .map(|p| (p.key.clone(), p.message.clone()))
            .collect(),
    }
}

#[test]
fn topology_settings_are_checked_naming_the_key() {
    // A Cluster needs the hash-tagged prefix.
    let found = problems("[storage.redis]\nurl = \"redis-cluster://127.0.0.1:7000\"\n");
    assert!(
        found
            .iter()
            .any(|(k, m)| k == "keys.prefix" && m.contains("hash tag")),
        "{found:?}"
    );
    assert!(problems(
        "[storage.redis]\nurl = \"redis-cluster://127.0.0.1:7000\"\nnodes = [\"127.0.0.1:7001\"]\n[keys]\nprefix = \"{bot}\"\n"
    )
    .is_empty());
    // A Sentinel URL needs the service name, from the URL or the setting.
    let found = problems("[storage.redis]\nurl = \"redis-sentinel://127.0.0.1:26379\"\n");
    assert!(
        found
            .iter()
            .any(|(k, _)| k == "storage.redis.sentinel_service"),
        "{found:?}"
    );
    assert!(problems(
        "[storage.redis]\nurl = \"redis-sentinel://127.0.0.1:26379\"\nsentinel_service = \"main\"\nnodes = [\"127.0.0.1:26380\"]\n"
    )
    .is_empty());
    // Extra nodes make no sense with a standalone URL, and must be host:port.
    let found = problems("[storage.redis]\nnodes = [\"127.0.0.1:7001\"]\n");
    assert!(
        found.iter().any(|(k, _)| k == "storage.redis.nodes"),
        "{found:?}"
    );
    let found = problems(
        "[storage.redis]\nurl = \"redis-cluster://127.0.0.1:7000\"\nnodes = [\"nohost\"]\n[keys]\nprefix = \"{bot}\"\n",
    );
    assert!(
        found.iter().any(|(k, _)| k == "storage.redis.nodes"),
        "{found:?}"
    );
    // The sentinels' password is a secret: never echoed, and set by its own variable.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut file,
        b"[storage.redis]\nurl = \"redis-sentinel://127.0.0.1:26379?sentinelServiceName=main\"\n",
    )
    .unwrap();
    let loaded = Settings::load_with_env(
        Some(file.path()),
        vec![("REDIS_SENTINEL_PASSWORD".to_string(), "s3cret".to_string())],
    )
    .unwrap();
    assert_eq!(loaded.storage.redis.sentinel_password.expose(), "s3cret");
    assert!(!format!("{:?}", loaded.storage.redis).contains("s3cret"));
    assert!(!loaded.redacted().to_toml().contains("s3cret"));
}
