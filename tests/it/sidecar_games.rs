//! Game sessions and fairness through the HTTP API (seed 002), as a backend in another
//! language uses the daemon beside it: two `botfleet run` processes on one redis-server
//! applying increments to one session, a whole round played, settled and verified (by the API,
//! by `botfleet verify`, and by reading the keys over RESP as a plain client), bad input
//! refused naming the field with nothing stored, the token on every mutation, 404s, a storage
//! that refuses the write; and the cache's counters in `/status` and `/metrics`.

use crate::support;

use std::time::{Duration, Instant};

use botfleet::http::HttpApi;
use botfleet::settings::{Secret, Settings};
use botfleet::Fleet;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::sidecar::Sidecar;
use support::{poll_until_async, RedisServer};

const TOKEN: &str = "games-token";
const WAIT: Duration = Duration::from_secs(30);

/// `botfleet run` with the token set, on `redis_url`.
fn daemon(redis_url: &str) -> Sidecar {
    Sidecar::start(redis_url, &[("BOTFLEET__API__TOKEN", TOKEN)])
}

/// One request; the status and the body as JSON (a string when it is not JSON).
async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The value of a string key over RESP, parsed as JSON.
fn stored_json(redis: &RedisServer, key: &str) -> Option<Value> {
    let reply = redis.cmd(&["GET", key]);
    reply
        .as_str()
        .map(|text| serde_json::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}: {text}")))
}

/// Clients per daemon, and the increments each sends.
const CLIENTS: usize = 4;
const INCREMENTS_PER_DAEMON: usize = 1_000;

/// Two daemons on one Redis, each hammered by its own concurrent clients, increment one game
/// session 1,000 times each: 2,000 increments applied, none lost, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_apply_every_increment_to_one_session() {
    let redis = RedisServer::start().unwrap();
    let daemons = [daemon(&redis.url()), daemon(&redis.url())];
    let client = reqwest::Client::new();
    let session = |d: &Sidecar| format!("{}/api/game-sessions/player1/agent1", d.url());
    let (status, created) = call(
        &client,
        "PUT",
        &session(&daemons[0]),
        Some(TOKEN),
        Some(r#"{"difficulty": "EASY", "betAmount": 10, "isActive": true, "currency": "INR"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let started = Instant::now();
    let mut clients = Vec::new();
    for daemon in &daemons {
        for _ in 0..CLIENTS {
            let (client, url) = (client.clone(), session(daemon));
            clients.push(tokio::spawn(async move {
                let mut refused = Vec::new();
                for _ in 0..INCREMENTS_PER_DAEMON / CLIENTS {
                    let (status, body) = call(
                        &client,
                        "PATCH",
                        &url,
                        Some(TOKEN),
                        Some(r#"{"increment": {"currentStep": 1, "winAmount": 0.5}}"#),
                    )
                    .await;
                    if status != StatusCode::OK {
                        refused.push(format!("{status} {body}"));
                    }
                }
                refused
            }));
        }
    }
    let mut refused = Vec::new();
    for client in clients {
        refused.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert!(refused.is_empty(), "refused increments: {refused:?}");
    eprintln!(
        "2 daemons x {CLIENTS} clients: 2,000 increments in {elapsed:?} ({:.0}/s)",
        2_000.0 / elapsed.as_secs_f64()
    );

    let expected_step = 2 * INCREMENTS_PER_DAEMON as u64;
    for daemon in &daemons {
        let (status, read) = call(&client, "GET", &session(daemon), None, None).await;
        assert_eq!(status, StatusCode::OK, "{read}");
        assert_eq!(read["currentStep"], expected_step, "{read}");
        assert_eq!(read["winAmount"], 1_000.0, "{read}");
        assert_eq!(read["betAmount"], 10.0, "untouched fields stay: {read}");
        assert_eq!(read["stale"], false);
    }
    // What a seed client reads: the seed's JSON under the seed's key, with its TTL.
    let stored = stored_json(&redis, "gameSession:player1-agent1").expect("the session");
    assert_eq!(stored["currentStep"], expected_step);
    assert_eq!(stored["winAmount"], 1_000.0);
    assert_eq!(stored["currency"], "INR");
    let ttl = redis
        .cmd(&["TTL", "gameSession:player1-agent1"])
        .as_int()
        .unwrap();
    assert!((1..=3_600).contains(&ttl), "TTL {ttl}");
}

/// The strings of an array reply.
fn strings(reply: &support::RespValue) -> Vec<String> {
    reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A whole round through the daemon, as a TypeScript backend plays it: start the player's
/// fairness record, create the session, read the round's hazards, play, settle (the seed is
/// revealed), then verify: the revealed seed hashes to the commitment and reproduces the
/// hazards through the API and through `botfleet verify`. A plain client reads every key in
/// the seed's layout, and a session a plain client writes is read through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_played_through_the_daemon_verifies_with_the_revealed_seed() {
    let redis = RedisServer::start().unwrap();
    let daemon = daemon(&redis.url());
    let client = reqwest::Client::new();
    let base = &daemon.url();
    let fairness = format!("{base}/api/fairness/user123/agent456");
    let session = format!("{base}/api/game-sessions/user123/agent456");
    // Every answer before the settlement, to check that none of them holds the seed.
    let mut seen = Vec::new();

    let (status, record) = call(
        &client,
        "POST",
        &format!("{fairness}/start"),
        Some(TOKEN),
        Some(r#"{"user_seed": "lucky-seed"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["userId"], "user123");
    assert_eq!(record["agentId"], "agent456");
    assert_eq!(record["userSeed"], "lucky-seed");
    assert_eq!(record["nonce"], 0);
    let committed = record["hashedServerSeed"].as_str().unwrap().to_string();
    assert_eq!(committed.len(), 64);
    assert!(record.get("serverSeed").is_none(), "{record}");
    seen.push(record.to_string());

    let (status, round) = call(
        &client,
        "GET",
        &format!("{fairness}/round?difficulty=EASY"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{round}");
    assert_eq!(round["hashedServerSeed"], committed.as_str());
    assert_eq!(round["nonce"], 0);
    let hazards: Vec<u64> = serde_json::from_value(round["hazards"].clone()).unwrap();
    assert_eq!(
        hazards.len(),
        3,
        "EASY has 3 hazards of 30 columns: {round}"
    );
    assert!(hazards.windows(2).all(|w| w[0] < w[1]) && hazards.iter().all(|&c| c < 30));
    seen.push(round.to_string());
    // The same round until it is settled; another difficulty, other hazards, same seeds.
    let (_, again) = call(
        &client,
        "GET",
        &format!("{fairness}/round?difficulty=EASY"),
        None,
        None,
    )
    .await;
    assert_eq!(again["hazards"], round["hazards"]);
    let (status, hard) = call(
        &client,
        "GET",
        &format!("{fairness}/round?difficulty=HARD"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{hard}");
    assert_eq!(hard["hazards"].as_array().unwrap().len(), 7);
    seen.push(hard.to_string());

    // The backend's session for the round, then a step played.
    let body = json!({
        "currency": "INR", "difficulty": "EASY", "userSeed": "lucky-seed",
        "hashedServerSeed": committed, "nonce": 0, "coefficients": ["1.01", "1.03", "1.06"],
        "betAmount": 10.0, "isActive": true, "createdAt": "2024-01-01T00:00:00Z",
        "platformBetTxId": "tx-1", "roundId": "round-1", "collisionColumns": hazards,
    });
    let (status, created) = call(
        &client,
        "PUT",
        &session,
        Some(TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["userId"], "user123");
    let (status, stepped) = call(
        &client,
        "PATCH",
        &session,
        Some(TOKEN),
        Some(r#"{"increment": {"currentStep": 1}, "set": {"winAmount": 10.1}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stepped}");
    assert_eq!(stepped["currentStep"], 1);
    assert_eq!(stepped["winAmount"], 10.1);
    // What was read can be written back as it is (its freshness fields are ignored).
    let (status, read) = call(&client, "GET", &session, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["stale"], false);
    let (status, rewritten) = call(
        &client,
        "PUT",
        &session,
        Some(TOKEN),
        Some(&read.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rewritten}");
    assert_eq!(rewritten["currentStep"], 1);
    seen.push(read.to_string());
    let (status, current) = call(&client, "GET", &fairness, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(current["hashedServerSeed"], committed.as_str());
    seen.push(current.to_string());

    // The seed layout, as a plain client reads it.
    let stored = stored_json(&redis, "fairness:user123:agent456").expect("fairness record");
    let mut fields: Vec<&str> = stored
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["agentId", "hashedServerSeed", "nonce", "userId", "userSeed"]
    );
    assert_eq!(stored["hashedServerSeed"], committed.as_str());
    let game = stored_json(&redis, "gameSession:user123-agent456").expect("game session");
    assert_eq!(game["currentStep"], 1);
    assert_eq!(game["collisionColumns"], round["hazards"]);
    assert_eq!(game["platformBetTxId"], "tx-1");
    let members = strings(&redis.cmd(&["SMEMBERS", "user-sessions:agent456"]));
    assert_eq!(members, ["user123"]);

    // Settle: the seed is revealed and matches the commitment; a new one is committed.
    let (status, settled) = call(
        &client,
        "POST",
        &format!("{fairness}/settle"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{settled}");
    let seed = settled["serverSeed"].as_str().unwrap().to_string();
    assert_eq!(
        sha256_hex(&seed),
        committed,
        "the revealed seed is the committed one"
    );
    assert_eq!(settled["hashedServerSeed"], committed.as_str());
    assert_eq!(settled["userSeed"], "lucky-seed");
    assert_eq!(settled["nonce"], 0);
    assert_eq!(settled["next"]["nonce"], 1);
    assert_ne!(settled["next"]["hashedServerSeed"], committed.as_str());
    for answer in &seen {
        assert!(
            !answer.contains(&seed),
            "the seed leaked before settlement: {answer}"
        );
    }
    let stored = stored_json(&redis, "fairness:user123:agent456").unwrap();
    assert_eq!(stored["nonce"], 1);
    assert_eq!(
        stored["hashedServerSeed"],
        settled["next"]["hashedServerSeed"]
    );

    // Verify through the API: the same hazards at both difficulties played.
    for (difficulty, expected) in [("EASY", &round), ("HARD", &hard)] {
        let request = json!({
            "server_seed": seed, "client_seed": "lucky-seed", "nonce": 0, "difficulty": difficulty,
        });
        let (status, verified) = call(
            &client,
            "POST",
            &format!("{base}/api/fairness/verify"),
            Some(TOKEN),
            Some(&request.to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{verified}");
        assert_eq!(verified["hazards"], expected["hazards"], "{difficulty}");
        assert_eq!(verified["hashed_server_seed"], committed.as_str());
    }
    // And with the command line, reading the daemon's own settings file.
    let out = daemon
        .command(&[
            "verify",
            "--server-seed",
            &seed,
            "--client-seed",
            "lucky-seed",
            "--nonce",
            "0",
            "--difficulty",
            "EASY",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["hazards"], round["hazards"]);
    assert_eq!(cli["hashedServerSeed"], committed.as_str());

    // The next round runs on the new seed.
    let (_, next) = call(
        &client,
        "GET",
        &format!("{fairness}/round?difficulty=EASY"),
        None,
        None,
    )
    .await;
    assert_eq!(next["nonce"], 1);
    assert_eq!(
        next["hashedServerSeed"],
        settled["next"]["hashedServerSeed"]
    );

    // A session a plain client (the seed's ioredis backend) wrote is read through the API,
    // its fields the seed's; then the round ends.
    redis.cmd(&[
        "SET",
        "gameSession:user9-agent456",
        r#"{"userId":"user9","agentId":"agent456","currency":"INR","difficulty":"HARD","currentStep":4,"winAmount":12.5,"isActive":true}"#,
        "EX",
        "3600",
    ]);
    let (status, theirs) = call(
        &client,
        "GET",
        &format!("{base}/api/game-sessions/user9/agent456"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    assert_eq!(
        (
            theirs["currentStep"].as_u64(),
            theirs["difficulty"].as_str()
        ),
        (Some(4), Some("HARD"))
    );
    let (status, deleted) = call(&client, "DELETE", &session, Some(TOKEN), None).await;
    assert_eq!(
        (status, deleted),
        (StatusCode::OK, json!({"deleted": true}))
    );
    let (_, deleted) = call(&client, "DELETE", &session, Some(TOKEN), None).await;
    assert_eq!(deleted, json!({"deleted": false}));
    let (status, _) = call(&client, "GET", &session, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(redis
        .cmd(&["GET", "gameSession:user123-agent456"])
        .as_str()
        .is_none());
}

fn settings(url: &str) -> Settings {
    let mut s = support::suite_settings(url);
    s.api.bind = "127.0.0.1:0".into();
    s.api.token = Secret::new(TOKEN);
    s
}

/// Keys of the game area in Redis.
fn game_keys(redis: &RedisServer) -> Vec<String> {
    let mut keys = Vec::new();
    for pattern in [
        "gameSession:*",
        "fairness:*",
        "user-sessions:*",
        "*fairness-secret*",
    ] {
        if let support::RespValue::Array(items) = redis.cmd(&["KEYS", pattern]) {
            keys.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)));
        }
    }
    keys
}

/// Bad input answers 400 naming the field, and nothing is stored; a mutation without the
/// token answers 401; what is not there answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let redis = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = format!("http://{}", http.local_addr());
    let client = reqwest::Client::new();
    let long = "u".repeat(257);

    // (method, path, body, field named)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"fooBar": 1}"#,
            "fooBar",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"currentStep": -1}"#,
            "currentStep",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"currentStep": 4294967296}"#,
            "currentStep",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"winAmount": "ten"}"#,
            "winAmount",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"collisionColumns": [1, "x"]}"#,
            "collisionColumns",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"isActive": 1}"#,
            "isActive",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"userId": "someone-else"}"#,
            "userId",
        ),
        (
            "PUT",
            "/api/game-sessions/u1/a1".into(),
            r#"{"agentId": 7}"#,
            "agentId",
        ),
        ("PUT", "/api/game-sessions/a%3Ab/a1".into(), r#"{}"#, "user"),
        (
            "PUT",
            "/api/game-sessions/u1/%7Bx%7D".into(),
            r#"{}"#,
            "agent",
        ),
        ("PUT", "/api/game-sessions/u%201/a1".into(), r#"{}"#, "user"),
        ("PUT", "/api/game-sessions/u%001/a1".into(), r#"{}"#, "user"),
        (
            "PUT",
            format!("/api/game-sessions/{long}/a1"),
            r#"{}"#,
            "user",
        ),
        (
            "PATCH",
            "/api/game-sessions/u1/a%3A1".into(),
            r#"{"set": {"isWin": true}}"#,
            "agent",
        ),
        (
            "POST",
            "/api/fairness/u1/a1/start".into(),
            r#"{}"#,
            "user_seed",
        ),
        (
            "POST",
            "/api/fairness/u1/a1/start".into(),
            r#"{"user_seed": ""}"#,
            "user_seed",
        ),
        (
            "POST",
            "/api/fairness/u1/a1/start".into(),
            r#"{"user_seed": 5}"#,
            "user_seed",
        ),
        (
            "POST",
            "/api/fairness/u1/a1/start".into(),
            r#"{"user_seed": "s", "seed": "x"}"#,
            "seed",
        ),
        (
            "POST",
            "/api/fairness/u1:x/a1/start".into(),
            r#"{"user_seed": "s"}"#,
            "user",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "s", "client_seed": "c", "nonce": -1, "difficulty": "EASY"}"#,
            "nonce",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "", "client_seed": "c", "nonce": 0, "difficulty": "EASY"}"#,
            "server_seed",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "s", "client_seed": "", "nonce": 0, "difficulty": "EASY"}"#,
            "client_seed",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "s", "client_seed": "c", "nonce": 0, "difficulty": "NIGHTMARE"}"#,
            "difficulty",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "s", "client_seed": "c", "nonce": 1.5, "difficulty": "EASY"}"#,
            "nonce",
        ),
        (
            "POST",
            "/api/fairness/verify".into(),
            r#"{"server_seed": "s", "client_seed": "c", "difficulty": "EASY"}"#,
            "nonce",
        ),
        ("GET", "/api/fairness/u1/a1/round".into(), "", "difficulty"),
        (
            "GET",
            "/api/fairness/u1/a1/round?difficulty=NIGHTMARE".into(),
            "",
            "difficulty",
        ),
        (
            "GET",
            "/api/fairness/u1/a1/round?difficulty=EASY&colour=red".into(),
            "",
            "colour",
        ),
        ("GET", "/api/game-sessions/u1/a%7B".into(), "", "agent"),
    ];
    for (method, path, body, field) in &cases {
        let body = (!body.is_empty()).then_some(*body);
        let (status, answer) =
            call(&client, method, &format!("{base}{path}"), Some(TOKEN), body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body:?}: {answer}"
        );
        assert_eq!(
            answer["field"], *field,
            "{method} {path} {body:?}: {answer}"
        );
        assert!(answer["error"].is_string(), "{answer}");
    }
    // Malformed bodies: 400, no field to blame.
    for body in ["", "[]", "{", r#"{"currentStep": 1} x"#, "null"] {
        let (status, answer) = call(
            &client,
            "PUT",
            &format!("{base}/api/game-sessions/u1/a1"),
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {answer}");
    }
    assert_eq!(game_keys(&redis), Vec::<String>::new(), "nothing stored");

    // What is not there: 404 (and DELETE answers false).
    let session = format!("{base}/api/game-sessions/u1/a1");
    let fairness = format!("{base}/api/fairness/u1/a1");
    for (method, url, body) in [
        ("GET", session.clone(), None),
        (
            "PATCH",
            session.clone(),
            Some(r#"{"increment": {"currentStep": 1}}"#),
        ),
        ("GET", fairness.clone(), None),
        ("GET", format!("{fairness}/round?difficulty=EASY"), None),
        ("POST", format!("{fairness}/settle"), None),
        ("GET", format!("{fairness}/elsewhere"), None),
    ] {
        let (status, answer) = call(&client, method, &url, Some(TOKEN), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {url}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, answer) = call(&client, "DELETE", &session, Some(TOKEN), None).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"deleted": false}))
    );
    assert_eq!(
        game_keys(&redis),
        Vec::<String>::new(),
        "a PATCH creates nothing"
    );

    // Every mutation needs the token: without it, or with another, 401 and nothing stored.
    let mutations = [
        ("PUT", session.clone(), Some(r#"{"currency": "INR"}"#)),
        (
            "PATCH",
            session.clone(),
            Some(r#"{"set": {"isWin": true}}"#),
        ),
        ("DELETE", session.clone(), None),
        (
            "POST",
            format!("{fairness}/start"),
            Some(r#"{"user_seed": "s"}"#),
        ),
        ("POST", format!("{fairness}/settle"), None),
        (
            "POST",
            format!("{base}/api/fairness/verify"),
            Some(r#"{"server_seed": "s", "client_seed": "c", "nonce": 0, "difficulty": "EASY"}"#),
        ),
    ];
    for (method, url, body) in &mutations {
        for token in [None, Some("not-the-token")] {
            let (status, answer) = call(&client, method, url, token, *body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {url} {token:?}: {answer}"
            );
        }
    }
    assert_eq!(
        game_keys(&redis),
        Vec::<String>::new(),
        "nothing stored without the token"
    );

    // A PATCH refused leaves the stored session as it was.
    let (status, _) = call(
        &client,
        "PUT",
        &session,
        Some(TOKEN),
        Some(r#"{"currentStep": 4294967290, "winAmount": 1.5, "isActive": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = redis.cmd(&["GET", "gameSession:u1-a1"]);
    for (body, field) in [
        (r#"{}"#, "set"),
        (r#"{"set": {}, "increment": {}}"#, "set"),
        (r#"{"sett": {"isWin": true}}"#, "sett"),
        (r#"{"set": 3}"#, "set"),
        (r#"{"set": {"nope": 1}}"#, "set.nope"),
        (r#"{"set": {"stale": false}}"#, "set.stale"),
        (r#"{"set": {"currentStep": "x"}}"#, "set.currentStep"),
        (r#"{"set": {"coefficients": [1.01]}}"#, "set.coefficients"),
        (r#"{"set": {"userId": "u2"}}"#, "set.userId"),
        (r#"{"increment": {"currency": 1}}"#, "increment.currency"),
        (r#"{"increment": {"nope": 1}}"#, "increment.nope"),
        (
            r#"{"increment": {"currentStep": 1.5}}"#,
            "increment.currentStep",
        ),
        (
            r#"{"increment": {"winAmount": "1"}}"#,
            "increment.winAmount",
        ),
        (
            r#"{"increment": {"currentStep": 10}}"#,
            "increment.currentStep",
        ),
        (
            r#"{"increment": {"currentStep": -4294967291}}"#,
            "increment.currentStep",
        ),
        (
            r#"{"increment": {"winAmount": 1e308}, "set": {"isWin": true}}"#,
            "increment.winAmount",
        ),
        (
            r#"{"increment": {"nonce": 1}, "set": {"nonce": 2}}"#,
            "increment.nonce",
        ),
    ] {
        // 1e308 + 1e308 is infinite: the first one fits, so raise it twice.
        if field == "increment.winAmount" && body.contains("1e308") {
            let (status, answer) = call(
                &client,
                "PATCH",
                &session,
                Some(TOKEN),
                Some(r#"{"set": {"winAmount": 1e308}}"#),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
        let current = redis.cmd(&["GET", "gameSession:u1-a1"]);
        let (status, answer) = call(&client, "PATCH", &session, Some(TOKEN), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert_eq!(
            redis.cmd(&["GET", "gameSession:u1-a1"]),
            current,
            "{body}: changed"
        );
    }
    let after = stored_json(&redis, "gameSession:u1-a1").unwrap();
    let before: Value = serde_json::from_str(before.as_str().unwrap()).unwrap();
    assert_eq!(after["currentStep"], before["currentStep"]);
    assert_eq!(after["isWin"], false);

    // An oversized body: 413, nothing stored.
    let huge = format!(r#"{{"roundId": "{}"}}"#, "r".repeat(128 * 1024));
    let (status, _) = call(
        &client,
        "PUT",
        &format!("{base}/api/game-sessions/u2/a1"),
        Some(TOKEN),
        Some(&huge),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(redis.cmd(&["GET", "gameSession:u2-a1"]).as_str().is_none());

    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// Without Redis, a fallback at its bound refuses the write: 503, and the session is not
/// there; a smaller one still fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_refuses_the_write_answers_503() {
    let mut s = Settings::default();
    s.storage.redis.enabled = false;
    s.storage.memory.max_bytes = 16 * 1024;
    s.supervisor.stop_timeout_ms = 2_000;
    s.api.bind = "127.0.0.1:0".into();
    let fleet = Fleet::start(s).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = format!("http://{}", http.local_addr());
    let client = reqwest::Client::new();
    let big = json!({ "roundId": "r".repeat(40 * 1024) }).to_string();
    let url = format!("{base}/api/game-sessions/u1/a1");
    let (status, answer) = call(&client, "PUT", &url, None, Some(&big)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("storage"),
        "{answer}"
    );
    let (status, _) = call(&client, "GET", &url, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = call(&client, "PUT", &url, None, Some(r#"{"roundId": "r1"}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = call(
        &client,
        "PATCH",
        &url,
        None,
        Some(&json!({"set": {"roundId": "r".repeat(40 * 1024)}}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (_, read) = call(&client, "GET", &url, None, None).await;
    assert_eq!(read["roundId"], "r1");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

/// The cache's counters in `/status` (`cache`) and `/metrics` (`botfleet_cache_...`).
async fn cache_figures(base: &str) -> (Value, support::metrics::Samples) {
    let status: Value = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        status["cache"].clone(),
        support::metrics::scrape(base).await,
    )
}

/// The cache's hits, misses, loads and invalidations move as the cache is used, here and in
/// another process, and show in `/status` and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_figures_move_and_show_in_status_and_metrics() {
    const TTL: Duration = Duration::from_secs(60);
    let redis = RedisServer::start().unwrap();
    let fleet = Fleet::start(settings(&redis.url())).await.unwrap();
    let other = Fleet::start(settings(&redis.url())).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = format!("http://{}", http.local_addr());
    let (cache, theirs) = (fleet.cache(), other.cache());
    // Both listeners follow the channel before the counting starts.
    poll_until_async(WAIT, || async {
        redis.cmd(&["PUBLISH", "cache-invalidate", r#"{"key":"games:warm-up"}"#]);
        cache.stats().invalidations_received > 0 && theirs.stats().invalidations_received > 0
    })
    .await
    .expect("both caches subscribed");
    let (start, _) = cache_figures(&base).await;
    let field = |figures: &Value, name: &str| {
        figures[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {figures}"))
    };

    assert!(cache.get("games:k", TTL).await.unwrap().is_none()); // miss
    let loaded = cache
        .get_or_load("games:k", TTL, || async {
            Ok::<_, String>("v1".to_string())
        })
        .await
        .unwrap(); // miss, load
    assert_eq!(&*loaded, "v1");
    assert_eq!(
        cache.get("games:k", TTL).await.unwrap().as_deref(),
        Some("v1")
    ); // near hit
    cache.clear_near();
    assert_eq!(
        cache.get("games:k", TTL).await.unwrap().as_deref(),
        Some("v1")
    ); // storage hit
    theirs.set("games:k", "v2", TTL).await.unwrap(); // received here
    redis.cmd(&["PUBLISH", "cache-invalidate", r#"{"key":"games:k"}"#]); // a seed bot's: received
    cache.invalidate("games:k").await.unwrap(); // sent
    let received = field(&start, "invalidations_received") + 2;
    poll_until_async(WAIT, || async {
        cache.stats().invalidations_received >= received
    })
    .await
    .expect("both invalidations received");

    let (now, samples) = cache_figures(&base).await;
    let delta = |name: &str| field(&now, name) - field(&start, name);
    assert_eq!(delta("misses"), 2, "{now}");
    assert_eq!(delta("loads"), 1, "{now}");
    assert_eq!(delta("near_hits"), 1, "{now}");
    assert_eq!(delta("storage_hits"), 1, "{now}");
    assert_eq!(delta("hits"), 2, "{now}");
    assert_eq!(delta("invalidations_sent"), 1, "{now}");
    assert_eq!(delta("invalidations_received"), 2, "{now}");
    assert_eq!(field(&now, "load_errors"), 0);
    // /metrics says what /status says.
    let metric = |name: &str, labels: &[(&str, &str)]| {
        support::metrics::sample(&samples, name, labels) as u64
    };
    assert_eq!(
        metric("botfleet_cache_hits_total", &[("tier", "near")]),
        field(&now, "near_hits")
    );
    assert_eq!(
        metric("botfleet_cache_hits_total", &[("tier", "storage")]),
        field(&now, "storage_hits")
    );
    assert_eq!(
        metric("botfleet_cache_misses_total", &[]),
        field(&now, "misses")
    );
    assert_eq!(
        metric("botfleet_cache_loads_total", &[]),
        field(&now, "loads")
    );
    assert_eq!(metric("botfleet_cache_load_errors_total", &[]), 0);
    assert_eq!(
        metric("botfleet_cache_invalidations_sent_total", &[]),
        field(&now, "invalidations_sent")
    );
    assert_eq!(
        metric("botfleet_cache_invalidations_received_total", &[]),
        field(&now, "invalidations_received")
    );
    assert_eq!(metric("botfleet_cache_evictions_total", &[]), 0);
    assert_eq!(
        metric("botfleet_cache_near_entries", &[]),
        field(&now, "near_entries")
    );
    // The other process counted what it sent, and the seed bot's message.
    assert_eq!(theirs.stats().invalidations_sent, 1);
    poll_until_async(WAIT, || async {
        theirs.stats().invalidations_received >= 3
    })
    .await
    .expect("the other process received the seed bot's and this one's messages");

    http.stop().await;
    other.shutdown().await.unwrap();
    fleet.shutdown().await.unwrap();
}
