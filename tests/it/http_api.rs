//! The HTTP API over real sockets: a Fleet on a real redis-server, the server on
//! `127.0.0.1:0`, every endpoint with its bad-input cases and its 401s, `/metrics` through a
//! Prometheus text parser, `/health` flipping to 503 (an actor failing for good; Redis killed
//! with `api.degraded_is_unhealthy`), the live stream, and `botfleet status`.

use crate::support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use actix::prelude::*;
use botfleet::http::{HttpApi, Unavailable, PLACEHOLDER_SECTIONS, TASK_TYPES};
use botfleet::settings::{ApiSettings, Secret, Settings};
use botfleet::supervisor::{ChildContext, ChildSpec};
use botfleet::Fleet;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::metrics::{sample, scrape};
use support::{poll_until_async, RedisServer};

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = url.to_string();
    s.presence.interval_ms = 50;
    s.presence.ttl_secs = 60;
    s.supervisor.stop_timeout_ms = 2_000;
    s.api.bind = "127.0.0.1:0".into();
    s
}

fn api_settings(token: &str) -> ApiSettings {
    ApiSettings {
        bind: "127.0.0.1:0".into(),
        token: Secret::new(token),
        body_limit_bytes: 1_024,
        stream_interval_ms: 100,
        ..ApiSettings::default()
    }
}

fn base(http: &HttpApi) -> String {
    format!("http://{}", http.local_addr())
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    (status, body)
}

async fn post(url: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_endpoints_report_the_fleet() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = base(&http);

    let (status, health) = get(&format!("{base}/health")).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "redis");

    // A lock held and a second task waiting for it: the waiter shows in /status and /metrics.
    let guard = fleet
        .locks()
        .acquire("http-test", Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    let locks = fleet.locks();
    let waiter = tokio::spawn(async move {
        locks
            .acquire(
                "http-test",
                Duration::from_secs(30),
                Duration::from_secs(30),
            )
            .await
            .map(drop)
    });
    let b = base.clone();
    poll_until_async(Duration::from_secs(10), move || {
        let b = b.clone();
        async move { get(&format!("{b}/status")).await.1["locks"]["waiters"] == 1 }
    })
    .await
    .expect("the waiter shows in /status");

    let (status, snapshot) = get(&format!("{base}/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snapshot["instance"], fleet.instance());
    assert_eq!(snapshot["health"]["healthy"], true);
    assert_eq!(snapshot["storage"]["mode"], "redis");
    let actors: Vec<&str> = snapshot["actors"]["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["actor"].as_str().unwrap())
        .collect();
    let actor_count = actors.len();
    assert_eq!(
        actors,
        [
            "storage-monitor",
            "presence",
            "locks",
            "hazards",
            "cache",
            "scheduler",
            "heartbeat",
            "peer-monitor",
            "admin-inbox"
        ]
    );
    assert!(snapshot["presence"]["key"].as_str().unwrap().len() > 1);
    // The built-in sections fill every place of the dashboard.
    for name in PLACEHOLDER_SECTIONS {
        assert!(!snapshot[*name].is_null(), "{name} is filled: {snapshot}");
    }
    assert_eq!(snapshot["queue"]["pending"], 0);
    assert_eq!(snapshot["queue"]["recent"], json!([]));
    assert_eq!(snapshot["snapshot"], json!({"enabled": false}));
    assert_eq!(snapshot["hazards"], json!({"enabled": false}));
    assert_eq!(snapshot["events"], json!([]));
    // This process's own heartbeat is seen by its peer monitor.
    let b = base.clone();
    poll_until_async(Duration::from_secs(10), move || {
        let b = b.clone();
        async move { get(&format!("{b}/status")).await.1["bots"]["live"] == 1 }
    })
    .await
    .expect("the fleet's own heartbeat shows as a live bot");
    fleet
        .scheduler()
        .enqueue(botfleet::actors::scheduler::NewTask::raw(
            "screenshot",
            "{}",
        ))
        .await
        .unwrap();

    let samples = scrape(&base).await;
    assert_eq!(
        sample(&samples, "botfleet_storage_mode", &[("mode", "redis")]),
        1.0
    );
    assert_eq!(
        sample(&samples, "botfleet_storage_mode", &[("mode", "degraded")]),
        0.0
    );
    assert_eq!(sample(&samples, "botfleet_storage_outbox_depth", &[]), 0.0);
    assert_eq!(
        sample(&samples, "botfleet_storage_refused_writes_total", &[]),
        0.0
    );
    assert_eq!(
        sample(&samples, "botfleet_storage_masters_missing_replicas", &[]),
        0.0
    );
    assert_eq!(sample(&samples, "botfleet_lock_waiters", &[]), 1.0);
    assert_eq!(sample(&samples, "botfleet_locks_held", &[]), 1.0);
    assert_eq!(
        sample(&samples, "botfleet_lock_turns_yielded_total", &[]),
        0.0
    );
    assert_eq!(
        sample(&samples, "botfleet_queue_depth", &[("status", "pending")]),
        1.0
    );
    assert_eq!(
        sample(&samples, "botfleet_queue_depth", &[("status", "dead")]),
        0.0
    );
    assert_eq!(sample(&samples, "botfleet_tasks_processed_total", &[]), 0.0);
    assert_eq!(
        sample(&samples, "botfleet_heartbeat_peers", &[("state", "live")]),
        1.0
    );
    assert_eq!(sample(&samples, "botfleet_healthy", &[]), 1.0);
    for actor in actors {
        assert_eq!(
            sample(&samples, "botfleet_actor_up", &[("actor", actor)]),
            1.0
        );
        assert_eq!(
            sample(
                &samples,
                "botfleet_actor_restarts_total",
                &[("actor", actor)]
            ),
            0.0
        );
    }
    let mode_changes = snapshot["storage"]["mode_changes"].as_f64().unwrap();
    assert_eq!(
        sample(&samples, "botfleet_storage_mode_changes_total", &[]),
        mode_changes
    );
    guard.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    let (_, after) = get(&format!("{base}/status")).await;
    assert_eq!(after["locks"]["held"], 0, "both guards released: {after}");

    let (status, system) = get(&format!("{base}/api/bot/system-status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(system["status"], "healthy");
    assert_eq!(system["redis"]["connected"], true);
    assert_eq!(system["actors"]["running"], actor_count);

    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"storage-mode\""));
    assert!(html.contains("/api/events/stream"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let (status, missing) = get(&format!("{base}/no/such/thing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["error"]
        .as_str()
        .unwrap()
        .contains("/no/such/thing"));

    http.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_endpoints_drive_the_scheduler_in_the_seed_layout() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings(""))
        .start()
        .unwrap();
    let base = base(&http);

    let (status, body) = get(&format!("{base}/api/bot/status")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "stopped");
    let (status, body) = post(&format!("{base}/api/bot/stop"), None, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to stop: {body}");

    let (status, started) = post(
        &format!("{base}/api/bot/start"),
        None,
        r#"{"session_name": "Redis Bot Test"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let session = started["session_id"].as_str().unwrap().to_owned();
    // The seed's keys, as a Python bot reads them.
    let state = server.cmd(&["HGET", "bot:state", "state"]);
    assert_eq!(state.as_str(), Some("running"));
    let name = server.cmd(&["HGET", &format!("bot:session:{session}"), "session_name"]);
    assert_eq!(name.as_str(), Some("Redis Bot Test"));
    let active = server.cmd(&["SISMEMBER", "bot:sessions:active", &session]);
    assert_eq!(active.as_int(), Some(1));
    let (status, again) = post(&format!("{base}/api/bot/start"), None, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(
        again["error"].as_str().unwrap().contains("running"),
        "{again}"
    );
    let sessions_now = server.cmd(&["SCARD", "bot:sessions:active"]);
    assert_eq!(
        sessions_now.as_int(),
        Some(1),
        "a refused start stores nothing"
    );

    // Tasks: the type's priority by default, an explicit one, a delayed one.
    let add = format!("{base}/api/bot/tasks/add");
    let mut ids = HashMap::new();
    for (body, label) in [
        (r#"{"type": "screenshot"}"#, "screenshot"),
        (r#"{"type": "login", "data": {"user": "a"}}"#, "login"),
        (r#"{"type": "job_check", "priority": 9}"#, "job_check"),
        (r#"{"type": "navigation", "delay_ms": 600000}"#, "delayed"),
    ] {
        let (status, answer) = post(&add, None, body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        ids.insert(label, answer["task_id"].as_str().unwrap().to_owned());
    }
    let priority = server.cmd(&["HGET", &format!("bot:task:{}", ids["login"]), "priority"]);
    assert_eq!(priority.as_str(), Some("10"), "login's default priority");
    let (status, listing) = get(&format!("{base}/api/bot/tasks")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["counts"]["pending"], 3, "{listing}");
    assert_eq!(listing["counts"]["delayed"], 1, "{listing}");
    let order: Vec<&str> = listing["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            ids["login"].as_str(),
            ids["job_check"].as_str(),
            ids["screenshot"].as_str(),
            ids["delayed"].as_str()
        ],
        "queue order, then the delayed ones"
    );
    assert_eq!(listing["tasks"][0]["data"], json!({"user": "a"}));
    assert_eq!(listing["tasks"][0]["type"], "login");
    let (_, one) = get(&format!("{base}/api/bot/tasks?status=pending&limit=1")).await;
    assert_eq!(one["tasks"].as_array().unwrap().len(), 1);
    let (_, none) = get(&format!("{base}/api/bot/tasks?status=failed")).await;
    assert_eq!(none["tasks"], json!([]));

    let (status, sessions) = get(&format!("{base}/api/bot/sessions")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions["active"][0]["id"], session.as_str(), "{sessions}");
    assert_eq!(sessions["active"][0]["total_checks"], 0);
    let (status, metrics) = get(&format!("{base}/api/bot/metrics/{session}")).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    assert_eq!(metrics["metrics"]["status"], "running");
    let (status, _) = get(&format!("{base}/api/bot/metrics/no-such-session")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, stopped) = post(&format!("{base}/api/bot/stop"), None, "").await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["session_id"], session.as_str());
    let state = server.cmd(&["HGET", "bot:state", "state"]);
    assert_eq!(state.as_str(), Some("stopped"));
    let sessions_now = server.cmd(&["SCARD", "bot:sessions:active"]);
    assert_eq!(sessions_now.as_int(), Some(0));
    let (status, events) = get(&format!("{base}/api/bot/events/{session}")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bot_stopped", "bot_started"], "newest first");
    assert_eq!(
        events["events"][1]["data"]["session_name"], "Redis Bot Test",
        "{events}"
    );
    let (status, _) = get(&format!("{base}/api/bot/events/no-such-session")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, system) = get(&format!("{base}/api/bot/system-status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(system["bot"]["state"], "stopped");
    assert_eq!(system["bot"]["queue"]["pending"], 3);
    // The dashboard's sections show the queue and the event feed.
    let (_, snapshot) = get(&format!("{base}/status")).await;
    assert_eq!(snapshot["queue"]["pending"], 3);
    assert_eq!(snapshot["queue"]["recent"][0]["id"], ids["login"].as_str());
    assert_eq!(snapshot["events"][0]["type"], "bot_stopped");
    http.stop().await;

    // A host that serves no bot control answers 501, after the usual checks.
    let bare = HttpApi::builder(fleet.clone())
        .settings(api_settings(""))
        .bot_api(Unavailable)
        .start()
        .unwrap();
    let bare_base = format!("http://{}", bare.local_addr());
    for path in ["/api/bot/status", "/api/bot/tasks", "/api/bot/sessions"] {
        let (status, body) = get(&format!("{bare_base}{path}")).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{path}: {body}");
    }
    let (status, _) = post(
        &format!("{bare_base}/api/bot/tasks/add"),
        None,
        r#"{"type": "x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "validated before the 501");
    bare.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_endpoints_need_the_bearer_token() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings("s3cret-token"))
        .start()
        .unwrap();
    let base = base(&http);
    for (path, good) in [
        ("/api/bot/start", r#"{"session_name": "night shift"}"#),
        ("/api/bot/stop", ""),
        ("/api/bot/tasks/add", r#"{"type": "login"}"#),
        ("/api/admin/send", r#"{"pid": "4242", "message": "hello"}"#),
    ] {
        let url = format!("{base}{path}");
        for token in [None, Some("wrong"), Some("s3cret-token-longer"), Some("")] {
            let (status, body) = post(&url, token, good).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{path} with {token:?}: {body}"
            );
            assert!(body["error"].as_str().unwrap().contains("Bearer"));
            assert!(
                !body.to_string().contains("s3cret"),
                "the token is never echoed"
            );
        }
        let (status, body) = post(&url, Some("s3cret-token"), good).await;
        assert_eq!(status, StatusCode::OK, "{path} passes auth: {body}");
    }
    // The token is checked before the body: a bad body without it is still a 401.
    let (status, _) = post(&format!("{base}/api/bot/tasks/add"), None, "{").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Reading needs no token.
    for path in ["/health", "/status", "/api/bot/system-status"] {
        let (status, _) = get(&format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/api/bot/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_400_naming_the_field_and_stores_nothing() {
    let server = RedisServer::start().unwrap();
    let mut fleet_settings = settings(&server.url());
    fleet_settings.admin.max_message_bytes = 512;
    let fleet = Fleet::start(fleet_settings).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings("t"))
        .start()
        .unwrap();
    let base = base(&http);
    let keys_before = server.cmd(&["KEYS", "bot:*"]);
    let add = format!("{base}/api/bot/tasks/add");
    let cases: &[(&str, Option<&str>, &str)] = &[
        (r#"{"type": "login""#, None, "malformed JSON"),
        ("[1, 2", None, "malformed JSON"),
        (r#"{"type": "login"} trailing"#, None, "malformed JSON"),
        ("", None, "body is required"),
        (r#"{"data": {}}"#, Some("type"), "missing field"),
        (r#"{"type": "teleport"}"#, Some("type"), "unknown task type"),
        (r#"{"type": 7}"#, Some("type"), "invalid type"),
        (
            r#"{"type": "login", "priority": 101}"#,
            Some("priority"),
            "0 to 100",
        ),
        (
            r#"{"type": "login", "priority": -1}"#,
            Some("priority"),
            "0 to 100",
        ),
        (
            r#"{"type": "login", "priority": "high"}"#,
            Some("priority"),
            "invalid type",
        ),
        (
            r#"{"type": "login", "delay_ms": -5}"#,
            Some("delay_ms"),
            "invalid value",
        ),
        (
            r#"{"type": "login", "delay_ms": 999999999999}"#,
            Some("delay_ms"),
            "seven days",
        ),
        (
            r#"{"type": "login", "data": "x"}"#,
            Some("data"),
            "JSON object",
        ),
        (
            r#"{"type": "login", "colour": "red"}"#,
            Some("colour"),
            "unknown field",
        ),
    ];
    for (body, field, message) in cases {
        let (status, answer) = post(&add, Some("t"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), *field, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
        if let Some(field) = field {
            assert!(
                error.contains(field),
                "{body}: the message names {field}: {error}"
            );
        }
    }
    // Larger than api.body_limit_bytes (1 KiB here).
    let big = json!({"type": "login", "data": {"blob": "x".repeat(4_096)}}).to_string();
    let (status, _) = post(&add, Some("t"), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let start = format!("{base}/api/bot/start");
    let (status, answer) = post(&start, Some("t"), r#"{"session_name": "  "}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["field"], "session_name");
    let (status, answer) = post(&start, Some("t"), r#"{"session_name": 5}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["field"], "session_name");

    for (query, field) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("colour=red", "colour"),
    ] {
        let (status, answer) = get(&format!("{base}/api/bot/tasks?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {answer}");
        assert_eq!(answer["field"], field, "{query}: {answer}");
    }
    let (status, _) = get(&format!("{base}/api/bot/tasks?status=pending&limit=10")).await;
    assert_eq!(status, StatusCode::OK);
    let send = format!("{base}/api/admin/send");
    for (body, field) in [
        (r#"{"pid": "abc", "message": "m"}"#, "pid"),
        (r#"{"pid": "-3", "message": "m"}"#, "pid"),
        (r#"{"pid": "12"}"#, "message"),
        (r#"{"pid": 0, "message": "m"}"#, "pid"),
        (r#"{"pid": 12.5, "message": "m"}"#, "pid"),
        (r#"{"pid": [12], "message": "m"}"#, "pid"),
    ] {
        let (status, answer) = post(&send, Some("t"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    let long = json!({"pid": "12", "message": "m".repeat(900)}).to_string();
    let (status, answer) = post(&send, Some("t"), &long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "message", "{answer}");
    for path in ["/api/bot/events/bad%20id", "/api/bot/metrics/a%2Fb"] {
        let (status, answer) = get(&format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(answer["field"], "session_id");
    }
    assert_eq!(
        server.cmd(&["KEYS", "bot:*"]),
        keys_before,
        "nothing stored for refused requests"
    );
    assert!(
        server
            .cmd(&["KEYS", "admin:*"])
            .as_array()
            .unwrap()
            .is_empty(),
        "no admin message stored for refused requests"
    );
    for task_type in TASK_TYPES {
        let (status, answer) =
            post(&add, Some("t"), &json!({ "type": task_type }).to_string()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{task_type} is a valid type: {answer}"
        );
    }
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// A host actor that reports a fatal error shortly after every start.
struct Doomed(ChildContext);
impl Actor for Doomed {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let child = self.0.clone();
        ctx.run_later(Duration::from_millis(30), move |_, ctx| {
            child.fail(ctx, "doomed on purpose");
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_when_an_actor_fails_for_good() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.supervisor.max_restarts = 2;
    s.supervisor.within_secs = 60;
    s.supervisor.backoff_base_ms = 10;
    s.supervisor.backoff_max_ms = 20;
    let fleet = Fleet::start_with(s, |tree, _| {
        let _doomed = tree.child(ChildSpec::new("doomed", |child| Doomed(child.clone())));
    })
    .await
    .unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = base(&http);
    // The tree gives up past the restart intensity.
    let _ = tokio::time::timeout(Duration::from_secs(20), fleet.wait())
        .await
        .expect("the tree gives up");
    let (status, health) = get(&format!("{base}/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "unhealthy");
    let reasons: Vec<&str> = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("actor doomed") && r.contains("doomed on purpose")),
        "{reasons:?}"
    );
    let samples = scrape(&base).await;
    assert_eq!(sample(&samples, "botfleet_healthy", &[]), 0.0);
    assert_eq!(
        sample(&samples, "botfleet_actor_up", &[("actor", "doomed")]),
        0.0
    );
    assert!(
        sample(
            &samples,
            "botfleet_actor_restarts_total",
            &[("actor", "doomed")]
        ) >= 2.0
    );
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// Reads the live stream until an event of `kind` whose data satisfies `accept`.
async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    kind: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if event == kind {
                let value: Value = serde_json::from_str(&data).unwrap();
                if accept(&value) {
                    return value;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before a {kind} event"));
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_streams_the_mode_change_and_fails_strict_health() {
    let mut server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    // Two servers on one fleet: a strict one and the default, lenient one.
    let strict = HttpApi::builder(fleet.clone())
        .settings(ApiSettings {
            degraded_is_unhealthy: true,
            ..api_settings("")
        })
        .start()
        .unwrap();
    let lenient = HttpApi::builder(fleet.clone())
        .settings(api_settings(""))
        .start()
        .unwrap();
    let (strict_base, lenient_base) = (base(&strict), base(&lenient));
    assert_eq!(
        get(&format!("{strict_base}/health")).await.0,
        StatusCode::OK
    );

    let mut stream = reqwest::get(format!("{strict_base}/api/events/stream"))
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buffer = String::new();
    let first = next_event(&mut stream, &mut buffer, "status", |_| true).await;
    assert_eq!(first["storage"]["mode"], "redis");

    server.kill9();
    let change = next_event(&mut stream, &mut buffer, "storage", |v| {
        v["ModeChanged"]["to"] == "degraded"
    })
    .await;
    assert_eq!(change["ModeChanged"]["from"], "redis");
    let after = next_event(&mut stream, &mut buffer, "status", |_| true).await;
    assert_eq!(
        after["storage"]["mode"], "degraded",
        "a snapshot follows the change"
    );

    let (status, health) = get(&format!("{strict_base}/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert!(health["reasons"][0]
        .as_str()
        .unwrap()
        .contains("storage is degraded"));
    let (status, health) = get(&format!("{lenient_base}/health")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "degraded is healthy by default: {health}"
    );
    assert_eq!(health["mode"], "degraded");
    let samples = scrape(&lenient_base).await;
    assert_eq!(
        sample(&samples, "botfleet_storage_mode", &[("mode", "degraded")]),
        1.0
    );
    assert_eq!(
        sample(&samples, "botfleet_storage_mode", &[("mode", "redis")]),
        0.0
    );
    assert!(sample(&samples, "botfleet_storage_mode_changes_total", &[]) >= 1.0);
    let (_, system) = get(&format!("{lenient_base}/api/bot/system-status")).await;
    assert_eq!(system["redis"]["connected"], false);

    server.restart().unwrap();
    let b = strict_base.clone();
    poll_until_async(Duration::from_secs(20), move || {
        let b = b.clone();
        async move { get(&format!("{b}/health")).await.0 == StatusCode::OK }
    })
    .await
    .expect("healthy again once redis is back");

    // Stopping the server ends the live stream.
    strict.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends when the server stops");
    lenient.stop().await;
    fleet.shutdown().await.unwrap();
}

fn botfleet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(args)
        .env_remove("BOTFLEET__API__BIND")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_asks_the_daemon() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let url = base(&http);
    let (human, json_out) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            (
                botfleet(&["status", "--url", &url]),
                botfleet(&["status", "--json", "--url", &url]),
            )
        })
        .await
        .unwrap()
    };
    assert!(human.status.success(), "{human:?}");
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("healthy"), "{text}");
    assert!(text.contains("storage: mode redis"), "{text}");
    for actor in ["storage-monitor", "presence", "locks"] {
        assert!(text.contains(actor), "{text}");
    }
    assert!(json_out.status.success());
    let snapshot: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(snapshot["instance"], fleet.instance());
    http.stop().await;

    // Nothing listens there any more.
    let down = tokio::task::spawn_blocking(move || botfleet(&["status", "--url", &url]))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let stderr = String::from_utf8(down.stderr).unwrap();
    assert!(stderr.contains("cannot reach the daemon"), "{stderr}");
    fleet.shutdown().await.unwrap();
}

/// Runs the binary off the async runtime.
async fn botfleet_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        botfleet(&args)
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_admin_and_events_commands_talk_to_the_daemon() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let url = base(&http);

    let added = botfleet_async(args(&[
        "task",
        "add",
        "login",
        "--data",
        r#"{"user": "ann"}"#,
        "--url",
        &url,
    ]))
    .await;
    assert!(added.status.success(), "{added:?}");
    let text = String::from_utf8(added.stdout).unwrap();
    assert!(text.contains("added: login, priority 10"), "{text}");
    let added = botfleet_async(args(&[
        "task",
        "add",
        "screenshot",
        "--priority",
        "3",
        "--json",
        "--url",
        &url,
    ]))
    .await;
    assert!(added.status.success(), "{added:?}");
    let answer: Value = serde_json::from_slice(&added.stdout).unwrap();
    let screenshot = answer["task_id"].as_str().unwrap().to_owned();
    assert_eq!(answer["priority"], 3);
    let stored = server.cmd(&["HGET", &format!("bot:task:{screenshot}"), "priority"]);
    assert_eq!(stored.as_str(), Some("3"));

    // Refused before sending (bad --data) and by the daemon (unknown type): exit 2, nothing
    // stored.
    for (bad, message) in [
        (vec!["task", "add", "login", "--data", "[1]"], "JSON object"),
        (vec!["task", "add", "login", "--data", "{"], "not JSON"),
        (vec!["task", "add", "teleport"], "unknown task type"),
        (vec!["task", "list", "--status", "lost"], "unknown status"),
    ] {
        let mut a = args(&bad);
        a.extend(args(&["--url", &url]));
        let out = botfleet_async(a).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(message), "{bad:?}: {stderr}");
    }
    assert_eq!(server.cmd(&["ZCARD", "bot:tasks:queue"]).as_int(), Some(2));

    let listed = botfleet_async(args(&["task", "list", "--url", &url])).await;
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(text.contains("queue: 2 pending"), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("pending ")).collect();
    assert!(
        lines[0].contains("login") && lines[1].contains("screenshot"),
        "{text}"
    );
    let listed = botfleet_async(args(&[
        "task", "list", "--status", "pending", "--limit", "1", "--json", "--url", &url,
    ]))
    .await;
    let answer: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(answer["tasks"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["tasks"][0]["type"], "login");

    let sent = botfleet_async(args(&[
        "admin",
        "send",
        "4242",
        "go to room 7",
        "--url",
        &url,
    ]))
    .await;
    assert!(sent.status.success(), "{sent:?}");
    let queued = server.cmd(&["LRANGE", "admin:queue:4242", "0", "-1"]);
    let queued = queued.as_array().unwrap();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].as_str().unwrap().contains("go to room 7"));
    let bad_pid = botfleet_async(args(&["admin", "send", "bob", "hi", "--url", &url])).await;
    assert_eq!(bad_pid.status.code(), Some(2), "{bad_pid:?}");

    // `events tail`: the backlog, then a live event from another caller.
    let session = fleet.scheduler().start_session("tail").await.unwrap();
    use botfleet::actors::scheduler::state::EventType;
    fleet
        .scheduler()
        .record_event(&session, EventType::LoginSuccess, &json!({"n": 1}))
        .await
        .unwrap();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(["events", "tail", "--count", "2", "--json", "--url", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        serde_json::from_str(&line).unwrap()
    };
    // The backlog is read after subscribing: once it is printed, a new event is live.
    let first = next("the backlog");
    assert_eq!(first["type"], "login_success", "{first}");
    fleet
        .scheduler()
        .record_event(&session, EventType::JobFound, &json!({"job": "j"}))
        .await
        .unwrap();
    let second = next("the live event");
    assert_eq!(second["type"], "job_found", "{second}");
    assert_eq!(second["session_id"], session.as_str());
    let status = tokio::task::spawn_blocking(move || tail.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "events tail --count 2 exits after two events"
    );

    // Without --count it follows until the daemon stops: then it exits 1.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(["events", "tail", "--url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (line_tx, followed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send(line);
        }
    });
    let first = followed
        .recv_timeout(Duration::from_secs(20))
        .expect("the backlog is printed");
    assert!(first.contains("login_success"), "human line: {first}");
    http.stop().await;
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended the event stream"));

    let down = botfleet_async(args(&["task", "list", "--url", &url])).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8(down.stderr)
        .unwrap()
        .contains("cannot reach the daemon"));
    fleet.shutdown().await.unwrap();
}

/// With the shared data and the hazard ticker enabled, their sections and samples appear:
/// the snapshot's age, each reader's hits and direct fetches, the hazard ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_hazard_sections_report_readers_and_ticks() {
    use support::http::{HttpReply, HttpServer};
    let server = RedisServer::start().unwrap();
    let source = HttpServer::start(|n| {
        HttpReply::json(
            json!({"data": {"records": [
                {"issue": n, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
            ]}})
            .to_string(),
        )
    })
    .await;
    let mut s = settings(&server.url());
    s.storage.redis.timeout_ms = 2_000;
    s.shared_data.enabled = true;
    s.shared_data.fetch_interval_ms = 100;
    s.shared_data.source.url = source.url("/game");
    s.hazards.enabled = true;
    s.hazards.interval_ms = 100;
    let fleet = Fleet::start(s).await.unwrap();
    let reader = fleet.shared_data().readers()[0].clone();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = base(&http);
    let b = base.clone();
    poll_until_async(Duration::from_secs(20), move || {
        let b = b.clone();
        async move {
            let status = get(&format!("{b}/status")).await.1;
            status["snapshot"]["age_ms"].is_u64()
                && status["hazards"]["ticker"]["ticks_written"].as_u64() > Some(0)
        }
    })
    .await
    .expect("a snapshot and a hazard tick are reported");
    reader.read().await.unwrap();
    let (_, status) = get(&format!("{base}/status")).await;
    assert_eq!(status["snapshot"]["fetcher"]["leader"], true, "{status}");
    let first = fleet.settings().hazards.difficulties[0].name.clone();
    assert!(
        status["hazards"]["current"][&first]["hazards"].is_array(),
        "{status}"
    );
    let samples = scrape(&base).await;
    let name = reader.name().to_owned();
    assert!(sample(&samples, "botfleet_reader_hits_total", &[("reader", &name)]) >= 1.0);
    sample(
        &samples,
        "botfleet_reader_direct_fetches_total",
        &[("reader", &name)],
    );
    assert!(sample(&samples, "botfleet_shared_data_age_ms", &[]) >= 0.0);
    assert!(sample(&samples, "botfleet_hazard_ticks_total", &[]) >= 1.0);
    assert_eq!(sample(&samples, "botfleet_hazard_leader", &[]), 1.0);
    assert_eq!(sample(&samples, "botfleet_fetcher_leader", &[]), 1.0);
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// With the history archive on (SQLite in a temporary directory), the session, task and
/// event listings add a page of what the archive holds, with time ranges and cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_add_the_archive_with_paging_and_time_ranges() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server.url());
    s.history.enabled = true;
    s.history.dir = dir.path().to_string_lossy().into_owned();
    s.history.flush_interval_ms = 20;
    let fleet = Fleet::start(s).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings(""))
        .start()
        .unwrap();
    let base = base(&http);
    let mut sessions = Vec::new();
    for name in ["first", "second"] {
        let (status, started) = post(
            &format!("{base}/api/bot/start"),
            None,
            &json!({ "session_name": name }).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{started}");
        sessions.push(started["session_id"].as_str().unwrap().to_owned());
        let (status, _) = post(&format!("{base}/api/bot/stop"), None, "").await;
        assert_eq!(status, StatusCode::OK);
    }
    // The archive is written off the callers' path: wait for both ended sessions.
    let b = base.clone();
    poll_until_async(Duration::from_secs(20), move || {
        let b = b.clone();
        async move {
            let (_, listing) = get(&format!("{b}/api/bot/sessions")).await;
            listing["archived"]["items"]
                .as_array()
                .is_some_and(|items| items.iter().filter(|s| s["ended_ms"].is_i64()).count() == 2)
        }
    })
    .await
    .expect("both sessions archived as ended");
    let (_, listing) = get(&format!("{base}/api/bot/sessions?limit=1")).await;
    assert_eq!(listing["active"], json!([]), "none runs: {listing}");
    let page = &listing["archived"];
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(page["items"][0]["id"], sessions[1].as_str(), "newest first");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, next) = get(&format!(
        "{base}/api/bot/sessions?limit=1&cursor={}",
        urlencode(&cursor)
    ))
    .await;
    assert_eq!(
        next["archived"]["items"][0]["id"],
        sessions[0].as_str(),
        "{next}"
    );
    let later = botfleet::clock::now_ms() + 60_000;
    let (_, future) = get(&format!("{base}/api/bot/sessions?since={later}")).await;
    assert_eq!(future["archived"]["items"], json!([]), "{future}");

    // The first session's events, live and archived.
    let b = base.clone();
    let first = sessions[0].clone();
    poll_until_async(Duration::from_secs(20), move || {
        let (b, first) = (b.clone(), first.clone());
        async move {
            let (_, events) = get(&format!("{b}/api/bot/events/{first}")).await;
            events["archived"]["items"]
                .as_array()
                .is_some_and(|i| i.len() == 2)
        }
    })
    .await
    .expect("the session's two events archived");
    let (_, events) = get(&format!("{base}/api/bot/events/{}", sessions[0])).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 2, "{events}");
    assert_eq!(events["archived"]["items"][0]["event_type"], "bot_stopped");

    // The tasks listing carries the archive's page too (no attempt finished: empty).
    let (status, tasks) = get(&format!("{base}/api/bot/tasks?since=0&limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{tasks}");
    assert_eq!(tasks["archived"]["items"], json!([]), "{tasks}");

    for (query, field) in [
        ("sessions?cursor=nonsense", "cursor"),
        ("sessions?since=yesterday", "since"),
        ("sessions?until=-5", "until"),
        ("sessions?colour=red", "colour"),
        ("tasks?until=x", "until"),
    ] {
        let (status, answer) = get(&format!("{base}/api/bot/{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {answer}");
        assert_eq!(answer["field"], field, "{query}: {answer}");
    }
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// Percent-encodes a query value.
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
