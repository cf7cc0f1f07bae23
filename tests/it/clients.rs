//! The language clients (`clients/python`, `clients/typescript`) against the built daemon: a
//! private `redis-server` and `botfleet run` on free ports, then the clients' own test
//! programs (`python -m unittest`, `node --test`) told where they are through
//! `BOTFLEET_URL`, `BOTFLEET_TOKEN` and `BOTFLEET_REDIS_URL`. Faults (a consumer killed with
//! -9, Redis killed and restarted) are injected from here.
//!
//! The Python tests run in `target/clients-venv`, where `scripts/test.sh` pip-installs
//! `clients/python` (the installed package is tested, not the source tree, and a copy older
//! than the source fails the test); the TypeScript tests are compiled with the TypeScript of
//! `clients/typescript/node_modules` (`npm ci`, also by `scripts/test.sh`) into a temporary
//! directory. Without these toolchains every test fails, saying to run `scripts/test.sh`.

use crate::support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::process::spawn_tied_to_process;
use support::sidecar::Sidecar;
use support::{poll_until, RedisServer, RespValue};

/// The daemons' API token: every client test sends it, and checks that a mutation without it
/// is refused.
const TOKEN: &str = "clients-suite-token";
/// Longest run of one client test program.
const PROGRAM_DEADLINE: Duration = Duration::from_secs(240);
/// What to do when a toolchain is missing.
const INSTALL_HINT: &str = "run scripts/test.sh, which installs python3, python3-venv, nodejs and npm when missing, \
     creates target/clients-venv with clients/python installed, and runs npm ci in clients/typescript";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv interpreter with `botfleet_client` installed from the current source; panics
/// saying what to run when it is missing or stale.
fn python() -> PathBuf {
    let python = std::env::var_os("BOTFLEET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/clients-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: the Python client tests need Python 3 with clients/python installed in a venv; {INSTALL_HINT}",
        python.display()
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import os, botfleet_client; print(os.path.dirname(botfleet_client.__file__))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{} does not run ({e}); {INSTALL_HINT}", python.display()));
    assert!(
        out.status.success(),
        "botfleet_client is not installed in {}: {}; {INSTALL_HINT}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let source = repo().join("clients/python/src/botfleet_client");
    for entry in fs::read_dir(&source).expect("clients/python/src/botfleet_client") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "py") {
            let name = path.file_name().expect("a file name");
            assert!(
                fs::read(&path).ok() == fs::read(installed.join(name)).ok(),
                "the botfleet_client installed in {} differs from clients/python/src ({}): \
                 reinstall it ({} -m pip install ./clients/python), or {INSTALL_HINT}",
                python.display(),
                name.to_string_lossy(),
                python.display()
            );
        }
    }
    python
}

/// `node`, and the TypeScript compiler of `clients/typescript/node_modules`; panics saying
/// what to run when either is missing.
fn node() -> (PathBuf, PathBuf) {
    let node = std::env::var_os("BOTFLEET_TEST_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let version = Command::new(&node).arg("--version").output();
    assert!(
        matches!(&version, Ok(out) if out.status.success()),
        "node is missing ({version:?}): the TypeScript client tests need Node 18 or later; {INSTALL_HINT}"
    );
    let tsc = repo().join("clients/typescript/node_modules/typescript/bin/tsc");
    assert!(
        tsc.exists(),
        "{} is missing: the TypeScript client tests compile with it; {INSTALL_HINT}",
        tsc.display()
    );
    (node, tsc)
}

/// A private Redis server (with `persistence`: every acknowledged write survives kill -9)
/// and the built daemon on it, with [`TOKEN`] and `vars`.
fn start(persistence: bool, vars: &[(&str, &str)]) -> (RedisServer, Sidecar) {
    let redis = RedisServer::builder()
        .persistence(persistence)
        .start()
        .expect("start redis-server");
    let mut all = vec![
        ("BOTFLEET__API__TOKEN", TOKEN),
        // Retries come quickly, so that the dead-letter tests do not wait seconds.
        ("BOTFLEET__SCHEDULER__BACKOFF_BASE_MS", "100"),
    ];
    all.extend_from_slice(vars);
    let daemon = Sidecar::start(&redis.url(), &all);
    (redis, daemon)
}

/// The variables that tell a client test program where the daemon is.
fn client_env<'a>(redis: &RedisServer, daemon: &Sidecar) -> Vec<(&'a str, String)> {
    vec![
        ("BOTFLEET_URL", daemon.url()),
        ("BOTFLEET_TOKEN", TOKEN.to_string()),
        ("BOTFLEET_REDIS_URL", redis.url()),
    ]
}

/// A program's exit status and its output (stdout then stderr).
struct Ran {
    status: ExitStatus,
    output: String,
}

/// Runs `cmd` to its end within [`PROGRAM_DEADLINE`] (killed past it), output captured.
fn run(mut cmd: Command, what: &str) -> Ran {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"));
    let mut child = spawn_tied_to_process(cmd).unwrap_or_else(|e| panic!("start {what}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            break status;
        }
        if started.elapsed() > PROGRAM_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {PROGRAM_DEADLINE:?}; its output:\n{}{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default()
    );
    Ran { status, output }
}

/// Runs the unittest `modules` of `clients/python/tests` against `daemon`; fails unless every
/// test ran (none skipped) and passed.
fn run_python(modules: &[&str], redis: &RedisServer, daemon: &Sidecar, extra: &[(&str, &str)]) {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "unittest", "-v"])
        .args(modules)
        .current_dir(repo().join("clients/python/tests"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(client_env(redis, daemon))
        .envs(extra.iter().copied());
    let ran = run(cmd, &format!("python -m unittest {}", modules.join(" ")));
    assert!(
        ran.status.success() && ran.output.contains("\nOK") && !ran.output.contains("skipped"),
        "the Python client tests {modules:?} failed ({}):\n{}\n--- daemon log ---\n{}",
        ran.status,
        ran.output,
        daemon.log()
    );
    eprintln!("{}", ran.output);
}

/// Compiles the TypeScript client and its tests into a temporary directory and runs the test
/// `files` (under `test/`, as `.test.js`) with `node --test` against `daemon`; fails unless
/// every test ran (none skipped) and passed.
fn run_node(files: &[&str], redis: &RedisServer, daemon: &Sidecar) {
    let (node, tsc) = node();
    let package = repo().join("clients/typescript");
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut compile = Command::new(&node);
    compile
        .arg(&tsc)
        .args(["-p", "tsconfig.test.json", "--outDir"])
        .arg(out.path())
        .current_dir(&package);
    let compiled = run(compile, "tsc");
    assert!(
        compiled.status.success(),
        "the TypeScript client does not compile:\n{}",
        compiled.output
    );
    let mut cmd = Command::new(&node);
    cmd.arg("--test")
        .args(files.iter().map(|f| out.path().join("test").join(f)))
        .current_dir(&package)
        .env("BOTFLEET_BIN", env!("CARGO_BIN_EXE_botfleet"))
        .envs(client_env(redis, daemon));
    let ran = run(cmd, &format!("node --test {}", files.join(" ")));
    let count = |name: &str| -> Option<u64> {
        ran.output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {name} ")))
            .and_then(|n| n.trim().parse().ok())
    };
    assert!(
        ran.status.success()
            && count("fail") == Some(0)
            && count("skipped") == Some(0)
            && count("pass").unwrap_or(0) > 0,
        "the TypeScript client tests {files:?} failed ({}):\n{}\n--- daemon log ---\n{}",
        ran.status,
        ran.output,
        daemon.log()
    );
    eprintln!("{}", ran.output);
}

/// Seed 000's English bot writes each round with SET + EXPIRE into a daemon with no source
/// of its own: the Python client reads each round within `shared_data.watch_interval_ms`
/// plus one GET (and a slack the test states), and its stream delivers each round once.
#[test]
fn python_shared_data_follows_a_seed_bot_round_by_round() {
    let watch_ms = "250";
    let (redis, daemon) = start(
        false,
        &[
            ("BOTFLEET__SHARED_DATA__ENABLED", "true"),
            ("BOTFLEET__SHARED_DATA__WATCH_INTERVAL_MS", watch_ms),
        ],
    );
    run_python(
        &["test_shared_data"],
        &redis,
        &daemon,
        &[("BOTFLEET_SHARED_DATA_WATCH_MS", watch_ms)],
    );
}

/// `work()` runs 200 tasks once each; leases extended, retries, dead letters, 400/401/404.
#[test]
fn python_tasks_and_work() {
    let (redis, daemon) = start(false, &[]);
    run_python(&["test_tasks"], &redis, &daemon, &[]);
}

/// `lock()` excludes across two Python processes; busy, lost and extended locks; seed SET NX.
#[test]
fn python_locks() {
    let (redis, daemon) = start(false, &[]);
    run_python(&["test_locks"], &redis, &daemon, &[]);
}

/// Admin messages, identities, heartbeats and peers, game sessions, fairness, errors.
#[test]
fn python_admin_identities_heartbeats_games_and_errors() {
    let (redis, daemon) = start(false, &[]);
    run_python(&["test_api"], &redis, &daemon, &[]);
}

/// The pid whose admin queue the consumer reads (no process of the test has it).
const CONSUMER_PID: &str = "31337";
/// Messages sent in the admin scenario.
const MESSAGES: usize = 2_000;

/// A Python program of `clients/python/tests` with the daemon's variables.
fn python_program(script: &str, args: &[&str], redis: &RedisServer, daemon: &Sidecar) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("clients/python/tests").join(script))
        .args(args)
        .current_dir(repo().join("clients/python/tests"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(client_env(redis, daemon));
    cmd
}

/// Sends `msg-FIRST`... up to `end` (exclusive) through the Python client; fails the test
/// unless every send was answered.
fn send_messages(first: usize, end: usize, redis: &RedisServer, daemon: &Sidecar) {
    let cmd = python_program(
        "admin_sender.py",
        &[CONSUMER_PID, &first.to_string(), &end.to_string()],
        redis,
        daemon,
    );
    let ran = run(cmd, "admin_sender.py");
    assert!(
        ran.status.success(),
        "sending messages {first}..{end} failed ({}):\n{}\n--- daemon log ---\n{}",
        ran.status,
        ran.output,
        daemon.log()
    );
}

/// The consumer's record so far: `(id, message)` per line, in the order received.
fn received(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, m)| (id.to_string(), m.to_string()))
        .collect()
}

/// How many distinct messages the consumer has recorded.
fn distinct(path: &Path) -> usize {
    let mut ids: Vec<String> = received(path).into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// Starts the consumer; with `stall`, it hangs after recording that message, unacknowledged.
fn start_consumer(out: &Path, stall: Option<&str>, redis: &RedisServer, daemon: &Sidecar) -> Child {
    let last = format!("msg-{:05}", MESSAGES - 1);
    let out = out.to_string_lossy();
    let mut args = vec![CONSUMER_PID, &*out, &*last];
    args.extend(stall);
    let mut cmd = python_program("admin_consumer.py", &args, redis, daemon);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    spawn_tied_to_process(cmd).expect("start admin_consumer.py")
}

/// 2,000 admin messages to a Python consumer (`admin_inbox`) through the daemon, the consumer
/// killed with -9 midway while it handled a message (recorded, not acknowledged) and started
/// again, Redis killed and restarted once (messages sent
/// meanwhile wait in the daemon's outbox): after deduplication by id each message was
/// delivered once, in send order, and every one was acknowledged (the queue ends empty).
#[test]
fn python_admin_inbox_delivers_each_message_once_in_order_through_kills() {
    let (mut redis, daemon) = start(true, &[]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("received");
    let third = MESSAGES / 3;

    send_messages(0, third, &redis, &daemon);
    // Killed while it handles a message it has recorded but not acknowledged.
    let stall = format!("msg-{:05}", third / 2);
    let mut consumer = start_consumer(&out, Some(&stall), &redis, &daemon);
    poll_until(Duration::from_secs(60), || {
        received(&out).iter().any(|(_, m)| *m == stall)
    })
    .unwrap_or_else(|e| panic!("the consumer got {} messages: {e}", distinct(&out)));
    consumer.kill().expect("kill -9 the consumer");
    consumer.wait().expect("reap the consumer");
    let at_kill = distinct(&out);
    assert_eq!(
        at_kill,
        third / 2 + 1,
        "the consumer skipped or repeated messages"
    );

    let mut consumer = start_consumer(&out, None, &redis, &daemon);
    send_messages(third, 2 * third, &redis, &daemon);
    poll_until(Duration::from_secs(60), || {
        distinct(&out) >= third + third / 2
    })
    .unwrap_or_else(|e| panic!("the consumer got {} messages: {e}", distinct(&out)));

    redis.kill9();
    send_messages(2 * third, MESSAGES, &redis, &daemon);
    redis.restart().expect("restart redis-server");

    let started = Instant::now();
    let status = loop {
        if let Some(status) = consumer.try_wait().expect("wait for the consumer") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the consumer did not get message {} within 2 minutes of Redis's restart: it has {} \
             distinct messages\n--- daemon log ---\n{}",
            MESSAGES - 1,
            distinct(&out),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the consumer failed: {status}");

    let record = received(&out);
    let mut first_seen: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    for (id, message) in &record {
        match first_seen.get(id) {
            Some(before) => assert_eq!(
                before, message,
                "id {id} was delivered with two different messages"
            ),
            None => {
                first_seen.insert(id.clone(), message.clone());
                order.push(message.clone());
            }
        }
    }
    assert!(
        record.iter().filter(|(_, m)| *m == stall).count() >= 2,
        "{stall}, unacknowledged when its consumer was killed, was not delivered again"
    );
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("msg-{i:05}")).collect();
    if order != expected {
        let first_wrong = order
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(order.len().min(expected.len()));
        panic!(
            "after deduplication by id the consumer got {} messages, expected {}; first \
             difference at {first_wrong}: {:?} instead of {:?}",
            order.len(),
            expected.len(),
            order.get(first_wrong),
            expected.get(first_wrong)
        );
    }
    let queue = format!("admin:queue:{CONSUMER_PID}");
    poll_until(Duration::from_secs(30), || {
        redis.cmd(&["LLEN", &queue]) == RespValue::Integer(0)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{queue} still holds {:?} entries: acknowledgements were lost ({e})",
            redis.cmd(&["LLEN", &queue])
        )
    });
    eprintln!(
        "{} deliveries for {MESSAGES} messages ({} redelivered); consumer killed at {at_kill}",
        record.len(),
        record.len() - MESSAGES
    );
}

/// A crash-game round through the daemon with the TypeScript client, verified by `botfleet
/// verify`.
#[test]
fn typescript_crash_game_round_verifies_with_the_cli() {
    let (redis, daemon) = start(false, &[]);
    run_node(&["crash_game.test.js"], &redis, &daemon);
}

/// Tasks, work(), locks, identities, admin messages and error mapping with the TypeScript
/// client; and its own parsing tests.
#[test]
fn typescript_tasks_locks_identities_and_errors() {
    let (redis, daemon) = start(false, &[]);
    run_node(&["api.test.js", "sse.test.js"], &redis, &daemon);
}
