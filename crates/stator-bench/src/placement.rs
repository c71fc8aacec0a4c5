//! Which vCPU each busy thread ran on during a run (`STATOR_BENCH_PLACEMENT=1`, a
//! diagnostic): `bench replication`'s 1-client p50 is bimodal, and on this kind of
//! 2-vCPU machine the mode is the placement (docs/BENCHMARKS.md, "Session 15: one
//! write's path at 1 client counted"): a run says which one it drew only if its threads'
//! vCPUs are recorded beside it.
//!
//! A plain thread reads field 39 (the vCPU last run on) of every thread of this process
//! and of the given processes every [`SAMPLE_EVERY`], and their CPU time from
//! `schedstat`, over the measured window, and leaves itself out. Its own CPU (about 5 %
//! of a core on the 2-vCPU test machine) counts in this process's CPU per write
//! (`cpu_us/op`) and competes with the run, so it is off unless asked for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the sampler reads every thread's vCPU.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// A thread's share of one core below which the report leaves it out.
const BUSY_SHARE: f64 = 0.05;

/// The environment variable that turns the sampler on.
const ENV: &str = "STATOR_BENCH_PLACEMENT";

/// One thread's samples.
#[derive(Default)]
struct Seen {
    name: String,
    first_run_ns: Option<u64>,
    last_run_ns: u64,
    /// Samples per vCPU, indexed by vCPU.
    on: Vec<u32>,
}

/// A sampler running until the window's end; [`Sampler::report`] joins it.
pub(crate) struct Sampler {
    thread: std::thread::JoinHandle<String>,
}

impl Sampler {
    /// Starts sampling this process's and `pids`' threads from `from` to `end`, when
    /// [`ENV`] is set (and not `0`); `None` otherwise.
    pub(crate) fn start(pids: &[u32], from: Instant, end: Instant) -> Option<Sampler> {
        if std::env::var(ENV).map_or(true, |v| v == "0") {
            return None;
        }
        let mut procs = vec!["self".to_string()];
        procs.extend(pids.iter().map(|p| p.to_string()));
        let thread = std::thread::spawn(move || {
            let me = crate::threadstat::current_tid().to_string();
            let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
            let now = Instant::now();
            if from > now {
                std::thread::sleep(from - now);
            }
            while Instant::now() < end {
                for p in &procs {
                    sample(p, &me, &mut seen);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            summary(&seen, end.saturating_duration_since(from))
        });
        Some(Sampler { thread })
    }

    /// The summary line: each busy thread, busiest first, with its share of a core and
    /// its share of samples on each vCPU.
    pub(crate) fn report(self) -> String {
        self.thread
            .join()
            .unwrap_or_else(|_| "placement sampler panicked".to_string())
    }
}

/// Reads every thread of `/proc/<proc>` once, except the sampler's own (`me`).
fn sample(proc: &str, me: &str, seen: &mut BTreeMap<(String, String), Seen>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{proc}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(stat), Ok(schedstat)) = (
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let Some((name, cpu)) = parse_stat(&stat) else {
            continue;
        };
        let Some(run_ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
        else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        if proc == "self" && tid == me {
            continue;
        }
        let s = seen.entry((proc.to_string(), tid)).or_default();
        s.name = name;
        s.first_run_ns.get_or_insert(run_ns);
        s.last_run_ns = run_ns;
        if s.on.len() <= cpu {
            s.on.resize(cpu + 1, 0);
        }
        s.on[cpu] += 1;
    }
}

/// The command name and the vCPU last run on (field 39) of a `stat` line; fields after
/// the name (which may hold spaces) start at the state, field 3.
fn parse_stat(stat: &str) -> Option<(String, usize)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let cpu = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(36)?
        .parse()
        .ok()?;
    Some((name, cpu))
}

/// One line: `name/tid 61% of a core: v0 100%, ...`, busiest first.
fn summary(seen: &BTreeMap<(String, String), Seen>, window: Duration) -> String {
    let window_ns = window.as_nanos().max(1) as f64;
    let mut busy: Vec<(f64, String)> = seen
        .iter()
        .filter_map(|((_, tid), s)| {
            let share = (s.last_run_ns - s.first_run_ns?) as f64 / window_ns;
            let samples: u32 = s.on.iter().sum();
            (share >= BUSY_SHARE && samples > 0).then(|| {
                let on: Vec<String> =
                    s.on.iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(cpu, n)| format!("v{cpu} {}%", n * 100 / samples))
                        .collect();
                let line = format!(
                    "{}/{tid} {:.0}% of a core: {}",
                    s.name,
                    share * 100.0,
                    on.join(" ")
                );
                (share, line)
            })
        })
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    let lines: Vec<String> = busy.into_iter().map(|(_, l)| l).collect();
    format!(
        "placement (vCPU last run on, sampled): {}",
        lines.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vcpu_is_field_39_even_with_spaces_in_the_name() {
        let mut fields: Vec<String> = (3..=52).map(|f| f.to_string()).collect();
        fields[39 - 3] = "1".to_string();
        let stat = format!("1234 (tokio rt) {}", fields.join(" "));
        assert_eq!(parse_stat(&stat), Some(("tokio rt".to_string(), 1)));
    }

    #[test]
    fn the_summary_lists_busy_threads_busiest_first_with_their_vcpu_shares() {
        let mut seen = BTreeMap::new();
        let thread = |name: &str, run_ms: u64, on: Vec<u32>| Seen {
            name: name.to_string(),
            first_run_ns: Some(0),
            last_run_ns: run_ms * 1_000_000,
            on,
        };
        seen.insert(("self".into(), "1".into()), thread("idle", 1, vec![4]));
        seen.insert(
            ("self".into(), "2".into()),
            thread("follower", 400, vec![0, 4]),
        );
        seen.insert(
            ("self".into(), "3".into()),
            thread("leader", 900, vec![3, 1]),
        );
        let line = summary(&seen, Duration::from_secs(1));
        assert_eq!(
            line,
            "placement (vCPU last run on, sampled): leader/3 90% of a core: v0 75% v1 25%; \
             follower/2 40% of a core: v1 100%"
        );
    }
}
