//! Prometheus metrics of the control plane, served as text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use stator_api::spec::ServiceKind;

use crate::model::{Cluster, NodeState};

type Labels = Vec<(String, String)>;

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
            registry: Registry::default(),
        };
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

    /// Counts one reconcile pass and the actions it took.
    pub fn reconcile_run(&self, actions: usize) {
        self.reconcile_runs.inc();
        self.reconcile_actions.inc_by(actions as u64);
    }

    /// Sets the gauges from the cluster.
    pub fn observe(&self, cluster: &Cluster) {
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
