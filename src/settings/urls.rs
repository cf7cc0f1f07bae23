//! What the URLs of the settings may be: `storage.redis.url` as the storage's Redis client
//! reads it, and `history.url` as the archive does. Validation checks them here, at start-up,
//! so that a URL the storage or the archive would refuse later is reported with every other
//! problem; the storage and the archive use the same definitions.

use serde::Serialize;

use super::RedisSettings;

/// URL schemes the storage handle understands: standalone, Cluster and Sentinel, each plain
/// or TLS (`rediss`).
pub(crate) const REDIS_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

/// The query parameter naming a Cluster seed node or a sentinel (`node=HOST:PORT`).
const NODE_QUERY: &str = "node";
/// The query parameter naming the Sentinel service.
const SENTINEL_SERVICE_QUERY: &str = "sentinelServiceName";

impl RedisSettings {
    /// The URL the storage connects with: `storage.redis.url`, plus
    /// `storage.redis.sentinel_service` as the service name of a Sentinel URL that lacks one
    /// (the Redis client reads the name from the URL only).
    pub(crate) fn effective_url(&self) -> String {
        let url = &self.url;
        let sentinel = url
            .split("://")
            .next()
            .unwrap_or_default()
            .ends_with("-sentinel");
        let named = url.contains(&format!("{SENTINEL_SERVICE_QUERY}="));
        if !sentinel || self.sentinel_service.is_empty() || named {
            return url.clone();
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{separator}{SENTINEL_SERVICE_QUERY}={}",
            self.sentinel_service
        )
    }
}

/// Why `url` cannot be `storage.redis.url` (or a command's `--redis`), as one message without
/// the key and with any password redacted: not a URL, a scheme the storage does not speak, or
/// something the storage's Redis client would refuse when connecting.
pub fn redis_url_problem(url: &str) -> Result<(), String> {
    let shown = super::redact_url(url);
    let parsed = url::Url::parse(url).map_err(|err| {
        format!("expected a Redis URL such as redis://127.0.0.1:6379, got {shown:?} ({err})")
    })?;
    if !REDIS_SCHEMES.contains(&parsed.scheme()) {
        let mut schemes = REDIS_SCHEMES
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>();
        let last = schemes.pop().unwrap_or_default();
        return Err(format!(
            "expected a URL with scheme {} or {last}, got {shown:?}",
            schemes.join(", ")
        ));
    }
    check_redis_url(url)
        .map_err(|err| format!("expected a usable Redis URL, got {shown:?} ({err})"))
}

/// Why `url`, a Redis URL with one of the [`REDIS_SCHEMES`], cannot be used, read rule by rule
/// as the storage's Redis client (fred) reads it: a host; for standalone and Sentinel URLs at
/// most one path segment, a database number from 0 to 255; percent-encoded credentials that
/// decode to UTF-8; `node=HOST:PORT` seeds; a Sentinel service name. The storage's tests hold
/// this check to the client's own parser, so a URL refused here is one it would refuse.
pub(crate) fn check_redis_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let scheme = parsed.scheme();
    let (cluster, sentinel) = (scheme.ends_with("-cluster"), scheme.ends_with("-sentinel"));
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !cluster {
        let segments: Vec<&str> = parsed.path_segments().map_or(vec![], Iterator::collect);
        match segments.as_slice() {
            [] => {}
            [db] if db.trim().is_empty() => {}
            [db] => {
                db.parse::<u8>()
                    .map_err(|_| format!("database {db:?} is not a number from 0 to 255"))?;
            }
            _ => return Err(format!("path {:?} is not /DATABASE", parsed.path())),
        }
    }
    for (what, text) in [
        ("user name", parsed.username()),
        ("password", parsed.password().unwrap_or_default()),
    ] {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map_err(|_| format!("the {what} is not percent-encoded UTF-8"))?;
    }
    if cluster || sentinel {
        for (key, value) in parsed.query_pairs() {
            if key != NODE_QUERY {
                continue;
            }
            let port = match value.split(':').collect::<Vec<_>>().as_slice() {
                [_, port] => port.parse::<u16>().ok(),
                _ => None,
            };
            if port.is_none() {
                return Err(format!("{NODE_QUERY}={value:?} is not HOST:PORT"));
            }
        }
    }
    if sentinel
        && !parsed
            .query_pairs()
            .any(|(key, _)| key == SENTINEL_SERVICE_QUERY)
    {
        return Err(format!(
            "no {SENTINEL_SERVICE_QUERY} (set it in the URL or storage.redis.sentinel_service)"
        ));
    }
    Ok(())
}

/// The database `history.url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    /// A SQLite file (`sqlite://PATH`, or `""`: the file in `history.dir`).
    Sqlite,
    /// A PostgreSQL server (`postgres://` or `postgresql://`).
    Postgres,
}

impl HistoryBackend {
    /// The database `url` names (`None`: neither).
    pub fn of(url: &str) -> Option<HistoryBackend> {
        if url.starts_with("sqlite:") {
            Some(HistoryBackend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(HistoryBackend::Postgres)
        } else {
            None
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryBackend::Sqlite => "sqlite",
            HistoryBackend::Postgres => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_get_the_service_name_of_the_settings() {
        let mut redis = RedisSettings {
            url: "redis-sentinel://h:26379".into(),
            sentinel_service: "main".into(),
            ..RedisSettings::default()
        };
        assert_eq!(
            redis.effective_url(),
            "redis-sentinel://h:26379?sentinelServiceName=main"
        );
        redis.url = "redis-sentinel://h:26379?node=g:26379".into();
        assert_eq!(
            redis.effective_url(),
            "redis-sentinel://h:26379?node=g:26379&sentinelServiceName=main"
        );
        redis.url = "redis-sentinel://h:26379?sentinelServiceName=other".into();
        assert_eq!(redis.effective_url(), redis.url);
        redis.url = "redis://h:6379".into();
        assert_eq!(redis.effective_url(), redis.url);
    }

    #[test]
    fn history_urls_name_their_database() {
        assert_eq!(
            HistoryBackend::of("sqlite://data/h.sqlite3"),
            Some(HistoryBackend::Sqlite)
        );
        assert_eq!(
            HistoryBackend::of("postgresql://u@h/db"),
            Some(HistoryBackend::Postgres)
        );
        assert_eq!(HistoryBackend::of("mysql://u@h/db"), None);
    }
}
