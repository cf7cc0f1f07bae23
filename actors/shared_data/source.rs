//! Where the data comes from: an HTTP JSON endpoint ([`HttpSource`]) or an async function of
//! the host ([`FnSource`]), both behind [`Source`]; the retry loop with exponential backoff;
//! and the extractor that builds `processed_data`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::settings::{ExtractSettings, SharedSourceSettings};

/// The future a [`Source`] returns: the source's JSON, or why it could not be had.
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// A source of JSON documents.
pub trait Source: Send + Sync {
    /// Fetches one document (the caller bounds it by `shared_data.source.timeout_ms`).
    fn fetch(&self) -> SourceFuture;
    /// A short description for logs (the URL, or `host function`).
    fn describe(&self) -> String;
}

/// A host's async function as a [`Source`].
pub struct FnSource<F>(pub F);

impl<F, Fut, E> Source for FnSource<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, E>> + Send + 'static,
    E: std::fmt::Display,
{
    fn fetch(&self) -> SourceFuture {
        let fut = (self.0)();
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    }

    fn describe(&self) -> String {
        "host function".into()
    }
}

/// An HTTP JSON endpoint: `GET url?query` with the configured headers.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    query: Vec<(String, String)>,
}

impl HttpSource {
    /// A source for `[shared_data.source]`; fails when a header is invalid.
    pub fn new(settings: &SharedSourceSettings) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("shared_data.source.headers: {name:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| format!("shared_data.source.headers: {name}: {e}"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| format!("shared_data.source: {e}"))?;
        Ok(Self {
            client,
            url: settings.url.clone(),
            query: settings.query.clone(),
        })
    }
}

impl Source for HttpSource {
    fn fetch(&self) -> SourceFuture {
        let request = self.client.get(&self.url).query(&self.query);
        Box::pin(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            response.json::<Value>().await.map_err(|e| e.to_string())
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// One attempt bounded by `timeout`.
pub(crate) async fn fetch_once(source: &dyn Source, timeout: Duration) -> Result<Value, String> {
    match tokio::time::timeout(timeout, source.fetch()).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

/// Up to `attempts` attempts, each bounded by the source timeout, with a doubling delay between
/// them; `on_retry` is called before each retry with the error that caused it.
pub(crate) async fn fetch_with_retries(
    source: &dyn Source,
    settings: &SharedSourceSettings,
    mut on_retry: impl FnMut(&str),
) -> Result<Value, String> {
    let timeout = Duration::from_millis(settings.timeout_ms);
    let mut delay = settings.backoff_base_ms;
    let attempts = settings.attempts.max(1);
    let mut attempt = 1;
    loop {
        match fetch_once(source, timeout).await {
            Ok(value) => return Ok(value),
            Err(e) if attempt >= attempts => {
                return Err(format!("{e} (after {attempt} attempts)"));
            }
            Err(e) => {
                on_retry(&e);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                delay = delay.saturating_mul(2).min(settings.backoff_max_ms);
                attempt += 1;
            }
        }
    }
}

/// A host function building `processed_data` from the source's JSON and the snapshot's
/// timestamp.
pub type ExtractorFn = Arc<dyn Fn(&Value, u64) -> Value + Send + Sync>;

/// Builds `processed_data`: the JSON pointers of `[shared_data.extract]`.
pub(crate) fn extract(settings: &ExtractSettings, game_data: &Value, timestamp: u64) -> Value {
    let pick = |pointer: &str| -> Option<&Value> {
        if pointer.is_empty() {
            None
        } else {
            game_data.pointer(pointer)
        }
    };
    let mut out = serde_json::Map::new();
    if let Some(issue) = pick(&settings.issue_number) {
        out.insert("issue_number".into(), issue.clone());
    }
    if let Some(colors) = pick(&settings.colors) {
        out.insert("colors".into(), Value::String(format_colors(colors)));
    }
    if let Some(result) = pick(&settings.result_format) {
        out.insert("result_format".into(), result.clone());
    }
    out.insert("game_type".into(), json!(settings.game_type));
    out.insert("last_update".into(), json!(timestamp));
    Value::Object(out)
}

/// The seed's color line: the last color named, upper-cased, padded to 8 and followed by its
/// emoji (`["Red", "Green"]` → `"GREEN   🟢"`).
pub(crate) fn format_colors(colors: &Value) -> String {
    let name = match colors {
        Value::Array(items) => items.iter().rev().find_map(Value::as_str).unwrap_or(""),
        Value::String(s) => s.as_str(),
        _ => "",
    };
    let upper = name.to_uppercase();
    let emoji = match upper.as_str() {
        "RED" => "🔴",
        "GREEN" => "🟢",
        "VIOLET" | "PURPLE" => "🟣",
        _ => "",
    };
    format!("{upper:<8}{emoji}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_feed_yields_the_seed_fields() {
        let game = json!({"data": {"records": [
            {"issue": 12345, "value": "123", "resultFormatValueI18n": ["Red", "Green"]}
        ]}});
        let processed = extract(&ExtractSettings::default(), &game, 1_740_227_344_593);
        assert_eq!(
            processed,
            json!({
                "issue_number": 12345,
                "colors": "GREEN   🟢",
                "result_format": "123",
                "game_type": "RG5M",
                "last_update": 1_740_227_344_593u64,
            })
        );
    }

    #[test]
    fn missing_pointers_leave_fields_out() {
        let processed = extract(&ExtractSettings::default(), &json!({"other": 1}), 7);
        assert_eq!(processed, json!({"game_type": "RG5M", "last_update": 7}));
    }
}
