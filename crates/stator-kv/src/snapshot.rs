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

use crate::keyspace::Keyspace;
use crate::machine::KvMachine;
use crate::ops::{Scripts, MAX_CACHED_SCRIPTS, MAX_FUNCTION_LIBRARIES};
use crate::scripting::sha1_hex;
use crate::types::{Data, Hash, List, Set, ZSet};
use stator_api::app::AppError;

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

/// Serialises `machine`, entries sorted by key.
pub(crate) fn encode(machine: &KvMachine) -> Vec<u8> {
    let mut entries: Vec<_> = machine.keyspace.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(40 + machine.keyspace.bytes() as usize + entries.len() * 26);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&machine.now_ms.to_le_bytes());
    out.extend_from_slice(&machine.keyspace.write_version().to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, entry) in entries {
        push_bytes(&mut out, key);
        encode_data(&mut out, &entry.data);
        match entry.expires_at_ms() {
            None => out.push(0),
            Some(at_ms) => {
                out.push(1);
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
        }
        out.extend_from_slice(&entry.version.to_le_bytes());
    }
    encode_scripts(&mut out, &machine.scripts);
    out
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

/// Snapshots smaller than this are decoded on the calling thread: below it, starting a
/// thread costs more than the copy it shares out.
const PARALLEL_DECODE_MIN_BYTES: usize = 8 << 20;

/// Most threads one decode uses (one per core up to this). The restore is most of a
/// member's restart from its own disk (docs/BENCHMARKS.md, session 11), and it is mostly
/// allocating and copying values into fresh memory, which spreads over cores.
const MAX_DECODE_THREADS: usize = 4;

/// Rebuilds a machine from [`encode`]'s output, refusing anything malformed. A large
/// snapshot is decoded on up to one thread per core (see [`decode_on`]).
pub(crate) fn decode(bytes: &[u8]) -> Result<KvMachine, AppError> {
    let threads = if bytes.len() < PARALLEL_DECODE_MIN_BYTES {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(MAX_DECODE_THREADS)
    };
    decode_on(bytes, threads)
}

/// [`decode`] on up to `threads` threads: the entries are cut into runs of about equal
/// bytes (one pass over the lengths, allocating nothing); the calling thread decodes the
/// first run straight into the keyspace while each other run is decoded (keys and values
/// allocated and copied) on a thread of its own, then inserted in order. Every check of
/// the sequential decode still runs, and the runs' boundary keys are checked to be sorted
/// too, so the result and what is refused are the same on any number of threads.
pub(crate) fn decode_on(bytes: &[u8], threads: usize) -> Result<KvMachine, AppError> {
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
    let format = Format {
        typed,
        write_version,
    };
    let runs = split_into_runs(reader.clone(), entry_count, format, threads);
    let (first, others) = runs.split_first().expect("at least one run");
    reader.position = std::thread::scope(|scope| -> Result<usize, AppError> {
        let others: Vec<_> = others
            .iter()
            .map(|&run| {
                scope.spawn(move || {
                    // The count is the snapshot's word: reserve no more than its bytes hold.
                    let most = (bytes.len() - run.start) / min_entry_bytes;
                    let capacity = usize::try_from(run.count).map_or(most, |n| n.min(most));
                    let mut entries = Vec::with_capacity(capacity);
                    let bounds = decode_run(bytes, run, format, |entry| entries.push(entry))?;
                    Ok::<_, AppError>((entries, bounds))
                })
            })
            .collect();
        let mut bounds = decode_run(bytes, *first, format, |entry| {
            keyspace.insert_restored(entry.key, entry.data, entry.expires_at_ms, entry.version)
        })?;
        for handle in others {
            let (entries, next) = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            bounds = bounds.followed_by(next)?;
            for entry in entries {
                keyspace.insert_restored(entry.key, entry.data, entry.expires_at_ms, entry.version);
            }
        }
        Ok(bounds.end)
    })?;
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
    Ok(KvMachine {
        keyspace,
        now_ms,
        scripts,
        ..KvMachine::default()
    })
}

/// What the header says about how entries are laid out.
#[derive(Debug, Clone, Copy)]
struct Format {
    /// Version 2 or later: a type byte and a version per entry.
    typed: bool,
    /// No entry's version may pass it.
    write_version: u64,
}

/// `count` consecutive entries starting at byte `start`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    count: u64,
}

/// One decoded entry, owned.
struct Restored {
    key: Vec<u8>,
    data: Data,
    expires_at_ms: Option<u64>,
    version: u64,
}

/// Where a decoded run started and ended, and its first and last keys (borrowed from the
/// snapshot).
struct RunBounds<'a> {
    keys: Option<(&'a [u8], &'a [u8])>,
    start: usize,
    end: usize,
}

impl<'a> RunBounds<'a> {
    /// This run and the one decoded after it, as one run: refused unless the next starts
    /// where this one ended and its keys sort after this run's.
    fn followed_by(self, next: RunBounds<'a>) -> Result<RunBounds<'a>, AppError> {
        if next.start != self.end {
            return Err(bad(&format!(
                "entry at offset {} was split from the one before it at {}",
                next.start, self.end
            )));
        }
        let keys = match (self.keys, next.keys) {
            (Some((_, last)), Some((first, _))) if last >= first => {
                return Err(bad(
                    "keys are not strictly sorted (duplicate or reordered entry)",
                ))
            }
            (Some((first, _)), Some((_, last))) => Some((first, last)),
            (keys, None) | (None, keys) => keys,
        };
        Ok(RunBounds {
            keys,
            start: self.start,
            end: next.end,
        })
    }
}

/// Cuts `entry_count` entries starting at `reader`'s position into at most `threads` runs
/// of about equal bytes, by walking their lengths. Anything malformed met on the way makes
/// it one run, so the sequential decode finds it and refuses it with its usual message.
fn split_into_runs(
    mut reader: Reader<'_>,
    entry_count: u64,
    format: Format,
    threads: usize,
) -> Vec<Run> {
    let whole = vec![Run {
        start: reader.position,
        count: entry_count,
    }];
    if threads <= 1 || entry_count < 2 {
        return whole;
    }
    let run_bytes = (reader.bytes.len() - reader.position) / threads;
    let mut runs = Vec::with_capacity(threads);
    let mut run = Run {
        start: reader.position,
        count: 0,
    };
    for _ in 0..entry_count {
        if runs.len() + 1 == threads {
            break;
        }
        if skip_entry(&mut reader, format.typed).is_err() {
            return whole;
        }
        run.count += 1;
        if reader.position - run.start >= run_bytes {
            runs.push(run);
            run = Run {
                start: reader.position,
                count: 0,
            };
        }
    }
    let counted: u64 = runs.iter().map(|run| run.count).sum();
    run.count = entry_count - counted;
    if run.count > 0 {
        runs.push(run);
    }
    runs
}

/// Moves `reader` past one entry without decoding it.
fn skip_entry(reader: &mut Reader<'_>, typed: bool) -> Result<(), AppError> {
    reader.len_prefixed()?;
    let kind = if typed { reader.take(1)?[0] } else { 0 };
    match kind {
        0 => {
            reader.len_prefixed()?;
        }
        1..=4 => {
            for _ in 0..reader.u32()? {
                reader.len_prefixed()?;
                match kind {
                    1 => {
                        reader.len_prefixed()?;
                    }
                    4 => {
                        reader.u64()?;
                    }
                    _ => {}
                }
            }
        }
        other => return Err(bad(&format!("type tag {other} is unknown"))),
    }
    match reader.take(1)?[0] {
        0 => {}
        1 => {
            reader.u64()?;
        }
        other => return Err(bad(&format!("expiry flag {other} is neither 0 nor 1"))),
    }
    if typed {
        reader.u64()?;
    }
    Ok(())
}

/// Decodes the entries of `run`, handing each to `sink` in order, with every check of the
/// format. Returns where the run ended and its first and last keys.
fn decode_run<'a>(
    bytes: &'a [u8],
    run: Run,
    format: Format,
    mut sink: impl FnMut(Restored),
) -> Result<RunBounds<'a>, AppError> {
    let mut reader = Reader {
        bytes,
        position: run.start,
    };
    let mut keys: Option<(&[u8], &[u8])> = None;
    for _ in 0..run.count {
        let key = reader.len_prefixed()?;
        if keys.is_some_and(|(_, previous)| previous >= key) {
            return Err(bad(
                "keys are not strictly sorted (duplicate or reordered entry)",
            ));
        }
        keys = Some((keys.map_or(key, |(first, _)| first), key));
        let data = if format.typed {
            decode_data(&mut reader)?
        } else {
            Data::Str(reader.len_prefixed()?.to_vec())
        };
        if data.is_empty_collection() {
            return Err(bad(&format!("key {key:?} holds an empty collection")));
        }
        let expires_at_ms = match reader.take(1)?[0] {
            0 => None,
            1 => Some(reader.u64()?),
            other => return Err(bad(&format!("expiry flag {other} is neither 0 nor 1"))),
        };
        // Version 1 kept no versions: its keys start at 0, as if unwritten since.
        let version = if format.typed { reader.u64()? } else { 0 };
        if version > format.write_version {
            return Err(bad(&format!(
                "key version {version} is past the write version {}",
                format.write_version
            )));
        }
        // Keys are strictly sorted (checked above, and across runs by the caller), so
        // the keyspace adds each once, in one insert.
        sink(Restored {
            key: key.to_vec(),
            data,
            expires_at_ms,
            version,
        });
    }
    Ok(RunBounds {
        keys,
        start: run.start,
        end: reader.position,
    })
}

fn decode_data(reader: &mut Reader<'_>) -> Result<Data, AppError> {
    let kind = reader.take(1)?[0];
    if kind == 0 {
        return Ok(Data::Str(reader.len_prefixed()?.to_vec()));
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

#[derive(Clone)]
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

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    /// Every type, with and without expiries, over `keys` keys; with a script and a
    /// function library if `scripts`.
    fn mixed_machine(keys: usize, scripts: bool) -> KvMachine {
        let mut machine = KvMachine::new();
        for n in 0..keys {
            let key = format!("key:{n:04}");
            let value = "v".repeat(n % 50);
            let words: Vec<&str> = match n % 7 {
                0 => vec!["SET", &key, &value],
                1 => vec!["HSET", &key, "f1", "a", "f2", &value],
                2 => vec!["RPUSH", &key, "a", &value, "c"],
                3 => vec!["SADD", &key, "x", "y", "17"],
                4 => vec!["ZADD", &key, "1.5", "a", "-2", "b"],
                5 => vec!["SET", &key, &value, "PX", "100000"],
                _ => vec!["HSET", &key, "only", "one"],
            };
            machine.apply_argv(1, &argv(&words));
            if n % 7 == 2 {
                machine.apply_argv(1, &argv(&["PEXPIRE", &key, "5000"]));
            }
        }
        if !scripts {
            return machine;
        }
        machine.apply_argv(1, &argv(&["SCRIPT", "LOAD", "return 1"]));
        let library =
            "#!lua name=lib\nredis.register_function('f', function(k, a) return a[1] end)";
        machine.apply_argv(1, &argv(&["FUNCTION", "LOAD", library]));
        machine
    }

    /// A version 3 snapshot of string keys in the order given (sorted or not), no scripts.
    fn strings_snapshot(keys: &[&str]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for key in keys {
            push_bytes(&mut out, key.as_bytes());
            encode_data(&mut out, &Data::Str(b"value".to_vec()));
            out.push(0);
            out.extend_from_slice(&1u64.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn any_number_of_threads_restores_the_same_machine() {
        let machine = mixed_machine(300, true);
        let bytes = encode(&machine);
        for threads in 1..=5 {
            let restored = decode_on(&bytes, threads).unwrap();
            restored.keyspace.assert_consistent();
            assert_eq!(encode(&restored), bytes, "{threads} threads");
            assert_eq!(restored.data_bytes(), machine.data_bytes());
            assert_eq!(restored.key_count(), machine.key_count());
            assert_eq!(restored.scripts, machine.scripts);
        }
    }

    #[test]
    fn runs_cover_every_entry_once_in_about_equal_bytes() {
        let bytes = encode(&mixed_machine(300, true));
        let header = 4 + 1 + 8 + 8 + 8;
        let reader = Reader {
            bytes: &bytes,
            position: header,
        };
        let format = Format {
            typed: true,
            write_version: u64::MAX,
        };
        for threads in 1..=5 {
            let runs = split_into_runs(reader.clone(), 300, format, threads);
            assert_eq!(runs.len(), threads, "{runs:?}");
            assert_eq!(runs.iter().map(|run| run.count).sum::<u64>(), 300);
            let mut start = header;
            for run in &runs {
                assert_eq!(run.start, start, "{runs:?}");
                let bounds = decode_run(&bytes, *run, format, |_| {}).unwrap();
                let share = (bounds.end - bounds.start) as f64 / (bytes.len() - header) as f64;
                assert!(share < 2.0 / threads as f64, "{threads} threads: {runs:?}");
                start = bounds.end;
            }
        }
        // Fewer entries than threads: one run per entry at most.
        assert_eq!(split_into_runs(reader.clone(), 1, format, 4).len(), 1);
    }

    #[test]
    fn a_key_out_of_order_across_runs_is_refused() {
        // Each half is sorted; only the check across the runs' boundary sees "c" >= "b".
        let bytes = strings_snapshot(&["a", "c", "b", "d"]);
        for threads in 1..=4 {
            match decode_on(&bytes, threads) {
                Err(AppError::BadSnapshot(message)) => {
                    assert!(message.contains("not strictly sorted"), "{message}")
                }
                other => panic!("{threads} threads: {:?}", other.map(|m| m.key_count())),
            }
        }
        let bytes = strings_snapshot(&["a", "b", "b", "d"]);
        assert!(decode_on(&bytes, 2).is_err(), "a key repeated across runs");
        assert_eq!(
            decode_on(&strings_snapshot(&["a", "b", "c", "d"]), 2)
                .unwrap()
                .key_count(),
            4
        );
    }

    #[test]
    fn damage_is_refused_alike_on_any_number_of_threads() {
        let bytes = encode(&mixed_machine(24, false));
        let outcome = |bytes: &[u8], threads| match decode_on(bytes, threads) {
            Ok(machine) => Ok(encode(&machine)),
            Err(error) => Err(error.to_string()),
        };
        for position in 0..bytes.len() {
            for damage in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[position] ^= damage;
                let sequential = outcome(&damaged, 1);
                for threads in [2, 3] {
                    assert_eq!(outcome(&damaged, threads), sequential, "byte {position}");
                }
            }
            let truncated = &bytes[..position];
            assert!(decode_on(truncated, 3).is_err(), "truncated at {position}");
        }
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
