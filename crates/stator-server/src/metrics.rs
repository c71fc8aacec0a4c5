//! Prometheus metrics of the control plane, served as text at `/metrics`: cluster
//! totals, and per-partition and per-node series built from what heartbeats carry
//! (`deploy/grafana/stator.json` charts them). The agents' cumulative counters (commit
//! latency histogram, transport bytes per peer) are exported as they arrive, by a
//! [`Collector`] over the last report of every live node.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stator_api::agent::{NodeMetrics, ReplicaRole, ReplicaStatus, COMMIT_LATENCY_BOUNDS_US};
use stator_api::ids::{GroupId, NodeId};
use stator_api::spec::ServiceKind;

use crate::model::{Cluster, NodeState};
use stator_api::views::EventKind;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Shortest gap between two refreshes of the per-partition and per-node series: they
/// walk every replica report, and a scrape every few seconds needs nothing fresher.
pub const SERIES_REFRESH_INTERVAL_MS: u64 = 1_000;

/// Per-partition series, labelled `service` and `partition`.
#[derive(Debug, Default)]
struct PartitionSeries {
    /// The label sets written by the last refresh: the next one removes those that are
    /// gone (a deleted service) instead of clearing everything, so a scrape never sees
    /// a half-written family. A std mutex: nothing awaits while it is held.
    written: Mutex<BTreeSet<Labels>>,
    leader_changes: Family<Labels, Counter>,
    ops_per_second: Family<Labels, FloatGauge>,
    p99_seconds: Family<Labels, FloatGauge>,
    apply_lag_entries: Family<Labels, Gauge>,
    state_bytes: Family<Labels, Gauge>,
    disk_bytes: Family<Labels, Gauge>,
    replication_factor_met: Family<Labels, Gauge>,
    report_age_seconds: Family<Labels, FloatGauge>,
}

/// Per-node series, labelled `node`, `zone` and `pool`.
#[derive(Debug, Default)]
struct NodeSeries {
    /// As [`PartitionSeries::written`].
    written: Mutex<BTreeSet<Labels>>,
    replicas: Family<Labels, Gauge>,
    leaders: Family<Labels, Gauge>,
    ops_per_second: Family<Labels, FloatGauge>,
    state_bytes: Family<Labels, Gauge>,
    cpu_capacity_millicores: Family<Labels, Gauge>,
    cpu_requested_millicores: Family<Labels, Gauge>,
    heartbeat_age_seconds: Family<Labels, FloatGauge>,
}

impl PartitionSeries {
    /// Registers the per-partition series (their help text is what Prometheus shows).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "partition_leader_changes",
            "Leader changes reported by heartbeats, per partition",
            self.leader_changes.clone(),
        );
        registry.register(
            "partition_ops_per_second",
            "Client operations per second the partition's leader answers",
            self.ops_per_second.clone(),
        );
        registry.register(
            "partition_p99_seconds",
            "p99 latency of client operations (commit and apply for writes) at the leader",
            self.p99_seconds.clone(),
        );
        registry.register(
            "partition_apply_lag_entries",
            "Largest gap between the leader's applied log index and a live member's",
            self.apply_lag_entries.clone(),
        );
        registry.register(
            "partition_state_bytes",
            "Bytes of state the leader holds: the size of the partition's next snapshot",
            self.state_bytes.clone(),
        );
        registry.register(
            "partition_disk_bytes",
            "Bytes the leader's on-disk store (log, vote, snapshot) takes; 0 for memory durability",
            self.disk_bytes.clone(),
        );
        registry.register(
            "partition_replication_factor_met",
            "1 when the observed voters are the designed members, all alive",
            self.replication_factor_met.clone(),
        );
        registry.register(
            "partition_report_age_seconds",
            "Age of the leader's last report (its node's last heartbeat)",
            self.report_age_seconds.clone(),
        );
    }
}

impl NodeSeries {
    /// Registers the per-node series.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_replicas",
            "Replicas a node reports",
            self.replicas.clone(),
        );
        registry.register(
            "node_leaders",
            "Replicas a node reports as leader",
            self.leaders.clone(),
        );
        registry.register(
            "node_ops_per_second",
            "Client operations per second a node's leaders answer",
            self.ops_per_second.clone(),
        );
        registry.register(
            "node_state_bytes",
            "Bytes of replica state a node holds",
            self.state_bytes.clone(),
        );
        registry.register(
            "node_cpu_capacity_millicores",
            "CPU a node offers",
            self.cpu_capacity_millicores.clone(),
        );
        registry.register(
            "node_cpu_requested_millicores",
            "CPU requested by the replicas designed onto a node",
            self.cpu_requested_millicores.clone(),
        );
        registry.register(
            "node_heartbeat_age_seconds",
            "Time since a node's last heartbeat",
            self.heartbeat_age_seconds.clone(),
        );
    }
}

/// The agents' own cumulative counters, per live node, from their last heartbeat.
#[derive(Debug, Default)]
struct NodeCounters {
    /// The last report of each node, by id, as it arrived. A std mutex: a map insert per
    /// heartbeat, never held across an await.
    reports: Mutex<BTreeMap<NodeId, NodeMetrics>>,
    /// What a scrape encodes: the reports of live nodes under their names, rebuilt by
    /// each series refresh.
    samples: Mutex<Vec<NodeSample>>,
}

/// One live node's counters, named for the exposition.
#[derive(Debug, Clone)]
struct NodeSample {
    node: String,
    metrics: NodeMetrics,
    /// Peer name per transport entry (`clients` for peer 0).
    peers: Vec<String>,
}

/// Reads one direction's byte count from a peer's traffic.
type TrafficField = fn(&stator_api::agent::PeerTraffic) -> u64;

/// The label value of transport peer 0: gateways and other clients of the transport.
const CLIENT_PEER: &str = "clients";

impl Collector for NodeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples.lock().expect("metrics lock poisoned").clone();
        {
            let mut metric = encoder.encode_descriptor(
                "node_commit_latency_seconds",
                "Latency of the writes a node's leaders committed and applied (cumulative since the agent started)",
                None,
                MetricType::Histogram,
            )?;
            for sample in &samples {
                let labels: Labels = vec![("node".to_string(), sample.node.clone())];
                let histogram = &sample.metrics.commit_latency;
                let buckets: Vec<(f64, u64)> = COMMIT_LATENCY_BOUNDS_US
                    .iter()
                    .map(|bound_us| *bound_us as f64 / 1e6)
                    .chain([f64::MAX])
                    .enumerate()
                    .map(|(i, bound)| (bound, histogram.counts.get(i).copied().unwrap_or(0)))
                    .collect();
                let count = buckets.iter().map(|(_, c)| c).sum();
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum_us as f64 / 1e6,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }
        let directions: [(&str, &str, TrafficField); 2] = [
            (
                "node_transport_sent_bytes",
                "Bytes a node wrote on the replica transport to each peer node (cumulative since the agent started)",
                |t| t.sent_bytes,
            ),
            (
                "node_transport_received_bytes",
                "Bytes a node read on the replica transport from each peer node (cumulative since the agent started)",
                |t| t.received_bytes,
            ),
        ];
        for (name, help, value) in directions {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for sample in &samples {
                for (traffic, peer) in sample.metrics.transport.iter().zip(&sample.peers) {
                    let labels: Labels = vec![
                        ("node".to_string(), sample.node.clone()),
                        ("peer".to_string(), peer.clone()),
                    ];
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value(traffic), None)?;
                }
            }
        }
        Ok(())
    }
}

fn partition_labels(service: &str, partition: u32) -> Labels {
    vec![
        ("service".to_string(), service.to_string()),
        ("partition".to_string(), partition.to_string()),
    ]
}

/// The server's metrics. Cheap to update from any task: every metric is atomic.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    nodes: Family<Labels, Gauge>,
    services: Gauge,
    partitions: Gauge,
    partitions_without_leader: Gauge,
    partitions_under_replicated: Gauge,
    api_requests: Family<Labels, Counter>,
    reconcile_runs: Counter,
    reconcile_actions: Counter,
    partition: PartitionSeries,
    node: NodeSeries,
    node_counters: Arc<NodeCounters>,
    /// When the per-partition and per-node series were last refreshed, ms.
    series_refreshed_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `stator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stator");
        let metrics = Metrics {
            nodes: Family::default(),
            services: Gauge::default(),
            partitions: Gauge::default(),
            partitions_without_leader: Gauge::default(),
            partitions_under_replicated: Gauge::default(),
            api_requests: Family::default(),
            reconcile_runs: Counter::default(),
            reconcile_actions: Counter::default(),
            partition: PartitionSeries::default(),
            node: NodeSeries::default(),
            node_counters: Arc::default(),
            series_refreshed_ms: AtomicU64::new(0),
            registry: Registry::default(),
        };
        metrics.partition.register(&mut registry);
        metrics.node.register(&mut registry);
        registry.register_collector(Box::new(metrics.node_counters.clone()));
        registry.register("nodes", "Registered nodes by state", metrics.nodes.clone());
        registry.register("services", "Services applied", metrics.services.clone());
        registry.register(
            "partitions",
            "Partitions of replicated services",
            metrics.partitions.clone(),
        );
        registry.register(
            "partitions_without_leader",
            "Partitions with no live leader reported",
            metrics.partitions_without_leader.clone(),
        );
        registry.register(
            "partitions_under_replicated",
            "Partitions whose observed voters differ from the designed, live members",
            metrics.partitions_under_replicated.clone(),
        );
        registry.register(
            "api_requests",
            "API requests by method and status",
            metrics.api_requests.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Controller reconcile passes",
            metrics.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_actions",
            "Actions taken by the controllers",
            metrics.reconcile_actions.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts one API request.
    pub fn api_request(&self, method: &str, status: u16) {
        self.api_requests
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
    }

    /// Keeps the cumulative counters a node's heartbeat carries; exported (under the
    /// node's name) from the next series refresh while the node is alive.
    pub fn node_reported(&self, node: NodeId, metrics: &NodeMetrics) {
        self.node_counters
            .reports
            .lock()
            .expect("metrics lock poisoned")
            .insert(node, metrics.clone());
    }

    /// Counts one reconcile pass and the actions it took.
    pub fn reconcile_run(&self, actions: usize) {
        self.reconcile_runs.inc();
        self.reconcile_actions.inc_by(actions as u64);
    }

    /// Counts what an event says (leader changes per partition).
    pub fn event(&self, kind: &EventKind) {
        if let EventKind::LeaderChanged {
            service, partition, ..
        } = kind
        {
            self.partition
                .leader_changes
                .get_or_create(&partition_labels(service, *partition))
                .inc();
        }
    }

    /// Sets the gauges from the cluster at `now_ms`; the per-partition and per-node
    /// series at most every [`SERIES_REFRESH_INTERVAL_MS`].
    pub fn observe(&self, cluster: &Cluster, now_ms: u64) {
        let last_ms = self.series_refreshed_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_ms) >= SERIES_REFRESH_INTERVAL_MS {
            self.series_refreshed_ms.store(now_ms, Ordering::Relaxed);
            self.observe_partitions(cluster, now_ms);
            self.observe_nodes(cluster, now_ms);
        }
        for state in NodeState::ALL {
            let count = cluster.nodes.values().filter(|n| n.state == state).count();
            self.nodes
                .get_or_create(&vec![("state".to_string(), state.as_str().to_string())])
                .set(count as i64);
        }
        self.services.set(cluster.services.len() as i64);
        let (mut partitions, mut without_leader, mut under_replicated) = (0, 0, 0);
        for service in cluster.services.values() {
            if service.spec().kind != ServiceKind::Replicated {
                continue;
            }
            for partition in 0..service.placement.partitions.len() as u32 {
                partitions += 1;
                if cluster.group_observed(service.group(partition)).is_none() {
                    without_leader += 1;
                }
                if !cluster.replication_factor_met(service, partition) {
                    under_replicated += 1;
                }
            }
        }
        self.partitions.set(partitions);
        self.partitions_without_leader.set(without_leader);
        self.partitions_under_replicated.set(under_replicated);
    }

    /// Per-partition gauges, rebuilt so deleted partitions leave no stale series.
    fn observe_partitions(&self, cluster: &Cluster, now_ms: u64) {
        // One walk over every report instead of a search per partition.
        let mut leaders: BTreeMap<GroupId, (NodeId, &ReplicaStatus)> = BTreeMap::new();
        let mut applied: BTreeMap<GroupId, Vec<u64>> = BTreeMap::new();
        for (node, observed) in &cluster.observed {
            if !cluster.is_alive(*node) {
                continue;
            }
            for report in &observed.replicas {
                applied
                    .entry(report.group)
                    .or_default()
                    .push(report.applied_index);
                if report.role == ReplicaRole::Leader
                    && leaders
                        .get(&report.group)
                        .is_none_or(|(_, known)| known.term < report.term)
                {
                    leaders.insert(report.group, (*node, report));
                }
            }
        }
        let p = &self.partition;
        let forget_load = |labels: &Labels| {
            p.ops_per_second.remove(labels);
            p.p99_seconds.remove(labels);
            p.apply_lag_entries.remove(labels);
            p.state_bytes.remove(labels);
            p.disk_bytes.remove(labels);
            p.report_age_seconds.remove(labels);
        };
        let mut written = BTreeSet::new();
        for service in cluster.services.values() {
            if service.spec().kind != ServiceKind::Replicated {
                continue;
            }
            for partition in 0..service.placement.partitions.len() as u32 {
                let labels = partition_labels(&service.spec().name, partition);
                written.insert(labels.clone());
                let met = cluster.replication_factor_met(service, partition);
                p.replication_factor_met
                    .get_or_create(&labels)
                    .set(i64::from(met));
                let group = service.group(partition);
                let Some((leader, report)) = leaders.get(&group) else {
                    // No leader: its load is unknown, not the last one reported.
                    forget_load(&labels);
                    continue;
                };
                p.ops_per_second
                    .get_or_create(&labels)
                    .set(report.ops_per_sec);
                p.p99_seconds
                    .get_or_create(&labels)
                    .set(report.p99_us as f64 / 1e6);
                p.state_bytes
                    .get_or_create(&labels)
                    .set(report.state_bytes as i64);
                p.disk_bytes
                    .get_or_create(&labels)
                    .set(report.disk_bytes as i64);
                let lag = applied.get(&group).map_or(0, |all| {
                    all.iter()
                        .map(|a| report.applied_index.saturating_sub(*a))
                        .max()
                        .unwrap_or(0)
                });
                p.apply_lag_entries.get_or_create(&labels).set(lag as i64);
                let age_ms = cluster
                    .observed
                    .get(leader)
                    .map_or(0, |o| now_ms.saturating_sub(o.last_heartbeat_ms));
                p.report_age_seconds
                    .get_or_create(&labels)
                    .set(age_ms as f64 / 1e3);
            }
        }
        let mut last = p.written.lock().expect("metrics lock poisoned");
        for gone in last.difference(&written) {
            forget_load(gone);
            p.replication_factor_met.remove(gone);
        }
        *last = written;
    }

    /// Per-node gauges of live nodes.
    fn observe_nodes(&self, cluster: &Cluster, now_ms: u64) {
        let n = &self.node;
        let mut written = BTreeSet::new();
        for record in cluster.nodes.values() {
            if !record.state.is_alive() {
                continue;
            }
            let labels: Labels = vec![
                ("node".to_string(), record.info.name.clone()),
                ("zone".to_string(), record.info.zone.clone()),
                ("pool".to_string(), record.info.pool.clone()),
            ];
            written.insert(labels.clone());
            let reports = cluster
                .observed
                .get(&record.id)
                .map_or(&[][..], |o| &o.replicas[..]);
            let leading = || reports.iter().filter(|r| r.role == ReplicaRole::Leader);
            n.replicas.get_or_create(&labels).set(reports.len() as i64);
            n.leaders
                .get_or_create(&labels)
                .set(leading().count() as i64);
            n.ops_per_second
                .get_or_create(&labels)
                .set(leading().fold(0.0, |total, r| total + r.ops_per_sec));
            n.state_bytes
                .get_or_create(&labels)
                .set(reports.iter().map(|r| r.state_bytes as i64).sum());
            n.cpu_capacity_millicores
                .get_or_create(&labels)
                .set(record.info.cpu_millis as i64);
            let requested: u64 = cluster
                .services
                .values()
                .flat_map(|s| {
                    let cpu = s.spec().resources.cpu_millis();
                    s.placement
                        .partitions
                        .iter()
                        .filter(|d| d.members.contains(&record.id))
                        .map(move |d| d.member_cpu_millis(record.id, cpu))
                })
                .sum();
            n.cpu_requested_millicores
                .get_or_create(&labels)
                .set(requested as i64);
            if let Some(observed) = cluster.observed.get(&record.id) {
                n.heartbeat_age_seconds
                    .get_or_create(&labels)
                    .set(now_ms.saturating_sub(observed.last_heartbeat_ms) as f64 / 1e3);
            }
        }
        // Lost and released nodes leave no stale series behind.
        let mut last = n.written.lock().expect("metrics lock poisoned");
        for gone in last.difference(&written) {
            n.replicas.remove(gone);
            n.leaders.remove(gone);
            n.ops_per_second.remove(gone);
            n.state_bytes.remove(gone);
            n.cpu_capacity_millicores.remove(gone);
            n.cpu_requested_millicores.remove(gone);
            n.heartbeat_age_seconds.remove(gone);
        }
        *last = written;
        drop(last);
        self.observe_node_counters(cluster);
    }

    /// Rebuilds what the node counters' collector encodes: the last report of every
    /// live node under its name; reports of nodes no longer alive are dropped.
    fn observe_node_counters(&self, cluster: &Cluster) {
        let name_of = |id: NodeId| -> String {
            if id == 0 {
                return CLIENT_PEER.to_string();
            }
            cluster
                .nodes
                .get(&id)
                .map_or_else(|| format!("node-id-{id}"), |n| n.info.name.clone())
        };
        let mut reports = self
            .node_counters
            .reports
            .lock()
            .expect("metrics lock poisoned");
        reports.retain(|id, _| cluster.is_alive(*id));
        let samples = reports
            .iter()
            .map(|(id, metrics)| NodeSample {
                node: name_of(*id),
                peers: metrics.transport.iter().map(|t| name_of(t.peer)).collect(),
                metrics: metrics.clone(),
            })
            .collect();
        drop(reports);
        *self
            .node_counters
            .samples
            .lock()
            .expect("metrics lock poisoned") = samples;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        NodeObserved, NodeRecord, PartitionDesign, Placement, Service, ServiceRecord,
    };
    use stator_api::agent::RegisterRequest;
    use stator_api::spec::{parse_spec, SpecFormat};

    fn one_node_one_partition() -> Cluster {
        let mut cluster = Cluster::default();
        cluster.nodes.insert(
            1,
            NodeRecord {
                id: 1,
                info: RegisterRequest {
                    name: "n1".into(),
                    zone: "z".into(),
                    pool: "p".into(),
                    cpu_millis: 1000,
                    memory_mib: 1024,
                    price_per_hour: 0.0,
                    labels: Default::default(),
                    transport_addr: "127.0.0.1:1".into(),
                    rejoin: None,
                },
                state: NodeState::Ready,
                registered_at_ms: 0,
                node_secret: String::new(),
                drain_requested: false,
            },
        );
        let spec = parse_spec(
            "name = \"kv\"\npartitions = 1\nreplicas = 1\napp = { builtin = \"kv\" }",
            SpecFormat::Toml,
        )
        .unwrap();
        let service = Service {
            record: ServiceRecord {
                id: 7,
                spec,
                generation: 1,
            },
            placement: Placement {
                partitions: vec![PartitionDesign {
                    members: vec![1],
                    initial_members: vec![1],
                    has_had_leader: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
        };
        let group = service.group(0);
        cluster.services.insert("kv".into(), service);
        cluster.observed.insert(
            1,
            NodeObserved {
                last_heartbeat_ms: 1_000,
                replicas: vec![ReplicaStatus {
                    term: 2,
                    applied_index: 40,
                    state_bytes: 4096,
                    ops_per_sec: 12.5,
                    p99_us: 800,
                    ..stator_api::testing::leader_status(group, "kv", 0, 1, &[1])
                }],
                instances: vec![],
                replicas_view: None,
            },
        );
        cluster
    }

    #[test]
    fn partition_and_node_series_follow_the_cluster_and_leave_with_it() {
        let metrics = Metrics::new();
        let mut cluster = one_node_one_partition();
        metrics.node_reported(
            1,
            &NodeMetrics {
                commit_latency: stator_api::agent::LatencyHistogram {
                    counts: vec![3, 1],
                    sum_us: 1_000,
                },
                transport: vec![
                    stator_api::agent::PeerTraffic {
                        peer: 0,
                        sent_bytes: 10,
                        received_bytes: 20,
                    },
                    stator_api::agent::PeerTraffic {
                        peer: 1,
                        sent_bytes: 30,
                        received_bytes: 40,
                    },
                ],
            },
        );
        metrics.observe(&cluster, 1_500);
        let text = metrics.render();
        for line in [
            "stator_node_commit_latency_seconds_bucket{le=\"0.00025\",node=\"n1\"} 3",
            "stator_node_commit_latency_seconds_bucket{le=\"0.0005\",node=\"n1\"} 4",
            "stator_node_commit_latency_seconds_bucket{le=\"+Inf\",node=\"n1\"} 4",
            "stator_node_commit_latency_seconds_count{node=\"n1\"} 4",
            "stator_node_commit_latency_seconds_sum{node=\"n1\"} 0.001",
            "stator_node_transport_sent_bytes_total{node=\"n1\",peer=\"clients\"} 10",
            "stator_node_transport_received_bytes_total{node=\"n1\",peer=\"n1\"} 40",
            "stator_partition_ops_per_second{service=\"kv\",partition=\"0\"} 12.5",
            "stator_partition_state_bytes{service=\"kv\",partition=\"0\"} 4096",
            "stator_partition_report_age_seconds{service=\"kv\",partition=\"0\"} 0.5",
            "stator_partition_replication_factor_met{service=\"kv\",partition=\"0\"} 1",
            "stator_node_leaders{node=\"n1\",zone=\"z\",pool=\"p\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Within the refresh interval nothing is recomputed; after it, a deleted service
        // and a lost node leave no series behind.
        cluster.services.clear();
        cluster.nodes.get_mut(&1).unwrap().state = NodeState::Lost;
        metrics.observe(&cluster, 1_600);
        assert!(metrics
            .render()
            .contains("stator_partition_ops_per_second{"));
        metrics.observe(&cluster, 1_500 + SERIES_REFRESH_INTERVAL_MS);
        let text = metrics.render();
        assert!(!text.contains("stator_partition_ops_per_second{"), "{text}");
        assert!(!text.contains("stator_node_leaders{"), "{text}");
        assert!(
            !text.contains("stator_node_commit_latency_seconds_count{"),
            "{text}"
        );
    }
}
