//! The last-known copy: what this process read from or wrote to Redis, kept beside it so that
//! an outage does not make the fleet forget.
//!
//! While Redis answers, every op on a *remembered* key (a key matching a pattern a service
//! declared with [`Storage::remember`](super::Storage::remember), or
//! `storage.last_known.patterns`) updates the copy:
//!
//! - a read of a whole value (`GET`, `HGETALL`, `SMEMBERS`, a full `ZRANGEBYSCORE`) stores the
//!   reply as it is;
//! - a plain `SET` or `DEL` is stored as it is; another write is applied to the copy when the
//!   copy holds the key, and the key is marked *dirty*; a script only marks its keys dirty
//!   (its effect is Redis's to compute);
//! - a refresher task reads the dirty keys back from Redis every
//!   `storage.last_known.refresh_interval_ms`, in one script call per batch (type, value and
//!   time to live of each key), so the copy is exact again within that interval; shared keys
//!   (the task queues: large, and changed by every claim) ten times less often.
//!
//! The copy is bounded (`storage.last_known.max_bytes`, least recently used out first; a
//! collection past `max_members` is not copied). With the file fallback it is saved to
//! `last-known.bin` in the store's directory, every few seconds while it changes and at once
//! when an outage begins, so a process restarted during an outage still knows.
//!
//! During an outage the fallback uses it in two ways, by the kind the key was declared with:
//!
//! - [`Remembered::State`]: the first op of the outage that touches the key (read or write)
//!   copies the last-known value into the fallback keyspace first (a *seed*: journaled, never
//!   replayed). Scripts then decide on what the fleet knew: the bot state machine refuses an
//!   illegal transition, a game session is updated rather than recreated.
//! - [`Remembered::Shared`]: work another process could also hand out (the task queues). A
//!   read answers the union of the last-known value and this process's own writes; the key is
//!   never seeded, so a script that claims work claims only what this process enqueued during
//!   the outage, which no other process can see, let alone claim.
//!
//! When Redis answers again and has lost its data (the `INTERNAL:data-epoch` marker this
//! process saw is gone: restarted empty, a replica promoted without the last writes), the
//! resync first writes back every last-known [`Remembered::State`] key that Redis lacks (only
//! if absent: a value another process wrote meanwhile wins), then replays the outbox on top.
//! Shared keys are not written back: a task another process finished just before the loss
//! would run again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::glob::glob_match;
use super::keyspace::{Data, Entry, Keyspace, ZSet};
use super::op::{Op, Reply};
use super::script::Script;
use crate::settings::LastKnownSettings;

/// File name of the saved copy, in `storage.file.dir`.
pub(super) const FILE_NAME: &str = "last-known.bin";
/// First bytes of the saved copy: name and format version.
const MAGIC: &[u8; 8] = b"BFLKNOW1";
/// Keys read back per refresh script call.
pub(super) const REFRESH_BATCH: usize = 256;
/// Dirty keys remembered at most; past it the oldest marks are dropped (their copy stays as
/// it was, refreshed by the next write or read).
const MAX_DIRTY: usize = 65_536;
/// Single keys declared with [`LastKnown::remember_key`] at most (cache entries); past it the
/// declarations are ignored (patterns still apply).
const MAX_EXACT_KEYS: usize = 100_000;
/// Shared keys are read back once every this many refresh rounds.
pub(super) const SHARED_EVERY: u64 = 10;
/// Least interval between two saves of the copy while Redis answers.
pub(super) const SAVE_INTERVAL_MS: u64 = 5_000;

/// How the fallback uses a remembered key during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Remembered {
    /// State the fleet decides on: seeded into the fallback by the outage's first op on it.
    State,
    /// Work other processes could hand out: shown in reads (merged with this process's own
    /// writes), never seeded, so never claimed from a stale copy.
    Shared,
}

/// Whether an answer comes from last-known state, and as of when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Freshness {
    /// True while Redis is configured but not serving: answers come from the fallback, on
    /// top of the last-known copy.
    pub stale: bool,
    /// Unix milliseconds of the last moment Redis was known to answer (`None` when fresh, or
    /// when this process never reached Redis).
    pub as_of_ms: Option<u64>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Glob(String),
}

impl Matcher {
    fn new(pattern: &str) -> Self {
        let special = |c: char| matches!(c, '*' | '?' | '[' | '\\');
        match pattern.find(special) {
            None => Matcher::Exact(pattern.to_string()),
            Some(i) if i == pattern.len() - 1 && pattern.ends_with('*') => {
                Matcher::Prefix(pattern[..i].to_string())
            }
            Some(_) => Matcher::Glob(pattern.to_string()),
        }
    }

    fn matches(&self, key: &str) -> bool {
        match self {
            Matcher::Exact(k) => k == key,
            Matcher::Prefix(p) => key.starts_with(p.as_str()),
            Matcher::Glob(g) => glob_match(g, key),
        }
    }
}

#[derive(Debug)]
struct Copy {
    ks: Keyspace,
    /// Key → its last use (a tick); `order` is the same, by tick.
    used: HashMap<String, u64>,
    order: BTreeMap<u64, String>,
    tick: u64,
    /// Keys seeded into the fallback during this outage: the fallback owns them until the
    /// resync, even once deleted there.
    seeded: HashSet<String>,
}

impl Copy {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        if let Some(old) = self.used.insert(key.to_string(), self.tick) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, key.to_string());
    }

    fn forget(&mut self, key: &str) {
        if let Some(old) = self.used.remove(key) {
            self.order.remove(&old);
        }
        self.ks.put_entry(key.to_string(), None);
    }

    fn put(&mut self, key: &str, entry: Option<Entry>, max_bytes: u64) -> u64 {
        match entry {
            None => {
                self.forget(key);
                0
            }
            Some(entry) => {
                self.ks.put_entry(key.to_string(), Some(entry));
                self.touch(key);
                self.evict(max_bytes)
            }
        }
    }

    /// Drops the least recently used keys until the copy fits; how many.
    fn evict(&mut self, max_bytes: u64) -> u64 {
        let mut evicted = 0;
        while self.ks.used_bytes() > max_bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            self.used.remove(&key);
            self.ks.put_entry(key, None);
            evicted += 1;
        }
        evicted
    }
}

/// The saved copy, as `last-known.bin` holds it (after [`MAGIC`], a CRC-32 and a length).
#[derive(Serialize, Deserialize)]
struct Saved {
    as_of_ms: u64,
    epoch: String,
    entries: Vec<(String, Entry)>,
    seeded: Vec<String>,
}

/// The last-known copy. See the module documentation.
#[derive(Debug)]
pub(super) struct LastKnown {
    enabled: bool,
    max_bytes: u64,
    /// Read on every op while Redis answers: swapped whole on a declaration, so a reader
    /// takes no lock.
    rules: arc_swap::ArcSwap<Vec<(String, Matcher, Remembered)>>,
    /// Serialises declarations (read, change, swap).
    declaring: Mutex<()>,
    /// Single keys declared one by one (cache entries), all [`Remembered::State`].
    exact: RwLock<HashSet<String>>,
    /// Whether `exact` holds any key (checked before taking its lock).
    has_exact: AtomicBool,
    copy: Mutex<Copy>,
    /// Keys to read back from Redis, in the order they were marked: state keys, then shared
    /// keys (read back [`SHARED_EVERY`] times less often: the task queues are large and change
    /// with every claim).
    dirty: Mutex<[Dirty; 2]>,
    /// Keys taken from `dirty` whose read-back has not ended yet: still waiting to be read
    /// back, as far as [`LastKnown::usage`] is concerned.
    reading: AtomicUsize,
    /// Where the copy is saved (the file fallback only).
    file: Option<PathBuf>,
    /// The copy changed since it was last saved.
    unsaved: AtomicBool,
    /// Unix ms of the last save.
    saved_at: AtomicU64,
    /// Unix ms Redis was last known to answer (0: never).
    as_of: AtomicU64,
    /// The data epoch this process last saw on Redis (empty: none yet).
    epoch: Mutex<String>,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Dirty {
    keys: std::collections::VecDeque<String>,
    set: HashSet<String>,
}

impl Dirty {
    fn mark(&mut self, key: &str) {
        if self.set.contains(key) {
            return;
        }
        // Full: the oldest entries go, the unmarked ones first among them (dropping one of
        // those loses nothing), until one marked key is given up or there is room.
        while self.keys.len() >= MAX_DIRTY {
            let Some(old) = self.keys.pop_front() else {
                break;
            };
            if self.set.remove(&old) {
                break;
            }
        }
        self.set.insert(key.to_string());
        self.keys.push_back(key.to_string());
    }

    /// Takes up to `n` entries of the queue, oldest first: the keys still marked among them.
    fn take(&mut self, n: usize, into: &mut Vec<String>) {
        let n = n.min(self.keys.len());
        for key in self.keys.drain(..n) {
            // An unmarked key's entry stays in the queue until it comes up: skipped.
            if self.set.remove(&key) {
                into.push(key);
            }
        }
    }

    /// No longer marked (its entry in the queue is skipped when it comes up).
    fn unmark(&mut self, key: &str) {
        self.set.remove(key);
    }
}

impl LastKnown {
    /// The copy for `settings`; with `dir` (the file fallback) it is restored from there. A
    /// damaged file is moved aside and reported at ERROR: the copy starts empty (it only
    /// mirrors Redis; no acknowledged write lives in it).
    pub(super) fn open(settings: &LastKnownSettings, dir: Option<&Path>) -> Self {
        let rules = settings
            .patterns
            .iter()
            .map(|p| (p.clone(), Matcher::new(p), Remembered::State))
            .collect();
        let last_known = Self {
            enabled: settings.enabled,
            max_bytes: settings.max_bytes,
            rules: arc_swap::ArcSwap::from_pointee(rules),
            declaring: Mutex::new(()),
            exact: RwLock::new(HashSet::new()),
            has_exact: AtomicBool::new(false),
            copy: Mutex::new(Copy {
                ks: Keyspace::new(),
                used: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                seeded: HashSet::new(),
            }),
            dirty: Mutex::new([Dirty::default(), Dirty::default()]),
            reading: AtomicUsize::new(0),
            file: dir.filter(|_| settings.enabled).map(|d| d.join(FILE_NAME)),
            unsaved: AtomicBool::new(false),
            saved_at: AtomicU64::new(0),
            as_of: AtomicU64::new(0),
            epoch: Mutex::new(String::new()),
            evicted: AtomicU64::new(0),
        };
        if let Some(path) = &last_known.file {
            match read_saved(path, settings.max_bytes) {
                Ok(Some(saved)) => last_known.restore(saved),
                Ok(None) => {}
                Err(e) => {
                    let aside = path.with_extension(format!("damaged-{}", crate::clock::now_ms()));
                    let moved = std::fs::rename(path, &aside).is_ok();
                    tracing::error!(
                        backend = "file",
                        file = %path.display(),
                        moved_to = %aside.display(),
                        moved,
                        error = %e,
                        "last-known copy unreadable: starting without it (no acknowledged write is lost: those are in the journal)"
                    );
                }
            }
        }
        last_known
    }

    fn restore(&self, saved: Saved) {
        let now = crate::clock::now_ms();
        let mut copy = self.copy.lock();
        for (key, entry) in saved.entries {
            if entry.expire_at.is_none_or(|at| at > now) {
                copy.put(&key, Some(entry), self.max_bytes);
            }
        }
        copy.seeded = saved.seeded.into_iter().collect();
        drop(copy);
        self.as_of.store(saved.as_of_ms, Ordering::Release);
        *self.epoch.lock() = saved.epoch;
    }

    /// Declares keys matching `pattern` remembered, of `kind`.
    pub(super) fn remember(&self, pattern: &str, kind: Remembered) {
        let _declaring = self.declaring.lock();
        let mut rules = Vec::clone(&self.rules.load());
        if !rules.iter().any(|(p, _, k)| *k == kind && p == pattern) {
            // Shared rules first: a key both shared and state is shared (never seeded).
            let rule = (pattern.to_string(), Matcher::new(pattern), kind);
            match kind {
                Remembered::Shared => rules.insert(0, rule),
                _ => rules.push(rule),
            }
            self.rules.store(std::sync::Arc::new(rules));
        }
    }

    /// Declares the single key `key` remembered as [`Remembered::State`] (a cache entry).
    pub(super) fn remember_key(&self, key: &str) {
        if !self.enabled || self.exact.read().contains(key) {
            return;
        }
        let mut exact = self.exact.write();
        if exact.len() < MAX_EXACT_KEYS {
            exact.insert(key.to_string());
            self.has_exact.store(true, Ordering::Release);
        }
    }

    /// How `key` is remembered, if it is.
    pub(super) fn kind(&self, key: &str) -> Option<Remembered> {
        if !self.enabled {
            return None;
        }
        if self.has_exact.load(Ordering::Acquire) && self.exact.read().contains(key) {
            return Some(Remembered::State);
        }
        self.rules
            .load()
            .iter()
            .find(|(_, m, _)| m.matches(key))
            .map(|(_, _, kind)| *kind)
    }

    pub(super) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Records what Redis answered to `op` (see the module documentation).
    pub(super) fn observe(&self, op: &Op, reply: &Reply) {
        if !self.enabled {
            return;
        }
        let whole = match op {
            Op::Get { key } => Some((key, whole_string(reply))),
            Op::HGetAll { key } => Some((key, whole_hash(reply))),
            Op::SMembers { key } => Some((key, whole_set(reply))),
            Op::ZRangeByScore {
                key,
                min,
                max,
                limit: None,
            } if *min == f64::NEG_INFINITY && *max == f64::INFINITY => {
                Some((key, whole_zset(reply)))
            }
            _ => None,
        };
        if let Some((key, data)) = whole {
            if self.kind(key).is_some() {
                self.store_read(key, data);
            }
            return;
        }
        // Writes whose result is known whole: a plain SET, a DEL.
        match op {
            Op::Set {
                key,
                value,
                expiry,
                only_if_absent: false,
            } => {
                if self.kind(key).is_some() {
                    let now = crate::clock::now_ms();
                    let entry = Entry {
                        data: Data::Str(value.clone()),
                        expire_at: expiry.absolute(now).deadline(),
                    };
                    let evicted = self.copy.lock().put(key, Some(entry), self.max_bytes);
                    self.evicted.fetch_add(evicted, Ordering::Relaxed);
                    self.unsaved.store(true, Ordering::Release);
                }
                return;
            }
            Op::Del { keys } => {
                let mut copy = self.copy.lock();
                for key in keys.iter().filter(|k| self.kind(k).is_some()) {
                    copy.forget(key);
                }
                self.unsaved.store(true, Ordering::Release);
                return;
            }
            _ => {}
        }
        let write = op.is_write();
        let eval = matches!(op, Op::Eval { .. });
        for key in op.keys() {
            if self.kind(key).is_none() {
                continue;
            }
            if write {
                if !eval {
                    let mut copy = self.copy.lock();
                    if copy.used.contains_key(key) {
                        let _ = copy.ks.apply(op, crate::clock::now_ms());
                        copy.touch(key);
                        self.unsaved.store(true, Ordering::Release);
                    }
                }
                self.mark_dirty(key);
            } else if !self.copy.lock().used.contains_key(key) {
                self.mark_dirty(key);
            }
        }
    }

    fn store_read(&self, key: &str, data: Option<Data>) {
        let mut copy = self.copy.lock();
        let expire_at = copy
            .ks
            .entry(key, crate::clock::now_ms())
            .and_then(|e| e.expire_at);
        let entry = data.map(|data| Entry { data, expire_at });
        let evicted = copy.put(key, entry, self.max_bytes);
        drop(copy);
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        self.unsaved.store(true, Ordering::Release);
    }

    fn mark_dirty(&self, key: &str) {
        let shared = self.kind(key) == Some(Remembered::Shared);
        self.dirty.lock()[usize::from(shared)].mark(key);
    }

    /// Marks the remembered ones of `keys` for reading back (a script changed them on Redis
    /// without naming them).
    pub(super) fn note_changed<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            if self.kind(key).is_some() {
                self.mark_dirty(key);
            }
        }
    }

    /// Forgets the remembered ones of `keys`, which a script deleted on Redis, and unmarks
    /// them: nothing is left to read back.
    pub(super) fn note_deleted<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let keys: Vec<&str> = keys
            .into_iter()
            .filter(|k| self.kind(k).is_some())
            .collect();
        if keys.is_empty() {
            return;
        }
        {
            let mut dirty = self.dirty.lock();
            for key in &keys {
                for d in dirty.iter_mut() {
                    d.unmark(key);
                }
            }
        }
        let mut copy = self.copy.lock();
        for key in &keys {
            copy.forget(key);
        }
        self.unsaved.store(true, Ordering::Release);
    }

    /// Marks `keys` for reading back (after a resync, the keys the outage touched).
    pub(super) fn mark_all_dirty(&self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            self.mark_dirty(&key);
        }
    }

    /// Up to `n` dirty keys, oldest first, no longer marked: state keys, and shared keys too
    /// when `shared`. They count as waiting to be read back until the caller ends their
    /// read-back: [`LastKnown::read_ended`] once they are stored, or
    /// [`LastKnown::read_again`].
    pub(super) fn take_dirty(&self, n: usize, shared: bool) -> Vec<String> {
        let mut dirty = self.dirty.lock();
        let mut taken = Vec::new();
        dirty[0].take(n, &mut taken);
        if shared {
            let left = n - taken.len();
            dirty[1].take(left, &mut taken);
        }
        self.reading.fetch_add(taken.len(), Ordering::AcqRel);
        taken
    }

    /// Whether `key` is to be read back, or not held at all; unmarks it (the caller reads it
    /// back now when this answers true, then ends the read-back as for
    /// [`LastKnown::take_dirty`]).
    pub(super) fn take_if_stale(&self, key: &str) -> bool {
        let mut dirty = self.dirty.lock();
        let mut marked = false;
        for d in dirty.iter_mut() {
            if d.set.remove(key) {
                d.keys.retain(|k| k != key);
                marked = true;
            }
        }
        if marked {
            // Counted while the lock is held, so that `usage` never misses it.
            self.reading.fetch_add(1, Ordering::AcqRel);
        }
        drop(dirty);
        if marked {
            return true;
        }
        let held = self.copy.lock().used.contains_key(key);
        if !held {
            self.reading.fetch_add(1, Ordering::AcqRel);
        }
        !held
    }

    /// The read-back of `n` keys taken with [`LastKnown::take_dirty`] or
    /// [`LastKnown::take_if_stale`] ended: they were stored in the copy, or given up.
    pub(super) fn read_ended(&self, n: usize) {
        self.reading.fetch_sub(n, Ordering::AcqRel);
    }

    /// The read-back of `keys` (taken with [`LastKnown::take_dirty`] or
    /// [`LastKnown::take_if_stale`]) failed: they are marked for reading back again, in the
    /// same step that stops counting them as being read.
    pub(super) fn read_again(&self, keys: impl IntoIterator<Item = String>) {
        let kinds: Vec<(String, bool)> = keys
            .into_iter()
            .map(|k| {
                let shared = self.kind(&k) == Some(Remembered::Shared);
                (k, shared)
            })
            .collect();
        let mut dirty = self.dirty.lock();
        for (key, shared) in &kinds {
            dirty[usize::from(*shared)].mark(key);
        }
        self.reading.fetch_sub(kinds.len(), Ordering::AcqRel);
    }

    /// Whether keys wait to be read back (shared ones counted when `shared`).
    pub(super) fn has_dirty(&self, shared: bool) -> bool {
        let dirty = self.dirty.lock();
        !dirty[0].keys.is_empty() || (shared && !dirty[1].keys.is_empty())
    }

    /// Stores what the refresh script read back for `keys` (see [`refresh_script`]).
    pub(super) fn store_refreshed(&self, keys: &[String], reply: Reply, now_ms: u64) {
        let Reply::Array(items) = reply else {
            return;
        };
        let mut copy = self.copy.lock();
        let mut evicted = 0;
        for (key, item) in keys.iter().zip(items) {
            let entry = parse_dumped(item, now_ms);
            evicted += copy.put(key, entry, self.max_bytes);
        }
        drop(copy);
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        self.unsaved.store(true, Ordering::Release);
    }

    /// The last-known entry of `key`, if held and not expired.
    pub(super) fn get(&self, key: &str, now_ms: u64) -> Option<Entry> {
        let mut copy = self.copy.lock();
        let entry = copy.ks.entry(key, now_ms).cloned()?;
        copy.touch(key);
        Some(entry)
    }

    /// Whether `key` was seeded into the fallback during this outage; marks it seeded.
    pub(super) fn seed_once(&self, key: &str) -> bool {
        let mut copy = self.copy.lock();
        let first = copy.seeded.insert(key.to_string());
        if first {
            self.unsaved.store(true, Ordering::Release);
        }
        !first
    }

    /// Marks keys seeded (restored from the journal of a crashed process).
    pub(super) fn mark_seeded(&self, keys: impl IntoIterator<Item = String>) {
        let mut copy = self.copy.lock();
        copy.seeded.extend(keys);
    }

    /// The outage is over: the keys it seeded, no longer marked (the caller reads them back).
    pub(super) fn end_outage(&self) -> Vec<String> {
        let mut copy = self.copy.lock();
        self.unsaved.store(true, Ordering::Release);
        copy.seeded.drain().collect()
    }

    /// Every held entry of [`Remembered::State`] keys (written back to a Redis that lost its
    /// data), in batches of at most `n`.
    pub(super) fn state_entries(&self, now_ms: u64) -> Vec<(String, Entry)> {
        let copy = self.copy.lock();
        copy.ks
            .entries(now_ms)
            .filter(|(k, _)| self.kind(k) == Some(Remembered::State))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Keys and bytes held, keys evicted since start, and keys waiting to be read back.
    pub(super) fn usage(&self) -> (usize, u64, u64, usize) {
        // Under the marks' lock: a key moves between the marks and `reading` under it, so
        // it is counted once, in one or the other.
        let pending = {
            let dirty = self.dirty.lock();
            dirty[0].keys.len() + dirty[1].keys.len() + self.reading.load(Ordering::Acquire)
        };
        let copy = self.copy.lock();
        (
            copy.used.len(),
            copy.ks.used_bytes(),
            self.evicted.load(Ordering::Relaxed),
            pending,
        )
    }

    /// Notes that Redis answered at `now_ms`.
    pub(super) fn contact(&self, now_ms: u64) {
        self.as_of.store(now_ms, Ordering::Release);
    }

    pub(super) fn as_of_ms(&self) -> Option<u64> {
        match self.as_of.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
        }
    }

    pub(super) fn epoch(&self) -> String {
        self.epoch.lock().clone()
    }

    pub(super) fn set_epoch(&self, epoch: &str) {
        let mut current = self.epoch.lock();
        if *current != epoch {
            *current = epoch.to_string();
            self.unsaved.store(true, Ordering::Release);
        }
    }

    /// Saves the copy: at once with `now` (as an outage begins: its time is what the copy is
    /// as of), else when it changed and the last save is older than [`SAVE_INTERVAL_MS`]. Atomic: a temporary file renamed over the old one.
    pub(super) fn save_if_due(&self, now_ms: u64, now: bool) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if !now && !self.unsaved.load(Ordering::Acquire) {
            return Ok(());
        }
        if !now && now_ms < self.saved_at.load(Ordering::Acquire) + SAVE_INTERVAL_MS {
            return Ok(());
        }
        self.unsaved.store(false, Ordering::Release);
        let saved = {
            let copy = self.copy.lock();
            Saved {
                as_of_ms: self.as_of.load(Ordering::Acquire),
                epoch: self.epoch(),
                entries: copy
                    .ks
                    .entries(now_ms)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect(),
                seeded: copy.seeded.iter().cloned().collect(),
            }
        };
        let result = write_saved(path, &saved);
        if result.is_err() {
            self.unsaved.store(true, Ordering::Release);
        }
        self.saved_at.store(now_ms, Ordering::Release);
        result
    }
}

fn whole_string(reply: &Reply) -> Option<Data> {
    match reply {
        Reply::Str(s) => Some(Data::Str(s.clone())),
        _ => None,
    }
}

fn whole_hash(reply: &Reply) -> Option<Data> {
    let Reply::Array(items) = reply else {
        return None;
    };
    let map: HashMap<String, String> = items
        .chunks_exact(2)
        .filter_map(|p| Some((text(&p[0])?, text(&p[1])?)))
        .collect();
    (!map.is_empty()).then_some(Data::Hash(map))
}

fn whole_set(reply: &Reply) -> Option<Data> {
    let Reply::Array(items) = reply else {
        return None;
    };
    let set: HashSet<String> = items.iter().filter_map(text).collect();
    (!set.is_empty()).then_some(Data::Set(set))
}

fn whole_zset(reply: &Reply) -> Option<Data> {
    let pairs = reply.clone().into_scored();
    (!pairs.is_empty()).then(|| Data::ZSet(ZSet::from_scored(pairs)))
}

fn text(reply: &Reply) -> Option<String> {
    reply.clone().into_opt_string()
}

/// One key as the refresh script returns it: `{type, pttl, payload}`.
fn parse_dumped(item: Reply, now_ms: u64) -> Option<Entry> {
    let Reply::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let payload = parts.pop()?;
    let pttl = parts.pop()?.as_int();
    let kind = parts.pop()?.into_opt_string()?;
    let data = match kind.as_str() {
        "string" => match payload {
            Reply::Array(mut v) if v.len() == 1 => whole_string(&v.remove(0)),
            _ => None,
        },
        "hash" => whole_hash(&payload),
        "set" => whole_set(&payload),
        "zset" => whole_zset(&payload),
        "list" => match payload {
            Reply::Array(items) => {
                let list: std::collections::VecDeque<String> =
                    items.iter().filter_map(text).collect();
                (!list.is_empty()).then_some(Data::List(list))
            }
            _ => None,
        },
        // "none" (gone), "big" (past max_members) and types botfleet does not copy.
        _ => None,
    }?;
    let expire_at = (pttl > 0).then(|| now_ms + pttl as u64);
    Some(Entry { data, expire_at })
}

/// Reads keys back: for each key `{type, pttl, payload}`, `type` "big" for a collection past
/// ARGV[1] members. Redis only (a read of Redis by definition), never replayed.
pub(super) fn refresh_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(
            "last-known-read",
            r#"
local max = tonumber(ARGV[1])
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local v = {}
  if t == 'string' then
    v = {redis.call('GET', k)}
  elseif t == 'hash' then
    if redis.call('HLEN', k) <= max then v = redis.call('HGETALL', k) else t = 'big' end
  elseif t == 'set' then
    if redis.call('SCARD', k) <= max then v = redis.call('SMEMBERS', k) else t = 'big' end
  elseif t == 'zset' then
    if redis.call('ZCARD', k) <= max then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') else t = 'big' end
  elseif t == 'list' then
    if redis.call('LLEN', k) <= max then v = redis.call('LRANGE', k, 0, -1) else t = 'big' end
  end
  out[i] = {t, redis.call('PTTL', k), v}
end
return out
"#,
            |_, _, _, _| {
                Err(super::LocalError::Script(
                    "last-known-read runs on Redis only".into(),
                ))
            },
        )
    })
}

/// Writes keys back to a Redis that lost its data, each only if absent: ARGV holds, per key,
/// `type, pexpireat (0: none), n, then n values` (a zset's as member, score pairs). Answers
/// the number written.
pub(super) fn restore_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(
            "last-known-restore",
            r#"
local a = 1
local written = 0
for _, k in ipairs(KEYS) do
  local t = ARGV[a]
  local at = tonumber(ARGV[a + 1])
  local n = tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + n
  if redis.call('EXISTS', k) == 0 then
    if t == 'string' then
      redis.call('SET', k, ARGV[first])
    elseif t == 'hash' then
      for i = first, first + n - 1, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
    elseif t == 'set' then
      for i = first, first + n - 1 do redis.call('SADD', k, ARGV[i]) end
    elseif t == 'zset' then
      for i = first, first + n - 1, 2 do redis.call('ZADD', k, ARGV[i + 1], ARGV[i]) end
    elseif t == 'list' then
      for i = first, first + n - 1 do redis.call('RPUSH', k, ARGV[i]) end
    end
    if at > 0 and redis.call('EXISTS', k) == 1 then redis.call('PEXPIREAT', k, at) end
    written = written + 1
  end
end
return written
"#,
            |_, _, _, _| {
                Err(super::LocalError::Script(
                    "last-known-restore runs on Redis only".into(),
                ))
            },
        )
    })
}

/// The restore script's arguments for one entry.
pub(super) fn restore_args(entry: &Entry, out: &mut Vec<String>) {
    let (kind, values): (&str, Vec<String>) = match &entry.data {
        Data::Str(s) => ("string", vec![s.clone()]),
        Data::Hash(h) => (
            "hash",
            h.iter().flat_map(|(f, v)| [f.clone(), v.clone()]).collect(),
        ),
        Data::Set(s) => ("set", s.iter().cloned().collect()),
        Data::ZSet(z) => (
            "zset",
            z.scored()
                .flat_map(|(m, s)| [m.to_string(), super::op::format_score(s)])
                .collect(),
        ),
        Data::List(l) => ("list", l.iter().cloned().collect()),
    };
    out.push(kind.to_string());
    out.push(entry.expire_at.unwrap_or(0).to_string());
    out.push(values.len().to_string());
    out.extend(values);
}

fn write_saved(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let payload = postcard::to_allocvec(saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        f.write_all(&(payload.len() as u64).to_le_bytes())?;
        f.write_all(&payload)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// The saved copy, `None` when there is none. Every length is checked against the file's
/// size and a bound before anything is allocated.
fn read_saved(path: &Path, max_bytes: u64) -> std::io::Result<Option<Saved>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut header = [0u8; 20];
    f.read_exact(&mut header)
        .map_err(|_| bad("shorter than its header"))?;
    if &header[..8] != MAGIC {
        return Err(bad("not a last-known file of this version"));
    }
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len_bytes);
    // The encoding of a copy of max_bytes stays well inside 4 × max_bytes + 1 MiB.
    let bound = max_bytes.saturating_mul(4).saturating_add(1 << 20);
    if len != size.saturating_sub(20) || len > bound {
        return Err(bad("length does not match the file"));
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    postcard::from_bytes(&payload)
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64) -> LastKnownSettings {
        LastKnownSettings {
            max_bytes,
            ..LastKnownSettings::default()
        }
    }

    fn get(key: &str) -> Op {
        Op::Get { key: key.into() }
    }

    #[test]
    fn patterns_match_as_globs_and_shared_wins() {
        let lk = LastKnown::open(&settings(1 << 20), None);
        lk.remember("bot:*", Remembered::State);
        lk.remember("bot:tasks:*", Remembered::Shared);
        lk.remember("hazards-EASY", Remembered::State);
        lk.remember("fairness:*:*", Remembered::State);
        assert_eq!(lk.kind("bot:state"), Some(Remembered::State));
        assert_eq!(lk.kind("bot:tasks:queue"), Some(Remembered::Shared));
        assert_eq!(lk.kind("hazards-EASY"), Some(Remembered::State));
        assert_eq!(lk.kind("hazards-HARD"), None);
        assert_eq!(lk.kind("fairness:u:a"), Some(Remembered::State));
        assert_eq!(lk.kind("other"), None);
    }

    #[test]
    fn a_key_noted_deleted_is_forgotten_and_not_read_back() {
        let lk = LastKnown::open(&settings(1 << 20), None);
        lk.remember("task:*", Remembered::State);
        lk.observe(&get("task:1"), &Reply::Str("v".into()));
        lk.note_changed(["task:1", "task:2", "task:3"]);
        lk.note_deleted(["task:1", "task:2", "other"]);
        assert!(lk.get("task:1", 0).is_none(), "the copy forgot it");
        assert_eq!(lk.take_dirty(10, false), vec!["task:3".to_string()]);
        assert!(!lk.has_dirty(false) || lk.take_dirty(10, false).is_empty());
        // Marked again after it was unmarked: read back once.
        lk.note_changed(["task:2"]);
        lk.note_deleted(["task:2"]);
        lk.note_changed(["task:2"]);
        assert_eq!(lk.take_dirty(10, false), vec!["task:2".to_string()]);
        assert!(lk.take_dirty(10, false).is_empty());
    }

    #[test]
    fn a_key_being_read_back_still_counts_as_waiting() {
        let lk = LastKnown::open(&settings(1 << 20), None);
        lk.remember("task:*", Remembered::State);
        lk.remember("queue:*", Remembered::Shared);
        let waiting = |lk: &LastKnown| lk.usage().3;
        lk.note_changed(["task:1", "task:2", "queue:a"]);
        assert_eq!(waiting(&lk), 3);
        // Taken for a read-back: still waiting until the read-back ends.
        let taken = lk.take_dirty(10, false);
        assert_eq!(taken, vec!["task:1".to_string(), "task:2".to_string()]);
        assert!(!lk.has_dirty(false));
        assert_eq!(waiting(&lk), 3);
        // Failed: marked again, counted once.
        lk.read_again(taken);
        assert_eq!(waiting(&lk), 3);
        assert!(lk.has_dirty(false));
        let taken = lk.take_dirty(10, true);
        assert_eq!(taken.len(), 3);
        lk.read_ended(taken.len());
        assert_eq!(waiting(&lk), 0);
        // A key read back on demand counts while it is read, whether it was marked or is
        // not held at all; one held and unmarked is not read back.
        lk.note_changed(["task:3"]);
        assert!(lk.take_if_stale("task:3"));
        assert!(lk.take_if_stale("task:4"));
        assert_eq!(waiting(&lk), 2);
        lk.read_again(["task:3".to_string()]);
        lk.read_ended(1);
        assert_eq!(waiting(&lk), 1);
        assert_eq!(lk.take_dirty(10, false), vec!["task:3".to_string()]);
        lk.read_ended(1);
        assert_eq!(waiting(&lk), 0);
        lk.observe(&get("task:5"), &Reply::Str("v".into()));
        assert!(!lk.take_if_stale("task:5"));
        assert_eq!(waiting(&lk), 0);
    }

    #[test]
    fn whole_reads_are_stored_and_writes_mark_dirty() {
        let lk = LastKnown::open(&settings(1 << 20), None);
        lk.remember("k*", Remembered::State);
        lk.observe(&get("k1"), &Reply::Str("v".into()));
        assert_eq!(lk.get("k1", 0).map(|e| e.data), Some(Data::Str("v".into())));
        assert!(!lk.has_dirty(true), "a whole read needs no read-back");
        let set = Op::Set {
            key: "k1".into(),
            value: "w".into(),
            expiry: super::super::op::Expiry::Never,
            only_if_absent: false,
        };
        lk.observe(&set, &Reply::Str("OK".into()));
        assert_eq!(
            lk.get("k1", 0).map(|e| e.data),
            Some(Data::Str("w".into())),
            "a write applies to a held key at once"
        );
        assert!(!lk.has_dirty(true), "a plain SET is known whole");
        lk.observe(
            &Op::IncrBy {
                key: "k2".into(),
                by: 1,
            },
            &Reply::Int(1),
        );
        assert_eq!(lk.take_dirty(10, false), vec!["k2".to_string()]);
        lk.observe(&get("other"), &Reply::Str("v".into()));
        assert!(
            lk.get("other", 0).is_none(),
            "unremembered keys are not copied"
        );
        lk.observe(&get("k1"), &Reply::Nil);
        assert!(
            lk.get("k1", 0).is_none(),
            "a key read as gone leaves the copy"
        );
    }

    #[test]
    fn the_bound_evicts_least_recently_used_first() {
        let lk = LastKnown::open(&settings(4_000), None);
        lk.remember("*", Remembered::State);
        let value = "x".repeat(500);
        for i in 0..50 {
            lk.observe(&get(&format!("k{i}")), &Reply::Str(value.clone()));
            // k0 stays in use, so it stays.
            assert!(lk.get("k0", 0).is_some());
        }
        let (keys, bytes, evicted, _) = lk.usage();
        assert!(bytes <= 4_000, "{bytes} bytes held past the bound");
        assert!(keys < 50 && evicted > 0);
        assert!(lk.get("k0", 0).is_some(), "the key in use was evicted");
        assert!(lk.get("k1", 0).is_none(), "the oldest unused key stayed");
    }

    #[test]
    fn the_saved_copy_survives_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lk = LastKnown::open(&settings(1 << 20), Some(dir.path()));
        lk.remember("*", Remembered::State);
        lk.observe(&get("a"), &Reply::Str("1".into()));
        lk.contact(1234);
        lk.seed_once("a");
        lk.save_if_due(10_000, true).unwrap();
        let again = LastKnown::open(&settings(1 << 20), Some(dir.path()));
        again.remember("*", Remembered::State);
        assert_eq!(
            again.get("a", 0).map(|e| e.data),
            Some(Data::Str("1".into()))
        );
        assert_eq!(again.as_of_ms(), Some(1234));
        assert!(again.seed_once("a"), "the seeded mark was lost");

        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = LastKnown::open(&settings(1 << 20), Some(dir.path()));
        assert!(damaged.get("a", 0).is_none());
        assert!(!path.exists(), "the damaged file was not moved aside");

        // A length field claiming more than the file holds allocates nothing and is refused.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0; 4]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(read_saved(&path, 1 << 20).is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(read_saved(&path, 1 << 20).is_err());
    }

    #[test]
    fn dumped_keys_parse_by_type() {
        let s = |v: &str| Reply::Str(v.into());
        let item = Reply::Array(vec![
            s("hash"),
            Reply::Int(1_000),
            Reply::Array(vec![s("f"), s("v")]),
        ]);
        let entry = parse_dumped(item, 5).unwrap();
        assert_eq!(entry.expire_at, Some(1_005));
        assert!(matches!(entry.data, Data::Hash(h) if h["f"] == "v"));
        let gone = Reply::Array(vec![s("none"), Reply::Int(-2), Reply::Array(vec![])]);
        assert!(parse_dumped(gone, 5).is_none());
        let big = Reply::Array(vec![s("big"), Reply::Int(-1), Reply::Array(vec![])]);
        assert!(parse_dumped(big, 5).is_none());
    }
}
