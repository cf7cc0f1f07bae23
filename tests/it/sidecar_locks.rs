//! Locks for bots in any language, through `botfleet run` as a sidecar: the HTTP lock API
//! (`/api/locks/acquire`, `/extend`, `/release`) and `botfleet lock run`, against a real
//! redis-server, over real sockets, with the built binary. Seed clients' `SET NX` on the same
//! names is played with raw RESP.

use crate::support;

use std::collections::BTreeSet;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::sidecar::{request, Sidecar};
use support::{poll_until, process_is_alive, RedisServer};

const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn acquire(daemon: &Sidecar, name: &str, ttl_ms: u64, wait_ms: u64) -> (u16, Value) {
    daemon.post(
        "/api/locks/acquire",
        &json!({ "name": name, "ttl_ms": ttl_ms, "wait_ms": wait_ms }).to_string(),
    )
}

fn extend(daemon: &Sidecar, name: &str, token: &str, ttl_ms: u64) -> (u16, Value) {
    daemon.post(
        "/api/locks/extend",
        &json!({ "name": name, "token": token, "ttl_ms": ttl_ms }).to_string(),
    )
}

fn release(daemon: &Sidecar, name: &str, token: &str) -> (u16, Value) {
    daemon.post(
        "/api/locks/release",
        &json!({ "name": name, "token": token }).to_string(),
    )
}

/// The lease of a 200 acquisition: (token, fence, expires_at_ms).
fn lease(answer: (u16, Value)) -> (String, u64, u64) {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    (
        body["token"].as_str().expect("a token").to_owned(),
        body["fence"].as_u64().expect("a fence"),
        body["expires_at_ms"].as_u64().expect("an expiry"),
    )
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cmd(&["PTTL", key]).as_int().unwrap()
}

/// A seed client's lock: `SET name "1" EX secs NX`; whether it was granted.
fn seed_set_nx(redis: &RedisServer, name: &str) -> bool {
    redis.cmd(&["SET", name, "1", "EX", "30", "NX"]).is_ok()
}

#[test]
fn http_locks_acquire_extend_release_with_increasing_fences() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "bet-lock:user1-agent1";

    let before = now_ms();
    let (token, fence1, expires) = lease(acquire(&daemon, name, 5_000, 0));
    let after = now_ms();
    assert!(
        token.len() == 32 && token.bytes().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(
        (before + 5_000..=after + 5_000).contains(&expires),
        "{expires} not within the request's time + ttl"
    );
    // The lock key is the name as given and holds the token: seed clients see it held.
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some(token.as_str()));
    assert!((1..=5_000).contains(&pttl(&redis, name)));

    // Busy for another holder.
    let (status, body) = acquire(&daemon, name, 5_000, 0);
    assert_eq!((status, body["error"].as_str()), (409, Some("lock busy")));

    // Extended by its token only.
    let (status, body) = extend(&daemon, name, &token, 20_000);
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at_ms"].as_u64().unwrap() >= before + 20_000);
    assert!(pttl(&redis, name) > 5_000);
    let stranger = "0123456789abcdef0123456789abcdef";
    assert_eq!(extend(&daemon, name, stranger, 20_000).0, 409);
    assert_eq!(release(&daemon, name, stranger).0, 409);
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some(token.as_str()));

    // Released by its token; the stale token is refused from then on.
    let (status, body) = release(&daemon, name, &token);
    assert_eq!((status, body), (200, json!({ "released": true })));
    assert!(redis.cmd(&["GET", name]).is_nil());
    let (status, body) = release(&daemon, name, &token);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not held"),
        "{body}"
    );
    assert_eq!(extend(&daemon, name, &token, 1_000).0, 409);

    // Fences strictly increase, across a waiter served by a release too.
    let (token2, fence2, _) = lease(acquire(&daemon, name, 5_000, 0));
    assert!(fence2 > fence1, "{fence2} <= {fence1}");
    let waiter = {
        let addr = daemon.addr().to_owned();
        std::thread::spawn(move || {
            let body = json!({ "name": name, "ttl_ms": 5_000, "wait_ms": 20_000 }).to_string();
            request(&addr, "POST", "/api/locks/acquire", &body, &[]).expect("an answer")
        })
    };
    poll_until(WAIT, || {
        daemon.get("/status").1["locks"]["waiters"].as_u64() == Some(1)
    })
    .expect("the waiter waits in the daemon");
    assert_eq!(release(&daemon, name, &token2).0, 200);
    let (token3, fence3, _) = lease(waiter.join().unwrap());
    assert!(fence3 > fence2, "{fence3} <= {fence2}");
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some(token3.as_str()));
}

#[test]
fn seed_set_nx_and_http_locks_exclude_each_other() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "wallet-retry-scheduler-lock";

    // Held over HTTP: the seed's SET NX is refused.
    let (token, _, _) = lease(acquire(&daemon, name, 10_000, 0));
    assert!(!seed_set_nx(&redis, name));
    // A token that is not one the service hands out (the seed's "1") is refused as bad input:
    // an HTTP client cannot release a seed client's lock.
    let (status, body) = release(&daemon, name, "1");
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("token")),
        "{body}"
    );
    assert_eq!(release(&daemon, name, &token).0, 200);

    // Held by a seed client: busy over HTTP, and a waiter gets it once the seed client lets go.
    assert!(seed_set_nx(&redis, name));
    assert_eq!(acquire(&daemon, name, 10_000, 0).0, 409);
    assert_eq!(release(&daemon, name, "1").0, 400);
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some("1"));
    let waiter = {
        let addr = daemon.addr().to_owned();
        std::thread::spawn(move || {
            let body = json!({ "name": name, "ttl_ms": 10_000, "wait_ms": 20_000 }).to_string();
            request(&addr, "POST", "/api/locks/acquire", &body, &[]).expect("an answer")
        })
    };
    poll_until(WAIT, || {
        daemon.get("/status").1["locks"]["waiters"].as_u64() == Some(1)
    })
    .expect("the waiter waits in the daemon");
    assert_eq!(redis.cmd(&["DEL", name]).as_int(), Some(1));
    let (token, _, _) = lease(waiter.join().unwrap());
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some(token.as_str()));
    assert!(!seed_set_nx(&redis, name));
}

/// A waiter whose client leaves (its connection closed: an HTTP client that gave up, a `lock
/// run` interrupted) gives up its place: the lock is not taken for nobody when it frees.
#[test]
fn a_waiter_that_leaves_takes_nothing() {
    use std::io::Write as _;
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "left-waiter-lock";
    let (token, _, _) = lease(acquire(&daemon, name, 30_000, 0));
    let waiters = || daemon.get("/status").1["locks"]["waiters"].as_u64();

    let body = json!({ "name": name, "ttl_ms": 30_000, "wait_ms": 20_000 }).to_string();
    let mut client = std::net::TcpStream::connect(daemon.addr()).unwrap();
    write!(
        client,
        "POST /api/locks/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    poll_until(WAIT, || waiters() == Some(1)).expect("the HTTP client waits");
    drop(client);
    poll_until(WAIT, || waiters() == Some(0)).expect("the waiter left with its client");

    let mut waiting = lock_run(&daemon, name, 30_000, 20_000, r#"touch "$DIR/ran""#)
        .spawn()
        .unwrap();
    poll_until(WAIT, || waiters() == Some(1)).expect("lock run waits");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGTERM) };
    assert_eq!(code(waiting.wait().unwrap()), 128 + libc::SIGTERM);
    poll_until(WAIT, || waiters() == Some(0)).expect("the waiter left with lock run");

    assert_eq!(release(&daemon, name, &token).0, 200);
    assert!(
        redis.cmd(&["GET", name]).is_nil(),
        "taken for a client that left"
    );
    assert!(!daemon.path("ran").exists());
}

#[test]
fn a_lock_nobody_extends_expires_at_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "bet-cleanup-lock";
    let ttl_ms = 800;
    let asked = Instant::now();
    let (token, fence, _) = lease(acquire(&daemon, name, ttl_ms, 0));
    // No watchdog: nobody extends it, and another holder gets it once its TTL ran out, not
    // before.
    let (token2, fence2, _) = lease(acquire(&daemon, name, 5_000, 10_000));
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(ttl_ms - 50),
        "had after {waited:?}, before the ttl of {ttl_ms} ms"
    );
    assert!(
        waited < Duration::from_millis(ttl_ms + 2_000),
        "had only after {waited:?}"
    );
    assert!(fence2 > fence);
    assert_ne!(token, token2);
    assert_eq!(extend(&daemon, name, &token, 1_000).0, 409);
}

#[test]
fn lock_calls_answer_503_off_redis() {
    let mut redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(
        &redis.url(),
        &[("BOTFLEET__STORAGE__REDIS__PING_INTERVAL_MS", "100")],
    );
    let name = "hazards-ticker-lock";
    let (token, _, _) = lease(acquire(&daemon, name, 60_000, 0));
    redis.kill9();
    // The first call may itself meet the outage; from then on every call fails fast.
    poll_until(WAIT, || acquire(&daemon, "other", 1_000, 0).0 == 503)
        .expect("acquisitions answer 503 off Redis");
    for (status, body) in [
        acquire(&daemon, name, 1_000, 5_000),
        extend(&daemon, name, &token, 60_000),
        release(&daemon, name, &token),
    ] {
        assert_eq!(status, 503, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("needs Redis") && message.contains("never fall back"),
            "{message}"
        );
    }
    // Back on Redis (which restarted without the lock): served again.
    redis.restart().unwrap();
    poll_until(WAIT, || acquire(&daemon, name, 1_000, 0).0 == 200)
        .expect("acquisitions work again once Redis is back");
}

#[test]
fn bad_input_is_a_400_naming_the_field_and_stores_nothing() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let long = "x".repeat(513);
    let token = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("/api/locks/acquire", "{}".into(), Some("name")),
        (
            "/api/locks/acquire",
            r#"{"ttl_ms": 1000}"#.into(),
            Some("name"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a"}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "", "ttl_ms": 1000}"#.into(),
            Some("name"),
        ),
        (
            "/api/locks/acquire",
            json!({"name": long, "ttl_ms": 1000}).to_string(),
            Some("name"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": 5, "ttl_ms": 1000}"#.into(),
            Some("name"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 0}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": -5}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": "1000"}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 1.5}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 86400001}"#.into(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 1000, "wait_ms": 60001}"#.into(),
            Some("wait_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 1000, "wait_ms": -1}"#.into(),
            Some("wait_ms"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 1000, "owner": "me"}"#.into(),
            Some("owner"),
        ),
        (
            "/api/locks/acquire",
            r#"{"name": "a", "ttl_ms": 1000"#.into(),
            None,
        ),
        ("/api/locks/acquire", r#"["a", 1000]"#.into(), None),
        ("/api/locks/acquire", "".into(), None),
        (
            "/api/locks/extend",
            r#"{"name": "a", "ttl_ms": 1000}"#.into(),
            Some("token"),
        ),
        (
            "/api/locks/extend",
            json!({"name": "a", "token": "1", "ttl_ms": 1000}).to_string(),
            Some("token"),
        ),
        (
            "/api/locks/extend",
            json!({"name": "a", "token": token}).to_string(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/extend",
            json!({"name": "a", "token": token, "ttl_ms": 0}).to_string(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/extend",
            json!({"name": "", "token": token, "ttl_ms": 10}).to_string(),
            Some("name"),
        ),
        (
            "/api/locks/release",
            json!({"name": "a", "token": token.to_uppercase()}).to_string(),
            Some("token"),
        ),
        (
            "/api/locks/release",
            json!({"name": "a", "token": token, "ttl_ms": 5}).to_string(),
            Some("ttl_ms"),
        ),
        (
            "/api/locks/release",
            json!({"token": token}).to_string(),
            Some("name"),
        ),
    ];
    for (path, body, field) in &cases {
        let (status, answer) = daemon.post(path, body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["field"].as_str(), *field, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // Nothing stored: no lock key, no fencing counter.
    let keys = redis.cmd(&["KEYS", "*"]);
    let stored: BTreeSet<&str> = keys
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_str())
        .filter(|k| *k == "a" || k.contains("lock-fence"))
        .collect();
    assert!(stored.is_empty(), "{stored:?}");

    // A key that holds something else than a lock: busy to acquire (it exists), and 400
    // naming the name to extend or release.
    redis.cmd(&["RPUSH", "a-list", "x"]);
    assert_eq!(acquire(&daemon, "a-list", 1_000, 0).0, 409);
    for (status, answer) in [
        extend(&daemon, "a-list", token, 1_000),
        release(&daemon, "a-list", token),
    ] {
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some("name")),
            "{answer}"
        );
    }
    assert_eq!(redis.cmd(&["LLEN", "a-list"]).as_int(), Some(1));
}

#[test]
fn lock_calls_need_the_token_when_one_is_set() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[("BOTFLEET__API__TOKEN", "s3cret")]);
    let body = r#"{"name": "n", "ttl_ms": 1000}"#;
    for path in [
        "/api/locks/acquire",
        "/api/locks/extend",
        "/api/locks/release",
    ] {
        let (status, _) = request(daemon.addr(), "POST", path, body, &[]).unwrap();
        assert_eq!(status, 401, "{path}");
    }
    assert!(redis.cmd(&["GET", "n"]).is_nil());
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, answer) =
        request(daemon.addr(), "POST", "/api/locks/acquire", body, &auth).unwrap();
    assert_eq!(status, 200, "{answer}");
}

// --- botfleet lock run ------------------------------------------------------------------

/// `botfleet lock run NAME --ttl-ms TTL --wait-ms WAIT --url URL -- sh -c SCRIPT`.
fn lock_run(daemon: &Sidecar, name: &str, ttl_ms: u64, wait_ms: u64, script: &str) -> Command {
    let (ttl, wait, url) = (ttl_ms.to_string(), wait_ms.to_string(), daemon.url());
    let mut cmd = daemon.command(&[
        "lock",
        "run",
        name,
        "--ttl-ms",
        &ttl,
        "--wait-ms",
        &wait,
        "--url",
        &url,
        "--",
        "sh",
        "-c",
        script,
    ]);
    cmd.env("DIR", daemon.dir()).stdin(Stdio::null());
    cmd
}

fn code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(-1)
}

/// Three processes run `lock run` 100 times each around a read-increment-write of one counter
/// file, with a pause inside: the counter ends at 300 (no update lost), an overlap detector
/// (a directory only one holder at a time can create) never collides, and the fencing tokens
/// CMD was given strictly increase in the order the holders ran.
#[test]
fn lock_run_from_three_processes_never_overlaps() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    std::fs::write(daemon.path("counter"), "0").unwrap();
    let script = r#"
        mkdir "$DIR/holder" 2>/dev/null || { echo overlap >> "$DIR/overlaps"; exit 99; }
        n=$(cat "$DIR/counter")
        sleep 0.002
        echo $((n + 1)) > "$DIR/counter"
        echo "$BOTFLEET_FENCE" >> "$DIR/fences"
        rmdir "$DIR/holder"
    "#;
    let started = Instant::now();
    let runners: Vec<_> = (0..3)
        .map(|_| {
            let mut cmd = lock_run(&daemon, "counter-lock", 10_000, 60_000, script);
            std::thread::spawn(move || {
                (0..100)
                    .map(|_| code(cmd.status().expect("run botfleet lock run")))
                    .collect::<Vec<i32>>()
            })
        })
        .collect();
    for runner in runners {
        let codes = runner.join().unwrap();
        assert!(codes.iter().all(|c| *c == 0), "exit codes: {codes:?}");
    }
    eprintln!("300 runs of lock run in {:?}", started.elapsed());
    assert!(!daemon.path("overlaps").exists(), "two holders at once");
    let counter = std::fs::read_to_string(daemon.path("counter")).unwrap();
    assert_eq!(counter.trim(), "300");
    let fences: Vec<u64> = std::fs::read_to_string(daemon.path("fences"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(fences.len(), 300);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences not increasing: {fences:?}"
    );
    assert!(redis.cmd(&["GET", "counter-lock"]).is_nil(), "released");
}

/// While `lock run` holds the lock a seed client's `SET NX` is refused; while a seed client
/// holds it `lock run --wait-ms 0` exits with the busy code without running CMD.
#[test]
fn lock_run_and_seed_clients_exclude_each_other() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "bet-lock:user7-agent3";

    let script = r#"
        echo "$BOTFLEET_LOCK_TOKEN $BOTFLEET_FENCE $BOTFLEET_LOCK_NAME" > "$DIR/held"
        while [ ! -e "$DIR/go" ]; do sleep 0.01; done
        exit 4
    "#;
    let mut holder = lock_run(&daemon, name, 5_000, 0, script).spawn().unwrap();
    // The shell creates the file before it writes the line: wait for the whole line.
    poll_until(WAIT, || {
        std::fs::read_to_string(daemon.path("held")).is_ok_and(|h| h.ends_with('\n'))
    })
    .expect("CMD runs");
    let held = std::fs::read_to_string(daemon.path("held")).unwrap();
    let parts: Vec<&str> = held.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{held}");
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some(parts[0]));
    assert!(parts[1].parse::<u64>().unwrap() > 0);
    assert_eq!(parts[2], name);
    assert!(!seed_set_nx(&redis, name), "a seed client took a held lock");
    std::fs::write(daemon.path("go"), "").unwrap();
    // CMD's exit code is passed on, and the lock released.
    assert_eq!(code(holder.wait().unwrap()), 4);
    assert!(redis.cmd(&["GET", name]).is_nil());

    assert!(seed_set_nx(&redis, name));
    let out = lock_run(&daemon, name, 5_000, 0, r#"touch "$DIR/ran""#)
        .output()
        .unwrap();
    assert_eq!(
        code(out.status),
        75,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    assert!(!daemon.path("ran").exists(), "CMD ran without the lock");
    assert_eq!(redis.cmd(&["GET", name]).as_str(), Some("1"));
}

/// A holder killed with -9 (`lock run` and CMD both) leaves its lock to expire at its TTL:
/// another `lock run` waiting for it gets it once the TTL left at the kill has run out, not
/// before.
#[test]
fn a_holder_killed_with_9_frees_the_lock_at_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let name = "killed-holder-lock";
    let script = r#"echo $$ > "$DIR/cmd.pid"; exec sleep 60"#;
    let mut holder = lock_run(&daemon, name, 1_500, 0, script).spawn().unwrap();
    poll_until(WAIT, || {
        std::fs::read_to_string(daemon.path("cmd.pid")).is_ok_and(|p| p.ends_with('\n'))
    })
    .expect("CMD runs");
    let cmd_pid: i32 = std::fs::read_to_string(daemon.path("cmd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let token = redis.cmd(&["GET", name]).as_str().unwrap().to_owned();
    // SAFETY: kill(2) on the pids of our own child and of its child.
    unsafe {
        libc::kill(holder.id() as i32, libc::SIGKILL);
        libc::kill(cmd_pid, libc::SIGKILL);
    }
    holder.wait().unwrap();
    let killed = Instant::now();
    let left = Duration::from_millis(pttl(&redis, name).max(0) as u64);
    assert!(left > Duration::ZERO, "the lock vanished with its holder");
    poll_until(WAIT, || !process_is_alive(cmd_pid as u32)).expect("CMD is gone");

    let out = lock_run(
        &daemon,
        name,
        1_500,
        10_000,
        r#"echo "$BOTFLEET_LOCK_TOKEN""#,
    )
    .output()
    .unwrap();
    let had_after = killed.elapsed();
    assert_eq!(
        code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), token);
    let margin = Duration::from_millis(100);
    assert!(
        had_after + margin >= left,
        "had after {had_after:?}, while {left:?} of the dead holder's TTL was left"
    );
    assert!(
        had_after <= left + Duration::from_millis(1_500),
        "had only after {had_after:?} ({left:?} of TTL left at the kill)"
    );
}

/// The lock lost while CMD runs (here: taken from under it): CMD gets SIGTERM and `lock run`
/// exits with the lost code; signals sent to `lock run` reach CMD.
#[test]
fn lock_run_stops_cmd_when_the_lock_is_lost_and_forwards_signals() {
    let redis = RedisServer::start().unwrap();
    let daemon = Sidecar::start(&redis.url(), &[]);
    let script = r#"
        trap 'echo TERM >> "$DIR/signals.$BOTFLEET_LOCK_NAME"; exit 9' TERM
        touch "$DIR/running.$BOTFLEET_LOCK_NAME"
        while :; do sleep 0.01; done
    "#;
    // Lost: the key is deleted under it, and its next extension (every 300 ms) is refused.
    let lost = lock_run(&daemon, "lost", 900, 0, script)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    poll_until(WAIT, || daemon.path("running.lost").exists()).expect("CMD runs");
    redis.cmd(&["DEL", "lost"]);
    let out = lost.wait_with_output().unwrap();
    assert_eq!(
        code(out.status),
        76,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost while CMD ran"));
    let signals = std::fs::read_to_string(daemon.path("signals.lost")).unwrap();
    assert_eq!(signals.trim(), "TERM");

    // SIGTERM to lock run is forwarded; CMD's code is passed on and the lock released.
    let mut held = lock_run(&daemon, "held", 5_000, 0, script).spawn().unwrap();
    poll_until(WAIT, || daemon.path("running.held").exists()).expect("CMD runs");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(held.id() as i32, libc::SIGTERM) };
    assert_eq!(code(held.wait().unwrap()), 9);
    let signals = std::fs::read_to_string(daemon.path("signals.held")).unwrap();
    assert_eq!(signals.trim(), "TERM");
    assert!(redis.cmd(&["GET", "held"]).is_nil());

    // A CMD that cannot be started: 127, the lock released.
    let out = daemon
        .command(&[
            "lock",
            "run",
            "nothing",
            "--ttl-ms",
            "5000",
            "--url",
            &daemon.url(),
            "--",
            "/no/such/program",
        ])
        .output()
        .unwrap();
    assert_eq!(
        code(out.status),
        127,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(redis.cmd(&["GET", "nothing"]).is_nil());
    // Bad arguments: 2 naming them; an unreachable daemon: 1.
    let out = daemon
        .command(&[
            "lock",
            "run",
            "n",
            "--ttl-ms",
            "0",
            "--url",
            &daemon.url(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(out.status), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl-ms"));
    let out = daemon
        .command(&[
            "lock",
            "run",
            "n",
            "--ttl-ms",
            "10",
            "--url",
            "http://127.0.0.1:1",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(out.status), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}
