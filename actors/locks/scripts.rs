//! The lock scripts (acquire, release, extend, hand-over). Each is one round trip. They run on Redis only
//! ([`Storage::eval_lock`](crate::storage::Storage::eval_lock)): a lock granted by the
//! fallback and replayed later would be a lie, so the local twins refuse to run. Each is safe
//! to send twice, which lets a lock lane send a call again on a new connection when its idle
//! one turns out dead: an acquisition by a token that already holds the lock answers it as
//! granted, a release and an extension compare the token, and a hand-over sent again finds
//! the lock already the waiter's and only raises the fence once more.
//!
//! On a server that has the commands, the extension runs as `SET lock token IFEQ token PX
//! ttl` and the release as `DELIFEQ` (or `DELEX ... IFEQ`) with a check of the waiting mark
//! ([`Native`]; the storage's `native` module says why that is the script's outcome). The
//! acquisition and the hand-over stay Lua: the fencing counter is raised from the server's
//! clock in the same atomic step as the grant.

use std::sync::OnceLock;

/// The fencing token of a new holder, shared by the acquire and hand-over scripts: one more
/// than the counter, and never below the server's clock in microseconds (`TIME`). A Redis
/// that lost the counter (restarted without its data, or a replica promoted before it
/// received the last raises) thus still issues a token above every one issued before, as
/// long as its clock is not behind the clock that issued them by more than the time between
/// the two grants (see ARCHITECTURE.md, "Fencing tokens"). Numbers stay below 2^53, so Lua's
/// doubles hold them exactly.
///
/// `next_fence(key, n)` raises a counter once per script call: its first grant reserves `n`
/// tokens (the call's requests, an upper bound of its grants on that counter), writing the
/// last of them to the counter (one `SET ... GET` where the clock is ahead of the counter,
/// as it almost always is; a second `SET` where it is not), and the call's later grants on
/// the same counter take the next reserved token with no command. The counter thus holds
/// the highest token issued or reserved; the next call's tokens are above it. A lone grant
/// writes the clock's value as `TIME`'s seconds followed by its microseconds padded to six
/// digits: the digits `string.format('%.0f')` would give, for less of Redis's time. A call
/// reads `TIME` once, at its first grant.
/// `replicate_commands` (a no-op since Redis 7) lets older servers write after `TIME`.
const NEXT_FENCE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local now, now_text
local reserved = {}
local function next_fence(key, n)
  local given = reserved[key]
  if given then
    reserved[key] = given + 1
    return given
  end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    now_text = t[1] .. string.sub('00000' .. t[2], -6)
  end
  local top = now_text
  if n > 1 then
    top = string.format('%.0f', now + n - 1)
  end
  local first = now
  local last = tonumber(redis.call('SET', key, top, 'GET') or '0')
  if last >= now then
    first = last + 1
    redis.call('SET', key, string.format('%.0f', first + n - 1))
  end
  reserved[key] = first + 1
  return first
end
"#;

use crate::storage::{Keyspace, LocalError, Native, Reply, Script};

/// Acquires a batch of locks (one or more requests of this process, see `batch.rs`).
/// KEYS: per request, lock, fencing counter, waiting mark. ARGV: per request, token, ttl ms,
/// mark ms. The lock key holds the token (so a seed client's `SET key "1" EX ttl NX` fails
/// while we hold it, and ours fails while it holds it); the fencing counter is raised in the
/// same script ([`NEXT_FENCE`]). A request whose token the lock already holds is granted
/// again with a new fence: a call sent twice (sent again after its reply was lost, when the
/// first had run) is still a grant; `pcall`, so a key of another type stays "held by someone
/// else". Answers, per request, the fencing token, or 0 when the lock is held by someone
/// else; then, unless mark ms is 0 (`try_acquire`), it sets the waiting mark for that long,
/// so that the release is announced. A call of one request answers its integer alone, not an
/// array of one (no table to build).
const ACQUIRE: &str = r#"
local n = #KEYS / 3
local function one(k, a)
  if redis.call('SET', KEYS[k], ARGV[a], 'PX', ARGV[a + 1], 'NX')
      or redis.pcall('GET', KEYS[k]) == ARGV[a] then
    return next_fence(KEYS[k + 1], n)
  end
  if ARGV[a + 2] ~= '0' then
    redis.call('SET', KEYS[k + 2], '1', 'PX', ARGV[a + 2])
  end
  return 0
end
if n == 1 then
  return one(1, 1)
end
local out = {}
for i = 1, n do
  out[i] = one(i * 3 - 2, i * 3 - 2)
end
return out
"#;

/// Releases a batch of locks. KEYS: per request, lock, waiting mark. ARGV: the release
/// channel, then per request, token, notice. Compare-and-delete; announces a release when a
/// waiter marked the name (an uncontended release publishes nothing). One `DEL` takes the lock
/// and the mark: the lock exists (its token was just read), so 2 keys deleted means a mark.
/// Answers, per request, 2 when the lock was still ours and the release was announced, 1
/// when it was ours and nobody had marked the name, else 0; a call of one request its
/// integer alone.
const RELEASE: &str = r#"
local function one(k, a)
  if redis.call('GET', KEYS[k]) == ARGV[a] then
    if redis.call('DEL', KEYS[k], KEYS[k + 1]) == 2 then
      redis.call('PUBLISH', ARGV[1], ARGV[a + 1])
      return 2
    end
    return 1
  end
  return 0
end
if #KEYS == 2 then
  return one(1, 2)
end
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = one(i * 2 - 1, i * 2)
end
return out
"#;

/// KEYS: lock, fencing counter. ARGV: token, next holder's token, its ttl ms. Compare-and-set:
/// hands the lock to a waiter of the same process with a new fencing token ([`NEXT_FENCE`]).
/// A lock that already holds the next holder's token (a call sent twice) is handed over again.
/// Answers the fencing token, or 0 when the lock was not ours (nothing changed).
const HANDOFF: &str = r#"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return next_fence(KEYS[2], 1)
end
return 0
"#;

/// KEYS: lock. ARGV: token, ttl ms. Compare-and-extend. Answers 1 when the lock is still ours.
const EXTEND: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// The three scripts, built once.
#[derive(Debug)]
pub(crate) struct LockScripts {
    pub(crate) acquire: Script,
    pub(crate) release: Script,
    pub(crate) extend: Script,
    pub(crate) handoff: Script,
}

/// The scripts (hashed once per process).
pub(crate) fn scripts() -> &'static LockScripts {
    static SCRIPTS: OnceLock<LockScripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| LockScripts {
        acquire: Script::new("lock-acquire", &with_fence(ACQUIRE), redis_only),
        // Where the server has the command, the release runs as a conditional delete and the
        // extension as `SET IFEQ` (the layouts `Native` documents are these scripts'); the
        // acquisition and the hand-over stay Lua: they raise the fencing counter from the
        // server's clock in the same atomic step as the grant.
        release: Script::new("lock-release", RELEASE, redis_only)
            .with_native(Native::DeleteIfEqualAnnounced),
        extend: Script::new("lock-extend", EXTEND, redis_only).with_native(Native::ExtendIfEqual),
        handoff: Script::new("lock-handoff", &with_fence(HANDOFF), redis_only),
    })
}

/// `script` preceded by the [`NEXT_FENCE`] function it calls.
fn with_fence(script: &str) -> String {
    format!("{NEXT_FENCE}{script}")
}

/// The fallback twin of every lock script: never called, since lock scripts go through
/// `eval_lock`, on Redis only; refuses if it ever were.
fn redis_only(_: &mut Keyspace, _: u64, _: &[String], _: &[String]) -> Result<Reply, LocalError> {
    Err(LocalError::Script("lock scripts run on redis only".into()))
}
