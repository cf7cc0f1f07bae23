//! `GET /metrics`: the status snapshot in the Prometheus text format. A registry is built per
//! request from the snapshot's figures (no global registry): what `/status` says and what
//! `/metrics` says come from the same instant.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::history::Point;
use super::snapshot::{StatusSection, StatusSnapshot};
use crate::storage::Mode;
use crate::supervisor::ChildState;

/// The content type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// Registers a gauge of `value`.
pub(crate) fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Registers a counter at `value`.
pub(crate) fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Renders `snapshot` (and the sections' own samples) as Prometheus text.
pub(crate) fn render(
    snapshot: &StatusSnapshot,
    sections: &[std::sync::Arc<dyn StatusSection>],
    latest: Option<&Point>,
) -> String {
    let mut registry = Registry::with_prefix("botfleet");
    let storage = &snapshot.storage;

    let modes: Family<Labels, Gauge> = Family::default();
    for mode in [Mode::Redis, Mode::Degraded, Mode::Resyncing, Mode::Fallback] {
        modes
            .get_or_create(&vec![("mode".into(), mode.to_string())])
            .set(i64::from(storage.mode == Some(mode)));
    }
    registry.register(
        "storage_mode",
        "Storage mode: 1 for the current one (redis, degraded, resyncing, fallback)",
        modes,
    );
    counter(
        &mut registry,
        "storage_mode_changes",
        "Storage mode changes since start",
        storage.mode_changes,
    );
    gauge(
        &mut registry,
        "storage_outbox_depth",
        "Writes waiting in the outbox for Redis",
        count(storage.outbox_len),
    );
    gauge(
        &mut registry,
        "storage_fallback_bytes",
        "Bytes held by the fallback keyspace",
        i64::try_from(storage.fallback_bytes).unwrap_or(i64::MAX),
    );
    counter(
        &mut registry,
        "storage_refused_writes",
        "Writes refused because a bound was reached",
        storage.refused_writes,
    );
    counter(
        &mut registry,
        "storage_replayed",
        "Outbox entries replayed to Redis since start",
        storage.replayed,
    );
    counter(
        &mut registry,
        "storage_fallback_calls",
        "Calls served by the fallback while Redis was configured",
        storage.fallback_calls,
    );
    counter(
        &mut registry,
        "storage_lagged_messages",
        "Pub/sub messages a slow subscriber missed",
        storage.lagged_messages,
    );
    counter(
        &mut registry,
        "storage_unreplicated_writes",
        "Writes fewer replicas than storage.redis.wait_replicas acknowledged in time",
        storage.unreplicated_writes,
    );
    counter(
        &mut registry,
        "storage_unsynced_writes",
        "Writes the master had not written to its append-only file within \
         storage.redis.wait_timeout_ms (storage.redis.wait_aof)",
        storage.unsynced_writes,
    );
    gauge(
        &mut registry,
        "storage_masters_missing_replicas",
        "Masters whose last WAIT came back short of storage.redis.wait_replicas; their writes \
         skip WAIT until a probe finds the replicas back",
        i64::try_from(storage.masters_missing_replicas).unwrap_or(i64::MAX),
    );

    let restarts: Family<Labels, Counter> = Family::default();
    let up: Family<Labels, Gauge> = Family::default();
    for actor in &snapshot.actors.actors {
        let labels = vec![("actor".to_owned(), actor.actor.clone())];
        restarts
            .get_or_create(&labels)
            .inc_by(u64::from(actor.restarts));
        up.get_or_create(&labels)
            .set(i64::from(actor.state == ChildState::Running));
    }
    registry.register("actor_restarts", "Restarts of each actor", restarts);
    registry.register("actor_up", "1 when the actor is running", up);
    gauge(
        &mut registry,
        "healthy",
        "1 when GET /health answers 200",
        i64::from(snapshot.health.healthy),
    );

    if let Some(locks) = &snapshot.locks {
        gauge(
            &mut registry,
            "lock_waiters",
            "Tasks of this process waiting for a lock",
            count(locks.waiters),
        );
        gauge(
            &mut registry,
            "locks_held",
            "Locks this process holds now",
            count(locks.held),
        );
        gauge(
            &mut registry,
            "lock_leases_held",
            "Leases this process handed out (POST /api/locks/acquire) and not yet released or \
             expired",
            count(locks.leases),
        );
        gauge(
            &mut registry,
            "lock_names_waited_for",
            "Lock names waited for",
            count(locks.names_waited_for),
        );
        gauge(
            &mut registry,
            "lock_local_held",
            "Process-local locks held (granted during an outage)",
            count(locks.local_locks),
        );
        counter(
            &mut registry,
            "lock_release_notices",
            "Release notices heard since start",
            locks.notices_heard,
        );
        counter(
            &mut registry,
            "lock_extension_retries",
            "Lock extensions that failed and were retried since start",
            locks.extension_retries,
        );
        counter(
            &mut registry,
            "lock_turns_yielded",
            "Releases after a run of hand-overs that held this process's waiters back for another waiter, since start",
            locks.turns_yielded,
        );
    }
    if let Some(presence) = &snapshot.presence {
        counter(
            &mut registry,
            "presence_beats",
            "Presence beats written since start",
            presence.beats,
        );
    }
    for section in sections {
        if let Some(value) = snapshot.sections.get(section.name()) {
            section.metrics(value, &mut registry);
        }
    }
    if let Some(point) = latest {
        // The dashboard's rates, from its two latest samples (one second apart); the other
        // series it draws are the samples above (queue_depth, storage_mode,
        // storage_outbox_depth, lock_waiters, actor_restarts).
        let rates: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for (outcome, value) in [
            ("processed", point.processed_per_sec),
            ("failed", point.failed_per_sec),
        ] {
            rates
                .get_or_create(&vec![("outcome".into(), outcome.into())])
                .set(value);
        }
        registry.register(
            "tasks_per_second",
            "Tasks this process completed (processed) and attempts that failed (failed) per \
             second, over the last sample interval of the dashboard's history",
            rates,
        );
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}
