//! The command line's side of the API: `botfleet status` asks a running daemon over HTTP.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answered at the address (not running, wrong `api.bind` or `--url`).
    #[error("cannot reach the daemon at {url}: {reason} (is `botfleet run` running, and is api.bind or --url right?)")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// It answered, but not with what was expected.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The base URL of the daemon listening on `bind` (`0.0.0.0` and `::` are asked on loopback).
pub fn base_url(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", addr.port())
        }
        Ok(addr) => format!("http://{addr}"),
        Err(_) => format!("http://{bind}"),
    }
}

/// `GET {base}/status` as JSON.
pub async fn fetch_status(base: &str) -> Result<Value, ClientError> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    if !response.status().is_success() {
        return Err(ClientError::BadAnswer {
            url,
            reason: format!("status {}", response.status()),
        });
    }
    response
        .json::<Value>()
        .await
        .map_err(|e| ClientError::BadAnswer {
            url,
            reason: e.to_string(),
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `botfleet status`: asks the daemon at `base` and writes its status to `out`, as the JSON
/// snapshot when `json`, else as a few human-readable lines.
pub fn status_command(base: &str, json: bool, out: &mut impl Write) -> Result<(), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(fetch_status(base))?;
    if json {
        writeln!(out, "{status}")?;
    } else {
        out.write_all(render_status(&status).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human-readable form of a status snapshot.
pub fn render_status(status: &Value) -> String {
    let mut text = String::new();
    let healthy = status["health"]["healthy"].as_bool().unwrap_or(false);
    text.push_str(&format!(
        "botfleet {}: {}\n",
        show(&status["instance"]),
        if healthy { "healthy" } else { "UNHEALTHY" }
    ));
    for reason in status["health"]["reasons"].as_array().into_iter().flatten() {
        text.push_str(&format!("  ! {}\n", show(reason)));
    }
    let storage = &status["storage"];
    text.push_str(&format!(
        "storage: mode {}, outbox {}, mode changes {}, refused writes {}\n",
        show(&storage["mode"]),
        show(&storage["outbox_len"]),
        show(&storage["mode_changes"]),
        show(&storage["refused_writes"]),
    ));
    text.push_str("actors:\n");
    for actor in field(status, &["actors", "actors"])
        .as_array()
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "  {:<20} {:<10} restarts {}\n",
            show(&actor["actor"]),
            show(&actor["state"]),
            show(&actor["restarts"]),
        ));
    }
    let locks = &status["locks"];
    if !locks.is_null() {
        text.push_str(&format!(
            "locks: {} waiters, {} local locks held\n",
            show(&locks["waiters"]),
            show(&locks["local_locks"]),
        ));
    }
    for name in crate::http::PLACEHOLDER_SECTIONS {
        let value = &status[*name];
        if !value.is_null() {
            text.push_str(&format!("{name}: {value}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_are_asked_on_loopback() {
        assert_eq!(base_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[test]
    fn human_status_names_actors_and_mode() {
        let status = serde_json::json!({
            "instance": "h-1", "health": {"healthy": false, "reasons": ["actor x is failed"]},
            "storage": {"mode": "degraded", "outbox_len": 3, "mode_changes": 1, "refused_writes": 0},
            "actors": {"actors": [{"actor": "presence", "state": "running", "restarts": 2}]},
            "locks": null, "queue": {"pending": 4}
        });
        let text = render_status(&status);
        for part in [
            "UNHEALTHY",
            "actor x is failed",
            "mode degraded",
            "outbox 3",
            "presence",
            "restarts 2",
            "queue: {\"pending\":4}",
        ] {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
    }
}
