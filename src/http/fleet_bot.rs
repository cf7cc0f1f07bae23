//! [`FleetBot`]: the [`BotApi`] that serves seed 001's `/api/bot/` endpoints from the fleet's
//! task scheduler (bot state, sessions, the task queue, events and metrics), in the seed's
//! Redis layout.
//!
//! - `start` moves the bot state `starting` -> `running` around a new session and records a
//!   `bot_started` event; a bot that already runs answers 409 with its state, nothing stored.
//! - `stop` moves `stopping` -> `stopped`, ends the session and records `bot_stopped`; a bot
//!   that does not run answers 409.
//! - A storage refusal (the fallback full, say) answers 503 naming what refused; a bad value
//!   the scheduler refuses answers 400 naming the field.
//! - The session, task and event listings answer the live data from Redis and add
//!   `archived`: a page of the history archive (`null` when `history.enabled` is false,
//!   `{"error": ...}` when its database cannot answer, so the live part still does).

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::bot::{AddTaskRequest, ApiError, ArchiveQuery, BotApi, StartRequest, TaskListQuery};
use crate::actors::history::{HistoryError, HistoryQuery, Page};
use crate::actors::scheduler::state::{BotState, EventType};
use crate::actors::scheduler::{
    default_priority, NewTask, Scheduler, SchedulerError, Task, TaskStatus,
};
use crate::clock::iso8601;
use crate::clock::now_ms;
use crate::fleet::Fleet;
use crate::storage::StorageError;

/// Default number of tasks `GET /api/bot/tasks` lists.
const DEFAULT_TASK_LIMIT: usize = 100;
/// Task hashes read at once when listing.
const READ_CONCURRENCY: usize = 16;
/// Statuses listed when a listing names none, in this order: what runs, what waits, what died.
const LISTED_BY_DEFAULT: [TaskStatus; 3] = [
    TaskStatus::Processing,
    TaskStatus::Pending,
    TaskStatus::Failed,
];

/// Serves `/api/bot/` from a [`Fleet`]'s scheduler. [`crate::http::HttpApi::builder`] installs
/// it by default.
#[derive(Debug, Clone)]
pub struct FleetBot {
    fleet: Fleet,
}

impl FleetBot {
    /// The bot API of `fleet`.
    pub fn new(fleet: Fleet) -> Self {
        Self { fleet }
    }

    fn scheduler(&self) -> Scheduler {
        self.fleet.scheduler()
    }
}

/// The answer to a scheduler error: 400 naming the field for a refused value, 409 for an
/// illegal state change, 503 when storage refused, 500 otherwise.
pub(crate) fn scheduler_error(e: SchedulerError) -> ApiError {
    match e {
        SchedulerError::InvalidType(_) => ApiError::bad_field("type", e.to_string()),
        SchedulerError::DataTooLarge { .. } | SchedulerError::DataNotJson(_) => {
            ApiError::bad_field("data", e.to_string())
        }
        SchedulerError::InvalidDelay { .. } => ApiError::bad_field("delay_ms", e.to_string()),
        SchedulerError::InvalidPriority(_) => ApiError::bad_field("priority", e.to_string()),
        SchedulerError::InvalidId(_) => ApiError::bad_field("id", e.to_string()),
        SchedulerError::Invalid { what, .. } => {
            ApiError::bad_field(&what.replace(' ', "_"), e.to_string())
        }
        SchedulerError::IllegalTransition { .. } => ApiError::Conflict(e.to_string()),
        SchedulerError::Storage(
            StorageError::MemoryFull { .. }
            | StorageError::OutboxFull { .. }
            | StorageError::Unavailable(_)
            | StorageError::File(_),
        ) => ApiError::Unavailable(format!("storage refused: {e}")),
        other => ApiError::Internal(other.to_string()),
    }
}

fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A task as the API shows it: the stored fields, `data` parsed back into JSON.
pub(crate) fn task_json(task: &Task) -> Value {
    let mut v = to_value(task);
    if let Some(obj) = v.as_object_mut() {
        let data = serde_json::from_str::<Value>(&task.data)
            .unwrap_or_else(|_| Value::String(task.data.clone()));
        obj.insert("data".into(), data);
        obj.insert("type".into(), Value::String(task.task_type.clone()));
        obj.remove("task_type");
    }
    v
}

/// Up to `limit` tasks in `statuses` (in that order), each read from its hash.
pub(crate) async fn list_tasks(
    scheduler: &Scheduler,
    statuses: &[TaskStatus],
    limit: usize,
) -> Result<Vec<Value>, SchedulerError> {
    let mut ids = Vec::new();
    for status in statuses {
        if ids.len() >= limit {
            break;
        }
        ids.extend(scheduler.list_first(*status, limit - ids.len()).await?);
    }
    let tasks: Vec<Option<Task>> = stream::iter(ids)
        .map(|id| async move { scheduler.get(&id).await })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    // A task may finish (and its hash expire) between the listing and the read.
    Ok(tasks.iter().flatten().map(task_json).collect())
}

/// The archive's query for an [`ArchiveQuery`] (its size: the listing's `limit`).
fn history_query(archive: &ArchiveQuery, limit: usize) -> HistoryQuery {
    let mut q = HistoryQuery::latest(archive.limit.unwrap_or(limit));
    if let Some(ms) = archive.since_ms {
        q = q.since(ms);
    }
    if let Some(ms) = archive.until_ms {
        q = q.until(ms);
    }
    if let Some(cursor) = &archive.cursor {
        q = q.after(cursor.clone());
    }
    q
}

/// The `archived` part of a listing: the page, `null` when the archive is off, or
/// `{"error": ...}` when the database cannot answer (the live part still does).
pub(crate) fn archived<T: serde::Serialize>(
    result: Result<Page<T>, HistoryError>,
) -> Result<Value, ApiError> {
    match result {
        Ok(page) => Ok(to_value(&page)),
        Err(HistoryError::Disabled) => Ok(Value::Null),
        Err(e @ HistoryError::Cursor(_)) => Err(ApiError::bad_field("cursor", e.to_string())),
        Err(e) => Ok(json!({ "error": e.to_string() })),
    }
}

fn session_json(fields: HashMap<String, String>) -> Value {
    let mut v = to_value(&fields);
    if let Some(obj) = v.as_object_mut() {
        for counter in ["total_checks", "total_accepted", "total_rejected"] {
            if let Some(n) = fields.get(counter).and_then(|s| s.parse::<i64>().ok()) {
                obj.insert(counter.into(), json!(n));
            }
        }
    }
    v
}

impl BotApi for FleetBot {
    fn start(&self, request: StartRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let name = request
                .session_name
                .unwrap_or_else(|| format!("session {}", iso8601(now_ms())));
            if let Err(e) = scheduler.set_bot_state(BotState::Starting, None).await {
                return Err(match e {
                    SchedulerError::IllegalTransition { from, .. } => ApiError::Conflict(format!(
                        "the bot is {from}: stop it before starting a new session"
                    )),
                    other => scheduler_error(other),
                });
            }
            let started = async {
                let id = scheduler.start_session(&name).await?;
                scheduler
                    .set_bot_state(BotState::Running, Some(&id))
                    .await?;
                scheduler
                    .record_event(&id, EventType::BotStarted, &json!({ "session_name": name }))
                    .await?;
                Ok::<_, SchedulerError>(id)
            }
            .await;
            match started {
                Ok(id) => Ok(json!({
                    "session_id": id,
                    "session_name": name,
                    "status": "running",
                })),
                Err(e) => {
                    // Leave a state a later start may leave again, not `starting` for ever.
                    let _ = scheduler.set_bot_state(BotState::Error, None).await;
                    Err(scheduler_error(e))
                }
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let current = scheduler.bot_state().await.map_err(scheduler_error)?;
            let session = current.as_ref().and_then(|c| c.session_id.clone());
            if let Err(e) = scheduler
                .set_bot_state(BotState::Stopping, session.as_deref())
                .await
            {
                return Err(match e {
                    SchedulerError::IllegalTransition { from, .. } => {
                        ApiError::Conflict(format!("the bot is {from}: there is nothing to stop"))
                    }
                    other => scheduler_error(other),
                });
            }
            let stopped = async {
                if let Some(id) = &session {
                    scheduler.end_session(id, "stopped").await?;
                    scheduler
                        .record_event(id, EventType::BotStopped, &json!({}))
                        .await?;
                }
                scheduler
                    .set_bot_state(BotState::Stopped, session.as_deref())
                    .await?;
                Ok::<_, SchedulerError>(())
            }
            .await;
            match stopped {
                Ok(()) => Ok(json!({ "session_id": session, "status": "stopped" })),
                Err(e) => {
                    let _ = scheduler
                        .set_bot_state(BotState::Error, session.as_deref())
                        .await;
                    Err(scheduler_error(e))
                }
            }
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let state = scheduler.bot_state().await.map_err(scheduler_error)?;
            let active = scheduler.active_sessions().await.map_err(scheduler_error)?;
            let counts = scheduler.counts().await.map_err(scheduler_error)?;
            Ok(json!({
                "state": state.as_ref().map(|s| s.state.as_str()).unwrap_or("stopped"),
                "record": state,
                "active_sessions": active,
                "queue": counts,
            }))
        })
    }

    fn sessions(&self, archive: ArchiveQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let active = scheduler.active_sessions().await.map_err(scheduler_error)?;
            let mut sessions = Vec::with_capacity(active.len());
            for id in &active {
                let fields = scheduler.session(id).await.map_err(scheduler_error)?;
                if !fields.is_empty() {
                    sessions.push(session_json(fields));
                }
            }
            let query = history_query(&archive, DEFAULT_TASK_LIMIT);
            let archived = archived(self.fleet.history().sessions(&query).await)?;
            Ok(json!({ "active": sessions, "count": sessions.len(), "archived": archived }))
        })
    }

    fn tasks(&self, query: TaskListQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let limit = query.limit.unwrap_or(DEFAULT_TASK_LIMIT);
            let statuses: Vec<TaskStatus> = match query.status.as_deref() {
                Some(s) => vec![TaskStatus::parse(s).ok_or_else(|| {
                    ApiError::bad_field("status", format!("unknown status {s:?}"))
                })?],
                None => LISTED_BY_DEFAULT.to_vec(),
            };
            let counts = scheduler.counts().await.map_err(scheduler_error)?;
            let tasks = list_tasks(&scheduler, &statuses, limit)
                .await
                .map_err(scheduler_error)?;
            let query = history_query(&query.archive, limit);
            let archived = archived(self.fleet.history().tasks(&query).await)?;
            Ok(json!({ "counts": counts, "tasks": tasks, "archived": archived }))
        })
    }

    fn add_task(&self, request: AddTaskRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let priority = request
                .priority
                .unwrap_or_else(|| default_priority(&request.task_type));
            let delay_ms = i64::try_from(request.delay_ms)
                .map_err(|_| ApiError::bad_field("delay_ms", "too large"))?;
            let task = NewTask::raw(&request.task_type, request.data.to_string())
                .priority(priority)
                .delay_ms(delay_ms);
            let id = self
                .scheduler()
                .enqueue(task)
                .await
                .map_err(scheduler_error)?;
            Ok(json!({
                "task_id": id,
                "type": request.task_type,
                "priority": priority,
                "status": "pending",
                "delay_ms": request.delay_ms,
            }))
        })
    }

    fn events(
        &self,
        session_id: String,
        archive: ArchiveQuery,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let all = scheduler
                .events(scheduler.settings().events_max_len)
                .await
                .map_err(scheduler_error)?;
            let events: Vec<Value> = all
                .iter()
                .filter(|e| e.session_id == session_id)
                .map(|e| {
                    let mut v = to_value(e);
                    v["data"] = serde_json::from_str(&e.data)
                        .unwrap_or_else(|_| Value::String(e.data.clone()));
                    v
                })
                .collect();
            let query = history_query(&archive, DEFAULT_TASK_LIMIT).session(session_id.clone());
            let archived = archived(self.fleet.history().events(&query).await)?;
            let none_archived = archived["items"].as_array().is_none_or(Vec::is_empty);
            if events.is_empty()
                && none_archived
                && scheduler
                    .session(&session_id)
                    .await
                    .map_err(scheduler_error)?
                    .is_empty()
            {
                return Err(ApiError::NotFound(format!("no session {session_id}")));
            }
            Ok(json!({ "session_id": session_id, "events": events, "archived": archived }))
        })
    }

    fn metrics(&self, session_id: String) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let metrics = self
                .scheduler()
                .metrics(&session_id)
                .await
                .map_err(scheduler_error)?;
            if metrics.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no metrics for session {session_id}"
                )));
            }
            Ok(json!({ "session_id": session_id, "metrics": session_json(metrics) }))
        })
    }

    fn system_status(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let scheduler = self.scheduler();
            let state = scheduler.bot_state().await.ok().flatten();
            let active = scheduler.active_sessions().await.map(|a| a.len()).ok();
            let counts = scheduler.counts().await.ok();
            json!({
                "state": state.as_ref().map(|s| s.state.as_str()).unwrap_or("stopped"),
                "session_id": state.and_then(|s| s.session_id),
                "active_sessions": active,
                "queue": counts,
                "workers": scheduler.stats(),
            })
        })
    }
}
