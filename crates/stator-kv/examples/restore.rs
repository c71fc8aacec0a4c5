//! Time of a kv restore (`KvMachine::from_snapshot`) of a snapshot of string keys, with the
//! page faults and CPU time it took: the own-disk restart's main cost (issue 14).
//! `STATOR_RESTORE_KEYS` (default 262,144) keys of `STATOR_RESTORE_VALUE_BYTES` (default
//! 4,096) bytes, `STATOR_RESTORE_RUNS` (default 3) restores of each kind, alternately:
//! `copy` (`from_snapshot`: every value copied into fresh memory) and `shared`
//! (`from_shared_snapshot`, what a durable replica does with its mapped snapshot file:
//! values of 64 bytes or more stay slices of the snapshot). After each shared restore,
//! `release` is the cost of copying every shared value out (what a replica does in the
//! background once a newer snapshot replaced the file), timed on its own.
//!
//! `cargo run --release -p stator-kv --example restore`

use stator_kv::KvMachine;
use std::time::Instant;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user + system CPU seconds, minor page faults) of this process so far.
fn usage() -> (f64, i64) {
    let mut usage = std::mem::MaybeUninit::<libc_rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is 0.
    let usage = unsafe {
        getrusage(0, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: [i64; 2]| t[0] as f64 + t[1] as f64 / 1e6;
    (seconds(usage.utime) + seconds(usage.stime), usage.minflt)
}

/// `struct rusage` of Linux x86-64 / aarch64 (timevals, then 14 longs).
#[repr(C)]
struct libc_rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss: i64,
    ixrss: i64,
    idrss: i64,
    isrss: i64,
    minflt: i64,
    rest: [i64; 9],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
    fn malloc_trim(pad: usize) -> i32;
}

/// Returns every freed page of glibc's malloc to the kernel, so the next restore faults
/// its memory in afresh as a new process would.
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        malloc_trim(0);
    }
}

fn main() {
    let keys = env_or("STATOR_RESTORE_KEYS", 262_144);
    let value_bytes = env_or("STATOR_RESTORE_VALUE_BYTES", 4_096);
    let runs = env_or("STATOR_RESTORE_RUNS", 3);
    let mut machine = KvMachine::new();
    for n in 0..keys {
        let value = vec![b'a' + (n % 26) as u8; value_bytes];
        machine.apply_owned(
            0,
            vec![b"SET".to_vec(), format!("key:{n}").into_bytes(), value],
        );
    }
    let snapshot = bytes::Bytes::from(machine.to_snapshot());
    drop(machine);
    // A restarted member restores into fresh memory, not into memory a dropped machine
    // just gave back to the allocator: hand it back to the kernel before each restore.
    give_back_freed_memory();
    println!(
        "restore: {keys} keys of {value_bytes} bytes, snapshot {} MB",
        snapshot.len() / 1_000_000
    );
    let measure = |what: &str, run: usize, step: &mut dyn FnMut()| {
        let (cpu_before, faults_before) = usage();
        let started = Instant::now();
        step();
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let (cpu_after, faults_after) = usage();
        println!(
            "run {run} {what}: {wall_ms:.0} ms wall, {:.0} ms CPU, {} minor faults",
            (cpu_after - cpu_before) * 1e3,
            faults_after - faults_before
        );
    };
    for run in 0..runs {
        let mut restored = None;
        measure("copy", run, &mut || {
            restored = Some(KvMachine::from_snapshot(&snapshot).expect("own snapshot decodes"));
        });
        assert_eq!(restored.take().map(|m| m.key_count()), Some(keys));
        give_back_freed_memory();
        measure("shared", run, &mut || {
            restored = Some(KvMachine::from_shared_snapshot(&snapshot).expect("decodes"));
        });
        let mut machine = restored.take().expect("restored");
        assert_eq!(machine.key_count(), keys);
        measure("release", run, &mut || {
            while !machine.release_shared(4 << 20) {}
        });
        assert!(!machine.holds_shared_snapshot());
        drop(machine);
        give_back_freed_memory();
    }
}
