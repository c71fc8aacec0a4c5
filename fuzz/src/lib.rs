//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! # Layout
//! - [`LargestAllocation`]: a global allocator that remembers the largest single
//!   allocation, so a target can assert that a parser's memory follows the bytes it
//!   was given, not a length those bytes claim.
//!
//! Targets: `resp` (stator-kv's RESP command and reply parsers), `transport_frame` (the
//! replica transport's frame decoder), `sm_frame` (stator-sm/1 frames), `spec` (service
//! and node-pool specs in TOML, YAML and JSON). docs/RELIABILITY.md says what each checks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest allocation since the last reset.
/// Install it in a target with `#[global_allocator]`.
pub struct LargestAllocation;

static LARGEST_BYTES: AtomicUsize = AtomicUsize::new(0);

impl LargestAllocation {
    /// Forgets what was allocated so far.
    pub fn reset() {
        LARGEST_BYTES.store(0, Ordering::Relaxed);
    }

    /// The largest allocation (or reallocation's new size) since [`Self::reset`], in bytes.
    pub fn largest_bytes() -> usize {
        LARGEST_BYTES.load(Ordering::Relaxed)
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_BYTES.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}
