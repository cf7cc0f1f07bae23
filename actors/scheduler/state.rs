//! Bot state, sessions, metrics and events in the seed's layout: `PREFIX:state`,
//! `PREFIX:sessions:active`, `PREFIX:session:ID`, `PREFIX:metrics:ID`, `PREFIX:events`.
//!
//! Bot state: `PREFIX:state` (`state`, `session_id`, `timestamp`, `updated_by`) moves only
//! along the seed's lifecycle ([`BotState::legal_from`]), checked and written in one script
//! (`bot-state`); any other change is [`SchedulerError::IllegalTransition`], nothing stored.
//!
//! | to | from |
//! |---|---|
//! | `starting` | none, `stopped`, `error` |
//! | `running` | `starting` |
//! | `stopping` | `starting`, `running` |
//! | `stopped` | none, `stopping`, `error` |
//! | `error` | `starting`, `running`, `stopping` |
//!
//! Sessions: [`Scheduler::start_session`] writes `PREFIX:session:ID` with the seed's fields
//! (status `running`, counters at 0), its `PREFIX:metrics:ID`, and adds the id to
//! `PREFIX:sessions:active`; [`Scheduler::end_session`] sets the status and removes it from
//! the set. [`Scheduler::count`] raises a counter in the session and its metrics in one script
//! (`session-count`). With a history sink on, a session is archived at its start, and again
//! with every field when it ends (read on a spawned task, off the caller's path).
//!
//! Events: [`Scheduler::record_event`] pushes the event's JSON at the head of `PREFIX:events`
//! and trims the list to `scheduler.events_max_len` in one script (`bot-event`), then publishes
//! the same JSON on `scheduler.events_channel` through the storage, so that subscribers of
//! this process hear it during an outage too; with a sink on, the event is archived.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ids::new_task_id;
use super::scripts::scripts;
use super::{Scheduler, SchedulerError};
use crate::actors::history::{EventRecord, Record, SessionRecord};
use crate::clock::iso8601;
use crate::clock::now_ms;
use crate::storage::{Reply, Subscription};

/// The archive's record of an ended session from its hash (`ended_ms`: when it ended).
fn session_record(id: &str, fields: HashMap<String, String>, ended_ms: i64) -> SessionRecord {
    let started_ms = fields
        .get("start_time")
        .and_then(|t| crate::clock::parse_ms(t))
        .unwrap_or(ended_ms);
    SessionRecord {
        id: id.to_string(),
        name: fields.get("session_name").cloned().unwrap_or_default(),
        status: fields.get("status").cloned().unwrap_or_default(),
        started_ms,
        ended_ms: Some(ended_ms),
        updated_ms: ended_ms,
        fields: fields.into_iter().collect(),
    }
}

/// The seed's bot states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    /// Starting up.
    Starting,
    /// Running.
    Running,
    /// Shutting down.
    Stopping,
    /// Stopped.
    Stopped,
    /// Failed.
    Error,
}

impl BotState {
    /// The seed's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Starting => "starting",
            BotState::Running => "running",
            BotState::Stopping => "stopping",
            BotState::Stopped => "stopped",
            BotState::Error => "error",
        }
    }

    /// Parses the seed's name.
    pub fn parse(s: &str) -> Result<BotState, SchedulerError> {
        Ok(match s {
            "starting" => BotState::Starting,
            "running" => BotState::Running,
            "stopping" => BotState::Stopping,
            "stopped" => BotState::Stopped,
            "error" => BotState::Error,
            other => return Err(SchedulerError::UnknownState(other.to_string())),
        })
    }

    /// The states this one may follow (`None`: no state recorded yet).
    pub fn legal_from(self) -> &'static [Option<BotState>] {
        use BotState::*;
        match self {
            Starting => &[None, Some(Stopped), Some(Error)],
            Running => &[Some(Starting)],
            Stopping => &[Some(Starting), Some(Running)],
            Stopped => &[None, Some(Stopping), Some(Error)],
            Error => &[Some(Starting), Some(Running), Some(Stopping)],
        }
    }
}

/// `PREFIX:state` as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BotStateRecord {
    /// State.
    pub state: BotState,
    /// Session the state belongs to.
    pub session_id: Option<String>,
    /// Time of the change, ISO-8601.
    pub timestamp: String,
    /// Who changed it.
    pub updated_by: String,
}

/// The counters of a session (and of its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `total_checks`.
    Checks,
    /// `total_accepted`.
    Accepted,
    /// `total_rejected`.
    Rejected,
}

impl Counter {
    /// The seed's field name.
    pub fn field(self) -> &'static str {
        match self {
            Counter::Checks => "total_checks",
            Counter::Accepted => "total_accepted",
            Counter::Rejected => "total_rejected",
        }
    }
}

/// The seed's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// `bot_started`.
    BotStarted,
    /// `login_success`.
    LoginSuccess,
    /// `job_found`.
    JobFound,
    /// `job_accepted`.
    JobAccepted,
    /// `job_rejected`.
    JobRejected,
    /// `bot_stopped`.
    BotStopped,
}

/// One entry of `PREFIX:events` (the seed's event JSON; `data` is a JSON string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Id.
    pub id: String,
    /// Session.
    pub session_id: String,
    /// Type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Data, JSON text.
    pub data: String,
    /// Time, ISO-8601.
    pub timestamp: String,
}

fn check_session_id(id: &str) -> Result<(), SchedulerError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_whitespace) {
        return Err(SchedulerError::Invalid {
            what: "session id",
            message: format!("{id:?}: expected 1..=128 bytes without whitespace"),
        });
    }
    Ok(())
}

impl Scheduler {
    /// `PREFIX:state`, if set (a state the seed does not know is reported as an error).
    pub async fn bot_state(&self) -> Result<Option<BotStateRecord>, SchedulerError> {
        let st = self.storage();
        let h = st.hgetall(&st.keys().state()).await?;
        let Some(state) = h.get("state") else {
            return Ok(None);
        };
        Ok(Some(BotStateRecord {
            state: BotState::parse(state)?,
            session_id: h.get("session_id").cloned(),
            timestamp: h.get("timestamp").cloned().unwrap_or_default(),
            updated_by: h.get("updated_by").cloned().unwrap_or_default(),
        }))
    }

    /// Moves the bot state to `to` (atomically checked against the current one): the
    /// previous state. Only the legal transitions ([`BotState::legal_from`]) are accepted; any
    /// other is [`SchedulerError::IllegalTransition`], nothing stored.
    pub async fn set_bot_state(
        &self,
        to: BotState,
        session_id: Option<&str>,
    ) -> Result<Option<BotState>, SchedulerError> {
        if let Some(id) = session_id {
            check_session_id(id)?;
        }
        let st = self.storage();
        let key = st.keys().state();
        let iso = iso8601(now_ms());
        let mut args = vec![
            to.as_str(),
            session_id.unwrap_or(""),
            &iso,
            &self.shared.updated_by,
        ];
        args.extend(
            to.legal_from()
                .iter()
                .map(|s| s.map(BotState::as_str).unwrap_or("")),
        );
        let reply = st.eval(&scripts().transition, &[&key], &args).await?;
        let (ok, prev) = match reply {
            Reply::Array(parts) if parts.len() == 2 => (
                parts[0].as_int() == 1,
                parts[1].clone().into_opt_string().unwrap_or_default(),
            ),
            _ => {
                return Err(SchedulerError::Storage(
                    crate::storage::StorageError::Command("bot-state: unexpected reply".into()),
                ))
            }
        };
        if !ok {
            return Err(SchedulerError::IllegalTransition {
                from: if prev.is_empty() { "none".into() } else { prev },
                to: to.as_str().into(),
            });
        }
        if prev.is_empty() {
            Ok(None)
        } else {
            BotState::parse(&prev).map(Some)
        }
    }

    /// Starts a session: `PREFIX:session:ID` with the seed's fields (status `running`,
    /// counters 0), its `PREFIX:metrics:ID`, and the id added to `PREFIX:sessions:active`.
    /// Answers the new id.
    pub async fn start_session(&self, session_name: &str) -> Result<String, SchedulerError> {
        if session_name.len() > 1024 {
            return Err(SchedulerError::Invalid {
                what: "session name",
                message: format!("{} bytes: expected at most 1024", session_name.len()),
            });
        }
        let st = self.storage();
        let now = now_ms();
        let id = new_task_id(now);
        let iso = iso8601(now);
        let fields = [
            ("id", id.as_str()),
            ("session_name", session_name),
            ("start_time", &iso),
            ("status", "running"),
            ("login_status", "pending"),
            ("total_checks", "0"),
            ("total_accepted", "0"),
            ("total_rejected", "0"),
            ("created_at", &iso),
            ("updated_at", &iso),
        ];
        st.hset(&st.keys().session(&id), &fields).await?;
        st.hset(
            &st.keys().metrics(&id),
            &[
                ("total_checks", "0"),
                ("total_accepted", "0"),
                ("total_rejected", "0"),
                ("login_status", "pending"),
                ("status", "running"),
                ("uptime", "0"),
                ("timestamp", &iso),
            ],
        )
        .await?;
        st.sadd(&st.keys().sessions_active(), &[&id]).await?;
        if let Some(sink) = self.history() {
            sink.record(Record::Session(SessionRecord {
                id: id.clone(),
                name: session_name.to_string(),
                status: "running".into(),
                started_ms: now as i64,
                ended_ms: None,
                updated_ms: now as i64,
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }));
        }
        Ok(id)
    }

    /// Ends a session: status `status` (e.g. `stopped`), removed from the active set.
    pub async fn end_session(&self, id: &str, status: &str) -> Result<(), SchedulerError> {
        check_session_id(id)?;
        let st = self.storage();
        let iso = iso8601(now_ms());
        st.hset(
            &st.keys().session(id),
            &[("status", status), ("updated_at", &iso)],
        )
        .await?;
        st.hset(
            &st.keys().metrics(id),
            &[("status", status), ("timestamp", &iso)],
        )
        .await?;
        st.srem(&st.keys().sessions_active(), &[id]).await?;
        if let Some(sink) = self.history() {
            // Every field as the session ended, read off the caller's path.
            let (sink, storage, id) = (sink.clone(), st.clone(), id.to_string());
            let key = storage.keys().session(&id);
            let ended = now_ms() as i64;
            tokio::spawn(async move {
                match storage.hgetall(&key).await {
                    Ok(fields) => sink.record(Record::Session(session_record(&id, fields, ended))),
                    Err(e) => {
                        tracing::warn!(actor = "scheduler", key = %key, error = %e, "ended session not archived")
                    }
                }
            });
        }
        Ok(())
    }

    /// Ids in `PREFIX:sessions:active`, sorted.
    pub async fn active_sessions(&self) -> Result<Vec<String>, SchedulerError> {
        let st = self.storage();
        Ok(st.smembers(&st.keys().sessions_active()).await?)
    }

    /// `PREFIX:session:ID` (empty when unknown).
    pub async fn session(&self, id: &str) -> Result<HashMap<String, String>, SchedulerError> {
        check_session_id(id)?;
        let st = self.storage();
        Ok(st.hgetall(&st.keys().session(id)).await?)
    }

    /// Sets fields of a session (e.g. `login_status`), and `updated_at`.
    pub async fn update_session(
        &self,
        id: &str,
        fields: &[(&str, &str)],
    ) -> Result<(), SchedulerError> {
        check_session_id(id)?;
        let st = self.storage();
        let iso = iso8601(now_ms());
        let mut all = fields.to_vec();
        all.push(("updated_at", &iso));
        st.hset(&st.keys().session(id), &all).await?;
        Ok(())
    }

    /// Adds `by` to a counter of the session and of its metrics, atomically; the session's
    /// new value.
    pub async fn count(
        &self,
        session_id: &str,
        counter: Counter,
        by: i64,
    ) -> Result<i64, SchedulerError> {
        check_session_id(session_id)?;
        let st = self.storage();
        let keys = st.keys();
        let (session, metrics) = (keys.session(session_id), keys.metrics(session_id));
        let iso = iso8601(now_ms());
        let by = by.to_string();
        Ok(st
            .eval(
                &scripts().count,
                &[&session, &metrics],
                &[counter.field(), &by, &iso],
            )
            .await?
            .as_int())
    }

    /// Sets fields of `PREFIX:metrics:ID` (e.g. `uptime`, `login_status`) and `timestamp`.
    pub async fn set_metrics(
        &self,
        session_id: &str,
        fields: &[(&str, &str)],
    ) -> Result<(), SchedulerError> {
        check_session_id(session_id)?;
        let st = self.storage();
        let iso = iso8601(now_ms());
        let mut all = fields.to_vec();
        all.push(("timestamp", &iso));
        st.hset(&st.keys().metrics(session_id), &all).await?;
        Ok(())
    }

    /// `PREFIX:metrics:ID` (empty when unknown).
    pub async fn metrics(
        &self,
        session_id: &str,
    ) -> Result<HashMap<String, String>, SchedulerError> {
        check_session_id(session_id)?;
        let st = self.storage();
        Ok(st.hgetall(&st.keys().metrics(session_id)).await?)
    }

    /// Records an event: pushed at the head of `PREFIX:events` (capped at
    /// `scheduler.events_max_len`) and published on `scheduler.events_channel`.
    pub async fn record_event(
        &self,
        session_id: &str,
        event_type: EventType,
        data: &impl Serialize,
    ) -> Result<Event, SchedulerError> {
        check_session_id(session_id)?;
        let data = serde_json::to_string(data).map_err(|e| SchedulerError::Invalid {
            what: "event data",
            message: e.to_string(),
        })?;
        let max = self.settings().max_data_bytes;
        if data.len() > max {
            return Err(SchedulerError::DataTooLarge {
                bytes: data.len(),
                max,
            });
        }
        let now = now_ms();
        let event = Event {
            id: new_task_id(now),
            session_id: session_id.to_string(),
            event_type,
            data,
            timestamp: iso8601(now),
        };
        let json = serde_json::to_string(&event).unwrap_or_default();
        let st = self.storage();
        let cap = self.settings().events_max_len.to_string();
        st.eval(&scripts().event, &[&st.keys().events()], &[&json, &cap])
            .await?;
        st.publish(&self.settings().events_channel, &json).await?;
        if let Some(sink) = self.history() {
            sink.record(Record::Event(EventRecord {
                id: event.id.clone(),
                session_id: event.session_id.clone(),
                event_type: serde_json::to_value(event.event_type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                data: event.data.clone(),
                timestamp: event.timestamp.clone(),
                at_ms: now as i64,
            }));
        }
        Ok(event)
    }

    /// The newest `count` events, newest first (entries that are not event JSON skipped).
    pub async fn events(&self, count: usize) -> Result<Vec<Event>, SchedulerError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let st = self.storage();
        Ok(st
            .lrange(&st.keys().events(), 0, count as i64 - 1)
            .await?
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Live events (the JSON of each, as published on `scheduler.events_channel`).
    pub async fn subscribe_events(&self) -> Subscription {
        self.storage()
            .subscribe(&self.settings().events_channel)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        use BotState::*;
        assert!(Starting.legal_from().contains(&None));
        assert!(Running.legal_from().contains(&Some(Starting)));
        assert!(!Running.legal_from().contains(&Some(Stopped)));
        assert!(!Starting.legal_from().contains(&Some(Running)));
        assert!(BotState::parse("paused").is_err());
    }
}
