//! A durable replica's snapshot: one file of its own beside the log store
//! (`<dir>/snapshot.bin`), written whole to a temporary file, fsynced and renamed over
//! the previous one, so a crash leaves either the old snapshot or the new one.
//!
//! Until session 9 the snapshot was a record in the replica's redb file: each snapshot
//! copied the whole state into redb's pages, and a restart read it back through redb and
//! copied it once more. As a file it is written once; since session 10 a restart maps it
//! ([`open`]) instead of copying it into a buffer: the state machine decodes straight
//! from the page cache, the checksum ([`SnapshotFile::spawn_verify`]) runs on its own
//! thread while the store reads its log, and the replica keeps the mapping (page cache,
//! not a second copy of the state in its own memory) as the snapshot it serves.
//!
//! Since session 12 the mapping outlives the restore: a kv app keeps its long string
//! values as slices of it (`StateMachine::restore_shared`, copied on their first change),
//! and a snapshot the replica saves (built, or received from a leader) is mapped back
//! from its file once written and checked, the same code as at open.
//!
//! # Why mapping is safe here
//! A mapped file that shrinks under its mapping faults (SIGBUS) on the next read. This
//! module never writes a snapshot file in place: a new one is written to a temporary
//! file and renamed over the old, which leaves the mapped inode intact until the
//! mapping is dropped (its disk space is freed then: the state machine has the app copy
//! what it still holds of an older file once a newer one is saved). Nothing else may
//! write into a replica's directory while its agent runs (the agent owns its
//! `--data-dir`); removing the directory unlinks the file, which does not fault either.
//!
//! # Layout
//! `MAGIC` (8 bytes), the metadata's length (u32 LE), the body's length (u64 LE),
//! `crc32(metadata ++ body)` (u32 LE), the metadata (postcard), the body (the state
//! machine's bytes). A file whose length disagrees with its header is torn; one whose
//! checksum disagrees is corrupt: either way the replica does not serve it.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The snapshot's file inside a replica's directory.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot.bin";
/// Where a snapshot is written before it is renamed into place (a leftover is removed).
pub const SNAPSHOT_TMP_FILE_NAME: &str = "snapshot.bin.tmp";
/// The first bytes of a snapshot file (and its format version).
const MAGIC: &[u8; 8] = b"STSNAP01";
const HEADER_BYTES: u64 = 8 + 4 + 8 + 4;
/// Largest metadata a snapshot may declare (its membership and id); a larger length in
/// a header is corruption, not a reason to allocate.
pub const MAX_META_BYTES: u32 = 16 << 20;
/// Bytes checksummed at a time in tests of the chunked reader (kept: a body larger than
/// one chunk must still verify as one checksum).
#[cfg(test)]
const READ_CHUNK_BYTES: u64 = 8 << 20;

/// The snapshot file of a replica directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE_NAME)
}

/// Writes `meta` and `body` as the replica's snapshot, durably: on return the file and
/// its name are fsynced.
pub fn write(dir: &Path, meta: &[u8], body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE_NAME);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(meta);
    hasher.update(body);
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(MAGIC);
    let meta_len = u32::try_from(meta.len())
        .ok()
        .filter(|n| *n <= MAX_META_BYTES)
        .ok_or_else(|| std::io::Error::other("snapshot metadata too large"))?;
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&hasher.finalize().to_le_bytes());
    let mut file = File::create(&tmp)?;
    file.write_all(&header)?;
    file.write_all(meta)?;
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path(dir))?;
    // The rename itself is durable once the directory is.
    File::open(dir)?.sync_all()
}

/// A snapshot's state bytes: built in memory, or mapped from the replica's file.
#[derive(Debug)]
pub enum StateBytes {
    /// Built or received by this replica.
    Owned(Vec<u8>),
    /// Mapped read-only from the snapshot file (see the module doc for why it is safe).
    Mapped(memmap2::Mmap),
}

impl Deref for StateBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StateBytes::Owned(bytes) => bytes,
            StateBytes::Mapped(map) => map,
        }
    }
}

impl From<Vec<u8>> for StateBytes {
    fn from(bytes: Vec<u8>) -> Self {
        StateBytes::Owned(bytes)
    }
}

/// `part` of `state` (a slice of it) as shared bytes, without a copy: the bytes keep
/// `state` (its mapping, or its buffer) alive for as long as any of them is held. A
/// durable replica hands its app the app's part of the snapshot this way (see
/// `StateMachine::restore_shared`).
pub fn share(state: &Arc<StateBytes>, part: &[u8]) -> bytes::Bytes {
    bytes::Bytes::from_owner(SharedState(state.clone())).slice_ref(part)
}

/// The owner of [`share`]'s bytes.
struct SharedState(Arc<StateBytes>);

impl AsRef<[u8]> for SharedState {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A snapshot file opened with its header checked and its body mapped, not yet verified
/// against its checksum: nothing may be served from it before [`SnapshotFile::verify`]
/// (or the thread of [`SnapshotFile::spawn_verify`]) says it is intact.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The metadata's bytes (postcard).
    pub meta: Vec<u8>,
    /// The state machine's bytes.
    pub body: Arc<StateBytes>,
    stored_checksum: u32,
}

impl SnapshotFile {
    /// Checks `crc32(metadata ++ body)` against the header's.
    pub fn verify(&self) -> Result<(), String> {
        verify(&self.meta, &self.body, self.stored_checksum)
    }

    /// Checks the checksum on a thread of its own (1 GiB takes a core for a while), so the
    /// caller can read the log meanwhile; join the handle before serving anything.
    pub fn spawn_verify(&self) -> std::thread::JoinHandle<Result<(), String>> {
        let (meta, body, stored) = (self.meta.clone(), self.body.clone(), self.stored_checksum);
        std::thread::spawn(move || verify(&meta, &body, stored))
    }
}

fn verify(meta: &[u8], body: &[u8], stored: u32) -> Result<(), String> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(meta);
    hasher.update(body);
    let actual = hasher.finalize();
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok(())
}

/// Opens the replica's snapshot: `Ok(None)` when there is none, `Err` (what failed) when
/// the file is torn; its body is mapped, and its checksum is checked by the caller
/// ([`SnapshotFile::verify`]). Removes a leftover temporary file.
pub fn open(dir: &Path) -> Result<Option<SnapshotFile>, String> {
    let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP_FILE_NAME));
    let mut file = match File::open(path(dir)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let io = |e: std::io::Error| format!("cannot read: {e}");
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < HEADER_BYTES {
        return Err(format!(
            "torn: {file_len} bytes, shorter than its {HEADER_BYTES}-byte header"
        ));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut header).map_err(io)?;
    if &header[..8] != MAGIC {
        return Err("not a snapshot file (bad magic)".into());
    }
    let meta_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let body_len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let stored_checksum = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    let want = HEADER_BYTES
        .checked_add(meta_len as u64)
        .and_then(|n| n.checked_add(body_len));
    if meta_len > MAX_META_BYTES || want != Some(file_len) {
        return Err(format!(
            "torn: {file_len} bytes, its header says {meta_len} of metadata and {body_len} of state"
        ));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact(&mut meta).map_err(io)?;
    let body = if body_len == 0 {
        // An empty mapping is an error on Linux; an empty state is just empty.
        StateBytes::Owned(Vec::new())
    } else {
        let len = usize::try_from(body_len).map_err(|_| "torn: state larger than memory")?;
        // SAFETY: the file is never written in place (module doc): it is replaced by a
        // rename, which leaves this mapping's inode unchanged until the mapping drops.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(HEADER_BYTES + meta_len as u64)
                .len(len)
                .populate()
                .map(&file)
        }
        .map_err(|e| format!("cannot map: {e}"))?;
        StateBytes::Mapped(map)
    };
    Ok(Some(SnapshotFile {
        meta,
        body: Arc::new(body),
        stored_checksum,
    }))
}

/// Reads the replica's snapshot and checks it: `Ok(None)` when there is none, `Err`
/// (what failed) when the file is torn or fails its checksum. The store opens with
/// [`open`] and checks beside its log read; this sequential form is for the tests.
#[cfg(test)]
fn read(dir: &Path) -> Result<Option<SnapshotFile>, String> {
    let Some(file) = open(dir)? else {
        return Ok(None);
    };
    file.verify()?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_a_flipped_bit_or_a_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let body: Vec<u8> = (0..(READ_CHUNK_BYTES as usize + 1000))
            .map(|i| i as u8)
            .collect();
        write(dir.path(), b"meta", &body).unwrap();
        let SnapshotFile {
            meta,
            body: read_body,
            ..
        } = read(dir.path()).unwrap().expect("a snapshot");
        assert_eq!(meta, b"meta");
        assert_eq!(&read_body[..], &body[..]);
        drop(read_body);

        let file = path(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("checksum"));

        bytes.truncate(bytes.len() - 10);
        std::fs::write(&file, &bytes).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("torn"));

        // A write that crashed before its rename leaves the previous snapshot in place.
        write(dir.path(), b"m2", b"second").unwrap();
        std::fs::write(dir.path().join(SNAPSHOT_TMP_FILE_NAME), b"half a snap").unwrap();
        let SnapshotFile { meta, body, .. } = read(dir.path()).unwrap().unwrap();
        assert_eq!((meta.as_slice(), &body[..]), (&b"m2"[..], &b"second"[..]));
        assert!(!dir.path().join(SNAPSHOT_TMP_FILE_NAME).exists());
    }
}
