//! The `stator-sm/1` wire format: handshake, frame layout, encoders and a sans-IO decoder.
//!
//! Every frame is `length: u32 big-endian` then `length` bytes: one type byte and the
//! body. Integers are big-endian. Variable-length payloads take the rest of the body, so
//! no field carries its own length and a frame cannot disagree with itself.
//! docs/PROTOCOL.md documents every byte.

use crate::error::SmError;

/// What the app sends first and the host answers with; the digit is the version.
pub const HANDSHAKE: &[u8; 12] = b"stator-sm/1\n";

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Largest frame either side accepts (type byte + body). A snapshot travels in one
/// frame, so this caps one partition's state: 64 MiB restores in well under a second
/// locally and keeps a broken peer from making the host allocate gigabytes per replica.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

/// Fixed body bytes of APPLY: index u64 + time_ms u64.
pub const APPLY_FIXED_BYTES: usize = 16;

/// Fixed body bytes of QUERY: time_ms u64.
pub const QUERY_FIXED_BYTES: usize = 8;

/// Type byte of APPLY (host -> app).
pub const TYPE_APPLY: u8 = 0x01;
/// Type byte of QUERY (host -> app).
pub const TYPE_QUERY: u8 = 0x02;
/// Type byte of SNAPSHOT (host -> app).
pub const TYPE_SNAPSHOT: u8 = 0x03;
/// Type byte of RESTORE (host -> app).
pub const TYPE_RESTORE: u8 = 0x04;
/// Type byte of OK (app -> host).
pub const TYPE_OK: u8 = 0x80;
/// Type byte of ERROR (app -> host).
pub const TYPE_ERROR: u8 = 0x81;

/// A request from the host to the app. Payloads borrow from the frame they came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Apply one committed log entry; the reply goes to the client.
    Apply {
        /// The entry's log index.
        index: u64,
        /// The leader's wall clock when it appended the entry (non-decreasing).
        time_ms: u64,
        /// The command bytes.
        command: &'a [u8],
    },
    /// Answer a read-only request.
    Query {
        /// The host's clock at the read.
        time_ms: u64,
        /// The request bytes.
        request: &'a [u8],
    },
    /// Serialise the whole state; the OK reply carries it.
    Snapshot,
    /// Replace the whole state with a snapshot.
    Restore {
        /// Bytes an earlier SNAPSHOT returned.
        snapshot: &'a [u8],
    },
}

impl Request<'_> {
    /// A short human name for error messages, e.g. `APPLY index 7`.
    pub fn describe(&self) -> String {
        match self {
            Request::Apply { index, .. } => format!("APPLY index {index}"),
            Request::Query { .. } => "QUERY".to_string(),
            Request::Snapshot => "SNAPSHOT".to_string(),
            Request::Restore { .. } => "RESTORE".to_string(),
        }
    }
}

/// A response from the app to the host, one per request, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Success: the reply (APPLY, QUERY), the snapshot (SNAPSHOT) or nothing (RESTORE).
    Ok(&'a [u8]),
    /// Failure: a UTF-8 message for the operator.
    Error(&'a [u8]),
}

/// Checks a length prefix and returns the frame length it announces.
/// Call this before allocating anything for the frame.
pub fn parse_length(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, SmError> {
    let length = u32::from_be_bytes(prefix);
    if length == 0 {
        return Err(SmError::EmptyFrame);
    }
    if length > MAX_FRAME_BYTES {
        return Err(SmError::FrameTooLarge {
            length_bytes: length as u64,
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    Ok(length as usize)
}

/// Finds the first complete frame in `buffer`: `Ok(None)` when more bytes are needed,
/// otherwise the frame (type byte + body) and how many bytes of `buffer` it used.
pub fn split_frame(buffer: &[u8]) -> Result<Option<(&[u8], usize)>, SmError> {
    let Some(prefix) = buffer.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let length = parse_length(prefix.try_into().expect("slice of 4 bytes"))?;
    let end = LENGTH_PREFIX_BYTES + length;
    Ok(buffer
        .get(LENGTH_PREFIX_BYTES..end)
        .map(|frame| (frame, end)))
}

/// Decodes a request frame (type byte + body, without the length prefix).
pub fn decode_request(frame: &[u8]) -> Result<Request<'_>, SmError> {
    let (&type_byte, body) = frame.split_first().ok_or(SmError::EmptyFrame)?;
    match type_byte {
        TYPE_APPLY => {
            let (fixed, command) = split_fixed("APPLY", body, APPLY_FIXED_BYTES)?;
            Ok(Request::Apply {
                index: read_u64(&fixed[..8]),
                time_ms: read_u64(&fixed[8..]),
                command,
            })
        }
        TYPE_QUERY => {
            let (fixed, request) = split_fixed("QUERY", body, QUERY_FIXED_BYTES)?;
            Ok(Request::Query {
                time_ms: read_u64(fixed),
                request,
            })
        }
        TYPE_SNAPSHOT if body.is_empty() => Ok(Request::Snapshot),
        TYPE_SNAPSHOT => Err(SmError::UnexpectedBody {
            frame: "SNAPSHOT",
            body_bytes: body.len(),
        }),
        TYPE_RESTORE => Ok(Request::Restore { snapshot: body }),
        type_byte => Err(SmError::UnknownFrameType {
            type_byte,
            expected: "request",
        }),
    }
}

/// Decodes a response frame (type byte + body, without the length prefix).
pub fn decode_response(frame: &[u8]) -> Result<Response<'_>, SmError> {
    let (&type_byte, body) = frame.split_first().ok_or(SmError::EmptyFrame)?;
    match type_byte {
        TYPE_OK => Ok(Response::Ok(body)),
        TYPE_ERROR => Ok(Response::Error(body)),
        type_byte => Err(SmError::UnknownFrameType {
            type_byte,
            expected: "response",
        }),
    }
}

/// Appends a request frame, length prefix included, to `out`.
pub fn encode_request(request: &Request<'_>, out: &mut Vec<u8>) -> Result<(), SmError> {
    match *request {
        Request::Apply {
            index,
            time_ms,
            command,
        } => {
            let start = begin_frame(out, TYPE_APPLY);
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&time_ms.to_be_bytes());
            out.extend_from_slice(command);
            end_frame(out, start)
        }
        Request::Query { time_ms, request } => {
            let start = begin_frame(out, TYPE_QUERY);
            out.extend_from_slice(&time_ms.to_be_bytes());
            out.extend_from_slice(request);
            end_frame(out, start)
        }
        Request::Snapshot => {
            let start = begin_frame(out, TYPE_SNAPSHOT);
            end_frame(out, start)
        }
        Request::Restore { snapshot } => {
            let start = begin_frame(out, TYPE_RESTORE);
            out.extend_from_slice(snapshot);
            end_frame(out, start)
        }
    }
}

/// Appends a response frame, length prefix included, to `out`.
pub fn encode_response(response: &Response<'_>, out: &mut Vec<u8>) -> Result<(), SmError> {
    let (type_byte, body) = match *response {
        Response::Ok(body) => (TYPE_OK, body),
        Response::Error(body) => (TYPE_ERROR, body),
    };
    let start = begin_frame(out, type_byte);
    out.extend_from_slice(body);
    end_frame(out, start)
}

/// Writes a placeholder length and the type byte; returns where the frame starts.
fn begin_frame(out: &mut Vec<u8>, type_byte: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    out.push(type_byte);
    start
}

/// Fills in the length of the frame that starts at `start`, or undoes it if too big.
fn end_frame(out: &mut Vec<u8>, start: usize) -> Result<(), SmError> {
    let length = out.len() - start - LENGTH_PREFIX_BYTES;
    if length > MAX_FRAME_BYTES as usize {
        out.truncate(start);
        return Err(SmError::FrameTooLarge {
            length_bytes: length as u64,
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    let length = u32::try_from(length).expect("length checked against MAX_FRAME_BYTES");
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

fn split_fixed<'a>(
    frame: &'static str,
    body: &'a [u8],
    minimum_bytes: usize,
) -> Result<(&'a [u8], &'a [u8]), SmError> {
    if body.len() < minimum_bytes {
        return Err(SmError::FrameTooShort {
            frame,
            body_bytes: body.len(),
            minimum_bytes,
        });
    }
    Ok(body.split_at(minimum_bytes))
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("caller passes exactly 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_request(request: Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&request, &mut out).unwrap();
        out
    }

    #[test]
    fn apply_frame_matches_the_documented_bytes() {
        let bytes = encoded_request(Request::Apply {
            index: 7,
            time_ms: 1_700_000_000_000,
            command: b"+1",
        });
        let expected: Vec<u8> = [
            &[0, 0, 0, 0x13][..],
            &[0x01],
            &[0, 0, 0, 0, 0, 0, 0, 7],
            &[0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00],
            b"+1",
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn every_request_round_trips() {
        let requests = [
            Request::Apply {
                index: u64::MAX,
                time_ms: 3,
                command: b"",
            },
            Request::Query {
                time_ms: 9,
                request: b"get",
            },
            Request::Snapshot,
            Request::Restore { snapshot: b"state" },
        ];
        for request in requests {
            let bytes = encoded_request(request);
            let (frame, used) = split_frame(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(decode_request(frame).unwrap(), request);
        }
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let bytes = encoded_request(Request::Snapshot);
        for cut in 0..bytes.len() {
            assert_eq!(split_frame(&bytes[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn bad_lengths_and_types_are_errors() {
        assert!(matches!(parse_length([0; 4]), Err(SmError::EmptyFrame)));
        assert!(matches!(
            parse_length([0xff; 4]),
            Err(SmError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            decode_request(&[TYPE_APPLY, 1, 2, 3]),
            Err(SmError::FrameTooShort { .. })
        ));
        assert!(matches!(
            decode_request(&[TYPE_SNAPSHOT, 0]),
            Err(SmError::UnexpectedBody { .. })
        ));
        assert!(matches!(
            decode_response(&[TYPE_APPLY]),
            Err(SmError::UnknownFrameType { .. })
        ));
        assert!(matches!(
            decode_request(&[TYPE_OK]),
            Err(SmError::UnknownFrameType { .. })
        ));
    }
}
