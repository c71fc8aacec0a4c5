//! The keyspace's hash table: keys and entries in one slot each, looked up by the key's
//! bytes, with a prefetch so that a batch of writes can start every key's memory loads
//! before it applies the first one.
//!
//! Why not `std::collections::HashMap`: a write to a random key among ~100,000 costs two
//! cache misses per replica (the table's control bytes, then the slot), one write after
//! the other (docs/BENCHMARKS.md, session 14: the lookup is most of the apply's time). The
//! std map gives no way to name a key's slot before looking it up; hashbrown's
//! `HashTable` (the same table under std's map) does, so [`KeyTable::prefetch`] can touch
//! the control byte and prefetch the slot of each key of an entry first, and the misses of
//! the batch overlap instead of adding up.
//!
//! The table is [`SHARDS`] hashbrown tables, a key's shard picked by bits of its hash, so
//! that growing never rehashes the whole keyspace at once. hashbrown doubles a full table
//! in one go, moving every key on the thread that inserts the key that filled it; one
//! table of every key made that a pause of every replica's runtime that grows with the
//! keyspace (two such pauses of 2.6-5.4 ms each per leader move at ~1 GiB, docs/
//! BENCHMARKS.md, session 16, i16m; tens of ms at ten million keys). Redis rehashes
//! incrementally for the same reason; hashbrown cannot, and with [`SHARDS`] tables each
//! doubling moves 1/[`SHARDS`] of the keys.
//!
//! A snapshot takes the whole table by moving each shard behind an `Arc` and sharing it
//! ([`KeyTable::freeze`]: [`SHARDS`] small allocations, whatever the keyspace's size), and
//! encodes it shard by shard on another thread while writes go on. A write to a shard the
//! snapshot has not reached yet encodes that shard for it first (1/[`SHARDS`] of the
//! keys), as Dragonfly serialises a bucket before a write changes it; either way each
//! shard is encoded once and let go, and the next write takes it back without a copy.
//! Outside a snapshot a shard is the table's own, with no reference count on a write.
//! Before this the snapshot walked every key under the state machine's lock, stalling the
//! partition's writes 0.1-2.5 s at a million keys (docs/BENCHMARKS.md, session 18).

use crate::key::Key;
use crate::keyspace::Entry;
use hashbrown::hash_table::{self, HashTable};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// The hasher: foldhash, seeded per process like std's SipHash (so a client cannot
/// choose keys that collide), at a fraction of SipHash's cost per lookup. Iteration order
/// was already per-process with SipHash; nothing replicated depends on it.
type KeyHasher = foldhash::fast::RandomState;

/// Bytes of one slot (a key and its entry): a slot's start and its last byte may lie in
/// two cache lines, so both are prefetched.
const SLOT_BYTES: usize = std::mem::size_of::<(Key, Entry)>();

/// How many tables the keys are spread over (a power of two): a table's doubling moves
/// 1/`SHARDS` of the keys, and a write during a snapshot encodes at most that much for it
/// (256: ~4,000 keys at a million; a 16-SET pipeline that reaches 16 shards first then
/// takes 8-20 ms there, docs/BENCHMARKS.md, session 19). More costs an array of empty
/// tables (32 bytes each, made at the first key: an empty keyspace, such as an idle
/// partition's, holds none) and nothing per lookup.
pub(crate) const SHARDS: usize = 256;

/// Which bits of a key's hash pick its shard: none of the bits hashbrown uses for a
/// table's bucket (the low bits, up to 2^32 buckets) or its control tag (the top 7), so
/// the keys of one shard still spread over its buckets and tags.
const SHARD_SHIFT: u32 = 40;

/// Keys to entries. A key is hashed and compared as its bytes (as [`Key`]'s `Hash` and
/// `Eq` do), so lookups take a borrowed `&[u8]`.
#[derive(Debug)]
pub(crate) struct KeyTable {
    /// `None` until the first key arrives.
    shards: Option<Box<Shards>>,
    len: usize,
    hasher: KeyHasher,
    /// The snapshots holding shards of this table ([`KeyTable::freeze`]), asked to finish
    /// a shard before a write changes it. Weak: a snapshot dropped (walked, or given up
    /// unwalked) lets go of its shards, and its entry here is pruned.
    holds: Vec<Weak<dyn Release>>,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable::with_capacity(0)
    }
}

/// One of the [`SHARDS`] tables.
pub(crate) type Shard = HashTable<(Key, Entry)>;

/// A shard: the table's own, or shared with a snapshot that froze it ([`Hold`]).
#[derive(Debug)]
enum Cell {
    Own(Shard),
    Shared(Arc<Shard>),
}

impl Cell {
    fn get(&self) -> &Shard {
        match self {
            Cell::Own(shard) => shard,
            Cell::Shared(shard) => shard,
        }
    }

    /// The shard to change: taken back if the snapshot has let go of it, else copied (a
    /// fallback: [`KeyTable`] has its snapshots encode a shard and let go of it first).
    fn get_mut(&mut self) -> &mut Shard {
        if let Cell::Shared(shared) = self {
            let shard = match Arc::get_mut(shared) {
                Some(only) => std::mem::take(only),
                None => Shard::clone(shared),
            };
            *self = Cell::Own(shard);
        }
        let Cell::Own(shard) = self else {
            unreachable!("made own above")
        };
        shard
    }

    /// Whether a snapshot still holds this shard.
    fn is_held(&self) -> bool {
        matches!(self, Cell::Shared(shard) if Arc::strong_count(shard) > 1)
    }
}

type Shards = [Cell; SHARDS];

fn new_shards(keys: usize) -> Box<Shards> {
    let per_shard = keys.div_ceil(SHARDS);
    Box::new(std::array::from_fn(|_| {
        Cell::Own(HashTable::with_capacity(per_shard))
    }))
}

/// The shard at `index`, to change: each snapshot still holding it encodes it and lets
/// go first ([`Release`]), so it is taken back without a copy.
fn shard_mut<'a>(
    shards: &'a mut Shards,
    holds: &mut Vec<Weak<dyn Release>>,
    index: usize,
) -> &'a mut Shard {
    let cell = &mut shards[index];
    if cell.is_held() {
        for hold in holds.iter().filter_map(Weak::upgrade) {
            hold.release(index);
        }
        holds.retain(|hold| hold.strong_count() > 0);
    }
    cell.get_mut()
}

/// How a snapshot encodes one shard into its part ([`KeyTable::freeze`]).
pub(crate) type ShardEncoder<P> = Box<dyn Fn(&Shard) -> P + Send + Sync>;

/// What the table asks of a snapshot holding its shards ([`Hold`]).
trait Release: Send + Sync + std::fmt::Debug {
    /// Finish shard `index` (encode it if nobody has) and let go of it.
    fn release(&self, index: usize);
}

/// A snapshot's hold on a table's shards ([`KeyTable::freeze`]): each shard that held
/// keys, shared with the table, until it is encoded into a part `P` by whichever side
/// gets to it first: the walk ([`Hold::walk`], on the snapshot's thread) or a
/// write about to change it (on the machine's thread, under the replica's lock, as
/// Dragonfly serialises a bucket before a write changes it). Either way each shard is
/// encoded once, and the table takes it back without copying it.
pub(crate) struct Hold<P> {
    slots: Vec<Mutex<Held<P>>>,
    encode: ShardEncoder<P>,
    len: usize,
}

enum Held<P> {
    Shard(Arc<Shard>),
    Encoded(P),
    Nothing,
}

impl<P> std::fmt::Debug for Hold<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<P: Send> Hold<P> {
    /// Keys held when frozen.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Encodes shard `index` unless done, and lets go of it (under its slot's lock, so the
    /// other side waits for a shard being encoded rather than copying it).
    fn finish(&self, index: usize) {
        let mut slot = self.slots[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Held::Shard(shard) = &*slot {
            let part = (self.encode)(shard);
            // The shard's reference goes with it: the table's is then the only one.
            *slot = Held::Encoded(part);
        }
    }

    /// The walk: every shard's part, in shard order, encoding those no write has.
    pub(crate) fn walk(&self) -> Vec<P> {
        for index in 0..self.slots.len() {
            self.finish(index);
        }
        self.slots
            .iter()
            .filter_map(|slot| {
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                match std::mem::replace(&mut *slot, Held::Nothing) {
                    Held::Encoded(part) => Some(part),
                    Held::Shard(_) | Held::Nothing => None,
                }
            })
            .collect()
    }
}

impl<P: Send> Release for Hold<P> {
    fn release(&self, index: usize) {
        self.finish(index);
    }
}

fn shard_of(hash: u64) -> usize {
    (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
}

impl KeyTable {
    /// An empty table with room for `keys` keys.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        KeyTable {
            shards: (keys > 0).then(|| new_shards(keys)),
            len: 0,
            hasher: KeyHasher::default(),
            holds: Vec::new(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> Option<&Shard> {
        Some(self.shards.as_ref()?[shard_of(hash)].get())
    }

    /// Whether `key`'s shard is held by a snapshot and lacks `key`: a change that finds
    /// nothing to change then leaves the shard to the snapshot.
    fn frozen_without(&self, hash: u64, key: &[u8]) -> bool {
        let Some(shards) = &self.shards else {
            return false;
        };
        let cell = &shards[shard_of(hash)];
        cell.is_held()
            && cell
                .get()
                .find(hash, |(stored, _)| stored.as_bytes() == key)
                .is_none()
    }

    /// The table as it is now, for a snapshot to encode shard by shard without it (see
    /// the module doc and [`Hold`]): each shard that holds keys moved behind an `Arc` (one
    /// small allocation; its keys stay where they are) and shared.
    pub(crate) fn freeze<P: Send + 'static>(&mut self, encode: ShardEncoder<P>) -> Arc<Hold<P>> {
        let slots = self
            .shards
            .iter_mut()
            .flat_map(|shards| shards.iter_mut())
            .map(|cell| {
                if cell.get().is_empty() {
                    return Mutex::new(Held::Nothing);
                }
                if let Cell::Own(shard) = cell {
                    *cell = Cell::Shared(Arc::new(std::mem::take(shard)));
                }
                let Cell::Shared(shared) = cell else {
                    unreachable!("shared above")
                };
                Mutex::new(Held::Shard(Arc::clone(shared)))
            })
            .collect();
        let hold = Arc::new(Hold {
            slots,
            encode,
            len: self.len,
        });
        self.holds.retain(|hold| hold.strong_count() > 0);
        let release: Arc<dyn Release> = hold.clone();
        self.holds.push(Arc::downgrade(&release));
        hold
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Removes every key.
    pub(crate) fn clear(&mut self) {
        self.shards = None;
        self.len = 0;
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.get_key_value(key).map(|(_, entry)| entry)
    }

    pub(crate) fn get_key_value(&self, key: &[u8]) -> Option<(&Key, &Entry)> {
        let hash = self.hash(key);
        self.shard(hash)?
            .find(hash, |(stored, _)| stored.as_bytes() == key)
            .map(|(stored, entry)| (stored, entry))
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        if self.frozen_without(hash, key) {
            return None;
        }
        shard_mut(self.shards.as_mut()?, &mut self.holds, shard_of(hash))
            .find_mut(hash, |(stored, _)| stored.as_bytes() == key)
            .map(|(_, entry)| entry)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Stores `entry` under `key`; returns the entry it replaced (the stored key stays).
    pub(crate) fn insert(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        match self.slot(key.as_bytes()) {
            Slot::Occupied(mut occupied) => {
                Some(std::mem::replace(&mut occupied.get_mut().1, entry))
            }
            Slot::Vacant(vacant) => {
                vacant.insert((key, entry));
                None
            }
        }
    }

    /// Removes `key`, returning the stored key and its entry.
    pub(crate) fn remove_entry(&mut self, key: &[u8]) -> Option<(Key, Entry)> {
        let hash = self.hash(key);
        if self.frozen_without(hash, key) {
            return None;
        }
        let table = shard_mut(self.shards.as_mut()?, &mut self.holds, shard_of(hash));
        let occupied = table
            .find_entry(hash, |(stored, _)| stored.as_bytes() == key)
            .ok()?;
        self.len -= 1;
        Some(occupied.remove().0)
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        self.remove_entry(key).map(|(_, entry)| entry)
    }

    /// The slot of `key` (one lookup whether it is there or not); a vacant one is filled
    /// with `(key, entry)` by the caller.
    pub(crate) fn slot(&mut self, key: &[u8]) -> Slot<'_> {
        let hash = self.hash(key);
        let KeyTable {
            shards,
            len,
            hasher,
            holds,
        } = self;
        let shards = shards.get_or_insert_with(|| new_shards(0));
        let slot = shard_mut(shards, holds, shard_of(hash)).entry(
            hash,
            |(stored, _)| stored.as_bytes() == key,
            |(stored, _)| hasher.hash_one(stored.as_bytes()),
        );
        match slot {
            hash_table::Entry::Occupied(occupied) => Slot::Occupied(Occupied { occupied }),
            hash_table::Entry::Vacant(vacant) => Slot::Vacant(Vacant { vacant, len }),
        }
    }

    /// Every key and entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.shards
            .iter()
            .flat_map(|shards| shards.iter())
            .flat_map(|cell| cell.get().iter())
            .map(|(key, entry)| (key, entry))
    }

    /// Starts loading the memory a lookup of `key` will read: its home bucket's control
    /// byte (read here, so its miss is taken now) and, if that bucket is full, its slot
    /// (prefetched). Nothing is decided by it; a lookup right after finds the key
    /// wherever it is. For a batch: prefetch every key first, then look them up, and the
    /// misses of the batch overlap instead of adding up. Most keys sit in their home
    /// bucket; one that was displaced costs what a lookup costs without this.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        let hash = self.hash(key);
        let Some(table) = self.shard(hash) else {
            return;
        };
        let buckets = table.num_buckets();
        if buckets == 0 {
            return;
        }
        // hashbrown's first probe position: the hash's low bits (`h1`).
        let home = (hash as usize) & (buckets - 1);
        if let Some(slot) = table.get_bucket(home) {
            let start = (slot as *const (Key, Entry)).cast::<u8>();
            prefetch_line(start);
            prefetch_line(start.wrapping_add(SLOT_BYTES - 1));
        }
    }
}

/// A key's place in the table: taken (changed in place; keys leave through
/// [`KeyTable::remove`]) or free (filled by the caller with the key it looked up, which
/// counts it). Like hashbrown's entry, with the table's key count kept.
pub(crate) enum Slot<'a> {
    Occupied(Occupied<'a>),
    Vacant(Vacant<'a>),
}

/// A taken [`Slot`].
pub(crate) struct Occupied<'a> {
    occupied: hash_table::OccupiedEntry<'a, (Key, Entry)>,
}

impl<'a> Occupied<'a> {
    pub(crate) fn get_mut(&mut self) -> &mut (Key, Entry) {
        self.occupied.get_mut()
    }
}

/// A free [`Slot`].
pub(crate) struct Vacant<'a> {
    vacant: hash_table::VacantEntry<'a, (Key, Entry)>,
    len: &'a mut usize,
}

impl<'a> Vacant<'a> {
    /// Fills the slot; the key must be the one looked up.
    pub(crate) fn insert(self, value: (Key, Entry)) -> &'a mut (Key, Entry) {
        *self.len += 1;
        self.vacant.insert(value).into_mut()
    }
}

/// A hint to bring the cache line holding `address` into the cache; never faults.
#[inline(always)]
fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and does not
        // fault, whatever the address (here always inside the table's allocation).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Data, Str};

    fn entry(version: u64) -> Entry {
        Entry::new(Data::Str(Str::from_slice(b"v")), None, version)
    }

    #[test]
    fn finds_what_it_holds_by_the_keys_bytes_short_and_long() {
        let mut table = KeyTable::with_capacity(4);
        let long = vec![b'k'; 100];
        for (i, key) in [b"a".as_slice(), b"", long.as_slice()].iter().enumerate() {
            assert!(table
                .insert(Key::from_slice(key), entry(i as u64))
                .is_none());
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(&long).map(|e| e.version), Some(2));
        assert_eq!(table.get(b"").map(|e| e.version), Some(1));
        assert!(!table.contains_key(b"b"));
        let replaced = table.insert(Key::from_slice(b"a"), entry(7));
        assert_eq!(replaced.map(|e| e.version), Some(0));
        assert_eq!(table.get(b"a").map(|e| e.version), Some(7));
        table.get_mut(b"a").expect("held").version = 9;
        let (key, removed) = table.remove_entry(b"a").expect("held");
        assert_eq!((key.as_bytes(), removed.version), (b"a".as_slice(), 9));
        assert!(table.remove(b"a").is_none());
        assert_eq!(table.iter().count(), 2);
        table.clear();
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn prefetch_changes_nothing_and_takes_any_key() {
        let mut table = KeyTable::default();
        table.prefetch(b"nothing held yet");
        for i in 0..1000u32 {
            table.insert(Key::from_slice(&i.to_be_bytes()), entry(u64::from(i)));
        }
        for i in 0..2000u32 {
            table.prefetch(&i.to_be_bytes());
            assert_eq!(
                table.get(&i.to_be_bytes()).map(|e| e.version),
                (i < 1000).then_some(u64::from(i))
            );
        }
        assert_eq!(table.len(), 1000);
    }

    #[test]
    fn keys_spread_over_the_shards_and_the_count_follows_every_path() {
        const KEYS: u32 = 100_000;
        let mut table = KeyTable::with_capacity(KEYS as usize);
        for i in 0..KEYS {
            table.insert(Key::from_slice(&i.to_le_bytes()), entry(u64::from(i)));
        }
        assert_eq!(table.len(), KEYS as usize);
        let shards = table.shards.as_ref().expect("keys held");
        let sizes: Vec<usize> = shards.iter().map(|cell| cell.get().len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), KEYS as usize);
        // Each within a factor of two of the average (390 keys a shard: ten standard
        // deviations of a fair spread either way).
        let average = KEYS as usize / SHARDS;
        assert!(
            sizes
                .iter()
                .all(|&n| (average / 2..=average * 2).contains(&n)),
            "uneven shards: {sizes:?}"
        );
        for i in 10_000..KEYS {
            assert!(table.remove(&i.to_le_bytes()).is_some());
        }
        assert_eq!(table.len(), 10_000);
        // Removed through `remove` and through a slot; added through a slot.
        for i in 0..5_000u32 {
            assert!(table.remove(&i.to_le_bytes()).is_some());
        }
        match table.slot(&5_000u32.to_le_bytes()) {
            Slot::Occupied(mut occupied) => assert_eq!(occupied.get_mut().1.version, 5_000),
            Slot::Vacant(_) => panic!("key 5000 is held"),
        }
        assert!(table.remove(&5_000u32.to_le_bytes()).is_some());
        match table.slot(b"new") {
            Slot::Vacant(vacant) => {
                vacant.insert((Key::from_slice(b"new"), entry(1)));
            }
            Slot::Occupied(_) => panic!("never inserted"),
        }
        assert!(table.remove(b"absent").is_none());
        assert_eq!(table.len(), 5_000);
        assert_eq!(table.iter().count(), 5_000);
        table.clear();
        assert_eq!((table.len(), table.iter().count()), (0, 0));
        assert!(
            table.shards.is_none(),
            "an emptied keyspace holds no tables"
        );
        let mut empty = KeyTable::default();
        assert!(
            empty.shards.is_none(),
            "an idle partition's keyspace holds no tables"
        );
        assert!(empty.get(b"k").is_none() && empty.get_mut(b"k").is_none());
        assert!(empty.remove(b"k").is_none() && empty.shards.is_none());
    }

    /// What a test's snapshot encodes of a shard: each key with its version.
    fn versions(shard: &Shard) -> Vec<(Vec<u8>, u64)> {
        shard
            .iter()
            .map(|(key, entry)| (key.as_bytes().to_vec(), entry.version))
            .collect()
    }

    #[test]
    fn a_frozen_table_is_encoded_as_it_was_while_writes_change_it_and_nothing_is_copied() {
        // Room to spare, so that no shard grows (which would move its keys) on the insert.
        let mut table = KeyTable::with_capacity(10_000);
        for i in 0..1_000u32 {
            table.insert(Key::from_slice(&i.to_le_bytes()), entry(u64::from(i)));
        }
        let address =
            |table: &KeyTable, i: u32| table.get(&i.to_le_bytes()).expect("held") as *const Entry;
        let addresses: Vec<*const Entry> = (0..1_000).map(|i| address(&table, i)).collect();
        let hold = table.freeze(Box::new(versions));
        assert_eq!(hold.len(), 1_000);
        let held = |table: &KeyTable| {
            let shards = table.shards.as_ref().expect("keys held");
            shards.iter().filter(|cell| cell.is_held()).count()
        };
        // Every shard with keys is shared, none moved.
        let nonempty = hold
            .slots
            .iter()
            .filter(|slot| matches!(*slot.lock().unwrap(), Held::Shard(_)))
            .count();
        assert!(nonempty > SHARDS / 2, "{nonempty} shards hold keys");
        assert_eq!(held(&table), nonempty);
        // Changes that find nothing encode nothing.
        assert!(table.remove(b"absent").is_none() && table.get_mut(b"absent").is_none());
        assert_eq!(held(&table), nonempty);
        // One change through each path: each has its shard encoded for the snapshot and
        // takes it back in place.
        table.get_mut(&0u32.to_le_bytes()).expect("held").version = 7;
        assert!(table.remove(&1u32.to_le_bytes()).is_some());
        table.insert(Key::from_slice(&2u32.to_le_bytes()), entry(9));
        match table.slot(b"new") {
            Slot::Vacant(vacant) => {
                vacant.insert((Key::from_slice(b"new"), entry(1)));
            }
            Slot::Occupied(_) => panic!("never inserted"),
        }
        let released = nonempty - held(&table);
        assert!((1..=4).contains(&released), "{released} shards released");
        assert_eq!(
            hold.slots
                .iter()
                .filter(|slot| matches!(*slot.lock().unwrap(), Held::Encoded(_)))
                .count(),
            released
        );
        // The table sees its changes, the snapshot what was there before them.
        assert_eq!(table.len(), 1_000);
        assert_eq!(table.get(&0u32.to_le_bytes()).map(|e| e.version), Some(7));
        assert!(table.get(&1u32.to_le_bytes()).is_none());
        let before: std::collections::HashMap<Vec<u8>, u64> =
            hold.walk().into_iter().flatten().collect();
        assert_eq!(before.len(), 1_000);
        assert_eq!(before[&0u32.to_le_bytes().to_vec()], 0);
        assert_eq!(before[&1u32.to_le_bytes().to_vec()], 1);
        assert_eq!(before[&2u32.to_le_bytes().to_vec()], 2);
        assert!(!before.contains_key(b"new".as_slice()));
        drop(hold);
        // The walk let go of every shard: every write takes its shard back in place, and no
        // entry ever moved (nothing was copied).
        assert_eq!(held(&table), 0);
        for i in 3..1_000u32 {
            table.get_mut(&i.to_le_bytes()).expect("held").version += 1;
        }
        for i in 2..1_000u32 {
            assert_eq!(address(&table, i), addresses[i as usize], "key {i} moved");
        }
        let shards = table.shards.as_ref().expect("keys held");
        assert!(shards.iter().all(|cell| matches!(cell, Cell::Own(_))));
        // A dropped hold's entry is pruned at the next freeze (or write to a held shard).
        let next = table.freeze(Box::new(versions));
        assert_eq!(table.holds.len(), 1, "a dropped hold is pruned");
        assert_eq!(next.walk().into_iter().flatten().count(), 1_000);
        assert_eq!(
            KeyTable::default().freeze(Box::new(versions)).walk().len(),
            0
        );
    }

    #[test]
    fn a_shard_still_held_by_a_second_snapshot_is_copied_not_lost() {
        let mut table = KeyTable::with_capacity(100);
        for i in 0..100u32 {
            table.insert(Key::from_slice(&i.to_le_bytes()), entry(u64::from(i)));
        }
        let first = table.freeze(Box::new(versions));
        let second = table.freeze(Box::new(versions));
        // A stray reference (neither hold's): the write must copy.
        let key = 5u32.to_le_bytes();
        let index = shard_of(table.hash(&key));
        let stray = match &table.shards.as_ref().unwrap()[index] {
            Cell::Shared(shard) => Arc::clone(shard),
            Cell::Own(_) => panic!("frozen"),
        };
        table.get_mut(&key).expect("held").version = 50;
        assert_eq!(table.get(&key).map(|e| e.version), Some(50));
        assert!(stray
            .find(table.hash(&key), |(k, _)| k.as_bytes() == key)
            .is_some_and(|(_, e)| e.version == 5));
        for hold in [first, second] {
            let seen: std::collections::HashMap<Vec<u8>, u64> =
                hold.walk().into_iter().flatten().collect();
            assert_eq!(seen.len(), 100);
            assert_eq!(seen[&key.to_vec()], 5);
        }
    }

    #[test]
    fn a_snapshot_given_up_unwalked_lets_go_of_every_shard() {
        let mut table = KeyTable::with_capacity(10_000);
        for i in 0..1_000u32 {
            table.insert(Key::from_slice(&i.to_le_bytes()), entry(u64::from(i)));
        }
        let addresses: Vec<*const Entry> = (0..1_000u32)
            .map(|i| table.get(&i.to_le_bytes()).expect("held") as *const Entry)
            .collect();
        let hold = table.freeze(Box::new(versions));
        // A build that failed or was cancelled drops its snapshot without walking it.
        drop(hold);
        let shards = table.shards.as_ref().expect("keys held");
        assert!(
            shards.iter().all(|cell| !cell.is_held()),
            "a dropped snapshot still holds shards"
        );
        // Writes take every shard back in place; nothing is encoded for no one, and the
        // hold's entry is gone.
        for i in 0..1_000u32 {
            table.get_mut(&i.to_le_bytes()).expect("held").version += 1;
            let now = table.get(&i.to_le_bytes()).expect("held") as *const Entry;
            assert_eq!(now, addresses[i as usize], "key {i} moved");
        }
        let next = table.freeze(Box::new(versions));
        assert_eq!(table.holds.len(), 1);
        assert_eq!(next.walk().into_iter().flatten().count(), 1_000);
    }
}
