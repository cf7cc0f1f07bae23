//! The file fallback's journal: every change of the fallback keyspace and its outbox, appended
//! to `journal-GEN.log` before the write is acknowledged, plus a `snapshot.bin` that compaction
//! writes so the journal does not grow without bound.
//!
//! A record reaches the kernel (`write(2)`) before the caller is answered, so `kill -9` of the
//! process loses nothing acknowledged; `fsync` runs every `storage.file.fsync_interval_ms`
//! (or before every answer when 0), which bounds what a power loss can take.
//!
//! Frames are `[len: u32 LE][crc32: u32 LE][postcard payload]`. A torn or corrupt tail (the
//! process died inside a `write`) ends the journal: it is truncated there on open.
//!
//! The records ([`Record`]) are the writes applied (with their clock), the keys a script
//! changed, outbox appends, acknowledgements of what was replayed, superseded outbox entries,
//! and the clearing of the store after a resync. The outbox's id lives in the snapshot, so it
//! is the same after a restart and the replay markers in Redis stay meaningful.
//!
//! Compaction runs once the journal is past `storage.file.compact_min_bytes` and more than
//! twice the live data. It writes the whole state as snapshot generation `g + 1`, renames it
//! into place, starts `journal-(g+1).log` and deletes `journal-g.log`. On open only the
//! journal of the snapshot's generation is replayed, so a crash between those steps never
//! applies a record twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::keyspace::Entry;
use super::op::Op;
use super::outbox::OutboxEntry;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A built-in write applied at `at_ms` (replayed with that clock).
    Op {
        /// The write, expiries absolute.
        op: Op,
        /// When it was applied.
        at_ms: u64,
    },
    /// The keys a script changed, with their new entries (`None`: deleted).
    Effects(Vec<(String, Option<Entry>)>),
    /// An entry appended to the outbox.
    Outbox(OutboxEntry),
    /// Outbox entries up to this sequence number were replayed to Redis.
    Acked(u64),
    /// Keyspace and outbox were emptied (Redis holds everything again).
    Cleared,
    /// The outbox entry of this sequence number was replaced by a later write of the same
    /// supersede tag: it is not replayed. (Last, so journals written before it still read.)
    Superseded(u64),
}

/// The state a journal directory holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Generation: the journal replayed on top is `journal-GEN.log`.
    pub generation: u64,
    /// Outbox identity (stable across restarts, so replay markers stay meaningful).
    pub outbox_id: String,
    /// Next outbox sequence number.
    pub next_seq: u64,
    /// Live keys.
    pub entries: Vec<(String, Entry)>,
    /// Waiting outbox entries.
    pub outbox: Vec<OutboxEntry>,
}

/// An open journal.
pub struct Journal {
    dir: PathBuf,
    generation: u64,
    file: File,
    bytes: u64,
    fsync_interval_ms: u64,
    last_sync: Instant,
    dirty: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .field("bytes", &self.bytes)
            .finish()
    }
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation}.log"))
}

fn io_err(e: postcard::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Journal {
    /// Opens (creating) the directory; returns the journal, the snapshot and the records to
    /// apply on top of it, in order.
    pub fn open(
        dir: &Path,
        fsync_interval_ms: u64,
    ) -> io::Result<(Journal, Snapshot, Vec<Record>)> {
        fs::create_dir_all(dir)?;
        let snapshot_path = dir.join("snapshot.bin");
        let snapshot = match fs::read(&snapshot_path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(e),
        };
        let path = journal_path(dir, snapshot.generation);
        let (records, good_len) = read_records(&path)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() > good_len {
            tracing::warn!(path = %path.display(), good_len, "journal has a torn tail; truncating");
            file.set_len(good_len)?;
        }
        // Journals of older generations are left over from a compaction that crashed.
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(g) = name
                .strip_prefix("journal-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                if g != snapshot.generation {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            generation: snapshot.generation,
            file,
            bytes: good_len,
            fsync_interval_ms,
            last_sync: Instant::now(),
            dirty: false,
        };
        Ok((journal, snapshot, records))
    }

    /// Bytes in the current journal file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends records in one `write`; they are in the kernel when this returns.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(128);
        for record in records {
            let payload = postcard::to_allocvec(record).map_err(io_err)?;
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        self.file.write_all(&buf)?;
        self.bytes += buf.len() as u64;
        self.dirty = true;
        if self.fsync_interval_ms == 0 {
            self.sync()?;
        }
        Ok(())
    }

    /// `fsync`s when the interval has passed since the last one (called by the sweeper).
    pub fn sync_if_due(&mut self) -> io::Result<()> {
        if self.dirty && self.last_sync.elapsed().as_millis() as u64 >= self.fsync_interval_ms {
            self.sync()?;
        }
        Ok(())
    }

    /// `fsync`s now.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Replaces the journal by a snapshot of `state` (whose generation is set here).
    pub fn compact(&mut self, mut state: Snapshot) -> io::Result<()> {
        let next = self.generation + 1;
        state.generation = next;
        let bytes = postcard::to_allocvec(&state).map_err(io_err)?;
        let tmp = self.dir.join("snapshot.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        let new_journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_path(&self.dir, next))?;
        fs::rename(&tmp, self.dir.join("snapshot.bin"))?;
        File::open(&self.dir)?.sync_all()?;
        let old = journal_path(&self.dir, self.generation);
        self.file = new_journal;
        self.generation = next;
        self.bytes = 0;
        self.dirty = false;
        fs::remove_file(old)?;
        Ok(())
    }
}

/// Reads every intact record; returns them and the length of the intact prefix.
fn read_records(path: &Path) -> io::Result<(Vec<Record>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut good = 0u64;
    let mut header = [0u8; 8];
    loop {
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut payload = vec![0u8; len];
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(&payload) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
        good += 8 + len as u64;
    }
    Ok((records, good))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::op::Expiry;

    fn set(key: &str) -> Record {
        Record::Op {
            op: Op::Set {
                key: key.into(),
                value: "v".into(),
                expiry: Expiry::Never,
                only_if_absent: false,
            },
            at_ms: 1,
        }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _, records) = Journal::open(dir.path(), 1000).unwrap();
            assert!(records.is_empty());
            j.append(&[set("a"), set("b")]).unwrap();
        }
        // A torn frame: a header promising more bytes than follow.
        let path = journal_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9]).unwrap();
        drop(f);
        let (mut j, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records, vec![set("a"), set("b")]);
        j.append(&[set("c")]).unwrap();
        drop(j);
        let (_, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records, vec![set("a"), set("b"), set("c")]);
    }

    #[test]
    fn compaction_starts_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = Journal::open(dir.path(), 0).unwrap();
        j.append(&[set("a")]).unwrap();
        j.compact(Snapshot {
            outbox_id: "x".into(),
            next_seq: 4,
            ..Snapshot::default()
        })
        .unwrap();
        j.append(&[set("b")]).unwrap();
        drop(j);
        let (_, snap, records) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(snap.generation, 1);
        assert_eq!(snap.outbox_id, "x");
        assert_eq!(records, vec![set("b")]);
        assert!(!journal_path(dir.path(), 0).exists());
    }
}
