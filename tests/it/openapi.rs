//! The OpenAPI document against the server: every route the source registers is in
//! `/openapi.json` with its method, every documented operation is a route, and the server
//! answers each documented GET (none falls through to the JSON 404 for unknown endpoints).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use botfleet::http::HttpApi;
use botfleet::settings::Settings;
use botfleet::Fleet;
use serde_json::Value;

use crate::support::RedisServer;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The (method, path) of each `.route("PATH", web::METHOD()` in the code of `text` (comments
/// left out); `{name:regex}` path
/// segments are written `{name}`, as OpenAPI does.
fn registered(text: &str) -> Vec<(String, String)> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{line}\n"))
        .collect();
    let text = code.as_str();
    let mut found = Vec::new();
    for (at, _) in text.match_indices(".route(") {
        let rest = text[at + ".route(".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let Some(end) = rest.find('"') else { continue };
        let path = &rest[..end];
        let after = rest[end + 1..].trim_start();
        let Some(after) = after.strip_prefix(',') else {
            continue;
        };
        let Some(method) = after.trim_start().strip_prefix("web::") else {
            continue;
        };
        let method: String = method
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        found.push((method, normalise(path)));
    }
    found
}

/// `{id:[0-9]+}` -> `{id}`.
fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    let mut skip = false;
    for c in path.chars() {
        match c {
            '{' => (in_param, skip) = (true, false),
            '}' => (in_param, skip) = (false, false),
            ':' if in_param => skip = true,
            _ => {}
        }
        if !skip {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in &files {
        for route in registered(&fs::read_to_string(file).unwrap()) {
            routes.insert(route);
        }
    }
    // The scan must see the long-standing routes, or it sees nothing at all.
    for known in [
        ("get", "/status"),
        ("head", "/health"),
        ("post", "/api/bot/tasks/add"),
    ] {
        assert!(
            routes.contains(&(known.0.to_string(), known.1.to_string())),
            "the source scan missed {known:?}: {routes:?}"
        );
    }

    let server = RedisServer::start().unwrap();
    let mut settings = Settings::default();
    settings.storage.redis.url = server.url();
    settings.api.bind = "127.0.0.1:0".into();
    let fleet = Fleet::start(settings).await.unwrap();
    let http = HttpApi::start(fleet.clone()).unwrap();
    let base = format!("http://{}", http.local_addr());
    let response = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");

    // Each documented GET without path parameters is served (not the unknown-endpoint 404).
    let client = reqwest::Client::new();
    for (method, path) in &documented {
        if method != "get" || path.contains('{') || path.ends_with("stream") {
            continue;
        }
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            !(status == 404 && text.contains(&format!("no such endpoint: GET {path}"))),
            "GET {path}: {status} {text}"
        );
    }
    http.stop().await;
    fleet.shutdown().await.unwrap();
}
