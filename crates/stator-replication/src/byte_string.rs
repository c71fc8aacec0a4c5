//! Byte vectors on the wire and on disk as one byte string.
//!
//! serde's derive writes a `Vec<u8>` as a sequence: one call per byte, each appending
//! one byte. postcard writes a byte string as the same length and the same bytes, so
//! `#[serde(with = "crate::byte_string")]` changes no encoded byte (peers and stores on
//! either side of the change read each other) and turns the copy into one memcpy. It
//! matters where bytes are many: snapshot bodies and chunks (tens of MiB through the
//! leader's runtime when a member is added) and the writes in log entries (the whole
//! state again when a new member catches up from the log).
//!
//! [`LEGACY_BYTE_PATHS_ENV`] restores the per-byte encoding and the snapshot copies on
//! the runtime, for an A/B measurement in one build.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Set to `1` to encode byte vectors one byte at a time and to build, copy and encode
/// snapshots on the replica's runtime under the state machine's lock, as before
/// session 8. For measuring `stator bench migration` both ways with one binary; off by
/// default. Read once per process.
pub const LEGACY_BYTE_PATHS_ENV: &str = "STATOR_LEGACY_BYTE_PATHS";

/// Whether [`LEGACY_BYTE_PATHS_ENV`] is set to `1`.
pub fn legacy() -> bool {
    static LEGACY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LEGACY.get_or_init(|| std::env::var(LEGACY_BYTE_PATHS_ENV).is_ok_and(|v| v == "1"))
}

/// Writes `bytes` as one byte string (or, on the legacy path, as a sequence).
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if legacy() {
        return bytes.serialize(serializer);
    }
    serializer.serialize_bytes(bytes)
}

/// Reads a byte string (or, on the legacy path, a sequence) into a vector.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if legacy() {
        return Vec::<u8>::deserialize(deserializer);
    }
    serde_bytes::ByteBuf::deserialize(deserializer).map(serde_bytes::ByteBuf::into_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Derived(u64, Vec<u8>, bool);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Bytes(u64, #[serde(with = "crate::byte_string")] Vec<u8>, bool);

    #[test]
    fn a_byte_string_encodes_as_the_derived_sequence_and_reads_back() {
        for len in [0usize, 1, 127, 128, 70_000] {
            let data: Vec<u8> = (0..=255u8).cycle().take(len).collect();
            let derived = postcard::to_allocvec(&Derived(7, data.clone(), true)).unwrap();
            let bytes = postcard::to_allocvec(&Bytes(7, data.clone(), true)).unwrap();
            assert_eq!(bytes, derived, "{len} bytes");
            let back: Bytes = postcard::from_bytes(&derived).unwrap();
            assert_eq!(back, Bytes(7, data, true));
        }
    }
}
