//! A key as the keyspace stores it: short keys inside the table's slot, longer ones in a
//! heap buffer of their own.
//!
//! Every command looks its key up in the keyspace's table, and the lookup compares the
//! key it was given with the one in the slot. A key held in a `Vec` lives elsewhere on
//! the heap, so that comparison is one more cache miss per lookup, on every replica: in
//! cluster mode, with 100,000 keys per agent, it was about a sixth of the agents' CPU per
//! pipelined `SET` (docs/BENCHMARKS.md, session 14). A key of up to [`INLINE_KEY_BYTES`]
//! bytes (`user:1000:session`, `key:{tag}:000000012345`) is compared where the slot
//! already is, and costs no allocation; the slot is no larger than a `Vec`'s.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// Longest key kept inline: what fits beside a length byte in the 24 bytes a `Vec` takes.
pub(crate) const INLINE_KEY_BYTES: usize = 22;

/// Up to `N` bytes held in place (the first `len` of `bytes`): the short form of both a
/// stored key ([`Key`]) and a string value (`types::Str`). With `N` = 22 or 14 the enum
/// that holds it stays as small as a `Vec` (each checks that with a test).
#[derive(Clone, Copy)]
pub(crate) struct InlineBytes<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineBytes<N> {
    /// A copy of `value` if it fits.
    pub(crate) fn new(value: &[u8]) -> Option<Self> {
        let len = value.len();
        if len > N {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..len].copy_from_slice(value);
        Some(InlineBytes {
            len: len as u8,
            bytes,
        })
    }

    /// The bytes held.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A stored key. Hashes, compares and orders as its bytes (`[u8]`), so the table is
/// looked up with a borrowed `&[u8]`.
#[derive(Clone)]
pub(crate) enum Key {
    /// Up to [`INLINE_KEY_BYTES`] bytes.
    Inline(InlineBytes<INLINE_KEY_BYTES>),
    /// Longer keys, boxed (no spare capacity kept).
    Heap(Box<[u8]>),
}

impl Key {
    /// The key's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(inline) => inline.as_slice(),
            Key::Heap(bytes) => bytes,
        }
    }

    /// The key copied from borrowed bytes (no allocation when short).
    pub(crate) fn from_slice(key: &[u8]) -> Key {
        match Key::inline(key) {
            Some(inline) => inline,
            None => Key::Heap(key.into()),
        }
    }

    /// The key as a vector of its own.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Key::Inline(inline) => inline.as_slice().to_vec(),
            Key::Heap(bytes) => bytes.into_vec(),
        }
    }

    fn inline(key: &[u8]) -> Option<Key> {
        InlineBytes::new(key).map(Key::Inline)
    }
}

impl From<Vec<u8>> for Key {
    /// Short keys are copied inline (the vector freed); longer ones keep the vector's
    /// buffer (shrunk to fit if it has spare capacity).
    fn from(key: Vec<u8>) -> Key {
        match Key::inline(&key) {
            Some(inline) => inline,
            None => Key::Heap(key.into_boxed_slice()),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Key {
    /// Exactly `[u8]`'s hash, as [`Borrow`] requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_bytes().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    fn lengths() -> impl Iterator<Item = usize> {
        [
            0,
            1,
            INLINE_KEY_BYTES - 1,
            INLINE_KEY_BYTES,
            INLINE_KEY_BYTES + 1,
            100,
        ]
        .into_iter()
    }

    #[test]
    fn a_key_is_no_larger_than_a_vec() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Vec<u8>>());
    }

    #[test]
    fn keys_of_every_length_keep_their_bytes_hash_and_order() {
        let hasher = foldhash::fast::RandomState::default();
        let keys: Vec<Vec<u8>> = lengths()
            .map(|len| (0..len).map(|i| (i * 7 + len) as u8).collect())
            .collect();
        for bytes in &keys {
            let short = bytes.len() <= INLINE_KEY_BYTES;
            for key in [Key::from(bytes.clone()), Key::from_slice(bytes)] {
                assert_eq!(key.as_bytes(), &bytes[..]);
                assert_eq!(matches!(key, Key::Inline(_)), short);
                assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
                assert_eq!(key.clone().into_vec(), *bytes);
            }
            for other in &keys {
                assert_eq!(
                    Key::from_slice(bytes).cmp(&Key::from_slice(other)),
                    bytes.cmp(other)
                );
            }
        }
        // Looked up by borrowed bytes.
        let set: HashSet<Key> = keys.iter().map(|k| Key::from_slice(k)).collect();
        assert!(keys.iter().all(|k| set.contains(&k[..])));
        assert!(!set.contains(&b"missing"[..]));
    }
}
