//! RESP: the gateway's command parser (arrays and inline lines) and the reply parser.
//!
//! Beyond "no panic": a parsed command re-encodes as a RESP array that parses to the
//! same arguments; the bytes a command used parse on their own as exactly one command;
//! a cut-short command asks for more bytes; an error stays an error when more bytes
//! arrive (it "can never become valid"); a parsed reply re-encodes to bytes that parse
//! to a value that encodes the same again; and no single allocation grows with a length
//! the input claims, only with the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stator_fuzz::LargestAllocation;
use stator_kv::resp::{encode_command, parse_command, parse_reply, parse_whole_command, Value};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Largest allocation allowed per input byte while parsing. The parsers reserve array
/// slots for at most as many elements as the buffered bytes could hold (24-32 bytes
/// of element per 3-6 input bytes), an inline line's argument vector doubles as it
/// grows, and invalid UTF-8 in a reply line becomes 3-byte replacement characters.
const ALLOCATED_BYTES_PER_INPUT_BYTE: usize = 32;
/// Allocation allowed whatever the input size (small vectors and error messages).
const ALLOCATED_BYTES_BASE: usize = 1024;

fn allocation_bound(input_bytes: usize) -> usize {
    input_bytes * ALLOCATED_BYTES_PER_INPUT_BYTE + ALLOCATED_BYTES_BASE
}

fn check_command(data: &[u8]) {
    LargestAllocation::reset();
    let parsed = parse_command(data);
    let largest = LargestAllocation::largest_bytes();
    assert!(
        largest <= allocation_bound(data.len()),
        "parse_command allocated {largest} bytes for {} input bytes",
        data.len()
    );
    match parsed {
        Ok(Some((argv, used))) => {
            assert!(
                used > 0 && used <= data.len(),
                "used {used} of {}",
                data.len()
            );
            assert_eq!(parse_whole_command(&data[..used]), Ok(argv.clone()));
            // Cut short, a command needs more bytes; it is never an error or another command.
            for cut in [0, used / 2, used - 1] {
                assert_eq!(
                    parse_command(&data[..cut]),
                    Ok(None),
                    "cut at {cut} of {used}"
                );
            }
            let encoded = encode_command(&argv);
            assert_eq!(
                parse_command(&encoded),
                Ok(Some((argv, encoded.len()))),
                "re-encoded command parses differently"
            );
        }
        Ok(None) => {}
        Err(error) => {
            assert!(error.to_reply().is_error());
            assert!(!error.to_string().is_empty());
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n$1\r\nx\r\n\n");
            assert!(
                parse_command(&more).is_err(),
                "{error} turned into a command when more bytes arrived"
            );
        }
    }
}

fn check_reply(data: &[u8]) {
    LargestAllocation::reset();
    let parsed = parse_reply(data);
    let largest = LargestAllocation::largest_bytes();
    assert!(
        largest <= allocation_bound(data.len()),
        "parse_reply allocated {largest} bytes for {} input bytes",
        data.len()
    );
    match parsed {
        Ok(Some((value, used))) => {
            assert!(
                used > 0 && used <= data.len(),
                "used {used} of {}",
                data.len()
            );
            for cut in [0, used / 2, used - 1] {
                assert_eq!(
                    parse_reply(&data[..cut]),
                    Ok(None),
                    "cut at {cut} of {used}"
                );
            }
            let encoded = value.to_bytes();
            let (reparsed, reparsed_used) = parse_reply(&encoded)
                .expect("an encoded reply parses")
                .expect("an encoded reply is complete");
            assert_eq!(reparsed_used, encoded.len());
            // Status and error lines lose a stray CR or LF on encoding (it would end the
            // line early); apart from that the value survives unchanged.
            if !has_line_breaks(&value) {
                assert_eq!(reparsed, value, "re-encoded reply parses differently");
            }
            assert_eq!(reparsed.to_bytes(), encoded, "encoding is not a fixpoint");
        }
        Ok(None) => {}
        Err(error) => {
            assert!(!error.to_string().is_empty());
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n+OK\r\n");
            assert!(
                parse_reply(&more).is_err(),
                "{error} turned into a reply when more bytes arrived"
            );
        }
    }
}

fn has_line_breaks(value: &Value) -> bool {
    match value {
        Value::Simple(line) | Value::Error(line) => line.contains(['\r', '\n']),
        Value::Array(Some(items)) => items.iter().any(has_line_breaks),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    check_command(data);
    check_reply(data);
});
