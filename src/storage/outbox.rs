//! The outbox: writes accepted while Redis was unreachable, replayed in order when it returns.
//!
//! Every write accepted outside `redis` mode is applied to the fallback and appended here with
//! absolute expiries ([`Expiry::At`]). When Redis answers again the monitor replays the
//! entries in order, `storage.outbox.replay_batch` (1,000) per round trip, pipelined on one
//! connection.
//!
//! Replay is idempotent. Each entry is sent inside a Lua wrapper (one for plain commands, one
//! per script) that first reads a *marker*: a hash mapping this outbox's id to the highest
//! sequence number already applied. An entry at or below it is skipped; otherwise the wrapper
//! applies the write and raises the marker in the same script, so a crash half-way through a
//! replay and a second replay change nothing. The marker is `INTERNAL:replayed` on a single
//! server; on Redis Cluster there is one per slot, `INTERNAL:replayed:{TAG}`, TAG chosen
//! (`slot_tag`) to hash to the slot of the entry's keys, so the wrapper runs there too.
//! Markers live 7 days ([`MARKER_TTL_MS`]), renewed by each entry they record.
//!
//! The wrapper also refuses to resurrect: a `SET` whose absolute expiry passed during the
//! outage is skipped, and a live one is written with `PXAT`, so the remaining TTL is kept. For
//! keys declared in `storage.versioned`, a write is skipped when Redis already holds a value
//! with a larger version (a JSON field of a string value, or a hash field) written meanwhile by
//! another process.
//!
//! A write made with a *supersede tag* (`Storage::set_latest`, `Storage::eval_latest`)
//! replaces the entry of the previous write with the same tag while that one still waits, so
//! only the newest is replayed. An entry that Redis refuses on replay (WRONGTYPE, a script
//! error) is logged and dropped, as it would have failed had Redis been up: it must not block
//! the outbox.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::op::{Expiry, Op, ScriptRef};
use super::script::sha1_hex;

/// How long replay markers live in Redis (7 days): longer than any outbox waits.
pub const MARKER_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A version to compare before replaying a write to a versioned key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionCheck {
    /// JSON field (string values) or hash field holding the version.
    pub field: String,
    /// The version carried by the write.
    pub version: f64,
}

/// One write waiting for Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the outbox; strictly increasing.
    pub seq: u64,
    /// The write, with absolute expiries.
    pub op: Op,
    /// Version comparison for versioned keys.
    pub version: Option<VersionCheck>,
}

/// Generic wrapper for built-in commands.
/// KEYS: marker, then the op's keys. ARGV: outbox id, seq, skip-if-expired-at (ms, 0: never),
/// version field ('' when none), version, then the command and its arguments.
/// Returns 1 applied, 0 already applied, 2 expired, 3 older than Redis's version.
const REPLAY_COMMAND_LUA: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
local function mark()
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
end
local expires = tonumber(ARGV[3])
if expires > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if expires <= now then mark() return 2 end
end
if ARGV[4] ~= '' then
  local current
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind == 'string' then
    local ok, doc = pcall(cjson.decode, redis.call('GET', KEYS[2]))
    if ok and type(doc) == 'table' then current = tonumber(doc[ARGV[4]]) end
  elseif kind == 'hash' then
    current = tonumber(redis.call('HGET', KEYS[2], ARGV[4]))
  end
  if current and current > tonumber(ARGV[5]) then mark() return 3 end
end
redis.call(unpack(ARGV, 7))
mark()
return 1
"#;

/// The wrapper script for built-in commands.
pub fn command_wrapper() -> &'static ScriptRef {
    static WRAPPER: OnceLock<ScriptRef> = OnceLock::new();
    WRAPPER.get_or_init(|| ScriptRef {
        name: "botfleet-replay".into(),
        lua: REPLAY_COMMAND_LUA.into(),
        sha: sha1_hex(REPLAY_COMMAND_LUA).into(),
        native: None,
    })
}

/// The wrapper of a user script: the script runs as a local function whose `KEYS`/`ARGV`
/// parameters shadow the globals, so its text is used unchanged.
/// KEYS: the script's keys, then the marker. ARGV: the script's arguments, then id and seq.
pub fn script_wrapper(script: &ScriptRef) -> ScriptRef {
    let lua = format!(
        r#"
local n = #KEYS
local marker, id, seq = KEYS[n], ARGV[#ARGV - 1], ARGV[#ARGV]
local last = tonumber(redis.call('HGET', marker, id) or '0')
if tonumber(seq) <= last then return false end
local keys, args = {{}}, {{}}
for i = 1, n - 1 do keys[i] = KEYS[i] end
for i = 1, #ARGV - 2 do args[i] = ARGV[i] end
local function body(KEYS, ARGV)
{body}
end
local result = body(keys, args)
redis.call('HSET', marker, id, seq)
redis.call('PEXPIRE', marker, {ttl})
return result
"#,
        body = script.lua,
        ttl = MARKER_TTL_MS
    );
    ScriptRef {
        name: format!("{}-replay", script.name).into(),
        sha: sha1_hex(&lua).into(),
        lua: lua.into(),
        native: None,
    }
}

/// The command (EVALSHA arguments: sha, numkeys, keys..., args...) that replays `entry`.
pub fn replay_command(
    entry: &OutboxEntry,
    outbox_id: &str,
    marker: &str,
    wrapper: &ScriptRef,
) -> Vec<String> {
    match &entry.op {
        Op::Eval { keys, args, .. } => {
            let mut out = vec![wrapper.sha.to_string(), (keys.len() + 1).to_string()];
            out.extend(keys.iter().cloned());
            out.push(marker.to_string());
            out.extend(args.iter().cloned());
            out.push(outbox_id.to_string());
            out.push(entry.seq.to_string());
            out
        }
        op => {
            let keys = op.keys();
            let (cmd, args) = op.to_command();
            let skip_at = match op {
                Op::Set {
                    expiry: Expiry::At(at),
                    ..
                } => *at,
                _ => 0,
            };
            let (field, version) = entry
                .version
                .as_ref()
                .map_or((String::new(), "0".to_string()), |v| {
                    (v.field.clone(), v.version.to_string())
                });
            let mut out = vec![
                command_wrapper().sha.to_string(),
                (keys.len() + 1).to_string(),
                marker.to_string(),
            ];
            out.extend(keys.iter().map(|k| k.to_string()));
            out.extend([
                outbox_id.to_string(),
                entry.seq.to_string(),
                skip_at.to_string(),
                field,
                version,
                MARKER_TTL_MS.to_string(),
                cmd.to_string(),
            ]);
            out.extend(args);
            out
        }
    }
}

/// The marker key for the slot of `key`: `PREFIX:replayed:{TAG}` where TAG hashes to that
/// slot; with no key (a standalone server), `PREFIX:replayed`.
pub fn marker_key(internal_prefix: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => {
            let slot = fred::util::redis_keyslot(k.as_bytes());
            format!("{internal_prefix}:replayed:{{{}}}", slot_tag(slot))
        }
        None => format!("{internal_prefix}:replayed"),
    }
}

/// A short string whose hash slot is `slot` (computed once for all 16,384 slots).
pub(crate) fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16_384];
        let mut missing = tags.len();
        let mut i: u64 = 0;
        while missing > 0 {
            let candidate = i.to_string();
            let s = fred::util::redis_keyslot(candidate.as_bytes()) as usize;
            if tags[s].is_empty() {
                tags[s] = candidate;
                missing -= 1;
            }
            i += 1;
        }
        tags
    });
    &tags[slot as usize % 16_384]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_shares_the_slot_of_its_key() {
        for key in [
            "{bot}:task:1",
            "hazards-EASY",
            "fivem_red_green_shared_data",
            "a{}b",
        ] {
            let marker = marker_key("botfleet", Some(key));
            assert_eq!(
                fred::util::redis_keyslot(marker.as_bytes()),
                fred::util::redis_keyslot(key.as_bytes()),
                "{key} -> {marker}"
            );
        }
    }

    #[test]
    fn command_replay_carries_expiry_and_version() {
        let entry = OutboxEntry {
            seq: 7,
            op: Op::Set {
                key: "k".into(),
                value: "{\"timestamp\":5}".into(),
                expiry: Expiry::At(123),
                only_if_absent: false,
            },
            version: Some(VersionCheck {
                field: "timestamp".into(),
                version: 5.0,
            }),
        };
        let cmd = replay_command(&entry, "box", "m", command_wrapper());
        assert_eq!(&cmd[1..4], &["2", "m", "k"]);
        assert_eq!(
            &cmd[4..10],
            &[
                "box",
                "7",
                "123",
                "timestamp",
                "5",
                &MARKER_TTL_MS.to_string()
            ]
        );
        assert_eq!(
            &cmd[10..],
            &["SET", "k", "{\"timestamp\":5}", "PXAT", "123"]
        );
    }
}
