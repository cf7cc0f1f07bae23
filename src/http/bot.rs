//! The bot-control endpoints of seed 001 (`/api/bot/...`): request types, their validation
//! (400 naming the field), the [`ApiError`] every handler answers with, and the [`BotApi`]
//! seam that serves them ([`super::FleetBot`] by default, over the fleet's scheduler).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::settings::SchedulerSettings;

/// Task types of seed 001 (`bot:task:{id}` field `type`): the default of
/// `scheduler.task_types`, which decides what the API accepts.
pub const TASK_TYPES: &[&str] = crate::settings::DEFAULT_TASK_TYPES;

/// Task statuses of seed 001 (`bot:task:{id}` field `status`).
pub const TASK_STATUSES: &[&str] = &["pending", "processing", "completed", "failed"];

/// Lowest task priority accepted.
pub const PRIORITY_MIN: i64 = 0;
/// Highest task priority accepted (seed 001 uses 1 to 10).
pub const PRIORITY_MAX: i64 = 100;
/// Longest delay accepted for a task: seven days.
const DELAY_MAX_MS: u64 = 7 * 24 * 3_600_000;
/// Longest session name and id.
const NAME_MAX: usize = 200;
const ID_MAX: usize = 128;
/// Most tasks a listing returns.
const LIST_MAX: usize = 1_000;

/// What an API call answers instead of its result. Serialized as
/// `{"error": MESSAGE, "field": FIELD-or-null}` with the matching status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request is malformed or a value is out of range; names the field when one is
    /// to blame. Nothing was stored.
    #[error("{message}")]
    BadRequest {
        /// The field to blame (`a.b` for nested ones), if any.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// 404: no such session, task...
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (starting a bot that runs).
    /// Nothing was stored.
    #[error("{0}")]
    Conflict(String),
    /// 501: the endpoint exists but what serves it is not part of this build.
    #[error("{0}")]
    NotImplemented(String),
    /// 503: what serves it is not available now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 blaming `field`.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_owned()),
            message: format!("{field}: {}", message.into()),
        }
    }

    /// The query string of `req` as (key, value) pairs in order; a malformed one is a 400.
    pub(crate) fn query_pairs(
        req: &actix_web::HttpRequest,
    ) -> Result<Vec<(String, String)>, ApiError> {
        actix_web::web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(actix_web::web::Query::into_inner)
            .map_err(|e| ApiError::BadRequest {
                field: None,
                message: format!("invalid query string: {e}"),
            })
    }

    /// The 501 of an endpoint the installed [`BotApi`] does not serve.
    pub fn not_served(endpoint: &str) -> Self {
        ApiError::NotImplemented(format!(
            "{endpoint} is not available: this server's bot API does not serve it (no scheduler)"
        ))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let field = match self {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        HttpResponse::build(self.status_code())
            .json(json!({ "error": self.to_string(), "field": field }))
    }
}

/// Body of `POST /api/bot/start`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Name of the new session.
    #[serde(default)]
    pub session_name: Option<String>,
}

/// Body of `POST /api/bot/tasks/add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTaskRequest {
    /// One of `scheduler.task_types` (by default [`TASK_TYPES`]).
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task's data: a JSON object (`{}` when absent).
    #[serde(default = "empty_object")]
    pub data: Value,
    /// [`PRIORITY_MIN`] to [`PRIORITY_MAX`]; higher runs first. Default: the seed's priority
    /// of the type (login 10, job_accept and job_reject 8, navigation 7, job_check 5,
    /// screenshot 1).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Run no earlier than this many milliseconds from now (at most seven days). Default 0.
    #[serde(default)]
    pub delay_ms: u64,
}

fn empty_object() -> Value {
    json!({})
}

/// Query of `GET /api/bot/tasks`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only tasks in this status (one of [`TASK_STATUSES`]).
    #[serde(default)]
    pub status: Option<String>,
    /// At most this many (1 to 1000), live and archived each. Default 100.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The page of the archive's task attempts.
    #[serde(default)]
    pub archive: ArchiveQuery,
}

/// Which page of the history archive a listing adds to the live data: `since`, `until` (Unix
/// ms) and the `cursor` of the previous page (`archived.next_cursor`). Its size is the
/// listing's `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveQuery {
    /// Only rows at or after this time, Unix ms.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Only rows before this time, Unix ms.
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Where the page starts: the previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Rows per page (1 to 1000). Default 100.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ArchiveQuery {
    /// Takes `key=value` if it is one of `since`, `until`, `cursor`, `limit`; 400 naming the
    /// key for a bad value. Answers whether the key was one of them.
    pub(crate) fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
        let ms = |v: &str| {
            v.parse::<i64>().ok().filter(|ms| *ms >= 0).ok_or_else(|| {
                ApiError::bad_field(key, format!("expected Unix milliseconds, got {v:?}"))
            })
        };
        match key {
            "since" => self.since_ms = Some(ms(value)?),
            "until" => self.until_ms = Some(ms(value)?),
            "cursor" if value.is_empty() || value.len() > ID_MAX * 2 => {
                return Err(ApiError::bad_field(
                    "cursor",
                    "expected a next_cursor of a page",
                ));
            }
            "cursor" => self.cursor = Some(value.to_owned()),
            "limit" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=LIST_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            "limit",
                            format!("expected 1 to {LIST_MAX}, got {value:?}"),
                        )
                    })?;
                self.limit = Some(n);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Body of `POST /api/admin/send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSendRequest {
    /// The bot's process id: a JSON integer, or decimal text (as seed 004 passes it).
    #[serde(deserialize_with = "pid_text")]
    pub pid: String,
    /// The message.
    pub message: String,
}

/// A pid given as a JSON integer or as text, kept as text (checked by `parse_pid` after).
fn pid_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Pid {
        Number(u64),
        Text(String),
    }
    match Pid::deserialize(deserializer) {
        Ok(Pid::Number(n)) => Ok(n.to_string()),
        Ok(Pid::Text(text)) => Ok(text),
        Err(_) => Err(serde::de::Error::custom(
            "expected a positive integer or decimal text",
        )),
    }
}

impl StartRequest {
    /// Refuses an empty or overlong session name.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(name) = &self.session_name {
            if name.trim().is_empty() {
                return Err(ApiError::bad_field("session_name", "must not be empty"));
            }
            if name.chars().count() > NAME_MAX {
                return Err(ApiError::bad_field(
                    "session_name",
                    format!("at most {NAME_MAX} characters"),
                ));
            }
        }
        Ok(())
    }
}

impl AddTaskRequest {
    /// Refuses a type `scheduler.task_types` does not allow, data that is not an object, a
    /// priority or delay out of range.
    pub fn validate(&self, scheduler: &SchedulerSettings) -> Result<(), ApiError> {
        check_task_type("type", &self.task_type, scheduler)?;
        if !self.data.is_object() {
            return Err(ApiError::bad_field("data", "expected a JSON object"));
        }
        if let Some(priority) = self.priority {
            if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
                return Err(ApiError::bad_field(
                    "priority",
                    format!("expected {PRIORITY_MIN} to {PRIORITY_MAX}, got {priority}"),
                ));
            }
        }
        if self.delay_ms > DELAY_MAX_MS {
            return Err(ApiError::bad_field(
                "delay_ms",
                format!(
                    "expected at most {DELAY_MAX_MS} (seven days), got {}",
                    self.delay_ms
                ),
            ));
        }
        Ok(())
    }
}

impl TaskListQuery {
    /// Refuses an unknown status or a limit out of range.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(status) = &self.status {
            if !TASK_STATUSES.contains(&status.as_str()) {
                return Err(ApiError::bad_field(
                    "status",
                    format!(
                        "unknown status {status:?}: expected one of {}",
                        TASK_STATUSES.join(", ")
                    ),
                ));
            }
        }
        if let Some(limit) = self.limit {
            if !(1..=LIST_MAX).contains(&limit) {
                return Err(ApiError::bad_field(
                    "limit",
                    format!("expected 1 to {LIST_MAX}, got {limit}"),
                ));
            }
        }
        Ok(())
    }
}

/// Refuses a task type `scheduler.task_types` does not allow: 400 naming `field` and the
/// types allowed.
pub(crate) fn check_task_type(
    field: &str,
    task_type: &str,
    scheduler: &SchedulerSettings,
) -> Result<(), ApiError> {
    if scheduler.allows_task_type(task_type) {
        return Ok(());
    }
    let message = match crate::settings::task_type_problem(task_type) {
        Some(problem) if scheduler.open_task_types() => {
            format!("invalid task type {task_type:?}: {problem}")
        }
        _ => format!(
            "unknown task type {task_type:?}: expected one of {} (scheduler.task_types)",
            scheduler.task_types.join(", ")
        ),
    };
    Err(ApiError::bad_field(field, message))
}

/// Refuses a session id that is empty, too long or not `[A-Za-z0-9_.-]`.
pub(crate) fn validate_session_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= ID_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            "session_id",
            format!("expected 1 to {ID_MAX} characters among A-Z a-z 0-9 _ - ."),
        ))
    }
}

/// Parses a JSON body into `T`; a syntax error, a missing or unknown field or a wrong type
/// answers 400 naming the field (its path for nested ones).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            field: None,
            message: "a JSON object body is required".into(),
        });
    }
    // serde would read a struct from an array too: only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest {
            field: None,
            message: "malformed JSON: expected an object `{...}`".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if parsed.is_ok() {
        // Trailing characters after the object are malformed JSON too.
        de.end().map_err(|e| ApiError::BadRequest {
            field: None,
            message: format!("malformed JSON: {e}"),
        })?;
    }
    parsed.map_err(|err| {
        let inner = err.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest {
                field: None,
                message: format!("malformed JSON: {inner}"),
            };
        }
        let path = err.path().to_string();
        let message = inner.to_string();
        let field = if path != "." && !path.is_empty() {
            Some(path)
        } else {
            // `missing field `x``, `unknown field `x`, expected ...`: the field is quoted.
            message.split('`').nth(1).map(str::to_owned)
        };
        match field {
            Some(field) => ApiError::bad_field(&field, strip_position(&message)),
            None => ApiError::BadRequest {
                field: None,
                message: format!("invalid request: {}", strip_position(&message)),
            },
        }
    })
}

/// serde_json appends " at line L column C"; the field is a better locator.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// What serves the task, session and control endpoints of `/api/bot/`: [`super::FleetBot`]
/// (the fleet's scheduler) unless a host installs its own. Requests arrive authenticated and
/// validated. Every method defaults to 501, so an implementation overrides what it serves;
/// [`Unavailable`] overrides nothing.
///
/// Answers are JSON values written as they are, with status 200.
pub trait BotApi: Send + Sync + 'static {
    /// `POST /api/bot/start`: start a session (`bot:state`, `bot:sessions:active`).
    fn start(&self, request: StartRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = request;
        Box::pin(async { Err(ApiError::not_served("POST /api/bot/start")) })
    }

    /// `POST /api/bot/stop`: stop the running session.
    fn stop(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::not_served("POST /api/bot/stop")) })
    }

    /// `GET /api/bot/status`: the bot's state (`bot:state`).
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::not_served("GET /api/bot/status")) })
    }

    /// `GET /api/bot/sessions`: active sessions, and a page of the archived ones.
    fn sessions(&self, archive: ArchiveQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = archive;
        Box::pin(async { Err(ApiError::not_served("GET /api/bot/sessions")) })
    }

    /// `GET /api/bot/tasks`: the queue (by status).
    fn tasks(&self, query: TaskListQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = query;
        Box::pin(async { Err(ApiError::not_served("GET /api/bot/tasks")) })
    }

    /// `POST /api/bot/tasks/add`: enqueue a task; answers its id.
    fn add_task(&self, request: AddTaskRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = request;
        Box::pin(async { Err(ApiError::not_served("POST /api/bot/tasks/add")) })
    }

    /// `GET /api/bot/events/{session_id}`: a session's events, and a page of its archived
    /// ones.
    fn events(
        &self,
        session_id: String,
        archive: ArchiveQuery,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = (session_id, archive);
        Box::pin(async { Err(ApiError::not_served("GET /api/bot/events/{session_id}")) })
    }

    /// `GET /api/bot/metrics/{session_id}`: a session's metrics (`bot:metrics:{id}`).
    fn metrics(&self, session_id: String) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = session_id;
        Box::pin(async { Err(ApiError::not_served("GET /api/bot/metrics/{session_id}")) })
    }

    /// The bot's part of `GET /api/bot/system-status` (`null` when there is none).
    fn system_status(&self) -> BoxFuture<'_, Value> {
        Box::pin(async { Value::Null })
    }
}

/// A [`BotApi`] that serves nothing: every task endpoint answers 501 (for a host that exposes
/// health and metrics but no bot control).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl BotApi for Unavailable {}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        let settings = SchedulerSettings::default();
        match parse_json::<AddTaskRequest>(body.as_bytes()).and_then(|r| r.validate(&settings)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn bad_bodies_name_their_field() {
        assert_eq!(field_of(r#"{"data": {}}"#).as_deref(), Some("type"));
        assert_eq!(field_of(r#"{"type": "fly"}"#).as_deref(), Some("type"));
        assert_eq!(field_of(r#"{"type": 3}"#).as_deref(), Some("type"));
        assert_eq!(
            field_of(r#"{"type": "login", "priority": 101}"#).as_deref(),
            Some("priority")
        );
        assert_eq!(
            field_of(r#"{"type": "login", "priority": "high"}"#).as_deref(),
            Some("priority")
        );
        assert_eq!(
            field_of(r#"{"type": "login", "data": [1]}"#).as_deref(),
            Some("data")
        );
        assert_eq!(
            field_of(r#"{"type": "login", "colour": 1}"#).as_deref(),
            Some("colour")
        );
        assert_eq!(field_of(r#"{"type": "login""#), None);
        assert_eq!(field_of(r#"{"type": "login"} x"#), None);
    }

    #[test]
    fn a_good_body_passes() {
        let r: AddTaskRequest =
            parse_json(br#"{"type": "job_check", "data": {"a": 1}, "priority": 7}"#).unwrap();
        r.validate(&SchedulerSettings::default()).unwrap();
        assert_eq!(
            (r.task_type.as_str(), r.priority, r.delay_ms),
            ("job_check", Some(7), 0)
        );
    }

    #[test]
    fn session_ids_are_checked() {
        validate_session_id("5f0c-aa_1.b").unwrap();
        for bad in ["", "a b", "x/y", &"a".repeat(129)] {
            assert!(validate_session_id(bad).is_err(), "{bad:?}");
        }
    }
}
