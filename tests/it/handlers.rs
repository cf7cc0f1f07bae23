//! `[[scheduler.handlers]]`: the daemon (the built binary, on a real redis-server) runs tasks
//! with no code, by commands and by webhooks (a small HTTP server of the test's own, on a
//! free port); bad handler settings refuse the start.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::sidecar::Sidecar;
use support::{poll_until, process_is_alive, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

/// Fast retries, so that a failing task dies within a second.
const FAST: &[(&str, &str)] = &[
    ("BOTFLEET__SCHEDULER__BACKOFF_BASE_MS", "20"),
    ("BOTFLEET__SCHEDULER__BACKOFF_MAX_MS", "100"),
    ("BOTFLEET__SCHEDULER__POLL_INTERVAL_MS", "20"),
];

fn with(vars: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    FAST.iter().chain(vars).copied().collect()
}

/// Adds a task through the seed's endpoint; its id.
fn add_task(daemon: &Sidecar, task_type: &str, data: Value) -> String {
    let (status, answer) = daemon.post(
        "/api/bot/tasks/add",
        &json!({ "type": task_type, "data": data }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    answer["task_id"].as_str().unwrap().to_owned()
}

fn field(redis: &RedisServer, id: &str, name: &str) -> Option<String> {
    redis
        .cmd(&["HGET", &format!("bot:task:{id}"), name])
        .as_str()
        .map(str::to_owned)
}

fn wait_status(redis: &RedisServer, daemon: &Sidecar, id: &str, status: &str) {
    poll_until(WAIT, || {
        field(redis, id, "status").as_deref() == Some(status)
    })
    .unwrap_or_else(|_| {
        panic!(
            "task {id} not {status}: {:?}, last_error {:?}; log:\n{}",
            field(redis, id, "status"),
            field(redis, id, "last_error"),
            daemon.log()
        )
    });
}

fn is_dead(redis: &RedisServer, id: &str) -> bool {
    !redis.cmd(&["ZSCORE", "bot:tasks:dead", id]).is_nil()
}

/// 200 tasks processed by a command handler, at most 4 at once: each completed once, each
/// command given its task on stdin and in its environment.
#[test]
fn commands_process_two_hundred_tasks_four_at_a_time_each_once() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("running")).unwrap();
    std::fs::create_dir(dir.path().join("input")).unwrap();
    let script = r#"
        D="$HANDLER_DIR"
        touch "$D/running/$BOTFLEET_TASK_ID"
        ls "$D/running" | wc -l >> "$D/concurrency"
        cat > "$D/input/$BOTFLEET_TASK_ID.json"
        echo "$BOTFLEET_TASK_ID $BOTFLEET_TASK_TYPE $BOTFLEET_TASK_ATTEMPT" >> "$D/done"
        sleep 0.02
        rm "$D/running/$BOTFLEET_TASK_ID"
    "#;
    let settings = format!(
        r#"
        [scheduler]
        [[scheduler.handlers]]
        type = "screenshot"
        command = ["sh", "-c", {script:?}]
        concurrency = 4
        timeout_ms = 10000
        "#
    );
    let handler_dir = dir.path().to_str().unwrap();
    let daemon = Sidecar::start_with(
        &redis.url(),
        &settings,
        &with(&[])
            .into_iter()
            .chain([("HANDLER_DIR", handler_dir)])
            .collect::<Vec<_>>(),
    );
    let ids: Vec<String> = (0..200)
        .map(|i| add_task(&daemon, "screenshot", json!({ "shot": i })))
        .collect();
    for id in &ids {
        wait_status(&redis, &daemon, id, "completed");
    }
    // Each ran once, at its first attempt, with its own type.
    let done = std::fs::read_to_string(dir.path().join("done")).unwrap();
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in done.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts[1..], ["screenshot", "1"], "{line}");
        *runs.entry(parts[0]).or_default() += 1;
    }
    assert_eq!(runs.len(), 200);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert!(ids.iter().all(|id| runs.contains_key(id.as_str())));
    // Never more than 4 at once (each command counts those running as it starts).
    let seen: Vec<usize> = std::fs::read_to_string(dir.path().join("concurrency"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let most = *seen.iter().max().unwrap();
    assert!((2..=4).contains(&most), "at most {most} ran at once");
    // The task JSON on stdin.
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("input").join(format!("{}.json", ids[7])))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(input["id"], json!(ids[7]));
    assert_eq!(input["type"], json!("screenshot"));
    assert_eq!(input["data"], json!({ "shot": 7 }));
    assert_eq!(input["attempt"], json!(1));
    assert!(input["priority"].is_i64() && input["created_at"].is_string());
}

/// A command exiting 1 fails its attempt with its stderr: retried, then dead.
#[test]
fn a_failing_command_is_retried_then_dead_with_its_stderr() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = r#"
        [[scheduler.handlers]]
        type = "login"
        command = ["sh", "-c", "echo run >> \"$HANDLER_DIR/runs\"; echo \"boom at attempt $BOTFLEET_TASK_ATTEMPT\" >&2; exit 1"]
    "#;
    let handler_dir = dir.path().to_str().unwrap();
    let vars = with(&[("BOTFLEET__SCHEDULER__MAX_ATTEMPTS", "3")]);
    let vars: Vec<_> = vars
        .into_iter()
        .chain([("HANDLER_DIR", handler_dir)])
        .collect();
    let daemon = Sidecar::start_with(&redis.url(), settings, &vars);
    let id = add_task(&daemon, "login", json!({ "user": "ann" }));
    wait_status(&redis, &daemon, &id, "failed");
    assert!(is_dead(&redis, &id));
    assert_eq!(field(&redis, &id, "attempts").as_deref(), Some("3"));
    assert_eq!(
        field(&redis, &id, "last_error").as_deref(),
        Some("exit code 1; stderr: boom at attempt 3")
    );
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 3);
}

/// A command past its `timeout_ms` is killed (its whole process group) and the attempt fails.
#[test]
fn a_command_past_its_timeout_is_killed_and_fails() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = r#"
        [[scheduler.handlers]]
        type = "navigation"
        command = ["sh", "-c", "sleep 60 & echo $! > \"$HANDLER_DIR/child.pid\"; echo $$ > \"$HANDLER_DIR/cmd.pid\"; wait"]
        timeout_ms = 400
    "#;
    let handler_dir = dir.path().to_str().unwrap();
    let vars = with(&[("BOTFLEET__SCHEDULER__MAX_ATTEMPTS", "1")]);
    let vars: Vec<_> = vars
        .into_iter()
        .chain([("HANDLER_DIR", handler_dir)])
        .collect();
    let daemon = Sidecar::start_with(&redis.url(), settings, &vars);
    let id = add_task(&daemon, "navigation", json!({}));
    wait_status(&redis, &daemon, &id, "failed");
    assert!(is_dead(&redis, &id));
    let error = field(&redis, &id, "last_error").unwrap();
    assert!(
        error.starts_with("timed out after 400 ms: killed"),
        "{error}"
    );
    for file in ["cmd.pid", "child.pid"] {
        let pid: u32 = std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        poll_until(WAIT, || !process_is_alive(pid))
            .unwrap_or_else(|_| panic!("{file}: process {pid} survived the timeout"));
    }
}

/// What the test's webhook server received: (path, headers in lower case, body).
type Received = Arc<Mutex<Vec<(String, BTreeMap<String, String>, String)>>>;

/// A small HTTP/1.1 server on a free port: `/ok` answers 204, `/fail` 500 with a body.
fn webhook_server() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut headers = BTreeMap::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        headers.insert(name.trim().to_lowercase(), value.trim().to_owned());
                    }
                }
                let length = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                log.lock().unwrap().push((
                    path.clone(),
                    headers,
                    String::from_utf8_lossy(&body).into(),
                ));
                let answer = if path == "/ok" {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 20\r\nconnection: close\r\n\r\ndatabase unreachable"
                        .to_owned()
                };
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    (base, received)
}

/// Webhooks: a 2xx answer completes the task; a 500 fails the attempt (retried, then dead,
/// with the status and the answer's body as the error).
#[test]
fn webhooks_complete_on_2xx_and_fail_on_500() {
    let redis = RedisServer::start().unwrap();
    let (base, received) = webhook_server();
    let settings = format!(
        r#"
        [[scheduler.handlers]]
        type = "job_accept"
        url = "{base}/ok"
        concurrency = 2

        [[scheduler.handlers]]
        type = "job_reject"
        url = "{base}/fail"
        timeout_ms = 5000
        "#
    );
    let daemon = Sidecar::start_with(
        &redis.url(),
        &settings,
        &with(&[("BOTFLEET__SCHEDULER__MAX_ATTEMPTS", "2")]),
    );
    let accepted = add_task(&daemon, "job_accept", json!({ "job": 41 }));
    let rejected = add_task(&daemon, "job_reject", json!({ "job": 42 }));
    wait_status(&redis, &daemon, &accepted, "completed");
    wait_status(&redis, &daemon, &rejected, "failed");
    assert!(is_dead(&redis, &rejected));
    assert_eq!(
        field(&redis, &rejected, "last_error").as_deref(),
        Some("webhook answered HTTP 500: database unreachable")
    );
    let received = received.lock().unwrap();
    let calls = |path: &str| received.iter().filter(|(p, _, _)| p == path).count();
    assert_eq!((calls("/ok"), calls("/fail")), (1, 2));
    let (_, headers, body) = received.iter().find(|(p, _, _)| p == "/ok").unwrap();
    assert_eq!(headers.get("x-botfleet-task-id"), Some(&accepted));
    assert_eq!(
        headers.get("x-botfleet-task-type").map(String::as_str),
        Some("job_accept")
    );
    assert_eq!(
        headers.get("x-botfleet-task-attempt").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["id"], json!(accepted));
    assert_eq!(body["data"], json!({ "job": 41 }));
}

/// Bad handler settings refuse the start (exit 2), naming every problem at once.
#[test]
fn bad_handler_settings_refuse_the_start_naming_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let settings = r#"
        [[scheduler.handlers]]
        type = "login"
        command = ["true"]
        url = "http://127.0.0.1:9/x"

        [[scheduler.handlers]]
        type = "navigation"

        [[scheduler.handlers]]
        type = "screenshot"
        command = []

        [[scheduler.handlers]]
        type = "job_check"
        url = "ftp://files.example/x"

        [[scheduler.handlers]]
        type = "job_accept"
        command = ["true"]
        concurrency = 0
        timeout_ms = 0

        [[scheduler.handlers]]
        type = "login"
        command = ["true"]

        [[scheduler.handlers]]
        type = ""
        url = "http://127.0.0.1:9/x"
        retries = 3
    "#;
    std::fs::write(dir.path().join("bad.toml"), settings).unwrap();
    let out = support::process::run_botfleet(
        dir.path(),
        &["run", "--config", "bad.toml"],
        &[("REDIS_URL", "redis://127.0.0.1:1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for (key, words) in [
        ("scheduler.handlers[0]:", "got both"),
        ("scheduler.handlers[1]:", "got neither"),
        ("scheduler.handlers[2].command:", "argv"),
        ("scheduler.handlers[3].url:", "http or https"),
        ("scheduler.handlers[4].concurrency:", "got 0"),
        ("scheduler.handlers[4].timeout_ms:", "got 0"),
        (
            "scheduler.handlers[5].type:",
            "has a handler already (scheduler.handlers[0])",
        ),
        ("scheduler.handlers[6].type:", "expected a task type"),
        ("scheduler.handlers[6].retries:", "unknown key"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with(key) && line.contains(words)),
            "no line `{key} ... {words}` in:\n{stderr}"
        );
    }
}

/// A password in a webhook's URL is never printed: `config check` shows it redacted.
#[test]
fn webhook_passwords_are_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let settings = r#"
        [[scheduler.handlers]]
        type = "job_check"
        url = "https://bot:hook-pa55@hooks.example/job_check"
    "#;
    std::fs::write(dir.path().join("hooks.toml"), settings).unwrap();
    let out =
        support::process::run_botfleet(dir.path(), &["config", "check", "-c", "hooks.toml"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("https://bot:***@hooks.example/job_check"),
        "{stdout}"
    );
    assert!(!stdout.contains("hook-pa55"), "{stdout}");
}
