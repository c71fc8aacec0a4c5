//! `stator bench failover`: what a client sees when a node dies, how long until a new
//! leader and the replication factor are back, and whether an acknowledged write was lost,
//! beside a 3-member etcd whose leader is killed the same way in the same run.
//!
//! The stator cluster is `stator up` run as a child of this process; its agents are its
//! own children, so a SIGKILL of one is a real node failure. A paced client writes unique
//! keys of partition 0 through the gateway's RESP endpoint (the path a Redis client
//! takes) and times every acknowledgement and failure. Each round kills one agent (the
//! one hosting partition 0's leader, or one hosting a follower), polls the API for the new
//! leader and the restored replication factor, and waits for full health before the next
//! round (`up` starts the dead agent again after 5 s, as a new member). The figures are
//! computed from the client's record once the client has stopped; then every
//! acknowledged key is read back.

use super::figures::{median_max, ms, ratio, round1};
use super::up::{partitions_healthy, UpCluster, UpOptions};
use anyhow::{bail, Context as _};
use async_trait::async_trait;
use base64::Engine;
use serde_json::{json, Value};
use stator_api::slot::{key_slot, partition_of_slot};
use stator_harness::etcd::{put as etcd_put, EtcdOptions, LocalEtcd};
use stator_harness::pace::{PaceOptions, PacedLoad};
use stator_harness::resp::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The benchmark's service name.
const SERVICE: &str = "failover-bench";
/// Client connections, each with one write in flight. A stall of a second at a few
/// hundred writes/s leaves the paced writes queued, not dropped; on recovery they drain.
const CLIENT_CONNECTIONS: usize = 64;
/// Paced writes waiting for a free connection; a tick beyond this is dropped and counted.
const MAX_QUEUED_WRITES: usize = 16_384;
/// Acks this soon after a kill may be answers sent before it (in flight to the client);
/// the unavailability is the longest ack gap starting before this point.
const IN_FLIGHT_ACKS: Duration = Duration::from_millis(100);
/// How often the API (or etcd's status endpoint) is polled during a round.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// `stator up` must have a leader and the replication factor for every partition by then.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// A round must be back to full health by then, or the benchmark fails.
const HEAL_TIMEOUT: Duration = Duration::from_secs(90);
/// Writes before the first kill, so connections and leader caches are warm.
const WARMUP: Duration = Duration::from_secs(2);
/// Quiet time after full health before the next kill, so every round starts steady.
const SETTLE: Duration = Duration::from_secs(1);
/// Client-side guard on one write; the gateway gives up on its own after 5 s.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd client: one attempt against one member ...
const ETCD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// ... retried on the next member, as clientv3 does, until this deadline (the gateway's).
const ETCD_WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between etcd attempts: the same as stator's replication client.
const ETCD_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// etcd timing flags, passed explicitly: they are etcd's defaults.
const ETCD_HEARTBEAT_MS: u64 = 100;
const ETCD_ELECTION_TIMEOUT_MS: u64 = 1_000;
/// How long an etcd member stays down before it is started again on its data dir: long
/// enough that the survivors have elected a leader and the client is writing again.
const ETCD_DOWN: Duration = Duration::from_secs(3);
/// GETs pipelined per batch when reading every acknowledged key back.
const READBACK_BATCH: usize = 200;
/// Read-back attempts per batch (a batch hitting a leader change is read again).
const READBACK_ATTEMPTS: usize = 20;
/// etcd key prefix of the benchmark's writes.
const ETCD_PREFIX: &str = "failover/";

/// Which node a round kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KillKind {
    /// The agent hosting partition 0's leader.
    Leader,
    /// An agent hosting one of partition 0's followers.
    Follower,
    /// Leader rounds, then follower rounds.
    Both,
}

impl KillKind {
    fn name(self) -> &'static str {
        match self {
            KillKind::Leader => "leader_kill",
            KillKind::Follower => "follower_kill",
            KillKind::Both => "both",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Agents `stator up` starts.
    pub nodes: usize,
    /// Partitions of the benchmark's service (3 replicas each).
    pub partitions: u32,
    /// Kills per kind.
    pub rounds: usize,
    /// Paced writes per second.
    pub rate_per_sec: u32,
    /// Which nodes to kill.
    pub kind: KillKind,
    /// Heartbeat grace after which the server declares a node lost.
    pub node_grace_ms: u64,
    /// The service's Raft election timeout; the spec's default when `None`.
    pub election_timeout_ms: Option<u64>,
    /// Baselines to leave out ("etcd").
    pub skip: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The paced client.

#[async_trait]
trait Writer: Send + 'static {
    async fn set(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
}

/// One write as the client saw it.
struct Outcome {
    key: String,
    value: String,
    done: Instant,
    acked: bool,
}

/// Writes `key_prefix{n}` = unique values at a steady rate until stopped: a
/// [`PacedLoad`] over [`CLIENT_CONNECTIONS`] writers.
struct PacedClient(PacedLoad<Written, Box<dyn Writer>>);

/// What one paced write returns to the record.
struct Written {
    key: String,
    value: String,
    acked: bool,
}

/// Everything the client did.
struct ClientRecord {
    outcomes: Vec<Outcome>,
    /// Ticks dropped because every connection was busy and the queue full.
    dropped: u64,
}

impl ClientRecord {
    /// Acknowledgement instants, sorted.
    fn ack_times(&self) -> Vec<Instant> {
        let mut acks: Vec<Instant> = self
            .outcomes
            .iter()
            .filter(|o| o.acked)
            .map(|o| o.done)
            .collect();
        acks.sort();
        acks
    }
}

impl PacedClient {
    /// Starts writing; `make` opens a writer when every open one is busy.
    fn start<M>(make: M, rate_per_sec: u32, key_prefix: String) -> Self
    where
        M: Fn() -> Box<dyn Writer> + Send + Sync + 'static,
    {
        let options = PaceOptions {
            rate_per_sec,
            max_in_flight: CLIENT_CONNECTIONS,
            max_queued: MAX_QUEUED_WRITES,
        };
        let nonce = rand::random::<u32>();
        let load = PacedLoad::start(options, make, move |mut writer, tick| {
            let key = format!("{key_prefix}{}", tick.seq);
            let value = format!("v{}-{nonce:08x}", tick.seq);
            async move {
                let result = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    writer.set(key.as_bytes(), value.as_bytes()),
                )
                .await;
                let acked = matches!(result, Ok(Ok(())));
                (writer, Written { key, value, acked })
            }
        });
        PacedClient(load)
    }

    /// Stops pacing, lets queued writes finish, and returns the record.
    async fn finish(self) -> ClientRecord {
        let record = self.0.finish().await;
        let outcomes = record
            .completed
            .into_iter()
            .map(|c| Outcome {
                key: c.result.key,
                value: c.result.value,
                done: c.done,
                acked: c.result.acked,
            })
            .collect();
        ClientRecord {
            outcomes,
            dropped: record.missed,
        }
    }
}

/// `SET` through the gateway's RESP endpoint; reconnects after any error.
struct GatewayWriter {
    addr: String,
    conn: Option<Connection>,
}

#[async_trait]
impl Writer for GatewayWriter {
    async fn set(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Connection::connect(self.addr.as_str()).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn.call(&[b"SET".as_slice(), key, value]).await {
            Ok(stator_kv::Value::Simple(ok)) if ok == "OK" => Ok(()),
            Ok(reply) => {
                self.conn = None;
                bail!("unexpected reply {reply:?}")
            }
            Err(e) => {
                self.conn = None;
                Err(e.into())
            }
        }
    }
}

/// A put through etcd's JSON gateway, moving to the next member on failure as clientv3
/// does, until [`ETCD_WRITE_DEADLINE`].
struct EtcdWriter {
    http: reqwest::Client,
    endpoints: Arc<Vec<String>>,
    current: usize,
}

#[async_trait]
impl Writer for EtcdWriter {
    async fn set(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let endpoint = &self.endpoints[self.current % self.endpoints.len()];
            match etcd_put(&self.http, endpoint, key, value).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() >= ETCD_WRITE_DEADLINE => return Err(e),
                Err(_) => {
                    self.current = (self.current + 1) % self.endpoints.len();
                    tokio::time::sleep(ETCD_RETRY_PAUSE).await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rounds and their figures.

/// What the prober saw in one round; the client's view is joined in afterwards.
#[derive(Debug, Clone)]
struct Round {
    kind: KillKind,
    /// The killed node's name.
    node: String,
    kill_at: Instant,
    /// When the API (stator) or a surviving member (etcd) first showed another leader.
    new_leader_at: Option<Instant>,
    /// When every partition had its replication factor again without the dead node.
    rf_restored_at: Option<Instant>,
}

/// Client-observed figures of one round: the unavailability (the gap from the last ack
/// before the kill to the first ack after it, skipping answers in flight at the kill),
/// the longest gap between acks from the kill to the next round,
/// and the writes that failed meanwhile.
#[derive(Debug, Clone, Copy)]
struct ClientView {
    unavailable: Option<Duration>,
    max_gap: Option<Duration>,
    failed: usize,
}

fn client_view(record: &ClientRecord, acks: &[Instant], from: Instant, to: Instant) -> ClientView {
    let after = acks.partition_point(|t| *t < from);
    let end = acks.partition_point(|t| *t < to);
    let start = after.saturating_sub(1);
    // The longest gap starting at the last ack before the kill or at an ack in flight
    // when it struck: those are answers the dead leader had already sent.
    let in_flight_end = acks.partition_point(|t| *t <= from + IN_FLIGHT_ACKS);
    let unavailable = (start..in_flight_end.max(start + 1))
        .filter_map(|i| Some(*acks.get(i + 1)? - *acks.get(i)?))
        .max();
    let max_gap = acks[start..end.max(start)]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .or(unavailable);
    let failed = record
        .outcomes
        .iter()
        .filter(|o| !o.acked && o.done >= from && o.done < to)
        .count();
    ClientView {
        unavailable,
        max_gap,
        failed,
    }
}

/// The JSON summary of one kind's rounds. `ends[i]` is where round i's window closes.
fn summarize(
    rounds: &[Round],
    ends: &[Instant],
    record: &ClientRecord,
    acks: &[Instant],
    grace_ms: Option<u64>,
    readback: Option<&ReadBack>,
    window: (Instant, Instant),
) -> Value {
    let mut per_round = Vec::new();
    let (mut unavailable, mut max_gap, mut new_leader, mut rf) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for (round, end) in rounds.iter().zip(ends) {
        let view = client_view(record, acks, round.kill_at, *end);
        failed += view.failed;
        let since_kill = |t: Option<Instant>| t.map(|t| ms(t - round.kill_at));
        unavailable.extend(view.unavailable.map(ms));
        max_gap.extend(view.max_gap.map(ms));
        new_leader.extend(since_kill(round.new_leader_at));
        rf.extend(since_kill(round.rf_restored_at));
        per_round.push(json!({
            "node": round.node,
            "unavailable_ms": view.unavailable.map(ms),
            "max_ack_gap_ms": view.max_gap.map(ms),
            "new_leader_ms": since_kill(round.new_leader_at),
            "rf_restored_ms": since_kill(round.rf_restored_at),
            "failed_writes": view.failed,
        }));
    }
    let (unavailable_p50, unavailable_max) = median_max(unavailable);
    let (gap_p50, gap_max) = median_max(max_gap);
    let (leader_p50, leader_max) = median_max(new_leader);
    let (rf_p50, rf_max) = median_max(rf);
    let mut out = json!({
        "rounds": rounds.len(),
        "unavailable_ms_p50": unavailable_p50,
        "unavailable_ms_max": unavailable_max,
        "max_ack_gap_ms_p50": gap_p50,
        "max_ack_gap_ms_max": gap_max,
        "new_leader_ms_p50": leader_p50,
        "new_leader_ms_max": leader_max,
        "failed_writes": failed,
        "per_round": per_round,
    });
    if let Some(grace) = grace_ms {
        out["rf_restored_ms_p50"] = json!(rf_p50);
        out["rf_restored_ms_max"] = json!(rf_max);
        let after_grace = |v: f64| round1(v - grace as f64);
        out["rf_restored_after_grace_ms_p50"] = json!(rf_p50.map(after_grace));
        out["rf_restored_after_grace_ms_max"] = json!(rf_max.map(after_grace));
    }
    if let Some(rb) = readback {
        let in_window = |o: &&Outcome| o.acked && o.done >= window.0 && o.done < window.1;
        let acked: Vec<&Outcome> = record.outcomes.iter().filter(in_window).collect();
        let lost = acked
            .iter()
            .filter(|o| rb.lost.contains_key(&o.key))
            .count();
        out["acked_writes"] = json!(acked.len());
        out["lost_acked_writes"] = json!(lost);
    }
    out
}

/// Acknowledged keys not read back with their value (key -> what was read).
struct ReadBack {
    checked: usize,
    lost: HashMap<String, String>,
}

/// Runs one kill round against the stator cluster.
async fn stator_round(
    cluster: &UpCluster,
    opts: &Options,
    kind: KillKind,
) -> anyhow::Result<Round> {
    let parts = cluster.partitions().await?;
    let p0 = parts
        .iter()
        .find(|p| p["partition"] == 0)
        .context("partition 0 missing")?;
    let leader_id = p0["leader"]["node_id"].clone();
    let (victim_id, victim) = match kind {
        KillKind::Leader => (leader_id.clone(), p0["leader"]["name"].clone()),
        _ => {
            let follower = p0["members"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["node_id"] != leader_id))
                .context("partition 0 has no follower")?;
            (follower["node_id"].clone(), follower["name"].clone())
        }
    };
    let victim = victim
        .as_str()
        .context("member without a name")?
        .to_string();
    let pid = cluster.agent_pid(&victim)?;
    let kill_at = Instant::now();
    // SAFETY: kill(2) of an agent process `up` started for this benchmark.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!(
            "kill -9 {pid} ({victim}): {}",
            std::io::Error::last_os_error()
        );
    }
    let mut round = Round {
        kind,
        node: victim,
        kill_at,
        new_leader_at: None,
        rf_restored_at: None,
    };
    loop {
        if let Ok(parts) = cluster.partitions().await {
            let now = Instant::now();
            let p0 = parts.iter().find(|p| p["partition"] == 0);
            let leader = p0.map(|p| &p["leader"]["node_id"]);
            if round.new_leader_at.is_none()
                && kind == KillKind::Leader
                && leader.is_some_and(|l| !l.is_null() && *l != victim_id)
            {
                round.new_leader_at = Some(now);
            }
            if round.rf_restored_at.is_none() && partitions_healthy(&parts, Some(&victim_id)) {
                round.rf_restored_at = Some(now);
            }
        }
        if round.rf_restored_at.is_some()
            && (kind != KillKind::Leader || round.new_leader_at.is_some())
        {
            break;
        }
        if kill_at.elapsed() > HEAL_TIMEOUT {
            bail!(
                "round {kind:?} of {}: not healed within {HEAL_TIMEOUT:?}",
                round.node
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Full health: the dead agent is back (as a new member) and everything is placed.
    cluster.wait_healthy(opts.nodes, None, HEAL_TIMEOUT).await?;
    tokio::time::sleep(SETTLE).await;
    Ok(round)
}

/// Reads every acknowledged key back through the gateway.
async fn read_back_gateway(addr: &str, record: &ClientRecord) -> anyhow::Result<ReadBack> {
    let acked: Vec<&Outcome> = record.outcomes.iter().filter(|o| o.acked).collect();
    let mut lost = HashMap::new();
    let mut conn: Option<Connection> = None;
    for batch in acked.chunks(READBACK_BATCH) {
        let mut frames = Vec::new();
        for o in batch {
            frames.extend_from_slice(&stator_kv::encode_command(&[
                b"GET".as_slice(),
                o.key.as_bytes(),
            ]));
        }
        let mut attempt = 0;
        let replies = loop {
            attempt += 1;
            if conn.is_none() {
                conn = Connection::connect(addr).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                let replies = c.pipeline(&frames, batch.len()).await;
                match replies.and_then(stator_harness::resp::without_errors) {
                    Ok(replies) => break replies,
                    Err(e) if attempt >= READBACK_ATTEMPTS => {
                        return Err(
                            anyhow::Error::from(e).context("reading acknowledged writes back")
                        )
                    }
                    Err(_) => conn = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for (o, reply) in batch.iter().zip(replies) {
            if reply != stator_kv::Value::bulk(o.value.as_bytes()) {
                let seen = match reply {
                    stator_kv::Value::Bulk(Some(bytes)) => {
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                lost.insert(o.key.clone(), seen);
            }
        }
    }
    Ok(ReadBack {
        checked: acked.len(),
        lost,
    })
}

/// The whole stator side: cluster, warm-up, rounds, read-back.
async fn measure_stator(opts: &Options) -> anyhow::Result<Value> {
    eprintln!(
        "stator: `stator up` with {} nodes, {} partitions x 3 replicas, node grace {} ms ...",
        opts.nodes, opts.partitions, opts.node_grace_ms
    );
    let mut spec_lines = format!(
        "kind = \"replicated\"\npartitions = {}\nreplicas = 3\n\
         resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n",
        opts.partitions
    );
    if let Some(timeout_ms) = opts.election_timeout_ms {
        spec_lines.push_str(&format!("election_timeout_ms = {timeout_ms}\n"));
    }
    let cluster = UpCluster::start(&UpOptions {
        nodes: opts.nodes,
        node_grace_ms: opts.node_grace_ms,
        service: SERVICE.into(),
        spec_lines,
        apply_at_start: true,
        start_timeout: CLUSTER_START_TIMEOUT,
        env: Vec::new(),
    })
    .await?;
    let result = async {
        cluster
            .wait_healthy(opts.nodes, None, CLUSTER_START_TIMEOUT)
            .await?;
        cluster.wait_resp(CLUSTER_START_TIMEOUT).await?;
        stator_rounds(&cluster, opts).await
    }
    .await;
    cluster.stop().await;
    result
}

async fn stator_rounds(cluster: &UpCluster, opts: &Options) -> anyhow::Result<Value> {
    let tag = (0u32..)
        .map(|i| format!("fo{i}"))
        .find(|t| partition_of_slot(opts.partitions, key_slot(t.as_bytes())) == 0)
        .expect("some tag hashes to partition 0");
    let addr = cluster.resp_addr.clone();
    let writers = move || {
        Box::new(GatewayWriter {
            addr: addr.clone(),
            conn: None,
        }) as Box<dyn Writer>
    };
    let election_timeout_ms = opts
        .election_timeout_ms
        .unwrap_or(stator_api::spec::DEFAULT_ELECTION_TIMEOUT_MS);
    let client_start = Instant::now();
    let client = PacedClient::start(writers, opts.rate_per_sec, format!("{{{tag}}}:"));
    tokio::time::sleep(WARMUP).await;
    let kinds: Vec<KillKind> = match opts.kind {
        KillKind::Both => vec![KillKind::Leader, KillKind::Follower],
        k => vec![k],
    };
    let mut rounds = Vec::new();
    let outcome: anyhow::Result<()> = async {
        for &kind in &kinds {
            for i in 0..opts.rounds {
                let round = stator_round(cluster, opts, kind).await?;
                eprintln!(
                    "  stator {} round {}/{}: killed {}, new leader seen after {:?}, replication factor after {:?}",
                    kind.name(),
                    i + 1,
                    opts.rounds,
                    round.node,
                    round.new_leader_at.map(|t| t - round.kill_at),
                    round.rf_restored_at.map(|t| t - round.kill_at)
                );
                rounds.push(round);
            }
        }
        Ok(())
    }
    .await;
    let client_end = Instant::now();
    let record = client.finish().await;
    outcome?;
    eprintln!(
        "  reading {} acknowledged writes back ...",
        record.ack_times().len()
    );
    let readback = read_back_gateway(&cluster.resp_addr, &record).await?;
    let acks = record.ack_times();
    let mut out = json!({
        "client": format!("gateway RESP endpoint, {CLIENT_CONNECTIONS} connections, paced"),
        "nodes": opts.nodes,
        "partitions": opts.partitions,
        "replicas": 3,
        "node_grace_ms": opts.node_grace_ms,
        "election_timeout_ms": election_timeout_ms,
        "rate_per_sec": opts.rate_per_sec,
        "warmup_max_ack_gap_ms": client_view(&record, &acks, client_start, client_start + WARMUP).max_gap.map(ms),
        "dropped_ticks": record.dropped,
        "read_back": readback.checked,
    });
    if !readback.lost.is_empty() {
        let sample: Vec<_> = readback.lost.iter().take(5).collect();
        eprintln!("  LOST acknowledged writes, e.g. {sample:?}");
    }
    for &kind in &kinds {
        let of_kind: Vec<Round> = rounds.iter().filter(|r| r.kind == kind).cloned().collect();
        let ends = round_ends(&rounds, &of_kind, client_end);
        let window = (
            if kind == kinds[0] {
                client_start
            } else {
                of_kind[0].kill_at
            },
            *ends.last().expect("at least one round"),
        );
        out[kind.name()] = summarize(
            &of_kind,
            &ends,
            &record,
            &acks,
            Some(opts.node_grace_ms),
            Some(&readback),
            window,
        );
    }
    Ok(out)
}

/// Where each of `of_kind`'s windows ends: at the next round's kill (of any kind), or at
/// `last` for the final round.
fn round_ends(all: &[Round], of_kind: &[Round], last: Instant) -> Vec<Instant> {
    of_kind
        .iter()
        .map(|r| {
            all.iter()
                .map(|o| o.kill_at)
                .filter(|t| *t > r.kill_at)
                .min()
                .unwrap_or(last)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The etcd baseline.

async fn etcd_round(cluster: &mut LocalEtcd, http: &reqwest::Client) -> anyhow::Result<Round> {
    let (victim, victim_id) = cluster.leader(http).await.context("etcd has no leader")?;
    let kill_at = Instant::now();
    cluster.kill(victim).context("kill -9 of the etcd leader")?;
    let mut round = Round {
        kind: KillKind::Leader,
        node: format!("e{victim}"),
        kill_at,
        new_leader_at: None,
        rf_restored_at: None,
    };
    while round.new_leader_at.is_none() {
        for i in (0..cluster.endpoints().len()).filter(|i| *i != victim) {
            if let Some((_, leader)) = cluster.status(http, i).await {
                if leader != "0" && leader != victim_id {
                    round.new_leader_at = Some(Instant::now());
                }
            }
        }
        if kill_at.elapsed() > HEAL_TIMEOUT {
            bail!("etcd elected no new leader within {HEAL_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(ETCD_DOWN.saturating_sub(kill_at.elapsed())).await;
    cluster.restart(victim)?;
    let started = Instant::now();
    while !cluster.healthy(http).await {
        if started.elapsed() > HEAL_TIMEOUT {
            bail!("restarted etcd member e{victim} did not rejoin within {HEAL_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL * 5).await;
    }
    tokio::time::sleep(SETTLE).await;
    Ok(round)
}

async fn read_back_etcd(endpoint: &str, record: &ClientRecord) -> anyhow::Result<ReadBack> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut end = ETCD_PREFIX.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let body: Value = reqwest::Client::new()
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&json!({ "key": b64.encode(ETCD_PREFIX), "range_end": b64.encode(&end) }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut stored = HashMap::new();
    for kv in body["kvs"].as_array().into_iter().flatten() {
        let decode = |field: &str| -> Option<String> {
            let bytes = b64.decode(kv[field].as_str()?).ok()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        };
        if let (Some(k), Some(v)) = (decode("key"), decode("value")) {
            stored.insert(k, v);
        }
    }
    let mut lost = HashMap::new();
    let mut checked = 0;
    for o in record.outcomes.iter().filter(|o| o.acked) {
        checked += 1;
        if stored.get(&o.key) != Some(&o.value) {
            lost.insert(
                o.key.clone(),
                stored.get(&o.key).cloned().unwrap_or_default(),
            );
        }
    }
    Ok(ReadBack { checked, lost })
}

async fn measure_etcd(opts: &Options) -> anyhow::Result<Value> {
    eprintln!(
        "etcd: 3 members, heartbeat {ETCD_HEARTBEAT_MS} ms, election timeout {ETCD_ELECTION_TIMEOUT_MS} ms ..."
    );
    let mut cluster = LocalEtcd::start(EtcdOptions {
        heartbeat_ms: Some(ETCD_HEARTBEAT_MS),
        election_timeout_ms: Some(ETCD_ELECTION_TIMEOUT_MS),
        token: "stator-failover-bench",
        start_timeout: CLUSTER_START_TIMEOUT,
        ..EtcdOptions::members(3)
    })
    .await?;
    let http = reqwest::Client::builder()
        .timeout(ETCD_ATTEMPT_TIMEOUT)
        .pool_max_idle_per_host(CLIENT_CONNECTIONS)
        .build()?;
    let endpoints = Arc::new(cluster.endpoints().to_vec());
    // Each writer starts on the next member, spreading the load as before a failure.
    let (opened, writer_http) = (AtomicUsize::new(0), http.clone());
    let writers = move || {
        Box::new(EtcdWriter {
            http: writer_http.clone(),
            endpoints: endpoints.clone(),
            current: opened.fetch_add(1, Ordering::Relaxed),
        }) as Box<dyn Writer>
    };
    let client_start = Instant::now();
    let client = PacedClient::start(writers, opts.rate_per_sec, ETCD_PREFIX.to_string());
    tokio::time::sleep(WARMUP).await;
    let mut rounds = Vec::new();
    let mut outcome = Ok(());
    for i in 0..opts.rounds {
        match etcd_round(&mut cluster, &http).await {
            Ok(round) => {
                eprintln!(
                    "  etcd leader_kill round {}/{}: killed {}, new leader seen after {:?}",
                    i + 1,
                    opts.rounds,
                    round.node,
                    round.new_leader_at.map(|t| t - round.kill_at)
                );
                rounds.push(round);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let client_end = Instant::now();
    let record = client.finish().await;
    outcome?;
    let readback = read_back_etcd(&cluster.endpoints()[0], &record).await?;
    let acks = record.ack_times();
    let ends = round_ends(&rounds, &rounds, client_end);
    Ok(json!({
        "members": 3,
        "heartbeat_ms": ETCD_HEARTBEAT_MS,
        "election_timeout_ms": ETCD_ELECTION_TIMEOUT_MS,
        "client": format!("JSON gateway, {CLIENT_CONNECTIONS} connections, paced, next member on failure"),
        "rate_per_sec": opts.rate_per_sec,
        "warmup_max_ack_gap_ms": client_view(&record, &acks, client_start, client_start + WARMUP).max_gap.map(ms),
        "dropped_ticks": record.dropped,
        "read_back": readback.checked,
        "leader_kill": summarize(&rounds, &ends, &record, &acks, None, Some(&readback), (client_start, client_end)),
    }))
}

// ---------------------------------------------------------------------------------------
// The run and its report.

/// The documented figures printed beside the measured ones (not measured here).
fn anchors() -> Value {
    json!({
        "etcd_default_election_timeout_ms": 1000,
        "redis_sentinel_default_down_after_ms": 30000,
        "k8s_statefulset_node_failure": {
            "node_monitor_grace_ms": "40000-50000",
            "not_ready_toleration_ms": 300000,
            "reported_outage": "about 5-6 min (kubernetes/kubernetes 54368, 74947, 105341)"
        }
    })
}

/// Runs the stator rounds and the etcd baseline; returns the report object.
pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let stator = measure_stator(opts).await?;
    let etcd = if opts.skip.iter().any(|s| s == "etcd") {
        json!({ "skipped": "--skip etcd" })
    } else if opts.kind == KillKind::Follower {
        json!({ "skipped": "only leader kills are compared with etcd" })
    } else {
        match measure_etcd(opts).await {
            Ok(v) => v,
            Err(e) => json!({ "skipped": e.to_string() }),
        }
    };
    let ratio = |field: &str| -> Value {
        let s = stator["leader_kill"][field].as_f64();
        let e = etcd["leader_kill"][field].as_f64();
        match (s, e) {
            (Some(s), Some(e)) => json!(ratio(e, s)),
            _ => Value::Null,
        }
    };
    let ratios = json!({
        "unavailable_p50_etcd_over_stator": ratio("unavailable_ms_p50"),
        "unavailable_max_etcd_over_stator": ratio("unavailable_ms_max"),
        "new_leader_p50_etcd_over_stator": ratio("new_leader_ms_p50"),
    });
    Ok(json!({ "stator": stator, "etcd": etcd, "ratios": ratios, "anchors": anchors() }))
}

/// Prints the table on stderr and, with `json`, the report on stdout's last line.
pub fn print_report(report: &Value, json: bool) {
    let s = &report["stator"];
    eprintln!();
    eprintln!(
        "failover: stator {} nodes, {} partitions x 3 replicas, Raft election timeout {} ms, node grace {} ms;",
        s["nodes"], s["partitions"], s["election_timeout_ms"], s["node_grace_ms"]
    );
    eprintln!(
        "          client {} writes/s to partition 0 through the gateway RESP endpoint; etcd client the same rate",
        s["rate_per_sec"]
    );
    eprintln!(
        "{:<7} {:<14} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>5}",
        "system",
        "kill",
        "rounds",
        "unav_p50",
        "unav_max",
        "gap_max",
        "ldr_p50",
        "ldr_max",
        "rf_p50",
        "rf_max",
        "failed",
        "acked",
        "lost"
    );
    let cell = |v: &Value| match v.as_f64() {
        Some(f) => format!("{f:.0}"),
        None => "-".into(),
    };
    let row = |system: &str, kind: &str, r: &Value| {
        eprintln!(
            "{:<7} {:<14} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>5}",
            system,
            kind,
            r["rounds"].to_string(),
            cell(&r["unavailable_ms_p50"]),
            cell(&r["unavailable_ms_max"]),
            cell(&r["max_ack_gap_ms_max"]),
            cell(&r["new_leader_ms_p50"]),
            cell(&r["new_leader_ms_max"]),
            cell(&r["rf_restored_ms_p50"]),
            cell(&r["rf_restored_ms_max"]),
            r["failed_writes"].to_string(),
            r["acked_writes"].to_string(),
            r["lost_acked_writes"].to_string()
        )
    };
    for kind in ["leader_kill", "follower_kill"] {
        if s[kind].is_object() {
            row("stator", kind, &s[kind]);
        }
    }
    let e = &report["etcd"];
    match e["skipped"].as_str() {
        Some(why) => eprintln!("{:<7} {:<14} skipped: {why}", "etcd", "leader_kill"),
        None => row("etcd", "leader_kill", &e["leader_kill"]),
    }
    eprintln!("  (all times in ms from the SIGKILL; unav = last ack before the kill to first ack after it,");
    eprintln!("   answers in flight at the kill (acks within {IN_FLIGHT_ACKS:?}) skipped;");
    eprintln!("   gap_max = longest gap between acks until the next round; ldr = new leader visible in the");
    eprintln!(
        "   API (stator: reported by agent heartbeats, every 500 ms) or in a survivor's status (etcd);"
    );
    eprintln!(
        "   rf = every partition at 3 live replicas without the dead node, includes the {} ms grace)",
        s["node_grace_ms"]
    );
    eprintln!(
        "anchor  etcd default election timeout          1000 ms (\"about an election timeout to elect a leader\")"
    );
    eprintln!("anchor  Redis Sentinel down-after-milliseconds 30000 ms (default)");
    eprintln!(
        "anchor  Kubernetes StatefulSet, node failure    40-50 s node-monitor grace + 300 s toleration, then replacement"
    );
    if let Some(r) = report["ratios"]["unavailable_p50_etcd_over_stator"].as_f64() {
        eprintln!("ratio   unavailable p50 etcd / stator = {r}");
    }
    if json {
        println!("{report}");
    }
}
