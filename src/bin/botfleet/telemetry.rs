//! Tracing set-up: one global subscriber, installed once by the commands that log, through
//! [`init`].
//!
//! The filter is `RUST_LOG` when it is set, else the `log.level` setting; lines are text or JSON
//! (`log.format`) on stderr, so that a command's own output on stdout stays clean. Libraries that
//! log through the `log` crate (fred does) are bridged into tracing by `tracing-log`'s
//! `LogTracer`, so one filter and one format govern everything. The fields and levels the
//! library logs with are listed in its crate documentation (`# Logging`).

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use botfleet::settings::{LogFormat, LogSettings};

/// The variable whose filter takes precedence over `log.level`.
const RUST_LOG: &str = "RUST_LOG";

/// Tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `RUST_LOG` or `log.level` is not a valid filter.
    #[error("{origin}: expected a tracing filter such as \"info\" or \"botfleet=debug\", got {value:?} ({reason})")]
    Filter {
        /// `RUST_LOG` or `log.level`.
        origin: &'static str,
        /// The filter given.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Something other than [`init`] already installed a global subscriber or `log` logger.
    #[error("cannot install the tracing subscriber: {0}")]
    AlreadyInstalled(String),
}

/// Installs the global subscriber described by `log` (overridden by `RUST_LOG`) and bridges the
/// `log` crate into it. A second call does nothing and returns `Ok`, whatever its settings.
pub fn init(log: &LogSettings) -> Result<(), TelemetryError> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    // A panic while holding this lock leaves a plain bool behind: still meaningful.
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *installed {
        return Ok(());
    }
    let rust_log = std::env::var(RUST_LOG).ok();
    let ansi = std::io::stderr().is_terminal();
    let subscriber = subscriber(log, rust_log.as_deref(), std::io::stderr, ansi)?;
    let most = log_max_level(log, rust_log.as_deref())?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|err| TelemetryError::AlreadyInstalled(err.to_string()))?;
    *installed = true;
    tracing_log::LogTracer::builder()
        .with_max_level(most)
        .init()
        .map_err(|err| TelemetryError::AlreadyInstalled(format!("`log` bridge: {err}")))
}

/// The most verbose `log` level the filter lets through. The `log` crate skips a record
/// above it with one load, before asking the bridge: the Redis client checks for trace and
/// debug records several times per command, and without this each check went through the
/// bridge to the filter.
fn log_max_level(
    log: &LogSettings,
    rust_log: Option<&str>,
) -> Result<tracing_log::log::LevelFilter, TelemetryError> {
    use tracing_log::log::LevelFilter;
    use tracing_subscriber::filter::LevelFilter as Tracing;
    Ok(match filter(log, rust_log)?.max_level_hint() {
        Some(Tracing::OFF) => LevelFilter::Off,
        Some(Tracing::ERROR) => LevelFilter::Error,
        Some(Tracing::WARN) => LevelFilter::Warn,
        Some(Tracing::INFO) => LevelFilter::Info,
        Some(Tracing::DEBUG) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    })
}

/// Checks `RUST_LOG` as [`init`] would read it, without installing anything (`config check`;
/// `log.level` is checked with the other settings).
pub fn check_rust_log() -> Result<(), TelemetryError> {
    match std::env::var(RUST_LOG) {
        Ok(value) if !value.trim().is_empty() => {
            filter(&LogSettings::default(), Some(&value)).map(drop)
        }
        _ => Ok(()),
    }
}

/// The filter: `rust_log` when set and not blank, else `log.level`.
fn filter(log: &LogSettings, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let (origin, value) = match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(value) => (RUST_LOG, value),
        None => ("log.level", log.level.as_str()),
    };
    EnvFilter::builder()
        .parse(value)
        .map_err(|err| TelemetryError::Filter {
            origin,
            value: value.to_owned(),
            reason: err.to_string(),
        })
}

/// The subscriber [`init`] installs, writing to `writer` (with ANSI colours when `ansi`), so
/// that tests can capture what it prints.
fn subscriber<W>(
    log: &LogSettings,
    rust_log: Option<&str>,
    writer: W,
    ansi: bool,
) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter(log, rust_log)?);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    Ok(match log.format {
        LogFormat::Text => Box::new(registry.with(layer.with_ansi(ansi))),
        LogFormat::Json => Box::new(registry.with(layer.json().with_current_span(true))),
    })
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn capture(log: &LogSettings, rust_log: Option<&str>, f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(log, rust_log, move || writer.clone(), false).unwrap();
        tracing::subscriber::with_default(subscriber, f);
        buffer.text()
    }

    #[test]
    fn json_lines_carry_the_common_fields() {
        let log = LogSettings {
            format: LogFormat::Json,
            ..LogSettings::default()
        };
        let out = capture(&log, None, || {
            let span = tracing::info_span!("claim", actor = "scheduler", key = "bot:tasks:queue");
            let _entered = span.enter();
            tracing::warn!(backend = "memory", error = "connection refused", "degraded");
        });
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["backend"], "memory");
        assert_eq!(line["fields"]["error"], "connection refused");
        assert_eq!(line["span"]["actor"], "scheduler");
        assert_eq!(line["span"]["key"], "bot:tasks:queue");
    }

    #[test]
    fn rust_log_takes_precedence_over_the_setting() {
        let log = LogSettings::default(); // info
        let event = || {
            tracing::info!("an info line");
            tracing::warn!("a warn line");
        };
        let out = capture(&log, Some("warn"), event);
        assert!(
            !out.contains("an info line") && out.contains("a warn line"),
            "{out}"
        );
        let out = capture(&log, Some("  "), event);
        assert!(out.contains("an info line"), "{out}");
    }

    #[test]
    fn bad_filters_name_their_origin() {
        let err = filter(&LogSettings::default(), Some("botfleet=loud")).unwrap_err();
        assert!(err.to_string().starts_with("RUST_LOG: "), "{err}");
        let log = LogSettings {
            level: "x=loud".into(),
            ..LogSettings::default()
        };
        let err = filter(&log, None).unwrap_err();
        assert!(err.to_string().starts_with("log.level: "), "{err}");
    }

    /// The `log` crate's records (the Redis client's) stop at the most verbose level any
    /// directive lets through, and no sooner.
    #[test]
    fn log_records_stop_at_the_filters_most_verbose_level() {
        use tracing_log::log::LevelFilter;
        let log = |level: &str| LogSettings {
            level: level.into(),
            ..LogSettings::default()
        };
        for (level, most) in [
            ("info", LevelFilter::Info),
            ("warn", LevelFilter::Warn),
            ("error", LevelFilter::Error),
            ("off", LevelFilter::Off),
            ("info,botfleet=debug", LevelFilter::Debug),
            ("warn,fred=trace", LevelFilter::Trace),
        ] {
            assert_eq!(log_max_level(&log(level), None).unwrap(), most, "{level}");
        }
        assert_eq!(
            log_max_level(&log("info"), Some("fred=debug")).unwrap(),
            LevelFilter::Debug,
            "RUST_LOG decides"
        );
        assert!(log_max_level(&log("x=loud"), None).is_err());
    }
}
