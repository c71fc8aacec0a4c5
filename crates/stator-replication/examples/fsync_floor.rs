//! The floor of one durable append on this disk: what a ~200-byte Raft entry costs to make
//! durable by each way a log store could do it, in one run (issue 14, docs/BENCHMARKS.md
//! "Session 9: the fsync floor").
//!
//! ```sh
//! cargo run --release -p stator-replication --example fsync_floor -- [DIR] [APPENDS]
//! ```
//!
//! Ways, each `APPENDS` (default [`DEFAULT_APPENDS`]) appends of [`RECORD_BYTES`] bytes,
//! each durable before the next starts (a 1-client write); the ways take turns, one
//! append each, so other work on the machine hits them alike:
//! - `redb-immediate`: one redb transaction (insert, `Durability::Immediate` commit) per
//!   append, as `disk_store` did per batch before session 9;
//! - `redb-2pc`: the same with redb's two-phase commit;
//! - `append-fdatasync`: `write` at the end of a growing file, then `fdatasync` (the file
//!   size changes, so the filesystem journals the inode too);
//! - `prealloc-fdatasync`: `pwrite` into a file whose blocks were written once before,
//!   then `fdatasync` (only the data block goes out);
//! - `prealloc-odsync`: the same file opened `O_DSYNC`, no separate sync call;
//! - `log-file`: `disk_store`'s own log since session 10
//!   ([`stator_replication::log_file::LogFile`]: a checksummed record `pwrite` at the tail
//!   of a preallocated segment, then `fdatasync`).
//!
//! Prints one JSON line per way: p50, p99 and mean in microseconds, and the load average.

use redb::{Durability, TableDefinition};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

/// Bytes per append: a logged kv SET of a 100-byte value with its entry header.
const RECORD_BYTES: usize = 200;
/// Appends per way unless the command line says otherwise.
const DEFAULT_APPENDS: usize = 500;
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(way: &str, mut micros: Vec<f64>) {
    micros.sort_by(|a, b| a.total_cmp(b));
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    println!(
        "{}",
        serde_json::json!({
            "way": way,
            "appends": micros.len(),
            "p50_us": percentile(&micros, 0.5).round(),
            "p99_us": percentile(&micros, 0.99).round(),
            "mean_us": mean.round(),
            "load_1m": load,
        })
    );
}

/// One way of making an append durable: given the append's number, appends one record.
type Way = Box<dyn FnMut(u64)>;

fn redb_way(dir: &Path, two_phase: bool) -> Way {
    let path = dir.join(if two_phase { "2pc.redb" } else { "1pc.redb" });
    let _ = std::fs::remove_file(&path);
    let db = redb::Builder::new().create(&path).expect("create redb");
    let record = vec![7u8; RECORD_BYTES];
    Box::new(move |i| {
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate);
        txn.set_two_phase_commit(two_phase);
        txn.open_table(LOG)
            .expect("table")
            .insert(i, record.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    })
}

fn append_way(dir: &Path) -> Way {
    let mut file = File::create(dir.join("append.log")).expect("create log");
    let record = vec![7u8; RECORD_BYTES];
    Box::new(move |_| {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    })
}

fn preallocated(dir: &Path, name: &str, appends: usize, odsync: bool) -> File {
    let path = dir.join(name);
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).read(true).write(true);
    let mut file = options.open(&path).expect("create log");
    // Write every block once and sync, so later writes change no metadata.
    file.write_all(&vec![0u8; appends * RECORD_BYTES + 4096])
        .expect("preallocate");
    file.sync_all().expect("sync preallocation");
    if odsync {
        options.truncate(false).custom_flags(libc::O_DSYNC);
        file = options.open(&path).expect("reopen O_DSYNC");
    }
    file
}

fn prealloc_way(dir: &Path, appends: usize, odsync: bool) -> Way {
    let name = if odsync { "odsync.log" } else { "prealloc.log" };
    let file = preallocated(dir, name, appends, odsync);
    let record = vec![7u8; RECORD_BYTES];
    Box::new(move |i| {
        file.write_all_at(&record, i * RECORD_BYTES as u64)
            .expect("pwrite");
        if !odsync {
            file.sync_data().expect("fdatasync");
        }
    })
}

fn log_file_way(dir: &Path) -> Way {
    let (mut log, _) =
        stator_replication::log_file::LogFile::open(&dir.join("log-file"), |_, _| Ok(()))
            .expect("open the log");
    // The record's payload makes the whole record (header included) RECORD_BYTES long.
    let payload = vec![7u8; RECORD_BYTES - stator_replication::log_file::RECORD_HEADER_BYTES - 2];
    Box::new(move |i| {
        let record = stator_replication::log_file::encode(i, &payload);
        log.append(&[(i, record)], true).expect("append");
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("fsync-floor-{}", std::process::id()));
    let appends = args
        .next()
        .map(|n| n.parse().expect("APPENDS is a number"))
        .unwrap_or(DEFAULT_APPENDS);
    std::fs::create_dir_all(&dir).expect("create the directory");
    let mut ways: Vec<(&str, Way, Vec<f64>)> = vec![
        ("redb-immediate", redb_way(&dir, false), Vec::new()),
        ("redb-2pc", redb_way(&dir, true), Vec::new()),
        ("append-fdatasync", append_way(&dir), Vec::new()),
        (
            "prealloc-fdatasync",
            prealloc_way(&dir, appends, false),
            Vec::new(),
        ),
        (
            "prealloc-odsync",
            prealloc_way(&dir, appends, true),
            Vec::new(),
        ),
        ("log-file", log_file_way(&dir), Vec::new()),
    ];
    // Round-robin, one append of each way in turn, so a burst of other work on the
    // machine hits every way alike.
    for i in 0..appends as u64 {
        for (_, way, micros) in &mut ways {
            let started = Instant::now();
            way(i);
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    for (name, _, micros) in ways {
        report(name, micros);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
