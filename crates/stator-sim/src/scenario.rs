//! Inputs: scenario TOML files and the Alibaba `openb` trace, both turned into a
//! [`Scenario`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::SimError;
use stator_planning::{PoolSpec, Resources, MILLI_PER_GPU};

/// A simulation input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// Simulated time, seconds.
    pub duration_s: u64,
    /// Control period (autoscaler round, HPA sync, metrics sample), seconds.
    #[serde(default = "default_tick")]
    pub tick_s: u64,
    /// Consolidation period for stator, seconds.
    #[serde(default = "default_consolidate")]
    pub consolidate_every_s: u64,
    /// Seed used when the command line gives none.
    #[serde(default)]
    pub seed: u64,
    /// Node pools.
    pub pools: Vec<PoolConfig>,
    /// Replicated services with load curves.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Jobs/pods with arrival and departure times (the trace).
    #[serde(default)]
    pub tasks: Vec<TaskConfig>,
    /// Node failures.
    #[serde(default)]
    pub failures: FailureConfig,
    /// Network and protocol timings.
    #[serde(default)]
    pub timing: TimingConfig,
}

fn default_tick() -> u64 {
    15
}
fn default_consolidate() -> u64 {
    60
}

/// A node pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Millicores per node.
    pub cpu_millis: u64,
    /// MiB per node.
    pub memory_mib: u64,
    /// Milli-GPUs per node.
    #[serde(default)]
    pub gpu_milli: u64,
    /// GPU model label (`gpu.model`).
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// USD per node-hour.
    pub price_per_hour: f64,
    /// Seconds to boot.
    #[serde(default = "default_boot")]
    pub boot_delay_s: u64,
    /// Floor.
    #[serde(default)]
    pub min: u32,
    /// Ceiling.
    pub max: u32,
    /// Nodes at t = 0 (default: `min`).
    #[serde(default)]
    pub initial: Option<u32>,
    /// Zones.
    #[serde(default = "default_zones")]
    pub zones: Vec<String>,
}

fn default_boot() -> u64 {
    90
}
fn default_zones() -> Vec<String> {
    vec!["zone-a".into(), "zone-b".into(), "zone-c".into()]
}

impl PoolConfig {
    /// The planner's view of the pool.
    pub fn spec(&self) -> PoolSpec {
        let mut labels = BTreeMap::new();
        if let Some(m) = &self.gpu_model {
            labels.insert("gpu.model".to_string(), m.clone());
        }
        PoolSpec {
            name: self.name.clone(),
            capacity: Resources::with_gpu(self.cpu_millis, self.memory_mib, self.gpu_milli),
            price_per_hour: self.price_per_hour,
            boot_delay_s: self.boot_delay_s,
            min_nodes: self.min,
            max_nodes: self.max,
            zones: self.zones.clone(),
            labels,
        }
    }
}

/// A partitioned, replicated service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Replicas per partition (Raft group size).
    pub replicas: u32,
    /// CPU request per replica as deployed (the Kubernetes request; stator's start).
    pub cpu_millis: u64,
    /// Memory request per replica.
    pub memory_mib: u64,
    /// State per partition, MiB (copied on migration and on repair).
    #[serde(default = "default_state")]
    pub state_mib: u64,
    /// Latency objective.
    pub p99_latency_ms: f64,
    /// Mean service time of one request, ms (queueing model).
    #[serde(default = "default_service_time")]
    pub service_time_ms: f64,
    /// Load curve.
    pub load: LoadCurve,
    /// Spread of per-partition load: weights are drawn from `1 +- skew` (0 = even).
    #[serde(default)]
    pub skew: f64,
    /// HPA CPU target for the baselines (absent: `rho_slo - 0.12`, see docs/PLANNING.md).
    #[serde(default)]
    pub hpa_target: Option<f64>,
    /// Most replicas per partition the HPA may create (default 4 x replicas).
    #[serde(default)]
    pub hpa_max_replicas: Option<u32>,
}

fn default_state() -> u64 {
    64
}
fn default_service_time() -> f64 {
    1.0
}

/// CPU demand of one partition over time (all its replicas together), in millicores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LoadCurve {
    /// Flat.
    Constant {
        /// Millicores per partition.
        cpu_millis: u64,
    },
    /// A day: `peak` at `peak_hour`, `peak / peak_to_trough` twelve hours away,
    /// cosine in between, with +-`noise` multiplicative jitter per tick.
    Diurnal {
        /// Millicores per partition at the peak.
        peak_cpu_millis: u64,
        /// Peak over trough (5 for the MMO day).
        peak_to_trough: f64,
        /// Hour of the peak (0-24).
        #[serde(default = "default_peak_hour")]
        peak_hour: f64,
        /// Jitter fraction.
        #[serde(default)]
        noise: f64,
    },
}

fn default_peak_hour() -> f64 {
    20.0
}

impl LoadCurve {
    /// Demand at `t_s` before jitter.
    pub fn at(&self, t_s: f64) -> f64 {
        match *self {
            LoadCurve::Constant { cpu_millis } => cpu_millis as f64,
            LoadCurve::Diurnal {
                peak_cpu_millis,
                peak_to_trough,
                peak_hour,
                ..
            } => {
                let trough = 1.0 / peak_to_trough.max(1.0);
                let phase = (t_s / 3600.0 - peak_hour) / 24.0 * std::f64::consts::TAU;
                let shape = 0.5 + 0.5 * phase.cos(); // 1 at the peak, 0 twelve hours away
                peak_cpu_millis as f64 * (trough + (1.0 - trough) * shape)
            }
        }
    }
    /// Jitter fraction.
    pub fn noise(&self) -> f64 {
        match *self {
            LoadCurve::Constant { .. } => 0.0,
            LoadCurve::Diurnal { noise, .. } => noise,
        }
    }
}

/// One task of a trace: a pod with fixed requests living `[start_s, end_s)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Name.
    pub name: String,
    /// Requests: `{ cpu_millis, memory_mib, gpu_milli, gpu_count }`, a GPU share being
    /// `gpu_count` devices with `gpu_milli / gpu_count` of each (`gpu_count` may be
    /// left out: `ceil(gpu_milli / 1000)` devices).
    pub resources: Resources,
    /// Allowed GPU models (empty = any).
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Long-running (LS, Guaranteed, Burstable) or batch (BE).
    pub long_running: bool,
    /// Arrival.
    pub start_s: u64,
    /// Departure.
    pub end_s: u64,
}

/// Node failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FailureConfig {
    /// Mean time between failures of one node, hours (0 = no failures).
    #[serde(default)]
    pub node_mtbf_h: f64,
}

/// Network and protocol timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    /// Bandwidth for copying state (migration, repair), MiB/s.
    #[serde(default = "default_bw")]
    pub copy_mib_per_s: f64,
    /// Raft election timeout: unavailability after losing a leader, ms.
    #[serde(default = "default_election")]
    pub election_timeout_ms: u64,
    /// Failure detection in stator (missed heartbeats), s.
    #[serde(default = "default_detect")]
    pub detect_s: u64,
    /// Container/pod start time, s.
    #[serde(default = "default_start")]
    pub start_s: u64,
}

fn default_bw() -> f64 {
    100.0
}
fn default_election() -> u64 {
    1000
}
fn default_detect() -> u64 {
    2
}
fn default_start() -> u64 {
    5
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            copy_mib_per_s: default_bw(),
            election_timeout_ms: default_election(),
            detect_s: default_detect(),
            start_s: default_start(),
        }
    }
}

impl Scenario {
    /// Reads a scenario TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::Io(path.display().to_string(), e))?;
        Scenario::from_toml_str(&text).map_err(|e| match e {
            SimError::Scenario(m) => SimError::Scenario(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The part of a trace scenario between `from_s` and `to_s`: tasks that live in
    /// the window, clipped to it, with times shifted so the window starts at 0 (tasks
    /// running when it opens start at 0). For tests that need a slice of a long trace.
    pub fn window(&self, from_s: u64, to_s: u64) -> Result<Scenario, SimError> {
        if to_s <= from_s {
            return Err(SimError::Usage(format!(
                "window {from_s}..{to_s}: the end must come after the start"
            )));
        }
        let tasks = self
            .tasks
            .iter()
            .filter(|t| t.start_s < to_s && t.end_s > from_s)
            .map(|t| TaskConfig {
                start_s: t.start_s.max(from_s) - from_s,
                end_s: t.end_s.min(to_s) - from_s,
                ..t.clone()
            })
            .collect();
        Ok(Scenario {
            duration_s: to_s - from_s,
            tasks,
            ..self.clone()
        })
    }

    /// Reads a scenario from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Scenario, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Scenario(m));
        if self.pools.is_empty() {
            return bad("no pools: add at least one [[pools]]".into());
        }
        if self.tick_s == 0 || self.duration_s == 0 {
            return bad("tick_s and duration_s must be > 0".into());
        }
        for p in &self.pools {
            if p.zones.is_empty() || p.max == 0 || p.cpu_millis == 0 {
                return bad(format!(
                    "pool {}: needs zones, max > 0 and cpu_millis > 0",
                    p.name
                ));
            }
        }
        for t in &self.tasks {
            if let Some((n, each)) = t.resources.gpu_shape() {
                if each > MILLI_PER_GPU {
                    return bad(format!(
                        "task {}: gpu_milli {} over gpu_count {} is {each} milli-GPUs per \
                         device, more than one GPU ({MILLI_PER_GPU}): raise gpu_count so \
                         each device gets at most {MILLI_PER_GPU}",
                        t.name, t.resources.gpu_milli, n
                    ));
                }
                if !self
                    .pools
                    .iter()
                    .any(|p| t.resources.gpu_fits_capacity(&p.spec().capacity))
                {
                    return bad(format!(
                        "task {}: asks for {n} GPU devices; no pool has that many per \
                         node: add a pool with gpu_milli >= {}",
                        t.name,
                        n as u64 * MILLI_PER_GPU
                    ));
                }
            }
        }
        for s in &self.services {
            if s.replicas == 0 || s.partitions == 0 {
                return bad(format!(
                    "service {}: partitions and replicas must be > 0",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

/// The price model for trace nodes (the trace has none): on-demand list prices of the
/// kind public clouds charge — USD 0.04 per vCPU-hour, 0.005 per GiB-hour, plus a
/// per-GPU hourly price by model.
pub fn trace_node_price(cpu_millis: u64, memory_mib: u64, gpus: u64, model: &str) -> f64 {
    let gpu_price = match model {
        "" => 0.0,
        "T4" => 0.35,
        "P100" => 1.46,
        "V100M16" => 2.48,
        "V100M32" => 2.98,
        "A10" => 1.10,
        "G2" => 0.80,
        "G3" => 1.20,
        _ => 1.00,
    };
    cpu_millis as f64 / 1000.0 * 0.04 + memory_mib as f64 / 1024.0 * 0.005 + gpus as f64 * gpu_price
}

/// Reads the openb node list and pod list into a scenario: one pool per node shape
/// (at most as many nodes as listed of that shape, none at start, 60 s boot), one task
/// per pod.
pub fn from_openb_trace(nodes_csv: &Path, pods_csv: &Path) -> Result<Scenario, SimError> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| SimError::Io(p.display().to_string(), e));
    let nodes = read(nodes_csv)?;
    let pods = read(pods_csv)?;
    let mut shapes: BTreeMap<(u64, u64, u64, String), u32> = BTreeMap::new();
    for (i, line) in nodes.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            return Err(SimError::Trace(format!(
                "{}:{}: expected 5 columns sn,cpu_milli,memory_mib,gpu,model",
                nodes_csv.display(),
                i + 1
            )));
        }
        let num = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                SimError::Trace(format!(
                    "{}:{}: bad number {s:?}",
                    nodes_csv.display(),
                    i + 1
                ))
            })
        };
        *shapes
            .entry((num(f[1])?, num(f[2])?, num(f[3])?, f[4].trim().to_string()))
            .or_insert(0) += 1;
    }
    let pools: Vec<PoolConfig> = shapes
        .into_iter()
        .map(|((cpu, mem, gpu, model), count)| PoolConfig {
            name: if model.is_empty() {
                format!("cpu-{}c-{}g", cpu / 1000, mem / 1024)
            } else {
                format!("{}x{}-{}c-{}g", gpu, model, cpu / 1000, mem / 1024)
            },
            cpu_millis: cpu,
            memory_mib: mem,
            gpu_milli: gpu * 1000,
            gpu_model: (!model.is_empty()).then(|| model.clone()),
            price_per_hour: trace_node_price(cpu, mem, gpu, &model),
            boot_delay_s: 60,
            min: 0,
            max: count,
            initial: Some(0),
            zones: default_zones(),
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, line) in pods.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 11 {
            return Err(SimError::Trace(format!(
                "{}:{}: expected 11 columns",
                pods_csv.display(),
                i + 1
            )));
        }
        let num = |s: &str| -> Result<u64, SimError> {
            if s.trim().is_empty() {
                return Ok(0);
            }
            s.trim().parse::<u64>().map_err(|_| {
                SimError::Trace(format!(
                    "{}:{}: bad number {s:?}",
                    pods_csv.display(),
                    i + 1
                ))
            })
        };
        let (start, end) = (num(f[8])?, num(f[9])?);
        if end <= start {
            continue;
        }
        tasks.push(TaskConfig {
            name: f[0].to_string(),
            // `num_gpu` devices with `gpu_milli` of each: a fraction of one shared
            // device when num_gpu = 1 and gpu_milli < 1000, whole devices otherwise.
            resources: Resources::with_gpus(num(f[1])?, num(f[2])?, num(f[3])? as u32, num(f[4])?),
            gpu_models: f[5]
                .split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            long_running: f[6].trim() != "BE",
            start_s: start,
            end_s: end,
        });
    }
    let duration_s = tasks.iter().map(|t| t.end_s).max().unwrap_or(1);
    Ok(Scenario {
        name: "alibaba-openb".into(),
        duration_s,
        tick_s: 60,
        consolidate_every_s: 300,
        seed: 0,
        pools,
        services: Vec::new(),
        tasks,
        failures: FailureConfig::default(),
        timing: TimingConfig::default(),
    })
}
