//! Fencing tokens across a Redis that lost its data, seen through the hazard ticker's leader
//! election: three processes share one standalone `redis-server`; the leader is killed with -9
//! twice, then Redis is killed with -9 and restarted empty. A Sentinel fail-over to a replica
//! that missed the last raise of the counter is the same case. Tokens never go back, exactly
//! one leader is left, ticks resume within the election time; and a leader whose tick is
//! refused for a stale token steps down and stands again.
//!
//! These tests start their own servers (a standalone one they kill, a Sentinel set-up they fail
//! over) whatever `BOTFLEET_TEST_REDIS` says: they are about losing a server's data.

use crate::support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use botfleet::settings::Settings;
use botfleet::storage::KeySchema;
use botfleet::Fleet;
use support::{poll_until, poll_until_async, RedisSentinel, RedisServer, RespValue};

const CHILD_ENV: &str = "BOTFLEET_TEST_FENCES_CHILD";
const INTERVAL_MS: u64 = 150;
const LOCK_TTL_MS: u64 = 1_000;
/// How long an election may take once the lock is free or expired: the lock's TTL (a dead
/// holder's lock, or a watchdog that has not yet seen its lock is gone), a campaign's retry,
/// and the first tick's wait.
const ELECTION: Duration = Duration::from_millis(3 * LOCK_TTL_MS + 2 * INTERVAL_MS);

fn settings(url: &str) -> Settings {
    let mut s = support::suite_settings(url);
    s.hazards.enabled = true;
    s.hazards.interval_ms = INTERVAL_MS;
    s.hazards.lock_ttl_ms = LOCK_TTL_MS;
    s
}

/// The tick record of the first difficulty (`tick`, `fence` of its last writer).
fn tick_key(s: &Settings) -> String {
    let internal = KeySchema::new(&s.keys).internal_prefix().to_string();
    let first = &s.hazards.difficulties[0].name;
    format!("{internal}:hazards-tick:{{hazards-{first}}}")
}

/// `(tick, fence)` of a tick record read with `HMGET key tick fence`.
fn tick_of(reply: std::io::Result<RespValue>) -> Option<(u64, u64)> {
    let reply = reply.ok()?;
    let items = reply.as_array()?;
    let tick = items.first()?.as_str()?.parse().ok()?;
    let fence = items.get(1)?.as_str()?.parse().ok()?;
    Some((tick, fence))
}

/// Child role: a fleet with the hazard ticker that prints `term INSTANCE FENCE` each time it
/// becomes leader and `follower INSTANCE` each time it stops, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of fences_never_go_back_when_redis_returns_empty"]
async fn child_candidate() {
    let url = std::env::var(CHILD_ENV).expect("run by the parent test");
    let fleet = Fleet::start(settings(&url)).await.unwrap();
    let id = fleet.instance().to_string();
    println!("instance {id}");
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let (mut terms, mut leader) = (0, false);
    loop {
        ticker.tick().await;
        let status = fleet.hazards().status();
        if status.terms != terms && status.leader {
            terms = status.terms;
            leader = true;
            println!("term {id} {}", status.fence.unwrap_or(0));
        } else if leader && !status.leader {
            leader = false;
            println!("follower {id}");
        }
    }
}

/// What a child said, in the order the parent heard it.
#[derive(Debug, Clone)]
enum Said {
    Term { id: String, fence: u64 },
    Follower { id: String },
}

/// Starts a candidate; returns its instance id. Its later lines go to `said`.
fn spawn_candidate(url: &str, said: &mpsc::Sender<Said>) -> (String, std::process::Child) {
    let mut child = support::spawn_role(module_path!(), "child_candidate", CHILD_ENV, url);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("instance ").map(str::to_string))
        .expect("the candidate started");
    let said = said.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let event = match words.as_slice() {
                ["term", id, fence] => Said::Term {
                    id: id.to_string(),
                    fence: fence.parse().unwrap_or(0),
                },
                ["follower", id] => Said::Follower { id: id.to_string() },
                _ => continue,
            };
            if said.send(event).is_err() {
                return;
            }
        }
    });
    (id, child)
}

/// Every term the children reported so far, and who leads now.
#[derive(Default)]
struct Terms {
    fences: Vec<(String, u64)>,
    leaders: HashMap<String, bool>,
}

impl Terms {
    fn drain(&mut self, said: &mpsc::Receiver<Said>) {
        while let Ok(event) = said.try_recv() {
            match event {
                Said::Term { id, fence } => {
                    self.fences.push((id.clone(), fence));
                    self.leaders.insert(id, true);
                }
                Said::Follower { id } => {
                    self.leaders.insert(id, false);
                }
            }
        }
    }

    fn leaders(&self) -> Vec<&String> {
        self.leaders
            .iter()
            .filter(|(_, l)| **l)
            .map(|(id, _)| id)
            .collect()
    }

    /// Every term's token is above every earlier term's.
    fn assert_never_back(&self) {
        for w in self.fences.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "a fencing token went back: {:?} after {:?} (all: {:?})",
                w[1],
                w[0],
                self.fences
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_never_go_back_when_redis_returns_empty() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    let s = settings(&url);
    let tick_key = tick_key(&s);
    let (tx, said) = mpsc::channel();
    let mut children: HashMap<String, std::process::Child> =
        (0..3).map(|_| spawn_candidate(&url, &tx)).collect();
    let mut terms = Terms::default();

    // Kill the leader twice; a new candidate replaces each one killed.
    for round in 0..2 {
        poll_until(ELECTION * 2, || {
            terms.drain(&said);
            terms.leaders().len() == 1
        })
        .unwrap_or_else(|_| panic!("round {round}: one leader, got {:?}", terms.leaders));
        let leader = terms.leaders()[0].clone();
        let mut child = children.remove(&leader).expect("a child leads");
        child.kill().unwrap();
        child.wait().unwrap();
        terms.leaders.insert(leader, false);
        let (id, child) = spawn_candidate(&url, &tx);
        children.insert(id, child);
    }
    poll_until(ELECTION * 2, || {
        terms.drain(&said);
        terms.leaders().len() == 1 && terms.fences.len() >= 3
    })
    .unwrap_or_else(|_| panic!("a third leader: {:?}", terms.fences));
    let before =
        tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"])).expect("ticks are written");

    // Redis loses everything: killed with -9, restarted without its data.
    server.restart_empty().unwrap();
    let restarted = Instant::now();
    let resumed = poll_until(ELECTION * 2, || {
        tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"]))
            .is_some_and(|(tick, _)| tick > before.0)
    })
    .unwrap_or_else(|_| panic!("no tick after the restart; terms {:?}", terms.fences));
    assert!(
        resumed < ELECTION,
        "ticks resumed {resumed:?} after the restart"
    );

    // Ticks go on, written by the newest term's leader alone, and it is the only leader.
    let (resumed_tick, _) =
        tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"])).expect("a tick record");
    poll_until(ELECTION * 2, || {
        terms.drain(&said);
        let newest = terms.fences.last().map(|(_, f)| *f);
        tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"]))
            .is_some_and(|(tick, fence)| tick >= resumed_tick + 10 && Some(fence) == newest)
            && terms.leaders().len() == 1
    })
    .unwrap_or_else(|_| {
        panic!(
            "ticks did not go on by one leader: record {:?}, terms {:?}, leaders {:?}",
            tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"])),
            terms.fences,
            terms.leaders
        )
    });
    terms.drain(&said);
    terms.assert_never_back();
    let (_, fence_now) = tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"])).unwrap();
    assert!(
        fence_now > before.1,
        "the tick record's fence went back: {fence_now} after {}",
        before.1
    );
    println!(
        "terms {:?}; ticks resumed {:?} after Redis came back empty",
        terms.fences,
        restarted.elapsed().min(resumed)
    );
    for (_, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_never_go_back_across_a_sentinel_failover_that_lost_the_counter() {
    let mut sentinel = RedisSentinel::start().unwrap();
    let s = settings(&sentinel.url());
    let tick_key = tick_key(&s);
    let a = Fleet::start(s.clone()).await.unwrap();
    let b = Fleet::start(s.clone()).await.unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    poll_until_async(ELECTION * 2, move || {
        let (a, b) = (a2.clone(), b2.clone());
        async move { a.hazards().status().leader != b.hazards().status().leader }
    })
    .await
    .expect("one leader");
    let (first, second) = if a.hazards().status().leader {
        (a, b)
    } else {
        (b, a)
    };
    let fence_1 = first
        .hazards()
        .status()
        .fence
        .expect("a Redis lock's token");
    sentinel.wait_replica_in_sync().unwrap();

    // The replica stops receiving: frozen, and its link cut by the master.
    let master = sentinel.master_index().unwrap();
    let replica = 1 - master;
    let old_port = sentinel.data_server(master).port();
    sentinel.data_server(replica).freeze();
    sentinel
        .data_cmd(master, &["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    // A new term on the master alone: the leader leaves, the other one is elected.
    first.shutdown().await.unwrap();
    let s2 = second.clone();
    poll_until_async(ELECTION * 2, move || {
        let s2 = s2.clone();
        async move { s2.hazards().status().leader }
    })
    .await
    .expect("the second fleet leads");
    let fence_2 = second.hazards().status().fence.unwrap();
    assert!(fence_2 > fence_1);
    let written_2 = second.hazards().status().ticks_written;
    poll_until(ELECTION, || {
        second.hazards().status().ticks_written > written_2
    })
    .expect("the second leader writes on the old master");

    // The master dies; the replica, which never saw the second term, is promoted.
    assert_eq!(sentinel.kill_master().unwrap(), master);
    sentinel.data_server(replica).thaw();
    sentinel.wait_failover(old_port).unwrap();
    let promoted = Instant::now();

    // The second fleet loses its lock (the promoted replica holds the first one's), is elected
    // again once that expires, with a token above every one before.
    let terms_2 = second.hazards().status().terms;
    let s2 = second.clone();
    poll_until_async(ELECTION * 3, move || {
        let s2 = s2.clone();
        async move {
            let st = s2.hazards().status();
            st.leader && st.terms > terms_2
        }
    })
    .await
    .expect("re-elected on the promoted replica");
    let fence_3 = second.hazards().status().fence.unwrap();
    assert!(
        fence_3 > fence_2,
        "a fencing token went back across the fail-over: {fence_1}, {fence_2}, then {fence_3}"
    );
    poll_until(ELECTION * 2, || {
        tick_of(sentinel.try_cmd(&["HMGET", &tick_key, "tick", "fence"]))
            .is_some_and(|(_, fence)| fence == fence_3)
    })
    .expect("ticks resume on the promoted replica, written with the new token");
    println!(
        "tokens {fence_1}, {fence_2}, {fence_3}; ticks resumed {:?} after the fail-over",
        promoted.elapsed()
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refused_for_a_stale_token_steps_down_and_stands_again() {
    let server = RedisServer::start().unwrap();
    let s = settings(&server.url());
    let tick_key = tick_key(&s);
    let fleet = Fleet::start(s.clone()).await.unwrap();
    let f = fleet.clone();
    poll_until_async(ELECTION * 2, move || {
        let f = f.clone();
        async move { f.hazards().status().ticks_written > 0 }
    })
    .await
    .expect("the fleet leads and ticks");
    let status = fleet.hazards().status();
    let fence = status.fence.unwrap();
    // A newer leader wrote (its lock since lost): this leader's lock still looks held.
    let newer = (fence + 1).to_string();
    server.cmd(&["HSET", &tick_key, "fence", &newer]);
    let f = fleet.clone();
    poll_until_async(ELECTION * 2, move || {
        let f = f.clone();
        async move {
            let st = f.hazards().status();
            st.terms > status.terms && st.leader
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no new term: {:?}", fleet.hazards().status()));
    let after = fleet.hazards().status();
    assert!(after.fence.unwrap() > fence + 1, "{after:?}");
    poll_until(ELECTION, || {
        tick_of(server.try_cmd(&["HMGET", &tick_key, "tick", "fence"]))
            .is_some_and(|(_, f)| Some(f) == after.fence)
    })
    .expect("ticks are written again, with the new term's token");
    fleet.shutdown().await.unwrap();
}
