//! stator-sm/1 frames: what an app process sends the agent (responses) and what the
//! agent sends an app (requests), split from a byte stream one after another.
//!
//! Beyond "no panic": a frame that decodes, as a request or as a response, re-encodes
//! to exactly the bytes it came from (the format has one encoding per message); a
//! frame is never longer than [`MAX_FRAME_BYTES`]; a cut-short frame asks for more
//! bytes; and splitting and decoding allocate nothing (payloads borrow the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stator_fuzz::LargestAllocation;
use stator_sm::frame::{
    decode_request, decode_response, encode_request, encode_response, split_frame,
    LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES,
};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        LargestAllocation::reset();
        let split = split_frame(rest);
        let decoded = match &split {
            Ok(Some((frame, _))) => Some((decode_request(frame), decode_response(frame))),
            _ => None,
        };
        assert_eq!(
            LargestAllocation::largest_bytes(),
            0,
            "the sans-IO decoder allocated"
        );
        let (Ok(Some((frame, used))), Some((request, response))) = (split, decoded) else {
            break;
        };
        assert_eq!(used, LENGTH_PREFIX_BYTES + frame.len());
        assert!(frame.len() <= MAX_FRAME_BYTES as usize);
        assert_eq!(split_frame(&rest[..used - 1]).ok(), Some(None), "cut short");
        let whole = &rest[..used];
        match request {
            Ok(request) => {
                let mut encoded = Vec::new();
                encode_request(&request, &mut encoded).expect("a decoded frame fits");
                assert_eq!(encoded, whole, "request {request:?} re-encodes differently");
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
        match response {
            Ok(response) => {
                let mut encoded = Vec::new();
                encode_response(&response, &mut encoded).expect("a decoded frame fits");
                assert_eq!(
                    encoded, whole,
                    "response {response:?} re-encodes differently"
                );
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
        rest = &rest[used..];
    }
});
