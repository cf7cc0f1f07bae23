//! The snapshot write: one script that refuses a deposed leader and an older snapshot, in Lua
//! for Redis and in Rust for the fallback (same keys, same arguments, same answers).
//!
//! KEYS: the shared key, the guard hash (`INTERNAL:shared-data-guard:{TAG}`, TAG hashing to the
//! shared key's cluster slot). ARGV: the snapshot JSON, its TTL (ms), the writer's fencing
//! token (`-1`: a reader's direct fetch, checked by timestamp only), the snapshot's timestamp.
//! The guard hash keeps, per shared key, the highest fencing token (`fence:KEY`) and the
//! newest timestamp (`ts:KEY`) written. A write is refused with `0` when its token is lower
//! than the stored one (a deposed leader), with `-1` when its timestamp is not newer than the
//! stored one or than the `timestamp` field of the value in place (written perhaps by a seed
//! bot); otherwise the key is `SET ... PX`, the guard raised, and `1` answered.

use std::sync::OnceLock;

use crate::storage::{Expiry, Keyspace, LocalError, Op, Reply, Script};

/// Written.
pub(crate) const WRITTEN: i64 = 1;
/// Refused: the writer's fencing token is older than the last writer's.
pub(crate) const DEPOSED: i64 = 0;
/// Refused: not newer than the snapshot in place.
pub(crate) const OLDER: i64 = -1;

const WRITE: &str = r#"
local fence_field = 'fence:' .. KEYS[1]
local ts_field = 'ts:' .. KEYS[1]
local fence = tonumber(ARGV[3])
local ts = tonumber(ARGV[4])
local stored_fence = tonumber(redis.call('HGET', KEYS[2], fence_field) or '-1')
if fence >= 0 and fence < stored_fence then return 0 end
local stored_ts = tonumber(redis.call('HGET', KEYS[2], ts_field) or '0')
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  local ok, doc = pcall(cjson.decode, redis.call('GET', KEYS[1]))
  if ok and type(doc) == 'table' and tonumber(doc['timestamp']) then
    stored_ts = math.max(stored_ts, tonumber(doc['timestamp']))
  end
end
if ts <= stored_ts then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ts_field, ARGV[4])
if fence > stored_fence then redis.call('HSET', KEYS[2], fence_field, ARGV[3]) end
return 1
"#;

/// The write script, hashed once per process.
pub(crate) fn write_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("shared-data-write", WRITE, write_local))
}

/// The Rust twin of [`WRITE`].
fn write_local(
    ks: &mut Keyspace,
    now_ms: u64,
    keys: &[String],
    args: &[String],
) -> Result<Reply, LocalError> {
    let bad = || LocalError::Script("shared-data-write: bad arguments".into());
    let (Some(key), Some(guard)) = (keys.first(), keys.get(1)) else {
        return Err(bad());
    };
    let (Some(json), Some(ttl), Some(fence), Some(ts)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        return Err(bad());
    };
    let ttl: u64 = ttl.parse().map_err(|_| bad())?;
    let fence: i64 = fence.parse().map_err(|_| bad())?;
    let ts: u64 = ts.parse().map_err(|_| bad())?;
    let fence_field = format!("fence:{key}");
    let ts_field = format!("ts:{key}");
    let hget = |ks: &mut Keyspace, field: &str| -> Result<Option<String>, LocalError> {
        Ok(ks
            .apply(
                &Op::HGet {
                    key: guard.clone(),
                    field: field.to_string(),
                },
                now_ms,
            )?
            .into_opt_string())
    };
    let stored_fence: i64 = hget(ks, &fence_field)?
        .and_then(|f| f.parse().ok())
        .unwrap_or(-1);
    if fence >= 0 && fence < stored_fence {
        return Ok(Reply::Int(DEPOSED));
    }
    let mut stored_ts: u64 = hget(ks, &ts_field)?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    // A value of another type is left to fail on SET as Redis would not: Redis's SET
    // overwrites any type, and so does the fallback's.
    if let Ok(Reply::Str(current)) = ks.apply(&Op::Get { key: key.clone() }, now_ms) {
        if let Some(t) = serde_json::from_str::<serde_json::Value>(&current)
            .ok()
            .and_then(|doc| doc.get("timestamp").and_then(serde_json::Value::as_f64))
        {
            stored_ts = stored_ts.max(t as u64);
        }
    }
    if ts <= stored_ts {
        return Ok(Reply::Int(OLDER));
    }
    ks.apply(
        &Op::Set {
            key: key.clone(),
            value: json.clone(),
            expiry: Expiry::In(ttl).absolute(now_ms),
            only_if_absent: false,
        },
        now_ms,
    )?;
    let mut fields = vec![(ts_field, ts.to_string())];
    if fence > stored_fence {
        fields.push((fence_field, fence.to_string()));
    }
    ks.apply(
        &Op::HSet {
            key: guard.clone(),
            fields,
        },
        now_ms,
    )?;
    Ok(Reply::Int(WRITTEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ks: &mut Keyspace, fence: i64, ts: u64) -> i64 {
        let keys = ["shared".to_string(), "guard".to_string()];
        let json = format!(r#"{{"timestamp":{ts}}}"#);
        let args = [json, "300000".into(), fence.to_string(), ts.to_string()];
        match write_local(ks, 1_000, &keys, &args).unwrap() {
            Reply::Int(i) => i,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_deposed_leader_and_an_older_snapshot_are_refused() {
        let mut ks = Keyspace::new();
        assert_eq!(run(&mut ks, 3, 100), WRITTEN);
        assert_eq!(run(&mut ks, 2, 200), DEPOSED, "lower fence");
        assert_eq!(run(&mut ks, 3, 100), OLDER, "same timestamp");
        assert_eq!(run(&mut ks, 4, 90), OLDER, "newer fence, older snapshot");
        assert_eq!(run(&mut ks, -1, 150), WRITTEN, "direct fetch, newer");
        assert_eq!(run(&mut ks, -1, 120), OLDER, "direct fetch, older");
        assert_eq!(run(&mut ks, 3, 160), WRITTEN);
    }
}
