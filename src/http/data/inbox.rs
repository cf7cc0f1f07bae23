//! `GET /api/admin/inbox/{pid}` and `POST /api/admin/inbox/{pid}/ack`: a bot's admin queue
//! (`admin:queue:PID`), read through the daemon and acknowledged (`Admin::receive`,
//! `Admin::acknowledge`).
//!
//! A read answers the oldest `max` messages in queue order, each with an id, and removes
//! nothing; with `wait_ms` it waits that long for one when the queue is empty, and returns as
//! soon as one arrives. An acknowledgement removes the messages of its ids. So delivery is at
//! least once, in order: a consumer that dies before acknowledging reads the same messages
//! again, and dedupes them by id. While the storage is off Redis a read answers no message
//! with `"stale": true` (Redis's queue cannot be read; the messages wait there).

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{heartbeat_error, pid_of, Params};
use crate::http::bot::{parse_json, ApiError};
use crate::http::AppState;

/// Most messages one read answers.
const MAX_MESSAGES: u64 = 1_000;
/// Messages a read answers by default.
const DEFAULT_MESSAGES: u64 = 100;
/// Longest wait of a read, milliseconds.
const MAX_WAIT_MS: u64 = 60_000;
/// Most ids one acknowledgement takes.
const MAX_IDS: usize = 1_000;
/// Longest id, bytes.
const ID_MAX: usize = 256;

/// Body of `POST /api/admin/inbox/{pid}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    /// Ids of the messages handled.
    ids: Vec<String>,
}

/// `GET /api/admin/inbox/{pid}?max=N&wait_ms=W`.
pub(super) async fn receive(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pid = pid_of(&path)?;
    let params = Params::of(&req, &["max", "wait_ms"])?;
    let max = params.number("max", 1..=MAX_MESSAGES, DEFAULT_MESSAGES)?;
    let wait = Duration::from_millis(params.number("wait_ms", 0..=MAX_WAIT_MS, 0)?);
    let admin = state.fleet.admin();
    let mut shutdown = state.shutdown.clone();
    let received = tokio::select! {
        received = admin.receive(pid, max as usize, wait) => received.map_err(heartbeat_error)?,
        // The server stops: an empty answer, the consumer reads again elsewhere.
        _ = shutdown.wait_for(|stop| *stop) => Default::default(),
    };
    let freshness = state.fleet.storage().freshness();
    Ok(HttpResponse::Ok().json(json!({
        "pid": pid,
        "messages": received.messages,
        "stale": received.off_redis || freshness.stale,
        "as_of_ms": freshness.as_of_ms,
    })))
}

/// `POST /api/admin/inbox/{pid}/ack` `{"ids": [...]}`.
pub(super) async fn ack(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let pid = pid_of(&path)?;
    let request: AckRequest = parse_json(&body)?;
    if request.ids.len() > MAX_IDS {
        return Err(ApiError::bad_field(
            "ids",
            format!("at most {MAX_IDS} ids, got {}", request.ids.len()),
        ));
    }
    for (i, id) in request.ids.iter().enumerate() {
        if id.is_empty() || id.len() > ID_MAX {
            return Err(ApiError::bad_field(
                &format!("ids[{i}]"),
                format!("expected 1 to {ID_MAX} bytes"),
            ));
        }
    }
    let acked = state
        .fleet
        .admin()
        .acknowledge(pid, &request.ids)
        .await
        .map_err(heartbeat_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "acked": acked.acked,
        "stale": acked.off_redis,
    })))
}
