//! The file fallback survives `kill -9` of the process while Redis is down: a child process
//! writes while degraded, reports each acknowledged write, and is killed; a new process on the
//! same directory replays the outbox when Redis returns. Nothing acknowledged is lost.

use crate::support;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use botfleet::settings::{FallbackKind, StorageSettings};
use botfleet::storage::{KeySchema, Mode, Storage};
use support::{poll_until_async, RedisServer};

const CHILD_ENV: &str = "BOTFLEET_TEST_FILE_CHILD";

fn settings(url: &str, dir: &str) -> StorageSettings {
    let mut st = StorageSettings::default();
    st.redis.url = url.to_string();
    st.fallback = FallbackKind::File;
    st.file.dir = dir.to_string();
    st
}

/// The child's role: write forever while degraded, printing each acknowledged write. Not a
/// test of its own: the parent runs it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill9_while_degraded_then_restart_loses_nothing"]
async fn child_writer() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (url, dir) = spec.split_once('|').unwrap();
    let storage = Storage::open(&settings(url, dir), &KeySchema::default())
        .await
        .unwrap();
    assert_eq!(storage.mode(), Mode::Degraded);
    for i in 0u64.. {
        storage
            .set(&format!("crash:{i}"), format!("v{i}"), None)
            .await
            .unwrap();
        storage.incr_by("crash:count", 1).await.unwrap();
        println!("acked {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_degraded_then_restart_loses_nothing() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill9();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_string_lossy().into_owned();

    let mut child = support::spawn_role(
        module_path!(),
        "child_writer",
        CHILD_ENV,
        &format!("{url}|{store}"),
    );
    let stdout = child.stdout.take().unwrap();
    let mut last_acked = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            let n: u64 = n.parse().unwrap();
            last_acked = Some(n);
            if n >= 2_000 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    let last = last_acked.expect("the child acknowledged writes");

    server.restart_empty().unwrap();
    let storage = Storage::open(&settings(&url, &store), &KeySchema::default())
        .await
        .unwrap();
    let s = storage.clone();
    poll_until_async(Duration::from_secs(15), move || {
        let s = s.clone();
        async move { s.mode() == Mode::Redis }
    })
    .await
    .expect("resynced");
    for i in 0..=last {
        let want = format!("v{i}");
        assert_eq!(
            server.cmd(&["GET", &format!("crash:{i}")]).as_str(),
            Some(want.as_str()),
            "write {i} lost"
        );
    }
    let count: u64 = server
        .cmd(&["GET", "crash:count"])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        count > last,
        "every acknowledged increment replayed: {count} <= {last}"
    );
    println!("replayed {} acknowledged writes after kill -9", last + 1);
}
