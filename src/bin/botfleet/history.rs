//! `botfleet history sessions|tasks|events|rounds|settlements`: reads the archive configured in
//! `[history]` directly (no daemon needed), newest rows first, a page at a time.

use std::io::Write;

use clap::{Args, Subcommand};

use botfleet::actors::history::{History, HistoryError, HistoryQuery, Page, MAX_PAGE};
use botfleet::clock::{self, now_ms};
use botfleet::settings::Settings;

/// `botfleet history ...`.
#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Archived sessions, by start time.
    Sessions(HistoryArgs),
    /// Archived task attempts (completed, failed, dead), by finish time.
    Tasks(HistoryArgs),
    /// Archived events, by time (of one session with --session).
    Events(HistoryArgs),
    /// Archived hazard rounds, by due time, with their server seed once revealed.
    Rounds(HistoryArgs),
    /// Archived settlements of players' rounds, by settlement time, with the revealed server
    /// seed (of one player with --user and --agent).
    Settlements(HistoryArgs),
}

/// The options of every `botfleet history` listing.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only rows at or after T: RFC 3339 (2026-01-31T12:00:00Z), Unix milliseconds, or an age
    /// such as 30m, 12h, 7d.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only rows before T (same forms as --since).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Rows to print (1 to 10000).
    #[arg(long, default_value_t = 20, value_parser = parse_limit)]
    pub limit: usize,
    /// Continue after the page that printed this cursor.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Events only: of this session.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Settlements only: of this user.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// Settlements only: of this agent.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Print one JSON object per page (`items`, `next_cursor`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--limit`: a page of 1 to [`MAX_PAGE`] rows (0 would mean "the default" to the archive,
/// which is not what anyone typing it means).
fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(format!("expected 1 to {MAX_PAGE} rows, got {text:?}")),
    }
}

/// A time given on the command line, as Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    parse_time_at(text, now_ms() as i64)
}

fn parse_time_at(text: &str, now: i64) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(ms) = clock::parse_ms(text) {
        return Ok(ms);
    }
    let unit = text.char_indices().last().filter(|(i, _)| *i > 0);
    if let Some((i, c)) = unit {
        let per = match c {
            's' => Some(1_000),
            'm' => Some(60_000),
            'h' => Some(3_600_000),
            'd' => Some(86_400_000),
            _ => None,
        };
        if let (Some(per), Ok(n)) = (per, text[..i].parse::<i64>()) {
            return Ok(now - n.saturating_mul(per));
        }
    }
    Err(format!(
        "expected RFC 3339 time, Unix milliseconds or an age such as 7d, got {text:?}"
    ))
}

/// Runs `botfleet history ...` on the archive of `settings`, writing to `out`. Works when
/// `history.enabled` is false too: the archive is read wherever `[history]` points. It only
/// reads: a SQLite archive that does not exist is an empty page (and a note on stderr), never
/// created.
pub fn run(
    settings: &Settings,
    command: &HistoryCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Only reads: batches a daemon left in the spool stay there for it.
        let history = match History::reader(&settings.history) {
            Ok(history) => history,
            Err(HistoryError::Missing(path)) => {
                eprintln!("botfleet: no history archive at {path} yet: nothing to list");
                let empty = Page::<serde_json::Value> {
                    items: Vec::new(),
                    next_cursor: None,
                };
                print(out, json_of(command), &empty, |_| String::new())?;
                out.flush()?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let result = list(&history, command, out).await;
        history.close(std::time::Duration::from_secs(5)).await;
        result
    })
}

fn json_of(command: &HistoryCommand) -> bool {
    match command {
        HistoryCommand::Sessions(a)
        | HistoryCommand::Tasks(a)
        | HistoryCommand::Events(a)
        | HistoryCommand::Rounds(a)
        | HistoryCommand::Settlements(a) => a.json,
    }
}

async fn list(
    history: &History,
    command: &HistoryCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let args = match command {
        HistoryCommand::Sessions(a)
        | HistoryCommand::Tasks(a)
        | HistoryCommand::Events(a)
        | HistoryCommand::Rounds(a)
        | HistoryCommand::Settlements(a) => a,
    };
    let query = HistoryQuery {
        since_ms: args.since,
        until_ms: args.until,
        limit: args.limit,
        cursor: args.cursor.clone(),
        session_id: args.session.clone(),
        user_id: args.user.clone(),
        agent_id: args.agent.clone(),
        task_id: None,
    };
    match command {
        HistoryCommand::Sessions(_) => {
            let page = history.sessions(&query).await?;
            print(out, args.json, &page, |s| {
                format!(
                    "{}  {}  {:<8}  {}  {}",
                    time(s.started_ms),
                    s.ended_ms.map(time).unwrap_or_else(|| "-".repeat(24)),
                    s.status,
                    s.id,
                    s.name
                )
            })?;
        }
        HistoryCommand::Tasks(_) => {
            let page = history.tasks(&query).await?;
            print(out, args.json, &page, |t| {
                format!(
                    "{}  {:<9}  {:>3}  {:<12}  {}  {}",
                    time(t.finished_ms),
                    t.status,
                    t.attempt,
                    t.task_type,
                    t.id,
                    t.error.as_deref().unwrap_or("")
                )
            })?;
        }
        HistoryCommand::Events(_) => {
            let page = history.events(&query).await?;
            print(out, args.json, &page, |e| {
                format!(
                    "{}  {:<13}  {}  {}  {}",
                    time(e.at_ms),
                    e.event_type,
                    e.session_id,
                    e.id,
                    e.data
                )
            })?;
        }
        HistoryCommand::Rounds(_) => {
            let page = history.rounds(&query).await?;
            print(out, args.json, &page, |r| {
                format!(
                    "{}  {:<8}  tick {}  epoch {}  hazards {:?}  seed {}",
                    time(r.due_ms),
                    r.difficulty,
                    r.tick,
                    r.epoch,
                    r.hazards,
                    r.server_seed.as_deref().unwrap_or("(not revealed yet)")
                )
            })?;
        }
        HistoryCommand::Settlements(_) => {
            let page = history.settlements(&query).await?;
            // Verify one with: botfleet verify --server-seed SEED --client-seed USER_SEED
            // --nonce NONCE --difficulty D (the round's difficulty).
            print(out, args.json, &page, |s| {
                format!(
                    "{}  {}  {}  nonce {}  user seed {}  seed {}",
                    time(s.settled_ms),
                    s.user_id,
                    s.agent_id,
                    s.nonce,
                    s.user_seed,
                    s.server_seed
                )
            })?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print<T: serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    page: &Page<T>,
    line: impl Fn(&T) -> String,
) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(page).unwrap_or_default())?;
        return Ok(());
    }
    for item in &page.items {
        writeln!(out, "{}", line(item))?;
    }
    if let Some(cursor) = &page.next_cursor {
        writeln!(out, "# more: --cursor {cursor}")?;
    }
    Ok(())
}

fn time(ms: i64) -> String {
    u64::try_from(ms).map_or_else(|_| ms.to_string(), clock::iso8601_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time_at("1700000000000", now), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time_at("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_time_at("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_time_at("30m", now), Ok(now - 30 * 60_000));
        assert!(parse_time_at("yesterday", now).is_err());
        assert!(parse_time_at("d", now).is_err());
    }
}
