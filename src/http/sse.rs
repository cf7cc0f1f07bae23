//! `GET /api/events/stream`: server-sent events for the dashboard. A `status` event carries a
//! full [`StatusSnapshot`] at once and then every `api.stream_interval_ms`; a `storage` event
//! carries each storage event (mode change, resync) the moment it happens, followed by a fresh
//! snapshot. The stream ends when the server stops.

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures::stream;
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
