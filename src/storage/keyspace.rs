//! The in-process keyspace: strings, hashes, sets, sorted sets and lists with expiry, answering
//! every [`Op`] as Redis would (same replies, same empty-collection deletion, same type errors).
//!
//! It is the memory fallback, and the image the file fallback rebuilds from its journal. It is
//! not shared directly: [`super::local::Local`] holds it behind one mutex, because scripts need
//! several keys changed atomically and the fallback is not the hot path.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::glob::glob_match;
use super::op::{format_score, Expiry, Op, Reply};

/// Fixed per-key overhead counted against `storage.memory.max_bytes`.
const KEY_OVERHEAD: u64 = 64;
/// Fixed per-element overhead of collections.
const ELEM_OVERHEAD: u64 = 16;

/// An error that Redis would answer with an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// `WRONGTYPE`: the key holds another kind of value.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// The value is not an integer, or the increment overflows.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// A script failed.
    #[error("ERR script {0}")]
    Script(String),
}

/// A score that orders as Redis orders them (total order on f64).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members by score, then by member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ZSet {
    scores: HashMap<String, f64>,
    order: BTreeSet<(Score, String)>,
}

impl ZSet {
    /// A sorted set of `(member, score)` pairs.
    pub fn from_scored(pairs: impl IntoIterator<Item = (String, f64)>) -> Self {
        let mut z = ZSet::default();
        for (member, score) in pairs {
            z.insert(member, score);
        }
        z
    }

    /// Members and scores, in order.
    pub fn scored(&self) -> impl Iterator<Item = (&str, f64)> {
        self.order.iter().map(|(s, m)| (m.as_str(), s.0))
    }

    fn insert(&mut self, member: String, score: f64) -> bool {
        match self.scores.insert(member.clone(), score) {
            Some(old) => {
                self.order.remove(&(Score(old), member.clone()));
                self.order.insert((Score(score), member));
                false
            }
            None => {
                self.order.insert((Score(score), member));
                true
            }
        }
    }

    fn remove(&mut self, member: &str) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.order.remove(&(Score(score), member.to_string()));
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.scores.len()
    }
}

/// A value held by a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Data {
    /// String value.
    Str(String),
    /// Hash.
    Hash(HashMap<String, String>),
    /// Set.
    Set(HashSet<String>),
    /// Sorted set.
    ZSet(ZSet),
    /// List.
    List(VecDeque<String>),
}

impl Data {
    fn is_empty(&self) -> bool {
        match self {
            Data::Str(_) => false,
            Data::Hash(h) => h.is_empty(),
            Data::Set(s) => s.is_empty(),
            Data::ZSet(z) => z.len() == 0,
            Data::List(l) => l.is_empty(),
        }
    }

    fn size(&self) -> u64 {
        let elems = |n: usize, bytes: usize| (n as u64) * ELEM_OVERHEAD + bytes as u64;
        match self {
            Data::Str(s) => s.len() as u64,
            Data::Hash(h) => elems(h.len(), h.iter().map(|(k, v)| k.len() + v.len()).sum()),
            Data::Set(s) => elems(s.len(), s.iter().map(String::len).sum()),
            Data::ZSet(z) => elems(z.len(), z.scores.keys().map(|m| 2 * m.len() + 16).sum()),
            Data::List(l) => elems(l.len(), l.iter().map(String::len).sum()),
        }
    }
}

/// A key's value and its absolute expiry (Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The value.
    pub data: Data,
    /// Absolute expiry in Unix milliseconds.
    pub expire_at: Option<u64>,
}

/// The keyspace. Every method takes `now_ms` so that expiry is decided by the caller's clock
/// (and tests and journal replay can use their own).
#[derive(Debug, Default)]
pub struct Keyspace {
    entries: HashMap<String, Entry>,
    sizes: HashMap<String, u64>,
    used_bytes: u64,
    /// Keys changed since [`Keyspace::take_touched`], when recording.
    touched: Option<Vec<String>>,
}

type Res = Result<Reply, LocalError>;

impl Keyspace {
    /// An empty keyspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Approximate bytes held (keys, values and overheads).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Number of keys, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every key.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.sizes.clear();
        self.used_bytes = 0;
    }

    /// Drops expired keys; returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expire_at.is_some_and(|at| at <= now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.remove(key);
        }
        expired.len()
    }

    /// Starts recording the keys that writes change (for the journal's effect records).
    pub fn record_touched(&mut self) {
        self.touched = Some(Vec::new());
    }

    /// Stops recording and returns the changed keys with their current entries.
    pub fn take_touched(&mut self) -> Vec<(String, Option<Entry>)> {
        let keys = self.touched.take().unwrap_or_default();
        let mut seen = HashSet::new();
        keys.into_iter()
            .filter(|k| seen.insert(k.clone()))
            .map(|k| {
                let entry = self.entries.get(&k).cloned();
                (k, entry)
            })
            .collect()
    }

    /// Puts an entry as it is (journal replay of an effect record).
    pub fn put_entry(&mut self, key: String, entry: Option<Entry>) {
        match entry {
            Some(entry) => {
                self.entries.insert(key.clone(), entry);
                self.resize(&key);
            }
            None => self.remove(&key),
        }
    }

    /// The live entry of `key`, if any (expired entries are left for the sweep).
    pub fn entry(&self, key: &str, now_ms: u64) -> Option<&Entry> {
        self.entries
            .get(key)
            .filter(|e| e.expire_at.is_none_or(|at| at > now_ms))
    }

    /// Every live entry (for snapshots).
    pub fn entries(&self, now_ms: u64) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries
            .iter()
            .filter(move |(_, e)| e.expire_at.is_none_or(|at| at > now_ms))
    }

    fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.touch(key);
        }
        if let Some(size) = self.sizes.remove(key) {
            self.used_bytes -= size;
        }
    }

    fn touch(&mut self, key: &str) {
        if let Some(t) = self.touched.as_mut() {
            t.push(key.to_string());
        }
    }

    /// Recomputes the size of a key after a change, and drops it if it became empty.
    fn resize(&mut self, key: &str) {
        self.touch(key);
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        if entry.data.is_empty() {
            self.remove(key);
            return;
        }
        let size = KEY_OVERHEAD + key.len() as u64 + entry.data.size();
        let old = self.sizes.insert(key.to_string(), size).unwrap_or(0);
        self.used_bytes = self.used_bytes - old + size;
    }

    /// The live entry of a key (expired entries are dropped on the way).
    fn live(&mut self, key: &str, now_ms: u64) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.expire_at.is_some_and(|at| at <= now_ms));
        if expired {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    /// The live entry of a key, created with `empty` when missing; WRONGTYPE when `check`
    /// says the existing value is of another kind.
    fn entry_or(
        &mut self,
        key: &str,
        now_ms: u64,
        check: fn(&Data) -> bool,
        empty: fn() -> Data,
    ) -> Result<&mut Entry, LocalError> {
        if let Some(e) = self.live(key, now_ms) {
            if !check(&e.data) {
                return Err(LocalError::WrongType);
            }
        } else {
            self.entries.insert(
                key.to_string(),
                Entry {
                    data: empty(),
                    expire_at: None,
                },
            );
        }
        // The key is present: it was found live above or inserted just now.
        Ok(self.entries.get_mut(key).expect("entry present"))
    }

    fn read<T>(
        &mut self,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&Data) -> Option<T>,
    ) -> Result<Option<T>, LocalError> {
        match self.live(key, now_ms) {
            None => Ok(None),
            Some(e) => f(&e.data).map(Some).ok_or(LocalError::WrongType),
        }
    }

    /// Applies an op at `now_ms`, answering as Redis would.
    pub fn apply(&mut self, op: &Op, now_ms: u64) -> Res {
        match op {
            Op::Get { key } => Ok(self
                .read(key, now_ms, |d| match d {
                    Data::Str(s) => Some(Reply::Str(s.clone())),
                    _ => None,
                })?
                .unwrap_or(Reply::Nil)),
            Op::Set {
                key,
                value,
                expiry,
                only_if_absent,
            } => {
                if *only_if_absent && self.live(key, now_ms).is_some() {
                    return Ok(Reply::Nil);
                }
                let expire_at = match expiry.absolute(now_ms) {
                    Expiry::At(at) => Some(at),
                    _ => None,
                };
                self.entries.insert(
                    key.clone(),
                    Entry {
                        data: Data::Str(value.clone()),
                        expire_at,
                    },
                );
                if expire_at.is_some_and(|at| at <= now_ms) {
                    self.remove(key);
                } else {
                    self.resize(key);
                }
                Ok(Reply::Str("OK".into()))
            }
            Op::Del { keys } => {
                let mut n = 0;
                for key in keys {
                    if self.live(key, now_ms).is_some() {
                        self.remove(key);
                        n += 1;
                    }
                }
                Ok(Reply::Int(n))
            }
            Op::Exists { key } => Ok(Reply::Int(self.live(key, now_ms).is_some() as i64)),
            Op::Expire { key, expiry } => {
                let Some(entry) = self.live(key, now_ms) else {
                    return Ok(Reply::Int(0));
                };
                match expiry.absolute(now_ms) {
                    Expiry::At(at) if at <= now_ms => self.remove(key),
                    Expiry::At(at) => {
                        entry.expire_at = Some(at);
                        self.touch(key);
                    }
                    _ => {
                        let had = entry.expire_at.take().is_some();
                        self.touch(key);
                        return Ok(Reply::Int(had as i64));
                    }
                }
                Ok(Reply::Int(1))
            }
            Op::Pttl { key } => Ok(Reply::Int(match self.live(key, now_ms) {
                None => -2,
                Some(Entry {
                    expire_at: None, ..
                }) => -1,
                Some(Entry {
                    expire_at: Some(at),
                    ..
                }) => at.saturating_sub(now_ms) as i64,
            })),
            Op::IncrBy { key, by } => {
                let entry = self.entry_or(
                    key,
                    now_ms,
                    |d| matches!(d, Data::Str(_)),
                    || Data::Str("0".into()),
                )?;
                let Data::Str(s) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let next = s
                    .parse::<i64>()
                    .ok()
                    .and_then(|n| n.checked_add(*by))
                    .ok_or(LocalError::NotInteger)?;
                *s = next.to_string();
                self.resize(key);
                Ok(Reply::Int(next))
            }
            Op::HGet { key, field } => Ok(self
                .read(key, now_ms, |d| match d {
                    Data::Hash(h) => Some(h.get(field).cloned()),
                    _ => None,
                })?
                .flatten()
                .map_or(Reply::Nil, Reply::Str)),
            Op::HSet { key, fields } => {
                let entry = self.entry_or(key, now_ms, is_hash, || Data::Hash(HashMap::new()))?;
                let Data::Hash(h) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let added = fields
                    .iter()
                    .filter(|(f, v)| h.insert(f.clone(), v.clone()).is_none())
                    .count();
                self.resize(key);
                Ok(Reply::Int(added as i64))
            }
            Op::HGetAll { key } => Ok(Reply::Array(
                self.read(key, now_ms, |d| match d {
                    Data::Hash(h) => Some(
                        h.iter()
                            .flat_map(|(k, v)| [Reply::Str(k.clone()), Reply::Str(v.clone())])
                            .collect(),
                    ),
                    _ => None,
                })?
                .unwrap_or_default(),
            )),
            Op::HIncrBy { key, field, by } => {
                let entry = self.entry_or(key, now_ms, is_hash, || Data::Hash(HashMap::new()))?;
                let Data::Hash(h) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let current = h.get(field).map(String::as_str).unwrap_or("0");
                let next = current.parse::<i64>().ok().and_then(|n| n.checked_add(*by));
                let Some(next) = next else {
                    self.resize(key);
                    return Err(LocalError::NotInteger);
                };
                h.insert(field.clone(), next.to_string());
                self.resize(key);
                Ok(Reply::Int(next))
            }
            Op::HDel { key, fields } => self.shrink(key, now_ms, |d| match d {
                Data::Hash(h) => Some(fields.iter().filter(|f| h.remove(*f).is_some()).count()),
                _ => None,
            }),
            Op::HLen { key } => self.count(key, now_ms, |d| match d {
                Data::Hash(h) => Some(h.len()),
                _ => None,
            }),
            Op::SAdd { key, members } => {
                let entry = self.entry_or(key, now_ms, is_set, || Data::Set(HashSet::new()))?;
                let Data::Set(s) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let added = members.iter().filter(|m| s.insert((*m).clone())).count();
                self.resize(key);
                Ok(Reply::Int(added as i64))
            }
            Op::SRem { key, members } => self.shrink(key, now_ms, |d| match d {
                Data::Set(s) => Some(members.iter().filter(|m| s.remove(*m)).count()),
                _ => None,
            }),
            Op::SMembers { key } => Ok(Reply::Array(
                self.read(key, now_ms, |d| match d {
                    Data::Set(s) => Some(s.iter().cloned().map(Reply::Str).collect()),
                    _ => None,
                })?
                .unwrap_or_default(),
            )),
            Op::SIsMember { key, member } => self.count(key, now_ms, |d| match d {
                Data::Set(s) => Some(s.contains(member) as usize),
                _ => None,
            }),
            Op::SCard { key } => self.count(key, now_ms, |d| match d {
                Data::Set(s) => Some(s.len()),
                _ => None,
            }),
            Op::ZAdd { key, members } => {
                let entry = self.entry_or(key, now_ms, is_zset, || Data::ZSet(ZSet::default()))?;
                let Data::ZSet(z) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let added = members
                    .iter()
                    .filter(|(score, m)| z.insert(m.clone(), *score))
                    .count();
                self.resize(key);
                Ok(Reply::Int(added as i64))
            }
            Op::ZRem { key, members } => self.shrink(key, now_ms, |d| match d {
                Data::ZSet(z) => Some(members.iter().filter(|m| z.remove(m)).count()),
                _ => None,
            }),
            Op::ZPopMin { key, count } => {
                let Some(entry) = self.live(key, now_ms) else {
                    return Ok(Reply::Array(vec![]));
                };
                let Data::ZSet(z) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                let mut out = Vec::new();
                for _ in 0..*count {
                    let Some((score, member)) = z.order.pop_first() else {
                        break;
                    };
                    z.scores.remove(&member);
                    out.push(Reply::Str(member));
                    out.push(Reply::Str(format_score(score.0).replace("+inf", "inf")));
                }
                self.resize(key);
                Ok(Reply::Array(out))
            }
            Op::ZRangeByScore {
                key,
                min,
                max,
                limit,
            } => {
                let items = self
                    .read(key, now_ms, |d| match d {
                        Data::ZSet(z) => Some(
                            z.order
                                .iter()
                                .filter(|(s, _)| s.0 >= *min && s.0 <= *max)
                                .skip(limit.map_or(0, |l| l.0 as usize))
                                .take(limit.map_or(usize::MAX, |l| l.1 as usize))
                                .flat_map(|(s, m)| {
                                    [
                                        Reply::Str(m.clone()),
                                        Reply::Str(format_score(s.0).replace("+inf", "inf")),
                                    ]
                                })
                                .collect(),
                        ),
                        _ => None,
                    })?
                    .unwrap_or_default();
                Ok(Reply::Array(items))
            }
            Op::ZCard { key } => self.count(key, now_ms, |d| match d {
                Data::ZSet(z) => Some(z.len()),
                _ => None,
            }),
            Op::ZScore { key, member } => Ok(self
                .read(key, now_ms, |d| match d {
                    Data::ZSet(z) => Some(z.scores.get(member).copied()),
                    _ => None,
                })?
                .flatten()
                .map_or(Reply::Nil, |s| {
                    Reply::Str(format_score(s).replace("+inf", "inf"))
                })),
            Op::LPush { key, values } | Op::RPush { key, values } => {
                let front = matches!(op, Op::LPush { .. });
                let entry = self.entry_or(key, now_ms, is_list, || Data::List(VecDeque::new()))?;
                let Data::List(l) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                for v in values {
                    if front {
                        l.push_front(v.clone());
                    } else {
                        l.push_back(v.clone());
                    }
                }
                let len = l.len();
                self.resize(key);
                Ok(Reply::Int(len as i64))
            }
            Op::LRange { key, start, stop } => Ok(Reply::Array(
                self.read(key, now_ms, |d| match d {
                    Data::List(l) => Some(
                        list_range(l.len(), *start, *stop)
                            .map(|r| r.map(|i| Reply::Str(l[i].clone())).collect())
                            .unwrap_or_default(),
                    ),
                    _ => None,
                })?
                .unwrap_or_default(),
            )),
            Op::LTrim { key, start, stop } => {
                let Some(entry) = self.live(key, now_ms) else {
                    return Ok(Reply::Str("OK".into()));
                };
                let Data::List(l) = &mut entry.data else {
                    return Err(LocalError::WrongType);
                };
                match list_range(l.len(), *start, *stop) {
                    Some(range) => {
                        l.truncate(range.end);
                        l.drain(..range.start);
                    }
                    None => l.clear(),
                }
                self.resize(key);
                Ok(Reply::Str("OK".into()))
            }
            Op::LLen { key } => self.count(key, now_ms, |d| match d {
                Data::List(l) => Some(l.len()),
                _ => None,
            }),
            Op::Publish { .. } => Ok(Reply::Int(0)),
            Op::Time => Ok(Reply::Array(vec![
                Reply::Str((now_ms / 1_000).to_string()),
                Reply::Str(((now_ms % 1_000) * 1_000).to_string()),
            ])),
            Op::Eval { script, .. } => Err(LocalError::Script(format!(
                "{} has no local implementation",
                script.name
            ))),
            Op::Scan { pattern, .. } => {
                let keys: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|(k, e)| {
                        e.expire_at.is_none_or(|at| at > now_ms) && glob_match(pattern, k)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                Ok(Reply::Array(vec![
                    Reply::Str("0".into()),
                    Reply::Array(keys.into_iter().map(Reply::Str).collect()),
                ]))
            }
        }
    }

    /// Removes elements from a collection, dropping the key when it becomes empty.
    fn shrink(
        &mut self,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&mut Data) -> Option<usize>,
    ) -> Res {
        let Some(entry) = self.live(key, now_ms) else {
            return Ok(Reply::Int(0));
        };
        let n = f(&mut entry.data).ok_or(LocalError::WrongType)?;
        if n > 0 {
            self.resize(key);
        }
        Ok(Reply::Int(n as i64))
    }

    fn count(&mut self, key: &str, now_ms: u64, f: impl FnOnce(&Data) -> Option<usize>) -> Res {
        Ok(Reply::Int(self.read(key, now_ms, f)?.unwrap_or(0) as i64))
    }
}

fn is_hash(d: &Data) -> bool {
    matches!(d, Data::Hash(_))
}
fn is_set(d: &Data) -> bool {
    matches!(d, Data::Set(_))
}
fn is_zset(d: &Data) -> bool {
    matches!(d, Data::ZSet(_))
}
fn is_list(d: &Data) -> bool {
    matches!(d, Data::List(_))
}

/// The index range `LRANGE start stop` selects in a list of `len`, as Redis computes it.
fn list_range(len: usize, start: i64, stop: i64) -> Option<std::ops::Range<usize>> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    if start > stop || start >= len {
        return None;
    }
    Some(start as usize..(stop + 1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, expiry: Expiry) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
            expiry,
            only_if_absent: false,
        }
    }

    #[test]
    fn expired_keys_read_as_missing_and_are_swept() {
        let mut ks = Keyspace::new();
        ks.apply(&set("a", "1", Expiry::In(100)), 1_000).unwrap();
        assert_eq!(
            ks.apply(&Op::Get { key: "a".into() }, 1_099).unwrap(),
            Reply::Str("1".into())
        );
        assert_eq!(
            ks.apply(&Op::Get { key: "a".into() }, 1_100).unwrap(),
            Reply::Nil
        );
        ks.apply(&set("b", "1", Expiry::In(100)), 1_000).unwrap();
        assert_eq!(ks.sweep(2_000), 1);
        assert_eq!(ks.used_bytes(), 0);
    }

    #[test]
    fn byte_accounting_follows_changes() {
        let mut ks = Keyspace::new();
        ks.apply(
            &Op::RPush {
                key: "l".into(),
                values: vec!["x".repeat(100); 10],
            },
            0,
        )
        .unwrap();
        let full = ks.used_bytes();
        assert!(full > 1_000, "{full}");
        ks.apply(
            &Op::LTrim {
                key: "l".into(),
                start: 0,
                stop: 0,
            },
            0,
        )
        .unwrap();
        assert!(ks.used_bytes() < full / 5);
        ks.apply(
            &Op::LTrim {
                key: "l".into(),
                start: 5,
                stop: 6,
            },
            0,
        )
        .unwrap();
        assert_eq!(ks.used_bytes(), 0);
        assert!(ks.is_empty());
    }

    #[test]
    fn list_ranges_match_redis() {
        assert_eq!(list_range(5, 0, -1), Some(0..5));
        assert_eq!(list_range(5, -2, -1), Some(3..5));
        assert_eq!(list_range(5, 3, 100), Some(3..5));
        assert_eq!(list_range(5, 4, 2), None);
        assert_eq!(list_range(0, 0, -1), None);
        assert_eq!(list_range(5, -100, 1), Some(0..2));
    }

    #[test]
    fn touched_keys_are_recorded() {
        let mut ks = Keyspace::new();
        ks.record_touched();
        ks.apply(&set("a", "1", Expiry::Never), 0).unwrap();
        ks.apply(
            &Op::Del {
                keys: vec!["a".into(), "b".into()],
            },
            0,
        )
        .unwrap();
        let touched = ks.take_touched();
        assert_eq!(touched, vec![("a".to_string(), None)]);
    }
}
