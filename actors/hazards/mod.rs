//! Hazards (seed 002): the hazard ticker, provably fair seeds and per-player fairness records.
//!
//! Owns: `hazards-DIFFICULTY` (the seed's JSON: `difficulty`, `hazards`, `lastRefresh`,
//! `nextRefresh`, times ISO-8601 UTC with milliseconds, TTL 1.5 intervals); the tick record
//! `INTERNAL:hazards-tick:{hazards-D}` (last tick number and the leader's fencing token, in the
//! slot of `hazards-D`, TTL `hazards.history_ttl_secs`); the seed history
//! `INTERNAL:hazards:commitments`, `INTERNAL:hazards:secrets`, `INTERNAL:hazards:revealed`
//! (hashes, one field per seed epoch, TTL `hazards.history_ttl_secs` renewed at each epoch);
//! the players' records `fairness:USER:AGENT` and their hidden seeds
//! `INTERNAL:fairness-secret:{fairness:USER:AGENT}` (TTL `hazards.fairness_ttl_secs`).
//!
//! # The ticker
//!
//! The [`HazardTicker`] actor owns one task on the host runtime, when `hazards.enabled`: it
//! campaigns for the leader lock (`hazards.lock_name`, a fenced [`Locks`] lock of
//! `hazards.lock_ttl_ms` extended by its watchdog) and, while it holds it, writes tick `N` of
//! every difficulty at `N x hazards.interval_ms` after the Unix epoch, so every instance
//! numbers ticks alike. The leader computes the next due tick from the clock before each sleep
//! (never "sleep an interval after the work"), so the time a tick takes does not shift the
//! next; a tick late by a whole interval is skipped, never written twice.
//!
//! Each difficulty's write is one script (`hazards-tick`, run on Redis only) over `hazards-D`
//! and its tick record: it refuses a tick number not above the last one written and a fencing
//! token below the last writer's, then sets `hazards-D`, records the tick and the token, and
//! publishes a [`TickNotice`] on `hazards.channel`. A new leader after a takeover therefore
//! cannot repeat the dead leader's tick, and a stale leader that wakes up after losing its
//! lock cannot overwrite the new one's. A leader whose write is refused for its token (a newer
//! leader wrote, though its own lock still looks held: a Redis that lost the lock, say) steps
//! down at once with a WARN, releases the lock and campaigns again, rather than keep a lock it
//! cannot use; since tokens never go back, even across a Redis that lost its data (see
//! `locks`), the next term's token is above every earlier writer's. When the leader dies its lock expires after at most
//! `hazards.lock_ttl_ms` and a waiting instance takes over (retrying every
//! `locks.retry_min_ms` .. `retry_max_ms`). Its status is read from the handle
//! ([`Hazards::status`]). The task is supervised: its panic or end fails the actor, which is
//! restarted: the task is aborted (the lock guard releases the lock) and a new one campaigns.
//!
//! # Seeds
//!
//! Ticker rounds use the difficulty's name as client seed and the tick number as nonce
//! ([`fairness`] has the derivation). Seeds rotate by epoch (`tick /
//! hazards.rotate_every_ticks`): before it writes a tick of epoch `e` the leader makes sure the
//! seeds of `e` and `e + 1` exist and their commitments are published, so a seed's hash is
//! public at least one epoch before its first tick, and reveals `e - 1` (copied to the
//! revealed hash, the secret deleted).
//!
//! The [`Hazards`] handle (`Fleet::hazards()`) reads the current hazards
//! ([`Hazards::current`]), the seed history ([`Hazards::commitment`], [`Hazards::revealed`]),
//! verifies rounds ([`Hazards::verify`]), and keeps the players' fairness records:
//! [`Hazards::start_fairness`] draws a server seed and records its hash with the player's seed
//! and nonce 0; [`Hazards::round`] derives the hazards of the round in play from them;
//! [`Hazards::settle`] reveals the server seed and stores a new one (its hash recorded) with
//! the next nonce. The server seed is written before the record that names its hash, and is
//! never returned before it is settled. With the history archive on, each written round, each
//! revealed ticker seed and each settled player round are archived
//! ([`Hazards::archive_to`]), where they outlive the records' TTLs.
//!
//! Failure: while Redis is unreachable the leader cannot extend its lock and stops ticking
//! (`hazards-D` expires after 1.5 intervals); with `locks.on_outage = "local"` each instance
//! ticks on its own fallback instead, with plain writes (the tick script runs on Redis only).
//! Player records go through the storage and its fallback.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Hazards`], [`HazardTicker`], the record types |
//! | `ticker.rs` | the leader task: campaign, ticks, epochs, the tick script |
//! | [`fairness`] | the derivation, seeds and their hashes |
//! | [`sessions`] | game sessions: [`sessions::GameSessions`] |

pub mod fairness;
pub mod sessions;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::actors::history::{Record, SettlementRecord};
use crate::actors::locks::Locks;
use crate::clock::now_ms;
use crate::settings::{DifficultySettings, HazardSettings};
use crate::storage::{Storage, StorageError};
use crate::supervisor::ChildContext;

use ticker::TickerShared;
pub use ticker::TickerStatus;

/// Why a hazard call failed. Nothing is stored when the input is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HazardError {
    /// The difficulty is not in `hazards.difficulties`.
    #[error("unknown difficulty {0:?}")]
    UnknownDifficulty(String),
    /// A difficulty with as many hazards as columns (or none).
    #[error("difficulty {difficulty}: {hazards} hazards do not fit {columns} columns (need 1 <= hazards < columns)")]
    TooManyHazards {
        /// The difficulty.
        difficulty: String,
        /// Hazards asked for.
        hazards: u32,
        /// Columns of the board.
        columns: u32,
    },
    /// A seed is empty.
    #[error("the {0} is empty")]
    EmptySeed(&'static str),
    /// The nonce is negative.
    #[error("nonce must be >= 0, got {0}")]
    NegativeNonce(i64),
    /// A user or agent id is empty or contains a character reserved by the key layout.
    #[error("invalid {what}: {value:?}")]
    InvalidId {
        /// `user id` or `agent id`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// No fairness record for this player (never started, or expired).
    #[error("no fairness record for user {user} agent {agent}")]
    NoFairnessRecord {
        /// User id.
        user: String,
        /// Agent id.
        agent: String,
    },
    /// A stored value is not what botfleet wrote.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A read-modify-write lost its compare-and-set every time: others keep changing the
    /// record.
    #[error("{key}: changed by others on each of {attempts} attempts; not updated")]
    Contended {
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The storage refused the call.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Reads of a fairness record and its seed before they are taken to disagree for good (a
/// rotation in progress makes them disagree for a moment), and the pause between two.
const ROTATION_READS: u32 = 20;
const ROTATION_READ_PAUSE: Duration = Duration::from_millis(5);

/// `hazards-DIFFICULTY`, in the seed's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HazardState {
    /// The difficulty's name.
    pub difficulty: String,
    /// Column indices, ascending.
    pub hazards: Vec<u32>,
    /// When this tick was due, ISO-8601 UTC with milliseconds.
    pub last_refresh: String,
    /// When the next tick is due.
    pub next_refresh: String,
}

/// The notice published on `hazards.channel` for every tick written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TickNotice {
    /// The difficulty.
    pub difficulty: String,
    /// Tick number `N` (due at `N x interval` ms after the Unix epoch); the round's nonce.
    pub tick: u64,
    /// Seed epoch (`tick / hazards.rotate_every_ticks`).
    pub epoch: u64,
    /// The hazards written.
    pub hazards: Vec<u32>,
    /// SHA-256 of the epoch's server seed (published before the epoch began).
    pub hashed_server_seed: String,
    /// When the tick was due, Unix ms.
    pub due_ms: u64,
    /// When it was written, Unix ms.
    pub written_ms: u64,
    /// The instance that wrote it.
    pub instance: String,
}

/// A seed commitment: the hash of an epoch's server seed, published before the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedCommitment {
    /// The epoch.
    pub epoch: u64,
    /// SHA-256 of the server seed, hex.
    pub hashed_server_seed: String,
    /// First tick served by the seed.
    pub first_tick: u64,
    /// Last tick served by the seed.
    pub last_tick: u64,
    /// When the commitment was written, Unix ms.
    pub published_ms: u64,
}

/// A revealed ticker seed: an epoch that is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevealedSeed {
    /// The epoch.
    pub epoch: u64,
    /// The server seed.
    pub server_seed: String,
    /// Its SHA-256 (equal to the commitment's).
    pub hashed_server_seed: String,
    /// When it was revealed, Unix ms.
    pub revealed_ms: u64,
}

/// `fairness:USER:AGENT` in the seed's fields, without `serverSeed`: the active server seed
/// is kept apart and is never readable before it is rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FairnessRecord {
    /// User id.
    pub user_id: String,
    /// Agent id.
    pub agent_id: String,
    /// The player's (client) seed.
    pub user_seed: String,
    /// SHA-256 of the active server seed.
    pub hashed_server_seed: String,
    /// The nonce of the round in play.
    pub nonce: u64,
}

/// The hazards of a player's round in play.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerRound {
    /// The difficulty.
    pub difficulty: String,
    /// Column indices, ascending.
    pub hazards: Vec<u32>,
    /// The nonce.
    pub nonce: u64,
    /// The player's seed.
    pub user_seed: String,
    /// SHA-256 of the server seed that derived them.
    pub hashed_server_seed: String,
}

/// What a settlement reveals: everything needed to verify the rounds played with the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettledSeed {
    /// The server seed, now revealed.
    pub server_seed: String,
    /// Its hash, as published before the rounds.
    pub hashed_server_seed: String,
    /// The player's seed.
    pub user_seed: String,
    /// The nonce of the settled round.
    pub nonce: u64,
    /// The record now in force (new seed hash, next nonce).
    pub next: FairnessRecord,
}

/// Key names of this module.
#[derive(Debug, Clone)]
pub(crate) struct HazardKeys {
    internal: String,
}

impl HazardKeys {
    pub(crate) fn hazards(&self, difficulty: &str) -> String {
        format!("hazards-{difficulty}")
    }
    pub(crate) fn tick(&self, difficulty: &str) -> String {
        format!("{}:hazards-tick:{{hazards-{difficulty}}}", self.internal)
    }
    pub(crate) fn commitments(&self) -> String {
        format!("{}:hazards:commitments", self.internal)
    }
    pub(crate) fn secrets(&self) -> String {
        format!("{}:hazards:secrets", self.internal)
    }
    pub(crate) fn revealed(&self) -> String {
        format!("{}:hazards:revealed", self.internal)
    }
    fn fairness(&self, user: &str, agent: &str) -> String {
        format!("fairness:{user}:{agent}")
    }
    fn fairness_secret(&self, user: &str, agent: &str) -> String {
        format!(
            "{}:fairness-secret:{{fairness:{user}:{agent}}}",
            self.internal
        )
    }
}

struct Inner {
    storage: Storage,
    settings: HazardSettings,
    keys: HazardKeys,
    ticker: Arc<TickerShared>,
}

/// The hazards API: a cheap, cloneable handle (`Fleet::hazards()`).
#[derive(Clone)]
pub struct Hazards {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hazards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hazards")
            .field("interval_ms", &self.inner.settings.interval_ms)
            .finish()
    }
}

impl Hazards {
    /// A handle over `storage`; `instance` names this process in tick notices. The ticker
    /// runs in a [`HazardTicker`] made with [`Hazards::ticker`].
    pub fn new(storage: Storage, settings: HazardSettings, locks: Locks, instance: &str) -> Self {
        let keys = HazardKeys {
            internal: storage.keys().internal_prefix().to_string(),
        };
        let ticker = Arc::new(TickerShared::new(
            storage.clone(),
            settings.clone(),
            keys.clone(),
            locks,
            instance,
        ));
        Self {
            inner: Arc::new(Inner {
                storage,
                settings,
                keys,
                ticker,
            }),
        }
    }

    /// The ticker actor for this handle, for the incarnation `child` of its place in the
    /// tree; its task runs on `runtime` (the host's), supervised through `child`.
    pub fn ticker(&self, runtime: tokio::runtime::Handle, child: ChildContext) -> HazardTicker {
        HazardTicker {
            shared: self.inner.ticker.clone(),
            runtime,
            child,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &HazardSettings {
        &self.inner.settings
    }

    /// Archives every round this process's ticker writes, each seed once revealed, and every
    /// player's round [`Hazards::settle`] settles into `sink` from now on. Set once; later
    /// calls are ignored.
    pub fn archive_to(&self, sink: crate::actors::history::HistorySink) {
        if sink.is_on() {
            let _ = self.inner.ticker.history.set(sink);
        }
    }

    /// A configured difficulty.
    pub fn difficulty(&self, name: &str) -> Result<&DifficultySettings, HazardError> {
        find_difficulty(&self.inner.settings, name)
    }

    /// The ticker's status in this process.
    pub fn status(&self) -> TickerStatus {
        self.inner.ticker.status()
    }

    /// The seed epoch of a tick.
    pub fn epoch_of(&self, tick: u64) -> u64 {
        tick / self.inner.settings.rotate_every_ticks.max(1)
    }

    /// `hazards-DIFFICULTY` as last written (`None` once it expired).
    pub async fn current(&self, difficulty: &str) -> Result<Option<HazardState>, HazardError> {
        self.difficulty(difficulty)?;
        let key = self.inner.keys.hazards(difficulty);
        Ok(self.inner.storage.get_json(&key).await?)
    }

    /// The commitment of a seed epoch (published before the epoch's first tick).
    pub async fn commitment(&self, epoch: u64) -> Result<Option<SeedCommitment>, HazardError> {
        self.history(&self.inner.keys.commitments(), epoch).await
    }

    /// The revealed seed of an epoch that is over (`None` while it is in use).
    pub async fn revealed(&self, epoch: u64) -> Result<Option<RevealedSeed>, HazardError> {
        self.history(&self.inner.keys.revealed(), epoch).await
    }

    async fn history<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        epoch: u64,
    ) -> Result<Option<T>, HazardError> {
        let Some(text) = self.inner.storage.hget(key, &epoch.to_string()).await? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| HazardError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// The hazards of a round, from its seeds (see [`fairness`] for the procedure). A ticker
    /// round of difficulty `D` at tick `N` has client seed `D` and nonce `N`.
    pub fn verify(
        &self,
        server_seed: &str,
        client_seed: &str,
        nonce: i64,
        difficulty: &str,
    ) -> Result<Vec<u32>, HazardError> {
        let d = self.difficulty(difficulty)?;
        fairness::derive_hazards(server_seed, client_seed, nonce, d)
    }

    /// Starts (or restarts) a player's fairness record: a new server seed whose hash is
    /// recorded at once, the player's seed, nonce 0. Returns the record (never the seed).
    pub async fn start_fairness(
        &self,
        user: &str,
        agent: &str,
        user_seed: &str,
    ) -> Result<FairnessRecord, HazardError> {
        check_id("user id", user)?;
        check_id("agent id", agent)?;
        if user_seed.is_empty() {
            return Err(HazardError::EmptySeed("user seed"));
        }
        self.write_fairness(user, agent, user_seed, 0, None).await
    }

    /// A player's fairness record.
    pub async fn fairness(
        &self,
        user: &str,
        agent: &str,
    ) -> Result<Option<FairnessRecord>, HazardError> {
        check_id("user id", user)?;
        check_id("agent id", agent)?;
        let key = self.inner.keys.fairness(user, agent);
        self.inner
            .storage
            .get_json(&key)
            .await
            .map_err(HazardError::from)
    }

    /// The hazards of the player's round in play (same seeds and nonce: same hazards until
    /// [`Hazards::settle`]).
    pub async fn round(
        &self,
        user: &str,
        agent: &str,
        difficulty: &str,
    ) -> Result<PlayerRound, HazardError> {
        let d = self.difficulty(difficulty)?.clone();
        let (record, seed) = self.load_fairness(user, agent).await?;
        let nonce = i64::try_from(record.nonce).unwrap_or(i64::MAX);
        let hazards = fairness::derive_hazards(&seed, &record.user_seed, nonce, &d)?;
        Ok(PlayerRound {
            difficulty: d.name,
            hazards,
            nonce: record.nonce,
            user_seed: record.user_seed,
            hashed_server_seed: record.hashed_server_seed,
        })
    }

    /// Settles the round in play: reveals its server seed and rotates to a new one (its hash
    /// recorded before any use), with the next nonce and the player's seed (or a new one).
    ///
    /// With the history archive on ([`Hazards::archive_to`]) the settled round (user, agent,
    /// user seed, nonce, server seed and its hash) is handed to its sink once the rotation is
    /// stored: the revealed seed outlives the fairness record's TTL there. The hand-over never
    /// waits for the database (a full queue drops and counts the record).
    pub async fn settle(
        &self,
        user: &str,
        agent: &str,
        next_user_seed: Option<&str>,
    ) -> Result<SettledSeed, HazardError> {
        if next_user_seed.is_some_and(str::is_empty) {
            return Err(HazardError::EmptySeed("user seed"));
        }
        let (record, seed) = self.load_fairness(user, agent).await?;
        let user_seed = next_user_seed.unwrap_or(&record.user_seed).to_string();
        let next = self
            .write_fairness(user, agent, &user_seed, record.nonce + 1, Some(&seed))
            .await?;
        let settled = SettledSeed {
            server_seed: seed,
            hashed_server_seed: record.hashed_server_seed,
            user_seed: record.user_seed,
            nonce: record.nonce,
            next,
        };
        if let Some(sink) = self.inner.ticker.history.get() {
            sink.record(Record::Settlement(SettlementRecord {
                user_id: user.to_string(),
                agent_id: agent.to_string(),
                user_seed: settled.user_seed.clone(),
                nonce: i64::try_from(settled.nonce).unwrap_or(i64::MAX),
                server_seed: settled.server_seed.clone(),
                hashed_server_seed: settled.hashed_server_seed.clone(),
                settled_ms: now_ms() as i64,
            }));
        }
        Ok(settled)
    }

    async fn load_fairness(
        &self,
        user: &str,
        agent: &str,
    ) -> Result<(FairnessRecord, String), HazardError> {
        let missing = || HazardError::NoFairnessRecord {
            user: user.to_string(),
            agent: agent.to_string(),
        };
        let first = self.fairness(user, agent).await?.ok_or_else(missing)?;
        let secret_key = self.inner.keys.fairness_secret(user, agent);
        let mut record = first.clone();
        // A rotation writes the seed, then the record: read between the two, they disagree
        // for a moment. Read again; a record that moved on means another process settled
        // the round this call meant to settle.
        for _ in 0..ROTATION_READS {
            let seed = self
                .inner
                .storage
                .get(&secret_key)
                .await?
                .ok_or_else(missing)?;
            if fairness::hash_seed(&seed) == record.hashed_server_seed {
                return Ok((record, seed));
            }
            tokio::time::sleep(ROTATION_READ_PAUSE).await;
            record = self.fairness(user, agent).await?.ok_or_else(missing)?;
            if record.nonce != first.nonce {
                return Err(HazardError::Contended {
                    key: self.inner.keys.fairness(user, agent),
                    attempts: 1,
                });
            }
        }
        Err(HazardError::Corrupt {
            key: secret_key,
            reason: "the seed does not match the record's hash".into(),
        })
    }

    async fn write_fairness(
        &self,
        user: &str,
        agent: &str,
        user_seed: &str,
        nonce: u64,
        replacing: Option<&str>,
    ) -> Result<FairnessRecord, HazardError> {
        let seed = fairness::new_server_seed();
        let record = FairnessRecord {
            user_id: user.to_string(),
            agent_id: agent.to_string(),
            user_seed: user_seed.to_string(),
            hashed_server_seed: fairness::hash_seed(&seed),
            nonce,
        };
        let ttl = Some(Duration::from_secs(self.inner.settings.fairness_ttl_secs));
        let storage = &self.inner.storage;
        // The seed first: a record never names a hash whose seed is missing. A rotation
        // replaces the seed it settled only if it is still there (compare-and-set): of two
        // processes settling one round, one rotates and the other is refused, so no round
        // is skipped and no record names a seed another process replaced.
        let secret_key = self.inner.keys.fairness_secret(user, agent);
        match replacing {
            None => storage.set(&secret_key, seed, ttl).await?,
            Some(old) => {
                if !storage
                    .compare_and_set(&secret_key, Some(old), &seed, ttl)
                    .await?
                {
                    return Err(HazardError::Contended {
                        key: secret_key,
                        attempts: 1,
                    });
                }
            }
        }
        storage
            .set_json(&self.inner.keys.fairness(user, agent), &record, ttl)
            .await?;
        Ok(record)
    }
}

fn find_difficulty<'a>(
    settings: &'a HazardSettings,
    name: &str,
) -> Result<&'a DifficultySettings, HazardError> {
    settings
        .difficulties
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| HazardError::UnknownDifficulty(name.to_string()))
}

/// Longest user or agent id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Ids are part of key names: not empty, at most [`MAX_ID_BYTES`] bytes, no `:`, braces,
/// white space or control characters.
pub(crate) fn check_id(what: &'static str, value: &str) -> Result<(), HazardError> {
    if value.is_empty()
        || value.len() > MAX_ID_BYTES
        || value.contains([':', '{', '}'])
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(HazardError::InvalidId {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// The hazard ticker: owns the leader-election-and-tick task, a supervised task on the host
/// runtime (its panic or end fails the actor; the actor's stop aborts it, and the aborted
/// task's guard releases the leader lock).
pub struct HazardTicker {
    shared: Arc<TickerShared>,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

impl std::fmt::Debug for HazardTicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HazardTicker").finish_non_exhaustive()
    }
}

impl Actor for HazardTicker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.shared.settings.enabled && !self.shared.settings.difficulties.is_empty() {
            let shared = self.shared.clone();
            self.child
                .spawn_task(ctx, "ticker", &self.runtime, ticker::run(shared));
            tracing::info!(actor = "hazards", "hazard ticker started");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_separators_are_refused() {
        assert!(check_id("user id", "user123").is_ok());
        assert!(check_id("user id", "").is_err());
        assert!(check_id("user id", "a:b").is_err());
        assert!(check_id("user id", "a b").is_err());
        assert!(check_id("user id", "a\u{0}b").is_err());
        assert!(check_id("user id", &"u".repeat(MAX_ID_BYTES)).is_ok());
        assert!(check_id("user id", &"u".repeat(MAX_ID_BYTES + 1)).is_err());
    }
}
