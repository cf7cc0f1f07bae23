//! The `botfleet` daemon and tool: parse the command line, run the command, exit with its code.
//!
//! Everything here is the binary's own; it reaches the runtime through the library's public
//! API only (`botfleet::{Fleet, Settings, ...}`), as any host would.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`cli`] | the arguments (clap derive); `config check` and `verify` |
//! | [`exit`] | [`Exit`]: every command's exit codes, and the code of an error |
//! | [`daemon`] | `botfleet run`: the fleet and the HTTP API until a signal |
//! | [`client`] | the commands that ask a running daemon over HTTP: `status`, `task`, `admin`, `events` |
//! | [`work`] | `botfleet task work`: a command per task, over the daemon's HTTP worker protocol |
//! | [`history`] | `botfleet history`: the archive, read directly |
//! | [`lock`] | `botfleet lock run`: a command run under a fleet-wide lock, through the daemon |
//! | [`bench`] | `botfleet bench ...`: one JSON line per scenario |
//! | [`telemetry`] | tracing set-up, once, for the commands that log |

use std::io;
use std::process::ExitCode;

use botfleet::Settings;
use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::client::TaskCommand;
use crate::exit::Exit;

mod bench;
mod cli;
mod client;
mod daemon;
mod exit;
mod history;
mod lock;
mod telemetry;
mod work;

/// The daemon's allocator. glibc's `malloc` and `free` took about 13% of the client's CPU in
/// `bench queue` (perf); mimalloc's thread-local pages cost less, which matters most when the
/// client shares two cores with several Redis masters. Programs that embed the library keep
/// their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit with Exit::Usage (2), --help and --version with 0.
    let cli = Cli::parse();
    run(&cli).unwrap_or_else(|err| Exit::report(&err)).into()
}

/// Runs the command. `run` and `lock run` have exit codes of their own; every other command
/// succeeds or fails.
fn run(cli: &Cli) -> anyhow::Result<Exit> {
    let settings = || cli.load_settings();
    let out = &mut io::stdout();
    match &cli.command {
        Command::Run => return Ok(daemon::run(logging(cli)?)),
        Command::Bench(command) => {
            logging(cli)?;
            bench::run(command)?;
        }
        Command::Config(ConfigCommand::Check) => {
            // Every problem at once: a bad RUST_LOG beside bad settings.
            let rust_log = telemetry::check_rust_log();
            let settings = settings().inspect_err(|_| {
                if let Err(bad) = &rust_log {
                    eprintln!("{bad}");
                }
            })?;
            rust_log?;
            cli::config_check(&settings, out)?
        }
        Command::Verify(args) => cli::verify(&settings()?, args, out)?,
        Command::Status(args) => client::status(args, settings, out)?,
        Command::Task(TaskCommand::Work(args)) => return work::run(&logging(cli)?, args, out),
        Command::Task(command) => client::task(&settings()?, command, out)?,
        Command::Admin(command) => client::admin(&settings()?, command, out)?,
        Command::Events(command) => client::events(&settings()?, command, out)?,
        Command::History(command) => history::run(&settings()?, command, out)?,
        Command::Lock(command) => return lock::run(&settings()?, command),
    }
    Ok(Exit::Ok)
}

/// The settings of a command that logs, with tracing set up from them.
fn logging(cli: &Cli) -> anyhow::Result<Settings> {
    let settings = cli.load_settings()?;
    telemetry::init(&settings.log)?;
    Ok(settings)
}
