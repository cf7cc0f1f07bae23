//! The commands that ask a running daemon over HTTP ([`Daemon`]): `botfleet status`,
//! `task add|list`, `admin send` and `events tail`, with their arguments.

use std::io::Write;
use std::time::Duration;

use botfleet::settings::{Settings, SettingsError};
use clap::Subcommand;
use serde_json::Value;

/// `botfleet status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the daemon's JSON status snapshot instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// The daemon's base URL [default: http:// + api.bind].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// Where the running daemon is and how to print its answers; shared by the commands that talk
/// to it. Mutating commands send `api.token` (from the settings or `BOTFLEET__API__TOKEN`).
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Print the daemon's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// The daemon's base URL [default: http:// + api.bind].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

impl DaemonArgs {
    /// The daemon these arguments name, with the token of `settings`.
    pub fn daemon(&self, settings: &Settings) -> Result<Daemon, ClientError> {
        let base = match &self.url {
            Some(url) => url_arg(url)?,
            None => base_url(&settings.api.bind),
        };
        Daemon::new(&base, Some(settings.api.token.expose().to_owned()))
    }
}

/// `botfleet task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Enqueue a task: `botfleet task add login --data '{"user": "a"}' --priority 10`.
    Add {
        /// The task.
        #[command(flatten)]
        task: TaskAdd,
        /// The daemon and the output.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// List tasks: by default those processing, pending and dead.
    List {
        /// Only tasks in this status: pending, processing, completed or failed.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// At most this many (1 to 1000) [default: 100].
        #[arg(long)]
        limit: Option<usize>,
        /// The daemon and the output.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Run a command per task claimed from the daemon, over its HTTP worker protocol:
    /// `botfleet task work --type login --concurrency 4 -- ./login.sh`. The task is on the
    /// command's stdin as JSON; exit 0 completes it, any other exit fails it with the end of
    /// its stderr. SIGINT/SIGTERM: no more claims, running commands finish (exit 0); a second
    /// signal kills them and fails their tasks back (exit 130).
    Work(WorkArgs),
}

/// `botfleet task work` (run by `work::run`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkArgs {
    /// Task type to take; repeat for more (`*`: any type, when the daemon's
    /// scheduler.task_types is ["*"]).
    #[arg(long = "type", value_name = "TYPE", required = true)]
    pub types: Vec<String>,
    /// Commands run at once (1 to 1000).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Visibility timeout of each task, milliseconds: a task neither finished nor extended
    /// within it returns to the queue [default: the daemon's scheduler.visibility_timeout_ms].
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// Print the summary at exit as JSON.
    #[arg(long)]
    pub json: bool,
    /// The daemon's base URL [default: http:// + api.bind].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The command to run per task, and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `botfleet admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Send MESSAGE to the bot whose process id is PID (`admin:queue:PID`, `admin:bot:PID`).
    Send {
        /// The bot's process id.
        pid: String,
        /// The message.
        message: String,
        /// The daemon and the output.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// `botfleet events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the newest events, then each new one as it happens, until interrupted.
    Tail {
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// The daemon and the output.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// `botfleet status`: asks the daemon at `--url`, or at `api.bind` of the settings (loaded only
/// then, so `--url` works beside a broken settings file).
pub fn status(
    args: &StatusArgs,
    settings: impl FnOnce() -> Result<Settings, SettingsError>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let base = match &args.url {
        Some(url) => url_arg(url)?,
        None => base_url(&settings()?.api.bind),
    };
    Ok(status_command(&base, args.json, out)?)
}

/// `botfleet task add|list`.
pub fn task(
    settings: &Settings,
    command: &TaskCommand,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    match command {
        TaskCommand::Add { task, daemon } => {
            task_add_command(&daemon.daemon(settings)?, task, daemon.json, out)
        }
        TaskCommand::List {
            status,
            limit,
            daemon,
        } => task_list_command(
            &daemon.daemon(settings)?,
            status.as_deref(),
            *limit,
            daemon.json,
            out,
        ),
        // Dispatched by `main` (it has exit codes of its own): `work::run`.
        TaskCommand::Work(_) => Ok(()),
    }
}

/// `botfleet admin send`.
pub fn admin(
    settings: &Settings,
    command: &AdminCommand,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let AdminCommand::Send {
        pid,
        message,
        daemon,
    } = command;
    admin_send_command(&daemon.daemon(settings)?, pid, message, daemon.json, out)
}

/// `botfleet events tail`.
pub fn events(
    settings: &Settings,
    command: &EventsCommand,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let EventsCommand::Tail { count, daemon } = command;
    events_tail_command(&daemon.daemon(settings)?, *count, daemon.json, out)
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answered at the address (not running, wrong `api.bind` or `--url`).
    #[error("cannot reach the daemon at {url}: {reason} (is `botfleet run` running, and is api.bind or --url right?)")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The daemon refused the request (bad input, missing token...): its status and message.
    #[error("the daemon refused: {message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The daemon's error message.
        message: String,
    },
    /// An argument is not acceptable (checked before anything is sent).
    #[error("{0}")]
    BadInput(String),
    /// It answered, but not with what was expected.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `--url` checked before anything is sent: an `http://` or `https://` URL with a host, else
/// [`ClientError::BadInput`] naming `--url`.
pub fn url_arg(url: &str) -> Result<String, ClientError> {
    let bad = |why: String| {
        ClientError::BadInput(format!(
            "--url: expected the daemon's base URL such as http://127.0.0.1:8080, got {url:?} ({why})"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!("scheme {:?}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(url.to_string())
}

/// The base URL of the daemon listening on `bind` (`0.0.0.0` and `::` are asked on loopback).
pub fn base_url(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", addr.port())
        }
        Ok(addr) => format!("http://{addr}"),
        Err(_) => format!("http://{bind}"),
    }
}

/// How long a request to the daemon may take (a live stream only bounds its connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running daemon's HTTP API, as the command line asks it.
#[derive(Debug, Clone)]
pub struct Daemon {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Daemon {
    /// The daemon at `base` (`http://127.0.0.1:8080`); `token` is sent as `Authorization:
    /// Bearer` with mutating requests when set.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Value, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let body = response.text().await.map_err(|e| ClientError::BadAnswer {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let value: Value = serde_json::from_str(&body).map_err(|e| ClientError::BadAnswer {
            url: url.to_string(),
            reason: format!("status {status}, not JSON: {e}"),
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                message: value["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| value.to_string()),
            })
        }
    }

    /// `GET {base}{path}` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        self.send(self.client.get(&url).timeout(REQUEST_TIMEOUT), &url)
            .await
    }

    /// `POST {base}{path}` with a JSON body, with the token; the answer as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.post_within(path, body, REQUEST_TIMEOUT).await
    }

    /// [`Daemon::post`], bounded by `timeout` instead of the usual ten seconds (a long poll
    /// needs more, a lock's extension less).
    pub async fn post_within(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let url = self.url(path);
        let mut request = self.client.post(&url).timeout(timeout).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.send(request, &url).await
    }

    /// Follows the server-sent events at `path`, calling `on_event(event, data)` for each frame
    /// until it returns `false` or the daemon ends the stream.
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> Result<bool, ClientError>,
    ) -> Result<(), ClientError> {
        let url = self.url(path);
        let mut response =
            self.client
                .get(&url)
                .send()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
        if !response.status().is_success() {
            return Err(ClientError::BadAnswer {
                url,
                reason: format!("status {}", response.status()),
            });
        }
        let mut buffer = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let chunk = response.chunk().await.map_err(|e| ClientError::BadAnswer {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() && !on_event(&event, &data)? {
                        return Ok(());
                    }
                    event.clear();
                    data.clear();
                } else if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(text) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(text.trim_start());
                }
                // Comments (`: keep-alive`) and other fields are ignored.
            }
        }
    }
}

/// `GET {base}/status` as JSON.
pub async fn fetch_status(base: &str) -> Result<Value, ClientError> {
    Daemon::new(base, None)?.get("/status").await
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `botfleet status`: asks the daemon at `base` and writes its status to `out`, as the JSON
/// snapshot when `json`, else as a few human-readable lines.
pub fn status_command(base: &str, json: bool, out: &mut impl Write) -> Result<(), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(fetch_status(base))?;
    if json {
        writeln!(out, "{status}")?;
    } else {
        out.write_all(render_status(&status).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human-readable form of a status snapshot.
pub fn render_status(status: &Value) -> String {
    let mut text = String::new();
    let healthy = status["health"]["healthy"].as_bool().unwrap_or(false);
    text.push_str(&format!(
        "botfleet {}: {}\n",
        show(&status["instance"]),
        if healthy { "healthy" } else { "UNHEALTHY" }
    ));
    for reason in status["health"]["reasons"].as_array().into_iter().flatten() {
        text.push_str(&format!("  ! {}\n", show(reason)));
    }
    let storage = &status["storage"];
    text.push_str(&format!(
        "storage: mode {}, outbox {}, mode changes {}, refused writes {}\n",
        show(&storage["mode"]),
        show(&storage["outbox_len"]),
        show(&storage["mode_changes"]),
        show(&storage["refused_writes"]),
    ));
    text.push_str("actors:\n");
    for actor in field(status, &["actors", "actors"])
        .as_array()
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "  {:<20} {:<10} restarts {}\n",
            show(&actor["actor"]),
            show(&actor["state"]),
            show(&actor["restarts"]),
        ));
    }
    let locks = &status["locks"];
    if !locks.is_null() {
        text.push_str(&format!(
            "locks: {} waiters, {} local locks held\n",
            show(&locks["waiters"]),
            show(&locks["local_locks"]),
        ));
    }
    for name in botfleet::http::PLACEHOLDER_SECTIONS {
        let value = &status[*name];
        if !value.is_null() {
            text.push_str(&format!("{name}: {}\n", render_section(name, value)));
        }
    }
    text
}

/// One line for a section of the snapshot: the built-in ones summarised, others as JSON.
fn render_section(name: &str, v: &Value) -> String {
    if v["enabled"] == Value::Bool(false) {
        return "disabled".into();
    }
    match name {
        "queue" if v.get("pending").is_some() => format!(
            "{} pending, {} delayed, {} processing, {} dead; here {} completed, {} running",
            show(&v["pending"]),
            show(&v["delayed"]),
            show(&v["processing"]),
            show(&v["dead"]),
            show(&v["workers"]["completed"]),
            show(&v["workers"]["running"]),
        ),
        "bots" if v.get("live").is_some() => format!(
            "{} live, {} stale, {} zombie",
            show(&v["live"]),
            show(&v["stale"]),
            show(&v["zombie"]),
        ),
        "snapshot" if v.get("fetcher").is_some() => format!(
            "age {} ms, leader here: {}, {} readers",
            show(&v["age_ms"]),
            show(&v["fetcher"]["leader"]),
            v["readers"].as_array().map_or(0, Vec::len),
        ),
        "hazards" if v.get("ticker").is_some() => format!(
            "leader here: {}, {} ticks written",
            show(&v["ticker"]["leader"]),
            show(&v["ticker"]["ticks_written"]),
        ),
        "events" if v.is_array() => match v.as_array().and_then(|a| a.first()) {
            Some(newest) => format!(
                "newest {} {} (session {})",
                show(&newest["timestamp"]),
                show(&newest["type"]),
                show(&newest["session_id"]),
            ),
            None => "none".into(),
        },
        _ => v.to_string(),
    }
}

/// Runs `work` on a small runtime of its own (the command line has none).
fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// What `botfleet task add` sends: its arguments.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TaskAdd {
    /// The task type (login, job_check, job_accept, job_reject, navigation, screenshot).
    #[arg(value_name = "TYPE")]
    pub task_type: String,
    /// The task's data, a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub data: String,
    /// Priority, 0 to 100, higher first [default: the type's, e.g. login 10].
    #[arg(long)]
    pub priority: Option<i64>,
    /// Run no earlier than this many milliseconds from now.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub delay_ms: u64,
}

/// `botfleet task add`: enqueues a task through the daemon and writes its id (and the rest of
/// the answer with `json`). `--data` that is not a JSON object is refused before anything is
/// sent.
pub fn task_add_command(
    daemon: &Daemon,
    task: &TaskAdd,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let data: Value = serde_json::from_str(&task.data)
        .map_err(|e| ClientError::BadInput(format!("--data: not JSON: {e}")))?;
    if !data.is_object() {
        return Err(ClientError::BadInput(
            "--data: expected a JSON object, e.g. '{\"user\": \"a\"}'".into(),
        ));
    }
    let mut body = serde_json::json!({
        "type": task.task_type, "data": data, "delay_ms": task.delay_ms,
    });
    if let Some(priority) = task.priority {
        body["priority"] = priority.into();
    }
    let answer = block_on(daemon.post("/api/bot/tasks/add", &body))?;
    if json {
        writeln!(out, "{answer}")?;
    } else {
        writeln!(
            out,
            "task {} added: {}, priority {}{}",
            show(&answer["task_id"]),
            show(&answer["type"]),
            show(&answer["priority"]),
            match answer["delay_ms"].as_u64() {
                Some(ms) if ms > 0 => format!(", runs in {ms} ms"),
                _ => String::new(),
            }
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `botfleet task list`: the queue's counts and its tasks (of one status, or those that run,
/// wait or died), as a table or as the daemon's JSON.
pub fn task_list_command(
    daemon: &Daemon,
    status: Option<&str>,
    limit: Option<usize>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut query = Vec::new();
    if let Some(status) = status {
        query.push(format!("status={status}"));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    let path = if query.is_empty() {
        "/api/bot/tasks".to_string()
    } else {
        format!("/api/bot/tasks?{}", query.join("&"))
    };
    let answer = block_on(daemon.get(&path))?;
    if json {
        writeln!(out, "{answer}")?;
    } else {
        out.write_all(render_tasks(&answer).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The human-readable form of a `GET /api/bot/tasks` answer.
pub fn render_tasks(answer: &Value) -> String {
    let c = &answer["counts"];
    let mut text = format!(
        "queue: {} pending, {} delayed, {} processing, {} dead\n",
        show(&c["pending"]),
        show(&c["delayed"]),
        show(&c["processing"]),
        show(&c["dead"]),
    );
    let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
    if tasks.is_empty() {
        text.push_str("no tasks\n");
        return text;
    }
    text.push_str(&format!(
        "{:<38} {:<12} {:<11} {:>8} {:>8}  {}\n",
        "ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED"
    ));
    for t in tasks {
        text.push_str(&format!(
            "{:<38} {:<12} {:<11} {:>8} {:>8}  {}\n",
            show(&t["id"]),
            show(&t["type"]),
            show(&t["status"]),
            show(&t["priority"]),
            show(&t["attempts"]),
            show(&t["created_at"]),
        ));
    }
    text
}

/// `botfleet admin send PID MESSAGE`: writes the message id.
pub fn admin_send_command(
    daemon: &Daemon,
    pid: &str,
    message: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let body = serde_json::json!({ "pid": pid, "message": message });
    let answer = block_on(daemon.post("/api/admin/send", &body))?;
    if json {
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "sent {} to bot {pid}", show(&answer["id"]))?;
    }
    out.flush()?;
    Ok(())
}

/// `botfleet events tail`: the newest events, then each new one as it happens, one line each
/// (the event's JSON with `json`); stops after `count` events when given. A stream the daemon
/// ends first (it stopped) is an error.
pub fn events_tail_command(
    daemon: &Daemon,
    count: Option<usize>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    if count == Some(0) {
        return Ok(());
    }
    let mut seen = 0usize;
    let wanted = count;
    block_on(daemon.follow("/api/bot/event-stream", |event, data| {
        if event != "event" {
            return Ok(true);
        }
        if json {
            writeln!(out, "{data}")?;
        } else {
            let e: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            writeln!(
                out,
                "{} {:<14} session {} {}",
                show(&e["timestamp"]),
                show(&e["type"]),
                show(&e["session_id"]),
                show(&e["data"]),
            )?;
        }
        out.flush()?;
        seen += 1;
        Ok(count.is_none_or(|n| seen < n))
    }))?;
    if wanted.is_none_or(|n| seen < n) {
        // The stream ended before the events asked for: the daemon stopped.
        return Err(ClientError::BadAnswer {
            url: daemon.url("/api/bot/event-stream"),
            reason: "the daemon ended the event stream (stopped?)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_use() {
        assert!(url_arg("http://127.0.0.1:8080").is_ok());
        assert!(url_arg("https://fleet.example/").is_ok());
        for bad in ["garbage", "", "ftp://h/", "http://"] {
            let err = url_arg(bad).unwrap_err();
            assert!(err.to_string().starts_with("--url: "), "{err}");
        }
    }

    #[test]
    fn unspecified_binds_are_asked_on_loopback() {
        assert_eq!(base_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[test]
    fn human_status_names_actors_and_mode() {
        let status = serde_json::json!({
            "instance": "h-1", "health": {"healthy": false, "reasons": ["actor x is failed"]},
            "storage": {"mode": "degraded", "outbox_len": 3, "mode_changes": 1, "refused_writes": 0},
            "actors": {"actors": [{"actor": "presence", "state": "running", "restarts": 2}]},
            "locks": null, "queue": {"pending": 4},
            "bots": {"live": 2, "stale": 1, "zombie": 0, "peers": []},
            "hazards": {"enabled": false}
        });
        let text = render_status(&status);
        for part in [
            "UNHEALTHY",
            "actor x is failed",
            "mode degraded",
            "outbox 3",
            "presence",
            "restarts 2",
            "queue: 4 pending, - delayed",
            "bots: 2 live, 1 stale, 0 zombie",
            "hazards: disabled",
        ] {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
    }
}
