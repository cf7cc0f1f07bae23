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

    // A second request cannot stall on the first one's connection: keep-alive is off by
    // default, so the server closes it after the first answer.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: botfleet\r\n\r\nGET /hea")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(CLOSE_SLACK, stream.read_to_string(&mut text))
        .await
        .expect("closed after the first answer")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");

    // The server still serves whole requests.
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
    }
    http.stop().await;
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_during_a_flood_of_stalled_bodies() {
    const FLOOD: usize = 200;
    const MAX: usize = 8;
    let fleet = fleet().await;
    let body_timeout = Duration::from_secs(30);
    let http = HttpApi::builder(fleet.clone())
        .settings(api(body_timeout.as_millis() as u64, MAX))
        .start()
        .unwrap();
    let addr = http.local_addr();

    // First the cap: MAX authenticated stalled bodies, admitted and held until their deadline.
    let held: Vec<_> = (0..MAX)
        .map(|_| tokio::spawn(stalled(addr, Stall::Sized, true, body_timeout * 3)))
        .collect();
    poll_until_async(Duration::from_secs(10), || async {
        http.open_connections() >= MAX
    })
    .await
    .expect("the cap's connections are open");

    // Then the flood, chunked and sized, two thirds with the token: none of it is admitted.
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
    // HEAD), and any other request is refused because the cap is reached. Each attempt is a
    // connection of its own, which may wait in the listen queue behind the flood's.
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answer = |method: reqwest::Method, path: &str| {
        let request = client.request(method, format!("http://{addr}{path}"));
        async move {
            let response = request.send().await.ok()?;
            let (status, headers) = (response.status().as_u16(), response.headers().clone());
            let body = response.text().await.ok()?;
            Some((status, headers, body))
        }
    };
    let got = std::sync::Mutex::new(None);
    let got = &got;
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        poll_until_async(body_timeout / 3, || {
            let attempt = answer(method.clone(), "/health");
            async move {
                let answered = attempt.await;
                let ok = answered.is_some();
                *got.lock().unwrap() = answered;
                ok
            }
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{method} /health: {e}; {} of {FLOOD} flood connections closed",
                closed.load(Ordering::Relaxed)
            )
        });
        let (status, _, body) = got.lock().unwrap().take().unwrap();
        assert_eq!(status, 200, "{method} /health: {body}");
        assert_eq!(body.is_empty(), method == reqwest::Method::HEAD, "{body}");
    }
    poll_until_async(body_timeout / 3, || {
        let attempt = answer(reqwest::Method::GET, "/status");
        async move {
            let answered = attempt.await;
            let ok = answered.is_some();
            *got.lock().unwrap() = answered;
            ok
        }
    })
    .await
    .expect("GET /status answered");
    let (status, headers, body) = got.lock().unwrap().take().unwrap();
    assert_eq!(status, 503, "the cap is reached: {body}");
    assert_eq!(headers["connection"], "close");
    assert!(body.contains("api.max_connections"), "{body}");
    assert!(
        started.elapsed() < body_timeout,
        "the admitted stalled bodies are still held: {:?}",
        started.elapsed()
    );

    // The cap's connections are answered 408 at their deadline; the flood's are refused at
    // once (503: not admitted), and all of them closed.
    for task in held {
        let outcome = task.await.unwrap();
        assert_eq!(outcome.status(), Some(408), "{outcome:?}");
        let closed = outcome.closed_after.expect("closed");
        assert!(closed >= body_timeout, "{outcome:?}");
    }
    let mut statuses = std::collections::BTreeMap::new();
    for task in flood {
        let outcome = task.await.unwrap();
        let closed = outcome.closed_after.expect("closed");
        assert!(closed < body_timeout, "refused at once: {outcome:?}");
        *statuses.entry(outcome.status()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&Some(503)), Some(&FLOOD), "{statuses:?}");
    assert!(
        started.elapsed() < body_timeout * 2 + CLOSE_SLACK,
        "{:?}",
        started.elapsed()
    );

    // The flood gone, every request is served again.
    let (status, _, body) = answer(reqwest::Method::GET, "/status").await.unwrap();
    assert_eq!(status, 200, "{body}");
    http.stop().await;
    fleet.shutdown().await.unwrap();
}
