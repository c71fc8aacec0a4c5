//! Snapshot encoding: the whole keyspace, expiries and clock in a length-prefixed format.
//!
//! Layout (integers little-endian): `b"STKV"`, version `u8`, `now_ms: u64`, `entries: u64`,
//! then per entry, sorted by key so equal states give equal bytes: `key_len: u32`, key,
//! `value_len: u32`, value, `has_expiry: u8` (0 or 1), and `expires_at_ms: u64` if 1.

use crate::keyspace::{ExpiryChange, Keyspace};
use crate::machine::KvMachine;
use stator_api::app::AppError;

const MAGIC: &[u8; 4] = b"STKV";
const VERSION: u8 = 1;

/// Fewest bytes one encoded entry takes (empty key and value, no expiry): caps the map
/// capacity reserved from an untrusted entry count by the bytes actually present.
const MIN_ENTRY_BYTES: usize = 4 + 4 + 1;

/// Serialises `machine`, entries sorted by key.
pub(crate) fn encode(machine: &KvMachine) -> Vec<u8> {
    let mut entries: Vec<_> = machine.keyspace.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(32 + machine.keyspace.bytes() as usize + entries.len() * 17);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&machine.now_ms.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, entry) in entries {
        push_bytes(&mut out, key);
        push_bytes(&mut out, &entry.value);
        match entry.expires_at_ms {
            None => out.push(0),
            Some(at_ms) => {
                out.push(1);
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
        }
    }
    out
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len())
        .expect("keys and values are bounded by MAX_BULK_BYTES, far below u32::MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Rebuilds a machine from [`encode`]'s output, refusing anything malformed.
pub(crate) fn decode(bytes: &[u8]) -> Result<KvMachine, AppError> {
    let mut reader = Reader { bytes, position: 0 };
    if reader.take(4)? != MAGIC {
        return Err(bad(
            "does not start with the kv snapshot magic 'STKV'; was it taken by another app?",
        ));
    }
    let version = reader.take(1)?[0];
    if version != VERSION {
        return Err(bad(&format!(
            "version {version} is not supported (expected {VERSION}); upgrade this node"
        )));
    }
    let now_ms = reader.u64()?;
    let entry_count = reader.u64()?;
    let remaining_bytes = bytes.len() - reader.position;
    let capacity = usize::try_from(entry_count)
        .unwrap_or(usize::MAX)
        .min(remaining_bytes / MIN_ENTRY_BYTES);
    let mut keyspace = Keyspace::with_capacity(capacity);
    let mut previous_key: Option<&[u8]> = None;
    for _ in 0..entry_count {
        let key = reader.len_prefixed()?;
        if previous_key.is_some_and(|previous| previous >= key) {
            return Err(bad(
                "keys are not strictly sorted (duplicate or reordered entry)",
            ));
        }
        previous_key = Some(key);
        let value = reader.len_prefixed()?;
        let expiry = match reader.take(1)?[0] {
            0 => ExpiryChange::Clear,
            1 => ExpiryChange::At(reader.u64()?),
            other => return Err(bad(&format!("expiry flag {other} is neither 0 nor 1"))),
        };
        keyspace.insert(key.to_vec(), value.to_vec(), expiry);
    }
    if reader.position != bytes.len() {
        return Err(bad(&format!(
            "{} trailing bytes after the last entry",
            bytes.len() - reader.position
        )));
    }
    Ok(KvMachine { keyspace, now_ms })
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
    fn entry_capacity_constant_matches_the_format() {
        let mut machine = KvMachine::new();
        machine.apply_argv(0, &[b"SET".to_vec(), b"".to_vec(), b"".to_vec()]);
        let header_bytes = encode(&KvMachine::new()).len();
        assert_eq!(encode(&machine).len() - header_bytes, MIN_ENTRY_BYTES);
    }
}
