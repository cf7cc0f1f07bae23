//! Scale-out: the master of a Sentinel set-up or of a Redis Cluster killed under a write load
//! is an outage like any other (degraded, then resynced against the promoted replica; with
//! `wait_replicas = 1`, nothing acknowledged lost), and three daemons sharing one deployment
//! split the fleet's work (one fetcher, one hazard ticker, each task once, exclusive locks,
//! every heartbeat seen, admin messages to the right process, a daemon killed with -9
//! replaced in its roles).

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Child;

use botfleet::actors::scheduler::NewTask;
use botfleet::settings::{Settings, StorageSettings};
use botfleet::storage::{KeySchema, Mode, Storage, StorageEvent};
use botfleet::Fleet;
use parking_lot::Mutex;
use support::{
    poll_until, poll_until_async, Acked, HttpReply, HttpServer, RedisCluster, RedisSentinel,
    RespValue, TestRedis, WriteLoad,
};

/// Interval between two writes of one load task: a steady rate, so that the outbox of the
/// outage stays a few thousand writes, replayed in seconds.
const LOAD_PACE: Duration = Duration::from_millis(2);

/// Prefix of the load's keys (`scale:T:I`): plain names, so that they spread over every
/// master of a Cluster.
const LOAD_PREFIX: &str = "scale";

/// The key the load's first writer writes first.
fn first_load_key() -> String {
    format!("{LOAD_PREFIX}:0:0")
}

fn storage_settings(url: &str, dir: &std::path::Path) -> StorageSettings {
    let mut st = StorageSettings::default();
    st.redis.url = url.to_string();
    st.file.dir = dir.join("store").to_string_lossy().into_owned();
    // The servers, the sentinels and the test share 2 cores: a slow answer is not an outage.
    st.redis.timeout_ms = 1_000;
    st.redis.connect_timeout_ms = 500;
    st.redis.reconnect_max_ms = 500;
    st
}

/// Settings for a master killed under load: a write is acknowledged once a replica holds it
/// (`wait_replicas = 1`), the set-up in which a master that dies cannot take an acknowledged
/// write along. (With the default 0, Redis replicates asynchronously and what the master
/// acknowledged in its last instant can die with it.)
fn failover_settings(url: &str, dir: &std::path::Path) -> StorageSettings {
    let mut st = storage_settings(url, dir);
    st.redis.wait_replicas = 1;
    // On 2 shared cores a replica can lag past the default 100 ms.
    st.redis.wait_timeout_ms = 500;
    st
}

async fn wait_mode(storage: &Storage, mode: Mode, within: Duration) {
    let s = storage.clone();
    poll_until_async(within, move || {
        let s = s.clone();
        async move { s.mode() == mode }
    })
    .await
    .unwrap_or_else(|e| panic!("mode {mode} not reached: {e:?}; now {}", storage.mode()));
}

/// Asserts that every acknowledged write in `written` reads back as written in `values` (read
/// back in the same order), bar at most `unreplicated` of them: writes the old master
/// acknowledged without a replica within `wait_timeout_ms` before it died. On failure names
/// how many were lost, the first ten with when they were acknowledged, and what `context`
/// says (asked for only then).
fn assert_nothing_lost(
    written: &[Acked],
    values: Vec<RespValue>,
    kill: &Kill,
    context: impl FnOnce() -> String,
) {
    assert_eq!(values.len(), written.len());
    let lost: Vec<String> = written
        .iter()
        .zip(values)
        .filter(|(w, got)| got.as_str() != Some(w.value.as_str()))
        .map(|(w, got)| {
            let at = if w.at < kill.at {
                format!("{:?} before the kill", kill.at - w.at)
            } else {
                format!("{:?} after the kill", w.at - kill.at)
            };
            format!("{} ({at}): {got:?}", w.key)
        })
        .collect();
    println!(
        "{} writes, {} lost, {} acknowledged unreplicated before the promotion",
        written.len(),
        lost.len(),
        kill.unreplicated
    );
    if lost.len() as u64 > kill.unreplicated {
        panic!(
            "{} writes, {} lost, e.g. {:?}\n{}",
            written.len(),
            lost.len(),
            &lost[..lost.len().min(10)],
            context()
        );
    }
}

fn keys_of(written: &[Acked]) -> Vec<String> {
    written.iter().map(|w| w.key.clone()).collect()
}

/// A deployment whose master the fail-over tests kill.
trait MasterKiller {
    /// Waits until the replica holds every write the master had.
    fn wait_in_sync(&self);
    /// SIGKILLs the master.
    fn kill(&mut self);
    /// Waits until a replica has taken over; how long that took.
    fn wait_promoted(&self) -> Duration;
}

/// What happened at the kill.
struct Kill {
    at: Instant,
    /// Writes acknowledged without a replica (`unreplicated_writes`) when the promotion was
    /// seen: those the old master may have taken along.
    unreplicated: u64,
}

/// The load before, during and after a fail-over of `deployment`'s master. Returns the
/// acknowledged writes and what happened at the kill.
async fn fail_over_under_load(
    storage: &Storage,
    deployment: &mut impl MasterKiller,
) -> (Vec<Acked>, Kill) {
    assert_eq!(storage.mode(), Mode::Redis);
    let mut events = storage.events();
    let load = WriteLoad::start(storage, 6, LOAD_PREFIX, None, Some(LOAD_PACE));
    load.wait_acked(300).await;
    // The kill and the wait for the promotion poll synchronously: off the runtime's workers,
    // which keep the load and the storage monitor running meanwhile.
    let (kill, promoted) = tokio::task::block_in_place(|| {
        deployment.wait_in_sync();
        let at = Instant::now();
        deployment.kill();
        let promoted = deployment.wait_promoted();
        // Until the promotion nothing took the killed master's writes: every WAIT pending on
        // it at the kill failed (an outage: its write went to the outbox), and none to the
        // promoted replica has timed out yet. (On a Cluster the count also holds the other
        // masters' unreplicated writes, which were not lost: the bound is only looser.)
        // The killed server stays down: the promoted replica has no replica of its own, so
        // its writes skip WAIT (counted as unreplicated) rather than stall. Restarting it
        // would give the sentinels, or the cluster, a second candidate, and on a loaded
        // machine a false detection could fail over again to it before it has synced.
        let unreplicated = storage.stats().unreplicated_writes;
        (Kill { at, unreplicated }, promoted)
    });
    let killed = kill.at;
    // The outage was noticed (the load writes all the time): the storage went degraded,
    // perhaps already back by now, so its events tell...
    let degraded = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(StorageEvent::ModeChanged {
                    to: Mode::Degraded, ..
                }) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("storage events: {e}"),
            }
        }
    })
    .await;
    assert!(degraded.is_ok(), "the storage never went degraded");
    // ...the fallback kept answering, and the outbox went to the promoted replica.
    load.wait_acked(200).await;
    wait_mode(storage, Mode::Redis, Duration::from_secs(30)).await;
    let back = killed.elapsed();
    println!("promoted after {promoted:?}, storage back on redis {back:?} after the kill");
    load.wait_acked(300).await;
    let (written, errors, _) = load.finish().await;
    assert_eq!(errors, 0, "no caller saw an error");
    // A late outage (a topology change seen after the first resync) may refill the outbox:
    // what matters is that the storage ends on Redis with every fallback write replayed.
    let s = storage.clone();
    poll_until_async(Duration::from_secs(30), move || {
        let s = s.clone();
        async move { s.mode() == Mode::Redis && s.stats().outbox_len == 0 }
    })
    .await
    .unwrap_or_else(|e| panic!("outbox not replayed: {e:?}; {:?}", storage.stats()));
    (written, kill)
}

/// The master of a Sentinel set-up.
struct SentinelMaster<'a> {
    set: &'a mut RedisSentinel,
    old: u16,
}

impl MasterKiller for SentinelMaster<'_> {
    fn wait_in_sync(&self) {
        self.set.wait_replica_in_sync().unwrap();
    }
    fn kill(&mut self) {
        self.set.kill_master().unwrap();
    }
    fn wait_promoted(&self) -> Duration {
        self.set.wait_failover(self.old).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_under_load_degrades_then_resyncs_to_the_promoted_replica() {
    let mut set = RedisSentinel::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        &failover_settings(&set.url(), dir.path()),
        &KeySchema::default(),
    )
    .await
    .unwrap();
    let old = set.master_port().unwrap();
    let (written, kill) =
        fail_over_under_load(&storage, &mut SentinelMaster { set: &mut set, old }).await;
    assert_ne!(set.master_port().unwrap(), old);
    assert_nothing_lost(
        &written,
        set.get_many(&keys_of(&written)).unwrap(),
        &kill,
        String::new,
    );
    storage.close().await;
}

/// `storage.redis.wait_replicas = 1`: a write is acknowledged only once the replica has it.
/// With the replica frozen a write waits (up to `wait_timeout_ms`) instead of being
/// acknowledged by the master alone; past the timeout it is acknowledged all the same (the
/// master has it) and counted as unreplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_write_is_acknowledged_once_the_replica_has_it() {
    let set = RedisSentinel::start().unwrap();
    set.wait_replica_in_sync().unwrap();
    let replica = 1 - set.master_index().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut st = storage_settings(&set.url(), dir.path());
    st.redis.wait_replicas = 1;
    st.redis.wait_timeout_ms = 1_500;
    // The frozen replica must not look like an outage of the master.
    st.redis.timeout_ms = 2_000;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    storage.set("wait:0", "v0", None).await.unwrap();
    assert_eq!(
        set.data_cmd(replica, &["GET", "wait:0"]).unwrap().as_str(),
        Some("v0")
    );

    set.data_server(replica).freeze();
    let writer = {
        let storage = storage.clone();
        tokio::spawn(async move { storage.set("wait:1", "v1", None).await })
    };
    // The master has the write at once; the caller still waits for the replica.
    poll_until_async(Duration::from_secs(5), || async {
        set.cmd(&["GET", "wait:1"]).as_str() == Some("v1")
    })
    .await
    .expect("the master executed the write");
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(early.is_err(), "acknowledged before the replica had it");
    set.data_server(replica).thaw();
    writer.await.unwrap().unwrap();
    assert_eq!(
        set.data_cmd(replica, &["GET", "wait:1"]).unwrap().as_str(),
        Some("v1")
    );
    assert_eq!(storage.stats().unreplicated_writes, 0);
    assert_eq!(storage.mode(), Mode::Redis);
    storage.close().await;

    // A short wait: the write is acknowledged after it, and counted.
    st.redis.wait_timeout_ms = 100;
    let storage = Storage::open(&st, &KeySchema::default()).await.unwrap();
    set.data_server(replica).freeze();
    assert_eq!(storage.stats().masters_missing_replicas, 0);
    storage.set("wait:2", "v2", None).await.unwrap();
    assert_eq!(storage.stats().unreplicated_writes, 1);
    assert_eq!(storage.stats().masters_missing_replicas, 1);
    assert_eq!(set.cmd(&["GET", "wait:2"]).as_str(), Some("v2"));
    // The master is now taken to be missing its replica: the next writes skip WAIT (but for
    // a probe every 200 ms) instead of each blocking its connection for 100 ms, which would
    // take at least a second for ten of them.
    let started = Instant::now();
    for i in 0..10 {
        storage
            .set(&format!("wait:3:{i}"), "v", None)
            .await
            .unwrap();
    }
    let ten = started.elapsed();
    assert!(ten < Duration::from_secs(1), "ten writes took {ten:?}");
    assert_eq!(storage.stats().unreplicated_writes, 11);
    // Once the replica answers a probe again, every write waits for it again.
    set.data_server(replica).thaw();
    let mut i = 0;
    poll_until_async(Duration::from_secs(5), || {
        i += 1;
        let storage = storage.clone();
        async move {
            let before = storage.stats().unreplicated_writes;
            storage
                .set(&format!("wait:4:{i}"), "v", None)
                .await
                .unwrap();
            storage.stats().unreplicated_writes == before
        }
    })
    .await
    .expect("a write was replicated again once the replica was thawed");
    assert_eq!(storage.stats().masters_missing_replicas, 0);
    storage.set("wait:5", "v5", None).await.unwrap();
    assert_eq!(
        set.data_cmd(replica, &["GET", "wait:5"]).unwrap().as_str(),
        Some("v5")
    );
    assert_eq!(storage.mode(), Mode::Redis);
    storage.close().await;
}

/// The master of a Cluster that serves `probe`'s slot.
struct ClusterMaster<'a> {
    cluster: &'a mut RedisCluster,
    probe: String,
    old: u16,
}

impl MasterKiller for ClusterMaster<'_> {
    fn wait_in_sync(&self) {
        self.cluster.wait_replica_in_sync(&self.probe).unwrap();
    }
    fn kill(&mut self) {
        self.cluster.kill_master_for(&self.probe).unwrap();
    }
    fn wait_promoted(&self) -> Duration {
        self.cluster.wait_failover(&self.probe, self.old).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_load_degrades_then_resyncs_to_the_promoted_replica() {
    let mut cluster = RedisCluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        &failover_settings(&cluster.url(), dir.path()),
        &KeySchema::default(),
    )
    .await
    .unwrap();
    let probe = first_load_key();
    let old = cluster.master_port_for(&probe).unwrap();
    let mut master = ClusterMaster {
        cluster: &mut cluster,
        probe: probe.clone(),
        old,
    };
    let (written, kill) = fail_over_under_load(&storage, &mut master).await;
    assert_ne!(cluster.master_port_for(&probe).unwrap(), old);
    // The load wrote to every master, the killed one included.
    let values = cluster.get_many(&keys_of(&written)).unwrap();
    assert_nothing_lost(&written, values, &kill, || cluster.diagnostics(40));
    storage.close().await;
}

const CHILD_ENV: &str = "BOTFLEET_TEST_SCALE_CHILD";
/// The hazard ticker's and the fetcher's leadership TTL.
const LEADER_TTL_MS: u64 = 1_000;
/// Tasks the parent enqueues for the three daemons.
const TASKS: usize = 200;
const WAIT: Duration = Duration::from_secs(30);

/// A daemon's settings: the hazard ticker and the fetcher campaign for leadership with a
/// 1 s TTL, heartbeats every 100 ms, admin messages polled every 50 ms.
fn daemon_settings(url: &str, source: &str) -> Settings {
    let mut s = support::suite_settings(url);
    s.hazards.enabled = true;
    s.hazards.interval_ms = 200;
    s.hazards.lock_ttl_ms = LEADER_TTL_MS;
    let d = &mut s.shared_data;
    d.enabled = true;
    d.fetch_interval_ms = 100;
    d.leader_ttl_ms = LEADER_TTL_MS;
    d.source.url = source.to_string();
    d.source.timeout_ms = 3_000;
    s.scheduler.poll_interval_ms = 20;
    s.heartbeat.interval_ms = 100;
    s.heartbeat.monitor_interval_ms = 50;
    s.admin.poll_interval_ms = 50;
    s
}

/// Child role: one daemon. Prints `ready`, then `task ID` for each task it ran, `admin TEXT`
/// for each admin message, `lock N` after each exclusive section (`violation` if another
/// process was inside), and `status TICKER FETCHER` (leader flags) every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the scale tests"]
async fn child_daemon() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (url, source) = spec.split_once('|').unwrap();
    let fleet = Fleet::start(daemon_settings(url, source)).await.unwrap();
    fleet
        .scheduler()
        .register_handler("scale-work", 4, |task| async move {
            println!("task {}", task.id);
            Ok(())
        })
        .unwrap();
    let mut inbox = fleet.admin().inbox().unwrap();
    tokio::spawn(async move {
        while let Some(message) = inbox.recv().await {
            println!("admin {}", message.message);
        }
    });
    let (locks, storage) = (fleet.locks(), fleet.storage().clone());
    tokio::spawn(async move {
        let inside = format!("{}:scale:inside", storage.keys().prefix());
        for n in 1u64.. {
            let Ok(guard) = locks
                .acquire(
                    "scale-lock",
                    Duration::from_secs(2),
                    Duration::from_secs(10),
                )
                .await
            else {
                continue;
            };
            if storage.incr_by(&inside, 1).await.unwrap() != 1 {
                println!("violation");
            }
            // Work inside the section, so that an overlap would be seen.
            tokio::time::sleep(Duration::from_millis(5)).await;
            storage.incr_by(&inside, -1).await.unwrap();
            let _ = guard.release().await;
            println!("lock {n}");
        }
    });
    println!("ready");
    let mut every = tokio::time::interval(Duration::from_millis(50));
    loop {
        every.tick().await;
        let ticker = fleet.hazard_ticker_status().await.unwrap().leader;
        let fetcher = fleet.shared_data().metrics().fetcher.leader;
        println!("status {ticker} {fetcher}");
    }
}

/// A daemon child and what it printed, each line with the time it arrived.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Daemon {
    fn spawn(spec: &str) -> Daemon {
        let mut child = support::spawn_role(module_path!(), "child_daemon", CHILD_ENV, spec);
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().push((Instant::now(), line));
            }
        });
        Daemon { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// The last `(ticker, fetcher)` leader flags it reported after `since`.
    fn leader_flags(&self, since: Instant) -> Option<(bool, bool)> {
        let lines = self.lines.lock();
        let (_, last) = lines
            .iter()
            .rev()
            .find(|(at, l)| *at >= since && l.starts_with("status "))?;
        let mut flags = last["status ".len()..].split(' ').map(|f| f == "true");
        Some((flags.next()?, flags.next()?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until, among the live daemons' reports after `since`, exactly one holds the
/// ticker and exactly one the fetcher; their indexes.
fn wait_single_leaders(daemons: &[Option<Daemon>], since: Instant) -> (usize, usize) {
    let mut found = (0, 0);
    poll_until(WAIT, || {
        let flags: Vec<(usize, (bool, bool))> = daemons
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.as_ref()?.leader_flags(since)?)))
            .collect();
        let tickers: Vec<usize> = flags.iter().filter(|f| f.1 .0).map(|f| f.0).collect();
        let fetchers: Vec<usize> = flags.iter().filter(|f| f.1 .1).map(|f| f.0).collect();
        let live = daemons.iter().filter(|d| d.is_some()).count();
        if flags.len() == live && tickers.len() == 1 && fetchers.len() == 1 {
            found = (tickers[0], fetchers[0]);
            return true;
        }
        false
    })
    .expect("exactly one ticker and one fetcher across the daemons");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_one_deployment_and_replace_a_killed_one() {
    let redis = TestRedis::start().unwrap();
    let source = HttpServer::start(|n| {
        // The seed's feed for round n.
        let records = [serde_json::json!({"issue": n, "value": "123", "resultFormatValueI18n": ["Red", "Green"]})];
        HttpReply::json(serde_json::json!({ "data": { "records": records } }).to_string())
    })
    .await;
    let spec = format!("{}|{}", redis.url(), source.url("/game"));
    let mut daemons: Vec<Option<Daemon>> = (0..3).map(|_| Some(Daemon::spawn(&spec))).collect();
    poll_until(WAIT, || {
        daemons
            .iter()
            .flatten()
            .all(|d| !d.with_prefix("ready").is_empty())
    })
    .expect("three daemons ready");

    // The parent enqueues and talks to the daemons; it runs no worker, ticker or fetcher.
    let mut own = daemon_settings(&redis.url(), &source.url("/game"));
    own.hazards.enabled = false;
    own.shared_data.enabled = false;
    let parent = Fleet::start(own).await.unwrap();

    // Exactly one fetcher and one hazard ticker across the three.
    let started = Instant::now();
    let (ticker, fetcher) = wait_single_leaders(&daemons, started);

    // Each task processed once.
    let tasks: Vec<NewTask> = (0..TASKS)
        .map(|i| NewTask::new("scale-work", &serde_json::json!({ "i": i })))
        .collect();
    let ids: BTreeSet<String> = parent
        .scheduler()
        .enqueue_bulk(tasks)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ran = || -> Vec<String> {
        daemons
            .iter()
            .flatten()
            .flat_map(|d| d.with_prefix("task "))
            .collect()
    };
    poll_until(WAIT, || ran().len() >= TASKS).expect("every task ran");
    let ran = ran();
    let unique: BTreeSet<String> = ran.iter().cloned().collect();
    assert_eq!(ran.len(), unique.len(), "a task ran twice");
    assert_eq!(unique, ids);

    // Heartbeats of all three visible to a fourth process.
    let pids: BTreeSet<u32> = daemons.iter().flatten().map(Daemon::pid).collect();
    let peers = parent.peers();
    poll_until_async(WAIT, || {
        let (peers, pids) = (peers.clone(), pids.clone());
        async move {
            let seen: BTreeSet<u32> = peers
                .scan()
                .await
                .map(|ps| ps.into_iter().map(|p| p.record.pid).collect())
                .unwrap_or_default();
            pids.is_subset(&seen)
        }
    })
    .await
    .expect("every daemon's heartbeat seen");

    // Admin messages reach the process they are addressed to, and only it.
    for pid in &pids {
        parent
            .admin()
            .send(&pid.to_string(), &format!("hello-{pid}"))
            .await
            .unwrap();
    }
    poll_until(WAIT, || {
        daemons
            .iter()
            .flatten()
            .all(|d| !d.with_prefix("admin ").is_empty())
    })
    .expect("every daemon got a message");
    for d in daemons.iter().flatten() {
        assert_eq!(d.with_prefix("admin "), vec![format!("hello-{}", d.pid())]);
    }

    // Locks exclusive across the three, and each got its turn.
    poll_until(WAIT, || {
        daemons
            .iter()
            .flatten()
            .all(|d| !d.with_prefix("lock ").is_empty())
    })
    .expect("every daemon took the lock");
    for d in daemons.iter().flatten() {
        assert!(d.with_prefix("violation").is_empty(), "two holders at once");
    }

    // The ticker's daemon killed with -9: the survivors take over its roles within twice
    // the leadership TTL.
    let mut victim = daemons[ticker].take().unwrap();
    let was_fetcher = fetcher == ticker;
    let killed = Instant::now();
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    let (new_ticker, new_fetcher) = wait_single_leaders(&daemons, killed);
    // When `daemon` first reported holding the role in `field` (1 ticker, 2 fetcher).
    let replaced = |daemon: usize, field: usize| {
        daemons[daemon]
            .as_ref()
            .unwrap()
            .lines
            .lock()
            .iter()
            .find(|(at, l)| {
                *at >= killed && l.starts_with("status ") && l.split(' ').nth(field) == Some("true")
            })
            .map(|(at, _)| at.duration_since(killed))
            .unwrap()
    };
    let bound = Duration::from_millis(2 * LEADER_TTL_MS);
    let took = replaced(new_ticker, 1);
    println!("ticker replaced after {took:?} (fetcher moved too: {was_fetcher})");
    assert!(
        took <= bound,
        "ticker replaced after {took:?}, bound {bound:?}"
    );
    if was_fetcher {
        let took = replaced(new_fetcher, 2);
        assert!(
            took <= bound,
            "fetcher replaced after {took:?}, bound {bound:?}"
        );
    }
    drop(victim);
    parent.shutdown().await.unwrap();
}
