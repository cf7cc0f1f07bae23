//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh` where missing) loads `/` from a running `botfleet run`, and sees it update
//! without a reload: a task added through the API appears in the queue panel, and the storage
//! mode shown changes when the test's redis-server is killed. A screenshot is saved as
//! `target/dashboard.png`. Dead letters and delayed tasks are retried, deleted and promoted
//! from the page, with the API token typed into it. The charts fill from the daemon's history
//! (an actor restarted by an injected fault shows on the restarts chart),
//! a task's detail and the locks held are shown, and the outage banner comes when Redis is
//! killed and goes when it is back; screenshots before, during and after are saved in
//! `target/dashboard/` (`docs/dashboard.png` is a copy of `during.png`, reduced).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::browser::Browser;
use support::{free_port, poll_until, process::spawn_tied_to_process, RedisServer};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn start_daemon(redis_url: &str, bind: &str) -> Daemon {
    start_daemon_with(redis_url, bind, &[])
}

fn start_daemon_with(redis_url: &str, bind: &str, vars: &[(&str, &str)]) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
    cmd.envs(vars.iter().copied());
    cmd.arg("run")
        .env("REDIS_URL", redis_url)
        .env("BOTFLEET__API__BIND", bind)
        .env("BOTFLEET__API__STREAM_INTERVAL_MS", "200")
        .env("BOTFLEET__PRESENCE__INTERVAL_MS", "100")
        .env("BOTFLEET__PRESENCE__TTL_SECS", "60")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Daemon(spawn_tied_to_process(cmd).expect("spawn botfleet run"))
}

/// Whether `GET /health` at `addr` answers 200.
fn health_answers(addr: &str) -> bool {
    matches!(
        support::http::raw_request(addr, "GET", "/health", ""),
        Some((200, _))
    )
}

/// `POST path` with a JSON body; the answer's JSON body (200 expected).
fn post_json(addr: &str, path: &str, body: &str) -> serde_json::Value {
    let (status, json) = support::http::raw_request(addr, "POST", path, body)
        .unwrap_or_else(|| panic!("POST {path}: no answer"));
    assert_eq!(status, 200, "POST {path}: {json}");
    json
}

fn screenshot_path() -> PathBuf {
    // CARGO_TARGET_TMPDIR is TARGET/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("dashboard.png")
}

#[test]
fn dashboard_shows_the_storage_mode_change_live() {
    let mut redis = RedisServer::start().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let _daemon = start_daemon(&redis.url(), &bind);
    poll_until(Duration::from_secs(30), || health_answers(&bind))
        .expect("the daemon's HTTP API answers");

    let browser = Browser::launch((1280, 900)).expect("headless chromium starts");
    let tab = browser
        .open(&format!("http://{bind}/"))
        .expect("the dashboard loads");

    let mode = "document.getElementById('storage-mode').textContent";
    poll_until(Duration::from_secs(20), || tab.eval_string(mode) == "redis")
        .unwrap_or_else(|_| panic!("mode shown: {:?}", tab.eval_string(mode)));
    let actors = "document.getElementById('actors').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(actors);
        [
            "storage-monitor",
            "presence",
            "locks",
            "scheduler",
            "heartbeat",
        ]
        .iter()
        .all(|name| shown.contains(name))
    })
    .unwrap_or_else(|_| {
        panic!(
            "the built-in actors are listed: {:?}",
            tab.eval_string(actors)
        )
    });
    assert_eq!(
        tab.eval_string("document.getElementById('conn').textContent"),
        "live"
    );
    assert_eq!(
        tab.eval_string("document.getElementById('health').textContent"),
        "healthy"
    );
    // The cache's counters have their panel.
    let cache = "document.getElementById('cache').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(cache);
        ["hits", "misses", "loads", "invalidations sent", "received"]
            .iter()
            .all(|label| shown.contains(label))
    })
    .unwrap_or_else(|_| panic!("the cache panel: {:?}", tab.eval_string(cache)));
    // A mark on the page's window: still there after the changes means no reload happened.
    tab.eval_string("window.botfleetMark = 'same page'");

    // A task added through the API shows in the queue panel.
    let added = post_json(
        &bind,
        "/api/bot/tasks/add",
        r#"{"type": "job_check", "data": {"job": 7}}"#,
    );
    let task_id = added["task_id"].as_str().expect("a task id").to_owned();
    let shown = format!("document.querySelector('[data-task=\"{task_id}\"]') !== null");
    let queue = "document.getElementById('queue').textContent";
    poll_until(Duration::from_secs(20), || {
        tab.eval_string(&shown) == "true" && tab.eval_string(queue).contains("1 pending")
    })
    .unwrap_or_else(|_| panic!("the task is shown: {:?}", tab.eval_string(queue)));
    assert_eq!(tab.eval_string("window.botfleetMark"), "same page");

    redis.kill9();
    poll_until(Duration::from_secs(30), || {
        tab.eval_string(mode) == "degraded"
    })
    .unwrap_or_else(|_| panic!("mode shown after the kill: {:?}", tab.eval_string(mode)));
    assert_eq!(tab.eval_string("window.botfleetMark"), "same page");
    poll_until(Duration::from_secs(10), || {
        tab.eval_string("document.getElementById('storage-events').textContent")
            .contains("redis \u{2192} degraded")
    })
    .expect("the storage event is listed");
    // What the page shows now is last-known state, and it says so; the task is still listed.
    let last_known = "document.getElementById('last-known').textContent";
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(last_known).starts_with("last known as of ")
    })
    .unwrap_or_else(|_| panic!("staleness shown: {:?}", tab.eval_string(last_known)));
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(&shown) == "true" && tab.eval_string(queue).contains("1 pending")
    })
    .unwrap_or_else(|_| panic!("the task is still shown: {:?}", tab.eval_string(queue)));

    let png = tab.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    let path = screenshot_path();
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// A request with `Authorization: Bearer TOKEN` over a raw HTTP/1.0 connection: the status and
/// the JSON body.
fn authed(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn dead_letters_and_delayed_tasks_are_retried_deleted_and_promoted_from_the_page() {
    let redis = RedisServer::start().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let token = "tok-dash";
    let _daemon = start_daemon_with(&redis.url(), &bind, &[("BOTFLEET__API__TOKEN", token)]);
    poll_until(Duration::from_secs(30), || health_answers(&bind))
        .expect("the daemon's HTTP API answers");
    for body in [
        r#"{"type": "job_check", "id": "d-1", "max_attempts": 1}"#,
        r#"{"type": "job_check", "id": "d-2", "max_attempts": 1}"#,
        r#"{"type": "login", "id": "later", "delay_ms": 600000}"#,
    ] {
        assert_eq!(authed(&bind, "POST", "/api/tasks", token, body).0, 201);
    }
    let (_, claimed) = authed(
        &bind,
        "POST",
        "/api/tasks/claim",
        token,
        r#"{"types": ["job_check"], "max": 10}"#,
    );
    for task in claimed["tasks"].as_array().unwrap() {
        let path = format!("/api/tasks/{}/fail", task["id"].as_str().unwrap());
        let body = serde_json::json!({ "lease": task["lease"], "error": "it broke" }).to_string();
        assert_eq!(authed(&bind, "POST", &path, token, &body).0, 200);
    }

    let browser = Browser::launch((1280, 900)).expect("headless chromium starts");
    let tab = browser
        .open(&format!("http://{bind}/"))
        .expect("the dashboard loads");
    let listed = |attr: &str, id: &str| {
        tab.eval_string(&format!(
            "document.querySelector('[data-{attr}=\"{id}\"]') !== null"
        )) == "true"
    };
    poll_until(Duration::from_secs(20), || {
        listed("dead", "d-1") && listed("dead", "d-2") && listed("delayed", "later")
    })
    .unwrap_or_else(|_| {
        panic!(
            "listed: {:?}",
            tab.eval_string("document.getElementById('tasks-panel').textContent")
        )
    });
    let click = |action: &str, id: &str| {
        tab.eval_string(&format!(
            "document.querySelector('button[data-action=\"{action}\"][data-id=\"{id}\"]').click(); 'ok'"
        ))
    };
    let note = "document.getElementById('task-action').textContent";
    let status = |id: &str| {
        let (code, task) =
            support::http::raw_request(&bind, "GET", &format!("/api/tasks/{id}"), "").unwrap();
        (code, task["status"].as_str().unwrap_or_default().to_owned())
    };

    // Without the token the daemon refuses, and the page says why.
    assert_eq!(click("retry", "d-1"), "ok");
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(note).contains("API token")
    })
    .unwrap_or_else(|_| panic!("note: {:?}", tab.eval_string(note)));
    assert_eq!(status("d-1"), (200, "failed".to_owned()));

    // With the token typed in: retry, delete, run now.
    tab.eval_string(&format!(
        "const f = document.getElementById('token'); f.value = '{token}'; f.dispatchEvent(new Event('input')); 'ok'"
    ));
    assert_eq!(
        tab.eval_string("sessionStorage.getItem('botfleet.api-token')"),
        token
    );
    assert_eq!(click("retry", "d-1"), "ok");
    poll_until(Duration::from_secs(10), || {
        status("d-1") == (200, "pending".to_owned())
    })
    .unwrap_or_else(|_| panic!("d-1 retried; note: {:?}", tab.eval_string(note)));
    poll_until(Duration::from_secs(10), || !listed("dead", "d-1")).expect("d-1 leaves the list");
    assert_eq!(click("delete", "d-2"), "ok");
    poll_until(Duration::from_secs(10), || status("d-2").0 == 404)
        .unwrap_or_else(|_| panic!("d-2 deleted; note: {:?}", tab.eval_string(note)));
    assert_eq!(click("promote", "later"), "ok");
    poll_until(Duration::from_secs(10), || {
        let (_, delayed) =
            support::http::raw_request(&bind, "GET", "/api/tasks/delayed", "").unwrap();
        delayed["total"] == 0 && status("later") == (200, "pending".to_owned())
    })
    .unwrap_or_else(|_| panic!("later promoted; note: {:?}", tab.eval_string(note)));
    poll_until(Duration::from_secs(10), || {
        tab.eval_string("document.getElementById('dead-total').textContent") == "0"
            && tab.eval_string("document.getElementById('delayed-total').textContent") == "0"
    })
    .expect("the page lists none");
}

/// `GET path` over a raw HTTP/1.0 connection: the status and the body as text.
fn get_text(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Where the outage test's screenshots go: `target/dashboard/NAME.png`.
fn shot(tab: &support::browser::Page<'_>, name: &str) {
    tab.eval_string("window.scrollTo(0, 0); 'ok'");
    let png = tab.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    let dir = screenshot_path().with_extension("");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn charts_fill_an_action_retries_and_the_outage_banner_comes_and_goes() {
    let mut redis = RedisServer::builder().persistence(true).start().unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    // The history archive on, in a SQLite file of its own.
    let archive = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-history-{port}"));
    let _ = std::fs::remove_dir_all(&archive);
    let archive = archive.to_str().unwrap().to_owned();
    let _daemon = start_daemon_with(
        &redis.url(),
        &bind,
        &[
            ("BOTFLEET__HISTORY__ENABLED", "true"),
            ("BOTFLEET__HISTORY__DIR", &archive),
        ],
    );
    poll_until(Duration::from_secs(30), || health_answers(&bind))
        .expect("the daemon's HTTP API answers");

    // The page is one self-contained document under 100 KB.
    let (status, page) = get_text(&bind, "/");
    assert_eq!(status, 200);
    assert!(page.len() < 100 * 1024, "the page is {} bytes", page.len());
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external asset"
    );

    // A dead letter, a task waiting, and a lock held through the API.
    let add = |body: &str| {
        let (code, answer) = support::http::raw_request(&bind, "POST", "/api/tasks", body).unwrap();
        assert_eq!(code, 201, "{answer}");
    };
    add(r#"{"type": "job_check", "id": "dead-1", "max_attempts": 1}"#);
    let (_, claimed) = support::http::raw_request(
        &bind,
        "POST",
        "/api/tasks/claim",
        r#"{"types": ["job_check"], "max": 1}"#,
    )
    .unwrap();
    let lease = claimed["tasks"][0]["lease"].clone();
    let body = serde_json::json!({ "lease": lease, "error": "it broke" }).to_string();
    post_json(&bind, "/api/tasks/dead-1/fail", &body);
    add(r#"{"type": "login", "id": "waits-1"}"#);
    let lock = post_json(
        &bind,
        "/api/locks/acquire",
        r#"{"name": "dash-lock", "ttl_ms": 600000}"#,
    );

    // The history: columns of equal length, a bad parameter named.
    poll_until(Duration::from_secs(10), || {
        let (_, h) =
            support::http::raw_request(&bind, "GET", "/api/dashboard/history", "").unwrap();
        h["points"].as_u64().unwrap_or(0) >= 2
            && h["queue_depth"]["dead"].as_array().and_then(|a| a.last()) == Some(&1.into())
    })
    .expect("the history records the dead letter");
    let (_, h) = support::http::raw_request(&bind, "GET", "/api/dashboard/history", "").unwrap();
    let n = h["at_ms"].as_array().unwrap().len();
    for series in [
        "storage_mode",
        "outbox_depth",
        "tasks_processed_per_sec",
        "lock_waiters",
    ] {
        assert_eq!(h[series].as_array().unwrap().len(), n, "{series}");
    }
    let (code, bad) =
        support::http::raw_request(&bind, "GET", "/api/dashboard/history?since_ms=soon", "")
            .unwrap();
    assert_eq!((code, bad["field"].as_str()), (400, Some("since_ms")));
    let (_, metrics) = get_text(&bind, "/metrics");
    assert!(
        metrics.contains("botfleet_tasks_per_second{outcome=\"processed\"}")
            && metrics.contains("botfleet_lock_leases_held 1"),
        "{metrics}"
    );

    let browser = Browser::launch((1280, 1400)).expect("headless chromium starts");
    let tab = browser
        .open(&format!("http://{bind}/"))
        .expect("the dashboard loads");
    let drawn = |id: &str| {
        tab.eval_string(&format!(
            "document.getElementById('chart-{id}').dataset.points || '0'"
        ))
        .parse::<u64>()
        .unwrap_or(0)
    };
    let before = drawn("queue");
    poll_until(Duration::from_secs(20), || {
        ["tasks", "queue", "storage", "locks"]
            .iter()
            .all(|id| drawn(id) >= 3)
            && drawn("queue") > before
    })
    .unwrap_or_else(|_| panic!("charts drawn: {}", drawn("queue")));
    let legend = "document.getElementById('legend-queue').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(legend);
        shown.contains("dead 1") && shown.contains("pending 1")
    })
    .unwrap_or_else(|_| panic!("queue legend: {:?}", tab.eval_string(legend)));
    // The lock taken through the API is listed with its fence.
    let held = "document.getElementById('held-locks').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(held);
        shown.contains("dash-lock") && shown.contains(&lock["fence"].to_string())
    })
    .unwrap_or_else(|_| panic!("held locks: {:?}", tab.eval_string(held)));
    let held_legend = "document.getElementById('legend-locks').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(held_legend);
        shown.contains("held ") && !shown.contains("held 0")
    })
    .unwrap_or_else(|_| panic!("locks chart: {:?}", tab.eval_string(held_legend)));
    // The archive has the dead letter's attempt; a bad flag is named.
    poll_until(Duration::from_secs(10), || {
        let (_, task) =
            support::http::raw_request(&bind, "GET", "/api/tasks/dead-1?history=true", "").unwrap();
        task["history"]["items"][0]["status"] == "dead"
    })
    .expect("the archive lists the dead attempt");
    let (code, bad) =
        support::http::raw_request(&bind, "GET", "/api/tasks/dead-1?history=maybe", "").unwrap();
    assert_eq!((code, bad["field"].as_str()), (400, Some("history")));
    // A task's detail view: its hash, attempts and archived attempts.
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(
            "document.querySelector('[data-detail=\"task\"][data-id=\"dead-1\"]') !== null",
        ) == "true"
    })
    .expect("the dead letter is listed");
    tab.eval_string(
        "document.querySelector('[data-detail=\"task\"][data-id=\"dead-1\"]').click(); 'ok'",
    );
    let detail = "document.getElementById('detail').textContent";
    poll_until(Duration::from_secs(10), || {
        let shown = tab.eval_string(detail);
        shown.contains("attempts")
            && shown.contains("it broke")
            && tab.eval_string("String(document.querySelectorAll('#detail table').length)") == "2"
            && !shown.contains("archive is off")
    })
    .unwrap_or_else(|_| panic!("task detail: {:?}", tab.eval_string(detail)));
    // Every action is a button, reachable by keyboard.
    assert_eq!(
        tab.eval_string("String(document.querySelectorAll('[data-action]:not(button)').length)"),
        "0"
    );

    // A session started from the page, its events in the detail view, an admin message sent,
    // the session stopped.
    let run = |js: &str| tab.eval_string(&format!("{js}; 'ok'"));
    run("document.getElementById('session-name').value = 'from the page'");
    run("document.querySelector('button[data-action=\"session-start\"]').click()");
    let bot = "document.getElementById('bot-status').textContent";
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(bot).contains("running")
    })
    .unwrap_or_else(|_| {
        panic!(
            "session started: {:?} / {:?}",
            tab.eval_string(bot),
            tab.eval_string("document.getElementById('session-action').textContent")
        )
    });
    let session = "document.querySelector('#sessions [data-detail=\"session\"]')";
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(&format!("{session} !== null")) == "true"
    })
    .expect("the session is listed");
    run(&format!("{session}.click()"));
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(detail).contains("bot_started")
    })
    .unwrap_or_else(|_| panic!("session detail: {:?}", tab.eval_string(detail)));
    run("document.getElementById('admin-pid').value = '4242'");
    run("document.getElementById('admin-message').value = 'hello from the page'");
    run("document.querySelector('button[data-action=\"admin-send\"]').click()");
    let admin = "document.getElementById('admin-action').textContent";
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(admin).contains("done (id ")
    })
    .unwrap_or_else(|_| panic!("admin message: {:?}", tab.eval_string(admin)));
    // Read back until it shows: on a loaded machine a command timeout can make the daemon
    // degraded for a moment, and its stale answer then lags a script's write.
    let inbox = || {
        let (_, inbox) =
            support::http::raw_request(&bind, "GET", "/api/admin/inbox/4242", "").unwrap();
        inbox
    };
    poll_until(Duration::from_secs(10), || {
        inbox().to_string().contains("hello from the page")
    })
    .unwrap_or_else(|_| panic!("{}", inbox()));
    run("document.querySelector('button[data-action=\"session-stop\"]').click()");
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(bot).contains("stopped")
    })
    .unwrap_or_else(|_| panic!("session stopped: {:?}", tab.eval_string(bot)));
    // A bad pid is refused with the field named, and the page shows it.
    run("document.getElementById('admin-pid').value = 'nobody'");
    run("document.querySelector('button[data-action=\"admin-send\"]').click()");
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(admin).contains("pid")
            && tab.eval_string("document.getElementById('admin-action').className") == "bad"
    })
    .unwrap_or_else(|_| panic!("refused pid: {:?}", tab.eval_string(admin)));

    assert_eq!(
        tab.eval_string("document.getElementById('outage').hidden"),
        "true"
    );
    shot(&tab, "before");

    // The retry button of the dead letter: the task waits again.
    tab.eval_string(
        "document.querySelector('button[data-action=\"retry\"][data-id=\"dead-1\"]').click(); 'ok'",
    );
    poll_until(Duration::from_secs(10), || {
        let (_, task) = support::http::raw_request(&bind, "GET", "/api/tasks/dead-1", "").unwrap();
        task["status"] == "pending"
    })
    .unwrap_or_else(|_| {
        panic!(
            "retried; note: {:?}",
            tab.eval_string("document.getElementById('task-action').textContent")
        )
    });

    poll_until(Duration::from_secs(10), || {
        tab.eval_string(legend).contains("dead 0")
    })
    .unwrap_or_else(|_| {
        panic!(
            "queue legend after the retry: {:?}",
            tab.eval_string(legend)
        )
    });

    // Redis dies: the banner says so, and since when; the charts go on.
    redis.kill9();
    let banner = "document.getElementById('outage')";
    poll_until(Duration::from_secs(30), || {
        tab.eval_string(&format!("{banner}.hidden")) == "false"
            && tab
                .eval_string(&format!("{banner}.textContent"))
                .starts_with("Redis unreachable since ")
    })
    .unwrap_or_else(|_| {
        panic!(
            "banner: {:?}",
            tab.eval_string(&format!("{banner}.textContent"))
        )
    });
    assert_eq!(
        tab.eval_string(&format!("{banner}.getAttribute('aria-live')")),
        "assertive"
    );
    // A few samples of the outage, for the timeline to show it.
    let degraded_samples = "String(points.filter((p) => p.mode === 'degraded').length)";
    poll_until(Duration::from_secs(20), || {
        tab.eval_string(degraded_samples)
            .parse::<u32>()
            .unwrap_or(0)
            >= 4
            && tab
                .eval_string("document.getElementById('mode-timeline').textContent")
                .contains("degraded")
    })
    .unwrap_or_else(|_| {
        panic!(
            "the storage timeline shows the outage: {} samples",
            tab.eval_string(degraded_samples)
        )
    });
    shot(&tab, "during");

    // Redis returns: the banner goes once the outbox has drained.
    redis.restart().unwrap();
    poll_until(Duration::from_secs(30), || {
        tab.eval_string(&format!("{banner}.hidden")) == "true"
            && tab.eval_string(mode_shown()) == "redis"
            && tab.eval_string("document.getElementById('last-known').hidden") == "true"
            && tab.eval_string("document.getElementById('outbox').textContent") == "0"
    })
    .unwrap_or_else(|_| {
        panic!(
            "banner after: {:?}",
            tab.eval_string(&format!("{banner}.textContent"))
        )
    });
    shot(&tab, "after");

    // A second outage is dated from its own start, not the first one's.
    tab.eval_string("window.secondKill = Date.now(); 'ok'");
    redis.kill9();
    poll_until(Duration::from_secs(30), || {
        tab.eval_string(&format!("{banner}.hidden")) == "false"
    })
    .expect("the banner is back");
    assert_eq!(
        tab.eval_string("String(outage.since >= window.secondKill - 1000)"),
        "true",
        "banner: {:?}",
        tab.eval_string(&format!("{banner}.textContent"))
    );
}

fn mode_shown() -> &'static str {
    "document.getElementById('storage-mode').textContent"
}

/// A fleet on `redis` run by the test itself (so that a fault can be armed in its process),
/// with its HTTP API on a free loopback port: the runtime, the fleet, the API and its address.
fn fleet_with_api(
    redis: &RedisServer,
) -> (
    tokio::runtime::Runtime,
    botfleet::Fleet,
    botfleet::http::HttpApi,
    String,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut settings = support::suite_settings(&redis.url());
    settings.api.bind = "127.0.0.1:0".into();
    let fleet = runtime
        .block_on(botfleet::Fleet::start(settings))
        .expect("the fleet starts");
    let http = botfleet::http::HttpApi::builder(fleet.clone())
        .start()
        .expect("the API starts");
    let bind = http.local_addr().to_string();
    (runtime, fleet, http, bind)
}

/// An actor restarted (a fault injected into the scheduler's loop, in a fleet run by the test
/// itself) shows in the history's `actor_restarts` and on the restarts chart.
#[test]
fn the_restarts_chart_shows_an_actor_restarted() {
    let redis = RedisServer::start().unwrap();
    let (runtime, fleet, http, bind) = fleet_with_api(&redis);
    let browser = Browser::launch((1280, 900)).expect("headless chromium starts");
    let tab = browser
        .open(&format!("http://{bind}/"))
        .expect("the dashboard loads");
    let restarts = "document.getElementById('legend-restarts').textContent";
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(restarts) == "no actor restarted"
    })
    .unwrap_or_else(|_| panic!("restarts legend: {:?}", tab.eval_string(restarts)));

    botfleet::supervisor::fault::arm("scheduler", 1);
    poll_until(Duration::from_secs(20), || {
        let (_, h) =
            support::http::raw_request(&bind, "GET", "/api/dashboard/history", "").unwrap();
        h["actor_restarts"]["scheduler"]
            .as_array()
            .and_then(|a| a.last())
            == Some(&1.into())
    })
    .expect("the history counts the restart");
    poll_until(Duration::from_secs(10), || {
        tab.eval_string(restarts).contains("scheduler 1")
    })
    .unwrap_or_else(|_| panic!("restarts legend: {:?}", tab.eval_string(restarts)));

    drop(tab);
    drop(browser);
    runtime.block_on(http.stop());
    runtime.block_on(fleet.shutdown()).unwrap();
}

/// A panic in the dashboard's sampler (a fault injected into one sample) does not freeze the
/// charts: the sampler is started again, counted in `sampler_restarts`, and new samples keep
/// coming.
#[test]
fn the_dashboard_sampler_is_started_again_after_a_panic() {
    let redis = RedisServer::start().unwrap();
    let (runtime, fleet, http, bind) = fleet_with_api(&redis);
    let history = || {
        let (status, h) =
            support::http::raw_request(&bind, "GET", "/api/dashboard/history", "").unwrap();
        assert_eq!(status, 200, "{h}");
        h
    };
    let last_at = |h: &serde_json::Value| h["at_ms"].as_array().and_then(|a| a.last()?.as_u64());
    poll_until(Duration::from_secs(10), || last_at(&history()).is_some()).expect("a first sample");
    assert_eq!(history()["sampler_restarts"], 0);

    botfleet::supervisor::fault::arm("dashboard-sampler", 1);
    poll_until(Duration::from_secs(10), || {
        history()["sampler_restarts"] == 1
    })
    .unwrap_or_else(|_| panic!("no restart counted: {}", history()));
    let after_panic = last_at(&history()).unwrap();
    poll_until(Duration::from_secs(10), || {
        last_at(&history()).is_some_and(|at| at > after_panic)
    })
    .expect("samples go on after the panic");
    assert_eq!(history()["sampler_restarts"], 1);

    runtime.block_on(http.stop());
    runtime.block_on(fleet.shutdown()).unwrap();
}
