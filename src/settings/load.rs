//! Loading: built-in defaults < settings file < the seeds' environment variables <
//! `BOTFLEET__SECTION__KEY` variables, merged with the `config` crate, then validated.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use config::{Config, Environment, File, FileFormat, Source};

use super::error::{Problem, ProblemKind, SettingsError};
use super::tree::{Kind, Node};
use super::{validate, Settings};

/// The settings file read when none is named: `settings.toml` in the working directory. It may
/// be absent; a file named explicitly may not.
pub const DEFAULT_FILE: &str = "settings.toml";

/// Prefix of the variables that override any setting: `BOTFLEET__STORAGE__REDIS__TIMEOUT_MS`.
pub const ENV_PREFIX: &str = "BOTFLEET";

/// Separator of levels in those variables (a single `_` stays part of a key name).
pub const ENV_SEPARATOR: &str = "__";

/// The seeds' variables and the key each sets. `REDIS_HOST` and `REDIS_PORT` also exist: they
/// replace the host and port of `storage.redis.url`.
pub const SEED_VARIABLES: &[(&str, &str)] = &[
    ("REDIS_URL", "storage.redis.url"),
    ("USE_REDIS", "storage.redis.enabled"),
    ("REDIS_DB", "storage.redis.db"),
    ("REDIS_PASSWORD", "storage.redis.password"),
    ("REDIS_SENTINEL_PASSWORD", "storage.redis.sentinel_password"),
];

impl Settings {
    /// Loads the settings from `path` (or [`DEFAULT_FILE`] if present) and the process
    /// environment, and validates them.
    ///
    /// Precedence, lowest first: built-in defaults, the file, the seeds' variables (`REDIS_URL`,
    /// `USE_REDIS`, `REDIS_DB`, `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`,
    /// `REDIS_SENTINEL_PASSWORD`), then
    /// `BOTFLEET__SECTION__KEY` variables. The error lists every problem found, each naming its
    /// key; see [`Settings::load_with_env`] for the details.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        // Variables that are not Unicode cannot be settings (and `std::env::vars` would panic).
        let env = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
        Self::load_with_env(path, env)
    }

    /// [`Settings::load`] with the environment given as `(name, value)` pairs instead of read
    /// from the process, so that tests never touch the process environment.
    ///
    /// - `path`: `None` reads [`DEFAULT_FILE`] when it exists; `Some(file)` must exist.
    /// - `BOTFLEET__A__B=v` sets key `a.b` (names are case-insensitive; `__` separates levels).
    /// - `REDIS_URL`, `USE_REDIS` (`true`/`false`/`1`/`0`/`yes`/`no`), `REDIS_DB` and
    ///   `REDIS_PASSWORD` set `storage.redis.url`, `.enabled`, `.db` and `.password`;
    ///   `REDIS_SENTINEL_PASSWORD` sets `storage.redis.sentinel_password`;
    ///   `REDIS_HOST` and `REDIS_PORT` replace the host and port of the URL (the one from
    ///   `REDIS_URL`, else the file's, else the default). An empty seed variable counts as
    ///   unset; a `BOTFLEET__` variable set to the empty string sets an empty value.
    ///
    /// On error, every problem is reported at once: unknown keys, values of the wrong type, and
    /// values that make no sense, each naming its key and where the value came from.
    pub fn load_with_env<I>(path: Option<&Path>, env: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let env: HashMap<String, String> = env.into_iter().collect();
        let file = read_file(path).map_err(|problem| SettingsError::new(vec![problem]))?;

        let mut problems = Vec::new();
        let seeds = SeedVariables::from_env(&env, file.as_ref(), &mut problems);
        let mut builder = Config::builder();
        if let Some(file) = &file {
            builder = builder.add_source(File::from_str(&file.text, FileFormat::Toml));
        }
        let merged = builder
            .add_source(seeds)
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .separator(ENV_SEPARATOR)
                    .source(Some(env.into_iter().collect())),
            )
            .build()
            .and_then(|config| config.collect())
            .map_err(|err| {
                SettingsError::new(vec![Problem::new(
                    ProblemKind::File,
                    "settings",
                    format!("cannot merge the settings: {err}"),
                )])
            })?;

        let file_origin = file.as_ref().map(|f| f.name.as_str());
        let tree = Node::new(
            Kind::Table(
                merged
                    .into_iter()
                    .map(|(key, value)| {
                        let node = Node::from_config(value, &mut vec![key.clone()], file_origin);
                        (key, node)
                    })
                    .collect(),
            ),
            None,
        );
        let settings = validate::settle(tree, &defaults_tree(), &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError::new(problems))
        }
    }
}

/// The serialized defaults: what keys exist, and what replaces a bad value.
fn defaults_tree() -> Node {
    // Serializing plain structs of strings, integers, booleans and unit enums to TOML cannot
    // fail; a failure would be a bug in the settings types, caught by every test.
    let value =
        toml::Value::try_from(Settings::default()).expect("the default settings serialize to TOML");
    Node::from_toml(value)
}

/// A settings file read and checked to be TOML.
struct SettingsFile {
    /// The path as given, for messages.
    name: String,
    text: String,
    table: toml::Table,
}

fn read_file(path: Option<&Path>) -> Result<Option<SettingsFile>, Problem> {
    let (path, required) = match path {
        Some(path) => (path, true),
        None => (Path::new(DEFAULT_FILE), false),
    };
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !required => return Ok(None),
        Err(err) => {
            return Err(Problem::new(
                ProblemKind::File,
                name,
                format!("cannot read the settings file: {err}"),
            ))
        }
    };
    // `config` would report a syntax error too, but over several lines; this says where in one,
    // and names the key when the error is in a value (a number too large, say).
    let table = text.parse::<toml::Table>().map_err(|err| {
        let start = err.span().map(|span| span.start.min(text.len()));
        let position = start
            .map(|start| {
                let before = &text[..start];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        let message = format!(
            "invalid TOML{position}: {}",
            err.message().trim().replace('\n', ": ")
        );
        match start.and_then(|start| key_at(&text, start)) {
            Some(key) => Problem::new(ProblemKind::InvalidValue, key, message)
                .with_origin(Some(name.as_str())),
            None => Problem::new(ProblemKind::File, name.clone(), message),
        }
    })?;
    Ok(Some(SettingsFile { name, text, table }))
}

/// The dotted key whose value holds byte `offset` of a TOML `text`, read line by line: the
/// `key = value` line at or above the offset (within its table), under the last `[table]` or
/// `[[array]]` header above it (`storage.redis.timeout_ms`, `hazards.difficulties[1].columns`).
/// `None` when the offset is not in a value (a broken header, say).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let mut lines = before.lines().rev();
    // The line of the offset, then the lines above it, for the `key =` a value starts on.
    let mut key = None;
    let mut table = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('[') {
            table = header_name(line)?;
            break;
        }
        if key.is_none() {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                let bare = |c: char| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c);
                if !name.is_empty() && name.chars().all(bare) {
                    key = Some(
                        name.split('.')
                            .map(|part| part.trim().trim_matches(['"', '\'']))
                            .collect::<Vec<_>>()
                            .join("."),
                    );
                }
            }
        }
    }
    let key = key?;
    if table.is_empty() {
        return Some(key);
    }
    // An array of tables: its index is the number of its headers above, minus one.
    if let Some(array) = table.strip_suffix("[]") {
        let header = format!("[[{array}]]");
        let index = lines
            .filter(|line| line.trim().replace(' ', "") == header)
            .count();
        return Some(format!("{array}[{index}].{key}"));
    }
    Some(format!("{table}.{key}"))
}

/// The name of a `[table]` header (`storage.redis`), or `NAME[]` for an `[[array]]` header.
fn header_name(line: &str) -> Option<String> {
    let line = line.split('#').next()?.trim();
    if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        return Some(format!("{}[]", inner.replace(' ', "")));
    }
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    Some(inner.replace(' ', ""))
}

/// The seeds' variables as a `config` source, each value remembering its variable.
#[derive(Debug, Clone, Default)]
struct SeedVariables(config::Map<String, config::Value>);

impl SeedVariables {
    fn from_env(
        env: &HashMap<String, String>,
        file: Option<&SettingsFile>,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty());
        let mut values = config::Map::new();
        let mut set = |key: &str, variable: &str, value: String| {
            let origin = format!("environment variable {variable}");
            values.insert(
                key.to_owned(),
                config::Value::new(Some(&origin), config::ValueKind::String(value)),
            );
        };
        for (variable, key) in SEED_VARIABLES {
            if let Some(value) = get(variable) {
                set(key, variable, value.clone());
            }
        }

        let host = get("REDIS_HOST");
        let port = get("REDIS_PORT");
        if host.is_some() || port.is_some() {
            let (base, base_variable) = match get("REDIS_URL") {
                Some(url) => (url.clone(), "REDIS_URL"),
                None => (file_url(file).unwrap_or_else(super::default_redis_url), ""),
            };
            let variables = match (host, port) {
                (Some(_), Some(_)) => "REDIS_HOST and REDIS_PORT",
                (Some(_), None) => "REDIS_HOST",
                _ => "REDIS_PORT",
            };
            match with_host_port(&base, host.map(String::as_str), port.map(String::as_str)) {
                Ok(url) => set("storage.redis.url", variables, url),
                Err(message) => {
                    let origin = if base_variable.is_empty() {
                        format!("environment variable {variables}")
                    } else {
                        format!("environment variables {base_variable} and {variables}")
                    };
                    problems.push(
                        Problem::new(ProblemKind::InvalidValue, "storage.redis.url", message)
                            .with_origin(Some(&origin)),
                    );
                }
            }
        }
        Self(values)
    }
}

impl Source for SeedVariables {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// `storage.redis.url` as the file sets it, if it does.
fn file_url(file: Option<&SettingsFile>) -> Option<String> {
    let url = file?.table.get("storage")?.get("redis")?.get("url")?;
    url.as_str().map(str::to_owned)
}

/// `url` with its host and/or port replaced (`REDIS_HOST`, `REDIS_PORT`).
fn with_host_port(url: &str, host: Option<&str>, port: Option<&str>) -> Result<String, String> {
    let mut parsed = url::Url::parse(url).map_err(|err| {
        format!(
            "cannot apply REDIS_HOST/REDIS_PORT to {:?} ({err})",
            super::redact_url(url)
        )
    })?;
    if let Some(host) = host {
        let host = host.trim();
        // A bare IPv6 address needs its brackets in a URL.
        let bracketed = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        parsed
            .set_host(Some(&bracketed))
            .map_err(|err| format!("expected a host name or address, got {host:?} ({err})"))?;
    }
    if let Some(port) = port {
        let number = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("expected a port number from 1 to 65535, got {port:?}"))?;
        parsed
            .set_port(Some(number))
            .map_err(|()| format!("cannot set a port on {:?}", super::redact_url(url)))?;
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_values_name_their_key() {
        let text = "a = 1\n[storage.redis]\n# comment\ntimeout_ms = 99999999999999999999\n";
        let at = text.find("999").unwrap();
        assert_eq!(
            key_at(text, at).as_deref(),
            Some("storage.redis.timeout_ms")
        );
        let text =
            "[[hazards.difficulties]]\nname = \"A\"\n[[hazards.difficulties]]\ncolumns = 1e999x\n";
        let at = text.find("1e999").unwrap();
        assert_eq!(
            key_at(text, at).as_deref(),
            Some("hazards.difficulties[1].columns")
        );
        assert_eq!(key_at("top = [\n 1,\n 2x", 14).as_deref(), Some("top"));
        assert_eq!(key_at("[broken\n", 3), None);
    }

    #[test]
    fn host_and_port_replace_the_urls() {
        assert_eq!(
            with_host_port("redis://:pw@127.0.0.1:6379/2", Some("cache"), Some("6380")),
            Ok("redis://:pw@cache:6380/2".to_owned())
        );
        assert_eq!(
            with_host_port("redis://127.0.0.1:6379", Some("::1"), None),
            Ok("redis://[::1]:6379".to_owned())
        );
        assert!(with_host_port("redis://h:1", None, Some("http")).is_err());
        assert!(with_host_port("redis://h:1", None, Some("0")).is_err());
    }
}
