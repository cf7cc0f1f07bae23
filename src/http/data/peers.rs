//! Heartbeats and peers (seed 004) for bots that use the daemon as a sidecar.
//!
//! - `PUT /api/heartbeats/{pid}` `{"room_url"?, "participants"?, "status"?}` writes
//!   `heartbeat:PID` in the seed's fields (`pid`, `host`: the daemon's, `room_url`,
//!   `participants`, `status`, `timestamp`: the Redis server's clock, in seconds) with the TTL
//!   `heartbeat.ttl_secs`, and answers the record. One write per call: the bot calls it every
//!   `heartbeat.interval_ms` (nothing beats for it; a bot that stops calling leaves when its
//!   key expires, and one whose process is gone from this host shows as a zombie meanwhile).
//!   A bot may write the key itself instead, in the same layout.
//! - `GET /api/heartbeats/{pid}` answers the record as stored (404 when there is none);
//!   `DELETE` removes it, `{"deleted": bool}`.
//! - `GET /api/peers` scans the heartbeats now (`SCAN`, one pipelined `GET` batch) and
//!   answers `{"peers": [{pid, host, room_url, participants, status, timestamp, age_ms,
//!   state}]}`; the scan's changes go to the stream too.
//! - `GET /api/peers/stream`: one `peer` event per change the peer monitor (or a scan) sees:
//!   `{"event": "joined"|"stale"|"zombie"|"recovered"|"left", "pid", "peer"|"last_state"}`.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures::{stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval, MissedTickBehavior};

use super::{
    bounded_text, comment, event_stream, frame, heartbeat_error, participant, pid_of,
    with_freshness, Params, KEEP_ALIVE, ROOM_MAX,
};
use crate::actors::heartbeat::{Peer, PeerEvent};
use crate::http::bot::{parse_json, ApiError};
use crate::http::AppState;

/// Most participants of one heartbeat.
const PARTICIPANTS_MAX: usize = 1_000;
/// Longest status, bytes.
const STATUS_MAX: usize = 128;

/// Body of `PUT /api/heartbeats/{pid}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BeatRequest {
    #[serde(default)]
    room_url: Option<String>,
    #[serde(default)]
    participants: Vec<String>,
    #[serde(default)]
    status: Option<String>,
}

/// `PUT /api/heartbeats/{pid}`.
pub(super) async fn beat(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let pid = pid_of(&path)?;
    let request: BeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BeatRequest::default()
    } else {
        parse_json(&body)?
    };
    if let Some(room) = &request.room_url {
        bounded_text("room_url", room, ROOM_MAX)?;
    }
    if request.participants.len() > PARTICIPANTS_MAX {
        return Err(ApiError::bad_field(
            "participants",
            format!(
                "at most {PARTICIPANTS_MAX}, got {}",
                request.participants.len()
            ),
        ));
    }
    for (i, p) in request.participants.iter().enumerate() {
        participant(&format!("participants[{i}]"), p)?;
    }
    let status = match &request.status {
        Some(status) => {
            bounded_text("status", status, STATUS_MAX)?;
            status.clone()
        }
        None => state.fleet.settings().heartbeat.status.clone(),
    };
    let participants: Vec<&str> = request.participants.iter().map(String::as_str).collect();
    let record = state
        .fleet
        .heartbeat()
        .with_pid(pid)
        .update(request.room_url.as_deref(), &participants, &status)
        .await
        .map_err(heartbeat_error)?;
    Ok(HttpResponse::Ok().json(record))
}

/// `GET /api/heartbeats/{pid}`.
pub(super) async fn heartbeat(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pid = pid_of(&path)?;
    match state
        .fleet
        .peers()
        .get(pid)
        .await
        .map_err(heartbeat_error)?
    {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(ApiError::NotFound(format!("no heartbeat for pid {pid}"))),
    }
}

/// `DELETE /api/heartbeats/{pid}`.
pub(super) async fn remove(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pid = pid_of(&path)?;
    let deleted = state
        .fleet
        .heartbeat()
        .with_pid(pid)
        .remove()
        .await
        .map_err(heartbeat_error)?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

/// A peer as one flat object.
fn peer_json(peer: &Peer) -> Value {
    let mut value = json!(peer.record);
    if let Some(object) = value.as_object_mut() {
        object.insert("age_ms".into(), json!(peer.age_ms));
        object.insert("state".into(), json!(peer.state));
    }
    value
}

/// A peer event as `{"event", "pid", "peer"}` (`"last_state"` instead of `"peer"` for one
/// that left).
fn event_json(event: &PeerEvent) -> Value {
    let (name, peer) = match event {
        PeerEvent::Joined(p) => ("joined", p),
        PeerEvent::Stale(p) => ("stale", p),
        PeerEvent::Zombie(p) => ("zombie", p),
        PeerEvent::Recovered(p) => ("recovered", p),
        PeerEvent::Left { pid, last_state } => {
            return json!({ "event": "left", "pid": pid, "last_state": last_state })
        }
    };
    json!({ "event": name, "pid": peer.record.pid, "peer": peer_json(peer) })
}

/// `GET /api/peers`.
pub(super) async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    Params::of(&req, &[])?;
    let peers = state.fleet.peers();
    let listed = peers.scan().await.map_err(heartbeat_error)?;
    let listed: Vec<Value> = listed.iter().map(peer_json).collect();
    Ok(HttpResponse::Ok().json(with_freshness(&state, json!({ "peers": listed }))))
}

/// `GET /api/peers/stream`.
pub(super) async fn stream(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    Params::of(&req, &[])?;
    let events = state.fleet.peers().subscribe();
    let mut keep_alive = interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    keep_alive.reset();
    let shutdown = state.shutdown.clone();
    let body = stream::unfold(
        (events, shutdown, keep_alive),
        |(mut events, mut shutdown, mut keep_alive)| async move {
            if *shutdown.borrow() {
                return None;
            }
            let bytes = tokio::select! {
                _ = shutdown.changed() => return None,
                _ = keep_alive.tick() => comment("keep-alive"),
                event = events.recv() => match event {
                    Ok(event) => frame("peer", &event_json(&event)),
                    Err(RecvError::Lagged(_)) => comment("peer events missed"),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((bytes, (events, shutdown, keep_alive)))
        },
    )
    .map(Ok::<_, actix_web::Error>);
    Ok(event_stream(body))
}
