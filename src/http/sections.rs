//! The built-in [`StatusSection`]s: the task queue, live and stale bots, the shared snapshot,
//! the current hazards, the cache's counters and the event feed. [`crate::http::HttpApi::builder`] installs all of
//! them; each fills its place on the dashboard and adds its samples to `GET /metrics`.
//!
//! A section reads counters kept in memory and a few bounded storage calls (never a whole
//! queue), so a snapshot stays cheap at any queue depth. A section whose part of the fleet is
//! disabled in the settings answers `{"enabled": false}`.

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::fleet_bot::list_tasks;
use super::metrics::{counter, gauge};
use super::snapshot::StatusSection;
use crate::actors::heartbeat::PeerState;
use crate::actors::scheduler::TaskStatus;
use crate::clock::now_ms;
use crate::fleet::Fleet;

/// Recent tasks the queue section lists.
const RECENT_TASKS: usize = 10;
/// Events the event section lists.
const RECENT_EVENTS: usize = 20;
/// Peers the bots section lists.
const LISTED_PEERS: usize = 50;
/// Largest source JSON the snapshot section shows; past it, only its size.
const SNAPSHOT_SHOWN_BYTES: usize = 4_096;

type Labels = Vec<(String, String)>;

/// Every built-in section, in dashboard order.
pub(crate) fn built_in() -> Vec<std::sync::Arc<dyn StatusSection>> {
    vec![
        std::sync::Arc::new(QueueSection),
        std::sync::Arc::new(BotsSection),
        std::sync::Arc::new(SnapshotSection),
        std::sync::Arc::new(HazardsSection),
        std::sync::Arc::new(CacheSection),
        std::sync::Arc::new(EventsSection),
    ]
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn uint(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `queue`: the queue by status, this process's workers, and the first tasks that run or wait.
#[derive(Debug, Clone, Copy)]
pub struct QueueSection;

impl StatusSection for QueueSection {
    fn name(&self) -> &str {
        "queue"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            let scheduler = fleet.scheduler();
            let counts = match scheduler.counts().await {
                Ok(counts) => counts,
                Err(e) => return json!({ "error": e.to_string() }),
            };
            let recent = list_tasks(
                &scheduler,
                &[TaskStatus::Processing, TaskStatus::Pending],
                RECENT_TASKS,
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                json!({
                    "id": t["id"], "type": t["type"], "status": t["status"],
                    "priority": t["priority"], "attempts": t["attempts"],
                })
            })
            .collect::<Vec<_>>();
            json!({
                "pending": counts.pending,
                "delayed": counts.delayed,
                "processing": counts.processing,
                "dead": counts.dead,
                "workers": scheduler.stats(),
                "recent": recent,
            })
        })
    }

    fn metrics(&self, value: &Value, registry: &mut Registry) {
        if value.get("pending").is_none() {
            return;
        }
        let depth: Family<Labels, Gauge> = Family::default();
        for status in ["pending", "delayed", "processing", "dead"] {
            depth
                .get_or_create(&vec![("status".into(), status.into())])
                .set(int(&value[status]));
        }
        registry.register(
            "queue_depth",
            "Tasks in the queue by status (pending, delayed, processing, dead)",
            depth,
        );
        let workers = &value["workers"];
        counter(
            registry,
            "tasks_processed",
            "Tasks this process completed",
            uint(&workers["completed"]),
        );
        counter(
            registry,
            "tasks_failed",
            "Task attempts that failed in this process",
            uint(&workers["failed_attempts"]),
        );
        counter(
            registry,
            "tasks_dead_lettered",
            "Tasks dead-lettered by this process",
            uint(&workers["dead_lettered"]),
        );
        gauge(
            registry,
            "tasks_running",
            "Task handlers running in this process",
            int(&workers["running"]),
        );
    }
}

/// `bots`: the peers the heartbeat monitor sees, live, stale and zombie.
#[derive(Debug, Clone, Copy)]
pub struct BotsSection;

impl StatusSection for BotsSection {
    fn name(&self) -> &str {
        "bots"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            if !fleet.settings().heartbeat.enabled {
                return json!({ "enabled": false });
            }
            let peers = fleet.peers().list();
            let count = |state| peers.iter().filter(|p| p.state == state).count();
            let listed: Vec<Value> = peers
                .iter()
                .take(LISTED_PEERS)
                .map(|p| {
                    json!({
                        "pid": p.record.pid, "host": p.record.host, "state": p.state,
                        "status": p.record.status, "room_url": p.record.room_url,
                        "age_ms": p.age_ms,
                    })
                })
                .collect();
            json!({
                "live": count(PeerState::Live),
                "stale": count(PeerState::Stale),
                "zombie": count(PeerState::Zombie),
                "peers": listed,
            })
        })
    }

    fn metrics(&self, value: &Value, registry: &mut Registry) {
        if value.get("live").is_none() {
            return;
        }
        let bots: Family<Labels, Gauge> = Family::default();
        for state in ["live", "stale", "zombie"] {
            bots.get_or_create(&vec![("state".into(), state.into())])
                .set(int(&value[state]));
        }
        registry.register(
            "heartbeat_peers",
            "Bots seen by their heartbeats, by state (live, stale, zombie)",
            bots,
        );
    }
}

/// `snapshot`: the shared snapshot (its source's JSON only when small) and its age, the
/// fetcher, the readers and the key watch (seed 000).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSection;

impl StatusSection for SnapshotSection {
    fn name(&self) -> &str {
        "snapshot"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            if !fleet.settings().shared_data.enabled {
                return json!({ "enabled": false });
            }
            let shared = fleet.shared_data();
            let latest = shared.latest();
            let metrics = shared.metrics();
            // The snapshot itself, its source's JSON left out past a few KiB.
            let snapshot = latest.as_ref().map(|s| {
                let game_data = serde_json::to_string(&s.game_data).map_or(0, |t| t.len());
                json!({
                    "timestamp": s.timestamp,
                    "processed_data": s.processed_data,
                    "game_data": (game_data <= SNAPSHOT_SHOWN_BYTES).then_some(&s.game_data),
                    "game_data_bytes": game_data,
                })
            });
            json!({
                "age_ms": latest.as_ref().map(|s| s.age_ms(now_ms())),
                "timestamp": latest.as_ref().map(|s| s.timestamp),
                "snapshot": snapshot,
                "fetcher": metrics.fetcher,
                "readers": metrics.readers,
                "watch": metrics.watch,
            })
        })
    }

    fn metrics(&self, value: &Value, registry: &mut Registry) {
        if value.get("fetcher").is_none() {
            return;
        }
        if let Some(age) = value["age_ms"].as_i64() {
            gauge(
                registry,
                "shared_data_age_ms",
                "Age of the newest shared snapshot this process knows, milliseconds",
                age,
            );
        }
        let fetcher = &value["fetcher"];
        gauge(
            registry,
            "fetcher_leader",
            "1 when this process's fetcher leads",
            i64::from(fetcher["leader"].as_bool().unwrap_or(false)),
        );
        counter(
            registry,
            "fetcher_fetches",
            "Successful fetches",
            uint(&fetcher["fetches"]),
        );
        counter(
            registry,
            "fetcher_failures",
            "Fetches that failed after every attempt",
            uint(&fetcher["failures"]),
        );
        let watch = &value["watch"];
        counter(
            registry,
            "shared_data_key_reads",
            "Reads of the shared key by the key watch",
            uint(&watch["reads"]),
        );
        counter(
            registry,
            "shared_data_key_snapshots",
            "Newer snapshots the key watch found in the shared key",
            uint(&watch["snapshots_found"]),
        );
        let families: [(&str, &str, &str); 4] = [
            (
                "reader_hits",
                "Reads answered from the reader's fresh copy",
                "hits",
            ),
            (
                "reader_misses",
                "Reads that found the copy missing or stale",
                "misses",
            ),
            (
                "reader_direct_fetches",
                "Direct fetches from the source started by a reader",
                "direct_fetches",
            ),
            (
                "reader_stale_reads",
                "Reads answered with stale data",
                "stale_reads",
            ),
        ];
        let readers = value["readers"].as_array().cloned().unwrap_or_default();
        for (name, help, field) in families {
            let family: Family<Labels, Counter> = Family::default();
            for reader in &readers {
                family
                    .get_or_create(&vec![(
                        "reader".into(),
                        reader["name"].as_str().unwrap_or_default().to_string(),
                    )])
                    .inc_by(uint(&reader[field]));
            }
            registry.register(name, help, family);
        }
        let age: Family<Labels, Gauge> = Family::default();
        for reader in &readers {
            if let Some(ms) = reader["data_age_ms"].as_i64() {
                age.get_or_create(&vec![(
                    "reader".into(),
                    reader["name"].as_str().unwrap_or_default().to_string(),
                )])
                .set(ms);
            }
        }
        registry.register(
            "reader_data_age_ms",
            "Age of each reader's copy, milliseconds",
            age,
        );
    }
}

/// `hazards`: the current hazards of every difficulty and the ticker (seed 002).
#[derive(Debug, Clone, Copy)]
pub struct HazardsSection;

impl StatusSection for HazardsSection {
    fn name(&self) -> &str {
        "hazards"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            let settings = &fleet.settings().hazards;
            if !settings.enabled {
                return json!({ "enabled": false });
            }
            let hazards = fleet.hazards();
            let mut current = serde_json::Map::new();
            for difficulty in &settings.difficulties {
                let state = hazards.current(&difficulty.name).await.ok().flatten();
                current.insert(
                    difficulty.name.clone(),
                    serde_json::to_value(state).unwrap_or(Value::Null),
                );
            }
            json!({ "ticker": hazards.status(), "current": current })
        })
    }

    fn metrics(&self, value: &Value, registry: &mut Registry) {
        let ticker = &value["ticker"];
        if ticker.is_null() {
            return;
        }
        counter(
            registry,
            "hazard_ticks",
            "Hazard ticks written by this process",
            uint(&ticker["ticks_written"]),
        );
        counter(
            registry,
            "hazard_ticks_refused",
            "Hazard tick writes refused (already written, or a newer leader)",
            uint(&ticker["ticks_refused"]),
        );
        gauge(
            registry,
            "hazard_leader",
            "1 when this process's hazard ticker leads",
            i64::from(ticker["leader"].as_bool().unwrap_or(false)),
        );
    }
}

/// `cache`: this process's cache counters (`Fleet::cache()`): hits from the near cache and
/// from the storage (and their sum, `hits`), misses, loader calls and their failures,
/// invalidations sent and received, evictions, near entries. Memory only, no storage call.
#[derive(Debug, Clone, Copy)]
pub struct CacheSection;

impl StatusSection for CacheSection {
    fn name(&self) -> &str {
        "cache"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            let stats = fleet.cache().stats();
            let mut value = serde_json::to_value(&stats).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert("hits".into(), json!(stats.near_hits + stats.storage_hits));
            }
            value
        })
    }

    fn metrics(&self, value: &Value, registry: &mut Registry) {
        if value.get("misses").is_none() {
            return;
        }
        let hits: Family<Labels, Counter> = Family::default();
        for (tier, field) in [("near", "near_hits"), ("storage", "storage_hits")] {
            hits.get_or_create(&vec![("tier".into(), tier.into())])
                .inc_by(uint(&value[field]));
        }
        registry.register(
            "cache_hits",
            "Cache reads answered from the near cache (tier=near) or from the storage \
             (tier=storage)",
            hits,
        );
        let counters: [(&str, &str, &str); 6] = [
            (
                "cache_misses",
                "Cache reads that found the key nowhere",
                "misses",
            ),
            ("cache_loads", "Cache loader calls", "loads"),
            (
                "cache_load_errors",
                "Cache loader calls that failed",
                "load_errors",
            ),
            (
                "cache_invalidations_sent",
                "Invalidations this process published on the cache channel",
                "invalidations_sent",
            ),
            (
                "cache_invalidations_received",
                "Invalidations of other processes received",
                "invalidations_received",
            ),
            (
                "cache_evictions",
                "Near entries dropped because the near cache was full",
                "evictions",
            ),
        ];
        for (name, help, field) in counters {
            counter(registry, name, help, uint(&value[field]));
        }
        gauge(
            registry,
            "cache_near_entries",
            "Entries in the near cache",
            int(&value["near_entries"]),
        );
    }
}

/// `events`: the newest entries of the event list (`bot:events`), newest first.
#[derive(Debug, Clone, Copy)]
pub struct EventsSection;

impl StatusSection for EventsSection {
    fn name(&self) -> &str {
        "events"
    }

    fn collect<'a>(&'a self, fleet: &'a Fleet) -> BoxFuture<'a, Value> {
        Box::pin(async move {
            match fleet.scheduler().events(RECENT_EVENTS).await {
                Ok(events) => Value::Array(
                    events
                        .into_iter()
                        .map(|e| {
                            json!({
                                "timestamp": e.timestamp, "type": e.event_type,
                                "session_id": e.session_id, "data": e.data,
                            })
                        })
                        .collect(),
                ),
                Err(e) => json!({ "error": e.to_string() }),
            }
        })
    }
}
