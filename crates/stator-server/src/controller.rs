//! The controller task: sole owner of the [`Cluster`], persister of its records, runner
//! of the reconcile loop, publisher of events.
//!
//! API handlers talk to it through a bounded channel of [`Command`]s and get answers on
//! oneshot channels, so no lock guards the cluster and every change is ordered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use stator_api::agent::{
    Assignments, Heartbeat, RegisterRequest, RegisterResponse, Rejoin, ReplicaRole, ReplicaStatus,
};
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::{ServiceKind, ServiceSpec};
use stator_store::{Store, WriteOp};

use crate::assign::assignments_for;
use crate::autoscale::{self, AutoscaleConfig, AutoscaleState};
use crate::error::{Result, ServerError};
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::model::{
    Cluster, JobPhase, NodeObserved, NodeRecord, NodeState, PartitionDesign, Placement, Service,
    ServiceRecord, META_PREFIX, NODES_PREFIX, PLACEMENTS_PREFIX, SERVICES_PREFIX,
};
use crate::present::service_view;
use crate::provider::NodeProvider;
use crate::reconcile::{
    apply_action, drain_carried_over, reconcile, ReconcileAction, ReplaceReason,
};
use stator_api::views::{ApplyResult, Event, EventKind};

/// Commands queued for the controller before senders wait: enough for a burst of
/// heartbeats from a few hundred nodes, small enough to push back on a flood.
pub const COMMAND_QUEUE_LEN: usize = 1024;
/// Events kept for slow subscribers before they are told they lagged.
pub const EVENT_BUFFER_LEN: usize = 1024;
/// Past events kept for `GET /v1/events/recent` (the CLI's `stator events`, the
/// dashboard's feed): about an hour of a busy small cluster, a few hundred KiB.
pub const RECENT_EVENTS_KEPT: usize = 1000;
/// Shortest gap between two reconcile passes triggered by changes: coalesces a burst of
/// heartbeats into one pass.
pub const MIN_RECONCILE_GAP_MS: u64 = 50;
/// Lost node records kept for `GET /v1/nodes`; older ones are forgotten, except those a
/// partition design still names: their identity lets the agent come back as that member
/// with its store (see `rejoin`).
pub const MAX_LOST_NODES_KEPT: usize = 256;
/// Longest node name accepted at registration (a DNS name).
pub const MAX_NODE_NAME_LEN: usize = 253;

const NEXT_NODE_ID_KEY: &str = "/stator/meta/next-node-id";
const NEXT_SERVICE_ID_KEY: &str = "/stator/meta/next-service-id";
const CLUSTER_SECRET_KEY: &str = "/stator/meta/cluster-secret";

/// A read of the cluster, run inside the controller task.
type ReadFn = Box<dyn FnOnce(&Cluster, u64) + Send>;

/// What API handlers ask of the controller.
pub enum Command {
    /// An agent registers.
    Register(RegisterRequest, oneshot::Sender<Result<RegisterResponse>>),
    /// An agent heartbeats.
    Heartbeat(Heartbeat, oneshot::Sender<Result<Assignments>>),
    /// A validated spec is applied.
    Apply(Box<ServiceSpec>, oneshot::Sender<Result<ApplyResult>>),
    /// A service is deleted.
    Delete(String, oneshot::Sender<Result<()>>),
    /// A node (by name or id) starts draining.
    Drain(String, oneshot::Sender<Result<NodeId>>),
    /// A read-only query.
    Read(ReadFn),
    /// The recent events, oldest first.
    RecentEvents(oneshot::Sender<Vec<Event>>),
}

/// The handle API handlers hold.
#[derive(Clone)]
pub struct ControllerHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    cluster_secret: Arc<str>,
}

impl ControllerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.map_err(|_| ServerError::ShuttingDown)?
    }

    /// Registers an agent.
    pub async fn register(&self, request: RegisterRequest) -> Result<RegisterResponse> {
        self.ask(|reply| Command::Register(request, reply)).await
    }

    /// Records a heartbeat and returns the node's assignments.
    pub async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<Assignments> {
        self.ask(|reply| Command::Heartbeat(heartbeat, reply)).await
    }

    /// Applies a validated spec.
    pub async fn apply(&self, spec: ServiceSpec) -> Result<ApplyResult> {
        self.ask(|reply| Command::Apply(Box::new(spec), reply))
            .await
    }

    /// Deletes a service.
    pub async fn delete(&self, name: String) -> Result<()> {
        self.ask(|reply| Command::Delete(name, reply)).await
    }

    /// Starts draining a node; returns its id.
    pub async fn drain(&self, node: String) -> Result<NodeId> {
        self.ask(|reply| Command::Drain(node, reply)).await
    }

    /// Runs `read` against the cluster (with the current time) and returns its result.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Cluster, u64) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let read: ReadFn = Box::new(move |cluster, now_ms| {
            // The asker may have gone away; nothing to do then.
            let _ = reply.send(read(cluster, now_ms));
        });
        self.commands
            .send(Command::Read(read))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.map_err(|_| ServerError::ShuttingDown)
    }

    /// The secret replica transports and gateways authenticate with.
    pub fn cluster_secret(&self) -> &str {
        &self.cluster_secret
    }

    /// The last [`RECENT_EVENTS_KEPT`] events, oldest first.
    pub async fn recent_events(&self) -> Result<Vec<Event>> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::RecentEvents(reply))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.map_err(|_| ServerError::ShuttingDown)
    }

    /// A subscription to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Settings the controller needs from the server config.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Heartbeat grace.
    pub node_grace_ms: u64,
    /// Interval told to agents.
    pub heartbeat_interval_ms: u64,
    /// Node pools, the autoscaler's tunables and the provider; None: no autoscaling.
    pub autoscale: Option<Autoscaler>,
}

/// What the autoscaler needs: its config and where nodes come from.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    /// Pools and tunables.
    pub config: AutoscaleConfig,
    /// Provisions and releases nodes.
    pub provider: Arc<dyn NodeProvider>,
}

/// The autoscaler's part of the controller task.
struct AutoscaleRounds {
    settings: Autoscaler,
    state: AutoscaleState,
    /// When the next round is due, ms since the Unix epoch.
    next_round_ms: u64,
}

/// Wall-clock ms since the Unix epoch: the time base of heartbeats and retries, since
/// retry deadlines are persisted and must mean the same after a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a controller task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerExit {
    /// Shutdown was asked for, or every handle is gone.
    Stopped,
    /// A write was refused by the fence: another server holds the leader key now. The
    /// task stopped at once; this server must step down (it never retries the write).
    Fenced,
    /// A store write of a change already made in memory failed (the store is down, full
    /// or refusing): memory is ahead of the store, so the task stopped rather than act on
    /// state the store does not hold. The server steps down and a new term reloads the
    /// cluster from the store.
    StoreFailed,
}

/// Loads the cluster from the store and spawns the controller task. Every store write of
/// the task goes through `fence` (the leader key this term won; unfenced when the server
/// owns its store alone).
pub async fn spawn(
    store: Arc<dyn Store>,
    fence: Fence,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(ControllerHandle, tokio::task::JoinHandle<ControllerExit>)> {
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_LEN);
    let (events, _) = broadcast::channel(EVENT_BUFFER_LEN);
    let mut controller = Controller::load(store, fence, settings, metrics, events.clone()).await?;
    let cluster_secret: Arc<str> = controller.cluster_secret.as_str().into();
    let task = tokio::spawn(async move { controller.run(receiver, shutdown).await });
    Ok((
        ControllerHandle {
            commands,
            events,
            cluster_secret,
        },
        task,
    ))
}

struct Controller {
    cluster: Cluster,
    store: Arc<dyn Store>,
    /// Every write goes through it; once it refuses one, the task ends.
    fence: Fence,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    /// The last events published, for readers that arrive later.
    recent_events: VecDeque<Event>,
    next_event_seq: u64,
    next_node_id: u64,
    next_service_id: u64,
    cluster_secret: String,
    /// When the next reconcile pass is due, ms since the Unix epoch.
    next_run_ms: u64,
    /// Problems of the last pass, to log only changes.
    last_problems: Vec<String>,
    /// The autoscaler's rounds, when node pools are configured.
    autoscale_rounds: Option<AutoscaleRounds>,
    /// Set when a write of a change already applied in memory failed: the task ends
    /// before it acts again ([`ControllerExit::StoreFailed`]).
    store_failed: bool,
}

impl Controller {
    async fn load(
        store: Arc<dyn Store>,
        mut fence: Fence,
        settings: ControllerSettings,
        metrics: Arc<Metrics>,
        events: broadcast::Sender<Event>,
    ) -> Result<Self> {
        let now = now_ms();
        let mut cluster = Cluster::default();
        for (key, value) in store.list(NODES_PREFIX).await? {
            let record: NodeRecord = decode(&key, &value.value)?;
            if record.state.is_alive() {
                // Heartbeats are not persisted: give every node a fresh grace.
                cluster.observed.insert(
                    record.id,
                    NodeObserved {
                        last_heartbeat_ms: now,
                        ..NodeObserved::default()
                    },
                );
            }
            cluster.nodes.insert(record.id, record);
        }
        let mut placements: BTreeMap<String, Placement> = BTreeMap::new();
        for (key, value) in store.list(PLACEMENTS_PREFIX).await? {
            let name = key[PLACEMENTS_PREFIX.len()..].to_string();
            placements.insert(name, decode(&key, &value.value)?);
        }
        for (key, value) in store.list(SERVICES_PREFIX).await? {
            let record: ServiceRecord = decode(&key, &value.value)?;
            let placement = placements
                .remove(&record.spec.name)
                .unwrap_or_else(|| fresh_placement(&record.spec));
            cluster
                .services
                .insert(record.spec.name.clone(), Service { record, placement });
        }
        let next_node_id = read_counter(&*store, NEXT_NODE_ID_KEY).await?;
        let next_service_id = read_counter(&*store, NEXT_SERVICE_ID_KEY).await?;
        let cluster_secret = match store.get(CLUSTER_SECRET_KEY).await? {
            Some(value) => String::from_utf8_lossy(&value.value).into_owned(),
            None => {
                let secret = crate::config::generate_token();
                let op = WriteOp::Put {
                    key: CLUSTER_SECRET_KEY.to_string(),
                    value: Bytes::from(secret.clone()),
                };
                fence.write(&*store, vec![op]).await?;
                secret
            }
        };
        debug_assert!(CLUSTER_SECRET_KEY.starts_with(META_PREFIX));
        metrics.observe(&cluster, now);
        let autoscale_rounds = settings.autoscale.clone().map(|settings| AutoscaleRounds {
            next_round_ms: now + settings.config.interval_ms,
            settings,
            state: AutoscaleState::default(),
        });
        Ok(Controller {
            cluster,
            store,
            fence,
            settings,
            metrics,
            events,
            recent_events: VecDeque::with_capacity(RECENT_EVENTS_KEPT),
            next_event_seq: 0,
            next_node_id,
            next_service_id,
            cluster_secret,
            next_run_ms: now,
            last_problems: Vec::new(),
            autoscale_rounds,
            store_failed: false,
        })
    }

    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> ControllerExit {
        loop {
            let delay = Duration::from_millis(self.next_run_ms.saturating_sub(now_ms()));
            tokio::select! {
                // Shutdown first, so a flood of heartbeats cannot hold the server up.
                biased;
                _ = shutdown.changed() => return ControllerExit::Stopped,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return ControllerExit::Stopped,
                },
                _ = tokio::time::sleep(delay) => self.reconcile().await,
            }
            // Deposed: stop before the next command or pass; the server steps down.
            if self.fence.is_deposed() {
                return ControllerExit::Fenced;
            }
            // Memory ran ahead of the store: stop before acting on it; the next term
            // starts from what the store holds.
            if self.store_failed {
                return ControllerExit::StoreFailed;
            }
        }
    }

    /// Asks for a reconcile pass soon (coalesced with others).
    fn wake(&mut self) {
        self.next_run_ms = self.next_run_ms.min(now_ms() + MIN_RECONCILE_GAP_MS);
    }

    async fn handle(&mut self, command: Command) {
        // A dropped reply channel means the caller gave up; the change still stands.
        match command {
            Command::Register(request, reply) => {
                let _ = reply.send(self.register(request).await);
            }
            Command::Heartbeat(heartbeat, reply) => {
                let _ = reply.send(self.heartbeat(heartbeat));
            }
            Command::Apply(spec, reply) => {
                let _ = reply.send(self.apply(*spec).await);
            }
            Command::Delete(name, reply) => {
                let _ = reply.send(self.delete(&name).await);
            }
            Command::Drain(node, reply) => {
                let _ = reply.send(self.drain(&node).await);
            }
            Command::Read(read) => read(&self.cluster, now_ms()),
            Command::RecentEvents(reply) => {
                let _ = reply.send(self.recent_events.iter().cloned().collect());
            }
        }
    }

    async fn register(&mut self, mut request: RegisterRequest) -> Result<RegisterResponse> {
        validate_registration(&request)?;
        // The secret is proof, never part of the stored node record.
        if let Some(rejoin) = request.rejoin.take() {
            if let Some(response) = self.rejoin(&rejoin, request.clone()).await? {
                return Ok(response);
            }
        }
        let now = now_ms();
        // An agent that comes back under the same name restarted and lost its in-memory
        // replicas: its old incarnation is gone, replace what it hosted now.
        let stale: Vec<NodeId> = self
            .cluster
            .nodes
            .values()
            .filter(|n| n.state.is_alive() && n.info.name == request.name)
            .map(|n| n.id)
            .collect();
        for node in stale {
            self.apply_actions(vec![ReconcileAction::MarkNodeLost { node }])
                .await;
        }
        // A drain asked for under this name and not finished when the node was lost goes
        // on for its new incarnation.
        let draining = drain_carried_over(&self.cluster, &request.name);
        let id = self.next_node_id.max(1);
        self.next_node_id = id + 1;
        // Persist the counter before handing the id out: an id is never given twice.
        put_json(
            &*self.store,
            &mut self.fence,
            NEXT_NODE_ID_KEY,
            &self.next_node_id,
        )
        .await?;
        let record = NodeRecord {
            id,
            info: request,
            state: if draining {
                NodeState::Draining
            } else {
                NodeState::Ready
            },
            registered_at_ms: now,
            node_secret: crate::config::generate_token(),
            drain_requested: draining,
        };
        put_json(&*self.store, &mut self.fence, &node_key(id), &record).await?;
        self.publish(EventKind::NodeJoined {
            node_id: id,
            name: record.info.name.clone(),
        });
        if draining {
            self.publish(EventKind::NodeDraining {
                node_id: id,
                name: record.info.name.clone(),
            });
        }
        self.cluster.nodes.insert(id, record);
        self.cluster.observed.insert(
            id,
            NodeObserved {
                last_heartbeat_ms: now,
                ..NodeObserved::default()
            },
        );
        self.prune_lost_nodes().await;
        self.wake();
        Ok(RegisterResponse {
            node_id: id,
            node_secret: self.cluster.nodes[&id].node_secret.clone(),
            cluster_secret: self.cluster_secret.clone(),
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
        })
    }

    /// An agent restarted on its data dir asks to keep its id. Granted while the server
    /// has the node's record, alive or lost (`None` once a lost record was pruned, or for
    /// a drained node: it joins as a new node). A lost node comes back `ready` (`draining`
    /// when it was lost while draining: the drain goes on)
    /// ([`ReconcileAction::MarkNodeRejoined`]): its durable replicas may hold the only copy
    /// of acknowledged writes (every member restarted past the grace), so its identity
    /// and stores are kept; members the group replaced meanwhile are simply no longer
    /// assigned to it. A wrong secret is refused: someone else's data dir, or a forgery.
    async fn rejoin(
        &mut self,
        rejoin: &Rejoin,
        info: RegisterRequest,
    ) -> Result<Option<RegisterResponse>> {
        let Some(record) = self.cluster.nodes.get(&rejoin.node_id) else {
            return Ok(None);
        };
        if record.node_secret.is_empty()
            || !crate::config::token_matches(&rejoin.node_secret, &record.node_secret)
        {
            return Err(ServerError::BadRequest(format!(
                "rejoin as node {} refused: the node secret does not match; if this data dir was copied from another node, remove its identity file to join as a new node",
                rejoin.node_id
            )));
        }
        match record.state {
            NodeState::Ready | NodeState::Draining => {}
            // A lost node keeps its id only for what its disk holds: members of durable
            // services. Otherwise it joins as a new node, as before durable stores (a
            // memory replica forgot its vote; a node lost while draining stays out).
            NodeState::Lost if !self.cluster.designs_durable_member(record.id) => return Ok(None),
            NodeState::Lost => {
                let node = record.id;
                self.apply_actions(vec![ReconcileAction::MarkNodeRejoined {
                    node,
                    at_ms: now_ms(),
                }])
                .await;
            }
            NodeState::Drained => return Ok(None),
        }
        let Some(record) = self.cluster.nodes.get(&rejoin.node_id) else {
            return Ok(None);
        };
        let mut record = record.clone();
        record.info = info;
        put_json(&*self.store, &mut self.fence, &node_key(record.id), &record).await?;
        let id = record.id;
        self.publish(EventKind::NodeRejoined {
            node_id: id,
            name: record.info.name.clone(),
        });
        let node_secret = record.node_secret.clone();
        self.cluster.nodes.insert(id, record);
        // A fresh grace; the replicas it reported before the restart are gone.
        self.cluster.observed.insert(
            id,
            NodeObserved {
                last_heartbeat_ms: now_ms(),
                ..NodeObserved::default()
            },
        );
        self.wake();
        Ok(Some(RegisterResponse {
            node_id: id,
            node_secret,
            cluster_secret: self.cluster_secret.clone(),
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
        }))
    }

    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<Assignments> {
        let node = heartbeat.node_id;
        if !self.cluster.is_alive(node) {
            return Err(ServerError::UnknownNode(node));
        }
        self.check_replicas_base(&heartbeat)?;
        self.metrics.node_reported(node, &heartbeat.metrics);
        let held = self.cluster.observed.get(&node);
        let groups = groups_touched(&heartbeat, held);
        let changed =
            reconciler_input_changed(&heartbeat, held, self.cluster.resp_addrs.get(&node));
        let before: Vec<_> = groups
            .keys()
            .map(|g| self.cluster.group_observed(*g).map(|o| (o.leader, o.term)))
            .collect();
        let held = heartbeat.assignments_held;
        let replicas_view = self.record_observed(heartbeat);
        self.publish_leader_changes(groups, before);
        if changed {
            self.wake();
        }
        let assignments = assignments_for(&self.cluster, node);
        let fingerprint = assignments.digest();
        if held == Some(fingerprint) {
            return Ok(Assignments {
                replicas_view,
                fingerprint: Some(fingerprint),
                unchanged: true,
                draining: assignments.draining,
                ..Assignments::default()
            });
        }
        Ok(Assignments {
            replicas_view,
            fingerprint: Some(fingerprint),
            ..assignments
        })
    }

    /// A delta heartbeat must build on the view of the node's replicas this server holds.
    fn check_replicas_base(&self, heartbeat: &Heartbeat) -> Result<()> {
        let node = heartbeat.node_id;
        let held_view = self
            .cluster
            .observed
            .get(&node)
            .and_then(|o| o.replicas_view);
        if let Some(since) = heartbeat.replicas_since.filter(|s| held_view != Some(*s)) {
            // Nothing recorded, not even the beat: the agent sends its full view at once.
            return Err(ServerError::Conflict {
                field: "replicas_since",
                reason: format!(
                    "this server does not hold view {since} of node {node}'s replicas (it \
                     restarted, or a heartbeat was lost); send every replica"
                ),
            });
        }
        Ok(())
    }

    /// Stores what the heartbeat reports (a delta merged into the held view) and
    /// publishes new OOM kills; the replicas view the answer acknowledges.
    fn record_observed(&mut self, heartbeat: Heartbeat) -> Option<u64> {
        let node = heartbeat.node_id;
        if heartbeat.resp_addrs.is_empty() {
            self.cluster.resp_addrs.remove(&node);
        } else {
            self.cluster.resp_addrs.insert(node, heartbeat.resp_addrs);
        }
        let oom_kills = new_oom_kills(
            self.cluster
                .observed
                .get(&node)
                .map(|o| o.instances.as_slice()),
            &heartbeat.instances,
        );
        for (service, id, oom_kills) in oom_kills {
            self.publish(EventKind::InstanceOomKilled {
                service,
                id,
                node_id: node,
                oom_kills,
            });
        }
        let replicas = match heartbeat.replicas_since {
            None => heartbeat.replicas,
            Some(_) => merge_replica_changes(
                self.cluster
                    .observed
                    .get_mut(&node)
                    .map(|o| std::mem::take(&mut o.replicas))
                    .unwrap_or_default(),
                heartbeat.replicas,
                &heartbeat.replicas_gone,
            ),
        };
        let replicas_view = (heartbeat.replicas_view > 0).then_some(heartbeat.replicas_view);
        self.cluster.observed.insert(
            node,
            NodeObserved {
                last_heartbeat_ms: now_ms(),
                replicas,
                instances: heartbeat.instances,
                replicas_view,
            },
        );
        replicas_view
    }

    /// Publishes `LeaderChanged` for each of `groups` whose leader differs from `before`.
    fn publish_leader_changes(
        &mut self,
        groups: BTreeMap<GroupId, (String, u32)>,
        before: Vec<Option<(NodeId, u64)>>,
    ) {
        for ((group, (service, partition)), before) in groups.into_iter().zip(before) {
            let after = self
                .cluster
                .group_observed(group)
                .map(|o| (o.leader, o.term));
            if after.map(|a| a.0) != before.map(|b| b.0) && self.group_exists(group) {
                self.publish(EventKind::LeaderChanged {
                    service,
                    partition,
                    leader: after.map(|a| a.0),
                    term: after.map_or(0, |a| a.1),
                });
            }
        }
    }

    fn group_exists(&self, group: GroupId) -> bool {
        self.cluster.services.values().any(|s| {
            s.record.id == group.service_id()
                && (group.partition() as usize) < s.placement.partitions.len()
        })
    }

    async fn apply(&mut self, spec: ServiceSpec) -> Result<ApplyResult> {
        let name = spec.name.clone();
        let outcome = match self.cluster.services.get(&name) {
            Some(existing) if existing.record.spec == spec => "unchanged",
            Some(existing) => {
                check_immutable(&existing.record.spec, &spec)?;
                let record = ServiceRecord {
                    id: existing.record.id,
                    spec,
                    generation: existing.record.generation + 1,
                };
                put_json(&*self.store, &mut self.fence, &service_key(&name), &record).await?;
                let service = self.cluster.services.get_mut(&name).expect("checked above");
                service.record = record;
                "updated"
            }
            None => {
                let id = self.next_service_id.max(1);
                self.next_service_id = id + 1;
                put_json(
                    &*self.store,
                    &mut self.fence,
                    NEXT_SERVICE_ID_KEY,
                    &self.next_service_id,
                )
                .await?;
                let placement = fresh_placement(&spec);
                let record = ServiceRecord {
                    id,
                    spec,
                    generation: 1,
                };
                put_json(
                    &*self.store,
                    &mut self.fence,
                    &placement_key(&name),
                    &placement,
                )
                .await?;
                put_json(&*self.store, &mut self.fence, &service_key(&name), &record).await?;
                self.cluster
                    .services
                    .insert(name.clone(), Service { record, placement });
                "created"
            }
        };
        let service = &self.cluster.services[&name];
        let view = service_view(&self.cluster, service);
        if outcome != "unchanged" {
            self.publish(EventKind::ServiceApplied {
                service: name,
                generation: view.generation,
            });
            self.wake();
        }
        Ok(ApplyResult {
            result: outcome.to_string(),
            service: view,
        })
    }

    async fn delete(&mut self, name: &str) -> Result<()> {
        if !self.cluster.services.contains_key(name) {
            return Err(ServerError::NotFound {
                kind: "service",
                name: name.to_string(),
            });
        }
        let ops = vec![delete_op(service_key(name)), delete_op(placement_key(name))];
        self.fence.write(&*self.store, ops).await?;
        self.cluster.services.remove(name);
        self.publish(EventKind::ServiceDeleted {
            service: name.to_string(),
        });
        self.wake();
        Ok(())
    }

    async fn drain(&mut self, node: &str) -> Result<NodeId> {
        let found = self
            .cluster
            .nodes
            .values()
            .filter(|n| n.info.name == node || n.id.to_string() == node)
            // Prefer the live incarnation when a name was reused.
            .max_by_key(|n| (n.state.is_alive(), n.id))
            .map(|n| (n.id, n.state));
        let (id, state) = found.ok_or_else(|| ServerError::NotFound {
            kind: "node",
            name: node.to_string(),
        })?;
        match state {
            NodeState::Lost => Err(ServerError::Conflict {
                field: "node",
                reason: format!(
                    "{node} is lost: its replicas are being replaced already; nothing to drain"
                ),
            }),
            NodeState::Draining | NodeState::Drained => Ok(id),
            NodeState::Ready => {
                let mut record = self.cluster.nodes[&id].clone();
                record.state = NodeState::Draining;
                record.drain_requested = true;
                put_json(&*self.store, &mut self.fence, &node_key(id), &record).await?;
                self.publish(EventKind::NodeDraining {
                    node_id: id,
                    name: record.info.name.clone(),
                });
                self.cluster.nodes.insert(id, record);
                self.wake();
                Ok(id)
            }
        }
    }

    async fn reconcile(&mut self) {
        let now = now_ms();
        let mut decision = reconcile(&self.cluster, now, self.settings.node_grace_ms);
        self.note_drain_waits(std::mem::take(&mut decision.drain_waits));
        // Log problems when they change, not on every pass: a service waiting for
        // nodes would otherwise log twice a second.
        if decision.problems != self.last_problems {
            for problem in &decision.problems {
                tracing::warn!(%problem, "controller could not act");
            }
            self.last_problems = decision.problems.clone();
        }
        self.metrics.reconcile_run(decision.actions.len());
        self.next_run_ms = decision.next_run_ms.max(now + MIN_RECONCILE_GAP_MS);
        if !decision.actions.is_empty() {
            self.apply_actions(decision.actions).await;
            // Actions change what the next pass sees: look again soon.
            self.wake();
        }
        self.autoscale_round(now).await;
        self.metrics.observe(&self.cluster, now);
    }

    /// One autoscaling round when due: resizes, migrations and drains are applied and
    /// persisted like any action; provisions and releases go to the provider on their
    /// own tasks, so a slow provider never holds up the controller.
    async fn autoscale_round(&mut self, now: u64) {
        let Some(autoscale_rounds) = self.autoscale_rounds.as_mut() else {
            return;
        };
        if now < autoscale_rounds.next_round_ms {
            self.next_run_ms = self.next_run_ms.min(autoscale_rounds.next_round_ms);
            return;
        }
        autoscale_rounds.next_round_ms = now + autoscale_rounds.settings.config.interval_ms;
        self.next_run_ms = self.next_run_ms.min(autoscale_rounds.next_round_ms);
        let round = autoscale::round(
            &self.cluster,
            now,
            &autoscale_rounds.settings.config,
            &mut autoscale_rounds.state,
        );
        let provider = autoscale_rounds.settings.provider.clone();
        for request in round.provision {
            self.publish(EventKind::NodeRequested {
                pool: request.pool.name.clone(),
                zone: request.zone.clone(),
            });
            let provider = provider.clone();
            tokio::spawn(async move {
                match provider.provision(&request.pool, &request.zone).await {
                    Ok(name) => {
                        tracing::info!(pool = %request.pool.name, zone = %request.zone, %name, "node requested")
                    }
                    Err(error) => tracing::warn!(%error, "could not provision a node"),
                }
            });
        }
        if !round.actions.is_empty() {
            self.apply_actions(round.actions).await;
            self.wake();
        }
        for request in round.release {
            self.publish(EventKind::NodeReleased {
                node_id: request.node,
                name: request.name.clone(),
            });
            let provider = provider.clone();
            tokio::spawn(async move {
                if let Err(error) = provider.release(&request.pool, &request.name).await {
                    tracing::warn!(%error, node = %request.name, "could not release a node");
                }
            });
        }
    }

    /// Applies actions to the cluster, persists what they touched and publishes events.
    async fn apply_actions(&mut self, actions: Vec<ReconcileAction>) {
        let mut touched_nodes = BTreeSet::new();
        let mut touched_services = BTreeSet::new();
        for action in &actions {
            apply_action(&mut self.cluster, action);
            match action {
                ReconcileAction::MarkNodeLost { node }
                | ReconcileAction::MarkNodeRejoined { node, .. }
                | ReconcileAction::MarkNodeDrained { node }
                | ReconcileAction::MarkNodeDraining { node } => {
                    touched_nodes.insert(*node);
                }
                ReconcileAction::PlacePartition { service, .. }
                | ReconcileAction::MarkGroupStarted { service, .. }
                | ReconcileAction::ResetPartition { service, .. }
                | ReconcileAction::ReplaceMember { service, .. }
                | ReconcileAction::PlaceInstance { service, .. }
                | ReconcileAction::RemoveInstance { service, .. }
                | ReconcileAction::FinishInstance { service, .. }
                | ReconcileAction::SetJobPhase { service, .. }
                | ReconcileAction::ResizeReplica { service, .. }
                | ReconcileAction::MigrateMember { service, .. } => {
                    touched_services.insert(service.clone());
                }
            }
            if let Some(event) = self.event_of(action) {
                self.publish(event);
            }
        }
        for node in touched_nodes {
            if let Some(record) = self.cluster.nodes.get(&node) {
                let written =
                    put_json(&*self.store, &mut self.fence, &node_key(node), record).await;
                if self.fence.is_deposed() {
                    return;
                }
                if let Err(error) = written {
                    self.step_down_after(&error, &format!("node {node}"));
                    return;
                }
            }
        }
        for name in touched_services {
            if let Some(service) = self.cluster.services.get(&name) {
                let placement = &service.placement;
                let written = put_json(
                    &*self.store,
                    &mut self.fence,
                    &placement_key(&name),
                    placement,
                )
                .await;
                if self.fence.is_deposed() {
                    return;
                }
                if let Err(error) = written {
                    self.step_down_after(&error, &format!("the placement of service {name}"));
                    return;
                }
            }
        }
    }

    /// A write of a change already made in memory failed: the task must not act on
    /// memory the store does not hold, so it ends after this command or pass.
    fn step_down_after(&mut self, error: &dyn std::fmt::Display, what: &str) {
        tracing::error!(
            %error,
            "could not persist {what}; memory is ahead of the store, so this controller \
             steps down and the next term reloads the cluster from the store"
        );
        self.store_failed = true;
    }

    fn event_of(&self, action: &ReconcileAction) -> Option<EventKind> {
        Some(match action {
            ReconcileAction::MarkNodeLost { node } => EventKind::NodeLost {
                node_id: *node,
                name: self.cluster.node_name(*node),
            },
            // The rejoin itself publishes `node_rejoined`.
            ReconcileAction::MarkNodeRejoined { .. } => return None,
            ReconcileAction::MarkNodeDrained { node } => EventKind::NodeDrained {
                node_id: *node,
                name: self.cluster.node_name(*node),
            },
            ReconcileAction::PlacePartition {
                service,
                partition,
                members,
            } => EventKind::ReplicaPlaced {
                service: service.clone(),
                partition: *partition,
                members: members.clone(),
            },
            ReconcileAction::MarkGroupStarted { .. } => return None,
            ReconcileAction::ResetPartition { service, partition } => EventKind::PartitionReset {
                service: service.clone(),
                partition: *partition,
                reason:
                    "every member lost its state (durability = \"memory\"); placed again, empty"
                        .into(),
            },
            ReconcileAction::ReplaceMember {
                service,
                partition,
                remove,
                add,
                reason,
            } => EventKind::ReplicaMoved {
                service: service.clone(),
                partition: *partition,
                from: *remove,
                to: *add,
                reason: match reason {
                    ReplaceReason::NodeLost => "node_lost",
                    ReplaceReason::NodeDraining => "node_draining",
                    ReplaceReason::ReplicaForgotten => "replica_forgotten",
                }
                .to_string(),
            },
            ReconcileAction::PlaceInstance { service, node, .. } => {
                // apply_action has run: the newest instance is this one.
                let id = self.cluster.services[service]
                    .placement
                    .instances
                    .last()
                    .map(|i| i.id.clone())
                    .unwrap_or_default();
                EventKind::InstancePlaced {
                    service: service.clone(),
                    id,
                    node_id: *node,
                }
            }
            ReconcileAction::RemoveInstance { service, id } => EventKind::InstanceRemoved {
                service: service.clone(),
                id: id.clone(),
            },
            ReconcileAction::FinishInstance {
                service,
                id,
                succeeded,
                ..
            } => EventKind::InstanceFinished {
                service: service.clone(),
                id: id.clone(),
                succeeded: *succeeded,
            },
            ReconcileAction::SetJobPhase { service, phase } => EventKind::JobFinished {
                service: service.clone(),
                phase: *phase,
            },
            ReconcileAction::ResizeReplica {
                service,
                partition,
                node,
                cpu_millis,
            } => EventKind::ReplicaResized {
                service: service.clone(),
                partition: *partition,
                node_id: *node,
                cpu_millis: *cpu_millis,
            },
            ReconcileAction::MigrateMember {
                service,
                partition,
                from,
                to,
                ..
            } => EventKind::ReplicaMoved {
                service: service.clone(),
                partition: *partition,
                from: *from,
                to: *to,
                reason: "autoscale".to_string(),
            },
            ReconcileAction::MarkNodeDraining { node } => EventKind::NodeDraining {
                node_id: *node,
                name: self.cluster.node_name(*node),
            },
        })
    }

    /// Keeps why drains wait, publishing one event per node when its reasons change
    /// (not one per pass: a blocked drain would otherwise repeat twice a second).
    fn note_drain_waits(&mut self, waits: BTreeMap<NodeId, Vec<String>>) {
        for (node, reasons) in &waits {
            if self.cluster.drain_waits.get(node) != Some(reasons) {
                self.publish(EventKind::DrainBlocked {
                    node_id: *node,
                    name: self.cluster.node_name(*node),
                    reasons: reasons.clone(),
                });
            }
        }
        self.cluster.drain_waits = waits;
    }

    fn publish(&mut self, kind: EventKind) {
        self.next_event_seq += 1;
        tracing::info!(event = kind.name(), ?kind, "event");
        self.metrics.event(&kind);
        let event = Event {
            seq: self.next_event_seq,
            time_ms: now_ms(),
            kind,
        };
        if self.recent_events.len() == RECENT_EVENTS_KEPT {
            self.recent_events.pop_front();
        }
        self.recent_events.push_back(event.clone());
        // No subscribers is fine: live readers subscribe, late ones read the recent.
        let _ = self.events.send(event);
    }

    async fn prune_lost_nodes(&mut self) {
        let lost: Vec<NodeId> = self
            .cluster
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Lost && !self.cluster.designs_member(n.id))
            .map(|n| n.id)
            .collect();
        if lost.len() <= MAX_LOST_NODES_KEPT {
            return;
        }
        for id in &lost[..lost.len() - MAX_LOST_NODES_KEPT] {
            self.cluster.nodes.remove(id);
            if let Err(error) = self
                .fence
                .write(&*self.store, vec![delete_op(node_key(*id))])
                .await
            {
                if self.fence.is_deposed() {
                    return;
                }
                self.step_down_after(&error, &format!("lost node {id}"));
                return;
            }
        }
    }
}

/// Spec fields that cannot change on a live service: they define its groups.
fn check_immutable(old: &ServiceSpec, new: &ServiceSpec) -> Result<()> {
    if old.kind != new.kind {
        return Err(ServerError::Conflict {
            field: "kind",
            reason: format!(
                "cannot change from {} to {} on an existing service; delete it first",
                old.kind, new.kind
            ),
        });
    }
    if old.kind == ServiceKind::Replicated {
        if old.partitions != new.partitions {
            return Err(ServerError::Conflict {
                field: "partitions",
                reason: format!(
                    "cannot change from {} to {} on an existing service (resharding is not supported); delete and re-create it",
                    old.partitions, new.partitions
                ),
            });
        }
        if old.kv_maxmemory_bytes() != new.kv_maxmemory_bytes() {
            return Err(ServerError::Conflict {
                field: "maxmemory",
                reason: format!(
                    "cannot change from {} to {} bytes on an existing service: every replica must refuse the same writes, and replicas already running keep the budget they started with; delete and re-create it",
                    old.kv_maxmemory_bytes(),
                    new.kv_maxmemory_bytes()
                ),
            });
        }
        if old.replicas != new.replicas {
            return Err(ServerError::Conflict {
                field: "replicas",
                reason: format!(
                    "cannot change from {} to {} on an existing service yet; delete and re-create it",
                    old.replicas, new.replicas
                ),
            });
        }
    }
    Ok(())
}

fn validate_registration(request: &RegisterRequest) -> Result<()> {
    let bad = |message: String| Err(ServerError::BadRequest(message));
    if request.name.is_empty() || request.name.len() > MAX_NODE_NAME_LEN {
        return bad(format!(
            "name: must be 1 to {MAX_NODE_NAME_LEN} characters, got {:?}",
            request.name
        ));
    }
    let port_ok = request
        .transport_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return bad(format!(
            "transport_addr: must be host:port where the agent listens, got {:?}",
            request.transport_addr
        ));
    }
    if request.cpu_millis == 0 || request.memory_mib == 0 {
        return bad("cpu_millis, memory_mib: a node must offer some CPU and memory".to_string());
    }
    if !request.price_per_hour.is_finite() || request.price_per_hour < 0.0 {
        return bad("price_per_hour: must be a non-negative number".to_string());
    }
    Ok(())
}

fn fresh_placement(spec: &ServiceSpec) -> Placement {
    Placement {
        partitions: match spec.kind {
            ServiceKind::Replicated => vec![PartitionDesign::default(); spec.partitions as usize],
            _ => Vec::new(),
        },
        instances: Vec::new(),
        next_instance: 0,
        job_phase: (spec.kind == ServiceKind::Job).then_some(JobPhase::Running),
    }
}

fn node_key(id: NodeId) -> String {
    // Zero-padded so the store lists nodes in id order.
    format!("{NODES_PREFIX}{id:020}")
}

fn service_key(name: &str) -> String {
    format!("{SERVICES_PREFIX}{name}")
}

fn placement_key(name: &str) -> String {
    format!("{PLACEMENTS_PREFIX}{name}")
}

/// Writes `value` as JSON under `key` through the term's fence.
async fn put_json<T: Serialize + ?Sized>(
    store: &dyn Store,
    fence: &mut Fence,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("records always serialize");
    let op = WriteOp::Put {
        key: key.to_string(),
        value: Bytes::from(bytes),
    };
    fence.write(store, vec![op]).await?;
    Ok(())
}

fn delete_op(key: String) -> WriteOp {
    WriteOp::Delete { key }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| ServerError::CorruptRecord {
        key: key.to_string(),
        detail: error.to_string(),
    })
}

async fn read_counter(store: &dyn Store, key: &str) -> Result<u64> {
    match store.get(key).await? {
        Some(value) => decode(key, &value.value),
        None => Ok(1),
    }
}

/// The groups whose observed leader this heartbeat may change. A delta touches only
/// the groups it names: at 1,000 idle partitions that is none, instead of every
/// group reported plus every group led (each looked up across all nodes' reports).
fn groups_touched(
    heartbeat: &Heartbeat,
    held: Option<&NodeObserved>,
) -> BTreeMap<GroupId, (String, u32)> {
    match heartbeat.replicas_since {
        Some(_) => {
            let gone: BTreeSet<GroupId> = heartbeat.replicas_gone.iter().copied().collect();
            heartbeat
                .replicas
                .iter()
                .chain(
                    held.into_iter()
                        .flat_map(|o| o.replicas.iter())
                        .filter(|r| gone.contains(&r.group)),
                )
                .map(|r| (r.group, (r.service.clone(), r.partition)))
                .collect()
        }
        None => heartbeat
            .replicas
            .iter()
            .map(|r| (r.group, (r.service.clone(), r.partition)))
            .chain(
                // Groups this node led before: it may have lost leadership.
                held.into_iter()
                    .flat_map(|o| o.replicas.iter())
                    .filter(|r| r.role == ReplicaRole::Leader)
                    .map(|r| (r.group, (r.service.clone(), r.partition))),
            )
            .collect(),
    }
}

/// Whether anything the reconciler reads changed; liveness alone needs no pass (the
/// reconciler runs on its own schedule, at least every MAX_RECONCILE_INTERVAL_MS,
/// and at each node's grace deadline).
fn reconciler_input_changed(
    heartbeat: &Heartbeat,
    held: Option<&NodeObserved>,
    resp_addrs: Option<&BTreeMap<String, String>>,
) -> bool {
    heartbeat.replicas_since.is_none()
        || !heartbeat.replicas.is_empty()
        || !heartbeat.replicas_gone.is_empty()
        || held.is_none_or(|o| o.instances != heartbeat.instances)
        || resp_addrs.map_or(!heartbeat.resp_addrs.is_empty(), |addrs| {
            *addrs != heartbeat.resp_addrs
        })
}

/// `(service, id, oom_kills)` of each instance whose OOM-kill count grew since the
/// node's previous report (a pure function of the two reports).
fn new_oom_kills(
    before: Option<&[stator_api::agent::InstanceStatus]>,
    now: &[stator_api::agent::InstanceStatus],
) -> Vec<(String, String, u32)> {
    now.iter()
        .filter(|status| {
            let previous = before
                .and_then(|before| before.iter().find(|old| old.id == status.id))
                .map_or(0, |old| old.oom_kills);
            status.oom_kills > previous
        })
        .map(|status| (status.service.clone(), status.id.clone(), status.oom_kills))
        .collect()
}

/// The replica view an agent's delta heartbeat leaves: `held` (the view it builds on,
/// ordered by group) without `gone`, with `changed` replacing or adding statuses.
fn merge_replica_changes(
    held: Vec<ReplicaStatus>,
    changed: Vec<ReplicaStatus>,
    gone: &[GroupId],
) -> Vec<ReplicaStatus> {
    let mut view: BTreeMap<GroupId, ReplicaStatus> =
        held.into_iter().map(|r| (r.group, r)).collect();
    for group in gone {
        view.remove(group);
    }
    view.extend(changed.into_iter().map(|r| (r.group, r)));
    view.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::agent::{InstanceState, InstanceStatus};
    use stator_store::{CasOutcome, EmbeddedStore, Expected, Guard, LeaseId, Revision};
    use stator_store::{Versioned, Watch};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An embedded store whose batch writes (every controller write) fail while
    /// `failing` is set, as a full disk or an unreachable etcd would.
    struct FlakyStore {
        inner: EmbeddedStore,
        failing: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for FlakyStore {
        async fn get(&self, key: &str) -> stator_store::Result<Option<Versioned>> {
            self.inner.get(key).await
        }
        async fn put(&self, key: &str, value: Bytes) -> stator_store::Result<Revision> {
            self.inner.put(key, value).await
        }
        async fn put_with_lease(
            &self,
            key: &str,
            value: Bytes,
            lease: LeaseId,
        ) -> stator_store::Result<Revision> {
            self.inner.put_with_lease(key, value, lease).await
        }
        async fn delete(&self, key: &str) -> stator_store::Result<bool> {
            self.inner.delete(key).await
        }
        async fn compare_and_swap_with_lease(
            &self,
            key: &str,
            expected: Expected,
            new: Option<Bytes>,
            lease: Option<LeaseId>,
        ) -> stator_store::Result<CasOutcome> {
            self.inner
                .compare_and_swap_with_lease(key, expected, new, lease)
                .await
        }
        async fn compare_and_swap(
            &self,
            key: &str,
            expected: Expected,
            new: Option<Bytes>,
        ) -> stator_store::Result<CasOutcome> {
            self.inner.compare_and_swap(key, expected, new).await
        }
        async fn write_batch(
            &self,
            guard: Option<&Guard>,
            ops: Vec<WriteOp>,
        ) -> stator_store::Result<Revision> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(stator_store::StoreError::Backend {
                    operation: "write_batch",
                    detail: "disk full (test)".into(),
                });
            }
            self.inner.write_batch(guard, ops).await
        }
        async fn list(&self, prefix: &str) -> stator_store::Result<Vec<(String, Versioned)>> {
            self.inner.list(prefix).await
        }
        async fn revision(&self) -> stator_store::Result<Revision> {
            self.inner.revision().await
        }
        async fn watch(&self, prefix: &str) -> stator_store::Result<Watch> {
            self.inner.watch(prefix).await
        }
        async fn grant_lease(&self, ttl_ms: u64) -> stator_store::Result<LeaseId> {
            self.inner.grant_lease(ttl_ms).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> stator_store::Result<()> {
            self.inner.keep_alive(lease).await
        }
        async fn revoke(&self, lease: LeaseId) -> stator_store::Result<()> {
            self.inner.revoke(lease).await
        }
    }

    fn registration(name: &str) -> RegisterRequest {
        RegisterRequest {
            name: name.into(),
            zone: "zone-a".into(),
            pool: "default".into(),
            cpu_millis: 4000,
            memory_mib: 8192,
            price_per_hour: 0.1,
            labels: BTreeMap::new(),
            transport_addr: "127.0.0.1:1".into(),
            rejoin: None,
        }
    }

    /// A node goes silent, so a reconcile pass marks it lost in memory; the store refuses
    /// that write. The controller must stop (the server then reloads from the store)
    /// instead of carrying on with memory ahead of the store.
    #[tokio::test]
    async fn a_failed_store_write_stops_the_controller() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(FlakyStore {
            inner: EmbeddedStore::open(dir.path()).expect("embedded store"),
            failing: AtomicBool::new(false),
        });
        let settings = ControllerSettings {
            node_grace_ms: 100,
            heartbeat_interval_ms: 50,
            autoscale: None,
        };
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (handle, task) = spawn(
            store.clone(),
            Fence::unfenced(),
            settings,
            Arc::new(Metrics::new()),
            shutdown,
        )
        .await
        .expect("controller starts");
        let node = handle
            .register(registration("node-1"))
            .await
            .expect("registers while the store works");
        store.failing.store(true, Ordering::SeqCst);
        // No heartbeat follows: after the grace the node is lost, which must be written.
        let exit = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the controller stops after the failed write")
            .expect("the task does not panic");
        assert_eq!(exit, ControllerExit::StoreFailed);
        // The store still says what it said before the failed write.
        let record = store
            .inner
            .get(&node_key(node.node_id))
            .await
            .expect("read")
            .expect("the node record is stored");
        let record: NodeRecord = serde_json::from_slice(&record.value).expect("a node record");
        assert_eq!(record.state, NodeState::Ready);
    }

    fn status(id: &str, oom_kills: u32) -> InstanceStatus {
        InstanceStatus {
            id: id.into(),
            service: "svc".into(),
            state: InstanceState::Running,
            restarts: oom_kills,
            exit_code: None,
            message: None,
            reason: None,
            oom_kills,
        }
    }

    #[test]
    fn each_new_oom_kill_is_reported_once() {
        let before = [status("a", 1), status("b", 0)];
        let now = [status("a", 2), status("b", 0), status("c", 1)];
        let events = new_oom_kills(Some(&before), &now);
        assert_eq!(
            events,
            vec![
                ("svc".to_string(), "a".to_string(), 2),
                ("svc".to_string(), "c".to_string(), 1)
            ]
        );
        // The same report again raises nothing.
        assert!(new_oom_kills(Some(&now), &now).is_empty());
        // A node's first report counts what it carries.
        assert_eq!(new_oom_kills(None, &[status("a", 1)]).len(), 1);
    }
}
