//! The file fallback's journal: every change of the fallback keyspace and its outbox, appended
//! to `journal-GEN.log` before the write is acknowledged, plus a `snapshot.bin` that compaction
//! writes so the journal does not grow without bound.
//!
//! A record reaches the kernel (`write(2)`) before the caller is answered, so `kill -9` of the
//! process loses nothing acknowledged; `fsync` runs every `storage.file.fsync_interval_ms`
//! (or before every answer when 0), which bounds what a power loss can take.
//!
//! The bytes on disk (a versioned header, then frames with a length, a sequence number and
//! checksums) are described in [`format`]. On open a torn tail (the process died inside a
//! `write`: the last frame cut short) is truncated with a WARN. Damage inside the journal (a
//! frame that does not check, with valid frames after it or a complete frame at the end) keeps
//! every record that checks, moves the damaged file aside and logs the counts at ERROR: the
//! fallback starts with what can be proven, and the loss is never silent. A damaged snapshot
//! refuses the start instead (nothing in it can be proven, and it is the base of everything),
//! with an error naming the file.
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
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::keyspace::Entry;
use super::op::Op;
use super::outbox::OutboxEntry;

mod format;

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
    /// The file's salt (see [`format`]).
    salt: u64,
    /// The `seq` of the next frame.
    next_seq: u64,
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

impl Journal {
    /// Opens (creating) the directory; returns the journal, the snapshot and the records to
    /// apply on top of it, in order.
    ///
    /// A torn tail is cut off (WARN). Damage inside the journal keeps every record that checks,
    /// moves the damaged file aside as `journal-GEN.log.damaged-MS` and logs the counts at
    /// ERROR; the journal is rewritten with the records kept. A snapshot that does not check,
    /// or a file of a format version this build does not know, is an error naming the file
    /// (see [`format::read_snapshot`]).
    pub fn open(
        dir: &Path,
        fsync_interval_ms: u64,
    ) -> io::Result<(Journal, Snapshot, Vec<Record>)> {
        fs::create_dir_all(dir)?;
        let snapshot_path = dir.join("snapshot.bin");
        let snapshot = match format::read_file(&snapshot_path)? {
            Some(bytes) => format::read_snapshot(&snapshot_path, &bytes)?,
            None => Snapshot::default(),
        };
        let path = journal_path(dir, snapshot.generation);
        let data = format::read_file(&path)?.unwrap_or_default();
        let found = format::read_journal(&path, &data)?;
        drop(data);
        let kept = found.records.len();
        let (file, salt, next_seq, bytes) = match (&found.format, &found.damage) {
            (Some(format::Format::V2 { salt }), None) => {
                let file = OpenOptions::new().append(true).open(&path)?;
                if found.torn_bytes > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        good_len = found.good_len,
                        torn_bytes = found.torn_bytes,
                        records = kept,
                        "journal has a torn tail (a write cut short); truncating it"
                    );
                    file.set_len(found.good_len)?;
                    file.sync_all()?;
                }
                (file, *salt, found.last_seq + 1, found.good_len)
            }
            (_, damage) => {
                // Missing, empty, format 1, or damaged: rewrite it as format 2 with every
                // record that checks (the damaged original is kept aside first).
                let aside = match damage {
                    Some(_) => Some(move_aside(&path)?),
                    None => None,
                };
                let (file, salt, bytes) = create_journal(dir, &path, &found.records)?;
                if let (Some(d), Some(aside)) = (damage, aside) {
                    tracing::error!(
                        path = %path.display(),
                        aside = %aside.display(),
                        records_kept = kept,
                        records_lost = d.records_lost,
                        maybe_more_lost = d.maybe_more,
                        bytes_unreadable = d.bytes_unreadable,
                        first_bad_offset = d.first_offset,
                        "journal is damaged: kept every record that checks and moved the damaged \
                         file aside; acknowledged writes in the damaged part are lost"
                    );
                } else if found.torn_bytes > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        torn_bytes = found.torn_bytes,
                        records = kept,
                        "journal has a torn tail (a write cut short); truncating it"
                    );
                }
                (file, salt, kept as u64 + 1, bytes)
            }
        };
        // Journals of older generations are left over from a compaction that crashed.
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(g) = name
                .strip_prefix("journal-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                if g < snapshot.generation {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            generation: snapshot.generation,
            file,
            bytes,
            salt,
            next_seq,
            fsync_interval_ms,
            last_sync: Instant::now(),
            dirty: false,
        };
        Ok((journal, snapshot, found.records))
    }

    /// Bytes in the current journal file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends records in one `write`; they are in the kernel when this returns. A record
    /// over [`format::MAX_RECORD_BYTES`] is refused (nothing is written).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(128);
        for (i, record) in records.iter().enumerate() {
            format::encode_frame(&mut buf, self.salt, self.next_seq + i as u64, record)?;
        }
        self.file.write_all(&buf)?;
        self.next_seq += records.len() as u64;
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
        let bytes = format::encode_snapshot(&state)?;
        let tmp = self.dir.join("snapshot.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        let (new_journal, salt, journal_bytes) =
            create_journal(&self.dir, &journal_path(&self.dir, next), &[])?;
        fs::rename(&tmp, self.dir.join("snapshot.bin"))?;
        File::open(&self.dir)?.sync_all()?;
        let old = journal_path(&self.dir, self.generation);
        self.file = new_journal;
        self.generation = next;
        self.bytes = journal_bytes;
        self.salt = salt;
        self.next_seq = 1;
        self.dirty = false;
        fs::remove_file(old)?;
        Ok(())
    }
}

/// Writes a format-2 journal holding `records` at `path`, atomically (a temporary file,
/// synced, renamed into place, the directory synced). Returns it open for appending, its salt
/// and its length.
fn create_journal(dir: &Path, path: &Path, records: &[Record]) -> io::Result<(File, u64, u64)> {
    let salt = rand::random::<u64>();
    let mut buf = format::journal_header(salt).to_vec();
    for (i, record) in records.iter().enumerate() {
        format::encode_frame(&mut buf, salt, i as u64 + 1, record)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, salt, buf.len() as u64))
}

/// Keeps the damaged journal at `path` as `PATH.damaged-MS` (a hard link, or a copy where
/// links are not supported), for an operator to inspect; its records that check are rewritten
/// in place afterwards.
fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{}", crate::clock::now_ms()));
    let aside = PathBuf::from(name);
    if fs::hard_link(path, &aside).is_err() {
        fs::copy(path, &aside)?;
    }
    Ok(aside)
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

    /// A journal of generation 0 holding `n` records, one append each; returns the records.
    fn journal_of(dir: &Path, n: usize) -> Vec<Record> {
        let (mut j, _, _) = Journal::open(dir, 1000).unwrap();
        let all: Vec<Record> = (0..n).map(|i| set(&format!("key-{i}"))).collect();
        for r in &all {
            j.append(std::slice::from_ref(r)).unwrap();
        }
        all
    }

    fn damaged_files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect()
    }

    fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let path = journal_path(dir, 0);
        let mut bytes = fs::read(&path).unwrap();
        edit(&mut bytes);
        fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_byte_loses_one_record_reported_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let all = journal_of(dir.path(), 600);
        rewrite(dir.path(), |b| {
            let at = b.len() / 10;
            b[at] ^= 0x40;
        });
        let (_, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records.len(), 599, "exactly the damaged record is lost");
        assert!(records.iter().all(|r| all.contains(r)));
        assert_eq!(
            records.last(),
            all.last(),
            "records after the damage are kept"
        );
        let aside = damaged_files(dir.path());
        assert_eq!(aside.len(), 1, "the damaged file is kept aside");
        // The journal was rewritten clean: the next open finds no damage and keeps all.
        let (_, _, again) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(again, records);
        assert_eq!(damaged_files(dir.path()).len(), 1);
    }

    #[test]
    fn the_count_of_records_lost_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        journal_of(dir.path(), 50);
        // Damage spanning several frames in the middle.
        rewrite(dir.path(), |b| {
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 100] {
                *x = 0xA5;
            }
        });
        let path = journal_path(dir.path(), 0);
        let data = fs::read(&path).unwrap();
        let found = format::read_journal(&path, &data).unwrap();
        let damage = found.damage.expect("damage found");
        assert_eq!(found.records.len() as u64 + damage.records_lost, 50);
        assert!(!damage.maybe_more);
        assert!(damage.bytes_unreadable > 0);
    }

    #[test]
    fn a_cut_tail_is_torn_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let all = journal_of(dir.path(), 20);
        rewrite(dir.path(), |b| {
            let len = b.len();
            b.truncate(len - 5);
        });
        let (mut j, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records, all[..19]);
        assert!(damaged_files(dir.path()).is_empty());
        j.append(&[set("next")]).unwrap();
        drop(j);
        let (_, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records.len(), 20);
        assert_eq!(records.last(), Some(&set("next")));
    }

    #[test]
    fn a_damaged_length_in_the_last_frame_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        journal_of(dir.path(), 5);
        let last_len = format::journal_header(0).len()
            + 4 * (20 + postcard::to_allocvec(&set("key-0")).unwrap().len());
        rewrite(dir.path(), |b| b[last_len + 1] ^= 0x01);
        let (_, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(
            damaged_files(dir.path()).len(),
            1,
            "reported, not truncated quietly"
        );
    }

    #[test]
    fn random_bytes_open_without_allocating_their_lengths() {
        use rand::RngCore;
        for (i, len) in [1usize, 7, 64, 4096, 65_536].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = vec![0u8; len];
            rand::thread_rng().fill_bytes(&mut bytes);
            // All zeros read as a preallocated, never written tail, rightly not damage: one
            // draw in 256 for the single byte.
            if bytes.iter().all(|b| *b == 0) {
                bytes[0] = 1;
            }
            // A length near the one of the report: 2,177,788,150 bytes.
            if len >= 8 {
                bytes[..4].copy_from_slice(&2_177_788_150u32.to_le_bytes());
            }
            fs::write(journal_path(dir.path(), 0), &bytes).unwrap();
            let (mut j, _, _) = Journal::open(dir.path(), 1000)
                .unwrap_or_else(|e| panic!("case {i}: random bytes refused: {e}"));
            assert_eq!(damaged_files(dir.path()).len(), 1, "case {i}: reported");
            j.append(&[set("a")]).unwrap();
        }
        // Random frames behind a valid header.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = format::journal_header(7).to_vec();
        let mut noise = vec![0u8; 10_000];
        rand::thread_rng().fill_bytes(&mut noise);
        bytes.extend_from_slice(&noise);
        fs::write(journal_path(dir.path(), 0), &bytes).unwrap();
        let (_, _, records) = Journal::open(dir.path(), 1000).unwrap();
        assert!(records.is_empty());
        assert_eq!(damaged_files(dir.path()).len(), 1);
    }

    #[test]
    fn a_zero_length_journal_opens_on_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = Journal::open(dir.path(), 0).unwrap();
        j.compact(Snapshot {
            outbox_id: "x".into(),
            next_seq: 9,
            ..Snapshot::default()
        })
        .unwrap();
        drop(j);
        fs::write(journal_path(dir.path(), 1), b"").unwrap();
        let (_, snap, records) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!((snap.generation, snap.next_seq), (1, 9));
        assert!(records.is_empty());
        assert!(damaged_files(dir.path()).is_empty());
    }

    #[test]
    fn a_damaged_snapshot_refuses_to_open_naming_the_file() {
        for (case, edit) in [
            (
                "cut short",
                Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)) as Box<dyn Fn(&mut Vec<u8>)>,
            ),
            ("empty", Box::new(|b: &mut Vec<u8>| b.clear())),
            (
                "flipped byte",
                Box::new(|b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 1),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut j, _, _) = Journal::open(dir.path(), 0).unwrap();
            j.compact(Snapshot {
                outbox_id: "x".into(),
                next_seq: 4,
                ..Snapshot::default()
            })
            .unwrap();
            j.append(&[set("b")]).unwrap();
            drop(j);
            let path = dir.path().join("snapshot.bin");
            let mut bytes = fs::read(&path).unwrap();
            edit(&mut bytes);
            fs::write(&path, &bytes).unwrap();
            let err = Journal::open(dir.path(), 0).expect_err(case).to_string();
            assert!(
                err.contains("snapshot.bin") && err.contains("damaged"),
                "{case}: {err}"
            );
            // Nothing was touched: the journal on top is still there.
            assert!(journal_path(dir.path(), 1).exists(), "{case}");
        }
    }

    #[test]
    fn a_format_1_journal_and_snapshot_still_open_and_are_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshot {
            generation: 3,
            outbox_id: "old".into(),
            next_seq: 2,
            ..Snapshot::default()
        };
        fs::write(
            dir.path().join("snapshot.bin"),
            postcard::to_allocvec(&snap).unwrap(),
        )
        .unwrap();
        let mut v1 = Vec::new();
        for r in [set("a"), set("b")] {
            let payload = postcard::to_allocvec(&r).unwrap();
            v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v1.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            v1.extend_from_slice(&payload);
        }
        v1.extend_from_slice(&[50, 0, 0, 0, 1]); // a torn tail
        fs::write(journal_path(dir.path(), 3), &v1).unwrap();
        let (mut j, snap, records) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!((snap.generation, snap.outbox_id.as_str()), (3, "old"));
        assert_eq!(records, vec![set("a"), set("b")]);
        assert!(
            damaged_files(dir.path()).is_empty(),
            "a torn tail is no damage"
        );
        j.append(&[set("c")]).unwrap();
        drop(j);
        let bytes = fs::read(journal_path(dir.path(), 3)).unwrap();
        assert_eq!(&bytes[..8], b"BFJOURNL");
        let (_, _, records) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(records, vec![set("a"), set("b"), set("c")]);
    }

    #[test]
    fn an_unknown_format_version_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = format::journal_header(1);
        header[8..12].copy_from_slice(&9u32.to_le_bytes());
        let crc = crc32fast::hash(&header[..20]);
        header[20..].copy_from_slice(&crc.to_le_bytes());
        fs::write(journal_path(dir.path(), 0), header).unwrap();
        let err = Journal::open(dir.path(), 0).unwrap_err().to_string();
        assert!(
            err.contains("journal-0.log") && err.contains("version 9"),
            "{err}"
        );
    }
}
