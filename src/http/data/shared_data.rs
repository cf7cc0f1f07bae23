//! `GET /api/shared-data` and `GET /api/shared-data/stream`: the shared snapshot (seed 000)
//! through one of the process's readers (`?reader=NAME`, default the first of
//! `shared_data.readers`).
//!
//! The read answers what `Reader::read()` answers: `{"snapshot", "timestamp", "age_ms",
//! "origin", "stale", "fresh_ms", "reader"}`, with `snapshot` null and `origin` `"none"` when
//! nothing is known anywhere. The stream sends the reader's copy once at the start (when it
//! has one), then one `snapshot` event per newer round, as `Reader::newer_than` sees it: each
//! round once, in order. The readers' copies follow the shared key itself (the key watch), so
//! a seed bot's plain `SET` reaches them within `shared_data.watch_interval_ms`.

use std::sync::Arc;

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::time::{interval, MissedTickBehavior};

use super::{comment, event_stream, frame, Params, KEEP_ALIVE};
use crate::actors::shared_data::{Origin, Reader, SharedDataError, Snapshot};
use crate::clock::now_ms;
use crate::http::bot::ApiError;
use crate::http::AppState;

/// The reader the request names (or the first one).
fn reader_of(state: &AppState, req: &HttpRequest) -> Result<Reader, ApiError> {
    let params = Params::of(req, &["reader"])?;
    let settings = &state.fleet.settings().shared_data;
    if !settings.enabled {
        return Err(ApiError::NotFound(
            "shared data is disabled (shared_data.enabled = false)".into(),
        ));
    }
    let shared = state.fleet.shared_data();
    match params.text("reader") {
        Some(name) => shared.reader(name).ok_or_else(|| {
            ApiError::bad_field(
                "reader",
                format!(
                    "no reader {name:?}: expected one of shared_data.readers ({})",
                    settings.readers.join(", ")
                ),
            )
        }),
        None => shared.readers().into_iter().next().ok_or_else(|| {
            ApiError::Unavailable("no reader configured (shared_data.readers is empty)".into())
        }),
    }
}

/// The JSON of a reading.
fn reading(reader: &str, snapshot: &Snapshot, origin: Origin, age_ms: u64, fresh_ms: u64) -> Value {
    let stale = matches!(origin, Origin::Stale | Origin::Legacy) || age_ms >= fresh_ms;
    json!({
        "snapshot": snapshot,
        "timestamp": snapshot.timestamp,
        "age_ms": age_ms,
        "origin": origin,
        "stale": stale,
        "fresh_ms": fresh_ms,
        "reader": reader,
    })
}

/// `GET /api/shared-data`.
pub(super) async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let reader = reader_of(&state, &req)?;
    let fresh_ms = state.fleet.settings().shared_data.fresh_ms;
    let body = match reader.read().await {
        Ok(r) => reading(reader.name(), &r.snapshot, r.origin, r.age_ms, fresh_ms),
        Err(SharedDataError::NoData(why)) => json!({
            "snapshot": null,
            "timestamp": null,
            "age_ms": null,
            "origin": "none",
            "stale": true,
            "fresh_ms": fresh_ms,
            "reader": reader.name(),
            "error": why,
        }),
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    Ok(HttpResponse::Ok().json(body))
}

/// A stream event of the reader's copy `snapshot`.
fn copy_event(reader: &str, snapshot: &Arc<Snapshot>, fresh_ms: u64) -> actix_web::web::Bytes {
    let age = snapshot.age_ms(now_ms());
    let origin = if age < fresh_ms {
        Origin::Memory
    } else {
        Origin::Stale
    };
    frame(
        "snapshot",
        &reading(reader, snapshot, origin, age, fresh_ms),
    )
}

/// `GET /api/shared-data/stream`.
pub(super) async fn stream(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let reader = reader_of(&state, &req)?;
    let fresh_ms = state.fleet.settings().shared_data.fresh_ms;
    let current = reader.current();
    let first: Vec<_> = current
        .iter()
        .map(|s| copy_event(reader.name(), s, fresh_ms))
        .collect();
    let last = current.map_or(0, |s| s.timestamp);
    let mut keep_alive = interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is at once: skip it.
    keep_alive.reset();
    let shutdown = state.shutdown.clone();
    let rounds = stream::unfold(
        (reader, last, shutdown, keep_alive),
        move |(reader, mut last, mut shutdown, mut keep_alive)| async move {
            if *shutdown.borrow() {
                return None;
            }
            let bytes = tokio::select! {
                _ = shutdown.changed() => return None,
                _ = keep_alive.tick() => comment("keep-alive"),
                snapshot = reader.newer_than(last) => {
                    last = snapshot.timestamp;
                    copy_event(reader.name(), &snapshot, fresh_ms)
                }
            };
            Some((bytes, (reader, last, shutdown, keep_alive)))
        },
    );
    let body = stream::iter(first)
        .chain(rounds)
        .map(Ok::<_, actix_web::Error>);
    Ok(event_stream(body))
}
