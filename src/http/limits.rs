//! Bounds on every phase of a request, so that no client holds a connection (or a file
//! descriptor) longer than the settings say, and `/health` answers while the others are full.
//!
//! | phase | bound | outcome |
//! |---|---|---|
//! | first request's headers | `api.header_timeout_ms` (actix-web's request timeout) | 408, closed |
//! | the whole body, from the headers' arrival | `api.body_timeout_ms` ([`limit`]) | 408, closed |
//! | idle between two requests | `api.keep_alive_ms` (0 by default: one request per connection) | closed |
//! | a response to a request whose body was not read (401, 413, 503...) | [`LINGER`] | `Connection: close`, closed without reading the body |
//! | open connections | `api.max_connections` ([`ConnectionCount`]) | past it only `GET /health` is served, others 503 and closed |
//! | a long poll (`wait_ms`) | until its client closes the connection ([`client_gone`]) | the wait ends; what it would have taken is given back |
//!
//! actix-web closes a connection whose unread body has a `Content-Length`, but it reads (and
//! discards) an unread *chunked* body to the end before closing, however long the client takes.
//! So [`limit`] keeps the request's payload alive inside the response body until the response
//! is written: the server then sees a body nobody read and closes the connection at once (after
//! [`LINGER`], time for the client to read the answer), whatever its framing.
//!
//! Open connections are counted when accepted ([`ConnectionCount::on_connect`]) and uncounted
//! when closed; one accepted while `api.max_connections` others are open is not admitted. The
//! workers together accept `api.max_connections` plus [`ApiSettings::HEALTH_RESERVE`]
//! (actix-web's per-worker limit): the reserve is where a health check gets in while the
//! admitted connections are taken, since a request on a connection that was not admitted is
//! answered 503 and closed as soon as its headers arrive, unless it is `GET`/`HEAD /health`.
//!
//! actix-web bounds the headers of a connection's *first* request only: a later request on a
//! kept-alive connection has the keep-alive time to start, then no deadline for the rest of
//! its headers. So keep-alive is off unless `api.keep_alive_ms` turns it on.

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::http::{ConnectionType, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpResponse};
use futures::Stream;
use serde_json::json;

use super::AppState;
use crate::settings::ApiSettings;

/// How long a connection closed after a refusal stays open for the client to read the answer
/// (actix-web's client disconnect timeout). actix-web measures its deadlines from a clock it
/// updates every 500 ms, and a deadline already past when it is set never wakes the connection
/// again: one second is the shortest that always fires.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// The path served past `api.max_connections`.
const HEALTH_PATH: &str = "/health";

/// Open connections of one server, across its workers, and the cap.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionCount {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// A connection's place in the count: whether it was accepted within the cap. Uncounts the
/// connection when the connection's data is dropped (the connection closed).
struct Counted {
    open: Arc<AtomicUsize>,
    admitted: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionCount {
    /// No connection yet, at most `max` admitted at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// actix-web's `on_connect` hook: counts the connection for as long as it is open, and
    /// admits it when at most `max` are open with it (past the cap, it is served `/health`
    /// only, for as long as it stays open).
    pub(crate) fn on_connect(&self, extensions: &mut Extensions) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        extensions.insert(Counted {
            open: self.open.clone(),
            admitted: open <= self.max,
        });
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a request refused past the cap, and says so at WARN at most once a second (a
    /// flood would otherwise flood the log too).
    fn refused(&self, max: usize) {
        static REFUSED: AtomicUsize = AtomicUsize::new(0);
        static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
        let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::clock::now_ms();
        let last = LAST_WARN_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && LAST_WARN_MS
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                open = self.open(),
                max,
                refused_since_start = refused,
                "refusing requests past api.max_connections (only /health is served)"
            );
        }
    }

    /// actix-web's per-worker connection limit: the workers together accept the cap and the
    /// health reserve.
    pub(crate) fn per_worker_limit(settings: &ApiSettings) -> usize {
        let total = settings
            .max_connections
            .saturating_add(ApiSettings::HEALTH_RESERVE);
        total.div_ceil(settings.workers.max(1))
    }
}

/// A connection's socket, recorded when it is accepted ([`PeerSocket::record`], from the
/// server's `on_connect`), so that a handler that waits long can see its client leave:
/// actix-web runs a handler to its end even when the client closed the connection meanwhile,
/// and a long poll would then take something (a lock, a task) for nobody.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerSocket(std::os::fd::RawFd);

impl PeerSocket {
    /// Records the socket of a plain TCP connection `io` in its `extensions`.
    pub(crate) fn record(io: &dyn std::any::Any, extensions: &mut Extensions) {
        use std::os::fd::AsRawFd;
        if let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
            extensions.insert(PeerSocket(stream.as_raw_fd()));
        }
    }

    /// Whether the client closed its end: a read would find the end of the stream (or the
    /// connection is reset).
    fn closed(self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.0,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll(2) with a timeout of 0 on one pollfd that lives on the stack. The fd is
        // the connection's, open for as long as the request that asks is in flight (actix-web
        // closes it only after dropping the request's handler).
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// How often [`client_gone`] looks at the connection.
const GONE_CHECK: Duration = Duration::from_millis(100);

/// Resolves once the client of `req` has closed its connection (looked at every 100 ms);
/// never when its socket is unknown. For long polls: `select!` it against the wait. (A
/// client that half-closes its sending side while it waits counts as gone.)
pub(crate) async fn client_gone(req: &actix_web::HttpRequest) {
    let Some(peer) = req.conn_data::<PeerSocket>().copied() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(GONE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if peer.closed() {
            return;
        }
    }
}

/// Whether the client of `req` has closed its connection already.
pub(crate) fn client_closed(req: &actix_web::HttpRequest) -> bool {
    req.conn_data::<PeerSocket>()
        .is_some_and(|peer| peer.closed())
}

/// What the middleware learns about a request's body while the handler reads it.
#[derive(Default)]
struct BodyState {
    /// The whole body arrived.
    finished: Cell<bool>,
    /// The deadline passed first.
    timed_out: Cell<bool>,
}

/// The request's payload, shared by the handler's view of it and the middleware.
type SharedPayload = Rc<RefCell<Payload>>;

/// The payload the handler reads: the real one, failing with a timeout at the body's deadline.
struct DeadlinePayload {
    inner: SharedPayload,
    state: Rc<BodyState>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for DeadlinePayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state.finished.get() {
            return Poll::Ready(None);
        }
        if self.state.timed_out.get() {
            return Poll::Ready(Some(Err(timed_out())));
        }
        // The payload is borrowed only here and in the middleware after the handler is done:
        // never twice at once on this single-threaded worker.
        let polled = Pin::new(&mut *self.inner.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(None) => {
                self.state.finished.set(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.state.timed_out.set(true);
                    Poll::Ready(Some(Err(timed_out())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn timed_out() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request body did not arrive in time (api.body_timeout_ms)",
    ))
}

/// A response body that keeps the request's unread payload alive until it is written, so that
/// the server closes the connection instead of reading the rest of the body.
struct HoldPayload {
    body: BoxBody,
    _payload: SharedPayload,
}

impl MessageBody for HoldPayload {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// Whether the request announces a body (`Content-Length` above 0, or chunked).
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let sized = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    chunked || sized
}

/// Middleware, outermost: the connection cap, the body deadline, and `Connection: close` on a
/// response whose request body was not read to its end (or that refused the request: 401, 408,
/// 413, 503 past the cap).
pub(crate) async fn limit(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let settings = &state.settings;
    let payload: Option<SharedPayload> =
        has_body(&req).then(|| Rc::new(RefCell::new(req.take_payload())));

    let health = req.path() == HEALTH_PATH && matches!(*req.method(), Method::GET | Method::HEAD);
    // A connection the hook did not see (none: every one passes it) counts as admitted.
    let admitted = req.conn_data::<Counted>().is_none_or(|c| c.admitted);
    if !admitted && !health {
        state.connections.refused(settings.max_connections);
        let response = HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(json!({
                "error": format!(
                    "too many open connections (api.max_connections = {}); only GET /health is served",
                    settings.max_connections
                ),
                "field": null,
            }));
        return Ok(close(req.into_response(response), payload));
    }

    let body = Rc::new(BodyState::default());
    if let Some(shared) = &payload {
        let deadline = Duration::from_millis(settings.body_timeout_ms);
        let stream = DeadlinePayload {
            inner: shared.clone(),
            state: body.clone(),
            deadline: Box::pin(tokio::time::sleep(deadline)),
        };
        let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(stream);
        req.set_payload(Payload::from(boxed));
    }
    let method = req.method().clone();
    let path = req.path().to_owned();
    let mut res = next.call(req).await?.map_into_boxed_body();

    if body.timed_out.get() {
        tracing::warn!(%method, path, "closed a request whose body did not arrive in time");
        let (request, _) = res.into_parts();
        let response = HttpResponse::RequestTimeout().json(json!({
            "error": format!(
                "the request body did not arrive within {} ms (api.body_timeout_ms)",
                settings.body_timeout_ms
            ),
            "field": null,
        }));
        res = ServiceResponse::new(request, response);
    }
    let refused = matches!(
        res.status(),
        StatusCode::UNAUTHORIZED | StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    );
    let unread = payload.filter(|_| !body.finished.get());
    if refused || unread.is_some() {
        res = close(res, unread);
    }
    Ok(res)
}

/// `res` with `Connection: close`, holding `payload` (the request's unread body) until it is
/// written.
fn close(
    mut res: ServiceResponse<BoxBody>,
    payload: Option<SharedPayload>,
) -> ServiceResponse<BoxBody> {
    res.response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    match payload {
        Some(payload) => res.map_body(|_, body| {
            BoxBody::new(HoldPayload {
                body,
                _payload: payload,
            })
        }),
        None => res,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_together_accept_the_cap_and_the_reserve() {
        let mut settings = ApiSettings {
            max_connections: 10,
            workers: 4,
            ..ApiSettings::default()
        };
        let per_worker = ConnectionCount::per_worker_limit(&settings);
        assert!(per_worker * 4 >= 10 + ApiSettings::HEALTH_RESERVE);
        assert!((per_worker - 1) * 4 < 10 + ApiSettings::HEALTH_RESERVE);
        settings.max_connections = usize::MAX;
        assert!(ConnectionCount::per_worker_limit(&settings) > 0);
    }

    #[test]
    fn connections_past_the_cap_are_not_admitted_and_all_are_uncounted() {
        let count = ConnectionCount::new(1);
        let admitted = |e: &Extensions| e.get::<Counted>().unwrap().admitted;
        let mut a = Extensions::new();
        let mut b = Extensions::new();
        count.on_connect(&mut a);
        count.on_connect(&mut b);
        assert_eq!(count.open(), 2);
        assert!(admitted(&a) && !admitted(&b));
        drop(a);
        assert_eq!(count.open(), 1);
        let mut c = Extensions::new();
        count.on_connect(&mut c);
        assert!(!admitted(&c), "two open: past the cap of one");
        drop(b);
        drop(c);
        assert_eq!(count.open(), 0);
        let mut d = Extensions::new();
        count.on_connect(&mut d);
        assert!(admitted(&d));
    }
}
