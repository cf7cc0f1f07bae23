//! The HTTP API over real sockets: a Fleet on a real redis-server, the server on
//! `127.0.0.1:0`, every endpoint with its bad-input cases and its 401s, `/metrics` through a
//! Prometheus text parser, `/health` flipping to 503 (an actor failing for good; Redis killed
//! with `api.degraded_is_unhealthy`), the live stream, and `botfleet status`.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use actix::prelude::*;
use botfleet::http::{HttpApi, PLACEHOLDER_SECTIONS, TASK_TYPES};
use botfleet::settings::{ApiSettings, Secret, Settings};
use botfleet::supervisor::{ChildContext, ChildSpec};
use botfleet::Fleet;
use reqwest::StatusCode;
use serde_json::{json, Value};
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

/// Samples by (metric name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// `/metrics` through a Prometheus text-format parser: (name, labels) -> value.
async fn scrape(base: &str) -> Samples {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(!scrape.samples.is_empty(), "{text}");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            ((s.metric, labels), value)
        })
        .collect()
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    key.sort();
    *samples
        .get(&(name.to_owned(), key))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:?}"))
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
            "scheduler",
            "heartbeat",
            "peer-monitor",
            "admin-inbox"
        ]
    );
    assert!(snapshot["presence"]["key"].as_str().unwrap().len() > 1);
    for name in PLACEHOLDER_SECTIONS {
        assert!(snapshot[*name].is_null(), "{name} is a null placeholder");
    }

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
    assert_eq!(sample(&samples, "botfleet_lock_waiters", &[]), 1.0);
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
async fn scheduler_endpoints_answer_501_until_one_is_wired_in() {
    let server = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings(""))
        .start()
        .unwrap();
    let base = base(&http);
    for path in [
        "/api/bot/status",
        "/api/bot/sessions",
        "/api/bot/tasks",
        "/api/bot/events/s-1",
        "/api/bot/metrics/s-1",
    ] {
        let (status, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("scheduler"),
            "{body}"
        );
    }
    for (path, body) in [
        ("/api/bot/start", r#"{"session_name": "s"}"#),
        ("/api/bot/start", ""),
        ("/api/bot/stop", ""),
        (
            "/api/bot/tasks/add",
            r#"{"type": "login", "data": {"u": 1}, "priority": 10}"#,
        ),
    ] {
        let (status, answer) = post(&format!("{base}{path}"), None, body).await;
        assert_eq!(
            status,
            StatusCode::NOT_IMPLEMENTED,
            "{path} {body}: {answer}"
        );
    }
    http.stop().await;
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
        let (status, _) = post(&url, Some("s3cret-token"), good).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{path} passes auth");
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
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
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
    for task_type in TASK_TYPES {
        let (status, _) = post(&add, Some("t"), &json!({ "type": task_type }).to_string()).await;
        assert_eq!(
            status,
            StatusCode::NOT_IMPLEMENTED,
            "{task_type} is a valid type"
        );
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
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
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
