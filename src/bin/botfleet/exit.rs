//! How a `botfleet` command ends: [`Exit`], the one exit-code type of every command, and
//! [`Exit::report`], which prints a failed command's error and chooses its code.

use std::process::ExitCode;

use botfleet::settings::SettingsError;

use crate::client::ClientError;
use crate::telemetry::TelemetryError;

/// A command-line argument refused before the command did anything: [`Exit::Usage`], with a
/// message that starts with the argument (`--difficulty: unknown difficulty "NOPE" ...`).
#[derive(Debug, thiserror::Error)]
#[error("{arg}: {message}")]
pub struct BadArgument {
    /// The argument, as typed (`--difficulty`).
    pub arg: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl BadArgument {
    /// `arg` refused because of `message`.
    pub fn new(arg: &'static str, message: impl Into<String>) -> Self {
        Self {
            arg,
            message: message.into(),
        }
    }
}

/// The exit codes of `botfleet`, as `botfleet --help` and the README list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success (`run`: stopped by a signal with every write flushed).
    Ok,
    /// A failure at run time: I/O, the daemon unreachable, an actor tree that gave up.
    Failure,
    /// Bad settings or bad usage (clap exits with it too), or a request the daemon refused as
    /// bad.
    Usage,
    /// `run` stopped while Redis was unreachable, and writes held in memory were lost.
    Unflushed,
    /// `run` was interrupted by a second signal during the graceful stop (`task work`: its
    /// running commands killed).
    Interrupted,
    /// `lock run`: the lock was busy for the whole `--wait-ms`; the command was not run.
    LockBusy,
    /// `lock run`: the lock was lost while the command ran (it got SIGTERM), or had expired
    /// when it ended.
    LockLost,
    /// `lock run`: the command could not be started (not found, not executable).
    CommandNotRun,
    /// `lock run`: the command's own exit code (128 + N when signal N ended it), passed on.
    Command(u8),
}

impl Exit {
    /// Every exit code, in the order `--help` lists them ([`Exit::Command`] passes on any).
    pub const ALL: [Exit; 8] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Unflushed,
        Exit::LockBusy,
        Exit::LockLost,
        Exit::CommandNotRun,
        Exit::Interrupted,
    ];

    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Unflushed => 3,
            Exit::Interrupted => 130,
            Exit::LockBusy => 75,
            Exit::LockLost => 76,
            Exit::CommandNotRun => 127,
            Exit::Command(code) => code,
        }
    }

    /// What the code means, as `--help` shows it (continuation lines indented to the text).
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success (`run`: stopped by SIGINT/SIGTERM with every write flushed)",
            Exit::Failure => {
                "failure at run time (`run`: an actor kept failing past the restart intensity)"
            }
            Exit::Usage => {
                "bad configuration or bad usage (every problem is printed to stderr, one per line),
       or a request the daemon refused as bad (task add with an unknown type, say)"
            }
            Exit::Unflushed => {
                "`run` stopped while Redis was unreachable: writes held in memory were lost"
            }
            Exit::Interrupted => {
                "`run` interrupted by a second signal during the graceful stop (`task work`: the
       running commands killed and their tasks failed back)"
            }
            Exit::LockBusy => {
                "`lock run`: the lock was busy for the whole --wait-ms; the command was not run"
            }
            Exit::LockLost => {
                "`lock run`: the lock was lost while the command ran (it got SIGTERM), or had
       expired when it ended"
            }
            Exit::CommandNotRun => "`lock run`: the command could not be started",
            Exit::Command(_) => "`lock run`: the command's own exit code",
        }
    }

    /// Prints a failed command's error to stderr and chooses its code: bad settings (one
    /// problem per line), a bad `RUST_LOG`, a bad argument ([`BadArgument`], or a client's
    /// `BadInput`), or a request the daemon refused as bad (HTTP 4xx) are [`Exit::Usage`];
    /// anything else (the daemon unreachable...) is [`Exit::Failure`].
    pub fn report(err: &anyhow::Error) -> Exit {
        if let Some(bad) = err.downcast_ref::<SettingsError>() {
            for problem in bad.problems() {
                eprintln!("{problem}");
            }
            return Exit::Usage;
        }
        eprintln!("botfleet: {err:#}");
        let usage = matches!(
            err.downcast_ref::<ClientError>(),
            Some(
                ClientError::BadInput(_)
                    | ClientError::Refused {
                        status: 400..=499,
                        ..
                    }
            )
        ) || matches!(
            err.downcast_ref::<TelemetryError>(),
            Some(TelemetryError::Filter { .. })
        ) || err.downcast_ref::<BadArgument>().is_some();
        if usage {
            Exit::Usage
        } else {
            Exit::Failure
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The text after `botfleet --help`'s options: the exit codes, then where the settings come
/// from.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for exit in Exit::ALL {
        text.push_str(&format!("  {:<4} {}\n", exit.code(), exit.meaning()));
    }
    text.push_str(
        "
Settings: settings.toml in the working directory (or --config FILE), overridden by the
environment: REDIS_URL, USE_REDIS, REDIS_DB, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, and
BOTFLEET__SECTION__KEY for any key (e.g. BOTFLEET__STORAGE__REDIS__TIMEOUT_MS=300).
RUST_LOG overrides log.level.",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
    }

    #[test]
    fn bad_settings_and_refusals_are_usage_errors_and_the_rest_failures() {
        let refused = ClientError::Refused {
            status: 400,
            message: "task.type: unknown".into(),
        };
        assert_eq!(Exit::report(&refused.into()), Exit::Usage);
        let server_error = ClientError::Refused {
            status: 503,
            message: "storage full".into(),
        };
        assert_eq!(Exit::report(&server_error.into()), Exit::Failure);
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(Exit::report(&unreachable.into()), Exit::Failure);
        let bad_filter = TelemetryError::Filter {
            origin: "RUST_LOG",
            value: "[".into(),
            reason: "unbalanced".into(),
        };
        assert_eq!(Exit::report(&bad_filter.into()), Exit::Usage);
        let bad_argument = BadArgument::new("--limit", "expected 1 to 10000, got 0");
        assert_eq!(Exit::report(&bad_argument.into()), Exit::Usage);
        assert_eq!(
            Exit::report(&anyhow::anyhow!("disk on fire")),
            Exit::Failure
        );
    }
}
