//! stator's simulator: the planning crate's policies in a deterministic discrete-event
//! loop, compared with Kubernetes' defaults.
//!
//! # Layout
//! - [`scenario`]: scenario TOML and the Alibaba `openb` trace, read into a
//!   [`Scenario`](scenario::Scenario); the trace price model. A task's GPU request is
//!   `gpu_count` devices with `gpu_milli / gpu_count` of each (the trace's `num_gpu`
//!   and `gpu_milli`), fitted device by device by every policy; a share above one GPU
//!   per device, or more devices than any pool's node has, is refused at load.
//! - [`breakdown`]: each tick's cost split by phase of the day and by cause (used,
//!   headroom, memory-bound, fragmentation, empty, booting, ...).
//! - [`engine`]: the event loop for one policy set ([`run_policy`]); what each set
//!   decides (scheduler scoring, node pools, the control period, failover, warm
//!   spares) sits behind one trait in `engine/policies.rs`, an impl per set (stator,
//!   k8s-default, k8s-tuned), so the loop has no branch on the set.
//! - [`report`]: JSON summary, CSV time series, SVG/PNG plots, `--compare` ratios.
//!
//! The `stator sim` command only parses flags into [`SimOptions`] and calls
//! [`run_and_report`] (one seed: [`run`] then [`print_report`]; several seeds
//! (`--seeds 1..5`): [`run_seeds`] then [`print_seeds_report`], medians and ranges).

pub mod breakdown;
pub mod engine;
pub mod report;
pub mod scenario;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

pub use engine::{run_policy, PolicySet, RunResult, Sample, Summary};
pub use report::{print_report, print_seeds_report, SeedsReport, SimReport};
pub use scenario::Scenario;

/// Errors of the simulator.
#[derive(Debug, Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The scenario is malformed.
    #[error("scenario: {0}")]
    Scenario(String),
    /// The trace is malformed.
    #[error("trace: {0}")]
    Trace(String),
    /// Flags that do not go together.
    #[error("usage: {0}")]
    Usage(String),
    /// A plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
}

/// What `stator sim` was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimOptions {
    /// `--scenario FILE`.
    pub scenario: Option<PathBuf>,
    /// `--trace-nodes CSV`.
    pub trace_nodes: Option<PathBuf>,
    /// `--trace-pods CSV`.
    pub trace_pods: Option<PathBuf>,
    /// `--policy stator|k8s-default|k8s-tuned` (default stator).
    pub policy: Option<String>,
    /// `--compare`: run stator and every baseline.
    pub compare: bool,
    /// `--out DIR`: CSV time series and plots.
    pub out: Option<PathBuf>,
    /// `--json`: the summary as one JSON object on the last line.
    pub json: bool,
    /// `--seed N` (default: the scenario's seed).
    pub seed: Option<u64>,
    /// `--seeds 1..5` (inclusive) or `1,2,7`: one run per seed, with medians and
    /// ranges (see [`parse_seeds`]). Empty: one run with `seed`.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

/// Most seeds one `--seeds` run takes (each seed runs every policy once).
pub const MAX_SEEDS: usize = 100;

/// Every policy set `--compare` runs: stator first, then the baselines.
pub const COMPARED_POLICIES: [PolicySet; 3] = [
    PolicySet::Stator,
    PolicySet::K8sDefault,
    PolicySet::K8sTuned,
];

/// Parses a policy name.
pub fn parse_policy(name: &str) -> Result<PolicySet, SimError> {
    match name {
        "stator" => Ok(PolicySet::Stator),
        "k8s-default" | "k8s" => Ok(PolicySet::K8sDefault),
        "k8s-tuned" => Ok(PolicySet::K8sTuned),
        other => Err(SimError::Usage(format!(
            "unknown policy {other:?}; use stator, k8s-default or k8s-tuned"
        ))),
    }
}

/// Parses `--seeds`: `A..B` (both ends included) or a comma list `1,2,7`.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, SimError> {
    let bad = || {
        SimError::Usage(format!(
            "--seeds {text:?}: give a range such as 1..5 (both ends included) or a list such as 1,2,7"
        ))
    };
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let seeds: Vec<u64> = if let Some((a, b)) = text.split_once("..") {
        let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
        if b < a {
            return Err(bad());
        }
        if b - a >= MAX_SEEDS as u64 {
            return Err(SimError::Usage(format!(
                "--seeds {text}: at most {MAX_SEEDS} seeds per run"
            )));
        }
        (a..=b).collect()
    } else {
        text.split(',').map(num).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() || seeds.len() > MAX_SEEDS {
        return Err(bad());
    }
    Ok(seeds)
}

/// Loads the input named by the options.
pub fn load_scenario(opts: &SimOptions) -> Result<Scenario, SimError> {
    match (&opts.scenario, &opts.trace_nodes, &opts.trace_pods) {
        (Some(path), None, None) => Scenario::from_toml_file(path),
        (None, Some(nodes), Some(pods)) => scenario::from_openb_trace(nodes, pods),
        _ => Err(SimError::Usage(
            "give either --scenario FILE or both --trace-nodes CSV and --trace-pods CSV".into(),
        )),
    }
}

/// Runs the simulation(s) the options ask for, writing `--out` files if asked.
pub fn run(opts: &SimOptions) -> Result<SimReport, SimError> {
    let sc = load_scenario(opts)?;
    let seed = opts.seed.unwrap_or(sc.seed);
    run_scenario(&sc, opts, seed, opts.out.as_deref())
}

/// Runs every seed of `opts.seeds` (each as [`run`] with that seed); `--out DIR` gets a
/// `seed-N` directory per seed.
pub fn run_seeds(opts: &SimOptions) -> Result<SeedsReport, SimError> {
    if opts.seeds.is_empty() {
        return Err(SimError::Usage(
            "no seeds: give --seeds 1..5 or a list 1,2,7".into(),
        ));
    }
    if opts.seed.is_some() {
        return Err(SimError::Usage(
            "--seed and --seeds do not go together; keep one".into(),
        ));
    }
    let sc = load_scenario(opts)?;
    let mut reports = Vec::new();
    for &seed in &opts.seeds {
        let out = opts.out.as_ref().map(|d| d.join(format!("seed-{seed}")));
        reports.push(run_scenario(&sc, opts, seed, out.as_deref())?);
    }
    Ok(SeedsReport::new(&sc.name, reports))
}

/// What `stator sim` does: one seed or several, printed (JSON last with `json`).
pub fn run_and_report(opts: &SimOptions) -> Result<(), SimError> {
    if opts.seeds.is_empty() {
        let report = run(opts)?;
        print_report(&report, opts.json);
    } else {
        let report = run_seeds(opts)?;
        print_seeds_report(&report, opts.json);
    }
    Ok(())
}

fn run_scenario(
    sc: &Scenario,
    opts: &SimOptions,
    seed: u64,
    out: Option<&std::path::Path>,
) -> Result<SimReport, SimError> {
    if opts.compare && opts.policy.is_some() {
        return Err(SimError::Usage(
            "--compare runs every policy; drop --policy".into(),
        ));
    }
    let policies = if opts.compare {
        COMPARED_POLICIES.to_vec()
    } else {
        vec![parse_policy(opts.policy.as_deref().unwrap_or("stator"))?]
    };
    let mut runs = Vec::new();
    for p in policies {
        let bar = report::progress_bar(opts.progress, sc.duration_s, p.name());
        let result = run_policy(sc, p, seed, &mut |t| {
            if let Some(b) = &bar {
                b.set_position(t);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        runs.push(result);
    }
    let report = SimReport::new(&sc.name, seed, runs);
    if let Some(dir) = out {
        report.write_out(dir)?;
    }
    Ok(report)
}
