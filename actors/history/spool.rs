//! The spool: batches that wait on disk while the database is unreachable
//! (`storage.fallback = "file"`), in `HISTORY_DIR/spool.log`.
//!
//! A batch is appended as one frame `[len: u32 LE][crc32: u32 LE][JSON array of records]` and
//! the file is synced before the batch counts as acknowledged, so neither `kill -9` nor a power
//! loss takes an acknowledged record. When the database returns the frames are written in
//! order and the file is emptied; a crash in between replays them again on the next start,
//! and the records' idempotent keys store each once. A torn tail (the process died inside a
//! `write`) is cut off on open.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::record::Record;

/// Largest frame accepted on read, bytes (a larger length is a corrupt tail).
const MAX_FRAME: u32 = 256 * 1024 * 1024;

/// An open spool file.
#[derive(Debug)]
pub struct Spool {
    file: File,
    bytes: u64,
    records: u64,
}

impl Spool {
    /// Opens (creating) `dir/spool.log`, cutting a torn tail; counts the records it holds.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("spool.log");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let (valid, records) = scan(&mut file, |_| {})?;
        file.set_len(valid)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Spool {
            file,
            bytes: valid,
            records,
        })
    }

    /// Records waiting.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one batch and syncs it.
    pub fn append(&mut self, batch: &[Record]) -> io::Result<()> {
        let payload = serde_json::to_vec(batch).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        if let Err(e) = self.file.write_all(&frame) {
            // Cut a partial frame so that the next append starts clean.
            let _ = self.file.set_len(self.bytes);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(e);
        }
        self.file.sync_data()?;
        self.bytes += frame.len() as u64;
        self.records += batch.len() as u64;
        Ok(())
    }

    /// Every batch waiting, oldest first.
    pub fn batches(&mut self) -> io::Result<Vec<Vec<Record>>> {
        let mut out = Vec::new();
        scan(&mut self.file, |batch| out.push(batch))?;
        self.file.seek(SeekFrom::End(0))?;
        Ok(out)
    }

    /// Empties the spool once its batches are in the database.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_all()?;
        self.bytes = 0;
        self.records = 0;
        Ok(())
    }
}

/// Reads the frames from the start, handing each batch to `each`; answers the length of the
/// valid prefix and the records in it.
fn scan(file: &mut File, mut each: impl FnMut(Vec<Record>)) -> io::Result<(u64, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let (mut at, mut records) = (0usize, 0u64);
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let end = at + 8 + len as usize;
        if len > MAX_FRAME || end > data.len() {
            break;
        }
        let payload = &data[at + 8..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(batch) = serde_json::from_slice::<Vec<Record>>(payload) else {
            break;
        };
        records += batch.len() as u64;
        each(batch);
        at = end;
    }
    Ok((at as u64, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::history::record::EventRecord;

    fn event(i: i64) -> Record {
        Record::Event(EventRecord {
            id: format!("e{i}"),
            session_id: "s".into(),
            event_type: "job_found".into(),
            data: "{}".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            at_ms: i,
        })
    }

    #[test]
    fn batches_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.append(&[event(1), event(2)]).unwrap();
        spool.append(&[event(3)]).unwrap();
        drop(spool);
        // A frame cut short, as a process killed inside write(2) leaves it.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.records(), 3);
        let batches = spool.batches().unwrap();
        assert_eq!(batches, vec![vec![event(1), event(2)], vec![event(3)]]);
        spool.append(&[event(4)]).unwrap();
        assert_eq!(spool.batches().unwrap().len(), 3);
        spool.clear().unwrap();
        assert_eq!(Spool::open(dir.path()).unwrap().records(), 0);
    }
}
