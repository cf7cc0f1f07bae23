//! The sidecar's data services, for bots in any language: the shared snapshot (seed 000),
//! admin messages with acknowledgement, identities, heartbeats and peers (seed 004).
//!
//! | route | file | what it serves |
//! |---|---|---|
//! | `GET /api/shared-data`, `/api/shared-data/stream` | `data/shared_data.rs` | what `Reader::read()` answers; each new round once (SSE) |
//! | `GET /api/admin/inbox/{pid}`, `POST .../ack` | `data/inbox.rs` | a bot's queue, long-polled, at least once in order, removed once acknowledged |
//! | `PUT`, `GET`, `DELETE /api/identities` | `data/identities.rs` | `identity:ROOM:PARTICIPANT`, one or a room |
//! | `PUT`, `GET`, `DELETE /api/heartbeats/{pid}`, `GET /api/peers`, `/api/peers/stream` | `data/peers.rs` | `heartbeat:PID` in the seed's fields; the peers and their events (SSE) |
//!
//! Every input is checked before anything is stored: a pid is a positive process id, a room
//! or participant a non-empty bounded text without control characters, an identity a JSON
//! object within `identities.max_bytes`; a query parameter the route does not know, or one
//! given twice, is refused. A refusal is 400 naming the field. The streams end when the
//! server stops and send a comment every [`KEEP_ALIVE`] so that proxies keep them open.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::bot::ApiError;
use super::AppState;
use crate::actors::heartbeat::{parse_pid, HeartbeatError};

mod identities;
mod inbox;
mod peers;
mod shared_data;

/// A comment line is sent on a stream when nothing happened for this long.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest room URL, bytes.
const ROOM_MAX: usize = 2_048;
/// Longest participant id, bytes.
const PARTICIPANT_MAX: usize = 256;

/// Registers the routes of the data services, each with its full path.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/shared-data", web::get().to(shared_data::read))
        .route(
            "/api/shared-data/stream",
            web::get().to(shared_data::stream),
        )
        .route("/api/admin/inbox/{pid}", web::get().to(inbox::receive))
        .route("/api/admin/inbox/{pid}/ack", web::post().to(inbox::ack))
        .route("/api/identities", web::put().to(identities::write))
        .route("/api/identities", web::get().to(identities::read))
        .route("/api/identities", web::delete().to(identities::remove))
        .route("/api/heartbeats/{pid}", web::put().to(peers::beat))
        .route("/api/heartbeats/{pid}", web::get().to(peers::heartbeat))
        .route("/api/heartbeats/{pid}", web::delete().to(peers::remove))
        .route("/api/peers", web::get().to(peers::list))
        .route("/api/peers/stream", web::get().to(peers::stream));
}

/// The query parameters of a request, each known to the route and given once.
struct Params(HashMap<String, String>);

impl Params {
    /// Parses the query string; a parameter not in `known`, or given twice, is a 400 naming
    /// it.
    fn of(req: &HttpRequest, known: &[&str]) -> Result<Params, ApiError> {
        let pairs = ApiError::query_pairs(req)?;
        let mut params = HashMap::new();
        for (key, value) in pairs {
            if !known.contains(&key.as_str()) {
                return Err(ApiError::bad_field(
                    &key,
                    format!("unknown parameter: expected {}", known.join(", ")),
                ));
            }
            if params.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_field(&key, "given more than once"));
            }
        }
        Ok(Params(params))
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// An integer parameter within `range`, `default` when absent.
    fn number(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.text(key) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::bad_field(
                    key,
                    format!(
                        "expected an integer from {} to {}, got {text:?}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }
}

/// A pid of the path: a positive decimal process id (400 naming `pid` otherwise).
fn pid_of(text: &str) -> Result<u32, ApiError> {
    parse_pid(text).map_err(|e| ApiError::bad_field("pid", e.to_string()))
}

/// Refuses a text that is blank, longer than `max` bytes, or holds a control character.
fn bounded_text(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_field(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(ApiError::bad_field(
            field,
            format!("at most {max} bytes, got {}", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A room URL, checked.
fn room(text: &str) -> Result<(), ApiError> {
    bounded_text("room", text, ROOM_MAX)
}

/// A participant id, checked.
fn participant(field: &str, text: &str) -> Result<(), ApiError> {
    bounded_text(field, text, PARTICIPANT_MAX)
}

/// The answer to a failed heartbeat, identity or admin call.
fn heartbeat_error(e: HeartbeatError) -> ApiError {
    match e {
        HeartbeatError::InvalidPid(_) => ApiError::bad_field("pid", e.to_string()),
        HeartbeatError::EmptyRoom => ApiError::bad_field("room", e.to_string()),
        HeartbeatError::InvalidParticipant(..) => ApiError::bad_field("participant", e.to_string()),
        HeartbeatError::EmptyStatus => ApiError::bad_field("status", e.to_string()),
        HeartbeatError::MessageTooLarge { .. } => ApiError::bad_field("message", e.to_string()),
        HeartbeatError::RecordTooLarge { .. } => ApiError::bad_field("identity", e.to_string()),
        HeartbeatError::InboxTaken => ApiError::Conflict(
            "this pid's queue is consumed by the embedded host (Admin::inbox)".into(),
        ),
        HeartbeatError::Storage(_) => ApiError::Unavailable(format!("storage refused: {e}")),
    }
}

/// `value` with `"stale"` and `"as_of_ms"`: whether the storage answers from last-known state
/// now (Redis is configured but not serving).
fn with_freshness(state: &AppState, mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        let freshness = state.fleet.storage().freshness();
        object.insert("stale".into(), json!(freshness.stale));
        object.insert("as_of_ms".into(), json!(freshness.as_of_ms));
    }
    value
}

/// One server-sent event.
fn frame(event: &str, data: &Value) -> Bytes {
    // serde_json escapes line breaks inside strings: the data is one line.
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A comment line, which clients ignore.
fn comment(text: &'static str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// A `text/event-stream` response of `body`.
fn event_stream<S>(body: S) -> HttpResponse
where
    S: futures::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
