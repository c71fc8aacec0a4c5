//! The key-value map with its expiry index and byte accounting, kept in sync in one place.

use std::collections::{BTreeSet, HashMap};

/// One stored string and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Vec<u8>,
    /// Absolute expiry on the leader-stamped clock; `None` lives forever.
    pub(crate) expires_at_ms: Option<u64>,
}

impl Entry {
    /// Redis treats a key as expired once the clock is strictly past its expiry.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at_ms| now_ms > at_ms)
    }
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
/// Some(at)`, and `bytes` is the sum of key and value lengths of all entries.
#[derive(Debug, Default)]
pub(crate) struct Keyspace {
    entries: HashMap<Vec<u8>, Entry>,
    by_expiry: BTreeSet<(u64, Vec<u8>)>,
    bytes: u64,
}

impl Keyspace {
    /// An empty keyspace with room for `entries` keys.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        Keyspace {
            entries: HashMap::with_capacity(entries),
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

    /// Entries held, including expired ones not yet reclaimed.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// All entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.entries.iter()
    }

    /// Removes `key` if it is expired at `now_ms` (lazy expiry on access).
    pub(crate) fn reclaim_if_expired(&mut self, key: &[u8], now_ms: u64) {
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.is_expired(now_ms))
        {
            self.remove(key);
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
            let entry = self.entries.remove(&key).unwrap_or_else(|| {
                panic!("expiry index names key {key:?} (at {at_ms}) missing from the keyspace")
            });
            assert_eq!(
                entry.expires_at_ms,
                Some(at_ms),
                "expiry index out of sync for key {key:?}"
            );
            self.bytes -= (key.len() + entry.value.len()) as u64;
            removed += 1;
        }
        removed
    }

    /// Stores `value` under `key`, changing its expiry as asked. Returns the previous value.
    /// The caller reclaims an expired previous entry first if it must not be returned.
    pub(crate) fn insert(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        expiry: ExpiryChange,
    ) -> Option<Vec<u8>> {
        match self.entries.get_mut(key.as_slice()) {
            Some(entry) => {
                self.bytes = self.bytes - entry.value.len() as u64 + value.len() as u64;
                let previous = std::mem::replace(&mut entry.value, value);
                let expires_at_ms = match expiry {
                    ExpiryChange::Keep => entry.expires_at_ms,
                    ExpiryChange::Clear => None,
                    ExpiryChange::At(at_ms) => Some(at_ms),
                };
                if expires_at_ms != entry.expires_at_ms {
                    let old_expiry = std::mem::replace(&mut entry.expires_at_ms, expires_at_ms);
                    // Move the key through the index probes instead of cloning it twice.
                    let mut key = key;
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
            None => {
                self.bytes += (key.len() + value.len()) as u64;
                let expires_at_ms = match expiry {
                    ExpiryChange::At(at_ms) => {
                        self.by_expiry.insert((at_ms, key.clone()));
                        Some(at_ms)
                    }
                    ExpiryChange::Keep | ExpiryChange::Clear => None,
                };
                self.entries.insert(
                    key,
                    Entry {
                        value,
                        expires_at_ms,
                    },
                );
                None
            }
        }
    }

    /// Removes `key`, returning its entry.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (key, entry) = self.entries.remove_entry(key)?;
        self.bytes -= (key.len() + entry.value.len()) as u64;
        if let Some(at_ms) = entry.expires_at_ms {
            let was_indexed = self.by_expiry.remove(&(at_ms, key));
            assert!(
                was_indexed,
                "expiry index missing a key that had expiry {at_ms}"
            );
        }
        Some(entry)
    }

    /// Sets or clears the expiry of an existing `key`. Returns false if `key` is missing.
    pub(crate) fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<u64>) -> bool {
        let Some((stored_key, entry)) = self.entries.get_key_value(key) else {
            return false;
        };
        if entry.expires_at_ms == expires_at_ms {
            return true;
        }
        let stored_key = stored_key.clone();
        let entry = self.entries.get_mut(key).expect("looked up above");
        let old_expiry = std::mem::replace(&mut entry.expires_at_ms, expires_at_ms);
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

    /// Runs `change` on the value of an existing `key`, keeping the byte count right.
    /// Returns `None` if `key` is missing.
    pub(crate) fn update_value<R>(
        &mut self,
        key: &[u8],
        change: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Option<R> {
        let entry = self.entries.get_mut(key)?;
        let before_bytes = entry.value.len() as u64;
        let result = change(&mut entry.value);
        self.bytes = self.bytes - before_bytes + entry.value.len() as u64;
        Some(result)
    }

    /// Checks the invariants; tests call it after every step.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let mut bytes = 0u64;
        let mut expiring = 0usize;
        for (key, entry) in &self.entries {
            bytes += (key.len() + entry.value.len()) as u64;
            if let Some(at_ms) = entry.expires_at_ms {
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
