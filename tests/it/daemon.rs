//! The daemon as a process: `botfleet run` against real redis-server processes, stopped with
//! SIGTERM, killed with -9, and made to give up when an actor keeps failing.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{poll_until, RedisServer};

/// A running daemon whose stderr (JSON log lines) is collected by a thread.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(redis_url: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
        cmd.arg("run")
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "botfleet=debug")
            .env("BOTFLEET__LOG__FORMAT", "json")
            .env("BOTFLEET__PRESENCE__INTERVAL_MS", "20")
            .env("BOTFLEET__PRESENCE__TTL_SECS", "120")
            .env("BOTFLEET__SUPERVISOR__STOP_TIMEOUT_MS", "3000")
            // Daemons run in parallel: each HTTP API on a port of its own.
            .env("BOTFLEET__API__BIND", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Beats the presence actor acknowledged, from the log.
    fn max_beat(&mut self) -> u64 {
        self.drain();
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["fields"]["beat"].as_u64())
            .max()
            .unwrap_or(0)
    }

    fn wait_beats(&mut self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.max_beat() < n {
            assert!(
                Instant::now() < deadline,
                "no beat {n}; log: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our own unreaped child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, within: Duration) -> (i32, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                return (status.code().unwrap_or(-1), started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "daemon still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log_text(&mut self) -> String {
        self.drain();
        self.seen.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn presence_key(pid: u32) -> String {
    format!("botfleet:instance:{}-{pid}", host())
}

/// SIGTERM while writes wait in the outbox: the daemon flushes them to Redis and exits 0
/// within the deadline.
#[test]
fn sigterm_flushes_the_outbox_and_exits_zero() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill9();
    let mut daemon = Daemon::start(&url, &[]);
    daemon.wait_beats(10);
    server.restart_empty().unwrap();
    daemon.signal(libc::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));
    println!("sigterm: exit {code} after {took:?}");
    assert_eq!(code, 0, "log: {}", daemon.log_text());
    assert!(took < Duration::from_secs(4), "graceful stop took {took:?}");
    let acked = daemon.max_beat();
    let in_redis: u64 = server
        .cmd(&["HGET", &presence_key(daemon.pid()), "beats"])
        .as_str()
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    assert!(
        in_redis >= acked,
        "redis has beat {in_redis}, the daemon acknowledged {acked}"
    );
}

/// kill -9 while Redis is down and the fallback is the file store; a new daemon on the same
/// directory replays what the dead one acknowledged.
#[test]
fn kill9_with_file_fallback_loses_nothing_acknowledged() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill9();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let file = [
        ("BOTFLEET__STORAGE__FALLBACK", "file"),
        ("BOTFLEET__STORAGE__FILE__DIR", store),
    ];
    let mut first = Daemon::start(&url, &file);
    first.wait_beats(20);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    let acked = first.max_beat();

    server.restart_empty().unwrap();
    let mut second = Daemon::start(&url, &file);
    let key = presence_key(first.pid());
    let s = &server;
    poll_until(Duration::from_secs(15), || {
        s.cmd(&["HGET", &key, "beats"])
            .as_str()
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0)
            >= acked
    })
    .unwrap_or_else(|_| panic!("beat {acked} of the killed daemon never reached redis"));
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait_exit(Duration::from_secs(10)).0, 0);
}

/// An actor that fails on every beat (another client keeps turning its hash into a string)
/// exceeds the restart intensity: the daemon exits 1, naming the actor.
#[test]
fn restart_intensity_exceeded_exits_non_zero_naming_the_actor() {
    let server = RedisServer::start().unwrap();
    let mut daemon = Daemon::start(
        &server.url(),
        &[
            ("BOTFLEET__SUPERVISOR__MAX_RESTARTS", "2"),
            ("BOTFLEET__SUPERVISOR__WITHIN_SECS", "30"),
        ],
    );
    let key = presence_key(daemon.pid());
    let started = Instant::now();
    let code = loop {
        server.cmd(&["SET", &key, "not a hash"]);
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not give up"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let log = daemon.log_text();
    assert_eq!(code, 1, "log: {log}");
    assert!(log.contains("presence"), "the error names the actor: {log}");
}

/// A misconfiguration exits 2 with the setting named.
#[test]
fn bad_settings_exit_two() {
    let mut daemon = Daemon::start("nonsense://x", &[]);
    let (code, _) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 2);
}

/// `botfleet run` takes no admin inbox: the messages sent to its pid stay in
/// `admin:queue:PID`, untouched, for the bot that owns them, however many arrive (the inbox
/// used to take them into a channel nobody read, and block after 1,024).
#[test]
fn the_daemon_leaves_its_admin_queue_alone() {
    let server = RedisServer::start().unwrap();
    let mut daemon = Daemon::start(
        &server.url(),
        &[("BOTFLEET__ADMIN__POLL_INTERVAL_MS", "20")],
    );
    daemon.wait_beats(5);
    let pid = daemon.pid();
    let queue = format!("admin:queue:{pid}");
    let channel = format!("admin:bot:{pid}");
    for i in 0..1_100 {
        let envelope =
            format!(r#"{{"id":"outside-{i:05}","from":"outside","message":"m{i}","sent_at":1}}"#);
        server.cmd(&["RPUSH", &queue, &envelope]);
        server.cmd(&["PUBLISH", &channel, &envelope]);
    }
    // Twenty beats later (at least 400 ms, twenty polls of the inbox), nothing was taken.
    let beat = daemon.max_beat();
    daemon.wait_beats(beat + 20);
    assert_eq!(server.cmd(&["LLEN", &queue]).as_int(), Some(1_100));
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
}
