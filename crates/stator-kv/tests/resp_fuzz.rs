//! The RESP parsers never panic on arbitrary bytes and never allocate more than the bytes
//! they were given justify (no allocation sized from an untrusted length).

use proptest::prelude::*;
use stator_kv::resp::{encode_command, parse_command, parse_reply, reply_len};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts bytes allocated by the current thread, so parallel tests do not disturb it.
struct CountingAllocator;

thread_local! {
    static ALLOCATED_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with` because the allocator also runs while thread-locals are torn down.
    let _ = ALLOCATED_BYTES.try_with(|total| total.set(total.get() + bytes));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Bytes allocated while running `work` on this thread.
fn allocated_by<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED_BYTES.with(Cell::get);
    let result = work();
    (result, ALLOCATED_BYTES.with(Cell::get) - before)
}

/// Allowed allocation for `input_len` bytes: every input byte may become an argument of its
/// own (a 24-byte Vec header plus its data, with growth doubling), plus a small constant.
fn allocation_budget(input_len: usize) -> usize {
    64 * input_len + 4096
}

/// Inputs that look like RESP, so the fuzzer reaches deep parser states, mixed with noise.
fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"536870912".to_vec()),
        Just(b"1048576".to_vec()),
        Just(b"99999999999999999999".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\\x4".to_vec()),
        Just(b"+OK".to_vec()),
        Just(b":".to_vec()),
        Just(b"_".to_vec()),
        (0u32..40).prop_map(|n| n.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn command_parser_is_total_and_bounded(input in prop_oneof![resp_like_bytes(), prop::collection::vec(any::<u8>(), 0..256)]) {
        let (result, allocated) = allocated_by(|| parse_command(&input));
        prop_assert!(allocated <= allocation_budget(input.len()), "{} bytes allocated for {} input bytes", allocated, input.len());
        if let Ok(Some((argv, consumed))) = result {
            prop_assert!(consumed > 0 && consumed <= input.len());
            prop_assert!(argv.iter().map(Vec::len).sum::<usize>() <= consumed);
        }
    }

    #[test]
    fn reply_parser_is_total_and_bounded(input in prop_oneof![resp_like_bytes(), prop::collection::vec(any::<u8>(), 0..256)]) {
        let (result, allocated) = allocated_by(|| parse_reply(&input));
        prop_assert!(allocated <= allocation_budget(input.len()), "{} bytes allocated for {} input bytes", allocated, input.len());
        if let Ok(Some((_, consumed))) = result {
            prop_assert!(consumed > 0 && consumed <= input.len());
        }
    }

    #[test]
    fn reply_len_agrees_with_the_reply_parser(input in prop_oneof![resp_like_bytes(), prop::collection::vec(any::<u8>(), 0..256)]) {
        let parsed = parse_reply(&input).map(|reply| reply.map(|(_, used)| used));
        prop_assert_eq!(reply_len(&input), parsed);
    }

    #[test]
    fn encoded_commands_parse_back(argv in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 1..8)) {
        let bytes = encode_command(&argv);
        prop_assert_eq!(parse_command(&bytes).unwrap(), Some((argv, bytes.len())));
    }
}

#[test]
fn huge_declared_lengths_allocate_nothing_large() {
    for input in [
        &b"*1048576\r\n"[..],
        b"*1\r\n$536870912\r\n",
        b"*1048576\r\n$536870912\r\nabc",
        b"$536870912\r\n",
        b"*1048576\r\n*1048576\r\n",
    ] {
        let (_, allocated) = allocated_by(|| (parse_command(input), parse_reply(input)));
        assert!(
            allocated <= allocation_budget(input.len()),
            "{allocated} bytes for {input:?}"
        );
    }
}
