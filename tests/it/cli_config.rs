//! `botfleet config check`, run as a user would: the built binary, a settings file, an
//! environment (cleared first, so that the developer's own variables cannot interfere).

use std::path::Path;

use botfleet::settings::Settings;

const SECRET: &str = "pa55w0rd-do-not-print";

use crate::support::process::run_botfleet as botfleet;

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn good_file_prints_the_effective_settings_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "good.toml",
        "[supervisor]\nmax_restarts = 7\n\n[log]\nformat = \"json\"\n",
    );
    let url = format!("redis://user:{SECRET}@cache:6379/1");
    let out = botfleet(
        dir.path(),
        &["config", "check", "--config", &file],
        &[
            ("REDIS_PASSWORD", SECRET),
            ("REDIS_URL", &url),
            ("BOTFLEET__API__TOKEN", SECRET),
            ("BOTFLEET__STORAGE__REDIS__TIMEOUT_MS", "300"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "secret printed:\n{stdout}{stderr}"
    );

    let printed: Settings = toml::from_str(&stdout).unwrap();
    assert_eq!(printed.supervisor.max_restarts, 7);
    assert_eq!(printed.storage.redis.timeout_ms, 300);
    assert_eq!(printed.storage.redis.password.expose(), "***");
    assert_eq!(printed.api.token.expose(), "***");
    assert_eq!(printed.storage.redis.url, "redis://user:***@cache:6379/1");
    assert_eq!(printed.log.format, botfleet::settings::LogFormat::Json);
}

#[test]
fn bad_file_prints_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "[storage]\nfallback = \"disk\"\nbogus = true\n\n[storage.redis]\npool_size = 0\n",
    );
    let url = format!("http://user:{SECRET}@cache:6379");
    let out = botfleet(
        dir.path(),
        &["--config", &file, "config", "check"],
        &[
            ("BOTFLEET__STORAGE__REDIS__TIMEOUT_MS", "abc"),
            ("REDIS_PASSWORD", SECRET),
            ("REDIS_URL", &url),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains(SECRET), "secret printed:\n{stderr}");

    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        "storage.bogus: unknown key",
        r#"storage.fallback: expected one of "memory", "file", got "disk""#,
        r#"storage.redis.timeout_ms: expected a positive integer, got "abc" (from environment variable BOTFLEET__STORAGE__REDIS__TIMEOUT_MS)"#,
        "storage.redis.pool_size: expected a positive integer, got 0",
        "storage.redis.url: expected a URL with scheme redis://",
    ];
    for start in expected {
        assert!(
            lines.iter().any(|line| line.starts_with(start)),
            "no line starting with {start:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.len(), expected.len(), "{stderr}");
}

#[test]
fn a_missing_named_file_is_an_error_but_the_default_file_may_be_absent() {
    let dir = tempfile::tempdir().unwrap();
    let out = botfleet(
        dir.path(),
        &["config", "check", "--config", "nope.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("nope.toml: cannot read the settings file"));

    // No settings.toml in the working directory: the defaults.
    let out = botfleet(dir.path(), &["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Settings = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(printed, Settings::default());

    // A settings.toml in the working directory is read.
    write(dir.path(), "settings.toml", "[keys]\nprefix = \"{bot}\"\n");
    let out = botfleet(dir.path(), &["config", "check"], &[]);
    let printed: Settings = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(printed.keys.prefix, "{bot}");
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = botfleet(dir.path(), &["config", "frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));

    let out = botfleet(dir.path(), &["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("Exit codes:") && help.contains("config"),
        "{help}"
    );
}
