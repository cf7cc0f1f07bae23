//! The hazard ticker, provably fair seeds, fairness records and game sessions against real
//! redis-server processes: the seed's shapes and TTLs, a leader killed with -9 and taken over
//! without a doubled tick, no drift, `botfleet verify` on past rounds, seeds hidden until
//! rotated, sessions expiring, and bad input refused with typed errors.
//!
//! `BOTFLEET_TEST_REDIS=cluster|sentinel` runs these tests against a Redis Cluster or a
//! Sentinel set-up (tests/support/deploy.rs). Tests that kill, freeze or restart the server
//! stay on one standalone server whatever it says: they are about that one server's outage
//! (fail-over of a Cluster or Sentinel master is tests/scale.rs's subject).

use crate::support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use botfleet::actors::hazards::fairness::{derive_hazards, hash_seed};
use botfleet::actors::hazards::sessions::GameSession;
use botfleet::actors::hazards::{HazardError, TickNotice};
use botfleet::clock::iso8601_ms;
use botfleet::settings::{DifficultySettings, Settings};
use botfleet::storage::{KeySchema, Storage};
use botfleet::Fleet;
use support::{poll_until_async, Inspect, RespValue, TestRedis};

const CHILD_ENV: &str = "BOTFLEET_TEST_HAZARDS_CHILD";

fn settings(url: &str, interval_ms: u64, lock_ttl_ms: u64) -> Settings {
    let mut s = support::suite_settings(url);
    s.hazards.enabled = true;
    s.hazards.interval_ms = interval_ms;
    s.hazards.lock_ttl_ms = lock_ttl_ms;
    s
}

/// Collects the tick notices published on the hazards channel, through a storage handle of
/// its own (its own Redis connections).
struct Notices {
    storage: Storage,
    sub: botfleet::storage::Subscription,
}

impl Notices {
    async fn open(s: &Settings) -> Self {
        let storage = Storage::open(&s.storage, &KeySchema::default())
            .await
            .unwrap();
        let sub = storage.subscribe(&s.hazards.channel).await;
        Self { storage, sub }
    }

    async fn next(&mut self) -> TickNotice {
        let text = tokio::time::timeout(Duration::from_secs(10), self.sub.recv())
            .await
            .expect("a tick notice within 10 s")
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The next `n` notices of `difficulty`.
    async fn take(&mut self, difficulty: &str, n: usize) -> Vec<TickNotice> {
        let mut out = Vec::new();
        while out.len() < n {
            let notice = self.next().await;
            if notice.difficulty == difficulty {
                out.push(notice);
            }
        }
        out
    }
}

fn get(server: &impl Inspect, key: &str) -> Option<String> {
    match server.cmd(&["GET", key]) {
        RespValue::Nil => None,
        v => Some(v.as_str().unwrap().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hazards_are_written_in_the_seed_shape_with_ttl() {
    let server = TestRedis::start().unwrap();
    let s = settings(&server.url(), 200, 2_000);
    let fleet = Fleet::start(s.clone()).await.unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        s.hazards
            .difficulties
            .iter()
            .all(|d| get(&server, &format!("hazards-{}", d.name)).is_some())
    })
    .await
    .expect("every difficulty written");
    for d in &s.hazards.difficulties {
        let key = format!("hazards-{}", d.name);
        let text = get(&server, &key).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            ["difficulty", "hazards", "lastRefresh", "nextRefresh"]
        );
        assert_eq!(value["difficulty"], d.name.as_str());
        let hazards: Vec<u32> = serde_json::from_value(value["hazards"].clone()).unwrap();
        assert_eq!(hazards.len(), d.hazards as usize);
        assert!(hazards.windows(2).all(|w| w[0] < w[1]));
        assert!(hazards.iter().all(|&c| c < d.columns));
        // TTL 1.5 x the interval (300 ms), counting down.
        let pttl = server.cmd(&["PTTL", &key]).as_int().unwrap();
        assert!((1..=300).contains(&pttl), "{key} pttl {pttl}");
        // lastRefresh and nextRefresh are one interval apart, on the interval grid.
        let last = value["lastRefresh"].as_str().unwrap();
        let next = value["nextRefresh"].as_str().unwrap();
        assert!(last.ends_with('Z') && next > last);
        let state = fleet.hazards().current(&d.name).await.unwrap().unwrap();
        assert_eq!(state.hazards.len(), d.hazards as usize);
    }
    // Without ticks (the ticker stopped) the keys expire within 1.5 intervals.
    fleet.shutdown().await.unwrap();
    poll_until_async(Duration::from_secs(5), || async {
        get(&server, "hazards-EASY").is_none()
    })
    .await
    .expect("hazards expire without a leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_do_not_drift_and_are_never_doubled() {
    let server = TestRedis::start().unwrap();
    let interval = 100;
    let s = settings(&server.url(), interval, 2_000);
    let mut notices = Notices::open(&s).await;
    let fleet = Fleet::start(s.clone()).await.unwrap();
    let ticks = notices.take("EASY", 40).await;
    let mut gaps = 0;
    for pair in ticks.windows(2) {
        assert!(pair[1].tick > pair[0].tick, "ticks strictly increase");
        gaps += pair[1].tick - pair[0].tick - 1;
    }
    let mut late = 0;
    for t in &ticks {
        // Tick N is due at N x interval after the epoch and written within its own slot: a
        // scheduler that slept an interval after each tick would slide out of its slot more
        // with every tick. A busy machine may delay a few ticks on their own.
        assert_eq!(t.due_ms, t.tick * interval);
        assert!(
            t.written_ms + 5 >= t.due_ms,
            "tick {} written early",
            t.tick
        );
        if t.written_ms >= t.due_ms + interval {
            late += 1;
        }
    }
    assert!(late <= 4, "{late} of 40 ticks written outside their slot");
    // A tick late by a whole interval is skipped; on a loaded machine allow a few.
    assert!(gaps <= 4, "{gaps} ticks skipped out of 40");
    let state = fleet.hazards().current("EASY").await.unwrap().unwrap();
    assert!(
        state.last_refresh.ends_with("00Z"),
        "{}",
        state.last_refresh
    );
    assert_eq!(fleet.hazards().status().ticks_refused, 0);
    fleet.shutdown().await.unwrap();
    notices.storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_at_once_still_write_each_tick_once() {
    // A split brain, forced: two fleets whose tickers use different lock names both lead.
    // The tick script lets exactly one of them write each (difficulty, tick).
    let server = TestRedis::start().unwrap();
    let s = settings(&server.url(), 100, 2_000);
    let mut other = s.clone();
    other.hazards.lock_name = "hazards-ticker-lock-b".into();
    let mut notices = Notices::open(&s).await;
    let a = Fleet::start(s.clone()).await.unwrap();
    let b = Fleet::start(other).await.unwrap();
    let mut written = HashSet::new();
    for _ in 0..60 {
        let n = notices.next().await;
        assert!(
            written.insert((n.difficulty.clone(), n.tick)),
            "tick {} of {} written twice",
            n.tick,
            n.difficulty
        );
    }
    let (sa, sb) = (a.hazards().status(), b.hazards().status());
    // Both led (one refused for a stale token steps down and stands again, so both need not
    // lead at this very moment).
    assert!(sa.terms >= 1 && sb.terms >= 1, "{sa:?} {sb:?}");
    assert!(sa.ticks_refused + sb.ticks_refused > 0, "{sa:?} {sb:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    notices.storage.close().await;
}

fn spawn_child(role: &str, spec: String) -> std::process::Child {
    support::spawn_role(module_path!(), role, CHILD_ENV, &spec)
}

/// Child role: runs a fleet with the ticker, prints `leader` once it leads, and ticks until
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of leader_killed_another_takes_over_without_a_doubled_tick"]
async fn child_ticker() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let fleet = Fleet::start(settings(&url, 150, 1_000)).await.unwrap();
    poll_until_async(Duration::from_secs(10), || async {
        fleet.hazards().status().leader
    })
    .await
    .unwrap();
    println!("leader {}", fleet.instance());
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_another_takes_over_without_a_doubled_tick() {
    let server = TestRedis::start().unwrap();
    let lock_ttl = 1_000;
    let s = settings(&server.url(), 150, lock_ttl);
    let mut notices = Notices::open(&s).await;
    let mut child = spawn_child("child_ticker", server.url());
    let stdout = child.stdout.take().unwrap();
    let child_instance = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.rsplit_once("leader ")
                .map(|(_, id)| id.trim().to_string())
        })
        .expect("the child leads");
    let fleet = Fleet::start(s.clone()).await.unwrap();
    let mut seen: Vec<TickNotice> = Vec::new();
    // The child ticks; this fleet waits for the lock.
    while seen.len() < 8 {
        seen.push(notices.next().await);
    }
    assert!(seen.iter().all(|n| n.instance == child_instance));
    assert!(!fleet.hazards().status().leader);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let took_over = loop {
        let notice = notices.next().await;
        let mine = notice.instance == fleet.instance();
        seen.push(notice);
        if mine {
            break killed.elapsed();
        }
    };
    assert!(
        took_over < Duration::from_millis(2 * lock_ttl),
        "took over after {took_over:?}"
    );
    for _ in 0..12 {
        seen.push(notices.next().await);
    }
    // Each (difficulty, tick) was written once, by one of the two leaders.
    let mut written = HashSet::new();
    for n in &seen {
        assert!(
            written.insert((n.difficulty.clone(), n.tick)),
            "tick {} of {} written twice",
            n.tick,
            n.difficulty
        );
    }
    let status = fleet.hazards().status();
    assert!(status.leader && status.terms == 1 && status.ticks_written > 0);
    fleet.shutdown().await.unwrap();
    notices.storage.close().await;
}

fn verify_cli(seed: &str, client: &str, nonce: u64, difficulty: &str) -> Vec<u32> {
    let output = Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args([
            "verify",
            "--server-seed",
            seed,
            "--client-seed",
            client,
            "--nonce",
            &nonce.to_string(),
            "--difficulty",
            difficulty,
            "--json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["hashedServerSeed"], hash_seed(seed).as_str());
    serde_json::from_value(value["hazards"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reproduces_past_rounds_from_the_revealed_seed() {
    let server = TestRedis::start().unwrap();
    let mut s = settings(&server.url(), 100, 2_000);
    s.hazards.rotate_every_ticks = 3;
    let mut notices = Notices::open(&s).await;
    let fleet = Fleet::start(s.clone()).await.unwrap();
    let hazards = fleet.hazards();
    let mut rounds = Vec::new();
    for _ in 0..8 {
        let notice = notices.take("HARD", 1).await.remove(0);
        // The seed's hash was published before the round, and the next seed's already.
        let commitment = hazards.commitment(notice.epoch).await.unwrap().unwrap();
        assert_eq!(commitment.hashed_server_seed, notice.hashed_server_seed);
        assert!(commitment.published_ms <= notice.written_ms);
        assert!(commitment.first_tick <= notice.tick && notice.tick <= commitment.last_tick);
        assert!(hazards
            .commitment(notice.epoch + 1)
            .await
            .unwrap()
            .is_some());
        // Not revealed while in use.
        if hazards.epoch_of(hazards.status().last_tick.unwrap()) == notice.epoch {
            assert!(hazards.revealed(notice.epoch).await.unwrap().is_none());
        }
        rounds.push(notice);
    }
    let past = &rounds[0];
    let revealed = poll_until_async(Duration::from_secs(5), || async {
        hazards.revealed(past.epoch).await.unwrap().is_some()
    })
    .await
    .map(|_| ());
    revealed.expect("the epoch's seed is revealed after rotation");
    let seed = hazards.revealed(past.epoch).await.unwrap().unwrap();
    assert_eq!(seed.hashed_server_seed, past.hashed_server_seed);
    assert_eq!(hash_seed(&seed.server_seed), past.hashed_server_seed);
    // The revealed seed reproduces every round of its epoch, through the CLI too.
    for round in rounds.iter().filter(|r| r.epoch == past.epoch) {
        assert_eq!(
            verify_cli(&seed.server_seed, "HARD", round.tick, "HARD"),
            round.hazards
        );
    }
    // A wrong seed does not (7 of 22 columns: a chance match is 1 in 170,544).
    let mut wrong = seed.server_seed.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    assert_ne!(verify_cli(&wrong, "HARD", past.tick, "HARD"), past.hazards);
    // The revealed seed's secret is gone from the ticker's store.
    let secrets = server.cmd(&["HKEYS", "botfleet:hazards:secrets"]);
    let fields: Vec<&str> = secrets
        .as_array()
        .unwrap()
        .iter()
        .filter_map(RespValue::as_str)
        .collect();
    assert!(!fields.contains(&past.epoch.to_string().as_str()));
    fleet.shutdown().await.unwrap();
    notices.storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_records_hide_the_active_seed_until_settlement() {
    let server = TestRedis::start().unwrap();
    let s = settings(&server.url(), 5_000, 10_000);
    let fleet = Fleet::start(s).await.unwrap();
    let hazards = fleet.hazards();
    let record = hazards
        .start_fairness("user123", "agent456", "lucky")
        .await
        .unwrap();
    assert_eq!(record.nonce, 0);
    let raw = get(&server, "fairness:user123:agent456").unwrap();
    let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut fields: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["agentId", "hashedServerSeed", "nonce", "userId", "userSeed"]
    );
    let ttl = server
        .cmd(&["TTL", "fairness:user123:agent456"])
        .as_int()
        .unwrap();
    assert!((604_700..=604_800).contains(&ttl), "ttl {ttl}");
    let round = hazards.round("user123", "agent456", "EASY").await.unwrap();
    assert_eq!(
        round,
        hazards.round("user123", "agent456", "EASY").await.unwrap()
    );
    let settled = hazards.settle("user123", "agent456", None).await.unwrap();
    // The seed revealed now was nowhere in the public record before.
    assert!(!raw.contains(&settled.server_seed));
    assert_eq!(hash_seed(&settled.server_seed), record.hashed_server_seed);
    assert_eq!(
        hazards
            .verify(&settled.server_seed, "lucky", 0, "EASY")
            .unwrap(),
        round.hazards
    );
    assert_eq!(
        verify_cli(&settled.server_seed, "lucky", 0, "EASY"),
        round.hazards
    );
    // Rotated: new seed hash, next nonce.
    let next = hazards
        .fairness("user123", "agent456")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.nonce, 1);
    assert_ne!(next.hashed_server_seed, record.hashed_server_seed);
    assert_eq!(next, settled.next);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_stores_nothing() {
    let server = TestRedis::start().unwrap();
    let fleet = Fleet::start(settings(&server.url(), 5_000, 10_000))
        .await
        .unwrap();
    let hazards = fleet.hazards();
    assert_eq!(
        hazards.verify("s", "c", 0, "NIGHTMARE"),
        Err(HazardError::UnknownDifficulty("NIGHTMARE".into()))
    );
    assert_eq!(
        hazards.verify("", "c", 0, "EASY"),
        Err(HazardError::EmptySeed("server seed"))
    );
    assert_eq!(
        hazards.verify("s", "", 0, "EASY"),
        Err(HazardError::EmptySeed("client seed"))
    );
    assert_eq!(
        hazards.verify("s", "c", -3, "EASY"),
        Err(HazardError::NegativeNonce(-3))
    );
    assert!(matches!(
        derive_hazards("s", "c", 0, &DifficultySettings::new("FULL", 6, 6)),
        Err(HazardError::TooManyHazards { .. })
    ));
    assert!(matches!(
        hazards.start_fairness("user", "agent", "").await,
        Err(HazardError::EmptySeed(_))
    ));
    assert!(matches!(
        hazards.start_fairness("us:er", "agent", "x").await,
        Err(HazardError::InvalidId { .. })
    ));
    assert!(matches!(
        hazards.round("nobody", "agent", "EASY").await,
        Err(HazardError::NoFairnessRecord { .. })
    ));
    // None of the refused calls wrote anything (the other actors' keys aside: presence,
    // heartbeat, the ticker's lock).
    let keys = server.cmd(&["KEYS", "*"]);
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter_map(RespValue::as_str)
        .collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("fairness:")
            || k.contains("fairness-secret")
            || k.starts_with("gameSession:")
            || k.starts_with("user-sessions:")),
        "{keys:?}"
    );
    // The CLI refuses a negative nonce and an unknown difficulty: bad usage, exit code 2.
    for (nonce, difficulty) in [("-1", "EASY"), ("0", "NIGHTMARE")] {
        let output = Command::new(env!("CARGO_BIN_EXE_botfleet"))
            .args(["verify", "--server-seed", "s", "--client-seed", "c"])
            .args(["--nonce", nonce, "--difficulty", difficulty])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(nonce) || stderr.contains(difficulty),
            "{stderr}"
        );
    }
    fleet.shutdown().await.unwrap();
}

#[test]
fn hazard_settings_are_validated_naming_the_key() {
    let toml = "[hazards]\ninterval_ms = 0\nlock_name = \"\"\n\
        [[hazards.difficulties]]\nname = \"EASY\"\ncolumns = 10\nhazards = 10\n\
        [[hazards.difficulties]]\nname = \"EASY\"\ncolumns = 10\nhazards = 0\n\
        [game_sessions]\nttl_secs = 0\n[cache]\nchannel = \"\"\nnear_capacity = 0\n";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let err = Settings::load_with_env(Some(file.path()), Vec::new()).unwrap_err();
    for key in [
        "hazards.interval_ms",
        "hazards.lock_name",
        "hazards.difficulties[0].hazards",
        "hazards.difficulties[1].name",
        "hazards.difficulties[1].hazards",
        "game_sessions.ttl_secs",
        "cache.channel",
        "cache.near_capacity",
    ] {
        assert!(
            err.problem(key).is_some(),
            "no problem about {key} in:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_sessions_round_trip_and_expire() {
    let server = TestRedis::start().unwrap();
    let mut s = settings(&server.url(), 5_000, 10_000);
    s.hazards.enabled = false;
    s.game_sessions.ttl_secs = 1;
    let fleet = Fleet::start(s).await.unwrap();
    let sessions = fleet.game_sessions();
    let session = GameSession {
        user_id: "user123".into(),
        agent_id: "agent456".into(),
        currency: "INR".into(),
        difficulty: "EASY".into(),
        coefficients: vec!["1.01".into(), "1.03".into()],
        bet_amount: 10.0,
        is_active: true,
        created_at: iso8601_ms(botfleet::clock::now_ms()),
        collision_columns: vec![5, 10, 15],
        ..GameSession::default()
    };
    sessions.create(&session).await.unwrap();
    let raw = get(&server, "gameSession:user123-agent456").unwrap();
    let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for field in [
        "userId",
        "agentId",
        "currency",
        "difficulty",
        "serverSeed",
        "userSeed",
        "hashedServerSeed",
        "nonce",
        "coefficients",
        "currentStep",
        "winAmount",
        "betAmount",
        "isActive",
        "isWin",
        "createdAt",
        "platformBetTxId",
        "roundId",
        "collisionColumns",
    ] {
        assert!(value.get(field).is_some(), "{field} missing from {raw}");
    }
    assert_eq!(
        server.cmd(&["SMEMBERS", "user-sessions:agent456"]),
        RespValue::Array(vec![RespValue::bulk("user123")])
    );
    let updated = sessions
        .update("user123", "agent456", |s| {
            s.current_step = 1;
            s.win_amount = 10.1;
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sessions.get("user123", "agent456").await.unwrap(),
        Some(updated)
    );
    assert_eq!(sessions.list("agent456").await.unwrap(), ["user123"]);
    // A second session, deleted at game end.
    let other = GameSession {
        user_id: "user789".into(),
        ..session.clone()
    };
    sessions.create(&other).await.unwrap();
    assert!(sessions.delete("user789", "agent456").await.unwrap());
    // The first one expires with its TTL, and leaves the set when listed.
    poll_until_async(Duration::from_secs(5), || async {
        sessions.get("user123", "agent456").await.unwrap().is_none()
    })
    .await
    .expect("the session expires");
    assert!(sessions.list("agent456").await.unwrap().is_empty());
    assert_eq!(
        server.cmd(&["SCARD", "user-sessions:agent456"]).as_int(),
        Some(0)
    );
    fleet.shutdown().await.unwrap();
}
