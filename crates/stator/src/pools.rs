//! Local nodes for `stator up`: how an agent process is started, the pools file of
//! `--pools FILE`, and the `local` node provider that runs each node of a pool as a
//! `stator agent` child process.
//!
//! The provider shares `up`'s [`Supervisor`], which restarts an agent that died (a
//! rebooting machine) and stops them all at the end; a released agent leaves the
//! supervisor first, so it is not started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Deserialize;
use stator_api::spec::NodePoolSpec;
use stator_harness::supervisor::{self, ProcessSpec, Supervisor};
use stator_server::autoscale::AutoscaleConfig;
use stator_server::provider::{NodeProvider, ProviderError};

/// Time a released agent gets between SIGTERM and SIGKILL: it hosts nothing, so it
/// only has to say goodbye.
pub const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The pools file: `[[pool]]` tables (name, cpu, memory, price_per_hour, boot_delay_s,
/// min, max) and an optional `[autoscale]` table of tunables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolsFile {
    pool: Vec<NodePoolSpec>,
    #[serde(default)]
    autoscale: Tunables,
}

/// `[autoscale]`: every field optional, defaults from `stator_server::autoscale`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tunables {
    interval_ms: Option<u64>,
    scale_down_window_s: Option<u64>,
    empty_node_s: Option<u64>,
    disruption_budget: Option<usize>,
    cpu_micros_per_op: Option<u64>,
}

/// Reads and checks a pools file; `zones` are where local nodes may go.
pub fn read_pools_file(path: &Path, zones: &[&str]) -> anyhow::Result<AutoscaleConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--pools: cannot read {}", path.display()))?;
    parse_pools(&text, zones).with_context(|| format!("--pools {}", path.display()))
}

fn parse_pools(text: &str, zones: &[&str]) -> anyhow::Result<AutoscaleConfig> {
    let file: PoolsFile = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{} (expected [[pool]] tables with name, cpu, memory, price_per_hour, min, max)",
            e.message().trim()
        )
    })?;
    anyhow::ensure!(!file.pool.is_empty(), "no [[pool]] given");
    let mut seen = std::collections::BTreeSet::new();
    for pool in &file.pool {
        pool.validate()
            .map_err(|e| anyhow::anyhow!("pool {}: {e}", pool.name))?;
        anyhow::ensure!(
            seen.insert(pool.name.clone()),
            "pool {} is given twice; pool names must be unique",
            pool.name
        );
    }
    let mut config = AutoscaleConfig::new(file.pool);
    config.zones = zones.iter().map(|z| z.to_string()).collect();
    let t = file.autoscale;
    if let Some(v) = t.interval_ms {
        anyhow::ensure!(v >= 100, "autoscale.interval_ms: at least 100, got {v}");
        config.interval_ms = v;
    }
    if let Some(v) = t.scale_down_window_s {
        config.scale_down_window_s = v;
    }
    if let Some(v) = t.empty_node_s {
        config.empty_node_s = v;
    }
    if let Some(v) = t.disruption_budget {
        anyhow::ensure!(v >= 1, "autoscale.disruption_budget: at least 1, got {v}");
        config.disruption_budget = v;
    }
    if let Some(v) = t.cpu_micros_per_op {
        anyhow::ensure!(v >= 1, "autoscale.cpu_micros_per_op: at least 1, got {v}");
        config.cpu_micros_per_op = v;
    }
    Ok(config)
}

/// What one agent is started with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Pool.
    pub pool: String,
    /// CPU offered, millicores.
    pub cpu_millis: u64,
    /// Memory offered, MiB.
    pub memory_mib: u64,
    /// USD per hour.
    pub price_per_hour: f64,
}

/// How `stator agent` runs as a child of `up`: logging to
/// `DATA_DIR/agents/<name>/agent.log`, its pid in `DATA_DIR/agents/<name>/pid` (scripts,
/// benchmarks and the README tour find the agent to kill there), started again
/// [`stator_harness::AGENT_RESTART_DELAY`] after it dies, as a new member.
pub fn agent_process(launch: &Launch, spec: &AgentSpec) -> anyhow::Result<ProcessSpec> {
    let dir = launch.data_dir.join("agents").join(&spec.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut args: Vec<String> = vec!["agent".into(), "--server".into(), launch.server.clone()];
    args.push("--join-token-file".into());
    args.push(launch.token_file.display().to_string());
    for (flag, value) in [
        ("--name", spec.name.clone()),
        ("--zone", spec.zone.clone()),
        ("--pool", spec.pool.clone()),
        ("--cpu-millis", spec.cpu_millis.to_string()),
        ("--memory-mib", spec.memory_mib.to_string()),
        ("--price-per-hour", spec.price_per_hour.to_string()),
        ("--data-dir", dir.display().to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if let Some(threads) = launch.agent_worker_threads {
        args.push("--worker-threads".into());
        args.push(threads.to_string());
    }
    if let Some(rate) = launch.learner_catchup_mib_per_sec {
        args.push("--learner-catchup-mib-per-sec".into());
        args.push(rate.to_string());
    }
    Ok(ProcessSpec {
        name: spec.name.clone(),
        program: launch.exe.clone(),
        args,
        log: dir.join("agent.log"),
        pid_file: Some(dir.join("pid")),
        env: Vec::new(),
        restart_delay: stator_harness::AGENT_RESTART_DELAY,
    })
}

/// Where a local agent dials and writes its files.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `stator` binary.
    pub exe: PathBuf,
    /// `up`'s data directory (agents under `agents/<name>`).
    pub data_dir: PathBuf,
    /// Server URL.
    pub server: String,
    /// Join token file.
    pub token_file: PathBuf,
    /// `--worker-threads` of each agent (none: the agent's default, one per core).
    pub agent_worker_threads: Option<usize>,
    /// `--learner-catchup-mib-per-sec` of each agent (none: the agent's default).
    pub learner_catchup_mib_per_sec: Option<u64>,
}

/// Runtime threads for each of `agents` local agents sharing `cores`: its share of the
/// cores, at least one. With three agents on two cores, the agents' default runtimes (two
/// threads each) made six threads wake each other for every replicated write; one each
/// took 15-25 % off a 1-client SET's p50 on the loaded 2-core test machine
/// (docs/BENCHMARKS.md, session 12).
pub fn local_agent_worker_threads(cores: usize, agents: usize) -> usize {
    (cores / agents.max(1)).max(1)
}

/// Runtime threads of `stator up` itself (the control plane and the gateway) beside
/// `agents` local agents on `cores`: one process more sharing the cores, at least one
/// thread. With the default of one thread per core, `up`'s two workers on the 2-core
/// test machine woke each other for every command the gateway forwarded (2 futex calls
/// and 3.8-4.5 context switches per 1-client SET in `up`, against 0.05 and 2.4-3.1 with
/// one thread), and `up`'s CPU per pipelined SET and GET was higher in every pair
/// measured (docs/BENCHMARKS.md, session 14, branch i14g).
pub fn local_up_worker_threads(cores: usize, agents: usize) -> usize {
    (cores / (agents + 1)).max(1)
}

/// The `local` provider: a node is a `stator agent` child process on this machine,
/// registered with its pool's name, CPU, memory and price.
pub struct LocalProvider {
    agents: Supervisor,
    /// Set once the server listens.
    launch: std::sync::OnceLock<Launch>,
    /// Next number per pool for node names (`<pool>-<n>`).
    next_number: Mutex<BTreeMap<String, u32>>,
}

impl LocalProvider {
    /// A provider adding to `agents`; it starts nothing before [`Self::set_launch`].
    pub fn new(agents: Supervisor) -> Self {
        LocalProvider {
            agents,
            launch: std::sync::OnceLock::new(),
            next_number: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where agents dial and keep their files (known once the server listens).
    pub fn set_launch(&self, launch: Launch) {
        // Set once by `up`; a second call would be a bug in `up`.
        assert!(self.launch.set(launch).is_ok(), "launch set twice");
    }

    /// Starts one agent of `pool` in `zone` now; returns its name.
    pub fn start(&self, pool: &NodePoolSpec, zone: &str) -> anyhow::Result<String> {
        let launch = self
            .launch
            .get()
            .context("the local provider is not started yet (the server is still starting); retried next round")?;
        let number = {
            let mut next = self
                .next_number
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = next.entry(pool.name.clone()).or_insert(1);
            let number = *n;
            *n += 1;
            number
        };
        let spec = AgentSpec {
            name: format!("{}-{number}", pool.name),
            zone: zone.to_string(),
            pool: pool.name.clone(),
            cpu_millis: pool.cpu.0,
            memory_mib: pool.memory.0,
            price_per_hour: pool.price_per_hour,
        };
        self.agents.start(agent_process(launch, &spec)?)?;
        Ok(spec.name)
    }
}

#[async_trait]
impl NodeProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn provision(&self, pool: &NodePoolSpec, zone: &str) -> Result<String, ProviderError> {
        // A real pool takes boot_delay_s to deliver a machine; so does this one.
        tokio::time::sleep(Duration::from_secs(pool.boot_delay_s)).await;
        self.start(pool, zone).map_err(|e| ProviderError::Failed {
            action: format!("provision pool {}", pool.name),
            detail: format!("{e:#}; see the agent log under the data directory's agents/"),
        })
    }

    async fn release(&self, _pool: &str, name: &str) -> Result<(), ProviderError> {
        // Not supervised (released before): nothing left to do.
        let Some(child) = self.agents.remove(name) else {
            return Ok(());
        };
        if let Some(mut child) = child {
            supervisor::terminate(&mut child, RELEASE_GRACE).await;
        }
        eprintln!("node {name} released: its agent is stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_agents_share_the_cores_and_get_at_least_one_thread_each() {
        assert_eq!(local_agent_worker_threads(2, 3), 1);
        assert_eq!(local_agent_worker_threads(16, 3), 5);
        assert_eq!(local_agent_worker_threads(8, 1), 8);
        assert_eq!(local_agent_worker_threads(1, 0), 1);
    }

    #[test]
    fn up_shares_the_cores_with_its_agents_and_gets_at_least_one_thread() {
        assert_eq!(local_up_worker_threads(2, 3), 1);
        assert_eq!(local_up_worker_threads(16, 3), 4);
        assert_eq!(local_up_worker_threads(8, 1), 4);
        assert_eq!(local_up_worker_threads(1, 0), 1);
    }

    #[test]
    fn a_local_agent_is_started_with_its_share_of_the_cores() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            exe: "stator".into(),
            data_dir: dir.path().to_path_buf(),
            server: "http://127.0.0.1:1".into(),
            token_file: dir.path().join("token"),
            agent_worker_threads: Some(2),
            learner_catchup_mib_per_sec: None,
        };
        let spec = AgentSpec {
            name: "node-1".into(),
            zone: "zone-a".into(),
            pool: "default".into(),
            cpu_millis: 1000,
            memory_mib: 1024,
            price_per_hour: 0.0,
        };
        let args = agent_process(&launch, &spec).unwrap().args;
        let at = args.iter().position(|a| a == "--worker-threads").unwrap();
        assert_eq!(args[at + 1], "2");
        let none = Launch {
            agent_worker_threads: None,
            ..launch
        };
        let args = agent_process(&none, &spec).unwrap().args;
        assert!(!args.iter().any(|a| a == "--worker-threads"));
    }

    #[test]
    fn reads_pools_and_tunables() {
        let config = parse_pools(
            "[[pool]]\nname = \"small\"\ncpu = \"1\"\nmemory = \"2Gi\"\nprice_per_hour = 0.05\nmin = 3\nmax = 4\n\n[autoscale]\ninterval_ms = 1000\nempty_node_s = 3\n",
            &["zone-a", "zone-b"],
        )
        .unwrap();
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].cpu.0, 1000);
        assert_eq!(config.interval_ms, 1000);
        assert_eq!(config.empty_node_s, 3);
        assert_eq!(config.zones, vec!["zone-a", "zone-b"]);
    }

    #[test]
    fn the_example_pools_file_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pools.toml");
        let config = read_pools_file(&path, &["zone-a"]).unwrap();
        assert_eq!(config.pools[0].name, "small");
        assert!(config.pools[0].min <= config.pools[0].max);
    }

    #[test]
    fn bad_pools_name_the_problem() {
        let error = parse_pools("[[pool]]\nname = \"small\"\ncpu = \"1\"\nmemory = \"2Gi\"\nprice_per_hour = 0.05\nmin = 5\nmax = 4\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("min"), "{error:#}");
        let error = parse_pools("[autoscale]\ninterval_ms = 1000\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("pool"), "{error:#}");
    }
}
