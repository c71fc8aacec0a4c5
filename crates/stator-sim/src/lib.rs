//! stator's simulator: the planning crate's policies in a deterministic discrete-event
//! loop, compared with Kubernetes' defaults.
//!
//! # Layout
//! - [`scenario`]: scenario TOML and the Alibaba `openb` trace, read into a
//!   [`Scenario`](scenario::Scenario); the trace price model.
//! - [`engine`]: the event loop for one policy set ([`run_policy`]).
//! - [`report`]: JSON summary, CSV time series, SVG/PNG plots, `--compare` ratios.
//!
//! The `stator sim` command only parses flags into [`SimOptions`] and calls [`run`]
//! then [`print_report`].

pub mod engine;
pub mod report;
pub mod scenario;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

pub use engine::{run_policy, PolicySet, RunResult, Sample, Summary};
pub use report::{print_report, SimReport};
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
    /// `--policy stator|k8s-default` (default stator).
    pub policy: Option<String>,
    /// `--compare`: run both policy sets.
    pub compare: bool,
    /// `--out DIR`: CSV time series and plots.
    pub out: Option<PathBuf>,
    /// `--json`: the summary as one JSON object on the last line.
    pub json: bool,
    /// `--seed N` (default: the scenario's seed).
    pub seed: Option<u64>,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

/// Parses a policy name.
pub fn parse_policy(name: &str) -> Result<PolicySet, SimError> {
    match name {
        "stator" => Ok(PolicySet::Stator),
        "k8s-default" | "k8s" => Ok(PolicySet::K8sDefault),
        other => Err(SimError::Usage(format!(
            "unknown policy {other:?}; use stator or k8s-default"
        ))),
    }
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
    if opts.compare && opts.policy.is_some() {
        return Err(SimError::Usage(
            "--compare runs both policies; drop --policy".into(),
        ));
    }
    let sc = load_scenario(opts)?;
    let seed = opts.seed.unwrap_or(sc.seed);
    let policies = if opts.compare {
        vec![PolicySet::Stator, PolicySet::K8sDefault]
    } else {
        vec![parse_policy(opts.policy.as_deref().unwrap_or("stator"))?]
    };
    let mut runs = Vec::new();
    for p in policies {
        let bar = report::progress_bar(opts.progress, sc.duration_s, p.name());
        let result = run_policy(&sc, p, seed, &mut |t| {
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
    if let Some(dir) = &opts.out {
        report.write_out(dir)?;
    }
    Ok(report)
}
