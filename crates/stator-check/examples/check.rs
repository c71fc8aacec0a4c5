//! Checks the linearizability of a history file written by `stator chaos --history FILE` (or any JSONL history in
//! the format of DESIGN.md section 8) and prints the verdict per key.
//!
//! ```sh
//! cargo run --release -p stator-check --example check -- h.jsonl
//! ```
//!
//! Exits 0 when every key is linearizable, 1 on an anomaly or an undetermined key, 2 on a
//! file that cannot be read.

use std::process::ExitCode;
use std::time::Instant;

use stator_check::{check_history, KeyVerdict, Verdict};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check <history.jsonl>");
        return ExitCode::from(2);
    };
    let history = match stator_check::read_file(std::path::Path::new(&path)) {
        Ok(history) => history,
        Err(err) => {
            eprintln!("check: cannot read {path}: {err}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match check_history(&history) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("check: {path}: {err}");
            return ExitCode::from(2);
        }
    };
    for (key, verdict) in &report.keys {
        match verdict {
            KeyVerdict::Ok => println!("{key}: ok"),
            KeyVerdict::Anomaly(anomaly) => println!("{key}: ANOMALY {}", anomaly.explanation),
            KeyVerdict::Undetermined { reason } => println!("{key}: UNDETERMINED {reason}"),
        }
    }
    println!(
        "{} operations, verdict {:?}, checked in {:.1} s",
        history.len(),
        report.verdict,
        started.elapsed().as_secs_f64()
    );
    if report.verdict == Verdict::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
