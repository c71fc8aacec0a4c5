//! The value types a key can hold, each keeping its own byte count so accounting is O(1).
//!
//! Collections whose order Redis leaves unspecified (hash fields, set members) are kept in
//! insertion-ordered maps (`indexmap`): their iteration order depends only on the sequence of
//! operations, never on a per-process hash seed, and a snapshot stores them in that order,
//! so a replica restored from a snapshot picks the same "random" member as one that applied
//! every entry. Randomness itself comes from [`EntryRng`], seeded from the log entry.

use crate::key::InlineBytes;
use indexmap::{IndexMap, IndexSet};
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
///
/// Collections are boxed so a key holding a small string (the common case) pays only for
/// the string in the keyspace's table, not for the largest collection header.
pub(crate) enum Data {
    Str(Str),
    Hash(Box<Hash>),
    List(Box<List>),
    Set(Box<Set>),
    ZSet(Box<ZSet>),
}

/// Longest string value kept inside the keyspace's slot ([`Str::Inline`]): what fits
/// beside a length byte while a [`Data`] stays as small as a `Vec` (checked by a test).
pub(crate) const INLINE_STR_BYTES: usize = 14;

/// A string value: the kv's own bytes, or a slice of the snapshot a durable replica
/// restored from (its mapped, checksummed file: see `KvMachine::restore_shared`), which
/// becomes owned bytes on its first change ([`Str::to_mut`]). Reads see the same bytes
/// either way, and the byte count counts both alike (their length).
#[derive(Clone)]
pub(crate) enum Str {
    /// Up to [`INLINE_STR_BYTES`] bytes (the first `len`), in the keyspace's slot: no
    /// allocation, and no cache miss beyond the slot's when a write overwrites it.
    Inline(InlineBytes<INLINE_STR_BYTES>),
    Owned(Vec<u8>),
    /// Boxed so a [`Data`] stays as small as a `Vec` (every key pays for its size).
    Shared(Box<bytes::Bytes>),
}

impl Str {
    /// `value` inline if it is short enough.
    pub(crate) fn inline(value: &[u8]) -> Option<Str> {
        InlineBytes::new(value).map(Str::Inline)
    }

    /// A copy of `value`: inline when short, else a buffer of its own.
    pub(crate) fn from_slice(value: &[u8]) -> Str {
        Str::inline(value).unwrap_or_else(|| Str::Owned(value.to_vec()))
    }

    /// The value's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Str::Inline(inline) => inline.as_slice(),
            Str::Owned(bytes) => bytes,
            Str::Shared(bytes) => bytes,
        }
    }

    /// The value as owned bytes to change, copied into a buffer of its own first if inline
    /// or shared.
    pub(crate) fn to_mut(&mut self) -> &mut Vec<u8> {
        match self {
            Str::Inline(_) | Str::Shared(_) => *self = Str::Owned(self.as_slice().to_vec()),
            Str::Owned(_) => {}
        }
        match self {
            Str::Owned(bytes) => bytes,
            Str::Inline(_) | Str::Shared(_) => unreachable!("made owned above"),
        }
    }

    /// The value's bytes as a vector of their own (copied if inline or shared).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Str::Owned(bytes) => bytes,
            Str::Inline(_) | Str::Shared(_) => self.as_slice().to_vec(),
        }
    }

    /// Whether the value is a slice of a restored snapshot.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Str::Shared(_))
    }

    /// Bytes of the value's own heap buffer; 0 when inline or shared (it has none).
    pub(crate) fn capacity(&self) -> usize {
        match self {
            Str::Owned(bytes) => bytes.capacity(),
            Str::Inline(_) | Str::Shared(_) => 0,
        }
    }
}

impl std::ops::Deref for Str {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Str {
    /// Inline when short (the vector freed), else the vector itself.
    fn from(bytes: Vec<u8>) -> Self {
        Str::inline(&bytes).unwrap_or(Str::Owned(bytes))
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// The five types, as TYPE names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Hash,
    List,
    Set,
    ZSet,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
        }
    }

    /// The kind TYPE (and SCAN's TYPE filter) calls `name`, any case.
    pub(crate) fn from_name(name: &[u8]) -> Option<Kind> {
        match name.to_ascii_lowercase().as_slice() {
            b"string" => Some(Kind::Str),
            b"hash" => Some(Kind::Hash),
            b"list" => Some(Kind::List),
            b"set" => Some(Kind::Set),
            b"zset" => Some(Kind::ZSet),
            _ => None,
        }
    }
}

impl Data {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Data::Str(_) => Kind::Str,
            Data::Hash(_) => Kind::Hash,
            Data::List(_) => Kind::List,
            Data::Set(_) => Kind::Set,
            Data::ZSet(_) => Kind::ZSet,
        }
    }

    /// Payload bytes: the string, or the sum of element (and field, value) lengths; a
    /// sorted-set member counts 8 more bytes for its score.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Data::Str(value) => value.len() as u64,
            Data::Hash(hash) => hash.bytes as u64,
            Data::List(list) => list.bytes as u64,
            Data::Set(set) => set.bytes as u64,
            Data::ZSet(zset) => zset.bytes as u64,
        }
    }

    /// An empty collection: Redis deletes the key when its last element goes.
    pub(crate) fn is_empty_collection(&self) -> bool {
        match self {
            Data::Str(_) => false,
            Data::Hash(hash) => hash.is_empty(),
            Data::List(list) => list.items.is_empty(),
            Data::Set(set) => set.items.is_empty(),
            Data::ZSet(zset) => zset.scores.is_empty(),
        }
    }

    /// What `OBJECT ENCODING` answers, following Redis 7.0's default thresholds.
    pub(crate) fn encoding(&self) -> &'static str {
        const LISTPACK_ENTRIES: usize = 128;
        const LISTPACK_VALUE_BYTES: usize = 64;
        const INTSET_ENTRIES: usize = 512;
        fn small<'a>(len: usize, mut elements: impl Iterator<Item = &'a [u8]>) -> bool {
            len <= LISTPACK_ENTRIES && elements.all(|e| e.len() <= LISTPACK_VALUE_BYTES)
        }
        match self {
            Data::Str(value) => match crate::resp::parse_i64_strict(value) {
                Some(_) if value.len() <= 20 => "int",
                _ if value.len() <= 44 => "embstr",
                _ => "raw",
            },
            Data::Hash(hash) => {
                let mut fields = hash.iter().flat_map(|(f, v)| [f, v]);
                if small(hash.len(), &mut fields) {
                    "listpack"
                } else {
                    "hashtable"
                }
            }
            // Redis 7.0 keeps every list as a quicklist and sets as intset or hashtable.
            Data::List(_) => "quicklist",
            Data::Set(set) => {
                let all_integers = set
                    .items
                    .iter()
                    .all(|m| crate::resp::parse_i64_strict(m).is_some());
                if all_integers && set.items.len() <= INTSET_ENTRIES {
                    "intset"
                } else {
                    "hashtable"
                }
            }
            Data::ZSet(zset) => {
                let mut items = zset.scores.keys().map(Vec::as_slice);
                if small(zset.scores.len(), &mut items) {
                    "listpack"
                } else {
                    "skiplist"
                }
            }
        }
    }
}

/// Most fields a hash keeps packed (Redis' `hash-max-listpack-entries`).
pub(crate) const MAX_PACKED_HASH_FIELDS: usize = 128;
/// Longest field or value a packed hash holds (Redis' `hash-max-listpack-value`).
pub(crate) const MAX_PACKED_HASH_ELEMENT_BYTES: usize = 64;

/// A hash: field -> value, insertion ordered.
///
/// Small hashes (at most [`MAX_PACKED_HASH_FIELDS`] fields, none longer than
/// [`MAX_PACKED_HASH_ELEMENT_BYTES`]) are one packed byte buffer, as Redis' listpack: a
/// field costs its bytes plus two length bytes, not a map slot and two heap strings.
/// Lookups scan it, which is fast at that size. Past either limit the hash becomes an
/// `IndexMap` for good. Both forms order fields alike (insertion order; a removal moves
/// the last field into the gap), so replies and random picks do not depend on the form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hash {
    fields: HashFields,
    bytes: usize,
}

impl Default for Hash {
    fn default() -> Self {
        Hash {
            fields: HashFields::Packed(Packed::default()),
            bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum HashFields {
    Packed(Packed),
    Map(IndexMap<Vec<u8>, Vec<u8>>),
}

/// Field-value pairs in one buffer: per pair `varint(field len)`, field, `varint(value
/// len)`, value.
#[derive(Debug, Clone, Default, PartialEq)]
struct Packed {
    buffer: Vec<u8>,
    len: usize,
}

/// One pair of a [`Packed`] buffer: the field, the value, and where the pair's bytes are.
struct PackedPair<'a> {
    field: &'a [u8],
    value: &'a [u8],
    start: usize,
    end: usize,
}

fn push_varint(out: &mut Vec<u8>, mut number: usize) {
    while number >= 0x80 {
        out.push((number as u8) | 0x80);
        number >>= 7;
    }
    out.push(number as u8);
}

fn read_varint(buffer: &[u8], at: &mut usize) -> usize {
    let mut number = 0usize;
    let mut shift = 0;
    loop {
        let byte = buffer[*at];
        *at += 1;
        number |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return number;
        }
        shift += 7;
    }
}

impl Packed {
    fn pairs(&self) -> impl Iterator<Item = PackedPair<'_>> {
        let buffer = &self.buffer;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= buffer.len() {
                return None;
            }
            let start = at;
            let field_len = read_varint(buffer, &mut at);
            let field = &buffer[at..at + field_len];
            at += field_len;
            let value_len = read_varint(buffer, &mut at);
            let value = &buffer[at..at + value_len];
            at += value_len;
            Some(PackedPair {
                field,
                value,
                start,
                end: at,
            })
        })
    }

    fn find(&self, field: &[u8]) -> Option<(usize, PackedPair<'_>)> {
        self.pairs()
            .enumerate()
            .find(|(_, pair)| pair.field == field)
    }

    fn encode_pair(field: &[u8], value: &[u8]) -> Vec<u8> {
        let mut pair = Vec::with_capacity(field.len() + value.len() + 4);
        push_varint(&mut pair, field.len());
        pair.extend_from_slice(field);
        push_varint(&mut pair, value.len());
        pair.extend_from_slice(value);
        pair
    }

    /// Replaces bytes `range` with `with`, keeping the buffer's capacity exact: a packed
    /// hash is small, and unused capacity would be most of its cost.
    fn splice(&mut self, range: std::ops::Range<usize>, with: &[u8]) {
        let grow = with.len().saturating_sub(range.len());
        self.buffer.reserve_exact(grow);
        self.buffer.splice(range, with.iter().copied());
        self.buffer.shrink_to_fit();
    }

    fn push(&mut self, field: &[u8], value: &[u8]) {
        let end = self.buffer.len();
        self.splice(end..end, &Self::encode_pair(field, value));
        self.len += 1;
    }

    /// Removes pair `index` (bytes `start..end`), moving the last pair into its place as
    /// `IndexMap::swap_remove` does.
    fn swap_remove(&mut self, start: usize, end: usize) {
        let last = self.pairs().last().map(|pair| (pair.start, pair.end));
        let (last_start, last_end) = last.expect("removing from a non-empty packed hash");
        if last_start == start {
            self.splice(start..end, &[]);
        } else {
            let moved = self.buffer[last_start..last_end].to_vec();
            self.buffer.truncate(last_start);
            self.splice(start..end, &moved);
        }
        self.len -= 1;
    }
}

impl Hash {
    pub(crate) fn len(&self) -> usize {
        match &self.fields {
            HashFields::Packed(packed) => packed.len,
            HashFields::Map(map) => map.len(),
        }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn get(&self, field: &[u8]) -> Option<&[u8]> {
        match &self.fields {
            HashFields::Packed(packed) => packed.find(field).map(|(_, pair)| pair.value),
            HashFields::Map(map) => map.get(field).map(Vec::as_slice),
        }
    }
    /// Sets `field`; returns true if it is new.
    pub(crate) fn insert(&mut self, field: Vec<u8>, value: Vec<u8>) -> bool {
        let stays_packed = match &self.fields {
            HashFields::Packed(packed) => {
                field.len() <= MAX_PACKED_HASH_ELEMENT_BYTES
                    && value.len() <= MAX_PACKED_HASH_ELEMENT_BYTES
                    && (packed.len < MAX_PACKED_HASH_FIELDS || packed.find(&field).is_some())
            }
            HashFields::Map(_) => false,
        };
        if !stays_packed {
            self.unpack();
        }
        match &mut self.fields {
            HashFields::Packed(packed) => match packed.find(&field) {
                Some((_, pair)) => {
                    let (start, end, old_len) = (pair.start, pair.end, pair.value.len());
                    self.bytes = self.bytes + value.len() - old_len;
                    packed.splice(start..end, &Packed::encode_pair(&field, &value));
                    false
                }
                None => {
                    self.bytes += field.len() + value.len();
                    packed.push(&field, &value);
                    true
                }
            },
            HashFields::Map(map) => match map.get_mut(field.as_slice()) {
                Some(existing) => {
                    self.bytes = self.bytes + value.len() - existing.len();
                    *existing = value;
                    false
                }
                None => {
                    self.bytes += field.len() + value.len();
                    map.insert(field, value);
                    true
                }
            },
        }
    }
    /// Moves a packed hash into a map, keeping the order.
    fn unpack(&mut self) {
        if let HashFields::Packed(packed) = &self.fields {
            let map: IndexMap<Vec<u8>, Vec<u8>> = packed
                .pairs()
                .map(|pair| (pair.field.to_vec(), pair.value.to_vec()))
                .collect();
            self.fields = HashFields::Map(map);
        }
    }
    pub(crate) fn remove(&mut self, field: &[u8]) -> bool {
        match &mut self.fields {
            HashFields::Packed(packed) => match packed.find(field) {
                Some((_, pair)) => {
                    let (start, end) = (pair.start, pair.end);
                    self.bytes -= pair.field.len() + pair.value.len();
                    packed.swap_remove(start, end);
                    true
                }
                None => false,
            },
            HashFields::Map(map) => match map.swap_remove_entry(field) {
                Some((field, value)) => {
                    self.bytes -= field.len() + value.len();
                    true
                }
                None => false,
            },
        }
    }
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
        match &self.fields {
            HashFields::Packed(packed) => {
                Box::new(packed.pairs().map(|pair| (pair.field, pair.value)))
            }
            HashFields::Map(map) => Box::new(map.iter().map(|(f, v)| (f.as_slice(), v.as_slice()))),
        }
    }
    pub(crate) fn get_index(&self, index: usize) -> Option<(&[u8], &[u8])> {
        match &self.fields {
            HashFields::Packed(packed) => packed
                .pairs()
                .nth(index)
                .map(|pair| (pair.field, pair.value)),
            HashFields::Map(map) => map
                .get_index(index)
                .map(|(f, v)| (f.as_slice(), v.as_slice())),
        }
    }
}

/// A list.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct List {
    pub(crate) items: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl List {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
    pub(crate) fn push(&mut self, item: Vec<u8>, front: bool) {
        self.bytes += item.len();
        if front {
            self.items.push_front(item);
        } else {
            self.items.push_back(item);
        }
    }
    pub(crate) fn pop(&mut self, front: bool) -> Option<Vec<u8>> {
        let item = if front {
            self.items.pop_front()
        } else {
            self.items.pop_back()
        }?;
        self.bytes -= item.len();
        Some(item)
    }
    pub(crate) fn set(&mut self, index: usize, item: Vec<u8>) {
        self.bytes = self.bytes + item.len() - self.items[index].len();
        self.items[index] = item;
    }
    pub(crate) fn insert(&mut self, index: usize, item: Vec<u8>) {
        self.bytes += item.len();
        self.items.insert(index, item);
    }
    /// Recounts the bytes after a bulk edit of `items` (LREM, LTRIM).
    pub(crate) fn recount(&mut self) {
        self.bytes = self.items.iter().map(Vec::len).sum();
    }
}

/// A set, insertion ordered.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Set {
    items: IndexSet<Vec<u8>>,
    bytes: usize,
}

impl Set {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
    pub(crate) fn contains(&self, member: &[u8]) -> bool {
        self.items.contains(member)
    }
    pub(crate) fn insert(&mut self, member: Vec<u8>) -> bool {
        let len = member.len();
        let added = self.items.insert(member);
        if added {
            self.bytes += len;
        }
        added
    }
    pub(crate) fn remove(&mut self, member: &[u8]) -> bool {
        let removed = self.items.swap_remove(member);
        if removed {
            self.bytes -= member.len();
        }
        removed
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.items.iter()
    }
    pub(crate) fn get_index(&self, index: usize) -> Option<&Vec<u8>> {
        self.items.get_index(index)
    }
    pub(crate) fn remove_index(&mut self, index: usize) -> Option<Vec<u8>> {
        let member = self.items.swap_remove_index(index)?;
        self.bytes -= member.len();
        Some(member)
    }
}

/// A sorted-set score: never NaN, so the order is total; `-0` is stored as `0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Score(pub(crate) f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .partial_cmp(&other.0)
            .expect("sorted-set scores are never NaN")
    }
}

/// A sorted set: member -> score for lookups, `(score, member)` in order for ranges.
/// A skiplist-free design: ranks and offsets walk the ordered set (O(rank)).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ZSet {
    scores: IndexMap<Vec<u8>, f64>,
    order: BTreeSet<(Score, Vec<u8>)>,
    bytes: usize,
}

/// Bytes a sorted-set member adds for its score in [`Data::bytes`].
const SCORE_BYTES: usize = 8;

impl ZSet {
    pub(crate) fn len(&self) -> usize {
        self.scores.len()
    }
    pub(crate) fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }
    /// Sets `member`'s score; returns the previous one.
    pub(crate) fn insert(&mut self, member: Vec<u8>, score: f64) -> Option<f64> {
        assert!(!score.is_nan(), "a NaN score reached the sorted set");
        let score = score + 0.0; // -0 becomes 0, as Redis prints it.
        match self.scores.get_mut(member.as_slice()) {
            Some(existing) => {
                let previous = *existing;
                if previous != score || previous.to_bits() != score.to_bits() {
                    *existing = score;
                    let removed = self.order.remove(&(Score(previous), member.clone()));
                    assert!(removed, "sorted-set order index missing a member");
                    self.order.insert((Score(score), member));
                }
                Some(previous)
            }
            None => {
                self.bytes += member.len() + SCORE_BYTES;
                self.order.insert((Score(score), member.clone()));
                self.scores.insert(member, score);
                None
            }
        }
    }
    pub(crate) fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.swap_remove_entry(member) {
            Some((member, score)) => {
                self.bytes -= member.len() + SCORE_BYTES;
                let removed = self.order.remove(&(Score(score), member));
                assert!(removed, "sorted-set order index missing a member");
                true
            }
            None => false,
        }
    }
    /// Members in score order (ties by member bytes).
    pub(crate) fn ordered(&self) -> impl DoubleEndedIterator<Item = (&Vec<u8>, f64)> {
        self.order.iter().map(|(score, member)| (member, score.0))
    }
    /// Members with a score in the range, ascending.
    pub(crate) fn range_by_score(
        &self,
        min: ScoreBound,
        max: ScoreBound,
    ) -> impl Iterator<Item = (&Vec<u8>, f64)> {
        let lower = (Score(min.value() + 0.0), Vec::new());
        self.order
            .range(lower..)
            .take_while(move |(score, _)| max.admits_upper(score.0))
            .filter(move |(score, _)| min.admits_lower(score.0))
            .map(|(score, member)| (member, score.0))
    }
    pub(crate) fn get_index(&self, index: usize) -> Option<(&Vec<u8>, f64)> {
        self.scores.get_index(index).map(|(m, s)| (m, *s))
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, f64)> {
        self.scores.iter().map(|(m, s)| (m, *s))
    }
    /// 0-based rank of `member` in ascending order.
    pub(crate) fn rank(&self, member: &[u8]) -> Option<usize> {
        let score = self.score(member)?;
        Some(
            self.order
                .range(..(Score(score + 0.0), member.to_vec()))
                .count(),
        )
    }
}

/// One end of a score range: `1.5` is inclusive, `(1.5` exclusive.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScoreBound {
    Inclusive(f64),
    Exclusive(f64),
}

impl ScoreBound {
    pub(crate) fn value(self) -> f64 {
        match self {
            ScoreBound::Inclusive(v) | ScoreBound::Exclusive(v) => v,
        }
    }
    pub(crate) fn admits_lower(self, score: f64) -> bool {
        match self {
            ScoreBound::Inclusive(min) => score >= min,
            ScoreBound::Exclusive(min) => score > min,
        }
    }
    pub(crate) fn admits_upper(self, score: f64) -> bool {
        match self {
            ScoreBound::Inclusive(max) => score <= max,
            ScoreBound::Exclusive(max) => score < max,
        }
    }
}

/// Deterministic randomness for one log entry: SplitMix64 seeded from the entry's index and
/// time, so every replica draws the same numbers.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryRng {
    state: u64,
}

impl EntryRng {
    pub(crate) fn new(seed: u64) -> Self {
        EntryRng { state: seed }
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..bound` (`bound > 0`).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        assert!(bound > 0, "EntryRng::below(0)");
        (self.next_u64() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_inline_string_keeps_a_value_as_small_as_a_vec() {
        // Every key's slot holds a `Data`: the inline variant must not grow it.
        assert_eq!(std::mem::size_of::<Data>(), std::mem::size_of::<Vec<u8>>());
    }

    #[test]
    fn strings_of_every_length_read_and_change_alike_inline_or_not() {
        for len in [0, 1, INLINE_STR_BYTES, INLINE_STR_BYTES + 1, 100] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mut value in [Str::from(bytes.clone()), Str::from_slice(&bytes)] {
                assert_eq!(value.as_slice(), &bytes[..]);
                assert_eq!(matches!(value, Str::Inline(_)), len <= INLINE_STR_BYTES);
                assert_eq!(value.clone().into_vec(), bytes);
                value.to_mut().push(b'!');
                let mut longer = bytes.clone();
                longer.push(b'!');
                assert_eq!(value.as_slice(), &longer[..]);
            }
        }
    }

    proptest! {
        /// A packed hash answers and orders exactly as the map it becomes, so replies and
        /// random picks never depend on the form (or on a snapshot restore changing it).
        #[test]
        fn packed_hash_orders_as_the_map(ops in prop::collection::vec((0u8..3, 0usize..140, 0usize..80), 1..400)) {
            let mut hash = Hash::default();
            let mut reference: IndexMap<Vec<u8>, Vec<u8>> = IndexMap::new();
            for (op, field, value_len) in ops {
                let field = format!("f{field}").into_bytes();
                match op {
                    0 | 1 => {
                        let value = vec![b'v'; value_len];
                        let added = hash.insert(field.clone(), value.clone());
                        prop_assert_eq!(added, reference.insert(field, value).is_none());
                    }
                    _ => {
                        prop_assert_eq!(hash.remove(&field), reference.swap_remove(&field).is_some());
                    }
                }
                prop_assert_eq!(hash.len(), reference.len());
                let ours: Vec<(Vec<u8>, Vec<u8>)> = hash.iter().map(|(f, v)| (f.to_vec(), v.to_vec())).collect();
                let theirs: Vec<(Vec<u8>, Vec<u8>)> = reference.iter().map(|(f, v)| (f.clone(), v.clone())).collect();
                prop_assert_eq!(ours, theirs);
                let bytes: usize = reference.iter().map(|(f, v)| f.len() + v.len()).sum();
                prop_assert_eq!(Data::Hash(Box::new(hash.clone())).bytes(), bytes as u64);
            }
        }
    }

    #[test]
    fn small_hashes_stay_packed_and_large_ones_unpack() {
        let mut hash = Hash::default();
        for index in 0..MAX_PACKED_HASH_FIELDS {
            hash.insert(format!("f{index}").into_bytes(), b"v".to_vec());
        }
        assert!(matches!(hash.fields, HashFields::Packed(_)));
        hash.insert(b"one more".to_vec(), b"v".to_vec());
        assert!(matches!(hash.fields, HashFields::Map(_)));
        let mut hash = Hash::default();
        hash.insert(b"f".to_vec(), vec![b'x'; MAX_PACKED_HASH_ELEMENT_BYTES + 1]);
        assert!(matches!(hash.fields, HashFields::Map(_)));
        assert_eq!(
            hash.get(b"f").map(<[u8]>::len),
            Some(MAX_PACKED_HASH_ELEMENT_BYTES + 1)
        );
    }
}
