//! What a snapshot of a large keyspace costs the writes of its partition: how long the
//! machine itself is held (`StateMachine::snapshot_in_parts`, called under the replica's
//! state machine lock, so no write of the partition applies meanwhile), how long the rest
//! takes on another thread, and how long each write applied during that rest takes (one
//! that copies a shard the snapshot still holds pays for the copy).
//!
//! The keyspace: `STATOR_KEYS` keys (default 1,000,000) of `STATOR_VALUE_BYTES`-byte
//! strings (default 256), written in entries of 16 `SET`s as a pipelined client's reach a
//! replica. Then `STATOR_ROUNDS` rounds (default 3): take a snapshot, finish it on a
//! thread while this one applies 16-`SET` entries on random keys (a ring made beforehand), and print the figures;
//! and a window of the same length with no snapshot, for the writes' own longest apply.
//!
//! `cargo run --release -p stator-kv --example snapshot_under_writes`

mod common;

use common::{random_sets, runtime, set, setting, BATCH, SEED};
use stator_api::app::StateMachine;
use stator_kv::{encode_command, encode_exec, KvMachine};
use std::time::{Duration, Instant};

/// Entries made ahead and replayed: 131,072 random keys, spread over every shard.
const RING: usize = 8_192;

/// A `/proc/self/status` field in MiB (Linux), or 0.
fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kib| kib / 1024)
}

/// Applies entries until `done` says stop; returns (writes, longest, p99) of the applies.
async fn apply_until<'a>(
    machine: &mut KvMachine,
    index: &mut u64,
    next_entry: &mut impl FnMut() -> &'a [u8],
    mut done: impl FnMut() -> bool,
) -> (usize, Duration, Duration) {
    let mut took = Vec::new();
    while !done() {
        let entry = next_entry();
        *index += 1;
        let one = Instant::now();
        machine.apply(*index, *index, entry).await.expect("applied");
        took.push(one.elapsed());
    }
    took.sort_unstable();
    let longest = took.last().copied().unwrap_or_default();
    let p99 = took
        .get(took.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or(longest);
    (took.len() * BATCH, longest, p99)
}

fn main() {
    let keys = setting("STATOR_KEYS", 1_000_000);
    let value_bytes = setting("STATOR_VALUE_BYTES", 256) as usize;
    let rounds = setting("STATOR_ROUNDS", 3);
    let value = vec![b'x'; value_bytes];
    // The entries are made before the clock starts and replayed in a ring, so the
    // figures time the machine, not the making of entries (whose allocations a heap the
    // snapshot fragmented slows).
    let mut state = SEED;
    let ring: Vec<Vec<u8>> = (0..RING)
        .map(|_| random_sets(&mut state, keys, &value))
        .collect();
    let mut next = 0;
    let mut next_entry = || {
        next = (next + 1) % RING;
        ring[next].as_slice()
    };
    let runtime = runtime();
    let mut machine = KvMachine::new();
    let mut index = 0;
    runtime.block_on(async {
        let filled = Instant::now();
        for first in (0..keys).step_by(BATCH) {
            let queued: Vec<Vec<Vec<u8>>> = (first..(first + BATCH as u64).min(keys)).map(|key| set(key, &value)).collect();
            index += 1;
            machine
                .apply(index, index, &encode_command(&encode_exec(&[], &queued)))
                .await
                .expect("applied");
        }
        println!(
            "{} keys of {value_bytes} bytes written in {} ms; RSS {} MiB",
            machine.key_count(),
            filled.elapsed().as_millis(),
            status_mib("VmRSS:"),
        );
        let quiet = Instant::now();
        let (writes, longest, p99) = apply_until(&mut machine, &mut index, &mut next_entry, || {
            quiet.elapsed() >= Duration::from_secs(1)
        })
        .await;
        println!(
            "1 s before any snapshot: {writes} SETs applied, entry p99 {} us, longest {} us",
            p99.as_micros(),
            longest.as_micros()
        );
        for round in 1..=rounds {
            let started = Instant::now();
            let finish = machine.snapshot_in_parts().await.expect("a snapshot");
            let held = started.elapsed();
            let finishing = std::thread::spawn(move || {
                let started = Instant::now();
                let bytes = finish();
                (bytes.len(), started.elapsed())
            });
            let (writes, longest, p99) =
                apply_until(&mut machine, &mut index, &mut next_entry, || finishing.is_finished()).await;
            let (snapshot_bytes, finished) = finishing.join().expect("the finish ran");
            let window = started.elapsed();
            let quiet = Instant::now();
            let (quiet_writes, quiet_longest, quiet_p99) =
                apply_until(&mut machine, &mut index, &mut next_entry, || quiet.elapsed() >= window).await;
            println!(
                "round {round}: machine held {:.3} ms; rest of the snapshot {} ms on its thread ({} MiB); \
                 meanwhile {writes} SETs applied, entry p99 {} us, longest {} us; \
                 same length without a snapshot: {quiet_writes} SETs, p99 {} us, longest {} us; peak RSS {} MiB",
                held.as_secs_f64() * 1e3,
                finished.as_millis(),
                snapshot_bytes >> 20,
                p99.as_micros(),
                longest.as_micros(),
                quiet_p99.as_micros(),
                quiet_longest.as_micros(),
                status_mib("VmHWM:"),
            );
        }
    });
}
