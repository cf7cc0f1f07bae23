//! `GET /api/events/stream`: server-sent events for the dashboard. A `status` event carries a
//! full [`StatusSnapshot`] at once and then every `api.stream_interval_ms`; a `storage` event
//! carries each storage event (mode change, resync) the moment it happens, followed by a fresh
//! snapshot. The stream ends when the server stops.

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures::{stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{interval, Interval, MissedTickBehavior};

use super::snapshot::StatusSnapshot;
use super::AppState;
use crate::storage::StorageEvent;

struct Feed {
    state: web::Data<AppState>,
    ticks: Interval,
    storage: Option<broadcast::Receiver<StorageEvent>>,
    shutdown: watch::Receiver<bool>,
    /// A storage event was just sent: the next item is a snapshot.
    snapshot_due: bool,
}

enum Wake {
    Stop,
    Tick,
    Storage(Result<StorageEvent, RecvError>),
}

/// One SSE frame.
fn frame(event: &str, data: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

async fn snapshot_frame(state: &AppState) -> Bytes {
    let snapshot = StatusSnapshot::take(&state.fleet, &state.settings, &state.sections).await;
    frame("status", &snapshot)
}

/// The handler.
pub(crate) async fn stream(state: web::Data<AppState>) -> HttpResponse {
    let mut ticks = interval(Duration::from_millis(state.settings.stream_interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        storage: Some(state.fleet.storage().events()),
        shutdown: state.shutdown.clone(),
        state,
        ticks,
        snapshot_due: false,
    };
    let body = stream::unfold(feed, |mut feed| async move {
        if *feed.shutdown.borrow() {
            return None;
        }
        if feed.snapshot_due {
            feed.snapshot_due = false;
            let bytes = snapshot_frame(&feed.state).await;
            return Some((Ok::<_, actix_web::Error>(bytes), feed));
        }
        let events = &mut feed.storage;
        let storage = async move {
            match events.as_mut() {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            _ = feed.shutdown.changed() => Wake::Stop,
            _ = feed.ticks.tick() => Wake::Tick,
            event = storage => Wake::Storage(event),
        };
        let bytes = match woke {
            Wake::Stop => return None,
            Wake::Tick => snapshot_frame(&feed.state).await,
            Wake::Storage(Ok(event)) => {
                feed.snapshot_due = true;
                frame("storage", &event)
            }
            Wake::Storage(Err(RecvError::Lagged(_))) => {
                feed.snapshot_due = true;
                Bytes::from_static(b": storage events missed\n\n")
            }
            Wake::Storage(Err(RecvError::Closed)) => {
                // Storage closed (the fleet is stopping): snapshots go on at their period.
                feed.storage = None;
                Bytes::from_static(b": storage closed\n\n")
            }
        };
        Some((Ok(bytes), feed))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Events of `GET /api/bot/event-stream` sent before the live ones: the newest of the list.
const EVENT_BACKLOG: usize = 10;
/// A comment line is sent when nothing happened for this long, so proxies and clients see the
/// connection alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/bot/event-stream`: the bot events (`bot:events`) as server-sent `event` frames,
/// whose data is the event's JSON as stored: first the newest [`EVENT_BACKLOG`] (oldest
/// first), then each event the moment it is published, from any process.
pub(crate) async fn bot_events(state: web::Data<AppState>) -> HttpResponse {
    let scheduler = state.fleet.scheduler();
    // Subscribe before reading the backlog, so nothing falls between the two; an event in
    // both is sent once.
    let live = scheduler.subscribe_events().await;
    let backlog = scheduler.events(EVENT_BACKLOG).await.unwrap_or_default();
    let seen: std::collections::HashSet<String> = backlog.iter().map(|e| e.id.clone()).collect();
    let first: Vec<Bytes> = backlog.iter().rev().map(|e| frame("event", e)).collect();
    let mut keep_alive = interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let shutdown = state.shutdown.clone();
    let live_frames = stream::unfold(
        (live, shutdown, keep_alive, seen),
        |(mut live, mut shutdown, mut keep_alive, mut seen)| async move {
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    _ = shutdown.changed() => return None,
                    _ = keep_alive.tick() => {
                        let bytes = Bytes::from_static(b": keep-alive\n\n");
                        return Some((bytes, (live, shutdown, keep_alive, seen)));
                    }
                    message = live.recv() => {
                        let message = message?;
                        let id = serde_json::from_str::<serde_json::Value>(&message)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned));
                        if let Some(id) = id {
                            // Seen in the backlog: skip it; later ids cannot repeat it.
                            if seen.remove(&id) {
                                continue;
                            }
                        }
                        // Raw line breaks can only be whitespace between JSON tokens (inside
                        // strings they are escaped); one would end the SSE frame.
                        let data = message.replace(['\n', '\r'], " ");
                        let bytes = Bytes::from(format!("event: event\ndata: {data}\n\n"));
                        return Some((bytes, (live, shutdown, keep_alive, seen)));
                    }
                }
            }
        },
    );
    let body = stream::iter(first)
        .chain(live_frames)
        .map(Ok::<_, actix_web::Error>);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
