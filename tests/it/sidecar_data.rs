//! The sidecar's data services over real HTTP, against real redis-server processes: a seed
//! "English bot" (plain `SET` + `EXPIRE` over RESP, no botfleet) feeding a daemon that has no
//! source; keyspace notifications used where the server emits them and enabled only when
//! asked; 2,000 admin messages to an HTTP consumer that stops without acknowledging its last
//! batch, a second consumer and a Redis `kill -9` in between; seed payloads typed for an
//! embedded host; identities and heartbeats in the seed layout, peer events on the stream;
//! bad input refused naming the field, mutations behind the token.
//!
//! Standalone only: tests kill and restart their server, or change its configuration.

use crate::support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::http::HttpApi;
use botfleet::settings::{ApiSettings, KeyspaceEvents, Secret, Settings};
use botfleet::storage::Mode;
use botfleet::Fleet;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::process::spawn_tied_to_process;
use support::resp::send_command;
use support::{poll_until_async, RedisServer, RespValue};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "sidecar-token";
const SHARED_KEY: &str = "fivem_red_green_shared_data";

fn now_ms() -> u64 {
    botfleet::clock::now_ms()
}

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.redis.url = url.to_string();
    s.storage.redis.timeout_ms = 500;
    s.storage.redis.ping_interval_ms = 50;
    s.presence.interval_ms = 200;
    s.presence.ttl_secs = 60;
    s.supervisor.stop_timeout_ms = 2_000;
    s.heartbeat.enabled = false;
    s
}

fn api_settings() -> ApiSettings {
    ApiSettings {
        bind: "127.0.0.1:0".into(),
        token: Secret::new(TOKEN),
        body_limit_bytes: 16_384,
        // Clients keep their connections: thousands of requests in a row.
        keep_alive_ms: 5_000,
        ..ApiSettings::default()
    }
}

/// An HTTP client of one server, with or without the token.
#[derive(Clone)]
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Api {
        // The server closes a connection idle for `keep_alive_ms` (5 s here, on a clock that
        // may run up to 500 ms behind): a client that reused one kept longer would race that
        // close and see its request fail unanswered. Idle connections are dropped well before.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        Api { base, client }
    }

    fn of(http: &HttpApi) -> Api {
        Api::new(format!("http://{}", http.local_addr()))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: bool,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(90));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        if token {
            request = request.bearer_auth(TOKEN);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, false).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<&str>) -> Value {
        let (status, answer) = self.call(method.clone(), path, body, true).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
        answer
    }
}

/// A server-sent event stream read by a task: every `(event, data)` seen so far.
struct Events {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    async fn follow(url: String) -> Events {
        let mut response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let mut event = None;
                    let mut data = None;
                    for line in frame.lines() {
                        if let Some(e) = line.strip_prefix("event: ") {
                            event = Some(e.to_string());
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(d).unwrap());
                        }
                    }
                    if let (Some(event), Some(data)) = (event, data) {
                        sink.lock().push((event, data));
                    }
                }
            }
        });
        Events { seen, task }
    }

    fn of(&self, event: &str) -> Vec<Value> {
        self.seen
            .lock()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One command over plain RESP, as a seed bot sends it (no botfleet code).
fn resp(server: &RedisServer, args: &[&str]) -> RespValue {
    resp_at(server.addr(), args)
}

fn resp_at(addr: SocketAddr, args: &[&str]) -> RespValue {
    send_command(addr, args, Duration::from_secs(2)).unwrap()
}

/// A round of the seed's English bot: `SET` + `EXPIRE` of its JSON, as seed 000 writes it.
fn seed_round(server: &RedisServer, timestamp: u64, issue: u64) -> Value {
    let shared = json!({
        "timestamp": timestamp,
        "game_data": {"data": {"records": [
            {"issue": issue, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
        ]}},
        "processed_data": {
            "issue_number": issue,
            "colors": "GREEN   🟢",
            "result_format": "123",
            "game_type": "RG5M",
            "last_update": timestamp
        }
    });
    assert!(resp(server, &["SET", SHARED_KEY, &shared.to_string()]).is_ok());
    assert_eq!(
        resp(server, &["EXPIRE", SHARED_KEY, "300"]).as_int(),
        Some(1)
    );
    shared
}

/// `botfleet run` as a process, with its HTTP address read from its log.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(redis_url: &str, vars: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
        cmd.arg("run")
            .env_clear()
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "botfleet=info")
            .env("BOTFLEET__LOG__FORMAT", "json")
            .env("BOTFLEET__API__BIND", "127.0.0.1:0")
            .env("BOTFLEET__SUPERVISOR__STOP_TIMEOUT_MS", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = spawn_tied_to_process(cmd).unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sent {
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(addr) = value["fields"]["addr"].as_str() {
                    if line.contains("HTTP API listening") {
                        let _ = tx.send(addr.to_string());
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("the daemon logs the address it listens on");
        Daemon { child, addr }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seed writer feeds a daemon that has no source: each round reaches `GET
/// /api/shared-data` within the watch's bound, the stream delivers each round once and in
/// order, and `/status` shows the snapshot. Redis emits no keyspace events here (its
/// default): the key is checked every `watch_interval_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_writer_feeds_a_daemon_without_a_source() {
    const INTERVAL_MS: u64 = 200;
    // The stated bound is the interval plus one GET; the rest is scheduling on a busy machine.
    const SLACK_MS: u64 = 1_000;
    let server = RedisServer::start().unwrap();
    let interval = INTERVAL_MS.to_string();
    let daemon = Daemon::start(
        &server.url(),
        &[
            ("BOTFLEET__SHARED_DATA__ENABLED", "true"),
            ("BOTFLEET__SHARED_DATA__WATCH_INTERVAL_MS", &interval),
            ("BOTFLEET__HEARTBEAT__ENABLED", "false"),
        ],
    );
    let api = Api::new(format!("http://{}", daemon.addr));
    let (status, nothing) = api.get("/api/shared-data").await;
    assert_eq!(status, StatusCode::OK, "{nothing}");
    assert_eq!(nothing["snapshot"], Value::Null, "{nothing}");
    assert_eq!(nothing["origin"], "none");
    assert_eq!(nothing["stale"], true);

    let stream = Events::follow(format!("{}/api/shared-data/stream", api.base)).await;
    let mut rounds = Vec::new();
    let mut latencies = Vec::new();
    for issue in 1..=5u64 {
        let timestamp = now_ms().max(rounds.last().map_or(0, |t| t + 1));
        let written = seed_round(&server, timestamp, 1_000 + issue);
        let wrote_at = Instant::now();
        let last = Arc::new(Mutex::new(Value::Null));
        poll_until_async(WAIT, || {
            let (api, last) = (api.clone(), last.clone());
            async move {
                let (status, reading) = api.get("/api/shared-data").await;
                assert_eq!(status, StatusCode::OK, "{reading}");
                let hit = reading["timestamp"] == timestamp;
                *last.lock() = reading;
                hit
            }
        })
        .await
        .unwrap_or_else(|e| panic!("round {issue} not seen: {e}; last {}", last.lock()));
        let latency = wrote_at.elapsed();
        let seen = last.lock().clone();
        latencies.push(latency);
        assert_eq!(seen["snapshot"], written, "the snapshot as written");
        // The first round may be found by the read itself (its copy was empty: it reads
        // Redis); the next ones only the key watch brings (the copy is fresh meanwhile).
        if issue > 1 {
            assert_eq!(seen["origin"], "memory", "{seen}");
        } else {
            assert!(["memory", "redis"].contains(&seen["origin"].as_str().unwrap()));
        }
        assert_eq!(seen["stale"], false, "{seen}");
        assert!(
            latency <= Duration::from_millis(INTERVAL_MS + SLACK_MS),
            "round {issue} took {latency:?}"
        );
        rounds.push(timestamp);
    }
    println!("seed rounds seen after {latencies:?} (watch interval {INTERVAL_MS} ms)");

    let want = rounds.len();
    poll_until_async(WAIT, || {
        let n = stream.of("snapshot").len();
        async move { n >= want }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", stream.of("snapshot")));
    let streamed: Vec<u64> = stream
        .of("snapshot")
        .iter()
        .map(|d| d["timestamp"].as_u64().unwrap())
        .collect();
    assert_eq!(streamed, rounds, "each round once, in order");
    assert_eq!(
        stream.of("snapshot")[4]["snapshot"]["processed_data"]["issue_number"],
        1_005
    );

    let (status, snapshot_status) = api.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    let section = &snapshot_status["snapshot"];
    assert_eq!(section["timestamp"], rounds[4], "{section}");
    assert_eq!(
        section["snapshot"]["processed_data"]["issue_number"], 1_005,
        "{section}"
    );
    assert_eq!(section["watch"]["mode"], "checks", "{section}");
    assert!(section["watch"]["snapshots_found"].as_u64().unwrap() >= 4);
    assert_eq!(
        section["fetcher"]["leader"], false,
        "no source: never leads"
    );
    // An older round (a writer behind the others) does not go back in time.
    seed_round(&server, rounds[0], 999);
    let reads = section["watch"]["reads"].as_u64().unwrap();
    poll_until_async(WAIT, || {
        let api = api.clone();
        async move {
            let (_, status) = api.get("/status").await;
            status["snapshot"]["watch"]["reads"].as_u64().unwrap() > reads + 2
        }
    })
    .await
    .unwrap();
    let (_, reading) = api.get("/api/shared-data").await;
    assert_eq!(reading["timestamp"], rounds[4], "{reading}");
}

/// Keyspace notifications: used where the server already emits them (a write reaches the
/// readers without waiting for a check), never enabled by `auto`, enabled by `enable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_are_used_where_emitted_and_enabled_only_when_asked() {
    // Checks alone would take up to this long: notifications must be much faster.
    const SLOW_CHECKS_MS: u64 = 5_000;
    let emitting = RedisServer::builder()
        .config("notify-keyspace-events K$")
        .start()
        .unwrap();
    let mut s = settings(&emitting.url());
    s.shared_data.enabled = true;
    s.shared_data.readers = vec!["VI".into()];
    s.shared_data.watch_interval_ms = SLOW_CHECKS_MS;
    let fleet = Fleet::start(s).await.unwrap();
    let shared = fleet.shared_data();
    poll_until_async(WAIT, || {
        let mode = shared.metrics().watch.mode;
        async move { mode == botfleet::actors::shared_data::WatchMode::Keyspace }
    })
    .await
    .unwrap();
    let reader = shared.reader("VI").unwrap();
    let mut last = 0;
    let mut latencies = Vec::new();
    for issue in 1..=3u64 {
        let timestamp = now_ms().max(last + 1);
        seed_round(&emitting, timestamp, issue);
        let wrote_at = Instant::now();
        let snapshot = tokio::time::timeout(Duration::from_millis(2_000), reader.newer_than(last))
            .await
            .expect("a keyspace event brings the round long before a check would");
        latencies.push(wrote_at.elapsed());
        assert_eq!(snapshot.timestamp, timestamp);
        assert_eq!(snapshot.processed_data["issue_number"], issue);
        last = timestamp;
    }
    println!("keyspace events: rounds reached the reader after {latencies:?}");
    assert!(
        shared.metrics().watch.events >= 3,
        "{:?}",
        shared.metrics().watch
    );
    fleet.shutdown().await.unwrap();

    // A server that emits none: `auto` checks the key and leaves the server alone.
    let plain = RedisServer::start().unwrap();
    let flags = |server: &RedisServer| {
        server
            .cmd(&["CONFIG", "GET", "notify-keyspace-events"])
            .as_array()
            .unwrap()[1]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(flags(&plain), "");
    let mut s = settings(&plain.url());
    s.shared_data.enabled = true;
    s.shared_data.readers = vec!["JP".into()];
    s.shared_data.watch_interval_ms = 100;
    let fleet = Fleet::start(s.clone()).await.unwrap();
    let shared = fleet.shared_data();
    poll_until_async(WAIT, || {
        let reads = shared.metrics().watch.reads;
        async move { reads >= 3 }
    })
    .await
    .unwrap();
    assert_eq!(
        shared.metrics().watch.mode,
        botfleet::actors::shared_data::WatchMode::Checks
    );
    assert_eq!(flags(&plain), "", "auto never changes the server");
    fleet.shutdown().await.unwrap();

    // `enable` adds K$ and uses them.
    s.shared_data.keyspace_events = KeyspaceEvents::Enable;
    let fleet = Fleet::start(s).await.unwrap();
    let shared = fleet.shared_data();
    poll_until_async(WAIT, || {
        let mode = shared.metrics().watch.mode;
        async move { mode == botfleet::actors::shared_data::WatchMode::Keyspace }
    })
    .await
    .unwrap();
    let now = flags(&plain);
    assert!(now.contains('K') && now.contains('$'), "{now}");
    fleet.shutdown().await.unwrap();
}

/// The one consumer loop of the admin test: reads `max` messages, handles each id once
/// (`handled` persists across the consumer's restarts, as a bot's own store would), and
/// acknowledges them unless told not to.
struct Consumer {
    api: Api,
    pid: u32,
    handled: Vec<String>,
    ids: HashSet<String>,
    redelivered: Vec<String>,
    seed_kinds: usize,
}

impl Consumer {
    /// One read; answers (messages read, stale).
    async fn read(&mut self, wait_ms: u64, ack: bool) -> (Vec<Value>, bool) {
        let (status, answer) = self
            .api
            .get(&format!(
                "/api/admin/inbox/{}?max=100&wait_ms={wait_ms}",
                self.pid
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let messages = answer["messages"].as_array().unwrap().clone();
        for m in &messages {
            let id = m["id"].as_str().unwrap().to_string();
            if self.ids.insert(id.clone()) {
                self.handled
                    .push(m["message"].as_str().unwrap().to_string());
                if m["kind"] == "seed" {
                    assert!(m["sent_at"].as_u64().is_some(), "{m}");
                    self.seed_kinds += 1;
                }
            } else {
                self.redelivered.push(id);
            }
        }
        if ack && !messages.is_empty() {
            let answer = self.ack(&messages).await;
            assert_eq!(answer["stale"], false, "{answer}");
            assert_eq!(answer["acked"], messages.len(), "{answer}");
        }
        (messages, answer["stale"] == true)
    }

    /// Acknowledges `messages`; answers the daemon's answer.
    async fn ack(&self, messages: &[Value]) -> Value {
        let ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
        self.api
            .ok(
                Method::POST,
                &format!("/api/admin/inbox/{}/ack", self.pid),
                Some(&json!({ "ids": ids }).to_string()),
            )
            .await
    }
}

/// Message `i` of the admin test; every 25th is pushed as a seed payload by a plain client.
async fn send_admin(api: &Api, redis: Option<SocketAddr>, pid: u32, i: usize) {
    let text = format!("msg-{i:04}");
    match redis {
        Some(addr) if i % 25 == 7 => {
            // Seed 004's Python: `{"message", "timestamp"}` with RPUSH (read from the head).
            let payload = json!({
                "type": "admin_message",
                "timestamp": botfleet::clock::iso8601_ms(now_ms()).trim_end_matches('Z'),
                "message": text,
            })
            .to_string();
            let queue = format!("admin:queue:{pid}");
            assert!(resp_at(addr, &["RPUSH", &queue, &payload])
                .as_int()
                .is_some());
        }
        _ => {
            api.ok(
                Method::POST,
                "/api/admin/send",
                Some(&json!({ "pid": pid, "message": text }).to_string()),
            )
            .await;
        }
    }
}

/// 2,000 admin messages to an HTTP consumer through the daemon: the first consumer stops
/// without acknowledging its last batch; Redis is killed (-9, persistence on) and restarted
/// while messages are sent; a second consumer resumes. Every message is delivered, in send
/// order, the unacknowledged ones again (deduped by id), none lost, the queue empty at the
/// end. Seed payloads pushed with RPUSH are delivered, typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_admin_messages_reach_an_http_consumer_in_order_across_a_crash() {
    const PID: u32 = 4_100_001;
    const TOTAL: usize = 2_000;
    let mut server = RedisServer::builder().persistence(true).start().unwrap();
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings())
        .start()
        .unwrap();
    let api = Api::of(&http);
    let queue = format!("admin:queue:{PID}");
    let started = Instant::now();

    // 800 sent while Redis is up; the first consumer handles 500, acknowledges them, then
    // reads 100 more and stops before acknowledging those.
    let addr = server.addr();
    for i in 0..800 {
        send_admin(&api, Some(addr), PID, i).await;
    }
    let mut consumer = Consumer {
        api: api.clone(),
        pid: PID,
        handled: Vec::new(),
        ids: HashSet::new(),
        redelivered: Vec::new(),
        seed_kinds: 0,
    };
    while consumer.handled.len() < 500 {
        consumer.read(0, true).await;
    }
    let (unacked, _) = consumer.read(0, false).await;
    assert_eq!(unacked.len(), 100);
    let unacked: Vec<String> = unacked
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        server.cmd(&["LLEN", &queue]).as_int(),
        Some(300),
        "acknowledged entries left the queue, the others stay"
    );

    // A new consumer (the bot restarted, its record of handled ids kept) reads those 100
    // again. Redis dies before it acknowledges them; 400 more are sent meanwhile (to the
    // daemon's fallback and outbox). Its acknowledgement waits in the outbox; its reads answer
    // nothing while Redis's queue cannot be read, and say so.
    let (again, _) = consumer.read(0, false).await;
    let again_ids: Vec<&str> = again.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        again_ids, unacked,
        "the unacknowledged batch, again, in order"
    );
    server.kill9();
    poll_until_async(WAIT, || {
        let mode = fleet.storage().mode();
        async move { mode == Mode::Degraded }
    })
    .await
    .unwrap();
    for i in 800..1_200 {
        send_admin(&api, None, PID, i).await;
    }
    let acked = consumer.ack(&again).await;
    assert_eq!(
        acked,
        json!({"acked": 100, "stale": true}),
        "applied on Redis later"
    );
    let (during, stale) = consumer.read(200, true).await;
    assert!(during.is_empty(), "{during:?}");
    assert!(
        stale,
        "a read during the outage says it could not see Redis"
    );
    server.restart().unwrap();
    poll_until_async(WAIT, || {
        let mode = fleet.storage().mode();
        async move { mode == Mode::Redis }
    })
    .await
    .unwrap();
    // The replay appended the 400 and removed the acknowledged 100 (the AOF kept the rest).
    assert_eq!(server.cmd(&["LLEN", &queue]).as_int(), Some(600));
    let head = server.cmd(&["LINDEX", &queue, "0"]);
    assert!(
        head.as_str().unwrap().contains("msg-0600"),
        "the queue starts after what was acknowledged: {head:?}"
    );

    // The second consumer runs while the last 800 are sent, seed payloads among them.
    let sender = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 1_200..TOTAL {
                send_admin(&api, Some(addr), PID, i).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.handled.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} handled",
            consumer.handled.len()
        );
        consumer.read(1_000, true).await;
    }
    sender.await.unwrap();
    let (rest, _) = consumer.read(0, true).await;
    assert!(rest.is_empty(), "nothing more: {rest:?}");

    let expected: Vec<String> = (0..TOTAL).map(|i| format!("msg-{i:04}")).collect();
    assert_eq!(consumer.handled, expected, "each once, in send order");
    let again: HashSet<&String> = consumer.redelivered.iter().collect();
    for id in &unacked {
        assert!(again.contains(id), "unacknowledged {id} delivered again");
    }
    assert_eq!(consumer.seed_kinds, 64, "the seed payloads, typed");
    assert_eq!(
        server.cmd(&["LLEN", &queue]).as_int(),
        Some(0),
        "the queue is empty"
    );
    println!(
        "{TOTAL} admin messages through HTTP in {:?}; {} delivered again",
        started.elapsed(),
        consumer.redelivered.len()
    );
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// A payload without an id heard live is delivered after a read of the queue, so it cannot
/// overtake a message whose live copy was missed: here one only pushed (a bare `RPUSH`
/// announces nothing), as a message published before the subscription would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_payload_heard_live_does_not_overtake_a_queued_message() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    // No poll during the test: only the reads on start and those live messages start.
    s.admin.poll_interval_ms = 600_000;
    let fleet = Fleet::start(s).await.unwrap();
    let own = std::process::id();
    let (channel, queue) = (format!("admin:bot:{own}"), format!("admin:queue:{own}"));
    let mut inbox = fleet.admin().inbox().unwrap();
    // Subscribed, and the queue read once with the consumer there (it was empty).
    poll_until_async(WAIT, || {
        let subscribed = server
            .cmd(&["PUBSUB", "NUMSUB", &channel])
            .as_array()
            .unwrap()[1]
            .as_int()
            == Some(1);
        let read = fleet.admin().stats().queue_reads >= 1;
        async move { subscribed && read }
    })
    .await
    .unwrap();

    let queued = json!({
        "id": "admin_1740227344000_00000001",
        "type": "admin_message",
        "timestamp": "2025-02-22T12:29:04.000000",
        "message": "queued first",
    })
    .to_string();
    resp(&server, &["RPUSH", &queue, &queued]);
    let plain = json!({"message": "heard second", "timestamp": 1_740_227_345.0}).to_string();
    resp(&server, &["PUBLISH", &channel, &plain]);
    resp(&server, &["RPUSH", &queue, &plain]);

    let mut got = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(message.message);
    }
    assert_eq!(got, ["queued first", "heard second"]);
    // Each once. The live copy may have been delivered before its queued copy landed (the
    // read it started ran first); the next read of the queue (here asked for, as the poll
    // would) finds that copy, drops it and does not deliver it again: the queue empties and
    // nothing more comes.
    fleet.admin().read_queue().await.unwrap();
    poll_until_async(WAIT, || {
        let n = server.cmd(&["LLEN", &queue]).as_int();
        async move { n == Some(0) }
    })
    .await
    .unwrap();
    assert!(inbox.try_recv().is_err(), "each once");
    fleet.shutdown().await.unwrap();
}

/// Seed payloads reach an embedded host as typed messages (the seed's publish-then-push,
/// with its own id; a bare `{"message", "timestamp"}`); another pid's queue filled with
/// LPUSH is served through HTTP; the queue of the host's own pid is refused over HTTP while
/// the host consumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_payloads_are_typed_for_the_host_and_the_http_consumer() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.admin.poll_interval_ms = 100;
    let fleet = Fleet::start(s).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings())
        .start()
        .unwrap();
    let api = Api::of(&http);
    let own = std::process::id();
    let mut inbox = fleet.admin().inbox().unwrap();
    let with_id = json!({
        "id": "admin_1740227344593_0a1b2c3d",
        "type": "admin_message",
        "timestamp": "2025-02-22T12:29:04.593000",
        "room_url": "https://room.url",
        "message": "Hello bot!",
    })
    .to_string();
    let bare = json!({"message": "second", "timestamp": 1_740_227_344.5}).to_string();
    for payload in [&with_id, &bare] {
        resp(&server, &["PUBLISH", &format!("admin:bot:{own}"), payload]);
        resp(&server, &["RPUSH", &format!("admin:queue:{own}"), payload]);
    }
    let first = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.message, "Hello bot!");
    assert_eq!(first.id.as_deref(), Some("admin_1740227344593_0a1b2c3d"));
    assert_eq!(first.sent_at_ms, Some(1_740_227_344_593));
    assert_eq!(first.raw, with_id);
    let second = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.message, "second");
    assert_eq!(second.sent_at_ms, Some(1_740_227_344_500));
    poll_until_async(WAIT, || {
        let n = server
            .cmd(&["LLEN", &format!("admin:queue:{own}")])
            .as_int();
        async move { n == Some(0) }
    })
    .await
    .unwrap();
    assert!(inbox.try_recv().is_err(), "each once");

    let (status, answer) = api.get(&format!("/api/admin/inbox/{own}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    // Another bot's queue: a payload pushed at the head (LPUSH) is delivered too.
    let other = 4_100_003u32;
    resp(
        &server,
        &["LPUSH", &format!("admin:queue:{other}"), "plain text"],
    );
    resp(&server, &["LPUSH", &format!("admin:queue:{other}"), &bare]);
    let answer = api
        .ok(
            Method::GET,
            &format!("/api/admin/inbox/{other}?wait_ms=1000"),
            None,
        )
        .await;
    let messages = answer["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{answer}");
    assert_eq!(messages[0]["message"], "second");
    assert_eq!(messages[0]["kind"], "seed");
    assert_eq!(messages[0]["sent_at"], 1_740_227_344_500u64);
    assert_eq!(messages[1]["message"], "plain text");
    assert_eq!(messages[1]["kind"], "text");
    assert!(messages[1]["id"].as_str().unwrap().starts_with("sha256:"));
    // A long-poll returns as soon as a message is sent.
    let third = 4_100_004u32;
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = api
                .ok(
                    Method::GET,
                    &format!("/api/admin/inbox/{third}?wait_ms=30000"),
                    None,
                )
                .await;
            (answer, started.elapsed())
        })
    };
    poll_until_async(WAIT, || {
        let n = server
            .cmd(&["PUBSUB", "NUMSUB", &format!("admin:bot:{third}")])
            .as_array()
            .unwrap()[1]
            .as_int();
        async move { n == Some(1) }
    })
    .await
    .unwrap();
    let id = fleet
        .admin()
        .send(&third.to_string(), "wake up")
        .await
        .unwrap();
    let (answer, took) = waiting.await.unwrap();
    assert_eq!(answer["messages"][0]["id"], id, "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// A child process to give a heartbeat to: alive until killed.
fn sleeper() -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdout(Stdio::null());
    spawn_tied_to_process(cmd).unwrap()
}

async fn wait_event(events: &Events, pid: u32, event: &str) -> Value {
    let mut found = Value::Null;
    poll_until_async(WAIT, || {
        let hit = events
            .of("peer")
            .into_iter()
            .find(|e| e["pid"] == pid && e["event"] == event);
        let done = hit.is_some();
        if let Some(hit) = hit {
            found = hit;
        }
        async move { done }
    })
    .await
    .unwrap_or_else(|e| panic!("no {event} of {pid}: {e}; saw {:?}", events.of("peer")));
    found
}

/// Identities and heartbeats written over HTTP are the seed's keys, readable by a plain
/// client, and the other way round; peers are listed, their events (joined, stale, zombie,
/// left) streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_and_heartbeats_round_trip_in_the_seed_layout() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.heartbeat.enabled = true;
    // Stale after two intervals (600 ms); keys live 2 s.
    s.heartbeat.interval_ms = 300;
    s.heartbeat.ttl_secs = 2;
    s.heartbeat.monitor_interval_ms = 50;
    let fleet = Fleet::start(s).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings())
        .start()
        .unwrap();
    let api = Api::of(&http);

    // Identities.
    let room = "https://room.url/r?x=[1]";
    let identity = json!({"name": "John", "langs": ["en", "vi"]});
    let put = json!({"room": room, "participant": "user1", "identity": identity}).to_string();
    assert_eq!(
        api.ok(Method::PUT, "/api/identities", Some(&put)).await,
        json!({"ok": true})
    );
    let key = format!("identity:{room}:user1");
    let stored: Value =
        serde_json::from_str(resp(&server, &["GET", &key]).as_str().unwrap()).unwrap();
    assert_eq!(stored, identity, "the seed's key, plain JSON");
    let ttl = resp(&server, &["TTL", &key]).as_int().unwrap();
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
    resp(
        &server,
        &[
            "SET",
            &format!("identity:{room}:user2"),
            r#"{"name":"Ann"}"#,
            "EX",
            "100",
        ],
    );
    let query = |extra: &str| {
        format!(
            "/api/identities?room={}{extra}",
            url::form_urlencoded::byte_serialize(room.as_bytes()).collect::<String>()
        )
    };
    let (status, ann) = api.get(&query("&participant=user2")).await;
    assert_eq!(status, StatusCode::OK, "{ann}");
    assert_eq!(ann, json!({"name": "Ann"}));
    let (status, listing) = api.get(&query("")).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    assert_eq!(
        listing["identities"],
        json!({"user1": identity, "user2": {"name": "Ann"}})
    );
    assert_eq!(listing["truncated"], false);
    let (_, one) = api.get(&query("&limit=1")).await;
    assert_eq!(one["identities"], json!({"user1": identity}));
    assert_eq!(one["truncated"], true);
    let deleted = api
        .ok(Method::DELETE, &query("&participant=user1"), None)
        .await;
    assert_eq!(deleted, json!({"deleted": true}));
    let again = api
        .ok(Method::DELETE, &query("&participant=user1"), None)
        .await;
    assert_eq!(again, json!({"deleted": false}));
    let (status, _) = api.get(&query("&participant=user1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(resp(&server, &["GET", &key]).is_nil());

    // Heartbeats and peers.
    let events = Events::follow(format!("{}/api/peers/stream", api.base)).await;
    let mut bot = sleeper();
    let pid = bot.id();
    let body = json!({"room_url": "https://room.url/a", "participants": ["u1", "u2"]});
    let record = api
        .ok(
            Method::PUT,
            &format!("/api/heartbeats/{pid}"),
            Some(&body.to_string()),
        )
        .await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(record["pid"], pid);
    assert_eq!(record["host"], host.trim());
    assert_eq!(record["status"], "active");
    let stored: Value = serde_json::from_str(
        resp(&server, &["GET", &format!("heartbeat:{pid}")])
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, record, "the seed's key and fields");
    let age_s = now_ms() as f64 / 1_000.0 - stored["timestamp"].as_f64().unwrap();
    assert!(age_s.abs() < 5.0, "seconds, the server's clock: {age_s}");
    let pttl = resp(&server, &["PTTL", &format!("heartbeat:{pid}")])
        .as_int()
        .unwrap();
    assert!((1..=2_000).contains(&pttl), "{pttl}");
    let (status, read) = api.get(&format!("/api/heartbeats/{pid}")).await;
    assert_eq!((status, &read), (StatusCode::OK, &record));
    let joined = wait_event(&events, pid, "joined").await;
    assert_eq!(joined["peer"]["state"], "live", "{joined}");
    assert_eq!(joined["peer"]["participants"], json!(["u1", "u2"]));
    let (_, peers) = api.get("/api/peers").await;
    let listed = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .cloned()
        .unwrap_or_else(|| panic!("{peers}"));
    assert_eq!(listed["room_url"], "https://room.url/a");

    // Its process dies while its key lives: a zombie. Deleted: it left.
    bot.kill().unwrap();
    bot.wait().unwrap();
    api.ok(Method::PUT, &format!("/api/heartbeats/{pid}"), None)
        .await;
    wait_event(&events, pid, "zombie").await;
    let deleted = api
        .ok(Method::DELETE, &format!("/api/heartbeats/{pid}"), None)
        .await;
    assert_eq!(deleted, json!({"deleted": true}));
    let left = wait_event(&events, pid, "left").await;
    assert_eq!(left["last_state"], "zombie");

    // A bot on another host that writes its heartbeat itself, once: joined, stale, left.
    let foreign = 4_100_005u32;
    let beat = json!({
        "pid": foreign, "host": "elsewhere", "room_url": null, "participants": [],
        "status": "active", "timestamp": now_ms() as f64 / 1_000.0,
    });
    resp(
        &server,
        &[
            "SET",
            &format!("heartbeat:{foreign}"),
            &beat.to_string(),
            "PX",
            "1500",
        ],
    );
    wait_event(&events, foreign, "joined").await;
    wait_event(&events, foreign, "stale").await;
    let left = wait_event(&events, foreign, "left").await;
    assert_eq!(left["last_state"], "stale");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// Hostile input: 400 naming the field, nothing stored; mutations need the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_mutations_need_the_token() {
    let server = RedisServer::start().unwrap();
    let mut s = settings(&server.url());
    s.identities.max_bytes = 256;
    s.shared_data.enabled = true;
    let fleet = Fleet::start(s).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings())
        .start()
        .unwrap();
    let api = Api::of(&http);
    let big = json!({"room": "r", "participant": "p", "identity": {"x": "y".repeat(300)}});
    let cases: Vec<(Method, String, Option<String>, &str)> = vec![
        (Method::GET, "/api/admin/inbox/0".into(), None, "pid"),
        (Method::GET, "/api/admin/inbox/abc".into(), None, "pid"),
        (Method::GET, "/api/admin/inbox/-1".into(), None, "pid"),
        (
            Method::GET,
            "/api/admin/inbox/99999999999".into(),
            None,
            "pid",
        ),
        (Method::GET, "/api/admin/inbox/12?max=0".into(), None, "max"),
        (
            Method::GET,
            "/api/admin/inbox/12?max=1001".into(),
            None,
            "max",
        ),
        (
            Method::GET,
            "/api/admin/inbox/12?max=1&max=2".into(),
            None,
            "max",
        ),
        (
            Method::GET,
            "/api/admin/inbox/12?wait_ms=60001".into(),
            None,
            "wait_ms",
        ),
        (
            Method::GET,
            "/api/admin/inbox/12?colour=red".into(),
            None,
            "colour",
        ),
        (
            Method::POST,
            "/api/admin/inbox/0/ack".into(),
            Some(r#"{"ids": []}"#.into()),
            "pid",
        ),
        (
            Method::POST,
            "/api/admin/inbox/12/ack".into(),
            Some(r#"{"ids": "x"}"#.into()),
            "ids",
        ),
        (
            Method::POST,
            "/api/admin/inbox/12/ack".into(),
            Some(r#"{"ids": [""]}"#.into()),
            "ids[0]",
        ),
        (
            Method::POST,
            "/api/admin/inbox/12/ack".into(),
            Some(r#"{"ids": [1]}"#.into()),
            "ids[0]",
        ),
        (
            Method::POST,
            "/api/admin/inbox/12/ack".into(),
            Some(r#"{"idz": []}"#.into()),
            "idz",
        ),
        (
            Method::POST,
            "/api/admin/inbox/12/ack".into(),
            Some(json!({"ids": vec!["a"; 1_001]}).to_string()),
            "ids",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"participant": "p", "identity": {}}"#.into()),
            "room",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": " ", "participant": "p", "identity": {}}"#.into()),
            "room",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": "r\n", "participant": "p", "identity": {}}"#.into()),
            "room",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(
                json!({"room": "r".repeat(2_049), "participant": "p", "identity": {}}).to_string(),
            ),
            "room",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": "r", "participant": "", "identity": {}}"#.into()),
            "participant",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": "r", "participant": "p", "identity": [1]}"#.into()),
            "identity",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": "r", "participant": "p"}"#.into()),
            "identity",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(big.to_string()),
            "identity",
        ),
        (
            Method::PUT,
            "/api/identities".into(),
            Some(r#"{"room": "r", "participant": "p", "identity": {}, "ttl": 5}"#.into()),
            "ttl",
        ),
        (Method::GET, "/api/identities".into(), None, "room"),
        (
            Method::GET,
            "/api/identities?room=r&participant=".into(),
            None,
            "participant",
        ),
        (
            Method::GET,
            "/api/identities?room=r&limit=0".into(),
            None,
            "limit",
        ),
        (Method::GET, "/api/identities?room=r&x=1".into(), None, "x"),
        (
            Method::DELETE,
            "/api/identities?room=r".into(),
            None,
            "participant",
        ),
        (Method::PUT, "/api/heartbeats/0".into(), None, "pid"),
        (
            Method::PUT,
            "/api/heartbeats/12".into(),
            Some(r#"{"participants": [""]}"#.into()),
            "participants[0]",
        ),
        (
            Method::PUT,
            "/api/heartbeats/12".into(),
            Some(r#"{"participants": "a"}"#.into()),
            "participants",
        ),
        (
            Method::PUT,
            "/api/heartbeats/12".into(),
            Some(r#"{"status": ""}"#.into()),
            "status",
        ),
        (
            Method::PUT,
            "/api/heartbeats/12".into(),
            Some(r#"{"room_url": ""}"#.into()),
            "room_url",
        ),
        (
            Method::PUT,
            "/api/heartbeats/12".into(),
            Some(r#"{"colour": 1}"#.into()),
            "colour",
        ),
        (Method::DELETE, "/api/heartbeats/x".into(), None, "pid"),
        (
            Method::GET,
            "/api/shared-data?reader=XX".into(),
            None,
            "reader",
        ),
        (Method::GET, "/api/shared-data?x=1".into(), None, "x"),
        (Method::GET, "/api/peers?x=1".into(), None, "x"),
    ];
    for (method, path, body, field) in &cases {
        let (status, answer) = api.call(method.clone(), path, body.as_deref(), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        assert_eq!(answer["field"], *field, "{method} {path}: {answer}");
    }
    let put = r#"{"room": "r", "participant": "p", "identity": {}}"#;
    for (method, path, body) in [
        (Method::PUT, "/api/identities", Some(put)),
        (Method::DELETE, "/api/identities?room=r&participant=p", None),
        (Method::PUT, "/api/heartbeats/12", None),
        (Method::DELETE, "/api/heartbeats/12", None),
        (
            Method::POST,
            "/api/admin/inbox/12/ack",
            Some(r#"{"ids": []}"#),
        ),
    ] {
        let (status, answer) = api.call(method.clone(), path, body, false).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
    }
    for pattern in ["identity:*", "heartbeat:*", "admin:*"] {
        assert_eq!(
            server.cmd(&["KEYS", pattern]),
            RespValue::Array(Vec::new()),
            "nothing stored under {pattern}"
        );
    }
    // With the token, the same requests pass.
    api.ok(Method::PUT, "/api/identities", Some(put)).await;
    api.ok(
        Method::POST,
        "/api/admin/inbox/12/ack",
        Some(r#"{"ids": []}"#),
    )
    .await;
    http.stop().await;
    fleet.shutdown().await.unwrap();

    // Shared data disabled: nothing there.
    let fleet = Fleet::start(settings(&server.url())).await.unwrap();
    let http = HttpApi::builder(fleet.clone())
        .settings(api_settings())
        .start()
        .unwrap();
    let (status, answer) = Api::of(&http).get("/api/shared-data").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// One read and one acknowledgement of a queue holding an envelope twice (a replay's copy), a
/// seed payload and plain text: what they answer and leave.
async fn ack_outcome(storage: botfleet::storage::Storage) -> (Vec<String>, u64, Vec<String>, bool) {
    let admin = botfleet::actors::heartbeat::Admin::for_pid(
        storage.clone(),
        botfleet::settings::AdminSettings::default(),
        "parity",
        1,
    );
    let queue = "admin:queue:77";
    let envelope = r#"{"id":"h-1-000000000001","from":"h-1","message":"one","sent_at":5}"#;
    let seed = r#"{"message":"two","timestamp":1740227344.5}"#;
    storage
        .rpush(queue, &[envelope, seed, envelope, "three"])
        .await
        .unwrap();
    storage
        .expire(queue, Duration::from_secs(60))
        .await
        .unwrap();
    let read = admin.receive(77, 10, Duration::ZERO).await.unwrap();
    let ids: Vec<String> = read.messages.iter().map(|m| m.id.clone()).collect();
    let acked = admin
        .acknowledge(77, &[ids[0].clone(), ids[1].clone(), "absent".into()])
        .await
        .unwrap();
    let rest = storage.lrange(queue, 0, -1).await.unwrap();
    let expires = matches!(
        storage.ttl(queue).await.unwrap(),
        botfleet::storage::Ttl::Expires(_)
    );
    (ids, acked.acked, rest, expires)
}

/// The `admin-ack-all` script and its Rust twin (the fallback's) answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_answer_alike_on_redis_and_the_fallback() {
    let server = RedisServer::start().unwrap();
    let keys = botfleet::storage::KeySchema::default();
    let on_redis = botfleet::storage::Storage::open(&settings(&server.url()).storage, &keys)
        .await
        .unwrap();
    let mut alone = settings("");
    alone.storage.redis.enabled = false;
    let local = botfleet::storage::Storage::open(&alone.storage, &keys)
        .await
        .unwrap();
    let redis = ack_outcome(on_redis).await;
    let fallback = ack_outcome(local).await;
    assert_eq!(redis, fallback);
    assert_eq!(redis.0.len(), 3, "the copy is one message: {redis:?}");
    assert_eq!(redis.1, 2, "two ids removed entries");
    assert_eq!(
        redis.2,
        vec!["three".to_string()],
        "every copy of the envelope went"
    );
    assert!(redis.3, "the queue keeps its expiry");
}
