//! The `botfleet` command line: argument types (clap derive) and the commands' library side.
//!
//! `src/main.rs` parses [`Cli`], dispatches on [`Command`] and maps errors to exit codes
//! ([`EXIT_OK`], [`EXIT_FAILURE`], [`EXIT_USAGE`]). To add a subcommand:
//!
//! 1. add a variant to [`Command`] (its doc comment is the `--help` line), with an `Args`
//!    struct or a nested `Subcommand` enum for its options;
//! 2. write what it does here (or in the module that owns it) as a function that takes the loaded
//!    [`Settings`] and its output stream (so that tests can read it) and returns a library
//!    error type;
//! 3. add its arm to `dispatch` in `src/main.rs`: load the settings with
//!    [`Cli::load_settings`], call `telemetry::init(&settings.log)` if it logs, then the
//!    function. A [`SettingsError`] exits with [`EXIT_USAGE`], any other error with
//!    [`EXIT_FAILURE`].

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::settings::{Settings, SettingsError};

pub mod history;

/// Exit code of success.
pub const EXIT_OK: u8 = 0;
/// Exit code of a failure at run time (I/O, Redis refusing to start, a crashed actor tree...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad settings or bad command-line usage (clap uses it for usage errors too).
pub const EXIT_USAGE: u8 = 2;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (`run`: stopped by SIGINT/SIGTERM with every write flushed)
  1    failure at run time (`run`: an actor kept failing past the restart intensity)
  2    bad configuration or bad usage (every problem is printed to stderr, one per line),
       or a request the daemon refused as bad (task add with an unknown type, say)
  3    `run` stopped while Redis was unreachable: writes held in memory were lost
  130  `run` interrupted by a second signal during the graceful stop

Settings: settings.toml in the working directory (or --config FILE), overridden by the
environment: REDIS_URL, USE_REDIS, REDIS_DB, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, and
BOTFLEET__SECTION__KEY for any key (e.g. BOTFLEET__STORAGE__REDIS__TIMEOUT_MS=300).
RUST_LOG overrides log.level.";

/// botfleet: supervised actors that share a bot fleet's state through Redis, and keep working
/// when it is down.
#[derive(Debug, Parser)]
#[command(name = "botfleet", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Settings file [default: ./settings.toml, if present]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Loads the settings named by `--config` (or the default file) and the environment.
    pub fn load_settings(&self) -> Result<Settings, SettingsError> {
        Settings::load(self.config.as_deref())
    }
}

/// The subcommands. Deliberately exhaustive: a new one does not compile until `main`
/// dispatches it.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGINT or SIGTERM (a second signal quits at once).
    Run,
    /// Inspect the settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a benchmark; prints one JSON line per scenario.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Recompute the hazards of a past round from its revealed server seed (provably fair).
    Verify(VerifyArgs),
    /// Ask the running daemon for its status over HTTP (exit 1 when it cannot be reached).
    Status(StatusArgs),
    /// Add or list tasks through the running daemon.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Send an admin message to a bot through the running daemon (seed 004).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Follow the bot events of the running daemon.
    #[command(subcommand)]
    Events(EventsCommand),
    /// List the archive's sessions, task attempts, events, hazard rounds or players'
    /// settlements (reads the database of `[history]` directly; no daemon needed).
    #[command(subcommand)]
    History(history::HistoryCommand),
}

/// `botfleet verify ...`: the hazards of one round, by the procedure documented in
/// `botfleet::actors::hazards::fairness`. A ticker round of difficulty D at tick N has client
/// seed D and nonce N.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The revealed server seed.
    #[arg(long, value_name = "SEED")]
    pub server_seed: String,
    /// The client (player) seed.
    #[arg(long, value_name = "SEED")]
    pub client_seed: String,
    /// The round's nonce.
    #[arg(long, allow_negative_numbers = true)]
    pub nonce: i64,
    /// Difficulty name, as in `[[hazards.difficulties]]` (e.g. EASY).
    #[arg(long)]
    pub difficulty: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `botfleet verify`: writes the round's hazards (and the seed's SHA-256, to compare with the
/// hash published before the round) to `out`.
pub fn verify(settings: &Settings, args: &VerifyArgs, out: &mut impl Write) -> anyhow::Result<()> {
    use crate::actors::hazards::{fairness, HazardError};
    let difficulty = settings
        .hazards
        .difficulties
        .iter()
        .find(|d| d.name == args.difficulty)
        .ok_or_else(|| HazardError::UnknownDifficulty(args.difficulty.clone()))?;
    let hazards =
        fairness::derive_hazards(&args.server_seed, &args.client_seed, args.nonce, difficulty)?;
    let hashed = fairness::hash_seed(&args.server_seed);
    if args.json {
        let value = serde_json::json!({
            "difficulty": difficulty.name,
            "columns": difficulty.columns,
            "hazards": hazards,
            "clientSeed": args.client_seed,
            "nonce": args.nonce,
            "hashedServerSeed": hashed,
        });
        writeln!(out, "{value}")?;
    } else {
        let list: Vec<String> = hazards.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "difficulty:       {} ({} columns)",
            difficulty.name, difficulty.columns
        )?;
        writeln!(out, "hazards:          {}", list.join(" "))?;
        writeln!(out, "hashedServerSeed: {hashed}")?;
    }
    out.flush()?;
    Ok(())
}

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
    pub fn daemon(
        &self,
        settings: &Settings,
    ) -> Result<crate::http::client::Daemon, crate::http::client::ClientError> {
        let base = match &self.url {
            Some(url) => url.clone(),
            None => crate::http::client::base_url(&settings.api.bind),
        };
        crate::http::client::Daemon::new(&base, Some(settings.api.token.expose().to_owned()))
    }
}

/// `botfleet task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Enqueue a task: `botfleet task add login --data '{"user": "a"}' --priority 10`.
    Add {
        /// The task type (login, job_check, job_accept, job_reject, navigation, screenshot).
        #[arg(value_name = "TYPE")]
        task_type: String,
        /// The task's data, a JSON object.
        #[arg(long, default_value = "{}", value_name = "JSON")]
        data: String,
        /// Priority, 0 to 100, higher first [default: the type's, e.g. login 10].
        #[arg(long)]
        priority: Option<i64>,
        /// Run no earlier than this many milliseconds from now.
        #[arg(long, default_value_t = 0, value_name = "MS")]
        delay_ms: u64,
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

/// `botfleet bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Storage handle throughput and latency beside redis-benchmark on the same server, and a
    /// kill -9 fail-over of a private redis-server (needs redis-server on PATH).
    Storage {
        /// Server for the throughput scenarios (keys under `bench:` are overwritten).
        #[arg(long, value_name = "URL")]
        redis: String,
        /// Operations per throughput scenario.
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
        /// Outbox writes to replay in the fail-over scenario.
        #[arg(long, default_value_t = 10_000)]
        outbox_writes: usize,
    },
    /// The peers' lock workload (acquire + release, TTL 10 s: one task on new keys, 50 tasks
    /// on keys of their own, 8 tasks on one key), to compare with `peers/run.sh locks`.
    Locks {
        /// Server to use (keys under `bench-lock:` are overwritten).
        #[arg(long, value_name = "URL")]
        redis: String,
        /// Pairs per uncontended scenario; the contended one runs a tenth of them.
        #[arg(long, default_value_t = 20_000)]
        pairs: usize,
        /// Run only this scenario (repeatable; default: all of them).
        #[arg(long, value_name = "NAME")]
        scenario: Vec<String>,
    },
    /// Cache service: near-cache hit and storage hit latency, and invalidation propagation
    /// between two processes (p50/p99). Without --redis a private redis-server is started.
    Cache {
        /// Server to use (keys under `bench-cache:` are overwritten).
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Reads per hit scenario.
        #[arg(long, default_value_t = 200_000)]
        reads: usize,
        /// Invalidations measured.
        #[arg(long, default_value_t = 2_000)]
        invalidations: usize,
        /// Internal: run as the second process of the propagation scenario.
        #[arg(long, hide = true)]
        peer: bool,
    },
    /// The peers' queue workload (20,000 no-op tasks, 50 concurrent handlers: seq-add,
    /// bulk-add, priority), to compare with `peers/run.sh queue`.
    Queue {
        /// Server to use (keys under `bench-queue-` are overwritten).
        #[arg(long, value_name = "URL")]
        redis: String,
        /// Tasks per scenario.
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Concurrent handlers.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Named queues the tasks are spread over; on Redis Cluster they shard over the
        /// masters (12 balances 1, 2, 3, 4 or 6 masters).
        #[arg(long, default_value_t = 1)]
        queues: usize,
    },
    /// The shared-data reader: `read()` on a fresh snapshot beside a plain GET of the same
    /// key, and propagation of a write to 100 readers.
    Read {
        /// Server to use (keys under `bench:shared-data` are overwritten); without it a
        /// private redis-server is started.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Reads (and GETs) timed.
        #[arg(long, default_value_t = 100_000)]
        reads: usize,
        /// Writes whose propagation is timed.
        #[arg(long, default_value_t = 500)]
        rounds: usize,
        /// Readers following the notices.
        #[arg(long, default_value_t = 100)]
        readers: usize,
    },
    /// Seed 004's load: simulated bots heartbeating at 1 Hz from one process (CPU, Redis
    /// commands/s, lateness), a peer scan, and admin message delivery latency.
    Heartbeat {
        /// Server to use (`heartbeat:*` keys of simulated pids are overwritten); without it a
        /// private redis-server is started.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Simulated bots.
        #[arg(long, default_value_t = 10_000)]
        bots: u64,
        /// Seconds of heartbeating.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Admin messages to time.
        #[arg(long, default_value_t = 2_000)]
        messages: u64,
    },
    /// The history archive: records archived per second on SQLite and on PostgreSQL, and the
    /// latency the archive adds to a task round trip (archive off vs on).
    History {
        /// Redis for the task-path scenario; without it a private redis-server is started.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// PostgreSQL admin URL (e.g. postgres://postgres@127.0.0.1:5432/postgres): a
        /// throwaway database is created there and dropped after. Without it the PostgreSQL
        /// scenario is skipped.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// Records per archive scenario.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Task round trips timed with the archive off, and as many with it on.
        #[arg(long, default_value_t = 2_000)]
        tasks: usize,
    },
}

/// `botfleet config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the settings; print the effective settings as TOML with secrets
    /// redacted (exit 0), or every problem, one per line on stderr (exit 2).
    Check,
}

/// `botfleet config check` once the settings loaded: writes them to `out` as TOML with secrets
/// redacted, under a comment saying so. (Loading is [`Cli::load_settings`]; its
/// [`SettingsError`] is the "every problem" outcome.)
pub fn config_check(settings: &Settings, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "# Effective botfleet settings (secrets shown as ***)")?;
    out.write_all(settings.redacted().to_toml().as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_is_accepted_before_and_after_the_subcommand() {
        let before =
            Cli::try_parse_from(["botfleet", "--config", "a.toml", "config", "check"]).unwrap();
        assert_eq!(before.config.as_deref(), Some(Path::new("a.toml")));
        let after = Cli::try_parse_from(["botfleet", "config", "check", "-c", "b.toml"]).unwrap();
        assert_eq!(after.config.as_deref(), Some(Path::new("b.toml")));
        assert!(matches!(
            after.command,
            Command::Config(ConfigCommand::Check)
        ));
    }

    #[test]
    fn usage_errors_exit_with_the_usage_code() {
        let err = Cli::try_parse_from(["botfleet", "config", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        for (code, meaning) in [
            (EXIT_OK, "success"),
            (EXIT_FAILURE, "failure at run time"),
            (EXIT_USAGE, "bad configuration"),
            (
                crate::daemon::EXIT_UNFLUSHED,
                "writes held in memory were lost",
            ),
            (crate::daemon::EXIT_INTERRUPTED, "second signal"),
        ] {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code} ")))
                .unwrap_or_else(|| panic!("exit code {code} undocumented: {help}"));
            assert!(line.contains(meaning), "{line}");
        }
    }

    #[test]
    fn written_settings_hide_secrets_and_parse_back() {
        let mut settings = Settings::default();
        settings.storage.redis.password = "hunter2".into();
        settings.storage.redis.url = "redis://:hunter3@cache:6379".into();
        settings.api.token = "tok-123".into();
        let mut out = Vec::new();
        config_check(&settings, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for secret in ["hunter2", "hunter3", "tok-123"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back, settings.redacted());
    }
}
