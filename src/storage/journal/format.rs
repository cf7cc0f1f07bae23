//! The bytes on disk: the journal's header and frames, the snapshot's header, and reading
//! them back while telling a torn tail from damage.
//!
//! # Journal, format 2
//! A 24-byte header: `b"BFJOURNL"`, the format version (`u32` LE, 2), a random salt (`u64`
//! LE) and the CRC-32 of those 20 bytes. Then frames:
//! `[len: u32][seq: u64][header crc: u32][payload crc: u32][postcard payload]` (all LE). The
//! header CRC covers the salt, `len` and `seq`; `seq` counts the file's frames from 1.
//!
//! * A damaged length cannot pass for a torn frame: the header has its own CRC.
//! * After damage, reading resynchronises on the next frame whose header CRC (salted, so a
//!   value that happens to contain a frame's bytes never passes) and payload CRC check, and
//!   whose `seq` follows the last good one; the gap in `seq` is the exact count of records
//!   lost.
//!
//! # Journal, format 1 (written before the header existed)
//! No header: `[len: u32][crc32 of payload: u32][payload]` from byte 0. It is still read (and
//! rewritten as format 2 on open); since its frames carry no `seq`, the count of records lost
//! to damage in it is a lower bound.
//!
//! # What is a torn tail
//! The bytes after the last good frame are a torn tail, cut off silently (a WARN), only when
//! no valid frame follows them and they are a frame cut short: fewer bytes than a frame
//! header, or a header that checks and promises more bytes than the file holds, or zeros (a
//! file system that extended the file but never wrote the block). Anything else is damage.
//!
//! # Bounds
//! The file is read whole with a fallible allocation; every length read from it is checked
//! against [`MAX_RECORD_BYTES`] and the bytes that remain before it is used, so no length on
//! disk ever sizes an allocation.
//!
//! # Snapshot, format 2
//! `b"BFSNAPSH"`, the version (`u32` LE), the payload length (`u64` LE), the payload's CRC-32,
//! the postcard payload. Format 1 is the bare postcard payload. A snapshot is written to a
//! temporary file, synced and renamed into place, so a snapshot that does not check is damage
//! of the medium (or of an operator's copy); see [`read_snapshot`].

use std::io;
use std::path::Path;

use super::{Record, Snapshot};

/// The largest record payload written or read: Redis's own limit for one string
/// (`proto-max-bulk-len`, 512 MiB). A longer length read from disk is damage.
pub const MAX_RECORD_BYTES: usize = 512 * 1024 * 1024;

/// The format version written now (of journals and snapshots).
pub const VERSION: u32 = 2;

const JOURNAL_MAGIC: &[u8; 8] = b"BFJOURNL";
const SNAPSHOT_MAGIC: &[u8; 8] = b"BFSNAPSH";
/// Magic, version, salt, CRC.
pub const JOURNAL_HEADER_LEN: usize = 24;
/// Magic, version, length, CRC.
const SNAPSHOT_HEADER_LEN: usize = 24;
/// `len`, `seq`, header CRC, payload CRC.
const FRAME_HEADER_V2: usize = 20;
/// `len`, payload CRC.
const FRAME_HEADER_V1: usize = 8;
/// Payload bytes hashed while looking for a resynchronisation point in a format-1 journal
/// (which has no cheap filter), after which the rest counts as unreadable.
const V1_SCAN_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// Postcard's tag of the last [`Record`] variant: a format-1 payload starts with a tag.
const LAST_RECORD_TAG: u8 = 5;

/// The journal header for `salt`.
pub fn journal_header(salt: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[..8].copy_from_slice(JOURNAL_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_crc(salt: u64, len: u32, seq: u64) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.finalize()
}

/// Appends the frame of `record` (number `seq` of a journal salted `salt`) to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, salt: u64, seq: u64, record: &Record) -> io::Result<()> {
    let payload = postcard::to_allocvec(record).map_err(invalid)?;
    if payload.len() > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a journal record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
                payload.len()
            ),
        ));
    }
    // Cannot truncate: checked against MAX_RECORD_BYTES, which fits a u32.
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&header_crc(salt, len, seq).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// The snapshot file's bytes for `snapshot`.
pub fn encode_snapshot(snapshot: &Snapshot) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(snapshot).map_err(invalid)?;
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + payload.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads `path` whole; a missing file reads as empty. The allocation is fallible, so a file
/// larger than the memory available is an error, not an abort.
pub fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// Decodes a snapshot file. A snapshot that does not check (cut short, a flipped byte, an
/// empty file, a version this build does not know) is an error naming the file: the caller
/// refuses to start rather than drop the keys it holds, since nothing in it can be proven
/// valid and the journal on top of it is meaningless without it.
pub fn read_snapshot(path: &Path, bytes: &[u8]) -> io::Result<Snapshot> {
    let damaged = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot {} is damaged ({why}): refusing to start rather than lose the keys it \
                 holds; restore it from a copy, or move snapshot.bin and journal-*.log aside to \
                 start with an empty fallback store",
                path.display()
            ),
        )
    };
    if bytes.is_empty() {
        return Err(damaged("empty file".into()));
    }
    let payload = if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) {
        if bytes.len() < SNAPSHOT_HEADER_LEN {
            return Err(damaged(format!(
                "{} bytes, shorter than its header",
                bytes.len()
            )));
        }
        let version = u32::from_le_bytes(array(&rest[0..4]));
        if version != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} has format version {version}; this botfleet reads versions 1 \
                     and {VERSION} (was it written by a newer release?)",
                    path.display()
                ),
            ));
        }
        let len = u64::from_le_bytes(array(&rest[4..12]));
        let crc = u32::from_le_bytes(array(&rest[12..16]));
        let payload = &bytes[SNAPSHOT_HEADER_LEN..];
        if payload.len() as u64 != len {
            return Err(damaged(format!(
                "holds {} of the {len} bytes its header announces",
                payload.len()
            )));
        }
        if crc32fast::hash(payload) != crc {
            return Err(damaged("checksum mismatch".into()));
        }
        payload
    } else {
        bytes
    };
    match postcard::take_from_bytes::<Snapshot>(payload) {
        Ok((snapshot, [])) => Ok(snapshot),
        Ok((_, rest)) => Err(damaged(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(damaged(e.to_string())),
    }
}

/// A journal file's format, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Frames from byte 0, without `seq` (files written before the header existed).
    V1,
    /// The header, then salted frames with `seq`.
    V2 {
        /// The file's salt.
        salt: u64,
    },
}

/// Damage found inside a journal (not a torn tail).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// Records known lost (a gap in `seq`, or at least one per damaged region where the file
    /// cannot say how many).
    pub records_lost: u64,
    /// More than `records_lost` may be lost: a damaged region of a format-1 file, a damaged
    /// header or a damaged last frame hides how many records it held.
    pub maybe_more: bool,
    /// Bytes that did not read as records.
    pub bytes_unreadable: u64,
    /// Where the first damaged byte region starts.
    pub first_offset: u64,
}

/// What reading a journal file found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every record that checks, in order.
    pub records: Vec<Record>,
    /// The format; `None` for an empty (or missing) file.
    pub format: Option<Format>,
    /// The `seq` of the last good frame (format 2).
    pub last_seq: u64,
    /// End of the last good frame (the length to truncate a torn tail to).
    pub good_len: u64,
    /// Bytes of a torn tail after `good_len` (0: none).
    pub torn_bytes: u64,
    /// Damage inside the file, if any.
    pub damage: Option<Damage>,
}

/// What a frame at some offset turned out to be.
enum Frame {
    /// A valid record and where its frame ends.
    Good {
        record: Record,
        seq: u64,
        end: usize,
    },
    /// A frame cut short by the end of the file (what a torn write leaves).
    Short,
    /// Not a valid frame.
    Bad,
}

/// Reads a journal file's bytes. Never fails on damage (that is reported in
/// [`Recovered::damage`]); fails only for a format version this build does not know.
pub fn read_journal(path: &Path, data: &[u8]) -> io::Result<Recovered> {
    let mut out = Recovered::default();
    if data.is_empty() {
        return Ok(out);
    }
    let (format, start) = match data.strip_prefix(JOURNAL_MAGIC) {
        None => (Format::V1, 0),
        Some(rest) => {
            if data.len() < JOURNAL_HEADER_LEN
                || crc32fast::hash(&data[..20]) != u32::from_le_bytes(array(&data[20..24]))
            {
                // The header is written whole and synced before the file is renamed into
                // place: a header that does not check is damage, and without its salt no
                // frame can be trusted.
                out.damage = Some(Damage {
                    records_lost: 1,
                    maybe_more: true,
                    bytes_unreadable: data.len() as u64,
                    first_offset: 0,
                });
                return Ok(out);
            }
            let version = u32::from_le_bytes(array(&rest[0..4]));
            if version != VERSION {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "journal {} has format version {version}; this botfleet reads versions \
                         1 and {VERSION} (was it written by a newer release?)",
                        path.display()
                    ),
                ));
            }
            let salt = u64::from_le_bytes(array(&rest[4..12]));
            (Format::V2 { salt }, JOURNAL_HEADER_LEN)
        }
    };
    out.format = Some(format);
    out.good_len = start as u64;
    let mut budget = V1_SCAN_BUDGET_BYTES;
    // Reading frame after frame is not scanning: it spends no budget.
    let mut unlimited = usize::MAX;
    let mut pos = start;
    let mut last_seq = 0u64;
    while pos < data.len() {
        match frame_at(data, pos, format, last_seq, &mut unlimited) {
            Frame::Good { record, seq, end } => {
                if seq > last_seq + 1 {
                    // The frames between were lost (skipped by a resynchronisation, or cut
                    // out of the file).
                    let d = out.damage.get_or_insert(Damage {
                        first_offset: pos as u64,
                        ..Damage::default()
                    });
                    d.records_lost += seq - last_seq - 1;
                }
                out.records.push(record);
                last_seq = seq;
                pos = end;
                out.good_len = end as u64;
            }
            cut => {
                let next = (pos + 1..data.len())
                    .find(|&q| matches!(peek(data, q, format, last_seq, &mut budget), Some(true)));
                match next {
                    Some(q) => {
                        let d = out.damage.get_or_insert(Damage {
                            first_offset: pos as u64,
                            ..Damage::default()
                        });
                        d.bytes_unreadable += (q - pos) as u64;
                        if format == Format::V1 {
                            // No seq: at least the frame that was here.
                            d.records_lost += 1;
                            d.maybe_more = true;
                        }
                        pos = q;
                    }
                    None => {
                        let rest = &data[pos..];
                        // A format-1 file with no good frame at all is not trusted to be
                        // torn: random bytes read as a frame cut short one time in eight.
                        let torn = matches!(cut, Frame::Short)
                            && !(format == Format::V1 && out.records.is_empty());
                        if torn || rest.iter().all(|b| *b == 0) {
                            out.torn_bytes = rest.len() as u64;
                        } else {
                            let d = out.damage.get_or_insert(Damage {
                                first_offset: pos as u64,
                                ..Damage::default()
                            });
                            d.bytes_unreadable += rest.len() as u64;
                            d.records_lost += 1;
                            d.maybe_more = true;
                        }
                        break;
                    }
                }
            }
        }
    }
    out.last_seq = last_seq;
    Ok(out)
}

/// Whether a valid frame starts at `pos` (`None`: the scan budget ran out, stop looking).
fn peek(
    data: &[u8],
    pos: usize,
    format: Format,
    last_seq: u64,
    budget: &mut usize,
) -> Option<bool> {
    if *budget == 0 {
        return None;
    }
    Some(matches!(
        frame_at(data, pos, format, last_seq, budget),
        Frame::Good { .. }
    ))
}

/// Decodes the frame at `pos`, which must follow `seq` `last_seq`.
fn frame_at(data: &[u8], pos: usize, format: Format, last_seq: u64, budget: &mut usize) -> Frame {
    let rest = &data[pos..];
    match format {
        Format::V2 { salt } => {
            if rest.len() < FRAME_HEADER_V2 {
                return Frame::Short;
            }
            let len = u32::from_le_bytes(array(&rest[0..4]));
            let seq = u64::from_le_bytes(array(&rest[4..12]));
            // Cheap filter first (a resynchronisation scan tries every offset): each frame
            // takes at least FRAME_HEADER_V2 bytes, so a seq past this is not one of ours.
            let max_seq = last_seq.saturating_add((rest.len() / FRAME_HEADER_V2) as u64);
            if seq <= last_seq || seq > max_seq {
                return Frame::Bad;
            }
            if u32::from_le_bytes(array(&rest[12..16])) != header_crc(salt, len, seq) {
                return Frame::Bad;
            }
            let len = len as usize;
            if len > MAX_RECORD_BYTES {
                return Frame::Bad;
            }
            if len > rest.len() - FRAME_HEADER_V2 {
                // A header that checks, promising more than the file holds: a torn write if
                // it is the next frame expected.
                return if seq == last_seq + 1 {
                    Frame::Short
                } else {
                    Frame::Bad
                };
            }
            let payload = &rest[FRAME_HEADER_V2..FRAME_HEADER_V2 + len];
            if crc32fast::hash(payload) != u32::from_le_bytes(array(&rest[16..20])) {
                return Frame::Bad;
            }
            decode(payload, seq, pos + FRAME_HEADER_V2 + len)
        }
        Format::V1 => {
            if rest.len() < FRAME_HEADER_V1 {
                return Frame::Short;
            }
            let len = u32::from_le_bytes(array(&rest[0..4])) as usize;
            if len > MAX_RECORD_BYTES {
                return Frame::Bad;
            }
            if len > rest.len() - FRAME_HEADER_V1 {
                return Frame::Short;
            }
            let payload = &rest[FRAME_HEADER_V1..FRAME_HEADER_V1 + len];
            if payload.first().is_none_or(|tag| *tag > LAST_RECORD_TAG) {
                return Frame::Bad;
            }
            *budget = budget.saturating_sub(len);
            if crc32fast::hash(payload) != u32::from_le_bytes(array(&rest[4..8])) {
                return Frame::Bad;
            }
            decode(payload, last_seq + 1, pos + FRAME_HEADER_V1 + len)
        }
    }
}

/// A payload that checks must also decode, wholly, to a record.
fn decode(payload: &[u8], seq: u64, end: usize) -> Frame {
    match postcard::take_from_bytes::<Record>(payload) {
        Ok((record, [])) => Frame::Good { record, seq, end },
        _ => Frame::Bad,
    }
}

/// The first `N` bytes of `bytes` as an array; callers pass slices of exactly `N` bytes.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    a
}
