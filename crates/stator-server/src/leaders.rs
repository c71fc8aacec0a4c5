//! Leader re-spread: after a node returns (or a failover piled leaders onto a few nodes),
//! hand leadership of some partitions to caught-up followers on nodes that lead fewer.
//!
//! Level-triggered, like the rest of the server: [`plan_leader_moves`] is a pure function
//! of the leadership the heartbeats report, recomputed for every heartbeat answer. A move
//! reaches the leader's agent as [`ReplicaAssignment::transfer_leader_to`]
//! (`stator_api::agent`), which hands leadership over with
//! `Host::transfer_leadership` (the successor catches up, then runs for election at once:
//! a write pause of about one round trip). Once the heartbeats show the new leader, the
//! plan no longer asks for the move.
//!
//! [`ReplicaAssignment::transfer_leader_to`]: stator_api::agent::ReplicaAssignment

use stator_api::agent::ReplicaRole;
use stator_api::ids::{GroupId, NodeId};
use std::collections::BTreeMap;

use crate::model::{Cluster, NodeState};

/// How many more partitions one node may lead than another before leaders are moved. 1
/// is what rounding leaves when partitions do not divide evenly over the nodes, so only a
/// real pile-up (a node leading two or more partitions beyond another) moves anything.
pub const LEADER_SPREAD_TOLERANCE: usize = 1;

/// Leadership moves asked for at once over the whole cluster: each pauses its
/// partition's writes for a round trip, so a returning node takes its share a few
/// partitions at a time rather than in one burst.
pub const MAX_LEADER_MOVES_AT_ONCE: usize = 8;

/// How far (in applied log entries) a follower's last report may trail its leader's and
/// still count as caught up. Reports come at different moments, so under load they
/// differ; the transfer itself waits for the successor to hold every entry.
pub const CAUGHT_UP_SLACK_ENTRIES: u64 = 1_024;

/// One partition's leadership, as the heartbeats report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The partition's group.
    pub group: GroupId,
    /// The node leading it.
    pub leader: NodeId,
    /// Voters that could take over now: caught-up followers on ready nodes.
    pub successors: Vec<NodeId>,
}

/// A leadership move: `from` hands `group` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderMove {
    /// The partition's group.
    pub group: GroupId,
    /// Its leader now.
    pub from: NodeId,
    /// The follower to lead it.
    pub to: NodeId,
}

/// The moves that spread leaders over `nodes` (the ready nodes; others take no
/// leadership), at most `max_moves`: while some node leads more than
/// [`LEADER_SPREAD_TOLERANCE`] partitions beyond one of its partitions' successors, the
/// most loaded leader hands a partition to its least loaded successor. Each move narrows
/// the spread, so the plan ends; ties go to the lower group and node ids, so the same
/// input always gives the same plan.
pub fn plan_leader_moves(
    partitions: &[Leadership],
    nodes: &[NodeId],
    max_moves: usize,
) -> Vec<LeaderMove> {
    let mut led: BTreeMap<NodeId, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for p in partitions {
        *led.entry(p.leader).or_default() += 1;
    }
    let mut current: BTreeMap<GroupId, NodeId> =
        partitions.iter().map(|p| (p.group, p.leader)).collect();
    let mut moved: Vec<LeaderMove> = Vec::new();
    while moved.len() < max_moves {
        // The best move: the largest gap between a leader and one of its successors.
        let mut best: Option<(usize, LeaderMove)> = None;
        for p in partitions {
            if moved.iter().any(|m| m.group == p.group) {
                continue;
            }
            let from = current[&p.group];
            let from_count = led[&from];
            for &to in &p.successors {
                if !nodes.contains(&to) {
                    continue; // not a ready node
                }
                let to_count = led[&to];
                if to == from || from_count <= to_count + LEADER_SPREAD_TOLERANCE {
                    continue;
                }
                let gap = from_count - to_count;
                if best.as_ref().is_none_or(|(g, _)| gap > *g) {
                    best = Some((
                        gap,
                        LeaderMove {
                            group: p.group,
                            from,
                            to,
                        },
                    ));
                }
            }
        }
        let Some((_, step)) = best else {
            break;
        };
        *led.get_mut(&step.from).expect("a counted leader") -= 1;
        *led.get_mut(&step.to).expect("a ready node") += 1;
        current.insert(step.group, step.to);
        moved.push(step);
    }
    moved
}

/// The leadership of every replicated partition whose membership is settled (designed
/// voters, no learners: a move under way is left to finish first), read from the
/// heartbeats of live nodes.
pub fn leadership(cluster: &Cluster) -> Vec<Leadership> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        for (index, design) in service.placement.partitions.iter().enumerate() {
            let group = service.group(index as u32);
            let Some(observed) = cluster.group_observed(group) else {
                continue;
            };
            let settled = observed.learners.is_empty()
                && observed.voters.len() == design.members.len()
                && design.members.iter().all(|m| observed.voters.contains(m));
            if !settled {
                continue;
            }
            let report = |node: NodeId| cluster.replica_report(node, group);
            let Some(leader_applied) = report(observed.leader).map(|r| r.applied_index) else {
                continue;
            };
            let successors = observed
                .voters
                .iter()
                .copied()
                .filter(|&node| {
                    node != observed.leader
                        && cluster.node_state(node) == NodeState::Ready
                        && report(node).is_some_and(|r| {
                            r.role == ReplicaRole::Follower
                                && r.term == observed.term
                                && r.leader == Some(observed.leader)
                                && r.applied_index + CAUGHT_UP_SLACK_ENTRIES >= leader_applied
                        })
                })
                .collect();
            out.push(Leadership {
                group,
                leader: observed.leader,
                successors,
            });
        }
    }
    out
}

/// The moves to ask for now in `cluster`, by group.
pub fn leader_moves(cluster: &Cluster) -> BTreeMap<GroupId, LeaderMove> {
    let ready: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|&n| cluster.node_state(n) == NodeState::Ready)
        .collect();
    plan_leader_moves(&leadership(cluster), &ready, MAX_LEADER_MOVES_AT_ONCE)
        .into_iter()
        .map(|m| (m.group, m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(index: u32, leader: NodeId, successors: &[NodeId]) -> Leadership {
        Leadership {
            group: GroupId::new(1, index),
            leader,
            successors: successors.to_vec(),
        }
    }

    /// Six partitions, three voters each on nodes 1-3, led as `leaders` says.
    fn led_by(leaders: &[NodeId]) -> Vec<Leadership> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, &leader)| {
                let others: Vec<NodeId> = (1..=3).filter(|&n| n != leader).collect();
                partition(i as u32, leader, &others)
            })
            .collect()
    }

    fn spread(partitions: &[Leadership], moves: &[LeaderMove]) -> BTreeMap<NodeId, usize> {
        let mut led = BTreeMap::new();
        for p in partitions {
            let leader = moves
                .iter()
                .find(|m| m.group == p.group)
                .map_or(p.leader, |m| m.to);
            *led.entry(leader).or_insert(0) += 1;
        }
        led
    }

    #[test]
    fn a_returning_node_gets_its_share_back() {
        // Node 3 came back: nodes 1 and 2 lead everything.
        let partitions = led_by(&[1, 1, 1, 2, 2, 2]);
        let moves = plan_leader_moves(&partitions, &[1, 2, 3], 8);
        assert_eq!(moves.len(), 2);
        assert!(moves.iter().all(|m| m.to == 3));
        assert_eq!(
            spread(&partitions, &moves),
            BTreeMap::from([(1, 2), (2, 2), (3, 2)])
        );
    }

    #[test]
    fn an_even_or_rounding_spread_moves_nothing() {
        assert!(plan_leader_moves(&led_by(&[1, 2, 3, 1, 2, 3]), &[1, 2, 3], 8).is_empty());
        // 4 over 3 nodes: one node leads two, as rounding must leave it.
        assert!(plan_leader_moves(&led_by(&[1, 2, 3, 1]), &[1, 2, 3], 8).is_empty());
    }

    #[test]
    fn only_caught_up_successors_on_ready_nodes_take_over() {
        // Node 3 is not a successor anywhere (lagging, or not a voter): nothing to do.
        let partitions: Vec<Leadership> = (0..4).map(|i| partition(i, 1, &[2])).collect();
        let moves = plan_leader_moves(&partitions, &[1, 2, 3], 8);
        assert_eq!(
            spread(&partitions, &moves),
            BTreeMap::from([(1, 2), (2, 2)]),
            "{moves:?}"
        );
        // Node 2 is not ready (draining): it takes nothing.
        assert!(plan_leader_moves(&partitions, &[1, 3], 8).is_empty());
    }

    #[test]
    fn moves_are_bounded_and_deterministic() {
        let partitions = led_by(&[1; 12]);
        let moves = plan_leader_moves(&partitions, &[1, 2, 3], 3);
        assert_eq!(moves.len(), 3);
        assert_eq!(moves, plan_leader_moves(&partitions, &[1, 2, 3], 3));
        // Unbounded, it ends with an even spread.
        let all = plan_leader_moves(&partitions, &[1, 2, 3], usize::MAX);
        assert_eq!(
            spread(&partitions, &all),
            BTreeMap::from([(1, 4), (2, 4), (3, 4)])
        );
    }
}
