//! Hosting partition replicas and reconciling them toward assignments.
//!
//! Level-triggered: every heartbeat answer carries the full set of replicas this node
//! must host. Missing replicas are created (empty; the leader catches them up), replicas
//! no longer assigned are stopped, new groups are bootstrapped by their initial members,
//! and where the local replica leads, one membership step is taken toward the designed
//! member set (see [`stator_replication::Host::reconcile_membership`]).

use stator_api::agent::{ReplicaAssignment, ReplicaRole, ReplicaStatus};
use stator_api::app::StateMachine;
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::AppSpec;
use stator_replication::{GroupOptions, Host, Role};
use stator_sm::host::{ProcessHandle, ProcessLimits, ProcessMachine, ProcessMachineConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a non-designated initial member waits before forming the group itself, in
/// case the designated one died before it could.
pub const BOOTSTRAP_FALLBACK: Duration = Duration::from_secs(2);

struct Known {
    service: String,
    partition: u32,
    bootstrapped: bool,
    created: Instant,
    /// The app process of a `process` app (pid, restarts).
    process: Option<ProcessHandle>,
    /// (pid, millicores) last put in the replica's cgroup.
    cgroup_applied: Option<(u32, u64)>,
}

/// The replicas of one agent.
pub struct Replicas {
    host: Host,
    run_root: PathBuf,
    // std mutexes: short bookkeeping, never held across an await.
    known: Mutex<HashMap<GroupId, Known>>,
    /// Groups with a membership step in flight (one at a time per group).
    busy: Arc<Mutex<HashSet<GroupId>>>,
    /// Where `process` apps get their CPU share; None: not enforced.
    cgroups: Option<Arc<crate::cgroup::Cgroups>>,
}

fn role(r: Role) -> ReplicaRole {
    match r {
        Role::Leader => ReplicaRole::Leader,
        Role::Follower => ReplicaRole::Follower,
        Role::Learner => ReplicaRole::Learner,
        Role::Candidate => ReplicaRole::Candidate,
        Role::Stopped => ReplicaRole::Stopped,
    }
}

impl Replicas {
    /// Replicas hosted by `host`; process apps keep their sockets and logs under `run_root`.
    pub fn new(host: Host, run_root: PathBuf) -> Self {
        Self {
            host,
            run_root,
            known: Mutex::new(HashMap::new()),
            busy: Arc::new(Mutex::new(HashSet::new())),
            cgroups: None,
        }
    }

    /// Runs the app process of each `process` replica in its own cgroup of `cgroups`,
    /// with the CPU share of its assignment (built-in apps run inside the agent and get
    /// none).
    pub fn with_cpu_cgroups(mut self, cgroups: Option<Arc<crate::cgroup::Cgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    fn app(&self, a: &ReplicaAssignment) -> (Box<dyn StateMachine>, Option<ProcessHandle>) {
        match &a.app {
            AppSpec::Builtin(_) => (Box::new(stator_kv::KvMachine::default()), None),
            AppSpec::Container(_) => panic!(
                "replica of {} partition {} assigned a container app: spec validation rejects those for replicated services, so the server is newer than this agent",
                a.service, a.partition
            ),
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
                (Box::new(machine), Some(handle))
            }
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

    /// One reconcile pass toward `assignments`.
    pub async fn reconcile(&self, assignments: &[ReplicaAssignment]) {
        let wanted: HashSet<GroupId> = assignments.iter().map(|a| a.group).collect();
        for a in assignments {
            let members: BTreeMap<NodeId, String> = a
                .members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect();
            if self.host.replica(a.group).is_none() {
                let options = GroupOptions {
                    election_timeout_ms: if a.election_timeout_ms > 0 {
                        a.election_timeout_ms
                    } else {
                        stator_replication::host::DEFAULT_ELECTION_TIMEOUT_MS
                    },
                    ..GroupOptions::default()
                };
                let (app, process) = self.app(a);
                if let Err(e) = self.host.create_group(a.group, options, app).await {
                    tracing::warn!(group = %a.group, "cannot create replica: {e}");
                    continue;
                }
                self.known.lock().expect("known mutex poisoned").insert(
                    a.group,
                    Known {
                        service: a.service.clone(),
                        partition: a.partition,
                        bootstrapped: false,
                        created: Instant::now(),
                        process,
                        cgroup_applied: None,
                    },
                );
            }
            self.apply_cpu_share(a);
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
            if must_bootstrap {
                match self.host.bootstrap(a.group, &members).await {
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
            let leads = self
                .host
                .status(a.group)
                .is_some_and(|s| s.role == Role::Leader);
            if leads
                && !members.is_empty()
                && self
                    .busy
                    .lock()
                    .expect("busy mutex poisoned")
                    .insert(a.group)
            {
                let (host, busy, group) = (self.host.clone(), self.busy.clone(), a.group);
                tokio::spawn(async move {
                    match host.reconcile_membership(group, &members).await {
                        Ok(step) => tracing::debug!(%group, ?step, "membership step"),
                        Err(e) => {
                            tracing::info!(%group, "membership step failed (retried next beat): {e}")
                        }
                    }
                    busy.lock().expect("busy mutex poisoned").remove(&group);
                });
            }
        }
        for group in self.host.groups() {
            if !wanted.contains(&group) {
                tracing::info!(%group, "replica no longer assigned; stopping it");
                self.host.remove_group(group).await;
                self.known
                    .lock()
                    .expect("known mutex poisoned")
                    .remove(&group);
                if let Some(cgroups) = &self.cgroups {
                    cgroups.remove(&replica_cgroup(group));
                }
            }
        }
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
                    role: role(s.role),
                    leader: s.leader,
                    term: s.term,
                    voters: s.voters,
                    learners: s.learners,
                    applied_index: s.applied_index,
                    state_bytes: s.state_bytes,
                    ops_per_sec: s.ops_per_sec,
                    p99_us: s.p99_us,
                    error: s.error,
                })
            })
            .collect()
    }
}

/// The cgroup name of a replica's app: `replica-<service id>-<partition>`.
fn replica_cgroup(group: GroupId) -> String {
    format!("replica-{}-{}", group.service_id(), group.partition())
}
