//! Hosting partition replicas and reconciling them toward assignments.
//!
//! Level-triggered: every heartbeat answer carries the full set of replicas this node
//! must host. Missing replicas are created (empty; the leader catches them up), replicas
//! no longer assigned are stopped, new groups are bootstrapped by their initial members,
//! and where the local replica leads, one membership step is taken toward the designed
//! member set (see [`stator_replication::Host::reconcile_membership`]).
//!
//! A replica's app is the built-in kv (with its `maxmemory` budget), a stator-sm/1
//! `process`, or a stator-sm/1 app in a `container` ([`crate::container::replica`]: the
//! same machine, started with runc; its container and cgroup go with the replica).
//!
//! Durable replicas (`durability = "disk"` / `"periodic"`) reopen their store under the
//! agent's raft dir when created, so a restarted agent reloads them and fetches only the
//! tail; a replica no longer assigned has its store deleted. A replica whose state this
//! node lost while still a member (a `memory` replica hosted before a restart, or a store
//! that fails its checksums, which is moved aside) is not hosted: it is reported
//! `forgotten` until the server has it removed from the group, because a member that
//! forgot its vote or acknowledged entries must not vote under the same id again.

use stator_api::agent::{ReplicaAssignment, ReplicaRole, ReplicaStatus};
use stator_api::app::StateMachine;
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::{AppSpec, Durability};
use stator_kv::notify::{NotificationSink, NotifyingKv};
use stator_replication::disk_store::DiskStoreError;
use stator_replication::{GroupOptions, Host, HostError, MembershipStep};
use stator_sm::host::{
    Launcher, ProcessHandle, ProcessLimits, ProcessMachine, ProcessMachineConfig,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a non-designated initial member waits before forming the group itself, in
/// case the designated one died before it could.
pub const BOOTSTRAP_FALLBACK: Duration = Duration::from_secs(2);

/// Least time between two leadership hand-overs of one group that the server asked for
/// (`transfer_leader_to`): a hand-over that fails pauses the group's writes up to
/// `LEADERSHIP_TRANSFER_TIMEOUT`, so it is not tried on every heartbeat.
pub const LEADER_TRANSFER_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Groups this node has initialised that have no leader yet, at most: the rest wait for
/// a later pass (level-triggered, so nothing is lost). Forming ~1,000 groups at once on a
/// small machine ends in an election storm (a vote times out after the election timeout,
/// every failed election adds load); in waves they form in seconds and go quiet (see
/// `stator_replication::quiesce`; figures in docs/BENCHMARKS.md, idle partitions).
pub const MAX_GROUPS_FORMING: usize = 100;
/// A group created longer ago than this no longer counts as forming for
/// [`MAX_GROUPS_FORMING`], whether or not it has a leader: a group that cannot elect (its
/// peers are down) must not hold back every other.
pub const FORMING_WINDOW: Duration = Duration::from_secs(10);

/// Set to `0` in an agent's environment, new groups form as before forming replicas
/// existed (every member's election timer running from the first message): the
/// baseline of `stator bench idle --baseline`. Anything else, or unset: forming replicas.
pub const FORMING_REPLICAS_ENV: &str = "STATOR_FORMING_REPLICAS";

/// Whether new groups are formed by forming replicas (see [`FORMING_REPLICAS_ENV`]).
fn forming_replicas() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(FORMING_REPLICAS_ENV).map_or(true, |v| v != "0"))
}

/// A replica this node is a member of but cannot host: its state is gone.
struct Forgotten {
    service: String,
    partition: u32,
    why: String,
}

struct Known {
    service: String,
    partition: u32,
    durability: Durability,
    bootstrapped: bool,
    created: Instant,
    /// The app process of a `process` app (pid, restarts).
    process: Option<ProcessHandle>,
    /// (pid, millicores) last put in the replica's cgroup.
    cgroup_applied: Option<(u32, u64)>,
    /// The launcher of a `container` app: its container is removed with the replica.
    container: Option<Arc<crate::container::ContainerLauncher>>,
}

/// The replicas of one agent.
pub struct Replicas {
    host: Host,
    run_root: PathBuf,
    // std mutexes: short bookkeeping, never held across an await.
    known: Mutex<HashMap<GroupId, Known>>,
    /// Groups with a membership step in flight (one at a time per group).
    busy: Arc<Mutex<HashSet<GroupId>>>,
    /// When each group last tried a leadership hand-over the server asked for.
    transfers_tried: Arc<Mutex<HashMap<GroupId, Instant>>>,
    /// Where `process` apps get their CPU share; None: not enforced.
    cgroups: Option<Arc<crate::cgroup::Cgroups>>,
    /// Runs `container` apps; None: they fail saying the agent has no runtime.
    containers: Option<Arc<crate::container::ContainerRuntime>>,
    /// Where durable replicas keep their stores (the host's data dir).
    raft_dir: Option<PathBuf>,
    /// Groups whose state this node lost while a member: reported, not hosted.
    forgotten: Mutex<HashMap<GroupId, Forgotten>>,
    /// `memory` groups a previous run hosted (a rejoined node forgot them).
    forgotten_at_start: Mutex<BTreeSet<GroupId>>,
    /// The `memory` groups last recorded on disk (written only when they change).
    memory_groups_saved: Mutex<Option<BTreeSet<GroupId>>>,
    /// Whether the stores a previous run left for groups no longer assigned were removed
    /// (once per run, at the first pass: later ones remove the stores of the replicas
    /// they stop).
    previous_stores_swept: std::sync::atomic::AtomicBool,
    /// Where built-in kv replicas report keyspace events (`None`: they report none).
    notifications: Option<Arc<dyn NotificationSink>>,
}

impl Replicas {
    /// Replicas hosted by `host`; process apps keep their sockets and logs under `run_root`.
    pub fn new(host: Host, run_root: PathBuf) -> Self {
        Self {
            host,
            run_root,
            known: Mutex::new(HashMap::new()),
            busy: Arc::new(Mutex::new(HashSet::new())),
            transfers_tried: Arc::new(Mutex::new(HashMap::new())),
            cgroups: None,
            containers: None,
            raft_dir: None,
            forgotten: Mutex::new(HashMap::new()),
            forgotten_at_start: Mutex::new(BTreeSet::new()),
            memory_groups_saved: Mutex::new(None),
            previous_stores_swept: std::sync::atomic::AtomicBool::new(false),
            notifications: None,
        }
    }

    /// Built-in kv replicas created from now on report keyspace events to `sink`.
    pub fn with_notifications(mut self, sink: Arc<dyn NotificationSink>) -> Self {
        self.notifications = Some(sink);
        self
    }

    /// Durable replicas keep their stores in `raft_dir` (the host's data dir). When this
    /// node `rejoined` under its old id, the `memory` replicas its previous run hosted
    /// are forgotten (see the module doc).
    pub fn with_raft_dir(mut self, raft_dir: PathBuf, rejoined: bool) -> Self {
        if rejoined {
            *self
                .forgotten_at_start
                .lock()
                .expect("forgotten mutex poisoned") =
                crate::identity::load_memory_groups(&raft_dir);
        }
        self.raft_dir = Some(raft_dir);
        self
    }

    /// Whether `a` must not be hosted because this node lost its state while a member.
    /// A `bootstrap` assignment is a group placed afresh: nothing to forget.
    fn is_forgotten(&self, a: &ReplicaAssignment) -> bool {
        let mut forgotten = self.forgotten.lock().expect("forgotten mutex poisoned");
        let mut at_start = self
            .forgotten_at_start
            .lock()
            .expect("forgotten mutex poisoned");
        if a.bootstrap {
            forgotten.remove(&a.group);
            at_start.remove(&a.group);
            return false;
        }
        if forgotten.contains_key(&a.group) {
            return true;
        }
        let member = a.members.iter().any(|m| m.node_id == self.host.node_id());
        if at_start.remove(&a.group) && member && a.durability == Durability::Memory {
            tracing::warn!(group = %a.group, service = %a.service, partition = a.partition,
                "this node restarted and lost its memory replica; waiting to be replaced");
            forgotten.insert(
                a.group,
                Forgotten {
                    service: a.service.clone(),
                    partition: a.partition,
                    why: "the node restarted and its memory replica's state is gone; waiting for the group to remove this member".into(),
                },
            );
            return true;
        }
        false
    }

    /// Records the `memory` groups hosted now, for the next run.
    fn save_memory_groups(&self) {
        let Some(raft_dir) = &self.raft_dir else {
            return;
        };
        let groups: BTreeSet<GroupId> = self
            .known
            .lock()
            .expect("known mutex poisoned")
            .iter()
            .filter(|(_, k)| k.durability == Durability::Memory)
            .map(|(g, _)| *g)
            .collect();
        let mut saved = self
            .memory_groups_saved
            .lock()
            .expect("saved mutex poisoned");
        if saved.as_ref() == Some(&groups) {
            return;
        }
        match crate::identity::save_memory_groups(raft_dir, &groups) {
            Ok(()) => *saved = Some(groups),
            Err(e) => tracing::warn!("cannot record the memory replicas hosted: {e}"),
        }
    }

    /// Runs the app process of each `process` replica in its own cgroup of `cgroups`,
    /// with the CPU share of its assignment (built-in apps run inside the agent and get
    /// none).
    pub fn with_cpu_cgroups(mut self, cgroups: Option<Arc<crate::cgroup::Cgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Runs `container` apps with `runtime`, after removing what an earlier agent on
    /// this data dir left in the replicas' run directories (containers, mounts, bundles).
    pub fn with_containers(mut self, runtime: Arc<crate::container::ContainerRuntime>) -> Self {
        runtime.remove_stale(&self.run_root);
        self.containers = Some(runtime);
        self
    }

    /// The machine of `a`'s replica, the handle of its app process (`process` apps),
    /// and the launcher of its container (`container` apps).
    fn app(&self, a: &ReplicaAssignment) -> (Box<dyn StateMachine>, AppParts) {
        let replica_dir = self
            .run_root
            .join(format!("{}-p{}", a.service, a.partition));
        match &a.app {
            AppSpec::Builtin(_) => {
                let machine = stator_kv::KvMachine::with_maxmemory(a.kv_maxmemory_bytes);
                let machine: Box<dyn StateMachine> = match &self.notifications {
                    Some(sink) => Box::new(NotifyingKv::new(
                        machine,
                        a.service.clone(),
                        a.group,
                        sink.clone(),
                    )),
                    None => Box::new(machine),
                };
                (machine, AppParts::default())
            }
            AppSpec::Container(spec) => {
                let Some(runtime) = self.containers.clone() else {
                    // Every agent built by `run` has a runtime; without one the app
                    // fails at its first start with this message.
                    let launcher = Arc::new(NoRuntime);
                    let config = self.app_config(a, replica_dir, spec.command.clone());
                    return (
                        Box::new(ProcessMachine::with_launcher(config, launcher)),
                        AppParts::default(),
                    );
                };
                let launcher = Arc::new(crate::container::ContainerLauncher::new(
                    runtime,
                    spec.clone(),
                    replica_cgroup(a.group),
                    replica_dir,
                    self.cgroups.clone(),
                    crate::cgroup::Limits {
                        cpu_millis: a.cpu_millis,
                        cpu_limit_millis: None,
                        memory_mib: a.memory_mib,
                    },
                ));
                let config = self.app_config(a, launcher.socket_dir(), spec.command.clone());
                let machine = ProcessMachine::with_launcher(config, launcher.clone());
                let parts = AppParts {
                    process: Some(machine.handle()),
                    container: Some(launcher),
                };
                (Box::new(machine), parts)
            }
            AppSpec::Process(p) => {
                let machine = ProcessMachine::new(ProcessMachineConfig {
                    program: p.command[0].clone(),
                    args: p.command[1..].to_vec(),
                    env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    working_dir: p.working_dir.as_ref().map(PathBuf::from),
                    run_dir: self
                        .run_root
                        .join(format!("{}-p{}", a.service, a.partition)),
                    service: a.service.clone(),
                    partition: a.partition,
                    replica: self.host.node_id(),
                    limits: ProcessLimits::default(),
                });
                let handle = machine.handle();
                let parts = AppParts {
                    process: Some(handle),
                    container: None,
                };
                (Box::new(machine), parts)
            }
        }
    }

    /// The machine configuration of a `container` app: `run_dir` is the socket
    /// directory; the program and arguments only name it in messages.
    fn app_config(
        &self,
        a: &ReplicaAssignment,
        run_dir: PathBuf,
        command: Vec<String>,
    ) -> ProcessMachineConfig {
        let (program, args) = match command.split_first() {
            Some((program, args)) => (program.clone(), args.to_vec()),
            None => ("(the image's entrypoint)".to_string(), Vec::new()),
        };
        ProcessMachineConfig {
            program,
            args,
            env: Vec::new(),
            working_dir: None,
            run_dir,
            service: a.service.clone(),
            partition: a.partition,
            replica: self.host.node_id(),
            limits: ProcessLimits::default(),
        }
    }

    /// Keeps a `process` replica's app in its cgroup with its assigned share: the app is
    /// restarted after a crash under a new pid, and a resize changes the share.
    fn apply_cpu_share(&self, a: &ReplicaAssignment) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        if a.cpu_millis == 0 {
            return;
        }
        let mut known = self.known.lock().expect("known mutex poisoned");
        let Some(k) = known.get_mut(&a.group) else {
            return;
        };
        if k.container.is_some() {
            // The launcher made the cgroup with the share at the container's start;
            // only a resize is left to apply (runc is not the app: it is not moved).
            let applied = k.cgroup_applied.map(|(_, millis)| millis);
            if applied.is_some_and(|millis| millis != a.cpu_millis) {
                if let Err(error) = cgroups.set_cpu(&replica_cgroup(a.group), a.cpu_millis) {
                    tracing::warn!(group = %a.group, %error, "cannot resize the replica app's CPU share");
                }
            }
            k.cgroup_applied = Some((0, a.cpu_millis));
            return;
        }
        let Some(pid) = k.process.as_ref().and_then(ProcessHandle::pid) else {
            return;
        };
        if k.cgroup_applied == Some((pid, a.cpu_millis)) {
            return;
        }
        let name = replica_cgroup(a.group);
        let result = cgroups
            .create(&name, a.cpu_millis)
            .and_then(|_| cgroups.move_process(&name, pid));
        match result {
            Ok(()) => k.cgroup_applied = Some((pid, a.cpu_millis)),
            Err(error) => {
                // Remember the attempt too: one warning, not one per heartbeat.
                k.cgroup_applied = Some((pid, a.cpu_millis));
                tracing::warn!(group = %a.group, %error, "replica app runs without its CPU share");
            }
        }
    }

    /// One reconcile pass toward `assignments`. Returns whether it left the replicas
    /// settled: every assigned replica hosted, no group forming or bootstrapping, no
    /// membership step or leader move in flight or asked for, no app process whose pid
    /// may change. A settled agent need not pass again until its assignments or its
    /// replicas change (see [`crate::ReconcileSchedule`]).
    pub async fn reconcile(&self, assignments: &[ReplicaAssignment]) -> bool {
        let wanted: HashSet<GroupId> = assignments.iter().map(|a| a.group).collect();
        let mut forming = self.groups_forming();
        let mut settled = forming == 0;
        for a in assignments {
            let members: BTreeMap<NodeId, String> = a
                .members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect();
            if self.host.replica(a.group).is_none() && !self.create_replica(a).await {
                settled = false;
                continue;
            }
            // A group placed afresh is settled once it had a leader (the server then
            // stops asking for a bootstrap); an app process may restart under a new pid.
            settled &= !a.bootstrap && matches!(a.app, AppSpec::Builtin(_));
            self.apply_cpu_share(a);
            self.bootstrap_if_due(a, &members, &mut forming).await;
            settled &= !self.step_membership(a, members);
        }
        for group in self.host.groups() {
            if !wanted.contains(&group) {
                self.remove_replica(group).await;
                settled = false;
            }
        }
        settled &= self.busy.lock().expect("busy mutex poisoned").is_empty()
            && self
                .forgotten
                .lock()
                .expect("forgotten mutex poisoned")
                .is_empty();
        self.sweep_previous_stores(&wanted);
        self.sweep_orphan_cgroups(&wanted);
        // A forgotten member that is no longer assigned has left its group: it may be
        // added again later as a new learner.
        self.forgotten
            .lock()
            .expect("forgotten mutex poisoned")
            .retain(|group, _| wanted.contains(group));
        self.save_memory_groups();
        settled
    }

    /// Creates the replica of an assigned group this node does not host yet; false when
    /// it cannot (a forgotten member, a corrupt store set aside, a failed create).
    async fn create_replica(&self, a: &ReplicaAssignment) -> bool {
        if self.is_forgotten(a) {
            return false;
        }
        let options = GroupOptions {
            election_timeout_ms: if a.election_timeout_ms > 0 {
                a.election_timeout_ms
            } else {
                stator_replication::host::DEFAULT_ELECTION_TIMEOUT_MS
            },
            durability: a.durability,
            fsync_interval_ms: if a.fsync_interval_ms > 0 {
                a.fsync_interval_ms
            } else {
                stator_api::spec::DEFAULT_FSYNC_INTERVAL_MS
            },
            // A group placed afresh: only the member that bootstraps it runs
            // for election (no storm when ~1,000 groups form at once).
            forming: a.bootstrap && forming_replicas(),
            ..GroupOptions::default()
        };
        let (app, parts) = self.app(a);
        match self.host.create_group(a.group, options, app).await {
            Ok(_) => {}
            Err(HostError::Storage {
                source: source @ DiskStoreError::Corrupt { .. },
                ..
            }) => {
                self.set_aside_corrupt_store(a, &source);
                return false;
            }
            Err(e) => {
                tracing::warn!(group = %a.group, "cannot create replica: {e}");
                return false;
            }
        }
        self.known.lock().expect("known mutex poisoned").insert(
            a.group,
            Known {
                service: a.service.clone(),
                partition: a.partition,
                durability: a.durability,
                bootstrapped: false,
                created: Instant::now(),
                process: parts.process,
                cgroup_applied: None,
                container: parts.container,
            },
        );
        true
    }

    /// Bootstraps a group placed afresh when this node is the member designated to form
    /// it (or the designated one has not within `BOOTSTRAP_FALLBACK`), at most
    /// `MAX_GROUPS_FORMING` forming at once.
    async fn bootstrap_if_due(
        &self,
        a: &ReplicaAssignment,
        members: &BTreeMap<NodeId, String>,
        forming: &mut usize,
    ) {
        // Initialising elects the caller at once, so one designated member per
        // partition (rotating) forms the group: leaders start spread over the nodes.
        // The others follow after a pause in case it died first; every caller uses the
        // same member set, so several initialisations are harmless.
        let me = self.host.node_id();
        let designated = a
            .members
            .get(a.partition as usize % a.members.len().max(1))
            .map(|m| m.node_id);
        let must_bootstrap = a.bootstrap
            && members.contains_key(&me)
            && {
                let known = self.known.lock().expect("known mutex poisoned");
                known.get(&a.group).is_some_and(|k| {
                    !k.bootstrapped
                        && (designated == Some(me) || k.created.elapsed() >= BOOTSTRAP_FALLBACK)
                })
            }
            && self.host.status(a.group).is_none_or(|s| s.leader.is_none());
        if must_bootstrap && *forming >= MAX_GROUPS_FORMING {
            tracing::debug!(group = %a.group, forming = *forming, "pacing: bootstrapped next pass");
        } else if must_bootstrap {
            *forming += 1;
            match self.host.bootstrap(a.group, members).await {
                Ok(()) => {
                    if let Some(k) = self
                        .known
                        .lock()
                        .expect("known mutex poisoned")
                        .get_mut(&a.group)
                    {
                        k.bootstrapped = true;
                    }
                }
                Err(e) => tracing::warn!(group = %a.group, "bootstrap failed: {e}"),
            }
        }
    }

    /// Where this node leads the group and its membership or leader is not yet what the
    /// server designed, spawns one membership step (one at a time per group). Returns
    /// whether there was something to do (a step spawned or still in flight).
    fn step_membership(&self, a: &ReplicaAssignment, members: BTreeMap<NodeId, String>) -> bool {
        // A settled group led here (nearly all of them at 1,000 idle partitions) needs
        // no membership task unless the server asks to move its leader: checked under
        // the metrics borrow instead of spawning a task that clones them each beat.
        let in_sync = self.host.leads_in_sync(a.group, &members);
        let nothing_to_do = in_sync == Some(true) && a.transfer_leader_to.is_none();
        if in_sync.is_none() || nothing_to_do {
            return false;
        }
        if in_sync.is_some()
            && !nothing_to_do
            && !members.is_empty()
            && self
                .busy
                .lock()
                .expect("busy mutex poisoned")
                .insert(a.group)
        {
            let (host, busy, group) = (self.host.clone(), self.busy.clone(), a.group);
            // Only once the membership is settled, and paced: see
            // LEADER_TRANSFER_RETRY_INTERVAL.
            let transfer_to = a.transfer_leader_to.filter(|_| {
                let mut tried = self
                    .transfers_tried
                    .lock()
                    .expect("transfers mutex poisoned");
                let due = tried
                    .get(&group)
                    .is_none_or(|at| at.elapsed() >= LEADER_TRANSFER_RETRY_INTERVAL);
                if due {
                    tried.insert(group, Instant::now());
                }
                due
            });
            tokio::spawn(async move {
                match host.reconcile_membership(group, &members).await {
                    Ok(MembershipStep::InSync) => {
                        if let Some(to) = transfer_to {
                            match host.transfer_leadership(group, to).await {
                                Ok(outcome) => {
                                    tracing::info!(%group, to, ?outcome, "leadership hand-over asked for by the server")
                                }
                                Err(e) => {
                                    tracing::info!(%group, to, "leadership hand-over failed: {e}")
                                }
                            }
                        }
                    }
                    Ok(step) => tracing::debug!(%group, ?step, "membership step"),
                    Err(e) => {
                        tracing::info!(%group, "membership step failed (retried next beat): {e}")
                    }
                }
                busy.lock().expect("busy mutex poisoned").remove(&group);
            });
        }
        true
    }

    /// Stops a replica no longer assigned here and removes its container, cgroup and store.
    async fn remove_replica(&self, group: GroupId) {
        tracing::info!(%group, "replica no longer assigned; stopping it");
        let store_dir = self
            .host
            .replica(group)
            .and_then(|r| r.disk_store().map(|s| s.dir().to_path_buf()));
        self.host.remove_group(group).await;
        let removed = self
            .known
            .lock()
            .expect("known mutex poisoned")
            .remove(&group);
        if let Some(launcher) = removed.and_then(|k| k.container) {
            // The machine's drop removes its container too, but the group's
            // tasks may hold it a moment longer: remove it now (idempotent),
            // off the async threads.
            let _ = tokio::task::spawn_blocking(move || launcher.remove()).await;
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(&replica_cgroup(group));
        }
        if let Some(dir) = store_dir {
            // Out of the group for good: its log and snapshot are of no use.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(%group, dir = %dir.display(), "cannot remove the store: {e}");
            }
        }
    }

    /// Removes, once per run, the stores a previous run of this node left for groups it
    /// is no longer assigned: members the group replaced while this node was down or
    /// lost (the server keeps a lost node's identity, so it comes back as the same
    /// member id, and a stale store must not linger or be reopened if the node is
    /// added to that group again later). Stores moved aside as corrupt are kept.
    fn sweep_previous_stores(&self, wanted: &HashSet<GroupId>) {
        use std::sync::atomic::Ordering;
        let Some(raft_dir) = &self.raft_dir else {
            return;
        };
        if self.previous_stores_swept.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(raft_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(group) = store_dir_group(raft_dir, &entry.file_name()) else {
                continue;
            };
            if wanted.contains(&group) || self.host.replica(group).is_some() {
                continue;
            }
            tracing::info!(%group, dir = %entry.path().display(),
                "removing the store of a replica this node no longer hosts (replaced while it was away)");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(%group, "cannot remove the store: {e}");
            }
        }
    }

    /// Removes, on every pass, the cgroups of replicas this node no longer hosts. The
    /// removal when a replica leaves can race its app's restart, which creates the
    /// cgroup again and puts a process in it after the removal ran; level-triggered, a
    /// leftover goes on the next pass.
    fn sweep_orphan_cgroups(&self, wanted: &HashSet<GroupId>) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        let hosted: HashSet<String> = wanted
            .iter()
            .copied()
            .chain(self.host.groups())
            .map(replica_cgroup)
            .collect();
        for name in cgroups.names() {
            if name.starts_with(REPLICA_CGROUP_PREFIX) && !hosted.contains(&name) {
                tracing::info!(cgroup = %name,
                    "removing the cgroup of a replica this node no longer hosts");
                cgroups.kill_and_remove(&name);
            }
        }
    }

    /// Groups this node initialised recently that have no leader yet.
    fn groups_forming(&self) -> usize {
        let bootstrapped: Vec<GroupId> = self
            .known
            .lock()
            .expect("known mutex poisoned")
            .iter()
            .filter(|(_, k)| k.bootstrapped && k.created.elapsed() < FORMING_WINDOW)
            .map(|(g, _)| *g)
            .collect();
        bootstrapped
            .into_iter()
            .filter(|g| self.host.status(*g).is_some_and(|s| s.leader.is_none()))
            .count()
    }

    /// A store that fails its checksums is moved aside (kept for inspection) and the
    /// replica reported forgotten, so the group replaces it and it rebuilds from peers.
    fn set_aside_corrupt_store(&self, a: &ReplicaAssignment, source: &DiskStoreError) {
        let moved = self
            .host
            .replica_dir(a.group)
            .map(|dir| stator_replication::disk_store::quarantine(&dir));
        tracing::error!(group = %a.group, service = %a.service, partition = a.partition,
            ?moved, "{source}");
        self.forgotten
            .lock()
            .expect("forgotten mutex poisoned")
            .insert(
                a.group,
                Forgotten {
                    service: a.service.clone(),
                    partition: a.partition,
                    why: format!("{source}; the store was moved aside"),
                },
            );
    }

    /// The node's commit-latency histogram and transport bytes per peer.
    pub fn node_metrics(&self) -> stator_api::agent::NodeMetrics {
        self.host.node_metrics()
    }

    /// Status of every hosted replica, for the heartbeat.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        let known = self.known.lock().expect("known mutex poisoned");
        self.host
            .statuses()
            .into_iter()
            .filter_map(|s| {
                let k = known.get(&s.group)?;
                Some(ReplicaStatus {
                    group: s.group,
                    service: k.service.clone(),
                    partition: k.partition,
                    role: s.role,
                    leader: s.leader,
                    term: s.term,
                    voters: s.voters,
                    learners: s.learners,
                    applied_index: s.applied_index,
                    state_bytes: s.state_bytes,
                    ops_per_sec: s.ops_per_sec,
                    p99_us: s.p99_us,
                    error: s.error,
                    disk_bytes: s.disk_bytes,
                    forgotten: false,
                })
            })
            .chain(
                self.forgotten
                    .lock()
                    .expect("forgotten mutex poisoned")
                    .iter()
                    .map(|(group, f)| ReplicaStatus {
                        group: *group,
                        service: f.service.clone(),
                        partition: f.partition,
                        role: ReplicaRole::Stopped,
                        leader: None,
                        term: 0,
                        voters: Vec::new(),
                        learners: Vec::new(),
                        applied_index: 0,
                        state_bytes: 0,
                        ops_per_sec: 0.0,
                        p99_us: 0,
                        error: Some(f.why.clone()),
                        disk_bytes: 0,
                        forgotten: true,
                    }),
            )
            .collect()
    }
}

/// What [`Replicas::app`] keeps of a replica's app besides its machine.
#[derive(Default)]
struct AppParts {
    process: Option<ProcessHandle>,
    container: Option<Arc<crate::container::ContainerLauncher>>,
}

/// The launcher of a container app on an agent without a container runtime.
struct NoRuntime;

#[async_trait::async_trait]
impl Launcher for NoRuntime {
    async fn command(
        &self,
        _config: &ProcessMachineConfig,
    ) -> Result<tokio::process::Command, stator_sm::SmError> {
        Err(stator_sm::SmError::Launch {
            message: "this agent runs no containers (it has no container runtime)".into(),
        })
    }

    fn cleanup(&self, _config: &ProcessMachineConfig) {}
}

/// The group whose store directory (see [`stator_replication::host::replica_dir`]) is
/// `name` inside `raft_dir`; `None` for anything else there (a corrupt store moved
/// aside, the memory-groups file).
fn store_dir_group(raft_dir: &std::path::Path, name: &std::ffi::OsStr) -> Option<GroupId> {
    let (service_id, partition) = name.to_str()?.split_once('-')?;
    let group = GroupId::new(service_id.parse().ok()?, partition.parse().ok()?);
    let canonical = stator_replication::host::replica_dir(raft_dir, group);
    (canonical.file_name() == Some(name)).then_some(group)
}

/// The cgroup name of a replica's app: `replica-<service id>-<partition>`.
/// How the cgroup (and container) of every replica's app is named.
const REPLICA_CGROUP_PREFIX: &str = "replica-";

fn replica_cgroup(group: GroupId) -> String {
    format!(
        "{REPLICA_CGROUP_PREFIX}{}-{}",
        group.service_id(),
        group.partition()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replica_store_dirs_name_a_group() {
        let raft_dir = std::path::Path::new("/data/raft");
        let group = GroupId::new(7, 3);
        let dir = stator_replication::host::replica_dir(raft_dir, group);
        assert_eq!(
            store_dir_group(raft_dir, dir.file_name().unwrap()),
            Some(group)
        );
        for other in [
            "7-3.corrupt-1700000000000",
            "memory-groups.json",
            "7-x",
            "07-3",
            "7",
        ] {
            assert_eq!(store_dir_group(raft_dir, other.as_ref()), None, "{other}");
        }
    }
}
