//! The error of [`Settings::load`](super::Settings::load): every problem found, each naming its key.

use std::fmt;

/// What kind of problem a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The settings file could not be read or is not valid TOML.
    File,
    /// A key that no setting has (a typo, or a setting from another version).
    UnknownKey,
    /// A value of the wrong type, or an enum value that is not one of its choices.
    InvalidType,
    /// A well-typed value that makes no sense (a zero timeout, min above max, a bad URL...).
    InvalidValue,
}

/// One problem with the settings, naming the key it is about.
///
/// Displays as one line: `KEY: MESSAGE (from ORIGIN)`, e.g.
/// `storage.redis.timeout_ms: expected a positive integer, got "abc" (from environment variable
/// BOTFLEET__STORAGE__REDIS__TIMEOUT_MS)`. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Dotted key (`storage.redis.timeout_ms`, `storage.versioned[0].field`); for a
    /// [`ProblemKind::File`] problem, the file's path.
    pub key: String,
    /// What is wrong, without the key: `expected a positive integer, got "abc"`.
    pub message: String,
    /// Where the offending value came from (`environment variable REDIS_DB`, a file path), when
    /// known.
    pub origin: Option<String>,
    /// The kind of problem.
    pub kind: ProblemKind,
}

impl Problem {
    pub(crate) fn new(
        kind: ProblemKind,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
            kind,
        }
    }

    pub(crate) fn with_origin(mut self, origin: Option<&str>) -> Self {
        self.origin = origin.map(str::to_owned);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

/// The settings could not be loaded: every problem found, in the order found (unknown keys,
/// then type errors in the order of the settings tree, then semantic checks).
///
/// Displays one line per problem, so `eprintln!("{err}")` is the whole report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_lines(.problems))]
pub struct SettingsError {
    problems: Vec<Problem>,
}

impl SettingsError {
    /// Wraps a non-empty list of problems.
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty(), "a SettingsError without problems");
        Self { problems }
    }

    /// Every problem, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The problem about `key`, if any (handy in tests).
    pub fn problem(&self, key: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| p.key == key)
    }
}

fn display_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
