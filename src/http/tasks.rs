//! The task API under `/api/tasks`: add and read tasks, the worker protocol for workers in any
//! language (claim with a long poll, extend, complete, fail, each under the lease the claim
//! handed out), and the dead letters and delayed tasks an operator acts on.
//!
//! Everything goes through the fleet's [`Scheduler`] (the lease calls are described in
//! `botfleet::actors::scheduler`'s `lease` module): tasks claimed here are reaped, retried and
//! dead-lettered exactly as those of in-process handlers, and the calls work during a Redis
//! outage on the same terms.
//!
//! - Bodies are parsed strictly (unknown fields refused) and checked before anything is
//!   stored: 400 naming the field. Task types are those `scheduler.task_types` allows.
//! - A claim waits up to `wait_ms` (at most 60 s): it answers as soon as a task is enqueued
//!   in this daemon, and otherwise tries again every `scheduler.poll_interval_ms` (100 ms by
//!   default), so a task added by another process or falling due is seen within that bound.
//!   A server that stops ends the waiting claims with an empty list.
//! - extend, complete and fail answer 409 when the lease is no longer the task's (its attempt
//!   finished, or was reaped after its deadline and perhaps claimed again): nothing changed.
//!   404 when there is no such task (never added, or completed and its hash gone).
//! - A claim's `report` list, or `POST /api/tasks/report` alone, carries finished attempts
//!   (completes and fails, at most [`REPORT_MAX`]), applied in the claim's scheduler step
//!   (the report alone: at the desk, with the other leaseholders' operations); each entry is answered in `reported` as its single call would be, a refused one
//!   (400, 404, 409) with its status, without stopping the others or the claim. A list that
//!   is not one or is too long is a 400 naming `report`, nothing applied.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::bot::{check_task_type, parse_json, ApiError};
use super::fleet_bot::{archived, list_tasks, scheduler_error, task_json};
use super::AppState;
use crate::actors::scheduler::{
    default_priority, ClaimOptions, ClaimedTask, LeaseReport, NewTask, ReportOutcome, Scheduler,
    SchedulerError, TaskStatus, ANY_TYPE, MAX_ERROR_BYTES, MAX_ID_BYTES, MAX_PRIORITY,
};

/// Most tasks one claim takes.
pub const CLAIM_MAX: usize = 100;
/// Most finished attempts one claim or report carries.
pub const REPORT_MAX: usize = 1_000;
/// Longest wait of a claim, milliseconds.
pub const WAIT_MAX_MS: u64 = 60_000;
/// Shortest lease a claim or an extension asks for, milliseconds.
pub const LEASE_MIN_MS: u64 = 100;
/// Longest lease a claim or an extension asks for, milliseconds (one day).
pub const LEASE_MAX_MS: u64 = 86_400_000;
/// How often a waiting claim writes a space, to notice a client gone away.
const WAIT_BEAT: std::time::Duration = std::time::Duration::from_millis(250);
/// Most types one claim names.
const TYPES_MAX: usize = 100;
/// Most ids one retry of dead letters names.
const RETRY_IDS_MAX: usize = 1_000;
/// Longest lease token accepted (the ones handed out have 32 characters).
const LEASE_MAX_BYTES: usize = 128;
/// Default and largest `limit` of the listings.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1_000;
/// Most attempts a task may be given.
const ATTEMPTS_MAX: u32 = 1_000;
/// Ids that would read as another route under `/api/tasks/`.
const RESERVED_IDS: &[&str] = &["claim", "dead", "delayed", "report"];

/// Registers the task routes, each with its full path. The router tries them in this order,
/// one regular expression per route with a `{...}` segment: the worker protocol's routes come
/// first (each task costs one complete or fail), and the fixed paths `dead` and `delayed`
/// before `{id}`.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/tasks/claim", web::post().to(claim))
        .route("/api/tasks/report", web::post().to(report))
        .route("/api/tasks/{id}/complete", web::post().to(complete))
        .route("/api/tasks/{id}/fail", web::post().to(fail))
        .route("/api/tasks/{id}/extend", web::post().to(extend))
        .route("/api/tasks", web::post().to(add))
        .route("/api/tasks/dead", web::get().to(dead))
        .route("/api/tasks/dead/retry", web::post().to(retry_dead))
        .route("/api/tasks/dead/{id}", web::delete().to(delete_dead))
        .route("/api/tasks/delayed", web::get().to(delayed))
        .route("/api/tasks/delayed/{id}/promote", web::post().to(promote))
        .route("/api/tasks/{id}", web::get().to(get));
}

/// Body of `POST /api/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default = "empty_object")]
    data: Value,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    id: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// Body of `POST /api/tasks/claim`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    types: Vec<String>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    lease_ms: Option<u64>,
    /// Finished attempts to apply before the claim (checked entry by entry).
    #[serde(default)]
    report: Option<Value>,
}

/// Body of `POST /api/tasks/report`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    report: Value,
}

/// One entry of a `report` list: a complete (`result`) or a fail (`error`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportEntry {
    id: String,
    lease: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

/// Body of `POST /api/tasks/{id}/extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    lease: String,
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// Body of `POST /api/tasks/{id}/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    lease: String,
    #[serde(default)]
    result: Option<Value>,
}

/// Body of `POST /api/tasks/{id}/fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    lease: String,
    error: String,
}

/// Body of `POST /api/tasks/dead/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: Option<bool>,
}

fn scheduler(state: &AppState) -> Scheduler {
    state.fleet.scheduler()
}

/// Refuses an id that is empty, longer than 128 bytes or holds whitespace or control
/// characters: 400 naming `field`.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > MAX_ID_BYTES
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_field(
            field,
            format!("expected 1 to {MAX_ID_BYTES} bytes without whitespace"),
        ));
    }
    Ok(())
}

/// The path's task id, checked.
fn path_id(path: web::Path<String>) -> Result<String, ApiError> {
    let id = path.into_inner();
    check_id("id", &id)?;
    Ok(id)
}

fn check_lease(lease: &str) -> Result<(), ApiError> {
    if lease.is_empty() || lease.len() > LEASE_MAX_BYTES {
        return Err(ApiError::bad_field(
            "lease",
            "expected the lease a claim answered",
        ));
    }
    Ok(())
}

fn lease_ms(state: &AppState, given: Option<u64>) -> Result<u64, ApiError> {
    let ms = given.unwrap_or(state.fleet.settings().scheduler.visibility_timeout_ms);
    if !(LEASE_MIN_MS..=LEASE_MAX_MS).contains(&ms) {
        return Err(ApiError::bad_field(
            "lease_ms",
            format!("expected {LEASE_MIN_MS} to {LEASE_MAX_MS}, got {ms}"),
        ));
    }
    Ok(ms)
}

/// The answer to a scheduler error of a leaseholder's call: 404 no such task, 409 stale lease.
fn lease_error(e: SchedulerError) -> ApiError {
    match e {
        SchedulerError::NoSuchTask(_) => ApiError::NotFound(e.to_string()),
        SchedulerError::StaleLease { .. } => ApiError::Conflict(e.to_string()),
        other => scheduler_error(other),
    }
}

/// The `limit` of a listing's query string (1 to 1000, default 100); any other parameter is a
/// 400.
fn limit_query(req: &HttpRequest) -> Result<usize, ApiError> {
    let pairs =
        web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map_err(|e| {
            ApiError::BadRequest {
                field: None,
                message: format!("invalid query string: {e}"),
            }
        })?;
    let mut limit = LIST_DEFAULT;
    for (key, value) in pairs.into_inner() {
        if key != "limit" {
            return Err(ApiError::bad_field(
                &key,
                "unknown parameter: expected limit",
            ));
        }
        limit = value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIST_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_field("limit", format!("expected 1 to {LIST_MAX}, got {value:?}"))
            })?;
    }
    Ok(limit)
}

/// A read's answer with `"stale"` and `"as_of_ms"` (from last-known state during an outage).
fn fresh(state: &AppState, mut value: Value) -> HttpResponse {
    let freshness = state.fleet.storage().freshness();
    value["stale"] = json!(freshness.stale);
    value["as_of_ms"] = json!(freshness.as_of_ms);
    HttpResponse::Ok().json(value)
}

/// `POST /api/tasks`: 201 `{"id"}` (200 when a task with the given id exists: nothing
/// changed).
async fn add(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: AddRequest = parse_json(&body)?;
    let settings = &state.fleet.settings().scheduler;
    check_task_type("type", &request.task_type, settings)?;
    let data = request.data.to_string();
    if data.len() > settings.max_data_bytes {
        return Err(ApiError::bad_field(
            "data",
            format!(
                "{} bytes, more than scheduler.max_data_bytes ({})",
                data.len(),
                settings.max_data_bytes
            ),
        ));
    }
    let priority = request
        .priority
        .unwrap_or_else(|| default_priority(&request.task_type));
    if priority.abs() > MAX_PRIORITY {
        return Err(ApiError::bad_field(
            "priority",
            format!("expected -{MAX_PRIORITY} to {MAX_PRIORITY}, got {priority}"),
        ));
    }
    let delay_ms = request.delay_ms.unwrap_or(0);
    if delay_ms > settings.max_delay_ms {
        return Err(ApiError::bad_field(
            "delay_ms",
            format!(
                "expected 0 to {} (scheduler.max_delay_ms), got {delay_ms}",
                settings.max_delay_ms
            ),
        ));
    }
    if let Some(attempts) = request.max_attempts {
        if !(1..=ATTEMPTS_MAX).contains(&attempts) {
            return Err(ApiError::bad_field(
                "max_attempts",
                format!("expected 1 to {ATTEMPTS_MAX}, got {attempts}"),
            ));
        }
    }
    let mut task = NewTask::raw(&request.task_type, data)
        .priority(priority)
        .delay_ms(delay_ms as i64);
    if let Some(id) = &request.id {
        check_id("id", id)?;
        if RESERVED_IDS.contains(&id.as_str()) {
            return Err(ApiError::bad_field(
                "id",
                format!("{id:?} is reserved (a route under /api/tasks/)"),
            ));
        }
        task = task.id(id);
    }
    if let Some(attempts) = request.max_attempts {
        task = task.max_attempts(attempts);
    }
    let (id, added) = scheduler(&state)
        .enqueue_new(task)
        .await
        .map_err(scheduler_error)?;
    let body = json!({ "id": id });
    Ok(if added {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

/// Attempts of a task `GET /api/tasks/{id}?history=true` adds from the archive, newest first.
const TASK_HISTORY_ROWS: usize = 20;

/// `GET /api/tasks/{id}[?history=true]`: the task; with `history=true`, also `history`: its
/// newest attempts in the archive (`null` when the archive is off).
async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    let mut with_history = false;
    let pairs = ApiError::query_pairs(&req)?;
    for (key, value) in pairs {
        match (key.as_str(), value.as_str()) {
            ("history", "true") => with_history = true,
            ("history", "false") => with_history = false,
            ("history", other) => {
                return Err(ApiError::bad_field(
                    "history",
                    format!("expected true or false, got {other:?}"),
                ))
            }
            (other, _) => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter: expected history",
                ))
            }
        }
    }
    let task = scheduler(&state)
        .get(&id)
        .await
        .map_err(scheduler_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))?;
    let mut value = task_json(&task);
    if with_history {
        let query = crate::actors::history::HistoryQuery::latest(TASK_HISTORY_ROWS).task(&id);
        value["history"] = archived(state.fleet.history().tasks(&query).await)?;
    }
    Ok(fresh(&state, value))
}

/// An entry of a `report` list: its `id` as given (null when missing) and the report, or why
/// it is refused.
type CheckedReport = (Value, Result<LeaseReport, ApiError>);

/// A `report` list: the entries, each checked alone (a bad entry is its own 400, the others
/// still apply). The list as a whole must be an array of at most [`REPORT_MAX`] entries:
/// otherwise 400 naming `report`, nothing applied.
fn parse_reports(state: &AppState, list: Value) -> Result<Vec<CheckedReport>, ApiError> {
    let Value::Array(entries) = list else {
        return Err(ApiError::bad_field(
            "report",
            "expected a list of {\"id\", \"lease\", \"result\"?} or {\"id\", \"lease\", \"error\"}",
        ));
    };
    if entries.len() > REPORT_MAX {
        return Err(ApiError::bad_field(
            "report",
            format!("{} entries, more than {REPORT_MAX}", entries.len()),
        ));
    }
    let max_data = state.fleet.settings().scheduler.max_data_bytes;
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let id = entry.get("id").filter(|v| v.is_string()).cloned();
            (id.unwrap_or(Value::Null), report_entry(i, entry, max_data))
        })
        .collect())
}

/// Entry `i` of a `report` list, checked as its single call would be (400 naming
/// `report[i].FIELD`).
fn report_entry(i: usize, entry: Value, max_data: usize) -> Result<LeaseReport, ApiError> {
    let field = |name: &str| format!("report[{i}].{name}");
    let bad = |name: &str, message: String| ApiError::bad_field(&field(name), message);
    if !entry.is_object() {
        return Err(ApiError::bad_field(
            &format!("report[{i}]"),
            "expected an object {\"id\", \"lease\", ...}",
        ));
    }
    let entry: ReportEntry = serde_json::from_value(entry).map_err(|e| ApiError::BadRequest {
        field: Some(format!("report[{i}]")),
        message: e.to_string(),
    })?;
    check_id(&field("id"), &entry.id)?;
    if entry.lease.is_empty() || entry.lease.len() > LEASE_MAX_BYTES {
        return Err(bad("lease", "expected the lease a claim answered".into()));
    }
    match (entry.result, entry.error) {
        (Some(_), Some(_)) => Err(bad(
            "error",
            "give a result (completed) or an error (failed), not both".into(),
        )),
        (result, None) => {
            let result = result.as_ref().map(Value::to_string);
            if let Some(text) = &result {
                if text.len() > max_data {
                    return Err(bad(
                        "result",
                        format!(
                            "{} bytes, more than scheduler.max_data_bytes ({max_data})",
                            text.len()
                        ),
                    ));
                }
            }
            Ok(LeaseReport::Complete {
                id: entry.id,
                lease: entry.lease,
                result,
            })
        }
        (None, Some(error)) => {
            if error.len() > MAX_ERROR_BYTES {
                return Err(bad(
                    "error",
                    format!(
                        "{} bytes, more than {MAX_ERROR_BYTES}: send the end of it",
                        error.len()
                    ),
                ));
            }
            Ok(LeaseReport::Fail {
                id: entry.id,
                lease: entry.lease,
                error,
            })
        }
    }
}

/// The entries of a `report` list that passed their checks, in order.
fn valid_reports(entries: &[CheckedReport]) -> Vec<LeaseReport> {
    entries
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect()
}

/// One outcome per entry of a `report` list, in order, from the scheduler's results for its
/// valid entries: `{"id", "status", "retry_at_ms"?}` as the single call answers, or `{"id",
/// "error": {"status", "message", "field"}}` with the status it would have had alone.
fn answer_reports(
    entries: Vec<CheckedReport>,
    applied: Vec<Result<ReportOutcome, SchedulerError>>,
) -> Vec<Value> {
    let mut applied = applied.into_iter();
    entries
        .into_iter()
        .map(|(id, checked)| {
            let outcome = checked.and_then(|_| {
                applied
                    .next()
                    .unwrap_or_else(|| {
                        // The scheduler answers one result per report.
                        Err(SchedulerError::Storage(
                            crate::storage::StorageError::Unavailable("no reply".into()),
                        ))
                    })
                    .map_err(lease_error)
            });
            match outcome {
                Ok(ReportOutcome::Completed) => {
                    json!({ "id": id, "status": TaskStatus::Completed.as_str() })
                }
                Ok(ReportOutcome::Failed(failed)) => json!({
                    "id": id,
                    "status": if failed.dead { TaskStatus::Failed } else { TaskStatus::Pending }.as_str(),
                    "retry_at_ms": failed.retry_at_ms,
                }),
                Err(e) => {
                    use actix_web::ResponseError;
                    let field = match &e {
                        ApiError::BadRequest { field, .. } => field.clone(),
                        _ => None,
                    };
                    json!({ "id": id, "error": {
                        "status": e.status_code().as_u16(),
                        "message": e.to_string(),
                        "field": field,
                    }})
                }
            }
        })
        .collect()
}

/// `POST /api/tasks/report`: `{"reported": [...]}`, one outcome per entry.
async fn report(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: ReportRequest = parse_json(&body)?;
    let entries = parse_reports(&state, request.report)?;
    // At the desk with the other leaseholders' operations: one step carries them all.
    let applied = scheduler(&state)
        .report_leases(&valid_reports(&entries))
        .await;
    let reported = answer_reports(entries, applied);
    Ok(HttpResponse::Ok().json(json!({ "reported": reported })))
}

fn claimed_json(c: &ClaimedTask) -> Value {
    let data = serde_json::from_str::<Value>(&c.task.data)
        .unwrap_or_else(|_| Value::String(c.task.data.clone()));
    json!({
        "id": c.task.id,
        "type": c.task.task_type,
        "data": data,
        "priority": c.task.priority,
        "attempt": c.attempt,
        "max_attempts": c.max_attempts,
        "lease": c.lease,
        "deadline_ms": c.deadline_ms,
    })
}

/// `POST /api/tasks/claim`: `{"tasks": [...]}`, empty when none came within `wait_ms`.
async fn claim(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: ClaimRequest = parse_json(&body)?;
    let settings = &state.fleet.settings().scheduler;
    if request.types.is_empty() || request.types.len() > TYPES_MAX {
        return Err(ApiError::bad_field(
            "types",
            format!("expected 1 to {TYPES_MAX} task types"),
        ));
    }
    for t in &request.types {
        if t == ANY_TYPE {
            if !settings.open_task_types() {
                return Err(ApiError::bad_field(
                    "types",
                    format!(
                        "\"*\" needs scheduler.task_types = [\"*\"]; expected some of {}",
                        settings.task_types.join(", ")
                    ),
                ));
            }
        } else {
            check_task_type("types", t, settings)?;
        }
    }
    let max = request.max.unwrap_or(1);
    if !(1..=CLAIM_MAX).contains(&max) {
        return Err(ApiError::bad_field(
            "max",
            format!("expected 1 to {CLAIM_MAX}, got {max}"),
        ));
    }
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MAX_MS {
        return Err(ApiError::bad_field(
            "wait_ms",
            format!("expected 0 to {WAIT_MAX_MS}, got {wait_ms}"),
        ));
    }
    let mut options = ClaimOptions {
        types: request.types,
        max,
        lease_ms: lease_ms(&state, request.lease_ms)?,
        wait: std::time::Duration::ZERO,
    };
    let entries = match request.report {
        Some(list) => Some(parse_reports(&state, list)?),
        None => None,
    };
    let scheduler = scheduler(&state);
    let answer = move |tasks: Vec<Value>, reported: Option<Vec<Value>>| match reported {
        Some(reported) => json!({ "tasks": tasks, "reported": reported }),
        None => json!({ "tasks": tasks }),
    };
    // The finished attempts and the first claim attempt in one step.
    let (claimed, reported) = match entries {
        Some(entries) => {
            let (applied, claimed) = scheduler
                .claim_reporting(&options, &valid_reports(&entries))
                .await;
            (claimed, Some(answer_reports(entries, applied)))
        }
        None => (scheduler.claim(&options).await, None),
    };
    let claimed = match claimed {
        Ok(claimed) => claimed,
        // The outcomes of the reports must reach the worker, which claims again.
        Err(e) if reported.is_some() => {
            tracing::warn!(error = %e, "a claim carrying reports failed; answering no task");
            Vec::new()
        }
        Err(e) => return Err(scheduler_error(e)),
    };
    if !claimed.is_empty() || wait_ms == 0 {
        let tasks: Vec<Value> = claimed.iter().map(claimed_json).collect();
        return Ok(HttpResponse::Ok().json(answer(tasks, reported)));
    }
    // Nothing yet: wait in the response body, writing a space (JSON allows whitespace before
    // the value) every WAIT_BEAT. A client gone away (a timeout, a Ctrl-C) is noticed at the
    // next write or the one after, and the server then drops the body and the wait with it,
    // so that no task is claimed for a client that will never read it. What goes wrong while
    // waiting answers an empty list (the status is sent): the client claims again.
    options.wait = std::time::Duration::from_millis(wait_ms);
    let mut shutdown = state.shutdown.clone();
    let claimed: ClaimFuture = Box::pin(async move {
        let stopping = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        match scheduler.claim_until(&options, stopping).await {
            Ok(claimed) => claimed.iter().map(claimed_json).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "a waiting claim failed; answering no task");
                Vec::new()
            }
        }
    });
    let beat = tokio::time::interval_at(tokio::time::Instant::now() + WAIT_BEAT, WAIT_BEAT);
    let body = futures::stream::unfold(
        Some((claimed, beat, reported)),
        move |waiting| async move {
            let (mut claimed, mut beat, mut reported) = waiting?;
            tokio::select! {
                tasks = &mut claimed => {
                    let body = Bytes::from(answer(tasks, reported.take()).to_string());
                    Some((Ok::<_, actix_web::Error>(body), None))
                }
                _ = beat.tick() => Some((Ok(Bytes::from_static(b" ")), Some((claimed, beat, reported)))),
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

/// A waiting claim: the tasks it answers, as JSON.
type ClaimFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Value>>>>;

/// `POST /api/tasks/{id}/extend`: `{"deadline_ms"}`.
async fn extend(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    let request: ExtendRequest = parse_json(&body)?;
    check_lease(&request.lease)?;
    let ms = lease_ms(&state, request.lease_ms)?;
    let deadline_ms = scheduler(&state)
        .extend_lease(&id, &request.lease, ms)
        .await
        .map_err(lease_error)?;
    Ok(HttpResponse::Ok().json(json!({ "deadline_ms": deadline_ms })))
}

/// `POST /api/tasks/{id}/complete`: `{"status": "completed"}`.
async fn complete(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    let request: CompleteRequest = parse_json(&body)?;
    check_lease(&request.lease)?;
    let result = request.result.as_ref().map(Value::to_string);
    let max = state.fleet.settings().scheduler.max_data_bytes;
    if let Some(text) = &result {
        if text.len() > max {
            return Err(ApiError::bad_field(
                "result",
                format!(
                    "{} bytes, more than scheduler.max_data_bytes ({max})",
                    text.len()
                ),
            ));
        }
    }
    scheduler(&state)
        .complete_lease(&id, &request.lease, result.as_deref())
        .await
        .map_err(lease_error)?;
    Ok(HttpResponse::Ok().json(json!({ "status": TaskStatus::Completed.as_str() })))
}

/// `POST /api/tasks/{id}/fail`: `{"status": "pending"|"failed", "retry_at_ms"}`.
async fn fail(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    let request: FailRequest = parse_json(&body)?;
    check_lease(&request.lease)?;
    if request.error.len() > MAX_ERROR_BYTES {
        return Err(ApiError::bad_field(
            "error",
            format!(
                "{} bytes, more than {MAX_ERROR_BYTES}: send the end of it",
                request.error.len()
            ),
        ));
    }
    let failed = scheduler(&state)
        .fail_lease(&id, &request.lease, &request.error)
        .await
        .map_err(lease_error)?;
    let status = if failed.dead {
        TaskStatus::Failed
    } else {
        TaskStatus::Pending
    };
    Ok(HttpResponse::Ok().json(json!({
        "status": status.as_str(),
        "retry_at_ms": failed.retry_at_ms,
    })))
}

/// `GET /api/tasks/dead?limit=N`: `{"tasks", "total"}`, first dead first.
async fn dead(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let limit = limit_query(&req)?;
    let scheduler = scheduler(&state);
    let total = scheduler.counts().await.map_err(scheduler_error)?.dead;
    let tasks = list_tasks(&scheduler, &[TaskStatus::Failed], limit)
        .await
        .map_err(scheduler_error)?;
    Ok(fresh(&state, json!({ "tasks": tasks, "total": total })))
}

/// `POST /api/tasks/dead/retry`: `{"retried"}`.
async fn retry_dead(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: RetryRequest = parse_json(&body)?;
    let scheduler = scheduler(&state);
    let retried = match (request.ids, request.all) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "all",
                "give either ids or all, not both",
            ))
        }
        (None, Some(true)) => scheduler.retry_all_dead().await,
        (None, Some(false)) => {
            return Err(ApiError::bad_field(
                "all",
                "expected true (or name the ids)",
            ))
        }
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > RETRY_IDS_MAX {
                return Err(ApiError::bad_field(
                    "ids",
                    format!("expected 1 to {RETRY_IDS_MAX} ids"),
                ));
            }
            for id in &ids {
                check_id("ids", id)?;
            }
            scheduler.retry_dead(&ids).await
        }
        (None, None) => {
            return Err(ApiError::bad_field(
                "ids",
                "expected {\"ids\": [...]} or {\"all\": true}",
            ))
        }
    }
    .map_err(scheduler_error)?;
    Ok(HttpResponse::Ok().json(json!({ "retried": retried })))
}

/// `DELETE /api/tasks/dead/{id}`: `{"deleted": true}`; 404 when it is not a dead letter.
async fn delete_dead(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    if !scheduler(&state)
        .delete_dead(&id)
        .await
        .map_err(scheduler_error)?
    {
        return Err(ApiError::NotFound(format!("no dead letter {id}")));
    }
    Ok(HttpResponse::Ok().json(json!({ "deleted": true })))
}

/// `GET /api/tasks/delayed?limit=N`: `{"tasks", "total"}`, soonest due first.
async fn delayed(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let limit = limit_query(&req)?;
    let scheduler = scheduler(&state);
    let total = scheduler.counts().await.map_err(scheduler_error)?.delayed;
    let ids = scheduler
        .delayed_ids(limit)
        .await
        .map_err(scheduler_error)?;
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        // A task may be promoted (and claimed, and completed) between the listing and the read.
        if let Some(task) = scheduler.get(&id).await.map_err(scheduler_error)? {
            tasks.push(task_json(&task));
        }
    }
    Ok(fresh(&state, json!({ "tasks": tasks, "total": total })))
}

/// `POST /api/tasks/delayed/{id}/promote`: `{"promoted": true}`; 404 when it is not delayed.
async fn promote(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path)?;
    if !scheduler(&state)
        .promote(&id)
        .await
        .map_err(scheduler_error)?
    {
        return Err(ApiError::NotFound(format!("no delayed task {id}")));
    }
    Ok(HttpResponse::Ok().json(json!({ "promoted": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        check_id("id", "0190-ab_c.d:e").unwrap();
        for bad in ["", "a b", "a\tb", "x\u{7}", &"a".repeat(MAX_ID_BYTES + 1)] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
    }
}
