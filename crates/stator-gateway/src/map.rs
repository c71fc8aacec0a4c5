//! The partition map: which partition owns a slot and where its replicas are.
//!
//! Pure data plus the pure function that builds it from the server's API views
//! ([`stator_api::views`]); the
//! poller in [`crate::poller`] owns the task that refreshes it.

use stator_api::ids::{GroupId, NodeId};
use stator_api::slot::SlotRange;
use stator_api::spec::{AuthSpec, RespTlsSpec, ServiceKind};
use stator_api::views::{PartitionView, ServiceView};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where every service's partitions and instances are, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionMap {
    /// Services by name; shared so a connection can hold its service's routes cheaply.
    pub services: BTreeMap<String, Arc<ServiceRoutes>>,
}

/// Routing facts of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoutes {
    /// Service name.
    pub name: String,
    /// What the service is.
    pub kind: ServiceKind,
    /// Whether it runs the built-in kv machine (the only app the RESP listener speaks to).
    pub builtin_kv: bool,
    /// `expose.resp`: where the gateway serves RESP for it (kv services only).
    pub resp_listen: Option<String>,
    /// `expose.auth`: the password and ACL users of the RESP endpoint and HTTP routes.
    pub auth: Option<AuthSpec>,
    /// `expose.protected_mode`: with no `auth`, serve loopback clients only.
    pub protected_mode: bool,
    /// `expose.tls`: the certificate of the RESP endpoint; `None`: plain TCP.
    pub tls: Option<RespTlsSpec>,
    /// Whether the RESP endpoint speaks the Redis Cluster protocol (`expose.cluster`).
    pub cluster: bool,
    /// Replicated: partitions ordered by slot range.
    pub partitions: Vec<PartitionRoute>,
    /// Stateless: `host:port` of each ready instance, for the proxy.
    pub instances: Vec<String>,
}

/// Routing facts of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRoute {
    /// Partition index.
    pub partition: u32,
    /// Its Raft group.
    pub group: GroupId,
    /// Slots it owns.
    pub slots: SlotRange,
    /// Transport address of the leader the server last saw, if any.
    pub leader_addr: Option<String>,
    /// Transport addresses of its live members (leader discovery falls back to these).
    pub member_addrs: Vec<String>,
    /// The leader's node, if one is known.
    pub leader_id: Option<NodeId>,
    /// Live members that serve the Redis Cluster protocol for this service, with their
    /// RESP addresses (cluster mode only; the leader among them when it reported one).
    pub resp_nodes: Vec<RespNode>,
}

/// A node serving a service's slots over RESP, as cluster clients are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespNode {
    /// The node.
    pub node_id: NodeId,
    /// Its advertised RESP `host:port` for the service.
    pub addr: String,
}

impl PartitionRoute {
    /// The RESP address of the leader, when the leader serves RESP.
    pub fn leader_resp_addr(&self) -> Option<&str> {
        let leader = self.leader_id?;
        self.resp_nodes
            .iter()
            .find(|n| n.node_id == leader)
            .map(|n| n.addr.as_str())
    }
}

impl ServiceRoutes {
    /// The partition owning `slot`, if the map covers it.
    pub fn route(&self, slot: u16) -> Option<&PartitionRoute> {
        self.route_index(slot).map(|index| &self.partitions[index])
    }

    /// The index in [`ServiceRoutes::partitions`] of the partition owning `slot`.
    pub fn route_index(&self, slot: u16) -> Option<usize> {
        // Ranges are sorted and disjoint: find the last one starting at or before `slot`.
        let index = self
            .partitions
            .partition_point(|p| p.slots.start <= slot)
            .checked_sub(1)?;
        self.partitions[index].slots.contains(slot).then_some(index)
    }

    /// Whether the RESP listener serves this service.
    pub fn serves_resp(&self) -> bool {
        self.kind == ServiceKind::Replicated && self.builtin_kv && self.resp_listen.is_some()
    }
}

/// Builds the map from the server's service and partition lists.
pub fn build_map(services: &[ServiceView], partitions: &[PartitionView]) -> PartitionMap {
    let mut services_by_name: BTreeMap<String, ServiceRoutes> = BTreeMap::new();
    for service in services {
        let spec = &service.spec;
        let builtin_kv = spec.app.is_builtin_kv();
        services_by_name.insert(
            service.name.clone(),
            ServiceRoutes {
                name: service.name.clone(),
                kind: spec.kind,
                builtin_kv,
                resp_listen: if builtin_kv {
                    spec.expose.resp.clone()
                } else {
                    None
                },
                auth: spec.expose.auth.clone(),
                protected_mode: spec.expose.protected_mode,
                tls: spec.expose.tls.clone(),
                cluster: builtin_kv && spec.expose.cluster_enabled(),
                partitions: Vec::new(),
                instances: service
                    .instances
                    .iter()
                    .filter(|i| i.ready)
                    .filter_map(|i| i.addr.clone())
                    .collect(),
            },
        );
    }
    for partition in partitions {
        // A partition of a service missing from the service list (deleted between the two
        // queries) is dropped: nothing may be routed to a service the map does not know.
        if let Some(service) = services_by_name.get_mut(&partition.service) {
            service.partitions.push(PartitionRoute {
                partition: partition.partition,
                group: partition.group,
                slots: partition.slots,
                leader_addr: partition.leader.as_ref().map(|l| l.addr.clone()),
                member_addrs: partition.member_addrs.clone(),
                leader_id: partition.leader.as_ref().map(|l| l.node_id),
                resp_nodes: partition
                    .members
                    .iter()
                    .filter(|m| m.alive)
                    .filter_map(|m| {
                        Some(RespNode {
                            node_id: m.node_id,
                            addr: m.resp_addr.clone()?,
                        })
                    })
                    .collect(),
            });
        }
    }
    PartitionMap {
        services: services_by_name
            .into_iter()
            .map(|(name, mut service)| {
                service.partitions.sort_by_key(|p| p.slots.start);
                (name, Arc::new(service))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::slot::partition_ranges;

    fn services_json() -> serde_json::Value {
        serde_json::json!([{
            "name": "sessions", "kind": "replicated", "id": 7, "generation": 1,
            "spec": {"name": "sessions", "kind": "replicated", "partitions": 2, "replicas": 3,
                     "app": {"builtin": "kv"}, "expose": {"resp": "127.0.0.1:6380"}},
            "status": {}
        }, {
            "name": "web", "kind": "stateless", "id": 8, "generation": 1,
            "spec": {"name": "web", "kind": "stateless", "instances": 2,
                     "app": {"process": {"command": ["web"]}}},
            "status": {"partitions_with_leader": 0, "partitions_replicated": 0,
                       "partitions_unplaced": 0, "instances_assigned": 2, "instances_ready": 1,
                       "completions_succeeded": 0, "job_phase": null},
            "instances": [{"id": "web-0", "node": "n1", "addr": "127.0.0.1:9001", "ready": true},
                          {"id": "web-1", "node": "n2", "addr": "127.0.0.1:9002", "ready": false}]
        }])
    }

    fn partitions_json() -> serde_json::Value {
        let ranges = partition_ranges(2);
        serde_json::json!([
            {"service": "sessions", "partition": 1, "group": 7 << 16 | 1, "slots": ranges[1],
             "leader": null, "member_addrs": ["a:1", "b:1"], "replicas": 3,
             "replication_factor_met": false},
            {"service": "sessions", "partition": 0, "group": 7 << 16, "slots": ranges[0],
             "leader": {"node_id": 1, "name": "n1", "addr": "a:1", "term": 3},
             "member_addrs": ["a:1", "b:1", "c:1"], "members": [], "replicas": 3,
             "replication_factor_met": true},
            {"service": "gone", "partition": 0, "group": 9 << 16, "slots": ranges[0],
             "leader": null, "member_addrs": [], "replicas": 3, "replication_factor_met": false}
        ])
    }

    fn map() -> PartitionMap {
        let services: Vec<ServiceView> = serde_json::from_value(services_json()).unwrap();
        let partitions: Vec<PartitionView> = serde_json::from_value(partitions_json()).unwrap();
        build_map(&services, &partitions)
    }

    #[test]
    fn builds_routes_from_server_views() {
        let map = map();
        assert_eq!(
            map.services.len(),
            2,
            "partitions of unknown services are dropped"
        );
        let kv = &map.services["sessions"];
        assert!(kv.serves_resp());
        assert_eq!(kv.partitions.len(), 2);
        assert_eq!(kv.partitions[0].partition, 0, "sorted by slot range");
        assert_eq!(kv.partitions[0].leader_addr.as_deref(), Some("a:1"));
        assert_eq!(kv.partitions[1].leader_addr, None);
        let web = &map.services["web"];
        assert!(!web.serves_resp());
        assert_eq!(
            web.instances,
            vec!["127.0.0.1:9001".to_string()],
            "unready skipped"
        );
    }

    #[test]
    fn routes_every_slot_to_its_range() {
        let map = map();
        let kv = &map.services["sessions"];
        let ranges = partition_ranges(2);
        assert_eq!(kv.route(0).unwrap().partition, 0);
        assert_eq!(kv.route(ranges[0].end_inclusive).unwrap().partition, 0);
        assert_eq!(kv.route(ranges[1].start).unwrap().partition, 1);
        assert_eq!(kv.route(16383).unwrap().partition, 1);
        let mut holes = (**kv).clone();
        holes.partitions.remove(0);
        assert!(
            holes.route(5).is_none(),
            "a slot of a missing partition has no route"
        );
    }
}
