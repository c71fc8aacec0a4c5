//! `stator bench replication`: write latency and throughput of replicated partitions over
//! real TCP on loopback, beside etcd and Redis-with-WAIT measured in the same run.
//!
//! Each stator host runs in its own thread with its own single-threaded tokio runtime
//! (as separate processes would, minus the exec), the clients in another runtime. Every
//! client has its own exactly-once session and keeps one request in flight: a `SET` of a
//! random key with a `value_bytes` value through the built-in `kv` state machine, or
//! with `--op get` a linearizable `GET`.
//!
//! With more than one client, `stator-shared` runs on the same cluster right after: the
//! same number of callers sharing one [`ReplicaClient`], as the gateway and an
//! application process use it (calls bound for one host that wait at the same moment
//! travel as one frame, each call keeping its own sequence number). Redis+WAIT cannot
//! share a connection that way: `WAIT` waits for every earlier write of its connection.
//!
//! stator's own baselines run in the same run on a second cluster: `stator-unbatched`
//! proposes every write as its own log entry (no write batching at the leader), and for
//! `GET`, `stator-readindex` takes a read-index quorum round instead of the leader lease.

use super::hosts::HostThreads;
use super::latency::{Recorder, Run};
use async_trait::async_trait;
use rand::Rng;
use stator_api::app::{AppError, StateMachine};
use stator_api::ids::GroupId;
use stator_api::slot::{key_slot, partition_of_slot};
use stator_api::spec::Durability;
use stator_harness::resp::Connection;
use stator_harness::servers::{etcd_put, start_etcd, start_redis_with_replica};
use stator_replication::timeline::{self, Stage, STAGES};
use stator_replication::{GroupOptions, ReplicaClient, RequestKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct keys written; enough that hot keys don't matter, few enough to stay in cache.
const KEY_SPACE: u64 = 10_000;
/// Load before measuring starts (connections, elections, allocator warm-up).
const WARMUP: Duration = Duration::from_secs(1);
/// The run whose callers share one client (see the module doc).
pub const SHARED: &str = "stator-shared";
/// Deadline for one write before it counts as an error.
const OP_DEADLINE: Duration = Duration::from_secs(5);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Members per group.
    pub replicas: usize,
    /// Client counts to measure, one run each.
    pub clients: Vec<usize>,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Measured seconds per run.
    pub duration: Duration,
    /// Partition groups (leaders spread over hosts).
    pub partitions: u32,
    /// Systems to skip ("etcd", "redis-wait", "redis", "stator-shared",
    /// "stator-unbatched", "stator-readindex").
    pub skip: Vec<String>,
    /// Where stator replicas keep their log: `disk` fsyncs before every acknowledgement
    /// (group commit), as etcd does; stores live in a temporary directory.
    pub durability: Durability,
    /// What each request does.
    pub op: Op,
}

/// The request a benchmark client repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A replicated `SET`.
    Set,
    /// A linearizable `GET`.
    Get,
}

#[async_trait]
trait Driver: Send + 'static {
    async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
}

/// What one [`drive`] measured: the merged latencies, the measured window, and the CPU
/// time spent in it by this process and the processes `drive` was given.
struct Driven {
    rec: Recorder,
    window: Duration,
    cpu: Option<Duration>,
}

impl Driven {
    /// The run of `system`, with the CPU time per acknowledged request.
    fn run(&self, system: &str, replicas: usize, clients: usize, value_bytes: usize) -> Run {
        let mut run = Run::measured(
            system,
            replicas,
            clients,
            value_bytes,
            &self.rec,
            self.window,
        );
        let ops = self.rec.histogram.len();
        run.cpu_us_per_op = self
            .cpu
            .filter(|_| ops > 0)
            .map(|cpu| crate::figures::round1(cpu.as_secs_f64() * 1e6 / ops as f64));
        run
    }
}

/// CPU time (user + system) used so far by this process and by `pids`; `None` when a
/// process's figure cannot be read (it has exited, or this is not Linux).
fn cpu_used(pids: &[u32]) -> Option<Duration> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let own = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = own;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) start at the state, field 3;
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        total += Duration::from_secs_f64(ticks as f64 / ticks_per_s);
    }
    Some(total)
}

/// Drives every driver for the warm-up and then `duration`, and measures the CPU time
/// this process and `pids` (the baseline's servers) spend in the measured window.
async fn drive(
    drivers: Vec<Box<dyn Driver>>,
    value_bytes: usize,
    duration: Duration,
    pids: &[u32],
) -> Driven {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + duration;
    let sampled_pids = pids.to_vec();
    let placement = crate::placement::Sampler::start(pids, measure_from, end);
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = cpu_used(&sampled_pids);
        tokio::time::sleep_until(end.into()).await;
        Some(cpu_used(&sampled_pids)?.saturating_sub(before?))
    });
    let tasks: Vec<_> = drivers
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                let mut rec = Recorder::default();
                let value = vec![b'v'; value_bytes];
                loop {
                    let key = format!("key:{}", rand::thread_rng().gen_range(0..KEY_SPACE));
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let result = d.write(key.as_bytes(), &value).await;
                    if t0 >= measure_from {
                        match result {
                            Ok(()) => rec.record(t0.elapsed()),
                            Err(_) => rec.errors += 1,
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::default();
    for t in tasks {
        total.merge(&t.await.expect("client task panicked"));
    }
    if let Some(placement) = placement {
        eprintln!("{}", placement.report());
    }
    Driven {
        rec: total,
        window: duration,
        cpu: cpu.await.expect("CPU sampler panicked"),
    }
}

/// Each partition's group and its members' addresses.
type Groups = Vec<(GroupId, Vec<String>)>;

struct StatorDriver {
    client: Arc<ReplicaClient>,
    groups: Arc<Groups>,
    leaders: Vec<Option<String>>,
    op: Op,
}

#[async_trait]
impl Driver for StatorDriver {
    async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let p = partition_of_slot(self.groups.len() as u32, key_slot(key)) as usize;
        let (group, members) = &self.groups[p];
        let (kind, cmd) = match self.op {
            Op::Set => (
                RequestKind::Write,
                stator_kv::encode_command(&[b"SET".as_slice(), key, value]),
            ),
            Op::Get => (
                RequestKind::Read,
                stator_kv::encode_command(&[b"GET".as_slice(), key]),
            ),
        };
        let reply = self
            .client
            .execute(
                *group,
                members,
                &mut self.leaders[p],
                kind,
                cmd,
                OP_DEADLINE,
            )
            .await?;
        anyhow::ensure!(
            match self.op {
                Op::Set => reply == b"+OK\r\n",
                Op::Get => reply.first() == Some(&b'$'),
            },
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        );
        Ok(())
    }
}

/// Starts `replicas` hosts with `partitions` kv groups; returns them and each group's members.
/// Durable replicas keep their stores under `data_root/<node id>`.
async fn start_stator(
    replicas: usize,
    partitions: u32,
    options: GroupOptions,
    data_root: &std::path::Path,
) -> anyhow::Result<(HostThreads, Groups, String)> {
    start_stator_with(replicas, partitions, options, data_root, |_| {
        Box::new(stator_kv::KvMachine::default())
    })
    .await
}

/// [`start_stator`] with each host's app built by `make_app(node_id)`.
async fn start_stator_with(
    replicas: usize,
    partitions: u32,
    options: GroupOptions,
    data_root: &std::path::Path,
    make_app: fn(u64) -> Box<dyn StateMachine>,
) -> anyhow::Result<(HostThreads, Groups, String)> {
    let secret = format!("{:032x}", rand::random::<u128>());
    let groups: Vec<GroupId> = (0..partitions).map(|p| GroupId::new(1, p)).collect();
    let (threads, hosts) = HostThreads::start(replicas as u64, &secret, Some(data_root)).await?;
    let members: BTreeMap<u64, String> = hosts
        .iter()
        .map(|(id, host)| (*id, host.addr().to_string()))
        .collect();
    let all_groups = groups.clone();
    threads
        .run_on_all(move |node_id, host| {
            let groups = all_groups.clone();
            async move {
                for g in &groups {
                    host.create_group(*g, options, make_app(node_id)).await?;
                }
                Ok(())
            }
        })
        .await?;
    // Spread leaders: each partition is bootstrapped by one host only, once every host
    // has its replicas.
    let (all_groups, all_members) = (groups.clone(), members.clone());
    threads
        .run_on_all(move |node_id, host| {
            let (groups, members) = (all_groups.clone(), all_members.clone());
            async move {
                for (i, g) in groups.iter().enumerate() {
                    if i % members.len() == (node_id as usize - 1) {
                        host.bootstrap(*g, &members).await?;
                    }
                }
                Ok(())
            }
        })
        .await?;
    let addrs: Vec<String> = members.values().cloned().collect();
    Ok((
        threads,
        groups.into_iter().map(|g| (g, addrs.clone())).collect(),
        secret,
    ))
}

/// How the callers of one run hold their [`ReplicaClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// One client (its own session and connections) per caller.
    Own,
    /// One client shared by every caller.
    Shared,
}

async fn measure_stator(
    system: &str,
    opts: &Options,
    clients: usize,
    how: Clients,
    groups: &Arc<Groups>,
    secret: &str,
) -> Run {
    let shared = Arc::new(ReplicaClient::new(secret));
    let drivers: Vec<Box<dyn Driver>> = (0..clients)
        .map(|_| {
            Box::new(StatorDriver {
                client: match how {
                    Clients::Own => Arc::new(ReplicaClient::new(secret)),
                    Clients::Shared => shared.clone(),
                },
                groups: groups.clone(),
                leaders: vec![None; groups.len()],
                op: opts.op,
            }) as Box<dyn Driver>
        })
        .collect();
    let driven = drive(drivers, opts.value_bytes, opts.duration, &[]).await;
    let mut run = driven.run(system, opts.replicas, clients, opts.value_bytes);
    run.durability = Some(opts.durability.to_string());
    run
}

struct EtcdDriver {
    http: reqwest::Client,
    endpoint: String,
}

#[async_trait]
impl Driver for EtcdDriver {
    async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        etcd_put(&self.http, &self.endpoint, key, value).await
    }
}

struct RedisWaitDriver {
    conn: Connection,
    frames: Vec<u8>,
}

#[async_trait]
impl Driver for RedisWaitDriver {
    async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.frames.clear();
        self.frames
            .extend_from_slice(&stator_kv::encode_command(&[b"SET".as_slice(), key, value]));
        self.frames.extend_from_slice(&stator_kv::encode_command(&[
            b"WAIT".as_slice(),
            b"1",
            b"0",
        ]));
        let frames = std::mem::take(&mut self.frames);
        let replies = self.conn.pipeline(&frames, 2).await?;
        self.frames = frames;
        anyhow::ensure!(!replies[0].is_error(), "SET failed: {:?}", replies[0]);
        anyhow::ensure!(
            replies[1] == stator_kv::Value::Integer(1),
            "WAIT reached {:?} replicas",
            replies[1]
        );
        Ok(())
    }
}

/// A plain Redis `GET`: the anchor for reads.
struct RedisGetDriver {
    conn: Connection,
}

#[async_trait]
impl Driver for RedisGetDriver {
    async fn write(&mut self, key: &[u8], _value: &[u8]) -> anyhow::Result<()> {
        let frame = stator_kv::encode_command(&[b"GET".as_slice(), key]);
        let reply = self.conn.pipeline(&frame, 1).await?;
        anyhow::ensure!(!reply[0].is_error(), "GET failed: {:?}", reply[0]);
        Ok(())
    }
}

/// Runs every system for every client count; returns the runs in order.
pub async fn run(opts: &Options) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    measure_stator_systems(opts, &mut runs).await?;
    if opts.op == Op::Get {
        measure_get_baselines(opts, &mut runs).await?;
    } else {
        measure_set_baselines(opts, &mut runs).await?;
    }
    Ok(runs)
}

/// stator, then stator without the feature under test, on a fresh cluster each.
async fn measure_stator_systems(opts: &Options, runs: &mut Vec<Run>) -> anyhow::Result<()> {
    // Durable stores live on the same file system as etcd's data directories (both are
    // temporary dirs).
    let data_root = tempfile::tempdir()?;
    let durable = GroupOptions {
        durability: opts.durability,
        ..GroupOptions::default()
    };
    let baseline = match opts.op {
        Op::Set => (
            "stator-unbatched",
            GroupOptions {
                batch_writes: false,
                ..durable
            },
        ),
        Op::Get => (
            "stator-readindex",
            GroupOptions {
                lease_reads: false,
                ..durable
            },
        ),
    };
    for (index, (system, options)) in [("stator", durable), baseline].into_iter().enumerate() {
        if opts.skip.iter().any(|s| s == system) {
            continue;
        }
        let (hosts, groups, secret) = start_stator(
            opts.replicas,
            opts.partitions,
            options,
            &data_root.path().join(index.to_string()),
        )
        .await?;
        let groups = Arc::new(groups);
        for &clients in &opts.clients {
            eprintln!(
                "{system}: {} replicas, durability {}, {clients} clients ...",
                opts.replicas, opts.durability
            );
            runs.push(measure_stator(system, opts, clients, Clients::Own, &groups, &secret).await);
            if index == 0 && clients > 1 && !opts.skip.iter().any(|s| s == SHARED) {
                eprintln!("{SHARED}: the same {clients} clients sharing one ReplicaClient ...");
                runs.push(
                    measure_stator(SHARED, opts, clients, Clients::Shared, &groups, &secret).await,
                );
            }
        }
        drop(hosts);
    }
    Ok(())
}

/// The `GET` anchor: a plain Redis primary.
async fn measure_get_baselines(opts: &Options, runs: &mut Vec<Run>) -> anyhow::Result<()> {
    let baseline = Baseline {
        system: "redis",
        replicas: 1,
        setup: "GET on the primary",
    };
    measure_redis_baseline(opts, runs, baseline, |conn| {
        Box::new(RedisGetDriver { conn })
    })
    .await
}

/// A Redis primary with one replica (unless `--skip`ped), one connection per client to
/// the primary, each wrapped by `driver`.
async fn measure_redis_baseline(
    opts: &Options,
    runs: &mut Vec<Run>,
    baseline: Baseline,
    driver: fn(Connection) -> Box<dyn Driver>,
) -> anyhow::Result<()> {
    if opts.skip.iter().any(|s| s == baseline.system) {
        return Ok(());
    }
    let redis = start_redis_with_replica().await;
    let endpoints = redis.as_ref().map(|r| r.endpoints.clone());
    let pids = redis.as_ref().map(|r| r.pids()).ok();
    measure_baseline(
        runs,
        opts,
        baseline,
        endpoints,
        pids,
        |endpoints, clients| async move {
            let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
            for _ in 0..clients {
                drivers.push(driver(Connection::connect(endpoints[0].as_str()).await?));
            }
            Ok(drivers)
        },
    )
    .await
}

/// The `SET` baselines: etcd (one consensus write per request) and Redis with `WAIT`.
async fn measure_set_baselines(opts: &Options, runs: &mut Vec<Run>) -> anyhow::Result<()> {
    // etcd: one consensus write per ordered request, 3 members as DORADO runs it.
    if !opts.skip.iter().any(|s| s == "etcd") {
        let etcd = start_etcd(3).await;
        let endpoints = etcd.as_ref().map(|e| e.endpoints().to_vec());
        let baseline = Baseline {
            system: "etcd",
            replicas: 3,
            setup: "3 members",
        };
        measure_baseline(
            runs,
            opts,
            baseline,
            endpoints,
            None,
            |endpoints, clients| async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(clients)
                    .build()?;
                Ok((0..clients)
                    .map(|i| {
                        Box::new(EtcdDriver {
                            http: http.clone(),
                            endpoint: endpoints[i % endpoints.len()].clone(),
                        }) as Box<dyn Driver>
                    })
                    .collect())
            },
        )
        .await?;
    }
    let baseline = Baseline {
        system: "redis-wait",
        replicas: 2,
        setup: "primary + 1 replica",
    };
    measure_redis_baseline(opts, runs, baseline, |conn| {
        Box::new(RedisWaitDriver {
            conn,
            frames: Vec::new(),
        })
    })
    .await
}

/// A baseline system as its runs report it.
struct Baseline {
    /// The `system` column.
    system: &'static str,
    /// The `replicas` column.
    replicas: usize,
    /// How it is set up, for the progress line.
    setup: &'static str,
}

/// For each client count: build the drivers with `make_drivers(endpoints, clients)`,
/// drive them, push a measured run. When the system did not start (`endpoints` is the
/// start error), push a skipped run per client count instead, saying why. The caller
/// keeps the started system alive until this returns. With `pids` (the system's server
/// processes), each run also reports its CPU time per request.
async fn measure_baseline<E, F, Fut>(
    runs: &mut Vec<Run>,
    opts: &Options,
    baseline: Baseline,
    endpoints: Result<Vec<String>, E>,
    pids: Option<Vec<u32>>,
    make_drivers: F,
) -> anyhow::Result<()>
where
    E: std::fmt::Display,
    F: Fn(Vec<String>, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Box<dyn Driver>>>>,
{
    let Baseline {
        system,
        replicas,
        setup,
    } = baseline;
    let endpoints = match endpoints {
        Ok(endpoints) => endpoints,
        Err(e) => {
            runs.extend(opts.clients.iter().map(|&clients| {
                Run::skipped(system, replicas, clients, opts.value_bytes, e.to_string())
            }));
            return Ok(());
        }
    };
    for &clients in &opts.clients {
        eprintln!("{system}: {setup}, {clients} clients ...");
        let drivers = make_drivers(endpoints.clone(), clients).await?;
        let driven = drive(
            drivers,
            opts.value_bytes,
            opts.duration,
            pids.as_deref().unwrap_or_default(),
        )
        .await;
        let mut run = driven.run(system, replicas, clients, opts.value_bytes);
        if pids.is_none() {
            run.cpu_us_per_op = None;
        }
        runs.push(run);
    }
    Ok(())
}

/// Round trips of the loopback floor measurement.
const FLOOR_ROUND_TRIPS: usize = 20_000;
/// Bytes of one floor message: about one replicated 100-byte `SET`'s frame.
const FLOOR_MESSAGE_BYTES: usize = 160;

/// Where one replicated write's time goes, at 1 client, beside this machine's floors.
#[derive(Debug, serde::Serialize)]
pub struct TimelineReport {
    /// Writes whose every stage was seen, in order.
    pub writes: usize,
    /// Per stage: its name, the p50 since the stage before it and since the client sent
    /// the write, in microseconds.
    pub stages: Vec<(String, f64, f64)>,
    /// p50 of one write end to end in the same run (client send to client has reply), us.
    pub write_p50_us: f64,
    /// p50 of one round trip of a 160-byte message between two tokio tasks over loopback
    /// TCP, each on its own thread and single-threaded runtime (as the hosts run), us.
    pub loopback_round_trip_p50_us: f64,
    /// Redis, 1 client, `SET` alone and `SET` + `WAIT 1 0`: p50 us (`None`: not run).
    pub redis_set_p50_us: Option<f64>,
    /// See [`TimelineReport::redis_set_p50_us`].
    pub redis_set_wait_p50_us: Option<f64>,
}

/// The kv machine, marking [`Stage::Applied`] as it applies (on the host that leads).
struct TimedApply(stator_kv::KvMachine);

#[async_trait]
impl StateMachine for TimedApply {
    async fn apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        timeline::mark(Stage::Applied);
        self.0.apply(index, time_ms, command).await
    }
    async fn query(&mut self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        self.0.query(time_ms, request).await
    }
    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        self.0.snapshot().await
    }
    async fn snapshot_in_parts(&mut self) -> Result<stator_api::app::SnapshotFinish, AppError> {
        self.0.snapshot_in_parts().await
    }
    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        self.0.restore(snapshot).await
    }
    fn state_bytes(&self) -> u64 {
        self.0.state_bytes()
    }
}

/// `--timeline`: one client's writes to one group (bootstrapped, so led, by node 1, whose
/// app marks the apply), each timestamped at every [`Stage`] (see
/// `stator_replication::timeline`), for `opts.duration` after the warm-up; then the
/// loopback floor and Redis's own 1-client `SET` and `SET` + `WAIT 1 0` p50.
pub async fn timeline(opts: &Options) -> anyhow::Result<TimelineReport> {
    let data_root = tempfile::tempdir()?;
    let options = GroupOptions {
        durability: opts.durability,
        ..GroupOptions::default()
    };
    let (hosts, groups, secret) =
        start_stator_with(opts.replicas, 1, options, data_root.path(), |node| {
            if node == 1 {
                Box::new(TimedApply(stator_kv::KvMachine::default()))
            } else {
                Box::new(stator_kv::KvMachine::default())
            }
        })
        .await?;
    eprintln!("stator: {} replicas, 1 client, timeline ...", opts.replicas);
    let (group, members) = groups[0].clone();
    let client = ReplicaClient::new(&secret);
    let value = vec![b'v'; opts.value_bytes];
    let duration = opts.duration;
    timeline::enable(true);
    // The client runs as a spawned task, on a runtime worker, as `drive` runs the
    // benchmark's clients (stator's and Redis's alike). Awaited right here it would run
    // on the thread blocked in `block_on`, which is not a worker: every reply would then
    // cost a cross-thread wake-up from the worker reading the socket (about 20 us here),
    // which no client of the `--clients` runs pays.
    let marks = tokio::spawn(async move {
        let mut leader = None;
        let start = Instant::now();
        let mut marks = Vec::new();
        while start.elapsed() < WARMUP + duration {
            let key = format!("key:{}", rand::thread_rng().gen_range(0..KEY_SPACE));
            let cmd = stator_kv::encode_command(&[b"SET".as_slice(), key.as_bytes(), &value]);
            timeline::begin();
            let reply = client
                .execute(
                    group,
                    &members,
                    &mut leader,
                    RequestKind::Write,
                    cmd,
                    OP_DEADLINE,
                )
                .await;
            timeline::mark(Stage::ClientRecv);
            if start.elapsed() >= WARMUP && matches!(reply.as_deref(), Ok(b"+OK\r\n")) {
                marks.push(timeline::take());
            }
        }
        marks
    })
    .await?;
    timeline::enable(false);
    drop(hosts);
    let (medians, writes) = timeline::medians(&marks);
    anyhow::ensure!(
        writes > 0,
        "no write passed every stage in order ({} writes): did node 1 lose the lead?",
        marks.len()
    );
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let stages: Vec<(String, f64, f64)> = medians
        .iter()
        .map(|(stage, step, total)| (stage.name().to_string(), us(*step), us(*total)))
        .collect();
    let write_p50_us = stages[STAGES - 1].2;
    eprintln!("loopback floor: {FLOOR_ROUND_TRIPS} round trips ...");
    let loopback_round_trip_p50_us = tokio::task::spawn_blocking(loopback_round_trip_p50).await??;
    let (redis_set_p50_us, redis_set_wait_p50_us) = if opts.skip.iter().any(|s| s == "redis") {
        (None, None)
    } else {
        redis_one_client_p50s(opts).await?
    };
    Ok(TimelineReport {
        writes,
        stages,
        write_p50_us,
        loopback_round_trip_p50_us,
        redis_set_p50_us,
        redis_set_wait_p50_us,
    })
}

/// Prints a [`TimelineReport`] as a table (stderr), and as one JSON line with `json`.
pub fn print_timeline(report: &TimelineReport, json: bool) {
    eprintln!(
        "{:<36} {:>10} {:>12}",
        "stage (1 client, p50)", "step_us", "since_send"
    );
    for (name, step, total) in &report.stages {
        eprintln!("{name:<36} {step:>10.1} {total:>12.1}");
    }
    eprintln!("writes with every stage in order: {}", report.writes);
    eprintln!(
        "loopback round trip p50 (tokio, two threads): {:.1} us",
        report.loopback_round_trip_p50_us
    );
    let show = |v: Option<f64>| v.map_or("not run".to_string(), |v| format!("{v:.1} us"));
    eprintln!(
        "redis 1 client p50: SET {}, SET + WAIT 1 0 {}",
        show(report.redis_set_p50_us),
        show(report.redis_set_wait_p50_us)
    );
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("report serialises")
        );
    }
}

/// One round trip of a [`FLOOR_MESSAGE_BYTES`] message between two tokio tasks over
/// loopback TCP, each on its own thread with a single-threaded runtime: p50 in us.
fn loopback_round_trip_p50() -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; FLOOR_MESSAGE_BYTES];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await?;
            }
            Ok(())
        })
    });
    let client = std::thread::spawn(move || -> anyhow::Result<f64> {
        let mut rec = Recorder::default();
        runtime()?.block_on(async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = [7u8; FLOOR_MESSAGE_BYTES];
            for i in 0..FLOOR_ROUND_TRIPS + FLOOR_ROUND_TRIPS / 10 {
                let t0 = Instant::now();
                s.write_all(&buf).await?;
                s.read_exact(&mut buf).await?;
                // The first tenth warms up.
                if i >= FLOOR_ROUND_TRIPS / 10 {
                    rec.record(t0.elapsed());
                }
            }
            anyhow::Ok(())
        })?;
        Ok(rec.histogram.value_at_quantile(0.5) as f64)
    });
    let p50 = client
        .join()
        .map_err(|_| anyhow::anyhow!("floor client thread panicked"))??;
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(p50)
}

/// Redis, 1 client, for `opts.duration` each: `SET` alone, then `SET` + `WAIT 1 0`
/// (p50 us each); `None`s when redis-server is missing.
async fn redis_one_client_p50s(opts: &Options) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let redis = match start_redis_with_replica().await {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("redis baselines skipped: {e}");
            return Ok((None, None));
        }
    };
    let addr = redis.endpoints[0].as_str();
    eprintln!("redis: SET, 1 client ...");
    let set = Connection::connect(addr).await?;
    let driven = drive(
        vec![Box::new(RedisSetDriver { conn: set })],
        opts.value_bytes,
        opts.duration,
        &[],
    )
    .await;
    let set_p50 = driven.rec.histogram.value_at_quantile(0.5) as f64;
    eprintln!("redis: SET + WAIT 1 0, 1 client ...");
    let wait = RedisWaitDriver {
        conn: Connection::connect(addr).await?,
        frames: Vec::new(),
    };
    let driven = drive(vec![Box::new(wait)], opts.value_bytes, opts.duration, &[]).await;
    Ok((
        Some(set_p50),
        Some(driven.rec.histogram.value_at_quantile(0.5) as f64),
    ))
}

/// A plain Redis `SET` (no `WAIT`): the machine's floor for one RESP write.
struct RedisSetDriver {
    conn: Connection,
}

#[async_trait]
impl Driver for RedisSetDriver {
    async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let frame = stator_kv::encode_command(&[b"SET".as_slice(), key, value]);
        let reply = self.conn.pipeline(&frame, 1).await?;
        anyhow::ensure!(!reply[0].is_error(), "SET failed: {:?}", reply[0]);
        Ok(())
    }
}
