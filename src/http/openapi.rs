//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is kept as JSON beside the code, in parts: `openapi/base.json` is the document itself
//! (info, shared components, and the routes of `routes.rs`), and each service area adds one
//! part, `openapi/<area>.json`, an object with `paths` and `components` only. [`PARTS`] lists
//! them; they are merged once, on the first request. A path or component defined twice is a
//! bug that the unit tests below catch, as is a `$ref` to nothing; the integration suite
//! `openapi` holds the document equal to the routes the server registers.
//!
//! Routes are registered with their full path, one `.route("/full/path", web::METHOD()...)`
//! each, so that the suite can read them from the source.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::HttpResponse;
use serde_json::{Map, Value};

/// The parts of the document, merged in this order: (name, JSON text).
const PARTS: &[(&str, &str)] = &[
    ("base", include_str!("openapi/base.json")),
    ("tasks", include_str!("openapi/tasks.json")),
    ("data", include_str!("openapi/data.json")),
    ("locks", include_str!("openapi/locks.json")),
    ("games", include_str!("openapi/games.json")),
];

/// The merged document, as served (or why it could not be merged).
fn merged() -> &'static Result<String, String> {
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        merge(PARTS).and_then(|document| {
            serde_json::to_string_pretty(&document).map_err(|e| format!("serialize: {e}"))
        })
    })
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> HttpResponse {
    match merged() {
        Ok(text) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(text.clone()),
        Err(e) => HttpResponse::InternalServerError().json(serde_json::json!({
            "error": format!("the OpenAPI document is broken: {e}"),
            "field": null,
        })),
    }
}

/// Merges `parts`: the first is the document; the others add paths, operations and
/// components. Refuses a part that is not JSON, a key other than `paths` and `components` in
/// an added part, and anything defined twice.
fn merge(parts: &[(&str, &str)]) -> Result<Value, String> {
    let mut iter = parts.iter();
    let Some((first, text)) = iter.next() else {
        return Err("no parts".into());
    };
    let mut document: Value =
        serde_json::from_str(text).map_err(|e| format!("openapi/{first}.json: {e}"))?;
    if let Some(info) = document.get_mut("info").and_then(Value::as_object_mut) {
        info.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
    }
    for (name, text) in iter {
        let part: Value =
            serde_json::from_str(text).map_err(|e| format!("openapi/{name}.json: {e}"))?;
        let Value::Object(part) = part else {
            return Err(format!("openapi/{name}.json: not an object"));
        };
        for (key, value) in part {
            match key.as_str() {
                "paths" => merge_paths(&mut document, name, value)?,
                "components" => merge_components(&mut document, name, value)?,
                other => {
                    return Err(format!(
                        "openapi/{name}.json: unexpected key {other:?} (only paths and components)"
                    ))
                }
            }
        }
    }
    Ok(document)
}

fn object_at<'a>(
    document: &'a mut Value,
    key: &str,
    part: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let Value::Object(root) = document else {
        return Err("the base document is not an object".into());
    };
    root.entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| format!("openapi/{part}.json: {key} is not an object"))
}

fn merge_paths(document: &mut Value, part: &str, paths: Value) -> Result<(), String> {
    let Value::Object(paths) = paths else {
        return Err(format!("openapi/{part}.json: paths is not an object"));
    };
    let target = object_at(document, "paths", part)?;
    for (path, operations) in paths {
        let Value::Object(operations) = operations else {
            return Err(format!("openapi/{part}.json: {path} is not an object"));
        };
        let entry = target
            .entry(path.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| format!("openapi/{part}.json: {path} is not an object"))?;
        for (method, operation) in operations {
            if entry.insert(method.clone(), operation).is_some() {
                return Err(format!(
                    "openapi/{part}.json: {method} {path} is defined twice"
                ));
            }
        }
    }
    Ok(())
}

fn merge_components(document: &mut Value, part: &str, components: Value) -> Result<(), String> {
    let Value::Object(components) = components else {
        return Err(format!("openapi/{part}.json: components is not an object"));
    };
    let target = object_at(document, "components", part)?;
    for (kind, items) in components {
        let Value::Object(items) = items else {
            return Err(format!(
                "openapi/{part}.json: components.{kind} is not an object"
            ));
        };
        let entry = target
            .entry(kind.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| format!("openapi/{part}.json: components.{kind} is not an object"))?;
        for (name, item) in items {
            if entry.insert(name.clone(), item).is_some() {
                return Err(format!(
                    "openapi/{part}.json: components.{kind}.{name} is defined twice"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(item, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    #[test]
    fn the_parts_merge_and_every_reference_resolves() {
        let document = merge(PARTS).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target}: only local references"));
            assert!(
                document.pointer(pointer).is_some(),
                "{target} resolves to nothing"
            );
        }
        for (path, operations) in document["paths"].as_object().unwrap() {
            assert!(path.starts_with('/'), "{path}");
            for (method, operation) in operations.as_object().unwrap() {
                assert!(
                    ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()),
                    "{method} {path}"
                );
                assert!(
                    operation.get("responses").is_some(),
                    "{method} {path} has no responses"
                );
            }
        }
    }

    #[test]
    fn a_part_defining_a_route_again_is_refused() {
        let again = r#"{"paths": {"/status": {"get": {"responses": {}}}}}"#;
        let err = merge(&[PARTS[0], ("again", again)]).unwrap_err();
        assert!(err.contains("get /status is defined twice"), "{err}");
        let stray = r#"{"info": {}}"#;
        let err = merge(&[PARTS[0], ("stray", stray)]).unwrap_err();
        assert!(err.contains("unexpected key \"info\""), "{err}");
    }
}
