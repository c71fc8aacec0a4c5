//! The heap an idle replica holds stays small: a bound on live bytes per replica, counted
//! by a wrapping allocator, so a per-replica reservation (openraft's command queue once
//! reserved 4,096 commands, 608 KiB, per replica) cannot come back unnoticed. Bytes, not
//! time: the figure does not depend on the machine's load. docs/BENCHMARKS.md ("Session
//! 8: where an idle replica's bytes go") has the table by allocation site.

use stator_replication::testing::InProcessCluster;
use stator_replication::{GroupId, GroupOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Groups formed (3 replicas each): enough that per-host noise (transport buffers,
/// timers) is small beside the replicas' own bytes.
const GROUPS: u32 = 20;

/// Live heap per idle replica must stay below this. Measured: about 50 KiB in a debug
/// build (openraft's channels and tasks; see docs/BENCHMARKS.md); the bound leaves
/// room for debug futures and allocator noise, and fails on any reservation of the
/// size the command queue once had.
const IDLE_REPLICA_HEAP_MAX_BYTES: isize = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_holds_little_heap() {
    let cluster = InProcessCluster::start(3, Arc::new(stator_kv::KvFactory)).await;
    // One group first: connections and runtime set-up are not per replica.
    let warm_up = GroupId::new(1, 0);
    cluster
        .create_group(warm_up, &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(warm_up).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for g in 0..GROUPS {
        let group = GroupId::new(2, g);
        cluster
            .create_group(group, &[1, 2, 3], GroupOptions::default())
            .await;
    }
    for g in 0..GROUPS {
        cluster.leader(GroupId::new(2, g)).await;
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let per_replica = (after - before) / (3 * GROUPS as isize);
    println!("live heap per idle replica: {per_replica} bytes");
    assert!(
        per_replica < IDLE_REPLICA_HEAP_MAX_BYTES,
        "an idle replica holds {per_replica} bytes of heap, over the {IDLE_REPLICA_HEAP_MAX_BYTES} \
         bound: look for a new per-replica reservation with \
         `cargo run --release -p stator-replication --example idle_alloc`"
    );
}
