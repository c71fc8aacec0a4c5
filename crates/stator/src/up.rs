//! `stator up`: a whole cluster on this machine. The server and gateway run in this
//! process; agents run as child processes of the same binary, so `kill -9` of one is a
//! real node failure. A dead agent is started again after a pause, as a machine that
//! reboots: it rejoins as a new member, since its in-memory replicas died with it.
//!
//! With `--pools FILE` the nodes are the pools' `min` nodes, started through the
//! `local` node provider (`pools.rs`), and the server's autoscaler adds and releases
//! agents of those pools through the same provider.

use stator_client::context::{self, Context};
use stator_harness::AGENT_RESTART_DELAY;
use crate::pools::{self, AgentProcess, Agents, Launch, LocalProvider};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Zones agents are spread over, round-robin, so `spread = "zone"` has three domains.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// CPU each agent offers without `--pools` (the agent's own default).
const DEFAULT_AGENT_CPU_MILLIS: u64 = 4_000;
/// Memory each agent offers without `--pools` (the agent's own default).
const DEFAULT_AGENT_MEMORY_MIB: u64 = 8_192;

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

/// Starts `stator agent` as a child of this process, logging to
/// `DATA_DIR/agents/<name>/agent.log` and writing its pid next to it.
pub fn spawn_agent(launch: &Launch, spec: &AgentSpec) -> anyhow::Result<Child> {
    let dir = launch.data_dir.join("agents").join(&spec.name);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))?;
    let mut cmd = Command::new(&launch.exe);
    cmd.arg("agent")
        .args(["--server", &launch.server])
        .arg("--join-token-file")
        .arg(&launch.token_file)
        .args([
            "--name", &spec.name, "--zone", &spec.zone, "--pool", &spec.pool,
        ])
        .args(["--cpu", &spec.cpu_millis.to_string()])
        .args(["--memory", &spec.memory_mib.to_string()])
        .args(["--price", &spec.price_per_hour.to_string()])
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the agent
    // when `up` dies, so a crashed `up` leaves no orphaned cluster behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting agent {}", spec.name))?;
    // Scripts, benchmarks and the README tour find the agent to kill here.
    if let Some(pid) = child.id() {
        std::fs::write(dir.join("pid"), pid.to_string())?;
    }
    Ok(child)
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let server_dir = data_dir.join("server");
    let mut config = stator_server::ServerConfig::new(&server_dir);
    config.listen = opts
        .api
        .parse()
        .with_context(|| format!("--api: not an address: {}", opts.api))?;
    config.node_grace_ms = opts.node_grace_ms;
    let pool_config = match &opts.pools {
        Some(path) => Some(pools::read_pools_file(path, &ZONES)?),
        None => None,
    };
    let agents: Agents = Arc::new(Mutex::new(Vec::new()));
    // The provider learns where agents dial once the server listens (below).
    let provider = Arc::new(LocalProvider::new(agents.clone()));
    if let Some(pool_config) = &pool_config {
        config.autoscale = Some(stator_server::controller::Autoscaling {
            config: pool_config.clone(),
            provider: provider.clone(),
        });
    }
    let server = stator_server::start(config)
        .await
        .context("starting the server")?;
    let url = server.url();
    let token_file = server_dir.join(stator_server::config::JOIN_TOKEN_FILE);
    let launch = Launch {
        exe: std::env::current_exe()?,
        data_dir: data_dir.clone(),
        server: url.clone(),
        token_file: token_file.clone(),
    };
    provider.set_launch(launch.clone());

    let http = reqwest::Client::new();
    let cluster: serde_json::Value = http
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
        stator_gateway::GatewayConfig::new(vec![url.clone()], server.api_token(), secret);
    gateway_config.http_listen = Some(
        opts.gateway_http
            .parse()
            .with_context(|| format!("--gateway-http: not an address: {}", opts.gateway_http))?,
    );
    let gateway = stator_gateway::start(gateway_config)
        .await
        .context("starting the gateway")?;
    let gateway_url = gateway.http_addr().map(|a| format!("http://{a}"));

    let ctx_path = data_dir.join("context");
    context::write(
        &ctx_path,
        &Context {
            server: url.clone(),
            token: server.api_token().to_string(),
            gateway_http: gateway_url.clone(),
        },
    )?;

    let mut expected_nodes = opts.nodes;
    match &pool_config {
        Some(pool_config) => {
            expected_nodes = 0;
            for pool in &pool_config.pools {
                for i in 0..pool.min as usize {
                    provider.start(pool, ZONES[i % ZONES.len()])?;
                    expected_nodes += 1;
                }
            }
        }
        None => {
            for i in 0..opts.nodes {
                let spec = AgentSpec {
                    name: format!("node-{}", i + 1),
                    zone: ZONES[i % ZONES.len()].to_string(),
                    pool: "default".into(),
                    cpu_millis: DEFAULT_AGENT_CPU_MILLIS,
                    memory_mib: DEFAULT_AGENT_MEMORY_MIB,
                    price_per_hour: 0.0,
                };
                let child = spawn_agent(&launch, &spec)?;
                pools::lock(&agents).push(AgentProcess {
                    spec,
                    child: Some(child),
                    restart_at: None,
                });
            }
        }
    }

    // Wait until every agent has registered, then apply the given specs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: Vec<serde_json::Value> = http
            .get(format!("{url}/v1/nodes"))
            .bearer_auth(server.api_token())
            .send()
            .await?
            .json()
            .await?;
        let ready = nodes.iter().filter(|n| n["state"] == "ready").count();
        if ready >= expected_nodes {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {ready} of {expected_nodes} agents registered within 30 s; see {}/agents/*/agent.log",
            data_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = stator_client::Api::new(&Context {
        server: url.clone(),
        token: server.api_token().to_string(),
        gateway_http: None,
    })?;
    for spec in &opts.apply {
        crate::commands::apply(&api, spec).await?;
    }

    println!(
        "stator is up: {expected_nodes} nodes on the embedded store in {}",
        data_dir.display()
    );
    if let Some(pool_config) = &pool_config {
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
        "  API        {url}   (token in {}/api-token; context {})",
        server_dir.display(),
        ctx_path.display()
    );
    println!(
        "  dashboard  {}",
        stator_server::dashboard::url_with_token(&url, server.api_token())
    );
    if let Some(g) = &gateway_url {
        println!("  gateway    {g}   (RESP endpoints open as kv services declare them)");
    }
    println!(
        "  agents     logs in {}/agents/<node>/agent.log",
        data_dir.display()
    );
    println!("next, in another terminal:");
    if opts.apply.is_empty() {
        println!("  stator apply -f examples/kv.toml");
    }
    println!("  redis-cli -p 6380 set hello world        # the kv example's RESP endpoint");
    println!("  stator get partitions                     # leaders and members");
    let first_agent = pools::lock(&agents)
        .first()
        .map_or_else(|| "node-1".to_string(), |a| a.spec.name.clone());
    println!(
        "  kill -9 $(cat {}/agents/{first_agent}/pid)   # a node failure: a new leader, then the replication factor restored",
        data_dir.display()
    );
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = ticker.tick() => {
                for agent in pools::lock(&agents).iter_mut() {
                    if let Some(child) = agent.child.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            eprintln!("agent {} exited ({status}); starting it again in {AGENT_RESTART_DELAY:?} as a new member", agent.spec.name);
                            agent.child = None;
                            agent.restart_at = Some(tokio::time::Instant::now() + AGENT_RESTART_DELAY);
                        }
                    } else if agent.restart_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        agent.restart_at = None;
                        match spawn_agent(&launch, &agent.spec) {
                            Ok(child) => agent.child = Some(child),
                            Err(e) => eprintln!("cannot restart agent {}: {e}", agent.spec.name),
                        }
                    }
                }
            }
        }
    }
    println!("stopping ...");
    // Take the agents out of the shared list: a provider call still running finds none.
    let mut agents: Vec<AgentProcess> = std::mem::take(&mut *pools::lock(&agents));
    for agent in &mut agents {
        if let Some(child) = agent.child.as_mut() {
            if let Some(pid) = child.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
    for agent in &mut agents {
        if let Some(mut child) = agent.child.take() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
    gateway.shutdown().await;
    server.shutdown().await?;
    Ok(())
}
