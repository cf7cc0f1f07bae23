//! What the archive holds: one record type per table, the [`Record`] the writer queues, and
//! the query and page types of the read side.
//!
//! Every record carries its idempotent key (a session's id, a task's id and attempt, an
//! event's id, a round's difficulty and tick, a seed's epoch, a settlement's hashed server
//! seed), so writing a batch twice (a
//! retry after a lost commit acknowledgement, a spool replayed after `kill -9`) stores each
//! record once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A session (`PREFIX:session:ID`): every field of the hash as it was at the time archived.
/// Written when the session starts and again when it ends (the later state wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id (the key).
    pub id: String,
    /// `session_name`.
    pub name: String,
    /// `status` (`running`, then e.g. `stopped`).
    pub status: String,
    /// When it started, Unix ms.
    pub started_ms: i64,
    /// When it ended, Unix ms (`None` while running).
    pub ended_ms: Option<i64>,
    /// When this state was read, Unix ms: an older state never replaces a newer one.
    pub updated_ms: i64,
    /// Every field of the hash.
    pub fields: BTreeMap<String, String>,
}

/// How a task attempt ended.
pub mod task_status {
    /// The handler succeeded.
    pub const COMPLETED: &str = "completed";
    /// The attempt failed; the task is retried after a backoff.
    pub const FAILED: &str = "failed";
    /// The last attempt failed, or its visibility deadline expired (its worker died) and the
    /// reaper buried it: the task went to the dead-letter set.
    pub const DEAD: &str = "dead";
}

/// A finished task attempt (key: id and attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Attempt number, from 1.
    pub attempt: i64,
    /// Task type.
    pub task_type: String,
    /// Data (JSON text).
    pub data: String,
    /// Priority.
    pub priority: i64,
    /// [`task_status`]: `completed`, `failed` or `dead`.
    pub status: String,
    /// The handler's error, for `failed` and `dead` (`visibility timeout expired` when the
    /// reaper buried the task).
    pub error: Option<String>,
    /// When the task was created, ISO-8601.
    pub created_at: String,
    /// When this attempt's handler started, Unix ms (for a task the reaper buried: when the
    /// attempt was claimed, to the second).
    pub started_ms: i64,
    /// When it finished, Unix ms (for a task the reaper buried: when it was buried).
    pub finished_ms: i64,
}

/// An event pushed to `PREFIX:events` (key: its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Event id.
    pub id: String,
    /// Session.
    pub session_id: String,
    /// The seed's event type (`bot_started`, `job_found`, ...).
    pub event_type: String,
    /// Data, JSON text.
    pub data: String,
    /// The event's ISO-8601 timestamp.
    pub timestamp: String,
    /// When it was recorded, Unix ms.
    pub at_ms: i64,
}

/// A hazard round written by the ticker (key: difficulty and tick). Verify it with
/// `botfleet verify --server-seed S --client-seed DIFFICULTY --nonce TICK` once its epoch's
/// seed is revealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HazardRoundRecord {
    /// Difficulty name (the round's client seed).
    pub difficulty: String,
    /// Tick number (the round's nonce).
    pub tick: i64,
    /// Seed epoch.
    pub epoch: i64,
    /// The hazards written.
    pub hazards: Vec<u32>,
    /// SHA-256 of the epoch's server seed, published before the round.
    pub hashed_server_seed: String,
    /// When the tick was due, Unix ms.
    pub due_ms: i64,
    /// The epoch's server seed once revealed (filled by queries, never written).
    #[serde(default)]
    pub server_seed: Option<String>,
}

/// A revealed ticker seed (key: its epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HazardSeedRecord {
    /// Seed epoch.
    pub epoch: i64,
    /// The server seed.
    pub server_seed: String,
    /// Its SHA-256.
    pub hashed_server_seed: String,
    /// When it was revealed, Unix ms.
    pub revealed_ms: i64,
}

/// A player's settled round (`Hazards::settle`): the server seed it revealed, with everything
/// needed to verify the round later, after `fairness:USER:AGENT` and its hidden seed expired
/// from Redis (key: the hashed server seed, drawn anew for every round, so a replayed or
/// duplicated record is stored once).
///
/// The difficulty is not part of it: the same seeds give the hazards of any difficulty, so
/// whoever checks a round names the one it was played at:
/// `fairness::derive_hazards(server_seed, user_seed, nonce, difficulty)`, or `botfleet verify
/// --server-seed SERVER_SEED --client-seed USER_SEED --nonce NONCE --difficulty D`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    /// User id.
    pub user_id: String,
    /// Agent id.
    pub agent_id: String,
    /// The player's (client) seed of the settled round.
    pub user_seed: String,
    /// The settled round's nonce.
    pub nonce: i64,
    /// The server seed, revealed by the settlement.
    pub server_seed: String,
    /// Its SHA-256, as published before the round (the key).
    pub hashed_server_seed: String,
    /// When the round was settled, Unix ms.
    pub settled_ms: i64,
}

/// One record for the writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A session's state.
    Session(SessionRecord),
    /// A finished task attempt.
    Task(TaskRecord),
    /// An event.
    Event(EventRecord),
    /// A hazard round.
    HazardRound(HazardRoundRecord),
    /// A revealed seed.
    HazardSeed(HazardSeedRecord),
    /// A player's settled round (last: spool files name variants, so older ones still read).
    Settlement(SettlementRecord),
}

/// Which rows a list query returns: a time range, a page size and where the page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only rows at or after this time, Unix ms.
    pub since_ms: Option<i64>,
    /// Only rows before this time, Unix ms.
    pub until_ms: Option<i64>,
    /// Rows per page (1..=[`MAX_PAGE`]; [`DEFAULT_PAGE`] when 0).
    pub limit: usize,
    /// The `next_cursor` of the previous page (pages go from the newest row to the oldest).
    pub cursor: Option<String>,
    /// Events only: of this session.
    pub session_id: Option<String>,
    /// Settlements only: of this user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Settlements only: of this agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Tasks only: the attempts of this task.
    #[serde(default)]
    pub task_id: Option<String>,
}

/// Rows per page when the query gives none.
pub const DEFAULT_PAGE: usize = 100;
/// Most rows per page.
pub const MAX_PAGE: usize = 10_000;

impl HistoryQuery {
    /// The newest `limit` rows.
    pub fn latest(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Rows at or after `since_ms`.
    pub fn since(mut self, since_ms: i64) -> Self {
        self.since_ms = Some(since_ms);
        self
    }

    /// Rows before `until_ms`.
    pub fn until(mut self, until_ms: i64) -> Self {
        self.until_ms = Some(until_ms);
        self
    }

    /// The page after the one that answered `cursor`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// Events of one session.
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Attempts of one task.
    pub fn task(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// Settlements of one user.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Settlements of one agent.
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// The page size in force.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        }
    }
}

/// One page of rows, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass it as [`HistoryQuery::cursor`] for the next (older) page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A cursor: the time and key of the last row of a page (`MS:KEY`).
pub(crate) fn cursor(ms: i64, key: &str) -> String {
    format!("{ms}:{key}")
}

/// The time and key of a cursor (`None`: not a cursor).
pub(crate) fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (ms, key) = cursor.split_once(':')?;
    Some((ms.parse().ok()?, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_keys_with_colons() {
        let c = cursor(1_700_000_000_123, "EASY:42");
        assert_eq!(
            parse_cursor(&c),
            Some((1_700_000_000_123, "EASY:42".into()))
        );
        assert_eq!(parse_cursor("nope"), None);
    }

    #[test]
    fn page_size_is_bounded() {
        assert_eq!(HistoryQuery::default().page_size(), DEFAULT_PAGE);
        assert_eq!(HistoryQuery::latest(5).page_size(), 5);
        assert_eq!(HistoryQuery::latest(usize::MAX).page_size(), MAX_PAGE);
    }
}
