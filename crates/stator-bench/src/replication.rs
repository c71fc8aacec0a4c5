//! `stator bench replication`: write latency and throughput of replicated partitions over
//! real TCP on loopback, beside etcd and Redis-with-WAIT measured in the same run.
//!
//! Each stator host runs in its own thread with its own single-threaded tokio runtime
//! (as separate processes would, minus the exec), the clients in another runtime. Every
//! client has its own exactly-once session and keeps one request in flight: a `SET` of a
//! random key with a `value_bytes` value through the built-in `kv` state machine, or
//! with `--op get` a linearizable `GET`.
//!
//! stator's own baselines run in the same run on a second cluster: `stator-unbatched`
//! proposes every write as its own log entry (no write batching at the leader), and for
//! `GET`, `stator-readindex` takes a read-index quorum round instead of the leader lease.

use super::hosts::HostThreads;
use super::latency::{Recorder, Run};
use async_trait::async_trait;
use rand::Rng;
use stator_api::ids::GroupId;
use stator_api::slot::{key_slot, partition_of_slot};
use stator_api::spec::Durability;
use stator_harness::resp::Connection;
use stator_harness::servers::{etcd_put, start_etcd, start_redis_with_replica};
use stator_replication::{GroupOptions, ReplicaClient, RequestKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct keys written; enough that hot keys don't matter, few enough to stay in cache.
const KEY_SPACE: u64 = 10_000;
/// Load before measuring starts (connections, elections, allocator warm-up).
const WARMUP: Duration = Duration::from_secs(1);
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
    /// Systems to skip ("etcd", "redis-wait", "redis", "stator-unbatched",
    /// "stator-readindex").
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

async fn drive(
    drivers: Vec<Box<dyn Driver>>,
    value_bytes: usize,
    duration: Duration,
) -> (Recorder, Duration) {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + duration;
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
    (total, duration)
}

/// Each partition's group and its members' addresses.
type Groups = Vec<(GroupId, Vec<String>)>;

struct StatorDriver {
    client: ReplicaClient,
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
    let secret = format!("{:032x}", rand::random::<u128>());
    let groups: Vec<GroupId> = (0..partitions).map(|p| GroupId::new(1, p)).collect();
    let (threads, hosts) = HostThreads::start(replicas as u64, &secret, Some(data_root)).await?;
    let members: BTreeMap<u64, String> = hosts
        .iter()
        .map(|(id, host)| (*id, host.addr().to_string()))
        .collect();
    let all_groups = groups.clone();
    threads
        .run_on_all(move |_, host| {
            let groups = all_groups.clone();
            async move {
                for g in &groups {
                    host.create_group(*g, options, Box::new(stator_kv::KvMachine::default()))
                        .await?;
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

async fn measure_stator(
    system: &str,
    opts: &Options,
    clients: usize,
    groups: &Arc<Groups>,
    secret: &str,
) -> Run {
    let drivers: Vec<Box<dyn Driver>> = (0..clients)
        .map(|_| {
            Box::new(StatorDriver {
                client: ReplicaClient::new(secret),
                groups: groups.clone(),
                leaders: vec![None; groups.len()],
                op: opts.op,
            }) as Box<dyn Driver>
        })
        .collect();
    let (rec, window) = drive(drivers, opts.value_bytes, opts.duration).await;
    let mut run = Run::measured(
        system,
        opts.replicas,
        clients,
        opts.value_bytes,
        &rec,
        window,
    );
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
            runs.push(measure_stator(system, opts, clients, &groups, &secret).await);
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
    measure_baseline(
        runs,
        opts,
        baseline,
        endpoints,
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
/// keeps the started system alive until this returns.
async fn measure_baseline<E, F, Fut>(
    runs: &mut Vec<Run>,
    opts: &Options,
    baseline: Baseline,
    endpoints: Result<Vec<String>, E>,
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
        let (rec, window) = drive(drivers, opts.value_bytes, opts.duration).await;
        runs.push(Run::measured(
            system,
            replicas,
            clients,
            opts.value_bytes,
            &rec,
            window,
        ));
    }
    Ok(())
}
