//! Fuzz-style properties of the frame decoder: arbitrary bytes never panic it, and
//! everything the encoder writes decodes back to itself.

use proptest::prelude::*;
use stator_sm::frame::{
    decode_request, decode_response, encode_request, encode_response, parse_length, split_frame,
    Request, Response, MAX_FRAME_BYTES,
};

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        if let Ok(Some((frame, used))) = split_frame(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(frame.len() + 4, used);
            let _ = decode_request(frame);
            let _ = decode_response(frame);
        }
    }

    #[test]
    fn length_prefix_is_bounded(prefix in any::<[u8; 4]>()) {
        match parse_length(prefix) {
            Ok(length) => prop_assert!(length >= 1 && length <= MAX_FRAME_BYTES as usize),
            Err(_) => {
                let raw = u32::from_be_bytes(prefix);
                prop_assert!(raw == 0 || raw > MAX_FRAME_BYTES);
            }
        }
    }

    #[test]
    fn frames_split_from_a_stream_with_trailing_garbage(
        index in any::<u64>(),
        time_ms in any::<u64>(),
        command in proptest::collection::vec(any::<u8>(), 0..64),
        trailing in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let request = Request::Apply { index, time_ms, command: &command };
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes).unwrap();
        let frame_bytes = bytes.len();
        bytes.extend_from_slice(&trailing);
        let (frame, used) = split_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, frame_bytes);
        prop_assert_eq!(decode_request(frame).unwrap(), request);
    }

    #[test]
    fn responses_round_trip(ok in any::<bool>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let response = if ok { Response::Ok(&body) } else { Response::Error(&body) };
        let mut bytes = Vec::new();
        encode_response(&response, &mut bytes).unwrap();
        let (frame, _) = split_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(decode_response(frame).unwrap(), response);
    }
}
