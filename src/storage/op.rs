//! The operations the storage handle knows, as one serializable enum.
//!
//! An [`Op`] is executed against Redis as a single command (see [`Op::to_command`]) or applied
//! to the in-process [`Keyspace`](super::keyspace::Keyspace) with the same semantics. Writes
//! accepted while Redis is unreachable are recorded as `Op`s in the outbox and the journal, so
//! every expiry in a recorded op is absolute ([`Expiry::At`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// When a key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// No expiry (a `SET` without it also clears an existing one, as Redis does).
    Never,
    /// Relative to the moment the op is accepted, in milliseconds.
    In(u64),
    /// Absolute, in Unix milliseconds.
    At(u64),
}

impl Expiry {
    /// The absolute form of this expiry, `now_ms` being the moment the op is accepted.
    pub fn absolute(self, now_ms: u64) -> Expiry {
        match self {
            Expiry::In(ms) => Expiry::At(now_ms.saturating_add(ms)),
            other => other,
        }
    }

    /// The absolute deadline, if any (after [`Expiry::absolute`]).
    pub fn deadline(self) -> Option<u64> {
        match self {
            Expiry::At(at) => Some(at),
            _ => None,
        }
    }
}

/// A Lua script with its SHA-1, as it travels in an op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRef {
    /// Name of the script, for logs and for finding its local implementation.
    pub name: Arc<str>,
    /// Lua source.
    pub lua: Arc<str>,
    /// SHA-1 of the source, as `SCRIPT LOAD` returns it.
    pub sha: Arc<str>,
    /// The native command the script may run as on a server that has it (never recorded:
    /// the outbox and the journal replay the script).
    #[serde(skip)]
    pub native: Option<super::native::Native>,
}

/// One storage operation. Variants mirror Redis commands; their replies are [`Reply`] values
/// shaped exactly as Redis shapes them (RESP2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are the arguments of the Redis command named by the variant
pub enum Op {
    Get {
        key: String,
    },
    Set {
        key: String,
        value: String,
        expiry: Expiry,
        only_if_absent: bool,
    },
    Del {
        keys: Vec<String>,
    },
    Exists {
        key: String,
    },
    /// `PEXPIREAT` once made absolute.
    Expire {
        key: String,
        expiry: Expiry,
    },
    Pttl {
        key: String,
    },
    IncrBy {
        key: String,
        by: i64,
    },
    HGet {
        key: String,
        field: String,
    },
    HSet {
        key: String,
        fields: Vec<(String, String)>,
    },
    HGetAll {
        key: String,
    },
    HIncrBy {
        key: String,
        field: String,
        by: i64,
    },
    HDel {
        key: String,
        fields: Vec<String>,
    },
    HLen {
        key: String,
    },
    SAdd {
        key: String,
        members: Vec<String>,
    },
    SRem {
        key: String,
        members: Vec<String>,
    },
    SMembers {
        key: String,
    },
    SIsMember {
        key: String,
        member: String,
    },
    SCard {
        key: String,
    },
    ZAdd {
        key: String,
        members: Vec<(f64, String)>,
    },
    ZRem {
        key: String,
        members: Vec<String>,
    },
    ZPopMin {
        key: String,
        count: u64,
    },
    /// Inclusive bounds; infinite bounds allowed. `limit` is (offset, count).
    ZRangeByScore {
        key: String,
        min: f64,
        max: f64,
        limit: Option<(u64, u64)>,
    },
    ZCard {
        key: String,
    },
    ZScore {
        key: String,
        member: String,
    },
    LPush {
        key: String,
        values: Vec<String>,
    },
    RPush {
        key: String,
        values: Vec<String>,
    },
    LRange {
        key: String,
        start: i64,
        stop: i64,
    },
    LTrim {
        key: String,
        start: i64,
        stop: i64,
    },
    LLen {
        key: String,
    },
    Publish {
        channel: String,
        message: String,
    },
    Eval {
        script: ScriptRef,
        keys: Vec<String>,
        args: Vec<String>,
    },
    /// One `SCAN` round: `cursor` 0 starts, a reply cursor of 0 ends.
    Scan {
        cursor: u64,
        pattern: String,
        count: u64,
    },
    /// `TIME`: the server's clock (the local clock on the fallback).
    Time,
}

impl Op {
    /// Whether the op changes data (and so goes to the outbox while Redis is unreachable).
    /// `Publish` is not a write: messages are not stored, so they are not replayed.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Set { .. }
                | Op::Del { .. }
                | Op::Expire { .. }
                | Op::IncrBy { .. }
                | Op::HSet { .. }
                | Op::HIncrBy { .. }
                | Op::HDel { .. }
                | Op::SAdd { .. }
                | Op::SRem { .. }
                | Op::ZAdd { .. }
                | Op::ZRem { .. }
                | Op::ZPopMin { .. }
                | Op::LPush { .. }
                | Op::RPush { .. }
                | Op::LTrim { .. }
                | Op::Eval { .. }
        )
    }

    /// The first key the op touches (its cluster slot), if any.
    pub fn first_key(&self) -> Option<&str> {
        match self {
            Op::Get { key }
            | Op::Set { key, .. }
            | Op::Exists { key }
            | Op::Expire { key, .. }
            | Op::Pttl { key }
            | Op::IncrBy { key, .. }
            | Op::HGet { key, .. }
            | Op::HSet { key, .. }
            | Op::HGetAll { key }
            | Op::HIncrBy { key, .. }
            | Op::HDel { key, .. }
            | Op::HLen { key }
            | Op::SAdd { key, .. }
            | Op::SRem { key, .. }
            | Op::SMembers { key }
            | Op::SIsMember { key, .. }
            | Op::SCard { key }
            | Op::ZAdd { key, .. }
            | Op::ZRem { key, .. }
            | Op::ZPopMin { key, .. }
            | Op::ZRangeByScore { key, .. }
            | Op::ZCard { key }
            | Op::ZScore { key, .. }
            | Op::LPush { key, .. }
            | Op::RPush { key, .. }
            | Op::LRange { key, .. }
            | Op::LTrim { key, .. }
            | Op::LLen { key } => Some(key),
            Op::Del { keys } => keys.first().map(String::as_str),
            Op::Eval { keys, .. } => keys.first().map(String::as_str),
            Op::Publish { .. } | Op::Scan { .. } | Op::Time => None,
        }
    }

    /// Every key the op touches.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Op::Del { keys } | Op::Eval { keys, .. } => keys.iter().map(String::as_str).collect(),
            other => other.first_key().into_iter().collect(),
        }
    }

    /// The same op with relative expiries made absolute at `now_ms`.
    pub fn with_absolute_expiry(mut self, now_ms: u64) -> Op {
        match &mut self {
            Op::Set { expiry, .. } | Op::Expire { expiry, .. } => *expiry = expiry.absolute(now_ms),
            _ => {}
        }
        self
    }

    /// The Redis command (name and arguments) that performs this op.
    pub fn to_command(&self) -> (&'static str, Vec<String>) {
        fn v(items: &[&str]) -> Vec<String> {
            items.iter().map(|s| s.to_string()).collect()
        }
        match self {
            Op::Get { key } => ("GET", v(&[key])),
            Op::Set {
                key,
                value,
                expiry,
                only_if_absent,
            } => {
                let mut args = v(&[key, value]);
                match expiry {
                    Expiry::Never => {}
                    Expiry::In(ms) => args.extend(["PX".into(), ms.max(&1).to_string()]),
                    Expiry::At(at) => args.extend(["PXAT".into(), at.to_string()]),
                }
                if *only_if_absent {
                    args.push("NX".into());
                }
                ("SET", args)
            }
            Op::Del { keys } => ("DEL", keys.clone()),
            Op::Exists { key } => ("EXISTS", v(&[key])),
            Op::Expire { key, expiry } => match expiry {
                Expiry::In(ms) => ("PEXPIRE", v(&[key, &ms.to_string()])),
                Expiry::At(at) => ("PEXPIREAT", v(&[key, &at.to_string()])),
                Expiry::Never => ("PERSIST", v(&[key])),
            },
            Op::Pttl { key } => ("PTTL", v(&[key])),
            Op::IncrBy { key, by } => ("INCRBY", v(&[key, &by.to_string()])),
            Op::HGet { key, field } => ("HGET", v(&[key, field])),
            Op::HSet { key, fields } => {
                let mut args = vec![key.clone()];
                for (f, val) in fields {
                    args.push(f.clone());
                    args.push(val.clone());
                }
                ("HSET", args)
            }
            Op::HGetAll { key } => ("HGETALL", v(&[key])),
            Op::HIncrBy { key, field, by } => ("HINCRBY", v(&[key, field, &by.to_string()])),
            Op::HDel { key, fields } => ("HDEL", prepend(key, fields)),
            Op::HLen { key } => ("HLEN", v(&[key])),
            Op::SAdd { key, members } => ("SADD", prepend(key, members)),
            Op::SRem { key, members } => ("SREM", prepend(key, members)),
            Op::SMembers { key } => ("SMEMBERS", v(&[key])),
            Op::SIsMember { key, member } => ("SISMEMBER", v(&[key, member])),
            Op::SCard { key } => ("SCARD", v(&[key])),
            Op::ZAdd { key, members } => {
                let mut args = vec![key.clone()];
                for (score, member) in members {
                    args.push(format_score(*score));
                    args.push(member.clone());
                }
                ("ZADD", args)
            }
            Op::ZRem { key, members } => ("ZREM", prepend(key, members)),
            Op::ZPopMin { key, count } => ("ZPOPMIN", v(&[key, &count.to_string()])),
            Op::ZRangeByScore {
                key,
                min,
                max,
                limit,
            } => {
                let mut args = v(&[key, &format_score(*min), &format_score(*max), "WITHSCORES"]);
                if let Some((offset, count)) = limit {
                    args.extend(["LIMIT".into(), offset.to_string(), count.to_string()]);
                }
                ("ZRANGEBYSCORE", args)
            }
            Op::ZCard { key } => ("ZCARD", v(&[key])),
            Op::ZScore { key, member } => ("ZSCORE", v(&[key, member])),
            Op::LPush { key, values } => ("LPUSH", prepend(key, values)),
            Op::RPush { key, values } => ("RPUSH", prepend(key, values)),
            Op::LRange { key, start, stop } => {
                ("LRANGE", v(&[key, &start.to_string(), &stop.to_string()]))
            }
            Op::LTrim { key, start, stop } => {
                ("LTRIM", v(&[key, &start.to_string(), &stop.to_string()]))
            }
            Op::LLen { key } => ("LLEN", v(&[key])),
            Op::Publish { channel, message } => ("PUBLISH", v(&[channel, message])),
            Op::Eval { script, keys, args } => {
                let mut out = vec![script.sha.to_string(), keys.len().to_string()];
                out.extend(keys.iter().cloned());
                out.extend(args.iter().cloned());
                ("EVALSHA", out)
            }
            Op::Scan {
                cursor,
                pattern,
                count,
            } => (
                "SCAN",
                v(&[
                    &cursor.to_string(),
                    "MATCH",
                    pattern,
                    "COUNT",
                    &count.to_string(),
                ]),
            ),
            Op::Time => ("TIME", Vec::new()),
        }
    }
}

fn prepend(key: &str, rest: &[String]) -> Vec<String> {
    let mut args = Vec::with_capacity(rest.len() + 1);
    args.push(key.to_string());
    args.extend(rest.iter().cloned());
    args
}

/// A score as Redis reads it (`inf`/`-inf` for infinities).
pub fn format_score(score: f64) -> String {
    if score == f64::INFINITY {
        "+inf".into()
    } else if score == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        score.to_string()
    }
}

/// A score as Redis writes it in replies.
pub fn parse_score(text: &str) -> Option<f64> {
    match text {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// A reply, shaped as Redis's RESP2 reply to the op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Nil bulk or nil array.
    Nil,
    /// Integer reply.
    Int(i64),
    /// Bulk string reply.
    Str(String),
    /// Array reply.
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as an optional string (nil becomes `None`; integers are formatted).
    pub fn into_opt_string(self) -> Option<String> {
        match self {
            Reply::Nil => None,
            Reply::Str(s) => Some(s),
            Reply::Int(i) => Some(i.to_string()),
            Reply::Array(_) => None,
        }
    }

    /// The reply as an integer (nil is 0, numeric strings are parsed).
    pub fn as_int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            Reply::Str(s) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// The reply's elements as strings (a non-array gives an empty list).
    pub fn into_strings(self) -> Vec<String> {
        match self {
            Reply::Array(items) => items
                .into_iter()
                .filter_map(Reply::into_opt_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A flat `[member, score, member, score, ...]` array as pairs.
    pub fn into_scored(self) -> Vec<(String, f64)> {
        let items = self.into_strings();
        items
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), parse_score(&pair[1]).unwrap_or(f64::NAN)))
            .collect()
    }
}
