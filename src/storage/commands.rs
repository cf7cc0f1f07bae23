//! The typed operations of [`Storage`]: thin wrappers that build an [`Op`], execute it and
//! shape the [`Reply`] (the same on Redis and on the fallback).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use super::op::{self, Expiry, Op, Reply};
use super::redis::Failure;
use super::{Mode, Script, Served, Storage, StorageError, Subscription, Ttl, BUS_CAPACITY};

impl Storage {
    /// `GET`.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .execute(Op::Get { key: key.into() })
            .await?
            .into_opt_string())
    }

    /// `TIME`: the server's clock in Unix milliseconds (the local clock on the fallback), so
    /// that processes on several hosts compare ages against one clock.
    pub async fn server_time_ms(&self) -> Result<u64, StorageError> {
        let parts = self.execute(Op::Time).await?.into_strings();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
        match (num(0), num(1)) {
            (Some(secs), Some(micros)) => Ok(secs * 1_000 + micros / 1_000),
            _ => Err(StorageError::Command(format!("TIME answered {parts:?}"))),
        }
    }

    /// `SET` of many keys, each to its value, all with the same time to live, in one script
    /// call per cluster slot (one call in all on a standalone server or the fallback): for a
    /// host that writes many small keys at once (simulated bots' heartbeats, bulk imports),
    /// where a pipeline of `SET`s would pay the client's per-command cost for each. Atomic per
    /// call. An empty list does nothing.
    pub async fn set_many(
        &self,
        pairs: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.map_or(0, |t| (t.as_millis() as u64).max(1)).to_string();
        let groups = if self.is_clustered() {
            super::group_by_slot(pairs, |(key, _)| key)
        } else {
            vec![pairs]
        };
        let calls = groups.iter().map(|group| {
            let keys: Vec<&str> = group.iter().map(|(k, _)| k.as_str()).collect();
            let mut args: Vec<&str> = Vec::with_capacity(group.len() + 1);
            args.push(&ttl_ms);
            args.extend(group.iter().map(|(_, v)| v.as_str()));
            async move { self.eval(set_many_script(), &keys, &args).await }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Executes many ops in one round trip: pipelined on Redis, one by one on the fallback.
    /// Replies come in the order of `ops`. An outage met by the pipeline switches the mode
    /// as for any call, and the ops are then served by the fallback (writes join the outbox;
    /// as for a single call, a write Redis may have applied before the outage is replayed).
    /// Scripts are run one by one.
    pub async fn execute_batch(&self, ops: Vec<Op>) -> Vec<Result<Reply, StorageError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let pipelinable = !ops
            .iter()
            .any(|op| matches!(op, Op::Eval { .. } | Op::Publish { .. }));
        if let (Some(redis), true) = (&self.inner.redis, pipelinable) {
            if self.mode() == Mode::Redis {
                match redis.exec_pipeline(&ops).await {
                    Ok(replies) => {
                        return replies
                            .into_iter()
                            .map(|r| {
                                r.map_err(|f| match f {
                                    Failure::Command(m) => StorageError::Command(m),
                                    Failure::Outage(m) => StorageError::Unavailable(m),
                                    Failure::NoScript => StorageError::Command("NOSCRIPT".into()),
                                })
                            })
                            .collect()
                    }
                    Err(Failure::Outage(reason)) => self.degrade(reason),
                    Err(other) => {
                        let message = match other {
                            Failure::Command(m) | Failure::Outage(m) => m,
                            Failure::NoScript => "NOSCRIPT".into(),
                        };
                        return ops
                            .iter()
                            .map(|_| Err(StorageError::Command(message.clone())))
                            .collect();
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(self.execute(op).await);
        }
        out
    }

    /// `SET` with an optional time to live.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<String>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.execute(Op::Set {
            key: key.into(),
            value: value.into(),
            expiry: ttl.map_or(Expiry::Never, |t| Expiry::In(t.as_millis() as u64)),
            only_if_absent: false,
        })
        .await
        .map(|_| ())
    }

    /// [`Storage::set`] of a value where only the newest write matters: while Redis is
    /// unreachable, each such `SET` of `key` replaces the previous one waiting in the outbox,
    /// so the replay writes the key once, with the newest value. Use it for snapshots that a
    /// later one makes obsolete; not for a key that other writes also change meanwhile.
    pub async fn set_latest(
        &self,
        key: &str,
        value: impl Into<String>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let tag = format!("set\0{key}");
        self.run_tagged(
            Op::Set {
                key: key.into(),
                value: value.into(),
                expiry: ttl.map_or(Expiry::Never, |t| Expiry::In(t.as_millis() as u64)),
                only_if_absent: false,
            },
            None,
            Some(&tag),
        )
        .await
        .map(|_| ())
    }

    /// `SET ... NX`: true when the key was absent and is now set.
    pub async fn set_nx(
        &self,
        key: &str,
        value: impl Into<String>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let reply = self
            .execute(Op::Set {
                key: key.into(),
                value: value.into(),
                expiry: ttl.map_or(Expiry::Never, |t| Expiry::In(t.as_millis() as u64)),
                only_if_absent: true,
            })
            .await?;
        Ok(reply != Reply::Nil)
    }

    /// `DEL`: how many of the keys existed.
    pub async fn del(&self, keys: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::Del {
                keys: keys.iter().map(|k| k.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `EXISTS`.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.execute(Op::Exists { key: key.into() }).await?.as_int() == 1)
    }

    /// `PEXPIRE`: false when the key does not exist.
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        Ok(self
            .execute(Op::Expire {
                key: key.into(),
                expiry: Expiry::In(ttl.as_millis() as u64),
            })
            .await?
            .as_int()
            == 1)
    }

    /// `PTTL`.
    pub async fn ttl(&self, key: &str) -> Result<Ttl, StorageError> {
        Ok(
            match self.execute(Op::Pttl { key: key.into() }).await?.as_int() {
                -2 => Ttl::Missing,
                -1 => Ttl::Persistent,
                ms => Ttl::Expires(Duration::from_millis(ms.max(0) as u64)),
            },
        )
    }

    /// `INCRBY`.
    pub async fn incr_by(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        Ok(self
            .execute(Op::IncrBy {
                key: key.into(),
                by,
            })
            .await?
            .as_int())
    }

    /// `GET` of a JSON value.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StorageError::Command(format!("{key}: not the expected JSON: {e}"))),
        }
    }

    /// `SET` of a value as JSON.
    pub async fn set_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let text = serde_json::to_string(value)
            .map_err(|e| StorageError::Command(format!("{key}: cannot encode JSON: {e}")))?;
        self.set(key, text, ttl).await
    }

    /// Compare-and-set of a string: writes `value` (expiring after `ttl`) only when the key
    /// holds exactly `expected` (`None`: only when it is absent); true when written. One
    /// script on Redis, its twin on the fallback; replayed after an outage, it compares again
    /// against what Redis holds then, so a write made stale by another process meanwhile is
    /// refused, not applied. For read-modify-write of records several processes share.
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        // An absolute expiry, so that a replay keeps the deadline the caller meant.
        let at = ttl.map_or(0, |t| {
            crate::clock::now_ms() + (t.as_millis() as u64).max(1)
        });
        let reply = self
            .eval(
                cas_script(),
                &[key],
                &[
                    if expected.is_some() { "1" } else { "0" },
                    expected.unwrap_or(""),
                    value,
                    &at.to_string(),
                ],
            )
            .await?;
        Ok(reply.as_int() == 1)
    }

    /// `HGET`.
    pub async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .execute(Op::HGet {
                key: key.into(),
                field: field.into(),
            })
            .await?
            .into_opt_string())
    }

    /// `HSET`: how many fields are new.
    pub async fn hset(&self, key: &str, fields: &[(&str, &str)]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::HSet {
                key: key.into(),
                fields: fields
                    .iter()
                    .map(|(f, v)| (f.to_string(), v.to_string()))
                    .collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `HGETALL`.
    pub async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, StorageError> {
        let items = self
            .execute(Op::HGetAll { key: key.into() })
            .await?
            .into_strings();
        Ok(items
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect())
    }

    /// `HINCRBY`.
    pub async fn hincr_by(&self, key: &str, field: &str, by: i64) -> Result<i64, StorageError> {
        Ok(self
            .execute(Op::HIncrBy {
                key: key.into(),
                field: field.into(),
                by,
            })
            .await?
            .as_int())
    }

    /// `HDEL`: how many fields existed.
    pub async fn hdel(&self, key: &str, fields: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::HDel {
                key: key.into(),
                fields: fields.iter().map(|f| f.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `SADD`: how many members are new.
    pub async fn sadd(&self, key: &str, members: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::SAdd {
                key: key.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `SREM`: how many members were removed.
    pub async fn srem(&self, key: &str, members: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::SRem {
                key: key.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `SMEMBERS`, sorted.
    pub async fn smembers(&self, key: &str) -> Result<Vec<String>, StorageError> {
        let mut members = self
            .execute(Op::SMembers { key: key.into() })
            .await?
            .into_strings();
        members.sort();
        Ok(members)
    }

    /// `SISMEMBER`.
    pub async fn sismember(&self, key: &str, member: &str) -> Result<bool, StorageError> {
        Ok(self
            .execute(Op::SIsMember {
                key: key.into(),
                member: member.into(),
            })
            .await?
            .as_int()
            == 1)
    }

    /// `SCARD`.
    pub async fn scard(&self, key: &str) -> Result<u64, StorageError> {
        Ok(self.execute(Op::SCard { key: key.into() }).await?.as_int() as u64)
    }

    /// `ZADD`: how many members are new.
    pub async fn zadd(&self, key: &str, members: &[(f64, &str)]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::ZAdd {
                key: key.into(),
                members: members.iter().map(|(s, m)| (*s, m.to_string())).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `ZREM`: how many members were removed.
    pub async fn zrem(&self, key: &str, members: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::ZRem {
                key: key.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `ZPOPMIN key count`: the lowest-scored members with their scores.
    pub async fn zpopmin(&self, key: &str, count: u64) -> Result<Vec<(String, f64)>, StorageError> {
        Ok(self
            .execute(Op::ZPopMin {
                key: key.into(),
                count,
            })
            .await?
            .into_scored())
    }

    /// `ZRANGEBYSCORE key min max WITHSCORES [LIMIT offset count]`, bounds inclusive.
    pub async fn zrange_by_score(
        &self,
        key: &str,
        min: f64,
        max: f64,
        limit: Option<(u64, u64)>,
    ) -> Result<Vec<(String, f64)>, StorageError> {
        Ok(self
            .execute(Op::ZRangeByScore {
                key: key.into(),
                min,
                max,
                limit,
            })
            .await?
            .into_scored())
    }

    /// `ZCARD`.
    pub async fn zcard(&self, key: &str) -> Result<u64, StorageError> {
        Ok(self.execute(Op::ZCard { key: key.into() }).await?.as_int() as u64)
    }

    /// `ZSCORE`.
    pub async fn zscore(&self, key: &str, member: &str) -> Result<Option<f64>, StorageError> {
        Ok(self
            .execute(Op::ZScore {
                key: key.into(),
                member: member.into(),
            })
            .await?
            .into_opt_string()
            .and_then(|s| op::parse_score(&s)))
    }

    /// `LPUSH`: the new length.
    pub async fn lpush(&self, key: &str, values: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::LPush {
                key: key.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `RPUSH`: the new length.
    pub async fn rpush(&self, key: &str, values: &[&str]) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::RPush {
                key: key.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            })
            .await?
            .as_int() as u64)
    }

    /// `LRANGE` (negative indexes count from the end).
    pub async fn lrange(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<String>, StorageError> {
        Ok(self
            .execute(Op::LRange {
                key: key.into(),
                start,
                stop,
            })
            .await?
            .into_strings())
    }

    /// `LTRIM`.
    pub async fn ltrim(&self, key: &str, start: i64, stop: i64) -> Result<(), StorageError> {
        self.execute(Op::LTrim {
            key: key.into(),
            start,
            stop,
        })
        .await
        .map(|_| ())
    }

    /// `LLEN`.
    pub async fn llen(&self, key: &str) -> Result<u64, StorageError> {
        Ok(self.execute(Op::LLen { key: key.into() }).await?.as_int() as u64)
    }

    /// Runs a script atomically: Lua on Redis, its Rust twin on the fallback.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, StorageError> {
        self.run(eval_op(script, keys, args), Some(script.local))
            .await
    }

    /// [`Storage::eval`] of a call that hands out work, answering where the reply came from
    /// too. When the call fails on Redis mid-call (a lost connection, the command timeout),
    /// Redis may have run it as well, and another worker may act on its effect there: the
    /// fallback then runs it and, under the same lock, the writes `withhold` makes, which are
    /// applied to the fallback alone (journaled, never replayed, gone when the outage ends),
    /// so that nothing in this process acts on what Redis may hold. The outbox replays the
    /// call all the same.
    pub async fn eval_withholding(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        withhold: &(dyn Fn() -> Vec<Op> + Sync),
    ) -> Result<(Reply, Served), StorageError> {
        self.run_served(
            eval_op(script, keys, args),
            Some(script.local),
            None,
            withhold,
            false,
        )
        .await
    }

    /// [`Storage::eval`] of a call where only the newest matters: while Redis is unreachable,
    /// each call of `script` on the same `keys` replaces the previous one waiting in the
    /// outbox, so the replay runs it once, with the newest arguments. For scripts whose effect
    /// the next call makes obsolete (a guarded snapshot write).
    pub async fn eval_latest(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, StorageError> {
        let tag = format!("eval\0{}\0{}", script.reference.sha, keys.join("\0"));
        self.run_tagged(eval_op(script, keys, args), Some(script.local), Some(&tag))
            .await
    }

    /// Runs a script on Redis only, never on the fallback and never through the outbox: for
    /// operations that are wrong to apply locally and replay later (locks). Fails with
    /// [`StorageError::Unavailable`] at once when the mode is not `redis`, and when Redis
    /// fails mid-call (an error, the command timeout, a lost connection): the mode then turns
    /// `degraded` as for any call. Such a failure is ambiguous: Redis may have run the script.
    pub async fn eval_on_redis(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, StorageError> {
        self.on_redis_only(script, keys, args, false).await
    }

    /// [`Storage::eval_on_redis`] for a script that is safe to send twice (an acquisition
    /// by token, a compare-and-delete): it runs on a lock lane, a connection of its own
    /// written and read on the caller's task, when one is free (`storage.redis.lock_connections`;
    /// the storage's `lane` module says when there are lanes). A lane's connection that died
    /// while idle (its server restarted) is replaced and the script sent again.
    pub async fn eval_lock(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, StorageError> {
        self.on_redis_only(script, keys, args, true).await
    }

    /// Script calls the lock lanes served ([`Storage::eval_lock`]); 0 without lanes.
    pub fn lock_lane_calls(&self) -> u64 {
        self.inner
            .redis
            .as_ref()
            .map_or(0, |redis| redis.lane_calls())
    }

    async fn on_redis_only(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        lane: bool,
    ) -> Result<Reply, StorageError> {
        let Some(redis) = &self.inner.redis else {
            return Err(StorageError::Unavailable("no redis configured".into()));
        };
        let mode = self.mode();
        if mode != Mode::Redis {
            return Err(StorageError::Unavailable(format!("storage is {mode}")));
        }
        let outcome = if lane {
            redis.eval_on_lane(&script.reference, keys, args).await
        } else {
            redis.eval(&script.reference, keys, args).await
        };
        match outcome {
            Ok(reply) => Ok(reply),
            Err(Failure::Outage(reason)) => {
                self.degrade(reason.clone());
                Err(StorageError::Unavailable(reason))
            }
            Err(Failure::Command(message)) => Err(StorageError::Command(message)),
            Err(Failure::NoScript) => Err(StorageError::Command("NOSCRIPT after reload".into())),
        }
    }

    /// Every key matching the glob `pattern`, with `SCAN` (never `KEYS`); sorted.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, StorageError> {
        let mut cursor = 0u64;
        let mut keys = std::collections::BTreeSet::new();
        loop {
            let reply = self
                .execute(Op::Scan {
                    cursor,
                    pattern: pattern.into(),
                    count: 500,
                })
                .await?;
            let Reply::Array(mut parts) = reply else {
                break;
            };
            if parts.len() != 2 {
                break;
            }
            let batch = parts.pop().map(Reply::into_strings).unwrap_or_default();
            keys.extend(batch);
            cursor = parts
                .pop()
                .and_then(Reply::into_opt_string)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if cursor == 0 {
                break;
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// `PUBLISH`: how many subscribers received it (in this process, when not on Redis).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<u64, StorageError> {
        Ok(self
            .execute(Op::Publish {
                channel: channel.into(),
                message: message.into(),
            })
            .await?
            .as_int() as u64)
    }

    /// The channel on which Redis announces the changes of `key` (`__keyspace@DB__:KEY`, for
    /// the database the connections select), when its keyspace notifications are enabled
    /// (see [`Storage::server_config`]); [`Storage::subscribe`] to it like any channel.
    /// `None` without Redis, and on a Cluster, where each node announces only its own keys to
    /// its own clients.
    pub fn keyspace_channel(&self, key: &str) -> Option<String> {
        let redis = self.inner.redis.as_ref()?;
        if redis.is_clustered() {
            return None;
        }
        Some(format!("__keyspace@{}__:{key}", redis.database()))
    }

    /// `CONFIG GET name` on Redis (never the fallback): the value, `None` when the server has
    /// no such parameter. [`StorageError::Unavailable`] when the mode is not `redis` (or Redis
    /// fails meanwhile, which turns the mode `degraded`); [`StorageError::Command`] when the
    /// server refuses `CONFIG` (managed servers often rename it).
    pub async fn server_config(&self, name: &str) -> Result<Option<String>, StorageError> {
        let redis = self.redis_now()?;
        redis.config_get(name).await.map_err(|e| self.failed(e))
    }

    /// `CONFIG SET name value` on Redis (never the fallback), failing as
    /// [`Storage::server_config`] does. Changes the server for every client: call it only
    /// where a setting asks for it.
    pub async fn set_server_config(&self, name: &str, value: &str) -> Result<(), StorageError> {
        let redis = self.redis_now()?;
        redis
            .config_set(name, value)
            .await
            .map_err(|e| self.failed(e))
    }

    /// The Redis backend, when it serves now.
    fn redis_now(&self) -> Result<&super::redis::RedisBackend, StorageError> {
        let Some(redis) = &self.inner.redis else {
            return Err(StorageError::Unavailable("no redis configured".into()));
        };
        let mode = self.mode();
        if mode != Mode::Redis {
            return Err(StorageError::Unavailable(format!("storage is {mode}")));
        }
        Ok(redis)
    }

    /// The error of a call made on Redis alone; an outage turns the mode `degraded`.
    fn failed(&self, failure: Failure) -> StorageError {
        match failure {
            Failure::Outage(reason) => {
                self.degrade(reason.clone());
                StorageError::Unavailable(reason)
            }
            Failure::Command(message) => StorageError::Command(message),
            Failure::NoScript => StorageError::Command("NOSCRIPT".into()),
        }
    }

    /// Subscribes to `channel`. Messages published by any process through Redis, or by this
    /// process while Redis is unreachable, arrive in order.
    pub async fn subscribe(&self, channel: &str) -> Subscription {
        let rx = self
            .inner
            .bus
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(BUS_CAPACITY).0)
            .subscribe();
        if let Some(redis) = &self.inner.redis {
            if let Err(Failure::Outage(reason)) = redis.subscribe(channel).await {
                // Remembered: the subscription is made when the connection is back.
                tracing::debug!(backend = "redis", %channel, error = %reason, "subscribe deferred");
            }
        }
        Subscription {
            rx,
            storage: Arc::downgrade(&self.inner),
        }
    }
}

/// `set-many`: KEYS the keys, `ARGV[1]` the TTL in ms (0: none), `ARGV[2..]` their values.
const SET_MANY_LUA: &str = r#"
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i + 1])
  end
end
return #KEYS
"#;

fn set_many_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new("set-many", SET_MANY_LUA, set_many_local).with_native(super::Native::SetMany)
    })
}

/// The fallback's `set-many`.
fn set_many_local(
    ks: &mut super::Keyspace,
    now_ms: u64,
    keys: &[String],
    args: &[String],
) -> Result<Reply, super::LocalError> {
    let bad = || super::LocalError::Script("set-many: bad arguments".into());
    let ttl: u64 = args.first().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    if args.len() != keys.len() + 1 {
        return Err(bad());
    }
    for (key, value) in keys.iter().zip(&args[1..]) {
        ks.apply(
            &Op::Set {
                key: key.clone(),
                value: value.clone(),
                expiry: if ttl > 0 {
                    Expiry::In(ttl)
                } else {
                    Expiry::Never
                },
                only_if_absent: false,
            },
            now_ms,
        )?;
    }
    Ok(Reply::Int(keys.len() as i64))
}

const CAS_LUA: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"#;

fn cas_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new("compare-and-set", CAS_LUA, cas_local).with_native(super::Native::CompareAndSet)
    })
}

/// The fallback's `compare-and-set`.
fn cas_local(
    ks: &mut super::Keyspace,
    now_ms: u64,
    keys: &[String],
    args: &[String],
) -> Result<Reply, super::LocalError> {
    let bad = || super::LocalError::Script("compare-and-set: bad arguments".into());
    let ([key], [expect, expected, value, at]) = (keys, args) else {
        return Err(bad());
    };
    let at: u64 = at.parse().map_err(|_| bad())?;
    let current = ks
        .apply(&Op::Get { key: key.clone() }, now_ms)?
        .into_opt_string();
    let matches = match expect.as_str() {
        "1" => current.as_deref() == Some(expected.as_str()),
        _ => current.is_none(),
    };
    if !matches {
        return Ok(Reply::Int(0));
    }
    ks.apply(
        &Op::Set {
            key: key.clone(),
            value: value.clone(),
            expiry: if at > 0 {
                Expiry::At(at)
            } else {
                Expiry::Never
            },
            only_if_absent: false,
        },
        now_ms,
    )?;
    Ok(Reply::Int(1))
}

/// The op of a call of `script`.
fn eval_op(script: &Script, keys: &[&str], args: &[&str]) -> Op {
    Op::Eval {
        script: script.reference.clone(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}
