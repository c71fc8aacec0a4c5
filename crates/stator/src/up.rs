//! `stator up`: a whole cluster on this machine. The server and gateway run in this
//! process; agents run as child processes of the same binary, so `kill -9` of one is a
//! real node failure. A dead agent is started again after a pause, as a machine that
//! reboots: it rejoins as a new member, since its in-memory replicas died with it.
//!
//! With `--pools FILE` the nodes are the pools' `min` nodes, started through the
//! `local` node provider (`pools.rs`), and the server's autoscaler adds and releases
//! agents of those pools through the same provider and the same [`Supervisor`].
//!
//! [`run`] goes through its phases in order: [`start_server`], [`start_gateway`],
//! [`start_agents`], waits for the nodes to be ready, applies the specs, prints
//! [`print_welcome`] and supervises until a signal, then [`stop`]s.

use crate::pools::{self, agent_process, AgentSpec, Launch, LocalProvider};
use anyhow::Context as _;
use stator_client::context::{self, Context};
use stator_client::Api;
use stator_harness::supervisor::Supervisor;
use stator_server::autoscale::AutoscaleConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Zones agents are spread over, round-robin, so `spread = "zone"` has three domains.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// CPU each agent offers without `--pools` (the agent's own default).
const DEFAULT_AGENT_CPU_MILLIS: u64 = 4_000;
/// Memory each agent offers without `--pools` (the agent's own default).
const DEFAULT_AGENT_MEMORY_MIB: u64 = 8_192;
/// Time allowed for every agent to register after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an agent gets between SIGTERM and SIGKILL when `up` stops.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of `stator up`.
pub struct UpOptions {
    /// Where the store, tokens, logs and context live.
    pub data_dir: PathBuf,
    /// Agents to start.
    pub nodes: usize,
    /// API listen address.
    pub api: String,
    /// Gateway HTTP listen address.
    pub gateway_http: String,
    /// Specs to apply once the cluster is ready.
    pub apply: Vec<PathBuf>,
    /// Heartbeat grace after which a silent node is lost, in ms.
    pub node_grace_ms: u64,
    /// A pools file: start the pools' `min` nodes (instead of `nodes`) and let the
    /// autoscaler grow and shrink them.
    pub pools: Option<PathBuf>,
    /// Each local agent's `--learner-catchup-mib-per-sec`.
    pub learner_catchup_mib_per_sec: u64,
}

/// What runs once the server and gateway are up.
struct Running {
    data_dir: PathBuf,
    server: stator_server::ServerHandle,
    gateway: stator_gateway::GatewayHandle,
    gateway_url: Option<String>,
    context_path: PathBuf,
    agents: Supervisor,
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let pool_config = match &opts.pools {
        Some(path) => Some(pools::read_pools_file(path, &ZONES)?),
        None => None,
    };
    let agents = Supervisor::new("up");
    // The provider learns where agents dial once the server listens.
    let provider = Arc::new(LocalProvider::new(agents.clone()));
    let server = start_server(&opts, &data_dir, pool_config.as_ref(), &provider).await?;
    let launch = Launch {
        exe: std::env::current_exe()?,
        data_dir: data_dir.clone(),
        server: server.url(),
        token_file: data_dir
            .join("server")
            .join(stator_server::config::JOIN_TOKEN_FILE),
        agent_worker_threads: Some(pools::local_agent_worker_threads(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            local_agents(&opts, pool_config.as_ref()),
        )),
        learner_catchup_mib_per_sec: Some(opts.learner_catchup_mib_per_sec),
    };
    provider.set_launch(launch.clone());
    let (gateway, gateway_url) = start_gateway(&opts, &server).await?;
    let context_path = data_dir.join("context");
    context::write(
        &context_path,
        &Context {
            server: server.url(),
            token: server.api_token().to_string(),
            gateway_http: gateway_url.clone(),
        },
    )?;
    let running = Running {
        data_dir,
        server,
        gateway,
        gateway_url,
        context_path,
        agents,
    };

    let expected_nodes = start_agents(&opts, pool_config.as_ref(), &provider, &launch, &running)?;
    let api = Api::new(&Context {
        server: running.server.url(),
        token: running.server.api_token().to_string(),
        gateway_http: None,
    })?;
    api.wait_for_ready_nodes(expected_nodes, READY_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "agents did not register; see {}/agents/*/agent.log",
                running.data_dir.display()
            )
        })?;
    for spec in &opts.apply {
        crate::commands::apply(&api, spec).await?;
    }
    print_welcome(&opts, pool_config.as_ref(), expected_nodes, &running);

    let supervisor = tokio::spawn(running.agents.clone().run());
    stator_harness::shutdown_signal().await;
    supervisor.abort();
    stop(running).await
}

/// Starts the server on the embedded store in `DATA_DIR/server`, with the autoscaler
/// and the local provider when there are pools.
async fn start_server(
    opts: &UpOptions,
    data_dir: &Path,
    pool_config: Option<&AutoscaleConfig>,
    provider: &Arc<LocalProvider>,
) -> anyhow::Result<stator_server::ServerHandle> {
    let mut config = stator_server::ServerConfig::new(data_dir.join("server"));
    config.listen = opts
        .api
        .parse()
        .with_context(|| format!("--api: not an address: {}", opts.api))?;
    config.node_grace_ms = opts.node_grace_ms;
    if let Some(pool_config) = pool_config {
        config.autoscale = Some(stator_server::controller::Autoscaler {
            config: pool_config.clone(),
            provider: provider.clone(),
        });
    }
    stator_server::start(config)
        .await
        .context("starting the server")
}

/// Starts the gateway in this process, given the server's URL, token and cluster
/// secret; returns it and its HTTP URL.
async fn start_gateway(
    opts: &UpOptions,
    server: &stator_server::ServerHandle,
) -> anyhow::Result<(stator_gateway::GatewayHandle, Option<String>)> {
    let url = server.url();
    let cluster: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/v1/cluster"))
        .bearer_auth(server.api_token())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let secret = cluster["cluster_secret"]
        .as_str()
        .context("server gave no cluster secret")?
        .to_string();
    let mut gateway_config =
        stator_gateway::GatewayConfig::new(vec![url], server.api_token(), secret);
    gateway_config.http_listen = Some(
        opts.gateway_http
            .parse()
            .with_context(|| format!("--gateway-http: not an address: {}", opts.gateway_http))?,
    );
    let gateway = stator_gateway::start(gateway_config)
        .await
        .context("starting the gateway")?;
    let gateway_url = gateway.http_addr().map(|a| format!("http://{a}"));
    Ok((gateway, gateway_url))
}

/// How many agents `up` starts with `--nodes nodes` and `--pools pools`, before it runs
/// (to size its own runtime); `None` when the pools file cannot be read (`run` reports
/// that).
pub fn planned_agents(nodes: usize, pools: Option<&Path>) -> Option<usize> {
    let config = match pools {
        Some(path) => Some(pools::read_pools_file(path, &ZONES).ok()?),
        None => None,
    };
    Some(agents_to_start(nodes, config.as_ref()))
}

/// Agents `up` starts on this machine: `--nodes`, or every pool's minimum.
fn local_agents(opts: &UpOptions, pool_config: Option<&AutoscaleConfig>) -> usize {
    agents_to_start(opts.nodes, pool_config)
}

fn agents_to_start(nodes: usize, pool_config: Option<&AutoscaleConfig>) -> usize {
    match pool_config {
        Some(config) => config.pools.iter().map(|p| p.min as usize).sum(),
        None => nodes,
    }
}

/// Starts the pools' `min` nodes through the provider, or `--nodes` default agents;
/// returns how many nodes to wait for.
fn start_agents(
    opts: &UpOptions,
    pool_config: Option<&AutoscaleConfig>,
    provider: &LocalProvider,
    launch: &Launch,
    running: &Running,
) -> anyhow::Result<usize> {
    if let Some(pool_config) = pool_config {
        let mut started = 0;
        for pool in &pool_config.pools {
            for i in 0..pool.min as usize {
                provider.start(pool, ZONES[i % ZONES.len()])?;
                started += 1;
            }
        }
        return Ok(started);
    }
    for i in 0..opts.nodes {
        let spec = AgentSpec {
            name: format!("node-{}", i + 1),
            zone: ZONES[i % ZONES.len()].to_string(),
            pool: "default".into(),
            cpu_millis: DEFAULT_AGENT_CPU_MILLIS,
            memory_mib: DEFAULT_AGENT_MEMORY_MIB,
            price_per_hour: 0.0,
        };
        running.agents.start(agent_process(launch, &spec)?)?;
    }
    Ok(opts.nodes)
}

/// What runs where, and what to try next.
fn print_welcome(
    opts: &UpOptions,
    pool_config: Option<&AutoscaleConfig>,
    nodes: usize,
    running: &Running,
) {
    let url = running.server.url();
    let data_dir = running.data_dir.display();
    println!("stator is up: {nodes} nodes on the embedded store in {data_dir}");
    if let Some(pool_config) = pool_config {
        let names: Vec<String> = pool_config
            .pools
            .iter()
            .map(|p| format!("{} ({}..{} nodes)", p.name, p.min, p.max))
            .collect();
        println!(
            "  pools      {}: the autoscaler adds and releases local agents every {} ms",
            names.join(", "),
            pool_config.interval_ms
        );
    }
    println!(
        "  API        {url}   (token in {data_dir}/server/api-token; context {})",
        running.context_path.display()
    );
    println!(
        "  dashboard  {}",
        stator_server::dashboard::url_with_token(&url, running.server.api_token())
    );
    if let Some(g) = &running.gateway_url {
        println!("  gateway    {g}   (RESP endpoints open as kv services declare them)");
    }
    println!("  agents     logs in {data_dir}/agents/<node>/agent.log");
    println!("next, in another terminal:");
    if opts.apply.is_empty() {
        println!("  stator apply -f examples/kv.toml");
    }
    println!("  redis-cli -p 6380 set hello world        # the kv example's RESP endpoint");
    println!("  stator get partitions                     # leaders and members");
    let first_agent = running
        .agents
        .names()
        .into_iter()
        .next()
        .unwrap_or_else(|| "node-1".to_string());
    println!(
        "  kill -9 $(cat {data_dir}/agents/{first_agent}/pid)   # a node failure: a new leader, then the replication factor restored"
    );
    println!("Ctrl-C stops everything.");
}

/// Stops the agents (SIGTERM, then SIGKILL after [`AGENT_STOP_GRACE`]), then the gateway
/// and the server.
async fn stop(running: Running) -> anyhow::Result<()> {
    println!("stopping ...");
    // Taking the agents out of the supervisor first: a provider call still running
    // finds none.
    running.agents.stop_all(AGENT_STOP_GRACE).await;
    running.gateway.shutdown().await;
    running.server.shutdown().await?;
    Ok(())
}
