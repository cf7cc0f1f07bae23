//! A small real HTTP/1.1 server on a free loopback port, for the shared-data tests and the
//! red/green example: it answers every request with what its handler returns, counts the
//! requests, remembers the last request head, and can go down (the port refuses
//! connections) and come back on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Body (sent as `application/json`).
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl HttpReply {
    /// `200 OK` with a JSON body.
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// An error status with an empty JSON object.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: "{}".into(),
            delay: Duration::ZERO,
        }
    }

    /// The same reply after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Builds the reply to request number N (from 1).
pub type Handler = Arc<dyn Fn(u64) -> HttpReply + Send + Sync>;

struct State {
    handler: Mutex<Handler>,
    requests: AtomicU64,
    last_head: Mutex<Option<String>>,
}

/// The server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl HttpServer {
    /// Starts on a free loopback port, answering with `handler`.
    pub async fn start(handler: impl Fn(u64) -> HttpReply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            handler: Mutex::new(Arc::new(handler)),
            requests: AtomicU64::new(0),
            last_head: Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        Self {
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Requests received so far (also those answered with an error).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The head (request line and headers) of the last request.
    pub fn last_head(&self) -> Option<String> {
        self.state.last_head.lock().clone()
    }

    /// Answers with `handler` from now on.
    pub fn set_handler(&self, handler: impl Fn(u64) -> HttpReply + Send + Sync + 'static) {
        *self.state.handler.lock() = Arc::new(handler);
    }

    /// Stops listening: connections to the port are refused.
    pub fn down(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, state.clone()));
    }
}

async fn answer(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Requests are GETs without a body: the head ends the request.
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
            break;
        }
    }
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    *state.last_head.lock() = Some(String::from_utf8_lossy(&buf).into_owned());
    let handler = state.handler.lock().clone();
    let reply = handler(n);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        reply.status,
        if reply.status < 400 { "OK" } else { "Error" },
        reply.body.len(),
        reply.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One request to `addr` over a raw HTTP/1.0 connection (no client library, nothing kept
/// alive): the status and the body parsed as JSON (`Null` when it is not JSON); `None` when
/// nothing answers.
pub fn raw_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, json) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    ))
}
