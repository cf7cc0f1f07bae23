//! The fallback store: the keyspace, the outbox and (for the file fallback) the journal,
//! behind one mutex.
//!
//! One `parking_lot::Mutex` rather than a sharded map: scripts change several keys atomically,
//! the outbox order must follow the order writes were applied in, and the lock is never held
//! across an `.await` (every method here is synchronous and short).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::journal::{Journal, Record, Snapshot};
use super::keyspace::{Data, Entry, Keyspace, ZSet};
use super::last_known::{LastKnown, Remembered};
use super::op::{Op, Reply};
use super::outbox::{OutboxEntry, VersionCheck};
use super::script::LocalScript;
use super::StorageError;

/// Keyspace, outbox and journal.
#[derive(Debug)]
pub struct Local {
    state: Mutex<State>,
    max_bytes: u64,
    max_outbox: usize,
    compact_min_bytes: u64,
    last_known: Arc<LastKnown>,
}

#[derive(Debug)]
struct State {
    ks: Keyspace,
    outbox: VecDeque<OutboxEntry>,
    outbox_id: String,
    next_seq: u64,
    journal: Option<Journal>,
    /// The newest outbox entry of each supersede tag (see [`Local::execute`]).
    latest: HashMap<String, u64>,
}

/// What the caller asks of [`Local::execute`] about the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxMode {
    /// Fallback-only store: nothing is replayed anywhere.
    No,
    /// Degraded: record writes for replay.
    Yes,
}

impl Local {
    /// A memory-only fallback.
    pub fn memory(max_bytes: u64, max_outbox: usize, last_known: Arc<LastKnown>) -> Self {
        Self {
            state: Mutex::new(State {
                ks: Keyspace::new(),
                outbox: VecDeque::new(),
                outbox_id: new_outbox_id(),
                next_seq: 1,
                journal: None,
                latest: HashMap::new(),
            }),
            max_bytes,
            max_outbox,
            compact_min_bytes: u64::MAX,
            last_known,
        }
    }

    /// A journaled fallback in `dir`, restored from what an earlier process left there.
    pub fn file(
        dir: &Path,
        fsync_interval_ms: u64,
        compact_min_bytes: u64,
        max_bytes: u64,
        max_outbox: usize,
        last_known: Arc<LastKnown>,
    ) -> std::io::Result<Self> {
        let (journal, snapshot, records) = Journal::open(dir, fsync_interval_ms)?;
        let mut ks = Keyspace::new();
        // Keys the fallback owns since the last resync (it holds them, or deleted them): the
        // last-known copy must not seed them again after a crash.
        let mut owned: HashSet<String> = HashSet::new();
        for (key, entry) in snapshot.entries {
            owned.insert(key.clone());
            ks.put_entry(key, Some(entry));
        }
        let mut outbox: VecDeque<OutboxEntry> = snapshot.outbox.into();
        let mut next_seq = snapshot.next_seq.max(1);
        for record in records {
            match record {
                Record::Op { op, at_ms } => {
                    owned.extend(op.keys().into_iter().map(str::to_string));
                    let _ = ks.apply(&op, at_ms);
                }
                Record::Effects(changes) => {
                    for (key, entry) in changes {
                        owned.insert(key.clone());
                        ks.put_entry(key, entry);
                    }
                }
                Record::Outbox(entry) => {
                    next_seq = next_seq.max(entry.seq + 1);
                    outbox.push_back(entry);
                }
                Record::Acked(upto) => outbox.retain(|e| e.seq > upto),
                Record::Superseded(seq) => remove_seq(&mut outbox, seq),
                Record::Cleared => {
                    ks.clear();
                    outbox.clear();
                    owned.clear();
                }
            }
        }
        if !outbox.is_empty() || !owned.is_empty() {
            last_known.mark_seeded(owned);
        }
        let outbox_id = if snapshot.outbox_id.is_empty() {
            new_outbox_id()
        } else {
            snapshot.outbox_id
        };
        let local = Self {
            state: Mutex::new(State {
                ks,
                outbox,
                outbox_id,
                next_seq,
                journal: Some(journal),
                latest: HashMap::new(),
            }),
            max_bytes,
            max_outbox,
            compact_min_bytes,
            last_known,
        };
        // Persist the outbox id at once, so that replay markers stay meaningful after a crash.
        local.compact_now()?;
        Ok(local)
    }

    /// Executes `op` on the keyspace; a write is journaled and, when asked, recorded in the
    /// outbox. `guard` runs under the lock first: when it answers false nothing happens and
    /// `Ok(None)` is returned (the caller's mode changed meanwhile).
    ///
    /// A write with a `supersede` tag replaces the outbox entry of the last write with the
    /// same tag, if it still waits: only the newest of them is replayed (within one process
    /// lifetime; entries restored from the journal are not matched).
    ///
    /// After a write, the writes `then` are applied under the same lock, journaled but never
    /// recorded in the outbox (see `Storage::eval_withholding`).
    #[allow(clippy::too_many_arguments)]
    pub fn execute(
        &self,
        op: &Op,
        script: Option<LocalScript>,
        now_ms: u64,
        outbox: OutboxMode,
        version: Option<VersionCheck>,
        supersede: Option<&str>,
        then: &[Op],
        guard: impl FnOnce() -> bool,
    ) -> Result<Option<Reply>, StorageError> {
        let mut st = self.state.lock();
        if !guard() {
            return Ok(None);
        }
        let write = op.is_write();
        if outbox == OutboxMode::Yes && self.last_known.is_enabled() {
            if let Some(reply) = self.recall(&mut st, op, now_ms)? {
                return Ok(Some(reply));
            }
        }
        let replaced = match supersede {
            Some(tag) if write && outbox == OutboxMode::Yes => st
                .latest
                .get(tag)
                .copied()
                .filter(|seq| find_seq(&st.outbox, *seq).is_some()),
            _ => None,
        };
        if write {
            if st.ks.used_bytes().saturating_add(op_size(op)) > self.max_bytes {
                return Err(StorageError::MemoryFull {
                    max_bytes: self.max_bytes,
                });
            }
            if outbox == OutboxMode::Yes && replaced.is_none() && st.outbox.len() >= self.max_outbox
            {
                return Err(StorageError::OutboxFull {
                    max_entries: self.max_outbox,
                });
            }
        }
        let journaled = st.journal.is_some();
        let reply = match (op, script) {
            (Op::Eval { keys, args, .. }, Some(local)) => {
                if journaled {
                    st.ks.record_touched();
                }
                let result = local(&mut st.ks, now_ms, keys, args);
                let effects = if journaled {
                    st.ks.take_touched()
                } else {
                    Vec::new()
                };
                let reply = result.map_err(StorageError::from)?;
                if !effects.is_empty() {
                    journal(&mut st, &[Record::Effects(effects)])?;
                }
                reply
            }
            _ => st.ks.apply(op, now_ms)?,
        };
        if !write {
            return Ok(Some(reply));
        }
        let abs = op.clone().with_absolute_expiry(now_ms);
        let mut records = Vec::with_capacity(2 + then.len());
        if journaled && !matches!(op, Op::Eval { .. }) {
            records.push(Record::Op {
                op: abs.clone(),
                at_ms: now_ms,
            });
        }
        for next in then.iter().filter(|next| next.is_write()) {
            // What it answers does not matter: a write that does not apply changes nothing.
            if st.ks.apply(next, now_ms).is_ok() && journaled {
                records.push(Record::Op {
                    op: next.clone().with_absolute_expiry(now_ms),
                    at_ms: now_ms,
                });
            }
        }
        if outbox == OutboxMode::Yes {
            let entry = OutboxEntry {
                seq: st.next_seq,
                op: abs,
                version,
            };
            st.next_seq += 1;
            if let Some(tag) = supersede {
                st.latest.insert(tag.to_string(), entry.seq);
            }
            if let Some(old) = replaced {
                remove_seq(&mut st.outbox, old);
                if journaled {
                    records.push(Record::Superseded(old));
                }
            }
            if journaled {
                records.push(Record::Outbox(entry.clone()));
            }
            st.outbox.push_back(entry);
        }
        if !records.is_empty() {
            journal(&mut st, &records)?;
        }
        if self.should_compact(&st) {
            compact_locked(&mut st).map_err(StorageError::file)?;
        }
        Ok(Some(reply))
    }

    /// The outbox id and up to `n` entries from its head.
    pub fn peek(&self, n: usize) -> (String, Vec<OutboxEntry>) {
        let st = self.state.lock();
        (
            st.outbox_id.clone(),
            st.outbox.iter().take(n).cloned().collect(),
        )
    }

    /// Removes entries up to `upto` (replayed).
    pub fn ack(&self, upto: u64) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        while st.outbox.front().is_some_and(|e| e.seq <= upto) {
            st.outbox.pop_front();
        }
        if st.journal.is_some() {
            journal(&mut st, &[Record::Acked(upto)])?;
        }
        Ok(())
    }

    /// Under the lock: when the outbox is empty, runs `switch` (the mode change to `redis`)
    /// and empties the keyspace, since Redis now holds everything. Returns whether it did.
    pub fn finish_resync(&self, switch: impl FnOnce()) -> Result<bool, StorageError> {
        let mut st = self.state.lock();
        if !st.outbox.is_empty() {
            return Ok(false);
        }
        switch();
        st.ks.clear();
        st.latest.clear();
        if st.journal.is_some() {
            journal(&mut st, &[Record::Cleared])?;
        }
        // Redis holds what the outage changed: read those keys back into the copy.
        let seeded = self.last_known.end_outage();
        self.last_known.mark_all_dirty(seeded);
        Ok(true)
    }

    /// Writes waiting for Redis.
    pub fn outbox_len(&self) -> usize {
        self.state.lock().outbox.len()
    }

    /// Bytes held by the keyspace.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().ks.used_bytes()
    }

    /// Drops expired keys and `fsync`s the journal when due.
    pub fn maintain(&self, now_ms: u64) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        st.ks.sweep(now_ms);
        match st.journal.as_mut() {
            Some(j) => j.sync_if_due().map_err(StorageError::file),
            None => Ok(()),
        }
    }

    /// The journal is past `compact_min_bytes` and more than twice the live data.
    fn should_compact(&self, st: &State) -> bool {
        st.journal.as_ref().is_some_and(|j| {
            j.bytes() >= self.compact_min_bytes && j.bytes() > st.ks.used_bytes().saturating_mul(2)
        })
    }

    /// `fsync`s the journal (shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        if let Some(j) = st.journal.as_mut() {
            j.sync().map_err(StorageError::file)?;
        }
        Ok(())
    }

    /// During an outage, before `op` runs: seeds the last-known value of each
    /// [`Remembered::State`] key it touches for the first time (journaled, not replayed).
    /// [`Remembered::Shared`] keys are never seeded: a claim sees only this process's own
    /// writes (reads that show them use [`Local::read_known`]).
    fn recall(&self, st: &mut State, op: &Op, now_ms: u64) -> Result<Option<Reply>, StorageError> {
        let lk = &self.last_known;
        for key in op.keys() {
            if lk.kind(key) != Some(Remembered::State)
                || lk.seed_once(key)
                || st.ks.entry(key, now_ms).is_some()
            {
                continue;
            }
            if let Some(entry) = lk.get(key, now_ms) {
                st.ks.put_entry(key.to_string(), Some(entry.clone()));
                if st.journal.is_some() {
                    journal(st, &[Record::Effects(vec![(key.to_string(), Some(entry))])])?;
                }
            }
        }
        Ok(None)
    }

    /// A read of one key as this process knows it during an outage: its own value over the
    /// last-known one (see [`merge`]). Nothing is seeded or recorded.
    pub fn read_known(&self, op: &Op, now_ms: u64) -> Result<Reply, StorageError> {
        let st = self.state.lock();
        let [key] = op.keys()[..] else {
            return st_apply_copy(&st, op, now_ms);
        };
        let merged = merge(st.ks.entry(key, now_ms), self.last_known.get(key, now_ms));
        let mut view = Keyspace::new();
        view.put_entry(key.to_string(), merged);
        Ok(view.apply(op, now_ms)?)
    }

    fn compact_now(&self) -> std::io::Result<()> {
        compact_locked(&mut self.state.lock())
    }
}

/// Writes the state as a snapshot and starts a new journal generation.
fn compact_locked(st: &mut State) -> std::io::Result<()> {
    {
        let now = crate::clock::now_ms();
        let snapshot = Snapshot {
            generation: 0,
            outbox_id: st.outbox_id.clone(),
            next_seq: st.next_seq,
            entries: st
                .ks
                .entries(now)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            outbox: st.outbox.iter().cloned().collect(),
        };
        match st.journal.as_mut() {
            Some(j) => j.compact(snapshot),
            None => Ok(()),
        }
    }
}

fn journal(st: &mut State, records: &[Record]) -> Result<(), StorageError> {
    match st.journal.as_mut() {
        Some(j) => j.append(records).map_err(StorageError::file),
        None => Ok(()),
    }
}

/// Bytes an op may add (its arguments).
/// The index of the entry `seq` (the outbox is sorted by seq).
fn find_seq(outbox: &VecDeque<OutboxEntry>, seq: u64) -> Option<usize> {
    outbox.binary_search_by_key(&seq, |e| e.seq).ok()
}

/// Removes the entry `seq`, if present.
fn remove_seq(outbox: &mut VecDeque<OutboxEntry>, seq: u64) {
    if let Some(i) = find_seq(outbox, seq) {
        outbox.remove(i);
    }
}

/// A shared key as a read during an outage sees it: this process's own value over the
/// last-known one (a union for sets and sorted sets, where its own scores win).
fn merge(own: Option<&Entry>, known: Option<Entry>) -> Option<Entry> {
    match (own, known) {
        (None, known) => known,
        (Some(own), None) => Some(own.clone()),
        (Some(own), Some(known)) => {
            let data = match (&own.data, known.data) {
                (Data::ZSet(mine), Data::ZSet(theirs)) => {
                    let mut pairs: HashMap<String, f64> =
                        theirs.scored().map(|(m, s)| (m.to_string(), s)).collect();
                    pairs.extend(mine.scored().map(|(m, s)| (m.to_string(), s)));
                    Data::ZSet(ZSet::from_scored(pairs))
                }
                (Data::Set(mine), Data::Set(mut theirs)) => {
                    theirs.extend(mine.iter().cloned());
                    Data::Set(theirs)
                }
                (mine, _) => mine.clone(),
            };
            Some(Entry {
                data,
                expire_at: own.expire_at,
            })
        }
    }
}

/// `op` on a copy of the keys it reads (a read of several keys: no merge).
fn st_apply_copy(st: &State, op: &Op, now_ms: u64) -> Result<Reply, StorageError> {
    let mut view = Keyspace::new();
    for key in op.keys() {
        view.put_entry(key.to_string(), st.ks.entry(key, now_ms).cloned());
    }
    Ok(view.apply(op, now_ms)?)
}

fn op_size(op: &Op) -> u64 {
    let (_, args) = op.to_command();
    args.iter().map(|a| a.len() as u64 + 16).sum()
}

fn new_outbox_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
