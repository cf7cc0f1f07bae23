//! Tests of the test harness itself (`tests/support`): if these fail, every integration test
//! built on the harness is suspect.

use crate::support;

use std::io::{self, BufReader, Cursor};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::resp::{encode_command, read_value};
use support::{poll_until, poll_until_async, process_is_alive, RedisServer, RespValue};

/// Generous bound for a process to disappear; the poll returns as soon as it has.
const GONE_DEADLINE: Duration = Duration::from_secs(5);

/// Set in the environment of the helper process of `killed_test_process_takes_its_servers_along`.
const HELPER_ENV: &str = "BOTFLEET_HARNESS_ABORT_HELPER";

#[test]
fn start_answers_ping_and_stores_values() {
    let redis = RedisServer::start().expect("start redis-server");
    assert_ne!(redis.port(), 6379, "must never use the shared Redis");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(redis.is_running());
    assert!(process_is_alive(redis.pid()));

    assert_eq!(redis.cmd(&["PING"]), RespValue::Simple("PONG".into()));
    assert!(redis.cmd(&["SET", "greeting", "hello world"]).is_ok());
    assert_eq!(
        redis.cmd(&["GET", "greeting"]),
        RespValue::bulk("hello world")
    );
    assert!(redis.cmd(&["GET", "missing"]).is_nil());
    assert_eq!(redis.cmd(&["RPUSH", "list", "a", "b"]).as_int(), Some(2));
    assert_eq!(
        redis.cmd(&["LRANGE", "list", "0", "-1"]),
        RespValue::Array(vec![RespValue::bulk("a"), RespValue::bulk("b")])
    );
    assert!(redis.cmd(&["NO-SUCH-COMMAND"]).is_error());
}

#[test]
fn a_fresh_server_is_ephemeral_and_isolated() {
    let redis = RedisServer::start().expect("start redis-server");
    assert_eq!(redis.cmd(&["DBSIZE"]).as_int(), Some(0));
    let dir = redis.data_dir();
    assert!(dir.starts_with(std::env::temp_dir()), "{dir:?}");
    let reply = redis.cmd(&["CONFIG", "GET", "dir"]);
    assert_eq!(reply.as_array().and_then(|a| a[1].as_str()), dir.to_str());
    let save = redis.cmd(&["CONFIG", "GET", "save"]);
    assert_eq!(save.as_array().and_then(|a| a[1].as_str()), Some(""));
}

#[test]
fn extra_config_lines_apply() {
    let redis = RedisServer::builder()
        .config("maxmemory 1mb")
        .start()
        .expect("start redis-server");
    let reply = redis.cmd(&["CONFIG", "GET", "maxmemory"]);
    assert_eq!(
        reply.as_array().and_then(|a| a[1].as_str()),
        Some("1048576")
    );
}

#[test]
fn a_bad_config_fails_with_the_log_tail() {
    let error = RedisServer::builder()
        .config("no-such-directive yes")
        .start()
        .expect_err("redis-server must reject an unknown directive");
    let message = error.to_string();
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("no-such-directive"), "{message}");
}

#[test]
fn kill9_makes_the_port_refuse_connections() {
    let mut redis = RedisServer::start().expect("start redis-server");
    let pid = redis.pid();
    redis.kill9();

    assert!(!redis.is_running());
    assert!(!process_is_alive(pid), "kill9 reaps the process");
    let refused = TcpStream::connect_timeout(&redis.addr(), Duration::from_secs(1))
        .expect_err("nothing listens any more");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    assert!(!redis.ping());
    redis.kill9(); // a second kill is a no-op

    redis.restart().expect("restart after kill9");
    assert_ne!(redis.pid(), pid);
    assert!(redis.ping());
}

#[test]
fn freeze_makes_ping_time_out_and_thaw_makes_it_answer() {
    let redis = RedisServer::start().expect("start redis-server");
    redis.freeze();
    assert!(redis.is_frozen());
    assert!(redis.is_running(), "a frozen server still exists");

    let error = redis
        .try_cmd_timeout(&["PING"], Duration::from_millis(200))
        .expect_err("a frozen server answers nothing");
    assert!(
        matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "expected a timeout, got {error:?}"
    );

    redis.thaw();
    assert!(!redis.is_frozen());
    assert_eq!(redis.cmd(&["PING"]), RespValue::Simple("PONG".into()));
}

#[test]
fn restart_with_persistence_keeps_keys() {
    let mut redis = RedisServer::builder()
        .persistence(true)
        .start()
        .expect("start redis-server");
    let port = redis.port();
    assert!(redis.cmd(&["SET", "kept", "1"]).is_ok());

    redis.restart().expect("restart");
    assert_eq!(redis.port(), port, "same port across restarts");
    assert_eq!(redis.cmd(&["GET", "kept"]), RespValue::bulk("1"));

    // A crash while frozen loses nothing either: appendfsync always.
    assert!(redis.cmd(&["SET", "also", "2"]).is_ok());
    redis.freeze();
    redis.restart().expect("restart a frozen server");
    assert_eq!(redis.cmd(&["GET", "also"]), RespValue::bulk("2"));
}

#[test]
fn restart_empty_wipes_the_data() {
    let mut redis = RedisServer::builder()
        .persistence(true)
        .start()
        .expect("start redis-server");
    assert!(redis.cmd(&["SET", "doomed", "1"]).is_ok());

    redis.restart_empty().expect("restart_empty");
    assert!(redis.cmd(&["GET", "doomed"]).is_nil());
    assert_eq!(redis.cmd(&["DBSIZE"]).as_int(), Some(0));
}

#[test]
fn restart_without_persistence_starts_empty() {
    let mut redis = RedisServer::start().expect("start redis-server");
    assert!(redis.cmd(&["SET", "volatile", "1"]).is_ok());
    redis.restart().expect("restart");
    assert!(redis.cmd(&["GET", "volatile"]).is_nil());
}

#[test]
fn drop_leaves_no_process() {
    let redis = RedisServer::start().expect("start redis-server");
    let pid = redis.pid();
    let dir = redis.data_dir();
    drop(redis);
    assert!(!process_is_alive(pid), "drop kills and reaps redis-server");
    assert!(!dir.exists(), "drop removes the temporary directory");

    let frozen = RedisServer::start().expect("start redis-server");
    let pid = frozen.pid();
    frozen.freeze();
    drop(frozen);
    assert!(
        !process_is_alive(pid),
        "drop kills a frozen redis-server too"
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let pid = AtomicU32::new(0);
    let outcome = std::panic::catch_unwind(|| {
        let redis = RedisServer::start().expect("start redis-server");
        pid.store(redis.pid(), Ordering::SeqCst);
        panic!("a failing test (expected by a_panicking_test_still_cleans_up)");
    });
    assert!(outcome.is_err());
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0);
    assert!(!process_is_alive(pid), "unwinding drops the server");
}

/// The helper half of `killed_test_process_takes_its_servers_along`; does nothing unless that
/// test runs it in a child process.
#[test]
#[ignore = "helper: run by killed_test_process_takes_its_servers_along"]
fn helper_killed_while_holding_a_server() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let redis = RedisServer::start().expect("start redis-server");
    println!("REDIS_PID={}", redis.pid());
    // Die as nextest kills a hung test: no unwinding, no Drop.
    // SAFETY: signalling our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL ends the process");
}

#[test]
fn killed_test_process_takes_its_servers_along() {
    // Orphans of the helper become our children rather than init's, so this test can reap the
    // server it expects to die instead of leaving a zombie for an init that may not reap.
    // SAFETY: prctl with integer arguments; affects only who adopts orphaned descendants.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        io::Error::last_os_error()
    );

    let output = support::role_command(
        module_path!(),
        "helper_killed_while_holding_a_server",
        HELPER_ENV,
        "1",
    )
    .stderr(Stdio::piped())
    .output()
    .expect("run the helper");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid: libc::pid_t = stdout
        .lines()
        .find_map(|line| line.split_once("REDIS_PID="))
        .and_then(|(_, pid)| pid.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "helper printed no pid; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });

    // SAFETY: waitpid/kill on the orphan this test adopted; `status` is a live local.
    let reaped = |flags| unsafe {
        let mut status = 0;
        libc::waitpid(pid, &mut status, flags) == pid
    };
    let gone = poll_until(GONE_DEADLINE, || reaped(libc::WNOHANG));
    if gone.is_err() {
        // Do not leak it even when the test fails.
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reaped(0);
    }
    gone.unwrap_or_else(|e| panic!("orphaned redis-server {pid} outlived its test: {e}"));
}

#[test]
fn servers_start_in_parallel_on_distinct_ports() {
    const SERVERS: usize = 4;
    let servers: Vec<RedisServer> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..SERVERS)
            .map(|_| scope.spawn(RedisServer::start))
            .collect();
        starts
            .into_iter()
            .map(|start| {
                start
                    .join()
                    .expect("start thread")
                    .expect("start redis-server")
            })
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), SERVERS, "distinct ports: {ports:?}");

    for (i, redis) in servers.iter().enumerate() {
        assert!(redis.cmd(&["SET", "owner", &i.to_string()]).is_ok());
    }
    for (i, redis) in servers.iter().enumerate() {
        assert_eq!(redis.cmd(&["GET", "owner"]), RespValue::bulk(i.to_string()));
    }
}

#[test]
fn the_port_of_a_dead_server_stays_reserved() {
    let mut redis = RedisServer::start().expect("start redis-server");
    redis.kill9();
    // Nobody else is handed the port while its server is down...
    for _ in 0..200 {
        assert_ne!(support::free_port(), redis.port());
    }
    // ...so the restart gets it back.
    redis.restart().expect("restart");
    assert!(redis.ping());
}

#[test]
fn poll_until_reports_success_and_timeout() {
    let mut calls = 0;
    let took = poll_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    })
    .expect("true on the third call");
    assert_eq!(calls, 3);
    assert!(took < Duration::from_secs(5));

    let deadline = Duration::from_millis(50);
    let timed_out = poll_until(deadline, || false).expect_err("never true");
    assert!(timed_out.elapsed >= deadline);
    assert_eq!(timed_out.deadline, deadline);
    assert!(timed_out.to_string().contains("still false"));
}

#[tokio::test]
async fn poll_until_async_reports_success_and_timeout() {
    let started = std::time::Instant::now();
    let waited = Duration::from_millis(30);
    poll_until_async(Duration::from_secs(5), || async {
        started.elapsed() >= waited
    })
    .await
    .expect("true after 30 ms");

    let deadline = Duration::from_millis(50);
    let timed_out = poll_until_async(deadline, || async { false })
        .await
        .expect_err("never true");
    assert!(timed_out.elapsed >= deadline);
}

#[test]
fn resp_commands_are_encoded_as_arrays_of_bulk_strings() {
    assert_eq!(
        encode_command(&["SET", "k", "é"]),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n".to_vec()
    );
}

#[test]
fn resp_replies_of_every_type_parse() {
    let parse = |wire: &[u8]| read_value(&mut BufReader::new(Cursor::new(wire.to_vec())));
    assert_eq!(parse(b"+OK\r\n").unwrap(), RespValue::Simple("OK".into()));
    assert_eq!(
        parse(b"-ERR wrong\r\n").unwrap(),
        RespValue::Error("ERR wrong".into())
    );
    assert_eq!(parse(b":-42\r\n").unwrap(), RespValue::Integer(-42));
    assert_eq!(
        parse(b"$5\r\na\r\nbc\r\n").unwrap(),
        RespValue::bulk("a\r\nbc")
    );
    assert_eq!(parse(b"$0\r\n\r\n").unwrap(), RespValue::bulk(""));
    assert_eq!(parse(b"$-1\r\n").unwrap(), RespValue::Nil);
    assert_eq!(parse(b"*-1\r\n").unwrap(), RespValue::Nil);
    assert_eq!(parse(b"*0\r\n").unwrap(), RespValue::Array(vec![]));
    assert_eq!(
        parse(b"*2\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n").unwrap(),
        RespValue::Array(vec![
            RespValue::Integer(1),
            RespValue::Array(vec![RespValue::bulk("x"), RespValue::Nil]),
        ])
    );

    for bad in [
        &b""[..],
        b"+OK",
        b"?1\r\n",
        b":x\r\n",
        b"$-2\r\n",
        b"$3\r\nab\r\n",
    ] {
        assert!(
            parse(bad).is_err(),
            "{:?} must not parse",
            String::from_utf8_lossy(bad)
        );
    }
}
