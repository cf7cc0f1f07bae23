//! The database behind the archive: one [`Archive`] over SQLite or PostgreSQL through sqlx's
//! `Any` driver, with the same SQL for both (numbered `$N` parameters, `ON CONFLICT` upserts,
//! `BIGINT` and `TEXT` columns only).
//!
//! sqlx 0.8 runs without compile-time checked macros; SQLite runs in WAL mode (readers beside
//! the writer) with a 5 s busy timeout. Paging compares row values (`(time, key) < (...)`), so
//! the same text serves both databases.
//!
//! The schema is created and migrated by [`Archive::migrate`], at the first write or query of
//! a process: each entry of [`MIGRATIONS`] runs once, in order, in its own transaction, and is
//! recorded in `history_schema(version, name, applied_ms)`. Every statement is idempotent
//! (`IF NOT EXISTS`), so two processes migrating at once both succeed.
//!
//! | table | key (idempotent) | columns |
//! |---|---|---|
//! | `history_sessions` | `id` | `name`, `status`, `started_ms`, `ended_ms`, `updated_ms`, `fields` (JSON of every hash field); an upsert replaces a row only with a state at least as new (`updated_ms`) |
//! | `history_tasks` | `(id, attempt)` | `task_type`, `data`, `priority`, `status` (`completed`; `failed`: retried later; `dead`: its last attempt), `error`, `created_at`, `started_ms`, `finished_ms` |
//! | `history_events` | `id` | `session_id`, `event_type`, `data`, `timestamp`, `at_ms` |
//! | `history_hazard_rounds` | `(difficulty, tick)` | `epoch`, `hazards` (JSON), `hashed_server_seed`, `due_ms` |
//! | `history_hazard_seeds` | `epoch` | `server_seed`, `hashed_server_seed`, `revealed_ms` |
//! | `history_settlements` (migration 2) | `hashed_server_seed` (a new server seed per round) | `user_id`, `agent_id`, `user_seed`, `nonce`, `server_seed`, `settled_ms` |
//!
//! Times are Unix milliseconds. Sessions, tasks, events, rounds and settlements are indexed by
//! their time column; events also by `(session_id, at_ms)`, settlements by
//! `(user_id, agent_id, settled_ms)`. A round's server seed is joined by its epoch. Rows are
//! inserted with `ON CONFLICT` on their key, so a batch written twice stores each record once;
//! consecutive records of one kind share a multi-row `INSERT` of up to 100 rows, but a session
//! upsert goes alone (PostgreSQL refuses to update one row twice in a statement).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::record::{
    cursor, parse_cursor, EventRecord, HazardRoundRecord, HistoryQuery, Page, Record,
    SessionRecord, SettlementRecord, TaskRecord,
};
use super::HistoryError;
use crate::settings::{HistoryBackend, HistorySettings};

/// The schema, one migration per entry: (version, name, statements).
pub const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
    1,
    "sessions, tasks, events, hazard rounds and seeds",
    &[
        "CREATE TABLE IF NOT EXISTS history_sessions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            ended_ms BIGINT,
            updated_ms BIGINT NOT NULL,
            fields TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS history_sessions_started ON history_sessions (started_ms)",
        "CREATE TABLE IF NOT EXISTS history_tasks (
            id TEXT NOT NULL,
            attempt BIGINT NOT NULL,
            task_type TEXT NOT NULL,
            data TEXT NOT NULL,
            priority BIGINT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            created_at TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            finished_ms BIGINT NOT NULL,
            PRIMARY KEY (id, attempt))",
        "CREATE INDEX IF NOT EXISTS history_tasks_finished ON history_tasks (finished_ms)",
        "CREATE TABLE IF NOT EXISTS history_events (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            data TEXT NOT NULL,
            timestamp TEXT NOT NULL,
            at_ms BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS history_events_at ON history_events (at_ms)",
        "CREATE INDEX IF NOT EXISTS history_events_session ON history_events (session_id, at_ms)",
        "CREATE TABLE IF NOT EXISTS history_hazard_rounds (
            difficulty TEXT NOT NULL,
            tick BIGINT NOT NULL,
            epoch BIGINT NOT NULL,
            hazards TEXT NOT NULL,
            hashed_server_seed TEXT NOT NULL,
            due_ms BIGINT NOT NULL,
            PRIMARY KEY (difficulty, tick))",
        "CREATE INDEX IF NOT EXISTS history_hazard_rounds_due ON history_hazard_rounds (due_ms)",
        "CREATE TABLE IF NOT EXISTS history_hazard_seeds (
            epoch BIGINT PRIMARY KEY,
            server_seed TEXT NOT NULL,
            hashed_server_seed TEXT NOT NULL,
            revealed_ms BIGINT NOT NULL)",
    ],
    ),
    (
        2,
        "players' settled rounds",
        &[
            // Keyed by the hashed server seed: a new seed is drawn for every round, so the
            // hash names one settlement.
            "CREATE TABLE IF NOT EXISTS history_settlements (
                hashed_server_seed TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                user_seed TEXT NOT NULL,
                nonce BIGINT NOT NULL,
                server_seed TEXT NOT NULL,
                settled_ms BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS history_settlements_settled
                ON history_settlements (settled_ms)",
            "CREATE INDEX IF NOT EXISTS history_settlements_player
                ON history_settlements (user_id, agent_id, settled_ms)",
        ],
    ),
];

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS history_schema (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_ms BIGINT NOT NULL)";

/// One `INSERT` per record kind: the statement around the `VALUES` rows, and the columns.
struct Insert {
    head: &'static str,
    tail: &'static str,
    columns: usize,
    /// Rows per statement: 1 for an upsert (PostgreSQL refuses to update one row twice in a
    /// statement, and a session's start and end may share a batch).
    rows: usize,
}

/// Rows per multi-row `INSERT` (10 columns at most: far below either database's limit of
/// bound parameters).
const ROWS_PER_INSERT: usize = 100;

static INSERT_SESSION: Insert = Insert {
    head: "INSERT INTO history_sessions
        (id, name, status, started_ms, ended_ms, updated_ms, fields) VALUES ",
    tail: " ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = excluded.status,
        ended_ms = excluded.ended_ms, updated_ms = excluded.updated_ms, fields = excluded.fields
        WHERE excluded.updated_ms >= history_sessions.updated_ms",
    columns: 7,
    rows: 1,
};
static INSERT_TASK: Insert = Insert {
    head: "INSERT INTO history_tasks (id, attempt, task_type, data, priority, status, error,
        created_at, started_ms, finished_ms) VALUES ",
    tail: " ON CONFLICT (id, attempt) DO NOTHING",
    columns: 10,
    rows: ROWS_PER_INSERT,
};
static INSERT_EVENT: Insert = Insert {
    head: "INSERT INTO history_events (id, session_id, event_type, data, timestamp, at_ms) VALUES ",
    tail: " ON CONFLICT (id) DO NOTHING",
    columns: 6,
    rows: ROWS_PER_INSERT,
};
static INSERT_ROUND: Insert = Insert {
    head: "INSERT INTO history_hazard_rounds
        (difficulty, tick, epoch, hazards, hashed_server_seed, due_ms) VALUES ",
    tail: " ON CONFLICT (difficulty, tick) DO NOTHING",
    columns: 6,
    rows: ROWS_PER_INSERT,
};
static INSERT_SEED: Insert = Insert {
    head: "INSERT INTO history_hazard_seeds (epoch, server_seed, hashed_server_seed, revealed_ms)
        VALUES ",
    tail: " ON CONFLICT (epoch) DO NOTHING",
    columns: 4,
    rows: ROWS_PER_INSERT,
};
static INSERT_SETTLEMENT: Insert = Insert {
    head: "INSERT INTO history_settlements (hashed_server_seed, user_id, agent_id, user_seed,
        nonce, server_seed, settled_ms) VALUES ",
    tail: " ON CONFLICT (hashed_server_seed) DO NOTHING",
    columns: 7,
    rows: ROWS_PER_INSERT,
};

impl Insert {
    /// The statement for `rows` rows: `head ($1, .., $C), ($C+1, ..) tail`.
    fn sql(&self, rows: usize) -> String {
        let mut sql = String::from(self.head);
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..self.columns {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", r * self.columns + c + 1));
            }
            sql.push(')');
        }
        sql.push_str(self.tail);
        sql
    }
}

/// A value bound to a statement.
enum Value {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

/// The statement of a record's kind, and its values in column order.
fn row(record: &Record) -> (&'static Insert, Vec<Value>) {
    use Value::{Int, OptInt, OptText, Text};
    match record {
        Record::Session(s) => (
            &INSERT_SESSION,
            vec![
                Text(s.id.clone()),
                Text(s.name.clone()),
                Text(s.status.clone()),
                Int(s.started_ms),
                OptInt(s.ended_ms),
                Int(s.updated_ms),
                Text(serde_json::to_string(&s.fields).unwrap_or_default()),
            ],
        ),
        Record::Task(t) => (
            &INSERT_TASK,
            vec![
                Text(t.id.clone()),
                Int(t.attempt),
                Text(t.task_type.clone()),
                Text(t.data.clone()),
                Int(t.priority),
                Text(t.status.clone()),
                OptText(t.error.clone()),
                Text(t.created_at.clone()),
                Int(t.started_ms),
                Int(t.finished_ms),
            ],
        ),
        Record::Event(e) => (
            &INSERT_EVENT,
            vec![
                Text(e.id.clone()),
                Text(e.session_id.clone()),
                Text(e.event_type.clone()),
                Text(e.data.clone()),
                Text(e.timestamp.clone()),
                Int(e.at_ms),
            ],
        ),
        Record::HazardRound(r) => (
            &INSERT_ROUND,
            vec![
                Text(r.difficulty.clone()),
                Int(r.tick),
                Int(r.epoch),
                Text(serde_json::to_string(&r.hazards).unwrap_or_default()),
                Text(r.hashed_server_seed.clone()),
                Int(r.due_ms),
            ],
        ),
        Record::HazardSeed(s) => (
            &INSERT_SEED,
            vec![
                Int(s.epoch),
                Text(s.server_seed.clone()),
                Text(s.hashed_server_seed.clone()),
                Int(s.revealed_ms),
            ],
        ),
        Record::Settlement(s) => (
            &INSERT_SETTLEMENT,
            vec![
                Text(s.hashed_server_seed.clone()),
                Text(s.user_id.clone()),
                Text(s.agent_id.clone()),
                Text(s.user_seed.clone()),
                Int(s.nonce),
                Text(s.server_seed.clone()),
                Int(s.settled_ms),
            ],
        ),
    }
}

/// An open connection pool to the archive. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Archive {
    pool: AnyPool,
    backend: HistoryBackend,
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> &str {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or(path)
}

/// The URL in force: `history.url`, or the SQLite file in `history.dir` when it is empty.
pub fn effective_url(settings: &HistorySettings) -> String {
    if settings.url.is_empty() {
        let path = std::path::Path::new(&settings.dir).join("history.sqlite3");
        format!("sqlite://{}", path.display())
    } else {
        settings.url.clone()
    }
}

impl Archive {
    /// A pool over the configured database. Connects lazily: an unreachable database is not an
    /// error here (writes wait for it), a malformed URL is. A SQLite file and its directory are
    /// created when missing.
    pub fn open(settings: &HistorySettings) -> Result<Archive, HistoryError> {
        Self::connect(settings, true)
    }

    /// [`Archive::open`] for a reader: a SQLite file that does not exist is
    /// [`HistoryError::Missing`], and nothing (file or directory) is created.
    pub fn open_existing(settings: &HistorySettings) -> Result<Archive, HistoryError> {
        Self::connect(settings, false)
    }

    fn connect(settings: &HistorySettings, create: bool) -> Result<Archive, HistoryError> {
        sqlx::any::install_default_drivers();
        let url = effective_url(settings);
        let backend =
            HistoryBackend::of(&url).ok_or_else(|| HistoryError::Url(super::redacted(&url)))?;
        let url = match backend {
            HistoryBackend::Sqlite if !create => {
                let path = sqlite_path(&url);
                if !std::path::Path::new(path).is_file() {
                    return Err(HistoryError::Missing(path.to_string()));
                }
                // Read and write (WAL needs its shared-memory file), never create.
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rw")
            }
            HistoryBackend::Sqlite => {
                let path = sqlite_path(&url);
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| HistoryError::Io(format!("{}: {e}", parent.display())))?;
                    }
                }
                // Create the file when missing; WAL lets readers run beside the writer.
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            HistoryBackend::Postgres => url,
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|_| HistoryError::Url(super::redacted(&url)))?;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == HistoryBackend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Archive { pool, backend })
    }

    /// The database in use.
    pub fn backend(&self) -> HistoryBackend {
        self.backend
    }

    /// Applies the migrations this database has not seen; answers the schema version.
    pub async fn migrate(&self) -> Result<i64, HistoryError> {
        sqlx::query(SCHEMA_TABLE).execute(&self.pool).await?;
        let mut version = self.schema_version().await?;
        for (v, name, statements) in MIGRATIONS {
            if *v <= version {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for statement in *statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO history_schema (version, name, applied_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (version) DO NOTHING",
            )
            .bind(*v)
            .bind(*name)
            .bind(crate::clock::now_ms() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(
                actor = "history",
                backend = self.backend.as_str(),
                version = v,
                "history schema migrated"
            );
            version = *v;
        }
        Ok(version)
    }

    /// The highest migration applied (0: none).
    pub async fn schema_version(&self) -> Result<i64, HistoryError> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM history_schema")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }

    /// Writes `records` in one transaction (a record already stored is skipped, a session's
    /// newer state replaces an older one): consecutive records of one kind share a multi-row
    /// `INSERT`.
    pub async fn write(&self, records: &[Record]) -> Result<(), sqlx::Error> {
        let rows: Vec<(&Insert, Vec<Value>)> = records.iter().map(row).collect();
        let mut tx = self.pool.begin().await?;
        let mut rest = &rows[..];
        while let Some((insert, _)) = rest.first() {
            let n = rest
                .iter()
                .take(insert.rows)
                .take_while(|(i, _)| std::ptr::eq(*i, *insert))
                .count();
            let sql = insert.sql(n);
            let mut query = sqlx::query(&sql);
            for (_, values) in &rest[..n] {
                for v in values {
                    query = match v {
                        Value::Int(v) => query.bind(*v),
                        Value::OptInt(v) => query.bind(*v),
                        Value::Text(v) => query.bind(v.as_str()),
                        Value::OptText(v) => query.bind(v.as_deref()),
                    };
                }
            }
            query.execute(&mut *tx).await?;
            rest = &rest[n..];
        }
        tx.commit().await
    }

    /// Sessions by start time, newest first.
    pub async fn sessions(&self, q: &HistoryQuery) -> Result<Page<SessionRecord>, HistoryError> {
        let page = Paging::new(q, "started_ms", "id", None, &[])?;
        let sql = format!(
            "SELECT id, name, status, started_ms, ended_ms, updated_ms, fields
             FROM history_sessions WHERE {} ORDER BY started_ms DESC, id DESC LIMIT {}",
            page.filter, page.fetch
        );
        self.page(&page, &sql, session_row, |s| cursor(s.started_ms, &s.id))
            .await
    }

    /// Task attempts by finish time, newest first (of one task when the query names it).
    pub async fn tasks(&self, q: &HistoryQuery) -> Result<Page<TaskRecord>, HistoryError> {
        let page = Paging::new(
            q,
            "finished_ms",
            "id",
            Some("attempt"),
            &[("id", &q.task_id)],
        )?;
        let sql = format!(
            "SELECT id, attempt, task_type, data, priority, status, error, created_at,
                    started_ms, finished_ms
             FROM history_tasks WHERE {} ORDER BY finished_ms DESC, id DESC, attempt DESC
             LIMIT {}",
            page.filter, page.fetch
        );
        self.page(&page, &sql, task_row, |t| {
            cursor(t.finished_ms, &format!("{}:{}", t.attempt, t.id))
        })
        .await
    }

    /// Events by time, newest first (of one session when the query names it).
    pub async fn events(&self, q: &HistoryQuery) -> Result<Page<EventRecord>, HistoryError> {
        let page = Paging::new(q, "at_ms", "id", None, &[("session_id", &q.session_id)])?;
        let sql = format!(
            "SELECT id, session_id, event_type, data, timestamp, at_ms
             FROM history_events WHERE {} ORDER BY at_ms DESC, id DESC LIMIT {}",
            page.filter, page.fetch
        );
        self.page(&page, &sql, event_row, |e| cursor(e.at_ms, &e.id))
            .await
    }

    /// Hazard rounds by due time, newest first, with their seed once revealed.
    pub async fn rounds(&self, q: &HistoryQuery) -> Result<Page<HazardRoundRecord>, HistoryError> {
        let page = Paging::new(q, "r.due_ms", "r.difficulty", Some("r.tick"), &[])?;
        let sql = format!(
            "SELECT r.difficulty, r.tick, r.epoch, r.hazards, r.hashed_server_seed, r.due_ms,
                    s.server_seed
             FROM history_hazard_rounds r
             LEFT JOIN history_hazard_seeds s ON s.epoch = r.epoch
             WHERE {} ORDER BY r.due_ms DESC, r.difficulty DESC, r.tick DESC LIMIT {}",
            page.filter, page.fetch
        );
        self.page(&page, &sql, round_row, |r| {
            cursor(r.due_ms, &format!("{}:{}", r.tick, r.difficulty))
        })
        .await
    }

    /// Players' settled rounds by settlement time, newest first (of one user and/or agent when
    /// the query names them).
    pub async fn settlements(
        &self,
        q: &HistoryQuery,
    ) -> Result<Page<SettlementRecord>, HistoryError> {
        let page = Paging::new(
            q,
            "settled_ms",
            "hashed_server_seed",
            None,
            &[("user_id", &q.user_id), ("agent_id", &q.agent_id)],
        )?;
        let sql = format!(
            "SELECT hashed_server_seed, user_id, agent_id, user_seed, nonce, server_seed,
                    settled_ms
             FROM history_settlements WHERE {}
             ORDER BY settled_ms DESC, hashed_server_seed DESC LIMIT {}",
            page.filter, page.fetch
        );
        self.page(&page, &sql, settlement_row, |s| {
            cursor(s.settled_ms, &s.hashed_server_seed)
        })
        .await
    }

    /// Runs a page's query and maps its rows.
    async fn page<T>(
        &self,
        page: &Paging,
        sql: &str,
        row: fn(&AnyRow) -> Result<T, sqlx::Error>,
        key: impl Fn(&T) -> String,
    ) -> Result<Page<T>, HistoryError> {
        let rows = page.bind(sqlx::query(sql)).fetch_all(&self.pool).await?;
        let items = rows.iter().map(row).collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, key))
    }

    /// Deletes rows older than `cutoff_ms` (sessions by their last update, tasks by their
    /// finish, events by their time, rounds by their due time, seeds by their reveal,
    /// settlements by their time);
    /// answers how many.
    pub async fn purge(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let mut deleted = 0;
        for (table, column) in [
            ("history_sessions", "updated_ms"),
            ("history_tasks", "finished_ms"),
            ("history_events", "at_ms"),
            ("history_hazard_rounds", "due_ms"),
            ("history_hazard_seeds", "revealed_ms"),
            ("history_settlements", "settled_ms"),
        ] {
            let sql = format!("DELETE FROM {table} WHERE {column} < $1");
            deleted += sqlx::query(&sql)
                .bind(cutoff_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// Rows per table: sessions, tasks, events, rounds, seeds, settlements.
    pub async fn counts(&self) -> Result<[i64; 6], HistoryError> {
        let mut out = [0; 6];
        for (i, table) in [
            "history_sessions",
            "history_tasks",
            "history_events",
            "history_hazard_rounds",
            "history_hazard_seeds",
            "history_settlements",
        ]
        .iter()
        .enumerate()
        {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&self.pool)
                .await?;
            out[i] = row.try_get("n")?;
        }
        Ok(out)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn session_row(r: &AnyRow) -> Result<SessionRecord, sqlx::Error> {
    let fields: String = r.try_get("fields")?;
    Ok(SessionRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        started_ms: r.try_get("started_ms")?,
        ended_ms: r.try_get("ended_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        fields: serde_json::from_str(&fields).unwrap_or_default(),
    })
}

fn event_row(r: &AnyRow) -> Result<EventRecord, sqlx::Error> {
    Ok(EventRecord {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        event_type: r.try_get("event_type")?,
        data: r.try_get("data")?,
        timestamp: r.try_get("timestamp")?,
        at_ms: r.try_get("at_ms")?,
    })
}

fn round_row(r: &AnyRow) -> Result<HazardRoundRecord, sqlx::Error> {
    let hazards: String = r.try_get("hazards")?;
    Ok(HazardRoundRecord {
        difficulty: r.try_get("difficulty")?,
        tick: r.try_get("tick")?,
        epoch: r.try_get("epoch")?,
        hazards: serde_json::from_str(&hazards).unwrap_or_default(),
        hashed_server_seed: r.try_get("hashed_server_seed")?,
        due_ms: r.try_get("due_ms")?,
        server_seed: r.try_get("server_seed")?,
    })
}

fn settlement_row(r: &AnyRow) -> Result<SettlementRecord, sqlx::Error> {
    Ok(SettlementRecord {
        user_id: r.try_get("user_id")?,
        agent_id: r.try_get("agent_id")?,
        user_seed: r.try_get("user_seed")?,
        nonce: r.try_get("nonce")?,
        server_seed: r.try_get("server_seed")?,
        hashed_server_seed: r.try_get("hashed_server_seed")?,
        settled_ms: r.try_get("settled_ms")?,
    })
}

fn task_row(r: &AnyRow) -> Result<TaskRecord, sqlx::Error> {
    Ok(TaskRecord {
        id: r.try_get("id")?,
        attempt: r.try_get("attempt")?,
        task_type: r.try_get("task_type")?,
        data: r.try_get("data")?,
        priority: r.try_get("priority")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
    })
}

/// The `WHERE` clause and binds of a page: time range, the table's optional equality filters
/// (an event's session, a settlement's user and agent), and the keyset
/// cursor `(time, key[, number]) < (cursor values)`, the order of the rows. A cursor is
/// `MS:KEY`, or `MS:NUMBER:KEY` for tables ordered by a number after the key.
struct Paging {
    filter: String,
    binds: Vec<Bind>,
    fetch: usize,
    limit: usize,
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Paging {
    fn new(
        q: &HistoryQuery,
        time: &str,
        key: &str,
        number: Option<&str>,
        equal: &[(&str, &Option<String>)],
    ) -> Result<Paging, HistoryError> {
        let mut clauses = vec!["1 = 1".to_string()];
        let mut binds = Vec::new();
        let next = |b: Bind, binds: &mut Vec<Bind>| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(since) = q.since_ms {
            let p = next(Bind::Int(since), &mut binds);
            clauses.push(format!("{time} >= {p}"));
        }
        if let Some(until) = q.until_ms {
            let p = next(Bind::Int(until), &mut binds);
            clauses.push(format!("{time} < {p}"));
        }
        for (column, value) in equal {
            if let Some(value) = value {
                let p = next(Bind::Text(value.clone()), &mut binds);
                clauses.push(format!("{column} = {p}"));
            }
        }
        if let Some(c) = &q.cursor {
            let bad = || HistoryError::Cursor(c.chars().take(64).collect());
            let (ms, rest) = parse_cursor(c).ok_or_else(bad)?;
            let t = next(Bind::Int(ms), &mut binds);
            match number {
                None => {
                    let k = next(Bind::Text(rest), &mut binds);
                    clauses.push(format!("({time}, {key}) < ({t}, {k})"));
                }
                Some(number) => {
                    let (n, k) = rest.split_once(':').ok_or_else(bad)?;
                    let n: i64 = n.parse().map_err(|_| bad())?;
                    let k = next(Bind::Text(k.to_string()), &mut binds);
                    let n = next(Bind::Int(n), &mut binds);
                    clauses.push(format!("({time}, {key}, {number}) < ({t}, {k}, {n})"));
                }
            }
        }
        let limit = q.page_size();
        Ok(Paging {
            filter: clauses.join(" AND "),
            binds,
            fetch: limit + 1,
            limit,
        })
    }

    fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for b in &self.binds {
            query = match b {
                Bind::Int(v) => query.bind(*v),
                Bind::Text(v) => query.bind(v.as_str()),
            };
        }
        query
    }

    /// Cuts the extra row fetched to know whether another page follows.
    fn finish<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        let next_cursor = if more { items.last().map(key) } else { None };
        Page { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_row_insert_numbers_its_parameters_row_after_row() {
        let sql = INSERT_SEED.sql(2);
        assert!(
            sql.contains("VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) ON CONFLICT (epoch)"),
            "{sql}"
        );
        assert_eq!(INSERT_SESSION.rows, 1, "upserts go one row per statement");
    }

    #[test]
    fn the_default_url_is_the_sqlite_file_in_the_default_dir() {
        let default = effective_url(&HistorySettings::default());
        assert_eq!(default, "sqlite://data/history/history.sqlite3");
    }
}
