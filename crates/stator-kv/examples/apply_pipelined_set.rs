//! What one replica's apply costs per pipelined `SET`, load-robust: allocations counted by a
//! wrapping allocator, and a fixed piece of work to run under
//! `valgrind --tool=callgrind` for an instruction count.
//!
//! The work is what `redis-benchmark --cluster -c 50 -P 16 -r 100000 -t set` gives one
//! partition: `STATOR.EXEC` entries of 16 `SET key:{tag}:<12 digits> xxx` on random keys
//! of a space of `STATOR_KEYS` (default 25,000, a quarter of 100,000), applied through the
//! `StateMachine` contract as every replica applies them. A warm-up of `STATOR_WARMUP`
//! entries (default 5,000) fills the keyspace first; `STATOR_ENTRIES` (default 20,000)
//! entries are measured. It also prints the longest apply of one entry: with a keyspace
//! that grows through the run (`STATOR_KEYS=4000000 STATOR_WARMUP=0
//! STATOR_ENTRIES=300000`) that is the pause of the keyspace table's largest resize.
//!
//! `cargo run --release -p stator-kv --example apply_pipelined_set`

mod common;

use common::{random_sets, runtime, setting, BATCH, SEED};
use stator_api::app::StateMachine;
use stator_kv::KvMachine;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocation calls (alloc and realloc).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let keys = setting("STATOR_KEYS", 25_000);
    let warmup = setting("STATOR_WARMUP", 5_000);
    let entries = setting("STATOR_ENTRIES", 20_000);
    let mut state = SEED;
    let mut next_entry = || random_sets(&mut state, keys, b"xxx");
    let warm: Vec<Vec<u8>> = (0..warmup).map(|_| next_entry()).collect();
    let measured: Vec<Vec<u8>> = (0..entries).map(|_| next_entry()).collect();
    let runtime = runtime();
    let mut machine = KvMachine::new();
    let mut index = 0;
    runtime.block_on(async {
        for entry in &warm {
            index += 1;
            machine.apply(index, index, entry).await.expect("applied");
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let mut longest = std::time::Duration::ZERO;
        for entry in &measured {
            index += 1;
            let one = std::time::Instant::now();
            machine.apply(index, index, entry).await.expect("applied");
            longest = longest.max(one.elapsed());
        }
        let elapsed = started.elapsed();
        let sets = (entries * BATCH as u64) as f64;
        println!(
            "{} SETs in {} entries over {} keys: {:.2} allocations per SET, {:.0} ns per SET (wall), longest entry {} us",
            sets,
            entries,
            machine.key_count(),
            (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / sets,
            elapsed.as_nanos() as f64 / sets,
            longest.as_micros(),
        );
    });
}
