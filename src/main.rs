//! The `botfleet` daemon and tool: parse the command line, dispatch, map errors to exit codes.
//! Everything else lives in the library (`botfleet::cli` for the commands).

use std::io;
use std::process::ExitCode;

use botfleet::cli::{
    self, AdminCommand, BenchCommand, Cli, Command, ConfigCommand, EventsCommand, TaskCommand,
};
use botfleet::http::client::{self, ClientError};
use botfleet::settings::SettingsError;
use clap::Parser;

/// The daemon's allocator. glibc's `malloc` and `free` took about 13% of the client's CPU in
/// `bench queue` (perf); mimalloc's thread-local pages cost less, which matters most when the
/// client shares two cores with several Redis masters. Programs that embed the library keep
/// their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit with cli::EXIT_USAGE (2), --help and --version with 0.
    let cli = Cli::parse();
    if let Command::Run = cli.command {
        return run(&cli);
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::from(cli::EXIT_OK),
        Err(err) => report(&err),
    }
}

/// Runs the command. Commands that run the fleet set up tracing first, with
/// `botfleet::telemetry::init(&settings.log)`, once their settings are loaded.
fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Config(ConfigCommand::Check) => {
            let settings = cli.load_settings()?;
            cli::config_check(&settings, &mut io::stdout().lock())?;
        }
        Command::Bench(BenchCommand::Storage {
            redis,
            ops,
            outbox_writes,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::storage::StorageBench {
                redis_url: redis.clone(),
                ops: *ops,
                outbox_writes: *outbox_writes,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::storage::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Bench(BenchCommand::Locks {
            redis,
            pairs,
            scenario,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::locks::LocksBench {
                redis_url: redis.clone(),
                pairs: *pairs,
                scenarios: scenario.clone(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::locks::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Verify(args) => {
            let settings = cli.load_settings()?;
            cli::verify(&settings, args, &mut io::stdout().lock())?;
        }
        Command::Bench(BenchCommand::Cache {
            redis,
            reads,
            invalidations,
            peer,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::cache::CacheBench {
                redis_url: redis.clone(),
                reads: *reads,
                invalidations: *invalidations,
                peer: *peer,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::cache::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Bench(BenchCommand::Queue {
            redis,
            tasks,
            concurrency,
            queues,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::queue::QueueBench {
                redis_url: redis.clone(),
                tasks: *tasks,
                concurrency: *concurrency,
                queues: *queues,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::queue::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Bench(BenchCommand::Read {
            redis,
            reads,
            rounds,
            readers,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::read::ReadBench {
                redis_url: redis.clone(),
                reads: *reads,
                rounds: *rounds,
                readers: *readers,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::read::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Bench(BenchCommand::Heartbeat {
            redis,
            bots,
            duration,
            messages,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::heartbeat::HeartbeatBench {
                redis_url: redis.clone(),
                bots: *bots,
                duration_secs: *duration,
                messages: *messages,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::heartbeat::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::Status(args) => {
            let base = match &args.url {
                Some(url) => url.clone(),
                None => botfleet::http::client::base_url(&cli.load_settings()?.api.bind),
            };
            botfleet::http::client::status_command(&base, args.json, &mut io::stdout().lock())?;
        }
        Command::Task(TaskCommand::Add {
            task_type,
            data,
            priority,
            delay_ms,
            daemon,
        }) => {
            let settings = cli.load_settings()?;
            let task = client::TaskAdd {
                task_type: task_type.clone(),
                data: data.clone(),
                priority: *priority,
                delay_ms: *delay_ms,
            };
            client::task_add_command(
                &daemon.daemon(&settings)?,
                &task,
                daemon.json,
                &mut io::stdout().lock(),
            )?;
        }
        Command::Task(TaskCommand::List {
            status,
            limit,
            daemon,
        }) => {
            let settings = cli.load_settings()?;
            client::task_list_command(
                &daemon.daemon(&settings)?,
                status.as_deref(),
                *limit,
                daemon.json,
                &mut io::stdout().lock(),
            )?;
        }
        Command::Admin(AdminCommand::Send {
            pid,
            message,
            daemon,
        }) => {
            let settings = cli.load_settings()?;
            client::admin_send_command(
                &daemon.daemon(&settings)?,
                pid,
                message,
                daemon.json,
                &mut io::stdout().lock(),
            )?;
        }
        Command::Events(EventsCommand::Tail { count, daemon }) => {
            let settings = cli.load_settings()?;
            client::events_tail_command(
                &daemon.daemon(&settings)?,
                *count,
                daemon.json,
                &mut io::stdout().lock(),
            )?;
        }
        Command::Bench(BenchCommand::History {
            redis,
            postgres,
            records,
            tasks,
        }) => {
            let settings = cli.load_settings()?;
            botfleet::telemetry::init(&settings.log)?;
            let bench = botfleet::bench::history::HistoryBench {
                redis_url: redis.clone(),
                postgres_url: postgres.clone(),
                records: *records,
                tasks: *tasks,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(botfleet::bench::history::run(&bench, |line| {
                println!("{line}")
            }))?;
        }
        Command::History(command) => {
            let settings = cli.load_settings()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(cli::history::run(
                &settings,
                command,
                &mut io::stdout().lock(),
            ))?;
        }
        Command::Run => unreachable!("handled in main"),
    }
    Ok(())
}

/// `botfleet run`: the daemon's exit code is its own (see `botfleet --help`).
fn run(cli: &Cli) -> ExitCode {
    let settings = match cli.load_settings() {
        Ok(settings) => settings,
        Err(err) => return report(&err.into()),
    };
    if let Err(err) = botfleet::telemetry::init(&settings.log) {
        return report(&err.into());
    }
    ExitCode::from(botfleet::daemon::run(settings))
}

/// Prints `err` to stderr and chooses the exit code: bad settings, a bad argument or a
/// request the daemon refused as bad (HTTP 4xx) exit with `cli::EXIT_USAGE`, bad settings one
/// problem per line; anything else (the daemon unreachable...) with `cli::EXIT_FAILURE`.
fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(bad) = err.downcast_ref::<SettingsError>() {
        for problem in bad.problems() {
            eprintln!("{problem}");
        }
        return ExitCode::from(cli::EXIT_USAGE);
    }
    if let Some(
        ClientError::BadInput(_)
        | ClientError::Refused {
            status: 400..=499, ..
        },
    ) = err.downcast_ref::<ClientError>()
    {
        eprintln!("botfleet: {err:#}");
        return ExitCode::from(cli::EXIT_USAGE);
    }
    eprintln!("botfleet: {err:#}");
    ExitCode::from(cli::EXIT_FAILURE)
}
