//! `GET /metrics` read back through a Prometheus text-format parser, so that tests check the
//! exposition as a scraper sees it.

use std::collections::HashMap;

/// Samples by (metric name, sorted labels).
pub type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// `BASE/metrics` through a Prometheus text-format parser: (name, labels) -> value.
pub async fn scrape(base: &str) -> Samples {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(!scrape.samples.is_empty(), "{text}");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            ((s.metric, labels), value)
        })
        .collect()
}

/// The value of `name` with exactly `labels`.
///
/// # Panics
/// When there is no such sample.
pub fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    key.sort();
    *samples
        .get(&(name.to_owned(), key))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:?}"))
}
