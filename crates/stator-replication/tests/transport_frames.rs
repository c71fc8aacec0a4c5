//! Regressions found by fuzzing the transport's frame decoder (`fuzz/`, target
//! `transport_frame`), run through the same entry point the fuzz target uses.

use stator_replication::transport::{fuzz_read_frames, MAX_FRAME_BYTES};

fn push_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A frame holding a client write of `payload_bytes` bytes, encoded as postcard does.
fn client_request_frame(payload_bytes: usize) -> Vec<u8> {
    let mut body = Vec::new();
    // Message::Request, id 5, Request::Client, group 1, client 9, seq 3, RequestKind::Write.
    for value in [2, 5, 3, 1, 9, 3, 0] {
        push_varint(value, &mut body);
    }
    push_varint(payload_bytes as u64, &mut body);
    body.resize(body.len() + payload_bytes, b'x');
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_reused_read_buffer_never_grows_past_the_frame_limit() {
    // A frame just over half the limit, then a length prefix claiming the whole limit:
    // the read buffer used to double from the first frame's size, to about 34 MiB.
    let first = client_request_frame(MAX_FRAME_BYTES / 2 + 1024);
    let mut bytes = first.clone();
    bytes.extend_from_slice(&u32::try_from(MAX_FRAME_BYTES).unwrap().to_be_bytes());
    let (frames, capacity) = fuzz_read_frames(&bytes);
    assert_eq!(
        frames,
        vec![first],
        "the first frame decodes and re-encodes unchanged"
    );
    assert!(
        capacity <= MAX_FRAME_BYTES,
        "read buffer grew to {capacity} bytes, over the {MAX_FRAME_BYTES}-byte frame limit"
    );
}

#[test]
fn a_claimed_length_alone_reserves_no_memory_beyond_the_first_read() {
    // A peer that sends a length prefix claiming the whole limit and nothing else (as an
    // unauthenticated connection could, before the handshake) must not make the reader
    // set aside the claimed 32 MiB: memory follows the bytes that actually arrive.
    let bytes = u32::try_from(MAX_FRAME_BYTES).unwrap().to_be_bytes();
    let (frames, capacity) = fuzz_read_frames(&bytes);
    assert!(frames.is_empty());
    assert!(
        capacity <= 64 << 10,
        "a 4-byte prefix made the reader reserve {capacity} bytes"
    );
}
