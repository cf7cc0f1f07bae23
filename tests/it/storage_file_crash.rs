//! The file fallback survives `kill -9` of the process while Redis is down: a child process
//! writes while degraded, reports each acknowledged write, and is killed; a new process on the
//! same directory replays the outbox when Redis returns. Nothing acknowledged is lost; when
//! the journal is damaged on disk meanwhile, what is lost is reported, never silent.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
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

/// Kills the writing child after `at_least` acknowledged writes; returns the last one.
fn write_then_kill9(url: &str, store: &str, at_least: u64) -> u64 {
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
            if n >= at_least {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    last_acked.expect("the child acknowledged writes")
}

/// The log lines written while a closure runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_journal_loses_nothing_silently() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill9();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_str = store.to_string_lossy().into_owned();
    let last = write_then_kill9(&url, &store_str, 600);

    // One flipped byte at 10% of the journal, as a failing disk leaves it.
    let journal = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("journal-") && name.ends_with(".log")
        })
        .expect("a journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes.len() / 10;
    bytes[at] ^= 0x10;
    std::fs::write(&journal, &bytes).unwrap();

    server.restart_empty().unwrap();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The journal is read while `open` is first polled, on this thread.
    let guard = tracing::subscriber::set_default(subscriber);
    let storage = Storage::open(&settings(&url, &store_str), &KeySchema::default())
        .await
        .unwrap();
    drop(guard);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let s = storage.clone();
    poll_until_async(Duration::from_secs(15), move || {
        let s = s.clone();
        async move { s.mode() == Mode::Redis }
    })
    .await
    .expect("resynced");

    let missing = (0..=last)
        .filter(|i| server.cmd(&["GET", &format!("crash:{i}")]).as_str() != Some(&format!("v{i}")))
        .count() as u64;
    let line = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("journal is damaged"))
        .unwrap_or_else(|| {
            panic!("the damage is reported at ERROR; {missing} writes missing; logs:\n{logs}")
        });
    let lost: u64 = line
        .split("records_lost=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of records lost: {line}"));
    assert!(
        missing <= lost,
        "{missing} acknowledged writes missing, {lost} reported lost: {line}"
    );
    assert!(lost <= 2, "one flipped byte costs one frame: {line}");
    let aside = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .count();
    assert_eq!(aside, 1, "the damaged journal is kept aside");
    println!(
        "{} acknowledged writes, {missing} missing, {lost} reported lost",
        last + 1
    );
}

#[test]
fn a_damaged_snapshot_stops_the_daemon_with_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    // A snapshot cut short: its header announces more than the file holds.
    let mut snapshot = b"BFSNAPSH".to_vec();
    snapshot.extend_from_slice(&2u32.to_le_bytes());
    snapshot.extend_from_slice(&1_000u64.to_le_bytes());
    snapshot.extend_from_slice(&[0; 4]);
    snapshot.extend_from_slice(b"partial");
    std::fs::write(store.join("snapshot.bin"), &snapshot).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .arg("run")
        .current_dir(dir.path())
        .env("USE_REDIS", "false")
        .env("BOTFLEET__STORAGE__FALLBACK", "file")
        .env("BOTFLEET__STORAGE__FILE__DIR", &store)
        .env("BOTFLEET__API__BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let waited = support::poll_until(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if waited.is_err() {
        let _ = child.kill();
        panic!("the daemon started on a damaged snapshot");
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("snapshot.bin") && stderr.contains("damaged"),
        "{stderr}"
    );
    // Nothing was overwritten: the operator still has the file to restore from.
    assert_eq!(std::fs::read(store.join("snapshot.bin")).unwrap(), snapshot);
}
