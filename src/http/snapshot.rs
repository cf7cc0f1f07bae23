//! The status snapshot every read endpoint, the live stream and the dashboard are built from,
//! and the health verdict derived from it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::actors::locks::LockStats;
use crate::actors::presence::PresenceStatus;
use crate::actors::storage_monitor::SeenEvent;
use crate::clock::now_ms;
use crate::fleet::Fleet;
use crate::settings::ApiSettings;
use crate::storage::{Freshness, Mode, StorageStats};
use crate::supervisor::{ChildState, HealthReport};

/// Sections the dashboard has a place for: the task queue by status, live and stale bots, the
/// shared snapshot's age, current hazards, the cache's counters, and the event feed. The built-in sections fill them;
/// a name no registered [`StatusSection`] provides is `null`.
pub const PLACEHOLDER_SECTIONS: &[&str] =
    &["queue", "bots", "snapshot", "hazards", "cache", "events"];

/// How long a query to a built-in actor may take before the snapshot leaves it out.
const ACTOR_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// A named part of the status snapshot contributed by a component the fleet does not build
/// in (the scheduler's queue, heartbeats, the hazard ticker...).
///
/// `collect` runs on every snapshot (once per request and once per stream period): keep it to
/// reading counters or a few storage calls.
pub trait StatusSection: Send + Sync + 'static {
    /// The field of the snapshot it fills (e.g. `"queue"`); one of [`PLACEHOLDER_SECTIONS`]
    /// for the dashboard to show it in its place, any other name to show it as raw JSON.
    fn name(&self) -> &str;

    /// The section's current value.
    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, serde_json::Value>;

    /// Why the fleet is unhealthy according to this section's value, if it is.
    fn unhealthy(&self, _value: &serde_json::Value) -> Option<String> {
        None
    }

    /// Adds this section's samples to the registry `GET /metrics` renders (already prefixed
    /// with `botfleet_`).
    fn metrics(&self, _value: &serde_json::Value, _registry: &mut Registry) {}
}

/// Whether the fleet is healthy, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthVerdict {
    /// `true` when every actor runs (and storage is not degraded, if that counts).
    pub healthy: bool,
    /// One sentence per problem.
    pub reasons: Vec<String>,
}

/// Everything the API knows about the fleet at one instant, as served by `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// This instance's id (`HOST-PID`).
    pub instance: String,
    /// When the snapshot was taken (unix ms).
    pub at_ms: u64,
    /// The health verdict (`GET /health`).
    pub health: HealthVerdict,
    /// Storage mode and counters.
    pub storage: StorageStats,
    /// Whether what the fleet answers comes from last-known state (an outage), and as of when.
    pub freshness: Freshness,
    /// Every supervised actor.
    pub actors: HealthReport,
    /// The lock manager's counters (`null` if it did not answer in time).
    pub locks: Option<LockStats>,
    /// The presence actor's status (`null` if it did not answer in time).
    pub presence: Option<PresenceStatus>,
    /// Recent storage events (mode changes, resyncs), oldest first.
    pub storage_events: Vec<SeenEvent>,
    /// Sections from [`StatusSection`]s, flattened into the top level; every name of
    /// [`PLACEHOLDER_SECTIONS`] is present, `null` when nothing provides it.
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

impl StatusSnapshot {
    /// Takes a snapshot of `fleet` and the given sections.
    pub async fn take(
        fleet: &Fleet,
        settings: &ApiSettings,
        sections: &[std::sync::Arc<dyn StatusSection>],
    ) -> StatusSnapshot {
        let health = fleet.health();
        let locks = tokio::time::timeout(ACTOR_QUERY_TIMEOUT, fleet.lock_stats()).await;
        let presence = tokio::time::timeout(ACTOR_QUERY_TIMEOUT, fleet.presence()).await;
        let events = tokio::time::timeout(ACTOR_QUERY_TIMEOUT, fleet.storage_events()).await;
        let mut values: BTreeMap<String, serde_json::Value> = PLACEHOLDER_SECTIONS
            .iter()
            .map(|name| (name.to_string(), serde_json::Value::Null))
            .collect();
        let mut reasons = verdict_reasons(
            &health.actors,
            &health.storage,
            settings.degraded_is_unhealthy,
        );
        for section in sections {
            let value = section.collect(fleet).await;
            if let Some(reason) = section.unhealthy(&value) {
                reasons.push(format!("{}: {reason}", section.name()));
            }
            values.insert(section.name().to_string(), value);
        }
        StatusSnapshot {
            instance: health.instance,
            at_ms: now_ms(),
            health: HealthVerdict {
                healthy: reasons.is_empty(),
                reasons,
            },
            storage: health.storage,
            freshness: fleet.storage().freshness(),
            actors: health.actors,
            locks: locks.ok().and_then(Result::ok),
            presence: presence.ok().and_then(Result::ok),
            storage_events: events.ok().and_then(Result::ok).unwrap_or_default(),
            sections: values,
        }
    }
}

/// The reasons the fleet is unhealthy: every actor not running, and a degraded storage when
/// `degraded_is_unhealthy`.
pub(crate) fn verdict_reasons(
    actors: &HealthReport,
    storage: &StorageStats,
    degraded_is_unhealthy: bool,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for actor in &actors.actors {
        if actor.state == ChildState::Running {
            continue;
        }
        let state = serde_json::to_value(actor.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut reason = format!("actor {} is {state}", actor.actor);
        if let Some(failure) = &actor.last_failure {
            reason.push_str(&format!(" (last failure: {failure})"));
        }
        if actor.restarts > 0 {
            reason.push_str(&format!(" after {} restarts", actor.restarts));
        }
        reasons.push(reason);
    }
    if degraded_is_unhealthy && storage.mode == Some(Mode::Degraded) {
        reasons.push(format!(
            "storage is degraded: redis is unreachable and the fallback serves ({} writes waiting)",
            storage.outbox_len
        ));
    }
    reasons
}
