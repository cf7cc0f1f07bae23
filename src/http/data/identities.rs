//! `PUT`, `GET` and `DELETE /api/identities`: participant identities shared across bot
//! processes (`identity:ROOM:PARTICIPANT`, seed 004), through the fleet's `Identities`.
//!
//! - `PUT {"room", "participant", "identity": {...}}` writes the record (a JSON object of at
//!   most `identities.max_bytes`) with the registry's TTL; `{"ok": true}`.
//! - `GET ?room=R&participant=P` answers the record, 404 when there is none;
//!   `GET ?room=R` answers the room, `{"room", "identities": {participant: record}}`, found
//!   with `SCAN` (at most `limit` entries, default 1,000; `"truncated"` says when more
//!   matched).
//! - `DELETE ?room=R&participant=P` answers `{"deleted": bool}`.
//!
//! The key layout is the seed's: a room URL holding `:` makes some keys ambiguous
//! (`identity:a:b:c` is room `a` and participant `b:c`, or room `a:b` and participant `c`),
//! so a room's listing can include entries of a longer room whose URL starts with it and `:`.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{heartbeat_error, participant, room, with_freshness, Params};
use crate::http::bot::{parse_json, ApiError};
use crate::http::AppState;

/// Most entries a room's listing answers.
const LIST_MAX: u64 = 10_000;
/// Entries a room's listing answers by default.
const LIST_DEFAULT: u64 = 1_000;

/// Body of `PUT /api/identities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteRequest {
    room: String,
    participant: String,
    identity: Value,
}

/// `PUT /api/identities`.
pub(super) async fn write(
    state: web::Data<AppState>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: WriteRequest = parse_json(&body)?;
    room(&request.room)?;
    participant("participant", &request.participant)?;
    if !request.identity.is_object() {
        return Err(ApiError::bad_field("identity", "expected a JSON object"));
    }
    state
        .fleet
        .identities()
        .write(&request.room, &request.participant, &request.identity)
        .await
        .map_err(heartbeat_error)?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true })))
}

/// `GET /api/identities?room=R[&participant=P][&limit=N]`.
pub(super) async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req, &["room", "participant", "limit"])?;
    let room_url = required(&params, "room")?;
    room(room_url)?;
    let identities = state.fleet.identities();
    if let Some(who) = params.text("participant") {
        participant("participant", who)?;
        if params.text("limit").is_some() {
            return Err(ApiError::bad_field(
                "limit",
                "only for a room's listing (without participant)",
            ));
        }
        return match identities
            .read(room_url, who)
            .await
            .map_err(heartbeat_error)?
        {
            Some(record) => Ok(HttpResponse::Ok().json(record)),
            None => Err(ApiError::NotFound(format!(
                "no identity for participant {who:?} in room {room_url:?}"
            ))),
        };
    }
    let limit = params.number("limit", 1..=LIST_MAX, LIST_DEFAULT)? as usize;
    let entries = identities.list(room_url).await.map_err(heartbeat_error)?;
    let truncated = entries.len() > limit;
    let listed: Map<String, Value> = entries.into_iter().take(limit).collect();
    Ok(HttpResponse::Ok().json(with_freshness(
        &state,
        json!({ "room": room_url, "identities": listed, "truncated": truncated }),
    )))
}

/// `DELETE /api/identities?room=R&participant=P`.
pub(super) async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req, &["room", "participant"])?;
    let room_url = required(&params, "room")?;
    room(room_url)?;
    let who = required(&params, "participant")?;
    participant("participant", who)?;
    let deleted = state
        .fleet
        .identities()
        .remove(room_url, who)
        .await
        .map_err(heartbeat_error)?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

fn required<'p>(params: &'p Params, key: &str) -> Result<&'p str, ApiError> {
    params
        .text(key)
        .ok_or_else(|| ApiError::bad_field(key, "required"))
}
