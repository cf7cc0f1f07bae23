//! The `botfleet` command line: the arguments (clap derive), and the commands small enough to
//! live beside them (`config check`, `verify`).
//!
//! To add a subcommand:
//!
//! 1. add a variant to [`Command`] (its doc comment is the `--help` line), with an `Args`
//!    struct or a nested `Subcommand` enum for its options;
//! 2. write what it does as a function that takes the loaded [`Settings`] and its output
//!    stream (so that tests can read it), in its own module when it is more than a screen;
//! 3. add its line to `run` in `main.rs`. Errors become exit codes in one place
//!    ([`Exit::report`](crate::exit::Exit::report)).

use std::io::{self, Write};
use std::path::PathBuf;

use botfleet::settings::{Settings, SettingsError};
use clap::{Parser, Subcommand};

use crate::bench::BenchCommand;
use crate::client::{AdminCommand, EventsCommand, StatusArgs, TaskCommand};
use crate::exit::BadArgument;
use crate::history::HistoryCommand;
use crate::lock::LockCommand;

/// botfleet: supervised actors that share a bot fleet's state through Redis, and keep working
/// when it is down.
#[derive(Debug, Parser)]
#[command(name = "botfleet", version, after_help = crate::exit::help())]
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
    /// Fleet-wide locks through the running daemon: `lock run NAME --ttl-ms N -- CMD...`.
    #[command(subcommand)]
    Lock(LockCommand),
    /// List the archive's sessions, task attempts, events, hazard rounds or players'
    /// settlements (reads the database of `[history]` directly; no daemon needed).
    #[command(subcommand)]
    History(HistoryCommand),
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
    use botfleet::actors::hazards::{fairness, HazardError};
    let difficulties = &settings.hazards.difficulties;
    let difficulty = difficulties
        .iter()
        .find(|d| d.name == args.difficulty)
        .ok_or_else(|| {
            let names: Vec<&str> = difficulties.iter().map(|d| d.name.as_str()).collect();
            BadArgument::new(
                "--difficulty",
                format!(
                    "unknown difficulty {:?}; expected one of [[hazards.difficulties]]: {}",
                    args.difficulty,
                    names.join(", ")
                ),
            )
        })?;
    let hazards =
        fairness::derive_hazards(&args.server_seed, &args.client_seed, args.nonce, difficulty)
            .map_err(|e| -> anyhow::Error {
                // The arguments' own faults are usage errors naming the argument.
                let arg = match &e {
                    HazardError::EmptySeed("server seed") => "--server-seed",
                    HazardError::EmptySeed(_) => "--client-seed",
                    HazardError::NegativeNonce(_) => "--nonce",
                    _ => return e.into(),
                };
                BadArgument::new(arg, e.to_string()).into()
            })?;
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
    use crate::exit::Exit;

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
        assert_eq!(err.exit_code(), i32::from(Exit::Usage.code()));
    }

    #[test]
    fn bench_flags_keep_their_names_and_defaults() {
        let cli = Cli::try_parse_from([
            "botfleet",
            "bench",
            "locks",
            "--redis",
            "redis://h:1",
            "--scenario",
            "one-task",
            "--scenario",
            "8-tasks-one-key",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Locks(bench)) = cli.command else {
            panic!("not bench locks: {:?}", cli.command)
        };
        assert_eq!(bench.redis_url, "redis://h:1");
        assert_eq!(bench.pairs, 20_000);
        assert_eq!(bench.scenarios, ["one-task", "8-tasks-one-key"]);
        let cli =
            Cli::try_parse_from(["botfleet", "bench", "heartbeat", "--duration", "5"]).unwrap();
        let Command::Bench(BenchCommand::Heartbeat(bench)) = cli.command else {
            panic!("not bench heartbeat: {:?}", cli.command)
        };
        assert_eq!(
            (bench.redis_url, bench.duration_secs, bench.bots),
            (None, 5, 10_000)
        );
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        for (exit, meaning) in [
            (Exit::Ok, "success"),
            (Exit::Failure, "failure at run time"),
            (Exit::Usage, "bad configuration"),
            (Exit::Unflushed, "writes held in memory were lost"),
            (Exit::Interrupted, "second signal"),
            (Exit::LockBusy, "lock was busy"),
            (Exit::LockLost, "lock was lost"),
            (Exit::CommandNotRun, "could not be started"),
        ] {
            let code = exit.code();
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
