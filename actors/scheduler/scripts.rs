//! The scheduler's scripts, in Lua for Redis and in Rust for the fallback (same keys, same
//! arguments, same replies). Task hashes are named `ARGV[1] .. id` (`PREFIX:task:`): with a
//! hash-tagged prefix (`{bot}`) every key a script touches is in one cluster slot.
//!
//! Replay after an outage runs the Lua with the arguments recorded while Redis was away, so
//! the scripts take the clock (`now`) as an argument and are safe to run twice: `enqueue`
//! skips an id that exists, `step` completes a task only while it is not completed, fails it
//! only when the attempt matches, applies a leaseholder's operation only while the task holds
//! that lease, and claims explicit ids only while they are still queued; `revive` and
//! `promote` move only what is still in the dead or delayed set.

use std::sync::OnceLock;

use crate::storage::{Expiry, Keyspace, LocalError, Op, Reply, Script};

/// KEYS: queue, delayed. ARGV: task key prefix, now ms, now ISO, then per task 7 values: id,
/// type, data, priority, run_at ms (0: now), run_at ISO, max_attempts ('' : default).
/// Answers how many tasks were added (an existing id is skipped).
const ENQUEUE: &str = r#"
local now = tonumber(ARGV[2])
local added = 0
for i = 4, #ARGV, 7 do
  local id = ARGV[i]
  local h = ARGV[1] .. id
  if redis.call('EXISTS', h) == 0 then
    local prio = ARGV[i + 3]
    local run_at = tonumber(ARGV[i + 4])
    redis.call('HSET', h, 'id', id, 'type', ARGV[i + 1], 'data', ARGV[i + 2], 'priority', prio,
      'created_at', ARGV[3], 'status', 'pending', 'attempts', '0', 'updated_at', ARGV[3])
    if ARGV[i + 6] ~= '' then redis.call('HSET', h, 'max_attempts', ARGV[i + 6]) end
    if run_at > now then
      redis.call('HSET', h, 'run_at', ARGV[i + 5])
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      redis.call('ZADD', KEYS[1], -tonumber(prio), id)
    end
    added = added + 1
  end
end
return added
"#;

/// One round trip of a worker: completions, failures, the operations of leaseholders (workers
/// outside the process, over HTTP), the reaper (expired visibility deadlines), the promotion
/// of due delayed tasks, then claims.
///
/// KEYS: queue, processing, delayed, dead, then the hash of each leased operation's task (named
/// so that the storage seeds it from last-known state during an outage and reads it back
/// after). ARGV: 1 task key prefix, 2 now ms, 3 now ISO, 4 visibility ms of the tasks claimed,
/// 5 default max attempts, 6 completed ttl ms (0: delete), 7 completions, 8 failures,
/// 9 capacities, 10 claim at most, 11 scan at most, 12 explicit ids, 13 leased operations,
/// 14 lease tokens, 15 '1' to answer the archive's fields of leased operations; then
/// completions (id, attempt), failures (id, attempt, error, retry at ms, retry at ISO), leased
/// operations (op, id, lease, x, y, z: `c` complete with result x ('' none); `f` fail with
/// error x, retry at ms y, retry at ISO z; `e` extend to deadline x), capacities (type, free
/// slots; the type `*` takes any type no other capacity names), explicit ids (claimed only
/// while still queued; when none are given the queue is read from its head), lease tokens (the
/// k-th task claimed holds the k-th token in its field `lease`; with none, a claim removes the
/// field).
/// Answers {completed, dead-lettered, reaped, claimed, {id, type, data, priority, attempt,
/// created_at, max_attempts, ...}, {id, attempt, type, data, priority, created_at, claimed_at,
/// error, ...}, {code, status, n, attempt, type, data, priority, created_at, claimed_at, ...}}.
/// The sixth array holds the tasks the reaper moved to the dead set in this step (their attempt
/// expired and was the last), read before the burial overwrote `updated_at` (`claimed_at`: when
/// that attempt was claimed), so that the caller can archive them. The seventh has one entry
/// per leased operation: code 1 applied, 0 no such task, -1 the lease is not the task's
/// (finished, reaped, claimed again: nothing changed); the status after it (the current one
/// when refused); n the new deadline (extend) or the retry time (a failure retried later);
/// the archive's fields only when asked, for applied completions and failures.
///
/// Most of a step's cost to Redis is its `redis.call`s, so per task it makes as few as it can:
/// the processing set loses the step's completions in one `ZREM`, and the queue loses, and the
/// processing set gains, the step's claims in one `ZREM` and one `ZADD` after the claims (the
/// scan therefore reads the queue by position, and an explicit id is claimed once); a claim
/// writes its attempt in the same `HSET` as its status (from the `HMGET` that read the task;
/// `HINCRBY` when the stored count is not a plain integer, which fails as before).
const STEP: &str = r#"
local P, now, iso = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local vis, maxa, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local nd, nf, nc = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local total, scan, ni = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local nl, nt, rec = tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[15] == '1'
local a = 16
local done, dead, reaped, claimed = 0, 0, 0, 0
local function limit(m)
  return tonumber(m) or maxa
end
local function bury(id, h, err)
  redis.call('HSET', h, 'status', 'failed', 'last_error', err, 'updated_at', iso)
  redis.call('ZADD', KEYS[4], now, id)
  dead = dead + 1
end
local function flush(cmd, key, list, step)
  for i = 1, #list, step do
    redis.call(cmd, key, unpack(list, i, math.min(i + step - 1, #list)))
  end
end
local function complete(id, h, st, later)
  if later then
    later[#later + 1] = id
  else
    redis.call('ZREM', KEYS[2], id)
  end
  if st ~= 'processing' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
  end
  if ttl > 0 then
    redis.call('HSET', h, 'status', 'completed', 'updated_at', iso)
    redis.call('PEXPIRE', h, ttl)
  else
    redis.call('DEL', h)
  end
  done = done + 1
end
local function fail(id, h, att, m, err, retry, retry_iso)
  redis.call('ZREM', KEYS[2], id)
  if tonumber(att) >= limit(m) then
    bury(id, h, err)
    return 'failed'
  end
  redis.call('HSET', h, 'status', 'pending', 'last_error', err, 'updated_at', iso,
    'run_at', retry_iso)
  redis.call('ZADD', KEYS[3], retry, id)
  return 'pending'
end
local finished = {}
for _ = 1, nd do
  local id = ARGV[a]
  a = a + 2
  local h = P .. id
  local st = redis.call('HGET', h, 'status')
  if st and st ~= 'completed' then complete(id, h, st, finished) end
end
flush('ZREM', KEYS[2], finished, 500)
for _ = 1, nf do
  local id, att, err = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local retry, retry_iso = tonumber(ARGV[a + 3]), ARGV[a + 4]
  a = a + 5
  local h = P .. id
  local f = redis.call('HMGET', h, 'status', 'attempts', 'max_attempts')
  if f[1] == 'processing' and f[2] == att then fail(id, h, att, f[3], err, retry, retry_iso) end
end
local leased = {}
for _ = 1, nl do
  local op, id, lease, x, y, z = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    ARGV[a + 5]
  a = a + 6
  local h = P .. id
  local f = redis.call('HMGET', h, 'status', 'lease', 'attempts', 'max_attempts')
  local code, st, n = 0, f[1] or '', 0
  local g = {'', '', '', '', ''}
  if f[1] then
    code = -1
    if f[1] == 'processing' and f[2] == lease then
      code = 1
      if rec and op ~= 'e' then
        local r = redis.call('HMGET', h, 'type', 'data', 'priority', 'created_at', 'updated_at')
        for i = 1, 5 do g[i] = r[i] or '' end
      end
      if op == 'e' then
        redis.call('ZADD', KEYS[2], x, id)
        n = tonumber(x)
      elseif op == 'c' then
        complete(id, h, 'processing')
        if ttl > 0 and x ~= '' then redis.call('HSET', h, 'result', x) end
        st = 'completed'
      else
        st = fail(id, h, f[3] or '0', f[4], x, tonumber(y), z)
        if st == 'pending' then n = tonumber(y) end
      end
    end
  end
  local k = #leased
  leased[k + 1] = code
  leased[k + 2] = st
  leased[k + 3] = n
  leased[k + 4] = f[3] or '0'
  for i = 1, 5 do leased[k + 4 + i] = g[i] end
end
local buried = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  local h = P .. id
  local f = redis.call('HMGET', h, 'status', 'attempts', 'max_attempts', 'priority')
  if f[1] == 'processing' then
    if (tonumber(f[2]) or 0) >= limit(f[3]) then
      local g = redis.call('HMGET', h, 'type', 'data', 'created_at', 'updated_at')
      local err = 'visibility timeout expired'
      bury(id, h, err)
      local n = #buried
      buried[n + 1] = id
      buried[n + 2] = f[2] or '0'
      buried[n + 3] = g[1] or ''
      buried[n + 4] = g[2] or ''
      buried[n + 5] = f[4] or '0'
      buried[n + 6] = g[3] or ''
      buried[n + 7] = g[4] or ''
      buried[n + 8] = err
    else
      redis.call('HSET', h, 'status', 'pending', 'updated_at', iso)
      redis.call('ZADD', KEYS[1], -(tonumber(f[4]) or 0), id)
    end
    reaped = reaped + 1
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[3], id)
  local pr = redis.call('HGET', P .. id, 'priority')
  if pr then redis.call('ZADD', KEYS[1], -(tonumber(pr) or 0), id) end
end
local caps = {}
for _ = 1, nc do
  caps[ARGV[a]] = tonumber(ARGV[a + 1])
  a = a + 2
end
local ids_at = a
local tok = ids_at + ni
local out = {}
local popped, busy, taken = {}, {}, {}
local function try(id)
  local h = P .. id
  local f = redis.call('HMGET', h, 'type', 'data', 'priority', 'created_at', 'max_attempts',
    'lease', 'attempts')
  if not f[1] then return false end
  local key = f[1]
  local c = caps[key]
  if c == nil then
    key = '*'
    c = caps[key]
  end
  if not c or c <= 0 then return false end
  caps[key] = c - 1
  taken[id] = true
  popped[#popped + 1] = id
  local att = f[7]
  if att == '0' or (att and #att < 14 and string.find(att, '^[1-9]%d*$')) then
    att = tostring(tonumber(att) + 1)
  else
    att = tostring(redis.call('HINCRBY', h, 'attempts', 1))
  end
  if claimed < nt then
    redis.call('HSET', h, 'status', 'processing', 'updated_at', iso, 'attempts', att,
      'lease', ARGV[tok + claimed])
  else
    redis.call('HSET', h, 'status', 'processing', 'updated_at', iso, 'attempts', att)
    if f[6] then redis.call('HDEL', h, 'lease') end
  end
  busy[#busy + 1] = now + vis
  busy[#busy + 1] = id
  local n = #out
  out[n + 1] = id
  out[n + 2] = f[1]
  out[n + 3] = f[2] or ''
  out[n + 4] = f[3] or '0'
  out[n + 5] = att
  out[n + 6] = f[4] or ''
  out[n + 7] = f[5] or ''
  claimed = claimed + 1
  return true
end
if ni > 0 then
  for i = 0, ni - 1 do
    local id = ARGV[ids_at + i]
    if claimed < total and not taken[id] and redis.call('ZSCORE', KEYS[1], id) then try(id) end
  end
else
  local start, scanned = 0, 0
  while claimed < total and scanned < scan do
    local ids = redis.call('ZRANGE', KEYS[1], start, start + total - claimed - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      scanned = scanned + 1
      try(id)
    end
    start = start + #ids
  end
end
flush('ZREM', KEYS[1], popped, 500)
flush('ZADD', KEYS[2], busy, 1000)
return {done, dead, reaped, claimed, out, buried, leased}
"#;

/// KEYS: processing. ARGV: task key prefix, new deadline ms, then (id, attempt) pairs.
/// Moves the deadline of the tasks still held by that attempt. Answers how many.
const EXTEND: &str = r#"
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', ARGV[1] .. id, 'status', 'attempts')
  if f[1] == 'processing' and f[2] == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    n = n + 1
  end
end
return n
"#;

/// KEYS: queue, delayed. ARGV: task key prefix, id. Removes a waiting task and its hash.
/// Answers 1 when it was waiting.
const CANCEL: &str = r#"
local a = redis.call('ZREM', KEYS[1], ARGV[2])
local b = redis.call('ZREM', KEYS[2], ARGV[2])
if a + b > 0 then
  redis.call('DEL', ARGV[1] .. ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: queue, dead. ARGV: task key prefix, now ISO, at most (with no ids), then the ids to
/// retry (none: the first `at most` of the dead set). Each dead letter named goes back to the
/// queue with its attempts reset (`last_error` kept); an id not in the dead set is skipped.
/// Answers {retried, removed from the dead set} (a dead letter whose hash is gone is only
/// removed).
const REVIVE: &str = r#"
local P, iso = ARGV[1], ARGV[2]
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
local n, removed = 0, 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[2], id) == 1 then
    removed = removed + 1
    local h = P .. id
    local pr = redis.call('HGET', h, 'priority')
    if pr then
      redis.call('HSET', h, 'status', 'pending', 'attempts', '0', 'updated_at', iso)
      redis.call('HDEL', h, 'run_at', 'lease')
      redis.call('ZADD', KEYS[1], -(tonumber(pr) or 0), id)
      n = n + 1
    end
  end
end
return {n, removed}
"#;

/// KEYS: queue, delayed. ARGV: task key prefix, now ISO, id. Moves a delayed task (or one
/// waiting for its retry) to the queue now. Answers 1 when it was delayed and its hash exists.
const PROMOTE: &str = r#"
if redis.call('ZREM', KEYS[2], ARGV[3]) == 0 then return 0 end
local h = ARGV[1] .. ARGV[3]
local pr = redis.call('HGET', h, 'priority')
if not pr then return 0 end
redis.call('HSET', h, 'updated_at', ARGV[2])
redis.call('HDEL', h, 'run_at')
redis.call('ZADD', KEYS[1], -(tonumber(pr) or 0), ARGV[3])
return 1
"#;

/// KEYS: state. ARGV: new state, session id ('' : keep), timestamp, updated_by, then the
/// states it may follow ('' : no state yet). Answers {1, previous} or {0, previous}.
const TRANSITION: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state') or ''
for i = 5, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'timestamp', ARGV[3], 'updated_by', ARGV[4])
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'session_id', ARGV[2]) end
    return {1, cur}
  end
end
return {0, cur}
"#;

/// KEYS: session, metrics. ARGV: counter field, increment, timestamp. Raises the counter in
/// both hashes. Answers the session's new value.
const COUNT: &str = r#"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'timestamp', ARGV[3])
return v
"#;

/// KEYS: events. ARGV: event JSON, cap. Pushes the event at the head and trims the list.
const EVENT: &str = r#"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"#;

/// The scheduler's scripts.
#[derive(Debug)]
pub(crate) struct SchedulerScripts {
    pub(crate) enqueue: Script,
    pub(crate) step: Script,
    pub(crate) extend: Script,
    pub(crate) cancel: Script,
    pub(crate) revive: Script,
    pub(crate) promote: Script,
    pub(crate) transition: Script,
    pub(crate) count: Script,
    pub(crate) event: Script,
}

/// The scripts (hashed once per process).
pub(crate) fn scripts() -> &'static SchedulerScripts {
    static SCRIPTS: OnceLock<SchedulerScripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| SchedulerScripts {
        enqueue: Script::new("task-enqueue", ENQUEUE, enqueue_local),
        step: Script::new("task-step", STEP, step_local),
        extend: Script::new("task-extend", EXTEND, extend_local),
        cancel: Script::new("task-cancel", CANCEL, cancel_local),
        revive: Script::new("task-revive", REVIVE, revive_local),
        promote: Script::new("task-promote", PROMOTE, promote_local),
        transition: Script::new("bot-state", TRANSITION, transition_local),
        count: Script::new("session-count", COUNT, count_local),
        event: Script::new("bot-event", EVENT, event_local),
    })
}

type Res = Result<Reply, LocalError>;

/// Commands on the fallback keyspace, shaped like `redis.call` in the Lua twins.
struct Ks<'a> {
    ks: &'a mut Keyspace,
    now: u64,
}

impl Ks<'_> {
    fn apply(&mut self, op: Op) -> Res {
        self.ks.apply(&op, self.now)
    }
    fn exists(&mut self, key: &str) -> Result<bool, LocalError> {
        Ok(self.apply(Op::Exists { key: key.into() })?.as_int() == 1)
    }
    fn hget(&mut self, key: &str, field: &str) -> Result<Option<String>, LocalError> {
        Ok(self
            .apply(Op::HGet {
                key: key.into(),
                field: field.into(),
            })?
            .into_opt_string())
    }
    fn hmget(&mut self, key: &str, fields: &[&str]) -> Result<Vec<Option<String>>, LocalError> {
        fields.iter().map(|f| self.hget(key, f)).collect()
    }
    fn hset(&mut self, key: &str, fields: &[(&str, &str)]) -> Result<(), LocalError> {
        self.apply(Op::HSet {
            key: key.into(),
            fields: fields
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
        })
        .map(|_| ())
    }
    fn hincr(&mut self, key: &str, field: &str, by: i64) -> Result<i64, LocalError> {
        Ok(self
            .apply(Op::HIncrBy {
                key: key.into(),
                field: field.into(),
                by,
            })?
            .as_int())
    }
    fn zadd(&mut self, key: &str, score: f64, member: &str) -> Result<(), LocalError> {
        self.apply(Op::ZAdd {
            key: key.into(),
            members: vec![(score, member.into())],
        })
        .map(|_| ())
    }
    fn zrem(&mut self, key: &str, member: &str) -> Result<i64, LocalError> {
        Ok(self
            .apply(Op::ZRem {
                key: key.into(),
                members: vec![member.into()],
            })?
            .as_int())
    }
    fn zscore(&mut self, key: &str, member: &str) -> Result<bool, LocalError> {
        Ok(self
            .apply(Op::ZScore {
                key: key.into(),
                member: member.into(),
            })?
            .into_opt_string()
            .is_some())
    }
    fn zrange(
        &mut self,
        key: &str,
        min: f64,
        max: f64,
        offset: u64,
        count: u64,
    ) -> Result<Vec<String>, LocalError> {
        Ok(self
            .apply(Op::ZRangeByScore {
                key: key.into(),
                min,
                max,
                limit: Some((offset, count)),
            })?
            .into_scored()
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }
    fn del(&mut self, key: &str) -> Result<(), LocalError> {
        self.apply(Op::Del {
            keys: vec![key.into()],
        })
        .map(|_| ())
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or("")
}

fn num(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok()
}

fn enqueue_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let (prefix, now, iso) = (arg(args, 0), num(arg(args, 1)).unwrap_or(0.0), arg(args, 2));
    let mut added = 0;
    for t in args[3.min(args.len())..].chunks_exact(7) {
        let h = format!("{prefix}{}", t[0]);
        if k.exists(&h)? {
            continue;
        }
        let prio = num(&t[3]).ok_or(LocalError::NotInteger)?;
        let run_at = num(&t[4]).unwrap_or(0.0);
        k.hset(
            &h,
            &[
                ("id", &t[0]),
                ("type", &t[1]),
                ("data", &t[2]),
                ("priority", &t[3]),
                ("created_at", iso),
                ("status", "pending"),
                ("attempts", "0"),
                ("updated_at", iso),
            ],
        )?;
        if !t[6].is_empty() {
            k.hset(&h, &[("max_attempts", &t[6])])?;
        }
        if run_at > now {
            k.hset(&h, &[("run_at", &t[5])])?;
            k.zadd(&keys[1], run_at, &t[0])?;
        } else {
            k.zadd(&keys[0], -prio, &t[0])?;
        }
        added += 1;
    }
    Ok(Reply::Int(added))
}

/// What `step_local` counts and the keys it works on, so that its parts can be functions as
/// in the Lua.
struct StepState<'a> {
    prefix: &'a str,
    now: f64,
    iso: String,
    maxa: f64,
    ttl: u64,
    queue: &'a str,
    processing: &'a str,
    delayed: &'a str,
    dead_key: &'a str,
    done: i64,
    dead: i64,
}

impl StepState<'_> {
    fn limit(&self, m: &Option<String>) -> f64 {
        m.as_deref().and_then(num).unwrap_or(self.maxa)
    }

    fn bury(&mut self, k: &mut Ks, id: &str, h: &str, err: &str) -> Result<(), LocalError> {
        k.hset(
            h,
            &[
                ("status", "failed"),
                ("last_error", err),
                ("updated_at", &self.iso),
            ],
        )?;
        k.zadd(self.dead_key, self.now, id)?;
        self.dead += 1;
        Ok(())
    }

    fn complete(&mut self, k: &mut Ks, id: &str, h: &str, st: &str) -> Result<(), LocalError> {
        k.zrem(self.processing, id)?;
        if st != "processing" {
            k.zrem(self.queue, id)?;
            k.zrem(self.delayed, id)?;
            k.zrem(self.dead_key, id)?;
        }
        if self.ttl > 0 {
            k.hset(h, &[("status", "completed"), ("updated_at", &self.iso)])?;
            k.apply(Op::Expire {
                key: h.to_string(),
                expiry: Expiry::In(self.ttl),
            })?;
        } else {
            k.del(h)?;
        }
        self.done += 1;
        Ok(())
    }

    /// Fails the attempt `att`: retried at `retry`, or buried after its last attempt. Answers
    /// the status it leaves.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        k: &mut Ks,
        id: &str,
        h: &str,
        att: &str,
        max_attempts: &Option<String>,
        err: &str,
        retry: f64,
        retry_iso: &str,
    ) -> Result<&'static str, LocalError> {
        k.zrem(self.processing, id)?;
        if num(att).unwrap_or(0.0) >= self.limit(max_attempts) {
            self.bury(k, id, h, err)?;
            return Ok("failed");
        }
        k.hset(
            h,
            &[
                ("status", "pending"),
                ("last_error", err),
                ("updated_at", &self.iso),
                ("run_at", retry_iso),
            ],
        )?;
        k.zadd(self.delayed, retry, id)?;
        Ok("pending")
    }
}

fn step_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let int = |i: usize| num(arg(args, i)).unwrap_or(0.0);
    let now = int(1);
    let vis = int(3);
    let (nd, nf, nc) = (int(6) as usize, int(7) as usize, int(8) as usize);
    let (total, scan, ni) = (int(9) as i64, int(10) as i64, int(11) as usize);
    let (nl, nt, rec) = (int(12) as usize, int(13) as usize, arg(args, 14) == "1");
    let mut s = StepState {
        prefix: arg(args, 0),
        now,
        iso: arg(args, 2).to_string(),
        maxa: int(4),
        ttl: int(5) as u64,
        queue: &keys[0],
        processing: &keys[1],
        delayed: &keys[2],
        dead_key: &keys[3],
        done: 0,
        dead: 0,
    };
    let prefix = s.prefix;
    let (mut reaped, mut claimed) = (0i64, 0i64);
    let mut a = 15;
    for _ in 0..nd {
        let id = arg(args, a).to_string();
        a += 2;
        let h = format!("{prefix}{id}");
        match k.hget(&h, "status")? {
            Some(st) if st != "completed" => s.complete(&mut k, &id, &h, &st)?,
            _ => {}
        }
    }
    for _ in 0..nf {
        let (id, att, err) = (arg(args, a), arg(args, a + 1), arg(args, a + 2));
        let (retry, retry_iso) = (num(arg(args, a + 3)).unwrap_or(now), arg(args, a + 4));
        a += 5;
        let h = format!("{prefix}{id}");
        let f = k.hmget(&h, &["status", "attempts", "max_attempts"])?;
        if f[0].as_deref() == Some("processing") && f[1].as_deref() == Some(att) {
            s.fail(&mut k, id, &h, att, &f[2], err, retry, retry_iso)?;
        }
    }
    let text = |v: &Option<String>, d: &str| Reply::Str(v.clone().unwrap_or_else(|| d.into()));
    let mut leased = Vec::new();
    for _ in 0..nl {
        let (op, id, lease) = (arg(args, a), arg(args, a + 1), arg(args, a + 2));
        let (x, y, z) = (arg(args, a + 3), arg(args, a + 4), arg(args, a + 5));
        a += 6;
        let h = format!("{prefix}{id}");
        let f = k.hmget(&h, &["status", "lease", "attempts", "max_attempts"])?;
        let (mut code, mut st, mut n) = (0i64, f[0].clone().unwrap_or_default(), 0i64);
        let mut g: Vec<Option<String>> = vec![None; 5];
        if f[0].is_some() {
            code = -1;
            if f[0].as_deref() == Some("processing") && f[1].as_deref() == Some(lease) {
                code = 1;
                if rec && op != "e" {
                    g = k.hmget(
                        &h,
                        &["type", "data", "priority", "created_at", "updated_at"],
                    )?;
                }
                if op == "e" {
                    let deadline = num(x).unwrap_or(0.0);
                    k.zadd(s.processing, deadline, id)?;
                    n = deadline as i64;
                } else if op == "c" {
                    s.complete(&mut k, id, &h, "processing")?;
                    if s.ttl > 0 && !x.is_empty() {
                        k.hset(&h, &[("result", x)])?;
                    }
                    st = "completed".into();
                } else {
                    let att = f[2].clone().unwrap_or_else(|| "0".into());
                    let retry = num(y).unwrap_or(now);
                    st = s.fail(&mut k, id, &h, &att, &f[3], x, retry, z)?.into();
                    if st == "pending" {
                        n = retry as i64;
                    }
                }
            }
        }
        leased.extend([
            Reply::Int(code),
            Reply::Str(st),
            Reply::Int(n),
            text(&f[2], "0"),
        ]);
        leased.extend(g.iter().map(|v| text(v, "")));
    }
    let mut buried = Vec::new();
    for id in k.zrange(s.processing, f64::NEG_INFINITY, now, 0, 100)? {
        k.zrem(s.processing, &id)?;
        let h = format!("{prefix}{id}");
        let f = k.hmget(&h, &["status", "attempts", "max_attempts", "priority"])?;
        if f[0].as_deref() == Some("processing") {
            let attempts = f[1].as_deref().and_then(num).unwrap_or(0.0);
            if attempts >= s.limit(&f[2]) {
                let g = k.hmget(&h, &["type", "data", "created_at", "updated_at"])?;
                let err = "visibility timeout expired";
                s.bury(&mut k, &id, &h, err)?;
                buried.extend([
                    Reply::Str(id.clone()),
                    text(&f[1], "0"),
                    text(&g[0], ""),
                    text(&g[1], ""),
                    text(&f[3], "0"),
                    text(&g[2], ""),
                    text(&g[3], ""),
                    Reply::Str(err.to_string()),
                ]);
            } else {
                k.hset(&h, &[("status", "pending"), ("updated_at", &s.iso)])?;
                let prio = f[3].as_deref().and_then(num).unwrap_or(0.0);
                k.zadd(s.queue, -prio, &id)?;
            }
            reaped += 1;
        }
    }
    for id in k.zrange(s.delayed, f64::NEG_INFINITY, now, 0, 1000)? {
        k.zrem(s.delayed, &id)?;
        if let Some(pr) = k.hget(&format!("{prefix}{id}"), "priority")? {
            k.zadd(s.queue, -num(&pr).unwrap_or(0.0), &id)?;
        }
    }
    let mut caps = std::collections::HashMap::new();
    for _ in 0..nc {
        caps.insert(arg(args, a).to_string(), int(a + 1) as i64);
        a += 2;
    }
    let ids_at = a;
    let tokens: Vec<&str> = (0..nt).map(|i| arg(args, ids_at + ni + i)).collect();
    let mut out = Vec::new();
    let iso = s.iso.clone();
    let (queue, processing) = (s.queue, s.processing);
    let try_claim = |k: &mut Ks,
                     caps: &mut std::collections::HashMap<String, i64>,
                     out: &mut Vec<Reply>,
                     claimed: i64,
                     id: &str|
     -> Result<bool, LocalError> {
        let h = format!("{prefix}{id}");
        let f = k.hmget(
            &h,
            &[
                "type",
                "data",
                "priority",
                "created_at",
                "max_attempts",
                "lease",
            ],
        )?;
        let Some(ty) = f[0].clone() else {
            return Ok(false);
        };
        let key = if caps.contains_key(&ty) {
            ty.clone()
        } else {
            "*".to_string()
        };
        match caps.get_mut(&key) {
            Some(c) if *c > 0 => *c -= 1,
            _ => return Ok(false),
        }
        k.zrem(queue, id)?;
        let att = k.hincr(&h, "attempts", 1)?;
        match tokens.get(claimed as usize) {
            Some(token) => k.hset(
                &h,
                &[
                    ("status", "processing"),
                    ("updated_at", &iso),
                    ("lease", token),
                ],
            )?,
            None => {
                k.hset(&h, &[("status", "processing"), ("updated_at", &iso)])?;
                if f[5].is_some() {
                    k.apply(Op::HDel {
                        key: h.clone(),
                        fields: vec!["lease".into()],
                    })?;
                }
            }
        }
        k.zadd(processing, now + vis, id)?;
        out.extend([
            Reply::Str(id.to_string()),
            Reply::Str(ty),
            text(&f[1], ""),
            text(&f[2], "0"),
            Reply::Str(att.to_string()),
            text(&f[3], ""),
            text(&f[4], ""),
        ]);
        Ok(true)
    };
    if ni > 0 {
        for i in 0..ni {
            let id = arg(args, ids_at + i).to_string();
            if claimed < total
                && k.zscore(queue, &id)?
                && try_claim(&mut k, &mut caps, &mut out, claimed, &id)?
            {
                claimed += 1;
            }
        }
    } else {
        let (mut start, mut scanned) = (0u64, 0i64);
        while claimed < total && scanned < scan {
            let want = (total - claimed) as u64;
            let ids = k.zrange(queue, f64::NEG_INFINITY, f64::INFINITY, start, want)?;
            if ids.is_empty() {
                break;
            }
            for id in ids {
                scanned += 1;
                if try_claim(&mut k, &mut caps, &mut out, claimed, &id)? {
                    claimed += 1;
                } else {
                    start += 1;
                }
            }
        }
    }
    Ok(Reply::Array(vec![
        Reply::Int(s.done),
        Reply::Int(s.dead),
        Reply::Int(reaped),
        Reply::Int(claimed),
        Reply::Array(out),
        Reply::Array(buried),
        Reply::Array(leased),
    ]))
}

fn extend_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let (prefix, deadline) = (arg(args, 0), num(arg(args, 1)).unwrap_or(0.0));
    let mut n = 0;
    for pair in args[2.min(args.len())..].chunks_exact(2) {
        let f = k.hmget(&format!("{prefix}{}", pair[0]), &["status", "attempts"])?;
        if f[0].as_deref() == Some("processing")
            && f[1].as_deref() == Some(pair[1].as_str())
            && k.zscore(&keys[0], &pair[0])?
        {
            k.zadd(&keys[0], deadline, &pair[0])?;
            n += 1;
        }
    }
    Ok(Reply::Int(n))
}

fn cancel_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let id = arg(args, 1);
    let removed = k.zrem(&keys[0], id)? + k.zrem(&keys[1], id)?;
    if removed > 0 {
        k.del(&format!("{}{id}", arg(args, 0)))?;
        return Ok(Reply::Int(1));
    }
    Ok(Reply::Int(0))
}

fn revive_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let (prefix, iso) = (arg(args, 0), arg(args, 1));
    let ids: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        let at_most = arg(args, 2).parse::<u64>().unwrap_or(0);
        k.zrange(&keys[1], f64::NEG_INFINITY, f64::INFINITY, 0, at_most)?
    };
    let (mut n, mut removed) = (0, 0);
    for id in ids {
        if k.zrem(&keys[1], &id)? != 1 {
            continue;
        }
        removed += 1;
        let h = format!("{prefix}{id}");
        if let Some(pr) = k.hget(&h, "priority")? {
            k.hset(
                &h,
                &[
                    ("status", "pending"),
                    ("attempts", "0"),
                    ("updated_at", iso),
                ],
            )?;
            k.apply(Op::HDel {
                key: h.clone(),
                fields: vec!["run_at".into(), "lease".into()],
            })?;
            k.zadd(&keys[0], -num(&pr).unwrap_or(0.0), &id)?;
            n += 1;
        }
    }
    Ok(Reply::Array(vec![Reply::Int(n), Reply::Int(removed)]))
}

fn promote_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let (prefix, iso, id) = (arg(args, 0), arg(args, 1), arg(args, 2));
    if k.zrem(&keys[1], id)? == 0 {
        return Ok(Reply::Int(0));
    }
    let h = format!("{prefix}{id}");
    let Some(pr) = k.hget(&h, "priority")? else {
        return Ok(Reply::Int(0));
    };
    k.hset(&h, &[("updated_at", iso)])?;
    k.apply(Op::HDel {
        key: h.clone(),
        fields: vec!["run_at".into()],
    })?;
    k.zadd(&keys[0], -num(&pr).unwrap_or(0.0), id)?;
    Ok(Reply::Int(1))
}

fn transition_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let cur = k.hget(&keys[0], "state")?.unwrap_or_default();
    if args.iter().skip(4).any(|s| *s == cur) {
        k.hset(
            &keys[0],
            &[
                ("state", arg(args, 0)),
                ("timestamp", arg(args, 2)),
                ("updated_by", arg(args, 3)),
            ],
        )?;
        if !arg(args, 1).is_empty() {
            k.hset(&keys[0], &[("session_id", arg(args, 1))])?;
        }
        return Ok(Reply::Array(vec![Reply::Int(1), Reply::Str(cur)]));
    }
    Ok(Reply::Array(vec![Reply::Int(0), Reply::Str(cur)]))
}

fn count_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let mut k = Ks { ks, now: now_ms };
    let by = arg(args, 1)
        .parse::<i64>()
        .map_err(|_| LocalError::NotInteger)?;
    let v = k.hincr(&keys[0], arg(args, 0), by)?;
    k.hset(&keys[0], &[("updated_at", arg(args, 2))])?;
    k.hincr(&keys[1], arg(args, 0), by)?;
    k.hset(&keys[1], &[("timestamp", arg(args, 2))])?;
    Ok(Reply::Int(v))
}

fn event_local(ks: &mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Res {
    let cap = arg(args, 1).parse::<i64>().unwrap_or(1);
    ks.apply(
        &Op::LPush {
            key: keys[0].clone(),
            values: vec![arg(args, 0).to_string()],
        },
        now_ms,
    )?;
    ks.apply(
        &Op::LTrim {
            key: keys[0].clone(),
            start: 0,
            stop: cap - 1,
        },
        now_ms,
    )?;
    Ok(Reply::Int(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 4] = ["q", "p", "d", "x"];

    /// The step's arguments at `now` with visibility 100 ms, default max attempts 1, claiming
    /// up to one task of type `t`.
    fn step_args(now: u64) -> Vec<String> {
        [
            "task:",
            &now.to_string(),
            &crate::clock::iso8601(now),
            "100",
            "1",
            "0",
            "0",
            "0",
            "1",
            "1",
            "10",
            "0",
            "0",
            "0",
            "0",
            "t",
            "1",
        ]
        .map(String::from)
        .to_vec()
    }

    fn step(ks: &mut Keyspace, now: u64) -> Vec<Reply> {
        let keys = KEYS.map(String::from);
        match step_local(ks, now, &keys, &step_args(now)).unwrap() {
            Reply::Array(parts) => parts,
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn the_step_names_what_the_reaper_buried() {
        let mut ks = Keyspace::new();
        let t0 = 1_759_036_514_000;
        let keys = ["q", "d"].map(String::from);
        let args = [
            "task:",
            &t0.to_string(),
            &crate::clock::iso8601(t0),
            "a",
            "t",
            "{\"n\":1}",
            "4",
            "0",
            "",
            "",
        ]
        .map(String::from);
        enqueue_local(&mut ks, t0, &keys, &args).unwrap();
        // Claimed; its worker never comes back.
        let claim = step(&mut ks, t0 + 1_000);
        assert_eq!(claim[3], Reply::Int(1));
        assert_eq!(claim[5], Reply::Array(Vec::new()));
        // The deadline passed: the last attempt is buried, and named in the reply.
        let reap = step(&mut ks, t0 + 2_000);
        assert_eq!(reap.len(), 7);
        assert_eq!((&reap[1], &reap[2]), (&Reply::Int(1), &Reply::Int(1)));
        let buried = reap[5].clone().into_strings();
        let claimed_at = crate::clock::iso8601(t0 + 1_000);
        let created_at = crate::clock::iso8601(t0);
        assert_eq!(
            buried,
            [
                "a",
                "1",
                "t",
                "{\"n\":1}",
                "4",
                created_at.as_str(),
                claimed_at.as_str(),
                "visibility timeout expired",
            ]
        );
        // Named once: the next step buries nothing.
        assert_eq!(step(&mut ks, t0 + 3_000)[5], Reply::Array(Vec::new()));
    }
}
