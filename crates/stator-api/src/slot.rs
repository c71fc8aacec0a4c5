//! Redis-Cluster key slots: `CRC16(hash-tag(key)) mod 16384`, and contiguous slot ranges per partition.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of key slots, as in Redis Cluster, so cluster-aware clients compute the same slot.
pub const SLOT_COUNT: u16 = 16384;

/// CRC16-CCITT lookup table (XMODEM variant: polynomial 0x1021, initial value 0), built at
/// compile time so the per-key cost is one table lookup per byte.
const CRC16_TABLE: [u16; 256] = build_crc16_table();

const fn build_crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

/// CRC16 XMODEM, the checksum Redis Cluster uses for key slots.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[(((crc >> 8) as u8) ^ byte) as usize]
    })
}

/// The part of `key` that is hashed: the bytes between the first `{` and the first `}`
/// after it, when that content is non-empty; otherwise the whole key (Redis rules).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let after_open = &key[open + 1..];
        if let Some(close) = after_open.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &after_open[..close];
            }
        }
    }
    key
}

/// The slot of `key`, in `0..SLOT_COUNT`.
pub fn key_slot(key: &[u8]) -> u16 {
    // SLOT_COUNT is a power of two, so the mask is the modulo Redis uses.
    crc16(hash_tag(key)) & (SLOT_COUNT - 1)
}

/// A contiguous, non-empty range of slots owned by one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SlotRange {
    /// First slot of the range.
    pub start: u16,
    /// Last slot of the range (inclusive, so the full range `0..=16383` fits in `u16`).
    pub end_inclusive: u16,
}

impl SlotRange {
    /// Whether `slot` lies in this range.
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end_inclusive).contains(&slot)
    }

    /// Number of slots in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end_inclusive) - u32::from(self.start) + 1
    }

    /// Always false: a range holds at least one slot. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end_inclusive)
    }
}

/// Splits the slots into `partitions` contiguous ranges in partition order, the first
/// `SLOT_COUNT % partitions` ranges one slot longer than the rest.
///
/// # Panics
/// If `partitions` is 0 or more than [`SLOT_COUNT`]: spec validation rejects both, so
/// reaching here with them is a bug.
pub fn partition_ranges(partitions: u32) -> Vec<SlotRange> {
    assert_partition_count(partitions);
    let (base_len, longer_count) = split(partitions);
    let mut start = 0u32;
    (0..partitions)
        .map(|partition| {
            let len = base_len + u32::from(partition < longer_count);
            let range = SlotRange {
                start: start as u16,
                end_inclusive: (start + len - 1) as u16,
            };
            start += len;
            range
        })
        .collect()
}

/// The partition (index into [`partition_ranges`]) that owns `slot`.
///
/// # Panics
/// If `partitions` is 0 or more than [`SLOT_COUNT`], or `slot >= SLOT_COUNT`.
pub fn partition_of_slot(partitions: u32, slot: u16) -> u32 {
    assert_partition_count(partitions);
    assert!(
        slot < SLOT_COUNT,
        "slot {slot} out of range 0..{SLOT_COUNT}"
    );
    let (base_len, longer_count) = split(partitions);
    let slot = u32::from(slot);
    let longer_slots = longer_count * (base_len + 1);
    if slot < longer_slots {
        slot / (base_len + 1)
    } else {
        longer_count + (slot - longer_slots) / base_len
    }
}

/// The partition that owns `key`.
pub fn partition_of_key(partitions: u32, key: &[u8]) -> u32 {
    partition_of_slot(partitions, key_slot(key))
}

/// (slots per short range, number of ranges that get one extra slot).
fn split(partitions: u32) -> (u32, u32) {
    let slots = u32::from(SLOT_COUNT);
    (slots / partitions, slots % partitions)
}

fn assert_partition_count(partitions: u32) {
    assert!(
        (1..=u32::from(SLOT_COUNT)).contains(&partitions),
        "partition count {partitions} out of range 1..={SLOT_COUNT}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn key_slot_matches_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on a real Redis.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"somekey"), 11058);
    }

    #[test]
    fn hash_tags_colocate_keys() {
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }

    #[test]
    fn hash_tag_follows_redis_rules() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        // Only the first `{` counts, and the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // No closing brace, or no opening brace: the whole key.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"foo}bar{"), b"foo}bar{");
        assert_eq!(hash_tag(b"}{x}"), b"x");
        assert_eq!(hash_tag(b""), b"");
        assert_eq!(hash_tag(b"{}"), b"{}");
    }

    #[test]
    fn ranges_cover_every_slot_once_and_near_equally() {
        for partitions in [1, 2, 3, 7, 8, 100, 1000, 16383, 16384] {
            let ranges = partition_ranges(partitions);
            assert_eq!(ranges.len() as u32, partitions);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end_inclusive, SLOT_COUNT - 1);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end_inclusive + 1, pair[1].start);
            }
            let lens: Vec<u32> = ranges.iter().map(SlotRange::len).collect();
            let spread = lens.iter().max().unwrap() - lens.iter().min().unwrap();
            assert!(
                spread <= 1,
                "{partitions} partitions: lengths differ by {spread}"
            );
        }
    }

    #[test]
    fn partition_of_slot_agrees_with_ranges() {
        for partitions in [1, 3, 7, 8, 1000, 16384] {
            let ranges = partition_ranges(partitions);
            for slot in 0..SLOT_COUNT {
                let partition = partition_of_slot(partitions, slot);
                assert!(
                    ranges[partition as usize].contains(slot),
                    "{partitions} partitions, slot {slot}"
                );
            }
        }
    }

    #[test]
    fn two_partitions_split_in_half() {
        assert_eq!(
            partition_ranges(2),
            vec![
                SlotRange {
                    start: 0,
                    end_inclusive: 8191
                },
                SlotRange {
                    start: 8192,
                    end_inclusive: 16383
                }
            ]
        );
        assert_eq!(partition_of_key(2, b"foo"), 1);
    }

    #[test]
    #[should_panic(expected = "partition count 0")]
    fn zero_partitions_is_a_bug() {
        partition_ranges(0);
    }

    #[test]
    fn slot_range_serde_round_trip() {
        let range = SlotRange {
            start: 5,
            end_inclusive: 10,
        };
        let json = serde_json::to_string(&range).unwrap();
        assert_eq!(json, r#"{"start":5,"end_inclusive":10}"#);
        assert_eq!(serde_json::from_str::<SlotRange>(&json).unwrap(), range);
        assert_eq!(range.to_string(), "5-10");
    }
}
