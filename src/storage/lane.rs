//! Lock lanes: connections of their own for the lock scripts, written and read on the
//! caller's task.
//!
//! A lock call is a short script whose caller waits for its answer, and on an uncontended
//! lock the wait is all there is to a pair: through the pool a call crosses to the client's
//! connection task, which writes it, and its answer crosses back from the reader, two
//! hand-offs between tasks (often between threads) per round trip. A lane is one plain TCP
//! connection that the caller's task borrows for one call: it writes the command, reads the
//! reply and gives the connection back, with no task in between. `bench locks` measures what
//! that saves (`--lock-connections 0` sends every lock script through the pool).
//!
//! Up to `storage.redis.lock_connections` lanes, each connected when a call finds every
//! connected lane busy (one call at a time needs one), when the deployment is one
//! server reached without TLS and writes wait for no replica: a Cluster, a Sentinel
//! deployment, `rediss://` or `wait_replicas` keep the pool, whose client follows the topology
//! and waits as asked. A call finds a free lane or goes through the pool: it never waits for a
//! lane. Scripts that run as a native command on the server go through the pool too.
//!
//! Failure is the pool's: no reply within `storage.redis.timeout_ms`, a lost connection or an
//! outage reply (`LOADING`, `BUSY`, ...) is an outage, and the connection is closed (its reply
//! is out of step). So is a server that does not answer a new lane's connection within
//! `connect_timeout_ms` (or `timeout_ms`, when longer). A connection that has sat idle may have died with its server (a restart):
//! a call on it that meets a closed socket before any byte of a reply is sent again once on a
//! new connection, which is safe for the lock scripts (an acquisition sent twice is answered
//! as once; a release or an extension is a compare on the token). A lane whose connection is
//! refused (a server down, a refused AUTH, `maxclients`) leaves its call to the pool, which
//! tells an outage from an error; the lanes then stay unused for `reconnect_max_ms`, and say
//! so once in the log. A call dropped half-way closes its connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Id as RuntimeId;
use tokio::sync::{Mutex, MutexGuard};

use super::op::{Reply, ScriptRef};

/// The name a lane's connection gives itself (`CLIENT SETNAME`): `CLIENT LIST` tells the lock
/// lanes from the pool.
pub const LANE_CLIENT_NAME: &str = "botfleet-locks";

/// Longest reply a lane reads (lock scripts answer integers or arrays of them).
const MAX_REPLY: usize = 4 << 20;

/// Deepest nesting of arrays in a reply.
const MAX_DEPTH: usize = 8;

/// Where and how the lanes connect.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: u8,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: never shown.
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The lock lanes of one storage handle.
pub(super) struct Lanes {
    target: Target,
    /// `storage.redis.timeout_ms`: the longest a call may take, a resend included.
    timeout: Duration,
    /// `storage.redis.connect_timeout_ms`.
    connect_timeout: Duration,
    /// How long the lanes stay unused after a failed connection (`reconnect_max_ms`).
    pause: Duration,
    lanes: Box<[Mutex<Option<Connection>>]>,
    /// Milliseconds since `epoch` before which no lane connects again (0: any time).
    paused_until_ms: AtomicU64,
    epoch: Instant,
    /// The last connection attempt failed (logged once per run of failures).
    failing: AtomicBool,
    /// Calls the lanes served.
    calls: AtomicU64,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("target", &self.target)
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

/// Why a lane call failed; the Redis backend maps it to its own failures.
#[derive(Debug)]
pub(super) enum LaneFailure {
    /// No reply in time, or the connection failed: an outage.
    Lost(String),
    /// The server answered an error (its text, code first).
    Refused(String),
}

/// Whether an error reply says the script is not in the server's cache.
fn is_noscript(text: &str) -> bool {
    text.split_whitespace().next() == Some("NOSCRIPT")
}

/// Why a lane could not connect.
enum Unconnected {
    /// Nothing answered in time (a frozen or unreachable server).
    Silent(String),
    /// The connection or a set-up command was refused.
    Refused(String),
}

impl Unconnected {
    fn reason(self) -> String {
        match self {
            Unconnected::Silent(reason) | Unconnected::Refused(reason) => reason,
        }
    }
}

/// Why a call on a connection failed.
enum Broken {
    /// The server answered an error.
    Reply(String),
    /// The connection failed; `resendable` when it closed before any byte of the reply came,
    /// as a connection whose server died while it sat idle does.
    Io { reason: String, resendable: bool },
}

impl Lanes {
    /// `count` lanes to `target` (none are connected yet).
    pub(super) fn new(
        target: Target,
        count: usize,
        timeout: Duration,
        connect_timeout: Duration,
        pause: Duration,
    ) -> Self {
        Self {
            target,
            timeout,
            connect_timeout,
            pause,
            lanes: (0..count).map(|_| Mutex::new(None)).collect(),
            paused_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        }
    }

    /// Calls the lanes served.
    pub(super) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Runs `script` on a free lane: `None` when no lane is free or none can connect now (the
    /// caller uses the pool), else the call's outcome.
    pub(super) async fn eval(
        &self,
        script: &ScriptRef,
        keys: &[&str],
        args: &[&str],
    ) -> Option<Result<Reply, LaneFailure>> {
        let here = tokio::runtime::Handle::try_current().ok()?.id();
        let mut lane = self.free_lane(here)?;
        // Out of its lane while in use: a call dropped half-way drops (closes) it. A
        // connection of another runtime is closed: its socket is driven by that runtime,
        // which may be gone (or not running this task's I/O).
        let idle = lane.take().filter(|connection| connection.runtime == here);
        if idle.is_none() && self.paused() {
            return None;
        }
        let fresh = idle.is_none();
        let connection = match idle {
            Some(connection) => connection,
            None => match self.connect().await {
                Ok(connection) => connection,
                // No answer at all: an outage, as the pool would find it.
                Err(Unconnected::Silent(reason)) => {
                    self.pause_after(&reason);
                    return Some(Err(LaneFailure::Lost(reason)));
                }
                // Refused (a down server, a refused AUTH, `maxclients`): the pool decides.
                Err(Unconnected::Refused(reason)) => {
                    self.pause_after(&reason);
                    return None;
                }
            },
        };
        let outcome = tokio::time::timeout(
            self.timeout,
            self.call(connection, fresh, script, keys, args),
        )
        .await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = match outcome {
            Ok(Ok((connection, reply))) => {
                *lane = Some(connection);
                Ok(reply)
            }
            Ok(Err((kept, failure))) => {
                *lane = kept;
                Err(failure)
            }
            Err(_) => Err(LaneFailure::Lost(format!(
                "lock call: no reply from {}:{} within {:?}",
                self.target.host, self.target.port, self.timeout
            ))),
        };
        Some(outcome)
    }

    /// A free lane: one connected on the caller's runtime (`here`) if there is one, else an
    /// unconnected one, else one connected on another runtime; `None` when every lane is in
    /// use.
    fn free_lane(&self, here: RuntimeId) -> Option<MutexGuard<'_, Option<Connection>>> {
        // The best free lane seen so far, and whether it is unconnected.
        let mut best: Option<(MutexGuard<'_, Option<Connection>>, bool)> = None;
        for lane in self.lanes.iter() {
            let Ok(guard) = lane.try_lock() else {
                continue;
            };
            match guard.as_ref() {
                Some(connection) if connection.runtime == here => return Some(guard),
                None if !best.as_ref().is_some_and(|(_, empty)| *empty) => {
                    best = Some((guard, true))
                }
                Some(_) if best.is_none() => best = Some((guard, false)),
                _ => {}
            }
        }
        best.map(|(guard, _)| guard)
    }

    /// One `EVALSHA` on `connection` (loading the script on `NOSCRIPT`), sent again once on a
    /// new connection when a connection that sat idle turns out closed. Answers the
    /// connection to keep with the reply, or, with the failure, the connection if it is still
    /// in step.
    async fn call(
        &self,
        mut current: Connection,
        fresh: bool,
        script: &ScriptRef,
        keys: &[&str],
        args: &[&str],
    ) -> Result<(Connection, Reply), (Option<Connection>, LaneFailure)> {
        let numkeys = keys.len().to_string();
        let head = ["EVALSHA", &*script.sha, numkeys.as_str()];
        let command = || head.iter().chain(keys).chain(args).map(|s| s.as_bytes());
        let mut resent = fresh;
        let mut loaded = false;
        loop {
            match current.call(command()).await {
                Ok(reply) => return Ok((current, reply)),
                Err(Broken::Io { resendable, .. }) if resendable && !resent => {
                    resent = true;
                    current = self.connect().await.map_err(|unconnected| {
                        let reason = unconnected.reason();
                        self.pause_after(&reason);
                        (None, LaneFailure::Lost(reason))
                    })?;
                }
                Err(Broken::Io { reason, .. }) => return Err((None, LaneFailure::Lost(reason))),
                Err(Broken::Reply(text)) if is_noscript(&text) && !loaded => {
                    loaded = true;
                    let load = ["SCRIPT", "LOAD", &*script.lua].map(str::as_bytes);
                    match current.call(load.into_iter()).await {
                        Ok(_) => {}
                        Err(Broken::Reply(text)) => {
                            return Err((Some(current), LaneFailure::Refused(text)))
                        }
                        Err(Broken::Io { reason, .. }) => {
                            return Err((None, LaneFailure::Lost(reason)))
                        }
                    }
                }
                Err(Broken::Reply(text)) => {
                    return Err((Some(current), LaneFailure::Refused(text)))
                }
            }
        }
    }

    /// A new connection, authenticated, on its database and named [`LANE_CLIENT_NAME`].
    async fn connect(&self) -> Result<Connection, Unconnected> {
        let Target {
            host,
            port,
            username,
            password,
            database,
        } = &self.target;
        let setup = async {
            let stream = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut connection = Connection::new(stream);
            if let Some(password) = password {
                let mut auth = vec!["AUTH"];
                auth.extend(username.as_deref());
                auth.push(password);
                connection.setup("AUTH", auth).await?;
            }
            if *database != 0 {
                let database = database.to_string();
                connection
                    .setup("SELECT", vec!["SELECT", &database])
                    .await?;
            }
            connection
                .setup(
                    "CLIENT SETNAME",
                    vec!["CLIENT", "SETNAME", LANE_CLIENT_NAME],
                )
                .await?;
            Ok(connection)
        };
        // A connection made for a call is part of it: no more patience than either bound
        // allows (a connection attempt's, or the call's when that is longer, so that a
        // slow accept on a loaded server is not taken for an outage the pool would not see).
        let patience = self.connect_timeout.max(self.timeout);
        match tokio::time::timeout(patience, setup).await {
            Ok(result) => {
                if result.is_ok() && self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        host = %host, port,
                        "lock lane connected again: lock scripts use their own connections"
                    );
                }
                result.map_err(Unconnected::Refused)
            }
            Err(_) => Err(Unconnected::Silent(format!(
                "connecting to {host}:{port}: no answer within {:?}",
                patience
            ))),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn paused(&self) -> bool {
        self.now_ms() < self.paused_until_ms.load(Ordering::Relaxed)
    }

    /// A connection failed: the lanes stay unused for [`Lanes::pause`].
    fn pause_after(&self, reason: &str) {
        let until = self.now_ms() + self.pause.as_millis() as u64;
        self.paused_until_ms.store(until.max(1), Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                "lock lane cannot connect: lock scripts go through the pool meanwhile"
            );
        }
    }
}

/// One lane's connection: one command at a time.
struct Connection {
    stream: TcpStream,
    /// The runtime whose I/O driver serves the socket.
    runtime: RuntimeId,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    /// A connection on `stream`, made on the current runtime.
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            runtime: tokio::runtime::Handle::current().id(),
            out: Vec::with_capacity(256),
            buf: Vec::with_capacity(64),
        }
    }

    /// A set-up command that must not fail: its error names it.
    async fn setup(&mut self, what: &str, args: Vec<&str>) -> Result<(), String> {
        match self.call(args.into_iter().map(str::as_bytes)).await {
            Ok(_) => Ok(()),
            Err(Broken::Reply(text)) => Err(format!("{what} refused: {text}")),
            Err(Broken::Io { reason, .. }) => Err(format!("{what}: {reason}")),
        }
    }

    /// Sends one command and reads its reply.
    async fn call<'a>(
        &mut self,
        args: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Result<Reply, Broken> {
        let stream = &mut self.stream;
        self.out.clear();
        encode(&mut self.out, args);
        let io = |e: std::io::Error, got_bytes: bool| {
            let resendable = !got_bytes
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                );
            Broken::Io {
                reason: format!("lock lane: {e}"),
                resendable,
            }
        };
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| io(e, false))?;
        self.buf.clear();
        loop {
            match parse(&self.buf, 0, 0) {
                Ok(Some((frame, _))) => {
                    return match frame {
                        Frame::Reply(reply) => Ok(reply),
                        Frame::Error(text) => Err(Broken::Reply(text)),
                    }
                }
                Ok(None) if self.buf.len() > MAX_REPLY => {
                    return Err(Broken::Io {
                        reason: format!("lock lane: a reply longer than {MAX_REPLY} bytes"),
                        resendable: false,
                    })
                }
                Ok(None) => {}
                Err(reason) => {
                    return Err(Broken::Io {
                        reason: format!("lock lane: a broken reply ({reason})"),
                        resendable: false,
                    })
                }
            }
            let got_bytes = !self.buf.is_empty();
            let read = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io(e, got_bytes))?;
            if read == 0 {
                return Err(io(
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                    got_bytes,
                ));
            }
        }
    }
}

/// `args` as one RESP command into `out`. The lengths are written by hand: through
/// `write!` they were a fifth of a lock pair's instructions.
fn encode<'a>(out: &mut Vec<u8>, args: impl Iterator<Item = &'a [u8]> + Clone) {
    let (count, bytes) = args
        .clone()
        .fold((0, 0), |(count, bytes), arg| (count + 1, bytes + arg.len()));
    out.reserve(bytes + 16 * (count + 1));
    push_header(out, b'*', count);
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// `kind`, `n` in decimal, CRLF.
fn push_header(out: &mut Vec<u8>, kind: u8, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// A RESP2 value, or an error reply.
#[derive(Debug, PartialEq)]
enum Frame {
    Reply(Reply),
    Error(String),
}

/// The frame starting at `at` in `buf` and the offset past it; `None` while it is incomplete.
fn parse(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Frame, usize)>, String> {
    let Some(end) = buf[at.min(buf.len())..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| at + p)
    else {
        return Ok(None);
    };
    if end == at {
        return Err("an empty line".into());
    }
    let text = std::str::from_utf8(&buf[at + 1..end]).map_err(|_| "a line not in UTF-8")?;
    let next = end + 2;
    let number = || {
        text.parse::<i64>()
            .map_err(|_| format!("expected a number, got {text:?}"))
    };
    let frame = match buf[at] {
        b'+' => Frame::Reply(Reply::Str(text.to_string())),
        b'-' => Frame::Error(text.to_string()),
        b':' => Frame::Reply(Reply::Int(number()?)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Frame::Reply(Reply::Nil), next)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_REPLY)
                .ok_or_else(|| format!("a bulk string of {len} bytes"))?;
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err("a bulk string not ended by CRLF".into());
            }
            let value = String::from_utf8_lossy(&buf[next..next + len]).into_owned();
            return Ok(Some((Frame::Reply(Reply::Str(value)), next + len + 2)));
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Frame::Reply(Reply::Nil), next)));
            }
            if depth >= MAX_DEPTH {
                return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
            }
            // Each element takes 3 bytes at least: a longer count than the reply can hold
            // is refused before anything is allocated for it.
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_REPLY / 3)
                .ok_or_else(|| format!("an array of {len} elements"))?;
            let mut items = Vec::with_capacity(len.min(1024));
            // An error inside the array (a script may return one) fails the call, once the
            // whole reply is read: the connection stays in step.
            let mut error = None;
            let mut pos = next;
            for _ in 0..len {
                let Some((frame, after)) = parse(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                pos = after;
                match frame {
                    Frame::Reply(item) => items.push(item),
                    Frame::Error(text) => {
                        error.get_or_insert(text);
                    }
                }
            }
            let frame = match error {
                Some(text) => Frame::Error(text),
                None => Frame::Reply(Reply::Array(items)),
            };
            return Ok(Some((frame, pos)));
        }
        other => return Err(format!("an unknown reply type {:?}", other as char)),
    };
    Ok(Some((frame, next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Result<Option<(Frame, usize)>, String> {
        parse(bytes, 0, 0)
    }

    #[test]
    fn replies_are_read_whole_with_where_they_end() {
        let cases: [(&[u8], Frame); 8] = [
            (b":42\r\n", Frame::Reply(Reply::Int(42))),
            (b":-7\r\n", Frame::Reply(Reply::Int(-7))),
            (b"+OK\r\n", Frame::Reply(Reply::Str("OK".into()))),
            (b"$3\r\na\nc\r\n", Frame::Reply(Reply::Str("a\nc".into()))),
            (b"$-1\r\n", Frame::Reply(Reply::Nil)),
            (b"*-1\r\n", Frame::Reply(Reply::Nil)),
            (
                b"*3\r\n:1\r\n*1\r\n$0\r\n\r\n:0\r\n",
                Frame::Reply(Reply::Array(vec![
                    Reply::Int(1),
                    Reply::Array(vec![Reply::Str(String::new())]),
                    Reply::Int(0),
                ])),
            ),
            (
                b"-NOSCRIPT No matching script\r\n",
                Frame::Error("NOSCRIPT No matching script".into()),
            ),
        ];
        for (bytes, frame) in cases {
            assert_eq!(whole(bytes), Ok(Some((frame, bytes.len()))), "{bytes:?}");
        }
        // An error inside an array fails the call once the whole array is read.
        let bytes = b"*2\r\n-ERR first\r\n:5\r\n";
        assert_eq!(
            whole(bytes),
            Ok(Some((Frame::Error("ERR first".into()), bytes.len())))
        );
    }

    #[test]
    fn commands_are_encoded_as_resp_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        let long = "x".repeat(1234);
        let args = ["EVALSHA", "", "10", long.as_str()];
        encode(&mut out, args.iter().map(|a| a.as_bytes()));
        let expected = format!("*4\r\n$7\r\nEVALSHA\r\n$0\r\n\r\n$2\r\n10\r\n$1234\r\n{long}\r\n");
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        for n in [0, 9, 10, 99, 100, 65_535, usize::MAX] {
            let mut out = Vec::new();
            push_header(&mut out, b':', n);
            assert_eq!(out, format!(":{n}\r\n").into_bytes());
        }
    }

    #[test]
    fn a_reply_cut_anywhere_is_incomplete_not_wrong() {
        let bytes = b"*2\r\n$5\r\nhello\r\n:12\r\n";
        for cut in 0..bytes.len() {
            assert_eq!(whole(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(whole(bytes).unwrap().is_some());
    }

    #[test]
    fn broken_replies_are_refused_with_the_cause() {
        for (bytes, cause) in [
            (&b"\r\n"[..], "an empty line"),
            (b":1x\r\n", "expected a number"),
            (b"$abc\r\n", "expected a number"),
            (b"$3\r\nabcd\r\n", "not ended by CRLF"),
            (b"$99999999999\r\n", "a bulk string of"),
            (b"*99999999999\r\n", "an array of"),
            (b"%1\r\n", "an unknown reply type"),
            (b"+\xff\xfe\r\n", "UTF-8"),
        ] {
            let error = whole(bytes).expect_err(&String::from_utf8_lossy(bytes));
            assert!(error.contains(cause), "{error:?} for {bytes:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        let error = whole(deep.as_bytes()).unwrap_err();
        assert!(error.contains("nested deeper"), "{error}");
        let deepest = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
        assert!(whole(deepest.as_bytes()).unwrap().is_some());
    }
}
