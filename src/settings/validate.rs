//! From the merged value tree to [`Settings`], collecting every problem instead of stopping at
//! the first.
//!
//! 1. Keys absent from the serialized defaults are reported as unknown and dropped.
//! 2. The tree is deserialized; on failure `serde_path_to_error` names the failing path, a
//!    message is recorded, the value there is replaced by the default's, and deserialization is
//!    tried again until it succeeds. Every key is checked without any per-field code.
//! 3. Semantic checks run on the result: positive durations and sizes, min <= max, a usable
//!    Redis URL, a socket address, a tracing filter...

use std::net::SocketAddr;

use super::error::{Problem, ProblemKind};
use super::secret::redact_url;
use super::tree::{display_path, parse_path, De, DeError, Kind, Node, Step};
use super::{FallbackKind, HistoryBackend, Settings};

/// Keys whose value must be at least 1: a zero timeout, interval, size or count makes no sense.
pub(crate) const POSITIVE: &[&str] = &[
    "storage.redis.timeout_ms",
    "storage.redis.connect_timeout_ms",
    "storage.redis.reconnect_min_ms",
    "storage.redis.reconnect_max_ms",
    "storage.redis.ping_interval_ms",
    "storage.redis.pool_size",
    "storage.redis.wait_timeout_ms",
    "storage.memory.max_bytes",
    "storage.memory.sweep_interval_ms",
    "storage.outbox.max_entries",
    "storage.outbox.replay_batch",
    "storage.last_known.max_bytes",
    "storage.last_known.refresh_interval_ms",
    "storage.last_known.max_members",
    "supervisor.within_secs",
    "supervisor.backoff_base_ms",
    "supervisor.backoff_max_ms",
    "supervisor.watchdog_ms",
    "supervisor.stop_timeout_ms",
    "presence.interval_ms",
    "presence.ttl_secs",
    "locks.max_name_bytes",
    "locks.max_ttl_ms",
    "locks.retry_min_ms",
    "locks.retry_max_ms",
    "hazards.interval_ms",
    "hazards.lock_ttl_ms",
    "hazards.rotate_every_ticks",
    "hazards.history_ttl_secs",
    "hazards.fairness_ttl_secs",
    "game_sessions.ttl_secs",
    "cache.near_capacity",
    "cache.near_ttl_ms",
    "scheduler.visibility_timeout_ms",
    "scheduler.max_attempts",
    "scheduler.backoff_base_ms",
    "scheduler.backoff_max_ms",
    "scheduler.max_data_bytes",
    "scheduler.max_delay_ms",
    "scheduler.poll_interval_ms",
    "scheduler.claim_batch",
    "scheduler.scan_limit",
    "scheduler.events_max_len",
    "shared_data.ttl_secs",
    "shared_data.fresh_ms",
    "shared_data.fetch_interval_ms",
    "shared_data.leader_ttl_ms",
    "shared_data.source.timeout_ms",
    "shared_data.source.attempts",
    "shared_data.source.backoff_base_ms",
    "shared_data.source.backoff_max_ms",
    "heartbeat.interval_ms",
    "heartbeat.ttl_secs",
    "heartbeat.stale_after_intervals",
    "heartbeat.monitor_interval_ms",
    "identities.ttl_secs",
    "identities.max_bytes",
    "admin.queue_ttl_secs",
    "admin.max_message_bytes",
    "admin.poll_interval_ms",
    "admin.inbox_capacity",
    "history.batch_size",
    "history.flush_interval_ms",
    "history.queue_capacity",
    "history.retry_interval_ms",
    "history.connect_timeout_ms",
    "history.pool_size",
    "history.retention_interval_secs",
];

/// Keys whose values are secrets: a message never shows what was given there.
pub(crate) const SECRETS: &[&str] = &[
    "storage.redis.password",
    "storage.redis.sentinel_password",
    "api.token",
];

/// Deserialization attempts before giving up on repairing the tree (each attempt repairs one
/// value, so this bounds the number of type errors reported).
const MAX_ATTEMPTS: usize = 256;

/// Turns the merged tree into settings, appending every problem found to `problems`. The
/// settings returned are usable (bad values replaced by defaults) even when problems were found,
/// so that the semantic checks can still run on everything else.
pub(crate) fn settle(mut tree: Node, defaults: &Node, problems: &mut Vec<Problem>) -> Settings {
    drop_unknown(&mut tree, defaults, &mut Vec::new(), problems);
    for _ in 0..MAX_ATTEMPTS {
        let err = match serde_path_to_error::deserialize::<_, Settings>(De(&tree)) {
            Ok(settings) => {
                semantic(&settings, &tree, problems);
                return settings;
            }
            Err(err) => err,
        };
        let path = steps(err.path());
        let err = err.into_inner();
        problems.push(describe(&tree, &path, &err));
        repair(&mut tree, defaults, path, &err);
    }
    problems.push(Problem::new(
        ProblemKind::InvalidType,
        "settings",
        format!("more than {MAX_ATTEMPTS} invalid values; fix these first"),
    ));
    Settings::default()
}

fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// Reports and removes every table key the defaults do not have. Arrays are left to
/// `deny_unknown_fields`, since the defaults may have no element to compare with.
fn drop_unknown(
    node: &mut Node,
    default: &Node,
    path: &mut Vec<Step>,
    problems: &mut Vec<Problem>,
) {
    let (Kind::Table(table), Kind::Table(known)) = (&mut node.kind, &default.kind) else {
        return;
    };
    let unknown: Vec<String> = table
        .keys()
        .filter(|key| !known.contains_key(*key))
        .cloned()
        .collect();
    for key in unknown {
        let Some(removed) = table.remove(&key) else {
            continue;
        };
        let message = match suggest(&key, known.keys().map(String::as_str)) {
            Some(near) => format!("unknown key (did you mean {near:?}?)"),
            None => "unknown key".to_owned(),
        };
        path.push(Step::Key(key));
        problems.push(
            Problem::new(ProblemKind::UnknownKey, display_path(path), message)
                .with_origin(removed.origin()),
        );
        path.pop();
    }
    for (key, child) in table.iter_mut() {
        if let Some(default_child) = known.get(key) {
            path.push(Step::Key(key.clone()));
            drop_unknown(child, default_child, path, problems);
            path.pop();
        }
    }
}

/// A known key close to `key`: one extends the other (`timeout` / `timeout_ms`) or they differ
/// by at most two edits.
fn suggest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= 2
                || (key.len() >= 3 && (candidate.starts_with(key) || key.starts_with(*candidate)))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The message for a deserialization error at `path`.
fn describe(tree: &Node, path: &[Step], err: &DeError) -> Problem {
    let key = display_path(path);
    let given = tree.get(path);
    let origin = given.and_then(Node::origin);
    let shown = || match given {
        _ if SECRETS.contains(&key.as_str()) => "***".to_owned(),
        Some(node) => node.describe(),
        None => "nothing".to_owned(),
    };
    let (key, message, origin) = match err {
        DeError::Expected(expected) => (
            key.clone(),
            format!(
                "expected {}, got {}",
                human_expected(expected, &key),
                shown()
            ),
            origin,
        ),
        DeError::Variant(variants) => {
            let choices: Vec<String> = variants.iter().map(|v| format!("{v:?}")).collect();
            (
                key.clone(),
                format!("expected one of {}, got {}", choices.join(", "), shown()),
                origin,
            )
        }
        DeError::UnknownField(field) => {
            let child = field_path(path, field);
            let origin = tree.get(&child).and_then(Node::origin);
            (display_path(&child), "unknown key".to_owned(), origin)
        }
        DeError::MissingField(field) => (
            format!("{key}.{field}"),
            "required key missing".to_owned(),
            origin,
        ),
        DeError::Other(message) => (key.clone(), message.clone(), origin),
    };
    let kind = match err {
        DeError::UnknownField(_) => ProblemKind::UnknownKey,
        _ => ProblemKind::InvalidType,
    };
    Problem::new(kind, key, message).with_origin(origin)
}

/// The path of an unknown field: serde_path_to_error's path may or may not end with it already.
fn field_path(path: &[Step], field: &str) -> Vec<Step> {
    let mut child = path.to_vec();
    if path.last() != Some(&Step::Key(field.to_owned())) {
        child.push(Step::Key(field.to_owned()));
    }
    child
}

/// serde's wording of a type (`u64`, `a boolean`, `struct RedisSettings`) for people.
fn human_expected(expected: &str, key: &str) -> String {
    let phrase = match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" | "u64" | "u128" | "usize" if POSITIVE.contains(&key) => "a positive integer",
        "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a character" => "a string",
        "a sequence" => "an array",
        "a map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => return other.to_owned(),
    };
    phrase.to_owned()
}

/// Replaces the value that failed with the default's, so that the next attempt gets further.
/// When that changes nothing, the enclosing value is replaced instead, up to the whole tree.
fn repair(tree: &mut Node, defaults: &Node, mut path: Vec<Step>, err: &DeError) {
    if let DeError::UnknownField(field) = err {
        if tree.replace(&field_path(&path, field), None) {
            return;
        }
    }
    loop {
        if tree.replace(&path, defaults.get(&path).cloned()) {
            return;
        }
        if path.pop().is_none() {
            // Already the defaults: nothing left to repair. Unreachable in practice, since the
            // defaults deserialize; `settle` stops after MAX_ATTEMPTS anyway.
            return;
        }
    }
}

/// Checks that types alone cannot express.
fn semantic(settings: &Settings, tree: &Node, problems: &mut Vec<Problem>) {
    let mut check = Checker { tree, problems };
    // Serialized, every integer setting can be looked up by its key.
    let values = toml::Value::try_from(settings).ok();
    for key in POSITIVE {
        let value = values.as_ref().and_then(|v| lookup(v, key));
        if let Some(toml::Value::Integer(0)) = value {
            check.fail(key, "expected a positive integer, got 0".to_owned());
        }
    }

    let redis = &settings.storage.redis;
    check.at_most(
        "storage.redis.reconnect_min_ms",
        redis.reconnect_min_ms,
        "storage.redis.reconnect_max_ms",
        redis.reconnect_max_ms,
    );
    // Commands queued behind a WAIT on its connection wait for it: a WAIT as long as the
    // command timeout would make them time out, and read as an outage.
    if (redis.wait_replicas > 0 || redis.wait_aof) && redis.wait_timeout_ms >= redis.timeout_ms {
        check.fail(
            "storage.redis.wait_timeout_ms",
            format!(
                "expected less than storage.redis.timeout_ms ({}) when wait_replicas or \
                 wait_aof is set, got {}",
                redis.timeout_ms, redis.wait_timeout_ms
            ),
        );
    }
    if redis.lock_connections > super::MAX_LOCK_CONNECTIONS {
        check.fail(
            "storage.redis.lock_connections",
            format!(
                "expected at most {}, got {}",
                super::MAX_LOCK_CONNECTIONS,
                redis.lock_connections
            ),
        );
    }
    let supervisor = &settings.supervisor;
    check.at_most(
        "supervisor.backoff_base_ms",
        supervisor.backoff_base_ms,
        "supervisor.backoff_max_ms",
        supervisor.backoff_max_ms,
    );

    if redis.enabled && !redis.url.is_empty() {
        check.redis_url(&redis.effective_url(), redis.db);
        check.topology(settings);
    }

    let presence = &settings.presence;
    if presence.ttl_secs.saturating_mul(1_000) < presence.interval_ms.saturating_mul(3) {
        check.fail(
            "presence.ttl_secs",
            format!(
                "expected at least three presence.interval_ms ({} ms), got {} s",
                presence.interval_ms.saturating_mul(3),
                presence.ttl_secs
            ),
        );
    }

    let locks = &settings.locks;
    check.at_most(
        "locks.retry_min_ms",
        locks.retry_min_ms,
        "locks.retry_max_ms",
        locks.retry_max_ms,
    );
    if locks.release_channel.trim().is_empty() {
        check.fail(
            "locks.release_channel",
            "expected a channel name, got \"\"".to_owned(),
        );
    }

    let scheduler = &settings.scheduler;
    check.at_most(
        "scheduler.backoff_base_ms",
        scheduler.backoff_base_ms,
        "scheduler.backoff_max_ms",
        scheduler.backoff_max_ms,
    );
    if scheduler.events_channel.trim().is_empty() {
        check.fail(
            "scheduler.events_channel",
            "expected a channel name, got \"\"".to_owned(),
        );
    }
    task_types(&scheduler.task_types, &mut check);
    handlers(settings, &mut check);
    shared_data(settings, &mut check);
    let heartbeat = &settings.heartbeat;
    if heartbeat.ttl_secs.saturating_mul(1_000) < heartbeat.interval_ms.saturating_mul(3) {
        check.fail(
            "heartbeat.ttl_secs",
            format!(
                "expected at least three heartbeat.interval_ms ({} ms), got {} s",
                heartbeat.interval_ms.saturating_mul(3),
                heartbeat.ttl_secs
            ),
        );
    }
    if heartbeat.status.trim().is_empty() {
        check.fail(
            "heartbeat.status",
            "expected a status such as \"active\", got \"\"".to_owned(),
        );
    }

    let history = &settings.history;
    if !history.url.is_empty() && HistoryBackend::of(&history.url).is_none() {
        check.fail(
            "history.url",
            format!(
                "expected \"\" (SQLite in history.dir), sqlite://PATH or postgres://USER@HOST:PORT/DB, got {:?}",
                redact_url(&history.url)
            ),
        );
    }
    if history.url.is_empty() && history.dir.trim().is_empty() {
        check.fail(
            "history.dir",
            "expected a directory when history.url is empty, got \"\"".to_owned(),
        );
    }

    if settings.storage.fallback == FallbackKind::File
        && settings.storage.file.dir.trim().is_empty()
    {
        check.fail(
            "storage.file.dir",
            "expected a directory when storage.fallback is \"file\", got \"\"".to_owned(),
        );
    }
    for (i, pattern) in settings.storage.last_known.patterns.iter().enumerate() {
        if pattern.trim().is_empty() {
            check.fail(
                &format!("storage.last_known.patterns[{i}]"),
                "expected a Redis glob, got \"\"".to_owned(),
            );
        }
    }
    for (i, versioned) in settings.storage.versioned.iter().enumerate() {
        for (name, value) in [("pattern", &versioned.pattern), ("field", &versioned.field)] {
            if value.is_empty() {
                check.fail(
                    &format!("storage.versioned[{i}].{name}"),
                    "expected a non-empty string, got \"\"".to_owned(),
                );
            }
        }
    }

    for (key, value) in [
        ("keys.prefix", &settings.keys.prefix),
        ("keys.internal_prefix", &settings.keys.internal_prefix),
    ] {
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            check.fail(
                key,
                format!("expected a non-empty key prefix without spaces, got {value:?}"),
            );
        }
    }

    if let Err(reason) = check_filter(&settings.log.level) {
        check.fail(
            "log.level",
            format!(
                "expected a tracing filter such as \"info\" or \"botfleet=debug,fred=warn\", got {:?} ({reason})",
                settings.log.level
            ),
        );
    }

    hazards_and_cache(settings, &mut check);

    if settings.api.bind.parse::<SocketAddr>().is_err() {
        check.fail(
            "api.bind",
            format!(
                "expected a socket address such as 127.0.0.1:8080, got {:?}",
                settings.api.bind
            ),
        );
    }
    if !(64..=16 * 1024 * 1024).contains(&settings.api.body_limit_bytes) {
        check.fail(
            "api.body_limit_bytes",
            format!(
                "expected 64 to 16777216 bytes, got {}",
                settings.api.body_limit_bytes
            ),
        );
    }
    if !(1..=64).contains(&settings.api.workers) {
        check.fail(
            "api.workers",
            format!("expected 1 to 64 threads, got {}", settings.api.workers),
        );
    }
    // The HTTP server sets these deadlines from a clock it updates every 500 ms; one shorter
    // than a second may be past already when set, and would then never fire.
    for (key, value, low) in [
        (
            "api.header_timeout_ms",
            settings.api.header_timeout_ms,
            1_000,
        ),
        ("api.body_timeout_ms", settings.api.body_timeout_ms, 100),
    ] {
        if !(low..=600_000).contains(&value) {
            check.fail(key, format!("expected {low} to 600000 ms, got {value}"));
        }
    }
    let keep_alive = settings.api.keep_alive_ms;
    if keep_alive != 0 && !(1_000..=600_000).contains(&keep_alive) {
        check.fail(
            "api.keep_alive_ms",
            format!("expected 0 (off) or 1000 to 600000 ms, got {keep_alive}"),
        );
    }
    if !(1..=1_000_000).contains(&settings.api.max_connections) {
        check.fail(
            "api.max_connections",
            format!(
                "expected 1 to 1000000 connections, got {}",
                settings.api.max_connections
            ),
        );
    }
    if !(50..=60_000).contains(&settings.api.stream_interval_ms) {
        check.fail(
            "api.stream_interval_ms",
            format!(
                "expected 50 to 60000 ms, got {}",
                settings.api.stream_interval_ms
            ),
        );
    }
}

/// `[hazards]`, `[game_sessions]` and `[cache]`.
fn hazards_and_cache(settings: &Settings, check: &mut Checker<'_>) {
    let hazards = &settings.hazards;
    for (key, value) in [
        ("hazards.lock_name", &hazards.lock_name),
        ("hazards.channel", &hazards.channel),
        ("cache.channel", &settings.cache.channel),
    ] {
        if value.trim().is_empty() {
            check.fail(key, "expected a non-empty name, got \"\"".to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, d) in hazards.difficulties.iter().enumerate() {
        if d.name.is_empty() || d.name.chars().any(char::is_whitespace) {
            check.fail(
                &format!("hazards.difficulties[{i}].name"),
                format!("expected a name without spaces, got {:?}", d.name),
            );
        } else if !seen.insert(d.name.as_str()) {
            check.fail(
                &format!("hazards.difficulties[{i}].name"),
                format!("difficulty {:?} is listed twice", d.name),
            );
        }
        if d.columns < 2 || d.columns > 1_000 {
            check.fail(
                &format!("hazards.difficulties[{i}].columns"),
                format!("expected 2 to 1000 columns, got {}", d.columns),
            );
        }
        if d.hazards == 0 || d.hazards >= d.columns {
            check.fail(
                &format!("hazards.difficulties[{i}].hazards"),
                format!(
                    "expected at least 1 and fewer than the {} columns, got {}",
                    d.columns, d.hazards
                ),
            );
        }
    }
    if hazards.enabled && hazards.difficulties.is_empty() {
        check.fail(
            "hazards.difficulties",
            "expected at least one difficulty when hazards.enabled is true".to_owned(),
        );
    }
}

fn lookup<'a>(value: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.')
        .try_fold(value, |value, part| value.get(part))
}

/// A `log.level`/`RUST_LOG` filter: comma-separated directives, each a level (`info`) or
/// `TARGET[SPAN]=LEVEL`. A bare word that is not a level is refused, although tracing reads it
/// as "everything from that target": far more often it is a misspelt level.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    if filter.trim().is_empty() {
        return Err("empty".to_owned());
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level: use one of {} or TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// `[[scheduler.handlers]]`: a type handled once, exactly one of a command and a webhook, and
/// bounds on concurrency and timeout.
fn handlers(settings: &Settings, check: &mut Checker<'_>) {
    use super::{HANDLER_MAX_CONCURRENCY, HANDLER_MAX_TIMEOUT_MS};
    // The scheduler's bound on a type's name.
    const TYPE_MAX_BYTES: usize = 128;
    let mut seen = std::collections::HashMap::new();
    for (i, handler) in settings.scheduler.handlers.iter().enumerate() {
        let key = |name: &str| format!("scheduler.handlers[{i}].{name}");
        let task_type = &handler.task_type;
        if task_type.trim().is_empty() || task_type.len() > TYPE_MAX_BYTES {
            check.fail(
                &key("type"),
                format!("expected a task type of 1 to {TYPE_MAX_BYTES} bytes, got {task_type:?}"),
            );
        } else if let Some(first) = seen.insert(task_type.as_str(), i) {
            check.fail(
                &key("type"),
                format!(
                    "task type {task_type:?} has a handler already (scheduler.handlers[{first}]): \
                     one entry per type"
                ),
            );
            seen.insert(task_type.as_str(), first);
        }
        if !(1..=HANDLER_MAX_CONCURRENCY).contains(&handler.concurrency) {
            check.fail(
                &key("concurrency"),
                format!(
                    "expected 1 to {HANDLER_MAX_CONCURRENCY} tasks at once, got {}",
                    handler.concurrency
                ),
            );
        }
        if !(1..=HANDLER_MAX_TIMEOUT_MS).contains(&handler.timeout_ms) {
            check.fail(
                &key("timeout_ms"),
                format!(
                    "expected 1 to {HANDLER_MAX_TIMEOUT_MS} ms, got {}",
                    handler.timeout_ms
                ),
            );
        }
        match (&handler.command, &handler.url) {
            (Some(_), Some(_)) => check.fail(
                &format!("scheduler.handlers[{i}]"),
                "expected exactly one of command and url, got both".to_owned(),
            ),
            (None, None) => check.fail(
                &format!("scheduler.handlers[{i}]"),
                "expected exactly one of command (an argv array) and url (a webhook), got neither"
                    .to_owned(),
            ),
            _ => {}
        }
        if let Some(argv) = &handler.command {
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                check.fail(
                    &key("command"),
                    format!(
                        "expected the command's argv with a program first, such as \
                         [\"python3\", \"handle.py\"], got {argv:?}"
                    ),
                );
            }
        }
        if let Some(url) = &handler.url {
            let problem = match url::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    Some(format!("scheme {:?}", u.scheme()))
                }
                Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("no host".to_owned()),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(problem) = problem {
                check.fail(
                    &key("url"),
                    format!(
                        "expected an http or https URL, got {:?} ({problem})",
                        redact_url(url)
                    ),
                );
            }
        }
    }
}

/// `[shared_data]`: names, the source URL, pointers and the backoff bounds.
fn shared_data(settings: &Settings, check: &mut Checker<'_>) {
    let shared = &settings.shared_data;
    for (key, value) in [
        ("shared_data.shared_key", &shared.shared_key),
        ("shared_data.legacy_key", &shared.legacy_key),
        ("shared_data.channel", &shared.channel),
        ("shared_data.leader_lock", &shared.leader_lock),
    ] {
        if value.trim().is_empty() {
            check.fail(key, "expected a non-empty name, got \"\"".to_owned());
        }
    }
    if shared.shared_key == shared.legacy_key {
        check.fail(
            "shared_data.legacy_key",
            format!(
                "expected a key other than shared_data.shared_key, got {:?}",
                shared.legacy_key
            ),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, name) in shared.readers.iter().enumerate() {
        if name.trim().is_empty() || !seen.insert(name.as_str()) {
            check.fail(
                &format!("shared_data.readers[{i}]"),
                format!("expected a non-empty name used once, got {name:?}"),
            );
        }
    }
    let url = &shared.source.url;
    if !url.is_empty() {
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => check.fail(
                "shared_data.source.url",
                format!("expected an http or https URL, got scheme {:?}", u.scheme()),
            ),
            Err(e) => check.fail(
                "shared_data.source.url",
                format!("expected an http or https URL: {e}"),
            ),
        }
    }
    for (i, (name, value)) in shared.source.headers.iter().enumerate() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            check.fail(
                &format!("shared_data.source.headers[{i}]"),
                format!("expected a valid HTTP header name and value, got {name:?}"),
            );
        }
    }
    check.at_most(
        "shared_data.source.backoff_base_ms",
        shared.source.backoff_base_ms,
        "shared_data.source.backoff_max_ms",
        shared.source.backoff_max_ms,
    );
    // A check of the key must come well inside the freshness window, or readers would
    // serve a seed writer's rounds stale.
    if shared.watch_interval_ms > 0 && shared.watch_interval_ms.saturating_mul(2) > shared.fresh_ms
    {
        check.fail(
            "shared_data.watch_interval_ms",
            format!(
                "expected 0 (off) or at most half of shared_data.fresh_ms ({} ms), got {}",
                shared.fresh_ms / 2,
                shared.watch_interval_ms
            ),
        );
    }
    if shared.source.attempts > 20 {
        check.fail(
            "shared_data.source.attempts",
            format!("expected at most 20, got {}", shared.source.attempts),
        );
    }
    let extract = &shared.extract;
    for (key, pointer) in [
        ("shared_data.extract.issue_number", &extract.issue_number),
        ("shared_data.extract.colors", &extract.colors),
        ("shared_data.extract.result_format", &extract.result_format),
    ] {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            check.fail(
                key,
                format!("expected a JSON pointer starting with '/' (or \"\"), got {pointer:?}"),
            );
        }
    }
}

/// `scheduler.task_types`: a non-empty list of distinct well-formed names, or `["*"]` alone.
fn task_types(types: &[String], check: &mut Checker<'_>) {
    const KEY: &str = "scheduler.task_types";
    if types.is_empty() {
        check.fail(
            KEY,
            "expected at least one task type, or [\"*\"] for any, got []".to_owned(),
        );
        return;
    }
    let any = types.iter().any(|t| t == super::ANY_TASK_TYPE);
    if any && types.len() > 1 {
        check.fail(
            KEY,
            "\"*\" (any type) must be the only entry, or list the types without it".to_owned(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for name in types.iter().filter(|t| *t != super::ANY_TASK_TYPE) {
        if let Some(problem) = super::task_type_problem(name) {
            check.fail(KEY, format!("task type {name:?}: {problem}"));
        } else if !seen.insert(name.as_str()) {
            check.fail(KEY, format!("task type {name:?} is listed twice"));
        }
    }
}

struct Checker<'a> {
    tree: &'a Node,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: String) {
        let origin = self.tree.get(&parse_path(key)).and_then(Node::origin);
        self.problems
            .push(Problem::new(ProblemKind::InvalidValue, key, message).with_origin(origin));
    }

    fn at_most(&mut self, low_key: &str, low: u64, high_key: &str, high: u64) {
        if low > high {
            self.fail(
                low_key,
                format!("expected at most {high_key} ({high}), got {low}"),
            );
        }
    }

    fn redis_url(&mut self, url: &str, db: u8) {
        const KEY: &str = "storage.redis.url";
        if let Err(message) = super::urls::redis_url_problem(url) {
            self.fail(KEY, message);
            return;
        }
        let cluster = url::Url::parse(url).is_ok_and(|u| u.scheme().ends_with("-cluster"));
        if cluster && db != 0 {
            self.fail(
                "storage.redis.db",
                format!("expected 0 with Redis Cluster, which has only database 0, got {db}"),
            );
        }
    }
}

impl Checker<'_> {
    /// Cluster and Sentinel settings that only make sense with their URL scheme, and the key
    /// layout a Cluster needs (every script's keys in one slot).
    fn topology(&mut self, settings: &Settings) {
        let redis = &settings.storage.redis;
        let scheme = redis.url.split("://").next().unwrap_or_default();
        let (cluster, sentinel) = (scheme.ends_with("-cluster"), scheme.ends_with("-sentinel"));
        for node in &redis.nodes {
            let port = node
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                self.fail(
                    "storage.redis.nodes",
                    format!("expected host:port entries, got {node:?}"),
                );
            }
        }
        if !redis.nodes.is_empty() && !cluster && !sentinel {
            self.fail(
                "storage.redis.nodes",
                "expected no extra nodes with a standalone URL (use redis-cluster:// or redis-sentinel://)"
                    .to_owned(),
            );
        }
        let sentinel_keys_set = !redis.sentinel_service.is_empty()
            || !redis.sentinel_username.is_empty()
            || !redis.sentinel_password.is_empty();
        if sentinel_keys_set && !sentinel {
            self.fail(
                "storage.redis.sentinel_service",
                "sentinel settings given but storage.redis.url is not a redis-sentinel:// URL"
                    .to_owned(),
            );
        }
        if sentinel
            && redis.sentinel_service.is_empty()
            && !redis.url.contains("sentinelServiceName=")
        {
            self.fail(
                "storage.redis.sentinel_service",
                "expected the monitored master's name (or ?sentinelServiceName= in the URL)"
                    .to_owned(),
            );
        }
        if cluster && !has_hash_tag(&settings.keys.prefix) {
            self.fail(
                "keys.prefix",
                format!(
                    "expected a hash tag such as {{bot}} on Redis Cluster (the scheduler's scripts \
                     touch the queue and the task hashes together, so they must share one slot), got {:?}",
                    settings.keys.prefix
                ),
            );
        }
    }
}

/// Whether `key` carries a non-empty hash tag: a `{...}` that Redis Cluster hashes alone.
pub(crate) fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags() {
        assert!(has_hash_tag("{bot}"));
        assert!(has_hash_tag("app:{bot}:x"));
        assert!(!has_hash_tag("bot"));
        assert!(!has_hash_tag("{}bot"));
        assert!(!has_hash_tag("bot}{"));
    }

    #[test]
    fn suggests_near_keys() {
        let known = ["timeout_ms", "connect_timeout_ms", "db", "url"];
        assert_eq!(suggest("timeout", known.into_iter()), Some("timeout_ms"));
        assert_eq!(suggest("timeut_ms", known.into_iter()), Some("timeout_ms"));
        assert_eq!(suggest("urls", known.into_iter()), Some("url"));
        assert_eq!(suggest("completely_else", known.into_iter()), None);
    }

    #[test]
    fn filters() {
        assert!(check_filter("info").is_ok());
        assert!(check_filter("botfleet=debug,fred=warn").is_ok());
        assert!(check_filter("warn,botfleet::storage=trace").is_ok());
        assert!(check_filter("").is_err());
        assert!(check_filter("loud").is_err());
        assert!(check_filter("botfleet=loud").is_err());
    }

    #[test]
    fn expected_phrases() {
        assert_eq!(
            human_expected("u64", "storage.redis.timeout_ms"),
            "a positive integer"
        );
        assert_eq!(
            human_expected("u64", "storage.file.fsync_interval_ms"),
            "a non-negative integer"
        );
        assert_eq!(human_expected("a boolean", "x"), "true or false");
        assert_eq!(human_expected("struct RedisSettings", "x"), "a table");
    }
}
