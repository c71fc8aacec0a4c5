//! `stator bench`: benchmarks that run their baselines in the same run.
//!
//! - [`replication`]: write latency and throughput of a partition group against etcd
//!   (one consensus write per request, as DORADO orders requests) and Redis with `WAIT`.
//! - [`failover`]: client-observed unavailability, new leader and replication factor
//!   restored after a SIGKILLed node under `stator up`, beside an etcd leader kill.
//! - [`idle`]: 1,000 idle partitions on real agents under `stator up`: time until every
//!   partition has a leader, idle CPU and RSS per agent, writes back after a SIGKILL.
//! - [`migration`]: a live replica move under steady writes, beside stop-and-copy.
//! - [`restart`]: a member holding N MiB restarted from its own disk, beside the same
//!   member started empty (a full copy), in one run.
//! - [`timeline`]: the migration benchmark's timeline: phases, runtime stalls per host,
//!   and episodes of slow writes.
//! - `up` (private): the `stator up` cluster the failover and idle benchmarks run.
//! - `hosts` (private): in-process replication hosts on their own threads and runtimes,
//!   for the replication and migration benchmarks.
//! - Paced load (latency from the scheduled time, missed ticks counted) is
//!   `stator_harness::pace`, shared by the failover and migration benchmarks and chaos.
//! - etcd and Redis are started and driven by `stator_harness::servers`.
//! - [`latency`]: latency histograms and the JSON run record.
//! - `placement` (private): which vCPU each busy thread ran on during a run
//!   (`STATOR_BENCH_PLACEMENT=1`), the 1-client figure's mode on a 2-vCPU machine.
//! - [`figures`]: milliseconds, median and maximum, and baseline-over-stator ratios, as
//!   every benchmark reports them.

pub mod failover;
pub mod figures;
mod hosts;
pub mod idle;
pub mod latency;
pub mod migration;
mod placement;
pub mod replication;
pub mod restart;
pub mod threadstat;
pub mod timeline;
mod up;

pub use stator_harness::{free_port, installed};

/// Prints a table on stderr and, with `json`, the DESIGN-format object on stdout's last
/// line, with each baseline's p50 and throughput as a ratio to stator's at the same load.
pub fn print_runs(runs: &[latency::Run], json: bool) {
    eprintln!(
        "{:<11} {:>8} {:>7} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "system", "replicas", "clients", "p50_us", "p99_us", "p999_us", "ops/s", "cpu_us/op"
    );
    for r in runs {
        match &r.skipped {
            Some(why) => eprintln!(
                "{:<11} {:>8} {:>7} skipped: {why}",
                r.system, r.replicas, r.clients
            ),
            None => eprintln!(
                "{:<11} {:>8} {:>7} {:>9} {:>9} {:>9} {:>12.0} {:>10}",
                r.system,
                r.replicas,
                r.clients,
                r.p50_us.unwrap_or(0),
                r.p99_us.unwrap_or(0),
                r.p999_us.unwrap_or(0),
                r.ops_per_sec.unwrap_or(0.0),
                r.cpu_us_per_op.map_or("-".into(), |c| format!("{c:.1}")),
            ),
        }
    }
    // Each baseline against `stator` at the same client count (key `<baseline>_clients_N`),
    // and against `stator-shared` where it ran (key `stator-shared_over_<baseline>_clients_N`).
    let mut ratios = serde_json::Map::new();
    let measured = |system: &str, clients: usize| {
        runs.iter()
            .find(|s| s.system == system && s.clients == clients && s.skipped.is_none())
    };
    for r in runs
        .iter()
        .filter(|r| r.system != "stator" && r.system != replication::SHARED)
        .filter(|r| r.skipped.is_none())
    {
        for (ours, prefix) in [
            ("stator", String::new()),
            (
                replication::SHARED,
                format!("{}_over_", replication::SHARED),
            ),
        ] {
            if let Some(s) = measured(ours, r.clients) {
                let key = format!("{prefix}{}_clients_{}", r.system, r.clients);
                let mut ratio = serde_json::json!({
                    "p50_baseline_over_stator": r.p50_us.unwrap_or(0) as f64 / s.p50_us.unwrap_or(1).max(1) as f64,
                    "ops_stator_over_baseline": s.ops_per_sec.unwrap_or(0.0) / r.ops_per_sec.unwrap_or(1.0).max(1e-9),
                });
                // CPU per request, the baseline's over stator's: above 1, stator does a
                // request with less CPU (the figure a loaded machine disturbs least).
                if let (Some(theirs), Some(ours)) = (r.cpu_us_per_op, s.cpu_us_per_op) {
                    ratio["cpu_baseline_over_stator"] = serde_json::json!(theirs / ours.max(1e-9));
                }
                ratios.insert(key, ratio);
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "runs": runs, "ratios": ratios }));
    }
}
