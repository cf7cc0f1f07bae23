//! The HTTP server's bounds over real sockets: request bodies that stall (chunked and
//! `Content-Length`, with and without the token) are answered and their connections closed
//! within `api.body_timeout_ms`; a refused request is closed without its body being read; and
//! `/health` answers while a flood of stalled bodies holds every connection `api.max_connections`
//! allows. The fleet runs on its in-memory store: these bounds are the HTTP server's alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::http::HttpApi;
use botfleet::settings::{ApiSettings, Secret, Settings};
use botfleet::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::poll_until_async;

const TOKEN: &str = "s3cret-token";

/// Time a refused connection stays open for the client to read the answer (the server's
/// linger), plus room for a loaded machine.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

async fn fleet() -> Fleet {
    let mut s = Settings::default();
    s.storage.redis.enabled = false;
    s.api.bind = "127.0.0.1:0".into();
    Fleet::start(s).await.unwrap()
}

fn api(body_timeout_ms: u64, max_connections: usize) -> ApiSettings {
    ApiSettings {
        bind: "127.0.0.1:0".into(),
        token: Secret::new(TOKEN),
        body_limit_bytes: 1_024,
        body_timeout_ms,
        max_connections,
        ..ApiSettings::default()
    }
}

/// How a stalled request is framed.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// `Transfer-Encoding: chunked`, one chunk of five bytes announced, two sent.
    Chunked,
    /// `Content-Length: 100`, five bytes sent.
    Sized,
    /// Chunked, a first chunk larger than `api.body_limit_bytes`, then nothing.
    ChunkedTooLarge,
}

/// The head and the first bytes of a POST whose body then stalls.
fn stalled_request(stall: Stall, token: bool) -> Vec<u8> {
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    let (framing, start) = match stall {
        Stall::Chunked => ("Transfer-Encoding: chunked", "5\r\n{\"".to_string()),
        Stall::Sized => ("Content-Length: 100", "{\"typ".to_string()),
        Stall::ChunkedTooLarge => (
            "Transfer-Encoding: chunked",
            format!("800\r\n{}\r\n", "x".repeat(0x800)),
        ),
    };
    format!(
        "POST /api/bot/tasks/add HTTP/1.1\r\nHost: botfleet\r\nContent-Type: application/json\r\n{auth}{framing}\r\n\r\n{start}"
    )
    .into_bytes()
}

/// What the server did with a stalled request: its answer, and when it closed the connection.
#[derive(Debug)]
struct Outcome {
    /// The answer's head (status line and headers), lower-cased.
    head: String,
    /// From the request's last byte sent to the server's close; `None` if still open at the
    /// deadline.
    closed_after: Option<Duration>,
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        self.head.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Sends a stalled request and reads until the server closes, or `deadline`.
async fn stalled(addr: SocketAddr, stall: Stall, token: bool, deadline: Duration) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&stalled_request(stall, token))
        .await
        .unwrap();
    let sent = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        let left = deadline.saturating_sub(sent.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(sent.elapsed()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    Outcome { head, closed_after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_answered_and_closed_within_the_body_timeout() {
    let fleet = fleet().await;
    let body_timeout = Duration::from_millis(4_000);
    let http = HttpApi::builder(fleet.clone())
        .settings(api(body_timeout.as_millis() as u64, 64))
        .start()
        .unwrap();
    let addr = http.local_addr();
    let within = body_timeout + CLOSE_SLACK;
    let cases = [
        (Stall::Chunked, false, 401),
        (Stall::Sized, false, 401),
        (Stall::Chunked, true, 408),
        (Stall::Sized, true, 408),
        (Stall::ChunkedTooLarge, true, 413),
    ];
    let outcomes = futures::future::join_all(
        cases
            .iter()
            .map(|&(stall, token, _)| stalled(addr, stall, token, within + within)),
    )
    .await;
    for ((stall, token, status), outcome) in cases.iter().zip(&outcomes) {
        let case = format!("{stall:?}, token {token}: {outcome:?}");
        assert_eq!(outcome.status(), Some(*status), "{case}");
        assert!(outcome.head.contains("connection: close"), "{case}");
        let closed = outcome
            .closed_after
            .unwrap_or_else(|| panic!("still open: {case}"));
        assert!(closed <= within, "closed after {closed:?}: {case}");
    }
    // Refusals do not wait for the body's deadline; the others wait for it.
    for (i, outcome) in outcomes.iter().enumerate() {
        let closed = outcome.closed_after.unwrap();
        if matches!(outcome.status(), Some(408)) {
            assert!(closed >= body_timeout, "{i}: {outcome:?}");
        } else {
            assert!(closed < body_timeout, "{i}: {outcome:?}");
        }
    }
    // A full read of one 408 names the setting.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&stalled_request(Stall::Sized, true))
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(within + within, stream.read_to_string(&mut text))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(text.contains("api.body_timeout_ms"), "{text}");

    // The server still serves whole requests, on a kept-alive connection.
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let response = client
            .post(format!("http://{addr}/api/bot/tasks/add"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"type": "login"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_ne!(
            response
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap()),
            Some("close")
        );
    }
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_during_a_flood_of_stalled_bodies() {
    const FLOOD: usize = 200;
    const MAX: usize = 8;
    let fleet = fleet().await;
    let body_timeout = Duration::from_secs(20);
    let http = HttpApi::builder(fleet.clone())
        .settings(api(body_timeout.as_millis() as u64, MAX))
        .start()
        .unwrap();
    let addr = http.local_addr();

    // Half authenticated (held until the body's deadline when admitted), half not (refused).
    let closed = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let closed = closed.clone();
            let stall = if i % 2 == 0 {
                Stall::Sized
            } else {
                Stall::Chunked
            };
            tokio::spawn(async move {
                let outcome = stalled(addr, stall, i % 3 != 0, body_timeout * 3).await;
                closed.fetch_add(1, Ordering::Relaxed);
                outcome
            })
        })
        .collect();

    // While the flood is on, and before any admitted body's deadline: /health answers (GET and
    // HEAD), and any other request is refused because the cap is reached.
    let started = Instant::now();
    // One kept-alive connection, once in: HEAD and the refused request follow on it (a new
    // connection waits in the listen queue behind the flood).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let health = format!("http://{addr}/health");
    poll_until_async(body_timeout / 2, || async {
        matches!(client.get(&health).send().await, Ok(r) if r.status() == 200)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "/health: {e}; {} of {FLOOD} flood connections closed",
            closed.load(Ordering::Relaxed)
        )
    });
    let head = client.head(&health).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let status = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 503, "the cap is reached");
    assert_eq!(status.headers()["connection"], "close");
    assert!(status.text().await.unwrap().contains("api.max_connections"));
    assert!(
        started.elapsed() < body_timeout,
        "the admitted stalled bodies are still held: {:?}",
        started.elapsed()
    );

    // Every flood connection is answered and closed: refused at once past the cap, or at the
    // body's deadline when admitted.
    let mut statuses = std::collections::BTreeMap::new();
    for task in flood {
        let outcome = task.await.unwrap();
        assert!(outcome.closed_after.is_some(), "still open: {outcome:?}");
        *statuses.entry(outcome.status()).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&Some(503)).copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| matches!(s, Some(401 | 408 | 503))),
        "{statuses:?}"
    );
    assert!(
        started.elapsed() < body_timeout * 2 + CLOSE_SLACK,
        "{:?}",
        started.elapsed()
    );

    // The flood gone, every request is served again.
    let status = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    http.stop().await;
    fleet.shutdown().await.unwrap();
}
