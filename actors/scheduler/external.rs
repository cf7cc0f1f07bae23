//! Handlers outside the process: a task run by a command or by a webhook, with no Rust code.
//!
//! The daemon's `[[scheduler.handlers]]` ([`HandlerSettings`]) are registered with
//! [`Scheduler::register_handler`] by [`register`] (the fleet calls it at start, so an
//! embedding host gets them too), at the entry's `concurrency`. One routine per kind, for
//! whatever else runs a task outside the process ([`run_command`], [`Webhook::call`]):
//!
//! - **command** (an argv, run without a shell): the task JSON ([`task_document`]) on stdin;
//!   `BOTFLEET_TASK_ID`, `BOTFLEET_TASK_TYPE` and `BOTFLEET_TASK_ATTEMPT` in its environment
//!   (beside the process's own); stdout read and discarded. Exit 0 completes the task;
//!   another code (or a signal) fails the attempt with the last [`STDERR_TAIL_BYTES`] of its
//!   stderr as the error. It runs in a process group of its own: at `timeout_ms` the whole
//!   group gets SIGKILL and the attempt fails; a handler abandoned (the process stopping
//!   with it still running) kills its group too.
//! - **webhook** (`url`): the task JSON POSTed, with `X-Botfleet-Task-Id`,
//!   `X-Botfleet-Task-Type` and `X-Botfleet-Task-Attempt`. A 2xx answer completes the task;
//!   any other status (redirects are not followed), a connection error or no answer within
//!   `timeout_ms` fails the attempt (with the status and the start of the answer's body).
//!
//! A failed attempt is retried with the scheduler's backoff and dead-lettered after its last
//! attempt, as for any handler. Error texts never contain the webhook's URL (it may carry a
//! secret).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{HandlerResult, Scheduler, SchedulerError, Task};
use crate::settings::HandlerSettings;

/// How much of a command's stderr (and of a webhook's refusal) a failed attempt keeps as its
/// error: the last 2 KiB.
pub const STDERR_TAIL_BYTES: usize = 2_048;

/// How long a command's output may stay open after it exited (a background child of its own
/// holding it) before the attempt's outcome is taken without the rest.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// What an external handler is told of one attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The task's id (`BOTFLEET_TASK_ID`).
    pub id: String,
    /// Its type (`BOTFLEET_TASK_TYPE`).
    pub task_type: String,
    /// The attempt, from 1 (`BOTFLEET_TASK_ATTEMPT`).
    pub attempt: u32,
    /// The JSON document given on stdin or POSTed.
    pub body: Vec<u8>,
}

impl Invocation {
    /// The invocation of a claimed `task`: its [`task_document`] as the body.
    pub fn of(task: &Task) -> Self {
        Self {
            id: task.id.clone(),
            task_type: task.task_type.clone(),
            attempt: task.attempts.max(1),
            body: task_document(task).to_string().into_bytes(),
        }
    }
}

/// The JSON an external handler receives for `task`: `{"id", "type", "data" (the task's JSON,
/// or its text when it is not JSON), "priority", "attempt", "created_at"}`.
pub fn task_document(task: &Task) -> Value {
    let data = serde_json::from_str::<Value>(&task.data)
        .unwrap_or_else(|_| Value::String(task.data.clone()));
    json!({
        "id": task.id,
        "type": task.task_type,
        "data": data,
        "priority": task.priority,
        "attempt": task.attempts.max(1),
        "created_at": task.created_at,
    })
}

/// Registers each of `handlers` with `scheduler`: a command or a webhook per task of its type,
/// at its concurrency. The entries are those validated with the settings (exactly one of
/// `command` and `url`); one that is not fails with [`SchedulerError::Invalid`].
pub fn register(scheduler: &Scheduler, handlers: &[HandlerSettings]) -> Result<(), SchedulerError> {
    for handler in handlers {
        let timeout = Duration::from_millis(handler.timeout_ms);
        let invalid = |message: String| SchedulerError::Invalid {
            what: "scheduler.handlers entry",
            message: format!("type {:?}: {message}", handler.task_type),
        };
        match (&handler.command, &handler.url) {
            (Some(argv), None) => {
                if argv.first().is_none_or(String::is_empty) {
                    return Err(invalid("an empty command".into()));
                }
                let argv: Arc<[String]> = argv.clone().into();
                scheduler.register_handler(
                    &handler.task_type,
                    handler.concurrency,
                    move |task| {
                        let argv = argv.clone();
                        async move { run_command(&argv, &Invocation::of(&task), timeout).await }
                    },
                )?;
            }
            (None, Some(url)) => {
                let hook = Arc::new(Webhook::new(url, timeout).map_err(invalid)?);
                scheduler.register_handler(
                    &handler.task_type,
                    handler.concurrency,
                    move |task| {
                        let hook = hook.clone();
                        async move { hook.call(&Invocation::of(&task)).await }
                    },
                )?;
            }
            _ => return Err(invalid("expected exactly one of command and url".into())),
        }
        tracing::info!(
            actor = "scheduler",
            task_type = %handler.task_type,
            kind = if handler.command.is_some() { "command" } else { "webhook" },
            concurrency = handler.concurrency,
            "external handler registered"
        );
    }
    Ok(())
}

/// Runs `argv` for one attempt (see the module doc): `Ok(())` when it exits 0 within
/// `timeout`, else the reason, with the tail of its stderr.
pub async fn run_command(
    argv: &[String],
    invocation: &Invocation,
    timeout: Duration,
) -> HandlerResult {
    let Some((program, args)) = argv.split_first() else {
        return Err("no command to run".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("BOTFLEET_TASK_ID", &invocation.id)
        .env("BOTFLEET_TASK_TYPE", &invocation.task_type)
        .env("BOTFLEET_TASK_ATTEMPT", invocation.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    // Killed with its group if this future is dropped before the command ends.
    let mut group = Group(child.id().map(|pid| pid as libc::pid_t));

    if let Some(mut stdin) = child.stdin.take() {
        let body = invocation.body.clone();
        // A command that does not read its stdin closes it: the write's error is no failure.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let tail = Arc::new(Mutex::new(Tail::default()));
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(read_into(out, None))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(read_into(err, Some(tail.clone())))),
    ];

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("cannot wait for {program:?}: {e}"))?,
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            let stderr = finish(readers, &tail).await;
            return Err(with_stderr(
                format!(
                    "timed out after {} ms: killed (its process group)",
                    timeout.as_millis()
                ),
                &stderr,
            ));
        }
    };
    group.0 = None;
    let stderr = finish(readers, &tail).await;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".to_owned(),
    };
    Err(with_stderr(how, &stderr))
}

/// `what`, then the stderr tail when there is one.
fn with_stderr(what: String, stderr: &str) -> String {
    if stderr.is_empty() {
        what
    } else {
        format!("{what}; stderr: {stderr}")
    }
}

/// Waits (up to [`OUTPUT_GRACE`]) for the output readers, then answers the stderr tail.
async fn finish(readers: [Option<tokio::task::JoinHandle<()>>; 2], tail: &Mutex<Tail>) -> String {
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
    tail.lock().text()
}

/// Reads `stream` to its end, keeping its tail in `tail` when given (else discarding it).
async fn read_into(mut stream: impl AsyncRead + Unpin, tail: Option<Arc<Mutex<Tail>>>) {
    let mut buffer = [0u8; 8_192];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(tail) = &tail {
                    tail.lock().push(&buffer[..n]);
                }
            }
        }
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > STDERR_TAIL_BYTES {
            let cut = self.bytes.len() - STDERR_TAIL_BYTES;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    /// The tail as text (invalid UTF-8 replaced), trimmed; `...` first when cut.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = text.trim();
        if self.truncated {
            format!("...{text}")
        } else {
            text.to_owned()
        }
    }
}

/// A command's process group, killed (SIGKILL) when dropped while set.
struct Group(Option<libc::pid_t>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            if pgid > 1 {
                // SAFETY: kill(2) on the process group of a child this process started with
                // `process_group(0)` (its pid is the group's id) and has not reaped yet.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A webhook handler: one POST per attempt (see the module doc).
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl Webhook {
    /// A webhook at `url` (http or https) whose calls are bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => return Err("the webhook url is not an http or https URL".into()),
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook's HTTP client: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            timeout,
            client,
        })
    }

    /// POSTs `invocation`'s body: `Ok(())` on a 2xx answer, else why not.
    pub async fn call(&self, invocation: &Invocation) -> HandlerResult {
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Botfleet-Task-Id", invocation.id.as_str())
            .header("X-Botfleet-Task-Type", invocation.task_type.as_str())
            .header("X-Botfleet-Task-Attempt", invocation.attempt.to_string())
            .body(invocation.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Err(format!(
                    "webhook: no answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
            // Without the URL: it may carry a secret.
            Err(e) => return Err(format!("webhook: {}", error_chain(&e.without_url()))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The start of the answer's body, at most STDERR_TAIL_BYTES of it.
        let mut head = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = STDERR_TAIL_BYTES - head.len();
            head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if head.len() == STDERR_TAIL_BYTES {
                break;
            }
        }
        let body = String::from_utf8_lossy(&head).trim().to_owned();
        Err(if body.is_empty() {
            format!("webhook answered HTTP {}", status.as_u16())
        } else {
            format!("webhook answered HTTP {}: {body}", status.as_u16())
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation() -> Invocation {
        Invocation {
            id: "t-1".into(),
            task_type: "screenshot".into(),
            attempt: 2,
            body: br#"{"id":"t-1"}"#.to_vec(),
        }
    }

    fn argv(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_sees_the_task_and_its_exit_code_decides() {
        let seen = "test \"$BOTFLEET_TASK_ID $BOTFLEET_TASK_TYPE $BOTFLEET_TASK_ATTEMPT\" = \
                    't-1 screenshot 2' && test \"$(cat)\" = '{\"id\":\"t-1\"}'";
        let second = Duration::from_secs(10);
        assert_eq!(
            run_command(&argv(seen), &invocation(), second).await,
            Ok(())
        );
        let failed = run_command(
            &argv("echo out; echo boom >&2; exit 3"),
            &invocation(),
            second,
        )
        .await
        .unwrap_err();
        assert_eq!(failed, "exit code 3; stderr: boom");
        let missing = run_command(&["/no/such/program".into()], &invocation(), second)
            .await
            .unwrap_err();
        assert!(missing.starts_with("cannot start"), "{missing}");
    }

    #[tokio::test]
    async fn only_the_tail_of_stderr_is_kept() {
        let script = "head -c 10000 /dev/zero | tr '\\0' a >&2; echo END >&2; exit 1";
        let error = run_command(&argv(script), &invocation(), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(error.ends_with("aaaaEND"), "{error}");
        assert!(
            error.len() < STDERR_TAIL_BYTES + 64,
            "{} bytes",
            error.len()
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // A grandchild in the command's process group, which must die with it.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = std::time::Instant::now();
        let error = run_command(&argv(&script), &invocation(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(error.starts_with("timed out after 300 ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || {
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild survived the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
