//! The `stator` binary: every verb of the CLI.

mod commands;
mod pools;
mod up;

use stator_bench as bench;
use stator_chaos as chaos;
use stator_client::{api as client, context};
use stator_harness::shutdown_signal;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use commands::Output;
use std::path::PathBuf;
use std::time::Duration;

/// `--learner-catchup-mib-per-sec`'s default (`stator agent`, `stator up`).
const DEFAULT_LEARNER_CATCHUP_MIB_PER_SEC: u64 =
    stator_replication::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC >> 20;

/// With `--features mimalloc`, mimalloc instead of glibc's malloc: the RESP path allocates
/// per command (argument vectors, replies, log entries, futures) on many threads, and
/// glibc's malloc/free was a quarter of a leader's CPU in the profiles (docs/BENCHMARKS.md,
/// "Where a cluster-mode leader's CPU goes"). Off by default: an idle agent's RSS per
/// replica grew ten-fold with it (docs/BENCHMARKS.md, session 8).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// stator: an orchestrator for stateful, real-time services.
#[derive(Parser)]
#[command(name = "stator", version, about, long_about = None)]
struct Cli {
    /// Context file with the API address and token (default: the one `stator up` made current).
    #[arg(long, global = true, env = "STATOR_CONTEXT")]
    context: Option<PathBuf>,
    /// API base URL, or several comma-separated (tried in turn when one is down);
    /// overrides the context (needs --token-file).
    #[arg(long, global = true)]
    server: Option<String>,
    /// File holding the API token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Start a whole cluster on this machine: server, gateway and N agents.
    #[command(
        after_help = "Examples:\n  stator up -f examples/kv.toml\n  stator up --nodes 5 --data-dir /tmp/c1 --api 127.0.0.1:7071"
    )]
    Up(UpArgs),
    /// Run the control plane (API and controllers).
    #[command(
        after_help = "Example:\n  stator server --data-dir /var/lib/stator --listen 10.0.0.1:7070"
    )]
    Server(ServerArgs),
    /// Run a node agent that joins a cluster (`--server URL[,URL...]`, tried in turn).
    #[command(
        after_help = "Example:\n  stator agent --server http://10.0.0.1:7070 --join-token-file join-token --name node-a --zone eu-1a"
    )]
    Agent(AgentArgs),
    /// Run a stateless gateway: RESP endpoints, the HTTP call route and the proxy
    /// (`--server URL[,URL...]`, tried in turn).
    #[command(
        after_help = "Example:\n  stator gateway --server http://10.0.0.1:7070 --token-file api-token --http 10.0.0.1:8080"
    )]
    Gateway {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Where the pub/sub bus listens (other gateways and agents dial it to deliver
        /// PUBLISH and keyspace events); loopback unless set. `off`: no bus.
        #[arg(long, default_value = stator_gateway::DEFAULT_BUS_LISTEN)]
        bus: String,
        /// Host other gateways and agents dial for the bus (default: the bound IP).
        #[arg(long)]
        bus_advertise: Option<String>,
    },
    /// Create or update a service from a TOML or YAML spec (idempotent).
    #[command(after_help = "Example:\n  stator apply -f examples/kv.toml")]
    Apply {
        /// The spec file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List nodes, services or partitions (with the age of each observation).
    #[command(
        after_help = "Examples:\n  stator get nodes\n  stator get partitions sessions\n  stator get services -o json"
    )]
    Get {
        /// nodes | services | partitions
        what: String,
        /// Only this service's partitions.
        service: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one node, service or partition in detail, with its recent events.
    #[command(
        after_help = "Examples:\n  stator describe node node-2\n  stator describe service sessions\n  stator describe partition sessions/0"
    )]
    Describe {
        /// node | service | partition
        kind: String,
        /// The node's name or id, the service's name, or SERVICE/N for a partition.
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a service.
    #[command(after_help = "Example:\n  stator delete service sessions")]
    Delete {
        /// Only `service` for now.
        kind: String,
        /// The service name.
        name: String,
    },
    /// Move every replica and instance off a node, then mark it drained. Why a drain
    /// waits shows in `get nodes`, `describe node` and one `drain_blocked` event.
    #[command(after_help = "Example:\n  stator drain node-2 && stator describe node node-2")]
    Drain {
        /// Node name or id.
        node: String,
    },
    /// Print what the control plane did: the recent events, then (-f) new ones live.
    #[command(
        after_help = "Examples:\n  stator events\n  stator events -f --service sessions\n  stator events -o json | jq .type"
    )]
    Events {
        /// Keep printing events as they happen (Ctrl-C stops).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events about this service.
        #[arg(long)]
        service: Option<String>,
        /// Output format (json: one event per line).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Nodes and partitions by load (ops/s from the last heartbeats).
    #[command(after_help = "Examples:\n  stator top\n  stator top --limit 5 -o json")]
    Top {
        /// Rows per table.
        #[arg(long, default_value_t = commands::TOP_DEFAULT_LIMIT)]
        limit: usize,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  stator completions bash > /etc/bash_completion.d/stator\n  stator completions zsh > \"${fpath[1]}/_stator\""
    )]
    Completions {
        /// bash | zsh | fish | elvish | powershell
        shell: clap_complete::Shell,
    },
    /// Simulate policies on a scenario or a real trace (deterministic).
    #[command(
        after_help = "Example:\n  stator sim --scenario examples/sim/mmo-diurnal.toml --compare --out sim-out --json"
    )]
    Sim(SimArgs),
    /// Jepsen-style run: a local cluster, clients, a nemesis and a linearizability verdict.
    #[command(
        after_help = "Example:\n  stator chaos --duration-s 60 --faults kill,pause --history h.jsonl --json"
    )]
    Chaos(ChaosArgs),
    /// Benchmarks that measure their baselines in the same run.
    #[command(after_help = "Example:\n  stator bench replication --clients 1,16 --json")]
    Bench {
        #[command(subcommand)]
        which: BenchVerb,
    },
}

#[derive(Subcommand)]
enum BenchVerb {
    /// Write latency and throughput of a replicated partition vs etcd and Redis+WAIT.
    #[command(
        after_help = "Example:\n  stator bench replication --replicas 3 --clients 1,16,64 --json"
    )]
    Replication(ReplicationArgs),
    /// Live move of a replica holding `--state-mib` of state under steady writes, beside
    /// a stop-and-copy (checkpoint/restore) move of the same state.
    #[command(after_help = "Example:\n  stator bench migration --state-mib 64 --json")]
    Migration(MigrationArgs),
    /// SIGKILL of a node under `stator up`: unavailability, new leader, replication
    /// factor restored, no acknowledged write lost; beside an etcd leader kill.
    #[command(after_help = "Example:\n  stator bench failover --rounds 5 --json")]
    Failover(FailoverArgs),
    /// Many idle partitions on real agents: time until all have a leader, idle CPU and
    /// RSS per agent, and writes back after a SIGKILL of one agent.
    #[command(after_help = "Example:\n  stator bench idle --partitions 1000 --idle-s 30 --json")]
    Idle(IdleArgs),
    /// Restart of a member holding `--state-mib` of state: from its own disk (fetching
    /// only the missed writes), beside the same member started empty (a full copy).
    #[command(after_help = "Example:\n  stator bench restart --state-mib 64 --json")]
    Restart(RestartArgs),
}

/// `stator up`: a whole cluster on this machine.
#[derive(clap::Args)]
struct UpArgs {
    /// Where the store, tokens, logs and context go.
    #[arg(long, default_value = "stator-data")]
    data_dir: PathBuf,
    /// Agents (nodes) to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// API listen address.
    #[arg(long, default_value = stator_server::config::DEFAULT_LISTEN)]
    api: String,
    /// Gateway HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_http: String,
    /// Service specs to apply once the nodes are ready.
    #[arg(short = 'f', long = "apply")]
    apply: Vec<PathBuf>,
    /// Milliseconds without a heartbeat after which a node is lost.
    #[arg(long, default_value_t = stator_server::config::DEFAULT_NODE_GRACE_MS)]
    node_grace_ms: u64,
    /// Node pools (TOML `[[pool]]` list): start each pool's `min` nodes instead of
    /// `--nodes`, and let the autoscaler add and release local agents.
    #[arg(long)]
    pools: Option<PathBuf>,
    /// Threads of `up`'s own async runtime (the control plane and the gateway). Default:
    /// its share of the cores beside its local agents (each of which gets its own share),
    /// at least one.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// MiB per second each node's leaders feed new replicas catching up (a moved or
    /// re-replicated partition's learner), all partitions together; 0: unlimited. Lower
    /// keeps a move's catch-up from taking the CPU the partition's writes need; moves
    /// and re-replication then take longer (docs/ARCHITECTURE.md, live migration).
    #[arg(long, default_value_t = DEFAULT_LEARNER_CATCHUP_MIB_PER_SEC)]
    learner_catchup_mib_per_sec: u64,
}

/// `stator server`: the control plane.
#[derive(clap::Args)]
struct ServerArgs {
    /// `embedded:DIR` (single file, the default) or `etcd://H:P,H:P`.
    #[arg(long)]
    store: Option<String>,
    /// API listen address (loopback unless configured).
    #[arg(long, default_value = stator_server::config::DEFAULT_LISTEN)]
    listen: String,
    /// Where tokens (api-token, join-token) and the embedded store live.
    #[arg(long, default_value = "stator-data/server")]
    data_dir: PathBuf,
    /// Milliseconds without a heartbeat after which a node is lost.
    #[arg(long, default_value_t = stator_server::config::DEFAULT_NODE_GRACE_MS)]
    node_grace_ms: u64,
    /// URL the other servers on the same etcd forward calls to while this one runs
    /// the controller (default: http:// + the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Node pools (TOML `[[pool]]` list) of fixed machines (the `static` provider):
    /// the autoscaler resizes, rebalances and drains empty nodes; it never adds one.
    #[arg(long)]
    pools: Option<PathBuf>,
}

/// `stator agent`: a node agent.
#[derive(clap::Args)]
struct AgentArgs {
    /// File holding the cluster's join token.
    #[arg(long)]
    join_token_file: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Failure domain.
    #[arg(long, default_value = "default")]
    zone: String,
    /// Node pool.
    #[arg(long, default_value = "default")]
    pool: String,
    /// CPU offered, millicores (`--cpu` is the old name, still accepted).
    #[arg(long = "cpu-millis", alias = "cpu", default_value_t = 4000)]
    cpu_millis: u64,
    /// Memory offered, MiB (`--memory` is the old name, still accepted).
    #[arg(long = "memory-mib", alias = "memory", default_value_t = 8192)]
    memory_mib: u64,
    /// Price of this machine per hour, USD, for cost-aware placement (`--price` is the
    /// old name, still accepted).
    #[arg(long = "price-per-hour", alias = "price", default_value_t = 0.0)]
    price_per_hour: f64,
    /// Where the replica transport listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Threads of the agent's async runtime (default: one per core). Set it when several
    /// agents share one machine: `stator up` gives each of its local agents its share of
    /// the cores, since more runtime threads than cores only add cross-thread wake-ups.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// IP the Redis Cluster RESP listeners bind, one per kv service in cluster mode
    /// (default: the host of --listen).
    #[arg(long)]
    resp_host: Option<String>,
    /// Host clients are told to dial in MOVED and CLUSTER SLOTS (default: the
    /// --resp-host, or 127.0.0.1 when that is 0.0.0.0). Set it on a multi-machine
    /// cluster: the address of this machine that clients can reach.
    #[arg(long)]
    advertise_host: Option<String>,
    /// Ports the RESP listeners may take, `LOW-HIGH` (one per kv service; default:
    /// any free port). Open this range in firewalls between clients and agents.
    #[arg(long, value_parser = parse_port_range)]
    resp_ports: Option<(u16, u16)>,
    /// MiB per second each node's leaders feed new replicas catching up (a moved or
    /// re-replicated partition's learner), all partitions together; 0: unlimited. Lower
    /// keeps a move's catch-up from taking the CPU the partition's writes need; moves
    /// and re-replication then take longer (docs/ARCHITECTURE.md, live migration).
    #[arg(long, default_value_t = DEFAULT_LEARNER_CATCHUP_MIB_PER_SEC)]
    learner_catchup_mib_per_sec: u64,
    /// Mutual TLS on the replica transport: this node's certificate chain (PEM; it
    /// must name the `--listen` host). Needs --tls-key and --tls-ca too.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) every peer's certificate must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Logs, sockets and run files.
    #[arg(long, default_value = "stator-data/agent")]
    data_dir: PathBuf,
}

/// `stator sim`: the simulator.
#[derive(clap::Args)]
struct SimArgs {
    /// Scenario TOML.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Alibaba openb node list CSV.
    #[arg(long)]
    trace_nodes: Option<PathBuf>,
    /// Alibaba openb pod list CSV.
    #[arg(long)]
    trace_pods: Option<PathBuf>,
    /// stator | k8s-default | k8s-tuned.
    #[arg(long)]
    policy: Option<String>,
    /// Run stator and every baseline (k8s-default, k8s-tuned) and print the ratios.
    #[arg(long)]
    compare: bool,
    /// Directory for CSV time series and plots.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Several seeds, `1..5` (both ends included) or `1,2,7`: per-seed results,
    /// then medians and ranges.
    #[arg(long)]
    seeds: Option<String>,
    /// One JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator chaos`: a Jepsen-style run.
#[derive(clap::Args)]
struct ChaosArgs {
    /// Seconds of faults under load (`--duration` is the old name, still accepted).
    #[arg(long = "duration-s", alias = "duration", default_value_t = 60)]
    duration: u64,
    /// Fault kinds: kill, pause, partition, membership, server (the controller
    /// holder among three servers on etcd; needs the etcd feature and binary),
    /// restart (every agent SIGKILLed at once and started again; needs
    /// `--durability disk`, its default), restart-late (the same, down past the
    /// heartbeat grace: every node is declared lost, then rejoins with its stores).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition,membership"
    )]
    faults: Vec<String>,
    /// Agents (5: a majority of every group survives one fault).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Keys the clients share (few, so operations conflict).
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Seed of the fault schedule and the clients (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the history (JSONL, DESIGN section 8).
    #[arg(long, default_value = "chaos-history.jsonl")]
    history: PathBuf,
    /// Agents in network namespaces (needs root) or on loopback; auto: namespaces
    /// where they can be made.
    #[arg(long, value_enum, default_value_t = chaos::NetworkMode::Auto)]
    network: chaos::NetworkMode,
    /// The kv service's durability: memory, periodic or disk (default: disk with the
    /// restart or restart-late fault, else memory).
    #[arg(long)]
    durability: Option<String>,
    /// Copy the cluster's logs here when the run ends, whatever the verdict: every
    /// server's, the gateway's, every agent's and etcd's log, the agents' identity
    /// files (without their secret) and a listing of every file (files.txt). DIR must
    /// be new or empty.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<PathBuf>,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator bench replication`.
#[derive(clap::Args)]
struct ReplicationArgs {
    /// Members per partition group (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Concurrent clients; a comma-separated list measures each in turn.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    clients: Vec<usize>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Measured seconds per run, after a 1 s warm-up (`--duration` is the old name,
    /// still accepted).
    #[arg(long = "duration-s", alias = "duration", default_value_t = 5)]
    duration: u64,
    /// Partition groups (leaders spread over the hosts).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Baselines to leave out: etcd, redis-wait, redis, stator-unbatched,
    /// stator-readindex.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Request measured: `set` (replicated write) or `get` (linearizable read, beside
    /// read-index rounds and a plain Redis GET).
    #[arg(long, default_value = "set")]
    op: String,
    /// Where stator replicas keep their log: memory, periodic or disk (fsync before
    /// every acknowledgement, as etcd does).
    #[arg(long, default_value = "memory", value_parser = parse_durability)]
    durability: stator_api::spec::Durability,
    /// Instead of the runs: where one write's time goes, 1 client, p50 per stage of its
    /// path (client, leader, follower, commit, reply), beside a loopback TCP round trip
    /// and Redis's own 1-client SET and SET + WAIT 1 0 in the same run.
    #[arg(long)]
    timeline: bool,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator bench migration`.
#[derive(clap::Args)]
struct MigrationArgs {
    /// State to fill the partition with before the move.
    #[arg(long, default_value_t = 64)]
    state_mib: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Paced writes per second during the whole run.
    #[arg(long, default_value_t = 500)]
    rate_per_sec: u32,
    /// Which replica moves: the leader or a follower.
    #[arg(long = "move", value_enum, default_value_t = bench::migration::MoveKind::Follower)]
    moved: bench::migration::MoveKind,
    /// Log entries between the group's snapshots (default 20,000). Below the fill's
    /// entries (a 64 MiB fill makes ~15,000), the log is purged and the new member
    /// catches up from a snapshot instead of the log.
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// MiB per second the leader feeds the new member while it is a learner (each
    /// host's `--learner-catchup-mib-per-sec`, as `stator agent` sets it); 0: unlimited.
    #[arg(long, default_value_t = DEFAULT_LEARNER_CATCHUP_MIB_PER_SEC)]
    learner_catchup_mib_per_sec: u64,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator bench restart`.
#[derive(clap::Args)]
struct RestartArgs {
    /// State to fill the partition with before the restarts.
    #[arg(long, default_value_t = 64)]
    state_mib: u64,
    /// Bytes per written value (at most one write batch, 8192).
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator bench failover`.
#[derive(clap::Args)]
struct FailoverArgs {
    /// Agents to start.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Partitions of the benchmark's service (3 replicas each).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Kills per kind.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Paced writes per second to partition 0.
    #[arg(long, default_value_t = 200)]
    rate_per_sec: u32,
    /// Which node each round kills.
    #[arg(long, value_enum, default_value_t = bench::failover::KillKind::Both)]
    kind: bench::failover::KillKind,
    /// Heartbeat grace after which the server declares a node lost.
    #[arg(long, default_value_t = stator_server::config::DEFAULT_NODE_GRACE_MS)]
    node_grace_ms: u64,
    /// The service's Raft election timeout (default: the spec's default).
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// Baselines to leave out: etcd.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `stator bench idle`.
#[derive(clap::Args)]
struct IdleArgs {
    /// Agents to start (3 replicas per partition).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Partitions of the benchmark's kv service.
    #[arg(long, default_value_t = 1_000)]
    partitions: u32,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle_s: u64,
    /// Heartbeat grace after which the server declares a node lost.
    #[arg(long, default_value_t = stator_server::config::DEFAULT_NODE_GRACE_MS)]
    node_grace_ms: u64,
    /// First run the baseline: new groups formed without forming replicas.
    #[arg(long)]
    baseline: bool,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// Resolves on Ctrl-C or SIGTERM.
/// `LOW-HIGH`, an inclusive port range with LOW <= HIGH.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH like 7100-7199, got {text:?}"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (1-65535) in {text:?}"))
    };
    let (low, high) = (port(low)?, port(high)?);
    if low == 0 || low > high {
        return Err(format!("LOW must be 1..=HIGH in {text:?}"));
    }
    Ok((low, high))
}

/// A bad command line: help and version print as clap prints them; errors become one
/// line (clap's own message spans several).
fn parse_error(error: clap::Error) -> anyhow::Result<()> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        commands::write_stdout_bytes(error.render().to_string().as_bytes());
        if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            std::process::exit(2);
        }
        return Ok(());
    }
    let text = error.render().to_string();
    let reason: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    anyhow::bail!("{} (see `stator --help`)", reason.join("; "))
}

/// Errors exit non-zero with one line: the reason and its causes, never a backtrace.
/// `--durability`: the spec's words, with the same error a spec would give.
fn parse_durability(text: &str) -> Result<stator_api::spec::Durability, String> {
    match text {
        "memory" => Ok(stator_api::spec::Durability::Memory),
        "periodic" => Ok(stator_api::spec::Durability::Periodic),
        "disk" => Ok(stator_api::spec::Durability::Disk),
        other => Err(format!("must be memory, periodic or disk, got {other:?}")),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STATOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return parse_error(error),
    };
    let Cli {
        context,
        server,
        token_file,
        command,
    } = cli;
    // The verbs that need no runtime run before one starts.
    let command = match command {
        Verb::Completions { shell } => return print_completions(shell),
        Verb::Sim(args) => return simulate(args),
        other => other,
    };
    let target = Target {
        context,
        server,
        token_file,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    match &command {
        Verb::Agent(AgentArgs {
            worker_threads: Some(n),
            ..
        }) => {
            runtime.worker_threads(usize::from(*n));
            if *n == 1 {
                one_malloc_arena();
            }
        }
        Verb::Up(args) => {
            runtime.worker_threads(up_worker_threads(args));
        }
        _ => {}
    }
    let runtime = runtime.enable_all().build().context("starting tokio")?;
    runtime.block_on(dispatch(command, target))
}

/// One malloc arena for an agent whose work runs on one runtime thread (each agent of
/// `stator up` on a machine with fewer cores than agents). glibc gives a further thread
/// an arena of its own, and such an arena's heap grows a page or two at a time with one
/// `mprotect` call each (glibc pads only the main arena's growth): ~17 calls per 1,000
/// cluster-mode SETs per agent while the in-memory log grows, against ~0.5 `brk` calls
/// in the main arena (docs/BENCHMARKS.md, session 16). With one worker thread there is
/// no contention to spread over arenas.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    // SAFETY: mallopt only sets one of glibc's allocator parameters; this runs before
    // the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Where the API is: the global flags, resolved lazily (verbs that start a cluster do
/// not need one).
struct Target {
    context: Option<PathBuf>,
    server: Option<String>,
    token_file: Option<PathBuf>,
}

impl Target {
    fn context(&self) -> anyhow::Result<context::Context> {
        context::resolve(
            self.server.as_deref(),
            self.token_file.as_deref(),
            self.context.as_deref(),
        )
    }

    fn api(&self) -> anyhow::Result<client::Api> {
        client::Api::new(&self.context()?)
    }
}

/// One line per verb: which function runs it.
async fn dispatch(command: Verb, target: Target) -> anyhow::Result<()> {
    match command {
        Verb::Sim(_) | Verb::Completions { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Verb::Up(args) => up(args).await,
        Verb::Server(args) => serve(args).await,
        Verb::Agent(args) => agent(args, &target).await,
        Verb::Gateway {
            http,
            bus,
            bus_advertise,
        } => gateway(&http, bus, bus_advertise, &target).await,
        Verb::Apply { file } => commands::apply(&target.api()?, &file).await,
        Verb::Get {
            what,
            service,
            output,
        } => commands::get(&target.api()?, &what, service.as_deref(), output).await,
        Verb::Describe { kind, name, output } => describe(&target, &kind, &name, output).await,
        Verb::Events {
            follow,
            service,
            output,
        } => commands::events(&target.api()?, follow, service.as_deref(), output).await,
        Verb::Top { limit, output } => {
            anyhow::ensure!(limit >= 1, "--limit: at least 1, got {limit}");
            commands::top(&target.api()?, limit, output).await
        }
        Verb::Delete { kind, name } => delete(&target, &kind, &name).await,
        Verb::Drain { node } => drain(&target, &node).await,
        Verb::Chaos(args) => run_chaos(args).await,
        Verb::Bench { which } => match which {
            BenchVerb::Replication(args) => bench_replication(args).await,
            BenchVerb::Migration(args) => bench_migration(args).await,
            BenchVerb::Failover(args) => bench_failover(args).await,
            BenchVerb::Idle(args) => bench_idle(args).await,
            BenchVerb::Restart(args) => bench_restart(args).await,
        },
    }
}

/// `stator completions SHELL`.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "stator", &mut script);
    commands::write_stdout_bytes(&script);
    Ok(())
}

/// `stator sim`: a thin front end over `stator-sim`.
fn simulate(args: SimArgs) -> anyhow::Result<()> {
    let opts = stator_sim::SimOptions {
        scenario: args.scenario,
        trace_nodes: args.trace_nodes,
        trace_pods: args.trace_pods,
        policy: args.policy,
        compare: args.compare,
        out: args.out,
        json: args.json,
        seed: args.seed,
        seeds: match args.seeds {
            Some(text) => stator_sim::parse_seeds(&text)?,
            None => Vec::new(),
        },
        progress: true,
    };
    // The simulator prints with println!; it writes no socket, so the default
    // SIGPIPE action (end quietly) is safe here and keeps `stator sim | head` calm.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    stator_sim::run_and_report(&opts)?;
    Ok(())
}

/// `up`'s runtime threads: `--worker-threads`, else its share of the cores beside the
/// agents it starts (see [`pools::local_up_worker_threads`]).
fn up_worker_threads(args: &UpArgs) -> usize {
    if let Some(n) = args.worker_threads {
        return usize::from(n);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    up::planned_agents(args.nodes, args.pools.as_deref())
        .map_or(1, |agents| pools::local_up_worker_threads(cores, agents))
}

/// `stator up`.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes: at least 1");
    up::run(up::UpOptions {
        data_dir: args.data_dir,
        nodes: args.nodes,
        api: args.api,
        gateway_http: args.gateway_http,
        apply: args.apply,
        node_grace_ms: args.node_grace_ms,
        pools: args.pools,
        learner_catchup_mib_per_sec: args.learner_catchup_mib_per_sec,
    })
    .await
}

/// `stator server`: serves until a signal.
async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = stator_server::ServerConfig::new(&args.data_dir);
    config.advertise_url = args.advertise;
    if let Some(path) = args.pools {
        config.autoscale = Some(stator_server::controller::Autoscaler {
            config: pools::read_pools_file(&path, &[])?,
            provider: std::sync::Arc::new(stator_server::provider::StaticProvider),
        });
    }
    if let Some(store) = args.store {
        config.store = store.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    }
    config.listen = args
        .listen
        .parse()
        .with_context(|| format!("--listen: not an address: {}", args.listen))?;
    config.node_grace_ms = args.node_grace_ms;
    let server = stator_server::start(config).await?;
    eprintln!(
        "stator server listening on {} (tokens in {})",
        server.url(),
        args.data_dir.display()
    );
    shutdown_signal().await;
    server.shutdown().await?;
    Ok(())
}

/// `stator agent`: runs until a signal.
async fn agent(args: AgentArgs, target: &Target) -> anyhow::Result<()> {
    let servers: Vec<String> = match &target.server {
        Some(s) => s.split(',').map(str::to_string).collect(),
        None => anyhow::bail!("agent: --server URL[,URL...] is required"),
    };
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    });
    let mut config = stator_agent::AgentConfig::new(
        servers,
        context::read_token(&args.join_token_file)?,
        name,
        args.data_dir,
    );
    config.zone = args.zone;
    config.pool = args.pool;
    config.cpu_millis = args.cpu_millis;
    config.memory_mib = args.memory_mib;
    config.price_per_hour = args.price_per_hour;
    config.listen = args.listen;
    config.resp_host = args.resp_host;
    config.advertise_host = args.advertise_host;
    config.resp_ports = args.resp_ports;
    config.learner_catchup_bytes_per_sec = args.learner_catchup_mib_per_sec << 20;
    if let (Some(cert), Some(key), Some(ca)) = (args.tls_cert, args.tls_key, args.tls_ca) {
        config.tls = Some(stator_replication::TlsConfig {
            cert_pem_path: cert,
            key_pem_path: key,
            ca_pem_path: ca,
        });
    }
    stator_agent::run(config, shutdown_signal()).await?;
    Ok(())
}

/// `stator gateway`: runs until a signal.
async fn gateway(
    http: &str,
    bus: String,
    bus_advertise: Option<String>,
    target: &Target,
) -> anyhow::Result<()> {
    let ctx = target.context()?;
    // `--server URL[,URL...]`: several servers on one etcd, tried in turn.
    let mut config = stator_gateway::GatewayConfig::new(
        ctx.server.split(',').map(str::to_string).collect(),
        ctx.token.clone(),
        String::new(),
    );
    config.http_listen = Some(
        http.parse()
            .with_context(|| format!("--http: not an address: {http}"))?,
    );
    config.bus_listen = (bus != "off").then_some(bus);
    config.bus_advertise_host = bus_advertise;
    stator_gateway::run(config, shutdown_signal()).await?;
    Ok(())
}

/// `stator describe KIND NAME`.
async fn describe(target: &Target, kind: &str, name: &str, output: Output) -> anyhow::Result<()> {
    match kind {
        "service" | "svc" => commands::describe_service(&target.api()?, name, output).await,
        "node" | "no" => commands::describe_node(&target.api()?, name, output).await,
        "partition" | "pt" => {
            commands::parse_partition_ref(name)?;
            commands::describe_partition(&target.api()?, name, output).await
        }
        other => anyhow::bail!(
            "describe {other}: expected node NAME, service NAME or partition SERVICE/N"
        ),
    }
}

/// `stator delete service NAME`.
async fn delete(target: &Target, kind: &str, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        kind == "service" || kind == "svc",
        "delete {kind}: only `delete service NAME` exists"
    );
    target
        .api()?
        .delete(&format!("/v1/services/{name}"))
        .await?;
    outln!("service/{name} deleted");
    Ok(())
}

/// `stator drain NODE`.
async fn drain(target: &Target, node: &str) -> anyhow::Result<()> {
    target
        .api()?
        .post(&format!("/v1/nodes/{node}/drain"))
        .await?;
    outln!("node/{node} draining; `stator describe node {node}` shows its progress");
    Ok(())
}

/// `stator chaos`: a thin front end over `stator-chaos`; fails when the run found a
/// problem.
async fn run_chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let faults = args
        .faults
        .iter()
        .map(|f| chaos::nemesis::FaultKind::parse(f.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let summary = chaos::run(chaos::Options {
        duration: Duration::from_secs(args.duration),
        faults,
        nodes: args.nodes,
        clients: args.clients,
        keys: args.keys,
        seed: args.seed.unwrap_or_else(rand::random),
        history: args.history,
        network: args.network,
        durability: args
            .durability
            .as_deref()
            .map(chaos::parse_durability)
            .transpose()?,
        keep_logs: args.keep_logs,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    anyhow::ensure!(
        summary.passed(),
        "chaos found a problem: verdict {:?}, {} anomalies, {} lost acknowledged writes, {} unrecovered faults",
        summary.verdict,
        summary.anomalies,
        summary.lost_acked_writes,
        summary.unrecovered
    );
    Ok(())
}

/// `stator bench replication`.
async fn bench_replication(args: ReplicationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.replicas, 1 | 3 | 5),
        "--replicas: must be 1, 3 or 5, got {}",
        args.replicas
    );
    let op = match args.op.as_str() {
        "set" => bench::replication::Op::Set,
        "get" => bench::replication::Op::Get,
        other => anyhow::bail!("--op: must be set or get, got {other:?}"),
    };
    let opts = bench::replication::Options {
        replicas: args.replicas,
        clients: args.clients,
        value_bytes: args.value_bytes,
        duration: Duration::from_secs(args.duration),
        partitions: args.partitions,
        skip: args.skip,
        op,
        durability: args.durability,
    };
    if args.timeline {
        anyhow::ensure!(
            op == bench::replication::Op::Set,
            "--timeline: measures writes only (--op set)"
        );
        let report = bench::replication::timeline(&opts).await?;
        bench::replication::print_timeline(&report, args.json);
        return Ok(());
    }
    let runs = bench::replication::run(&opts).await?;
    bench::print_runs(&runs, args.json);
    Ok(())
}

/// `stator bench migration`.
async fn bench_migration(args: MigrationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.state_mib >= 1, "--state-mib: at least 1");
    anyhow::ensure!(args.rate_per_sec >= 1, "--rate-per-sec: at least 1");
    let opts = bench::migration::Options {
        state_mib: args.state_mib,
        value_bytes: args.value_bytes,
        rate_per_sec: args.rate_per_sec,
        moved: args.moved,
        snapshot_every_entries: args.snapshot_every_entries,
        learner_catchup_bytes_per_sec: args.learner_catchup_mib_per_sec << 20,
    };
    let report = bench::migration::run(&opts).await?;
    bench::migration::print_report(&report, args.json);
    Ok(())
}

/// `stator bench restart`.
async fn bench_restart(args: RestartArgs) -> anyhow::Result<()> {
    let report = bench::restart::run(&bench::restart::Options {
        state_mib: args.state_mib,
        value_bytes: args.value_bytes,
    })
    .await?;
    bench::restart::print_report(&report, args.json)
}

/// `stator bench failover`.
async fn bench_failover(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes: at least 3 (replicas are 3), got {}",
        args.nodes
    );
    anyhow::ensure!(args.rounds >= 1, "--rounds: at least 1");
    anyhow::ensure!(args.rate_per_sec >= 1, "--rate-per-sec: at least 1");
    let opts = bench::failover::Options {
        nodes: args.nodes,
        partitions: args.partitions,
        rounds: args.rounds,
        rate_per_sec: args.rate_per_sec,
        kind: args.kind,
        node_grace_ms: args.node_grace_ms,
        election_timeout_ms: args.election_timeout_ms,
        skip: args.skip,
    };
    let report = bench::failover::run(&opts).await?;
    bench::failover::print_report(&report, args.json);
    Ok(())
}

/// `stator bench idle`.
async fn bench_idle(args: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes: at least 3 (replicas are 3), got {}",
        args.nodes
    );
    anyhow::ensure!(args.partitions >= 1, "--partitions: at least 1");
    anyhow::ensure!(args.idle_s >= 1, "--idle-s: at least 1");
    let opts = bench::idle::Options {
        nodes: args.nodes,
        partitions: args.partitions,
        idle_s: args.idle_s,
        node_grace_ms: args.node_grace_ms,
        baseline: args.baseline,
    };
    let report = bench::idle::run(&opts).await?;
    bench::idle::print_report(&report, args.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_verb_shows_an_example_in_its_help() {
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("Example") && help.contains("stator "),
                    "`{name} --help` has no example"
                );
                check(sub, &name);
            }
        }
        check(&Cli::command(), "stator");
    }
}
