//! Settings loading: the shipped file, environment overrides, and errors reported all at once.
//!
//! The environment is always injected (`Settings::load_with_env`): no test touches the process
//! environment.

use std::io::Write;
use std::path::{Path, PathBuf};

use botfleet::settings::{FallbackKind, LogFormat, ProblemKind, Secret, Settings, SettingsError};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("settings.toml")
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads `toml` (written to a temporary file) with the environment `vars`.
fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    Settings::load_with_env(Some(file.path()), env(vars))
}

fn load_ok(toml: &str, vars: &[(&str, &str)]) -> Settings {
    load(toml, vars).unwrap_or_else(|err| panic!("unexpected problems:\n{err}"))
}

fn load_err(toml: &str, vars: &[(&str, &str)]) -> SettingsError {
    match load(toml, vars) {
        Ok(settings) => panic!("expected problems, got {settings:#?}"),
        Err(err) => err,
    }
}

/// The message of the problem about `key`, with the whole report when there is none.
fn message(err: &SettingsError, key: &str) -> String {
    err.problem(key)
        .unwrap_or_else(|| panic!("no problem about {key} in:\n{err}"))
        .to_string()
}

// --- the shipped file -------------------------------------------------------------------

#[test]
fn shipped_file_equals_the_defaults() {
    let loaded = Settings::load_with_env(Some(&shipped()), env(&[])).unwrap();
    assert_eq!(loaded, Settings::default());
    // And read by serde alone, without the loader's leniency.
    let text = std::fs::read_to_string(shipped()).unwrap();
    let parsed: Settings = toml::from_str(&text).unwrap();
    assert_eq!(parsed, Settings::default());
}

/// A new setting cannot be forgotten in `settings.toml`: every leaf of the serialized defaults
/// is written out there explicitly (arrays count as leaves).
#[test]
fn shipped_file_lists_every_key() {
    fn leaves(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, child) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(child, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let defaults = toml::Value::try_from(Settings::default()).unwrap();
    let mut keys = Vec::new();
    leaves(&defaults, "", &mut keys);
    assert!(keys.len() > 30, "suspiciously few keys: {keys:?}");

    let text = std::fs::read_to_string(shipped()).unwrap();
    let file: toml::Value = text.parse::<toml::Table>().unwrap().into();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| {
            key.split('.')
                .try_fold(&file, |v, part| v.get(part))
                .is_none()
        })
        .collect();
    assert!(missing.is_empty(), "settings.toml lacks {missing:?}");
}

/// Each key line of the shipped file is documented by a comment just above it (or, inside an
/// array-of-tables entry, above the entry).
#[test]
fn shipped_file_documents_every_key() {
    let text = std::fs::read_to_string(shipped()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') || line.starts_with('[') || line.trim().is_empty() {
            continue;
        }
        let above = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.starts_with(char::is_alphanumeric))
            .unwrap();
        assert!(
            above.starts_with('#') || above.starts_with("[["),
            "line {} ({line}) has no comment above it",
            i + 1
        );
    }
    assert!(text.contains("BOTFLEET__SECTION__KEY") && text.contains("environment"));
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(load_ok("", &[]), Settings::default());
}

// --- the environment ----------------------------------------------------------------------

#[test]
fn botfleet_variables_set_any_key() {
    let settings = load_ok(
        "",
        &[
            ("BOTFLEET__STORAGE__REDIS__TIMEOUT_MS", "300"),
            ("BOTFLEET__SUPERVISOR__MAX_RESTARTS", "3"),
            ("BOTFLEET__STORAGE__REDIS__MAX_COMMAND_BUFFER", "42"),
            ("BOTFLEET__STORAGE__FALLBACK", "file"),
            ("BOTFLEET__LOG__FORMAT", "json"),
            ("BOTFLEET__STORAGE__REDIS__ENABLED", "false"),
            ("botfleet__keys__internal_prefix", "bf"),
            ("BOTFLEET__API__TOKEN", "tok"),
            // Not ours: ignored.
            ("BOTFLEET_SINGLE_UNDERSCORE", "x"),
            ("PATH", "/usr/bin"),
        ],
    );
    assert_eq!(settings.storage.redis.timeout_ms, 300);
    assert_eq!(settings.supervisor.max_restarts, 3);
    assert_eq!(settings.storage.redis.max_command_buffer, 42);
    assert_eq!(settings.storage.fallback, FallbackKind::File);
    assert_eq!(settings.log.format, LogFormat::Json);
    assert!(!settings.storage.redis.enabled);
    assert_eq!(settings.keys.internal_prefix, "bf");
    assert_eq!(settings.api.token, Secret::new("tok"));
}

#[test]
fn environment_overrides_the_file_key_by_key() {
    let file = "[storage.redis]\ntimeout_ms = 100\nconnect_timeout_ms = 900\n";
    let settings = load_ok(file, &[("BOTFLEET__STORAGE__REDIS__TIMEOUT_MS", "300")]);
    assert_eq!(settings.storage.redis.timeout_ms, 300);
    assert_eq!(settings.storage.redis.connect_timeout_ms, 900);
}

#[test]
fn seed_variables_set_redis_settings() {
    let settings = load_ok(
        "",
        &[
            ("REDIS_URL", "redis://cache.internal:6390"),
            ("REDIS_DB", "4"),
            ("REDIS_PASSWORD", "s3cret"),
        ],
    );
    let redis = &settings.storage.redis;
    assert_eq!(redis.url, "redis://cache.internal:6390");
    assert_eq!(redis.db, 4);
    assert_eq!(redis.password.expose(), "s3cret");
    assert!(redis.enabled);
}

#[test]
fn use_redis_accepts_the_usual_spellings() {
    for (value, expected) in [
        ("false", false),
        ("0", false),
        ("no", false),
        ("FALSE", false),
        ("true", true),
        ("1", true),
        ("yes", true),
    ] {
        let settings = load_ok("[storage.redis]\nenabled = true\n", &[("USE_REDIS", value)]);
        assert_eq!(
            settings.storage.redis.enabled, expected,
            "USE_REDIS={value}"
        );
    }
    // Redis off: its URL is not checked any more.
    let settings = load_ok(
        "[storage.redis]\nurl = \"not a url\"\n",
        &[("USE_REDIS", "false")],
    );
    assert!(!settings.storage.redis.enabled);
}

#[test]
fn redis_host_and_port_compose_with_the_url() {
    // On REDIS_URL, keeping its credentials and database.
    let settings = load_ok(
        "",
        &[
            ("REDIS_URL", "redis://:pw@old-host:6379/2"),
            ("REDIS_HOST", "new-host"),
            ("REDIS_PORT", "7000"),
        ],
    );
    assert_eq!(settings.storage.redis.url, "redis://:pw@new-host:7000/2");

    // On the file's URL.
    let file = "[storage.redis]\nurl = \"rediss://file-host:6380\"\n";
    let settings = load_ok(file, &[("REDIS_HOST", "10.0.0.7")]);
    assert_eq!(settings.storage.redis.url, "rediss://10.0.0.7:6380");

    // On the default URL.
    let settings = load_ok("", &[("REDIS_PORT", "6390")]);
    assert_eq!(settings.storage.redis.url, "redis://127.0.0.1:6390");
    let settings = load_ok("", &[("REDIS_HOST", "redis"), ("REDIS_PORT", "6379")]);
    assert_eq!(settings.storage.redis.url, "redis://redis:6379");
}

#[test]
fn botfleet_variables_beat_the_seeds_variables() {
    let settings = load_ok(
        "",
        &[
            ("REDIS_URL", "redis://seed:1"),
            ("REDIS_HOST", "seed-host"),
            ("BOTFLEET__STORAGE__REDIS__URL", "redis://botfleet:2"),
            ("USE_REDIS", "false"),
            ("BOTFLEET__STORAGE__REDIS__ENABLED", "true"),
        ],
    );
    assert_eq!(settings.storage.redis.url, "redis://botfleet:2");
    assert!(settings.storage.redis.enabled);
}

#[test]
fn empty_seed_variables_count_as_unset() {
    let settings = load_ok(
        "",
        &[
            ("REDIS_URL", ""),
            ("REDIS_PASSWORD", ""),
            ("REDIS_PORT", ""),
        ],
    );
    assert_eq!(settings, Settings::default());
}

// --- errors ---------------------------------------------------------------------------------

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let file = r#"
        [storage]
        fallback = "disk"
        bogus = 1

        [storage.redis]
        reconnect_min_ms = 5000
        reconnect_max_ms = 1000

        [log]
        level = "loud"
    "#;
    let err = load_err(
        file,
        &[
            ("BOTFLEET__STORAGE__REDIS__TIMEOUT_MS", "abc"),
            ("BOTFLEET__SUPERVISOR__WITHIN_SECS", "0"),
            ("BOTFLEET__API__BIND", "localhost"),
            ("REDIS_DB", "300"),
        ],
    );
    let report = err.to_string();
    assert_eq!(report.lines().count(), err.problems().len(), "{report}");
    assert_eq!(err.problems().len(), 8, "{report}");

    assert!(message(&err, "storage.bogus").starts_with("storage.bogus: unknown key"));
    assert_eq!(
        err.problem("storage.bogus").unwrap().kind,
        ProblemKind::UnknownKey
    );
    assert!(message(&err, "storage.fallback")
        .starts_with(r#"storage.fallback: expected one of "memory", "file", got "disk""#));
    assert_eq!(
        message(&err, "storage.redis.timeout_ms"),
        "storage.redis.timeout_ms: expected a positive integer, got \"abc\" \
         (from environment variable BOTFLEET__STORAGE__REDIS__TIMEOUT_MS)"
    );
    assert_eq!(
        message(&err, "storage.redis.db"),
        "storage.redis.db: expected an integer from 0 to 255, got \"300\" \
         (from environment variable REDIS_DB)"
    );
    assert!(message(&err, "storage.redis.reconnect_min_ms")
        .contains("expected at most storage.redis.reconnect_max_ms (1000), got 5000"));
    assert!(message(&err, "supervisor.within_secs")
        .starts_with("supervisor.within_secs: expected a positive integer, got 0"));
    assert!(message(&err, "log.level").contains(r#"got "loud""#));
    assert!(message(&err, "api.bind").contains("expected a socket address"));
    assert_eq!(
        err.problem("api.bind").unwrap().kind,
        ProblemKind::InvalidValue
    );
}

#[test]
fn lock_connections_are_bounded() {
    let err = load_err("[storage.redis]\nlock_connections = 65\n", &[]);
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(
        message(&err, "storage.redis.lock_connections")
            .starts_with("storage.redis.lock_connections: expected at most 64, got 65"),
        "{err}"
    );
    let err = load_err("[storage.redis]\nlock_connections = -1\n", &[]);
    assert!(!message(&err, "storage.redis.lock_connections").is_empty());
    let none = load_ok("[storage.redis]\nlock_connections = 0\n", &[]);
    assert_eq!(none.storage.redis.lock_connections, 0);
    let most = load_ok("[storage.redis]\nlock_connections = 64\n", &[]);
    assert_eq!(most.storage.redis.lock_connections, 64);
    assert_eq!(load_ok("", &[]).storage.redis.lock_connections, 8);
}

#[test]
fn a_replica_wait_must_be_shorter_than_the_command_timeout() {
    let file = "[storage.redis]\ntimeout_ms = 300\nwait_replicas = 1\nwait_timeout_ms = 300\n";
    let err = load_err(file, &[]);
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(message(&err, "storage.redis.wait_timeout_ms").starts_with(
        "storage.redis.wait_timeout_ms: expected less than storage.redis.timeout_ms (300) \
         when wait_replicas or wait_aof is set, got 300"
    ));
    // The same for WAITAOF, which blocks its connection as WAIT does.
    let file = "[storage.redis]\ntimeout_ms = 300\nwait_aof = true\nwait_timeout_ms = 400\n";
    let err = load_err(file, &[]);
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(message(&err, "storage.redis.wait_timeout_ms").contains("got 400"));
    assert_eq!(
        load_err("[storage.redis]\nwait_aof = \"perhaps\"\n", &[])
            .problem("storage.redis.wait_aof")
            .unwrap()
            .kind,
        ProblemKind::InvalidType
    );
    // Without wait_replicas the timeout is unused, and any value passes.
    load_ok(
        "[storage.redis]\ntimeout_ms = 300\nwait_timeout_ms = 300\n",
        &[],
    );
    load_ok(
        "[storage.redis]\ntimeout_ms = 300\nwait_replicas = 1\nwait_timeout_ms = 299\n",
        &[],
    );
}

#[test]
fn type_messages_read_well() {
    let file = r#"
        [storage.redis]
        enabled = "perhaps"
        pool_size = -1

        [keys]
        prefix = ["a", "b"]

        [supervisor]
        max_restarts = "many"
    "#;
    let err = load_err(file, &[]);
    assert!(message(&err, "storage.redis.enabled")
        .starts_with(r#"storage.redis.enabled: expected true or false, got "perhaps""#));
    assert!(message(&err, "storage.redis.pool_size")
        .starts_with("storage.redis.pool_size: expected a positive integer, got -1"));
    assert!(
        message(&err, "keys.prefix").starts_with("keys.prefix: expected a string, got an array")
    );
    assert!(message(&err, "supervisor.max_restarts")
        .starts_with(r#"supervisor.max_restarts: expected a non-negative integer, got "many""#));
}

#[test]
fn unknown_keys_are_found_everywhere() {
    let file = r#"
        [nonsense]
        a = 1

        [storage.redis]
        timeout = 5

        [[storage.versioned]]
        pattern = "x"
        field = "ts"
        extra = true
    "#;
    let err = load_err(file, &[("BOTFLEET__LOG__COLOUR", "red")]);
    assert!(message(&err, "nonsense").contains("unknown key"));
    assert!(message(&err, "storage.redis.timeout").contains(r#"did you mean "timeout_ms"?"#));
    assert!(message(&err, "storage.versioned[0].extra").contains("unknown key"));
    assert!(
        message(&err, "log.colour").contains("(from environment variable BOTFLEET__LOG__COLOUR)")
    );
}

#[test]
fn bad_redis_urls_are_refused_without_showing_the_password() {
    for url in [
        "redis://:hunter2@host:notaport",
        "http://user:hunter2@host:6379",
        "redis-sentinel://:hunter2@host:26379",
        "hunter2",
    ] {
        let err = load_err("", &[("REDIS_URL", url)]);
        let line = message(&err, "storage.redis.url");
        assert!(line.starts_with("storage.redis.url: expected a"), "{line}");
        assert!(
            line.contains("(from environment variable REDIS_URL)"),
            "{line}"
        );
        if url != "hunter2" {
            assert!(!line.contains("hunter2"), "password shown: {line}");
        }
    }
    // Every accepted scheme (a Cluster needs the hash-tagged prefix).
    for url in [
        "redis://h:1",
        "rediss://h:1",
        "redis-cluster://h:1",
        "rediss-cluster://h:1",
        "redis-sentinel://h:26379?sentinelServiceName=main",
    ] {
        load_ok("[keys]\nprefix = \"{bot}\"\n", &[("REDIS_URL", url)]);
    }
    // An empty URL means no Redis.
    load_ok("[storage.redis]\nurl = \"\"\n", &[]);
}

#[test]
fn bad_redis_host_or_port_name_the_variable() {
    let err = load_err("", &[("REDIS_PORT", "http")]);
    assert!(message(&err, "storage.redis.url")
        .contains(r#"expected a port number from 1 to 65535, got "http" (from environment variable REDIS_PORT)"#));
}

#[test]
fn file_problems() {
    let missing = Path::new("/nonexistent/botfleet/settings.toml");
    let err = Settings::load_with_env(Some(missing), env(&[])).unwrap_err();
    assert_eq!(err.problems()[0].kind, ProblemKind::File);
    assert!(
        err.to_string().contains("cannot read the settings file"),
        "{err}"
    );

    let err = load_err("[storage\nfallback = 1", &[]);
    assert_eq!(err.problems().len(), 1);
    assert!(err.to_string().contains("invalid TOML at line 1"), "{err}");
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
}

// --- secrets --------------------------------------------------------------------------------

#[test]
fn secrets_never_appear_in_debug_or_redacted_output() {
    let settings = load_ok(
        "",
        &[
            ("REDIS_PASSWORD", "pa55-from-env"),
            ("REDIS_URL", "redis://user:url-pa55@cache:6379"),
            ("BOTFLEET__API__TOKEN", "token-from-env"),
        ],
    );
    assert_eq!(settings.storage.redis.password.expose(), "pa55-from-env");
    let debug = format!("{settings:?} {settings:#?}");
    let printed = settings.redacted().to_toml();
    for secret in ["pa55-from-env", "url-pa55", "token-from-env"] {
        assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
        assert!(
            !printed.contains(secret),
            "{secret} in redacted TOML: {printed}"
        );
    }
    assert!(printed.contains("password = \"***\""), "{printed}");
    assert!(printed.contains("redis://user:***@cache:6379"), "{printed}");
    // Unset secrets stay visibly unset.
    assert!(Settings::default()
        .redacted()
        .to_toml()
        .contains("token = \"\""));
}

#[test]
fn lock_settings_are_validated() {
    let err = load_err(
        "[locks]\non_outage = \"replay\"\nmax_ttl_ms = 0\nretry_min_ms = 500\nretry_max_ms = 100\nrelease_channel = \"\"\n",
        &[],
    );
    assert!(!message(&err, "locks.on_outage").is_empty());
    assert!(!message(&err, "locks.max_ttl_ms").is_empty());
    assert!(!message(&err, "locks.retry_min_ms").is_empty());
    assert!(!message(&err, "locks.release_channel").is_empty());
    let ok = load_ok("[locks]\non_outage = \"local\"\n", &[]);
    assert_eq!(ok.locks.on_outage, botfleet::settings::LockOutage::Local);
}

#[test]
fn shared_data_settings_are_validated() {
    let err = load_err(
        "[shared_data]\nshared_key = \"\"\nlegacy_key = \"api_response\"\nfresh_ms = 0\nreaders = [\"EN\", \"EN\"]\n\
         [shared_data.source]\nurl = \"ftp://game\"\nattempts = 0\nbackoff_base_ms = 900\nbackoff_max_ms = 100\n\
         headers = [[\"bad header\", \"x\"]]\n[shared_data.extract]\ncolors = \"data/colors\"\n",
        &[],
    );
    for key in [
        "shared_data.shared_key",
        "shared_data.fresh_ms",
        "shared_data.watch_interval_ms",
        "shared_data.readers[1]",
        "shared_data.source.url",
        "shared_data.source.attempts",
        "shared_data.source.backoff_base_ms",
        "shared_data.source.headers[0]",
        "shared_data.extract.colors",
    ] {
        assert!(!message(&err, key).is_empty(), "{key} not reported");
    }
    let ok = load_ok(
        "[shared_data]\nenabled = true\n[shared_data.source]\nurl = \"https://game.example/api\"\nquery = [[\"gameCode\", \"RG5M\"]]\n",
        &[],
    );
    assert!(ok.shared_data.enabled);
    assert_eq!(
        ok.shared_data.source.query,
        [("gameCode".to_string(), "RG5M".to_string())]
    );
}

#[test]
fn api_settings_are_validated() {
    let err = load_err(
        "[api]\nbody_limit_bytes = 10\nworkers = 0\nstream_interval_ms = 5\n",
        &[],
    );
    assert!(message(&err, "api.body_limit_bytes").contains("64 to 16777216"));
    assert!(message(&err, "api.workers").contains("1 to 64"));
    assert!(message(&err, "api.stream_interval_ms").contains("50 to 60000"));
    let ok = load_ok(
        "[api]\ndegraded_is_unhealthy = true\n",
        &[("BOTFLEET__API__WORKERS", "4")],
    );
    assert!(ok.api.degraded_is_unhealthy);
    assert_eq!(ok.api.workers, 4);
}

#[test]
fn api_request_bounds_are_validated() {
    let err = load_err(
        "[api]\nheader_timeout_ms = 500\nbody_timeout_ms = 0\nkeep_alive_ms = 999\nmax_connections = 0\n",
        &[],
    );
    assert!(message(&err, "api.header_timeout_ms").contains("1000 to 600000 ms, got 500"));
    assert!(message(&err, "api.body_timeout_ms").contains("100 to 600000 ms, got 0"));
    assert!(message(&err, "api.keep_alive_ms").contains("0 (off) or 1000 to 600000 ms"));
    assert!(message(&err, "api.max_connections").contains("1 to 1000000"));
    let ok = load_ok(
        "[api]\nkeep_alive_ms = 2000\nbody_timeout_ms = 100\n",
        &[("BOTFLEET__API__MAX_CONNECTIONS", "3")],
    );
    let api = &ok.api;
    assert_eq!(
        (api.keep_alive_ms, api.body_timeout_ms, api.max_connections),
        (2_000, 100, 3)
    );
}
