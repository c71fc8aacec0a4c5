//! The Redis Cluster protocol's topology commands, answered from the partition map.
//!
//! A kv service in cluster mode looks to cluster-aware clients like a Redis Cluster whose
//! nodes are the agents: each partition is a slot range, its leader's agent is the
//! range's master (the agent serves it straight from its local replica) and the other
//! members' agents are its replicas. The gateway's endpoint is a seed that hands out this
//! map (it holds no slots itself); every agent answers the same commands, marking itself
//! `myself`. A node's cluster id is its stator node id as 40 hex digits.
//!
//! One stator node can lead some partitions and follow in others, which a Redis node
//! cannot; `CLUSTER SLOTS` and `CLUSTER SHARDS` say it per range, and `CLUSTER NODES` calls
//! a node a master when it leads any range.

use super::local::{ConnectionState, Dispatch};
use crate::map::{PartitionRoute, ServiceRoutes};
use stator_api::ids::NodeId;
use stator_api::slot::{key_slot, SLOT_COUNT};
use stator_kv::Value;
use std::collections::BTreeMap;

/// The cluster id of the gateway's endpoint, which is a seed and no node of the map.
const GATEWAY_NODE: NodeId = 0;

/// How long a topology command waits for the map to cover every slot before it answers
/// with what the map has. A cluster client builds its slot table from one such answer and
/// gives up on a slot left out (redis-py's `RedisCluster` does, at start), while the map
/// lags the cluster by up to one poll (250 ms) after a service's replicas first report
/// their RESP addresses; a slot no live member serves still gets its answer after this.
pub(crate) const TOPOLOGY_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// Redis' answer when cluster commands reach an instance without cluster mode.
const CLUSTER_DISABLED: &str = "ERR This instance has cluster support disabled";

/// The Redis Cluster id of stator node `node`: 40 hex digits, as Redis ids are.
pub fn node_name(node: NodeId) -> String {
    format!("{node:040x}")
}

/// `host` and `port` of an advertised `host:port` (IPv6 hosts in brackets).
fn split_addr(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

/// The node serving `partition`'s slots as master and the ones listed as its replicas.
/// The leader when it serves RESP; otherwise, while no leader is known (an election),
/// the first member that serves RESP: it answers `MOVED` or forwards, so clients are
/// never told a slot is uncovered during a failover.
/// A range's master (RESP address, node) and its replicas (node, RESP address).
type Shard<'a> = (&'a str, NodeId, Vec<(NodeId, &'a str)>);

fn master_and_replicas(partition: &PartitionRoute) -> Option<Shard<'_>> {
    let master = partition
        .leader_id
        .and_then(|leader| partition.resp_nodes.iter().find(|n| n.node_id == leader))
        .or_else(|| partition.resp_nodes.first())?;
    let replicas = partition
        .resp_nodes
        .iter()
        .filter(|n| n.node_id != master.node_id)
        .map(|n| (n.node_id, n.addr.as_str()))
        .collect();
    Some((master.addr.as_str(), master.node_id, replicas))
}

fn node_entry(node: NodeId, addr: &str) -> Value {
    let (host, port) = split_addr(addr);
    Value::Array(Some(vec![
        Value::bulk(host),
        Value::Integer(port),
        Value::bulk(node_name(node)),
    ]))
}

fn error(message: impl Into<String>) -> Dispatch {
    Dispatch::Reply(Value::error(message).to_bytes())
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

/// Whether every slot of `service` has a node to name as its master.
pub(crate) fn covers_every_slot(service: &ServiceRoutes) -> bool {
    covered_slots(service) == u32::from(SLOT_COUNT)
}

fn covered_slots(service: &ServiceRoutes) -> u32 {
    service
        .partitions
        .iter()
        .filter(|p| master_and_replicas(p).is_some())
        .map(|p| p.slots.len())
        .sum()
}

/// `CLUSTER <subcommand>` for `service` (None: not in the map yet). A topology command
/// asked while some slot has no node is held ([`Dispatch::Topology`]); the held command
/// is answered by [`topology`].
pub(crate) fn cluster(
    argv: &[Vec<u8>],
    state: &ConnectionState,
    service: Option<&ServiceRoutes>,
) -> Dispatch {
    let held = matches!(
        argv.get(1).map(|s| s.to_ascii_uppercase()).as_deref(),
        Some(b"SLOTS" | b"SHARDS" | b"NODES")
    );
    let uncovered = match service {
        Some(routes) => routes.cluster && !covers_every_slot(routes),
        None => true,
    };
    if held && argv.len() == 2 && uncovered {
        return Dispatch::Topology(argv.to_vec());
    }
    answer(argv, state.node, service)
}

/// The reply to a held topology command (see [`cluster`]), from the map as it is now.
pub(crate) fn topology(
    argv: &[Vec<u8>],
    node: Option<NodeId>,
    service: Option<&ServiceRoutes>,
) -> Vec<u8> {
    match answer(argv, node, service) {
        Dispatch::Reply(bytes) => bytes,
        other => unreachable!("cluster commands are answered with a reply, not {other:?}"),
    }
}

fn answer(argv: &[Vec<u8>], node: Option<NodeId>, service: Option<&ServiceRoutes>) -> Dispatch {
    let sub = argv.get(1).map(|s| s.to_ascii_uppercase());
    // KEYSLOT needs no map and works even without cluster mode, as in Redis.
    if sub.as_deref() == Some(b"KEYSLOT") {
        return match argv {
            [_, _, key] => reply(Value::Integer(key_slot(key) as i64)),
            _ => error("ERR wrong number of arguments for 'cluster|keyslot' command"),
        };
    }
    let Some(service) = service else {
        return error("CLUSTERDOWN the service is not in the partition map yet; retry shortly");
    };
    if !service.cluster {
        return error(CLUSTER_DISABLED);
    }
    let myself = node.unwrap_or(GATEWAY_NODE);
    match (sub.as_deref(), argv.len()) {
        (Some(b"SLOTS"), 2) => reply(slots(service)),
        (Some(b"SHARDS"), 2) => reply(shards(service)),
        (Some(b"NODES"), 2) => reply(Value::bulk(nodes(service, node))),
        (Some(b"INFO"), 2) => reply(Value::bulk(info(service))),
        (Some(b"MYID"), 2) => reply(Value::bulk(node_name(myself))),
        _ => error(format!(
            "ERR unknown subcommand or wrong number of arguments for 'cluster|{}'; stator answers CLUSTER SLOTS, SHARDS, NODES, INFO, KEYSLOT and MYID (the topology follows the partition map)",
            String::from_utf8_lossy(argv.get(1).map(Vec::as_slice).unwrap_or_default()).to_lowercase()
        )),
    }
}

fn slots(service: &ServiceRoutes) -> Value {
    let ranges = service
        .partitions
        .iter()
        .filter_map(|p| {
            let (addr, master, replicas) = master_and_replicas(p)?;
            let mut entry = vec![
                Value::Integer(p.slots.start as i64),
                Value::Integer(p.slots.end_inclusive as i64),
                node_entry(master, addr),
            ];
            entry.extend(replicas.into_iter().map(|(n, a)| node_entry(n, a)));
            Some(Value::Array(Some(entry)))
        })
        .collect();
    Value::Array(Some(ranges))
}

fn shard_node(node: NodeId, addr: &str, role: &str) -> Value {
    let (host, port) = split_addr(addr);
    Value::Array(Some(vec![
        Value::bulk("id"),
        Value::bulk(node_name(node)),
        Value::bulk("port"),
        Value::Integer(port),
        Value::bulk("ip"),
        Value::bulk(host.clone()),
        Value::bulk("endpoint"),
        Value::bulk(host),
        Value::bulk("role"),
        Value::bulk(role),
        Value::bulk("replication-offset"),
        Value::Integer(0),
        Value::bulk("health"),
        Value::bulk("online"),
    ]))
}

fn shards(service: &ServiceRoutes) -> Value {
    let shards = service
        .partitions
        .iter()
        .filter_map(|p| {
            let (addr, master, replicas) = master_and_replicas(p)?;
            let mut nodes = vec![shard_node(master, addr, "master")];
            nodes.extend(
                replicas
                    .into_iter()
                    .map(|(n, a)| shard_node(n, a, "replica")),
            );
            Some(Value::Array(Some(vec![
                Value::bulk("slots"),
                Value::Array(Some(vec![
                    Value::Integer(p.slots.start as i64),
                    Value::Integer(p.slots.end_inclusive as i64),
                ])),
                Value::bulk("nodes"),
                Value::Array(Some(nodes)),
            ])))
        })
        .collect();
    Value::Array(Some(shards))
}

/// One line per node in `CLUSTER NODES` format. A node leading no range is listed as a
/// replica of the master of the first range it serves.
fn nodes(service: &ServiceRoutes, myself: Option<NodeId>) -> String {
    struct Node<'a> {
        addr: &'a str,
        ranges: Vec<(u16, u16)>,
        follows: Option<NodeId>,
    }
    let mut nodes: BTreeMap<NodeId, Node<'_>> = BTreeMap::new();
    for p in &service.partitions {
        let Some((addr, master, replicas)) = master_and_replicas(p) else {
            continue;
        };
        let entry = nodes.entry(master).or_insert(Node {
            addr,
            ranges: Vec::new(),
            follows: None,
        });
        entry.ranges.push((p.slots.start, p.slots.end_inclusive));
        for (node, addr) in replicas {
            nodes.entry(node).or_insert(Node {
                addr,
                ranges: Vec::new(),
                follows: Some(master),
            });
        }
    }
    let mut out = String::new();
    for (id, node) in &nodes {
        let me = if myself == Some(*id) { "myself," } else { "" };
        let (role, master) = if node.ranges.is_empty() {
            ("slave", node.follows.map_or("-".to_string(), node_name))
        } else {
            ("master", "-".to_string())
        };
        out.push_str(&format!(
            "{} {}@0 {me}{role} {master} 0 0 {id} connected",
            node_name(*id),
            node.addr
        ));
        for (start, end) in &node.ranges {
            if start == end {
                out.push_str(&format!(" {start}"));
            } else {
                out.push_str(&format!(" {start}-{end}"));
            }
        }
        out.push('\n');
    }
    out
}

fn info(service: &ServiceRoutes) -> String {
    let mut assigned = 0u32;
    let mut ok = 0u32;
    let mut masters = std::collections::BTreeSet::new();
    let mut known = std::collections::BTreeSet::new();
    for p in &service.partitions {
        assigned += p.slots.len();
        known.extend(p.resp_nodes.iter().map(|n| n.node_id));
        if let Some((_, master, _)) = master_and_replicas(p) {
            masters.insert(master);
            if p.leader_resp_addr().is_some() {
                ok += p.slots.len();
            }
        }
    }
    let covered = covered_slots(service);
    let state = if covered == u32::from(SLOT_COUNT) {
        "ok"
    } else {
        "fail"
    };
    format!(
        "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\n\
         cluster_slots_ok:{ok}\r\ncluster_slots_pfail:{}\r\ncluster_slots_fail:{}\r\n\
         cluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:0\r\n\
         cluster_my_epoch:0\r\n",
        covered - ok.min(covered),
        u32::from(SLOT_COUNT) - covered,
        known.len(),
        masters.len(),
    )
}

/// The `# Cluster` section of `INFO`.
pub(crate) fn info_section(service: Option<&ServiceRoutes>) -> String {
    let enabled = service.is_some_and(|s| s.cluster);
    format!("\r\n# Cluster\r\ncluster_enabled:{}\r\n", u8::from(enabled))
}

/// `READONLY` / `READWRITE`: accepted. Reads still go to the leader (linearizable), so a
/// client that asks a follower's agent is sent on with `MOVED`.
pub(crate) fn read_mode(argv: &[Vec<u8>]) -> Dispatch {
    if argv.len() == 1 {
        reply(Value::ok())
    } else {
        error(format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(&argv[0]).to_lowercase()
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::map::RespNode;
    use stator_api::ids::GroupId;
    use stator_api::slot::partition_ranges;
    use stator_api::spec::ServiceKind;

    /// A cluster-mode service named `kv` with one partition per entry of `leaders`,
    /// served over RESP by nodes 1-3.
    pub(crate) fn routes(leaders: &[Option<NodeId>]) -> ServiceRoutes {
        let ranges = partition_ranges(leaders.len() as u32);
        ServiceRoutes {
            name: "kv".into(),
            kind: ServiceKind::Replicated,
            builtin_kv: true,
            resp_listen: Some("127.0.0.1:6380".into()),
            cluster: true,
            auth: None,
            protected_mode: true,
            tls: None,
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(i, leader)| PartitionRoute {
                    partition: i as u32,
                    group: GroupId::new(1, i as u32),
                    slots: ranges[i],
                    leader_addr: None,
                    member_addrs: Vec::new(),
                    leader_id: *leader,
                    resp_nodes: (1..=3)
                        .map(|n| RespNode {
                            node_id: n,
                            addr: format!("127.0.0.1:700{n}"),
                        })
                        .collect(),
                })
                .collect(),
            instances: Vec::new(),
        }
    }

    fn run(service: &ServiceRoutes, node: Option<NodeId>, words: &[&str]) -> String {
        let argv: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let state = ConnectionState {
            node,
            ..ConnectionState::default()
        };
        match cluster(&argv, &state, Some(service)) {
            Dispatch::Reply(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn slots_name_each_ranges_leader_first() {
        let service = routes(&[Some(2), Some(3)]);
        let text = run(&service, None, &["CLUSTER", "SLOTS"]);
        let first_range = format!(
            "*2\r\n*5\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$40\r\n{}\r\n",
            node_name(2)
        );
        assert!(text.starts_with(&first_range), "{text}");
        assert!(
            text.contains(&format!(
                ":8192\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\n{}",
                node_name(3)
            )),
            "{text}"
        );
    }

    #[test]
    fn a_range_without_a_leader_still_has_a_master() {
        let service = routes(&[None, Some(3)]);
        let text = run(&service, None, &["CLUSTER", "SLOTS"]);
        assert!(
            text.contains(":0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001"),
            "{text}"
        );
        let info = run(&service, None, &["cluster", "info"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_ok:8192"), "{info}");
    }

    #[test]
    fn nodes_lists_masters_with_slots_and_marks_myself() {
        let service = routes(&[Some(1), Some(1)]);
        let text = run(&service, Some(2), &["CLUSTER", "NODES"]);
        let lines: Vec<&str> = text.trim_end_matches("\r\n").lines().collect();
        assert!(lines[0].starts_with('$'), "a bulk string: {text}");
        let lines = &lines[1..];
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            format!(
                "{} 127.0.0.1:7001@0 master - 0 0 1 connected 0-8191 8192-16383",
                node_name(1)
            )
        );
        assert!(
            lines[1].starts_with(&format!(
                "{} 127.0.0.1:7002@0 myself,slave {}",
                node_name(2),
                node_name(1)
            )),
            "{text}"
        );
        assert_eq!(
            run(&service, Some(2), &["CLUSTER", "MYID"]),
            format!("$40\r\n{}\r\n", node_name(2))
        );
    }

    #[test]
    fn keyslot_and_disabled_mode() {
        let mut service = routes(&[Some(1)]);
        assert_eq!(
            run(&service, None, &["CLUSTER", "KEYSLOT", "foo"]),
            ":12182\r\n"
        );
        service.cluster = false;
        assert!(run(&service, None, &["CLUSTER", "SLOTS"])
            .starts_with("-ERR This instance has cluster support disabled"));
        assert!(run(&service, None, &["CLUSTER", "FAILOVER"]).starts_with("-ERR"));
    }

    #[test]
    fn topology_waits_while_a_range_has_no_node_and_info_says_fail() {
        let mut service = routes(&[Some(1), Some(2)]);
        service.partitions[1].resp_nodes.clear();
        let state = ConnectionState::default();
        for sub in ["SLOTS", "shards", "Nodes"] {
            let argv = vec![b"CLUSTER".to_vec(), sub.as_bytes().to_vec()];
            assert_eq!(
                cluster(&argv, &state, Some(&service)),
                Dispatch::Topology(argv.clone()),
                "{sub} is held while slots 8192-16383 have no node"
            );
        }
        let argv = vec![b"CLUSTER".to_vec(), b"SLOTS".to_vec()];
        assert_eq!(
            cluster(&argv, &state, None),
            Dispatch::Topology(argv.clone()),
            "held while the service is not in the map"
        );
        // Held too long, it answers with what the map has: the one covered range.
        let text = String::from_utf8(topology(&argv, None, Some(&service))).unwrap();
        assert!(text.starts_with("*1\r\n*5\r\n:0\r\n:8191\r\n"), "{text}");
        // INFO is never held: it reports the uncovered slots, as Redis does.
        let info = run(&service, None, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:fail"), "{info}");
        assert!(info.contains("cluster_slots_fail:8192"), "{info}");
        // Covered: answered at once.
        service.partitions[1].resp_nodes =
            routes(&[Some(1), Some(2)]).partitions[1].resp_nodes.clone();
        assert!(run(&service, None, &["CLUSTER", "SLOTS"]).starts_with("*2\r\n"));
    }
}
