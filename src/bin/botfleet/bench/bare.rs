//! A bare Redis connection for `bench locks --scenario one-task-bare-socket`: one TCP socket,
//! RESP2 written and read in the caller's task, one command at a time, with none of a Redis
//! client's machinery (no router task, pool or reconnection; one timeout per command, so that
//! a frozen server fails the benchmark instead of hanging it). What the lock
//! scenarios cost beyond it is what the client stack costs; what it costs beyond plain
//! commands is what the scripts cost.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Duration};

/// Longest reply line or bulk string read (the benchmark's replies are a few bytes).
const MAX_REPLY: usize = 1 << 20;

/// One reply, as far as the benchmark needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareReply {
    /// `+OK` and other simple strings.
    Status(String),
    /// `:N`.
    Int(i64),
    /// `$N` (`None` for `$-1`).
    Bulk(Option<Vec<u8>>),
}

/// A plain `redis://` server, connected and authenticated.
pub struct BareConnection {
    stream: BufReader<TcpStream>,
    /// The longest a connection attempt or a command (write and reply) may take.
    patience: Duration,
    out: Vec<u8>,
    line: Vec<u8>,
}

/// Why the bare connection cannot reach the server of `url`, if it cannot: it speaks plain
/// `redis://` only (no TLS, Sentinel or Cluster).
pub fn unsupported(url: &str) -> Option<String> {
    match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "redis" => None,
        Ok(parsed) => Some(format!(
            "a bare socket speaks plain redis:// only, not {}://",
            parsed.scheme()
        )),
        Err(e) => Some(e.to_string()),
    }
}

impl BareConnection {
    /// Connects to `url` (a plain `redis://` URL, see [`unsupported`]), and authenticates and
    /// selects its database as the URL says. Connecting, and then each command, fails after
    /// `patience`.
    pub async fn connect(url: &str, patience: Duration) -> Result<Self, String> {
        if let Some(reason) = unsupported(url) {
            return Err(reason);
        }
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = parsed.host_str().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port().unwrap_or(6379);
        let stream = timeout(patience, TcpStream::connect((host, port)))
            .await
            .map_err(|_| format!("connecting to {host}:{port}: no answer within {patience:?}"))?
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut connection = Self {
            stream: BufReader::new(stream),
            patience,
            out: Vec::with_capacity(512),
            line: Vec::with_capacity(64),
        };
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|t| t.into_owned())
                .map_err(|_| "the URL's credentials are not percent-encoded UTF-8".to_string())
        };
        let user = decode(parsed.username())?;
        if let Some(password) = parsed.password() {
            let password = decode(password)?;
            let auth = if user.is_empty() {
                vec!["AUTH".to_string(), password]
            } else {
                vec!["AUTH".to_string(), user, password]
            };
            connection.call(&auth).await?;
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.trim().is_empty() && db != "0" {
            connection.call(&["SELECT", db]).await?;
        }
        Ok(connection)
    }

    /// Sends `args` as one command and reads its reply; an error reply is an `Err` quoting it,
    /// and so is no reply within the connection's patience (the connection is then out of
    /// step with its replies: the benchmark ends).
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<BareReply, String> {
        let patience = self.patience;
        timeout(patience, self.send(args))
            .await
            .map_err(|_| format!("no reply within {patience:?}"))?
    }

    async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<BareReply, String> {
        // Encoded into the connection's buffer with no allocation per command: the scenario
        // measures how little a client can spend per call.
        use std::io::Write as _;
        self.out.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "*{}\r\n", args.len());
        for arg in args {
            let arg = arg.as_ref();
            let _ = write!(self.out, "${}\r\n", arg.len());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        let stream = self.stream.get_mut();
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("writing to the server: {e}"))?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<BareReply, String> {
        self.line.clear();
        let read = (&mut self.stream)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut self.line)
            .await
            .map_err(|e| format!("reading from the server: {e}"))?;
        let line = match self.line.strip_suffix(b"\r\n") {
            Some(line) if read > 2 => line,
            _ => {
                return Err(format!(
                    "the server closed or sent a broken reply ({read} bytes)"
                ))
            }
        };
        let text = String::from_utf8_lossy(&line[1..]).into_owned();
        let number = || {
            text.parse::<i64>()
                .map_err(|_| format!("expected a number in the reply, got {text:?}"))
        };
        match line[0] {
            b'+' => Ok(BareReply::Status(text)),
            b'-' => Err(format!("the server answered an error: {text}")),
            b':' => Ok(BareReply::Int(number()?)),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Ok(BareReply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= MAX_REPLY)
                    .ok_or_else(|| format!("a bulk reply of {len} bytes is too long"))?;
                let mut bulk = vec![0; len + 2];
                self.stream
                    .read_exact(&mut bulk)
                    .await
                    .map_err(|e| format!("reading from the server: {e}"))?;
                if !bulk.ends_with(b"\r\n") {
                    return Err("a bulk reply does not end with CRLF".into());
                }
                bulk.truncate(len);
                Ok(BareReply::Bulk(Some(bulk)))
            }
            other => Err(format!(
                "unexpected reply type {:?} (the benchmark sends no command answered so)",
                other as char
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn only_plain_redis_urls_are_spoken() {
        assert_eq!(unsupported("redis://:pw@127.0.0.1:6390/2"), None);
        for url in [
            "rediss://127.0.0.1:6390",
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=m",
            "redis-cluster://127.0.0.1:7000",
            "not a url",
        ] {
            assert!(unsupported(url).is_some(), "{url}");
        }
    }

    /// What a connection with `patience` makes of the answer of a server to one `PING`: the
    /// server sends `reply` and closes the connection, or, with `None`, never answers and keeps
    /// the connection open until the client closes it.
    async fn ping_a_server(
        reply: Option<&'static [u8]>,
        patience: Duration,
    ) -> Result<BareReply, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut command = [0u8; 14];
            socket.read_exact(&mut command).await.unwrap();
            assert_eq!(&command, b"*1\r\n$4\r\nPING\r\n");
            match reply {
                Some(reply) => socket.write_all(reply).await.unwrap(),
                None => {
                    let _ = socket.read_to_end(&mut Vec::new()).await;
                }
            }
        });
        let url = format!("redis://127.0.0.1:{port}");
        let mut connection = BareConnection::connect(&url, patience).await.unwrap();
        let answer = connection.call(&["PING"]).await;
        drop(connection);
        server.await.unwrap();
        answer
    }

    /// [`ping_a_server`] that answers `reply`.
    async fn answer_to_ping(reply: &'static [u8]) -> Result<BareReply, String> {
        ping_a_server(Some(reply), Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_fails_the_command_in_time() {
        let patience = Duration::from_millis(200);
        let answer = timeout(Duration::from_secs(5), ping_a_server(None, patience))
            .await
            .expect("the command waited far past its patience");
        assert_eq!(answer, Err("no reply within 200ms".to_string()));
    }

    #[tokio::test]
    async fn replies_are_read_and_broken_ones_refused_with_the_cause() {
        assert_eq!(
            answer_to_ping(b"+PONG\r\n").await,
            Ok(BareReply::Status("PONG".into()))
        );
        assert_eq!(answer_to_ping(b":-42\r\n").await, Ok(BareReply::Int(-42)));
        assert_eq!(
            answer_to_ping(b"$3\r\na\nc\r\n").await,
            Ok(BareReply::Bulk(Some(b"a\nc".to_vec())))
        );
        assert_eq!(answer_to_ping(b"$-1\r\n").await, Ok(BareReply::Bulk(None)));
        for (reply, cause) in [
            (
                &b"-NOPERM no\r\n"[..],
                "the server answered an error: NOPERM no",
            ),
            (b"", "the server closed or sent a broken reply"),
            (b":12", "the server closed or sent a broken reply"),
            (b":1x\r\n", "expected a number in the reply, got \"1x\""),
            (b"$5\r\nab", "reading from the server"),
            (b"$2\r\nabcd", "a bulk reply does not end with CRLF"),
            (b"$99999999999\r\n", "too long"),
            (b"*1\r\n:1\r\n", "unexpected reply type '*'"),
        ] {
            let answer = answer_to_ping(reply).await;
            let error = answer.expect_err(&String::from_utf8_lossy(reply));
            assert!(error.contains(cause), "{error:?} for {reply:?}");
        }
    }
}
