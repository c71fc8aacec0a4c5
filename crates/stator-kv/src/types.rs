//! The value types a key can hold, each keeping its own byte count so accounting is O(1).
//!
//! Collections whose order Redis leaves unspecified (hash fields, set members) are kept in
//! insertion-ordered maps (`indexmap`): their iteration order depends only on the sequence of
//! operations, never on a per-process hash seed, and a snapshot stores them in that order,
//! so a replica restored from a snapshot picks the same "random" member as one that applied
//! every entry. Randomness itself comes from [`EntryRng`], seeded from the log entry.

use indexmap::{IndexMap, IndexSet};
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
///
/// Collections are boxed so a key holding a small string (the common case) pays only for
/// the string in the keyspace's table, not for the largest collection header.
pub(crate) enum Data {
    Str(Vec<u8>),
    Hash(Box<Hash>),
    List(Box<List>),
    Set(Box<Set>),
    ZSet(Box<ZSet>),
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
            Data::Hash(hash) => hash.map.is_empty(),
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
                let mut fields = hash
                    .map
                    .iter()
                    .flat_map(|(f, v)| [f.as_slice(), v.as_slice()]);
                if small(hash.map.len(), &mut fields) {
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

/// A hash: field -> value, insertion ordered.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Hash {
    map: IndexMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl Hash {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
    pub(crate) fn get(&self, field: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(field)
    }
    /// Sets `field`; returns true if it is new.
    pub(crate) fn insert(&mut self, field: Vec<u8>, value: Vec<u8>) -> bool {
        let added = field.len() + value.len();
        match self.map.get_mut(field.as_slice()) {
            Some(existing) => {
                self.bytes = self.bytes + value.len() - existing.len();
                *existing = value;
                false
            }
            None => {
                self.bytes += added;
                self.map.insert(field, value);
                true
            }
        }
    }
    pub(crate) fn remove(&mut self, field: &[u8]) -> bool {
        match self.map.swap_remove_entry(field) {
            Some((field, value)) => {
                self.bytes -= field.len() + value.len();
                true
            }
            None => false,
        }
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.map.iter()
    }
    pub(crate) fn get_index(&self, index: usize) -> Option<(&Vec<u8>, &Vec<u8>)> {
        self.map.get_index(index)
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
