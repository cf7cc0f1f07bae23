//! `/api/locks/...`: fenced locks for holders outside the process (bots in any language,
//! `botfleet lock run`), over [`Locks`](crate::actors::locks::Locks)' leases.
//!
//! `POST /api/locks/acquire` `{"name", "ttl_ms", "wait_ms"?}` answers the lease (`name`,
//! `token`, `fence`, `expires_at_ms`), or 409 `lock busy` when it was not had within
//! `wait_ms`; `POST /api/locks/extend` `{"name", "token", "ttl_ms"}` and `POST
//! /api/locks/release` `{"name", "token"}` act by token and answer 409 when the token no
//! longer holds the lock. There is no watchdog: a holder that stops extending loses the lock
//! at its TTL. Names are the Redis keys as given, so the seeds' `SET NX` locks and these
//! exclude each other both ways. Locks never use the fallback: off Redis every call answers
//! 503.
//!
//! `GET /api/locks/held` lists the locks this process holds now (its guards and the leases it
//! handed out, with their fence and the time left), read from memory: no Redis call, no scan.

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::bot::{parse_json, ApiError};
use super::{limits, AppState};
use crate::actors::locks::LockError;
use crate::storage::StorageError;

/// Longest `wait_ms` of an acquisition: a request waits at most a minute.
pub(crate) const MAX_WAIT_MS: u64 = 60_000;

/// Registers the lock routes.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/locks/acquire", web::post().to(acquire))
        .route("/api/locks/extend", web::post().to(extend))
        .route("/api/locks/release", web::post().to(release))
        .route("/api/locks/held", web::get().to(held));
}

/// Locks `GET /api/locks/held` lists at most.
const HELD_LISTED: usize = 200;

/// `GET /api/locks/held`: `{"total", "locks": [{"name", "holder", "fence", "expires_at_ms",
/// "ttl_left_ms"}]}`, by name, at most [`HELD_LISTED`]. The tokens are not shown.
async fn held(state: web::Data<AppState>) -> HttpResponse {
    let (locks, total) = state.fleet.locks().held_now(HELD_LISTED);
    let now = crate::clock::now_ms();
    let locks: Vec<_> = locks
        .into_iter()
        .map(|l| {
            json!({
                "name": l.name, "holder": l.holder, "fence": l.fence,
                "expires_at_ms": l.expires_at_ms,
                "ttl_left_ms": l.expires_at_ms.map(|at| at.saturating_sub(now)),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "total": total, "locks": locks }))
}

/// Body of `POST /api/locks/acquire`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireRequest {
    name: String,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// Body of `POST /api/locks/extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    name: String,
    token: String,
    ttl_ms: u64,
}

/// Body of `POST /api/locks/release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    name: String,
    token: String,
}

/// `name` non-empty and at most `locks.max_name_bytes` bytes.
fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    let max = state.fleet.settings().locks.max_name_bytes;
    if name.is_empty() {
        return Err(ApiError::bad_field("name", "must not be empty"));
    }
    if name.len() > max {
        return Err(ApiError::bad_field(
            "name",
            format!(
                "{} bytes, more than locks.max_name_bytes ({max})",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// `ttl_ms` from 1 to `locks.max_ttl_ms`.
fn check_ttl(state: &AppState, ttl_ms: u64) -> Result<Duration, ApiError> {
    let max = state.fleet.settings().locks.max_ttl_ms;
    if ttl_ms == 0 || ttl_ms > max {
        return Err(ApiError::bad_field(
            "ttl_ms",
            format!("expected 1 to {max} (locks.max_ttl_ms), got {ttl_ms}"),
        ));
    }
    Ok(Duration::from_millis(ttl_ms))
}

/// `POST /api/locks/acquire`. A client that closes its connection while it waits gives up
/// its place; a lock granted just as it left is released.
async fn acquire(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: AcquireRequest = parse_json(&body)?;
    check_name(&state, &request.name)?;
    let ttl = check_ttl(&state, request.ttl_ms)?;
    if request.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_field(
            "wait_ms",
            format!("expected 0 to {MAX_WAIT_MS}, got {}", request.wait_ms),
        ));
    }
    let wait = Duration::from_millis(request.wait_ms);
    let locks = state.fleet.locks();
    let lease = tokio::select! {
        lease = locks.acquire_lease(&request.name, ttl, wait) => lease.map_err(refused)?,
        _ = limits::client_gone(&req) => return Err(gone()),
    };
    if limits::client_closed(&req) {
        if let Err(e) = locks.release_lease(&lease.name, &lease.token).await {
            tracing::warn!(key = %lease.name, error = %e, "a lock granted to a client that left could not be released; it expires with its ttl");
        }
        return Err(gone());
    }
    Ok(HttpResponse::Ok().json(lease))
}

/// `POST /api/locks/extend`.
async fn extend(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: ExtendRequest = parse_json(&body)?;
    check_name(&state, &request.name)?;
    let ttl = check_ttl(&state, request.ttl_ms)?;
    let extended = state
        .fleet
        .locks()
        .extend_lease(&request.name, &request.token, ttl)
        .await
        .map_err(refused)?;
    match extended {
        Some(expires_at_ms) => {
            Ok(HttpResponse::Ok().json(json!({ "expires_at_ms": expires_at_ms })))
        }
        None => Err(not_holder(&request.name)),
    }
}

/// `POST /api/locks/release`.
async fn release(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: ReleaseRequest = parse_json(&body)?;
    check_name(&state, &request.name)?;
    let released = state
        .fleet
        .locks()
        .release_lease(&request.name, &request.token)
        .await
        .map_err(refused)?;
    if released {
        Ok(HttpResponse::Ok().json(json!({ "released": true })))
    } else {
        Err(not_holder(&request.name))
    }
}

/// The answer to a client that left while it waited (nobody reads it).
fn gone() -> ApiError {
    ApiError::BadRequest {
        field: None,
        message: "the client closed the connection while it waited".into(),
    }
}

/// The 409 of a token that no longer holds its lock.
fn not_holder(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "lock {name:?} is not held by this token (it expired, was released, or another holder has it)"
    ))
}

/// What a lock call's error answers.
fn refused(e: LockError) -> ApiError {
    match e {
        LockError::Timeout { .. } => ApiError::Conflict("lock busy".into()),
        LockError::InvalidName(m) => ApiError::bad_field("name", m),
        LockError::InvalidTtl { ttl_ms, reason } => {
            ApiError::bad_field("ttl_ms", format!("{ttl_ms}: {reason}"))
        }
        LockError::InvalidToken(m) => ApiError::bad_field("token", m),
        LockError::Unavailable(reason) => ApiError::Unavailable(format!(
            "the lock service needs Redis, which is unreachable ({reason}); locks never fall \
             back to local storage: retry once Redis is back"
        )),
        // The key holds something other than a lock (a list, a hash...): the name is the
        // caller's to change.
        LockError::Storage(StorageError::Command(m)) if m.contains("WRONGTYPE") => {
            ApiError::bad_field(
                "name",
                "the key holds a value of another type, not a lock: choose another name",
            )
        }
        other => ApiError::Internal(other.to_string()),
    }
}
