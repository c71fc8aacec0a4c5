//! Snapshot encoding: the whole keyspace, expiries, write versions and clock in a
//! length-prefixed format.
//!
//! Layout of version 2 (integers little-endian): `b"STKV"`, version `u8`, `now_ms: u64`,
//! `write_version: u64`, `entries: u64`, then per entry, sorted by key so equal states give
//! equal bytes: `key_len: u32`, key, `type: u8`, the payload, `has_expiry: u8` (0 or 1),
//! `expires_at_ms: u64` if 1, and `version: u64`. Payloads (`bytes` is `len: u32` then the
//! bytes; collections keep their insertion order, which their random picks depend on):
//! - 0 string: `bytes`.
//! - 1 hash: `count: u32`, then `count` × (field `bytes`, value `bytes`).
//! - 2 list: `count: u32`, then `count` × `bytes`, head first.
//! - 3 set: `count: u32`, then `count` × `bytes`.
//! - 4 sorted set: `count: u32`, then `count` × (member `bytes`, score `f64` bits `u64`).
//!
//! Version 3 is version 2 followed by the scripts: `scripts: u32`, then each EVAL script
//! body as `bytes` (sorted by SHA1, which is recomputed on load), then `libraries: u32`,
//! then each FUNCTION library's code as `bytes` (sorted by name; loaded again on restore,
//! which re-registers its functions exactly as FUNCTION LOAD did). Version 2 is still read
//! (no scripts).
//!
//! Version 1 (strings only: no `write_version`, no type byte, no per-entry version) is still
//! read, so a node upgraded in place restores its old snapshots.

use crate::key_table::{Hold, Shard, ShardEncoder};
use crate::keyspace::{Entry, Keyspace};
use crate::machine::KvMachine;
use crate::ops::{Scripts, MAX_CACHED_SCRIPTS, MAX_FUNCTION_LIBRARIES};
use crate::scripting::sha1_hex;
use crate::types::{Data, Hash, List, Set, Str, ZSet};
use bytes::Bytes;
use stator_api::app::AppError;
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"STKV";
const VERSION: u8 = 3;
/// Typed keys without scripts, written before scripting existed.
const VERSION_WITHOUT_SCRIPTS: u8 = 2;
/// The strings-only format written before types existed.
const VERSION_STRINGS_ONLY: u8 = 1;

/// Fewest bytes one encoded entry takes (empty key and string, no expiry): caps the map
/// capacity reserved from an untrusted entry count by the bytes actually present.
const MIN_ENTRY_BYTES: usize = 4 + 1 + 4 + 1 + 8;

/// Fewest bytes one collection element takes (an empty list item): caps reservations the
/// same way.
const MIN_ELEMENT_BYTES: usize = 4;

/// Shortest string a restore from shared bytes ([`decode_shared`]) keeps as a slice of
/// them rather than a copy: a slice costs a boxed `Bytes` (32 bytes) and a reference
/// count, so below this a copy takes no more memory and no atomic.
pub(crate) const MIN_SHARED_STR_BYTES: usize = 64;

/// Walk cost of one entry against a [`release_shared`] pass's byte budget, so a pass over
/// strings already made owned (or keys since deleted) is bounded too.
const RELEASE_ENTRY_COST_BYTES: u64 = 64;

/// The snapshot a machine's shared strings are slices of, and how far
/// [`release_shared`] has walked it. Held until the walk ends, so it pins the snapshot's
/// bytes (a mapped file) no longer than the strings do.
#[derive(Debug)]
pub(crate) struct SharedSnapshot {
    bytes: Bytes,
    /// Where the next entry starts.
    position: usize,
    entries_left: u64,
    typed: bool,
}

/// Serialises `machine`, entries sorted by key.
pub(crate) fn encode(machine: &KvMachine) -> Vec<u8> {
    encode_unsorted(machine).finish()
}

/// Where one entry lies in its [`Part`]'s bytes: `start..end`, its key (after the key's
/// length) `start + 4..key_end`.
struct Span {
    start: usize,
    key_end: usize,
    end: usize,
}

/// Entries encoded one after the other, in the order they were walked: a whole table's
/// ([`encode_unsorted`]) or one shard's ([`encode_shard`]).
pub(crate) struct Part {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

/// A snapshot in the keyspace's own order: every entry encoded, to be sorted by key and
/// assembled by [`Unsorted::finish`] without the machine. Neither that nor the walk that
/// makes it ([`Captured::encode`]) needs the machine: the part of a snapshot that does is
/// [`capture`], a fixed handful of work (docs/BENCHMARKS.md, session 19; before, the walk
/// held it 2-7 ms at 100,000 keys and 0.1-2.5 s at a million, session 18).
pub(crate) struct Unsorted {
    header: Vec<u8>,
    parts: Vec<Part>,
    scripts: Vec<u8>,
}

/// What a snapshot takes from the machine: the header's fields, the table frozen
/// ([`Keyspace::freeze`]: each shard shared, see [`Hold`]) and the scripts (small,
/// capped). Taking it costs the same at any keyspace size; [`Captured::encode`] walks the
/// keys afterwards, on any thread, while the machine goes on applying writes (a write to
/// a shard not walked yet encodes it for the walk first).
pub(crate) struct Captured {
    header: Vec<u8>,
    keys: Arc<Hold<Part>>,
    scripts: Vec<u8>,
}

/// The snapshot's header: format, clock, write counter, entry count.
fn header(machine: &KvMachine) -> Vec<u8> {
    let mut header = Vec::with_capacity(29);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.extend_from_slice(&machine.now_ms.to_le_bytes());
    header.extend_from_slice(&machine.keyspace.write_version().to_le_bytes());
    header.extend_from_slice(&(machine.keyspace.len() as u64).to_le_bytes());
    header
}

fn encoded_scripts(machine: &KvMachine) -> Vec<u8> {
    let mut scripts = Vec::new();
    encode_scripts(&mut scripts, &machine.scripts);
    scripts
}

/// Takes what a snapshot of `machine` needs (see [`Captured`]).
pub(crate) fn capture(machine: &mut KvMachine) -> Captured {
    Captured {
        header: header(machine),
        keys: machine.keyspace.freeze(shard_encoder(&machine.keyspace)),
        scripts: encoded_scripts(machine),
    }
}

/// Encodes every entry of `machine` in the keyspace's order (see [`Unsorted`]), walking
/// the table in place (for a caller that holds the machine until the bytes are made).
pub(crate) fn encode_unsorted(machine: &KvMachine) -> Unsorted {
    let count = machine.keyspace.len();
    let mut part = Part::with_capacity(
        count,
        machine.keyspace.bytes() as usize + count * ENTRY_OVERHEAD_BYTES,
    );
    for (key, entry) in machine.keyspace.iter() {
        part.push(key, entry);
    }
    Unsorted {
        header: header(machine),
        parts: vec![part],
        scripts: encoded_scripts(machine),
    }
}

/// Bytes one entry takes beyond its key's and value's: the lengths, type, expiry flag and
/// version, with room for an expiry ([`Part::push`]).
const ENTRY_OVERHEAD_BYTES: usize = 26;

/// Encodes one shard's entries, for [`Hold`]: on the snapshot's thread, or on the
/// machine's when a write reaches the shard first. A part's buffer is sized from the
/// keyspace's average entry when frozen, so it is rarely grown (each growth a copy, and
/// the heap left with the smaller buffer's hole).
fn shard_encoder(keyspace: &Keyspace) -> ShardEncoder<Part> {
    let average = (keyspace.bytes() as usize)
        .checked_div(keyspace.len())
        .unwrap_or(0)
        + ENTRY_OVERHEAD_BYTES;
    Box::new(move |shard: &Shard| {
        let count = shard.len();
        // An eighth more than the average, for a shard of longer values.
        let mut part = Part::with_capacity(count, count * average + count * average / 8);
        for (key, entry) in shard.iter() {
            part.push(key.as_bytes(), entry);
        }
        part
    })
}

impl Captured {
    /// Every entry encoded, shard by shard (those a write has not encoded already).
    pub(crate) fn encode(self) -> Unsorted {
        let parts = self.keys.walk();
        debug_assert_eq!(
            parts.iter().map(|part| part.spans.len()).sum::<usize>(),
            self.keys.len(),
            "the frozen table counts what it holds"
        );
        Unsorted {
            header: self.header,
            parts,
            scripts: self.scripts,
        }
    }
}

impl Part {
    fn with_capacity(count: usize, bytes: usize) -> Self {
        Part {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(count),
        }
    }

    fn push(&mut self, key: &[u8], entry: &Entry) {
        let body = &mut self.bytes;
        let start = body.len();
        push_bytes(body, key);
        let key_end = body.len();
        encode_data(body, &entry.data);
        match entry.expires_at_ms() {
            None => body.push(0),
            Some(at_ms) => {
                body.push(1);
                body.extend_from_slice(&at_ms.to_le_bytes());
            }
        }
        body.extend_from_slice(&entry.version.to_le_bytes());
        self.spans.push(Span {
            start,
            key_end,
            end: body.len(),
        });
    }
}

impl Unsorted {
    /// The snapshot's bytes: the entries sorted by key, so equal states give equal bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        // (key, whole entry) of every entry, whichever part holds it.
        let mut entries: Vec<(&[u8], &[u8])> = self
            .parts
            .iter()
            .flat_map(|part| {
                part.spans.iter().map(|span| {
                    (
                        &part.bytes[span.start + 4..span.key_end],
                        &part.bytes[span.start..span.end],
                    )
                })
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let body: usize = self.parts.iter().map(|part| part.bytes.len()).sum();
        let mut out = Vec::with_capacity(self.header.len() + body + self.scripts.len());
        out.extend_from_slice(&self.header);
        for (_, entry) in &entries {
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(&self.scripts);
        out
    }
}

fn encode_scripts(out: &mut Vec<u8>, scripts: &Scripts) {
    let count = |len: usize| {
        u32::try_from(len)
            .expect("script and library counts are capped far below u32::MAX")
            .to_le_bytes()
    };
    out.extend_from_slice(&count(scripts.bodies.len()));
    for body in scripts.bodies.values() {
        push_bytes(out, body);
    }
    out.extend_from_slice(&count(scripts.libraries.len()));
    for library in scripts.libraries.values() {
        push_bytes(out, &library.code);
    }
}

fn decode_scripts(reader: &mut Reader<'_>) -> Result<Scripts, AppError> {
    let mut scripts = Scripts::default();
    let bodies = reader.u32()? as usize;
    if bodies > MAX_CACHED_SCRIPTS {
        return Err(bad(&format!(
            "holds {bodies} scripts, more than the cap of {MAX_CACHED_SCRIPTS}"
        )));
    }
    for _ in 0..bodies {
        let body = reader.len_prefixed()?.to_vec();
        scripts.cache(sha1_hex(&body), body);
    }
    let libraries = reader.u32()? as usize;
    if libraries > MAX_FUNCTION_LIBRARIES {
        return Err(bad(&format!(
            "holds {libraries} function libraries, more than the cap of {MAX_FUNCTION_LIBRARIES}"
        )));
    }
    for _ in 0..libraries {
        let code = reader.len_prefixed()?.to_vec();
        scripts.load_library(code, false).map_err(|reply| {
            bad(&format!(
                "holds a function library that no longer loads: {reply:?}"
            ))
        })?;
    }
    Ok(scripts)
}

fn encode_data(out: &mut Vec<u8>, data: &Data) {
    let push_count = |out: &mut Vec<u8>, count: usize| {
        let count = u32::try_from(count).expect("collections hold fewer than u32::MAX elements");
        out.extend_from_slice(&count.to_le_bytes());
    };
    match data {
        Data::Str(value) => {
            out.push(0);
            push_bytes(out, value);
        }
        Data::Hash(hash) => {
            out.push(1);
            push_count(out, hash.len());
            for (field, value) in hash.iter() {
                push_bytes(out, field);
                push_bytes(out, value);
            }
        }
        Data::List(list) => {
            out.push(2);
            push_count(out, list.len());
            for item in &list.items {
                push_bytes(out, item);
            }
        }
        Data::Set(set) => {
            out.push(3);
            push_count(out, set.len());
            for member in set.iter() {
                push_bytes(out, member);
            }
        }
        Data::ZSet(zset) => {
            out.push(4);
            push_count(out, zset.len());
            for (member, score) in zset.iter() {
                push_bytes(out, member);
                out.extend_from_slice(&score.to_bits().to_le_bytes());
            }
        }
    }
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len())
        .expect("keys and values are bounded by MAX_BULK_BYTES, far below u32::MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Rebuilds a machine from [`encode`]'s output, refusing anything malformed.
pub(crate) fn decode(bytes: &[u8]) -> Result<KvMachine, AppError> {
    decode_with(bytes, None)
}

/// Like [`decode`], but strings of [`MIN_SHARED_STR_BYTES`] or more stay slices of
/// `bytes` (copied on their first change; [`release_shared`] copies the rest): a
/// restore from a mapped snapshot file then neither copies them nor faults in fresh
/// memory for them.
pub(crate) fn decode_shared(bytes: &Bytes) -> Result<KvMachine, AppError> {
    decode_with(bytes, Some(bytes))
}

/// A string value read from the snapshot: a slice of `shared` when given and long
/// enough, else a copy.
fn string_value(value: &[u8], shared: Option<&Bytes>) -> Str {
    match shared {
        Some(shared) if value.len() >= MIN_SHARED_STR_BYTES => {
            Str::Shared(Box::new(shared.slice_ref(value)))
        }
        _ => Str::from_slice(value),
    }
}

fn decode_with(bytes: &[u8], shared: Option<&Bytes>) -> Result<KvMachine, AppError> {
    let mut reader = Reader { bytes, position: 0 };
    if reader.take(4)? != MAGIC {
        return Err(bad(
            "does not start with the kv snapshot magic 'STKV'; was it taken by another app?",
        ));
    }
    let version = reader.take(1)?[0];
    if ![VERSION, VERSION_WITHOUT_SCRIPTS, VERSION_STRINGS_ONLY].contains(&version) {
        return Err(bad(&format!(
            "version {version} is not supported (expected {VERSION}, {VERSION_WITHOUT_SCRIPTS} or {VERSION_STRINGS_ONLY}); upgrade this node"
        )));
    }
    let typed = version != VERSION_STRINGS_ONLY;
    let now_ms = reader.u64()?;
    let write_version = if typed { reader.u64()? } else { 0 };
    let entry_count = reader.u64()?;
    let remaining_bytes = bytes.len() - reader.position;
    let min_entry_bytes = if typed { MIN_ENTRY_BYTES } else { 4 + 4 + 1 };
    let capacity = usize::try_from(entry_count)
        .unwrap_or(usize::MAX)
        .min(remaining_bytes / min_entry_bytes);
    let mut keyspace = Keyspace::with_capacity(capacity);
    let entries_start = reader.position;
    let mut any_shared = false;
    let mut previous_key: Option<&[u8]> = None;
    for _ in 0..entry_count {
        let key = reader.len_prefixed()?;
        if previous_key.is_some_and(|previous| previous >= key) {
            return Err(bad(
                "keys are not strictly sorted (duplicate or reordered entry)",
            ));
        }
        previous_key = Some(key);
        let data = if typed {
            decode_data(&mut reader, shared)?
        } else {
            Data::Str(string_value(reader.len_prefixed()?, shared))
        };
        any_shared |= matches!(&data, Data::Str(value) if value.is_shared());
        if data.is_empty_collection() {
            return Err(bad(&format!("key {key:?} holds an empty collection")));
        }
        let expires_at_ms = match reader.take(1)?[0] {
            0 => None,
            1 => Some(reader.u64()?),
            other => return Err(bad(&format!("expiry flag {other} is neither 0 nor 1"))),
        };
        // Version 1 kept no versions: its keys start at 0, as if unwritten since.
        let version = if typed { reader.u64()? } else { 0 };
        if version > write_version {
            return Err(bad(&format!(
                "key version {version} is past the write version {write_version}"
            )));
        }
        // Keys are strictly sorted (checked above), so this adds each once, in one insert.
        keyspace.insert_restored(key, data, expires_at_ms, version);
    }
    let scripts = if version == VERSION {
        decode_scripts(&mut reader)?
    } else {
        Scripts::default()
    };
    if reader.position != bytes.len() {
        return Err(bad(&format!(
            "{} trailing bytes after the last entry",
            bytes.len() - reader.position
        )));
    }
    keyspace.set_write_version(write_version);
    let shared_snapshot = shared.filter(|_| any_shared).map(|shared| SharedSnapshot {
        bytes: shared.clone(),
        position: entries_start,
        entries_left: entry_count,
        typed,
    });
    Ok(KvMachine {
        keyspace,
        now_ms,
        scripts,
        shared_snapshot,
        ..KvMachine::default()
    })
}

/// Copies strings still shared with the restored snapshot into the machine's own
/// memory, walking the snapshot's entries in order, until about `max_bytes` are spent
/// (copied bytes plus [`RELEASE_ENTRY_COST_BYTES`] per entry). Returns true once the walk
/// is done: no string is shared any more and the snapshot's bytes are let go.
pub(crate) fn release_shared(machine: &mut KvMachine, max_bytes: u64) -> bool {
    let Some(shared) = machine.shared_snapshot.as_mut() else {
        return true;
    };
    let mut reader = Reader {
        bytes: &shared.bytes,
        position: shared.position,
    };
    let mut spent = 0u64;
    while shared.entries_left > 0 && spent < max_bytes {
        let (key, is_string) = skip_entry(&mut reader, shared.typed)
            .expect("a shared snapshot was checked whole when it was restored");
        shared.entries_left -= 1;
        spent += RELEASE_ENTRY_COST_BYTES;
        if is_string {
            spent += machine.keyspace.unshare(key) as u64;
        }
    }
    shared.position = reader.position;
    if shared.entries_left > 0 {
        return false;
    }
    machine.shared_snapshot = None;
    true
}

/// Steps over one entry of a checked snapshot: its key, and whether it holds a string.
fn skip_entry<'a>(reader: &mut Reader<'a>, typed: bool) -> Result<(&'a [u8], bool), AppError> {
    let key = reader.len_prefixed()?;
    let kind = if typed { reader.take(1)?[0] } else { 0 };
    if kind == 0 {
        reader.len_prefixed()?;
    } else {
        let count = reader.u32()?;
        let strings_per_element = if kind == 1 { 2 } else { 1 };
        for _ in 0..count {
            for _ in 0..strings_per_element {
                reader.len_prefixed()?;
            }
            if kind == 4 {
                reader.u64()?;
            }
        }
    }
    if reader.take(1)?[0] == 1 {
        reader.u64()?;
    }
    if typed {
        reader.u64()?;
    }
    Ok((key, kind == 0))
}

fn decode_data(reader: &mut Reader<'_>, shared: Option<&Bytes>) -> Result<Data, AppError> {
    let kind = reader.take(1)?[0];
    if kind == 0 {
        return Ok(Data::Str(string_value(reader.len_prefixed()?, shared)));
    }
    let count = u32::from_le_bytes(reader.take(4)?.try_into().expect("took 4 bytes")) as usize;
    if count > (reader.bytes.len() - reader.position) / MIN_ELEMENT_BYTES {
        return Err(bad(&format!(
            "collection of {count} elements is longer than the snapshot"
        )));
    }
    let duplicate = || bad("collection repeats an element");
    Ok(match kind {
        1 => {
            let mut hash = Hash::default();
            for _ in 0..count {
                let field = reader.len_prefixed()?.to_vec();
                let value = reader.len_prefixed()?.to_vec();
                if !hash.insert(field, value) {
                    return Err(duplicate());
                }
            }
            Data::Hash(Box::new(hash))
        }
        2 => {
            let mut list = List::default();
            for _ in 0..count {
                list.push(reader.len_prefixed()?.to_vec(), false);
            }
            Data::List(Box::new(list))
        }
        3 => {
            let mut set = Set::default();
            for _ in 0..count {
                if !set.insert(reader.len_prefixed()?.to_vec()) {
                    return Err(duplicate());
                }
            }
            Data::Set(Box::new(set))
        }
        4 => {
            let mut zset = ZSet::default();
            for _ in 0..count {
                let member = reader.len_prefixed()?.to_vec();
                let score = f64::from_bits(reader.u64()?);
                if score.is_nan() {
                    return Err(bad("sorted-set score is NaN"));
                }
                if zset.insert(member, score).is_some() {
                    return Err(duplicate());
                }
            }
            Data::ZSet(Box::new(zset))
        }
        other => return Err(bad(&format!("type tag {other} is unknown (0-4 expected)"))),
    })
}

fn bad(what: &str) -> AppError {
    AppError::BadSnapshot(format!("kv snapshot {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], AppError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                bad(&format!(
                    "is truncated: needs {len} bytes at offset {} of {}",
                    self.position,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, AppError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, AppError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8 bytes"),
        ))
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], AppError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes"));
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for input in [
            &b""[..],
            b"STKV",
            b"XXXX\x01",
            b"STKV\x04",
            b"STKV\x03",
            b"STKV\x02",
            b"STKV\x01\0\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            assert!(
                matches!(decode(input), Err(AppError::BadSnapshot(_))),
                "{input:?}"
            );
        }
        let mut valid = encode(&KvMachine::new());
        assert_eq!(decode(&valid).unwrap().key_count(), 0);
        valid.push(0);
        assert!(decode(&valid).is_err());
    }

    #[test]
    fn entries_are_sorted_by_key_whatever_order_they_were_written_in() {
        let keys = ["key-m", "key-a", "key-z", "key-b", "key-c"];
        let write = |order: &[&str]| {
            let mut machine = KvMachine::new();
            for key in order {
                machine.apply_argv(
                    0,
                    &[b"SET".to_vec(), key.as_bytes().to_vec(), b"v".to_vec()],
                );
            }
            machine
        };
        let mut sorted = keys.to_vec();
        sorted.sort();
        // Where each key (length-prefixed, as encoded) starts, in sorted key order.
        let positions = |bytes: &[u8]| -> Vec<usize> {
            sorted
                .iter()
                .map(|key| {
                    let mut needle = (key.len() as u32).to_le_bytes().to_vec();
                    needle.extend_from_slice(key.as_bytes());
                    bytes
                        .windows(needle.len())
                        .position(|w| w == needle)
                        .unwrap()
                })
                .collect()
        };
        let bytes = encode(&write(&keys));
        let forward = positions(&bytes);
        assert!(forward.windows(2).all(|w| w[0] < w[1]), "{forward:?}");
        assert_eq!(
            encode(&decode(&bytes).unwrap()),
            bytes,
            "a restored copy encodes the same"
        );
        // Written in the opposite order (so with other write versions): the same places.
        let reversed: Vec<&str> = keys.iter().rev().copied().collect();
        assert_eq!(positions(&encode(&write(&reversed))), forward);
    }

    #[test]
    fn entry_capacity_constant_matches_the_format() {
        let mut machine = KvMachine::new();
        machine.apply_argv(0, &[b"SET".to_vec(), b"".to_vec(), b"".to_vec()]);
        // The empty script trailer (two zero counts) is part of the header here.
        let header_bytes = encode(&KvMachine::new()).len();
        assert_eq!(encode(&machine).len() - header_bytes, MIN_ENTRY_BYTES);
    }
}

#[cfg(test)]
mod script_tests {
    use super::*;
    use crate::resp::Value;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn scripts_and_functions_survive_a_snapshot() {
        let mut machine = KvMachine::new();
        machine.apply_argv(1, &argv(&["SCRIPT", "LOAD", "return 'cached'"]));
        let library =
            "#!lua name=lib\nredis.register_function('f', function(k, a) return a[1] end)";
        assert_eq!(
            machine.apply_argv(1, &argv(&["FUNCTION", "LOAD", library])),
            Value::bulk("lib")
        );
        let restored = decode(&encode(&machine)).unwrap();
        assert_eq!(restored.scripts, machine.scripts);
        let mut restored = restored;
        let sha = crate::scripting::sha1_hex(b"return 'cached'");
        assert_eq!(
            restored.apply_argv(2, &argv(&["EVALSHA", &sha, "0"])),
            Value::bulk("cached")
        );
        assert_eq!(
            restored.apply_argv(2, &argv(&["FCALL", "f", "0", "x"])),
            Value::bulk("x")
        );
    }

    #[test]
    fn version_2_snapshots_still_load() {
        let mut machine = KvMachine::new();
        machine.apply_argv(1, &argv(&["SET", "k", "v"]));
        let mut bytes = encode(&machine);
        // A version 2 snapshot is a version 3 one without the script trailer.
        bytes[4] = VERSION_WITHOUT_SCRIPTS;
        bytes.truncate(bytes.len() - 8);
        let restored = decode(&bytes).unwrap();
        assert_eq!(restored.key_count(), 1);
        assert!(restored.scripts.bodies.is_empty());
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::resp::Value;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    /// Snapshot bytes whose owner says when it is dropped (as a mapped file would be
    /// unmapped).
    struct Owner {
        bytes: Vec<u8>,
        dropped: Arc<AtomicBool>,
    }

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn long(tag: &str) -> String {
        format!("{tag}:{}", "v".repeat(MIN_SHARED_STR_BYTES * 2))
    }

    /// A machine with long strings (shared on restore), short ones, collections and
    /// expiries.
    fn sample() -> KvMachine {
        let mut machine = KvMachine::new();
        for n in 0..40 {
            machine.apply_argv(
                1,
                &argv(&["SET", &format!("long{n:02}"), &long(&n.to_string())]),
            );
        }
        machine.apply_argv(1, &argv(&["SET", "short", "s"]));
        machine.apply_argv(1, &argv(&["SET", "expiring", &long("e"), "PX", "100000"]));
        machine.apply_argv(1, &argv(&["HSET", "hash", "f", &long("h"), "g", "x"]));
        machine.apply_argv(1, &argv(&["RPUSH", "list", &long("l"), "y"]));
        machine.apply_argv(1, &argv(&["SADD", "set", &long("s"), "z"]));
        machine.apply_argv(1, &argv(&["ZADD", "zset", "1.5", &long("z")]));
        machine
    }

    fn restored_shared(machine: &KvMachine) -> (KvMachine, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let bytes = Bytes::from_owner(Owner {
            bytes: encode(machine),
            dropped: dropped.clone(),
        });
        let restored = decode_shared(&bytes).unwrap();
        drop(bytes);
        (restored, dropped)
    }

    fn shared_count(machine: &KvMachine) -> usize {
        machine
            .keyspace
            .iter()
            .filter(|(_, entry)| matches!(&entry.data, Data::Str(value) if value.is_shared()))
            .count()
    }

    #[test]
    fn a_shared_restore_serves_its_strings_and_copies_them_on_write() {
        let mut original = sample();
        let (mut restored, dropped) = restored_shared(&original);
        // The long strings (40 plain, 1 expiring) are slices; short ones and collections
        // are copies; everything counts and encodes alike.
        assert_eq!(shared_count(&restored), 41);
        assert_eq!(restored.data_bytes(), original.data_bytes());
        assert_eq!(encode(&restored), encode(&original));
        for words in [
            &["GET", "long00"][..],
            &["STRLEN", "long01"],
            &["GETRANGE", "long02", "0", "5"],
            &["MGET", "long03", "short", "expiring"],
            &["APPEND", "long04", "tail"],
            &["SETRANGE", "long05", "2", "XYZ"],
            &["SET", "long06", &long("same size")],
            &["SET", "long07", "now short"],
            &["SET", "long08", "x", "GET"],
            &["GETSET", "long09", "y"],
            &["GETDEL", "long10"],
            &["INCR", "long11"],
            &["SETRANGE", "expiring", "0", "E"],
            &["RENAME", "long12", "renamed"],
            &["COPY", "long13", "copied"],
            &["SET", "long14", "p", "PX", "1"],
            &["DEL", "long15"],
            &["GET", "long16"],
        ] {
            assert_eq!(
                restored.apply_argv(2, &argv(words)),
                original.apply_argv(2, &argv(words)),
                "{words:?}"
            );
            restored.keyspace.assert_consistent();
            assert_eq!(restored.data_bytes(), original.data_bytes(), "{words:?}");
        }
        assert_eq!(encode(&restored), encode(&original));
        // A value copied on write no longer refers to the snapshot; untouched ones do.
        assert!(matches!(
            &restored.keyspace.live(b"long04", 2).unwrap().data,
            Data::Str(value) if !value.is_shared()
        ));
        assert!(matches!(
            &restored.keyspace.live(b"long20", 2).unwrap().data,
            Data::Str(value) if value.is_shared()
        ));
        assert!(!dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn release_copies_in_bounded_passes_then_lets_the_snapshot_go() {
        let original = sample();
        let (mut restored, dropped) = restored_shared(&original);
        let mut passes = 0;
        while !restored.release_shared(MIN_SHARED_STR_BYTES as u64 * 4) {
            passes += 1;
            assert!(
                !dropped.load(Ordering::SeqCst),
                "let go before the walk ended"
            );
            assert!(passes < 1000, "the walk does not end");
        }
        assert!(passes > 5, "one pass copied far more than its budget");
        assert_eq!(shared_count(&restored), 0);
        assert!(!restored.holds_shared_snapshot());
        assert!(
            dropped.load(Ordering::SeqCst),
            "the snapshot's bytes are still held"
        );
        assert_eq!(encode(&restored), encode(&original));
        assert_eq!(restored.data_bytes(), original.data_bytes());
        // Nothing left to do, and a machine never restored from shared bytes has nothing.
        assert!(restored.release_shared(1));
        assert!(KvMachine::new().release_shared(1));
    }

    #[test]
    fn a_restore_over_a_shared_one_lets_it_go_and_owned_restores_share_nothing() {
        let (mut restored, dropped) = restored_shared(&sample());
        restored.restore_keeping_budget(&encode(&sample())).unwrap();
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(shared_count(&restored), 0);
        assert!(!restored.holds_shared_snapshot());
        // Only short strings: nothing shared, nothing held.
        let mut small = KvMachine::new();
        small.apply_argv(1, &argv(&["SET", "k", "v"]));
        let (small_restored, small_dropped) = restored_shared(&small);
        assert!(!small_restored.holds_shared_snapshot());
        assert!(small_dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn the_budget_counts_shared_strings_like_owned_ones() {
        let mut original = KvMachine::with_maxmemory(0);
        original.apply_argv(1, &argv(&["SET", "a", &long("a")]));
        let budget = original.data_bytes() + 10;
        let snapshot = Bytes::from(encode(&original));
        let mut restored = KvMachine::with_maxmemory(budget);
        restored.restore_shared_keeping_budget(&snapshot).unwrap();
        assert_eq!(restored.memory_budget().max_bytes, budget);
        assert_eq!(restored.data_bytes(), original.data_bytes());
        assert!(matches!(
            restored.apply_argv(2, &argv(&["SET", "b", &long("b")])),
            Value::Error(message) if message == crate::budget::OOM_ERROR
        ));
        assert_eq!(
            restored.apply_argv(2, &argv(&["SET", "c", "0123"])),
            Value::ok()
        );
    }

    #[test]
    fn a_string_value_is_no_larger_than_a_vec() {
        assert_eq!(std::mem::size_of::<Data>(), std::mem::size_of::<Vec<u8>>());
    }
}
