//! The replica transport's frame decoder: what a peer (or anyone reaching the port,
//! before authentication) can send. Frames are read as a connection reads them, one
//! after another, until one is refused.
//!
//! Beyond "no panic": every decoded message re-encodes to a frame that decodes and
//! re-encodes to the same bytes (a fixpoint; postcard is canonical once decoded), no
//! re-encoded frame is over the limit, and the read buffer never grows past
//! [`MAX_FRAME_BYTES`] (with `-malloc_limit_mb=32`, no allocation does either).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stator_fuzz::LargestAllocation;
use stator_replication::transport::{fuzz_read_frames, MAX_FRAME_BYTES};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Bytes of the length prefix in front of every frame.
const LENGTH_PREFIX_BYTES: usize = 4;

fuzz_target!(|data: &[u8]| {
    LargestAllocation::reset();
    let (frames, buffer_capacity) = fuzz_read_frames(data);
    let largest = LargestAllocation::largest_bytes();
    assert!(
        buffer_capacity <= MAX_FRAME_BYTES,
        "read buffer grew to {buffer_capacity} bytes"
    );
    assert!(
        largest <= MAX_FRAME_BYTES,
        "decoding allocated {largest} bytes at once"
    );
    for frame in frames {
        assert!(frame.len() - LENGTH_PREFIX_BYTES <= MAX_FRAME_BYTES);
        let (again, _) = fuzz_read_frames(&frame);
        assert_eq!(again, vec![frame], "re-encoded frame is not a fixpoint");
    }
});
