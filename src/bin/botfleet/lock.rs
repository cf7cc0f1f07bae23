//! `botfleet lock run NAME --ttl-ms N [--wait-ms W] -- CMD ARGS...`: a fleet-wide `flock`,
//! through the running daemon's lock API (`/api/locks/...`).
//!
//! 1. Acquires NAME for `--ttl-ms`, waiting up to `--wait-ms` (the daemon waits; a request's
//!    own timeout is that plus ten seconds). Busy all that time: exit
//!    [`Exit::LockBusy`] (75), CMD not run.
//! 2. Runs CMD with `BOTFLEET_LOCK_NAME`, `BOTFLEET_LOCK_TOKEN` and `BOTFLEET_FENCE` (the
//!    fencing token) in its environment, its standard streams inherited, and extends the
//!    lock every third of its TTL. The daemon has no watchdog for it: this process is the
//!    watchdog, and if it dies the lock expires at its TTL (CMD then gets SIGTERM from the
//!    kernel: it is started with `PR_SET_PDEATHSIG`).
//! 3. When CMD ends, releases the lock and exits with CMD's code (128 + N when a signal N
//!    ended it).
//!
//! The lock is **lost** when the daemon answers that the token no longer holds it, or when no
//! extension succeeded within two thirds of the TTL since the last one (the daemon or Redis
//! unreachable: past that the lock could expire while CMD still runs). Then CMD gets SIGTERM,
//! SIGKILL [`KILL_AFTER`] later if it still runs, and `lock run` exits [`Exit::LockLost`]
//! (76), as it does when the release finds the lock no longer held (it expired before CMD
//! ended). CMD that cannot be started: [`Exit::CommandNotRun`] (127), the lock released.
//!
//! Signals: SIGINT, SIGTERM and SIGHUP sent to `lock run` are forwarded to CMD, which decides
//! when to end; the lock is held until it does. CMD runs in a process group of its own, and
//! signals (a forwarded one, the SIGTERM of a lost lock) go to the whole group, so CMD's own
//! children get them too. Except in a terminal: when `lock run` is the terminal's foreground
//! job (stdin a terminal), CMD stays in its group so that it can read the terminal, the
//! terminal's own Ctrl-C reaches it directly (it is not forwarded a second time), and signals
//! go to CMD alone. A signal that arrives while the lock is still being acquired ends `lock
//! run` with 128 + N and runs nothing.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use botfleet::clock::now_ms;
use botfleet::settings::Settings;
use clap::Subcommand;
use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::{base_url, url_arg, ClientError, Daemon};
use crate::exit::{BadArgument, Exit};

/// Longest `--wait-ms`, as the daemon's `/api/locks/acquire` takes it.
const MAX_WAIT_MS: u64 = 60_000;
/// How long CMD has to end after the SIGTERM of a lost lock before it gets SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(5);
/// The bound of the acquisition's request beyond `--wait-ms`, and of the release.
const REQUEST_MARGIN: Duration = Duration::from_secs(10);

/// `botfleet lock ...`.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Run CMD while holding the fleet-wide lock NAME (a `flock` across hosts): exit with
    /// CMD's code, 75 when the lock was busy for --wait-ms, 76 when it was lost while CMD
    /// ran (CMD then got SIGTERM), 127 when CMD could not be started.
    #[command(after_long_help = RUN_HELP)]
    Run(LockRunArgs),
}

/// The long help of `lock run`, after its options.
const RUN_HELP: &str = "\
CMD's environment: BOTFLEET_LOCK_NAME, BOTFLEET_LOCK_TOKEN and BOTFLEET_FENCE (the fencing
token: strictly increasing per lock name; pass it to what CMD changes, so that it can refuse
a stale holder). The lock is extended every third of --ttl-ms while CMD runs; if this process
dies the lock expires at its TTL and CMD gets SIGTERM.

Exit codes of lock run:
  CMD's    CMD ended with it (128 + N when signal N ended it); the lock was released
  75       the lock was busy: another holder kept it for --wait-ms; CMD was not run
  76       the lock was lost while CMD ran (the daemon said the token no longer holds it, no
           extension succeeded within 2/3 of the TTL, or it had expired when CMD ended);
           CMD got SIGTERM, then SIGKILL 5 s later if it still ran
  127      CMD could not be started (not found, not executable); the lock was released
  1        the daemon could not be reached, or refused for another reason (Redis down: 503)
  2        bad arguments, or a request the daemon refused as bad

SIGINT, SIGTERM and SIGHUP are forwarded to CMD (to its process group); the lock is held
until CMD ends.";

/// `botfleet lock run`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LockRunArgs {
    /// The lock's name: its Redis key, as the seeds name theirs (wallet-retry-scheduler-lock);
    /// seed clients' SET NX on the same name and this exclude each other.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The lock's time to live, ms: extended every third of it while CMD runs, and how long
    /// the lock outlives this process if it is killed.
    #[arg(long, value_name = "MS")]
    pub ttl_ms: u64,
    /// How long to wait while another holder has the lock, ms (0 to 60000).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub wait_ms: u64,
    /// The daemon's base URL [default: http:// + api.bind].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `botfleet lock ...`: its exit code, or an error that [`Exit::report`] turns into one.
pub fn run(settings: &Settings, command: &LockCommand) -> anyhow::Result<Exit> {
    let LockCommand::Run(args) = command;
    if args.ttl_ms == 0 {
        return Err(BadArgument::new("--ttl-ms", "expected at least 1 ms, got 0").into());
    }
    if args.wait_ms > MAX_WAIT_MS {
        return Err(BadArgument::new(
            "--wait-ms",
            format!("expected 0 to {MAX_WAIT_MS}, got {}", args.wait_ms),
        )
        .into());
    }
    if args.command.first().is_none_or(String::is_empty) {
        return Err(BadArgument::new("CMD", "expected a command after `--`").into());
    }
    let base = match &args.url {
        Some(url) => url_arg(url)?,
        None => base_url(&settings.api.bind),
    };
    let daemon = Daemon::new(&base, Some(settings.api.token.expose().to_owned()))?;
    // One thread: CMD is forked from it, and `PR_SET_PDEATHSIG` watches the thread that
    // forked, which must live as long as this process.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hold_and_run(&daemon, args))
}

/// The signals forwarded to CMD.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    async fn next(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// A held lock, as the daemon answered it.
struct Held {
    token: String,
    fence: u64,
    /// When the daemon granted it, by this process's clock: between the request and its
    /// answer, where the daemon's `expires_at_ms - ttl_ms` says (on another host, as close
    /// as clock skew allows).
    granted_at: Instant,
}

async fn hold_and_run(daemon: &Daemon, args: &LockRunArgs) -> anyhow::Result<Exit> {
    let mut signals = Signals::install()?;
    let ttl = Duration::from_millis(args.ttl_ms);
    let acquired = tokio::select! {
        acquired = acquire(daemon, args) => acquired?,
        sig = signals.next() => {
            eprintln!("botfleet: lock {:?}: interrupted by signal {sig} before the lock was had; CMD not run", args.name);
            return Ok(Exit::Command(128 + sig as u8));
        }
    };
    let Some(held) = acquired else {
        eprintln!(
            "botfleet: lock {:?} is busy: another holder kept it for {} ms; CMD not run",
            args.name, args.wait_ms
        );
        return Ok(Exit::LockBusy);
    };

    let interactive = is_terminal_foreground();
    let mut child = match spawn(args, &held, interactive) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("botfleet: cannot run {:?}: {e}", args.command[0]);
            release(daemon, &args.name, &held.token).await;
            return Ok(Exit::CommandNotRun);
        }
    };
    // The child's pid is its process group's id unless it stays in ours.
    let pid = child.id().map_or(0, |pid| pid as libc::pid_t);
    let target = if interactive { pid } else { -pid };

    let (lost_tx, mut lost_rx) = oneshot::channel();
    let extender = tokio::spawn(keep_extended(
        daemon.clone(),
        args.name.clone(),
        held.token.clone(),
        ttl,
        held.granted_at,
        lost_tx,
    ));
    let mut lost: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    let status: ExitStatus = loop {
        let kill_deadline = kill_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            status = child.wait() => break status?,
            sig = signals.next() => {
                // The terminal sends its Ctrl-C to CMD itself when they share a group.
                if !(interactive && sig == libc::SIGINT) {
                    send(target, sig);
                }
            }
            reason = &mut lost_rx, if lost.is_none() => {
                let reason = reason.unwrap_or_else(|_| "the extension task ended".into());
                eprintln!(
                    "botfleet: lock {:?} lost while CMD ran ({reason}): sending SIGTERM to CMD",
                    args.name
                );
                send(target, libc::SIGTERM);
                lost = Some(reason);
                kill_at = Some(Instant::now() + KILL_AFTER);
            }
            _ = tokio::time::sleep_until(kill_deadline), if kill_at.is_some() => {
                eprintln!(
                    "botfleet: CMD still runs {} s after SIGTERM: sending SIGKILL",
                    KILL_AFTER.as_secs()
                );
                send(target, libc::SIGKILL);
                kill_at = None;
            }
        }
    };
    extender.abort();
    let released = release(daemon, &args.name, &held.token).await;
    if lost.is_some() {
        return Ok(Exit::LockLost);
    }
    if released == Some(false) {
        eprintln!(
            "botfleet: lock {:?} had expired before CMD ended (another holder may have run meanwhile)",
            args.name
        );
        return Ok(Exit::LockLost);
    }
    Ok(Exit::Command(exit_code(status)))
}

/// Acquires the lock: `Some` when held, `None` when busy for the whole wait.
async fn acquire(daemon: &Daemon, args: &LockRunArgs) -> Result<Option<Held>, ClientError> {
    let body = json!({ "name": args.name, "ttl_ms": args.ttl_ms, "wait_ms": args.wait_ms });
    let within = Duration::from_millis(args.wait_ms) + REQUEST_MARGIN;
    let asked_at = Instant::now();
    match daemon
        .post_within("/api/locks/acquire", &body, within)
        .await
    {
        Ok(lease) => {
            let answered_at = Instant::now();
            let bad = |what: &str| ClientError::BadAnswer {
                url: "/api/locks/acquire".into(),
                reason: format!("no {what} in {lease}"),
            };
            let token = lease["token"].as_str().ok_or_else(|| bad("token"))?;
            let fence = lease["fence"].as_u64().ok_or_else(|| bad("fence"))?;
            let expires_at_ms = lease["expires_at_ms"]
                .as_u64()
                .ok_or_else(|| bad("expires_at_ms"))?;
            // How long ago the daemon granted it, by the wall clocks, kept within what this
            // process saw: no earlier than the request was sent, no later than the answer.
            let granted_ms = expires_at_ms.saturating_sub(args.ttl_ms);
            let age = Duration::from_millis(now_ms().saturating_sub(granted_ms))
                .min(answered_at - asked_at);
            Ok(Some(Held {
                token: token.to_owned(),
                fence,
                granted_at: answered_at - age,
            }))
        }
        Err(ClientError::Refused { status: 409, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Releases the lock: `Some(true)` released, `Some(false)` not held any more, `None` when the
/// daemon could not be asked (the lock then expires at its TTL).
async fn release(daemon: &Daemon, name: &str, token: &str) -> Option<bool> {
    let body = json!({ "name": name, "token": token });
    match daemon
        .post_within("/api/locks/release", &body, REQUEST_MARGIN)
        .await
    {
        Ok(_) => Some(true),
        Err(ClientError::Refused { status: 409, .. }) => Some(false),
        Err(e) => {
            eprintln!("botfleet: lock {name:?} not released ({e}); it expires at its TTL");
            None
        }
    }
}

/// Extends the lock every third of `ttl` from the last success; tells `lost` why once the
/// lock cannot be counted on any more: the daemon says the token no longer holds it, or no
/// extension succeeded within two thirds of the TTL after the last one (the lock would
/// otherwise be at risk of expiring while CMD runs). `held_since` is when it was granted.
async fn keep_extended(
    daemon: Daemon,
    name: String,
    token: String,
    ttl: Duration,
    held_since: Instant,
    lost: oneshot::Sender<String>,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    let retry = (every / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
    let body = json!({ "name": name, "token": token, "ttl_ms": ttl.as_millis() as u64 });
    let mut extended_at = held_since;
    loop {
        tokio::time::sleep_until(extended_at + every).await;
        let give_up = extended_at + ttl * 2 / 3;
        loop {
            let sent = Instant::now();
            let within = give_up
                .saturating_duration_since(sent)
                .max(Duration::from_millis(1));
            let error = match tokio::time::timeout(
                within,
                daemon.post_within("/api/locks/extend", &body, within),
            )
            .await
            {
                Ok(Ok(_)) => {
                    extended_at = sent;
                    break;
                }
                Ok(Err(ClientError::Refused { status: 409, .. })) => {
                    let _ = lost.send("the daemon says the token no longer holds it".into());
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", within.as_millis()),
            };
            if Instant::now() + retry >= give_up {
                let _ = lost.send(format!(
                    "no extension succeeded within 2/3 of the TTL; last error: {error}"
                ));
                return;
            }
            tokio::time::sleep(retry).await;
        }
    }
}

/// Whether stdin is a terminal whose foreground process group is ours: someone typed the
/// command at a shell and CMD may want the terminal.
fn is_terminal_foreground() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read the state of fd 0 and of this process.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Starts CMD: its own process group unless `interactive`, SIGTERM when this process dies,
/// the lock in its environment.
fn spawn(
    args: &LockRunArgs,
    held: &Held,
    interactive: bool,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("BOTFLEET_LOCK_NAME", &args.name)
        .env("BOTFLEET_LOCK_TOKEN", &held.token)
        .env("BOTFLEET_FENCE", held.fence.to_string());
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // syscalls (setpgid, prctl, getppid); it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if !interactive && libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // This process may have died before prctl took effect: nothing would extend the
            // lock, so CMD must not run.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `sig` to `target` (a pid, or a process group as `-pgid`).
fn send(target: libc::pid_t, sig: libc::c_int) {
    if target == 0 || target == -1 {
        // No pid (CMD already reaped): 0 or -1 would signal this group or everything.
        return;
    }
    // SAFETY: kill(2) on CMD's pid or process group, which this process started and has not
    // reaped yet (the loop reaps it only when it ends).
    unsafe { libc::kill(target, sig) };
}

/// The code a shell would give for `status`: the exit code, or 128 + the signal's number.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_command_follows_the_double_dash() {
        let cli = Cli::try_parse_from([
            "botfleet",
            "lock",
            "run",
            "wallet-lock",
            "--ttl-ms",
            "3000",
            "--wait-ms",
            "500",
            "--",
            "sh",
            "-c",
            "echo --ttl-ms",
        ])
        .unwrap();
        let Command::Lock(LockCommand::Run(args)) = cli.command else {
            panic!("not lock run: {:?}", cli.command)
        };
        assert_eq!(args.name, "wallet-lock");
        assert_eq!((args.ttl_ms, args.wait_ms), (3000, 500));
        assert_eq!(args.command, ["sh", "-c", "echo --ttl-ms"]);
        // No command, or no --ttl-ms: usage errors.
        for argv in [
            &["botfleet", "lock", "run", "n", "--ttl-ms", "10"][..],
            &["botfleet", "lock", "run", "n", "--", "true"][..],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(Exit::Usage.code()), "{argv:?}");
        }
    }

    #[test]
    fn shells_codes_for_signals() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
