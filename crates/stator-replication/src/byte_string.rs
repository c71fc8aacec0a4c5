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
//! Session 8 measured the switch that kept the old per-byte path (`bench migration
//! --move leader`, p99 during the move over p99 before: 8.5-24.8x with it, 1.5-14.9x
//! without, lower in every pair); session 9 removed it.

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `bytes` as one byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Reads a byte string into a vector.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    serde_bytes::ByteBuf::deserialize(deserializer).map(serde_bytes::ByteBuf::into_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

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
