//! The ticker task: campaign for the leader lock, then write tick `N` of every difficulty at
//! `N x interval` after the Unix epoch until the lock is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use super::fairness::{derive_hazards, hash_seed, new_server_seed};
use super::{HazardError, HazardKeys, HazardState, RevealedSeed, SeedCommitment, TickNotice};
use crate::actors::history::{HazardRoundRecord, HazardSeedRecord, HistorySink, Record};
use crate::actors::locks::{LockError, LockGuard, Locks};
use crate::clock::{iso8601_ms, now_ms};
use crate::settings::HazardSettings;
use crate::storage::{Keyspace, LocalError, Reply, Script, Storage};

/// KEYS: hazards-D, its tick record. ARGV: tick, fencing token, state JSON, ttl ms, channel,
/// notice, tick record ttl ms. Writes the state and announces it unless this tick (or a later
/// one) was already written, or a leader with a newer fencing token wrote last. Answers 1
/// (written), 0 (tick already written), or minus the newer leader's token (this leader is
/// stale: it steps down and stands again).
const TICK: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[2], 'tick') or '-1')
local fence = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if last >= tonumber(ARGV[1]) then return 0 end
if fence > tonumber(ARGV[2]) then return -fence end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[2], 'tick', ARGV[1], 'fence', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"#;

fn tick_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("hazards-tick", TICK, redis_only))
}

/// The tick script runs on Redis only (behind a Redis lock); a process-local leader writes
/// with plain storage calls instead.
fn redis_only(_: &mut Keyspace, _: u64, _: &[String], _: &[String]) -> Result<Reply, LocalError> {
    Err(LocalError::Script("hazards-tick runs on redis only".into()))
}

/// The ticker of this process, as seen by [`super::Hazards::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TickerStatus {
    /// Whether `hazards.enabled` is true here.
    pub enabled: bool,
    /// Whether this process holds the leader lock.
    pub leader: bool,
    /// Ticks written by this process (one per difficulty and tick).
    pub ticks_written: u64,
    /// Writes refused because the tick was already written (a takeover) or a newer leader
    /// exists.
    pub ticks_refused: u64,
    /// Last tick number this process wrote.
    pub last_tick: Option<u64>,
    /// Times this process became leader.
    pub terms: u64,
    /// The fencing token of the current term (`None`: not leader, or a process-local lock).
    pub fence: Option<u64>,
}

/// State shared by the ticker task and the handles.
pub(crate) struct TickerShared {
    storage: Storage,
    pub(crate) settings: HazardSettings,
    keys: HazardKeys,
    locks: Locks,
    instance: String,
    leader: AtomicBool,
    written: AtomicU64,
    refused: AtomicU64,
    last_tick: AtomicU64,
    terms: AtomicU64,
    /// The current term's fencing token (0: none).
    fence: AtomicU64,
    /// Where rounds, revealed seeds and (through `Hazards::settle`) settled player rounds are
    /// archived (set once by the fleet).
    pub(crate) history: std::sync::OnceLock<HistorySink>,
}

impl TickerShared {
    pub(crate) fn new(
        storage: Storage,
        settings: HazardSettings,
        keys: HazardKeys,
        locks: Locks,
        instance: &str,
    ) -> Self {
        Self {
            storage,
            settings,
            keys,
            locks,
            instance: instance.to_string(),
            leader: AtomicBool::new(false),
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_tick: AtomicU64::new(u64::MAX),
            terms: AtomicU64::new(0),
            fence: AtomicU64::new(0),
            history: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn status(&self) -> TickerStatus {
        let last = self.last_tick.load(Ordering::Relaxed);
        TickerStatus {
            enabled: self.settings.enabled,
            leader: self.leader.load(Ordering::Relaxed),
            ticks_written: self.written.load(Ordering::Relaxed),
            ticks_refused: self.refused.load(Ordering::Relaxed),
            last_tick: (last != u64::MAX).then_some(last),
            terms: self.terms.load(Ordering::Relaxed),
            fence: Some(self.fence.load(Ordering::Relaxed)).filter(|f| *f > 0),
        }
    }
}

/// The task: forever campaign, then tick while leader.
pub(crate) async fn run(shared: std::sync::Arc<TickerShared>) {
    let ttl = Duration::from_millis(shared.settings.lock_ttl_ms);
    loop {
        let guard = match shared
            .locks
            .acquire(&shared.settings.lock_name, ttl, ttl)
            .await
        {
            Ok(guard) => guard,
            Err(LockError::Timeout { .. }) => continue,
            Err(e) => {
                tracing::debug!(actor = "hazards", error = %e, "leader lock unavailable");
                tokio::time::sleep(ttl / 4).await;
                continue;
            }
        };
        shared
            .fence
            .store(guard.fencing_token().unwrap_or(0), Ordering::Relaxed);
        shared.leader.store(true, Ordering::Relaxed);
        shared.terms.fetch_add(1, Ordering::Relaxed);
        tracing::info!(actor = "hazards", fence = ?guard.fencing_token(), local = guard.is_local(), "hazard ticker is the leader");
        lead(&shared, &guard).await;
        shared.leader.store(false, Ordering::Relaxed);
        shared.fence.store(0, Ordering::Relaxed);
        tracing::warn!(actor = "hazards", "hazard ticker lost the leader lock");
        drop(guard);
    }
}

/// The seed of the current epoch, cached by the leader.
struct EpochSeed {
    epoch: u64,
    seed: String,
    hash: String,
}

async fn lead(shared: &TickerShared, guard: &LockGuard) {
    let interval = shared.settings.interval_ms.max(1);
    let fence = guard.fencing_token().unwrap_or(0);
    let mut seed: Option<EpochSeed> = None;
    let mut last: Option<u64> = None;
    loop {
        // Tick N is due at N x interval: computed from the clock every time, so the time a
        // tick takes never shifts the next one; one late by a whole interval is skipped.
        let now = now_ms();
        let mut tick = now / interval + 1;
        if let Some(last) = last {
            tick = tick.max(last + 1);
        }
        let due = tick * interval;
        tokio::select! {
            _ = guard.lost() => return,
            _ = tokio::time::sleep(Duration::from_millis(due.saturating_sub(now))) => {}
        }
        if guard.is_lost() {
            return;
        }
        last = Some(tick);
        match write_tick(shared, tick, fence, guard.is_local(), &mut seed).await {
            Ok(Written::All) => {}
            Ok(Written::Deposed { newer }) => {
                // A leader with a newer fencing token wrote: this lock is of no use any more
                // (a Redis that lost the lock, say). Hold it no longer: step down, stand again.
                tracing::warn!(
                    actor = "hazards",
                    tick,
                    fence,
                    newer,
                    "a leader with a newer fencing token wrote: stepping down to stand again"
                );
                return;
            }
            Err(e) => tracing::warn!(actor = "hazards", tick, error = %e, "tick not written"),
        }
    }
}

/// What [`write_tick`] did.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Every difficulty was written or already written (a takeover).
    All,
    /// The tick script refused: a leader with a newer fencing token wrote last.
    Deposed {
        /// That leader's token, as the script reports it (0 when unknown).
        newer: i64,
    },
}

async fn write_tick(
    shared: &TickerShared,
    tick: u64,
    fence: u64,
    local: bool,
    cached: &mut Option<EpochSeed>,
) -> Result<Written, HazardError> {
    crate::supervisor::fault::point("hazards");
    let settings = &shared.settings;
    let epoch = tick / settings.rotate_every_ticks.max(1);
    if cached.as_ref().is_none_or(|s| s.epoch != epoch) {
        *cached = Some(prepare_epoch(shared, epoch).await?);
    }
    let Some(seed) = cached.as_ref() else {
        return Ok(Written::All);
    };
    let interval = settings.interval_ms.max(1);
    let due = tick * interval;
    let ttl_ms = interval * 3 / 2;
    for difficulty in &settings.difficulties {
        let hazards = derive_hazards(&seed.seed, &difficulty.name, tick as i64, difficulty)?;
        let state = HazardState {
            difficulty: difficulty.name.clone(),
            hazards: hazards.clone(),
            last_refresh: iso8601_ms(due),
            next_refresh: iso8601_ms(due + interval),
        };
        let notice = TickNotice {
            difficulty: difficulty.name.clone(),
            tick,
            epoch,
            hazards: hazards.clone(),
            hashed_server_seed: seed.hash.clone(),
            due_ms: due,
            written_ms: now_ms(),
            instance: shared.instance.clone(),
        };
        let (state, notice) = (json(&state), json(&notice));
        let key = shared.keys.hazards(&difficulty.name);
        let tick_key = shared.keys.tick(&difficulty.name);
        let tick_ttl_ms = (settings.history_ttl_secs * 1_000).to_string();
        let outcome = if local {
            write_local(shared, &key, &tick_key, tick, &state, ttl_ms, &notice).await?
        } else {
            shared
                .storage
                .eval_on_redis(
                    tick_script(),
                    &[&key, &tick_key],
                    &[
                        &tick.to_string(),
                        &fence.to_string(),
                        &state,
                        &ttl_ms.to_string(),
                        &settings.channel,
                        &notice,
                        &tick_ttl_ms,
                    ],
                )
                .await?
                .as_int()
        };
        if outcome == 1 {
            if let Some(sink) = shared.history.get() {
                sink.record(Record::HazardRound(HazardRoundRecord {
                    difficulty: difficulty.name.clone(),
                    tick: tick as i64,
                    epoch: epoch as i64,
                    hazards: hazards.clone(),
                    hashed_server_seed: seed.hash.clone(),
                    due_ms: due as i64,
                    server_seed: None,
                }));
            }
            shared.written.fetch_add(1, Ordering::Relaxed);
            shared.last_tick.store(tick, Ordering::Relaxed);
        } else {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(actor = "hazards", key = %key, tick, outcome, "tick refused");
            if outcome < 0 {
                return Ok(Written::Deposed { newer: -outcome });
            }
        }
    }
    Ok(Written::All)
}

/// A process-local leader (Redis unreachable, `locks.on_outage = "local"`): it is alone, so
/// plain calls on the fallback are enough.
async fn write_local(
    shared: &TickerShared,
    key: &str,
    tick_key: &str,
    tick: u64,
    state: &str,
    ttl_ms: u64,
    notice: &str,
) -> Result<i64, HazardError> {
    let storage = &shared.storage;
    let last = storage.hget(tick_key, "tick").await?;
    if last
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| t >= tick)
    {
        return Ok(0);
    }
    storage
        .set(key, state, Some(Duration::from_millis(ttl_ms)))
        .await?;
    storage
        .hset(tick_key, &[("tick", &tick.to_string())])
        .await?;
    storage.publish(&shared.settings.channel, notice).await?;
    Ok(1)
}

/// Makes sure the seeds of `epoch` and `epoch + 1` exist and are committed (so a seed's hash
/// is always published at least one epoch before its first tick), and reveals `epoch - 1`.
async fn prepare_epoch(shared: &TickerShared, epoch: u64) -> Result<EpochSeed, HazardError> {
    let storage = &shared.storage;
    let keys = &shared.keys;
    let every = shared.settings.rotate_every_ticks.max(1);
    let history_ttl = Duration::from_secs(shared.settings.history_ttl_secs);
    let mut current = None;
    for e in [epoch, epoch + 1] {
        let field = e.to_string();
        let secret = storage.hget(&keys.secrets(), &field).await?;
        let committed: Option<SeedCommitment> = storage
            .hget(&keys.commitments(), &field)
            .await?
            .and_then(|text| serde_json::from_str(&text).ok());
        let seed = match (secret, committed) {
            (Some(seed), Some(c)) if hash_seed(&seed) == c.hashed_server_seed => seed,
            (secret, _) => {
                // A seed without its commitment (or none at all): commit it now, before use.
                let seed = secret.unwrap_or_else(new_server_seed);
                storage.hset(&keys.secrets(), &[(&field, &seed)]).await?;
                let commitment = SeedCommitment {
                    epoch: e,
                    hashed_server_seed: hash_seed(&seed),
                    first_tick: e * every,
                    last_tick: e * every + every - 1,
                    published_ms: now_ms(),
                };
                storage
                    .hset(&keys.commitments(), &[(&field, &json(&commitment))])
                    .await?;
                seed
            }
        };
        if e == epoch {
            current = Some(seed);
        }
    }
    if epoch > 0 {
        let field = (epoch - 1).to_string();
        let mut revealed: Option<RevealedSeed> = storage
            .hget(&keys.revealed(), &field)
            .await?
            .and_then(|text| serde_json::from_str(&text).ok());
        if revealed.is_none() {
            if let Some(seed) = storage.hget(&keys.secrets(), &field).await? {
                let seed = RevealedSeed {
                    epoch: epoch - 1,
                    hashed_server_seed: hash_seed(&seed),
                    server_seed: seed,
                    revealed_ms: now_ms(),
                };
                storage
                    .hset(&keys.revealed(), &[(&field, &json(&seed))])
                    .await?;
                storage.hdel(&keys.secrets(), &[&field]).await?;
                revealed = Some(seed);
            }
        }
        // Archived whenever a leader prepares the epoch: a seed revealed by an earlier leader
        // is archived too (once, by its key).
        if let (Some(seed), Some(sink)) = (revealed, shared.history.get()) {
            sink.record(Record::HazardSeed(HazardSeedRecord {
                epoch: seed.epoch as i64,
                server_seed: seed.server_seed,
                hashed_server_seed: seed.hashed_server_seed,
                revealed_ms: seed.revealed_ms as i64,
            }));
        }
    }
    for key in [keys.secrets(), keys.commitments(), keys.revealed()] {
        storage.expire(&key, history_ttl).await?;
    }
    let seed = current.unwrap_or_default();
    Ok(EpochSeed {
        epoch,
        hash: hash_seed(&seed),
        seed,
    })
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and integers always serialize.
    serde_json::to_string(value).expect("plain structs serialize to JSON")
}
