//! Shared records changed by several processes at once: read-modify-write through the
//! storage handle's compare-and-set loses no update, and a write made stale during an outage
//! is refused at replay rather than applied over a newer value.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use botfleet::actors::hazards::sessions::GameSession;
use botfleet::actors::hazards::HazardError;
use botfleet::storage::{Mode, Remembered, Storage};
use botfleet::Fleet;
use support::{poll_until, poll_until_async, RedisServer, TestRedis};

const WAIT: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "BOTFLEET_TEST_RECORDS_CHILD";
/// Updates each child applies to the one session.
const UPDATES: u32 = 1_000;

/// Child role: `UPDATES` increments of `currentStep` of `gameSession:u-a`, then `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the records suite"]
async fn child_updater() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let fleet = Fleet::start(support::suite_settings(&url)).await.unwrap();
    let sessions = fleet.game_sessions();
    for _ in 0..UPDATES {
        sessions
            .update("u", "a", |s| s.current_step += 1)
            .await
            .unwrap()
            .expect("the session exists");
    }
    println!("done");
    let _ = fleet.shutdown().await;
}

/// Two processes update one game session 1,000 times each at once: 2,000 updates applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_updating_one_game_session_apply_every_update() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(support::suite_settings(&redis.url()))
        .await
        .unwrap();
    let sessions = fleet.game_sessions();
    sessions
        .create(&GameSession {
            user_id: "u".into(),
            agent_id: "a".into(),
            difficulty: "EASY".into(),
            ..GameSession::default()
        })
        .await
        .unwrap();
    let mut children: Vec<Child> = (0..2)
        .map(|_| support::spawn_role(module_path!(), "child_updater", CHILD_ENV, &redis.url()))
        .collect();
    for child in &mut children {
        let stdout = child.stdout.take().unwrap();
        let done = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "done");
        assert!(done, "a child failed: {:?}", child.wait());
        child.wait().unwrap();
    }
    let session = sessions.get("u", "a").await.unwrap().unwrap();
    assert_eq!(session.current_step, 2 * UPDATES, "updates lost");
    let _ = fleet.shutdown().await;
}

/// A compare-and-set accepted by the fallback during an outage is replayed as a compare:
/// another client changed the value meanwhile, so the replay is refused and the newer value
/// stays; one made on an unchanged value is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_set_made_stale_during_an_outage_is_refused_at_replay() {
    let mut redis = RedisServer::builder().persistence(true).start().unwrap();
    let mut settings = support::suite_settings(&redis.url());
    // Slow to notice Redis back, so that another client writes first.
    settings.storage.redis.reconnect_min_ms = 10_000;
    settings.storage.redis.reconnect_max_ms = 10_000;
    settings.storage.redis.ping_interval_ms = 10_000;
    let fleet = Fleet::start(settings).await.unwrap();
    let storage: Storage = fleet.storage().clone();
    // The values below are written to Redis itself, not to an outbox.
    poll_until(WAIT, || storage.mode() == Mode::Redis).expect("connected");
    // Kept through the outage, as a service's records are, so the fallback can compare.
    storage.remember("rec:*", Remembered::State);
    storage.set("rec:contested", "v1", None).await.unwrap();
    storage.set("rec:quiet", "v1", None).await.unwrap();

    redis.kill9();
    poll_until_async(WAIT, || {
        let storage = storage.clone();
        async move {
            let _ = storage.get("rec:quiet").await;
            storage.mode() == Mode::Degraded
        }
    })
    .await
    .expect("degraded");
    assert!(storage
        .compare_and_set("rec:contested", Some("v1"), "mine", None)
        .await
        .unwrap());
    assert!(storage
        .compare_and_set("rec:quiet", Some("v1"), "mine", None)
        .await
        .unwrap());
    assert!(
        !storage
            .compare_and_set("rec:quiet", Some("v1"), "again", None)
            .await
            .unwrap(),
        "the fallback compares too"
    );

    redis.restart().unwrap();
    redis.cmd(&["SET", "rec:contested", "theirs"]);
    poll_until(WAIT, || {
        storage.mode() == Mode::Redis && storage.stats().outbox_len == 0
    })
    .expect("resynced");
    assert_eq!(
        redis.cmd(&["GET", "rec:contested"]).as_str(),
        Some("theirs")
    );
    assert_eq!(redis.cmd(&["GET", "rec:quiet"]).as_str(), Some("mine"));
    let _ = fleet.shutdown().await;
}

/// Two settlements of one round at once: one rotates the seed, the other is refused; the
/// nonce moves by one and the record's hash names the stored seed. (Two settlements one after
/// the other settle two rounds: when the second started only after the first was stored, as
/// a slow topology can make happen, both succeed, each on its own round.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_settlements_of_one_round_rotate_once() {
    let redis = TestRedis::start().unwrap();
    let fleet = Fleet::start(support::suite_settings(&redis.url()))
        .await
        .unwrap();
    let hazards = fleet.hazards();
    let started = hazards.start_fairness("u2", "a2", "seed").await.unwrap();
    let (a, b) = tokio::join!(
        hazards.settle("u2", "a2", None),
        hazards.settle("u2", "a2", None)
    );
    let settled: Vec<_> = [&a, &b].into_iter().flatten().collect();
    for outcome in [&a, &b] {
        assert!(
            matches!(outcome, Ok(_) | Err(HazardError::Contended { .. })),
            "{outcome:?}"
        );
    }
    assert!(!settled.is_empty(), "one at least settles: {a:?} {b:?}");
    // No round is settled twice: the first settles the round started, a second one the round
    // the first rotated to (it began after the first was stored).
    let mut rounds: Vec<(u64, &str)> = settled
        .iter()
        .map(|s| (s.nonce, s.hashed_server_seed.as_str()))
        .collect();
    rounds.sort();
    let expected_first = (0, started.hashed_server_seed.as_str());
    assert_eq!(rounds[0], expected_first, "{a:?} {b:?}");
    if let [first, second] = rounds[..] {
        let first_settled = settled.iter().find(|s| s.nonce == first.0).unwrap();
        assert_eq!(
            second,
            (1, first_settled.next.hashed_server_seed.as_str()),
            "the second settled the round the first rotated to: {a:?} {b:?}"
        );
    }
    let record = hazards.fairness("u2", "a2").await.unwrap().unwrap();
    assert_eq!(record.nonce, settled.len() as u64);
    // The round in play derives from the stored seed: its hash matches the record.
    hazards.round("u2", "a2", "EASY").await.unwrap();
    let _ = fleet.shutdown().await;
}
