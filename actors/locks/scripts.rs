//! The lock scripts (acquire, release, extend, hand-over). Each is one round trip. They run on Redis only
//! ([`Storage::eval_on_redis`](crate::storage::Storage::eval_on_redis)): a lock granted by the
//! fallback and replayed later would be a lie, so the local twins refuse to run.

use std::sync::OnceLock;

use crate::storage::{Keyspace, LocalError, Reply, Script};

/// KEYS: lock, fencing counter, waiting mark. ARGV: token, ttl ms, mark ms. The lock key
/// holds the token (so a seed client's `SET key "1" EX ttl NX` fails while we hold it, and
/// ours fails while it holds it); the fencing counter is raised in the same script. Answers
/// the fencing token, or 0 when the lock is held by someone else; then, unless mark ms is 0
/// (`try_acquire`), sets the waiting mark for that long, so that the release is announced.
const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  return redis.call('INCR', KEYS[2])
end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
return 0
"#;

/// KEYS: lock, waiting mark. ARGV: token, channel, notice. Compare-and-delete; announces the
/// release when a waiter marked the name (an uncontended release publishes nothing). Answers
/// 1 when the lock was still ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('DEL', KEYS[2]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
  return 1
end
return 0
"#;

/// KEYS: lock, fencing counter. ARGV: token, next holder's token, its ttl ms. Compare-and-set:
/// hands the lock to a waiter of the same process with a new fencing token. Answers the
/// fencing token, or 0 when the lock was not ours (nothing changed).
const HANDOFF: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return redis.call('INCR', KEYS[2])
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
        acquire: Script::new("lock-acquire", ACQUIRE, redis_only),
        release: Script::new("lock-release", RELEASE, redis_only),
        extend: Script::new("lock-extend", EXTEND, redis_only),
        handoff: Script::new("lock-handoff", HANDOFF, redis_only),
    })
}

/// The fallback twin of every lock script: never called, since lock scripts go through
/// `eval_on_redis`; refuses if it ever were.
fn redis_only(_: &mut Keyspace, _: u64, _: &[String], _: &[String]) -> Result<Reply, LocalError> {
    Err(LocalError::Script("lock scripts run on redis only".into()))
}
