//! The key-value map with its expiry index, byte accounting and per-key write versions,
//! kept in sync in one place.

use crate::key::Key;
use crate::key_table::{Hold, KeyTable, ShardEncoder, Slot};
use crate::types::{Data, Str};
use std::collections::BTreeSet;

/// One stored value, when it expires, and the write that last changed it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) data: Data,
    /// Absolute expiry on the leader-stamped clock, or [`NO_EXPIRY`]: a plain `u64`
    /// rather than an `Option` keeps the entry 8 bytes smaller (every key pays for it, in
    /// every slot of the table). Read it with [`Entry::expires_at_ms`].
    expiry: u64,
    /// [`Keyspace::write_version`] when this key was last written (WATCH compares it).
    pub(crate) version: u64,
}

/// [`Entry::expiry`] of a key that lives forever. No expiry reaches it: expiry commands
/// refuse times past `i64::MAX` milliseconds, as Redis does.
const NO_EXPIRY: u64 = u64::MAX;

impl Entry {
    pub(crate) fn new(data: Data, expires_at_ms: Option<u64>, version: u64) -> Entry {
        Entry {
            data,
            expiry: expires_at_ms.unwrap_or(NO_EXPIRY),
            version,
        }
    }

    /// Absolute expiry on the leader-stamped clock; `None` lives forever.
    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        (self.expiry != NO_EXPIRY).then_some(self.expiry)
    }

    /// Sets the expiry, returning the previous one.
    fn replace_expiry(&mut self, expires_at_ms: Option<u64>) -> Option<u64> {
        let previous = self.expires_at_ms();
        self.expiry = expires_at_ms.unwrap_or(NO_EXPIRY);
        previous
    }

    /// Redis treats a key as expired once the clock is strictly past its expiry.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|at_ms| now_ms > at_ms)
    }
}

/// Whether a string's buffer of `capacity` bytes takes a new value of `len` bytes in
/// place: it must fit, and waste at most half of itself (so a key once written large and
/// then small does not keep the large buffer; the byte count knows only lengths).
fn reuses_buffer(capacity: usize, len: usize) -> bool {
    len <= capacity && capacity <= len.saturating_mul(2)
}

/// What a write does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryChange {
    /// Keep the current expiry (INCR, APPEND, SET KEEPTTL).
    Keep,
    /// Remove any expiry (plain SET).
    Clear,
    /// Expire at this absolute time.
    At(u64),
}

/// Keys, values and expiries.
///
/// Invariants: `by_expiry` holds `(at, key)` exactly for entries with `expires_at_ms ==
/// Some(at)`; `bytes` is the sum of key lengths and [`Data::bytes`] of all entries; no
/// entry holds an empty collection; every entry's version is at most `write_version`.
#[derive(Debug, Default)]
pub(crate) struct Keyspace {
    /// Keys inline when short ([`Key`]): a lookup compares them in the slot it reads.
    entries: KeyTable,
    by_expiry: BTreeSet<(u64, Key)>,
    bytes: u64,
    /// Counts writes to keys; a written key takes the new count as its version.
    write_version: u64,
    /// Keys removed because they expired, while recording is on (keyspace
    /// notifications' `expired` events, see `crate::notify`); `None`: off.
    expired_log: Option<Vec<Vec<u8>>>,
}

impl Keyspace {
    /// An empty keyspace with room for `entries` keys.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        Keyspace {
            entries: KeyTable::with_capacity(entries),
            ..Keyspace::default()
        }
    }

    /// The entry under `key` unless it is missing or expired at `now_ms`.
    pub(crate) fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.entries
            .get(key)
            .filter(|entry| !entry.is_expired(now_ms))
    }

    /// Approximate bytes held: key and value lengths.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Starts loading the memory a lookup of `key` reads ([`KeyTable::prefetch`]): a
    /// batch of writes prefetches all its keys, then applies them.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        self.entries.prefetch(key);
    }

    /// Entries held, including expired ones not yet reclaimed.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The write counter (in snapshots, so versions keep growing after a restore).
    pub(crate) fn write_version(&self) -> u64 {
        self.write_version
    }

    pub(crate) fn set_write_version(&mut self, version: u64) {
        self.write_version = version;
    }

    /// Adds a key read from a snapshot with the version it had: one map insert, no
    /// lookup first (a snapshot's keys are strictly sorted, so none repeats; a repeat is
    /// a broken invariant). The write counter is the snapshot's, set by the caller.
    pub(crate) fn insert_restored(
        &mut self,
        key: &[u8],
        data: Data,
        expires_at_ms: Option<u64>,
        version: u64,
    ) {
        debug_assert!(!data.is_empty_collection(), "restored an empty collection");
        self.bytes += key.len() as u64 + data.bytes();
        let key = Key::from_slice(key);
        if let Some(at_ms) = expires_at_ms {
            self.by_expiry.insert((at_ms, key.clone()));
        }
        let previous = self
            .entries
            .insert(key, Entry::new(data, expires_at_ms, version));
        assert!(previous.is_none(), "a snapshot restored one key twice");
    }

    /// The entries as they are now, for a snapshot to walk on another thread while
    /// writes go on ([`KeyTable::freeze`]), each shard encoded by `encode` once.
    pub(crate) fn freeze<P: Send + 'static>(
        &mut self,
        encode: ShardEncoder<P>,
    ) -> std::sync::Arc<Hold<P>> {
        self.entries.freeze(encode)
    }

    /// All entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.entries
            .iter()
            .map(|(key, entry)| (key.as_bytes(), entry))
    }

    fn next_version(&mut self) -> u64 {
        self.write_version += 1;
        self.write_version
    }

    /// Whether some key may be expired at `now_ms`: false when no key expires by then (the
    /// earliest expiry in the index is not past), so lazy expiry can skip its lookups,
    /// which is the common case of a write (plain SET keys carry no expiry).
    pub(crate) fn may_hold_expired(&self, now_ms: u64) -> bool {
        self.by_expiry
            .first()
            .is_some_and(|(at_ms, _)| now_ms > *at_ms)
    }

    /// Removes `key` if it is expired at `now_ms` (lazy expiry on access).
    pub(crate) fn reclaim_if_expired(&mut self, key: &[u8], now_ms: u64) {
        if !self.may_hold_expired(now_ms) {
            return;
        }
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.is_expired(now_ms))
        {
            self.remove(key);
            if let Some(log) = &mut self.expired_log {
                log.push(key.to_vec());
            }
        }
    }

    /// Removes up to `max_keys` keys expired at `now_ms`, earliest expiry first. Returns
    /// how many were removed.
    pub(crate) fn sweep_expired(&mut self, now_ms: u64, max_keys: usize) -> usize {
        let mut removed = 0;
        while removed < max_keys {
            match self.by_expiry.first() {
                Some((at_ms, _)) if now_ms > *at_ms => {}
                _ => break,
            }
            let (at_ms, key) = self
                .by_expiry
                .pop_first()
                .expect("first() just returned an element");
            let entry = self.entries.remove(key.as_bytes()).unwrap_or_else(|| {
                panic!("expiry index names key {key:?} (at {at_ms}) missing from the keyspace")
            });
            assert_eq!(
                entry.expires_at_ms(),
                Some(at_ms),
                "expiry index out of sync for key {key:?}"
            );
            self.bytes -= key.as_bytes().len() as u64 + entry.data.bytes();
            if let Some(log) = &mut self.expired_log {
                log.push(key.into_vec());
            }
            removed += 1;
        }
        removed
    }

    /// Stores a string `value` under `key`, changing its expiry as asked. Returns the
    /// previous string (`None` if missing or of another type).
    pub(crate) fn insert(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        expiry: ExpiryChange,
    ) -> Option<Str> {
        match self.insert_data(key, Data::Str(value.into()), expiry) {
            Some(Data::Str(previous)) => Some(previous),
            _ => None,
        }
    }

    /// A plain `SET key value` (no expiry, previous value not wanted) from borrowed bytes.
    /// Overwriting a string key that has no expiry stores a short value inline
    /// ([`Str::Inline`]) and copies a longer one into the string's own buffer when it
    /// fits ([`reuses_buffer`]): one lookup, no allocation, the key not copied. Anything
    /// else (a new key, another type, an expiry to clear, a buffer of the wrong size) is
    /// [`Keyspace::insert_data`] with copies of both.
    pub(crate) fn set_plain(&mut self, key: &[u8], value: &[u8]) {
        if let Some(entry) = self.entries.get_mut(key) {
            if let (Data::Str(stored), NO_EXPIRY) = (&mut entry.data, entry.expiry) {
                let inline = Str::inline(value);
                if inline.is_some()
                    || stored.is_shared()
                    || reuses_buffer(stored.capacity(), value.len())
                {
                    self.write_version += 1;
                    entry.version = self.write_version;
                    self.bytes = self.bytes - stored.len() as u64 + value.len() as u64;
                    match (inline, &mut *stored) {
                        (Some(inline), _) => *stored = inline,
                        (None, Str::Owned(buffer)) => {
                            buffer.clear();
                            buffer.extend_from_slice(value);
                        }
                        // A restored snapshot's slice: replaced, never copied first.
                        (None, _) => *stored = Str::Owned(value.to_vec()),
                    }
                    return;
                }
            }
        }
        self.insert_data(
            Key::from_slice(key),
            Data::Str(Str::from_slice(value)),
            ExpiryChange::Clear,
        );
    }

    /// Stores `data` under `key`, changing its expiry as asked. Returns the previous data.
    pub(crate) fn insert_data(
        &mut self,
        key: impl Into<Key>,
        data: Data,
        expiry: ExpiryChange,
    ) -> Option<Data> {
        let key = key.into();
        if data.is_empty_collection() {
            return self.remove(key.as_bytes()).map(|entry| entry.data);
        }
        let version = self.next_version();
        // One lookup (the entry API with the owned key), whether the key exists or not.
        match self.entries.slot(key.as_bytes()) {
            Slot::Occupied(mut occupied) => {
                let (stored_key, entry) = occupied.get_mut();
                self.bytes = self.bytes - entry.data.bytes() + data.bytes();
                entry.version = version;
                let previous = std::mem::replace(&mut entry.data, data);
                let expires_at_ms = match expiry {
                    ExpiryChange::Keep => entry.expires_at_ms(),
                    ExpiryChange::Clear => None,
                    ExpiryChange::At(at_ms) => Some(at_ms),
                };
                if expires_at_ms != entry.expires_at_ms() {
                    let old_expiry = entry.replace_expiry(expires_at_ms);
                    // The index holds its own copy of the key; the map keeps the one it had.
                    let mut key = stored_key.clone();
                    if let Some(old_at_ms) = old_expiry {
                        let probe = (old_at_ms, key);
                        let was_indexed = self.by_expiry.remove(&probe);
                        assert!(was_indexed, "expiry index missing key {:?}", probe.1);
                        key = probe.1;
                    }
                    if let Some(at_ms) = expires_at_ms {
                        self.by_expiry.insert((at_ms, key));
                    }
                }
                Some(previous)
            }
            Slot::Vacant(vacant) => {
                self.bytes += key.as_bytes().len() as u64 + data.bytes();
                let expires_at_ms = match expiry {
                    ExpiryChange::At(at_ms) => {
                        self.by_expiry.insert((at_ms, key.clone()));
                        Some(at_ms)
                    }
                    ExpiryChange::Keep | ExpiryChange::Clear => None,
                };
                vacant.insert((key, Entry::new(data, expires_at_ms, version)));
                None
            }
        }
    }

    /// Starts recording the keys removed because they expired (until
    /// [`Keyspace::take_expired`]).
    pub(crate) fn record_expired(&mut self) {
        self.expired_log.get_or_insert_with(Vec::new);
    }

    /// The keys removed because they expired since [`Keyspace::record_expired`], in
    /// order; stops recording.
    pub(crate) fn take_expired(&mut self) -> Vec<Vec<u8>> {
        self.expired_log.take().unwrap_or_default()
    }

    /// Removes `key`, returning its entry.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (key, entry) = self.entries.remove_entry(key)?;
        self.write_version += 1;
        self.bytes -= key.as_bytes().len() as u64 + entry.data.bytes();
        if let Some(at_ms) = entry.expires_at_ms() {
            let was_indexed = self.by_expiry.remove(&(at_ms, key));
            assert!(
                was_indexed,
                "expiry index missing a key that had expiry {at_ms}"
            );
        }
        Some(entry)
    }

    /// Removes every key.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.by_expiry.clear();
        self.bytes = 0;
        self.write_version += 1;
    }

    /// Sets or clears the expiry of an existing `key`. Returns false if `key` is missing.
    pub(crate) fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<u64>) -> bool {
        let Some((stored_key, entry)) = self.entries.get_key_value(key) else {
            return false;
        };
        if entry.expires_at_ms() == expires_at_ms {
            return true;
        }
        let stored_key = stored_key.clone();
        let version = self.next_version();
        let entry = self.entries.get_mut(key).expect("looked up above");
        entry.version = version;
        let old_expiry = entry.replace_expiry(expires_at_ms);
        let mut stored_key = stored_key;
        if let Some(old_at_ms) = old_expiry {
            let probe = (old_at_ms, stored_key);
            let was_indexed = self.by_expiry.remove(&probe);
            assert!(was_indexed, "expiry index missing key {:?}", probe.1);
            stored_key = probe.1;
        }
        if let Some(at_ms) = expires_at_ms {
            self.by_expiry.insert((at_ms, stored_key));
        }
        true
    }

    /// Runs `change` on the data of an existing `key`, keeping the byte count and version
    /// right and deleting the key if `change` empties its collection. Returns `None` if
    /// `key` is missing.
    pub(crate) fn update<R>(
        &mut self,
        key: &[u8],
        change: impl FnOnce(&mut Data) -> R,
    ) -> Option<R> {
        let version = self.write_version + 1;
        let entry = self.entries.get_mut(key)?;
        self.write_version = version;
        entry.version = version;
        let before_bytes = entry.data.bytes();
        let result = change(&mut entry.data);
        self.bytes = self.bytes - before_bytes + entry.data.bytes();
        if entry.data.is_empty_collection() {
            self.remove(key);
        }
        Some(result)
    }

    /// Like [`Keyspace::update`], but first creates `key` holding `empty()` when missing.
    pub(crate) fn upsert<R>(
        &mut self,
        key: &[u8],
        empty: impl FnOnce() -> Data,
        change: impl FnOnce(&mut Data) -> R,
    ) -> R {
        if !self.entries.contains_key(key) {
            let version = self.next_version();
            self.entries
                .insert(Key::from_slice(key), Entry::new(empty(), None, version));
            self.bytes += key.len() as u64;
        }
        self.update(key, change).expect("inserted above")
    }

    /// Runs `change` on the string value of an existing `key` (callers check the type).
    pub(crate) fn update_value<R>(
        &mut self,
        key: &[u8],
        change: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Option<R> {
        self.update(key, |data| match data {
            Data::Str(value) => change(value.to_mut()),
            other => panic!("update_value on a {:?} key", other.kind()),
        })
    }

    /// Makes the string under `key` own its bytes if it is still a slice of a restored
    /// snapshot (no write: version and byte count stay). Returns the bytes copied.
    pub(crate) fn unshare(&mut self, key: &[u8]) -> usize {
        match self.entries.get_mut(key).map(|entry| &mut entry.data) {
            Some(Data::Str(value)) if value.is_shared() => value.to_mut().len(),
            _ => 0,
        }
    }

    /// Checks the invariants; tests call it after every step.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let mut bytes = 0u64;
        let mut expiring = 0usize;
        for (key, entry) in self.entries.iter() {
            bytes += key.as_bytes().len() as u64 + entry.data.bytes();
            assert!(!entry.data.is_empty_collection(), "empty collection kept");
            assert!(entry.version <= self.write_version);
            if let Some(at_ms) = entry.expires_at_ms() {
                expiring += 1;
                assert!(
                    self.by_expiry.contains(&(at_ms, key.clone())),
                    "key {key:?} not indexed"
                );
            }
        }
        assert_eq!(
            expiring,
            self.by_expiry.len(),
            "stale entries in the expiry index"
        );
        assert_eq!(bytes, self.bytes, "byte count out of sync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(keyspace: &Keyspace, key: &[u8]) -> Vec<u8> {
        match &keyspace.live(key, 0).expect("the key is there").data {
            Data::Str(value) => value.to_vec(),
            other => panic!("not a string: {:?}", other.kind()),
        }
    }

    #[test]
    fn a_plain_set_keeps_bytes_versions_and_expiries_right() {
        let mut keyspace = Keyspace::default();
        // New key, same size (in place), much smaller, larger, empty.
        for (step, value) in [&b"aaaa"[..], b"bbbb", b"c", &[b'd'; 64], b""]
            .into_iter()
            .enumerate()
        {
            keyspace.set_plain(b"k", value);
            assert_eq!(string(&keyspace, b"k"), value);
            assert_eq!(keyspace.live(b"k", 0).unwrap().version, step as u64 + 1);
            assert_eq!(keyspace.bytes(), 1 + value.len() as u64);
            keyspace.assert_consistent();
        }
        // A plain SET clears an expiry (other types: the machine's proptests).
        keyspace.insert(b"e".to_vec(), b"v".to_vec(), ExpiryChange::At(10));
        keyspace.set_plain(b"e", b"w");
        assert_eq!(keyspace.live(b"e", 100).unwrap().expires_at_ms(), None);
        assert_eq!(string(&keyspace, b"e"), b"w");
        keyspace.assert_consistent();
    }

    #[test]
    fn a_string_overwritten_in_place_holds_at_most_twice_its_bytes() {
        let mut keyspace = Keyspace::default();
        for len in [100, 90, 60, 50, 49, 30, 10, 0, 5, 200] {
            keyspace.set_plain(b"k", &vec![b'v'; len]);
            let Data::Str(stored) = &keyspace.live(b"k", 0).unwrap().data else {
                panic!("a string");
            };
            assert!(
                stored.capacity() <= 2 * len,
                "{len} bytes kept in a buffer of {}",
                stored.capacity()
            );
        }
    }
}
