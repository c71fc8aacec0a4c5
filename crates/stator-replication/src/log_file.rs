//! A durable replica's Raft log as files: preallocated, zero-filled segments written at
//! the tail with `pwrite`, one `fdatasync` per group-committed batch.
//!
//! Until session 10 the log lived in the replica's redb file: each durable batch was a
//! redb commit, which writes the B-tree's leaf and branch pages, the allocator state and
//! the header. A segment whose blocks were written once already (zeros) takes a batch as
//! one `pwrite` at its tail, and `fdatasync` then flushes those data blocks only: the
//! file's size and extents never change while it fills (docs/BENCHMARKS.md "Session 9:
//! the fsync floor" measured the two).
//!
//! # Layout
//! `<replica dir>/log/<seq as 16 hex digits>.seg`, in sequence order. A segment is created
//! as `<name>.tmp`, filled with zeros, fsynced and renamed into place (its directory
//! fsynced), so a segment either exists whole or not at all. Segment `seq` holds
//! [`segment_bytes`]`(seq)` bytes: the first is small (a quiet replica costs little disk),
//! each next one twice the last up to [`MAX_SEGMENT_BYTES`]. The next segment is created
//! on a thread of its own once the current one is half full, so a batch rarely waits for
//! it. A record larger than a segment gets a segment of its own size.
//!
//! A record: its payload's length (u32 LE), `crc32(length ++ index ++ payload)` (u32 LE),
//! the entry's index (u64 LE), the payload (the entry, postcard). A header of zeros ends
//! the data of a segment (the rest of it is zeros too).
//!
//! # Truncate and purge
//! A record of index `i` replaces every record of index `>= i` written before it: a
//! conflicting suffix a new leader truncates is superseded by the entries the follower
//! appends next, with no write of its own (a truncate lost in a crash brings back a
//! state the replica had before, which openraft repairs). Purging deletes whole segments
//! from the front, only those whose every record is at or below the purge point; the
//! caller records the purge point durably first.
//!
//! # Opening
//! Every segment is read once and every record's checksum verified, in order. The tail
//! of the last segment holding data may be torn by a crash in the middle of a batch
//! that was never acknowledged (its `fdatasync` had not returned): a record that fails
//! its checksum, after which only zeros follow, and which holds a zero-filled piece of
//! a disk sector (part of it never reached the disk) is such a tail, as etcd's WAL
//! decides too. It is cut off (overwritten with zeros). Any other bad record, or bytes
//! after a hole, is corruption: the open fails with [`OpenError::Corrupt`] and the
//! replica is not served.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// The log's directory inside a replica's directory.
pub const LOG_DIR_NAME: &str = "log";
/// Bytes of a record's header: length, checksum, index.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Largest payload a record may declare: above the transport's largest frame (an entry
/// never gets bigger), so a larger length in a header is corruption, not a reason to read.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// The first segment's size; each next one is twice the last, up to [`MAX_SEGMENT_BYTES`].
pub const FIRST_SEGMENT_BYTES: u64 = 1 << 20;
/// The largest segment (except one made for a single larger record).
pub const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// The unit a disk writes whole (or not at all); a torn write leaves whole sectors unwritten.
pub const SECTOR_BYTES: usize = 512;
/// Fewest zero bytes a sector's piece of a bad tail record must hold to count as never
/// written (a shorter run of zeros may be the record's own bytes).
pub const MIN_TORN_ZEROS: usize = 8;
/// Bytes of zeros written at a time while a segment is preallocated.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";

/// The size of segment `seq`: 1 MiB, 2, 4, 8, then 16 MiB each.
pub fn segment_bytes(seq: u64) -> u64 {
    (FIRST_SEGMENT_BYTES << seq.min(8)).min(MAX_SEGMENT_BYTES)
}

/// Why the log could not open.
#[derive(Debug)]
pub enum OpenError {
    /// A file could not be read, created or written.
    Io(String),
    /// A record failed its checks before the tail: the replica must not serve the log.
    Corrupt {
        /// Which record.
        what: String,
        /// What check failed.
        reason: String,
    },
}

/// A record of `value` at `index`, ready to append.
pub fn encode<T: serde::Serialize>(index: u64, value: &T) -> Vec<u8> {
    let mut out = postcard::to_extend(value, vec![0u8; RECORD_HEADER_BYTES])
        .expect("log records always serialize");
    let len = (out.len() - RECORD_HEADER_BYTES) as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&index.to_le_bytes());
    let sum = record_checksum(&out);
    out[4..8].copy_from_slice(&sum.to_le_bytes());
    out
}

/// A record that truncates the log from `index` on (a conflicting suffix a new leader
/// replaces): a header with an empty payload.
pub fn truncate_marker(index: u64) -> Vec<u8> {
    let mut out = vec![0u8; RECORD_HEADER_BYTES];
    out[8..16].copy_from_slice(&index.to_le_bytes());
    let sum = record_checksum(&out);
    out[4..8].copy_from_slice(&sum.to_le_bytes());
    out
}

/// A record as read: its index, its payload, and its length with its header.
pub type Record<'a> = (u64, &'a [u8], usize);

/// Checks the record at the start of `bytes`: `Ok(None)` for a header of zeros (no
/// record), else the [`Record`].
pub fn decode(bytes: &[u8]) -> Result<Option<Record<'_>>, String> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(format!("{} bytes, shorter than a header", bytes.len()));
    }
    let header = &bytes[..RECORD_HEADER_BYTES];
    if all_zero(header) {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
    let stored = u32::from_le_bytes(header[4..8].try_into().expect("4"));
    let index = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    if len > MAX_RECORD_BYTES || RECORD_HEADER_BYTES + len > bytes.len() {
        return Err(format!("impossible length {len}"));
    }
    let record = &bytes[..RECORD_HEADER_BYTES + len];
    let actual = record_checksum(record);
    if actual != stored {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok(Some((index, &record[RECORD_HEADER_BYTES..], record.len())))
}

fn record_checksum(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[0..4]);
    hasher.update(&record[8..]);
    hasher.finalize()
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Whether the bytes `[start, start + bytes.len())` of a segment hold a sector's piece
/// (at least [`MIN_TORN_ZEROS`] bytes, or the whole sector) that is all zeros.
fn has_unwritten_sector(bytes: &[u8], start: usize) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let sector_end = ((start + at) / SECTOR_BYTES + 1) * SECTOR_BYTES - start;
        let piece = &bytes[at..sector_end.min(bytes.len())];
        if piece.len() >= MIN_TORN_ZEROS.min(SECTOR_BYTES) && all_zero(piece) {
            return true;
        }
        at += piece.len();
    }
    false
}

struct Segment {
    seq: u64,
    path: PathBuf,
    size: u64,
    /// The largest index of a record in it.
    max_index: Option<u64>,
}

/// The current segment: open for writing.
struct Current {
    segment: Segment,
    file: File,
    tail: u64,
}

type Created = std::io::Result<(Segment, File)>;

/// The replica's log files, owned by its writer thread.
pub struct LogFile {
    dir: PathBuf,
    /// Full segments, oldest first.
    sealed: VecDeque<Segment>,
    current: Current,
    /// The next segment, being created or ready.
    next: Option<JoinHandle<Created>>,
    /// Written since the last `fdatasync`.
    unsynced: bool,
    buffer: Vec<u8>,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Records read.
    pub records: u64,
    /// Bytes of a torn tail cut off (0 after a clean stop).
    pub torn_bytes: u64,
    /// Segments read.
    pub segments: usize,
}

/// The log directory of a replica directory.
pub fn log_dir(replica_dir: &Path) -> PathBuf {
    replica_dir.join(LOG_DIR_NAME)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
}

/// Creates segment `seq` of `size` bytes of zeros: written to a temporary name, fsynced,
/// renamed into place, the directory fsynced.
fn create_segment(dir: &Path, seq: u64, size: u64) -> Created {
    let path = segment_path(dir, seq);
    let mut tmp = path.clone().into_os_string();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut left = size;
        while left > 0 {
            let n = left.min(ZERO_CHUNK_BYTES as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        OpenOptions::new().read(true).write(true).open(&path)
    })();
    match result {
        Ok(file) => Ok((
            Segment {
                seq,
                path,
                size,
                max_index: None,
            },
            file,
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Every record's place, oldest first: (segment file, byte offset, record length with
/// its header). For tests and tools that inspect or damage a log on purpose.
pub fn record_spans(replica_dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, usize)>> {
    let mut spans = Vec::new();
    for (_, path) in list_segments(&log_dir(replica_dir))? {
        let bytes = std::fs::read(&path)?;
        let mut pos = 0;
        while pos < bytes.len() {
            let Ok(Some((_, _, len))) = decode(&bytes[pos..]) else {
                break;
            };
            spans.push((path.clone(), pos as u64, len));
            pos += len;
        }
    }
    Ok(spans)
}

/// The segments in `dir`, by sequence; leftover temporary files are removed.
fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(seq) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// What the scan of one segment ended on.
enum End {
    /// Zeros from this offset on.
    Clean(usize),
    /// A bad record at this offset, spanning this many bytes, for this reason.
    Bad(usize, usize, String, u64),
}

fn scan_segment<F>(bytes: &[u8], mut on_record: F) -> Result<(End, Option<u64>, u64), OpenError>
where
    F: FnMut(u64, &[u8]) -> Result<(), (String, String)>,
{
    let mut pos = 0;
    let mut max_index: Option<u64> = None;
    let mut records = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < RECORD_HEADER_BYTES && all_zero(rest) {
            return Ok((End::Clean(pos), max_index, records));
        }
        let header_index = |rest: &[u8]| {
            rest.get(8..16)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")))
        };
        match decode(rest) {
            Ok(None) if all_zero(rest) => return Ok((End::Clean(pos), max_index, records)),
            Ok(None) => {
                let span = rest.iter().position(|b| *b != 0).unwrap_or(0) + 1;
                let bad = End::Bad(pos, span, "data after a hole".into(), header_index(rest));
                return Ok((bad, max_index, records));
            }
            Err(reason) => {
                let len = rest
                    .get(0..4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4")) as usize);
                // A length that cannot be is judged on the header alone.
                let span = if len <= MAX_RECORD_BYTES && RECORD_HEADER_BYTES + len <= rest.len() {
                    RECORD_HEADER_BYTES + len
                } else {
                    RECORD_HEADER_BYTES.min(rest.len())
                };
                let bad = End::Bad(pos, span, reason, header_index(rest));
                return Ok((bad, max_index, records));
            }
            Ok(Some((index, payload, len))) => {
                on_record(index, payload)
                    .map_err(|(what, reason)| OpenError::Corrupt { what, reason })?;
                if !payload.is_empty() {
                    max_index = Some(max_index.map_or(index, |m| m.max(index)));
                }
                records += 1;
                pos += len;
            }
        }
    }
}

impl LogFile {
    /// Opens (or creates) the log under `replica_dir`, handing every record (index,
    /// payload) to `on_record` in the order written; `on_record` may refuse one (what,
    /// why). A torn tail is cut off; other damage is [`OpenError::Corrupt`].
    pub fn open<F>(replica_dir: &Path, mut on_record: F) -> Result<(LogFile, Opened), OpenError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), (String, String)>,
    {
        let dir = log_dir(replica_dir);
        let io = |e: std::io::Error| OpenError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let found = list_segments(&dir).map_err(io)?;
        let mut opened = Opened {
            segments: found.len(),
            ..Opened::default()
        };
        // (segment, data end) of each segment read; trailing all-zero segments are spare.
        let mut read: Vec<(Segment, usize)> = Vec::new();
        for (k, (seq, path)) in found.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(io)?;
            let (end, max_index, records) = scan_segment(&bytes, &mut on_record)?;
            opened.records += records;
            let data_end = match end {
                End::Clean(at) => at,
                End::Bad(at, span, reason, index) => {
                    let span_end = (at + span).min(bytes.len());
                    let rest_zero = all_zero(&bytes[span_end..])
                        && found[k + 1..]
                            .iter()
                            .all(|(_, later)| std::fs::read(later).is_ok_and(|b| all_zero(&b)));
                    let torn = rest_zero && has_unwritten_sector(&bytes[at..span_end], at);
                    if !torn {
                        return Err(OpenError::Corrupt {
                            what: format!("log entry {index} (byte {at} of {})", path.display()),
                            reason,
                        });
                    }
                    // A batch cut by a crash before its fdatasync returned: never
                    // acknowledged. Zero it so later appends leave no garbage behind.
                    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
                    file.write_all_at(&vec![0u8; span_end - at], at as u64)
                        .and_then(|_| file.sync_data())
                        .map_err(io)?;
                    opened.torn_bytes = (span_end - at) as u64;
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        bytes = span_end - at,
                        "cut a torn log tail (a batch a crash interrupted before it was acknowledged): {reason}"
                    );
                    at
                }
            };
            read.push((
                Segment {
                    seq: *seq,
                    path: path.clone(),
                    size: bytes.len() as u64,
                    max_index,
                },
                data_end,
            ));
            if opened.torn_bytes > 0 {
                break;
            }
        }
        // The current segment: the last holding data. Spare all-zero ones after it go
        // (the first becomes the next segment again once needed).
        let last_data = read
            .iter()
            .rposition(|(s, end)| s.max_index.is_some() || *end > 0);
        let keep = last_data.map_or(1, |i| i + 1).min(read.len());
        for (spare, _) in read.drain(keep..) {
            std::fs::remove_file(&spare.path).map_err(io)?;
        }
        // Segments after a torn tail were checked all zero: remove them too.
        let kept: Vec<u64> = read.iter().map(|(s, _)| s.seq).collect();
        for (seq, path) in &found {
            if !kept.contains(seq) && path.exists() {
                std::fs::remove_file(path).map_err(io)?;
            }
        }
        let current = match read.pop() {
            Some((segment, tail)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&segment.path)
                    .map_err(io)?;
                Current {
                    segment,
                    file,
                    tail: tail as u64,
                }
            }
            None => {
                let (segment, file) = create_segment(&dir, 0, segment_bytes(0)).map_err(io)?;
                Current {
                    segment,
                    file,
                    tail: 0,
                }
            }
        };
        let mut log = LogFile {
            dir,
            sealed: read.into_iter().map(|(s, _)| s).collect(),
            current,
            next: None,
            unsynced: false,
            buffer: Vec::new(),
        };
        log.prepare_next();
        Ok((log, opened))
    }

    /// Writes `records` (each from [`encode`], index first) at the tail, in order, and
    /// `fdatasync`s if `sync`. On an error nothing of this call may be counted as stored.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)], sync: bool) -> std::io::Result<()> {
        let mut at = 0;
        while at < records.len() {
            let room = self.current.segment.size - self.current.tail;
            self.buffer.clear();
            let mut max_index = self.current.segment.max_index;
            while at < records.len() && (self.buffer.len() + records[at].1.len()) as u64 <= room {
                self.buffer.extend_from_slice(&records[at].1);
                if records[at].1.len() > RECORD_HEADER_BYTES {
                    max_index = Some(max_index.map_or(records[at].0, |m| m.max(records[at].0)));
                }
                at += 1;
            }
            if !self.buffer.is_empty() {
                self.current
                    .file
                    .write_all_at(&self.buffer, self.current.tail)?;
                self.current.tail += self.buffer.len() as u64;
                self.current.segment.max_index = max_index;
                self.unsynced = true;
            }
            if at < records.len() {
                self.roll(records[at].1.len() as u64)?;
            }
        }
        self.prepare_next();
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// `fdatasync`s the current segment if anything was written since the last time.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.current.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Deletes the oldest segments whose every record is at or below `up_to` (never the
    /// current one). Record the purge point durably before calling this.
    pub fn purge(&mut self, up_to: u64) -> std::io::Result<()> {
        let mut removed = false;
        while self
            .sealed
            .front()
            .is_some_and(|s| s.max_index.is_none_or(|m| m <= up_to))
        {
            let segment = self.sealed.pop_front().expect("checked");
            std::fs::remove_file(&segment.path)?;
            removed = true;
        }
        if removed {
            // Not needed for safety (a segment that comes back holds only purged
            // records), but frees the space for sure.
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Bytes the log's segments take (the next one, once created, included).
    pub fn disk_bytes(&self) -> u64 {
        let next = segment_bytes(self.current.segment.seq + 1);
        self.sealed.iter().map(|s| s.size).sum::<u64>()
            + self.current.segment.size
            + if self.next.is_some() { next } else { 0 }
    }

    /// Starts creating the next segment once the current one is half full.
    fn prepare_next(&mut self) {
        if self.next.is_none() && self.current.tail * 2 >= self.current.segment.size {
            let dir = self.dir.clone();
            let seq = self.current.segment.seq + 1;
            let spawned = std::thread::Builder::new()
                .name("raft-log-prealloc".into())
                .spawn(move || create_segment(&dir, seq, segment_bytes(seq)));
            // Without a thread the roll creates the segment itself.
            self.next = spawned.ok();
        }
    }

    /// Moves to the next segment (fsyncing the full one first), one that holds at least
    /// `need` bytes.
    fn roll(&mut self, need: u64) -> std::io::Result<()> {
        self.sync()?;
        let seq = self.current.segment.seq + 1;
        let created = match self.next.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("creating a log segment panicked"))),
            None => create_segment(&self.dir, seq, segment_bytes(seq)),
        };
        let (mut segment, mut file) = created?;
        if segment.size < need {
            // One record larger than a segment: this segment is replaced by one its size.
            drop(file);
            std::fs::remove_file(&segment.path)?;
            (segment, file) = create_segment(&self.dir, seq, need)?;
        }
        let full = std::mem::replace(
            &mut self.current,
            Current {
                segment,
                file,
                tail: 0,
            },
        );
        self.sealed.push_back(full.segment);
        Ok(())
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        // A segment being created finishes (or fails) before the log's directory is
        // given up: a reopened log must not race it.
        if let Some(handle) = self.next.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Collected = (Vec<(u64, Vec<u8>)>, Opened, LogFile);

    fn collect(dir: &Path) -> Result<Collected, OpenError> {
        let mut got = Vec::new();
        let (log, opened) = LogFile::open(dir, |i, p| {
            got.push((i, p.to_vec()));
            Ok(())
        })?;
        Ok((got, opened, log))
    }

    fn payload(i: u64, n: usize) -> Vec<u8> {
        vec![(i % 251) as u8 + 1; n]
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_purge_drops_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, _, mut log) = collect(dir.path()).unwrap();
            // ~4 MiB of 10 KiB records: the 1 MiB and 2 MiB segments fill, a third starts.
            for batch in 0..40u64 {
                let records: Vec<_> = (0..10)
                    .map(|k| {
                        let i = batch * 10 + k;
                        (i, encode(i, &payload(i, 10_000)))
                    })
                    .collect();
                log.append(&records, batch % 2 == 0).unwrap();
            }
            log.sync().unwrap();
            assert!(log.sealed.len() >= 2, "rolled over: {}", log.sealed.len());
            log.purge(150).unwrap();
            assert!(log
                .sealed
                .front()
                .is_none_or(|s| s.max_index.unwrap() > 150));
        }
        let (got, opened, _) = collect(dir.path()).unwrap();
        assert_eq!(opened.torn_bytes, 0);
        let first = got[0].0;
        assert!(
            first > 0 && first <= 151,
            "the purged front is gone: {first}"
        );
        for (k, (i, bytes)) in got.iter().enumerate() {
            assert_eq!(*i, first + k as u64);
            let value: Vec<u8> = postcard::from_bytes(bytes).unwrap();
            assert_eq!(value, payload(*i, 10_000));
        }
        assert_eq!(got.last().unwrap().0, 399);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, _, mut log) = collect(dir.path()).unwrap();
            let records: Vec<_> = (0..4).map(|i| (i, encode(i, &payload(i, 1_500)))).collect();
            log.append(&records, true).unwrap();
        }
        let spans = record_spans(dir.path()).unwrap();
        let (path, offset, len) = spans.last().unwrap().clone();
        let original = std::fs::read(&path).unwrap();

        // A crash in the middle of the last record: its last sector never written.
        let mut torn = original.clone();
        let end = offset as usize + len;
        let cut = (end - 1) / SECTOR_BYTES * SECTOR_BYTES;
        torn[cut..end].fill(0);
        std::fs::write(&path, &torn).unwrap();
        let (got, opened, mut log) = collect(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(opened.torn_bytes > 0);
        // The cut tail is zeros again: the next append follows the last whole record.
        log.append(&[(3, encode(3, &payload(9, 10)))], true)
            .unwrap();
        drop(log);
        let (got, opened, _) = collect(dir.path()).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(opened.torn_bytes, 0);

        // A flipped bit in a record that was whole: refused, tail or not.
        let spans = record_spans(dir.path()).unwrap();
        for (path, offset, len) in [spans[1].clone(), spans.last().unwrap().clone()] {
            let good = std::fs::read(&path).unwrap();
            let mut bad = good.clone();
            bad[offset as usize + len - 1] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            match collect(dir.path()) {
                Err(OpenError::Corrupt { what, reason }) => {
                    assert!(what.starts_with("log entry"), "{what}");
                    assert!(reason.contains("checksum"), "{reason}");
                }
                Err(OpenError::Io(e)) => panic!("{e}"),
                Ok(_) => panic!("a flipped bit was served"),
            }
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_one_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, _, mut log) = collect(dir.path()).unwrap();
            log.append(&[(1, encode(1, &payload(1, 100)))], true)
                .unwrap();
            log.append(&[(2, encode(2, &payload(2, 3 << 20)))], true)
                .unwrap();
            log.append(&[(3, encode(3, &payload(3, 100)))], true)
                .unwrap();
        }
        let (got, _, _) = collect(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_later_record_supersedes_a_truncated_suffix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, _, mut log) = collect(dir.path()).unwrap();
            let records: Vec<_> = (1..=5).map(|i| (i, encode(i, &i))).collect();
            log.append(&records, true).unwrap();
            // A new leader's entries from 3 on replace the old 3..=5.
            log.append(&[(3, encode(3, &33u64))], true).unwrap();
        }
        let mut log = std::collections::BTreeMap::new();
        LogFile::open(dir.path(), |i, p| {
            log.split_off(&i);
            log.insert(i, postcard::from_bytes::<u64>(p).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            log.into_iter().collect::<Vec<_>>(),
            vec![(1, 1), (2, 2), (3, 33)]
        );
    }
}
