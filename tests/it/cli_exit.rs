//! Bad usage and bad settings, run as a user would (the built binary, a cleared environment):
//! each exits 2 with a message that names the key or the argument, before doing anything. The
//! last two start `botfleet run` on its in-memory store and talk to its HTTP API over a raw
//! socket: the bearer header read strictly, and `HEAD /health`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, poll_until};

use crate::support::process::run_botfleet as botfleet;

/// Asserts exit 2 with `needle` on stderr and nothing on stdout; answers stderr.
fn assert_usage(out: &Output, needle: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    stderr
}

/// A settings file for `run`: in-memory store, no history, the API on `bind`.
fn run_settings(dir: &Path, bind: &str, extra: &str) -> String {
    let path = dir.join("settings.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nfallback = \"memory\"\n[storage.redis]\nenabled = false\n\
             [history]\nenabled = false\n[api]\nbind = \"{bind}\"\n{extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn run_refuses_an_api_bind_in_use_or_not_local_before_the_fleet_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    // 192.0.2.1 (TEST-NET-1) is no address of this machine.
    for bind in [in_use.as_str(), "192.0.2.1:8080"] {
        let file = run_settings(dir.path(), bind, "");
        let started = Instant::now();
        let out = botfleet(dir.path(), &["run", "--config", &file], &[]);
        let stderr = assert_usage(&out, "api.bind");
        assert!(stderr.contains(bind), "{stderr}");
        assert!(!stderr.contains("fleet started"), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "{stderr}");
    }
}

#[test]
fn a_bad_rust_log_exits_2_naming_it_for_run_and_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = run_settings(dir.path(), "127.0.0.1:0", "");
    let vars = [("RUST_LOG", "[[[=====")];
    for args in [
        &["run", "--config", &file][..],
        &["config", "check", "-c", &file],
    ] {
        let out = botfleet(dir.path(), args, &vars);
        assert_usage(&out, "RUST_LOG: expected a tracing filter");
    }
    // Beside bad settings, both are reported.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[supervisor]\nmax_restarts = \"x\"\n").unwrap();
    let out = botfleet(
        dir.path(),
        &["config", "check", "-c", bad.to_str().unwrap()],
        &vars,
    );
    let stderr = assert_usage(&out, "RUST_LOG");
    assert!(stderr.contains("supervisor.max_restarts"), "{stderr}");
}

#[test]
fn an_overflowing_number_in_the_file_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.toml");
    std::fs::write(
        &file,
        "[storage.redis]\n# a comment\ntimeout_ms = 99999999999999999999\n",
    )
    .unwrap();
    let out = botfleet(
        dir.path(),
        &["config", "check", "-c", file.to_str().unwrap()],
        &[],
    );
    let stderr = assert_usage(&out, "storage.redis.timeout_ms: ");
    assert!(stderr.contains("line 3"), "{stderr}");
}

const VERIFY: [&str; 7] = [
    "verify",
    "--server-seed",
    "abc",
    "--client-seed",
    "EASY",
    "--nonce",
    "1",
];

#[test]
fn verify_refuses_an_unknown_difficulty_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let args = [&VERIFY[..], &["--difficulty", "NOPE"]].concat();
    let out = botfleet(dir.path(), &args, &[]);
    let stderr = assert_usage(&out, "--difficulty: unknown difficulty \"NOPE\"");
    assert!(stderr.contains("EASY"), "lists the known ones: {stderr}");
}

#[test]
fn verify_refuses_an_empty_seed_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = [&VERIFY[..], &["--difficulty", "EASY"]].concat();
    args[2] = "";
    let out = botfleet(dir.path(), &args, &[]);
    assert_usage(&out, "--server-seed: the server seed is empty");
    let mut args = [&VERIFY[..], &["--difficulty", "EASY"]].concat();
    args[4] = "";
    let out = botfleet(dir.path(), &args, &[]);
    assert_usage(&out, "--client-seed: the client seed is empty");
}

#[test]
fn bench_storage_refuses_a_redis_argument_that_is_no_redis_url() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["garbage", "http://127.0.0.1:1", "redis://"] {
        let out = botfleet(dir.path(), &["bench", "storage", "--redis", url], &[]);
        assert_usage(&out, "--redis: expected");
    }
}

#[test]
fn bench_locks_refuses_an_unknown_scenario_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 answers nothing: the scenario is refused before any connection is tried.
    let out = botfleet(
        dir.path(),
        &[
            "bench",
            "locks",
            "--redis",
            "redis://127.0.0.1:1",
            "--scenario",
            "one-task",
            "--scenario",
            "nope",
        ],
        &[],
    );
    let stderr = assert_usage(&out, "--scenario: unknown scenario \"nope\"");
    assert!(stderr.contains("one-task-bare-scripts"), "{stderr}");
}

/// The side-by-side script refuses bad arguments, naming them, before it builds or starts
/// anything.
#[test]
fn bench_vs_peers_refuses_bad_arguments_before_starting_anything() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-vs-peers.sh");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(args).env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    assert_usage(&run(&["nope"], &[]), "usage:");
    assert_usage(
        &run(&["locks", "0"], &[]),
        "ROUNDS: expected a positive integer, got \"0\"",
    );
    assert_usage(
        &run(&["locks", "2x"], &[]),
        "ROUNDS: expected a positive integer, got \"2x\"",
    );
    assert_usage(
        &run(&["locks", "1"], &[("PLACE", "everywhere")]),
        "PLACE: expected shared, same or split, got \"everywhere\"",
    );
    for n in ["0", "20k", "-5", "010"] {
        assert_usage(
            &run(&["locks", "1"], &[("N", n)]),
            &format!("N: expected a positive integer (the workload's size), got \"{n}\""),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    assert_usage(
        &run(
            &["locks", "1"],
            &[("PEERS_DIR", dir.path().to_str().unwrap())],
        ),
        "no run.sh in",
    );
}

#[test]
fn status_refuses_a_url_that_is_no_http_url() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["garbage", "ftp://127.0.0.1:1", "http://"] {
        let out = botfleet(dir.path(), &["status", "--url", url], &[]);
        assert_usage(&out, "--url: expected the daemon's base URL");
    }
}

#[test]
fn history_refuses_limit_0_and_a_read_creates_no_archive() {
    let dir = tempfile::tempdir().unwrap();
    let file = run_settings(dir.path(), "127.0.0.1:0", "");
    let archive = dir.path().join("data/history/history.sqlite3");
    let out = botfleet(
        dir.path(),
        &["history", "tasks", "--limit", "0", "-c", &file],
        &[],
    );
    assert_usage(&out, "--limit");
    assert!(!archive.exists());

    // A read of an archive nobody wrote: an empty page, and still no file or directory.
    let out = botfleet(
        dir.path(),
        &["history", "tasks", "--json", "-c", &file],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["items"], serde_json::json!([]));
    assert!(stderr.contains("no history archive"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "a read created data/");
}

/// `botfleet run` on its in-memory store, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let file = run_settings(dir.path(), &format!("127.0.0.1:{port}"), extra);
        let child = Command::new(env!("CARGO_BIN_EXE_botfleet"))
            .args(["run", "--config", &file])
            .current_dir(dir.path())
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            port,
            _dir: dir,
        };
        poll_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .expect("the daemon listens");
        daemon
    }

    /// Sends `request` on a connection of its own and reads the whole answer (the request
    /// asks the server to close).
    fn exchange(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8(answer).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_of(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or_default()
}

#[test]
fn the_bearer_header_is_parsed_strictly() {
    let daemon = Daemon::start("token = \"s3cret\"\n");
    let stop = |authorization: &str| {
        daemon.exchange(&format!(
            "POST /api/bot/stop HTTP/1.1\r\nHost: botfleet\r\nConnection: close\r\n\
             Authorization: {authorization}\r\nContent-Length: 0\r\n\r\n"
        ))
    };
    for refused in [
        "Bearer  s3cret",
        "Bearer s3cret x",
        "Bearer\ts3cret",
        "Bearer s3cret,",
        "Bearers3cret",
        "Basic s3cret",
    ] {
        let answer = stop(refused);
        assert_eq!(status_of(&answer), "401", "{refused:?}: {answer}");
        assert!(answer.contains("Bearer TOKEN"), "{answer}");
    }
    // The right token passes the check (and the bot, not running, has nothing to stop). The
    // scheme is case-insensitive, and whitespace at the end of a header line is not part of
    // its value (RFC 9110): the server receives "Bearer s3cret".
    for accepted in ["Bearer s3cret", "bearer s3cret", "Bearer s3cret "] {
        let answer = stop(accepted);
        assert_eq!(status_of(&answer), "409", "{accepted:?}: {answer}");
    }
}

#[test]
fn head_health_answers_like_get_without_a_body() {
    let daemon = Daemon::start("");
    let get =
        daemon.exchange("GET /health HTTP/1.1\r\nHost: botfleet\r\nConnection: close\r\n\r\n");
    let head =
        daemon.exchange("HEAD /health HTTP/1.1\r\nHost: botfleet\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&get), "200", "{get}");
    assert_eq!(status_of(&head), "200", "{head}");
    let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
    let (head_head, head_body) = head.split_once("\r\n\r\n").unwrap();
    assert!(get_body.contains("\"status\":\"ok\""), "{get}");
    assert_eq!(head_body, "", "HEAD has no body: {head}");
    let content_type = |h: &str| {
        h.lines()
            .find(|l| l.to_lowercase().starts_with("content-type:"))
            .map(str::to_owned)
    };
    assert_eq!(content_type(get_head), content_type(head_head));
    assert!(content_type(head_head).is_some(), "{head}");
}
