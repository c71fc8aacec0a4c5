//! The nemesis: a seeded schedule of faults (pure) and their injection into the cluster.
//!
//! One fault at a time, each healed and the cluster back to health before the next, so a
//! majority of every partition group survives throughout (the guarantee's precondition).

use super::cluster::{self, LocalCluster};
use super::firewall::{self, Firewall};
use super::netns::Netns;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use stator_api::views::{NodeState, NodeView};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// Quiet time between a recovered cluster and the next fault, in ms (low, high).
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// How long a paused agent stays stopped, in ms: both sides of the 3 s heartbeat grace,
/// so some pauses end with the node declared lost and rejoining.
const PAUSE_MS: (u64, u64) = (1_000, 6_000);
/// How long a partition holds, in ms: past several election timeouts.
const PARTITION_MS: (u64, u64) = (2_000, 6_000);
/// Time allowed for the cluster to heal after a fault before the run gives up injecting.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the nemesis reads the nodes while it waits for an agent.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Time allowed for a drain to move every replica away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every agent stays down in a `restart` fault: well inside the server's 3 s
/// heartbeat grace, so each agent rejoins under its own id and reopens its stores (a
/// node declared lost first would come back under a new id, its stores deleted).
pub const RESTART_ALL_DOWN: Duration = Duration::from_millis(500);
/// When to read which ids the restarted agents came back under: past the server's
/// heartbeat grace (3 s), so a node that missed it shows as lost or under a new id.
const RESTART_ALL_SETTLE: Duration = Duration::from_secs(4);
/// How long every agent stays down in a `restart-late` fault: past the server's
/// heartbeat grace ([`stator_server::config::DEFAULT_NODE_GRACE_MS`], 3 s) by a margin
/// for a reconcile pass on a loaded machine, so the server declares every node lost
/// first and each comes back through the late rejoin
/// ([`stator_server::reconcile::ReconcileAction::MarkNodeRejoined`]) with its stores.
pub const RESTART_LATE_DOWN: Duration =
    Duration::from_millis(stator_server::config::DEFAULT_NODE_GRACE_MS + 2_000);

/// The kinds of fault, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL an agent (a leader's); the supervisor starts it again after `up`'s delay
    /// and it rejoins as itself while a durable partition still names it (its member
    /// not replaced yet), else as a new member.
    Kill,
    /// SIGSTOP an agent (a leader's) for a while, then SIGCONT.
    Pause,
    /// Cut the replica network: isolate a leader, split majority/minority, or a bridge.
    Partition,
    /// Drain a node (live migration), then kill it so it returns as a new member.
    Membership,
    /// SIGKILL the server holding the controller lease (several servers on etcd); it is
    /// started again after a few seconds.
    Server,
    /// SIGKILL every agent at once and start them again: every replica of every group
    /// dies together, so only what is on disk survives (needs `--durability disk`).
    Restart,
    /// As `restart`, but the agents stay down past the server's heartbeat grace: every
    /// node is declared lost first and rejoins late under its own id, with its stores
    /// (needs `--durability disk`).
    #[serde(rename = "restart-late")]
    RestartLate,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Membership,
        FaultKind::Server,
        FaultKind::Restart,
        FaultKind::RestartLate,
    ];

    /// Whether the fault kills every replica at once (only `disk` survives it).
    pub fn kills_every_replica(self) -> bool {
        matches!(self, FaultKind::Restart | FaultKind::RestartLate)
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Membership => "membership",
            FaultKind::Server => "server",
            FaultKind::Restart => "restart",
            FaultKind::RestartLate => "restart-late",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> anyhow::Result<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--faults: unknown fault {name:?}; use kill, pause, partition, membership, server, restart, restart-late"
                )
            })
    }
}

/// The shape of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionShape {
    /// A leader's node alone on one side.
    IsolateLeader,
    /// A minority (holding a leader) cut from the majority.
    MajorityMinority,
    /// Two halves that cannot talk, and one node that talks to both.
    Bridge,
}

/// One fault the schedule chose; targets are picked from the live cluster with `pick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    /// What to do.
    pub kind: FaultKind,
    /// For partitions.
    pub shape: PartitionShape,
    /// How long a pause or partition holds.
    pub hold: Duration,
    /// Quiet time before the fault.
    pub gap: Duration,
    /// Random number that picks targets among candidates.
    pub pick: u64,
}

/// The seeded fault schedule: kinds come from a shuffled deck of the enabled kinds, so
/// every kind appears once in each round of `kinds.len()` faults.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    deck: Vec<FaultKind>,
}

impl Schedule {
    /// A schedule over `kinds` (not empty) from `seed`.
    pub fn new(seed: u64, kinds: Vec<FaultKind>) -> Schedule {
        assert!(
            !kinds.is_empty(),
            "a schedule needs at least one fault kind"
        );
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            deck: Vec::new(),
        }
    }

    /// The next fault.
    pub fn next_fault(&mut self) -> FaultPlan {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.deck.shuffle(&mut self.rng);
        }
        let kind = self.deck.pop().expect("refilled above");
        let shape = match self.rng.gen_range(0..3) {
            0 => PartitionShape::IsolateLeader,
            1 => PartitionShape::MajorityMinority,
            _ => PartitionShape::Bridge,
        };
        let hold_ms = match kind {
            FaultKind::Pause => self.rng.gen_range(PAUSE_MS.0..=PAUSE_MS.1),
            FaultKind::Partition => self.rng.gen_range(PARTITION_MS.0..=PARTITION_MS.1),
            FaultKind::Kill
            | FaultKind::Membership
            | FaultKind::Server
            | FaultKind::Restart
            | FaultKind::RestartLate => 0,
        };
        FaultPlan {
            kind,
            shape,
            hold: Duration::from_millis(hold_ms),
            gap: Duration::from_millis(self.rng.gen_range(GAP_MS.0..=GAP_MS.1)),
            pick: self.rng.gen(),
        }
    }
}

/// What happened to one fault, for the log and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Kind of fault.
    pub kind: FaultKind,
    /// Targets and shape, in words.
    pub detail: String,
    /// Seconds since the clients started, when injected.
    pub at_s: f64,
    /// Whether it was actually injected (a target could be missing).
    pub injected: bool,
    /// Seconds from the heal (SIGCONT, rules removed, veth up; for kills, the SIGKILL:
    /// the supervisor restarts the process by itself) to a healthy cluster; `None` if it
    /// did not recover.
    pub recovery_s: Option<f64>,
}

/// The sides of a partition: names on the left cannot reach names on the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// One side.
    pub left: Vec<String>,
    /// The other side.
    pub right: Vec<String>,
    /// Words for the log.
    pub detail: String,
}

/// Chooses the sides of a partition of `nodes` (sorted, alive) given a leader's node.
/// Pure, so its shapes are unit-tested.
pub fn plan_split(shape: PartitionShape, nodes: &[String], leader: &str, pick: u64) -> Split {
    let mut rng = StdRng::seed_from_u64(pick);
    let mut others: Vec<String> = nodes.iter().filter(|n| *n != leader).cloned().collect();
    others.shuffle(&mut rng);
    match shape {
        PartitionShape::IsolateLeader => Split {
            detail: format!("isolate leader node {leader}"),
            left: vec![leader.to_string()],
            right: others,
        },
        PartitionShape::MajorityMinority => {
            // The leader plus enough others for a minority: (n - 1) / 2 nodes.
            let minority_size = (nodes.len().saturating_sub(1) / 2).max(1);
            let mut minority = vec![leader.to_string()];
            minority.extend(others.drain(..(minority_size - 1).min(others.len())));
            Split {
                detail: format!("minority {minority:?} (has a leader) | majority {others:?}"),
                left: minority,
                right: others,
            }
        }
        PartitionShape::Bridge => {
            // [leader, a ...] | bridge | [b ...]: the bridge sees both sides.
            let bridge = others.pop().unwrap_or_default();
            // The leader's side gets half of the non-bridge nodes, the leader included.
            let take = others.len().div_ceil(2).saturating_sub(1);
            let mut left = vec![leader.to_string()];
            left.extend(others.drain(..take));
            Split {
                detail: format!("bridge {bridge} between {left:?} and {others:?}"),
                left,
                right: others,
            }
        }
    }
}

/// What the server shows of a killed agent's name while the nemesis waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comeback {
    /// Registered under a new id.
    NewMember {
        /// The new id.
        id: u64,
    },
    /// Registered again under its old id by the restarted process: a lost node whose
    /// durable replicas a partition still names rejoins as itself
    /// (`MarkNodeRejoined`), and so does one back within the heartbeat grace.
    Itself {
        /// The id, unchanged.
        id: u64,
    },
    /// Not registered again yet: what the server shows, in words.
    NotYet {
        /// The node's registrations and the restarted process, for the log.
        seen: String,
    },
}

/// Whether the agent `name`, registered as `old` when it was killed, is registered
/// again, given the server's `nodes` and how long ago its restarted process started
/// (`None` while the supervisor has not started it again), read before `nodes`. Pure.
///
/// A new id is a new registration. The old id alive is one only if the server heard
/// from the node after the restarted process started: its last heartbeat (a rejoin
/// counts as one) is younger than the process. Otherwise it is the killed incarnation's
/// record, alive until the server's grace runs out.
pub fn comeback(
    name: &str,
    old: Option<u64>,
    nodes: &[NodeView],
    restarted_ms_ago: Option<u64>,
) -> Comeback {
    let mine: Vec<&NodeView> = nodes.iter().filter(|n| n.name == name).collect();
    let alive = mine.iter().find(|n| cluster::alive(n));
    match alive {
        Some(node) if Some(node.id) != old => return Comeback::NewMember { id: node.id },
        Some(node) => {
            if let (Some(heard), Some(started)) = (node.last_heartbeat_age_ms, restarted_ms_ago) {
                if heard < started {
                    return Comeback::Itself { id: node.id };
                }
            }
        }
        None => {}
    }
    let records: Vec<String> = mine
        .iter()
        .map(|n| {
            let heard = n
                .last_heartbeat_age_ms
                .map_or(String::new(), |ms| format!(", last heartbeat {ms} ms ago"));
            format!("id {} {:?}{heard}", n.id, n.state)
        })
        .collect();
    let process = match restarted_ms_ago {
        Some(ms) => format!("its agent restarted {ms} ms ago"),
        None => "its agent not started again yet".into(),
    };
    let records = if records.is_empty() {
        "no registration".to_string()
    } else {
        records.join("; ")
    };
    Comeback::NotYet {
        seen: format!(
            "{records} (killed as id {}); {process}",
            old.map_or("?".into(), |id| id.to_string())
        ),
    }
}

/// The first alive node the server has not heard from since a heal `since_heal` ago
/// (its last heartbeat is older), in words; `None` when it heard from every one. Such a
/// node may have been silent through the fault and be declared lost in a moment, so the
/// cluster's health is not settled yet. Pure.
pub fn unheard_since(nodes: &[NodeView], since_heal: Duration) -> Option<String> {
    let since_ms = since_heal.as_millis() as u64;
    nodes
        .iter()
        .filter(|n| cluster::alive(n))
        .find(|n| n.last_heartbeat_age_ms.is_none_or(|age| age >= since_ms))
        .map(|n| {
            let heard = n
                .last_heartbeat_age_ms
                .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
            format!(
                "{} (id {}) not heard from since the heal {since_ms} ms ago (last heartbeat {heard})",
                n.name, n.id
            )
        })
}

/// How partitions are made.
#[derive(Clone, Copy)]
pub enum Network<'a> {
    /// iptables rules on loopback matched per agent cgroup.
    Firewall(&'a Firewall),
    /// Agents in network namespaces on a bridge.
    Netns(&'a Netns),
}

/// Injects faults into a cluster.
pub struct Nemesis<'a> {
    cluster: &'a LocalCluster,
    network: Option<Network<'a>>,
    started: Instant,
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid of an agent child of our `up`.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        anyhow::bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGCONT when dropped, so a paused agent is resumed on every path.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

/// Removes every partition rule (and sets every veth up) when dropped.
struct Heal<'a>(Network<'a>);

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        let healed = match self.0 {
            Network::Firewall(firewall) => firewall.set(&BTreeSet::new()),
            Network::Netns(netns) => netns.heal(),
        };
        if let Err(e) = healed {
            eprintln!("chaos: healing the partition failed: {e:#}");
        }
    }
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `cluster`; `network` is needed for partitions.
    pub fn new(cluster: &'a LocalCluster, network: Option<Network<'a>>, started: Instant) -> Self {
        Nemesis {
            cluster,
            network,
            started,
        }
    }

    /// Names of the nodes leading a partition, sorted.
    async fn leaders(&self) -> Vec<String> {
        let mut leaders: Vec<String> = self
            .cluster
            .partitions()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.leader.map(|l| l.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        leaders.sort();
        leaders
    }

    /// Each partition's (leader node, term).
    async fn leadership(&self) -> BTreeMap<u32, (String, u64)> {
        self.cluster
            .partitions()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.leader.map(|l| (p.partition, (l.name, l.term))))
            .collect()
    }

    /// The id of the alive node named `name`.
    async fn node_id(&self, name: &str) -> Option<u64> {
        self.cluster
            .nodes()
            .await
            .ok()?
            .into_iter()
            .find(|n| n.name == name && cluster::alive(n))
            .map(|n| n.id)
    }

    /// Waits until the agent `name`, SIGKILLed as process `killed_pid` while registered
    /// as `old`, is registered again by its restarted process: under a new id, or under
    /// `old` (it rejoins as itself while a durable partition still names it, or when it
    /// is back within the heartbeat grace). Says what it saw, in words for the fault's
    /// detail; at [`RECOVERY_TIMEOUT`], what the server and the supervisor showed last.
    async fn wait_back(&self, name: &str, killed_pid: u32, old: Option<u64>) -> String {
        let start = Instant::now();
        let mut seen_lost = false;
        let mut seen = String::from("the server's node list never answered");
        while start.elapsed() < RECOVERY_TIMEOUT {
            // The process's age first: a heartbeat the server saw after this read is
            // surely younger than the process (see `comeback`).
            let restarted_ms_ago = self
                .cluster
                .agent_pid(name)
                .filter(|pid| *pid != killed_pid)
                .and_then(cluster::process_age_ms);
            if let Ok(nodes) = self.cluster.nodes().await {
                seen_lost |= nodes
                    .iter()
                    .any(|n| Some(n.id) == old && n.state == NodeState::Lost);
                match comeback(name, old, &nodes, restarted_ms_ago) {
                    Comeback::NotYet { seen: now } => seen = now,
                    back => return self.say_back(name, &back, start, seen_lost),
                }
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        }
        let words = format!("NOT back within {RECOVERY_TIMEOUT:?}: {seen}");
        self.log(&format!("{name} is {words}"));
        words
    }

    /// Logs and returns, in words, how `name` came back (`back` is not `NotYet`).
    fn say_back(&self, name: &str, back: &Comeback, start: Instant, seen_lost: bool) -> String {
        let took = start.elapsed().as_secs_f64();
        let lost_first = if seen_lost {
            ", declared lost first"
        } else {
            ""
        };
        let words = match back {
            Comeback::NewMember { id } => {
                format!("back as a new member (id {id}) after {took:.1}s{lost_first}")
            }
            Comeback::Itself { id } => {
                format!(
                    "back as itself (id {id}, its stores reopened) after {took:.1}s{lost_first}"
                )
            }
            Comeback::NotYet { seen } => format!("not back yet: {seen}"),
        };
        self.log(&format!("{name} is {words}"));
        words
    }

    /// Sleeps `hold`, reading the nodes every [`WATCH_INTERVAL`]; whether `old`, the id
    /// of `name`, showed as lost meanwhile.
    async fn sleep_watching_lost(&self, name: &str, old: Option<u64>, hold: Duration) -> bool {
        let until = Instant::now() + hold;
        let mut seen_lost = false;
        while Instant::now() < until {
            if let Ok(nodes) = self.cluster.nodes().await {
                seen_lost |= nodes
                    .iter()
                    .any(|n| n.name == name && Some(n.id) == old && n.state == NodeState::Lost);
            }
            tokio::time::sleep(WATCH_INTERVAL.min(until.saturating_duration_since(Instant::now())))
                .await;
        }
        seen_lost
    }

    /// A leader's node (picked with `pick`), or any agent if no partition has a leader.
    async fn leader_target(&self, pick: u64) -> Option<String> {
        let leaders = self.leaders().await;
        if !leaders.is_empty() {
            return Some(leaders[(pick % leaders.len() as u64) as usize].clone());
        }
        let agents: Vec<String> = self.cluster.agent_pids().into_keys().collect();
        (!agents.is_empty()).then(|| agents[(pick % agents.len() as u64) as usize].clone())
    }

    fn pid_of(&self, node: &str) -> anyhow::Result<u32> {
        self.cluster
            .agent_pid(node)
            .ok_or_else(|| anyhow::anyhow!("no agent process for {node}"))
    }

    fn log(&self, message: &str) {
        eprintln!(
            "chaos [{:7.2}s] {message}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Injects `plan`, heals it, and waits for the cluster to be healthy again.
    pub async fn run_fault(&self, plan: &FaultPlan) -> anyhow::Result<FaultRecord> {
        let at_s = self.started.elapsed().as_secs_f64();
        let before = self.leadership().await;
        let (injected, mut detail, healed_at) = match plan.kind {
            FaultKind::Kill => self.kill(plan).await?,
            FaultKind::Pause => self.pause(plan).await?,
            FaultKind::Partition => self.partition(plan).await?,
            FaultKind::Membership => self.membership(plan).await?,
            FaultKind::Server => self.server().await?,
            FaultKind::Restart => self.restart_all(false).await?,
            FaultKind::RestartLate => self.restart_all(true).await?,
        };
        let recovery_s = match self.wait_recovered(healed_at).await {
            Ok(_) => {
                let took = healed_at.elapsed();
                self.log(&format!(
                    "healthy again {:.1}s after healing the {}",
                    took.as_secs_f64(),
                    plan.kind.name()
                ));
                Some(took.as_secs_f64())
            }
            Err(why) => {
                self.log(&format!(
                    "NOT healthy {RECOVERY_TIMEOUT:?} after the {}: {why}",
                    plan.kind.name()
                ));
                None
            }
        };
        let after = self.leadership().await;
        let changed = before
            .iter()
            .filter(|(partition, leader)| after.get(*partition) != Some(*leader))
            .count();
        detail.push_str(&format!(
            "; {changed} of {} partitions changed leader or term",
            before.len()
        ));
        Ok(FaultRecord {
            kind: plan.kind,
            detail,
            at_s,
            injected,
            recovery_s,
        })
    }

    /// Waits, at most [`RECOVERY_TIMEOUT`], until the server has heard from every alive
    /// node since the heal at `healed_at` ([`unheard_since`]) and the cluster is healthy.
    /// Health alone can pass in the instant after a heal, before the server declares a
    /// node lost for its silence during the fault; the next fault then met a group still
    /// replacing that member (session 12, seed 46: a kill 1.2 s after an isolation took
    /// the second of a group's three voters, and the killed node came back as itself).
    async fn wait_recovered(&self, healed_at: Instant) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            // The time since the heal before the read: a heartbeat younger than this was
            // surely sent after the heal.
            let since_heal = healed_at.elapsed();
            let why = match self.cluster.nodes().await {
                Err(e) => Some(format!("API: {e}")),
                Ok(nodes) => match unheard_since(&nodes, since_heal) {
                    Some(why) => Some(why),
                    None => self.cluster.unhealthy().await,
                },
            };
            match why {
                None => return Ok(start.elapsed()),
                Some(why) if start.elapsed() >= RECOVERY_TIMEOUT => return Err(why),
                Some(_) => tokio::time::sleep(WATCH_INTERVAL).await,
            }
        }
    }

    async fn kill(&self, plan: &FaultPlan) -> anyhow::Result<(bool, String, Instant)> {
        let Some(node) = self.leader_target(plan.pick).await else {
            return Ok((false, "no agent to kill".into(), Instant::now()));
        };
        let pid = self.pid_of(&node)?;
        let old_id = self.node_id(&node).await;
        signal(pid, libc::SIGKILL)?;
        let killed_at = Instant::now();
        let mut detail = format!("SIGKILL {node} (pid {pid}, a leader's node)");
        self.log(&format!(
            "kill: {detail}; it is restarted in {:?}",
            stator_harness::AGENT_RESTART_DELAY
        ));
        let back = self.wait_back(&node, pid, old_id).await;
        detail.push_str(&format!("; {back}"));
        Ok((true, detail, killed_at))
    }

    async fn pause(&self, plan: &FaultPlan) -> anyhow::Result<(bool, String, Instant)> {
        let Some(node) = self.leader_target(plan.pick).await else {
            return Ok((false, "no agent to pause".into(), Instant::now()));
        };
        let pid = self.pid_of(&node)?;
        let old_id = self.node_id(&node).await;
        signal(pid, libc::SIGSTOP)?;
        let resume = Resume(pid);
        let mut detail = format!(
            "SIGSTOP {node} (pid {pid}) for {} ms",
            plan.hold.as_millis()
        );
        self.log(&format!("pause: {detail}"));
        let mut seen_lost = self.sleep_watching_lost(&node, old_id, plan.hold).await;
        drop(resume);
        let resumed_at = Instant::now();
        anyhow::ensure!(
            !cluster::is_stopped(pid),
            "agent {node} (pid {pid}) still stopped after SIGCONT"
        );
        self.log(&format!("pause: SIGCONT {node}"));
        // A pause past the heartbeat grace gets the node declared lost; it then rejoins
        // under a new id, or as itself while a durable partition names it. Say which.
        let start = Instant::now();
        while self.cluster.unhealthy().await.is_some() && start.elapsed() < RECOVERY_TIMEOUT {
            seen_lost |= self
                .sleep_watching_lost(&node, old_id, WATCH_INTERVAL)
                .await;
        }
        let new_id = self.node_id(&node).await;
        detail.push_str(match (new_id == old_id, seen_lost) {
            (true, false) => "; stayed a member",
            (true, true) => "; declared lost, rejoined as itself",
            (false, _) => "; declared lost, rejoined as a new member",
        });
        Ok((true, detail, resumed_at))
    }

    async fn partition(&self, plan: &FaultPlan) -> anyhow::Result<(bool, String, Instant)> {
        let network = self
            .network
            .expect("partitions are scheduled only with a network to cut");
        let Some(leader) = self.leader_target(plan.pick).await else {
            return Ok((false, "no node to partition".into(), Instant::now()));
        };
        let ports = self.cluster.transport_ports().await?;
        let nodes: Vec<String> = ports.keys().cloned().collect();
        let split = plan_split(plan.shape, &nodes, &leader, plan.pick);
        // Evidence the cut was real: packets the rules dropped, or for an isolated
        // namespace, the packets its veth end dropped.
        let (how, evidence_before) = match network {
            Network::Firewall(firewall) => {
                let blocks = firewall::cut(&split.left, &split.right, &ports);
                firewall.set(&blocks)?;
                (format!("{} iptables rules", blocks.len()), 0)
            }
            Network::Netns(netns) if plan.shape == PartitionShape::IsolateLeader => {
                let before = netns.tx_dropped(&leader).unwrap_or(0);
                netns.isolate(&leader)?;
                (format!("veth of {leader} down"), before)
            }
            Network::Netns(netns) => {
                netns.cut(&split.left, &split.right)?;
                ("drop rules in the namespaces".to_string(), 0)
            }
        };
        let heal = Heal(network);
        self.log(&format!(
            "partition: {} for {} ms ({how})",
            split.detail,
            plan.hold.as_millis(),
        ));
        tokio::time::sleep(plan.hold).await;
        let (evidence, unit) = match network {
            Network::Firewall(firewall) => {
                (firewall.dropped_packets().unwrap_or(0), "packets dropped")
            }
            Network::Netns(netns) if plan.shape == PartitionShape::IsolateLeader => (
                netns
                    .tx_dropped(&leader)
                    .unwrap_or(0)
                    .saturating_sub(evidence_before),
                "packets dropped at the isolated node's veth",
            ),
            Network::Netns(netns) => (netns.dropped_packets(), "packets dropped"),
        };
        drop(heal);
        let healed_at = Instant::now();
        self.log(&format!("partition: healed ({evidence} {unit})"));
        // Replicas exchange heartbeats many times a second: a cut that dropped nothing
        // matched nothing (e.g. a cgroup path the kernel resolves elsewhere), so the
        // partition did not happen and is not counted.
        if evidence == 0 {
            self.log("partition: WARNING the cut stopped no packet; not counted as injected");
        }
        Ok((
            evidence > 0,
            format!(
                "{} for {} ms ({how}), {evidence} {unit}",
                split.detail,
                plan.hold.as_millis()
            ),
            healed_at,
        ))
    }

    /// SIGKILLs the server holding the controller lease; the supervisor starts it again
    /// after [`cluster::SERVER_RESTART_DELAY`]. Waits for another server to take the
    /// lease and for the killed one to run again.
    async fn server(&self) -> anyhow::Result<(bool, String, Instant)> {
        let Some((holder, term)) = self.cluster.controller_term().await else {
            return Ok((
                false,
                "no server holds the controller lease".into(),
                Instant::now(),
            ));
        };
        let pid = self
            .cluster
            .server_pid(holder)
            .ok_or_else(|| anyhow::anyhow!("server s{holder} holds the lease but does not run"))?;
        signal(pid, libc::SIGKILL)?;
        let killed_at = Instant::now();
        self.log(&format!(
            "server: SIGKILL s{holder} (pid {pid}), the controller holder; restarted in {:?}",
            cluster::SERVER_RESTART_DELAY
        ));
        let mut detail = format!("SIGKILL controller holder s{holder} (pid {pid})");
        let mut taken = false;
        while killed_at.elapsed() < RECOVERY_TIMEOUT {
            match self.cluster.controller_term().await {
                // A new term: another server, or the restarted one, won the lease.
                Some((next, revision)) if revision != term => {
                    let took = killed_at.elapsed().as_secs_f64();
                    self.log(&format!(
                        "server: s{next} took the controller lease after {took:.1}s"
                    ));
                    detail.push_str(&format!("; s{next} took the lease after {took:.1}s"));
                    taken = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        if !taken {
            detail.push_str("; no server took the lease");
        }
        while !self.cluster.server_running(holder) && killed_at.elapsed() < RECOVERY_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((true, detail, killed_at))
    }

    /// SIGKILLs every agent at once (a power cut of the whole data plane) and starts
    /// them again after [`RESTART_ALL_DOWN`], or with `late` after [`RESTART_LATE_DOWN`]
    /// (past the heartbeat grace: the server declares every node lost before they come
    /// back). Every member of every group dies together, so no group keeps a majority in
    /// memory: acknowledged writes survive only through the members' disks. Waits until
    /// every agent is back under the id it had (it rejoins as itself), then the caller
    /// waits for health. A late restart counts as injected only if the server did
    /// declare a killed node lost (else it was a plain restart).
    async fn restart_all(&self, late: bool) -> anyhow::Result<(bool, String, Instant)> {
        let (name, down) = if late {
            ("restart-late", RESTART_LATE_DOWN)
        } else {
            ("restart", RESTART_ALL_DOWN)
        };
        let before: BTreeMap<String, u64> = self
            .cluster
            .nodes()
            .await?
            .into_iter()
            .filter(cluster::alive)
            .map(|n| (n.name, n.id))
            .collect();
        let killed = self.cluster.kill_and_restart_agents(down);
        let killed_at = Instant::now();
        if killed.is_empty() {
            return Ok((false, "no agent to kill".into(), killed_at));
        }
        self.log(&format!(
            "{name}: SIGKILL every agent at once ({} of them: {:?}); all started again in {down:?}",
            killed.len(),
            killed.keys().collect::<Vec<_>>()
        ));
        let mut declared_lost = 0;
        if late {
            // Just before the agents start again: the server should have declared them
            // lost by now (their grace ran out while they were down).
            tokio::time::sleep(down.saturating_sub(Duration::from_millis(300))).await;
            if let Ok(nodes) = self.cluster.nodes().await {
                declared_lost = nodes
                    .iter()
                    .filter(|n| before.get(&n.name) == Some(&n.id))
                    .filter(|n| n.state == NodeState::Lost)
                    .count();
            }
            self.log(&format!(
                "{name}: {declared_lost} of {} nodes declared lost while down",
                killed.len()
            ));
        }
        // The old registrations look alive until the server's grace runs out, so only
        // after it does the registrations say whether each agent rejoined under its own
        // id (kept alive by its heartbeats) or was declared lost and came back new.
        tokio::time::sleep(RESTART_ALL_SETTLE.saturating_sub(killed_at.elapsed())).await;
        let mut back = BTreeMap::new();
        while killed_at.elapsed() < RECOVERY_TIMEOUT && back.len() < killed.len() {
            back.clear();
            if let Ok(nodes) = self.cluster.nodes().await {
                for node in nodes.iter().filter(|n| cluster::alive(n)) {
                    if killed.contains_key(&node.name) {
                        back.insert(node.name.clone(), node.id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let same = back
            .iter()
            .filter(|(name, id)| before.get(*name) == Some(*id))
            .count();
        let mut detail = format!(
            "SIGKILL all {} agents at once, restarted after {} ms; {same} of them back under their own id (one back under a new id was declared lost first and its durable stores deleted)",
            killed.len(),
            down.as_millis()
        );
        if late {
            detail.push_str(&format!(
                "; {declared_lost} declared lost while down, then rejoined"
            ));
        }
        self.log(&format!(
            "{name}: {same} of {} agents back as themselves after {:.1}s",
            killed.len(),
            killed_at.elapsed().as_secs_f64()
        ));
        Ok((!late || declared_lost > 0, detail, killed_at))
    }

    async fn membership(&self, plan: &FaultPlan) -> anyhow::Result<(bool, String, Instant)> {
        let Some(node) = self.leader_target(plan.pick).await else {
            return Ok((false, "no node to drain".into(), Instant::now()));
        };
        if let Err(e) = self.cluster.post(&format!("/v1/nodes/{node}/drain")).await {
            self.log(&format!("membership: drain {node} refused: {e}"));
            return Ok((false, format!("drain {node} refused: {e}"), Instant::now()));
        }
        self.log(&format!(
            "membership: draining {node} (live migration of its replicas)"
        ));
        let start = Instant::now();
        let drained = loop {
            let state = self
                .cluster
                .nodes()
                .await
                .ok()
                .and_then(|nodes| {
                    nodes
                        .into_iter()
                        .find(|n| n.name == node && cluster::alive(n))
                })
                .map(|n| n.state);
            match state {
                Some(NodeState::Drained) => break true,
                None => break false,
                _ if start.elapsed() > DRAIN_TIMEOUT => break false,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let took = start.elapsed().as_secs_f64();
        if drained {
            self.log(&format!("membership: {node} drained in {took:.1}s"));
        } else {
            self.log(&format!(
                "membership: {node} not drained after {took:.1}s; killing it anyway"
            ));
        }
        let pid = self.pid_of(&node)?;
        let old_id = self.node_id(&node).await;
        signal(pid, libc::SIGKILL)?;
        let killed_at = Instant::now();
        self.log(&format!(
            "membership: SIGKILL {node}; it is restarted in {:?}",
            stator_harness::AGENT_RESTART_DELAY
        ));
        let back = self.wait_back(&node, pid, old_id).await;
        Ok((
            true,
            format!(
                "drain {node} ({} in {took:.1}s), then kill it so it rejoins fresh; {back}",
                if drained { "drained" } else { "NOT drained" }
            ),
            killed_at,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn every_kind_appears_in_each_round() {
        let mut schedule = Schedule::new(7, FaultKind::ALL.to_vec());
        for _ in 0..3 {
            let round: BTreeSet<FaultKind> = (0..FaultKind::ALL.len())
                .map(|_| schedule.next_fault().kind)
                .collect();
            assert_eq!(round.len(), FaultKind::ALL.len());
        }
    }

    #[test]
    fn every_kind_has_a_name_that_parses_back() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()).unwrap(), kind);
        }
        assert!(FaultKind::parse("reboot").is_err());
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a: Vec<FaultPlan> = {
            let mut s = Schedule::new(3, FaultKind::ALL.to_vec());
            (0..10).map(|_| s.next_fault()).collect()
        };
        let b: Vec<FaultPlan> = {
            let mut s = Schedule::new(3, FaultKind::ALL.to_vec());
            (0..10).map(|_| s.next_fault()).collect()
        };
        assert_eq!(a, b);
    }

    fn node(id: u64, name: &str, state: NodeState, heard_ms_ago: Option<u64>) -> NodeView {
        NodeView {
            id,
            name: name.into(),
            state,
            zone: "zone-a".into(),
            pool: "default".into(),
            cpu_millis: 1000,
            memory_mib: 1024,
            price_per_hour: 0.0,
            labels: BTreeMap::new(),
            transport_addr: "10.0.0.11:4000".into(),
            last_heartbeat_age_ms: heard_ms_ago,
            replicas: 1,
            leaders: 0,
            instances: 0,
            cpu_requested_millis: 0,
            memory_requested_mib: 0,
            ops_per_sec: 0.0,
            drain_waits: Vec::new(),
        }
    }

    /// Session 12's finding: node-2 (id 7), killed, came back under its own id (a
    /// `disk` partition still named it), and the nemesis, waiting for a new id, said it
    /// "did not come back". Its rejoin is a comeback.
    #[test]
    fn a_killed_agent_back_under_its_own_id_is_back() {
        let other = node(3, "node-1", NodeState::Ready, Some(100));
        // Its restarted process started 900 ms ago, rejoined, and heartbeat 200 ms ago.
        let rejoined = [
            other.clone(),
            node(7, "node-2", NodeState::Ready, Some(200)),
        ];
        assert_eq!(
            comeback("node-2", Some(7), &rejoined, Some(900)),
            Comeback::Itself { id: 7 }
        );
        // Under a new id: a new member (the lost record stays listed).
        let new = [
            other.clone(),
            node(7, "node-2", NodeState::Lost, None),
            node(9, "node-2", NodeState::Ready, Some(50)),
        ];
        assert_eq!(
            comeback("node-2", Some(7), &new, Some(900)),
            Comeback::NewMember { id: 9 }
        );
    }

    /// The killed incarnation's record stays alive until the server's grace runs out:
    /// that is not a comeback, and the wait says what it saw.
    #[test]
    fn the_killed_incarnations_record_is_not_a_comeback() {
        // Killed 1 s ago: not restarted yet, its record still ready.
        let stale = [node(7, "node-2", NodeState::Ready, Some(1_000))];
        let Comeback::NotYet { seen } = comeback("node-2", Some(7), &stale, None) else {
            panic!("the old record is not a comeback");
        };
        assert!(
            seen.contains("id 7 Ready, last heartbeat 1000 ms ago"),
            "{seen}"
        );
        assert!(seen.contains("not started again yet"), "{seen}");
        // Restarted 300 ms ago, not registered yet: the record's last heartbeat is older
        // than the process.
        assert!(matches!(
            comeback("node-2", Some(7), &stale, Some(300)),
            Comeback::NotYet { .. }
        ));
        // Declared lost, not back.
        let lost = [node(7, "node-2", NodeState::Lost, None)];
        let Comeback::NotYet { seen } = comeback("node-2", Some(7), &lost, Some(300)) else {
            panic!("a lost record is not a comeback");
        };
        assert!(seen.contains("id 7 Lost"), "{seen}");
        assert!(seen.contains("restarted 300 ms ago"), "{seen}");
        let Comeback::NotYet { seen } = comeback("node-2", Some(7), &[], Some(300)) else {
            panic!("no record is not a comeback");
        };
        assert!(seen.starts_with("no registration"), "{seen}");
    }

    /// Session 12's seed 46: node-5 (id 22) isolated for 2.3 s; the health check right
    /// after the heal passed while the server had not heard from it since, and it was
    /// declared lost a moment later. Not settled until it is heard from or declared lost.
    #[test]
    fn a_node_silent_since_the_heal_is_not_settled() {
        let heal = Duration::from_millis(150);
        let isolated = [
            node(20, "node-4", NodeState::Ready, Some(100)),
            node(22, "node-5", NodeState::Ready, Some(2_600)),
        ];
        let why = unheard_since(&isolated, heal).expect("node-5 is silent since the heal");
        assert!(why.starts_with("node-5 (id 22) not heard from"), "{why}");
        // Heard from after the heal: settled.
        let heard = [
            node(20, "node-4", NodeState::Ready, Some(100)),
            node(22, "node-5", NodeState::Ready, Some(40)),
        ];
        assert_eq!(unheard_since(&heard, heal), None);
        // Declared lost and back under a new id heard from since: settled (the health
        // check then waits for the lost member's replacement).
        let replaced = [
            node(20, "node-4", NodeState::Ready, Some(100)),
            node(22, "node-5", NodeState::Lost, None),
            node(25, "node-5", NodeState::Ready, Some(60)),
        ];
        assert_eq!(unheard_since(&replaced, heal), None);
    }

    #[test]
    fn splits_have_the_promised_shapes() {
        let nodes = names(5);
        for pick in 0..20 {
            let isolate = plan_split(PartitionShape::IsolateLeader, &nodes, "node-2", pick);
            assert_eq!(isolate.left, vec!["node-2".to_string()]);
            assert_eq!(isolate.right.len(), 4);

            let split = plan_split(PartitionShape::MajorityMinority, &nodes, "node-2", pick);
            assert_eq!(split.left.len(), 2);
            assert_eq!(split.right.len(), 3);
            assert!(split.left.contains(&"node-2".to_string()));

            let bridge = plan_split(PartitionShape::Bridge, &nodes, "node-2", pick);
            assert_eq!(bridge.left.len(), 2);
            assert_eq!(bridge.right.len(), 2);
            assert!(bridge.left.contains(&"node-2".to_string()));
            let all: BTreeSet<&String> = bridge.left.iter().chain(&bridge.right).collect();
            assert_eq!(all.len(), 4, "the bridge node is on neither side");
        }
    }
}
