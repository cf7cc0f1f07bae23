//! Game sessions (seed 002): `gameSession:USER-AGENT` holds a [`GameSession`] as JSON with a
//! TTL of `game_sessions.ttl_secs`; the set `user-sessions:AGENT` lists the users of an agent
//! holding one. The [`GameSessions`] handle (`Fleet::game_sessions()`) creates, reads, updates
//! and deletes them through the storage (so they keep working on the fallback).
//!
//! The set has no TTL of its own in the seed; [`GameSessions::list`] drops members whose
//! session expired.
//!
//! Updates are read-modify-write with a compare-and-set ([`GameSessions::update`],
//! [`GameSessions::try_update`] for a change that may refuse): a writer that loses to another
//! reads again and reapplies its change after a short random pause, so concurrent writers in
//! any number of processes lose no update. A session is read and written whole, as
//! [`GameSession`]: fields of the stored JSON that it does not have are dropped by an update.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_id, HazardError};
use crate::settings::GameSessionSettings;
use crate::storage::Storage;

/// A game session, in the seed's JSON fields (camelCase). Fields the seed lists that a host
/// does not use stay at their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GameSession {
    /// User id.
    pub user_id: String,
    /// Agent id.
    pub agent_id: String,
    /// Currency code (`INR`).
    pub currency: String,
    /// Difficulty name (`EASY`).
    pub difficulty: String,
    /// The seed's `serverSeed` field, as the host sets it.
    pub server_seed: String,
    /// The player's seed.
    pub user_seed: String,
    /// SHA-256 of the server seed.
    pub hashed_server_seed: String,
    /// Nonce of the round.
    pub nonce: u64,
    /// Multipliers per step, as strings (`"1.01"`).
    pub coefficients: Vec<String>,
    /// Steps taken.
    pub current_step: u32,
    /// Current win.
    pub win_amount: f64,
    /// Stake.
    pub bet_amount: f64,
    /// Whether the round is in play.
    pub is_active: bool,
    /// Whether it was won.
    pub is_win: bool,
    /// Creation time, ISO-8601.
    pub created_at: String,
    /// The platform's bet transaction id.
    pub platform_bet_tx_id: String,
    /// Round id.
    pub round_id: String,
    /// Hazard columns of the round.
    pub collision_columns: Vec<u32>,
}

/// Read-modify-write rounds [`GameSessions::update`] tries before giving up on a session
/// others keep changing.
pub const MAX_UPDATE_ATTEMPTS: u32 = 100;

/// Longest pause between two rounds of a contended update.
const MAX_BACKOFF: Duration = Duration::from_millis(4);

/// The pause before round `attempt` (from 1) of a contended update: random, up to
/// `attempt x 250 µs`, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    let ceiling = (Duration::from_micros(250) * attempt).min(MAX_BACKOFF);
    ceiling.mul_f64(rand::random::<f64>())
}

/// The game session API: a cheap, cloneable handle.
#[derive(Debug, Clone)]
pub struct GameSessions {
    storage: Storage,
    settings: GameSessionSettings,
}

impl GameSessions {
    /// A handle over `storage`.
    pub fn new(storage: Storage, settings: GameSessionSettings) -> Self {
        Self { storage, settings }
    }

    /// `gameSession:USER-AGENT`.
    pub fn key(user: &str, agent: &str) -> String {
        format!("gameSession:{user}-{agent}")
    }

    /// `user-sessions:AGENT`.
    pub fn set_key(agent: &str) -> String {
        format!("user-sessions:{agent}")
    }

    fn ttl(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.settings.ttl_secs))
    }

    fn check(session: &GameSession) -> Result<(), HazardError> {
        check_id("user id", &session.user_id)?;
        check_id("agent id", &session.agent_id)
    }

    /// Creates (or replaces) the session of `session.user_id` and `session.agent_id`, with a
    /// fresh TTL, and adds the user to `user-sessions:AGENT`.
    pub async fn create(&self, session: &GameSession) -> Result<(), HazardError> {
        Self::check(session)?;
        let key = Self::key(&session.user_id, &session.agent_id);
        self.storage.set_json(&key, session, self.ttl()).await?;
        self.storage
            .sadd(&Self::set_key(&session.agent_id), &[&session.user_id])
            .await?;
        Ok(())
    }

    /// The session, if it exists.
    pub async fn get(&self, user: &str, agent: &str) -> Result<Option<GameSession>, HazardError> {
        check_id("user id", user)?;
        check_id("agent id", agent)?;
        Ok(self.storage.get_json(&Self::key(user, agent)).await?)
    }

    /// Applies `change` to the stored session and writes it back with a fresh TTL, with a
    /// compare-and-set: when another process (or a seed bot) changed the session between the
    /// read and the write, the change is applied again to the newer session, so no update is
    /// lost. `Ok(None)` when there is no session (nothing written).
    pub async fn update(
        &self,
        user: &str,
        agent: &str,
        change: impl Fn(&mut GameSession),
    ) -> Result<Option<GameSession>, HazardError> {
        self.try_update(user, agent, |session| {
            change(session);
            Ok::<(), HazardError>(())
        })
        .await
    }

    /// [`GameSessions::update`] with a change that may refuse the session it is given: its
    /// error is returned and nothing is written (a change that depends on the stored values,
    /// such as an increment that would overflow, refuses here). Retried like `update` when
    /// another writer wins the compare-and-set, after a short random pause that grows with
    /// the attempts (so that writers that keep colliding spread out);
    /// [`HazardError::Contended`] after [`MAX_UPDATE_ATTEMPTS`] lost rounds.
    pub async fn try_update<E: From<HazardError>>(
        &self,
        user: &str,
        agent: &str,
        change: impl Fn(&mut GameSession) -> Result<(), E>,
    ) -> Result<Option<GameSession>, E> {
        check_id("user id", user)?;
        check_id("agent id", agent)?;
        let key = Self::key(user, agent);
        for attempt in 0..MAX_UPDATE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let Some(text) = self.storage.get(&key).await.map_err(HazardError::from)? else {
                return Ok(None);
            };
            let mut session: GameSession =
                serde_json::from_str(&text).map_err(|e| HazardError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            change(&mut session)?;
            session.user_id = user.to_string();
            session.agent_id = agent.to_string();
            let new = serde_json::to_string(&session).map_err(|e| HazardError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if self
                .storage
                .compare_and_set(&key, Some(&text), &new, self.ttl())
                .await
                .map_err(HazardError::from)?
            {
                return Ok(Some(session));
            }
        }
        Err(HazardError::Contended {
            key,
            attempts: MAX_UPDATE_ATTEMPTS,
        }
        .into())
    }

    /// Deletes the session (on game end); true when it existed.
    pub async fn delete(&self, user: &str, agent: &str) -> Result<bool, HazardError> {
        check_id("user id", user)?;
        check_id("agent id", agent)?;
        let removed = self.storage.del(&[&Self::key(user, agent)]).await?;
        self.storage.srem(&Self::set_key(agent), &[user]).await?;
        Ok(removed > 0)
    }

    /// Users of `agent` holding a live session (`SCARD`-like, but members whose session
    /// expired are removed from the set first).
    pub async fn list(&self, agent: &str) -> Result<Vec<String>, HazardError> {
        check_id("agent id", agent)?;
        let set = Self::set_key(agent);
        let mut live = Vec::new();
        for user in self.storage.smembers(&set).await? {
            if self.storage.exists(&Self::key(&user, agent)).await? {
                live.push(user);
            } else {
                self.storage.srem(&set, &[&user]).await?;
            }
        }
        live.sort();
        Ok(live)
    }
}
