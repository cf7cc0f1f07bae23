//! The HTTP worker protocol and `botfleet task work`: a fleet and its HTTP API on a real
//! redis-server, workers that speak only HTTP over real sockets (the built binary, as a user
//! runs it, or raw requests), tasks processed exactly once, retried, dead-lettered and retried
//! again from the dead letters, a worker killed with -9, stale leases refused, the long poll
//! woken by an enqueue, bad input, the token, and claims and completions through a Redis
//! outage. Standalone Redis only: the tests kill servers and workers.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use botfleet::actors::scheduler::NewTask;
use botfleet::http::HttpApi;
use botfleet::settings::{Secret, Settings};
use botfleet::storage::Mode;
use botfleet::Fleet;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::process::{process_is_alive, spawn_tied_to_process};
use support::{poll_until_async, suite_settings, RedisServer};

/// A fleet and its HTTP API on `127.0.0.1:0`.
struct Daemon {
    fleet: Fleet,
    http: HttpApi,
    base: String,
}

impl Daemon {
    async fn start(settings: Settings) -> Daemon {
        let fleet = Fleet::start(settings).await.unwrap();
        let http = HttpApi::start(fleet.clone()).unwrap();
        let base = format!("http://{}", http.local_addr());
        Daemon { fleet, http, base }
    }

    async fn stop(self) {
        self.http.stop().await;
        self.fleet.shutdown().await.unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        answer(response).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send("POST", path, None, &body.to_string()).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = reqwest::Client::new()
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.unwrap()).await
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Suite settings: quick polls and retries, the API on a free port.
fn settings(url: &str) -> Settings {
    let mut s = suite_settings(url);
    s.api.bind = "127.0.0.1:0".into();
    s.heartbeat.enabled = false;
    s.scheduler.poll_interval_ms = 20;
    s.scheduler.backoff_base_ms = 20;
    s.scheduler.backoff_max_ms = 50;
    s
}

/// `botfleet task work` as a user runs it, in `dir`, with its stderr in `dir/worker-N.log`
/// and its stdout in `dir/worker-N.out` (files: a command's leftover child may hold them open
/// after the worker exits).
struct Worker {
    child: Child,
    log: PathBuf,
    out: PathBuf,
}

impl Worker {
    fn start(dir: &Path, base: &str, args: &[&str], command: &str) -> Worker {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("worker-{n}.log"));
        let out = dir.join(format!("worker-{n}.out"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
        cmd.args(["task", "work", "--url", base])
            .args(args)
            .args(["--", "sh", "-c", command])
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "botfleet=info")
            .env("DIR", dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        Worker {
            child: spawn_tied_to_process(cmd).unwrap(),
            log,
            out,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the worker to exit; its code and stdout.
    async fn wait(mut self, within: Duration) -> (i32, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&self.out).unwrap_or_default();
                return (status.code().unwrap_or(-1), out);
            }
            assert!(
                started.elapsed() < within,
                "worker still running after {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn counts(daemon: &Daemon) -> (u64, u64, u64, u64) {
    let c = daemon.fleet.scheduler().counts().await.unwrap();
    (c.pending, c.delayed, c.processing, c.dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_run_once_each_by_four_concurrent_commands() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let tasks: Vec<NewTask> = (0..1_000)
        .map(|i| NewTask::new("job_check", &json!({ "i": i })))
        .collect();
    let ids = daemon.fleet.scheduler().enqueue_bulk(tasks).await.unwrap();
    let worker = Worker::start(
        dir.path(),
        &daemon.base,
        &["--type", "job_check", "--concurrency", "4"],
        r#"echo "$BOTFLEET_TASK_ID $BOTFLEET_TASK_TYPE $BOTFLEET_TASK_ATTEMPT $(cat)" >> "$DIR/done""#,
    );
    let done = dir.path().join("done");
    poll_until_async(Duration::from_secs(120), || async {
        lines(&done).len() >= ids.len() && counts(&daemon).await == (0, 0, 0, 0)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {} done; log:\n{}",
            lines(&done).len(),
            ids.len(),
            worker.log()
        )
    });
    let seen = lines(&done);
    assert_eq!(seen.len(), ids.len(), "a task ran twice");
    let mut by_id = BTreeMap::new();
    for line in &seen {
        let (id, rest) = line.split_once(' ').unwrap();
        by_id.insert(id.to_string(), rest.to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let rest = by_id.get(id).unwrap_or_else(|| panic!("{id} never ran"));
        // Type and attempt in the environment, the task as JSON on stdin.
        let (env, input) = rest.split_once(' ').unwrap().1.split_once(' ').unwrap();
        assert_eq!(env, "1", "{id}: attempt");
        assert!(rest.starts_with("job_check 1 "), "{rest}");
        let input: Value = serde_json::from_str(input).unwrap();
        assert_eq!(input["id"], json!(id));
        assert_eq!(input["data"], json!({ "i": i }));
        let hash = format!("bot:task:{id}");
        assert_eq!(
            server.cmd(&["HGET", &hash, "status"]).as_str(),
            Some("completed")
        );
        assert_eq!(server.cmd(&["HGET", &hash, "attempts"]).as_str(), Some("1"));
    }
    // SIGTERM: nothing runs, so the worker stops at once, abandoning its waiting claim.
    worker.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let (code, out) = worker.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "stdout: {out}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(out.contains("1000 completed, 0 failed"), "{out}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_retried_then_dead_then_retried_from_the_dead_letters() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let (status, added) = daemon
        .post(
            "/api/tasks",
            json!({ "type": "job_reject", "data": {"n": 1}, "max_attempts": 3 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    // Fails until the file `fixed` exists; says which attempt on stderr.
    let worker = Worker::start(
        dir.path(),
        &daemon.base,
        &["--type", "job_reject", "--type", "login"],
        r#"if [ -e "$DIR/fixed" ]; then echo "$BOTFLEET_TASK_ATTEMPT" >> "$DIR/done"; exit 0; fi
           echo "some noise" >&2; echo "broken at attempt $BOTFLEET_TASK_ATTEMPT" >&2; exit 1"#,
    );
    poll_until_async(Duration::from_secs(30), || async {
        counts(&daemon).await.3 == 1
    })
    .await
    .unwrap_or_else(|_| panic!("never dead; log:\n{}", worker.log()));
    let (status, dead) = daemon.get("/api/tasks/dead").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dead["total"], 1);
    let task = &dead["tasks"][0];
    assert_eq!(task["id"], json!(id));
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 3);
    // The tail of stderr, after the exit status.
    assert_eq!(
        task["last_error"],
        "exit status 1: some noise\nbroken at attempt 3"
    );
    assert!(!dir.path().join("done").exists());

    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let (status, retried) = daemon
        .post("/api/tasks/dead/retry", json!({ "ids": [id, "not-dead"] }))
        .await;
    assert_eq!(
        (status, retried["retried"].clone()),
        (StatusCode::OK, json!(1))
    );
    let done = dir.path().join("done");
    poll_until_async(Duration::from_secs(30), || async {
        !lines(&done).is_empty() && counts(&daemon).await == (0, 0, 0, 0)
    })
    .await
    .unwrap_or_else(|_| panic!("never completed; log:\n{}", worker.log()));
    // A fresh set of attempts: the first one after the retry succeeded.
    assert_eq!(lines(&done), ["1"]);
    let (_, task) = daemon.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(
        (task["status"].as_str(), task["attempts"].as_u64()),
        (Some("completed"), Some(1))
    );
    worker.signal(libc::SIGINT);
    let (code, out) = worker.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0);
    assert!(out.contains("1 completed, 3 failed"), "{out}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_loses_it_to_the_reaper_and_it_completes_once() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let id = daemon
        .fleet
        .scheduler()
        .enqueue(NewTask::raw("navigation", "{}"))
        .await
        .unwrap();
    // The first attempt records its pid and hangs; later ones finish.
    let command = r#"echo "$BOTFLEET_TASK_ATTEMPT $$ $(date +%s%3N)" >> "$DIR/started"
        if [ "$BOTFLEET_TASK_ATTEMPT" = 1 ]; then exec sleep 60; fi
        echo "$BOTFLEET_TASK_ID" >> "$DIR/done""#;
    let args = ["--type", "navigation", "--lease-ms", "1000"];
    let first = Worker::start(dir.path(), &daemon.base, &args, command);
    let started = dir.path().join("started");
    poll_until_async(Duration::from_secs(20), || async {
        !lines(&started).is_empty()
    })
    .await
    .unwrap_or_else(|_| panic!("never started; log:\n{}", first.log()));
    let shell: u32 = lines(&started)[0]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let deadline_ms = server
        .cmd(&["ZSCORE", "bot:tasks:processing", &id])
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .expect("claimed, with a deadline");
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    // The command dies with its worker.
    poll_until_async(Duration::from_secs(5), || async {
        !process_is_alive(shell)
    })
    .await
    .expect("the killed worker's command still runs");

    let second = Worker::start(dir.path(), &daemon.base, &args, command);
    let done = dir.path().join("done");
    poll_until_async(Duration::from_secs(20), || async {
        !lines(&done).is_empty() && counts(&daemon).await == (0, 0, 0, 0)
    })
    .await
    .unwrap_or_else(|_| panic!("never completed; log:\n{}", second.log()));
    let waited = killed_at.elapsed();
    assert_eq!(lines(&done), std::slice::from_ref(&id));
    assert_eq!(lines(&started).len(), 2);
    assert!(
        lines(&started)[1].starts_with("2 "),
        "{:?}",
        lines(&started)
    );
    // It came back once its 1 s lease ran out, not before.
    let again_ms: u64 = lines(&started)[1]
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        again_ms >= deadline_ms,
        "ran again at {again_ms}, deadline {deadline_ms}"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    let hash = format!("bot:task:{id}");
    assert_eq!(
        server.cmd(&["HGET", &hash, "status"]).as_str(),
        Some("completed")
    );
    assert_eq!(server.cmd(&["HGET", &hash, "attempts"]).as_str(), Some("2"));
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait(Duration::from_secs(10)).await.0, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_cannot_extend_complete_or_fail_its_task() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let (_, added) = daemon
        .post("/api/tasks", json!({ "type": "login", "id": "t-1" }))
        .await;
    assert_eq!(added["id"], "t-1");
    let claim = json!({ "types": ["login"], "lease_ms": 200 });
    let (status, first) = daemon.post("/api/tasks/claim", claim.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first = first["tasks"][0].clone();
    assert_eq!(
        (first["id"].as_str(), first["attempt"].as_u64()),
        (Some("t-1"), Some(1))
    );
    let stale = first["lease"].as_str().unwrap().to_string();
    assert_eq!(stale.len(), 32);
    // Its lease runs out; another claim reaps it and takes it again.
    let deadline = first["deadline_ms"].as_u64().unwrap();
    poll_until_async(Duration::from_secs(5), || async {
        botfleet::clock::now_ms() > deadline
    })
    .await
    .unwrap();
    let (_, second) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "wait_ms": 5000 }),
        )
        .await;
    let second = second["tasks"][0].clone();
    assert_eq!(second["attempt"], 2, "{second}");
    let fresh = second["lease"].as_str().unwrap().to_string();
    assert_ne!(fresh, stale);

    let before = server.cmd(&["HGETALL", "bot:task:t-1"]);
    let score = server.cmd(&["ZSCORE", "bot:tasks:processing", "t-1"]);
    for (what, body) in [
        ("extend", json!({ "lease": stale, "lease_ms": 60000 })),
        ("complete", json!({ "lease": stale, "result": {"x": 1} })),
        ("fail", json!({ "lease": stale, "error": "late" })),
    ] {
        let (status, refused) = daemon.post(&format!("/api/tasks/t-1/{what}"), body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {refused}");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("no longer current"),
            "{refused}"
        );
    }
    assert_eq!(server.cmd(&["HGETALL", "bot:task:t-1"]), before);
    assert_eq!(
        server.cmd(&["ZSCORE", "bot:tasks:processing", "t-1"]),
        score
    );

    // The current holder extends and completes; then its lease is stale too.
    let (status, extended) = daemon
        .post(
            "/api/tasks/t-1/extend",
            json!({ "lease": fresh, "lease_ms": 60000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(extended["deadline_ms"].as_u64().unwrap() > botfleet::clock::now_ms() + 50_000);
    let (status, completed) = daemon
        .post(
            "/api/tasks/t-1/complete",
            json!({ "lease": fresh, "result": {"ok": true} }),
        )
        .await;
    assert_eq!(
        (status, completed),
        (StatusCode::OK, json!({ "status": "completed" }))
    );
    let (status, _) = daemon
        .post("/api/tasks/t-1/complete", json!({ "lease": fresh }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, task) = daemon.get("/api/tasks/t-1").await;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"], "{\"ok\":true}");
    assert!(
        task.get("lease").is_none(),
        "the lease is never shown: {task}"
    );
    let (status, _) = daemon
        .post("/api/tasks/nope/complete", json!({ "lease": fresh }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_returns_as_soon_as_a_task_is_enqueued() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    // Only the enqueue's wake-up can make the claim return quickly: its own re-check comes
    // 5 s later.
    s.scheduler.poll_interval_ms = 5_000;
    let daemon = Daemon::start(s).await;
    // Nothing comes: an empty list after wait_ms.
    let t0 = Instant::now();
    let (status, empty) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["screenshot"], "wait_ms": 300 }),
        )
        .await;
    assert_eq!(
        (status, empty["tasks"].clone()),
        (StatusCode::OK, json!([]))
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );

    let mut response = reqwest::Client::new()
        .post(daemon.url("/api/tasks/claim"))
        .body(json!({ "types": ["screenshot", "login"], "max": 5, "wait_ms": 20000 }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A waiting claim writes a space now and then: once one arrives it is surely waiting.
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(first.trim_ascii(), b"");
    let added = Instant::now();
    let (_, task) = daemon
        .post("/api/tasks", json!({ "type": "screenshot" }))
        .await;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let took = added.elapsed();
    let claimed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(claimed["tasks"][0]["id"], task["id"], "{claimed}");
    assert!(
        took < Duration::from_millis(2_500),
        "the claim took {took:?}"
    );
    println!("a waiting claim returned {took:?} after the enqueue");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_delayed_tasks_are_listed_retried_deleted_and_promoted() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    for id in ["d-1", "d-2", "d-3"] {
        let body = json!({ "type": "job_accept", "id": id, "max_attempts": 1 });
        assert_eq!(daemon.post("/api/tasks", body).await.0, StatusCode::CREATED);
    }
    // The same id again: nothing changed, 200.
    let again = json!({ "type": "login", "id": "d-1" });
    assert_eq!(
        daemon.post("/api/tasks", again).await,
        (StatusCode::OK, json!({ "id": "d-1" }))
    );
    let (_, claimed) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["job_accept"], "max": 10 }),
        )
        .await;
    let claimed = claimed["tasks"].as_array().unwrap().clone();
    assert_eq!(claimed.len(), 3);
    for task in &claimed {
        let path = format!("/api/tasks/{}/fail", task["id"].as_str().unwrap());
        let (status, failed) = daemon
            .post(&path, json!({ "lease": task["lease"], "error": "no" }))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(failed, json!({ "status": "failed", "retry_at_ms": null }));
    }
    let (_, dead) = daemon.get("/api/tasks/dead?limit=2").await;
    assert_eq!(
        (
            dead["total"].as_u64(),
            dead["tasks"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );
    assert_eq!(dead["stale"], false);
    let (status, deleted) = daemon.send("DELETE", "/api/tasks/dead/d-3", None, "").await;
    assert_eq!(
        (status, deleted),
        (StatusCode::OK, json!({ "deleted": true }))
    );
    assert_eq!(server.cmd(&["EXISTS", "bot:task:d-3"]).as_int(), Some(0));
    assert_eq!(
        daemon
            .send("DELETE", "/api/tasks/dead/d-3", None, "")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, retried) = daemon
        .post("/api/tasks/dead/retry", json!({ "all": true }))
        .await;
    assert_eq!(retried, json!({ "retried": 2 }));
    assert_eq!(counts(&daemon).await, (2, 0, 0, 0));
    let (_, again) = daemon.get("/api/tasks/d-1").await;
    assert_eq!(
        (again["status"].as_str(), again["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );
    assert_eq!(again["last_error"], "no");

    // A delayed task: listed, promoted now, claimable at once.
    let (_, later) = daemon
        .post(
            "/api/tasks",
            json!({ "type": "screenshot", "id": "later", "delay_ms": 600000 }),
        )
        .await;
    assert_eq!(later["id"], "later");
    let (_, delayed) = daemon.get("/api/tasks/delayed").await;
    assert_eq!(delayed["total"], 1);
    assert_eq!(delayed["tasks"][0]["id"], "later");
    assert!(delayed["tasks"][0]["run_at"].is_string());
    let (_, none) = daemon
        .post("/api/tasks/claim", json!({ "types": ["screenshot"] }))
        .await;
    assert_eq!(none["tasks"], json!([]));
    let (status, promoted) = daemon
        .post("/api/tasks/delayed/later/promote", json!({}))
        .await;
    assert_eq!(
        (status, promoted),
        (StatusCode::OK, json!({ "promoted": true }))
    );
    assert_eq!(
        daemon
            .post("/api/tasks/delayed/later/promote", json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, now) = daemon
        .post("/api/tasks/claim", json!({ "types": ["screenshot"] }))
        .await;
    assert_eq!(now["tasks"][0]["id"], "later");
    daemon.stop().await;
}

/// Keys in Redis, to show a refused request stored nothing.
fn keys(server: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = server
        .cmd(&["KEYS", "bot:*"])
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_400_naming_the_field_and_stores_nothing() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.scheduler.max_data_bytes = 100;
    s.scheduler.task_types = vec!["alpha".into(), "beta".into()];
    let daemon = Daemon::start(s).await;
    let (_, t) = daemon
        .post("/api/tasks", json!({ "type": "alpha", "id": "a-1" }))
        .await;
    assert_eq!(t["id"], "a-1");
    let before = keys(&server);
    let post = |path: &'static str, body: &'static str| (path, body);
    let cases = [
        // POST /api/tasks
        (post("/api/tasks", r#"{"type": "login"}"#), Some("type")),
        (post("/api/tasks", r#"{"data": {}}"#), Some("type")),
        (post("/api/tasks", r#"{"type": 3}"#), Some("type")),
        (
            post("/api/tasks", r#"{"type": "alpha", "colour": 1}"#),
            Some("colour"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "id": "a b"}"#),
            Some("id"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "id": ""}"#),
            Some("id"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "id": "dead"}"#),
            Some("id"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "priority": 1000001}"#),
            Some("priority"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "priority": "high"}"#),
            Some("priority"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "delay_ms": -1}"#),
            Some("delay_ms"),
        ),
        (
            post("/api/tasks", r#"{"type": "alpha", "max_attempts": 0}"#),
            Some("max_attempts"),
        ),
        (
            post(
                "/api/tasks",
                r#"{"type": "alpha", "data": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            ),
            Some("data"),
        ),
        (post("/api/tasks", r#"{"type": "alpha""#), None),
        (post("/api/tasks", r#"[1]"#), None),
        (
            post("/api/bot/tasks/add", r#"{"type": "login"}"#),
            Some("type"),
        ),
        // claim
        (post("/api/tasks/claim", r#"{}"#), Some("types")),
        (post("/api/tasks/claim", r#"{"types": []}"#), Some("types")),
        (
            post("/api/tasks/claim", r#"{"types": ["gamma"]}"#),
            Some("types"),
        ),
        (
            post("/api/tasks/claim", r#"{"types": ["*"]}"#),
            Some("types"),
        ),
        (
            post("/api/tasks/claim", r#"{"types": ["alpha"], "max": 0}"#),
            Some("max"),
        ),
        (
            post("/api/tasks/claim", r#"{"types": ["alpha"], "max": 101}"#),
            Some("max"),
        ),
        (
            post(
                "/api/tasks/claim",
                r#"{"types": ["alpha"], "wait_ms": 60001}"#,
            ),
            Some("wait_ms"),
        ),
        (
            post("/api/tasks/claim", r#"{"types": ["alpha"], "lease_ms": 5}"#),
            Some("lease_ms"),
        ),
        (
            post("/api/tasks/claim", r#"{"types": ["alpha"], "lease": "x"}"#),
            Some("lease"),
        ),
        // a leaseholder's calls
        (post("/api/tasks/a-1/complete", r#"{}"#), Some("lease")),
        (
            post("/api/tasks/a-1/complete", r#"{"lease": ""}"#),
            Some("lease"),
        ),
        (
            post(
                "/api/tasks/a-1/complete",
                r#"{"lease": "x", "result": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            ),
            Some("result"),
        ),
        (
            post("/api/tasks/a-1/fail", r#"{"lease": "x"}"#),
            Some("error"),
        ),
        (
            post(
                "/api/tasks/a-1/extend",
                r#"{"lease": "x", "lease_ms": 86400001}"#,
            ),
            Some("lease_ms"),
        ),
        (
            post("/api/tasks/a-1/extend", r#"{"lease": "x", "until": 1}"#),
            Some("until"),
        ),
        // dead letters and delayed tasks
        (post("/api/tasks/dead/retry", r#"{}"#), Some("ids")),
        (post("/api/tasks/dead/retry", r#"{"ids": []}"#), Some("ids")),
        (
            post("/api/tasks/dead/retry", r#"{"ids": ["a b"]}"#),
            Some("ids"),
        ),
        (
            post("/api/tasks/dead/retry", r#"{"all": false}"#),
            Some("all"),
        ),
        (
            post("/api/tasks/dead/retry", r#"{"all": true, "ids": ["x"]}"#),
            Some("all"),
        ),
    ];
    for ((path, body), field) in cases {
        let (status, refused) = daemon.send("POST", path, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {refused}");
        assert_eq!(refused["field"].as_str(), field, "{path} {body}: {refused}");
    }
    // The allowed types are named.
    let (_, refused) = daemon.post("/api/tasks", json!({ "type": "login" })).await;
    assert!(
        refused["error"].as_str().unwrap().contains("alpha, beta"),
        "{refused}"
    );
    // An error over 8 KiB, an id over 128 bytes in the path.
    let long = "e".repeat(8_193);
    let (status, refused) = daemon
        .post(
            "/api/tasks/a-1/fail",
            json!({ "lease": "x", "error": long }),
        )
        .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("error"))
    );
    let path = format!("/api/tasks/{}", "i".repeat(129));
    assert_eq!(daemon.get(&path).await.1["field"], "id");
    let path = format!("/api/tasks/{}/complete", "i".repeat(129));
    assert_eq!(
        daemon.post(&path, json!({ "lease": "x" })).await.1["field"],
        "id"
    );
    for query in ["limit=0", "limit=1001", "limit=x", "colour=red"] {
        let (status, refused) = daemon.get(&format!("/api/tasks/dead?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {refused}");
        let (status, _) = daemon.get(&format!("/api/tasks/delayed?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    // A body over api.body_limit_bytes.
    let huge = format!(r#"{{"type": "alpha", "data": "{}"}}"#, "x".repeat(70_000));
    let (status, _) = daemon.send("POST", "/api/tasks", None, &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(keys(&server), before, "a refused request stored something");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_task_types_and_the_token_on_every_mutation() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.scheduler.task_types = vec!["*".into()];
    s.api.token = Secret::new("tok-1");
    let daemon = Daemon::start(s).await;
    let before = keys(&server);
    let mutations = [
        ("POST", "/api/tasks", r#"{"type": "any.type:1"}"#),
        ("POST", "/api/tasks/claim", r#"{"types": ["*"]}"#),
        ("POST", "/api/tasks/x/extend", r#"{"lease": "l"}"#),
        ("POST", "/api/tasks/x/complete", r#"{"lease": "l"}"#),
        (
            "POST",
            "/api/tasks/x/fail",
            r#"{"lease": "l", "error": "e"}"#,
        ),
        ("POST", "/api/tasks/dead/retry", r#"{"all": true}"#),
        ("DELETE", "/api/tasks/dead/x", ""),
        ("POST", "/api/tasks/delayed/x/promote", ""),
    ];
    for (method, path, body) in mutations {
        for token in [None, Some("wrong")] {
            let (status, _) = daemon.send(method, path, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
        }
    }
    assert_eq!(keys(&server), before);
    // Reads need no token.
    assert_eq!(daemon.get("/api/tasks/dead").await.0, StatusCode::OK);
    // With the token: any well-formed type, claimed with "*".
    let (status, added) = daemon
        .send(
            "POST",
            "/api/tasks",
            Some("tok-1"),
            r#"{"type": "any.type:1", "data": [1, 2]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let (status, refused) = daemon
        .send(
            "POST",
            "/api/tasks",
            Some("tok-1"),
            r#"{"type": "no spaces"}"#,
        )
        .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("type"))
    );
    let (_, claimed) = daemon
        .send(
            "POST",
            "/api/tasks/claim",
            Some("tok-1"),
            r#"{"types": ["*"]}"#,
        )
        .await;
    assert_eq!(claimed["tasks"][0]["id"], added["id"]);
    assert_eq!(claimed["tasks"][0]["data"], json!([1, 2]));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_completions_during_an_outage_run_on_the_fallback_and_are_replayed() {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 300;
    s.storage.redis.ping_interval_ms = 50;
    s.storage.last_known.refresh_interval_ms = 50;
    let daemon = Daemon::start(s).await;
    // Claimed from Redis before the outage.
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "before" }))
        .await;
    let (_, claimed) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "lease_ms": 60000 }),
        )
        .await;
    let before_lease = claimed["tasks"][0]["lease"].as_str().unwrap().to_string();
    // Once the last-known copy has read the claimed task back, Redis goes away.
    poll_until_async(Duration::from_secs(10), || async {
        daemon.fleet.storage().stats().last_known_pending == 0
    })
    .await
    .unwrap();
    server.kill9();
    let (status, added) = daemon
        .post(
            "/api/tasks",
            json!({ "type": "navigation", "id": "during" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_ne!(daemon.fleet.storage().mode(), Mode::Redis);
    let (_, claimed) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["navigation", "login"], "max": 10 }),
        )
        .await;
    let tasks = claimed["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "only the task added during the outage: {claimed}"
    );
    assert_eq!(tasks[0]["id"], "during");
    let during_lease = tasks[0]["lease"].as_str().unwrap().to_string();
    for (id, lease) in [("during", &during_lease), ("before", &before_lease)] {
        let (status, done) = daemon
            .post(
                &format!("/api/tasks/{id}/complete"),
                json!({ "lease": lease }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{id}: {done}");
    }
    // A stale lease is refused on the fallback too.
    let (status, _) = daemon
        .post(
            "/api/tasks/before/complete",
            json!({ "lease": before_lease }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, task) = daemon.get("/api/tasks/during").await;
    assert_eq!(
        (task["status"].as_str(), task["stale"].as_bool()),
        (Some("completed"), Some(true))
    );

    server.restart().unwrap();
    poll_until_async(Duration::from_secs(30), || async {
        daemon.fleet.storage().mode() == Mode::Redis
    })
    .await
    .unwrap();
    for id in ["before", "during"] {
        let hash = format!("bot:task:{id}");
        assert_eq!(
            server.cmd(&["HGET", &hash, "status"]).as_str(),
            Some("completed"),
            "{id}"
        );
        assert_eq!(
            server.cmd(&["HGET", &hash, "attempts"]).as_str(),
            Some("1"),
            "{id}"
        );
    }
    for set in ["queue", "processing", "delayed", "dead"] {
        let key = format!("bot:tasks:{set}");
        assert_eq!(server.cmd(&["ZCARD", &key]).as_int(), Some(0), "{key}");
    }
    daemon.stop().await;
}

#[test]
fn task_types_are_checked_at_start_all_problems_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    let load = |toml: &str| {
        std::fs::write(&file, toml).unwrap();
        Settings::load_with_env(Some(&file), Vec::<(String, String)>::new())
    };
    let err =
        load("[scheduler]\ntask_types = [\"ok\", \"a b\", \"ok\", \"*\", \"\"]\n").unwrap_err();
    let text = err.to_string();
    for part in [
        "\"a b\"",
        "listed twice",
        "must be the only entry",
        "1 to 128",
    ] {
        assert!(text.contains(part), "{part} missing in:\n{text}");
    }
    assert!(err.problems().len() >= 4, "{text}");
    assert!(load("[scheduler]\ntask_types = []\n").is_err());
    let open = load("[scheduler]\ntask_types = [\"*\"]\n").unwrap();
    assert!(open.scheduler.allows_task_type("any.thing"));
    assert!(!open.scheduler.allows_task_type("no spaces"));
    let listed = load("[scheduler]\ntask_types = [\"a\"]\n").unwrap();
    assert!(!listed.scheduler.allows_task_type("login"));
    // The command line checks its own arguments too: bad usage exits 2 naming the argument.
    let out = support::process::run_botfleet(
        dir.path(),
        &["task", "work", "--type", "a b", "--", "true"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--type"),
        "{out:?}"
    );
    let out = support::process::run_botfleet(dir.path(), &["task", "work", "--type", "a"], &[]);
    assert_eq!(out.status.code(), Some(2), "no command: {out:?}");
    // No daemon there: exit 1 naming the URL.
    let out = support::process::run_botfleet(
        dir.path(),
        &[
            "task",
            "work",
            "--type",
            "a",
            "--url",
            "http://127.0.0.1:9",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_many_leaseholders_each_get_their_own_answer() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let tasks: Vec<NewTask> = (0..200)
        .map(|i| NewTask::new("job_check", &json!({ "i": i })))
        .collect();
    daemon.fleet.scheduler().enqueue_bulk(tasks).await.unwrap();
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let (_, c) = daemon
            .post(
                "/api/tasks/claim",
                json!({ "types": ["job_check"], "max": 100 }),
            )
            .await;
        claimed.extend(c["tasks"].as_array().unwrap().clone());
    }
    assert_eq!(claimed.len(), 200);
    // Each task completed with its lease and, at the same time, with a forged one; every
    // other task failed with its lease.
    let calls = claimed.iter().enumerate().flat_map(|(i, t)| {
        let id = t["id"].as_str().unwrap().to_string();
        let what = if i % 2 == 0 { "complete" } else { "fail" };
        let good = json!({ "lease": t["lease"], "error": "e" });
        let forged = json!({ "lease": "0123456789abcdef0123456789abcdef", "error": "e" });
        let mut good = good;
        if what == "complete" {
            good.as_object_mut().unwrap().remove("error");
        }
        [
            (format!("/api/tasks/{id}/{what}"), good, true),
            (format!("/api/tasks/{id}/fail"), forged, false),
        ]
    });
    let answers = futures::future::join_all(calls.map(|(path, body, good)| {
        let daemon = &daemon;
        async move { (daemon.post(&path, body).await, good) }
    }))
    .await;
    for ((status, body), good) in answers {
        let expected = if good {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(status, expected, "{body}");
    }
    // The failed half waits for its retry (or is back in the queue already: a short backoff).
    let (pending, delayed, processing, dead) = counts(&daemon).await;
    assert_eq!((pending + delayed, processing, dead), (100, 0, 0));
    daemon.stop().await;
}

/// Claims up to `max` login tasks; their (id, lease) in order.
async fn claim_logins(daemon: &Daemon, max: usize) -> Vec<(String, String)> {
    let (status, claimed) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "max": max, "lease_ms": 60000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    claimed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["lease"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_carrying_reports_applies_each_alone_and_claims_more_in_one_request() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    for i in 1..=5 {
        daemon
            .post(
                "/api/tasks",
                json!({ "type": "login", "id": format!("t-{i}") }),
            )
            .await;
    }
    let held = claim_logins(&daemon, 3).await;
    let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["t-1", "t-2", "t-3"]);
    let t2_before = server.cmd(&["HGETALL", "bot:task:t-2"]);
    let t2_score = server.cmd(&["ZSCORE", "bot:tasks:processing", "t-2"]);
    let forged = "0123456789abcdef0123456789abcdef";
    let (status, answer) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "max": 5, "lease_ms": 60000, "report": [
                { "id": "t-1", "lease": held[0].1, "result": { "ok": 1 } },
                { "id": "t-2", "lease": forged },
                { "id": "nope", "lease": forged },
                { "id": "t-3", "lease": held[2].1, "error": "boom" },
                { "id": "t-2" },
                { "id": "t-2", "lease": forged, "result": 1, "error": "both" },
                "not an object",
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reported = answer["reported"].as_array().unwrap();
    assert_eq!(reported.len(), 7, "{answer}");
    assert_eq!(reported[0], json!({ "id": "t-1", "status": "completed" }));
    assert_eq!(reported[1]["id"], "t-2");
    assert_eq!(reported[1]["error"]["status"], 409, "{answer}");
    assert_eq!(reported[2]["error"]["status"], 404, "{answer}");
    assert_eq!(reported[3]["status"], "pending", "{answer}");
    assert!(reported[3]["retry_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(reported[4]["error"]["status"], 400, "{answer}");
    assert_eq!(reported[4]["error"]["field"], "report[4]", "{answer}");
    assert_eq!(reported[5]["error"]["field"], "report[5].error", "{answer}");
    assert_eq!(reported[6]["error"]["field"], "report[6]", "{answer}");
    assert_eq!(reported[6]["id"], Value::Null);
    // The claim still went out: the two left, then t-3 back from its retry (short backoff)
    // when it was already due.
    let claimed: Vec<&str> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        claimed.starts_with(&["t-4", "t-5"]),
        "claimed with the reports: {answer}"
    );
    // The refused entries changed nothing.
    assert_eq!(server.cmd(&["HGETALL", "bot:task:t-2"]), t2_before);
    assert_eq!(
        server.cmd(&["ZSCORE", "bot:tasks:processing", "t-2"]),
        t2_score
    );
    let (_, t1) = daemon.get("/api/tasks/t-1").await;
    assert_eq!(
        (t1["status"].as_str(), t1["result"].as_str()),
        (Some("completed"), Some("{\"ok\":1}"))
    );
    let (_, t3) = daemon.get("/api/tasks/t-3").await;
    assert_eq!(t3["last_error"], "boom", "{t3}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_report_list_answers_400_naming_it_and_applies_nothing() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "t-1" }))
        .await;
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "t-2" }))
        .await;
    let held = claim_logins(&daemon, 1).await;
    let good = json!({ "id": "t-1", "lease": held[0].1 });
    let too_many: Vec<Value> = std::iter::once(good.clone())
        .chain((0..1_000).map(|i| json!({ "id": format!("x-{i}"), "lease": "l" })))
        .collect();
    let too_long = json!({ "id": "t-1", "lease": held[0].1, "error": "e".repeat(9_000) });
    for (path, body, field) in [
        (
            "/api/tasks/claim",
            json!({ "types": ["login"], "report": good }),
            "report",
        ),
        (
            "/api/tasks/claim",
            json!({ "types": ["login"], "report": too_many }),
            "report",
        ),
        (
            "/api/tasks/claim",
            json!({ "types": ["nope"], "report": [good] }),
            "types",
        ),
        ("/api/tasks/report", json!({ "report": "t-1" }), "report"),
        ("/api/tasks/report", json!({ "report": too_many }), "report"),
        (
            "/api/tasks/report",
            json!({ "report": [good], "x": 1 }),
            "x",
        ),
        ("/api/tasks/report", json!({}), "report"),
    ] {
        let (status, refused) = daemon.post(path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {refused}");
        assert_eq!(refused["field"], field, "{path}: {refused}");
    }
    // Nothing applied, nothing claimed: t-1 is held, t-2 waits.
    let (_, t1) = daemon.get("/api/tasks/t-1").await;
    assert_eq!(t1["status"], "processing", "{t1}");
    let (_, t2) = daemon.get("/api/tasks/t-2").await;
    assert_eq!(t2["status"], "pending", "{t2}");
    // An error too long is that entry's 400 only.
    let (status, answer) = daemon
        .post("/api/tasks/report", json!({ "report": [too_long, good] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["reported"][0]["error"]["field"], "report[0].error");
    assert_eq!(answer["reported"][1]["status"], "completed", "{answer}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reported_alone_is_retried_then_dead_lettered_as_a_single_fail() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    daemon
        .post(
            "/api/tasks",
            json!({ "type": "login", "id": "t-1", "max_attempts": 2 }),
        )
        .await;
    let fail =
        |lease: &str| json!({ "report": [{ "id": "t-1", "lease": lease, "error": "boom" }] });
    let held = claim_logins(&daemon, 1).await;
    let (status, answer) = daemon.post("/api/tasks/report", fail(&held[0].1)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["reported"][0]["status"], "pending", "{answer}");
    assert!(answer["reported"][0]["retry_at_ms"].as_u64().is_some());
    assert!(answer.get("tasks").is_none(), "no claim: {answer}");
    // The retry falls due (backoff 20 ms); its second attempt fails too: dead.
    let (_, again) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "wait_ms": 5000 }),
        )
        .await;
    let again = &again["tasks"][0];
    assert_eq!(again["attempt"], 2, "{again}");
    let (_, answer) = daemon
        .post("/api/tasks/report", fail(again["lease"].as_str().unwrap()))
        .await;
    assert_eq!(
        answer["reported"][0],
        json!({ "id": "t-1", "status": "failed", "retry_at_ms": null })
    );
    let (pending, delayed, processing, dead) = counts(&daemon).await;
    assert_eq!((pending, delayed, processing, dead), (0, 0, 0, 1));
    let (_, listed) = daemon.get("/api/tasks/dead").await;
    assert_eq!(listed["tasks"][0]["last_error"], "boom", "{listed}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_during_an_outage_run_on_the_fallback_and_are_replayed() {
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 300;
    s.storage.redis.ping_interval_ms = 50;
    s.storage.last_known.refresh_interval_ms = 50;
    let daemon = Daemon::start(s).await;
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "before" }))
        .await;
    let before = claim_logins(&daemon, 1).await;
    poll_until_async(Duration::from_secs(10), || async {
        daemon.fleet.storage().stats().last_known_pending == 0
    })
    .await
    .unwrap();
    server.kill9();
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "during" }))
        .await;
    assert_ne!(daemon.fleet.storage().mode(), Mode::Redis);
    // The claim carries the completion of the task claimed from Redis and takes the one added
    // during the outage.
    let (status, answer) = daemon
        .post(
            "/api/tasks/claim",
            json!({ "types": ["login"], "max": 10, "report": [
                { "id": "before", "lease": before[0].1 },
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["reported"][0]["status"], "completed", "{answer}");
    assert_eq!(answer["tasks"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["tasks"][0]["id"], "during");
    let during = answer["tasks"][0]["lease"].as_str().unwrap().to_string();
    let (_, answer) = daemon
        .post(
            "/api/tasks/report",
            json!({ "report": [
                { "id": "during", "lease": during },
                { "id": "before", "lease": before[0].1 },
            ]}),
        )
        .await;
    assert_eq!(answer["reported"][0]["status"], "completed", "{answer}");
    // A stale lease is refused on the fallback too.
    assert_eq!(answer["reported"][1]["error"]["status"], 409, "{answer}");

    server.restart().unwrap();
    poll_until_async(Duration::from_secs(30), || async {
        daemon.fleet.storage().mode() == Mode::Redis
    })
    .await
    .unwrap();
    for id in ["before", "during"] {
        let hash = format!("bot:task:{id}");
        assert_eq!(
            server.cmd(&["HGET", &hash, "status"]).as_str(),
            Some("completed"),
            "{id}"
        );
    }
    for set in ["queue", "processing", "delayed", "dead"] {
        let key = format!("bot:tasks:{set}");
        assert_eq!(server.cmd(&["ZCARD", &key]).as_int(), Some(0), "{key}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_on_a_long_poll_reports_its_finished_task_alone() {
    let server = RedisServer::start().unwrap();
    let daemon = Daemon::start(settings(&server.url())).await;
    let dir = tempfile::tempdir().unwrap();
    daemon
        .post("/api/tasks", json!({ "type": "login", "id": "slow" }))
        .await;
    // Two slots: the task takes one; the other waits on a claim (10 s long poll) with
    // nothing to claim. The task ends when `go` appears.
    let worker = Worker::start(
        dir.path(),
        &daemon.base,
        &["--type", "login", "--concurrency", "2"],
        r#"while [ ! -e "$DIR/go" ]; do sleep 0.02; done; echo "$BOTFLEET_TASK_ID" >> "$DIR/done""#,
    );
    poll_until_async(Duration::from_secs(10), || async {
        daemon.get("/api/tasks/slow").await.1["status"] == "processing"
    })
    .await
    .unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();
    let done = dir.path().join("done");
    poll_until_async(Duration::from_secs(10), || async {
        !lines(&done).is_empty()
    })
    .await
    .unwrap();
    // Completed well before the waiting claim would answer: the report went alone.
    let t0 = Instant::now();
    poll_until_async(Duration::from_secs(10), || async {
        daemon.get("/api/tasks/slow").await.1["status"] == "completed"
    })
    .await
    .unwrap_or_else(|_| panic!("not completed; log:\n{}", worker.log()));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "reported after {:?}",
        t0.elapsed()
    );
    worker.signal(libc::SIGTERM);
    let (code, out) = worker.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "stdout: {out}");
    assert!(out.contains("1 completed, 0 failed"), "{out}");
    daemon.stop().await;
}
