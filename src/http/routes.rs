//! The routes: what each endpoint reads and answers.

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::bot::{
    parse_json, validate_session_id, AddTaskRequest, AdminSendRequest, ApiError, ArchiveQuery,
    StartRequest, TaskListQuery,
};
use super::snapshot::StatusSnapshot;
use super::{dashboard, history, metrics, openapi, sse, AppState};
use crate::storage::Mode;

/// Registers every route, each with its full path (the `openapi` suite reads them from the
/// source and holds `/openapi.json` equal to them).
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(dashboard::page))
        .route("/openapi.json", web::get().to(openapi::serve))
        .route("/health", web::get().to(health))
        .route("/health", web::head().to(health))
        .route("/status", web::get().to(status))
        .route("/metrics", web::get().to(prometheus))
        .route("/api/dashboard/history", web::get().to(history::serve))
        .route("/api/events/stream", web::get().to(sse::stream))
        .route("/api/admin/send", web::post().to(admin_send))
        .route("/api/bot/start", web::post().to(bot_start))
        .route("/api/bot/stop", web::post().to(bot_stop))
        .route("/api/bot/status", web::get().to(bot_status))
        .route("/api/bot/sessions", web::get().to(bot_sessions))
        .route("/api/bot/tasks", web::get().to(bot_tasks))
        .route("/api/bot/tasks/add", web::post().to(bot_add_task))
        .route("/api/bot/event-stream", web::get().to(sse::bot_events))
        .route("/api/bot/events/{session_id}", web::get().to(bot_events))
        .route("/api/bot/metrics/{session_id}", web::get().to(bot_metrics))
        .route("/api/bot/system-status", web::get().to(system_status));
    // Each service area's routes (one line each, before the fallback).
    cfg.configure(super::tasks::configure);
    cfg.configure(super::data::configure);
    cfg.configure(super::locks::configure);
    cfg.configure(super::games::configure);
    cfg.default_service(web::to(not_found));
}

async fn snapshot(state: &AppState) -> StatusSnapshot {
    StatusSnapshot::take(&state.fleet, &state.settings, &state.sections).await
}

/// `GET /health`: 200 `{"status":"ok"}`, or 503 `{"status":"unhealthy","reasons":[...]}`.
/// `HEAD /health` answers the same status and headers, without the body (the server leaves a
/// HEAD response's body out).
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = snapshot(&state).await;
    let body = json!({
        "status": if snapshot.health.healthy { "ok" } else { "unhealthy" },
        "reasons": snapshot.health.reasons,
        "mode": snapshot.storage.mode,
        "instance": snapshot.instance,
    });
    if snapshot.health.healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /status`: the full snapshot.
async fn status(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(snapshot(&state).await)
}

/// `GET /metrics`: Prometheus text.
async fn prometheus(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = snapshot(&state).await;
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, metrics::CONTENT_TYPE))
        .body(metrics::render(
            &snapshot,
            &state.sections,
            state.history.latest().as_ref(),
        ))
}

/// `GET /api/bot/system-status`: Redis, storage, actors and the bot in one answer.
async fn system_status(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = snapshot(&state).await;
    let running = snapshot
        .actors
        .actors
        .iter()
        .filter(|a| a.state == crate::supervisor::ChildState::Running)
        .count();
    let bot = state.bot.system_status().await;
    HttpResponse::Ok().json(json!({
        "status": if snapshot.health.healthy { "healthy" } else { "unhealthy" },
        "reasons": snapshot.health.reasons,
        "instance": snapshot.instance,
        "timestamp_ms": snapshot.at_ms,
        "redis": {
            "configured": state.fleet.settings().storage.redis.enabled,
            "connected": snapshot.storage.mode == Some(Mode::Redis),
            "mode": snapshot.storage.mode,
        },
        "storage": snapshot.storage,
        "actors": { "running": running, "total": snapshot.actors.actors.len() },
        "locks": snapshot.locks,
        "bot": bot,
        "stale": snapshot.freshness.stale,
        "as_of_ms": snapshot.freshness.as_of_ms,
    }))
}

/// A read's answer with `"stale"` and `"as_of_ms"`: during an outage it comes from
/// last-known state (plus this process's own writes), as of the last moment Redis answered.
fn fresh(state: &AppState, result: Result<Value, ApiError>) -> Result<Value, ApiError> {
    let mut value = result?;
    if let Some(object) = value.as_object_mut() {
        let freshness = state.fleet.storage().freshness();
        object.insert("stale".into(), json!(freshness.stale));
        object.insert("as_of_ms".into(), json!(freshness.as_of_ms));
    }
    Ok(value)
}

fn answer(result: Result<Value, ApiError>) -> Result<HttpResponse, ApiError> {
    result.map(|value| HttpResponse::Ok().json(value))
}

async fn bot_start(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    // An empty body starts a session with no name.
    let request: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        parse_json(&body)?
    };
    request.validate()?;
    answer(state.bot.start(request).await)
}

async fn bot_stop(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    answer(state.bot.stop().await)
}

async fn bot_status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    answer(fresh(&state, state.bot.status().await))
}

/// The `key=value` pairs of the query string (400 when it does not parse).
fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest {
            field: None,
            message: format!("invalid query string: {e}"),
        })
}

/// The archive page named by the query string; any other parameter is a 400.
fn archive_query(req: &HttpRequest) -> Result<ArchiveQuery, ApiError> {
    let mut archive = ArchiveQuery::default();
    for (key, value) in query_pairs(req)? {
        if !archive.take(&key, &value)? {
            return Err(ApiError::bad_field(
                &key,
                "unknown parameter: expected since, until, cursor or limit",
            ));
        }
    }
    Ok(archive)
}

async fn bot_sessions(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let archive = archive_query(&req)?;
    answer(fresh(&state, state.bot.sessions(archive).await))
}

async fn bot_tasks(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let mut query = TaskListQuery::default();
    for (key, value) in query_pairs(&req)? {
        match key.as_str() {
            "status" => query.status = Some(value),
            "limit" => {
                query.limit = Some(value.parse().map_err(|_| {
                    ApiError::bad_field("limit", format!("expected a number, got {value:?}"))
                })?)
            }
            other => {
                if !query.archive.take(other, &value)? {
                    return Err(ApiError::bad_field(
                        other,
                        "unknown parameter: expected status, limit, since, until or cursor",
                    ));
                }
            }
        }
    }
    query.validate()?;
    answer(fresh(&state, state.bot.tasks(query).await))
}

async fn bot_add_task(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: AddTaskRequest = parse_json(&body)?;
    request.validate(&state.fleet.settings().scheduler)?;
    answer(state.bot.add_task(request).await)
}

async fn bot_events(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let session_id = path.into_inner();
    validate_session_id(&session_id)?;
    let archive = archive_query(&req)?;
    answer(fresh(&state, state.bot.events(session_id, archive).await))
}

async fn bot_metrics(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let session_id = path.into_inner();
    validate_session_id(&session_id)?;
    answer(fresh(&state, state.bot.metrics(session_id).await))
}

/// `POST /api/admin/send`: `{"pid": 1234, "message": "..."}` (the pid an integer or decimal
/// text) to one bot's admin queue and channel (seed 004); answers the message id and the pid.
async fn admin_send(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    use crate::actors::heartbeat::HeartbeatError;
    let request: AdminSendRequest = parse_json(&body)?;
    let pid = crate::actors::heartbeat::parse_pid(&request.pid)
        .map_err(|e| ApiError::bad_field("pid", e.to_string()))?;
    let id = state
        .fleet
        .admin()
        .send(&request.pid, &request.message)
        .await
        .map_err(|e| match e {
            HeartbeatError::InvalidPid(_) => ApiError::bad_field("pid", e.to_string()),
            HeartbeatError::MessageTooLarge { .. } => ApiError::bad_field("message", e.to_string()),
            HeartbeatError::Storage(_) => ApiError::Unavailable(format!("storage refused: {e}")),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "pid": pid })))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "error": format!("no such endpoint: {} {}", req.method(), req.path()),
        "field": null,
    }))
}
