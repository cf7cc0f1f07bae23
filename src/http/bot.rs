//! The bot-control endpoints of seed 001 (`/api/bot/...`): request types, their validation
//! (400 naming the field), the [`ApiError`] every handler answers with, and the [`BotApi`]
//! seam that serves them once the scheduler is wired in.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Task types of seed 001 (`bot:task:{id}` field `type`).
pub const TASK_TYPES: &[&str] = &[
    "login",
    "job_check",
    "job_accept",
    "job_reject",
    "navigation",
    "screenshot",
];

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

    /// The 501 of an endpoint served by the scheduler, before one is plugged in.
    pub fn needs_scheduler(endpoint: &str) -> Self {
        ApiError::NotImplemented(format!(
            "{endpoint} is not available: this daemon has no task scheduler wired into its HTTP API yet"
        ))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
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
    /// One of [`TASK_TYPES`].
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task's data: a JSON object (`{}` when absent).
    #[serde(default = "empty_object")]
    pub data: Value,
    /// [`PRIORITY_MIN`] to [`PRIORITY_MAX`]; higher runs first. Default 5.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Run no earlier than this many milliseconds from now (at most seven days). Default 0.
    #[serde(default)]
    pub delay_ms: u64,
}

fn empty_object() -> Value {
    json!({})
}

const fn default_priority() -> i64 {
    5
}

/// Query of `GET /api/bot/tasks`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only tasks in this status (one of [`TASK_STATUSES`]).
    #[serde(default)]
    pub status: Option<String>,
    /// At most this many (1 to 1000). Default 100.
    #[serde(default)]
    pub limit: Option<usize>,
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
    /// Refuses an unknown type, data that is not an object, a priority or delay out of range.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !TASK_TYPES.contains(&self.task_type.as_str()) {
            return Err(ApiError::bad_field(
                "type",
                format!(
                    "unknown task type {:?}: expected one of {}",
                    self.task_type,
                    TASK_TYPES.join(", ")
                ),
            ));
        }
        if !self.data.is_object() {
            return Err(ApiError::bad_field("data", "expected a JSON object"));
        }
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&self.priority) {
            return Err(ApiError::bad_field(
                "priority",
                format!(
                    "expected {PRIORITY_MIN} to {PRIORITY_MAX}, got {}",
                    self.priority
                ),
            ));
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

/// What serves the task, session and control endpoints of `/api/bot/` (the scheduler, once
/// merged). Requests arrive authenticated and validated. Every method defaults to 501, so an
/// implementation overrides what it serves; [`Unavailable`] overrides nothing.
///
/// Answers are JSON values written as they are, with status 200.
pub trait BotApi: Send + Sync + 'static {
    /// `POST /api/bot/start`: start a session (`bot:state`, `bot:sessions:active`).
    fn start(&self, request: StartRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = request;
        Box::pin(async { Err(ApiError::needs_scheduler("POST /api/bot/start")) })
    }

    /// `POST /api/bot/stop`: stop the running session.
    fn stop(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::needs_scheduler("POST /api/bot/stop")) })
    }

    /// `GET /api/bot/status`: the bot's state (`bot:state`).
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::needs_scheduler("GET /api/bot/status")) })
    }

    /// `GET /api/bot/sessions`: active sessions.
    fn sessions(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::needs_scheduler("GET /api/bot/sessions")) })
    }

    /// `GET /api/bot/tasks`: the queue (by status).
    fn tasks(&self, query: TaskListQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = query;
        Box::pin(async { Err(ApiError::needs_scheduler("GET /api/bot/tasks")) })
    }

    /// `POST /api/bot/tasks/add`: enqueue a task; answers its id.
    fn add_task(&self, request: AddTaskRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = request;
        Box::pin(async { Err(ApiError::needs_scheduler("POST /api/bot/tasks/add")) })
    }

    /// `GET /api/bot/events/{session_id}`: a session's events.
    fn events(&self, session_id: String) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = session_id;
        Box::pin(async {
            Err(ApiError::needs_scheduler(
                "GET /api/bot/events/{session_id}",
            ))
        })
    }

    /// `GET /api/bot/metrics/{session_id}`: a session's metrics (`bot:metrics:{id}`).
    fn metrics(&self, session_id: String) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = session_id;
        Box::pin(async {
            Err(ApiError::needs_scheduler(
                "GET /api/bot/metrics/{session_id}",
            ))
        })
    }

    /// The bot's part of `GET /api/bot/system-status` (`null` when there is none).
    fn system_status(&self) -> BoxFuture<'_, Value> {
        Box::pin(async { Value::Null })
    }
}

/// The [`BotApi`] of a daemon without a scheduler: every task endpoint answers 501.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl BotApi for Unavailable {}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<AddTaskRequest>(body.as_bytes()).and_then(|r| r.validate()) {
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
        r.validate().unwrap();
        assert_eq!(
            (r.task_type.as_str(), r.priority, r.delay_ms),
            ("job_check", 7, 0)
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
