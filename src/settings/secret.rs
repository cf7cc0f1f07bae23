//! Secrets that never reach a log line, an error message or `config check`'s output.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a non-empty secret prints as.
pub const REDACTED: &str = "***";

/// A secret string (a password, a bearer token).
///
/// `Debug` and `Display` print `***` (an empty secret prints as nothing, so that "not set" stays
/// visible); the value is only reachable through [`Secret::expose`], which makes every use easy
/// to find. Serde sees a plain string, so the settings file and the environment set it as usual;
/// [`Settings::redacted`](super::Settings::redacted) replaces it before anything is printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself: pass it to the client that needs it, never to a formatter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `***` when set, empty when not: what a printout may show of this secret.
    pub fn redacted(&self) -> Self {
        if self.is_empty() {
            Self::default()
        } else {
            Self(REDACTED.to_owned())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            Ok(())
        } else {
            f.write_str(REDACTED)
        }
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// `url` with the password of its user-info part replaced by `***`, safe to print.
///
/// A URL that does not parse gets everything up to its last `@` replaced, since where the
/// password ends cannot be trusted.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.password().is_none() {
            return url.to_owned();
        }
        if parsed.set_password(Some(REDACTED)).is_ok() {
            return parsed.to_string();
        }
    }
    // Unparseable (or cannot carry a password): mask everything between the scheme and the last
    // `@`, wherever it is, since an unescaped password may itself contain `/`, `?` or `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_stars_or_nothing() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{}", Secret::default()), "");
        assert_eq!(secret.redacted().expose(), "***");
        assert!(Secret::default().redacted().is_empty());
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            redact_url("redis://user:hunter2@host:6379/1"),
            "redis://user:***@host:6379/1"
        );
        assert_eq!(redact_url("redis://:hunter2@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
    }

    #[test]
    fn unparseable_url_loses_its_user_info() {
        let redacted = redact_url("redis://us:hunter2@ho st:99999");
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert_eq!(redacted, "redis://***@ho st:99999");
        assert_eq!(redact_url("not a url"), "not a url");
        let redacted = redact_url("redis://u:pa/ss@ho st");
        assert_eq!(redacted, "redis://***@ho st");
    }
}
